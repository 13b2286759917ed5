//! The deciding half: from the facts of one connection to a [`Decision`], and for a failure
//! the cause with the [`Rule`] that fired and the facts it used. No sentence is written
//! here (`explain` does that).
//!
//! Order of evidence: plaintext where TLS was due, a readable alert, TLS 1.3 record-size
//! inference, completion, then who closed at which stage and after how long.

use super::rule::{OfferedVersions, Refusal, Rule, Subject};
use super::tls13::{FLIGHT_WITH_CERTIFICATE, TLS13_ALERT_LEN, Tls13Records};
use crate::handshake::certs::{CertSummary, ChainFacts};
use crate::handshake::outcome::{AlertInfo, Cause, CloseKind, Closed, Party, Stage};
use crate::handshake::record_layer::RecordLayer;
use crate::handshake::{Facts, SeenAlert};

/// Waiting this long for the other end before closing is a timeout, not a refusal.
const TIMEOUT_NS: u64 = 1_000_000_000;
/// DHE primes below this are refused by clients at OpenSSL's default security level 2
/// (and by browsers since Logjam).
const WEAK_DH_BITS: u32 = 2048;

/// What the facts say about the connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Failed(Finding),
    Completed,
    /// The handshake completed and the client closed `after_ms` later without sending data,
    /// with nothing on the wire to say why (a health check, a probe, or a rejection only the
    /// client's library knows).
    ClosedWithoutData {
        after_ms: u64,
    },
    NotTls,
    /// Too early to say.
    Undecided,
}

/// A failure, decided: its cause, the rule that fired with the facts it used, and the
/// structured fields of the diagnosis.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub cause: Cause,
    pub rule: Rule,
    /// Rests on inference (sizes, timing, context), not on a readable alert.
    pub inferred: bool,
    pub alert: Option<AlertInfo>,
    /// The stage to report, when it is not the stage the connection reached.
    pub stage: Option<Stage>,
    pub closed: Option<Closed>,
    /// The first bytes of a non-TLS stream, when that is the evidence.
    pub sample: Option<String>,
}

impl Finding {
    pub(super) fn new(cause: Cause, rule: Rule) -> Self {
        Finding {
            cause,
            rule,
            inferred: false,
            alert: None,
            stage: None,
            closed: None,
            sample: None,
        }
    }
}

/// Decides one connection. `finish_at`: nothing more will come (capture ended or the flow
/// expired) at that unix time; waiting ends then count as timeouts.
pub(crate) fn decide(f: &Facts, layers: &[RecordLayer; 2], finish_at: Option<u64>) -> Decision {
    Decider {
        f,
        layers,
        finish_at,
    }
    .run()
}

pub(super) struct Decider<'a> {
    pub(super) f: &'a Facts,
    layers: &'a [RecordLayer; 2],
    finish_at: Option<u64>,
}

