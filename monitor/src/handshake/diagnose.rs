//! From facts to a verdict: the cause table of failures.md as code.
//!
//! Order of evidence: plaintext where TLS was due, a readable alert, TLS 1.3 record-size
//! inference, completion, then who closed at which stage and after how long.

use super::certs::{CertSummary, ChainFacts};
use super::names::alert_name;
use super::outcome::*;
use super::record_layer::RecordLayer;
use super::{Facts, SeenAlert};

/// An encrypted TLS 1.3 alert record: 2 bytes alert + 1 byte content type + 16 byte AEAD
/// tag (RFC 8446 §5.2), with no padding (what OpenSSL, BoringSSL, rustls and Go send).
pub const TLS13_ALERT_LEN: usize = 19;
/// The smallest TLS 1.3 Finished record: 32-byte verify_data + 4 header + 1 + 16 tag.
/// A client flight above this carried a certificate (an empty Certificate plus Finished
/// is under 100 bytes).
const FLIGHT_WITH_CERTIFICATE: usize = 200;
/// Waiting this long for the other end before closing is a timeout, not a refusal.
const TIMEOUT_NS: u64 = 1_000_000_000;

const SECS_PER_DAY: i64 = 86_400;

pub(crate) fn outcome(
    f: &Facts,
    layers: &[RecordLayer; 2],
    finish_at: Option<u64>,
) -> HandshakeOutcome {
    let d = Diagnoser {
        f,
        layers,
        finish_at,
    };
    d.run()
}

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
struct Tls13Records {
    server_flight_bytes: usize,
    /// A 19-byte client record before its Finished: the client aborted.
    client_alert_before_finished: Option<u64>,
    /// Index and time of the client's first record that is not an alert (its Finished).
    client_finished: Option<(usize, u64)>,
    client_flight_bytes: usize,
    client_data_after_finished: bool,
    /// 19-byte client record after Finished and before any client data.
    client_alert_after_finished: Option<u64>,
    /// Length and time of the first server record after the client's Finished.
    server_after_client_finished: Option<(usize, u64)>,
    server_records_after_client_finished: usize,
}

