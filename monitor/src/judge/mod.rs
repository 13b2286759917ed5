//! Live connections judged by the core: capture events → `flows` (reassembly, lifecycle,
//! owner) → one `handshake::Connection` per flow, fed in arrival order → one [`Verdict`]
//! per connection, as soon as its outcome is decided (then the kernel may stop capturing)
//! or when the connection ends or goes idle. Pure: time comes in with the events and the
//! caller gives the monotonic→unix clock offset.

pub mod filters;

use std::collections::HashMap;

use monitor_common::tcp_state;

use crate::{
    flow::{
        CaptureEvent, CaptureKind, ConnInfo, Direction, Flow, FlowLimits, FlowTable, Lifecycle,
        Role, Side, Task,
    },
    handshake::{Cause, CloseKind, Connection, ConnectionMeta, HandshakeOutcome, Party},
};

/// The judgement of one connection, given once.
#[derive(Debug, Clone)]
pub struct Verdict {
    pub cookie: u64,
    pub conn: Option<ConnInfo>,
    pub owner: Option<Task>,
    pub outcome: HandshakeOutcome,
    pub capture: Option<CaptureKind>,
    /// The kernel hit its byte budget (the outcome may rest on partial bytes).
    pub truncated: bool,
    /// Unix ns of the connection's first event.
    pub first_unix_ns: u64,
    /// Decided while the connection was still open: the kernel can stop capturing it.
    pub early: bool,
}

/// What the core has been fed of one flow.
struct Fed {
    conn: Connection,
    bytes: [usize; 2],
    /// First and second FIN given.
    fins: [bool; 2],
    reset: bool,
}

/// Every live connection between its first event and its verdict.
pub struct Judge {
    table: FlowTable,
    fed: HashMap<u64, Fed>,
    /// Cookies already judged, with the monotonic time of their last event; later events
    /// of theirs (the close after an early verdict) are dropped.
    judged: HashMap<u64, u64>,
    tls_ports: Vec<u16>,
    idle_ns: u64,
    /// unix ns = monotonic ns + offset.
    unix_offset_ns: i64,
}

impl Judge {
    pub fn new(limits: FlowLimits, tls_ports: Vec<u16>) -> Self {
        Judge {
            idle_ns: limits.idle_ns,
            table: FlowTable::new(limits),
            fed: HashMap::new(),
            judged: HashMap::new(),
            tls_ports,
            unix_offset_ns: 0,
        }
    }

    /// Sets the offset that turns kernel (monotonic) times into unix times.
    pub fn set_unix_offset(&mut self, offset_ns: i64) {
        self.unix_offset_ns = offset_ns;
    }

    /// Adds a port known to speak TLS (plaintext sent to it is a failure).
    pub fn add_tls_port(&mut self, port: u16) {
        if !self.tls_ports.contains(&port) {
            self.tls_ports.push(port);
        }
    }

    /// Connections being watched.
    pub fn open_connections(&self) -> usize {
        self.table.len()
    }

    fn unix(&self, mono_ns: u64) -> u64 {
        to_unix(mono_ns, self.unix_offset_ns)
    }

    /// Applies one capture event; returns the connection's verdict when it is reached.
    pub fn apply(&mut self, ev: CaptureEvent) -> Option<Verdict> {
        let cookie = ev.cookie();
        if let Some(last) = self.judged.get_mut(&cookie) {
            *last = (*last).max(ev.ts_ns());
            if is_final_close(&ev) {
                self.judged.remove(&cookie);
            }
            return None;
        }
        let ts = ev.ts_ns();
        let offset = self.unix_offset_ns;
        if let Some(flow) = self.table.apply(ev) {
            feed(&mut self.fed, &self.tls_ports, offset, &flow, ts);
            let fed = self.fed.remove(&cookie);
            return Some(self.verdict(&flow, fed, ts, false));
        }
        let flow = self.table.get(cookie)?;
        let fed = feed(&mut self.fed, &self.tls_ports, offset, flow, ts)?;
        // A server's socket is named by the first read of its process, which can come after
        // the bytes that settle the outcome (plaintext sent to a TLS port): wait for the name,
        // or judge at close.
        if !settled(&fed.conn.outcome()) || flow.owner.is_none() {
            return None;
        }
        let flow = self.table.remove(cookie)?;
        self.judged.insert(cookie, ts);
        let fed = self.fed.remove(&cookie);
        Some(self.verdict(&flow, fed, ts, true))
    }

