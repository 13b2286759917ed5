//! Live connections judged by the core: capture events → `flows` (reassembly, lifecycle,
//! owner) → one `handshake::Connection` per flow, fed in arrival order → one [`Verdict`]
//! per connection, as soon as its outcome is decided (then the kernel may stop capturing)
//! or when the connection ends or goes idle. Pure: time comes in with the events and the
//! caller gives the monotonic→unix clock offset.

pub mod filters;

use std::collections::{HashMap, HashSet, VecDeque};

use monitor_common::tcp_state;

use crate::{
    flow::{
        CaptureEvent, CaptureKind, ConnInfo, Direction, Flow, FlowLimits, FlowTable, Incomplete,
        Lifecycle, Role, Side, Task, TlsServices, tls_services,
    },
    handshake::{
        AlertInfo, Cause, CloseKind, Connection, ConnectionMeta, HandshakeOutcome, Party,
        diagnose::Decision,
    },
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
    /// The capture missed what the outcome would rest on: the outcome is not a verdict
    /// (never a failure, never an alert). `None` when the bytes settle it anyway (a
    /// completed handshake, a readable alert, plaintext where TLS was due).
    pub incomplete: Option<Incomplete>,
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
    /// Connections that closed, most recent last: a late record of theirs (a retransmission
    /// the kernel still saw, a record that trailed the close) never starts a second flow.
    ended: EndedCookies,
    /// Cookies already judged, with the monotonic time of their last event; later events
    /// of theirs (the close after an early verdict) are dropped.
    judged: HashMap<u64, u64>,
    services: TlsServices,
    idle_ns: u64,
    /// unix ns = monotonic ns + offset.
    unix_offset_ns: i64,
    /// Connections of this process (tlsmon's own: MQTT, probes) are never judged.
    own_tgid: Option<u32>,
    /// Monotonic time by which the kernel had lost ring records: connections alive then
    /// may lack some of theirs.
    ring_loss_ns: Option<u64>,
}

impl Judge {
    /// `tls_ports`: ports configured as TLS (wherever they appear).
    pub fn new(limits: FlowLimits, tls_ports: Vec<u16>) -> Self {
        Judge {
            idle_ns: limits.idle_ns,
            table: FlowTable::new(limits),
            fed: HashMap::new(),
            ended: EndedCookies::default(),
            judged: HashMap::new(),
            services: TlsServices::new(&tls_ports),
            unix_offset_ns: 0,
            own_tgid: None,
            ring_loss_ns: None,
        }
    }

    /// Connections owned by `tgid` (tlsmon's own process) are dropped without a verdict.
    pub fn ignore_tgid(&mut self, tgid: u32) {
        self.own_tgid = Some(tgid);
    }

    /// The kernel reported lost ring records by monotonic time `mono_ns`: a connection alive
    /// then whose outcome is not settled by its bytes is `Incomplete::RingLoss`.
    pub fn note_ring_loss(&mut self, mono_ns: u64) {
        self.ring_loss_ns = Some(mono_ns);
    }

    fn own(&self, flow: &Flow) -> bool {
        self.own_tgid
            .is_some_and(|me| flow.owner.as_ref().is_some_and(|o| o.tgid == me))
    }

    /// Sets the offset that turns kernel (monotonic) times into unix times.
    pub fn set_unix_offset(&mut self, offset_ns: i64) {
        self.unix_offset_ns = offset_ns;
    }

    /// A verdict's lesson about which services speak TLS: a completed handshake teaches its
    /// service (not after a STARTTLS upgrade, not for an unknown role). The changes for the
    /// kernel's maps.
    pub fn learn(&mut self, v: &Verdict, now_mono_ns: u64) -> Vec<tls_services::Change> {
        match (&v.outcome, &v.conn) {
            (HandshakeOutcome::Completed(_), Some(c)) if v.incomplete.is_none() => {
                let upgraded = v.capture == Some(CaptureKind::Upgraded);
                self.services.completed(c, upgraded, now_mono_ns)
            }
            _ => Vec::new(),
        }
    }

