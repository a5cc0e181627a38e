//! Retransmissions of every cause, each made to happen in a namespace of its
//! own and checked against what the kernel itself counted and did.
use std::{
    collections::BTreeMap,
    io::{ErrorKind, Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    process::{Child, Command, Stdio},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use serde_json::Value;

use crate::harness::{
    Netns, Tracer, bulk_upload, closed, connected, delta, drop_inbound, drop_inbound_matching,
    kernel_lacks, kernel_reports_failed_retransmits, of_kind, of_type, seconds, sent_segments,
    skip, unseen_segments,
};

const ETIMEDOUT: i32 = 110;

fn ms(event: &Value, field: &str) -> f64 {
    event[field]
        .as_f64()
        .unwrap_or_else(|| panic!("{field} missing: {event}"))
}

/// A bulk upload through 10% inbound loss: every retransmitted segment is
/// accounted for, fast retransmits among them, each with the socket's
/// state, and the retry limit is the namespace's own `tcp_retries2`.
fn lossy_upload(server: SocketAddr) {
    let ns = Netns::new("loss");
    // Ethernet-sized segments: loss then looks like a real network's.
    ns.ip(&["link", "set", "lo", "mtu", "1500"]);
    ns.sysctl("net.ipv4.tcp_retries2", "9");
    drop_inbound(&ns, server.port(), 10);
    let tracer = Tracer::start(&["--json", "--netns", &ns.inode.to_string()]);
    let attach_time = tracer.attach_time;
    let before = ns.counters();
    let client = bulk_upload(&ns, server, 4 << 20);
    closed(&ns, server.port());
    let after = ns.counters();
    let events = tracer.stop().events();
    let retransmits = of_kind(&events, "retransmit");
    let kernel_segs = delta(&before, &after, "Tcp.RetransSegs");

    assert!(kernel_segs > 0, "10% loss must cause retransmissions");
    assert_eq!(
        sent_segments(&retransmits) + unseen_segments(&retransmits),
        kernel_segs,
        "segments retransmitted: tool (reported and unseen) vs Tcp.RetransSegs"
    );
    assert!(
        !of_type(&retransmits, "FAST").is_empty(),
        "fast retransmits under random loss"
    );
    let family = if server.is_ipv4() { 4 } else { 6 };
    for event in &retransmits {
        assert_eq!(event["netns"], ns.inode, "{event}");
        assert_eq!(event["family"], family, "{event}");
        // The server's FIN, when the client's ACK of it was dropped: the
        // kernel counts it before the connection is gone, and so does this.
        if event["lport"] == server.port() {
            assert_eq!(
                (&event["state"], &event["bytes"]),
                (&"LAST_ACK".into(), &0.into()),
                "{event}"
            );
            continue;
        }
        assert_eq!(
            (&event["laddr"], &event["lport"]),
            (&client.ip().to_string().into(), &client.port().into()),
            "{event}"
        );
        assert_eq!(
            (&event["raddr"], &event["rport"]),
            (&server.ip().to_string().into(), &server.port().into()),
            "{event}"
        );
        // The drop rule can hit the SYN too.
        let state = event["state"].as_str().unwrap_or_default();
        assert!(
            matches!(state, "SYN_SENT" | "ESTABLISHED" | "FIN_WAIT1"),
            "{event}"
        );
        if state != "SYN_SENT" {
            assert_eq!(
                event["retry_limit"], 9,
                "the namespace's tcp_retries2: {event}"
            );
            assert!(
                event["srtt_us"].as_u64().is_some_and(|us| us > 0),
                "{event}"
            );
            assert!(event["cwnd"].as_u64().is_some_and(|c| c > 0), "{event}");
            // A FIN_WAIT1 retransmission may be a bare FIN: 0 payload bytes.
            let bytes = event["bytes"]
                .as_u64()
                .unwrap_or_else(|| panic!("bytes: {event}"));
            assert!(bytes > 0 || state == "FIN_WAIT1", "{event}");
        }
        assert!(ms(event, "rto_ms") >= 200.0, "tcp_rto_min: {event}");
        assert!(
            event["skaddr"]
                .as_str()
                .is_some_and(|s| s.starts_with("0x")),
            "{event}"
        );
    }
    let causes: Vec<&str> = retransmits
        .iter()
        .filter_map(|e| e["type"].as_str())
        .collect();
    eprintln!(
        "lossy upload {server}: {} events {causes:?}; segments: tool {} = kernel Tcp.RetransSegs +{kernel_segs}; \
         exec to attached {attach_time:?}",
        retransmits.len(),
        sent_segments(&retransmits),
    );
}

#[test]
#[ignore = "kernel lab: run `cargo xtask test` as root"]
fn lossy_upload_ipv4_segments_reconcile_with_the_kernel() {
    lossy_upload("127.0.0.1:5201".parse().expect("address"));
}

#[test]
#[ignore = "kernel lab: run `cargo xtask test` as root"]
fn lossy_upload_ipv6_segments_reconcile_with_the_kernel() {
    lossy_upload("[::1]:5202".parse().expect("address"));
}

/// After the handshake the path goes dark: the timer retransmits with a
/// doubling RTO until `tcp_retries2` (lowered here) runs out and the client
/// gets ETIMEDOUT.
#[test]
#[ignore = "kernel lab: run `cargo xtask test` as root"]
fn blackhole_rtos_double_until_the_kernel_gives_up() {
    let ns = Netns::new("hole");
    ns.sysctl("net.ipv4.tcp_retries2", "2");
    let server: SocketAddr = "127.0.0.1:5300".parse().expect("address");
    // --state too: the connection's end must say why.
    let tracer = Tracer::start(&["--json", "--state", "--netns", &ns.inode.to_string()]);
    let (client, _accepted) = connected(&ns, server);
    drop_inbound_matching(&ns, &format!("tcp dport {}", server.port()));
    let before = ns.counters();
    let started = Instant::now();
    (&client).write_all(&[0x5a; 1000]).expect("write");
    client
        .set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    // A socket read with a timeout is not restarted after a signal or a
    // stop/continue of the test process: EINTR is not the connection's end.
    let err = std::iter::repeat_with(|| (&client).read(&mut [0; 16]))
        .take(100)
        .find_map(|read| read.err().filter(|e| e.kind() != ErrorKind::Interrupted))
        .expect("the connection must time out");
    let gave_up_after = started.elapsed();
    let after = ns.counters();
    let events = tracer.stop().events();
    let retransmits = of_kind(&events, "retransmit");
    let rtos = of_type(&retransmits, "RTO");

    assert_eq!(err.raw_os_error(), Some(ETIMEDOUT), "{err}");
    let client_port = client.local_addr().expect("local").port();
    let end = of_kind(&events, "state")
        .into_iter()
        .find(|e| e["lport"] == client_port && e["new_state"] == "CLOSE")
        .expect("the client's CLOSE");
    assert_eq!(
        (&end["old_state"], &end["close"], &end["error"]),
        (&"ESTABLISHED".into(), &"error".into(), &"ETIMEDOUT".into()),
        "{end}"
    );
    assert_eq!(
        sent_segments(&retransmits),
        delta(&before, &after, "Tcp.RetransSegs"),
        "{retransmits:#?}"
    );
    // Every RTO expiry counts in TCPTimeouts; the last one ends the
    // connection instead of retransmitting.
    assert_eq!(
        rtos.len() as i64 + 1,
        delta(&before, &after, "TcpExt.TCPTimeouts"),
        "RTO events vs the kernel's timeouts"
    );
    assert!(rtos.len() >= 3, "{rtos:?}");
    let tolerance_ms = 12.0; // a few jiffies of timer slack
    for (i, pair) in rtos.windows(2).enumerate() {
        let (prev, next) = (pair[0], pair[1]);
        assert_eq!(prev["retries"], i, "retries count up: {prev}");
        assert_eq!(prev["retry_limit"], 2);
        assert_eq!(prev["state"], "ESTABLISHED");
        let (rto, next_rto) = (ms(prev, "rto_ms"), ms(next, "rto_ms"));
        assert!(
            (next_rto - 2.0 * rto).abs() <= tolerance_ms,
            "RTO doubles: {rto} -> {next_rto}"
        );
        // The timer wheel rounds an expiry up, by at most 1/8 of the timeout
        // (plus a jiffy or two): events are spaced by the RTO, never less.
        let gap_ms = (seconds(next) - seconds(prev)) * 1e3;
        assert!(
            gap_ms >= next_rto - tolerance_ms && gap_ms <= next_rto * 1.125 + tolerance_ms,
            "events {gap_ms:.1} ms apart, RTO {next_rto}"
        );
    }
    let rto_ms: Vec<f64> = rtos.iter().map(|e| ms(e, "rto_ms")).collect();
    // The connection's session_end adds up what it went through.
    let session = of_kind(&events, "session_end")
        .into_iter()
        .find(|e| e["lport"] == client_port)
        .expect("the client's session_end");
    let client_retransmits: Vec<&Value> = retransmits
        .iter()
        .copied()
        .filter(|e| e["lport"] == client_port)
        .collect();
    assert_eq!(
        (
            &session["retransmits"],
            &session["by_type"]["RTO"],
            &session["segments"]
        ),
        (
            &client_retransmits.len().into(),
            &rtos.len().into(),
            &sent_segments(&client_retransmits).into()
        ),
        "{session}"
    );
    assert_eq!(
        (&session["close"], &session["error"]),
        (&"error".into(), &"ETIMEDOUT".into()),
        "{session}"
    );
    assert_eq!(
        ms(session, "max_rto_ms"),
        rto_ms.iter().copied().fold(0.0, f64::max),
        "{session}"
    );
    // It began at connect(), before the write that started the clock.
    assert!(
        ms(session, "duration_ms") >= gave_up_after.as_secs_f64() * 1e3 - 20.0,
        "{session} vs {gave_up_after:?}"
    );
    let gaps_ms: Vec<f64> = rtos
        .windows(2)
        .map(|p| ((seconds(p[1]) - seconds(p[0])) * 1e3).round())
        .collect();
    let others: Vec<&str> = retransmits
        .iter()
        .filter_map(|e| e["type"].as_str())
        .filter(|t| *t != "RTO")
        .collect();
    eprintln!(
        "blackhole: RTO events {} (kernel TCPTimeouts +{}), RTOs {rto_ms:?} ms, gaps {gaps_ms:?} ms, \
         other {others:?}, ETIMEDOUT after {gave_up_after:?}",
        rtos.len(),
        delta(&before, &after, "TcpExt.TCPTimeouts"),
    );
}

/// Connecting into a path that drops SYNs: as many SYN retransmissions as
/// the kernel sent (`expected`, which the tool's `retry_limit` predicts),
/// with its RTO sequence, for a linear and an exponential
/// `tcp_syn_linear_timeouts` setting.
fn dropped_syns(syn_retries: u32, linear_timeouts: u32, expected: u32, port: u16) {
    let ns = Netns::new("syn");
    ns.sysctl("net.ipv4.tcp_syn_retries", &syn_retries.to_string());
    // Before 6.7 there are no linear timeouts: every one doubles.
    if !ns.sysctl_if_present(
        "net.ipv4.tcp_syn_linear_timeouts",
        &linear_timeouts.to_string(),
    ) && linear_timeouts > 0
    {
        return skip("the kernel has no net.ipv4.tcp_syn_linear_timeouts (before 6.7)");
    }
    let server: SocketAddr = format!("127.0.0.1:{port}").parse().expect("address");
    drop_inbound_matching(
        &ns,
        &format!("tcp dport {port} tcp flags & (syn | ack) == syn"),
    );
    let tracer = Tracer::start(&["--json", "--netns", &ns.inode.to_string()]);
    let before = ns.counters();
    let err = ns
        .enter(move || {
            let _listener = TcpListener::bind(server).expect("bind");
            TcpStream::connect(server).expect_err("SYNs are dropped")
        })
        .join()
        .expect("connect");
    let after = ns.counters();
    let events = tracer.stop().events();
    let syns = of_type(&of_kind(&events, "retransmit"), "SYN");

    assert_eq!(err.kind(), ErrorKind::TimedOut, "{err}");
    assert_eq!(
        syns.len() as u32,
        expected,
        "SYN retransmissions the kernel made"
    );
    let errors = of_kind(&events, "connect_error");
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(
        (&errors[0]["error"], &errors[0]["rport"]),
        (&"ETIMEDOUT".into(), &port.into())
    );
    let limit = expected;
    assert_eq!(
        syns.len() as i64 + 1,
        delta(&before, &after, "TcpExt.TCPTimeouts"),
        "every SYN timeout but the last retransmitted"
    );
    assert_eq!(
        sent_segments(&syns),
        delta(&before, &after, "Tcp.RetransSegs")
    );
    for (k, syn) in syns.iter().enumerate() {
        // The k-th retransmission's timer: 1 s while linear, then doubling.
        let expected_ms = if k as u32 <= linear_timeouts {
            1000.0
        } else {
            1000.0 * f64::from(1 << (k as u32 - linear_timeouts))
        };
        assert!(
            (ms(syn, "rto_ms") - expected_ms).abs() <= 12.0,
            "SYN {k}: {syn}"
        );
        assert_eq!(
            (&syn["retries"], &syn["retry_limit"]),
            (&k.into(), &limit.into()),
            "{syn}"
        );
        assert_eq!(syn["state"], "SYN_SENT");
        assert_eq!(
            syn["pid"],
            std::process::id(),
            "connect() ran in the test: {syn}"
        );
    }
    let rto_ms: Vec<f64> = syns.iter().map(|e| ms(e, "rto_ms")).collect();
    eprintln!(
        "dropped SYNs (syn_retries {syn_retries}, linear {linear_timeouts}): {} SYN events, RTOs {rto_ms:?} ms, \
         Tcp.RetransSegs +{}",
        syns.len(),
        delta(&before, &after, "Tcp.RetransSegs")
    );
}

#[test]
#[ignore = "kernel lab: run `cargo xtask test` as root"]
fn dropped_syns_exponential_backoff() {
    // SYNs at 0, 1 and 3 s; ETIMEDOUT at 7 s.
    dropped_syns(2, 0, 2, 5401);
}

#[test]
#[ignore = "kernel lab: run `cargo xtask test` as root"]
fn dropped_syns_linear_timeouts() {
    // SYNs at 0, 1 and 2 s; at 3 s the time model for one retry has run out,
    // before the count rule's 1 + 2.
    dropped_syns(1, 2, 2, 5402);
}

/// The client's handshake ACK is lost: the listener retransmits its SYN-ACK.
#[test]
#[ignore = "kernel lab: run `cargo xtask test` as root"]
fn dropped_handshake_ack_retransmits_the_syn_ack() {
    let ns = Netns::new("synack");
    ns.sysctl("net.ipv4.tcp_synack_retries", "3");
    let server: SocketAddr = "127.0.0.1:5500".parse().expect("address");
    // Everything but SYNs to the server: the handshake's ACK never arrives.
    drop_inbound_matching(
        &ns,
        &format!("tcp dport {} tcp flags & syn == 0", server.port()),
    );
    let tracer = Tracer::start(&["--json", "--netns", &ns.inode.to_string()]);
    let before = ns.counters();
    let (done, until_done) = mpsc::channel::<()>();
    let handshake = ns.enter(move || {
        let _listener = TcpListener::bind(server).expect("bind");
        let _client = TcpStream::connect(server).expect("the client's side completes");
        let _ = until_done.recv();
    });
    // SYN-ACK timers: 1 s, then 2 s (which the timer wheel may fire a
    // quarter second late, later on a busy VM); the third would be at 7 s.
    // Until the kernel counted two, bounded.
    let deadline = Instant::now() + Duration::from_secs(6);
    let mut after = ns.counters();
    while delta(&before, &after, "TcpExt.TCPSynRetrans") < 2 && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(100));
        after = ns.counters();
    }
    drop(done);
    handshake.join().expect("handshake");
    let events = tracer.stop().events();
    let retransmits = of_kind(&events, "retransmit");
    let synacks = of_type(&retransmits, "SYNACK");

    assert_eq!(synacks.len(), 2, "{synacks:?}");
    assert_eq!(
        sent_segments(&retransmits),
        delta(&before, &after, "Tcp.RetransSegs")
    );
    for (k, synack) in synacks.iter().enumerate() {
        assert_eq!(
            (&synack["retries"], &synack["retry_limit"]),
            (&k.into(), &3.into()),
            "{synack}"
        );
        // A request socket's timer is `request_sock.timeout` (from 5.12).
        if !kernel_lacks("request_sock.timeout") {
            assert!(
                (ms(synack, "rto_ms") - 1000.0 * f64::from(1 << k)).abs() <= 12.0,
                "{synack}"
            );
        }
        assert_eq!(
            (&synack["lport"], &synack["state"]),
            (&server.port().into(), &"SYN_RECV".into())
        );
        assert_eq!(
            synack["pid"],
            std::process::id(),
            "the listener's owner: {synack}"
        );
    }
    eprintln!(
        "dropped handshake ACK: {} SYNACK events, Tcp.RetransSegs +{}",
        synacks.len(),
        delta(&before, &after, "Tcp.RetransSegs")
    );
}

