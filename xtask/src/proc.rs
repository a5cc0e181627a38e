//! What a running process costs, from /proc.
use std::{collections::BTreeMap, fs, time::Duration};

use anyhow::{Context as _, Result};

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

/// `kernel.bpf_stats_enabled` on (programs' run counts and times), restored
/// when dropped.
pub struct BpfStats(String);

impl BpfStats {
    const PATH: &str = "/proc/sys/kernel/bpf_stats_enabled";

    pub fn enable() -> Result<Self> {
        let before = fs::read_to_string(Self::PATH).context("reading bpf_stats_enabled")?;
        fs::write(Self::PATH, "1").context("enabling bpf_stats")?;
        Ok(Self(before.trim().to_owned()))
    }
}

impl Drop for BpfStats {
    fn drop(&mut self) {
        let _ = fs::write(Self::PATH, &self.0);
    }
}

/// How often the kernel ran one BPF program, and skipped it.
#[derive(Debug, Clone, Copy, Default)]
pub struct BpfProgramCounts {
    /// Counted only while `BpfStats` is on.
    pub runs: u64,
    /// `recursion_misses`.
    pub skipped: u64,
}

/// The BPF programs process `pid` holds, by program id, from its fdinfo
/// (aya's program info does not carry the skipped runs).
pub fn bpf_program_counts(pid: u32) -> BTreeMap<u32, BpfProgramCounts> {
    let Ok(fds) = fs::read_dir(format!("/proc/{pid}/fdinfo")) else {
        return BTreeMap::new();
    };
    fds.filter_map(Result::ok)
        .filter_map(|fd| fs::read_to_string(fd.path()).ok())
        .filter_map(|info| {
            let field = |name: &str| {
                info.lines()
                    .find_map(|l| l.strip_prefix(name))
                    .and_then(|v| v.trim().parse::<u64>().ok())
            };
            let counts = BpfProgramCounts {
                runs: field("run_cnt:")?,
                skipped: field("recursion_misses:")?,
            };
            Some((u32::try_from(field("prog_id:")?).ok()?, counts))
        })
        .collect()
}
