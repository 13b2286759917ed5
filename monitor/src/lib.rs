//! tlsmon: which process failed a TLS handshake with which peer, and why.
//!
//! The folders follow the data (ARCHITECTURE.md draws it): `capture` (kernel programs, ring,
//! /proc) → `flow` (typed records, reassembly, per-connection state) → `handshake` (the pure
//! diagnosis core) → `judge` (one verdict per live connection, filters) → `alert` (event
//! document, dedup) → `store` (SQLite history and the MQTT outbox) → `publish` (MQTT) and the
//! daemon's endpoint. `daemon` wires them; `analyze` is the offline path into the same core;
//! `fleet` is the aggregator, which reads only documents; `cli` parses and prints.

pub mod alert;
pub mod analyze;
pub mod capture;
pub mod cli;
pub mod clock;
pub mod config;
pub mod daemon;
pub mod fleet;
pub mod flow;
pub mod handshake;
pub mod http;
pub mod judge;
pub mod mqtt;
pub mod publish;
pub mod state;
pub mod store;
