//! Debian's own kernels, fetched with a private apt state (the host's apt
//! configuration never sees bullseye or trixie) and unpacked, never
//! installed, into a machine-wide cache; each with a small initramfs that
//! mounts the host's root over 9p.
use std::{
    fs,
    io::Write as _,
    os::unix::fs::{PermissionsExt as _, symlink},
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context as _, Result, bail};

use crate::setup::run_checked;

/// Kernels are large (≈500 MB each unpacked) and the same for every
/// checkout and branch, so they are cached for the machine, like apt's own
/// `/var/cache/apt`, and survive `cargo clean`. A series' link names the
/// exact kernel: delete it to fetch the release's newest one again.
pub const CACHE: &str = "/var/cache/tcpretrans-vm";

/// A kernel series of the matrix: the Debian release whose kernel it is.
#[derive(Debug, Clone, Copy)]
pub struct Series {
    /// `5.10`, `6.1-arm64`: what `--kernel` takes.
    pub name: &'static str,
    /// The package's version prefix: `5.10`.
    pub kernel: &'static str,
    pub codename: &'static str,
    pub distribution: &'static str,
    pub arch: Arch,
}

pub const SERIES: [Series; 4] = [
    Series {
        name: "5.10",
        kernel: "5.10",
        codename: "bullseye",
        distribution: "Debian 11",
        arch: Arch::Amd64,
    },
    Series {
        name: "6.1",
        kernel: "6.1",
        codename: "bookworm",
        distribution: "Debian 12",
        arch: Arch::Amd64,
    },
    Series {
        name: "6.12",
        kernel: "6.12",
        codename: "trixie",
        distribution: "Debian 13",
        arch: Arch::Amd64,
    },
    Series {
        name: "6.1-arm64",
        kernel: "6.1",
        codename: "bookworm",
        distribution: "Debian 12",
        arch: Arch::Arm64,
    },
];

/// A guest's architecture: the host's (emulated all the same), or arm64.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arch {
    Amd64,
    Arm64,
}

impl Arch {
    /// Debian's name for it.
    pub fn debian(self) -> &'static str {
        match self {
            Self::Amd64 => "amd64",
            Self::Arm64 => "arm64",
        }
    }

    /// The static binary's Rust target.
    pub fn rust_target(self) -> &'static str {
        match self {
            Self::Amd64 => crate::setup::STATIC_TARGET,
            Self::Arm64 => crate::setup::ARM64_TARGET,
        }
    }

    /// The qemu that emulates it, with its machine.
    pub fn qemu(self) -> (&'static str, &'static [&'static str]) {
        match self {
            Self::Amd64 => ("qemu-system-x86_64", &[]),
            Self::Arm64 => ("qemu-system-aarch64", &["-M", "virt"]),
        }
    }

    /// The serial console's device in the guest.
    pub fn console(self) -> &'static str {
        match self {
            Self::Amd64 => "ttyS0",
            Self::Arm64 => "ttyAMA0",
        }
    }
}

/// The file in a kernel's directory that holds its package's version.
const VERSION: &str = "package-version";

const KEYRING: &str = "/usr/share/keyrings/debian-archive-keyring.gpg";

/// Modules the initramfs loads to mount the host's root: Debian builds
/// virtio-pci (before 6.12) and 9p as modules.
const BOOT_MODULES: [&str; 3] = ["virtio_pci", "9pnet_virtio", "9p"];

/// Modules the initramfs holds for a guest without the host's root to load
/// (`/modules/extra/NAME.ko`): `dummy`, a device that drops what it sends.
pub const EXTRA_MODULES: [&str; 1] = ["dummy"];

/// An unpacked kernel package, ready to boot.
pub struct Kernel {
    /// `uname -r` of the guest.
    pub release: String,
    /// The package's version, which carries the upstream one: `5.10.262-1`.
    pub version: String,
    /// The unpacked package: `boot/`, `lib/modules/RELEASE` (with
    /// `modules.dep`), and `initrd.cpio`; for a foreign architecture, its
    /// release's `busybox-static` unpacked in `busybox-static/`.
    pub dir: PathBuf,
    pub arch: Arch,
}

