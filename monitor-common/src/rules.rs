//! The decisions the kernel programs take on packet bytes and socket counters, as pure
//! functions: `monitor-ebpf` calls them (inlined), and `cargo test` checks them on the host,
//! where the verifier and a live kernel are not needed to find a wrong offset or bound.

use crate::{DATA_CHUNK, MAX_DIRECTION_BUDGET, SAMPLE_LEN, direction};

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

/// Length of a TCP header from its 13th byte (data offset × 4).
#[inline(always)]
pub fn tcp_header_len(data_offset_byte: u8) -> u32 {
    ((data_offset_byte >> 4) as u32) * 4
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

/// The TCP socket counters `first_payload` reads (`struct bpf_tcp_sock`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TcpCounters {
    pub data_segs_in: u32,
    pub data_segs_out: u32,
    pub bytes_acked: u64,
    pub snd_una: u32,
}

/// True for the first payload of a connection: neither side has sent payload before this
/// segment. The ingress program runs before TCP counts the segment; at egress
/// `data_segs_out` already counts it, so there the segment must start at the oldest
/// unacknowledged byte with nothing but the SYN acknowledged.
#[inline(always)]
pub fn first_payload(dir: u8, c: &TcpCounters, seq: u32) -> bool {
    if c.data_segs_in != 0 {
        return false;
    }
    if dir == direction::INGRESS {
        c.data_segs_out == 0
    } else {
        c.bytes_acked <= 1 && c.snd_una == seq
    }
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
mod tests {
    use super::*;

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
}
