//! Programs nobody on the project wrote, from Debian: a prefork server
//! (nginx: the master listens, a worker accepts) and iperf3 on a
//! dual-stack listener, against `ss -tnp` and the kernel's counters.
use std::{
    collections::{BTreeMap, BTreeSet},
    ffi::OsStr,
    fs,
    io::{Read, Write},
    net::TcpStream,
    os::unix::process::CommandExt as _,
    path::PathBuf,
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use nix::{
    sys::{
        prctl,
        signal::{Signal, kill},
    },
    unistd::Pid,
};
use serde_json::Value;

use crate::harness::{
    Netns, PATIENCE, Tracer, closed, delta, drop_inbound, of_kind, sent_segments, unseen_segments,
};

/// A program run in a network namespace of the lab and a PID namespace of
/// its own, as that namespace's first process: when it dies the kernel
/// kills every process it started, and it dies with this handle or with
/// the test process (however that ends).
struct Daemon {
    /// `unshare`, whose only child is the program.
    unshare: Child,
}

impl Daemon {
    fn start(ns: &Netns, program: &[&OsStr]) -> Self {
        let mut command = Command::new("ip");
        command
            .args(["netns", "exec", &ns.name])
            .args(["unshare", "--pid", "--kill-child"])
            .args(program)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            // nginx logs to its directory; `unshare` complains of the
            // signal mask it cannot restore once its child is killed.
            .stderr(Stdio::null());
        // SAFETY: only an async-signal-safe system call between fork and exec.
        unsafe {
            command
                .pre_exec(|| prctl::set_pdeathsig(Signal::SIGKILL).map_err(std::io::Error::from));
        }
        let unshare = command
            .spawn()
            .unwrap_or_else(|e| panic!("starting {program:?}: {e}"));
        Self { unshare }
    }

    /// The program's pid (in the host's PID namespace, as the tracer and
    /// `ss` see it), once it runs.
    fn pid(&self) -> Option<u32> {
        children(self.unshare.id()).first().copied()
    }
}

impl Drop for Daemon {
    /// Kills the program, and so its PID namespace; `unshare` then exits
    /// and is reaped (killing it first would leave the program unreaped).
    fn drop(&mut self) {
        match self.pid() {
            Some(pid) => {
                let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
            }
            None => {
                let _ = self.unshare.kill();
            }
        }
        let _ = self.unshare.wait();
    }
}

/// nginx with a master and two workers, serving `hello` on a port of a
/// namespace's loopback; stopped and its files removed on drop.
struct Nginx {
    daemon: Daemon,
    master: u32,
    workers: Vec<u32>,
    dir: PathBuf,
}

impl Nginx {
    const WORKERS: usize = 2;

    /// Started, and listening once this returns. `reuseport` gives each
    /// worker a listener of its own (all made by the master), so that the
    /// kernel spreads connections over the workers by their 4-tuple.
    fn start(ns: &Netns, port: u16) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "tcpretrans-lab-nginx-{}-{port}",
            std::process::id()
        ));
        fs::create_dir_all(&dir).expect("nginx directory");
        let d = dir.display();
        let config = format!(
            "daemon off;
master_process on;
worker_processes {workers};
pid {d}/nginx.pid;
events {{ worker_connections 64; }}
http {{
    access_log off;
    client_body_temp_path {d}/body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    server {{
        listen 127.0.0.1:{port} reuseport;
        location / {{ return 200 \"hello\\n\"; }}
    }}
}}
",
            workers = Self::WORKERS
        );
        fs::write(dir.join("nginx.conf"), config).expect("nginx.conf");
        let (config, error_log) = (dir.join("nginx.conf"), dir.join("error.log"));
        let daemon = Daemon::start(
            ns,
            &[
                "nginx".as_ref(),
                "-p".as_ref(),
                dir.as_os_str(),
                "-c".as_ref(),
                config.as_os_str(),
                "-e".as_ref(),
                error_log.as_os_str(),
            ],
        );
        let mut nginx = Self {
            daemon,
            master: 0,
            workers: Vec::new(),
            dir,
        };
        let deadline = Instant::now() + PATIENCE;
        loop {
            nginx.master = nginx.daemon.pid().unwrap_or(0);
            nginx.workers = children(nginx.master);
            let listeners = ns.exec(&["ss", "-Htln", &format!("sport = :{port}")]);
            if nginx.master != 0
                && nginx.workers.len() == Self::WORKERS
                && listeners.lines().count() == Self::WORKERS
            {
                return nginx;
            }
            assert!(
                Instant::now() < deadline,
                "nginx did not start: {}",
                fs::read_to_string(nginx.dir.join("error.log")).unwrap_or_default()
            );
            thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// The processes whose parent is `pid`.
fn children(pid: u32) -> Vec<u32> {
    let Ok(processes) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    processes
        .flatten()
        .filter_map(|entry| {
            let child: u32 = entry.file_name().to_str()?.parse().ok()?;
            let stat = fs::read_to_string(entry.path().join("stat")).ok()?;
            let (_, after_name) = stat.rsplit_once(')')?;
            let parent: u32 = after_name.split_whitespace().nth(1)?.parse().ok()?;
            (parent == pid).then_some(child)
        })
        .collect()
}

/// One HTTP request on a connection of its own, from the namespace: the
/// client's port and the pid `ss -tnp` names for the server's end while
/// the connection is open. The client closes first.
fn request(ns: &Netns, port: u16) -> (u16, u32) {
    let (client, client_port) = ns
        .enter(move || {
            let mut client = TcpStream::connect(("127.0.0.1", port)).expect("connect to nginx");
            client
                .set_read_timeout(Some(PATIENCE))
                .expect("read timeout");
            client
                .write_all(b"GET / HTTP/1.1\r\nHost: lab\r\n\r\n")
                .expect("request");
            let mut response = Vec::new();
            let mut buf = [0; 512];
            while !response.ends_with(b"hello\n") {
                match client.read(&mut buf).expect("response") {
                    0 => panic!("nginx closed: {}", String::from_utf8_lossy(&response)),
                    n => response.extend_from_slice(&buf[..n]),
                }
            }
            let client_port = client.local_addr().expect("local address").port();
            (client, client_port)
        })
        .join()
        .expect("request");
    let sockets = ns.exec(&[
        "ss",
        "-Htnp",
        "state",
        "established",
        &format!("( sport = :{port} and dport = :{client_port} )"),
    ]);
    let pid = sockets
        .split("pid=")
        .nth(1)
        .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|pid| pid.parse().ok())
        .unwrap_or_else(|| panic!("ss names no process for port {client_port}: {sockets}"));
    drop(client);
    (client_port, pid)
}

/// The events of the server's end of the connection from `client_port`.
/// Older kernels report a socket's first transition before its remote end
/// is set: that one is found by the socket's address, just before.
fn server_side(events: &[Value], port: u16, client_port: u16) -> Vec<&Value> {
    let mut unset_remote: BTreeMap<&str, &Value> = BTreeMap::new();
    let mut found = Vec::new();
    for event in events.iter().filter(|e| e["lport"] == port) {
        let socket = event["skaddr"].as_str().unwrap_or_default();
        if event["rport"] == 0 {
            unset_remote.insert(socket, event);
        } else if event["rport"] == client_port {
            found.extend(unset_remote.remove(socket));
            found.push(event);
        }
    }
    found
}

/// A prefork server started before the tracer: its listeners are the
/// master's (found in /proc at start), a connection is the master's until a
/// worker accepts it, and the worker's from then on, as `ss -tnp` says.
#[test]
#[ignore = "kernel lab: run `cargo xtask test` as root"]
fn a_prefork_workers_connections_are_the_workers() {
    const PORT: u16 = 8400;
    const REQUESTS: usize = 12;
    let ns = Netns::new("nginx");
    let nginx = Nginx::start(&ns, PORT);
    let master = nginx.master;
    let tracer = Tracer::start(&["--json", "--state", "--netns", &ns.inode.to_string()]);
    let served: Vec<(u16, u32)> = (0..REQUESTS).map(|_| request(&ns, PORT)).collect();
    closed(&ns, PORT);
    let events = tracer.stop().events();

    for &(client_port, worker) in &served {
        assert!(
            nginx.workers.contains(&worker),
            "ss: {worker} is not a worker"
        );
        let server = server_side(&events, PORT, client_port);
        let handshake =
            |e: &&&Value| matches!(e["old_state"].as_str(), Some("LISTEN" | "SYN_RECV"));
        let (before, after): (Vec<&Value>, Vec<&Value>) = server.iter().partition(|e| handshake(e));
        assert_eq!(
            before.len(),
            2,
            "LISTEN -> SYN_RECV -> ESTABLISHED: {server:#?}"
        );
        for event in before {
            assert_eq!(
                event["pid"], master,
                "before accept(), the listener's owner: {event}"
            );
            assert_eq!(event["comm"], "nginx", "{event}");
        }
        assert!(after.len() >= 3, "closed and ended: {server:#?}");
        for event in after {
            assert_eq!(event["pid"], worker, "after accept(), as ss -tnp: {event}");
        }
        let ends: Vec<&Value> = of_kind(&events, "session_end")
            .into_iter()
            .filter(|e| e["lport"] == PORT && e["rport"] == client_port)
            .collect();
        assert_eq!(ends.len(), 1, "{ends:?}");
        // Begun while traced, on every kernel's order of the first
        // transition and the remote end.
        assert!(ends[0]["opened"].is_string(), "{}", ends[0]);
    }
    eprintln!(
        "{REQUESTS} connections: handshakes named master {master}, the rest the worker ss named"
    );
}

/// `-p WORKER` shows exactly the connections `ss -tnp` gave that worker.
#[test]
#[ignore = "kernel lab: run `cargo xtask test` as root"]
fn pid_filter_on_a_worker_shows_its_connections() {
    const PORT: u16 = 8401;
    const EACH: usize = 3;
    const MAX_REQUESTS: usize = 64;
    let ns = Netns::new("nginxpid");
    let nginx = Nginx::start(&ns, PORT);
    let chosen = nginx.workers[0];
    let tracer = Tracer::start(&[
        "--json",
        "--state",
        "--netns",
        &ns.inode.to_string(),
        "-p",
        &chosen.to_string(),
    ]);
    // The kernel spreads connections by hash: each worker's share comes
    // within a bounded number of requests.
    let mut by_worker: BTreeMap<u32, BTreeSet<u16>> = BTreeMap::new();
    for _ in 0..MAX_REQUESTS {
        let (client_port, worker) = request(&ns, PORT);
        by_worker.entry(worker).or_default().insert(client_port);
        if nginx
            .workers
            .iter()
            .all(|w| by_worker.get(w).is_some_and(|p| p.len() >= EACH))
        {
            break;
        }
    }
    closed(&ns, PORT);
    let events = tracer.stop().events();

    assert!(
        nginx
            .workers
            .iter()
            .all(|w| by_worker.get(w).is_some_and(|p| p.len() >= EACH)),
        "each worker served {EACH} of {MAX_REQUESTS}: {by_worker:?}"
    );
    let shown: BTreeSet<u16> = events
        .iter()
        .map(|e| {
            assert_eq!(e["pid"], chosen, "{e}");
            assert_eq!(e["lport"], PORT, "only nginx's ends: {e}");
            e["rport"].as_u64().expect("rport") as u16
        })
        .collect();
    assert_eq!(shown, by_worker[&chosen], "connections of worker {chosen}");
}

/// iperf3's server listens on `::`: its IPv4 connections are IPv6 sockets
/// with IPv4-mapped addresses. `-4` (and an IPv4 prefix) shows them, as
/// IPv4, with every retransmitted segment the kernel counted; `-6` does not.
#[test]
#[ignore = "kernel lab: run `cargo xtask test` as root"]
fn ipv4_on_a_dual_stack_listener_is_ipv4() {
    const PORT: u16 = 5201;
    let ns = Netns::new("iperf");
    ns.ip(&["link", "set", "lo", "mtu", "1500"]);
    drop_inbound(&ns, PORT, 2);
    let port = PORT.to_string();
    let server = Daemon::start(
        &ns,
        &["iperf3", "--server", "--port", &port].map(OsStr::new),
    );
    let deadline = Instant::now() + PATIENCE;
    // `*`: a dual-stack listener (`ss` shows `[::]` for an IPv6-only one).
    while !ns
        .exec(&["ss", "-Htln", &format!("sport = :{PORT}")])
        .contains(&format!("*:{PORT}"))
    {
        assert!(Instant::now() < deadline, "iperf3 listens on ::");
        thread::sleep(Duration::from_millis(20));
    }
    let netns = ns.inode.to_string();
    let upload = |family: &str| {
        let tracer = Tracer::start(&[
            "--json",
            "--state",
            family,
            "--raddr",
            "127.0.0.0/8",
            "--netns",
            &netns,
        ]);
        let before = ns.counters();
        ns.exec(&[
            "iperf3",
            "--client",
            "127.0.0.1",
            "--port",
            &PORT.to_string(),
            "--time",
            "2",
        ]);
        // The client has exited; its kernel socket may still be sending.
        closed(&ns, PORT);
        let after = ns.counters();
        let output = tracer.stop();
        let counts = |name: &str| delta(&before, &after, name);
        let kernel = (counts("Tcp.RetransSegs"), counts("TcpExt.TCPRetransFail"));
        (output.events(), output.stderr, kernel)
    };
    let (ipv4, said, (kernel_segments, kernel_failed)) = upload("-4");
    let (ipv6, _, (kernel_segments_v6, _)) = upload("-6");
    drop(server);

    let retransmits = of_kind(&ipv4, "retransmit");
    assert!(kernel_segments > 0, "the loss made retransmissions");
    // Each connection's account, to tell which one a difference is in.
    let sessions: Vec<String> = of_kind(&ipv4, "session_end")
        .iter()
        .map(|e| {
            // The socket's own count as its last retransmission read it.
            let total_retrans = retransmits
                .iter()
                .filter(|r| r["lport"] == e["lport"] && r["rport"] == e["rport"])
                .filter_map(|r| r["total_retrans"].as_u64())
                .max();
            format!(
                "{}:{} -> {}:{} {} segments {} unseen {} failed {}, total_retrans {total_retrans:?}",
                e["laddr"],
                e["lport"],
                e["raddr"],
                e["rport"],
                e["by_type"],
                e["segments"],
                e["unseen_segments"],
                e["failed"]
            )
        })
        .collect();
    // What the kernel retransmitted without running the program, each
    // connection's count tells (under a filter, the namespace's cannot).
    let unseen = unseen_segments(&retransmits);
    assert_eq!(
        sent_segments(&retransmits) + unseen,
        kernel_segments,
        "-4 vs Tcp.RetransSegs (TCPRetransFail +{kernel_failed}); connections:\n{}\ntracer:\n{said}",
        sessions.join("\n")
    );
    if unseen > 0 {
        eprintln!("{unseen} segments retransmitted without an event, as the tool said");
        assert!(
            said.contains(&format!(
                "the sockets' own counts grew by {unseen} retransmitted segments no event reported"
            )),
            "{said}"
        );
    }
    assert!(
        ipv4.iter()
            .any(|e| e["lport"] == PORT && e["event"] == "state"),
        "the server's (IPv6) sockets' transitions: {ipv4:#?}"
    );
    for event in &ipv4 {
        assert_eq!(event["family"], 4, "{event}");
        assert!(
            event["laddr"]
                .as_str()
                .is_some_and(|a| a.starts_with("127.")),
            "{event}"
        );
    }
    assert!(kernel_segments_v6 > 0);
    assert!(
        ipv6.is_empty(),
        "-6 shows none of the IPv4 traffic: {ipv6:#?}"
    );
    eprintln!(
        "-4: {} events, {kernel_segments} segments = Tcp.RetransSegs; -6: none of {kernel_segments_v6}",
        ipv4.len()
    );
}
