//! `tcp:tcp_retransmit_skb`: one event per retransmitted skb.
use core::mem::MaybeUninit;

use aya_ebpf::{helpers::bpf_ktime_get_ns, macros::tracepoint, programs::TracePointContext};
use tcpretrans_common::{ABSENT, EventHeader, RetransmitEvent, event_kind};

use crate::{
    maps::{FILTER, RETRANSMIT_FIELDS, SOCK_OFFSETS, SOCKETS, reserve, submit},
    owner::write_owner,
    record::{Record, family_version},
    sock,
};

#[tracepoint]
pub fn tcp_retransmit_skb(ctx: TracePointContext) -> u32 {
    match try_tcp_retransmit_skb(&ctx) {
        Ok(()) | Err(_) => 0,
    }
}

fn try_tcp_retransmit_skb(ctx: &TracePointContext) -> Result<(), i64> {
    let fields = RETRANSMIT_FIELDS.load();
    if fields.flow.skaddr == ABSENT {
        return Ok(());
    }
    let filter = FILTER.load();
    let mut slot = MaybeUninit::uninit();
    let record = Record::read(ctx, &mut slot)?;
    let family = record.family(&fields.flow);
    if !filter.keeps_family(family) {
        return Ok(());
    }
    let Some(version) = family_version(family) else {
        return Ok(());
    };
    let skaddr: u64 = record.load(fields.flow.skaddr);
    let Some(netns) = sock::netns_passing(skaddr, &SOCK_OFFSETS.load(), &filter) else {
        return Ok(());
    };
    let Some(mut entry) = reserve::<RetransmitEvent>() else {
        return Ok(());
    };
    let event = entry.as_mut_ptr();
    // SAFETY: `event` points at a reserved slot of the event's size; every
    // field is written before submit.
    unsafe {
        let header = EventHeader {
            kind: event_kind::RETRANSMIT,
            family: version,
            _pad: 0,
            netns,
            timestamp_ns: bpf_ktime_get_ns(),
            skaddr,
        };
        record.write_head(
            &fields.flow,
            header,
            &raw mut (*event).header,
            &raw mut (*event).flow,
        );
        write_owner(
            &raw mut (*event).owner,
            SOCKETS.get(skaddr).map(|info| &info.owner),
        );
        (&raw mut (*event).state).write(record.optional::<i32>(fields.state).unwrap_or(0) as u8);
        (&raw mut (*event)._pad0).write(0);
        (&raw mut (*event)._pad1).write(0);
        (&raw mut (*event).err).write(record.optional(fields.err).unwrap_or(0));
        (&raw mut (*event)._pad2).write(0);
    }
    submit(entry);
    Ok(())
}
