//! What the deciding half hands the explaining half: the rule that fired, with the facts it
//! used. A rule holds values, never a sentence; `explain` turns it into one.

use crate::handshake::outcome::{CloseKind, Party, Stage};

/// A certificate as the rules name it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertRef {
    /// `CertSummary::short_name`: "CN=localhost" or the subject.
    pub name: String,
    pub not_before: i64,
    pub not_after: i64,
}

impl CertRef {
    pub(crate) fn of(c: &crate::handshake::certs::CertSummary) -> Self {
        CertRef {
            name: c.short_name(),
            not_before: c.not_before,
            not_after: c.not_after,
        }
    }
}

/// How the client refused the server's certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// A readable alert with this code.
    Alert(u8),
    /// It closed the connection without an alert.
    Silent,
}

/// What the server did with plaintext where a ClientHello was due.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerReaction {
    Alert(u8),
    Closed(CloseKind),
    /// Nothing yet: it waits for a ClientHello.
    Waiting,
}

/// The versions a client offered, as far as its hello was readable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OfferedVersions {
    /// A parsed ClientHello: its range ("TLSv1.0 to TLSv1.2") and bounds.
    Hello { range: String, min: u16, max: u16 },
    /// An SSLv2-format hello.
    SslV2,
    /// A hello that could not be parsed.
    Unreadable,
}

/// How a certificate is referred to when the chain was not seen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Subject {
    /// The leaf's short name.
    Certificate(String),
    /// The name the client asked for.
    Sni(String),
    Unknown,
}

