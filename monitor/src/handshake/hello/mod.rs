//! What the client offered (ClientHello) and what the server chose (ServerHello), decoded
//! with tls-parser, plus the JA3 and JA4 fingerprints of the offer.

use md5::{Digest as _, Md5};
use serde::Serialize;
use sha2::Sha256;
use tls_parser::{TlsExtension, TlsMessage, TlsMessageHandshake, parse_tls_message_handshake};

use super::names::{
    Name, cipher_name, group_name, is_grease, sigalg_name, version_name, version_rank,
};

const EXT_SERVER_NAME: u16 = 0;
const EXT_SUPPORTED_GROUPS: u16 = 10;
const EXT_EC_POINT_FORMATS: u16 = 11;
const EXT_ALPN: u16 = 16;
const TLS_FALLBACK_SCSV: u16 = 0x5600;

/// RFC 8446 §4.1.3: a ServerHello with this random is a HelloRetryRequest.
const HELLO_RETRY_RANDOM: [u8; 32] = [
    0xcf, 0x21, 0xad, 0x74, 0xe5, 0x9a, 0x61, 0x11, 0xbe, 0x1d, 0x8c, 0x02, 0x1e, 0x65, 0xb8, 0x91,
    0xc2, 0xa2, 0x11, 0x16, 0x7a, 0xbb, 0x8c, 0x5e, 0x07, 0x9e, 0x09, 0xe2, 0xc8, 0xa8, 0x33, 0x9c,
];

/// The registry that names a list's code points.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Registry {
    #[default]
    Version,
    Cipher,
    Sigalg,
    Group,
}

impl Registry {
    pub fn name(self, id: u16) -> Name {
        match self {
            Registry::Version => version_name(id),
            Registry::Cipher => cipher_name(id),
            Registry::Sigalg => sigalg_name(id),
            Registry::Group => group_name(id),
        }
    }
}

/// A list of code points (GREASE removed). Events show each with its registry name; the
/// names are looked up only then, not for every hello (most end in success).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Named {
    pub ids: Vec<u16>,
    registry: Registry,
}

impl Named {
    pub(super) fn new(ids: Vec<u16>, registry: Registry) -> Self {
        let ids = ids.into_iter().filter(|&v| !is_grease(v)).collect();
        Named { ids, registry }
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// The registry name of each code point, in order.
    pub fn names(&self) -> impl Iterator<Item = Name> + '_ {
        self.ids.iter().map(|&id| self.registry.name(id))
    }
}

impl Serialize for Named {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct as _;
        let mut st = s.serialize_struct("Named", 2)?;
        st.serialize_field("ids", &self.ids)?;
        st.serialize_field("names", &Names(self))?;
        st.end()
    }
}

/// A list's names, serialized as they are looked up (no list of them is built).
struct Names<'a>(&'a Named);

impl Serialize for Names<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.0.names())
    }
}

/// The client's offer. Its JA3 and JA4 fingerprints are computed when asked for (an event
/// or a document shows them), from the wire-order extension list kept here.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientOffer {
    /// ClientHello.legacy_version.
    pub legacy_version: u16,
    /// supported_versions if present, else the legacy version alone (GREASE removed).
    pub versions: Named,
    pub ciphers: Named,
    pub sigalgs: Named,
    pub groups: Named,
    pub server_name: Option<String>,
    pub alpn: Vec<String>,
    /// TLS_FALLBACK_SCSV is in the cipher list (RFC 7507): a retry at a lower version.
    pub fallback_scsv: bool,
    /// Extension types in wire order, GREASE included (JA3 and JA4 read them).
    extension_types: Vec<u16>,
    /// The ec_point_formats extension's list (JA3).
    point_formats: Vec<u8>,
}

impl ClientOffer {
    /// The highest version offered (a TLS 1.3 draft counts as TLS 1.3; the final one wins).
    pub fn max_version(&self) -> u16 {
        self.versions
            .ids
            .iter()
            .copied()
            .max_by_key(|&v| (version_rank(v), v == 0x0304, v))
            .unwrap_or(self.legacy_version)
    }

