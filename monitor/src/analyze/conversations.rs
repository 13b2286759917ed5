//! TCP connections out of segments: who is the client, both directions reassembled with
//! the same `reassembly` module live capture uses, each fed in arrival order to a
//! `handshake::Connection`. Bounded: per-direction byte limit and idle expiry.

use std::collections::HashMap;
use std::net::SocketAddr;

use crate::flow::reassembly::StreamReassembler;
use crate::handshake::{CloseKind, Connection, ConnectionMeta, HandshakeOutcome, Party, Truncated};

use super::segments::Segment;

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
    events: Option<Vec<Event>>,
}

impl Conversation {
    fn party(&self, src: SocketAddr) -> Party {
        if src == self.client {
            Party::Client
        } else {
            Party::Server
        }
    }

    fn record(&mut self, e: Event) {
        if let Some(events) = &mut self.events {
            events.push(e);
        }
    }

    fn report(mut self, now: u64) -> Report {
        let outcome = match verdict(&self.conn, now) {
            // Plaintext is plaintext wherever the capture began; anything else without the
            // handshake's start is not a verdict.
            o @ HandshakeOutcome::NotTls(_) => o,
            o if !self.mid_stream || self.hello_at_start => o,
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
            events: self.events.take(),
        }
    }
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
    ended: HashMap<Key, u64>,
    tls_ports: Vec<u16>,
    record: bool,
    segments: u64,
    expiry: ExpiryClock,
}

