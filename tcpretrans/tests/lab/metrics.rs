//! `--metrics` as a fleet runs it: a quiet exporter that Debian's real
//! Prometheus scrapes every second, checked against the kernel's counters
//! and `ss`, and its exposition against `promtool check metrics`.
use std::{
    fs,
    io::{ErrorKind, Write as _},
    net::{SocketAddr, TcpListener, TcpStream},
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use nix::errno::Errno;
use serde_json::Value;
use tcpretrans_lab::{kernel_counts::TransitionCount, process::Watched};

use crate::harness::{
    Netns, bulk_upload, closed, delta, drop_inbound, refused_without_waiting, short_connection,
};

/// How long Prometheus may take to start and to scrape what happened.
const SCRAPE_PATIENCE: Duration = Duration::from_secs(30);

/// A port on loopback that nothing listens on now.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// `GET` on loopback with curl: `(status, body)`.
fn get(url: &str) -> (u16, String) {
    let out = Command::new("curl")
        .args([
            "--silent",
            "--max-time",
            "5",
            "--write-out",
            "\n%{http_code}",
            url,
        ])
        .output()
        .expect("running curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, status) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (status.trim().parse().unwrap_or(0), body.to_owned())
}

/// Waits (bounded) until `url` answers 200.
fn until_ok(url: &str, what: &str, process: &mut Watched) {
    let deadline = Instant::now() + SCRAPE_PATIENCE;
    while get(url).0 != 200 {
        assert!(process.running(), "{what} exited:\n{}", process.stderr());
        assert!(Instant::now() < deadline, "{what} never answered {url}");
        thread::sleep(Duration::from_millis(50));
    }
}

/// A Prometheus server of its own: config and storage in a temporary
/// directory, listening on loopback, scraping `target` every second.
struct Prometheus {
    process: Watched,
    address: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    fn start(target: SocketAddr) -> Self {
        let dir = tempfile::tempdir().expect("temporary directory");
        let config = dir.path().join("prometheus.yml");
        fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
                 scrape_configs:\n  - job_name: tcpretrans\n    static_configs:\n      \
                 - targets: ['{target}']\n"
            ),
        )
        .expect("writing the config");
        let address: SocketAddr = format!("127.0.0.1:{}", free_port())
            .parse()
            .expect("address");
        let mut process = Watched::spawn(
            Command::new("prometheus")
                .arg(format!("--config.file={}", config.display()))
                .arg(format!(
                    "--storage.tsdb.path={}",
                    dir.path().join("data").display()
                ))
                .arg(format!("--web.listen-address={address}"))
                .arg("--log.level=warn")
                .stdout(Stdio::null()),
        )
        .expect("starting prometheus (Debian's `prometheus` package)");
        until_ok(
            &format!("http://{address}/-/ready"),
            "prometheus",
            &mut process,
        );
        Self {
            process,
            address,
            _dir: dir,
        }
    }

    /// The value of an instant query that yields one number, if it does.
    fn query(&self, promql: &str) -> Option<f64> {
        let out = Command::new("curl")
            .args(["--silent", "--max-time", "5", "--get", "--data-urlencode"])
            .arg(format!("query={promql}"))
            .arg(format!("http://{}/api/v1/query", self.address))
            .output()
            .expect("running curl");
        let answer: Value = serde_json::from_slice(&out.stdout).ok()?;
        answer["data"]["result"][0]["value"][1]
            .as_str()?
            .parse()
            .ok()
    }

    /// Waits (bounded) until a query yields `want`; what it yielded last.
    fn until(&self, promql: &str, want: f64) -> Option<f64> {
        let deadline = Instant::now() + SCRAPE_PATIENCE;
        loop {
            let value = self.query(promql);
            if value == Some(want) || Instant::now() >= deadline {
                return value;
            }
            thread::sleep(Duration::from_millis(200));
        }
    }

    /// Asserts that a query comes to yield `want` (bounded).
    fn comes_to(&self, promql: &str, want: f64, what: &str) {
        assert_eq!(self.until(promql, want), Some(want), "{promql}: {what}");
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        self.process.interrupt();
    }
}

