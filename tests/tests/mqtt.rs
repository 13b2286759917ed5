//! The daemon publishing to a real mosquitto on loopback, read by a real `mosquitto_sub`:
//! events with the right fields, retained online/offline status, the Last Will after
//! SIGKILL, no event lost across a broker outage, and a broker that stops answering (no
//! PUBACK) held to the outbox bound. Needs root (`sudo ./x test`).

use std::{collections::BTreeSet, process::Command, time::Duration};

use serde_json::Value;
use tlsmon_e2e::{Daemon, Mosquitto, Subscriber, free_port, run_bounded, tls12_self_signed_server};

fn curl_from(ip: &str, port: u16) -> bool {
    tlsmon_e2e::curl_from(None, ip, &format!("https://127.0.0.1:{port}/"))
}

fn mqtt_config(broker: &Mosquitto, extra: &str) -> String {
    format!(
        "[host]\nid = \"e2e-host\"\nsite = \"lab\"\n\n[alerts]\nflood_peers = 1000\n\n\
         [mqtt]\nbroker = \"{}\"\nkeepalive_secs = 5\nsummary_interval_secs = 5\n{extra}\n",
        broker.url()
    )
}

/// Validates documents against docs/schema/NAME with Python's jsonschema (draft 2020-12).
fn validate(name: &str, docs: &[Value]) {
    let dir = tlsmon_e2e::TempDir::new("schema");
    let lines = dir.path().join("docs.jsonl");
    let text: Vec<String> = docs.iter().map(Value::to_string).collect();
    std::fs::write(&lines, text.join("\n")).expect("write docs");
    let schema = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../docs/schema")
        .join(name);
    let script = "import json, sys, jsonschema\n\
        v = jsonschema.Draft202012Validator(json.load(open(sys.argv[1])))\n\
        bad = [e.message for l in open(sys.argv[2]) for e in v.iter_errors(json.loads(l))]\n\
        print('\\n'.join(bad)); sys.exit(1 if bad else 0)\n";
    let (ok, out) = run_bounded(
        Command::new("python3")
            .args(["-c", script])
            .arg(&schema)
            .arg(&lines),
        Duration::from_secs(60),
    );
    assert!(
        ok,
        "{} documents invalid against {name}:\n{out}",
        docs.len()
    );
}

#[test]
#[ignore = "root: loads eBPF programs (sudo ./x test)"]
fn a_failing_handshake_reaches_the_events_topic_with_status_online_then_offline() {
    let broker = Mosquitto::start("allow_anonymous true");
    let sub = Subscriber::start(broker.port, "tlsmon/v1/#", &[]);
    let (_pki, _server, port) = tls12_self_signed_server();
    let d = Daemon::start(&mqtt_config(&broker, ""));
    let base = "tlsmon/v1/lab/e2e-host";
    let status = format!("{base}/status");
    let events = format!("{base}/events");
    assert!(
        sub.wait(Duration::from_secs(15), |m| m
            .iter()
            .any(|(t, v)| *t == status && v["state"] == "online")),
        "no online status:\n{}",
        d.log()
    );
    assert!(!curl_from("127.0.0.1", port));
    let alert = d
        .wait_failure("process=curl&since=5m", Duration::from_secs(10), |a| {
            a["peer"]["port"] == port
        })
        .expect("the alert");
    let id = alert["event_id"].as_str().expect("id").to_owned();
    assert!(
        sub.wait(Duration::from_secs(10), |m| m
            .iter()
            .any(|(t, v)| *t == events && v["event_id"] == id.as_str())),
        "event {id} not published:\n{}",
        d.log()
    );
    let published: Vec<Value> = sub
        .messages()
        .into_iter()
        .filter(|(t, v)| *t == events && v["event_id"] == id.as_str())
        .map(|(_, v)| v)
        .collect();
    let ev = &published[0];
    assert_eq!(ev["schema"], "tlsmon.event/1");
    assert_eq!(ev["process"]["comm"], "curl");
    assert_eq!(ev["role"], "client");
    assert_eq!(ev["peer"]["port"], port);
    assert_eq!(ev["cause"], "self_signed", "{ev}");
    assert_eq!(ev["alert"]["sender"], "client");
    assert_eq!(ev["host"]["id"], "e2e-host");
    // The periodic summary names the failing process.
    let summary = format!("{base}/summary");
    assert!(
        sub.wait(Duration::from_secs(15), |m| m.iter().any(|(t, v)| *t
            == summary
            && v["schema"] == "tlsmon.summary/1"
            && v["failing"]
                .as_array()
                .is_some_and(|f| f.iter().any(|x| x["process"] == "curl")))),
        "no summary naming curl"
    );
    let st = d.json("/v1/status");
    assert_eq!(st["mqtt"]["connected"], true, "{st}");
    // Every published document is valid against the committed JSON Schema.
    for (suffix, schema) in [
        ("/events", "event.schema.json"),
        ("/summary", "summary.schema.json"),
        ("/status", "status.schema.json"),
    ] {
        let docs: Vec<Value> = sub
            .messages()
            .into_iter()
            .filter(|(t, _)| t.ends_with(suffix))
            .map(|(_, v)| v)
            .collect();
        assert!(!docs.is_empty(), "nothing on {suffix}");
        validate(schema, &docs);
    }
    // A clean stop says offline (retained).
    let (code, log) = d.stop();
    assert_eq!(code.and_then(|c| c.code()), Some(0), "{log}");
    assert!(
        sub.wait(Duration::from_secs(10), |m| m
            .iter()
            .any(|(t, v)| *t == status && v["state"] == "offline")),
        "no offline status after SIGTERM:\n{log}"
    );
    assert!(sub.messages().iter().filter(|(t, _)| *t == events).count() >= 2);
}

