//! The right process for events that fire in softirq.
use std::{
    io::{Read, Write},
    net::TcpStream,
    path::PathBuf,
    process::{Command, Output, Stdio},
    thread,
    time::{Duration, Instant},
};

use serde_json::Value;

use crate::harness::{
    Netns, Tracer, connected, drop_inbound_matching, kernel_lacks, of_kind, short_connection, skip,
};

/// A server in a process of its own: accepts one connection and sends it
/// `bytes`, then exits.
const SERVER: &str = "\
import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(('127.0.0.1', int(sys.argv[1]))); s.listen(); print('ready', flush=True)
c, _ = s.accept(); c.sendall(b'x' * int(sys.argv[2])); c.close()
";

#[test]
#[ignore = "kernel lab: run `cargo xtask test` as root"]
fn server_retransmits_in_softirq_belong_to_the_server_process() {
    const BYTES: usize = 4 << 20;
    let ns = Netns::new("owner");
    ns.ip(&["link", "set", "lo", "mtu", "1500"]);
    let port = 8300u16;
    // Loss on the way to the client: the server retransmits.
    drop_inbound_matching(&ns, &format!("tcp sport {port} numgen random mod 100 < 10"));
    let tracer = Tracer::start(&["--json", "--netns", &ns.inode.to_string()]);
    let mut server = Command::new("ip")
        .args([
            "netns",
            "exec",
            &ns.name,
            "python3",
            "-c",
            SERVER,
            &port.to_string(),
            &BYTES.to_string(),
        ])
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3 server");
    let mut ready = [0; 6];
    server
        .stdout
        .take()
        .expect("stdout")
        .read_exact(&mut ready)
        .expect("server ready");
    let received = ns
        .enter(move || {
            let mut client = TcpStream::connect(("127.0.0.1", port)).expect("connect");
            client
                .set_read_timeout(Some(Duration::from_secs(20)))
                .expect("timeout");
            let mut total = 0;
            let mut buf = vec![0; 64 * 1024];
            let deadline = Instant::now() + Duration::from_secs(30);
            while Instant::now() < deadline {
                match client.read(&mut buf).expect("read") {
                    0 => break,
                    n => total += n,
                }
            }
            total
        })
        .join()
        .expect("client");
    let server_pid = server.id();
    assert!(server.wait().expect("server").success());
    thread::sleep(Duration::from_millis(50));
    let events = tracer.stop().events();
    assert_eq!(received, BYTES);

    assert_retransmits_belong_to(&events, "lport", port, server_pid, "server");
}

/// Every retransmission of one side of `port` (`end`: `lport` for the
/// server, `rport` for the client) is attributed to python3 `pid`; there
/// must be some.
fn assert_retransmits_belong_to(events: &[Value], end: &str, port: u16, pid: u32, side: &str) {
    let retransmits: Vec<_> = of_kind(events, "retransmit")
        .into_iter()
        .filter(|e| e[end] == port)
        .collect();
    assert!(
        !retransmits.is_empty(),
        "10% loss must make the {side} retransmit"
    );
    for event in &retransmits {
        assert_eq!(
            (&event["pid"], &event["comm"]),
            (&pid.into(), &"python3".into()),
            "{event}"
        );
    }
    eprintln!(
        "{side}-side retransmits: {} events, all attributed to python3 pid {pid}",
        retransmits.len()
    );
}

/// A client in a process of its own: uploads `bytes`, then exits.
const CLIENT: &str = "\
import socket, sys
c = socket.create_connection(('127.0.0.1', int(sys.argv[1])))
c.sendall(b'x' * int(sys.argv[2])); c.close()
";

