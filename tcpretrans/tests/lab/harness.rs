//! The kernel lab: network namespaces the tests create and always remove,
//! real TCP traffic inside them (both from `tcpretrans-lab`), the real
//! tracer binary watching, and the kernel's own counters to compare with.
use std::{
    fs::{self, File},
    io::{BufRead, BufReader},
    path::PathBuf,
    process::{Command, ExitStatus, Stdio},
    sync::{
        OnceLock,
        atomic::{AtomicU32, Ordering},
        mpsc,
    },
    thread,
    time::{Duration, Instant},
};

use serde_json::Value;
use tcpretrans::cli::exit_status::EVENTS_NOT_SEEN;
use tcpretrans_lab::process::Watched;
pub use tcpretrans_lab::{
    Netns, PATIENCE, bulk_upload, connected, delta, drop_inbound, drop_inbound_matching,
    refused_without_waiting, short_connection,
};

/// The real tcpretrans binary, running until stopped (killed if the test
/// fails first).
pub struct Tracer {
    process: Watched,
    stdout: Stdout,
    /// Time from spawn to the "tracing" notice: exec → attached.
    pub attach_time: Duration,
}

/// Where the tracer's stdout goes.
enum Stdout {
    /// A pipe, read by a thread of the test; taken by `stop`.
    Pipe(Option<thread::JoinHandle<String>>),
    /// A file, read at `stop` and removed: at 100,000 events/s a pipe
    /// read by the test would hold the tracer back.
    File(PathBuf),
}

impl Tracer {
    /// Starts the tracer and waits until its programs are attached: its
    /// first line (the JSON `start` event or the text header) says so.
    pub fn start(args: &[&str]) -> Self {
        let started = Instant::now();
        let mut process = Self::spawn(args, Stdio::piped());
        let (ready_tx, ready_rx) = mpsc::channel();
        let stdout = BufReader::new(process.take_stdout().expect("stdout"));
        let stdout = thread::spawn(move || {
            let mut text = String::new();
            for line in stdout.lines().map_while(Result::ok) {
                if text.is_empty() {
                    let _ = ready_tx.send(());
                }
                text.push_str(&line);
                text.push('\n');
            }
            text
        });
        let ready = ready_rx.recv_timeout(PATIENCE).is_ok();
        Self::started(process, ready, Stdout::Pipe(Some(stdout)), started)
    }

    /// Like `start`, with stdout going to a file of its own.
    pub fn start_to_file(args: &[&str]) -> Self {
        static FILES: AtomicU32 = AtomicU32::new(0);
        let started = Instant::now();
        let path = std::env::temp_dir().join(format!(
            "tcpretrans-lab-{}-{}.out",
            std::process::id(),
            FILES.fetch_add(1, Ordering::Relaxed)
        ));
        let file = File::create(&path).expect("creating the tracer's output file");
        let process = Self::spawn(args, file.into());
        let mut ready = false;
        while !ready && started.elapsed() < PATIENCE {
            thread::sleep(Duration::from_millis(1));
            ready = fs::metadata(&path).is_ok_and(|m| m.len() > 0);
        }
        Self::started(process, ready, Stdout::File(path), started)
    }

    fn spawn(args: &[&str], stdout: Stdio) -> Watched {
        Watched::spawn(
            Command::new(env!("CARGO_BIN_EXE_tcpretrans"))
                .args(args)
                .stdout(stdout),
        )
        .expect("starting tcpretrans")
    }

    fn started(mut process: Watched, ready: bool, stdout: Stdout, started: Instant) -> Self {
        if !ready {
            process.interrupt();
            panic!(
                "tcpretrans did not start tracing (this machine must load eBPF programs as root):\n{}",
                process.stderr()
            );
        }
        Self {
            process,
            stdout,
            attach_time: started.elapsed(),
        }
    }

    pub fn pid(&self) -> u32 {
        self.process.id()
    }

