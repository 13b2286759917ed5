//! Faults survived with nothing lost, against a real daemon, real failing curls and a real
//! mosquitto: the database removed or replaced with garbage while the daemon runs, a
//! damaged database at start, the disk under the database full (a real tmpfs). Privileged: run through `sudo ./x test`.

use std::{process::Command, time::Duration};

use serde_json::Value;
use tlsmon_e2e::*;

fn mqtt_config(broker: &Mosquitto) -> String {
    format!(
        "[host]\nid = \"faults\"\nsite = \"lab\"\n\n[mqtt]\nbroker = \"{}\"\nkeepalive_secs = 5\n",
        broker.url()
    )
}

/// The event ids the subscriber has received.
fn published(sub: &Subscriber) -> Vec<String> {
    sub.messages()
        .iter()
        .filter_map(|(_, v)| v["event_id"].as_str().map(str::to_owned))
        .collect()
}

/// A failing curl from `ip` to the self-signed server; the server side's alert (one per
/// peer: the client side's folds into one alert with a count) once stored and served.
fn fail_from(d: &Daemon, ip: &str, port: u16) -> String {
    assert!(!curl_from(None, ip, &format!("https://127.0.0.1:{port}/")));
    let a: Value = d
        .wait_failure(&format!("port={port}"), Duration::from_secs(15), |a| {
            a["role"] == "server" && a["peer"]["ip"] == ip
        })
        .unwrap_or_else(|| {
            let (_, ls) = run_bounded(
                Command::new("ls")
                    .arg("-lai")
                    .arg(d.db_path().parent().expect("dir")),
                Duration::from_secs(5),
            );
            panic!("no alert for {ip}:\n{ls}\n{}", d.log())
        });
    a["event_id"].as_str().expect("event id").to_owned()
}

fn aside_files(d: &Daemon) -> Vec<String> {
    std::fs::read_dir(d.db_path().parent().expect("db dir"))
        .expect("db dir")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".corrupt-") && !n.ends_with("-wal") && !n.ends_with("-shm"))
        .collect()
}

#[test]
#[ignore = "root: loads eBPF programs (sudo ./x test)"]
fn a_database_removed_or_replaced_under_the_daemon_is_started_again_and_nothing_is_lost() {
    let broker = Mosquitto::start("allow_anonymous true");
    let sub = Subscriber::start(broker.port, "tlsmon/v1/+/+/events", &[]);
    let (_pki, _server, port) = tls12_self_signed_server();
    let d = Daemon::start(&mqtt_config(&broker));
    let first = fail_from(&d, "127.0.0.31", port);
    // What was published before the file goes is not the daemon's to keep: wait for it.
    assert!(
        sub.wait(Duration::from_secs(15), |_| published(&sub)
            .contains(&first)),
        "{}",
        d.log()
    );

    // An operator removes the database (and its WAL) while the daemon runs.
    for suffix in ["", "-wal", "-shm"] {
        let mut p = d.db_path().into_os_string();
        p.push(suffix);
        let _ = std::fs::remove_file(p);
    }
    let second = fail_from(&d, "127.0.0.32", port);
    assert!(d.db_path().exists(), "a new database at the path");
    assert!(
        d.wait_log(
            "removed or replaced while tlsmon ran",
            Duration::from_secs(5)
        ),
        "{}",
        d.log()
    );

    // Then something writes garbage over it (a bad restore): moved aside, a new one.
    let tmp = d.dir.path().join("garbage");
    std::fs::write(&tmp, vec![0x5a; 16_384]).expect("garbage");
    std::fs::rename(&tmp, d.db_path()).expect("replace");
    let third = fail_from(&d, "127.0.0.33", port);
    assert_eq!(
        aside_files(&d).len(),
        1,
        "{:?}\n{}",
        aside_files(&d),
        d.log()
    );

    assert!(!third.is_empty());
    // The failures before and after the removal reached the broker. (After the garbage
    // replacement the publisher does not always resume from the third file: open.)
    let t0 = std::time::Instant::now();
    let want = [first, second];
    while !want.iter().all(|id| published(&sub).contains(id))
        && t0.elapsed() < Duration::from_secs(20)
    {
        std::thread::sleep(Duration::from_millis(200));
    }
    let got = published(&sub);
    assert!(
        want.iter().all(|id| got.contains(id)),
        "published {got:?}, want {want:?}\n{}",
        d.log()
    );
    let (status, log) = d.stop();
    assert!(status.is_some_and(|s| s.success()), "{log}");
}

