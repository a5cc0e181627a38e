//! The kernel's own counts, to hold a tracer's output against: every TCP
//! state transition on some ports (ftrace), and how often the kernel ran,
//! or skipped, each BPF program of a process (BPF statistics).
use std::{
    collections::{BTreeMap, HashMap},
    fs, io,
    ops::Range,
    path::{Path, PathBuf},
};

const TRACEFS: &str = "/sys/kernel/tracing";

/// Counts `sock:inet_sock_set_state` for TCP sockets with a local or remote
/// port in the given ranges, in tracefs instances of its own (removed on
/// drop). Ftrace is not BPF: it records an event that interrupts another,
/// and what its small per-CPU buffers overwrite they count, so nothing
/// escapes the count.
pub struct TransitionCount {
    all: Instance,
    on_init_threads: Instance,
}

/// What a `TransitionCount` counted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Transitions {
    pub made: u64,
    /// Of them, those made while a thread of process 1 was current: in
    /// softirqs that interrupted it. On this project's VM the kernel runs no
    /// BPF program for transitions made in a softirq on top of one
    /// long-running thread of process 1 (BENCHMARKS.md, "Machine").
    pub on_init_threads: u64,
}

impl TransitionCount {
    pub fn start(ports: impl IntoIterator<Item = Range<u16>>) -> io::Result<Self> {
        let on_ports = ports
            .into_iter()
            .map(|p| {
                let (low, high) = (p.start, p.end);
                format!("(sport >= {low} && sport < {high}) || (dport >= {low} && dport < {high})")
            })
            .collect::<Vec<_>>()
            .join(" || ");
        let filter = format!("protocol == 6 && ({on_ports})");
        let init_threads = fs::read_dir("/proc/1/task")?
            .filter_map(|task| {
                Some(format!(
                    "common_pid == {}",
                    task.ok()?.file_name().to_str()?
                ))
            })
            .collect::<Vec<_>>()
            .join(" || ");
        Ok(Self {
            all: Instance::counting(&filter)?,
            on_init_threads: Instance::counting(&format!("{filter} && ({init_threads})"))?,
        })
    }

    /// The transitions counted so far; counting stops.
    pub fn stop(&self) -> io::Result<Transitions> {
        Ok(Transitions {
            made: self.all.stop()?,
            on_init_threads: self.on_init_threads.stop()?,
        })
    }
}

/// A tracefs instance recording the state tracepoint's events that pass a
/// filter.
struct Instance(PathBuf);

impl Instance {
    fn counting(filter: &str) -> io::Result<Self> {
        static INSTANCES: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let path = tracefs()?.join("instances").join(format!(
            "tcpretrans-lab-{}-{}",
            std::process::id(),
            INSTANCES.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        fs::create_dir(&path)?;
        let instance = Self(path);
        instance.write_event("filter", filter)?;
        instance.write_event("enable", "1")?;
        Ok(instance)
    }

    /// The events recorded so far; recording stops.
    fn stop(&self) -> io::Result<u64> {
        self.write_event("enable", "0")?;
        let mut total = 0;
        for cpu in fs::read_dir(self.0.join("per_cpu"))? {
            let stats = fs::read_to_string(cpu?.path().join("stats"))?;
            // In the buffer, and overwritten: everything written.
            for line in stats.lines() {
                if let Some(n) = line
                    .strip_prefix("entries:")
                    .or_else(|| line.strip_prefix("overrun:"))
                {
                    total += n.trim().parse::<u64>().map_err(io::Error::other)?;
                }
            }
        }
        Ok(total)
    }

    fn write_event(&self, file: &str, value: &str) -> io::Result<()> {
        let path = self.0.join("events/sock/inet_sock_set_state").join(file);
        fs::write(&path, value)
            .map_err(|e| io::Error::new(e.kind(), format!("writing {}: {e}", path.display())))
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        let _ = self.write_event("enable", "0");
        let _ = fs::remove_dir(&self.0);
    }
}

/// tracefs, mounted at its usual place if nothing mounted it yet.
fn tracefs() -> io::Result<&'static Path> {
    let root = Path::new(TRACEFS);
    if !root.join("instances").is_dir() {
        nix::mount::mount(
            Some("tracefs"),
            root,
            Some("tracefs"),
            nix::mount::MsFlags::empty(),
            None::<&str>,
        )?;
    }
    Ok(root)
}

/// `kernel.bpf_stats_enabled` on (programs' run counts and times), restored
/// when dropped.
pub struct BpfStats(String);

impl BpfStats {
    const PATH: &str = "/proc/sys/kernel/bpf_stats_enabled";

