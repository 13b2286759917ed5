//! Which protocol carried a connection before it turned to TLS (STARTTLS and its kin): named
//! from the plaintext each end sent first when it was kept (`tlsmon analyze`), else from the
//! server's port (live capture keeps no plaintext). Pure; the names are stable slugs.

/// The plaintext preambles this module names, by slug.
pub const PROTOCOLS: &[&str] = &[
    "smtp",
    "imap",
    "pop3",
    "ftp",
    "xmpp",
    "irc",
    "ldap",
    "postgresql",
    "mysql",
    "rdp",
    "unknown",
];

/// PostgreSQL's SSLRequest: length 8, code 80877103 (protocol docs, "SSL Session Encryption").
const PG_SSL_REQUEST: [u8; 8] = [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f];
/// LDAP StartTLS's extended operation OID (RFC 4511 §4.14.1).
const LDAP_STARTTLS_OID: &[u8] = b"1.3.6.1.4.1.1466.20037";

/// The protocol of a connection upgraded to TLS: from the first plaintext bytes of the
/// client and of the server (either may be empty), else the server port.
pub fn protocol(client: &[u8], server: &[u8], server_port: u16) -> &'static str {
    by_bytes(client, server).unwrap_or_else(|| by_port(server_port))
}

fn by_bytes(client: &[u8], server: &[u8]) -> Option<&'static str> {
    if client.starts_with(&PG_SSL_REQUEST) {
        return Some("postgresql");
    }
    // MySQL/MariaDB: the server's greeting packet (3-byte length, sequence 0, protocol 10).
    if server.len() > 5 && server[3] == 0 && server[4] == 10 {
        return Some("mysql");
    }
    // RDP: TPKT (version 3) around an X.224 connection request.
    if client.starts_with(&[3, 0]) && client.get(5) == Some(&0xe0) {
        return Some("rdp");
    }
    // LDAP: a BER SEQUENCE holding the StartTLS OID.
    if client.first() == Some(&0x30) && contains(client, LDAP_STARTTLS_OID) {
        return Some("ldap");
    }
    let c = String::from_utf8_lossy(client).to_ascii_uppercase();
    let s = String::from_utf8_lossy(server).to_ascii_uppercase();
    let text = [
        ("xmpp", c.contains("<STREAM:") || s.contains("<STREAM:")),
        ("ftp", c.contains("AUTH TLS") || c.contains("AUTH SSL")),
        ("pop3", s.starts_with("+OK") || c.contains("STLS")),
        ("imap", s.starts_with("* OK") || s.starts_with("* PREAUTH")),
        (
            "irc",
            s.starts_with(':') || c.starts_with("CAP ") || c.starts_with("NICK "),
        ),
        (
            "smtp",
            s.starts_with("220") || c.starts_with("EHLO") || c.starts_with("HELO"),
        ),
    ];
    text.into_iter()
        .find(|(_, seen)| *seen)
        .map(|(name, _)| name)
}

/// The protocol of a live connection upgraded to TLS, whose plaintext the kernel does not
/// keep: from the program at this end (a server's or a client's), else the server port.
pub fn live(comm: Option<&str>, server_port: u16) -> &'static str {
    comm.and_then(by_program)
        .unwrap_or_else(|| by_port(server_port))
}

/// The protocol a well-known server or client program speaks, by its `comm`.
pub fn by_program(comm: &str) -> Option<&'static str> {
    Some(match comm {
        "postgres" | "postmaster" | "psql" | "pg_isready" | "pgbouncer" => "postgresql",
        "mariadbd" | "mysqld" | "mariadb" | "mysql" | "mariadb-admin" | "mysqladmin" => "mysql",
        "dovecot" | "imap-login" | "imap" => "imap",
        "pop3-login" | "pop3" => "pop3",
        "slapd" | "ldapsearch" | "ldapwhoami" | "ldapmodify" | "ldapadd" | "sssd_be" => "ldap",
        "exim4" | "exim" | "smtpd" | "smtp" | "sendmail" | "swaks" | "msmtp" => "smtp",
        "vsftpd" | "proftpd" | "pure-ftpd" | "lftp" => "ftp",
        "prosody" | "ejabberd" | "beam.smp" => "xmpp",
        "xrdp" | "xfreerdp" | "wlfreerdp" => "rdp",
        _ => return None,
    })
}

