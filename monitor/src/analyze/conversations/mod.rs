//! TCP connections out of segments: who is the client, both directions reassembled with
//! the same `reassembly` module live capture uses, each fed in arrival order to a
//! `handshake::Connection`. Bounded: per-direction byte limit and idle expiry.

use std::net::SocketAddr;

use monitor_common::{DEFAULT_WATCH_LIMIT, rules::looks_like_tls};

use crate::flow::reassembly::StreamReassembler;
use crate::handshake::{
    CloseKind, Connection, ConnectionMeta, HandshakeOutcome, Party, Truncated, upgrade,
};

use super::segments::Segment;

/// The tracker's tables: foldhash, seeded per process.
type HashMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;

/// Bytes kept per direction: the handshake, not the application data.
pub const DIRECTION_LIMIT: usize = 64 * 1024;
/// A connection silent this long (capture time) is judged as it stands.
pub const IDLE_NS: u64 = 300 * 1_000_000_000;

/// What happened on a connection, in arrival order (kept when recording for tests).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    Data {
        from: Party,
        ts_ns: u64,
        bytes: Vec<u8>,
    },
    Closed {
        by: Party,
        how: CloseKind,
        ts_ns: u64,
    },
}

/// A finished conversation.
#[derive(Debug, Clone)]
pub struct Report {
    pub client: SocketAddr,
    pub server: SocketAddr,
    pub first_ns: u64,
    /// Capture time at which the verdict was taken.
    pub end_ns: u64,
    pub meta: ConnectionMeta,
    pub outcome: HandshakeOutcome,
    /// The plaintext protocol the connection began with before its TLS (STARTTLS and
    /// kin: "smtp", "postgresql", ...); `None` when TLS started with the connection.
    pub upgrade: Option<&'static str>,
    pub events: Option<Vec<Event>>,
}

struct Conversation {
    meta: ConnectionMeta,
    client: SocketAddr,
    server: SocketAddr,
    first_ns: u64,
    last_ns: u64,
    conn: Connection,
    /// Index: `Party::index()`; created at SYN or first payload.
    streams: [Option<StreamReassembler>; 2],
    /// ISN + 1 learned from SYN / SYN-ACK before any payload.
    starts: [Option<u32>; 2],
    fed: [usize; 2],
    closed: [bool; 2],
    reset: bool,
    /// The capture began after this connection's SYN.
    mid_stream: bool,
    /// The client's first bytes were the start of a ClientHello.
    hello_at_start: bool,
    /// A stream began with bytes that are not TLS: later segments are watched for a TLS
    /// start, as the kernel does (`upgrade`).
    plain: bool,
    /// Plaintext bytes watched (both ways), bounded by the kernel's watch limit.
    watched: usize,
    /// TLS-looking segment starts (end, stream offset) not yet contiguous.
    candidates: Vec<(Party, usize)>,
    upgrade: Option<&'static str>,
    events: Option<Vec<Event>>,
}

/// Plaintext bytes of each end read to name an upgrade.
const PREAMBLE_KEPT: usize = 256;
/// TLS-looking segments waiting for the bytes before them.
const MAX_CANDIDATES: usize = 8;

impl Conversation {
    fn party(&self, src: SocketAddr) -> Party {
        if src == self.client {
            Party::Client
        } else {
            Party::Server
        }
    }

