//! The decisions the kernel programs take on packet bytes and socket counters, as pure
//! functions: `monitor-ebpf` calls them (inlined), and `cargo test` checks them on the host,
//! where the verifier and a live kernel are not needed to find a wrong offset or bound.

use crate::{DATA_CHUNK, MAX_DIRECTION_BUDGET, SAMPLE_LEN, direction, tcp_state};

/// "Looks like TLS": a TLS handshake record (type 22, legacy version 3.0 to 3.4), or an
/// SSLv2-compatible ClientHello (RFC 5246 appendix E.2: 2-byte length with the top bit set,
/// message type 1, version 3.x or 2.0).
#[inline(always)]
pub fn looks_like_tls(head: &[u8; 5]) -> bool {
    (head[0] == 0x16 && head[1] == 0x03 && head[2] <= 0x04)
        || (head[0] & 0x80 != 0
            && head[2] == 0x01
            && (head[3] == 0x03 || (head[3] == 0x00 && head[4] == 0x02)))
}

/// A plaintext TLS alert record (type 21, version 3.x, length 2): what a TLS server (Java's)
/// sends as its first bytes when the client's were not a TLS record. Read only on a server's
/// first egress payload after client data segments that did not look like TLS (a peer that
/// only closed has no data segments, though its FIN counts as a received byte), so plaintext
/// sent to a TLS listener nobody has configured or learned is caught.
#[inline(always)]
pub fn plaintext_alert(head: &[u8; 5]) -> bool {
    head[0] == 0x15 && head[1] == 0x03 && head[2] <= 0x04 && head[3] == 0 && head[4] == 2
}

/// Of a payload that `looks_like_tls`, whether it starts a ClientHello: an SSLv2 hello is
/// one by construction; a handshake record is one when its first message has type 1
/// (`msg_type`: the sixth byte, when the segment has it).
#[inline(always)]
pub fn starts_client_hello(head: &[u8; 5], msg_type: Option<u8>) -> bool {
    head[0] != 0x16 || msg_type == Some(1)
}

/// Length of an IPv4 header from its first byte (IHL × 4); `None` for another version.
#[inline(always)]
pub fn ipv4_header_len(first: u8) -> Option<u32> {
    (first >> 4 == 4).then_some(((first & 0x0f) as u32) * 4)
}

/// Offset of the TCP header of a TCP packet, read by what the packet is (the IP version
/// nibble), never by the socket's family: an AF_INET6 socket of a dual-stack server or of a
/// client connecting to a v4-mapped address sends and receives IPv4 packets. `None` for
/// anything that is not TCP over IPv4 or IPv6, or that the packet does not hold.
#[inline(always)]
pub fn tcp_offset(packet: &(impl PacketBytes + ?Sized)) -> Option<u32> {
    let head = packet.four(0)?;
    match head[0] >> 4 {
        4 => {
            // Bytes 8..12: TTL, protocol, checksum.
            if packet.four(8)?[1] != IPPROTO_TCP {
                return None;
            }
            ipv4_header_len(head[0])
        }
        // Bytes 4..8: payload length, next header, hop limit.
        6 => ipv6_tcp_offset(packet.four(4)?[2], packet),
        _ => None,
    }
}

/// Length of a TCP header from its 13th byte (data offset × 4).
#[inline(always)]
pub fn tcp_header_len(data_offset_byte: u8) -> u32 {
    ((data_offset_byte >> 4) as u32) * 4
}

/// The SYN flag, from the TCP header's 14th byte.
#[inline(always)]
pub fn tcp_syn(flags_byte: u8) -> bool {
    flags_byte & 0x02 != 0
}

/// Sequence number of a segment's first payload byte: a SYN takes one number before its
/// data (TCP Fast Open carries data in the SYN).
#[inline(always)]
pub fn payload_seq(seq: u32, syn: bool) -> u32 {
    seq.wrapping_add(syn as u32)
}

/// Payload bytes of a segment of `skb_len` bytes whose payload starts at `payload_off`.
#[inline(always)]
pub fn payload_len(skb_len: u32, payload_off: u32) -> u32 {
    skb_len.saturating_sub(payload_off)
}

pub const IPPROTO_TCP: u8 = 6;
/// IPv6 extension headers walked before giving up (RFC 8200 allows each at most once or
/// twice; a TCP segment rarely carries any).
pub const MAX_IPV6_EXTENSIONS: usize = 8;

/// Bytes of a packet, from the start of its network header: the kernel program reads them
/// from the skb, host tests from a slice.
pub trait PacketBytes {
    /// Four bytes at `off`, when the packet has them.
    fn four(&self, off: u32) -> Option<[u8; 4]>;
}

impl PacketBytes for [u8] {
    fn four(&self, off: u32) -> Option<[u8; 4]> {
        let off = off as usize;
        let b = self.get(off..off.checked_add(4)?)?;
        Some([b[0], b[1], b[2], b[3]])
    }
}

