//! `tlsmon trace`: one line per reported TCP connection, with process, role, ends, the TLS
//! records seen each way and how it ended.
//!
//! `TraceRecord::from_flow` and its Display are pure; `run` wires capture, the flow table
//! and /proc attribution on a tokio timer.

use std::{fmt, io::Write, time::Duration};

use serde::Serialize;

use super::visible::visible;
use crate::{
    capture::{
        Capture, CaptureConfig, KernelCounters,
        process::{ConnectionProcesses, ProcessInfo},
    },
    clock::monotonic_ns,
    flow::{
        CaptureKind, Direction, Flow, FlowLimits, FlowTable, Role, Side, TlsServices, tls_records,
    },
};

/// One finished connection as `trace` reports it.
#[derive(Debug, Clone, Serialize)]
pub struct TraceRecord {
    pub cookie: u64,
    pub process: Option<ProcessInfo>,
    pub role: Role,
    pub local: Option<String>,
    pub peer: Option<String>,
    pub capture: Option<CaptureKind>,
    /// Records the client sent.
    pub client_to_server: String,
    /// Records the server sent.
    pub server_to_client: String,
    pub ending: String,
    pub first_fin: Option<Side>,
    pub reset: Option<Side>,
    pub closed: bool,
    pub duration_ms: f64,
    /// Gaps in either stream (bytes the capture missed).
    pub holes: usize,
    pub truncated: bool,
    /// The kernel lost records of this connection (ring full).
    pub lost: bool,
    /// The peer's first bytes went to a listener before the socket existed.
    pub missed_start: bool,
    /// Hex of the reassembled streams (with `--with-bytes`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_to_server_hex: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_to_client_hex: Option<String>,
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// "client"/"server" for a side of the connection, given the local role.
fn side_name(side: Side, role: Role) -> &'static str {
    match (side, role) {
        (Side::Local, Role::Client) | (Side::Peer, Role::Server) => "client",
        (Side::Local, Role::Server) | (Side::Peer, Role::Client) => "server",
        (Side::Local, Role::Unknown) => "local side",
        (Side::Peer, Role::Unknown) => "peer",
    }
}

impl TraceRecord {
    pub fn from_flow(flow: &Flow, process: Option<ProcessInfo>, with_bytes: bool) -> Self {
        let role = flow.role();
        let c2s = flow.client_to_server();
        let s2c = match c2s {
            Direction::Egress => Direction::Ingress,
            Direction::Ingress => Direction::Egress,
        };
        let summary = |d: Direction| tls_records::summarize(flow.stream(d)).to_string();
        let e = flow.ending;
        let ending = match (e.reset, e.first_fin, e.closed) {
            (Some(s), _, _) => format!("reset by {}", side_name(s, role)),
            (None, Some(s), _) => format!("closed by {}", side_name(s, role)),
            (None, None, true) => "closed".to_owned(),
            (None, None, false) => "still open".to_owned(),
        };
        let holes = flow.streams.iter().flatten().map(|s| s.holes().len()).sum();
        TraceRecord {
            cookie: flow.cookie,
            process,
            role,
            local: flow.conn.as_ref().map(|c| c.local.to_string()),
            peer: flow.conn.as_ref().map(|c| c.peer.to_string()),
            capture: flow.kind,
            client_to_server: summary(c2s),
            server_to_client: summary(s2c),
            ending,
            first_fin: e.first_fin,
            reset: e.reset,
            closed: e.closed,
            duration_ms: flow.last_ns.saturating_sub(flow.first_ns) as f64 / 1e6,
            holes,
            truncated: flow.truncated,
            lost: flow.lost,
            missed_start: flow.missed_start,
            client_to_server_hex: with_bytes.then(|| hex(flow.stream(c2s))),
            server_to_client_hex: with_bytes.then(|| hex(flow.stream(s2c))),
        }
    }
}

