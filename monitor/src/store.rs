//! The SQLite history: alerts (one row per alert, its count kept current), successes per
//! (exe, peer, version, cipher), counters. WAL mode, schema versioned by `user_version`
//! with ordered migrations, retention by age and size. Writes go through one thread in
//! batches (one transaction per batch), so a storm never waits on the disk; readers open
//! their own connections (WAL lets them read while the writer writes).

use std::{
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
        mpsc,
    },
    time::Duration,
};

use rusqlite::{Connection, OpenFlags, params, params_from_iter};

use crate::{
    alerts::Update,
    event::{Event, wire_name},
};

/// Ordered migrations; `user_version` = how many ran.
const MIGRATIONS: &[&str] = &[
    // 1: alerts, successes, counters.
    "CREATE TABLE alerts (
        event_id   TEXT PRIMARY KEY,
        kind       TEXT NOT NULL,
        severity   TEXT NOT NULL,
        cause      TEXT NOT NULL,
        process    TEXT,
        exe        TEXT,
        pid        INTEGER,
        role       TEXT NOT NULL,
        local_ip   TEXT,
        local_port INTEGER,
        peer_ip    TEXT,
        peer_port  INTEGER,
        sni        TEXT,
        first_ms   INTEGER NOT NULL,
        last_ms    INTEGER NOT NULL,
        count      INTEGER NOT NULL,
        doc        TEXT NOT NULL
     );
     CREATE INDEX alerts_last_ms ON alerts(last_ms);
     CREATE TABLE successes (
        exe TEXT NOT NULL, peer_ip TEXT NOT NULL, version TEXT NOT NULL, cipher TEXT NOT NULL,
        count INTEGER NOT NULL, last_ms INTEGER NOT NULL,
        PRIMARY KEY (exe, peer_ip, version, cipher)
     );
     CREATE TABLE counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);",
    // 2: the MQTT outbox. `id` only grows (AUTOINCREMENT): a count update of an alert that
    // is still unpublished replaces its row with a newer one, so the publisher reads each
    // row once in id order and deletes it on PUBACK.
    "CREATE TABLE outbox (
        id         INTEGER PRIMARY KEY AUTOINCREMENT,
        event_id   TEXT NOT NULL UNIQUE,
        kind       TEXT NOT NULL,
        created_ms INTEGER NOT NULL,
        payload    TEXT NOT NULL
     );",
];

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database {path}: {source}")]
    Sqlite {
        path: String,
        source: rusqlite::Error,
    },
    #[error("database {path}: cannot create its directory: {source}")]
    Dir {
        path: String,
        source: std::io::Error,
    },
    #[error(
        "database {path} has schema version {found}, newer than this tlsmon knows ({known}); upgrade tlsmon or move the file"
    )]
    TooNew {
        path: String,
        found: i64,
        known: usize,
    },
}

/// A successful handshake, counted per (exe, peer, version, cipher).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Success {
    pub exe: String,
    pub peer_ip: String,
    pub version: String,
    pub cipher: String,
    pub at_ms: u64,
}

/// One write for the writer thread.
#[derive(Debug)]
pub enum Write {
    Alert(Update),
    Success(Success),
    /// Sets a counter (kernel counters, totals).
    Counter(&'static str, u64),
    /// Outbox rows the broker acknowledged (PUBACK): deleted.
    Acked(Vec<i64>),
    /// Commit everything before this and answer.
    Flush(mpsc::Sender<()>),
}

/// Outbox rows: `event` (an alert document), `gap` (what the bounds dropped).
pub const OUTBOX_EVENT: &str = "event";
pub const OUTBOX_GAP: &str = "gap";

/// Retention limits.
#[derive(Debug, Clone, Copy)]
pub struct Retention {
    pub max_age_ms: u64,
    pub max_bytes: u64,
}

fn sqlite_err(path: &Path) -> impl Fn(rusqlite::Error) -> StoreError + '_ {
    move |source| StoreError::Sqlite {
        path: path.display().to_string(),
        source,
    }
}

