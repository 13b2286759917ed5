//! `tlsmon run`: the service. Wires capture → judge → filters → events → alerts → store,
//! keeps the shared state the status endpoint ([`endpoint`]) and the publisher read, logs
//! one warn line per alert, talks to systemd (READY after the probes attach, STATUS,
//! WATCHDOG, STOPPING), reloads filters and alert thresholds on SIGHUP and flushes the store
//! on SIGTERM.

pub mod endpoint;
pub mod privileges;

use std::{
    collections::HashMap,
    net::IpAddr,
    path::PathBuf,
    sync::{Arc, atomic::Ordering},
    time::Duration,
};

use anyhow::Context as _;
use tokio::signal::unix::{SignalKind, signal};

use crate::{
    alert::{self, AlertEngine, AlertPolicy, Update, WeakPolicy, log_line},
    capture::{
        Capture, CaptureConfig, KernelCounters,
        process::ConnectionProcesses,
        socket_holder::{self, HolderWorker},
    },
    clock::{monotonic_ns, unix_ns},
    config::{self, Config, Host},
    flow::{CaptureEvent, FlowLimits},
    handshake::{DEFAULT_TLS_PORTS, HandshakeOutcome, names},
    judge::{Judge, Verdict, filters},
    mqtt,
    publish::Publisher,
    state::{
        DaemonState, StoreHealth, TlsServicesSnapshot,
        metrics::{AlertLabels, HandshakeLabels, ServiceLabels, raise_to},
    },
    store::{OutboxPolicy, Retention, Success, Write, Writer},
};

fn alert_policy(c: &Config) -> AlertPolicy {
    AlertPolicy {
        window_ms: c.alerts.window_secs.get() * 1000,
        flood_peers: c.alerts.flood_peers.get() as usize,
    }
}

fn weak_policy(c: &Config) -> WeakPolicy {
    WeakPolicy {
        warn_legacy_versions: c.alerts.warn_legacy_versions,
        expiry_warning_days: c.alerts.expiry_warning_days.get() as i64,
    }
}

fn capture_config(c: &Config) -> CaptureConfig {
    let mut cfg = CaptureConfig {
        direction_budget: c.capture.direction_budget.get() as u32,
        ring_bytes: c.capture.ring_bytes.0,
        ..CaptureConfig::default()
    };
    cfg.tls_ports.extend(&c.capture.tls_ports);
    cfg
}

/// systemd notifications (no-ops outside systemd).
fn notify(state: &[sd_notify::NotifyState]) {
    let _ = sd_notify::notify(state);
}

/// Where the configuration came from, for reloads.
pub struct Origin {
    pub explicit: Option<PathBuf>,
    pub source: config::Source,
}

/// A success's program (exe, or comm), peer, version and cipher.
type SuccessKey = (String, Option<IpAddr>, u16, u16);

/// The state of a running daemon (everything but the capture and the tokio bits).
struct Daemon {
    cfg: Config,
    host: Host,
    judge: Judge,
    processes: ConnectionProcesses,
    /// Names connections the kernel did not, through /proc.
    holder_fallback: HolderWorker,
    alerts: AlertEngine,
    writer: Writer,
    shared: Arc<DaemonState>,
    last_kernel: KernelCounters,
    /// Ring drops already noted to the judge.
    ring_drops_seen: u64,
    /// Successes since the last write, by (exe, peer, version, cipher): (count, last unix
    /// ms). Written once a second: a row write per success cost the store thread a wake-up
    /// and an upsert for every handshake.
    successes: HashMap<SuccessKey, (u64, u64)>,
    /// The latest count of each open alert repeated since the last write, by event id: a
    /// failure or warning that repeats a thousand times a second reaches the store (and the
    /// outbox) once a second, not once per handshake.
    counts: HashMap<String, Update>,
}

impl Daemon {
    /// One capture event through attribution and the judge.
    fn event(&mut self, ev: CaptureEvent, cap: &mut Capture) {
        self.processes.observe(&ev);
        if let Some(v) = self.judge.apply(ev) {
            self.verdict(v, cap);
        }
    }

