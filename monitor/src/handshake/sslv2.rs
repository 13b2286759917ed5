//! The SSLv2 record format where it still appears: the SSLv2-compatible ClientHello that old
//! Java and embedded clients send to negotiate SSLv3 or TLS 1.x (RFC 5246 appendix E.2,
//! RFC 6101 appendix E), and the SERVER-HELLO of a server that speaks only SSLv2 (the
//! SSL 2.0 draft, section 2.6). Each is a record with a 2-byte header whose top bit is set:
//! `0x80 | len >> 8`, `len & 0xff`.

use super::hello::{ClientOffer, MalformedHello, Named, Registry};

/// CLIENT-HELLO message type.
pub const CLIENT_HELLO: u8 = 1;
/// SERVER-HELLO message type.
pub const SERVER_HELLO: u8 = 4;
/// SSL 2.0's version number on the wire.
pub const SSL2_VERSION: u16 = 0x0002;

/// Length of the record whose 2-byte header starts `h` (body only), if it is one.
pub fn record_len(h: &[u8]) -> Option<usize> {
    match h {
        [b0, b1, ..] if b0 & 0x80 != 0 => Some(usize::from(b0 & 0x7f) << 8 | usize::from(*b1)),
        _ => None,
    }
}

/// Whether the first bytes (at least 5) of a stream are an SSLv2-format CLIENT-HELLO:
/// version 2.0 or 3.x.
pub fn is_client_hello(first: &[u8]) -> bool {
    let [b0, _, kind, major, minor, ..] = *first else {
        return false;
    };
    b0 & 0x80 != 0 && kind == CLIENT_HELLO && (major == 3 || (major == 0 && minor == 2))
}

/// Whether the first bytes (at least 5) of a stream are an SSLv2 SERVER-HELLO: session id
/// hit 0 or 1, certificate type X.509 (1).
pub fn is_server_hello(first: &[u8]) -> bool {
    let [b0, _, kind, hit, cert_type, ..] = *first else {
        return false;
    };
    b0 & 0x80 != 0 && kind == SERVER_HELLO && hit <= 1 && cert_type == 1
}

/// The offer of an SSLv2-format CLIENT-HELLO (the record body, from its message type on):
/// version, then cipher specs, session id and challenge lengths, then the 3-byte cipher
/// specs. Specs whose first byte is 0 are TLS cipher suites; the others (SSL 2.0 kinds)
/// are left out.
pub fn parse_client_hello(msg: &[u8]) -> Result<ClientOffer, MalformedHello> {
    let malformed = MalformedHello("SSLv2 CLIENT-HELLO");
    let field = |at: usize| -> Result<usize, MalformedHello> {
        let b = msg.get(at..at + 2).ok_or(malformed)?;
        Ok(usize::from(u16::from_be_bytes([b[0], b[1]])))
    };
    if msg.first() != Some(&CLIENT_HELLO) {
        return Err(malformed);
    }
    let version = field(1)? as u16;
    let (specs_len, session_len, challenge_len) = (field(3)?, field(5)?, field(7)?);
    if specs_len % 3 != 0 || msg.len() < 9 + specs_len + session_len + challenge_len {
        return Err(malformed);
    }
    let ciphers: Vec<u16> = msg[9..9 + specs_len]
        .as_chunks::<3>()
        .0
        .iter()
        .filter(|[kind, ..]| *kind == 0)
        .map(|[_, hi, lo]| u16::from_be_bytes([*hi, *lo]))
        .collect();
    let mut offer = ClientOffer::default();
    offer.legacy_version = version;
    offer.versions = Named::new(vec![version], Registry::Version);
    offer.fallback_scsv = ciphers.contains(&0x5600);
    offer.ciphers = Named::new(ciphers, Registry::Cipher);
    Ok(offer)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// An SSLv2-format CLIENT-HELLO record offering `version` and the 3-byte `specs`.
    pub(crate) fn client_hello_record(version: u16, specs: &[u32]) -> Vec<u8> {
        let mut m = vec![CLIENT_HELLO];
        m.extend(version.to_be_bytes());
        m.extend(((specs.len() * 3) as u16).to_be_bytes());
        m.extend(0u16.to_be_bytes());
        m.extend(32u16.to_be_bytes());
        for s in specs {
            m.extend(&s.to_be_bytes()[1..]);
        }
        m.extend([0x5a; 32]);
        let mut r = vec![0x80 | (m.len() >> 8) as u8, m.len() as u8];
        r.extend(m);
        r
    }

    /// An SSLv2 SERVER-HELLO record (no session hit, an X.509 certificate, version 2.0).
    pub(crate) fn server_hello_record() -> Vec<u8> {
        let cert = [0x30u8; 40];
        let mut m = vec![SERVER_HELLO, 0, 1];
        m.extend(SSL2_VERSION.to_be_bytes());
        m.extend((cert.len() as u16).to_be_bytes());
        m.extend(3u16.to_be_bytes());
        m.extend(16u16.to_be_bytes());
        m.extend(cert);
        m.extend([0x01, 0x00, 0x80]); // SSL_CK_RC4_128_WITH_MD5
        m.extend([0x11; 16]);
        let mut r = vec![0x80 | (m.len() >> 8) as u8, m.len() as u8];
        r.extend(m);
        r
    }

    #[test]
    fn a_compatible_hello_gives_its_version_and_suites() {
        let rec = client_hello_record(0x0301, &[0x00_002f, 0x01_0080, 0x00_0035, 0x00_5600]);
        assert!(is_client_hello(&rec) && !is_server_hello(&rec));
        assert_eq!(record_len(&rec), Some(rec.len() - 2));
        let offer = parse_client_hello(&rec[2..]).expect("valid");
        assert_eq!(offer.version_range(), "TLSv1.0");
        assert_eq!(offer.ciphers.ids, [0x002f, 0x0035, 0x5600]);
        assert!(offer.fallback_scsv);
        for cut in 0..rec.len() - 2 {
            assert!(parse_client_hello(&rec[2..2 + cut]).is_err(), "{cut}");
        }
    }

    #[test]
    fn an_ssl2_server_hello_is_told_from_a_client_hello() {
        let rec = server_hello_record();
        assert!(is_server_hello(&rec) && !is_client_hello(&rec));
        assert!(!is_server_hello(&[0x16, 3, 3, 0, 5]));
        for cut in 0..5 {
            assert!(!is_server_hello(&rec[..cut]) && !is_client_hello(&rec[..cut]));
        }
    }
}
