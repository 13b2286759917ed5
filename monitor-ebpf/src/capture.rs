//! What happens to a connection that matters: it gets state when a TLS record starts (or
//! its first payload touches a TLS port), its open record goes out, and each direction's
//! bytes are captured up to the budget; a plaintext flow is watched for a STARTTLS-style
//! upgrade; userspace ends a capture early through `STOP`.

use core::ptr;

use aya_ebpf::{
    bindings::{__sk_buff, bpf_sock, bpf_tcp_sock},
    btf_maps::HashMap,
    helpers::generated::{bpf_get_socket_cookie, bpf_skb_cgroup_id, bpf_tcp_sock},
    macros::btf_map,
};
use monitor_common::{
    DATA_CHUNK, MAX_DIRECTION_BUDGET, OpenEvent, counter, data_flags, direction, kind, role,
    rules::{self, Window},
};

use crate::{
    direction_budget,
    owners::client_owner,
    packet::{Segment, connection_fresh, load, payload_head, port_speaks_tls},
    ring::{count, emit_data, header, output},
    self_tgid,
    state::{
        self, F_FULL_EGRESS, F_FULL_INGRESS, F_MID_STREAM, F_OPEN_REPORTED, F_OWNER_KNOWN,
        F_ROLE_CLIENT, F_ROLE_SERVER, F_START_EGRESS, F_START_INGRESS, MODE_DONE, MODE_IGNORE,
        MODE_TLS, MODE_WATCH, SockState, by_dir, dir_index, full_flag, start_flag,
    },
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
        let fresh = connection_fresh(tp, dir, seg.seq);
        let head = payload_head(skb, seg);
        let tls = rules::looks_like_tls(&head);
        if !tls && !(fresh && port_speaks_tls(sk)) {
            return None;
        }
        let st = state::get_or_create(sk.cast());
        if st.is_null() {
            return None;
        }
        let st = &mut *st;
        st.cookie = bpf_get_socket_cookie(skb.cast());
        if let Some(owner) = client_owner(st.cookie) {
            st.owner = owner;
            st.flags |= F_ROLE_CLIENT | F_OWNER_KNOWN;
            if st.owner.tgid == self_tgid() {
                st.mode = MODE_IGNORE;
                return None;
            }
        } else if tls && is_client_hello(skb, seg, &head) {
            // No connect() seen: the side sending the ClientHello is the client.
            st.flags |= by_dir(dir, F_ROLE_CLIENT, F_ROLE_SERVER);
        } else if fresh && dir == direction::INGRESS {
            // The peer spoke first on a connection we did not open: accepted.
            st.flags |= F_ROLE_SERVER;
        }
        // Watched from here unless it starts TLS (below, or at a later segment).
        st.mode = MODE_WATCH;
        st.watched = seg.payload_len;
        if !tls {
            sample(skb, sk, st, dir, seg);
            return None;
        }
        if fresh {
            st.mode = MODE_TLS;
            count(counter::FLOWS_TLS, 1);
            report_open(skb, sk, st);
        } else if !upgrade(skb, sk, st, dir, seg) {
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
/// (ingress) or the oldest unacknowledged byte (egress). At a connection's first payload both
/// are the first payload byte even when that segment is a retransmission or arrives out of
/// order, so holes at the start are visible to userspace.
#[inline(always)]
unsafe fn stream_origin(sk: *mut bpf_sock, dir: u8, mid_stream_other: bool) -> Option<u32> {
    // SAFETY: helper on a full socket; fields read through the verifier-checked pointer.
    unsafe {
        let tp = bpf_tcp_sock(sk);
        if tp.is_null() {
            return None;
        }
        Some(match (dir, mid_stream_other) {
            (direction::INGRESS, _) => ptr::read_volatile(&(*tp).rcv_nxt),
            (_, false) => ptr::read_volatile(&(*tp).snd_una),
            // Upgrade seen on ingress: our next byte to send starts the egress stream.
            (_, true) => ptr::read_volatile(&(*tp).snd_nxt),
        })
    }
}

/// Plaintext first payload on a TLS port (e.g. HTTP sent to :443): the open record and one
/// short sample.
#[inline(always)]
unsafe fn sample(
    skb: *mut __sk_buff,
    sk: *mut bpf_sock,
    st: &mut SockState,
    dir: u8,
    seg: &Segment,
) {
    // SAFETY: forwarded verifier-checked pointers.
    unsafe {
        report_open(skb, sk, st);
        let n = rules::sample_len(seg.payload_len);
        let origin = stream_origin(sk, dir, false).unwrap_or(seg.seq);
        let mut flags = data_flags::SAMPLE;
        if n < seg.payload_len {
            flags |= data_flags::TRUNCATED;
        }
        let _ = emit_data(
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
    }
}

/// Plaintext flow with state (sampled on a TLS port): look at the first bytes of each segment
/// for a late ClientHello (STARTTLS), for the first few KiB only. Flows without state are
/// watched the same way by `on_packet`/`on_untracked`.
#[inline(always)]
pub unsafe fn watch(
    skb: *mut __sk_buff,
    sk: *mut bpf_sock,
    st: &mut SockState,
    dir: u8,
    seg: &Segment,
) -> bool {
    st.watched = st.watched.saturating_add(seg.payload_len);
    if st.watched > watch_limit() {
        st.mode = MODE_DONE;
        return false;
    }
    if !rules::looks_like_tls(&payload_head(skb, seg)) {
        return false;
    }
    // SAFETY: forwarded verifier-checked pointers.
    unsafe { upgrade(skb, sk, st, dir, seg) }
}

/// A TLS record starts mid-connection (STARTTLS): both streams start here, this direction at
/// the segment, the other at its next byte.
#[inline(always)]
unsafe fn upgrade(
    skb: *mut __sk_buff,
    sk: *mut bpf_sock,
    st: &mut SockState,
    dir: u8,
    seg: &Segment,
) -> bool {
    // SAFETY: forwarded verifier-checked pointers.
    unsafe {
        let other = by_dir(dir, direction::INGRESS, direction::EGRESS);
        let Some(other_start) = stream_origin(sk, other, true) else {
            return false;
        };
        st.start[dir_index(dir)] = seg.seq;
        st.start[dir_index(other)] = other_start;
        st.flags |= F_START_EGRESS | F_START_INGRESS | F_MID_STREAM;
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
    if st.flags & start_flag(dir) == 0 {
        // SAFETY: verifier-checked socket pointer.
        let Some(origin) = (unsafe { stream_origin(sk, dir, false) }) else {
            return;
        };
        st.start[i] = origin;
        st.flags |= start_flag(dir);
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
            st.flags |= full_flag(dir);
            if st.flags & (F_FULL_EGRESS | F_FULL_INGRESS) == F_FULL_EGRESS | F_FULL_INGRESS {
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
        st.flags |= full_flag(dir);
    }
    let mut flags = data_flags::TLS;
    if st.flags & F_MID_STREAM != 0 {
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
            break;
        }
        done += len;
    }
    st.sent[i] = st.sent[i].saturating_add(n);
}

/// The connection's OPEN record, once: ends, role, owner when known, the socket's cgroup.
#[inline(always)]
pub unsafe fn report_open(skb: *mut __sk_buff, sk: *mut bpf_sock, st: &mut SockState) {
    if st.flags & F_OPEN_REPORTED != 0 {
        return;
    }
    st.flags |= F_OPEN_REPORTED;
    count(counter::FLOWS_REPORTED, 1);
    let role = if st.flags & F_ROLE_CLIENT != 0 {
        role::CLIENT
    } else if st.flags & F_ROLE_SERVER != 0 {
        role::SERVER
    } else {
        role::UNKNOWN
    };
    let mut ev = OpenEvent {
        header: header(kind::OPEN, st.cookie),
        role,
        owner_known: (st.flags & F_OWNER_KNOWN != 0) as u8,
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
    output(&ev);
}
