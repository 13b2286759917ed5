use super::*;

#[test]
fn a_plaintext_alert_record_is_told_from_other_records_and_text() {
    assert!(plaintext_alert(&[0x15, 0x03, 0x03, 0x00, 0x02])); // Java's answer to HTTP
    assert!(!plaintext_alert(&[0x15, 0x03, 0x03, 0x00, 0x13])); // encrypted (19 bytes)
    assert!(!plaintext_alert(&[0x16, 0x03, 0x03, 0x00, 0x02]));
    assert!(!plaintext_alert(b"HTTP/"));
}

#[test]
fn tls_records_and_sslv2_hellos_look_like_tls_and_text_does_not() {
    assert!(looks_like_tls(&[0x16, 0x03, 0x01, 0x02, 0x00])); // TLS 1.0 record
    assert!(looks_like_tls(&[0x16, 0x03, 0x04, 0x00, 0x10])); // highest legacy version
    assert!(!looks_like_tls(&[0x16, 0x03, 0x05, 0x00, 0x10]));
    assert!(!looks_like_tls(&[0x17, 0x03, 0x03, 0x00, 0x10])); // application data
    assert!(looks_like_tls(&[0x80, 0x2e, 0x01, 0x03, 0x01])); // SSLv2 hello, TLS 1.0
    assert!(looks_like_tls(&[0x80, 0x2e, 0x01, 0x00, 0x02])); // SSLv2 hello, SSL 2.0
    assert!(!looks_like_tls(&[0x80, 0x2e, 0x02, 0x03, 0x01])); // not CLIENT-HELLO
    assert!(!looks_like_tls(b"GET /"));
    assert!(!looks_like_tls(b"EHLO "));
    assert!(!looks_like_tls(&[0; 5]), "a short payload reads as zeros");
}

#[test]
fn a_client_hello_is_told_by_its_message_type() {
    let record = [0x16, 0x03, 0x01, 0x02, 0x00];
    assert!(starts_client_hello(&record, Some(1)));
    assert!(!starts_client_hello(&record, Some(2)), "ServerHello");
    assert!(
        !starts_client_hello(&record, None),
        "type not in the segment"
    );
    assert!(starts_client_hello(&[0x80, 0x2e, 0x01, 0x03, 0x01], None));
}

#[test]
fn header_lengths() {
    assert_eq!(ipv4_header_len(0x45), Some(20));
    assert_eq!(ipv4_header_len(0x4f), Some(60));
    assert_eq!(ipv4_header_len(0x60), None);
    assert_eq!(tcp_header_len(0x50), 20);
    assert_eq!(tcp_header_len(0x80), 32);
    assert_eq!(payload_len(60, 52), 8);
    assert_eq!(payload_len(52, 52), 0);
    assert_eq!(payload_len(40, 52), 0, "a header longer than the packet");
}

/// An IPv6 packet: the fixed header (40 bytes, next header `first`), then `ext` (each
/// extension header's bytes), then a TCP header.
fn ipv6(first: u8, ext: &[&[u8]]) -> ([u8; 256], usize) {
    let mut p = [0u8; 256];
    p[6] = first;
    let mut at = 40;
    for e in ext {
        p[at..at + e.len()].copy_from_slice(e);
        at += e.len();
    }
    (p, at)
}

fn walk(p: &[u8], first: u8) -> Option<u32> {
    ipv6_tcp_offset(first, p)
}

