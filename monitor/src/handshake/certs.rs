//! Certificate chain summaries (TLS <= 1.2 sends the chain in clear), decoded with
//! x509-parser, and the chain facts the diagnosis needs: weak signatures, weak keys,
//! self-signed leaf, missing issuer, names, validity.

use serde::Serialize;
use tls_parser::{TlsMessage, TlsMessageHandshake, parse_tls_message_handshake};
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};
use x509_parser::public_key::PublicKey;

/// One certificate as operators read it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, schemars::JsonSchema)]
pub struct CertSummary {
    pub subject: String,
    pub issuer: String,
    pub common_name: Option<String>,
    /// DNS names and IP addresses of subjectAltName.
    pub san: Vec<String>,
    /// Unix seconds.
    pub not_before: i64,
    pub not_after: i64,
    pub signature_algorithm: String,
    /// "RSA", "EC", "Ed25519", ...
    pub key_type: String,
    pub key_bits: u32,
    pub is_ca: bool,
    pub self_signed: bool,
}

impl CertSummary {
    /// Signed with MD2/MD5/SHA-1, which current clients refuse (seed 000).
    pub fn weak_signature(&self) -> bool {
        let s = self.signature_algorithm.to_ascii_lowercase();
        s.starts_with("md") || s.contains("sha1")
    }

    /// An RSA/DSA key under 2048 bits or an EC key under 224 bits (OpenSSL security
    /// level 2, Debian's default).
    pub fn weak_key(&self) -> bool {
        match self.key_type.as_str() {
            "RSA" | "DSA" => self.key_bits > 0 && self.key_bits < 2048,
            "EC" => self.key_bits > 0 && self.key_bits < 224,
            _ => false,
        }
    }

    /// RFC 6125 name match against SANs (CN only when there are no DNS SANs).
    pub fn matches_host(&self, host: &str) -> bool {
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        let names: Vec<&str> = if self.san.is_empty() {
            self.common_name.iter().map(String::as_str).collect()
        } else {
            self.san.iter().map(String::as_str).collect()
        };
        names
            .iter()
            .any(|n| name_matches(&n.to_ascii_lowercase(), &host))
    }

    /// "CN=www.example.com" style short name for sentences.
    pub fn short_name(&self) -> String {
        match &self.common_name {
            Some(cn) => format!("CN={cn}"),
            None => self.subject.clone(),
        }
    }
}

fn name_matches(pattern: &str, host: &str) -> bool {
    match pattern.strip_prefix("*.") {
        Some(suffix) => host
            .split_once('.')
            .is_some_and(|(label, rest)| !label.is_empty() && rest == suffix),
        None => pattern == host,
    }
}

/// Decodes a Certificate message body (TLS <= 1.2 layout) into summaries, leaf first.
/// Certificates that do not parse are left out; an empty list means "no certificate".
pub fn parse_certificate_message(body: &[u8]) -> Vec<CertSummary> {
    let mut msg = vec![11];
    msg.extend_from_slice(&(body.len().min(0xff_ffff) as u32).to_be_bytes()[1..]);
    msg.extend_from_slice(body);
    match parse_tls_message_handshake(&msg) {
        Ok((_, TlsMessage::Handshake(TlsMessageHandshake::Certificate(c)))) => c
            .cert_chain
            .iter()
            .filter_map(|raw| summarize_seen(raw.data))
            .collect(),
        _ => Vec::new(),
    }
}

/// Certificates summarized lately on this thread, by their DER bytes: a server sends the
/// same chain to every client, and parsing it again each time was most of the work of a
/// TLS 1.2 handshake's verdict. Bounded; a memo of a pure function, so results are the same.
const SEEN_CERTS: usize = 64;

thread_local! {
    static SEEN: std::cell::RefCell<std::collections::HashMap<Vec<u8>, Option<CertSummary>>> =
        std::cell::RefCell::new(std::collections::HashMap::new());
}

fn summarize_seen(der: &[u8]) -> Option<CertSummary> {
    if let Some(hit) = SEEN.with(|s| s.borrow().get(der).cloned()) {
        return hit;
    }
    let summary = summarize(der);
    SEEN.with(|s| {
        let mut s = s.borrow_mut();
        if s.len() >= SEEN_CERTS {
            s.clear();
        }
        s.insert(der.to_vec(), summary.clone());
    });
    summary
}

