use super::*;

fn data(cookie: u64, ts: u64, dir: Direction, seq: u32, bytes: &[u8]) -> CaptureEvent {
    CaptureEvent::Data(DataChunk {
        cookie,
        ts_ns: ts,
        direction: dir,
        tls: true,
        sample: false,
        mid_stream: false,
        truncated: false,
        lost: false,
        seq,
        stream_start: 1000,
        segment_len: bytes.len() as u32,
        bytes: bytes.to_vec(),
    })
}

fn state(cookie: u64, ts: u64, old: u8, new: u8) -> CaptureEvent {
    CaptureEvent::Lifecycle {
        cookie,
        ts_ns: ts,
        what: Lifecycle::State { old, new },
        lost: false,
    }
}

#[test]
fn a_flow_finishes_at_tcp_close_with_both_streams_and_who_closed() {
    let mut t = FlowTable::new(FlowLimits::default());
    assert!(
        t.apply(data(1, 1, Direction::Egress, 1003, b"def"))
            .is_none()
    );
    assert!(
        t.apply(data(1, 2, Direction::Egress, 1000, b"abc"))
            .is_none()
    );
    assert!(
        t.apply(data(1, 3, Direction::Ingress, 1000, b"xyz"))
            .is_none()
    );
    assert!(
        t.apply(state(1, 4, tcp_state::ESTABLISHED, tcp_state::CLOSE_WAIT))
            .is_none()
    );
    let f = t
        .apply(state(1, 5, tcp_state::LAST_ACK, tcp_state::CLOSE))
        .expect("finished");
    assert_eq!(f.stream(Direction::Egress), b"abcdef");
    assert_eq!(f.stream(Direction::Ingress), b"xyz");
    assert_eq!(f.ending.first_fin, Some(Side::Peer));
    assert_eq!(f.ending.second_fin, None);
    assert!(t.is_empty());
}

#[test]
fn both_fins_are_read_from_state_changes_in_either_order() {
    use tcp_state::*;
    let mut t = FlowTable::new(FlowLimits::default());
    t.apply(data(1, 0, Direction::Egress, 1000, b"a"));
    t.apply(state(1, 1, ESTABLISHED, FIN_WAIT1));
    t.apply(state(1, 2, FIN_WAIT1, FIN_WAIT2));
    let f = t.apply(state(1, 3, FIN_WAIT2, CLOSE)).unwrap();
    assert_eq!(
        (f.ending.first_fin, f.ending.second_fin),
        (Some(Side::Local), Some(Side::Peer))
    );
    t.apply(data(2, 0, Direction::Egress, 1000, b"a"));
    t.apply(state(2, 1, ESTABLISHED, CLOSE_WAIT));
    t.apply(state(2, 2, CLOSE_WAIT, LAST_ACK));
    let f = t.apply(state(2, 3, LAST_ACK, CLOSE)).unwrap();
    assert_eq!(
        (f.ending.first_fin, f.ending.second_fin),
        (Some(Side::Peer), Some(Side::Local))
    );
}

#[test]
fn an_abort_is_a_reset_by_this_end_though_its_rst_comes_after_the_close() {
    let mut t = FlowTable::new(FlowLimits::default());
    t.apply(data(2, 1, Direction::Egress, 1000, b"a"));
    let f = t
        .apply(state(2, 3, tcp_state::ESTABLISHED, tcp_state::CLOSE))
        .unwrap();
    assert_eq!(f.ending.reset, Some(Side::Local));
    // An orderly close is no reset.
    t.apply(data(3, 1, Direction::Egress, 1000, b"a"));
    t.apply(state(3, 2, tcp_state::ESTABLISHED, tcp_state::FIN_WAIT1));
    t.apply(state(3, 3, tcp_state::FIN_WAIT1, tcp_state::FIN_WAIT2));
    let f = t
        .apply(state(3, 4, tcp_state::FIN_WAIT2, tcp_state::CLOSE))
        .unwrap();
    assert_eq!(f.ending.reset, None);
}

#[test]
fn reset_received_is_the_peers() {
    let mut t = FlowTable::new(FlowLimits::default());
    t.apply(data(2, 1, Direction::Egress, 1000, b"a"));
    t.apply(CaptureEvent::Lifecycle {
        cookie: 2,
        ts_ns: 2,
        what: Lifecycle::ResetReceived,
        lost: false,
    });
    let f = t
        .apply(state(2, 3, tcp_state::ESTABLISHED, tcp_state::CLOSE))
        .unwrap();
    assert_eq!(f.ending.reset, Some(Side::Peer));
    assert_eq!(f.ending.first_fin, None);
}

#[test]
fn idle_flows_expire_and_active_ones_stay() {
    let limits = FlowLimits {
        idle_ns: 100,
        ..FlowLimits::default()
    };
    let mut t = FlowTable::new(limits);
    t.apply(data(1, 0, Direction::Egress, 1000, b"a"));
    t.apply(data(2, 50, Direction::Egress, 1000, b"a"));
    let done = t.expire(120);
    assert_eq!(done.iter().map(|f| f.cookie).collect::<Vec<_>>(), vec![1]);
    assert_eq!(t.len(), 1);
}

