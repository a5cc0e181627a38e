//! Container and Kubernetes pod identity of a socket, from its cgroup v2 id.
//!
//! The kernel side knows a socket's cgroup only by id: the kernfs node id,
//! which is also the inode number of the cgroup's directory under the
//! cgroup2 mount. Container runtimes and the kubelet name those directories
//! after the container and the pod, so the directory's path says who owns
//! the socket, and the kubelet's pod log directories (`/var/log/pods/
//! <namespace>_<name>_<uid>`) turn a pod UID into its namespace and name. All
//! of it is read from the node's own files: no API server, no runtime socket.
//!
//! On a 64-bit kernel a cgroup id is never reused (kernfs ids carry a
//! generation), so what an id resolved to stays true and is cached.
use std::{
    fs,
    os::unix::fs::MetadataExt as _,
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant},
};

use foldhash::HashMap;

/// Where the kubelet keeps a directory per pod, named after it.
pub const PODS: &str = "/var/log/pods";

/// Where the cgroup2 hierarchy is mounted: `/sys/fs/cgroup` on a unified
/// host, `/sys/fs/cgroup/unified` on a hybrid one; `None` without one.
pub fn cgroup2_mount() -> Option<PathBuf> {
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").ok()?;
    mountinfo.lines().find_map(|line| {
        // `36 25 0:30 / /sys/fs/cgroup rw,nosuid shared:9 - cgroup2 cgroup2 rw`
        let (mount, source) = line.split_once(" - ")?;
        (source.split_whitespace().next()? == "cgroup2")
            .then(|| mount.split_whitespace().nth(4).map(PathBuf::from))
            .flatten()
    })
}

/// The cgroup2 hierarchy at or just below `dir`: a hybrid host (cgroup v1
/// controllers) mounts it at `unified` inside its `/sys/fs/cgroup`, and a
/// container given that tree sees the same. `dir` itself when neither is.
pub fn cgroup2_at(dir: PathBuf) -> PathBuf {
    let unified = dir.join("unified");
    if !crate::cgroup::on_cgroup2(&dir) && crate::cgroup::on_cgroup2(&unified) {
        unified
    } else {
        dir
    }
}

/// Fills in the identity of an event's socket from its cgroup id.
pub fn identify(resolver: &mut Resolver, event: &mut crate::events::Event) {
    if let Some(socket) = event.kernel_socket_mut()
        && let Some(cgroup) = socket.cgroup
    {
        socket.identity = resolver.resolve(cgroup);
    }
}

/// What a socket's cgroup tells about who owns it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Identity {
    /// The cgroup's path below the cgroup2 mount, e.g. "/system.slice/docker-<id>.scope".
    /// Bytes that are not UTF-8 are replaced (U+FFFD): a name is still worth showing.
    pub cgroup: String,
    /// A container runtime's container id (64 hex digits), when the path has one.
    pub container_id: Option<String>,
    /// The Kubernetes pod UID (with dashes, as in metadata.uid), when the path has one.
    /// A static pod's is the kubelet's own: 32 hex digits, no dashes.
    pub pod_uid: Option<String>,
    /// From the node's /var/log/pods/<namespace>_<name>_<uid>/ directory.
    pub pod_namespace: Option<String>,
    /// The pod's name, from the same directory.
    pub pod: Option<String>,
}

/// A walk of the cgroup tree or a read of the pod log directory, on a miss:
/// at most this often, so a storm of events from a vanished cgroup costs
/// hash lookups, not a walk of /sys/fs/cgroup each.
const RESCAN_INTERVAL: Duration = Duration::from_secs(1);
/// Bounds each cache, so memory stays flat however many cgroups come and go.
const MAX_ENTRIES: usize = 1 << 14;
/// Directories deeper than this below the cgroup2 mount are not mapped:
/// real hierarchies are under ten deep, and the walk must end.
const MAX_DEPTH: usize = 32;

