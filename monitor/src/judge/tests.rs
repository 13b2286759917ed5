use super::*;
use crate::flow::DataChunk;

const COOKIE: u64 = 7;

fn open(role: Role, local: &str, peer: &str) -> CaptureEvent {
    CaptureEvent::Open {
        cookie: COOKIE,
        ts_ns: 1_000,
        conn: ConnInfo {
            role,
            local: local.parse().unwrap(),
            peer: peer.parse().unwrap(),
            socket_cgroup_id: 1,
        },
        // As the kernel reports them: clients are named at connect, servers later.
        owner: (role == Role::Client).then(|| owner("curl")),
        missed_start: false,
    }
}

fn owner(comm: &str) -> Task {
    Task {
        tgid: 42,
        pid: 42,
        cgroup_id: 1,
        comm: comm.into(),
    }
}

fn data(d: Direction, seq: u32, bytes: &[u8], sample: bool) -> CaptureEvent {
    CaptureEvent::Data(DataChunk {
        cookie: COOKIE,
        ts_ns: 2_000 + u64::from(seq),
        direction: d,
        tls: !sample,
        sample,
        mid_stream: false,
        truncated: false,
        lost: false,
        seq,
        stream_start: 100,
        segment_len: bytes.len() as u32,
        bytes: bytes.to_vec(),
    })
}

fn state(old: u8, new: u8) -> CaptureEvent {
    CaptureEvent::Lifecycle {
        cookie: COOKIE,
        ts_ns: 9_000,
        what: Lifecycle::State { old, new },
        lost: false,
    }
}

#[test]
fn a_fatal_alert_is_judged_at_once_and_the_close_after_it_is_dropped() {
    let mut j = Judge::new(FlowLimits::default(), vec![8443]);
    j.set_unix_offset(1_700_000_000_000_000_000);
    assert!(
        j.apply(open(Role::Client, "127.0.0.1:40000", "127.0.0.1:8443"))
            .is_none()
    );
    // A minimal ClientHello header is enough to reach the client_hello stage.
    assert!(
        j.apply(data(
            Direction::Egress,
            100,
            &[22, 3, 1, 0, 4, 1, 0, 0, 0],
            false
        ))
        .is_none()
    );
    let v = j
        .apply(data(
            Direction::Ingress,
            100,
            &[21, 3, 3, 0, 2, 2, 70],
            false,
        ))
        .expect("decided by the alert");
    assert!(v.early);
    let d = v.outcome.diagnosis().expect("failed");
    assert_eq!(d.cause, Cause::ProtocolVersionMismatch);
    assert_eq!(d.alert.as_ref().map(|a| a.sender), Some(Party::Server));
    assert_eq!(v.first_unix_ns, 1_700_000_000_000_001_000);
    assert_eq!(j.open_connections(), 0);
    assert!(
        j.apply(state(tcp_state::ESTABLISHED, tcp_state::CLOSE_WAIT))
            .is_none()
    );
    assert!(
        j.apply(state(tcp_state::LAST_ACK, tcp_state::CLOSE))
            .is_none()
    );
    assert!(j.judged.is_empty(), "forgotten at TCP_CLOSE");
}

#[test]
fn server_side_roles_are_mapped_and_plaintext_on_a_tls_port_fails() {
    let mut j = Judge::new(FlowLimits::default(), vec![]);
    let verdicts: Vec<Verdict> = [
        open(Role::Server, "127.0.0.1:8443", "127.0.0.1:40000"),
        data(
            Direction::Ingress,
            100,
            b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
            true,
        ),
        state(tcp_state::ESTABLISHED, tcp_state::CLOSE_WAIT),
        state(tcp_state::LAST_ACK, tcp_state::CLOSE),
    ]
    .into_iter()
    .filter_map(|e| j.apply(e))
    .collect();
    assert_eq!(verdicts.len(), 1, "one verdict per connection");
    let v = &verdicts[0];
    let d = v.outcome.diagnosis().expect("failed");
    assert_eq!(d.cause, Cause::PlaintextToTlsPort);
}

#[test]
fn a_settled_server_side_waits_for_its_process_name() {
    let mut j = Judge::new(FlowLimits::default(), vec![8443]);
    j.apply(open(Role::Server, "127.0.0.1:8443", "127.0.0.1:40000"));
    // The plaintext settles the outcome before the server process has read anything.
    assert!(
        j.apply(data(Direction::Ingress, 100, b"GET / HTTP/1.1\r\n", true))
            .is_none()
    );
    let v = j
        .apply(CaptureEvent::Owner {
            cookie: COOKIE,
            ts_ns: 3_000,
            owner: owner("nginx"),
        })
        .expect("judged once named");
    assert!(v.early);
    assert_eq!(v.owner.map(|o| o.comm).as_deref(), Some("nginx"));
    assert_eq!(
        v.outcome.diagnosis().map(|d| d.cause),
        Some(Cause::PlaintextToTlsPort)
    );
}

