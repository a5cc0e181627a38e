//! A tracer process under test or benchmark: its stderr collected, stopped
//! like Ctrl-C, and never left running (killed when dropped).
use std::{
    io::{self, Read},
    process::{Child, ChildStdout, Command, ExitStatus, Stdio},
    thread,
    time::{Duration, Instant},
};

use nix::{
    sys::signal::{Signal, kill},
    unistd::Pid,
};

use crate::PATIENCE;

pub struct Watched {
    child: Child,
    stderr: Option<thread::JoinHandle<String>>,
}

impl Watched {
    /// Spawns `command` with its stderr collected (stdout is the caller's
    /// to set up; `take_stdout` hands over a pipe).
    pub fn spawn(command: &mut Command) -> io::Result<Self> {
        let mut child = command.stderr(Stdio::piped()).spawn()?;
        let mut stderr = child.stderr.take().expect("stderr is piped");
        let stderr = thread::spawn(move || {
            let mut text = String::new();
            let _ = stderr.read_to_string(&mut text);
            text
        });
        Ok(Self {
            child,
            stderr: Some(stderr),
        })
    }

    /// BPF links the process holds (one per tracepoint attachment).
    pub fn bpf_links(&self) -> usize {
        bpf_links(self.id())
    }

    pub fn id(&self) -> u32 {
        self.child.id()
    }

    pub fn take_stdout(&mut self) -> Option<ChildStdout> {
        self.child.stdout.take()
    }

    /// Whether it is still running.
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// SIGINT, then its exit status; `None` if it ignored the signal for
    /// `PATIENCE` (it is killed then).
    pub fn interrupt(&mut self) -> Option<ExitStatus> {
        let _ = kill(Pid::from_raw(self.child.id() as i32), Signal::SIGINT);
        self.exit_status()
    }

    /// Its exit status once it ends by itself; `None` if it ran on for
    /// `PATIENCE` (it is killed then).
    pub fn exit_status(&mut self) -> Option<ExitStatus> {
        let deadline = Instant::now() + PATIENCE;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            thread::sleep(Duration::from_millis(5));
        }
        self.kill();
        None
    }

    /// Everything it wrote on stderr (waits for it to close).
    pub fn stderr(&mut self) -> String {
        self.stderr
            .take()
            .map(|reader| reader.join().unwrap_or_default())
            .unwrap_or_default()
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A test or benchmark that fails midway must not leave a tracer attached.
impl Drop for Watched {
    fn drop(&mut self) {
        if self.running() {
            self.kill();
        }
    }
}

/// BPF links process `pid` holds (one per tracepoint attachment).
pub fn bpf_links(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |fds| {
        fds.filter_map(Result::ok)
            .filter(|fd| {
                std::fs::read_link(fd.path())
                    .is_ok_and(|target| target.as_os_str() == "anon_inode:bpf_link")
            })
            .count()
    })
}
