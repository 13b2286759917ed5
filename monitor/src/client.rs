//! `tlsmon status` and `tlsmon failures`: ask the running daemon's endpoint and print a
//! table (or the JSON with `--json`). A plain HTTP/1.0 GET over TCP or the unix socket.

use std::{
    io::{Read, Write},
    time::Duration,
};

use anyhow::{Context, bail};
use serde_json::Value;

use crate::config::Listen;

const TIMEOUT: Duration = Duration::from_secs(5);

/// GET `path` from the endpoint; the body of a 200 answer.
pub fn get(listen: &Listen, path: &str) -> anyhow::Result<String> {
    let (code, body) = get_with_status(listen, path)?;
    if code != 200 {
        bail!("the endpoint answered {code}: {}", body.trim());
    }
    Ok(body)
}

/// GET `path` from the endpoint: (status code, body).
pub fn get_with_status(listen: &Listen, path: &str) -> anyhow::Result<(u16, String)> {
    let request = format!("GET {path} HTTP/1.0\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    let mut raw = Vec::new();
    let hint = "is tlsmon (run, or aggregate for the fleet view) listening there?";
    match listen {
        Listen::Tcp(a) => {
            let mut s = std::net::TcpStream::connect_timeout(a, TIMEOUT)
                .with_context(|| format!("cannot reach the tlsmon endpoint at {a}: {hint}"))?;
            s.set_read_timeout(Some(TIMEOUT))?;
            s.write_all(request.as_bytes())?;
            s.read_to_end(&mut raw)?;
        }
        Listen::Unix(p) => {
            let mut s = std::os::unix::net::UnixStream::connect(p).with_context(|| {
                format!(
                    "cannot reach the tlsmon endpoint at {}: {hint}",
                    p.display()
                )
            })?;
            s.set_read_timeout(Some(TIMEOUT))?;
            s.write_all(request.as_bytes())?;
            s.read_to_end(&mut raw)?;
        }
    }
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .context("the endpoint's answer is not HTTP")?;
    let code = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .context("the endpoint's answer has no status code")?;
    Ok((code, body.to_owned()))
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
            "{:<24} {:>6}  {:<22} {:<6} {:<22} {:<20} {}\n    {}\n",
            s(a, "/last_seen"),
            n(a, "/count"),
            process,
            s(a, "/role"),
            endpoint(a, "peer"),
            s(a, "/sni"),
            s(a, "/cause"),
            s(a, "/message"),
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

/// Percent-encodes a query value.
pub fn encode(v: &str) -> String {
    v.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
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

    #[test]
    fn query_values_are_encoded() {
        assert_eq!(encode("10.0.0.0/8"), "10.0.0.0%2F8");
        assert_eq!(encode("a b&c"), "a%20b%26c");
    }
}