impl Kernel {
    pub fn vmlinuz(&self) -> PathBuf {
        self.dir
            .join("boot")
            .join(format!("vmlinuz-{}", self.release))
    }

    pub fn initrd(&self) -> PathBuf {
        self.dir.join("initrd.cpio")
    }

    /// The static busybox of the initramfs: the host's, or one of the
    /// guest's architecture.
    fn busybox(&self) -> PathBuf {
        match self.arch {
            Arch::Amd64 => "/bin/busybox".into(),
            Arch::Arm64 => self.dir.join("busybox-static/bin/busybox"),
        }
    }
}

/// The cached kernel of `series`, fetched and prepared first if missing.
pub fn get(series: &Series) -> Result<Kernel> {
    let cache = Path::new(CACHE);
    let link = cache.join(series.name);
    if let Ok(target) = fs::read_link(&link) {
        let dir = cache.join(target);
        let release = dir
            .file_name()
            .and_then(|n| n.to_str())
            .context("kernel directory name")?
            .to_owned();
        let version = fs::read_to_string(dir.join(VERSION))
            .with_context(|| format!("reading {}/{VERSION}", dir.display()))?;
        let kernel = Kernel {
            release,
            version,
            dir,
            arch: series.arch,
        };
        // Made anew each time (a few MB): the cached kernel gets this
        // project's current init.
        write_initrd(&kernel)?;
        return Ok(kernel);
    }
    let kernel = fetch(series, cache)?;
    let target = kernel
        .dir
        .strip_prefix(cache)
        .expect("kernel is in the cache");
    symlink(target, &link).with_context(|| format!("linking {}", link.display()))?;
    Ok(kernel)
}

fn fetch(series: &Series, cache: &Path) -> Result<Kernel> {
    let apt = PrivateApt::new(cache, series.codename, series.arch)?;
    eprintln!(
        "xtask: fetching the {} kernel of {} ({})",
        series.arch.debian(),
        series.distribution,
        series.codename
    );
    apt.update()?;
    let package = apt.image_package(series)?;
    let deb = apt.download(&package)?;
    // The package's name is `linux-image-` and the kernel's release.
    let release = package
        .strip_prefix("linux-image-")
        .expect("checked by image_package")
        .to_owned();
    // The series' link, made last, marks the kernel complete: anything
    // here without it is left from an interrupted fetch.
    let dir = cache.join("kernels").join(&release);
    if dir.exists() {
        fs::remove_dir_all(&dir)?;
    }
    fs::create_dir_all(&dir)?;
    run_checked(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&dir))?;
    let version = Command::new("dpkg-deb")
        .arg("-f")
        .arg(&deb)
        .arg("Version")
        .output()
        .context("running dpkg-deb")?;
    if !version.status.success() {
        bail!("dpkg-deb -f {} Version failed", deb.display());
    }
    let version = String::from_utf8(version.stdout)?.trim().to_owned();
    fs::write(dir.join(VERSION), &version)?;
    fs::remove_file(&deb)?;
    // Trixie's packages put modules under usr/lib: the same layout as a
    // merged-/usr system, so `depmod -b` and `modprobe -d` find them.
    if !dir.join("lib").exists() {
        symlink("usr/lib", dir.join("lib"))?;
    }
    // modules.dep is the package's postinst's to write.
    run_checked(Command::new("depmod").arg("-b").arg(&dir).arg(&release))?;
    let kernel = Kernel {
        release,
        version,
        dir,
        arch: series.arch,
    };
    if kernel.arch != Arch::Amd64 {
        let busybox = apt.download("busybox-static")?;
        let to = kernel.dir.join("busybox-static");
        run_checked(Command::new("dpkg-deb").arg("-x").arg(&busybox).arg(&to))?;
        fs::remove_file(&busybox)?;
    }
    write_initrd(&kernel)?;
    Ok(kernel)
}

