//! The event document (`tlsmon.event/1`, the schema in docs/schema/event.schema.json): one
//! per failure, or per aggregate of identical failures, or per "weak but working" handshake.
//! Built from a [`Verdict`] and the owning process; pure.

use std::net::SocketAddr;

use serde::Serialize;

use crate::{
    capture::process::ProcessInfo,
    clock::rfc3339,
    config::Host,
    flow::{CaptureKind, Role},
    handshake::{AlertInfo, Completed, HandshakeOutcome, certs::CertSummary, upgrade},
    judge::Verdict,
};

pub const SCHEMA: &str = "tlsmon.event/1";

#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq, Hash, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    HandshakeFailure,
    /// Many peers failing one listener (or one client failing many servers) in one window.
    HandshakeFailureSummary,
    /// The handshake worked but is weak (old version, certificate about to expire).
    WeakHandshake,
}

/// What a conclusion rests on.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Evidence {
    /// The captured bytes of the handshake (records, alerts, certificates, sizes, closes).
    Wire,
}

#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    Error,
    Warning,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq, schemars::JsonSchema)]
pub struct ProcessRef {
    pub pid: u32,
    pub comm: String,
    pub exe: Option<String>,
    pub unit: Option<String>,
    pub uid: Option<u32>,
    pub container: Option<String>,
}

impl ProcessRef {
    fn from_info(p: &ProcessInfo) -> Self {
        ProcessRef {
            pid: p.tgid,
            comm: p.comm.clone(),
            exe: p.exe.as_ref().map(|e| e.display().to_string()),
            unit: p.unit.clone(),
            uid: p.uid,
            container: p.container.clone(),
        }
    }

    /// What alerts group by: the program's name as the kernel would give it, the file name
    /// of its executable cut to 15 bytes (TASK_COMM_LEN), else the comm. Not the path: a
    /// short-lived process can exit before /proc/PID/exe is read, and its comm, which the
    /// kernel always gives, is that same name ("openssl"). Not the comm alone: it is the
    /// thread's name, and one Java or tokio server has many ("http-nio-8443-e").
    pub fn identity(&self) -> &str {
        let Some(name) = self
            .exe
            .as_deref()
            .and_then(|e| e.rsplit('/').next())
            .filter(|n| !n.is_empty())
        else {
            return &self.comm;
        };
        let mut end = name.len().min(15);
        while !name.is_char_boundary(end) {
            end -= 1;
        }
        &name[..end]
    }
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq, schemars::JsonSchema)]
pub struct Endpoint {
    pub ip: String,
    pub port: u16,
}

/// `ip:port`, or `[ip]:port` for IPv6.
impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.ip.contains(':') {
            write!(f, "[{}]:{}", self.ip, self.port)
        } else {
            write!(f, "{}:{}", self.ip, self.port)
        }
    }
}

impl From<SocketAddr> for Endpoint {
    fn from(a: SocketAddr) -> Self {
        let ip = match a.ip() {
            std::net::IpAddr::V6(v6) => v6
                .to_ipv4_mapped()
                .map_or_else(|| v6.to_string(), |v4| v4.to_string()),
            v4 => v4.to_string(),
        };
        Endpoint { ip, port: a.port() }
    }
}

#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq, schemars::JsonSchema)]
pub struct Offered {
    pub versions: Vec<String>,
    pub ciphers: Vec<String>,
    pub sigalgs: Vec<String>,
    pub groups: Vec<String>,
    pub alpn: Vec<String>,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq, schemars::JsonSchema)]
pub struct Selected {
    pub version: String,
    pub cipher: String,
    pub alpn: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq, schemars::JsonSchema)]
pub struct TlsFacts {
    pub offered: Option<Offered>,
    pub selected: Option<Selected>,
    pub ja3: Option<String>,
    pub ja4: Option<String>,
}

