//! One guest: a kernel booted under qemu with the host's root shared
//! read-only, running the tracer's `--check` and the kernel lab, its
//! results left in a run directory shared read-write.
use std::{
    fmt::Write as _,
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use super::kernel::Kernel;

/// Longest a guest may run: the lab takes minutes under TCG.
const TIMEOUT: Duration = Duration::from_secs(60 * 60);

/// Modules of the guest's kernel the lab needs, loaded up front so that one
/// missing is named: network namespaces joined by veth pairs, nftables with
/// `numgen` for random loss, socket diagnostics for `ss`, and a token
/// bucket whose full queue drops retransmissions. The kernel loads
/// anything else it asks for itself (the initramfs's module loader).
const LAB_MODULES: [&str; 6] = [
    "veth",
    "nf_tables",
    "nft_numgen",
    "inet_diag",
    "tcp_diag",
    "sch_tbf",
];

/// What a guest is to run: copies of the tracer and the lab, taken once
/// for every guest, so that a rebuild on the host meanwhile changes
/// neither under them.
pub struct Binaries {
    /// Where the lab runs the tracer from, as it was built to.
    pub tracer_built: PathBuf,
    /// The static tracer, bound over `tracer_built` in the guest.
    pub tracer: PathBuf,
    pub lab: PathBuf,
}

/// What a guest left in its run directory.
pub struct Outcome {
    pub wall: Duration,
    /// Guest uptime when its script started: the kernel's boot.
    pub boot: Option<Duration>,
    pub check: Option<Duration>,
    pub lab: Option<Duration>,
    pub check_output: String,
    pub lab_output: String,
    /// Of `LAB_MODULES`, those `modprobe` could not load.
    pub missing_modules: Vec<String>,
    /// Why the guest did not finish, with the end of its console.
    pub unfinished: Option<String>,
}

/// Boots `kernel` with `run` (emptied first) as its run directory, and runs
/// `--check` then the lab (with `lab_args` for its harness) inside.
pub fn run(
    kernel: &Kernel,
    workspace: &Path,
    run: &Path,
    binaries: &Binaries,
    lab_args: &[String],
) -> Result<Outcome> {
    if run.exists() {
        fs::remove_dir_all(run).with_context(|| format!("removing {}", run.display()))?;
    }
    fs::create_dir_all(run)?;
    fs::write(
        run.join("guest.sh"),
        script(kernel, run, binaries, lab_args),
    )?;

    let started = Instant::now();
    let finished = qemu(kernel, Root::Host { workspace }, run, TIMEOUT)?;
    let wall = started.elapsed();

    let read = |name: &str| fs::read_to_string(run.join(name)).unwrap_or_default();
    let times = read("times");
    let uptime = |step: &str| {
        times.lines().find_map(|l| {
            let (name, seconds) = l.split_once(' ')?;
            (name == step).then(|| seconds.parse().ok().map(Duration::from_secs_f64))?
        })
    };
    let (boot, checked, tested) = (uptime("boot"), uptime("check"), uptime("lab"));
    let unfinished = match (finished, tested) {
        (true, Some(_)) => None,
        (finished, _) => {
            let console = read("console.log");
            let tail: Vec<&str> = console.lines().rev().take(20).collect();
            let why = if finished {
                "the guest stopped before the lab finished".to_owned()
            } else {
                format!("the guest was stopped after {} s", TIMEOUT.as_secs())
            };
            Some(format!(
                "{why}; the end of its console:\n{}",
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            ))
        }
    };
    Ok(Outcome {
        wall,
        boot,
        check: checked.zip(boot).map(|(c, b)| c.saturating_sub(b)),
        lab: tested.zip(checked).map(|(l, c)| l.saturating_sub(c)),
        check_output: read("check.txt"),
        lab_output: read("lab.txt"),
        missing_modules: read("modules-missing")
            .split_whitespace()
            .map(str::to_owned)
            .collect(),
        unfinished,
    })
}

/// Single-quotes `text` for sh.
fn quote(text: impl AsRef<str>) -> String {
    format!("'{}'", text.as_ref().replace('\'', r"'\''"))
}

/// The guest's work, run by its init chrooted into the host's root, in the
/// run directory. The tracer's copy is bound over the path the lab runs it
/// from.
fn script(kernel: &Kernel, run: &Path, binaries: &Binaries, lab_args: &[String]) -> String {
    let path = |p: &Path| quote(p.to_string_lossy());
    let mut script = format!(
        "export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root\n\
         cd {run} || exit 1\n\
         up() {{ cut -d' ' -f1 /proc/uptime; }}\n\
         echo \"boot $(up)\" > times\n\
         ip link set lo up\n\
         mount --bind {tracer} {tracer_built}\n\
         for m in {modules}; do\n\
         \x20   modprobe -q -d {kdir} \"$m\" || echo \"$m\"\n\
         done > modules-missing\n\
         {tracer} --check > check.txt 2>&1\n\
         echo \"check $(up)\" >> times\n\
         {lab} --include-ignored --test-threads=1 --show-output",
        run = path(run),
        tracer = path(&binaries.tracer),
        tracer_built = path(&binaries.tracer_built),
        lab = path(&binaries.lab),
        modules = LAB_MODULES.join(" "),
        kdir = path(&kernel.dir),
    );
    for arg in lab_args {
        write!(script, " {}", quote(arg)).expect("writing to a String");
    }
    script.push_str(" > lab.txt 2>&1\necho \"lab $(up)\" >> times\n");
    script
}

/// What a guest's root file system is. Either way the run directory is
/// shared read-write and its `guest.sh` is run.
pub enum Root<'a> {
    /// The host's root, read-only, with the workspace in sight.
    Host { workspace: &'a Path },
    /// Nothing but the initramfs: static busybox, no libc anywhere.
    Initramfs,
}

/// Runs qemu until the guest powers off (true) or `timeout` (false).
pub fn qemu(kernel: &Kernel, root: Root, run: &Path, timeout: Duration) -> Result<bool> {
    let run_path = run.to_str().context("run directory is not UTF-8")?;
    // qemu's option syntax has no escape for a comma in a path; the kernel
    // command line none for a space.
    if run_path.contains(',') || run_path.contains(' ') {
        bail!("the run directory {run_path} has a comma or a space, which qemu cannot take");
    }
    let (root_parameter, root_share) = match root {
        Root::Host { workspace } => {
            let workspace = workspace
                .to_str()
                .context("the workspace's path is not UTF-8")?;
            // multidevs=remap: the host's root spans several file systems,
            // whose inode numbers would collide in one 9p export.
            const SHARE: [&str; 4] = [
                "-fsdev",
                "local,id=hostroot,path=/,security_model=none,readonly=on,multidevs=remap",
                "-device",
                "virtio-9p-pci,fsdev=hostroot,mount_tag=hostroot",
            ];
            (format!("vmroot={workspace}"), &SHARE[..])
        }
        Root::Initramfs => ("vmbare=1".to_owned(), &[][..]),
    };
    let (qemu, machine) = kernel.arch.qemu();
    let mut child = Command::new(qemu)
        .args(machine)
        // This machine's /dev/kvm is a nested device that cannot run stock
        // kernels: emulate (TCG). One CPU: with two, a kernel patching its
        // tracepoints while the other emulated CPU ran the patched code
        // once died of the patch's int3 (TCG's cross-modifying code).
        .args([
            "-accel",
            "tcg,thread=multi",
            "-cpu",
            "max",
            "-smp",
            "1",
            "-m",
            "2G",
        ])
        .args([
            "-nodefaults",
            "-no-reboot",
            "-display",
            "none",
            "-monitor",
            "none",
        ])
        .arg("-serial")
        .arg(format!("file:{run_path}/console.log"))
        .arg("-kernel")
        .arg(kernel.vmlinuz())
        .arg("-initrd")
        .arg(kernel.initrd())
        .arg("-append")
        .arg(format!(
            "console={} quiet panic=-1 vmrun={run_path} {root_parameter}",
            kernel.arch.console()
        ))
        .args(root_share)
        .arg("-fsdev")
        .arg(format!(
            "local,id=run,path={run_path},security_model=none,multidevs=remap"
        ))
        .args(["-device", "virtio-9p-pci,fsdev=run,mount_tag=run"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(fs::File::create(run.join("qemu.log"))?)
        .spawn()
        .with_context(|| format!("starting {qemu}"))?;
    let started = Instant::now();
    while started.elapsed() < timeout {
        if let Some(status) = child.try_wait()? {
            if !status.success() {
                bail!(
                    "qemu failed ({status}): {}",
                    fs::read_to_string(run.join("qemu.log")).unwrap_or_default()
                );
            }
            return Ok(true);
        }
        thread::sleep(Duration::from_millis(200));
    }
    child.kill()?;
    child.wait()?;
    Ok(false)
}