    /// The lowest version offered.
    pub fn min_version(&self) -> u16 {
        self.versions
            .ids
            .iter()
            .copied()
            .min_by_key(|&v| (version_rank(v), v == 0x0304, v))
            .unwrap_or(self.legacy_version)
    }

    /// "TLSv1.0-TLSv1.2" or "TLSv1.3".
    pub fn version_range(&self) -> String {
        let (lo, hi) = (self.min_version(), self.max_version());
        if lo == hi {
            version_name(hi).into_owned()
        } else {
            format!("{}-{}", version_name(lo), version_name(hi))
        }
    }

    /// JA3's input: "version,ciphers,extensions,groups,point_formats", GREASE removed.
    pub fn ja3_string(&self) -> String {
        ja3_string(
            self.legacy_version,
            &self.ciphers.ids,
            &self.extension_types,
            &self.groups.ids,
            &self.point_formats,
        )
    }

    /// JA3: the MD5 of `ja3_string`, in hex.
    pub fn ja3(&self) -> String {
        hex(&Md5::digest(self.ja3_string().as_bytes()))
    }

    /// JA4 (FoxIO).
    pub fn ja4(&self) -> String {
        ja4(self, &self.ciphers.ids, &self.extension_types)
    }
}

impl Serialize for ClientOffer {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct as _;
        let mut st = s.serialize_struct("ClientOffer", 11)?;
        st.serialize_field("legacy_version", &self.legacy_version)?;
        st.serialize_field("versions", &self.versions)?;
        st.serialize_field("ciphers", &self.ciphers)?;
        st.serialize_field("sigalgs", &self.sigalgs)?;
        st.serialize_field("groups", &self.groups)?;
        st.serialize_field("server_name", &self.server_name)?;
        st.serialize_field("alpn", &self.alpn)?;
        st.serialize_field("fallback_scsv", &self.fallback_scsv)?;
        let ja3_string = self.ja3_string();
        st.serialize_field("ja3", &hex(&Md5::digest(ja3_string.as_bytes())))?;
        st.serialize_field("ja3_string", &ja3_string)?;
        st.serialize_field("ja4", &self.ja4())?;
        st.end()
    }
}

/// The server's choice.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ServerChoice {
    /// The negotiated version (supported_versions in TLS 1.3, else legacy_version).
    pub version: u16,
    pub version_name: Name,
    pub cipher: u16,
    pub cipher_name: Name,
    pub alpn: Option<String>,
    /// This ServerHello is a HelloRetryRequest.
    pub hello_retry: bool,
}

