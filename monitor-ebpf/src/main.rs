//! tlsmon kernel programs.
//!
//! Packet-level capture (measured in shared/docs/kernel.md: syscall tracepoints tax every
//! syscall on the host, cgroup_skb does not):
//! - `cgroup_skb` ingress + egress on the root cgroup v2 see every TCP segment of every
//!   process, container and network namespace. The first payload of a connection decides in
//!   kernel whether it looks like TLS; TLS flows are captured up to a per-direction budget,
//!   plaintext flows cost no ring record (one short sample on ports known to speak TLS) and
//!   are only watched for a STARTTLS-style late ClientHello.
//! - `connect4`/`connect6` note the owner of client sockets (process context) in an array
//!   slot chosen by socket cookie, and tp_btf `tcp_rcv_space_adjust` names the first process that
//!   reads an accepted socket (it runs in the reader's context, after the ClientHello
//!   arrived, so userspace holds events until the owner is known).
//! - tp_btf `inet_sock_set_state`, `tcp_receive_reset`, `tcp_send_reset`: lifecycle of the
//!   connections that were reported.
//!
//! Per-socket state lives in an SK_STORAGE map, created only for connections that matter (a
//! TLS record seen, plaintext on a TLS port, our own): an ordinary TCP connection costs no
//! allocation; while it is young its first bytes are looked at, judged by the TCP socket's
//! own counters, and past the watch limit it costs one storage lookup per packet. The socket
//! cookie is the identity sent to userspace. Records go to one ring buffer with
//! `BPF_RB_NO_WAKEUP`; userspace drains it on a timer (waking it per record cost 1.4-1.5x
//! CPU on connection-heavy work).
#![no_std]
#![no_main]

use core::{ffi::c_void, mem::size_of, ptr};

use aya_ebpf::{
    EbpfContext,
    bindings::{__sk_buff, BPF_SK_STORAGE_GET_F_CREATE, bpf_sock, bpf_tcp_sock},
    btf_maps::{Array, HashMap, PerCpuArray, RingBuf, SkStorage},
    helpers::generated::{
        bpf_get_current_cgroup_id, bpf_get_current_comm, bpf_get_current_pid_tgid,
        bpf_get_socket_cookie, bpf_ktime_get_ns, bpf_ringbuf_output, bpf_sk_fullsock,
        bpf_sk_storage_get, bpf_skb_cgroup_id, bpf_skb_load_bytes, bpf_tcp_sock,
    },
    macros::{btf_map, btf_tracepoint, cgroup_skb, cgroup_sock_addr},
    programs::{BtfTracePointContext, SkBuffContext, SockAddrContext},
};
use monitor_common::{
    COMM_LEN, CloseEvent, DATA_CHUNK, DataEvent, EventHeader, MAX_DIRECTION_BUDGET, OpenEvent,
    Owner, OwnerEvent, SAMPLE_LEN, close_reason, counter, data_flags, direction, kind, role,
};

// ---- tunables, written by the loader (EbpfLoader::set_global) ----------------------------
#[unsafe(no_mangle)]
static TLSMON_SELF_TGID: u32 = 0;
#[unsafe(no_mangle)]
static TLSMON_DIRECTION_BUDGET: u32 = monitor_common::DEFAULT_DIRECTION_BUDGET;
#[unsafe(no_mangle)]
static TLSMON_WATCH_LIMIT: u32 = monitor_common::DEFAULT_WATCH_LIMIT;
/// Non-zero only for `cargo xtask bench capture`: every program returns at once, which
/// measures what the hooks themselves cost. Read-only, so the verifier drops the branch.
#[unsafe(no_mangle)]
static TLSMON_FLOOR: u32 = 0;

#[inline(always)]
fn global(v: &'static u32) -> u32 {
    // SAFETY: a read of a frozen read-only global; volatile so the loader's value is used.
    unsafe { ptr::read_volatile(v) }
}

#[inline(always)]
fn floor() -> bool {
    global(&TLSMON_FLOOR) != 0
}

