//! Publishing to an MQTT broker (rumqttc) from the SQLite outbox. Topics under
//! `<prefix>/v1/<site>/<host>/`: `events` (QoS 1: alert documents and gap records, in outbox
//! order), `summary` (QoS 0, every `summary_interval_secs`), `status` (retained `online`;
//! the Last Will and a clean stop set `offline`).
//!
//! Delivery: a row leaves the outbox only when the broker acknowledged it (PUBACK); after a
//! disconnect everything unacknowledged is read again from the database, so a broker outage
//! or a daemon crash loses nothing (consumers dedup by `event_id`). Capture never waits on
//! this task: it only reads the database and sends acknowledgements to the store's writer.

use std::{
    collections::{HashMap, VecDeque},
    path::PathBuf,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
        mpsc::SyncSender,
    },
    time::Duration,
};

use anyhow::Context;
use rumqttc::{
    AsyncClient, ConnectionError, Event, EventLoop, LastWill, MqttOptions, Outgoing, Packet, QoS,
    TlsConfiguration, Transport,
};
use serde::Serialize;

use crate::{
    config::{Broker, Config},
    event::Host,
    outbox,
    store::{self, Write},
};

/// Publishes in flight at most (unacknowledged).
const WINDOW: usize = 1000;
const BACKOFF_MAX: Duration = Duration::from_secs(30);
const SYSTEM_CA: &str = "/etc/ssl/certs/ca-certificates.crt";

/// The topics of one host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topics {
    pub events: String,
    pub summary: String,
    pub status: String,
}

impl Topics {
    pub fn new(prefix: &str, site: &str, host_id: &str) -> Topics {
        let base = format!("{prefix}/v1/{site}/{host_id}");
        Topics {
            events: format!("{base}/events"),
            summary: format!("{base}/summary"),
            status: format!("{base}/status"),
        }
    }
}

/// Everything the publisher needs, files already read (errors surface at start).
pub struct Settings {
    pub broker: Broker,
    /// The first topic level.
    pub prefix: String,
    /// This host's topic level (the host id, made safe).
    pub host_level: String,
    pub topics: Topics,
    pub client_id: String,
    pub credentials: Option<(String, String)>,
    /// For mqtts:// only.
    pub tls: Option<TlsFiles>,
    pub keepalive: Duration,
    pub summary_interval: Duration,
    pub host: Host,
    pub site: String,
}

/// PEM contents: the CA bundle, and the client certificate and key when configured.
#[derive(Clone)]
pub struct TlsFiles {
    pub ca: Vec<u8>,
    pub client: Option<(Vec<u8>, Vec<u8>)>,
}

impl Settings {
    /// `None` when no broker is configured (MQTT off).
    pub fn from_config(cfg: &Config, host: &Host) -> anyhow::Result<Option<Settings>> {
        let m = &cfg.mqtt;
        let Some(broker) = m.broker.clone() else {
            return Ok(None);
        };
        let read = |what: &str, p: &PathBuf| {
            std::fs::read(p).with_context(|| format!("mqtt.{what}: cannot read {}", p.display()))
        };
        let password = match (&m.password, &m.password_file) {
            (Some(p), _) => Some(p.clone()),
            (None, Some(f)) => {
                let text = String::from_utf8(read("password_file", f)?)
                    .with_context(|| format!("mqtt.password_file {}: not UTF-8", f.display()))?;
                Some(text.lines().next().unwrap_or("").to_owned())
            }
            (None, None) => None,
        };
        let credentials = match (&m.username, password) {
            (Some(u), p) => Some((u.clone(), p.unwrap_or_default())),
            (None, Some(_)) => anyhow::bail!("mqtt: a password needs mqtt.username"),
            (None, None) => None,
        };
        let tls = if broker.tls {
            let ca = match &m.ca_file {
                Some(p) => read("ca_file", p)?,
                None => read("ca_file (system default)", &PathBuf::from(SYSTEM_CA))?,
            };
            let client = match (&m.cert_file, &m.key_file) {
                (Some(c), Some(k)) => Some((read("cert_file", c)?, read("key_file", k)?)),
                _ => None,
            };
            Some(TlsFiles { ca, client })
        } else {
            None
        };
        let site = cfg
            .host
            .site
            .as_ref()
            .map_or("default", |s| s.0.as_str())
            .to_owned();
        let host_id = sanitize_level(&host.id);
        Ok(Some(Settings {
            topics: Topics::new(&m.prefix.0, &site, &host_id),
            prefix: m.prefix.0.clone(),
            client_id: m
                .client_id
                .clone()
                .unwrap_or_else(|| format!("tlsmon-{host_id}")),
            host_level: host_id,
            broker,
            credentials,
            tls,
            keepalive: Duration::from_secs(m.keepalive_secs.get()),
            summary_interval: Duration::from_secs(m.summary_interval_secs.get()),
            host: host.clone(),
            site,
        }))
    }