/// Unit name prefixes of container runtimes: `<prefix>-<id>.scope` (systemd
/// drivers), `<prefix>-<id>` (CRI-O's and podman's cgroupfs drivers) and
/// runc's `<slice>:<prefix>:<id>` when a cgroupfs driver takes it literally.
/// `crio-conmon-` and `libpod-conmon-` are not here: those hold the runtime's
/// monitor (conmon), not the container.
const RUNTIMES: [&str; 5] = ["docker", "cri-containerd", "crio", "libpod", "nerdctl"];

/// Cgroup id → [`Identity`], from the cgroup tree and the pod log directory.
#[derive(Debug)]
pub struct Resolver {
    cgroup_root: PathBuf,
    pods: PathBuf,
    /// [`RESCAN_INTERVAL`]; tests set it to zero or to hours.
    rescan_interval: Duration,
    /// Directory inode → path below the root, from the last walk.
    paths: HashMap<u64, String>,
    last_walk: Option<Instant>,
    identities: HashMap<u64, Arc<Identity>>,
    /// Pod UID → (namespace, name), from the last read of `pods`.
    pod_names: HashMap<String, (String, String)>,
    last_pods_read: Option<Instant>,
}

impl Resolver {
    /// `cgroup_root`: the cgroup2 mount (normally /sys/fs/cgroup); `pods`: the
    /// kubelet's pod log directory (normally /var/log/pods), which may not exist.
    pub fn new(cgroup_root: PathBuf, pods: PathBuf) -> Self {
        Self {
            cgroup_root,
            pods,
            rescan_interval: RESCAN_INTERVAL,
            paths: HashMap::default(),
            last_walk: None,
            identities: HashMap::default(),
            pod_names: HashMap::default(),
            last_pods_read: None,
        }
    }

    /// The identity of the cgroup with this id (directory inode), or None if
    /// no directory under the root has it (even after a rescan).
    pub fn resolve(&mut self, cgroup_id: u64) -> Option<Arc<Identity>> {
        let cgroup = match self.identities.get(&cgroup_id) {
            Some(known) if known.pod_uid.is_none() || known.pod.is_some() || !self.pods_due() => {
                return Some(Arc::clone(known));
            }
            // A pod's log directory may appear after its first event: its
            // name is looked for again, at the pod directory's pace, even
            // once the cgroup is gone.
            Some(known) => known.cgroup.clone(),
            None => self.path(cgroup_id)?,
        };
        let container_id = container_id(&cgroup).map(str::to_owned);
        let pod_uid = pod_uid(&cgroup);
        let (pod_namespace, pod) = match pod_uid.as_deref().and_then(|uid| self.pod_name(uid)) {
            Some((namespace, name)) => (Some(namespace.clone()), Some(name.clone())),
            None => (None, None),
        };
        let identity = Arc::new(Identity {
            cgroup,
            container_id,
            pod_uid,
            pod_namespace,
            pod,
        });
        if self.identities.len() >= MAX_ENTRIES {
            self.identities.clear();
        }
        self.identities.insert(cgroup_id, Arc::clone(&identity));
        Some(identity)
    }

    /// The path of a cgroup id, walking the tree again on a miss when allowed.
    fn path(&mut self, cgroup_id: u64) -> Option<String> {
        if !self.paths.contains_key(&cgroup_id) && due(self.last_walk, self.rescan_interval) {
            self.walk();
        }
        self.paths.get(&cgroup_id).cloned()
    }

    /// Maps every directory under the root, without following symlinks (a
    /// link would give a cgroup a second path, or loop).
    fn walk(&mut self) {
        self.last_walk = Some(Instant::now());
        self.paths.clear();
        let Ok(root) = fs::metadata(&self.cgroup_root) else {
            return;
        };
        self.paths.insert(root.ino(), "/".to_owned());
        let mut pending = vec![(self.cgroup_root.clone(), String::new(), 1)];
        while let Some((dir, path, depth)) = pending.pop() {
            let Ok(entries) = fs::read_dir(&dir) else {
                continue;
            };
            for entry in entries.flatten() {
                // `file_type` is the directory entry's own type: a symlink
                // is not a directory here.
                if !entry.file_type().is_ok_and(|t| t.is_dir()) {
                    continue;
                }
                let Ok(meta) = entry.metadata() else {
                    continue;
                };
                if self.paths.len() >= MAX_ENTRIES {
                    return;
                }
                let child = format!("{path}/{}", entry.file_name().to_string_lossy());
                if depth < MAX_DEPTH {
                    pending.push((entry.path(), child.clone(), depth + 1));
                }
                self.paths.insert(meta.ino(), child);
            }
        }
    }

