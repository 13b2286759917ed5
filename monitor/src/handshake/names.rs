//! Names from the IANA TLS registries, as operators read them in RFCs and in Wireshark.
//! Numbers stay in every event too; a name is only a reading aid.

use std::borrow::Cow;

/// A registry name, borrowed when known (no allocation on the hot path).
pub type Name = Cow<'static, str>;

/// RFC 8446 §4 handshake message names.
pub fn handshake_name(t: u8) -> &'static str {
    match t {
        0 => "HelloRequest",
        1 => "ClientHello",
        2 => "ServerHello",
        4 => "NewSessionTicket",
        5 => "EndOfEarlyData",
        8 => "EncryptedExtensions",
        11 => "Certificate",
        12 => "ServerKeyExchange",
        13 => "CertificateRequest",
        14 => "ServerHelloDone",
        15 => "CertificateVerify",
        16 => "ClientKeyExchange",
        20 => "Finished",
        21 => "CertificateUrl",
        22 => "CertificateStatus",
        24 => "KeyUpdate",
        254 => "MessageHash",
        _ => "Unknown",
    }
}

/// TLS alert descriptions (IANA TLS Alerts registry).
pub fn alert_name(code: u8) -> &'static str {
    match code {
        0 => "close_notify",
        10 => "unexpected_message",
        20 => "bad_record_mac",
        21 => "decryption_failed",
        22 => "record_overflow",
        30 => "decompression_failure",
        40 => "handshake_failure",
        41 => "no_certificate",
        42 => "bad_certificate",
        43 => "unsupported_certificate",
        44 => "certificate_revoked",
        45 => "certificate_expired",
        46 => "certificate_unknown",
        47 => "illegal_parameter",
        48 => "unknown_ca",
        49 => "access_denied",
        50 => "decode_error",
        51 => "decrypt_error",
        60 => "export_restriction",
        70 => "protocol_version",
        71 => "insufficient_security",
        80 => "internal_error",
        86 => "inappropriate_fallback",
        90 => "user_canceled",
        100 => "no_renegotiation",
        109 => "missing_extension",
        110 => "unsupported_extension",
        111 => "certificate_unobtainable",
        112 => "unrecognized_name",
        113 => "bad_certificate_status_response",
        114 => "bad_certificate_hash_value",
        115 => "unknown_psk_identity",
        116 => "certificate_required",
        120 => "no_application_protocol",
        121 => "ech_required",
        _ => "unknown_alert",
    }
}

/// The draft number of a pre-standard TLS 1.3 version: IETF drafts are `0x7f00 + n`
/// (draft-ietf-tls-tls13-n), Facebook's Fizz sent `0xfb17` and `0xfb1a` (drafts 23 and 26).
pub fn tls13_draft(v: u16) -> Option<u8> {
    match v {
        0x7f00..=0x7fff => Some(v as u8),
        0xfb17 | 0xfb1a => Some(v as u8),
        _ => None,
    }
}

/// TLS 1.3, final or draft.
pub fn is_tls13(v: u16) -> bool {
    v == 0x0304 || tls13_draft(v).is_some()
}

/// The version's place in protocol order: drafts of TLS 1.3 count as TLS 1.3.
pub fn version_rank(v: u16) -> u16 {
    if tls13_draft(v).is_some() { 0x0304 } else { v }
}

/// Protocol versions by wire value (RFC 8446 §4.2.1, RFC 6101 for SSL 3.0).
pub fn version_name(v: u16) -> Name {
    if let Some(n) = tls13_draft(v) {
        let who = if v >> 8 == 0xfb { "fizz-" } else { "" };
        return Cow::Owned(format!("TLSv1.3-{who}draft{n}"));
    }
    match v {
        0x0002 => Cow::Borrowed("SSLv2"),
        0x0300 => Cow::Borrowed("SSLv3"),
        0x0301 => Cow::Borrowed("TLSv1.0"),
        0x0302 => Cow::Borrowed("TLSv1.1"),
        0x0303 => Cow::Borrowed("TLSv1.2"),
        0x0304 => Cow::Borrowed("TLSv1.3"),
        v if is_grease(v) => Cow::Borrowed("GREASE"),
        v => Cow::Owned(format!("0x{v:04x}")),
    }
}