/// Summarizes one DER certificate.
pub fn summarize(der: &[u8]) -> Option<CertSummary> {
    let (_, cert) = X509Certificate::from_der(der).ok()?;
    let subject = cert.subject().to_string();
    let issuer = cert.issuer().to_string();
    let common_name = cert
        .subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .map(str::to_string);
    let san = match cert.subject_alternative_name() {
        Ok(Some(ext)) => ext
            .value
            .general_names
            .iter()
            .filter_map(|n| match n {
                GeneralName::DNSName(d) => Some(d.to_string()),
                GeneralName::IPAddress(ip) => ip_string(ip),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    };
    let (key_type, key_bits) = key_of(&cert);
    Some(CertSummary {
        self_signed: subject == issuer,
        subject,
        issuer,
        common_name,
        san,
        not_before: cert.validity().not_before.timestamp(),
        not_after: cert.validity().not_after.timestamp(),
        signature_algorithm: signature_name(&cert.signature_algorithm.algorithm.to_id_string()),
        key_type,
        key_bits,
        is_ca: cert.is_ca(),
    })
}

fn ip_string(ip: &[u8]) -> Option<String> {
    match ip.len() {
        4 => Some(std::net::Ipv4Addr::new(ip[0], ip[1], ip[2], ip[3]).to_string()),
        16 => {
            let b: [u8; 16] = ip.try_into().ok()?;
            Some(std::net::Ipv6Addr::from(b).to_string())
        }
        _ => None,
    }
}

fn key_of(cert: &X509Certificate<'_>) -> (String, u32) {
    match cert.public_key().parsed() {
        Ok(PublicKey::RSA(rsa)) => {
            let m = rsa.modulus;
            let first = m.iter().position(|&b| b != 0).unwrap_or(m.len());
            let m = &m[first..];
            let bits = m
                .first()
                .map_or(0, |b| 8 * m.len() as u32 - b.leading_zeros());
            ("RSA".into(), bits)
        }
        Ok(PublicKey::EC(point)) => ("EC".into(), point.key_size() as u32),
        Ok(PublicKey::DSA(y)) => ("DSA".into(), 8 * y.len() as u32),
        _ => match cert
            .public_key()
            .algorithm
            .algorithm
            .to_id_string()
            .as_str()
        {
            "1.3.101.112" => ("Ed25519".into(), 256),
            "1.3.101.113" => ("Ed448".into(), 456),
            other => (other.to_string(), 0),
        },
    }
}

/// Signature algorithm OIDs (RFC 3279, 4055, 5758, 8410) by the names OpenSSL prints.
fn signature_name(oid: &str) -> String {
    match oid {
        "1.2.840.113549.1.1.2" => "md2WithRSAEncryption",
        "1.2.840.113549.1.1.4" => "md5WithRSAEncryption",
        "1.2.840.113549.1.1.5" => "sha1WithRSAEncryption",
        "1.2.840.113549.1.1.10" => "rsassaPss",
        "1.2.840.113549.1.1.11" => "sha256WithRSAEncryption",
        "1.2.840.113549.1.1.12" => "sha384WithRSAEncryption",
        "1.2.840.113549.1.1.13" => "sha512WithRSAEncryption",
        "1.2.840.10045.4.1" => "ecdsa-with-SHA1",
        "1.2.840.10045.4.3.2" => "ecdsa-with-SHA256",
        "1.2.840.10045.4.3.3" => "ecdsa-with-SHA384",
        "1.2.840.10045.4.3.4" => "ecdsa-with-SHA512",
        "1.2.840.10040.4.3" => "dsaWithSHA1",
        "1.3.101.112" => "ED25519",
        "1.3.101.113" => "ED448",
        other => return other.to_string(),
    }
    .to_string()
}

/// Facts about a chain as the server sent it (leaf first).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChainFacts<'a> {
    pub chain: &'a [CertSummary],
}

impl<'a> ChainFacts<'a> {
    pub fn leaf(&self) -> Option<&'a CertSummary> {
        self.chain.first()
    }

    /// The first certificate signed with a weak hash, ignoring a self-signed root (its
    /// signature is not checked by anyone).
    pub fn weak_signature(&self) -> Option<&'a CertSummary> {
        self.chain
            .iter()
            .find(|c| c.weak_signature() && !c.self_signed)
    }

    pub fn weak_key(&self) -> Option<&'a CertSummary> {
        self.chain.iter().find(|c| c.weak_key())
    }

    /// The leaf is self-signed.
    pub fn self_signed_leaf(&self) -> bool {
        self.leaf().is_some_and(|l| l.self_signed)
    }

    /// The issuer of the last certificate sent, if it is not a root: the chain stops
    /// short of a self-signed certificate and the missing link must come from the
    /// client's store (or is the missing intermediate).
    pub fn unsent_issuer(&self) -> Option<&'a str> {
        let last = self.chain.last()?;
        (!last.self_signed).then_some(last.issuer.as_str())
    }

    /// The top of the chain: the issuer the client must trust.
    pub fn top_issuer(&self) -> Option<&'a str> {
        self.chain.last().map(|c| c.issuer.as_str())
    }

    /// Certificates not valid at `now` (unix seconds): expired or not yet valid.
    pub fn expired_at(&self, now: i64) -> Option<&'a CertSummary> {
        self.chain.iter().find(|c| c.not_after < now)
    }

    pub fn not_yet_valid_at(&self, now: i64) -> Option<&'a CertSummary> {
        self.chain.iter().find(|c| c.not_before > now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert(cn: &str, san: &[&str]) -> CertSummary {
        CertSummary {
            subject: format!("CN={cn}"),
            issuer: "CN=ca".into(),
            common_name: Some(cn.into()),
            san: san.iter().map(|s| s.to_string()).collect(),
            not_before: 0,
            not_after: 10,
            signature_algorithm: "md5WithRSAEncryption".into(),
            key_type: "RSA".into(),
            key_bits: 1024,
            is_ca: false,
            self_signed: false,
        }
    }

    #[test]
    fn host_matching_follows_rfc6125() {
        let c = cert("www.example.com", &["www.example.com", "*.api.example.com"]);
        assert!(c.matches_host("WWW.example.com."));
        assert!(c.matches_host("v1.api.example.com"));
        assert!(!c.matches_host("api.example.com"));
        assert!(!c.matches_host("a.b.api.example.com"));
        assert!(cert("localhost", &[]).matches_host("localhost"));
    }

    #[test]
    fn weak_hashes_and_small_keys_are_flagged() {
        let c = cert("x", &[]);
        assert!(c.weak_signature() && c.weak_key());
        let chain = [c];
        let facts = ChainFacts { chain: &chain };
        assert_eq!(facts.unsent_issuer(), Some("CN=ca"));
        assert!(facts.expired_at(11).is_some() && facts.not_yet_valid_at(-1).is_some());
    }

    #[test]
    fn garbage_certificate_messages_give_no_certificates() {
        assert!(parse_certificate_message(&[0, 0, 3, 0, 0, 0]).is_empty());
        for n in 0..8 {
            assert!(parse_certificate_message(&vec![0xff; n]).is_empty());
        }
    }
}