impl fmt::Display for TraceRecord {
    /// `curl[4312] client 127.0.0.1:40122 -> 127.0.0.1:8443  c>s handshake(ClientHello)
    /// s>c alert(fatal 70 protocol_version)  closed by server`
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.process {
            Some(p) => write!(f, "{}[{}]", p.comm, p.tgid)?,
            None => f.write_str("?[?]")?,
        }
        let local = self.local.as_deref().unwrap_or("?");
        let peer = self.peer.as_deref().unwrap_or("?");
        match self.role {
            Role::Client => write!(f, " client {local} -> {peer}")?,
            Role::Server => write!(f, " server {local} <- {peer}")?,
            Role::Unknown => write!(f, " unknown-role {local} <> {peer}")?,
        }
        write!(
            f,
            "  c>s {}  s>c {}  {}",
            self.client_to_server, self.server_to_client, self.ending
        )?;
        if self.holes > 0 {
            write!(f, "  ({} capture holes)", self.holes)?;
        }
        Ok(())
    }
}

/// Options of `tlsmon trace`.
#[derive(Debug, Clone)]
pub struct TraceOptions {
    pub capture: CaptureConfig,
    pub json: bool,
    pub with_bytes: bool,
    /// Stop after this long (None: until Ctrl-C / SIGTERM).
    pub duration: Option<Duration>,
    pub drain_interval: Duration,
    pub idle_timeout: Duration,
}

struct Printer {
    json: bool,
    with_bytes: bool,
    out: std::io::Stdout,
}

impl Printer {
    fn flow(&mut self, flow: &Flow, process: Option<ProcessInfo>) {
        let rec = TraceRecord::from_flow(flow, process, self.with_bytes);
        let mut out = self.out.lock();
        let _ = if self.json {
            writeln!(out, "{}", serde_json::to_string(&rec).unwrap_or_default())
        } else {
            writeln!(out, "{}", visible(&rec.to_string()))
        };
        let _ = out.flush();
    }

    /// Lost records are events of their own, not a log line (they change what was seen).
    fn loss(&mut self, lost: u64, total: u64) {
        let mut out = self.out.lock();
        let _ = if self.json {
            writeln!(
                out,
                "{}",
                serde_json::json!({"kind": "capture_loss", "lost_records": lost, "total_lost_records": total})
            )
        } else {
            writeln!(
                out,
                "capture_loss: {lost} ring records dropped by the kernel (ring full; {total} in all): connections above may be incomplete"
            )
        };
        let _ = out.flush();
    }
}

/// Runs `tlsmon trace` until Ctrl-C, SIGTERM or the duration ends.
pub async fn run(opts: TraceOptions) -> anyhow::Result<KernelCounters> {
    let mut cap = Capture::start(&opts.capture)?;
    eprintln!(
        "tlsmon: capturing ({} programs attached)",
        cap.attached.len()
    );
    let mut table = FlowTable::new(FlowLimits {
        bytes_per_direction: opts.capture.direction_budget as usize,
        idle_ns: opts.idle_timeout.as_nanos() as u64,
        ..FlowLimits::default()
    });
    let mut processes = ConnectionProcesses::default();
    let mut services = TlsServices::new(&opts.capture.tls_ports);
    let mut printer = Printer {
        json: opts.json,
        with_bytes: opts.with_bytes,
        out: std::io::stdout(),
    };
    let mut tick = tokio::time::interval(opts.drain_interval);
    let deadline = tokio::time::sleep(opts.duration.unwrap_or(Duration::from_secs(u64::MAX / 4)));
    tokio::pin!(deadline);
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut buf = Vec::new();
    let mut last_drops = 0;
    let mut stopping = false;
    while !stopping {
        tokio::select! {
            _ = tick.tick() => {}
            _ = tokio::signal::ctrl_c() => stopping = true,
            _ = term.recv() => stopping = true,
            _ = &mut deadline => stopping = true,
        }
        cap.drain(&mut buf);
        for rec in buf.drain(..) {
            let ev = match rec {
                Ok(ev) => ev,
                Err(e) => {
                    tracing::warn!(error = %e, "undecodable ring record");
                    continue;
                }
            };
            processes.observe(&ev);
            if let Some(flow) = table.apply(ev) {
                learn_tls_service(&mut cap, &mut services, &flow);
                let name = processes.take(flow.cookie, flow.owner.as_ref());
                printer.flow(&flow, name);
            }
        }
        for flow in table.take_evicted() {
            let name = processes.take(flow.cookie, flow.owner.as_ref());
            printer.flow(&flow, name);
        }
        for flow in table.expire(monotonic_ns()) {
            let name = processes.take(flow.cookie, flow.owner.as_ref());
            printer.flow(&flow, name);
        }
        let drops = cap.counters().ring_drops;
        if drops > last_drops {
            printer.loss(drops - last_drops, drops);
            last_drops = drops;
        }
    }
    for flow in table.drain() {
        let name = processes.take(flow.cookie, flow.owner.as_ref());
        printer.flow(&flow, name);
    }
    let counters = cap.counters();
    eprintln!(
        "tlsmon: counters {}",
        serde_json::to_string(&counters).unwrap_or_default()
    );
    Ok(counters)
}

