//! `syscalls:sys_exit_accept4` / `sys_exit_accept`: the process that accepts
//! a connection owns it from then on. A prefork server's listener belongs to
//! the master, which the connection inherits at its creation in softirq; the
//! worker that accepts it is the process that serves it (as `ss -tnp` says).
use aya_ebpf::{macros::tracepoint, programs::TracePointContext};
use tcpretrans_common::{ABSENT, SockInfo, hooks};

use crate::{
    maps::{CONNECT_FIELDS, FILTER, SOCKETS, TCP_OFFSETS},
    names::named,
    owner,
    record::Hit,
    sock::{self, IPPROTO_TCP, Probed},
};

#[tracepoint]
pub fn sys_exit_accept4(ctx: TracePointContext) -> u32 {
    match accepted(&ctx) {
        Ok(()) | Err(_) => 0,
    }
}

#[tracepoint]
pub fn sys_exit_accept(ctx: TracePointContext) -> u32 {
    match accepted(&ctx) {
        Ok(()) | Err(_) => 0,
    }
}

/// Makes the caller the owner of the TCP socket `accept()` returned. (An
/// MPTCP connection's descriptor names its MPTCP socket, not the subflows
/// whose events the tool shows: those keep their listener's owner.)
#[inline(always)]
fn accepted(ctx: &TracePointContext) -> Result<(), i64> {
    let offset = CONNECT_FIELDS.get().accept_exit_ret;
    if offset == ABSENT {
        return Ok(());
    }
    // SAFETY: an offset within the record (checked by userspace).
    let fd: i64 = unsafe { ctx.read_at(usize::from(offset)) }?;
    if fd < 0 {
        return Ok(());
    }
    let tcp = TCP_OFFSETS.get();
    let sk = sock::stream_socket_of_fd(fd as u64, tcp);
    if sk == 0 || sock::protocol::<Probed>(sk, tcp) != IPPROTO_TCP {
        return Ok(());
    }
    // Tracked like the sockets the state program follows: those of the
    // traced namespaces, addresses and cgroups only.
    if Hit::from_sock::<Probed>(sk, sk, FILTER.get()).is_none() {
        return Ok(());
    }
    let caller = owner::current();
    match SOCKETS.get_ptr_mut(sk) {
        // SAFETY: a valid map value pointer; its other members are left as
        // they are.
        Some(info) => unsafe { (*info).owner = caller },
        // Accepted from a connection established before tracing began.
        None => {
            let _ = SOCKETS.insert(sk, SockInfo::new(0, 0, caller), 0);
        }
    }
    Ok(())
}

named!(hooks::EXIT_ACCEPT4.classic, sys_exit_accept4);
named!(hooks::EXIT_ACCEPT.classic, sys_exit_accept);
