//! Loads the kernel programs with this kernel's layouts and the user's
//! filters, and attaches them.
use std::{
    collections::HashMap as StdHashMap,
    fs, io,
    os::fd::{AsFd as _, AsRawFd as _},
    path::{Path, PathBuf},
    thread,
};

use aya::{
    Ebpf, EbpfError,
    maps::{HashMap, MapData, MapError, PerCpuArray, RingBuf},
    programs::{
        Program, ProgramError, RawTracePoint, RawTracePointRunOptions, TestRun as _,
        raw_trace_point::RawTracePointLink, tp_btf::BtfTracePointLink, trace_point::TracePointLink,
    },
};
use tcpretrans_common::{
    ConnectFields, Filter, ListenerKey, NamespaceLimits, Owner, PendingConnect, ResetFields,
    RetransmitFields, SockInfo, SockOffsets, StateFields, SynackFields, TcpOffsets, filter_flags,
    globals,
    hooks::{self, Hook, maps},
    lost_slot, namespace_limits, state_nesting, transition_counts,
};
use thiserror::Error;

use crate::{aya_shims, memory::NoRoom};

/// The kernel object built from tcpretrans-ebpf (empty when built with `AYA_BUILD_SKIP=1`).
pub(crate) static OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/tcpretrans"));

/// The kind of program to prefer for `hook`: the cheapest the object has.
/// BTF and raw tracepoints cost less than classic ones and are guarded
/// against recursion per program, where a classic tracepoint program is
/// skipped whenever any other one runs on its CPU (a softirq interrupting
/// it); they need BTF to read the socket. A BTF tracepoint reads the members
/// of `struct sock` with plain loads instead of probe-read calls: the state
/// hook, which runs on every transition of the host, has one. System calls
/// have no raw tracepoint of their own.
fn best(hook: &Hook) -> Via {
    match (hook.btf, hook.raw) {
        (Some(_), _) => Via::Btf,
        (None, Some(_)) => Via::Raw,
        (None, None) => Via::Classic,
    }
}

/// The hook's programs when it runs on kind `via`, each with its own kind:
/// the state hook's raw and BTF programs come with the program that handles
/// the transitions the kernel skips for them (see `state_nesting`). A raw
/// one for both: it handles so few that probe reads cost nothing, and it
/// verifies in a third of a BTF program's time.
fn programs(hook: &Hook, via: Via) -> Vec<(&'static str, Via)> {
    let main = match via {
        Via::Classic => Some(hook.classic),
        Via::Raw => hook.raw,
        Via::Btf => hook.btf,
    };
    let nested = hook.nested.filter(|_| via != Via::Classic);
    main.map(|p| (p, via))
        .into_iter()
        .chain(nested.map(|p| (p, Via::Raw)))
        .collect()
}

/// The kinds of program, cheapest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Via {
    /// A BTF tracepoint (`tp_btf`): a typed socket pointer.
    Btf,
    /// A raw tracepoint: the socket probe-read at BTF offsets.
    Raw,
    /// A classic tracepoint: its record.
    Classic,
}

#[derive(Debug, Error)]
pub enum LoadError {
    #[error(
        "this tcpretrans binary was built without its eBPF programs (AYA_BUILD_SKIP); \
         rebuild it after `cargo xtask setup` has installed bpf-linker"
    )]
    NoObject,
    #[error(
        "permission denied loading eBPF programs: run as root, or with CAP_BPF and CAP_PERFMON"
    )]
    Permission,
    #[error("loading the eBPF object failed: {0}")]
    Object(#[source] EbpfError),
    #[error("program {program} is missing from the eBPF object")]
    MissingProgram { program: String },
    #[error("loading program {program} into the kernel failed: {source}")]
    Program {
        program: String,
        source: ProgramError,
    },
    #[error("attaching to tracepoint {category}:{name} failed: {source}")]
    Attach {
        category: &'static str,
        name: &'static str,
        source: ProgramError,
    },
    #[error(
        "cannot create the {bytes} ring buffer the kernel side queues events in: {source}; \
         try a smaller --ring-size, or raise this cgroup's memory limit"
    )]
    RingBuffer { bytes: Bytes, source: io::Error },
    #[error(
        "this kernel ({kernel}) has no BPF ring buffer, which tcpretrans needs: \
         it runs on Linux 5.8 or later (or a distribution kernel with the ring buffer backported)"
    )]
    NoRingBuffer { kernel: String },
    #[error(
        "cannot create the kernel side's socket map ({entries} entries): {source}; \
         try a smaller --max-sockets, or raise this cgroup's memory limit"
    )]
    SocketMap { entries: u32, source: io::Error },
    #[error(transparent)]
    Memory(#[from] NoRoom),
    #[error("cannot create the kernel side's map {map}: {source}")]
    CreateMap { map: String, source: io::Error },
    #[error("map {map} is missing from the eBPF object")]
    MissingMap { map: &'static str },
    #[error("map {map}: {source}")]
    Map { map: &'static str, source: MapError },
}

/// A power-of-two size, said as people write it: `64 KiB`, `1 GiB`.
#[derive(Debug, Clone, Copy)]
pub struct Bytes(pub u32);

impl std::fmt::Display for Bytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = self.0;
        match n.trailing_zeros() {
            30.. => write!(f, "{} GiB", n >> 30),
            20.. => write!(f, "{} MiB", n >> 20),
            10.. => write!(f, "{} KiB", n >> 10),
            _ => write!(f, "{n} bytes"),
        }
    }
}

