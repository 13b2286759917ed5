//! Typed capture events, decoded once at the edge from the kernel's ring records
//! (`monitor-common` wire format). Pure: bytes in, `CaptureEvent` or a precise error out.
//!
//! The records are decoded with one `read_unaligned` of a `Copy` struct after a length
//! check, which is what `zerocopy`/`bytemuck` would do; deriving their traits in the
//! `no_std` kernel-side crate for this one call is not worth a dependency there.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use monitor_common::{
    CloseEvent, DataEvent, EventHeader, OpenEvent, OwnerEvent, close_reason, data_flags, direction,
    kind, record_flags, role,
};

/// Which way bytes went, relative to the local socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    /// Sent by the local socket.
    Egress,
    /// Received by the local socket.
    Ingress,
}

impl Direction {
    pub fn index(self) -> usize {
        match self {
            Direction::Egress => 0,
            Direction::Ingress => 1,
        }
    }
}

/// Whether the local socket is the TCP (and so TLS) client or server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Client,
    Server,
    /// Established before tlsmon started.
    Unknown,
}

/// The task (process) the kernel saw owning a socket: its pid, thread-group id, cgroup and
/// short name. `capture::process` turns it into a full [`ProcessInfo`] from /proc.
///
/// [`ProcessInfo`]: crate::capture::process::ProcessInfo
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Task {
    pub tgid: u32,
    pub pid: u32,
    pub cgroup_id: u64,
    pub comm: String,
}

/// A connection's identity and ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnInfo {
    pub role: Role,
    pub local: SocketAddr,
    pub peer: SocketAddr,
    /// cgroup v2 id of the socket: its unit or container.
    pub socket_cgroup_id: u64,
}

/// How a connection's lifecycle moved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lifecycle {
    /// Linux TCP state change (include/net/tcp_states.h numbering).
    State {
        old: u8,
        new: u8,
    },
    ResetReceived,
    ResetSent,
}

/// One decoded ring record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CaptureEvent {
    Open {
        cookie: u64,
        ts_ns: u64,
        conn: ConnInfo,
        owner: Option<Task>,
        /// The peer's first bytes reached a listener or request socket before this
        /// connection's socket existed: the capture lacks them.
        missed_start: bool,
    },
    Data(DataChunk),
    Lifecycle {
        cookie: u64,
        ts_ns: u64,
        what: Lifecycle,
        /// The kernel could not deliver an earlier record of this connection.
        lost: bool,
    },
    Owner {
        cookie: u64,
        ts_ns: u64,
        owner: Task,
    },
}

/// Payload bytes of one direction with their TCP position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataChunk {
    pub cookie: u64,
    pub ts_ns: u64,
    pub direction: Direction,
    /// The flow looked like TLS (bytes captured up to the budget).
    pub tls: bool,
    /// A short sample of a plaintext flow on a TLS port.
    pub sample: bool,
    /// Capture began at a STARTTLS-style upgrade.
    pub mid_stream: bool,
    pub truncated: bool,
    /// The kernel could not deliver an earlier record of this connection.
    pub lost: bool,
    pub seq: u32,
    pub stream_start: u32,
    pub segment_len: u32,
    pub bytes: Vec<u8>,
}

impl CaptureEvent {
    pub fn cookie(&self) -> u64 {
        match self {
            CaptureEvent::Open { cookie, .. }
            | CaptureEvent::Lifecycle { cookie, .. }
            | CaptureEvent::Owner { cookie, .. } => *cookie,
            CaptureEvent::Data(d) => d.cookie,
        }
    }

    /// Kernel (monotonic) time of the event.
    pub fn ts_ns(&self) -> u64 {
        match self {
            CaptureEvent::Open { ts_ns, .. }
            | CaptureEvent::Lifecycle { ts_ns, .. }
            | CaptureEvent::Owner { ts_ns, .. } => *ts_ns,
            CaptureEvent::Data(d) => d.ts_ns,
        }
    }
}

impl ConnInfo {
    /// The service this connection is for: our listener when we accepted it, the address
    /// we connected to otherwise.
    pub fn service(&self) -> SocketAddr {
        match self.role {
            Role::Server => self.local,
            _ => self.peer,
        }
    }

    /// The TLS server's port: ours when we accepted, the peer's otherwise.
    pub fn server_port(&self) -> u16 {
        self.service().port()
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("ring record of {got} bytes is shorter than its {kind} header ({need} bytes)")]
    Short {
        kind: &'static str,
        got: usize,
        need: usize,
    },
    #[error("ring record has unknown kind {0}")]
    UnknownKind(u8),
    #[error("data record announces {announced} payload bytes but carries {carried}")]
    PayloadLength { announced: usize, carried: usize },
    #[error("open record has address family {0}")]
    Family(u16),
}

