//! Publishing to an MQTT broker (rumqttc) from the SQLite outbox. Topics under
//! `<prefix>/v1/<site>/<host>/`: `events` (QoS 1: alert documents and gap records, in outbox
//! order), `summary` (QoS 0, every `summary_interval_secs`), `status` (retained `online`;
//! the Last Will and a clean stop set `offline`). The documents are in [`documents`], their
//! JSON Schemas in [`schema`].
//!
//! Delivery: a row leaves the outbox only when the broker acknowledged it (PUBACK); after a
//! disconnect everything unacknowledged is read again from the database, so a broker outage
//! or a daemon crash loses nothing (consumers dedup by `event_id`). Capture never waits on
//! this task: it only reads the database and sends acknowledgements to the store's writer.

pub mod documents;
pub mod schema;

use std::{
    collections::{HashMap, VecDeque},
    path::PathBuf,
    sync::{Arc, atomic::Ordering, mpsc::SyncSender},
    time::Duration,
};

use rumqttc::{AsyncClient, Event, LastWill, MqttOptions, Outgoing, Packet, QoS};

use crate::{
    mqtt::{Settings, drive, install_crypto},
    state::{DaemonState, MqttHealth},
    store::{self, Write, outbox},
};
use documents::{status_doc, summary_doc};

/// Publishes in flight at most (unacknowledged).
const WINDOW: usize = 1000;

/// The publisher's session: a clean session with the in-flight window, and `offline` on the
/// status topic as the Last Will.
fn session_options(s: &Settings) -> MqttOptions {
    let mut o = s.connection_options(&s.client_id);
    o.set_clean_session(true)
        .set_inflight(WINDOW as u16)
        .set_last_will(LastWill::new(
            &s.topics.status,
            status_doc(&s.host, &s.site, "offline"),
            QoS::AtLeastOnce,
            true,
        ));
    o
}

/// The running publisher.
pub struct Publisher {
    stop: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
    pub stats: Arc<MqttHealth>,
}

/// The daemon's counters (shared with the status endpoint) that the summary reports.
pub type SummarySource = Arc<DaemonState>;

impl Publisher {
    pub fn start(
        settings: Settings,
        db: PathBuf,
        writer: SyncSender<Write>,
        shared: SummarySource,
    ) -> Publisher {
        install_crypto();
        let stats = Arc::new(MqttHealth::default());
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
    /// The database file the outbox is read from (`store::identity`).
    db_identity: Option<(u64, u64)>,
}

impl Session {
    /// A new connection (or none): nothing in flight, read the outbox from its start again;
    /// acknowledgements not yet handed to the store are kept.
    fn restart(&mut self, connected: bool) {
        *self = Session {
            connected,
            acked: std::mem::take(&mut self.acked),
            db_identity: self.db_identity,
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
    stats: Arc<MqttHealth>,
    shared: SummarySource,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let (client, el) = AsyncClient::new(session_options(&s), WINDOW * 2);
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
                stats.in_flight.store(sess.in_flight() as u64, Ordering::Relaxed);
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
    stats: &MqttHealth,
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
                stats
                    .last_ack_ns
                    .store(crate::clock::monotonic_ns(), Ordering::Relaxed);
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
    stats: &MqttHealth,
) {
    // The database was removed or replaced (the writer started a new one): read the new
    // outbox from its start; what was in flight or acknowledged belongs to the old file.
    let current = store::identity(db);
    if current != sess.db_identity {
        if sess.db_identity.is_some() {
            tracing::warn!("the database file changed: the MQTT outbox is read from the new one");
            sess.acked.clear();
        }
        *conn = None;
        let connected = sess.connected;
        sess.restart(connected);
        sess.db_identity = current;
    }
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

pub(crate) fn reader<'a>(
    db: &std::path::Path,
    conn: &'a mut Option<rusqlite::Connection>,
) -> Option<&'a rusqlite::Connection> {
    if conn.is_none() {
        *conn = store::open_reader(db).ok();
    }
    conn.as_ref()
}
