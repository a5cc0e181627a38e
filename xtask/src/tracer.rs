//! The tcpretrans binary under load: started, its JSON Lines counted as
//! they arrive, stopped like Ctrl-C.
use std::{
    collections::BTreeMap,
    io::{BufRead, BufReader, Read},
    path::Path,
    process::{Child, Command, ExitStatus, Stdio},
    sync::{Arc, Mutex},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use nix::{
    sys::signal::{Signal, kill},
    unistd::Pid,
};

/// Events seen so far, by `event` kind; `lost` sums the `lost` events' counts.
#[derive(Debug, Clone, Default)]
pub struct Seen {
    pub by_kind: BTreeMap<String, u64>,
    pub lost: u64,
}

impl Seen {
    pub fn total(&self) -> u64 {
        self.by_kind.values().sum()
    }

    pub fn kind(&self, kind: &str) -> u64 {
        self.by_kind.get(kind).copied().unwrap_or_default()
    }
}

pub struct Tracer {
    child: Child,
    seen: Arc<Mutex<Seen>>,
    reader: Option<thread::JoinHandle<()>>,
    stderr: Option<thread::JoinHandle<String>>,
    /// exec → the `start` event (programs attached).
    pub attach_time: Duration,
}

/// How the tracer ended.
pub struct Ended {
    pub status: ExitStatus,
    pub seen: Seen,
    pub stderr: String,
}

impl Tracer {
    /// Starts `binary --json ARGS` and waits for its `start` event.
    pub fn start(binary: &Path, args: &[String]) -> Result<Self> {
        let started = Instant::now();
        let mut child = Command::new(binary)
            .arg("--json")
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        let seen = Arc::new(Mutex::new(Seen::default()));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let stdout = BufReader::new(child.stdout.take().context("stdout")?);
        let reader = {
            let seen = seen.clone();
            thread::spawn(move || {
                for line in stdout.lines().map_while(Result::ok) {
                    let Ok(event) = serde_json::from_str::<serde_json::Value>(&line) else {
                        continue;
                    };
                    let kind = event["event"].as_str().unwrap_or("?");
                    if kind == "start" {
                        let _ = ready_tx.send(());
                        continue;
                    }
                    let mut seen = seen.lock().expect("counts");
                    if kind == "lost" {
                        seen.lost += event["count"].as_u64().unwrap_or_default();
                    }
                    *seen.by_kind.entry(kind.to_owned()).or_default() += 1;
                }
            })
        };
        let mut stderr = child.stderr.take().context("stderr")?;
        let stderr = thread::spawn(move || {
            let mut text = String::new();
            let _ = stderr.read_to_string(&mut text);
            text
        });
        let mut tracer = Self {
            child,
            seen,
            reader: Some(reader),
            stderr: Some(stderr),
            attach_time: Duration::ZERO,
        };
        if ready_rx.recv_timeout(Duration::from_secs(20)).is_err() {
            let _ = tracer.child.kill();
            let _ = tracer.child.wait();
            let stderr = tracer.stderr.take().map(|t| t.join().unwrap_or_default());
            bail!("tcpretrans did not start: {}", stderr.unwrap_or_default());
        }
        tracer.attach_time = started.elapsed();
        Ok(tracer)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn seen(&self) -> Seen {
        self.seen.lock().expect("counts").clone()
    }

    /// SIGINT, then everything it printed.
    pub fn stop(mut self) -> Result<Ended> {
        kill(Pid::from_raw(self.child.id() as i32), Signal::SIGINT).context("SIGINT")?;
        let status = self.child.wait().context("waiting for tcpretrans")?;
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
        let stderr = self
            .stderr
            .take()
            .map(|t| t.join().unwrap_or_default())
            .unwrap_or_default();
        Ok(Ended {
            status,
            seen: self.seen(),
            stderr,
        })
    }
}

impl Drop for Tracer {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
