//! `cargo xtask bench daemon`: the real daemon (eBPF attached) watching a storm of failing
//! TLS handshakes on loopback. The storm is ours: client threads send a TLS 1.2 ClientHello
//! from one of 100 loopback addresses to a server that answers every hello with a fatal
//! `handshake_failure` alert, paced to the target rate. Reported side by side from one run:
//! connections made vs handshakes the daemon judged, ring drops, alerts and events stored,
//! daemon CPU (share of one core, and per CPU-second of the load generator), RSS idle and
//! peak.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use tlsmon_e2e::load::{client_hello, connect_from, serve};

/// Distinct client addresses (127.0.0.10 ..): enough to trip the per-listener flood summary.
const PEERS: u8 = 100;
const CLIENT_THREADS: usize = 8;
const SERVER_THREADS: usize = 4;

/// One client thread: connections paced to `per_sec` until `until`; returns (made, failed).
fn storm(server: SocketAddr, first_peer: u8, per_sec: f64, until: Instant) -> (u64, u64) {
    let hello = client_hello();
    let gap = Duration::from_secs_f64(1.0 / per_sec);
    let (mut made, mut failed) = (0u64, 0u64);
    let mut next = Instant::now();
    let mut peer = first_peer;
    let mut buf = [0u8; 64];
    while Instant::now() < until {
        let now = Instant::now();
        if now < next {
            thread::sleep(next - now);
        }
        next += gap;
        peer = 10 + (peer - 10 + 1) % PEERS;
        let local = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::new(127, 0, 0, peer), 0));
        let ok = connect_from(local, server).and_then(|mut s| {
            s.set_read_timeout(Some(Duration::from_secs(2)))?;
            s.write_all(&hello)?;
            // The alert, then the server's FIN.
            while s.read(&mut buf)? > 0 {}
            Ok(())
        });
        made += 1;
        failed += u64::from(ok.is_err());
    }
    (made, failed)
}

/// (utime + stime) in clock ticks and VmRSS in KiB of a process.
pub fn proc_usage(pid: u32) -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches(" kB")
        .parse()
        .ok()?;
    Some((ticks, rss))
}

/// The unit of the CPU times in /proc/PID/stat.
pub fn clock_ticks_per_sec() -> f64 {
    // SAFETY: sysconf has no side effects.
    unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64
}

/// This process's CPU ticks (the load generator: clients and server threads).
fn own_ticks() -> u64 {
    proc_usage(std::process::id()).map_or(0, |u| u.0)
}

