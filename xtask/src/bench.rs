//! `cargo xtask bench`: tcpretrans against the tools users would otherwise
//! run, on the same work in the same run, interleaved (A B C A B C ...).
//!
//! Workloads run in a lab namespace on loopback; every tool's output goes to
//! a file whose lines are counted afterwards (events delivered vs the
//! transitions the churn made); costs come from /proc (CPU, RSS) and the
//! kernel's BPF run-time statistics of each tool's own programs.
use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use tcpretrans_lab::{
    Netns, bulk_upload,
    churn::Churn,
    drop_inbound,
    kernel_counts::{
        BpfStats, TransitionCount, Transitions, bpf_program_counts, json_socket_transition,
        repeated_transitions,
    },
    process::{Watched, bpf_links},
};

use crate::proc::Usage;

/// Churn rate of the fixed-rate workload: 50,000 state events/s.
const FIXED_RATE: u32 = 5_000;
/// Churn rate of the sustained check: 100,000 state events/s. (At the
/// highest rate the churn takes both CPUs of the benchmark machine and
/// no tracer's reader gets to run.)
const SUSTAINED_RATE: u32 = 10_000;
/// The configuration the sustained check runs.
const SUSTAINED_TOOL: &str = "tcpretrans --state > file";
const CHURN_CLIENTS: u16 = 4;
const CHURN_PORT: u16 = 6000;
/// tcpretrans' state programs (both), as the kernel names them truncated.
const STATE_PROGRAM: &str = match tcpretrans_common::hooks::STATE.raw {
    Some(program) => program,
    None => panic!("the state hook has a raw program"),
};
const UPLOAD_PORT: u16 = 7000;
const UPLOAD_LOSS_PERCENT: u32 = 5;
const UPLOAD_BYTES: usize = 4 << 20;
#[derive(Debug, Clone, clap::Args)]
pub struct Options {
    /// Rounds of every (workload, tool) pair; medians over them.
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    /// Seconds each workload runs per tool and round.
    #[arg(long, default_value_t = 10)]
    pub seconds: u64,
    /// Seconds of the sustained-rate check (tcpretrans to a file, against
    /// the kernel's count; followed by the highest churn for `--seconds`,
    /// counted the same way); 0 skips both.
    #[arg(long, default_value_t = 60)]
    pub sustained: u64,
    /// exec -> first event samples per tool; 0 skips them.
    #[arg(long, default_value_t = 10)]
    pub starts: usize,
    /// Only the tools whose label contains one of these texts (the
    /// untraced baseline always runs), e.g. `--tools tcpretrans,tcpstates`.
    #[arg(long, value_delimiter = ',')]
    pub tools: Vec<String>,
    /// With `--baseline`: instead of everything else, both builds trace one
    /// churn at once, in turns first and second (the second attached runs
    /// with caches warm; use an even number of rounds), and their kernel
    /// time per state event is compared. Steadier than interleaved runs on
    /// a VM whose speed drifts.
    #[arg(long, requires = "baseline")]
    pub side_by_side: bool,
    /// Another tcpretrans binary (e.g. a build of the previous commit)
    /// measured as "baseline --state > file" beside this one.
    #[arg(long)]
    pub baseline: Option<PathBuf>,
    /// Only these workloads (default: all).
    #[arg(long, value_enum, value_delimiter = ',')]
    pub workloads: Vec<Workload>,
}

/// A traced (or untraced) configuration.
#[derive(Debug, Clone)]
struct Tool {
    label: &'static str,
    /// argv; empty: no tracer (the workload alone).
    command: Vec<String>,
    /// Output to /dev/null instead of a file (its events are not counted).
    discard: bool,
    /// Output lines before the first event (headers, "Attaching ...",
    /// tcpretrans' `start`): printed once attached.
    preamble: usize,
    /// How to tell that its programs are attached.
    ready: Ready,
    /// Its stdout is block-buffered by stdio when not a terminal: timing
    /// its first event needs `stdbuf -oL`.
    stdio_buffered: bool,
    /// Prints state transitions: counted in its output, and timed from
    /// exec to the first one.
    reports_states: bool,
    /// Counts an output line (after the preamble) as a state event.
    is_state: fn(&str) -> bool,
    /// A state event line's socket and transition, for tools whose output
    /// has both: the same transition twice in a row for one socket is a
    /// copy (the kernel never repeats one).
    socket_transition: Option<SocketTransition>,
}