/// A lossy upload and five short connections under a quiet exporter: what
/// Prometheus scraped equals what the kernel counted, the TIME_WAIT gauge
/// what `ss` lists, and the exposition passes `promtool check metrics`.
#[test]
#[ignore = "kernel lab: run `cargo xtask test` as root"]
fn prometheus_scrapes_what_the_kernel_counted() {
    const PORT: u16 = 5401;
    let ns = Netns::new("prom");
    ns.ip(&["link", "set", "lo", "mtu", "1500"]);
    drop_inbound(&ns, PORT, 5);
    let endpoint: SocketAddr = format!("127.0.0.1:{}", free_port())
        .parse()
        .expect("address");
    let netns = ns.inode.to_string();
    let mut exporter = Watched::spawn(
        Command::new(env!("CARGO_BIN_EXE_tcpretrans"))
            .args(["--metrics", &endpoint.to_string(), "-q", "--netns", &netns])
            .stdout(Stdio::piped()),
    )
    .expect("starting tcpretrans");
    let stdout = exporter.take_stdout().expect("stdout");
    until_ok(
        &format!("http://{endpoint}/readyz"),
        "tcpretrans",
        &mut exporter,
    );
    let prometheus = Prometheus::start(endpoint);
    assert_eq!(
        prometheus.until("up", 1.0),
        Some(1.0),
        "prometheus scrapes it"
    );

    let kernel = TransitionCount::start(std::iter::once(PORT..PORT + 3)).expect("ftrace instance");
    let before = ns.counters();
    bulk_upload(
        &ns,
        format!("127.0.0.1:{PORT}").parse().expect("address"),
        4 << 20,
    );
    for _ in 0..5 {
        short_connection(&ns, "127.0.0.1:5402".parse().expect("address"));
    }
    // Connects refused: one waits for its answer, one learns it later.
    let waited = ns
        .enter(|| TcpStream::connect("127.0.0.1:5403").expect_err("nothing listens"))
        .join()
        .expect("blocking connect");
    assert_eq!(waited.kind(), ErrorKind::ConnectionRefused);
    assert_eq!(refused_without_waiting(&ns, 5403), Errno::ECONNREFUSED);
    closed(&ns, PORT);
    let after = ns.counters();
    let made = kernel.stop().expect("ftrace count");
    let kernel_segments = delta(&before, &after, "Tcp.RetransSegs");
    assert!(kernel_segments > 0, "5% loss must cause retransmissions");

    // Sent and unseen (the kernel ran no program for them; the sockets'
    // counts tell) make up what the kernel counted.
    let scraped = prometheus.until(
        "sum(tcpretrans_retransmitted_segments_total) \
         + (sum(tcpretrans_unseen_retransmitted_segments_total) or vector(0))",
        kernel_segments as f64,
    );
    assert_eq!(
        scraped,
        Some(kernel_segments as f64),
        "Prometheus vs Tcp.RetransSegs"
    );
    let time_wait = ns
        .exec(&["ss", "-Htan", "state", "time-wait"])
        .lines()
        .count() as f64;
    assert_eq!(
        time_wait, 6.0,
        "the upload's and five short connections' clients"
    );
    let gauge = format!("tcpretrans_time_wait_sockets{{netns=\"{netns}\"}}");
    prometheus.comes_to(&gauge, time_wait, "vs ss");
    prometheus.comes_to(
        "sum(tcpretrans_time_wait_entries_total)",
        time_wait,
        "vs ss",
    );

    // Each failed connect once, whether the connect program or the state
    // program saw it fail: the kernel's failed active opens.
    let attempts_failed = delta(&before, &after, "Tcp.AttemptFails");
    assert_eq!(attempts_failed, 2, "the two refused connects");
    prometheus.comes_to(
        "sum(tcpretrans_connect_errors_total{error=\"ECONNREFUSED\"})",
        attempts_failed as f64,
        "vs Tcp.AttemptFails",
    );

    // Counted in the kernel: a quiet exporter needs no transition's
    // connection. This machine's kernel may run no program for transitions
    // made in a softirq on top of process 1 (README); ftrace tells how many.
    let transitions = "sum(tcpretrans_state_transitions_total)";
    let counted = prometheus
        .until(transitions, made.made as f64)
        .expect(transitions);
    assert!(
        (made.made - made.on_init_threads) as f64 <= counted && counted <= made.made as f64,
        "{transitions} {counted}, ftrace {made:?}"
    );

    // Sent, not counted in the kernel, to be shown as the events show them.
    prometheus.comes_to(
        "sum(tcpretrans_state_transitions_total{new_state=\"TIME_WAIT\"})",
        time_wait,
        "vs ss",
    );

    let (status, exposition) = get(&format!("http://{endpoint}/metrics"));
    assert_eq!(status, 200);
    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting promtool");
    promtool
        .stdin
        .take()
        .expect("stdin")
        .write_all(exposition.as_bytes())
        .expect("writing to promtool");
    let linted = promtool.wait_with_output().expect("promtool");
    assert!(
        linted.status.success(),
        "promtool check metrics: {}{}\n{exposition}",
        String::from_utf8_lossy(&linted.stdout),
        String::from_utf8_lossy(&linted.stderr)
    );

    drop(prometheus);
    let status = exporter.interrupt().expect("tcpretrans ends on SIGINT");
    let stderr = exporter.stderr();
    let printed = std::io::read_to_string(stdout).expect("stdout");
    assert_eq!(printed, "", "a quiet exporter prints no events");
    // 4: the kernel retransmitted segments it gave no program (said above).
    assert!(matches!(status.code(), Some(0 | 4)), "{status}: {stderr}");
    eprintln!(
        "prometheus: {kernel_segments} segments = Tcp.RetransSegs, {time_wait} TIME_WAIT = ss, \
         {counted} transitions of {} made; {} bytes of exposition",
        made.made,
        exposition.len()
    );
}

