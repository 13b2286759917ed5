//! Alerts an operator can act on, end to end against real programs: one alert per failing
//! service. Privileged: run through `sudo ./x test`.

use std::{net::SocketAddr, process::Command, time::Duration};

use serde_json::Value;
use tlsmon_e2e::*;

/// `curl http://127.0.0.1:PORT/` (bounded): success and what it printed.
fn plain_http(port: u16) -> (bool, String) {
    run_bounded(
        Command::new("curl").args([
            "-sS",
            "--max-time",
            "5",
            &format!("http://127.0.0.1:{port}/"),
        ]),
        Duration::from_secs(10),
    )
}

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

#[test]
#[ignore = "privileged: run `sudo ./x test`"]
fn each_failing_service_is_its_own_alert() {
    let pki = self_signed_cert();
    let (a, b) = (free_port(), free_port());
    let d = Daemon::start("");
    // One nginx, two TLS 1.3-only listeners; one openssl client offering TLS 1.2 only, twice
    // against each: the same failure (protocol_version) on two services of one address.
    let _nginx = nginx_tls(
        &pki,
        a,
        &format!("ssl_protocols TLSv1.3; listen 127.0.0.1:{b} ssl;"),
    );
    wait_listening(addr(b), Duration::from_secs(10));
    for port in [a, b, a, b] {
        assert!(
            !openssl_client(addr(port), &["-tls1_2"]),
            "TLS 1.2 must be refused"
        );
    }
    let clients = d.failures_counting("process=openssl", 4, Duration::from_secs(20));
    let servers = d.failures_counting("process=nginx", 4, Duration::from_secs(20));
    let show = |v: &[Value]| format!("{v:#?}\n{}", d.log());
    let services = |alerts: &[Value]| -> Vec<(String, u64, u64)> {
        let mut out: Vec<_> = alerts
            .iter()
            .map(|a| {
                (
                    s(a, &["role"]).to_owned(),
                    a["service"]["port"].as_u64().unwrap_or(0),
                    a["count"].as_u64().unwrap_or(0),
                )
            })
            .collect();
        out.sort();
        out
    };
    let (pa, pb) = (u64::from(a.min(b)), u64::from(a.max(b)));
    assert_eq!(
        services(&clients),
        [("client".to_owned(), pa, 2), ("client".to_owned(), pb, 2)],
        "{}",
        show(&clients)
    );
    assert_eq!(
        services(&servers),
        [("server".to_owned(), pa, 2), ("server".to_owned(), pb, 2)],
        "{}",
        show(&servers)
    );
    for alert in clients.iter().chain(&servers) {
        assert_eq!(alert["cause"], "protocol_version_mismatch", "{alert:#}");
        assert_eq!(alert["service"]["ip"], "127.0.0.1", "{alert:#}");
    }
    // The endpoint filters by service and by port; the log line names the service.
    let by_service = d.json(&format!("/v1/failures?since=5m&service=127.0.0.1:{a}"));
    assert_eq!(
        by_service.as_array().map(Vec::len),
        Some(2),
        "{by_service:#}"
    );
    let by_port = d.json(&format!("/v1/failures?since=5m&port={b}&process=nginx"));
    assert_eq!(by_port.as_array().map(Vec::len), Some(1), "{by_port:#}");
    let (code, body) = d.get("/v1/failures?service=nonsense");
    assert_eq!(code, 400, "{body}");
    assert!(
        d.log().contains(&format!(" service=127.0.0.1:{b} ")),
        "{}",
        d.log()
    );
}

/// haproxy checking `server` with a TLS handshake every 200 ms (`check-ssl`), as a load
/// balancer does; its config in `dir`.
fn haproxy_checking(dir: &TempDir, server: SocketAddr) -> Bg {
    let conf = dir.path().join("haproxy.cfg");
    std::fs::write(
        &conf,
        format!(
            "defaults\n  mode tcp\n  timeout connect 1s\n  timeout client 5s\n  timeout server 5s\n\
             listen probe\n  bind 127.0.0.1:{}\n  server s1 {server} check check-ssl verify none inter 200ms\n",
            free_port()
        ),
    )
    .expect("write haproxy.cfg");
    spawn(Command::new("haproxy").arg("-db").arg("-f").arg(&conf))
}