/// When a tool's programs are attached.
#[derive(Debug, Clone, Copy)]
enum Ready {
    /// It holds this many BPF links (one per program).
    Links(usize),
    /// It printed its preamble, which it does once attached (tcpretrans'
    /// `start`).
    Printed,
    /// Shortly after its preamble: bpftrace prints it just before
    /// attaching, without links.
    Settled,
}

/// Reads a state event line's socket and transition.
type SocketTransition = fn(&str) -> Option<(&str, &str)>;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, clap::ValueEnum)]
pub enum Workload {
    Idle,
    ChurnFixed,
    ChurnMax,
    Lossy,
    /// Churn at `SUSTAINED_RATE`: only for the sustained check.
    #[value(skip)]
    Sustained,
}

impl Workload {
    const ALL: [Self; 4] = [Self::Idle, Self::ChurnFixed, Self::ChurnMax, Self::Lossy];

    fn name(self) -> &'static str {
        match self {
            Self::Idle => "idle",
            Self::ChurnFixed => "churn 5k conn/s",
            Self::ChurnMax => "churn max",
            Self::Lossy => "lossy bulk",
            Self::Sustained => "churn 10k conn/s",
        }
    }
}

/// One (workload, tool, round) measurement.
#[derive(Debug, Clone, Default)]
struct Run {
    /// Connections/s (churn), MiB/s (bulk).
    throughput: f64,
    /// State transitions the workload made (churn only).
    made: u64,
    /// State events in the tool's output (when written to a file).
    delivered: Option<u64>,
    /// Of them, copies of the event before them for the same socket.
    repeated: Option<u64>,
    cpu: Duration,
    elapsed: Duration,
    peak_rss_kib: u64,
    rss_kib: u64,
    private_kib: u64,
    /// Its stderr lines about events and losses.
    said: String,
    /// The tool's programs over the run.
    programs: Vec<ProgramStats>,
}

/// One BPF program's statistics over a run.
#[derive(Debug, Clone, Default)]
struct ProgramStats {
    /// As the kernel keeps it: truncated to 15 characters.
    name: String,
    runs: u64,
    ns: u64,
    /// Runs the kernel skipped (`recursion_misses`).
    skipped: u64,
}

impl ProgramStats {
    fn since(&self, before: Option<&Self>) -> Self {
        let before = before.cloned().unwrap_or_default();
        Self {
            name: self.name.clone(),
            runs: self.runs - before.runs,
            ns: self.ns - before.ns,
            skipped: self.skipped - before.skipped,
        }
    }
}

pub fn run(binary: &Path, root: &Path, options: &Options) -> Result<()> {
    refuse_other_tracers()?;
    let out_dir = root.join("target/bench");
    fs::create_dir_all(&out_dir)?;
    let tools: Vec<Tool> = tools(
        binary,
        options.baseline.as_deref(),
        &root.join("xtask/bench"),
    )
    .into_iter()
    .filter(|tool| {
        tool.command.is_empty()
            || options.tools.is_empty()
            || options
                .tools
                .iter()
                .any(|only| tool.label.contains(only.as_str()))
    })
    .collect();
    let workloads = if options.workloads.is_empty() {
        Workload::ALL.to_vec()
    } else {
        options.workloads.clone()
    };
    let _stats = BpfStats::enable()?;
    if options.side_by_side {
        let [ours, baseline] = ["tcpretrans --state > file", "baseline --state > file"]
            .map(|label| tools.iter().find(|t| t.label == label));
        let (Some(ours), Some(baseline)) = (ours, baseline) else {
            bail!("--side-by-side needs both builds' `--state > file` among --tools");
        };
        return side_by_side(ours, baseline, options, &out_dir);
    }

    let mut runs: BTreeMap<(Workload, usize), Vec<Run>> = BTreeMap::new();
    for round in 0..options.rounds {
        for &workload in &workloads {
            for (index, tool) in tools.iter().enumerate() {
                if tool.command.is_empty() && workload == Workload::Idle {
                    continue;
                }
                let run = measure(tool, workload, options.seconds, &out_dir)?;
                eprintln!(
                    "bench: round {} {:<16} {:<28} {:>9.0}/s made {:>8} delivered {:>8} repeated {:>3} cpu {:>6.2}s {}{}",
                    round + 1,
                    workload.name(),
                    tool.label,
                    run.throughput,
                    run.made,
                    run.delivered.map_or("-".into(), |d| d.to_string()),
                    run.repeated.map_or("-".into(), |d| d.to_string()),
                    run.cpu.as_secs_f64(),
                    run.said,
                    skipped(&run),
                );
                runs.entry((workload, index)).or_default().push(run);
            }
        }
    }
    let starts = start_times(&tools, options.starts, &out_dir)?;
    let checked = match tools.iter().find(|t| t.label == SUSTAINED_TOOL) {
        Some(tool) if options.sustained > 0 => vec![
            against_kernel_count(tool, Workload::Sustained, options.sustained, &out_dir)?,
            against_kernel_count(tool, Workload::ChurnMax, options.seconds, &out_dir)?,
        ],
        _ => Vec::new(),
    };
    let sizes: Vec<Option<u64>> = tools.iter().map(binary_size).collect();
    print!(
        "{}",
        report(&tools, &runs, &starts, &sizes, &checked, options)
    );
    Ok(())
}

