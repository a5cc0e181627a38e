//! Maps, load-time globals, and the ring-buffer discipline shared by all programs.
use crate::{names::named, record::Record};

use aya_ebpf::{
    bindings::{BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP},
    macros::map,
    maps::{LruHashMap, PerCpuArray, RingBuf, ring_buf::RingBufEntry},
};
use tcpretrans_common::{
    ConnectFields, Filter, ListenerKey, NamespaceLimits, Owner, PendingConnect, ResetFields,
    RetransmitFields, SockInfo, SockOffsets, StateFields, SynackFields, TcpOffsets, globals, hooks,
    lost_slot, namespace_limits, state_nesting, transition_counts,
};

/// A value userspace writes at load time (`EbpfLoader::override_global`,
/// names in `tcpretrans_common::globals`), read in place. It lives in
/// `.rodata`, which aya freezes after writing: the verifier then knows every
/// field as a constant, prunes the branches the configuration rules out
/// (filters not set, members this kernel lacks) and removes their code.
/// `aya_ebpf::Global` copies the whole value on every read, and copies of
/// these structs cost BPF stack; here fields are read through a reference
/// the compiler cannot see through, so it cannot fold reads to the
/// compiled-in default. The defaults keep nothing.
#[repr(transparent)]
pub struct Config<T>(T);

impl<T> Config<T> {
    pub const fn new(value: T) -> Self {
        Self(value)
    }

    #[inline(always)]
    pub fn get(&'static self) -> &'static T {
        core::hint::black_box(&self.0)
    }
}

#[unsafe(no_mangle)]
pub static RETRANSMIT_FIELDS: Config<RetransmitFields> = Config::new(RetransmitFields::ABSENT);
#[unsafe(no_mangle)]
pub static STATE_FIELDS: Config<StateFields> = Config::new(StateFields::ABSENT);
#[unsafe(no_mangle)]
pub static SYNACK_FIELDS: Config<SynackFields> = Config::new(SynackFields::ABSENT);
#[unsafe(no_mangle)]
pub static SOCK_OFFSETS: Config<SockOffsets> = Config::new(SockOffsets::UNKNOWN);
#[unsafe(no_mangle)]
pub static TCP_OFFSETS: Config<TcpOffsets> = Config::new(TcpOffsets::UNKNOWN);
#[unsafe(no_mangle)]
pub static RESET_FIELDS: Config<ResetFields> = Config::new(ResetFields::ABSENT);
#[unsafe(no_mangle)]
pub static CONNECT_FIELDS: Config<ConnectFields> = Config::new(ConnectFields::ABSENT);
#[unsafe(no_mangle)]
pub static FILTER: Config<Filter> = Config::new(Filter::KEEP_ALL);
#[unsafe(no_mangle)]
pub static WAKEUP_BYTES: Config<u32> = Config::new(0);

/// All events, in order. Userspace sets the real size at load time.
#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(1 << 22, 0);

/// Events dropped because the ring buffer was full, per CPU and program
/// (`lost_slot`).
#[map]
pub static LOST: PerCpuArray<u64> = PerCpuArray::with_max_entries(lost_slot::COUNT, 0);

/// Probe reads of a non-NULL address that failed, leaving their field 0,
/// per CPU.
#[map]
pub static FAILED_READS: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// Transitions counted in the kernel, per CPU (`transition_counts`).
#[map]
pub static TRANSITIONS: PerCpuArray<transition_counts::Counts> =
    PerCpuArray::with_max_entries(1, 0);

/// Adds one to this CPU's count of a transition (`transition_counts::slot`),
/// which has a single writer: one program, which the kernel never runs
/// inside itself.
#[inline(always)]
pub fn count_transition(slot: u32) {
    if let Some(counts) = TRANSITIONS.get_ptr_mut(0) {
        let slot = (slot & (transition_counts::SLOTS - 1)) as usize;
        // SAFETY: a valid map value of this CPU; the slot is within it.
        unsafe { (*counts)[slot] += 1 };
    }
}

/// `state_nesting` counters, per CPU.
#[map]
pub static STATE_NESTING: PerCpuArray<u64> = PerCpuArray::with_max_entries(state_nesting::COUNT, 0);

/// The transition the state program took, per CPU and level (see
/// `state_nesting`).
#[map]
pub static STATE_TAKEN: PerCpuArray<Taken> =
    PerCpuArray::with_max_entries(state_nesting::LEVELS, 0);

/// A transition: its socket and its two states. Two words, not one: a BTF
/// program's socket is a typed pointer, which the verifier allows compared
/// and stored but not masked or shifted.
#[repr(C)]
pub struct Taken {
    pub sk: u64,
    /// `old_state << 8 | new_state`.
    pub states: u64,
}

/// Limits read by `namespace_limits`, by network namespace inode.
#[map]
pub static NAMESPACE_LIMITS: LruHashMap<u32, NamespaceLimits> =
    LruHashMap::with_max_entries(namespace_limits::ENTRIES, 0);

/// What we know about each socket between events, keyed by its address.
/// Entries go when the socket reaches CLOSE; the LRU bounds what is never
/// closed while we watch. Userspace sets the size (`--max-sockets`).
#[map]
pub static SOCKETS: LruHashMap<u64, SockInfo> = LruHashMap::with_max_entries(65_536, 0);

/// Each CPU's copy of the tracepoint record being handled (classic
/// tracepoint programs only: they never nest on one CPU).
#[map]
pub static RECORDS: PerCpuArray<Record> = PerCpuArray::with_max_entries(1, 0);

/// Owners of listening sockets by (namespace, port): accepted sockets are
/// created in softirq and inherit them.
#[map]
pub static LISTENERS: LruHashMap<ListenerKey, Owner> = LruHashMap::with_max_entries(4096, 0);

/// `connect()` calls between syscall entry and exit, by thread id.
#[map]
pub static CONNECTS: LruHashMap<u32, PendingConnect> = LruHashMap::with_max_entries(4096, 0);

/// Reserves space for one event, counting the event as lost in the
/// program's `lost_slot` when there is none.
#[inline(always)]
pub fn reserve<T: 'static>(slot: u32) -> Option<RingBufEntry<T>> {
    let entry = EVENTS.reserve::<T>(0);
    if entry.is_none() {
        add_one(&LOST, slot);
    }
    entry
}

