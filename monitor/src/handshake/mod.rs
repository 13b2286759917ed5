//! The diagnosis core: sans-IO, pure, panic-free on any input.
//!
//! Input: the bytes of one TCP connection as they arrive (each direction in chunks of any
//! size, in arrival order), plus the close/reset of either end and unix timestamps. Output:
//! a [`HandshakeOutcome`]. Live capture (`flows`) and `tlsmon analyze` (pcap) both feed
//! this same type. Memory per connection is bounded (see `record_layer`).

pub mod certs;
pub mod diagnose;
pub mod hello;
pub mod names;
pub mod outcome;
pub mod record_layer;
pub mod sslv2;
pub mod upgrade;

pub use outcome::{
    AlertInfo, Cause, CloseKind, Closed, Completed, Diagnosis, HandshakeOutcome, NotTls, Party,
    Stage, Timing, Truncated,
};

use certs::CertSummary;
use hello::{ClientOffer, ServerChoice};
use record_layer::{Item, RecordLayer};

/// TLS 1.3 encrypted records kept for inference (the handshake needs far fewer).
const MAX_TRACKED_RECORDS: usize = 32;
/// Readable alerts kept.
const MAX_ALERTS: usize = 8;

/// Ports where TLS is expected from the first byte (HTTPS, SMTPS, LDAPS, DoT, FTPS, IMAPS,
/// POP3S, SIPS, Kubernetes API, alternate HTTPS, MQTTS).
pub const DEFAULT_TLS_PORTS: &[u16] = &[
    443, 465, 636, 853, 990, 993, 995, 5061, 6443, 8443, 8883, 9443,
];

/// What the caller knows about the connection besides its bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ConnectionMeta {
    /// The server port is a known TLS port (443, 8443, ...): plaintext there is a failure.
    pub tls_port: bool,
    /// The client's first bytes were sent but not captured: the kernel saw them and they did
    /// not look like TLS (or they reached the listener before this socket existed).
    pub client_start_unseen: bool,
}

/// A readable alert and where it fell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SeenAlert {
    pub from: Party,
    pub level: u8,
    pub code: u8,
    pub stage: Stage,
    pub ts_ns: u64,
}

/// An encrypted record (TLS 1.3 application_data, or a TLS <= 1.2 encrypted alert).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SealedRecord {
    pub from: Party,
    pub len: usize,
    /// The record had the alert content type (TLS <= 1.2 after ChangeCipherSpec).
    pub alert: bool,
    pub ts_ns: u64,
}

/// Everything learned so far; the diagnosis reads only this.
#[derive(Debug, Clone, Default)]
pub(crate) struct Facts {
    pub meta: ConnectionMeta,
    pub start_ns: Option<u64>,
    pub first_byte_ns: Option<u64>,
    pub last_ns: u64,
    pub offer: Option<ClientOffer>,
    pub offer_ns: u64,
    pub malformed_hello: Option<Party>,
    pub choice: Option<ServerChoice>,
    pub hello_retry: bool,
    pub server_certs: Option<Vec<CertSummary>>,
    /// Bits of the DH prime in a DHE ServerKeyExchange.
    pub dh_bits: Option<u32>,
    pub client_certs: Option<Vec<CertSummary>>,
    pub cert_request: bool,
    pub ccs: [bool; 2],
    /// Encrypted handshake records after ChangeCipherSpec (TLS <= 1.2 Finished).
    pub finished: [bool; 2],
    pub sealed: Vec<SealedRecord>,
    pub alerts: Vec<SeenAlert>,
    pub sslv2_hello: bool,
    /// The server answered with an SSLv2 SERVER-HELLO.
    pub sslv2_server: bool,
    pub not_tls: [bool; 2],
    pub desynchronised: [bool; 2],
    /// Time of the last bytes from each end.
    pub last_from: [Option<u64>; 2],
    pub closes: [Option<(CloseKind, u64)>; 2],
    /// Who closed first.
    pub first_close: Option<Party>,
    pub stage: Stage,
}

