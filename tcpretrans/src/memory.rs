//! Whether the kernel side's maps fit in this process's memory cgroup,
//! asked before the kernel is.
//!
//! The kernel charges a map's memory to the memory cgroup of the process
//! that creates it. When a map does not fit, its allocation first fills the
//! cgroup to its limit and only then fails; any other allocation in the
//! cgroup meanwhile (another thread of this tool reading a file or touching
//! a new page) meets the cgroup's OOM killer, which kills the tool before it
//! can say why. Comparing what the maps will take with the room the cgroup
//! has left turns that into a refusal.
use std::{
    fs,
    path::{Path, PathBuf},
};

use tcpretrans_common::{
    ListenerKey, NamespaceLimits, Owner, PendingConnect, RECORD_LEN, SockInfo, hooks::maps,
    lost_slot, namespace_limits, state_nesting, transition_counts,
};
use thiserror::Error;

use crate::loader::Bytes;

/// What start-up takes after the check besides the maps: the programs
/// (verifier state, JIT images), the BTF programs' attach target, the event
/// loop. At most 7.4 MiB here (with `--state`: the most programs); the rest
/// is for other kernels' verifiers and BTF.
const START_UP: u64 = 12 << 20;

/// `sizeof(struct htab_elem)`: a hash map element's header (64-bit kernels).
const HTAB_ELEM: u64 = 48;
/// `sizeof(struct bucket)`: a hash map bucket (64-bit kernels).
const HTAB_BUCKET: u64 = 16;
/// Pages of a ring buffer before its data: its header, the consumer and
/// producer positions (`RINGBUF_PGOFF + RINGBUF_POS_PAGES`).
const RINGBUF_META_PAGES: u64 = 3;

/// The memory cgroup cannot hold the maps.
#[derive(Debug, Error)]
#[error(
    "the kernel side's maps need {maps} of memory, {culprit}, and start-up {start_up} more, but \
     memory cgroup {cgroup} has {free} left of its {limit} limit: try a smaller {option}, or \
     raise that limit",
    maps = Size(self.need.maps),
    culprit = self.need.culprit,
    start_up = Size(START_UP),
    cgroup = self.room.cgroup.display(),
    free = Size(self.room.free),
    limit = Size(self.room.limit),
    option = self.need.culprit.option(),
)]
pub struct NoRoom {
    need: Need,
    room: Room,
}

/// Refuses the map sizes asked for when the memory cgroup (this process's,
/// or the tightest of its ancestors') has too little room left for them.
/// Where the cgroup cannot be read, nothing is refused: the kernel decides.
pub fn check(ring_bytes: u32, max_sockets: u32) -> Result<(), NoRoom> {
    let page = nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
        .ok()
        .flatten()
        .map_or(4096, |p| p as u64);
    // Per-CPU maps take a copy for each possible CPU.
    let cpus = aya::util::nr_cpus().map_or(1, |n| n as u64);
    let need = Need::new(ring_bytes, max_sockets, page, cpus);
    match room() {
        Some(room) if room.free < need.maps + START_UP => Err(NoRoom { need, room }),
        _ => Ok(()),
    }
}

/// A map of the object, as far as the memory the kernel charges for it goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Map {
    RingBuf {
        bytes: u32,
    },
    /// Preallocated: every entry exists from the start.
    LruHash {
        key: u32,
        value: u32,
        entries: u32,
    },
    PerCpuArray {
        value: u32,
        entries: u32,
    },
}

impl Map {
    /// Bytes charged to the memory cgroup, to the page for the large parts.
    fn charge(self, page: u64, cpus: u64) -> u64 {
        let round8 = |n: u32| u64::from(n).next_multiple_of(8);
        match self {
            Self::RingBuf { bytes } => {
                // Data pages are mapped twice, allocated once; the array of
                // page pointers lists them twice.
                let data = u64::from(bytes) / page;
                let pages = (RINGBUF_META_PAGES + data) * page;
                let pointers = ((RINGBUF_META_PAGES + 2 * data) * 8).next_multiple_of(page);
                pages + pointers
            }
            Self::LruHash {
                key,
                value,
                entries,
            } => {
                let elements = u64::from(entries) * (HTAB_ELEM + round8(key) + round8(value));
                let buckets = u64::from(entries).next_power_of_two() * HTAB_BUCKET;
                elements.next_multiple_of(page) + buckets.next_multiple_of(page)
            }
            Self::PerCpuArray { value, entries } => u64::from(entries) * round8(value) * cpus,
        }
    }
}

