//! The deciding half of the diagnosis (`handshake::diagnose::decide`), rule by rule, on
//! real handshakes recorded from real programs (`tests/fixtures/handshakes`, re-recorded by
//! `cargo xtask fixtures`). Each test replays one capture into a `Connection`, asks for its
//! decision directly (no sentence involved) and checks the rule that fired with the facts
//! it used, so a broken rule fails the test named after it. `fixtures.rs` checks the same
//! captures end to end. (An integration test: the core itself does not depend on the pcap
//! reader that loads them.)

use std::path::Path;

use tlsmon::analyze::{Pass, analyze_file, conversations::replay};
use tlsmon::handshake::diagnose::rule::{OfferedVersions, Refusal, Rule, ServerReaction, Subject};
use tlsmon::handshake::diagnose::{Decision, Finding};
use tlsmon::handshake::{CloseKind, Connection, DEFAULT_TLS_PORTS, Party, Stage};

/// The fixture's connection, replayed, and the capture time its verdict was taken at.
fn replayed(name: &str) -> (Connection, u64) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/handshakes");
    let spec: serde_json::Value = serde_json::from_slice(
        &std::fs::read(dir.join(format!("{name}.json"))).expect("fixture spec"),
    )
    .expect("fixture json");
    let port = spec["port"].as_u64().expect("port") as u16;
    let mut ports = DEFAULT_TLS_PORTS.to_vec();
    if spec["tls_port"].as_bool() == Some(true) {
        ports.push(port);
    }
    let pass = Pass {
        tls_ports: &ports,
        record: true,
        progress: false,
        workers: 1,
    };
    let mut reports = Vec::new();
    analyze_file(
        &dir.join(format!("{name}.pcap")),
        &pass,
        |r| r,
        |r| reports.push(r),
    )
    .expect("fixture pcap");
    let r = reports
        .into_iter()
        .find(|r| r.server.port() == port)
        .expect("the fixture's connection");
    let events = r.events.as_deref().expect("recorded events");
    (replay(r.meta, r.first_ns, events), r.end_ns)
}

/// What `decide` says of a fixture, as the daemon asks: while open, then at its end.
fn decision(name: &str) -> Decision {
    let (conn, end) = replayed(name);
    match conn.decision(None) {
        Decision::Undecided => conn.decision(Some(end)),
        d => d,
    }
}

fn finding(name: &str) -> Finding {
    match decision(name) {
        Decision::Failed(f) => f,
        other => panic!("{name}: expected a failure, got {other:?}"),
    }
}

fn readable_alert(f: &Finding) -> (Party, Option<u8>) {
    let a = f.alert.as_ref().expect("an alert");
    assert!(!a.encrypted);
    (a.sender, a.code)
}

// ---- plaintext where TLS was due ----------------------------------------------------------

#[test]
fn rule_plaintext_first_bytes_on_a_tls_port() {
    let f = finding("plaintext_to_tls_port");
    let Rule::PlaintextToTlsPort { sample, reaction } = &f.rule else {
        panic!("{:?}", f.rule)
    };
    assert!(sample.starts_with("GET / HTTP/1."), "{sample:?}");
    assert!(!matches!(reaction, ServerReaction::Waiting), "{reaction:?}");
    assert_eq!(f.sample.as_deref(), Some(sample.as_str()));
}

#[test]
fn rule_plaintext_answer_to_a_client_hello() {
    let f = finding("tls_to_plaintext_port");
    let Rule::TlsToPlaintextPort { sni, sample } = &f.rule else {
        panic!("{:?}", f.rule)
    };
    assert_eq!(sni.as_deref(), Some("localhost"));
    assert!(sample.starts_with("<!DOCTYPE HTML>"), "{sample:?}");
}

#[test]
fn rule_no_tls_on_either_side_is_not_tls() {
    assert_eq!(decision("not_tls_http"), Decision::NotTls);
}