/// Tracers left running (e.g. by an interrupted benchmark) would add their
/// cost to every measurement and their lines to the output files.
fn refuse_other_tracers() -> Result<()> {
    let running: Vec<String> = fs::read_dir("/proc")?
        .filter_map(Result::ok)
        // Zombies (reaped by no one here) cost nothing.
        .filter(|entry| {
            fs::read_to_string(entry.path().join("stat")).is_ok_and(|stat| !stat.contains(") Z "))
        })
        .filter_map(|entry| fs::read_to_string(entry.path().join("comm")).ok())
        .map(|comm| comm.trim().to_owned())
        .filter(|comm| matches!(comm.as_str(), "tcpretrans" | "tcpstates" | "bpftrace"))
        .collect();
    if !running.is_empty() {
        bail!(
            "other tracers are running ({}): stop them first, they would distort every measurement",
            running.join(", ")
        );
    }
    Ok(())
}

/// Where the metrics-only tracer serves (nothing scrapes it in the bench).
const METRICS_ENDPOINT: &str = "127.0.0.1:19431";

fn tools(binary: &Path, baseline: Option<&Path>, scripts: &Path) -> Vec<Tool> {
    let tcpretrans = |binary: &Path, args: &[&str]| {
        let mut command = vec![binary.display().to_string(), "--json".into()];
        command.extend(args.iter().map(|a| a.to_string()));
        command
    };
    let ours = |args: &[&str]| tcpretrans(binary, args);
    let json_state: fn(&str) -> bool = |l| l.starts_with("{\"event\":\"state\"");
    let any_line: fn(&str) -> bool = |_| true;
    let bpftrace = |script: &str| {
        vec![
            "bpftrace".into(),
            scripts.join(script).display().to_string(),
        ]
    };
    let mut tools = vec![
        Tool {
            label: "none",
            reports_states: false,
            command: vec![],
            discard: true,
            preamble: 0,
            ready: Ready::Printed,
            stdio_buffered: false,
            is_state: any_line,
            socket_transition: None,
        },
        Tool {
            label: "tcpretrans --state > file",
            reports_states: true,
            command: ours(&["--state"]),
            discard: false,
            preamble: 1,
            ready: Ready::Links(8),
            stdio_buffered: false,
            is_state: json_state,
            socket_transition: Some(json_socket_transition),
        },
        Tool {
            label: "tcpretrans --state > null",
            reports_states: true,
            command: ours(&["--state"]),
            discard: true,
            preamble: 1,
            ready: Ready::Links(8),
            stdio_buffered: false,
            is_state: json_state,
            socket_transition: Some(json_socket_transition),
        },
        Tool {
            label: "tcpretrans --metrics -q",
            reports_states: false,
            command: ours(&["--metrics", METRICS_ENDPOINT, "-q"]),
            discard: true,
            preamble: 0,
            // The state programs run for the metrics.
            ready: Ready::Links(8),
            stdio_buffered: false,
            is_state: |_| false,
            socket_transition: None,
        },
        Tool {
            label: "tcpretrans (default)",
            reports_states: false,
            command: ours(&[]),
            discard: false,
            preamble: 1,
            ready: Ready::Links(6),
            stdio_buffered: false,
            is_state: json_state,
            socket_transition: Some(json_socket_transition),
        },
        Tool {
            label: "libbpf-tools tcpstates",
            reports_states: true,
            ready: Ready::Links(1),
            stdio_buffered: true,
            command: vec!["tcpstates".into()],
            discard: false,
            preamble: 1,
            is_state: any_line,
            socket_transition: None,
        },
        Tool {
            label: "bpftrace tcpstates.bt",
            reports_states: true,
            ready: Ready::Settled,
            stdio_buffered: false,
            command: bpftrace("tcpstates.bt"),
            discard: false,
            preamble: 1,
            is_state: any_line,
            socket_transition: None,
        },
        Tool {
            label: "bpftrace tcpretrans.bt",
            reports_states: false,
            ready: Ready::Settled,
            stdio_buffered: false,
            command: bpftrace("tcpretrans.bt"),
            discard: false,
            preamble: 1,
            is_state: |_| false,
            socket_transition: None,
        },
        Tool {
            label: "bpftrace empty program",
            reports_states: false,
            ready: Ready::Settled,
            stdio_buffered: false,
            command: bpftrace("empty.bt"),
            discard: false,
            preamble: 1,
            is_state: |_| false,
            socket_transition: None,
        },
    ];
    if let Some(baseline) = baseline
        && let Some(ours) = tools.iter().find(|t| t.label == SUSTAINED_TOOL).cloned()
    {
        tools.insert(
            2,
            Tool {
                label: "baseline --state > file",
                command: tcpretrans(baseline, &["--state"]),
                // Its program count may differ.
                ready: Ready::Printed,
                ..ours
            },
        );
    }
    tools
}

