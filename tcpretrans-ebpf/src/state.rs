//! `sock:inet_sock_set_state` for TCP: tracks each socket's time in its state
//! and its owner, and reports the transitions userspace asked for.
use core::mem::MaybeUninit;

use aya_ebpf::{helpers::bpf_ktime_get_ns, macros::tracepoint, programs::TracePointContext};
use tcpretrans_common::{
    DURATION_UNKNOWN, Owner, SockInfo, StateEvent, event_kind,
    tcp_state::{CLOSE, CLOSE_WAIT, ESTABLISHED, FIN_WAIT1, LAST_ACK, LISTEN, SYN_SENT},
};

use crate::{
    maps::{FILTER, SOCKETS, STATE_FIELDS, reserve, submit},
    owner::{self, write_owner},
    record::Record,
};

const IPPROTO_TCP: u16 = 6;

#[tracepoint]
pub fn inet_sock_set_state(ctx: TracePointContext) -> u32 {
    match try_inet_sock_set_state(&ctx) {
        Ok(()) | Err(_) => 0,
    }
}

fn try_inet_sock_set_state(ctx: &TracePointContext) -> Result<(), i64> {
    let fields = STATE_FIELDS.load();
    let filter = FILTER.load();
    let mut slot = MaybeUninit::uninit();
    let Some(hit) = Record::filtered(ctx, &mut slot, &fields.flow, &filter)? else {
        return Ok(());
    };
    let (record, skaddr) = (hit.record, hit.sk);
    if record.load::<u16>(fields.protocol) != IPPROTO_TCP {
        return Ok(());
    }
    let old_state = record.load::<i32>(fields.oldstate) as u8;
    let new_state = record.load::<i32>(fields.newstate) as u8;
    // SAFETY: helper without preconditions.
    let now = unsafe { bpf_ktime_get_ns() };

    let (prev_state_ns, owner) = track(skaddr, old_state, new_state, now);

    if !filter.keeps_transition(old_state, new_state) {
        return Ok(());
    }
    let Some(mut entry) = reserve::<StateEvent>() else {
        return Ok(());
    };
    let event = entry.as_mut_ptr();
    // SAFETY: `event` points at a reserved slot of the event's size; every
    // field is written before submit.
    unsafe {
        hit.write_head(
            event_kind::STATE,
            now,
            skaddr,
            &raw mut (*event).header,
            &raw mut (*event).flow,
        );
        write_owner(&raw mut (*event).owner, owner.as_ref());
        (&raw mut (*event).prev_state_ns).write(prev_state_ns);
        (&raw mut (*event).old_state).write(old_state);
        (&raw mut (*event).new_state).write(new_state);
        (&raw mut (*event)._pad).write(0);
    }
    submit(entry);
    Ok(())
}

/// Updates the socket's entry and returns how long it stayed in `old_state`
/// and its owner. The entry goes away when the socket reaches CLOSE.
#[inline(always)]
fn track(skaddr: u64, old_state: u8, new_state: u8, now: u64) -> (u64, Option<Owner>) {
    let caller = process_context_owner(old_state, new_state);
    let result = match SOCKETS.get_ptr_mut(skaddr) {
        Some(info) => {
            // SAFETY: valid map value pointer; racing updates of one socket's
            // entry are serialized by the socket lock in the kernel.
            let info = unsafe { &mut *info };
            let since = core::mem::replace(&mut info.state_since_ns, now);
            if info.owner.pid == 0
                && let Some(owner) = caller
            {
                info.owner = owner;
            }
            let prev = if since == 0 {
                DURATION_UNKNOWN
            } else {
                now.wrapping_sub(since)
            };
            (prev, (info.owner.pid != 0).then_some(info.owner))
        }
        None => {
            if new_state != CLOSE {
                let info = SockInfo {
                    state_since_ns: now,
                    owner: caller.unwrap_or(Owner::UNKNOWN),
                };
                let _ = SOCKETS.insert(skaddr, info, 0);
            }
            (DURATION_UNKNOWN, caller)
        }
    };
    if new_state == CLOSE {
        let _ = SOCKETS.remove(skaddr);
    }
    result
}

/// The calling process, for the transitions that only a system call on the
/// socket makes (connect, listen, close, shutdown). Elsewhere the current task
/// is whoever the softirq interrupted, not the owner.
#[inline(always)]
fn process_context_owner(old_state: u8, new_state: u8) -> Option<Owner> {
    let syscall_driven = matches!(
        (old_state, new_state),
        (CLOSE, SYN_SENT) | (CLOSE, LISTEN) | (ESTABLISHED, FIN_WAIT1) | (CLOSE_WAIT, LAST_ACK)
    );
    syscall_driven.then(owner::current)
}
