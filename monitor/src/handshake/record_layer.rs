//! Incremental TLS record layer for one direction of a connection.
//!
//! Takes the direction's bytes in chunks of any size and yields what the handshake needs:
//! whole plaintext handshake messages (joined across records and across reads, RFC 8446
//! §5.1), change_cipher_spec, alerts (readable when the record is the 2-byte plaintext
//! form), and the sizes of encrypted records. The output does not depend on how the bytes
//! were split. Memory is bounded: at most one record plus `MAX_HANDSHAKE_MESSAGE` bytes.

use super::sslv2;

/// Largest record the layer accepts (RFC 8446 §5.2: 2^14 + 256 for ciphertext; TLS 1.2
/// allows 2^14 + 2048).
const MAX_RECORD: usize = 16384 + 2048;
/// A single handshake message larger than this (a 64 KiB certificate chain) is skipped.
pub const MAX_HANDSHAKE_MESSAGE: usize = 64 * 1024;
/// Bytes of a non-TLS stream kept as evidence.
pub const SAMPLE_LEN: usize = 64;

pub const CT_CHANGE_CIPHER_SPEC: u8 = 20;
pub const CT_ALERT: u8 = 21;
pub const CT_HANDSHAKE: u8 = 22;
pub const CT_APPLICATION_DATA: u8 = 23;
pub const CT_HEARTBEAT: u8 = 24;

/// One thing seen in the stream, in stream order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Item {
    /// A complete plaintext handshake message: type and body (without the 4-byte header).
    Handshake {
        msg_type: u8,
        body: Vec<u8>,
    },
    /// A handshake message too large to keep; its type only.
    OversizedHandshake {
        msg_type: u8,
    },
    /// A handshake record after ChangeCipherSpec (TLS <= 1.2 Finished): encrypted.
    EncryptedHandshake {
        len: usize,
    },
    ChangeCipherSpec,
    /// A readable alert.
    Alert {
        level: u8,
        code: u8,
    },
    /// An alert record whose body is encrypted (TLS <= 1.2 after ChangeCipherSpec).
    EncryptedAlert {
        len: usize,
    },
    /// One application_data record (TLS 1.3 carries its encrypted handshake and alerts
    /// in these).
    ApplicationData {
        len: usize,
    },
    Heartbeat,
    /// An SSLv2-format ClientHello (RFC 5246 appendix E.2): the record body, from the
    /// message type on. When it asks for SSLv3 or TLS, TLS records follow.
    SslV2ClientHello {
        message: Vec<u8>,
    },
    /// An SSLv2 SERVER-HELLO: the peer speaks only SSL 2.0. Nothing more is read.
    SslV2ServerHello,
    /// The stream does not start like TLS (see `RecordLayer::sample` for its first bytes).
    NotTls,
    /// A malformed record after valid ones: the rest of the stream is ignored.
    Desynchronised,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Nothing decided yet (fewer bytes than a record header).
    Start,
    /// Reading an SSLv2-format ClientHello into `pending`; TLS records may follow.
    SslV2Hello,
    Records,
    /// Not TLS, SSLv2 or desynchronised: only the sample is kept.
    Stopped,
}

/// The record layer of one direction.
#[derive(Debug, Clone)]
pub struct RecordLayer {
    mode: Mode,
    /// Bytes of the current, incomplete record (header included).
    pending: Vec<u8>,
    /// Plaintext handshake bytes not yet forming a whole message.
    handshake: Vec<u8>,
    /// Bytes of the current oversized message still to skip, and its type.
    skipping: Option<(usize, u8)>,
    /// ChangeCipherSpec was sent: later handshake records are encrypted.
    encrypted: bool,
    /// The first bytes of the stream, whatever they are.
    sample: Vec<u8>,
    bytes: u64,
}

impl Default for RecordLayer {
    fn default() -> Self {
        Self::new()
    }
}

impl RecordLayer {
    pub fn new() -> Self {
        RecordLayer {
            mode: Mode::Start,
            pending: Vec::new(),
            handshake: Vec::new(),
            skipping: None,
            encrypted: false,
            sample: Vec::new(),
            bytes: 0,
        }
    }