// ---- per-socket state --------------------------------------------------------------------
// Mode 0: zero-filled storage not yet given one (never left so).
const MODE_TLS: u8 = 1;
const MODE_WATCH: u8 = 2;
const MODE_DONE: u8 = 3;
const MODE_IGNORE: u8 = 4;

const F_START_EGRESS: u32 = 1 << 0;
const F_START_INGRESS: u32 = 1 << 1;
const F_OWNER_KNOWN: u32 = 1 << 2;
const F_OPEN_REPORTED: u32 = 1 << 3;
const F_ROLE_CLIENT: u32 = 1 << 4;
const F_ROLE_SERVER: u32 = 1 << 5;
const F_MID_STREAM: u32 = 1 << 6;
const F_FULL_EGRESS: u32 = 1 << 7;
const F_FULL_INGRESS: u32 = 1 << 8;

#[repr(C)]
pub struct SockState {
    cookie: u64,
    owner: Owner,
    flags: u32,
    mode: u8,
    _pad: [u8; 3],
    /// Sequence number where each direction's captured stream starts (index: direction).
    start: [u32; 2],
    /// Bytes sent to the ring per direction, retransmissions included (bounds a storm).
    sent: [u32; 2],
    /// Plaintext bytes looked at for a late TLS start.
    watched: u32,
    _pad2: u32,
}

#[btf_map]
static SOCKS: SkStorage<SockState> = SkStorage::new();

/// A client socket's owner as noted at connect().
#[repr(C)]
pub struct ClientOwner {
    /// 0 while the slot is being written.
    cookie: u64,
    owner: Owner,
}

const OWNER_SLOTS: u64 = 65536;

/// Owners of client sockets, noted at connect() (process context) and read when the
/// connection first matters. Direct-mapped by cookie: cookies are handed out in increasing
/// order, so a slot is taken again only after about `OWNER_SLOTS` later connections; the
/// cookie in the slot says whether it still holds this socket's owner (if not, userspace's
/// /proc fallback names it). An array slot costs no lock, allocation or eviction scan (an
/// LRU hash here cost more than the SK_STORAGE allocation it replaced: 1.1-1.8 us a
/// connect()).
#[btf_map]
static OWNERS: Array<ClientOwner, { OWNER_SLOTS as usize }> = Array::new();

#[btf_map]
static EVENTS: RingBuf<u8, { 4 * 1024 * 1024 }> = RingBuf::new();

/// Ports known to speak TLS (either end of a connection), indexed by port: non-zero = TLS.
/// Userspace fills it from configuration and from the TLS handshakes it has seen. An array
/// (64 KiB): its lookups are inlined by the verifier, and it cannot fill up.
#[btf_map]
static TLS_PORTS: Array<u8, 65536> = Array::new();

/// Cookies of flows whose outcome userspace has decided: stop capturing them.
#[btf_map]
static STOP: HashMap<u64, u8, 16384> = HashMap::new();

#[btf_map]
static COUNTERS: PerCpuArray<u64, { counter::COUNT as usize }> = PerCpuArray::new();

#[repr(C)]
pub struct Scratch {
    bytes: [u8; size_of::<DataEvent>() + DATA_CHUNK],
}

#[btf_map]
static SCRATCH: PerCpuArray<Scratch, 1> = PerCpuArray::new();

const BPF_RB_NO_WAKEUP: u64 = 1;
const AF_INET: u32 = 2;
const AF_INET6: u32 = 10;
const IPPROTO_TCP: u32 = 6;
const SOCK_STREAM: u32 = 1;

#[inline(always)]
fn map_ptr<M>(m: &'static M) -> *mut c_void {
    ptr::from_ref(m).cast_mut().cast()
}

#[inline(always)]
fn count(idx: u32, n: u64) {
    if let Some(p) = COUNTERS.get_ptr_mut(idx) {
        // SAFETY: per-CPU slot, only this CPU writes it while the program runs.
        unsafe { *p += n };
    }
}