#[test]
#[ignore = "privileged: run `sudo ./x test`"]
fn health_checks_and_probes_raise_no_failure() {
    let pki = self_signed_cert_for_days(365);
    let port = free_port();
    let d = Daemon::start("");
    let _nginx = nginx_tls(&pki, port, "");
    let server = addr(port);
    // openssl s_client with nothing to send (TLS 1.3, and TLS 1.2 with the certificate
    // visible and valid), twice each.
    for extra in [&[][..], &[], &["-tls1_2"], &["-tls1_2"]] {
        openssl_client(server, extra);
    }
    // curl completing a request.
    for _ in 0..2 {
        let (ok, out) = run_bounded(
            Command::new("curl").args(["-sSk", "--max-time", "5", &format!("https://{server}/")]),
            Duration::from_secs(10),
        );
        assert!(ok, "{out}");
    }
    // A plain TCP connect and close.
    for _ in 0..2 {
        drop(std::net::TcpStream::connect(server).expect("connect"));
    }
    // haproxy's TLS health check for two seconds.
    let checker = haproxy_checking(&pki, server);
    std::thread::sleep(Duration::from_secs(2));
    drop(checker);
    // The probes are counted for the service, on both ends.
    let service = format!("127.0.0.1:{port}");
    let t0 = std::time::Instant::now();
    let mut status = d.json("/v1/status");
    while status["handshakes"]["closed_after_handshake_by_service"][&service].as_u64() < Some(8)
        && t0.elapsed() < Duration::from_secs(20)
    {
        std::thread::sleep(Duration::from_millis(200));
        status = d.json("/v1/status");
    }
    let closed = status["handshakes"]["closed_after_handshake_by_service"][&service]
        .as_u64()
        .unwrap_or(0);
    assert!(closed >= 8, "{status:#}\n{}", d.log());
    std::thread::sleep(Duration::from_secs(1));
    let failures = d.json("/v1/failures?since=5m");
    assert_eq!(
        failures.as_array().map(Vec::len),
        Some(0),
        "{failures:#}\n{}",
        d.log()
    );
    assert!(!d.log().contains("tlsmon::alert"), "{}", d.log());
    let metrics = d.get("/metrics").1;
    assert!(
        metrics.contains(&format!(
            "tlsmon_closed_after_handshake_total{{service=\"{service}\",role=\"server\"}}"
        )),
        "{metrics}"
    );
    let (ok, text) = d.status_table();
    assert!(ok, "{text}");
    assert!(
        text.contains("handshakes closed without data (health checks or a late rejection)"),
        "{text}"
    );
}

#[test]
#[ignore = "privileged: run `sudo ./x test`"]
fn a_tls12_close_over_a_visible_hostname_mismatch_is_still_a_failure() {
    // A certificate for another name; curl trusts it as a CA but checks the name after the
    // TLS 1.2 handshake, then closes without a request.
    let pki = TempDir::new("pki-other-name");
    let ok = Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "365",
        ])
        .args(["-subj", "/CN=www.example.com"])
        .arg("-keyout")
        .arg(pki.path().join("key.pem"))
        .arg("-out")
        .arg(pki.path().join("cert.pem"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "openssl req");
    let port = free_port();
    let d = Daemon::start("");
    let _nginx = nginx_tls(&pki, port, "");
    let (ok, out) = run_bounded(
        Command::new("curl")
            .args(["-sS", "--max-time", "5", "--tls-max", "1.2", "--cacert"])
            .arg(pki.path().join("cert.pem"))
            .args(["--resolve", &format!("localhost:{port}:127.0.0.1")])
            .arg(format!("https://localhost:{port}/")),
        Duration::from_secs(10),
    );
    assert!(!ok, "curl must refuse the name: {out}");
    let failures = d.failures_counting("process=curl", 1, Duration::from_secs(20));
    assert_eq!(failures.len(), 1, "{failures:#?}\n{}", d.log());
    assert_eq!(
        failures[0]["cause"], "hostname_mismatch",
        "{:#}",
        failures[0]
    );
}

