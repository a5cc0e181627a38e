//! What the tool does when this machine offers less: no BTF, no privileges.
use std::{
    net::{SocketAddr, TcpListener, TcpStream},
    path::PathBuf,
    process::Command,
    thread,
    time::Duration,
};

use serde_json::Value;

use tcpretrans_lab::kernel_counts::TransitionCount;

use crate::harness::{
    Netns, Tracer, beyond_kernel_notes, closed, drop_inbound_matching, of_kind, transitions,
};

/// Without BTF the tool still traces; what needs BTF is null, and stderr
/// says so once.
#[test]
#[ignore = "kernel lab: run `cargo xtask test` as root"]
fn without_btf_fields_are_null_and_stderr_says_so_once() {
    let ns = Netns::new("nobtf");
    ns.sysctl("net.ipv4.tcp_syn_retries", "1");
    // Before 6.7 every SYN timeout doubles anyway.
    ns.sysctl_if_present("net.ipv4.tcp_syn_linear_timeouts", "0");
    let port = 5701;
    let server: SocketAddr = format!("127.0.0.1:{port}").parse().expect("address");
    drop_inbound_matching(
        &ns,
        &format!("tcp dport {port} tcp flags & (syn | ack) == syn"),
    );
    // No namespace filter without BTF: this test's events are told apart by port.
    // Without BTF the classic tracepoints' records are read instead of the
    // socket: state transitions too.
    let tracer = Tracer::start(&["--json", "-4", "--state", "--btf", "/nonexistent/vmlinux"]);
    let kernel = TransitionCount::start(std::iter::once(port..port + 1)).expect("ftrace instance");
    ns.enter(move || {
        let _listener = TcpListener::bind(server).expect("bind");
        TcpStream::connect(server).expect_err("SYNs are dropped")
    })
    .join()
    .expect("connect");
    let made = kernel.stop().expect("ftrace count");
    let output = tracer.stop();
    let events = output.events();
    let client: Vec<(String, String)> = transitions(
        &of_kind(&events, "state")
            .into_iter()
            .filter(|e| e["rport"] == port)
            .collect::<Vec<_>>(),
    );
    let connect: [(String, String); 2] = [
        ("CLOSE".into(), "SYN_SENT".into()),
        ("SYN_SENT".into(), "CLOSE".into()),
    ];
    // The SYN_SENT -> CLOSE comes from the timer's softirq, which on this
    // project's VM may interrupt process 1, where the kernel runs no BPF
    // program at all (README): ftrace tells whether it did.
    let never_given = connect.len().saturating_sub(client.len()) as u64;
    assert!(
        client.len() <= connect.len()
            && client.iter().all(|t| connect.contains(t))
            && never_given <= made.on_init_threads,
        "the connect's transitions, from the records: {client:?}; {made:?}"
    );
    let syns: Vec<_> = of_kind(&events, "retransmit")
        .into_iter()
        .filter(|e| e["rport"] == port)
        .collect();
    // The tool's stderr says whether the kernel skipped a program run.
    assert_eq!(syns.len(), 1, "{syns:?}\n{}", output.stderr);
    let syn = syns[0];
    assert_eq!(
        syn["type"], "SYN",
        "the tracepoint record alone tells a SYN: {syn}"
    );
    for field in [
        "netns",
        "rto_ms",
        "retries",
        "retry_limit",
        "srtt_us",
        "cwnd",
        "segs",
        "seq",
    ] {
        assert!(
            syn[field].is_null(),
            "{field} must be null without BTF: {syn}"
        );
    }
    let notes: Vec<&str> = output
        .stderr
        .lines()
        .filter(|l| l.contains("/nonexistent/vmlinux"))
        .collect();
    assert_eq!(notes.len(), 1, "said once:\n{}", output.stderr);
    assert!(notes[0].contains("shown as unknown"), "{}", notes[0]);
}