#[test]
fn ipv6_extension_headers_are_walked_to_tcp() {
    let (p, _) = ipv6(IPPROTO_TCP, &[]);
    assert_eq!(walk(&p, IPPROTO_TCP), Some(40));
    // Hop-by-hop (8 bytes), then destination options (16 bytes), then TCP.
    let hop = [60, 0, 0, 0, 0, 0, 0, 0];
    let dest = [IPPROTO_TCP, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    let (p, tcp) = ipv6(0, &[&hop, &dest]);
    assert_eq!(walk(&p, 0), Some(tcp as u32));
    assert_eq!(tcp, 64);
    // Routing (24 bytes), then authentication ((2 + 2) × 4 = 16 bytes), then TCP.
    let routing = [
        51u8, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    ];
    let auth = [IPPROTO_TCP, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    let (p, tcp) = ipv6(43, &[&routing, &auth]);
    assert_eq!(walk(&p, 43), Some(tcp as u32));
    // The first fragment (offset 0, more fragments) is walked.
    let (p, tcp) = ipv6(44, &[&[IPPROTO_TCP, 0, 0, 1, 0, 0, 0, 9]]);
    assert_eq!(walk(&p, 44), Some(tcp as u32));
}

#[test]
fn ipv6_walks_stop_where_tcp_cannot_follow() {
    // A later fragment (offset 185) carries no TCP header.
    let (p, _) = ipv6(44, &[&[IPPROTO_TCP, 0, 0x05, 0xc9, 0, 0, 0, 9]]);
    assert_eq!(walk(&p, 44), None);
    // ESP and "no next header".
    let (p, _) = ipv6(50, &[]);
    assert_eq!(walk(&p, 50), None);
    assert_eq!(walk(&p, 59), None);
    // UDP behind a hop-by-hop header.
    let (p, _) = ipv6(0, &[&[17, 0, 0, 0, 0, 0, 0, 0]]);
    assert_eq!(walk(&p, 0), None);
    // More hop-by-hop headers than are walked.
    let hop: &[u8] = &[0, 0, 0, 0, 0, 0, 0, 0];
    let (p, _) = ipv6(0, &[hop; MAX_IPV6_EXTENSIONS + 1]);
    assert_eq!(walk(&p, 0), None);
    // A header that cannot be read.
    assert_eq!(walk(&[0u8; 42], 0), None);
}

#[test]
fn the_first_payload_is_told_by_the_sockets_counters() {
    let fresh = TcpCounters {
        bytes_acked: 1,
        snd_una: 1000,
        ..TcpCounters::default()
    };
    assert!(first_payload(direction::INGRESS, &fresh, 5));
    assert!(first_payload(direction::EGRESS, &fresh, 1000));
    // A retransmission of our first payload still starts at snd_una.
    let counted = TcpCounters {
        data_segs_out: 1,
        ..fresh
    };
    assert!(first_payload(direction::EGRESS, &counted, 1000));
    assert!(
        !first_payload(direction::INGRESS, &counted, 5),
        "we spoke first"
    );
    assert!(
        !first_payload(direction::EGRESS, &fresh, 1200),
        "a later segment"
    );
    let acked = TcpCounters {
        bytes_acked: 300,
        ..fresh
    };
    assert!(!first_payload(direction::EGRESS, &acked, 1000));
    let heard = TcpCounters {
        data_segs_in: 1,
        ..fresh
    };
    assert!(!first_payload(direction::INGRESS, &heard, 5));
    assert!(!first_payload(direction::EGRESS, &heard, 1000));
}

#[test]
fn fast_open_data_in_the_syn_starts_the_stream_after_the_syn() {
    // A client's SYN with data: ISN 1000, its payload at 1001, nothing acknowledged.
    let syn_sent = TcpCounters {
        snd_una: 1000,
        state: TCP_SYN_SENT,
        ..TcpCounters::default()
    };
    assert!(tcp_syn(0x02) && !tcp_syn(0x10));
    assert_eq!(payload_seq(1000, true), 1001);
    assert_eq!(payload_seq(1000, false), 1000);
    assert_eq!(syn_sent.egress_origin(), 1001);
    assert!(first_payload(direction::EGRESS, &syn_sent, 1001));
    assert!(
        !first_payload(direction::EGRESS, &syn_sent, 1000),
        "the SYN's own number carries no data"
    );
    // Once established the SYN is acknowledged: snd_una is the first data byte.
    let established = TcpCounters {
        snd_una: 1001,
        bytes_acked: 1,
        state: 1,
        ..TcpCounters::default()
    };
    assert_eq!(established.egress_origin(), 1001);
}

#[test]
fn a_peers_first_bytes_that_went_to_the_listener_are_a_missed_start() {
    // A Fast Open server's child socket: the ClientHello (517 bytes) came in the SYN to the
    // listener; the server's first payload goes out before the client's last ACK.
    let child = TcpCounters {
        bytes_received: 517,
        rcv_nxt: 5001 + 517,
        snd_una: 9000,
        state: TCP_SYN_RECV,
        data_segs_out: 1,
        ..TcpCounters::default()
    };
    assert!(!first_payload(direction::EGRESS, &child, 9001));
    assert_eq!(
        missed_peer_start(direction::EGRESS, &child, 9001),
        Some(5001)
    );
    // Not for a later segment of ours, nor on ingress, nor when nothing came before.
    assert_eq!(missed_peer_start(direction::EGRESS, &child, 9600), None);
    assert_eq!(missed_peer_start(direction::INGRESS, &child, 5518), None);
    let quiet = TcpCounters {
        bytes_received: 0,
        ..child
    };
    assert_eq!(missed_peer_start(direction::EGRESS, &quiet, 9001), None);
    // Sequence numbers wrap.
    let wrapped = TcpCounters {
        rcv_nxt: 10,
        bytes_received: 20,
        ..child
    };
    assert_eq!(
        missed_peer_start(direction::EGRESS, &wrapped, 9001),
        Some(u32::MAX - 9)
    );
}

#[test]
fn packets_are_read_by_their_ip_version_not_the_sockets_family() {
    let mut v4 = [0u8; 60];
    v4[0] = 0x45;
    v4[9] = IPPROTO_TCP;
    assert_eq!(tcp_offset(&v4[..]), Some(20));
    v4[0] = 0x46; // 4 bytes of options
    assert_eq!(tcp_offset(&v4[..]), Some(24));
    v4[9] = 17; // UDP
    assert_eq!(tcp_offset(&v4[..]), None);
    let (mut v6, _) = ipv6(IPPROTO_TCP, &[]);
    v6[0] = 0x60;
    assert_eq!(tcp_offset(&v6[..]), Some(40));
    let (mut v6_ext, tcp) = ipv6(0, &[&[IPPROTO_TCP, 0, 0, 0, 0, 0, 0, 0]]);
    v6_ext[0] = 0x60;
    assert_eq!(tcp_offset(&v6_ext[..]), Some(tcp as u32));
    assert_eq!(tcp_offset(&[0x50u8; 60][..]), None, "no IP version 5");
    assert_eq!(tcp_offset(&[0x45u8, 0, 0][..]), None, "too short");
}

#[test]
fn records_take_the_smallest_room_that_holds_them() {
    assert_eq!(record_room(1), 256);
    assert_eq!(record_room(256), 256);
    assert_eq!(record_room(257), 1024);
    assert_eq!(record_room(4096), 4096);
    assert_eq!(record_room(4097), DATA_CHUNK as u32);
    for len in [1u32, 255, 256, 257, 1500, 4096, 9000, DATA_CHUNK as u32] {
        let room = record_room(len);
        assert!(room.is_power_of_two() && room >= len);
    }
}

#[test]
fn a_connection_past_both_limits_both_ways_has_nothing_left() {
    // 8 KiB watched, 16 KiB captured per direction: 48 KiB both ways at most.
    assert!(!nothing_left(48 * 1024, 8 * 1024, 16 * 1024));
    assert!(nothing_left(48 * 1024 + 1, 8 * 1024, 16 * 1024));
    assert!(!nothing_left(0, 8 * 1024, 16 * 1024));
    assert!(
        !nothing_left(u64::from(u32::MAX), u32::MAX, u32::MAX),
        "no overflow"
    );
}

#[test]
fn owner_slots_wrap_at_the_table_size() {
    assert_eq!(owner_slot(7), 7);
    assert_eq!(
        owner_slot(OWNER_SLOTS + 7),
        7,
        "a later cookie shares the slot"
    );
    assert_eq!(owner_slot(u64::MAX), (u64::MAX % OWNER_SLOTS) as u32);
}

#[test]
fn the_capture_window_keeps_the_stream_inside_its_budget() {
    // A segment inside the budget is taken whole.
    assert_eq!(
        capture_window(1100, 1000, 200, 16384, 0),
        Window::Take {
            skip: 0,
            len: 200,
            truncated: false
        }
    );
    // One that crosses the budget's end is cut there.
    assert_eq!(
        capture_window(1000 + 16300, 1000, 200, 16384, 16300),
        Window::Take {
            skip: 0,
            len: 84,
            truncated: true
        }
    );
    // Past the budget, or after twice the budget of retransmissions: nothing.
    assert_eq!(
        capture_window(1000 + 16384, 1000, 10, 16384, 0),
        Window::BudgetSpent
    );
    assert_eq!(
        capture_window(1000, 1000, 10, 16384, 2 * 16384),
        Window::BudgetSpent
    );
    // A STARTTLS segment that begins before the upgrade point skips the plaintext.
    assert_eq!(
        capture_window(990, 1000, 30, 16384, 0),
        Window::Take {
            skip: 10,
            len: 20,
            truncated: false
        }
    );
    assert_eq!(capture_window(900, 1000, 50, 16384, 0), Window::BeforeStart);
    // Sequence numbers wrap.
    assert_eq!(
        capture_window(5, u32::MAX - 4, 10, 16384, 0),
        Window::Take {
            skip: 0,
            len: 10,
            truncated: false
        }
    );
}

#[test]
fn chunk_and_sample_lengths_are_bounded() {
    assert_eq!(chunk_len(1), 1);
    assert_eq!(chunk_len(DATA_CHUNK as u32), DATA_CHUNK as u32);
    assert_eq!(chunk_len(0), DATA_CHUNK as u32, "never zero");
    for len in [0, 1, 100, DATA_CHUNK as u32 + 5, u32::MAX] {
        assert!((1..=DATA_CHUNK as u32).contains(&chunk_len(len)));
    }
    assert_eq!(sample_len(10), 10);
    assert_eq!(sample_len(1000), SAMPLE_LEN as u32);
    assert_eq!(clamp_budget(1 << 20), MAX_DIRECTION_BUDGET);
    assert_eq!(clamp_budget(1024), 1024);
}

#[test]
fn only_state_changes_that_reveal_a_fin_or_end_the_socket_are_reported() {
    use crate::tcp_state::*;
    assert_eq!(fin_of(ESTABLISHED, FIN_WAIT1), Some(Fin::Local));
    assert_eq!(fin_of(CLOSE_WAIT, LAST_ACK), Some(Fin::Local));
    assert_eq!(fin_of(ESTABLISHED, CLOSE_WAIT), Some(Fin::Peer));
    assert_eq!(fin_of(FIN_WAIT2, TIME_WAIT), Some(Fin::Peer));
    assert_eq!(fin_of(FIN_WAIT2, CLOSE), Some(Fin::Peer));
    assert_eq!(fin_of(FIN_WAIT1, CLOSING), Some(Fin::Peer));
    assert_eq!(fin_of(FIN_WAIT1, FIN_WAIT2), None);
    assert!(state_change_reported(ESTABLISHED, FIN_WAIT1));
    assert!(state_change_reported(LAST_ACK, CLOSE));
    assert!(state_change_reported(ESTABLISHED, CLOSE)); // reset
    assert!(!state_change_reported(FIN_WAIT1, FIN_WAIT2));
    assert!(!state_change_reported(CLOSING, TIME_WAIT));
    assert!(!state_change_reported(SYN_SENT, ESTABLISHED));
}