#[test]
#[ignore = "root: loads eBPF programs (sudo ./x test)"]
fn the_last_will_says_offline_after_sigkill() {
    let broker = Mosquitto::start("allow_anonymous true");
    let sub = Subscriber::start(broker.port, "tlsmon/v1/+/+/status", &[]);
    let d = Daemon::start(&mqtt_config(&broker, ""));
    assert!(sub.wait(Duration::from_secs(15), |m| {
        m.iter().any(|(_, v)| v["state"] == "online")
    }));
    d.signal(libc::SIGKILL);
    // The broker notices after 1.5 keepalives (5 s) and publishes the will.
    assert!(
        sub.wait(Duration::from_secs(20), |m| m
            .last()
            .is_some_and(|(_, v)| v["state"] == "offline")),
        "no Last Will:\n{:?}",
        sub.messages()
    );
}

#[test]
#[ignore = "root: loads eBPF programs (sudo ./x test)"]
fn events_raised_while_the_broker_is_down_are_all_published_after_it_returns() {
    let mut broker = Mosquitto::start("allow_anonymous true");
    let sub = Subscriber::start(broker.port, "tlsmon/v1/+/+/events", &[]);
    let (_pki, _server, port) = tls12_self_signed_server();
    let d = Daemon::start(&mqtt_config(&broker, ""));
    assert!(curl_from("127.0.0.1", port).eq(&false));
    assert!(
        sub.wait(Duration::from_secs(15), |m| !m.is_empty()),
        "{}",
        d.log()
    );

    broker.down();
    // Twenty distinct failures (one peer address each) while nobody can receive them.
    for i in 0..20 {
        assert!(!curl_from(&format!("127.0.0.{}", 20 + i), port));
    }
    let expected = wait_stored(&d, 21, Duration::from_secs(15));
    assert!(expected.len() >= 21, "{expected:?}");
    broker.up();
    let received = || received_ids(&sub);
    let t0 = std::time::Instant::now();
    while !expected.is_subset(&received()) && t0.elapsed() < Duration::from_secs(60) {
        std::thread::sleep(Duration::from_millis(200));
    }
    let missing: Vec<_> = expected.difference(&received()).cloned().collect();
    assert!(
        missing.is_empty(),
        "lost {missing:?}:\n{}\nsubscriber:\n{}",
        d.log().replace("2026-", "| 2026-"),
        sub.debug_lines().join("\n")
    );
    let dupes = sub.messages().len() - received().len();
    println!(
        "{} events after the outage, {dupes} duplicates",
        expected.len()
    );
    // Everything acknowledged leaves the outbox.
    let db = rusqlite::Connection::open(d.db_path()).expect("db");
    let t0 = std::time::Instant::now();
    let mut left = i64::MAX;
    while left > 0 && t0.elapsed() < Duration::from_secs(10) {
        left = db
            .query_row("SELECT COUNT(*) FROM outbox", [], |r| r.get(0))
            .expect("count");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(left, 0, "outbox not drained");
}

/// A CA and a `localhost` server certificate signed by it (ca.pem, server.pem, server.key).
fn broker_pki(dir: &std::path::Path) {
    let sh = format!(
        "set -e; cd {d}; \
         openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=e2e-ca -keyout ca.key -out ca.pem; \
         openssl req -newkey rsa:2048 -nodes -subj /CN=localhost -keyout server.key -out server.csr; \
         printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\\n' > ext.cnf; \
         openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 \
           -extfile ext.cnf -out server.pem; chmod 644 server.key",
        d = dir.display()
    );
    let (ok, _) = run_bounded(
        Command::new("sh").args(["-c", &sh]),
        Duration::from_secs(60),
    );
    assert!(ok, "broker PKI");
}

#[test]
#[ignore = "root: loads eBPF programs (sudo ./x test)"]
fn over_tls_with_a_password_a_wrong_one_is_explained_and_nothing_is_lost_once_fixed() {
    let scratch = tlsmon_e2e::TempDir::new("broker-tls");
    let dir = scratch.path();
    broker_pki(dir);
    let passwd = dir.join("passwd");
    let set_password = |pw: &str| {
        let (ok, _) = run_bounded(
            Command::new("mosquitto_passwd")
                .args(["-b", "-c"])
                .arg(&passwd)
                .args(["tlsmon", pw]),
            Duration::from_secs(10),
        );
        assert!(ok, "mosquitto_passwd");
    };
    set_password("not-the-daemons");
    // A plain listener (for the helper's readiness check) and the TLS one the daemon uses.
    let tls_port = free_port();
    let broker = Mosquitto::start(&format!(
        "allow_anonymous false\npassword_file {p}\n\
         listener {tls_port} 127.0.0.1\ncafile {d}/ca.pem\ncertfile {d}/server.pem\n\
         keyfile {d}/server.key\n",
        p = passwd.display(),
        d = dir.display()
    ));
    std::fs::write(dir.join("pw"), "s3cret\n").expect("pw");
    let d = Daemon::start(&format!(
        "[host]\nid = \"tls-host\"\n\n[mqtt]\nbroker = \"mqtts://localhost:{tls_port}\"\n\
         username = \"tlsmon\"\npassword_file = \"{pw}\"\nca_file = \"{d}/ca.pem\"\n",
        pw = dir.join("pw").display(),
        d = dir.display()
    ));
    // Refused: the status says why, and the log says it once.
    let t0 = std::time::Instant::now();
    let mut err = String::new();
    while t0.elapsed() < Duration::from_secs(15) && !err.contains("check mqtt.username") {
        err = d.json("/v1/status")["mqtt"]["last_error"]
            .as_str()
            .unwrap_or("")
            .to_owned();
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(err.contains("check mqtt.username"), "{err}\n{}", d.log());
    // A failure while refused stays in the outbox.
    let (_pki, _server, port) = tls12_self_signed_server();
    assert!(!curl_from("127.0.0.1", port));
    let alert = d
        .wait_failure("process=curl&since=5m", Duration::from_secs(10), |a| {
            a["peer"]["port"] == port
        })
        .expect("alert");
    let id = alert["event_id"].as_str().expect("id").to_owned();
    // Fix the password at the broker (SIGHUP reloads its password file); the daemon's
    // retries get in and publish what waited, over TLS.
    set_password("s3cret");
    broker.reload();
    let sub = Subscriber::start(
        tls_port,
        "tlsmon/v1/+/tls-host/events",
        &[
            "--cafile",
            &format!("{}/ca.pem", dir.display()),
            "-u",
            "tlsmon",
            "-P",
            "s3cret",
            "--insecure",
        ],
    );
    assert!(
        sub.wait(Duration::from_secs(60), |m| m
            .iter()
            .any(|(_, v)| v["event_id"] == id.as_str())),
        "event {id} not published after the fix:\n{}",
        d.log()
    );
    assert_eq!(d.json("/v1/status")["mqtt"]["connected"], true);
}

/// Distinct server-side alerts: one curl per loopback source address `first..first+n`.
fn failures_from_many_peers(port: u16, first: u32, n: u32) {
    for i in first..first + n {
        let ip = format!("127.0.{}.{}", 1 + i / 250, 1 + i % 250);
        assert!(!curl_from(&ip, port));
    }
}

/// The event_ids of the alerts the daemon stored in the last 5 minutes.
fn event_ids(d: &Daemon) -> BTreeSet<String> {
    d.json("/v1/failures?since=5m&limit=10000")
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|a| a["event_id"].as_str().map(str::to_owned))
        .collect()
}

/// Waits (bounded) until at least `n` alerts are stored; returns their event_ids.
fn wait_stored(d: &Daemon, n: usize, limit: Duration) -> BTreeSet<String> {
    let t0 = std::time::Instant::now();
    while event_ids(d).len() < n && t0.elapsed() < limit {
        std::thread::sleep(Duration::from_millis(200));
    }
    event_ids(d)
}

/// The event_ids the subscriber received.
fn received_ids(sub: &Subscriber) -> BTreeSet<String> {
    sub.messages()
        .iter()
        .filter_map(|(_, v)| v["event_id"].as_str().map(str::to_owned))
        .collect()
}

#[test]
#[ignore = "root: loads eBPF programs (sudo ./x test)"]
fn a_daemon_killed_while_the_broker_is_down_publishes_its_backlog_after_restart() {
    let mut broker = Mosquitto::start("allow_anonymous true");
    let sub = Subscriber::start(broker.port, "tlsmon/v1/+/+/events", &[]);
    let (_pki, _server, port) = tls12_self_signed_server();
    broker.down();
    let d = Daemon::start(&mqtt_config(&broker, ""));
    failures_from_many_peers(port, 0, 10);
    let expected = wait_stored(&d, 11, Duration::from_secs(15));
    assert!(expected.len() >= 11, "{expected:?}");
    // No clean stop: the store's last batch is committed (flushed within the drain tick),
    // the outbox has everything, nobody said goodbye.
    std::thread::sleep(Duration::from_millis(500));
    let (dir, endpoint) = d.kill();
    broker.up();
    let d = Daemon::restart(dir, endpoint);
    let received = || received_ids(&sub);
    let t0 = std::time::Instant::now();
    while !expected.is_subset(&received()) && t0.elapsed() < Duration::from_secs(30) {
        std::thread::sleep(Duration::from_millis(200));
    }
    let missing: Vec<_> = expected.difference(&received()).cloned().collect();
    assert!(
        missing.is_empty(),
        "lost after restart: {missing:?}\n{}",
        d.log()
    );
}

#[test]
#[ignore = "root: loads eBPF programs (sudo ./x test)"]
fn a_full_outbox_drops_the_oldest_and_publishes_a_gap_record() {
    let mut broker = Mosquitto::start("allow_anonymous true");
    let sub = Subscriber::start(broker.port, "tlsmon/v1/+/+/events", &[]);
    let (_pki, _server, port) = tls12_self_signed_server();
    broker.down();
    let d = Daemon::start(&mqtt_config(&broker, "outbox_max_events = 100"));
    // 120 peers: 120 server-side alerts and one client-side alert, over the bound of 100.
    failures_from_many_peers(port, 0, 120);
    wait_stored(&d, 121, Duration::from_secs(20));
    // The bounds are enforced once a second.
    std::thread::sleep(Duration::from_millis(2500));
    assert!(
        d.wait_log("MQTT outbox over its bounds", Duration::from_secs(5)),
        "{}",
        d.log()
    );
    let db = rusqlite::Connection::open(d.db_path()).expect("db");
    let queued: i64 = db
        .query_row("SELECT COUNT(*) FROM outbox", [], |r| r.get(0))
        .expect("count");
    assert!(queued <= 100, "outbox holds {queued}");
    broker.up();
    let gaps = |m: &[(String, Value)]| -> Vec<Value> {
        m.iter()
            .filter(|(_, v)| v["schema"] == "tlsmon.gap/1")
            .map(|(_, v)| v.clone())
            .collect()
    };
    // Bounds run once a second while the failures stream in: one gap record per run that
    // dropped something, together at least 21 (121 alerts into 100 places).
    let dropped_in = |g: &[Value]| g.iter().filter_map(|g| g["dropped"].as_u64()).sum::<u64>();
    assert!(
        sub.wait(Duration::from_secs(30), |m| dropped_in(&gaps(m)) >= 21),
        "gap records: {:?}\n{}",
        gaps(&sub.messages()),
        d.log()
    );
    let g = gaps(&sub.messages());
    assert!(g.iter().all(|g| g["reason"] == "outbox_full"), "{g:?}");
    let dropped = dropped_in(&g);
    validate("gap.schema.json", &g);
    // Everything that was not dropped arrives: published + dropped covers all alerts.
    let all = event_ids(&d).len() as u64;
    assert!(
        sub.wait(Duration::from_secs(30), |m| m
            .iter()
            .filter(|(_, v)| v["schema"] == "tlsmon.event/1")
            .count() as u64
            + dropped
            >= all),
        "published events + {dropped} dropped < {all}"
    );
}

#[test]
#[ignore = "root: loads eBPF programs (sudo ./x test)"]
fn a_broker_that_never_acknowledges_keeps_the_outbox_bounded_and_the_status_says_so() {
    let broker = Mosquitto::start("allow_anonymous true");
    let sub = Subscriber::start(broker.port, "tlsmon/v1/+/+/events", &[]);
    let (_pki, _server, port) = tls12_self_signed_server();
    let d = Daemon::start(&mqtt_config(&broker, "outbox_max_events = 100"));
    failures_from_many_peers(port, 0, 1);
    assert!(
        sub.wait(Duration::from_secs(15), |m| !m.is_empty()),
        "nothing published before the broker stalls:\n{}",
        d.log()
    );
    // The broker keeps its connections and answers nothing: no PUBACK, no PINGRESP.
    broker.pause();
    failures_from_many_peers(port, 1, 130);
    wait_stored(&d, 132, Duration::from_secs(20));
    std::thread::sleep(Duration::from_millis(2500));
    let db = rusqlite::Connection::open(d.db_path()).expect("db");
    let queued: i64 = db
        .query_row("SELECT COUNT(*) FROM outbox", [], |r| r.get(0))
        .expect("count");
    assert!(queued <= 100, "outbox holds {queued}");
    assert!(
        d.wait_log("MQTT outbox over its bounds", Duration::from_secs(5)),
        "{}",
        d.log()
    );
    let mqtt = d.json("/v1/status")["mqtt"].clone();
    assert!(
        mqtt["outbox_backlog"]
            .as_u64()
            .is_some_and(|b| b > 0 && b <= 100),
        "{mqtt:#}"
    );
    // The keepalive (5 s) gives up on a broker that does not answer its PINGREQ.
    let t0 = std::time::Instant::now();
    let mut mqtt = Value::Null;
    while t0.elapsed() < Duration::from_secs(20) {
        mqtt = d.json("/v1/status")["mqtt"].clone();
        if mqtt["connected"] == false {
            break;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    assert_eq!(mqtt["connected"], false, "{mqtt:#}");
    assert!(mqtt["last_error"].is_string(), "{mqtt:#}");
    let (_, table) = d.status_table();
    assert!(table.contains("mqtt: NOT CONNECTED"), "{table}");
    // The broker answers again: what the bound kept arrives, what it dropped is a gap.
    broker.resume();
    let dropped_in = |m: &[(String, Value)]| -> u64 {
        m.iter()
            .filter(|(_, v)| v["schema"] == "tlsmon.gap/1")
            .filter_map(|(_, v)| v["dropped"].as_u64())
            .sum()
    };
    let events = |m: &[(String, Value)]| -> BTreeSet<String> {
        m.iter()
            .filter(|(_, v)| v["schema"] == "tlsmon.event/1")
            .filter_map(|(_, v)| v["event_id"].as_str().map(str::to_owned))
            .collect()
    };
    let all = event_ids(&d).len() as u64;
    assert!(
        sub.wait(Duration::from_secs(40), |m| events(m).len() as u64
            + dropped_in(m)
            >= all),
        "{} events + {} dropped < {all}\n{}",
        events(&sub.messages()).len(),
        dropped_in(&sub.messages()),
        d.log()
    );
    assert!(
        dropped_in(&sub.messages()) > 0,
        "nothing was dropped: the bound did not act"
    );
}

#[test]
#[ignore = "root: loads eBPF programs (sudo ./x test)"]
fn a_stream_of_10000_events_survives_a_30_s_broker_outage_without_loss() {
    use tlsmon_e2e::load::{AlertServer, fail_once, peer};
    const EVENTS: u32 = 10_000;
    let mut broker = Mosquitto::start("allow_anonymous true");
    let sub = Subscriber::start(broker.port, "tlsmon/v1/+/+/events", &[]);
    let server = AlertServer::start(2).expect("alert server");
    // Every peer address its own alert: no flood summary.
    let d = Daemon::start(&format!(
        "[host]\nid = \"stream-host\"\n\n[alerts]\nflood_peers = 1000000\n\n\
         [mqtt]\nbroker = \"{}\"\nkeepalive_secs = 5\n",
        broker.url()
    ));
    // 10,000 failing handshakes from 10,000 addresses, paced over about 40 s.
    let addr = server.addr;
    let stream = std::thread::spawn(move || {
        let t0 = std::time::Instant::now();
        let mut failed = 0;
        for n in 0..EVENTS {
            let due = Duration::from_millis(u64::from(n) * 4);
            if let Some(wait) = due.checked_sub(t0.elapsed()) {
                std::thread::sleep(wait);
            }
            failed += u32::from(fail_once(peer(n), addr).is_err());
        }
        failed
    });
    std::thread::sleep(Duration::from_secs(5));
    broker.down();
    let down_at = std::time::Instant::now();
    std::thread::sleep(Duration::from_secs(30));
    broker.up();
    println!("broker down for {:.1} s", down_at.elapsed().as_secs_f64());
    assert_eq!(
        stream.join().expect("stream"),
        0,
        "connections that failed to connect"
    );
    // The server side of every connection is its own alert; the client side is one more.
    let t0 = std::time::Instant::now();
    let mut expected = d.stored_event_ids();
    while expected.len() < EVENTS as usize + 1 && t0.elapsed() < Duration::from_secs(60) {
        std::thread::sleep(Duration::from_millis(500));
        expected = d.stored_event_ids();
    }
    assert!(
        expected.len() > EVENTS as usize,
        "the daemon stored {} alerts",
        expected.len()
    );
    let t0 = std::time::Instant::now();
    let mut received = received_ids(&sub);
    while !expected.is_subset(&received) && t0.elapsed() < Duration::from_secs(120) {
        std::thread::sleep(Duration::from_millis(500));
        received = received_ids(&sub);
    }
    let missing = expected.difference(&received).count();
    let messages = sub.messages().len();
    println!(
        "{} events stored, {} distinct received, {} messages ({} duplicates or count updates), {missing} missing",
        expected.len(),
        received.len(),
        messages,
        messages - received.len()
    );
    assert_eq!(missing, 0, "{}", d.log());
    drop(server);
}

#[test]
#[ignore = "root: loads eBPF programs (sudo ./x test)"]
fn the_daemons_own_tls_connections_are_not_captured() {
    let scratch = tlsmon_e2e::TempDir::new("own-tls");
    let dir = scratch.path();
    broker_pki(dir);
    let other = tlsmon_e2e::TempDir::new("own-tls-other-ca");
    broker_pki(other.path());
    let tls_port = free_port();
    let _broker = Mosquitto::start(&format!(
        "listener {tls_port} 127.0.0.1\ncafile {d}/ca.pem\ncertfile {d}/server.pem\n\
         keyfile {d}/server.key\n",
        d = dir.display()
    ));
    // The daemon trusts another CA: every handshake it makes with the broker fails.
    let d = Daemon::start(&format!(
        "[host]\nid = \"own-tls\"\n\n[mqtt]\nbroker = \"mqtts://localhost:{tls_port}\"\n\
         ca_file = \"{}/ca.pem\"\n",
        other.path().display()
    ));
    // The broker's side of those connections is another process's: captured and judged.
    let broker_side = d
        .wait_failure("since=5m", Duration::from_secs(20), |a| {
            a["role"] == "server" && a["local"]["port"] == tls_port
        })
        .unwrap_or_else(|| panic!("the broker's side was not judged\n{}", d.log()));
    assert_eq!(broker_side["process"]["comm"], "mosquitto", "{broker_side}");
    // The daemon's own side, the client of the same connections, is never captured.
    std::thread::sleep(Duration::from_secs(1));
    let own: Vec<_> = d
        .json("/v1/failures?since=5m&limit=1000")
        .as_array()
        .into_iter()
        .flatten()
        .filter(|a| a["peer"]["port"] == tls_port || a["process"]["comm"] == "tlsmon")
        .cloned()
        .collect();
    assert!(
        own.is_empty(),
        "the daemon judged its own connections: {own:?}"
    );
}
