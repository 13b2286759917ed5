//! `cargo xtask bench capture`: what attaching tlsmon costs the host's own work. Each
//! workload runs without the daemon, with the daemon's hooks attached but every program
//! empty (the floor: what the hooks themselves cost), and with the release daemon attached
//! (eBPF programs on the root cgroup, default configuration), in rounds that rotate which
//! comes first; the medians of each side and their ratios to "without" (throughput) are
//! reported.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use tlsmon_e2e::{Bg, TempDir, free_port, self_signed_cert_for_days, spawn, wait_listening};

use crate::{
    bench_daemon::{http_get, proc_usage, start_daemon},
    bpf_stats,
};

/// One measured workload: its name, the target ratio and how to get ops/s.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Workload {
    /// (a) wrk against nginx, keep-alive.
    WrkKeepAlive,
    /// (b) wrk against nginx, a new connection per request.
    WrkNewConnection,
    /// (c) `dd bs=64` from /dev/zero to /dev/null.
    Dd64,
    /// (c) getpid(2) in a loop.
    Getpid,
    /// (c) 64-byte write + read through a pipe in a loop.
    Pipe,
    /// (d) full TLS handshakes against nginx (`openssl s_time -new`).
    TlsHandshakes,
}

const WORKLOADS: [Workload; 6] = [
    Workload::WrkKeepAlive,
    Workload::WrkNewConnection,
    Workload::Dd64,
    Workload::Getpid,
    Workload::Pipe,
    Workload::TlsHandshakes,
];

impl Workload {
    fn label(self) -> &'static str {
        match self {
            Workload::WrkKeepAlive => "(a) wrk nginx keep-alive (req/s)",
            Workload::WrkNewConnection => "(b) wrk nginx new connection per request (req/s)",
            Workload::Dd64 => "(c) dd bs=64 /dev/zero -> /dev/null (blocks/s)",
            Workload::Getpid => "(c) getpid loop (calls/s)",
            Workload::Pipe => "(c) 64-byte pipe write+read loop (round trips/s)",
            Workload::TlsHandshakes => "(d) TLS handshakes, openssl s_time -new (handshakes/s)",
        }
    }

    /// The least `with / empty programs` (paired) that meets the target: what tlsmon may
    /// cost over the bare hooks.
    fn target(self) -> f64 {
        match self {
            Workload::WrkNewConnection | Workload::TlsHandshakes => 0.98,
            _ => 0.99,
        }
    }
}

/// nginx on loopback: plain HTTP and TLS, 2 workers, with its certificate and files in
/// the scratch directory of a fresh self-signed certificate.
struct Nginx {
    _process: Bg,
    _dir: TempDir,
    http: SocketAddr,
    tls: SocketAddr,
}

fn start_nginx() -> Nginx {
    // Valid for a year: (d) measures ordinary good handshakes, not a certificate about to
    // expire (each of whose handshakes is a warning).
    let dir = self_signed_cert_for_days(365);
    let http = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let tls = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let d = dir.path().display();
    let conf = dir.path().join("nginx.conf");
    let (http_port, tls_port) = (http.port(), tls.port());
    std::fs::write(
        &conf,
        format!(
            "worker_processes 2;\npid {d}/nginx.pid;\nerror_log {d}/error.log;\n\
             events {{ worker_connections 1024; }}\n\
             http {{ access_log off; keepalive_requests 1000000;\n\
             server {{ listen 127.0.0.1:{http_port}; location / {{ return 200 \"ok\\n\"; }} }}\n\
             server {{ listen 127.0.0.1:{tls_port} ssl; ssl_certificate {d}/cert.pem;\n\
             ssl_certificate_key {d}/key.pem; ssl_session_cache off; ssl_session_tickets off;\n\
             location / {{ return 200 \"ok\\n\"; }} }} }}\n"
        ),
    )
    .expect("write nginx.conf");
    let process = spawn(
        Command::new("nginx")
            .arg("-p")
            .arg(dir.path())
            .arg("-c")
            .arg(&conf)
            .args(["-g", "daemon off;"]),
    );
    wait_listening(http, Duration::from_secs(10));
    wait_listening(tls, Duration::from_secs(10));
    Nginx {
        _process: process,
        _dir: dir,
        http,
        tls,
    }
}

