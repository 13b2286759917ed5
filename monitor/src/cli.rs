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
