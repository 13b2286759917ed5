//! Kernel-to-userspace wire format of tlsmon.
//!
//! Every record the eBPF programs put on the ring buffer starts with an [`EventHeader`];
//! its `kind` says which struct follows (the header is the first field of each). Data
//! records carry `payload_len` bytes right after the fixed struct, so records have variable
//! size on the ring. All types are `#[repr(C)]`, fixed width, with explicit padding, and
//! their sizes are checked at compile time so a layout change cannot go unnoticed.
#![no_std]

pub mod rules;

use core::mem::size_of;

/// Kinds of ring-buffer record (`EventHeader::kind`).
pub mod kind {
    /// A connection tlsmon reports on: 4-tuple, role, owner if known. Sent once, before
    /// the first data of the connection.
    pub const OPEN: u8 = 1;
    /// Payload bytes of one direction with their TCP sequence number.
    pub const DATA: u8 = 2;
    /// A TCP state change or reset of a reported connection.
    pub const CLOSE: u8 = 3;
    /// The owning process of a reported connection, learned after it was opened
    /// (servers: the first process that reads the accepted socket).
    pub const OWNER: u8 = 4;
}

/// `EventHeader::direction`: relative to the socket that owns the event.
pub mod direction {
    /// Bytes the local socket sent (cgroup_skb egress).
    pub const EGRESS: u8 = 0;
    /// Bytes the local socket received (cgroup_skb ingress).
    pub const INGRESS: u8 = 1;
}

/// `OpenEvent::role`.
pub mod role {
    pub const UNKNOWN: u8 = 0;
    /// The local socket called connect().
    pub const CLIENT: u8 = 1;
    /// The local socket was accepted from a listener.
    pub const SERVER: u8 = 2;
}

/// `DataEvent` header flags.
pub mod data_flags {
    /// The flow looked like TLS: bytes are captured up to the per-direction budget.
    pub const TLS: u8 = 1 << 0;
    /// A short sample of a non-TLS flow on a port known to speak TLS.
    pub const SAMPLE: u8 = 1 << 1;
    /// Capture started mid-stream (a STARTTLS-style upgrade); `stream_start` is where.
    pub const MID_STREAM: u8 = 1 << 2;
    /// The segment had more bytes than this record carries (budget or sample limit).
    pub const TRUNCATED: u8 = 1 << 3;
}

/// `EventHeader::flags` of every record of a connection (DATA, CLOSE, OWNER).
pub mod record_flags {
    /// An earlier record of this connection could not be put on the ring (it was full):
    /// what userspace holds of it is incomplete.
    pub const LOST: u8 = 1 << 7;
    /// OPEN only: the peer's first bytes reached a listener or request socket before this
    /// socket existed (TCP Fast Open, a segment racing the last ACK): they were not seen.
    pub const MISSED_START: u8 = 1 << 6;
}

/// `CloseEvent::reason`.
pub mod close_reason {
    /// A TCP state change (`old_state` -> `new_state`, Linux TCP_* numbering).
    pub const STATE: u8 = 1;
    /// The local socket received a RST from its peer.
    pub const RESET_RECEIVED: u8 = 2;
    /// The local socket sent a RST.
    pub const RESET_SENT: u8 = 3;
}

/// Linux TCP states (include/net/tcp_states.h), as carried in `CloseEvent`.
pub mod tcp_state {
    pub const ESTABLISHED: u8 = 1;
    pub const SYN_SENT: u8 = 2;
    pub const SYN_RECV: u8 = 3;
    pub const FIN_WAIT1: u8 = 4;
    pub const FIN_WAIT2: u8 = 5;
    pub const TIME_WAIT: u8 = 6;
    pub const CLOSE: u8 = 7;
    pub const CLOSE_WAIT: u8 = 8;
    pub const LAST_ACK: u8 = 9;
    pub const LISTEN: u8 = 10;
    pub const CLOSING: u8 = 11;
}

/// Indexes of the kernel-side counters (a per-CPU array of u64, summed by userspace).
pub mod counter {
    /// Ring buffer full: a record was lost.
    pub const RING_DROPS: u32 = 0;
    /// Bytes of TLS flows not captured because the per-direction budget was spent.
    pub const BUDGET_TRUNCATED: u32 = 1;
    /// Connections that were reported (an OPEN record was sent).
    pub const FLOWS_REPORTED: u32 = 2;
    /// Connections whose first payload looked like TLS.
    pub const FLOWS_TLS: u32 = 3;
    /// Connections that switched to TLS after plaintext (STARTTLS-style).
    pub const FLOWS_UPGRADED: u32 = 4;
    /// Data records sent.
    pub const DATA_RECORDS: u32 = 5;
    /// Packets whose headers could not be read (unexpected IP/TCP layout).
    pub const PARSE_ERRORS: u32 = 6;
    /// Connections whose peer's first bytes reached a listener or request socket (TCP Fast
    /// Open data, a first segment racing the handshake's last ACK): reported with the start
    /// of that stream missing.
    pub const MISSED_START: u32 = 7;
    pub const COUNT: u32 = 8;
}