/// Reads a repr(C) wire struct from the start of `bytes`.
fn read<T: Copy>(bytes: &[u8], kind: &'static str) -> Result<T, DecodeError> {
    let need = size_of::<T>();
    if bytes.len() < need {
        return Err(DecodeError::Short {
            kind,
            got: bytes.len(),
            need,
        });
    }
    // SAFETY: length checked above; T is one of the monitor-common wire structs, which are
    // repr(C) with integer fields only, so every bit pattern is a valid value.
    Ok(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<T>()) })
}

fn task(o: &monitor_common::Task) -> Task {
    let end = o.comm.iter().position(|&b| b == 0).unwrap_or(o.comm.len());
    Task {
        tgid: o.tgid,
        pid: o.pid,
        cgroup_id: o.cgroup_id,
        comm: String::from_utf8_lossy(&o.comm[..end]).into_owned(),
    }
}

/// An address as the user knows it: an IPv4 peer of a dual-stack (AF_INET6) socket is
/// `203.0.113.5`, not `::ffff:203.0.113.5`, everywhere tlsmon shows or keys it.
fn addr(family: u16, raw: &[u8; 16], port: u16) -> Result<SocketAddr, DecodeError> {
    let ip = match family {
        2 => IpAddr::V4(Ipv4Addr::new(raw[0], raw[1], raw[2], raw[3])),
        10 => {
            let v6 = Ipv6Addr::from(*raw);
            v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4)
        }
        f => return Err(DecodeError::Family(f)),
    };
    Ok(SocketAddr::new(ip, port))
}