/// Opens (creating if needed) the database and runs pending migrations.
pub fn open(path: &Path) -> Result<Connection, StoreError> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|source| StoreError::Dir {
            path: path.display().to_string(),
            source,
        })?;
    }
    let e = sqlite_err(path);
    let conn = Connection::open(path).map_err(&e)?;
    conn.busy_timeout(Duration::from_secs(5)).map_err(&e)?;
    conn.pragma_update(None, "journal_mode", "WAL")
        .map_err(&e)?;
    conn.pragma_update(None, "synchronous", "NORMAL")
        .map_err(&e)?;
    let version: i64 = conn
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .map_err(&e)?;
    if version > MIGRATIONS.len() as i64 {
        return Err(StoreError::TooNew {
            path: path.display().to_string(),
            found: version,
            known: MIGRATIONS.len(),
        });
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(version.max(0) as usize) {
        let tx = conn.unchecked_transaction().map_err(&e)?;
        tx.execute_batch(sql).map_err(&e)?;
        tx.pragma_update(None, "user_version", (i + 1) as i64)
            .map_err(&e)?;
        tx.commit().map_err(&e)?;
    }
    Ok(conn)
}

/// Opens the database read-only (status endpoint, CLI).
pub fn open_reader(path: &Path) -> Result<Connection, StoreError> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(sqlite_err(path))?;
    conn.busy_timeout(Duration::from_secs(5))
        .map_err(sqlite_err(path))?;
    Ok(conn)
}

/// Applies a batch of writes in one transaction; returns how many alerts were inserted.
/// With `outbox`, every new alert and every count update is (re)queued for publishing in
/// the same transaction: an event is in the database before it can be published.
pub fn apply(conn: &mut Connection, batch: &[Write], outbox: bool) -> rusqlite::Result<u64> {
    let tx = conn.transaction()?;
    let mut inserted = 0;
    {
        let mut enqueue = tx.prepare_cached(
            "INSERT OR REPLACE INTO outbox (event_id, kind, created_ms, payload)
             SELECT event_id, 'event', ?2, doc FROM alerts WHERE event_id = ?1",
        )?;
        let mut acked = tx.prepare_cached("DELETE FROM outbox WHERE id = ?1")?;
        let now = now_ms() as i64;
        let mut insert = tx.prepare_cached(
            "INSERT OR IGNORE INTO alerts (event_id, kind, severity, cause, process, exe, pid, role,
               local_ip, local_port, peer_ip, peer_port, sni, first_ms, last_ms, count, doc)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17)",
        )?;
        let mut bump = tx.prepare_cached(
            "UPDATE alerts SET count = ?2, last_ms = ?3,
               doc = json_set(doc, '$.count', ?2, '$.last_seen', ?4,
                              '$.peers', COALESCE(?5, json_extract(doc, '$.peers')))
             WHERE event_id = ?1",
        )?;
        let mut success = tx.prepare_cached(
            "INSERT INTO successes (exe, peer_ip, version, cipher, count, last_ms)
             VALUES (?1, ?2, ?3, ?4, 1, ?5)
             ON CONFLICT (exe, peer_ip, version, cipher)
             DO UPDATE SET count = count + 1, last_ms = MAX(last_ms, excluded.last_ms)",
        )?;
        let mut counter = tx.prepare_cached(
            "INSERT INTO counters (name, value) VALUES (?1, ?2)
             ON CONFLICT (name) DO UPDATE SET value = excluded.value",
        )?;
        for w in batch {
            match w {
                Write::Alert(Update::New(ev)) => {
                    let n = insert.execute(alert_row(ev))?;
                    inserted += n as u64;
                    if outbox && n > 0 {
                        enqueue.execute(params![ev.event_id, now])?;
                    }
                }
                Write::Alert(Update::Count {
                    event_id,
                    count,
                    last_ms,
                    last_seen,
                    peers,
                }) => {
                    bump.execute(params![
                        event_id,
                        *count as i64,
                        *last_ms as i64,
                        last_seen,
                        peers.map(|p| p as i64)
                    ])?;
                    if outbox {
                        enqueue.execute(params![event_id, now])?;
                    }
                }
                Write::Acked(ids) => {
                    for id in ids {
                        acked.execute([id])?;
                    }
                }
                Write::Success(s) => {
                    success.execute(params![
                        s.exe,
                        s.peer_ip,
                        s.version,
                        s.cipher,
                        s.at_ms as i64
                    ])?;
                }
                Write::Counter(name, v) => {
                    counter.execute(params![name, *v as i64])?;
                }
                Write::Flush(_) => {}
            }
        }
    }
    tx.commit()?;
    Ok(inserted)
}