/// A running tool, its output in a file.
struct Traced {
    process: Watched,
    output: PathBuf,
    programs: BTreeSet<u32>,
    started: Instant,
}

impl Traced {
    /// Starts `tool` and waits until its programs are attached.
    fn start(tool: &Tool, out_dir: &Path) -> Result<Self> {
        let before = program_ids();
        let mut traced = Self::spawn(tool, out_dir)?;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let ready = match tool.ready {
                Ready::Links(links) => bpf_links(traced.process.id()) >= links,
                Ready::Printed | Ready::Settled => traced.lines() >= tool.preamble as u64,
            };
            let loaded: BTreeSet<u32> = program_ids().difference(&before).copied().collect();
            if ready && !loaded.is_empty() {
                traced.programs = loaded;
                if let Ready::Settled = tool.ready {
                    thread::sleep(Duration::from_millis(100));
                }
                break;
            }
            if Instant::now() > deadline || !traced.process.running() {
                bail!("{} did not start: {}", tool.label, traced.process.stderr());
            }
            thread::sleep(Duration::from_millis(1));
        }
        Ok(traced)
    }

    /// Starts `tool`, without waiting: its `programs` stay unknown.
    fn spawn(tool: &Tool, out_dir: &Path) -> Result<Self> {
        let output = out_dir.join(format!("{}.out", tool.label.replace([' ', '/', '>'], "_")));
        let stdout = if tool.discard {
            Stdio::null()
        } else {
            fs::File::create(&output)?.into()
        };
        let started = Instant::now();
        let process = Watched::spawn(
            Command::new(&tool.command[0])
                .args(&tool.command[1..])
                .stdout(stdout),
        )
        .with_context(|| format!("starting {}", tool.label))?;
        Ok(Self {
            process,
            output,
            programs: BTreeSet::new(),
            started,
        })
    }

    /// Its programs' counts so far.
    fn program_stats(&self) -> BTreeMap<u32, ProgramStats> {
        program_stats(self.process.id(), &self.programs)
    }

    /// Its programs' counts since `before`.
    fn programs_since(&self, before: &BTreeMap<u32, ProgramStats>) -> Vec<ProgramStats> {
        self.program_stats()
            .iter()
            .map(|(id, after)| after.since(before.get(id)))
            .collect()
    }

    fn lines(&self) -> u64 {
        fs::read(&self.output).map_or(0, |b| b.iter().filter(|&&c| c == b'\n').count() as u64)
    }

    /// Stops it like Ctrl-C; what it said on stderr.
    fn stop(&mut self) -> String {
        self.process.interrupt();
        self.process.stderr()
    }
}

/// IDs of every BPF program loaded on the host.
fn program_ids() -> BTreeSet<u32> {
    aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .map(|p| p.id())
        .collect()
}

/// Statistics of these programs (of process `pid`) by program id.
fn program_stats(pid: u32, ids: &BTreeSet<u32>) -> BTreeMap<u32, ProgramStats> {
    let counts = bpf_program_counts(pid);
    aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .filter(|p| ids.contains(&p.id()))
        .map(|p| {
            let stats = ProgramStats {
                name: p.name_as_str().unwrap_or("?").to_owned(),
                runs: p.run_count(),
                ns: p.run_time().as_nanos() as u64,
                skipped: counts.get(&p.id()).map_or(0, |c| c.skipped),
            };
            (p.id(), stats)
        })
        .collect()
}

