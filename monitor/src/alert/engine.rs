//! The alert engine: identical failures become one alert with a count, floods become one
//! summary. Pure; time comes in with each event (unix ms), so windows are tested without
//! sleeping.
//!
//! - The same (process, service, peer address, SNI, cause) within `window` of the alert's
//!   first occurrence is one alert: `count`, `first_seen`, `last_seen`. The service is what
//!   failed: for a client the server's address and port, for a server its listener.
//! - When more than `flood_peers` distinct peers fail the same way against one listener
//!   (or one client against one port) within the window, further new peers are folded into
//!   one summary alert for that listener instead of one alert each.
//! - Open alerts are bounded: beyond `MAX_OPEN`, new keys are folded into summaries too.

use std::collections::{HashMap, HashSet};

use crate::{
    alert::document::{Event, Kind, Severity},
    flow::Role,
};

/// Open alerts kept at most (memory bound under a storm of distinct failures).
pub const MAX_OPEN: usize = 100_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AlertPolicy {
    pub window_ms: u64,
    pub flood_peers: usize,
}

/// What the engine made of one event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Update {
    /// A new alert (store it, log it).
    New(Box<Event>),
    /// One more occurrence of an open alert.
    Count {
        event_id: String,
        count: u64,
        last_ms: u64,
        last_seen: String,
        /// Distinct peers in a summary.
        peers: Option<u64>,
    },
}

/// What makes two failures the same alert: the program, the service (a client's server
/// address and port, a server's listener), the peer's address, the SNI, the cause.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct AlertKey {
    process: String,
    service: Option<(String, u16)>,
    peer_ip: String,
    sni: Option<String>,
    cause: String,
    kind: Kind,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct ListenerKey {
    process: String,
    role: Role,
    /// The listener's port (server) or the port the client connects to.
    port: u16,
    cause: String,
}

struct Open {
    event_id: String,
    first_ms: u64,
    count: u64,
}

struct Listener {
    first_ms: u64,
    peers: HashSet<String>,
    summary: Option<Summary>,
}

struct Summary {
    event_id: String,
    first_ms: u64,
    count: u64,
    peers: HashSet<String>,
}

/// Open alerts and per-listener peer sets.
pub struct AlertEngine {
    policy: AlertPolicy,
    open: HashMap<AlertKey, Open>,
    listeners: HashMap<ListenerKey, Listener>,
}

impl AlertEngine {
    pub fn new(policy: AlertPolicy) -> Self {
        AlertEngine {
            policy,
            open: HashMap::new(),
            listeners: HashMap::new(),
        }
    }

    /// New thresholds (SIGHUP); open alerts stay open.
    pub fn set_policy(&mut self, policy: AlertPolicy) {
        self.policy = policy;
    }

    pub fn open_alerts(&self) -> usize {
        self.open.len()
    }

    /// Folds one event (count 1) into the alerts, windows on the event's own time
    /// (`first_ms`: offline analysis and tests, where the capture is the clock).
    pub fn observe(&mut self, ev: Event) -> Update {
        let now = ev.first_ms;
        self.observe_at(ev, now)
    }