fn alert_row(ev: &Event) -> impl rusqlite::Params + '_ {
    let p = ev.process.as_ref();
    params_from_iter([
        rusqlite::types::Value::from(ev.event_id.clone()),
        wire_name(&ev.kind).into(),
        wire_name(&ev.severity).into(),
        ev.cause.clone().into(),
        p.map(|p| p.comm.clone()).into(),
        p.and_then(|p| p.exe.clone()).into(),
        p.map(|p| i64::from(p.pid)).into(),
        wire_name(&ev.role).into(),
        ev.local.as_ref().map(|e| e.ip.clone()).into(),
        ev.local.as_ref().map(|e| i64::from(e.port)).into(),
        ev.peer.as_ref().map(|e| e.ip.clone()).into(),
        ev.peer.as_ref().map(|e| i64::from(e.port)).into(),
        ev.sni.clone().into(),
        (ev.first_ms as i64).into(),
        (ev.last_ms as i64).into(),
        (ev.count as i64).into(),
        serde_json::to_string(ev).unwrap_or_default().into(),
    ])
}

/// Deletes alerts older than the age limit, then the oldest until under the size limit.
pub fn enforce_retention(conn: &Connection, r: Retention, now_ms: u64) -> rusqlite::Result<u64> {
    let cutoff = now_ms.saturating_sub(r.max_age_ms) as i64;
    let mut deleted = conn.execute("DELETE FROM alerts WHERE last_ms < ?1", [cutoff])? as u64;
    conn.execute("DELETE FROM successes WHERE last_ms < ?1", [cutoff])?;
    for _ in 0..20 {
        let size: i64 = conn.query_row(
            "SELECT page_count * page_size - freelist_count * page_size
             FROM pragma_page_count, pragma_page_size, pragma_freelist_count",
            [],
            |row| row.get(0),
        )?;
        if size as u64 <= r.max_bytes {
            break;
        }
        let n = conn.execute(
            "DELETE FROM alerts WHERE event_id IN
               (SELECT event_id FROM alerts ORDER BY last_ms LIMIT
                  (SELECT MAX(100, COUNT(*) / 10) FROM alerts))",
            [],
        )? as u64;
        deleted += n;
        if n == 0 {
            break;
        }
    }
    Ok(deleted)
}

/// Counts shared with the status endpoint.
#[derive(Debug, Default)]
pub struct StoreStats {
    pub alerts_inserted: AtomicU64,
    pub batches: AtomicU64,
    pub write_errors: AtomicU64,
}

/// The writer thread's handle: send writes, join on drop of the sender.
pub struct Writer {
    pub tx: mpsc::SyncSender<Write>,
    pub stats: Arc<StoreStats>,
    thread: Option<std::thread::JoinHandle<()>>,
    pub path: PathBuf,
}

/// Writes waiting at most (beyond it the daemon counts them as dropped rather than block
/// capture).
pub const QUEUE: usize = 65_536;
const BATCH: usize = 4096;

impl Writer {
    /// Opens the database and starts the writer thread; with `outbox`, alerts are also
    /// queued for MQTT and the outbox kept within its bounds.
    pub fn start(
        path: &Path,
        retention: Retention,
        outbox: Option<crate::outbox::OutboxPolicy>,
    ) -> Result<Writer, StoreError> {
        let mut conn = open(path)?;
        let (tx, rx) = mpsc::sync_channel::<Write>(QUEUE);
        let stats = Arc::new(StoreStats::default());
        let st = stats.clone();
        let shown = path.display().to_string();
        let thread = std::thread::Builder::new()
            .name("tlsmon-store".into())
            .spawn(move || writer_loop(&mut conn, &rx, &st, retention, outbox, &shown))
            .map_err(|source| StoreError::Dir {
                path: path.display().to_string(),
                source,
            })?;
        Ok(Writer {
            tx,
            stats,
            thread: Some(thread),
            path: path.to_path_buf(),
        })
    }

