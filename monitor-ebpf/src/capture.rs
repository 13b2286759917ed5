//! What happens to a connection that matters: it gets state when a TLS record starts (or
//! its first payload touches a TLS port), its open record goes out, and each direction's
//! bytes are captured up to the budget; a plaintext flow is watched for a STARTTLS-style
//! upgrade; userspace ends a capture early through `STOP`.

use core::ptr;

use aya_ebpf::{
    bindings::{__sk_buff, bpf_sock, bpf_tcp_sock},
    btf_maps::HashMap,
    helpers::generated::{bpf_get_socket_cookie, bpf_skb_cgroup_id},
    macros::btf_map,
};
use monitor_common::{
    DATA_CHUNK, EventHeader, MAX_DIRECTION_BUDGET, OpenEvent, counter, data_flags, direction, kind,
    record_flags, role,
    rules::{self, Window},
};

use crate::{
    direction_budget,
    owners::client_owner,
    packet::{Segment, counters, load, payload_head, port_speaks_tls},
    ring::{count, emit_data, header, output},
    self_tgid,
    state::{self, MODE_DONE, MODE_IGNORE, MODE_TLS, MODE_WATCH, SockState, by_dir, dir_index},
    watch_limit,
};

const AF_INET: u32 = 2;

/// Cookies of flows whose outcome userspace has decided: stop capturing them.
#[btf_map]
pub static STOP: HashMap<u64, u8, 16384> = HashMap::new();

/// A payload segment of a connection without state. It gets state when it matters: a TLS
/// record starts (at the connection's first payload, or later: a STARTTLS-style upgrade), or
/// the connection's first payload goes to or from a port known to speak TLS (one short
/// sample). Returns the state when the segment is to be captured.
#[inline(always)]
pub unsafe fn on_untracked(
    skb: *mut __sk_buff,
    sk: *mut bpf_sock,
    tp: *mut bpf_tcp_sock,
    dir: u8,
    seg: &Segment,
) -> Option<&'static mut SockState> {
    // SAFETY: forwarded verifier-checked pointers.
    unsafe {
        let c = counters(sk, tp);
        let fresh = rules::first_payload(dir, &c, seg.seq);
        let head = payload_head(skb, seg);
        // A server's first bytes that are a plaintext alert, after client bytes that did not
        // look like TLS (else the connection would have state): plaintext sent to a TLS
        // listener, answered as Java does. Captured with the client's start missing.
        let answer = dir == direction::EGRESS
            && rules::plaintext_alert(&head)
            && c.data_segs_in != 0
            && rules::missed_peer_start(dir, &c, seg.seq).is_some();
        let tls = rules::looks_like_tls(&head) || answer;
        if !tls && !(fresh && port_speaks_tls(sk)) {
            return None;
        }
        let st = state::get_or_create(sk.cast());
        if st.is_null() {
            return None;
        }
        let st = &mut *st;
        st.cookie = bpf_get_socket_cookie(skb.cast());
        let mut missed = None;
        if let Some(owner) = client_owner(st.cookie) {
            st.owner = owner;
            st.role = role::CLIENT;
            st.owner_known = 1;
            if st.owner.tgid == self_tgid() {
                st.mode = MODE_IGNORE;
                return None;
            }
        } else if let Some(start) = tls
            .then(|| rules::missed_peer_start(dir, &c, seg.seq))
            .flatten()
        {
            // An accepted socket whose peer spoke first where we could not see it.
            missed = Some(start);
            st.role = role::SERVER;
        } else if tls && is_client_hello(skb, seg, &head) {
            // No connect() seen: the side sending the ClientHello is the client.
            st.role = by_dir(dir, role::CLIENT, role::SERVER);
        } else if fresh && dir == direction::INGRESS {
            // The peer spoke first on a connection we did not open: accepted.
            st.role = role::SERVER;
        }
        // Watched from here unless it starts TLS (below, or at a later segment).
        st.mode = MODE_WATCH;
        st.watched[dir_index(dir)] = seg.payload_len;
        if !tls {
            sample(skb, sk, tp, st, dir, seg);
            return None;
        }
        if let Some(peer_start) = missed {
            // Both streams from their true starts: the peer's missing first bytes show in
            // userspace as a hole, not as a stream that begins later.
            let (mine, theirs) = (dir_index(dir), 1 - dir_index(dir));
            st.start[mine] = seg.seq;
            st.start[theirs] = peer_start;
            st.started = [1, 1];
            st.missed_start = 1;
            st.mode = MODE_TLS;
            count(counter::FLOWS_TLS, 1);
            count(counter::MISSED_START, 1);
            report_open(skb, sk, st);
        } else if fresh {
            st.mode = MODE_TLS;
            count(counter::FLOWS_TLS, 1);
            report_open(skb, sk, st);
        } else if !upgrade(skb, sk, tp, st, dir, seg) {
            return None;
        }
        Some(st)
    }
}