#[inline(always)]
fn output<T>(ev: &T) {
    // SAFETY: `ev` is a plain repr(C) struct on the stack.
    let rc = unsafe {
        bpf_ringbuf_output(
            map_ptr(&EVENTS),
            ptr::from_ref(ev).cast_mut().cast(),
            size_of::<T>() as u64,
            BPF_RB_NO_WAKEUP,
        )
    };
    if rc < 0 {
        count(counter::RING_DROPS, 1);
    }
}

#[inline(always)]
fn header(kind: u8, cookie: u64) -> EventHeader {
    EventHeader {
        kind,
        cookie,
        // SAFETY: helper without arguments.
        ts_ns: unsafe { bpf_ktime_get_ns() },
        ..EventHeader::default()
    }
}

#[inline(always)]
fn current_owner() -> Owner {
    // SAFETY: helpers without memory arguments.
    let pid_tgid = unsafe { bpf_get_current_pid_tgid() };
    let mut owner = Owner {
        tgid: (pid_tgid >> 32) as u32,
        pid: pid_tgid as u32,
        cgroup_id: unsafe { bpf_get_current_cgroup_id() },
        comm: [0; COMM_LEN],
    };
    // SAFETY: writes at most COMM_LEN bytes into the array.
    unsafe { bpf_get_current_comm(owner.comm.as_mut_ptr().cast(), COMM_LEN as u32) };
    owner
}

/// The segment's first 5 payload bytes; zeros for a shorter payload, which cannot start
/// with a TLS record header.
#[inline(always)]
fn payload_head(skb: *mut __sk_buff, seg: &Segment) -> [u8; 5] {
    load::<5>(skb, seg.payload_off).unwrap_or([0; 5])
}

/// "Looks like TLS": a TLS handshake record (type 22, legacy version 3.x), or an
/// SSLv2-compatible ClientHello (RFC 5246 appendix E.2: 2-byte length with the top bit set,
/// message type 1, version 3.x or 2.0).
#[inline(always)]
fn looks_like_tls(b: &[u8; 5]) -> bool {
    (b[0] == 0x16 && b[1] == 0x03 && b[2] <= 0x04)
        || (b[0] & 0x80 != 0 && b[2] == 0x01 && (b[3] == 0x03 || (b[3] == 0x00 && b[4] == 0x02)))
}

// ---- cgroup_skb: the data path -----------------------------------------------------------
#[cgroup_skb(egress)]
pub fn tlsmon_egress(ctx: SkBuffContext) -> i32 {
    if !floor() {
        on_packet(&ctx, direction::EGRESS);
    }
    1
}

#[cgroup_skb(ingress)]
pub fn tlsmon_ingress(ctx: SkBuffContext) -> i32 {
    if !floor() {
        on_packet(&ctx, direction::INGRESS);
    }
    1
}

struct Segment {
    seq: u32,
    payload_off: u32,
    payload_len: u32,
}

/// `N` bytes at `off` from the network header: read in place when they are in the packet's
/// linear data (headers always are; no helper call), else copied by `bpf_skb_load_bytes`
/// (payload in page fragments).
#[inline(always)]
fn load<const N: usize>(skb: *mut __sk_buff, off: u32) -> Option<[u8; N]> {
    // SAFETY: context field reads; the direct read is checked against data_end, which is
    // what the verifier requires of it.
    unsafe {
        let data = ptr::read_volatile(&(*skb).data) as usize;
        let end = ptr::read_volatile(&(*skb).data_end) as usize;
        // Bounded so the verifier can follow the pointer arithmetic. One byte is left to
        // the helper: LLVM turns `at + 1 <= end` into `at < end`, which the verifier does
        // not take as a bound.
        let at = data + (off & 0xffff) as usize;
        if N >= 2 && off <= 0xffff && at + N <= end {
            return Some(ptr::read_unaligned(at as *const [u8; N]));
        }
    }
    let mut buf = [0u8; N];
    // SAFETY: copies N bytes into the local buffer; the helper checks the packet bounds.
    let rc = unsafe { bpf_skb_load_bytes(skb.cast(), off, buf.as_mut_ptr().cast(), N as u32) };
    (rc == 0).then_some(buf)
}