    /// Stops it like Ctrl-C and returns what it printed; it must exit 0,
    /// or 4: the kernel counted retransmitted segments it gave no BPF
    /// program, which this project's VM does for events made in softirqs
    /// on top of its process 1 (README). Tests of the count itself look at
    /// the status (`stop_with_status`); the others' assertions stand.
    pub fn stop(self) -> Output {
        let (status, output) = self.stop_with_status();
        assert!(
            status.success() || status.code() == Some(i32::from(EVENTS_NOT_SEEN)),
            "tcpretrans exited with {status}:\n{}",
            output.stderr
        );
        if !status.success() {
            eprintln!("tcpretrans exited with {status}:\n{}", output.stderr);
        }
        output
    }

    /// Stops it like Ctrl-C: how it exited, and what it printed.
    pub fn stop_with_status(mut self) -> (ExitStatus, Output) {
        let status = self.process.interrupt().expect("tcpretrans ignored SIGINT");
        self.output(status)
    }

    /// Waits for it to end by itself (`--duration`, `-n`): how it exited,
    /// and what it printed.
    pub fn ended(mut self) -> (ExitStatus, Output) {
        let status = self
            .process
            .exit_status()
            .expect("tcpretrans ran on instead of ending");
        self.output(status)
    }

    fn output(&mut self, status: ExitStatus) -> (ExitStatus, Output) {
        let stdout = match &mut self.stdout {
            Stdout::Pipe(reader) => reader
                .take()
                .map(|reader| reader.join().expect("stdout reader"))
                .unwrap_or_default(),
            Stdout::File(path) => fs::read_to_string(&*path).expect("reading the tracer's output"),
        };
        let stderr = self.process.stderr();
        (status, Output { stdout, stderr })
    }
}

impl Drop for Tracer {
    fn drop(&mut self) {
        if let Stdout::File(path) = &self.stdout {
            let _ = fs::remove_file(path);
        }
    }
}

/// What the tracer printed.
pub struct Output {
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    /// Checks that stderr has `line` as one of its lines.
    pub fn says(&self, line: &str) {
        assert!(
            self.stderr.lines().any(|l| l == line),
            "expected `{line}` in:\n{}",
            self.stderr
        );
    }

    /// Every stdout line after the `start` event as JSON (fails on a line
    /// that is not), without the closing `summary`. Also checks the exit
    /// summary on stderr: as many events as lines, none lost.
    pub fn events(&self) -> Vec<Value> {
        let mut lines = self.json_lines();
        let start = lines.remove(0);
        assert_eq!(start["event"], "start", "{start}");
        lines.retain(|e| e["event"] != "summary");
        let summary = format!("tcpretrans: {} events, 0 lost", lines.len());
        assert!(
            self.stderr.lines().any(|l| l == summary),
            "expected `{summary}` in:\n{}",
            self.stderr
        );
        lines
    }

    /// The `flow` lines of `-c --json`, each table's in rank order; checks
    /// that the exit summary reports no loss.
    pub fn flows(&self) -> Vec<Value> {
        assert!(
            self.stderr
                .lines()
                .any(|l| l.starts_with("tcpretrans: ") && l.ends_with(" events, 0 lost")),
            "no loss-free summary in:\n{}",
            self.stderr
        );
        let mut lines = self.json_lines();
        assert_eq!(lines.remove(0)["event"], "start");
        assert!(
            lines.iter().all(|e| e["event"] == "flow"),
            "{}",
            self.stdout
        );
        lines
    }

    /// The closing `summary` event (`--json --state`).
    pub fn summary(&self) -> Value {
        let lines = self.json_lines();
        let last = lines.last().cloned().expect("output");
        assert_eq!(last["event"], "summary", "{last}");
        last
    }

    /// Every stdout line as JSON (fails on a line that is not).
    pub fn json_lines(&self) -> Vec<Value> {
        self.stdout
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
            .collect()
    }
}

/// Events of one kind.
pub fn of_kind<'a>(events: &'a [Value], kind: &str) -> Vec<&'a Value> {
    events.iter().filter(|e| e["event"] == kind).collect()
}

/// `(old_state, new_state)` of state events, in order.
pub fn transitions(events: &[&Value]) -> Vec<(String, String)> {
    events
        .iter()
        .map(|e| {
            (
                e["old_state"].as_str().unwrap_or("?").to_owned(),
                e["new_state"].as_str().unwrap_or("?").to_owned(),
            )
        })
        .collect()
}