impl Facts {
    pub fn tls13(&self) -> bool {
        self.choice
            .as_ref()
            .is_some_and(|c| names::is_tls13(c.version) && !c.hello_retry)
    }

    /// Keeps an encrypted record's size for inference, up to the bound.
    fn seal(&mut self, r: SealedRecord) {
        if self.sealed.len() < MAX_TRACKED_RECORDS {
            self.sealed.push(r);
        }
    }

    fn reach(&mut self, stage: Stage) {
        self.stage = self.stage.max(stage);
    }
}

/// One TCP connection as the core sees it.
#[derive(Debug, Clone)]
pub struct Connection {
    layers: [RecordLayer; 2],
    items: Vec<Item>,
    facts: Facts,
}

impl Connection {
    pub fn new(meta: ConnectionMeta) -> Self {
        Connection {
            layers: [RecordLayer::new(), RecordLayer::new()],
            items: Vec::new(),
            facts: Facts {
                meta,
                ..Facts::default()
            },
        }
    }

    /// The TCP connection was established at `ts_ns` (unix ns).
    pub fn opened(&mut self, ts_ns: u64) {
        self.facts.start_ns.get_or_insert(ts_ns);
        self.facts.last_ns = self.facts.last_ns.max(ts_ns);
    }

    /// The next bytes sent by `from`, in arrival order.
    pub fn data(&mut self, from: Party, ts_ns: u64, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        self.opened(ts_ns);
        self.facts.first_byte_ns.get_or_insert(ts_ns);
        self.facts.last_from[from.index()] = Some(ts_ns);
        let mut items = std::mem::take(&mut self.items);
        self.layers[from.index()].push(bytes, &mut items);
        for item in items.drain(..) {
            self.item(from, ts_ns, item);
        }
        self.items = items;
    }

    /// `by` closed (FIN) or reset (RST) the connection at `ts_ns`.
    pub fn closed(&mut self, by: Party, how: CloseKind, ts_ns: u64) {
        self.opened(ts_ns);
        // The first close of an end is its decision; a RST after its FIN is only the
        // kernel answering data that arrived for a closed socket.
        self.facts.closes[by.index()].get_or_insert((how, ts_ns));
        self.facts.first_close.get_or_insert(by);
    }

    /// The verdict with what is known; `Undecided` while the handshake may still go on.
    pub fn outcome(&self) -> HandshakeOutcome {
        diagnose::outcome(&self.facts, &self.layers, None)
    }

    /// The verdict when nothing more will come (capture ended or the flow expired) at
    /// `now_ns`: waiting ends count as timeouts, open questions get the best answer.
    pub fn finish(&self, now_ns: u64) -> HandshakeOutcome {
        diagnose::outcome(&self.facts, &self.layers, Some(now_ns))
    }

    /// The deciding half alone (no sentence): what `outcome` (`None`) or `finish`
    /// (`Some(now_ns)`) rest on, with the rule that fired.
    pub fn decision(&self, finish_at: Option<u64>) -> diagnose::Decision {
        diagnose::decide::decide(&self.facts, &self.layers, finish_at)
    }

