//! The daemon's configuration: TOML at `/etc/tlsmon/tlsmon.toml` (or `--config`), every key
//! with a default so no file is needed. Unknown keys and bad values are errors that name the
//! file, line, column and key. Pure apart from [`load`], which reads the file.

mod host;
mod values;

use std::{
    fmt,
    net::SocketAddr,
    path::{Path, PathBuf},
};

use serde::Deserialize;

pub use host::Host;
pub use values::{Bounded, Broker, Cidr, FleetStoreUrl, Listen, RingBytes, TopicLevel};

/// Where the daemon looks when `--config` is not given.
pub const DEFAULT_PATH: &str = "/etc/tlsmon/tlsmon.toml";

/// The whole configuration. `Default` is the built-in configuration.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub host: HostConfig,
    pub capture: CaptureSection,
    pub filters: Filters,
    pub alerts: AlertConfig,
    pub store: StoreConfig,
    pub status: StatusConfig,
    pub mqtt: MqttConfig,
    pub aggregate: AggregateConfig,
    pub daemon: DaemonConfig,
}

/// Who `tlsmon run` is once its probes are attached (restart needed).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DaemonConfig {
    /// The user to become after attaching (its group and the `tlsmon` group too), keeping
    /// only CAP_SYS_PTRACE and CAP_DAC_READ_SEARCH; `"root"` stays root with every capability it started with.
    pub user: String,
}

impl Default for DaemonConfig {
    fn default() -> Self {
        DaemonConfig {
            user: "tlsmon".into(),
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HostConfig {
    /// Host id in events and MQTT topics (default: /etc/machine-id).
    pub id: Option<TopicLevel>,
    /// Name in events (default: the kernel's hostname).
    pub name: Option<String>,
    /// Site label for fleet aggregation (MQTT topic level; default "default").
    pub site: Option<TopicLevel>,
}

/// Publishing to an MQTT broker (off without `broker`; restart needed).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MqttConfig {
    /// `mqtt://host:1883` (TCP) or `mqtts://host:8883` (TLS); none = MQTT off.
    pub broker: Option<Broker>,
    /// First topic level: `<prefix>/v1/<site>/<host>/events`.
    pub prefix: TopicLevel,
    /// Default: `tlsmon-<host id>`.
    pub client_id: Option<String>,
    pub username: Option<String>,
    pub password: Option<String>,
    /// The password in a file of its own (first line), instead of `password`.
    pub password_file: Option<PathBuf>,
    /// PEM CA certificates for mqtts:// (default: the system's roots).
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate and key for mqtts:// client authentication.
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    pub keepalive_secs: Bounded<5, 3600>,
    /// The outbox keeps at most this many unpublished events; beyond it the oldest are
    /// dropped and a gap record says how many and from when.
    pub outbox_max_events: Bounded<100, 100_000_000>,
    /// Unpublished events older than this are dropped the same way.
    pub outbox_max_age_hours: Bounded<1, 87_600>,
    /// Period of the summary (counters per process and cause).
    pub summary_interval_secs: Bounded<5, 86_400>,
}

impl Default for MqttConfig {
    fn default() -> Self {
        MqttConfig {
            broker: None,
            prefix: TopicLevel("tlsmon".into()),
            client_id: None,
            username: None,
            password: None,
            password_file: None,
            ca_file: None,
            cert_file: None,
            key_file: None,
            keepalive_secs: Bounded(30),
            outbox_max_events: Bounded(1_000_000),
            outbox_max_age_hours: Bounded(168),
            summary_interval_secs: Bounded(60),
        }
    }
}

/// `tlsmon aggregate`, the fleet consumer. It reaches the broker with the `[mqtt]` settings
/// (broker, prefix, credentials, TLS).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AggregateConfig {
    /// `sqlite:/var/lib/tlsmon-aggregate/fleet.db` (one aggregator) or
    /// `postgres://user:password@host:5432/db` (several aggregators, one fleet view).
    pub store: FleetStoreUrl,
    /// PostgreSQL over TLS (`?sslmode=require` in `store`, or the default `prefer` when
    /// this is set and the server offers TLS): the CA certificates (PEM) its certificate
    /// must chain to (default for `require`: the system's).
    pub store_ca_file: Option<PathBuf>,
    /// Shared-subscription group: aggregators of one group split the events between them.
    pub group: TopicLevel,
    /// MQTT client id; unique per aggregator (default `tlsmon-aggregate-<host id>`). The
    /// broker keeps its unacknowledged messages while it is away.
    pub client_id: Option<String>,
    /// The fleet endpoint (`/v1/fleet`, `/healthz`, `/readyz`, `/metrics`).
    pub listen: Listen,
    pub allow_non_loopback: bool,
    /// Events last seen longer ago than this are deleted from the fleet store.
    pub retention_days: Bounded<1, 3650>,
}

impl Default for AggregateConfig {
    fn default() -> Self {
        AggregateConfig {
            store: FleetStoreUrl::Sqlite(PathBuf::from("/var/lib/tlsmon-aggregate/fleet.db")),
            store_ca_file: None,
            group: TopicLevel("tlsmon-aggregators".into()),
            client_id: None,
            listen: Listen::Tcp(SocketAddr::from(([127, 0, 0, 1], DEFAULT_FLEET_PORT))),
            allow_non_loopback: false,
            retention_days: Bounded(90),
        }
    }
}

pub const DEFAULT_FLEET_PORT: u16 = 9465;

/// Kernel capture settings (need a restart).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CaptureSection {
    /// Bytes captured per direction of a TLS connection.
    pub direction_budget: Bounded<1024, 65536>,
    /// Ring buffer bytes (a power of two, ≥ 64 KiB).
    pub ring_bytes: RingBytes,
    pub drain_interval_ms: Bounded<1, 1000>,
    /// A connection silent this long is judged as it stands (handshake timeout).
    pub idle_timeout_secs: Bounded<1, 3600>,
    /// Ports that speak TLS from the first byte, besides the built-in list.
    pub tls_ports: Vec<u16>,
    /// Handshakes followed at once; beyond it the least recently active are judged as they
    /// stand (`capture_incomplete`, reason `evicted`), a sixteenth at a time.
    pub max_flows: Bounded<1024, 1048576>,
}

