//! `cargo xtask bench capture`: what attaching tlsmon costs the host's own work. Each
//! workload runs without the daemon, with the daemon's hooks attached but every program
//! empty (the floor: what the hooks themselves cost), and with the release daemon attached
//! (eBPF programs on the root cgroup, default configuration), in rounds that rotate which
//! comes first; the medians of each side and their ratios to "without" (throughput) are
//! reported.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use tlsmon_e2e::{Bg, TempDir, free_port, self_signed_cert, spawn, wait_listening};

use crate::bench_daemon::start_daemon;

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

    fn target(self) -> f64 {
        match self {
            Workload::WrkNewConnection => 0.97,
            Workload::TlsHandshakes => 0.95,
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
    let dir = self_signed_cert();
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

/// Runs every workload `rounds` times each way; returns the report (a Markdown table).
pub fn run(bin: &Path, rounds: usize, secs: u64) -> Result<String> {
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
    drop(nginx);
    let mut table = String::from(
        "| workload | without tlsmon | empty programs | with tlsmon | floor ratio | ratio | target | met |\n\
         | --- | --- | --- | --- | --- | --- | --- | --- |\n",
    );
    for (i, w) in WORKLOADS.iter().enumerate() {
        let [off, floor, on] = [Side::Without, Side::Floor, Side::With]
            .map(|s| median(&mut rates[s as usize][i].clone()));
        let without = &rates[Side::Without as usize][i];
        let ratio_floor = paired_ratio(&rates[Side::Floor as usize][i], without);
        let ratio = paired_ratio(&rates[Side::With as usize][i], without);
        table.push_str(&format!(
            "| {} | {off:.0} | {floor:.0} | {on:.0} | {ratio_floor:.3} | {ratio:.3} | >= {:.2} | {} |\n",
            w.label(),
            w.target(),
            if ratio >= w.target() { "yes" } else { "**no**" }
        ));
    }
    Ok(format!(
        "capture: {rounds} rounds of {secs} s per workload and side; rates are medians, ratios \
         the median of each round's ratio to \"without\" (measured seconds apart); empty \
         programs = the same hooks attached, every program returning at once \
         (TLSMON_BENCH_FLOOR=1): what any design on these hooks costs at least. The getpid \
         loop touches no hook: its ratios show this run's noise.\n{table}"
    ))
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
