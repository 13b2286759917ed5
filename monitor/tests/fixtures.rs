//! Real handshakes recorded from real programs (`cargo xtask fixtures`): each pcap must
//! give the outcome written by hand in its JSON file, through `tlsmon analyze`'s path and
//! when its bytes are fed at every split point, in one-byte chunks and cut at every prefix.

use std::path::{Path, PathBuf};

use monitor_common::tcp_state;
use serde_json::Value;
use tlsmon::analyze::conversations::{Event, Report, replay, verdict};
use tlsmon::analyze::{Pass, analyze_file};
use tlsmon::flow::{
    CaptureEvent, ConnInfo, DataChunk, Direction, FlowLimits, Lifecycle, Role, Task,
};
use tlsmon::handshake::{CloseKind, DEFAULT_TLS_PORTS, HandshakeOutcome, Party};
use tlsmon::judge::Judge;

fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/handshakes")
}

struct Fixture {
    name: String,
    spec: Value,
    report: Report,
}

fn fixtures() -> Vec<Fixture> {
    let mut out = Vec::new();
    let mut entries: Vec<PathBuf> = std::fs::read_dir(fixture_dir())
        .expect("fixture directory")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    entries.sort();
    for json in entries {
        let spec: Value =
            serde_json::from_slice(&std::fs::read(&json).expect("read json")).expect("parse json");
        let name = spec["name"].as_str().expect("name").to_string();
        let port = spec["port"].as_u64().expect("port") as u16;
        let mut ports = DEFAULT_TLS_PORTS.to_vec();
        if spec["tls_port"].as_bool() == Some(true) {
            ports.push(port);
        }
        let mut reports = Vec::new();
        let pass = Pass {
            tls_ports: &ports,
            record: true,
            progress: false,
            workers: 2,
        };
        analyze_file(
            &json.with_extension("pcap"),
            &pass,
            |r| r,
            |r| reports.push(r),
        )
        .unwrap_or_else(|e| panic!("{name}: {e:#}"));
        let mut ours: Vec<Report> = reports
            .into_iter()
            .filter(|r| r.server.port() == port)
            .collect();
        assert_eq!(
            ours.len(),
            1,
            "{name}: expected one connection to port {port}"
        );
        out.push(Fixture {
            name,
            spec,
            report: ours.remove(0),
        });
    }
    assert!(out.len() >= 30, "only {} fixtures found", out.len());
    out
}

/// The facts a fixture's JSON pins down, as read from an outcome.
fn observed(o: &HandshakeOutcome) -> Value {
    match o {
        HandshakeOutcome::Failed(d) => serde_json::json!({
            "outcome": "failed",
            "cause": d.cause.slug(),
            "alert_sender": d.alert.as_ref().map(|a| a.sender.as_str()),
            "alert_code": d.alert.as_ref().and_then(|a| a.code),
            "stage": d.stage.as_str(),
            "inferred": d.inferred,
        }),
        other => serde_json::json!({ "outcome": other.kind() }),
    }
}

fn matches(expect: &Value, got: &Value) -> bool {
    [
        "outcome",
        "cause",
        "alert_sender",
        "alert_code",
        "stage",
        "inferred",
    ]
    .iter()
    // Every field is checked: `null` means "none" (no readable alert code, no cause), never
    // "anything".
    .all(|k| got[k] == expect[k] || (*k == "inferred" && expect[k] == false && got[k].is_null()))
}

