//! Maps, load-time globals, and the ring-buffer discipline shared by all programs.
use crate::record::Record;
use aya_ebpf::{
    Global,
    bindings::{BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP},
    macros::map,
    maps::{LruHashMap, PerCpuArray, RingBuf, ring_buf::RingBufEntry},
};
use tcpretrans_common::{
    ConnectFields, Filter, ListenerKey, Owner, PendingConnect, ResetFields, RetransmitFields,
    SockInfo, SockOffsets, StateFields, SynackFields, TcpOffsets,
};

// Globals overridden by userspace at load time (names in `tcpretrans_common::globals`).
// The defaults keep nothing.
#[unsafe(no_mangle)]
pub static RETRANSMIT_FIELDS: Global<RetransmitFields> = Global::new(RetransmitFields::ABSENT);
#[unsafe(no_mangle)]
pub static STATE_FIELDS: Global<StateFields> = Global::new(StateFields::ABSENT);
#[unsafe(no_mangle)]
pub static SYNACK_FIELDS: Global<SynackFields> = Global::new(SynackFields::ABSENT);
#[unsafe(no_mangle)]
pub static SOCK_OFFSETS: Global<SockOffsets> = Global::new(SockOffsets::UNKNOWN);
#[unsafe(no_mangle)]
pub static TCP_OFFSETS: Global<TcpOffsets> = Global::new(TcpOffsets::UNKNOWN);
#[unsafe(no_mangle)]
pub static RESET_FIELDS: Global<ResetFields> = Global::new(ResetFields::ABSENT);
#[unsafe(no_mangle)]
pub static CONNECT_FIELDS: Global<ConnectFields> = Global::new(ConnectFields::ABSENT);
#[unsafe(no_mangle)]
pub static FILTER: Global<Filter> = Global::new(Filter::KEEP_ALL);
#[unsafe(no_mangle)]
pub static WAKEUP_BYTES: Global<u32> = Global::new(0);

/// All events, in order. Userspace sets the real size at load time.
#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(1 << 22, 0);

/// Events dropped because the ring buffer was full, per CPU.
#[map]
pub static LOST: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// What we know about each socket between events, keyed by its address.
/// Entries go when the socket reaches CLOSE; the LRU bounds what is never
/// closed while we watch.
#[map]
pub static SOCKETS: LruHashMap<u64, SockInfo> = LruHashMap::with_max_entries(65_536, 0);

/// Each CPU's copy of the tracepoint record being handled.
#[map]
pub static RECORDS: PerCpuArray<Record> = PerCpuArray::with_max_entries(1, 0);

/// Owners of listening sockets by (namespace, port): accepted sockets are
/// created in softirq and inherit them.
#[map]
pub static LISTENERS: LruHashMap<ListenerKey, Owner> = LruHashMap::with_max_entries(4096, 0);

/// `connect()` calls between syscall entry and exit, by thread id.
#[map]
pub static CONNECTS: LruHashMap<u32, PendingConnect> = LruHashMap::with_max_entries(4096, 0);

/// Reserves space for one event, counting the event as lost when there is none.
#[inline(always)]
pub fn reserve<T: 'static>() -> Option<RingBufEntry<T>> {
    let entry = EVENTS.reserve::<T>(0);
    if entry.is_none()
        && let Some(lost) = LOST.get_ptr_mut(0)
    {
        // SAFETY: this CPU's slot; these programs do not nest on one CPU.
        unsafe { *lost += 1 };
    }
    entry
}

/// Publishes an event, waking the consumer only when enough data is waiting:
/// a wakeup per event costs several times more than the event itself.
#[inline(always)]
pub fn submit<T: 'static>(entry: RingBufEntry<T>) {
    let pending = EVENTS.query(BPF_RB_AVAIL_DATA.into());
    let flags = if pending >= u64::from(WAKEUP_BYTES.load()) {
        BPF_RB_FORCE_WAKEUP
    } else {
        BPF_RB_NO_WAKEUP
    };
    entry.submit(flags.into());
}