    /// Learned services not seen for a day, forgotten: the changes for the kernel's maps.
    pub fn forget_stale_services(&mut self, now_mono_ns: u64) -> Vec<tls_services::Change> {
        self.services.expire(now_mono_ns)
    }

    /// What is known to speak TLS.
    pub fn tls_services(&self) -> &TlsServices {
        &self.services
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
                self.ended.insert(cookie);
            }
            return None;
        }
        if self.ended.contains(cookie) {
            return None;
        }
        let ts = ev.ts_ns();
        let offset = self.unix_offset_ns;
        if let Some(flow) = self.table.apply(ev) {
            self.ended.insert(cookie);
            if self.own(&flow) {
                self.fed.remove(&cookie);
                return None;
            }
            feed(&mut self.fed, &self.services, offset, &flow, ts);
            let fed = self.fed.remove(&cookie);
            return Some(self.verdict(&flow, fed, ts, false));
        }
        let flow = self.table.get(cookie)?;
        if self.own(flow) {
            self.table.remove(cookie);
            self.fed.remove(&cookie);
            self.judged.insert(cookie, ts);
            return None;
        }
        let fed = feed(&mut self.fed, &self.services, offset, flow, ts)?;
        // A server's socket is named by the first read of its process, which can come after
        // the bytes that settle the outcome (plaintext sent to a TLS port): wait for the name,
        // or judge at close.
        // The decision alone (no sentence, no copies of the offer and chain): this runs at
        // every chunk of every connection.
        if !settled(&fed.conn.decision(None)) || flow.owner.is_none() {
            return None;
        }
        let flow = self.table.remove(cookie)?;
        self.judged.insert(cookie, ts);
        let fed = self.fed.remove(&cookie);
        Some(self.verdict(&flow, fed, ts, true))
    }

    /// Whether `cookie` is a connection being watched (not judged, evicted or closed yet).
    pub fn watching(&self, cookie: u64) -> bool {
        self.table.get(cookie).is_some()
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

    /// The connections pushed out of a full flow table since the last call, judged as
    /// they stand: `Incomplete::Evicted` unless their bytes already settle them.
    pub fn take_evicted(&mut self, now_mono_ns: u64) -> Vec<Verdict> {
        let flows = self.table.take_evicted();
        let mut out = self.finish_all(flows, now_mono_ns);
        for v in &mut out {
            if v.incomplete.is_some() || !conclusive(&v.outcome) {
                v.incomplete = Some(Incomplete::Evicted);
            }
        }
        out
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
            .filter_map(|flow| {
                let fed = self.fed.remove(&flow.cookie);
                (!self.own(&flow)).then(|| self.verdict(&flow, fed, now_mono_ns, false))
            })
            .collect()
    }

    fn verdict(&self, flow: &Flow, fed: Option<Fed>, now_mono_ns: u64, early: bool) -> Verdict {
        let outcome = match fed {
            Some(f) => match f.conn.outcome() {
                HandshakeOutcome::Undecided => f.conn.finish(self.unix(now_mono_ns)),
                o => o,
            },
            // Events but no bytes (an owner or close without data), or bytes whose sender is
            // unknown: nothing to judge.
            None => HandshakeOutcome::Undecided,
        };
        let has_bytes = flow.streams.iter().any(Option::is_some);
        let missed = if flow.role() == Role::Unknown && has_bytes {
            Some(Incomplete::UnknownRole)
        } else {
            flow.incomplete()
                .or(flow.truncated.then_some(Incomplete::Budget))
                .or(self
                    .ring_loss_ns
                    .filter(|t| *t >= flow.first_ns)
                    .map(|_| Incomplete::RingLoss))
        };
        let incomplete = missed.filter(|_| !conclusive(&outcome));
        Verdict {
            cookie: flow.cookie,
            conn: flow.conn.clone(),
            owner: flow.owner.clone(),
            outcome,
            capture: flow.kind,
            truncated: flow.truncated,
            first_unix_ns: self.unix(flow.first_ns),
            early,
            incomplete,
        }
    }
}