    /// One judged connection: count it, filter it, raise or count its alert.
    fn verdict(&mut self, v: Verdict, cap: &mut Capture) {
        let process = self.processes.take(v.cookie, v.owner.as_ref());
        if v.early {
            cap.stop_flow(v.cookie);
        }
        for change in self.judge.learn(&v, monotonic_ns()) {
            cap.follow(change);
        }
        if v.incomplete.is_none() && !v.outcome.is_decided() {
            return;
        }
        if !filters::admits(&self.cfg.filters, process.as_ref(), v.conn.as_ref()) {
            self.shared.metrics.filtered.inc();
            return;
        }
        let s = &self.shared;
        if let Some(reason) = v.incomplete {
            // The capture missed what the outcome would rest on: counted, never a failure.
            s.count_incomplete(reason);
            s.metrics
                .handshakes
                .get_or_create(&HandshakeLabels {
                    outcome: "capture_incomplete".to_owned(),
                    cause: reason.as_str().to_owned(),
                    version: String::new(),
                })
                .inc();
            return;
        }
        s.judged.fetch_add(1, Ordering::Relaxed);
        let (cause, version) = match &v.outcome {
            HandshakeOutcome::Failed(d) => {
                s.failed.fetch_add(1, Ordering::Relaxed);
                let version = d
                    .selected
                    .as_ref()
                    .map(|c| c.version_name.to_string())
                    .unwrap_or_default();
                (d.cause.slug(), version)
            }
            HandshakeOutcome::Completed(c) if c.closed_without_data_ms.is_some() => {
                // A health check, a probe, or a rejection the wire cannot show: counted per
                // service, never a failure.
                let service = v.conn.as_ref().map(|c| (c.service(), c.role));
                if let Some((addr, role)) = service {
                    let counted = s.count_closed_without_data(addr.to_string());
                    s.metrics
                        .closed_after_handshake
                        .get_or_create(&ServiceLabels {
                            service: counted,
                            role: alert::wire_name(&role),
                        })
                        .inc();
                }
                (String::new(), c.selected.version_name.to_string())
            }
            HandshakeOutcome::Completed(c) => {
                s.ok.fetch_add(1, Ordering::Relaxed);
                let peer_ip = v.conn.as_ref().map(|c| c.peer.ip());
                let exe = process
                    .as_ref()
                    .map(|p| {
                        p.exe
                            .as_ref()
                            .map_or_else(|| p.comm.clone(), |e| e.display().to_string())
                    })
                    .unwrap_or_default();
                let key = (exe, peer_ip, c.selected.version, c.selected.cipher);
                let (count, last) = self.successes.entry(key).or_default();
                *count += 1;
                *last = (*last).max(v.first_unix_ns / 1_000_000);
                (String::new(), c.selected.version_name.to_string())
            }
            _ => (String::new(), String::new()),
        };
        s.metrics
            .handshakes
            .get_or_create(&HandshakeLabels {
                outcome: v.outcome.kind().to_owned(),
                cause,
                version,
            })
            .inc();
        let Some(ev) =
            alert::from_verdict(&v, process.as_ref(), &self.host, weak_policy(&self.cfg))
        else {
            return;
        };
        if ev.kind == alert::Kind::WeakHandshake {
            s.warnings.fetch_add(1, Ordering::Relaxed);
        }
        let update = self.alerts.observe_at(ev, monotonic_ns() / 1_000_000);
        if let Update::New(ev) = &update {
            s.alerts.fetch_add(1, Ordering::Relaxed);
            s.metrics
                .alerts
                .get_or_create(&AlertLabels {
                    kind: alert::wire_name(&ev.kind),
                    cause: ev.cause.clone(),
                    process: s
                        .metrics
                        .process_label(ev.process.as_ref().map_or("unknown", |p| p.identity())),
                })
                .inc();
            tracing::warn!(target: "tlsmon::alert", "alert {}", log_line::log_fields(ev));
        }
        match update {
            Update::Count { ref event_id, .. } => {
                self.counts.insert(event_id.clone(), update);
            }
            Update::New(_) => {
                if self.writer.tx.try_send(Write::Alert(update)).is_err() {
                    s.metrics.store_errors.inc();
                }
            }
        }
    }

