//! `tlsmon status`, `tlsmon failures` and `tlsmon fleet status`: ask an endpoint (the
//! daemon's or an aggregator's) and print a table, or the JSON with `--json`.

use serde_json::Value;

use super::args::{EndpointArgs, FailuresArgs, FleetStatusArgs};
use super::visible::visible_json;
use crate::{fleet::view, http::client::get};

/// `tlsmon status`.
pub fn status(e: &EndpointArgs) -> anyhow::Result<()> {
    let t = e.target()?;
    let body = get(&t.listen, "/v1/status", t.token.as_deref())?;
    if e.json {
        println!("{body}");
    } else {
        let mut v: Value = serde_json::from_str(&body)?;
        visible_json(&mut v);
        print!("{}", status_text(&v));
    }
    Ok(())
}

/// `tlsmon failures`.
pub fn failures(a: &FailuresArgs) -> anyhow::Result<()> {
    let t = a.endpoint.target()?;
    let body = get(&t.listen, &a.path(), t.token.as_deref())?;
    if a.endpoint.json {
        println!("{body}");
    } else {
        let mut v: Vec<Value> = serde_json::from_str(&body)?;
        v.iter_mut().for_each(visible_json);
        print!("{}", failure_table(&v));
    }
    Ok(())
}

/// `tlsmon fleet status`.
pub fn fleet_status(a: &FleetStatusArgs) -> anyhow::Result<()> {
    let body = get(&a.listen()?, &a.path(), None)?;
    if a.json {
        println!("{body}");
    } else {
        let mut raw: Value = serde_json::from_str(&body)?;
        visible_json(&mut raw);
        let v: view::FleetView = serde_json::from_value(raw)?;
        print!("{}", view::text(&v));
    }
    Ok(())
}

fn s<'a>(v: &'a Value, ptr: &str) -> &'a str {
    v.pointer(ptr).and_then(Value::as_str).unwrap_or("-")
}

fn n(v: &Value, ptr: &str) -> u64 {
    v.pointer(ptr).and_then(Value::as_u64).unwrap_or(0)
}

fn endpoint(v: &Value, which: &str) -> String {
    let ip = s(v, &format!("/{which}/ip"));
    let port = n(v, &format!("/{which}/port"));
    if ip.contains(':') {
        format!("[{ip}]:{port}")
    } else {
        format!("{ip}:{port}")
    }
}

/// One line per alert document: last seen, count, process, role, peer, SNI, cause, message.
pub fn failure_table(alerts: &[Value]) -> String {
    let mut out = format!(
        "{:<24} {:>6}  {:<22} {:<6} {:<22} {:<20} {}\n",
        "LAST SEEN", "COUNT", "PROCESS", "ROLE", "PEER", "SNI", "CAUSE"
    );
    for a in alerts {
        let process = format!("{}[{}]", s(a, "/process/comm"), n(a, "/process/pid"));
        out.push_str(&format!(
            "{:<24} {:>6}  {:<22} {:<6} {:<22} {:<20} {}\n    {}\n{}",
            s(a, "/last_seen"),
            n(a, "/count"),
            process,
            s(a, "/role"),
            endpoint(a, "peer"),
            s(a, "/sni"),
            s(a, "/cause"),
            s(a, "/message"),
            a["remedy"]
                .as_str()
                .map(|r| format!("    fix: {r}\n"))
                .unwrap_or_default(),
        ));
    }
    if alerts.is_empty() {
        out.push_str("(no failures)\n");
    }
    out
}

