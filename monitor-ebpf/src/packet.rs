//! The data path: `cgroup_skb` egress and ingress on the root cgroup. Every TCP segment of
//! the host passes here; a decided connection costs one storage lookup, an ordinary one
//! is judged by its TCP socket's counters, and only TLS-looking payloads go further
//! ([`crate::capture`]).

use core::ptr;

use aya_ebpf::{
    EbpfContext,
    bindings::{__sk_buff, bpf_sock, bpf_tcp_sock},
    btf_maps::{Array, HashMap},
    helpers::generated::{bpf_sk_fullsock, bpf_skb_load_bytes, bpf_tcp_sock},
    macros::{btf_map, cgroup_skb},
    programs::SkBuffContext,
};
use monitor_common::{
    ServiceKey, counter, direction,
    rules::{self, PacketBytes, TCP_LISTEN, TcpCounters},
    tls_port,
};

const AF_INET: u32 = 2;

use crate::{
    capture, direction_budget, floor,
    ring::count,
    state::{self, MODE_DONE, MODE_IGNORE, MODE_TLS, MODE_WATCH},
    watch_limit,
};

/// Ports, indexed by port, as `tls_port` bits: configured as TLS (at either end of a
/// connection), or the port of some learned service. An array (64 KiB): its lookups are
/// inlined by the verifier, and it cannot fill up.
#[btf_map]
static TLS_PORTS: Array<u8, 65536> = Array::new();

/// Services learned to speak TLS (a listener of this host, a server its clients reached),
/// by address and port. Userspace adds and forgets them; looked up only for a port whose
/// `tls_port::LEARNED` bit is set.
#[btf_map]
static TLS_SERVICES: HashMap<ServiceKey, u8, 4096> = HashMap::new();

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

/// A TCP segment's position and payload within the packet.
pub struct Segment {
    /// Sequence number of the first payload byte (`rules::payload_seq`: after a SYN).
    pub seq: u32,
    pub payload_off: u32,
    pub payload_len: u32,
}

