//! TLS 1.3 after the ServerHello: every record is application_data, so the flow is read
//! from record sizes and order (RFC 8446 §2): the server's encrypted flight, the client's
//! Finished (its size is fixed by the suite's hash), what either end sent after it.

use crate::handshake::{
    Facts,
    outcome::{Party, Stage},
};

/// An encrypted TLS 1.3 alert record: 2 bytes alert + 1 byte content type + 16 byte AEAD
/// tag (RFC 8446 §5.2), with no padding (what OpenSSL, BoringSSL, rustls and Go send).
pub const TLS13_ALERT_LEN: usize = 19;
/// The smallest client Finished record: verify_data as long as the smallest suite hash
/// (SHA-256, 32 bytes) + 4 header + 1 type + 16 tag. A shorter client record where the
/// Finished is due, with no Finished after it, is an alert, padded or not (Java pads its
/// alert to 35 bytes).
pub(super) const MIN_FINISHED_RECORD: usize = 32 + 4 + 1 + 16;
/// A client flight (Certificate, CertificateVerify, Finished) above this many bytes carried
/// a certificate: an empty Certificate plus the largest Finished is under 100 bytes.
pub(super) const FLIGHT_WITH_CERTIFICATE: usize = 200;

/// TLS 1.3: the stage from the encrypted records seen so far.
pub(crate) fn tls13_stage(f: &mut Facts) {
    let s = Tls13Records::of(f);
    let stage = if s.client_data_after_finished || s.server_after_client_finished.is_some() {
        Stage::ApplicationData
    } else if s.client_finished.is_some() {
        Stage::ClientFinished
    } else if s.server_flight_bytes > 0 {
        Stage::EncryptedExtensions
    } else {
        f.stage
    };
    f.stage = f.stage.max(stage);
}

/// The TLS 1.3 encrypted records read in order (RFC 8446 §2 message flow).
#[derive(Debug, Default)]
pub(super) struct Tls13Records {
    pub(super) server_flight_bytes: usize,
    /// Size of a client record shorter than any Finished, sent where its Finished was
    /// due: the client aborted with an (encrypted) alert.
    pub(super) client_alert_before_finished: Option<usize>,
    /// Index and time of the client's first record that is not an alert (its Finished).
    pub(super) client_finished: Option<(usize, u64)>,
    pub(super) client_flight_bytes: usize,
    /// Records of the client's flight, its Finished included: two or more when the server
    /// asked for a certificate (a Certificate, empty or not, comes before the Finished).
    pub(super) client_flight_records: usize,
    pub(super) client_data_after_finished: bool,
    /// 19-byte client record after Finished and before any client data.
    pub(super) client_alert_after_finished: Option<u64>,
    /// Length and time of the first server record after the client's Finished.
    pub(super) server_after_client_finished: Option<(usize, u64)>,
    pub(super) server_records_after_client_finished: usize,
}

impl Tls13Records {
    pub(super) fn of(f: &Facts) -> Self {
        let mut s = Tls13Records::default();
        let finished = finished_record_index(f);
        for (i, r) in f.sealed.iter().enumerate() {
            match (r.from, s.client_finished) {
                (Party::Server, None) => s.server_flight_bytes += r.len,
                (Party::Server, Some(_)) => {
                    s.server_records_after_client_finished += 1;
                    s.server_after_client_finished
                        .get_or_insert((r.len, r.ts_ns));
                }
                // 19 bytes is an alert; a record shorter than any Finished is one too when
                // no Finished follows (else it may be an empty Certificate: 25 bytes).
                (Party::Client, None)
                    if r.len == TLS13_ALERT_LEN
                        || (r.len < MIN_FINISHED_RECORD && finished.is_none()) =>
                {
                    s.client_alert_before_finished.get_or_insert(r.len);
                }
                (Party::Client, None) => {
                    s.client_flight_bytes += r.len;
                    s.client_flight_records += 1;
                    if finished.is_none_or(|at| at == i) {
                        s.client_finished = Some((i, r.ts_ns));
                    }
                }
                (Party::Client, Some(_)) if r.len == TLS13_ALERT_LEN => {
                    if !s.client_data_after_finished {
                        s.client_alert_after_finished.get_or_insert(r.ts_ns);
                    }
                }
                (Party::Client, Some(_)) => {
                    if s.client_alert_after_finished.is_none() {
                        s.client_data_after_finished = true;
                    }
                }
            }
        }
        s
    }
}

/// The client's Finished record in TLS 1.3: verify_data is as long as the suite's hash
/// (RFC 8446 §4.4.4), so the record is hash + 4 (header) + 1 (type) + 16 (tag) bytes.
/// A client flight with a certificate sends Certificate and CertificateVerify records
/// before it. `None` when no record has that size (padding): then the client's first
/// record is taken as its Finished.
fn finished_record_index(f: &Facts) -> Option<usize> {
    let hash = match f.choice.as_ref()?.cipher {
        0x1302 => 48,
        _ => 32,
    };
    f.sealed
        .iter()
        .position(|r| r.from == Party::Client && r.len == hash + 4 + 1 + 16)
}