/// The object's maps (tcpretrans-ebpf/src/maps.rs), the two the options
/// size first; a test holds this to the object.
fn maps(ring_bytes: u32, max_sockets: u32) -> [(&'static str, Map); 11] {
    // Sizes of small structs.
    let size = |n: usize| n as u32;
    [
        (maps::EVENTS, Map::RingBuf { bytes: ring_bytes }),
        (
            maps::SOCKETS,
            Map::LruHash {
                key: 8,
                value: size(size_of::<SockInfo>()),
                entries: max_sockets,
            },
        ),
        (
            maps::LISTENERS,
            Map::LruHash {
                key: size(size_of::<ListenerKey>()),
                value: size(size_of::<Owner>()),
                entries: 4096,
            },
        ),
        (
            maps::NAMESPACE_LIMITS,
            Map::LruHash {
                key: 4,
                value: size(size_of::<NamespaceLimits>()),
                entries: namespace_limits::ENTRIES,
            },
        ),
        (
            maps::CONNECTS,
            Map::LruHash {
                key: 4,
                value: size(size_of::<PendingConnect>()),
                entries: 4096,
            },
        ),
        (
            maps::LOST,
            Map::PerCpuArray {
                value: 8,
                entries: lost_slot::COUNT,
            },
        ),
        (
            maps::FAILED_READS,
            Map::PerCpuArray {
                value: 8,
                entries: 1,
            },
        ),
        (
            maps::TRANSITIONS,
            Map::PerCpuArray {
                value: size(size_of::<transition_counts::Counts>()),
                entries: 1,
            },
        ),
        (
            maps::STATE_NESTING,
            Map::PerCpuArray {
                value: 8,
                entries: state_nesting::COUNT,
            },
        ),
        (
            maps::STATE_TAKEN,
            Map::PerCpuArray {
                value: 16,
                entries: state_nesting::LEVELS,
            },
        ),
        (
            maps::RECORDS,
            Map::PerCpuArray {
                value: size(RECORD_LEN + 16),
                entries: 1,
            },
        ),
    ]
}

/// What the maps will take, and which of the two the user sizes takes more.
#[derive(Debug, Clone, Copy)]
struct Need {
    maps: u64,
    culprit: Culprit,
}

impl Need {
    fn new(ring_bytes: u32, max_sockets: u32, page: u64, cpus: u64) -> Self {
        let charges = maps(ring_bytes, max_sockets).map(|(_, map)| map.charge(page, cpus));
        let [ring, sockets, ..] = charges;
        let culprit = if ring >= sockets {
            Culprit::Ring { bytes: ring_bytes }
        } else {
            Culprit::Sockets {
                entries: max_sockets,
                bytes: sockets,
            }
        };
        Self {
            maps: charges.iter().sum(),
            culprit,
        }
    }
}

/// The map that takes the most of the two the options size.
#[derive(Debug, Clone, Copy)]
enum Culprit {
    Ring { bytes: u32 },
    Sockets { entries: u32, bytes: u64 },
}

impl Culprit {
    fn option(self) -> &'static str {
        match self {
            Self::Ring { .. } => "--ring-size",
            Self::Sockets { .. } => "--max-sockets",
        }
    }
}

impl std::fmt::Display for Culprit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match *self {
            Self::Ring { bytes } => write!(f, "{} of it for the ring buffer", Bytes(bytes)),
            Self::Sockets { entries, bytes } => write!(
                f,
                "{} of it for the socket map's {entries} entries",
                Size(bytes)
            ),
        }
    }
}

/// A size, as people read it: `64 MiB`, `58.2 MiB`, `1.6 GiB`.
struct Size(u64);

impl std::fmt::Display for Size {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (unit, name) = match self.0 {
            n if n >= 1 << 30 => (1u64 << 30, "GiB"),
            n if n >= 1 << 20 => (1 << 20, "MiB"),
            n if n >= 1 << 10 => (1 << 10, "KiB"),
            n => return write!(f, "{n} bytes"),
        };
        if self.0.is_multiple_of(unit) {
            write!(f, "{} {name}", self.0 / unit)
        } else {
            write!(f, "{:.1} {name}", self.0 as f64 / unit as f64)
        }
    }
}

