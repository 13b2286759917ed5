use super::*;

fn seg<'a>(src: &str, dst: &str, seq: u32, syn: bool, ack: bool, payload: &'a [u8]) -> Segment<'a> {
    Segment {
        src: src.parse().expect("addr"),
        dst: dst.parse().expect("addr"),
        seq,
        syn,
        ack,
        fin: false,
        rst: false,
        payload,
    }
}

#[test]
fn fast_open_data_in_the_syn_starts_the_stream_whole() {
    let hello = [22u8, 3, 1, 0, 4, 1, 0, 0, 0];
    let mut t = Tracker::new(vec![443], true);
    let mut done = Vec::new();
    let (c, s) = ("127.0.0.1:40000", "127.0.0.1:443");
    t.segment(1, &seg(c, s, 1000, true, false, &hello), &mut done);
    t.segment(2, &seg(s, c, 5000, true, true, &[]), &mut done);
    let report = t.finish(3).pop().expect("one conversation");
    let Some(events) = report.events else {
        panic!("recorded")
    };
    assert_eq!(
        events.first(),
        Some(&Event::Data {
            from: Party::Client,
            ts_ns: 1,
            bytes: hello.to_vec()
        }),
        "the ClientHello from its first byte"
    );
}

fn with_flags(mut s: Segment<'_>, fin: bool, rst: bool) -> Segment<'_> {
    s.fin = fin;
    s.rst = rst;
    s
}

#[test]
fn segments_after_the_close_start_no_second_conversation() {
    let hello = [22u8, 3, 1, 0, 4, 1, 0, 0, 0];
    let alert = [21u8, 3, 3, 0, 2, 2, 70];
    let mut t = Tracker::new(vec![443], false);
    let mut done = Vec::new();
    let (c, s) = ("127.0.0.1:40000", "127.0.0.1:443");
    t.segment(1, &seg(c, s, 1000, true, false, &[]), &mut done);
    t.segment(2, &seg(s, c, 5000, true, true, &[]), &mut done);
    t.segment(3, &seg(c, s, 1001, false, true, &hello), &mut done);
    t.segment(4, &seg(s, c, 5001, false, true, &alert), &mut done);
    t.segment(
        5,
        &with_flags(seg(s, c, 5008, false, true, &[]), true, false),
        &mut done,
    );
    t.segment(
        6,
        &with_flags(seg(c, s, 1010, false, true, &[]), true, false),
        &mut done,
    );
    assert_eq!(done.len(), 1, "judged at the second FIN");
    // Retransmissions of both ends' data after the close, then a late RST.
    t.segment(7, &seg(s, c, 5001, false, true, &alert), &mut done);
    t.segment(8, &seg(c, s, 1001, false, true, &hello), &mut done);
    t.segment(
        9,
        &with_flags(seg(c, s, 1011, false, false, &[]), false, true),
        &mut done,
    );
    // The client's SYN again (a retransmission, a duplicated frame) and its SYN-ACK.
    t.segment(10, &seg(c, s, 1000, true, false, &[]), &mut done);
    t.segment(11, &seg(s, c, 5000, true, true, &[]), &mut done);
    assert_eq!(done.len(), 1, "no phantom conversation");
    assert!(t.finish(12).is_empty());
    // A new SYN on the same ends (port reuse) is a new connection.
    let mut t2 = Tracker::new(vec![443], false);
    let mut done2 = Vec::new();
    t2.segment(
        1,
        &with_flags(seg(c, s, 1000, false, true, &hello), false, true),
        &mut done2,
    );
    t2.segment(2, &seg(c, s, 9000, true, false, &[]), &mut done2);
    t2.segment(3, &seg(c, s, 9001, false, true, &hello), &mut done2);
    assert_eq!(done2.len(), 1);
    assert_eq!(t2.finish(4).len(), 1, "the new connection after a SYN");
}

#[test]
fn a_capture_that_starts_mid_connection_is_truncated_not_failed() {
    let app = [23u8, 3, 3, 0, 3, 1, 2, 3];
    let mut t = Tracker::new(vec![443], false);
    let mut done = Vec::new();
    let (c, s) = ("127.0.0.1:40000", "127.0.0.1:443");
    // One record each way, no SYN, then silence until the end of the capture.
    t.segment(1, &seg(c, s, 77_000, false, true, &app), &mut done);
    t.segment(2, &seg(s, c, 99_000, false, true, &app), &mut done);
    let r = t.finish(600_000_000_000).pop().expect("one conversation");
    assert_eq!(
        r.outcome,
        HandshakeOutcome::Truncated(Truncated {
            bytes_from_client: 8,
            bytes_from_server: 8
        })
    );
    // Without a SYN but from the ClientHello on, the handshake is whole: judged.
    let hello = [22u8, 3, 1, 0, 4, 1, 0, 0, 0];
    let mut t = Tracker::new(vec![443], false);
    t.segment(1, &seg(c, s, 77_000, false, true, &hello[..3]), &mut done);
    t.segment(2, &seg(c, s, 77_003, false, true, &hello[3..]), &mut done);
    let r = t.finish(600_000_000_000).pop().expect("one conversation");
    assert_eq!(r.outcome.kind(), "failed", "{:?}", r.outcome);
    // Plaintext off the TLS ports stays plaintext.
    let mut t = Tracker::new(vec![443], false);
    let web = "127.0.0.1:80";
    t.segment(
        1,
        &seg(c, web, 5, false, true, b"GET / HTTP/1.1\r\n\r\n"),
        &mut done,
    );
    let r = t.finish(2).pop().expect("one conversation");
    assert_eq!(r.outcome.kind(), "not_tls");
}

#[test]
fn tls_after_a_plaintext_preamble_is_judged_and_its_protocol_named() {
    let hello = [22u8, 3, 1, 0, 4, 1, 0, 0, 0];
    let alert = [21u8, 3, 3, 0, 2, 2, 40];
    let (c, s) = ("127.0.0.1:40000", "127.0.0.1:2525");
    let mut t = Tracker::new(vec![443], false);
    let mut done = Vec::new();
    t.segment(1, &seg(c, s, 1000, true, false, &[]), &mut done);
    t.segment(2, &seg(s, c, 5000, true, true, &[]), &mut done);
    let mut cs = 1001u32;
    let mut ss = 5001u32;
    let mut send = |t: &mut Tracker, from_client: bool, bytes: &[u8], done: &mut Vec<Report>| {
        let (a, b, n) = if from_client {
            (c, s, &mut cs)
        } else {
            (s, c, &mut ss)
        };
        t.segment(3, &seg(a, b, *n, false, true, bytes), done);
        *n += bytes.len() as u32;
    };
    send(&mut t, false, b"220 mx.example ESMTP\r\n", &mut done);
    send(&mut t, true, b"EHLO client\r\n", &mut done);
    send(
        &mut t,
        false,
        b"250-mx.example\r\n250 STARTTLS\r\n",
        &mut done,
    );
    send(&mut t, true, b"STARTTLS\r\n", &mut done);
    send(&mut t, false, b"220 go ahead\r\n", &mut done);
    send(&mut t, true, &hello, &mut done);
    send(&mut t, false, &alert, &mut done);
    let r = t.finish(10_000_000_000).pop().expect("one conversation");
    assert_eq!(r.upgrade, Some("smtp"));
    let d = r
        .outcome
        .diagnosis()
        .expect("the handshake after STARTTLS failed");
    assert_eq!(d.alert.as_ref().and_then(|a| a.code), Some(40));
    // Plaintext that never turns to TLS stays plaintext, with no upgrade.
    let mut t = Tracker::new(vec![443], false);
    t.segment(1, &seg(c, s, 1, false, true, b"EHLO x\r\n"), &mut done);
    t.segment(2, &seg(c, s, 10, false, true, b"QUIT\r\n"), &mut done);
    let r = t.finish(3).pop().expect("one conversation");
    assert_eq!((r.upgrade, r.outcome.kind()), (None, "not_tls"));
}

#[test]
fn a_tls_start_that_arrives_ahead_of_the_plaintext_before_it_is_found() {
    let hello = [22u8, 3, 1, 0, 4, 1, 0, 0, 0];
    let alert = [21u8, 3, 3, 0, 2, 2, 40];
    let (c, s) = ("127.0.0.1:40000", "127.0.0.1:2525");
    let mut t = Tracker::new(vec![443], false);
    let mut done = Vec::new();
    t.segment(1, &seg(c, s, 1000, true, false, &[]), &mut done);
    t.segment(2, &seg(s, c, 5000, true, true, &[]), &mut done);
    let banner = b"220 mx ESMTP\r\n";
    t.segment(3, &seg(s, c, 5001, false, true, banner), &mut done);
    let ehlo = b"EHLO x\r\nSTARTTLS\r\n";
    // The ClientHello overtakes the STARTTLS before it (reordering, or a lost segment
    // retransmitted late).
    let hello_seq = 1001 + ehlo.len() as u32;
    t.segment(4, &seg(c, s, hello_seq, false, true, &hello), &mut done);
    t.segment(5, &seg(c, s, 1001, false, true, ehlo), &mut done);
    let go = 5001 + banner.len() as u32;
    t.segment(6, &seg(s, c, go, false, true, &alert), &mut done);
    let r = t.finish(10_000_000_000).pop().expect("one conversation");
    assert_eq!(r.upgrade, Some("smtp"));
    assert_eq!(
        r.outcome.diagnosis().and_then(|d| d.alert.as_ref()?.code),
        Some(40),
        "{:?}",
        r.outcome
    );
}

#[test]
fn a_capture_that_joins_inside_a_record_is_truncated_and_text_stays_plaintext() {
    let (c, s) = ("127.0.0.1:40000", "127.0.0.1:8000");
    let mut t = Tracker::new(vec![443], false);
    let mut done = Vec::new();
    // The middle of an application_data record each way: ciphertext, no record header.
    t.segment(
        1,
        &seg(
            c,
            s,
            9_000,
            false,
            true,
            &[0x9c, 0x01, 0xf3, 0x44, 0x10, 0x00],
        ),
        &mut done,
    );
    t.segment(
        2,
        &seg(
            s,
            c,
            7_000,
            false,
            true,
            &[0x88, 0xfe, 0x02, 0x31, 0x7a, 0x05],
        ),
        &mut done,
    );
    let r = t.finish(3).pop().expect("one conversation");
    assert_eq!(r.outcome.kind(), "truncated", "{:?}", r.outcome);
}