    /// A segment of `from` at stream offset `at` (already pushed): notes plaintext, and
    /// where a TLS record starts a segment of a plaintext connection within the watch limit
    /// (the kernel's rule: `rules::looks_like_tls` on the segment's first bytes), starts the
    /// handshake afresh there, the other end's stream at its next byte. A segment that came
    /// ahead of the bytes before it is kept as a candidate until they arrive.
    fn watch_for_tls(&mut self, from: Party, at: usize, payload: &[u8], ts_ns: u64) {
        if self.upgrade.is_some() {
            return;
        }
        if !self.plain {
            // Either stream's first bytes, once there are five, say whether it began as TLS.
            self.plain = self.streams.iter().flatten().any(|s| {
                s.contiguous()
                    .first_chunk::<5>()
                    .is_some_and(|h| !looks_like_tls(h))
            });
        }
        if !self.plain {
            return;
        }
        self.watched += payload.len();
        if self.watched <= DEFAULT_WATCH_LIMIT as usize
            && at > 0
            && payload.first_chunk::<5>().is_some_and(looks_like_tls)
            && self.candidates.len() < MAX_CANDIDATES
        {
            self.candidates.push((from, at));
        }
        let ready = self.candidates.iter().copied().find(|&(p, off)| {
            self.streams[p.index()]
                .as_ref()
                .is_some_and(|s| s.contiguous().len() > off)
        });
        let Some((from, at)) = ready else {
            return;
        };
        let i = from.index();
        let other = from.other().index();
        let stream = |k: usize| self.streams[k].as_ref().map_or(&[][..], |s| s.contiguous());
        let preamble = |k: usize, end: usize| &stream(k)[..end.min(PREAMBLE_KEPT)];
        let (upgrading, other_len) = (preamble(i, at), stream(other).len());
        let (client, server) = if from == Party::Client {
            (upgrading, preamble(other, other_len))
        } else {
            (preamble(other, other_len), upgrading)
        };
        self.upgrade = Some(upgrade::protocol(client, server, self.server.port()));
        self.hello_at_start |=
            from == Party::Client && stream(i).get(at..).is_some_and(is_client_hello);
        self.conn = Connection::new(ConnectionMeta::default());
        self.conn.opened(ts_ns);
        self.fed[i] = at;
        self.fed[other] = other_len;
        self.candidates.clear();
        if let Some(events) = &mut self.events {
            events.clear(); // a replay starts at the TLS start
        }
    }

    fn record(&mut self, e: Event) {
        if let Some(events) = &mut self.events {
            events.push(e);
        }
    }

    fn report(mut self, now: u64) -> Report {
        let outcome = match verdict(&self.conn, now) {
            o if !self.mid_stream || self.hello_at_start => o,
            // Text is plaintext wherever the capture began; other bytes without the
            // handshake's start (a join in the middle of a TLS record) are not a verdict.
            HandshakeOutcome::NotTls(n) if readable_text(&n) => HandshakeOutcome::NotTls(n),
            _ => HandshakeOutcome::Truncated(Truncated {
                bytes_from_client: self.fed[Party::Client.index()] as u64,
                bytes_from_server: self.fed[Party::Server.index()] as u64,
            }),
        };
        Report {
            client: self.client,
            server: self.server,
            first_ns: self.first_ns,
            end_ns: now,
            meta: self.meta,
            outcome,
            upgrade: self.upgrade,
            events: self.events.take(),
        }
    }
}

/// Both ends' first bytes (what the capture has) are printable text: plaintext for sure.
fn readable_text(n: &crate::handshake::NotTls) -> bool {
    let text = |s: &Option<String>| {
        s.as_deref().is_none_or(|s| {
            s.chars()
                .all(|c| c.is_ascii_graphic() || c.is_ascii_whitespace())
        })
    };
    (n.client_sample.is_some() || n.server_sample.is_some())
        && text(&n.client_sample)
        && text(&n.server_sample)
}

/// A handshake record starting with a ClientHello: its sender is the client.
fn is_client_hello(p: &[u8]) -> bool {
    p.len() > 5 && p[0] == 0x16 && p[5] == 1
}

/// The verdict on a conversation that ended (or was cut off) at `now`.
pub fn verdict(conn: &Connection, now: u64) -> HandshakeOutcome {
    match conn.outcome() {
        HandshakeOutcome::Undecided => conn.finish(now),
        o => o,
    }
}

/// Feeds recorded events to a fresh connection: how tests replay a capture re-chunked.
pub fn replay<'a>(
    meta: ConnectionMeta,
    first_ns: u64,
    events: impl IntoIterator<Item = &'a Event>,
) -> Connection {
    let mut conn = Connection::new(meta);
    conn.opened(first_ns);
    for e in events {
        match e {
            Event::Data { from, ts_ns, bytes } => conn.data(*from, *ts_ns, bytes),
            Event::Closed { by, how, ts_ns } => conn.closed(*by, *how, *ts_ns),
        }
    }
    conn
}

type Key = (SocketAddr, SocketAddr);

