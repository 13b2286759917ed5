//! The fleet store: every event once (keyed by `event_id`, so a redelivered or duplicated
//! message changes nothing but a higher count), gap records, and one row per host (its
//! retained status and latest summary). SQLite for one aggregator, PostgreSQL for several
//! writing one shared view; the statements are the same.

use super::{
    message::{FleetEvent, FleetGap, HostStatus, HostSummary, Message},
    sql::{Cell, Conn, SqlError, Val},
    view::{FleetView, HostRow, Hour, Row, Totals},
};
use std::path::Path;

use crate::config::FleetStoreUrl;

mod page;
pub use page::PageQuery;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS fleet_events (
    event_id TEXT PRIMARY KEY,
    site TEXT NOT NULL,
    host_id TEXT NOT NULL,
    host_name TEXT NOT NULL,
    kind TEXT NOT NULL,
    severity TEXT NOT NULL,
    role TEXT NOT NULL,
    process TEXT NOT NULL,
    server TEXT NOT NULL,
    client TEXT NOT NULL,
    sni TEXT,
    cause TEXT NOT NULL,
    message TEXT NOT NULL,
    remedy TEXT,
    count BIGINT NOT NULL,
    first_ms BIGINT NOT NULL,
    last_ms BIGINT NOT NULL,
    received_ms BIGINT NOT NULL
);
CREATE INDEX IF NOT EXISTS fleet_events_last ON fleet_events (last_ms);
CREATE TABLE IF NOT EXISTS fleet_gaps (
    event_id TEXT PRIMARY KEY,
    site TEXT NOT NULL,
    host_id TEXT NOT NULL,
    reason TEXT NOT NULL,
    dropped BIGINT NOT NULL,
    first_ms BIGINT NOT NULL,
    last_ms BIGINT NOT NULL,
    received_ms BIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS fleet_programs (
    site TEXT NOT NULL,
    host_id TEXT NOT NULL,
    comm TEXT NOT NULL,
    exe TEXT NOT NULL,
    PRIMARY KEY (site, host_id, comm)
);
CREATE TABLE IF NOT EXISTS fleet_hosts (
    site TEXT NOT NULL,
    host_id TEXT NOT NULL,
    host_name TEXT NOT NULL DEFAULT '',
    state TEXT NOT NULL DEFAULT 'unknown',
    version TEXT NOT NULL DEFAULT '',
    state_ms BIGINT NOT NULL DEFAULT 0,
    judged BIGINT NOT NULL DEFAULT 0,
    failed BIGINT NOT NULL DEFAULT 0,
    summary_ms BIGINT NOT NULL DEFAULT 0,
    last_event_ms BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (site, host_id)
)";

/// What one batch changed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Recorded {
    /// Event ids seen for the first time.
    pub new_events: u64,
    /// Event ids already stored (redelivery, a second aggregator, a count update).
    pub duplicates: u64,
    pub gaps: u64,
    pub host_updates: u64,
}

pub struct FleetStore {
    conn: Conn,
    /// Shown in logs and the status (no password).
    pub name: String,
}

impl FleetStore {
    /// Connects and creates the tables if needed.
    /// `ca_file`: the CA certificates a PostgreSQL server's certificate is checked
    /// against (PEM; default: the system's).
    pub fn open(url: &FleetStoreUrl, ca_file: Option<&Path>) -> Result<FleetStore, SqlError> {
        let mut conn = match url {
            FleetStoreUrl::Sqlite(p) => Conn::sqlite(p)?,
            FleetStoreUrl::Postgres(u) => Conn::postgres(u, ca_file)?,
        };
        let postgres = conn.is_postgres();
        conn.transaction(|c| {
            if postgres {
                // Aggregators starting together must not race on CREATE TABLE.
                c.batch("SELECT pg_advisory_xact_lock(7415263)")?;
            }
            c.batch(SCHEMA)?;
            // Stores made before events carried a remedy get the column.
            if postgres {
                c.batch("ALTER TABLE fleet_events ADD COLUMN IF NOT EXISTS remedy TEXT")
            } else if c
                .query(
                    "SELECT COUNT(*) FROM pragma_table_info('fleet_events') WHERE name = 'remedy'",
                    &[],
                )?
                .first()
                .and_then(|r| r.first())
                .is_some_and(|n| n.int() == 0)
            {
                c.batch("ALTER TABLE fleet_events ADD COLUMN remedy TEXT")
            } else {
                Ok(())
            }
        })?;
        Ok(FleetStore {
            conn,
            name: url.to_string(),
        })
    }