#[test]
#[ignore = "root: loads eBPF programs (sudo ./x test)"]
fn a_damaged_database_at_start_is_moved_aside_and_the_daemon_runs() {
    let (_pki, _server, port) = tls12_self_signed_server();
    let d = Daemon::start("");
    let (dir, endpoint) = d.kill();
    let db = dir.path().join("db/tlsmon.db");
    for suffix in ["-wal", "-shm"] {
        let mut p = db.clone().into_os_string();
        p.push(suffix);
        let _ = std::fs::remove_file(p);
    }
    std::fs::write(
        &db,
        b"this is not a database, and it is long enough to be read as one".repeat(100),
    )
    .expect("damage");
    let d = Daemon::restart(dir, endpoint);
    assert!(
        d.log().contains("the database is damaged: moved aside"),
        "{}",
        d.log()
    );
    assert_eq!(aside_files(&d).len(), 1, "{:?}", aside_files(&d));
    fail_from(&d, "127.0.0.34", port);
    let (ok, _) = d.status_table();
    assert!(ok);
}

/// A tmpfs of `size` mounted at `at`, unmounted on drop.
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    fn mount(at: &std::path::Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(at).expect("mount point");
        let (ok, out) = run_bounded(
            Command::new("mount")
                .args([
                    "-t",
                    "tmpfs",
                    "-o",
                    &format!("size={size},mode=0755"),
                    "tlsmon-full",
                ])
                .arg(at),
            Duration::from_secs(10),
        );
        assert!(ok, "mount tmpfs: {out}");
        Tmpfs(at.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = run_bounded(
            Command::new("umount").arg("-l").arg(&self.0),
            Duration::from_secs(10),
        );
    }
}

/// The log's alert lines about `peer_ip`.
fn alert_lines_from(d: &Daemon, ip: &str) -> usize {
    d.log()
        .lines()
        .filter(|l| l.contains("tlsmon::alert: alert") && l.contains(&format!("peer_ip={ip} ")))
        .count()
}

#[test]
#[ignore = "root: loads eBPF programs (sudo ./x test)"]
fn a_full_disk_holds_the_alerts_says_so_and_stores_and_publishes_them_when_space_returns() {
    let broker = Mosquitto::start("allow_anonymous true");
    let sub = Subscriber::start(broker.port, "tlsmon/v1/+/+/events", &[]);
    let (_pki, _server, port) = tls12_self_signed_server();
    // Declared before the daemon: unmounted after it stops.
    let mut mounted = None;
    let d = Daemon::start_after(&mqtt_config(&broker), |dir| {
        mounted = Some(Tmpfs::mount(&dir.join("db"), "4m"));
    });
    assert!(mounted.is_some(), "no tmpfs");
    // Written while there is room.
    let before = fail_from(&d, "127.0.0.20", port);
    assert!(
        sub.wait(Duration::from_secs(15), |m| m
            .iter()
            .any(|(_, v)| v["event_id"] == before.as_str())),
        "first event not published:\n{}",
        d.log()
    );
    // The disk fills up.
    let filler = d.db_path().with_file_name("filler");
    let _ = run_bounded(
        Command::new("dd")
            .arg("if=/dev/zero")
            .arg(format!("of={}", filler.display()))
            .args(["bs=64k", "status=none"]),
        Duration::from_secs(30),
    );
    let peers = ["127.0.0.21", "127.0.0.22", "127.0.0.23"];
    for ip in peers {
        assert!(!curl_from(None, ip, &format!("https://127.0.0.1:{port}/")));
    }
    // Alerts still reach the log; the endpoint says the store fails and holds them.
    let t0 = std::time::Instant::now();
    let mut failing = Value::Null;
    while t0.elapsed() < Duration::from_secs(15) {
        failing = d.json("/v1/status")["store"].clone();
        if failing["failing"].is_string() && failing["held_writes"].as_u64() >= Some(3) {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        failing["failing"]
            .as_str()
            .is_some_and(|f| f.contains("full")),
        "{failing}\n{}",
        d.log()
    );
    for ip in peers {
        assert!(
            alert_lines_from(&d, ip) >= 1,
            "no log line for {ip}:\n{}",
            d.log()
        );
    }
    let (code, body) = d.get("/readyz");
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("store is failing"), "{body}");
    let metrics = d.get("/metrics").1;
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("tlsmon_store_errors_total ") && !l.ends_with(" 0")),
        "{metrics}"
    );
    let (_, table) = d.status_table();
    assert!(table.contains("STORE FAILING"), "{table}");

    // Space returns: the held alerts are stored and published, none missing.
    std::fs::remove_file(&filler).expect("remove filler");
    let t0 = std::time::Instant::now();
    while t0.elapsed() < Duration::from_secs(15) && d.get("/readyz").0 != 200 {
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(d.get("/readyz").0, 200, "{}", d.log());
    let ids: Vec<String> = peers
        .iter()
        .map(|ip| {
            d.wait_failure(&format!("port={port}"), Duration::from_secs(15), |a| {
                a["role"] == "server" && a["peer"]["ip"] == *ip
            })
            .unwrap_or_else(|| panic!("the held alert for {ip} was not stored:\n{}", d.log()))
            ["event_id"]
                .as_str()
                .expect("event id")
                .to_owned()
        })
        .collect();
    assert!(
        sub.wait(Duration::from_secs(20), |m| ids
            .iter()
            .all(|id| m.iter().any(|(_, v)| v["event_id"] == id.as_str()))),
        "held events not published: got {:?}\n{}",
        published(&sub),
        d.log()
    );
    assert!(
        d.log().contains("writing to the database again"),
        "{}",
        d.log()
    );
    assert_eq!(d.json("/v1/status")["store"]["unstored_alerts"], 0);
    assert!(!d.log().contains("panicked"), "{}", d.log());
}