    fn pods_due(&self) -> bool {
        due(self.last_pods_read, self.rescan_interval)
    }

    /// A pod's (namespace, name), reading the pod log directory again on a
    /// miss when allowed.
    fn pod_name(&mut self, uid: &str) -> Option<&(String, String)> {
        if !self.pod_names.contains_key(uid) && self.pods_due() {
            self.read_pods();
        }
        self.pod_names.get(uid)
    }

    fn read_pods(&mut self) {
        self.last_pods_read = Some(Instant::now());
        self.pod_names.clear();
        let Ok(entries) = fs::read_dir(&self.pods) else {
            return;
        };
        for entry in entries.flatten() {
            if self.pod_names.len() >= MAX_ENTRIES {
                return;
            }
            if !entry.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            let Ok(name) = entry.file_name().into_string() else {
                continue;
            };
            // Namespaces and pod names cannot contain '_': the first and
            // last '_' delimit the name.
            let Some((namespace, rest)) = name.split_once('_') else {
                continue;
            };
            let Some((pod, uid)) = rest.rsplit_once('_') else {
                continue;
            };
            if namespace.is_empty() || pod.is_empty() || !is_pod_uid(uid) {
                continue;
            }
            self.pod_names
                .insert(uid.to_owned(), (namespace.to_owned(), pod.to_owned()));
        }
    }
}

/// Whether a rescan last done at `last` may run again.
fn due(last: Option<Instant>, interval: Duration) -> bool {
    last.is_none_or(|at| at.elapsed() >= interval)
}

/// The container id in a cgroup path: that of the innermost container
/// whose cgroup holds this one, so a container's own sub-cgroups (podman's
/// `libpod-<id>.scope/container`, systemd running inside a container) are
/// still that container's.
pub fn container_id(cgroup_path: &str) -> Option<&str> {
    cgroup_path.rsplit('/').find_map(component_container_id)
}

fn component_container_id(component: &str) -> Option<&str> {
    // cgroupfs drivers: docker's /docker/<id>, the kubelet's
    // /kubepods/<qos>/pod<uid>/<id>, containerd's /<namespace>/<id>.
    if is_container_id(component) {
        return Some(component);
    }
    let (prefix, id) = match component.split_once(':') {
        // runc's systemd form `<slice>:<prefix>:<id>`, taken literally as a
        // directory name under containerd.service by some setups.
        Some((_slice, unit)) => unit.split_once(':')?,
        None => component
            .strip_suffix(".scope")
            .unwrap_or(component)
            .rsplit_once('-')?,
    };
    (RUNTIMES.contains(&prefix) && is_container_id(id)).then_some(id)
}

/// The Kubernetes pod UID in a cgroup path, with dashes.
pub fn pod_uid(cgroup_path: &str) -> Option<String> {
    let mut uid = None;
    let mut under_kubepods = false;
    for component in cgroup_path.split('/') {
        if let Some(found) = systemd_pod_uid(component) {
            uid = Some(found);
        } else if under_kubepods
            && let Some(found) = component.strip_prefix("pod").filter(|u| is_pod_uid(u))
        {
            // The cgroupfs driver: /kubepods/[<qos>/]pod<uid>.
            uid = Some(found.to_owned());
        }
        under_kubepods |= component == "kubepods";
    }
    uid
}

/// The systemd driver's `kubepods-<qos>-pod<uid>.slice` (under a
/// `--cgroup-root`, e.g. kind's `kubelet-kubepods-<qos>-pod<uid>.slice`),
/// whose UID has '_' for '-' since '-' separates systemd's slice levels.
fn systemd_pod_uid(component: &str) -> Option<String> {
    let slice = component.split(':').next()?;
    let (parents, pod) = slice.strip_suffix(".slice")?.rsplit_once('-')?;
    let uid = pod.strip_prefix("pod")?;
    if !parents.split('-').any(|p| p == "kubepods") {
        return None;
    }
    let uid = uid.replace('_', "-");
    is_pod_uid(&uid).then_some(uid)
}

