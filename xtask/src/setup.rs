//! Installs the build chain and lab tools on a fresh Debian machine,
//! idempotently: each step first checks whether its result is present.
use std::process::{Command, Stdio};

use anyhow::{Context as _, Result, bail};

/// Debian packages: LLVM 22 for bpf-linker, musl's C compiler wrapper for the
/// static binary's C code (its allocator), nftables and iproute2 for the
/// lab, real programs the lab traces (nginx, a prefork server; curl; iperf3),
/// Prometheus (and promtool) to scrape and lint `--metrics`,
/// zsh and fish to check the completion scripts with.
const APT_PACKAGES: [&str; 13] = [
    "llvm-22-dev",
    "libpolly-22-dev",
    "libzstd-dev",
    "zlib1g-dev",
    "musl-tools",
    "nftables",
    "iproute2",
    "nginx-light",
    "curl",
    "iperf3",
    "prometheus",
    "zsh",
    "fish",
];
const BPF_LINKER_VERSION: &str = "0.13.0";
const LLVM_PREFIX: &str = "/usr/lib/llvm-22";
/// The toolchain the kernel programs build with: aya-build's default.
pub const NIGHTLY: &str = "nightly";
/// The target of the static binary `cargo xtask dist` ships.
pub const STATIC_TARGET: &str = "x86_64-unknown-linux-musl";
/// The target of the static binary the arm64 guest runs.
pub const ARM64_TARGET: &str = "aarch64-unknown-linux-musl";

pub fn run() -> Result<()> {
    apt_packages()?;
    nightly_components()?;
    stable_components()?;
    rust_target(STATIC_TARGET)?;
    bpf_linker()
}

pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// The peers `cargo xtask bench` measures against.
const BENCH_PACKAGES: [&str; 2] = ["libbpf-tools", "bpftrace"];

pub fn bench_packages() -> Result<()> {
    apt_install(&BENCH_PACKAGES)
}

/// What the kernel lab's container tests run the image with: podman, and
/// runc as its runtime (crun, the other it takes, refuses this machine's
/// hybrid cgroup layout); a static busybox, a client container's program.
const CONTAINER_PACKAGES: [&str; 3] = ["podman", "runc", "busybox-static"];

pub fn container_packages() -> Result<()> {
    apt_install(&CONTAINER_PACKAGES)
}

/// Debian's python3 with its venv module, for the virtual environment
/// `cargo xtask deploy-check` installs its validator from PyPI into.
const DEPLOY_CHECK_PACKAGES: [&str; 1] = ["python3-venv"];

pub fn deploy_check_packages() -> Result<()> {
    apt_install(&DEPLOY_CHECK_PACKAGES)
}

/// What `cargo xtask vm-test` boots kernels with: qemu for x86-64 and arm64
/// guests (bookworm's 7.2 is older than the 10.0 the matrix was measured
/// with, so it comes from bookworm-backports), a static busybox for the
/// initramfs, cpio to pack it, kmod, xz and zstd for the guest kernels'
/// modules, and clang for the arm64 tracer's C code (its allocator).
const VM_PACKAGES: [&str; 6] = [
    "busybox-static",
    "cpio",
    "kmod",
    "xz-utils",
    "zstd",
    "clang-22",
];
const QEMU: [&str; 2] = ["qemu-system-x86", "qemu-system-arm"];
/// A sources file of its own, so the host's own lists stay as they are;
/// backports have a low default priority: nothing else is upgraded from it.
const BACKPORTS_SOURCES: &str = "/etc/apt/sources.list.d/tcpretrans-bookworm-backports.sources";

