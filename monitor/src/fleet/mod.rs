//! The fleet aggregator's core: parse what hosts publish ([`message`]), keep every event
//! once in SQLite or PostgreSQL ([`store`] over [`sql`]), and the view operators read
//! ([`view`]). `crate::aggregate` is the edge that runs it (MQTT, HTTP).

pub mod message;
pub mod sql;
pub mod store;
pub mod view;
