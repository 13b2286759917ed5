//! The local status endpoint (axum): `/v1/status`, `/v1/failures`, `/metrics`, `/healthz`,
//! `/readyz`. The unix socket (root and the `tlsmon` group) serves every route; a TCP listener
//! on loopback serves the details (`/v1/*`: peers, SNIs, processes) only with the bearer token
//! of `status.token_file`. Reads the daemon's shared counters and the SQLite store (its own
//! read-only connection per request).

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
    config::{Listen, StatusConfig},
    http::serve::{SocketAccess, bind, openmetrics, parse_since},
    state::DaemonState,
    store::{self, FailureQuery, TopBy},
};

/// What a listener serves.
#[derive(Debug, Clone)]
pub enum Access {
    /// Every route: the unix socket (its mode and group decide who connects).
    Everything,
    /// `/metrics`, `/healthz`, `/readyz` to anyone; `/v1/*` (peers, SNIs, processes) only
    /// to a request that carries this bearer token, to none without one.
    Public { token: Option<Arc<str>> },
}

pub fn router(shared: Arc<DaemonState>, access: Access) -> Router {
    let details = Router::new()
        .route("/v1/status", get(status))
        .route("/v1/failures", get(failures));
    let details = match access {
        Access::Everything => details,
        Access::Public { token } => details.route_layer(axum::middleware::from_fn(
            move |req: axum::extract::Request, next: axum::middleware::Next| {
                let allowed = authorized(
                    req.headers()
                        .get(axum::http::header::AUTHORIZATION)
                        .and_then(|v| v.to_str().ok()),
                    token.as_deref(),
                );
                async move {
                    if allowed {
                        next.run(req).await
                    } else {
                        (StatusCode::FORBIDDEN, FORBIDDEN).into_response()
                    }
                }
            },
        )),
    };
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .merge(details)
        .with_state(shared)
}

const FORBIDDEN: &str = "forbidden: peers, SNIs and processes are for root and the tlsmon group, on the unix socket (status.socket; tlsmon status uses it), or on TCP with the bearer token of status.token_file; /metrics, /healthz and /readyz are open\n";

/// Whether an `Authorization` header carries `token` (compared in constant time).
pub fn authorized(header: Option<&str>, token: Option<&str>) -> bool {
    let (Some(header), Some(token)) = (header, token) else {
        return false;
    };
    let Some(given) = header.strip_prefix("Bearer ") else {
        return false;
    };
    let (a, b) = (given.trim().as_bytes(), token.as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The token of `status.token_file`: its first line, at least 16 characters.
pub fn read_token(path: &std::path::Path) -> anyhow::Result<Arc<str>> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| anyhow::anyhow!("status.token_file {}: {e}", path.display()))?;
    let token = text.lines().next().unwrap_or("").trim();
    if token.len() < 16 || !token.bytes().all(|b| b.is_ascii_graphic()) {
        anyhow::bail!(
            "status.token_file {}: the first line must be a token of at least 16 printable characters (openssl rand -hex 32)",
            path.display()
        );
    }
    Ok(Arc::from(token))
}

/// The daemon's listeners (the TCP or unix `listen`, and the unix `socket`), serving until
/// [`Listeners::stop`].
pub struct Listeners {
    /// What they listen on, for the log.
    pub described: String,
    stop: Vec<tokio::sync::oneshot::Sender<()>>,
    tasks: Vec<tokio::task::JoinHandle<std::io::Result<()>>>,
}

