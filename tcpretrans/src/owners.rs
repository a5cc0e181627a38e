//! Owners of sockets older than the tracer. The kernel side learns a
//! socket's owner when the owner acts on it (connect, listen, close) or
//! from its listener; for a socket that did all that before we started,
//! events carry the socket's inode, and the process holding that socket
//! is found in `/proc/*/fd`.
use std::{fs, os::unix::fs::MetadataExt, path::Path};

use foldhash::HashMap;
use jiff::{SignedDuration, Timestamp};

use crate::events::{Event, Process};

/// A full scan of /proc reads every process's fds: at most this often.
const RESCAN_INTERVAL: SignedDuration = SignedDuration::from_secs(1);
/// Bounds the cache (sockets per host).
const MAX_ENTRIES: usize = 1 << 16;

#[derive(Debug, Default)]
pub struct Owners {
    by_inode: HashMap<u64, Process>,
    /// The time of the event that last asked for a scan: events carry
    /// their time, reading the clock at each cost more than the lookup.
    last_scan: Option<Timestamp>,
}

impl Owners {
    /// Fills in the owner of an event's socket where the kernel side only
    /// knew the socket's inode.
    pub fn resolve(&mut self, event: &mut Event) {
        let Some(socket) = event.kernel_socket_mut() else {
            return;
        };
        let (None, Some(inode)) = (&socket.owner, socket.inode) else {
            return;
        };
        if !self.by_inode.contains_key(&inode)
            && self
                .last_scan
                .is_none_or(|at| socket.time.duration_since(at) >= RESCAN_INTERVAL)
        {
            self.last_scan = Some(socket.time);
            self.scan();
        }
        socket.owner = self.by_inode.get(&inode).cloned();
    }

    fn scan(&mut self) {
        self.by_inode.clear();
        let Ok(processes) = fs::read_dir("/proc") else {
            return;
        };
        for entry in processes.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<u32>().ok())
            else {
                continue;
            };
            let dir = entry.path();
            let Ok(fds) = fs::read_dir(dir.join("fd")) else {
                continue;
            };
            let mut process = None;
            for fd in fds.flatten() {
                let Some(inode) = socket_inode(&fd.path()) else {
                    continue;
                };
                if self.by_inode.len() >= MAX_ENTRIES {
                    return;
                }
                let owner = process.get_or_insert_with(|| describe(pid, &dir));
                self.by_inode.entry(inode).or_insert_with(|| owner.clone());
            }
        }
    }
}

/// `socket:[12345]` → 12345.
pub(crate) fn socket_inode(fd: &Path) -> Option<u64> {
    let target = fs::read_link(fd).ok()?;
    target
        .to_str()?
        .strip_prefix("socket:[")?
        .strip_suffix(']')?
        .parse()
        .ok()
}

pub(crate) fn describe(pid: u32, dir: &Path) -> Process {
    // Any bytes a process named itself with, as the kernel side's names:
    // not UTF-8 is no reason to lose the name.
    let comm = fs::read(dir.join("comm"))
        .map(|c| {
            let name = c.strip_suffix(b"\n").unwrap_or(&c);
            String::from_utf8_lossy(name).as_ref().into()
        })
        .unwrap_or_default();
    let uid = fs::metadata(dir).map(|m| m.uid()).unwrap_or_default();
    Process { pid, uid, comm }
}

#[cfg(test)]
mod tests {
    use std::net::TcpListener;

    use super::*;

    #[test]
    fn finds_this_process_by_its_socket_inode() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let fd = std::os::fd::AsRawFd::as_raw_fd(&listener);
        let inode = socket_inode(Path::new(&format!("/proc/self/fd/{fd}"))).expect("a socket");
        let mut owners = Owners::default();
        owners.scan();
        let owner = owners.by_inode.get(&inode).expect("found");
        assert_eq!(owner.pid, std::process::id());
        assert!(!owner.comm.is_empty());
    }
}