/// Adds one to this CPU's counter `slot`, which has a single writer: one
/// program, which the kernel never runs inside itself.
#[inline(always)]
pub fn add_one(counters: &PerCpuArray<u64>, slot: u32) {
    if let Some(counter) = counters.get_ptr_mut(slot) {
        // SAFETY: a valid map value of this CPU.
        unsafe { *counter += 1 };
    }
}

/// Counts a failed probe read. Out of line: the reads are inlined many
/// times over, their failure path once.
#[inline(never)]
pub fn count_failed_read() {
    // Every program adds to the one slot, and BPF's Rust target has no
    // atomic add: a program nested on this CPU that also fails a read inside
    // this add's three instructions would have its count overwritten. Both
    // are rare; a slot per program would thread the program through every read.
    add_one(&FAILED_READS, 0);
}

/// Publishes an event, waking the consumer only when enough data is waiting:
/// a wakeup per event costs several times more than the event itself.
#[inline(always)]
pub fn submit<T: 'static>(entry: RingBufEntry<T>) {
    let pending = EVENTS.query(BPF_RB_AVAIL_DATA.into());
    let flags = if pending >= u64::from(*WAKEUP_BYTES.get()) {
        BPF_RB_FORCE_WAKEUP
    } else {
        BPF_RB_NO_WAKEUP
    };
    entry.submit(flags.into());
}

named!(globals::RETRANSMIT_FIELDS, RETRANSMIT_FIELDS);
named!(globals::STATE_FIELDS, STATE_FIELDS);
named!(globals::SYNACK_FIELDS, SYNACK_FIELDS);
named!(globals::SOCK_OFFSETS, SOCK_OFFSETS);
named!(globals::TCP_OFFSETS, TCP_OFFSETS);
named!(globals::RESET_FIELDS, RESET_FIELDS);
named!(globals::CONNECT_FIELDS, CONNECT_FIELDS);
named!(globals::FILTER, FILTER);
named!(globals::WAKEUP_BYTES, WAKEUP_BYTES);
named!(hooks::maps::EVENTS, EVENTS);
named!(hooks::maps::LOST, LOST);
named!(hooks::maps::FAILED_READS, FAILED_READS);
named!(hooks::maps::TRANSITIONS, TRANSITIONS);
named!(hooks::maps::STATE_NESTING, STATE_NESTING);
named!(hooks::maps::SOCKETS, SOCKETS);
named!(hooks::maps::NAMESPACE_LIMITS, NAMESPACE_LIMITS);
named!(hooks::maps::LISTENERS, LISTENERS);
named!(hooks::maps::CONNECTS, CONNECTS);
named!(hooks::maps::STATE_TAKEN, STATE_TAKEN);
named!(hooks::maps::RECORDS, RECORDS);