    /// The first bytes of the stream (up to `SAMPLE_LEN`).
    pub fn sample(&self) -> &[u8] {
        &self.sample
    }

    /// Bytes pushed so far.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// The stream ends inside a record or a handshake message.
    pub fn has_partial(&self) -> bool {
        self.mode != Mode::Stopped && (!self.pending.is_empty() || !self.handshake.is_empty())
    }

    /// Feeds the next bytes of the direction; appends what completed to `out`.
    pub fn push(&mut self, data: &[u8], out: &mut Vec<Item>) {
        let before = self.sample.len();
        self.bytes += data.len() as u64;
        if self.sample.len() < SAMPLE_LEN {
            let take = data.len().min(SAMPLE_LEN - self.sample.len());
            self.sample.extend_from_slice(&data[..take]);
        }
        if self.mode == Mode::Start {
            // While undecided every byte so far is in the sample (a decision needs <= 5).
            match classify_start(&self.sample) {
                None => return,
                Some(Start::SslV2) => {
                    self.mode = Mode::SslV2Hello;
                    let earlier = self.sample[..before].to_vec();
                    self.after_start(&earlier, out);
                }
                Some(Start::SslV2Server) => {
                    out.push(Item::SslV2ServerHello);
                    self.mode = Mode::Stopped;
                    return;
                }
                Some(Start::NotTls) => {
                    out.push(Item::NotTls);
                    self.mode = Mode::Stopped;
                    return;
                }
                Some(Start::Tls) => {
                    self.mode = Mode::Records;
                    let earlier = self.sample[..before].to_vec();
                    self.records(&earlier, out);
                }
            }
        }
        self.after_start(data, out);
    }

    fn after_start(&mut self, data: &[u8], out: &mut Vec<Item>) {
        let rest = if self.mode == Mode::SslV2Hello {
            self.sslv2_hello(data, out)
        } else {
            data
        };
        self.records(rest, out);
    }

