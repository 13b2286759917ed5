//! TLS record and handshake-message headers of one direction's byte stream.
//!
//! Pure and panic-free on any input: walks the 5-byte record headers (RFC 8446 §5.1), joins
//! plaintext handshake records into messages (a Certificate message often spans several
//! records) and names each message by its 4-byte header. Decoding message bodies is the
//! diagnosis core's job; this is what `tlsmon trace` shows.

use std::fmt;

use crate::handshake::names::{alert_name, handshake_name};
use crate::handshake::record_layer::{
    CT_ALERT, CT_APPLICATION_DATA, CT_CHANGE_CIPHER_SPEC, CT_HANDSHAKE, is_record_header,
};

/// Plaintext handshake bytes kept while waiting for the rest of a message.
const MAX_HANDSHAKE_BUFFER: usize = 64 * 1024;

/// One thing seen in a direction's stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecordItem {
    /// A plaintext handshake message, by type (RFC 8446 §4).
    Handshake(u8),
    /// A handshake record sent after ChangeCipherSpec (TLS 1.2 Finished): encrypted.
    EncryptedHandshake,
    ChangeCipherSpec,
    /// A readable alert: level (1 warning, 2 fatal) and description.
    Alert {
        level: u8,
        description: u8,
    },
    /// An alert record that is encrypted (sent after ChangeCipherSpec).
    EncryptedAlert,
    /// application_data records (TLS 1.3 hides handshake messages and alerts in these).
    ApplicationData {
        records: u32,
        bytes: u64,
    },
    Heartbeat,
    /// An SSLv2-compatible ClientHello (RFC 5246 appendix E.2).
    SslV2ClientHello,
}

/// What one direction's stream looks like.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StreamSummary {
    pub items: Vec<RecordItem>,
    /// The stream does not start like TLS: its first bytes (at most 32).
    pub not_tls: Option<Vec<u8>>,
    /// The stream ends inside a record (more bytes were due, or capture stopped).
    pub incomplete_record: bool,
}

/// SSLv2 record header with the CLIENT-HELLO message type and a 2.0/3.x version.
fn is_sslv2_client_hello(b: &[u8]) -> bool {
    b.len() >= 5 && b[0] & 0x80 != 0 && b[2] == 1 && (b[3] == 3 || (b[3] == 0 && b[4] == 2))
}

/// Summarizes a stream from its first byte.
pub fn summarize(stream: &[u8]) -> StreamSummary {
    let mut out = StreamSummary::default();
    if stream.is_empty() {
        return out;
    }
    if is_sslv2_client_hello(stream) {
        out.items.push(RecordItem::SslV2ClientHello);
        return out;
    }
    let mut rest = stream;
    let mut encrypted = false;
    let mut handshake = Vec::new();
    while !rest.is_empty() {
        if rest.len() < 5 {
            if !is_record_header(&[rest[0], *rest.get(1).unwrap_or(&3), 0]) && out.items.is_empty()
            {
                out.not_tls = Some(rest.to_vec());
            } else {
                out.incomplete_record = true;
            }
            break;
        }
        if !is_record_header(rest) {
            if out.items.is_empty() {
                out.not_tls = Some(stream[..stream.len().min(32)].to_vec());
            } else {
                out.incomplete_record = true; // desynchronised: stop rather than guess
            }
            break;
        }
        let len = usize::from(u16::from_be_bytes([rest[3], rest[4]]));
        let Some(body) = rest.get(5..5 + len) else {
            out.incomplete_record = true;
            break;
        };
        match rest[0] {
            CT_CHANGE_CIPHER_SPEC => {
                encrypted = true;
                out.items.push(RecordItem::ChangeCipherSpec);
            }
            CT_ALERT if !encrypted && len == 2 => out.items.push(RecordItem::Alert {
                level: body[0],
                description: body[1],
            }),
            CT_ALERT => out.items.push(RecordItem::EncryptedAlert),
            CT_HANDSHAKE if encrypted => out.items.push(RecordItem::EncryptedHandshake),
            CT_HANDSHAKE => {
                if handshake.len() + body.len() <= MAX_HANDSHAKE_BUFFER {
                    handshake.extend_from_slice(body);
                }
                drain_messages(&mut handshake, &mut out.items);
            }
            CT_APPLICATION_DATA => match out.items.last_mut() {
                Some(RecordItem::ApplicationData { records, bytes }) => {
                    *records += 1;
                    *bytes += len as u64;
                }
                _ => out.items.push(RecordItem::ApplicationData {
                    records: 1,
                    bytes: len as u64,
                }),
            },
            _ => out.items.push(RecordItem::Heartbeat),
        }
        rest = &rest[5 + len..];
    }
    out
}

/// Moves every complete handshake message (1-byte type, 3-byte length) out of `buf`.
fn drain_messages(buf: &mut Vec<u8>, items: &mut Vec<RecordItem>) {
    let mut at = 0;
    while let Some(h) = buf.get(at..at + 4) {
        let len = usize::from(h[1]) << 16 | usize::from(h[2]) << 8 | usize::from(h[3]);
        if buf.len() < at + 4 + len {
            break;
        }
        items.push(RecordItem::Handshake(h[0]));
        at += 4 + len;
    }
    buf.drain(..at);
}

