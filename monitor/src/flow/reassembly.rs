//! TCP reassembly of one direction of a connection, by sequence number.
//!
//! Pure: segments in (any order, retransmitted, overlapping), the ordered byte stream out,
//! with holes and conflicts reported. Live capture and `tlsmon analyze` (pcap) both use it.
//! Memory is bounded: bytes past `limit` from the stream start are counted, not kept.

use std::collections::BTreeMap;
use std::ops::Range;

/// What the reassembler noticed besides the bytes.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ReassemblyStats {
    /// Segments that arrived ahead of a gap.
    pub out_of_order_segments: u64,
    /// Bytes received again (retransmissions, overlapping segments).
    pub duplicate_bytes: u64,
    /// Retransmitted bytes that differ from what was first received at the same position.
    pub conflicting_bytes: u64,
    /// Bytes before the stream start (ignored).
    pub before_start_bytes: u64,
    /// Bytes past the limit (not kept).
    pub beyond_limit_bytes: u64,
}

/// One direction's byte stream.
#[derive(Debug, Clone)]
pub struct StreamReassembler {
    start: u32,
    limit: usize,
    /// Contiguous bytes from the stream start.
    bytes: Vec<u8>,
    /// Segments beyond a gap, keyed by stream offset.
    pending: BTreeMap<usize, Vec<u8>>,
    pending_len: usize,
    stats: ReassemblyStats,
}

impl StreamReassembler {
    /// A stream whose first byte has sequence number `start`, keeping at most `limit` bytes.
    pub fn new(start: u32, limit: usize) -> Self {
        Self {
            start,
            limit,
            bytes: Vec::new(),
            pending: BTreeMap::new(),
            pending_len: 0,
            stats: ReassemblyStats::default(),
        }
    }

    /// Sequence number of the stream's first byte.
    pub fn start(&self) -> u32 {
        self.start
    }

    /// The bytes received without a gap from the stream start.
    pub fn contiguous(&self) -> &[u8] {
        &self.bytes
    }

    pub fn stats(&self) -> ReassemblyStats {
        self.stats
    }

    /// Gaps (stream offsets) between the contiguous bytes and segments received later.
    pub fn holes(&self) -> Vec<Range<usize>> {
        let mut holes = Vec::new();
        let mut end = self.bytes.len();
        for (&off, seg) in &self.pending {
            if off > end {
                holes.push(end..off);
            }
            end = end.max(off + seg.len());
        }
        holes
    }

    /// Adds one segment's payload that starts at sequence number `seq`.
    pub fn push(&mut self, seq: u32, data: &[u8]) {
        if data.is_empty() {
            return;
        }
        // Offsets are within ±2 GiB of the start (RFC 793 sequence arithmetic).
        let rel = seq.wrapping_sub(self.start) as i32;
        let (mut off, mut data) = if rel < 0 {
            let skip = rel.unsigned_abs() as usize;
            if skip >= data.len() {
                self.stats.before_start_bytes += data.len() as u64;
                return;
            }
            self.stats.before_start_bytes += skip as u64;
            (0usize, &data[skip..])
        } else {
            (rel as usize, data)
        };
        if off >= self.limit {
            self.stats.beyond_limit_bytes += data.len() as u64;
            return;
        }
        if off + data.len() > self.limit {
            let keep = self.limit - off;
            self.stats.beyond_limit_bytes += (data.len() - keep) as u64;
            data = &data[..keep];
        }
        let have = self.bytes.len();
        if off < have {
            let overlap = (have - off).min(data.len());
            note_duplicate(
                &mut self.stats,
                &self.bytes[off..off + overlap],
                &data[..overlap],
            );
            data = &data[overlap..];
            off += overlap;
            if data.is_empty() {
                return;
            }
        }
        if off == self.bytes.len() {
            self.bytes.extend_from_slice(data);
            self.drain_pending();
        } else {
            self.stats.out_of_order_segments += 1;
            self.insert_pending(off, data);
        }
    }

    fn insert_pending(&mut self, off: usize, data: &[u8]) {
        match self.pending.get(&off) {
            Some(existing) if existing.len() >= data.len() => {
                note_duplicate(&mut self.stats, &existing[..data.len()], data);
            }
            _ => {
                let old = self
                    .pending
                    .insert(off, data.to_vec())
                    .map_or(0, |v| v.len());
                self.pending_len = self.pending_len + data.len() - old;
            }
        }
    }

    /// Moves pending segments that now touch the contiguous end into it.
    fn drain_pending(&mut self) {
        while let Some((&off, _)) = self.pending.first_key_value() {
            let end = self.bytes.len();
            if off > end {
                break;
            }
            let Some((_, seg)) = self.pending.pop_first() else {
                break;
            };
            self.pending_len -= seg.len();
            let overlap = (end - off).min(seg.len());
            note_duplicate(
                &mut self.stats,
                &self.bytes[off..off + overlap],
                &seg[..overlap],
            );
            self.bytes.extend_from_slice(&seg[overlap..]);
        }
    }

