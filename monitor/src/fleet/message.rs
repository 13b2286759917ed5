//! What the aggregator receives, parsed: an MQTT topic `<prefix>/v1/<site>/<host>/<kind>` and
//! its JSON payload become one [`Message`] with the few fields the fleet view keeps. Pure;
//! unknown fields are ignored (newer publishers), malformed payloads are a [`Rejected`]
//! reason, never a panic.

use serde::Deserialize;
use time::{OffsetDateTime, format_description::well_known::Rfc3339};

/// Longest event id accepted (UUIDv7 text is 36).
const MAX_ID: usize = 128;

/// One message for the fleet store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    Event(Box<FleetEvent>),
    Gap(FleetGap),
    Status(HostStatus),
    Summary(HostSummary),
}

/// Where a message came from (the topic's site and host levels).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Origin {
    pub site: String,
    pub host_id: String,
}

/// One `tlsmon.event/1`, flattened to what the fleet view groups by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FleetEvent {
    pub event_id: String,
    pub origin: Origin,
    pub host_name: String,
    pub kind: String,
    pub severity: String,
    pub role: String,
    /// Executable path, else the process name; empty when unknown.
    pub process: String,
    /// The process name (comm); empty when unknown.
    pub comm: String,
    /// The failing service: for a client `sni:port` (or the peer's `ip:port` without SNI),
    /// for a server `host/ip:port` of its listener.
    pub server: String,
    /// `ip` of the client: this host for a client (its name), the peer for a server.
    pub client: String,
    pub sni: Option<String>,
    pub cause: String,
    pub message: String,
    /// What to change (events from daemons before 0.x carry none).
    pub remedy: Option<String>,
    pub count: u64,
    pub first_ms: i64,
    pub last_ms: i64,
}

/// One `tlsmon.gap/1`: events a host's outbox dropped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FleetGap {
    pub event_id: String,
    pub origin: Origin,
    pub reason: String,
    pub dropped: u64,
    pub first_ms: i64,
    pub last_ms: i64,
}

/// A retained `tlsmon.status/1`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostStatus {
    pub origin: Origin,
    pub host_name: String,
    /// `online` or `offline`.
    pub state: String,
    pub version: String,
    pub time_ms: i64,
}

/// The handshake counters of a `tlsmon.summary/1` (since that daemon started).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostSummary {
    pub origin: Origin,
    pub judged: u64,
    pub failed: u64,
    pub time_ms: i64,
}

impl Message {
    pub fn origin(&self) -> &Origin {
        match self {
            Message::Event(e) => &e.origin,
            Message::Gap(g) => &g.origin,
            Message::Status(s) => &s.origin,
            Message::Summary(s) => &s.origin,
        }
    }
}

/// Why a message was not taken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejected {
    #[error("topic {0:?} is not <prefix>/v1/<site>/<host>/<events|summary|status>")]
    Topic(String),
    #[error("payload is not a tlsmon document: {0}")]
    Payload(String),
    #[error("unknown schema {0:?}")]
    Schema(String),
    #[error("the {0} topic carries a {1} document")]
    Mismatch(String, String),
}

/// Parses one received message. `topic` is as delivered (a shared subscription's
/// `$share/<group>/` is not part of it).
pub fn parse(topic: &str, payload: &[u8]) -> Result<Message, Rejected> {
    let (origin, kind) = parse_topic(topic)?;
    let head: Head =
        serde_json::from_slice(payload).map_err(|e| Rejected::Payload(e.to_string()))?;
    let schema = head.schema.as_str();
    let bad = |e: serde_json::Error| Rejected::Payload(format!("{schema}: {e}"));
    match (kind, schema) {
        ("events", "tlsmon.event/1") => {
            let e: EventIn = serde_json::from_slice(payload).map_err(bad)?;
            event(origin, e).map(|e| Message::Event(Box::new(e)))
        }
        ("events", "tlsmon.gap/1") => {
            let g: GapIn = serde_json::from_slice(payload).map_err(bad)?;
            Ok(Message::Gap(FleetGap {
                event_id: checked_id(g.event_id)?,
                origin,
                reason: g.reason,
                dropped: g.dropped,
                first_ms: clamp(g.first_ms),
                last_ms: clamp(g.last_ms),
            }))
        }
        ("status", "tlsmon.status/1") => {
            let s: StatusIn = serde_json::from_slice(payload).map_err(bad)?;
            Ok(Message::Status(HostStatus {
                origin,
                host_name: s.host.name,
                state: s.state,
                version: s.version,
                time_ms: millis(&s.time)?,
            }))
        }
        ("summary", "tlsmon.summary/1") => {
            let s: SummaryIn = serde_json::from_slice(payload).map_err(bad)?;
            Ok(Message::Summary(HostSummary {
                origin,
                judged: s.handshakes.judged,
                failed: s.handshakes.failed,
                time_ms: millis(&s.time)?,
            }))
        }
        (_, s) if KNOWN.contains(&s) => Err(Rejected::Mismatch(kind.to_owned(), s.to_owned())),
        (_, s) => Err(Rejected::Schema(s.to_owned())),
    }
}

