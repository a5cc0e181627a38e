//! A tracing session: discover this kernel's layouts, load the programs, and
//! consume the ring buffer until stopped.
use std::{
    io::{self, ErrorKind},
    path::Path,
    sync::Arc,
    thread,
    time::Duration,
};

use aya::maps::{MapData, RingBuf};
use jiff::Timestamp;
use tcpretrans_common::{
    ConnectEnterFields, ConnectFields, ResetFields, ResetRecordFields, RetransmitFields,
    StateFields, SynackFields, SyscallExitFields, hooks,
};
use thiserror::Error;
use tokio::{
    io::{Interest, unix::AsyncFd},
    signal::unix::{SignalKind, signal},
    time::{self, MissedTickBehavior},
};

use crate::{
    btf::{self, Btf, BtfError},
    cli::Args,
    decode::{Clock, Decoder},
    events::Event,
    gaps::Gaps,
    identity::{self, Resolver},
    kernel, listeners,
    loader::{KernelCounters, LoadError, Plan, Programs, Tracer},
    metrics::{self, Exporter, Metrics, Refresh, ServeError},
    netns,
    notice::Notice,
    output::{self, Output},
    owners::Owners,
    reconcile::{Baseline, NotCompared},
    sessions::Sessions,
    summary::Summary,
    timewait::TimeWaits,
    tracefs::{FormatError, Tracefs},
};

/// How often the ring buffer is drained when the kernel side did not force a
/// wakeup: bounds the delay from event to printed line.
const DRAIN_INTERVAL: Duration = Duration::from_millis(20);
/// The same for a quiet exporter, whose events only move counters that are
/// scraped every few seconds: fewer wakeups when idle. The kernel side
/// still wakes it when a quarter of the ring fills.
const QUIET_DRAIN_INTERVAL: Duration = Duration::from_secs(1);
/// The first drain after attaching: the interval doubles from this up to
/// `DRAIN_INTERVAL`, so that the first events show at once.
const FIRST_DRAIN: Duration = Duration::from_millis(1);
/// How often the kernel side's loss counters are read (a syscall per CPU
/// map and a procfs read per program: not worth doing on every drain).
const LOST_CHECK_INTERVAL: Duration = Duration::from_secs(1);
/// TIME_WAIT 4-tuples kept to recognize their reuse (the kernel's default
/// `tcp_max_tw_buckets` is 2^18 per namespace; reuse matters when a few
/// ports are exhausted, so recent entries suffice).
const TIME_WAITS_REMEMBERED: usize = 65_536;
/// Connections accounted for at once (with `--state` they leave at their
/// end; with `-c` at each table).
const SESSIONS_TRACKED: usize = 65_536;

