use super::*;
use crate::alert::{AlertEngine, AlertPolicy};
use crate::store::test_support::{event, temp_db};
use crate::store::{FailureQuery, TopBy, failures, open, open_reader, top};

#[test]
fn counted_alerts_keep_one_row_with_the_count_in_the_document() {
    let path = temp_db("count");
    let mut c = open(&path).unwrap();
    let mut engine = AlertEngine::new(AlertPolicy {
        window_ms: 60_000,
        flood_peers: 50,
    });
    let mut batch: Vec<Write> = (0..1000)
        .map(|i| Write::Alert(engine.observe(event("127.0.0.1", 1000 + i))))
        .collect();
    batch.push(Write::Alert(engine.observe(event("10.9.9.9", 5000))));
    assert_eq!(apply(&mut c, &batch, false).unwrap(), 2);
    let all = failures(&c, &FailureQuery::default()).unwrap();
    assert_eq!(all.len(), 2);
    let lo = &all[1];
    assert_eq!(lo["count"], 1000);
    assert_eq!(lo["last_seen"], "t1999", "the last occurrence's time");
    let only = failures(
        &c,
        &FailureQuery {
            peer: Some("10.0.0.0/8".into()),
            process: Some("curl".into()),
            ..FailureQuery::default()
        },
    )
    .unwrap();
    assert_eq!(only.len(), 1);
    assert_eq!(only[0]["peer"]["ip"], "10.9.9.9");
    let none = failures(
        &c,
        &FailureQuery {
            cause: Some("cert_expired".into()),
            ..FailureQuery::default()
        },
    )
    .unwrap();
    assert!(none.is_empty());
    assert!(
        failures(
            &c,
            &FailureQuery {
                peer: Some("x".into()),
                ..Default::default()
            }
        )
        .is_err()
    );
    let top = top(&c, TopBy::Process, 0, 5).unwrap();
    assert_eq!(top, vec![("curl".into(), "self_signed".into(), 1001)]);
}

#[test]
fn retention_deletes_by_age() {
    let path = temp_db("retention");
    let mut c = open(&path).unwrap();
    let mut engine = AlertEngine::new(AlertPolicy {
        window_ms: 1,
        flood_peers: 50,
    });
    let batch = vec![
        Write::Alert(engine.observe(event("10.0.0.1", 1_000))),
        Write::Alert(engine.observe(event("10.0.0.2", 50_000))),
    ];
    apply(&mut c, &batch, false).unwrap();
    let r = Retention {
        max_age_ms: 10_000,
        max_bytes: u64::MAX,
    };
    assert_eq!(enforce_retention(&c, r, 55_000).unwrap(), 1);
    assert_eq!(failures(&c, &FailureQuery::default()).unwrap().len(), 1);
}

#[test]
fn the_writer_thread_commits_and_flushes() {
    let path = temp_db("writer");
    let w = Writer::start(
        &path,
        Retention {
            max_age_ms: u64::MAX / 2,
            max_bytes: u64::MAX,
        },
        None,
    )
    .unwrap();
    let mut engine = AlertEngine::new(AlertPolicy {
        window_ms: 60_000,
        flood_peers: 50,
    });
    w.tx.send(Write::Alert(engine.observe(event("127.0.0.1", 1))))
        .unwrap();
    w.tx.send(Write::Counter("ring_drops", 3)).unwrap();
    assert!(w.flush(Duration::from_secs(10)));
    let r = open_reader(&path).unwrap();
    assert_eq!(failures(&r, &FailureQuery::default()).unwrap().len(), 1);
    let drops: i64 = r
        .query_row(
            "SELECT value FROM counters WHERE name = 'ring_drops'",
            [],
            |x| x.get(0),
        )
        .unwrap();
    assert_eq!(drops, 3);
    w.close();
}

#[test]
fn counted_successes_add_up_per_program_peer_version_and_cipher() {
    let path = temp_db("successes");
    let mut c = open(&path).unwrap();
    let s = |count, at_ms| super::super::Success {
        exe: "/usr/bin/curl".into(),
        peer_ip: "127.0.0.1".into(),
        version: "TLSv1.3".into(),
        cipher: "TLS_AES_256_GCM_SHA384".into(),
        count,
        at_ms,
    };
    apply(&mut c, &[Write::Successes(vec![s(3, 1_000)])], false).unwrap();
    apply(&mut c, &[Write::Successes(vec![s(2, 900)])], false).unwrap();
    let (count, last): (i64, i64) = c
        .query_row("SELECT count, last_ms FROM successes", [], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .unwrap();
    assert_eq!((count, last), (5, 1_000));
}

fn forever() -> Retention {
    Retention {
        max_age_ms: u64::MAX / 2,
        max_bytes: u64::MAX,
    }
}

#[test]
fn a_database_removed_under_the_writer_is_started_again_before_the_next_write() {
    let path = temp_db("removed");
    let w = Writer::start(&path, forever(), None).unwrap();
    let mut engine = AlertEngine::new(AlertPolicy {
        window_ms: 60_000,
        flood_peers: 50,
    });
    w.tx.send(Write::Alert(engine.observe(event("127.0.0.1", 1))))
        .unwrap();
    assert!(w.flush(Duration::from_secs(10)));
    for suffix in ["", "-wal", "-shm"] {
        let mut p = path.as_os_str().to_owned();
        p.push(suffix);
        let _ = std::fs::remove_file(p);
    }
    w.tx.send(Write::Alert(engine.observe(event("127.0.0.2", 2))))
        .unwrap();
    assert!(w.flush(Duration::from_secs(10)));
    let r = open_reader(&path).expect("a new database at the path");
    let rows = failures(&r, &FailureQuery::default()).unwrap();
    assert_eq!(
        rows.len(),
        1,
        "the write after the removal is in the new file"
    );
    assert_eq!(w.stats.reopened.load(Ordering::Relaxed), 1);
    w.close();
}

#[test]
fn a_file_that_is_not_a_database_is_moved_aside_and_a_new_one_started() {
    let path = temp_db("damaged");
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(&path, vec![0x5a; 8192]).unwrap();
    let w = Writer::start(&path, forever(), None).expect("started over the damaged file");
    let dir = path.parent().unwrap();
    let name = path.file_name().unwrap().to_string_lossy().into_owned();
    let aside: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with(&format!("{name}.corrupt-"))
        })
        .collect();
    assert_eq!(aside.len(), 1, "the damaged file kept aside");
    assert_eq!(std::fs::read(aside[0].path()).unwrap(), vec![0x5a; 8192]);
    assert!(w.flush(Duration::from_secs(10)));
    w.close();
}