impl Tracker {
    /// `record`: keep every event of each conversation in its report (tests replay them).
    pub fn new(tls_ports: Vec<u16>, record: bool) -> Self {
        Tracker {
            table: HashMap::new(),
            ended: HashMap::new(),
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
        if fresh_syn
            && let Some(old) = self.table.get(&k)
            && (old.closed.iter().any(|c| *c) || old.reset || old.fed != [0, 0])
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
            if self.ended.contains_key(&k) {
                if !fresh_syn {
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
            if stream.contiguous().len() > conv.fed[i] {
                let whole = stream.contiguous();
                if from == Party::Client && conv.fed[i] < 6 && whole.len() >= 6 {
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
            self.ended.insert(k, ts_ns);
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
            .retain(|_, ended| now.saturating_sub(*ended) < IDLE_NS);
    }

    /// The end of the capture at `now`: every open conversation is judged.
    pub fn finish(mut self, now: u64) -> Vec<Report> {
        let mut left: Vec<Conversation> = self.table.drain().map(|(_, c)| c).collect();
        left.sort_by_key(|c| c.first_ns);
        left.into_iter().map(|c| c.report(now)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seg<'a>(
        src: &str,
        dst: &str,
        seq: u32,
        syn: bool,
        ack: bool,
        payload: &'a [u8],
    ) -> Segment<'a> {
        Segment {
            src: src.parse().expect("addr"),
            dst: dst.parse().expect("addr"),
            seq,
            syn,
            ack,
            fin: false,
            rst: false,
            payload,
        }
    }

    #[test]
    fn fast_open_data_in_the_syn_starts_the_stream_whole() {
        let hello = [22u8, 3, 1, 0, 4, 1, 0, 0, 0];
        let mut t = Tracker::new(vec![443], true);
        let mut done = Vec::new();
        let (c, s) = ("127.0.0.1:40000", "127.0.0.1:443");
        t.segment(1, &seg(c, s, 1000, true, false, &hello), &mut done);
        t.segment(2, &seg(s, c, 5000, true, true, &[]), &mut done);
        let report = t.finish(3).pop().expect("one conversation");
        let Some(events) = report.events else {
            panic!("recorded")
        };
        assert_eq!(
            events.first(),
            Some(&Event::Data {
                from: Party::Client,
                ts_ns: 1,
                bytes: hello.to_vec()
            }),
            "the ClientHello from its first byte"
        );
    }

    fn with_flags(mut s: Segment<'_>, fin: bool, rst: bool) -> Segment<'_> {
        s.fin = fin;
        s.rst = rst;
        s
    }

    #[test]
    fn segments_after_the_close_start_no_second_conversation() {
        let hello = [22u8, 3, 1, 0, 4, 1, 0, 0, 0];
        let alert = [21u8, 3, 3, 0, 2, 2, 70];
        let mut t = Tracker::new(vec![443], false);
        let mut done = Vec::new();
        let (c, s) = ("127.0.0.1:40000", "127.0.0.1:443");
        t.segment(1, &seg(c, s, 1000, true, false, &[]), &mut done);
        t.segment(2, &seg(s, c, 5000, true, true, &[]), &mut done);
        t.segment(3, &seg(c, s, 1001, false, true, &hello), &mut done);
        t.segment(4, &seg(s, c, 5001, false, true, &alert), &mut done);
        t.segment(
            5,
            &with_flags(seg(s, c, 5008, false, true, &[]), true, false),
            &mut done,
        );
        t.segment(
            6,
            &with_flags(seg(c, s, 1010, false, true, &[]), true, false),
            &mut done,
        );
        assert_eq!(done.len(), 1, "judged at the second FIN");
        // Retransmissions of both ends' data after the close, then a late RST.
        t.segment(7, &seg(s, c, 5001, false, true, &alert), &mut done);
        t.segment(8, &seg(c, s, 1001, false, true, &hello), &mut done);
        t.segment(
            9,
            &with_flags(seg(c, s, 1011, false, false, &[]), false, true),
            &mut done,
        );
        assert_eq!(done.len(), 1, "no phantom conversation");
        assert!(t.finish(10).is_empty());
        // A new SYN on the same ends (port reuse) is a new connection.
        let mut t2 = Tracker::new(vec![443], false);
        let mut done2 = Vec::new();
        t2.segment(
            1,
            &with_flags(seg(c, s, 1000, false, true, &hello), false, true),
            &mut done2,
        );
        t2.segment(2, &seg(c, s, 9000, true, false, &[]), &mut done2);
        t2.segment(3, &seg(c, s, 9001, false, true, &hello), &mut done2);
        assert_eq!(done2.len(), 1);
        assert_eq!(t2.finish(4).len(), 1, "the new connection after a SYN");
    }

    #[test]
    fn a_capture_that_starts_mid_connection_is_truncated_not_failed() {
        let app = [23u8, 3, 3, 0, 3, 1, 2, 3];
        let mut t = Tracker::new(vec![443], false);
        let mut done = Vec::new();
        let (c, s) = ("127.0.0.1:40000", "127.0.0.1:443");
        // One record each way, no SYN, then silence until the end of the capture.
        t.segment(1, &seg(c, s, 77_000, false, true, &app), &mut done);
        t.segment(2, &seg(s, c, 99_000, false, true, &app), &mut done);
        let r = t.finish(600_000_000_000).pop().expect("one conversation");
        assert_eq!(
            r.outcome,
            HandshakeOutcome::Truncated(Truncated {
                bytes_from_client: 8,
                bytes_from_server: 8
            })
        );
        // Without a SYN but from the ClientHello on, the handshake is whole: judged.
        let hello = [22u8, 3, 1, 0, 4, 1, 0, 0, 0];
        let mut t = Tracker::new(vec![443], false);
        t.segment(1, &seg(c, s, 77_000, false, true, &hello[..3]), &mut done);
        t.segment(2, &seg(c, s, 77_003, false, true, &hello[3..]), &mut done);
        let r = t.finish(600_000_000_000).pop().expect("one conversation");
        assert_eq!(r.outcome.kind(), "failed", "{:?}", r.outcome);
        // Plaintext off the TLS ports stays plaintext.
        let mut t = Tracker::new(vec![443], false);
        let web = "127.0.0.1:80";
        t.segment(
            1,
            &seg(c, web, 5, false, true, b"GET / HTTP/1.1\r\n\r\n"),
            &mut done,
        );
        let r = t.finish(2).pop().expect("one conversation");
        assert_eq!(r.outcome.kind(), "not_tls");
    }
}
