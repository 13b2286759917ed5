//! A database removed, replaced or damaged under the daemon: what is not a sound SQLite
//! database is moved aside and a new one started, never written over.

use std::path::{Path, PathBuf};

use rusqlite::Connection;

use super::{StoreError, open};
use crate::clock::now_ms;

/// A database SQLite says is not one, or is damaged.
fn is_corrupt(e: &StoreError) -> bool {
    matches!(e, StoreError::Sqlite {
        source: rusqlite::Error::SqliteFailure(f, _), ..
    } if matches!(f.code, rusqlite::ErrorCode::NotADatabase | rusqlite::ErrorCode::DatabaseCorrupt))
}

/// A file that starts as every SQLite database does (or is empty, or absent): a file
/// written over by something else (opened read-only, SQLite would say "readonly", not
/// "not a database") is not one.
fn sqlite_file(path: &Path) -> bool {
    use std::io::Read as _;
    let mut head = [0u8; 16];
    match std::fs::File::open(path) {
        Err(_) => true,
        Ok(mut f) => match f.read(&mut head) {
            Ok(0) => true,
            Ok(n) => n == head.len() && &head == b"SQLite format 3\0",
            Err(_) => true,
        },
    }
}

/// Opens the database; a file that is not a (sound) SQLite database is moved aside
/// (`<path>.corrupt-<unix seconds>`, with its -wal and -shm) and a new one started.
pub fn open_or_set_aside(path: &Path) -> Result<Connection, StoreError> {
    // Checked before SQLite opens it: with a WAL left beside it, SQLite would read the old
    // pages from the WAL and take the file for a database.
    if !sqlite_file(path) {
        set_aside(path, "it is not an SQLite database")?;
        return open(path);
    }
    match open(path) {
        Err(e) if is_corrupt(&e) => {
            set_aside(path, &e.to_string())?;
            open(path)
        }
        other => other,
    }
}

/// Moves the file and its -wal and -shm to `<path>.corrupt-<unix seconds>...`, saying so.
fn set_aside(path: &Path, why: &str) -> Result<(), StoreError> {
    let stamp = now_ms() / 1000;
    let aside = |suffix: &str| {
        let mut from = path.as_os_str().to_owned();
        from.push(suffix);
        let mut to = path.as_os_str().to_owned();
        to.push(format!(".corrupt-{stamp}{suffix}"));
        (PathBuf::from(from), PathBuf::from(to))
    };
    for suffix in ["", "-wal", "-shm"] {
        let (from, to) = aside(suffix);
        if from.exists() {
            std::fs::rename(&from, &to).map_err(|source| StoreError::Dir {
                path: path.display().to_string(),
                source,
            })?;
        }
    }
    tracing::error!(
        database = %path.display(),
        moved_to = %aside("").1.display(),
        why,
        "the database is damaged: moved aside, starting a new one"
    );
    Ok(())
}
