//! `tlsmon analyze`'s output: one table row or JSON line per connection of a capture file.

use std::io::{BufWriter, Write};
use std::path::Path;

use anyhow::Context as _;
use serde::Serialize;

use super::visible::visible;
use crate::{
    analyze::{Pass, Totals, analyze_file, conversations::Report},
    clock::rfc3339,
    handshake::{Diagnosis, HandshakeOutcome, Truncated, upgrade},
};

/// What `analyze` prints and how.
#[derive(Debug, Clone)]
pub struct AnalyzeOptions {
    pub json: bool,
    /// Only failed handshakes.
    pub failures_only: bool,
    /// Also list connections that are not TLS at all.
    pub include_not_tls: bool,
    pub tls_ports: Vec<u16>,
    /// Show a progress bar on stderr (when it is a terminal).
    pub progress: bool,
}

/// One output line of `analyze --json`.
#[derive(Debug, Serialize)]
pub struct OutcomeLine<'a> {
    pub time: String,
    pub client: String,
    pub server: String,
    /// The plaintext protocol before TLS (STARTTLS and kin), when there was one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upgrade: Option<&'static str>,
    #[serde(flatten)]
    pub outcome: &'a HandshakeOutcome,
}

impl<'a> OutcomeLine<'a> {
    pub fn new(r: &'a Report) -> Self {
        OutcomeLine {
            time: rfc3339(r.first_ns),
            client: r.client.to_string(),
            server: r.server.to_string(),
            upgrade: r.upgrade,
            outcome: &r.outcome,
        }
    }
}

/// `tlsmon analyze`: prints every conversation's outcome; errors name the file.
pub fn run(path: &Path, opts: &AnalyzeOptions) -> anyhow::Result<Totals> {
    let stdout = std::io::stdout();
    let mut out = BufWriter::new(stdout.lock());
    let mut write_err = None;
    // A file that cannot be opened gets its message alone, without a table header.
    std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    if !opts.json {
        writeln!(out, "{}", table_header())?;
    }
    let pass = Pass {
        tls_ports: &opts.tls_ports,
        record: false,
        progress: opts.progress,
        workers: Pass::default_workers(),
    };
    let render = |mut r: Report| -> Option<std::io::Result<String>> {
        if !wanted(opts, &r.outcome) {
            return None;
        }
        // The remedy's verify command, runnable for this connection.
        if let HandshakeOutcome::Failed(d) = &mut r.outcome {
            d.remedy = upgrade::concrete_command(&d.remedy, &r.server.to_string(), r.upgrade);
        }
        Some(if opts.json {
            // Sized for a typical line (an offer, a chain): no regrowth while writing.
            let mut line = Vec::with_capacity(8192);
            serde_json::to_writer(&mut line, &OutcomeLine::new(&r))
                .map_err(std::io::Error::other)
                .and_then(|()| String::from_utf8(line).map_err(std::io::Error::other))
        } else {
            Ok(visible(&table_row(&r)).into_owned())
        })
    };
    let analyzed = analyze_file(path, &pass, render, |line| {
        if write_err.is_some() {
            return;
        }
        if let Some(res) = line
            && let Err(e) = res.and_then(|line| {
                out.write_all(line.as_bytes())?;
                out.write_all(b"\n")
            })
        {
            write_err = Some(e);
        }
    });
    out.flush().ok();
    let totals = analyzed?;
    if let Some(e) = write_err {
        // A closed pipe (`| head`) is not an error worth a message.
        if e.kind() != std::io::ErrorKind::BrokenPipe {
            return Err(e).context("writing the results");
        }
        return Ok(totals);
    }
    eprintln!(
        "tlsmon: {} connections: {} completed, {} failed, {} not TLS, {} truncated, {} undecided \
         ({} frames)",
        totals.connections,
        totals.completed,
        totals.failed,
        totals.not_tls,
        totals.truncated,
        totals.undecided,
        totals.frames
    );
    Ok(totals)
}

fn wanted(opts: &AnalyzeOptions, o: &HandshakeOutcome) -> bool {
    match o {
        HandshakeOutcome::Failed(_) => true,
        HandshakeOutcome::NotTls(_) => opts.include_not_tls && !opts.failures_only,
        _ => !opts.failures_only,
    }
}

fn table_header() -> String {
    format!(
        "{:<23} {:<22} {:<22} {:<20} {:<8} {:<22} {:<20} {:<28} {:<26} MESSAGE",
        "TIME", "CLIENT", "SERVER", "SNI", "VERSION", "OUTCOME", "STAGE", "ALERT", "CAUSE"
    )
}

/// One table line: time, ends, SNI, version, stage, alert + sender, cause, message.
pub fn table_row(r: &Report) -> String {
    let o = &r.outcome;
    let (sni, version, stage, alert, cause, message) = match o {
        HandshakeOutcome::Failed(d) => {
            let Diagnosis {
                stage,
                alert,
                cause,
                message,
                ..
            } = d.as_ref();
            let alert = alert.as_ref().map_or("-".to_string(), |a| {
                let code = match (a.code, &a.name) {
                    (Some(c), Some(n)) => format!("{c} {n}"),
                    _ => "encrypted".into(),
                };
                format!("{code} ({})", a.sender.as_str())
            });
            let version = d.selected.as_ref().map(|s| s.version_name.clone());
            (
                d.offered.as_ref().and_then(|o| o.server_name.clone()),
                version,
                stage.as_str().to_string(),
                alert,
                format!(
                    "{}{}",
                    cause.slug(),
                    if d.inferred { " (inferred)" } else { "" }
                ),
                message.clone(),
            )
        }
        HandshakeOutcome::Completed(c) => (
            c.offered.as_ref().and_then(|o| o.server_name.clone()),
            Some(c.selected.version_name.clone()),
            "application_data".into(),
            "-".into(),
            "-".into(),
            format!(
                "{}{}{}",
                c.closed_without_data_ms
                    .map(|ms| format!(
                        "the client closed {ms} ms after the handshake without sending data \
                         (a health check, a probe, or a rejection the wire does not show); "
                    ))
                    .unwrap_or_default(),
                c.selected.cipher_name,
                c.leaf_expires_in_days
                    .map(|d| format!(", certificate expires in {d} days"))
                    .unwrap_or_default()
            ),
        ),
        HandshakeOutcome::NotTls(n) => (
            None,
            None,
            "-".into(),
            "-".into(),
            "-".into(),
            format!(
                "{:?}",
                n.client_sample
                    .as_deref()
                    .unwrap_or("")
                    .chars()
                    .take(40)
                    .collect::<String>()
            ),
        ),
        HandshakeOutcome::Truncated(_) => (
            None,
            None,
            "-".into(),
            "-".into(),
            "-".into(),
            Truncated::MESSAGE.to_string(),
        ),
        HandshakeOutcome::Undecided => (
            None,
            None,
            "-".into(),
            "-".into(),
            "-".into(),
            String::new(),
        ),
    };
    let message = match r.upgrade {
        Some(p) => format!("(TLS after {p} plaintext) {message}"),
        None => message,
    };
    format!(
        "{:<23} {:<22} {:<22} {:<20} {:<8} {:<22} {:<20} {:<28} {:<26} {}",
        rfc3339(r.first_ns),
        r.client.to_string(),
        r.server.to_string(),
        sni.unwrap_or_else(|| "-".into()),
        version.unwrap_or_else(|| "-".into()),
        o.kind(),
        stage,
        alert,
        cause,
        message
    )
}
