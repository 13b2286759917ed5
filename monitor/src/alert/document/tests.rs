use super::test_support::{POLICY, curl, failed_verdict};
use super::*;
use crate::handshake::Cause;

#[test]
fn a_failure_becomes_a_schema_document_naming_process_peer_and_cause() {
    let host = Host {
        id: "m1".into(),
        name: "web-01".into(),
    };
    let ev = from_verdict(&failed_verdict(), Some(&curl()), &host, POLICY).unwrap();
    let j = serde_json::to_value(&ev).unwrap();
    assert_eq!(j["schema"], "tlsmon.event/1");
    assert_eq!(j["kind"], "handshake_failure");
    assert_eq!(j["severity"], "error");
    assert_eq!(j["process"]["comm"], "curl");
    assert_eq!(j["process"]["exe"], "/usr/bin/curl");
    assert_eq!(j["role"], "client");
    assert_eq!(
        j["peer"],
        serde_json::json!({"ip": "127.0.0.2", "port": 8443})
    );
    assert_eq!(j["alert"]["code"], 70);
    assert_eq!(j["alert"]["sender"], "server");
    assert_eq!(j["cause"], Cause::ProtocolVersionMismatch.slug());
    assert_eq!(j["time"], "2025-11-23T12:13:20.123Z");
    assert_eq!(j["count"], 1);
    assert!(j.get("first_ms").is_none());
    let msg = j["message"].as_str().unwrap();
    assert!(
        msg.starts_with("curl (pid 4312) as client 127.0.0.1:40122 → 127.0.0.2:8443: "),
        "{msg}"
    );
    assert_eq!(
        uuid::Uuid::parse_str(&ev.event_id)
            .unwrap()
            .get_version_num(),
        7
    );
}

fn completed(version: u16, name: &'static str, days: Option<i64>) -> Verdict {
    let mut v = failed_verdict();
    v.outcome = HandshakeOutcome::Completed(Box::new(crate::handshake::Completed {
        offered: None,
        selected: crate::handshake::hello::ServerChoice {
            version,
            version_name: name.into(),
            cipher: 0x2f,
            cipher_name: "TLS_RSA_WITH_AES_128_CBC_SHA".into(),
            alpn: None,
            hello_retry: false,
        },
        server_certificates: Vec::new(),
        leaf_expires_in_days: days,
        resumed: false,
        closed_without_data_ms: None,
        timing: crate::handshake::Timing::default(),
    }));
    v
}

#[test]
fn weak_but_working_handshakes_are_warnings() {
    let host = Host::detect(None, Some("h"));
    let legacy = from_verdict(&completed(0x0301, "TLSv1.0", None), None, &host, POLICY)
        .expect("TLS 1.0 warns");
    assert_eq!(
        (legacy.kind, legacy.severity, legacy.cause.as_str()),
        (Kind::WeakHandshake, Severity::Warning, "legacy_tls_version")
    );
    assert!(legacy.message.contains("TLSv1.0"), "{}", legacy.message);
    let expiring = from_verdict(&completed(0x0303, "TLSv1.2", Some(3)), None, &host, POLICY)
        .expect("expiring warns");
    assert_eq!(expiring.cause, "certificate_expiring");
    assert!(
        expiring.message.ends_with("expires in 3 days"),
        "{}",
        expiring.message
    );
    assert!(from_verdict(&completed(0x0303, "TLSv1.2", Some(90)), None, &host, POLICY).is_none());
    let quiet = WeakPolicy {
        warn_legacy_versions: false,
        expiry_warning_days: 0,
    };
    assert!(from_verdict(&completed(0x0301, "TLSv1.0", Some(3)), None, &host, quiet).is_none());
}

#[test]
fn plain_successes_and_plaintext_make_no_event() {
    let mut v = failed_verdict();
    v.outcome = HandshakeOutcome::Undecided;
    assert!(from_verdict(&v, None, &Host::detect(None, None), POLICY).is_none());
}
