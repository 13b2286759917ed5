//! Capture end to end: the real eBPF programs in this kernel, real programs on loopback.
//! Privileged: run through `sudo ./x test` (they are ignored by a plain `cargo test`).

use std::{net::SocketAddr, process::Command, time::Duration};

use tlsmon_e2e::*;

const PRIVILEGED: &str = "needs root and the eBPF build: run `sudo ./x test`";

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn addr(s: &str) -> SocketAddr {
    s.parse().expect("address")
}

/// The acceptance case of the foundation issue: a TLS 1.3-only server, a TLS 1.2-max client.
#[test]
#[ignore = "privileged: run `sudo ./x test`"]
fn failing_openssl_handshake_is_seen_from_both_ends_with_the_bytes_on_the_wire() {
    let _ = PRIVILEGED;
    let pki = self_signed_cert();
    let port = free_port();
    let server_addr = addr(&format!("127.0.0.1:{port}"));
    let tracer = Tracer::start(&[]);
    let _server = openssl_server(&pki, server_addr, &["-tls1_3"]);
    let pcap = pki.path().join("failing.pcap");
    let dump = tcpdump(&pcap, port);
    assert!(
        !openssl_client(server_addr, &["-tls1_2"]),
        "a TLS 1.2 client must fail here"
    );
    assert!(tracer.wait_for(2, Duration::from_secs(15), |r| r["peer"]
        == server_addr.to_string()
        || r["local"] == server_addr.to_string()));
    stop_tcpdump(dump);
    let out = tracer.stop();

    let client = out.one(&server_addr.to_string(), "client");
    assert_eq!(s(client, &["process", "comm"]), "openssl");
    assert!(
        s(client, &["client_to_server"]).contains("handshake(ClientHello)"),
        "{client}"
    );
    assert!(
        s(client, &["server_to_client"]).contains("alert(fatal 70 protocol_version)"),
        "{client}"
    );
    let server = out.one(&server_addr.to_string(), "server");
    assert_eq!(s(server, &["process", "comm"]), "openssl");
    assert_eq!(
        server["peer"], client["local"],
        "both ends are the same connection"
    );
    assert!(
        s(server, &["server_to_client"]).contains("alert(fatal 70"),
        "{server}"
    );

    let (c2s, s2c) = tshark_follow(&pcap, s(client, &["local"]), &server_addr.to_string());
    assert!(
        !c2s.is_empty() && !s2c.is_empty(),
        "tcpdump saw the exchange ({} bytes of pcap)",
        std::fs::metadata(&pcap).map(|m| m.len()).unwrap_or(0)
    );
    for rec in [client, server] {
        assert_eq!(
            s(rec, &["client_to_server_hex"]),
            hex(&c2s),
            "client bytes of {rec}"
        );
        assert_eq!(
            s(rec, &["server_to_client_hex"]),
            hex(&s2c),
            "server bytes of {rec}"
        );
    }
}

#[test]
#[ignore = "privileged: run `sudo ./x test`"]
fn succeeding_handshake_streams_equal_the_wire() {
    let pki = self_signed_cert();
    let port = free_port();
    let server_addr = addr(&format!("127.0.0.1:{port}"));
    let tracer = Tracer::start(&[]);
    let _server = openssl_server(&pki, server_addr, &[]);
    let pcap = pki.path().join("ok.pcap");
    let dump = tcpdump(&pcap, port);
    assert!(
        openssl_client(server_addr, &[]),
        "the handshake must succeed"
    );
    assert!(tracer.wait_for(2, Duration::from_secs(15), |r| r["peer"]
        == server_addr.to_string()
        || r["local"] == server_addr.to_string()));
    stop_tcpdump(dump);
    let out = tracer.stop();
    let client = out.one(&server_addr.to_string(), "client");
    assert!(
        s(client, &["server_to_client"]).contains("handshake(ServerHello)"),
        "{client}"
    );
    let (c2s, s2c) = tshark_follow(&pcap, s(client, &["local"]), &server_addr.to_string());
    assert_eq!(s(client, &["client_to_server_hex"]), hex(&c2s));
    assert_eq!(s(client, &["server_to_client_hex"]), hex(&s2c));
    assert_eq!(client["holes"], 0);
}

#[test]
#[ignore = "privileged: run `sudo ./x test`"]
fn ipv6_loopback_is_captured() {
    let pki = self_signed_cert();
    let port = free_port();
    let server_addr = addr(&format!("[::1]:{port}"));
    let tracer = Tracer::start(&[]);
    let _server = openssl_server(&pki, server_addr, &["-tls1_3"]);
    assert!(!openssl_client(server_addr, &["-tls1_2"]));
    let out = tracer.stop();
    let client = out.one(&server_addr.to_string(), "client");
    assert!(
        s(client, &["server_to_client"]).contains("alert(fatal 70"),
        "{client}"
    );
    let server = out.one(&server_addr.to_string(), "server");
    assert_eq!(s(server, &["process", "comm"]), "openssl");
}

