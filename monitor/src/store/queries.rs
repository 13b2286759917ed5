//! What the status endpoint and the CLI read: stored alerts by filter, and the top failing
//! processes and peers.

use rusqlite::{Connection, params};

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
    /// The failing service, `ip:port` (`[v6]:port`): a client's server, a server's listener.
    pub service: Option<String>,
    /// The failing service's port alone.
    pub port: Option<u16>,
    pub limit: Option<u32>,
}

/// Alerts matching the query, newest first, as their JSON documents.
pub fn failures(conn: &Connection, q: &FailureQuery) -> Result<Vec<serde_json::Value>, String> {
    let peer = q
        .peer
        .as_deref()
        .map(str::parse::<crate::config::Cidr>)
        .transpose()?;
    let service = q
        .service
        .as_deref()
        .map(|s| {
            s.parse::<std::net::SocketAddr>()
                .map_err(|_| format!("service {s:?}: expected ip:port or [ipv6]:port"))
        })
        .transpose()?;
    let limit = q.limit.unwrap_or(100).min(10_000) as usize;
    // The service is the listener for a server, the server's address for a client.
    let mut stmt = conn
        .prepare_cached(
            "SELECT doc, exe, process, peer_ip,
                    CASE role WHEN 'server' THEN local_ip ELSE peer_ip END,
                    CASE role WHEN 'server' THEN local_port ELSE peer_port END
             FROM alerts
             WHERE last_ms >= ?1 AND (?2 IS NULL OR cause = ?2)
               AND (?3 IS NULL OR ?3 = CASE role WHEN 'server' THEN local_port ELSE peer_port END)
             ORDER BY last_ms DESC",
        )
        .map_err(|e| e.to_string())?;
    let port = q.port.or(service.map(|s| s.port()));
    let rows = stmt
        .query_map(
            params![q.since_ms.unwrap_or(0) as i64, q.cause.as_deref(), port],
            |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, Option<String>>(1)?,
                    r.get::<_, Option<String>>(2)?,
                    r.get::<_, Option<String>>(3)?,
                    r.get::<_, Option<String>>(4)?,
                ))
            },
        )
        .map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    for row in rows {
        let (doc, exe, comm, peer_ip, service_ip) = row.map_err(|e| e.to_string())?;
        if let Some(want) = service {
            let ip = service_ip.as_deref().and_then(|s| s.parse().ok());
            if ip != Some(want.ip()) {
                continue;
            }
        }
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
