//! The static tracer for each guest's architecture. For a foreign one,
//! Rust's musl target links with rust-lld and its own self-contained C
//! runtime, and the allocator's C code is compiled by clang against that
//! architecture's musl headers: Debian's `musl-dev` of the architecture,
//! unpacked into the cache, never installed.
use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::Result;

use super::kernel::{Arch, CACHE, PrivateApt};
use crate::setup::run_checked;

/// The C compiler and archiver for foreign targets: LLVM 22, as bpf-linker's.
const CLANG: &str = "clang-22";
const LLVM_AR: &str = "/usr/lib/llvm-22/bin/llvm-ar";

/// Builds the static tracer for `arch`, taking a foreign architecture's
/// headers from Debian `codename`; its path.
pub fn static_tracer(root: &Path, arch: Arch, codename: &str) -> Result<PathBuf> {
    let target = arch.rust_target();
    if arch == Arch::Amd64 {
        return crate::dist::static_binary(root, target, &[]);
    }
    let sysroot = musl_headers(arch, codename)?;
    // `aarch64-unknown-linux-musl` → Debian's `aarch64-linux-musl`.
    let triple = target.replace("-unknown", "");
    let suffix = target.replace('-', "_");
    let env = [
        (
            format!("CARGO_TARGET_{}_LINKER", suffix.to_uppercase()),
            "rust-lld".to_owned(),
        ),
        (format!("CC_{suffix}"), CLANG.to_owned()),
        (format!("AR_{suffix}"), LLVM_AR.to_owned()),
        (
            format!("CFLAGS_{suffix}"),
            format!(
                "--target={triple} --sysroot={root} -isystem {root}/usr/include/{triple}",
                root = sysroot.display()
            ),
        ),
    ];
    crate::dist::static_binary(root, target, &env)
}

/// `musl-dev` of `arch`, unpacked once into the cache.
fn musl_headers(arch: Arch, codename: &str) -> Result<PathBuf> {
    let sysroot = Path::new(CACHE).join("sysroots").join(arch.debian());
    if sysroot.join("usr/include").exists() {
        return Ok(sysroot);
    }
    let apt = PrivateApt::new(Path::new(CACHE), codename, arch)?;
    apt.update()?;
    let deb = apt.download("musl-dev")?;
    std::fs::create_dir_all(&sysroot)?;
    run_checked(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&sysroot))?;
    std::fs::remove_file(&deb)?;
    Ok(sysroot)
}
