//! Regenerates the handshake fixtures (`cargo xtask fixtures`, root for tcpdump): for each
//! scenario, a real server and a real client (openssl s_server/s_client, curl, python ssl,
//! nginx, Go's net/http, Java, rustls)
//! talk on loopback with a freshly generated PKI while tcpdump records the exchange. Writes
//! `<name>.pcap` and `<name>.json` (what ran and the outcome the core must find) into the
//! output directory. The expectations are written here, by hand, per scenario: the core's
//! own answer is never copied into them.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime};

use serde_json::json;
use tlsmon_e2e::{
    TempDir, free_port, go_tls_server, spawn, stop_tcpdump, tcpdump, wait_exit, wait_listening,
};

/// What the core must say about the scenario's connection.
struct Expect {
    outcome: &'static str,
    cause: Option<&'static str>,
    sender: Option<&'static str>,
    code: Option<u8>,
    stage: Option<&'static str>,
    inferred: bool,
}

const fn failed(
    cause: &'static str,
    sender: Option<&'static str>,
    code: Option<u8>,
    stage: &'static str,
) -> Expect {
    Expect {
        outcome: "failed",
        cause: Some(cause),
        sender,
        code,
        stage: Some(stage),
        inferred: false,
    }
}

const fn inferred(
    cause: &'static str,
    sender: Option<&'static str>,
    stage: &'static str,
) -> Expect {
    Expect {
        outcome: "failed",
        cause: Some(cause),
        sender,
        code: None,
        stage: Some(stage),
        inferred: true,
    }
}

const fn outcome(o: &'static str) -> Expect {
    Expect {
        outcome: o,
        cause: None,
        sender: None,
        code: None,
        stage: None,
        inferred: false,
    }
}

struct Scenario {
    name: &'static str,
    what: &'static str,
    /// Command line; `{pki}`, `{port}`, `{fixtures}` and `{future}` are substituted.
    server: &'static str,
    client: &'static str,
    /// The server port counts as a TLS port (as 443 would).
    tls_port: bool,
    expect: Expect,
}

const S: Option<&str> = Some("server");
const C: Option<&str> = Some("client");

/// openssl s_server with the good chain unless the scenario names another.
macro_rules! srv {
    ($leaf:literal, $extra:literal) => {
        concat!(
            "openssl s_server -quiet -accept 127.0.0.1:{port} -cert {pki}/",
            $leaf,
            ".pem -key {pki}/",
            $leaf,
            ".key -cert_chain {pki}/int.pem ",
            $extra
        )
    };
}
macro_rules! cli {
    ($extra:literal) => {
        concat!("openssl s_client -connect 127.0.0.1:{port} -servername localhost -CAfile {pki}/root.pem -verify_return_error ", $extra)
    };
}
const CURL: &str =
    "curl -sS --max-time 5 --resolve localhost:{port}:127.0.0.1 --cacert {pki}/root.pem";