/// Everything the kernel programs are configured with.
#[derive(Debug, Clone, Copy)]
pub struct Plan {
    pub retransmit: RetransmitFields,
    pub synack: SynackFields,
    pub state: StateFields,
    pub reset: ResetFields,
    pub connect: ConnectFields,
    pub sock: SockOffsets,
    pub tcp: TcpOffsets,
    pub filter: Filter,
    /// Ring buffer size: a power of two, a multiple of the page size.
    pub ring_bytes: u32,
    /// Entries of the per-socket state map.
    pub max_sockets: u32,
    /// The id of `STATE_BTF_TRACEPOINT` in the running kernel's BTF, when
    /// that is the BTF read: the state hook then runs BTF programs.
    pub state_btf_id: Option<u32>,
    /// Load `namespace_limits` (for the metrics' per-namespace gauges).
    pub namespace_limits: bool,
}

impl Plan {
    /// The kind of program for `hook`: the cheapest the object has for it
    /// that what we know of this kernel allows.
    fn via(&self, hook: &Hook) -> Via {
        let allowed = match (self.tcp.reads_flows(), self.state_btf_id) {
            (false, _) => Via::Classic,
            (true, None) => Via::Raw,
            (true, Some(_)) => Via::Btf,
        };
        best(hook).max(allowed)
    }

    /// What BTF programs find their tracepoint in.
    fn attach_target(&self) -> Option<aya::Btf> {
        let id = self.state_btf_id?;
        // Unbuildable, it leaves the hook on its raw programs.
        aya_shims::attach_target(hooks::STATE_BTF_TRACEPOINT, id).ok()
    }
}

/// Loaded and attached programs with the maps userspace reads.
pub struct Tracer {
    /// Owns the programs (their links are in `links`).
    pub programs: Programs,
    /// `CLOCK_MONOTONIC` nanoseconds (the programs' clock) just before the
    /// first program was attached: no traced event is earlier.
    pub attaching_from_ns: u64,
    pub links: Links,
    pub ring: RingBuf<MapData>,
    pub counters: KernelCounters,
    pub census: Census,
}

/// The loaded programs, and what userspace runs of them itself.
pub struct Programs {
    ebpf: Ebpf,
    namespace_limits: Option<NamespaceLimitsReader>,
}

/// The programs' attachments: dropping them detaches the programs.
pub struct Links(Vec<Attachment>);

/// Hooks attached, by kind of program.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct HookCount {
    pub btf: usize,
    pub raw: usize,
    pub all: usize,
}

impl Links {
    pub fn count(&self) -> HookCount {
        let mut count = HookCount::default();
        // A nested program is not a hook of its own.
        for attachment in self.0.iter().filter(|a| !a.nested) {
            match attachment.link {
                Link::Btf(_) => count.btf += 1,
                Link::Raw(_) => count.raw += 1,
                Link::Classic(_) => {}
            }
            count.all += 1;
        }
        count
    }
}

struct Attachment {
    link: Link,
    /// The program handles the state transitions the kernel skipped for the
    /// hook's program (see `state_nesting`).
    nested: bool,
}

enum Link {
    Classic(TracePointLink),
    Raw(RawTracePointLink),
    Btf(BtfTracePointLink),
}