/// One event document.
#[derive(Debug, Clone, Serialize, PartialEq, Eq, schemars::JsonSchema)]
pub struct Event {
    pub schema: &'static str,
    pub event_id: String,
    /// When it first happened (RFC 3339).
    pub time: String,
    pub host: Host,
    pub kind: Kind,
    pub severity: Severity,
    pub process: Option<ProcessRef>,
    pub role: Role,
    pub local: Option<Endpoint>,
    pub peer: Option<Endpoint>,
    /// The service that failed: the address and port a client connected to, or a server's
    /// own listener (its local address and port). Alerts are per service.
    pub service: Option<Endpoint>,
    pub sni: Option<String>,
    /// The plaintext protocol this connection began with before TLS (STARTTLS and kin:
    /// `smtp`, `imap`, `postgresql`, `mysql`, `ldap`, ...; `unknown`); absent when TLS began
    /// with the connection. Named from the program at this end, else the server port.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upgrade: Option<String>,
    pub tls: TlsFacts,
    pub alert: Option<AlertInfo>,
    pub stage: Option<String>,
    /// A cause slug (`handshake::Cause`, the README's table); warnings: `legacy_tls_version`,
    /// `certificate_expiring`.
    #[schemars(schema_with = "cause_schema")]
    pub cause: String,
    pub inferred: bool,
    /// What the cause rests on: `wire` (the captured handshake) today.
    pub evidence: Evidence,
    pub message: String,
    /// What to change, in one or two lines (docs/causes.md has the long form).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub remedy: Option<String>,
    /// The leaf certificate the server sent, when visible.
    pub certificate: Option<CertSummary>,
    pub count: u64,
    pub first_seen: String,
    pub last_seen: String,
    /// Summaries: distinct peers folded into this event.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peers: Option<u64>,
    /// Unix ms of first/last occurrence (for storage and windows; not in the document).
    #[serde(skip)]
    pub first_ms: u64,
    #[serde(skip)]
    pub last_ms: u64,
}

/// What turns a working handshake into a warning.
#[derive(Debug, Clone, Copy)]
pub struct WeakPolicy {
    pub warn_legacy_versions: bool,
    pub expiry_warning_days: i64,
}

impl WeakPolicy {
    fn legacy(self, c: &Completed) -> bool {
        self.warn_legacy_versions && c.selected.version <= 0x0302
    }

    fn expiring(self, c: &Completed) -> Option<i64> {
        c.leaf_expires_in_days
            .filter(|d| *d <= self.expiry_warning_days)
    }

    /// The completed handshake is weak under this policy (a warning event).
    pub fn applies(self, c: &Completed) -> bool {
        self.legacy(c) || self.expiring(c).is_some()
    }
}