    /// Gathers the SSLv2-format hello record; returns the bytes after it. A hello for SSL
    /// 2.0 itself is followed by SSLv2 records, which are not read.
    fn sslv2_hello<'a>(&mut self, mut data: &'a [u8], out: &mut Vec<Item>) -> &'a [u8] {
        loop {
            // The header first, then header and body.
            let need = match sslv2::record_len(&self.pending) {
                Some(body) => 2 + body,
                None => 2,
            };
            if self.pending.len() >= 2 && self.pending.len() >= need {
                break;
            }
            if data.is_empty() {
                return data;
            }
            let take = (need - self.pending.len()).min(data.len());
            self.pending.extend_from_slice(&data[..take]);
            data = &data[take..];
        }
        let record = std::mem::take(&mut self.pending);
        let message = record[2..].to_vec();
        let ssl2_only = message.get(1..3) == Some(&[0, 2]);
        out.push(Item::SslV2ClientHello { message });
        self.mode = if ssl2_only {
            Mode::Stopped
        } else {
            Mode::Records
        };
        data
    }

    fn records(&mut self, mut data: &[u8], out: &mut Vec<Item>) {
        while !data.is_empty() && self.mode == Mode::Records {
            if self.pending.is_empty() && data.len() >= 5 {
                // A record that starts here: read in place when `data` holds all of it.
                let total = 5 + usize::from(u16::from_be_bytes([data[3], data[4]]));
                if !is_record_header(data) || total - 5 > MAX_RECORD {
                    self.desynchronised(out);
                    return;
                }
                if data.len() >= total {
                    self.record(data[0], &data[5..total], out);
                    data = &data[total..];
                    continue;
                }
                self.pending.reserve_exact(total);
            }
            let need = self.record_len_needed();
            let take = (need - self.pending.len()).min(data.len());
            self.pending.extend_from_slice(&data[..take]);
            data = &data[take..];
            if self.pending.len() < 5 {
                continue;
            }
            if !is_record_header(&self.pending) || self.body_len() > MAX_RECORD {
                self.desynchronised(out);
                return;
            }
            if self.pending.len() == 5 + self.body_len() {
                let record = std::mem::take(&mut self.pending);
                self.record(record[0], &record[5..], out);
            }
        }
    }

    fn desynchronised(&mut self, out: &mut Vec<Item>) {
        out.push(Item::Desynchronised);
        self.mode = Mode::Stopped;
        self.pending = Vec::new();
    }

    fn body_len(&self) -> usize {
        usize::from(u16::from_be_bytes([self.pending[3], self.pending[4]]))
    }

    /// Bytes the current record needs in total (header first, then header + body).
    fn record_len_needed(&self) -> usize {
        if self.pending.len() < 5 {
            5
        } else {
            5 + self.body_len()
        }
    }

    fn record(&mut self, content_type: u8, body: &[u8], out: &mut Vec<Item>) {
        match content_type {
            CT_CHANGE_CIPHER_SPEC => {
                self.encrypted = true;
                out.push(Item::ChangeCipherSpec);
            }
            // The plaintext alert is exactly level + description; anything longer carries
            // a MAC or AEAD tag.
            CT_ALERT if body.len() == 2 => out.push(Item::Alert {
                level: body[0],
                code: body[1],
            }),
            CT_ALERT => out.push(Item::EncryptedAlert { len: body.len() }),
            CT_HANDSHAKE if self.encrypted && !is_whole_hello(body) => {
                out.push(Item::EncryptedHandshake { len: body.len() })
            }
            CT_HANDSHAKE => self.handshake_bytes(body, out),
            CT_APPLICATION_DATA => out.push(Item::ApplicationData { len: body.len() }),
            _ => out.push(Item::Heartbeat),
        }
    }

    fn handshake_bytes(&mut self, mut body: &[u8], out: &mut Vec<Item>) {
        while !body.is_empty() {
            if let Some((left, msg_type)) = self.skipping {
                let n = left.min(body.len());
                body = &body[n..];
                if left == n {
                    self.skipping = None;
                    out.push(Item::OversizedHandshake { msg_type });
                } else {
                    self.skipping = Some((left - n, msg_type));
                }
                continue;
            }
            if self.handshake.is_empty() && body.len() >= 4 {
                // A message that starts here: copied once when `body` holds all of it.
                let (msg_type, len) = message_header(body);
                if len <= MAX_HANDSHAKE_MESSAGE && body.len() >= 4 + len {
                    out.push(Item::Handshake {
                        msg_type,
                        body: body[4..4 + len].to_vec(),
                    });
                    body = &body[4 + len..];
                    continue;
                }
            }
            if self.handshake.len() < 4 {
                let n = (4 - self.handshake.len()).min(body.len());
                self.handshake.extend_from_slice(&body[..n]);
                body = &body[n..];
                if self.handshake.len() < 4 {
                    return;
                }
            }
            let (msg_type, len) = message_header(&self.handshake);
            if len > MAX_HANDSHAKE_MESSAGE {
                self.handshake.clear();
                self.skipping = Some((len, msg_type));
                continue;
            }
            self.handshake.reserve_exact(4 + len - self.handshake.len());
            let have = self.handshake.len() - 4;
            let n = (len - have).min(body.len());
            self.handshake.extend_from_slice(&body[..n]);
            body = &body[n..];
            if self.handshake.len() == 4 + len {
                let mut msg = std::mem::take(&mut self.handshake);
                msg.drain(..4);
                out.push(Item::Handshake {
                    msg_type,
                    body: msg,
                });
            }
        }
        if let Some((0, msg_type)) = self.skipping {
            self.skipping = None;
            out.push(Item::OversizedHandshake { msg_type });
        }
    }
}

/// A record body that is exactly one ClientHello or ServerHello: plaintext even after a
/// ChangeCipherSpec. TLS 1.3 sends a dummy ChangeCipherSpec for middlebox compatibility
/// (RFC 8446 §D.4), and after a HelloRetryRequest the second ClientHello and the real
/// ServerHello follow it in the clear. An encrypted TLS <= 1.2 Finished is ciphertext: the
/// chance that it starts like this is 2 in 2^32.
fn is_whole_hello(body: &[u8]) -> bool {
    body.len() >= 4 && matches!(body[0], 1 | 2) && message_header(body).1 == body.len() - 4
}

