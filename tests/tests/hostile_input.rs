//! Captured strings are data, never syntax, end to end: a client that sends a hostile SNI
//! and two processes renamed to hostile names fail a real handshake; the daemon's alert
//! lines keep each key once, the shipped fail2ban filter names only the true peer, and the
//! CLI prints no raw control byte. Privileged: run through `sudo ./x test`.

use std::{collections::BTreeSet, process::Command, time::Duration};

use tlsmon_e2e::*;

/// What any client may put in its SNI: a forged field after a space and after a tab, a
/// newline, quotes, a backslash and an ANSI escape (Python's idna codec takes them all).
const SNI: &str = "evil.example peer_ip=203.0.113.9\tsender=server\n\"x=\\\u{1b}[31mred";
/// What any local process may call itself (15 bytes, `prctl(PR_SET_NAME)`).
const SERVER_COMM: &str = "s\tpid=1 \"\u{1b}[2J";
const CLIENT_COMM: &str = "c=1\nrole=x\u{7}";

/// A TLS 1.3-only server (`server PORT CERT KEY NAME`) or a TLS 1.2-only client
/// (`client PORT SOURCE_IP SNI NAME`), each renamed first.
const PEER: &str = r#"
import ctypes, socket, ssl, sys
mode = sys.argv[1]
ctypes.CDLL(None).prctl(15, sys.argv[-1].encode(), 0, 0, 0)
if mode == "server":
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.load_cert_chain(sys.argv[3], sys.argv[4])
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", int(sys.argv[2])))
    s.listen(16)
    for _ in range(50):
        c, _ = s.accept()
        try:
            ctx.wrap_socket(c, server_side=True).close()
        except (ssl.SSLError, OSError):
            c.close()
else:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    s = socket.create_connection(("127.0.0.1", int(sys.argv[2])), timeout=5, source_address=(sys.argv[3], 0))
    try:
        ctx.wrap_socket(s, server_hostname=sys.argv[4])
    except ssl.SSLError as e:
        print("refused:", e)
        sys.exit(1)
"#;

/// The `key=value` pairs of one logfmt line, values unescaped; `None` when malformed.
fn logfmt(line: &str) -> Option<Vec<(String, String)>> {
    let mut out = Vec::new();
    let mut rest = line;
    while !rest.is_empty() {
        let (key, after) = rest.split_once('=')?;
        if key.is_empty() || !key.bytes().all(|b| b.is_ascii_lowercase() || b == b'_') {
            return None;
        }
        let (val, after) = if let Some(q) = after.strip_prefix('"') {
            let mut val = String::new();
            let mut chars = q.char_indices();
            let end = loop {
                match chars.next()? {
                    (i, '"') => break i + 1,
                    (_, '\\') => match chars.next()?.1 {
                        'n' => val.push('\n'),
                        'r' => val.push('\r'),
                        't' => val.push('\t'),
                        'u' => {
                            let hex: String = chars
                                .by_ref()
                                .skip(1)
                                .map(|(_, c)| c)
                                .take_while(|c| *c != '}')
                                .collect();
                            val.push(char::from_u32(u32::from_str_radix(&hex, 16).ok()?)?);
                        }
                        c => val.push(c),
                    },
                    (_, c) => val.push(c),
                }
            };
            (val, &q[end..])
        } else {
            let end = after.find(' ').unwrap_or(after.len());
            (after[..end].to_owned(), &after[end..])
        };
        out.push((key.to_owned(), val));
        rest = match after.strip_prefix(' ') {
            Some(r) => r,
            None if after.is_empty() => after,
            None => return None,
        };
    }
    Some(out)
}

fn raw_control(text: &str) -> Option<char> {
    text.chars()
        .find(|c| (c.is_control() && *c != '\n') || ('\u{202a}'..='\u{202e}').contains(c))
}

