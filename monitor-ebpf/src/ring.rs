//! The ring buffer userspace drains, the per-CPU counters, and the records written to it.

use core::{ffi::c_void, mem::size_of, ptr};

use aya_ebpf::{
    bindings::__sk_buff,
    btf_maps::{PerCpuArray, RingBuf},
    helpers::generated::{bpf_ktime_get_ns, bpf_ringbuf_output, bpf_skb_load_bytes},
    macros::btf_map,
};
use monitor_common::{DATA_CHUNK, DataEvent, EventHeader, counter, kind, rules};

const BPF_RB_NO_WAKEUP: u64 = 1;

#[btf_map]
static EVENTS: RingBuf<u8, { 4 * 1024 * 1024 }> = RingBuf::new();

#[btf_map]
static COUNTERS: PerCpuArray<u64, { counter::COUNT as usize }> = PerCpuArray::new();

#[repr(C)]
pub struct Scratch {
    bytes: [u8; size_of::<DataEvent>() + DATA_CHUNK],
}

#[btf_map]
static SCRATCH: PerCpuArray<Scratch, 1> = PerCpuArray::new();

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

/// Puts a fixed-size record on the ring; a full ring is counted.
#[inline(always)]
pub fn output<T>(ev: &T) {
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
pub fn header(kind: u8, cookie: u64) -> EventHeader {
    EventHeader {
        kind,
        cookie,
        // SAFETY: helper without arguments.
        ts_ns: unsafe { bpf_ktime_get_ns() },
        ..EventHeader::default()
    }
}

/// One DATA record: header + `len` (1..=DATA_CHUNK) payload bytes, variable size on the ring.
/// False when the record could not be sent (the caller stops the segment there).
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
    let Some(scratch) = SCRATCH.get_ptr_mut(0) else {
        return false;
    };
    // The verifier needs a provably non-zero, bounded length.
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