    /// Folds one event into the alerts, windows on `now_ms` of a clock that never steps:
    /// the daemon's monotonic clock (a wall clock set back an hour would hold an alert open
    /// for an hour, set forward would split one). Event times stay wall-clock times.
    pub fn observe_at(&mut self, ev: Event, now_ms: u64) -> Update {
        let now = now_ms;
        let process = ev.process.as_ref().map_or("?", |p| p.identity()).to_owned();
        let peer_ip = ev.peer.as_ref().map_or("?", |p| p.ip.as_str()).to_owned();
        let key = AlertKey {
            process: process.clone(),
            service: ev.service.as_ref().map(|s| (s.ip.clone(), s.port)),
            peer_ip: peer_ip.clone(),
            sni: ev.sni.clone(),
            cause: ev.cause.clone(),
            kind: ev.kind,
        };
        let window = self.policy.window_ms;
        if let Some(open) = self.open.get_mut(&key)
            && now.saturating_sub(open.first_ms) < window
        {
            open.count += 1;
            return count(&open.event_id, open.count, &ev, None);
        }
        let port = ev.service.as_ref().map_or(0, |e| e.port);
        let lkey = ListenerKey {
            process,
            role: ev.role,
            port,
            cause: ev.cause.clone(),
        };
        let flood = self.policy.flood_peers;
        let listener = self.listeners.entry(lkey).or_insert_with(|| Listener {
            first_ms: now,
            peers: HashSet::new(),
            summary: None,
        });
        if now.saturating_sub(listener.first_ms) >= window {
            *listener = Listener {
                first_ms: now,
                peers: HashSet::new(),
                summary: None,
            };
        }
        let known = listener.peers.contains(&peer_ip);
        if !known && listener.peers.len() >= flood {
            return fold_into_summary(listener, ev, now, window);
        }
        listener.peers.insert(peer_ip);
        if self.open.len() >= MAX_OPEN && !self.open.contains_key(&key) {
            return fold_into_summary(listener, ev, now, window);
        }
        self.open.insert(
            key,
            Open {
                event_id: ev.event_id.clone(),
                first_ms: now,
                count: 1,
            },
        );
        Update::New(Box::new(ev))
    }

    /// Forgets alerts and listeners whose window has passed (call now and then), on the
    /// clock [`AlertEngine::observe_at`] was given.
    pub fn expire(&mut self, now_ms: u64) {
        let window = self.policy.window_ms;
        self.open
            .retain(|_, o| now_ms.saturating_sub(o.first_ms) < window);
        self.listeners
            .retain(|_, l| now_ms.saturating_sub(l.first_ms) < window);
    }
}

fn count(event_id: &str, n: u64, ev: &Event, peers: Option<u64>) -> Update {
    Update::Count {
        event_id: event_id.to_owned(),
        count: n,
        last_ms: ev.first_ms,
        last_seen: ev.first_seen.clone(),
        peers,
    }
}