/// Tunables the loader writes into the eBPF object's read-only globals.
pub mod globals {
    pub const SELF_TGID: &str = "TLSMON_SELF_TGID";
    pub const DIRECTION_BUDGET: &str = "TLSMON_DIRECTION_BUDGET";
    pub const WATCH_LIMIT: &str = "TLSMON_WATCH_LIMIT";
    /// Benchmarks only: non-zero makes every program return at once.
    pub const FLOOR: &str = "TLSMON_FLOOR";
}

/// Largest payload one DATA record carries; larger segments (loopback GSO super-packets of
/// up to 64 KiB) are split into several records.
pub const DATA_CHUNK: usize = 16 * 1024;
/// Upper bound of the per-direction capture budget (the eBPF loop is bounded by it).
pub const MAX_DIRECTION_BUDGET: u32 = 64 * 1024;
/// Default bytes captured per direction of a TLS flow: covers a handshake with a long chain.
pub const DEFAULT_DIRECTION_BUDGET: u32 = 16 * 1024;
/// Bytes sent from the first payload of a non-TLS flow on a TLS port.
pub const SAMPLE_LEN: usize = 64;
/// Default bytes of a plaintext flow watched for a late TLS start (STARTTLS).
pub const DEFAULT_WATCH_LIMIT: u32 = 8 * 1024;
pub const COMM_LEN: usize = 16;

/// Common start of every ring record.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EventHeader {
    /// One of [`kind`].
    pub kind: u8,
    /// Kind-specific flags (e.g. [`data_flags`]).
    pub flags: u8,
    /// One of [`direction`], for DATA records.
    pub direction: u8,
    pub _pad0: u8,
    pub _pad1: u32,
    /// The socket cookie: the connection's identity for this boot, never reused.
    pub cookie: u64,
    /// `bpf_ktime_get_ns()` (CLOCK_MONOTONIC).
    pub ts_ns: u64,
}
const _: () = assert!(size_of::<EventHeader>() == 24);

/// A task (process) as the kernel names it: the owner of a socket.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Task {
    pub tgid: u32,
    pub pid: u32,
    /// cgroup v2 id of the process (`bpf_get_current_cgroup_id`), 0 when unknown.
    pub cgroup_id: u64,
    pub comm: [u8; COMM_LEN],
}
const _: () = assert!(size_of::<Task>() == 32);

/// [`kind::OPEN`]
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OpenEvent {
    pub header: EventHeader,
    /// `AF_INET` (2) or `AF_INET6` (10).
    pub family: u16,
    pub local_port: u16,
    pub peer_port: u16,
    /// One of [`role`].
    pub role: u8,
    /// 1 when `owner` is filled in.
    pub owner_known: u8,
    /// IPv4 in the first four bytes, or IPv6; network byte order.
    pub local_addr: [u8; 16],
    pub peer_addr: [u8; 16],
    /// cgroup v2 id of the socket (`bpf_skb_cgroup_id`): the unit or container.
    pub socket_cgroup_id: u64,
    pub owner: Task,
}
const _: () = assert!(size_of::<OpenEvent>() == 104);

/// [`kind::DATA`]; followed by `payload_len` bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DataEvent {
    pub header: EventHeader,
    /// TCP sequence number of the first byte carried.
    pub seq: u32,
    /// Sequence number where this direction's captured stream starts (the first payload
    /// byte of the connection, or the upgrade point for STARTTLS).
    pub stream_start: u32,
    /// Payload length of the whole TCP segment the bytes come from.
    pub segment_len: u32,
    /// Bytes following this struct in the record.
    pub payload_len: u32,
}
const _: () = assert!(size_of::<DataEvent>() == 40);

/// [`kind::CLOSE`]
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CloseEvent {
    pub header: EventHeader,
    /// One of [`close_reason`].
    pub reason: u8,
    pub old_state: u8,
    pub new_state: u8,
    pub _pad0: u8,
    pub _pad1: u32,
}
const _: () = assert!(size_of::<CloseEvent>() == 32);

/// [`kind::OWNER`]
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OwnerEvent {
    pub header: EventHeader,
    pub owner: Task,
}
const _: () = assert!(size_of::<OwnerEvent>() == 56);

/// Largest record on the ring.
pub const MAX_RECORD: usize = size_of::<DataEvent>() + DATA_CHUNK;

/// Bits of a `TLS_PORTS` entry (the map is indexed by port).
pub mod tls_port {
    /// Configured as TLS: wherever the port appears (local or peer), the service is TLS.
    pub const CONFIGURED: u8 = 1;
    /// Some learned service (`TLS_SERVICES`) has this port: worth a lookup there.
    pub const LEARNED: u8 = 2;
}

/// A service learned to speak TLS, key of `TLS_SERVICES`: its address as IPv6 (IPv4 as
/// `::ffff:a.b.c.d`, as a dual-stack socket holds it) and its port.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ServiceKey {
    pub addr: [u8; 16],
    pub port: u16,
    pub _pad: [u8; 6],
}
const _: () = assert!(size_of::<ServiceKey>() == 24);

#[cfg(feature = "user")]
mod pod {
    // SAFETY: plain-old-data: repr(C), integer fields only, explicit padding.
    unsafe impl aya::Pod for super::EventHeader {}
    unsafe impl aya::Pod for super::Task {}
    unsafe impl aya::Pod for super::ServiceKey {}
}