impl Link {
    fn detach(self) {
        match self {
            Self::Classic(link) => drop(link),
            Self::Raw(link) => drop(link),
            Self::Btf(link) => drop(link),
        }
    }
}

impl Drop for Links {
    /// Each detach waits for an RCU grace period (50-80 ms here); side by
    /// side they wait for the same ones instead of one after another.
    fn drop(&mut self) {
        thread::scope(|scope| {
            for attachment in self.0.drain(..) {
                scope.spawn(move || attachment.link.detach());
            }
        });
    }
}

/// The kernel side's per-socket state maps, to show what they hold.
pub struct Census {
    sockets: HashMap<MapData, u64, SockInfo>,
    listeners: HashMap<MapData, ListenerKey, Owner>,
    connects: HashMap<MapData, u32, PendingConnect>,
}

/// Entries in the kernel side's maps.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct MapEntries {
    pub sockets: usize,
    pub listeners: usize,
    pub connects: usize,
}

impl Census {
    pub fn count(&self) -> MapEntries {
        MapEntries {
            sockets: self.sockets.keys().flatten().count(),
            listeners: self.listeners.keys().flatten().count(),
            connects: self.connects.keys().flatten().count(),
        }
    }
}

const STATES: usize = transition_counts::STATES as usize;

/// Counts by old and new state, as the kernel numbers states.
pub type TransitionTable = [[u64; STATES]; STATES];

/// What the kernel side counts rather than reports: events lost, those it
/// could not queue (per-CPU counter) and program runs the kernel skipped
/// because another tracing program was running on that CPU (a softirq
/// interrupting one; `recursion_misses`), less the state transitions the
/// nested state program handled for it; failed reads; and, when asked,
/// transitions.
pub struct KernelCounters {
    ring_full: PerCpuArray<MapData, u64>,
    failed_reads: PerCpuArray<MapData, u64>,
    transitions: PerCpuArray<MapData, transition_counts::Counts>,
    state_nesting: PerCpuArray<MapData, u64>,
    /// `/proc/self/fdinfo` of each program but the nested state program
    /// (whose skipped runs the state program handled).
    fdinfo: Vec<PathBuf>,
}

impl KernelCounters {
    /// Events lost since load: `(ring buffer full, program runs skipped)`.
    pub fn total(&self) -> Result<(u64, u64), LoadError> {
        let sum = |counters: &PerCpuArray<MapData, u64>, map: &'static str, slot: u32| {
            counters
                .get(&slot, 0)
                .map(|per_cpu| per_cpu.iter().sum::<u64>())
                .map_err(|source| LoadError::Map { map, source })
        };
        let mut ring_full = 0;
        for slot in 0..lost_slot::COUNT {
            ring_full += sum(&self.ring_full, maps::LOST, slot)?;
        }
        let recovered = sum(
            &self.state_nesting,
            maps::STATE_NESTING,
            state_nesting::RECOVERED,
        )?;
        let missed: u64 = self.fdinfo.iter().map(|path| recursion_misses(path)).sum();
        Ok((ring_full, missed.saturating_sub(recovered)))
    }

    /// Transitions the kernel counted (`filter_flags::COUNT_TRANSITIONS`)
    /// since load, by old and new state.
    pub fn transitions(&self) -> Result<TransitionTable, LoadError> {
        let per_cpu = self
            .transitions
            .get(&0, 0)
            .map_err(|source| LoadError::Map {
                map: maps::TRANSITIONS,
                source,
            })?;
        let mut table = [[0; STATES]; STATES];
        for counts in per_cpu.iter() {
            for table_of in 0..transition_counts::TABLES {
                for (old, row) in (0u8..).zip(table.iter_mut()) {
                    for (new, count) in (0u8..).zip(row.iter_mut()) {
                        *count += counts[transition_counts::slot(table_of, old, new) as usize];
                    }
                }
            }
        }
        Ok(table)
    }

    /// Kernel reads at a non-NULL address that failed since load: each left
    /// a field of an event 0.
    pub fn failed_reads(&self) -> Result<u64, LoadError> {
        self.failed_reads
            .get(&0, 0)
            .map(|per_cpu| per_cpu.iter().sum())
            .map_err(|source| LoadError::Map {
                map: maps::FAILED_READS,
                source,
            })
    }
}

