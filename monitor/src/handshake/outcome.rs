//! What the core says about one connection: typed, serializable, stable names.

use serde::Serialize;

use super::certs::CertSummary;
use super::hello::{ClientOffer, ServerChoice};
use super::names::alert_name;

/// The two ends of a TLS connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Party {
    Client,
    Server,
}

impl Party {
    pub fn index(self) -> usize {
        self as usize
    }

    pub fn other(self) -> Party {
        match self {
            Party::Client => Party::Server,
            Party::Server => Party::Client,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Party::Client => "client",
            Party::Server => "server",
        }
    }
}

/// How an end left the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CloseKind {
    /// FIN (orderly close or the process exited).
    Fin,
    /// RST.
    Reset,
}

/// How far the handshake got: the last message seen, in protocol order.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    #[default]
    TcpConnected,
    ClientHello,
    ServerHello,
    Certificate,
    ServerKeyExchange,
    /// TLS <= 1.2: the server's flight is complete.
    ServerHelloDone,
    /// TLS 1.3: the server's encrypted flight (EncryptedExtensions .. Finished) went by.
    EncryptedExtensions,
    ClientFinished,
    ServerFinished,
    ApplicationData,
}

impl Stage {
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::TcpConnected => "tcp_connected",
            Stage::ClientHello => "client_hello",
            Stage::ServerHello => "server_hello",
            Stage::Certificate => "certificate",
            Stage::ServerKeyExchange => "server_key_exchange",
            Stage::ServerHelloDone => "server_hello_done",
            Stage::EncryptedExtensions => "encrypted_extensions",
            Stage::ClientFinished => "client_finished",
            Stage::ServerFinished => "server_finished",
            Stage::ApplicationData => "application_data",
        }
    }
}

/// The causes tlsmon names; `diagnose::decide` holds the rule behind each, and the README
/// lists them for operators.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Cause {
    ProtocolVersionMismatch,
    NoSharedCipher,
    NoSharedGroup,
    NoSharedSigalg,
    WeakSignatureInChain,
    UntrustedIssuer,
    SelfSigned,
    IncompleteChain,
    CertExpired,
    CertNotYetValid,
    ClockSkew,
    HostnameMismatch,
    SniUnrecognized,
    SniMissing,
    AlpnMismatch,
    ClientCertRequired,
    ClientCertRejected,
    ClientCertUntrusted,
    PlaintextToTlsPort,
    TlsToPlaintextPort,
    /// The server answered in SSL 2.0: it speaks nothing newer.
    Ssl2OnlyPeer,
    PeerClosedMidHandshake,
    PeerResetMidHandshake,
    Tls13EncryptedAlert,
    DowngradeRejected,
    WeakKey,
    CertRevoked,
    HandshakeTimeout,
    ServerCertRejected,
    /// The server's chain starts with a CA certificate (reversed, or its CA's certificate
    /// served as its own).
    CaCertAsLeaf,
    /// The server's DHE parameters are below what clients accept (2048 bits).
    WeakDh,
    /// The server chose TLS 1.0 or 1.1 and the client refused it.
    LegacyVersionRefused,
    DecodeError,
    InternalError,
    Other,
}

impl Cause {
    /// Every cause, in the order of the enum (the event schema lists their slugs).
    pub const ALL: &[Cause] = &[
        Cause::ProtocolVersionMismatch,
        Cause::NoSharedCipher,
        Cause::NoSharedGroup,
        Cause::NoSharedSigalg,
        Cause::WeakSignatureInChain,
        Cause::UntrustedIssuer,
        Cause::SelfSigned,
        Cause::IncompleteChain,
        Cause::CertExpired,
        Cause::CertNotYetValid,
        Cause::ClockSkew,
        Cause::HostnameMismatch,
        Cause::SniUnrecognized,
        Cause::SniMissing,
        Cause::AlpnMismatch,
        Cause::ClientCertRequired,
        Cause::ClientCertRejected,
        Cause::ClientCertUntrusted,
        Cause::PlaintextToTlsPort,
        Cause::TlsToPlaintextPort,
        Cause::Ssl2OnlyPeer,
        Cause::PeerClosedMidHandshake,
        Cause::PeerResetMidHandshake,
        Cause::Tls13EncryptedAlert,
        Cause::DowngradeRejected,
        Cause::WeakKey,
        Cause::CertRevoked,
        Cause::HandshakeTimeout,
        Cause::ServerCertRejected,
        Cause::CaCertAsLeaf,
        Cause::WeakDh,
        Cause::LegacyVersionRefused,
        Cause::DecodeError,
        Cause::InternalError,
        Cause::Other,
    ];