    /// Stores a batch in one transaction.
    pub fn record(&mut self, batch: &[Message], now_ms: i64) -> Result<Recorded, SqlError> {
        self.conn.transaction(|c| {
            let mut r = Recorded::default();
            for m in batch {
                match m {
                    Message::Event(e) => {
                        if insert_event(c, e, now_ms)? {
                            r.new_events += 1;
                        } else {
                            r.duplicates += 1;
                        }
                    }
                    Message::Gap(g) => r.gaps += insert_gap(c, g, now_ms)?,
                    Message::Status(s) => r.host_updates += upsert_status(c, s)?,
                    Message::Summary(s) => r.host_updates += upsert_summary(c, s)?,
                }
            }
            Ok(r)
        })
    }

    /// Deletes events and gaps last seen before `before_ms`.
    pub fn prune(&mut self, before_ms: i64) -> Result<u64, SqlError> {
        let n = self.conn.exec(
            "DELETE FROM fleet_events WHERE last_ms < $1",
            &[Val::Int(before_ms)],
        )?;
        Ok(n + self.conn.exec(
            "DELETE FROM fleet_gaps WHERE last_ms < $1",
            &[Val::Int(before_ms)],
        )?)
    }

    /// The fleet view over events last seen since `since_ms`, `top` rows per list.
    pub fn view(&mut self, since_ms: i64, now_ms: i64, top: usize) -> Result<FleetView, SqlError> {
        let since = Val::Int(since_ms);
        let limit = Val::Int(top.max(1) as i64);
        let c = &mut self.conn;
        let t = c.query(
            "SELECT COUNT(*),
                    CAST(COALESCE(SUM(CASE WHEN severity = 'error' THEN count ELSE 0 END), 0) AS BIGINT),
                    CAST(COALESCE(SUM(CASE WHEN severity = 'error' THEN 0 ELSE count END), 0) AS BIGINT),
                    COUNT(DISTINCT site || '/' || host_id)
             FROM fleet_events WHERE last_ms >= $1",
            std::slice::from_ref(&since),
        )?;
        let g = c.query(
            "SELECT COUNT(*), CAST(COALESCE(SUM(dropped), 0) AS BIGINT)
             FROM fleet_gaps WHERE last_ms >= $1",
            std::slice::from_ref(&since),
        )?;
        let h = c.query(
            "SELECT COUNT(*), CAST(COALESCE(SUM(CASE WHEN state = 'online' THEN 1 ELSE 0 END), 0) AS BIGINT)
             FROM fleet_hosts",
            &[],
        )?;
        let cell = |rows: &Vec<Vec<Cell>>, i: usize| {
            rows.first()
                .and_then(|r| r.get(i))
                .map_or(0, |c| c.int().max(0) as u64)
        };
        let totals = Totals {
            events: cell(&t, 0),
            failures: cell(&t, 1),
            warnings: cell(&t, 2),
            failing_hosts: cell(&t, 3),
            hosts: cell(&h, 0),
            hosts_online: cell(&h, 1),
            gaps: cell(&g, 0),
            dropped: cell(&g, 1),
        };
        let ranked = |c: &mut Conn, key: &str, filter: &str| {
            let sql = format!(
                "SELECT {key}, cause, CAST(SUM(count) AS BIGINT) AS n, COUNT(*),
                        COUNT(DISTINCT site || '/' || host_id)
                 FROM fleet_events WHERE last_ms >= $1 AND severity = 'error' {filter}
                 GROUP BY {key}, cause ORDER BY n DESC, {key}, cause LIMIT $2"
            );
            c.query(&sql, &[since.clone(), limit.clone()])
                .map(|rows| rows.iter().map(|r| row(r)).collect::<Vec<Row>>())
        };
        let by_cause = {
            let rows = c.query(
                "SELECT cause, '', CAST(SUM(count) AS BIGINT) AS n, COUNT(*),
                        COUNT(DISTINCT site || '/' || host_id)
                 FROM fleet_events WHERE last_ms >= $1 AND severity = 'error'
                 GROUP BY cause ORDER BY n DESC, cause LIMIT $2",
                &[since.clone(), limit.clone()],
            )?;
            rows.iter().map(|r| row(r)).collect()
        };
        let by_server = ranked(c, "server", "")?;
        let by_client = ranked(c, "client", "")?;
        let by_process = ranked(c, "process", "AND role = 'client'")?;
        let by_host = host_rows(c, &since, &limit)?;
        let over_time = c
            .query(
                "SELECT (last_ms / 3600000) * 3600000 AS hour, CAST(SUM(count) AS BIGINT)
                 FROM fleet_events WHERE last_ms >= $1 AND severity = 'error'
                 GROUP BY hour ORDER BY hour",
                std::slice::from_ref(&since),
            )?
            .iter()
            .map(|r| Hour {
                hour: crate::clock::rfc3339(
                    (get(r, 0).int().max(0) as u64).saturating_mul(1_000_000),
                ),
                failures: get(r, 1).int().max(0) as u64,
            })
            .collect();
        Ok(FleetView {
            schema: "tlsmon.fleet/1".into(),
            store: self.name.clone(),
            generated: crate::clock::rfc3339((now_ms.max(0) as u64).saturating_mul(1_000_000)),
            since: crate::clock::rfc3339((since_ms.max(0) as u64).saturating_mul(1_000_000)),
            totals,
            by_cause,
            by_server,
            by_client,
            by_process,
            by_host,
            over_time,
        })
    }

