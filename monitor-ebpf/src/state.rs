//! Per-socket state of the connections that matter, in an SK_STORAGE map (freed with the
//! socket), and the per-direction helpers that index it.

use core::{ffi::c_void, ptr};

use aya_ebpf::{
    bindings::BPF_SK_STORAGE_GET_F_CREATE, btf_maps::SkStorage,
    helpers::generated::bpf_sk_storage_get, macros::btf_map,
};
use monitor_common::{Task, direction};

use crate::ring::map_ptr;

// Mode 0: zero-filled storage not yet given one (never left so).
pub const MODE_TLS: u8 = 1;
pub const MODE_WATCH: u8 = 2;
pub const MODE_DONE: u8 = 3;
pub const MODE_IGNORE: u8 = 4;

pub const F_START_EGRESS: u32 = 1 << 0;
pub const F_START_INGRESS: u32 = 1 << 1;
pub const F_OWNER_KNOWN: u32 = 1 << 2;
pub const F_OPEN_REPORTED: u32 = 1 << 3;
pub const F_ROLE_CLIENT: u32 = 1 << 4;
pub const F_ROLE_SERVER: u32 = 1 << 5;
pub const F_MID_STREAM: u32 = 1 << 6;
pub const F_FULL_EGRESS: u32 = 1 << 7;
pub const F_FULL_INGRESS: u32 = 1 << 8;

#[repr(C)]
pub struct SockState {
    pub cookie: u64,
    pub owner: Task,
    pub flags: u32,
    pub mode: u8,
    pub _pad: [u8; 3],
    /// Sequence number where each direction's captured stream starts (index: direction).
    pub start: [u32; 2],
    /// Bytes sent to the ring per direction, retransmissions included (bounds a storm).
    pub sent: [u32; 2],
    /// Plaintext bytes looked at for a late TLS start.
    pub watched: u32,
    pub _pad2: u32,
}

#[btf_map]
static SOCKS: SkStorage<SockState> = SkStorage::new();

/// The socket's state, if it has one (a full socket or a tracepoint's `struct sock *`).
#[inline(always)]
pub fn lookup(sk: *mut c_void) -> *mut SockState {
    // SAFETY: storage lookup without create on a socket pointer the kernel gave us.
    unsafe { bpf_sk_storage_get(map_ptr(&SOCKS), sk, ptr::null_mut(), 0) }.cast::<SockState>()
}

/// The socket's state, created zero-filled when it has none.
#[inline(always)]
pub fn get_or_create(sk: *mut c_void) -> *mut SockState {
    // SAFETY: storage lookup with create on a full socket.
    unsafe {
        bpf_sk_storage_get(
            map_ptr(&SOCKS),
            sk,
            ptr::null_mut(),
            BPF_SK_STORAGE_GET_F_CREATE as u64,
        )
    }
    .cast::<SockState>()
}

/// Picks the egress or ingress variant of a per-direction value.
#[inline(always)]
pub fn by_dir<T>(dir: u8, egress: T, ingress: T) -> T {
    if dir == direction::EGRESS {
        egress
    } else {
        ingress
    }
}

#[inline(always)]
pub fn start_flag(dir: u8) -> u32 {
    by_dir(dir, F_START_EGRESS, F_START_INGRESS)
}

#[inline(always)]
pub fn full_flag(dir: u8) -> u32 {
    by_dir(dir, F_FULL_EGRESS, F_FULL_INGRESS)
}

#[inline(always)]
pub fn dir_index(dir: u8) -> usize {
    by_dir(dir, 0, 1)
}
