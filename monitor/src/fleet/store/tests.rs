use super::*;
use crate::fleet::message::Origin;

fn origin(h: &str) -> Origin {
    Origin {
        site: "s".into(),
        host_id: h.into(),
    }
}

fn ev(id: &str, host: &str, cause: &str, count: u64, last_ms: i64) -> Message {
    Message::Event(Box::new(FleetEvent {
        event_id: id.into(),
        origin: origin(host),
        host_name: format!("{host}.name"),
        kind: "handshake_failure".into(),
        severity: "error".into(),
        role: "client".into(),
        process: "/usr/bin/curl".into(),
        comm: "curl".into(),
        server: "api:443".into(),
        client: format!("{host}.name"),
        sni: None,
        cause: cause.into(),
        message: "m".into(),
        remedy: Some(format!("fix {cause}")),
        count,
        first_ms: last_ms,
        last_ms,
    }))
}

fn temp_store(name: &str) -> (FleetStore, std::path::PathBuf) {
    let dir = std::env::temp_dir().join(format!("tlsmon-fleet-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let s = FleetStore::open(&FleetStoreUrl::Sqlite(dir.join("fleet.db")), None).expect("open");
    (s, dir)
}

#[test]
fn each_event_id_counts_once_and_count_updates_keep_the_highest() {
    let (mut s, dir) = temp_store("dedup");
    let batch = [
        ev("a", "h1", "expired", 1, 1000),
        ev("b", "h1", "self_signed", 1, 1000),
        ev("a", "h1", "expired", 1, 1000),
    ];
    let r = s.record(&batch, 5).expect("record");
    assert_eq!((r.new_events, r.duplicates), (2, 1));
    // A count update of a, then an old redelivery of it.
    let r = s
        .record(
            &[
                ev("a", "h1", "expired", 7, 2000),
                ev("a", "h1", "expired", 1, 1000),
            ],
            6,
        )
        .expect("record");
    assert_eq!((r.new_events, r.duplicates), (0, 2));
    let v = s.view(0, 10_000, 10).expect("view");
    assert_eq!(v.totals.events, 2);
    assert_eq!(v.totals.failures, 8);
    assert_eq!(v.by_cause[0].name, "expired");
    assert_eq!(v.by_cause[0].count, 7);
    // A second store handle on the same file (a second aggregator) sees the same view.
    let mut again =
        FleetStore::open(&FleetStoreUrl::Sqlite(dir.join("fleet.db")), None).expect("open");
    assert_eq!(again.view(0, 10_000, 10).expect("view"), v);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn a_program_has_one_name_whether_its_path_came_first_or_later() {
    let (mut s, dir) = temp_store("names");
    let bare = |id: &str, host: &str| {
        let Message::Event(mut e) = ev(id, host, "self_signed", 1, 100) else {
            unreachable!()
        };
        e.process = "curl".into();
        Message::Event(e)
    };
    // Without a path first (the process was gone), then with it, then without again.
    s.record(&[bare("a", "h1")], 0).expect("record");
    s.record(&[ev("b", "h1", "self_signed", 1, 100)], 0)
        .expect("record");
    s.record(&[bare("c", "h1"), bare("d", "h2")], 0)
        .expect("record");
    let v = s.view(0, 200, 10).expect("view");
    let names: Vec<(String, u64)> = v
        .by_process
        .iter()
        .map(|r| (r.name.clone(), r.count))
        .collect();
    // h2 never reported the path: its curl stays a bare name.
    assert_eq!(
        names,
        [("/usr/bin/curl".to_owned(), 3), ("curl".to_owned(), 1)],
        "{v:#?}"
    );
    drop(s);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn hosts_follow_the_newest_status_and_summary() {
    let (mut s, dir) = temp_store("hosts");
    let status = |state: &str, t: i64| {
        Message::Status(HostStatus {
            origin: origin("h1"),
            host_name: "web1".into(),
            state: state.into(),
            version: "0.1.0".into(),
            time_ms: t,
        })
    };
    s.record(
        &[
            status("online", 10),
            status("offline", 30),
            status("online", 20),
        ],
        1,
    )
    .expect("record");
    s.record(
        &[
            Message::Summary(HostSummary {
                origin: origin("h1"),
                judged: 50,
                failed: 4,
                time_ms: 40,
            }),
            ev("x", "h1", "expired", 4, 100),
            ev("y", "h1", "self_signed", 1, 100),
            Message::Gap(FleetGap {
                event_id: "g".into(),
                origin: origin("h1"),
                reason: "outbox_full".into(),
                dropped: 12,
                first_ms: 50,
                last_ms: 60,
            }),
        ],
        2,
    )
    .expect("record");
    let v = s.view(0, 200, 10).expect("view");
    assert_eq!((v.totals.hosts, v.totals.hosts_online), (1, 0));
    assert_eq!((v.totals.gaps, v.totals.dropped), (1, 12));
    let h = &v.by_host[0];
    assert_eq!(
        (h.state.as_str(), h.judged, h.failed_handshakes, h.failures),
        ("offline", 50, 4, 5)
    );
    assert_eq!(h.top_cause.as_deref(), Some("expired"));
    assert_eq!(v.over_time.len(), 1);
    assert_eq!(s.prune(101).expect("prune"), 3);
    assert_eq!(s.view(0, 200, 10).expect("view").totals.events, 0);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn the_page_filters_by_site_and_cause_and_keeps_each_remedy() {
    let (mut s, dir) = temp_store("page");
    let mut other = ev("c", "h2", "cert_expired", 4, 7_300_000);
    if let Message::Event(e) = &mut other {
        e.origin.site = "dc2".into();
    }
    let batch = [
        ev("a", "h1", "self_signed", 2, 3_700_000),
        ev("b", "h1", "self_signed", 3, 7_250_000),
        other,
    ];
    s.record(&batch, 8_000_000).expect("record");
    let q = |site: Option<&str>, cause: Option<&str>| PageQuery {
        since_ms: 0,
        site: site.map(Into::into),
        cause: cause.map(Into::into),
        top: 10,
    };
    let all = s.page(&q(None, None), 8_000_000).expect("page");
    assert_eq!(
        all.hours,
        [
            (3_600_000, "self_signed".to_owned(), 2),
            (7_200_000, "cert_expired".to_owned(), 4),
            (7_200_000, "self_signed".to_owned(), 3),
        ]
    );
    assert_eq!(all.recent.len(), 3);
    assert_eq!(all.recent[0].remedy.as_deref(), Some("fix cert_expired"));
    assert_eq!((all.sites.len(), all.causes.len()), (2, 2));
    let dc2 = s.page(&q(Some("dc2"), None), 8_000_000).expect("page");
    assert_eq!(dc2.recent.len(), 1);
    assert_eq!(dc2.recent[0].host_name, "h2.name");
    let signed = s
        .page(&q(None, Some("self_signed")), 8_000_000)
        .expect("page");
    assert_eq!(signed.hours.len(), 2);
    assert!(signed.recent.iter().all(|r| r.cause == "self_signed"));
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn a_store_from_before_remedies_gets_the_column() {
    let dir = std::env::temp_dir().join(format!("tlsmon-fleet-old-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("mkdir");
    let path = dir.join("fleet.db");
    let old = super::SCHEMA.replace("    remedy TEXT,\n", "");
    assert_ne!(old, super::SCHEMA, "the schema names the column");
    rusqlite::Connection::open(&path)
        .and_then(|c| c.execute_batch(&old))
        .expect("old schema");
    let mut s = FleetStore::open(&FleetStoreUrl::Sqlite(path), None).expect("open");
    s.record(&[ev("a", "h1", "self_signed", 1, 100)], 200)
        .expect("record into the migrated table");
    let p = s
        .page(
            &PageQuery {
                since_ms: 0,
                site: None,
                cause: None,
                top: 5,
            },
            300,
        )
        .expect("page");
    assert_eq!(p.recent[0].remedy.as_deref(), Some("fix self_signed"));
    let _ = std::fs::remove_dir_all(dir);
}
