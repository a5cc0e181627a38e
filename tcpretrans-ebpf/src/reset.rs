//! `tcp:tcp_send_reset` and `tcp:tcp_receive_reset`: the two directions of
//! one hook. The reset is remembered on the socket, so that the `CLOSE` it
//! causes says why, and reported when state events are on.
use aya_ebpf::{
    macros::{raw_tracepoint, tracepoint},
    programs::{RawTracePointContext, TracePointContext},
};
use tcpretrans_common::{
    ABSENT, EventHeader, ResetEvent, event_kind, filter_flags, hooks, lost_slot, reset_direction,
};

use crate::{
    event::{self, fill},
    maps::{FILTER, RESET_FIELDS, SOCK_OFFSETS, SOCKETS, TCP_OFFSETS, reserve, submit},
    names::named,
    owner::write_owner,
    record::family_version,
    sock::{self, Probed, read},
};

/// The classic tracepoints: the socket from their records (used when BTF
/// lacks what the raw ones need).
#[tracepoint]
pub fn tcp_send_reset(ctx: TracePointContext) -> u32 {
    match record_socket(&ctx, RESET_FIELDS.get().send_skaddr) {
        Ok(sk) => reset(sk, reset_direction::SENT),
        Err(_) => 0,
    }
}

#[tracepoint]
pub fn tcp_receive_reset(ctx: TracePointContext) -> u32 {
    match record_socket(&ctx, RESET_FIELDS.get().receive_skaddr) {
        Ok(sk) => reset(sk, reset_direction::RECEIVED),
        Err(_) => 0,
    }
}

/// `TP_PROTO(const struct sock *sk, const struct sk_buff *skb, ...)`.
#[raw_tracepoint(tracepoint = "tcp_send_reset")]
pub fn tcp_send_reset_raw(ctx: RawTracePointContext) -> u32 {
    reset(ctx.arg(0), reset_direction::SENT)
}

/// `TP_PROTO(struct sock *sk)`.
#[raw_tracepoint(tracepoint = "tcp_receive_reset")]
pub fn tcp_receive_reset_raw(ctx: RawTracePointContext) -> u32 {
    reset(ctx.arg(0), reset_direction::RECEIVED)
}

/// The record's `skaddr` (0 when userspace found none).
fn record_socket(ctx: &TracePointContext, skaddr: u16) -> Result<u64, i64> {
    if skaddr == ABSENT {
        return Ok(0);
    }
    // SAFETY: the offset lies within the record (checked by userspace).
    unsafe { ctx.read_at(usize::from(skaddr)) }.map_err(i64::from)
}

fn reset(sk: u64, direction: u8) -> u32 {
    match try_reset(sk, direction) {
        Ok(()) | Err(_) => 0,
    }
}

fn try_reset(sk: u64, direction: u8) -> Result<(), i64> {
    // Resets answering packets for no socket have none to attribute.
    if sk == 0 {
        return Ok(());
    }
    let filter = FILTER.get();
    let tcp = TCP_OFFSETS.get();
    let Some((flow, family)) = sock::flow::<Probed>(sk, tcp) else {
        return Ok(());
    };
    if !filter.keeps_family(family) {
        return Ok(());
    }
    let Some(netns) = sock::kept::<Probed>(sk, SOCK_OFFSETS.get(), filter) else {
        return Ok(());
    };
    let info = SOCKETS.get_ptr_mut(sk);
    if let Some(info) = info {
        // SAFETY: valid map value pointer; one socket's events are serialized.
        unsafe { (*info).reset = direction };
    }
    if filter.flags & filter_flags::STATE_EVENTS == 0 {
        return Ok(());
    }
    let known_owner = info.map(|info| {
        // SAFETY: valid map value pointer; the owner is copied at once, as
        // for retransmissions.
        unsafe { &(*info).owner }
    });
    if !filter.keeps_owner(known_owner.map_or(0, |o| o.pid))
        || !filter.keeps_flow(flow.sport, flow.dport, &flow.saddr, &flow.daddr)
    {
        return Ok(());
    }
    let (owner, sock_ino) = sock::owner_or_inode(sk, known_owner, tcp);
    let Some(mut entry) = reserve::<ResetEvent>(if direction == reset_direction::SENT {
        lost_slot::RESET_SENT
    } else {
        lost_slot::RESET_RECEIVED
    }) else {
        return Ok(());
    };
    let event = entry.as_mut_ptr();
    let header = EventHeader::new(
        event_kind::RESET,
        family_version(family).unwrap_or(0),
        netns.inum,
        event::now(),
        sk,
        sock_ino,
        sock::cgroup_id(sk, SOCK_OFFSETS.get(), tcp),
    );
    // SAFETY: `event` points at a reserved slot of the event's size.
    unsafe {
        fill!(event: ResetEvent {
            header = header,
            flow = flow,
            owner => |at| write_owner(at, owner),
            direction = direction,
            state = read(sk, tcp.skc_state),
            _pad = 0,
        });
    }
    submit(entry);
    Ok(())
}

named!(hooks::SEND_RESET.classic, tcp_send_reset);
named!(hooks::SEND_RESET.raw.unwrap(), tcp_send_reset_raw);
named!(hooks::RECEIVE_RESET.classic, tcp_receive_reset);
named!(hooks::RECEIVE_RESET.raw.unwrap(), tcp_receive_reset_raw);
