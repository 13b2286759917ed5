//! Alerts an operator can act on, end to end against real programs: one alert per failing
//! service. Privileged: run through `sudo ./x test`.

use std::{net::SocketAddr, time::Duration};

use serde_json::Value;
use tlsmon_e2e::*;

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