#[test]
#[ignore = "kernel lab: run `cargo xtask test` as root"]
fn client_retransmits_in_softirq_belong_to_the_client_process() {
    const BYTES: usize = 4 << 20;
    let ns = Netns::new("upowner");
    ns.ip(&["link", "set", "lo", "mtu", "1500"]);
    let port = 8301u16;
    // Loss on the way to the server: the client retransmits, mostly from
    // ACK processing and timers in softirq.
    drop_inbound_matching(&ns, &format!("tcp dport {port} numgen random mod 100 < 10"));
    let listener = ns
        .enter(move || std::net::TcpListener::bind(("127.0.0.1", port)).expect("bind"))
        .join()
        .expect("listener");
    let tracer = Tracer::start(&["--json", "--netns", &ns.inode.to_string()]);
    let reader = thread::spawn(move || {
        let (mut conn, _) = listener.accept().expect("accept");
        let mut sink = Vec::new();
        conn.read_to_end(&mut sink).expect("read");
        sink.len()
    });
    let client = Command::new("ip")
        .args(["netns", "exec", &ns.name, "python3", "-c", CLIENT])
        .args([port.to_string(), BYTES.to_string()])
        .spawn()
        .expect("python3 client");
    let client_pid = client.id();
    let status = client.wait_with_output().expect("client").status;
    assert!(status.success());
    assert_eq!(reader.join().expect("reader"), BYTES);
    thread::sleep(Duration::from_millis(50));
    let events = tracer.stop().events();

    assert_retransmits_belong_to(&events, "rport", port, client_pid, "client");
}

/// The connection exists before the tracer: its owner comes from /proc.
#[test]
#[ignore = "kernel lab: run `cargo xtask test` as root"]
fn a_connection_older_than_the_tracer_is_attributed_through_proc() {
    const BYTES: usize = 4 << 20;
    let ns = Netns::new("older");
    ns.ip(&["link", "set", "lo", "mtu", "1500"]);
    let server: std::net::SocketAddr = "127.0.0.1:8301".parse().expect("address");
    let (client, mut accepted) = connected(&ns, server);
    let client_port = client.local_addr().expect("local").port();
    let tracer = Tracer::start(&["--json", "--netns", &ns.inode.to_string()]);
    drop_inbound_matching(
        &ns,
        &format!("tcp dport {} numgen random mod 100 < 10", server.port()),
    );
    let reader = thread::spawn(move || {
        accepted
            .set_read_timeout(Some(Duration::from_secs(20)))
            .expect("timeout");
        let mut total = 0;
        let mut buf = vec![0; 64 * 1024];
        while total < BYTES {
            total += accepted.read(&mut buf).expect("read");
        }
        total
    });
    (&client).write_all(&vec![0x5a; BYTES]).expect("upload");
    assert_eq!(reader.join().expect("reader"), BYTES);
    let events = tracer.stop().events();
    let mine: Vec<_> = of_kind(&events, "retransmit")
        .into_iter()
        .filter(|e| e["lport"] == client_port)
        .collect();
    assert!(!mine.is_empty(), "10% loss must make the client retransmit");
    for event in &mine {
        assert_eq!(event["pid"], std::process::id(), "{event}");
    }
    eprintln!(
        "older connection: {} retransmits attributed to pid {} through /proc",
        mine.len(),
        std::process::id()
    );
}

/// `-p` and `-P`: only that process's, or that port's, connections.
#[test]
#[ignore = "kernel lab: run `cargo xtask test` as root"]
fn pid_and_port_filters_keep_only_their_connections() {
    let ns = Netns::new("filters");
    let netns = ns.inode.to_string();
    // Another process makes connections to port 8310 meanwhile.
    let other = Command::new("ip")
        .args(["netns", "exec", &ns.name, "python3", "-c", OTHER_PROCESS])
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3");
    let other_pid = other.id();
    let by_pid = Tracer::start(&[
        "--json",
        "--state",
        "--netns",
        &netns,
        "-p",
        &std::process::id().to_string(),
    ]);
    let by_port = Tracer::start(&["--json", "--state", "--netns", &netns, "-P", "8311"]);
    short_connection(&ns, "127.0.0.1:8311".parse().expect("address"));
    let status = other.wait_with_output().expect("python3");
    assert!(status.status.success());
    let (by_pid, by_port) = (by_pid.stop().events(), by_port.stop().events());

    assert!(!by_pid.is_empty());
    assert!(
        by_pid.iter().all(|e| e["pid"] == std::process::id()),
        "only this process: {by_pid:?}"
    );
    assert!(
        by_port
            .iter()
            .all(|e| e["lport"] == 8311 || e["rport"] == 8311),
        "only port 8311: {by_port:?}"
    );
    assert!(
        !by_port.iter().any(|e| e["pid"] == other_pid),
        "{by_port:?}"
    );
    assert_eq!(
        of_kind(&by_port, "state").len(),
        12,
        "listener, client and accepted socket"
    );
}

