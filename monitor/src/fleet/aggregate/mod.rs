//! `tlsmon aggregate`: the fleet consumer. It subscribes to every host's events with a
//! shared subscription (`$share/<group>/<prefix>/v1/+/+/events`, so aggregators of one group
//! split the load), to the summaries likewise, and to the retained status topics; it writes
//! what it receives to the fleet store ([`super::store`]) and acknowledges each message only
//! after its batch is committed, so a crash or a store outage loses nothing (the broker
//! delivers again; the store keeps each `event_id` once). It serves the fleet view, read
//! from the store on each request, so any aggregator on one PostgreSQL answers the same.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
        mpsc,
    },
    time::Duration,
};

use anyhow::Context;
use axum::{
    Json, Router,
    extract::{Query, State},
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::get,
};
use prometheus_client::{
    metrics::{counter::Counter, gauge::Gauge},
    registry::Registry,
};
use rumqttc::{AsyncClient, Event, Packet, Publish, QoS};
use serde::Deserialize;

use super::{
    message::{self, Message},
    page::{Filters, FleetPage, render as render_page},
    store::{FleetStore, PageQuery, Recorded},
    view::FleetView,
};
use crate::{
    clock::now_ms,
    config::{Config, FleetStoreUrl, Host},
    http::serve::{SocketAccess, bind, encode_registry, openmetrics, parse_since},
    mqtt::{self, Settings},
};

/// Messages written in one transaction at most.
const BATCH: usize = 2000;
const RETRY: Duration = Duration::from_secs(1);

/// The aggregator's counters (`/metrics`, `/v1/aggregator`).
pub struct AggMetrics {
    registry: Registry,
    pub received: Counter,
    pub new_events: Counter,
    pub duplicates: Counter,
    pub gaps: Counter,
    pub rejected: Counter,
    pub store_errors: Counter,
    pub connected: Gauge,
}

impl AggMetrics {
    fn new() -> Self {
        let mut registry = Registry::with_prefix("tlsmon_aggregate");
        let mut add = |name: &str, help: &str| {
            let c = Counter::default();
            registry.register(name, help, c.clone());
            c
        };
        let received = add("messages_received", "MQTT messages received");
        let new_events = add("events_new", "Events stored for the first time");
        let duplicates = add(
            "events_duplicate",
            "Events already stored (redelivered, or a count update)",
        );
        let gaps = add(
            "gaps",
            "Gap records stored (events dropped by a host's outbox)",
        );
        let rejected = add(
            "messages_rejected",
            "Messages that were not tlsmon documents",
        );
        let store_errors = add("store_errors", "Batches the fleet store refused (retried)");
        let connected = Gauge::default();
        registry.register(
            "broker_connected",
            "1 while connected to the broker",
            connected.clone(),
        );
        AggMetrics {
            registry,
            received,
            new_events,
            duplicates,
            gaps,
            rejected,
            store_errors,
            connected,
        }
    }

    fn encode(&self) -> String {
        encode_registry(&self.registry)
    }
}

/// Work for the store thread (the database clients are blocking).
enum Job {
    Record(
        Vec<Message>,
        tokio::sync::oneshot::Sender<Result<Recorded, String>>,
    ),
    View {
        since_ms: i64,
        top: usize,
        reply: tokio::sync::oneshot::Sender<Result<FleetView, String>>,
    },
    Page {
        query: PageQuery,
        reply: tokio::sync::oneshot::Sender<Result<FleetPage, String>>,
    },
    Prune(i64),
}

/// Sends the store's answer to the asker; true when the store failed.
fn answer<T>(
    reply: tokio::sync::oneshot::Sender<Result<T, String>>,
    r: Result<T, super::sql::SqlError>,
) -> bool {
    let failed = r.is_err();
    let _ = reply.send(r.map_err(|e| e.to_string()));
    failed
}

/// Tells the asker the store is not open; always a failure.
fn refuse<T>(reply: tokio::sync::oneshot::Sender<Result<T, String>>, url: &FleetStoreUrl) -> bool {
    let _ = reply.send(Err(format!("fleet store {url} is unavailable")));
    true
}

/// Owns the store connection; reconnects after an error on the next job.
fn store_thread(
    url: FleetStoreUrl,
    ca_file: Option<std::path::PathBuf>,
    jobs: mpsc::Receiver<Job>,
    ok: Arc<AtomicBool>,
) {
    let mut store: Option<FleetStore> = None;
    for job in jobs {
        if store.is_none() {
            match FleetStore::open(&url, ca_file.as_deref()) {
                Ok(s) => {
                    tracing::info!(store = %s.name, "fleet store open");
                    store = Some(s);
                }
                Err(e) => tracing::warn!(store = %url, "fleet store: {e}"),
            }
        }
        let failed = match (&mut store, job) {
            (Some(s), Job::Record(batch, reply)) => {
                answer(reply, s.record(&batch, now_ms() as i64))
            }
            (
                Some(s),
                Job::View {
                    since_ms,
                    top,
                    reply,
                },
            ) => answer(reply, s.view(since_ms, now_ms() as i64, top)),
            (Some(s), Job::Page { query, reply }) => answer(reply, s.page(&query, now_ms() as i64)),
            (Some(s), Job::Prune(before)) => match s.prune(before) {
                Ok(n) if n > 0 => {
                    tracing::info!(deleted = n, "fleet store: old events deleted");
                    false
                }
                Ok(_) => false,
                Err(e) => {
                    tracing::warn!("fleet store: pruning: {e}");
                    true
                }
            },
            (None, Job::Record(_, reply)) => refuse(reply, &url),
            (None, Job::View { reply, .. }) => refuse(reply, &url),
            (None, Job::Page { reply, .. }) => refuse(reply, &url),
            (None, Job::Prune(_)) => true,
        };
        ok.store(!failed, Ordering::Relaxed);
        if failed {
            // Reconnect next time (the connection may be what failed).
            store = None;
        }
    }
}

