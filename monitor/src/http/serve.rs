//! HTTP plumbing shared by the daemon's status endpoint and the aggregator's fleet endpoint:
//! binding a TCP or unix listener, serving an axum router until told to stop, the
//! OpenMetrics answer, and the `since=` durations both accept. The routes themselves live
//! with each service (`daemon::endpoint`, `fleet::endpoint`).

use std::time::Duration;

use axum::{
    Router,
    http::header,
    response::{IntoResponse, Response},
};
use prometheus_client::{encoding::text::encode, registry::Registry};

use crate::config::Listen;

/// Who may connect to a unix socket endpoint (a TCP listener is open to every local user).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SocketAccess {
    /// Its owner only (mode 0600).
    Owner,
    /// Its owner and the members of this group (mode 0660); a directory made for it is
    /// 0750 with that group.
    Group(u32),
}

/// Binds the listener (before capture starts, so `/healthz` answers during attach).
pub async fn bind(listen: &Listen, access: SocketAccess) -> anyhow::Result<Bound> {
    match listen {
        Listen::Tcp(a) => Ok(Bound::Tcp(tokio::net::TcpListener::bind(a).await.map_err(
            |e| anyhow::anyhow!("status endpoint: cannot listen on {a}: {e}"),
        )?)),
        Listen::Unix(p) => Ok(Bound::Unix(bind_unix(p, access)?)),
    }
}

fn bind_unix(
    p: &std::path::Path,
    access: SocketAccess,
) -> anyhow::Result<tokio::net::UnixListener> {
    use std::os::unix::fs::{PermissionsExt, lchown};
    let context = |what: &str, e: std::io::Error| {
        anyhow::anyhow!("status endpoint: cannot {what} {}: {e}", p.display())
    };
    if let Some(dir) = p.parent()
        && !dir.exists()
    {
        std::fs::create_dir_all(dir).map_err(|e| context("create the directory of", e))?;
        if let SocketAccess::Group(gid) = access {
            lchown(dir, None, Some(gid)).map_err(|e| context("give the directory of", e))?;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o750))
                .map_err(|e| context("set the mode of the directory of", e))?;
        }
    }
    // A socket left by a previous run.
    let _ = std::fs::remove_file(p);
    // The socket is born with its final mode (no moment where others may connect), and its
    // group is given without following a link someone may have put at the path.
    let umask = match access {
        SocketAccess::Owner => 0o177,
        SocketAccess::Group(_) => 0o117,
    };
    // SAFETY: umask(2) only swaps the process's file mode mask; restored right after.
    let old = unsafe { libc::umask(umask) };
    let bound = tokio::net::UnixListener::bind(p);
    // SAFETY: as above.
    unsafe { libc::umask(old) };
    let l = bound.map_err(|e| context("listen on", e))?;
    if let SocketAccess::Group(gid) = access {
        lchown(p, None, Some(gid)).map_err(|e| context("give the group", e))?;
    }
    Ok(l)
}

pub enum Bound {
    Tcp(tokio::net::TcpListener),
    Unix(tokio::net::UnixListener),
}

impl Bound {
    pub fn local(&self) -> String {
        match self {
            Bound::Tcp(l) => l
                .local_addr()
                .map_or_else(|_| "?".into(), |a| a.to_string()),
            Bound::Unix(l) => l
                .local_addr()
                .ok()
                .and_then(|a| a.as_pathname().map(|p| format!("unix:{}", p.display())))
                .unwrap_or_else(|| "unix:?".into()),
        }
    }

    /// Serves until `stop` resolves.
    pub async fn serve(
        self,
        app: Router,
        stop: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        match self {
            Bound::Tcp(l) => axum::serve(l, app).with_graceful_shutdown(stop).await,
            Bound::Unix(l) => axum::serve(l, app).with_graceful_shutdown(stop).await,
        }
    }
}

/// A `/metrics` answer.
pub fn openmetrics(body: String) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        body,
    )
        .into_response()
}

/// A registry in the text exposition format (empty if encoding fails).
pub fn encode_registry(registry: &Registry) -> String {
    let mut out = String::new();
    if encode(&mut out, registry).is_err() {
        out.clear();
    }
    out
}

/// "90s", "15m", "1h", "7d" → duration; a bare number is unix ms (absolute).
pub fn parse_since(s: &str, now_ms: u64) -> Result<u64, String> {
    let s = s.trim();
    if let Ok(ms) = s.parse::<u64>() {
        return Ok(ms);
    }
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = num
        .parse()
        .map_err(|_| format!("since: expected 90s, 15m, 1h, 7d or unix ms, got {s:?}"))?;
    let secs = match unit {
        "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        "d" => n * 86_400,
        _ => return Err(format!("since: unknown unit in {s:?} (s, m, h, d)")),
    };
    Ok(now_ms.saturating_sub(Duration::from_secs(secs).as_millis() as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_accepts_durations_and_unix_ms() {
        assert_eq!(parse_since("90s", 100_000), Ok(10_000));
        assert_eq!(parse_since("1h", 7_200_000), Ok(3_600_000));
        assert_eq!(parse_since("2d", 1), Ok(0));
        assert_eq!(parse_since("1700000000000", 5), Ok(1_700_000_000_000));
        assert!(parse_since("1y", 5).unwrap_err().contains("unknown unit"));
        assert!(parse_since("soon", 5).is_err());
    }
}