    /// Bytes held beyond gaps (bounded by `limit`, since offsets are).
    pub fn pending_bytes(&self) -> usize {
        self.pending_len
    }
}

/// Counts bytes received again, and those that differ from what was first received.
fn note_duplicate(stats: &mut ReassemblyStats, old: &[u8], new: &[u8]) {
    stats.duplicate_bytes += new.len() as u64;
    stats.conflicting_bytes += old.iter().zip(new).filter(|(a, b)| a != b).count() as u64;
}

#[cfg(test)]
mod tests {
    use super::*;

    const START: u32 = 0xffff_fff0; // wraps around 2^32 inside the stream

    fn stream() -> Vec<u8> {
        (0..200u32).map(|i| (i * 7 + 3) as u8).collect()
    }

    #[test]
    fn in_order_segments_give_the_stream() {
        let s = stream();
        let mut r = StreamReassembler::new(START, 1 << 16);
        for (i, chunk) in s.chunks(17).enumerate() {
            r.push(START.wrapping_add((i * 17) as u32), chunk);
        }
        assert_eq!(r.contiguous(), &s[..]);
        assert!(r.holes().is_empty());
        assert_eq!(r.stats(), ReassemblyStats::default());
    }

    #[test]
    fn every_split_point_in_any_order_gives_the_stream() {
        let s = stream();
        for a in 0..s.len() {
            for b in [a, (a + 13).min(s.len()), s.len()] {
                let parts = [(0, &s[..a]), (a, &s[a..b]), (b, &s[b..])];
                for order in [[0, 1, 2], [2, 1, 0], [1, 0, 2], [2, 0, 1]] {
                    let mut r = StreamReassembler::new(START, 1 << 16);
                    for i in order {
                        let (off, part) = parts[i];
                        r.push(START.wrapping_add(off as u32), part);
                    }
                    assert_eq!(r.contiguous(), &s[..], "split {a}/{b} order {order:?}");
                    assert_eq!(r.pending_bytes(), 0);
                }
            }
        }
    }

    #[test]
    fn retransmissions_and_overlaps_are_counted_not_duplicated() {
        let s = stream();
        let mut r = StreamReassembler::new(START, 1 << 16);
        r.push(START, &s[..100]);
        r.push(START.wrapping_add(50), &s[50..150]);
        r.push(START, &s[..10]);
        assert_eq!(r.contiguous(), &s[..150]);
        assert_eq!(r.stats().duplicate_bytes, 60);
        assert_eq!(r.stats().conflicting_bytes, 0);
    }

    #[test]
    fn conflicting_retransmission_keeps_first_bytes_and_counts() {
        let mut r = StreamReassembler::new(START, 1 << 16);
        r.push(START, b"hello");
        r.push(START, b"jello");
        assert_eq!(r.contiguous(), b"hello");
        assert_eq!(r.stats().conflicting_bytes, 1);
    }

    #[test]
    fn a_gap_is_reported_as_a_hole() {
        let s = stream();
        let mut r = StreamReassembler::new(START, 1 << 16);
        r.push(START, &s[..40]);
        r.push(START.wrapping_add(60), &s[60..80]);
        r.push(START.wrapping_add(100), &s[100..120]);
        assert_eq!(r.contiguous(), &s[..40]);
        assert_eq!(r.holes(), vec![40..60, 80..100]);
        assert_eq!(r.stats().out_of_order_segments, 2);
        r.push(START.wrapping_add(40), &s[40..60]);
        assert_eq!(r.contiguous(), &s[..80]);
        assert_eq!(r.holes(), vec![80..100]);
    }

    #[test]
    fn bytes_before_start_and_past_limit_are_not_kept() {
        let s = stream();
        let mut r = StreamReassembler::new(START, 50);
        r.push(START.wrapping_sub(10), &s[..30]);
        assert_eq!(r.contiguous(), &s[10..30]);
        assert_eq!(r.stats().before_start_bytes, 10);
        r.push(START.wrapping_add(20), &s[30..100]);
        assert_eq!(r.contiguous().len(), 50);
        assert_eq!(r.stats().beyond_limit_bytes, 40);
        r.push(START.wrapping_add(60), &s[..10]);
        assert_eq!(r.stats().beyond_limit_bytes, 50);
        assert_eq!(r.pending_bytes(), 0);
    }

    #[test]
    fn empty_segments_change_nothing() {
        let mut r = StreamReassembler::new(START, 10);
        r.push(START.wrapping_add(5), b"");
        assert!(r.contiguous().is_empty());
        assert!(r.holes().is_empty());
    }
}