struct Shared {
    jobs: mpsc::SyncSender<Job>,
    metrics: AggMetrics,
    store_ok: Arc<AtomicBool>,
    broker_ok: AtomicBool,
    store_name: String,
    broker: String,
    group: String,
    last_error: std::sync::Mutex<Option<String>>,
}

/// Runs until SIGTERM/SIGINT.
pub async fn run(cfg: Config) -> anyhow::Result<()> {
    let a = &cfg.aggregate;
    let host = Host::detect(
        cfg.host.id.as_ref().map(|i| i.0.as_str()),
        cfg.host.name.as_deref(),
    );
    let settings = Settings::from_config(&cfg, &host)?.context(
        "tlsmon aggregate needs a broker: set [mqtt] broker = \"mqtt://host:1883\" in the configuration",
    )?;
    mqtt::install_crypto();
    // Fail early, with the reason, when the store cannot be opened at all.
    let url = a.store.clone();
    let probe = url.clone();
    let ca_file = a.store_ca_file.clone();
    let probe_ca = ca_file.clone();
    tokio::task::spawn_blocking(move || FleetStore::open(&probe, probe_ca.as_deref()).map(drop))
        .await?
        .with_context(|| format!("fleet store {url}"))?;
    let store_ok = Arc::new(AtomicBool::new(true));
    let (jobs, rx) = mpsc::sync_channel(64);
    {
        let (url, ok) = (url.clone(), store_ok.clone());
        std::thread::Builder::new()
            .name("fleet-store".into())
            .spawn(move || store_thread(url, ca_file, rx, ok))?;
    }
    let client_id = a
        .client_id
        .clone()
        .unwrap_or_else(|| format!("tlsmon-aggregate-{}", settings.host_level));
    let shared = Arc::new(Shared {
        jobs: jobs.clone(),
        metrics: AggMetrics::new(),
        store_ok,
        broker_ok: AtomicBool::new(false),
        store_name: url.to_string(),
        broker: settings.broker.to_string(),
        group: a.group.0.clone(),
        last_error: std::sync::Mutex::new(None),
    });
    let bound = bind(&a.listen, SocketAccess::Owner).await?;
    tracing::info!(
        endpoint = %bound.local(),
        store = %url,
        broker = %settings.broker,
        group = %a.group.0,
        client_id = %client_id,
        "tlsmon aggregate started"
    );
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let http = {
        let mut rx = stop_rx.clone();
        let app = router(shared.clone());
        tokio::spawn(async move {
            bound
                .serve(app, async move {
                    let _ = rx.changed().await;
                })
                .await
        })
    };
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);
    let consumer = tokio::spawn(consume(
        settings,
        client_id,
        a.group.0.clone(),
        Duration::from_secs(a.retention_days.get() * 86_400),
        shared.clone(),
        stop_rx,
    ));
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    tracing::info!("stopping");
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
    let _ = stop_tx.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(5), consumer).await;
    let _ = tokio::time::timeout(Duration::from_secs(2), http).await;
    Ok(())
}

/// The subscriptions of one aggregator.
pub fn subscriptions(prefix: &str, group: &str) -> [(String, QoS); 3] {
    [
        (
            format!("$share/{group}/{prefix}/v1/+/+/events"),
            QoS::AtLeastOnce,
        ),
        (
            format!("$share/{group}/{prefix}/v1/+/+/summary"),
            QoS::AtMostOnce,
        ),
        // Every aggregator gets the retained status of every host (idempotent upserts).
        (format!("{prefix}/v1/+/+/status"), QoS::AtLeastOnce),
    ]
}

/// A batch handed to the store thread, and where its answer comes.
type Writing = (
    Vec<(Message, Publish)>,
    tokio::sync::oneshot::Receiver<Result<Recorded, String>>,
);