    fn item(&mut self, from: Party, ts_ns: u64, item: Item) {
        let f = &mut self.facts;
        match item {
            Item::Handshake { msg_type, body } => self.handshake(from, ts_ns, msg_type, &body),
            Item::OversizedHandshake { msg_type } => {
                if msg_type == 11 && from == Party::Server {
                    f.reach(Stage::Certificate);
                }
            }
            Item::ChangeCipherSpec => f.ccs[from.index()] = true,
            Item::EncryptedHandshake { .. } => {
                f.finished[from.index()] = true;
                f.reach(match from {
                    Party::Client => Stage::ClientFinished,
                    Party::Server => Stage::ServerFinished,
                });
            }
            Item::Alert { level, code } => {
                if f.alerts.len() < MAX_ALERTS {
                    f.alerts.push(SeenAlert {
                        from,
                        level,
                        code,
                        stage: f.stage,
                        ts_ns,
                    });
                }
            }
            Item::EncryptedAlert { len } => f.seal(SealedRecord {
                from,
                len,
                alert: true,
                ts_ns,
            }),
            Item::ApplicationData { len } => {
                f.seal(SealedRecord {
                    from,
                    len,
                    alert: false,
                    ts_ns,
                });
                if f.tls13() {
                    diagnose::tls13_stage(f);
                } else if f.finished == [true, true] {
                    f.reach(Stage::ApplicationData);
                }
            }
            Item::Heartbeat => {}
            Item::SslV2ClientHello { message } => {
                f.sslv2_hello = true;
                match sslv2::parse_client_hello(&message) {
                    Ok(offer) => f.offer = Some(offer),
                    Err(_) => f.malformed_hello = Some(Party::Client),
                }
                f.offer_ns = ts_ns;
                f.reach(Stage::ClientHello);
            }
            // An SSLv2 SERVER-HELLO means something only as the server's answer to a hello;
            // the same bytes from anyone else are just not TLS.
            Item::SslV2ServerHello
                if from == Party::Server && (f.offer.is_some() || f.sslv2_hello) =>
            {
                f.sslv2_server = true
            }
            Item::SslV2ServerHello => f.not_tls[from.index()] = true,
            Item::NotTls => f.not_tls[from.index()] = true,
            Item::Desynchronised => f.desynchronised[from.index()] = true,
        }
    }

    fn handshake(&mut self, from: Party, ts_ns: u64, msg_type: u8, body: &[u8]) {
        let f = &mut self.facts;
        match (from, msg_type) {
            (Party::Client, 1) => {
                match hello::parse_client_hello(body) {
                    // After a HelloRetryRequest the second offer replaces the first.
                    Ok(offer) => f.offer = Some(offer),
                    Err(_) => f.malformed_hello = Some(Party::Client),
                }
                if f.offer_ns == 0 {
                    f.offer_ns = ts_ns;
                }
                f.reach(Stage::ClientHello);
            }
            (Party::Server, 2) => match hello::parse_server_hello(body) {
                Ok(choice) => {
                    f.hello_retry |= choice.hello_retry;
                    f.choice = Some(choice);
                    f.reach(Stage::ServerHello);
                }
                Err(_) => f.malformed_hello = Some(Party::Server),
            },
            (Party::Server, 11) => {
                f.server_certs = Some(certs::parse_certificate_message(body));
                f.reach(Stage::Certificate);
            }
            (Party::Client, 11) => f.client_certs = Some(certs::parse_certificate_message(body)),
            (Party::Server, 12) => {
                let dhe = f
                    .choice
                    .as_ref()
                    .is_some_and(|c| c.cipher_name.contains("_DHE_"));
                if dhe {
                    f.dh_bits = dh_prime_bits(body);
                }
                f.reach(Stage::ServerKeyExchange);
            }
            (Party::Server, 13) => f.cert_request = true,
            (Party::Server, 14) => f.reach(Stage::ServerHelloDone),
            _ => {}
        }
    }
}

/// Bits of the prime `dh_p` that opens a DHE ServerKeyExchange (RFC 5246 §7.4.3: a 2-byte
/// length, then the big-endian prime); `None` when the message is too short.
fn dh_prime_bits(body: &[u8]) -> Option<u32> {
    let len = usize::from(u16::from_be_bytes([*body.first()?, *body.get(1)?]));
    let p = body.get(2..2 + len)?;
    let first = p.iter().position(|&b| b != 0)?;
    Some((p.len() - first) as u32 * 8 - p[first].leading_zeros())
}

#[cfg(test)]
mod tests {
    use super::hello::tests::{client_hello_body, server_hello_body};
    use super::record_layer::test_bytes::record;
    use super::*;