#[test]
#[ignore = "privileged: run `sudo ./x test`"]
fn tls_is_learned_per_service_not_per_port_number() {
    let port = free_port();
    let d = Daemon::start("");
    // A remote TLS server on PORT (its own network namespace), reached by a client of ours
    // (another namespace): the remote service speaks TLS.
    let (client_ns, remote_ns) = (
        tlsmon_e2e::fleet::Netns::create("client"),
        tlsmon_e2e::fleet::Netns::create("remote"),
    );
    let (_, remote_ip) = client_ns.link(&remote_ns, 77);
    let pki = self_signed_cert_for_days(365);
    let _remote = spawn(
        remote_ns
            .exec("openssl")
            .args(["s_server", "-quiet", "-www", "-accept"])
            .arg(format!("{remote_ip}:{port}"))
            .arg("-cert")
            .arg(pki.path().join("cert.pem"))
            .arg("-key")
            .arg(pki.path().join("key.pem")),
    );
    wait_listening_in(
        &remote_ns.0,
        &format!("{remote_ip}:{port}"),
        Duration::from_secs(10),
    );
    let remote = format!("https://{remote_ip}:{port}/");
    let (ok, out) = run_bounded(
        client_ns
            .exec("curl")
            .args(["-sSk", "--max-time", "5", &remote]),
        Duration::from_secs(10),
    );
    assert!(ok, "{out}");
    // A local plaintext HTTP service on the same port number.
    let web = spawn(
        Command::new("python3")
            .args(["-m", "http.server", "--bind", "127.0.0.1"])
            .arg(port.to_string())
            .current_dir(pki.path()),
    );
    wait_listening(addr(port), Duration::from_secs(10));
    // A local TLS listener, learned from one handshake, then sent plaintext.
    let tls_port = free_port();
    let _nginx = nginx_tls(&pki, tls_port, "");
    let (ok, out) = run_bounded(
        Command::new("curl").args([
            "-sSk",
            "--max-time",
            "5",
            &format!("https://127.0.0.1:{tls_port}/"),
        ]),
        Duration::from_secs(10),
    );
    assert!(ok, "{out}");
    let t0 = std::time::Instant::now();
    let learned = |d: &Daemon| -> Vec<String> {
        d.json("/v1/status")["tls_services"]["learned"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|l| l["service"].as_str().map(str::to_owned))
            .collect()
    };
    let want = [
        format!("{remote_ip}:{port}"),
        format!("127.0.0.1:{tls_port}"),
    ];
    while !want.iter().all(|w| learned(&d).contains(w)) && t0.elapsed() < Duration::from_secs(20) {
        std::thread::sleep(Duration::from_millis(250));
    }
    let known = learned(&d);
    assert!(
        want.iter().all(|w| known.contains(w)),
        "{known:?}\n{}",
        d.log()
    );
    assert!(!known.contains(&format!("127.0.0.1:{port}")), "{known:?}");
    for _ in 0..2 {
        let (ok, out) = plain_http(port);
        assert!(ok, "{out}");
        plain_http(tls_port);
    }
    let refused = d.failures_counting(&format!("port={tls_port}"), 2, Duration::from_secs(20));
    assert!(
        refused
            .iter()
            .all(|a| a["cause"] == "plaintext_to_tls_port"),
        "{refused:#?}"
    );
    assert!(
        refused
            .iter()
            .map(|a| a["count"].as_u64().unwrap_or(0))
            .sum::<u64>()
            >= 2,
        "{refused:#?}\n{}",
        d.log()
    );
    std::thread::sleep(Duration::from_secs(1));
    let plain = d.json(&format!("/v1/failures?since=5m&port={port}"));
    assert_eq!(
        plain.as_array().map(Vec::len),
        Some(0),
        "{plain:#}\n{}",
        d.log()
    );
    drop(web);
}

