//! The end of reported connections: tp_btf `inet_sock_set_state` (the state changes that
//! reveal a FIN or end the socket, `rules::state_change_reported`: who closed first),
//! `tcp_receive_reset` and `tcp_send_reset`. These are not syscall tracepoints and carry no
//! host-wide cost.

use core::ffi::c_void;

use aya_ebpf::{macros::btf_tracepoint, programs::BtfTracePointContext};
use monitor_common::{CloseEvent, EventHeader, close_reason, kind, rules, tcp_state};

use crate::{
    capture::STOP,
    floor,
    owners::adopt_owner,
    ring::{header, output},
    state::{self, SockState},
};

/// The state of a connection that was reported, if any.
#[inline(always)]
fn reported_state(sk: *mut c_void) -> Option<&'static mut SockState> {
    if sk.is_null() {
        return None;
    }
    let st = state::lookup(sk);
    if st.is_null() {
        return None;
    }
    // SAFETY: storage returned by the kernel for this socket.
    let st = unsafe { &mut *st };
    (st.open_reported != 0).then_some(st)
}

#[inline(always)]
fn emit_close(st: &mut SockState, reason: u8, old_state: u8, new_state: u8) {
    let sent = output(&CloseEvent {
        header: EventHeader {
            flags: st.record_flags(),
            ..header(kind::CLOSE, st.cookie)
        },
        reason,
        old_state,
        new_state,
        ..CloseEvent::default()
    });
    if !sent {
        st.lost = 1;
    }
}

#[btf_tracepoint(function = "inet_sock_set_state")]
pub fn tlsmon_state(ctx: BtfTracePointContext) -> i32 {
    if floor() {
        return 0;
    }
    let sk: *mut c_void = ctx.arg(0);
    let old: i32 = ctx.arg(1);
    let new: i32 = ctx.arg(2);
    if let Some(st) = reported_state(sk) {
        // ESTABLISHED -> FIN_WAIT1 and CLOSE_WAIT -> LAST_ACK happen only in close(2) or
        // shutdown(2): names a server that closes without reading.
        if new == i32::from(tcp_state::FIN_WAIT1) || new == i32::from(tcp_state::LAST_ACK) {
            adopt_owner(st);
        }
        let cookie = st.cookie;
        if rules::state_change_reported(old as u8, new as u8) {
            emit_close(st, close_reason::STATE, old as u8, new as u8);
        }
        if new == i32::from(tcp_state::CLOSE) {
            // A stop request for a connection that sent nothing more must not outlive it.
            let _ = STOP.remove(&cookie);
        }
    }
    0
}

#[btf_tracepoint(function = "tcp_receive_reset")]
pub fn tlsmon_rst_in(ctx: BtfTracePointContext) -> i32 {
    if floor() {
        return 0;
    }
    let sk: *mut c_void = ctx.arg(0);
    if let Some(st) = reported_state(sk) {
        emit_close(st, close_reason::RESET_RECEIVED, 0, 0);
    }
    0
}

#[btf_tracepoint(function = "tcp_send_reset")]
pub fn tlsmon_rst_out(ctx: BtfTracePointContext) -> i32 {
    if floor() {
        return 0;
    }
    let sk: *mut c_void = ctx.arg(0);
    if let Some(st) = reported_state(sk) {
        emit_close(st, close_reason::RESET_SENT, 0, 0);
    }
    0
}