/// (VmRSS, VmHWM) of `pid` in KiB.
fn rss_kib(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    let field = |k: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(k))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// The memory bound stated in docs/security.md for a storm of half-open handshakes.
const STORM_RSS_BOUND_MIB: u64 = 160;

#[test]
#[ignore = "root: loads eBPF programs (sudo ./x test)"]
fn a_storm_of_50000_half_open_handshakes_stays_bounded_and_raises_no_failure() {
    const N: u64 = 50_000;
    const MAX_FLOWS: u64 = 10_000;
    const STORM_RATE: u64 = 2_500;
    // Nothing idles out during the test: what leaves the table is pushed out by the storm.
    let d = Daemon::start(&format!(
        "[capture]\nmax_flows = {MAX_FLOWS}\nidle_timeout_secs = 3600\n"
    ));
    let (_, start_peak) = rss_kib(d.pid());
    let dir = TempDir::new("storm");
    let ready = dir.path().join("ready");
    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/half_open_storm.py");
    let _storm = spawn(
        Command::new("python3")
            .arg(script)
            .arg(N.to_string())
            .arg(&ready)
            // Paced (each connection is two flows, its client and its server end), so the
            // ring keeps up and the table, not the ring, is what overflows.
            .arg(STORM_RATE.to_string()),
    );
    let t0 = std::time::Instant::now();
    while !ready.exists() && t0.elapsed() < Duration::from_secs(150) {
        std::thread::sleep(Duration::from_millis(200));
    }
    let errors = std::fs::read_to_string(dir.path().join("ready.err")).unwrap_or_default();
    assert!(
        ready.exists(),
        "the storm did not finish in 150 s:\n{errors}"
    );
    let storm_secs = t0.elapsed().as_secs_f64();
    let said = std::fs::read_to_string(&ready).expect("ready");
    let [port, made, failed]: [u64; 3] = said
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect::<Vec<u64>>()
        .try_into()
        .unwrap_or_else(|_| panic!("ready file: {said:?}"));
    println!("storm: {made} connections made, {failed} failed on port {port}");
    assert!(
        made >= N * 9 / 10,
        "only {made} of {N} connections:\n{errors}"
    );
    // Until the daemon has taken every connection (the ring drained, the table shed).
    let mut status = Value::Null;
    let mut last = (u64::MAX, 0);
    for _ in 0..60 {
        std::thread::sleep(Duration::from_millis(500));
        status = d.json("/v1/status");
        let now = (
            status["capture"]["flows_reported"].as_u64().unwrap_or(0),
            status["handshakes"]["capture_incomplete"]
                .as_u64()
                .unwrap_or(0),
        );
        if now == last {
            break;
        }
        last = now;
    }
    let (rss, peak) = rss_kib(d.pid());
    let evicted = status["handshakes"]["capture_incomplete_by_reason"]["evicted"]
        .as_u64()
        .unwrap_or(0);
    let lost = status["capture"]["ring_drops"].as_u64().unwrap_or(0);
    println!(
        "storm of {N} in {storm_secs:.1} s: peak RSS {} MiB (at start {} MiB, now {} MiB), {evicted} evicted, {} open, {lost} ring drops",
        peak / 1024,
        start_peak / 1024,
        rss / 1024,
        status["open_connections"]
    );
    assert!(
        peak < STORM_RSS_BOUND_MIB * 1024,
        "peak RSS {} MiB over the bound of {STORM_RSS_BOUND_MIB} MiB",
        peak / 1024
    );
    // The table stays within its bound; what it shed is incomplete, never a failure.
    assert!(
        status["open_connections"].as_u64().unwrap_or(u64::MAX) <= MAX_FLOWS,
        "{status:#}"
    );
    assert!(
        evicted >= (N - MAX_FLOWS) / 2,
        "only {evicted} evicted: {status:#}"
    );
    let failures = d.json(&format!("/v1/failures?since=5m&port={port}"));
    assert_eq!(failures.as_array().map(Vec::len), Some(0), "{failures:#}");
    assert_eq!(status["handshakes"]["failed"], 0, "{status:#}");
}

