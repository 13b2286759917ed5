//! The ring buffer userspace drains, the per-CPU counters, and the records written to it.

use core::{ffi::c_void, mem::size_of, ptr};

use aya_ebpf::{
    bindings::__sk_buff,
    btf_maps::{PerCpuArray, RingBuf},
    helpers::generated::{
        bpf_ktime_get_ns, bpf_ringbuf_discard, bpf_ringbuf_output, bpf_ringbuf_reserve,
        bpf_ringbuf_submit, bpf_skb_load_bytes,
    },
    macros::btf_map,
};
use monitor_common::{DATA_CHUNK, DataEvent, EventHeader, counter, kind, rules};

const BPF_RB_NO_WAKEUP: u64 = 1;

#[btf_map]
static EVENTS: RingBuf<u8, { 4 * 1024 * 1024 }> = RingBuf::new();

#[btf_map]
static COUNTERS: PerCpuArray<u64, { counter::COUNT as usize }> = PerCpuArray::new();

#[inline(always)]
pub fn map_ptr<M>(m: &'static M) -> *mut c_void {
    ptr::from_ref(m).cast_mut().cast()
}

#[inline(always)]
pub fn count(idx: u32, n: u64) {
    if let Some(p) = COUNTERS.get_ptr_mut(idx) {
        // SAFETY: per-CPU slot, only this CPU writes it while the program runs.
        unsafe { *p += n };
    }
}

/// Puts a fixed-size record on the ring; false (and counted) when the ring is full.
#[inline(always)]
pub fn output<T>(ev: &T) -> bool {
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
    rc >= 0
}

#[inline(always)]
pub fn header(kind: u8, cookie: u64) -> EventHeader {
    EventHeader {
        kind,
        cookie,
        // SAFETY: helper without arguments.
        ts_ns: unsafe { bpf_ktime_get_ns() },
        ..EventHeader::default()
    }
}

/// One DATA record: header + `len` (1..=DATA_CHUNK) payload bytes, copied from the packet
/// straight into a reservation on the ring (`rules::record_room` of it). Nothing is shared
/// between programs: an egress program interrupted by an ingress one on the same CPU, or
/// preempted by another task's, cannot see its record overwritten. False when the record
/// could not be sent (the caller stops the segment there and marks the connection lost).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub unsafe fn emit_data(
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
    let len = rules::chunk_len(len);
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
    // The verifier needs each reservation's size as a constant.
    // SAFETY: forwarded context pointer; `len` fits each room it is given to.
    let sent = unsafe {
        match rules::record_room(len) {
            256 => reserved::<256>(skb, &ev, off, len),
            1024 => reserved::<1024>(skb, &ev, off, len),
            4096 => reserved::<4096>(skb, &ev, off, len),
            _ => reserved::<DATA_CHUNK>(skb, &ev, off, len),
        }
    };
    if sent {
        count(counter::DATA_RECORDS, 1);
    }
    sent
}

/// A DATA record with room for `ROOM` payload bytes (a power of two), `len` of them used.
#[inline(always)]
unsafe fn reserved<const ROOM: usize>(
    skb: *mut __sk_buff,
    ev: &DataEvent,
    off: u32,
    len: u32,
) -> bool {
    const HEAD: usize = size_of::<DataEvent>();
    // SAFETY: a reservation of HEAD + ROOM bytes; the header and at most ROOM payload bytes
    // are written into it, then it is submitted or discarded.
    unsafe {
        let rec = bpf_ringbuf_reserve(map_ptr(&EVENTS), (HEAD + ROOM) as u64, 0).cast::<u8>();
        if rec.is_null() {
            count(counter::RING_DROPS, 1);
            return false;
        }
        ptr::write_unaligned(rec.cast::<DataEvent>(), *ev);
        // 1..=ROOM for the verifier; equal to `len`, which `record_room` chose ROOM for. The
        // volatile read keeps LLVM from dropping the mask as redundant (it knows the branch
        // bounds `len`; the verifier does not follow that).
        let n = (ptr::read_volatile(&len).wrapping_sub(1) & (ROOM as u32 - 1)) + 1;
        if bpf_skb_load_bytes(skb.cast(), off, rec.add(HEAD).cast(), n) != 0 {
            bpf_ringbuf_discard(rec.cast(), BPF_RB_NO_WAKEUP);
            return false;
        }
        bpf_ringbuf_submit(rec.cast(), BPF_RB_NO_WAKEUP);
    }
    true
}