/// The record starting the segment is a ClientHello (`rules::starts_client_hello`).
#[inline(always)]
fn is_client_hello(skb: *mut __sk_buff, seg: &Segment, head: &[u8; 5]) -> bool {
    // The sixth byte is read only for a handshake record.
    head[0] != 0x16
        || rules::starts_client_hello(head, load::<6>(skb, seg.payload_off).map(|t| t[5]))
}

/// Start of this direction's stream, read from the TCP socket: the next byte expected
/// (ingress) or this socket's oldest unacknowledged byte, past an unacknowledged SYN
/// (egress). At a connection's first payload both are the first payload byte even when that
/// segment is a retransmission or arrives out of order, so holes at the start are visible to
/// userspace.
#[inline(always)]
unsafe fn stream_origin(
    sk: *mut bpf_sock,
    tp: *mut bpf_tcp_sock,
    dir: u8,
    mid_stream_other: bool,
) -> u32 {
    // SAFETY: verifier-checked pointers.
    let c = unsafe { counters(sk, tp) };
    match (dir, mid_stream_other) {
        (direction::INGRESS, _) => c.rcv_nxt,
        (_, false) => c.egress_origin(),
        // Upgrade seen on ingress: our next byte to send starts the egress stream.
        // SAFETY: field read through the verifier-checked pointer.
        (_, true) => unsafe { ptr::read_volatile(&(*tp).snd_nxt) },
    }
}

/// Plaintext first payload on a TLS port (e.g. HTTP sent to :443): the open record and one
/// short sample.
#[inline(always)]
unsafe fn sample(
    skb: *mut __sk_buff,
    sk: *mut bpf_sock,
    tp: *mut bpf_tcp_sock,
    st: &mut SockState,
    dir: u8,
    seg: &Segment,
) {
    // SAFETY: forwarded verifier-checked pointers.
    unsafe {
        report_open(skb, sk, st);
        let n = rules::sample_len(seg.payload_len);
        let origin = stream_origin(sk, tp, dir, false);
        let mut flags = data_flags::SAMPLE | st.record_flags();
        if n < seg.payload_len {
            flags |= data_flags::TRUNCATED;
        }
        let sent = emit_data(
            skb,
            st.cookie,
            dir,
            flags,
            seg.seq,
            origin,
            seg.payload_len,
            seg.payload_off,
            n,
        );
        if !sent {
            st.lost = 1;
        }
    }
}

/// Plaintext flow with state (sampled on a TLS port): look at the first bytes of each segment
/// for a late ClientHello (STARTTLS), for the first few KiB only. Flows without state are
/// watched the same way by `on_packet`/`on_untracked`.
#[inline(always)]
pub unsafe fn watch(
    skb: *mut __sk_buff,
    sk: *mut bpf_sock,
    tp: *mut bpf_tcp_sock,
    st: &mut SockState,
    dir: u8,
    seg: &Segment,
) -> bool {
    let i = dir_index(dir);
    st.watched[i] = st.watched[i].saturating_add(seg.payload_len);
    if st.watched[0].saturating_add(st.watched[1]) > watch_limit() {
        st.mode = MODE_DONE;
        return false;
    }
    if !rules::looks_like_tls(&payload_head(skb, seg)) {
        return false;
    }
    // SAFETY: forwarded verifier-checked pointers.
    unsafe { upgrade(skb, sk, tp, st, dir, seg) }
}

/// A TLS record starts mid-connection (STARTTLS): both streams start here, this direction at
/// the segment, the other at its next byte.
#[inline(always)]
unsafe fn upgrade(
    skb: *mut __sk_buff,
    sk: *mut bpf_sock,
    tp: *mut bpf_tcp_sock,
    st: &mut SockState,
    dir: u8,
    seg: &Segment,
) -> bool {
    // SAFETY: forwarded verifier-checked pointers.
    unsafe {
        let other = by_dir(dir, direction::INGRESS, direction::EGRESS);
        st.start[dir_index(dir)] = seg.seq;
        st.start[dir_index(other)] = stream_origin(sk, tp, other, true);
        st.started = [1, 1];
        st.mid_stream = 1;
        st.mode = MODE_TLS;
        count(counter::FLOWS_UPGRADED, 1);
        report_open(skb, sk, st);
    }
    true
}