    /// Connections seen for at least `grace_ns` whose process the kernel has not named
    /// (candidates for the /proc fallback): cookie and ends, at most `max`.
    pub fn unowned(&self, now_mono_ns: u64, grace_ns: u64, max: usize) -> Vec<(u64, ConnInfo)> {
        self.table
            .iter()
            .filter(|f| f.owner.is_none() && now_mono_ns.saturating_sub(f.first_ns) >= grace_ns)
            .filter_map(|f| Some((f.cookie, f.conn.clone()?)))
            .take(max)
            .collect()
    }

    /// Judges the connections idle since `now_mono_ns - idle` as they stand.
    pub fn expire(&mut self, now_mono_ns: u64) -> Vec<Verdict> {
        let idle = self.idle_ns;
        self.judged
            .retain(|_, last| now_mono_ns.saturating_sub(*last) < idle);
        let flows = self.table.expire(now_mono_ns);
        self.finish_all(flows, now_mono_ns)
    }

    /// Judges every open connection (shutdown).
    pub fn drain(&mut self, now_mono_ns: u64) -> Vec<Verdict> {
        let flows = self.table.drain();
        self.judged.clear();
        self.finish_all(flows, now_mono_ns)
    }

    fn finish_all(&mut self, flows: Vec<Flow>, now_mono_ns: u64) -> Vec<Verdict> {
        flows
            .into_iter()
            .map(|flow| {
                let fed = self.fed.remove(&flow.cookie);
                self.verdict(&flow, fed, now_mono_ns, false)
            })
            .collect()
    }

    fn verdict(&self, flow: &Flow, fed: Option<Fed>, now_mono_ns: u64, early: bool) -> Verdict {
        let outcome = match fed {
            Some(f) => match f.conn.outcome() {
                HandshakeOutcome::Undecided => f.conn.finish(self.unix(now_mono_ns)),
                o => o,
            },
            // Events but no bytes (an owner or close without data): nothing to judge.
            None => HandshakeOutcome::Undecided,
        };
        Verdict {
            cookie: flow.cookie,
            conn: flow.conn.clone(),
            owner: flow.owner.clone(),
            outcome,
            capture: flow.kind,
            truncated: flow.truncated,
            first_unix_ns: self.unix(flow.first_ns),
            early,
        }
    }
}

/// An outcome that nothing later on the connection can change, so it can be given before
/// the connection ends: a readable fatal alert, or bytes that are not TLS. A completed
/// handshake is not settled (a TLS 1.3 peer may still reject the other's certificate with an
/// encrypted alert, a client may still hang up over the hostname), nor is any inference.
fn settled(o: &HandshakeOutcome) -> bool {
    match o {
        HandshakeOutcome::Failed(d) => {
            !d.inferred && d.alert.as_ref().is_some_and(|a| !a.encrypted)
                || d.cause == Cause::PlaintextToTlsPort
        }
        HandshakeOutcome::NotTls(_) => true,
        HandshakeOutcome::Completed(_) | HandshakeOutcome::Undecided => false,
    }
}

fn to_unix(mono_ns: u64, offset_ns: i64) -> u64 {
    (mono_ns as i64).saturating_add(offset_ns).max(0) as u64
}