fn scenarios() -> Vec<Scenario> {
    let sc = |name, what, server, client, expect| Scenario {
        name,
        what,
        server,
        client,
        tls_port: false,
        expect,
    };
    vec![
        sc(
            "completed_tls13_curl",
            "curl fetches a page over TLS 1.3 from s_server -www",
            srv!("good", "-www"),
            "{curl} https://localhost:{port}/",
            outcome("completed"),
        ),
        sc(
            "completed_tls12_curl",
            "curl fetches a page over TLS 1.2 (chain visible)",
            srv!("good", "-www -tls1_2"),
            "{curl} --tlsv1.2 --tls-max 1.2 https://localhost:{port}/",
            outcome("completed"),
        ),
        sc(
            "protocol_version_tls13_server_tls12_client",
            "TLS 1.3-only server, TLS 1.2-only client",
            srv!("good", "-tls1_3"),
            cli!("-tls1_2"),
            failed("protocol_version_mismatch", S, Some(70), "client_hello"),
        ),
        sc(
            "protocol_version_tls10_client",
            "TLS 1.0-only client against a default OpenSSL server",
            srv!("good", ""),
            cli!("-tls1 -cipher DEFAULT:@SECLEVEL=0"),
            failed("protocol_version_mismatch", S, Some(80), "client_hello"),
        ),
        sc(
            "no_shared_cipher_tls12",
            "server offers only AES256-SHA256, client only ECDHE-RSA-AES128-GCM-SHA256",
            srv!("good", "-tls1_2 -cipher AES256-SHA256"),
            cli!("-tls1_2 -cipher ECDHE-RSA-AES128-GCM-SHA256"),
            failed("no_shared_cipher", S, Some(40), "client_hello"),
        ),
        sc(
            "no_shared_group_tls13",
            "server groups X25519 only, client P-521 only",
            srv!("good", "-groups X25519"),
            cli!("-groups P-521"),
            failed("no_shared_group", S, Some(40), "client_hello"),
        ),
        sc(
            "no_shared_sigalg_tls12",
            "RSA certificate, client accepts only ECDSA signatures",
            srv!("good", "-tls1_2"),
            cli!("-tls1_2 -sigalgs ECDSA+SHA256:ECDSA+SHA384"),
            failed("no_shared_sigalg", S, Some(40), "client_hello"),
        ),
        sc(
            "cert_expired_tls12",
            "expired leaf, TLS 1.2: the client's alert and the chain agree",
            srv!("expired", "-tls1_2"),
            cli!("-tls1_2"),
            failed("cert_expired", C, Some(45), "server_hello_done"),
        ),
        sc(
            "cert_expired_tls13",
            "expired leaf, TLS 1.3: OpenSSL's client alert is readable, the chain is not",
            srv!("expired", ""),
            cli!(""),
            failed("cert_expired", C, Some(45), "encrypted_extensions"),
        ),
        sc(
            "cert_not_yet_valid_tls12",
            "leaf valid from 2045",
            srv!("notyet", "-tls1_2"),
            cli!("-tls1_2"),
            failed("cert_not_yet_valid", C, Some(42), "server_hello_done"),
        ),
        sc(
            "clock_skew_tls12",
            "valid chain, the client's clock is 20 years ahead (-attime)",
            srv!("good", "-tls1_2"),
            cli!("-tls1_2 -attime {future}"),
            failed("clock_skew", C, Some(45), "server_hello_done"),
        ),
        sc(
            "hostname_mismatch_tls12_openssl",
            "certificate for www.example.com, client checks localhost",
            srv!("wronghost", "-tls1_2"),
            cli!("-tls1_2 -verify_hostname localhost"),
            failed("hostname_mismatch", C, Some(42), "server_hello_done"),
        ),
        sc(
            "server_cert_rejected_tls13_openssl",
            "certificate for www.example.com over TLS 1.3: the chain is hidden",
            srv!("wronghost", ""),
            cli!("-verify_hostname localhost"),
            failed("server_cert_rejected", C, Some(42), "encrypted_extensions"),
        ),
        sc(
            "closed_after_handshake_tls13_curl",
            "curl checks the name after a TLS 1.3 handshake and closes",
            srv!("wronghost", "-www"),
            "{curl} https://localhost:{port}/",
            outcome("closed_after_handshake"),
        ),
        sc(
            "hostname_mismatch_tls12_curl",
            "curl checks the name after a TLS 1.2 handshake; the chain shows the mismatch",
            srv!("wronghost", "-www -tls1_2"),
            "{curl} --tlsv1.2 --tls-max 1.2 https://localhost:{port}/",
            inferred("hostname_mismatch", C, "server_finished"),
        ),
        sc(
            "self_signed_tls12",
            "self-signed server certificate",
            "openssl s_server -quiet -accept 127.0.0.1:{port} -cert {pki}/selfsigned.pem -key {pki}/selfsigned.key -tls1_2",
            cli!("-tls1_2"),
            failed("self_signed", C, Some(48), "server_hello_done"),
        ),
        sc(
            "untrusted_issuer_tls12",
            "chain from a CA the client does not trust",
            "openssl s_server -quiet -accept 127.0.0.1:{port} -cert {pki}/untrusted.pem -key {pki}/untrusted.key -cert_chain {pki}/otherint.pem -tls1_2",
            cli!("-tls1_2"),
            failed("untrusted_issuer", C, Some(48), "server_hello_done"),
        ),
        sc(
            "incomplete_chain_tls12",
            "server sends its leaf without the intermediate",
            "openssl s_server -quiet -accept 127.0.0.1:{port} -cert {pki}/good.pem -key {pki}/good.key -tls1_2",
            cli!("-tls1_2"),
            failed("incomplete_chain", C, Some(48), "server_hello_done"),
        ),
        sc(
            "weak_signature_md5_tls12",
            "leaf signed with MD5 (seed 000)",
            srv!("md5", "-tls1_2 -cipher DEFAULT:@SECLEVEL=0"),
            cli!("-tls1_2"),
            failed("weak_signature_in_chain", C, Some(42), "server_hello_done"),
        ),
        sc(
            "weak_signature_sha1_tls12",
            "leaf signed with SHA-1",
            srv!("sha1", "-tls1_2 -cipher DEFAULT:@SECLEVEL=0"),
            cli!("-tls1_2"),
            failed("weak_signature_in_chain", C, Some(42), "server_hello_done"),
        ),
        sc(
            "weak_key_tls12",
            "RSA-1024 leaf key under the client's security level 2",
            srv!("weakkey", "-tls1_2 -cipher DEFAULT:@SECLEVEL=0"),
            cli!("-tls1_2"),
            failed("weak_key", C, Some(42), "server_hello_done"),
        ),
        sc(
            "cert_revoked_tls12",
            "leaf listed in the intermediate's CRL",
            srv!("revoked", "-tls1_2"),
            cli!("-tls1_2 -CRL {pki}/int.crl -crl_check"),
            failed("cert_revoked", C, Some(44), "server_hello_done"),
        ),
        sc(
            "sni_unrecognized",
            "python ssl server serves only localhost; client asks for other.example",
            "python3 {fixtures}/tls_peer.py server {port} tls --cert {pki}/good.chain.pem --key {pki}/good.key --require-sni localhost",
            "openssl s_client -connect 127.0.0.1:{port} -servername other.example",
            failed("sni_unrecognized", S, Some(112), "client_hello"),
        ),
        sc(
            "sni_missing",
            "python ssl server requires SNI; client sends none",
            "python3 {fixtures}/tls_peer.py server {port} tls --cert {pki}/good.chain.pem --key {pki}/good.key --require-sni localhost",
            "openssl s_client -connect 127.0.0.1:{port} -noservername",
            failed("sni_missing", S, Some(112), "client_hello"),
        ),
        sc(
            "alpn_mismatch",
            "server speaks h2 only, client offers foo",
            srv!("good", "-alpn h2"),
            cli!("-alpn foo"),
            failed("alpn_mismatch", S, Some(120), "client_hello"),
        ),
        sc(
            "client_cert_required_tls12",
            "server requires a client certificate, client has none (TLS 1.2)",
            srv!("good", "-tls1_2 -Verify 1 -CAfile {pki}/root.pem"),
            cli!("-tls1_2"),
            failed("client_cert_required", S, Some(40), "client_finished"),
        ),
        sc(
            "client_cert_required_tls13",
            "server requires a client certificate, client has none (TLS 1.3: encrypted alert)",
            srv!("good", "-Verify 1 -CAfile {pki}/root.pem"),
            cli!(""),
            // The alert is encrypted; its code is inferred: a TLS 1.3 server refusing a
            // flight without a certificate sends certificate_required (116, RFC 8446 §4.4.2.4).
            Expect {
                code: Some(116),
                ..inferred("client_cert_required", S, "client_finished")
            },
        ),
        sc(
            "client_cert_untrusted_tls12",
            "client certificate from a CA the server does not trust",
            srv!(
                "good",
                "-tls1_2 -Verify 1 -verify_return_error -CAfile {pki}/root.pem"
            ),
            cli!(
                "-tls1_2 -cert {pki}/otherclient.pem -key {pki}/otherclient.key -cert_chain {pki}/otherint.pem"
            ),
            failed("client_cert_untrusted", S, Some(48), "client_finished"),
        ),
        sc(
            "client_cert_untrusted_tls13",
            "client certificate from an untrusted CA over TLS 1.3 (encrypted alert)",
            srv!(
                "good",
                "-Verify 1 -verify_return_error -CAfile {pki}/root.pem"
            ),
            cli!(
                "-cert {pki}/otherclient.pem -key {pki}/otherclient.key -cert_chain {pki}/otherint.pem"
            ),
            // One alert-sized record after a flight that carried a certificate: the server
            // refused the client's certificate (the alert itself is encrypted).
            inferred("client_cert_rejected", S, "client_finished"),
        ),
        Scenario {
            tls_port: true,
            ..sc(
                "plaintext_to_tls_port",
                "curl speaks plain HTTP to a TLS port (Schannel 36888 in seed 002)",
                srv!("good", "-www"),
                "curl -sS --max-time 5 http://127.0.0.1:{port}/",
                failed("plaintext_to_tls_port", None, None, "tcp_connected"),
            )
        },
        sc(
            "tls_to_plaintext_port",
            "s_client to python's plain HTTP server: HTTP 400 to a ClientHello",
            "python3 -m http.server {port} --bind 127.0.0.1",
            cli!(""),
            failed("tls_to_plaintext_port", None, None, "client_hello"),
        ),
        sc(
            "sslv2_format_hello_completed",
            "an SSLv2-format ClientHello (old Java, embedded clients) asks for TLS 1.2; the \
             handshake completes with a real s_server and data follows",
            srv!("good", "-tls1_2 -cipher NULL-SHA256:@SECLEVEL=0"),
            "python3 {fixtures}/sslv2_hello.py client 127.0.0.1 {port} {pki}/good.pem",
            outcome("completed"),
        ),
        sc(
            "ssl2_only_peer",
            "a server that speaks only SSL 2.0 answers the same hello with an SSLv2 SERVER-HELLO",
            "python3 {fixtures}/sslv2_hello.py ssl2-server {port}",
            "python3 {fixtures}/sslv2_hello.py client 127.0.0.1 {port} {pki}/good.pem",
            failed("ssl2_only_peer", None, None, "client_hello"),
        ),
        sc(
            "peer_closed_mid_handshake",
            "server reads the ClientHello and closes",
            "python3 {fixtures}/tls_peer.py server {port} close",
            cli!(""),
            failed("peer_closed_mid_handshake", None, None, "client_hello"),
        ),
        sc(
            "peer_reset_mid_handshake",
            "server reads the ClientHello and resets",
            "python3 {fixtures}/tls_peer.py server {port} reset",
            cli!(""),
            failed("peer_reset_mid_handshake", None, None, "client_hello"),
        ),
        sc(
            "handshake_timeout",
            "server accepts and never answers; curl gives up after 2 s",
            "python3 {fixtures}/tls_peer.py server {port} hold",
            "curl -sS --max-time 2 --resolve localhost:{port}:127.0.0.1 https://localhost:{port}/",
            failed("handshake_timeout", None, None, "client_hello"),
        ),
        sc(
            "downgrade_rejected",
            "client retries with TLS 1.2 and TLS_FALLBACK_SCSV; server supports 1.3",
            srv!("good", ""),
            cli!("-tls1_2 -fallback_scsv"),
            failed("downgrade_rejected", S, Some(86), "client_hello"),
        ),
        sc(
            "client_cert_rejected_tls12",
            "client certificate from the trusted CA, but expired: the server rejects it",
            srv!(
                "good",
                "-tls1_2 -Verify 1 -verify_return_error -CAfile {pki}/root.pem"
            ),
            cli!(
                "-tls1_2 -cert {pki}/clientexpired.pem -key {pki}/clientexpired.key -cert_chain {pki}/int.pem"
            ),
            failed("client_cert_rejected", S, Some(45), "client_finished"),
        ),
        sc(
            "internal_error",
            "python ssl server whose SNI hook fails with internal_error",
            "python3 {fixtures}/tls_peer.py server {port} tls --cert {pki}/good.chain.pem --key {pki}/good.key --require-sni localhost --sni-alert internal_error",
            "openssl s_client -connect 127.0.0.1:{port} -servername other.example",
            failed("internal_error", S, Some(80), "client_hello"),
        ),
        sc(
            "tls13_encrypted_alert_rustls_client",
            "rustls client (it encrypts its alerts from the ServerHello on) rejects a certificate for www.example.com",
            srv!("wronghost", ""),
            "{self} rustls-client {port} {pki}/root.pem localhost",
            inferred("tls13_encrypted_alert", C, "encrypted_extensions"),
        ),
        sc(
            "tls13_encrypted_alert_java_client",
            "a Java client (default trust store, IPv6 socket to 127.0.0.1) rejects the test CA's chain; Java pads its encrypted alert to 35 bytes",
            srv!("good", ""),
            "java {fixtures}/TlsClient.java 127.0.0.1 {port}",
            inferred("tls13_encrypted_alert", C, "encrypted_extensions"),
        ),
        sc(
            "protocol_version_nginx",
            "nginx restricted to TLS 1.3, curl limited to TLS 1.2",
            "{fixtures}/nginx_tls.sh {pki} {port} TLSv1.3",
            "{curl} --tlsv1.2 --tls-max 1.2 https://localhost:{port}/",
            failed("protocol_version_mismatch", S, Some(70), "client_hello"),
        ),
        sc(
            "decode_error",
            "a ClientHello with lying extension lengths",
            srv!("good", ""),
            "python3 {fixtures}/tls_peer.py client {port} garbage-hello",
            failed("decode_error", S, Some(50), "client_hello"),
        ),
        sc(
            "not_tls_http",
            "plain HTTP on an ordinary port",
            "python3 -m http.server {port} --bind 127.0.0.1",
            "curl -sS --max-time 5 http://127.0.0.1:{port}/",
            outcome("not_tls"),
        ),
        // TLS 1.3, a client that speaks first: curl sends its Finished and its request at
        // once; the server answers with one encrypted alert and a close, never a response.
        sc(
            "client_cert_required_tls13_curl",
            "server requires a client certificate, curl has none and sends its request at once (TLS 1.3)",
            srv!("good", "-www -Verify 1 -CAfile {pki}/root.pem"),
            "{curl} https://localhost:{port}/",
            Expect {
                code: Some(116),
                ..inferred("client_cert_required", S, "client_finished")
            },
        ),
        sc(
            "client_cert_untrusted_tls13_curl",
            "curl's client certificate is from a CA the server does not trust (TLS 1.3, request sent at once)",
            srv!(
                "good",
                "-www -Verify 1 -verify_return_error -CAfile {pki}/root.pem"
            ),
            "{curl} --cert {pki}/otherclient.chain.pem --key {pki}/otherclient.key https://localhost:{port}/",
            inferred("client_cert_rejected", S, "client_finished"),
        ),
        sc(
            "client_cert_accepted_tls13_curl",
            "the control: the same server accepts curl's good client certificate",
            srv!(
                "good",
                "-www -Verify 1 -verify_return_error -CAfile {pki}/root.pem"
            ),
            "{curl} --cert {pki}/client.chain.pem --key {pki}/client.key https://localhost:{port}/",
            outcome("completed"),
        ),
        // HelloRetryRequest: the server wants P-256, the client's first key share is X25519.
        sc(
            "hrr_completed_tls13_curl",
            "a HelloRetryRequest (server: P-256 only; curl's first key share X25519), then a page",
            srv!("good", "-www -groups P-256"),
            "{curl} --curves X25519:P-256 https://localhost:{port}/",
            outcome("completed"),
        ),
        // Causes the wire shows (TLS 1.2, the chain and the key exchange visible).
        sc(
            "weak_dh_tls12_curl",
            "the server offers 1024-bit DHE parameters only; curl refuses them after the ServerKeyExchange",
            srv!(
                "good",
                "-tls1_2 -dhparam {pki}/dh1024.pem -cipher DHE-RSA-AES128-GCM-SHA256:@SECLEVEL=0 -www"
            ),
            "{curl} https://localhost:{port}/",
            failed("weak_dh", C, Some(40), "server_hello_done"),
        ),
        sc(
            "legacy_version_refused_curl",
            "a TLS 1.0-only server picks TLS 1.0 for curl's TLS 1.2 hello; curl aborts",
            srv!("good", "-tls1 -cipher ALL:@SECLEVEL=0 -www"),
            "{curl} --tls-max 1.2 https://localhost:{port}/",
            failed("legacy_version_refused", C, Some(80), "server_hello_done"),
        ),
        sc(
            "ca_cert_as_leaf_curl",
            "the server sends its CA's certificate (the intermediate) as its own",
            "openssl s_server -quiet -accept 127.0.0.1:{port} -cert {pki}/int.pem -key {pki}/int.key -tls1_2 -www",
            "{curl} https://localhost:{port}/",
            failed("ca_cert_as_leaf", C, Some(43), "server_hello_done"),
        ),
        sc(
            "hrr_cert_expired_tls13",
            "a HelloRetryRequest, then the client refuses the expired leaf",
            srv!("expired", "-groups P-256"),
            cli!("-groups X25519:P-256"),
            failed("cert_expired", C, Some(45), "encrypted_extensions"),
        ),
        // A probe against a server that sends no session ticket: the client's close_notify
        // and the server's are the only records after the client's Finished.
        sc(
            "probe_no_tickets_tls13",
            "s_client connects and closes (stdin ends) against a server sending no tickets",
            srv!("good", "-num_tickets 0"),
            cli!(""),
            outcome("closed_after_handshake"),
        ),
        sc(
            "probe_with_an_expired_extra_certificate_tls12",
            "s_client connects and closes; the server's chain also holds an expired certificate the path does not use",
            srv!("good", "-tls1_2 -cert_chain {pki}/expired.chain.pem"),
            cli!("-tls1_2"),
            outcome("closed_after_handshake"),
        ),
        // Go's crypto/tls as net/http serves it (dual-stack listener).
        sc(
            "completed_tls13_go_server",
            "the control: curl fetches a page from a Go HTTPS server",
            "{go} {port} {pki}/good.chain.pem {pki}/good.key",
            "{curl} https://localhost:{port}/",
            outcome("completed"),
        ),
        sc(
            "cert_expired_tls13_go_server",
            "a Go HTTPS server with an expired certificate; curl refuses it",
            "{go} {port} {pki}/expired.chain.pem {pki}/expired.key",
            "{curl} https://localhost:{port}/",
            failed("cert_expired", C, Some(45), "encrypted_extensions"),
        ),
        sc(
            "cert_expired_tls12_go_server",
            "the same over TLS 1.2 (the chain visible)",
            "{go} {port} {pki}/expired.chain.pem {pki}/expired.key",
            "{curl} --tls-max 1.2 https://localhost:{port}/",
            failed("cert_expired", C, Some(45), "server_hello_done"),
        ),
        sc(
            "protocol_version_go_server",
            "a Go server that refuses versions below TLS 1.3, curl limited to TLS 1.2",
            "{go} {port} {pki}/good.chain.pem {pki}/good.key tls13",
            "{curl} --tls-max 1.2 https://localhost:{port}/",
            failed("protocol_version_mismatch", S, Some(70), "client_hello"),
        ),
        sc(
            "client_cert_required_tls13_go_server",
            "a Go server requires a client certificate; curl has none and sends its request at once",
            "{go} {port} {pki}/good.chain.pem {pki}/good.key mtls {pki}/root.pem",
            "{curl} https://localhost:{port}/",
            Expect {
                code: Some(116),
                ..inferred("client_cert_required", S, "client_finished")
            },
        ),
        sc(
            "client_cert_untrusted_tls13_go_server",
            "a Go server refuses curl's client certificate from another CA",
            "{go} {port} {pki}/good.chain.pem {pki}/good.key mtls {pki}/root.pem",
            "{curl} --cert {pki}/otherclient.chain.pem --key {pki}/otherclient.key https://localhost:{port}/",
            inferred("client_cert_rejected", S, "client_finished"),
        ),
        sc(
            "client_cert_accepted_tls13_go_server",
            "the control: the Go server accepts curl's good client certificate",
            "{go} {port} {pki}/good.chain.pem {pki}/good.key mtls {pki}/root.pem",
            "{curl} --cert {pki}/client.chain.pem --key {pki}/client.key https://localhost:{port}/",
            outcome("completed"),
        ),
    ]
}

