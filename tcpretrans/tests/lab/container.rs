//! The tracer in a container, run as deploy/kubernetes/daemonset.yaml runs
//! it: the image deploy/Containerfile builds from what `cargo xtask dist`
//! ships, given the DaemonSet's capabilities, host PID namespace, mounts,
//! seccomp profile and memory limit, and nothing more. `cargo xtask test`
//! provides both: `TCPRETRANS_DIST` (the dist directory) and
//! `TCPRETRANS_DAEMONSET` (the DaemonSet as JSON).
use std::{
    env, fs,
    io::{BufRead, BufReader, Read, Write},
    net::{SocketAddr, TcpListener},
    path::{Path, PathBuf},
    process::{Child, ChildStdin, ChildStdout, Command, ExitStatus, Stdio},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use serde_json::{Value, json};
use tcpretrans_lab::PATIENCE;

use crate::harness::{
    Netns, Output, bulk_upload, delta, drop_inbound_matching, of_kind, sent_segments, skip,
    states_of,
};

/// An established connection in a process of user nobody: its owner can
/// only be found in /proc/PID/fd, which takes the host's PID namespace,
/// CAP_SYS_PTRACE and CAP_DAC_READ_SEARCH. It also keeps a process in the
/// namespace, by which the containerized tool finds it (`--netns`: there
/// is no /run/netns in the container). Uploads when told (a line on
/// stdin), says how much the server read, then waits for stdin to close.
const OLDER_CONNECTION: &str = "\
import socket, sys, threading
port, size = int(sys.argv[1]), int(sys.argv[2])
l = socket.socket(); l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
l.bind(('127.0.0.1', port)); l.listen()
c = socket.create_connection(('127.0.0.1', port)); s, _ = l.accept()
print('ready', flush=True); sys.stdin.readline()
got = []
def read():
    n = 0
    while b := s.recv(65536): n += len(b)
    got.append(n)
t = threading.Thread(target=read); t.start()
c.sendall(b'x' * size); c.shutdown(socket.SHUT_WR); t.join()
print(got[0], flush=True); sys.stdin.read()
";
const NOBODY: u32 = 65534;
/// Debian's static busybox (busybox-static), a client container's program.
const BUSYBOX: &str = "/bin/busybox";
/// The seccomp profile podman applies by default (containers-common).
const PODMAN_SECCOMP: &str = "/usr/share/containers/seccomp.json";

#[test]
#[ignore = "kernel lab: run `cargo xtask test` as root"]
fn the_daemonsets_container_reports_every_retransmission_and_its_owner() {
    const BYTES: usize = 4 << 20;
    let Some((image, daemonset)) = tracer_image() else {
        return;
    };
    let ns = Netns::new("container");
    ns.ip(&["link", "set", "lo", "mtu", "1500"]);
    let (older_port, newer_port) = (8400u16, 8401u16);
    drop_inbound_matching(
        &ns,
        &format!("tcp dport {{ {older_port}, {newer_port} }} numgen random mod 100 < 10"),
    );
    let mut older = OlderConnection::open(&ns, older_port, BYTES);
    let inode = ns.inode.to_string();
    let container = Container::start(
        &image,
        &daemonset,
        &["--json", "--state", "--netns", &inode],
    );
    let before = ns.counters();
    assert_eq!(
        older.upload(),
        BYTES,
        "the older connection's server read it all"
    );
    let newer = SocketAddr::from(([127, 0, 0, 1], newer_port));
    bulk_upload(&ns, newer, BYTES);
    let after = ns.counters();
    let (status, output) = container.stop();
    assert!(status.success(), "{status}:\n{}", output.stderr);
    let events = output.events();
    let retransmits = of_kind(&events, "retransmit");
    let kernel_segs = delta(&before, &after, "Tcp.RetransSegs");

    assert!(kernel_segs > 0, "10% loss must cause retransmissions");
    // Compared here: the tool's own comparison would enter the namespace,
    // which takes CAP_SYS_ADMIN.
    assert_eq!(
        sent_segments(&retransmits),
        kernel_segs,
        "segments retransmitted: the container's tool vs Tcp.RetransSegs"
    );
    let client_side = |port: u16| -> Vec<&Value> {
        retransmits
            .iter()
            .copied()
            .filter(|e| e["rport"] == port)
            .collect()
    };
    // Its owner read from the host's /proc, through the container's.
    let older_client = client_side(older_port);
    assert!(!older_client.is_empty(), "10% loss must make it retransmit");
    for event in &older_client {
        assert_eq!(
            (&event["pid"], &event["uid"], &event["comm"]),
            (&older.pid().into(), &NOBODY.into(), &"python3".into()),
            "{event}"
        );
    }
    // Its owner seen by the kernel side at connect(): a host pid.
    let newer_client = client_side(newer_port);
    assert!(!newer_client.is_empty(), "10% loss must make it retransmit");
    for event in &newer_client {
        assert_eq!(event["pid"], std::process::id(), "{event}");
    }
    eprintln!(
        "container: {} retransmit events, {kernel_segs} segments = Tcp.RetransSegs; \
         older connection's {} owned by nobody's python3 pid {}, newer's {} by pid {}",
        retransmits.len(),
        older_client.len(),
        older.pid(),
        newer_client.len(),
        std::process::id()
    );
}

/// A socket made in another container (podman's, joined to the test's
/// network namespace) carries that container's id: the containerized tool
/// reads the node's cgroup tree where the DaemonSet mounts it.
#[test]
#[ignore = "kernel lab: run `cargo xtask test` as root"]
fn another_containers_sockets_carry_its_id() {
    let Some((image, daemonset)) = tracer_image() else {
        return;
    };
    // A client container: busybox alone (Debian's static build).
    let context = tempfile::tempdir().expect("a build context");
    fs::copy(BUSYBOX, context.path().join("busybox")).expect("copying busybox");
    fs::write(
        context.path().join("Containerfile"),
        "FROM scratch\nCOPY busybox /busybox\nENTRYPOINT [\"/busybox\"]\n",
    )
    .expect("writing its Containerfile");
    let client_image = Image::build(
        &context.path().join("Containerfile"),
        context.path(),
        "tcpretrans-lab-client",
    );
    let ns = Netns::new("client");
    // Served from a thread inside the namespace: the containerized tool
    // finds the namespace by a task in it (it has no /run/netns).
    let (port_tx, port_rx) = mpsc::channel();
    let server = ns.enter(move || {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let _ = port_tx.send(listener.local_addr().expect("address").port());
        let (mut conn, peer) = listener.accept().expect("accept");
        let mut request = [0; 1024];
        let _ = conn.read(&mut request);
        let _ = conn.write_all(b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok");
        peer.port()
    });
    let port: u16 = port_rx.recv_timeout(PATIENCE).expect("the server's port");
    let tracer = Container::start(
        &image,
        &daemonset,
        &["--json", "--state", "--netns", &ns.inode.to_string()],
    );
    let cidfile = context.path().join("cid");
    let client = Command::new("podman")
        .args(["--runtime", "runc", "run", "--rm", "--cidfile"])
        .arg(&cidfile)
        .args(["--ulimit=nofile=1024:1024", "--ulimit=nproc=1024:1024"])
        .arg(format!("--network=ns:/run/netns/{}", ns.name))
        .arg(&client_image.tag)
        .args([
            "wget",
            "-q",
            "-O",
            "/dev/null",
            &format!("http://127.0.0.1:{port}/"),
        ])
        .output()
        .expect("starting podman run");
    assert!(
        client.status.success(),
        "the client container: {}",
        String::from_utf8_lossy(&client.stderr)
    );
    let id = fs::read_to_string(&cidfile).expect("the container's id");
    let client_port = server.join().expect("server");
    let (status, output) = tracer.stop();
    assert!(status.success(), "{status}:\n{}", output.stderr);
    let events = output.events();
    let client = states_of(&events, client_port);
    for event in &client {
        assert_eq!(event["container_id"], id.trim(), "{event}");
    }
    eprintln!(
        "container {}: {} transitions of its socket, each with its id (cgroup {})",
        &id[..12],
        client.len(),
        client[0]["cgroup"]
    );
}

/// The tracer's image, built as deploy/Containerfile says from what
/// `cargo xtask test` names, and the DaemonSet it is run as; `None`, said
/// as a skip, where they are not named.
fn tracer_image() -> Option<(Image, Value)> {
    let (Some(dist), Ok(daemonset)) = (
        env::var_os("TCPRETRANS_DIST"),
        env::var("TCPRETRANS_DAEMONSET"),
    ) else {
        skip(
            "TCPRETRANS_DIST or TCPRETRANS_DAEMONSET is not set; `cargo xtask test` sets them \
             on the host (the image's build context, the DaemonSet as JSON)",
        );
        return None;
    };
    let daemonset: Value = serde_json::from_str(&daemonset).expect("the DaemonSet as JSON");
    let containerfile = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/Containerfile");
    let image = Image::build(&containerfile, Path::new(&dist), "tcpretrans-lab");
    Some((image, daemonset))
}

/// An image built with podman from a Containerfile, removed when dropped.
struct Image {
    tag: String,
}

impl Image {
    /// Builds `containerfile` in `context`, tagged `name` and this
    /// process's id.
    fn build(containerfile: &Path, context: &Path, name: &str) -> Self {
        let image = Self {
            tag: format!("localhost/{name}:{}", std::process::id()),
        };
        // One image, without intermediate ones to remove.
        let output = Command::new("podman")
            .args(["build", "--layers=false", "--quiet", "--file"])
            .arg(containerfile)
            .args(["--tag", &image.tag])
            .arg(context)
            .output()
            .expect("starting podman build");
        assert!(
            output.status.success(),
            "podman build failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        image
    }
}

impl Drop for Image {
    fn drop(&mut self) {
        let _ = Command::new("podman")
            .args(["rmi", "--force", &self.tag])
            .output();
    }
}

/// The running container, its `podman run` attached: stdout and stderr are
/// the tool's. Removed when dropped, whatever happened.
struct Container {
    name: String,
    podman: Child,
    /// Readers of its stdout and stderr; taken by `stop`.
    readers: Option<[thread::JoinHandle<String>; 2]>,
    /// Held for its drop: removed after the container.
    _made: Made,
    /// The pod's `terminationGracePeriodSeconds`.
    grace: u64,
}

impl Container {
    /// Starts `image` as the DaemonSet's pod would be, with `args` for the
    /// tool after the DaemonSet's own, and waits until its programs are
    /// attached: its first line (the JSON `start` event) says so.
    fn start(image: &Image, daemonset: &Value, args: &[&str]) -> Self {
        let name = format!("tcpretrans-lab-{}", std::process::id());
        let seccomp = env::temp_dir().join(format!("{name}-seccomp.json"));
        let mut made = Made(vec![seccomp.clone()]);
        fs::write(&seccomp, containerd_default_seccomp().to_string()).expect("seccomp profile");
        let pod = &daemonset["spec"]["template"]["spec"];
        let container = &pod["containers"][0];
        let options = pod_options(daemonset, &seccomp, &mut made.0);
        let mut podman = Command::new("podman")
            // crun refuses this machine's hybrid cgroup layout.
            .args(["--runtime", "runc", "run", "--rm", "--name", &name])
            // podman raises these limits by default, which this machine
            // does not permit.
            .args(["--ulimit=nofile=1024:1024", "--ulimit=nproc=1024:1024"])
            .args(options)
            .arg(&image.tag)
            .args(tool_args(container))
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting podman run");
        let stdout = podman.stdout.take().expect("stdout");
        let mut stderr = podman.stderr.take().expect("stderr");
        let (ready_tx, ready_rx) = mpsc::channel();
        let stdout = thread::spawn(move || read_lines(stdout, ready_tx));
        let stderr = thread::spawn(move || {
            let mut text = String::new();
            let _ = stderr.read_to_string(&mut text);
            text
        });
        let container = Self {
            name,
            podman,
            readers: Some([stdout, stderr]),
            _made: made,
            // Kubernetes' default when the pod does not say.
            grace: pod["terminationGracePeriodSeconds"].as_u64().unwrap_or(30),
        };
        if ready_rx.recv_timeout(PATIENCE).is_err() {
            let (status, output) = container.stop();
            panic!(
                "the container did not start tracing ({status}):\n{}",
                output.stderr
            );
        }
        container
    }

    /// Stops it as the kubelet stops the pod (SIGTERM, SIGKILL after the
    /// pod's grace period): how it exited, and what it printed.
    fn stop(mut self) -> (ExitStatus, Output) {
        let stopped = Command::new("podman")
            .args(["stop", "--time", &self.grace.to_string(), &self.name])
            .output()
            .expect("starting podman stop");
        // It fails for a container that has exited already (the tool
        // failed): what the tool printed says why.
        let deadline = Instant::now() + PATIENCE;
        let status = loop {
            if let Some(status) = self.podman.try_wait().expect("podman run") {
                break status;
            }
            assert!(
                Instant::now() < deadline,
                "podman run goes on after podman stop: {}",
                String::from_utf8_lossy(&stopped.stderr)
            );
            thread::sleep(Duration::from_millis(10));
        };
        let [stdout, stderr] = self.readers.take().expect("not stopped before");
        let output = Output {
            stdout: stdout.join().expect("stdout reader"),
            stderr: stderr.join().expect("stderr reader"),
        };
        (status, output)
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        let _ = Command::new("podman")
            .args(["rm", "--force", "--ignore", &self.name])
            .output();
        let _ = self.podman.kill();
        let _ = self.podman.wait();
    }
}

/// Files and empty directories made for the container, removed when dropped
/// (after the container: fields drop after their struct's `drop`).
struct Made(Vec<PathBuf>);

impl Drop for Made {
    fn drop(&mut self) {
        for path in &self.0 {
            let _ = fs::remove_file(path).or_else(|_| fs::remove_dir(path));
        }
    }
}

/// Every line of `stdout`; `ready` is told at the first.
fn read_lines(stdout: ChildStdout, ready: mpsc::Sender<()>) -> String {
    let mut text = String::new();
    for line in BufReader::new(stdout).lines().map_while(Result::ok) {
        if text.is_empty() {
            let _ = ready.send(());
        }
        text.push_str(&line);
        text.push('\n');
    }
    text
}

/// `podman run` options that give the container what the DaemonSet gives
/// its pod, and no more. A seccomp profile or volume of a kind not
/// reproduced here fails the test. Host directories it makes, as a kubelet
/// makes a missing `DirectoryOrCreate` hostPath, are added to `made`.
fn pod_options(daemonset: &Value, seccomp: &Path, made: &mut Vec<PathBuf>) -> Vec<String> {
    let pod = &daemonset["spec"]["template"]["spec"];
    let container = &pod["containers"][0];
    let security = &container["securityContext"];
    assert_ne!(
        security["privileged"], true,
        "a privileged container proves nothing"
    );
    let mut options = Vec::new();
    if pod["hostPID"] == true {
        options.push("--pid=host".to_owned());
    }
    // Without hostNetwork a pod has a network namespace of its own; the
    // tool needs nothing in it here (its events go to stdout).
    let network = if pod["hostNetwork"] == true {
        "host"
    } else {
        "none"
    };
    options.push(format!("--network={network}"));
    // Kubernetes gives each container a cgroup namespace of its own on
    // cgroup v2: the tool reads its memory limit through it.
    options.push("--cgroupns=private".to_owned());
    let capabilities = &security["capabilities"];
    for (flag, list) in [("--cap-drop", "drop"), ("--cap-add", "add")] {
        for capability in capabilities[list].as_array().into_iter().flatten() {
            let capability = capability.as_str().expect("a capability name");
            options.push(format!("{flag}={capability}"));
        }
    }
    if security["readOnlyRootFilesystem"] == true {
        // podman's read-only mode mounts writable tmpfs over /tmp, /run and
        // others; Kubernetes' does not.
        options.extend([
            "--read-only".to_owned(),
            "--read-only-tmpfs=false".to_owned(),
        ]);
    }
    if security["allowPrivilegeEscalation"] == false {
        options.push("--security-opt=no-new-privileges".to_owned());
    }
    if let Some(uid) = security["runAsUser"].as_u64() {
        let gid = security["runAsGroup"].as_u64().unwrap_or(uid);
        options.push(format!("--user={uid}:{gid}"));
    }
    let profile = match security["seccompProfile"]["type"].as_str() {
        Some("RuntimeDefault") => seccomp.display().to_string(),
        Some("Unconfined") => "unconfined".to_owned(),
        other => panic!("seccomp profile {other:?}: not reproduced here"),
    };
    options.push(format!("--security-opt=seccomp={profile}"));
    for mount in container["volumeMounts"].as_array().into_iter().flatten() {
        let volume = pod["volumes"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|v| v["name"] == mount["name"])
            .unwrap_or_else(|| panic!("no volume for {mount}"));
        let host = volume["hostPath"]["path"]
            .as_str()
            .unwrap_or_else(|| panic!("{volume}: only hostPath volumes are reproduced here"));
        // This machine is no node: what a kubelet would make, the test does.
        if !Path::new(host).exists() {
            assert_eq!(
                volume["hostPath"]["type"], "DirectoryOrCreate",
                "{host} is missing: the pod would not start"
            );
            fs::create_dir(host).unwrap_or_else(|e| panic!("making {host}: {e}"));
            made.push(host.into());
        }
        let mode = if mount["readOnly"] == true {
            "ro"
        } else {
            "rw"
        };
        options.push(format!(
            "--volume={host}:{}:{mode}",
            mount["mountPath"].as_str().expect("mountPath")
        ));
    }
    if let Some(limit) = container["resources"]["limits"]["memory"].as_str() {
        options.push(format!("--memory={}", bytes(limit)));
    }
    options
}

/// The DaemonSet's arguments for the tool but its metrics server and
/// `--quiet`: this test reads the events and the exit summary (`--json`)
/// where Prometheus would scrape.
fn tool_args(container: &Value) -> Vec<String> {
    let mut args = container["args"]
        .as_array()
        .expect("the container's args")
        .iter()
        .map(|a| a.as_str().expect("an argument").to_owned());
    let mut kept = Vec::new();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--metrics" => {
                args.next();
            }
            "--quiet" => {}
            _ => kept.push(arg),
        }
    }
    kept
}

