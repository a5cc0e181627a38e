//! The kernel lab: network namespaces the tests create and always remove,
//! real TCP traffic inside them, the real tracer binary watching, and the
//! kernel's own counters to compare with.
use std::{
    collections::HashMap,
    fs,
    io::{BufRead, BufReader, Read, Write},
    net::{Shutdown, SocketAddr, TcpListener, TcpStream},
    os::unix::fs::MetadataExt,
    process::{Child, Command, ExitStatus, Stdio},
    sync::{
        atomic::{AtomicU32, Ordering},
        mpsc,
    },
    thread,
    time::{Duration, Instant},
};

use nix::{
    sched::{CloneFlags, setns},
    sys::signal::{Signal, kill},
    unistd::Pid,
};
use serde_json::Value;

/// Upper bound for anything a test waits on.
const PATIENCE: Duration = Duration::from_secs(20);

fn run(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("starting {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A network namespace of the test's own, deleted on drop (also when the
/// test fails).
pub struct Netns {
    pub name: String,
    pub inode: u32,
}

impl Netns {
    pub fn new(tag: &str) -> Self {
        static SEQ: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "tcpretrans-lab-{}-{tag}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        );
        run(Command::new("ip").args(["netns", "add", &name]));
        let inode = fs::metadata(format!("/run/netns/{name}"))
            .map(|m| m.ino() as u32)
            .unwrap_or_else(|e| panic!("stat /run/netns/{name}: {e}"));
        let ns = Self { name, inode };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    /// `ip -n NAME ARGS`.
    pub fn ip(&self, args: &[&str]) -> String {
        run(Command::new("ip").arg("-n").arg(&self.name).args(args))
    }

    /// Sets a sysctl of this namespace (`net.ipv4.tcp_retries2`, ...).
    pub fn sysctl(&self, key: &str, value: &str) {
        self.exec(&["sysctl", "-q", "-w", &format!("{key}={value}")]);
    }

    /// Runs a command inside the namespace and returns its output.
    pub fn exec(&self, args: &[&str]) -> String {
        run(Command::new("ip")
            .args(["netns", "exec", &self.name])
            .args(args))
    }

    /// Loads an nftables ruleset into the namespace.
    pub fn nft(&self, ruleset: &str) {
        let mut child = Command::new("ip")
            .args(["netns", "exec", &self.name, "nft", "-f", "-"])
            .stdin(Stdio::piped())
            .spawn()
            .expect("starting nft");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(ruleset.as_bytes())
            .expect("writing the ruleset");
        assert!(
            child.wait().expect("nft").success(),
            "nft rejected:\n{ruleset}"
        );
    }

    /// Runs `f` on a thread that has entered the namespace: sockets it
    /// creates live there.
    pub fn enter<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> thread::JoinHandle<T> {
        let path = format!("/run/netns/{}", self.name);
        thread::spawn(move || {
            let ns = fs::File::open(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
            setns(ns, CloneFlags::CLONE_NEWNET).expect("setns");
            f()
        })
    }

    /// `/proc/net/snmp` and `/proc/net/netstat` counters of this namespace,
    /// as `Tcp.RetransSegs`, `TcpExt.TCPTimeWaitOverflow`, ...
    pub fn counters(&self) -> HashMap<String, i64> {
        self.enter(|| {
            let mut counters = HashMap::new();
            for file in [
                "/proc/thread-self/net/snmp",
                "/proc/thread-self/net/netstat",
            ] {
                let text = fs::read_to_string(file).unwrap_or_else(|e| panic!("{file}: {e}"));
                let lines: Vec<&str> = text.lines().collect();
                for pair in lines.chunks(2) {
                    let [names, values] = pair else { continue };
                    let mut names = names.split_whitespace();
                    let mut values = values.split_whitespace();
                    let prefix = names
                        .next()
                        .unwrap_or_default()
                        .trim_end_matches(':')
                        .to_owned();
                    values.next();
                    for (name, value) in names.zip(values) {
                        if let Ok(v) = value.parse() {
                            counters.insert(format!("{prefix}.{name}"), v);
                        }
                    }
                }
            }
            counters
        })
        .join()
        .expect("reading counters")
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// The real tcpretrans binary, running until stopped.
pub struct Tracer {
    child: Child,
    /// Readers of its output; taken by `stop`.
    stdout: Option<thread::JoinHandle<String>>,
    stderr: Option<thread::JoinHandle<String>>,
    /// Time from spawn to the "tracing" notice: exec → attached.
    pub attach_time: Duration,
}

impl Tracer {
    /// Starts the tracer and waits until its programs are attached: its
    /// first line (the JSON `start` event or the text header) says so.
    pub fn start(args: &[&str]) -> Self {
        let started = Instant::now();
        let mut child = Command::new(env!("CARGO_BIN_EXE_tcpretrans"))
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting tcpretrans");
        let (ready_tx, ready_rx) = mpsc::channel();
        let stdout = BufReader::new(child.stdout.take().expect("stdout"));
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
        let mut stderr = child.stderr.take().expect("stderr");
        let stderr = thread::spawn(move || {
            let mut text = String::new();
            let _ = stderr.read_to_string(&mut text);
            text
        });
        let mut tracer = Self {
            child,
            stdout: Some(stdout),
            stderr: Some(stderr),
            attach_time: Duration::ZERO,
        };
        if ready_rx.recv_timeout(PATIENCE).is_err() {
            let _ = tracer.child.kill();
            let _ = tracer.child.wait();
            let stderr = tracer.take_stderr();
            panic!(
                "tcpretrans did not start tracing (this machine must load eBPF programs as root):\n{stderr}"
            );
        }
        tracer.attach_time = started.elapsed();
        tracer
    }

    /// Stops it like Ctrl-C and returns what it printed; it must exit 0.
    pub fn stop(self) -> Output {
        let (status, output) = self.stop_with_status();
        assert!(
            status.success(),
            "tcpretrans exited with {status}:\n{}",
            output.stderr
        );
        output
    }

    /// Stops it like Ctrl-C: how it exited, and what it printed.
    pub fn stop_with_status(mut self) -> (ExitStatus, Output) {
        kill(Pid::from_raw(self.child.id() as i32), Signal::SIGINT).expect("SIGINT");
        let deadline = Instant::now() + PATIENCE;
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                break status;
            }
            assert!(Instant::now() < deadline, "tcpretrans ignored SIGINT");
            thread::sleep(Duration::from_millis(10));
        };
        let stdout = self
            .stdout
            .take()
            .map(|reader| reader.join().expect("stdout reader"))
            .unwrap_or_default();
        let stderr = self.take_stderr();
        (status, Output { stdout, stderr })
    }
}

impl Tracer {
    fn take_stderr(&mut self) -> String {
        self.stderr
            .take()
            .map(|reader| reader.join().expect("stderr reader"))
            .unwrap_or_default()
    }
}

/// A test that fails before `stop` must not leave its tracer attached.
impl Drop for Tracer {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// What the tracer printed.
pub struct Output {
    pub stdout: String,
    pub stderr: String,
}

impl Output {
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

/// An established connection inside the namespace: `(client, accepted)`.
pub fn connected(ns: &Netns, server: SocketAddr) -> (TcpStream, TcpStream) {
    let (listener, client) = ns
        .enter(move || {
            let listener = TcpListener::bind(server).expect("bind");
            (listener, TcpStream::connect(server).expect("connect"))
        })
        .join()
        .expect("connect");
    let (accepted, _) = listener.accept().expect("accept");
    (client, accepted)
}

/// Connects, exchanges a few bytes, and closes: the client closes first (it
/// ends in TIME_WAIT), the server after it read the client's FIN. Returns the
/// client's local address.
pub fn short_connection(ns: &Netns, server: SocketAddr) -> SocketAddr {
    ns.enter(move || {
        let listener = TcpListener::bind(server).expect("bind");
        let client = TcpStream::connect(server).expect("connect");
        let local = client.local_addr().expect("local addr");
        let (mut accepted, _) = listener.accept().expect("accept");
        (&client).write_all(b"ping").expect("write");
        let mut buf = [0; 4];
        accepted.read_exact(&mut buf).expect("read");
        drop(client);
        accepted.set_read_timeout(Some(PATIENCE)).expect("timeout");
        assert_eq!(accepted.read(&mut buf).expect("read EOF"), 0);
        drop(accepted);
        drop(listener);
        local
    })
    .join()
    .expect("short connection")
}

/// Sends `bytes` from a client to a server and waits until the server has
/// all of it. Returns the client's local address.
pub fn bulk_upload(ns: &Netns, server: SocketAddr, bytes: usize) -> SocketAddr {
    ns.enter(move || {
        let listener = TcpListener::bind(server).expect("bind");
        let reader = thread::spawn(move || {
            let (mut conn, _) = listener.accept().expect("accept");
            conn.set_read_timeout(Some(PATIENCE)).expect("timeout");
            let mut total = 0;
            let mut buf = vec![0; 64 * 1024];
            loop {
                match conn.read(&mut buf).expect("server read") {
                    0 => break total,
                    n => total += n,
                }
            }
        });
        let mut client = TcpStream::connect(server).expect("connect");
        client.set_write_timeout(Some(PATIENCE)).expect("timeout");
        let local = client.local_addr().expect("local addr");
        let chunk = vec![0x5a; 64 * 1024];
        let mut sent = 0;
        while sent < bytes {
            let n = chunk.len().min(bytes - sent);
            client.write_all(&chunk[..n]).expect("client write");
            sent += n;
        }
        client.shutdown(Shutdown::Write).expect("shutdown");
        assert_eq!(
            reader.join().expect("server"),
            bytes,
            "server received everything"
        );
        local
    })
    .join()
    .expect("bulk upload")
}

/// Drops `percent` % of the packets arriving for TCP port `port`, on the
/// input hook (an output drop would fail the send instead of losing it).
pub fn drop_inbound(ns: &Netns, port: u16, percent: u32) {
    drop_inbound_matching(
        ns,
        &format!("tcp dport {port} numgen random mod 100 < {percent}"),
    );
}

/// Drops packets arriving in the namespace that match an nftables expression.
pub fn drop_inbound_matching(ns: &Netns, matching: &str) {
    ns.nft(&format!(
        "table inet lab {{\n  chain input {{\n    type filter hook input priority 0; policy accept;\n    \
         {matching} drop\n  }}\n}}\n"
    ));
}

/// Counter increase between two `Netns::counters` snapshots.
pub fn delta(before: &HashMap<String, i64>, after: &HashMap<String, i64>, name: &str) -> i64 {
    after.get(name).copied().unwrap_or_default() - before.get(name).copied().unwrap_or_default()
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