/// An outcome the captured bytes settle even when the capture missed others: a completed
/// handshake, a settled failure (a readable alert, plaintext where TLS was due), no TLS.
fn conclusive(o: &HandshakeOutcome) -> bool {
    match o {
        HandshakeOutcome::Completed(_) | HandshakeOutcome::NotTls(_) => true,
        HandshakeOutcome::Failed(d) => settled_failure(d.inferred, d.alert.as_ref(), d.cause),
        HandshakeOutcome::Truncated(_) | HandshakeOutcome::Undecided => false,
    }
}

/// An outcome that nothing later on the connection can change, so it can be given before
/// the connection ends: a readable fatal alert, or bytes that are not TLS. A completed
/// handshake is not settled (a TLS 1.3 peer may still reject the other's certificate with an
/// encrypted alert, a client may still hang up over the hostname), nor is any inference.
fn settled(d: &Decision) -> bool {
    match d {
        Decision::Failed(f) => settled_failure(f.inferred, f.alert.as_ref(), f.cause),
        Decision::NotTls => true,
        Decision::Completed | Decision::ClosedWithoutData { .. } | Decision::Undecided => false,
    }
}

/// A failure nothing later can change: a readable fatal alert that is not an inference, or
/// plaintext where TLS was due.
fn settled_failure(inferred: bool, alert: Option<&AlertInfo>, cause: Cause) -> bool {
    !inferred && alert.is_some_and(|a| !a.encrypted) || cause == Cause::PlaintextToTlsPort
}

fn to_unix(mono_ns: u64, offset_ns: i64) -> u64 {
    (mono_ns as i64).saturating_add(offset_ns).max(0) as u64
}

/// Gives the core what is new in the flow (bytes of either direction, then closes); returns
/// what it has been fed, or `None` while the flow has no bytes.
fn feed<'a>(
    all: &'a mut HashMap<u64, Fed>,
    services: &TlsServices,
    offset_ns: i64,
    flow: &Flow,
    ts_mono: u64,
) -> Option<&'a mut Fed> {
    let has_bytes = flow.streams.iter().any(Option::is_some);
    if !has_bytes && !all.contains_key(&flow.cookie) {
        return None;
    }
    // Which end sent which bytes is not known yet: wait (a ClientHello will tell).
    if flow.role() == Role::Unknown {
        return None;
    }
    let ts = to_unix(ts_mono, offset_ns);
    let first = to_unix(flow.first_ns, offset_ns);
    let meta = ConnectionMeta {
        tls_port: flow.kind == Some(CaptureKind::Sample)
            || flow.conn.as_ref().is_some_and(|c| services.is_tls(c)),
        client_start_unseen: flow.missed_start && flow.role() == Role::Server,
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

/// The TLS party that sent the bytes of direction `d` of a local socket with role `role`
/// (`feed` never asks for an unknown role).
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

/// The last `ENDED_KEPT` cookies of closed connections (socket cookies are never reused
/// while the host runs: membership is exact).
#[derive(Default)]
struct EndedCookies {
    set: HashSet<u64>,
    order: VecDeque<u64>,
}

const ENDED_KEPT: usize = 16_384;

impl EndedCookies {
    fn insert(&mut self, cookie: u64) {
        if !self.set.insert(cookie) {
            return;
        }
        self.order.push_back(cookie);
        if self.order.len() > ENDED_KEPT
            && let Some(old) = self.order.pop_front()
        {
            self.set.remove(&old);
        }
    }

    fn contains(&self, cookie: u64) -> bool {
        self.set.contains(&cookie)
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
mod tests;
