//! Command line: parsing only; every command is implemented in its own module.

use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::capture::CaptureConfig;

#[derive(Debug, Parser)]
#[command(
    name = "tlsmon",
    version,
    about = "Which process failed a TLS handshake with which peer, and why",
    long_about = "tlsmon captures the TLS handshakes of every TCP connection on the host \
(eBPF cgroup_skb, no syscall hooks), names the process and the peer of each failure and \
says why it failed in plain words: the alert, who sent it, at which stage, what the client \
offered and the server chose, and what is wrong with the certificate.",
    after_long_help = AFTER_HELP
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

/// Files, signals and examples: the end of `--help` and the man page.
pub const AFTER_HELP: &str = "\
Files:
  /etc/tlsmon/tlsmon.toml    configuration (every key optional; tlsmon check-config)
  /var/lib/tlsmon/tlsmon.db  SQLite history of alerts (WAL; store.retention_days)
  127.0.0.1:9464             status endpoint: /v1/status /v1/failures /metrics /healthz /readyz
  127.0.0.1:9465             fleet endpoint of tlsmon aggregate: /v1/fleet /v1/aggregator /metrics

Signals (tlsmon run):
  SIGHUP           re-read the configuration: filters, alert thresholds, TLS ports, retention
  SIGTERM, SIGINT  stop: detach the probes, flush the database, exit 0

Logs:
  one warn line per alert, target tlsmon::alert, in a stable key=value form:
  kind= cause= process= pid= exe= unit= role= peer_ip= peer_port= local_port=
  service=ip:port sni= alert=code/name sender= stage= count= event_id= message=\"...\"
  TLSMON_LOG sets the level (error, warn, info, debug; tracing filter syntax).

Causes (each event's cause; /usr/share/doc/tlsmon/causes.md, or docs/causes.md in the source:
what each means, the evidence, how to confirm it by hand, what to change):
  protocol_version_mismatch, no_shared_cipher, no_shared_group, no_shared_sigalg,
  weak_signature_in_chain, untrusted_issuer, self_signed, incomplete_chain,
  cert_expired, cert_not_yet_valid, clock_skew, hostname_mismatch, sni_unrecognized,
  sni_missing, alpn_mismatch, client_cert_required, client_cert_rejected,
  client_cert_untrusted, plaintext_to_tls_port, tls_to_plaintext_port, ssl2_only_peer,
  peer_closed_mid_handshake, peer_reset_mid_handshake, tls13_encrypted_alert,
  downgrade_rejected, weak_key, cert_revoked, handshake_timeout, server_cert_rejected,
  ca_cert_as_leaf, weak_dh, legacy_version_refused, decode_error, internal_error, other

Exit status: 0 success, 1 error (bad configuration: file:line:column and key), 2 analyze
could not read its input.

Examples:
  tlsmon status
  tlsmon failures --since 1h --process nginx --peer 10.0.0.0/8
  tlsmon analyze capture.pcap --failures
  tlsmon fleet status --since 7d
  systemctl reload tlsmon";

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon: capture, judge, alert, store, serve the status endpoint.
    Run(RunArgs),
    /// What is failing now, from the running daemon.
    Status(StatusArgs),
    /// Stored failures (alerts), newest first, from the running daemon.
    Failures(FailuresArgs),
    /// Validate the configuration file and say what would run.
    CheckConfig(ConfigArg),
    /// Print one line per TCP connection whose handshake was captured: process, role,
    /// ends, TLS records each way, and how it ended.
    Trace(TraceArgs),
    /// Diagnose every TLS handshake in a pcap or pcapng file (no root needed).
    Analyze(AnalyzeArgs),
    /// Run the fleet aggregator: consume every host's events from the MQTT broker ([mqtt])
    /// into SQLite or PostgreSQL ([aggregate] store) and serve the fleet view.
    Aggregate(RunArgs),
    /// The fleet view, from a running aggregator.
    Fleet(FleetArgs),
    /// Print the manual page (roff) to stdout; the package installs it as tlsmon(8).
    #[command(hide = true)]
    Man,
}

/// The manual page, generated from this command line so it cannot drift from `--help`.
pub fn man_page() -> std::io::Result<Vec<u8>> {
    let cmd = <Cli as clap::CommandFactory>::command();
    let mut out = Vec::new();
    clap_mangen::Man::new(cmd.clone())
        .section("8")
        .render(&mut out)?;
    // One section per command, so `man tlsmon` documents every flag.
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        let name = format!("tlsmon {}", sub.get_name());
        out.extend_from_slice(format!(".SH \"{}\"\n", name.to_uppercase()).as_bytes());
        let sub = sub.clone().bin_name(name);
        let man = clap_mangen::Man::new(sub);
        man.render_synopsis_section(&mut out)?;
        man.render_description_section(&mut out)?;
        man.render_options_section(&mut out)?;
    }
    Ok(out)
}

#[derive(Debug, Args)]
pub struct ConfigArg {
    /// Configuration file [default: /etc/tlsmon/tlsmon.toml if present, else built-in].
    #[arg(long, short = 'c')]
    pub config: Option<std::path::PathBuf>,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub config: ConfigArg,
}