impl Default for CaptureSection {
    fn default() -> Self {
        CaptureSection {
            direction_budget: Bounded(monitor_common::DEFAULT_DIRECTION_BUDGET as u64),
            ring_bytes: RingBytes(4 << 20),
            drain_interval_ms: Bounded(20),
            idle_timeout_secs: Bounded(30),
            tls_ports: Vec::new(),
            max_flows: Bounded(65_536),
        }
    }
}

/// Which connections are judged (reloadable with SIGHUP). Empty include lists mean "all".
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Filters {
    /// Process names (`comm`) or executable paths or basenames.
    pub include_processes: Vec<String>,
    pub exclude_processes: Vec<String>,
    /// Local or peer ports.
    pub include_ports: Vec<u16>,
    pub exclude_ports: Vec<u16>,
    /// Peer address ranges, `10.0.0.0/8`, `::1/128`, or single addresses.
    pub include_peers: Vec<Cidr>,
    pub exclude_peers: Vec<Cidr>,
    /// systemd units or cgroup path prefixes (`nginx.service`, `/system.slice/`).
    pub include_cgroups: Vec<String>,
    pub exclude_cgroups: Vec<String>,
}

/// Alert grouping (reloadable with SIGHUP).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AlertConfig {
    /// The same (process, peer, SNI, cause) within this many seconds is one alert.
    pub window_secs: Bounded<1, 86_400>,
    /// More distinct failing peers than this on one listener (same cause) within the
    /// window become one summary alert instead of one alert per peer.
    pub flood_peers: Bounded<2, 1_000_000>,
    /// Warn about working handshakes whose leaf certificate expires within this many days.
    pub expiry_warning_days: Bounded<0, 3650>,
    /// Warn about working handshakes that use TLS 1.1 or older.
    pub warn_legacy_versions: bool,
}