/// The listener's summary alert takes this failure (created on first use).
fn fold_into_summary(listener: &mut Listener, mut ev: Event, now: u64, window: u64) -> Update {
    let peer_ip = ev.peer.as_ref().map_or("?", |p| p.ip.as_str()).to_owned();
    if let Some(s) = &mut listener.summary
        && now.saturating_sub(s.first_ms) < window
    {
        s.count += 1;
        // The peer set is bounded: past the first 65,536 the count of peers is a floor.
        if s.peers.len() < 65_536 {
            s.peers.insert(peer_ip);
        }
        return count(&s.event_id, s.count, &ev, Some(s.peers.len() as u64));
    }
    listener.summary = Some(Summary {
        event_id: ev.event_id.clone(),
        first_ms: now,
        count: 1,
        peers: HashSet::from([peer_ip]),
    });
    let flood = listener.peers.len();
    ev.kind = Kind::HandshakeFailureSummary;
    ev.severity = Severity::Error;
    ev.peers = Some(1);
    ev.message = format!(
        "more than {flood} distinct peers failed with {} within the window; further peers are counted here: {}",
        ev.cause, ev.message
    );
    Update::New(Box::new(ev))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alert::document::{Endpoint, ProcessRef, test_support::failure_event};

    /// nginx refusing `peer` on its listener :443 (no cipher in common).
    fn failure(peer: &str, at_ms: u64) -> Event {
        Event {
            process: Some(ProcessRef {
                pid: 1,
                comm: "nginx".into(),
                exe: Some("/usr/sbin/nginx".into()),
                unit: None,
                uid: None,
                container: None,
            }),
            role: Role::Server,
            local: Some(Endpoint {
                ip: "10.0.0.1".into(),
                port: 443,
            }),
            peer: Some(Endpoint {
                ip: peer.into(),
                port: 50000,
            }),
            service: Some(Endpoint {
                ip: "10.0.0.1".into(),
                port: 443,
            }),
            sni: Some("example.com".into()),
            upgrade: None,
            remedy: None,
            stage: None,
            cause: "no_shared_cipher".into(),
            ..failure_event(peer, at_ms)
        }
    }

    const POLICY: AlertPolicy = AlertPolicy {
        window_ms: 60_000,
        flood_peers: 3,
    };

    #[test]
    fn a_thousand_identical_failures_are_one_alert_with_count_1000() {
        let mut e = AlertEngine::new(POLICY);
        let first = match e.observe(failure("10.1.1.1", 0)) {
            Update::New(ev) => ev.event_id,
            other => panic!("{other:?}"),
        };
        let mut last = None;
        for i in 1..1000 {
            last = Some(e.observe(failure("10.1.1.1", i)));
        }
        assert_eq!(
            last,
            Some(Update::Count {
                event_id: first,
                count: 1000,
                last_ms: 999,
                last_seen: "t999".into(),
                peers: None
            })
        );
        assert_eq!(e.open_alerts(), 1);
    }

    #[test]
    fn windows_follow_the_clock_that_never_steps_not_the_event_times() {
        const HOUR: u64 = 3_600_000;
        let mut e = AlertEngine::new(POLICY);
        let start = 10 * HOUR;
        assert!(matches!(
            e.observe_at(failure("10.1.1.1", start), 1_000),
            Update::New(_)
        ));
        // The wall clock steps forward an hour, then back two: one second apart each.
        let forward = e.observe_at(failure("10.1.1.1", start + HOUR), 2_000);
        assert!(
            matches!(forward, Update::Count { count: 2, last_ms, .. } if last_ms == start + HOUR),
            "{forward:?}"
        );
        let back = e.observe_at(failure("10.1.1.1", start - HOUR), 3_000);
        assert!(matches!(back, Update::Count { count: 3, .. }), "{back:?}");
        // The window ends on the steady clock, whatever the event times say.
        e.expire(62_000);
        assert_eq!(e.open_alerts(), 0);
        assert!(matches!(
            e.observe_at(failure("10.1.1.1", start - HOUR), 62_000),
            Update::New(_)
        ));
    }

    #[test]
    fn after_the_window_the_same_failure_is_a_new_alert() {
        let mut e = AlertEngine::new(POLICY);
        assert!(matches!(e.observe(failure("10.1.1.1", 0)), Update::New(_)));
        assert!(matches!(
            e.observe(failure("10.1.1.1", 59_999)),
            Update::Count { count: 2, .. }
        ));
        assert!(matches!(
            e.observe(failure("10.1.1.1", 60_000)),
            Update::New(_)
        ));
    }

    #[test]
    fn different_peer_sni_or_cause_are_different_alerts() {
        let mut e = AlertEngine::new(AlertPolicy {
            flood_peers: 100,
            ..POLICY
        });
        let mut other_sni = failure("10.1.1.1", 2);
        other_sni.sni = None;
        let mut other_cause = failure("10.1.1.1", 3);
        other_cause.cause = "cert_expired".into();
        for ev in [
            failure("10.1.1.1", 0),
            failure("10.1.1.2", 1),
            other_sni,
            other_cause,
        ] {
            assert!(matches!(e.observe(ev), Update::New(_)));
        }
    }

    #[test]
    fn one_client_failing_two_services_on_one_address_is_two_alerts() {
        let mut e = AlertEngine::new(POLICY);
        let on_port = |port: u16, at: u64| {
            let mut ev = failure_event("127.0.0.1", at);
            if let (Some(p), Some(s)) = (&mut ev.peer, &mut ev.service) {
                (p.port, s.port) = (port, port);
            }
            ev
        };
        assert!(matches!(e.observe(on_port(8443, 0)), Update::New(_)));
        assert!(matches!(e.observe(on_port(9443, 1)), Update::New(_)));
        assert!(matches!(
            e.observe(on_port(9443, 2)),
            Update::Count { count: 2, .. }
        ));
    }

    #[test]
    fn a_program_whose_path_could_not_be_read_is_still_the_same_alert() {
        let mut e = AlertEngine::new(POLICY);
        let mut gone = failure_event("127.0.0.1", 1);
        if let Some(p) = &mut gone.process {
            p.exe = None;
        }
        assert!(matches!(
            e.observe(failure_event("127.0.0.1", 0)),
            Update::New(_)
        ));
        assert!(matches!(e.observe(gone), Update::Count { count: 2, .. }));
    }

    #[test]
    fn the_threads_of_one_server_are_one_program() {
        let mut e = AlertEngine::new(POLICY);
        let thread = |comm: &str, at: u64| {
            let mut ev = failure_event("127.0.0.1", at);
            if let Some(p) = &mut ev.process {
                p.comm = comm.into();
                p.exe = Some("/usr/lib/jvm/java-17-openjdk-amd64/bin/java".into());
            }
            ev
        };
        assert!(matches!(
            e.observe(thread("http-nio-8443-e", 0)),
            Update::New(_)
        ));
        assert!(matches!(
            e.observe(thread("http-nio-8443-a", 1)),
            Update::Count { count: 2, .. }
        ));
        // A path longer than a comm is cut where the kernel cuts: the same program.
        let mut long = failure_event("127.0.0.1", 2);
        if let Some(p) = &mut long.process {
            p.comm = "haproxy-worker-".into();
            p.exe = Some("/opt/x/haproxy-worker-pool".into());
        }
        assert_eq!(
            long.process.as_ref().map(|p| p.identity()),
            Some("haproxy-worker-")
        );
    }

    #[test]
    fn one_server_failing_one_client_on_two_listeners_is_two_alerts() {
        let mut e = AlertEngine::new(POLICY);
        let on_listener = |port: u16, at: u64| {
            let mut ev = failure("10.1.1.1", at);
            if let (Some(l), Some(s)) = (&mut ev.local, &mut ev.service) {
                (l.port, s.port) = (port, port);
            }
            ev
        };
        assert!(matches!(e.observe(on_listener(443, 0)), Update::New(_)));
        assert!(matches!(e.observe(on_listener(8443, 1)), Update::New(_)));
    }

    #[test]
    fn a_scan_by_thousands_of_peers_becomes_one_summary() {
        let mut e = AlertEngine::new(POLICY);
        let mut new = Vec::new();
        let mut last = None;
        for i in 0..5000u64 {
            let peer = format!("10.2.{}.{}", i / 256, i % 256);
            match e.observe(failure(&peer, i)) {
                Update::New(ev) => new.push(*ev),
                c => last = Some(c),
            }
        }
        // Three per-peer alerts, then one summary.
        assert_eq!(new.len(), 4, "{new:#?}");
        assert_eq!(new[3].kind, Kind::HandshakeFailureSummary);
        assert!(new[3].message.starts_with("more than 3 distinct peers"));
        match last {
            Some(Update::Count {
                event_id,
                count,
                peers,
                ..
            }) => {
                assert_eq!(event_id, new[3].event_id);
                assert_eq!(count, 4997);
                assert_eq!(peers, Some(4997));
            }
            other => panic!("{other:?}"),
        }
        // A peer that already has its own alert keeps counting there.
        assert!(matches!(
            e.observe(failure("10.2.0.0", 5001)),
            Update::Count { count: 2, .. }
        ));
    }

    #[test]
    fn expiry_forgets_old_alerts_and_listeners() {
        let mut e = AlertEngine::new(POLICY);
        e.observe(failure("10.1.1.1", 0));
        e.observe(failure("10.1.1.2", 30_000));
        e.expire(60_000);
        assert_eq!(e.open_alerts(), 1);
        e.expire(90_000);
        assert_eq!(e.open_alerts(), 0);
        assert!(e.listeners.is_empty());
    }
}