// ---- readable alerts ----------------------------------------------------------------------

#[test]
fn rule_protocol_version_alert_names_the_clients_range() {
    for name in [
        "protocol_version_nginx",
        "protocol_version_tls13_server_tls12_client",
    ] {
        let f = finding(name);
        assert_eq!(readable_alert(&f), (Party::Server, Some(70)), "{name}");
        let Rule::VersionMismatch {
            offered: OfferedVersions::Hello { range, max, .. },
            alert_code: 70,
        } = &f.rule
        else {
            panic!("{name}: {:?}", f.rule)
        };
        assert_eq!((range.as_str(), *max), ("TLSv1.2", 0x0303), "{name}");
    }
}

#[test]
fn rule_early_refusal_of_a_client_below_tls12_is_a_version_mismatch() {
    // OpenSSL answers a TLS 1.0-only client with internal_error: the offer is the cause.
    let f = finding("protocol_version_tls10_client");
    let Rule::VersionMismatch {
        offered: OfferedVersions::Hello { max, .. },
        alert_code: 80,
    } = f.rule
    else {
        panic!("{:?}", f.rule)
    };
    assert_eq!(max, 0x0301);
}

#[test]
fn rule_inappropriate_fallback_is_a_rejected_downgrade() {
    let f = finding("downgrade_rejected");
    assert_eq!(
        f.rule,
        Rule::DowngradeRejected {
            offered_range: Some("TLSv1.2".into())
        }
    );
}

#[test]
fn rule_early_handshake_failure_with_one_cipher_offered_is_no_shared_cipher() {
    let f = finding("no_shared_cipher_tls12");
    let Rule::NoSharedCipher {
        ciphers,
        alert_code: 40,
        ..
    } = &f.rule
    else {
        panic!("{:?}", f.rule)
    };
    assert_eq!(ciphers, &["TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256"]);
}

#[test]
fn rule_early_handshake_failure_with_few_groups_is_no_shared_group() {
    let f = finding("no_shared_group_tls13");
    assert_eq!(
        f.rule,
        Rule::NoSharedGroup {
            groups: vec!["secp521r1".into()],
            alert_code: 40
        }
    );
}

#[test]
fn rule_early_handshake_failure_with_few_sigalgs_is_no_shared_sigalg() {
    let f = finding("no_shared_sigalg_tls12");
    let Rule::NoSharedSigalg { sigalgs, .. } = &f.rule else {
        panic!("{:?}", f.rule)
    };
    assert_eq!(
        sigalgs,
        &["ecdsa_secp256r1_sha256", "ecdsa_secp384r1_sha384"]
    );
}

#[test]
fn rule_unrecognized_name_with_and_without_sni() {
    assert_eq!(
        finding("sni_unrecognized").rule,
        Rule::SniUnrecognized {
            sni: "other.example".into()
        }
    );
    assert_eq!(finding("sni_missing").rule, Rule::SniMissing);
}

#[test]
fn rule_no_application_protocol_lists_the_clients_alpn() {
    let f = finding("alpn_mismatch");
    assert_eq!(
        f.rule,
        Rule::AlpnMismatch {
            offered: vec!["foo".into()],
            refused_by: Party::Server
        }
    );
}

#[test]
fn rule_empty_client_certificate_refused() {
    let f = finding("client_cert_required_tls12");
    assert_eq!(f.rule, Rule::EmptyClientCertificate { alert_code: 40 });
}

#[test]
fn rule_unknown_ca_after_the_client_certificate_names_its_issuer() {
    let f = finding("client_cert_untrusted_tls12");
    assert_eq!(
        f.rule,
        Rule::ClientCertUntrusted {
            issuer: "CN=tlsmon test other CA".into(),
            leaf: "CN=tlsmon other client".into(),
            alert_code: 48
        }
    );
}