/// Sum of `segs` over retransmissions the kernel actually sent (`err` 0):
/// what it adds to `Tcp.RetransSegs`.
pub fn sent_segments(events: &[&Value]) -> i64 {
    events
        .iter()
        .filter(|e| e["err"] == 0)
        .map(|e| {
            e["segs"]
                .as_i64()
                .unwrap_or_else(|| panic!("segs missing: {e}"))
        })
        .sum()
}

/// The state events of the socket with local port `lport`; there must be some.
pub fn states_of(events: &[Value], lport: u16) -> Vec<&Value> {
    let states: Vec<&Value> = of_kind(events, "state")
        .into_iter()
        .filter(|e| e["lport"] == lport)
        .collect();
    assert!(
        !states.is_empty(),
        "the transitions of port {lport}: {events:#?}"
    );
    states
}

/// Segments retransmitted with no event, as the events' `unseen_segs` say.
pub fn unseen_segments(events: &[&Value]) -> i64 {
    events
        .iter()
        .filter_map(|e| e["unseen_segs"].as_i64())
        .sum()
}

/// Retransmissions of one cause (`type`).
pub fn of_type<'a>(events: &[&'a Value], cause: &str) -> Vec<&'a Value> {
    events
        .iter()
        .copied()
        .filter(|e| e["type"] == cause)
        .collect()
}

/// Event time in seconds since the epoch, from its RFC 3339 `time`.
pub fn seconds(event: &Value) -> f64 {
    let time: jiff::Timestamp = event["time"]
        .as_str()
        .and_then(|t| t.parse().ok())
        .expect("RFC 3339 time");
    time.as_microsecond() as f64 / 1e6
}

/// Says the test is skipped, and why: the kernel feature it lacks. The
/// test then returns; `cargo xtask vm-test` reports the reason.
pub fn skip(reason: &str) {
    println!("skipped: {reason}");
}

/// Whether this kernel's BTF lacks a member the tool reads, or has it in a
/// shape it cannot read (`--check` reports it `MISSING` or `UNUSABLE`),
/// e.g. `request_sock.timeout` before 5.12.
pub fn kernel_lacks(member: &str) -> bool {
    static REPORT: OnceLock<String> = OnceLock::new();
    REPORT
        .get_or_init(|| {
            let check = Command::new(env!("CARGO_BIN_EXE_tcpretrans"))
                .arg("--check")
                .output()
                .expect("running tcpretrans --check");
            String::from_utf8_lossy(&check.stdout).into_owned()
        })
        .lines()
        .any(|l| l.ends_with(": shown as unknown") && l.split_whitespace().next() == Some(member))
}

/// The tool's stderr without its notice of the BTF members this kernel
/// lacks (older kernels have fewer): what tests of everything else it says
/// look at.
pub fn beyond_kernel_notes(stderr: &str) -> String {
    stderr
        .lines()
        .filter(|l| !l.starts_with("tcpretrans: kernel BTF lacks "))
        .map(|l| format!("{l}\n"))
        .collect()
}

/// Whether this kernel's `tcp:tcp_retransmit_skb` reports failed attempts
/// (its `err` field, from 6.17).
pub fn kernel_reports_failed_retransmits() -> bool {
    ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"]
        .iter()
        .filter_map(|root| {
            fs::read_to_string(format!("{root}/events/tcp/tcp_retransmit_skb/format")).ok()
        })
        .any(|format| format.contains(" err;"))
}

/// Waits (bounded) until no connection to or from `port` can send anything
/// more: none is left but those in TIME_WAIT (which send nothing). A
/// connection still closing can retransmit its FIN or its last data: read
/// the kernel's counters after this.
pub fn closed(ns: &Netns, port: u16) {
    let deadline = Instant::now() + PATIENCE;
    while !ns
        .exec(&[
            "ss",
            "-Htan",
            "state",
            "connected",
            "exclude",
            "time-wait",
            &format!("( sport = :{port} or dport = :{port} )"),
        ])
        .trim()
        .is_empty()
    {
        assert!(
            Instant::now() < deadline,
            "the connections of port {port} did not close"
        );
        thread::sleep(Duration::from_millis(20));
    }
}
