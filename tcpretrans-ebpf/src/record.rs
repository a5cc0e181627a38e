//! Tracepoint records, read once and decoded with the field offsets that
//! userspace found in the running kernel's tracefs `format` files.
use core::mem::size_of;

use aya_ebpf::{EbpfContext as _, helpers::generated, programs::TracePointContext};
use tcpretrans_common::{
    ABSENT, AF_INET, AF_INET6, EventHeader, Filter, Flow, FlowFields, RECORD_LEN,
};

use crate::{
    maps::{RECORDS, SOCK_OFFSETS},
    sock::{self, Netns},
};

/// Room for a 16-byte address at any offset below `RECORD_LEN`, 8-aligned so
/// that naturally aligned fields load in one instruction.
#[repr(C, align(8))]
pub struct Record([u8; RECORD_LEN + 16]);

impl Record {
    /// Copies the record with a single kernel read into this CPU's scratch
    /// slot: it is too big for the BPF stack next to an event's work, and a
    /// tracepoint program never runs nested on one CPU (`bpf_prog_active`).
    #[inline(always)]
    fn read(ctx: &TracePointContext) -> Result<&'static Self, i64> {
        let slot = RECORDS.get_ptr_mut(0).ok_or(0i64)?;
        // SAFETY: tracepoint records sit in a per-CPU buffer of several pages
        // and the helper fails safely anyway; on success it filled the slot.
        unsafe {
            let ret = generated::bpf_probe_read_kernel(
                slot.cast(),
                size_of::<Self>() as u32,
                ctx.as_ptr(),
            );
            if ret != 0 {
                return Err(ret);
            }
            Ok(&*slot)
        }
    }

    /// The `T` at `offset`. Trace event records are C structs, so fields are
    /// naturally aligned (userspace checked); masking keeps the access
    /// aligned and inside the buffer for the verifier.
    #[inline(always)]
    pub fn load<T: Copy>(&self, offset: u16) -> T {
        let at = usize::from(offset) & (RECORD_LEN - 1) & !(size_of::<T>() - 1);
        // SAFETY: `at + size_of::<T>() <= RECORD_LEN + 8` and `at` is a
        // multiple of `T`'s size (≤ 8) in an 8-aligned buffer.
        unsafe { self.0.as_ptr().add(at).cast::<T>().read() }
    }

    /// A field that older kernels' layouts lack.
    #[inline(always)]
    pub fn optional<T: Copy>(&self, offset: u16) -> Option<T> {
        (offset != ABSENT).then(|| self.load(offset))
    }

    /// `AF_INET` or `AF_INET6`. Records without a `family` field (before
    /// 5.12) hold IPv4 flows as IPv4-mapped IPv6 addresses.
    #[inline(always)]
    fn family(&self, fields: &FlowFields) -> u16 {
        match self.optional(fields.family) {
            Some(family) => family,
            None => {
                let at = fields.saddr_v6 & !1;
                let mapped_prefix = (0..5).all(|i| self.load::<u16>(at + 2 * i) == 0)
                    && self.load::<u16>(at + 10) == 0xffff;
                if mapped_prefix { AF_INET } else { AF_INET6 }
            }
        }
    }

    /// A 16-byte address field as 8 words in memory order.
    #[inline(always)]
    fn words(&self, offset: u16) -> [u16; 8] {
        let at = offset & !1;
        core::array::from_fn(|i| self.load(at + 2 * i as u16))
    }

    /// Copies a 16-byte address field (a `__u8[16]`, 2-aligned in every known
    /// layout) straight into an event.
    #[inline(always)]
    fn copy_addr(&self, offset: u16, dst: &mut [u8; 16]) {
        let at = offset & !1;
        for i in 0..8 {
            let word: u16 = self.load(at + 2 * i);
            dst[usize::from(2 * i)..usize::from(2 * i + 2)].copy_from_slice(&word.to_ne_bytes());
        }
    }

    /// Reads the record and keeps it if its socket passes the family and
    /// namespace filters: the prologue of every program.
    #[inline(always)]
    pub fn filtered(
        ctx: &TracePointContext,
        fields: &FlowFields,
        filter: &Filter,
    ) -> Result<Option<Hit>, i64> {
        if fields.skaddr == ABSENT {
            // Not configured by userspace.
            return Ok(None);
        }
        let record = Self::read(ctx)?;
        let family = record.family(fields);
        if !filter.keeps_family(family) {
            return Ok(None);
        }
        let Some(version) = family_version(family) else {
            return Ok(None);
        };
        if !filter.keeps_ports(record.load(fields.sport), record.load(fields.dport))
            || (filter.filters_addresses()
                && !(filter.laddr.contains(&record.words(fields.saddr_v6))
                    && filter.raddr.contains(&record.words(fields.daddr_v6))))
        {
            return Ok(None);
        }
        let sk: u64 = record.load(fields.skaddr);
        let Some(netns) = sock::kept(sk, SOCK_OFFSETS.get(), filter) else {
            return Ok(None);
        };
        Ok(Some(Hit {
            record,
            fields: *fields,
            sk,
            netns,
            version,
        }))
    }
}

/// A tracepoint hit whose socket passed the filters.
pub struct Hit {
    pub record: &'static Record,
    fields: FlowFields,
    /// The record's `skaddr`.
    pub sk: u64,
    pub netns: Netns,
    /// 4 or 6.
    version: u8,
}

impl Hit {
    /// Fills the header and flow every event starts with.
    ///
    /// # Safety
    ///
    /// `head` and `flow` point into a reserved ring-buffer slot.
    #[inline(always)]
    pub unsafe fn write_head(
        &self,
        kind: u8,
        timestamp_ns: u64,
        skaddr: u64,
        sock_ino: u64,
        head: *mut EventHeader,
        flow: *mut Flow,
    ) {
        // SAFETY: per the contract.
        unsafe {
            head.write(EventHeader {
                kind,
                family: self.version,
                _pad: 0,
                netns: self.netns.inum,
                timestamp_ns,
                skaddr,
                sock_ino,
            });
            let flow = &mut *flow;
            self.record.copy_addr(self.fields.saddr_v6, &mut flow.saddr);
            self.record.copy_addr(self.fields.daddr_v6, &mut flow.daddr);
            flow.sport = self.record.load(self.fields.sport);
            flow.dport = self.record.load(self.fields.dport);
        }
    }
}

/// The event's family byte: 4 or 6, or `None` for other families.
#[inline(always)]
fn family_version(family: u16) -> Option<u8> {
    match family {
        AF_INET => Some(4),
        AF_INET6 => Some(6),
        _ => None,
    }
}