    fn handshake_record(t: u8, body: &[u8]) -> Vec<u8> {
        let mut m = vec![t];
        m.extend(&(body.len() as u32).to_be_bytes()[1..]);
        m.extend(body);
        record(22, &m)
    }

    /// A TLS 1.3 handshake whose ServerHello chose `version` (a draft), then data both ways.
    fn draft_conversation(version: u16, early: bool, client_finished_len: usize) -> Connection {
        let mut c = Connection::new(ConnectionMeta::default());
        c.opened(1);
        let hello = client_hello_body(Some("draft.example"), &[version, 0x0303], &[0x1301]);
        c.data(Party::Client, 2, &handshake_record(1, &hello));
        let mut flight = handshake_record(2, &server_hello_body(version, 0x1301, early));
        flight.extend(record(20, &[1]));
        flight.extend(record(23, &[0; 1500]));
        c.data(Party::Server, 3, &flight);
        let mut finished = record(20, &[1]);
        finished.extend(record(23, &vec![0; client_finished_len]));
        c.data(Party::Client, 4, &finished);
        c
    }

    /// The client's bytes of a TLS 1.2 handshake opened with an SSLv2-format hello, and the
    /// server's.
    fn sslv2_hello_handshake() -> (Vec<u8>, Vec<u8>) {
        let mut client = sslv2::tests::client_hello_record(0x0303, &[0x3b, 0x2f]);
        let mut server = handshake_record(2, &server_hello_body(0x0303, 0x3b, false));
        server.extend(handshake_record(14, &[]));
        client.extend(handshake_record(16, &[7; 130]));
        client.extend(record(20, &[1]));
        client.extend(record(22, &[9; 48]));
        server.extend(record(20, &[1]));
        server.extend(record(22, &[9; 48]));
        client.extend(record(23, &[5; 60]));
        (client, server)
    }

    #[test]
    fn an_sslv2_format_hello_is_decoded_through_to_completion_at_every_split() {
        let (client, server) = sslv2_hello_handshake();
        let hello_len = 2 + 9 + 6 + 32;
        for cut in 1..client.len() {
            let mut c = Connection::new(ConnectionMeta::default());
            c.opened(1);
            c.data(Party::Client, 2, &client[..cut.min(hello_len)]);
            c.data(Party::Client, 2, &client[cut.min(hello_len)..hello_len]);
            c.data(Party::Server, 3, &server);
            c.data(Party::Client, 4, &client[hello_len..cut.max(hello_len)]);
            c.data(Party::Client, 4, &client[cut.max(hello_len)..]);
            c.closed(Party::Client, CloseKind::Fin, 5);
            let HandshakeOutcome::Completed(done) = c.finish(10_000_000_000) else {
                panic!("cut {cut}: {:?}", c.finish(10_000_000_000));
            };
            let offer = done.offered.as_ref().expect("the v2 hello's offer");
            assert_eq!(offer.version_range(), "TLSv1.2", "cut {cut}");
            assert_eq!(done.selected.cipher_name, "TLS_RSA_WITH_NULL_SHA256");
        }
    }

    #[test]
    fn an_sslv2_server_hello_is_an_ssl2_only_peer() {
        let mut c = Connection::new(ConnectionMeta::default());
        c.opened(1);
        c.data(
            Party::Client,
            2,
            &sslv2::tests::client_hello_record(0x0301, &[0x2f]),
        );
        c.data(Party::Server, 3, &sslv2::tests::server_hello_record());
        let o = c.outcome();
        let d = o.diagnosis().expect("decided at the server's hello");
        assert_eq!(d.cause, Cause::Ssl2OnlyPeer);
        assert!(
            d.message.contains("SSL 2.0") && d.message.contains("TLSv1.0"),
            "{}",
            d.message
        );
    }

