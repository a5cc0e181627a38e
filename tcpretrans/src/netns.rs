//! What a network namespace holds right now, read from inside it: TIME_WAIT
//! sockets against `tcp_max_tw_buckets`, local ports in use against
//! `ip_local_port_range` — the two limits of the seed's stories — and its
//! TCP counters.
use std::{
    collections::BTreeSet,
    fs::{self, File},
    io,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    thread,
};

use nix::sched::{CloneFlags, setns};
use serde::Serialize;
use tcpretrans_common::snmp;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum NetnsError {
    #[error("network namespace {0} has no process or bind mount left to enter it by")]
    Gone(u32),
    #[error("cannot enter network namespace {inode}: {source}")]
    Enter { inode: u32, source: io::Error },
    #[error("reading network namespace {inode}: {source}")]
    Read { inode: u32, source: io::Error },
    #[error("cannot tell which network namespace this is: {0}")]
    Own(#[source] io::Error),
    #[error("network namespace {inode}: /proc/net/{file} has no `{group}: {name}`")]
    NoCounter {
        inode: u32,
        file: &'static str,
        group: &'static str,
        name: &'static str,
    },
}

/// A namespace's counters of retransmitted segments.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RetransCounts {
    /// `Tcp: RetransSegs`: every segment retransmitted, counted as it is
    /// handed to IP.
    pub segs: u64,
    /// `TcpExt: TCPRetransFail`: those of them whose sending then failed
    /// (no memory, a full queue, no route). Never sent, they reach the
    /// tracepoint as failed attempts (since 6.17) or not at all.
    pub failed: u64,
}

impl RetransCounts {
    /// What was counted since `earlier`.
    pub fn since(self, earlier: Self) -> Self {
        Self {
            segs: self.segs.saturating_sub(earlier.segs),
            failed: self.failed.saturating_sub(earlier.failed),
        }
    }

    /// Of a difference: the segments retransmitted and sent.
    pub fn sent(self) -> u64 {
        self.segs.saturating_sub(self.failed)
    }
}

/// TCP occupancy of one network namespace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Occupancy {
    pub netns: u32,
    pub time_wait: u64,
    pub tcp_max_tw_buckets: u64,
    /// Distinct local ports of TCP sockets (any state) inside the range.
    pub local_ports_in_use: usize,
    pub local_port_range: (u16, u16),
}

/// The two limits of a namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub tcp_max_tw_buckets: u64,
    pub local_port_range: (u16, u16),
}

/// Reads the occupancy of the namespace with this inode, from inside it.
pub fn occupancy(inode: u32) -> Result<Occupancy, NetnsError> {
    Namespace::open(inode)?.read(|| {
        let limits = read_limits()?;
        read_counts(inode, Path::new("/proc/thread-self/net"), limits)
    })
}

/// Reads the occupancy of a namespace without entering it, given its
/// limits (which only its members see in /proc/sys): its counts come from
/// the `/proc/PID/net` of `member`, a process or thread in it.
pub fn occupancy_outside(inode: u32, member: &Path, limits: Limits) -> io::Result<Occupancy> {
    read_counts(inode, &member.join("net"), limits)
}

/// A network namespace held open: it can be read from inside until dropped,
/// even after every process left it.
#[derive(Debug)]
pub struct Namespace {
    pub inode: u32,
    /// `None` for the tool's own namespace, read in place: entering even
    /// that one takes `CAP_SYS_ADMIN`.
    file: Option<File>,
}

impl Namespace {
    /// The namespace the tool runs in.
    pub fn own() -> Result<Self, NetnsError> {
        let inode = own_inode().map_err(NetnsError::Own)?;
        Ok(Self { inode, file: None })
    }

    /// The namespace with this inode.
    pub fn open(inode: u32) -> Result<Self, NetnsError> {
        if own_inode().is_ok_and(|own| own == inode) {
            return Ok(Self { inode, file: None });
        }
        let path = find(inode).ok_or(NetnsError::Gone(inode))?;
        let file = File::open(&path).map_err(|source| NetnsError::Enter { inode, source })?;
        Ok(Self {
            inode,
            file: Some(file),
        })
    }