/// Offset of the TCP header in an IPv6 packet whose fixed header names `first` as its
/// next header: the extension headers (hop-by-hop, routing, destination options, the first
/// fragment, authentication) are walked. `None` where the walk cannot reach TCP: ESP, no
/// next header, unknown types, a fragment other than the first (it carries no TCP header),
/// more than `MAX_IPV6_EXTENSIONS` headers, or a header the packet does not hold.
///
/// Shaped for the verifier's sake: one function with the early return inside the match,
/// reading through an `#[inline(always)]` trait method. A per-header length function, or a
/// closure (not always inlined), made LLVM duplicate the unrolled walk (+400 to +750
/// instructions in the kernel program).
#[inline(always)]
pub fn ipv6_tcp_offset(first: u8, packet: &(impl PacketBytes + ?Sized)) -> Option<u32> {
    const HOP_BY_HOP: u8 = 0;
    const ROUTING: u8 = 43;
    const FRAGMENT: u8 = 44;
    const AUTH: u8 = 51;
    const DEST_OPTS: u8 = 60;
    let mut next = first;
    let mut off: u32 = 40;
    for _ in 0..MAX_IPV6_EXTENSIONS {
        if next == IPPROTO_TCP {
            return Some(off);
        }
        let h = packet.four(off)?;
        off += match next {
            HOP_BY_HOP | ROUTING | DEST_OPTS => (h[1] as u32 + 1) * 8,
            AUTH => (h[1] as u32 + 2) * 4,
            FRAGMENT if u16::from_be_bytes([h[2], h[3]]) >> 3 == 0 => 8,
            _ => return None,
        };
        next = h[0];
    }
    (next == IPPROTO_TCP).then_some(off)
}

/// TCP states (include/net/tcp_states.h) the rules read.
pub const TCP_SYN_SENT: u32 = 2;
pub const TCP_SYN_RECV: u32 = 3;
pub const TCP_LISTEN: u32 = 10;

/// What the TCP socket counts of itself (`struct bpf_tcp_sock`, `bpf_sock.state`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TcpCounters {
    pub data_segs_in: u32,
    pub data_segs_out: u32,
    pub bytes_received: u64,
    pub bytes_acked: u64,
    pub snd_una: u32,
    pub rcv_nxt: u32,
    pub state: u32,
}

impl TcpCounters {
    /// Where this socket's own stream of bytes starts: after the SYN, which is not yet
    /// acknowledged while the socket is in SYN_SENT (Fast Open data in the SYN) or SYN_RECV
    /// (a Fast Open server answering before the last ACK).
    #[inline(always)]
    pub fn egress_origin(&self) -> u32 {
        let syn_unacked = self.state == TCP_SYN_SENT || self.state == TCP_SYN_RECV;
        self.snd_una.wrapping_add(syn_unacked as u32)
    }

    /// The egress segment at `seq` carries this socket's first payload.
    #[inline(always)]
    pub fn own_first_payload(&self, seq: u32) -> bool {
        self.bytes_acked <= 1 && self.egress_origin() == seq
    }
}

/// True for the first payload of a connection: neither side has sent payload before this
/// segment (`seq`: its first payload byte). The ingress program runs before TCP counts the
/// segment; at egress `data_segs_out` already counts it, so there the segment must start
/// this socket's stream with nothing but the SYN acknowledged.
#[inline(always)]
pub fn first_payload(dir: u8, c: &TcpCounters, seq: u32) -> bool {
    if c.data_segs_in != 0 || c.bytes_received != 0 {
        return false;
    }
    if dir == direction::INGRESS {
        c.data_segs_out == 0
    } else {
        c.own_first_payload(seq)
    }
}

/// A socket's first egress payload after bytes of the peer that no program of ours saw
/// (they reached the listener or a request socket: Fast Open data in the SYN, or a first
/// segment that raced the handshake's last ACK): where the peer's stream started, so its
/// missing start shows as a hole instead of a stream that seems to begin later.
#[inline(always)]
pub fn missed_peer_start(dir: u8, c: &TcpCounters, seq: u32) -> Option<u32> {
    (dir == direction::EGRESS && c.bytes_received != 0 && c.own_first_payload(seq))
        .then(|| c.rcv_nxt.wrapping_sub(c.bytes_received as u32))
}

/// Nothing of a connection that has carried `bytes_seen` payload bytes (both ways, as its
/// socket counts them) can still be captured: a STARTTLS upgrade is only looked for in the
/// first `watch_limit` bytes, and each direction's capture ends `budget` bytes after its
/// start. Such a connection is passed over before its state is even looked up.
#[inline(always)]
pub fn nothing_left(bytes_seen: u64, watch_limit: u32, budget: u32) -> bool {
    bytes_seen > 2 * (u64::from(watch_limit) + u64::from(budget))
}