/// The protocol a server port is registered for (IANA), as a last resort.
pub fn by_port(port: u16) -> &'static str {
    match port {
        25 | 587 | 2525 => "smtp",
        143 => "imap",
        110 => "pop3",
        21 => "ftp",
        5222 | 5269 => "xmpp",
        6667 | 6697 => "irc",
        389 => "ldap",
        5432 => "postgresql",
        3306 => "mysql",
        3389 => "rdp",
        _ => "unknown",
    }
}

/// A remedy's `openssl s_client -connect HOST:PORT` made runnable for this connection: the
/// server's address, and `-starttls` for a protocol that upgrades (OpenSSL's names).
pub fn concrete_command(remedy: &str, server: &str, protocol: Option<&str>) -> String {
    let starttls = match protocol {
        Some("postgresql") => " -starttls postgres",
        Some(p @ ("smtp" | "imap" | "pop3" | "ftp" | "xmpp" | "irc" | "ldap" | "mysql")) => {
            return remedy.replace(
                "openssl s_client -connect HOST:PORT",
                &format!("openssl s_client -connect {server} -starttls {p}"),
            );
        }
        _ => "",
    };
    remedy.replace(
        "openssl s_client -connect HOST:PORT",
        &format!("openssl s_client -connect {server}{starttls}"),
    )
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn preambles_name_their_protocol() {
        let ldap = [
            &[0x30, 0x1d, 0x02, 0x01, 0x01, 0x77, 0x18, 0x80, 0x16][..],
            LDAP_STARTTLS_OID,
        ]
        .concat();
        let mysql_greeting = [0x5b, 0, 0, 0, 0x0a, b'1', b'0', b'.'];
        for (client, server, want) in [
            (
                &b"EHLO client.example\r\nSTARTTLS\r\n"[..],
                &b"220 mx ESMTP Postfix\r\n"[..],
                "smtp",
            ),
            (
                b"a1 CAPABILITY\r\na2 STARTTLS\r\n",
                b"* OK [CAPABILITY IMAP4rev1] ready\r\n",
                "imap",
            ),
            (b"CAPA\r\nSTLS\r\n", b"+OK POP3 ready\r\n", "pop3"),
            (b"AUTH TLS\r\n", b"220 (vsFTPd 3.0.3)\r\n", "ftp"),
            (
                b"<stream:stream to='x'><starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>",
                b"<?xml version='1.0'?><stream:stream",
                "xmpp",
            ),
            (
                b"CAP LS 302\r\nSTARTTLS\r\n",
                b":irc.example NOTICE * :hi\r\n",
                "irc",
            ),
            (
                &ldap[..],
                b"0\x0c\x02\x01\x01x\x07\x0a\x01\x00\x04\x00\x04\x00",
                "ldap",
            ),
            (&PG_SSL_REQUEST[..], b"S", "postgresql"),
            (b"\x20\x00\x00\x01\x85\xae", &mysql_greeting[..], "mysql"),
            (
                b"\x03\x00\x00\x13\x0e\xe0\x00\x00",
                b"\x03\x00\x00\x13\x0e\xd0",
                "rdp",
            ),
        ] {
            assert_eq!(protocol(client, server, 40000), want, "{want}");
        }
        assert_eq!(protocol(b"", b"", 587), "smtp");
        assert_eq!(live(Some("imap-login"), 40000), "imap");
        assert_eq!(live(Some("curl"), 5432), "postgresql");
        assert_eq!(live(None, 40000), "unknown");
        let r = "run openssl s_client -connect HOST:PORT -servername x";
        assert_eq!(
            concrete_command(r, "10.0.0.1:25", Some("smtp")),
            "run openssl s_client -connect 10.0.0.1:25 -starttls smtp -servername x"
        );
        assert_eq!(
            concrete_command(r, "10.0.0.1:5432", Some("postgresql")),
            "run openssl s_client -connect 10.0.0.1:5432 -starttls postgres -servername x"
        );
        assert_eq!(
            concrete_command(r, "[::1]:443", None),
            "run openssl s_client -connect [::1]:443 -servername x"
        );
        assert_eq!(protocol(b"\x01\x02", b"", 40000), "unknown");
        assert!(PROTOCOLS.iter().all(|p| *p == "unknown" || by_port_has(p)));
    }

    fn by_port_has(p: &str) -> bool {
        (1..=6697).any(|port| by_port(port) == p)
    }
}
