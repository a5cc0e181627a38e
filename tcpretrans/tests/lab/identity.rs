//! Who owns a socket, from its cgroup as the kernel reads it: a client run
//! in a cgroup named as a container runtime and the kubelet name theirs,
//! with the pod's log directory the kubelet keeps.
use std::{
    fs,
    net::TcpListener,
    path::{Path, PathBuf},
    process::Command,
    thread,
};

use crate::harness::{Netns, Tracer, kernel_lacks, skip, states_of};

/// The member the kernel side reads a socket's cgroup by.
const SOCKET_CGROUP: &str = "sock.sk_cgrp_data.cgroup";

/// Whether this kernel can tell a socket's cgroup; else says why not.
fn cgroups_known() -> bool {
    if kernel_lacks(SOCKET_CGROUP) {
        skip(&format!(
            "this kernel's BTF has no {SOCKET_CGROUP}: sockets' cgroups are unknown"
        ));
        return false;
    }
    true
}

/// A cgroup made for the test, removed when it ends, however it ends (its
/// processes have exited by then).
struct Made(PathBuf);

impl Drop for Made {
    fn drop(&mut self) {
        let _ = fs::remove_dir(&self.0);
    }
}

/// The cgroup2 mount, as the tool finds it.
fn cgroup2() -> PathBuf {
    tcpretrans::identity::cgroup2_mount().expect("a cgroup2 hierarchy is mounted")
}

/// Makes each directory of `path` below `root`, each removed at the end
/// (innermost first).
fn make_dirs(root: &Path, path: &str) -> Vec<Made> {
    let mut made = Vec::new();
    let mut dir = root.to_path_buf();
    for part in path.split('/').filter(|p| !p.is_empty()) {
        dir.push(part);
        if !dir.exists() {
            fs::create_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
            made.push(Made(dir.clone()));
        }
    }
    made.reverse();
    made
}

/// curl from inside `cgroup` (below the cgroup2 mount) to a server in the
/// namespace; the client's local port.
fn client_in(ns: &Netns, cgroup: &Path) -> u16 {
    let listener = ns
        .enter(|| TcpListener::bind("127.0.0.1:0").expect("bind"))
        .join()
        .expect("listener");
    let port = listener.local_addr().expect("address").port();
    let server = thread::spawn(move || {
        let (conn, peer) = listener.accept().expect("accept");
        drop(conn);
        peer.port()
    });
    let procs = cgroup.join("cgroup.procs");
    // nsenter, not `ip netns exec`: that mounts a sysfs of the namespace's
    // own, without the cgroup2 hierarchy.
    let status = Command::new("nsenter")
        .arg(format!("--net=/run/netns/{}", ns.name))
        .args(["sh", "-c"])
        .arg(format!(
            "echo $$ > {} && exec curl --silent --max-time 5 http://127.0.0.1:{port}/",
            procs.display()
        ))
        .status()
        .expect("running curl");
    // The server closes at once: curl reports an empty reply (52), or a
    // reset (56) when its request was still unread.
    assert!(matches!(status.code(), Some(0 | 52 | 56)), "curl: {status}");
    server.join().expect("server")
}

/// The kubelet's systemd-driver names (containerd), and a pod log
/// directory as the kubelet names it: every event of the client's socket names the container, the
/// pod's UID, namespace and name.
#[test]
#[ignore = "kernel lab: run `cargo xtask test` as root"]
fn a_kubernetes_pods_sockets_name_their_container_and_pod() {
    const UID: &str = "7f3c2a10-5b6d-4e8f-9a1b-2c3d4e5f6a7b";
    if !cgroups_known() {
        return;
    }
    let container = "5e".repeat(32);
    let pod_slice = format!("kubepods-besteffort-pod{}.slice", UID.replace('-', "_"));
    let path = format!(
        "tcpretrans-lab.slice/kubepods-besteffort.slice/{pod_slice}/cri-containerd-{container}.scope"
    );
    let root = cgroup2();
    let _cgroups = make_dirs(&root, &path);
    let pods = tempfile::tempdir().expect("a pods directory");
    fs::create_dir(pods.path().join(format!("lab_cart-7d9f_{UID}"))).expect("the pod's");

    let ns = Netns::new("pod");
    let tracer = Tracer::start(&[
        "--json",
        "--state",
        "--netns",
        &ns.inode.to_string(),
        "--pods-dir",
        pods.path().to_str().expect("utf-8"),
    ]);
    let client_port = client_in(&ns, &root.join(&path));
    let events = tracer.stop().events();

    for event in states_of(&events, client_port) {
        assert_eq!(event["cgroup"], format!("/{path}"), "{event}");
        assert_eq!(event["container_id"], container.as_str(), "{event}");
        assert_eq!(event["pod_uid"], UID, "{event}");
        assert_eq!(event["pod_namespace"], "lab", "{event}");
        assert_eq!(event["pod"], "cart-7d9f", "{event}");
    }
    // The server's socket is in the test's own cgroup: no container.
    assert!(
        events
            .iter()
            .filter(|e| e["rport"] == client_port)
            .all(|e| e["container_id"].is_null()),
        "{events:#?}"
    );
}

/// Docker's name under the cgroupfs driver (`/docker/<id>`): a container
/// that is no pod.
#[test]
#[ignore = "kernel lab: run `cargo xtask test` as root"]
fn a_docker_containers_sockets_name_it() {
    if !cgroups_known() {
        return;
    }
    let container = "a1".repeat(32);
    let path = format!("tcpretrans-lab-docker/docker/{container}");
    let root = cgroup2();
    let _cgroups = make_dirs(&root, &path);

    let ns = Netns::new("docker");
    let tracer = Tracer::start(&["--json", "--state", "--netns", &ns.inode.to_string()]);
    let client_port = client_in(&ns, &root.join(&path));
    let events = tracer.stop().events();

    for event in states_of(&events, client_port) {
        assert_eq!(event["container_id"], container.as_str(), "{event}");
        assert!(
            event["pod_uid"].is_null() && event["pod"].is_null(),
            "{event}"
        );
    }
}