/// A namespace for one measurement: a fresh one per run, so that no run
/// inherits another's TIME_WAIT sockets.
fn lab() -> Netns {
    let ns = Netns::new("bench");
    Churn::tune(&ns);
    drop_inbound(&ns, UPLOAD_PORT, UPLOAD_LOSS_PERCENT);
    ns
}

fn measure(tool: &Tool, workload: Workload, seconds: u64, out_dir: &Path) -> Result<Run> {
    let ns = &lab();
    let duration = Duration::from_secs(seconds);
    let traced = if tool.command.is_empty() {
        None
    } else {
        Some(Traced::start(tool, out_dir)?)
    };
    let pid = traced.as_ref().map(|t| t.process.id());
    let usage_before = pid.and_then(Usage::of).unwrap_or_default();
    let stats_before = traced
        .as_ref()
        .map(Traced::program_stats)
        .unwrap_or_default();
    let started = Instant::now();
    let (throughput, made) = match workload {
        Workload::Idle => {
            thread::sleep(duration);
            (0.0, 0)
        }
        Workload::ChurnFixed | Workload::ChurnMax | Workload::Sustained => {
            let report = Churn {
                rate: match workload {
                    Workload::ChurnFixed => Some(FIXED_RATE),
                    Workload::Sustained => Some(SUSTAINED_RATE),
                    _ => None,
                },
                duration,
                clients: CHURN_CLIENTS,
                base_port: CHURN_PORT,
                nice: 0,
            }
            .run(ns);
            (report.per_second(), report.transitions(CHURN_CLIENTS))
        }
        Workload::Lossy => {
            let server = ([127, 0, 0, 1], UPLOAD_PORT).into();
            let mut bytes = 0;
            while started.elapsed() < duration {
                bulk_upload(ns, server, UPLOAD_BYTES);
                bytes += UPLOAD_BYTES;
            }
            (
                bytes as f64 / (1 << 20) as f64 / started.elapsed().as_secs_f64(),
                0,
            )
        }
    };
    let elapsed = started.elapsed();
    let Some(mut traced) = traced else {
        return Ok(Run {
            throughput,
            made,
            elapsed,
            ..Run::default()
        });
    };
    // Let the last events reach the output.
    thread::sleep(Duration::from_millis(300));
    let usage = Usage::of(traced.process.id()).unwrap_or_default();
    let programs = traced.programs_since(&stats_before);
    let output = traced.output.clone();
    let stderr = traced.stop();
    let text = fs::read_to_string(&output).unwrap_or_default();
    let state_lines = || {
        text.lines()
            .skip(tool.preamble)
            .filter(|l| (tool.is_state)(l))
    };
    let delivered = (!tool.discard).then(|| state_lines().count() as u64);
    // Once events are lost, a socket address freed and reused can show one
    // transition in two of its lives, those between lost: repeats then
    // prove no copy (at the highest churn all of them were such pairs).
    let lost_some = text.lines().any(|l| l.starts_with("{\"event\":\"lost\""));
    let repeated = tool
        .socket_transition
        .filter(|_| !tool.discard && !lost_some)
        .map(|transition_of| repeated_transitions(state_lines().filter_map(transition_of)));
    let _ = fs::remove_file(&output);
    let said = said_about_events(&stderr);
    Ok(Run {
        said,
        throughput,
        made,
        delivered,
        repeated,
        cpu: usage.cpu.saturating_sub(usage_before.cpu),
        elapsed,
        peak_rss_kib: usage.peak_rss_kib,
        rss_kib: usage.rss_kib,
        private_kib: usage.private_kib,
        programs,
    })
}

