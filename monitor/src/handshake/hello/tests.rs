use super::*;

/// A ClientHello body built field by field (RFC 8446 §4.1.2).
pub(crate) fn client_hello_body(sni: Option<&str>, versions: &[u16], ciphers: &[u16]) -> Vec<u8> {
    let mut b = vec![3, 3];
    b.extend([7u8; 32]);
    b.push(0);
    b.extend(((ciphers.len() * 2) as u16).to_be_bytes());
    for c in ciphers {
        b.extend(c.to_be_bytes());
    }
    b.extend([1, 0]);
    let mut exts = Vec::new();
    if let Some(name) = sni {
        let n = name.as_bytes();
        exts.extend(0u16.to_be_bytes());
        exts.extend(((n.len() + 5) as u16).to_be_bytes());
        exts.extend(((n.len() + 3) as u16).to_be_bytes());
        exts.push(0);
        exts.extend((n.len() as u16).to_be_bytes());
        exts.extend(n);
    }
    exts.extend(0x0a0au16.to_be_bytes()); // GREASE extension
    exts.extend(0u16.to_be_bytes());
    exts.extend(43u16.to_be_bytes());
    exts.extend(((versions.len() * 2 + 1) as u16).to_be_bytes());
    exts.push((versions.len() * 2) as u8);
    for v in versions {
        exts.extend(v.to_be_bytes());
    }
    exts.extend(16u16.to_be_bytes());
    exts.extend(5u16.to_be_bytes());
    exts.extend(3u16.to_be_bytes());
    exts.extend(b"\x02h2");
    b.extend((exts.len() as u16).to_be_bytes());
    b.extend(exts);
    b
}

#[test]
fn client_hello_fields_and_fingerprints() {
    let body = client_hello_body(
        Some("api.example.com"),
        &[0x0304, 0x0303],
        &[0x1301, 0xc02f, 0x5600],
    );
    let offer = parse_client_hello(&body).expect("valid hello");
    assert_eq!(offer.server_name.as_deref(), Some("api.example.com"));
    assert_eq!(
        offer.versions.names().collect::<Vec<_>>(),
        ["TLSv1.3", "TLSv1.2"]
    );
    assert_eq!(offer.version_range(), "TLSv1.2-TLSv1.3");
    assert!(offer.fallback_scsv);
    assert_eq!(offer.alpn, ["h2"]);
    assert_eq!(offer.ja3_string(), "771,4865-49199-22016,0-43-16,,");
    assert_eq!(offer.ja3().len(), 32);
    assert!(offer.ja4().starts_with("t13d0303h2_"), "{}", offer.ja4());
}

#[test]
fn every_truncated_hello_is_an_error_not_a_panic() {
    let body = client_hello_body(Some("a"), &[0x0304], &[0x1301]);
    for at in 0..body.len() {
        let _ = parse_client_hello(&body[..at]);
        let _ = parse_server_hello(&body[..at]);
    }
}

/// A ServerHello body: the RFC 8446 form choosing `version` in supported_versions, or
/// (`early_draft`) the form of drafts before 22 with the version in place.
pub(crate) fn server_hello_body(version: u16, cipher: u16, early_draft: bool) -> Vec<u8> {
    let mut b = if early_draft {
        version.to_be_bytes().to_vec()
    } else {
        vec![3, 3]
    };
    b.extend([9u8; 32]);
    if !early_draft {
        b.push(0);
    }
    b.extend(cipher.to_be_bytes());
    let mut exts = Vec::new();
    if !early_draft {
        b.push(0);
        exts.extend(43u16.to_be_bytes());
        exts.extend(2u16.to_be_bytes());
        exts.extend(version.to_be_bytes());
    }
    b.extend((exts.len() as u16).to_be_bytes());
    b.extend(exts);
    b
}

#[test]
fn tls13_drafts_are_named_ordered_and_their_server_hellos_read() {
    let body = client_hello_body(None, &[0x7f17, 0x0303, 0x7f12], &[0x1301]);
    let offer = parse_client_hello(&body).expect("valid hello");
    assert_eq!(offer.max_version(), 0x7f17);
    assert_eq!(offer.min_version(), 0x0303);
    assert_eq!(offer.version_range(), "TLSv1.2-TLSv1.3-draft23");
    let final_too =
        parse_client_hello(&client_hello_body(None, &[0x7f1c, 0x0304], &[1])).expect("valid hello");
    assert_eq!(
        final_too.max_version(),
        0x0304,
        "the final version outranks drafts"
    );
    for (version, early, name) in [
        (0x7f17, false, "TLSv1.3-draft23"),
        (0xfb1a, false, "TLSv1.3-fizz-draft26"),
        (0x7f12, true, "TLSv1.3-draft18"),
        (0x7f15, true, "TLSv1.3-draft21"),
    ] {
        let sh = server_hello_body(version, 0x1302, early);
        let choice = parse_server_hello(&sh).expect(name);
        assert_eq!(
            (choice.version, choice.version_name.as_ref()),
            (version, name)
        );
        assert_eq!(choice.cipher_name, "TLS_AES_256_GCM_SHA384");
        for cut in 0..sh.len() {
            let _ = parse_server_hello(&sh[..cut]);
        }
    }
}
