//! The MQTT outbox in SQLite: what is queued for the broker, read in order by the
//! publisher, deleted on PUBACK (`store::Write::Acked`), bounded by count and age. When the
//! bounds drop events they are replaced by one explicit gap record (how many, which time
//! range), published like an event, so consumers know what they did not get.

use rusqlite::{Connection, params};
use serde::Serialize;

use crate::config::Host;

/// Outbox rows: `event` (an alert document), `gap` (what the bounds dropped).
pub const OUTBOX_EVENT: &str = "event";
pub const OUTBOX_GAP: &str = "gap";

pub const GAP_SCHEMA: &str = "tlsmon.gap/1";

/// Bounds of the outbox.
#[derive(Debug, Clone)]
pub struct OutboxPolicy {
    pub max_events: u64,
    pub max_age_ms: u64,
    /// Names the host in gap records.
    pub host: Host,
}

/// What the bounds dropped, published in place of the dropped events.
#[derive(Debug, Clone, Serialize, PartialEq, schemars::JsonSchema)]
pub struct Gap {
    pub schema: &'static str,
    pub event_id: String,
    pub time: String,
    pub host: Host,
    /// `outbox_full`, `outbox_age`, or `store_failed` (alerts the database could not take
    /// while it failed, a full disk: dropped from memory before it came back).
    pub reason: &'static str,
    pub dropped: u64,
    /// When the first and last dropped events were queued (unix ms); for `store_failed`,
    /// when the first and last alerts not stored happened.
    pub first_ms: u64,
    pub last_ms: u64,
}

/// One queued row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pending {
    pub id: i64,
    pub kind: String,
    pub payload: String,
}

/// Up to `limit` rows after `after_id`, in order.
pub fn pending(conn: &Connection, after_id: i64, limit: usize) -> rusqlite::Result<Vec<Pending>> {
    let mut stmt = conn.prepare_cached(
        "SELECT id, kind, payload FROM outbox WHERE id > ?1 ORDER BY id LIMIT ?2",
    )?;
    let rows = stmt.query_map(params![after_id, limit as i64], |r| {
        Ok(Pending {
            id: r.get(0)?,
            kind: r.get(1)?,
            payload: r.get(2)?,
        })
    })?;
    rows.collect()
}

/// Rows waiting for the broker.
pub fn backlog(conn: &Connection) -> rusqlite::Result<u64> {
    conn.query_row("SELECT COUNT(*) FROM outbox", [], |r| r.get::<_, i64>(0))
        .map(|n| n.max(0) as u64)
}

/// Drops events older than the age bound, then the oldest beyond the count bound; each drop
/// becomes one gap record queued in the same transaction. Gap records are never dropped.
pub fn enforce(conn: &mut Connection, p: &OutboxPolicy, now_ms: u64) -> rusqlite::Result<Vec<Gap>> {
    let tx = conn.transaction()?;
    let mut gaps = Vec::new();
    let cutoff = now_ms.saturating_sub(p.max_age_ms) as i64;
    let old = drop_where(
        &tx,
        "kind = ?1 AND created_ms < ?2",
        params![OUTBOX_EVENT, cutoff],
    )?;
    let total: i64 = tx.query_row("SELECT COUNT(*) FROM outbox", [], |r| r.get(0))?;
    let excess = (total.max(0) as u64).saturating_sub(p.max_events);
    let full = if excess > 0 {
        // One more, so the gap record itself fits within the bound.
        drop_where(
            &tx,
            "id IN (SELECT id FROM outbox WHERE kind = ?1 ORDER BY id LIMIT ?2)",
            params![OUTBOX_EVENT, excess as i64 + 1],
        )?
    } else {
        None
    };
    for (reason, dropped) in [("outbox_age", old), ("outbox_full", full)] {
        let Some((n, first_ms, last_ms)) = dropped else {
            continue;
        };
        gaps.push(queue_gap(
            &tx,
            &p.host,
            reason,
            (n, first_ms, last_ms),
            now_ms,
        )?);
    }
    tx.commit()?;
    Ok(gaps)
}

/// Queues one gap record: `dropped` = (how many, first and last unix ms).
pub fn queue_gap(
    conn: &Connection,
    host: &Host,
    reason: &'static str,
    (dropped, first_ms, last_ms): (u64, u64, u64),
    now_ms: u64,
) -> rusqlite::Result<Gap> {
    let gap = Gap {
        schema: GAP_SCHEMA,
        event_id: uuid::Uuid::now_v7().to_string(),
        time: crate::clock::rfc3339(now_ms.saturating_mul(1_000_000)),
        host: host.clone(),
        reason,
        dropped,
        first_ms,
        last_ms,
    };
    conn.execute(
        "INSERT INTO outbox (event_id, kind, created_ms, payload) VALUES (?1, ?2, ?3, ?4)",
        params![
            gap.event_id,
            OUTBOX_GAP,
            now_ms as i64,
            serde_json::to_string(&gap).unwrap_or_default()
        ],
    )?;
    Ok(gap)
}