/// The `recursion_misses:` line of a program's fdinfo (0 if unreadable).
fn recursion_misses(fdinfo: &Path) -> u64 {
    fs::read_to_string(fdinfo)
        .ok()
        .and_then(|text| {
            text.lines()
                .find_map(|l| l.strip_prefix("recursion_misses:"))
                .and_then(|v| v.trim().parse().ok())
        })
        .unwrap_or(0)
}

impl Tracer {
    /// Loads and attaches the programs. `listeners` gives the owners of the
    /// listeners that exist already (see `listeners::existing`), which the
    /// kernel side is told before it sees a connection made from one: called
    /// once the programs are loaded, so that finding them overlaps loading.
    pub fn load(
        plan: &Plan,
        listeners: impl FnOnce() -> Vec<(ListenerKey, Owner)>,
    ) -> Result<Self, LoadError> {
        if OBJECT.is_empty() {
            return Err(LoadError::NoObject);
        }
        raise_memlock_limit();
        // Before any map fills the memory cgroup (see `memory`).
        crate::memory::check(plan.ring_bytes, plan.max_sockets)?;
        let wakeup_bytes = plan.ring_bytes / 4;
        // Made while aya parses the object and creates the maps.
        let target = {
            let plan = *plan;
            thread::spawn(move || plan.attach_target())
        };
        let mut ebpf = aya_shims::loader_without_kernel_btf()
            // No CO-RE relocations in the object: we resolve the offsets we
            // need ourselves.
            .btf(None)
            .map_max_entries(maps::EVENTS, plan.ring_bytes)
            .map_max_entries(maps::SOCKETS, plan.max_sockets)
            .override_global(globals::RETRANSMIT_FIELDS, &plan.retransmit, true)
            .override_global(globals::SYNACK_FIELDS, &plan.synack, true)
            .override_global(globals::STATE_FIELDS, &plan.state, true)
            .override_global(globals::RESET_FIELDS, &plan.reset, true)
            .override_global(globals::CONNECT_FIELDS, &plan.connect, true)
            .override_global(globals::SOCK_OFFSETS, &plan.sock, true)
            .override_global(globals::TCP_OFFSETS, &plan.tcp, true)
            .override_global(globals::FILTER, &plan.filter, true)
            .override_global(globals::WAKEUP_BYTES, &wakeup_bytes, true)
            .load(OBJECT)
            .map_err(|e| match e {
                _ if is_permission_error(&e) => LoadError::Permission,
                EbpfError::MapError(MapError::CreateError { name, io_error }) => {
                    match name.as_str() {
                        // A map type the kernel does not know is EINVAL:
                        // the ring buffer came in 5.8.
                        maps::EVENTS if io_error.raw_os_error() == Some(libc_einval()) => {
                            LoadError::NoRingBuffer {
                                kernel: kernel_release(),
                            }
                        }
                        maps::EVENTS => LoadError::RingBuffer {
                            bytes: Bytes(plan.ring_bytes),
                            source: io_error,
                        },
                        maps::SOCKETS => LoadError::SocketMap {
                            entries: plan.max_sockets,
                            source: io_error,
                        },
                        _ => LoadError::CreateMap {
                            map: name,
                            source: io_error,
                        },
                    }
                }
                e => LoadError::Object(e),
            })?;

        // Out of `ebpf` before its programs are borrowed: the map stays
        // open, and the programs refer to it already.
        let mut known_listeners: HashMap<_, ListenerKey, Owner> =
            take_map(&mut ebpf, maps::LISTENERS, HashMap::try_from)?;
        let state_events = plan.filter.flags & filter_flags::STATE_EVENTS != 0;
        // Resets only explain endings of state events: without them, two
        // fewer programs to verify and attach (and to run on every reset).
        let mut chosen: Vec<(Hook, Via)> = hooks::ALL
            .into_iter()
            .filter(|hook| state_events || !hook.state_only)
            .map(|hook| (hook, plan.via(&hook)))
            .collect();
        let mut wanted: StdHashMap<&str, (Hook, Via)> = StdHashMap::new();
        for &(hook, via) in &chosen {
            // A BTF hook's raw programs stand by in case this kernel
            // refuses BTF tracepoints.
            let vias: &[Via] = if via == Via::Btf {
                &[Via::Btf, Via::Raw]
            } else {
                &[via]
            };
            for &via in vias {
                for (program, kind) in programs(&hook, via) {
                    wanted.insert(program, (hook, kind));
                }
            }
        }
        let mut programs: Vec<Candidate> = ebpf
            .programs_mut()
            .filter_map(|(name, program)| {
                let (hook, via) = wanted.remove(name)?;
                Some(Candidate {
                    hook,
                    via,
                    name,
                    program,
                })
            })
            .collect();
        if let Some(program) = wanted.into_keys().next() {
            return Err(LoadError::MissingProgram {
                program: program.to_owned(),
            });
        }
        // Longest verification first (the state hook's, a BTF program's
        // the longest of them): started last, it ends last.
        programs.sort_by_key(|c| (c.hook != hooks::STATE, c.via != Via::Btf));
        let is_chosen = |chosen: &[(Hook, Via)], c: &Candidate| {
            chosen.iter().any(|&(hook, via)| {
                hook == c.hook && (via == c.via || (c.nested() && via != Via::Classic))
            })
        };
        // The thread only fails by panicking, which it has then reported.
        let target = target.join().unwrap_or(None);
        let refused = load_side_by_side(
            programs.iter_mut().filter(|c| is_chosen(&chosen, c)),
            target.as_ref(),
        )?;
        if !refused.is_empty() {
            for (hook, via) in &mut chosen {
                if refused.contains(&hook.tracepoint) {
                    *via = Via::Raw;
                }
            }
            // The nested program is loaded already.
            let again = load_side_by_side(
                programs.iter_mut().filter(|c| {
                    c.via == Via::Raw && !c.nested() && refused.contains(&c.hook.tracepoint)
                }),
                None,
            )?;
            debug_assert!(again.is_empty(), "only BTF programs are retried");
        }
        programs.retain(|c| is_chosen(&chosen, c));
        for (listener, owner) in listeners() {
            known_listeners
                .insert(listener, owner, 0)
                .map_err(|source| LoadError::Map {
                    map: maps::LISTENERS,
                    source,
                })?;
        }
        // A tracepoint runs its programs in the order they were attached;
        // a nested state program must run after the state program (it
        // handles what that one did not note): attached last.
        programs.sort_by_key(Candidate::nested);
        let attaching_from_ns = crate::decode::Clock::monotonic_ns();
        let links = Links(
            programs
                .into_iter()
                .map(Candidate::attach)
                .collect::<Result<_, _>>()?,
        );

        let namespace_limits =
            (plan.namespace_limits && plan.sock.has_netns() && plan.tcp.reads_namespace_limits())
                .then(|| NamespaceLimitsReader::load(&mut ebpf))
                .transpose()?;
        let fdinfo = ebpf
            .programs()
            .filter(|&(name, _)| {
                name != hooks::NAMESPACE_LIMITS
                    && !hooks::ALL.iter().any(|h| h.nested == Some(name))
            })
            .filter_map(|(_, program)| program.fd().ok())
            .map(|fd| PathBuf::from(format!("/proc/self/fdinfo/{}", fd.as_fd().as_raw_fd())))
            .collect();
        let census = Census {
            sockets: take_map(&mut ebpf, maps::SOCKETS, HashMap::try_from)?,
            listeners: known_listeners,
            connects: take_map(&mut ebpf, maps::CONNECTS, HashMap::try_from)?,
        };
        let ring = take_map(&mut ebpf, maps::EVENTS, RingBuf::try_from)?;
        let lost = take_map(&mut ebpf, maps::LOST, PerCpuArray::try_from)?;
        let failed_reads = take_map(&mut ebpf, maps::FAILED_READS, PerCpuArray::try_from)?;
        let transitions = take_map(&mut ebpf, maps::TRANSITIONS, PerCpuArray::try_from)?;
        let state_nesting = take_map(&mut ebpf, maps::STATE_NESTING, PerCpuArray::try_from)?;
        Ok(Self {
            programs: Programs {
                ebpf,
                namespace_limits,
            },
            attaching_from_ns,
            links,
            ring,
            counters: KernelCounters {
                ring_full: lost,
                failed_reads,
                transitions,
                state_nesting,
                fdinfo,
            },
            census,
        })
    }
}

