//! `--cgroup PATH`: a cgroup v2 directory, as the kernel side recognizes it.
use std::{fs, os::unix::fs::MetadataExt as _, path::Path};

use nix::sys::statfs::{CGROUP2_SUPER_MAGIC, statfs};

/// A cgroup by its id (the directory's inode) and its depth in the hierarchy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cgroup {
    pub id: u64,
    /// 0 for the hierarchy's root.
    pub level: u32,
}

/// Resolves a cgroup v2 directory such as `/sys/fs/cgroup/system.slice/nginx.service`.
pub fn parse(path: &str) -> Result<Cgroup, String> {
    let dir = Path::new(path);
    let meta = fs::metadata(dir).map_err(|e| format!("{path}: {e}"))?;
    if !meta.is_dir() || !on_cgroup2(dir) {
        return Err(format!(
            "{path} is not a cgroup v2 directory (see `grep cgroup2 /proc/self/mounts`)"
        ));
    }
    let dir = dir.canonicalize().map_err(|e| format!("{path}: {e}"))?;
    // Its level: how many of its ancestors are on the same cgroup2 mount.
    let level = dir
        .ancestors()
        .skip(1)
        .take_while(|p| on_cgroup2(p))
        .count();
    Ok(Cgroup {
        id: meta.ino(),
        level: u32::try_from(level).map_err(|_| format!("{path}: too deep"))?,
    })
}

pub fn on_cgroup2(path: &Path) -> bool {
    statfs(path).is_ok_and(|fs| fs.filesystem_type() == CGROUP2_SUPER_MAGIC)
}

#[cfg(test)]
mod tests {
    use super::parse;

    #[test]
    fn directories_outside_cgroup2_are_refused() {
        let err = parse("/tmp").unwrap_err();
        assert!(err.contains("is not a cgroup v2 directory"), "{err}");
        let err = parse("/no/such/cgroup").unwrap_err();
        assert!(err.starts_with("/no/such/cgroup: "), "{err}");
    }
}