/// Both builds on one churn at `FIXED_RATE`, each round in the other
/// attach order: kernel ns per state event of each, and their ratio.
fn side_by_side(ours: &Tool, baseline: &Tool, options: &Options, out_dir: &Path) -> Result<()> {
    let mut ns = [Vec::new(), Vec::new()];
    for round in 0..options.rounds {
        let ns_lab = &lab();
        let order = if round % 2 == 0 {
            [ours, baseline]
        } else {
            [baseline, ours]
        };
        let traced = order
            .iter()
            .map(|tool| Traced::start(tool, out_dir))
            .collect::<Result<Vec<_>>>()?;
        let before: Vec<_> = traced.iter().map(Traced::program_stats).collect();
        Churn {
            rate: Some(FIXED_RATE),
            duration: Duration::from_secs(options.seconds),
            clients: CHURN_CLIENTS,
            base_port: CHURN_PORT,
            nice: 0,
        }
        .run(ns_lab);
        let per_event: Vec<f64> = traced
            .iter()
            .zip(&before)
            .map(|(t, before)| busiest(&t.programs_since(before)).map_or(f64::NAN, |(_, _, ns)| ns))
            .collect();
        for mut t in traced {
            let _ = fs::remove_file(&t.output);
            t.stop();
        }
        let (first, second) = (per_event[0], per_event[1]);
        let (this, base) = if round % 2 == 0 {
            (first, second)
        } else {
            (second, first)
        };
        eprintln!(
            "bench: round {} side by side, {} first: {this:.0} vs baseline {base:.0} ns per state event",
            round + 1,
            if round % 2 == 0 {
                "this build"
            } else {
                "baseline"
            },
        );
        ns[0].push(this);
        ns[1].push(base);
    }
    // Each build is first in every other round: the mean over an even
    // number of rounds weighs both places alike (the first pays ~20 % more
    // for cold caches).
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
    let (this, base) = (mean(&ns[0]), mean(&ns[1]));
    println!(
        "side by side, {} rounds x {} s at {} conn/s, mean of both places: this build {this:.0} ns per state event, baseline {base:.0} ns: {:.3}x",
        options.rounds,
        options.seconds,
        FIXED_RATE,
        this / base,
    );
    Ok(())
}

/// What a tool said on stderr about events and losses, in one line:
/// tcpretrans' summary, or the sum of tcpstates' per-CPU `lost N events`.
fn said_about_events(stderr: &str) -> String {
    let lines: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("lost") || l.contains("events"))
        .collect();
    if lines.len() <= 2 {
        return lines.join("; ");
    }
    let lost: u64 = lines
        .iter()
        .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        .sum();
    format!("{lost} events lost, in {} reports", lines.len())
}

/// exec -> first event, `samples` times per tool (interleaved), while
/// churn makes events: the time until the first line after the preamble.
fn start_times(tools: &[Tool], samples: usize, out_dir: &Path) -> Result<Vec<Vec<Duration>>> {
    if samples == 0 {
        return Ok(vec![Vec::new(); tools.len()]);
    }
    let ns = &lab();
    let stop = Arc::new(AtomicBool::new(false));
    let churn = Churn {
        rate: Some(FIXED_RATE),
        duration: Duration::from_secs(600),
        clients: CHURN_CLIENTS,
        base_port: CHURN_PORT,
        nice: 0,
    };
    thread::scope(|scope| {
        let churning = scope.spawn(|| churn.run_until(ns, &stop));
        let mut times = vec![Vec::new(); tools.len()];
        let measured = (|| {
            for _ in 0..samples {
                for (tool, times) in tools.iter().zip(&mut times) {
                    if tool.command.is_empty() || tool.discard || !tool.reports_states {
                        continue;
                    }
                    let mut tool = tool.clone();
                    if tool.stdio_buffered {
                        tool.command.splice(0..0, ["stdbuf".into(), "-oL".into()]);
                    }
                    // Not `start`: its readiness checks would add their
                    // sleeps and /proc scans to the time measured.
                    let mut traced = Traced::spawn(&tool, out_dir)?;
                    let deadline = Instant::now() + Duration::from_secs(10);
                    while traced.lines() <= tool.preamble as u64 && Instant::now() < deadline {
                        if !traced.process.running() {
                            bail!("{} did not start: {}", tool.label, traced.process.stderr());
                        }
                        thread::sleep(Duration::from_micros(200));
                    }
                    times.push(traced.started.elapsed());
                    traced.stop();
                    // A tracer's programs and maps are freed after its exit,
                    // in the background: not on the next one's time.
                    thread::sleep(Duration::from_millis(300));
                }
            }
            Ok(times)
        })();
        stop.store(true, Ordering::Relaxed);
        churning.join().expect("churn");
        measured
    })
}

