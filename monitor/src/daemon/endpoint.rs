//! The local status endpoint (axum): `/v1/status`, `/v1/failures`, `/metrics`, `/healthz`,
//! `/readyz`. Bound to loopback or a root-only unix socket by default; reads the daemon's
//! shared counters and the SQLite store (its own read-only connection per request).

use std::sync::{Arc, atomic::Ordering};

use axum::{
    Json, Router,
    extract::{Query, State},
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::get,
};
use serde::{Deserialize, Serialize};

use crate::{
    capture::KernelCounters,
    clock::now_ms,
    http::serve::{openmetrics, parse_since},
    state::DaemonState,
    store::{self, FailureQuery, TopBy},
};

pub fn router(shared: Arc<DaemonState>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/v1/status", get(status))
        .route("/v1/failures", get(failures))
        .with_state(shared)
}

async fn readyz(State(s): State<Arc<DaemonState>>) -> Response {
    if s.ready.load(Ordering::Relaxed) {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: kernel probes are not attached yet\n",
        )
            .into_response()
    }
}

async fn metrics(State(s): State<Arc<DaemonState>>) -> Response {
    openmetrics(s.metrics.encode())
}

#[derive(Debug, Serialize)]
pub struct TopEntry {
    pub name: String,
    pub cause: String,
    pub count: u64,
}

#[derive(Debug, Serialize, Default)]
pub struct TopLists {
    pub processes: Vec<TopEntry>,
    pub peers: Vec<TopEntry>,
}

#[derive(Debug, Serialize)]
pub struct Handshakes {
    pub judged: u64,
    pub ok: u64,
    pub failed: u64,
    pub warnings: u64,
    /// Connections whose capture missed what the outcome would rest on (never failures).
    pub capture_incomplete: u64,
    /// The same, by reason (`ring_loss`, `missing_start`, `hole`, `budget`, `evicted`,
    /// `unknown_role`).
    pub capture_incomplete_by_reason: std::collections::BTreeMap<&'static str, u64>,
    /// Handshakes that completed and were closed without data, nothing wrong on the wire
    /// (health checks, probes, or a rejection only the client's library knows): never
    /// failures.
    pub closed_after_handshake: u64,
    /// The same, by service (`ip:port`: a client's server, a server's listener).
    pub closed_after_handshake_by_service: std::collections::BTreeMap<String, u64>,
}

/// What is known to speak TLS (plaintext sent there is `plaintext_to_tls_port`).
#[derive(Debug, Serialize)]
pub struct TlsServicesDoc {
    /// Configured as TLS wherever they appear.
    pub configured_ports: Vec<u16>,
    /// Learned from completed handshakes: local listeners and remote servers, oldest first.
    pub learned: Vec<LearnedService>,
}

#[derive(Debug, Serialize)]
pub struct LearnedService {
    /// `ip:port`: a listener of this host or a server its clients reached.
    pub service: String,
    /// Seconds since a handshake last completed on it (forgotten after a day).
    pub last_seen_secs_ago: u64,
}

#[derive(Debug, Serialize)]
pub struct StatusDoc {
    pub uptime_secs: u64,
    pub ready: bool,
    pub config: String,
    pub probes: Vec<String>,
    pub capture: KernelCounters,
    pub open_connections: i64,
    pub handshakes: Handshakes,
    pub alerts: u64,
    pub last_5m: TopLists,
    pub last_1h: TopLists,
    /// The newest alerts (documents), up to 10.
    pub recent: Vec<serde_json::Value>,
    /// What is known to speak TLS.
    pub tls_services: TlsServicesDoc,
    /// The MQTT publisher, when configured.
    pub mqtt: Option<MqttStatus>,
    /// Who the daemon runs as (user, kept capabilities).
    pub run_as: crate::state::RunAs,
}

#[derive(Debug, Serialize)]
pub struct MqttStatus {
    pub connected: bool,
    pub published: u64,
    pub acked: u64,
    pub connects: u64,
    pub last_error: Option<String>,
}