/// A python TLS 1.2 client whose segments carry IPv6 hop-by-hop and destination-options
/// extension headers (sticky socket options, as CALIPSO or an in-house router alert
/// would set), so TCP does not follow the fixed IPv6 header.
const IPV6_EXTENSION_CLIENT: &str = r#"
import socket, ssl, sys
s = socket.socket(socket.AF_INET6)
pad = bytes([0, 0, 1, 4, 0, 0, 0, 0])  # next header (set by the kernel), length 0, PadN
s.setsockopt(socket.IPPROTO_IPV6, 54, pad)  # IPV6_HOPOPTS
s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_DSTOPTS, pad)
s.settimeout(5)
s.connect(("::1", int(sys.argv[1])))
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
ctx.maximum_version = ssl.TLSVersion.TLSv1_2
try:
    ctx.wrap_socket(s).close()
except ssl.SSLError as e:
    print(e)
    sys.exit(3)
"#;

#[test]
#[ignore = "privileged: run `sudo ./x test`"]
fn ipv6_segments_with_extension_headers_are_captured() {
    let pki = self_signed_cert();
    let port = free_port();
    let server_addr = addr(&format!("[::1]:{port}"));
    let tracer = Tracer::start(&[]);
    let _server = openssl_server(&pki, server_addr, &["-tls1_3"]);
    let (ok, out) = run_bounded(
        Command::new("python3")
            .args(["-c", IPV6_EXTENSION_CLIENT])
            .arg(port.to_string()),
        Duration::from_secs(10),
    );
    assert!(
        !ok && out.contains("VERSION"),
        "the client must fail on the version: {out}"
    );
    // The ClientHello travelled behind the extension headers: both ends saw it.
    let out = both_ends_of_a_version_refusal(tracer, server_addr);
    let client = out.one(&server_addr.to_string(), "client");
    assert_eq!(s(client, &["process", "comm"]), "python3");
}

/// Waits until both ends of the connection to `server` are reported, stops the tracer and
/// checks that each end saw the ClientHello go out and the fatal protocol_version alert (70)
/// come back.
fn both_ends_of_a_version_refusal(tracer: Tracer, server: SocketAddr) -> TraceOutput {
    let server = server.to_string();
    assert!(
        tracer.wait_for(2, Duration::from_secs(15), |r| r["peer"] == server
            || r["local"] == server)
    );
    let out = tracer.stop();
    for role in ["client", "server"] {
        let rec = out.one(&server, role);
        assert!(
            s(rec, &["client_to_server"]).contains("handshake(ClientHello)"),
            "{rec}"
        );
        assert!(
            s(rec, &["server_to_client"]).contains("alert(fatal 70"),
            "{rec}"
        );
    }
    out
}

#[test]
#[ignore = "privileged: run `sudo ./x test`"]
fn curl_that_fails_and_exits_at_once_is_still_named() {
    let pki = self_signed_cert();
    let port = free_port();
    let server_addr = addr(&format!("127.0.0.1:{port}"));
    let tracer = Tracer::start(&[]);
    let _server = openssl_server(&pki, server_addr, &["-www"]);
    // Without -k curl rejects the self-signed certificate and exits within milliseconds.
    let (ok, _) = run_bounded(
        Command::new("curl").args([
            "-sS",
            "--max-time",
            "5",
            &format!("https://127.0.0.1:{port}/"),
        ]),
        Duration::from_secs(10),
    );
    assert!(!ok, "curl must reject the self-signed certificate");
    let out = tracer.stop();
    let client = out.one(&server_addr.to_string(), "client");
    assert_eq!(s(client, &["process", "comm"]), "curl");
    assert!(
        s(client, &["client_to_server"]).contains("ClientHello"),
        "{client}"
    );
}

/// A plain HTTP exchange (python http.server, curl) traced with `tracer_args`.
fn traced_http_exchange(tracer_args: &[&str], port: u16) -> TraceOutput {
    let tracer = Tracer::start(tracer_args);
    let port_arg = port.to_string();
    let _server = spawn(Command::new("python3").args([
        "-m",
        "http.server",
        "--bind",
        "127.0.0.1",
        &port_arg,
    ]));
    wait_listening(addr(&format!("127.0.0.1:{port}")), Duration::from_secs(10));
    let url = format!("http://127.0.0.1:{port}/");
    let (ok, _) = run_bounded(
        Command::new("curl").args(["-sS", "--max-time", "5", &url]),
        Duration::from_secs(10),
    );
    assert!(ok, "plain HTTP works");
    tracer.stop()
}

