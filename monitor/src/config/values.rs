//! The value types of the configuration: each parses itself from its TOML string or number
//! and refuses what it cannot be, with a message that names the expected form.

use std::{
    fmt,
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    str::FromStr,
};

use serde::{Deserialize, Deserializer, de::Error as _};

/// One level of an MQTT topic: not empty, no `/`, `+`, `#` or control characters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicLevel(pub String);

impl FromStr for TopicLevel {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s.is_empty() || s.len() > 128 {
            return Err(format!("must be 1 to 128 characters, got {s:?}"));
        }
        if s.contains(['/', '+', '#']) || s.chars().any(char::is_control) {
            return Err(format!(
                "{s:?} cannot be an MQTT topic level (no '/', '+', '#' or control characters)"
            ));
        }
        Ok(TopicLevel(s.to_owned()))
    }
}

impl<'de> Deserialize<'de> for TopicLevel {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?.parse().map_err(D::Error::custom)
    }
}

/// Where the fleet view is stored.
#[derive(Clone, PartialEq, Eq)]
pub enum FleetStoreUrl {
    Sqlite(PathBuf),
    /// A libpq connection URL (may hold a password: never printed).
    Postgres(String),
}

impl fmt::Debug for FleetStoreUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl fmt::Display for FleetStoreUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FleetStoreUrl::Sqlite(p) => write!(f, "sqlite:{}", p.display()),
            FleetStoreUrl::Postgres(u) => f.write_str(&redacted_postgres(u)),
        }
    }
}

/// A libpq connection string with every secret replaced by `***`: the password of
/// `user:password@`, a `password=` query parameter of a URL, and `password=` in the
/// key=value form (quoted or not).
pub fn redacted_postgres(u: &str) -> String {
    let hide = |k: &str| k.trim().eq_ignore_ascii_case("password");
    if let Some((scheme, rest)) = u.split_once("://") {
        let (main, query) = rest
            .split_once('?')
            .map_or((rest, None), |(m, q)| (m, Some(q)));
        // The last `@` ends the user part (a password may hold one).
        let main = match main.rsplit_once('@') {
            Some((auth, host)) if auth.contains(':') => {
                let user = auth.split_once(':').map_or(auth, |(u, _)| u);
                format!("{user}:***@{host}")
            }
            _ => main.to_owned(),
        };
        let query = query.map(|q| {
            q.split('&')
                .map(|kv| match kv.split_once('=') {
                    Some((k, _)) if hide(k) => format!("{k}=***"),
                    _ => kv.to_owned(),
                })
                .collect::<Vec<_>>()
                .join("&")
        });
        return match query {
            Some(q) => format!("{scheme}://{main}?{q}"),
            None => format!("{scheme}://{main}"),
        };
    }
    // key=value form: `host=db password='a b' user=fleet`.
    let mut out = String::with_capacity(u.len());
    let mut rest = u;
    while let Some(eq) = rest.find('=') {
        let key = &rest[..eq];
        out.push_str(key);
        out.push('=');
        let after = &rest[eq + 1..];
        let after_trimmed = after.trim_start();
        let lead = &after[..after.len() - after_trimmed.len()];
        // The value: quoted (backslash escapes) or up to the next whitespace.
        let end = if let Some(q) = after_trimmed.strip_prefix('\'') {
            let mut esc = false;
            q.char_indices()
                .find(|&(_, c)| {
                    let close = c == '\'' && !esc;
                    esc = c == '\\' && !esc;
                    close
                })
                .map_or(after_trimmed.len(), |(i, _)| i + 2)
        } else {
            after_trimmed
                .find(char::is_whitespace)
                .unwrap_or(after_trimmed.len())
        };
        let value = &after_trimmed[..end];
        out.push_str(lead);
        out.push_str(if hide(key) { "***" } else { value });
        rest = &after_trimmed[end..];
        let ws = rest.len() - rest.trim_start().len();
        out.push_str(&rest[..ws]);
        rest = &rest[ws..];
    }
    out.push_str(rest);
    out
}

impl FromStr for FleetStoreUrl {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s.starts_with("postgres://") || s.starts_with("postgresql://") {
            s.parse::<postgres::Config>()
                .map_err(|e| format!("bad PostgreSQL URL: {e}"))?;
            return Ok(FleetStoreUrl::Postgres(s.to_owned()));
        }
        let path = s.strip_prefix("sqlite:").unwrap_or(s);
        if !path.starts_with('/') {
            return Err(format!(
                "expected sqlite:/absolute/path or postgres://user@host:port/db, got {s:?}"
            ));
        }
        Ok(FleetStoreUrl::Sqlite(PathBuf::from(path)))
    }
}

impl<'de> Deserialize<'de> for FleetStoreUrl {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?.parse().map_err(D::Error::custom)
    }
}