/// The last segment of a request is lost once: the tail loss probe resends
/// it before any RTO.
#[test]
#[ignore = "kernel lab: run `cargo xtask test` as root"]
fn dropped_tail_segment_is_resent_by_a_loss_probe() {
    const TAIL: usize = 777;
    let ns = Netns::new("tlp");
    let server: SocketAddr = "127.0.0.1:5600".parse().expect("address");
    let tracer = Tracer::start(&["--json", "--netns", &ns.inode.to_string()]);
    let (client, mut accepted) = connected(&ns, server);
    // IPv4 + TCP with timestamps: 20 + 32 header bytes. `limit` matches (and
    // so drops) only the first such packet; the probe gets through.
    drop_inbound_matching(
        &ns,
        &format!(
            "tcp dport {} ip length {} limit rate 1/hour burst 1 packets",
            server.port(),
            52 + TAIL
        ),
    );
    let before = ns.counters();
    client.set_nodelay(true).expect("nodelay");
    (&client).write_all(&[0x5a; 1000]).expect("head");
    (&client).write_all(&[0x5b; TAIL]).expect("tail");
    accepted
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let mut received = vec![0; 1000 + TAIL];
    accepted
        .read_exact(&mut received)
        .expect("the tail arrives");
    thread::sleep(Duration::from_millis(50));
    let after = ns.counters();
    let events = tracer.stop().events();
    let retransmits = of_kind(&events, "retransmit");
    let tlps = of_type(&retransmits, "TLP");

    assert_eq!(tlps.len(), 1, "{retransmits:?}");
    assert_eq!(
        (&tlps[0]["bytes"], &tlps[0]["segs"]),
        (&TAIL.into(), &1.into()),
        "{}",
        tlps[0]
    );
    assert!(
        of_type(&retransmits, "RTO").is_empty(),
        "the probe came first: {retransmits:?}"
    );
    assert_eq!(
        sent_segments(&retransmits),
        delta(&before, &after, "Tcp.RetransSegs")
    );
    assert_eq!(
        delta(&before, &after, "TcpExt.TCPLossProbes"),
        1,
        "the kernel counted one probe"
    );
    eprintln!(
        "dropped tail: TLP after {:?}, kernel TCPLossProbes +1",
        tlps[0]["time"]
    );
}