/// The human view of `/v1/status`.
pub fn status_text(v: &Value) -> String {
    let mut out = format!(
        "tlsmon {} · up {}s · {} probes · config {}\n\
         handshakes judged {} (ok {}, failed {}, warnings {}) · alerts {} · watching {} connections\n\
         capture: {} ring drops, {} bytes over budget, {} flows reported\n",
        if v["ready"].as_bool() == Some(true) {
            "ready"
        } else {
            "NOT READY"
        },
        n(v, "/uptime_secs"),
        v["probes"].as_array().map_or(0, Vec::len),
        s(v, "/config"),
        n(v, "/handshakes/judged"),
        n(v, "/handshakes/ok"),
        n(v, "/handshakes/failed"),
        n(v, "/handshakes/warnings"),
        n(v, "/alerts"),
        v["open_connections"].as_i64().unwrap_or(0),
        n(v, "/capture/ring_drops"),
        n(v, "/capture/budget_truncated_bytes"),
        n(v, "/capture/flows_reported"),
    );
    let caps: Vec<&str> = v["run_as"]["capabilities"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    match v["run_as"]["root_because"].as_str() {
        Some(why) => out.push_str(&format!("runs as root: {why}\n")),
        None if v["run_as"]["user"].is_string() => out.push_str(&format!(
            "runs as {} with {}\n",
            s(v, "/run_as/user"),
            if caps.is_empty() {
                "no capability".to_owned()
            } else {
                caps.join(", ")
            }
        )),
        None => {}
    }
    if v["mqtt"].is_object() {
        out.push_str(&format!(
            "mqtt: {} · {} in flight · last PUBACK {} · outbox {}{}\n",
            if v["mqtt"]["connected"].as_bool() == Some(true) {
                "connected"
            } else {
                "NOT CONNECTED"
            },
            n(v, "/mqtt/in_flight"),
            v["mqtt"]["last_ack_secs_ago"]
                .as_u64()
                .map_or_else(|| "never".to_owned(), |s| format!("{s}s ago")),
            n(v, "/mqtt/outbox_backlog"),
            v["mqtt"]["last_error"]
                .as_str()
                .map_or_else(String::new, |e| format!(" · last error: {e}")),
        ));
    }
    if let Some(why) = v.pointer("/store/failing").and_then(Value::as_str) {
        out.push_str(&format!(
            "STORE FAILING: {why}; {} writes held in memory, {} alerts not stored (they are in the log)\n",
            n(v, "/store/held_writes"),
            n(v, "/store/unstored_alerts")
        ));
    } else if n(v, "/store/unstored_alerts") > 0 {
        out.push_str(&format!(
            "store: {} alerts were not stored while it failed (in the log, and a gap record)\n",
            n(v, "/store/unstored_alerts")
        ));
    }
    let incomplete = n(v, "/handshakes/capture_incomplete");
    if incomplete > 0 {
        let reasons: Vec<String> = v["handshakes"]["capture_incomplete_by_reason"]
            .as_object()
            .into_iter()
            .flatten()
            .map(|(reason, count)| format!("{reason} {}", count.as_u64().unwrap_or(0)))
            .collect();
        out.push_str(&format!(
            "capture incomplete: {incomplete} connections not judged, the capture missed their bytes ({})\n",
            reasons.join(", ")
        ));
    }
    let closed = n(v, "/handshakes/closed_after_handshake");
    if closed > 0 {
        let mut services: Vec<(String, u64)> = v["handshakes"]["closed_after_handshake_by_service"]
            .as_object()
            .into_iter()
            .flatten()
            .map(|(service, count)| (service.clone(), count.as_u64().unwrap_or(0)))
            .collect();
        services.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        let top: Vec<String> = services
            .iter()
            .take(5)
            .map(|(service, count)| format!("{service} {count}"))
            .collect();
        out.push_str(&format!(
            "{closed} handshakes closed without data (health checks or a late rejection): {}\n",
            top.join(", ")
        ));
    }
    for (title, key) in [("last 5 min", "last_5m"), ("last hour", "last_1h")] {
        let procs = v[key]["processes"].as_array().cloned().unwrap_or_default();
        if procs.is_empty() {
            out.push_str(&format!("\nFailing ({title}): nothing\n"));
            continue;
        }
        out.push_str(&format!("\nFailing ({title}), by process:\n"));
        for p in &procs {
            out.push_str(&format!(
                "  {:>6}  {:<24} {}\n",
                n(p, "/count"),
                s(p, "/name"),
                s(p, "/cause")
            ));
        }
        out.push_str("  by peer:\n");
        for p in v[key]["peers"].as_array().into_iter().flatten() {
            out.push_str(&format!(
                "  {:>6}  {:<24} {}\n",
                n(p, "/count"),
                s(p, "/name"),
                s(p, "/cause")
            ));
        }
    }
    let recent = v["recent"].as_array().cloned().unwrap_or_default();
    out.push_str("\nRecent:\n");
    out.push_str(&failure_table(&recent));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_names_process_peer_and_cause() {
        let a = serde_json::json!({
            "last_seen": "2026-11-23T10:00:00.000Z", "count": 1000,
            "process": {"comm": "curl", "pid": 42}, "role": "client",
            "peer": {"ip": "::1", "port": 8443}, "sni": "localhost",
            "cause": "self_signed", "message": "curl (pid 42) ..."
        });
        let t = failure_table(&[a]);
        assert!(t.contains("curl[42]"), "{t}");
        assert!(t.contains("[::1]:8443"), "{t}");
        assert!(t.contains("self_signed"), "{t}");
        assert!(t.contains("  1000  "), "{t}");
        assert!(failure_table(&[]).contains("(no failures)"));
    }
}