/// IPv6 extension headers walked before giving up (RFC 8200 allows each at most once or
/// twice; a TCP segment rarely carries any).
const MAX_IPV6_EXTENSIONS: usize = 8;

/// Offset of the TCP header after the IPv6 fixed header and its extension headers
/// (hop-by-hop, routing, destination options, fragment, authentication); `None` for
/// anything else (ESP, no next header) and for non-first fragments.
#[inline(always)]
fn ipv6_tcp_offset(skb: *mut __sk_buff, first: u8) -> Option<u32> {
    const HOP_BY_HOP: u8 = 0;
    const ROUTING: u8 = 43;
    const FRAGMENT: u8 = 44;
    const AUTH: u8 = 51;
    const DEST_OPTS: u8 = 60;
    let mut next = first;
    let mut off: u32 = 40;
    for _ in 0..MAX_IPV6_EXTENSIONS {
        if next as u32 == IPPROTO_TCP {
            return Some(off);
        }
        let h = load::<4>(skb, off)?;
        off += match next {
            HOP_BY_HOP | ROUTING | DEST_OPTS => (h[1] as u32 + 1) * 8,
            AUTH => (h[1] as u32 + 2) * 4,
            // Offset 0 only: later fragments carry no TCP header.
            FRAGMENT if u16::from_be_bytes([h[2], h[3]]) >> 3 == 0 => 8,
            _ => return None,
        };
        next = h[0];
    }
    (next as u32 == IPPROTO_TCP).then_some(off)
}

/// IP + TCP headers of a TCP segment (skb data starts at the network header here).
#[inline(always)]
fn parse_segment(skb: *mut __sk_buff, family: u32) -> Option<Segment> {
    // SAFETY: context field read.
    let len = unsafe { ptr::read_volatile(&(*skb).len) };
    let l4 = if family == AF_INET {
        let ip = load::<10>(skb, 0)?;
        if ip[0] >> 4 != 4 || ip[9] as u32 != IPPROTO_TCP {
            return None;
        }
        ((ip[0] & 0x0f) as u32) * 4
    } else {
        let ip = load::<7>(skb, 0)?;
        if ip[0] >> 4 != 6 {
            return None;
        }
        ipv6_tcp_offset(skb, ip[6])?
    };
    let tcp = load::<13>(skb, l4)?;
    let seq = u32::from_be_bytes([tcp[4], tcp[5], tcp[6], tcp[7]]);
    let payload_off = l4 + ((tcp[12] >> 4) as u32) * 4;
    if len <= payload_off {
        return Some(Segment {
            seq,
            payload_off,
            payload_len: 0,
        });
    }
    Some(Segment {
        seq,
        payload_off,
        payload_len: len - payload_off,
    })
}

