//! The explaining half: one sentence per rule, with its concrete values. Pure and total: it
//! reads only the rule, so a wording change cannot change a cause.

use super::rule::{CertRef, OfferedVersions, Refusal, Rule, ServerReaction, Subject};
use crate::clock::utc_seconds;
use crate::handshake::{
    names::{alert_name, is_tls13},
    outcome::{CloseKind, Party, Stage},
};

const SECS_PER_DAY: i64 = 86_400;

/// The sentence an operator reads for `rule`.
pub fn sentence(rule: &Rule) -> String {
    use Rule::*;
    match rule {
        PlaintextToTlsPort { sample, reaction } => {
            let reaction = match reaction {
                ServerReaction::Alert(code) => format!(
                    "the server answered with alert {code} {}",
                    alert_name(*code)
                ),
                ServerReaction::Closed(how) => close_phrase(Party::Server, *how),
                ServerReaction::Waiting => "the server waits for a ClientHello".into(),
            };
            format!(
                "the client sent plaintext ({}) to a TLS port instead of a ClientHello; {reaction}",
                quote(sample)
            )
        }
        PlaintextAnsweredWithAlert { alert_code } => format!(
            "the client's first bytes were not a TLS record (they did not look like TLS, so they were not kept) and the server answered with alert {alert_code} {}: plaintext (HTTP?) sent to a TLS port",
            alert_name(*alert_code)
        ),
        TlsToPlaintextPort { sni, sample } => format!(
            "the client sent a TLS ClientHello{} but the server answered in plaintext ({}): the port does not speak TLS",
            sni_phrase(sni.as_deref()),
            quote(sample)
        ),
        Ssl2OnlyServer { offered } => format!(
            "the server answered in SSL 2.0 (an SSLv2 SERVER-HELLO) to a client offering {}: it \
             speaks nothing newer, and SSL 2.0 is broken and prohibited (RFC 6176); upgrade or \
             retire the server",
            offered.as_deref().unwrap_or("an unreadable hello")
        ),
        VersionMismatch {
            offered,
            alert_code,
        } => {
            let (offered, likely) = match offered {
                OfferedVersions::Hello { range, max, .. } if *max < 0x0303 => {
                    (range.as_str(), "the server requires TLSv1.2 or newer")
                }
                OfferedVersions::Hello { range, max, .. } if *max == 0x0303 => {
                    (range.as_str(), "the server most likely requires TLSv1.3")
                }
                OfferedVersions::Hello { range, min, .. } if is_tls13(*min) => {
                    (range.as_str(), "the server supports only older versions")
                }
                OfferedVersions::Hello { range, .. } => {
                    (range.as_str(), "the server accepts none of them")
                }
                OfferedVersions::SslV2 => (
                    "an SSLv2-format hello",
                    "the server requires a modern ClientHello",
                ),
                OfferedVersions::Unreadable => {
                    ("an unreadable hello", "the server accepts none of them")
                }
            };
            format!(
                "no TLS version in common: the client offered {offered}; {likely} (server sent {})",
                alert_name(*alert_code)
            )
        }
        DowngradeRejected { offered_range } => format!(
            "the client retried with {} and TLS_FALLBACK_SCSV after a failed attempt; the server supports a higher version and refused the downgrade (inappropriate_fallback): look at why the first attempt failed",
            offered_range.as_deref().unwrap_or("a lower version")
        ),
        HelloRefused { alert_code } => format!(
            "the server refused the client's hello ({})",
            alert_name(*alert_code)
        ),
        NoSharedGroup { groups, alert_code } => format!(
            "no key-exchange group in common: the client offered only {} ({} from the server)",
            groups.join(", "),
            alert_name(*alert_code)
        ),
        NoSharedSigalg {
            sigalgs,
            alert_code,
        } => format!(
            "no signature algorithm in common: the client accepts only {} and the server's certificate needs another ({} from the server)",
            sigalgs.join(", "),
            alert_name(*alert_code)
        ),
        NoSharedCipher {
            versions,
            ciphers,
            alert_code,
        } => format!(
            "no cipher suite in common for {versions}; client offered: {} ({} from the server)",
            ciphers.join(", "),
            alert_name(*alert_code)
        ),
        SniUnrecognized { sni } => format!(
            "the server does not serve the name {sni:?} the client asked for (unrecognized_name)"
        ),
        SniMissing => "the client sent no server name (SNI) and the server requires one (unrecognized_name)".into(),
        AlpnMismatch {
            offered,
            refused_by,
        } => format!(
            "no application protocol in common: the client offered ALPN {} and the {} refused them (no_application_protocol)",
            list_or_none(offered),
            refused_by.as_str()
        ),
        CertificateRequired => "the server requires a client certificate and the client sent none (certificate_required)".into(),
        RefusedAfterCertificateRequest => "the server asked for a client certificate and refused the handshake after the client's answer (handshake_failure)".into(),
        EmptyClientCertificate { alert_code } => format!(
            "the server requires a client certificate and the client sent an empty one ({})",
            alert_name(*alert_code)
        ),
        ClientCertUntrusted {
            issuer,
            leaf,
            alert_code,
        } => format!(
            "the server does not trust the client certificate's issuer {issuer} ({leaf}, {})",
            alert_name(*alert_code)
        ),
        ClientCertExpired {
            cert,
            now,
            leaf,
            alert_code,
        } => format!(
            "the server rejected the client certificate: {} expired {} (notAfter {}) ({leaf}, {})",
            cert.name,
            days_ago(now - cert.not_after),
            utc_seconds(cert.not_after),
            alert_name(*alert_code)
        ),
        ClientCertRejected { leaf, alert_code } => format!(
            "the server rejected the client certificate ({leaf}, {})",
            alert_name(*alert_code)
        ),
        CertRevoked { subject } => format!(
            "the client found the server certificate{} revoked (certificate_revoked)",
            subject_phrase(subject)
        ),
        ExpiredUnseen { sni } => format!(
            "the client says the server certificate{} is expired or not yet valid (certificate_expired); TLS 1.3 hides the certificate, so check its dates and the client's clock",
            sni_phrase(sni.as_deref())
        ),
        Expired { cert, now } => format!(
            "certificate {} expired {} (notAfter {})",
            cert.name,
            days_ago(now - cert.not_after),
            utc_seconds(cert.not_after)
        ),
        NotYetValid { cert, now } => format!(
            "certificate {} is not valid yet: notBefore {} is {} from now",
            cert.name,
            utc_seconds(cert.not_before),
            days(cert.not_before - now)
        ),
        ClockSkew { leaf } => format!(
            "the client rejected certificate{} as expired, but every certificate in the chain is valid by this host's clock: the client's clock may be wrong",
            leaf.as_ref().map(validity).unwrap_or_default()
        ),
        ServerCertUnseen { sni, how, tls13 } => {
            let code = match how {
                Refusal::Alert(code) => *code,
                Refusal::Silent => 0,
            };
            let hint = match code {
                48 => {
                    "it does not trust the issuer (self-signed, private CA or missing intermediate)"
                }
                42 => "the certificate is bad for it (name, key, signature or usage)",
                46 => "the certificate could not be verified",
                43 => "the certificate type is unsupported",
                _ => "the handshake could not continue",
            };
            let tls13 = if *tls13 {
                "; TLS 1.3 hides the certificate, so its chain cannot be checked here"
            } else {
                ""
            };
            format!(
                "the client rejected the server certificate{} ({}): {hint}{tls13}",
                sni_phrase(sni.as_deref()),
                refusal(*how)
            )
        }
        WeakSignature {
            algorithm,
            cert,
            how,
        } => format!(
            "the chain contains a certificate signed with {algorithm} ({cert}), which the client refuses ({})",
            refusal(*how)
        ),
        WeakKey {
            cert,
            key_type,
            key_bits,
            how,
        } => format!(
            "certificate {cert} has a {key_type}-{key_bits} key; the client requires a stronger key (RSA >= 2048) ({})",
            refusal(*how)
        ),
        CaCertAsLeaf {
            first,
            reversed,
            how,
        } => format!(
            "the server's first certificate is a CA certificate ({first}){}: a server must send its own certificate first, then its intermediates ({})",
            if *reversed {
                " and the chain is in reverse order"
            } else {
                ", not a server certificate"
            },
            refusal(*how)
        ),
        WeakDh { bits, alert_code } => format!(
            "the server's Diffie-Hellman parameters are {bits} bits, below the 2048 clients accept at their default security level; the client aborted after the ServerKeyExchange ({}): give the server 2048-bit DH parameters or prefer ECDHE",
            alert_name(*alert_code)
        ),
        LegacyVersionRefused {
            chosen,
            offered,
            alert_code,
        } => format!(
            "the server chose {chosen}{} and the client refused it ({}): enable TLS 1.2 or 1.3 on the server",
            offered
                .as_ref()
                .map(|o| format!(" (the client offered {o})"))
                .unwrap_or_default(),
            alert_name(*alert_code)
        ),
        SelfSigned { leaf, how } => format!(
            "the server certificate {leaf} is self-signed and the client does not trust it ({})",
            refusal(*how)
        ),
        Refused { inner, how } => format!("{} ({})", sentence(inner), refusal(*how)),
        HostnameMismatch { host, names, how } => format!(
            "the client asked for {host} but the certificate is for {names} ({})",
            refusal(*how)
        ),
        IncompleteChain { leaf, issuer, how } => format!(
            "the server sent only its leaf certificate {leaf}; the client could not find the issuer {issuer} (send the intermediate certificate with the leaf) ({})",
            refusal(*how)
        ),
        UntrustedIssuer { issuer, leaf, how } => format!(
            "the client does not trust the issuer {issuer} of the server certificate {leaf} ({})",
            refusal(*how)
        ),
        ServerCertRejected { leaf, how } => format!(
            "the client rejected the server certificate {leaf} ({}); its chain shows no weak signature, small key, expiry or name mismatch",
            refusal(*how)
        ),
        Alert { from, code, stage } => format!(
            "the {} sent fatal alert {code} {} at stage {}{}",
            from.as_str(),
            alert_name(*code),
            stage.as_str(),
            match (from, code) {
                (Party::Server, 50) => ": it could not parse the client's message",
                (_, 80) =>
                    ": an error inside the TLS library, often a configuration or resource problem",
                (_, 47) => ": a handshake field had a value the peer refuses",
                _ => "",
            }
        ),
        AlertAfterPeerClose { close, from, code } => format!(
            "{}; the {} then sent alert {code} {}",
            sentence(close),
            from.as_str(),
            alert_name(*code)
        ),
        ClientLeftTlsAfterHandshake { sni } => format!(
            "the client finished the handshake{}, then sent bytes that are not TLS and closed: it \
             dropped the session at once, as clients that check the server's certificate after \
             the handshake do when the check fails (libldap); the certificate or its name was \
             refused (inferred; TLS 1.3 hides the certificate)",
            sni_phrase(sni.as_deref())
        ),
        Tls13ClientAlertBeforeFinished { sni, record_len } => format!(
            "the client sent an encrypted alert instead of its Finished (inferred from a {record_len}-byte record): it rejected the server's flight, most likely the certificate{}; TLS 1.3 hides which alert",
            sni_phrase(sni.as_deref())
        ),
        Tls13ServerAlertAfterFinished {
            client_flight_bytes,
            with_certificate,
        } => format!(
            "the server sent an encrypted alert right after the client's Finished ({client_flight_bytes} bytes of client flight) and closed: it most likely {} (inferred from record sizes; TLS 1.3 encrypts this alert)",
            if *with_certificate {
                "rejected the client's certificate flight"
            } else {
                "requires a client certificate and the client sent none"
            }
        ),
        HostnameMismatchAfterHandshake { host, names } => format!(
            "the handshake completed but the client closed at once without sending data: it asked for {host} and the certificate is for {names} (clients such as curl check the name after the handshake)"
        ),
        EncryptedAlertBeforeFinished { from, stage } => format!(
            "the {} sent an encrypted alert after ChangeCipherSpec at stage {}, before the handshake finished",
            from.as_str(),
            stage.as_str()
        ),
        Timeout {
            owed,
            stage,
            waited_ns,
            closer,
        } => {
            let waiting_for = match (owed, stage) {
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
            format!(
                "the {} never answered {waiting_for} for {:.1} s; {ending}",
                owed.as_str(),
                *waited_ns as f64 / 1e9
            )
        }
        PeerClosed {
            closer,
            how,
            stage,
            choice,
        } => {
            let verb = match how {
                CloseKind::Fin => "closed the connection (FIN)",
                CloseKind::Reset => "reset the connection (RST)",
            };
            let why = match (closer, stage) {
                (Party::Server, Stage::ClientHello) => ": the server dropped the ClientHello (a TLS library that refuses the offer silently, a filter, or a crash)".to_string(),
                (Party::Client, Stage::ClientHello) => ": the client gave up before any answer".to_string(),
                (Party::Client, s) if *s >= Stage::ServerHello => format!(
                    ": it did not accept the server's answer{}",
                    choice
                        .as_ref()
                        .map(|(version, cipher)| format!(" ({version} {cipher})"))
                        .unwrap_or_default()
                ),
                _ => String::new(),
            };
            format!(
                "the {} {verb} at stage {} without an alert{why}",
                closer.as_str(),
                stage.as_str()
            )
        }
    }
}

fn refusal(how: Refusal) -> String {
    match how {
        Refusal::Silent => "closed the connection without an alert".to_string(),
        Refusal::Alert(code) => alert_name(code).to_string(),
    }
}

/// " for api.example.com", or nothing without SNI.
fn sni_phrase(sni: Option<&str>) -> String {
    sni.map(|s| format!(" for {s}")).unwrap_or_default()
}

fn subject_phrase(s: &Subject) -> String {
    match s {
        Subject::Certificate(name) => format!(" {name}"),
        Subject::Sni(sni) => sni_phrase(Some(sni)),
        Subject::Unknown => String::new(),
    }
}

fn close_phrase(p: Party, how: CloseKind) -> String {
    format!(
        "the {} {}",
        p.as_str(),
        match how {
            CloseKind::Fin => "closed the connection",
            CloseKind::Reset => "reset the connection",
        }
    )
}

/// " CN=x (2024-01-01 00:00:00 UTC to 2025-01-01 00:00:00 UTC)".
fn validity(c: &CertRef) -> String {
    format!(
        " {} ({} to {})",
        c.name,
        utc_seconds(c.not_before),
        utc_seconds(c.not_after)
    )
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_as_hours_or_days() {
        assert_eq!(days(3 * 3600), "3 hours");
        assert_eq!(days(SECS_PER_DAY + 5), "1 day");
        assert_eq!(days_ago(2152 * SECS_PER_DAY), "2152 days ago");
    }

    #[test]
    fn wrapped_rules_keep_the_inner_sentence() {
        let inner = Rule::Expired {
            cert: CertRef {
                name: "CN=localhost".into(),
                not_before: 1_577_836_800,
                not_after: 1_609_459_200,
            },
            now: 1_609_459_200 + 3 * SECS_PER_DAY,
        };
        let refused = Rule::Refused {
            inner: Box::new(inner.clone()),
            how: Refusal::Alert(42),
        };
        assert_eq!(
            sentence(&inner),
            "certificate CN=localhost expired 3 days ago (notAfter 2021-01-01 00:00:00 UTC)"
        );
        assert_eq!(
            sentence(&refused),
            format!("{} (bad_certificate)", sentence(&inner))
        );
        let after_close = Rule::AlertAfterPeerClose {
            close: Box::new(Rule::PeerClosed {
                closer: Party::Client,
                how: CloseKind::Fin,
                stage: Stage::ClientHello,
                choice: None,
            }),
            from: Party::Server,
            code: 50,
        };
        assert_eq!(
            sentence(&after_close),
            "the client closed the connection (FIN) at stage client_hello without an alert: the client gave up before any answer; the server then sent alert 50 decode_error"
        );
    }

    #[test]
    fn quoted_samples_are_cut_at_forty_characters_and_escaped() {
        let s = sentence(&Rule::PlaintextToTlsPort {
            sample: format!("GET / HTTP/1.1\r\n{}", "x".repeat(60)),
            reaction: ServerReaction::Waiting,
        });
        assert_eq!(
            s,
            format!(
                "the client sent plaintext (\"GET / HTTP/1.1\\r\\n{}\") to a TLS port instead of a ClientHello; the server waits for a ClientHello",
                "x".repeat(24)
            )
        );
    }
}
