//! What to change, for each cause: one or two lines with the values of this failure (the
//! certificate's date, the names, the versions offered), pointing at the setting to change.
//! `docs/causes.md` has the long form: how to confirm by hand and how to fix it per server.

use super::rule::{CertRef, OfferedVersions, Refusal, Rule};
use crate::clock::utc_seconds;
use crate::handshake::certs::CertSummary;
use crate::handshake::hello::ClientOffer;
use crate::handshake::names::alert_name;
use crate::handshake::outcome::{Cause, Party};

/// What this failure's values say to change.
pub struct Context<'a> {
    pub cause: Cause,
    pub rule: &'a Rule,
    pub offered: Option<&'a ClientOffer>,
    /// The server's leaf certificate, when the capture saw it.
    pub leaf: Option<&'a CertSummary>,
}

/// The remedy sentence; never empty.
pub fn remedy(c: &Context<'_>) -> String {
    let rule = unwrap(c.rule);
    let sni = c.offered.and_then(|o| o.server_name.as_deref());
    let leaf = c.leaf.map(CertSummary::short_name);
    let leaf = leaf.as_deref().unwrap_or("the server certificate");
    let offered = c
        .offered
        .map_or_else(|| "what it offers".to_owned(), ClientOffer::version_range);
    match c.cause {
        Cause::ProtocolVersionMismatch => match rule {
            Rule::VersionMismatch {
                offered: OfferedVersions::Hello { max, .. },
                ..
            } if *max < 0x0303 => format!(
                "the client only offers {offered}: upgrade it or enable TLS 1.2 in it; as a stopgap, allow TLS 1.1 on this listener (nginx: ssl_protocols TLSv1.1 TLSv1.2 TLSv1.3; OpenSSL 3 also needs @SECLEVEL=0)"
            ),
            _ => format!(
                "give both ends a version in common (the client offered {offered}): enable TLS 1.2 and 1.3 on the server (nginx: ssl_protocols TLSv1.2 TLSv1.3; HAProxy: ssl-min-ver TLSv1.2) and in the client"
            ),
        },
        Cause::LegacyVersionRefused => {
            "the server only speaks TLS 1.0/1.1: enable TLS 1.2 and 1.3 on it (nginx: ssl_protocols TLSv1.2 TLSv1.3; Apache: SSLProtocol -all +TLSv1.2 +TLSv1.3); allowing old versions in the client is only a stopgap".into()
        }
        Cause::DowngradeRejected => {
            "the client retried with a lower version after a first attempt failed: find why the first attempt failed (a middlebox, a flaky path); keep TLS_FALLBACK_SCSV".into()
        }
        Cause::NoSharedCipher => format!(
            "add a cipher suite both ends support: the client offered {} suites for {offered}; widen the server's list (nginx: ssl_ciphers; HAProxy: ssl-default-bind-ciphers) or update the client",
            c.offered.map_or(0, |o| o.ciphers.ids.len())
        ),
        Cause::NoSharedGroup => {
            "enable a key-exchange group both ends support (X25519, P-256): nginx ssl_ecdh_curve X25519:prime256v1; OpenSSL clients -groups; Java jdk.tls.namedGroups".into()
        }
        Cause::NoSharedSigalg => {
            "the server's key or signature algorithms match nothing the client offers: serve an RSA-2048 or ECDSA P-256 certificate, or allow the client's signature algorithms (nginx: ssl_conf_command SignatureAlgorithms)".into()
        }
        Cause::WeakSignatureInChain => match rule {
            Rule::WeakSignature {
                algorithm, cert, ..
            } => format!(
                "reissue {cert}: it is signed with {algorithm}, which clients refuse; ask the CA for a SHA-256 signature (and SHA-256 intermediates)"
            ),
            _ => "reissue the chain with SHA-256 signatures: clients refuse MD5 and SHA-1".into(),
        },
        Cause::WeakKey => match rule {
            Rule::WeakKey {
                cert,
                key_type,
                key_bits,
                ..
            } => format!(
                "replace the {key_bits}-bit {key_type} key of {cert} with RSA 2048+ or ECDSA P-256 and reissue the certificate"
            ),
            _ => "replace the certificate's key with RSA 2048+ or ECDSA P-256".into(),
        },
        Cause::UntrustedIssuer => match rule {
            Rule::UntrustedIssuer { issuer, .. } => format!(
                "the client does not trust {issuer}: serve a certificate from a CA the client trusts, or add {issuer} to the client's trust store (update-ca-certificates; Java: keytool -importcert)"
            ),
            _ => "serve a certificate from a CA the client trusts, or add the issuer to the client's trust store".into(),
        },
        Cause::SelfSigned => format!(
            "{leaf} is self-signed: serve a certificate from a CA the client trusts, or install this one in the client's trust store"
        ),
        Cause::IncompleteChain => match rule {
            Rule::IncompleteChain { issuer, .. } => format!(
                "add the intermediate {issuer} to the server's chain file (nginx: ssl_certificate holds the leaf then the intermediates; Apache: SSLCertificateFile with the chain; HAProxy: the .pem holds leaf, intermediates, key)"
            ),
            _ => "add the missing intermediate certificates to the server's chain file, leaf first".into(),
        },
        Cause::CaCertAsLeaf => {
            "put the server's own certificate first in its chain file, then the intermediates (the first one sent is a CA's)".into()
        }
        Cause::CertExpired => match rule {
            Rule::Expired { cert, .. } => format!("renew {}: it expired on {}", cert.name, date(cert)),
            _ => format!("renew {leaf}: it has expired"),
        },
        Cause::CertNotYetValid => match rule {
            Rule::NotYetValid { cert, .. } => format!(
                "{} is valid only from {}: check the server's and the client's clocks (timedatectl), or reissue it with a correct start date",
                cert.name,
                utc_seconds(cert.not_before)
            ),
            _ => "the certificate is not valid yet: check both clocks (timedatectl) or reissue it".into(),
        },
        Cause::ClockSkew => {
            "the certificate is valid now, so the client's clock is wrong: fix its time sync (timedatectl, chrony)".into()
        }
        Cause::CertRevoked => format!("{leaf} is revoked: issue and install a new certificate"),
        Cause::HostnameMismatch => match rule {
            Rule::HostnameMismatch { host, names, .. }
            | Rule::HostnameMismatchAfterHandshake { host, names } => format!(
                "the certificate names {names}, not {host}: reissue it with {host} in its subjectAltName, or make the client use a name it holds"
            ),
            _ => "reissue the certificate with the name clients use in its subjectAltName".into(),
        },
        Cause::SniUnrecognized => format!(
            "the server has no site for {}: add one (nginx: server_name; HAProxy: crt-list) or fix the name the client asks for",
            sni.unwrap_or("the name asked for")
        ),
        Cause::SniMissing => {
            "the client sent no server name and the server requires one: make the client send it (a hostname, not an IP; curl/openssl -servername), or give the server a default certificate".into()
        }
        Cause::AlpnMismatch => format!(
            "no application protocol in common (the client offered {}): enable it on the server (nginx: http2 on; HAProxy: alpn h2,http/1.1) or let the client offer http/1.1",
            c.offered.map_or_else(|| "?".into(), |o| o.alpn.join(", "))
        ),
        Cause::ClientCertRequired => {
            "the server requires a client certificate and got none: give the client its certificate and key (curl --cert/--key; Java: a keystore), or stop requiring one on this listener (nginx: ssl_verify_client optional)".into()
        }
        Cause::ClientCertRejected => {
            "the server refused the client's certificate: check it is valid now, made for client auth (extendedKeyUsage clientAuth) and issued by a CA in the server's client CA file".into()
        }
        Cause::ClientCertUntrusted => match rule {
            Rule::ClientCertUntrusted { issuer, .. } => format!(
                "add {issuer} to the server's client CA file (nginx: ssl_client_certificate; Apache: SSLCACertificateFile; HAProxy: ca-file), or give the client a certificate from a CA the server trusts"
            ),
            _ => "add the client certificate's issuer to the server's client CA file".into(),
        },
        Cause::PlaintextToTlsPort => {
            "the client speaks plaintext to a TLS port: use the TLS scheme in the client (https://, ldaps://, or STARTTLS), or point it at the plaintext port".into()
        }
        Cause::TlsToPlaintextPort => {
            "this port does not speak TLS: enable TLS on the listener (nginx: listen ... ssl) or point the client at the TLS port".into()
        }
        Cause::Ssl2OnlyPeer => {
            "the server speaks only SSL 2.0: upgrade or replace it; no current client can connect".into()
        }
        Cause::PeerClosedMidHandshake | Cause::PeerResetMidHandshake => {
            let who = match rule {
                Rule::PeerClosed { closer, .. } => closer.as_str(),
                _ => "one end",
            };
            format!(
                "the {who} hung up without a TLS alert: read that end's log (a crash, a connection limit, a proxy or firewall cutting in); confirm with openssl s_client -connect HOST:PORT{}",
                sni.map(|s| format!(" -servername {s}")).unwrap_or_default()
            )
        }
        Cause::HandshakeTimeout => {
            let owed = match rule {
                Rule::Timeout { owed, .. } => *owed,
                _ => Party::Server,
            };
            format!(
                "the {} never answered: check that it runs and is not overloaded, and that nothing between (firewall, proxy) swallows its reply",
                owed.as_str()
            )
        }
        Cause::ServerCertRejected
            if matches!(
                rule,
                Rule::ServerCertRejected { .. } | Rule::ServerCertUnseen { tls13: false, .. }
            ) =>
        {
            let why = match rule {
                Rule::ServerCertRejected {
                    how: Refusal::Alert(code),
                    ..
                } => format!(" ({})", alert_name(*code)),
                _ => String::new(),
            };
            format!(
                "the client refused {leaf}{why} for a reason the chain on the wire does not show (its trust store, a key usage, a policy): run openssl s_client -connect HOST:PORT{} -showcerts -verify_return_error with the client's CA bundle and read the verify error",
                sni.map(|s| format!(" -servername {s}")).unwrap_or_default()
            )
        }
        Cause::ServerCertRejected | Cause::Tls13EncryptedAlert => format!(
            "TLS 1.3 hides which check failed: run openssl s_client -connect HOST:PORT{} -verify_return_error against the client's CA bundle and read its verify error (expiry, name, chain, issuer)",
            sni.map(|s| format!(" -servername {s}")).unwrap_or_default()
        ),
        Cause::WeakDh => {
            "the server's DH group is too small: prefer ECDHE suites or use a 2048-bit+ group (nginx: ssl_dhparam with a 2048-bit file, or drop the DHE suites)".into()
        }
        Cause::DecodeError => {
            "one end could not parse the other's message: update the older TLS stack, and look for a middlebox rewriting the traffic".into()
        }
        Cause::InternalError => {
            "the sending end hit an internal error: its log says why (often a key that does not match the certificate, or an unreadable file)".into()
        }
        Cause::Other => "read the alert's name and the log of the end that sent it".into(),
    }
}