impl Programs {
    /// A network namespace's limits, read by the kernel side through a
    /// socket seen in it; `None` when the socket has left it (or the
    /// program is not loaded).
    pub fn namespace_limits(
        &self,
        socket: u64,
        inode: u32,
    ) -> Result<Option<NamespaceLimits>, LoadError> {
        match &self.namespace_limits {
            Some(reader) => reader.read(&self.ebpf, socket, inode),
            None => Ok(None),
        }
    }
}

/// Runs `namespace_limits` and reads its answers.
pub struct NamespaceLimitsReader {
    answers: HashMap<MapData, u32, NamespaceLimits>,
}

impl NamespaceLimitsReader {
    /// The program as a raw tracepoint, borrowed (`&Program`) or mutably.
    fn program<P, T: TryFrom<P, Error = ProgramError>>(found: Option<P>) -> Result<T, LoadError> {
        found
            .ok_or_else(|| LoadError::MissingProgram {
                program: hooks::NAMESPACE_LIMITS.to_owned(),
            })?
            .try_into()
            .map_err(load_error(hooks::NAMESPACE_LIMITS))
    }

    fn load(ebpf: &mut Ebpf) -> Result<Self, LoadError> {
        let program: &mut RawTracePoint = Self::program(ebpf.program_mut(hooks::NAMESPACE_LIMITS))?;
        program
            .load()
            .map_err(load_error(hooks::NAMESPACE_LIMITS))?;
        let answers = take_map(ebpf, maps::NAMESPACE_LIMITS, HashMap::try_from)?;
        Ok(Self { answers })
    }