/// `iperf3 -s` in a namespace, killed when the test ends (also when it fails).
struct Iperf3Server(Child);

impl Iperf3Server {
    fn start(ns: &Netns, port: u16) -> Self {
        let child = Command::new("ip")
            .args([
                "netns",
                "exec",
                &ns.name,
                "iperf3",
                "-s",
                "-p",
                &port.to_string(),
            ])
            .stdout(Stdio::null())
            .spawn()
            .expect("starting iperf3 (apt-get install iperf3)");
        let server = Self(child);
        let deadline = Instant::now() + Duration::from_secs(5);
        let filter = format!("sport = :{port}");
        while ns.exec(&["ss", "-Htln", &filter]).trim().is_empty() {
            assert!(Instant::now() < deadline, "iperf3 -s did not listen");
            thread::sleep(Duration::from_millis(20));
        }
        server
    }
}

impl Drop for Iperf3Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Sums of retransmit events: `(sent, segments of the sent, failed)`.
fn attempts<'a>(events: impl IntoIterator<Item = &'a Value>) -> (u64, i64, u64) {
    let events: Vec<&Value> = events.into_iter().collect();
    let failed = events.iter().filter(|e| e["err"] != 0).count() as u64;
    (events.len() as u64 - failed, sent_segments(&events), failed)
}