    fn options(&self) -> MqttOptions {
        let mut o = self.connection_options(&self.client_id);
        o.set_clean_session(true)
            .set_inflight(WINDOW as u16)
            .set_last_will(LastWill::new(
                &self.topics.status,
                status_doc(&self.host, &self.site, "offline"),
                QoS::AtLeastOnce,
                true,
            ));
        o
    }

    /// Broker address, keepalive, credentials and TLS: what every tlsmon client shares.
    pub fn connection_options(&self, client_id: &str) -> MqttOptions {
        let mut o = MqttOptions::new(client_id, &self.broker.host, self.broker.port);
        o.set_keep_alive(self.keepalive)
            .set_max_packet_size(1 << 20, 1 << 20);
        if let Some((u, p)) = &self.credentials {
            o.set_credentials(u, p);
        }
        if let Some(t) = &self.tls {
            o.set_transport(Transport::tls_with_config(TlsConfiguration::Simple {
                ca: t.ca.clone(),
                alpn: None,
                client_auth: t.client.clone(),
            }));
        }
        o
    }
}

/// A host id may contain characters a topic level cannot.
fn sanitize_level(s: &str) -> String {
    s.chars()
        .map(|c| {
            if matches!(c, '/' | '+' | '#') || c.is_control() {
                '_'
            } else {
                c
            }
        })
        .collect()
}

#[derive(Serialize, schemars::JsonSchema)]
struct StatusDoc<'a> {
    schema: &'static str,
    state: &'a str,
    host: &'a Host,
    site: &'a str,
    version: &'static str,
    capabilities: [&'static str; 3],
    time: String,
}

fn status_doc(host: &Host, site: &str, state: &str) -> String {
    serde_json::to_string(&StatusDoc {
        schema: "tlsmon.status/1",
        state,
        host,
        site,
        version: env!("CARGO_PKG_VERSION"),
        capabilities: ["events", "summary", "gap"],
        time: crate::analyze::rfc3339(store::now_ms().saturating_mul(1_000_000)),
    })
    .unwrap_or_default()
}

/// What the publisher did, for the status endpoint and metrics.
#[derive(Debug, Default)]
pub struct MqttStats {
    pub connected: AtomicBool,
    pub published: AtomicU64,
    pub acked: AtomicU64,
    pub connects: AtomicU64,
    pub last_error: Mutex<Option<String>>,
}

/// The running publisher.
pub struct Publisher {
    stop: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
    pub stats: Arc<MqttStats>,
}

/// The daemon's counters (shared with the status endpoint) that the summary reports.
pub type SummarySource = Arc<crate::status::Shared>;

impl Publisher {
    pub fn start(
        settings: Settings,
        db: PathBuf,
        writer: SyncSender<Write>,
        shared: SummarySource,
    ) -> Publisher {
        install_crypto();
        let stats = Arc::new(MqttStats::default());
        let (stop, stop_rx) = tokio::sync::watch::channel(false);
        let task = tokio::spawn(run(settings, db, writer, stats.clone(), shared, stop_rx));
        Publisher { stop, task, stats }
    }

    /// Publishes `offline` (retained), waits for outstanding acknowledgements (bounded),
    /// disconnects.
    pub async fn stop(self, limit: Duration) {
        let _ = self.stop.send(true);
        if tokio::time::timeout(limit, self.task).await.is_err() {
            tracing::warn!("MQTT publisher did not stop within {limit:?}");
        }
    }
}