#[derive(Debug, Error)]
pub enum TraceError {
    #[error(transparent)]
    Format(#[from] FormatError),
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error("--netns needs the kernel's BTF to read a socket's namespace, and {0}")]
    NetnsWithoutBtf(String),
    #[error("--cgroup needs the kernel's BTF to read a socket's cgroup, and {0}")]
    CgroupWithoutBtf(String),
    #[error("cannot watch the ring buffer: {0}")]
    Poll(#[source] io::Error),
    #[error("writing output failed: {0}")]
    Output(#[source] io::Error),
    #[error(transparent)]
    Metrics(#[from] ServeError),
}

/// A session's kernel-side plan and the matching decoder.
pub struct Setup {
    pub plan: Plan,
    pub decoder: Decoder,
}

/// Resolves this kernel's layouts and the user's selection. What this
/// kernel cannot offer is told to `notify` once and shown as unknown.
pub fn prepare(
    args: &Args,
    tracefs: &Tracefs,
    notify: &mut dyn FnMut(Notice),
) -> Result<Setup, TraceError> {
    let retransmit: RetransmitFields = tracefs.hook_format(&hooks::RETRANSMIT)?.layout()?;
    let synack: SynackFields = tracefs.hook_format(&hooks::SYNACK)?.layout()?;
    let state: StateFields = tracefs.hook_format(&hooks::STATE)?.layout()?;
    let enter: ConnectEnterFields = tracefs.hook_format(&hooks::ENTER_CONNECT)?.layout()?;
    let exit: SyscallExitFields = tracefs.hook_format(&hooks::EXIT_CONNECT)?.layout()?;
    let connect = ConnectFields {
        enter_fd: enter.fd,
        enter_uservaddr: enter.uservaddr,
        exit_ret: exit.ret,
        accept_exit_ret: accept_exit_ret(tracefs)?,
    };
    let reset_skaddr = |hook| {
        tracefs
            .hook_format(hook)?
            .layout()
            .map(|r: ResetRecordFields| r.skaddr)
    };
    let reset = ResetFields {
        send_skaddr: reset_skaddr(&hooks::SEND_RESET)?,
        receive_skaddr: reset_skaddr(&hooks::RECEIVE_RESET)?,
    };
    let btf_path = args.btf.as_deref().unwrap_or(Path::new(btf::VMLINUX));
    let (resolved, state_btf_id) = match Btf::from_file(btf_path) {
        Ok(btf) => {
            let resolved = btf::resolve(&btf);
            let unavailable: Vec<String> = resolved.unavailable().collect();
            if !unavailable.is_empty() {
                notify(Notice::UnavailableMembers(unavailable));
            }
            // BTF tracepoints name their target by its id in the kernel's
            // own BTF.
            let state_btf_id = (btf_path == Path::new(btf::VMLINUX))
                .then(|| btf.typedef_id(hooks::STATE_BTF_TRACEPOINT))
                .flatten();
            (resolved, state_btf_id)
        }
        Err(err) => {
            if args.netns.is_some() {
                return Err(TraceError::NetnsWithoutBtf(describe_btf_error(&err)));
            }
            if args.cgroup.is_some() {
                return Err(TraceError::CgroupWithoutBtf(describe_btf_error(&err)));
            }
            notify(Notice::NoBtf(describe_btf_error(&err)));
            (btf::Resolved::unknown(), None)
        }
    };
    if args.netns.is_some() && !resolved.sock.has_netns() {
        return Err(TraceError::NetnsWithoutBtf(
            "this kernel's BTF lacks the members it needs".into(),
        ));
    }
    if args.cgroup.is_some() && !resolved.sock.has_cgroup() {
        return Err(TraceError::CgroupWithoutBtf(
            "this kernel's BTF lacks the members it needs".into(),
        ));
    }
    let hz = kernel::hz().map_err(|e| notify(Notice::UnknownHz(e))).ok();
    let filter = args.filter();
    let plan = Plan {
        retransmit,
        synack,
        state,
        reset,
        connect,
        sock: resolved.sock,
        tcp: resolved.tcp,
        filter,
        ring_bytes: args.ring_size,
        max_sockets: args.max_sockets,
        state_btf_id,
        namespace_limits: args.metrics.is_some(),
    };
    let decoder = Decoder {
        clock: Clock::new(),
        hz,
        tcp: resolved.tcp,
        netns_known: resolved.sock.has_netns(),
    };
    Ok(Setup { plan, decoder })
}

/// `ret` of `sys_exit_accept4` and `sys_exit_accept`, which one program
/// layout serves: refused if they differ.
fn accept_exit_ret(tracefs: &Tracefs) -> Result<u16, FormatError> {
    let ret = |hook| {
        tracefs
            .hook_format(hook)?
            .layout()
            .map(|r: SyscallExitFields| r.ret)
    };
    let (accept4, accept) = (ret(&hooks::EXIT_ACCEPT4)?, ret(&hooks::EXIT_ACCEPT)?);
    if accept != accept4 {
        return Err(FormatError::Differs {
            what: "syscalls:sys_exit_accept and sys_exit_accept4",
        });
    }
    Ok(accept4)
}

fn describe_btf_error(err: &BtfError) -> String {
    match err {
        BtfError::Read { path, source } if source.kind() == ErrorKind::NotFound => {
            format!("kernel BTF {path} does not exist")
        }
        other => other.to_string(),
    }
}

/// One heap for every thread: glibc gives each thread its own arena (the
/// loader's verifying threads, the attach target's), and an arena's freed
/// pages stay mapped after the thread ends. Set before any thread starts.
fn single_heap() {
    #[cfg(target_env = "gnu")]
    // SAFETY: no preconditions; it only tunes the allocator.
    unsafe {
        nix::libc::mallopt(nix::libc::M_ARENA_MAX, 1);
    }
}

/// Hands the heap that start-up freed (the BTF index, aya's parse of the
/// object, the BTF programs' attach target: several MB) back to the system.
/// glibc keeps a freed heap's pages mapped, and counted in RSS, while any
/// allocation lies above them; mimalloc (the static build's) returns them a
/// second after they were freed, and only when next called: an idle tracer
/// would keep 10 MB more.
fn release_startup_heap() {
    #[cfg(target_env = "gnu")]
    // SAFETY: no preconditions; it only returns free memory.
    unsafe {
        nix::libc::malloc_trim(0);
    }
    #[cfg(target_env = "musl")]
    // SAFETY: as above.
    unsafe {
        libmimalloc_sys::mi_collect(true);
    }
}

/// Runs a session to its end: Ctrl-C, SIGTERM, `--duration`, or a closed
/// output pipe. Events go to stdout; with `--json` (but `-c`) a `summary`
/// event ends them; the summary and the notices on the way are the
/// caller's to print.
pub async fn run(args: &Args, notify: &mut dyn FnMut(Notice)) -> Result<Summary, TraceError> {
    // Said first: without privileges everything after fails less clearly.
    if !kernel::Privileges::current().suffice() {
        return Err(LoadError::Permission.into());
    }
    single_heap();
    // Before loading: a port in use is said at once, and probes get an
    // answer (not ready) while the programs load.
    let exporter = match args.metrics {
        Some(endpoint) => {
            let listener = metrics::bind(endpoint).await?;
            let (metrics, registry) =
                Metrics::new(args.metrics_by.clone().unwrap_or_default(), args.max_series);
            let exporter = Exporter::new(registry);
            tokio::spawn(metrics::serve(listener, Arc::clone(&exporter)));
            Some((metrics, exporter))
        }
        None => None,
    };
    // Made while the programs load: text output looks the local time zone
    // up in the system's zoneinfo tree (0.7-1.4 ms here).
    let style = args.style();
    let output = thread::spawn(move || output::new(style, io::stdout()));
    let tracefs = Tracefs::find_or_mount()?;
    let Setup { plan, decoder } = prepare(args, &tracefs, notify)?;
    // The kernel's count, before the programs attach.
    let baseline = Baseline::take(args, &decoder);
    // Found in /proc while the programs load.
    let (traced_netns, netns_known) = (args.netns, plan.sock.has_netns());
    let listeners = thread::spawn(move || listeners::existing(traced_netns, netns_known));
    let tracer = Tracer::load(&plan, || {
        // The thread only fails by panicking, which it has then reported.
        listeners.join().unwrap_or_default()
    })?;
    // The header is stamped with it: no traced event is earlier.
    let tracing_since = decoder.clock.wall(tracer.attaching_from_ns);
    let baseline = baseline.and_then(Baseline::attached);
    let metrics = exporter.map(|(metrics, exporter)| {
        exporter.set_ready();
        metrics
    });
    release_startup_heap();
    // The thread only fails by panicking, which it has then reported.
    let mut out = output
        .join()
        .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
    let mut summary = consume(
        args,
        tracer,
        decoder,
        tracing_since,
        Sinks {
            out: out.as_mut(),
            metrics,
            notify,
        },
        baseline,
    )
    .await?;
    // `-c` writes flow tables only.
    if !summary.output_closed && !args.quiet && !args.count {
        if args.state.is_some() {
            summary.occupancy = summary
                .namespaces
                .iter()
                .map(|&inode| netns::occupancy(inode).map_err(|e| e.to_string()))
                .collect();
        }
        let written = out.summary(&summary).and_then(|()| out.flush());
        if matches!(&written, Err(e) if e.kind() != ErrorKind::BrokenPipe) {
            written.map_err(TraceError::Output)?;
        }
    }
    Ok(summary)
}

/// Drains the ring buffer into the output and keeps the session's counts.
struct Consumer<'a> {
    args: &'a Args,
    decoder: Decoder,
    owners: Owners,
    /// Containers and pods by cgroup, when events need them.
    identities: Option<Resolver>,
    gaps: Gaps,
    time_waits: TimeWaits,
    /// Connection accounts: for `session_end` with `--state`, for the flow
    /// table with `-c`.
    sessions: Option<Sessions>,
    out: &'a mut dyn Output,
    metrics: Option<Metrics>,
    notify: &'a mut dyn FnMut(Notice),
    summary: Summary,
}

/// Where a session's events go: the output, the metrics, and notices.
struct Sinks<'a> {
    out: &'a mut dyn Output,
    metrics: Option<Metrics>,
    notify: &'a mut dyn FnMut(Notice),
}

impl Consumer<'_> {
    fn drain(&mut self, ring: &mut RingBuf<MapData>) -> io::Result<()> {
        while let Some(record) = ring.next() {
            match self.decoder.decode(&record) {
                Ok(mut event) => {
                    if self.args.names_owners() {
                        self.owners.resolve(&mut event);
                    }
                    if let Some(resolver) = self.identities.as_mut() {
                        identity::identify(resolver, &mut event);
                    }
                    self.gaps.observe(&mut event);
                    if !self.args.keeps_owner(event.owner()) {
                        continue;
                    }
                    // Events the state list hides still tell what is derived
                    // (a reuse needs the connection that established).
                    self.show(&event)?;
                    // Each event derived is shown where it was made: moving
                    // events (large) through a collection showed in profiles.
                    if let Some(reuse) = self.time_waits.observe(&event) {
                        self.show(&reuse)?;
                    }
                    if let Some(end) = self.sessions.as_mut().and_then(|s| s.observe(&event)) {
                        self.show(&end)?;
                    }
                }
                Err(err) => {
                    if self.summary.malformed == 0 {
                        (self.notify)(Notice::Malformed(err));
                    }
                    self.summary.malformed += 1;
                }
            }
        }
        Ok(())
    }