/// Why a hello could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("malformed {0}")]
pub struct MalformedHello(pub &'static str);

/// Decodes a ClientHello message body (without its 4-byte header).
pub fn parse_client_hello(body: &[u8]) -> Result<ClientOffer, MalformedHello> {
    let msg = with_header(1, body);
    let Ok((_, TlsMessage::Handshake(TlsMessageHandshake::ClientHello(ch)))) =
        parse_tls_message_handshake(&msg)
    else {
        return Err(MalformedHello("ClientHello"));
    };
    let cipher_ids: Vec<u16> = ch.ciphers.iter().map(|c| c.0).collect();
    let ext_block = ch.ext.unwrap_or(&[]);
    let mut offer = ClientOffer {
        legacy_version: ch.version.0,
        fallback_scsv: cipher_ids.contains(&TLS_FALLBACK_SCSV),
        ciphers: Named::new(cipher_ids, Registry::Cipher),
        extension_types: extension_types(ext_block),
        ..ClientOffer::default()
    };
    let mut versions = Vec::new();
    let exts = tls_parser::parse_tls_client_hello_extensions(ext_block)
        .map(|(_, e)| e)
        .unwrap_or_default();
    for ext in &exts {
        match ext {
            TlsExtension::SNI(names) => {
                offer.server_name = names
                    .iter()
                    .find(|(t, _)| t.0 == 0)
                    .map(|(_, n)| String::from_utf8_lossy(n).into_owned());
            }
            TlsExtension::SupportedVersions(v) => versions = v.iter().map(|v| v.0).collect(),
            TlsExtension::SignatureAlgorithms(v) => {
                offer.sigalgs = Named::new(v.clone(), Registry::Sigalg)
            }
            TlsExtension::EllipticCurves(g) => {
                offer.groups = Named::new(g.iter().map(|g| g.0).collect(), Registry::Group)
            }
            TlsExtension::EcPointFormats(f) => offer.point_formats = f.to_vec(),
            TlsExtension::ALPN(p) => {
                offer.alpn = p
                    .iter()
                    .map(|p| String::from_utf8_lossy(p).into_owned())
                    .collect()
            }
            _ => {}
        }
    }
    if versions.is_empty() {
        versions.push(ch.version.0);
    }
    offer.versions = Named::new(versions, Registry::Version);
    Ok(offer)
}

/// Decodes a ServerHello message body (without its 4-byte header).
pub fn parse_server_hello(body: &[u8]) -> Result<ServerChoice, MalformedHello> {
    if let [0x7f, n, ..] = body
        && *n < 22
    {
        return parse_early_draft_server_hello(body);
    }
    let msg = with_header(2, body);
    let sh = match parse_tls_message_handshake(&msg) {
        Ok((_, TlsMessage::Handshake(TlsMessageHandshake::ServerHello(sh)))) => sh,
        _ => return Err(MalformedHello("ServerHello")),
    };
    let mut version = sh.version.0;
    let mut alpn = None;
    let exts = tls_parser::parse_tls_server_hello_extensions(sh.ext.unwrap_or(&[]))
        .map(|(_, e)| e)
        .unwrap_or_default();
    for ext in &exts {
        match ext {
            TlsExtension::SupportedVersions(v) if !v.is_empty() => version = v[0].0,
            TlsExtension::ALPN(p) if !p.is_empty() => {
                alpn = Some(String::from_utf8_lossy(p[0]).into_owned())
            }
            _ => {}
        }
    }
    Ok(ServerChoice {
        version,
        version_name: version_name(version),
        cipher: sh.cipher.0,
        cipher_name: cipher_name(sh.cipher.0),
        alpn,
        hello_retry: sh.random == HELLO_RETRY_RANDOM,
    })
}

/// A ServerHello of TLS 1.3 drafts before 22: version (the draft), random, cipher suite,
/// extensions; no session id, no compression (draft-ietf-tls-tls13-21 §4.1.3).
fn parse_early_draft_server_hello(body: &[u8]) -> Result<ServerChoice, MalformedHello> {
    let malformed = MalformedHello("ServerHello");
    let version = u16::from_be_bytes([body[0], body[1]]);
    let cipher = body.get(34..36).ok_or(malformed)?;
    let cipher = u16::from_be_bytes([cipher[0], cipher[1]]);
    Ok(ServerChoice {
        version,
        version_name: version_name(version),
        cipher,
        cipher_name: cipher_name(cipher),
        alpn: None,
        hello_retry: false,
    })
}

fn with_header(msg_type: u8, body: &[u8]) -> Vec<u8> {
    let len = body.len().min(0xff_ffff);
    let mut m = Vec::with_capacity(4 + len);
    m.push(msg_type);
    m.extend_from_slice(&(len as u32).to_be_bytes()[1..]);
    m.extend_from_slice(&body[..len]);
    m
}

/// Extension types in wire order (JA3/JA4 need the raw order, unknown types included).
fn extension_types(mut block: &[u8]) -> Vec<u16> {
    let mut types = Vec::new();
    while block.len() >= 4 {
        let t = u16::from_be_bytes([block[0], block[1]]);
        let len = usize::from(u16::from_be_bytes([block[2], block[3]]));
        types.push(t);
        block = block.get(4 + len..).unwrap_or(&[]);
    }
    types
}

/// Decimal code points joined by `sep` (JA3), formatted by hand: this runs per hello.
fn join_dec(v: impl IntoIterator<Item = u16>, sep: char) -> String {
    let mut out = String::new();
    for (i, x) in v.into_iter().enumerate() {
        if i > 0 {
            out.push(sep);
        }
        let mut digits = [0u8; 5];
        let mut n = x;
        let mut at = digits.len();
        loop {
            at -= 1;
            digits[at] = b'0' + (n % 10) as u8;
            n /= 10;
            if n == 0 {
                break;
            }
        }
        out.extend(digits[at..].iter().map(|&d| d as char));
    }
    out
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// `0a0b,0c0d`: 4-digit hex code points, as JA4 hashes them.
fn join_hex4(v: &[u16]) -> String {
    let mut out = String::with_capacity(v.len() * 5);
    for (i, x) in v.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        for shift in [12, 8, 4, 0] {
            out.push(HEX[usize::from((x >> shift) & 15)] as char);
        }
    }
    out
}

/// JA3: "version,ciphers,extensions,groups,point_formats", GREASE removed.
fn ja3_string(
    version: u16,
    ciphers: &[u16],
    exts: &[u16],
    groups: &[u16],
    formats: &[u8],
) -> String {
    let keep = |v: &[u16]| {
        v.iter()
            .copied()
            .filter(|x| !is_grease(*x))
            .collect::<Vec<_>>()
    };
    [
        join_dec([version], '-'),
        join_dec(keep(ciphers), '-'),
        join_dec(keep(exts), '-'),
        join_dec(keep(groups), '-'),
        join_dec(formats.iter().map(|&f| u16::from(f)), '-'),
    ]
    .join(",")
}

/// JA4 (FoxIO): `t13d1516h2_<sha256 of sorted ciphers>_<sha256 of sorted exts + sigalgs>`.
fn ja4(offer: &ClientOffer, ciphers: &[u16], exts: &[u16]) -> String {
    let version = match offer.max_version() {
        0x0304 => "13",
        0x0303 => "12",
        0x0302 => "11",
        0x0301 => "10",
        0x0300 => "s3",
        0x0002 => "s2",
        _ => "00",
    };
    let sni = if offer.server_name.is_some() {
        'd'
    } else {
        'i'
    };
    let ciphers: Vec<u16> = ciphers.iter().copied().filter(|&c| !is_grease(c)).collect();
    let exts: Vec<u16> = exts.iter().copied().filter(|&e| !is_grease(e)).collect();
    let alpn = match offer.alpn.first().map(|a| a.as_bytes()) {
        Some([first, .., last])
            if first.is_ascii_alphanumeric() && last.is_ascii_alphanumeric() =>
        {
            format!("{}{}", *first as char, *last as char)
        }
        Some([only]) if only.is_ascii_alphanumeric() => format!("{0}{0}", *only as char),
        Some([first, .., last]) => {
            format!(
                "{}{}",
                &format!("{first:02x}")[..1],
                &format!("{last:02x}")[1..]
            )
        }
        _ => "00".into(),
    };
    let mut sorted_ciphers = ciphers.clone();
    sorted_ciphers.sort_unstable();
    let mut sorted_exts: Vec<u16> = exts
        .iter()
        .copied()
        .filter(|&e| e != EXT_SERVER_NAME && e != EXT_ALPN)
        .collect();
    sorted_exts.sort_unstable();
    let b = truncated_sha256(&join_hex4(&sorted_ciphers));
    let mut c_input = join_hex4(&sorted_exts);
    if !offer.sigalgs.is_empty() {
        c_input.push('_');
        c_input.push_str(&join_hex4(&offer.sigalgs.ids));
    }
    let c = if sorted_exts.is_empty() {
        "000000000000".to_string()
    } else {
        truncated_sha256(&c_input)
    };
    format!(
        "t{version}{sni}{:02}{:02}{alpn}_{b}_{c}",
        ciphers.len().min(99),
        exts.len().min(99)
    )
}

fn truncated_sha256(s: &str) -> String {
    if s.is_empty() {
        return "000000000000".into();
    }
    hex(&Sha256::digest(s.as_bytes()))[..12].to_string()
}

fn hex(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(HEX[usize::from(b >> 4)] as char);
        out.push(HEX[usize::from(b & 15)] as char);
    }
    out
}

// Keep the constants honest: JA3's extension list uses these numbers too.
const _: () = assert!(EXT_SUPPORTED_GROUPS == 10 && EXT_EC_POINT_FORMATS == 11);

#[cfg(test)]
pub(crate) mod tests;