impl Default for AlertConfig {
    fn default() -> Self {
        AlertConfig {
            window_secs: Bounded(300),
            flood_peers: Bounded(50),
            expiry_warning_days: Bounded(14),
            warn_legacy_versions: true,
        }
    }
}

/// The SQLite history.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    pub path: PathBuf,
    /// Alerts older than this are deleted.
    pub retention_days: Bounded<1, 3650>,
    /// The oldest alerts are deleted beyond this size.
    pub max_mb: Bounded<1, 1_000_000>,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            path: PathBuf::from("/var/lib/tlsmon/tlsmon.db"),
            retention_days: Bounded(30),
            max_mb: Bounded(256),
        }
    }
}

/// The local status endpoint. Peers, SNIs and processes (`/v1/status`, `/v1/failures`) are
/// for root and the `tlsmon` group: served on the unix `socket` (mode 0660, group of
/// `daemon.user`), and on a TCP `listen` only with the token of `token_file`. A TCP
/// `listen` answers `/metrics`, `/healthz` and `/readyz` to anyone (Prometheus).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StatusConfig {
    /// `127.0.0.1:9464`, `[::1]:9464`, or `unix:/path` (a socket with every route).
    pub listen: Listen,
    /// Needed to bind an address other than loopback.
    pub allow_non_loopback: bool,
    /// The unix socket with every route, for `tlsmon status` and the `tlsmon` group;
    /// `""` for none.
    #[serde(deserialize_with = "values::optional_absolute_path")]
    pub socket: Option<PathBuf>,
    /// A file whose first line is a bearer token that opens `/v1/*` on the TCP `listen`
    /// (`Authorization: Bearer <token>`); keep it 0640 root:tlsmon. None: `/v1/*` on TCP
    /// answers 403.
    pub token_file: Option<PathBuf>,
}

/// Where the status socket is unless configured.
pub const DEFAULT_STATUS_SOCKET: &str = "/run/tlsmon/status.sock";

impl Default for StatusConfig {
    fn default() -> Self {
        StatusConfig {
            listen: Listen::Tcp(SocketAddr::from(([127, 0, 0, 1], DEFAULT_STATUS_PORT))),
            allow_non_loopback: false,
            socket: Some(PathBuf::from(DEFAULT_STATUS_SOCKET)),
            token_file: None,
        }
    }
}

pub const DEFAULT_STATUS_PORT: u16 = 9464;

/// Why a configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: cannot read: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}:{line}:{column}: {message}")]
    Invalid {
        path: String,
        line: usize,
        column: usize,
        message: String,
    },
}

/// Where the configuration came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    File(PathBuf),
    /// No file at the default path: built-in defaults.
    BuiltIn,
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::File(p) => write!(f, "{}", p.display()),
            Source::BuiltIn => write!(f, "built-in defaults (no {DEFAULT_PATH})"),
        }
    }
}

/// Parses configuration text; `path` only names the file in errors.
pub fn parse(text: &str, path: &str) -> Result<Config, ConfigError> {
    let invalid = |offset: usize, message: String| {
        let (line, column) = line_col(text, offset);
        ConfigError::Invalid {
            path: path.to_owned(),
            line,
            column,
            message,
        }
    };
    let cfg: Config = toml::from_str(text).map_err(|e| {
        let offset = e.span().map_or(0, |s| s.start);
        invalid(offset, e.message().trim().to_owned())
    })?;
    for (section, listen, allowed) in [
        ("status", &cfg.status.listen, cfg.status.allow_non_loopback),
        (
            "aggregate",
            &cfg.aggregate.listen,
            cfg.aggregate.allow_non_loopback,
        ),
    ] {
        if let Listen::Tcp(a) = listen
            && !a.ip().is_loopback()
            && !allowed
        {
            let offset = text
                .find(&format!("[{section}]"))
                .and_then(|i| text[i..].find("listen").map(|j| i + j))
                .unwrap_or(0);
            return Err(invalid(
                offset,
                format!(
                    "{section}.listen = {a} is not a loopback address; set {section}.allow_non_loopback = true to expose the endpoint"
                ),
            ));
        }
    }
    let m = &cfg.mqtt;
    let tls_only = [
        ("ca_file", m.ca_file.is_some()),
        ("cert_file", m.cert_file.is_some()),
    ];
    if let Some((key, _)) = tls_only
        .iter()
        .find(|(_, set)| *set && m.broker.as_ref().is_some_and(|b| !b.tls))
    {
        return Err(invalid(
            text.find(key).unwrap_or(0),
            format!("mqtt.{key} needs a TLS broker (mqtts://)"),
        ));
    }
    if m.cert_file.is_some() != m.key_file.is_some() {
        return Err(invalid(
            text.find("cert_file")
                .or_else(|| text.find("key_file"))
                .unwrap_or(0),
            "mqtt.cert_file and mqtt.key_file go together".into(),
        ));
    }
    if m.password.is_some() && m.password_file.is_some() {
        return Err(invalid(
            text.find("password_file").unwrap_or(0),
            "mqtt.password and mqtt.password_file: set one".into(),
        ));
    }
    Ok(cfg)
}

