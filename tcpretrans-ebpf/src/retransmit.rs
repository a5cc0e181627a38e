//! `tcp:tcp_retransmit_skb`: one event per retransmitted skb, with the
//! socket's timers, RTT, congestion state and retry budget at that moment.
use aya_ebpf::{
    helpers::generated,
    macros::{raw_tracepoint, tracepoint},
    programs::{RawTracePointContext, TracePointContext},
};
use tcpretrans_common::{
    ABSENT, RetransmitEvent, TcpOffsets, event_kind, hooks, lost_slot, retry_budget,
    tcp_state::SYN_SENT,
};

use crate::{
    event::{self, fill},
    maps::{FILTER, RETRANSMIT_FIELDS, SOCKETS, TCP_OFFSETS, reserve, submit},
    names::named,
    owner::write_owner,
    record::Hit,
    sock::{self, Probed, read, read_bitfield},
};

/// The classic tracepoint: its record (used when BTF lacks what the raw
/// one needs).
#[tracepoint]
pub fn tcp_retransmit_skb(ctx: TracePointContext) -> u32 {
    match try_tcp_retransmit_skb(&ctx) {
        Ok(()) | Err(_) => 0,
    }
}

fn try_tcp_retransmit_skb(ctx: &TracePointContext) -> Result<(), i64> {
    let fields = RETRANSMIT_FIELDS.get();
    let Some((hit, record)) = Hit::from_record(ctx, &fields.flow, FILTER.get())? else {
        return Ok(());
    };
    retransmit(
        &hit,
        record.load(fields.skbaddr),
        record.optional::<i32>(fields.state).unwrap_or(0) as u8,
        record.optional(fields.err).unwrap_or(0),
    )
}

/// The raw tracepoint: `TP_PROTO(const struct sock *sk, const struct
/// sk_buff *skb)`, and `int err` since 6.17 (when the record has it).
#[raw_tracepoint(tracepoint = "tcp_retransmit_skb")]
pub fn tcp_retransmit_skb_raw(ctx: RawTracePointContext) -> u32 {
    match try_tcp_retransmit_skb_raw(&ctx) {
        Ok(()) | Err(_) => 0,
    }
}

fn try_tcp_retransmit_skb_raw(ctx: &RawTracePointContext) -> Result<(), i64> {
    let sk: u64 = ctx.arg(0);
    let Some(hit) = Hit::from_sock::<Probed>(sk, sk, FILTER.get()) else {
        return Ok(());
    };
    let err = if RETRANSMIT_FIELDS.get().err == ABSENT {
        0
    } else {
        ctx.arg::<i32>(2)
    };
    retransmit(&hit, ctx.arg(1), read(sk, TCP_OFFSETS.get().skc_state), err)
}

/// Reports one retransmission of `skb` (attempted; `err` non-zero when it
/// could not be sent).
#[inline(always)]
fn retransmit(hit: &Hit, skb: u64, state: u8, err: i32) -> Result<(), i64> {
    let sk = hit.sk;
    let tcp = TCP_OFFSETS.get();
    // SAFETY: the owner is copied into the event at once.
    let known_owner = unsafe { SOCKETS.get(sk) }.map(|info| &info.owner);
    if !FILTER.get().keeps_owner(known_owner.map_or(0, |o| o.pid)) {
        return Ok(());
    }
    let (budget, budget_limit, syn_linear_timeouts) = retry_budget(sk, hit.netns.net, state, tcp);

    let Some(mut entry) = reserve::<RetransmitEvent>(lost_slot::RETRANSMIT) else {
        return Ok(());
    };
    let event = entry.as_mut_ptr();
    let now = event::now();
    let (owner, sock_ino) = sock::owner_or_inode(sk, known_owner, tcp);
    // SAFETY: `event` points at a reserved slot of the event's size.
    unsafe {
        fill!(event: RetransmitEvent {
            header = hit.header(event_kind::RETRANSMIT, now, sk, sock_ino),
            flow = hit.flow,
            owner => |at| write_owner(at, owner),
            state = state,
            ca_state = read_bitfield(sk, tcp.icsk_ca_state),
            pending = read(sk, tcp.icsk_pending),
            timer_due = timer_due(sk, tcp),
            backoff = read(sk, tcp.icsk_backoff),
            err = err,
            retransmits = read(sk, tcp.icsk_retransmits),
            tcp_flags = read(skb, tcp.skb_tcp_flags),
            segs = read(skb, tcp.skb_gso_segs),
            rto_jiffies = read(sk, tcp.icsk_rto),
            srtt_us8 = read(sk, tcp.srtt_us),
            mdev_us4 = read(sk, tcp.mdev_us),
            cwnd = read(sk, tcp.snd_cwnd),
            ssthresh = read(sk, tcp.snd_ssthresh),
            total_retrans = read(sk, tcp.total_retrans),
            seq = read(skb, tcp.skb_seq),
            end_seq = read(skb, tcp.skb_end_seq),
            budget = budget,
            budget_limit = budget_limit,
            syn_linear_timeouts = syn_linear_timeouts,
            _pad1 = 0,
        });
    }
    submit(entry);
    Ok(())
}

/// Whether the socket's retransmit/probe timer has expired, i.e. its handler
/// is running (`tcp_write_timer_handler` leaves `icsk_pending` set for the
/// loss probe while it sends it).
#[inline(always)]
fn timer_due(sk: u64, tcp: &TcpOffsets) -> u8 {
    if !tcp.icsk_timer_expires.is_known() {
        return 0;
    }
    let expires: u64 = read(sk, tcp.icsk_timer_expires);
    // SAFETY: helper without preconditions.
    let now = unsafe { generated::bpf_jiffies64() };
    u8::from(now.wrapping_sub(expires) as i64 >= 0)
}

/// The limit `tcp_write_timeout()` applies to this socket: its kind, the
/// sysctl (or socket option) value, and `tcp_syn_linear_timeouts` for SYNs.
#[inline(always)]
fn retry_budget(sk: u64, net: u64, state: u8, tcp: &TcpOffsets) -> (u8, u8, u8) {
    if state == SYN_SENT {
        let own: u8 = read(sk, tcp.icsk_syn_retries);
        let limit = if own != 0 {
            own
        } else {
            read(net, tcp.net_syn_retries)
        };
        return (
            retry_budget::SYN,
            limit,
            read(net, tcp.net_syn_linear_timeouts),
        );
    }
    if sock::orphan::<Probed>(sk, tcp) == 1 {
        return (retry_budget::ORPHAN, read(net, tcp.net_orphan_retries), 0);
    }
    (retry_budget::RETRIES2, read(net, tcp.net_retries2), 0)
}

named!(hooks::RETRANSMIT.classic, tcp_retransmit_skb);
named!(hooks::RETRANSMIT.raw.unwrap(), tcp_retransmit_skb_raw);
