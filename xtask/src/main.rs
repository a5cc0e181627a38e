//! Project tasks: `cargo xtask setup | run | test | vm-test | dist | deploy-check | soak | bench`.
mod bench;
mod deploy;
mod dist;
mod proc;
mod setup;
mod soak;
mod tracer;
mod vm;

use std::{
    ffi::OsString,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "tcpretrans project tasks")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what building and testing need (apt packages, bpf-linker,
    /// nightly rust-src); a fast no-op when everything is present.
    Setup,
    /// Build and run the tracer live (as root): `cargo xtask run -- --state`.
    Run {
        /// Arguments for tcpretrans.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<OsString>,
    },
    /// The release binary, its man page and bash/zsh/fish completions, in
    /// target/dist (the README says where to install them).
    Dist,
    /// The Kubernetes manifests in deploy/kubernetes validated offline
    /// (kubernetes-validate, strict), and the arguments they pass checked by
    /// the binary's own parser.
    DeployCheck,
    /// The tracer attached to churn and lossy transfers in a lab namespace
    /// for MINUTES (root; not part of the tests): memory over time, CPU,
    /// events seen and lost.
    Soak {
        #[arg(default_value_t = 10.0)]
        minutes: f64,
        /// Also serve metrics labelled by LIST (`--metrics-by`): their
        /// series at the end, and RSS held under the fleet's bound.
        #[arg(long, value_name = "LIST")]
        metrics_by: Option<String>,
    },
    /// tcpretrans against libbpf-tools tcpstates and bpftrace on the same
    /// loopback workloads, interleaved (root; not part of the tests).
    Bench(bench::Options),
    /// The kernel matrix: the static tracer in Debian's 5.10, 6.1 and 6.12
    /// kernels and arm64 6.1 under qemu (root), with no libc, then (x86-64)
    /// `--check` and the kernel lab; then a table of them.
    VmTest(vm::Options),
    /// Every test: unit tests, the kernel lab on this kernel, then in each
    /// kernel of the matrix under qemu (root).
    Test {
        /// Extra arguments for the test harness, e.g. a test name filter.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<OsString>,
    },
}

fn main() -> Result<()> {
    let root = workspace_root();
    match Cli::parse().task {
        Task::Setup => setup::run(),
        Task::Soak {
            minutes,
            metrics_by,
        } => {
            setup::run()?;
            require_root("the soak")?;
            soak::run(&release_binary(&root)?, minutes, metrics_by.as_deref())
        }
        Task::Bench(options) => {
            setup::run()?;
            setup::bench_packages()?;
            require_root("the benchmark")?;
            bench::run(&release_binary(&root)?, &root, &options)
        }
        Task::VmTest(options) => {
            setup::run()?;
            require_root("the kernel matrix")?;
            setup::vm_packages()?;
            vm::run(&root, &options)
        }
        Task::Dist => {
            setup::run()?;
            dist::run(&root)
        }
        Task::DeployCheck => {
            setup::run()?;
            deploy::validate(&root)
        }
        Task::Run { args } => {
            setup::run()?;
            let binary = release_binary(&root)?;
            let mut command = if setup::is_root() {
                Command::new(&binary)
            } else {
                let mut sudo = Command::new("sudo");
                sudo.arg(&binary);
                sudo
            };
            let status = command.args(args).status().context("starting tcpretrans")?;
            std::process::exit(status.code().unwrap_or(1));
        }
        Task::Test { args } => {
            setup::run()?;
            require_root("the kernel lab")?;
            // Gates first: formatting, then clippy on every target with the
            // empty kernel object (what the kernel programs compile to does
            // not change what clippy says of userspace).
            cargo(&root, &["fmt", "--all", "--check"])?;
            cargo_with(
                &root,
                &["clippy", "--all-targets", "--", "-D", "warnings"],
                &[("AYA_BUILD_SKIP", "1")],
            )?;
            clippy_kernel_programs(&root)?;
            // Unit tests, then every ignored-by-default kernel lab test, one
            // at a time: the kernel skips a classic tracepoint program that
            // fires in a softirq interrupting any BPF program on that CPU
            // (`recursion_misses`, which the tool counts as lost), so tracers
            // running side by side make each other report losses.
            cargo(&root, &["test", "--workspace"])?;
            deploy::validate(&root)?;
            // The lab's container test builds the image from what `dist`
            // ships and runs it as the DaemonSet runs it.
            setup::container_packages()?;
            dist::run(&root)?;
            let dist = root.join("target/dist");
            let daemonset = deploy::daemonset(&root)?.to_string();
            let lab_env = [
                ("TCPRETRANS_DIST", dist.to_str().context("a UTF-8 path")?),
                ("TCPRETRANS_DAEMONSET", daemonset.as_str()),
            ];
            let mut lab: Vec<OsString> = LAB
                .iter()
                .chain(&["--", "--include-ignored", "--test-threads=1"])
                .map(OsString::from)
                .collect();
            let matrix_args: Vec<String> = args
                .iter()
                .map(|a| a.to_string_lossy().into_owned())
                .collect();
            lab.extend(args);
            cargo_with(&root, &lab, &lab_env)?;
            // Then the same lab in every kernel of the matrix.
            setup::vm_packages()?;
            vm::run(&root, &vm::Options::every_kernel(matrix_args))
        }
    }
}