fn expand(template: &str, pki: &Path, port: u16, fixtures: &Path, go: &Path) -> Vec<String> {
    let future = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs() + 20 * 365 * 86_400)
        .unwrap_or(0);
    let me = std::env::current_exe()
        .map_or_else(|_| "make_fixtures".into(), |p| p.display().to_string());
    template
        .replace("{curl}", CURL)
        .replace("{self}", &me)
        .replace("{pki}", &pki.display().to_string())
        .replace("{port}", &port.to_string())
        .replace("{fixtures}", &fixtures.display().to_string())
        .replace("{go}", &go.display().to_string())
        .replace("{future}", &future.to_string())
        .split_whitespace()
        .map(str::to_string)
        .collect()
}

fn command(argv: &[String]) -> Command {
    let mut c = Command::new(&argv[0]);
    c.args(&argv[1..]);
    c
}

/// Runs the client with its stdin open for a while (s_client closes the connection as soon
/// as its stdin ends, which would race the server's verdict), bounded in time.
fn run_client(argv: &[String]) -> bool {
    let Ok(mut child) = command(argv)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
    else {
        return false;
    };
    let stdin = child.stdin.take();
    let early = wait_exit(&mut child, Duration::from_millis(1500));
    drop(stdin);
    let status = early.or_else(|| wait_exit(&mut child, Duration::from_secs(15)));
    if status.is_none() {
        let _ = child.kill();
        let _ = child.wait();
    }
    status.is_some_and(|s| s.success())
}