/// What a check against the kernel's count found.
struct Checked {
    workload: Workload,
    seconds: u64,
    events_per_second: f64,
    made: u64,
    /// The kernel's count of the transitions on the churn's ports.
    kernel_made: Transitions,
    /// Times the kernel ran, or skipped, the tool's state programs: once
    /// per transition it gave them.
    given: u64,
    delivered: u64,
    repeated: u64,
    said: String,
    cpu: Duration,
}

/// Churn (`workload`) for `seconds`, tcpretrans --state to a file, with the
/// kernel counting the transitions it made (ftrace) and how often it gave
/// them to the tool's state programs: what is missing can then be placed.
fn against_kernel_count(
    tool: &Tool,
    workload: Workload,
    seconds: u64,
    out_dir: &Path,
) -> Result<Checked> {
    let kernel = TransitionCount::start(std::iter::once(CHURN_PORT..CHURN_PORT + CHURN_CLIENTS))?;
    let run = measure(tool, workload, seconds, out_dir)?;
    Ok(Checked {
        workload,
        seconds,
        events_per_second: run.made as f64 / run.elapsed.as_secs_f64(),
        made: run.made,
        kernel_made: kernel.stop()?,
        given: run
            .programs
            .iter()
            .filter(|p| STATE_PROGRAM.starts_with(&p.name))
            .map(|p| p.runs + p.skipped)
            .max()
            .unwrap_or_default(),
        delivered: run.delivered.unwrap_or_default(),
        repeated: run.repeated.unwrap_or_default(),
        said: run.said,
        cpu: run.cpu,
    })
}

/// The size of the tool's executable (bpftrace scripts: bpftrace's).
fn binary_size(tool: &Tool) -> Option<u64> {
    let program = tool.command.first()?;
    let path = if program.contains('/') {
        PathBuf::from(program)
    } else {
        std::env::split_paths(&std::env::var_os("PATH")?)
            .map(|dir| dir.join(program))
            .find(|p| p.is_file())?
    };
    fs::metadata(path).ok().map(|m| m.len())
}

/// `median (min-max)` of the values.
fn spread(mut values: Vec<f64>, digits: usize) -> String {
    if values.is_empty() {
        return "-".into();
    }
    values.sort_by(f64::total_cmp);
    let median = values[values.len() / 2];
    let (min, max) = (values[0], values[values.len() - 1]);
    if values.len() == 1 {
        format!("{median:.digits$}")
    } else {
        format!("{median:.digits$} ({min:.digits$}-{max:.digits$})")
    }
}

/// The program a tool runs most under churn (its state program): its name
/// and runs, and the time per run of all the tool's programs of that name
/// (those on the same tracepoint: tcpretrans has two on the state one).
fn busiest(programs: &[ProgramStats]) -> Option<(&str, u64, f64)> {
    let busiest = programs.iter().max_by_key(|p| p.runs)?;
    let ns: u64 = programs
        .iter()
        .filter(|p| p.name == busiest.name)
        .map(|p| p.ns)
        .sum();
    Some((
        &busiest.name,
        busiest.runs,
        ns as f64 / busiest.runs.max(1) as f64,
    ))
}

/// Runs the kernel skipped, by program, e.g. `inet_sock_set_s 12`.
fn skipped(run: &Run) -> String {
    let skipped: Vec<String> = run
        .programs
        .iter()
        .filter(|p| p.skipped > 0)
        .map(|p| format!("{} {}", p.name, p.skipped))
        .collect();
    if skipped.is_empty() {
        String::new()
    } else {
        format!(" [skipped runs: {}]", skipped.join(", "))
    }
}

