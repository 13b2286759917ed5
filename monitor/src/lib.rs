//! tlsmon: which process failed a TLS handshake with which peer, and why.
//!
//! Data flow (see ARCHITECTURE.md): `capture` (kernel programs, ring, /proc) →
//! `events` (typed records) → `flows` (per-connection state, `reassembly` per direction) →
//! `records` (TLS record headers) → `trace` (what the operator sees).

pub mod aggregate;
pub mod alerts;
pub mod analyze;
pub mod capture;
pub mod cli;
pub mod client;
pub mod config;
pub mod daemon;
pub mod event;
pub mod events;
pub mod filters;
pub mod fleet;
pub mod flows;
pub mod handshake;
pub mod judge;
pub mod metrics;
pub mod mqtt;
pub mod outbox;
pub mod reassembly;
pub mod records;
pub mod schema;
pub mod status;
pub mod store;
pub mod trace;
