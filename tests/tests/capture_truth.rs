//! What the capture can get wrong under load or with unusual TCP, end to end: owners under a
//! storm of short connections from many processes on every CPU, a ring too small for a
//! burst (incomplete captures must not become failures), TCP Fast Open (data in the SYN) and a
//! lost final ACK (a ClientHello that reaches the listener's request socket before the
//! connection's socket exists).
//! Privileged: run through `sudo ./x test`.

use std::{
    collections::BTreeMap,
    net::{SocketAddr, TcpListener},
    process::Command,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use tlsmon_e2e::*;

/// Connects `count` times to 127.0.0.1:PORT, each time sending a TLS ClientHello whose SNI
/// is `pid-<this process's pid>.test`, reads the answer, closes.
const NAMED_CLIENT: &str = r#"
import os, socket, struct, sys
port, count = int(sys.argv[1]), int(sys.argv[2])
sni = ("pid-%d.test" % os.getpid()).encode()
ext = struct.pack(">HHHBH", 0, len(sni) + 5, len(sni) + 3, 0, len(sni)) + sni
body = b"\x03\x03" + b"\x5a" * 32 + b"\x00" + b"\x00\x02\xc0\x2f" + b"\x01\x00"
body += struct.pack(">H", len(ext)) + ext
hs = b"\x01" + struct.pack(">I", len(body))[1:] + body
hello = b"\x16\x03\x01" + struct.pack(">H", len(hs)) + hs
for _ in range(count):
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(hello)
    try:
        s.recv(64)
    except OSError:
        pass
    s.close()
"#;

fn unhex_text(hex: &str) -> String {
    String::from_utf8_lossy(&unhex(hex)).into_owned()
}

/// The pid a client wrote into its SNI (`pid-123.test`).
fn sni_pid(client_bytes: &str) -> Option<u32> {
    let text = unhex_text(client_bytes);
    let at = text.find("pid-")?;
    text[at + 4..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect::<String>()
        .parse()
        .ok()
}

#[test]
#[ignore = "privileged: run `sudo ./x test`"]
fn owners_stay_right_under_20000_short_connections_from_many_processes() {
    const PROCESSES: usize = 40;
    const EACH: usize = 510;
    let listener = Arc::new(TcpListener::bind("127.0.0.1:0").expect("bind"));
    let server: SocketAddr = listener.local_addr().expect("addr");
    let stop = Arc::new(AtomicBool::new(false));
    let accept = {
        let (l, s) = (listener.clone(), stop.clone());
        std::thread::spawn(move || tlsmon_e2e::load::serve(l, s))
    };
    // A ring that holds the storm: ownership, not loss, is what this test looks at.
    let tracer = Tracer::start(&["--ring-bytes", "67108864"]);
    let t0 = Instant::now();
    let mut clients: Vec<_> = (0..PROCESSES)
        .map(|_| {
            Command::new("python3")
                .args([
                    "-c",
                    NAMED_CLIENT,
                    &server.port().to_string(),
                    &EACH.to_string(),
                ])
                .spawn()
                .expect("python3")
        })
        .collect();
    for c in &mut clients {
        assert!(
            wait_exit(c, Duration::from_secs(300)).is_some_and(|s| s.success()),
            "a client failed"
        );
    }
    let storm = t0.elapsed();
    let want = PROCESSES * EACH;
    let server_text = server.to_string();
    tracer.wait_for(2 * want, Duration::from_secs(120), |r| {
        r["peer"] == server_text.as_str() || r["local"] == server_text.as_str()
    });
    stop.store(true, Ordering::Relaxed);
    let _ = std::net::TcpStream::connect(server); // unblocks accept()
    let _ = accept.join();
    let out = tracer.stop();

    let me = std::process::id();
    let (mut checked, mut wrong, mut unnamed) = (0usize, Vec::new(), 0usize);
    let mut per_pid = BTreeMap::new();
    for r in out.for_server(&server_text, "client") {
        let Some(pid) = sni_pid(s(r, &["client_to_server_hex"])) else {
            continue;
        };
        checked += 1;
        *per_pid.entry(pid).or_insert(0usize) += 1;
        match r["process"]["tgid"].as_u64() {
            Some(tgid) if tgid == u64::from(pid) => {}
            Some(tgid) => wrong.push(format!("pid {pid} reported as {tgid}")),
            None => unnamed += 1,
        }
    }
    let servers = out.for_server(&server_text, "server");
    let wrong_server = servers
        .iter()
        .filter(|r| r["process"]["tgid"].as_u64() != Some(u64::from(me)))
        .count();
    println!(
        "{checked} client connections from {} processes in {storm:?}: {} wrong owners, {unnamed} unnamed; {} server ends, {wrong_server} wrong; ring drops {}",
        per_pid.len(),
        wrong.len(),
        servers.len(),
        out.counters["ring_drops"]
    );
    assert!(checked >= 20_000, "only {checked} client ends checked");
    assert_eq!(per_pid.len(), PROCESSES);
    assert!(wrong.is_empty(), "{:?}", &wrong[..wrong.len().min(20)]);
    assert_eq!(unnamed, 0, "client owners are noted at connect()");
    assert_eq!(wrong_server, 0, "the server end is this test process");
}

/// Completes `count` TLS handshakes at once against 127.0.0.1:PORT (certificate not
/// checked), each sending a request and reading the answer.
const BURST_CLIENT: &str = r#"
import socket, ssl, sys, threading
port, count = int(sys.argv[1]), int(sys.argv[2])
ctx = ssl.create_default_context()
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
ok = []
def one():
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            with ctx.wrap_socket(s) as t:
                t.sendall(b"GET / HTTP/1.0\r\n\r\n")
                t.recv(100)
                ok.append(1)
    except Exception as e:
        print("failed", e)
ts = [threading.Thread(target=one) for _ in range(count)]
for t in ts: t.start()
for t in ts: t.join()
print("ok", len(ok))
"#;

#[test]
#[ignore = "privileged: run `sudo ./x test`"]
fn a_ring_too_small_for_a_burst_of_good_handshakes_reports_no_failure() {
    let pki = self_signed_cert();
    let port = free_port();
    let server: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
    let d = Daemon::start(
        "[capture]\nring_bytes = 65536\ndrain_interval_ms = 1000\nidle_timeout_secs = 2\n",
    );
    let _server = openssl_server(&pki, server, &["-www"]);
    let mut succeeded = 0;
    let mut drops = 0;
    for _ in 0..5 {
        let (_, said) = run_bounded(
            Command::new("python3").args(["-c", BURST_CLIENT, &port.to_string(), "60"]),
            Duration::from_secs(60),
        );
        succeeded += said
            .lines()
            .find_map(|l| l.strip_prefix("ok ")?.trim().parse::<u64>().ok())
            .unwrap_or(0);
        // The kernel's counters reach the status page on the daemon's next poll (each
        // second): wait for it before deciding the burst did not overflow.
        let t0 = Instant::now();
        while drops == 0 && t0.elapsed() < Duration::from_secs(3) {
            drops = d.json("/v1/status")["capture"]["ring_drops"]
                .as_u64()
                .unwrap_or(0);
            std::thread::sleep(Duration::from_millis(200));
        }
        if drops > 0 {
            break;
        }
    }
    assert!(drops > 0, "the burst never overflowed the ring");
    // Every connection judged (idle flows after 2 s).
    std::thread::sleep(Duration::from_secs(5));
    let status = d.json("/v1/status");
    let failures = d.json("/v1/failures?since=1h&limit=1000");
    println!(
        "{succeeded} good handshakes, {drops} ring records lost: handshakes {}",
        status["handshakes"]
    );
    assert!(succeeded >= 60, "{succeeded} handshakes succeeded");
    assert_eq!(
        failures.as_array().map_or(0, Vec::len),
        0,
        "a lost record made a good handshake a failure: {failures:#}"
    );
    assert!(
        status["handshakes"]["capture_incomplete"].as_u64() > Some(0),
        "{status:#}"
    );
}

/// A TLS server on 127.0.0.1:PORT whose listener accepts TCP Fast Open data.
const TFO_SERVER: &str = r#"
import socket, ssl, sys, threading
port, cert, key = int(sys.argv[1]), sys.argv[2], sys.argv[3]
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(cert, key)
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.setsockopt(socket.IPPROTO_TCP, socket.TCP_FASTOPEN, 16)
s.bind(("127.0.0.1", port))
s.listen(16)
def serve(c):
    try:
        t = ctx.wrap_socket(c, server_side=True)
        t.recv(100)
        t.close()
    except Exception:
        c.close()
while True:
    c, _ = s.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
"#;

/// Sets a sysctl for the test's life and restores it after.
struct Sysctl {
    path: &'static str,
    old: String,
}

impl Sysctl {
    fn set(path: &'static str, value: &str) -> Sysctl {
        let old = std::fs::read_to_string(path).expect("read sysctl");
        std::fs::write(path, value).expect("write sysctl");
        Sysctl { path, old }
    }
}

impl Drop for Sysctl {
    fn drop(&mut self) {
        let _ = std::fs::write(self.path, self.old.trim());
    }
}

#[test]
#[ignore = "privileged: run `sudo ./x test`"]
fn tcp_fast_open_data_in_the_syn_is_read_at_its_true_offset() {
    let _tfo = Sysctl::set("/proc/sys/net/ipv4/tcp_fastopen", "3");
    // No cookie cached from an earlier run: the first connection asks for one.
    let _ = run_bounded(
        Command::new("ip").args(["tcp_metrics", "flush", "all"]),
        Duration::from_secs(10),
    );
    let pki = self_signed_cert();
    let port = free_port();
    let d = Daemon::start("");
    let _server = spawn(
        Command::new("python3")
            .args(["-c", TFO_SERVER, &port.to_string()])
            .arg(pki.path().join("cert.pem"))
            .arg(pki.path().join("key.pem")),
    );
    wait_listening(
        format!("127.0.0.1:{port}").parse().expect("addr"),
        Duration::from_secs(10),
    );
    let pcap = pki.path().join("tfo.pcap");
    let dump = tcpdump(&pcap, port);
    // The first connection gets a Fast Open cookie, the second sends its ClientHello in the
    // SYN. curl refuses the self-signed certificate each time (alert 48 from the client).
    let url = format!("https://127.0.0.1:{port}/");
    for _ in 0..2 {
        let (ok, _) = run_bounded(
            Command::new("curl").args(["-sS", "--tcp-fastopen", "--max-time", "5", &url]),
            Duration::from_secs(10),
        );
        assert!(!ok, "curl must refuse the self-signed certificate");
    }
    std::thread::sleep(Duration::from_millis(500));
    stop_tcpdump(dump);
    let (_, syns) = run_bounded(
        Command::new("tshark").arg("-r").arg(&pcap).args([
            "-Y",
            "tcp.flags.syn == 1 && tcp.flags.ack == 0 && tcp.len > 0",
        ]),
        Duration::from_secs(60),
    );
    assert!(
        syns.lines().count() >= 1,
        "no SYN carried data: Fast Open did not happen\n{syns}"
    );
    // The client's side of both connections, its alert read where it is.
    let curl = d.failures_counting("process=curl", 2, Duration::from_secs(20));
    let judged: u64 = curl.iter().map(|a| a["count"].as_u64().unwrap_or(0)).sum();
    assert_eq!(judged, 2, "both curl failures:\n{curl:#?}\n{}", d.log());
    for a in &curl {
        assert_eq!(a["alert"]["code"], 48, "{a:#}");
        assert_eq!(a["alert"]["sender"], "client", "{a:#}");
    }
    // The server's side of the Fast Open connection lacks the ClientHello (it reached the
    // listener): not judged, counted as such; nothing was captured on the listener.
    let mut status = d.json("/v1/status");
    let t0 = Instant::now();
    while status["capture"]["missed_start"].as_u64() < Some(1)
        && t0.elapsed() < Duration::from_secs(5)
    {
        std::thread::sleep(Duration::from_millis(200));
        status = d.json("/v1/status");
    }
    assert!(
        status["capture"]["missed_start"].as_u64() >= Some(1),
        "{status:#}"
    );
    assert!(
        status["handshakes"]["capture_incomplete_by_reason"]["missing_start"].as_u64() >= Some(1),
        "{status:#}"
    );
    let server_failures = d.json("/v1/failures?since=5m&process=python3");
    assert!(
        server_failures
            .as_array()
            .into_iter()
            .flatten()
            .all(|a| a["peer"]["ip"] == "127.0.0.1" && a["local"]["port"] == port),
        "{server_failures:#}"
    );
    // Offline, the same capture gives the client's alert for both connections.
    let (ok, json) = run_bounded(
        Command::new(tlsmon_bin())
            .args(["analyze", "--json", "--failures"])
            .arg(&pcap),
        Duration::from_secs(30),
    );
    assert!(ok, "{json}");
    let alerts: Vec<serde_json::Value> = json
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    assert_eq!(alerts.len(), 2, "{json}");
    for a in &alerts {
        assert_eq!(a["alert"]["code"], 48, "{a:#}");
        assert_eq!(a["alert"]["sender"], "client", "{a:#}");
    }
}

/// An nftables table dropping, on the way in, the second packet a client sends to `port` on
/// each connection (the final ACK of the TCP handshake). Removed when dropped, with the
/// conntrack accounting it needs restored.
struct LoseFinalAck {
    table: String,
    _accounting: Sysctl,
}

impl LoseFinalAck {
    fn on(port: u16) -> LoseFinalAck {
        let accounting = Sysctl::set("/proc/sys/net/netfilter/nf_conntrack_acct", "1");
        let table = format!("tlsmon_test_{port}");
        let rules = format!(
            "table inet {table} {{\n chain input {{\n  type filter hook input priority 0;\n  \
             tcp dport {port} ct original packets 2 counter drop\n }}\n}}\n"
        );
        let file = std::env::temp_dir().join(format!("{table}.nft"));
        std::fs::write(&file, rules).expect("write nft rules");
        let (ok, out) = run_bounded(
            Command::new("nft").arg("-f").arg(&file),
            Duration::from_secs(10),
        );
        let _ = std::fs::remove_file(&file);
        assert!(ok, "nft: {out}");
        LoseFinalAck {
            table,
            _accounting: accounting,
        }
    }

    /// Packets the rule dropped.
    fn dropped(&self) -> u64 {
        let (_, out) = run_bounded(
            Command::new("nft").args(["list", "table", "inet", &self.table]),
            Duration::from_secs(10),
        );
        out.split("counter packets ")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    }
}

impl Drop for LoseFinalAck {
    fn drop(&mut self) {
        let _ = run_bounded(
            Command::new("nft").args(["delete", "table", "inet", &self.table]),
            Duration::from_secs(10),
        );
    }
}

#[test]
#[ignore = "privileged: run `sudo ./x test`"]
fn a_client_hello_that_reaches_a_request_socket_is_not_pinned_on_the_listener() {
    let pki = self_signed_cert();
    let port = free_port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
    let d = Daemon::start("");
    let server = openssl_server(&pki, addr, &[]);
    // A trace beside the daemon shows what the kernel captured socket by socket.
    let trace = Tracer::start(&[]);
    // Each client's final ACK is lost: its ClientHello completes the TCP handshake, so the
    // kernel hands it to the listener (request socket) before the connection's socket exists.
    let lose = LoseFinalAck::on(port);
    for _ in 0..2 {
        assert!(
            !openssl_client(addr, &["-verify_return_error"]),
            "the client must refuse the self-signed certificate"
        );
    }
    assert_eq!(lose.dropped(), 2, "the final ACKs were not dropped");
    // Closing the listener ends whatever was captured on it (nothing, if nothing was).
    drop(server);
    // The clients' sides are judged as usual: their alerts.
    d.failures_counting("process=openssl", 2, Duration::from_secs(20));
    // The servers' sides lack their ClientHellos: counted as incomplete, nothing captured on
    // the listener (which would give it a failure of its own once closed).
    let mut status = d.json("/v1/status");
    let t0 = Instant::now();
    // (The kernel's counters reach the status page on the daemon's next poll.)
    while (status["handshakes"]["capture_incomplete_by_reason"]["missing_start"].as_u64() < Some(2)
        || status["capture"]["missed_start"].as_u64() < Some(2))
        && t0.elapsed() < Duration::from_secs(10)
    {
        std::thread::sleep(Duration::from_millis(200));
        status = d.json("/v1/status");
    }
    std::thread::sleep(Duration::from_secs(1));
    let failures = d
        .json("/v1/failures?since=5m&process=openssl")
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(failures.len(), 1, "{failures:#?}\n{}", d.log());
    let a = &failures[0];
    assert_eq!(a["count"], 2, "{a:#}");
    assert_eq!(a["alert"]["code"], 48, "{a:#}");
    assert_eq!(a["alert"]["sender"], "client", "{a:#}");
    assert_eq!(a["role"], "client", "{a:#}");
    assert_eq!(a["peer"]["port"], port, "{a:#}");
    let status = d.json("/v1/status");
    assert_eq!(
        status["capture"]["missed_start"].as_u64(),
        Some(2),
        "{status:#}"
    );
    assert_eq!(
        status["handshakes"]["capture_incomplete_by_reason"]["missing_start"].as_u64(),
        Some(2),
        "{status:#}"
    );
    // Socket by socket: two server sockets that know they missed their start, and no state
    // ever made on the listener.
    let trace = trace.stop();
    let ours: Vec<&serde_json::Value> = trace
        .records
        .iter()
        .filter(|r| {
            r["local"]
                .as_str()
                .is_some_and(|l| l.ends_with(&format!(":{port}")))
        })
        .collect();
    let all = || {
        ours.iter()
            .map(|r| r.to_string())
            .collect::<Vec<_>>()
            .join("\n")
    };
    assert_eq!(ours.len(), 2, "{}", all());
    for r in &ours {
        assert_eq!(r["role"], "server", "{}", all());
        assert_eq!(r["missed_start"], true, "{}", all());
        assert!(
            !r["peer"].as_str().unwrap_or(":0").ends_with(":0"),
            "{}",
            all()
        );
    }
}