fn report(
    tools: &[Tool],
    runs: &BTreeMap<(Workload, usize), Vec<Run>>,
    starts: &[Vec<Duration>],
    sizes: &[Option<u64>],
    checked: &[Checked],
    options: &Options,
) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{} rounds x {} s per workload and tool, interleaved; median (min-max).\n",
        options.rounds, options.seconds
    );
    let workloads: BTreeSet<Workload> = runs.keys().map(|&(w, _)| w).collect();
    for workload in workloads {
        let _ = writeln!(out, "### {}\n", workload.name());
        let _ = writeln!(
            out,
            "| tool | workload rate | delivered / made | CPU per 100k events | CPU % | busiest program | ns/run | runs/s | RSS MiB at end | of it private | peak RSS MiB |"
        );
        let _ = writeln!(out, "|---|---|---|---|---|---|---|---|---|---|---|");
        for (index, tool) in tools.iter().enumerate() {
            let Some(runs) = runs.get(&(workload, index)) else {
                continue;
            };
            let rate = spread(runs.iter().map(|r| r.throughput).collect(), 0);
            let churn = matches!(workload, Workload::ChurnFixed | Workload::ChurnMax);
            let delivered =
                if churn && tool.reports_states && runs.iter().all(|r| r.delivered.is_some()) {
                    let d: u64 = runs.iter().filter_map(|r| r.delivered).sum();
                    let m: u64 = runs.iter().map(|r| r.made).sum();
                    format!("{d} / {m}")
                } else {
                    "-".into()
                };
            let per_100k = if !churn || tool.command.is_empty() {
                "-".into()
            } else {
                spread(
                    runs.iter()
                        .filter(|r| r.made > 0)
                        .map(|r| r.cpu.as_secs_f64() * 1e3 / (r.made as f64 / 1e5))
                        .collect(),
                    1,
                ) + " ms"
            };
            let cpu = spread(
                runs.iter()
                    .map(|r| r.cpu.as_secs_f64() / r.elapsed.as_secs_f64() * 100.0)
                    .collect(),
                2,
            );
            let program = runs
                .first()
                .and_then(|r| busiest(&r.programs))
                .map_or("-".into(), |(name, _, _)| name.to_owned());
            let ns_per_run = spread(
                runs.iter()
                    .filter_map(|r| busiest(&r.programs))
                    .filter(|&(_, runs, _)| runs > 0)
                    .map(|(_, _, ns)| ns)
                    .collect(),
                0,
            );
            let runs_per_s = spread(
                runs.iter()
                    .filter_map(|r| {
                        busiest(&r.programs)
                            .map(|(_, runs, _)| runs as f64 / r.elapsed.as_secs_f64())
                    })
                    .collect(),
                0,
            );
            let mib = |kib: fn(&Run) -> u64| {
                spread(runs.iter().map(|r| kib(r) as f64 / 1024.0).collect(), 1)
            };
            let (cpu, rss, private, peak) = if tool.command.is_empty() {
                ("-".into(), "-".into(), "-".into(), "-".into())
            } else {
                (
                    cpu,
                    mib(|r| r.rss_kib),
                    mib(|r| r.private_kib),
                    mib(|r| r.peak_rss_kib),
                )
            };
            let _ = writeln!(
                out,
                "| {} | {rate} | {delivered} | {per_100k} | {cpu} | {program} | {ns_per_run} | {runs_per_s} | {rss} | {private} | {peak} |",
                tool.label
            );
        }
        let _ = writeln!(out);
    }
    let _ = writeln!(out, "### start-up and size\n");
    let _ = writeln!(
        out,
        "| tool | exec -> first event, p50 (min-max) ms | binary size |"
    );
    let _ = writeln!(out, "|---|---|---|");
    for ((tool, times), size) in tools.iter().zip(starts).zip(sizes) {
        if times.is_empty() && size.is_none() {
            continue;
        }
        let times: Vec<f64> = times.iter().map(|t| t.as_secs_f64() * 1e3).collect();
        let _ = writeln!(
            out,
            "| {} | {} | {} |",
            tool.label,
            spread(times, 1),
            size.map_or("-".into(), |s| format!(
                "{:.1} MiB",
                s as f64 / (1 << 20) as f64
            ))
        );
    }
    if checked.is_empty() {
        return out;
    }
    let _ = writeln!(
        out,
        "\n### against the kernel's count\n\n`tcpretrans --state --json > file`, the kernel counting the \
         transitions on the churn's ports (ftrace, which slows the churn) and how often it gave them to the \
         tool's state programs:\n"
    );
    for check in checked {
        let _ = writeln!(
            out,
            "- {} for {} s: {:.0} state events/s made, {} delivered of {} (the kernel's count; the churn's \
             own: {}; the kernel gave the tool's state programs {}): {} missing ({} of the kernel's count made \
             on process 1's threads, where this VM runs no BPF program), {} delivered twice; the tool said: {}. \
             Tracer CPU {:.1} s ({:.2}% of a core)",
            check.workload.name(),
            check.seconds,
            check.events_per_second,
            check.delivered,
            check.kernel_made.made,
            check.made,
            check.given,
            check
                .kernel_made
                .made
                .saturating_sub(check.delivered - check.repeated),
            check.kernel_made.on_init_threads,
            check.repeated,
            check.said,
            check.cpu.as_secs_f64(),
            check.cpu.as_secs_f64() / check.seconds as f64 * 100.0
        );
    }
    out
}
