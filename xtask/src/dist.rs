//! `cargo xtask dist`: the release binary with its man page and shell
//! completions, generated from the clap definition by the binary itself.
use std::{fs, path::Path, process::Command};

use anyhow::{Context as _, Result, bail};

/// `--generate` kind, and where it goes under the dist directory.
const GENERATED: [(&str, &str); 4] = [
    ("man", "man/tcpretrans.8"),
    ("complete-bash", "completions/tcpretrans.bash"),
    ("complete-zsh", "completions/_tcpretrans"),
    ("complete-fish", "completions/tcpretrans.fish"),
];

pub fn run(root: &Path) -> Result<()> {
    let binary = crate::release_binary(root)?;
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