/// `N` bytes at `off` from the network header: read in place when they are in the packet's
/// linear data (headers always are; no helper call), else copied by `bpf_skb_load_bytes`
/// (payload in page fragments).
#[inline(always)]
pub fn load<const N: usize>(skb: *mut __sk_buff, off: u32) -> Option<[u8; N]> {
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

/// The packet as `rules` reads it.
struct Packet(*mut __sk_buff);

impl PacketBytes for Packet {
    #[inline(always)]
    fn four(&self, off: u32) -> Option<[u8; 4]> {
        load::<4>(self.0, off)
    }
}

/// The segment's first 5 payload bytes; zeros for a shorter payload, which cannot start
/// with a TLS record header.
#[inline(always)]
pub fn payload_head(skb: *mut __sk_buff, seg: &Segment) -> [u8; 5] {
    load::<5>(skb, seg.payload_off).unwrap_or([0; 5])
}

/// IP + TCP headers of a TCP segment (skb data starts at the network header here), read
/// by the packet's own IP version (`rules::tcp_offset`).
#[inline(always)]
fn parse_segment(skb: *mut __sk_buff) -> Option<Segment> {
    // SAFETY: context field read.
    let len = unsafe { ptr::read_volatile(&(*skb).len) };
    let l4 = rules::tcp_offset(&Packet(skb))?;
    let tcp = load::<14>(skb, l4)?;
    let payload_off = l4 + rules::tcp_header_len(tcp[12]);
    let seq = u32::from_be_bytes([tcp[4], tcp[5], tcp[6], tcp[7]]);
    Some(Segment {
        seq: rules::payload_seq(seq, rules::tcp_syn(tcp[13])),
        payload_off,
        payload_len: rules::payload_len(len, payload_off),
    })
}

#[inline(always)]
fn on_packet(ctx: &SkBuffContext, dir: u8) {
    let skb = ctx.as_ptr().cast::<__sk_buff>();
    // SAFETY: context field reads and helpers checked by the verifier.
    unsafe {
        let skc = (*skb).__bindgen_anon_2.sk;
        if skc.is_null() {
            return;
        }
        // TCP full sockets only (the helper checks both), and their own counters first: a
        // connection past everything tlsmon could still capture costs this one helper.
        let tp = bpf_tcp_sock(skc);
        if tp.is_null() {
            return;
        }
        let seen = bytes_seen(tp);
        if rules::nothing_left(seen, watch_limit(), direction_budget()) {
            return;
        }
        // Only payload matters (SYN, ACK and FIN segments carry none): found in the headers,
        // before any map is touched.
        let Some(seg) = parse_segment(skb) else {
            count(counter::PARSE_ERRORS, 1);
            return;
        };
        if seg.payload_len == 0 {
            return;
        }
        // A connection already decided (capture over, plaintext on a TLS port watched long
        // enough, our own) costs one storage lookup more.
        let st = state::lookup(tp.cast());
        if !st.is_null() && matches!((*st).mode, MODE_DONE | MODE_IGNORE) {
            return;
        }
        // A connection without state is ordinary so far: past the watch limit (counted by
        // the TCP socket itself) it is left alone.
        if st.is_null() && seen > u64::from(watch_limit()) {
            return;
        }
        // The socket's own fields (ends, state) from here on: payload of a young or
        // captured connection.
        let sk = bpf_sk_fullsock(skc);
        if sk.is_null() {
            return;
        }
        // One call site for `capture`: its chunk loop is what the verifier pays for.
        let (st, tls) = if st.is_null() {
            // A listener sees a connection's first payload when it comes before the child
            // socket exists (Fast Open data in the SYN, a segment racing the last ACK):
            // state on the listener would mix every such connection. The child reports the
            // start it missed (`rules::missed_peer_start`).
            if ptr::read_volatile(&(*sk).state) == TCP_LISTEN {
                return;
            }
            match capture::on_untracked(skb, sk, tp, dir, &seg) {
                Some(st) => (st, true),
                None => return,
            }
        } else {
            let st = &mut *st;
            let tls = match st.mode {
                MODE_TLS => true,
                MODE_WATCH => capture::watch(skb, sk, tp, st, dir, &seg),
                _ => false,
            };
            (st, tls)
        };
        if tls {
            capture::capture(skb, sk, tp, st, dir, &seg);
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

/// What the TCP socket counts of itself, for the `rules` that read it.
#[inline(always)]
pub unsafe fn counters(sk: *mut bpf_sock, tp: *mut bpf_tcp_sock) -> TcpCounters {
    // SAFETY: fields read through verifier-checked pointers.
    unsafe {
        TcpCounters {
            data_segs_in: ptr::read_volatile(&(*tp).data_segs_in),
            data_segs_out: ptr::read_volatile(&(*tp).data_segs_out),
            bytes_received: ptr::read_volatile(&(*tp).bytes_received),
            bytes_acked: ptr::read_volatile(&(*tp).bytes_acked),
            snd_una: ptr::read_volatile(&(*tp).snd_una),
            rcv_nxt: ptr::read_volatile(&(*tp).rcv_nxt),
            state: ptr::read_volatile(&(*sk).state),
        }
    }
}

/// Either end's port is known to speak TLS.
#[inline(always)]
pub unsafe fn port_speaks_tls(sk: *mut bpf_sock) -> bool {
    // SAFETY: field reads through the verifier-checked pointer.
    let (local, peer) = unsafe {
        (
            ptr::read_volatile(&(*sk).src_port) as u16,
            u16::from_be(ptr::read_volatile(&(*sk).dst_port)),
        )
    };
    let bits = |port: u16| TLS_PORTS.get(u32::from(port)).map_or(0, |v| *v);
    let (l, p) = (bits(local), bits(peer));
    if (l | p) & tls_port::CONFIGURED != 0 {
        return true;
    }
    // SAFETY: as above.
    unsafe {
        (l & tls_port::LEARNED != 0 && learned(sk, local, false))
            || (p & tls_port::LEARNED != 0 && learned(sk, peer, true))
    }
}

/// The socket's local (or peer) address and `port` is a learned TLS service.
#[inline(always)]
unsafe fn learned(sk: *mut bpf_sock, port: u16, peer: bool) -> bool {
    let mut key = ServiceKey {
        port,
        ..ServiceKey::default()
    };
    // SAFETY: 4-byte context field reads through the verifier-checked pointer.
    unsafe {
        if ptr::read_volatile(&(*sk).family) == AF_INET {
            let ip = if peer {
                ptr::read_volatile(&(*sk).dst_ip4)
            } else {
                ptr::read_volatile(&(*sk).src_ip4)
            };
            key.addr[10] = 0xff;
            key.addr[11] = 0xff;
            key.addr[12..].copy_from_slice(&ip.to_ne_bytes());
        } else {
            for w in 0..4 {
                let ip = if peer {
                    ptr::read_volatile(&(*sk).dst_ip6[w])
                } else {
                    ptr::read_volatile(&(*sk).src_ip6[w])
                };
                key.addr[w * 4..w * 4 + 4].copy_from_slice(&ip.to_ne_bytes());
            }
        }
        TLS_SERVICES.get_ptr(&key).is_some()
    }
}