/// A service that just carried TLS speaks TLS: plaintext sent to it later is sampled.
fn learn_tls_service(cap: &mut Capture, services: &mut TlsServices, flow: &Flow) {
    if flow.kind != Some(CaptureKind::Tls) {
        return;
    }
    if let Some(c) = &flow.conn {
        for change in services.completed(c, false, monotonic_ns()) {
            cap.follow(change);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flow::{CaptureEvent, ConnInfo, DataChunk, Lifecycle, Task};
    use monitor_common::tcp_state;

    fn chunk(dir: Direction, bytes: &[u8]) -> CaptureEvent {
        CaptureEvent::Data(DataChunk {
            cookie: 1,
            ts_ns: 1_000_000,
            direction: dir,
            tls: true,
            sample: false,
            mid_stream: false,
            truncated: false,
            lost: false,
            seq: 5,
            stream_start: 5,
            segment_len: bytes.len() as u32,
            bytes: bytes.to_vec(),
        })
    }

    #[test]
    fn client_line_names_process_ends_records_and_closer() {
        let mut t = FlowTable::new(FlowLimits::default());
        t.apply(CaptureEvent::Open {
            cookie: 1,
            ts_ns: 0,
            conn: ConnInfo {
                role: Role::Client,
                local: "127.0.0.1:40122".parse().unwrap(),
                peer: "127.0.0.1:8443".parse().unwrap(),
                socket_cgroup_id: 1,
            },
            owner: Some(Task {
                tgid: 4312,
                pid: 4312,
                cgroup_id: 1,
                comm: "curl".into(),
            }),
            missed_start: false,
        });
        // ClientHello header only (type 1, length 0) in a handshake record.
        t.apply(chunk(Direction::Egress, &[22, 3, 1, 0, 4, 1, 0, 0, 0]));
        t.apply(chunk(Direction::Ingress, &[21, 3, 3, 0, 2, 2, 70]));
        t.apply(CaptureEvent::Lifecycle {
            cookie: 1,
            ts_ns: 2_000_000,
            what: Lifecycle::State {
                old: tcp_state::ESTABLISHED,
                new: tcp_state::CLOSE_WAIT,
            },
            lost: false,
        });
        let flow = t
            .apply(CaptureEvent::Lifecycle {
                cookie: 1,
                ts_ns: 3_000_000,
                what: Lifecycle::State {
                    old: tcp_state::LAST_ACK,
                    new: tcp_state::CLOSE,
                },
                lost: false,
            })
            .unwrap();
        let p = ProcessInfo {
            pid: 4312,
            tgid: 4312,
            comm: "curl".into(),
            exe: None,
            cmdline: None,
            uid: None,
            unit: None,
            container: None,
        };
        let line = TraceRecord::from_flow(&flow, Some(p), false).to_string();
        assert_eq!(
            line,
            "curl[4312] client 127.0.0.1:40122 -> 127.0.0.1:8443  c>s handshake(ClientHello)  \
             s>c alert(fatal 70 protocol_version)  closed by server"
        );
    }
}
