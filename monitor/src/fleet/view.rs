//! The fleet view (`tlsmon.fleet/1`): which hosts, clients and servers fail most, and why.
//! Served as JSON by `tlsmon aggregate` and printed by `tlsmon fleet status`. Pure.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FleetView {
    pub schema: String,
    /// Which store answered (no password).
    pub store: String,
    pub generated: String,
    /// Events last seen since then are counted.
    pub since: String,
    pub totals: Totals,
    pub by_cause: Vec<Row>,
    /// Servers: the SNI or address a client failed with, or `host/ip:port` of a listener.
    pub by_server: Vec<Row>,
    /// Clients: the host a failing client ran on, or the peer address of a server's client.
    pub by_client: Vec<Row>,
    /// Client processes (executable) that fail, across hosts.
    pub by_process: Vec<Row>,
    pub by_host: Vec<HostRow>,
    /// Failures per hour.
    pub over_time: Vec<Hour>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Totals {
    /// Distinct events (alerts) stored.
    pub events: u64,
    /// Failed handshakes they stand for (sum of counts, errors only).
    pub failures: u64,
    pub warnings: u64,
    pub failing_hosts: u64,
    /// Hosts known from status, summary or events.
    pub hosts: u64,
    pub hosts_online: u64,
    /// Gap records and the events they say were dropped before publishing.
    pub gaps: u64,
    pub dropped: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Row {
    pub name: String,
    pub cause: Option<String>,
    /// Failed handshakes.
    pub count: u64,
    /// Distinct events.
    pub events: u64,
    pub hosts: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostRow {
    pub site: String,
    pub host_id: String,
    pub name: String,
    /// `online`, `offline`, or `unknown` before its retained status arrived.
    pub state: String,
    pub version: String,
    /// From its latest summary (since that daemon started).
    pub judged: u64,
    pub failed_handshakes: u64,
    /// Failed handshakes in its events since `since`.
    pub failures: u64,
    pub top_cause: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hour {
    pub hour: String,
    pub failures: u64,
}

/// The text `tlsmon fleet status` prints.
pub fn text(v: &FleetView) -> String {
    use std::fmt::Write;
    let t = &v.totals;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "fleet since {}: {} failed handshakes in {} events on {} of {} hosts ({} online); {} warnings",
        v.since, t.failures, t.events, t.failing_hosts, t.hosts, t.hosts_online, t.warnings
    );
    if t.gaps > 0 {
        let _ = writeln!(
            out,
            "  {} events were dropped by full outboxes before publishing ({} gap records)",
            t.dropped, t.gaps
        );
    }
    let _ = writeln!(out, "store: {}", v.store);
    section(&mut out, "Causes", &v.by_cause, false);
    section(&mut out, "Servers that fail", &v.by_server, true);
    section(&mut out, "Clients that fail", &v.by_client, true);
    section(&mut out, "Client processes that fail", &v.by_process, true);
    if !v.by_host.is_empty() {
        let _ = writeln!(out, "\nHosts");
        let _ = writeln!(
            out,
            "  {:<24} {:<8} {:>9} {:>9}  TOP CAUSE",
            "HOST", "STATE", "FAILURES", "JUDGED"
        );
        for h in &v.by_host {
            let name = if h.name.is_empty() {
                &h.host_id
            } else {
                &h.name
            };
            let _ = writeln!(
                out,
                "  {:<24} {:<8} {:>9} {:>9}  {}",
                format!("{}/{}", h.site, name),
                h.state,
                h.failures,
                h.judged,
                h.top_cause.as_deref().unwrap_or("-")
            );
        }
    }
    out
}

fn section(out: &mut String, title: &str, rows: &[Row], with_cause: bool) {
    use std::fmt::Write;
    if rows.is_empty() {
        return;
    }
    let _ = writeln!(out, "\n{title}");
    for r in rows {
        let why = if with_cause {
            format!("  {}", r.cause.as_deref().unwrap_or("-"))
        } else {
            String::new()
        };
        let _ = writeln!(
            out,
            "  {:>7} x {:<40}{why}  ({} events, {} hosts)",
            r.count, r.name, r.events, r.hosts
        );
    }
}