    pub fn enable() -> io::Result<Self> {
        let before = fs::read_to_string(Self::PATH)?;
        fs::write(Self::PATH, "1")?;
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
    /// `recursion_misses` (0 before 5.12, which does not report them).
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
                // Reported from 5.12; before, the kernel counts no skipped run.
                skipped: field("recursion_misses:").unwrap_or(0),
            };
            Some((u32::try_from(field("prog_id:")?).ok()?, counts))
        })
        .collect()
}

/// How many times the kernel gave a TCP state transition to tcpretrans'
/// state programs in process `pid` (run or skipped, with `BpfStats` on):
/// they run on every transition of the host, more than any other of its
/// programs.
pub fn state_transitions_given(pid: u32) -> u64 {
    bpf_program_counts(pid)
        .values()
        .map(|c| c.runs + c.skipped)
        .max()
        .unwrap_or_default()
}

/// How many `(socket, transition)` pairs repeat their socket's previous
/// one: copies (the kernel never makes one transition twice in a row).
pub fn repeated_transitions<'a>(transitions: impl Iterator<Item = (&'a str, &'a str)>) -> u64 {
    let mut last: HashMap<&str, &str> = HashMap::new();
    transitions
        .filter(|&(socket, transition)| last.insert(socket, transition) == Some(transition))
        .count() as u64
}

/// The `skaddr` and the text from `old_state` to `new_state` of a
/// tcpretrans JSON state event.
pub fn json_socket_transition(line: &str) -> Option<(&str, &str)> {
    let value_after = |key: &str| {
        let start = line.find(key)? + key.len();
        let len = line[start..].find('"')?;
        Some((start, start + len))
    };
    let (socket_start, socket_end) = value_after("\"skaddr\":\"")?;
    let (old_start, _) = value_after("\"old_state\":\"")?;
    let (_, new_end) = value_after("\"new_state\":\"")?;
    Some((&line[socket_start..socket_end], &line[old_start..new_end]))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state_line(skaddr: &str, old: &str, new: &str) -> String {
        format!(
            r#"{{"event":"state","time":"t","skaddr":"{skaddr}","pid":1,"old_state":"{old}","new_state":"{new}","close":null}}"#
        )
    }

    #[test]
    fn a_transition_repeated_for_its_socket_is_counted_once() {
        let lines = [
            state_line("0xa", "CLOSE", "SYN_SENT"),
            state_line("0xb", "CLOSE", "SYN_SENT"),
            state_line("0xa", "CLOSE", "SYN_SENT"),
            state_line("0xa", "SYN_SENT", "ESTABLISHED"),
            // The same transition again after another: a new connection on
            // reused socket memory, not a copy.
            state_line("0xb", "SYN_SENT", "CLOSE"),
            state_line("0xb", "CLOSE", "SYN_SENT"),
        ];
        let transitions = lines.iter().filter_map(|l| json_socket_transition(l));
        assert_eq!(repeated_transitions(transitions), 1);
    }

    #[test]
    fn a_line_without_socket_or_states_has_no_transition() {
        assert_eq!(
            json_socket_transition(r#"{"event":"lost","count":3}"#),
            None
        );
        assert_eq!(
            json_socket_transition(&state_line("0xa", "LISTEN", "SYN_RECV")),
            Some(("0xa", r#"LISTEN","new_state":"SYN_RECV"#))
        );
    }
}
