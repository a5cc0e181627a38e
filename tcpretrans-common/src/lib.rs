//! Records shared by the kernel programs and userspace.
//!
//! Everything here crosses the user/kernel boundary as raw bytes: the load-time
//! configuration (the globals written into the programs' read-only data) and the
//! events in the ring buffer. Layouts are `#[repr(C)]` with explicit padding and
//! their sizes are asserted, so both sides agree byte for byte.
#![no_std]

/// Sentinel for "this field/member does not exist on the running kernel".
pub const ABSENT: u16 = u16::MAX;

/// Address families as the kernel numbers them.
pub const AF_INET: u16 = 2;
pub const AF_INET6: u16 = 10;

/// Bytes of a tracepoint record the kernel side copies in one read. Every field
/// offset handed in must satisfy `offset + size <= RECORD_LEN`.
pub const RECORD_LEN: usize = 128;

/// TCP states, numbered as in the kernel's `include/net/tcp_states.h`.
pub mod tcp_state {
    pub const ESTABLISHED: u8 = 1;
    pub const SYN_SENT: u8 = 2;
    pub const SYN_RECV: u8 = 3;
    pub const FIN_WAIT1: u8 = 4;
    pub const FIN_WAIT2: u8 = 5;
    pub const TIME_WAIT: u8 = 6;
    pub const CLOSE: u8 = 7;
    pub const CLOSE_WAIT: u8 = 8;
    pub const LAST_ACK: u8 = 9;
    pub const LISTEN: u8 = 10;
    pub const CLOSING: u8 = 11;
    pub const NEW_SYN_RECV: u8 = 12;
    /// One past the highest state number.
    pub const COUNT: u8 = 13;
}

/// Offsets of the fields every TCP tracepoint record shares, read from the
/// tracefs `format` file of the running kernel. `ABSENT` when missing.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlowFields {
    pub skaddr: u16,
    pub sport: u16,
    pub dport: u16,
    pub family: u16,
    pub saddr_v6: u16,
    pub daddr_v6: u16,
}

/// Layout of `tcp:tcp_retransmit_skb`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetransmitFields {
    pub flow: FlowFields,
    /// `int state`: since 4.20.
    pub state: u16,
    /// `int err`: since 6.17, when the tracepoint also fires for failed attempts.
    pub err: u16,
}

/// Layout of `sock:inet_sock_set_state`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StateFields {
    pub flow: FlowFields,
    pub oldstate: u16,
    pub newstate: u16,
    pub protocol: u16,
    pub _pad: u16,
}

/// Byte offsets of kernel struct members, resolved from the running kernel's
/// BTF by userspace. `ABSENT` when BTF or the member is missing.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SockOffsets {
    /// `struct sock` → `__sk_common.skc_net.net` (a `struct net *`).
    pub sk_net: u16,
    /// `struct net` → `ns.inum`.
    pub net_inum: u16,
}

impl SockOffsets {
    pub const UNKNOWN: Self = Self {
        sk_net: ABSENT,
        net_inum: ABSENT,
    };

    pub const fn has_netns(&self) -> bool {
        self.sk_net != ABSENT && self.net_inum != ABSENT
    }
}

/// `Filter::flags` bits.
pub mod filter_flags {
    /// Emit state transition events (otherwise they only update socket tracking).
    pub const STATE_EVENTS: u32 = 1;
}

/// What the kernel side keeps; everything else is dropped before it costs a
/// ring-buffer reservation.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Filter {
    /// Network namespace inode; 0 keeps all.
    pub netns: u32,
    /// `AF_INET` or `AF_INET6`; 0 keeps both.
    pub family: u16,
    /// Bit `1 << state` set for each state of interest: a transition is kept
    /// when it enters or leaves one of them. Only applies to state events.
    pub state_mask: u16,
    pub flags: u32,
}

/// Names of the kernel programs' load-time globals, and their types.
pub mod globals {
    /// `RetransmitFields`.
    pub const RETRANSMIT_FIELDS: &str = "RETRANSMIT_FIELDS";
    /// `StateFields`.
    pub const STATE_FIELDS: &str = "STATE_FIELDS";
    /// `SockOffsets`.
    pub const SOCK_OFFSETS: &str = "SOCK_OFFSETS";
    /// `Filter`.
    pub const FILTER: &str = "FILTER";
    /// `u32`: force a consumer wakeup once this many bytes wait in the ring
    /// buffer; below it events are submitted without a wakeup and userspace
    /// drains on a short timer.
    pub const WAKEUP_BYTES: &str = "WAKEUP_BYTES";
}

impl FlowFields {
    pub const ABSENT: Self = Self {
        skaddr: ABSENT,
        sport: ABSENT,
        dport: ABSENT,
        family: ABSENT,
        saddr_v6: ABSENT,
        daddr_v6: ABSENT,
    };
}

