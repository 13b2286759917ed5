//! What the running daemon shares between its parts: readiness, the attached probes, the
//! kernel's counters, handshake totals, the Prometheus metrics, and the MQTT publisher's
//! health. The daemon loop and the publisher write it; the status endpoint and the MQTT
//! summary read it. It holds no behaviour, so none of its readers depends on another.

pub mod metrics;

use std::{
    collections::BTreeMap,
    path::PathBuf,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Instant,
};

use crate::{capture::KernelCounters, flow::Incomplete};
pub use metrics::Metrics;

/// The daemon's shared counters and flags.
pub struct DaemonState {
    pub started: Instant,
    pub ready: AtomicBool,
    pub probes: Mutex<Vec<String>>,
    pub kernel: Mutex<KernelCounters>,
    pub judged: AtomicU64,
    pub ok: AtomicU64,
    pub failed: AtomicU64,
    pub warnings: AtomicU64,
    pub alerts: AtomicU64,
    pub metrics: Metrics,
    pub db: PathBuf,
    pub config: String,
    /// The MQTT publisher's health, when one runs.
    pub mqtt: Mutex<Option<Arc<MqttHealth>>>,
    /// Connections whose capture missed what their outcome would rest on, by reason
    /// (index: `Incomplete::ALL`).
    pub incomplete: [AtomicU64; Incomplete::ALL.len()],
    /// Handshakes closed without data and nothing wrong on the wire, by service (`ip:port`;
    /// past `MAX_SERVICES` distinct services the rest count under "other").
    pub closed_without_data: Mutex<BTreeMap<String, u64>>,
    /// What is known to speak TLS, as of the daemon's last copy (every few seconds).
    pub tls_services: Mutex<TlsServicesSnapshot>,
    /// Who the daemon runs as once its probes are attached.
    pub run_as: Mutex<RunAs>,
    /// The store's health, as of the daemon's last copy (every second).
    pub store: Mutex<StoreHealth>,
}

/// Whether the database takes writes, and what waits or was lost while it did not.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct StoreHealth {
    /// Why writing fails now (a full disk), None while it works.
    pub failing: Option<String>,
    /// Writes held in memory until it takes them again.
    pub held_writes: u64,
    /// Alerts dropped from memory before it came back (logged, and in a gap record).
    pub unstored_alerts: u64,
}

/// The daemon's user and capabilities after start-up.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct RunAs {
    pub user: String,
    /// The capabilities it kept (`cap_dac_read_search`, `cap_sys_ptrace`); every one when it stayed root.
    pub capabilities: Vec<String>,
    /// Why it is still root, when it is.
    pub root_because: Option<String>,
}

/// Ports configured as TLS and services learned to speak it.
#[derive(Debug, Clone, Default)]
pub struct TlsServicesSnapshot {
    pub configured_ports: Vec<u16>,
    /// (service `ip:port`, monotonic ns last seen completing a handshake), oldest first.
    pub learned: Vec<(String, u64)>,
}

/// Distinct services counted one by one (the status page and the metric labels stay bounded).
pub const MAX_SERVICES: usize = 256;

impl DaemonState {
    pub fn new(db: PathBuf, config: String) -> Self {
        DaemonState {
            started: Instant::now(),
            ready: AtomicBool::new(false),
            probes: Mutex::new(Vec::new()),
            kernel: Mutex::new(KernelCounters::default()),
            judged: AtomicU64::new(0),
            ok: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            warnings: AtomicU64::new(0),
            alerts: AtomicU64::new(0),
            metrics: Metrics::new(),
            db,
            config,
            mqtt: Mutex::new(None),
            incomplete: Default::default(),
            closed_without_data: Mutex::new(BTreeMap::new()),
            tls_services: Mutex::new(TlsServicesSnapshot::default()),
            run_as: Mutex::new(RunAs::default()),
            store: Mutex::new(StoreHealth::default()),
        }
    }

    /// One more handshake closed without data on `service`; the name it was counted under
    /// (`service`, or "other" once `MAX_SERVICES` are known).
    pub fn count_closed_without_data(&self, service: String) -> String {
        let Ok(mut m) = self.closed_without_data.lock() else {
            return service;
        };
        let key = if m.contains_key(&service) || m.len() < MAX_SERVICES {
            service
        } else {
            "other".to_owned()
        };
        *m.entry(key.clone()).or_default() += 1;
        key
    }

    pub fn count_incomplete(&self, reason: Incomplete) {
        if let Some(i) = Incomplete::ALL.iter().position(|r| *r == reason) {
            self.incomplete[i].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Connections with an incomplete capture, by reason (reasons never seen left out).
    pub fn incomplete_by_reason(&self) -> BTreeMap<&'static str, u64> {
        Incomplete::ALL
            .iter()
            .zip(&self.incomplete)
            .map(|(r, n)| (r.as_str(), n.load(Ordering::Relaxed)))
            .filter(|(_, n)| *n > 0)
            .collect()
    }
}

/// What the MQTT publisher did, for the status endpoint and metrics.
#[derive(Debug, Default)]
pub struct MqttHealth {
    pub connected: AtomicBool,
    pub published: AtomicU64,
    pub acked: AtomicU64,
    pub connects: AtomicU64,
    pub last_error: Mutex<Option<String>>,
    /// Monotonic ns of the last PUBACK (0: none yet).
    pub last_ack_ns: AtomicU64,
    /// Messages sent and not acknowledged yet, in this connection.
    pub in_flight: AtomicU64,
}
