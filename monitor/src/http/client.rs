//! A one-shot HTTP/1.0 GET over TCP or a unix socket: what `tlsmon status`, `failures` and
//! `fleet status` ask the local endpoints.
//!
//! Written by hand on purpose: the endpoints are ours, answer `Connection: close`, and
//! listen on a unix socket by choice of the operator. `ureq` has no unix-socket transport,
//! and hyper's client would bring an async runtime into a command that makes one request.

use std::{
    io::{Read, Write},
    time::Duration,
};

use anyhow::{Context, bail};

use crate::config::Listen;

const TIMEOUT: Duration = Duration::from_secs(5);

/// GET `path` from the endpoint, with a bearer token if given; the body of a 200 answer.
pub fn get(listen: &Listen, path: &str, token: Option<&str>) -> anyhow::Result<String> {
    let (code, body) = get_with_status(listen, path, token)?;
    if code != 200 {
        bail!("the endpoint answered {code}: {}", body.trim());
    }
    Ok(body)
}

/// GET `path` from the endpoint: (status code, body).
pub fn get_with_status(
    listen: &Listen,
    path: &str,
    token: Option<&str>,
) -> anyhow::Result<(u16, String)> {
    let authorization =
        token.map_or_else(String::new, |t| format!("Authorization: Bearer {t}\r\n"));
    let request = format!(
        "GET {path} HTTP/1.0\r\nHost: localhost\r\n{authorization}Connection: close\r\n\r\n"
    );
    let mut raw = Vec::new();
    let hint = "is tlsmon (run, or aggregate for the fleet view) listening there?";
    match listen {
        Listen::Tcp(a) => {
            let mut s = std::net::TcpStream::connect_timeout(a, TIMEOUT)
                .with_context(|| format!("cannot reach the tlsmon endpoint at {a}: {hint}"))?;
            s.set_read_timeout(Some(TIMEOUT))?;
            s.write_all(request.as_bytes())?;
            s.read_to_end(&mut raw)?;
        }
        Listen::Unix(p) => {
            let mut s = std::os::unix::net::UnixStream::connect(p).map_err(|e| {
                if e.kind() == std::io::ErrorKind::PermissionDenied {
                    anyhow::anyhow!(
                        "{}: permission denied: peers, SNIs and processes are for root and the tlsmon group (sudo, or sudo usermod -aG tlsmon $USER and log in again)",
                        p.display()
                    )
                } else {
                    anyhow::anyhow!(
                        "cannot reach the tlsmon endpoint at {}: {e}: {hint}",
                        p.display()
                    )
                }
            })?;
            s.set_read_timeout(Some(TIMEOUT))?;
            s.write_all(request.as_bytes())?;
            s.read_to_end(&mut raw)?;
        }
    }
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .context("the endpoint's answer is not HTTP")?;
    let code = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .context("the endpoint's answer has no status code")?;
    Ok((code, body.to_owned()))
}

/// Percent-encodes a query value.
pub fn encode(v: &str) -> String {
    v.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_values_are_encoded() {
        assert_eq!(encode("10.0.0.0/8"), "10.0.0.0%2F8");
        assert_eq!(encode("a b&c"), "a%20b%26c");
    }
}