#[test]
#[ignore = "privileged: run `sudo ./x test`"]
fn plaintext_to_a_fresh_tls_listener_that_answers_with_an_alert_is_caught() {
    // A Java TLS server on a port nobody configured or learned; curl sends it HTTP. Java
    // answers with a plaintext unexpected_message alert: the kernel keeps that answer, and
    // the server's side is plaintext_to_tls_port.
    let pki = self_signed_cert_for_days(365);
    let p12 = pki.path().join("server.p12");
    let (ok, out) = run_bounded(
        Command::new("openssl")
            .args(["pkcs12", "-export", "-passout", "pass:changeit", "-in"])
            .arg(pki.path().join("cert.pem"))
            .arg("-inkey")
            .arg(pki.path().join("key.pem"))
            .arg("-out")
            .arg(&p12),
        Duration::from_secs(30),
    );
    assert!(ok, "{out}");
    let port = free_port();
    let d = Daemon::start("");
    let java = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/TlsServer.java");
    let _server = spawn(
        Command::new("java")
            .arg(java)
            .arg(port.to_string())
            .arg(&p12),
    );
    wait_listening(addr(port), Duration::from_secs(60));
    for _ in 0..2 {
        plain_http(port);
    }
    let alerts = d.failures_counting(&format!("port={port}"), 2, Duration::from_secs(20));
    assert_eq!(alerts.len(), 1, "{alerts:#?}\n{}", d.log());
    let a = &alerts[0];
    assert_eq!(a["cause"], "plaintext_to_tls_port", "{a:#}");
    assert_eq!(a["role"], "server", "{a:#}");
    assert_eq!(a["process"]["comm"], "java", "{a:#}");
    assert_eq!(a["alert"]["code"], 10, "{a:#}");
    assert_eq!(a["count"], 2, "{a:#}");
}

/// Every scenario of the handshake fixtures (`make_fixtures`: real servers and clients,
/// openssl, curl, python, nginx, Go, Java, rustls), run live against a daemon at its default
/// configuration, each on its own port: a failing one is reported on its port with its cause
/// (every alert on that port), a succeeding one (controls, probes) raises nothing there.
#[test]
#[ignore = "privileged: run `sudo ./x test`"]
fn every_recorded_scenario_is_reported_on_its_own_port_and_no_control_is() {
    let d = Daemon::start("");
    let out = TempDir::new("scenarios");
    let (ok, log) = run_bounded(
        Command::new(env!("CARGO_BIN_EXE_make_fixtures")).arg(out.path()),
        Duration::from_secs(900),
    );
    assert!(ok, "make_fixtures: {log}");
    let mut specs: Vec<Value> = std::fs::read_dir(out.path())
        .expect("scenario directory")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .map(|p| serde_json::from_slice(&std::fs::read(p).expect("read")).expect("json"))
        .collect();
    specs.sort_by_key(|s| s["name"].as_str().unwrap_or("").to_owned());
    assert!(specs.len() >= 45, "only {} scenarios", specs.len());
    // Every connection has closed (each scenario stops its server); give the daemon its
    // drain and the store its second.
    std::thread::sleep(Duration::from_secs(3));
    let (mut failing, mut clean, mut wrong, mut skipped) = (0, 0, Vec::new(), Vec::new());
    for spec in &specs {
        let name = spec["name"].as_str().unwrap_or("?");
        let port = spec["port"].as_u64().unwrap_or(0);
        if spec["tls_port"] == true {
            // Plaintext to a port only the configuration makes TLS: nothing to see at the
            // default configuration.
            skipped.push(name.to_owned());
            continue;
        }
        let expect = &spec["expect"];
        let alerts = d
            .json(&format!("/v1/failures?since=1h&limit=1000&port={port}"))
            .as_array()
            .cloned()
            .unwrap_or_default();
        let causes: Vec<&str> = alerts.iter().map(|a| s(a, &["cause"])).collect();
        if expect["outcome"] == "failed" {
            let want = expect["cause"].as_str().unwrap_or("?");
            let on_the_wire = alerts.iter().all(|a| a["evidence"] == "wire");
            if !causes.is_empty() && causes.iter().all(|c| *c == want) && on_the_wire {
                failing += 1;
            } else {
                wrong.push(format!(
                    "{name} (:{port}): expected {want} on wire evidence, got {causes:?}"
                ));
            }
        } else if causes.is_empty() {
            clean += 1;
        } else {
            wrong.push(format!(
                "{name} (:{port}): expected no failure ({}), got {causes:?}",
                expect["outcome"]
            ));
        }
    }
    println!(
        "{failing} failing scenarios reported on their own ports with their causes, {clean} \
         succeeding ones clean, {} wrong, skipped {skipped:?}",
        wrong.len()
    );
    assert!(wrong.is_empty(), "{}\n{}", wrong.join("\n"), d.log());
    assert!(failing >= 40, "{failing} failing scenarios");
}

