//! What the fleet web page needs beyond the view: the chart's points and the recent
//! failures under the page's site and cause filters, and the filters' choices.

use super::super::page::{FleetPage, Recent};
use super::super::sql::{Cell, SqlError, Val};
use super::{FleetStore, get};

/// The page's query: its time range, filters and how many recent failures.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PageQuery {
    pub since_ms: i64,
    pub site: Option<String>,
    pub cause: Option<String>,
    /// Rows of each table and recent failures listed.
    pub top: usize,
}

/// `AND`-clauses every page query shares: `$1` since, `$2` site, `$3` cause ('' = any).
const FILTER: &str = "last_ms >= $1 AND severity = 'error' AND ($2 = '' OR site = $2) \
                      AND ($3 = '' OR cause = $3)";

impl FleetStore {
    /// The page's data as of `now_ms`.
    pub fn page(&mut self, q: &PageQuery, now_ms: i64) -> Result<FleetPage, SqlError> {
        let view = self.view(q.since_ms, now_ms, q.top)?;
        let params = [
            Val::Int(q.since_ms),
            Val::Text(q.site.clone().unwrap_or_default()),
            Val::Text(q.cause.clone().unwrap_or_default()),
        ];
        let c = &mut self.conn;
        let hours = c
            .query(
                &format!(
                    "SELECT (last_ms / 3600000) * 3600000 AS hour, cause, CAST(SUM(count) AS BIGINT)
                     FROM fleet_events WHERE {FILTER} GROUP BY hour, cause ORDER BY hour, cause"
                ),
                &params,
            )?
            .iter()
            .map(|r| {
                (
                    get(r, 0).int(),
                    get(r, 1).text(),
                    get(r, 2).int().max(0) as u64,
                )
            })
            .collect();
        let mut with_limit = params.to_vec();
        with_limit.push(Val::Int(q.top.max(1) as i64));
        let recent = c
            .query(
                &format!(
                    "SELECT last_ms, site, host_name, process, role, server, client, cause,
                            message, remedy, count
                     FROM fleet_events WHERE {FILTER} ORDER BY last_ms DESC, event_id LIMIT $4"
                ),
                &with_limit,
            )?
            .iter()
            .map(|r| Recent {
                last_ms: get(r, 0).int(),
                site: get(r, 1).text(),
                host_name: get(r, 2).text(),
                process: get(r, 3).text(),
                role: get(r, 4).text(),
                server: get(r, 5).text(),
                client: get(r, 6).text(),
                cause: get(r, 7).text(),
                message: get(r, 8).text(),
                remedy: match get(r, 9) {
                    Cell::Null => None,
                    c => Some(c.text()),
                },
                count: get(r, 10).int().max(0) as u64,
            })
            .collect();
        let since = std::slice::from_ref(&params[0]);
        let distinct = |c: &mut super::Conn, col: &str| -> Result<Vec<String>, SqlError> {
            Ok(c.query(
                &format!(
                    "SELECT DISTINCT {col} FROM fleet_events WHERE last_ms >= $1 ORDER BY {col}"
                ),
                since,
            )?
            .iter()
            .map(|r| get(r, 0).text())
            .collect())
        };
        let sites = distinct(c, "site")?;
        let causes = distinct(c, "cause")?;
        Ok(FleetPage {
            view,
            hours,
            recent,
            sites,
            causes,
        })
    }
}