    /// Counts and prints an event, from the kernel or derived from its (a
    /// session's end, a TIME_WAIT reuse), if the state list shows it.
    fn show(&mut self, event: &Event) -> io::Result<()> {
        if !self.args.shows_states(event) {
            return Ok(());
        }
        if let Some(metrics) = self.metrics.as_mut() {
            metrics.observe(event);
        }
        if !self.args.lists(event) {
            return Ok(());
        }
        self.summary.count(event);
        if self.args.count || self.args.quiet_exporter() {
            return Ok(());
        }
        self.out.event(event)
    }

    /// Reads the limits of namespaces the metrics export (`which`): a kernel
    /// that cannot leaves them to be read from inside.
    fn read_namespace_limits(&self, programs: &Programs, which: Refresh) {
        if let Some(metrics) = &self.metrics {
            metrics.read_namespace_limits(which, |socket, inode| {
                programs.namespace_limits(socket, inode).ok().flatten()
            });
        }
    }

    /// Takes in what the kernel side counted: reports the events it
    /// dropped since the last report.
    fn read_counters(&mut self, counters: &KernelCounters) -> Result<(), TraceError> {
        let (ring_full, skipped) = counters.total()?;
        let failed_reads = counters.failed_reads()?;
        if let Some(metrics) = self.metrics.as_mut() {
            metrics.lost(ring_full, skipped);
            metrics.failed_reads(failed_reads);
            if self.args.kernel_counts_transitions() {
                metrics.counted_transitions(&counters.transitions()?);
            }
        }
        if failed_reads > 0 && self.summary.failed_reads == 0 {
            (self.notify)(Notice::FailedReads);
        }
        self.summary.failed_reads = failed_reads;
        let total = ring_full + skipped;
        self.summary.lost_skipped = skipped;
        if total > self.summary.lost {
            let count = total - self.summary.lost;
            self.summary.lost = total;
            // JSON has it in its stream; a person watching text must not
            // miss it, nor must it break a table piped into another tool.
            if !self.args.json || self.args.quiet_exporter() {
                (self.notify)(Notice::Lost(count));
            }
            if self.args.quiet_exporter() {
                return Ok(());
            }
            let event = Event::Lost {
                time: self.decoder.clock.now(),
                count,
            };
            self.out.event(&event).map_err(TraceError::Output)?;
        }
        Ok(())
    }

