//! Per-connection state: the two reassembled directions, lifecycle and owner of every
//! reported connection, keyed by socket cookie. Pure (events in, finished flows out), with
//! time passed in so expiry is testable without sleeping.

use std::collections::HashMap;

use monitor_common::tcp_state;

use super::capture_event::{CaptureEvent, ConnInfo, DataChunk, Direction, Lifecycle, Role, Task};
use super::reassembly::StreamReassembler;

/// Which end of the connection did something.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Side {
    Local,
    Peer,
}

/// How the connection ended (or is ending).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Ending {
    /// Who sent the first FIN.
    pub first_fin: Option<Side>,
    /// The other end's FIN, when it came too.
    pub second_fin: Option<Side>,
    /// Who sent a RST.
    pub reset: Option<Side>,
    /// The socket reached TCP_CLOSE.
    pub closed: bool,
}

/// What kind of capture the kernel did for the flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CaptureKind {
    /// First payload looked like TLS.
    Tls,
    /// Plaintext on a TLS port: a short sample only.
    Sample,
    /// Plaintext that upgraded to TLS (STARTTLS): captured from the first record on.
    Upgraded,
}

#[derive(Debug, Clone)]
pub struct Flow {
    pub cookie: u64,
    pub conn: Option<ConnInfo>,
    pub owner: Option<Task>,
    pub kind: Option<CaptureKind>,
    pub first_ns: u64,
    pub last_ns: u64,
    /// Index: `Direction::index()`.
    pub streams: [Option<StreamReassembler>; 2],
    pub truncated: bool,
    pub ending: Ending,
}

impl Flow {
    fn new(cookie: u64, ts_ns: u64) -> Self {
        Flow {
            cookie,
            conn: None,
            owner: None,
            kind: None,
            first_ns: ts_ns,
            last_ns: ts_ns,
            streams: [None, None],
            truncated: false,
            ending: Ending::default(),
        }
    }

    pub fn role(&self) -> Role {
        self.conn.as_ref().map_or(Role::Unknown, |c| c.role)
    }

    /// The bytes of one direction, in order, without gaps.
    pub fn stream(&self, d: Direction) -> &[u8] {
        self.streams[d.index()]
            .as_ref()
            .map_or(&[], |s| s.contiguous())
    }

    /// The client-to-server direction, from the local socket's point of view.
    pub fn client_to_server(&self) -> Direction {
        match self.role() {
            Role::Server => Direction::Ingress,
            _ => Direction::Egress,
        }
    }

    fn add_data(&mut self, d: &DataChunk, limit: usize) {
        let kind = if d.sample {
            CaptureKind::Sample
        } else if d.mid_stream {
            CaptureKind::Upgraded
        } else {
            CaptureKind::Tls
        };
        self.kind.get_or_insert(kind);
        self.truncated |= d.truncated;
        let s = self.streams[d.direction.index()]
            .get_or_insert_with(|| StreamReassembler::new(d.stream_start, limit));
        s.push(d.seq, &d.bytes);
    }

    fn add_lifecycle(&mut self, what: Lifecycle) {
        match what {
            Lifecycle::ResetReceived => {
                self.ending.reset.get_or_insert(Side::Peer);
            }
            Lifecycle::ResetSent => {
                self.ending.reset.get_or_insert(Side::Local);
            }
            Lifecycle::State { old, new } => {
                if let Some(side) = fin_of(old, new) {
                    match self.ending.first_fin {
                        None => self.ending.first_fin = Some(side),
                        Some(first) if first != side => {
                            self.ending.second_fin.get_or_insert(side);
                        }
                        Some(_) => {}
                    }
                }
                if new == tcp_state::CLOSE {
                    self.ending.closed = true;
                }
            }
        }
    }
}