/// The capabilities the DaemonSet grants (deploy/kubernetes: checked
/// against it where `cargo xtask test` passes it): not CAP_SYS_ADMIN, so
/// the tool cannot enter other network namespaces.
const DAEMONSET_CAPABILITIES: [&str; 4] = ["BPF", "PERFMON", "SYS_PTRACE", "DAC_READ_SEARCH"];

/// A namespace's gauges as the DaemonSet's tool exports them: a process
/// lives in it (a pod's), and its limits are its own. They equal what `ss`
/// and its sysctls say, read without entering it.
#[test]
#[ignore = "kernel lab: run `cargo xtask test` as root"]
fn namespace_gauges_are_read_without_entering_the_namespace() {
    if let Ok(daemonset) = std::env::var("TCPRETRANS_DAEMONSET") {
        let daemonset: Value = serde_json::from_str(&daemonset).expect("the DaemonSet as JSON");
        let added = &daemonset["spec"]["template"]["spec"]["containers"][0]["securityContext"]["capabilities"]
            ["add"];
        assert_eq!(*added, serde_json::json!(DAEMONSET_CAPABILITIES));
    }
    let ns = Netns::new("gauges");
    ns.sysctl("net.ipv4.tcp_max_tw_buckets", "777");
    ns.sysctl("net.ipv4.ip_local_port_range", "40000 40999");
    let _member =
        Watched::spawn(Command::new("ip").args(["netns", "exec", &ns.name, "sleep", "600"]))
            .expect("a process in the namespace");
    let mut bounding = String::from("-all");
    for capability in DAEMONSET_CAPABILITIES {
        bounding.push_str(&format!(",+{}", capability.to_lowercase()));
    }
    // Before 5.11 maps count against RLIMIT_MEMLOCK (README, DaemonSet).
    let release = fs::read_to_string("/proc/sys/kernel/osrelease").expect("kernel release");
    let mut numbers = release
        .split(['.', '-'])
        .map(|n| n.parse::<u32>().unwrap_or(0));
    if (numbers.next(), numbers.next()) < (Some(5), Some(11)) {
        bounding.push_str(",+sys_resource");
    }
    let _paranoid = PerfEventParanoid::at_most(2);
    let endpoint: SocketAddr = format!("127.0.0.1:{}", free_port())
        .parse()
        .expect("address");
    let netns = ns.inode.to_string();
    let mut exporter = Watched::spawn(
        Command::new("setpriv")
            .arg(format!("--bounding-set={bounding}"))
            .arg(env!("CARGO_BIN_EXE_tcpretrans"))
            .args(["--metrics", &endpoint.to_string(), "-q", "--netns", &netns])
            .stdout(Stdio::null()),
    )
    .expect("starting tcpretrans");
    until_ok(
        &format!("http://{endpoint}/readyz"),
        "tcpretrans",
        &mut exporter,
    );
    let status = fs::read_to_string(format!("/proc/{}/status", exporter.id())).expect("status");
    let effective = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .expect("CapEff");
    const CAP_SYS_ADMIN: u32 = 21;
    assert_eq!(effective >> CAP_SYS_ADMIN & 1, 0, "CapEff {effective:x}");

    for _ in 0..3 {
        short_connection(&ns, "127.0.0.1:5411".parse().expect("address"));
    }
    let listed = ns.exec(&["ss", "-Htan"]);
    let time_wait = listed
        .lines()
        .filter(|l| l.starts_with("TIME-WAIT"))
        .count();
    let local_ports: std::collections::BTreeSet<u16> = listed
        .lines()
        .filter_map(|l| {
            l.split_whitespace()
                .nth(3)?
                .rsplit_once(':')?
                .1
                .parse()
                .ok()
        })
        .filter(|p| (40000..=40999).contains(p))
        .collect();
    assert_eq!(time_wait, 3, "{listed}");
    let want = [
        ("tcpretrans_time_wait_sockets", time_wait as f64),
        ("tcpretrans_time_wait_sockets_limit", 777.0),
        ("tcpretrans_local_ports_in_use", local_ports.len() as f64),
        ("tcpretrans_local_ports_limit", 1000.0),
    ];
    let deadline = Instant::now() + SCRAPE_PATIENCE;
    let exposition = loop {
        let (status, exposition) = get(&format!("http://{endpoint}/metrics"));
        assert_eq!(status, 200);
        let read = want
            .iter()
            .all(|&(name, value)| gauge(&exposition, name, &netns) == Some(value));
        if read || Instant::now() >= deadline {
            break exposition;
        }
        thread::sleep(Duration::from_millis(200));
    };
    for (name, value) in want {
        assert_eq!(
            gauge(&exposition, name, &netns),
            Some(value),
            "{name}:\n{exposition}"
        );
    }
    assert!(
        exposition
            .lines()
            .any(|l| l == "tcpretrans_namespace_read_failures_total 0"),
        "{exposition}"
    );
    let status = exporter.interrupt().expect("tcpretrans ends on SIGINT");
    assert!(status.success(), "{status}: {}", exporter.stderr());
    eprintln!(
        "namespace gauges without CAP_SYS_ADMIN: {time_wait} TIME_WAIT of 777, {} ports of 1000",
        local_ports.len()
    );
}

