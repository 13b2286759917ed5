//! Sockets of every family shape, end to end: dual-stack servers (python with
//! `IPV6_V6ONLY=0`, Go's `net/http`) reached over 127.0.0.1 and ::1, an IPv6-only server, a
//! client connecting to a v4-mapped address, a real Java client (IPv6 sockets even to reach
//! 127.0.0.1). Each connection must be seen from both ends, with its process, and with the
//! addresses as the user knows them (127.0.0.1, not ::ffff:127.0.0.1).
//! Privileged: run through `sudo ./x test`.

use std::{net::SocketAddr, path::Path, process::Command, time::Duration};

use tlsmon_e2e::*;

/// A threaded TLS server on `[::]:PORT`: `v6only` 0 (dual-stack) or 1, `tls13` to refuse
/// older versions. Answers one line to each connection.
const PY_SERVER: &str = r#"
import socket, ssl, sys, threading
port, cert, key, mode, v6only = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5])
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(cert, key)
if mode == "tls13":
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, v6only)
s.bind(("::", port))
s.listen(64)
def serve(c):
    try:
        t = ctx.wrap_socket(c, server_side=True)
        t.recv(100)
        t.sendall(b"ok\n")
        t.close()
    except Exception:
        c.close()
while True:
    c, _ = s.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
"#;

/// A client that connects with an AF_INET6 socket to `::ffff:127.0.0.1` and offers at most
/// TLS 1.2.
const MAPPED_CLIENT: &str = r#"
import socket, ssl, sys
s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
s.settimeout(5)
s.connect(("::ffff:127.0.0.1", int(sys.argv[1])))
ctx = ssl.create_default_context()
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
ctx.maximum_version = ssl.TLSVersion.TLSv1_2
try:
    ctx.wrap_socket(s)
    print("handshake ok")
except ssl.SSLError as e:
    print(e.reason)
"#;

fn addr(s: &str) -> SocketAddr {
    s.parse().expect("address")
}

fn py_server(pki: &TempDir, port: u16, mode: &str, v6only: bool) -> Bg {
    let bg = spawn(
        Command::new("python3")
            .args(["-c", PY_SERVER, &port.to_string()])
            .arg(pki.path().join("cert.pem"))
            .arg(pki.path().join("key.pem"))
            .args([mode, if v6only { "1" } else { "0" }]),
    );
    wait_listening(addr(&format!("[::1]:{port}")), Duration::from_secs(10));
    bg
}

/// Go's own dual-stack HTTPS server, built from tests/fixtures/go_tls_server.go.
fn go_server(pki: &TempDir, port: u16, tls13: bool) -> Bg {
    let bin = go_tls_server(pki);
    let mut cmd = Command::new(&bin);
    cmd.arg(port.to_string())
        .arg(pki.path().join("cert.pem"))
        .arg(pki.path().join("key.pem"));
    if tls13 {
        cmd.arg("tls13");
    }
    let bg = spawn(&mut cmd);
    wait_listening(addr(&format!("127.0.0.1:{port}")), Duration::from_secs(10));
    bg
}

/// The connection to `server` (as the client dialled it) seen from both ends: the client is
/// `openssl`, the server `server_comm`, both with the server's address as dialled (IPv4
/// stays IPv4); a refused TLS 1.2 offer shows the protocol_version alert, a success the
/// ServerHello.
fn both_ends(out: &TraceOutput, server: &str, server_comm: &str, refused: bool) {
    let client = out.one(server, "client");
    let srv = out.one(server, "server");
    assert_eq!(s(client, &["process", "comm"]), "openssl", "{client}");
    assert_eq!(s(srv, &["process", "comm"]), server_comm, "{srv}");
    assert_eq!(srv["peer"], client["local"], "one connection, two ends");
    for rec in [client, srv] {
        assert!(
            s(rec, &["client_to_server"]).contains("handshake(ClientHello)"),
            "{rec}"
        );
        let answer = s(rec, &["server_to_client"]);
        if refused {
            assert!(answer.contains("alert(fatal 70"), "{rec}");
        } else {
            assert!(answer.contains("handshake(ServerHello)"), "{rec}");
        }
    }
}

