//! From a judged connection to what an operator reads: the event document
//! (`tlsmon.event/1`, [`document`]), its `key=value` log line ([`log_line`]), and the alert
//! engine that folds repeats into one alert with a count and floods into summaries
//! ([`engine`]). Pure.

pub mod document;
pub mod engine;
pub mod log_line;

pub use document::{Event, Evidence, Kind, Severity, WeakPolicy, from_verdict, wire_name};
pub use engine::{AlertEngine, AlertPolicy, Update};