/// `(retransmits, segments, failed)` of a `session_end`, `flow` or `summary`.
fn account(event: &Value) -> (u64, i64, u64) {
    let field = |name: &str| {
        event[name]
            .as_i64()
            .unwrap_or_else(|| panic!("{name} missing: {event}"))
    };
    (
        field("retransmits") as u64,
        field("segments"),
        field("failed") as u64,
    )
}

/// iperf3 over a veth pair with inbound loss at the receiver: some
/// retransmissions find their skb's previous copy still queued in the host
/// and fail (`EBUSY`). They are reported, marked, and counted apart in
/// every account — the connection's, the flow's, the session's — while the
/// sent ones' segments, with those the kernel failed to send and those it
/// retransmitted unseen, add up to `Tcp.RetransSegs` exactly.
#[test]
#[ignore = "kernel lab: run `cargo xtask test` as root"]
fn failed_retransmissions_are_counted_apart_from_sent_ones() {
    const PORT: u16 = 5210;
    if !kernel_reports_failed_retransmits() {
        return skip(
            "tcp:tcp_retransmit_skb has no `err` field, so no failed attempts (before 6.17)",
        );
    }
    let client = Netns::new("busyc");
    let server = Netns::new("busys");
    client.ip(&[
        "link",
        "add",
        "vc",
        "type",
        "veth",
        "peer",
        "name",
        "vs",
        "netns",
        &server.name,
    ]);
    client.ip(&["addr", "add", "10.77.0.1/24", "dev", "vc"]);
    server.ip(&["addr", "add", "10.77.0.2/24", "dev", "vs"]);
    client.ip(&["link", "set", "vc", "up"]);
    server.ip(&["link", "set", "vs", "up"]);
    drop_inbound(&server, PORT, 2);
    let _iperf3 = Iperf3Server::start(&server, PORT);
    let netns = client.inode.to_string();
    let per_event = Tracer::start(&["--json", "--state", "--netns", &netns]);
    let counted = Tracer::start(&["--json", "-c", "--netns", &netns]);
    let before = client.counters();
    // Whether a retransmission finds its skb still queued depends on the
    // CPUs' timing: rounds until the kernel counted such attempts, bounded.
    let mut rounds = 0;
    while rounds < 8
        && delta(
            &before,
            &client.counters(),
            "TcpExt.TCPSpuriousRtxHostQueues",
        ) == 0
    {
        client.exec(&[
            "iperf3",
            "-c",
            "10.77.0.2",
            "-p",
            &PORT.to_string(),
            "-t",
            "2",
        ]);
        rounds += 1;
    }
    // Until every connection has ended (a FIN lost to the drop rule is
    // retransmitted), bounded.
    let deadline = Instant::now() + Duration::from_secs(10);
    let open = format!("dport = :{PORT}");
    while !client
        .exec(&["ss", "-Htn", "exclude", "time-wait", &open])
        .trim()
        .is_empty()
        && Instant::now() < deadline
    {
        thread::sleep(Duration::from_millis(50));
    }
    let after = client.counters();
    let output = per_event.stop();
    let events = output.events();
    let summary = output.summary();
    let flows = counted.stop().flows();
    let retransmits = of_kind(&events, "retransmit");
    let (sent, sent_segs, failed) = attempts(retransmits.iter().copied());
    let kernel_segs = delta(&before, &after, "Tcp.RetransSegs");
    let kernel_failed = delta(&before, &after, "TcpExt.TCPRetransFail");
    let in_host_queue = delta(&before, &after, "TcpExt.TCPSpuriousRtxHostQueues");

    assert!(failed > 0, "no failed attempt in {rounds} rounds");
    for event in retransmits.iter().filter(|e| e["err"] != 0) {
        assert!(event["segs"].as_u64().is_some_and(|s| s > 0), "{event}");
    }
    let busy = retransmits.iter().filter(|e| e["err"] == -16).count() as i64;
    // The kernel counts every attempt that found its skb queued, also a
    // loss probe's, which gives up before the tracepoint.
    assert!(
        busy <= in_host_queue,
        "{busy} EBUSY events, TCPSpuriousRtxHostQueues +{in_host_queue}"
    );
    // The kernel counts a segment before sending it, and again when the
    // send fails (TCPRetransFail): those are neither sent nor unseen.
    // Segments it sent that no event carried, the tool did not see: with
    // nothing lost, each is one a socket's own count shows retransmitted
    // without a program run (this machine's softirqs on process 1).
    let unseen = summary["unseen"].as_i64().expect("unseen");
    assert_eq!(unseen, summary["unseen_segments"], "{summary}");
    assert_eq!(
        sent_segs + unseen + kernel_failed,
        kernel_segs,
        "segments sent, unseen and failed to send vs Tcp.RetransSegs"
    );
    let all_segs: i64 = retransmits.iter().filter_map(|e| e["segs"].as_i64()).sum();
    assert!(
        all_segs > kernel_segs,
        "failed attempts' segments are not the kernel's"
    );

    // The session's, the connections' and the flows' accounts: one rule.
    assert_eq!(account(&summary), (sent, sent_segs, failed), "{summary}");
    assert_eq!(
        (
            &summary["kernel_retransmitted_segments"],
            &summary["kernel_failed_segments"],
            &summary["reported_segments"],
            &summary["unseen"]
        ),
        (
            &kernel_segs.into(),
            &kernel_failed.into(),
            &sent_segs.into(),
            &unseen.into()
        ),
        "{summary}"
    );
    let mut by_port: BTreeMap<u64, Vec<&Value>> = BTreeMap::new();
    for event in &retransmits {
        by_port
            .entry(event["lport"].as_u64().expect("lport"))
            .or_default()
            .push(event);
    }
    let ends: BTreeMap<u64, &Value> = of_kind(&events, "session_end")
        .into_iter()
        .filter(|e| e["rport"] == PORT)
        .map(|e| (e["lport"].as_u64().expect("lport"), e))
        .collect();
    for (port, attempted) in &by_port {
        let end = ends
            .get(port)
            .unwrap_or_else(|| panic!("no session_end for port {port}"));
        assert_eq!(account(end), attempts(attempted.iter().copied()), "{end}");
    }
    let flow_totals = flows
        .iter()
        .map(account)
        .fold((0, 0, 0), |t, f| (t.0 + f.0, t.1 + f.1, t.2 + f.2));
    assert_eq!(flow_totals, (sent, sent_segs, failed), "{flows:?}");
    eprintln!(
        "iperf3 over veth, {rounds} rounds: {sent} retransmissions sent ({sent_segs} segments \
         + {unseen} unseen + {kernel_failed} failed to send = Tcp.RetransSegs +{kernel_segs}), \
         {failed} failed ({busy} EBUSY; TCPSpuriousRtxHostQueues +{in_host_queue}), \
         {all_segs} segments attempted"
    );
}