/// A Kubernetes memory quantity in bytes: `128Mi`, `1Gi`, `67108864`.
fn bytes(quantity: &str) -> u64 {
    let (number, shift) = [("Ki", 10), ("Mi", 20), ("Gi", 30)]
        .into_iter()
        .find_map(|(suffix, shift)| Some((quantity.strip_suffix(suffix)?, shift)))
        .unwrap_or((quantity, 0));
    let number: u64 = number
        .parse()
        .unwrap_or_else(|_| panic!("memory quantity {quantity}: not parsed here"));
    number << shift
}

/// What RuntimeDefault is under containerd, which most clusters run:
/// podman's own default, but with bpf() allowed by CAP_BPF and
/// perf_event_open() by CAP_PERFMON, as containerd's profile allows them,
/// where podman's allows them only with CAP_SYS_ADMIN.
fn containerd_default_seccomp() -> Value {
    let text =
        fs::read_to_string(PODMAN_SECCOMP).unwrap_or_else(|e| panic!("{PODMAN_SECCOMP}: {e}"));
    let mut profile: Value = serde_json::from_str(&text).expect("a seccomp profile");
    let rules = profile["syscalls"]
        .as_array_mut()
        .expect("its syscall rules");
    for rule in rules.iter_mut() {
        // The rule refusing them to a process without CAP_SYS_ADMIN.
        if rule["action"] == "SCMP_ACT_ERRNO"
            && rule["excludes"]["caps"] == json!(["CAP_SYS_ADMIN"])
        {
            let names = rule["names"].as_array_mut().expect("syscall names");
            names.retain(|n| n != "bpf" && n != "perf_event_open");
        }
    }
    for (syscall, capability) in [("bpf", "CAP_BPF"), ("perf_event_open", "CAP_PERFMON")] {
        rules.push(json!({
            "names": [syscall],
            "action": "SCMP_ACT_ALLOW",
            "includes": {"caps": [capability]},
        }));
    }
    profile
}

