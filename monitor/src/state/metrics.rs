//! Prometheus metrics (prometheus-client): handshakes by outcome/cause/version, alerts,
//! capture loss, store writes. Counters are bumped by the daemon loop; `/metrics` encodes.

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};

use crate::http::serve::encode_registry;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HandshakeLabels {
    /// completed, closed_after_handshake, failed, not_tls, capture_incomplete.
    pub outcome: String,
    /// The cause slug for failures, "" otherwise.
    pub cause: String,
    /// The negotiated (or highest offered) version, "" when unknown.
    pub version: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ServiceLabels {
    /// `ip:port` of the service (a client's server, a server's listener), or "other" past
    /// `state::MAX_SERVICES` distinct ones.
    pub service: String,
    /// client or server: which end was judged.
    pub role: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AlertLabels {
    pub kind: String,
    pub cause: String,
    /// The program the alert names (its identity: executable name or comm), at most
    /// `MAX_PROCESS_LABELS` distinct values, then "other"; never a peer or an SNI.
    pub process: String,
}

/// Every metric the daemon exports.
pub struct Metrics {
    registry: Registry,
    pub handshakes: Family<HandshakeLabels, Counter>,
    pub closed_after_handshake: Family<ServiceLabels, Counter>,
    pub alerts: Family<AlertLabels, Counter>,
    pub ring_drops: Counter,
    pub budget_truncated_bytes: Counter,
    pub events_stored: Counter,
    pub events_published: Counter,
    pub store_errors: Counter,
    pub filtered: Counter,
    pub open_connections: Gauge,
    /// 1 while the database refuses writes (a full disk), else 0.
    pub store_failing: Gauge,
    /// The process label values given out so far (at most `MAX_PROCESS_LABELS`).
    process_labels: std::sync::Mutex<std::collections::HashSet<String>>,
}

/// Distinct `process` label values; past it, "other" (any local program may name itself
/// anything: the series must stay bounded).
pub const MAX_PROCESS_LABELS: usize = 256;

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("tlsmon");
        let handshakes = Family::<HandshakeLabels, Counter>::default();
        registry.register(
            "handshakes",
            "TLS handshakes judged, by outcome, cause and version",
            handshakes.clone(),
        );
        let closed_after_handshake = Family::<ServiceLabels, Counter>::default();
        registry.register(
            "closed_after_handshake",
            "Handshakes that completed and were closed without data, nothing wrong on the wire \
             (health checks, probes, or a rejection only the client's library knows), by service",
            closed_after_handshake.clone(),
        );
        let alerts = Family::<AlertLabels, Counter>::default();
        registry.register(
            "alerts",
            "Alerts raised (deduplicated failures), by kind, cause and process",
            alerts.clone(),
        );
        let ring_drops = Counter::default();
        registry.register(
            "ring_drops",
            "Ring buffer records the kernel could not deliver (ring full)",
            ring_drops.clone(),
        );
        let budget_truncated_bytes = Counter::default();
        registry.register(
            "budget_truncated_bytes",
            "Bytes not captured because a direction's budget was spent",
            budget_truncated_bytes.clone(),
        );
        let events_stored = Counter::default();
        registry.register(
            "events_stored",
            "Alerts written to the SQLite store",
            events_stored.clone(),
        );
        let events_published = Counter::default();
        registry.register(
            "events_published",
            "Outbox records (alerts, gap records) the MQTT broker acknowledged",
            events_published.clone(),
        );
        let store_errors = Counter::default();
        registry.register(
            "store_errors",
            "Batches the SQLite store failed to write",
            store_errors.clone(),
        );
        let filtered = Counter::default();
        registry.register(
            "filtered",
            "Judged connections left out by the configured filters",
            filtered.clone(),
        );
        let open_connections = Gauge::default();
        registry.register(
            "open_connections",
            "Connections being watched (handshake not yet judged)",
            open_connections.clone(),
        );
        let store_failing = Gauge::default();
        registry.register(
            "store_failing",
            "1 while the SQLite store refuses writes (alerts are held in memory), else 0",
            store_failing.clone(),
        );
        Metrics {
            registry,
            handshakes,
            closed_after_handshake,
            alerts,
            ring_drops,
            budget_truncated_bytes,
            events_stored,
            events_published,
            store_errors,
            filtered,
            open_connections,
            store_failing,
            process_labels: std::sync::Mutex::new(std::collections::HashSet::new()),
        }
    }

    /// The `process` label value for `name`: itself while fewer than
    /// [`MAX_PROCESS_LABELS`] are known, else "other".
    pub fn process_label(&self, name: &str) -> String {
        let Ok(mut known) = self.process_labels.lock() else {
            return "other".into();
        };
        if known.contains(name) || known.len() < MAX_PROCESS_LABELS {
            known.insert(name.to_owned());
            name.to_owned()
        } else {
            "other".into()
        }
    }

    /// Prometheus text exposition format.
    pub fn encode(&self) -> String {
        encode_registry(&self.registry)
    }
}

/// Raises a counter to a total kept elsewhere (kernel and store counters only grow).
pub fn raise_to(c: &Counter, total: u64) {
    let now = c.get();
    if total > now {
        c.inc_by(total - now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_format_has_labelled_handshakes_and_totals() {
        let m = Metrics::new();
        m.handshakes
            .get_or_create(&HandshakeLabels {
                outcome: "failed".into(),
                cause: "self_signed".into(),
                version: "TLS 1.3".into(),
            })
            .inc();
        raise_to(&m.ring_drops, 5);
        raise_to(&m.ring_drops, 3);
        let t = m.encode();
        assert!(
            t.contains(
                "tlsmon_handshakes_total{outcome=\"failed\",cause=\"self_signed\",version=\"TLS 1.3\"} 1"
            ),
            "{t}"
        );
        assert!(t.contains("tlsmon_ring_drops_total 5"), "{t}");
        assert!(t.contains("# TYPE tlsmon_open_connections gauge"), "{t}");
    }

    #[test]
    fn process_labels_stay_bounded() {
        let m = Metrics::new();
        for i in 0..MAX_PROCESS_LABELS {
            assert_eq!(m.process_label(&format!("p{i}")), format!("p{i}"));
        }
        assert_eq!(m.process_label("one-too-many"), "other");
        assert_eq!(m.process_label("p7"), "p7", "known names keep their label");
    }
}