/// A truncated or empty BTF file is not a failure: the tool runs degraded,
/// names the file and what it cannot show, once.
#[test]
#[ignore = "kernel lab: run `cargo xtask test` as root"]
fn truncated_or_empty_btf_runs_degraded_and_says_why_once() {
    let vmlinux = std::fs::read("/sys/kernel/btf/vmlinux").expect("kernel BTF");
    for (name, bytes, why) in [
        (
            "truncated",
            &vmlinux[..1000],
            "sections extend past the end of the file",
        ),
        ("empty", &vmlinux[..0], "bad magic"),
    ] {
        let file =
            std::env::temp_dir().join(format!("tcpretrans-{name}-{}.btf", std::process::id()));
        std::fs::write(&file, bytes).expect("write");
        let output = Command::new(env!("CARGO_BIN_EXE_tcpretrans"))
            .args(["--json", "--duration", "0.3", "--btf"])
            .arg(&file)
            .output()
            .expect("running tcpretrans");
        let _ = std::fs::remove_file(&file);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(output.status.success(), "{name}: {stderr}");
        let notes: Vec<&str> = stderr.lines().filter(|l| l.contains(why)).collect();
        assert_eq!(notes.len(), 1, "{name}: {stderr}");
        assert!(notes[0].contains("is not BTF data"), "{}", notes[0]);
        assert!(notes[0].ends_with("shown as unknown"), "{}", notes[0]);
    }
}

/// Runs tcpretrans as user nobody without capabilities, from a copy anyone
/// can execute wherever the checkout lives.
fn as_nobody(args: &[&str]) -> std::process::Output {
    let binary =
        std::env::temp_dir().join(format!("tcpretrans-unprivileged-{}", std::process::id()));
    std::fs::copy(env!("CARGO_BIN_EXE_tcpretrans"), &binary).expect("copy");
    let output = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
            "--bounding-set=-all",
        ])
        .arg(&binary)
        .args(args)
        .output()
        .expect("running setpriv");
    let _ = std::fs::remove_file(&binary);
    output
}

/// Without root or CAP_BPF + CAP_PERFMON: one sentence that says what to do.
#[test]
#[ignore = "kernel lab: run `cargo xtask test` as root"]
fn an_unprivileged_user_is_told_to_use_root_or_capabilities() {
    let output = as_nobody(&["--state", "--duration", "1"]);
    assert_eq!(output.status.code(), Some(1));
    assert!(output.stdout.is_empty());
    assert_eq!(
        String::from_utf8_lossy(&output.stderr).trim(),
        "tcpretrans: permission denied loading eBPF programs: run as root, or with CAP_BPF and CAP_PERFMON"
    );
}

#[test]
#[ignore = "kernel lab: run `cargo xtask test` as root"]
fn netns_filter_without_btf_is_refused() {
    let output = Command::new(env!("CARGO_BIN_EXE_tcpretrans"))
        .args([
            "--netns",
            "/proc/self/ns/net",
            "--btf",
            "/nonexistent/vmlinux",
        ])
        .output()
        .expect("running tcpretrans");
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(
        stderr.trim(),
        "tcpretrans: --netns needs the kernel's BTF to read a socket's namespace, and kernel BTF \
         /nonexistent/vmlinux does not exist"
    );
}

#[test]
#[ignore = "kernel lab: run `cargo xtask test` as root"]
fn check_reports_what_this_kernel_offers() {
    let output = Command::new(env!("CARGO_BIN_EXE_tcpretrans"))
        .arg("--check")
        .output()
        .expect("running --check");
    let report = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{report}");
    for expected in [
        "tracepoint  tcp:tcp_retransmit_skb  skbaddr@8 skaddr@16",
        "tracepoint  tcp:tcp_retransmit_synack",
        "tracepoint  sock:inet_sock_set_state",
        "inet_connection_sock.icsk_rto",
        "net.ipv4.sysctl_tcp_retries2",
        "net.ipv4.ip_local_port_range",
        "programs    load, verify and attach: ok",
        // Without --state, no reset hooks: 7 hooks.
        "of 7 hooks, ",
        "result      tcpretrans can trace here",
    ] {
        assert!(
            report.contains(expected),
            "`{expected}` missing from:\n{report}"
        );
    }
    // What older kernels lack (each kernel's own BTF says), and nothing else.
    const LATER_MEMBERS: [&str; 3] = [
        "net.ipv4.sysctl_tcp_syn_linear_timeouts",
        "request_sock.timeout",
        "cgroup.ancestors",
    ];
    let missing: Vec<&str> = report
        .lines()
        .filter(|l| l.contains("MISSING"))
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert!(
        missing.iter().all(|m| LATER_MEMBERS.contains(m)),
        "{missing:?}\n{report}"
    );
    if missing.is_empty() {
        // Every hook but the system calls' (connect, accept) has a raw
        // tracepoint, the state hook a BTF one.
        assert!(
            report.contains("of 7 hooks, 1 on BTF and 2 on raw tracepoints)"),
            "{report}"
        );
    }
    if std::path::Path::new("/proc/sys/net/ipv4/tcp_syn_linear_timeouts").exists() {
        assert!(
            report.contains("net.ipv4.tcp_syn_linear_timeouts"),
            "{report}"
        );
    }
    let hz = report
        .lines()
        .find_map(|l| l.strip_prefix("hz          "))
        .expect("hz line");
    assert!(hz.parse::<u32>().is_ok(), "{hz}");
}