/// The older connection's process, killed when dropped.
struct OlderConnection {
    process: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl OlderConnection {
    /// Connects inside `ns`, as nobody, to a listener of its own on `port`.
    fn open(ns: &Netns, port: u16, bytes: usize) -> Self {
        // Debian's python3: nobody cannot read a python under /root.
        let mut process = Command::new("ip")
            .args(["netns", "exec", &ns.name, "setpriv"])
            .arg(format!("--reuid={NOBODY}"))
            .arg(format!("--regid={NOBODY}"))
            .args(["--clear-groups", "/usr/bin/python3", "-c", OLDER_CONNECTION])
            .args([port.to_string(), bytes.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("starting python3");
        let stdin = process.stdin.take().expect("stdin");
        let stdout = BufReader::new(process.stdout.take().expect("stdout"));
        let mut older = Self {
            process,
            stdin,
            stdout,
        };
        assert_eq!(older.line(), "ready");
        older
    }

    /// `ip netns exec` and `setpriv` exec: the pid is python's.
    fn pid(&self) -> u32 {
        self.process.id()
    }

    /// Uploads; the bytes its server read.
    fn upload(&mut self) -> usize {
        writeln!(self.stdin, "go").expect("telling python3 to upload");
        self.line().parse().expect("a byte count")
    }

    fn line(&mut self) -> String {
        let mut line = String::new();
        self.stdout.read_line(&mut line).expect("reading python3");
        line.trim_end().to_owned()
    }
}

impl Drop for OlderConnection {
    fn drop(&mut self) {
        let _ = self.process.kill();
        let _ = self.process.wait();
    }
}
