//! Plaintext where TLS was due, and TLS where plaintext answered: the client's first bytes
//! are not a TLS record (kept, or seen by the kernel and not kept), or the server's are not.

use super::decide::{Decider, Decision, Finding, readable};
use super::rule::{Rule, ServerReaction};
use crate::handshake::outcome::{Cause, Party, Stage};

/// RFC 8446 §6.2: the alert a TLS stack sends for bytes that are not the record it expects.
const UNEXPECTED_MESSAGE: u8 = 10;

impl Decider<'_> {
    pub(super) fn plaintext(&self) -> Option<Decision> {
        let f = self.f;
        let (c, s) = (Party::Client, Party::Server);
        // The client's first bytes were seen by the kernel but not kept (not TLS-looking),
        // and the server's first bytes are a fatal unexpected_message: what a TLS server
        // (Java's) answers to HTTP.
        if f.meta.client_start_unseen
            && !self.sent_anything(c)
            && let Some(a) = f.alerts.first()
            && a.from == s
            && a.code == UNEXPECTED_MESSAGE
            && a.level == 2
            && f.stage == Stage::TcpConnected
        {
            let mut found = Finding::new(
                Cause::PlaintextToTlsPort,
                Rule::PlaintextAnsweredWithAlert { alert_code: a.code },
            );
            found.inferred = true;
            found.alert = Some(readable(a));
            return Some(Decision::Failed(found));
        }
        if f.not_tls[c.index()] {
            let server_tls = self.sent_anything(s) && !f.not_tls[s.index()];
            if f.meta.tls_port || server_tls {
                let server_alert = f.alerts.iter().find(|a| a.from == s);
                let reaction = match (server_alert, f.closes[s.index()]) {
                    (Some(a), _) => ServerReaction::Alert(a.code),
                    (None, Some((how, _))) => ServerReaction::Closed(how),
                    (None, None) => ServerReaction::Waiting,
                };
                let mut found = Finding::new(
                    Cause::PlaintextToTlsPort,
                    Rule::PlaintextToTlsPort {
                        sample: self.sample(c).unwrap_or_default(),
                        reaction,
                    },
                );
                found.alert = server_alert.map(readable);
                found.sample = self.sample(c);
                return Some(Decision::Failed(found));
            }
            if f.not_tls[s.index()] || self.ended() {
                return Some(Decision::NotTls);
            }
            return Some(Decision::Undecided);
        }
        if f.sslv2_server {
            // A client that offers SSL 2.0 only gets an SSL 2.0 answer from any server that
            // still speaks it: an SSL 2.0 exchange, not a TLS failure.
            if f.offer.as_ref().is_some_and(|o| o.max_version() < 0x0300) {
                return Some(Decision::NotTls);
            }
            let offered = f.offer.as_ref().map(|o| o.version_range());
            return Some(Decision::Failed(Finding::new(
                Cause::Ssl2OnlyPeer,
                Rule::Ssl2OnlyServer { offered },
            )));
        }
        if f.not_tls[s.index()] {
            if f.offer.is_some() || f.sslv2_hello || f.malformed_hello.is_some() {
                let mut found = Finding::new(
                    Cause::TlsToPlaintextPort,
                    Rule::TlsToPlaintextPort {
                        sni: self.sni(),
                        sample: self.sample(s).unwrap_or_default(),
                    },
                );
                found.sample = self.sample(s);
                return Some(Decision::Failed(found));
            }
            if !self.sent_anything(c) || f.desynchronised[c.index()] || self.ended() {
                return Some(Decision::NotTls);
            }
        }
        None
    }
}
