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
    Ebpf, EbpfError, EbpfLoader,
    maps::{HashMap, MapData, MapError, PerCpuArray, RingBuf},
    programs::{
        Program, ProgramError, raw_trace_point::RawTracePointLink, trace_point::TracePointLink,
    },
};
use landlock::{AccessFs, Ruleset, RulesetAttr as _};
use tcpretrans_common::{
    ConnectFields, Filter, ListenerKey, Owner, PendingConnect, ResetFields, RetransmitFields,
    SockInfo, SockOffsets, StateFields, SynackFields, TcpOffsets, filter_flags, globals, lost_slot,
    state_nesting,
};
use thiserror::Error;

/// The kernel object built from tcpretrans-ebpf (empty when built with `AYA_BUILD_SKIP=1`).
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/tcpretrans"));

/// Programs, and the tracepoints they attach to.
/// The hooks: tracepoint category and name, and the program for its raw
/// tracepoint when there is one. Raw tracepoints cost less and are guarded
/// against recursion per program, where a classic tracepoint program is
/// skipped whenever any other one runs on its CPU (a softirq interrupting
/// it); they need BTF to read the socket. System calls have no raw
/// tracepoint of their own.
pub const PROGRAMS: [Hook; 7] = [
    Hook::new("tcp", "tcp_retransmit_skb", true),
    Hook::new("tcp", "tcp_retransmit_synack", true),
    Hook::new("sock", "inet_sock_set_state", true),
    Hook::new("tcp", "tcp_send_reset", true),
    Hook::new("tcp", "tcp_receive_reset", true),
    Hook::new("syscalls", "sys_enter_connect", false),
    Hook::new("syscalls", "sys_exit_connect", false),
];

/// A tracepoint and its programs: `NAME` (classic) and `NAME_raw`.
#[derive(Debug, Clone, Copy)]
pub struct Hook {
    pub category: &'static str,
    pub name: &'static str,
    raw: bool,
}

impl Hook {
    const fn new(category: &'static str, name: &'static str, raw: bool) -> Self {
        Self {
            category,
            name,
            raw,
        }
    }
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
        "cannot create the kernel side's socket map ({entries} entries): {source}; \
         try a smaller --max-sockets, or raise this cgroup's memory limit"
    )]
    SocketMap { entries: u32, source: io::Error },
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
}

/// Loaded and attached programs with the maps userspace reads.
pub struct Tracer {
    /// Owns the programs (their links are in `links`).
    pub programs: Ebpf,
    pub links: Links,
    pub ring: RingBuf<MapData>,
    pub lost: LostCounter,
    pub census: Census,
}

/// The programs' attachments: dropping them detaches the programs.
pub struct Links(Vec<Attachment>);

impl Links {
    /// Hooks attached: to raw tracepoints, and in all.
    pub fn count(&self) -> (usize, usize) {
        let hooks = self
            .0
            .iter()
            .filter(|a| !matches!(a, Attachment::Nested(_)));
        let raw = hooks
            .clone()
            .filter(|a| matches!(a, Attachment::Raw(_)))
            .count();
        (raw, hooks.count())
    }
}

enum Attachment {
    Classic(TracePointLink),
    Raw(RawTracePointLink),
    /// The program that handles the state transitions the kernel skips for
    /// the raw state program (see `state_nesting`): not a hook of its own.
    Nested(RawTracePointLink),
}

/// The raw state program, and the one that runs it nested.
const STATE_PROGRAM: &str = "inet_sock_set_state_raw";
const NESTED_STATE_PROGRAM: &str = "inet_sock_set_state_nested";

