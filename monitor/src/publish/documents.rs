//! The documents the publisher sends besides alert events: the retained `status`
//! (`tlsmon.status/1`) and the periodic `summary` (`tlsmon.summary/1`).

use std::sync::atomic::Ordering;

use serde::Serialize;

use super::{SummarySource, reader};
use crate::{
    clock::{now_ms, rfc3339},
    config::Host,
    mqtt::Settings,
    store::{self, outbox},
};

#[derive(Serialize, schemars::JsonSchema)]
pub struct StatusDoc<'a> {
    schema: &'static str,
    state: &'a str,
    host: &'a Host,
    site: &'a str,
    version: &'static str,
    capabilities: [&'static str; 3],
    time: String,
}

pub fn status_doc(host: &Host, site: &str, state: &str) -> String {
    serde_json::to_string(&StatusDoc {
        schema: "tlsmon.status/1",
        state,
        host,
        site,
        version: env!("CARGO_PKG_VERSION"),
        capabilities: ["events", "summary", "gap"],
        time: rfc3339(now_ms().saturating_mul(1_000_000)),
    })
    .unwrap_or_default()
}

#[derive(Serialize, schemars::JsonSchema)]
pub struct SummaryDoc<'a> {
    schema: &'static str,
    time: String,
    host: &'a Host,
    site: &'a str,
    interval_secs: u64,
    /// Since the daemon started.
    handshakes: Handshakes,
    /// Failures by process and cause among alerts active in the last interval.
    failing: Vec<Failing>,
    outbox_backlog: u64,
}

#[derive(Serialize, schemars::JsonSchema)]
pub struct Handshakes {
    judged: u64,
    ok: u64,
    failed: u64,
    warnings: u64,
}

#[derive(Serialize, schemars::JsonSchema)]
pub struct Failing {
    process: String,
    cause: String,
    count: u64,
}

pub fn summary_doc(
    s: &Settings,
    db: &std::path::Path,
    conn: &mut Option<rusqlite::Connection>,
    shared: &SummarySource,
) -> String {
    let now = now_ms();
    let since = now.saturating_sub(s.summary_interval.as_millis() as u64);
    let (failing, backlog) = reader(db, conn).map_or((Vec::new(), 0), |c| {
        (
            store::top(c, store::TopBy::Process, since, 50).unwrap_or_default(),
            outbox::backlog(c).unwrap_or(0),
        )
    });
    serde_json::to_string(&SummaryDoc {
        schema: "tlsmon.summary/1",
        time: rfc3339(now.saturating_mul(1_000_000)),
        host: &s.host,
        site: &s.site,
        interval_secs: s.summary_interval.as_secs(),
        handshakes: Handshakes {
            judged: shared.judged.load(Ordering::Relaxed),
            ok: shared.ok.load(Ordering::Relaxed),
            failed: shared.failed.load(Ordering::Relaxed),
            warnings: shared.warnings.load(Ordering::Relaxed),
        },
        failing: failing
            .into_iter()
            .map(|(process, cause, count)| Failing {
                process,
                cause,
                count,
            })
            .collect(),
        outbox_backlog: backlog,
    })
    .unwrap_or_default()
}
