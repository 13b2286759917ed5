//! The SQLite history: alerts (one row per alert, its count kept current), successes per
//! (exe, peer, version, cipher), counters. WAL mode, schema versioned by `user_version`
//! with ordered migrations, retention by age and size. Writes go through one thread in
//! batches (one transaction per batch), so a storm never waits on the disk; readers open
//! their own connections (WAL lets them read while the writer writes).

mod held;
pub mod outbox;
mod queries;
mod recovery;
mod writer;

use std::{path::Path, sync::mpsc, time::Duration};

use rusqlite::{Connection, OpenFlags};

use crate::alert::Update;

pub use outbox::OutboxPolicy;
pub use queries::{FailureQuery, TopBy, failures, top};
pub use writer::{QUEUE, Retention, StoreStats, Writer, apply, enforce_retention};

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

/// Successful handshakes of one (exe, peer, version, cipher), counted since the last write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Success {
    pub exe: String,
    pub peer_ip: String,
    pub version: String,
    pub cipher: String,
    pub count: u64,
    /// Unix ms of the latest.
    pub at_ms: u64,
}

/// One write for the writer thread.
#[derive(Debug)]
pub enum Write {
    Alert(Update),
    /// Successes counted since the last such write (the daemon sums them over a second).
    Successes(Vec<Success>),
    /// Sets a counter (kernel counters, totals).
    Counter(&'static str, u64),
    /// Outbox rows the broker acknowledged (PUBACK): deleted.
    Acked(Vec<i64>),
    /// Commit everything before this and answer.
    Flush(mpsc::Sender<()>),
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
/// The database file's identity (device, inode): another one at the path means it was
/// removed or replaced under the daemon.
pub fn identity(path: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt as _;
    std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

pub fn open_reader(path: &Path) -> Result<Connection, StoreError> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(sqlite_err(path))?;
    conn.busy_timeout(Duration::from_secs(5))
        .map_err(sqlite_err(path))?;
    // A database being made again (removed or replaced under the daemon) has no tables for a
    // moment: as good as none yet, not an error for the endpoint's readers.
    let ready: bool = conn
        .query_row(
            "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'alerts')",
            [],
            |r| r.get(0),
        )
        .map_err(sqlite_err(path))?;
    if !ready {
        return Err(StoreError::Sqlite {
            path: path.display().to_string(),
            source: rusqlite::Error::QueryReturnedNoRows,
        });
    }
    Ok(conn)
}

/// Builders shared by the store's tests.
#[cfg(test)]
pub(crate) mod test_support {
    use std::path::PathBuf;

    use crate::alert::document::{Event, test_support::failure_event};

    /// A curl client's `self_signed` failure against `peer`:8443 at `at_ms`.
    pub(crate) fn event(peer: &str, at_ms: u64) -> Event {
        failure_event(peer, at_ms)
    }

    pub(crate) fn temp_db(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("tlsmon-store-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir.join("sub/tlsmon.db")
    }
}

#[cfg(test)]
mod tests {
    use super::test_support::temp_db;
    use super::*;

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
}
