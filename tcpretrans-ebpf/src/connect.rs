//! `syscalls:sys_enter_connect` / `sys_exit_connect`: TCP and MPTCP
//! `connect()` calls that fail. Entry remembers the destination and the
//! socket (resolved from the fd, so UDP and Unix sockets stay out); exit
//! reports an error. A non-blocking connect's failure comes later, or
//! within the call before it returns EINPROGRESS: either way the state
//! program reports it when the socket closes with an error.
use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_probe_read_user},
    macros::tracepoint,
    programs::TracePointContext,
};
use tcpretrans_common::{
    ABSENT, AF_INET, AF_INET6, Address, ConnectErrorEvent, EventHeader, Flow, PendingConnect,
    event_kind, hooks, lost_slot, traffic_family,
};

use crate::{
    event::{self, fill},
    maps::{CONNECT_FIELDS, CONNECTS, FILTER, SOCK_OFFSETS, TCP_OFFSETS, reserve, submit},
    names::named,
    owner,
    sock::{self, Probed},
};

const EINPROGRESS: i64 = 115;

#[tracepoint]
pub fn sys_enter_connect(ctx: TracePointContext) -> u32 {
    match try_sys_enter_connect(&ctx) {
        Ok(()) | Err(_) => 0,
    }
}

#[tracepoint]
pub fn sys_exit_connect(ctx: TracePointContext) -> u32 {
    match try_sys_exit_connect(&ctx) {
        Ok(()) | Err(_) => 0,
    }
}

fn try_sys_enter_connect(ctx: &TracePointContext) -> Result<(), i64> {
    let fields = CONNECT_FIELDS.get();
    if fields.enter_fd == ABSENT {
        return Ok(());
    }
    // SAFETY: offsets within the record (checked by userspace).
    let (fd, uservaddr): (u64, u64) = unsafe {
        (
            ctx.read_at(usize::from(fields.enter_fd))?,
            ctx.read_at(usize::from(fields.enter_uservaddr))?,
        )
    };
    // sockaddr_in: family, port, IPv4 address; sockaddr_in6 has the address at 8.
    // SAFETY: user memory is read with the faulting-safe helper.
    let head: [u8; 8] = unsafe { bpf_probe_read_user(uservaddr as *const [u8; 8]) }?;
    let family = u16::from_ne_bytes([head[0], head[1]]);
    if family != AF_INET && family != AF_INET6 {
        return Ok(());
    }
    let filter = FILTER.get();
    let tcp = TCP_OFFSETS.get();
    let sk = sock::stream_socket_of_fd(fd, tcp);
    if sk == 0 || sock::kept::<Probed>(sk, SOCK_OFFSETS.get(), filter).is_none() {
        return Ok(());
    }
    let daddr: Address = if family == AF_INET6 {
        // SAFETY: as above.
        unsafe { bpf_probe_read_user((uservaddr + 8) as *const Address) }?
    } else {
        sock::ipv4_mapped(u32::from_ne_bytes([head[4], head[5], head[6], head[7]]))
    };
    // A mapped destination on an IPv6 socket is IPv4 traffic.
    let family = traffic_family(family, &[0; 4], &daddr);
    if !filter.keeps_family(family) {
        return Ok(());
    }
    let dport = u16::from_be_bytes([head[2], head[3]]);
    // The caller is the owner; the local end is not bound yet: filters on
    // it see port 0 and the unspecified address.
    let caller = (bpf_get_current_pid_tgid() >> 32) as u32;
    if !filter.keeps_owner(caller) || !filter.keeps_flow(0, dport, &[0; 4], &daddr) {
        return Ok(());
    }
    let pending = PendingConnect {
        sk,
        daddr,
        dport,
        family,
        _pad: 0,
    };
    let _ = CONNECTS.insert(thread_id(), pending, 0);
    Ok(())
}

fn try_sys_exit_connect(ctx: &TracePointContext) -> Result<(), i64> {
    let fields = CONNECT_FIELDS.get();
    let tid = thread_id();
    // SAFETY: the value is copied out before the entry is removed.
    let Some(pending) = (unsafe { CONNECTS.get(tid) }).copied() else {
        return Ok(());
    };
    let _ = CONNECTS.remove(tid);
    // SAFETY: offset within the record (checked by userspace).
    let ret: i64 = unsafe { ctx.read_at(usize::from(fields.exit_ret)) }?;
    if ret == 0 {
        return Ok(());
    }
    if ret == -EINPROGRESS {
        return Ok(());
    }
    let tcp = TCP_OFFSETS.get();
    let netns =
        sock::kept::<Probed>(pending.sk, SOCK_OFFSETS.get(), FILTER.get()).map_or(0, |n| n.inum);
    let local = sock::flow::<Probed>(pending.sk, tcp).map(|(flow, _)| flow);
    let Some(mut entry) = reserve::<ConnectErrorEvent>(lost_slot::CONNECT) else {
        return Ok(());
    };
    let event = entry.as_mut_ptr();
    let family = if pending.family == AF_INET { 4 } else { 6 };
    let header = EventHeader::new(
        event_kind::CONNECT_ERROR,
        family,
        netns,
        event::now(),
        pending.sk,
        0,
        sock::cgroup_id(pending.sk, SOCK_OFFSETS.get(), tcp),
    );
    // SAFETY: `event` points at a reserved slot of the event's size.
    unsafe {
        fill!(event: ConnectErrorEvent {
            header = header,
            owner = owner::current(),
            flow = Flow {
                saddr: local.map_or([0; 4], |l| l.saddr),
                daddr: pending.daddr,
                sport: local.map_or(0, |l| l.sport),
                dport: pending.dport,
            },
            errno = (-ret) as i32,
        });
    }
    submit(entry);
    Ok(())
}

#[inline(always)]
fn thread_id() -> u32 {
    bpf_get_current_pid_tgid() as u32
}

named!(hooks::ENTER_CONNECT.classic, sys_enter_connect);
named!(hooks::EXIT_CONNECT.classic, sys_exit_connect);
