//! `cargo xtask bench mqtt`: the publishing path of the daemon (store writer with the SQLite
//! outbox, rumqttc publisher, PUBACK -> delete) against a real mosquitto, read by a real
//! `mosquitto_sub` (QoS 1). Two measurements from one run:
//! 1. sustained: EVENTS alerts produced at RATE/s; the rate at which they all arrive;
//! 2. backlog: 100,000 alerts queued while the broker is down; the time from the broker's
//!    return until the subscriber has them all.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use tlsmon_e2e::{Mosquitto, Subscriber, TempDir};

use crate::bench_daemon::{clock_ticks_per_sec, proc_usage};

/// The load process: stdin held open until we are done with it.
struct Load {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: std::sync::mpsc::Receiver<String>,
}

impl Load {
    fn start(bin: &Path, broker: &str, db: &Path, events: u64, rate: u64) -> Result<Load> {
        let mut child = Command::new(bin)
            .args([
                broker,
                &db.display().to_string(),
                &events.to_string(),
                &rate.to_string(),
            ])
            .env("TLSMON_LOG", "warn")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("start mqtt_load")?;
        let out = child.stdout.take().context("stdout")?;
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for l in BufReader::new(out).lines().map_while(Result::ok) {
                let _ = tx.send(l);
            }
        });
        Ok(Load {
            stdin: child.stdin.take(),
            child,
            lines,
        })
    }

    /// The line starting with `prefix`, within `limit`.
    fn line(&self, prefix: &str, limit: Duration) -> Result<String> {
        let t0 = Instant::now();
        while let Some(left) = limit.checked_sub(t0.elapsed()) {
            match self.lines.recv_timeout(left) {
                Ok(l) if l.starts_with(prefix) => return Ok(l),
                Ok(_) => {}
                Err(_) => break,
            }
        }
        bail!("mqtt_load did not print {prefix:?} within {limit:?}")
    }

    /// Closes stdin (clean stop) and returns the outbox backlog it reports.
    fn finish(mut self) -> Result<u64> {
        drop(self.stdin.take());
        let l = self.line("backlog ", Duration::from_secs(30))?;
        let _ = self.child.wait();
        Ok(l.trim_start_matches("backlog ").parse()?)
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits (bounded) until the subscriber counted `n` messages; the time it took.
fn wait_count(sub: &Subscriber, n: usize, limit: Duration) -> Result<Duration> {
    let t0 = Instant::now();
    while sub.count() < n {
        if t0.elapsed() > limit {
            bail!(
                "the subscriber has {} of {n} messages after {limit:?}",
                sub.count()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(t0.elapsed())
}

fn distinct(sub: &Subscriber) -> usize {
    sub.messages()
        .iter()
        .filter_map(|(_, v)| v["event_id"].as_str().map(str::to_owned))
        .collect::<BTreeSet<_>>()
        .len()
}

pub fn run(load_bin: &Path, rate: u64, secs: u64, backlog: u64) -> Result<String> {
    let ticks_per_sec = clock_ticks_per_sec();
    // 1. Sustained.
    let events = rate * secs;
    let broker = Mosquitto::start("allow_anonymous true");
    let sub = Subscriber::start(broker.port, "tlsmon/v1/+/+/events", &[]);
    let dir = TempDir::new("bench-mqtt");
    let start = Instant::now();
    let load = Load::start(
        load_bin,
        &broker.url(),
        &dir.path().join("a.db"),
        events,
        rate,
    )?;
    let pid = load.child.id();
    let (ticks0, _) = proc_usage(pid).context("/proc")?;
    let limit = Duration::from_secs(secs * 3 + 60);
    let produced = load.line("produced ", limit)?;
    let all_in = wait_count(&sub, events as usize, limit)?;
    let end_to_end = start.elapsed().max(all_in);
    let (ticks1, rss) = proc_usage(pid).context("/proc")?;
    let left = load.finish()?;
    let got = distinct(&sub);
    let cpu = (ticks1 - ticks0) as f64 / ticks_per_sec / end_to_end.as_secs_f64() * 100.0;
    let produced_secs: f64 = produced
        .split_whitespace()
        .nth(3)
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    let sustained = format!(
        "sustained: {events} events at {rate}/s target; {produced} s; all {got} distinct at the subscriber after {:.2} s = {:.0} events/s end to end, the last {:.2} s after it was produced; outbox left {left}; publisher process {cpu:.0}% of one core, RSS {:.1} MiB",
        end_to_end.as_secs_f64(),
        events as f64 / end_to_end.as_secs_f64(),
        (end_to_end.as_secs_f64() - produced_secs).max(0.0),
        rss as f64 / 1024.0
    );
    println!("xtask: {sustained}");
    if got as u64 != events {
        bail!("{sustained}: {} events missing", events - got as u64);
    }
    drop(sub);
    drop(broker);

    // 2. Backlog after an outage.
    let mut broker = Mosquitto::start("allow_anonymous true");
    let sub = Subscriber::start(broker.port, "tlsmon/v1/+/+/events", &[]);
    broker.down();
    let load = Load::start(
        load_bin,
        &broker.url(),
        &dir.path().join("b.db"),
        backlog,
        0,
    )?;
    let produced = load.line("produced ", Duration::from_secs(300))?;
    // Everything committed to the outbox before the broker returns.
    std::thread::sleep(Duration::from_secs(2));
    let up = Instant::now();
    broker.up();
    // The publisher retries with backoff (up to 30 s) while the broker is away: the first
    // message shows when it reconnected; the rest is the drain itself.
    let first = wait_count(&sub, 1, Duration::from_secs(60))?;
    let drained = wait_count(&sub, backlog as usize, Duration::from_secs(600))?;
    let total = up.elapsed();
    let left = load.finish()?;
    let got = distinct(&sub);
    let drain = format!(
        "backlog: {backlog} events queued while the broker was down ({produced} s); all {got} distinct at the subscriber {:.2} s after the broker returned (first after {:.2} s: reconnect backoff; then {:.2} s of drain = {:.0} events/s); outbox left {left}",
        total.as_secs_f64(),
        first.as_secs_f64(),
        drained.as_secs_f64(),
        backlog as f64 / drained.as_secs_f64().max(0.001)
    );
    println!("xtask: {drain}");
    if got as u64 != backlog {
        bail!("{drain}: {} events missing", backlog - got as u64);
    }
    Ok(format!("{sustained}\nxtask: {drain}"))
}