#[test]
fn table_is_bounded_by_evicting_the_least_recent() {
    let limits = FlowLimits {
        max_flows: 2,
        ..FlowLimits::default()
    };
    let mut t = FlowTable::new(limits);
    t.apply(data(1, 10, Direction::Egress, 1000, b"a"));
    t.apply(data(2, 5, Direction::Egress, 1000, b"a"));
    t.apply(data(3, 20, Direction::Egress, 1000, b"a"));
    assert_eq!(t.len(), 2);
    assert!(t.get(2).is_none());
}

#[test]
fn a_full_table_sheds_its_idlest_sixteenth_at_once() {
    let mut t = FlowTable::new(FlowLimits {
        max_flows: 64,
        ..FlowLimits::default()
    });
    // Cookies 1..=64, cookie c last active at time c (the first 64 arrive in reverse).
    for c in (1..=64u64).rev() {
        t.apply(data(c, c, Direction::Egress, 1000, b"a"));
    }
    assert_eq!((t.len(), t.take_evicted().len()), (64, 0));
    t.apply(data(100, 100, Direction::Egress, 1000, b"a"));
    let mut gone: Vec<u64> = t.take_evicted().iter().map(|f| f.cookie).collect();
    gone.sort_unstable();
    assert_eq!(gone, (1..=4).collect::<Vec<_>>(), "the four idlest");
    assert_eq!(t.len(), 61);
    // Room for three more before the next shedding.
    for c in 101..=103 {
        t.apply(data(c, c, Direction::Egress, 1000, b"a"));
    }
    assert!(t.take_evicted().is_empty());
    t.apply(data(104, 104, Direction::Egress, 1000, b"a"));
    assert_eq!(t.take_evicted().len(), 4);
}

#[test]
fn the_client_hellos_direction_gives_a_role_the_kernel_could_not() {
    let mut t = FlowTable::new(FlowLimits::default());
    t.apply(data(
        1,
        1,
        Direction::Ingress,
        1000,
        &[22, 3, 1, 0, 4, 1, 0, 0, 0],
    ));
    assert_eq!(t.get(1).map(Flow::role), Some(Role::Server));
    t.apply(data(2, 1, Direction::Egress, 1000, &[22, 3, 1, 0, 4]));
    assert_eq!(
        t.get(2).map(Flow::role),
        Some(Role::Unknown),
        "the message type is not there yet"
    );
    t.apply(data(2, 2, Direction::Egress, 1005, &[1, 0, 0, 0]));
    assert_eq!(t.get(2).map(Flow::role), Some(Role::Client));
    t.apply(data(
        3,
        1,
        Direction::Egress,
        1000,
        &[22, 3, 3, 0, 4, 2, 0, 0, 0],
    ));
    assert_eq!(
        t.get(3).map(Flow::role),
        Some(Role::Unknown),
        "a ServerHello"
    );
}

#[test]
fn gaps_and_losses_make_a_flow_incomplete() {
    let mut t = FlowTable::new(FlowLimits::default());
    t.apply(data(1, 1, Direction::Egress, 1000, b"abc"));
    assert_eq!(t.get(1).and_then(Flow::incomplete), None);
    t.apply(data(1, 2, Direction::Egress, 1010, b"xyz"));
    assert_eq!(t.get(1).and_then(Flow::incomplete), Some(Incomplete::Hole));
    t.apply(data(2, 1, Direction::Ingress, 1005, b"late"));
    assert_eq!(
        t.get(2).and_then(Flow::incomplete),
        Some(Incomplete::MissingStart)
    );
    let CaptureEvent::Data(mut lost) = data(3, 1, Direction::Egress, 1000, b"abc") else {
        unreachable!()
    };
    lost.lost = true;
    t.apply(CaptureEvent::Data(lost));
    assert_eq!(
        t.get(3).and_then(Flow::incomplete),
        Some(Incomplete::RingLoss)
    );
}

#[test]
fn a_close_of_a_connection_not_in_the_table_starts_no_phantom_flow() {
    let mut t = FlowTable::new(FlowLimits::default());
    assert!(
        t.apply(state(9, 1, tcp_state::ESTABLISHED, tcp_state::CLOSE))
            .is_none()
    );
    assert!(t.is_empty());
    // Nor does a reset the kernel sends after the flow's TCP_CLOSE.
    t.apply(data(1, 1, Direction::Egress, 1000, b"a"));
    assert!(
        t.apply(state(1, 2, tcp_state::FIN_WAIT2, tcp_state::CLOSE))
            .is_some()
    );
    t.apply(CaptureEvent::Lifecycle {
        cookie: 1,
        ts_ns: 3,
        what: Lifecycle::ResetSent,
        lost: false,
    });
    assert!(t.is_empty());
}

#[test]
fn an_evicted_flow_is_kept_for_its_verdict() {
    let limits = FlowLimits {
        max_flows: 1,
        ..FlowLimits::default()
    };
    let mut t = FlowTable::new(limits);
    t.apply(data(1, 10, Direction::Egress, 1000, b"a"));
    t.apply(data(2, 20, Direction::Egress, 1000, b"b"));
    let evicted = t.take_evicted();
    assert_eq!(evicted.iter().map(|f| f.cookie).collect::<Vec<_>>(), [1]);
    assert!(t.take_evicted().is_empty());
}