/// `make_fixtures rustls-client PORT CAFILE NAME`: one TLS 1.3 handshake by rustls, whose
/// client switches to the handshake keys at the ServerHello and so encrypts its alerts
/// (OpenSSL's client still sends them in the clear), then one request.
fn rustls_client(port: &str, ca: &str, name: &str) -> anyhow::Result<()> {
    use rustls::pki_types::{CertificateDer, ServerName, pem::PemObject};
    use std::io::{Read, Write};
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca)? {
        roots.add(cert?)?;
    }
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let mut conn =
        rustls::ClientConnection::new(config.into(), ServerName::try_from(name.to_string())?)?;
    let mut sock = std::net::TcpStream::connect(("127.0.0.1", port.parse::<u16>()?))?;
    sock.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut tls = rustls::Stream::new(&mut conn, &mut sock);
    tls.write_all(b"GET / HTTP/1.0\r\n\r\n")?;
    let mut answer = Vec::new();
    tls.read_to_end(&mut answer)?;
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    if let [mode, port, ca, name] = argv.as_slice()
        && mode == "rustls-client"
    {
        return rustls_client(port, ca, name);
    }
    let mut args = argv.into_iter();
    let out = PathBuf::from(
        args.next()
            .unwrap_or_else(|| "monitor/tests/fixtures/handshakes".into()),
    );
    let only: Vec<String> = args.collect();
    let fixtures = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures");
    std::fs::create_dir_all(&out)?;
    let pki = TempDir::new("fixture-pki");
    let ok = Command::new("bash")
        .arg(fixtures.join("make_pki.sh"))
        .arg(pki.path())
        .status()?
        .success();
    anyhow::ensure!(ok, "make_pki.sh failed");
    let chosen: Vec<Scenario> = scenarios()
        .into_iter()
        .filter(|s| only.is_empty() || only.iter().any(|o| s.name.contains(o.as_str())))
        .collect();
    // The Go server, built once (into the PKI's scratch directory) when a scenario runs it.
    let go = if chosen.iter().any(|s| s.server.contains("{go}")) {
        go_tls_server(&pki)
    } else {
        PathBuf::from("go_tls_server")
    };
    // Each scenario on a port of its own for the whole run: the kernel may hand a released
    // port out again, and a live daemon tells scenarios apart by port.
    let mut used = std::collections::HashSet::new();
    for sc in &chosen {
        let mut port = free_port();
        for _ in 0..100 {
            if used.insert(port) {
                break;
            }
            port = free_port();
        }
        let server = expand(sc.server, pki.path(), port, &fixtures, &go);
        let client = expand(sc.client, pki.path(), port, &fixtures, &go);
        let pcap = out.join(format!("{}.pcap", sc.name));
        let srv = spawn(&mut command(&server));
        // The readiness probe is a connection too: it must end before tcpdump starts.
        wait_listening(
            format!("127.0.0.1:{port}").parse()?,
            Duration::from_secs(10),
        );
        std::thread::sleep(Duration::from_millis(300));
        let dump = tcpdump(&pcap, port);
        let client_ok = run_client(&client);
        std::thread::sleep(Duration::from_millis(500));
        drop(srv);
        std::thread::sleep(Duration::from_millis(200));
        stop_tcpdump(dump);
        let e = &sc.expect;
        // What ran, without this machine's paths.
        let shown = |argv: &[String]| {
            argv.join(" ")
                .replace(&go.display().to_string(), "go_tls_server")
                .replace(&pki.path().display().to_string(), "$PKI")
                .replace(&fixtures.display().to_string(), "$FIXTURES")
        };
        let doc = json!({
            "name": sc.name,
            "what": sc.what,
            "server": shown(&server),
            "client": shown(&client),
            "client_exit_ok": client_ok,
            "port": port,
            "tls_port": sc.tls_port,
            "expect": {
                "outcome": e.outcome, "cause": e.cause, "alert_sender": e.sender,
                "alert_code": e.code, "stage": e.stage, "inferred": e.inferred,
            },
        });
        std::fs::write(
            out.join(format!("{}.json", sc.name)),
            serde_json::to_string_pretty(&doc)? + "\n",
        )?;
        let size = std::fs::metadata(&pcap).map(|m| m.len()).unwrap_or(0);
        eprintln!(
            "make-fixtures: {:<45} {size:>6} bytes  client ok: {client_ok}",
            sc.name
        );
    }
    Ok(())
}
