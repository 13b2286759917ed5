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

/// The state of one connection. The egress and ingress programs of a socket can run at the
/// same time on two CPUs, so nothing here is a read-modify-write of a word both write: what
/// one direction owns is indexed by direction (`dir_index`), and what both may set is a
/// byte of its own, written whole (a lost update is impossible; a check-then-set race at
/// most reports OPEN twice, which userspace takes as one).
#[repr(C)]
pub struct SockState {
    pub cookie: u64,
    pub owner: Task,
    pub mode: u8,
    /// `monitor_common::role`.
    pub role: u8,
    pub owner_known: u8,
    pub open_reported: u8,
    /// Capture began at a STARTTLS-style upgrade.
    pub mid_stream: u8,
    /// A record of this connection could not be put on the ring.
    pub lost: u8,
    /// Per direction: where the captured stream starts is known.
    pub started: [u8; 2],
    /// Per direction: the budget is spent.
    pub full: [u8; 2],
    /// The peer's first bytes went to a listener or request socket (`rules::missed_peer_start`).
    pub missed_start: u8,
    pub _pad: [u8; 5],
    /// Sequence number where each direction's captured stream starts.
    pub start: [u32; 2],
    /// Bytes sent to the ring per direction, retransmissions included (bounds a storm).
    pub sent: [u32; 2],
    /// Plaintext bytes looked at per direction for a late TLS start.
    pub watched: [u32; 2],
}

impl SockState {
    /// `EventHeader::flags` bits every record of this connection carries.
    #[inline(always)]
    pub fn record_flags(&self) -> u8 {
        if self.lost != 0 {
            monitor_common::record_flags::LOST
        } else {
            0
        }
    }
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
pub fn dir_index(dir: u8) -> usize {
    by_dir(dir, 0, 1)
}