/// The room a memory cgroup has left.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Room {
    cgroup: PathBuf,
    limit: u64,
    /// What the limit leaves of the memory in use, page cache the kernel
    /// can reclaim not counted as in use.
    free: u64,
}

/// The room of this process's memory cgroup: the least along its path to
/// the root, in whichever hierarchy holds the memory controller (v2, or v1
/// on a hybrid layout). None when no limit can be read.
fn room() -> Option<Room> {
    let read = |path: &Path| fs::read_to_string(path).ok();
    let cgroups = read(Path::new("/proc/self/cgroup"))?;
    let mountinfo = read(Path::new("/proc/self/mountinfo"))?;
    [Version::V2, Version::V1]
        .into_iter()
        .filter_map(|version| version.room(&cgroups, &mountinfo, &read))
        .min_by_key(|room| room.free)
}

#[derive(Debug, Clone, Copy)]
enum Version {
    V2,
    V1,
}

impl Version {
    /// The least room along the path from this process's cgroup up to the
    /// hierarchy's root (the ancestors' usage includes their other children).
    fn room(
        self,
        cgroups: &str,
        mountinfo: &str,
        read: &impl Fn(&Path) -> Option<String>,
    ) -> Option<Room> {
        let path = Path::new(self.own_cgroup(cgroups)?);
        // Where the hierarchy is mounted, the mount's root (not the
        // hierarchy's in a container) is the top we can see.
        let (root, point) = self
            .mounts(mountinfo)
            .find(|(root, _)| path.starts_with(root))?;
        let mut dir = PathBuf::from(point);
        // Components, not `join`: the mount point itself without a final `/`.
        dir.extend(path.strip_prefix(root).ok()?);
        dir.ancestors()
            .take_while(|d| d.starts_with(point))
            .filter_map(|d| self.room_in(d, read))
            .min_by_key(|room| room.free)
    }

    /// The cgroup path in `/proc/self/cgroup` (`0::/a/b` for v2,
    /// `4:memory:/a/b` for v1's memory controller).
    fn own_cgroup(self, cgroups: &str) -> Option<&str> {
        cgroups.lines().find_map(|line| {
            let mut fields = line.splitn(3, ':');
            let (id, controllers, path) = (fields.next()?, fields.next()?, fields.next()?);
            let ours = match self {
                Self::V2 => id == "0" && controllers.is_empty(),
                Self::V1 => controllers.split(',').any(|c| c == "memory"),
            };
            ours.then_some(path)
        })
    }

    /// The hierarchy's mounts in `/proc/self/mountinfo`: the cgroup each
    /// shows at its mount point, and the mount point.
    fn mounts(self, mountinfo: &str) -> impl Iterator<Item = (&str, &str)> {
        mountinfo.lines().filter_map(move |line| {
            let (mount, filesystem) = line.split_once(" - ")?;
            let mut filesystem = filesystem.split(' ');
            let (kind, options) = (filesystem.next()?, filesystem.nth(1)?);
            let ours = match self {
                Self::V2 => kind == "cgroup2",
                Self::V1 => kind == "cgroup" && options.split(',').any(|o| o == "memory"),
            };
            let mut mount = mount.split(' ').skip(3);
            ours.then_some((mount.next()?, mount.next()?))
        })
    }