/// TLS flow: send the segment's bytes that fall inside this direction's budget
/// (`rules::capture_window`).
#[inline(always)]
pub unsafe fn capture(
    skb: *mut __sk_buff,
    sk: *mut bpf_sock,
    tp: *mut bpf_tcp_sock,
    st: &mut SockState,
    dir: u8,
    seg: &Segment,
) {
    let cookie = st.cookie;
    // SAFETY: stack key.
    if STOP.get_ptr(&cookie).is_some() {
        st.mode = MODE_DONE;
        let _ = STOP.remove(&cookie);
        return;
    }
    let i = dir_index(dir);
    if st.started[i] == 0 {
        // SAFETY: verifier-checked socket pointers.
        st.start[i] = unsafe { stream_origin(sk, tp, dir, false) };
        st.started[i] = 1;
    }
    let (skip, n, truncated) = match rules::capture_window(
        seg.seq,
        st.start[i],
        seg.payload_len,
        direction_budget(),
        st.sent[i],
    ) {
        Window::BeforeStart => return,
        Window::BudgetSpent => {
            count(counter::BUDGET_TRUNCATED, seg.payload_len as u64);
            st.full[i] = 1;
            if st.full[0] != 0 && st.full[1] != 0 {
                st.mode = MODE_DONE;
            }
            return;
        }
        Window::Take {
            skip,
            len,
            truncated,
        } => (skip, len, truncated),
    };
    if truncated {
        count(
            counter::BUDGET_TRUNCATED,
            (seg.payload_len - skip - n) as u64,
        );
        st.full[i] = 1;
    }
    let mut flags = data_flags::TLS | st.record_flags();
    if st.mid_stream != 0 {
        flags |= data_flags::MID_STREAM;
    }
    if truncated {
        flags |= data_flags::TRUNCATED;
    }
    let start = st.start[i];
    let mut done: u32 = 0;
    // Chunked so loopback GSO super-packets (up to 64 KiB) are not truncated; bounded by
    // the largest budget.
    for _ in 0..(MAX_DIRECTION_BUDGET as usize / DATA_CHUNK) {
        if done >= n {
            break;
        }
        let left = n - done;
        let len = if left > DATA_CHUNK as u32 {
            DATA_CHUNK as u32
        } else {
            left
        };
        // SAFETY: forwarded context pointer.
        let ok = unsafe {
            emit_data(
                skb,
                cookie,
                dir,
                flags,
                seg.seq.wrapping_add(skip + done),
                start,
                seg.payload_len,
                seg.payload_off + skip + done,
                len,
            )
        };
        if !ok {
            st.lost = 1;
            break;
        }
        done += len;
    }
    st.sent[i] = st.sent[i].saturating_add(n);
}

/// The connection's OPEN record, once: ends, role, owner when known, the socket's cgroup.
#[inline(always)]
pub unsafe fn report_open(skb: *mut __sk_buff, sk: *mut bpf_sock, st: &mut SockState) {
    if st.open_reported != 0 {
        return;
    }
    st.open_reported = 1;
    count(counter::FLOWS_REPORTED, 1);
    let mut open_flags = st.record_flags();
    if st.missed_start != 0 {
        open_flags |= record_flags::MISSED_START;
    }
    let mut ev = OpenEvent {
        header: EventHeader {
            flags: open_flags,
            ..header(kind::OPEN, st.cookie)
        },
        role: st.role,
        owner_known: st.owner_known,
        owner: st.owner,
        ..OpenEvent::default()
    };
    // SAFETY: bpf_sock fields are read one 4-byte word at a time (the verifier rejects
    // wider loads of context fields).
    unsafe {
        ev.socket_cgroup_id = bpf_skb_cgroup_id(skb);
        let family = ptr::read_volatile(&(*sk).family);
        ev.family = family as u16;
        ev.local_port = ptr::read_volatile(&(*sk).src_port) as u16;
        ev.peer_port = u16::from_be(ptr::read_volatile(&(*sk).dst_port));
        if family == AF_INET {
            let l = ptr::read_volatile(&(*sk).src_ip4).to_ne_bytes();
            let p = ptr::read_volatile(&(*sk).dst_ip4).to_ne_bytes();
            ev.local_addr[..4].copy_from_slice(&l);
            ev.peer_addr[..4].copy_from_slice(&p);
        } else {
            for w in 0..4 {
                let l = ptr::read_volatile(&(*sk).src_ip6[w]).to_ne_bytes();
                let p = ptr::read_volatile(&(*sk).dst_ip6[w]).to_ne_bytes();
                ev.local_addr[w * 4..w * 4 + 4].copy_from_slice(&l);
                ev.peer_addr[w * 4..w * 4 + 4].copy_from_slice(&p);
            }
        }
    }
    if !output(&ev) {
        st.lost = 1;
    }
}
