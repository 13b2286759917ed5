//! Per-connection state: the two reassembled directions, lifecycle and owner of every
//! reported connection, keyed by socket cookie. Pure (events in, finished flows out), with
//! time passed in so expiry is testable without sleeping.

use std::collections::HashMap;

use monitor_common::{rules, tcp_state};

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

/// Why the bytes of a connection cannot carry its verdict: what the capture missed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Incomplete {
    /// The kernel could not deliver some of its records (ring full).
    RingLoss,
    /// A stream lacks its first bytes (a first segment lost or reordered at the start, or
    /// sent to a listener before the connection's socket existed).
    MissingStart,
    /// A stream has a gap after its start.
    Hole,
    /// The per-direction byte budget ended the capture before the handshake did.
    Budget,
    /// The flow table was full and the flow was pushed out before its end.
    Evicted,
    /// Neither the kernel nor the bytes told which end is the client.
    UnknownRole,
}

impl Incomplete {
    pub const ALL: [Incomplete; 6] = [
        Incomplete::RingLoss,
        Incomplete::MissingStart,
        Incomplete::Hole,
        Incomplete::Budget,
        Incomplete::Evicted,
        Incomplete::UnknownRole,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Incomplete::RingLoss => "ring_loss",
            Incomplete::MissingStart => "missing_start",
            Incomplete::Hole => "hole",
            Incomplete::Budget => "budget",
            Incomplete::Evicted => "evicted",
            Incomplete::UnknownRole => "unknown_role",
        }
    }
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
    /// The kernel lost records of this flow.
    pub lost: bool,
    /// The kernel saw the connection only after the peer's first bytes went elsewhere.
    pub missed_start: bool,
    /// The role the bytes show (a ClientHello's sender is the client), for connections
    /// the kernel could not give one.
    inferred_role: Option<Role>,
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
            lost: false,
            missed_start: false,
            inferred_role: None,
            ending: Ending::default(),
        }
    }

    /// The local socket's role: the kernel's, else the one the bytes show, else unknown.
    pub fn role(&self) -> Role {
        match self.conn.as_ref().map(|c| c.role) {
            Some(r) if r != Role::Unknown => r,
            _ => self.inferred_role.unwrap_or(Role::Unknown),
        }
    }

    /// What the capture of this flow missed, judged from its bytes and flags (the
    /// truncation by budget is judged with the outcome, by the caller).
    pub fn incomplete(&self) -> Option<Incomplete> {
        if self.lost {
            return Some(Incomplete::RingLoss);
        }
        let holes: Vec<_> = self.streams.iter().flatten().map(|s| s.holes()).collect();
        if self.missed_start || holes.iter().flatten().any(|h| h.start == 0) {
            return Some(Incomplete::MissingStart);
        }
        if holes.iter().any(|h| !h.is_empty()) {
            return Some(Incomplete::Hole);
        }
        None
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
        self.lost |= d.lost;
        let s = self.streams[d.direction.index()]
            .get_or_insert_with(|| StreamReassembler::new(d.stream_start, limit));
        s.push(d.seq, &d.bytes);
        if self.inferred_role.is_none() && starts_client_hello(s.contiguous()) {
            self.inferred_role = Some(match d.direction {
                Direction::Egress => Role::Client,
                Direction::Ingress => Role::Server,
            });
        }
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
                    // Straight from an open state to CLOSE with no reset received first
                    // (the peer's RST is seen before the state changes): this end aborted.
                    // `close()` with unread data sets CLOSE and only then sends its RST,
                    // which the kernel no longer attributes to the flow (HAProxy refusing
                    // a client certificate after the request arrived).
                    if matches!(old, tcp_state::ESTABLISHED | tcp_state::CLOSE_WAIT) {
                        self.ending.reset.get_or_insert(Side::Local);
                    }
                }
            }
        }
    }
}

/// A stream that begins with a ClientHello (a TLS handshake record of type 1, or an
/// SSLv2-compatible hello): the kernel's own test on a payload's first bytes.
fn starts_client_hello(stream: &[u8]) -> bool {
    let Some(head) = stream.first_chunk::<5>() else {
        return false;
    };
    rules::looks_like_tls(head) && rules::starts_client_hello(head, stream.get(5).copied())
}

/// The FIN a socket state change reveals (`rules::fin_of`, which the kernel also uses to
/// choose which state changes to send).
fn fin_of(old: u8, new: u8) -> Option<Side> {
    rules::fin_of(old, new).map(|fin| match fin {
        rules::Fin::Local => Side::Local,
        rules::Fin::Peer => Side::Peer,
    })
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
    /// Flows pushed out to make room, waiting to be taken (`take_evicted`).
    evicted: Vec<Flow>,
}

impl FlowTable {
    pub fn new(limits: FlowLimits) -> Self {
        FlowTable {
            flows: HashMap::new(),
            limits,
            evicted: Vec::new(),
        }
    }

    /// The flows pushed out of a full table since the last call: their capture ends early.
    pub fn take_evicted(&mut self) -> Vec<Flow> {
        std::mem::take(&mut self.evicted)
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
        // A close or reset of a connection not (or no longer) in the table: a RST the kernel
        // sends after TCP_CLOSE, or the end of a flow whose other records were lost. Nothing
        // to judge; a new flow would be a phantom.
        if matches!(ev, CaptureEvent::Lifecycle { .. }) && !self.flows.contains_key(&cookie) {
            return None;
        }
        if !self.flows.contains_key(&cookie) && self.flows.len() >= self.limits.max_flows {
            self.make_room();
        }
        let flow = self
            .flows
            .entry(cookie)
            .or_insert_with(|| Flow::new(cookie, ts));
        flow.last_ns = flow.last_ns.max(ts);
        match ev {
            CaptureEvent::Open {
                conn,
                owner,
                missed_start,
                ..
            } => {
                flow.conn = Some(conn);
                flow.missed_start |= missed_start;
                if owner.is_some() {
                    flow.owner = owner;
                }
            }
            CaptureEvent::Owner { owner, .. } => flow.owner = Some(owner),
            CaptureEvent::Data(d) => flow.add_data(&d, self.limits.bytes_per_direction),
            CaptureEvent::Lifecycle { what, lost, .. } => {
                flow.lost |= lost;
                flow.add_lifecycle(what);
                if flow.ending.closed {
                    return self.flows.remove(&cookie);
                }
            }
        }
        None
    }

    /// Makes room in a full table: the least recently active sixteenth (at least one)
    /// leaves, to be judged as it stands. One pass over the table per sixteenth, so a storm
    /// of new connections costs a constant per connection, not a pass each.
    fn make_room(&mut self) {
        let mut by_age: Vec<(u64, u64)> =
            self.flows.values().map(|f| (f.last_ns, f.cookie)).collect();
        let n = (by_age.len() / 16).max(1).min(by_age.len());
        if n == 0 {
            return;
        }
        by_age.select_nth_unstable(n - 1);
        for (_, cookie) in by_age.into_iter().take(n) {
            if let Some(flow) = self.flows.remove(&cookie) {
                self.evicted.push(flow);
            }
        }
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
mod tests;
