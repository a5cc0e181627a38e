//! `cargo xtask soak [MINUTES]`: the tracer attached for a long time to
//! bounded connection churn plus lossy transfers in a lab namespace;
//! reports its memory over time (flat after warm-up), CPU, events seen and
//! lost, and checks every state transition made was delivered (against the
//! kernel's own count).
use std::{
    net::SocketAddr,
    path::Path,
    sync::atomic::{AtomicU64, Ordering},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, ensure};
use tcpretrans_lab::{
    BULK_UPLOAD_TRANSITIONS, Netns, bulk_upload,
    churn::Churn,
    drop_inbound,
    kernel_counts::{BpfStats, TransitionCount, state_transitions_given},
};

use crate::{proc::Usage, tracer::Tracer};

/// Connections per second: 10 state events each.
const CHURN_RATE: u32 = 1_000;
const CHURN_CLIENTS: u16 = 4;
const CHURN_PORT: u16 = 6000;
const SAMPLE_EVERY: Duration = Duration::from_secs(30);
const UPLOAD_PORT: u16 = 7000;
const UPLOAD_BYTES: usize = 2 << 20;
const UPLOAD_LOSS_PERCENT: u32 = 5;
/// RSS growth after warm-up that still counts as flat.
const RSS_SLACK_KIB: u64 = 2 * 1024;
/// Warm-up: the tool's bounded tables (TIME_WAITs remembered, sessions,
/// owners) fill in the first minutes; memory must be flat after it.
const WARM_UP_FRACTION: f64 = 0.2;
/// The longest a table takes to reach its ceiling: the 65,536 TIME_WAIT
/// 4-tuples the tool remembers fill in ~65 s at 1,000 connections/s, and
/// their hash table doubles once more (+8 MB) when removed entries have used
/// up its free slots, ~2.5 min in; after that it is rehashed in place.
const TABLES_FILL: Duration = Duration::from_secs(180);

pub fn run(binary: &Path, minutes: f64, metrics_by: Option<&str>) -> Result<()> {
    let duration = Duration::from_secs_f64(minutes * 60.0);
    let ns = Netns::new("soak");
    Churn::tune(&ns);
    drop_inbound(&ns, UPLOAD_PORT, UPLOAD_LOSS_PERCENT);
    let mut args = vec!["--state".into(), format!("--netns={}", ns.inode)];
    if let Some(by) = metrics_by {
        args.extend([
            "--metrics".into(),
            METRICS_AT.into(),
            "--metrics-by".into(),
            by.into(),
        ]);
    }
    let tracer = Tracer::start(binary, &args)?;
    println!(
        "soak: {minutes} min of {CHURN_RATE} connections/s and {} MiB uploads at \
         {UPLOAD_LOSS_PERCENT}% loss; tracer pid {}",
        UPLOAD_BYTES >> 20,
        tracer.pid()
    );
    let _stats = BpfStats::enable()?;
    let kernel = TransitionCount::start([
        CHURN_PORT..CHURN_PORT + CHURN_CLIENTS,
        UPLOAD_PORT..UPLOAD_PORT + 1,
    ])?;
    let started = Instant::now();
    let churn = Churn {
        rate: Some(CHURN_RATE),
        duration,
        clients: CHURN_CLIENTS,
        base_port: CHURN_PORT,
        nice: 0,
    };
    let uploads = AtomicU64::new(0);
    let (report, rss) = thread::scope(|scope| {
        let churning = scope.spawn(|| churn.run(&ns));
        scope.spawn(|| {
            let server: SocketAddr = ([127, 0, 0, 1], UPLOAD_PORT).into();
            while started.elapsed() < duration {
                bulk_upload(&ns, server, UPLOAD_BYTES);
                uploads.fetch_add(1, Ordering::Relaxed);
            }
        });
        let rss = sample(&tracer, started, duration);
        (churning.join().expect("churn"), rss)
    });
    settle(&ns);
    let kernel_made = kernel.stop()?;
    let elapsed = started.elapsed();
    let cpu = Usage::of(tracer.pid()).unwrap_or_default().cpu;
    let given = state_transitions_given(tracer.pid());
    // After counting what the state programs were given: the scrape's own
    // connection makes transitions outside the traced namespace.
    let series = metrics_by.map(|_| scrape_series()).transpose()?;
    let ended = tracer.stop()?;
    let uploads = uploads.into_inner();
    let made = report.transitions(CHURN_CLIENTS) + uploads * BULK_UPLOAD_TRANSITIONS;
    let state = ended.seen.kind("state");
    println!(
        "churn: {} connections ({:.0}/s), {} failed; uploads: {uploads}",
        report.connections,
        report.per_second(),
        report.failures
    );
    println!(
        "events: {} ({state} state of {} transitions the kernel made (ftrace; the workload's own count: {made}; the kernel gave the state programs {given}, with any other TCP of the host), {} retransmit, {} session_end), lost {}",
        ended.seen.total(),
        kernel_made.made,
        ended.seen.kind("retransmit"),
        ended.seen.kind("session_end"),
        ended.seen.lost
    );
    println!(
        "tracer CPU: {:.1} s in {:.0} s ({:.2}% of a core); {}",
        cpu.as_secs_f64(),
        elapsed.as_secs_f64(),
        cpu.as_secs_f64() / elapsed.as_secs_f64() * 100.0,
        ended
            .status
            .map_or_else(|| "it ignored SIGINT".to_owned(), |s| s.to_string())
    );
    let quantile = |q| {
        ended
            .seen
            .latency_quantile(q)
            .map_or_else(|| "-".to_owned(), |ms| format!("{ms} ms"))
    };
    // All of them, from the first: an independent reader found the first
    // seconds no slower than the rest, so no warm-up is left out. Lines are
    // timed as the pipe delivers them (tracer.rs says why that matters).
    println!(
        "event -> line: p50 {}, p99 {}, max {} over {} state and retransmit events (whole ms \
         from the kernel time to the line's arrival here, the last bucket 1 s or more; \
         session_end and time_wait_reuse carry an earlier event's time and are not timed)",
        quantile(0.5),
        quantile(0.99),
        quantile(1.0),
        ended.seen.timed()
    );
    let warm_up = ((rss.len() as f64 * WARM_UP_FRACTION).ceil() as usize)
        .max(TABLES_FILL.div_duration_f64(SAMPLE_EVERY).ceil() as usize + 1);
    let judged = warm_up < rss.len();
    let warm_up = warm_up.clamp(1, rss.len().max(1));
    let warm = rss.get(warm_up - 1).copied().unwrap_or_default();
    let peak = rss.iter().copied().max().unwrap_or_default();
    println!(
        "RSS: {} KiB at the first sample, {warm} KiB after warm-up ({:.1} min), peak {peak} KiB, growth after warm-up {} KiB",
        rss.first().copied().unwrap_or_default(),
        warm_up as f64 * SAMPLE_EVERY.as_secs_f64() / 60.0,
        peak - warm
    );
    print!("{}", ended.stderr);
    if let Some(series) = series {
        println!(
            "metrics: {} samples in {} KiB of exposition; {} connection series (--max-series), \
             {} events folded into `other`; each of the {} connections had its own remote port",
            series.samples,
            series.bytes / 1024,
            series.made,
            series.folded,
            report.connections
        );
        ensure!(
            peak < FLEET_RSS_KIB,
            "RSS peaked at {peak} KiB, over the fleet's {FLEET_RSS_KIB} KiB"
        );
    }
    ensure!(ended.seen.lost == 0, "the tracer lost events");
    // What the kernel never gave a BPF program no BPF tool can deliver
    // (seen on this project's VM: a few per million, in softirqs on top of
    // its process 1); it is said, and the rest must all be there.
    if given < kernel_made.made {
        println!(
            "the kernel ran no BPF program for {} of the transitions ftrace recorded ({} of them \
             were made on process 1's threads)",
            kernel_made.made - given,
            kernel_made.on_init_threads
        );
    }
    let deliverable = kernel_made.made.min(given);
    ensure!(
        state == deliverable && report.failures == 0,
        "{state} state events for {deliverable} transitions the kernel made and gave the state programs"
    );
    if judged {
        ensure!(
            peak - warm <= RSS_SLACK_KIB,
            "RSS grew by {} KiB",
            peak - warm
        );
    } else {
        println!(
            "RSS growth not judged: the soak ended before the tables could fill (~{} s)",
            TABLES_FILL.as_secs()
        );
    }
    Ok(())
}