#[test]
#[ignore = "privileged: run `sudo ./x test`"]
fn plain_http_to_a_tls_port_is_reported_as_not_tls_with_its_first_bytes() {
    let port = free_port();
    let out = traced_http_exchange(&["--tls-port", &port.to_string()], port);
    // wait_listening's probe connection sends nothing; the curl connection sends a request.
    let servers = out.for_server(&format!("127.0.0.1:{port}"), "server");
    let http: Vec<_> = servers
        .iter()
        .filter(|r| s(r, &["client_to_server"]).starts_with("not-tls(\"GET / HTTP/1.1"))
        .collect();
    assert_eq!(http.len(), 1, "records: {:?}", out.records);
    assert_eq!(http[0]["capture"], "sample");
    assert_eq!(s(http[0], &["process", "comm"]), "python3");
}

#[test]
#[ignore = "privileged: run `sudo ./x test`"]
fn plain_http_to_an_ordinary_port_costs_no_record() {
    let port = free_port();
    let out = traced_http_exchange(&[], port);
    let server_addr = format!("127.0.0.1:{port}");
    assert!(
        out.for_server(&server_addr, "server").is_empty(),
        "{:?}",
        out.records
    );
    assert!(
        out.for_server(&server_addr, "client").is_empty(),
        "{:?}",
        out.records
    );
}

#[test]
#[ignore = "privileged: run `sudo ./x test`"]
fn nginx_worker_that_answers_is_attributed() {
    let pki = self_signed_cert();
    let port = free_port();
    let tracer = Tracer::start(&[]);
    let _nginx = nginx_tls(&pki, port, "");
    let server_addr = addr(&format!("127.0.0.1:{port}"));

    let (ok, body) = run_bounded(
        Command::new("curl").args([
            "-sSk",
            "--max-time",
            "5",
            &format!("https://127.0.0.1:{port}/"),
        ]),
        Duration::from_secs(10),
    );
    assert!(ok && body == "ok\n", "nginx answers over TLS");
    let out = tracer.stop();
    let tls_servers: Vec<_> = out
        .for_server(&server_addr.to_string(), "server")
        .into_iter()
        .filter(|r| s(r, &["client_to_server"]).contains("ClientHello"))
        .collect();
    assert_eq!(tls_servers.len(), 1, "{:?}", out.records);
    let p = &tls_servers[0]["process"];
    assert_eq!(s(p, &["comm"]), "nginx");
    assert!(s(p, &["exe"]).ends_with("/nginx"), "{p}");
    assert!(
        s(p, &["cmdline"]).contains("worker process"),
        "the worker, not the master: {p}"
    );
}

/// Runs `f` with a fresh network namespace (loopback up), removed afterwards.
fn with_netns(f: impl FnOnce(&str)) {
    let ns = tlsmon_e2e::fleet::Netns::create("capture");
    f(&ns.0);
}