    fn read(
        &self,
        programs: &Ebpf,
        socket: u64,
        inode: u32,
    ) -> Result<Option<NamespaceLimits>, LoadError> {
        let program: &RawTracePoint = Self::program(programs.program(hooks::NAMESPACE_LIMITS))?;
        let mut options = RawTracePointRunOptions::new();
        options.args[..2].copy_from_slice(&[socket, u64::from(inode)]);
        let ran = program
            .test_run(options)
            .map_err(load_error(hooks::NAMESPACE_LIMITS))?;
        if ran.return_value != namespace_limits::READ {
            return Ok(None);
        }
        self.answers
            .get(&inode, 0)
            .map(Some)
            .map_err(|source| LoadError::Map {
                map: maps::NAMESPACE_LIMITS,
                source,
            })
    }
}

fn take_map<T>(
    ebpf: &mut Ebpf,
    map: &'static str,
    convert: impl FnOnce(aya::maps::Map) -> Result<T, MapError>,
) -> Result<T, LoadError> {
    let raw = ebpf.take_map(map).ok_or(LoadError::MissingMap { map })?;
    convert(raw).map_err(|source| LoadError::Map { map, source })
}

const fn libc_eperm() -> i32 {
    nix::errno::Errno::EPERM as i32
}

const fn libc_einval() -> i32 {
    nix::errno::Errno::EINVAL as i32
}

/// The running kernel's release, for messages.
fn kernel_release() -> String {
    nix::sys::utsname::uname().map_or_else(
        |e| format!("release unknown: {e}"),
        |u| u.release().to_string_lossy().into_owned(),
    )
}

/// A program of the object that a hook may run.
struct Candidate<'a> {
    hook: Hook,
    via: Via,
    name: &'a str,
    program: &'a mut Program,
}

impl Candidate<'_> {
    fn nested(&self) -> bool {
        self.hook.nested == Some(self.name)
    }

    /// Loads the program into the kernel; BTF tracepoints find their
    /// tracepoint in `target`.
    fn load(&mut self, target: Option<&aya::Btf>) -> Result<(), LoadError> {
        match &mut *self.program {
            Program::RawTracePoint(program) => program.load(),
            Program::TracePoint(program) => program.load(),
            Program::BtfTracePoint(program) => match target {
                Some(target) => program.load(self.hook.tracepoint, target),
                // No attach target could be made: refused like a kernel
                // refusal, so the hook falls back to its raw programs.
                None => Err(ProgramError::NotLoaded),
            },
            _ => Err(ProgramError::UnexpectedProgramType),
        }
        .map_err(load_error(self.name))
    }

    /// Attaches the loaded program to its hook's tracepoint.
    fn attach(self) -> Result<Attachment, LoadError> {
        let (category, tracepoint) = (self.hook.category, self.hook.tracepoint);
        let attach_error = |source| LoadError::Attach {
            category,
            name: tracepoint,
            source,
        };
        let nested = self.nested();
        let link = match self.program {
            Program::RawTracePoint(program) => {
                let link = program.attach(tracepoint).map_err(attach_error)?;
                Link::Raw(program.take_link(link).map_err(attach_error)?)
            }
            Program::BtfTracePoint(program) => {
                let link = program.attach().map_err(attach_error)?;
                Link::Btf(program.take_link(link).map_err(attach_error)?)
            }
            Program::TracePoint(program) => {
                let link = program.attach(category, tracepoint).map_err(attach_error)?;
                Link::Classic(program.take_link(link).map_err(attach_error)?)
            }
            _ => return Err(attach_error(ProgramError::UnexpectedProgramType)),
        };
        Ok(Attachment { link, nested })
    }
}