/// A handshake message header (at least 4 bytes): type and body length.
fn message_header(h: &[u8]) -> (u8, usize) {
    (
        h[0],
        usize::from(h[1]) << 16 | usize::from(h[2]) << 8 | usize::from(h[3]),
    )
}

enum Start {
    Tls,
    SslV2,
    SslV2Server,
    NotTls,
}

/// Decides what a stream is from its first bytes, or `None` while too few bytes decide.
fn classify_start(first: &[u8]) -> Option<Start> {
    let b0 = *first.first()?;
    if b0 & 0x80 != 0 {
        // SSLv2 record header: 2-byte length with the top bit set, then CLIENT-HELLO (1)
        // and version 2.0 or 3.x, or SERVER-HELLO (4).
        if first.len() < 5 {
            let kind = first.get(2);
            return if kind.is_some_and(|&t| t != sslv2::CLIENT_HELLO && t != sslv2::SERVER_HELLO) {
                Some(Start::NotTls)
            } else {
                None
            };
        }
        return Some(if sslv2::is_client_hello(first) {
            Start::SslV2
        } else if sslv2::is_server_hello(first) {
            Start::SslV2Server
        } else {
            Start::NotTls
        });
    }
    if !(CT_CHANGE_CIPHER_SPEC..=CT_HEARTBEAT).contains(&b0) {
        return Some(Start::NotTls);
    }
    match first.get(1) {
        None => None,
        Some(3) => match first.get(2) {
            None => None,
            Some(minor) if *minor <= 4 => Some(Start::Tls),
            Some(_) => Some(Start::NotTls),
        },
        Some(_) => Some(Start::NotTls),
    }
}

/// A TLS record header: known content type, version 3.x (x <= 4). Needs 3 bytes.
pub(crate) fn is_record_header(h: &[u8]) -> bool {
    (CT_CHANGE_CIPHER_SPEC..=CT_HEARTBEAT).contains(&h[0]) && h[1] == 3 && h[2] <= 4
}

/// Byte builders for tests of the record layer and of what reads it.
#[cfg(test)]
pub(crate) mod test_bytes {
    /// A TLS 1.2 record of content type `ct` around `body`.
    pub fn record(ct: u8, body: &[u8]) -> Vec<u8> {
        let mut r = vec![ct, 3, 3];
        r.extend_from_slice(&(body.len() as u16).to_be_bytes());
        r.extend_from_slice(body);
        r
    }

    /// A handshake message of type `t` with a `body_len`-byte counting body.
    pub fn message(t: u8, body_len: usize) -> Vec<u8> {
        let mut m = vec![
            t,
            (body_len >> 16) as u8,
            (body_len >> 8) as u8,
            body_len as u8,
        ];
        m.extend((0..body_len).map(|i| i as u8));
        m
    }
}

#[cfg(test)]
mod tests {
    use super::test_bytes::{message, record};
    use super::*;

    /// A server flight: a certificate message spread over two records, then alert.
    fn sample_stream() -> Vec<u8> {
        let mut hs = message(2, 40);
        hs.extend(message(11, 300));
        hs.extend(message(14, 0));
        let mut s = record(CT_HANDSHAKE, &hs[..100]);
        s.extend(record(CT_HANDSHAKE, &hs[100..]));
        s.extend(record(CT_CHANGE_CIPHER_SPEC, &[1]));
        s.extend(record(CT_HANDSHAKE, &[9; 40]));
        s.extend(record(CT_ALERT, &[2, 40]));
        s.extend(record(CT_APPLICATION_DATA, &[0; 19]));
        s
    }

    fn items(chunks: &[&[u8]]) -> Vec<Item> {
        let mut layer = RecordLayer::new();
        let mut out = Vec::new();
        for c in chunks {
            layer.push(c, &mut out);
        }
        out
    }