/// A retransmission the kernel counts in `Tcp.RetransSegs` and then fails
/// to send (here a token bucket's full queue drops it) is counted again in
/// `TcpExt.TCPRetransFail`: the tool's check against the kernel takes
/// those out, so they are neither reported as sent nor said to be unseen,
/// and since 6.17 each one is a failed attempt marked `NET_XMIT_DROP`.
#[test]
#[ignore = "kernel lab: run `cargo xtask test` as root"]
fn retransmissions_a_local_queue_drops_are_the_kernels_failed_ones() {
    const PORT: u16 = 5212;
    let ns = Netns::new("qdrop");
    ns.ip(&["link", "set", "lo", "mtu", "1500"]);
    ns.exec(&[
        "tc", "qdisc", "add", "dev", "lo", "root", "tbf", "rate", "10mbit", "burst", "4kb",
        "limit", "4kb",
    ]);
    drop_inbound(&ns, PORT, 5);
    let _iperf3 = Iperf3Server::start(&ns, PORT);
    let tracer = Tracer::start(&["--json", "--netns", &ns.inode.to_string()]);
    let before = ns.counters();
    // Random loss makes retransmissions, and four streams keep the
    // bucket's queue full enough that some find it so; rounds bounded.
    let mut rounds = 0;
    while rounds < 4 && delta(&before, &ns.counters(), "TcpExt.TCPRetransFail") == 0 {
        ns.exec(&[
            "iperf3",
            "-c",
            "127.0.0.1",
            "-p",
            &PORT.to_string(),
            "-t",
            "1",
            "-P",
            "4",
        ]);
        rounds += 1;
    }
    closed(&ns, PORT);
    let after = ns.counters();
    let (status, output) = tracer.stop_with_status();
    let events = output.events();
    let summary = output.summary();
    let retransmits = of_kind(&events, "retransmit");
    let kernel_segs = delta(&before, &after, "Tcp.RetransSegs");
    let kernel_failed = delta(&before, &after, "TcpExt.TCPRetransFail");

    assert!(kernel_failed > 0, "no send failed in {rounds} rounds");
    let (sent, sent_segs, failed) = attempts(retransmits.iter().copied());
    let unseen = summary["unseen"].as_i64().expect("unseen");
    assert_eq!(
        (
            &summary["kernel_retransmitted_segments"],
            &summary["kernel_failed_segments"],
            &summary["reported_segments"]
        ),
        (
            &kernel_segs.into(),
            &kernel_failed.into(),
            &sent_segs.into()
        ),
        "{summary}"
    );
    assert_eq!(sent_segs + unseen + kernel_failed, kernel_segs, "{summary}");
    // Exit status 4 says segments went unseen, never failed ones.
    assert_eq!(status.success(), unseen == 0, "{status}: {}", output.stderr);
    output.says(&format!(
        "tcpretrans: netns {}: kernel counted {kernel_segs} retransmitted segments \
         ({kernel_failed} failed to send), {sent_segs} reported{}",
        ns.inode,
        if unseen > 0 {
            format!(": {unseen} not seen (0 events lost)")
        } else {
            String::new()
        }
    ));
    let dropped: i64 = retransmits
        .iter()
        .filter(|e| e["err"] == 1)
        .map(|e| e["segs"].as_i64().expect("segs"))
        .sum();
    // The sockets' own counts hold every segment counted, failed or not:
    // a failed attempt is a baseline where the tracepoint reports it, and
    // before that it is a gap, as one the kernel ran no program for is.
    let in_gaps = summary["unseen_segments"]
        .as_i64()
        .expect("unseen_segments");
    if kernel_reports_failed_retransmits() {
        assert!(
            dropped > 0 && dropped <= kernel_failed,
            "{dropped} of {kernel_failed}"
        );
        assert_eq!(in_gaps, unseen, "{summary}");
    } else {
        assert_eq!(
            failed, 0,
            "no failed attempt reaches the tracepoint before 6.17"
        );
        assert!(in_gaps <= unseen + kernel_failed, "{summary}");
    }
    eprintln!(
        "tbf queue, {rounds} rounds: {sent} retransmissions sent ({sent_segs} segments + \
         {unseen} unseen + {kernel_failed} failed to send = Tcp.RetransSegs +{kernel_segs}); \
         {failed} failed attempts, {dropped} segments of them NET_XMIT_DROP; {in_gaps} segments \
         in the sockets' gaps"
    );
}