#[test]
fn every_fixture_gets_its_expected_cause_sender_and_stage() {
    let mut wrong = Vec::new();
    for f in fixtures() {
        let got = observed(&f.report.outcome);
        if !matches(&f.spec["expect"], &got) {
            wrong.push(format!(
                "{}: expected {} got {}",
                f.name, f.spec["expect"], got
            ));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn failures_carry_a_sentence_and_the_client_offer() {
    for f in fixtures() {
        if let HandshakeOutcome::Failed(d) = &f.report.outcome {
            assert!(
                d.message.len() > 30,
                "{}: thin message {:?}",
                f.name,
                d.message
            );
            let plaintext = matches!(
                d.cause.slug().as_str(),
                "plaintext_to_tls_port" | "handshake_timeout"
            );
            if !plaintext && f.name != "decode_error" {
                let offer = d
                    .offered
                    .as_ref()
                    .unwrap_or_else(|| panic!("{}: no offer", f.name));
                assert!(
                    !offer.ciphers.is_empty()
                        && offer.ja3().len() == 32
                        && offer.ja4().starts_with('t'),
                    "{}",
                    f.name
                );
            }
        }
    }
}

/// The recorded events with the data byte at global offset `at` starting a new chunk.
fn split_at(events: &[Event], at: usize) -> Vec<Event> {
    let mut out = Vec::with_capacity(events.len() + 1);
    let mut seen = 0;
    for e in events {
        match e {
            Event::Data { from, ts_ns, bytes } if seen < at && at < seen + bytes.len() => {
                let cut = at - seen;
                out.push(Event::Data {
                    from: *from,
                    ts_ns: *ts_ns,
                    bytes: bytes[..cut].to_vec(),
                });
                out.push(Event::Data {
                    from: *from,
                    ts_ns: *ts_ns,
                    bytes: bytes[cut..].to_vec(),
                });
                seen += bytes.len();
            }
            Event::Data { bytes, .. } => {
                seen += bytes.len();
                out.push(e.clone());
            }
            _ => out.push(e.clone()),
        }
    }
    out
}

fn data_len(events: &[Event]) -> usize {
    events
        .iter()
        .map(|e| {
            if let Event::Data { bytes, .. } = e {
                bytes.len()
            } else {
                0
            }
        })
        .sum()
}

#[test]
fn every_split_point_and_one_byte_chunks_give_the_same_outcome() {
    for f in fixtures() {
        let r = &f.report;
        let events = r.events.as_deref().expect("recorded");
        let whole = verdict(&replay(r.meta, r.first_ns, events), r.end_ns);
        assert_eq!(whole, r.outcome, "{}: replay differs from analyze", f.name);
        for at in 1..data_len(events) {
            let split = split_at(events, at);
            let got = verdict(&replay(r.meta, r.first_ns, &split), r.end_ns);
            assert_eq!(got, whole, "{}: split at byte {at}", f.name);
        }
        let bytes: Vec<Event> = events
            .iter()
            .flat_map(|e| match e {
                Event::Data { from, ts_ns, bytes } => bytes
                    .iter()
                    .map(|b| Event::Data {
                        from: *from,
                        ts_ns: *ts_ns,
                        bytes: vec![*b],
                    })
                    .collect::<Vec<_>>(),
                other => vec![other.clone()],
            })
            .collect();
        assert_eq!(
            verdict(&replay(r.meta, r.first_ns, &bytes), r.end_ns),
            whole,
            "{}: one-byte chunks",
            f.name
        );
    }
}

#[test]
fn every_truncation_is_judged_without_panic() {
    for f in fixtures() {
        let r = &f.report;
        let events = r.events.as_deref().expect("recorded");
        let total = data_len(events);
        for keep in 0..total {
            let mut seen = 0;
            let mut cut = Vec::new();
            for e in events {
                if let Event::Data { from, ts_ns, bytes } = e {
                    if seen >= keep {
                        break;
                    }
                    let n = bytes.len().min(keep - seen);
                    cut.push(Event::Data {
                        from: *from,
                        ts_ns: *ts_ns,
                        bytes: bytes[..n].to_vec(),
                    });
                    seen += n;
                }
            }
            let conn = replay(r.meta, r.first_ns, &cut);
            let _ = conn.outcome();
            let _ = conn.finish(r.end_ns);
        }
    }
}

/// The recorded connection as the kernel would report it from one end's socket.
fn as_capture_events(r: &Report, local: Party) -> Vec<CaptureEvent> {
    const START: u32 = 1000;
    let (role, local_addr, peer_addr) = match local {
        Party::Client => (Role::Client, r.client, r.server),
        Party::Server => (Role::Server, r.server, r.client),
    };
    let mut out = vec![CaptureEvent::Open {
        cookie: 1,
        ts_ns: r.first_ns,
        conn: ConnInfo {
            role,
            local: local_addr,
            peer: peer_addr,
            socket_cgroup_id: 1,
        },
        // Named, as the kernel names a client at connect() (the judge gives no verdict
        // before the connection has an owner).
        owner: Some(Task {
            tgid: 4242,
            pid: 4242,
            cgroup_id: 1,
            comm: "fixture".into(),
        }),
        missed_start: false,
    }];
    let mut seq = [START; 2];
    let mut fins = 0;
    let mut last = r.first_ns;
    for e in r.events.as_deref().expect("recorded") {
        match e {
            Event::Data { from, ts_ns, bytes } => {
                let direction = if *from == local {
                    Direction::Egress
                } else {
                    Direction::Ingress
                };
                out.push(CaptureEvent::Data(DataChunk {
                    cookie: 1,
                    ts_ns: *ts_ns,
                    direction,
                    tls: true,
                    sample: false,
                    mid_stream: false,
                    truncated: false,
                    lost: false,
                    seq: seq[direction.index()],
                    stream_start: START,
                    segment_len: bytes.len() as u32,
                    bytes: bytes.clone(),
                }));
                seq[direction.index()] += bytes.len() as u32;
                last = *ts_ns;
            }
            Event::Closed { by, how, ts_ns } => {
                let what = match (how, *by == local) {
                    (CloseKind::Reset, true) => Lifecycle::ResetSent,
                    (CloseKind::Reset, false) => Lifecycle::ResetReceived,
                    (CloseKind::Fin, local_fin) => {
                        use tcp_state::*;
                        fins += 1;
                        let (old, new) = match (fins, local_fin) {
                            (1, true) => (ESTABLISHED, FIN_WAIT1),
                            (1, false) => (ESTABLISHED, CLOSE_WAIT),
                            (2, true) => (CLOSE_WAIT, LAST_ACK),
                            (2, false) => (FIN_WAIT1, CLOSING),
                            _ => continue,
                        };
                        Lifecycle::State { old, new }
                    }
                };
                out.push(CaptureEvent::Lifecycle {
                    cookie: 1,
                    ts_ns: *ts_ns,
                    what,
                    lost: false,
                });
                last = *ts_ns;
            }
        }
    }
    let both_closed = r
        .events
        .as_deref()
        .unwrap_or_default()
        .iter()
        .filter(|e| matches!(e, Event::Closed { .. }))
        .count()
        >= 2;
    if both_closed {
        out.push(CaptureEvent::Lifecycle {
            cookie: 1,
            ts_ns: last,
            what: Lifecycle::State {
                old: tcp_state::LAST_ACK,
                new: tcp_state::CLOSE,
            },
            lost: false,
        });
    }
    out
}

#[test]
fn the_live_path_from_either_end_gives_the_expected_outcome() {
    let mut wrong = Vec::new();
    for f in fixtures() {
        let r = &f.report;
        let mut ports = DEFAULT_TLS_PORTS.to_vec();
        if r.meta.tls_port {
            ports.push(r.server.port());
        }
        for local in [Party::Client, Party::Server] {
            let mut judge = Judge::new(
                FlowLimits {
                    idle_ns: u64::MAX / 2,
                    ..FlowLimits::default()
                },
                ports.clone(),
            );
            let mut verdicts: Vec<_> = as_capture_events(r, local)
                .into_iter()
                .filter_map(|e| judge.apply(e))
                .collect();
            verdicts.extend(judge.drain(r.end_ns));
            if verdicts.len() != 1 {
                wrong.push(format!(
                    "{} from the {local:?}: {} verdicts",
                    f.name,
                    verdicts.len()
                ));
                continue;
            }
            let got = observed(&verdicts[0].outcome);
            if !matches(&f.spec["expect"], &got) {
                wrong.push(format!(
                    "{} from the {local:?}: expected {} got {}",
                    f.name, f.spec["expect"], got
                ));
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

/// Every fixture's frames in one capture, in time order (each fixture has its own port).
fn merged_capture(path: &Path) -> usize {
    use pcap_file::pcap::{PcapPacket, PcapReader, PcapWriter};
    let mut header = None;
    let mut packets: Vec<PcapPacket<'static>> = Vec::new();
    let mut files = 0;
    for entry in std::fs::read_dir(fixture_dir()).expect("fixture directory") {
        let path = entry.expect("entry").path();
        if path.extension().is_none_or(|e| e != "pcap") {
            continue;
        }
        files += 1;
        let mut reader =
            PcapReader::new(std::fs::File::open(&path).expect("open")).expect("pcap header");
        header.get_or_insert(reader.header());
        while let Some(p) = reader.next_packet() {
            packets.push(p.expect("packet").into_owned());
        }
    }
    packets.sort_by_key(|p| p.timestamp);
    let out = std::fs::File::create(path).expect("create");
    let mut writer =
        PcapWriter::with_header(out, header.expect("some fixture")).expect("pcap writer");
    for p in &packets {
        writer.write_packet(p).expect("write packet");
    }
    files
}

#[test]
fn the_output_does_not_depend_on_the_number_of_workers() {
    let dir = std::env::temp_dir().join(format!("tlsmon-workers-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("mkdir");
    let capture = dir.join("all.pcap");
    let files = merged_capture(&capture);
    let ports = DEFAULT_TLS_PORTS.to_vec();
    let lines = |workers| {
        let pass = Pass {
            tls_ports: &ports,
            record: false,
            progress: false,
            workers,
        };
        let mut lines = Vec::new();
        let totals = analyze_file(
            &capture,
            &pass,
            |r| serde_json::to_string(&tlsmon::cli::analyze::OutcomeLine::new(&r)).expect("json"),
            |l| lines.push(l),
        )
        .expect("analyze");
        assert_eq!(totals.connections as usize, lines.len());
        lines
    };
    let one = lines(1);
    assert!(
        one.len() >= files,
        "{} connections in {files} fixtures",
        one.len()
    );
    for workers in [2, 3, 8] {
        assert_eq!(lines(workers), one, "{workers} workers");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// Client certificate refusals in TLS 1.3 where the client's request reaches the server
/// before the server's alert (what Go and HAProxy servers show: curl writes its request
/// right after its Finished). At that moment the handshake looks completed; it must not be
/// judged before the server has had its say.
#[test]
fn a_tls13_refusal_that_follows_the_clients_request_is_still_a_failure() {
    for name in [
        "client_cert_required_tls13_curl",
        "client_cert_untrusted_tls13_curl",
    ] {
        let f = fixtures()
            .into_iter()
            .find(|f| f.name == name)
            .expect("fixture");
        let mut r = f.report.clone();
        let mut events = r.events.take().expect("recorded");
        // The server's one record after the client's flight, and the client's request after it.
        let alert = events
            .iter()
            .position(|e| matches!(e, Event::Data { from: Party::Server, bytes, .. } if bytes.len() == 24))
            .expect("the server's alert record");
        // Where the request came after the alert, put it first (the order Go and HAProxy
        // show); where it came first already, the recording is that order.
        if let Some(after) = events[alert..].iter().position(|e| {
            matches!(
                e,
                Event::Data {
                    from: Party::Client,
                    ..
                }
            )
        }) {
            let moved = events.remove(alert + after);
            let ts = match &events[alert] {
                Event::Data { ts_ns, .. } => *ts_ns,
                _ => unreachable!(),
            };
            let Event::Data { from, bytes, .. } = moved else {
                unreachable!()
            };
            events.insert(
                alert,
                Event::Data {
                    from,
                    ts_ns: ts.saturating_sub(1_000),
                    bytes,
                },
            );
        }
        r.events = Some(events);
        for local in [Party::Client, Party::Server] {
            let mut judge = Judge::new(
                FlowLimits {
                    idle_ns: u64::MAX / 2,
                    ..FlowLimits::default()
                },
                DEFAULT_TLS_PORTS.to_vec(),
            );
            let mut verdicts: Vec<_> = as_capture_events(&r, local)
                .into_iter()
                .filter_map(|e| judge.apply(e))
                .collect();
            verdicts.extend(judge.drain(r.end_ns));
            assert_eq!(verdicts.len(), 1, "{name} from the {local:?}");
            let got = observed(&verdicts[0].outcome);
            assert!(
                matches(&f.spec["expect"], &got),
                "{name} from the {local:?}: expected {} got {got}",
                f.spec["expect"]
            );
        }
    }
}