/// The refusal inside a `Refused` wrapper.
fn unwrap(rule: &Rule) -> &Rule {
    match rule {
        Rule::Refused { inner, .. } => unwrap(inner),
        Rule::AlertAfterPeerClose { close, .. } => unwrap(close),
        r => r,
    }
}

fn date(cert: &CertRef) -> String {
    utc_seconds(cert.not_after)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_cause_has_a_remedy() {
        let rule = Rule::SniMissing;
        for &cause in Cause::ALL {
            let text = remedy(&Context {
                cause,
                rule: &rule,
                offered: None,
                leaf: None,
            });
            assert!(text.len() > 30, "{cause:?}: {text}");
        }
    }

    #[test]
    fn remedies_carry_this_failures_values() {
        let cert = CertRef {
            name: "CN=api.example".into(),
            not_before: 0,
            not_after: 1_700_000_000,
        };
        let cases = [
            (
                Cause::CertExpired,
                Rule::Expired {
                    cert,
                    now: 1_800_000_000,
                },
                "renew CN=api.example: it expired on 2023-11-14",
            ),
            (
                Cause::IncompleteChain,
                Rule::IncompleteChain {
                    leaf: "CN=api.example".into(),
                    issuer: "CN=Example Int".into(),
                    how: Refusal::Alert(48),
                },
                "add the intermediate CN=Example Int to the server's chain file",
            ),
            (
                Cause::ServerCertRejected,
                Rule::ServerCertRejected {
                    leaf: "CN=api.example".into(),
                    how: Refusal::Alert(42),
                },
                "(bad_certificate) for a reason the chain on the wire does not show",
            ),
            (
                Cause::ServerCertRejected,
                Rule::ClientLeftTlsAfterHandshake { sni: None },
                "TLS 1.3 hides which check failed",
            ),
        ];
        for (cause, rule, want) in cases {
            let text = remedy(&Context {
                cause,
                rule: &rule,
                offered: None,
                leaf: None,
            });
            assert!(text.contains(want), "{cause:?}: {text}");
        }
    }
}
