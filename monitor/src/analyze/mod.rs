//! `tlsmon analyze FILE.pcap[ng]`: the offline path. pcap reader → TCP segments → the same
//! reassembly and diagnosis core the daemon uses → one `Report` per connection (printed as
//! a table or JSON lines by `cli::analyze`).

pub mod capture_file;
pub mod conversations;
pub mod segments;
pub mod shards;

use std::fs::File;
use std::io::{BufReader, IsTerminal, Read};
use std::path::Path;
use std::sync::Mutex;

use anyhow::Context as _;
use serde::Serialize;

use crate::handshake::HandshakeOutcome;
use capture_file::CaptureFile;
use conversations::Report;
use shards::Shards;

/// Totals of one run.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Totals {
    pub frames: u64,
    pub tcp_segments: u64,
    pub connections: u64,
    pub completed: u64,
    pub failed: u64,
    pub not_tls: u64,
    /// The capture missed their start (no SYN, no ClientHello first).
    pub truncated: u64,
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
            HandshakeOutcome::Truncated(_) => self.truncated += 1,
            HandshakeOutcome::Undecided => self.undecided += 1,
        }
    }

    /// Adds the outcome counts of `other` (not its frame counts).
    fn add_outcomes(&mut self, other: &Totals) {
        self.connections += other.connections;
        self.completed += other.completed;
        self.failed += other.failed;
        self.not_tls += other.not_tls;
        self.truncated += other.truncated;
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