const KNOWN: [&str; 4] = [
    "tlsmon.event/1",
    "tlsmon.gap/1",
    "tlsmon.status/1",
    "tlsmon.summary/1",
];

fn parse_topic(topic: &str) -> Result<(Origin, &str), Rejected> {
    let levels: Vec<&str> = topic.split('/').collect();
    match levels.as_slice() {
        [
            _prefix,
            "v1",
            site,
            host,
            kind @ ("events" | "summary" | "status"),
        ] if !site.is_empty() && !host.is_empty() => Ok((
            Origin {
                site: (*site).to_owned(),
                host_id: (*host).to_owned(),
            },
            kind,
        )),
        _ => Err(Rejected::Topic(topic.to_owned())),
    }
}

fn event(origin: Origin, e: EventIn) -> Result<FleetEvent, Rejected> {
    let process = e
        .process
        .as_ref()
        .map(|p| p.exe.clone().unwrap_or_else(|| p.comm.clone()))
        .unwrap_or_default();
    let addr = |ep: &Option<EndpointIn>| {
        ep.as_ref().map(|p| {
            if p.ip.contains(':') {
                format!("[{}]:{}", p.ip, p.port)
            } else {
                format!("{}:{}", p.ip, p.port)
            }
        })
    };
    let (server, client) = if e.role == "server" {
        (
            addr(&e.local).map_or_else(|| e.host.name.clone(), |a| format!("{}/{a}", e.host.name)),
            e.peer.as_ref().map(|p| p.ip.clone()).unwrap_or_default(),
        )
    } else {
        // The service the client failed with: its name and port when it sent one (one name
        // can front several services), else the address and port it connected to.
        let named = e
            .sni
            .as_ref()
            .zip(e.peer.as_ref())
            .map(|(sni, p)| format!("{sni}:{}", p.port));
        (
            named.or_else(|| addr(&e.peer)).unwrap_or_default(),
            e.host.name.clone(),
        )
    };
    Ok(FleetEvent {
        event_id: checked_id(e.event_id)?,
        origin,
        host_name: e.host.name,
        kind: e.kind,
        severity: e.severity,
        role: e.role,
        process,
        comm: e.process.map(|p| p.comm).unwrap_or_default(),
        server,
        client,
        sni: e.sni,
        cause: e.cause,
        message: e.message,
        remedy: e.remedy,
        count: e.count,
        first_ms: millis(&e.first_seen)?,
        last_ms: millis(&e.last_seen)?,
    })
}

fn checked_id(id: String) -> Result<String, Rejected> {
    if id.is_empty() || id.len() > MAX_ID || id.chars().any(char::is_control) {
        return Err(Rejected::Payload(format!("bad event_id {id:?}")));
    }
    Ok(id)
}

fn millis(rfc3339: &str) -> Result<i64, Rejected> {
    let t = OffsetDateTime::parse(rfc3339, &Rfc3339)
        .map_err(|e| Rejected::Payload(format!("time {rfc3339:?}: {e}")))?;
    Ok(clamp_i128(t.unix_timestamp_nanos() / 1_000_000))
}

fn clamp(ms: u64) -> i64 {
    i64::try_from(ms).unwrap_or(i64::MAX)
}

fn clamp_i128(ms: i128) -> i64 {
    i64::try_from(ms).unwrap_or(if ms < 0 { 0 } else { i64::MAX })
}

#[derive(Deserialize)]
struct Head {
    schema: String,
}

#[derive(Deserialize)]
struct HostIn {
    name: String,
}

#[derive(Deserialize)]
struct ProcessIn {
    comm: String,
    exe: Option<String>,
}

#[derive(Deserialize)]
struct EndpointIn {
    ip: String,
    port: u16,
}

#[derive(Deserialize)]
struct EventIn {
    event_id: String,
    host: HostIn,
    kind: String,
    severity: String,
    process: Option<ProcessIn>,
    role: String,
    local: Option<EndpointIn>,
    peer: Option<EndpointIn>,
    sni: Option<String>,
    cause: String,
    message: String,
    #[serde(default)]
    remedy: Option<String>,
    count: u64,
    first_seen: String,
    last_seen: String,
}

#[derive(Deserialize)]
struct GapIn {
    event_id: String,
    reason: String,
    dropped: u64,
    first_ms: u64,
    last_ms: u64,
}

#[derive(Deserialize)]
struct StatusIn {
    state: String,
    host: HostIn,
    version: String,
    time: String,
}

#[derive(Deserialize)]
struct CountersIn {
    judged: u64,
    failed: u64,
}

#[derive(Deserialize)]
struct SummaryIn {
    time: String,
    handshakes: CountersIn,
}

#[cfg(test)]
mod tests {
    use super::*;