/// The FIN a socket state change reveals (RFC 793 state diagram): ours when we leave
/// ESTABLISHED or CLOSE_WAIT, the peer's when we leave ESTABLISHED for CLOSE_WAIT or a
/// FIN_WAIT state for CLOSING/TIME_WAIT/CLOSE (the kernel closes a FIN_WAIT2 socket into
/// a timewait one).
fn fin_of(old: u8, new: u8) -> Option<Side> {
    use tcp_state::*;
    match (old, new) {
        (ESTABLISHED, FIN_WAIT1) | (CLOSE_WAIT, LAST_ACK) => Some(Side::Local),
        (ESTABLISHED, CLOSE_WAIT)
        | (FIN_WAIT1, CLOSING)
        | (FIN_WAIT2, TIME_WAIT)
        | (FIN_WAIT2, CLOSE) => Some(Side::Peer),
        _ => None,
    }
}

/// Bounds of the table.
#[derive(Debug, Clone, Copy)]
pub struct FlowLimits {
    /// Bytes kept per direction (matches the kernel's capture budget).
    pub bytes_per_direction: usize,
    /// Flows tracked at once; the oldest are finished early beyond it.
    pub max_flows: usize,
    /// A flow with no event for this long is finished.
    pub idle_ns: u64,
}

impl Default for FlowLimits {
    fn default() -> Self {
        FlowLimits {
            bytes_per_direction: monitor_common::DEFAULT_DIRECTION_BUDGET as usize,
            max_flows: 65_536,
            idle_ns: 30_000_000_000,
        }
    }
}

/// Every reported connection, by socket cookie.
#[derive(Debug, Default)]
pub struct FlowTable {
    flows: HashMap<u64, Flow>,
    limits: FlowLimits,
}

impl FlowTable {
    pub fn new(limits: FlowLimits) -> Self {
        FlowTable {
            flows: HashMap::new(),
            limits,
        }
    }

    pub fn len(&self) -> usize {
        self.flows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.flows.is_empty()
    }