#[test]
#[ignore = "privileged: run `sudo ./x test`"]
fn connection_inside_another_network_namespace_is_seen() {
    with_netns(|ns| {
        let pki = self_signed_cert();
        let port = free_port();
        let tracer = Tracer::start(&[]);
        let _server = spawn(
            Command::new("ip")
                .args([
                    "netns",
                    "exec",
                    ns,
                    "openssl",
                    "s_server",
                    "-quiet",
                    "-tls1_3",
                    "-accept",
                    &format!("127.0.0.1:{port}"),
                ])
                .arg("-cert")
                .arg(pki.path().join("cert.pem"))
                .arg("-key")
                .arg(pki.path().join("key.pem")),
        );
        // The server is in the namespace: probe with the client itself (bounded retries).
        let mut connected = false;
        for _ in 0..20 {
            let (_, out) = run_bounded(
                Command::new("ip").args(["netns", "exec", ns, "sh", "-c"]).arg(format!(
                    "openssl s_client -tls1_2 -connect 127.0.0.1:{port} </dev/null 2>&1 | grep -c CONNECTED || true"
                )),
                Duration::from_secs(10),
            );
            if out.trim() != "0" && !out.trim().is_empty() {
                connected = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        assert!(connected, "client reached the server inside {ns}");
        let out = tracer.stop();
        let server_addr = format!("127.0.0.1:{port}");
        let clients = out.for_server(&server_addr, "client");
        assert!(!clients.is_empty(), "records: {:?}", out.records);
        assert!(
            clients
                .iter()
                .any(|c| s(c, &["server_to_client"]).contains("alert(fatal 70"))
        );
        assert!(
            clients
                .iter()
                .all(|c| s(c, &["process", "comm"]) == "openssl")
        );
    });
}

#[test]
#[ignore = "privileged: run `sudo ./x test`"]
fn starttls_smtp_upgrade_is_captured_from_the_client_hello_on() {
    let pki = self_signed_cert();
    let port = free_port();
    let server_addr = addr(&format!("127.0.0.1:{port}"));
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/smtp_starttls.py");
    let tracer = Tracer::start(&[]);
    let _smtp = spawn(
        Command::new("python3")
            .arg(script)
            .arg(port.to_string())
            .arg(pki.path().join("cert.pem"))
            .arg(pki.path().join("key.pem")),
    );
    wait_listening(server_addr, Duration::from_secs(10));
    let (_, _) = run_bounded(
        Command::new("openssl").args([
            "s_client",
            "-starttls",
            "smtp",
            "-connect",
            &server_addr.to_string(),
        ]),
        Duration::from_secs(10),
    );
    let out = tracer.stop();
    let client = out.one(&server_addr.to_string(), "client");
    assert_eq!(client["capture"], "upgraded", "{client}");
    // The stream starts at the ClientHello: the SMTP dialogue before it is not captured.
    assert!(
        s(client, &["client_to_server"]).starts_with("handshake(ClientHello)"),
        "{client}"
    );
    assert!(
        s(client, &["client_to_server_hex"]).starts_with("1603"),
        "{client}"
    );
    assert!(
        s(client, &["server_to_client"]).starts_with("handshake(ServerHello)"),
        "{client}"
    );
    let server = out.one(&server_addr.to_string(), "server");
    assert_eq!(s(server, &["process", "comm"]), "python3");
}

#[test]
#[ignore = "privileged: run `sudo ./x test`"]
fn ring_overflow_is_counted_and_reported_as_capture_loss() {
    let pki = self_signed_cert();
    let port = free_port();
    let server_addr = addr(&format!("127.0.0.1:{port}"));
    // One page of ring, drained every 3 s: a burst of handshakes must overflow it.
    let tracer = Tracer::start(&["--ring-bytes", "4096", "--drain-ms", "3000"]);
    let _server = openssl_server(&pki, server_addr, &[]);
    for _ in 0..20 {
        openssl_client(server_addr, &[]);
    }
    let out = tracer.stop();
    let drops = out.counters["ring_drops"].as_u64().unwrap_or(0);
    assert!(
        drops > 0,
        "counters: {} stderr: {}",
        out.counters,
        out.stderr
    );
    let reported: u64 = out
        .losses
        .iter()
        .filter_map(|l| l["lost_records"].as_u64())
        .sum();
    assert_eq!(
        reported, drops,
        "every lost record is reported: {:?}",
        out.losses
    );
}

/// Connects, says so, waits for a line on stdin, then offers at most TLS 1.2.
const LATE_HANDSHAKE_CLIENT: &str = r#"
import socket, ssl, sys
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
print("connected", flush=True)
sys.stdin.readline()
ctx = ssl.create_default_context()
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
ctx.maximum_version = ssl.TLSVersion.TLSv1_2
try:
    ctx.wrap_socket(s)
except ssl.SSLError as e:
    print(e.reason, flush=True)
"#;

#[test]
#[ignore = "privileged: run `sudo ./x test`"]
fn a_connection_opened_before_the_capture_started_gets_its_roles_from_the_client_hello() {
    use std::io::{BufRead, BufReader, Write};
    use std::process::Stdio;
    let pki = self_signed_cert();
    let port = free_port();
    let server_addr = addr(&format!("127.0.0.1:{port}"));
    let _server = openssl_server(&pki, server_addr, &["-tls1_3"]);
    // connect() happens before the programs are attached: no owner note, no role from it.
    let mut client = Command::new("python3")
        .args(["-c", LATE_HANDSHAKE_CLIENT, &port.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3");
    let mut lines = BufReader::new(client.stdout.take().expect("stdout")).lines();
    assert_eq!(
        lines.next().and_then(Result::ok).as_deref(),
        Some("connected")
    );
    let tracer = Tracer::start(&[]);
    writeln!(client.stdin.take().expect("stdin")).expect("go");
    let t0 = std::time::Instant::now();
    while client.try_wait().expect("wait").is_none() {
        if t0.elapsed() > Duration::from_secs(10) {
            let _ = client.kill();
            panic!("the late client did not finish");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let reason = lines.next().and_then(Result::ok).unwrap_or_default();
    assert!(
        reason.contains("VERSION"),
        "the client must fail on the version: {reason}"
    );
    // The side that sent the ClientHello is the client, the other the server.
    both_ends_of_a_version_refusal(tracer, server_addr);
}
