//! A tracing session: discover this kernel's layouts, load the programs, and
//! consume the ring buffer until stopped.
use std::{
    io::{self, ErrorKind},
    path::Path,
    time::Duration,
};

use aya::maps::{MapData, RingBuf};
use tcpretrans_common::{Filter, SockOffsets, filter_flags};
use thiserror::Error;
use tokio::{
    io::{Interest, unix::AsyncFd},
    signal::unix::{SignalKind, signal},
    time::{self, MissedTickBehavior},
};

use crate::{
    btf::{self, Btf, BtfError},
    cli::Args,
    decode::{self, Clock, Event},
    loader::{LoadError, LostCounter, Plan, Tracer},
    output::{self, Output},
    tracefs::{FormatError, Tracefs},
};

/// How often the ring buffer is drained when the kernel side did not force a
/// wakeup: bounds the delay from event to printed line.
const DRAIN_INTERVAL: Duration = Duration::from_millis(20);
const RING_BYTES: u32 = 4 << 20;

#[derive(Debug, Error)]
pub enum TraceError {
    #[error(transparent)]
    Format(#[from] FormatError),
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error("--netns needs the kernel's BTF to read a socket's namespace, and {0}")]
    NetnsWithoutBtf(String),
    #[error("cannot watch the ring buffer: {0}")]
    Poll(#[source] io::Error),
    #[error("writing output failed: {0}")]
    Output(#[source] io::Error),
}

/// What a session saw, for the exit summary.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Summary {
    pub events: u64,
    /// Events the kernel side could not queue.
    pub lost: u64,
    /// Records that did not decode (a kernel/userspace mismatch; never expected).
    pub malformed: u64,
    /// The reader of our output went away (`| head`): end quietly.
    pub output_closed: bool,
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} events, {} lost", self.events, self.lost)?;
        if self.malformed > 0 {
            write!(f, ", {} malformed", self.malformed)?;
        }
        Ok(())
    }
}

/// Resolves this kernel's layouts and the user's selection into a load plan.
pub fn plan(args: &Args, tracefs: &Tracefs) -> Result<Plan, TraceError> {
    let retransmit = tracefs
        .format("tcp", "tcp_retransmit_skb")?
        .retransmit_fields()?;
    let state = tracefs
        .format("sock", "inet_sock_set_state")?
        .state_fields()?;
    let btf_path = args.btf.as_deref().unwrap_or(Path::new(btf::VMLINUX));
    let sock = match Btf::from_file(btf_path) {
        Ok(btf) => {
            let (offsets, missing) = btf::sock_offsets(&btf);
            if !missing.is_empty() {
                let names: Vec<String> = missing.iter().map(btf::Member::describe).collect();
                eprintln!(
                    "tcpretrans: kernel BTF lacks {}: the network namespace is shown as unknown",
                    names.join(", ")
                );
            }
            offsets
        }
        Err(err) => {
            if args.netns.is_some() {
                return Err(TraceError::NetnsWithoutBtf(describe_btf_error(&err)));
            }
            eprintln!(
                "tcpretrans: {}; the network namespace is shown as unknown",
                describe_btf_error(&err)
            );
            SockOffsets::UNKNOWN
        }
    };
    if args.netns.is_some() && !sock.has_netns() {
        return Err(TraceError::NetnsWithoutBtf(
            "this kernel's BTF lacks the members it needs".into(),
        ));
    }
    let selection = args.selection();
    let filter = Filter {
        netns: selection.netns,
        family: selection.family,
        state_mask: selection.state_mask,
        flags: if selection.state_events {
            filter_flags::STATE_EVENTS
        } else {
            0
        },
    };
    Ok(Plan {
        retransmit,
        state,
        sock,
        filter,
        ring_bytes: RING_BYTES,
    })
}

fn describe_btf_error(err: &BtfError) -> String {
    match err {
        BtfError::Read { path, source } if source.kind() == ErrorKind::NotFound => {
            format!("kernel BTF {path} does not exist")
        }
        other => other.to_string(),
    }
}

/// Runs a session to its end: Ctrl-C, SIGTERM, `--duration`, or a closed
/// output pipe. Events go to stdout; the summary is the caller's to print.
pub async fn run(args: &Args) -> Result<Summary, TraceError> {
    let tracefs = Tracefs::find_or_mount()?;
    let plan = plan(args, &tracefs)?;
    let tracer = Tracer::load(&plan)?;
    let mut out = output::new(args.json, io::stdout());
    consume(tracer, out.as_mut(), args.duration).await
}

/// Drains the ring buffer into the output and keeps the session's counts.
struct Consumer<'a> {
    clock: Clock,
    out: &'a mut dyn Output,
    summary: Summary,
}

impl Consumer<'_> {
    fn drain(&mut self, ring: &mut RingBuf<MapData>) -> io::Result<()> {
        while let Some(record) = ring.next() {
            match decode::decode(&record, &self.clock) {
                Ok(event) => {
                    self.summary.events += 1;
                    self.out.event(&event)?;
                }
                Err(err) => {
                    if self.summary.malformed == 0 {
                        eprintln!("tcpretrans: skipping malformed event: {err}");
                    }
                    self.summary.malformed += 1;
                }
            }
        }
        Ok(())
    }

    /// Reports events the kernel side dropped since the last report.
    fn report_lost(&mut self, lost: &LostCounter) -> Result<(), TraceError> {
        let total = lost.total()?;
        if total > self.summary.lost {
            let event = Event::Lost {
                time: self.clock.now(),
                count: total - self.summary.lost,
            };
            self.summary.lost = total;
            self.out.event(&event).map_err(TraceError::Output)?;
        }
        Ok(())
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
    tracer: Tracer,
    out: &mut dyn Output,
    duration: Option<Duration>,
) -> Result<Summary, TraceError> {
    let Tracer {
        programs: _attached,
        ring,
        lost,
    } = tracer;
    // SAFETY: the ring buffer owns its map fd, open and unchanged until the
    // `AsyncFd` (which owns the ring buffer) is dropped.
    let mut ring = unsafe { AsyncFd::register_with_interest(ring, Interest::READABLE) }
        .map_err(|e| TraceError::Poll(e.into()))?;
    let mut consumer = Consumer {
        clock: Clock::new(),
        out,
        summary: Summary::default(),
    };
    let mut tick = time::interval(DRAIN_INTERVAL);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut sigterm = signal(SignalKind::terminate()).map_err(TraceError::Poll)?;
    let mut sigint = signal(SignalKind::interrupt()).map_err(TraceError::Poll)?;
    let deadline = async {
        match duration {
            Some(d) => time::sleep(d).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(deadline);

    // The header (text) or `start` event (JSON) tells people and scripts
    // that events are being captured from now on.
    let started = consumer
        .out
        .header(consumer.clock.now())
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
            _ = tick.tick() => {
                consumer.report_lost(&lost)?;
                consumer.drain(ring.get_mut())
            }
        };
        let flushed = drained.and_then(|()| consumer.out.flush());
        if !consumer.keep_going(flushed)? {
            return Ok(consumer.summary);
        }
    }
    // What the kernel queued before we stopped still belongs to the session.
    let drained = consumer.drain(ring.get_mut());
    consumer.report_lost(&lost)?;
    let flushed = drained.and_then(|()| consumer.out.flush());
    consumer.keep_going(flushed)?;
    Ok(consumer.summary)
}