/// A process of another user: its uid and name on every transition of its
/// sockets, the accepted ones (created in softirq) among them.
#[test]
#[ignore = "kernel lab: run `cargo xtask test` as root"]
fn sockets_of_another_user_carry_its_uid_and_name() {
    let ns = Netns::new("uid");
    let tracer = Tracer::start(&["--json", "--state", "--netns", &ns.inode.to_string()]);
    let other = Command::new("ip")
        .args(["netns", "exec", &ns.name])
        .args([
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
        ])
        // The system's python: one in root's home is out of nobody's reach.
        .args(["/usr/bin/python3", "-c", OTHER_PROCESS])
        .output()
        .expect("python3 as nobody");
    let events = other_process_events(tracer, &other);
    assert!(
        of_kind(&events, "state")
            .iter()
            .all(|e| e["uid"] == 65534 && e["comm"] == "python3"),
        "{events:?}"
    );
}

/// What `tracer` saw of one run of `OTHER_PROCESS` (which exited as
/// `other`): its listener's 2 transitions and 5 connections of 5 per side.
fn other_process_events(tracer: Tracer, other: &Output) -> Vec<Value> {
    assert!(
        other.status.success(),
        "{}",
        String::from_utf8_lossy(&other.stderr)
    );
    let events = tracer.stop().events();
    let states = of_kind(&events, "state");
    assert_eq!(states.len(), 2 + 5 * 10, "{states:?}");
    events
}

/// Connects to its own listener on 8310 a few times, then exits; with an
/// argument, first waits for a line on stdin.
const OTHER_PROCESS: &str = "\
import socket, sys
if len(sys.argv) > 1:
    sys.stdin.readline()
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(('127.0.0.1', 8310)); s.listen()
for _ in range(5):
    c = socket.create_connection(('127.0.0.1', 8310)); a, _ = s.accept(); c.close(); a.close()
";

/// A cgroup v2 directory with a child, removed when dropped.
struct LabCgroup {
    parent: PathBuf,
    child: PathBuf,
}

impl LabCgroup {
    fn new() -> Self {
        let mounts = std::fs::read_to_string("/proc/self/mounts").expect("mounts");
        let root = mounts
            .lines()
            .find_map(|l| {
                let fields: Vec<&str> = l.split(' ').collect();
                (fields.get(2) == Some(&"cgroup2")).then(|| PathBuf::from(fields[1]))
            })
            .expect("a cgroup2 mount");
        let parent = root.join(format!("tcpretrans-lab-{}", std::process::id()));
        let child = parent.join("worker");
        std::fs::create_dir_all(&child).expect("mkdir cgroup");
        Self { parent, child }
    }
}

impl Drop for LabCgroup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.child);
        let _ = std::fs::remove_dir(&self.parent);
    }
}

