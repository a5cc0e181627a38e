//! `cargo xtask dist`: the release binary, statically linked against musl,
//! with its man page and shell completions, generated from the clap
//! definition by the binary itself.
use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};

use crate::setup::STATIC_TARGET;

/// `--generate` kind, and where it goes under the dist directory.
const GENERATED: [(&str, &str); 4] = [
    ("man", "man/tcpretrans.8"),
    ("complete-bash", "completions/tcpretrans.bash"),
    ("complete-zsh", "completions/_tcpretrans"),
    ("complete-fish", "completions/tcpretrans.fish"),
];

pub fn run(root: &Path) -> Result<()> {
    let binary = static_binary(root, STATIC_TARGET, &[])?;
    let dist = root.join("target/dist");
    // Nothing left over from an earlier layout.
    if dist.exists() {
        fs::remove_dir_all(&dist).with_context(|| format!("removing {}", dist.display()))?;
    }
    fs::create_dir_all(&dist).with_context(|| format!("creating {}", dist.display()))?;
    fs::copy(&binary, dist.join("tcpretrans")).context("copying the binary")?;
    for (kind, file) in GENERATED {
        let output = Command::new(&binary)
            .args(["--generate", kind])
            .output()
            .context("running tcpretrans --generate")?;
        if !output.status.success() {
            bail!(
                "tcpretrans --generate {kind} failed: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        let path = dist.join(file);
        fs::create_dir_all(path.parent().expect("has a directory"))?;
        fs::write(&path, output.stdout).with_context(|| format!("writing {}", path.display()))?;
    }
    println!("{}", dist.display());
    Ok(())
}

/// Builds the statically linked release binary for `target`, with `env`
/// for cargo (a cross build's linker and C compiler); its path.
pub fn static_binary(root: &Path, target: &str, env: &[(String, String)]) -> Result<PathBuf> {
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    crate::cargo_with(
        root,
        &[
            "build",
            "--release",
            "--package",
            "tcpretrans",
            "--target",
            target,
        ],
        &env,
    )?;
    let binary = root.join("target").join(target).join("release/tcpretrans");
    // What makes it start on any distribution, whatever its libc.
    if has_interpreter(&binary)? {
        bail!("{} is dynamically linked", binary.display());
    }
    Ok(binary)
}

/// Whether an ELF64 little-endian executable names a program interpreter
/// (`PT_INTERP`: the dynamic loader of some libc).
fn has_interpreter(binary: &Path) -> Result<bool> {
    const PT_INTERP: usize = 3;
    let elf = fs::read(binary).with_context(|| format!("reading {}", binary.display()))?;
    let not_elf = || anyhow::anyhow!("{} is not an ELF64 file", binary.display());
    if !elf.starts_with(b"\x7fELF\x02") {
        return Err(not_elf());
    }
    let uint = |at: usize, len: usize| -> Result<usize> {
        let mut le = [0; 8];
        le[..len].copy_from_slice(elf.get(at..at + len).ok_or_else(not_elf)?);
        Ok(u64::from_le_bytes(le) as usize)
    };
    // e_phoff, e_phentsize, e_phnum; each header begins with its p_type.
    let (offset, size, count) = (uint(0x20, 8)?, uint(0x36, 2)?, uint(0x38, 2)?);
    for header in 0..count {
        if uint(offset + header * size, 4)? == PT_INTERP {
            return Ok(true);
        }
    }
    Ok(false)
}
