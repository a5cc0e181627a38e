//! The tcpretrans binary under load: started, its JSON Lines counted and
//! timed as they arrive, stopped like Ctrl-C.
use std::{
    collections::BTreeMap,
    io::{ErrorKind, Read},
    path::Path,
    process::{ChildStdout, Command, ExitStatus, Stdio},
    sync::{Arc, Mutex, mpsc},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use jiff::{SignedDuration, Timestamp};
use tcpretrans_lab::process::Watched;

/// Events seen so far, by `event` kind; `lost` sums the `lost` events' counts.
#[derive(Debug, Clone, Default)]
pub struct Seen {
    pub by_kind: BTreeMap<String, u64>,
    pub lost: u64,
    /// Kernel-timestamped events (state, retransmit) by how long after
    /// their kernel time their line arrived here: whole milliseconds, the
    /// last bucket for a second or more.
    pub latency_ms: Vec<u64>,
}

const LATENCY_BUCKETS: usize = 1001;
/// A pipe's default capacity: one read takes all the tracer has written.
const READ_BYTES: usize = 64 << 10;

impl Seen {
    /// The latency under which a fraction `q` of the timed events was
    /// read, in ms (`None` before any).
    pub fn latency_quantile(&self, q: f64) -> Option<usize> {
        let rank = (self.timed() as f64 * q).ceil().max(1.0) as u64;
        let mut seen = 0;
        self.latency_ms.iter().position(|&n| {
            seen += n;
            seen >= rank
        })
    }

    /// Events timed: the population of `latency_quantile`.
    pub fn timed(&self) -> u64 {
        self.latency_ms.iter().sum()
    }

    pub fn total(&self) -> u64 {
        self.by_kind.values().sum()
    }

    pub fn kind(&self, kind: &str) -> u64 {
        self.by_kind.get(kind).copied().unwrap_or_default()
    }

    fn record_latency(&mut self, latency: SignedDuration) {
        if self.latency_ms.is_empty() {
            self.latency_ms = vec![0; LATENCY_BUCKETS];
        }
        let bucket = (latency.as_millis().max(0) as usize).min(LATENCY_BUCKETS - 1);
        self.latency_ms[bucket] += 1;
    }
}

pub struct Tracer {
    process: Watched,
    seen: Arc<Mutex<Seen>>,
    reader: Option<thread::JoinHandle<()>>,
}

/// How the tracer ended.
pub struct Ended {
    pub status: Option<ExitStatus>,
    pub seen: Seen,
    pub stderr: String,
}

impl Tracer {
    /// Starts `binary --json ARGS` and waits for its `start` event.
    pub fn start(binary: &Path, args: &[String]) -> Result<Self> {
        let mut process = Watched::spawn(
            Command::new(binary)
                .arg("--json")
                .args(args)
                .stdout(Stdio::piped()),
        )
        .with_context(|| format!("starting {}", binary.display()))?;
        let seen = Arc::new(Mutex::new(Seen::default()));
        let (ready_tx, ready_rx) = mpsc::channel();
        let stdout = process.take_stdout().context("stdout")?;
        let reader = {
            let seen = seen.clone();
            thread::spawn(move || read_lines(stdout, &seen, &ready_tx))
        };
        if ready_rx.recv_timeout(Duration::from_secs(20)).is_err() {
            process.interrupt();
            bail!("tcpretrans did not start: {}", process.stderr());
        }
        Ok(Self {
            process,
            seen,
            reader: Some(reader),
        })
    }

    pub fn pid(&self) -> u32 {
        self.process.id()
    }

    pub fn seen(&self) -> Seen {
        self.seen.lock().expect("counts").clone()
    }

    /// SIGINT, then everything it printed.
    pub fn stop(mut self) -> Result<Ended> {
        let status = self.process.interrupt();
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
        Ok(Ended {
            status,
            seen: self.seen(),
            stderr: self.process.stderr(),
        })
    }
}

/// Counts and times the tracer's lines until its stdout closes; says
/// `ready` at its `start` event.
///
/// Timing is what this reader must not distort: it runs in this unoptimised
/// build, on 2 cores shared with the workload. Parsing each whole line into
/// JSON values here cost 30-70 us, a quarter of a core at the soak's 12,000
/// lines/s, and each line was timed only after its parse and those of the
/// lines before it; when the thread fell behind, the 64 KiB pipe filled,
/// the tracer blocked writing (`anon_pipe_write`) with its events waiting in
/// the ring buffer, and the soak reported its own backlog (p99 up to 1 s).
/// Now a read's lines are timed when it returns, before any is looked at,
/// and only each line's first fields are read (2.5 us a line, 3 % of a
/// core).
fn read_lines(mut stdout: ChildStdout, seen: &Mutex<Seen>, ready: &mpsc::Sender<()>) {
    if let Err(err) = run_first() {
        eprintln!("the reader keeps its normal priority ({err}): its waits count as latency");
    }
    let clock = ArrivalClock::new();
    let mut times = EventTimes::default();
    let mut chunk = vec![0; READ_BYTES];
    let mut pending = Vec::with_capacity(READ_BYTES);
    loop {
        let read = match stdout.read(&mut chunk) {
            Ok(0) => return,
            Ok(read) => read,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(_) => return,
        };
        let arrived = clock.now();
        pending.extend_from_slice(&chunk[..read]);
        let Some(last_newline) = pending.iter().rposition(|&b| b == b'\n') else {
            continue;
        };
        let mut seen = seen.lock().expect("counts");
        for line in pending[..last_newline].split(|&b| b == b'\n') {
            let Some((kind, rest)) = std::str::from_utf8(line).ok().and_then(event_kind) else {
                continue;
            };
            match kind {
                "start" => {
                    let _ = ready.send(());
                    continue;
                }
                "lost" => seen.lost += lost_count(line).unwrap_or_default(),
                // Only events the kernel stamped: `session_end` and
                // `time_wait_reuse` are derived, with the time of an earlier
                // kernel event; `lost` and `summary` with the tool's clock.
                "state" | "retransmit" => {
                    if let Some(at) = event_time(rest).and_then(|t| times.parse(t)) {
                        seen.record_latency(arrived.duration_since(at));
                    }
                }
                _ => {}
            }
            *seen.by_kind.entry(kind.to_owned()).or_default() += 1;
        }
        drop(seen);
        pending.drain(..=last_newline);
    }
}

/// Puts the calling thread before every normal one on its CPU: a line is
/// then read as soon as it is in the pipe. At a normal priority the
/// workload's threads (in this process, on the same 2 cores) kept the
/// reader waiting for a CPU for up to a second, and the wait was counted as
/// the tool's latency. The reader sleeps in `read` between the tracer's
/// writes, so it takes little of the CPU it is first in line for.
fn run_first() -> std::io::Result<()> {
    let param = nix::libc::sched_param { sched_priority: 10 };
    // SAFETY: a plain system call on the calling thread (pid 0), with a
    // valid parameter.
    if unsafe { nix::libc::sched_setscheduler(0, nix::libc::SCHED_FIFO, &param) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// A line's `event` and the text after it. The tool writes `event` first
/// and, in the events it times, `time` second
/// (`{"event":"state","time":"2026-11-22T10:11:12.345678Z",...`).
fn event_kind(line: &str) -> Option<(&str, &str)> {
    line.strip_prefix(r#"{"event":""#)?.split_once('"')
}

fn event_time(after_kind: &str) -> Option<&str> {
    let (time, _) = after_kind.strip_prefix(r#","time":""#)?.split_once('"')?;
    Some(time)
}

fn lost_count(line: &[u8]) -> Option<u64> {
    serde_json::from_slice::<serde_json::Value>(line).ok()?["count"].as_u64()
}

/// The tool's event times read back. Its text up to the second
/// (`2026-11-22T10:11:12`) is parsed only when it changes: a whole parse
/// per line cost 10 us in this build.
#[derive(Default)]
struct EventTimes {
    second_text: String,
    second: Option<Timestamp>,
}

impl EventTimes {
    fn parse(&mut self, time: &str) -> Option<Timestamp> {
        let (second_text, fraction) = time.strip_suffix('Z')?.split_once('.')?;
        if self.second_text != second_text {
            self.second = format!("{second_text}Z").parse().ok();
            second_text.clone_into(&mut self.second_text);
        }
        let digits = u32::try_from(fraction.len()).ok().filter(|&n| n <= 9)?;
        let nanos = fraction.parse::<i64>().ok()? * 10i64.pow(9 - digits);
        Some(self.second? + SignedDuration::from_nanos(nanos))
    }
}

/// Wall-clock time read off the monotonic clock from one anchor. The tool
/// maps its kernel CLOCK_MONOTONIC stamps to wall time the same way (the
/// offset taken once at its start), so a step of the system clock during a
/// soak (NTP, a resumed VM) shows on neither side, where reading the wall
/// clock here would count it as latency.
struct ArrivalClock {
    anchor: Instant,
    wall: Timestamp,
}

impl ArrivalClock {
    fn new() -> Self {
        Self {
            anchor: Instant::now(),
            wall: Timestamp::now(),
        }
    }

    fn now(&self) -> Timestamp {
        self.wall + self.anchor.elapsed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_gives_its_kind_and_kernel_time() {
        let line = r#"{"event":"state","time":"2026-11-22T10:11:12.345678Z","family":4}"#;
        let (kind, rest) = event_kind(line).unwrap();
        assert_eq!(kind, "state");
        assert_eq!(event_time(rest), Some("2026-11-22T10:11:12.345678Z"));
        assert_eq!(
            event_kind(r#"{"event":"summary","events":3}"#).unwrap().0,
            "summary"
        );
    }

    #[test]
    fn times_read_back_as_a_whole_parse_does_across_seconds() {
        let mut times = EventTimes::default();
        for text in [
            "2026-11-22T10:11:12.345678Z",
            "2026-11-22T10:11:12.999999Z",
            "2026-11-22T10:11:13.000001Z",
        ] {
            assert_eq!(times.parse(text), text.parse().ok());
        }
    }
}