/// An MQTT broker address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Broker {
    pub tls: bool,
    pub host: String,
    pub port: u16,
}

impl fmt::Display for Broker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = if self.tls { "mqtts" } else { "mqtt" };
        write!(f, "{scheme}://{}:{}", self.host, self.port)
    }
}

impl FromStr for Broker {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (tls, rest) = match s.split_once("://") {
            Some(("mqtt" | "tcp", r)) => (false, r),
            Some(("mqtts" | "ssl" | "tls", r)) => (true, r),
            _ => {
                return Err(format!(
                    "expected mqtt://host:port or mqtts://host:port, got {s:?}"
                ));
            }
        };
        let rest = rest.trim_end_matches('/');
        let default_port = if tls { 8883 } else { 1883 };
        // [v6]:port, host:port, or host alone.
        let (host, port) = if let Some(r) = rest.strip_prefix('[') {
            let (h, after) = r
                .split_once(']')
                .ok_or_else(|| format!("unclosed '[' in {s:?}"))?;
            (h, after.strip_prefix(':'))
        } else {
            match rest.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (rest, None),
            }
        };
        if host.is_empty() || host.contains(['/', '@', ' ']) {
            return Err(format!("no usable host in {s:?}"));
        }
        let port = match port {
            Some(p) => p
                .parse::<u16>()
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| format!("bad port in {s:?}"))?,
            None => default_port,
        };
        Ok(Broker {
            tls,
            host: host.to_owned(),
            port,
        })
    }
}

impl<'de> Deserialize<'de> for Broker {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?.parse().map_err(D::Error::custom)
    }
}

/// Where the status endpoint listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Listen {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

impl fmt::Display for Listen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Listen::Tcp(a) => write!(f, "{a}"),
            Listen::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

impl FromStr for Listen {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if let Some(p) = s.strip_prefix("unix:") {
            if !p.starts_with('/') {
                return Err(format!("unix socket path must be absolute, got {p:?}"));
            }
            return Ok(Listen::Unix(PathBuf::from(p)));
        }
        s.parse::<SocketAddr>().map(Listen::Tcp).map_err(|_| {
            format!("expected host:port (127.0.0.1:9464, [::1]:9464) or unix:/path, got {s:?}")
        })
    }
}

impl<'de> Deserialize<'de> for Listen {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?.parse().map_err(D::Error::custom)
    }
}

/// An absolute path, or `""` for none.
pub fn optional_absolute_path<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<Option<PathBuf>, D::Error> {
    let s = String::deserialize(d)?;
    if s.is_empty() {
        return Ok(None);
    }
    if !s.starts_with('/') {
        return Err(D::Error::custom(format!(
            "expected an absolute path or \"\" for none, got {s:?}"
        )));
    }
    Ok(Some(PathBuf::from(s)))
}

/// An address range (a bare address is a /32 or /128).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr(pub ipnet::IpNet);

impl Cidr {
    pub fn contains(&self, ip: IpAddr) -> bool {
        // IPv4-mapped IPv6 peers match IPv4 ranges.
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        self.0.contains(&ip)
    }
}

impl FromStr for Cidr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if let Ok(n) = s.parse::<ipnet::IpNet>() {
            return Ok(Cidr(n.trunc()));
        }
        s.parse::<IpAddr>()
            .map(|a| Cidr(ipnet::IpNet::from(a)))
            .map_err(|_| format!("expected an address or range like 10.0.0.0/8, got {s:?}"))
    }
}

impl<'de> Deserialize<'de> for Cidr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?.parse().map_err(D::Error::custom)
    }
}

/// An integer that must lie in `MIN..=MAX`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bounded<const MIN: u64, const MAX: u64>(pub u64);

impl<const MIN: u64, const MAX: u64> Bounded<MIN, MAX> {
    pub fn get(self) -> u64 {
        self.0
    }
}

impl<'de, const MIN: u64, const MAX: u64> Deserialize<'de> for Bounded<MIN, MAX> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = i64::deserialize(d)?;
        match u64::try_from(v) {
            Ok(v) if (MIN..=MAX).contains(&v) => Ok(Bounded(v)),
            _ => Err(D::Error::custom(format!(
                "must be between {MIN} and {MAX}, got {v}"
            ))),
        }
    }
}

/// Ring buffer size: a power of two of at least 64 KiB and at most 1 GiB.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RingBytes(pub u32);

impl<'de> Deserialize<'de> for RingBytes {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = i64::deserialize(d)?;
        match u32::try_from(v) {
            Ok(v) if v.is_power_of_two() && (1 << 16..=1 << 30).contains(&v) => Ok(RingBytes(v)),
            _ => Err(D::Error::custom(format!(
                "must be a power of two between 65536 and 1073741824, got {v}"
            ))),
        }
    }
}
