//! `tlsmon aggregate` with a real mosquitto, real daemons and real failing handshakes: the
//! fleet view in SQLite (one aggregator, killed and restarted without loss) and in a real
//! PostgreSQL shared by two aggregators of one shared-subscription group, fed by daemons
//! in their own network namespaces (each event counted exactly once, whichever aggregator
//! answers). Needs root (`sudo ./x test`).

use std::{
    collections::BTreeSet,
    time::{Duration, Instant},
};

use serde_json::Value;
use tlsmon_e2e::{
    Aggregator, Daemon, Mosquitto, curl_from, fleet::Netns, fleet::Postgres, spawn,
    tls12_self_signed_server, wait_listening_in,
};

fn curl_in(netns: Option<&Netns>, from: &str, url: &str) -> bool {
    curl_from(netns.map(|n| n.0.as_str()), from, url)
}

fn daemon_config(host: &str, broker: &str, extra: &str) -> String {
    format!(
        "[host]\nid = \"{host}\"\nname = \"{host}.lab\"\nsite = \"lab\"\n\n[alerts]\nflood_peers = 100000\n\n\
         {extra}\n\n[mqtt]\nbroker = \"{broker}\"\nkeepalive_secs = 5\nsummary_interval_secs = 5\n"
    )
}

/// Polls (bounded) until `pred` holds for the aggregator's fleet view; returns the view.
fn wait_view(a: &Aggregator, limit: Duration, pred: impl Fn(&Value) -> bool) -> Option<Value> {
    let t0 = Instant::now();
    while t0.elapsed() < limit {
        let v = a.fleet();
        if pred(&v) {
            return Some(v);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    None
}

fn host_state(v: &Value, host: &str) -> String {
    v["by_host"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|h| h["host_id"] == host)
        .map_or_else(String::new, |h| {
            h["state"].as_str().unwrap_or("").to_owned()
        })
}

fn events(v: &Value) -> u64 {
    v["totals"]["events"].as_u64().unwrap_or(0)
}

#[test]
#[ignore = "root: loads eBPF programs (sudo ./x test)"]
fn a_failure_reaches_the_fleet_view_and_an_aggregator_restart_loses_nothing() {
    let broker = Mosquitto::start("allow_anonymous true");
    let agg = Aggregator::start(None, &broker.url(), None, "fleet", "agg-sqlite");
    let (_pki, _server, port) = tls12_self_signed_server();
    let d = Daemon::start(&daemon_config("web-1", &broker.url(), ""));
    assert!(
        wait_view(&agg, Duration::from_secs(15), |v| host_state(v, "web-1")
            == "online")
        .is_some(),
        "host never online:\n{}\n{}",
        agg.log(),
        d.log()
    );
    assert!(!curl_in(
        None,
        "127.0.0.1",
        &format!("https://127.0.0.1:{port}/")
    ));
    let failed_at = Instant::now();
    let v = wait_view(&agg, Duration::from_secs(15), |v| {
        v["by_process"].as_array().into_iter().flatten().any(|r| {
            r["name"].as_str().is_some_and(|n| n.ends_with("curl")) && r["cause"] == "self_signed"
        })
    })
    .unwrap_or_else(|| panic!("not in the fleet view:\n{}\n{}", agg.log(), d.log()));
    println!(
        "curl's failure in the fleet view {} ms after curl exited",
        failed_at.elapsed().as_millis()
    );
    assert_eq!(v["schema"], "tlsmon.fleet/1");
    assert!(
        v["store"]
            .as_str()
            .is_some_and(|s| s.starts_with("sqlite:")),
        "{v}"
    );
    let server = format!("127.0.0.1:{port}");
    assert!(
        v["by_server"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|r| r["name"] == server.as_str()),
        "{v:#}"
    );
    let (ok, text) = agg.fleet_status(&[]);
    assert!(ok, "{text}");
    for needle in ["self_signed", "lab/web-1.lab", "online", &server, "curl"] {
        assert!(text.contains(needle), "{needle:?} missing from:\n{text}");
    }

    // The aggregator is killed; failures go on; it comes back with the same client id and
    // gets what the broker kept for its session. Nothing lost, nothing counted twice.
    let dir = agg.kill();
    for i in 0..10 {
        assert!(!curl_in(
            None,
            &format!("127.0.3.{}", 10 + i),
            &format!("https://127.0.0.1:{port}/")
        ));
    }
    // Eleven failures give one client-side alert with a count and one server-side alert per
    // peer, each judged as its connection closes: the set is compared once it is quiet (no
    // new alert for 2 s), not at its first dozen.
    let stored = quiet_set(|| d.stored_event_ids(), 12, Duration::from_secs(20));
    let agg = Aggregator::restart(dir, None);
    let want = stored.len() as u64;
    let v = wait_view(&agg, Duration::from_secs(30), |v| events(v) >= want);
    let v = v.unwrap_or_else(|| {
        panic!(
            "fleet has {} of {want}:\n{}",
            events(&agg.fleet()),
            agg.log()
        )
    });
    assert_eq!(events(&v), want, "{v:#}");
    assert_eq!(
        d.stored_event_ids(),
        stored,
        "stored more after it was quiet"
    );
    let stats = agg.json("/v1/aggregator");
    println!("after restart: {stats}");

    // A clean stop of the daemon is seen as offline.
    let (status, log) = d.stop();
    assert!(status.is_some_and(|s| s.success()), "{log}");
    assert!(
        wait_view(&agg, Duration::from_secs(15), |v| host_state(v, "web-1")
            == "offline")
        .is_some(),
        "{}",
        agg.log()
    );
    let (status, log) = agg.stop();
    assert!(status.is_some_and(|s| s.success()), "{log}");
}

/// What `read` returns once it holds at least `min` items and has not changed for 2 s:
/// alerts are judged as their connections close, so a count reached early can still grow.
fn quiet_set(read: impl Fn() -> BTreeSet<String>, min: usize, limit: Duration) -> BTreeSet<String> {
    let t0 = Instant::now();
    let mut set = read();
    let mut since = Instant::now();
    while t0.elapsed() < limit {
        std::thread::sleep(Duration::from_millis(100));
        let now = read();
        if now != set {
            set = now;
            since = Instant::now();
        } else if set.len() >= min && since.elapsed() >= Duration::from_secs(2) {
            return set;
        }
    }
    panic!("never settled at >= {min} items within {limit:?}: {set:?}");
}

/// `openssl s_server -tls1_2`, self-signed, inside `ns` on `addr`.
fn server_in(ns: &Netns, pki: &tlsmon_e2e::TempDir, addr: &str) -> tlsmon_e2e::Bg {
    let bg = spawn(
        ns.exec("openssl")
            .args(["s_server", "-quiet", "-tls1_2", "-accept", addr])
            .arg("-cert")
            .arg(pki.path().join("cert.pem"))
            .arg("-key")
            .arg(pki.path().join("key.pem")),
    );
    wait_listening_in(&ns.0, addr, Duration::from_secs(10));
    bg
}

#[test]
#[ignore = "root: loads eBPF programs, creates network namespaces (sudo ./x test)"]
fn two_hosts_two_aggregators_one_postgres_count_each_event_once() {
    let bk = Netns::create("bk");
    let hosts = [Netns::create("h1"), Netns::create("h2")];
    let broker_ips: Vec<String> = hosts
        .iter()
        .enumerate()
        .map(|(i, h)| bk.link(h, i as u8 + 1).0)
        .collect();
    let broker = Mosquitto::start_in(&bk.0, "allow_anonymous true");
    let pg = Postgres::start(Some(&bk));
    let local_broker = format!("mqtt://127.0.0.1:{}", broker.port);
    let aggs = [
        Aggregator::start(
            Some(&bk.0),
            &local_broker,
            Some(&pg.url()),
            "fleet",
            "agg-a",
        ),
        Aggregator::start(
            Some(&bk.0),
            &local_broker,
            Some(&pg.url()),
            "fleet",
            "agg-b",
        ),
    ];
    // One daemon per host namespace, each reporting the loopback range its host uses (every
    // daemon sees the whole machine's sockets; the filter makes each a separate "host").
    let daemons: Vec<Daemon> = hosts
        .iter()
        .enumerate()
        .map(|(i, ns)| {
            let extra = format!("[filters]\ninclude_peers = [\"127.0.{}.0/24\"]", i + 1);
            let broker = format!("mqtt://{}:{}", broker_ips[i], broker.port);
            Daemon::start_in(
                &ns.0,
                &daemon_config(&format!("host-{}", i + 1), &broker, &extra),
            )
        })
        .collect();
    for a in &aggs {
        assert!(
            wait_view(a, Duration::from_secs(20), |v| {
                host_state(v, "host-1") == "online" && host_state(v, "host-2") == "online"
            })
            .is_some(),
            "hosts not online:\n{}\n{}\n{}",
            a.log(),
            daemons[0].log(),
            daemons[1].log()
        );
    }
    // Real failures inside each host's namespace: curl from 12 addresses against a TLS 1.2
    // server with a self-signed certificate.
    let pki = tlsmon_e2e::self_signed_cert();
    for (i, ns) in hosts.iter().enumerate() {
        let addr = format!("127.0.{}.1:8443", i + 1);
        let _server = server_in(ns, &pki, &addr);
        for p in 0..12 {
            let from = format!("127.0.{}.{}", i + 1, 10 + p);
            assert!(!curl_in(Some(ns), &from, &format!("https://{addr}/")));
        }
        // Let the server-side verdicts settle before the server goes away.
        std::thread::sleep(Duration::from_millis(500));
    }
    // What the hosts stored is what the fleet must hold, once.
    let stored =
        || -> BTreeSet<String> { daemons.iter().flat_map(|d| d.stored_event_ids()).collect() };
    let expected = quiet_set(stored, 2 * 13, Duration::from_secs(30));
    let want = expected.len() as u64;
    let views: Vec<Value> = aggs
        .iter()
        .map(|a| {
            wait_view(a, Duration::from_secs(30), |v| events(v) >= want).unwrap_or_else(|| {
                panic!("fleet has {} of {want}:\n{}", events(&a.fleet()), a.log())
            })
        })
        .collect();
    let in_pg: BTreeSet<String> = pg
        .psql("fleet", "SELECT event_id FROM fleet_events")
        .expect("psql")
        .lines()
        .map(str::to_owned)
        .collect();
    assert_eq!(
        in_pg, expected,
        "PostgreSQL holds exactly the events the hosts stored"
    );
    let stats: Vec<Value> = aggs.iter().map(|a| a.json("/v1/aggregator")).collect();
    let new: u64 = stats
        .iter()
        .map(|s| s["new_events"].as_u64().unwrap_or(0))
        .sum();
    println!(
        "{want} events; aggregator a stored {} new ({} duplicates), b {} new ({} duplicates)",
        stats[0]["new_events"],
        stats[0]["duplicates"],
        stats[1]["new_events"],
        stats[1]["duplicates"]
    );
    assert_eq!(
        new, want,
        "each event is new to exactly one aggregator: {stats:?}"
    );
    assert!(
        stats.iter().all(|s| s["new_events"].as_u64() > Some(0)),
        "the shared subscription splits the events: {stats:?}"
    );
    // Whichever aggregator answers, the view is the same (ignoring when it was generated).
    let strip = |v: &Value| {
        let mut v = v.clone();
        v["generated"] = Value::Null;
        v["since"] = Value::Null;
        v
    };
    assert_eq!(strip(&views[0]), strip(&views[1]));
    let v = &views[0];
    assert_eq!(v["totals"]["failing_hosts"], 2, "{v:#}");
    let top_server = &v["by_server"][0];
    assert_eq!(top_server["cause"], "self_signed", "{v:#}");
    for (i, a) in aggs.iter().enumerate() {
        let (ok, text) = a.fleet_status(&[]);
        assert!(ok, "{text}");
        if i == 0 {
            println!("tlsmon fleet status:\n{text}");
        }
        for needle in ["lab/host-1.lab", "lab/host-2.lab", "self_signed", "curl"] {
            assert!(
                text.contains(needle),
                "aggregator {i}: {needle:?} missing:\n{text}"
            );
        }
    }
}

/// A CA (ca.pem) and a server certificate for 127.0.0.1 it signed (cert.pem, key.pem, owned
/// by postgres, 0600).
fn pg_certificate() -> tlsmon_e2e::TempDir {
    // PostgreSQL reads its key only when the key is its own and private.
    let dir = tlsmon_e2e::ca_signed_pki("pg-pki");
    for f in ["cert.pem", "key.pem"] {
        let p = dir.path().join(f);
        std::fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .expect("chmod");
        std::os::unix::fs::chown(&p, Some(postgres_uid()), None).expect("chown");
    }
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .expect("chmod dir");
    dir
}

fn postgres_uid() -> u32 {
    let (ok, out) = tlsmon_e2e::run_bounded(
        std::process::Command::new("id").args(["-u", "postgres"]),
        Duration::from_secs(5),
    );
    assert!(ok, "{out}");
    out.trim().parse().expect("uid")
}

/// An event as a daemon publishes it (the aggregator's parser takes it).
const EVENT: &str = r#"{"schema":"tlsmon.event/1","event_id":"0195-tls-1","time":"2026-11-23T10:00:00Z",
    "host":{"id":"m1","name":"web1"},"kind":"handshake_failure","severity":"error",
    "process":{"pid":7,"comm":"curl","exe":"/usr/bin/curl","unit":null,"uid":0,"container":null},
    "role":"client","local":{"ip":"127.0.0.1","port":40000},"peer":{"ip":"127.0.0.1","port":8443},
    "sni":null,"tls":{},"alert":null,"stage":"server_hello","cause":"self_signed","inferred":false,
    "message":"m","certificate":null,"count":3,"first_seen":"2026-11-23T10:00:00Z",
    "last_seen":"2026-11-23T10:00:01.5Z"}"#;

#[test]
#[ignore = "root: loads eBPF programs (sudo ./x test)"]
fn the_fleet_store_speaks_tls_to_postgresql_and_checks_its_certificate() {
    let pki = pg_certificate();
    let cert = pki.path().join("cert.pem");
    let pg = Postgres::start_with(
        None,
        &[
            "ssl=on",
            &format!("ssl_cert_file={}", cert.display()),
            &format!("ssl_key_file={}", pki.path().join("key.pem").display()),
        ],
    );
    let broker = Mosquitto::start("allow_anonymous true");
    let url = format!("{}?sslmode=require", pg.url());
    let a = Aggregator::start_with(
        None,
        &broker.url(),
        Some(&url),
        "tls",
        "agg-tls",
        &format!(
            "store_ca_file = \"{}\"",
            pki.path().join("ca.pem").display()
        ),
    );
    let (ok, out) = tlsmon_e2e::run_bounded(
        std::process::Command::new("mosquitto_pub")
            .args(["-p", &broker.port.to_string(), "-q", "1"])
            .args(["-t", "tlsmon/v1/lab/m1/events", "-m", EVENT]),
        Duration::from_secs(10),
    );
    assert!(ok, "mosquitto_pub: {out}");
    // Stored, over a connection PostgreSQL says is TLS.
    let t0 = Instant::now();
    let mut tls = String::new();
    while t0.elapsed() < Duration::from_secs(20) {
        tls = pg
            .psql(
                "fleet",
                "SELECT count(*) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) \
                 WHERE a.application_name = 'tlsmon-aggregate' AND s.ssl",
            )
            .unwrap_or_default();
        let stored = pg
            .psql("fleet", "SELECT count(*) FROM fleet_events")
            .unwrap_or_default();
        if tls != "0" && !tls.is_empty() && stored == "1" {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        tls != "0" && !tls.is_empty(),
        "no TLS connection:\n{}",
        a.log()
    );
    drop(a);

    // A CA that did not sign the server's certificate: refused at start, saying why.
    let other = pg_certificate();
    let dir = tlsmon_e2e::TempDir::new("aggregate-bad-ca");
    let cfg = dir.path().join("aggregate.toml");
    std::fs::write(
        &cfg,
        format!(
            "[mqtt]\nbroker = \"{}\"\n\n[aggregate]\nstore = \"{url}\"\nstore_ca_file = \"{}\"\nlisten = \"unix:{}\"\n",
            broker.url(),
            other.path().join("ca.pem").display(),
            dir.path().join("fleet.sock").display()
        ),
    )
    .expect("config");
    let (ok, out) = tlsmon_e2e::run_bounded(
        tlsmon_e2e::with_stderr(tlsmon_e2e::tlsmon_bin())
            .args(["aggregate", "--config"])
            .arg(&cfg),
        Duration::from_secs(30),
    );
    assert!(!ok, "an aggregator trusted the wrong CA:\n{out}");
    assert!(
        out.contains("certificate") || out.contains("UnknownIssuer"),
        "{out}"
    );
}