/// `kernel.perf_event_paranoid`, lowered for a test and then restored.
/// Debian's kernels add a level 3, their default, at which
/// `perf_event_open()` (classic tracepoints) takes CAP_SYS_ADMIN; nodes
/// that run the DaemonSet set 2 or less (deploy/kubernetes).
struct PerfEventParanoid(Option<String>);

impl PerfEventParanoid {
    const PATH: &str = "/proc/sys/kernel/perf_event_paranoid";

    fn at_most(level: i32) -> Self {
        let was = fs::read_to_string(Self::PATH).expect("perf_event_paranoid");
        if was.trim().parse::<i32>().expect("a level") <= level {
            return Self(None);
        }
        fs::write(Self::PATH, level.to_string()).expect("lowering perf_event_paranoid");
        Self(Some(was))
    }
}

impl Drop for PerfEventParanoid {
    fn drop(&mut self) {
        if let Some(was) = &self.0 {
            let _ = fs::write(Self::PATH, was);
        }
    }
}

/// A per-namespace gauge's value in an exposition.
fn gauge(exposition: &str, name: &str, netns: &str) -> Option<f64> {
    let series = format!("{name}{{netns=\"{netns}\"}} ");
    exposition
        .lines()
        .find_map(|l| l.strip_prefix(&series))
        .and_then(|v| v.parse().ok())
}
