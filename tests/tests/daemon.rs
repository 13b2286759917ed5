//! The daemon as operators run it: `tlsmon run` as a real process with its eBPF programs
//! attached, real failing clients on loopback, and what it reports through `/v1/failures`,
//! its SQLite database, `/metrics`, `tlsmon status` and its log. Needs root (`sudo ./x test`).

use std::{net::SocketAddr, path::Path, process::Command, time::Duration};

use serde_json::Value;
use tlsmon_e2e::{
    Daemon, TempDir, free_port, openssl_server, run_bounded, self_signed_cert, tlsmon_bin,
};

fn loopback() -> SocketAddr {
    format!("127.0.0.1:{}", free_port()).parse().expect("addr")
}

fn curl_fails(url: &str, port: u16, extra: &[&str]) -> bool {
    let (ok, _) = run_bounded(
        Command::new("curl")
            .args(["-sS", "-o", "/dev/null", "--max-time", "5"])
            .args(["--resolve", &format!("localhost:{port}:127.0.0.1")])
            .args(extra)
            .arg(url),
        Duration::from_secs(10),
    );
    !ok
}

fn metric(text: &str, prefix: &str) -> u64 {
    text.lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

#[test]
#[ignore = "root: loads eBPF programs (sudo ./x test)"]
fn a_failing_curl_is_reported_by_endpoint_database_metrics_status_and_log() {
    let pki = self_signed_cert();
    let addr = loopback();
    let _server = openssl_server(&pki, addr, &["-tls1_2"]);
    let d = Daemon::start("");
    let status = d.json("/v1/status");
    assert_eq!(status["ready"], true);
    assert!(
        status["probes"].as_array().is_some_and(|p| p.len() >= 5),
        "{status}"
    );

    let url = format!("https://localhost:{}/", addr.port());
    assert!(
        curl_fails(&url, addr.port(), &[]),
        "curl must refuse the self-signed server"
    );

    let port = addr.port();
    let alert = d
        .wait_failure("process=curl&since=5m", Duration::from_secs(10), |a| {
            a["peer"]["port"] == port
        })
        .unwrap_or_else(|| panic!("no curl failure within 10 s:\n{}", d.log()));
    assert_eq!(alert["schema"], "tlsmon.event/1");
    assert_eq!(alert["process"]["comm"], "curl");
    // The path is read from /proc when the connection opens; a curl that fails within
    // milliseconds may be gone by then (1 clean-clone run in 5): the kernel's comm is
    // always there, the path when it could be read (a long-lived server's is checked in
    // privileges.rs).
    assert!(
        alert["process"]["exe"] == "/usr/bin/curl" || alert["process"]["exe"].is_null(),
        "{alert}"
    );
    assert_eq!(alert["role"], "client");
    assert_eq!(alert["peer"]["ip"], "127.0.0.1");
    assert_eq!(alert["sni"], "localhost");
    assert_eq!(alert["alert"]["code"], 48, "{alert}");
    assert_eq!(alert["alert"]["sender"], "client");
    assert_eq!(alert["cause"], "self_signed", "{alert}");
    assert_eq!(alert["certificate"]["subject"], "CN=localhost", "{alert}");
    // What to change, with this certificate's name.
    assert!(
        alert["remedy"].as_str().is_some_and(
            |r| r.starts_with("CN=localhost is self-signed: serve a certificate from a CA")
        ),
        "{alert}"
    );
    assert!(
        alert["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("curl (pid ")),
        "{alert}"
    );
    // The server's side of the same handshake is reported too, named as openssl.
    let server_side = d
        .wait_failure("process=openssl&since=5m", Duration::from_secs(10), |a| {
            a["local"]["port"] == port
        })
        .expect("the server side");
    assert_eq!(server_side["role"], "server");
    assert_eq!(server_side["cause"], "self_signed");

    // The SQLite row.
    let db = rusqlite::Connection::open(d.db_path()).expect("open db");
    let (cause, count, comm): (String, i64, String) = db
        .query_row(
            "SELECT cause, count, process FROM alerts WHERE event_id = ?1",
            [alert["event_id"].as_str().expect("id")],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .expect("the alert's row");
    assert_eq!(
        (cause.as_str(), count, comm.as_str()),
        ("self_signed", 1, "curl")
    );

    // The Prometheus counter.
    let (code, metrics) = d.get("/metrics");
    assert_eq!(code, 200);
    assert!(
        metric(
            &metrics,
            "tlsmon_handshakes_total{outcome=\"failed\",cause=\"self_signed\""
        ) >= 2,
        "{metrics}"
    );
    assert_eq!(metric(&metrics, "tlsmon_ring_drops_total"), 0);

    // `tlsmon status` and `tlsmon failures`, as an operator types them.
    let endpoint = d.endpoint.to_string();
    let (ok, out) = d.status_table();
    assert!(ok, "tlsmon status failed");
    assert!(out.contains("tlsmon ready"), "{out}");
    assert!(out.contains("curl") && out.contains("self_signed"), "{out}");
    let (ok, out) = run_bounded(
        Command::new(tlsmon_bin()).args([
            "failures",
            "--endpoint",
            &endpoint,
            "--process",
            "curl",
            "--peer",
            "127.0.0.0/8",
        ]),
        Duration::from_secs(10),
    );
    assert!(
        ok && out.contains("curl[")
            && out.contains(&format!("127.0.0.1:{port}"))
            && out.contains("    fix: CN=localhost is self-signed"),
        "{out}"
    );

    // One warn line per alert, key=value, with process, peer and cause.
    let (status, log) = d.stop();
    assert!(
        status.is_some_and(|s| s.success()),
        "exit {status:?}:\n{log}"
    );
    let line = log
        .lines()
        .find(|l| l.contains("process=curl") && l.contains(&format!("peer_port={port} ")))
        .unwrap_or_else(|| panic!("no alert line:\n{log}"));
    assert!(
        line.contains(" WARN ")
            && line.contains("alert kind=handshake_failure cause=self_signed process=curl pid=")
            && line.contains(" peer_ip=127.0.0.1 ")
            && line.contains(" sni=localhost ")
            && !line.contains('\u{1b}'),
        "{line}"
    );
    assert!(log.contains("stopped"), "{log}");
}

/// A server that reads the ClientHello, answers a fatal handshake_failure alert and keeps
/// the socket open for 4 s before closing it.
const ALERT_AND_HOLD: &str = r#"
import socket, sys, time
ls = socket.socket(); ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
ls.bind(("127.0.0.1", int(sys.argv[1]))); ls.listen(8); ls.settimeout(30)
while True:
    c, _ = ls.accept()
    if c.recv(4096):
        c.sendall(bytes([21, 3, 3, 0, 2, 2, 40])); time.sleep(4); c.close(); break
    c.close()
"#;

#[test]
#[ignore = "root: loads eBPF programs (sudo ./x test)"]
fn a_server_the_kernel_did_not_name_is_found_through_proc() {
    // Without the tracepoint that names servers (as on a kernel where it cannot attach),
    // the kernel would name this server only when it closes, 4 s after its alert.
    let d = Daemon::start_with_env(
        "",
        &[
            ("TLSMON_SKIP_PROGRAMS", "tlsmon_reader"),
            ("TLSMON_LOG", "info,tlsmon::capture::socket_holder=debug"),
        ],
    );
    assert!(d.log().contains("not attached"), "{}", d.log());
    let addr = loopback();
    let _server = tlsmon_e2e::spawn(
        Command::new("python3")
            .args(["-c", ALERT_AND_HOLD])
            .arg(addr.port().to_string()),
    );
    tlsmon_e2e::wait_listening(addr, Duration::from_secs(10));
    let (client_ok, _) = run_bounded(
        Command::new("openssl")
            .args(["s_client", "-connect", &addr.to_string()])
            .stdin(std::process::Stdio::null()),
        Duration::from_secs(10),
    );
    assert!(!client_ok, "the handshake must fail");
    let t0 = std::time::Instant::now();
    let port = addr.port();
    let alert = d
        .wait_failure("since=5m", Duration::from_secs(3), |a| {
            a["role"] == "server" && a["local"]["port"] == port
        })
        .unwrap_or_else(|| {
            panic!(
                "no server-side failure while the server holds the socket:\n{}",
                d.log()
            )
        });
    eprintln!(
        "server named through /proc {:?} after the client ended",
        t0.elapsed()
    );
    assert_eq!(alert["process"]["comm"], "python3", "{alert}");
    assert!(d.log().contains("owner found through /proc"), "{}", d.log());
    assert!(
        alert["process"]["exe"]
            .as_str()
            .is_some_and(|e| e.contains("python3")),
        "{alert}"
    );
    assert_eq!(alert["cause"], "no_shared_cipher", "{alert}");
    assert_eq!(alert["alert"]["sender"], "server", "{alert}");
}

#[test]
#[ignore = "root: loads eBPF programs (sudo ./x test)"]
fn a_burst_of_1000_identical_failures_is_one_alert_with_count_1000() {
    let pki = self_signed_cert();
    let addr = loopback();
    let _server = openssl_server(&pki, addr, &[]);
    let d = Daemon::start("");
    // One python process, 1000 handshakes that reject the self-signed certificate.
    let script = format!(
        "import socket, ssl\n\
         ctx = ssl.create_default_context()\n\
         failed = 0\n\
         for _ in range(1000):\n\
         \x20   s = socket.create_connection(('127.0.0.1', {port}), timeout=5)\n\
         \x20   try:\n\
         \x20       ctx.wrap_socket(s, server_hostname='localhost')\n\
         \x20   except ssl.SSLCertVerificationError:\n\
         \x20       failed += 1\n\
         \x20   finally:\n\
         \x20       s.close()\n\
         print(failed)\n",
        port = addr.port()
    );
    let (ok, out) = run_bounded(
        Command::new("python3").args(["-c", &script]),
        Duration::from_secs(120),
    );
    assert!(ok && out.trim() == "1000", "python: {out}");
    let port = addr.port();
    let alert = d.wait_failure("process=python3&since=10m", Duration::from_secs(20), |a| {
        a["peer"]["port"] == port && a["count"] == 1000
    });
    let all: Value = d.json("/v1/failures?since=10m&limit=1000");
    let ours: Vec<&Value> = all
        .as_array()
        .expect("array")
        .iter()
        .filter(|a| a["role"] == "client" && a["peer"]["port"] == port)
        .collect();
    let alert = alert.unwrap_or_else(|| {
        panic!(
            "no single alert with count 1000; got {:?}\n{}",
            ours.iter().map(|a| &a["count"]).collect::<Vec<_>>(),
            d.log()
        )
    });
    assert_eq!(ours.len(), 1, "one alert, not {}", ours.len());
    assert_eq!(alert["cause"], "server_cert_rejected", "{alert}");
    assert_eq!(d.json("/v1/status")["capture"]["ring_drops"], 0);
    let (status, log) = d.stop();
    assert!(status.is_some_and(|s| s.success()), "{log}");
    let lines = log
        .lines()
        .filter(|l| l.contains("process=python3") && l.contains("alert kind="))
        .count();
    assert_eq!(lines, 1, "one log line per alert, not per failure");
}

#[test]
#[ignore = "root: loads eBPF programs (sudo ./x test)"]
fn sighup_reloads_filters_and_names_what_needs_a_restart() {
    let pki = self_signed_cert();
    let addr = loopback();
    let _server = openssl_server(&pki, addr, &["-tls1_2"]);
    let d = Daemon::start("");
    let extra = "[filters]\nexclude_processes = [\"curl\"]\n";
    let mut text = Daemon::config_text(&d.dir, &d.endpoint, extra);
    text = text.replace("[store]\n", "[store]\nretention_days = 7\n");
    std::fs::write(d.config_path(), text).expect("rewrite config");
    d.signal(libc::SIGHUP);
    assert!(
        d.wait_log("changes to [store] need a restart", Duration::from_secs(10)),
        "{}",
        d.log()
    );
    let url = format!("https://localhost:{}/", addr.port());
    assert!(curl_fails(&url, addr.port(), &[]));
    // The server side is still reported; curl's side is filtered out.
    let port = addr.port();
    assert!(
        d.wait_failure(
            "process=openssl",
            Duration::from_secs(10),
            |a| a["local"]["port"] == port
        )
        .is_some(),
        "{}",
        d.log()
    );
    let curl: Value = d.json("/v1/failures?process=curl");
    assert_eq!(curl.as_array().map(Vec::len), Some(0), "{curl}");
    let (_, metrics) = d.get("/metrics");
    assert!(metric(&metrics, "tlsmon_filtered_total") >= 1, "{metrics}");
    // A broken file on reload keeps the running configuration.
    std::fs::write(d.config_path(), "[filters\n").expect("break config");
    d.signal(libc::SIGHUP);
    assert!(
        d.wait_log(
            "reload refused, keeping the running configuration",
            Duration::from_secs(10)
        ),
        "{}",
        d.log()
    );
    assert_eq!(d.get("/healthz").0, 200);
    let (status, log) = d.stop();
    assert!(status.is_some_and(|s| s.success()), "{log}");
}

#[test]
#[ignore = "root: runs the real binary (sudo ./x test)"]
fn a_bad_config_is_refused_with_file_line_and_key() {
    let dir = TempDir::new("badcfg");
    let path = dir.path().join("tlsmon.toml");
    std::fs::write(&path, "[alerts]\nwindow_secs = 60\nwindw = 3\n").expect("write");
    for cmd in ["run", "check-config"] {
        let out = Command::new(tlsmon_bin())
            .args([cmd, "--config"])
            .arg(&path)
            .output()
            .expect("run tlsmon");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{cmd}: {err}");
        assert!(
            err.contains(&format!("{}:3:1: unknown field `windw`", path.display())),
            "{cmd}: {err}"
        );
    }
    let out = Command::new(tlsmon_bin())
        .args(["check-config", "--config"])
        .arg(dir.path().join("missing.toml"))
        .output()
        .expect("run tlsmon");
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("missing.toml: cannot read"));
}

/// The shipped unit with `/usr/bin/tlsmon` pointed at the binary under test (the package
/// installs it there; tests do not touch the host's /usr).
fn unit_under_test(dir: &TempDir) -> std::path::PathBuf {
    let unit = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/tlsmon.service"),
    )
    .expect("packaging/tlsmon.service");
    let path = dir.path().join("tlsmon.service");
    std::fs::write(
        &path,
        unit.replace("/usr/bin/tlsmon", &tlsmon_bin().display().to_string()),
    )
    .expect("write unit");
    path
}

#[test]
#[ignore = "runs the real binary (sudo ./x test)"]
fn the_systemd_unit_verifies_and_is_hardened() {
    let dir = TempDir::new("unit");
    let unit = unit_under_test(&dir);
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&unit)
        .output()
        .expect("systemd-analyze");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "systemd-analyze verify: {err}");
    let unit_text = std::fs::read_to_string(&unit).expect("read unit");
    for must in [
        "Type=notify",
        "ProtectSystem=strict",
        "StateDirectory=tlsmon",
        "PrivateTmp=yes",
        "NoNewPrivileges=yes",
        "WatchdogSec=",
        "User=tlsmon",
        "SystemCallFilter=@system-service bpf",
    ] {
        assert!(unit_text.contains(must), "unit lacks {must}");
    }
    // Offline exposure score (0 = locked down, 10 = unprotected); "OK" is below 5, the goal
    // 2.5 (a root unit with six capabilities and no system-call filter scored 4.3). The
    // aggregator's unit (DynamicUser, no capabilities) stays at 1.8.
    let score = exposure(&unit, "tlsmon.service");
    assert!(score <= 2.5, "tlsmon.service exposure {score}");
    let agg = Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/tlsmon-aggregate.service");
    let score = exposure(&agg, "tlsmon-aggregate.service");
    assert!(score <= 1.8, "tlsmon-aggregate.service exposure {score}");
    assert!(
        !unit_text.contains("AF_NETLINK"),
        "nothing uses netlink sockets"
    );
}

/// `systemd-analyze security --offline` score of a unit file.
fn exposure(unit: &Path, name: &str) -> f64 {
    let out = Command::new("systemd-analyze")
        .args(["security", "--offline=yes", "--no-pager"])
        .arg(unit)
        .output()
        .expect("systemd-analyze security");
    let text = String::from_utf8_lossy(&out.stdout);
    let score = text
        .lines()
        .find_map(|l| {
            l.split(&format!("Overall exposure level for {name}: "))
                .nth(1)
        })
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no exposure score in:\n{text}"));
    println!("systemd-analyze security {name}: {score}");
    score
}