/// 1-based line and column of a byte offset.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = text.get(..offset.min(text.len())).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
    (line, column)
}

/// Reads the configuration: `explicit` must exist; without it, [`DEFAULT_PATH`] is used when
/// present and the built-in defaults otherwise.
pub fn load(explicit: Option<&Path>) -> Result<(Config, Source), ConfigError> {
    let path = match explicit {
        Some(p) => p.to_path_buf(),
        None => {
            let p = PathBuf::from(DEFAULT_PATH);
            if !p.exists() {
                return Ok((Config::default(), Source::BuiltIn));
            }
            p
        }
    };
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(&path).map_err(|source| ConfigError::Read {
        path: shown.clone(),
        source,
    })?;
    Ok((parse(&text, &shown)?, Source::File(path)))
}

/// Files holding a secret that any local user can read: the configuration file when it
/// holds a password itself (`mqtt.password`, a PostgreSQL URL with one), and
/// `mqtt.password_file`. `mode` gives a file's permission bits (None: unreadable here).
pub fn readable_secrets(
    cfg: &Config,
    source: &Source,
    mode: impl Fn(&Path) -> Option<u32>,
) -> Vec<String> {
    let mut out = Vec::new();
    let world = |p: &Path| mode(p).is_some_and(|m| m & 0o004 != 0);
    let url_secret = matches!(&cfg.aggregate.store, values::FleetStoreUrl::Postgres(u)
        if values::redacted_postgres(u) != *u);
    if let Source::File(path) = source
        && (cfg.mqtt.password.is_some() || url_secret)
        && world(path)
    {
        out.push(format!(
            "{} holds a password and any local user can read it: chmod 0640 (group tlsmon) or move the password to mqtt.password_file",
            path.display()
        ));
    }
    for (p, key) in [
        (&cfg.mqtt.password_file, "mqtt.password_file"),
        (&cfg.status.token_file, "status.token_file"),
    ] {
        if let Some(p) = p
            && world(p)
        {
            out.push(format!(
                "{} ({key}) is readable by any local user: chmod 0640",
                p.display()
            ));
        }
    }
    out
}

/// The settings of `new` that differ from `old` and only take effect after a restart.
pub fn needs_restart(old: &Config, new: &Config) -> Vec<&'static str> {
    let mut v = Vec::new();
    if old.capture != new.capture {
        v.push("capture");
    }
    if old.store != new.store {
        v.push("store");
    }
    if old.status != new.status {
        v.push("status");
    }
    if old.host != new.host {
        v.push("host");
    }
    if old.mqtt != new.mqtt {
        v.push("mqtt");
    }
    if old.aggregate != new.aggregate {
        v.push("aggregate");
    }
    if old.daemon != new.daemon {
        v.push("daemon");
    }
    v
}

/// The example configuration shipped with the package: every key at its default.
pub const EXAMPLE: &str = include_str!("../../../packaging/tlsmon.toml");

#[cfg(test)]
mod tests;