    /// Waits until everything sent so far is committed (bounded).
    pub fn flush(&self, timeout: Duration) -> bool {
        let (tx, rx) = mpsc::channel();
        if self.tx.send(Write::Flush(tx)).is_err() {
            return false;
        }
        rx.recv_timeout(timeout).is_ok()
    }

    /// Commits what is queued and stops the thread.
    pub fn close(mut self) {
        let Writer { tx, thread, .. } = &mut self;
        drop(std::mem::replace(tx, mpsc::sync_channel(1).0));
        if let Some(t) = thread.take() {
            let _ = t.join();
        }
    }
}

/// Unix time in milliseconds.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn writer_loop(
    conn: &mut Connection,
    rx: &mpsc::Receiver<Write>,
    stats: &StoreStats,
    retention: Retention,
    outbox: Option<crate::outbox::OutboxPolicy>,
    path: &str,
) {
    let mut last_retention = 0u64;
    let mut last_bounds = 0u64;
    let mut batch = Vec::with_capacity(BATCH);
    loop {
        match rx.recv_timeout(Duration::from_secs(1)) {
            Ok(w) => batch.push(w),
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => return,
        }
        while batch.len() < BATCH {
            match rx.try_recv() {
                Ok(w) => batch.push(w),
                Err(_) => break,
            }
        }
        if !batch.is_empty() {
            match apply(conn, &batch, outbox.is_some()) {
                Ok(n) => {
                    stats.alerts_inserted.fetch_add(n, Ordering::Relaxed);
                    stats.batches.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => {
                    stats.write_errors.fetch_add(1, Ordering::Relaxed);
                    tracing::error!(database = path, error = %e, lost = batch.len(), "cannot write to the database");
                }
            }
            for w in batch.drain(..) {
                if let Write::Flush(done) = w {
                    let _ = done.send(());
                }
            }
        }
        let now = now_ms();
        if let Some(policy) = &outbox
            && now.saturating_sub(last_bounds) >= 1_000
        {
            last_bounds = now;
            match crate::outbox::enforce(conn, policy, now) {
                Ok(gaps) => {
                    for g in gaps {
                        tracing::warn!(
                            database = path,
                            dropped = g.dropped,
                            reason = g.reason,
                            "MQTT outbox over its bounds: the oldest unpublished events were dropped and a gap record queued"
                        );
                    }
                }
                Err(e) => tracing::warn!(database = path, error = %e, "outbox bounds failed"),
            }
        }
        if now.saturating_sub(last_retention) > 60_000 {
            last_retention = now;
            match enforce_retention(conn, retention, now) {
                Ok(0) => {}
                Ok(n) => tracing::info!(database = path, deleted = n, "retention"),
                Err(e) => tracing::warn!(database = path, error = %e, "retention failed"),
            }
        }
    }
}

/// What `/v1/failures` and `tlsmon failures` select.
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FailureQuery {
    /// Unix ms: alerts last seen at or after.
    pub since_ms: Option<u64>,
    /// comm, exe or exe basename.
    pub process: Option<String>,
    /// Peer address or range.
    pub peer: Option<String>,
    pub cause: Option<String>,
    pub limit: Option<u32>,
}

/// Alerts matching the query, newest first, as their JSON documents.
pub fn failures(conn: &Connection, q: &FailureQuery) -> Result<Vec<serde_json::Value>, String> {
    let peer = q
        .peer
        .as_deref()
        .map(str::parse::<crate::config::Cidr>)
        .transpose()?;
    let limit = q.limit.unwrap_or(100).min(10_000) as usize;
    let mut stmt = conn
        .prepare_cached(
            "SELECT doc, exe, process, peer_ip FROM alerts
             WHERE last_ms >= ?1 AND (?2 IS NULL OR cause = ?2)
             ORDER BY last_ms DESC",
        )
        .map_err(|e| e.to_string())?;
    let rows = stmt
        .query_map(
            params![q.since_ms.unwrap_or(0) as i64, q.cause.as_deref()],
            |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, Option<String>>(1)?,
                    r.get::<_, Option<String>>(2)?,
                    r.get::<_, Option<String>>(3)?,
                ))
            },
        )
        .map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    for row in rows {
        let (doc, exe, comm, peer_ip) = row.map_err(|e| e.to_string())?;
        if let Some(want) = &q.process {
            let base = exe.as_deref().and_then(|e| e.rsplit('/').next());
            let hit = [comm.as_deref(), exe.as_deref(), base].contains(&Some(want.as_str()));
            if !hit {
                continue;
            }
        }
        if let Some(net) = &peer {
            let ip = peer_ip.as_deref().and_then(|s| s.parse().ok());
            if !ip.is_some_and(|ip| net.contains(ip)) {
                continue;
            }
        }
        if let Ok(v) = serde_json::from_str(&doc) {
            out.push(v);
        }
        if out.len() >= limit {
            break;
        }
    }
    Ok(out)
}