#[test]
fn rule_certificate_expired_about_an_expired_client_certificate() {
    let f = finding("client_cert_rejected_tls12");
    let Rule::ClientCertExpired { cert, now, .. } = &f.rule else {
        panic!("{:?}", f.rule)
    };
    assert!(cert.name.contains("expired client"), "{}", cert.name);
    assert!(*now > cert.not_after);
}

#[test]
fn rule_certificate_revoked_names_the_leaf() {
    let f = finding("cert_revoked_tls12");
    assert_eq!(
        f.rule,
        Rule::CertRevoked {
            subject: Subject::Certificate("CN=localhost".into())
        }
    );
}

#[test]
fn rule_certificate_expired_with_a_visibly_expired_leaf() {
    let f = finding("cert_expired_tls12");
    let Rule::Expired { cert, now } = &f.rule else {
        panic!("{:?}", f.rule)
    };
    assert_eq!(cert.name, "CN=localhost");
    assert_eq!(cert.not_after, 1_609_459_200, "2021-01-01");
    assert!(*now > cert.not_after);
}

#[test]
fn rule_certificate_expired_without_a_visible_chain() {
    let f = finding("cert_expired_tls13");
    assert_eq!(
        f.rule,
        Rule::ExpiredUnseen {
            sni: Some("localhost".into())
        }
    );
}

#[test]
fn rule_certificate_expired_about_a_valid_chain_is_clock_skew() {
    let f = finding("clock_skew_tls12");
    let Rule::ClockSkew { leaf: Some(leaf) } = &f.rule else {
        panic!("{:?}", f.rule)
    };
    assert!(leaf.not_before < leaf.not_after);
}

#[test]
fn rule_bad_certificate_about_a_future_leaf_is_not_yet_valid() {
    let f = finding("cert_not_yet_valid_tls12");
    let Rule::Refused { inner, how } = &f.rule else {
        panic!("{:?}", f.rule)
    };
    assert_eq!(*how, Refusal::Alert(42));
    let Rule::NotYetValid { cert, now } = inner.as_ref() else {
        panic!("{inner:?}")
    };
    assert!(cert.not_before > *now);
}

#[test]
fn rule_certificate_refusal_with_a_weak_signature_in_the_chain() {
    for (name, algorithm) in [
        ("weak_signature_md5_tls12", "md5WithRSAEncryption"),
        ("weak_signature_sha1_tls12", "sha1WithRSAEncryption"),
    ] {
        let f = finding(name);
        assert_eq!(
            f.rule,
            Rule::WeakSignature {
                algorithm: algorithm.into(),
                cert: "CN=localhost".into(),
                how: Refusal::Alert(42)
            },
            "{name}"
        );
    }
}

#[test]
fn rule_certificate_refusal_with_a_small_key() {
    let f = finding("weak_key_tls12");
    assert_eq!(
        f.rule,
        Rule::WeakKey {
            cert: "CN=localhost".into(),
            key_type: "RSA".into(),
            key_bits: 1024,
            how: Refusal::Alert(42)
        }
    );
}

#[test]
fn rule_certificate_refusal_of_a_self_signed_leaf() {
    let f = finding("self_signed_tls12");
    assert_eq!(
        f.rule,
        Rule::SelfSigned {
            leaf: "CN=localhost".into(),
            how: Refusal::Alert(48)
        }
    );
}

#[test]
fn rule_certificate_refusal_of_a_leaf_for_another_host() {
    let f = finding("hostname_mismatch_tls12_openssl");
    assert_eq!(
        f.rule,
        Rule::HostnameMismatch {
            host: "localhost".into(),
            names: "www.example.com".into(),
            how: Refusal::Alert(42)
        }
    );
}

#[test]
fn rule_certificate_refusal_of_a_lone_leaf_from_an_intermediate() {
    let f = finding("incomplete_chain_tls12");
    assert_eq!(
        f.rule,
        Rule::IncompleteChain {
            leaf: "CN=localhost".into(),
            issuer: "CN=tlsmon test int CA".into(),
            how: Refusal::Alert(48)
        }
    );
}

