//! `tcp:tcp_send_reset` and `tcp:tcp_receive_reset`: the two directions of
//! one hook. The reset is remembered on the socket, so that the `CLOSE` it
//! causes says why, and reported when state events are on.
use aya_ebpf::{helpers::bpf_ktime_get_ns, macros::tracepoint, programs::TracePointContext};
use tcpretrans_common::{
    ABSENT, AF_INET, AF_INET6, EventHeader, ResetEvent, event_kind, filter_flags, reset_direction,
};

use crate::{
    maps::{FILTER, RESET_FIELDS, SOCK_OFFSETS, SOCKETS, TCP_OFFSETS, reserve, submit},
    owner::write_owner,
    sock::{self, read, words},
};

#[tracepoint]
pub fn tcp_send_reset(ctx: TracePointContext) -> u32 {
    match try_reset(&ctx, RESET_FIELDS.get().send_skaddr, reset_direction::SENT) {
        Ok(()) | Err(_) => 0,
    }
}

#[tracepoint]
pub fn tcp_receive_reset(ctx: TracePointContext) -> u32 {
    match try_reset(
        &ctx,
        RESET_FIELDS.get().receive_skaddr,
        reset_direction::RECEIVED,
    ) {
        Ok(()) | Err(_) => 0,
    }
}

fn try_reset(ctx: &TracePointContext, skaddr: u16, direction: u8) -> Result<(), i64> {
    if skaddr == ABSENT {
        return Ok(());
    }
    // SAFETY: the offset lies within the record (checked by userspace).
    let sk: u64 = unsafe { ctx.read_at(usize::from(skaddr)) }?;
    // Resets answering packets for no socket have none to attribute.
    if sk == 0 {
        return Ok(());
    }
    let filter = FILTER.get();
    let tcp = TCP_OFFSETS.get();
    let Some((flow, family)) = sock::flow(sk, tcp) else {
        return Ok(());
    };
    if !filter.keeps_family(family) {
        return Ok(());
    }
    let Some(netns) = sock::kept(sk, SOCK_OFFSETS.get(), filter) else {
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
    // SAFETY (map value): copied at once, as for retransmissions.
    let known_owner = info.map(|info| unsafe { &(*info).owner });
    if !filter.keeps_owner(known_owner.map_or(0, |o| o.pid))
        || !filter.keeps_flow(
            flow.sport,
            flow.dport,
            &words(&flow.saddr),
            &words(&flow.daddr),
        )
    {
        return Ok(());
    }
    let (owner, sock_ino) = sock::owner_or_inode(sk, known_owner, tcp);
    let Some(mut entry) = reserve::<ResetEvent>() else {
        return Ok(());
    };
    let event = entry.as_mut_ptr();
    // SAFETY: `event` points at a reserved slot of the event's size; every
    // field is written before submit.
    unsafe {
        (&raw mut (*event).header).write(EventHeader {
            kind: event_kind::RESET,
            family: if family == AF_INET {
                4
            } else if family == AF_INET6 {
                6
            } else {
                0
            },
            _pad: 0,
            netns: netns.inum,
            timestamp_ns: bpf_ktime_get_ns(),
            skaddr: sk,
            sock_ino,
        });
        (&raw mut (*event).flow).write(flow);
        write_owner(&raw mut (*event).owner, owner);
        (&raw mut (*event).direction).write(direction);
        (&raw mut (*event).state).write(read(sk, tcp.skc_state));
        (&raw mut (*event)._pad).write(0);
    }
    submit(entry);
    Ok(())
}