fn key(a: SocketAddr, b: SocketAddr) -> Key {
    if a <= b { (a, b) } else { (b, a) }
}

/// A connection that ended: when, and its client's first sequence number (ISN + 1) when
/// its SYN was seen (the same SYN again is a retransmission, not a new connection).
#[derive(Debug, Clone, Copy)]
struct Ended {
    at_ns: u64,
    client_start: Option<u32>,
}

/// When idle conversations are looked for: every `IDLE_NS / 4` of capture time, at the
/// first segment past it. One rule, kept by the tracker and by whoever shards segments
/// over several trackers (so they all expire at the same segments).
#[derive(Debug, Default, Clone, Copy)]
pub struct ExpiryClock {
    last_ns: u64,
}

impl ExpiryClock {
    /// True when a segment at `ts_ns` is the one to look for idle conversations.
    pub fn due(&mut self, ts_ns: u64) -> bool {
        let due = ts_ns.saturating_sub(self.last_ns) > IDLE_NS / 4;
        if due {
            self.last_ns = ts_ns;
        }
        due
    }
}

/// All TCP connections of one capture.
pub struct Tracker {
    table: HashMap<Key, Conversation>,
    /// Connections that ended (both FINs or a RST), by capture time of their end: their
    /// late segments (retransmissions, data after the close) start nothing new. Forgotten
    /// after `IDLE_NS`, or at a new SYN on the same ends.
    ended: HashMap<Key, Ended>,
    tls_ports: Vec<u16>,
    record: bool,
    segments: u64,
    expiry: ExpiryClock,
}

impl Tracker {
    /// `record`: keep every event of each conversation in its report (tests replay them).
    pub fn new(tls_ports: Vec<u16>, record: bool) -> Self {
        Tracker {
            table: HashMap::default(),
            ended: HashMap::default(),
            tls_ports,
            record,
            segments: 0,
            expiry: ExpiryClock::default(),
        }
    }

    pub fn open_conversations(&self) -> usize {
        self.table.len()
    }

    /// Takes one segment; finished conversations go to `done`.
    pub fn segment(&mut self, ts_ns: u64, seg: &Segment<'_>, done: &mut Vec<Report>) {
        self.segments += 1;
        self.tick(ts_ns, done);
        let k = key(seg.src, seg.dst);
        let fresh_syn = seg.syn && !seg.ack;
        // The client's SYN again (a retransmission, a duplicated frame) is not a new
        // connection: a new one starts from another sequence number.
        let same_syn = |start: Option<u32>| start == Some(seg.seq.wrapping_add(1));
        if fresh_syn
            && let Some(old) = self.table.get(&k)
            && (old.closed.iter().any(|c| *c) || old.reset || old.fed != [0, 0])
            && !same_syn(old.starts[Party::Client.index()])
        {
            // Port reuse: a new connection on the same 4-tuple.
            if let Some(old) = self.table.remove(&k) {
                done.push(old.report(ts_ns));
            }
        }
        if !self.table.contains_key(&k) {
            if !(seg.syn || !seg.payload.is_empty()) {
                return; // ACKs, FINs and RSTs of connections we never saw start
            }
            if let Some(ended) = self.ended.get(&k) {
                if !fresh_syn || same_syn(ended.client_start) {
                    return; // a late segment of a connection already judged
                }
                self.ended.remove(&k);
            }
            let conv = self.start(ts_ns, seg);
            self.table.insert(k, conv);
        }
        let Some(conv) = self.table.get_mut(&k) else {
            return;
        };
        conv.last_ns = ts_ns;
        let from = conv.party(seg.src);
        let i = from.index();
        if seg.syn {
            conv.starts[i] = Some(seg.seq.wrapping_add(1));
        }
        if !seg.payload.is_empty() {
            // A SYN's own sequence number carries no data: its payload (TCP Fast Open)
            // starts one later.
            let seq = seg.seq.wrapping_add(u32::from(seg.syn));
            let start = conv.starts[i].unwrap_or(seq);
            let stream = conv.streams[i]
                .get_or_insert_with(|| StreamReassembler::new(start, DIRECTION_LIMIT));
            stream.push(seq, seg.payload);
            let at = seq.wrapping_sub(stream.start()) as usize;
            conv.watch_for_tls(from, at, seg.payload, ts_ns);
            let Some(stream) = &conv.streams[i] else {
                return;
            };
            if stream.contiguous().len() > conv.fed[i] {
                let whole = stream.contiguous();
                if from == Party::Client
                    && conv.upgrade.is_none()
                    && conv.fed[i] < 6
                    && whole.len() >= 6
                {
                    conv.hello_at_start = is_client_hello(&whole[..6]);
                }
                let new = whole[conv.fed[i]..].to_vec();
                conv.fed[i] += new.len();
                conv.conn.data(from, ts_ns, &new);
                conv.record(Event::Data {
                    from,
                    ts_ns,
                    bytes: new,
                });
            }
        }
        if seg.rst || (seg.fin && !conv.closed[i]) {
            let how = if seg.rst {
                CloseKind::Reset
            } else {
                CloseKind::Fin
            };
            conv.closed[i] = true;
            conv.reset |= seg.rst;
            conv.conn.closed(from, how, ts_ns);
            conv.record(Event::Closed {
                by: from,
                how,
                ts_ns,
            });
        }
        if (conv.reset || conv.closed == [true, true])
            && let Some(conv) = self.table.remove(&k)
        {
            self.ended.insert(
                k,
                Ended {
                    at_ns: ts_ns,
                    client_start: conv.starts[Party::Client.index()],
                },
            );
            done.push(conv.report(ts_ns));
        }
    }