#[test]
#[ignore = "kernel lab: run `cargo xtask test` as root"]
fn check_without_privileges_says_why_and_fails() {
    let output = as_nobody(&["--check"]);
    let report = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(1), "{report}");
    assert!(
        report.contains("privileges  uid 65534, CAP_BPF no, CAP_PERFMON no"),
        "{report}"
    );
    assert!(
        report
            .lines()
            .last()
            .is_some_and(|l| l.starts_with("result      cannot trace here: not root")),
        "{report}"
    );
}

/// Runs tcpretrans in a mount namespace of its own, after `setup` (shell)
/// changed what it sees; the host's mounts are untouched.
fn with_private_mounts(setup: &str, args: &[&str]) -> std::process::Output {
    Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-ec"])
        .arg(format!("{setup}\nexec \"$0\" \"$@\""))
        .arg(env!("CARGO_BIN_EXE_tcpretrans"))
        .args(args)
        .output()
        .expect("running unshare")
}

/// Exit status 1, nothing on stdout, and exactly one line on stderr.
fn the_one_error(output: &std::process::Output) -> String {
    let stderr = beyond_kernel_notes(&String::from_utf8_lossy(&output.stderr));
    // A signal (no code) here has been a memory cgroup's OOM kill.
    assert_eq!(output.status.code(), Some(1), "{}: {stderr}", output.status);
    assert!(output.stdout.is_empty());
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    stderr.trim().to_owned()
}

/// No tracefs, and nowhere to mount it: /sys/kernel is an empty read-only
/// directory here.
#[test]
#[ignore = "kernel lab: run `cargo xtask test` as root"]
fn tracefs_that_cannot_be_mounted_is_one_sentence_with_the_remedy() {
    let output = with_private_mounts(
        "mount -t tmpfs -o ro,size=4k tmpfs /sys/kernel",
        &["--duration", "1"],
    );
    assert_eq!(
        the_one_error(&output),
        "tcpretrans: tracefs is not mounted, and mounting it at /sys/kernel/tracing failed \
         (ENOENT: No such file or directory): mount it (`mount -t tracefs tracefs \
         /sys/kernel/tracing`) and run again"
    );
}

/// A kernel without one of the tracepoints: the 6.18 layouts with
/// tcp_retransmit_synack removed stand in for tracefs.
#[test]
#[ignore = "kernel lab: run `cargo xtask test` as root"]
fn a_missing_tracepoint_is_named_with_what_to_do() {
    let fixture = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/tracefs/6.18");
    let tree = tempfile::tempdir().expect("tempdir");
    let copied = Command::new("cp")
        .arg("-r")
        .arg(format!("{fixture}/events"))
        .arg(tree.path())
        .status()
        .expect("cp");
    assert!(copied.success());
    std::fs::remove_dir_all(tree.path().join("events/tcp/tcp_retransmit_synack")).expect("rm");
    let output = with_private_mounts(
        &format!("mount --bind {} /sys/kernel/tracing", tree.path().display()),
        &["--duration", "1"],
    );
    assert_eq!(
        the_one_error(&output),
        "tcpretrans: tracepoint tcp:tcp_retransmit_synack does not exist on this kernel \
         (/sys/kernel/tracing/events/tcp/tcp_retransmit_synack/format is missing): tcpretrans \
         needs Linux 5.8 or later, built with CONFIG_FTRACE_SYSCALLS; `tcpretrans --check` \
         lists what this kernel offers"
    );
}

/// A memory cgroup (v2 where its controller is enabled, else v1) holding
/// at most `limit` bytes, removed when dropped.
struct MemoryCgroup {
    dir: PathBuf,
    /// The file with the most it ever held.
    peak: &'static str,
}

