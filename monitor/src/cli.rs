//! Command line: parsing only; every command is implemented in its own module.

use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::capture::CaptureConfig;

#[derive(Debug, Parser)]
#[command(
    name = "tlsmon",
    version,
    about = "Which process failed a TLS handshake with which peer, and why"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the monitor with its built-in default configuration (today: the trace view).
    Run(CaptureArgs),
    /// Print one line per TCP connection whose handshake was captured: process, role,
    /// ends, TLS records each way, and how it ended.
    Trace(TraceArgs),
    /// Diagnose every TLS handshake in a pcap or pcapng file (no root needed).
    Analyze(AnalyzeArgs),
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
    pub fn options(&self) -> crate::analyze::AnalyzeOptions {
        let mut tls_ports = crate::handshake::DEFAULT_TLS_PORTS.to_vec();
        tls_ports.extend(&self.tls_ports);
        crate::analyze::AnalyzeOptions {
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
    ) -> anyhow::Result<crate::trace::TraceOptions> {
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
        Ok(crate::trace::TraceOptions {
            capture: self.capture_config(),
            json,
            with_bytes,
            duration,
            drain_interval: Duration::from_millis(self.drain_ms),
            idle_timeout: Duration::from_secs(self.idle_secs),
        })
    }
}