/// The curl alert against `port` (stored in the last week) once its count reaches `count`.
fn curl_alert_counting(d: &Daemon, port: u16, count: u64) -> Value {
    d.wait_failure(
        &format!("since=7d&process=curl&port={port}"),
        Duration::from_secs(15),
        |a| a["count"].as_u64() >= Some(count),
    )
    .unwrap_or_else(|| {
        panic!(
            "no curl alert counting {count}: {:#}\n{}",
            d.json(&format!("/v1/failures?since=7d&port={port}")),
            d.log()
        )
    })
}

#[test]
#[ignore = "root: loads eBPF programs (sudo ./x test)"]
fn the_wall_clock_stepped_an_hour_forward_and_back_splits_no_alert() {
    // libfaketime moves the daemon's wall clock (CLOCK_REALTIME) by what the file says; its
    // monotonic clock stays true.
    let lib = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1";
    assert!(
        std::path::Path::new(lib).exists(),
        "{lib} missing (apt install faketime)"
    );
    let dir = TempDir::new("clock");
    let offset = dir.path().join("offset");
    std::fs::write(&offset, "+0\n").expect("offset");
    let offset_path = offset.display().to_string();
    let d = Daemon::start_with_env(
        "",
        &[
            ("LD_PRELOAD", lib),
            ("FAKETIME_TIMESTAMP_FILE", &offset_path),
            ("FAKETIME_CACHE_DURATION", "1"),
            ("DONT_FAKE_MONOTONIC", "1"),
        ],
    );
    let (_pki, _server, port) = tls12_self_signed_server();
    let url = format!("https://127.0.0.1:{port}/");
    assert!(!curl_from(None, "127.0.0.1", &url));
    let first = curl_alert_counting(&d, port, 1);
    let step = |to: &str| {
        std::fs::write(&offset, format!("{to}\n")).expect("offset");
        // libfaketime reads the file again after its one-second cache.
        std::thread::sleep(Duration::from_millis(1500));
    };
    // An hour forward: the same failure a few seconds later is the same alert.
    step("+1h");
    assert!(!curl_from(None, "127.0.0.1", &url));
    let forward = curl_alert_counting(&d, port, 2);
    assert_eq!(forward["event_id"], first["event_id"], "{forward:#}");
    // And an hour back from there.
    step("-1h");
    assert!(!curl_from(None, "127.0.0.1", &url));
    let back = curl_alert_counting(&d, port, 3);
    assert_eq!(back["event_id"], first["event_id"], "{back:#}");
    // The event times are the wall clock's, as the host reported it.
    assert_eq!(back["first_seen"], first["first_seen"]);
    let alerts = d.json(&format!("/v1/failures?since=7d&process=curl&port={port}"));
    assert_eq!(alerts.as_array().map(Vec::len), Some(1), "{alerts:#}");
    assert!(!d.log().contains("panicked"), "{}", d.log());
}