/// Where the soak's tracer serves metrics, when asked to.
const METRICS_AT: &str = "127.0.0.1:19432";
/// The RSS a node's always-on exporter must stay under.
const FLEET_RSS_KIB: u64 = 25 * 1024;

/// What a scrape of the soak's tracer held.
struct Series {
    samples: usize,
    bytes: usize,
    made: u64,
    folded: u64,
}

fn scrape_series() -> Result<Series> {
    let out = std::process::Command::new("curl")
        .args(["--silent", "--max-time", "10"])
        .arg(format!("http://{METRICS_AT}/metrics"))
        .output()
        .context("running curl")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let value = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse::<f64>().ok())
            .map_or(0, |v| v as u64)
    };
    Ok(Series {
        samples: text.lines().filter(|l| !l.starts_with('#')).count(),
        bytes: text.len(),
        made: value("tcpretrans_metric_series"),
        folded: value("tcpretrans_folded_events_total"),
    })
}

/// Waits (at most 10 s) until no connection in the namespace still owes a
/// transition — an upload's close can wait on retransmissions — then for a
/// drain of the tracer.
fn settle(ns: &Netns) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        let owing = ns.exec(&[
            "ss",
            "-Htan",
            "state",
            "syn-sent",
            "state",
            "syn-recv",
            "state",
            "established",
            "state",
            "fin-wait-1",
            "state",
            "close-wait",
            "state",
            "last-ack",
            "state",
            "closing",
        ]);
        if owing.trim().is_empty() {
            break;
        }
        thread::sleep(Duration::from_millis(50));
    }
    thread::sleep(Duration::from_millis(300));
}

/// A line every SAMPLE_EVERY until `duration` has passed; the RSS samples.
fn sample(tracer: &Tracer, started: Instant, duration: Duration) -> Vec<u64> {
    println!(
        "{:>7} {:>9} {:>6} {:>11} {:>9} {:>5}",
        "minute", "RSS_KiB", "CPU%", "events", "events/s", "lost"
    );
    let mut rss = Vec::new();
    let mut last = (Duration::ZERO, Usage::default(), 0u64);
    while started.elapsed() < duration {
        thread::sleep(SAMPLE_EVERY.min(duration.saturating_sub(started.elapsed())));
        let at = started.elapsed();
        let usage = Usage::of(tracer.pid()).unwrap_or_default();
        let seen = tracer.seen();
        let span = (at - last.0).as_secs_f64();
        println!(
            "{:>7.1} {:>9} {:>6.2} {:>11} {:>9.0} {:>5}",
            at.as_secs_f64() / 60.0,
            usage.rss_kib,
            (usage.cpu.saturating_sub(last.1.cpu)).as_secs_f64() / span * 100.0,
            seen.total(),
            (seen.total() - last.2) as f64 / span,
            seen.lost
        );
        rss.push(usage.rss_kib);
        last = (at, usage, seen.total());
    }
    rss
}
