//! The local status endpoint (axum): `/v1/status`, `/v1/failures`, `/metrics`, `/healthz`,
//! `/readyz`. Bound to loopback or a root-only unix socket by default; reads the daemon's
//! shared counters and the SQLite store (its own read-only connection per request).

use std::{
    path::PathBuf,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use axum::{
    Json, Router,
    extract::{Query, State},
    http::{StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};
use serde::{Deserialize, Serialize};

use crate::{
    capture::KernelCounters,
    config::Listen,
    metrics::Metrics,
    store::{self, FailureQuery, TopBy, now_ms},
};

/// What the daemon loop shares with the endpoint.
pub struct Shared {
    pub started: Instant,
    pub ready: AtomicBool,
    pub probes: Mutex<Vec<String>>,
    pub kernel: Mutex<KernelCounters>,
    pub judged: AtomicU64,
    pub ok: AtomicU64,
    pub failed: AtomicU64,
    pub warnings: AtomicU64,
    pub alerts: AtomicU64,
    pub metrics: Metrics,
    pub db: PathBuf,
    pub config: String,
    /// The MQTT publisher's counters, when one runs.
    pub mqtt: Mutex<Option<Arc<crate::mqtt::MqttStats>>>,
}

impl Shared {
    pub fn new(db: PathBuf, config: String) -> Self {
        Shared {
            started: Instant::now(),
            ready: AtomicBool::new(false),
            probes: Mutex::new(Vec::new()),
            kernel: Mutex::new(KernelCounters::default()),
            judged: AtomicU64::new(0),
            ok: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            warnings: AtomicU64::new(0),
            alerts: AtomicU64::new(0),
            metrics: Metrics::new(),
            db,
            config,
            mqtt: Mutex::new(None),
        }
    }
}

pub fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/v1/status", get(status))
        .route("/v1/failures", get(failures))
        .with_state(shared)
}

/// Binds the listener (before capture starts, so `/healthz` answers during attach).
pub async fn bind(listen: &Listen) -> anyhow::Result<Bound> {
    match listen {
        Listen::Tcp(a) => Ok(Bound::Tcp(tokio::net::TcpListener::bind(a).await.map_err(
            |e| anyhow::anyhow!("status endpoint: cannot listen on {a}: {e}"),
        )?)),
        Listen::Unix(p) => {
            if let Some(dir) = p.parent() {
                std::fs::create_dir_all(dir).map_err(|e| {
                    anyhow::anyhow!("status endpoint: cannot create {}: {e}", dir.display())
                })?;
            }
            // A socket left by a previous run.
            let _ = std::fs::remove_file(p);
            let l = tokio::net::UnixListener::bind(p).map_err(|e| {
                anyhow::anyhow!("status endpoint: cannot listen on {}: {e}", p.display())
            })?;
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o600))?;
            Ok(Bound::Unix(l))
        }
    }
}

pub enum Bound {
    Tcp(tokio::net::TcpListener),
    Unix(tokio::net::UnixListener),
}

impl Bound {
    pub fn local(&self) -> String {
        match self {
            Bound::Tcp(l) => l
                .local_addr()
                .map_or_else(|_| "?".into(), |a| a.to_string()),
            Bound::Unix(l) => l
                .local_addr()
                .ok()
                .and_then(|a| a.as_pathname().map(|p| format!("unix:{}", p.display())))
                .unwrap_or_else(|| "unix:?".into()),
        }
    }

    /// Serves until `stop` resolves.
    pub async fn serve(
        self,
        app: Router,
        stop: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        match self {
            Bound::Tcp(l) => axum::serve(l, app).with_graceful_shutdown(stop).await,
            Bound::Unix(l) => axum::serve(l, app).with_graceful_shutdown(stop).await,
        }
    }
}

async fn readyz(State(s): State<Arc<Shared>>) -> Response {
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

async fn metrics(State(s): State<Arc<Shared>>) -> Response {
    openmetrics(s.metrics.encode())
}

/// A `/metrics` answer.
pub fn openmetrics(body: String) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        body,
    )
        .into_response()
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
    /// The MQTT publisher, when configured.
    pub mqtt: Option<MqttStatus>,
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

async fn status(State(s): State<Arc<Shared>>) -> Response {
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
        handshakes: Handshakes {
            judged: s.judged.load(Ordering::Relaxed),
            ok: s.ok.load(Ordering::Relaxed),
            failed: s.failed.load(Ordering::Relaxed),
            warnings: s.warnings.load(Ordering::Relaxed),
        },
        alerts: s.alerts.load(Ordering::Relaxed),
        last_5m,
        last_1h,
        recent,
        mqtt: s.mqtt.lock().ok().and_then(|m| {
            m.as_ref().map(|m| MqttStatus {
                connected: m.connected.load(Ordering::Relaxed),
                published: m.published.load(Ordering::Relaxed),
                acked: m.acked.load(Ordering::Relaxed),
                connects: m.connects.load(Ordering::Relaxed),
                last_error: m.last_error.lock().ok().and_then(|e| e.clone()),
            })
        }),
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
    pub limit: Option<u32>,
}

/// "90s", "15m", "1h", "7d" → duration; a bare number is unix ms (absolute).
pub fn parse_since(s: &str, now_ms: u64) -> Result<u64, String> {
    let s = s.trim();
    if let Ok(ms) = s.parse::<u64>() {
        return Ok(ms);
    }
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = num
        .parse()
        .map_err(|_| format!("since: expected 90s, 15m, 1h, 7d or unix ms, got {s:?}"))?;
    let secs = match unit {
        "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        "d" => n * 86_400,
        _ => return Err(format!("since: unknown unit in {s:?} (s, m, h, d)")),
    };
    Ok(now_ms.saturating_sub(Duration::from_secs(secs).as_millis() as u64))
}

async fn failures(
    State(s): State<Arc<Shared>>,
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
    use super::*;

    /// `/readyz` over a real socket: 503 with the reason until the probes are attached.
    #[test]
    fn readyz_answers_503_until_the_probes_are_attached() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let _in_runtime = rt.enter();
        let shared = Arc::new(Shared::new(PathBuf::from("/nonexistent.db"), String::new()));
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
                crate::client::get_with_status(&addr, path)
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

    #[test]
    fn since_accepts_durations_and_unix_ms() {
        assert_eq!(parse_since("90s", 100_000), Ok(10_000));
        assert_eq!(parse_since("1h", 7_200_000), Ok(3_600_000));
        assert_eq!(parse_since("2d", 1), Ok(0));
        assert_eq!(parse_since("1700000000000", 5), Ok(1_700_000_000_000));
        assert!(parse_since("1y", 5).unwrap_err().contains("unknown unit"));
        assert!(parse_since("soon", 5).is_err());
    }
}
