//! Load for `cargo xtask bench mqtt`: the daemon's own publishing path without capture.
//! Alert documents go through the store's writer thread (SQLite, queued in the outbox in the
//! same transaction) and the MQTT publisher (outbox -> broker, deleted on PUBACK), exactly as
//! in `tlsmon run`; only their source is synthetic, because no real handshake source on one
//! machine makes 20,000 distinct alerts a second.
//!
//! `mqtt_load BROKER_URL DB_PATH EVENTS RATE`: produces EVENTS alerts at RATE a second (0 = as
//! fast as the writer takes them), prints `produced N in S s` on stdout, then keeps
//! publishing until its stdin closes and prints `backlog N` on the way out.

use std::{
    io::{BufRead, Write as _},
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use tlsmon::{
    alert::{
        Update,
        document::{Endpoint, Event, Kind, ProcessRef, SCHEMA, Severity, TlsFacts},
    },
    config::{Config, Host},
    flow::Role,
    mqtt::Settings,
    publish::Publisher,
    state::DaemonState,
    store::{OutboxPolicy, Retention, Write, Writer},
};

fn event(n: u64, now_ms: u64, host: &Host) -> Event {
    let t = tlsmon::clock::rfc3339(now_ms.saturating_mul(1_000_000));
    Event {
        schema: SCHEMA,
        event_id: uuid::Uuid::now_v7().to_string(),
        time: t.clone(),
        host: host.clone(),
        kind: Kind::HandshakeFailure,
        severity: Severity::Error,
        process: Some(ProcessRef {
            pid: 4242,
            comm: "nginx".into(),
            exe: Some("/usr/sbin/nginx".into()),
            unit: Some("nginx.service".into()),
            uid: Some(33),
            container: None,
        }),
        role: Role::Server,
        local: Some(Endpoint {
            ip: "10.0.0.1".into(),
            port: 443,
        }),
        peer: Some(Endpoint {
            ip: format!("10.{}.{}.{}", (n >> 16) & 255, (n >> 8) & 255, n & 255),
            port: 40_000 + (n % 20_000) as u16,
        }),
        service: Some(Endpoint {
            ip: "10.0.0.1".into(),
            port: 443,
        }),
        sni: Some("api.example.com".into()),
        upgrade: None,
        remedy: None,
        tls: TlsFacts::default(),
        alert: None,
        stage: Some("client_hello".into()),
        cause: "protocol_version_mismatch".into(),
        inferred: false,
        evidence: tlsmon::alert::Evidence::Wire,
        message: "The client offered only TLS 1.0 and TLS 1.1; the server accepts TLS 1.2 \
                  and TLS 1.3."
            .into(),
        certificate: None,
        count: 1,
        first_seen: t.clone(),
        last_seen: t,
        peers: None,
        first_ms: now_ms,
        last_ms: now_ms,
    }
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let [_, broker, db, events, rate] = args.as_slice() else {
        bail!("usage: mqtt_load BROKER_URL DB_PATH EVENTS RATE");
    };
    let events: u64 = events.parse().context("EVENTS")?;
    let rate: u64 = rate.parse().context("RATE")?;
    let db = PathBuf::from(db);
    let cfg = tlsmon::config::parse(
        &format!("[host]\nid = \"bench-host\"\n\n[mqtt]\nbroker = \"{broker}\"\n"),
        "bench",
    )?;
    let host = Host::detect(Some("bench-host"), Some("bench"));
    let settings = Settings::from_config(&cfg, &host)?.context("no broker")?;
    let writer = Writer::start(
        &db,
        Retention {
            max_age_ms: u64::MAX / 4,
            max_bytes: u64::MAX / 4,
        },
        Some(OutboxPolicy {
            max_events: Config::default().mqtt.outbox_max_events.get(),
            max_age_ms: 3_600_000,
            host: host.clone(),
        }),
    )?;
    let shared = Arc::new(DaemonState::new(db.clone(), String::new()));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let publisher =
        rt.block_on(async { Publisher::start(settings, db.clone(), writer.tx.clone(), shared) });
    // The producer runs on its own thread, like the daemon's judge feeding the writer.
    let tx = writer.tx.clone();
    let producer = std::thread::spawn(move || -> anyhow::Result<Duration> {
        let t0 = Instant::now();
        for n in 0..events {
            if rate > 0 && n % 100 == 0 {
                let due = Duration::from_secs_f64(n as f64 / rate as f64);
                if let Some(wait) = due.checked_sub(t0.elapsed()) {
                    std::thread::sleep(wait);
                }
            }
            let now = tlsmon::clock::now_ms();
            tx.send(Write::Alert(Update::New(Box::new(event(n, now, &host)))))?;
        }
        Ok(t0.elapsed())
    });
    rt.block_on(async {
        // Publish until stdin closes (the benchmark decides when it has seen enough).
        let (done_tx, mut done_rx) = tokio::sync::oneshot::channel::<()>();
        std::thread::spawn(move || {
            let took = producer.join().ok().and_then(Result::ok);
            if let Some(took) = took {
                println!("produced {events} in {:.3}", took.as_secs_f64());
                let _ = std::io::stdout().flush();
            }
            for _ in std::io::stdin().lock().lines() {}
            let _ = done_tx.send(());
        });
        loop {
            tokio::select! {
                _ = &mut done_rx => break,
                _ = tokio::time::sleep(Duration::from_secs(3600)) => {}
            }
        }
        publisher.stop(Duration::from_secs(5)).await;
    });
    writer.flush(Duration::from_secs(10));
    let conn = tlsmon::store::open_reader(&db)?;
    println!("backlog {}", tlsmon::store::outbox::backlog(&conn)?);
    writer.close();
    Ok(())
}