/// The rule that decided a failure, with the facts it rests on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rule {
    // ---- plaintext where TLS was due -------------------------------------------------
    /// The client's first bytes are not TLS and the port (or the server's answer) is.
    PlaintextToTlsPort {
        sample: String,
        reaction: ServerReaction,
    },
    /// A server's very first bytes are a fatal unexpected_message alert, in answer to client
    /// bytes the capture did not keep because they did not look like TLS.
    PlaintextAnsweredWithAlert { alert_code: u8 },
    /// The client sent a ClientHello; the server answered with plaintext.
    TlsToPlaintextPort { sni: Option<String>, sample: String },
    /// The server's first bytes are an SSLv2 SERVER-HELLO.
    Ssl2OnlyServer { offered: Option<String> },

    // ---- readable alerts ---------------------------------------------------------------
    /// protocol_version, or an early refusal of a client that offers only TLS <= 1.1.
    VersionMismatch {
        offered: OfferedVersions,
        alert_code: u8,
    },
    /// inappropriate_fallback: the server refused a downgraded retry.
    DowngradeRejected { offered_range: Option<String> },
    /// handshake_failure / insufficient_security right after a hello that could not be read.
    HelloRefused { alert_code: u8 },
    /// The same, with a client that offers many ciphers but at most two groups.
    NoSharedGroup { groups: Vec<String>, alert_code: u8 },
    /// The same, with a client that offers many ciphers but at most three signature schemes.
    NoSharedSigalg {
        sigalgs: Vec<String>,
        alert_code: u8,
    },
    /// The same, otherwise: the cipher suites did not meet.
    NoSharedCipher {
        versions: String,
        ciphers: Vec<String>,
        alert_code: u8,
    },
    /// unrecognized_name for a name the client sent.
    SniUnrecognized { sni: String },
    /// unrecognized_name without SNI.
    SniMissing,
    /// no_application_protocol.
    AlpnMismatch {
        offered: Vec<String>,
        refused_by: Party,
    },
    /// certificate_required.
    CertificateRequired,
    /// handshake_failure from a server that asked for a client certificate, after the
    /// client's answer.
    RefusedAfterCertificateRequest,
    /// A refusal after the client sent an empty Certificate message.
    EmptyClientCertificate { alert_code: u8 },
    /// unknown_ca / bad_certificate after the client's certificate.
    ClientCertUntrusted {
        issuer: String,
        leaf: String,
        alert_code: u8,
    },
    /// certificate_expired about a client certificate that is expired.
    ClientCertExpired {
        cert: CertRef,
        now: i64,
        leaf: String,
        alert_code: u8,
    },
    /// Any other refusal of the client's certificate.
    ClientCertRejected { leaf: String, alert_code: u8 },
    /// certificate_revoked from the client.
    CertRevoked { subject: Subject },
    /// certificate_expired from the client, chain not seen (TLS 1.3).
    ExpiredUnseen { sni: Option<String> },
    /// A certificate of the chain is past its notAfter.
    Expired { cert: CertRef, now: i64 },
    /// A certificate of the chain is before its notBefore.
    NotYetValid { cert: CertRef, now: i64 },
    /// certificate_expired, yet every certificate is valid by this host's clock.
    ClockSkew { leaf: Option<CertRef> },
    /// The client refused the certificate; the chain was not seen.
    ServerCertUnseen {
        sni: Option<String>,
        how: Refusal,
        tls13: bool,
    },
    /// The chain holds an MD5- or SHA-1-signed certificate.
    WeakSignature {
        algorithm: String,
        cert: String,
        how: Refusal,
    },
    /// A certificate has a key below what clients accept.
    WeakKey {
        cert: String,
        key_type: String,
        key_bits: u32,
        how: Refusal,
    },
    /// The leaf is self-signed.
    SelfSigned { leaf: String, how: Refusal },
    /// The first certificate of the chain is a CA's; `reversed`: the next one is issued by
    /// it (the chain is in reverse order).
    CaCertAsLeaf {
        first: String,
        reversed: bool,
        how: Refusal,
    },
    /// The server's ServerKeyExchange carries a DH prime of `bits` bits, below the 2048
    /// clients at their default security level accept; the client aborted after it.
    WeakDh { bits: u32, alert_code: u8 },
    /// The server chose a version below TLS 1.2 and the client aborted right after.
    LegacyVersionRefused {
        chosen: String,
        offered: Option<String>,
        alert_code: u8,
    },
    /// The chain is outside its validity window (an `Expired` or `NotYetValid` rule).
    Refused { inner: Box<Rule>, how: Refusal },
    /// The leaf does not name the host the client asked for.
    HostnameMismatch {
        host: String,
        names: String,
        how: Refusal,
    },
    /// Only the leaf was sent and its issuer is not a root.
    IncompleteChain {
        leaf: String,
        issuer: String,
        how: Refusal,
    },
    /// unknown_ca (or handshake_failure) with a chain that shows nothing else.
    UntrustedIssuer {
        issuer: String,
        leaf: String,
        how: Refusal,
    },
    /// A refusal the chain does not explain.
    ServerCertRejected { leaf: String, how: Refusal },
    /// TLS 1.3: after its Finished the client sent bytes that are not TLS and closed.
    ClientLeftTlsAfterHandshake { sni: Option<String> },
    /// Any other fatal alert.
    Alert { from: Party, code: u8, stage: Stage },
    /// A close came first and the other end answered it with an alert.
    AlertAfterPeerClose {
        close: Box<Rule>,
        from: Party,
        code: u8,
    },

    // ---- TLS 1.3, inferred from record sizes ----------------------------------------------
    /// A client record shorter than any Finished (19 bytes, or padded: Java 35) where its
    /// Finished was due.
    Tls13ClientAlertBeforeFinished {
        sni: Option<String>,
        record_len: usize,
    },
    /// One alert-sized server record after the client's Finished, then a close.
    Tls13ServerAlertAfterFinished {
        client_flight_bytes: usize,
        with_certificate: bool,
    },

    // ---- after the handshake ----------------------------------------------------------
    /// The client closed at once after a handshake whose visible certificate does not name
    /// the host it asked for.
    HostnameMismatchAfterHandshake { host: String, names: String },
    /// TLS <= 1.2: an encrypted alert after ChangeCipherSpec before both Finished.
    EncryptedAlertBeforeFinished { from: Party, stage: Stage },

    // ---- closes and silence -----------------------------------------------------------
    /// The end that owed the next message stayed silent for a second or more.
    Timeout {
        owed: Party,
        stage: Stage,
        waited_ns: u64,
        /// Who gave up; `None` when the capture ended first.
        closer: Option<Party>,
    },
    /// An end closed or reset mid-handshake without an alert.
    PeerClosed {
        closer: Party,
        how: CloseKind,
        stage: Stage,
        /// The server's choice (version, cipher), when it had made one.
        choice: Option<(String, String)>,
    },
}