impl MemoryCgroup {
    fn new(limit: u64) -> Self {
        let name = format!("tcpretrans-lab-mem-{}", std::process::id());
        let mounts = std::fs::read_to_string("/proc/self/mounts").expect("mounts");
        let mut v2 = None;
        let mut v1 = None;
        for line in mounts.lines() {
            let fields: Vec<&str> = line.split(' ').collect();
            let (dir, kind, options) = (PathBuf::from(fields[1]), fields[2], fields[3]);
            if kind == "cgroup2"
                && std::fs::read_to_string(dir.join("cgroup.subtree_control"))
                    .is_ok_and(|c| c.split_whitespace().any(|c| c == "memory"))
            {
                v2 = Some(dir);
            } else if kind == "cgroup" && options.split(',').any(|o| o == "memory") {
                v1 = Some(dir);
            }
        }
        let (dir, limit_file, peak) = match (v2, v1) {
            (Some(root), _) => (root.join(name), "memory.max", "memory.peak"),
            (None, Some(root)) => (
                root.join(name),
                "memory.limit_in_bytes",
                "memory.max_usage_in_bytes",
            ),
            (None, None) => panic!("this machine has no memory cgroup controller to limit with"),
        };
        std::fs::create_dir(&dir).expect("mkdir memory cgroup");
        let cgroup = Self { dir, peak };
        std::fs::write(cgroup.dir.join(limit_file), limit.to_string()).expect("memory limit");
        cgroup
    }

    /// Runs tcpretrans inside it.
    fn run(&self, args: &[&str]) -> std::process::Output {
        Command::new("sh")
            .arg("-ec")
            .arg("echo $$ > \"$1\"; shift; exec \"$@\"")
            .arg("sh")
            .arg(self.dir.join("cgroup.procs"))
            .arg(env!("CARGO_BIN_EXE_tcpretrans"))
            .args(args)
            .output()
            .expect("running in the cgroup")
    }

    /// The most memory it has held.
    /// The highest usage, where the kernel keeps it (cgroup v2's
    /// `memory.peak` came in 5.19).
    fn peak(&self) -> Option<u64> {
        let peak = std::fs::read_to_string(self.dir.join(self.peak)).ok()?;
        Some(peak.trim().parse().expect("a number"))
    }
}

impl Drop for MemoryCgroup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.dir);
    }
}

/// Maps a 64 MiB memory cgroup cannot hold (a 1 GiB ring buffer, 16M
/// sockets) are refused before any is made: one sentence with the limit,
/// the room left, what the maps need and the option to change. Left to the
/// kernel, such a map fills the cgroup before its allocation fails, and
/// whatever the tool's other threads allocate meanwhile (a directory read
/// by the output's time zone lookup, a page touched) meets the cgroup's OOM
/// killer: SIGKILL, and no sentence.
#[test]
#[ignore = "kernel lab: run `cargo xtask test` as root"]
fn maps_the_kernel_cannot_create_name_the_option_to_change() {
    let cgroup = MemoryCgroup::new(64 << 20);
    let refusal = |args: &[&str], culprit: &str, option: &str| {
        let sentence = the_one_error(&cgroup.run(args));
        let (need, rest) = sentence
            .strip_prefix("tcpretrans: the kernel side's maps need ")
            .and_then(|s| s.split_once(" of memory, "))
            .unwrap_or_else(|| panic!("not the refusal: {sentence}"));
        assert!(need.ends_with(" GiB"), "{sentence}");
        let (said_culprit, rest) = rest
            .split_once(", and start-up ")
            .unwrap_or_else(|| panic!("{sentence}"));
        assert!(said_culprit.ends_with(culprit), "{sentence}");
        let room = format!(" more, but memory cgroup {} has ", cgroup.dir.display());
        let end = format!(" left of its 64 MiB limit: try a smaller {option}, or raise that limit");
        assert!(rest.contains(&room) && rest.ends_with(&end), "{sentence}");
    };
    refusal(
        &["--ring-size", "1G", "--duration", "1"],
        "1 GiB of it for the ring buffer",
        "--ring-size",
    );
    refusal(
        &["--max-sockets", "16777216", "--duration", "1"],
        "of it for the socket map's 16777216 entries",
        "--max-sockets",
    );
    // Refused before the maps were made: the cgroup never came near its
    // limit, where the OOM killer waits.
    if let Some(peak) = cgroup.peak() {
        assert!(peak < 32 << 20, "the cgroup held {peak} bytes");
    }
    // The defaults fit in the same cgroup.
    let fits = cgroup.run(&["--duration", "0.3"]);
    assert!(
        fits.status.success(),
        "{}",
        String::from_utf8_lossy(&fits.stderr)
    );
}