/// Exactly 64 lowercase hex digits: what docker, containerd, CRI-O and
/// podman name containers by.
fn is_container_id(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(is_lower_hex)
}

/// A UUID in its 8-4-4-4-12 form, as the API server assigns, or 32 hex
/// digits: the kubelet's UID for a static pod (an MD5 of its manifest).
fn is_pod_uid(s: &str) -> bool {
    match s.len() {
        32 => s.bytes().all(is_lower_hex),
        36 => s.bytes().enumerate().all(|(i, b)| match i {
            8 | 13 | 18 | 23 => b == b'-',
            _ => is_lower_hex(b),
        }),
        _ => false,
    }
}

fn is_lower_hex(b: u8) -> bool {
    b.is_ascii_digit() || (b'a'..=b'f').contains(&b)
}

#[cfg(test)]
mod tests {
    use std::{ffi::OsStr, os::unix::ffi::OsStrExt as _, path::Path};

    use super::*;

    const A: &str = "9ec39b91f3d70e1beff50a308f77067065ea6be0d91a3378375056cd4422cf3d";
    const B: &str = "66dda1e97c4fc48204b066f07fc1e28bab94a571820484e01576982d4cb9d32b";
    const C: &str = "4f797c539e6c745de61a93ca3ff892358ecbcaccd8414d5db545c38428142970";
    const D: &str = "0ba8ac17e4e7a31fb82279503552fe94e64bab4745bf6fd2ff231e7c8ca8bed0";
    const E: &str = "358607a37e7ada357032e7f5729c9ae6a3efdb7962acbcbe47ff6a3c5506cb1c";
    const UID1: &str = "b7c2cbdb-9ab5-47ef-977e-97e39a73da6d";
    const UID2: &str = "2ca4a155-3599-498d-bb9d-4446693fa3ea";
    const UID3: &str = "ae7a96fb-2bdc-46b0-96e2-78e4af94847b";

    fn mkdir(root: &Path, path: &str) -> u64 {
        let dir = root.join(path);
        fs::create_dir_all(&dir).unwrap();
        fs::metadata(&dir).unwrap().ino()
    }

    fn underscored(uid: &str) -> String {
        uid.replace('-', "_")
    }

    struct Fixture {
        _dir: tempfile::TempDir,
        cgroups: PathBuf,
        pods: PathBuf,
        resolver: Resolver,
    }

