//! Builds the kernel programs (tcpretrans-ebpf) for the BPF target and embeds
//! them. With `AYA_BUILD_SKIP=1` (for clippy and unit tests on machines
//! without bpf-linker) an empty object is embedded instead; such a binary
//! refuses to trace and says why.
use std::{env, fs, path::PathBuf};

use anyhow::{Context as _, anyhow};
use aya_build::{Package, Toolchain};

const SKIP: &str = "AYA_BUILD_SKIP";
const EBPF_PACKAGE: &str = "tcpretrans-ebpf";
/// The file aya-build writes: the eBPF crate's binary name.
const OBJECT: &str = "tcpretrans";

fn main() -> anyhow::Result<()> {
    println!("cargo:rerun-if-env-changed={SKIP}");
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").ok_or_else(|| anyhow!("OUT_DIR not set"))?);
    let skip = env::var(SKIP).is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true"));
    if skip {
        return fs::write(out_dir.join(OBJECT), b"").context("writing the empty eBPF object");
    }
    let root = PathBuf::from(
        env::var_os("CARGO_MANIFEST_DIR").ok_or_else(|| anyhow!("CARGO_MANIFEST_DIR not set"))?,
    );
    let ebpf_dir = root
        .parent()
        .ok_or_else(|| anyhow!("tcpretrans has no parent directory"))?
        .join(EBPF_PACKAGE);
    let ebpf_dir = ebpf_dir
        .to_str()
        .ok_or_else(|| anyhow!("non-UTF-8 path {}", ebpf_dir.display()))?;
    aya_build::build_ebpf(
        [Package {
            name: EBPF_PACKAGE,
            root_dir: ebpf_dir,
            ..Default::default()
        }],
        Toolchain::default(),
    )
    .context("building the eBPF programs (is bpf-linker installed? run `cargo xtask setup`)")
}