impl Tls13Records {
    fn of(f: &Facts) -> Self {
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
                (Party::Client, None) if r.len == TLS13_ALERT_LEN => {
                    s.client_alert_before_finished.get_or_insert(r.ts_ns);
                }
                (Party::Client, None) => {
                    s.client_flight_bytes += r.len;
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

struct Diagnoser<'a> {
    f: &'a Facts,
    layers: &'a [RecordLayer; 2],
    finish_at: Option<u64>,
}

impl Diagnoser<'_> {
    fn run(&self) -> HandshakeOutcome {
        let f = self.f;
        if let Some(o) = self.plaintext() {
            return o;
        }
        if let Some(a) = f.alerts.iter().find(|a| decisive(a)) {
            // An alert sent after the peer had already closed is a reaction to the close
            // (OpenSSL answers an EOF mid-handshake with decode_error): the close is the cause.
            let peer_closed_first =
                f.closes[a.from.other().index()].is_some_and(|(_, t)| t <= a.ts_ns);
            if peer_closed_first && let Some(mut found) = self.closed_mid_handshake() {
                found.message = format!(
                    "{}; the {} then sent alert {} {}",
                    found.message,
                    a.from.as_str(),
                    a.code,
                    alert_name(a.code)
                );
                return self.fail(found);
            }
            return self.fail(self.alert_cause(a));
        }
        if f.tls13() {
            if let Some(o) = self.tls13() {
                return o;
            }
        } else if let Some(o) = self.tls12_after_finished() {
            return o;
        }
        if let Some(found) = self.closed_mid_handshake() {
            return self.fail(found);
        }
        if let Some(now) = self.finish_at {
            return self.at_finish(now);
        }
        HandshakeOutcome::Undecided
    }

    // ---- plaintext ---------------------------------------------------------------------

    fn sample(&self, p: Party) -> Option<String> {
        let s = self.layers[p.index()].sample();
        (!s.is_empty()).then(|| String::from_utf8_lossy(s).into_owned())
    }

    fn sent_anything(&self, p: Party) -> bool {
        self.layers[p.index()].bytes() > 0
    }

    fn ended(&self) -> bool {
        self.f.first_close.is_some() || self.finish_at.is_some()
    }

    fn plaintext(&self) -> Option<HandshakeOutcome> {
        let f = self.f;
        let (c, s) = (Party::Client, Party::Server);
        if f.not_tls[c.index()] {
            let server_tls = self.sent_anything(s) && !f.not_tls[s.index()];
            if f.meta.tls_port || server_tls {
                let reaction = match f.alerts.iter().find(|a| a.from == s) {
                    Some(a) => format!(
                        "the server answered with alert {} {}",
                        a.code,
                        alert_name(a.code)
                    ),
                    None => self
                        .close_phrase(s)
                        .unwrap_or_else(|| "the server waits for a ClientHello".into()),
                };
                let mut found = Found::new(
                    Cause::PlaintextToTlsPort,
                    format!(
                        "the client sent plaintext ({}) to a TLS port instead of a ClientHello; {reaction}",
                        quote(&self.sample(c).unwrap_or_default())
                    ),
                );
                found.alert = f.alerts.iter().find(|a| a.from == s).map(readable);
                found.sample = self.sample(c);
                return Some(self.fail(found));
            }
            if f.not_tls[s.index()] || self.ended() {
                return Some(self.not_tls());
            }
            return Some(HandshakeOutcome::Undecided);
        }
        if f.not_tls[s.index()] {
            if f.offer.is_some() || f.sslv2_hello || f.malformed_hello.is_some() {
                let mut found = Found::new(
                    Cause::TlsToPlaintextPort,
                    format!(
                        "the client sent a TLS ClientHello{} but the server answered in plaintext ({}): the port does not speak TLS",
                        self.sni_phrase(),
                        quote(&self.sample(s).unwrap_or_default())
                    ),
                );
                found.sample = self.sample(s);
                return Some(self.fail(found));
            }
            if !self.sent_anything(c) || f.desynchronised[c.index()] || self.ended() {
                return Some(self.not_tls());
            }
        }
        None
    }

    fn not_tls(&self) -> HandshakeOutcome {
        HandshakeOutcome::NotTls(NotTls {
            client_sample: self.sample(Party::Client),
            server_sample: self.sample(Party::Server),
        })
    }

    // ---- readable alerts ---------------------------------------------------------------

    fn alert_cause(&self, a: &SeenAlert) -> Found {
        let f = self.f;
        let alert = readable(a);
        let name = alert_name(a.code);
        let offer = f.offer.as_ref();
        let chain = f.server_certs.as_deref().filter(|c| !c.is_empty());
        let now = (a.ts_ns / 1_000_000_000) as i64;
        let client_sent_cert = f.client_certs.is_some();
        use Party::{Client, Server};
        let mut found = match (a.from, a.code) {
            (_, 70) => self.version_mismatch(name),
            (Server, 80 | 40 | 71)
                if a.stage <= Stage::ClientHello && offer.is_some_and(|o| o.max_version() < 0x0303) =>
            {
                self.version_mismatch(name)
            }
            (Server, 86) => Found::new(
                Cause::DowngradeRejected,
                format!(
                    "the client retried with {} and TLS_FALLBACK_SCSV after a failed attempt; the server supports a higher version and refused the downgrade (inappropriate_fallback): look at why the first attempt failed",
                    offer.map(|o| o.version_range()).unwrap_or_else(|| "a lower version".into())
                ),
            ),
            (Server, 40 | 71) if a.stage <= Stage::ClientHello => self.nothing_in_common(name),
            (Server, 112) => match offer.and_then(|o| o.server_name.as_deref()) {
                Some(sni) => Found::new(
                    Cause::SniUnrecognized,
                    format!("the server does not serve the name {sni:?} the client asked for (unrecognized_name)"),
                ),
                None => Found::new(
                    Cause::SniMissing,
                    "the client sent no server name (SNI) and the server requires one (unrecognized_name)".into(),
                ),
            },
            (_, 120) => Found::new(
                Cause::AlpnMismatch,
                format!(
                    "no application protocol in common: the client offered ALPN {} and the {} refused them (no_application_protocol)",
                    list_or_none(offer.map(|o| o.alpn.as_slice()).unwrap_or(&[])),
                    a.from.as_str()
                ),
            ),
            (Server, 116) => Found::new(
                Cause::ClientCertRequired,
                "the server requires a client certificate and the client sent none (certificate_required)".into(),
            ),
            (Server, _) if client_sent_cert && f.cert_request => self.client_cert_cause(a),
            (Server, 40) if f.cert_request && a.stage >= Stage::ServerHelloDone => Found::new(
                Cause::ClientCertRequired,
                "the server asked for a client certificate and refused the handshake after the client's answer (handshake_failure)".into(),
            ),
            (Client, 44) => Found::new(
                Cause::CertRevoked,
                format!("the client found the server certificate{} revoked (certificate_revoked)", self.leaf_phrase()),
            ),
            (Client, 45) => self.expiry_cause(chain, now),
            (Client, 42 | 43 | 46 | 48 | 40 | 71) if a.stage >= Stage::ServerHello => {
                self.server_cert_cause(chain, a.code, false)
            }
            (_, 50) => self.other(Cause::DecodeError, a),
            (_, 80) => self.other(Cause::InternalError, a),
            _ => self.other(Cause::Other, a),
        };
        found.alert = Some(alert);
        found.stage = Some(a.stage);
        found
    }

    fn other(&self, cause: Cause, a: &SeenAlert) -> Found {
        Found::new(
            cause,
            format!(
                "the {} sent fatal alert {} {} at stage {}{}",
                a.from.as_str(),
                a.code,
                alert_name(a.code),
                a.stage.as_str(),
                match (a.from, a.code) {
                    (Party::Server, 50) => ": it could not parse the client's message",
                    (_, 80) =>
                        ": an error inside the TLS library, often a configuration or resource problem",
                    (_, 47) => ": a handshake field had a value the peer refuses",
                    _ => "",
                }
            ),
        )
    }

    fn version_mismatch(&self, alert: &str) -> Found {
        let offer = self.f.offer.as_ref();
        let (offered, likely) = match offer {
            Some(o) if o.max_version() < 0x0303 => (
                o.version_range(),
                "the server requires TLSv1.2 or newer".to_string(),
            ),
            Some(o) if o.max_version() == 0x0303 => (
                o.version_range(),
                "the server most likely requires TLSv1.3".to_string(),
            ),
            Some(o) if o.min_version() == 0x0304 => (
                o.version_range(),
                "the server supports only older versions".to_string(),
            ),
            Some(o) => (
                o.version_range(),
                "the server accepts none of them".to_string(),
            ),
            None if self.f.sslv2_hello => (
                "an SSLv2-format hello".into(),
                "the server requires a modern ClientHello".into(),
            ),
            None => (
                "an unreadable hello".into(),
                "the server accepts none of them".into(),
            ),
        };
        Found::new(
            Cause::ProtocolVersionMismatch,
            format!(
                "no TLS version in common: the client offered {offered}; {likely} (server sent {alert})"
            ),
        )
    }

    fn nothing_in_common(&self, alert: &str) -> Found {
        let Some(o) = self.f.offer.as_ref() else {
            return Found::new(
                Cause::NoSharedCipher,
                format!("the server refused the client's hello ({alert})"),
            );
        };
        let real_ciphers: Vec<&str> = o
            .ciphers
            .names
            .iter()
            .map(|n| n.as_ref())
            .filter(|n| !n.ends_with("_SCSV"))
            .collect();
        if real_ciphers.len() > 3 && !o.groups.is_empty() && o.groups.ids.len() <= 2 {
            return Found::new(
                Cause::NoSharedGroup,
                format!(
                    "no key-exchange group in common: the client offered only {} ({alert} from the server)",
                    o.groups.names.join(", ")
                ),
            );
        }
        if real_ciphers.len() > 3 && !o.sigalgs.is_empty() && o.sigalgs.ids.len() <= 3 {
            return Found::new(
                Cause::NoSharedSigalg,
                format!(
                    "no signature algorithm in common: the client accepts only {} and the server's certificate needs another ({alert} from the server)",
                    o.sigalgs.names.join(", ")
                ),
            );
        }
        Found::new(
            Cause::NoSharedCipher,
            format!(
                "no cipher suite in common for {}; client offered: {} ({alert} from the server)",
                o.version_range(),
                real_ciphers.join(", ")
            ),
        )
    }

    fn expiry_cause(&self, chain: Option<&[CertSummary]>, now: i64) -> Found {
        let Some(chain) = chain else {
            return Found::new(
                Cause::CertExpired,
                format!(
                    "the client says the server certificate{} is expired or not yet valid (certificate_expired); TLS 1.3 hides the certificate, so check its dates and the client's clock",
                    self.sni_phrase()
                ),
            );
        };
        let facts = ChainFacts { chain };
        if let Some(c) = facts.expired_at(now) {
            return Found::new(
                Cause::CertExpired,
                format!(
                    "certificate {} expired {} (notAfter {})",
                    c.short_name(),
                    days_ago(now - c.not_after),
                    date(c.not_after)
                ),
            );
        }
        if let Some(c) = facts.not_yet_valid_at(now) {
            return Found::new(
                Cause::CertNotYetValid,
                format!(
                    "certificate {} is not valid yet: notBefore {} is {} from now",
                    c.short_name(),
                    date(c.not_before),
                    days(c.not_before - now)
                ),
            );
        }
        let leaf = facts.leaf().map(|l| {
            format!(
                " {} ({} to {})",
                l.short_name(),
                date(l.not_before),
                date(l.not_after)
            )
        });
        Found::new(
            Cause::ClockSkew,
            format!(
                "the client rejected certificate{} as expired, but every certificate in the chain is valid by this host's clock: the client's clock may be wrong",
                leaf.unwrap_or_default()
            ),
        )
    }

    /// The client refused the server's certificate (alert after the server's flight, or
    /// a silent close there when `silent`).
    fn server_cert_cause(&self, chain: Option<&[CertSummary]>, code: u8, silent: bool) -> Found {
        let how = if silent {
            "closed the connection without an alert".to_string()
        } else {
            alert_name(code).to_string()
        };
        let Some(chain) = chain else {
            let hint = match code {
                48 => {
                    "it does not trust the issuer (self-signed, private CA or missing intermediate)"
                }
                42 => "the certificate is bad for it (name, key, signature or usage)",
                46 => "the certificate could not be verified",
                43 => "the certificate type is unsupported",
                _ => "the handshake could not continue",
            };
            let tls13 = if self.f.tls13() {
                "; TLS 1.3 hides the certificate, so its chain cannot be checked here"
            } else {
                ""
            };
            return Found::new(
                Cause::ServerCertRejected,
                format!(
                    "the client rejected the server certificate{} ({how}): {hint}{tls13}",
                    self.sni_phrase()
                ),
            );
        };
        let facts = ChainFacts { chain };
        let sni = self.f.offer.as_ref().and_then(|o| o.server_name.as_deref());
        if let Some(c) = facts.weak_signature() {
            return Found::new(
                Cause::WeakSignatureInChain,
                format!(
                    "the chain contains a certificate signed with {} ({}), which the client refuses ({how})",
                    c.signature_algorithm,
                    c.short_name()
                ),
            );
        }
        if let Some(c) = facts.weak_key() {
            return Found::new(
                Cause::WeakKey,
                format!(
                    "certificate {} has a {}-{} key; the client requires a stronger key (RSA >= 2048) ({how})",
                    c.short_name(),
                    c.key_type,
                    c.key_bits
                ),
            );
        }
        if facts.self_signed_leaf() {
            let leaf = facts.leaf().map(|l| l.short_name()).unwrap_or_default();
            return Found::new(
                Cause::SelfSigned,
                format!(
                    "the server certificate {leaf} is self-signed and the client does not trust it ({how})"
                ),
            );
        }
        let now = (self.f.last_ns / 1_000_000_000) as i64;
        if now > 0 && (facts.expired_at(now).is_some() || facts.not_yet_valid_at(now).is_some()) {
            let mut found = self.expiry_cause(Some(chain), now);
            found.message = format!("{} ({how})", found.message);
            return found;
        }
        if let (Some(host), Some(leaf)) = (sni, facts.leaf())
            && code != 48
            && !leaf.matches_host(host)
        {
            return Found::new(
                Cause::HostnameMismatch,
                format!(
                    "the client asked for {host} but the certificate is for {} ({how})",
                    cert_names(leaf)
                ),
            );
        }
        if chain.len() == 1
            && let Some(issuer) = facts.unsent_issuer()
        {
            return Found::new(
                Cause::IncompleteChain,
                format!(
                    "the server sent only its leaf certificate {}; the client could not find the issuer {issuer} (send the intermediate certificate with the leaf) ({how})",
                    chain[0].short_name()
                ),
            );
        }
        match code {
            48 | 40 | 71 => Found::new(
                Cause::UntrustedIssuer,
                format!(
                    "the client does not trust the issuer {} of the server certificate {} ({how})",
                    facts.top_issuer().unwrap_or("?"),
                    facts.leaf().map(|l| l.short_name()).unwrap_or_default()
                ),
            ),
            _ => Found::new(
                Cause::ServerCertRejected,
                format!(
                    "the client rejected the server certificate {} ({how}); its chain shows no weak signature, small key, expiry or name mismatch",
                    facts.leaf().map(|l| l.short_name()).unwrap_or_default()
                ),
            ),
        }
    }

    fn client_cert_cause(&self, a: &SeenAlert) -> Found {
        let certs = self.f.client_certs.as_deref().unwrap_or(&[]);
        let Some(leaf) = certs.first() else {
            return Found::new(
                Cause::ClientCertRequired,
                format!(
                    "the server requires a client certificate and the client sent an empty one ({})",
                    alert_name(a.code)
                ),
            );
        };
        let cause = if matches!(a.code, 48 | 42) {
            Cause::ClientCertUntrusted
        } else {
            Cause::ClientCertRejected
        };
        let now = (a.ts_ns / 1_000_000_000) as i64;
        let expired = (ChainFacts { chain: certs }).expired_at(now);
        let why = if cause == Cause::ClientCertUntrusted {
            format!(
                "does not trust the client certificate's issuer {}",
                certs
                    .last()
                    .map_or(leaf.issuer.as_str(), |c| c.issuer.as_str())
            )
        } else if let (45, Some(c)) = (a.code, expired) {
            format!(
                "rejected the client certificate: {} expired {} (notAfter {})",
                c.short_name(),
                days_ago(now - c.not_after),
                date(c.not_after)
            )
        } else {
            "rejected the client certificate".to_string()
        };
        Found::new(
            cause,
            format!(
                "the server {why} ({}, {})",
                leaf.short_name(),
                alert_name(a.code)
            ),
        )
    }

    // ---- TLS 1.3 inference --------------------------------------------------------------

    fn tls13(&self) -> Option<HandshakeOutcome> {
        let f = self.f;
        let r = Tls13Records::of(f);
        if r.client_alert_before_finished.is_some() {
            let mut found = self.server_cert_cause(None, 0, false);
            found.cause = Cause::Tls13EncryptedAlert;
            found.inferred = true;
            found.alert = Some(AlertInfo::encrypted(Party::Client, None));
            found.message = format!(
                "the client sent an encrypted alert instead of its Finished (inferred from a {TLS13_ALERT_LEN}-byte record): it rejected the server's flight, most likely the certificate{}; TLS 1.3 hides which alert",
                self.sni_phrase()
            );
            return Some(self.fail(found));
        }
        let (_, fin_ts) = r.client_finished?;
        let server_closed = f.closes[Party::Server.index()].is_some();
        let client_closed = f.closes[Party::Client.index()].is_some();
        let ended = server_closed || self.finish_at.is_some();
        if let Some((len, _)) = r.server_after_client_finished
            && len == TLS13_ALERT_LEN
            && r.server_records_after_client_finished == 1
            && !r.client_data_after_finished
            && ended
        {
            let with_cert = r.client_flight_bytes > FLIGHT_WITH_CERTIFICATE;
            let (cause, code, what) = if with_cert {
                (
                    Cause::ClientCertRejected,
                    None,
                    "rejected the client's certificate flight",
                )
            } else {
                (
                    Cause::ClientCertRequired,
                    Some(116),
                    "requires a client certificate and the client sent none",
                )
            };
            let mut found = Found::new(
                if with_cert {
                    Cause::Tls13EncryptedAlert
                } else {
                    cause
                },
                format!(
                    "the server sent an encrypted alert right after the client's Finished ({} bytes of client flight) and closed: it most likely {what} (inferred from record sizes; TLS 1.3 encrypts this alert)",
                    r.client_flight_bytes
                ),
            );
            found.inferred = true;
            found.alert = Some(AlertInfo::encrypted(Party::Server, code));
            found.stage = Some(Stage::ClientFinished);
            return Some(self.fail(found));
        }
        if let Some(alert_ts) = r.client_alert_after_finished
            && client_closed
            && !r.client_data_after_finished
        {
            return Some(self.closed_after_handshake(alert_ts.saturating_sub(fin_ts)));
        }
        if r.client_data_after_finished || self.ended() {
            return Some(self.completed());
        }
        None
    }

    // ---- completion ---------------------------------------------------------------------

    fn tls12_after_finished(&self) -> Option<HandshakeOutcome> {
        let f = self.f;
        if f.finished != [true, true] {
            if let Some(r) = f.sealed.iter().find(|r| r.alert) {
                let mut found = Found::new(
                    Cause::Other,
                    format!(
                        "the {} sent an encrypted alert after ChangeCipherSpec at stage {}, before the handshake finished",
                        r.from.as_str(),
                        f.stage.as_str()
                    ),
                );
                found.alert = Some(AlertInfo::encrypted(r.from, None));
                return Some(self.fail(found));
            }
            return None;
        }
        let client: Vec<_> = f
            .sealed
            .iter()
            .filter(|r| r.from == Party::Client)
            .collect();
        match client.first() {
            Some(r) if r.alert && f.closes[Party::Client.index()].is_some() => {
                let fin = f.last_from[Party::Server.index()].unwrap_or(r.ts_ns);
                Some(self.closed_after_handshake(r.ts_ns.saturating_sub(fin)))
            }
            Some(r) if !r.alert => Some(self.completed()),
            _ if self.ended() => Some(self.completed()),
            _ => None,
        }
    }

    fn closed_after_handshake(&self, after_ns: u64) -> HandshakeOutcome {
        let chain = self.f.server_certs.as_deref().filter(|c| !c.is_empty());
        let sni = self.f.offer.as_ref().and_then(|o| o.server_name.as_deref());
        let mut found = match (chain.and_then(|c| c.first()), sni) {
            (Some(leaf), Some(host)) if !leaf.matches_host(host) => Found::new(
                Cause::HostnameMismatch,
                format!(
                    "the handshake completed but the client closed at once without sending data: it asked for {host} and the certificate is for {} (clients such as curl check the name after the handshake)",
                    cert_names(leaf)
                ),
            ),
            _ => Found::new(
                Cause::ClosedAfterHandshake,
                format!(
                    "the handshake completed but the client closed {} ms later without sending data{}: typical of a client that checks the host name or a pin after the handshake (curl, OpenSSL); {}",
                    after_ns / 1_000_000,
                    self.sni_phrase(),
                    if self.f.tls13() {
                        "TLS 1.3 hides the certificate, so the name cannot be checked here"
                    } else {
                        "the certificate names match, so look at pinning or the client's own checks"
                    }
                ),
            ),
        };
        found.inferred = true;
        found.alert = Some(AlertInfo::encrypted(Party::Client, None));
        found.stage = Some(Stage::ApplicationData.min(self.f.stage.max(Stage::ClientFinished)));
        self.fail(found)
    }

    fn completed(&self) -> HandshakeOutcome {
        let f = self.f;
        let Some(selected) = f.choice.clone() else {
            return HandshakeOutcome::Undecided;
        };
        let certs = f.server_certs.clone().unwrap_or_default();
        let now = (f.last_ns / 1_000_000_000) as i64;
        let leaf_expires_in_days = certs
            .first()
            .map(|l| (l.not_after - now).div_euclid(SECS_PER_DAY));
        HandshakeOutcome::Completed(Box::new(Completed {
            offered: f.offer.clone(),
            resumed: !f.tls13() && f.server_certs.is_none(),
            selected,
            server_certificates: certs,
            leaf_expires_in_days,
            timing: self.timing(),
        }))
    }

    // ---- closes and timeouts ------------------------------------------------------------

    /// Who owes the next message at the current stage.
    fn owed_by(&self) -> Party {
        let f = self.f;
        match f.stage {
            Stage::TcpConnected => Party::Client,
            Stage::ClientHello => Party::Server,
            Stage::ServerHello | Stage::Certificate | Stage::ServerKeyExchange if f.tls13() => {
                Party::Client
            }
            Stage::ServerHello | Stage::Certificate | Stage::ServerKeyExchange => Party::Server,
            Stage::ServerHelloDone | Stage::EncryptedExtensions => Party::Client,
            Stage::ClientFinished if f.tls13() => Party::Client,
            Stage::ClientFinished => Party::Server,
            Stage::ServerFinished | Stage::ApplicationData => Party::Client,
        }
    }

    fn closed_mid_handshake(&self) -> Option<Found> {
        let f = self.f;
        let closer = f.first_close?;
        let (how, at) = f.closes[closer.index()]?;
        if !self.sent_anything(Party::Client) && !self.sent_anything(Party::Server) {
            return None;
        }
        let waited = at.saturating_sub(self.last_data_ns());
        let owed = self.owed_by();
        if owed != closer && waited >= TIMEOUT_NS {
            return Some(self.timeout(owed, waited, Some(closer)));
        }
        let chain = f.server_certs.as_deref().filter(|c| !c.is_empty());
        if closer == Party::Client
            && (Stage::Certificate..=Stage::ServerHelloDone).contains(&f.stage)
            && let Some(chain) = chain
        {
            let mut found = self.server_cert_cause(Some(chain), 0, true);
            if found.cause != Cause::ServerCertRejected {
                found.inferred = true;
                found.closed = Some(Closed { by: closer, how });
                return Some(found);
            }
        }
        let (cause, verb) = match how {
            CloseKind::Fin => (Cause::PeerClosedMidHandshake, "closed the connection (FIN)"),
            CloseKind::Reset => (Cause::PeerResetMidHandshake, "reset the connection (RST)"),
        };
        let mut found = Found::new(
            cause,
            format!(
                "the {} {verb} at stage {} without an alert{}",
                closer.as_str(),
                f.stage.as_str(),
                match (closer, f.stage) {
                    (Party::Server, Stage::ClientHello) =>
                        ": the server dropped the ClientHello (a TLS library that refuses the offer silently, a filter, or a crash)".to_string(),
                    (Party::Client, Stage::ClientHello) => ": the client gave up before any answer".to_string(),
                    (Party::Client, s) if s >= Stage::ServerHello => format!(
                        ": it did not accept the server's answer{}",
                        f.choice.as_ref().map(|c| format!(" ({} {})", c.version_name, c.cipher_name)).unwrap_or_default()
                    ),
                    _ => String::new(),
                }
            ),
        );
        found.closed = Some(Closed { by: closer, how });
        Some(found)
    }

    fn last_data_ns(&self) -> u64 {
        let f = self.f;
        f.last_from
            .iter()
            .flatten()
            .copied()
            .max()
            .or(f.start_ns)
            .unwrap_or(0)
    }

    fn timeout(&self, owed: Party, waited: u64, closer: Option<Party>) -> Found {
        let waiting_for = match (owed, self.f.stage) {
            (Party::Server, Stage::ClientHello) => "the ClientHello".to_string(),
            (Party::Client, Stage::TcpConnected) => {
                "a ClientHello after the TCP connect".to_string()
            }
            (_, s) => format!("the next handshake message after stage {}", s.as_str()),
        };
        let ending = match closer {
            Some(p) => format!("the {} gave up", p.as_str()),
            None => "the capture ended".into(),
        };
        let mut found = Found::new(
            Cause::HandshakeTimeout,
            format!(
                "the {} never answered {waiting_for} for {:.1} s; {ending}",
                owed.as_str(),
                waited as f64 / 1e9
            ),
        );
        found.closed =
            closer.and_then(|p| self.f.closes[p.index()].map(|(how, _)| Closed { by: p, how }));
        found
    }

    fn at_finish(&self, now: u64) -> HandshakeOutcome {
        let f = self.f;
        if !self.sent_anything(Party::Client) && !self.sent_anything(Party::Server) {
            return self.not_tls();
        }
        let waited = now.saturating_sub(self.last_data_ns());
        if waited >= TIMEOUT_NS {
            return self.fail(self.timeout(self.owed_by(), waited, None));
        }
        if f.finished == [true, true] {
            return self.completed();
        }
        HandshakeOutcome::Undecided
    }

    // ---- building the result ------------------------------------------------------------

    fn fail(&self, found: Found) -> HandshakeOutcome {
        let f = self.f;
        let closed = found.closed.or_else(|| {
            let p = f.first_close?;
            f.closes[p.index()].map(|(how, _)| Closed { by: p, how })
        });
        HandshakeOutcome::Failed(Box::new(Diagnosis {
            cause: found.cause,
            inferred: found.inferred,
            message: found.message,
            stage: found.stage.unwrap_or(f.stage),
            alert: found.alert,
            readable_alerts: f.alerts.iter().map(readable).collect(),
            closed,
            offered: f.offer.clone(),
            selected: f.choice.clone(),
            server_certificates: f.server_certs.clone().unwrap_or_default(),
            client_certificates: f.client_certs.clone().unwrap_or_default(),
            plaintext_sample: found.sample,
            timing: self.timing(),
        }))
    }

    fn timing(&self) -> Timing {
        let f = self.f;
        let start = f.start_ns.unwrap_or(0);
        let ms = |t: u64| t.saturating_sub(start) / 1_000_000;
        let end = f
            .closes
            .iter()
            .flatten()
            .map(|(_, t)| *t)
            .min()
            .or(f.alerts.first().map(|a| a.ts_ns));
        Timing {
            start_ns: start,
            first_byte_ms: f.first_byte_ns.map(ms),
            end_ms: end.map(ms),
            bytes_from_client: self.layers[0].bytes(),
            bytes_from_server: self.layers[1].bytes(),
        }
    }

    fn close_phrase(&self, p: Party) -> Option<String> {
        let (how, _) = self.f.closes[p.index()]?;
        Some(format!(
            "the {} {}",
            p.as_str(),
            match how {
                CloseKind::Fin => "closed the connection",
                CloseKind::Reset => "reset the connection",
            }
        ))
    }

    fn sni_phrase(&self) -> String {
        match self.f.offer.as_ref().and_then(|o| o.server_name.as_deref()) {
            Some(sni) => format!(" for {sni}"),
            None => String::new(),
        }
    }

    fn leaf_phrase(&self) -> String {
        match self.f.server_certs.as_deref().and_then(|c| c.first()) {
            Some(l) => format!(" {}", l.short_name()),
            None => self.sni_phrase(),
        }
    }
}

/// A cause found, before the common fields are filled in.
struct Found {
    cause: Cause,
    message: String,
    inferred: bool,
    alert: Option<AlertInfo>,
    stage: Option<Stage>,
    closed: Option<Closed>,
    sample: Option<String>,
}

impl Found {
    fn new(cause: Cause, message: String) -> Self {
        Found {
            cause,
            message,
            inferred: false,
            alert: None,
            stage: None,
            closed: None,
            sample: None,
        }
    }
}

/// Fatal alerts end the handshake; warnings (close_notify, user_canceled,
/// unrecognized_name as a warning) do not by themselves.
fn decisive(a: &SeenAlert) -> bool {
    a.level == 2 || (a.level != 1 && a.code != 0)
}

fn readable(a: &SeenAlert) -> AlertInfo {
    AlertInfo::readable(a.from, a.level, a.code)
}

fn quote(s: &str) -> String {
    let line: String = s.chars().take(40).collect();
    format!("{:?}", line)
}

fn list_or_none(v: &[String]) -> String {
    if v.is_empty() {
        "none".into()
    } else {
        v.join(", ")
    }
}

fn cert_names(c: &CertSummary) -> String {
    if c.san.is_empty() {
        c.short_name()
    } else {
        c.san.join(", ")
    }
}

/// "2024-05-01 12:00:00 UTC".
fn date(unix: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(unix)
        .ok()
        .and_then(|t| {
            t.format(time::macros::format_description!(
                "[year]-[month]-[day] [hour]:[minute]:[second] UTC"
            ))
            .ok()
        })
        .unwrap_or_else(|| unix.to_string())
}

fn days(secs: i64) -> String {
    let d = secs / SECS_PER_DAY;
    match d {
        0 => format!("{} hours", secs / 3600),
        1 => "1 day".into(),
        d => format!("{d} days"),
    }
}

fn days_ago(secs: i64) -> String {
    format!("{} ago", days(secs))
}
