//! The kernel's own count of TCP state transitions, from ftrace: a tracefs
//! instance records `sock:inet_sock_set_state` on the workload's ports. Ftrace
//! is not BPF: it records an event that interrupts another, and whatever
//! its small per-CPU buffers overwrite they count, so nothing escapes the
//! count.
use std::{
    fs,
    ops::Range,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result};

const TRACEFS: &str = "/sys/kernel/tracing";

pub struct TransitionCount {
    instance: PathBuf,
}

impl TransitionCount {
    /// Starts counting the TCP state transitions of sockets with a local
    /// or remote port in one of `ports`.
    pub fn start(ports: impl IntoIterator<Item = Range<u16>>) -> Result<Self> {
        let instance = Path::new(TRACEFS)
            .join("instances")
            .join(format!("xtask-{}", std::process::id()));
        fs::create_dir(&instance)
            .with_context(|| format!("creating the ftrace instance {}", instance.display()))?;
        let count = Self { instance };
        let on_ports = ports
            .into_iter()
            .map(|p| {
                let (low, high) = (p.start, p.end);
                format!("(sport >= {low} && sport < {high}) || (dport >= {low} && dport < {high})")
            })
            .collect::<Vec<_>>()
            .join(" || ");
        count.write_event("filter", &format!("protocol == 6 && ({on_ports})"))?;
        count.write_event("enable", "1")?;
        Ok(count)
    }

    /// The transitions counted so far (counting stops).
    pub fn stop(&self) -> Result<u64> {
        self.write_event("enable", "0")?;
        let mut total = 0;
        for cpu in fs::read_dir(self.instance.join("per_cpu"))? {
            let stats = fs::read_to_string(cpu?.path().join("stats"))?;
            // In the buffer, and overwritten: everything written.
            for line in stats.lines() {
                if let Some(n) = line
                    .strip_prefix("entries:")
                    .or_else(|| line.strip_prefix("overrun:"))
                {
                    total += n.trim().parse::<u64>()?;
                }
            }
        }
        Ok(total)
    }

    fn write_event(&self, file: &str, value: &str) -> Result<()> {
        let path = self
            .instance
            .join("events/sock/inet_sock_set_state")
            .join(file);
        fs::write(&path, value).with_context(|| format!("writing {}", path.display()))
    }
}

impl Drop for TransitionCount {
    fn drop(&mut self) {
        let _ = self.write_event("enable", "0");
        let _ = fs::remove_dir(&self.instance);
    }
}