#[derive(Debug, Args)]
pub struct EndpointArgs {
    #[command(flatten)]
    pub config: ConfigArg,
    /// The daemon's endpoint (unix:/run/tlsmon/status.sock, 127.0.0.1:9464)
    /// [default: status.socket of the configuration, else status.listen].
    #[arg(long)]
    pub endpoint: Option<String>,
    /// A file whose first line is the bearer token for a TCP endpoint
    /// [default: status.token_file of the configuration, when the endpoint comes from it].
    #[arg(long)]
    pub token_file: Option<std::path::PathBuf>,
    /// Print the JSON as the endpoint gives it.
    #[arg(long)]
    pub json: bool,
}

/// Where `tlsmon status` and `failures` ask, and with which token.
#[derive(Debug)]
pub struct Target {
    pub listen: crate::config::Listen,
    pub token: Option<String>,
}

impl EndpointArgs {
    pub fn target(&self) -> anyhow::Result<Target> {
        let read_token = |p: &std::path::Path| -> anyhow::Result<String> {
            let text = std::fs::read_to_string(p)
                .map_err(|e| anyhow::anyhow!("token file {}: {e}", p.display()))?;
            Ok(text.lines().next().unwrap_or("").trim().to_owned())
        };
        let explicit = self.token_file.as_deref().map(read_token).transpose()?;
        if let Some(e) = &self.endpoint {
            return Ok(Target {
                listen: e
                    .parse()
                    .map_err(|e: String| anyhow::anyhow!("--endpoint: {e}"))?,
                token: explicit,
            });
        }
        let status = crate::config::load(self.config.config.as_deref())?.0.status;
        Ok(match status.socket {
            Some(p) => Target {
                listen: crate::config::Listen::Unix(p),
                token: explicit,
            },
            None => Target {
                listen: status.listen,
                token: match explicit {
                    Some(t) => Some(t),
                    None => status.token_file.as_deref().map(read_token).transpose()?,
                },
            },
        })
    }
}

/// `--endpoint` when given, else the address the configuration's `section` listens on.
fn resolve_endpoint(
    endpoint: Option<&str>,
    config: &ConfigArg,
    section: impl FnOnce(crate::config::Config) -> crate::config::Listen,
) -> anyhow::Result<crate::config::Listen> {
    match endpoint {
        Some(e) => e
            .parse()
            .map_err(|e: String| anyhow::anyhow!("--endpoint: {e}")),
        None => Ok(section(crate::config::load(config.config.as_deref())?.0)),
    }
}

#[derive(Debug, Args)]
pub struct FleetArgs {
    #[command(subcommand)]
    pub command: FleetCommand,
}

#[derive(Debug, Subcommand)]
pub enum FleetCommand {
    /// Which hosts, clients and servers fail most, and why (any aggregator of the fleet
    /// answers the same: it reads the shared store).
    Status(FleetStatusArgs),
}

#[derive(Debug, Args)]
pub struct FleetStatusArgs {
    #[command(flatten)]
    pub config: ConfigArg,
    /// The aggregator's endpoint (127.0.0.1:9465, unix:/run/tlsmon/fleet.sock)
    /// [default: aggregate.listen of the configuration].
    #[arg(long)]
    pub endpoint: Option<String>,
    /// Print the JSON as the endpoint gives it.
    #[arg(long)]
    pub json: bool,
    /// How far back: 90s, 15m, 1h, 7d.
    #[arg(long, default_value = "24h")]
    pub since: String,
    /// Rows per list.
    #[arg(long, default_value_t = 10)]
    pub top: usize,
}

impl FleetStatusArgs {
    pub fn listen(&self) -> anyhow::Result<crate::config::Listen> {
        resolve_endpoint(self.endpoint.as_deref(), &self.config, |c| {
            c.aggregate.listen
        })
    }

    pub fn path(&self) -> String {
        format!(
            "/v1/fleet?since={}&top={}",
            crate::http::client::encode(&self.since),
            self.top
        )
    }
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub endpoint: EndpointArgs,
}

#[derive(Debug, Args)]
pub struct FailuresArgs {
    #[command(flatten)]
    pub endpoint: EndpointArgs,
    /// How far back: 90s, 15m, 1h, 7d.
    #[arg(long, default_value = "1h")]
    pub since: String,
    /// Process name, executable path or basename.
    #[arg(long)]
    pub process: Option<String>,
    /// Peer address or range (10.0.0.0/8).
    #[arg(long)]
    pub peer: Option<String>,
    /// Cause slug (self_signed, no_shared_cipher, ...).
    #[arg(long)]
    pub cause: Option<String>,
    /// The failing service, ip:port: the server a client failed with, or a listener.
    #[arg(long)]
    pub service: Option<String>,
    /// The failing service's port.
    #[arg(long)]
    pub port: Option<u16>,
    #[arg(long, default_value_t = 100)]
    pub limit: u32,
}