    /// The room of the cgroup in `dir`: None when it has no limit ("max")
    /// or its files cannot be read.
    fn room_in(self, dir: &Path, read: &impl Fn(&Path) -> Option<String>) -> Option<Room> {
        let (limit, usage, inactive_file) = match self {
            Self::V2 => ("memory.max", "memory.current", "inactive_file"),
            Self::V1 => (
                "memory.limit_in_bytes",
                "memory.usage_in_bytes",
                "total_inactive_file",
            ),
        };
        let number = |file: &str| read(&dir.join(file))?.trim().parse::<u64>().ok();
        let limit = number(limit)?;
        let usage = number(usage)?;
        // Allocations reclaim the page cache nobody is using rather than
        // fail (the working set Kubernetes measures is the same).
        let reclaimable = read(&dir.join("memory.stat"))
            .and_then(|stat| {
                stat.lines().find_map(|l| {
                    let (key, value) = l.split_once(' ')?;
                    (key == inactive_file).then(|| value.parse().ok())?
                })
            })
            .unwrap_or(0);
        Some(Room {
            cgroup: dir.to_owned(),
            limit,
            free: limit.saturating_sub(usage.saturating_sub(reclaimable)),
        })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    const MIB: u64 = 1 << 20;

    /// Files, by path, for `Version::room`.
    fn files<'a>(files: &'a [(&str, &str)]) -> impl Fn(&Path) -> Option<String> + 'a {
        let files: HashMap<&Path, &str> = files.iter().map(|&(p, t)| (Path::new(p), t)).collect();
        move |path| files.get(path).map(|t| (*t).to_owned())
    }

    // This project's machine: v1 memory controller, v2 without it.
    const HYBRID_CGROUP: &str = "9:name=systemd:/\n4:memory:/pods/pod1\n1:cpu:/\n0::/\n";
    const HYBRID_MOUNTINFO: &str = "\
24 19 0:22 / /sys/fs/cgroup ro,nosuid - tmpfs tmpfs ro,mode=755
25 24 0:23 / /sys/fs/cgroup/unified rw,nosuid shared:4 - cgroup2 cgroup2 rw
30 24 0:28 / /sys/fs/cgroup/memory rw,nosuid shared:12 - cgroup cgroup rw,memory
31 24 0:29 / /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct
";

    #[test]
    fn v1_takes_the_tightest_of_the_cgroup_and_its_ancestors() {
        let read = files(&[
            // The root: unlimited (PAGE_COUNTER_MAX pages).
            (
                "/sys/fs/cgroup/memory/memory.limit_in_bytes",
                "9223372036854771712\n",
            ),
            (
                "/sys/fs/cgroup/memory/memory.usage_in_bytes",
                "3925540864\n",
            ),
            // The pod: 100 MiB, 90 used, 10 of them reclaimable cache.
            (
                "/sys/fs/cgroup/memory/pods/memory.limit_in_bytes",
                "104857600\n",
            ),
            (
                "/sys/fs/cgroup/memory/pods/memory.usage_in_bytes",
                "94371840\n",
            ),
            (
                "/sys/fs/cgroup/memory/pods/memory.stat",
                "cache 0\ninactive_file 0\ntotal_inactive_file 10485760\n",
            ),
            // The container: 64 MiB, 10 used.
            (
                "/sys/fs/cgroup/memory/pods/pod1/memory.limit_in_bytes",
                "67108864\n",
            ),
            (
                "/sys/fs/cgroup/memory/pods/pod1/memory.usage_in_bytes",
                "10485760\n",
            ),
        ]);
        let room = Version::V1.room(HYBRID_CGROUP, HYBRID_MOUNTINFO, &read);
        assert_eq!(
            room,
            Some(Room {
                cgroup: "/sys/fs/cgroup/memory/pods".into(),
                limit: 100 * MIB,
                free: 20 * MIB,
            })
        );
        // v2 has no memory files here: no limit known.
        assert_eq!(
            Version::V2.room(HYBRID_CGROUP, HYBRID_MOUNTINFO, &read),
            None
        );
    }

    #[test]
    fn v2_max_is_no_limit_and_an_ancestor_can_bind() {
        let cgroup = "0::/kubepods.slice/pod.slice/cri.scope\n";
        let mountinfo =
            "35 24 0:30 / /sys/fs/cgroup rw,nosuid shared:9 - cgroup2 cgroup2 rw,nsdelegate\n";
        let read = files(&[
            ("/sys/fs/cgroup/kubepods.slice/memory.max", "max\n"),
            (
                "/sys/fs/cgroup/kubepods.slice/memory.current",
                "5000000000\n",
            ),
            (
                "/sys/fs/cgroup/kubepods.slice/pod.slice/memory.max",
                "268435456\n",
            ),
            (
                "/sys/fs/cgroup/kubepods.slice/pod.slice/memory.current",
                "234881024\n",
            ),
            (
                "/sys/fs/cgroup/kubepods.slice/pod.slice/memory.stat",
                "anon 200000000\nfile 34881024\ninactive_file 0\n",
            ),
            (
                "/sys/fs/cgroup/kubepods.slice/pod.slice/cri.scope/memory.max",
                "max\n",
            ),
            (
                "/sys/fs/cgroup/kubepods.slice/pod.slice/cri.scope/memory.current",
                "4096\n",
            ),
        ]);
        assert_eq!(
            Version::V2.room(cgroup, mountinfo, &read),
            Some(Room {
                cgroup: "/sys/fs/cgroup/kubepods.slice/pod.slice".into(),
                limit: 256 * MIB,
                free: 32 * MIB,
            })
        );
        // Only "max" all the way: nothing to refuse on.
        let unlimited = files(&[
            ("/sys/fs/cgroup/kubepods.slice/memory.max", "max\n"),
            (
                "/sys/fs/cgroup/kubepods.slice/memory.current",
                "5000000000\n",
            ),
        ]);
        assert_eq!(Version::V2.room(cgroup, mountinfo, &unlimited), None);
    }

    #[test]
    fn a_container_sees_its_cgroup_at_the_mount_root() {
        // A cgroup namespace shows the container's cgroup as `/`; without
        // one, the mount's root is the container's cgroup in the hierarchy.
        let read = files(&[
            ("/sys/fs/cgroup/memory.max", "134217728\n"),
            ("/sys/fs/cgroup/memory.current", "33554432\n"),
        ]);
        let expected = Some(Room {
            cgroup: "/sys/fs/cgroup".into(),
            limit: 128 * MIB,
            free: 96 * MIB,
        });
        let namespaced = "1 0 0:30 / /sys/fs/cgroup ro - cgroup2 cgroup2 rw\n";
        let room = Version::V2.room("0::/\n", namespaced, &read);
        assert_eq!(room, expected);
        // Named as it is written, without a final `/`.
        let named = room.map(|r| r.cgroup.display().to_string());
        assert_eq!(named.as_deref(), Some("/sys/fs/cgroup"));
        let bound = "1 0 0:30 /docker/abc /sys/fs/cgroup ro - cgroup2 cgroup2 rw\n";
        assert_eq!(Version::V2.room("0::/docker/abc\n", bound, &read), expected);
        // A cgroup outside what the mount shows: cannot tell.
        assert_eq!(Version::V2.room("0::/other\n", bound, &read), None);
    }

    #[test]
    fn unreadable_or_malformed_files_refuse_nothing() {
        let mountinfo = "35 24 0:30 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n";
        let cgroup = "0::/a\n";
        assert_eq!(Version::V2.room(cgroup, mountinfo, &files(&[])), None);
        let garbage = files(&[
            ("/sys/fs/cgroup/a/memory.max", "lots\n"),
            ("/sys/fs/cgroup/a/memory.current", "1\n"),
        ]);
        assert_eq!(Version::V2.room(cgroup, mountinfo, &garbage), None);
        let no_usage = files(&[("/sys/fs/cgroup/a/memory.max", "1048576\n")]);
        assert_eq!(Version::V2.room(cgroup, mountinfo, &no_usage), None);
        assert_eq!(Version::V2.room("", mountinfo, &no_usage), None);
        assert_eq!(Version::V2.room(cgroup, "", &no_usage), None);
    }

    #[test]
    fn usage_over_the_limit_leaves_no_room() {
        let read = files(&[
            ("/sys/fs/cgroup/memory/memory.limit_in_bytes", "1048576\n"),
            ("/sys/fs/cgroup/memory/memory.usage_in_bytes", "2097152\n"),
        ]);
        let room = Version::V1.room("4:memory:/\n", HYBRID_MOUNTINFO, &read);
        assert_eq!(room.map(|r| r.free), Some(0));
    }

    #[test]
    fn charges_follow_the_kernels_allocations() {
        let page = 4096;
        // 1 GiB of data pages and 3 more, and 2 x 262,144 page pointers.
        assert_eq!(
            Map::RingBuf { bytes: 1 << 30 }.charge(page, 2),
            (1 << 30) + 3 * page + 4 * MIB + page
        );
        // 96-byte elements (48 + 8 + 40) and a bucket for each.
        let lru = Map::LruHash {
            key: 8,
            value: 40,
            entries: 65_536,
        };
        assert_eq!(lru.charge(page, 2), 65_536 * 96 + 65_536 * 16);
        // Keys and values are 8-aligned (80,000 bytes of elements: 20
        // pages); buckets come in powers of two (1,024: 4 pages).
        let odd = Map::LruHash {
            key: 4,
            value: 20,
            entries: 1000,
        };
        assert_eq!(odd.charge(page, 2), 24 * page);
        let per_cpu = Map::PerCpuArray {
            value: 12,
            entries: 7,
        };
        assert_eq!(per_cpu.charge(page, 64), 7 * 16 * 64);
    }

    #[test]
    fn the_larger_map_names_the_option() {
        let ring = Need::new(1 << 30, 65_536, 4096, 2);
        assert!(ring.maps > 1 << 30, "{ring:?}");
        assert_eq!(ring.culprit.option(), "--ring-size");
        assert_eq!(ring.culprit.to_string(), "1 GiB of it for the ring buffer");
        let sockets = Need::new(4 << 20, 1 << 24, 4096, 2);
        assert_eq!(sockets.culprit.option(), "--max-sockets");
        assert!(
            sockets
                .culprit
                .to_string()
                .ends_with(" of it for the socket map's 16777216 entries"),
            "{}",
            sockets.culprit
        );
    }

    #[test]
    fn the_refusal_is_one_sentence_with_the_numbers() {
        let refusal = NoRoom {
            need: Need {
                maps: (1 << 30) + 11 * MIB,
                culprit: Culprit::Ring { bytes: 1 << 30 },
            },
            room: Room {
                cgroup: "/sys/fs/cgroup/pod".into(),
                limit: 64 * MIB,
                free: 58 * MIB + 200 * 1024,
            },
        };
        assert_eq!(
            refusal.to_string(),
            "the kernel side's maps need 1.0 GiB of memory, 1 GiB of it for the ring buffer, and \
             start-up 12 MiB more, but memory cgroup /sys/fs/cgroup/pod has 58.2 MiB left of its \
             64 MiB limit: try a smaller --ring-size, or raise that limit"
        );
    }

    #[test]
    fn sizes_read_as_people_write_them() {
        assert_eq!(Size(64 * MIB).to_string(), "64 MiB");
        assert_eq!(Size(1_700_000_000).to_string(), "1.6 GiB");
        assert_eq!(Size(1536).to_string(), "1.5 KiB");
        assert_eq!(Size(100).to_string(), "100 bytes");
    }

    /// The table above is the object's maps, at their compiled-in sizes.
    #[test]
    fn the_maps_are_the_objects() {
        use aya_obj::generated::bpf_map_type::{
            BPF_MAP_TYPE_LRU_HASH, BPF_MAP_TYPE_PERCPU_ARRAY, BPF_MAP_TYPE_RINGBUF,
        };
        let object = crate::loader::OBJECT;
        if object.is_empty() {
            // Built with AYA_BUILD_SKIP: no object to compare with.
            return;
        }
        let object = aya_obj::Object::parse(object).expect("the eBPF object");
        let mut found: Vec<(String, Map)> = object
            .maps
            .iter()
            // Global data (.rodata, .bss): a few bytes, in START_UP.
            .filter(|(name, _)| !name.starts_with('.'))
            .map(|(name, map)| {
                let kind = match map.map_type() {
                    t if t == BPF_MAP_TYPE_RINGBUF as u32 => Map::RingBuf {
                        bytes: map.max_entries(),
                    },
                    t if t == BPF_MAP_TYPE_LRU_HASH as u32 => Map::LruHash {
                        key: map.key_size(),
                        value: map.value_size(),
                        entries: map.max_entries(),
                    },
                    t if t == BPF_MAP_TYPE_PERCPU_ARRAY as u32 => Map::PerCpuArray {
                        value: map.value_size(),
                        entries: map.max_entries(),
                    },
                    other => panic!("{name}: map type {other} is not costed here"),
                };
                (name.clone(), kind)
            })
            .collect();
        found.sort_by(|a, b| a.0.cmp(&b.0));
        let mut expected: Vec<(String, Map)> = maps(1 << 22, 65_536)
            .into_iter()
            .map(|(name, map)| (name.to_owned(), map))
            .collect();
        expected.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(found, expected);
    }
}