pub fn http_get(endpoint: SocketAddr, path: &str) -> Option<String> {
    let mut s = TcpStream::connect_timeout(&endpoint, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    let (head, body) = out.split_once("\r\n\r\n")?;
    head.contains(" 200 ").then(|| body.to_owned())
}

/// Sum of every sample of a Prometheus metric family (any labels).
fn metric(text: &str, name: &str) -> u64 {
    samples_where(text, |l| l[name.len()..].starts_with(['{', ' ']), name)
}

/// Sum of the samples whose line starts with `prefix` and passes `keep`.
fn samples_where(text: &str, keep: impl Fn(&str) -> bool, prefix: &str) -> u64 {
    text.lines()
        .filter(|l| l.starts_with(prefix) && keep(l))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// A running `tlsmon run`; killed when dropped.
pub struct Daemon(pub Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts the release daemon with its default configuration apart from a scratch database
/// and status endpoint in `dir`; returns once `/readyz` answers (60 s at most).
/// Starts `tlsmon run` (scratch database and endpoint, `env` added) and waits until ready.
pub fn start_daemon(bin: &Path, dir: &Path, env: &[(&str, &str)]) -> Result<(Daemon, SocketAddr)> {
    let endpoint: SocketAddr = TcpListener::bind("127.0.0.1:0")?.local_addr()?;
    let cfg = dir.join("tlsmon.toml");
    std::fs::write(
        &cfg,
        format!(
            "[store]\npath = \"{}\"\n\n[status]\nlisten = \"{endpoint}\"\n",
            dir.join("tlsmon.db").display()
        ),
    )?;
    let child = Command::new(bin)
        .arg("run")
        .arg("--config")
        .arg(&cfg)
        .env("TLSMON_LOG", "error")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("start tlsmon run")?;
    let mut daemon = Daemon(child);
    let t0 = Instant::now();
    while http_get(endpoint, "/readyz").is_none() {
        if t0.elapsed() > Duration::from_secs(60) {
            bail!("tlsmon run not ready within 60 s");
        }
        if let Ok(Some(s)) = daemon.0.try_wait() {
            bail!("tlsmon run exited: {s}");
        }
        thread::sleep(Duration::from_millis(100));
    }
    Ok((daemon, endpoint))
}

pub fn run(bin: &Path, rate: u32, secs: u64) -> Result<String> {
    let dir = std::env::temp_dir().join(format!("tlsmon-bench-daemon-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let (daemon, endpoint) = start_daemon(bin, &dir, &[])?;
    let pid = daemon.0.id();
    // Idle: a few seconds after attach, nothing but the host's own traffic.
    thread::sleep(Duration::from_secs(3));
    let (_, idle_rss) = proc_usage(pid).context("daemon /proc")?;

    let listener = Arc::new(TcpListener::bind("127.0.0.1:0")?);
    let server = listener.local_addr()?;
    let stop = Arc::new(AtomicBool::new(false));
    let servers: Vec<_> = (0..SERVER_THREADS)
        .map(|_| {
            let (l, s) = (listener.clone(), stop.clone());
            thread::spawn(move || serve(l, s))
        })
        .collect();

    let (ticks0, _) = proc_usage(pid).context("daemon /proc")?;
    let gen0 = own_ticks();
    let start = Instant::now();
    let until = start + Duration::from_secs(secs);
    let peak = Arc::new(AtomicU64::new(idle_rss));
    let sampling = Arc::new(AtomicBool::new(true));
    let sampler = {
        let (peak, sampling) = (peak.clone(), sampling.clone());
        thread::spawn(move || {
            while sampling.load(Ordering::Relaxed) {
                if let Some((_, rss)) = proc_usage(pid) {
                    peak.fetch_max(rss, Ordering::Relaxed);
                }
                thread::sleep(Duration::from_millis(200));
            }
        })
    };
    let per_thread = f64::from(rate) / CLIENT_THREADS as f64;
    let clients: Vec<_> = (0..CLIENT_THREADS)
        .map(|i| {
            let first = 10 + (i as u8 * 13) % PEERS;
            thread::spawn(move || storm(server, first, per_thread, until))
        })
        .collect();
    let (mut made, mut errors) = (0, 0);
    for c in clients {
        let (m, f) = c.join().map_err(|_| anyhow::anyhow!("client thread"))?;
        made += m;
        errors += f;
    }
    let storm_secs = start.elapsed().as_secs_f64();
    let gen_ticks = own_ticks().saturating_sub(gen0);
    // Let the daemon judge what is still open (closes arrive within the drain interval).
    let mut judged = 0;
    let settle = Instant::now();
    while settle.elapsed() < Duration::from_secs(30) {
        thread::sleep(Duration::from_secs(1));
        let m = http_get(endpoint, "/metrics").unwrap_or_default();
        let now = metric(&m, "tlsmon_handshakes_total");
        if now == judged && now > 0 {
            break;
        }
        judged = now;
    }
    let (ticks1, _) = proc_usage(pid).context("daemon /proc")?;
    let busy_secs = storm_secs + settle.elapsed().as_secs_f64();
    sampling.store(false, Ordering::Relaxed);
    let _ = sampler.join();
    stop.store(true, Ordering::Relaxed);
    for _ in 0..SERVER_THREADS {
        let _ = TcpStream::connect(server);
    }
    for s in servers {
        let _ = s.join();
    }

    let m = http_get(endpoint, "/metrics").context("GET /metrics")?;
    let failed = samples_where(&m, |_| true, "tlsmon_handshakes_total{outcome=\"failed\"");
    let drops = metric(&m, "tlsmon_ring_drops_total");
    let stored = metric(&m, "tlsmon_events_stored_total");
    let alerts = metric(&m, "tlsmon_alerts_total");
    let store_errors = metric(&m, "tlsmon_store_errors_total");
    let hz = clock_ticks_per_sec();
    let cpu_secs = ticks1.saturating_sub(ticks0) as f64 / hz;
    let gen_cpu = gen_ticks as f64 / hz;
    let peak = peak.load(Ordering::Relaxed);
    let _ = std::fs::remove_dir_all(&dir);
    // Both ends are on this host: each connection is judged once per end.
    let expected = 2 * (made - errors);
    Ok(format!(
        "bench daemon: {made} connections in {storm_secs:.1} s ({:.0}/s, target {rate}/s), \
         {errors} client errors\n  \
         judged failed {failed} of {expected} expected (both ends) = {:.4}; ring drops {drops}; \
         alerts {alerts}; events stored {stored}; store errors {store_errors}\n  \
         daemon CPU {cpu_secs:.1} s over {busy_secs:.1} s = {:.1}% of one core; \
         load generator CPU {gen_cpu:.1} s; daemon/generator = {:.2}\n  \
         RSS idle {:.1} MiB, peak under storm {:.1} MiB (targets < 40 and < 100)",
        made as f64 / storm_secs,
        failed as f64 / expected.max(1) as f64,
        100.0 * cpu_secs / busy_secs,
        cpu_secs / gen_cpu.max(0.01),
        idle_rss as f64 / 1024.0,
        peak as f64 / 1024.0,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metric_sums_every_labelled_sample() {
        let text = "# HELP x\nx_total{a=\"1\"} 3\nx_total{a=\"2\"} 4\nx_total_other 9\n";
        assert_eq!(metric(text, "x_total"), 7);
    }
}