impl FailuresArgs {
    /// The endpoint path with its query.
    pub fn path(&self) -> String {
        use crate::http::client::encode;
        let mut q = format!(
            "/v1/failures?since={}&limit={}",
            encode(&self.since),
            self.limit
        );
        for (k, v) in [
            ("process", &self.process),
            ("peer", &self.peer),
            ("cause", &self.cause),
            ("service", &self.service),
        ] {
            if let Some(v) = v {
                q.push_str(&format!("&{k}={}", encode(v)));
            }
        }
        if let Some(port) = self.port {
            q.push_str(&format!("&port={port}"));
        }
        q
    }
}

#[derive(Debug, Args)]
pub struct AnalyzeArgs {
    /// The capture file (tcpdump -w, Wireshark, tshark).
    pub file: std::path::PathBuf,
    /// One JSON object per connection instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Only failed handshakes.
    #[arg(long)]
    pub failures: bool,
    /// Also list connections that are not TLS (plaintext on ordinary ports).
    #[arg(long)]
    pub all: bool,
    /// Extra port known to speak TLS (plaintext sent to it is a failure); repeatable.
    #[arg(long = "tls-port")]
    pub tls_ports: Vec<u16>,
    /// Never draw a progress bar.
    #[arg(long)]
    pub no_progress: bool,
}

impl AnalyzeArgs {
    pub fn options(&self) -> super::analyze::AnalyzeOptions {
        let mut tls_ports = crate::handshake::DEFAULT_TLS_PORTS.to_vec();
        tls_ports.extend(&self.tls_ports);
        super::analyze::AnalyzeOptions {
            json: self.json,
            failures_only: self.failures,
            include_not_tls: self.all,
            tls_ports,
            progress: !self.no_progress,
        }
    }
}

#[derive(Debug, Args, Clone)]
pub struct CaptureArgs {
    /// Bytes captured per direction of a TLS connection (covers the handshake).
    #[arg(long, default_value_t = monitor_common::DEFAULT_DIRECTION_BUDGET)]
    pub budget: u32,
    /// Ring buffer size in bytes (power of two).
    #[arg(long, default_value_t = 4 * 1024 * 1024)]
    pub ring_bytes: u32,
    /// Extra port known to speak TLS (plaintext sent to it is sampled); repeatable.
    #[arg(long = "tls-port")]
    pub tls_ports: Vec<u16>,
    /// How often the ring is drained, in milliseconds.
    #[arg(long, default_value_t = 20)]
    pub drain_ms: u64,
    /// A connection with no activity for this many seconds is reported as it stands.
    #[arg(long, default_value_t = 30)]
    pub idle_secs: u64,
}

#[derive(Debug, Args)]
pub struct TraceArgs {
    #[command(flatten)]
    pub capture: CaptureArgs,
    /// One JSON object per line instead of text.
    #[arg(long)]
    pub json: bool,
    /// With --json: include the reassembled streams as hex.
    #[arg(long, requires = "json")]
    pub with_bytes: bool,
    /// Stop after this many seconds.
    #[arg(long)]
    pub duration: Option<f64>,
}

impl CaptureArgs {
    pub fn capture_config(&self) -> CaptureConfig {
        let mut cfg = CaptureConfig {
            direction_budget: self.budget,
            ring_bytes: self.ring_bytes,
            ..CaptureConfig::default()
        };
        cfg.tls_ports.extend(&self.tls_ports);
        cfg
    }

    pub fn trace_options(
        &self,
        json: bool,
        with_bytes: bool,
        duration: Option<f64>,
    ) -> anyhow::Result<super::trace::TraceOptions> {
        let duration = match duration {
            Some(d) if !(d.is_finite() && d > 0.0) => {
                anyhow::bail!("--duration must be a positive number of seconds, got {d}")
            }
            Some(d) => Some(Duration::from_secs_f64(d)),
            None => None,
        };
        if self.drain_ms == 0 {
            anyhow::bail!("--drain-ms must be at least 1");
        }
        Ok(super::trace::TraceOptions {
            capture: self.capture_config(),
            json,
            with_bytes,
            duration,
            drain_interval: Duration::from_millis(self.drain_ms),
            idle_timeout: Duration::from_secs(self.idle_secs),
        })
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn help_and_the_man_page_list_every_cause() {
        let listed: Vec<&str> = super::AFTER_HELP
            .split_once("Causes (")
            .and_then(|(_, rest)| rest.split_once("):\n"))
            .and_then(|(_, rest)| rest.split_once("\n\n"))
            .map(|(list, _)| {
                list.split([',', ' ', '\n'])
                    .filter(|w| !w.is_empty())
                    .collect()
            })
            .unwrap_or_default();
        for c in crate::handshake::Cause::ALL {
            let slug = c.slug();
            assert!(
                listed.contains(&slug.as_str()),
                "{slug} missing in {listed:?}"
            );
        }
        let man = String::from_utf8(super::man_page().expect("man page")).expect("utf-8");
        assert!(man.contains("cert_expired") && man.contains("ssl2_only_peer"));
    }
}