    /// Forgets learned TLS services not seen for a day and copies what is known for the
    /// status endpoint.
    fn tls_services(&mut self, cap: &mut Capture, mono: u64) {
        for change in self.judge.forget_stale_services(mono) {
            cap.follow(change);
        }
        let known = self.judge.tls_services();
        let snapshot = TlsServicesSnapshot {
            configured_ports: known.configured(),
            learned: known
                .learned()
                .into_iter()
                .map(|(a, t)| (a.to_string(), t))
                .collect(),
        };
        if let Ok(mut s) = self.shared.tls_services.lock() {
            *s = snapshot;
        }
    }

    /// The counts of repeated alerts since the last call, each alert's latest, to the store.
    fn write_counts(&mut self) {
        for (_, update) in self.counts.drain() {
            if self.writer.tx.try_send(Write::Alert(update)).is_err() {
                self.shared.metrics.store_errors.inc();
            }
        }
    }

    /// The successes counted since the last call, to the store in one write.
    fn write_successes(&mut self) {
        if self.successes.is_empty() {
            return;
        }
        let counted = self
            .successes
            .drain()
            .map(|((exe, peer, version, cipher), (count, at_ms))| Success {
                exe,
                peer_ip: peer.map(|ip| ip.to_string()).unwrap_or_default(),
                version: names::version_name(version).to_string(),
                cipher: names::cipher_name(cipher).to_string(),
                count,
                at_ms,
            })
            .collect();
        if self.writer.tx.try_send(Write::Successes(counted)).is_err() {
            self.shared.metrics.store_errors.inc();
        }
    }

    /// Kernel and store counters into the endpoint and metrics.
    fn counters(&mut self, cap: &Capture) {
        let k = cap.counters();
        let m = &self.shared.metrics;
        raise_to(&m.ring_drops, k.ring_drops);
        raise_to(&m.budget_truncated_bytes, k.budget_truncated_bytes);
        let st = &self.writer.stats;
        raise_to(&m.events_stored, st.alerts_inserted.load(Ordering::Relaxed));
        raise_to(&m.store_errors, st.write_errors.load(Ordering::Relaxed));
        m.store_failing.set(i64::from(st.failing().is_some()));
        if let Ok(mut h) = self.shared.store.lock() {
            *h = StoreHealth {
                failing: st.failing(),
                held_writes: st.held.load(Ordering::Relaxed),
                unstored_alerts: st.unstored_alerts.load(Ordering::Relaxed),
            };
        }
        if let Some(p) = self.shared.mqtt.lock().ok().and_then(|g| g.clone()) {
            raise_to(&m.events_published, p.acked.load(Ordering::Relaxed));
        }
        m.open_connections.set(self.judge.open_connections() as i64);
        if k.ring_drops > self.last_kernel.ring_drops {
            // Lost records are an event of their own: what was seen may be incomplete.
            tracing::warn!(
                target: "tlsmon::alert",
                "capture_loss lost_records={} total_lost_records={}",
                k.ring_drops - self.last_kernel.ring_drops,
                k.ring_drops
            );
            let _ = self
                .writer
                .tx
                .try_send(Write::Counter("ring_drops", k.ring_drops));
        }
        self.last_kernel = k;
        if let Ok(mut g) = self.shared.kernel.lock() {
            *g = k;
        }
    }

    /// SIGHUP: re-read the file; apply filters and alert thresholds, name what needs a restart.
    fn reload(&mut self, origin: &Origin) {
        match config::load(origin.explicit.as_deref()) {
            Err(e) => tracing::error!("reload refused, keeping the running configuration: {e}"),
            Ok((new, source)) => {
                let restart = config::needs_restart(&self.cfg, &new);
                self.alerts.set_policy(alert_policy(&new));
                self.cfg.filters = new.filters.clone();
                self.cfg.alerts = new.alerts.clone();
                if restart.is_empty() {
                    tracing::info!(config = %source, "reloaded filters and alert thresholds");
                } else {
                    tracing::warn!(
                        config = %source,
                        "reloaded filters and alert thresholds; changes to [{}] need a restart",
                        restart.join("], [")
                    );
                }
            }
        }
    }
}