impl Listeners {
    /// Binds `status` (before the probes attach, as root: `/healthz` answers during attach);
    /// a unix socket goes to the group of `user` (0660).
    pub async fn start(
        status: &StatusConfig,
        user: &str,
        shared: Arc<DaemonState>,
    ) -> anyhow::Result<Listeners> {
        let socket_access = match super::privileges::group_of(user)? {
            Some(gid) => SocketAccess::Group(gid),
            None => SocketAccess::Owner,
        };
        let token = status.token_file.as_deref().map(read_token).transpose()?;
        let mut plan = vec![match &status.listen {
            Listen::Tcp(_) => (status.listen.clone(), Access::Public { token }),
            Listen::Unix(_) => (status.listen.clone(), Access::Everything),
        }];
        if let Some(p) = &status.socket
            && status.listen != Listen::Unix(p.clone())
        {
            plan.push((Listen::Unix(p.clone()), Access::Everything));
        }
        let mut out = Listeners {
            described: String::new(),
            stop: Vec::new(),
            tasks: Vec::new(),
        };
        for (listen, access) in plan {
            let bound = bind(&listen, socket_access).await?;
            let what = match &access {
                Access::Everything => "every route",
                Access::Public { token: Some(_) } => "/v1/* with the token",
                Access::Public { token: None } => "metrics and health only",
            };
            if !out.described.is_empty() {
                out.described.push_str(", ");
            }
            out.described
                .push_str(&format!("{} ({what})", bound.local()));
            let (tx, rx) = tokio::sync::oneshot::channel::<()>();
            out.stop.push(tx);
            out.tasks.push(tokio::spawn(bound.serve(
                router(shared.clone(), access),
                async move {
                    let _ = rx.await;
                },
            )));
        }
        Ok(out)
    }

    /// Stops serving (bounded wait for answers in flight).
    pub async fn stop(self) {
        for tx in self.stop {
            let _ = tx.send(());
        }
        for t in self.tasks {
            let _ = tokio::time::timeout(std::time::Duration::from_secs(2), t).await;
        }
    }
}

async fn readyz(State(s): State<Arc<DaemonState>>) -> Response {
    let failing = s.store.lock().ok().and_then(|h| h.failing.clone());
    if !s.ready.load(Ordering::Relaxed) {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: kernel probes are not attached yet\n",
        )
            .into_response()
    } else if let Some(why) = failing {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "not ready: the store is failing ({why}); alerts go to the log and /metrics and are held in memory\n"
            ),
        )
            .into_response()
    } else {
        (StatusCode::OK, "ready\n").into_response()
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
    /// Whether the database takes writes.
    pub store: crate::state::StoreHealth,
}