#[test]
#[ignore = "privileged: run `sudo ./x test`"]
fn hostile_sni_and_process_names_stay_data_in_log_lines_fail2ban_and_the_terminal() {
    let pki = self_signed_cert();
    let port = free_port();
    let d = Daemon::start("");
    let _server = spawn(
        Command::new("python3")
            .args(["-c", PEER, "server", &port.to_string()])
            .arg(pki.path().join("cert.pem"))
            .arg(pki.path().join("key.pem"))
            .arg(SERVER_COMM),
    );
    wait_listening(
        format!("127.0.0.1:{port}").parse().expect("addr"),
        Duration::from_secs(10),
    );
    let (ok, out) = run_bounded(
        Command::new("python3").args([
            "-c",
            PEER,
            "client",
            &port.to_string(),
            "127.0.0.77",
            SNI,
            CLIENT_COMM,
        ]),
        Duration::from_secs(20),
    );
    assert!(
        !ok && out.contains("refused"),
        "the handshake must fail: {out}"
    );

    // Both ends judged, the captured strings kept exactly (JSON is JSON).
    for (role, comm) in [("server", SERVER_COMM), ("client", CLIENT_COMM)] {
        let a = d
            .wait_failure(&format!("port={port}"), Duration::from_secs(15), |a| {
                a["role"] == role
            })
            .unwrap_or_else(|| panic!("no {role} alert:\n{}", d.log()));
        assert_eq!(a["cause"], "protocol_version_mismatch", "{a:#}");
        assert_eq!(a["sni"], SNI, "{a:#}");
        assert_eq!(a["process"]["comm"], comm, "{a:#}");
    }

    // Every alert line is one line of printable ASCII, each key once, the peer the true one.
    assert!(
        d.wait_log("role=client", Duration::from_secs(10)),
        "{}",
        d.log()
    );
    let log = d.log();
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("tlsmon::alert"))
        .collect();
    assert_eq!(lines.len(), 2, "{log}");
    for line in &lines {
        assert!(
            line.chars().all(|c| (' '..='~').contains(&c)),
            "raw byte in {line:?}"
        );
        let fields = line
            .split_once("alert kind=")
            .and_then(|(_, rest)| logfmt(&format!("kind={rest}")))
            .unwrap_or_else(|| panic!("not logfmt: {line}"));
        let keys: Vec<&str> = fields.iter().map(|(k, _)| k.as_str()).collect();
        let unique: BTreeSet<&str> = keys.iter().copied().collect();
        assert_eq!(keys.len(), unique.len(), "a key twice in {line}");
        let get = |k: &str| {
            fields
                .iter()
                .find(|(key, _)| key == k)
                .map(|(_, v)| v.as_str())
        };
        assert_eq!(get("sni"), Some(SNI), "{line}");
        match get("role") {
            Some("server") => {
                assert_eq!(get("peer_ip"), Some("127.0.0.77"), "{line}");
                assert_eq!(get("process"), Some(SERVER_COMM), "{line}");
            }
            Some("client") => {
                assert_eq!(get("peer_ip"), Some("127.0.0.1"), "{line}");
                assert_eq!(get("process"), Some(CLIENT_COMM), "{line}");
            }
            other => panic!("role {other:?} in {line}"),
        }
    }

    // fail2ban with the shipped filter bans the true peer only.
    let log_file = d.dir.path().join("tlsmon.log");
    std::fs::write(&log_file, &log).expect("write log");
    let ips = fail2ban_ips(&log_file);
    assert_eq!(
        ips,
        BTreeSet::from(["127.0.0.77".to_owned()]),
        "log:\n{log}"
    );

    // The terminal gets no raw control byte, and still sees the names (escaped).
    for args in [&["status"][..], &["failures", "--since", "1h"][..]] {
        let (ok, text) = run_bounded(
            Command::new(tlsmon_bin())
                .args(args)
                .arg("--endpoint")
                .arg(d.endpoint.to_string()),
            Duration::from_secs(10),
        );
        assert!(ok, "{args:?}: {text}");
        assert_eq!(raw_control(&text), None, "{args:?}:\n{text:?}");
        if args[0] == "failures" {
            assert!(text.contains("\\x1b"), "{text}");
        }
    }
}