/// Runs the daemon until SIGTERM/SIGINT.
pub async fn run(cfg: Config, origin: Origin) -> anyhow::Result<()> {
    let shared = Arc::new(DaemonState::new(
        cfg.store.path.clone(),
        origin.source.to_string(),
    ));
    let listeners =
        endpoint::Listeners::start(&cfg.status, &cfg.daemon.user, shared.clone()).await?;
    let endpoint = listeners.described.clone();
    // The probes first: every connection tlsmon opens afterwards (MQTT) is seen at its
    // connect() as its own, and never judged. Then root (or the capabilities to attach)
    // goes, before any thread starts and before the endpoint's task first runs (nothing
    // awaits in between): what follows parses what strangers send. The store's directory
    // is made first, to be handed over.
    if let Some(dir) = cfg
        .store
        .path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
    {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let mut cap = Capture::start(&capture_config(&cfg))?;
    if let Ok(mut p) = shared.probes.lock() {
        *p = cap.attached.iter().map(|s| s.to_string()).collect();
    }
    let run_as = privileges::drop_and_describe(&cfg.daemon.user, &cfg.store.path)?;
    if let Ok(mut r) = shared.run_as.lock() {
        *r = run_as;
    }
    let host = Host::detect(
        cfg.host.id.as_ref().map(|i| i.0.as_str()),
        cfg.host.name.as_deref(),
    );
    let mqtt = mqtt::Settings::from_config(&cfg, &host)?;
    let writer = Writer::start(
        &cfg.store.path,
        Retention {
            max_age_ms: cfg.store.retention_days.get() * 86_400_000,
            max_bytes: cfg.store.max_mb.get() * 1024 * 1024,
        },
        mqtt.as_ref().map(|_| OutboxPolicy {
            max_events: cfg.mqtt.outbox_max_events.get(),
            max_age_ms: cfg.mqtt.outbox_max_age_hours.get() * 3_600_000,
            host: host.clone(),
        }),
    )?;
    let publisher = mqtt.map(|settings| {
        tracing::info!(broker = %settings.broker, topic = %settings.topics.events, "publishing to MQTT");
        Publisher::start(
            settings,
            cfg.store.path.clone(),
            writer.tx.clone(),
            shared.clone(),
        )
    });
    if let (Some(p), Ok(mut m)) = (&publisher, shared.mqtt.lock()) {
        *m = Some(p.stats.clone());
    }
    shared.ready.store(true, Ordering::Relaxed);
    tracing::info!(
        config = %origin.source,
        endpoint = %endpoint,
        database = %cfg.store.path.display(),
        probes = cap.attached.len(),
        "tlsmon ready"
    );
    let mut tls_ports = DEFAULT_TLS_PORTS.to_vec();
    tls_ports.extend(&cfg.capture.tls_ports);
    let mut d = Daemon {
        host,
        judge: Judge::new(
            FlowLimits {
                bytes_per_direction: cfg.capture.direction_budget.get() as usize,
                idle_ns: cfg.capture.idle_timeout_secs.get() * 1_000_000_000,
                max_flows: cfg.capture.max_flows.get() as usize,
            },
            tls_ports,
        ),
        processes: ConnectionProcesses::default(),
        holder_fallback: HolderWorker::start().context("cannot start the /proc lookup thread")?,
        alerts: AlertEngine::new(alert_policy(&cfg)),
        writer,
        shared: shared.clone(),
        last_kernel: KernelCounters::default(),
        ring_drops_seen: 0,
        successes: HashMap::new(),
        counts: HashMap::new(),
        cfg,
    };
    // tlsmon's own connections (MQTT) are never judged, even when the kernel could not
    // name them at connect().
    d.judge.ignore_tgid(std::process::id());
    d.tls_services(&mut cap, monotonic_ns());
    notify(&[
        sd_notify::NotifyState::Ready,
        sd_notify::NotifyState::Status(&format!(
            "capturing with {} probes; status on {endpoint}",
            cap.attached.len()
        )),
    ]);
    let watchdog = sd_notify::watchdog_enabled().is_some();
    let mut tick =
        tokio::time::interval(Duration::from_millis(d.cfg.capture.drain_interval_ms.get()));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    let mut buf = Vec::new();
    let mut last_second = 0u64;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = hup.recv() => { d.reload(&origin); continue; }
        }
        let mono = monotonic_ns();
        d.judge.set_unix_offset(unix_ns() as i64 - mono as i64);
        cap.drain(&mut buf);
        // Records lost by now may belong to any connection alive now.
        let drops = cap.ring_drops();
        if drops > d.ring_drops_seen {
            d.ring_drops_seen = drops;
            d.judge.note_ring_loss(mono);
        }
        for rec in buf.drain(..) {
            match rec {
                Ok(ev) => d.event(ev, &mut cap),
                Err(e) => tracing::warn!(error = %e, "undecodable ring record"),
            }
        }
        for v in d.judge.take_evicted(mono) {
            d.verdict(v, &mut cap);
        }
        // Answers come a walk of /proc later: only for connections still watched (one
        // evicted or judged meanwhile must not come back as an empty flow).
        for ev in d.holder_fallback.answers() {
            if d.judge.watching(ev.cookie()) {
                d.event(ev, &mut cap);
            }
        }
        if d.holder_fallback.due(mono) {
            let unowned = d
                .judge
                .unowned(mono, socket_holder::GRACE_NS, socket_holder::PER_LOOKUP);
            if !unowned.is_empty() {
                d.holder_fallback.ask(mono, unowned);
            }
        }
        for v in d.judge.expire(mono) {
            d.verdict(v, &mut cap);
        }
        let second = mono / 1_000_000_000;
        if second != last_second {
            last_second = second;
            d.alerts.expire(mono / 1_000_000);
            d.write_successes();
            d.write_counts();
            d.counters(&cap);
            if second.is_multiple_of(5) {
                d.tls_services(&mut cap, mono);
            }
            if watchdog {
                notify(&[sd_notify::NotifyState::Watchdog]);
            }
            if second.is_multiple_of(10) {
                notify(&[sd_notify::NotifyState::Status(&format!(
                    "{} handshakes judged, {} failed, {} alerts, {} ring drops",
                    shared.judged.load(Ordering::Relaxed),
                    shared.failed.load(Ordering::Relaxed),
                    shared.alerts.load(Ordering::Relaxed),
                    d.last_kernel.ring_drops
                ))]);
            }
        }
    }
    notify(&[sd_notify::NotifyState::Stopping]);
    tracing::info!("stopping: judging open connections and flushing the store");
    shared.ready.store(false, Ordering::Relaxed);
    cap.drain(&mut buf);
    for ev in buf.drain(..).flatten() {
        d.event(ev, &mut cap);
    }
    for v in d.judge.drain(monotonic_ns()) {
        d.verdict(v, &mut cap);
    }
    d.write_successes();
    d.write_counts();
    d.counters(&cap);
    let _ = d
        .writer
        .tx
        .try_send(Write::Counter("ring_drops", d.last_kernel.ring_drops));
    if !d.writer.flush(Duration::from_secs(10)) {
        tracing::error!("the store did not confirm the last writes within 10 s");
    }
    if let Some(p) = publisher {
        // `offline` on the status topic; what is not acknowledged stays in the outbox.
        p.stop(Duration::from_secs(5)).await;
        let _ = d.writer.flush(Duration::from_secs(10));
    }
    d.writer.close();
    listeners.stop().await;
    drop(cap);
    tracing::info!("stopped");
    Ok(())
}

/// `tlsmon check-config`: the configuration as it would run, or the first error.
pub fn check_config(explicit: Option<&std::path::Path>) -> anyhow::Result<String> {
    let (cfg, source) = config::load(explicit)?;
    let mode = |p: &std::path::Path| {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::metadata(p).ok().map(|m| m.permissions().mode())
    };
    let warnings: String = config::readable_secrets(&cfg, &source, mode)
        .iter()
        .map(|w| format!("  warning: {w}\n"))
        .collect();
    Ok(format!(
        "{source}: ok\n{warnings}  status endpoint {}\n  database {} (retention {} days, {} MB)\n  alert window {} s, flood summary above {} peers\n",
        cfg.status.listen,
        cfg.store.path.display(),
        cfg.store.retention_days.get(),
        cfg.store.max_mb.get(),
        cfg.alerts.window_secs.get(),
        cfg.alerts.flood_peers.get(),
    ))
}
