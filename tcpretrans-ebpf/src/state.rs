//! `sock:inet_sock_set_state` for TCP: tracks each socket's time in its state
//! and its owner, and reports the transitions userspace asked for.
use aya_ebpf::{
    EbpfContext,
    macros::{btf_tracepoint, raw_tracepoint, tracepoint},
    programs::{BtfTracePointContext, RawTracePointContext, TracePointContext},
};
use tcpretrans_common::{
    ConnectErrorEvent, DURATION_UNKNOWN, ListenerKey, Owner, SockInfo, StateEvent, event_kind,
    filter_flags, hooks, lost_slot, reset_direction, state_nesting,
    tcp_state::{
        CLOSE, CLOSE_WAIT, CLOSING, ESTABLISHED, FIN_WAIT1, FIN_WAIT2, LAST_ACK, LISTEN, SYN_RECV,
        SYN_SENT,
    },
    tells_more, transition_counts,
};

use crate::{
    event::{self, fill},
    maps::{
        FILTER, LISTENERS, SOCK_OFFSETS, SOCKETS, STATE_FIELDS, STATE_NESTING, STATE_TAKEN,
        TCP_OFFSETS, add_one, count_transition, reserve, submit,
    },
    names::named,
    owner::{self, write_owner},
    record::Hit,
    sock::{self, IPPROTO_TCP, Memory, Probed, Typed},
};

/// The classic tracepoint: its record (used when BTF lacks what the raw
/// one needs).
#[tracepoint]
pub fn inet_sock_set_state(ctx: TracePointContext) -> u32 {
    match try_inet_sock_set_state(&ctx) {
        Ok(()) | Err(_) => 0,
    }
}

fn try_inet_sock_set_state(ctx: &TracePointContext) -> Result<(), i64> {
    let fields = STATE_FIELDS.get();
    let Some((hit, record)) = Hit::from_record(ctx, &fields.flow, FILTER.get())? else {
        return Ok(());
    };
    if record.load::<u16>(fields.protocol) != IPPROTO_TCP {
        return Ok(());
    }
    transition::<Probed>(
        &hit,
        record.load::<i32>(fields.oldstate) as u8,
        record.load::<i32>(fields.newstate) as u8,
        lost_slot::STATE,
    )
}

/// The raw tracepoint: the flow read from the socket with probe reads.
#[raw_tracepoint(tracepoint = "inet_sock_set_state")]
pub fn inet_sock_set_state_raw(ctx: RawTracePointContext) -> u32 {
    take::<Probed>(&Arguments::of(&ctx));
    0
}

/// The second program on the tracepoint, attached after the state program
/// (raw or BTF), for the transitions the kernel skipped for it: those it did
/// not note. They are handled with the same code (its own copy: a tail call
/// into the interrupted program would share its private stack and corrupt
/// it), with probe reads: it handles few.
#[raw_tracepoint(tracepoint = "inet_sock_set_state")]
pub fn inet_sock_set_state_raw_nested(ctx: RawTracePointContext) -> u32 {
    recover(&Arguments::of(&ctx));
    0
}

/// The BTF tracepoint: the same as the raw one, but the socket pointer is
/// typed, so its members are plain loads instead of probe-read calls.
#[btf_tracepoint(function = "inet_sock_set_state")]
pub fn inet_sock_set_state_btf(ctx: BtfTracePointContext) -> u32 {
    take::<Typed>(&Arguments::of(&ctx));
    0
}

/// `TP_PROTO(const struct sock *sk, const int oldstate, const int
/// newstate)`, as raw and BTF tracepoints pass it: an array of words.
struct Arguments {
    sk: u64,
    old_state: u8,
    new_state: u8,
    /// Where the array lies: on the stack of the context running the
    /// tracepoint.
    at: u64,
}

