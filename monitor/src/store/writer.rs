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
            "UPDATE alerts SET count = ?2, last_ms = ?3,
               doc = json_set(doc, '$.count', ?2, '$.last_seen', ?4,
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
        // Removed or replaced under us (an operator's rm, a restore): a new database at the
        // path, said loudly, before this batch is written; what the old file held stays
        // with it.
        let checked = now_ms();
        if !batch.is_empty() || checked.saturating_sub(last_check) >= 1_000 {
            last_check = checked;
            let current = identity(db);
            if current != opened_as {
                tracing::error!(
                    database = path,
                    "the database file was removed or replaced while tlsmon ran: writing to a new one"
                );
                opened_as = reopen(conn, db, stats);
            }
        }
        if !batch.is_empty() {
            // A write that fails may be the file's fault (its WAL removed by a
            // non-atomic `rm tlsmon.db*`, a damaged page): one new connection, one retry.
            let mut result = match opened_as {
                Some(_) => apply(conn, &batch, outbox.is_some()),
                None => Err(rusqlite::Error::InvalidPath(db.to_path_buf())),
            };
            if let Err(e) = &result {
                tracing::warn!(database = path, error = %e, "write failed: opening the database again");
                opened_as = reopen(conn, db, stats);
                if opened_as.is_some() {
                    result = apply(conn, &batch, outbox.is_some());
                }
            }
            match result {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alert::{AlertEngine, AlertPolicy};
    use crate::store::test_support::{event, temp_db};
    use crate::store::{FailureQuery, TopBy, failures, open, open_reader, top};

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
        assert_eq!(lo["last_seen"], "t1999", "the last occurrence's time");
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

    #[test]
    fn counted_successes_add_up_per_program_peer_version_and_cipher() {
        let path = temp_db("successes");
        let mut c = open(&path).unwrap();
        let s = |count, at_ms| super::super::Success {
            exe: "/usr/bin/curl".into(),
            peer_ip: "127.0.0.1".into(),
            version: "TLSv1.3".into(),
            cipher: "TLS_AES_256_GCM_SHA384".into(),
            count,
            at_ms,
        };
        apply(&mut c, &[Write::Successes(vec![s(3, 1_000)])], false).unwrap();
        apply(&mut c, &[Write::Successes(vec![s(2, 900)])], false).unwrap();
        let (count, last): (i64, i64) = c
            .query_row("SELECT count, last_ms FROM successes", [], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .unwrap();
        assert_eq!((count, last), (5, 1_000));
    }

    fn forever() -> Retention {
        Retention {
            max_age_ms: u64::MAX / 2,
            max_bytes: u64::MAX,
        }
    }

    #[test]
    fn a_database_removed_under_the_writer_is_started_again_before_the_next_write() {
        let path = temp_db("removed");
        let w = Writer::start(&path, forever(), None).unwrap();
        let mut engine = AlertEngine::new(AlertPolicy {
            window_ms: 60_000,
            flood_peers: 50,
        });
        w.tx.send(Write::Alert(engine.observe(event("127.0.0.1", 1))))
            .unwrap();
        assert!(w.flush(Duration::from_secs(10)));
        for suffix in ["", "-wal", "-shm"] {
            let mut p = path.as_os_str().to_owned();
            p.push(suffix);
            let _ = std::fs::remove_file(p);
        }
        w.tx.send(Write::Alert(engine.observe(event("127.0.0.2", 2))))
            .unwrap();
        assert!(w.flush(Duration::from_secs(10)));
        let r = open_reader(&path).expect("a new database at the path");
        let rows = failures(&r, &FailureQuery::default()).unwrap();
        assert_eq!(
            rows.len(),
            1,
            "the write after the removal is in the new file"
        );
        assert_eq!(w.stats.reopened.load(Ordering::Relaxed), 1);
        w.close();
    }

    #[test]
    fn a_file_that_is_not_a_database_is_moved_aside_and_a_new_one_started() {
        let path = temp_db("damaged");
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, vec![0x5a; 8192]).unwrap();
        let w = Writer::start(&path, forever(), None).expect("started over the damaged file");
        let dir = path.parent().unwrap();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let aside: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .flatten()
            .filter(|e| {
                e.file_name()
                    .to_string_lossy()
                    .starts_with(&format!("{name}.corrupt-"))
            })
            .collect();
        assert_eq!(aside.len(), 1, "the damaged file kept aside");
        assert_eq!(std::fs::read(aside[0].path()).unwrap(), vec![0x5a; 8192]);
        assert!(w.flush(Duration::from_secs(10)));
        w.close();
    }
}