/// Deletes the rows matching `filter`; (how many, first and last created_ms) when any.
fn drop_where(
    tx: &rusqlite::Transaction<'_>,
    filter: &str,
    args: impl rusqlite::Params + Clone,
) -> rusqlite::Result<Option<(u64, u64, u64)>> {
    let (n, first, last): (i64, Option<i64>, Option<i64>) = tx.query_row(
        &format!("SELECT COUNT(*), MIN(created_ms), MAX(created_ms) FROM outbox WHERE {filter}"),
        args.clone(),
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
    )?;
    if n == 0 {
        return Ok(None);
    }
    tx.execute(&format!("DELETE FROM outbox WHERE {filter}"), args)?;
    Ok(Some((
        n as u64,
        first.unwrap_or(0).max(0) as u64,
        last.unwrap_or(0).max(0) as u64,
    )))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{self, Write};

    fn db() -> (std::path::PathBuf, Connection) {
        let path = std::env::temp_dir().join(format!(
            "tlsmon-outbox-{}-{}.db",
            std::process::id(),
            uuid::Uuid::now_v7()
        ));
        let conn = store::open(&path).expect("open");
        (path, conn)
    }

    fn queue(conn: &Connection, event_id: &str, created_ms: i64) {
        conn.execute(
            "INSERT OR REPLACE INTO outbox (event_id, kind, created_ms, payload)
             VALUES (?1, 'event', ?2, ?1)",
            params![event_id, created_ms],
        )
        .expect("queue");
    }

    fn policy(max_events: u64) -> OutboxPolicy {
        OutboxPolicy {
            max_events,
            max_age_ms: 3_600_000,
            host: Host {
                id: "m".into(),
                name: "h".into(),
            },
        }
    }

    #[test]
    fn a_full_outbox_drops_the_oldest_and_queues_one_gap_after_the_rest() {
        let (path, mut conn) = db();
        for i in 0..10 {
            queue(&conn, &format!("e{i}"), 10_000 + i);
        }
        let gaps = enforce(&mut conn, &policy(6), 20_000).expect("enforce");
        assert_eq!(gaps.len(), 1);
        let g = &gaps[0];
        assert_eq!(
            (g.reason, g.dropped, g.first_ms, g.last_ms),
            ("outbox_full", 5, 10_000, 10_004)
        );
        // Five events are left (the gap record takes the sixth place), in order, gap last.
        let rows = pending(&conn, 0, 100).expect("pending");
        let ids: Vec<&str> = rows.iter().map(|r| r.payload.as_str()).take(5).collect();
        assert_eq!(ids, ["e5", "e6", "e7", "e8", "e9"]);
        assert_eq!(rows.len(), 6);
        assert_eq!(rows[5].kind, OUTBOX_GAP);
        let doc: serde_json::Value = serde_json::from_str(&rows[5].payload).expect("json");
        assert_eq!(doc["schema"], GAP_SCHEMA);
        assert_eq!(doc["dropped"], 5);
        // Within bounds nothing more happens; gap records are never dropped.
        assert!(
            enforce(&mut conn, &policy(6), 20_000)
                .expect("again")
                .is_empty()
        );
        assert!(enforce(&mut conn, &policy(0), 20_000).expect("zero").len() == 1);
        assert_eq!(
            pending(&conn, 0, 100)
                .expect("pending")
                .iter()
                .filter(|r| r.kind == OUTBOX_GAP)
                .count(),
            2
        );
        let _ = std::fs::remove_file(path);
    }

    #[test]
    fn old_events_become_an_age_gap_and_acks_delete_rows() {
        let (path, mut conn) = db();
        queue(&conn, "old", 1_000);
        queue(&conn, "new", 9_000_000);
        let gaps = enforce(&mut conn, &policy(100), 9_000_000).expect("enforce");
        assert_eq!(gaps.len(), 1);
        assert_eq!((gaps[0].reason, gaps[0].dropped), ("outbox_age", 1));
        let rows = pending(&conn, 0, 10).expect("pending");
        assert_eq!(rows[0].payload, "new");
        store::apply(&mut conn, &[Write::Acked(vec![rows[0].id])], true).expect("ack");
        assert_eq!(backlog(&conn).expect("backlog"), 1, "only the gap is left");
        // Reading after an id skips what was already handed out.
        assert!(pending(&conn, rows[1].id, 10).expect("after").is_empty());
        let _ = std::fs::remove_file(path);
    }
}