/// Decodes one ring record.
pub fn decode(record: &[u8]) -> Result<CaptureEvent, DecodeError> {
    let h: EventHeader = read(record, "event")?;
    match h.kind {
        kind::OPEN => {
            let e: OpenEvent = read(record, "open")?;
            let role = match e.role {
                role::CLIENT => Role::Client,
                role::SERVER => Role::Server,
                _ => Role::Unknown,
            };
            Ok(CaptureEvent::Open {
                cookie: h.cookie,
                ts_ns: h.ts_ns,
                conn: ConnInfo {
                    role,
                    local: addr(e.family, &e.local_addr, e.local_port)?,
                    peer: addr(e.family, &e.peer_addr, e.peer_port)?,
                    socket_cgroup_id: e.socket_cgroup_id,
                },
                owner: (e.owner_known != 0).then(|| task(&e.owner)),
                missed_start: h.flags & record_flags::MISSED_START != 0,
            })
        }
        kind::DATA => {
            let e: DataEvent = read(record, "data")?;
            let body = &record[size_of::<DataEvent>()..];
            let announced = e.payload_len as usize;
            if body.len() < announced {
                return Err(DecodeError::PayloadLength {
                    announced,
                    carried: body.len(),
                });
            }
            Ok(CaptureEvent::Data(DataChunk {
                cookie: h.cookie,
                ts_ns: h.ts_ns,
                direction: if h.direction == direction::EGRESS {
                    Direction::Egress
                } else {
                    Direction::Ingress
                },
                tls: h.flags & data_flags::TLS != 0,
                sample: h.flags & data_flags::SAMPLE != 0,
                mid_stream: h.flags & data_flags::MID_STREAM != 0,
                truncated: h.flags & data_flags::TRUNCATED != 0,
                lost: h.flags & record_flags::LOST != 0,
                seq: e.seq,
                stream_start: e.stream_start,
                segment_len: e.segment_len,
                bytes: body[..announced].to_vec(),
            }))
        }
        kind::CLOSE => {
            let e: CloseEvent = read(record, "close")?;
            let what = match e.reason {
                close_reason::RESET_RECEIVED => Lifecycle::ResetReceived,
                close_reason::RESET_SENT => Lifecycle::ResetSent,
                _ => Lifecycle::State {
                    old: e.old_state,
                    new: e.new_state,
                },
            };
            Ok(CaptureEvent::Lifecycle {
                cookie: h.cookie,
                ts_ns: h.ts_ns,
                what,
                lost: h.flags & record_flags::LOST != 0,
            })
        }
        kind::OWNER => {
            let e: OwnerEvent = read(record, "owner")?;
            Ok(CaptureEvent::Owner {
                cookie: h.cookie,
                ts_ns: h.ts_ns,
                owner: task(&e.owner),
            })
        }
        k => Err(DecodeError::UnknownKind(k)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes_of<T>(v: &T) -> Vec<u8> {
        // SAFETY: reading a repr(C) struct's bytes.
        unsafe { std::slice::from_raw_parts((v as *const T).cast::<u8>(), size_of::<T>()) }.to_vec()
    }

    #[test]
    fn data_record_carries_its_payload() {
        let ev = DataEvent {
            header: EventHeader {
                kind: kind::DATA,
                flags: data_flags::TLS,
                direction: direction::INGRESS,
                cookie: 7,
                ts_ns: 9,
                ..Default::default()
            },
            seq: 100,
            stream_start: 90,
            segment_len: 3,
            payload_len: 3,
        };
        let mut rec = bytes_of(&ev);
        rec.extend_from_slice(b"abc");
        let CaptureEvent::Data(d) = decode(&rec).unwrap() else {
            panic!("not data")
        };
        assert_eq!(
            (d.cookie, d.direction, d.seq, d.stream_start),
            (7, Direction::Ingress, 100, 90)
        );
        assert!(d.tls && !d.sample);
        assert_eq!(d.bytes, b"abc");
    }

    #[test]
    fn open_record_gives_addresses_and_owner() {
        let mut comm = [0u8; 16];
        comm[..4].copy_from_slice(b"curl");
        let ev = OpenEvent {
            header: EventHeader {
                kind: kind::OPEN,
                cookie: 1,
                ..Default::default()
            },
            family: 2,
            local_port: 40122,
            peer_port: 8443,
            role: role::CLIENT,
            owner_known: 1,
            local_addr: [127, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            peer_addr: [127, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            socket_cgroup_id: 5,
            owner: monitor_common::Task {
                tgid: 10,
                pid: 11,
                cgroup_id: 5,
                comm,
            },
        };
        let CaptureEvent::Open { conn, owner, .. } = decode(&bytes_of(&ev)).unwrap() else {
            panic!("not open")
        };
        assert_eq!(conn.local.to_string(), "127.0.0.1:40122");
        assert_eq!(conn.peer.to_string(), "127.0.0.2:8443");
        assert_eq!(conn.role, Role::Client);
        assert_eq!(owner.unwrap().comm, "curl");
    }

    #[test]
    fn every_truncation_of_a_record_is_an_error_not_a_panic() {
        let ev = DataEvent {
            header: EventHeader {
                kind: kind::DATA,
                ..Default::default()
            },
            payload_len: 4,
            ..Default::default()
        };
        let mut rec = bytes_of(&ev);
        rec.extend_from_slice(b"abcd");
        for n in 0..rec.len() {
            assert!(decode(&rec[..n]).is_err(), "prefix {n}");
        }
        assert!(decode(&rec).is_ok());
    }

    #[test]
    fn unknown_kind_is_reported() {
        let h = EventHeader {
            kind: 99,
            ..Default::default()
        };
        assert_eq!(decode(&bytes_of(&h)), Err(DecodeError::UnknownKind(99)));
    }

    #[test]
    fn an_ipv4_peer_of_a_dual_stack_socket_is_reported_as_ipv4() {
        let mut mapped = [0u8; 16];
        mapped[10] = 0xff;
        mapped[11] = 0xff;
        mapped[12..].copy_from_slice(&[203, 0, 113, 5]);
        let mut local = mapped;
        local[12..].copy_from_slice(&[127, 0, 0, 1]);
        let ev = OpenEvent {
            header: EventHeader {
                kind: kind::OPEN,
                flags: record_flags::MISSED_START,
                cookie: 3,
                ..Default::default()
            },
            family: 10,
            local_port: 443,
            peer_port: 51000,
            role: role::SERVER,
            local_addr: local,
            peer_addr: mapped,
            ..Default::default()
        };
        let CaptureEvent::Open {
            conn, missed_start, ..
        } = decode(&bytes_of(&ev)).unwrap()
        else {
            panic!("not open")
        };
        assert_eq!(conn.peer.to_string(), "203.0.113.5:51000");
        assert_eq!(conn.local.to_string(), "127.0.0.1:443");
        assert!(missed_start);
        // A real IPv6 address stays one.
        let v6 = OpenEvent {
            local_addr: std::net::Ipv6Addr::LOCALHOST.octets(),
            peer_addr: std::net::Ipv6Addr::LOCALHOST.octets(),
            ..ev
        };
        let CaptureEvent::Open { conn, .. } = decode(&bytes_of(&v6)).unwrap() else {
            panic!("not open")
        };
        assert_eq!(conn.peer.to_string(), "[::1]:51000");
    }

    #[test]
    fn records_after_a_loss_say_so() {
        let ev = CloseEvent {
            header: EventHeader {
                kind: kind::CLOSE,
                flags: record_flags::LOST,
                ..Default::default()
            },
            reason: close_reason::RESET_SENT,
            ..Default::default()
        };
        assert!(matches!(
            decode(&bytes_of(&ev)),
            Ok(CaptureEvent::Lifecycle { lost: true, .. })
        ));
    }
}