/// The exit summary checks the tool against the kernel: after a lossy
/// upload, the namespace's `Tcp.RetransSegs` increase over the session is
/// the segments reported, said on stderr and in the JSON summary, and the
/// session exits 0.
#[test]
#[ignore = "kernel lab: run `cargo xtask test` as root"]
fn the_exit_summary_holds_the_reported_segments_against_the_kernels_count() {
    let ns = Netns::new("reconcile");
    ns.ip(&["link", "set", "lo", "mtu", "1500"]);
    let server: SocketAddr = "127.0.0.1:5211".parse().expect("address");
    drop_inbound(&ns, server.port(), 10);
    let tracer = Tracer::start(&["--json", "--netns", &ns.inode.to_string()]);
    let before = ns.counters();
    bulk_upload(&ns, server, 2 << 20);
    let uploaded = ns.counters();
    let output = tracer.stop();
    // The tool read its count after its programs detached: between these.
    let stopped = ns.counters();
    let events = output.events();
    let summary = output.summary();
    let kernel = summary["kernel_retransmitted_segments"]
        .as_i64()
        .unwrap_or_else(|| panic!("not compared: {summary}"));
    let reported = sent_segments(&of_kind(&events, "retransmit"));

    assert!(delta(&before, &uploaded, "Tcp.RetransSegs") > 0, "10% loss");
    assert!(
        (delta(&before, &uploaded, "Tcp.RetransSegs")
            ..=delta(&before, &stopped, "Tcp.RetransSegs"))
            .contains(&kernel),
        "{summary}"
    );
    assert_eq!(
        (
            &summary["compared_netns"],
            &summary["reported_segments"],
            &summary["unseen"],
            &summary["not_compared"]
        ),
        (&ns.inode.into(), &kernel.into(), &0.into(), &Value::Null),
        "{summary}"
    );
    assert_eq!(reported, kernel, "the printed events add up to it");
    let line = format!(
        "tcpretrans: netns {}: kernel counted {kernel} retransmitted segments, {kernel} reported",
        ns.inode
    );
    output.says(&line);
    eprintln!("{line}");
}