impl Arguments {
    #[inline(always)]
    fn of(ctx: &impl EbpfContext) -> Self {
        let words = ctx.as_ptr() as *const u64;
        // SAFETY: the tracepoint's three arguments; a BTF tracepoint's
        // first is the typed socket pointer.
        let word = |i| unsafe { words.add(i).read() };
        Self {
            sk: word(0),
            old_state: word(1) as u8,
            new_state: word(2) as u8,
            at: words as u64,
        }
    }

    #[inline(always)]
    fn states(&self) -> u64 {
        u64::from(self.old_state) << 8 | u64::from(self.new_state)
    }
}

/// The state program: notes the transition, then handles it.
#[inline(always)]
fn take<M: Memory>(args: &Arguments) {
    note_taken::<M>(args);
    let _ = handle::<M>(args, lost_slot::STATE);
}

/// The nested program: handles the transition if the state program did not
/// note it.
#[inline(always)]
fn recover(args: &Arguments) {
    if !clear_taken(args) {
        add_one(&STATE_NESTING, state_nesting::RECOVERED);
        let _ = handle::<Probed>(args, lost_slot::STATE_NESTED);
    }
}

/// Notes the transition the state program is taking, first thing, in its
/// level's slot. The level: whether the tracepoint's arguments are on the
/// current task's kernel stack (a softirq runs on the CPU's IRQ stack).
#[inline(always)]
fn note_taken<M: Memory>(args: &Arguments) {
    let tcp = TCP_OFFSETS.get();
    let at_task_level = !tcp.task_stack.is_known() || {
        let stack: u64 = M::read(M::current_task(), tcp.task_stack);
        // Compared, never subtracted: the verifier refuses arithmetic on
        // the context pointer. Opaque bounds keep LLVM from subtracting.
        let start = core::hint::black_box(stack);
        let end = core::hint::black_box(stack.wrapping_add(1 << (tcp.stack_shift & 63)));
        args.at >= start && args.at < end
    };
    if let Some(taken) = STATE_TAKEN.get_ptr_mut(u32::from(!at_task_level)) {
        // SAFETY: this CPU's slot of this level; runs at one level never
        // overlap.
        unsafe {
            (*taken).sk = args.sk;
            (*taken).states = args.states();
        }
    }
}

/// Clears the note of this transition, if the state program took it.
#[inline(always)]
fn clear_taken(args: &Arguments) -> bool {
    (0..state_nesting::LEVELS).any(|level| {
        STATE_TAKEN
            .get_ptr_mut(level)
            // SAFETY: as in `note_taken`.
            .is_some_and(|taken| unsafe {
                let noted = (*taken).sk == args.sk && (*taken).states == args.states();
                if noted {
                    (*taken).sk = 0;
                }
                noted
            })
    })
}

#[inline(always)]
fn handle<M: Memory>(args: &Arguments, lost_slot: u32) -> Result<(), i64> {
    let sk = args.sk;
    // Not MPTCP's sockets either: each of its subflows is a TCP socket.
    if sock::protocol::<M>(sk, TCP_OFFSETS.get()) != IPPROTO_TCP {
        return Ok(());
    }
    let Some(hit) = Hit::from_sock::<M>(sk, sk, FILTER.get()) else {
        return Ok(());
    };
    transition::<M>(&hit, args.old_state, args.new_state, lost_slot)
}

