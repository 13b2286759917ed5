//! `tlsmon analyze FILE.pcap[ng]`: the offline path. pcap reader → TCP segments → the same
//! reassembly and diagnosis core the daemon uses → a table or JSON lines.

pub mod capture_file;
pub mod conversations;
pub mod segments;
pub mod shards;

use std::fs::File;
use std::io::{BufReader, BufWriter, IsTerminal, Read, Write};
use std::path::Path;
use std::sync::Mutex;

use anyhow::Context as _;
use serde::Serialize;

use crate::handshake::{Diagnosis, HandshakeOutcome};
use capture_file::CaptureFile;
use conversations::Report;
use shards::Shards;

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

/// Totals of one run.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Totals {
    pub frames: u64,
    pub tcp_segments: u64,
    pub connections: u64,
    pub completed: u64,
    pub failed: u64,
    pub not_tls: u64,
    pub undecided: u64,
}

/// How one capture file is read.
#[derive(Debug, Clone, Copy)]
pub struct Pass<'a> {
    /// Server ports that count as TLS ports.
    pub tls_ports: &'a [u16],
    /// Keep each conversation's events in its report (tests replay them).
    pub record: bool,
    /// A progress bar on stderr (when it is a terminal and the file is big).
    pub progress: bool,
    /// Threads that judge conversations (each connection stays on one).
    pub workers: usize,
}

impl Pass<'_> {
    /// One worker per core, at most 8.
    pub fn default_workers() -> usize {
        std::thread::available_parallelism().map_or(1, |n| n.get().min(8))
    }
}

/// Reads a capture file; every finished conversation is turned into a `T` by `render` (on
/// a worker thread) and given to `sink` (on this thread) in the order the conversations
/// ended, whatever the number of workers. A file that turns unreadable part-way is judged
/// up to there (open conversations as at its last frame) before the error is returned.
pub fn analyze_file<T: Send>(
    path: &Path,
    pass: &Pass<'_>,
    render: impl Fn(Report) -> T + Sync,
    mut sink: impl FnMut(T),
) -> anyhow::Result<Totals> {
    let file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let size = file.metadata().map(|m| m.len()).unwrap_or(0);
    let bar = progress_bar(pass.progress, size);
    let mut reader = BufReader::with_capacity(
        1 << 20,
        CountingReader {
            inner: file,
            bar: bar.clone(),
        },
    );
    let mut magic = [0u8; 4];
    reader
        .read_exact(&mut magic)
        .with_context(|| format!("{}: too short to be a capture file", path.display()))?;
    let mut capture = CaptureFile::open(magic, reader)
        .with_context(|| format!("cannot read {}", path.display()))?;
    let judged = Mutex::new(Totals::default());
    let mut totals = Totals::default();
    let mut unreadable = None;
    std::thread::scope(|scope| {
        let mut shards = Shards::start(
            scope,
            pass.workers,
            pass.tls_ports,
            pass.record,
            &render,
            &judged,
        );
        let mut last_ts = 0;
        while let Some(frame) = capture.next_frame() {
            let frame = match frame {
                Ok(frame) => frame,
                Err(e) => {
                    unreadable = Some(e);
                    break;
                }
            };
            totals.frames += 1;
            last_ts = last_ts.max(frame.ts_ns);
            let Some(seg) = segments::tcp_segment(&frame) else {
                continue;
            };
            totals.tcp_segments += 1;
            shards.segment(totals.frames, frame.ts_ns, &seg, &mut sink)?;
        }
        shards.finish(last_ts, &mut sink)
    })?;
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    totals.add_outcomes(&judged.into_inner().unwrap_or_default());
    if let Some(e) = unreadable {
        return Err(anyhow::Error::new(e).context(format!(
            "{}: unreadable after {} frames (the {} connections before are reported)",
            path.display(),
            totals.frames,
            totals.connections
        )));
    }
    Ok(totals)
}

impl Totals {
    /// Counts one judged conversation.
    fn count(&mut self, o: &HandshakeOutcome) {
        self.connections += 1;
        match o {
            HandshakeOutcome::Completed(_) => self.completed += 1,
            HandshakeOutcome::Failed(_) => self.failed += 1,
            HandshakeOutcome::NotTls(_) => self.not_tls += 1,
            HandshakeOutcome::Undecided => self.undecided += 1,
        }
    }