    fn fixture() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let cgroups = dir.path().join("cgroup");
        let pods = dir.path().join("pods");
        fs::create_dir_all(&cgroups).unwrap();
        fs::create_dir_all(&pods).unwrap();
        let resolver = Resolver::new(cgroups.clone(), pods.clone());
        Fixture {
            _dir: dir,
            cgroups,
            pods,
            resolver,
        }
    }

    fn id(
        container: Option<&str>,
        uid: Option<&str>,
        ns: Option<&str>,
        pod: Option<&str>,
    ) -> [Option<String>; 4] {
        [container, uid, ns, pod].map(|s| s.map(str::to_owned))
    }

    fn parts(identity: &Identity) -> [Option<String>; 4] {
        [
            identity.container_id.clone(),
            identity.pod_uid.clone(),
            identity.pod_namespace.clone(),
            identity.pod.clone(),
        ]
    }

    #[test]
    fn resolves_containers_and_pods_by_directory_inode() {
        let mut f = fixture();
        let root = f.cgroups.as_path();
        let docker = mkdir(root, &format!("system.slice/docker-{A}.scope"));
        let pod1 = format!(
            "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{}.slice",
            underscored(UID1)
        );
        let pod1_ino = mkdir(root, &pod1);
        let containerd = mkdir(root, &format!("{pod1}/cri-containerd-{B}.scope"));
        let cgroupfs = mkdir(root, &format!("kubepods/besteffort/pod{UID2}/{C}"));
        let podman = mkdir(root, &format!("machine.slice/libpod-{D}.scope"));
        let podman_inner = mkdir(root, &format!("machine.slice/libpod-{D}.scope/container"));
        let conmon = mkdir(root, &format!("machine.slice/libpod-conmon-{D}.scope"));
        let session = mkdir(root, "user.slice/user-1000.slice/session-3.scope");
        let root_ino = fs::metadata(root).unwrap().ino();
        mkdir(&f.pods, &format!("default_web-7d4b9_{UID1}"));
        mkdir(&f.pods, &format!("kube-system_coredns-5d78c_{UID2}"));
        // Not pod directories: no '_', a bad UID, a file.
        mkdir(&f.pods, "lost+found");
        mkdir(&f.pods, "default_web_not-a-uid");
        fs::write(f.pods.join(format!("default_file_{UID3}")), "").unwrap();

        let r = &mut f.resolver;
        let got = r.resolve(docker).unwrap();
        assert_eq!(got.cgroup, format!("/system.slice/docker-{A}.scope"));
        assert_eq!(parts(&got), id(Some(A), None, None, None));
        let got = r.resolve(containerd).unwrap();
        assert_eq!(got.cgroup, format!("/{pod1}/cri-containerd-{B}.scope"));
        assert_eq!(
            parts(&got),
            id(Some(B), Some(UID1), Some("default"), Some("web-7d4b9"))
        );
        let got = r.resolve(pod1_ino).unwrap();
        assert_eq!(
            parts(&got),
            id(None, Some(UID1), Some("default"), Some("web-7d4b9"))
        );
        let got = r.resolve(cgroupfs).unwrap();
        assert_eq!(got.cgroup, format!("/kubepods/besteffort/pod{UID2}/{C}"));
        assert_eq!(
            parts(&got),
            id(
                Some(C),
                Some(UID2),
                Some("kube-system"),
                Some("coredns-5d78c")
            )
        );
        assert_eq!(
            parts(&r.resolve(podman).unwrap()),
            id(Some(D), None, None, None)
        );
        assert_eq!(
            parts(&r.resolve(podman_inner).unwrap()),
            id(Some(D), None, None, None)
        );
        assert_eq!(
            parts(&r.resolve(conmon).unwrap()),
            id(None, None, None, None)
        );
        let got = r.resolve(session).unwrap();
        assert_eq!(got.cgroup, "/user.slice/user-1000.slice/session-3.scope");
        assert_eq!(parts(&got), id(None, None, None, None));
        assert_eq!(r.resolve(root_ino).unwrap().cgroup, "/");
        // Cached: the same allocation.
        assert!(Arc::ptr_eq(
            &r.resolve(docker).unwrap(),
            &r.resolve(docker).unwrap()
        ));
    }

    #[test]
    fn unknown_ids_are_none() {
        let mut f = fixture();
        mkdir(&f.cgroups, "system.slice");
        assert_eq!(f.resolver.resolve(0), None);
        assert_eq!(f.resolver.resolve(u64::MAX), None);
        let mut missing = Resolver::new("/no/such/cgroup".into(), "/no/such/pods".into());
        assert_eq!(missing.resolve(1), None);
    }

    #[test]
    fn a_new_cgroup_is_found_at_the_next_allowed_rescan_not_before() {
        let mut f = fixture();
        mkdir(&f.cgroups, "system.slice");
        assert_eq!(f.resolver.resolve(u64::MAX), None);
        let late = mkdir(&f.cgroups, &format!("system.slice/docker-{E}.scope"));
        // Within the interval a miss does not walk the tree again.
        f.resolver.rescan_interval = Duration::from_secs(3600);
        assert_eq!(f.resolver.resolve(late), None);
        f.resolver.rescan_interval = Duration::ZERO;
        let got = f.resolver.resolve(late).unwrap();
        assert_eq!(got.container_id.as_deref(), Some(E));
    }

    #[test]
    fn a_pod_log_directory_made_later_names_the_pod_later() {
        let mut f = fixture();
        let pod = format!(
            "kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{}.slice",
            underscored(UID3)
        );
        let crio = mkdir(&f.cgroups, &format!("{pod}/crio-{E}.scope"));
        let conmon = mkdir(&f.cgroups, &format!("{pod}/crio-conmon-{E}.scope"));
        f.resolver.rescan_interval = Duration::from_secs(3600);
        let got = f.resolver.resolve(crio).unwrap();
        assert_eq!(parts(&got), id(Some(E), Some(UID3), None, None));
        mkdir(&f.pods, &format!("monitoring_node-exporter-x2k4f_{UID3}"));
        fs::remove_dir(f.cgroups.join(format!("{pod}/crio-{E}.scope"))).unwrap();
        assert_eq!(f.resolver.resolve(crio).unwrap().pod, None);
        f.resolver.rescan_interval = Duration::ZERO;
        let got = f.resolver.resolve(crio).unwrap();
        let named = id(
            Some(E),
            Some(UID3),
            Some("monitoring"),
            Some("node-exporter-x2k4f"),
        );
        assert_eq!(parts(&got), named);
        assert_eq!(
            parts(&f.resolver.resolve(conmon).unwrap()),
            id(
                None,
                Some(UID3),
                Some("monitoring"),
                Some("node-exporter-x2k4f")
            )
        );
    }

    #[test]
    fn symlinks_are_not_followed_and_depth_is_bounded() {
        let mut f = fixture();
        let kubepods = mkdir(&f.cgroups, "kubepods");
        mkdir(&f.cgroups, "system.slice");
        std::os::unix::fs::symlink("../kubepods", f.cgroups.join("system.slice/link")).unwrap();
        std::os::unix::fs::symlink("..", f.cgroups.join("system.slice/loop")).unwrap();
        assert_eq!(f.resolver.resolve(kubepods).unwrap().cgroup, "/kubepods");

        let deepest = (1..=MAX_DEPTH)
            .map(|i| format!("d{i}"))
            .collect::<Vec<_>>()
            .join("/");
        let deepest_ino = mkdir(&f.cgroups, &deepest);
        let too_deep = mkdir(&f.cgroups, &format!("{deepest}/d{}", MAX_DEPTH + 1));
        f.resolver.rescan_interval = Duration::ZERO;
        assert_eq!(
            f.resolver.resolve(deepest_ino).unwrap().cgroup,
            format!("/{deepest}")
        );
        assert_eq!(f.resolver.resolve(too_deep), None);
    }

    #[test]
    fn names_that_are_not_utf8_still_resolve() {
        let mut f = fixture();
        let dir = f.cgroups.join(OsStr::from_bytes(b"odd\xff.scope"));
        fs::create_dir(&dir).unwrap();
        let ino = fs::metadata(&dir).unwrap().ino();
        assert_eq!(
            f.resolver.resolve(ino).unwrap().cgroup,
            "/odd\u{fffd}.scope"
        );
    }

    #[test]
    fn container_ids_from_each_runtime() {
        let cases = [
            (format!("/system.slice/docker-{A}.scope"), Some(A)),
            (format!("/docker/{A}"), Some(A)),
            (
                format!(
                    "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{}.slice/cri-containerd-{B}.scope",
                    underscored(UID1)
                ),
                Some(B),
            ),
            (format!("/kubepods/burstable/pod{UID1}/{B}"), Some(B)),
            (format!("/kubepods/pod{UID1}/{B}"), Some(B)),
            (
                format!(
                    "/system.slice/containerd.service/kubepods-besteffort-pod{}.slice:cri-containerd:{B}",
                    underscored(UID1)
                ),
                Some(B),
            ),
            (format!("/default/{B}"), Some(B)),
            (format!("/system.slice/nerdctl-{B}.scope"), Some(B)),
            (
                format!(
                    "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{}.slice/crio-{C}.scope",
                    underscored(UID2)
                ),
                Some(C),
            ),
            (format!("/kubepods/besteffort/pod{UID2}/crio-{C}"), Some(C)),
            (format!("/machine.slice/libpod-{D}.scope"), Some(D)),
            (
                format!("/machine.slice/libpod-{D}.scope/container"),
                Some(D),
            ),
            (format!("/libpod_parent/libpod-{D}"), Some(D)),
            (
                format!(
                    "/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-{D}.scope"
                ),
                Some(D),
            ),
            // Docker in docker: the innermost container.
            (
                format!("/system.slice/docker-{A}.scope/docker/{C}"),
                Some(C),
            ),
            // The runtime's monitor, not the container.
            (
                format!(
                    "/kubepods.slice/kubepods-pod{}.slice/crio-conmon-{C}.scope",
                    underscored(UID2)
                ),
                None,
            ),
            (format!("/machine.slice/libpod-conmon-{D}.scope"), None),
            // Not container ids: 63 or 65 digits, uppercase, not hex, unknown runtime.
            (format!("/system.slice/docker-{}.scope", &A[1..]), None),
            (format!("/docker/{A}0"), None),
            (format!("/docker/{}", A.to_uppercase()), None),
            (format!("/system.slice/docker-{}g.scope", &A[1..]), None),
            (format!("/system.slice/runner-{A}.scope"), None),
            (format!("/system.slice/:cri-containerd:{}", &A[1..]), None),
            (
                "/user.slice/user-1000.slice/session-3.scope".to_owned(),
                None,
            ),
            ("/".to_owned(), None),
            (String::new(), None),
            ("::::-.scope-/-:".to_owned(), None),
            ("/docker/é".repeat(40), None),
        ];
        for (path, want) in &cases {
            assert_eq!(container_id(path), *want, "{path}");
        }
    }

    #[test]
    fn pod_uids_from_each_driver() {
        let static_uid = "4f0d6f5e5a5c2a9c5d2c8a0b6f7e1d2c";
        let cases = [
            (
                format!(
                    "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{}.slice/cri-containerd-{B}.scope",
                    underscored(UID1)
                ),
                Some(UID1),
            ),
            (
                format!("/kubepods.slice/kubepods-pod{}.slice", underscored(UID1)),
                Some(UID1),
            ),
            (
                format!(
                    "/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-besteffort.slice/kubelet-kubepods-besteffort-pod{}.slice/crio-{C}.scope",
                    underscored(UID2)
                ),
                Some(UID2),
            ),
            (format!("/kubepods/besteffort/pod{UID2}/{C}"), Some(UID2)),
            (format!("/kubepods/pod{UID2}"), Some(UID2)),
            (
                format!(
                    "/system.slice/containerd.service/kubepods-besteffort-pod{}.slice:cri-containerd:{B}",
                    underscored(UID3)
                ),
                Some(UID3),
            ),
            (
                format!(
                    "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{static_uid}.slice"
                ),
                Some(static_uid),
            ),
            (
                format!("/kubepods/burstable/pod{static_uid}/{C}"),
                Some(static_uid),
            ),
            // Not pods: outside kubepods, bad shapes, uppercase, podman's pods.
            (format!("/system.slice/pod{UID2}"), None),
            (
                format!("/system.slice/system-pod{}.slice", underscored(UID2)),
                None,
            ),
            (format!("/kubepods/besteffort/pod{}", &UID2[1..]), None),
            (
                format!("/kubepods/besteffort/pod{}", UID2.to_uppercase()),
                None,
            ),
            (
                format!("/kubepods/besteffort/pod{}", UID2.replacen('-', "", 1)),
                None,
            ),
            (format!("/kubepods.slice/kubepods-pod{UID1}.slice"), None),
            (
                format!("/kubepods/besteffort/pod{}", UID2.replace('-', "_")),
                None,
            ),
            (
                format!("/machine.slice/machine-libpod_pod_{D}.slice/libpod-{D}.scope"),
                None,
            ),
            (format!("/system.slice/docker-{A}.scope"), None),
            (String::new(), None),
            ("pod-.slice/kubepods-pod.slice/:".to_owned(), None),
        ];
        for (path, want) in &cases {
            assert_eq!(pod_uid(path).as_deref(), *want, "{path}");
        }
    }
}