/// Forwards the event loop's notifications (reconnecting with backoff after errors).
pub(crate) async fn drive(
    mut el: EventLoop,
    tx: tokio::sync::mpsc::Sender<Result<Event, String>>,
    broker: String,
) {
    let mut backoff = Duration::from_millis(500);
    loop {
        match el.poll().await {
            Ok(ev) => {
                if matches!(ev, Event::Incoming(Packet::ConnAck(_))) {
                    backoff = Duration::from_millis(500);
                }
                if tx.send(Ok(ev)).await.is_err() {
                    return;
                }
            }
            Err(e) => {
                let msg = describe(&e, &broker, backoff);
                if tx.send(Err(msg)).await.is_err() {
                    return;
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(BACKOFF_MAX);
            }
        }
    }
}

pub(crate) fn describe(e: &ConnectionError, broker: &str, retry: Duration) -> String {
    let what = match e {
        ConnectionError::ConnectionRefused(code) => format!(
            "the broker refused the connection ({code:?}){}",
            if matches!(
                code,
                rumqttc::ConnectReturnCode::BadUserNamePassword
                    | rumqttc::ConnectReturnCode::NotAuthorized
            ) {
                ": check mqtt.username and the password"
            } else {
                ""
            }
        ),
        other => other.to_string(),
    };
    format!("MQTT broker {broker}: {what}; retrying in {retry:?}, events stay in the outbox")
}

/// rustls needs one crypto provider for the process; ring is the one we build.
pub(crate) fn install_crypto() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// The publisher's state for one connection.
#[derive(Default)]
struct Session {
    connected: bool,
    /// Highest outbox id handed to the client in this session.
    cursor: i64,
    /// Outbox ids (None: a status publish) in the order they were handed to the client;
    /// rumqttc reports `Outgoing::Publish(pkid)` in that order.
    order: VecDeque<Option<i64>>,
    /// Packet id -> outbox id, until PUBACK.
    inflight: HashMap<u16, Option<i64>>,
    acked: Vec<i64>,
}

impl Session {
    /// A new connection (or none): nothing in flight, read the outbox from its start again;
    /// acknowledgements not yet handed to the store are kept.
    fn restart(&mut self, connected: bool) {
        *self = Session {
            connected,
            acked: std::mem::take(&mut self.acked),
            ..Session::default()
        };
    }

    fn in_flight(&self) -> usize {
        self.order.len() + self.inflight.len()
    }
}

async fn run(
    s: Settings,
    db: PathBuf,
    writer: SyncSender<Write>,
    stats: Arc<MqttStats>,
    shared: SummarySource,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let (client, el) = AsyncClient::new(s.options(), WINDOW * 2);
    let (tx, mut rx) = tokio::sync::mpsc::channel(4096);
    let driver = tokio::spawn(drive(el, tx, s.broker.to_string()));
    let mut conn: Option<rusqlite::Connection> = None;
    let mut sess = Session::default();
    let mut fill = tokio::time::interval(Duration::from_millis(20));
    fill.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut summary = tokio::time::interval(s.summary_interval);
    summary.tick().await;
    let mut last_error: Option<String> = None;
    loop {
        tokio::select! {
            ev = rx.recv() => match ev {
                Some(Ok(ev)) => on_event(ev, &client, &s, &mut sess, &stats).await,
                Some(Err(msg)) => {
                    if sess.connected || last_error.as_ref() != Some(&msg) {
                        tracing::warn!("{msg}");
                    }
                    if let Ok(mut l) = stats.last_error.lock() {
                        *l = Some(msg.clone());
                    }
                    last_error = Some(msg);
                    sess.restart(false);
                    stats.connected.store(false, Ordering::Relaxed);
                }
                None => break,
            },
            _ = fill.tick() => {
                if !sess.acked.is_empty() {
                    // If the writer's queue is full these rows stay and are published again
                    // after the next reconnect (consumers dedup by event_id).
                    let _ = writer.try_send(Write::Acked(std::mem::take(&mut sess.acked)));
                }
                if sess.connected {
                    publish_pending(&client, &s, &db, &mut conn, &mut sess, &stats);
                }
            }
            _ = summary.tick() => {
                if sess.connected {
                    let doc = summary_doc(&s, &db, &mut conn, &shared);
                    if client.try_publish(&s.topics.summary, QoS::AtMostOnce, false, doc).is_ok() {
                        // QoS 0 is reported as Outgoing::Publish(0): keep the order aligned.
                        sess.order.push_back(None);
                    }
                }
            }
            _ = stop.changed() => break,
        }
    }
    // Clean stop: offline (retained, QoS 1), then what was acknowledged is recorded.
    if sess.connected {
        let _ = client.try_publish(
            &s.topics.status,
            QoS::AtLeastOnce,
            true,
            status_doc(&s.host, &s.site, "offline"),
        );
        sess.order.push_back(None);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
        while sess.in_flight() > 0 {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(Ok(ev))) => on_event(ev, &client, &s, &mut sess, &stats).await,
                _ => break,
            }
        }
        let _ = client.try_disconnect();
        let _ = tokio::time::timeout(Duration::from_millis(500), rx.recv()).await;
    }
    if !sess.acked.is_empty() {
        let _ = writer.send(Write::Acked(std::mem::take(&mut sess.acked)));
    }
    driver.abort();
}

async fn on_event(
    ev: Event,
    client: &AsyncClient,
    s: &Settings,
    sess: &mut Session,
    stats: &MqttStats,
) {
    match ev {
        Event::Incoming(Packet::ConnAck(_)) => {
            // A new session: everything unacknowledged is read again from the outbox.
            sess.restart(true);
            stats.connected.store(true, Ordering::Relaxed);
            stats.connects.fetch_add(1, Ordering::Relaxed);
            tracing::info!(broker = %s.broker, topic = %s.topics.events, "MQTT connected");
            if client
                .try_publish(
                    &s.topics.status,
                    QoS::AtLeastOnce,
                    true,
                    status_doc(&s.host, &s.site, "online"),
                )
                .is_ok()
            {
                sess.order.push_back(None);
            }
        }
        Event::Outgoing(Outgoing::Publish(pkid)) => {
            if let Some(id) = sess.order.pop_front()
                && pkid != 0
            {
                sess.inflight.insert(pkid, id);
            }
        }
        Event::Incoming(Packet::PubAck(ack)) => {
            if let Some(id) = sess.inflight.remove(&ack.pkid) {
                stats.acked.fetch_add(1, Ordering::Relaxed);
                if let Some(id) = id {
                    sess.acked.push(id);
                }
            }
        }
        _ => {}
    }
}

