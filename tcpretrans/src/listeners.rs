//! Owners of the TCP listeners that exist when tracing starts. The kernel
//! side learns a listener's owner from its `listen()`, and a connection made
//! from a listener inherits that owner until a process accepts it; for a
//! listener older than the tracer, the owner is found in /proc and given to
//! the kernel side before its programs are attached.
//!
//! A listener a prefork server shares is held by the master and every
//! worker: its owner is the holder that started first, the master, which
//! made it.
use std::{fs, os::unix::fs::MetadataExt, path::Path};

use foldhash::HashSet;
use tcpretrans_common::{ListenerKey, Owner};

use crate::owners::{describe, socket_inode};

/// `st` of a listening socket in `/proc/net/tcp{,6}`.
const TCP_LISTEN: &str = "0A";

/// A process holding sockets.
struct Holder {
    pid: u32,
    netns: u32,
    /// Clock ticks after boot (`/proc/PID/stat` field 22).
    start_time: u64,
    sockets: HashSet<u64>,
}

/// Every TCP listener of the traced network namespaces (`only`, or every
/// one with a process in it), and its owner. `netns_known`: whether the
/// kernel side reads a socket's namespace; when it does not, it keys
/// listeners by namespace 0.
pub fn existing(only: Option<u32>, netns_known: bool) -> Vec<(ListenerKey, Owner)> {
    let holders = holders();
    let mut listeners = Vec::new();
    let mut seen_netns = HashSet::default();
    for holder in &holders {
        if only.is_some_and(|netns| netns != holder.netns) || !seen_netns.insert(holder.netns) {
            continue;
        }
        for (port, inode) in listening(holder.pid) {
            let owner = holders
                .iter()
                .filter(|h| h.netns == holder.netns && h.sockets.contains(&inode))
                .min_by_key(|h| (h.start_time, h.pid));
            let Some(owner) = owner else { continue };
            let key = ListenerKey {
                netns: if netns_known { owner.netns } else { 0 },
                port,
                _pad: 0,
            };
            listeners.push((key, kernel_owner(owner.pid)));
        }
    }
    listeners
}

fn holders() -> Vec<Holder> {
    let Ok(processes) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    processes
        .flatten()
        .filter_map(|entry| {
            let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
            let dir = entry.path();
            let sockets: HashSet<u64> = fs::read_dir(dir.join("fd"))
                .ok()?
                .flatten()
                .filter_map(|fd| socket_inode(&fd.path()))
                .collect();
            if sockets.is_empty() {
                return None;
            }
            Some(Holder {
                pid,
                netns: u32::try_from(fs::metadata(dir.join("ns/net")).ok()?.ino()).ok()?,
                start_time: start_time(&dir)?,
                sockets,
            })
        })
        .collect()
}

/// `(port, inode)` of each TCP listener in the namespace of `pid`.
fn listening(pid: u32) -> Vec<(u16, u64)> {
    ["tcp", "tcp6"]
        .iter()
        .filter_map(|table| fs::read_to_string(format!("/proc/{pid}/net/{table}")).ok())
        .flat_map(|text| parse_listeners(&text))
        .collect()
}

/// The listeners of a `/proc/net/tcp{,6}` table: `sl local_address
/// rem_address st ... uid timeout inode`, addresses as `HEX:PORT`.
fn parse_listeners(table: &str) -> Vec<(u16, u64)> {
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.get(3) != Some(&TCP_LISTEN) {
                return None;
            }
            let (_, port) = fields.get(1)?.rsplit_once(':')?;
            let port = u16::from_str_radix(port, 16).ok()?;
            let inode = fields.get(9)?.parse().ok()?;
            Some((port, inode))
        })
        .collect()
}

/// Field 22 of `/proc/PID/stat`, after the parenthesized name (which may
/// hold spaces and parentheses itself).
fn start_time(dir: &Path) -> Option<u64> {
    let stat = fs::read_to_string(dir.join("stat")).ok()?;
    let (_, after_name) = stat.rsplit_once(')')?;
    // Fields from the third on: state is field 3, start time field 22.
    after_name.split_whitespace().nth(22 - 3)?.parse().ok()
}

/// The process as the kernel side records owners.
fn kernel_owner(pid: u32) -> Owner {
    let process = describe(pid, &Path::new("/proc").join(pid.to_string()));
    let mut comm = [0; 16];
    let name = process.comm.as_bytes();
    // The kernel's task name is 15 bytes and a NUL.
    let len = name.len().min(15);
    comm[..len].copy_from_slice(&name[..len]);
    Owner {
        pid,
        uid: process.uid,
        comm,
    }
}

#[cfg(test)]
mod tests {
    use std::net::TcpListener;

    use super::*;

    #[test]
    fn reads_listeners_from_a_tcp_table() {
        let table = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 31337 1 0000000000000000 100 0 0 10 0
   1: 0100007F:A3E2 0100007F:1F90 01 00000000:00000000 00:00000000 00000000     0        0 31338 1 0000000000000000 20 4 30 10 -1
";
        assert_eq!(parse_listeners(table), [(8080, 31337)]);
    }

    #[test]
    fn finds_this_process_as_the_owner_of_its_listener() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let netns = fs::metadata("/proc/self/ns/net").unwrap().ino() as u32;
        let found = existing(Some(netns), true);
        assert!(
            existing(Some(netns + 1), true)
                .iter()
                .all(|(key, _)| key.netns != netns)
        );
        let (key, owner) = found
            .iter()
            .find(|(key, _)| key.port == port && key.netns == netns)
            .expect("our listener");
        assert_eq!((owner.pid, key.netns), (std::process::id(), netns));
        assert_ne!(owner.comm, [0; 16]);
    }

    #[test]
    fn a_start_time_is_read_past_an_odd_name() {
        let dir = std::env::temp_dir().join(format!("tcpretrans-stat-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let fields: Vec<String> = (3..=22).map(|n| n.to_string()).collect();
        fs::write(dir.join("stat"), format!("7 (a) b) {}", fields.join(" "))).unwrap();
        assert_eq!(start_time(&dir), Some(22));
        fs::remove_dir_all(&dir).unwrap();
    }
}