/// apt with its own sources, lists and status, under the cache: only for
/// `apt-get download`, of one release and architecture.
pub struct PrivateApt {
    dir: PathBuf,
    options: Vec<String>,
    arch: Arch,
}

impl PrivateApt {
    pub fn new(cache: &Path, codename: &str, arch: Arch) -> Result<Self> {
        let dir = &match arch {
            Arch::Amd64 => cache.join("apt").join(codename),
            _ => cache
                .join("apt")
                .join(format!("{codename}-{}", arch.debian())),
        };
        for sub in ["lists/partial", "cache/archives/partial", "sources.list.d"] {
            fs::create_dir_all(dir.join(sub))?;
        }
        let sources = dir.join("sources.list");
        fs::write(
            &sources,
            format!(
                "deb [signed-by={KEYRING}] http://deb.debian.org/debian {codename} main\n\
                 deb [signed-by={KEYRING}] http://deb.debian.org/debian-security \
                 {codename}-security main\n"
            ),
        )?;
        // No package is installed in this state: apt resolves nothing
        // against the host's.
        let status = dir.join("status");
        fs::write(&status, "")?;
        let path = |p: &Path| p.display().to_string();
        let options = [
            ("Dir::State", path(dir)),
            ("Dir::State::status", path(&status)),
            ("Dir::Cache", path(&dir.join("cache"))),
            ("Dir::Etc::SourceList", path(&sources)),
            ("Dir::Etc::SourceParts", path(&dir.join("sources.list.d"))),
            // Downloads land in this root-owned directory, which apt's
            // unprivileged `_apt` user could not write.
            ("APT::Sandbox::User", "root".into()),
            ("APT::Architecture", arch.debian().into()),
            ("APT::Architectures", arch.debian().into()),
        ]
        .into_iter()
        .flat_map(|(key, value)| ["-o".to_owned(), format!("{key}={value}")])
        .collect();
        Ok(Self {
            dir: dir.to_owned(),
            options,
            arch,
        })
    }

    fn command(&self, program: &str) -> Command {
        let mut command = Command::new(program);
        command.args(&self.options).arg("-q");
        command
    }

    pub fn update(&self) -> Result<()> {
        run_checked(self.command("apt-get").arg("update"))
    }

    /// The release's current kernel image: what its `linux-image-ARCH`
    /// depends on, which must belong to the series.
    fn image_package(&self, series: &Series) -> Result<String> {
        let meta = format!("linux-image-{}", self.arch.debian());
        let output = self
            .command("apt-cache")
            .args(["depends", &meta])
            .stderr(Stdio::inherit())
            .output()
            .context("running apt-cache")?;
        if !output.status.success() {
            bail!("apt-cache depends {meta} failed ({})", output.status);
        }
        let text = String::from_utf8_lossy(&output.stdout);
        let prefix = format!("linux-image-{}.", series.kernel);
        text.lines()
            .filter_map(|l| l.trim().strip_prefix("Depends: "))
            .find(|p| p.starts_with(&prefix))
            .map(str::to_owned)
            .with_context(|| {
                format!(
                    "{}'s {meta} depends on no {prefix}* package:\n{text}",
                    series.codename
                )
            })
    }

    /// Downloads `package` into the private cache; the `.deb`'s path.
    pub fn download(&self, package: &str) -> Result<PathBuf> {
        let archives = self.dir.join("cache/archives");
        run_checked(
            self.command("apt-get")
                .args(["download", package])
                .current_dir(&archives),
        )?;
        fs::read_dir(&archives)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .find(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with(&format!("{package}_")) && n.ends_with(".deb"))
            })
            .with_context(|| format!("apt-get download {package} left no .deb"))
    }
}