    pub fn get(&self, cookie: u64) -> Option<&Flow> {
        self.flows.get(&cookie)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Flow> {
        self.flows.values()
    }

    /// Applies one event; returns the flow when it has finished (socket closed).
    pub fn apply(&mut self, ev: CaptureEvent) -> Option<Flow> {
        let cookie = ev.cookie();
        let ts = ev.ts_ns();
        if !self.flows.contains_key(&cookie) && self.flows.len() >= self.limits.max_flows {
            // Make room: the least recently active flow is finished as it stands.
            if let Some(oldest) = self
                .flows
                .values()
                .min_by_key(|f| f.last_ns)
                .map(|f| f.cookie)
            {
                self.flows.remove(&oldest);
            }
        }
        let flow = self
            .flows
            .entry(cookie)
            .or_insert_with(|| Flow::new(cookie, ts));
        flow.last_ns = flow.last_ns.max(ts);
        match ev {
            CaptureEvent::Open { conn, owner, .. } => {
                flow.conn = Some(conn);
                if owner.is_some() {
                    flow.owner = owner;
                }
            }
            CaptureEvent::Owner { owner, .. } => flow.owner = Some(owner),
            CaptureEvent::Data(d) => flow.add_data(&d, self.limits.bytes_per_direction),
            CaptureEvent::Lifecycle { what, .. } => {
                flow.add_lifecycle(what);
                if flow.ending.closed {
                    return self.flows.remove(&cookie);
                }
            }
        }
        None
    }

    /// Finishes the flows idle since before `now_ns - idle`.
    pub fn expire(&mut self, now_ns: u64) -> Vec<Flow> {
        let idle = self.limits.idle_ns;
        let done: Vec<u64> = self
            .flows
            .values()
            .filter(|f| now_ns.saturating_sub(f.last_ns) >= idle)
            .map(|f| f.cookie)
            .collect();
        done.into_iter()
            .filter_map(|c| self.flows.remove(&c))
            .collect()
    }

    /// Takes a flow out of the table (its verdict was reached early).
    pub fn remove(&mut self, cookie: u64) -> Option<Flow> {
        self.flows.remove(&cookie)
    }

    /// Finishes every flow (shutdown).
    pub fn drain(&mut self) -> Vec<Flow> {
        self.flows.drain().map(|(_, f)| f).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(cookie: u64, ts: u64, dir: Direction, seq: u32, bytes: &[u8]) -> CaptureEvent {
        CaptureEvent::Data(DataChunk {
            cookie,
            ts_ns: ts,
            direction: dir,
            tls: true,
            sample: false,
            mid_stream: false,
            truncated: false,
            seq,
            stream_start: 1000,
            segment_len: bytes.len() as u32,
            bytes: bytes.to_vec(),
        })
    }

    fn state(cookie: u64, ts: u64, old: u8, new: u8) -> CaptureEvent {
        CaptureEvent::Lifecycle {
            cookie,
            ts_ns: ts,
            what: Lifecycle::State { old, new },
        }
    }

    #[test]
    fn a_flow_finishes_at_tcp_close_with_both_streams_and_who_closed() {
        let mut t = FlowTable::new(FlowLimits::default());
        assert!(
            t.apply(data(1, 1, Direction::Egress, 1003, b"def"))
                .is_none()
        );
        assert!(
            t.apply(data(1, 2, Direction::Egress, 1000, b"abc"))
                .is_none()
        );
        assert!(
            t.apply(data(1, 3, Direction::Ingress, 1000, b"xyz"))
                .is_none()
        );
        assert!(
            t.apply(state(1, 4, tcp_state::ESTABLISHED, tcp_state::CLOSE_WAIT))
                .is_none()
        );
        let f = t
            .apply(state(1, 5, tcp_state::LAST_ACK, tcp_state::CLOSE))
            .expect("finished");
        assert_eq!(f.stream(Direction::Egress), b"abcdef");
        assert_eq!(f.stream(Direction::Ingress), b"xyz");
        assert_eq!(f.ending.first_fin, Some(Side::Peer));
        assert_eq!(f.ending.second_fin, None);
        assert!(t.is_empty());
    }

    #[test]
    fn both_fins_are_read_from_state_changes_in_either_order() {
        use tcp_state::*;
        let mut t = FlowTable::new(FlowLimits::default());
        t.apply(state(1, 1, ESTABLISHED, FIN_WAIT1));
        t.apply(state(1, 2, FIN_WAIT1, FIN_WAIT2));
        let f = t.apply(state(1, 3, FIN_WAIT2, CLOSE)).unwrap();
        assert_eq!(
            (f.ending.first_fin, f.ending.second_fin),
            (Some(Side::Local), Some(Side::Peer))
        );
        t.apply(state(2, 1, ESTABLISHED, CLOSE_WAIT));
        t.apply(state(2, 2, CLOSE_WAIT, LAST_ACK));
        let f = t.apply(state(2, 3, LAST_ACK, CLOSE)).unwrap();
        assert_eq!(
            (f.ending.first_fin, f.ending.second_fin),
            (Some(Side::Peer), Some(Side::Local))
        );
    }

    #[test]
    fn reset_received_is_the_peers() {
        let mut t = FlowTable::new(FlowLimits::default());
        t.apply(data(2, 1, Direction::Egress, 1000, b"a"));
        t.apply(CaptureEvent::Lifecycle {
            cookie: 2,
            ts_ns: 2,
            what: Lifecycle::ResetReceived,
        });
        let f = t
            .apply(state(2, 3, tcp_state::ESTABLISHED, tcp_state::CLOSE))
            .unwrap();
        assert_eq!(f.ending.reset, Some(Side::Peer));
        assert_eq!(f.ending.first_fin, None);
    }

    #[test]
    fn idle_flows_expire_and_active_ones_stay() {
        let limits = FlowLimits {
            idle_ns: 100,
            ..FlowLimits::default()
        };
        let mut t = FlowTable::new(limits);
        t.apply(data(1, 0, Direction::Egress, 1000, b"a"));
        t.apply(data(2, 50, Direction::Egress, 1000, b"a"));
        let done = t.expire(120);
        assert_eq!(done.iter().map(|f| f.cookie).collect::<Vec<_>>(), vec![1]);
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn table_is_bounded_by_evicting_the_least_recent() {
        let limits = FlowLimits {
            max_flows: 2,
            ..FlowLimits::default()
        };
        let mut t = FlowTable::new(limits);
        t.apply(data(1, 10, Direction::Egress, 1000, b"a"));
        t.apply(data(2, 5, Direction::Egress, 1000, b"a"));
        t.apply(data(3, 20, Direction::Egress, 1000, b"a"));
        assert_eq!(t.len(), 2);
        assert!(t.get(2).is_none());
    }
}