async fn consume(
    settings: Settings,
    client_id: String,
    group: String,
    retention: Duration,
    shared: Arc<Shared>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut o = settings.connection_options(&client_id);
    // A persistent session: while we are away the broker keeps what it could not deliver;
    // messages are acknowledged only once stored.
    o.set_clean_session(false).set_manual_acks(true);
    let (client, el) = AsyncClient::new(o, 10_000);
    let (tx, mut rx) = tokio::sync::mpsc::channel(10_000);
    let driver = tokio::spawn(mqtt::drive(el, tx, settings.broker.to_string()));
    let subs = subscriptions(&settings.prefix, &group);
    let mut pending: Vec<(Message, Publish)> = Vec::new();
    let mut writing: Option<Writing> = None;
    let mut retry_at: Option<tokio::time::Instant> = None;
    let mut prune = tokio::time::interval(Duration::from_secs(3600));
    let mut last_warn: Option<String> = None;
    loop {
        if writing.is_none()
            && !pending.is_empty()
            && retry_at.is_none_or(|t| t <= tokio::time::Instant::now())
        {
            let batch: Vec<(Message, Publish)> =
                pending.drain(..pending.len().min(BATCH)).collect();
            let msgs = batch.iter().map(|(m, _)| m.clone()).collect();
            let (reply, wait) = tokio::sync::oneshot::channel();
            match shared.jobs.try_send(Job::Record(msgs, reply)) {
                Ok(()) => writing = Some((batch, wait)),
                Err(_) => {
                    // The store thread is busy (views, a slow database): try again shortly.
                    pending.splice(0..0, batch);
                    retry_at = Some(tokio::time::Instant::now() + Duration::from_millis(50));
                }
            }
        }
        let retry_sleep = async {
            match retry_at {
                Some(t) => tokio::time::sleep_until(t).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            ev = rx.recv() => match ev {
                Some(Ok(Event::Incoming(Packet::ConnAck(ack)))) => {
                    shared.broker_ok.store(true, Ordering::Relaxed);
                    shared.metrics.connected.set(1);
                    tracing::info!(broker = %settings.broker, session_present = ack.session_present, "aggregator connected");
                    for (topic, qos) in &subs {
                        if let Err(e) = client.try_subscribe(topic, *qos) {
                            tracing::warn!("cannot subscribe to {topic}: {e}");
                        }
                    }
                }
                Some(Ok(Event::Incoming(Packet::Publish(p)))) => {
                    shared.metrics.received.inc();
                    match message::parse(&p.topic, &p.payload) {
                        Ok(m) => pending.push((m, p)),
                        Err(e) => {
                            shared.metrics.rejected.inc();
                            let text = format!("ignored a message on {}: {e}", p.topic);
                            if last_warn.as_ref() != Some(&text) {
                                tracing::warn!("{text}");
                                last_warn = Some(text);
                            }
                            let _ = client.try_ack(&p);
                        }
                    }
                }
                Some(Ok(_)) => {}
                Some(Err(msg)) => {
                    if shared.broker_ok.swap(false, Ordering::Relaxed)
                        || last_warn.as_ref() != Some(&msg)
                    {
                        tracing::warn!("{msg}");
                    }
                    shared.metrics.connected.set(0);
                    if let Ok(mut l) = shared.last_error.lock() {
                        *l = Some(msg.clone());
                    }
                    last_warn = Some(msg);
                    // Unacknowledged messages come again on the next session.
                    pending.clear();
                }
                None => break,
            },
            r = async { writing.as_mut().map(|(_, w)| w).expect("guarded").await }, if writing.is_some() => {
                let Some((batch, _)) = writing.take() else { continue };
                match r {
                    Ok(Ok(rec)) => {
                        shared.metrics.new_events.inc_by(rec.new_events);
                        shared.metrics.duplicates.inc_by(rec.duplicates);
                        shared.metrics.gaps.inc_by(rec.gaps);
                        for (_, p) in &batch {
                            let _ = client.try_ack(p);
                        }
                    }
                    failed => {
                        let e = match failed {
                            Ok(Err(e)) => e,
                            _ => "the store thread stopped".into(),
                        };
                        shared.metrics.store_errors.inc();
                        tracing::warn!("fleet store: {e}; retrying in {RETRY:?} (messages stay unacknowledged)");
                        if let Ok(mut l) = shared.last_error.lock() {
                            *l = Some(format!("fleet store: {e}"));
                        }
                        pending.splice(0..0, batch);
                        retry_at = Some(tokio::time::Instant::now() + RETRY);
                    }
                }
            }
            _ = retry_sleep => { retry_at = None; }
            _ = prune.tick() => {
                let before = now_ms().saturating_sub(retention.as_millis() as u64) as i64;
                let _ = shared.jobs.try_send(Job::Prune(before));
            }
            _ = stop.changed() => break,
        }
    }
    // A batch being written is acknowledged if it commits in time; the rest is redelivered.
    if let Some((batch, w)) = writing.take()
        && let Ok(Ok(Ok(_))) = tokio::time::timeout(Duration::from_secs(3), w).await
    {
        for (_, p) in &batch {
            let _ = client.try_ack(p);
        }
        let _ = tokio::time::timeout(Duration::from_millis(300), rx.recv()).await;
    }
    let _ = client.try_disconnect();
    let _ = tokio::time::timeout(Duration::from_millis(300), rx.recv()).await;
    driver.abort();
}

mod routes;
use routes::router;