/// Failures (sum of counts) since `since_ms`, grouped by `column` ("process" or "peer_ip")
/// and cause, most first.
pub fn top(
    conn: &Connection,
    column: TopBy,
    since_ms: u64,
    limit: u32,
) -> rusqlite::Result<Vec<(String, String, u64)>> {
    let sql = format!(
        "SELECT COALESCE({c}, '?'), cause, SUM(count) AS n FROM alerts
         WHERE last_ms >= ?1 AND severity = 'error'
         GROUP BY 1, 2 ORDER BY n DESC LIMIT ?2",
        c = column.column()
    );
    let mut stmt = conn.prepare_cached(&sql)?;
    let rows = stmt.query_map(params![since_ms as i64, limit], |r| {
        Ok((r.get(0)?, r.get(1)?, r.get::<_, i64>(2)? as u64))
    })?;
    rows.collect()
}

#[derive(Debug, Clone, Copy)]
pub enum TopBy {
    Process,
    Peer,
}

impl TopBy {
    fn column(self) -> &'static str {
        match self {
            TopBy::Process => "process",
            TopBy::Peer => "peer_ip",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alerts::{AlertEngine, AlertPolicy};
    use crate::event::{Endpoint, Host, Kind, ProcessRef, Severity, TlsFacts};
    use crate::events::Role;

    fn event(peer: &str, at_ms: u64) -> Event {
        Event {
            schema: crate::event::SCHEMA,
            event_id: uuid::Uuid::now_v7().to_string(),
            time: "t".into(),
            host: Host {
                id: "m".into(),
                name: "h".into(),
            },
            kind: Kind::HandshakeFailure,
            severity: Severity::Error,
            process: Some(ProcessRef {
                pid: 9,
                comm: "curl".into(),
                exe: Some("/usr/bin/curl".into()),
                unit: None,
                uid: Some(0),
                container: None,
            }),
            role: Role::Client,
            local: Some(Endpoint {
                ip: "127.0.0.1".into(),
                port: 40000,
            }),
            peer: Some(Endpoint {
                ip: peer.into(),
                port: 8443,
            }),
            sni: Some("localhost".into()),
            tls: TlsFacts::default(),
            alert: None,
            stage: Some("certificate".into()),
            cause: "self_signed".into(),
            inferred: false,
            message: "m".into(),
            certificate: None,
            count: 1,
            first_seen: "a".into(),
            last_seen: "a".into(),
            peers: None,
            first_ms: at_ms,
            last_ms: at_ms,
        }
    }

    fn temp_db(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("tlsmon-store-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir.join("sub/tlsmon.db")
    }

    #[test]
    fn migrations_run_once_and_a_newer_schema_is_refused() {
        let path = temp_db("migrate");
        drop(open(&path).unwrap());
        let c = open(&path).unwrap();
        let v: i64 = c
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .unwrap();
        assert_eq!(v, MIGRATIONS.len() as i64);
        let mode: String = c
            .pragma_query_value(None, "journal_mode", |r| r.get(0))
            .unwrap();
        assert_eq!(mode, "wal");
        c.pragma_update(None, "user_version", 99).unwrap();
        drop(c);
        let e = open(&path).unwrap_err().to_string();
        assert!(e.contains("schema version 99"), "{e}");
    }

    #[test]
    fn counted_alerts_keep_one_row_with_the_count_in_the_document() {
        let path = temp_db("count");
        let mut c = open(&path).unwrap();
        let mut engine = AlertEngine::new(AlertPolicy {
            window_ms: 60_000,
            flood_peers: 50,
        });
        let mut batch: Vec<Write> = (0..1000)
            .map(|i| Write::Alert(engine.observe(event("127.0.0.1", 1000 + i))))
            .collect();
        batch.push(Write::Alert(engine.observe(event("10.9.9.9", 5000))));
        assert_eq!(apply(&mut c, &batch, false).unwrap(), 2);
        let all = failures(&c, &FailureQuery::default()).unwrap();
        assert_eq!(all.len(), 2);
        let lo = &all[1];
        assert_eq!(lo["count"], 1000);
        assert_eq!(lo["last_seen"], "a");
        let only = failures(
            &c,
            &FailureQuery {
                peer: Some("10.0.0.0/8".into()),
                process: Some("curl".into()),
                ..FailureQuery::default()
            },
        )
        .unwrap();
        assert_eq!(only.len(), 1);
        assert_eq!(only[0]["peer"]["ip"], "10.9.9.9");
        let none = failures(
            &c,
            &FailureQuery {
                cause: Some("cert_expired".into()),
                ..FailureQuery::default()
            },
        )
        .unwrap();
        assert!(none.is_empty());
        assert!(
            failures(
                &c,
                &FailureQuery {
                    peer: Some("x".into()),
                    ..Default::default()
                }
            )
            .is_err()
        );
        let top = top(&c, TopBy::Process, 0, 5).unwrap();
        assert_eq!(top, vec![("curl".into(), "self_signed".into(), 1001)]);
    }

    #[test]
    fn retention_deletes_by_age() {
        let path = temp_db("retention");
        let mut c = open(&path).unwrap();
        let mut engine = AlertEngine::new(AlertPolicy {
            window_ms: 1,
            flood_peers: 50,
        });
        let batch = vec![
            Write::Alert(engine.observe(event("10.0.0.1", 1_000))),
            Write::Alert(engine.observe(event("10.0.0.2", 50_000))),
        ];
        apply(&mut c, &batch, false).unwrap();
        let r = Retention {
            max_age_ms: 10_000,
            max_bytes: u64::MAX,
        };
        assert_eq!(enforce_retention(&c, r, 55_000).unwrap(), 1);
        assert_eq!(failures(&c, &FailureQuery::default()).unwrap().len(), 1);
    }

    #[test]
    fn the_writer_thread_commits_and_flushes() {
        let path = temp_db("writer");
        let w = Writer::start(
            &path,
            Retention {
                max_age_ms: u64::MAX / 2,
                max_bytes: u64::MAX,
            },
            None,
        )
        .unwrap();
        let mut engine = AlertEngine::new(AlertPolicy {
            window_ms: 60_000,
            flood_peers: 50,
        });
        w.tx.send(Write::Alert(engine.observe(event("127.0.0.1", 1))))
            .unwrap();
        w.tx.send(Write::Counter("ring_drops", 3)).unwrap();
        assert!(w.flush(Duration::from_secs(10)));
        let r = open_reader(&path).unwrap();
        assert_eq!(failures(&r, &FailureQuery::default()).unwrap().len(), 1);
        let drops: i64 = r
            .query_row(
                "SELECT value FROM counters WHERE name = 'ring_drops'",
                [],
                |x| x.get(0),
            )
            .unwrap();
        assert_eq!(drops, 3);
        w.close();
    }
}