    /// The slug as events and the CLI show it.
    pub fn slug(self) -> String {
        match serde_json::to_value(self) {
            Ok(serde_json::Value::String(s)) => s,
            _ => format!("{self:?}"),
        }
    }
}

/// An alert as seen on the wire.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, schemars::JsonSchema)]
pub struct AlertInfo {
    /// 1 warning, 2 fatal; `None` when encrypted.
    pub level: Option<u8>,
    /// `None` when encrypted and not inferred.
    pub code: Option<u8>,
    pub name: Option<String>,
    pub sender: Party,
    /// The alert travelled encrypted; its code, if any, is an inference.
    pub encrypted: bool,
}

impl AlertInfo {
    pub fn readable(sender: Party, level: u8, code: u8) -> Self {
        AlertInfo {
            level: Some(level),
            code: Some(code),
            name: Some(alert_name(code).to_string()),
            sender,
            encrypted: false,
        }
    }

    pub fn encrypted(sender: Party, likely_code: Option<u8>) -> Self {
        AlertInfo {
            level: None,
            code: likely_code,
            name: likely_code.map(|c| alert_name(c).to_string()),
            sender,
            encrypted: true,
        }
    }

    /// "fatal alert 48 unknown_ca from the client".
    pub fn describe(&self) -> String {
        let what = match (self.code, &self.name) {
            (Some(c), Some(n)) if self.encrypted => format!("an encrypted alert (likely {c} {n})"),
            (Some(c), Some(n)) => {
                let level = if self.level == Some(1) {
                    "warning"
                } else {
                    "fatal"
                };
                format!("{level} alert {c} {n}")
            }
            _ => "an encrypted alert".to_string(),
        };
        format!("{what} from the {}", self.sender.as_str())
    }
}

/// Who ended the TCP connection first, and how.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Closed {
    pub by: Party,
    pub how: CloseKind,
}

/// Milliseconds from the first event to the points that matter.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Timing {
    /// Unix time (ns) of the first event of the connection.
    pub start_ns: u64,
    pub first_byte_ms: Option<u64>,
    pub end_ms: Option<u64>,
    pub bytes_from_client: u64,
    pub bytes_from_server: u64,
}

/// A failed handshake, explained.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Diagnosis {
    pub cause: Cause,
    /// The cause rests on inference (sizes, timing, context), not on a readable alert.
    pub inferred: bool,
    /// One sentence with the concrete values.
    pub message: String,
    /// What to change (`diagnose::remedy`; docs/causes.md has the long form).
    pub remedy: String,
    pub stage: Stage,
    pub alert: Option<AlertInfo>,
    /// Every readable alert either end sent, in order (the decisive one included).
    pub readable_alerts: Vec<AlertInfo>,
    pub closed: Option<Closed>,
    pub offered: Option<ClientOffer>,
    pub selected: Option<ServerChoice>,
    /// Server chain as sent (TLS <= 1.2), leaf first.
    pub server_certificates: Vec<CertSummary>,
    /// Client chain as sent (TLS <= 1.2 mutual TLS).
    pub client_certificates: Vec<CertSummary>,
    /// The first bytes of a non-TLS stream, when that is the evidence.
    pub plaintext_sample: Option<String>,
    pub timing: Timing,
    /// The rule that decided the cause, with the facts it used (not serialized: `message`
    /// is its sentence).
    #[serde(skip)]
    pub rule: super::diagnose::Rule,
}

/// A handshake that completed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Completed {
    pub offered: Option<ClientOffer>,
    pub selected: ServerChoice,
    pub server_certificates: Vec<CertSummary>,
    /// Days until the leaf expires (negative: expired), when the chain was visible.
    pub leaf_expires_in_days: Option<i64>,
    pub resumed: bool,
    /// The client closed this many ms after the handshake without sending data, and the
    /// wire shows nothing wrong: a health check, a probe, or a rejection only the client's
    /// library knows (not a failure).
    pub closed_without_data_ms: Option<u64>,
    pub timing: Timing,
}