/// Init of the guest's initramfs (busybox sh): load the modules 9p needs,
/// mount the host's root read-only with tmpfs where programs write, then
/// run the run directory's `guest.sh` chrooted into it and power off; or,
/// with `vmbare`, run it in the initramfs itself, the host's root unseen.
/// `vmrun`, `vmroot` (the workspace) and `vmbare` come from the kernel
/// command line, which passes unknown `key=value` parameters to init as
/// environment variables.
const INIT: &str = r#"#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
for m in /modules/*.ko; do insmod "$m" || echo "init: insmod $m failed"; done
R=/newroot
mount9p() { mount -t 9p -o "trans=virtio,version=9p2000.L,msize=262144,$2" "$1" "$3"; }
if [ -n "$vmbare" ]; then
    mkdir -p /vmrun
    if mount9p run cache=none /vmrun; then
        cd /vmrun && sh ./guest.sh
    else
        echo "init: mounting the run directory failed"
    fi
elif mount9p hostroot ro,cache=loose $R; then
    # The workspace is kept in sight before tmpfs covers where programs
    # write: a checkout may lie under /tmp or /root.
    mkdir -p /workspace && mount --bind $R$vmroot /workspace
    for d in tmp run var/tmp root; do mount -t tmpfs tmpfs $R/$d; done
    mkdir -p $R$vmroot && mount --bind /workspace $R$vmroot
    mount9p run cache=none $R$vmrun || echo "init: mounting the run directory failed"
    mount -t proc proc $R/proc
    mount -t sysfs sysfs $R/sys
    mount -t devtmpfs devtmpfs $R/dev
    mkdir -p $R/dev/pts $R/dev/shm
    mount -t devpts devpts $R/dev/pts
    mount -t tmpfs tmpfs $R/dev/shm
    mount -t tracefs tracefs $R/sys/kernel/tracing
    mount -t debugfs debugfs $R/sys/kernel/debug
    mount -t bpf bpf $R/sys/fs/bpf
    # cgroup v2 with every controller enabled for children, as systemd
    # sets it up on Debian 11 and later.
    mount -t cgroup2 cgroup2 $R/sys/fs/cgroup
    for c in $(cat $R/sys/fs/cgroup/cgroup.controllers); do
        echo +$c > $R/sys/fs/cgroup/cgroup.subtree_control
    done
    # The kernel runs its module loader from this root, not the chroot.
    echo /bin/modprobe-guest > /proc/sys/kernel/modprobe
    chroot $R /bin/sh "$vmrun/guest.sh"
else
    echo "init: mounting the host's root over 9p failed"
fi
poweroff -f
"#;

/// Writes `initrd.cpio`: static busybox, `INIT`, the modules 9p needs and a
/// module loader that runs the host's modprobe on this kernel's modules.
fn write_initrd(kernel: &Kernel) -> Result<()> {
    let staging = kernel.dir.join("initrd");
    if staging.exists() {
        fs::remove_dir_all(&staging)?;
    }
    // Entries in the order cpio should store them: directories first.
    let mut entries: Vec<String> = [
        "bin",
        "dev",
        "proc",
        "sys",
        "newroot",
        "modules",
        "modules/extra",
    ]
    .map(String::from)
    .to_vec();
    for dir in &entries {
        fs::create_dir_all(staging.join(dir))?;
    }
    fs::copy(kernel.busybox(), staging.join("bin/busybox"))
        .with_context(|| format!("copying {}", kernel.busybox().display()))?;
    entries.push("bin/busybox".into());
    let executable = |path: &str, text: &str| -> Result<()> {
        let path = staging.join(path);
        fs::write(&path, text)?;
        fs::set_permissions(&path, fs::Permissions::from_mode(0o755))?;
        Ok(())
    };
    executable("init", INIT)?;
    executable(
        "bin/modprobe-guest",
        &format!(
            "#!/bin/sh\nexec chroot /newroot /sbin/modprobe -d {} \"$@\"\n",
            kernel.dir.display()
        ),
    )?;
    entries.extend(["init".into(), "bin/modprobe-guest".into()]);

    let modules = Modules::read(&kernel.dir.join("lib/modules").join(&kernel.release))?;
    for (n, module) in modules.load_order(&BOOT_MODULES).iter().enumerate() {
        let name = format!(
            "modules/{n:02}-{}.ko",
            module_name(module).context("module path")?
        );
        modules.unpack(module, &staging.join(&name))?;
        entries.push(name);
    }
    for extra in EXTRA_MODULES {
        let module = modules
            .path(extra)
            .with_context(|| format!("{} has no module {extra}", kernel.release))?;
        let name = format!("modules/extra/{extra}.ko");
        modules.unpack(&module, &staging.join(&name))?;
        entries.push(name);
    }

    let mut cpio = Command::new("cpio")
        .args(["-o", "-H", "newc", "--quiet"])
        .current_dir(&staging)
        .stdin(Stdio::piped())
        .stdout(fs::File::create(kernel.initrd())?)
        .spawn()
        .context("starting cpio")?;
    cpio.stdin
        .take()
        .expect("piped")
        .write_all(entries.join("\n").as_bytes())?;
    if !cpio.wait()?.success() {
        bail!("cpio failed writing {}", kernel.initrd().display());
    }
    fs::remove_dir_all(&staging)?;
    Ok(())
}

/// `kernel/fs/9p/9p.ko.xz` → `9p`.
fn module_name(path: &str) -> Option<&str> {
    let file = path.rsplit('/').next()?;
    Some(&file[..file.find(".ko")?])
}

/// A kernel's `modules.dep`.
struct Modules {
    dir: PathBuf,
    /// (module path, the paths it depends on).
    deps: Vec<(String, Vec<String>)>,
}

impl Modules {
    fn read(dir: &Path) -> Result<Self> {
        let text = fs::read_to_string(dir.join("modules.dep"))
            .with_context(|| format!("reading {}/modules.dep", dir.display()))?;
        let deps = text
            .lines()
            .filter_map(|l| l.split_once(':'))
            .map(|(module, deps)| {
                (
                    module.to_owned(),
                    deps.split_whitespace().map(str::to_owned).collect(),
                )
            })
            .collect();
        Ok(Self {
            dir: dir.to_owned(),
            deps,
        })
    }

    /// The path of module `name`, if it is not built in.
    fn path(&self, name: &str) -> Option<String> {
        self.deps
            .iter()
            .find(|(p, _)| module_name(p) == Some(name))
            .map(|(p, _)| p.clone())
    }

    /// The module paths to insert, dependencies first, for `names`; names
    /// without a module are built in.
    fn load_order(&self, names: &[&str]) -> Vec<String> {
        let mut order = Vec::new();
        for path in names.iter().filter_map(|name| self.path(name)) {
            self.visit(&path, &mut order);
        }
        order
    }

    fn visit(&self, path: &str, order: &mut Vec<String>) {
        if order.iter().any(|p| p == path) {
            return;
        }
        // modules.dep lists every dependency, transitive ones too, but not
        // in an order to load them in.
        if let Some((_, deps)) = self.deps.iter().find(|(p, _)| p == path) {
            for dep in deps {
                self.visit(dep, order);
            }
        }
        order.push(path.to_owned());
    }

    /// Writes the module at `path` uncompressed to `to`: busybox insmod
    /// takes plain `.ko` files.
    fn unpack(&self, path: &str, to: &Path) -> Result<()> {
        let from = self.dir.join(path);
        let decompressor = match from.extension().and_then(|e| e.to_str()) {
            Some("xz") => "xz",
            Some("zst") => "zstd",
            _ => {
                fs::copy(&from, to)?;
                return Ok(());
            }
        };
        let status = Command::new(decompressor)
            .arg("-dc")
            .arg(&from)
            .stdout(fs::File::create(to)?)
            .status()
            .with_context(|| format!("starting {decompressor}"))?;
        if !status.success() {
            bail!("{decompressor} -dc {} failed ({status})", from.display());
        }
        Ok(())
    }
}