/// Gives the core what is new in the flow (bytes of either direction, then closes); returns
/// what it has been fed, or `None` while the flow has no bytes.
fn feed<'a>(
    all: &'a mut HashMap<u64, Fed>,
    tls_ports: &[u16],
    offset_ns: i64,
    flow: &Flow,
    ts_mono: u64,
) -> Option<&'a mut Fed> {
    let has_bytes = flow.streams.iter().any(Option::is_some);
    if !has_bytes && !all.contains_key(&flow.cookie) {
        return None;
    }
    let ts = to_unix(ts_mono, offset_ns);
    let first = to_unix(flow.first_ns, offset_ns);
    let meta = ConnectionMeta {
        tls_port: flow.kind == Some(CaptureKind::Sample)
            || flow
                .conn
                .as_ref()
                .is_some_and(|c| tls_ports.contains(&c.server_port())),
    };
    let fed = all.entry(flow.cookie).or_insert_with(|| {
        let mut conn = Connection::new(meta);
        conn.opened(first);
        Fed {
            conn,
            bytes: [0, 0],
            fins: [false; 2],
            reset: false,
        }
    });
    let role = flow.role();
    for d in [Direction::Egress, Direction::Ingress] {
        let stream = flow.stream(d);
        let done = fed.bytes[d.index()];
        if let Some(new) = stream.get(done..).filter(|b| !b.is_empty()) {
            fed.conn.data(party(role, d), ts, new);
            fed.bytes[d.index()] = stream.len();
        }
    }
    let side_party = |s: Side| match s {
        Side::Local => party(role, Direction::Egress),
        Side::Peer => party(role, Direction::Ingress),
    };
    for (i, side) in [flow.ending.first_fin, flow.ending.second_fin]
        .into_iter()
        .enumerate()
    {
        if let (Some(s), false) = (side, fed.fins[i]) {
            fed.conn.closed(side_party(s), CloseKind::Fin, ts);
            fed.fins[i] = true;
        }
    }
    if let (Some(s), false) = (flow.ending.reset, fed.reset) {
        fed.conn.closed(side_party(s), CloseKind::Reset, ts);
        fed.reset = true;
    }
    Some(fed)
}

/// The TLS party that sent the bytes of direction `d` of a local socket with role `role`.
fn party(role: Role, d: Direction) -> Party {
    match (role, d) {
        (Role::Server, Direction::Egress) | (Role::Client | Role::Unknown, Direction::Ingress) => {
            Party::Server
        }
        (Role::Server, Direction::Ingress) | (Role::Client | Role::Unknown, Direction::Egress) => {
            Party::Client
        }
    }
}

