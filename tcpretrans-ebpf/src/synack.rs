//! `tcp:tcp_retransmit_synack`: the passive side's SYN-ACK retransmissions,
//! reported as retransmission events of the request socket.
use aya_ebpf::{
    helpers::bpf_ktime_get_ns,
    macros::{raw_tracepoint, tracepoint},
    programs::{RawTracePointContext, TracePointContext},
};
use tcpretrans_common::{
    RetransmitEvent, event_kind, lost_slot, retry_budget, tcp_state::SYN_RECV,
};

use crate::{
    maps::{FILTER, SOCKETS, SYNACK_FIELDS, TCP_OFFSETS, reserve, submit},
    owner::write_owner,
    record::Hit,
    sock::{self, Probed, read, read_bitfield},
};

/// `TCPHDR_SYN | TCPHDR_ACK`.
const SYN_ACK_FLAGS: u8 = 0x12;

/// The classic tracepoint: its record (used when BTF lacks what the raw
/// one needs).
#[tracepoint]
pub fn tcp_retransmit_synack(ctx: TracePointContext) -> u32 {
    match try_tcp_retransmit_synack(&ctx) {
        Ok(()) | Err(_) => 0,
    }
}

fn try_tcp_retransmit_synack(ctx: &TracePointContext) -> Result<(), i64> {
    let fields = SYNACK_FIELDS.get();
    let Some((hit, record)) = Hit::from_record(ctx, &fields.flow, FILTER.get())? else {
        return Ok(());
    };
    synack(&hit, record.load(fields.req))
}

/// The raw tracepoint: `TP_PROTO(const struct sock *sk, const struct
/// request_sock *req)`; the flow is the request socket's.
#[raw_tracepoint(tracepoint = "tcp_retransmit_synack")]
pub fn tcp_retransmit_synack_raw(ctx: RawTracePointContext) -> u32 {
    match try_tcp_retransmit_synack_raw(&ctx) {
        Ok(()) | Err(_) => 0,
    }
}

fn try_tcp_retransmit_synack_raw(ctx: &RawTracePointContext) -> Result<(), i64> {
    let (listener, req): (u64, u64) = (ctx.arg(0), ctx.arg(1));
    let Some(hit) = Hit::from_sock::<Probed>(req, listener, FILTER.get()) else {
        return Ok(());
    };
    synack(&hit, req)
}

/// Reports the SYN-ACK retransmission of request `req` of listener `hit.sk`.
#[inline(always)]
fn synack(hit: &Hit, req: u64) -> Result<(), i64> {
    let listener = hit.sk;
    let tcp = TCP_OFFSETS.get();
    // SAFETY: the owner is copied into the event at once.
    let known_owner = unsafe { SOCKETS.get(listener) }.map(|info| &info.owner);
    if !FILTER.get().keeps_owner(known_owner.map_or(0, |o| o.pid)) {
        return Ok(());
    }
    // The timer that fired was armed for `timeout << num_timeout`.
    let num_timeout = read_bitfield(req, tcp.req_num_timeout);
    let timeout: u32 = read(req, tcp.req_timeout);
    let own: u8 = read(listener, tcp.icsk_syn_retries);
    let limit = if own != 0 {
        own
    } else {
        read(hit.netns.net, tcp.net_synack_retries)
    };

    let Some(mut entry) = reserve::<RetransmitEvent>(lost_slot::SYNACK) else {
        return Ok(());
    };
    let event = entry.as_mut_ptr();
    // SAFETY: `event` points at a reserved slot of the event's size; every
    // field is written before submit.
    unsafe {
        let now = bpf_ktime_get_ns();
        // Accepted connections belong to whoever listens.
        let (owner, sock_ino) = sock::owner_or_inode(listener, known_owner, tcp);
        hit.write_head(
            event_kind::SYNACK,
            now,
            req,
            sock_ino,
            &raw mut (*event).header,
            &raw mut (*event).flow,
        );
        write_owner(&raw mut (*event).owner, owner);
        (&raw mut (*event).state).write(SYN_RECV);
        (&raw mut (*event).ca_state).write(0);
        (&raw mut (*event).pending).write(0);
        (&raw mut (*event).timer_due).write(0);
        (&raw mut (*event).backoff).write(num_timeout);
        (&raw mut (*event).err).write(0);
        (&raw mut (*event).retransmits).write(read(req, tcp.req_num_retrans));
        (&raw mut (*event).tcp_flags).write(SYN_ACK_FLAGS);
        (&raw mut (*event).segs).write(1);
        (&raw mut (*event).rto_jiffies).write(
            timeout
                .checked_shl(u32::from(num_timeout))
                .unwrap_or(u32::MAX),
        );
        // A request socket has no RTT or congestion state yet. Volatile:
        // merged plain stores become an out-of-line byte-wise memset.
        for field in [
            &raw mut (*event).srtt_us8,
            &raw mut (*event).mdev_us4,
            &raw mut (*event).cwnd,
            &raw mut (*event).ssthresh,
            &raw mut (*event).total_retrans,
            &raw mut (*event).seq,
            &raw mut (*event).end_seq,
        ] {
            field.write_volatile(0);
        }
        (&raw mut (*event).budget).write(retry_budget::SYNACK);
        (&raw mut (*event).budget_limit).write(limit);
        (&raw mut (*event).syn_linear_timeouts).write(0);
        (&raw mut (*event)._pad1).write(0);
    }
    submit(entry);
    Ok(())
}