/// The event for a verdict, or `None` when the verdict is a plain success or not TLS.
pub fn from_verdict(
    v: &Verdict,
    process: Option<&ProcessInfo>,
    host: &Host,
    weak: WeakPolicy,
) -> Option<Event> {
    // Most verdicts make no event: decide that before building one.
    match &v.outcome {
        HandshakeOutcome::Failed(_) => {}
        HandshakeOutcome::Completed(c) if weak.applies(c) => {}
        _ => return None,
    }
    let role = v.conn.as_ref().map_or(Role::Unknown, |c| c.role);
    let process = process.map(ProcessRef::from_info);
    let local = v.conn.as_ref().map(|c| Endpoint::from(c.local));
    let peer = v.conn.as_ref().map(|c| Endpoint::from(c.peer));
    let service = v.conn.as_ref().map(|c| Endpoint::from(c.service()));
    let ms = v.first_unix_ns / 1_000_000;
    let upgrade = (v.capture == Some(CaptureKind::Upgraded)).then(|| {
        let port = service.as_ref().map_or(0, |s| s.port);
        upgrade::live(process.as_ref().map(|p| p.comm.as_str()), port).to_owned()
    });
    let mut ev = Event {
        schema: SCHEMA,
        event_id: uuid::Uuid::now_v7().to_string(),
        time: rfc3339(v.first_unix_ns),
        host: host.clone(),
        kind: Kind::HandshakeFailure,
        severity: Severity::Error,
        process,
        role,
        local,
        peer,
        service,
        sni: None,
        upgrade,
        tls: TlsFacts::default(),
        alert: None,
        stage: None,
        cause: String::new(),
        inferred: false,
        evidence: Evidence::Wire,
        message: String::new(),
        remedy: None,
        certificate: None,
        count: 1,
        first_seen: rfc3339(v.first_unix_ns),
        last_seen: rfc3339(v.first_unix_ns),
        peers: None,
        first_ms: ms,
        last_ms: ms,
    };
    let what = match &v.outcome {
        HandshakeOutcome::Failed(d) => {
            ev.sni = d.offered.as_ref().and_then(|o| o.server_name.clone());
            ev.tls = tls_facts(d.offered.as_ref(), d.selected.as_ref());
            ev.alert = d.alert.clone();
            ev.stage = Some(d.stage.as_str().to_owned());
            ev.cause = d.cause.slug();
            ev.inferred = d.inferred;
            ev.certificate = d.server_certificates.first().cloned();
            ev.remedy = Some(upgrade::concrete_command(
                &d.remedy,
                &ev.service
                    .as_ref()
                    .map_or_else(|| "HOST:PORT".to_owned(), |s| s.to_string()),
                ev.upgrade.as_deref(),
            ));
            d.message.clone()
        }
        HandshakeOutcome::Completed(c) => {
            let legacy = weak.legacy(c);
            let expiring = weak.expiring(c);
            ev.sni = c.offered.as_ref().and_then(|o| o.server_name.clone());
            ev.tls = tls_facts(c.offered.as_ref(), Some(&c.selected));
            ev.certificate = c.server_certificates.first().cloned();
            ev.kind = Kind::WeakHandshake;
            ev.severity = Severity::Warning;
            ev.stage = Some("application_data".to_owned());
            if legacy {
                ev.cause = WARNING_CAUSES[0].to_owned();
                ev.remedy = Some(
                    "enable TLS 1.2 and 1.3 on both ends and then turn TLS 1.0/1.1 off (nginx: ssl_protocols TLSv1.2 TLSv1.3)".into(),
                );
                format!(
                    "the handshake completed with {}, which is deprecated (RFC 8996); enable TLS 1.2 or 1.3",
                    c.selected.version_name
                )
            } else {
                let days = expiring?;
                ev.cause = WARNING_CAUSES[1].to_owned();
                ev.remedy = Some(format!(
                    "renew the certificate before {} and reload the server",
                    c.server_certificates.first().map_or_else(
                        || format!("{days} days from now"),
                        |l| crate::clock::utc_seconds(l.not_after)
                    )
                ));
                let leaf = c
                    .server_certificates
                    .first()
                    .map_or("the server certificate".to_owned(), |l| {
                        format!("the server certificate {:?}", l.subject)
                    });
                if days < 0 {
                    format!(
                        "{leaf} expired {} days ago, yet the client accepted it",
                        -days
                    )
                } else {
                    format!("{leaf} expires in {days} days")
                }
            }
        }
        HandshakeOutcome::NotTls(_)
        | HandshakeOutcome::Truncated(_)
        | HandshakeOutcome::Undecided => return None,
    };
    ev.message = format!("{}: {what}", who(&ev));
    Some(ev)
}

/// Warning causes (a handshake that worked but is weak).
pub const WARNING_CAUSES: [&str; 2] = ["legacy_tls_version", "certificate_expiring"];

/// The event's `cause`: one of the failure causes or warning causes, by slug.
fn cause_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    let mut slugs: Vec<String> = crate::handshake::Cause::ALL
        .iter()
        .map(|c| c.slug())
        .collect();
    slugs.extend(WARNING_CAUSES.map(String::from));
    schemars::json_schema!({
        "description": "A cause slug: a failure cause (handshake::Cause, the README's table) or a warning (legacy_tls_version, certificate_expiring).",
        "type": "string",
        "enum": slugs,
    })
}

/// "curl (pid 4312) as client 127.0.0.1:40122 → 127.0.0.1:8443".
fn who(ev: &Event) -> String {
    let name = ev
        .process
        .as_ref()
        .map_or("unknown process".to_owned(), |p| {
            format!("{} (pid {})", p.comm, p.pid)
        });
    let end = |e: &Option<Endpoint>| e.as_ref().map_or("?".to_owned(), Endpoint::to_string);
    match ev.role {
        Role::Client => format!("{name} as client {} → {}", end(&ev.local), end(&ev.peer)),
        Role::Server => format!("{name} as server {} ← {}", end(&ev.local), end(&ev.peer)),
        Role::Unknown => format!("{name} {} ↔ {}", end(&ev.local), end(&ev.peer)),
    }
}