    /// Adds the outcome counts of `other` (not its frame counts).
    fn add_outcomes(&mut self, other: &Totals) {
        self.connections += other.connections;
        self.completed += other.completed;
        self.failed += other.failed;
        self.not_tls += other.not_tls;
        self.undecided += other.undecided;
    }
}

fn progress_bar(wanted: bool, size: u64) -> Option<indicatif::ProgressBar> {
    if !wanted || !std::io::stderr().is_terminal() || size < 8 << 20 {
        return None;
    }
    let bar = indicatif::ProgressBar::new(size);
    if let Ok(style) = indicatif::ProgressStyle::with_template(
        "{spinner} {bytes}/{total_bytes} [{bar:40}] {eta} left",
    ) {
        bar.set_style(style);
    }
    bar.tick(); // drawn at once, not only at the first refresh
    Some(bar)
}

struct CountingReader<R> {
    inner: R,
    bar: Option<indicatif::ProgressBar>,
}

impl<R: Read> Read for CountingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        if let Some(bar) = &self.bar {
            bar.inc(n as u64);
        }
        Ok(n)
    }
}

/// One output line of `analyze --json`.
#[derive(Debug, Serialize)]
pub struct OutcomeLine<'a> {
    pub time: String,
    pub client: String,
    pub server: String,
    #[serde(flatten)]
    pub outcome: &'a HandshakeOutcome,
}

impl<'a> OutcomeLine<'a> {
    pub fn new(r: &'a Report) -> Self {
        OutcomeLine {
            time: rfc3339(r.first_ns),
            client: r.client.to_string(),
            server: r.server.to_string(),
            outcome: &r.outcome,
        }
    }
}

/// `tlsmon analyze`: prints every conversation's outcome; errors name the file.
pub fn run(path: &Path, opts: &AnalyzeOptions) -> anyhow::Result<Totals> {
    let stdout = std::io::stdout();
    let mut out = BufWriter::new(stdout.lock());
    let mut write_err = None;
    if !opts.json {
        writeln!(out, "{}", table_header())?;
    }
    let pass = Pass {
        tls_ports: &opts.tls_ports,
        record: false,
        progress: opts.progress,
        workers: Pass::default_workers(),
    };
    let render = |r: Report| -> Option<std::io::Result<String>> {
        if !wanted(opts, &r.outcome) {
            return None;
        }
        Some(if opts.json {
            serde_json::to_string(&OutcomeLine::new(&r)).map_err(std::io::Error::other)
        } else {
            Ok(table_row(&r))
        })
    };
    let analyzed = analyze_file(path, &pass, render, |line| {
        if write_err.is_some() {
            return;
        }
        if let Some(res) = line
            && let Err(e) = res.and_then(|line| writeln!(out, "{line}"))
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
        "tlsmon: {} connections: {} completed, {} failed, {} not TLS, {} undecided ({} frames)",
        totals.connections,
        totals.completed,
        totals.failed,
        totals.not_tls,
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
        "{:<23} {:<22} {:<22} {:<20} {:<8} {:<10} {:<20} {:<28} {:<26} MESSAGE",
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
                "{}{}",
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
        HandshakeOutcome::Undecided => (
            None,
            None,
            "-".into(),
            "-".into(),
            "-".into(),
            String::new(),
        ),
    };
    format!(
        "{:<23} {:<22} {:<22} {:<20} {:<8} {:<10} {:<20} {:<28} {:<26} {}",
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

/// "2026-11-23T10:00:00.123Z".
pub fn rfc3339(ns: u64) -> String {
    let secs = (ns / 1_000_000_000) as i64;
    let ms = (ns / 1_000_000) % 1000;
    time::OffsetDateTime::from_unix_timestamp(secs)
        .ok()
        .and_then(|t| {
            t.format(time::macros::format_description!(
                "[year]-[month]-[day]T[hour]:[minute]:[second]"
            ))
            .ok()
        })
        .map_or_else(|| ns.to_string(), |s| format!("{s}.{ms:03}Z"))
}
