//! The store's one writer: a thread that takes [`Write`]s from a bounded queue and commits
//! them in batches (one transaction each), keeps the outbox within its bounds and applies
//! retention, so the daemon loop never waits on the disk.

use std::{
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
        mpsc,
    },
    time::Duration,
};

use rusqlite::{Connection, params, params_from_iter};

use super::held::{HELD_MAX, Held, Unstored};
use super::recovery::open_or_set_aside;
use super::{StoreError, Write, identity, outbox};
use crate::{
    alert::{Event, Update, wire_name},
    clock::now_ms,
};

/// Retention limits.
#[derive(Debug, Clone, Copy)]
pub struct Retention {
    pub max_age_ms: u64,
    pub max_bytes: u64,
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
            "UPDATE alerts SET count = ?2, last_ms = MAX(last_ms, ?3),
               doc = json_set(doc, '$.count', ?2,
                              '$.last_seen', CASE WHEN ?3 >= last_ms THEN ?4
                                                  ELSE json_extract(doc, '$.last_seen') END,
                              '$.peers', COALESCE(?5, json_extract(doc, '$.peers')))
             WHERE event_id = ?1",
        )?;
        let mut success = tx.prepare_cached(
            "INSERT INTO successes (exe, peer_ip, version, cipher, count, last_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)
             ON CONFLICT (exe, peer_ip, version, cipher)
             DO UPDATE SET count = count + excluded.count,
                           last_ms = MAX(last_ms, excluded.last_ms)",
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
                Write::Successes(counted) => {
                    for s in counted {
                        success.execute(params![
                            s.exe,
                            s.peer_ip,
                            s.version,
                            s.cipher,
                            s.count as i64,
                            s.at_ms as i64
                        ])?;
                    }
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
    /// Times the database was found removed or replaced and a new one opened.
    pub reopened: AtomicU64,
    /// Why writing fails now (a full disk), None while it works.
    pub failing: std::sync::Mutex<Option<String>>,
    /// Writes held in memory until the database takes them again.
    pub held: AtomicU64,
    /// Alerts dropped from memory before the database came back (each in a gap record).
    pub unstored_alerts: AtomicU64,
}

impl StoreStats {
    /// Why writing fails now, if it does.
    pub fn failing(&self) -> Option<String> {
        self.failing.lock().ok().and_then(|f| f.clone())
    }

    /// Sets or clears the failure; the previous one.
    fn set_failing(&self, why: Option<String>) -> Option<String> {
        self.failing
            .lock()
            .map(|mut f| std::mem::replace(&mut *f, why))
            .unwrap_or(None)
    }
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
        outbox: Option<outbox::OutboxPolicy>,
    ) -> Result<Writer, StoreError> {
        let mut conn = open_or_set_aside(path)?;
        let (tx, rx) = mpsc::sync_channel::<Write>(QUEUE);
        let stats = Arc::new(StoreStats::default());
        let st = stats.clone();
        let owned = path.to_path_buf();
        let thread = std::thread::Builder::new()
            .name("tlsmon-store".into())
            .spawn(move || writer_loop(&mut conn, &rx, &st, retention, outbox, &owned))
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

/// A new connection to the database at `db` (moved aside first if damaged); the old one is
/// closed first: closing it removes its -wal and -shm by name, which must not be the new
/// database's. Returns the identity of the file now open, or None when none could be
/// opened (then `conn` is a placeholder nothing may be written to).
fn reopen(conn: &mut Connection, db: &Path, stats: &StoreStats) -> Option<(u64, u64)> {
    if let Ok(mem) = Connection::open_in_memory() {
        drop(std::mem::replace(conn, mem));
    }
    match open_or_set_aside(db) {
        Ok(fresh) => {
            *conn = fresh;
            stats.reopened.fetch_add(1, Ordering::Relaxed);
            identity(db)
        }
        Err(e) => {
            stats.write_errors.fetch_add(1, Ordering::Relaxed);
            tracing::error!(database = %db.display(), error = %e, "cannot open a new database");
            None
        }
    }
}

/// Milliseconds on the monotonic clock (intervals), never 0 (0 means "not yet").
fn steady_ms() -> u64 {
    crate::clock::monotonic_ns() / 1_000_000 + 1
}

/// The daemon is stopping: one last try for what the database refused; what it still
/// refuses is said (those alerts are only in the log).
fn last_try_at_exit(conn: &mut Connection, held: &mut Held, outbox: bool, path: &str) {
    if held.is_empty() {
        return;
    }
    let rest = held.take();
    if let Err(e) = apply(conn, &rest, outbox) {
        let alerts = rest
            .iter()
            .filter(|w| matches!(w, Write::Alert(Update::New(_))))
            .count();
        tracing::error!(
            database = path,
            error = %e,
            writes = rest.len(),
            alerts,
            "stopping while the database refuses writes: these alerts were not stored (they are in the log)"
        );
    }
}

fn is_disk_full(e: &rusqlite::Error) -> bool {
    e.sqlite_error_code() == Some(rusqlite::ErrorCode::DiskFull)
}

/// Once writing works again: says which alerts were not stored, in the log and, with MQTT,
/// as a gap record in the outbox (kept for the next try if it cannot be written).
fn record_unstored(
    conn: &Connection,
    outbox: Option<&outbox::OutboxPolicy>,
    u: Unstored,
    path: &str,
    held: &mut Held,
) {
    tracing::error!(
        database = path,
        alerts = u.alerts,
        first_ms = u.first_ms,
        last_ms = u.last_ms,
        "alerts not stored while the database failed (they were logged)"
    );
    if let Some(policy) = outbox
        && let Err(e) = outbox::queue_gap(
            conn,
            &policy.host,
            "store_failed",
            (u.alerts, u.first_ms, u.last_ms),
            now_ms(),
        )
    {
        tracing::warn!(database = path, error = %e, "cannot queue the gap record yet");
        held.restore_unstored(u);
    }
}

fn writer_loop(
    conn: &mut Connection,
    rx: &mpsc::Receiver<Write>,
    stats: &StoreStats,
    retention: Retention,
    outbox: Option<outbox::OutboxPolicy>,
    db: &Path,
) {
    let shown = db.display().to_string();
    let path = shown.as_str();
    let mut last_retention = 0u64;
    let mut last_bounds = 0u64;
    let mut last_check = 0u64;
    let mut opened_as = identity(db);
    let mut batch = Vec::with_capacity(BATCH);
    let mut held = Held::new(HELD_MAX);
    let mut last_failure = 0u64;
    loop {
        match rx.recv_timeout(Duration::from_secs(1)) {
            Ok(w) => batch.push(w),
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                last_try_at_exit(conn, &mut held, outbox.is_some(), path);
                return;
            }
        }
        while batch.len() < BATCH {
            match rx.try_recv() {
                Ok(w) => batch.push(w),
                Err(_) => break,
            }
        }
        // What the database could not take before goes first.
        let had_held = !held.is_empty();
        if had_held {
            let mut all = held.take();
            all.append(&mut batch);
            batch = all;
        }
        // Removed or replaced under us (an operator's rm, a restore): a new database at the
        // path, said loudly, before this batch is written; what the old file held stays
        // with it.
        // Intervals on the steady clock: a wall clock set back must not pause them.
        let checked = steady_ms();
        let mut reopened = false;
        if !batch.is_empty() || checked.saturating_sub(last_check) >= 1_000 {
            last_check = checked;
            let current = identity(db);
            if current != opened_as {
                tracing::error!(
                    database = path,
                    "the database file was removed or replaced while tlsmon ran: writing to a new one"
                );
                opened_as = reopen(conn, db, stats);
                reopened = true;
            }
        }
        // While the database refuses writes, one try a second (a database made again just
        // now is tried at once): what comes meanwhile waits, in order.
        if had_held && !reopened && steady_ms().saturating_sub(last_failure) < 1_000 {
            held.hold(batch.drain(..));
            stats.held.store(held.len() as u64, Ordering::Relaxed);
            continue;
        }
        if !batch.is_empty() {
            // A write that fails may be the file's fault (its WAL removed by a
            // non-atomic `rm tlsmon.db*`, a damaged page): one new connection, one retry.
            let mut result = match opened_as {
                Some(_) => apply(conn, &batch, outbox.is_some()),
                None => Err(rusqlite::Error::InvalidPath(db.to_path_buf())),
            };
            // A full disk is not the file's fault: no new connection for it.
            if let Err(e) = &result
                && !is_disk_full(e)
            {
                if stats.failing().is_none() {
                    tracing::warn!(database = path, error = %e, "write failed: opening the database again");
                }
                opened_as = reopen(conn, db, stats);
                if opened_as.is_some() {
                    result = apply(conn, &batch, outbox.is_some());
                }
            }
            match result {
                Ok(n) => {
                    stats.alerts_inserted.fetch_add(n, Ordering::Relaxed);
                    stats.batches.fetch_add(1, Ordering::Relaxed);
                    if stats.set_failing(None).is_some() {
                        tracing::warn!(database = path, "writing to the database again");
                    }
                    if let Some(u) = held.take_unstored() {
                        record_unstored(conn, outbox.as_ref(), u, path, &mut held);
                    }
                    for w in batch.drain(..) {
                        if let Write::Flush(done) = w {
                            let _ = done.send(());
                        }
                    }
                }
                Err(e) => {
                    stats.write_errors.fetch_add(1, Ordering::Relaxed);
                    if stats.set_failing(Some(e.to_string())).is_none() {
                        tracing::error!(
                            database = path,
                            error = %e,
                            "cannot write to the database: alerts still go to the log and /metrics, and are held in memory (up to {HELD_MAX} writes) until it can"
                        );
                    }
                    held.hold(batch.drain(..));
                    last_failure = steady_ms();
                    stats
                        .unstored_alerts
                        .store(held.dropped_total(), Ordering::Relaxed);
                }
            }
            stats.held.store(held.len() as u64, Ordering::Relaxed);
        }
        // Bounds and retention wait while writing fails.
        if !held.is_empty() {
            continue;
        }
        let now = now_ms();
        let steady = steady_ms();
        if let Some(policy) = &outbox
            && steady.saturating_sub(last_bounds) >= 1_000
        {
            last_bounds = steady;
            match outbox::enforce(conn, policy, now) {
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
        if steady.saturating_sub(last_retention) > 60_000 {
            last_retention = steady;
            match enforce_retention(conn, retention, now) {
                Ok(0) => {}
                Ok(n) => tracing::info!(database = path, deleted = n, "retention"),
                Err(e) => tracing::warn!(database = path, error = %e, "retention failed"),
            }
        }
    }
}

#[cfg(test)]
mod tests;
