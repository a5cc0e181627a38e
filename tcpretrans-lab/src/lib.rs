//! The kernel lab's scaffolding, shared by the lab tests and `cargo xtask
//! bench | soak`: network namespaces made here and always removed, packet
//! loss with nftables, and real TCP traffic inside them.
//!
//! Helpers panic with a message that says what failed: a broken lab must
//! stop the test or benchmark that needs it.
use std::{
    collections::HashMap,
    fs,
    io::{Read, Write},
    net::{Shutdown, SocketAddr, TcpListener, TcpStream},
    os::unix::fs::MetadataExt,
    path::Path,
    process::{Command, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    thread,
    time::Duration,
};

use nix::sched::{CloneFlags, setns};

pub mod churn;
pub mod kernel_counts;
pub mod process;

/// Upper bound for anything the lab waits on.
pub const PATIENCE: Duration = Duration::from_secs(20);

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

/// A network namespace of the lab's own, deleted on drop (also when the
/// test fails).
pub struct Netns {
    pub name: String,
    pub inode: u32,
}

impl Netns {
    /// `tcpretrans-lab-PID-TAG-N`, with its loopback up.
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

    /// Sets a sysctl this kernel may not have (one added after the oldest
    /// kernel the lab runs on); whether it has it.
    pub fn sysctl_if_present(&self, key: &str, value: &str) -> bool {
        let present = Path::new("/proc/sys").join(key.replace('.', "/")).exists();
        if present {
            self.sysctl(key, value);
        }
        present
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

/// A non-blocking `connect()` to a port of 127.0.0.1 nothing listens on:
/// it returns EINPROGRESS, and its failure is the socket's error once the
/// socket is writable. Returns that error (`SO_ERROR`).
pub fn refused_without_waiting(ns: &Netns, port: u16) -> nix::errno::Errno {
    use std::os::fd::{AsFd, AsRawFd};

    use nix::{
        errno::Errno,
        poll::{PollFd, PollFlags, PollTimeout, poll},
        sys::socket::{
            AddressFamily, SockFlag, SockType, SockaddrIn, connect, getsockopt, socket, sockopt,
        },
    };
    ns.enter(move || {
        let fd = socket(
            AddressFamily::Inet,
            SockType::Stream,
            SockFlag::SOCK_NONBLOCK,
            None,
        )
        .expect("socket");
        let nowhere = SockaddrIn::new(127, 0, 0, 1, port);
        let started = connect(fd.as_raw_fd(), &nowhere).expect_err("in progress");
        assert_eq!(started, Errno::EINPROGRESS);
        let mut ready = [PollFd::new(fd.as_fd(), PollFlags::POLLOUT)];
        let patience = PollTimeout::try_from(PATIENCE).expect("a poll timeout");
        poll(&mut ready, patience).expect("poll");
        Errno::from_raw(getsockopt(&fd, sockopt::SocketError).expect("SO_ERROR"))
    })
    .join()
    .expect("non-blocking connect")
}

/// State transitions one `bulk_upload` makes: its listener's 2 and the
/// connection's 10 (lost packets only add retransmissions).
pub const BULK_UPLOAD_TRANSITIONS: u64 = 12;

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