    #[test]
    fn a_client_that_speaks_plaintext_after_its_finished_and_leaves_rejected_the_server() {
        // libldap on GnuTLS: the certificate is checked after the handshake; on failure the
        // unbind goes out in the clear and the connection closes.
        let mut c = draft_conversation(0x0304, false, 53);
        c.data(
            Party::Client,
            5,
            &[0x30, 0x05, 0x02, 0x01, 0x02, 0x42, 0x00],
        );
        c.closed(Party::Client, CloseKind::Fin, 6);
        let o = c.outcome();
        let d = o.diagnosis().expect("failed");
        assert_eq!((d.cause, d.inferred), (Cause::ServerCertRejected, true));
        // The same client sending a request (a TLS record) and closing is a success.
        let mut c = draft_conversation(0x0304, false, 53);
        c.data(Party::Client, 5, &record(23, &[0; 90]));
        c.closed(Party::Client, CloseKind::Fin, 6);
        assert_eq!(c.finish(10_000_000_000).kind(), "completed");
    }

    #[test]
    fn an_ssl2_server_hello_counts_only_as_the_servers_answer() {
        // From the client, or from a server before any hello: bytes that are not TLS.
        for (from, first) in [(Party::Client, true), (Party::Server, true)] {
            let mut c = Connection::new(ConnectionMeta::default());
            c.opened(1);
            if first {
                c.data(from, 2, &sslv2::tests::server_hello_record());
            }
            c.closed(Party::Client, CloseKind::Fin, 3);
            let o = c.finish(10);
            assert!(
                o.diagnosis().is_none_or(|d| d.cause != Cause::Ssl2OnlyPeer),
                "{from:?}: {o:?}"
            );
        }
        // A client offering SSL 2.0 only is answered in SSL 2.0: not a TLS failure.
        let mut c = Connection::new(ConnectionMeta::default());
        c.opened(1);
        c.data(
            Party::Client,
            2,
            &sslv2::tests::client_hello_record(0x0002, &[0x01_0080]),
        );
        c.data(Party::Server, 3, &sslv2::tests::server_hello_record());
        assert_eq!(c.outcome().kind(), "not_tls");
    }

    #[test]
    fn tls13_drafts_are_judged_as_tls13() {
        for (version, early) in [(0x7f17, false), (0x7f12, true), (0xfb1a, false)] {
            let mut c = draft_conversation(version, early, 53);
            c.data(Party::Client, 5, &record(23, &[0; 120]));
            c.data(Party::Server, 6, &record(23, &[0; 300]));
            c.closed(Party::Client, CloseKind::Fin, 7);
            let HandshakeOutcome::Completed(done) = c.finish(10_000_000_000) else {
                panic!("{version:#x}: {:?}", c.finish(10_000_000_000));
            };
            assert!(done.selected.version_name.starts_with("TLSv1.3-"));
            // A 19-byte record where the client's Finished was due: the encrypted alert of
            // a client that refused the server, as in TLS 1.3.
            let mut c = draft_conversation(version, early, 2 + 1 + 16);
            c.closed(Party::Client, CloseKind::Fin, 5);
            let o = c.finish(10_000_000_000);
            let d = o.diagnosis().expect("failed");
            assert!(
                d.alert
                    .as_ref()
                    .is_some_and(|a| a.encrypted && a.sender == Party::Client),
                "{version:#x}: {d:?}"
            );
        }
    }

    #[test]
    fn the_dh_prime_is_measured_in_bits_and_a_short_message_is_none() {
        let mut ske = vec![0x00, 0x81, 0x00];
        ske.extend([0xff; 128]); // a 1024-bit prime with a leading zero byte
        ske.extend([0x00, 0x01, 0x02]);
        assert_eq!(dh_prime_bits(&ske), Some(1024));
        assert_eq!(dh_prime_bits(&[0x00, 0x02, 0x01, 0x00]), Some(9));
        // Length (2) + prime (129): every shorter prefix holds no whole prime.
        for cut in 0..131 {
            assert!(dh_prime_bits(&ske[..cut]).is_none(), "{cut}");
        }
        assert_eq!(dh_prime_bits(&ske[..131]), Some(1024));
    }
}
