//! tlsmon kernel programs.
//!
//! Packet-level capture (measured: syscall tracepoints tax every syscall on the host,
//! cgroup_skb does not; docs/benchmarks.md):
//! - [`packet`]: `cgroup_skb` ingress + egress on the root cgroup v2 see every TCP segment
//!   of every process, container and network namespace. The first payload of a connection
//!   decides in kernel whether it looks like TLS; TLS flows are captured ([`capture`]) up to
//!   a per-direction budget, plaintext flows cost no ring record (one short sample on ports
//!   known to speak TLS) and are only watched for a STARTTLS-style late ClientHello.
//! - [`owners`]: `connect4`/`connect6` note the owner of client sockets (process context)
//!   in an array slot chosen by socket cookie, and tp_btf `tcp_rcv_space_adjust` names the
//!   first process that reads an accepted socket (it runs in the reader's context, after the
//!   ClientHello arrived, so userspace holds events until the owner is known).
//! - [`lifecycle`]: tp_btf `inet_sock_set_state`, `tcp_receive_reset`, `tcp_send_reset` for
//!   the connections that were reported.
//!
//! Per-socket state ([`state`]) lives in an SK_STORAGE map, created only for connections
//! that matter (a TLS record seen, plaintext on a TLS port, our own): an ordinary TCP
//! connection costs no allocation; while it is young its first bytes are looked at, judged
//! by the TCP socket's own counters, and past the watch limit it costs one storage lookup per
//! packet. The socket cookie is the identity sent to userspace. Records go to one ring
//! buffer ([`ring`]) with `BPF_RB_NO_WAKEUP`; userspace drains it on a timer (waking it per
//! record cost 1.4-1.5x CPU on connection-heavy work). The decisions on bytes and counters
//! are pure functions in `monitor_common::rules`, tested on the host.
#![no_std]
#![no_main]
// Fully ordered BPF atomics (`owners`): `core::sync::atomic` offers no read-modify-write on
// this target, whose spec does not claim compare-and-swap.
#![feature(core_intrinsics)]
#![allow(internal_features)]

mod capture;
mod lifecycle;
mod owners;
mod packet;
mod ring;
mod state;

use core::ptr;

// ---- tunables, written by the loader (EbpfLoader::override_global) -------------------------
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

#[inline(always)]
fn self_tgid() -> u32 {
    global(&TLSMON_SELF_TGID)
}

#[inline(always)]
fn watch_limit() -> u32 {
    global(&TLSMON_WATCH_LIMIT)
}

#[inline(always)]
fn direction_budget() -> u32 {
    monitor_common::rules::clamp_budget(global(&TLSMON_DIRECTION_BUDGET))
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