    /// With `-c`: the flow table of the interval that ends now.
    fn print_flows(&mut self) -> io::Result<()> {
        let Some(sessions) = self.sessions.as_mut() else {
            return Ok(());
        };
        let flows = sessions.take();
        let shown = self
            .args
            .top
            .map_or(flows.len(), |n| flows.len().min(n as usize));
        self.out
            .flows(self.decoder.clock.now(), &flows[..shown], flows.len())
    }

    /// `Ok(true)` to go on, `Ok(false)` when the reader closed the pipe: the
    /// session then ends quietly, as `head` expects.
    fn keep_going(&mut self, result: io::Result<()>) -> Result<bool, TraceError> {
        match result {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == ErrorKind::BrokenPipe => {
                self.summary.output_closed = true;
                Ok(false)
            }
            Err(e) => Err(TraceError::Output(e)),
        }
    }
}

async fn consume(
    args: &Args,
    tracer: Tracer,
    decoder: Decoder,
    tracing_since: Timestamp,
    sinks: Sinks<'_>,
    baseline: Result<Baseline, NotCompared>,
) -> Result<Summary, TraceError> {
    let Sinks {
        out,
        metrics,
        notify,
    } = sinks;
    let Tracer {
        programs,
        attaching_from_ns: _,
        links,
        ring,
        counters,
        census,
    } = tracer;
    // SAFETY: the ring buffer owns its map fd, open and unchanged until the
    // `AsyncFd` (which owns the ring buffer) is dropped.
    let mut ring = unsafe { AsyncFd::register_with_interest(ring, Interest::READABLE) }
        .map_err(|e| TraceError::Poll(e.into()))?;
    let mut consumer = Consumer {
        args,
        decoder,
        owners: Owners::default(),
        identities: args
            .identifies()
            .then(|| {
                args.cgroup_root
                    .clone()
                    .map(identity::cgroup2_at)
                    .or_else(identity::cgroup2_mount)
            })
            .flatten()
            .map(|root| Resolver::new(root, args.pods_dir.clone())),
        gaps: Gaps::default(),
        time_waits: TimeWaits::new(TIME_WAITS_REMEMBERED),
        sessions: (args.state.is_some() || args.count).then(|| Sessions::new(SESSIONS_TRACKED)),
        out,
        metrics,
        notify,
        summary: Summary::default(),
    };
    let drain_interval = if args.quiet_exporter() {
        QUIET_DRAIN_INTERVAL
    } else {
        DRAIN_INTERVAL
    };
    let mut drain_every = FIRST_DRAIN;
    let drain_due = time::sleep(drain_every);
    tokio::pin!(drain_due);
    let mut lost_check = time::interval(LOST_CHECK_INTERVAL);
    lost_check.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut sigterm = signal(SignalKind::terminate()).map_err(TraceError::Poll)?;
    let mut sigint = signal(SignalKind::interrupt()).map_err(TraceError::Poll)?;
    let deadline = async {
        match args.duration {
            Some(d) => time::sleep(d).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(deadline);
    let mut table_tick = args
        .interval
        .map(|every| time::interval_at(time::Instant::now() + every, every));
    let table_due = async |tick: &mut Option<time::Interval>| match tick {
        Some(tick) => tick.tick().await,
        None => std::future::pending().await,
    };

    // The header (text) or `start` event (JSON) tells people and scripts
    // that events are being captured, and since when (`-t` counts from
    // then); `-c`'s tables come later.
    if args.count && !args.json && !args.quiet {
        (consumer.notify)(Notice::CountingFlows);
    }
    let started = consumer
        .out
        .header(tracing_since)
        .and_then(|()| consumer.out.flush());
    if !consumer.keep_going(started)? {
        return Ok(consumer.summary);
    }
    loop {
        let drained = tokio::select! {
            _ = sigint.recv() => break,
            _ = sigterm.recv() => break,
            () = &mut deadline => break,
            guard = ring.readable_mut() => {
                let mut guard = guard.map_err(TraceError::Poll)?;
                let drained = consumer.drain(guard.get_inner_mut());
                guard.clear_ready();
                drained
            }
            () = &mut drain_due => {
                drain_every = (drain_every * 2).min(drain_interval);
                drain_due.as_mut().reset(time::Instant::now() + drain_every);
                consumer.drain(ring.get_mut())
            }
            _ = lost_check.tick() => {
                consumer.read_counters(&counters)?;
                consumer.read_namespace_limits(&programs, Refresh::All);
                Ok(())
            }
            _ = table_due(&mut table_tick) => {
                consumer.drain(ring.get_mut()).and_then(|()| consumer.print_flows())
            }
        };
        consumer.read_namespace_limits(&programs, Refresh::New);
        let flushed = drained.and_then(|()| consumer.out.flush());
        if !consumer.keep_going(flushed)? {
            return Ok(consumer.summary);
        }
    }
    let baseline = baseline.and_then(Baseline::detaching);
    // Detach first: then the last drain sees everything the programs queued.
    drop(links);
    let drained = consumer.drain(ring.get_mut());
    consumer.read_counters(&counters)?;
    let flushed = drained
        .and_then(|()| {
            if args.count {
                consumer.print_flows()
            } else {
                Ok(())
            }
        })
        .and_then(|()| consumer.out.flush());
    if consumer.keep_going(flushed)? {
        consumer.summary.reconciliation = Some(baseline.and_then(|b| b.compare(&consumer.summary)));
    }
    if args.state.is_some() {
        consumer.summary.kernel_maps = Some(census.count());
    }
    Ok(consumer.summary)
}