fn publish_pending(
    client: &AsyncClient,
    s: &Settings,
    db: &std::path::Path,
    conn: &mut Option<rusqlite::Connection>,
    sess: &mut Session,
    stats: &MqttStats,
) {
    let room = WINDOW.saturating_sub(sess.in_flight());
    if room == 0 {
        return;
    }
    let Some(c) = reader(db, conn) else {
        return;
    };
    let rows = match outbox::pending(c, sess.cursor, room) {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the MQTT outbox");
            *conn = None;
            return;
        }
    };
    for row in rows {
        if client
            .try_publish(&s.topics.events, QoS::AtLeastOnce, false, row.payload)
            .is_err()
        {
            break;
        }
        sess.cursor = row.id;
        sess.order.push_back(Some(row.id));
        stats.published.fetch_add(1, Ordering::Relaxed);
    }
}

fn reader<'a>(
    db: &std::path::Path,
    conn: &'a mut Option<rusqlite::Connection>,
) -> Option<&'a rusqlite::Connection> {
    if conn.is_none() {
        *conn = store::open_reader(db).ok();
    }
    conn.as_ref()
}

#[derive(Serialize, schemars::JsonSchema)]
struct SummaryDoc<'a> {
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
struct Handshakes {
    judged: u64,
    ok: u64,
    failed: u64,
    warnings: u64,
}

#[derive(Serialize, schemars::JsonSchema)]
struct Failing {
    process: String,
    cause: String,
    count: u64,
}

/// JSON Schema of the summary and status documents (docs/schema/).
pub fn summary_schema() -> String {
    crate::schema::schema_text::<SummaryDoc<'static>>()
}

pub fn status_schema() -> String {
    crate::schema::schema_text::<StatusDoc<'static>>()
}

fn summary_doc(
    s: &Settings,
    db: &std::path::Path,
    conn: &mut Option<rusqlite::Connection>,
    shared: &SummarySource,
) -> String {
    let now = store::now_ms();
    let since = now.saturating_sub(s.summary_interval.as_millis() as u64);
    let (failing, backlog) = reader(db, conn).map_or((Vec::new(), 0), |c| {
        (
            store::top(c, store::TopBy::Process, since, 50).unwrap_or_default(),
            outbox::backlog(c).unwrap_or(0),
        )
    });
    serde_json::to_string(&SummaryDoc {
        schema: "tlsmon.summary/1",
        time: crate::analyze::rfc3339(now.saturating_mul(1_000_000)),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics_follow_the_design_and_host_ids_are_made_safe() {
        let t = Topics::new("tlsmon", "fra1", &sanitize_level("web/01+#"));
        assert_eq!(t.events, "tlsmon/v1/fra1/web_01__/events");
        assert_eq!(t.status, "tlsmon/v1/fra1/web_01__/status");
        assert_eq!(t.summary, "tlsmon/v1/fra1/web_01__/summary");
    }

    #[test]
    fn settings_read_files_and_refuse_a_password_without_user() {
        let host = Host {
            id: "m".into(),
            name: "h".into(),
        };
        let off = Config::default();
        assert!(Settings::from_config(&off, &host).expect("off").is_none());
        let cfg = crate::config::parse(
            "[mqtt]\nbroker = \"mqtt://127.0.0.1\"\npassword = \"x\"\n",
            "t",
        )
        .expect("parse");
        let e = Settings::from_config(&cfg, &host).err().expect("refused");
        assert!(e.to_string().contains("needs mqtt.username"), "{e}");
        let cfg = crate::config::parse(
            "[mqtt]\nbroker = \"mqtts://b\"\nca_file = \"/nonexistent/ca.pem\"\n",
            "t",
        )
        .expect("parse");
        let e = Settings::from_config(&cfg, &host).err().expect("refused");
        assert!(e.to_string().contains("/nonexistent/ca.pem"), "{e}");
        let cfg = crate::config::parse("[mqtt]\nbroker = \"mqtt://127.0.0.1:1884\"\n", "t")
            .expect("parse");
        let s = Settings::from_config(&cfg, &host).expect("ok").expect("on");
        assert_eq!(s.topics.events, "tlsmon/v1/default/m/events");
        assert_eq!(s.client_id, "tlsmon-m");
    }
}