/// A kernel read that fails leaves its field 0, and is counted and said. A
/// BTF whose `sock.sk_socket` is moved onto the socket's first word (its
/// addresses: 127.0.0.1 twice, which no kernel read may touch) makes the
/// inode read of every socket whose owner the kernel side does not know
/// fail. The kernel's own BTF, on the same connection, makes none fail.
#[test]
#[ignore = "kernel lab: run `cargo xtask test` as root"]
fn failed_kernel_reads_are_counted_and_said() {
    let vmlinux = std::fs::read("/sys/kernel/btf/vmlinux").expect("kernel BTF");
    let moved = btf_with_member_at(vmlinux.clone(), "sock", "sk_socket", 0);
    for (name, btf, fails) in [("kernel's", vmlinux, false), ("moved", moved, true)] {
        let file = tempfile::NamedTempFile::new().expect("temporary file");
        std::fs::write(file.path(), btf).expect("writing the BTF");
        let ns = Netns::new("badread");
        let server: SocketAddr = "127.0.0.1:5706".parse().expect("address");
        // Made before the tracer starts: the kernel side learns no owner of
        // the accepted socket, whose CLOSE_WAIT the peer's FIN makes.
        let (listener, client, accepted) = ns
            .enter(move || {
                let listener = TcpListener::bind(server).expect("bind");
                let client = TcpStream::connect(server).expect("connect");
                let (accepted, _) = listener.accept().expect("accept");
                (listener, client, accepted)
            })
            .join()
            .expect("connection");
        let netns = ns.inode.to_string();
        let path = file.path().to_str().expect("UTF-8 path");
        let tracer = Tracer::start(&["--json", "--state", "--netns", &netns, "--btf", path]);
        drop(client);
        // Held while the tracer looks the CLOSE_WAIT's inode up in /proc
        // (it drains every 20 ms).
        thread::sleep(Duration::from_secs(1));
        drop(accepted);
        drop(listener);
        closed(&ns, 5706);
        let output = tracer.stop();
        let summary = output.summary();
        let close_wait = output
            .json_lines()
            .into_iter()
            .find(|e| e["new_state"] == "CLOSE_WAIT")
            .unwrap_or_else(|| panic!("{name}: no CLOSE_WAIT: {}", output.stdout));
        let failed = summary["failed_reads"].as_u64().expect("failed_reads");
        let notice = "tcpretrans: a kernel read failed: the field it fills shows 0 \
                      (the summary counts them)";
        if fails {
            assert!(failed > 0, "{name}: {summary}");
            output.says(notice);
            assert!(
                output
                    .stderr
                    .contains(&format!(", {failed} kernel reads failed")),
                "{}",
                output.stderr
            );
            // No inode, so no owner from /proc.
            assert_eq!(close_wait["pid"], Value::Null, "{close_wait}");
        } else {
            assert_eq!(failed, 0, "{name}: {summary}");
            assert!(!output.stderr.contains(notice), "{}", output.stderr);
            assert_eq!(close_wait["pid"], std::process::id(), "{close_wait}");
        }
        eprintln!("{name} BTF: {failed} kernel reads failed");
    }
}

/// `btf` with member `member` of struct `name` placed at `bit_offset`.
fn btf_with_member_at(mut btf: Vec<u8>, name: &str, member: &str, bit_offset: u32) -> Vec<u8> {
    let u32_at = |btf: &[u8], at: usize| u32::from_le_bytes(btf[at..at + 4].try_into().unwrap());
    assert_eq!(btf[..2], 0xeb9f_u16.to_le_bytes(), "BTF magic");
    let header = u32_at(&btf, 4) as usize;
    let (types, types_len) = (header + u32_at(&btf, 8) as usize, u32_at(&btf, 12) as usize);
    let strings = header + u32_at(&btf, 16) as usize;
    let string = |btf: &[u8], offset: u32| {
        let start = strings + offset as usize;
        let end = start + btf[start..].iter().position(|&b| b == 0).expect("NUL");
        String::from_utf8_lossy(&btf[start..end]).into_owned()
    };
    let mut at = types;
    while at < types + types_len {
        let info = u32_at(&btf, at + 4);
        let (kind, vlen) = ((info >> 24) & 0x1f, (info & 0xffff) as usize);
        let is_struct = kind == 4 && string(&btf, u32_at(&btf, at)) == name;
        at += 12;
        if is_struct {
            for m in (0..vlen).map(|i| at + 12 * i) {
                if string(&btf, u32_at(&btf, m)) == member {
                    btf[m + 8..m + 12].copy_from_slice(&bit_offset.to_le_bytes());
                    return btf;
                }
            }
        }
        // What follows each kind's common part (include/uapi/linux/btf.h).
        at += match kind {
            1 | 14 | 17 => 4,
            3 => 12,
            4 | 5 | 15 | 19 => 12 * vlen,
            6 | 13 => 8 * vlen,
            _ => 0,
        };
    }
    panic!("BTF has no {name}.{member}");
}