#[test]
fn rule_unknown_ca_with_a_chain_that_shows_nothing_else() {
    let f = finding("untrusted_issuer_tls12");
    assert_eq!(
        f.rule,
        Rule::UntrustedIssuer {
            issuer: "CN=tlsmon test other CA".into(),
            leaf: "CN=localhost".into(),
            how: Refusal::Alert(48)
        }
    );
}

#[test]
fn rule_certificate_refusal_without_a_visible_chain() {
    let f = finding("server_cert_rejected_tls13_openssl");
    assert_eq!(
        f.rule,
        Rule::ServerCertUnseen {
            sni: Some("localhost".into()),
            how: Refusal::Alert(42),
            tls13: true
        }
    );
}

#[test]
fn rule_other_alerts_keep_code_sender_and_stage() {
    for (name, code) in [("decode_error", 50), ("internal_error", 80)] {
        let f = finding(name);
        assert_eq!(
            f.rule,
            Rule::Alert {
                from: Party::Server,
                code,
                stage: Stage::ClientHello
            },
            "{name}"
        );
    }
}

// ---- TLS 1.3 inference ----------------------------------------------------------------------

#[test]
fn rule_tls13_alert_sized_client_record_instead_of_finished() {
    let f = finding("tls13_encrypted_alert_rustls_client");
    assert!(f.inferred);
    assert_eq!(
        f.rule,
        Rule::Tls13ClientAlertBeforeFinished {
            sni: Some("localhost".into()),
            record_len: 19
        }
    );
}

#[test]
fn rule_tls13_short_client_record_and_no_finished_is_a_padded_alert() {
    // Java pads its encrypted alert to 35 bytes: shorter than any Finished (53), and no
    // Finished follows.
    let f = finding("tls13_encrypted_alert_java_client");
    assert!(f.inferred);
    assert_eq!(
        f.rule,
        Rule::Tls13ClientAlertBeforeFinished {
            sni: None,
            record_len: 35
        }
    );
}

#[test]
fn rule_tls13_one_alert_sized_server_record_after_the_clients_finished() {
    let without = finding("client_cert_required_tls13");
    let Rule::Tls13ServerAlertAfterFinished {
        with_certificate: false,
        client_flight_bytes,
    } = without.rule
    else {
        panic!("{:?}", without.rule)
    };
    assert!(client_flight_bytes < 200);
    let with = finding("client_cert_untrusted_tls13");
    let Rule::Tls13ServerAlertAfterFinished {
        with_certificate: true,
        client_flight_bytes,
    } = with.rule
    else {
        panic!("{:?}", with.rule)
    };
    assert!(client_flight_bytes > 200);
    assert!(without.inferred && with.inferred);
    assert_eq!(without.stage, Some(Stage::ClientFinished));
}

#[test]
fn rule_a_server_close_notify_after_a_flight_without_certificate_is_no_refusal() {
    // s_client against a server sending no tickets: the client's flight is its Finished
    // alone (nobody asked for a certificate), then one alert-sized record each way. The
    // same sizes as a refusal; without a Certificate record it is a close.
    let d = decision("probe_no_tickets_tls13");
    assert!(matches!(d, Decision::ClosedWithoutData { .. }), "{d:?}");
}

// ---- after the handshake ------------------------------------------------------------------

#[test]
fn rule_close_after_a_tls12_handshake_whose_leaf_names_another_host() {
    let f = finding("hostname_mismatch_tls12_curl");
    assert!(f.inferred);
    assert_eq!(
        f.rule,
        Rule::HostnameMismatchAfterHandshake {
            host: "localhost".into(),
            names: "www.example.com".into()
        }
    );
}