/// Cipher suites by IANA name, from tls-parser's registry copy.
pub fn cipher_name(id: u16) -> Name {
    match tls_parser::TlsCipherSuite::from_id(id) {
        Some(c) => Cow::Borrowed(c.name),
        None if id == 0x00ff => Cow::Borrowed("TLS_EMPTY_RENEGOTIATION_INFO_SCSV"),
        None if id == 0x5600 => Cow::Borrowed("TLS_FALLBACK_SCSV"),
        None if is_grease(id) => Cow::Borrowed("GREASE"),
        None => Cow::Owned(format!("0x{id:04x}")),
    }
}

/// Named groups (RFC 8446 §4.2.7, RFC 7919, draft hybrid groups).
pub fn group_name(id: u16) -> Name {
    match id {
        23 => Cow::Borrowed("secp256r1"),
        24 => Cow::Borrowed("secp384r1"),
        25 => Cow::Borrowed("secp521r1"),
        29 => Cow::Borrowed("x25519"),
        30 => Cow::Borrowed("x448"),
        0x100 => Cow::Borrowed("ffdhe2048"),
        0x101 => Cow::Borrowed("ffdhe3072"),
        0x102 => Cow::Borrowed("ffdhe4096"),
        0x103 => Cow::Borrowed("ffdhe6144"),
        0x104 => Cow::Borrowed("ffdhe8192"),
        0x11ec => Cow::Borrowed("X25519MLKEM768"),
        0x11eb => Cow::Borrowed("SecP256r1MLKEM768"),
        id if is_grease(id) => Cow::Borrowed("GREASE"),
        id => Cow::Owned(format!("0x{id:04x}")),
    }
}

/// Signature schemes (RFC 8446 §4.2.3; TLS 1.2 hash/sign pairs share the code points).
pub fn sigalg_name(id: u16) -> Name {
    match id {
        0x0201 => Cow::Borrowed("rsa_pkcs1_sha1"),
        0x0203 => Cow::Borrowed("ecdsa_sha1"),
        0x0401 => Cow::Borrowed("rsa_pkcs1_sha256"),
        0x0501 => Cow::Borrowed("rsa_pkcs1_sha384"),
        0x0601 => Cow::Borrowed("rsa_pkcs1_sha512"),
        0x0403 => Cow::Borrowed("ecdsa_secp256r1_sha256"),
        0x0503 => Cow::Borrowed("ecdsa_secp384r1_sha384"),
        0x0603 => Cow::Borrowed("ecdsa_secp521r1_sha512"),
        0x0804 => Cow::Borrowed("rsa_pss_rsae_sha256"),
        0x0805 => Cow::Borrowed("rsa_pss_rsae_sha384"),
        0x0806 => Cow::Borrowed("rsa_pss_rsae_sha512"),
        0x0807 => Cow::Borrowed("ed25519"),
        0x0808 => Cow::Borrowed("ed448"),
        0x0809 => Cow::Borrowed("rsa_pss_pss_sha256"),
        0x080a => Cow::Borrowed("rsa_pss_pss_sha384"),
        0x080b => Cow::Borrowed("rsa_pss_pss_sha512"),
        0x0101 => Cow::Borrowed("rsa_pkcs1_md5"),
        0x0202 => Cow::Borrowed("dsa_sha1"),
        0x0402 => Cow::Borrowed("dsa_sha256"),
        id if is_grease(id) => Cow::Borrowed("GREASE"),
        id => Cow::Owned(format!("0x{id:04x}")),
    }
}

/// RFC 8701 GREASE values: 0x?a?a with both bytes equal.
pub fn is_grease(v: u16) -> bool {
    v & 0x0f0f == 0x0a0a && v >> 8 == v & 0xff
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grease_values_are_recognised_and_real_ids_are_not() {
        assert!(is_grease(0x0a0a) && is_grease(0xfafa));
        assert!(!is_grease(0x0a1a) && !is_grease(0x1301));
    }

    #[test]
    fn registry_names_match_the_rfcs() {
        assert_eq!(cipher_name(0x1301), "TLS_AES_128_GCM_SHA256");
        assert_eq!(cipher_name(0xc02f), "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256");
        assert_eq!(version_name(0x0303), "TLSv1.2");
        assert_eq!(alert_name(116), "certificate_required");
        assert_eq!(sigalg_name(0x0804), "rsa_pss_rsae_sha256");
        assert_eq!(group_name(29), "x25519");
    }
}
