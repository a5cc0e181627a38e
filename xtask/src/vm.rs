//! `cargo xtask vm-test`: the kernel matrix. Each Debian kernel boots
//! under qemu, first with nothing but its initramfs to run the static
//! tracer without any libc, then (x86-64 kernels) with the host's root
//! shared read-only to run the tracer's `--check` and the kernel lab built
//! on the host; then a table of them.
mod bare;
mod cross;
mod guest;
mod kernel;
mod report;

use std::{
    fs,
    io::BufRead as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context as _, Result, bail};
use clap::{Args, builder::PossibleValuesParser};
use serde_json::Value;

use self::{guest::Binaries, kernel::Arch, report::Row};

#[derive(Args)]
pub struct Options {
    /// The kernel series to boot: a Debian release's kernel.
    #[arg(long, default_value = "all", value_parser = PossibleValuesParser::new(
        kernel::SERIES.map(|s| s.name).into_iter().chain(["all"])
    ))]
    kernel: String,
    /// Extra arguments for the lab's test harness, e.g. a test name filter.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    args: Vec<String>,
}

/// Lab tests a guest does not run: the test, the kernel series, and why
/// (the README's "Compatibility" says so too). The host runs them all.
const NOT_IN_GUESTS: [(&str, &[&str], &str); 3] = [
    (
        "count::count_table_totals_equal_the_per_event_counts",
        &["5.10", "6.1", "6.12"],
        "it compares two tracers' causes, and a retransmission at its timer's due jiffy \
         is told apart by each program at its own run: under TCG's slow clock a tick can \
         fall between them",
    ),
    (
        "container::the_daemonsets_container_reports_every_retransmission_and_its_owner",
        &["5.10", "6.1", "6.12"],
        "podman needs writable image storage, and a guest shares the host's root read-only",
    ),
    (
        "container::another_containers_sockets_carry_its_id",
        &["5.10", "6.1", "6.12"],
        "podman needs writable image storage, and a guest shares the host's root read-only",
    ),
];

impl Options {
    /// Every kernel, with the host's lab arguments (`cargo xtask test`).
    pub fn every_kernel(args: Vec<String>) -> Self {
        Self {
            kernel: "all".into(),
            args,
        }
    }
}

pub fn run(root: &Path, options: &Options) -> Result<()> {
    let binaries = build(root, &root.join("target/vm/bin"))?;
    let mut rows = Vec::new();
    let mut bare_runs = Vec::new();
    let mut failed = Vec::new();
    for series in kernel::SERIES
        .iter()
        .filter(|s| options.kernel == "all" || options.kernel == s.name)
    {
        let tracer = match series.arch {
            Arch::Amd64 => binaries.tracer.clone(),
            arch => {
                let copy = root
                    .join("target/vm/bin")
                    .join(format!("tcpretrans-{}", arch.debian()));
                fs::copy(cross::static_tracer(root, arch, series.codename)?, &copy)
                    .context("copying the tracer")?;
                copy
            }
        };
        let kernel = kernel::get(series)?;
        eprintln!(
            "xtask: booting {} under qemu (TCG) with nothing but its initramfs",
            kernel.release
        );
        let outcome = bare::run(
            &kernel,
            &root.join("target/vm/bare").join(series.name),
            &tracer,
        )?;
        eprintln!("xtask: {}", report::bare(&outcome));
        if !outcome.problems.is_empty() {
            failed.push(format!("{} (no libc)", kernel.release));
        }
        bare_runs.push(outcome);
        if series.arch != Arch::Amd64 {
            eprintln!(
                "xtask: the lab does not run on {}: it runs the host's programs (ip, nft, \
                 nginx, iperf3, ...) from the host's root, which are x86-64",
                series.name
            );
            continue;
        }

        eprintln!("xtask: booting {} under qemu (TCG)", kernel.release);
        let run = root.join("target/vm").join(series.name);
        let mut lab_args = options.args.clone();
        for (test, _, why) in NOT_IN_GUESTS
            .iter()
            .filter(|(_, series_list, _)| series_list.contains(&series.name))
        {
            eprintln!("xtask: {test} does not run on {}: {why}", series.name);
            lab_args.extend(["--skip".into(), (*test).into()]);
        }
        let outcome = guest::run(&kernel, root, &run, &binaries, &lab_args)?;
        if !outcome.missing_modules.is_empty() {
            eprintln!(
                "xtask: {} could not load modules {}",
                kernel.release,
                outcome.missing_modules.join(" ")
            );
        }
        if let Some(why) = &outcome.unfinished {
            eprintln!("xtask: {}: {why}", kernel.release);
            failed.push(kernel.release.clone());
        }
        let row = Row {
            series: series.name,
            release: kernel.release,
            version: kernel.version,
            distribution: series.distribution,
            check: report::Check::parse(&outcome.check_output),
            tests: report::lab(&outcome.lab_output),
            boot: outcome.boot,
            check_time: outcome.check,
            lab_time: outcome.lab,
            wall: outcome.wall,
        };
        let (passed, skipped, failures) = row.count();
        eprintln!(
            "xtask: {}: {passed} passed, {skipped} skipped, {failures} failed in {:.0} s; output in {}",
            row.release,
            row.wall.as_secs_f64(),
            run.display()
        );
        if (row.check.refused.is_some() || failures > 0) && outcome.unfinished.is_none() {
            failed.push(row.release.clone());
        }
        rows.push(row);
    }
    print!("{}", report::table(&rows));
    for outcome in &bare_runs {
        println!("{}", report::bare(outcome));
    }
    if !failed.is_empty() {
        bail!("the matrix failed on {}", failed.join(", "));
    }
    Ok(())
}

/// Builds the kernel lab as `cargo xtask test` runs it (its paths from
/// cargo's build messages) and the static release tracer, and copies the
/// lab and the static tracer into `copies`: the guests run the binary that
/// `cargo xtask dist` ships.
fn build(root: &Path, copies: &Path) -> Result<Binaries> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut child = Command::new(cargo)
        .args(crate::LAB)
        .args(["--no-run", "--message-format=json-render-diagnostics"])
        .current_dir(root)
        .stdout(Stdio::piped())
        .spawn()
        .context("running cargo")?;
    let stdout = std::io::BufReader::new(child.stdout.take().expect("piped"));
    let (mut tracer, mut lab): (Option<PathBuf>, Option<PathBuf>) = (None, None);
    for line in stdout.lines() {
        let message: Value = serde_json::from_str(&line?).context("cargo's JSON message")?;
        let target = &message["target"];
        let Some(executable) = message["executable"].as_str() else {
            continue;
        };
        let kind = |k: &str| {
            target["kind"]
                .as_array()
                .is_some_and(|ks| ks.iter().any(|v| v == k))
        };
        match target["name"].as_str() {
            Some("tcpretrans") if kind("bin") => tracer = Some(executable.into()),
            Some("lab") if kind("test") => lab = Some(executable.into()),
            _ => {}
        }
    }
    if !child.wait()?.success() {
        bail!("building the tracer and the kernel lab failed");
    }
    let tracer_built = tracer.context("cargo built no tcpretrans binary")?;
    let lab = lab.context("cargo built no lab test")?;
    fs::create_dir_all(copies)?;
    let binaries = Binaries {
        tracer: copies.join("tcpretrans"),
        lab: copies.join("lab"),
        tracer_built,
    };
    let tracer = crate::dist::static_binary(root, Arch::Amd64.rust_target(), &[])?;
    fs::copy(tracer, &binaries.tracer).context("copying the tracer")?;
    fs::copy(&lab, &binaries.lab).context("copying the lab")?;
    Ok(binaries)
}