    /// Its TCP's retransmitted segments, IPv4 and IPv6 alike (one MIB
    /// serves both).
    pub fn retrans_counts(&self) -> Result<RetransCounts, NetnsError> {
        let (snmp, netstat) = self.read(|| {
            Ok((
                fs::read_to_string("/proc/thread-self/net/snmp")?,
                fs::read_to_string("/proc/thread-self/net/netstat")?,
            ))
        })?;
        let counter = |text: &str, file, group, name| {
            snmp::counter(text, group, name).ok_or(NetnsError::NoCounter {
                inode: self.inode,
                file,
                group,
                name,
            })
        };
        Ok(RetransCounts {
            segs: counter(&snmp, "snmp", "Tcp", "RetransSegs")?,
            failed: counter(&netstat, "netstat", "TcpExt", "TCPRetransFail")?,
        })
    }

    /// Runs `read` inside the namespace.
    fn read<T: Send>(&self, read: impl FnOnce() -> io::Result<T> + Send) -> Result<T, NetnsError> {
        let inode = self.inode;
        let Some(file) = &self.file else {
            return read().map_err(|source| NetnsError::Read { inode, source });
        };
        // setns() changes the calling thread only: do it on a thread of our own.
        thread::scope(|scope| {
            scope
                .spawn(|| {
                    setns(file, CloneFlags::CLONE_NEWNET).map_err(|e| NetnsError::Enter {
                        inode,
                        source: e.into(),
                    })?;
                    read().map_err(|source| NetnsError::Read { inode, source })
                })
                .join()
                .unwrap_or(Err(NetnsError::Gone(inode)))
        })
    }
}

/// The calling thread's namespace.
fn own_inode() -> io::Result<u32> {
    let ino = fs::metadata("/proc/thread-self/ns/net")?.ino();
    u32::try_from(ino).map_err(|_| io::Error::other(format!("namespace inode {ino} out of range")))
}

/// `--netns`: an inode number, a name from `ip netns` (`/run/netns/NAME`),
/// or a path such as `/proc/PID/ns/net`; the namespace must exist.
pub fn parse(arg: &str) -> Result<u32, String> {
    let inode = if arg.bytes().all(|b| b.is_ascii_digit()) {
        arg.parse::<u32>()
            .ok()
            .filter(|&i| i > 0)
            .ok_or_else(|| format!("`{arg}` is not a namespace inode number"))?
    } else {
        let path = if arg.contains('/') {
            PathBuf::from(arg)
        } else {
            Path::new("/run/netns").join(arg)
        };
        let meta = fs::metadata(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        u32::try_from(meta.ino()).map_err(|_| format!("{} is not a namespace", path.display()))?
    };
    find(inode).map(|_| inode).ok_or_else(|| {
        format!(
            "no network namespace with inode {inode} is visible here \
             (see `ls -Li /proc/PID/ns/net` or `ip netns list`)"
        )
    })
}

/// A file that refers to the namespace: a bind mount from `ip netns`, or a
/// process or thread living in it.
fn find(inode: u32) -> Option<PathBuf> {
    if let Ok(mounts) = fs::read_dir("/run/netns")
        && let Some(found) = mounts
            .flatten()
            .map(|e| e.path())
            .find(|p| is_namespace(p, inode))
    {
        return Some(found);
    }
    member(inode).map(|m| m.join("ns/net"))
}

/// A process (`/proc/PID`), or else a thread (`/proc/PID/task/TID`),
/// living in the namespace.
pub fn member(inode: u32) -> Option<PathBuf> {
    let pids: Vec<PathBuf> = fs::read_dir("/proc")
        .ok()?
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_str()
                .is_some_and(|n| n.bytes().all(|b| b.is_ascii_digit()))
        })
        .map(|e| e.path())
        .collect();
    let lives_in = |p: &PathBuf| is_member(p, inode);
    pids.iter().find(|p| lives_in(p)).cloned().or_else(|| {
        pids.iter()
            .filter_map(|p| fs::read_dir(p.join("task")).ok())
            .flat_map(|tasks| tasks.flatten().map(|t| t.path()))
            .find(lives_in)
    })
}

/// Whether the process or thread at `/proc/...` lives in the namespace.
pub fn is_member(task: &Path, inode: u32) -> bool {
    is_namespace(&task.join("ns/net"), inode)
}

