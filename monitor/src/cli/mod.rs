//! The command line: clap definitions ([`args`]), and the commands that only print what
//! another part computes: [`query`] (`status`, `failures`, `fleet status` from an endpoint),
//! [`trace`] (one line per captured connection), [`analyze`] (`tlsmon analyze` output).
//! `main.rs` parses and dispatches; the daemon and the aggregator are `daemon` and `fleet`.

pub mod analyze;
pub mod args;
pub mod query;
pub mod trace;
pub mod visible;

pub use args::{Cli, Command};