/// `cargo` arguments of the kernel lab, in release: the churn test makes
/// 100,000 state transitions/s, more than a debug build of the tracer reads.
const LAB: [&str; 6] = [
    "test",
    "--release",
    "--package",
    "tcpretrans",
    "--test",
    "lab",
];

/// Builds the release binary; its path.
fn release_binary(root: &Path) -> Result<PathBuf> {
    cargo(root, &["build", "--release", "--package", "tcpretrans"])?;
    Ok(root.join("target/release/tcpretrans"))
}

fn require_root(what: &str) -> Result<()> {
    if !setup::is_root() {
        bail!("{what} loads eBPF programs and creates network namespaces: run it as root");
    }
    Ok(())
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_owned()
}

fn cargo<S: AsRef<std::ffi::OsStr>>(root: &Path, args: &[S]) -> Result<()> {
    cargo_with(root, args, &[])
}

/// Clippy on the kernel programs, which userspace's clippy cannot see:
/// they build for the BPF target with the nightly toolchain, inside
/// aya-build, whose compiler warnings only reach cargo's build-script
/// output. Their own target directory keeps them from invalidating the
/// build's.
fn clippy_kernel_programs(root: &Path) -> Result<()> {
    setup::run_checked(
        Command::new("rustup")
            .args(["run", setup::NIGHTLY, "cargo", "clippy"])
            .args([
                "--package",
                "tcpretrans-ebpf",
                "--target",
                "bpfel-unknown-none",
            ])
            .args(["-Z", "build-std=core", "--release"])
            .args(["--target-dir", "target/ebpf-clippy", "--", "-D", "warnings"])
            // What aya-build sets: the cfg the programs are written against.
            .env(
                "CARGO_ENCODED_RUSTFLAGS",
                format!("--cfg=bpf_target_arch=\"{}\"", std::env::consts::ARCH),
            )
            // The stable toolchain `cargo xtask` runs under would win otherwise.
            .env_remove("RUSTUP_TOOLCHAIN")
            .env_remove("RUSTC")
            .env_remove("RUSTC_WORKSPACE_WRAPPER")
            .current_dir(root),
    )
}

/// `cargo` with `env` set.
fn cargo_with<S: AsRef<std::ffi::OsStr>>(
    root: &Path,
    args: &[S],
    env: &[(&str, &str)],
) -> Result<()> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let status = Command::new(&cargo)
        .args(args)
        .envs(env.iter().copied())
        .current_dir(root)
        .status()
        .context("running cargo")?;
    if !status.success() {
        bail!(
            "cargo {} failed ({status})",
            args.iter()
                .map(|a| a.as_ref().to_string_lossy())
                .collect::<Vec<_>>()
                .join(" ")
        );
    }
    Ok(())
}