impl fmt::Display for StreamSummary {
    /// `handshake(ServerHello,Certificate) ccs alert(fatal 70 protocol_version) appdata(2)`
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(first) = &self.not_tls {
            return write!(f, "not-tls({:?})", String::from_utf8_lossy(first));
        }
        if self.items.is_empty() {
            return f.write_str(if self.incomplete_record {
                "partial-record"
            } else {
                "nothing"
            });
        }
        let mut parts: Vec<String> = Vec::new();
        let mut messages: Vec<&str> = Vec::new();
        let flush = |messages: &mut Vec<&str>, parts: &mut Vec<String>| {
            if !messages.is_empty() {
                parts.push(format!("handshake({})", messages.join(",")));
                messages.clear();
            }
        };
        for item in &self.items {
            if let RecordItem::Handshake(t) = item {
                messages.push(handshake_name(*t));
                continue;
            }
            flush(&mut messages, &mut parts);
            parts.push(match item {
                RecordItem::Handshake(_) => unreachable!("handled above"),
                RecordItem::EncryptedHandshake => "handshake(encrypted)".into(),
                RecordItem::ChangeCipherSpec => "ccs".into(),
                RecordItem::Alert { level, description } => {
                    let level = match level {
                        1 => "warning",
                        2 => "fatal",
                        _ => "level?",
                    };
                    format!("alert({level} {description} {})", alert_name(*description))
                }
                RecordItem::EncryptedAlert => "alert(encrypted)".into(),
                RecordItem::ApplicationData { records, .. } => format!("appdata({records})"),
                RecordItem::Heartbeat => "heartbeat".into(),
                RecordItem::SslV2ClientHello => "sslv2(ClientHello)".into(),
            });
        }
        flush(&mut messages, &mut parts);
        if self.incomplete_record {
            parts.push("partial-record".into());
        }
        f.write_str(&parts.join(" "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::handshake::record_layer::test_bytes::{message, record};

    /// A TLS 1.2 server flight: ServerHello + Certificate split across two records,
    /// ServerHelloDone, then CCS, an encrypted Finished and an (encrypted) alert.
    fn server_flight() -> Vec<u8> {
        let mut hs = message(2, 70);
        hs.extend(message(11, 300));
        hs.extend(message(14, 0));
        let (a, b) = hs.split_at(200);
        let mut s = record(22, a);
        s.extend(record(22, b));
        s.extend(record(20, &[1]));
        s.extend(record(22, &[9; 40]));
        s.extend(record(21, &[2, 70]));
        s
    }

    #[test]
    fn server_flight_is_named_message_by_message() {
        let s = summarize(&server_flight());
        assert_eq!(
            s.to_string(),
            "handshake(ServerHello,Certificate,ServerHelloDone) ccs handshake(encrypted) \
             alert(encrypted)"
        );
        assert!(!s.incomplete_record);
    }

    #[test]
    fn every_prefix_is_summarized_without_panic_and_grows_monotonically() {
        let full = server_flight();
        let mut last = 0;
        for n in 0..=full.len() {
            let s = summarize(&full[..n]);
            assert!(s.not_tls.is_none(), "prefix {n} taken for plaintext");
            assert!(s.items.len() >= last, "prefix {n} lost items");
            last = s.items.len();
        }
    }

    #[test]
    fn plaintext_alert_is_decoded() {
        let s = summarize(&record(21, &[2, 70]));
        assert_eq!(s.to_string(), "alert(fatal 70 protocol_version)");
    }

    #[test]
    fn http_is_not_tls() {
        let s = summarize(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
        assert_eq!(
            s.not_tls.as_deref(),
            Some(&b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"[..])
        );
        assert!(s.to_string().starts_with("not-tls(\"GET / HTTP/1.1"));
    }

    #[test]
    fn encrypted_alert_after_ccs_is_not_decoded() {
        let mut s = record(20, &[1]);
        s.extend(record(21, &[0x11; 26]));
        assert_eq!(summarize(&s).to_string(), "ccs alert(encrypted)");
    }

    #[test]
    fn application_data_records_are_counted_together() {
        let mut s = record(23, &[0; 19]);
        s.extend(record(23, &[0; 100]));
        assert_eq!(
            summarize(&s).items,
            vec![RecordItem::ApplicationData {
                records: 2,
                bytes: 119
            }]
        );
    }

    #[test]
    fn sslv2_client_hello_is_recognised() {
        let hello = [0x80, 0x2e, 0x01, 0x03, 0x01, 0x00, 0x15];
        assert_eq!(summarize(&hello).items, vec![RecordItem::SslV2ClientHello]);
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        let mut x: u32 = 0x1234_5678;
        for len in 0..400 {
            let bytes: Vec<u8> = (0..len)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 17;
                    x ^= x << 5;
                    // Bias towards valid-looking headers so the walker goes deep.
                    [22, 3, 3, 0, (x >> 8) as u8][(x % 5) as usize]
                })
                .collect();
            let _ = summarize(&bytes).to_string();
        }
    }
}
