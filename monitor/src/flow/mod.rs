//! What the kernel reported, per connection: the ring records decoded once at the edge
//! ([`capture_event`]), each direction's bytes put back in order ([`reassembly`]), the
//! connection's lifecycle and owner ([`table`]), and the TLS record headers of a stream
//! ([`tls_records`], what `tlsmon trace` shows), and which services speak TLS
//! ([`tls_services`]). Pure: events in, finished flows out.

pub mod capture_event;
pub mod reassembly;
pub mod table;
pub mod tls_records;
pub mod tls_services;

pub use capture_event::{CaptureEvent, ConnInfo, DataChunk, Direction, Lifecycle, Role, Task};
pub use table::{CaptureKind, Flow, FlowLimits, FlowTable, Incomplete, Side};
pub use tls_services::TlsServices;
