//! Who owns a socket. Clients: connect4/connect6 run in the connecting process and note it
//! in a direct-mapped array by socket cookie, read when the connection first matters.
//! Servers: tp_btf `tcp_rcv_space_adjust` runs in the context of the process that reads the
//! accepted socket, after the peer's first bytes; a close in process context names it too.

use core::{
    ffi::c_void,
    intrinsics::{AtomicOrdering, atomic_xadd, atomic_xchg},
    ptr,
};

use aya_ebpf::{
    EbpfContext,
    btf_maps::Array,
    helpers::generated::{
        bpf_get_current_cgroup_id, bpf_get_current_comm, bpf_get_current_pid_tgid,
        bpf_get_socket_cookie,
    },
    macros::{btf_map, btf_tracepoint, cgroup_sock_addr},
    programs::{BtfTracePointContext, SockAddrContext},
};
use monitor_common::{
    COMM_LEN, EventHeader, OwnerEvent, Task, kind,
    rules::{IPPROTO_TCP, OWNER_SLOTS, owner_slot},
};

use crate::{
    floor,
    ring::{header, output},
    self_tgid,
    state::{self, MODE_IGNORE, SockState},
};

const SOCK_STREAM: u32 = 1;

/// A client socket's owner as noted at connect().
#[repr(C)]
pub struct ConnectSlot {
    /// 0 while the slot is being written.
    cookie: u64,
    owner: Task,
}

/// Owners of client sockets, noted at connect() (process context) and read when the
/// connection first matters. Direct-mapped by cookie (`rules::owner_slot`): two live
/// sockets can share a slot, and the cookie in the slot says whether it holds this
/// socket's owner (if not, userspace's /proc fallback names it). The slot is a sequence
/// lock on its cookie: the writer empties it, writes the owner, then sets the cookie; the
/// reader reads the cookie, copies the owner, reads the cookie again. The cookie is only
/// written and read with BPF atomic instructions that return a value (xchg, fetch_add),
/// which the BPF memory model makes fully ordered on every architecture: the owner's bytes
/// can neither be seen before the cookie that announces them nor be copied after it
/// changed. An array slot costs no lock, allocation or eviction scan (an LRU hash here cost
/// more than the SK_STORAGE allocation it replaced: 1.1-1.8 us a connect()).
#[btf_map]
static OWNERS: Array<ConnectSlot, { OWNER_SLOTS as usize }> = Array::new();

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

/// The current task: the owner, where the kernel runs in its context.
#[inline(always)]
pub fn current_task() -> Task {
    // SAFETY: helpers without memory arguments.
    let pid_tgid = unsafe { bpf_get_current_pid_tgid() };
    let mut task = Task {
        tgid: (pid_tgid >> 32) as u32,
        pid: pid_tgid as u32,
        cgroup_id: unsafe { bpf_get_current_cgroup_id() },
        comm: [0; COMM_LEN],
    };
    // SAFETY: writes at most COMM_LEN bytes into the array.
    unsafe { bpf_get_current_comm(task.comm.as_mut_ptr().cast(), COMM_LEN as u32) };
    task
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
    if ty != SOCK_STREAM || proto != u32::from(IPPROTO_TCP) {
        return;
    }
    // SAFETY: helper on the program's context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    let Some(slot) = OWNERS.get_ptr_mut(owner_slot(cookie)) else {
        return;
    };
    // SAFETY: the fields of an array slot (the u64 cookie is aligned).
    unsafe {
        let stamp = ptr::addr_of_mut!((*slot).cookie);
        // Emptied first so a reader never takes a half-written owner.
        exchange(stamp, 0);
        ptr::write_volatile(ptr::addr_of_mut!((*slot).owner), current_task());
        exchange(stamp, cookie);
    }
}

/// BPF_XCHG: fully ordered (a BPF atomic that returns a value).
#[inline(always)]
unsafe fn exchange(p: *mut u64, v: u64) -> u64 {
    // SAFETY: an aligned u64 in map memory.
    unsafe { atomic_xchg::<u64, { AtomicOrdering::SeqCst }>(p, v) }
}

/// BPF_ADD | BPF_FETCH of 0: a fully ordered read (a plain atomic load is not ordered in the
/// BPF memory model).
#[inline(always)]
unsafe fn ordered_read(p: *mut u64) -> u64 {
    // SAFETY: an aligned u64 in map memory.
    unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::SeqCst }>(p, 0) }
}

/// The owner connect() noted for this client socket, if its slot still holds it.
#[inline(always)]
pub fn client_owner(cookie: u64) -> Option<Task> {
    let slot = OWNERS.get_ptr_mut(owner_slot(cookie))?;
    // SAFETY: the fields of an array slot; the cookie is read before and after the copy.
    unsafe {
        let stamp = ptr::addr_of_mut!((*slot).cookie);
        if ordered_read(stamp) != cookie {
            return None;
        }
        let owner = ptr::read_volatile(ptr::addr_of!((*slot).owner));
        (ordered_read(stamp) == cookie).then_some(owner)
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
    let st = state::lookup(sk);
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
pub fn adopt_owner(st: &mut SockState) {
    if st.owner_known != 0 {
        return;
    }
    let owner = current_task();
    if owner.tgid == 0 {
        return;
    }
    st.owner = owner;
    st.owner_known = 1;
    if owner.tgid == self_tgid() {
        st.mode = MODE_IGNORE;
        return;
    }
    if st.open_reported != 0
        && !output(&OwnerEvent {
            header: EventHeader {
                flags: st.record_flags(),
                ..header(kind::OWNER, st.cookie)
            },
            owner,
        })
    {
        st.lost = 1;
    }
}