/// Tracks the socket and reports the transition; `lost_slot` counts the
/// events the ring buffer has no room for.
#[inline(always)]
fn transition<M: Memory>(
    hit: &Hit,
    old_state: u8,
    new_state: u8,
    lost_slot: u32,
) -> Result<(), i64> {
    let (filter, skaddr) = (FILTER.get(), hit.sk);
    // SAFETY: helper without preconditions.
    let now = event::now();

    let lport = hit.flow.sport;
    let listener = ListenerKey {
        netns: hit.netns.inum,
        port: lport,
        _pad: 0,
    };
    // A kernel that counts transitions serves metrics without connection
    // labels: it needs no owner and no time in state.
    let counting = filter.flags & filter_flags::COUNT_TRANSITIONS != 0;
    let tracked = if counting {
        Tracked::first_seen(0, Owner::UNKNOWN)
    } else {
        track(skaddr, old_state, new_state, now, &listener)
    };
    let tcp = TCP_OFFSETS.get();
    let error = if new_state == CLOSE {
        M::read::<i32>(skaddr, tcp.sk_err)
    } else {
        0
    };
    // Socket tracking above sees every transition; what follows is output.
    if !filter.keeps_owner(tracked.owner.pid) {
        return Ok(());
    }
    // A non-blocking connect() failed: reported in every mode, like the
    // blocking ones the connect program reports.
    if old_state == SYN_SENT && error != 0 && sock::connects_without_waiting(skaddr, tcp) {
        report_connect_error(hit, error, Some(&tracked.owner), now, lost_slot);
    }
    if !filter.keeps_transition(old_state, new_state) {
        return Ok(());
    }
    // Counted here, or sent to be counted as userspace shows it (a
    // connection handed to a timewait socket goes to TIME_WAIT).
    if counting && !tells_more(old_state, new_state, error) {
        let table = u32::from(lost_slot == lost_slot::STATE_NESTED);
        count_transition(transition_counts::slot(table, old_state, new_state));
        return Ok(());
    }
    // Whether a timewait socket took the connection over (the tracepoint
    // itself never reports TIME_WAIT).
    let timewait = if new_state == CLOSE {
        if old_state == FIN_WAIT2 || old_state == CLOSING {
            sock::timewait_substate::<M>(
                skaddr,
                hit.netns.net,
                lport,
                tcp,
                SOCK_OFFSETS.get().sk_net,
            )
        } else {
            0
        }
    } else {
        0
    };
    let Some(mut entry) = reserve::<StateEvent>(lost_slot) else {
        return Ok(());
    };
    let event = entry.as_mut_ptr();
    let (owner, sock_ino, orphan) = if counting {
        (None, 0, 0)
    } else {
        let (owner, sock_ino) = sock::owner_or_inode(skaddr, Some(&tracked.owner), tcp);
        (owner, sock_ino, sock::orphan::<M>(skaddr, tcp))
    };
    // SAFETY: `event` points at a reserved slot of the event's size.
    unsafe {
        fill!(event: StateEvent {
            header = hit.header(event_kind::STATE, now, skaddr, sock_ino),
            flow = hit.flow,
            owner => |at| write_owner(at, owner),
            prev_state_ns = tracked.prev_state_ns,
            opened_ns = tracked.opened_ns,
            old_state = old_state,
            new_state = new_state,
            timewait = timewait,
            reset = tracked.reset,
            error = error,
            orphan = orphan,
            _pad0 = 0,
            _pad1 = 0,
        });
    }
    submit(entry);
    Ok(())
}

fn report_connect_error(hit: &Hit, errno: i32, owner: Option<&Owner>, now: u64, lost_slot: u32) {
    let Some(mut entry) = reserve::<ConnectErrorEvent>(lost_slot) else {
        return;
    };
    let event = entry.as_mut_ptr();
    // SAFETY: `event` points at a reserved slot of the event's size.
    unsafe {
        fill!(event: ConnectErrorEvent {
            header = hit.header(event_kind::CONNECT_ERROR, now, hit.sk, 0),
            flow = hit.flow,
            owner => |at| write_owner(at, owner),
            errno = errno,
        });
    }
    submit(entry);
}

/// What the socket map knew about a socket at a transition.
struct Tracked {
    /// Time in the old state, or `DURATION_UNKNOWN`.
    prev_state_ns: u64,
    /// When the socket's first transition was seen, or 0.
    opened_ns: u64,
    /// Pid 0 when unknown. Not an `Option`: a `None`'s undefined bytes let
    /// LLVM spill stray registers, which the verifier rejects.
    owner: Owner,
    /// A `reset_direction`.
    reset: u8,
}

impl Tracked {
    /// A socket the map had no entry for.
    #[inline(always)]
    const fn first_seen(opened_ns: u64, owner: Owner) -> Self {
        Self {
            prev_state_ns: DURATION_UNKNOWN,
            opened_ns,
            owner,
            reset: reset_direction::NONE,
        }
    }
}