    /// Whether the store answers (for `/readyz`).
    pub fn ping(&mut self) -> Result<(), SqlError> {
        self.conn.query("SELECT 1", &[]).map(drop)
    }
}

fn get(r: &[Cell], i: usize) -> Cell {
    r.get(i).cloned().unwrap_or(Cell::Null)
}

fn row(r: &[Cell]) -> Row {
    Row {
        name: get(r, 0).text(),
        cause: Some(get(r, 1).text()).filter(|c| !c.is_empty()),
        count: get(r, 2).int().max(0) as u64,
        events: get(r, 3).int().max(0) as u64,
        hosts: get(r, 4).int().max(0) as u64,
    }
}

fn host_rows(c: &mut Conn, since: &Val, limit: &Val) -> Result<Vec<HostRow>, SqlError> {
    let rows = c.query(
        "SELECT h.site, h.host_id, h.host_name, h.state, h.version, h.judged, h.failed,
                CAST(COALESCE(e.n, 0) AS BIGINT) AS n
         FROM fleet_hosts h LEFT JOIN (
             SELECT site, host_id, SUM(count) AS n
             FROM fleet_events WHERE last_ms >= $1 AND severity = 'error'
             GROUP BY site, host_id
         ) e ON e.site = h.site AND e.host_id = h.host_id
         ORDER BY n DESC, h.site, h.host_id LIMIT $2",
        &[since.clone(), limit.clone()],
    )?;
    // The most frequent cause of every host, in one query: rows come per host with the
    // biggest count (then the smallest name) first.
    let causes = c.query(
        "SELECT site, host_id, cause, CAST(SUM(count) AS BIGINT) AS n FROM fleet_events
         WHERE last_ms >= $1 AND severity = 'error'
         GROUP BY site, host_id, cause ORDER BY site, host_id, n DESC, cause",
        std::slice::from_ref(since),
    )?;
    let mut top: std::collections::HashMap<(String, String), String> = Default::default();
    for r in &causes {
        top.entry((get(r, 0).text(), get(r, 1).text()))
            .or_insert_with(|| get(r, 2).text());
    }
    Ok(rows
        .iter()
        .map(|r| {
            let (site, host_id) = (get(r, 0).text(), get(r, 1).text());
            HostRow {
                top_cause: top.get(&(site.clone(), host_id.clone())).cloned(),
                site,
                host_id,
                name: get(r, 2).text(),
                state: get(r, 3).text(),
                version: get(r, 4).text(),
                judged: get(r, 5).int().max(0) as u64,
                failed_handshakes: get(r, 6).int().max(0) as u64,
                failures: get(r, 7).int().max(0) as u64,
            }
        })
        .collect())
}

/// The one name a program has on a host in the fleet view: its executable path once the host
/// has reported one for that process name, else the name. A short-lived process can exit
/// before its daemon reads /proc/PID/exe, so one program's events may come with and without
/// the path: a name seen with a path takes it, and rows stored under the bare name before
/// are renamed.
fn program_name(c: &mut Conn, e: &FleetEvent) -> Result<String, SqlError> {
    let (site, host) = (
        Val::Text(e.origin.site.clone()),
        Val::Text(e.origin.host_id.clone()),
    );
    if e.comm.is_empty() || e.comm == e.process {
        let known = c.query(
            "SELECT exe FROM fleet_programs WHERE site = $1 AND host_id = $2 AND comm = $3",
            &[site, host, Val::Text(e.comm.clone())],
        )?;
        return Ok(known
            .first()
            .map(|r| get(r, 0).text())
            .filter(|exe| !exe.is_empty())
            .unwrap_or_else(|| e.process.clone()));
    }
    c.exec(
        "INSERT INTO fleet_programs (site, host_id, comm, exe) VALUES ($1, $2, $3, $4)
         ON CONFLICT (site, host_id, comm) DO UPDATE SET exe = excluded.exe",
        &[
            site.clone(),
            host.clone(),
            Val::Text(e.comm.clone()),
            Val::Text(e.process.clone()),
        ],
    )?;
    c.exec(
        "UPDATE fleet_events SET process = $4 WHERE site = $1 AND host_id = $2 AND process = $3",
        &[
            site,
            host,
            Val::Text(e.comm.clone()),
            Val::Text(e.process.clone()),
        ],
    )?;
    Ok(e.process.clone())
}