fn tls_facts(
    offer: Option<&crate::handshake::hello::ClientOffer>,
    choice: Option<&crate::handshake::hello::ServerChoice>,
) -> TlsFacts {
    let names = |n: &crate::handshake::hello::Named| n.names().map(|s| s.into_owned()).collect();
    TlsFacts {
        offered: offer.map(|o| Offered {
            versions: names(&o.versions),
            ciphers: names(&o.ciphers),
            sigalgs: names(&o.sigalgs),
            groups: names(&o.groups),
            alpn: o.alpn.clone(),
        }),
        selected: choice.map(|c| Selected {
            version: c.version_name.to_string(),
            cipher: c.cipher_name.to_string(),
            alpn: c.alpn.clone(),
        }),
        ja3: offer.map(|o| o.ja3()),
        ja4: offer.map(|o| o.ja4()),
    }
}

/// The name a unit enum variant has in documents (`handshake_failure`, `client`).
pub fn wire_name<T: Serialize>(v: &T) -> String {
    match serde_json::to_value(v) {
        Ok(serde_json::Value::String(s)) => s,
        _ => "-".to_owned(),
    }
}

/// Builders shared by the tests of the document and of its log line.
#[cfg(test)]
pub(crate) mod test_support {
    use super::*;
    use crate::flow::ConnInfo;
    use crate::handshake::{Connection, ConnectionMeta, Party};

    pub(crate) fn failed_verdict() -> Verdict {
        let mut c = Connection::new(ConnectionMeta {
            tls_port: true,
            ..ConnectionMeta::default()
        });
        c.data(Party::Client, 1_000, &[22, 3, 1, 0, 4, 1, 0, 0, 0]);
        c.data(Party::Server, 2_000, &[21, 3, 3, 0, 2, 2, 70]);
        Verdict {
            cookie: 1,
            conn: Some(ConnInfo {
                role: Role::Client,
                local: "127.0.0.1:40122".parse().unwrap(),
                peer: "[::ffff:127.0.0.2]:8443".parse().unwrap(),
                socket_cgroup_id: 1,
            }),
            owner: None,
            outcome: c.outcome(),
            capture: None,
            truncated: false,
            first_unix_ns: 1_763_900_000_123_000_000,
            early: true,
            incomplete: None,
        }
    }

    pub(crate) fn curl() -> ProcessInfo {
        ProcessInfo {
            pid: 4312,
            tgid: 4312,
            comm: "curl".into(),
            exe: Some("/usr/bin/curl".into()),
            cmdline: None,
            uid: Some(0),
            unit: Some("session-1.scope".into()),
            container: None,
        }
    }

    /// A curl client's `self_signed` failure against `peer`:8443 at `at_ms`: the event the
    /// alert engine and the store are tested with.
    pub(crate) fn failure_event(peer: &str, at_ms: u64) -> Event {
        Event {
            schema: SCHEMA,
            event_id: uuid::Uuid::now_v7().to_string(),
            time: "t".into(),
            host: Host {
                id: "m".into(),
                name: "h".into(),
            },
            kind: Kind::HandshakeFailure,
            severity: Severity::Error,
            process: Some(ProcessRef {
                pid: 9,
                comm: "curl".into(),
                exe: Some("/usr/bin/curl".into()),
                unit: None,
                uid: Some(0),
                container: None,
            }),
            role: Role::Client,
            local: Some(Endpoint {
                ip: "127.0.0.1".into(),
                port: 40000,
            }),
            peer: Some(Endpoint {
                ip: peer.into(),
                port: 8443,
            }),
            service: Some(Endpoint {
                ip: peer.into(),
                port: 8443,
            }),
            sni: Some("localhost".into()),
            upgrade: None,
            remedy: None,
            tls: TlsFacts::default(),
            alert: None,
            stage: Some("certificate".into()),
            cause: "self_signed".into(),
            inferred: false,
            evidence: Evidence::Wire,
            message: "m".into(),
            certificate: None,
            count: 1,
            first_seen: format!("t{at_ms}"),
            last_seen: format!("t{at_ms}"),
            peers: None,
            first_ms: at_ms,
            last_ms: at_ms,
        }
    }

    pub(crate) const POLICY: WeakPolicy = WeakPolicy {
        warn_legacy_versions: true,
        expiry_warning_days: 14,
    };
}

#[cfg(test)]
mod tests;