#[test]
fn a_silent_handshake_is_judged_when_idle() {
    let limits = FlowLimits {
        idle_ns: 1_000_000,
        ..FlowLimits::default()
    };
    let mut j = Judge::new(limits, vec![8443]);
    j.apply(open(Role::Client, "127.0.0.1:40000", "127.0.0.1:8443"));
    j.apply(data(
        Direction::Egress,
        100,
        &[22, 3, 1, 0, 4, 1, 0, 0, 0],
        false,
    ));
    assert!(j.expire(500_000).is_empty());
    let v = j.expire(5_000_000_000).pop().expect("expired");
    assert!(!v.early);
    assert_eq!(
        v.outcome.diagnosis().map(|d| d.cause),
        Some(Cause::HandshakeTimeout)
    );
}

#[test]
fn events_without_bytes_give_no_judgement() {
    let mut j = Judge::new(FlowLimits::default(), vec![]);
    j.apply(open(Role::Client, "127.0.0.1:40000", "127.0.0.1:9"));
    let v = j
        .apply(state(tcp_state::ESTABLISHED, tcp_state::CLOSE))
        .expect("finished");
    assert!(!v.outcome.is_decided());
}

fn data_at(d: Direction, seq: u32, start: u32, bytes: &[u8]) -> CaptureEvent {
    let CaptureEvent::Data(mut c) = data(d, seq, bytes, false) else {
        unreachable!()
    };
    c.stream_start = start;
    CaptureEvent::Data(c)
}

fn closed() -> [CaptureEvent; 2] {
    [
        state(tcp_state::ESTABLISHED, tcp_state::CLOSE_WAIT),
        state(tcp_state::LAST_ACK, tcp_state::CLOSE),
    ]
}

const CLIENT_HELLO: [u8; 9] = [22, 3, 1, 0, 4, 1, 0, 0, 0];
const ALERT_70: [u8; 7] = [21, 3, 3, 0, 2, 2, 70];

#[test]
fn a_connection_of_unknown_role_gets_it_from_the_client_hellos_direction() {
    // The kernel could not tell (an upgrade it saw without connect()); the ClientHello
    // came in, so the local socket is the server and the alert it sent is the server's.
    let mut j = Judge::new(FlowLimits::default(), vec![]);
    j.apply(open(Role::Unknown, "127.0.0.1:8443", "127.0.0.1:40000"));
    j.apply(data(Direction::Ingress, 100, &CLIENT_HELLO, false));
    j.apply(data(Direction::Egress, 100, &ALERT_70, false));
    let v = closed()
        .into_iter()
        .find_map(|e| j.apply(e))
        .expect("judged");
    assert_eq!(v.incomplete, None);
    let d = v.outcome.diagnosis().expect("failed");
    assert_eq!(d.alert.as_ref().map(|a| a.sender), Some(Party::Server));
    assert_eq!(d.cause, Cause::ProtocolVersionMismatch);
}

#[test]
fn a_connection_whose_role_nothing_tells_is_incomplete_not_judged() {
    let mut j = Judge::new(FlowLimits::default(), vec![]);
    j.apply(open(Role::Unknown, "127.0.0.1:8443", "127.0.0.1:40000"));
    j.apply(data(Direction::Egress, 100, &ALERT_70, false));
    let v = closed()
        .into_iter()
        .find_map(|e| j.apply(e))
        .expect("judged");
    assert_eq!(v.incomplete, Some(Incomplete::UnknownRole));
    assert!(!v.outcome.is_decided());
}

#[test]
fn a_missing_first_segment_makes_the_connection_incomplete_not_failed() {
    // The server's first 5 bytes (a ServerHello's record header) never arrived; what
    // came after them is not a stream the core can read.
    let mut j = Judge::new(FlowLimits::default(), vec![8443]);
    j.apply(open(Role::Client, "127.0.0.1:40000", "127.0.0.1:8443"));
    j.apply(data(Direction::Egress, 100, &CLIENT_HELLO, false));
    j.apply(data_at(Direction::Ingress, 105, 100, &[2, 0, 0, 70, 3, 3]));
    let v = closed()
        .into_iter()
        .find_map(|e| j.apply(e))
        .expect("judged");
    assert_eq!(v.incomplete, Some(Incomplete::MissingStart));
}

#[test]
fn a_readable_alert_is_a_verdict_even_when_records_were_lost() {
    let mut j = Judge::new(FlowLimits::default(), vec![8443]);
    j.apply(open(Role::Client, "127.0.0.1:40000", "127.0.0.1:8443"));
    j.note_ring_loss(1_500);
    j.apply(data(Direction::Egress, 100, &CLIENT_HELLO, false));
    let v = j
        .apply(data(Direction::Ingress, 100, &ALERT_70, false))
        .expect("settled");
    assert_eq!(v.incomplete, None);
    assert!(v.outcome.diagnosis().is_some());
}