fn is_namespace(path: &Path, inode: u32) -> bool {
    fs::metadata(path).is_ok_and(|m| m.ino() == u64::from(inode))
}

/// The calling thread's namespace's limits.
fn read_limits() -> io::Result<Limits> {
    let sysctl = |name: &str| fs::read_to_string(Path::new("/proc/sys/net/ipv4").join(name));
    let tcp_max_tw_buckets = sysctl("tcp_max_tw_buckets")?.trim().parse().unwrap_or(0);
    let range = sysctl("ip_local_port_range")?;
    let mut bounds = range
        .split_whitespace()
        .filter_map(|v| v.parse::<u16>().ok());
    let local_port_range = (bounds.next().unwrap_or(0), bounds.next().unwrap_or(0));
    Ok(Limits {
        tcp_max_tw_buckets,
        local_port_range,
    })
}

/// Counts a namespace's sockets in its `net` directory of /proc.
fn read_counts(inode: u32, net: &Path, limits: Limits) -> io::Result<Occupancy> {
    let sockstat = fs::read_to_string(net.join("sockstat"))?;
    let time_wait = parse_sockstat_tw(&sockstat).unwrap_or(0);
    let mut ports = BTreeSet::new();
    for table in ["tcp", "tcp6"] {
        if let Ok(text) = fs::read_to_string(net.join(table)) {
            ports.extend(local_ports(&text));
        }
    }
    let (low, high) = limits.local_port_range;
    Ok(Occupancy {
        netns: inode,
        time_wait,
        tcp_max_tw_buckets: limits.tcp_max_tw_buckets,
        local_ports_in_use: ports.range(low..=high).count(),
        local_port_range: limits.local_port_range,
    })
}

/// `TCP: inuse 5 orphan 0 tw 3 alloc 6 mem 1` → 3.
fn parse_sockstat_tw(sockstat: &str) -> Option<u64> {
    let line = sockstat.lines().find(|l| l.starts_with("TCP:"))?;
    let mut words = line.split_whitespace();
    words.by_ref().find(|w| *w == "tw")?;
    words.next()?.parse().ok()
}

/// Local ports of a `/proc/net/tcp{,6}` table (`0100007F:9C40` → 40000).
fn local_ports(table: &str) -> impl Iterator<Item = u16> + '_ {
    table.lines().skip(1).filter_map(|line| {
        let local = line.split_whitespace().nth(1)?;
        u16::from_str_radix(local.rsplit_once(':')?.1, 16).ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_counter_is_named_with_its_file() {
        let missing = NetnsError::NoCounter {
            inode: 7,
            file: "netstat",
            group: "TcpExt",
            name: "TCPRetransFail",
        };
        assert_eq!(
            missing.to_string(),
            "network namespace 7: /proc/net/netstat has no `TcpExt: TCPRetransFail`"
        );
    }

    #[test]
    fn parses_sockstat() {
        let text =
            "sockets: used 7\nTCP: inuse 5 orphan 0 tw 3 alloc 6 mem 1\nUDP: inuse 0 mem 0\n";
        assert_eq!(parse_sockstat_tw(text), Some(3));
        assert_eq!(parse_sockstat_tw("UDP: inuse 0\n"), None);
    }

    #[test]
    fn parses_local_ports() {
        let table = "  sl  local_address rem_address   st\n\
                     0: 0100007F:9C40 0100007F:1F90 06 00000000:00000000\n\
                     1: 00000000000000000000000001000000:0050 00000000000000000000000000000000:0000 0A\n";
        assert_eq!(local_ports(table).collect::<Vec<_>>(), [40000, 80]);
    }

    #[test]
    fn a_namespace_nobody_holds_is_gone() {
        assert!(matches!(occupancy(1), Err(NetnsError::Gone(1))));
        assert!(matches!(Namespace::open(1), Err(NetnsError::Gone(1))));
    }

    #[test]
    fn reads_its_own_namespaces_counter_in_place() {
        let own = Namespace::own().unwrap();
        assert!(own.file.is_none());
        let by_inode = Namespace::open(own.inode).unwrap();
        assert!(by_inode.file.is_none(), "no setns into its own namespace");
        let before = own.retrans_counts().unwrap();
        let after = by_inode.retrans_counts().unwrap();
        assert!(after.segs >= before.segs && after.failed >= before.failed);
    }
}
