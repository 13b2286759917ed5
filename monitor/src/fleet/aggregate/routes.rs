//! The aggregator's HTTP routes: health, metrics, `/v1/fleet`, `/v1/aggregator` and the web page `/`.

use super::*;

pub(super) fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/", get(page))
        .route("/v1/fleet", get(fleet))
        .route("/v1/aggregator", get(aggregator))
        .with_state(shared)
}

async fn readyz(State(s): State<Arc<Shared>>) -> Response {
    match (
        s.broker_ok.load(Ordering::Relaxed),
        s.store_ok.load(Ordering::Relaxed),
    ) {
        (true, true) => (StatusCode::OK, "ready\n").into_response(),
        (b, st) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "not ready:{}{}\n",
                if b {
                    ""
                } else {
                    " not connected to the broker;"
                },
                if st {
                    ""
                } else {
                    " the fleet store is unavailable"
                }
            ),
        )
            .into_response(),
    }
}

async fn metrics(State(s): State<Arc<Shared>>) -> Response {
    openmetrics(s.metrics.encode())
}

async fn aggregator(State(s): State<Arc<Shared>>) -> Response {
    let m = &s.metrics;
    Json(serde_json::json!({
        "schema": "tlsmon.aggregator/1",
        "version": env!("CARGO_PKG_VERSION"),
        "broker": s.broker,
        "group": s.group,
        "store": s.store_name,
        "connected": s.broker_ok.load(Ordering::Relaxed),
        "store_ok": s.store_ok.load(Ordering::Relaxed),
        "received": m.received.get(),
        "new_events": m.new_events.get(),
        "duplicates": m.duplicates.get(),
        "gaps": m.gaps.get(),
        "rejected": m.rejected.get(),
        "store_errors": m.store_errors.get(),
        "last_error": s.last_error.lock().ok().and_then(|e| e.clone()),
    }))
    .into_response()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FleetParams {
    since: Option<String>,
    top: Option<usize>,
}

async fn fleet(
    State(s): State<Arc<Shared>>,
    q: Result<Query<FleetParams>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let Query(p) = match q {
        Ok(q) => q,
        Err(e) => return (StatusCode::BAD_REQUEST, format!("{e}\n")).into_response(),
    };
    let since_ms = match parse_since(p.since.as_deref().unwrap_or("24h"), now_ms()) {
        Ok(v) => v as i64,
        Err(e) => return (StatusCode::BAD_REQUEST, format!("{e}\n")).into_response(),
    };
    let top = p.top.unwrap_or(10).clamp(1, 1000);
    match ask_store(&s, |reply| Job::View {
        since_ms,
        top,
        reply,
    })
    .await
    {
        Ok(v) => Json(v).into_response(),
        Err(why) => unavailable(why),
    }
}

/// Hands a job to the store thread and waits (bounded) for its answer; a busy, failing or
/// silent store is the sentence the 503 says ([`unavailable`]).
async fn ask_store<T>(
    s: &Shared,
    job: impl FnOnce(tokio::sync::oneshot::Sender<Result<T, String>>) -> Job,
) -> Result<T, String> {
    let (reply, wait) = tokio::sync::oneshot::channel();
    if s.jobs.try_send(job(reply)).is_err() {
        return Err("the fleet store is busy; try again".into());
    }
    match tokio::time::timeout(Duration::from_secs(30), wait).await {
        Ok(Ok(Ok(v))) => Ok(v),
        Ok(Ok(Err(e))) => Err(format!("fleet store: {e}")),
        _ => Err("the fleet store did not answer in 30 s".into()),
    }
}

fn unavailable(why: String) -> Response {
    (StatusCode::SERVICE_UNAVAILABLE, format!("{why}\n")).into_response()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PageParams {
    since: Option<String>,
    site: Option<String>,
    cause: Option<String>,
}

/// `/`: the fleet as a web page (server-side HTML, no script).
async fn page(
    State(s): State<Arc<Shared>>,
    q: Result<Query<PageParams>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let Query(p) = match q {
        Ok(q) => q,
        Err(e) => return (StatusCode::BAD_REQUEST, format!("{e}\n")).into_response(),
    };
    let since = p.since.unwrap_or_else(|| "24h".into());
    let since_ms = match parse_since(&since, now_ms()) {
        Ok(v) => v as i64,
        Err(e) => return (StatusCode::BAD_REQUEST, format!("{e}\n")).into_response(),
    };
    let nonempty = |v: Option<String>| v.filter(|v| !v.is_empty());
    let filters = Filters {
        since,
        site: nonempty(p.site),
        cause: nonempty(p.cause),
    };
    let query = PageQuery {
        since_ms,
        site: filters.site.clone(),
        cause: filters.cause.clone(),
        top: 20,
    };
    match ask_store(&s, |reply| Job::Page { query, reply }).await {
        Ok(p) => axum::response::Html(render_page(&p, &filters)).into_response(),
        Err(why) => unavailable(why),
    }
}
