//! The rules about certificates: the server's chain refused by the client (what the chain
//! shows, in order: weak signature, weak key, self-signed, validity, name, missing
//! intermediate, untrusted issuer), certificate_expired, and the client's certificate
//! refused by the server.

use super::decide::{Decider, Finding, cert_names};
use super::rule::{CertRef, Refusal, Rule};
use crate::handshake::SeenAlert;
use crate::handshake::certs::{CertSummary, ChainFacts};
use crate::handshake::outcome::Cause;

impl Decider<'_> {
    pub(super) fn expiry_cause(&self, chain: Option<&[CertSummary]>, now: i64) -> Finding {
        let Some(chain) = chain else {
            return Finding::new(Cause::CertExpired, Rule::ExpiredUnseen { sni: self.sni() });
        };
        let facts = ChainFacts { chain };
        if let Some(c) = facts.expired_at(now) {
            return Finding::new(
                Cause::CertExpired,
                Rule::Expired {
                    cert: CertRef::of(c),
                    now,
                },
            );
        }
        if let Some(c) = facts.not_yet_valid_at(now) {
            return Finding::new(
                Cause::CertNotYetValid,
                Rule::NotYetValid {
                    cert: CertRef::of(c),
                    now,
                },
            );
        }
        Finding::new(
            Cause::ClockSkew,
            Rule::ClockSkew {
                leaf: facts.leaf().map(CertRef::of),
            },
        )
    }

    /// The client refused the server's certificate (an alert after the server's flight, or
    /// a silent close there).
    pub(super) fn server_cert_cause(&self, chain: Option<&[CertSummary]>, how: Refusal) -> Finding {
        let Some(chain) = chain else {
            return Finding::new(
                Cause::ServerCertRejected,
                Rule::ServerCertUnseen {
                    sni: self.sni(),
                    how,
                    tls13: self.f.tls13(),
                },
            );
        };
        let facts = ChainFacts { chain };
        let leaf_name = || facts.leaf().map(|l| l.short_name()).unwrap_or_default();
        if let Some(c) = facts.weak_signature() {
            return Finding::new(
                Cause::WeakSignatureInChain,
                Rule::WeakSignature {
                    algorithm: c.signature_algorithm.clone(),
                    cert: c.short_name(),
                    how,
                },
            );
        }
        if let Some(c) = facts.weak_key() {
            return Finding::new(
                Cause::WeakKey,
                Rule::WeakKey {
                    cert: c.short_name(),
                    key_type: c.key_type.clone(),
                    key_bits: c.key_bits,
                    how,
                },
            );
        }
        let ca_first = |reversed| {
            Finding::new(
                Cause::CaCertAsLeaf,
                Rule::CaCertAsLeaf {
                    first: chain[0].short_name(),
                    reversed,
                    how,
                },
            )
        };
        if chain[0].is_ca
            && chain
                .get(1)
                .is_some_and(|next| next.issuer == chain[0].subject)
        {
            return ca_first(true);
        }
        if facts.self_signed_leaf() {
            return Finding::new(
                Cause::SelfSigned,
                Rule::SelfSigned {
                    leaf: leaf_name(),
                    how,
                },
            );
        }
        // A CA certificate first: proven out of order when the next one is issued by it,
        // else the cause only when the client's alert is about the certificate's kind
        // (a private PKI may give its servers CA:TRUE; then expiry, name or trust decide).
        if chain[0].is_ca && matches!(how, Refusal::Alert(42 | 43)) {
            return ca_first(false);
        }
        let now = (self.f.last_ns / 1_000_000_000) as i64;
        if now > 0 && (facts.expired_at(now).is_some() || facts.not_yet_valid_at(now).is_some()) {
            let mut found = self.expiry_cause(Some(chain), now);
            found.rule = Rule::Refused {
                inner: Box::new(found.rule),
                how,
            };
            return found;
        }
        if let (Some(host), Some(leaf)) = (self.sni(), facts.leaf())
            && how != Refusal::Alert(48)
            && !leaf.matches_host(&host)
        {
            return Finding::new(
                Cause::HostnameMismatch,
                Rule::HostnameMismatch {
                    host,
                    names: cert_names(leaf),
                    how,
                },
            );
        }
        if chain.len() == 1
            && let Some(issuer) = facts.unsent_issuer()
        {
            return Finding::new(
                Cause::IncompleteChain,
                Rule::IncompleteChain {
                    leaf: chain[0].short_name(),
                    issuer: issuer.to_string(),
                    how,
                },
            );
        }
        match how {
            Refusal::Alert(48 | 40 | 71) => Finding::new(
                Cause::UntrustedIssuer,
                Rule::UntrustedIssuer {
                    issuer: facts.top_issuer().unwrap_or("?").to_string(),
                    leaf: leaf_name(),
                    how,
                },
            ),
            _ => Finding::new(
                Cause::ServerCertRejected,
                Rule::ServerCertRejected {
                    leaf: leaf_name(),
                    how,
                },
            ),
        }
    }

    pub(super) fn client_cert_cause(&self, a: &SeenAlert) -> Finding {
        let certs = self.f.client_certs.as_deref().unwrap_or(&[]);
        let alert_code = a.code;
        let Some(leaf) = certs.first() else {
            return Finding::new(
                Cause::ClientCertRequired,
                Rule::EmptyClientCertificate { alert_code },
            );
        };
        if matches!(a.code, 48 | 42) {
            return Finding::new(
                Cause::ClientCertUntrusted,
                Rule::ClientCertUntrusted {
                    issuer: certs
                        .last()
                        .map_or(leaf.issuer.as_str(), |c| c.issuer.as_str())
                        .to_string(),
                    leaf: leaf.short_name(),
                    alert_code,
                },
            );
        }
        let now = (a.ts_ns / 1_000_000_000) as i64;
        let expired = (ChainFacts { chain: certs }).expired_at(now);
        let rule = match (a.code, expired) {
            (45, Some(c)) => Rule::ClientCertExpired {
                cert: CertRef::of(c),
                now,
                leaf: leaf.short_name(),
                alert_code,
            },
            _ => Rule::ClientCertRejected {
                leaf: leaf.short_name(),
                alert_code,
            },
        };
        Finding::new(Cause::ClientCertRejected, rule)
    }
}
