//! The tcpretrans binary under load: started, its JSON Lines counted as
//! they arrive, stopped like Ctrl-C.
use std::{
    collections::BTreeMap,
    io::{BufRead, BufReader},
    path::Path,
    process::{Command, ExitStatus, Stdio},
    sync::{Arc, Mutex},
    thread,
    time::Duration,
};

use anyhow::{Context as _, Result, bail};
use tcpretrans_lab::process::Watched;

/// Events seen so far, by `event` kind; `lost` sums the `lost` events' counts.
#[derive(Debug, Clone, Default)]
pub struct Seen {
    pub by_kind: BTreeMap<String, u64>,
    pub lost: u64,
    /// Kernel-timestamped events (state, retransmit) by how long after
    /// their kernel time their line was read here: whole milliseconds,
    /// the last bucket for a second or more.
    pub latency_ms: Vec<u64>,
}

const LATENCY_BUCKETS: usize = 1001;

impl Seen {
    /// The latency under which a fraction `q` of the timed events was
    /// read, in ms (`None` before any).
    pub fn latency_quantile(&self, q: f64) -> Option<usize> {
        let timed: u64 = self.latency_ms.iter().sum();
        let rank = (timed as f64 * q).ceil().max(1.0) as u64;
        let mut seen = 0;
        self.latency_ms.iter().position(|&n| {
            seen += n;
            seen >= rank
        })
    }

    pub fn total(&self) -> u64 {
        self.by_kind.values().sum()
    }

    pub fn kind(&self, kind: &str) -> u64 {
        self.by_kind.get(kind).copied().unwrap_or_default()
    }
}

pub struct Tracer {
    process: Watched,
    seen: Arc<Mutex<Seen>>,
    reader: Option<thread::JoinHandle<()>>,
}

/// How the tracer ended.
pub struct Ended {
    pub status: Option<ExitStatus>,
    pub seen: Seen,
    pub stderr: String,
}

impl Tracer {
    /// Starts `binary --json ARGS` and waits for its `start` event.
    pub fn start(binary: &Path, args: &[String]) -> Result<Self> {
        let mut process = Watched::spawn(
            Command::new(binary)
                .arg("--json")
                .args(args)
                .stdout(Stdio::piped()),
        )
        .with_context(|| format!("starting {}", binary.display()))?;
        let seen = Arc::new(Mutex::new(Seen::default()));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let stdout = BufReader::new(process.take_stdout().context("stdout")?);
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
                    let latency = matches!(kind, "state" | "retransmit")
                        .then(|| event["time"].as_str()?.parse::<jiff::Timestamp>().ok())
                        .flatten()
                        .map(|t| jiff::Timestamp::now().duration_since(t).as_millis());
                    let mut seen = seen.lock().expect("counts");
                    if kind == "lost" {
                        seen.lost += event["count"].as_u64().unwrap_or_default();
                    }
                    if let Some(ms) = latency {
                        if seen.latency_ms.is_empty() {
                            seen.latency_ms = vec![0; LATENCY_BUCKETS];
                        }
                        let bucket = (ms.max(0) as usize).min(LATENCY_BUCKETS - 1);
                        seen.latency_ms[bucket] += 1;
                    }
                    *seen.by_kind.entry(kind.to_owned()).or_default() += 1;
                }
            })
        };
        if ready_rx.recv_timeout(Duration::from_secs(20)).is_err() {
            process.interrupt();
            bail!("tcpretrans did not start: {}", process.stderr());
        }
        Ok(Self {
            process,
            seen,
            reader: Some(reader),
        })
    }

    pub fn pid(&self) -> u32 {
        self.process.id()
    }

    pub fn seen(&self) -> Seen {
        self.seen.lock().expect("counts").clone()
    }

    /// SIGINT, then everything it printed.
    pub fn stop(mut self) -> Result<Ended> {
        let status = self.process.interrupt();
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
        Ok(Ended {
            status,
            seen: self.seen(),
            stderr: self.process.stderr(),
        })
    }
}