#[test]
fn an_inferred_failure_during_ring_loss_is_incomplete() {
    // The ClientHello was seen, the answer was not (lost): not a timeout.
    let limits = FlowLimits {
        idle_ns: 1_000_000,
        ..FlowLimits::default()
    };
    let mut j = Judge::new(limits, vec![8443]);
    j.apply(open(Role::Client, "127.0.0.1:40000", "127.0.0.1:8443"));
    j.apply(data(Direction::Egress, 100, &CLIENT_HELLO, false));
    j.note_ring_loss(3_000);
    let v = j.expire(5_000_000_000).pop().expect("expired");
    assert_eq!(v.incomplete, Some(Incomplete::RingLoss));
    assert_eq!(
        v.outcome.diagnosis().map(|d| d.cause),
        Some(Cause::HandshakeTimeout),
        "what the bytes alone would say"
    );
}

#[test]
fn a_flow_pushed_out_of_a_full_table_is_incomplete() {
    let limits = FlowLimits {
        max_flows: 1,
        ..FlowLimits::default()
    };
    let mut j = Judge::new(limits, vec![8443]);
    j.apply(open(Role::Client, "127.0.0.1:40000", "127.0.0.1:8443"));
    j.apply(data(Direction::Egress, 100, &CLIENT_HELLO, false));
    // Another connection needs the only slot.
    let CaptureEvent::Open { conn, .. } = open(Role::Client, "127.0.0.1:40001", "127.0.0.1:8443")
    else {
        unreachable!()
    };
    j.apply(CaptureEvent::Open {
        cookie: COOKIE + 1,
        ts_ns: 5_000,
        conn,
        owner: None,
        missed_start: false,
    });
    let evicted = j.take_evicted(6_000);
    assert_eq!(evicted.len(), 1);
    assert_eq!(evicted[0].cookie, COOKIE);
    assert_eq!(evicted[0].incomplete, Some(Incomplete::Evicted));
    assert!(j.take_evicted(7_000).is_empty());
}

#[test]
fn tlsmons_own_connections_are_never_judged() {
    let mut j = Judge::new(FlowLimits::default(), vec![8883]);
    j.ignore_tgid(42); // the tgid `open` gives clients
    j.apply(open(Role::Client, "127.0.0.1:40000", "127.0.0.1:8883"));
    j.apply(data(Direction::Egress, 100, &CLIENT_HELLO, false));
    assert!(
        j.apply(data(Direction::Ingress, 100, &ALERT_70, false))
            .is_none()
    );
    assert!(closed().into_iter().all(|e| j.apply(e).is_none()));
    assert_eq!(j.open_connections(), 0);
    // A server named later (the /proc fallback) is dropped then.
    j.apply(open(Role::Server, "127.0.0.1:8883", "127.0.0.1:40001"));
    j.apply(data(Direction::Ingress, 100, &CLIENT_HELLO, false));
    assert!(
        j.apply(CaptureEvent::Owner {
            cookie: COOKIE,
            ts_ns: 3_000,
            owner: owner("tlsmon"),
        })
        .is_none()
    );
    assert!(j.drain(10_000).is_empty());
}

#[test]
fn records_after_a_close_start_no_second_connection() {
    // A handshake cut short (client hello, then both ends close); then a retransmitted
    // segment and a late record of the same socket arrive: no phantom flow, no verdict.
    let limits = FlowLimits {
        idle_ns: 1_000_000,
        ..FlowLimits::default()
    };
    let mut j = Judge::new(limits, vec![8443]);
    j.apply(open(Role::Client, "127.0.0.1:40000", "127.0.0.1:8443"));
    j.apply(data(Direction::Egress, 100, &CLIENT_HELLO, false));
    let v = closed().into_iter().find_map(|e| j.apply(e));
    assert!(v.is_some(), "judged at its close");
    assert!(
        j.apply(data(Direction::Egress, 100, &CLIENT_HELLO, false))
            .is_none()
    );
    assert!(
        j.apply(data(Direction::Ingress, 100, &ALERT_70, false))
            .is_none()
    );
    assert_eq!(j.open_connections(), 0, "no flow for the late records");
    assert!(j.expire(5_000_000_000).is_empty(), "nothing judged twice");
}

#[test]
fn ended_cookies_are_bounded() {
    let mut e = EndedCookies::default();
    for c in 0..(ENDED_KEPT as u64 + 10) {
        e.insert(c);
    }
    assert!(!e.contains(0) && e.contains(10) && e.contains(ENDED_KEPT as u64 + 9));
    assert_eq!(e.set.len(), ENDED_KEPT);
}