#[inline(always)]
fn on_packet(ctx: &SkBuffContext, dir: u8) {
    let skb = ctx.as_ptr().cast::<__sk_buff>();
    // SAFETY: context field reads and helpers checked by the verifier.
    unsafe {
        let sk = (*skb).__bindgen_anon_2.sk;
        if sk.is_null() {
            return;
        }
        let sk = bpf_sk_fullsock(sk);
        if sk.is_null() {
            return;
        }
        // Fast path first: a connection already decided (capture over, plaintext on a TLS
        // port watched long enough, our own) costs one storage lookup per packet.
        let st =
            bpf_sk_storage_get(map_ptr(&SOCKS), sk.cast(), ptr::null_mut(), 0).cast::<SockState>();
        if !st.is_null() && matches!((*st).mode, MODE_DONE | MODE_IGNORE) {
            return;
        }
        if ptr::read_volatile(&(*sk).protocol) != IPPROTO_TCP {
            return;
        }
        let family = ptr::read_volatile(&(*sk).family);
        if family != AF_INET && family != AF_INET6 {
            return;
        }
        let tp = bpf_tcp_sock(sk);
        if tp.is_null() {
            return;
        }
        // A connection without state is ordinary so far: past the watch limit (counted by
        // the TCP socket itself) it is left alone.
        if st.is_null() && bytes_seen(tp) > u64::from(global(&TLSMON_WATCH_LIMIT)) {
            return;
        }
        let Some(seg) = parse_segment(skb, family) else {
            count(counter::PARSE_ERRORS, 1);
            return;
        };
        if seg.payload_len == 0 {
            return;
        }
        // One call site for `capture`: its chunk loop is what the verifier pays for.
        let (st, tls) = if st.is_null() {
            match on_untracked(skb, sk, tp, dir, &seg) {
                Some(st) => (st, true),
                None => return,
            }
        } else {
            let st = &mut *st;
            let tls = match st.mode {
                MODE_TLS => true,
                MODE_WATCH => watch(skb, sk, st, dir, &seg),
                _ => false,
            };
            (st, tls)
        };
        if tls {
            capture(skb, sk, st, dir, &seg);
        }
    }
}

/// Payload bytes the connection has received plus those of its own the peer acknowledged.
#[inline(always)]
unsafe fn bytes_seen(tp: *mut bpf_tcp_sock) -> u64 {
    // SAFETY: fields read through the verifier-checked pointer.
    unsafe {
        ptr::read_volatile(&(*tp).bytes_received)
            .wrapping_add(ptr::read_volatile(&(*tp).bytes_acked))
    }
}

/// True for the first payload of a connection: neither side has sent payload before this
/// segment. The ingress program runs before TCP counts the segment; at egress
/// `data_segs_out` already counts it, so there the segment must start at the oldest
/// unacknowledged byte with nothing but the SYN acknowledged.
#[inline(always)]
unsafe fn connection_fresh(tp: *mut bpf_tcp_sock, dir: u8, seq: u32) -> bool {
    // SAFETY: fields read through the verifier-checked pointer.
    unsafe {
        if ptr::read_volatile(&(*tp).data_segs_in) != 0 {
            return false;
        }
        if dir == direction::INGRESS {
            ptr::read_volatile(&(*tp).data_segs_out) == 0
        } else {
            ptr::read_volatile(&(*tp).bytes_acked) <= 1 && ptr::read_volatile(&(*tp).snd_una) == seq
        }
    }
}