    const EVENT: &str = r#"{"schema":"tlsmon.event/1","event_id":"0195-a","time":"2026-11-23T10:00:00Z",
        "host":{"id":"m1","name":"web1"},"kind":"handshake_failure","severity":"error",
        "process":{"pid":7,"comm":"curl","exe":"/usr/bin/curl","unit":null,"uid":0,"container":null},
        "role":"client","local":{"ip":"127.0.0.1","port":40000},"peer":{"ip":"127.0.0.1","port":8443},
        "sni":null,"tls":{},"alert":null,"stage":"server_hello","cause":"self_signed","inferred":false,
        "message":"m","certificate":null,"count":3,"first_seen":"2026-11-23T10:00:00Z",
        "last_seen":"2026-11-23T10:00:01.5Z","future_field":1}"#;

    #[test]
    fn an_event_is_flattened_with_its_server_and_client() {
        let m = parse("tlsmon/v1/fra1/m1/events", EVENT.as_bytes()).expect("event");
        let Message::Event(e) = m else {
            panic!("{m:?}")
        };
        assert_eq!(e.origin.site, "fra1");
        assert_eq!(e.origin.host_id, "m1");
        assert_eq!(e.process, "/usr/bin/curl");
        assert_eq!(e.server, "127.0.0.1:8443");
        assert_eq!(e.client, "web1");
        assert_eq!(e.count, 3);
        assert_eq!(e.last_ms - e.first_ms, 1500);
        let server_side = EVENT
            .replace(r#""role":"client""#, r#""role":"server""#)
            .replace(
                r#""ip":"127.0.0.1","port":8443"#,
                r#""ip":"::1","port":50000"#,
            );
        let Ok(Message::Event(e)) = parse("tlsmon/v1/fra1/m1/events", server_side.as_bytes())
        else {
            panic!("server side")
        };
        assert_eq!(e.server, "web1/127.0.0.1:40000");
        assert_eq!(e.client, "::1");
        // A client that named the service: its name and port (one name, several services).
        let named = EVENT.replace(r#""sni":null"#, r#""sni":"api.example""#);
        let Ok(Message::Event(e)) = parse("tlsmon/v1/fra1/m1/events", named.as_bytes()) else {
            panic!("named")
        };
        assert_eq!(e.server, "api.example:8443");
    }

    #[test]
    fn gap_status_and_summary_are_recognised() {
        let gap = r#"{"schema":"tlsmon.gap/1","event_id":"g1","time":"x","host":{"id":"m1","name":"w"},
            "reason":"outbox_full","dropped":21,"first_ms":5,"last_ms":9}"#;
        let Ok(Message::Gap(g)) = parse("p/v1/s/m1/events", gap.as_bytes()) else {
            panic!()
        };
        assert_eq!(
            (g.dropped, g.first_ms, g.reason.as_str()),
            (21, 5, "outbox_full")
        );
        let st = r#"{"schema":"tlsmon.status/1","state":"offline","host":{"id":"m1","name":"w"},
            "site":"s","version":"0.1.0","capabilities":[],"time":"2026-11-23T10:00:00Z"}"#;
        let Ok(Message::Status(s)) = parse("p/v1/s/m1/status", st.as_bytes()) else {
            panic!()
        };
        assert_eq!(s.state, "offline");
        let su = r#"{"schema":"tlsmon.summary/1","time":"2026-11-23T10:00:00Z","host":{"id":"m1","name":"w"},
            "site":"s","interval_secs":60,"handshakes":{"judged":10,"ok":7,"failed":3,"warnings":0},
            "failing":[],"outbox_backlog":0}"#;
        let Ok(Message::Summary(s)) = parse("p/v1/s/m1/summary", su.as_bytes()) else {
            panic!()
        };
        assert_eq!((s.judged, s.failed), (10, 3));
    }

    #[test]
    fn bad_topics_and_payloads_are_reasons_not_panics() {
        let cases: &[(&str, &[u8], &str)] = &[
            ("tlsmon/v1/s/h", EVENT.as_bytes(), "topic"),
            ("tlsmon/v2/s/h/events", EVENT.as_bytes(), "topic"),
            ("tlsmon/v1//h/events", EVENT.as_bytes(), "topic"),
            ("tlsmon/v1/s/h/other", EVENT.as_bytes(), "topic"),
            ("tlsmon/v1/s/h/events", b"not json", "payload"),
            (
                "tlsmon/v1/s/h/events",
                b"{\"schema\":\"x/1\"}",
                "unknown schema",
            ),
            ("tlsmon/v1/s/h/status", EVENT.as_bytes(), "carries"),
            (
                "tlsmon/v1/s/h/events",
                b"{\"schema\":\"tlsmon.event/1\"}",
                "payload",
            ),
        ];
        for (topic, payload, want) in cases {
            let e = parse(topic, payload).expect_err(topic).to_string();
            assert!(e.contains(want), "{topic}: {e}");
        }
        let no_id = EVENT.replace("0195-a", "");
        assert!(parse("t/v1/s/h/events", no_id.as_bytes()).is_err());
        let bad_time = EVENT.replace("10:00:01.5Z", "soon");
        assert!(parse("t/v1/s/h/events", bad_time.as_bytes()).is_err());
    }

    #[test]
    fn every_prefix_of_an_event_is_rejected_without_panic() {
        for n in 0..EVENT.len() {
            assert!(parse("t/v1/s/h/events", &EVENT.as_bytes()[..n]).is_err());
        }
    }
}
