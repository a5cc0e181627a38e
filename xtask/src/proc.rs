//! What a running process costs, from /proc.
use std::{fs, time::Duration};

/// A process's resident memory (now, at its peak, its own) and CPU time so
/// far.
#[derive(Debug, Clone, Copy, Default)]
pub struct Usage {
    pub rss_kib: u64,
    pub peak_rss_kib: u64,
    /// Of `rss_kib`: the process's own memory (heap, stacks), without
    /// mapped files and shared mappings such as a BPF ring buffer's.
    pub private_kib: u64,
    /// user + system.
    pub cpu: Duration,
}

impl Usage {
    /// `None` once the process is gone.
    pub fn of(pid: u32) -> Option<Self> {
        let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let kib = |field: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(field))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        };
        let (rss_kib, peak_rss_kib, private_kib) =
            (kib("VmRSS:")?, kib("VmHWM:")?, kib("RssAnon:")?);
        let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // Fields after the parenthesised command name; utime and stime are
        // the 14th and 15th of the whole line.
        let rest = &stat[stat.rfind(')')? + 2..];
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let ticks: u64 =
            fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
        Some(Self {
            rss_kib,
            peak_rss_kib,
            private_kib,
            cpu: Duration::from_secs_f64(ticks as f64 / clock_ticks() as f64),
        })
    }
}

fn clock_ticks() -> u64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .map_or(100, |t| t as u64)
}
