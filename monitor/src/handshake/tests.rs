//! Tests of the core with built handshakes; real captures are in tests/fixtures.rs.
