//! Connection churn: the load that makes state events. Each connection is
//! opened, closed by the client first, then by the server after it read
//! the FIN: 10 state transitions (5 per side) on a loss-free path.
use std::{
    io::Read,
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream},
    os::fd::AsRawFd as _,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use nix::sys::socket::{Shutdown, shutdown};

use crate::Netns;

/// Connections a client may have opened that its server has not finished:
/// below the listen backlog, so that no handshake is ever dropped (which
/// would change the transitions a connection makes).
const MAX_IN_FLIGHT: u64 = 64;

/// State transitions one churned connection makes (both ends).
pub const TRANSITIONS_PER_CONNECTION: u64 = 10;
/// And each client's listener: CLOSE -> LISTEN, LISTEN -> CLOSE.
pub const TRANSITIONS_PER_LISTENER: u64 = 2;

/// What to churn.
#[derive(Debug, Clone, Copy)]
pub struct Churn {
    /// Connections per second in total; `None`: as fast as it goes.
    pub rate: Option<u32>,
    pub duration: Duration,
    /// Client threads (each has its own listener and port).
    pub clients: u16,
    /// The first listener's port; client `i` connects to `base_port + i`.
    pub base_port: u16,
    /// The nice value of the churn's threads: 19 yields the CPU to any
    /// process of default priority, such as a tracer sharing one CPU with them.
    pub nice: i32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChurnReport {
    pub connections: u64,
    /// connect() calls that failed (e.g. no local port free).
    pub failures: u64,
    pub elapsed: Duration,
}

impl ChurnReport {
    pub fn per_second(&self) -> f64 {
        self.connections as f64 / self.elapsed.as_secs_f64()
    }

    /// The state transitions this churn made, when none failed.
    pub fn transitions(&self, clients: u16) -> u64 {
        self.connections * TRANSITIONS_PER_CONNECTION
            + u64::from(clients) * TRANSITIONS_PER_LISTENER
    }
}

impl Churn {
    /// Prepares `ns` for sustained churn: a wide ephemeral port range above
    /// the lab's fixed ports (a client's TIME_WAIT on a server's port would
    /// keep that server from binding it), and reuse of TIME_WAIT ports
    /// (closed connections hold theirs for 60 s).
    pub fn tune(ns: &Netns) {
        ns.sysctl("net.ipv4.ip_local_port_range", "10000 65000");
        ns.sysctl("net.ipv4.tcp_tw_reuse", "1");
    }

    /// Runs the churn in `ns` and waits for it to end.
    pub fn run(self, ns: &Netns) -> ChurnReport {
        self.run_until(ns, &Arc::new(AtomicBool::new(false)))
    }

    /// Runs the churn until its duration has passed or `stop` is set.
    pub fn run_until(self, ns: &Netns, stop: &Arc<AtomicBool>) -> ChurnReport {
        let connections = Arc::new(AtomicU64::new(0));
        let failures = Arc::new(AtomicU64::new(0));
        let started = Instant::now();
        let clients: Vec<_> = (0..self.clients)
            .map(|i| {
                let (connections, failures) = (connections.clone(), failures.clone());
                let stop = stop.clone();
                ns.enter(move || self.client(i, &connections, &failures, &stop))
            })
            .collect();
        for client in clients {
            client.join().expect("churn client");
        }
        ChurnReport {
            connections: connections.load(Ordering::Relaxed),
            failures: failures.load(Ordering::Relaxed),
            elapsed: started.elapsed(),
        }
    }

    /// One client and its server: connections in sequence, paced to this
    /// client's share of the rate.
    fn client(self, index: u16, connections: &AtomicU64, failures: &AtomicU64, stop: &AtomicBool) {
        renice(self.nice);
        let server = SocketAddr::from((Ipv4Addr::LOCALHOST, self.base_port + index));
        let listener = TcpListener::bind(server).expect("bind churn listener");
        let listening = listener.as_raw_fd();
        let served = Arc::new(AtomicU64::new(0));
        let acceptor = {
            let served = served.clone();
            let nice = self.nice;
            thread::spawn(move || {
                renice(nice);
                serve(&listener, &served)
            })
        };
        let interval = self
            .rate
            .map(|rate| Duration::from_secs_f64(f64::from(self.clients) / f64::from(rate.max(1))));
        let started = Instant::now();
        let mut opened = 0u32;
        let mut connected = 0u64;
        while started.elapsed() < self.duration && !stop.load(Ordering::Relaxed) {
            if let Some(interval) = interval {
                let due = started + interval * opened;
                if let Some(wait) = due.checked_duration_since(Instant::now()) {
                    thread::sleep(wait);
                }
            }
            opened += 1;
            let deadline = Instant::now() + crate::PATIENCE;
            while connected - served.load(Ordering::Relaxed) >= MAX_IN_FLIGHT
                && Instant::now() < deadline
            {
                thread::yield_now();
            }
            match TcpStream::connect(server) {
                Ok(stream) => {
                    drop(stream);
                    connected += 1;
                    connections.fetch_add(1, Ordering::Relaxed);
                }
                Err(_) => {
                    failures.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        // A connection still queued when the listener closes would be
        // aborted (fewer transitions): the server finishes them all first.
        let deadline = Instant::now() + crate::PATIENCE;
        while served.load(Ordering::Relaxed) < connected && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(1));
        }
        // Closes the listener (LISTEN -> CLOSE) and fails the acceptor's
        // accept(). The acceptor owns the socket until it returns, so the
        // descriptor is still this listener's.
        shutdown(listening, Shutdown::Read).expect("shutdown churn listener");
        acceptor.join().expect("churn server");
    }
}

/// Sets the calling thread's nice value (Linux keeps one per thread).
fn renice(nice: i32) {
    // SAFETY: setpriority takes no pointers; `who` 0 is the calling thread.
    let set = unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, nice) };
    assert_eq!(
        set,
        0,
        "setpriority({nice}): {}",
        std::io::Error::last_os_error()
    );
}

/// Accepts, reads to the client's FIN, closes, counts; ends when the
/// listener is shut down.
fn serve(listener: &TcpListener, served: &AtomicU64) {
    let mut buf = [0u8; 64];
    while let Ok((mut conn, _)) = listener.accept() {
        let _ = conn.set_read_timeout(Some(crate::PATIENCE));
        while matches!(conn.read(&mut buf), Ok(n) if n > 0) {}
        drop(conn);
        served.fetch_add(1, Ordering::Relaxed);
    }
}