/// Updates the socket's entry. The entry goes away when the socket reaches
/// CLOSE (a socket never seen has none to remove).
#[inline(always)]
fn track(skaddr: u64, old_state: u8, new_state: u8, now: u64, listener: &ListenerKey) -> Tracked {
    let listening = track_listener(old_state, new_state, listener);
    // Asked only where a transition names an owner: reading the current task
    // is among the dearest work of a transition.
    let caller = || listening.or_else(|| new_owner(old_state, new_state, listener));
    // A socket's first transition: not looked up (an entry at its address
    // is a dead socket's whose CLOSE went unseen, and is overwritten).
    let born = matches!(
        (old_state, new_state),
        (CLOSE, SYN_SENT | LISTEN) | (LISTEN, SYN_RECV)
    );
    let known = if born {
        None
    } else {
        SOCKETS.get_ptr_mut(skaddr)
    };
    match known {
        Some(info) => {
            // SAFETY: valid map value pointer; racing updates of one socket's
            // entry are serialized by the socket lock in the kernel.
            let info = unsafe { &mut *info };
            let since = core::mem::replace(&mut info.state_since_ns, now);
            // The last process to act on the socket owns it: a prefork
            // worker closing what its master's listener made.
            if let Some(owner) = caller() {
                info.owner = owner;
            }
            let tracked = Tracked {
                prev_state_ns: if since == 0 {
                    DURATION_UNKNOWN
                } else {
                    now.wrapping_sub(since)
                },
                opened_ns: info.opened_ns,
                owner: owner::copied(&info.owner),
                reset: info.reset,
            };
            if new_state == CLOSE {
                let _ = SOCKETS.remove(skaddr);
            }
            tracked
        }
        None => {
            let owner = caller().unwrap_or(Owner::UNKNOWN);
            let opened_ns = if born { now } else { 0 };
            if new_state != CLOSE {
                let _ = SOCKETS.insert(skaddr, SockInfo::new(now, opened_ns, owner), 0);
            }
            Tracked::first_seen(opened_ns, owner)
        }
    }
}

/// Remembers listening sockets' owners by (namespace, port) while they
/// listen: accepted sockets are created in softirq and inherit them. The
/// owner of a socket starting to listen, which is the caller.
#[inline(always)]
fn track_listener(old_state: u8, new_state: u8, listener: &ListenerKey) -> Option<Owner> {
    match (old_state, new_state) {
        (CLOSE, LISTEN) => {
            let owner = owner::current();
            let _ = LISTENERS.insert(listener, owner, 0);
            Some(owner)
        }
        (LISTEN, CLOSE) => {
            let _ = LISTENERS.remove(listener);
            None
        }
        _ => None,
    }
}

/// The owner a transition reveals: the calling process for the transitions
/// only a system call on the socket makes (connect, close, shutdown), and
/// the listener's owner for an accepted socket being created (in softirq,
/// where the current task is whoever was interrupted; `accept()` names the
/// owner from then on).
#[inline(always)]
fn new_owner(old_state: u8, new_state: u8, listener: &ListenerKey) -> Option<Owner> {
    match (old_state, new_state) {
        // SAFETY: the owner is copied out at once.
        (LISTEN, SYN_RECV) => unsafe { LISTENERS.get(listener) }.copied(),
        (CLOSE, SYN_SENT) | (ESTABLISHED, FIN_WAIT1) | (CLOSE_WAIT, LAST_ACK) => {
            Some(owner::current())
        }
        _ => None,
    }
}

named!(hooks::STATE.classic, inet_sock_set_state);
named!(hooks::STATE.raw.unwrap(), inet_sock_set_state_raw);
named!(hooks::STATE.nested.unwrap(), inet_sock_set_state_raw_nested);
named!(hooks::STATE.btf.unwrap(), inet_sock_set_state_btf);