fn is_final_close(ev: &CaptureEvent) -> bool {
    matches!(
        ev,
        CaptureEvent::Lifecycle {
            what: Lifecycle::State { new, .. },
            ..
        } if *new == tcp_state::CLOSE
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flow::DataChunk;

    const COOKIE: u64 = 7;

    fn open(role: Role, local: &str, peer: &str) -> CaptureEvent {
        CaptureEvent::Open {
            cookie: COOKIE,
            ts_ns: 1_000,
            conn: ConnInfo {
                role,
                local: local.parse().unwrap(),
                peer: peer.parse().unwrap(),
                socket_cgroup_id: 1,
            },
            // As the kernel reports them: clients are named at connect, servers later.
            owner: (role == Role::Client).then(|| owner("curl")),
        }
    }

    fn owner(comm: &str) -> Task {
        Task {
            tgid: 42,
            pid: 42,
            cgroup_id: 1,
            comm: comm.into(),
        }
    }

    fn data(d: Direction, seq: u32, bytes: &[u8], sample: bool) -> CaptureEvent {
        CaptureEvent::Data(DataChunk {
            cookie: COOKIE,
            ts_ns: 2_000 + u64::from(seq),
            direction: d,
            tls: !sample,
            sample,
            mid_stream: false,
            truncated: false,
            seq,
            stream_start: 100,
            segment_len: bytes.len() as u32,
            bytes: bytes.to_vec(),
        })
    }

    fn state(old: u8, new: u8) -> CaptureEvent {
        CaptureEvent::Lifecycle {
            cookie: COOKIE,
            ts_ns: 9_000,
            what: Lifecycle::State { old, new },
        }
    }

    #[test]
    fn a_fatal_alert_is_judged_at_once_and_the_close_after_it_is_dropped() {
        let mut j = Judge::new(FlowLimits::default(), vec![8443]);
        j.set_unix_offset(1_700_000_000_000_000_000);
        assert!(
            j.apply(open(Role::Client, "127.0.0.1:40000", "127.0.0.1:8443"))
                .is_none()
        );
        // A minimal ClientHello header is enough to reach the client_hello stage.
        assert!(
            j.apply(data(
                Direction::Egress,
                100,
                &[22, 3, 1, 0, 4, 1, 0, 0, 0],
                false
            ))
            .is_none()
        );
        let v = j
            .apply(data(
                Direction::Ingress,
                100,
                &[21, 3, 3, 0, 2, 2, 70],
                false,
            ))
            .expect("decided by the alert");
        assert!(v.early);
        let d = v.outcome.diagnosis().expect("failed");
        assert_eq!(d.cause, Cause::ProtocolVersionMismatch);
        assert_eq!(d.alert.as_ref().map(|a| a.sender), Some(Party::Server));
        assert_eq!(v.first_unix_ns, 1_700_000_000_000_001_000);
        assert_eq!(j.open_connections(), 0);
        assert!(
            j.apply(state(tcp_state::ESTABLISHED, tcp_state::CLOSE_WAIT))
                .is_none()
        );
        assert!(
            j.apply(state(tcp_state::LAST_ACK, tcp_state::CLOSE))
                .is_none()
        );
        assert!(j.judged.is_empty(), "forgotten at TCP_CLOSE");
    }

    #[test]
    fn server_side_roles_are_mapped_and_plaintext_on_a_tls_port_fails() {
        let mut j = Judge::new(FlowLimits::default(), vec![]);
        let verdicts: Vec<Verdict> = [
            open(Role::Server, "127.0.0.1:8443", "127.0.0.1:40000"),
            data(
                Direction::Ingress,
                100,
                b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
                true,
            ),
            state(tcp_state::ESTABLISHED, tcp_state::CLOSE_WAIT),
            state(tcp_state::LAST_ACK, tcp_state::CLOSE),
        ]
        .into_iter()
        .filter_map(|e| j.apply(e))
        .collect();
        assert_eq!(verdicts.len(), 1, "one verdict per connection");
        let v = &verdicts[0];
        let d = v.outcome.diagnosis().expect("failed");
        assert_eq!(d.cause, Cause::PlaintextToTlsPort);
    }

    #[test]
    fn a_settled_server_side_waits_for_its_process_name() {
        let mut j = Judge::new(FlowLimits::default(), vec![8443]);
        j.apply(open(Role::Server, "127.0.0.1:8443", "127.0.0.1:40000"));
        // The plaintext settles the outcome before the server process has read anything.
        assert!(
            j.apply(data(Direction::Ingress, 100, b"GET / HTTP/1.1\r\n", true))
                .is_none()
        );
        let v = j
            .apply(CaptureEvent::Owner {
                cookie: COOKIE,
                ts_ns: 3_000,
                owner: owner("nginx"),
            })
            .expect("judged once named");
        assert!(v.early);
        assert_eq!(v.owner.map(|o| o.comm).as_deref(), Some("nginx"));
        assert_eq!(
            v.outcome.diagnosis().map(|d| d.cause),
            Some(Cause::PlaintextToTlsPort)
        );
    }

    #[test]
    fn a_silent_handshake_is_judged_when_idle() {
        let limits = FlowLimits {
            idle_ns: 1_000_000,
            ..FlowLimits::default()
        };
        let mut j = Judge::new(limits, vec![8443]);
        j.apply(open(Role::Client, "127.0.0.1:40000", "127.0.0.1:8443"));
        j.apply(data(
            Direction::Egress,
            100,
            &[22, 3, 1, 0, 4, 1, 0, 0, 0],
            false,
        ));
        assert!(j.expire(500_000).is_empty());
        let v = j.expire(5_000_000_000).pop().expect("expired");
        assert!(!v.early);
        assert_eq!(
            v.outcome.diagnosis().map(|d| d.cause),
            Some(Cause::HandshakeTimeout)
        );
    }

    #[test]
    fn events_without_bytes_give_no_judgement() {
        let mut j = Judge::new(FlowLimits::default(), vec![]);
        j.apply(open(Role::Client, "127.0.0.1:40000", "127.0.0.1:9"));
        let v = j
            .apply(state(tcp_state::ESTABLISHED, tcp_state::CLOSE))
            .expect("finished");
        assert!(!v.outcome.is_decided());
    }
}