impl RetransmitFields {
    /// Until userspace configures the programs, every event is dropped at its
    /// first field read.
    pub const ABSENT: Self = Self {
        flow: FlowFields::ABSENT,
        state: ABSENT,
        err: ABSENT,
    };
}

impl StateFields {
    pub const ABSENT: Self = Self {
        flow: FlowFields::ABSENT,
        oldstate: ABSENT,
        newstate: ABSENT,
        protocol: ABSENT,
        _pad: 0,
    };
}

impl Filter {
    pub const KEEP_ALL: Self = Self {
        netns: 0,
        family: 0,
        state_mask: 0,
        flags: 0,
    };

    #[inline(always)]
    pub const fn keeps_family(&self, family: u16) -> bool {
        self.family == 0 || self.family == family
    }

    /// Whether a transition is reported (socket tracking sees all of them).
    #[inline(always)]
    pub const fn keeps_transition(&self, old_state: u8, new_state: u8) -> bool {
        if self.flags & filter_flags::STATE_EVENTS == 0 {
            return false;
        }
        let touched = 1 << (old_state & 15) | 1 << (new_state & 15);
        self.state_mask == 0 || self.state_mask & touched != 0
    }
}

/// Event kinds, the first byte of every ring-buffer record.
pub mod event_kind {
    pub const RETRANSMIT: u8 = 1;
    pub const STATE: u8 = 2;
}

/// Common head of every ring-buffer record.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EventHeader {
    pub kind: u8,
    /// 4 or 6.
    pub family: u8,
    pub _pad: u16,
    /// Network namespace inode of the socket; 0 when unknown.
    pub netns: u32,
    /// `bpf_ktime_get_ns()`: CLOCK_MONOTONIC.
    pub timestamp_ns: u64,
    pub skaddr: u64,
}

/// A connection's addresses. For IPv4 sockets the addresses are IPv4-mapped
/// IPv6 (`::ffff:a.b.c.d`), as the kernel stores them in the tracepoint record.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Flow {
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
    /// Host byte order.
    pub sport: u16,
    pub dport: u16,
}

/// The process owning a socket, as last seen touching it in process context.
/// 8-aligned so that the kernel side copies and clears it with word stores.
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Owner {
    /// Thread-group id; 0 when unknown.
    pub pid: u32,
    pub uid: u32,
    pub comm: [u8; 16],
}

impl Owner {
    pub const UNKNOWN: Self = Self {
        pid: 0,
        uid: 0,
        comm: [0; 16],
    };
}

/// One `tcp:tcp_retransmit_skb` hit.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetransmitEvent {
    pub header: EventHeader,
    pub owner: Owner,
    pub flow: Flow,
    /// TCP state; 0 when the kernel's record has no state.
    pub state: u8,
    pub _pad0: u8,
    pub _pad1: u16,
    /// 0, or the negative errno of a failed attempt (6.17+).
    pub err: i32,
    pub _pad2: u32,
}

/// `prev_state_ns` when the socket was first seen in this state.
pub const DURATION_UNKNOWN: u64 = u64::MAX;

/// One TCP `sock:inet_sock_set_state` transition.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StateEvent {
    pub header: EventHeader,
    pub owner: Owner,
    pub flow: Flow,
    pub old_state: u8,
    pub new_state: u8,
    pub _pad: u16,
    /// Time spent in `old_state`, or `DURATION_UNKNOWN`.
    pub prev_state_ns: u64,
}

/// Per-socket state the kernel side keeps between events, keyed by socket address.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SockInfo {
    /// When the socket entered its current state; 0 when not seen.
    pub state_since_ns: u64,
    pub owner: Owner,
}

const _: () = {
    use core::mem::{align_of, size_of};
    assert!(size_of::<FlowFields>() == 12);
    assert!(size_of::<RetransmitFields>() == 16);
    assert!(size_of::<StateFields>() == 20);
    assert!(size_of::<SockOffsets>() == 4);
    assert!(size_of::<Filter>() == 12);
    assert!(size_of::<EventHeader>() == 24);
    assert!(size_of::<Flow>() == 36);
    assert!(size_of::<Owner>() == 24);
    assert!(size_of::<RetransmitEvent>() == 96);
    assert!(size_of::<StateEvent>() == 96);
    assert!(align_of::<StateEvent>() == 8);
    assert!(size_of::<SockInfo>() == 32);
};

#[cfg(feature = "user")]
mod pod {
    use super::*;

    // SAFETY: all are `#[repr(C)]`, made only of integers and byte arrays, with
    // every padding byte spelled out as a field.
    unsafe impl aya::Pod for RetransmitFields {}
    unsafe impl aya::Pod for StateFields {}
    unsafe impl aya::Pod for SockOffsets {}
    unsafe impl aya::Pod for Filter {}
    unsafe impl aya::Pod for RetransmitEvent {}
    unsafe impl aya::Pod for StateEvent {}
    unsafe impl aya::Pod for SockInfo {}
}