fn dual_stack_case(server_comm: &str, start: impl Fn(&TempDir, u16, bool) -> Bg) {
    let pki = self_signed_cert();
    for refused in [true, false] {
        let port = free_port();
        let tracer = Tracer::start(&[]);
        let _server = start(&pki, port, refused);
        let v4 = format!("127.0.0.1:{port}");
        let v6 = format!("[::1]:{port}");
        for server in [&v4, &v6] {
            let extra: &[&str] = if refused { &["-tls1_2"] } else { &[] };
            assert_eq!(
                openssl_client(addr(server), extra),
                !refused,
                "{server_comm} on {server}"
            );
        }
        assert!(
            tracer.wait_for(4, Duration::from_secs(15), |r| {
                r["peer"].as_str().is_some_and(|p| p == v4 || p == v6)
                    || r["local"].as_str().is_some_and(|l| l == v4 || l == v6)
            }),
            "four ends of two connections"
        );
        let out = tracer.stop();
        both_ends(&out, &v4, server_comm, refused);
        both_ends(&out, &v6, server_comm, refused);
    }
}

#[test]
#[ignore = "privileged: run `sudo ./x test`"]
fn a_dual_stack_python_server_is_seen_from_both_ends_over_ipv4_and_ipv6() {
    dual_stack_case("python3", |pki, port, refused| {
        py_server(pki, port, if refused { "tls13" } else { "any" }, false)
    });
}

#[test]
#[ignore = "privileged: run `sudo ./x test`"]
fn a_dual_stack_go_server_is_seen_from_both_ends_over_ipv4_and_ipv6() {
    dual_stack_case("go_tls_server", go_server);
}

#[test]
#[ignore = "privileged: run `sudo ./x test`"]
fn an_ipv6_only_server_is_seen_from_both_ends() {
    let pki = self_signed_cert();
    let port = free_port();
    let tracer = Tracer::start(&[]);
    let _server = py_server(&pki, port, "tls13", true);
    let v6 = format!("[::1]:{port}");
    assert!(!openssl_client(addr(&v6), &["-tls1_2"]));
    assert!(
        std::net::TcpStream::connect(addr(&format!("127.0.0.1:{port}"))).is_err(),
        "IPv6 only"
    );
    let out = tracer.stop();
    both_ends(&out, &v6, "python3", true);
}

#[test]
#[ignore = "privileged: run `sudo ./x test`"]
fn a_client_dialling_a_v4_mapped_address_is_seen_with_ipv4_addresses() {
    let pki = self_signed_cert();
    let port = free_port();
    let server_addr = format!("127.0.0.1:{port}");
    let tracer = Tracer::start(&[]);
    let _server = openssl_server(&pki, addr(&server_addr), &["-tls1_3"]);
    let (_, said) = run_bounded(
        Command::new("python3").args(["-c", MAPPED_CLIENT, &port.to_string()]),
        Duration::from_secs(15),
    );
    assert!(!said.contains("handshake ok"), "{said}");
    let out = tracer.stop();
    let client = out.one(&server_addr, "client");
    assert_eq!(s(client, &["process", "comm"]), "python3");
    assert!(s(client, &["local"]).starts_with("127.0.0.1:"), "{client}");
    assert!(
        s(client, &["server_to_client"]).contains("alert(fatal 70"),
        "{client}"
    );
    let server = out.one(&server_addr, "server");
    assert_eq!(s(server, &["process", "comm"]), "openssl");
    assert_eq!(server["peer"], client["local"]);
}

#[test]
#[ignore = "privileged: run `sudo ./x test`"]
fn a_java_client_that_rejects_a_certificate_is_reported_with_ipv4_addresses() {
    let pki = self_signed_cert();
    let port = free_port();
    let server_addr = format!("127.0.0.1:{port}");
    let d = Daemon::start("");
    let _server = openssl_server(&pki, addr(&server_addr), &[]);
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/TlsClient.java");
    let (ok, said) = run_bounded(
        Command::new("java")
            .arg(&src)
            .args(["127.0.0.1", &port.to_string()]),
        Duration::from_secs(60),
    );
    assert!(!ok && said.contains("failed"), "java: {said}");
    let client = d
        .wait_failure("since=5m&process=java", Duration::from_secs(20), |a| {
            a["role"] == "client"
        })
        .unwrap_or_else(|| panic!("no failure of java:\n{}", d.log()));
    assert_eq!(client["peer"]["ip"], "127.0.0.1", "{client}");
    assert_eq!(client["peer"]["port"], port, "{client}");
    assert_eq!(client["local"]["ip"], "127.0.0.1", "{client}");
    let server = d
        .wait_failure("since=5m&process=openssl", Duration::from_secs(20), |a| {
            a["role"] == "server" && a["local"]["port"] == port
        })
        .unwrap_or_else(|| panic!("no failure of the server side:\n{}", d.log()));
    assert_eq!(server["peer"]["ip"], "127.0.0.1", "{server}");
}