/// `--cgroup`: only sockets created in that cgroup or below it, although
/// the traffic shares the namespace and the port numbers.
#[test]
#[ignore = "kernel lab: run `cargo xtask test` as root"]
fn cgroup_filter_keeps_only_sockets_of_that_cgroup_tree() {
    if kernel_lacks("cgroup.ancestors") {
        return skip(
            "the kernel's BTF has no cgroup.ancestors, which --cgroup reads (before 5.15)",
        );
    }
    let ns = Netns::new("cgroup");
    let cgroup = LabCgroup::new();
    let tracer = Tracer::start(&[
        "--json",
        "--state",
        "--netns",
        &ns.inode.to_string(),
        "--cgroup",
        cgroup.parent.to_str().expect("path"),
    ]);
    // This process is not in the cgroup: its connection must not show.
    short_connection(&ns, "127.0.0.1:8312".parse().expect("address"));
    // `ip netns exec` mounts a sysfs of its own: the cgroup is joined from here.
    let mut worker = Command::new("ip")
        .args([
            "netns",
            "exec",
            &ns.name,
            "python3",
            "-c",
            OTHER_PROCESS,
            "wait",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3");
    std::fs::write(cgroup.child.join("cgroup.procs"), worker.id().to_string())
        .expect("joining the cgroup");
    worker
        .stdin
        .take()
        .expect("stdin")
        .write_all(b"go\n")
        .expect("go");
    let worker = worker.wait_with_output().expect("python3");
    let events = other_process_events(tracer, &worker);
    assert!(
        events
            .iter()
            .all(|e| e["comm"] == "python3" && (e["lport"] == 8310 || e["rport"] == 8310)),
        "{events:?}"
    );
}

/// Per-socket kernel state goes when the socket does: after thousands of
/// short connections, nothing is left behind.
#[test]
#[ignore = "kernel lab: run `cargo xtask test` as root"]
fn kernel_maps_hold_nothing_after_thousands_of_connections() {
    const CONNECTIONS: usize = 2000;
    let ns = Netns::new("churn");
    let tracer = Tracer::start(&["--json", "--state", "--netns", &ns.inode.to_string()]);
    let alive = ns
        .enter(|| {
            let listener = std::net::TcpListener::bind("127.0.0.1:8320").expect("bind");
            for _ in 0..CONNECTIONS {
                let client = TcpStream::connect("127.0.0.1:8320").expect("connect");
                let (accepted, _) = listener.accept().expect("accept");
                drop(client);
                drop(accepted);
            }
            // One connection and the listener stay open past the tracer.
            let client = TcpStream::connect("127.0.0.1:8320").expect("connect");
            let (accepted, _) = listener.accept().expect("accept");
            (listener, client, accepted)
        })
        .join()
        .expect("churn");
    let output = tracer.stop();
    drop(alive);
    let events = output.events();
    assert!(events.len() >= CONNECTIONS * 10, "{} events", events.len());
    let maps = &output.summary()["kernel_maps"];
    assert_eq!(
        maps,
        &serde_json::json!({"sockets": 3, "listeners": 1, "connects": 0}),
        "only the live listener, client and accepted socket are tracked"
    );
    eprintln!(
        "{CONNECTIONS} closed connections, {} events: kernel maps {maps}",
        events.len()
    );
}

/// A process that names itself with terminal controls and a newline
/// (`prctl(PR_SET_NAME)`): text shows the name escaped, one line per event
/// and not a byte a terminal would act on; JSON carries the name as it is.
#[test]
#[ignore = "kernel lab: run `cargo xtask test` as root"]
fn a_process_name_with_controls_cannot_split_or_paint_text_lines() {
    const NAME: &str = "\x1b[31mRED\nX";
    const ESCAPED: &str = r"\x1b[31mRED\nX";
    let ns = Netns::new("name");
    let netns = ns.inode.to_string();
    let text = Tracer::start(&["--state", "--netns", &netns]);
    let json = Tracer::start(&["--json", "--state", "--netns", &netns]);
    // PR_SET_NAME is 15; the name is set before the process makes a socket.
    let renamed = format!(
        "import ctypes\nassert ctypes.CDLL(None).prctl(15, b'\\x1b[31mRED\\nX', 0, 0, 0) == 0\n\
         {OTHER_PROCESS}"
    );
    let other = Command::new("ip")
        .args(["netns", "exec", &ns.name, "python3", "-c", &renamed])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3");
    let pid = other.id();
    let other = other.wait_with_output().expect("python3");
    let events = other_process_events(json, &other);
    let in_json: Vec<_> = events.iter().filter(|e| e["pid"] == pid).collect();
    assert!(
        !in_json.is_empty() && in_json.iter().all(|e| e["comm"] == NAME),
        "JSON carries the exact name: {events:?}"
    );
    let text = text.stop();

    let mut lines = text.stdout.lines();
    let kind_column = lines.next().and_then(|h| h.find("T>")).expect("header");
    let mut named = 0;
    for line in lines {
        assert!(
            !line.chars().any(char::is_control),
            "a control character in {line:?}"
        );
        // A whole event line: a time first, its kind in the T column.
        let kind = line.get(kind_column..kind_column + 2);
        assert!(
            line.starts_with(|c: char| c.is_ascii_digit())
                && matches!(kind, Some("R>" | "L>" | "S>" | "X>" | "C>" | "E>")),
            "not a whole event line: {line:?}"
        );
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields[1] == pid.to_string() {
            assert_eq!(fields[2], ESCAPED, "{line:?}");
            named += 1;
        }
    }
    assert_eq!(named, in_json.len(), "{}", text.stdout);
    assert!(!text.stderr.contains('\x1b'), "{}", text.stderr);
    eprintln!("{named} lines of pid {pid}, each named {ESCAPED}");
}