/// Which end's FIN a socket state change reveals.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fin {
    Local,
    Peer,
}

/// The FIN a socket state change reveals (RFC 793 state diagram): ours when we leave
/// ESTABLISHED or CLOSE_WAIT, the peer's when we leave ESTABLISHED for CLOSE_WAIT or a
/// FIN_WAIT state for CLOSING/TIME_WAIT/CLOSE (the kernel closes a FIN_WAIT2 socket into
/// a timewait one).
#[inline(always)]
pub fn fin_of(old: u8, new: u8) -> Option<Fin> {
    use tcp_state::*;
    match (old, new) {
        (ESTABLISHED, FIN_WAIT1) | (CLOSE_WAIT, LAST_ACK) => Some(Fin::Local),
        (ESTABLISHED, CLOSE_WAIT)
        | (FIN_WAIT1, CLOSING)
        | (FIN_WAIT2, TIME_WAIT)
        | (FIN_WAIT2, CLOSE) => Some(Fin::Peer),
        _ => None,
    }
}

/// A state change of a reported connection that userspace reads: one that reveals a FIN
/// (who closed first) or ends the socket. The others (FIN_WAIT1 -> FIN_WAIT2, CLOSING ->
/// TIME_WAIT, ...) send no record.
#[inline(always)]
pub fn state_change_reported(old: u8, new: u8) -> bool {
    new == tcp_state::CLOSE || fin_of(old, new).is_some()
}

/// Slots of the client-owner table (a direct-mapped array by socket cookie).
pub const OWNER_SLOTS: u64 = 65536;

/// The slot of a socket's owner. Socket cookies come from per-CPU batches of a global
/// counter (the kernel's `gen_cookie_next`), so cookies are unique but not handed out in
/// time order across CPUs: two live sockets can share a slot, and the cookie stored in it
/// says which one the owner belongs to.
#[inline(always)]
pub fn owner_slot(cookie: u64) -> u32 {
    (cookie % OWNER_SLOTS) as u32
}

/// The per-direction budget as the loader set it, never above what the capture loop bounds.
#[inline(always)]
pub fn clamp_budget(budget: u32) -> u32 {
    if budget > MAX_DIRECTION_BUDGET {
        MAX_DIRECTION_BUDGET
    } else {
        budget
    }
}

/// What of a segment goes to the ring, given where its direction's stream starts and how
/// much of the budget is spent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Window {
    /// The whole segment lies before the stream start (plaintext before an upgrade).
    BeforeStart,
    /// The direction's budget is spent: nothing more is captured.
    BudgetSpent,
    /// `len` bytes from `skip` bytes into the payload; `truncated` when the budget cut it.
    Take {
        skip: u32,
        len: u32,
        truncated: bool,
    },
}

/// The capture window of a segment at sequence `seq` with `payload_len` bytes, in a stream
/// starting at `start`, with `sent` bytes of this direction already sent to the ring
/// (retransmissions included: bounded at twice the budget, so a storm stops).
#[inline(always)]
pub fn capture_window(seq: u32, start: u32, payload_len: u32, budget: u32, sent: u32) -> Window {
    let rel = seq.wrapping_sub(start) as i32;
    let skip: u32 = if rel < 0 { rel.unsigned_abs() } else { 0 };
    if skip >= payload_len {
        return Window::BeforeStart;
    }
    let rel = if rel < 0 { 0 } else { rel as u32 };
    if rel >= budget || sent >= 2 * budget {
        return Window::BudgetSpent;
    }
    let avail = payload_len - skip;
    let room = budget - rel;
    if avail > room {
        Window::Take {
            skip,
            len: room,
            truncated: true,
        }
    } else {
        Window::Take {
            skip,
            len: avail,
            truncated: false,
        }
    }
}

/// A record payload length the verifier can bound: 1..=DATA_CHUNK for any input, equal to
/// `len` when `len` is in that range.
#[inline(always)]
pub fn chunk_len(len: u32) -> u32 {
    (len.wrapping_sub(1) & (DATA_CHUNK as u32 - 1)) + 1
}

/// Payload room of the ring record that carries `len` bytes (1..=DATA_CHUNK): records are
/// reserved in place on the ring, whose reservations must have a size the verifier knows,
/// so a payload takes the smallest of four fixed sizes that holds it.
#[inline(always)]
pub fn record_room(len: u32) -> u32 {
    if len <= 256 {
        256
    } else if len <= 1024 {
        1024
    } else if len <= 4096 {
        4096
    } else {
        DATA_CHUNK as u32
    }
}

/// Bytes of a plaintext first payload sent as a sample.
#[inline(always)]
pub fn sample_len(payload_len: u32) -> u32 {
    if payload_len < SAMPLE_LEN as u32 {
        payload_len
    } else {
        SAMPLE_LEN as u32
    }
}

#[cfg(test)]
mod tests;