/// A payload segment of a connection without state. It gets state when it matters: a TLS
/// record starts (at the connection's first payload, or later: a STARTTLS-style upgrade), or
/// the connection's first payload goes to or from a port known to speak TLS (one short
/// sample). Returns the state when the segment is to be captured.
#[inline(always)]
unsafe fn on_untracked(
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
        let tls = looks_like_tls(&head);
        if !tls && !(fresh && port_speaks_tls(sk)) {
            return None;
        }
        let st = bpf_sk_storage_get(
            map_ptr(&SOCKS),
            sk.cast(),
            ptr::null_mut(),
            BPF_SK_STORAGE_GET_F_CREATE as u64,
        )
        .cast::<SockState>();
        if st.is_null() {
            return None;
        }
        let st = &mut *st;
        st.cookie = bpf_get_socket_cookie(skb.cast());
        if let Some(owner) = client_owner(st.cookie) {
            st.owner = owner;
            st.flags |= F_ROLE_CLIENT | F_OWNER_KNOWN;
            if st.owner.tgid == global(&TLSMON_SELF_TGID) {
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

/// The record starting the segment is a ClientHello (handshake type 1; the SSLv2 form
/// `looks_like_tls` accepts is one by construction).
#[inline(always)]
fn is_client_hello(skb: *mut __sk_buff, seg: &Segment, head: &[u8; 5]) -> bool {
    head[0] != 0x16 || load::<6>(skb, seg.payload_off).is_some_and(|t| t[5] == 1)
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

/// Picks the egress or ingress variant of a per-direction value.
#[inline(always)]
fn by_dir<T>(dir: u8, egress: T, ingress: T) -> T {
    if dir == direction::EGRESS {
        egress
    } else {
        ingress
    }
}

#[inline(always)]
fn start_flag(dir: u8) -> u32 {
    by_dir(dir, F_START_EGRESS, F_START_INGRESS)
}

#[inline(always)]
fn full_flag(dir: u8) -> u32 {
    by_dir(dir, F_FULL_EGRESS, F_FULL_INGRESS)
}

#[inline(always)]
fn dir_index(dir: u8) -> usize {
    by_dir(dir, 0, 1)
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
        let n = if seg.payload_len < SAMPLE_LEN as u32 {
            seg.payload_len
        } else {
            SAMPLE_LEN as u32
        };
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

#[inline(always)]
unsafe fn port_speaks_tls(sk: *mut bpf_sock) -> bool {
    // SAFETY: field reads through the verifier-checked pointer.
    let (local, peer) = unsafe {
        (
            ptr::read_volatile(&(*sk).src_port) as u16,
            u16::from_be(ptr::read_volatile(&(*sk).dst_port)),
        )
    };
    let tls = |port: u16| TLS_PORTS.get(u32::from(port)).is_some_and(|v| *v != 0);
    tls(local) || tls(peer)
}

/// Plaintext flow with state (sampled on a TLS port): look at the first bytes of each segment
/// for a late ClientHello (STARTTLS), for the first few KiB only. Flows without state are
/// watched the same way by `on_packet`/`on_untracked`.
#[inline(always)]
unsafe fn watch(
    skb: *mut __sk_buff,
    sk: *mut bpf_sock,
    st: &mut SockState,
    dir: u8,
    seg: &Segment,
) -> bool {
    st.watched = st.watched.saturating_add(seg.payload_len);
    if st.watched > global(&TLSMON_WATCH_LIMIT) {
        st.mode = MODE_DONE;
        return false;
    }
    if !looks_like_tls(&payload_head(skb, seg)) {
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
        let other = if dir == direction::EGRESS {
            direction::INGRESS
        } else {
            direction::EGRESS
        };
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

/// TLS flow: send the segment's bytes that fall inside this direction's budget.
#[inline(always)]
unsafe fn capture(
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
    let budget = global(&TLSMON_DIRECTION_BUDGET);
    let budget = if budget > MAX_DIRECTION_BUDGET {
        MAX_DIRECTION_BUDGET
    } else {
        budget
    };
    let rel = seg.seq.wrapping_sub(st.start[i]) as i32;
    // Bytes of the segment before the stream start (plaintext before an upgrade) are skipped.
    let skip: u32 = if rel < 0 { rel.unsigned_abs() } else { 0 };
    if skip >= seg.payload_len {
        return;
    }
    let rel = if rel < 0 { 0 } else { rel as u32 };
    if rel >= budget || st.sent[i] >= 2 * budget {
        count(counter::BUDGET_TRUNCATED, seg.payload_len as u64);
        st.flags |= full_flag(dir);
        if st.flags & (F_FULL_EGRESS | F_FULL_INGRESS) == F_FULL_EGRESS | F_FULL_INGRESS {
            st.mode = MODE_DONE;
        }
        return;
    }
    let avail = seg.payload_len - skip;
    let room = budget - rel;
    let (n, truncated) = if avail > room {
        (room, true)
    } else {
        (avail, false)
    };
    if truncated {
        count(counter::BUDGET_TRUNCATED, (avail - room) as u64);
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

/// One DATA record: header + `len` (1..=DATA_CHUNK) payload bytes, variable size on the ring.
/// False when the record could not be sent (the caller stops the segment there).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn emit_data(
    skb: *mut __sk_buff,
    cookie: u64,
    dir: u8,
    flags: u8,
    seq: u32,
    stream_start: u32,
    segment_len: u32,
    off: u32,
    len: u32,
) -> bool {
    let Some(scratch) = SCRATCH.get_ptr_mut(0) else {
        return false;
    };
    // The verifier needs a provably non-zero, bounded length.
    let len = ((len.wrapping_sub(1)) & (DATA_CHUNK as u32 - 1)) + 1;
    let ev = DataEvent {
        header: EventHeader {
            direction: dir,
            flags,
            ..header(kind::DATA, cookie)
        },
        seq,
        stream_start,
        segment_len,
        payload_len: len,
    };
    // SAFETY: the scratch value is size_of::<DataEvent>() + DATA_CHUNK bytes; `len` is at
    // most DATA_CHUNK.
    unsafe {
        let base = (*scratch).bytes.as_mut_ptr();
        ptr::write_unaligned(base.cast::<DataEvent>(), ev);
        let body = base.add(size_of::<DataEvent>());
        if bpf_skb_load_bytes(skb.cast(), off, body.cast(), len) != 0 {
            return false;
        }
        let rc = bpf_ringbuf_output(
            map_ptr(&EVENTS),
            base.cast(),
            (size_of::<DataEvent>() as u32 + len) as u64,
            BPF_RB_NO_WAKEUP,
        );
        if rc < 0 {
            count(counter::RING_DROPS, 1);
            return false;
        }
    }
    count(counter::DATA_RECORDS, 1);
    true
}

#[inline(always)]
unsafe fn report_open(skb: *mut __sk_buff, sk: *mut bpf_sock, st: &mut SockState) {
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

// ---- owners -------------------------------------------------------------------------------
#[cgroup_sock_addr(connect4)]
pub fn tlsmon_connect4(ctx: SockAddrContext) -> i32 {
    if !floor() {
        on_connect(&ctx);
    }
    1
}

#[cgroup_sock_addr(connect6)]
pub fn tlsmon_connect6(ctx: SockAddrContext) -> i32 {
    if !floor() {
        on_connect(&ctx);
    }
    1
}

#[inline(always)]
fn on_connect(ctx: &SockAddrContext) {
    // SAFETY: context field reads.
    let (ty, proto) = unsafe {
        (
            ptr::read_volatile(&(*ctx.sock_addr).type_),
            ptr::read_volatile(&(*ctx.sock_addr).protocol),
        )
    };
    if ty != SOCK_STREAM || proto != IPPROTO_TCP {
        return;
    }
    // SAFETY: helper on the program's context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    let Some(slot) = OWNERS.get_ptr_mut((cookie % OWNER_SLOTS) as u32) else {
        return;
    };
    // SAFETY: an array slot; emptied first so a reader never takes a half-written owner.
    unsafe {
        ptr::write_volatile(&mut (*slot).cookie, 0);
        (*slot).owner = current_owner();
        ptr::write_volatile(&mut (*slot).cookie, cookie);
    }
}

/// The owner connect() noted for this client socket, if its slot still holds it.
#[inline(always)]
fn client_owner(cookie: u64) -> Option<Owner> {
    let slot = OWNERS.get_ptr((cookie % OWNER_SLOTS) as u32)?;
    // SAFETY: an array slot; the cookie is read before and after the copy.
    unsafe {
        if ptr::read_volatile(&(*slot).cookie) != cookie {
            return None;
        }
        let owner = ptr::read_volatile(&(*slot).owner);
        (ptr::read_volatile(&(*slot).cookie) == cookie).then_some(owner)
    }
}

/// Runs in the context of the process reading a TCP socket (tcp_recvmsg), after the peer's
/// first bytes arrived: names the owner of accepted sockets (servers). Returns at once for
/// sockets without state or whose owner is known.
#[btf_tracepoint(function = "tcp_rcv_space_adjust")]
pub fn tlsmon_reader(ctx: BtfTracePointContext) -> i32 {
    if floor() {
        return 0;
    }
    let sk: *mut c_void = ctx.arg(0);
    // SAFETY: storage lookup (no create) on the tracepoint's socket argument.
    let st =
        unsafe { bpf_sk_storage_get(map_ptr(&SOCKS), sk, ptr::null_mut(), 0) }.cast::<SockState>();
    if st.is_null() {
        return 0;
    }
    // SAFETY: storage returned by the kernel for this socket.
    let st = unsafe { &mut *st };
    adopt_owner(st);
    0
}

/// Names the socket's owner from the current task, once. Only called where the kernel runs
/// in the context of a process holding the socket (its read, its close).
#[inline(always)]
fn adopt_owner(st: &mut SockState) {
    if st.flags & F_OWNER_KNOWN != 0 {
        return;
    }
    let owner = current_owner();
    if owner.tgid == 0 {
        return;
    }
    st.owner = owner;
    st.flags |= F_OWNER_KNOWN;
    if owner.tgid == global(&TLSMON_SELF_TGID) {
        st.mode = MODE_IGNORE;
        return;
    }
    if st.flags & F_OPEN_REPORTED != 0 {
        output(&OwnerEvent {
            header: header(kind::OWNER, st.cookie),
            owner,
        });
    }
}

// ---- lifecycle ----------------------------------------------------------------------------
#[inline(always)]
fn reported_state(sk: *mut c_void) -> Option<&'static mut SockState> {
    if sk.is_null() {
        return None;
    }
    // SAFETY: storage lookup (no create) on a tracepoint's socket argument.
    let st =
        unsafe { bpf_sk_storage_get(map_ptr(&SOCKS), sk, ptr::null_mut(), 0) }.cast::<SockState>();
    if st.is_null() {
        return None;
    }
    // SAFETY: storage returned by the kernel for this socket.
    let st = unsafe { &mut *st };
    (st.flags & F_OPEN_REPORTED != 0).then_some(st)
}

#[inline(always)]
fn emit_close(cookie: u64, reason: u8, old_state: u8, new_state: u8) {
    output(&CloseEvent {
        header: header(kind::CLOSE, cookie),
        reason,
        old_state,
        new_state,
        ..CloseEvent::default()
    });
}

#[btf_tracepoint(function = "inet_sock_set_state")]
pub fn tlsmon_state(ctx: BtfTracePointContext) -> i32 {
    if floor() {
        return 0;
    }
    let sk: *mut c_void = ctx.arg(0);
    let old: i32 = ctx.arg(1);
    let new: i32 = ctx.arg(2);
    if let Some(st) = reported_state(sk) {
        // ESTABLISHED -> FIN_WAIT1 and CLOSE_WAIT -> LAST_ACK happen only in close(2) or
        // shutdown(2): names a server that closes without reading.
        if new == i32::from(monitor_common::tcp_state::FIN_WAIT1)
            || new == i32::from(monitor_common::tcp_state::LAST_ACK)
        {
            adopt_owner(st);
        }
        let cookie = st.cookie;
        emit_close(cookie, close_reason::STATE, old as u8, new as u8);
        if new == i32::from(monitor_common::tcp_state::CLOSE) {
            // A stop request for a connection that sent nothing more must not outlive it.
            let _ = STOP.remove(&cookie);
        }
    }
    0
}

#[btf_tracepoint(function = "tcp_receive_reset")]
pub fn tlsmon_rst_in(ctx: BtfTracePointContext) -> i32 {
    if floor() {
        return 0;
    }
    let sk: *mut c_void = ctx.arg(0);
    if let Some(st) = reported_state(sk) {
        emit_close(st.cookie, close_reason::RESET_RECEIVED, 0, 0);
    }
    0
}

#[btf_tracepoint(function = "tcp_send_reset")]
pub fn tlsmon_rst_out(ctx: BtfTracePointContext) -> i32 {
    if floor() {
        return 0;
    }
    let sk: *mut c_void = ctx.arg(0);
    if let Some(st) = reported_state(sk) {
        emit_close(st.cookie, close_reason::RESET_SENT, 0, 0);
    }
    0
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