impl Decider<'_> {
    fn run(&self) -> Decision {
        let f = self.f;
        if let Some(d) = self.plaintext() {
            return d;
        }
        if let Some(a) = f.alerts.iter().find(|a| decisive(a)) {
            // An alert sent after the peer had already closed is a reaction to the close
            // (OpenSSL answers an EOF mid-handshake with decode_error): the close is the cause.
            let peer_closed_first =
                f.closes[a.from.other().index()].is_some_and(|(_, t)| t <= a.ts_ns);
            if peer_closed_first && let Some(mut found) = self.closed_mid_handshake() {
                found.rule = Rule::AlertAfterPeerClose {
                    close: Box::new(found.rule),
                    from: a.from,
                    code: a.code,
                };
                return Decision::Failed(found);
            }
            return Decision::Failed(self.alert_cause(a));
        }
        if f.tls13() {
            if let Some(d) = self.tls13() {
                return d;
            }
        } else if let Some(d) = self.tls12_after_finished() {
            return d;
        }
        if let Some(found) = self.closed_mid_handshake() {
            return Decision::Failed(found);
        }
        if let Some(now) = self.finish_at {
            return self.at_finish(now);
        }
        Decision::Undecided
    }

    // ---- plaintext ---------------------------------------------------------------------

    pub(super) fn sample(&self, p: Party) -> Option<String> {
        let s = self.layers[p.index()].sample();
        (!s.is_empty()).then(|| String::from_utf8_lossy(s).into_owned())
    }

    pub(super) fn sent_anything(&self, p: Party) -> bool {
        self.layers[p.index()].bytes() > 0
    }

    pub(super) fn ended(&self) -> bool {
        self.f.first_close.is_some() || self.finish_at.is_some()
    }

    pub(super) fn sni(&self) -> Option<String> {
        self.f.offer.as_ref().and_then(|o| o.server_name.clone())
    }

    // ---- readable alerts ---------------------------------------------------------------

    fn alert_cause(&self, a: &SeenAlert) -> Finding {
        let f = self.f;
        let offer = f.offer.as_ref();
        let chain = f.server_certs.as_deref().filter(|c| !c.is_empty());
        let now = (a.ts_ns / 1_000_000_000) as i64;
        let client_sent_cert = f.client_certs.is_some();
        use Party::{Client, Server};
        let legacy = f
            .choice
            .as_ref()
            .filter(|c| !c.hello_retry && c.version < 0x0303);
        let mut found = match (a.from, a.code) {
            (Client, 70 | 80) if a.stage >= Stage::ServerHello && legacy.is_some() => Finding::new(
                Cause::LegacyVersionRefused,
                Rule::LegacyVersionRefused {
                    chosen: legacy
                        .map(|c| c.version_name.to_string())
                        .unwrap_or_default(),
                    offered: offer.map(|o| o.version_range()),
                    alert_code: a.code,
                },
            ),
            (Client, 40 | 71 | 80)
                if a.stage >= Stage::ServerKeyExchange
                    && f.dh_bits.is_some_and(|b| b < WEAK_DH_BITS) =>
            {
                Finding::new(
                    Cause::WeakDh,
                    Rule::WeakDh {
                        bits: f.dh_bits.unwrap_or(0),
                        alert_code: a.code,
                    },
                )
            }
            (_, 70) => self.version_mismatch(a.code),
            (Server, 80 | 40 | 71)
                if a.stage <= Stage::ClientHello
                    && offer.is_some_and(|o| o.max_version() < 0x0303) =>
            {
                self.version_mismatch(a.code)
            }
            (Server, 86) => Finding::new(
                Cause::DowngradeRejected,
                Rule::DowngradeRejected {
                    offered_range: offer.map(|o| o.version_range()),
                },
            ),
            (Server, 40 | 71) if a.stage <= Stage::ClientHello => self.nothing_in_common(a.code),
            (Server, 112) => match self.sni() {
                Some(sni) => Finding::new(Cause::SniUnrecognized, Rule::SniUnrecognized { sni }),
                None => Finding::new(Cause::SniMissing, Rule::SniMissing),
            },
            (_, 120) => Finding::new(
                Cause::AlpnMismatch,
                Rule::AlpnMismatch {
                    offered: offer.map(|o| o.alpn.clone()).unwrap_or_default(),
                    refused_by: a.from,
                },
            ),
            (Server, 116) => Finding::new(Cause::ClientCertRequired, Rule::CertificateRequired),
            (Server, _) if client_sent_cert && f.cert_request => self.client_cert_cause(a),
            (Server, 40) if f.cert_request && a.stage >= Stage::ServerHelloDone => Finding::new(
                Cause::ClientCertRequired,
                Rule::RefusedAfterCertificateRequest,
            ),
            (Client, 44) => Finding::new(
                Cause::CertRevoked,
                Rule::CertRevoked {
                    subject: self.leaf_subject(),
                },
            ),
            (Client, 45) => self.expiry_cause(chain, now),
            (Client, 42 | 43 | 46 | 48 | 40 | 71) if a.stage >= Stage::ServerHello => {
                self.server_cert_cause(chain, Refusal::Alert(a.code))
            }
            (_, 50) => self.other(Cause::DecodeError, a),
            (_, 80) => self.other(Cause::InternalError, a),
            _ => self.other(Cause::Other, a),
        };
        found.alert = Some(readable(a));
        found.stage = Some(a.stage);
        found
    }

    fn other(&self, cause: Cause, a: &SeenAlert) -> Finding {
        Finding::new(
            cause,
            Rule::Alert {
                from: a.from,
                code: a.code,
                stage: a.stage,
            },
        )
    }

    fn version_mismatch(&self, alert_code: u8) -> Finding {
        let offered = match self.f.offer.as_ref() {
            Some(o) => OfferedVersions::Hello {
                range: o.version_range(),
                min: o.min_version(),
                max: o.max_version(),
            },
            None if self.f.sslv2_hello => OfferedVersions::SslV2,
            None => OfferedVersions::Unreadable,
        };
        Finding::new(
            Cause::ProtocolVersionMismatch,
            Rule::VersionMismatch {
                offered,
                alert_code,
            },
        )
    }

    fn nothing_in_common(&self, alert_code: u8) -> Finding {
        let Some(o) = self.f.offer.as_ref() else {
            return Finding::new(Cause::NoSharedCipher, Rule::HelloRefused { alert_code });
        };
        let real_ciphers: Vec<String> = o
            .ciphers
            .names()
            .map(|n| n.into_owned())
            .filter(|n| !n.ends_with("_SCSV"))
            .collect();
        let names = |n: &crate::handshake::hello::Named| -> Vec<String> {
            n.names().map(|s| s.into_owned()).collect()
        };
        if real_ciphers.len() > 3 && !o.groups.is_empty() && o.groups.ids.len() <= 2 {
            return Finding::new(
                Cause::NoSharedGroup,
                Rule::NoSharedGroup {
                    groups: names(&o.groups),
                    alert_code,
                },
            );
        }
        if real_ciphers.len() > 3 && !o.sigalgs.is_empty() && o.sigalgs.ids.len() <= 3 {
            return Finding::new(
                Cause::NoSharedSigalg,
                Rule::NoSharedSigalg {
                    sigalgs: names(&o.sigalgs),
                    alert_code,
                },
            );
        }
        Finding::new(
            Cause::NoSharedCipher,
            Rule::NoSharedCipher {
                versions: o.version_range(),
                ciphers: real_ciphers,
                alert_code,
            },
        )
    }

    // ---- TLS 1.3 inference --------------------------------------------------------------

    fn tls13(&self) -> Option<Decision> {
        let f = self.f;
        let r = Tls13Records::of(f);
        if let Some(record_len) = r.client_alert_before_finished {
            let mut found = Finding::new(
                Cause::Tls13EncryptedAlert,
                Rule::Tls13ClientAlertBeforeFinished {
                    sni: self.sni(),
                    record_len,
                },
            );
            found.inferred = true;
            found.alert = Some(AlertInfo::encrypted(Party::Client, None));
            return Some(Decision::Failed(found));
        }
        let (_, fin_ts) = r.client_finished?;
        let server_closed = f.closes[Party::Server.index()].is_some();
        let client_closed = f.closes[Party::Client.index()].is_some();
        // The server asked for a certificate (the client's flight has a Certificate record
        // before its Finished), answered that flight with one alert-sized record and closed,
        // and never a response: it refused the client's certificate, or the lack of one. A
        // client that speaks first (curl: Finished and the request at once) has data after
        // its Finished; what decides is that the server sent nothing else. Not a refusal:
        // a server that asked for nothing and closes (its close_notify), or one answering
        // the client's own close_notify.
        if let Some((len, server_ts)) = r.server_after_client_finished
            && len == TLS13_ALERT_LEN
            && r.server_records_after_client_finished == 1
            && r.client_flight_records >= 2
            && r.client_alert_after_finished.is_none_or(|t| t > server_ts)
            && server_closed
        {
            let with_certificate = r.client_flight_bytes > FLIGHT_WITH_CERTIFICATE;
            let (cause, code) = if with_certificate {
                (Cause::ClientCertRejected, None)
            } else {
                (Cause::ClientCertRequired, Some(116))
            };
            let mut found = Finding::new(
                cause,
                Rule::Tls13ServerAlertAfterFinished {
                    client_flight_bytes: r.client_flight_bytes,
                    with_certificate,
                },
            );
            found.inferred = true;
            found.alert = Some(AlertInfo::encrypted(Party::Server, code));
            found.stage = Some(Stage::ClientFinished);
            return Some(Decision::Failed(found));
        }
        if let Some(alert_ts) = r.client_alert_after_finished
            && client_closed
            && !r.client_data_after_finished
        {
            return Some(self.closed_after_handshake(alert_ts.saturating_sub(fin_ts)));
        }
        // The client finished the handshake, then sent bytes that are no TLS record and
        // left: it dropped the session at once. Clients that check the server's certificate
        // only after the handshake do this when the check fails (libldap on GnuTLS sends its
        // unbind in the clear).
        if f.desynchronised[Party::Client.index()] && !r.client_data_after_finished && client_closed
        {
            let mut found = Finding::new(
                Cause::ServerCertRejected,
                Rule::ClientLeftTlsAfterHandshake { sni: self.sni() },
            );
            found.inferred = true;
            found.stage = Some(Stage::ClientFinished);
            return Some(Decision::Failed(found));
        }
        if r.client_data_after_finished || self.ended() {
            return Some(Decision::Completed);
        }
        None
    }

    // ---- completion ---------------------------------------------------------------------

    fn tls12_after_finished(&self) -> Option<Decision> {
        let f = self.f;
        if f.finished != [true, true] {
            if let Some(r) = f.sealed.iter().find(|r| r.alert) {
                let mut found = Finding::new(
                    Cause::Other,
                    Rule::EncryptedAlertBeforeFinished {
                        from: r.from,
                        stage: f.stage,
                    },
                );
                found.alert = Some(AlertInfo::encrypted(r.from, None));
                return Some(Decision::Failed(found));
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
            Some(r) if !r.alert => Some(Decision::Completed),
            _ if self.ended() => Some(Decision::Completed),
            _ => None,
        }
    }

    /// The client closed right after the handshake without sending data. That is what a
    /// health check, a probe or a certificate monitor does, so it is a failure only when the
    /// wire shows what was wrong: a visible certificate that does not name the host asked
    /// for, or is outside its validity. Otherwise it is an observation, not a failure.
    fn closed_after_handshake(&self, after_ns: u64) -> Decision {
        let chain = self.f.server_certs.as_deref().filter(|c| !c.is_empty());
        let now = (self.f.last_ns / 1_000_000_000) as i64;
        let mut found = match (chain, self.sni()) {
            (Some(chain), Some(host)) if !chain[0].matches_host(&host) => Finding::new(
                Cause::HostnameMismatch,
                Rule::HostnameMismatchAfterHandshake {
                    host,
                    names: cert_names(&chain[0]),
                },
            ),
            // The leaf's dates only: a server still sending an expired extra intermediate
            // (an old cross-sign) works for clients that build another path.
            (Some(chain), _)
                if now > 0
                    && ((ChainFacts { chain: &chain[..1] })
                        .expired_at(now)
                        .is_some()
                        || (ChainFacts { chain: &chain[..1] })
                            .not_yet_valid_at(now)
                            .is_some()) =>
            {
                self.expiry_cause(Some(&chain[..1]), now)
            }
            _ => {
                return Decision::ClosedWithoutData {
                    after_ms: after_ns / 1_000_000,
                };
            }
        };
        found.inferred = true;
        found.alert = Some(AlertInfo::encrypted(Party::Client, None));
        found.stage = Some(Stage::ApplicationData.min(self.f.stage.max(Stage::ClientFinished)));
        Decision::Failed(found)
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

    fn closed_mid_handshake(&self) -> Option<Finding> {
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
            let mut found = self.server_cert_cause(Some(chain), Refusal::Silent);
            if found.cause != Cause::ServerCertRejected {
                found.inferred = true;
                found.closed = Some(Closed { by: closer, how });
                return Some(found);
            }
        }
        let cause = match how {
            CloseKind::Fin => Cause::PeerClosedMidHandshake,
            CloseKind::Reset => Cause::PeerResetMidHandshake,
        };
        let mut found = Finding::new(
            cause,
            Rule::PeerClosed {
                closer,
                how,
                stage: f.stage,
                choice: f
                    .choice
                    .as_ref()
                    .map(|c| (c.version_name.to_string(), c.cipher_name.to_string())),
            },
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

    fn timeout(&self, owed: Party, waited: u64, closer: Option<Party>) -> Finding {
        let mut found = Finding::new(
            Cause::HandshakeTimeout,
            Rule::Timeout {
                owed,
                stage: self.f.stage,
                waited_ns: waited,
                closer,
            },
        );
        found.closed =
            closer.and_then(|p| self.f.closes[p.index()].map(|(how, _)| Closed { by: p, how }));
        found
    }

    fn at_finish(&self, now: u64) -> Decision {
        let f = self.f;
        if !self.sent_anything(Party::Client) && !self.sent_anything(Party::Server) {
            return Decision::NotTls;
        }
        let waited = now.saturating_sub(self.last_data_ns());
        if waited >= TIMEOUT_NS {
            return Decision::Failed(self.timeout(self.owed_by(), waited, None));
        }
        if f.finished == [true, true] {
            return Decision::Completed;
        }
        Decision::Undecided
    }

    /// The leaf's name when the chain was seen, else the SNI.
    fn leaf_subject(&self) -> Subject {
        match self.f.server_certs.as_deref().and_then(|c| c.first()) {
            Some(l) => Subject::Certificate(l.short_name()),
            None => self.sni().map_or(Subject::Unknown, Subject::Sni),
        }
    }
}

/// Fatal alerts end the handshake; warnings (close_notify, user_canceled,
/// unrecognized_name as a warning) do not by themselves.
fn decisive(a: &SeenAlert) -> bool {
    a.level == 2 || (a.level != 1 && a.code != 0)
}

pub(super) fn readable(a: &SeenAlert) -> AlertInfo {
    AlertInfo::readable(a.from, a.level, a.code)
}

pub(super) fn cert_names(c: &CertSummary) -> String {
    if c.san.is_empty() {
        c.short_name()
    } else {
        c.san.join(", ")
    }
}