    fn start(&self, ts_ns: u64, seg: &Segment<'_>) -> Conversation {
        let (client, server) = self.roles(seg);
        let meta = ConnectionMeta {
            tls_port: self.tls_ports.contains(&server.port()),
            ..ConnectionMeta::default()
        };
        let mut conn = Connection::new(meta);
        conn.opened(ts_ns);
        Conversation {
            meta,
            client,
            server,
            first_ns: ts_ns,
            last_ns: ts_ns,
            conn,
            streams: [None, None],
            starts: [None, None],
            fed: [0, 0],
            closed: [false, false],
            reset: false,
            mid_stream: !seg.syn,
            hello_at_start: false,
            plain: false,
            watched: 0,
            candidates: Vec::new(),
            upgrade: None,
            events: self.record.then(Vec::new),
        }
    }

    /// Client and server of a connection first seen at `seg`.
    fn roles(&self, seg: &Segment<'_>) -> (SocketAddr, SocketAddr) {
        let src_is_client = if seg.syn {
            !seg.ack
        } else if is_client_hello(seg.payload) || self.tls_ports.contains(&seg.dst.port()) {
            true
        } else if self.tls_ports.contains(&seg.src.port()) {
            false
        } else {
            seg.src.port() > seg.dst.port() // ephemeral ports are the high ones
        };
        if src_is_client {
            (seg.src, seg.dst)
        } else {
            (seg.dst, seg.src)
        }
    }

    /// Capture time moved on to `ts_ns` (a segment here or on another tracker): judges
    /// idle conversations when the expiry clock says so.
    pub fn tick(&mut self, ts_ns: u64, done: &mut Vec<Report>) {
        if self.expiry.due(ts_ns) {
            self.expire(ts_ns, done);
        }
    }

    /// Judges conversations idle for `IDLE_NS` at capture time `now`.
    pub fn expire(&mut self, now: u64, done: &mut Vec<Report>) {
        let idle: Vec<Key> = self
            .table
            .iter()
            .filter(|(_, c)| now.saturating_sub(c.last_ns) >= IDLE_NS)
            .map(|(k, _)| *k)
            .collect();
        for k in idle {
            if let Some(c) = self.table.remove(&k) {
                done.push(c.report(now));
            }
        }
        self.ended
            .retain(|_, ended| now.saturating_sub(ended.at_ns) < IDLE_NS);
    }

    /// The end of the capture at `now`: every open conversation is judged.
    pub fn finish(mut self, now: u64) -> Vec<Report> {
        let mut left: Vec<Conversation> = self.table.drain().map(|(_, c)| c).collect();
        left.sort_by_key(|c| c.first_ns);
        left.into_iter().map(|c| c.report(now)).collect()
    }
}

#[cfg(test)]
mod tests;