impl Drop for Links {
    /// Each detach waits for an RCU grace period (50-80 ms here); side by
    /// side they wait for the same ones instead of one after another.
    fn drop(&mut self) {
        std::thread::scope(|scope| {
            for attachment in self.0.drain(..) {
                scope.spawn(move || match attachment {
                    Attachment::Classic(link) => drop(link),
                    Attachment::Raw(link) | Attachment::Nested(link) => drop(link),
                });
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

/// Events the kernel side lost: those it could not queue (per-CPU counter),
/// and program runs the kernel skipped because another tracing program was
/// running on that CPU (a softirq interrupting one; `recursion_misses`),
/// less the state transitions the nested state program handled for it.
pub struct LostCounter {
    ring_full: PerCpuArray<MapData, u64>,
    state_nesting: PerCpuArray<MapData, u64>,
    /// `/proc/self/fdinfo` of each program but the nested state program
    /// (whose skipped runs the state program handled).
    fdinfo: Vec<PathBuf>,
}

impl LostCounter {
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
            ring_full += sum(&self.ring_full, "LOST", slot)?;
        }
        let recovered = sum(
            &self.state_nesting,
            "STATE_NESTING",
            state_nesting::RECOVERED,
        )?;
        let missed: u64 = self.fdinfo.iter().map(|path| recursion_misses(path)).sum();
        Ok((ring_full, missed.saturating_sub(recovered)))
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

/// aya's loader, without its parse of the kernel's BTF. aya 0.14 parses the
/// whole vmlinux BTF whenever a loader is made (~35 ms here, a third of the
/// start-up), although this object has no CO-RE relocations and needs none
/// of it (later aya versions parse it lazily, but need a newer Rust). The
/// loader is made on a throwaway thread that Landlock forbids to read files:
/// the parse then fails at once and aya goes on without BTF, as
/// `.btf(None)` asks. Where Landlock is unavailable the parse just happens.
fn loader_without_kernel_btf() -> EbpfLoader<'static> {
    let made = thread::spawn(|| {
        // Only this thread is restricted (and made `no_new_privs`).
        let _ = Ruleset::default()
            .handle_access(AccessFs::ReadFile)
            .and_then(|ruleset| ruleset.create())
            .and_then(|ruleset| ruleset.restrict_self());
        EbpfLoader::new()
    })
    .join();
    // The thread only fails by panicking, which it has then reported.
    made.unwrap_or_else(|_| EbpfLoader::new())
}

impl Tracer {
    pub fn load(plan: &Plan) -> Result<Self, LoadError> {
        if OBJECT.is_empty() {
            return Err(LoadError::NoObject);
        }
        raise_memlock_limit();
        let wakeup_bytes = plan.ring_bytes / 4;
        let mut ebpf = loader_without_kernel_btf()
            // No CO-RE relocations in the object: we resolve the offsets we
            // need ourselves.
            .btf(None)
            .map_max_entries("EVENTS", plan.ring_bytes)
            .map_max_entries("SOCKETS", plan.max_sockets)
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
                        "EVENTS" => LoadError::RingBuffer {
                            bytes: Bytes(plan.ring_bytes),
                            source: io_error,
                        },
                        "SOCKETS" => LoadError::SocketMap {
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

        let state_events = plan.filter.flags & filter_flags::STATE_EVENTS != 0;
        // Resets only explain endings of state events: without them, two
        // fewer programs to verify and attach (and to run on every reset).
        let raw = plan.tcp.reads_flows();
        let mut needed: StdHashMap<String, Hook> = PROGRAMS
            .into_iter()
            .filter(|hook| state_events || !hook.name.ends_with("_reset"))
            .map(|hook| {
                let program = if raw && hook.raw {
                    format!("{}_raw", hook.name)
                } else {
                    hook.name.to_owned()
                };
                (program, hook)
            })
            .collect();
        if let Some(&state) = needed.get(STATE_PROGRAM) {
            needed.insert(NESTED_STATE_PROGRAM.to_owned(), state);
        }
        let mut programs: Vec<(Hook, &str, &mut Program)> = ebpf
            .programs_mut()
            .filter_map(|(name, program)| Some((needed.remove(name)?, name, program)))
            .collect();
        if let Some(program) = needed.into_keys().next() {
            return Err(LoadError::MissingProgram { program });
        }
        // The verifier takes most of the start-up: each program on its own
        // thread, side by side.
        thread::scope(|scope| {
            let loading: Vec<_> = programs
                .iter_mut()
                .map(|(_, name, program)| scope.spawn(move || load(name, program)))
                .collect();
            loading.into_iter().try_for_each(|thread| {
                thread
                    .join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
            })
        })?;
        // A tracepoint runs its programs in the order they were attached;
        // the nested state program must run after the state program (it
        // handles what that one did not log): attached last.
        programs.sort_by_key(|&(_, name, _)| name == NESTED_STATE_PROGRAM);
        let links = Links(
            programs
                .into_iter()
                .map(|(hook, name, program)| attach(hook, name, program))
                .collect::<Result<_, _>>()?,
        );

        let fdinfo = ebpf
            .programs()
            .filter(|&(name, _)| name != NESTED_STATE_PROGRAM)
            .filter_map(|(_, program)| program.fd().ok())
            .map(|fd| PathBuf::from(format!("/proc/self/fdinfo/{}", fd.as_fd().as_raw_fd())))
            .collect();
        let census = Census {
            sockets: take_map(&mut ebpf, "SOCKETS", HashMap::try_from)?,
            listeners: take_map(&mut ebpf, "LISTENERS", HashMap::try_from)?,
            connects: take_map(&mut ebpf, "CONNECTS", HashMap::try_from)?,
        };
        let ring = take_map(&mut ebpf, "EVENTS", RingBuf::try_from)?;
        let lost = take_map(&mut ebpf, "LOST", PerCpuArray::try_from)?;
        let state_nesting = take_map(&mut ebpf, "STATE_NESTING", PerCpuArray::try_from)?;
        Ok(Self {
            programs: ebpf,
            links,
            ring,
            lost: LostCounter {
                ring_full: lost,
                state_nesting,
                fdinfo,
            },
            census,
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

/// Loads `program` (the hook's raw or classic program) into the kernel.
fn load(name: &str, program: &mut Program) -> Result<(), LoadError> {
    match program {
        Program::RawTracePoint(program) => program.load(),
        Program::TracePoint(program) => program.load(),
        _ => Err(ProgramError::UnexpectedProgramType),
    }
    .map_err(load_error(name))
}

/// Attaches a loaded `program` to its hook's tracepoint.
fn attach(hook: Hook, name: &str, program: &mut Program) -> Result<Attachment, LoadError> {
    let (category, tracepoint) = (hook.category, hook.name);
    let attach_error = |source| LoadError::Attach {
        category,
        name: tracepoint,
        source,
    };
    match program {
        Program::RawTracePoint(program) => {
            let link = program.attach(tracepoint).map_err(attach_error)?;
            let link = program.take_link(link).map_err(attach_error)?;
            Ok(if name == NESTED_STATE_PROGRAM {
                Attachment::Nested(link)
            } else {
                Attachment::Raw(link)
            })
        }
        Program::TracePoint(program) => {
            let link = program.attach(category, tracepoint).map_err(attach_error)?;
            Ok(Attachment::Classic(
                program.take_link(link).map_err(attach_error)?,
            ))
        }
        _ => Err(attach_error(ProgramError::UnexpectedProgramType)),
    }
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
        if let Some(io) = err.downcast_ref::<std::io::Error>()
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
