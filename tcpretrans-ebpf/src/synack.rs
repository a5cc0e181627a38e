//! `tcp:tcp_retransmit_synack`: the passive side's SYN-ACK retransmissions,
//! reported as retransmission events of the request socket.
use aya_ebpf::{
    macros::{raw_tracepoint, tracepoint},
    programs::{RawTracePointContext, TracePointContext},
};
use tcpretrans_common::{
    RetransmitEvent, event_kind, hooks, lost_slot, retry_budget, tcp_state::SYN_RECV,
};

use crate::{
    event::{self, fill, zero},
    maps::{FILTER, SOCKETS, SYNACK_FIELDS, TCP_OFFSETS, reserve, submit},
    names::named,
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
    let now = event::now();
    // Accepted connections belong to whoever listens.
    let (owner, sock_ino) = sock::owner_or_inode(listener, known_owner, tcp);
    // SAFETY: `event` points at a reserved slot of the event's size.
    unsafe {
        // A request socket has no RTT, congestion state or sequence yet.
        fill!(event: RetransmitEvent {
            header = hit.header(event_kind::SYNACK, now, req, sock_ino),
            flow = hit.flow,
            owner => |at| write_owner(at, owner),
            state = SYN_RECV,
            ca_state = 0,
            pending = 0,
            timer_due = 0,
            backoff = num_timeout,
            err = 0,
            retransmits = read(req, tcp.req_num_retrans),
            tcp_flags = SYN_ACK_FLAGS,
            segs = 1,
            rto_jiffies = timeout
                .checked_shl(u32::from(num_timeout))
                .unwrap_or(u32::MAX),
            srtt_us8 => zero,
            mdev_us4 => zero,
            cwnd => zero,
            ssthresh => zero,
            total_retrans => zero,
            seq => zero,
            end_seq => zero,
            budget = retry_budget::SYNACK,
            budget_limit = limit,
            syn_linear_timeouts = 0,
            _pad1 = 0,
        });
    }
    submit(entry);
    Ok(())
}

named!(hooks::SYNACK.classic, tcp_retransmit_synack);
named!(hooks::SYNACK.raw.unwrap(), tcp_retransmit_synack_raw);