pub fn vm_packages() -> Result<()> {
    apt_install(&VM_PACKAGES)?;
    rust_target(ARM64_TARGET)?;
    let missing: Vec<&str> = QEMU.into_iter().filter(|p| !dpkg_installed(p)).collect();
    if missing.is_empty() {
        return Ok(());
    }
    if !is_root() {
        bail!(
            "missing Debian packages {}: run `cargo xtask vm-test` as root",
            missing.join(" ")
        );
    }
    if !std::path::Path::new(BACKPORTS_SOURCES).exists() {
        std::fs::write(
            BACKPORTS_SOURCES,
            "Types: deb\nURIs: http://deb.debian.org/debian\nSuites: bookworm-backports\n\
             Components: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n",
        )
        .with_context(|| format!("writing {BACKPORTS_SOURCES}"))?;
    }
    eprintln!(
        "xtask: installing {} from bookworm-backports",
        missing.join(" ")
    );
    run_checked(Command::new("apt-get").arg("update").arg("-q"))?;
    run_checked(
        Command::new("apt-get")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(["-t", "bookworm-backports"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
}

fn apt_packages() -> Result<()> {
    apt_install(&APT_PACKAGES)
}

fn apt_install(packages: &[&str]) -> Result<()> {
    let missing: Vec<&str> = packages
        .iter()
        .copied()
        .filter(|p| !dpkg_installed(p))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    if !is_root() {
        bail!(
            "missing Debian packages {}: run `cargo xtask setup` as root",
            missing.join(" ")
        );
    }
    eprintln!("xtask: installing {}", missing.join(" "));
    // The package lists of a fresh machine may predate LLVM 22 (bookworm-security).
    run_checked(Command::new("apt-get").arg("update").arg("-q"))?;
    run_checked(
        Command::new("apt-get")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
}

fn dpkg_installed(package: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", package])
        .stderr(Stdio::null())
        .output()
        .is_ok_and(|o| o.status.success() && o.stdout.ends_with(b"install ok installed"))
}

/// Of the nightly toolchain the kernel programs build with: rust-src (for
/// `-Z build-std=core`) and clippy (`cargo xtask test`'s gate on them).
fn nightly_components() -> Result<()> {
    const COMPONENTS: [&str; 2] = ["rust-src", "clippy"];
    let installed = Command::new("rustup")
        .args(["component", "list", "--installed", "--toolchain", NIGHTLY])
        .stderr(Stdio::null())
        .output()
        .context("running rustup")?;
    if !installed.status.success() {
        eprintln!("xtask: installing the {NIGHTLY} toolchain");
        let mut install = Command::new("rustup");
        install.args(["toolchain", "install", NIGHTLY, "--profile", "minimal"]);
        for component in COMPONENTS {
            install.args(["--component", component]);
        }
        return run_checked(&mut install);
    }
    let installed = String::from_utf8_lossy(&installed.stdout);
    let missing: Vec<&str> = COMPONENTS
        .into_iter()
        .filter(|c| !installed.lines().any(|l| l.starts_with(c)))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!(
        "xtask: installing the {NIGHTLY} toolchain's {}",
        missing.join(" ")
    );
    run_checked(
        Command::new("rustup")
            .args(["component", "add", "--toolchain", NIGHTLY])
            .args(&missing),
    )
}

/// Of the active (stable) toolchain: rustfmt and clippy, which `cargo xtask
/// test` runs as gates.
fn stable_components() -> Result<()> {
    let installed = Command::new("rustup")
        .args(["component", "list", "--installed"])
        .stderr(Stdio::null())
        .output()
        .context("running rustup")?;
    let installed = String::from_utf8_lossy(&installed.stdout);
    let has = |prefix: &str| installed.lines().any(|l| l.starts_with(prefix));
    let tools: Vec<&str> = ["rustfmt", "clippy"]
        .into_iter()
        .filter(|tool| !has(&format!("{tool}-")))
        .collect();
    if !tools.is_empty() {
        eprintln!("xtask: installing {}", tools.join(" "));
        run_checked(
            Command::new("rustup")
                .args(["component", "add"])
                .args(&tools),
        )?;
    }
    Ok(())
}

/// The standard library of `target` for the active (stable) toolchain.
fn rust_target(target: &str) -> Result<()> {
    let installed = Command::new("rustup")
        .args(["target", "list", "--installed"])
        .stderr(Stdio::null())
        .output()
        .context("running rustup")?;
    if String::from_utf8_lossy(&installed.stdout)
        .lines()
        .any(|l| l == target)
    {
        return Ok(());
    }
    eprintln!("xtask: installing the {target} target");
    run_checked(Command::new("rustup").args(["target", "add", target]))
}

fn bpf_linker() -> Result<()> {
    let version = Command::new("bpf-linker")
        .arg("--version")
        .stderr(Stdio::null())
        .output();
    if version.is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains(BPF_LINKER_VERSION)) {
        return Ok(());
    }
    eprintln!("xtask: building bpf-linker {BPF_LINKER_VERSION} against LLVM 22 (a few minutes)");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    run_checked(
        Command::new(cargo)
            .args([
                "install",
                "bpf-linker",
                "--locked",
                "--version",
                BPF_LINKER_VERSION,
            ])
            .args(["--no-default-features", "--features", "llvm-22"])
            .env("LLVM_PREFIX", LLVM_PREFIX),
    )
}

pub fn run_checked(command: &mut Command) -> Result<()> {
    let status = command
        .status()
        .with_context(|| format!("starting {command:?}"))?;
    if !status.success() {
        bail!("{command:?} failed ({status})");
    }
    Ok(())
}
