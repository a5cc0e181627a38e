//! What every program starts from: the socket an event is about and its
//! flow, filtered. Classic tracepoints' records are read once and decoded
//! with the field offsets userspace found in the running kernel's tracefs
//! `format` files; raw and BTF tracepoints read the socket's `sock_common`
//! at BTF offsets.
use core::mem::size_of;

use aya_ebpf::{EbpfContext as _, helpers::generated, programs::TracePointContext};
use tcpretrans_common::{
    ABSENT, AF_INET, AF_INET6, Address, EventHeader, Filter, Flow, FlowFields, RECORD_LEN,
    traffic_family,
};

use crate::{
    maps::{RECORDS, SOCK_OFFSETS, TCP_OFFSETS},
    sock::{self, Memory, Netns, Probed},
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

    /// A 16-byte address field (a `__u8[16]`, 2-aligned in every known
    /// layout).
    #[inline(always)]
    fn address(&self, offset: u16) -> Address {
        let at = offset & !1;
        core::array::from_fn(|i| {
            let [a, b] = self.load::<u16>(at + 4 * i as u16).to_ne_bytes();
            let [c, d] = self.load::<u16>(at + 4 * i as u16 + 2).to_ne_bytes();
            u32::from_ne_bytes([a, b, c, d])
        })
    }

    /// The record's flow and the family of its traffic (`traffic_family`):
    /// the same as the socket's, as the kernel copied it when the tracepoint
    /// fired.
    #[inline(always)]
    fn flow(&self, fields: &FlowFields) -> (Flow, u16) {
        let flow = Flow {
            saddr: self.address(fields.saddr_v6),
            daddr: self.address(fields.daddr_v6),
            sport: self.load(fields.sport),
            dport: self.load(fields.dport),
        };
        let family = traffic_family(self.family(fields), &flow.saddr, &flow.daddr);
        (flow, family)
    }
}

/// A tracepoint hit whose socket passed the filters: the prologue of every
/// program, from a classic tracepoint's record or from a raw or BTF
/// tracepoint's socket.
pub struct Hit {
    pub flow: Flow,
    /// The socket the event is about (for SYN-ACKs, the listener).
    pub sk: u64,
    pub netns: Netns,
    /// 4 or 6: the family of its traffic (`traffic_family`).
    version: u8,
}

impl Hit {
    /// Copies a classic tracepoint's record once and keeps it if its socket
    /// passes the filters.
    #[inline(always)]
    pub fn from_record(
        ctx: &TracePointContext,
        fields: &FlowFields,
        filter: &Filter,
    ) -> Result<Option<(Self, &'static Record)>, i64> {
        if fields.skaddr == ABSENT {
            // Not configured by userspace.
            return Ok(None);
        }
        let record = Record::read(ctx)?;
        let (flow, family) = record.flow(fields);
        Ok(
            Self::filtered::<Probed>(flow, family, record.load(fields.skaddr), filter)
                .map(|hit| (hit, record)),
        )
    }

    /// The flow of `flow_sk` (a full or request socket) from its
    /// `sock_common`, for an event about `sk`, if they pass the filters.
    #[inline(always)]
    pub fn from_sock<M: Memory>(flow_sk: u64, sk: u64, filter: &Filter) -> Option<Self> {
        let (flow, family) = sock::flow::<M>(flow_sk, TCP_OFFSETS.get())?;
        Self::filtered::<M>(flow, family, sk, filter)
    }

    /// Family, ports and addresses first (they are at hand), then the
    /// namespace and cgroup (pointer chases).
    #[inline(always)]
    fn filtered<M: Memory>(flow: Flow, family: u16, sk: u64, filter: &Filter) -> Option<Self> {
        if !filter.keeps_family(family) {
            return None;
        }
        let version = family_version(family)?;
        if !filter.keeps_flow(flow.sport, flow.dport, &flow.saddr, &flow.daddr) {
            return None;
        }
        let netns = sock::kept::<M>(sk, SOCK_OFFSETS.get(), filter)?;
        Some(Self {
            flow,
            sk,
            netns,
            version,
        })
    }

    /// The header of an event about this hit's socket (its cgroup is read
    /// here: only for events made).
    #[inline(always)]
    pub fn header(&self, kind: u8, timestamp_ns: u64, skaddr: u64, sock_ino: u64) -> EventHeader {
        EventHeader::new(
            kind,
            self.version,
            self.netns.inum,
            timestamp_ns,
            skaddr,
            sock_ino,
            sock::cgroup_id(self.sk, SOCK_OFFSETS.get(), TCP_OFFSETS.get()),
        )
    }
}

/// The event's family byte: 4 or 6, or `None` for other families.
#[inline(always)]
pub fn family_version(family: u16) -> Option<u8> {
    match family {
        AF_INET => Some(4),
        AF_INET6 => Some(6),
        _ => None,
    }
}