#[test]
fn rule_close_after_a_tls13_handshake_without_data_is_no_failure() {
    // TLS 1.3 hides the certificate: nothing on the wire says why curl closed (its host
    // name check), exactly as a health check closes. An observation, not a failure.
    let Decision::ClosedWithoutData { after_ms } = decision("closed_after_handshake_tls13_curl")
    else {
        panic!("{:?}", decision("closed_after_handshake_tls13_curl"))
    };
    assert!(after_ms < 1_000, "{after_ms}");
}

#[test]
fn rule_finished_both_ways_then_data_is_completed() {
    for name in ["completed_tls12_curl", "completed_tls13_curl"] {
        assert_eq!(decision(name), Decision::Completed, "{name}");
    }
}

// ---- closes and silence ---------------------------------------------------------------------

#[test]
fn rule_silence_for_a_second_where_the_server_owed_an_answer_is_a_timeout() {
    let f = finding("handshake_timeout");
    let Rule::Timeout {
        owed: Party::Server,
        stage: Stage::ClientHello,
        waited_ns,
        closer: Some(Party::Client),
    } = f.rule
    else {
        panic!("{:?}", f.rule)
    };
    assert!(waited_ns >= 1_000_000_000);
}

#[test]
fn rule_server_reset_after_the_client_hello() {
    let f = finding("peer_reset_mid_handshake");
    assert_eq!(
        f.rule,
        Rule::PeerClosed {
            closer: Party::Server,
            how: CloseKind::Reset,
            stage: Stage::ClientHello,
            choice: None
        }
    );
}

#[test]
fn rule_an_alert_answering_an_earlier_close_keeps_the_close_as_cause() {
    // The server closed after the ClientHello; OpenSSL's client then said decode_error.
    let f = finding("peer_closed_mid_handshake");
    assert_eq!(
        f.rule,
        Rule::AlertAfterPeerClose {
            close: Box::new(Rule::PeerClosed {
                closer: Party::Server,
                how: CloseKind::Fin,
                stage: Stage::ClientHello,
                choice: None
            }),
            from: Party::Client,
            code: 50
        }
    );
    assert_eq!(f.cause, tlsmon::handshake::Cause::PeerClosedMidHandshake);
}

// ---- what the wire shows about the server's configuration --------------------------------

#[test]
fn rule_a_client_abort_after_a_1024_bit_dhe_key_exchange_is_weak_dh() {
    let f = finding("weak_dh_tls12_curl");
    assert_eq!(readable_alert(&f), (Party::Client, Some(40)));
    assert_eq!(
        f.rule,
        Rule::WeakDh {
            bits: 1024,
            alert_code: 40
        }
    );
}

#[test]
fn rule_a_client_abort_after_the_server_chose_tls10_is_legacy_version_refused() {
    let f = finding("legacy_version_refused_curl");
    assert_eq!(readable_alert(&f), (Party::Client, Some(80)));
    assert_eq!(
        f.rule,
        Rule::LegacyVersionRefused {
            chosen: "TLSv1.0".into(),
            offered: Some("TLSv1.2".into()),
            alert_code: 80
        }
    );
}

#[test]
fn rule_a_chain_that_starts_with_a_ca_certificate_is_ca_cert_as_leaf() {
    let f = finding("ca_cert_as_leaf_curl");
    let Rule::CaCertAsLeaf {
        first,
        reversed: false,
        how: Refusal::Alert(43),
    } = &f.rule
    else {
        panic!("{:?}", f.rule)
    };
    assert!(first.contains("int CA"), "{first}");
}

#[test]
fn rule_hello_retry_then_an_expired_leaf_is_read_past_the_retry() {
    let f = finding("hrr_cert_expired_tls13");
    assert_eq!(readable_alert(&f), (Party::Client, Some(45)));
    assert_eq!(f.stage, Some(Stage::EncryptedExtensions));
    assert_eq!(decision("hrr_completed_tls13_curl"), Decision::Completed);
}