/// Runs a bounded command and returns its standard output and error together.
fn output(cmd: &mut Command) -> Result<String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("run {cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr))
}

/// "Requests/sec:  12345.67" from wrk's report.
fn wrk_rate(report: &str) -> Option<f64> {
    report
        .lines()
        .find_map(|l| l.trim().strip_prefix("Requests/sec:")?.trim().parse().ok())
}

/// The connection count of "1234 connections in 5 real seconds, ..." (s_time's report;
/// its seconds are whole, so the caller times the run itself).
fn s_time_connections(report: &str) -> Option<u64> {
    report.lines().find_map(|l| {
        let (n, rest) = l.split_once(" connections in ")?;
        rest.contains("real seconds")
            .then(|| n.trim().parse().ok())?
    })
}

/// Repeats `op` for `secs`; returns how many times per second.
fn loop_rate(secs: u64, mut op: impl FnMut()) -> f64 {
    let t0 = Instant::now();
    let until = Duration::from_secs(secs);
    let mut n = 0u64;
    while t0.elapsed() < until {
        for _ in 0..1000 {
            op();
        }
        n += 1000;
    }
    n as f64 / t0.elapsed().as_secs_f64()
}

fn measure(w: Workload, nginx: &Nginx, secs: u64) -> Result<f64> {
    let wrk = |extra: &[&str]| -> Result<f64> {
        let report = output(
            Command::new("wrk")
                .args(["-t", "2", "-c", "32", "-d", &format!("{secs}s")])
                .args(extra)
                .arg(format!("http://{}/", nginx.http)),
        )?;
        wrk_rate(&report).with_context(|| format!("no Requests/sec in wrk's report: {report}"))
    };
    match w {
        Workload::WrkKeepAlive => wrk(&[]),
        Workload::WrkNewConnection => wrk(&["-H", "Connection: close"]),
        Workload::Dd64 => {
            let count: u64 = 2_000_000 * secs;
            let t0 = Instant::now();
            output(
                Command::new("dd")
                    .args(["if=/dev/zero", "of=/dev/null", "bs=64"])
                    .arg(format!("count={count}")),
            )?;
            Ok(count as f64 / t0.elapsed().as_secs_f64())
        }
        Workload::Getpid => Ok(loop_rate(secs, || {
            // SAFETY: getpid has no preconditions; the raw syscall avoids any libc cache.
            unsafe { libc::syscall(libc::SYS_getpid) };
        })),
        Workload::Pipe => {
            let mut fds = [0i32; 2];
            // SAFETY: pipe(2) into a two-element array.
            if unsafe { libc::pipe(fds.as_mut_ptr()) } != 0 {
                bail!("pipe: {}", std::io::Error::last_os_error());
            }
            let mut buf = [7u8; 64];
            let rate = loop_rate(secs, || {
                // SAFETY: 64 bytes to and from our own pipe, which has room for them.
                unsafe {
                    libc::write(fds[1], buf.as_ptr().cast(), 64);
                    libc::read(fds[0], buf.as_mut_ptr().cast(), 64);
                }
            });
            // SAFETY: closing the two descriptors pipe(2) gave us.
            unsafe {
                libc::close(fds[0]);
                libc::close(fds[1]);
            }
            Ok(rate)
        }
        Workload::TlsHandshakes => {
            let t0 = Instant::now();
            let report = output(
                Command::new("openssl")
                    .args(["s_time", "-connect", &nginx.tls.to_string(), "-new"])
                    .args(["-time", &secs.to_string()]),
            )?;
            let n = s_time_connections(&report)
                .with_context(|| format!("no connection count in s_time's report: {report}"))?;
            Ok(n as f64 / t0.elapsed().as_secs_f64())
        }
    }
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n == 0 {
        0.0
    } else if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// Runs every workload whose letter is in `only` `rounds` times each way; returns the report
/// (a Markdown table).
pub fn run(bin: &Path, rounds: usize, secs: u64, only: &str) -> Result<String> {
    let chosen = |w: &Workload| {
        only.chars()
            .any(|c| w.label().starts_with(&format!("({c})")))
    };
    if !WORKLOADS.iter().any(chosen) {
        bail!("--only {only:?} names no workload (letters a, b, c, d)");
    }
    for tool in ["wrk", "nginx", "openssl", "dd"] {
        let found = Command::new("sh")
            .args([
                "-c",
                &format!("command -v {tool} || test -x /usr/sbin/{tool}"),
            ])
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !found {
            bail!("{tool} is missing: run scripts/setup.sh test (it installs wrk, nginx, openssl)");
        }
    }
    let dir = TempDir::new("bench-capture");
    let nginx = start_nginx();
    // rates[side][workload][round]
    let mut rates: [Vec<Vec<f64>>; 3] = std::array::from_fn(|_| vec![Vec::new(); WORKLOADS.len()]);
    for round in 0..rounds {
        for (i, w) in WORKLOADS.iter().enumerate() {
            if !chosen(w) {
                continue;
            }
            // The sides of one workload run back to back (a pair seconds apart sees the same
            // neighbours on a shared VM), in an order that rotates, so drift favours none.
            for k in 0..SIDES.len() {
                let side = SIDES[(round + i + k) % SIDES.len()];
                let daemon = match side {
                    Side::Without => None,
                    Side::Floor => Some(start_daemon(
                        bin,
                        dir.path(),
                        &[("TLSMON_BENCH_FLOOR", "1")],
                    )?),
                    Side::With => Some(start_daemon(bin, dir.path(), &[])?),
                };
                let rate = measure(*w, &nginx, secs)?;
                drop(daemon);
                eprintln!(
                    "bench: round {round} {:7} {}: {rate:.0}/s",
                    side.label(),
                    w.label()
                );
                rates[side as usize][i].push(rate);
            }
        }
    }
    let costs = program_costs(bin, dir.path(), &nginx, secs)?;
    drop(nginx);
    let mut table = String::from(
        "| workload | without tlsmon | empty programs | with tlsmon | empty / without | with / without | with / empty | target (with / empty) | met |\n\
         | --- | --- | --- | --- | --- | --- | --- | --- | --- |\n",
    );
    for (i, w) in WORKLOADS.iter().enumerate() {
        if !chosen(w) {
            continue;
        }
        let [off, floor, on] = [Side::Without, Side::Floor, Side::With]
            .map(|s| median(&mut rates[s as usize][i].clone()));
        let without = &rates[Side::Without as usize][i];
        let empty = &rates[Side::Floor as usize][i];
        let with = &rates[Side::With as usize][i];
        let ratio_floor = paired_ratio(empty, without);
        let ratio = paired_ratio(with, without);
        let over_floor = paired_ratio(with, empty);
        table.push_str(&format!(
            "| {} | {off:.0} | {floor:.0} | {on:.0} | {ratio_floor:.3} | {ratio:.3} | {over_floor:.3} | >= {:.2} | {} |\n",
            w.label(),
            w.target(),
            if over_floor >= w.target() { "yes" } else { "**no**" }
        ));
    }
    Ok(format!(
        "capture: {rounds} rounds of {secs} s per workload and side; rates are medians, ratios \
         the median of each round's ratio (sides measured seconds apart); empty programs = the \
         same hooks attached, every program returning at once (TLSMON_BENCH_FLOOR=1): what \
         any design on these hooks costs at least, and what tlsmon is judged against. The \
         getpid loop touches no hook: its ratios show this run's noise.\n{table}\n{costs}"
    ))
}

/// One extra pass with the kernel's BPF statistics on (they add ~30 ns a run, so they stay
/// off while throughput is measured): nanoseconds per run of each program for (a) and (b),
/// with tlsmon's programs and with the empty ones, per packet and per new connection; and
/// for (d) the daemon's CPU time per judged handshake end.
fn program_costs(bin: &Path, dir: &Path, nginx: &Nginx, secs: u64) -> Result<String> {
    let _stats = bpf_stats::Enabled::new()?;
    let mut out = String::from(
        "eBPF cost from bpf_stats (ns per run; a cgroup_skb run is one packet; both ends of \
         every connection are on this host):\n\n\
         | program | (a) keep-alive, empty | (a) keep-alive, tlsmon | (b) new connection, empty | (b) new connection, tlsmon |\n\
         | --- | --- | --- | --- | --- |\n",
    );
    let mut per_run: BTreeMap<String, [f64; 4]> = BTreeMap::new();
    let mut per_connection = [0.0f64; 2];
    for (col, (w, side)) in [
        (Workload::WrkKeepAlive, Side::Floor),
        (Workload::WrkKeepAlive, Side::With),
        (Workload::WrkNewConnection, Side::Floor),
        (Workload::WrkNewConnection, Side::With),
    ]
    .into_iter()
    .enumerate()
    {
        let env: &[(&str, &str)] = match side {
            Side::Floor => &[("TLSMON_BENCH_FLOOR", "1")],
            _ => &[],
        };
        let daemon = start_daemon(bin, dir, env)?;
        let before = bpf_stats::snapshot()?;
        let rate = measure(w, nginx, secs)?;
        let ran = bpf_stats::between(&before, &bpf_stats::snapshot()?);
        drop(daemon);
        for (name, runs) in &ran {
            per_run.entry(name.clone()).or_default()[col] = runs.per_run();
        }
        if w == Workload::WrkNewConnection {
            let connections = rate * secs as f64;
            let total: u64 = ran.values().map(|r| r.ns).sum();
            per_connection[col - 2] = total as f64 / connections.max(1.0);
        }
    }
    for (name, ns) in &per_run {
        out.push_str(&format!(
            "| {name} | {:.0} | {:.0} | {:.0} | {:.0} |\n",
            ns[0], ns[1], ns[2], ns[3]
        ));
    }
    let packet = |col: usize| {
        let (e, i) = (
            per_run.get("tlsmon_egress").map_or(0.0, |v| v[col]),
            per_run.get("tlsmon_ingress").map_or(0.0, |v| v[col]),
        );
        (e + i) / 2.0
    };
    out.push_str(&format!(
        "\nPer packet (cgroup_skb, mean of egress and ingress): keep-alive {:.0} ns vs {:.0} ns \
         empty ({:.2}x, target <= 1.5x); new connections {:.0} ns vs {:.0} ns ({:.2}x). Per new \
         connection, every program of both ends: {:.0} ns vs {:.0} ns empty.\n",
        packet(1),
        packet(0),
        packet(1) / packet(0).max(1.0),
        packet(3),
        packet(2),
        packet(3) / packet(2).max(1.0),
        per_connection[1],
        per_connection[0],
    ));
    // (d): what the daemon's own CPU costs per judged end of a TLS handshake.
    let (daemon, endpoint) = start_daemon(bin, dir, &[])?;
    let pid = daemon.0.id();
    let (ticks0, _) = proc_usage(pid).context("daemon /proc")?;
    let before = bpf_stats::snapshot()?;
    let rate = measure(Workload::TlsHandshakes, nginx, secs)?;
    let ran = bpf_stats::between(&before, &bpf_stats::snapshot()?);
    std::thread::sleep(Duration::from_millis(500));
    let (ticks1, _) = proc_usage(pid).context("daemon /proc")?;
    let status: serde_json::Value = http_get(endpoint, "/v1/status")
        .and_then(|b| serde_json::from_str(&b).ok())
        .unwrap_or_default();
    let failures: serde_json::Value = http_get(endpoint, "/v1/failures?since=1h&limit=5")
        .and_then(|b| serde_json::from_str(&b).ok())
        .unwrap_or_default();
    drop(daemon);
    let failed = status["handshakes"]["failed"].as_u64().unwrap_or(0);
    let warnings = status["handshakes"]["warnings"].as_u64().unwrap_or(0);
    if failed + warnings > 0 {
        // s_time's handshakes all succeed with a good certificate: an event here is a
        // misjudgement, and its documents and rows would inflate the figure below.
        eprintln!("bench: (d) {failed} ends judged failed, {warnings} warned: {failures:#}");
    }
    let judged = status["handshakes"]["judged"].as_u64().unwrap_or(0)
        + status["handshakes"]["capture_incomplete"]
            .as_u64()
            .unwrap_or(0);
    let handshakes = rate * secs as f64;
    // SAFETY: sysconf has no side effects.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let cpu_us = (ticks1 - ticks0) as f64 / hz * 1e6;
    let kernel_ns: u64 = ran.values().map(|r| r.ns).sum();
    out.push_str(&format!(
        "\n(d) {handshakes:.0} TLS handshakes ({judged} ends judged, {failed} failed, {warnings} warnings): the daemon used {:.1} ms of \
         CPU, {:.1} us per judged end; the kernel programs {:.1} us per handshake (both ends).\n",
        cpu_us / 1e3,
        cpu_us / (judged.max(1) as f64),
        kernel_ns as f64 / 1e3 / handshakes.max(1.0),
    ));
    Ok(out)
}

/// Median over rounds of `side[r] / without[r]`.
fn paired_ratio(side: &[f64], without: &[f64]) -> f64 {
    let mut r: Vec<f64> = side
        .iter()
        .zip(without)
        .filter(|(_, w)| **w > 0.0)
        .map(|(s, w)| s / w)
        .collect();
    median(&mut r)
}

/// What is attached while a workload runs.
#[derive(Clone, Copy, Debug)]
enum Side {
    Without = 0,
    Floor = 1,
    With = 2,
}

const SIDES: [Side; 3] = [Side::Without, Side::Floor, Side::With];

impl Side {
    fn label(self) -> &'static str {
        match self {
            Side::Without => "without",
            Side::Floor => "empty",
            Side::With => "with",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ratios_are_paired_by_round() {
        // Drift between rounds cancels in the per-round ratios; a zero round is left out.
        let without = [100.0, 200.0, 0.0, 400.0];
        let with = [90.0, 180.0, 50.0, 360.0];
        assert!((paired_ratio(&with, &without) - 0.9).abs() < 1e-9);
        assert_eq!(paired_ratio(&[], &[]), 0.0);
    }

    #[test]
    fn reports_of_wrk_and_s_time_are_read() {
        let wrk = "Running 5s test @ http://127.0.0.1:8080/\n  2 threads and 32 connections\nRequests/sec:  51234.56\nTransfer/sec:      7.33MB\n";
        assert_eq!(wrk_rate(wrk), Some(51234.56));
        assert_eq!(wrk_rate("nothing"), None);
        let s_time = "Collecting connection statistics for 5 seconds\n\n1001 connections in 3.21s; 311.84 connections/user sec, bytes read 0\n1001 connections in 6 real seconds, 0 bytes read per connection\n";
        assert_eq!(s_time_connections(s_time), Some(1001));
        assert_eq!(
            s_time_connections("1001 connections in 3.21s; 311 connections/user sec"),
            None
        );
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&mut [4.0, 1.0, 2.0, 3.0]), 2.5);
    }
}