fn server_error(e: impl std::fmt::Display) -> Response {
    (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response()
}

async fn status(State(s): State<Arc<DaemonState>>) -> Response {
    let db = s.db.clone();
    let lists = tokio::task::spawn_blocking(move || -> Result<_, String> {
        let conn = match store::open_reader(&db) {
            Ok(c) => c,
            // No database yet: nothing stored.
            Err(_) => return Ok((TopLists::default(), TopLists::default(), Vec::new())),
        };
        let now = now_ms();
        let top = |since: u64| -> Result<TopLists, String> {
            let get = |by| {
                store::top(&conn, by, now.saturating_sub(since), 10)
                    .map_err(|e| e.to_string())
                    .map(|v| {
                        v.into_iter()
                            .map(|(name, cause, count)| TopEntry { name, cause, count })
                            .collect()
                    })
            };
            Ok(TopLists {
                processes: get(TopBy::Process)?,
                peers: get(TopBy::Peer)?,
            })
        };
        let recent = store::failures(
            &conn,
            &FailureQuery {
                limit: Some(10),
                ..FailureQuery::default()
            },
        )?;
        Ok((top(5 * 60_000)?, top(3_600_000)?, recent))
    })
    .await;
    let (last_5m, last_1h, recent) = match lists {
        Ok(Ok(v)) => v,
        Ok(Err(e)) => return server_error(e),
        Err(e) => return server_error(e),
    };
    let doc = StatusDoc {
        uptime_secs: s.started.elapsed().as_secs(),
        ready: s.ready.load(Ordering::Relaxed),
        config: s.config.clone(),
        probes: s.probes.lock().map(|p| p.clone()).unwrap_or_default(),
        capture: s.kernel.lock().map(|k| *k).unwrap_or_default(),
        open_connections: s.metrics.open_connections.get(),
        handshakes: {
            let incomplete = s.incomplete_by_reason();
            let closed = s
                .closed_without_data
                .lock()
                .map(|m| m.clone())
                .unwrap_or_default();
            Handshakes {
                judged: s.judged.load(Ordering::Relaxed),
                ok: s.ok.load(Ordering::Relaxed),
                failed: s.failed.load(Ordering::Relaxed),
                warnings: s.warnings.load(Ordering::Relaxed),
                capture_incomplete: incomplete.values().sum(),
                capture_incomplete_by_reason: incomplete,
                closed_after_handshake: closed.values().sum(),
                closed_after_handshake_by_service: closed,
            }
        },
        alerts: s.alerts.load(Ordering::Relaxed),
        last_5m,
        last_1h,
        recent,
        tls_services: {
            let now = crate::clock::monotonic_ns();
            let known = s.tls_services.lock().map(|t| t.clone()).unwrap_or_default();
            TlsServicesDoc {
                configured_ports: known.configured_ports,
                learned: known
                    .learned
                    .into_iter()
                    .map(|(service, seen)| LearnedService {
                        service,
                        last_seen_secs_ago: now.saturating_sub(seen) / 1_000_000_000,
                    })
                    .collect(),
            }
        },
        mqtt: s.mqtt.lock().ok().and_then(|m| {
            m.as_ref().map(|m| MqttStatus {
                connected: m.connected.load(Ordering::Relaxed),
                published: m.published.load(Ordering::Relaxed),
                acked: m.acked.load(Ordering::Relaxed),
                connects: m.connects.load(Ordering::Relaxed),
                last_error: m.last_error.lock().ok().and_then(|e| e.clone()),
            })
        }),
        run_as: s.run_as.lock().map(|r| r.clone()).unwrap_or_default(),
    };
    Json(doc).into_response()
}

/// `/v1/failures` query: `since` is a duration back from now (`90s`, `15m`, `1h`, `7d`) or
/// unix milliseconds.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FailuresParams {
    pub since: Option<String>,
    pub process: Option<String>,
    pub peer: Option<String>,
    pub cause: Option<String>,
    /// `ip:port` of the failing service (a client's server, a server's listener).
    pub service: Option<String>,
    /// The failing service's port.
    pub port: Option<u16>,
    pub limit: Option<u32>,
}

async fn failures(
    State(s): State<Arc<DaemonState>>,
    q: Result<Query<FailuresParams>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let Query(p) = match q {
        Ok(q) => q,
        Err(e) => return (StatusCode::BAD_REQUEST, format!("{e}\n")).into_response(),
    };
    let since_ms = match p.since.as_deref().map(|v| parse_since(v, now_ms())) {
        Some(Err(e)) => return (StatusCode::BAD_REQUEST, format!("{e}\n")).into_response(),
        Some(Ok(v)) => Some(v),
        None => None,
    };
    let query = FailureQuery {
        since_ms,
        process: p.process,
        peer: p.peer,
        cause: p.cause,
        service: p.service,
        port: p.port,
        limit: p.limit,
    };
    let db = s.db.clone();
    let res = tokio::task::spawn_blocking(move || match store::open_reader(&db) {
        Ok(conn) => store::failures(&conn, &query).map_err(|e| (StatusCode::BAD_REQUEST, e)),
        Err(_) => Ok(Vec::new()),
    })
    .await;
    match res {
        Ok(Ok(v)) => Json(v).into_response(),
        Ok(Err((code, e))) => (code, format!("{e}\n")).into_response(),
        Err(e) => server_error(e),
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;
    use crate::{config::Listen, http::serve::bind};

    /// `/readyz` over a real socket: 503 with the reason until the probes are attached.
    #[test]
    fn readyz_answers_503_until_the_probes_are_attached() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let _in_runtime = rt.enter();
        let shared = Arc::new(DaemonState::new(
            PathBuf::from("/nonexistent.db"),
            String::new(),
        ));
        let listen = Listen::Tcp("127.0.0.1:0".parse().expect("addr"));
        let bound = rt.block_on(bind(&listen)).expect("bind");
        let addr: Listen = bound.local().parse().expect("bound address");
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let server = rt.spawn(bound.serve(router(shared.clone()), async {
            let _ = stop_rx.await;
        }));
        let get = |path: &'static str| {
            let addr = addr.clone();
            rt.block_on(tokio::task::spawn_blocking(move || {
                crate::http::client::get_with_status(&addr, path)
            }))
            .expect("join")
            .expect("GET")
        };
        assert_eq!(get("/healthz").0, 200);
        let (code, body) = get("/readyz");
        assert_eq!(code, 503);
        assert!(body.contains("not attached"), "{body}");
        shared.ready.store(true, Ordering::Relaxed);
        assert_eq!(get("/readyz"), (200, "ready\n".to_owned()));
        let _ = stop_tx.send(());
        rt.block_on(server).expect("join").expect("serve");
    }
}