/// True when the event id was new.
fn insert_event(c: &mut Conn, e: &FleetEvent, now_ms: i64) -> Result<bool, SqlError> {
    let process = program_name(c, e)?;
    let count = Val::Int(i64::try_from(e.count).unwrap_or(i64::MAX));
    let inserted = c.exec(
        "INSERT INTO fleet_events (event_id, site, host_id, host_name, kind, severity, role,
             process, server, client, sni, cause, message, count, first_ms, last_ms, received_ms,
             remedy)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18)
         ON CONFLICT (event_id) DO NOTHING",
        &[
            Val::Text(e.event_id.clone()),
            Val::Text(e.origin.site.clone()),
            Val::Text(e.origin.host_id.clone()),
            Val::Text(e.host_name.clone()),
            Val::Text(e.kind.clone()),
            Val::Text(e.severity.clone()),
            Val::Text(e.role.clone()),
            Val::Text(process),
            Val::Text(e.server.clone()),
            Val::Text(e.client.clone()),
            e.sni.clone().map_or(Val::Null, Val::Text),
            Val::Text(e.cause.clone()),
            Val::Text(e.message.clone()),
            count.clone(),
            Val::Int(e.first_ms),
            Val::Int(e.last_ms),
            Val::Int(now_ms),
            e.remedy.clone().map_or(Val::Null, Val::Text),
        ],
    )? == 1;
    if !inserted {
        // A later document of the same alert (its count grew): keep the highest.
        c.exec(
            "UPDATE fleet_events SET count = $2, last_ms = $3, message = $4
             WHERE event_id = $1 AND count < $2",
            &[
                Val::Text(e.event_id.clone()),
                count,
                Val::Int(e.last_ms),
                Val::Text(e.message.clone()),
            ],
        )?;
    }
    c.exec(
        "INSERT INTO fleet_hosts (site, host_id, host_name, last_event_ms) VALUES ($1, $2, $3, $4)
         ON CONFLICT (site, host_id) DO UPDATE SET last_event_ms = excluded.last_event_ms,
             host_name = excluded.host_name
         WHERE fleet_hosts.last_event_ms < excluded.last_event_ms",
        &[
            Val::Text(e.origin.site.clone()),
            Val::Text(e.origin.host_id.clone()),
            Val::Text(e.host_name.clone()),
            Val::Int(e.last_ms),
        ],
    )?;
    Ok(inserted)
}

fn insert_gap(c: &mut Conn, g: &FleetGap, now_ms: i64) -> Result<u64, SqlError> {
    c.exec(
        "INSERT INTO fleet_gaps (event_id, site, host_id, reason, dropped, first_ms, last_ms, received_ms)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (event_id) DO NOTHING",
        &[
            Val::Text(g.event_id.clone()),
            Val::Text(g.origin.site.clone()),
            Val::Text(g.origin.host_id.clone()),
            Val::Text(g.reason.clone()),
            Val::Int(i64::try_from(g.dropped).unwrap_or(i64::MAX)),
            Val::Int(g.first_ms),
            Val::Int(g.last_ms),
            Val::Int(now_ms),
        ],
    )
}

fn upsert_status(c: &mut Conn, s: &HostStatus) -> Result<u64, SqlError> {
    c.exec(
        "INSERT INTO fleet_hosts (site, host_id, host_name, state, version, state_ms)
         VALUES ($1, $2, $3, $4, $5, $6)
         ON CONFLICT (site, host_id) DO UPDATE SET host_name = excluded.host_name,
             state = excluded.state, version = excluded.version, state_ms = excluded.state_ms
         WHERE fleet_hosts.state_ms <= excluded.state_ms",
        &[
            Val::Text(s.origin.site.clone()),
            Val::Text(s.origin.host_id.clone()),
            Val::Text(s.host_name.clone()),
            Val::Text(s.state.clone()),
            Val::Text(s.version.clone()),
            Val::Int(s.time_ms),
        ],
    )
}

fn upsert_summary(c: &mut Conn, s: &HostSummary) -> Result<u64, SqlError> {
    c.exec(
        "INSERT INTO fleet_hosts (site, host_id, judged, failed, summary_ms) VALUES ($1, $2, $3, $4, $5)
         ON CONFLICT (site, host_id) DO UPDATE SET judged = excluded.judged,
             failed = excluded.failed, summary_ms = excluded.summary_ms
         WHERE fleet_hosts.summary_ms <= excluded.summary_ms",
        &[
            Val::Text(s.origin.site.clone()),
            Val::Text(s.origin.host_id.clone()),
            Val::Int(i64::try_from(s.judged).unwrap_or(i64::MAX)),
            Val::Int(i64::try_from(s.failed).unwrap_or(i64::MAX)),
            Val::Int(s.time_ms),
        ],
    )
}

#[cfg(test)]
mod tests;