/// Loads the programs, each on its own thread: the verifier takes most of
/// the start-up. Returns the hooks whose BTF programs the kernel refused
/// (for reasons other than privileges), which can fall back to raw ones.
fn load_side_by_side<'a, 'b: 'a>(
    programs: impl Iterator<Item = &'a mut Candidate<'b>>,
    target: Option<&aya::Btf>,
) -> Result<Vec<&'static str>, LoadError> {
    let results: Vec<(Hook, Via, Result<(), LoadError>)> = thread::scope(|scope| {
        let loading: Vec<_> = programs
            .map(|candidate| {
                let (hook, via) = (candidate.hook, candidate.via);
                (hook, via, scope.spawn(move || candidate.load(target)))
            })
            .collect();
        loading
            .into_iter()
            .map(|(hook, via, thread)| {
                let result = thread
                    .join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
                (hook, via, result)
            })
            .collect()
    });
    let mut refused = Vec::new();
    for (hook, via, result) in results {
        match result {
            Err(LoadError::Program { .. }) if via == Via::Btf => {
                if !refused.contains(&hook.tracepoint) {
                    refused.push(hook.tracepoint);
                }
            }
            result => result?,
        }
    }
    Ok(refused)
}

/// Why the kernel refused to load `program`: most often, privileges.
fn load_error(program: &str) -> impl Fn(ProgramError) -> LoadError + '_ {
    move |source| match source {
        ProgramError::SyscallError(ref e) if e.io_error.raw_os_error() == Some(libc_eperm()) => {
            LoadError::Permission
        }
        source => LoadError::Program {
            program: program.to_owned(),
            source,
        },
    }
}

fn is_permission_error(e: &EbpfError) -> bool {
    let mut source: Option<&dyn std::error::Error> = Some(e);
    while let Some(err) = source {
        if let Some(io) = err.downcast_ref::<io::Error>()
            && io.raw_os_error() == Some(libc_eperm())
        {
            return true;
        }
        source = err.source();
    }
    false
}

/// Kernels before 5.11 charge BPF memory to RLIMIT_MEMLOCK; newer ones use
/// memory cgroups and may refuse the change, which is then harmless.
fn raise_memlock_limit() {
    use nix::sys::resource::{Resource, setrlimit};
    let _ = setrlimit(
        Resource::RLIMIT_MEMLOCK,
        nix::libc::RLIM_INFINITY,
        nix::libc::RLIM_INFINITY,
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The other half of the join the kernel side checks at build time:
    /// every program the hooks table names is in the object, and nothing
    /// else is but the one userspace runs itself.
    #[test]
    fn the_object_has_exactly_the_tables_programs() {
        if OBJECT.is_empty() {
            println!("skipped: built with AYA_BUILD_SKIP, without the kernel object");
            return;
        }
        let object = aya_obj::Object::parse(OBJECT).expect("the eBPF object");
        let mut in_object: Vec<&str> = object.programs.keys().map(String::as_str).collect();
        let mut in_table: Vec<&str> = hooks::ALL
            .iter()
            .flat_map(|h| [Some(h.classic), h.raw, h.btf, h.nested])
            .flatten()
            .chain([hooks::NAMESPACE_LIMITS])
            .collect();
        in_object.sort_unstable();
        in_table.sort_unstable();
        assert_eq!(in_object, in_table);
    }

    #[test]
    fn a_kernel_without_the_ring_buffer_is_named_with_the_floor() {
        let said = LoadError::NoRingBuffer {
            kernel: "5.4.0-216-generic".into(),
        }
        .to_string();
        assert!(
            said.starts_with("this kernel (5.4.0-216-generic) has no BPF ring buffer")
                && said.contains("Linux 5.8 or later"),
            "{said}"
        );
    }
}