/// A connection that is not TLS at all.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NotTls {
    pub client_sample: Option<String>,
    pub server_sample: Option<String>,
}

/// A connection whose capture began after it started (offline: no SYN and no ClientHello
/// at the start of the client's bytes): its handshake is not in the capture, so nothing is
/// concluded about it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Truncated {
    pub bytes_from_client: u64,
    pub bytes_from_server: u64,
}

impl Truncated {
    pub const MESSAGE: &str = "the capture began after this connection started (no SYN, no ClientHello): its \
         handshake is not in the file, nothing is concluded";
}

/// The verdict on one connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum HandshakeOutcome {
    Completed(Box<Completed>),
    Failed(Box<Diagnosis>),
    NotTls(NotTls),
    /// Offline only: the capture missed the connection's start.
    Truncated(Truncated),
    /// Too early to say (the handshake is still running).
    Undecided,
}

impl HandshakeOutcome {
    pub fn is_decided(&self) -> bool {
        !matches!(self, HandshakeOutcome::Undecided)
    }

    pub fn diagnosis(&self) -> Option<&Diagnosis> {
        match self {
            HandshakeOutcome::Failed(d) => Some(d),
            _ => None,
        }
    }

    /// "completed", "closed_after_handshake" (completed, then closed without data), "failed",
    /// "not_tls", "truncated", "undecided".
    pub fn kind(&self) -> &'static str {
        match self {
            HandshakeOutcome::Completed(c) if c.closed_without_data_ms.is_some() => {
                "closed_after_handshake"
            }
            HandshakeOutcome::Completed(_) => "completed",
            HandshakeOutcome::Failed(_) => "failed",
            HandshakeOutcome::NotTls(_) => "not_tls",
            HandshakeOutcome::Truncated(_) => "truncated",
            HandshakeOutcome::Undecided => "undecided",
        }
    }
}

/// Fails to compile when a cause is added: the reminder to list it in `Cause::ALL` too (the
/// event schema's enum is generated from it; a test checks the README's table holds it).
#[allow(dead_code)]
fn every_cause_is_in_all(c: Cause) {
    match c {
        Cause::ProtocolVersionMismatch
        | Cause::NoSharedCipher
        | Cause::NoSharedGroup
        | Cause::NoSharedSigalg
        | Cause::WeakSignatureInChain
        | Cause::UntrustedIssuer
        | Cause::SelfSigned
        | Cause::IncompleteChain
        | Cause::CertExpired
        | Cause::CertNotYetValid
        | Cause::ClockSkew
        | Cause::HostnameMismatch
        | Cause::SniUnrecognized
        | Cause::SniMissing
        | Cause::AlpnMismatch
        | Cause::ClientCertRequired
        | Cause::ClientCertRejected
        | Cause::ClientCertUntrusted
        | Cause::PlaintextToTlsPort
        | Cause::TlsToPlaintextPort
        | Cause::Ssl2OnlyPeer
        | Cause::PeerClosedMidHandshake
        | Cause::PeerResetMidHandshake
        | Cause::Tls13EncryptedAlert
        | Cause::DowngradeRejected
        | Cause::WeakKey
        | Cause::CertRevoked
        | Cause::HandshakeTimeout
        | Cause::ServerCertRejected
        | Cause::CaCertAsLeaf
        | Cause::WeakDh
        | Cause::LegacyVersionRefused
        | Cause::DecodeError
        | Cause::InternalError
        | Cause::Other => {}
    }
}

#[cfg(test)]
mod tests {
    use super::Cause;

    #[test]
    fn every_cause_has_its_own_slug_a_line_in_the_readme_and_a_section_in_causes_md() {
        let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md"))
            .expect("README.md");
        let causes_md =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/causes.md"))
                .expect("docs/causes.md");
        let mut seen = std::collections::BTreeSet::new();
        for c in Cause::ALL {
            let slug = c.slug();
            assert!(seen.insert(slug.clone()), "{slug} twice");
            assert!(
                readme.contains(&format!("`{slug}`")),
                "{slug} not in the README's table"
            );
            assert!(
                causes_md.contains(&format!("## `{slug}`\n")),
                "{slug} has no section in docs/causes.md"
            );
        }
    }
}