/// The fixtures' PKI (root, intermediate, `good` for localhost, client certificates from the
/// root and from another CA) in a scratch directory.
fn fixture_pki() -> TempDir {
    let dir = TempDir::new("mtls-pki");
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/make_pki.sh");
    let (ok, out) = run_bounded(
        Command::new("bash").arg(script).arg(dir.path()),
        Duration::from_secs(120),
    );
    assert!(ok, "make_pki.sh: {out}");
    dir
}

/// TLS 1.3 servers requiring a client certificate, as Go and HAProxy run them; curl writes
/// its request right after its Finished, and the server refuses with one encrypted alert.
#[test]
#[ignore = "privileged: run `sudo ./x test`"]
fn tls13_client_certificate_refusals_by_go_and_haproxy_are_failures_and_acceptance_is_not() {
    let pki = fixture_pki();
    let p = |f: &str| pki.path().join(f);
    let haproxy_pem = p("haproxy.pem");
    let mut both = std::fs::read(p("good.chain.pem")).expect("chain");
    both.extend(std::fs::read(p("good.key")).expect("key"));
    std::fs::write(&haproxy_pem, both).expect("haproxy.pem");
    let d = Daemon::start("");
    let go_port = free_port();
    let _go = spawn(
        Command::new(go_tls_server(&pki))
            .arg(go_port.to_string())
            .arg(p("good.chain.pem"))
            .arg(p("good.key"))
            .arg("mtls")
            .arg(p("root.pem")),
    );
    wait_listening(addr(go_port), Duration::from_secs(10));
    let haproxy_port = free_port();
    let conf = p("haproxy-mtls.cfg");
    std::fs::write(
        &conf,
        format!(
            "defaults\n  mode http\n  timeout connect 1s\n  timeout client 5s\n  timeout server 5s\n\
             frontend fe\n  bind 127.0.0.1:{haproxy_port} ssl crt {} ca-file {} verify required ssl-min-ver TLSv1.3\n\
             \x20 http-request return status 200 content-type text/plain string ok\n",
            haproxy_pem.display(),
            p("root.pem").display()
        ),
    )
    .expect("haproxy config");
    let _haproxy = spawn(Command::new("haproxy").arg("-db").arg("-f").arg(&conf));
    wait_listening(addr(haproxy_port), Duration::from_secs(10));
    let curl = |port: u16, cert: Option<(&str, &str)>| -> bool {
        let mut cmd = Command::new("curl");
        cmd.args(["-sS", "--max-time", "5", "--tlsv1.3", "--cacert"])
            .arg(p("root.pem"))
            .args(["--resolve", &format!("localhost:{port}:127.0.0.1")]);
        if let Some((c, k)) = cert {
            cmd.arg("--cert").arg(p(c)).arg("--key").arg(p(k));
        }
        cmd.arg(format!("https://localhost:{port}/"));
        run_bounded(&mut cmd, Duration::from_secs(10)).0
    };
    for port in [go_port, haproxy_port] {
        assert!(
            curl(port, Some(("client.chain.pem", "client.key"))),
            "accepted on {port}"
        );
        assert!(!curl(port, None), "no certificate on {port}");
        assert!(
            !curl(port, Some(("otherclient.chain.pem", "otherclient.key"))),
            "untrusted certificate on {port}"
        );
    }
    for (who, port) in [("go", go_port), ("haproxy", haproxy_port)] {
        let alerts = d.failures_counting(&format!("port={port}"), 4, Duration::from_secs(20));
        let mut seen: Vec<(String, String)> = alerts
            .iter()
            .map(|a| (s(a, &["role"]).to_owned(), s(a, &["cause"]).to_owned()))
            .collect();
        seen.sort();
        assert_eq!(
            seen,
            [
                ("client".to_owned(), "client_cert_rejected".to_owned()),
                ("client".to_owned(), "client_cert_required".to_owned()),
                ("server".to_owned(), "client_cert_rejected".to_owned()),
                ("server".to_owned(), "client_cert_required".to_owned()),
            ],
            "{who}: {alerts:#?}\n{}",
            d.log()
        );
        for a in &alerts {
            assert_eq!(
                a["count"], 1,
                "{who}: the accepted handshake is no failure: {a:#}"
            );
        }
    }
}
