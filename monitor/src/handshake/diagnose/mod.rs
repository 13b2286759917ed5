//! From facts to a verdict: the cause table of the README (and `docs/schema`) as code, in
//! two halves. [`decide`] chooses: plaintext where TLS was due (`plaintext`), a readable
//! alert, certificates (`certificates`), TLS 1.3 record sizes (`tls13`), completion, closes
//! and silence; a failure comes back as a [`Finding`]: the cause, the [`Rule`] that fired
//! with the facts it used, stage, alert and sender. [`explain`] writes the sentence from the
//! rule alone. This module joins the two into the [`HandshakeOutcome`] the rest of tlsmon
//! reads.

mod certificates;
pub mod decide;
pub mod explain;
mod plaintext;
pub mod remedy;
pub mod rule;
mod tls13;

pub use decide::{Decision, Finding};
pub use rule::Rule;
pub(crate) use tls13::tls13_stage;

use super::Facts;
use super::outcome::{Closed, Completed, Diagnosis, HandshakeOutcome, NotTls, Party, Timing};
use super::record_layer::RecordLayer;

const SECS_PER_DAY: i64 = 86_400;

pub(crate) fn outcome(
    f: &Facts,
    layers: &[RecordLayer; 2],
    finish_at: Option<u64>,
) -> HandshakeOutcome {
    match decide::decide(f, layers, finish_at) {
        Decision::Failed(found) => fail(f, layers, found),
        Decision::Completed => completed(f, layers, None),
        Decision::ClosedWithoutData { after_ms } => completed(f, layers, Some(after_ms)),
        Decision::NotTls => HandshakeOutcome::NotTls(NotTls {
            client_sample: sample(layers, Party::Client),
            server_sample: sample(layers, Party::Server),
        }),
        Decision::Undecided => HandshakeOutcome::Undecided,
    }
}

fn sample(layers: &[RecordLayer; 2], p: Party) -> Option<String> {
    let s = layers[p.index()].sample();
    (!s.is_empty()).then(|| String::from_utf8_lossy(s).into_owned())
}

fn fail(f: &Facts, layers: &[RecordLayer; 2], found: Finding) -> HandshakeOutcome {
    let closed = found.closed.or_else(|| {
        let p = f.first_close?;
        f.closes[p.index()].map(|(how, _)| Closed { by: p, how })
    });
    let remedy = remedy::remedy(&remedy::Context {
        cause: found.cause,
        rule: &found.rule,
        offered: f.offer.as_ref(),
        leaf: f.server_certs.as_deref().and_then(<[_]>::first),
    });
    HandshakeOutcome::Failed(Box::new(Diagnosis {
        cause: found.cause,
        inferred: found.inferred,
        message: explain::sentence(&found.rule),
        remedy,
        stage: found.stage.unwrap_or(f.stage),
        alert: found.alert,
        readable_alerts: f.alerts.iter().map(decide::readable).collect(),
        closed,
        offered: f.offer.clone(),
        selected: f.choice.clone(),
        server_certificates: f.server_certs.clone().unwrap_or_default(),
        client_certificates: f.client_certs.clone().unwrap_or_default(),
        plaintext_sample: found.sample,
        timing: timing(f, layers),
        rule: found.rule,
    }))
}

fn completed(
    f: &Facts,
    layers: &[RecordLayer; 2],
    closed_without_data_ms: Option<u64>,
) -> HandshakeOutcome {
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
        closed_without_data_ms,
        timing: timing(f, layers),
    }))
}

fn timing(f: &Facts, layers: &[RecordLayer; 2]) -> Timing {
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
        bytes_from_client: layers[0].bytes(),
        bytes_from_server: layers[1].bytes(),
    }
}