#[derive(Debug, Serialize)]
pub struct MqttStatus {
    pub connected: bool,
    pub published: u64,
    pub acked: u64,
    pub connects: u64,
    pub last_error: Option<String>,
    /// Sent and not acknowledged (PUBACK) yet, on this connection.
    pub in_flight: u64,
    /// Seconds since the broker last acknowledged a message (None: never).
    pub last_ack_secs_ago: Option<u64>,
    /// Outbox rows waiting for the broker (bounded by mqtt.outbox_max_events; what the
    /// bound drops becomes a gap record).
    pub outbox_backlog: u64,
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
            Err(_) => return Ok((TopLists::default(), TopLists::default(), Vec::new(), 0)),
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
        let backlog = store::outbox::backlog(&conn).unwrap_or(0);
        Ok((top(5 * 60_000)?, top(3_600_000)?, recent, backlog))
    })
    .await;
    let (last_5m, last_1h, recent, backlog) = match lists {
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
                in_flight: m.in_flight.load(Ordering::Relaxed),
                last_ack_secs_ago: match m.last_ack_ns.load(Ordering::Relaxed) {
                    0 => None,
                    at => Some(crate::clock::monotonic_ns().saturating_sub(at) / 1_000_000_000),
                },
                outbox_backlog: backlog,
            })
        }),
        run_as: s.run_as.lock().map(|r| r.clone()).unwrap_or_default(),
        store: s.store.lock().map(|h| h.clone()).unwrap_or_default(),
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

    /// The router on a real loopback socket, in a runtime of its own.
    struct Served {
        rt: tokio::runtime::Runtime,
        addr: Listen,
        shared: Arc<DaemonState>,
        stop: Option<tokio::sync::oneshot::Sender<()>>,
        server: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
    }

    impl Served {
        fn new(access: Access) -> Served {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            let shared = Arc::new(DaemonState::new(
                PathBuf::from("/nonexistent.db"),
                String::new(),
            ));
            let listen = Listen::Tcp("127.0.0.1:0".parse().expect("addr"));
            let bound = rt
                .block_on(bind(&listen, SocketAccess::Owner))
                .expect("bind");
            let addr: Listen = bound.local().parse().expect("bound address");
            let (stop, stop_rx) = tokio::sync::oneshot::channel::<()>();
            let in_runtime = rt.enter();
            let server = rt.spawn(bound.serve(router(shared.clone(), access), async {
                let _ = stop_rx.await;
            }));
            drop(in_runtime);
            Served {
                rt,
                addr,
                shared,
                stop: Some(stop),
                server: Some(server),
            }
        }

        fn get(&self, path: &'static str, token: Option<&'static str>) -> (u16, String) {
            let addr = self.addr.clone();
            let answer = self
                .rt
                .spawn_blocking(move || crate::http::client::get_with_status(&addr, path, token));
            self.rt.block_on(answer).expect("join").expect("GET")
        }
    }

    impl Drop for Served {
        fn drop(&mut self) {
            if let (Some(stop), Some(server)) = (self.stop.take(), self.server.take()) {
                let _ = stop.send(());
                let _ = self.rt.block_on(server);
            }
        }
    }

    /// `/readyz` over a real socket: 503 with the reason until the probes are attached.
    #[test]
    fn readyz_answers_503_until_the_probes_are_attached() {
        let s = Served::new(Access::Everything);
        assert_eq!(s.get("/healthz", None).0, 200);
        let (code, body) = s.get("/readyz", None);
        assert_eq!(code, 503);
        assert!(body.contains("not attached"), "{body}");
        s.shared.ready.store(true, Ordering::Relaxed);
        assert_eq!(s.get("/readyz", None), (200, "ready\n".to_owned()));
    }

    /// On TCP, anyone gets metrics and health; the details only with the token.
    #[test]
    fn tcp_serves_details_only_with_the_token() {
        const TOKEN: &str = "0123456789abcdef0123";
        let s = Served::new(Access::Public {
            token: Some(Arc::from(TOKEN)),
        });
        assert_eq!(s.get("/healthz", None).0, 200);
        assert_eq!(s.get("/metrics", None).0, 200);
        for path in ["/v1/status", "/v1/failures"] {
            let (code, body) = s.get(path, None);
            assert_eq!(code, 403, "{path}: {body}");
            assert!(body.contains("tlsmon group"), "{body}");
            assert_eq!(s.get(path, Some("0123456789abcdef0124")).0, 403, "{path}");
            assert_eq!(s.get(path, Some("0123456789abcdef012")).0, 403, "{path}");
            let (code, body) = s.get(path, Some(TOKEN));
            assert_eq!(code, 200, "{path}: {body}");
        }
        let open = Served::new(Access::Public { token: None });
        assert_eq!(open.get("/v1/status", Some(TOKEN)).0, 403);
        assert_eq!(open.get("/metrics", None).0, 200);
        let socket = Served::new(Access::Everything);
        assert_eq!(socket.get("/v1/failures", None).0, 200);
    }

    #[test]
    fn bearer_tokens_match_whole() {
        let t = Some("abcdefghijklmnop");
        assert!(authorized(Some("Bearer abcdefghijklmnop"), t));
        assert!(!authorized(Some("Bearer abcdefghijklmno"), t));
        assert!(!authorized(Some("Bearer abcdefghijklmnopq"), t));
        assert!(!authorized(Some("Basic abcdefghijklmnop"), t));
        assert!(!authorized(Some("abcdefghijklmnop"), t));
        assert!(!authorized(None, t));
        assert!(!authorized(Some("Bearer "), None));
    }

    #[test]
    fn a_token_file_needs_a_long_printable_first_line() {
        let dir = std::env::temp_dir().join(format!("tlsmon-token-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let f = dir.join("token");
        std::fs::write(&f, "0123456789abcdef0123\nignored\n").expect("write");
        assert_eq!(&*read_token(&f).expect("token"), "0123456789abcdef0123");
        std::fs::write(&f, "short\n").expect("write");
        assert!(read_token(&f).unwrap_err().to_string().contains("16"));
        assert!(read_token(&dir.join("missing")).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
