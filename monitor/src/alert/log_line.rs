//! The alert's `key=value` log line (journald, fail2ban, log pipelines): one line per alert,
//! keys in a fixed order, the quoted sentence last.
//!
//! Captured strings (an SNI any client sends, a `comm` any local process sets, certificate
//! names) are data, never syntax: a value is written bare only when it is printable ASCII
//! without space, `"`, `=` or `\`; anything else is quoted logfmt-style, with `"`, `\`,
//! newline, return and tab escaped and every other character outside printable ASCII written
//! `\u{..}`. A line is one line, each key appears once, and no byte of it is a control
//! character.

use std::borrow::Cow;
use std::fmt::Write as _;

use super::document::{Endpoint, Event, wire_name};

/// One value of the line: bare when safe, else quoted and escaped (module doc).
pub fn value(s: &str) -> Cow<'_, str> {
    let bare = !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_graphic() && !matches!(b, b'"' | b'=' | b'\\'));
    if bare {
        Cow::Borrowed(s)
    } else {
        Cow::Owned(quoted(s))
    }
}

/// `s` in double quotes, escaped (module doc).
pub fn quoted(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            ' '..='~' => out.push(c),
            _ => {
                let _ = write!(out, "\\u{{{:x}}}", u32::from(c));
            }
        }
    }
    out.push('"');
    out
}

/// A stable `key=value` line for logs (journald, fail2ban): keys in a fixed order, values
/// bare or quoted ([`value`]), the quoted message last.
pub fn log_fields(ev: &Event) -> String {
    let opt = |s: Option<&str>| {
        s.filter(|s| !s.is_empty())
            .map_or(Cow::Borrowed("-"), value)
            .into_owned()
    };
    let p = ev.process.as_ref();
    let alert = ev.alert.as_ref().map_or("-".to_owned(), |a| {
        format!(
            "{}/{}",
            a.code.map_or("?".to_owned(), |c| c.to_string()),
            a.name.as_deref().unwrap_or("encrypted")
        )
    });
    format!(
        "kind={} cause={} process={} pid={} exe={} unit={} role={} peer_ip={} peer_port={} local_port={} service={} sni={} alert={} sender={} stage={} count={} event_id={} message={}",
        wire_name(&ev.kind),
        value(&ev.cause),
        opt(p.map(|p| p.comm.as_str())),
        p.map_or("-".to_owned(), |p| p.pid.to_string()),
        opt(p.and_then(|p| p.exe.as_deref())),
        opt(p.and_then(|p| p.unit.as_deref())),
        wire_name(&ev.role),
        opt(ev.peer.as_ref().map(|e| e.ip.as_str())),
        ev.peer
            .as_ref()
            .map_or("-".to_owned(), |e| e.port.to_string()),
        ev.local
            .as_ref()
            .map_or("-".to_owned(), |e| e.port.to_string()),
        ev.service
            .as_ref()
            .map_or("-".to_owned(), Endpoint::to_string),
        opt(ev.sni.as_deref()),
        value(&alert),
        ev.alert.as_ref().map_or("-", |a| a.sender.as_str()),
        opt(ev.stage.as_deref()),
        ev.count,
        value(&ev.event_id),
        quoted(&ev.message),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alert::document::{
        from_verdict,
        test_support::{POLICY, curl, failed_verdict},
    };
    use crate::config::Host;

    #[test]
    fn log_line_is_stable_key_value_with_the_peer_ip() {
        let host = Host::detect(None, Some("h"));
        let ev = from_verdict(&failed_verdict(), Some(&curl()), &host, POLICY).unwrap();
        let line = log_fields(&ev);
        assert!(
            line.starts_with(
                "kind=handshake_failure cause=protocol_version_mismatch process=curl pid=4312 exe=/usr/bin/curl unit=session-1.scope role=client peer_ip=127.0.0.2 peer_port=8443 local_port=40122 service=127.0.0.2:8443 sni=- alert=70/protocol_version sender=server stage=client_hello count=1 event_id="
            ),
            "{line}"
        );
        assert!(line.contains(" message=\"curl (pid 4312)"), "{line}");
    }

    /// The line as a logfmt reader splits it: (key, unescaped value) pairs; `None` when it
    /// is not well formed.
    fn parse(line: &str) -> Option<Vec<(String, String)>> {
        let mut out = Vec::new();
        let mut chars = line.chars().peekable();
        loop {
            let key: String = chars.by_ref().take_while(|c| *c != '=').collect();
            if key.is_empty() || !key.bytes().all(|b| b.is_ascii_lowercase() || b == b'_') {
                return None;
            }
            let mut val = String::new();
            if chars.peek() == Some(&'"') {
                chars.next();
                loop {
                    match chars.next()? {
                        '"' => break,
                        '\\' => match chars.next()? {
                            'n' => val.push('\n'),
                            'r' => val.push('\r'),
                            't' => val.push('\t'),
                            'u' => {
                                chars.next().filter(|c| *c == '{')?;
                                let hex: String =
                                    chars.by_ref().take_while(|c| *c != '}').collect();
                                val.push(char::from_u32(u32::from_str_radix(&hex, 16).ok()?)?);
                            }
                            c => val.push(c),
                        },
                        c => val.push(c),
                    }
                }
            } else {
                while let Some(c) = chars.next_if(|c| *c != ' ') {
                    val.push(c);
                }
            }
            out.push((key, val));
            match chars.next() {
                None => return Some(out),
                Some(' ') => {}
                Some(_) => return None,
            }
        }
    }

    #[test]
    fn hostile_captured_strings_stay_inside_their_values() {
        let host = Host::detect(None, Some("h"));
        let mut ev = from_verdict(&failed_verdict(), Some(&curl()), &host, POLICY).unwrap();
        let sni = "evil.example peer_ip=203.0.113.9\tsender=server\n\"x=\\\u{1b}[31mred\u{202e}é";
        let comm = "a=b \"c\"\r\u{7}";
        ev.sni = Some(sni.to_owned());
        if let Some(p) = ev.process.as_mut() {
            p.comm = comm.to_owned();
        }
        ev.message = format!("the server {sni} said no");
        let line = log_fields(&ev);
        assert!(
            line.chars().all(|c| (' '..='~').contains(&c)),
            "only printable ASCII: {line:?}"
        );
        let fields = parse(&line).unwrap_or_else(|| panic!("not logfmt: {line}"));
        let keys: Vec<&str> = fields.iter().map(|(k, _)| k.as_str()).collect();
        let mut unique = keys.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(keys.len(), unique.len(), "a key twice: {line}");
        let get = |k: &str| {
            fields
                .iter()
                .find(|(key, _)| key == k)
                .map(|(_, v)| v.as_str())
        };
        assert_eq!(get("sni"), Some(sni));
        assert_eq!(get("process"), Some(comm));
        assert_eq!(get("peer_ip"), Some("127.0.0.2"));
        assert_eq!(get("sender"), Some("server"));
        assert_eq!(get("message"), Some(ev.message.as_str()));
        // Safe values stay bare, as fail2ban and grep expect.
        assert!(line.contains(" peer_ip=127.0.0.2 "), "{line}");
        assert_eq!(value("a.b-c:1/2"), "a.b-c:1/2");
        assert_eq!(value(""), "\"\"");
    }
}
