//! What the tool does when this machine offers less: no BTF, no privileges.
use std::{
    net::{SocketAddr, TcpListener, TcpStream},
    process::Command,
};

use crate::harness::{Netns, Tracer, drop_inbound_matching, of_kind};

/// Without BTF the tool still traces; what needs BTF is null, and stderr
/// says so once.
#[test]
#[ignore = "kernel lab: run `cargo xtask test` as root"]
fn without_btf_fields_are_null_and_stderr_says_so_once() {
    let ns = Netns::new("nobtf");
    ns.sysctl("net.ipv4.tcp_syn_retries", "1");
    ns.sysctl("net.ipv4.tcp_syn_linear_timeouts", "0");
    let port = 5701;
    let server: SocketAddr = format!("127.0.0.1:{port}").parse().expect("address");
    drop_inbound_matching(
        &ns,
        &format!("tcp dport {port} tcp flags & (syn | ack) == syn"),
    );
    // No namespace filter without BTF: this test's events are told apart by port.
    let tracer = Tracer::start(&["--json", "-4", "--btf", "/nonexistent/vmlinux"]);
    ns.enter(move || {
        let _listener = TcpListener::bind(server).expect("bind");
        TcpStream::connect(server).expect_err("SYNs are dropped")
    })
    .join()
    .expect("connect");
    let output = tracer.stop();
    let events = output.events();
    let syns: Vec<_> = of_kind(&events, "retransmit")
        .into_iter()
        .filter(|e| e["rport"] == port)
        .collect();
    assert_eq!(syns.len(), 1, "{syns:?}");
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
        "net.ipv4.tcp_syn_linear_timeouts",
        "net.ipv4.ip_local_port_range",
        "programs    load, verify and attach: ok",
        "result      tcpretrans can trace here",
    ] {
        assert!(
            report.contains(expected),
            "`{expected}` missing from:\n{report}"
        );
    }
    assert!(!report.contains("MISSING"), "{report}");
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