    #[test]
    fn messages_join_across_records_and_encrypted_records_are_sized() {
        let got = items(&[&sample_stream()]);
        let types: Vec<_> = got
            .iter()
            .map(|i| match i {
                Item::Handshake { msg_type, body } => format!("hs{msg_type}/{}", body.len()),
                other => format!("{other:?}"),
            })
            .collect();
        assert_eq!(
            types,
            [
                "hs2/40",
                "hs11/300",
                "hs14/0",
                "ChangeCipherSpec",
                "EncryptedHandshake { len: 40 }",
                "Alert { level: 2, code: 40 }",
                "ApplicationData { len: 19 }"
            ]
        );
    }

    #[test]
    fn a_hello_after_a_tls13_compatibility_change_cipher_spec_is_plaintext() {
        // After a HelloRetryRequest: the client's dummy ChangeCipherSpec, then its second
        // ClientHello in the clear; a TLS 1.2 Finished after ChangeCipherSpec stays sealed.
        let mut hello = vec![1, 0, 0, 40];
        hello.extend([7u8; 40]);
        let mut s = record(CT_CHANGE_CIPHER_SPEC, &[1]);
        s.extend(record(CT_HANDSHAKE, &hello));
        s.extend(record(CT_HANDSHAKE, &[0x9c; 40]));
        assert_eq!(
            items(&[&s]),
            [
                Item::ChangeCipherSpec,
                Item::Handshake {
                    msg_type: 1,
                    body: vec![7; 40]
                },
                Item::EncryptedHandshake { len: 40 },
            ]
        );
    }

    #[test]
    fn every_split_and_one_byte_chunks_give_the_same_items() {
        let s = sample_stream();
        let whole = items(&[&s]);
        for at in 0..=s.len() {
            assert_eq!(items(&[&s[..at], &s[at..]]), whole, "split at {at}");
        }
        let bytes: Vec<&[u8]> = s.chunks(1).collect();
        assert_eq!(items(&bytes), whole);
    }

    #[test]
    fn every_prefix_is_handled_and_reports_partial_state() {
        let s = sample_stream();
        for at in 0..s.len() {
            let mut layer = RecordLayer::new();
            let mut out = Vec::new();
            layer.push(&s[..at], &mut out);
            assert!(out.len() <= 7);
        }
    }

    #[test]
    fn plaintext_is_not_tls_and_keeps_a_sample() {
        let mut layer = RecordLayer::new();
        let mut out = Vec::new();
        layer.push(b"G", &mut out);
        layer.push(b"ET / HTTP/1.1\r\n", &mut out);
        assert_eq!(out, [Item::NotTls]);
        assert_eq!(layer.sample(), b"GET / HTTP/1.1\r\n");
    }

    #[test]
    fn sslv2_hello_and_garbage_after_records_are_told_apart() {
        let v2 = sslv2::tests::client_hello_record(0x0301, &[0x2f]);
        assert_eq!(
            items(&[&v2]),
            [Item::SslV2ClientHello {
                message: v2[2..].to_vec()
            }]
        );
        let mut s = record(CT_ALERT, &[1, 0]);
        s.extend_from_slice(b"HTTP/1.1 400");
        assert_eq!(
            items(&[&s]),
            [Item::Alert { level: 1, code: 0 }, Item::Desynchronised]
        );
    }

    #[test]
    fn oversized_messages_are_skipped_with_bounded_memory() {
        let big = MAX_HANDSHAKE_MESSAGE + 10;
        let mut m = vec![11, (big >> 16) as u8, (big >> 8) as u8, big as u8];
        m.extend(std::iter::repeat_n(0u8, big));
        m.extend(message(14, 0));
        let mut s = Vec::new();
        for chunk in m.chunks(16384) {
            s.extend(record(CT_HANDSHAKE, chunk));
        }
        let got = items(&[&s]);
        assert_eq!(got[0], Item::OversizedHandshake { msg_type: 11 });
        assert!(matches!(got[1], Item::Handshake { msg_type: 14, .. }));
    }
}
