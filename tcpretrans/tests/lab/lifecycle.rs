//! Connection lifecycles seen through `--state`.
use std::net::SocketAddr;

use std::{
    io::{ErrorKind, Read, Write},
    net::{TcpListener, TcpStream},
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    process::Command,
    time::Duration,
};

use nix::sys::socket::{Backlog, SockaddrIn, bind, connect, listen, setsockopt, sockopt};
use serde_json::Value;

use crate::harness::{
    Netns, Tracer, connected, delta, drop_inbound_matching, of_kind, short_connection, skip,
    transitions,
};

fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter()
        .map(|&(a, b)| (a.to_owned(), b.to_owned()))
        .collect()
}

/// State events of one socket, in order.
fn socket_events<'a>(states: &[&'a Value], skaddr: &Value) -> Vec<&'a Value> {
    states
        .iter()
        .copied()
        .filter(|e| &e["skaddr"] == skaddr)
        .collect()
}

/// The skaddr of the socket whose event matches `pred`.
fn skaddr_where(states: &[&Value], pred: impl Fn(&Value) -> bool) -> Value {
    states
        .iter()
        .find(|e| pred(e))
        .map(|e| e["skaddr"].clone())
        .expect("socket not seen")
}

#[test]
#[ignore = "kernel lab: run `cargo xtask test` as root"]
fn client_and_server_transitions_appear_in_order() {
    client_and_server_transitions(&[]);
}

/// BTF from a file, not the kernel's own (whose type ids a BTF tracepoint
/// is named by), puts the state hook on its raw tracepoint programs: they
/// see the same.
#[test]
#[ignore = "kernel lab: run `cargo xtask test` as root"]
fn raw_state_programs_see_the_same_transitions() {
    let copy = kernel_btf_copy();
    let btf = copy.path().to_str().expect("UTF-8 path");
    let check = Command::new(env!("CARGO_BIN_EXE_tcpretrans"))
        .args(["--check", "--btf", btf])
        .output()
        .expect("running --check");
    let report = String::from_utf8_lossy(&check.stdout);
    assert!(
        report.contains("of 7 hooks, 0 on BTF and 3 on raw tracepoints)"),
        "{report}"
    );
    client_and_server_transitions(&["--btf", btf]);
}

/// The kernel's BTF in a file of its own, which makes the tool run the state
/// hook's raw programs.
fn kernel_btf_copy() -> tempfile::NamedTempFile {
    let copy = tempfile::NamedTempFile::new().expect("temporary file");
    std::fs::copy("/sys/kernel/btf/vmlinux", copy.path()).expect("copying the kernel's BTF");
    copy
}

/// MPTCP's own sockets change state through the same tracepoint as TCP's,
/// as protocol 262, which a one-byte read of `sk_protocol` takes for TCP's
/// 6. Only an MPTCP connection's subflows, which are TCP sockets, are TCP
/// connections: the BTF and the raw state programs report those alone.
#[test]
#[ignore = "kernel lab: run `cargo xtask test` as root"]
fn mptcp_connections_show_only_their_tcp_subflows() {
    if !kernel_has_mptcp() {
        return skip("the kernel is built without CONFIG_MPTCP");
    }
    mptcp_subflows_alone(&[]);
    let copy = kernel_btf_copy();
    mptcp_subflows_alone(&["--btf", copy.path().to_str().expect("UTF-8 path")]);
}

fn mptcp_subflows_alone(args: &[&str]) {
    const PORT: u16 = 8085;
    let ns = Netns::new("mptcp");
    let netns = ns.inode.to_string();
    let mut tracer_args = vec!["--json", "--state", "--netns", &netns];
    tracer_args.extend_from_slice(args);
    let tracer = Tracer::start(&tracer_args);
    ns.enter(|| {
        let server = SockaddrIn::new(127, 0, 0, 1, PORT);
        let listening = mptcp_socket();
        bind(listening.as_raw_fd(), &server).expect("bind");
        listen(&listening, Backlog::new(8).expect("backlog")).expect("listen");
        let listener = TcpListener::from(listening);
        let connecting = mptcp_socket();
        connect(connecting.as_raw_fd(), &server).expect("connect");
        let mut client = TcpStream::from(connecting);
        let (mut accepted, _) = listener.accept().expect("accept");
        client.write_all(b"x").expect("write");
        drop(client);
        let mut received = Vec::new();
        accepted
            .read_to_end(&mut received)
            .expect("read to the client's FIN");
        assert_eq!(received, b"x");
    })
    .join()
    .expect("MPTCP connection");
    let events = tracer.stop().events();
    let states = of_kind(&events, "state");
    let sockets: std::collections::BTreeSet<String> =
        states.iter().map(|e| e["skaddr"].to_string()).collect();
    let seen = transitions(&states);
    assert_eq!(
        sockets.len(),
        3,
        "the listening, connecting and accepted subflows ({args:?}): {seen:?}"
    );
    for expected in pairs(&[
        ("CLOSE", "LISTEN"),
        ("CLOSE", "SYN_SENT"),
        ("LISTEN", "SYN_RECV"),
    ]) {
        assert!(seen.contains(&expected), "{expected:?} in {seen:?}");
    }
}

/// A stream socket of `IPPROTO_MPTCP`.
/// Whether this kernel has MPTCP (Debian's 5.10 is built without it).
fn kernel_has_mptcp() -> bool {
    use nix::libc;
    // SAFETY: no pointers; a descriptor made is closed at once.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM, libc::IPPROTO_MPTCP) };
    if fd >= 0 {
        // SAFETY: a new descriptor that nothing else owns.
        drop(unsafe { OwnedFd::from_raw_fd(fd) });
    }
    fd >= 0 || std::io::Error::last_os_error().raw_os_error() != Some(libc::EPROTONOSUPPORT)
}

fn mptcp_socket() -> OwnedFd {
    use nix::libc;
    // SAFETY: no pointers; the descriptor is owned from here on.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM, libc::IPPROTO_MPTCP) };
    assert!(
        fd >= 0,
        "an MPTCP socket: {} (net.mptcp.enabled must be 1)",
        std::io::Error::last_os_error()
    );
    // SAFETY: a new descriptor that nothing else owns.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

fn client_and_server_transitions(args: &[&str]) {
    let ns = Netns::new("life");
    let server: SocketAddr = "127.0.0.1:8080".parse().expect("address");
    let netns = ns.inode.to_string();
    let mut tracer_args = vec!["--json", "--state", "--netns", &netns];
    tracer_args.extend_from_slice(args);
    let tracer = Tracer::start(&tracer_args);
    let client = short_connection(&ns, server);
    let events = tracer.stop().events();
    let states = of_kind(&events, "state");
    assert!(
        states.iter().all(|e| e["netns"] == ns.inode),
        "only the lab namespace"
    );

    // The client socket: identified by its local port once connected.
    let client_sk = skaddr_where(&states, |e| {
        e["lport"] == client.port() && e["new_state"] == "ESTABLISHED"
    });
    let client_events = socket_events(&states, &client_sk);
    assert_eq!(
        transitions(&client_events),
        pairs(&[
            ("CLOSE", "SYN_SENT"),
            ("SYN_SENT", "ESTABLISHED"),
            ("ESTABLISHED", "FIN_WAIT1"),
            ("FIN_WAIT1", "FIN_WAIT2"),
            // The tracepoint says FIN_WAIT2 -> CLOSE; the tool sees the
            // timewait socket that took over.
            ("FIN_WAIT2", "TIME_WAIT"),
        ])
    );
    assert_eq!(client_events[4]["close"], "time_wait");
    // connect() runs in the test process: its owner is known from the start.
    assert_eq!(
        client_events[0]["pid"],
        std::process::id(),
        "{}",
        client_events[0]
    );
    assert!(
        client_events[0]["prev_state_ms"].is_null(),
        "no earlier state was seen"
    );
    for e in &client_events[1..] {
        let ms = e["prev_state_ms"]
            .as_f64()
            .unwrap_or_else(|| panic!("duration missing: {e}"));
        assert!((0.0..20_000.0).contains(&ms), "{e}");
        assert_eq!(e["rport"], server.port(), "{e}");
        assert_eq!(e["raddr"], "127.0.0.1", "{e}");
    }

    // The accepted socket: the server side of the same 4-tuple.
    let accepted_sk = skaddr_where(&states, |e| {
        e["lport"] == server.port() && e["rport"] == client.port()
    });
    assert_eq!(
        transitions(&socket_events(&states, &accepted_sk)),
        pairs(&[
            ("LISTEN", "SYN_RECV"),
            ("SYN_RECV", "ESTABLISHED"),
            ("ESTABLISHED", "CLOSE_WAIT"),
            ("CLOSE_WAIT", "LAST_ACK"),
            ("LAST_ACK", "CLOSE"),
        ])
    );

    // The listener.
    let listener_sk = skaddr_where(&states, |e| e["new_state"] == "LISTEN");
    let listener = socket_events(&states, &listener_sk);
    assert_eq!(
        transitions(&listener),
        pairs(&[("CLOSE", "LISTEN"), ("LISTEN", "CLOSE")])
    );
    assert_eq!(listener[0]["lport"], server.port());
    assert_eq!(listener[0]["pid"], std::process::id());
}

#[test]
#[ignore = "kernel lab: run `cargo xtask test` as root"]
fn state_list_keeps_only_transitions_touching_those_states() {
    let ns = Netns::new("filter");
    let server: SocketAddr = "127.0.0.1:8081".parse().expect("address");
    let tracer = Tracer::start(&[
        "--json",
        "--state=fin_wait1",
        "--netns",
        &ns.inode.to_string(),
    ]);
    let client = short_connection(&ns, server);
    let events = tracer.stop().events();
    let states = of_kind(&events, "state");
    assert_eq!(
        transitions(&states),
        pairs(&[("ESTABLISHED", "FIN_WAIT1"), ("FIN_WAIT1", "FIN_WAIT2")]),
        "only the client's FIN_WAIT1 entry and exit"
    );
    assert!(states.iter().all(|e| e["lport"] == client.port()));
    // Durations stay right although the kernel dropped the other transitions.
    assert!(
        states.iter().all(|e| e["prev_state_ms"].as_f64().is_some()),
        "{states:?}"
    );
}

/// Connections closed actively by their client, each as its own socket.
fn closed_by_client(ns: &Netns, server: SocketAddr, count: usize) -> Vec<u16> {
    ns.enter(move || {
        let listener = TcpListener::bind(server).expect("bind");
        (0..count)
            .map(|_| {
                let client = TcpStream::connect(server).expect("connect");
                let port = client.local_addr().expect("local").port();
                let (mut accepted, _) = listener.accept().expect("accept");
                drop(client);
                accepted
                    .set_read_timeout(Some(Duration::from_secs(5)))
                    .expect("timeout");
                assert_eq!(accepted.read(&mut [0; 1]).expect("EOF"), 0);
                port
            })
            .collect()
    })
    .join()
    .expect("connections")
}

/// `ss -tan state time-wait` in the namespace: how many it holds.
fn time_wait_sockets(ns: &Netns) -> usize {
    ns.exec(&["ss", "-Htan", "state", "time-wait"])
        .lines()
        .filter(|l| !l.trim().is_empty())
        .count()
}

/// `new_state` values of the transitions away from FIN_WAIT2/CLOSING.
fn endings<'a>(states: &[&'a Value]) -> Vec<&'a Value> {
    states
        .iter()
        .copied()
        .filter(|e| matches!(e["old_state"].as_str(), Some("FIN_WAIT2" | "CLOSING")))
        .collect()
}

#[test]
#[ignore = "kernel lab: run `cargo xtask test` as root"]
fn active_closes_enter_time_wait_as_ss_counts_them() {
    const CONNECTIONS: usize = 20;
    let ns = Netns::new("tw");
    let server: SocketAddr = "127.0.0.1:8100".parse().expect("address");
    let tracer = Tracer::start(&["--json", "--state", "--netns", &ns.inode.to_string()]);
    let ports = closed_by_client(&ns, server, CONNECTIONS);
    let held = time_wait_sockets(&ns);
    let events = tracer.stop().events();
    // Handed to a timewait socket: in TIME_WAIT, or still in FIN_WAIT2 when
    // the client's close was done before the server's ACK came (the
    // timewait socket moves on to TIME_WAIT when the server's FIN arrives,
    // without a tracepoint; `ss` then counts it).
    let entries: Vec<&Value> = endings(&of_kind(&events, "state"))
        .into_iter()
        .filter(|e| {
            matches!(
                e["close"].as_str(),
                Some("time_wait" | "fin_wait2_timewait")
            )
        })
        .collect();

    assert_eq!(held, CONNECTIONS, "ss");
    assert_eq!(entries.len(), held, "TIME_WAIT entries: tool vs ss");
    for (event, port) in entries.iter().zip(&ports) {
        assert_eq!(event["lport"], *port, "{event}");
    }
    assert!(of_kind(&events, "time_wait_overflow").is_empty());
    eprintln!("TIME_WAIT entries: tool {} = ss {held}", entries.len());
}

#[test]
#[ignore = "kernel lab: run `cargo xtask test` as root"]
fn time_wait_overflow_is_reported_per_connection() {
    const CONNECTIONS: usize = 8;
    const BUCKETS: usize = 3;
    let ns = Netns::new("twmax");
    ns.sysctl("net.ipv4.tcp_max_tw_buckets", &BUCKETS.to_string());
    let server: SocketAddr = "127.0.0.1:8101".parse().expect("address");
    let tracer = Tracer::start(&["--json", "--state", "--netns", &ns.inode.to_string()]);
    let before = ns.counters();
    let ports = closed_by_client(&ns, server, CONNECTIONS);
    let after = ns.counters();
    let held = time_wait_sockets(&ns);
    let output = tracer.stop();
    let events = output.events();
    let summary = output.summary();
    assert_eq!(summary["netns"][0]["netns"], ns.inode, "{summary}");
    assert_eq!(
        (
            &summary["netns"][0]["time_wait"],
            &summary["netns"][0]["tcp_max_tw_buckets"]
        ),
        (&BUCKETS.into(), &BUCKETS.into()),
        "the exit summary: TIME_WAIT held vs tcp_max_tw_buckets"
    );
    // In TIME_WAIT, or still in FIN_WAIT2 when the client's close came
    // before the server's FIN (a slow machine): a timewait socket either way.
    let entered: Vec<&Value> = endings(&of_kind(&events, "state"))
        .into_iter()
        .filter(|e| {
            matches!(
                e["close"].as_str(),
                Some("time_wait" | "fin_wait2_timewait")
            )
        })
        .collect();
    let overflows = of_kind(&events, "time_wait_overflow");
    let kernel_overflows = delta(&before, &after, "TcpExt.TCPTimeWaitOverflow");

    assert_eq!(
        (held, entered.len()),
        (BUCKETS, BUCKETS),
        "TIME_WAIT: ss vs tool"
    );
    assert_eq!(
        overflows.len() as i64,
        kernel_overflows,
        "overflows: tool vs TCPTimeWaitOverflow"
    );
    assert_eq!(overflows.len(), CONNECTIONS - BUCKETS);
    for event in &overflows {
        assert_eq!(
            (&event["old_state"], &event["new_state"]),
            (&"FIN_WAIT2".into(), &"CLOSE".into()),
            "{event}"
        );
        let lport = event["lport"].as_u64().expect("lport") as u16;
        assert!(
            ports.contains(&lport),
            "the overflowing connection's own 4-tuple: {event}"
        );
        assert_eq!(event["rport"], server.port());
    }
    eprintln!(
        "TIME_WAIT overflow: tool {} = kernel TCPTimeWaitOverflow +{kernel_overflows}; entries {} = ss {held}",
        overflows.len(),
        entered.len()
    );
}

/// An MPTCP `connect()` that fails is reported like a TCP one (its socket
/// is not TCP, its subflow has no descriptor).
#[test]
#[ignore = "kernel lab: run `cargo xtask test` as root"]
fn refused_mptcp_connect_is_reported() {
    if !kernel_has_mptcp() {
        return skip("the kernel is built without CONFIG_MPTCP");
    }
    let ns = Netns::new("mprefused");
    let tracer = Tracer::start(&["--json", "--netns", &ns.inode.to_string()]);
    let refused = ns
        .enter(|| {
            let socket = mptcp_socket();
            connect(socket.as_raw_fd(), &SockaddrIn::new(127, 0, 0, 1, 8103))
        })
        .join()
        .expect("connect");
    let events = tracer.stop().events();
    assert_eq!(refused, Err(nix::errno::Errno::ECONNREFUSED));
    let errors = of_kind(&events, "connect_error");
    assert_eq!(errors.len(), 1, "{events:?}");
    assert_eq!(
        (&errors[0]["error"], &errors[0]["rport"], &errors[0]["pid"]),
        (
            &"ECONNREFUSED".into(),
            &8103.into(),
            &std::process::id().into()
        )
    );
}

#[test]
#[ignore = "kernel lab: run `cargo xtask test` as root"]
fn refused_connect_is_a_received_reset_with_econnrefused() {
    let ns = Netns::new("refused");
    let tracer = Tracer::start(&["--json", "--state", "--netns", &ns.inode.to_string()]);
    let err = ns
        .enter(|| TcpStream::connect("127.0.0.1:8102").expect_err("nothing listens"))
        .join()
        .expect("connect");
    let events = tracer.stop().events();
    assert_eq!(err.kind(), ErrorKind::ConnectionRefused);
    let errors = of_kind(&events, "connect_error");
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(
        (&errors[0]["error"], &errors[0]["rport"]),
        (&"ECONNREFUSED".into(), &8102.into())
    );
    let resets = of_kind(&events, "reset");
    assert_eq!(
        resets.len(),
        1,
        "the listener-less port's RST has no socket to report: {resets:?}"
    );
    assert_eq!(
        (&resets[0]["direction"], &resets[0]["state"]),
        (&"received".into(), &"SYN_SENT".into())
    );
    let closes: Vec<&Value> = of_kind(&events, "state")
        .into_iter()
        .filter(|e| e["new_state"] == "CLOSE")
        .collect();
    assert_eq!(closes.len(), 1, "{closes:?}");
    assert_eq!(
        (
            &closes[0]["old_state"],
            &closes[0]["close"],
            &closes[0]["error"]
        ),
        (
            &"SYN_SENT".into(),
            &"reset_received".into(),
            &"ECONNREFUSED".into()
        )
    );
}

#[test]
#[ignore = "kernel lab: run `cargo xtask test` as root"]
fn abortive_close_sends_a_reset_the_peer_receives() {
    let ns = Netns::new("abort");
    let server: SocketAddr = "127.0.0.1:8103".parse().expect("address");
    let tracer = Tracer::start(&["--json", "--state", "--netns", &ns.inode.to_string()]);
    let before = ns.counters();
    let client_err = ns
        .enter(move || {
            let listener = TcpListener::bind(server).expect("bind");
            let client = TcpStream::connect(server).expect("connect");
            let (accepted, _) = listener.accept().expect("accept");
            // SO_LINGER with a zero timeout: close() aborts with a reset.
            let abort = nix::libc::linger {
                l_onoff: 1,
                l_linger: 0,
            };
            setsockopt(&accepted, sockopt::Linger, &abort).expect("SO_LINGER");
            drop(accepted);
            client
                .set_read_timeout(Some(Duration::from_secs(5)))
                .expect("timeout");
            (&client)
                .read(&mut [0; 1])
                .expect_err("the peer reset the connection")
        })
        .join()
        .expect("abort");
    let after = ns.counters();
    let events = tracer.stop().events();
    assert_eq!(client_err.kind(), ErrorKind::ConnectionReset);
    let resets = of_kind(&events, "reset");
    // On loopback the peer may process the RST before the sender's
    // tracepoint fires: compare as a set.
    let mut directions: Vec<&str> = resets
        .iter()
        .filter_map(|e| e["direction"].as_str())
        .collect();
    directions.sort_unstable();
    assert_eq!(directions, ["received", "sent"], "{resets:?}");
    assert_eq!(
        delta(&before, &after, "Tcp.OutRsts"),
        1,
        "one RST on the wire"
    );
    let by = |direction: &str| {
        resets
            .iter()
            .find(|e| e["direction"] == direction)
            .copied()
            .expect(direction)
    };
    let (sent, received) = (by("sent"), by("received"));
    assert_eq!(
        sent["lport"],
        server.port(),
        "sent by the server's socket: {sent}"
    );
    assert_eq!(
        sent["rport"], received["lport"],
        "to the client's: {received}"
    );
    let closes: Vec<&Value> = of_kind(&events, "state")
        .into_iter()
        .filter(|e| e["new_state"] == "CLOSE")
        .collect();
    let server_close = closes
        .iter()
        .find(|e| e["lport"] == server.port() && e["rport"] != 0)
        .expect("server close");
    let client_close = closes
        .iter()
        .find(|e| e["rport"] == server.port())
        .expect("client close");
    assert_eq!(server_close["close"], "reset_sent", "{server_close}");
    assert_eq!(
        (&client_close["close"], &client_close["error"]),
        (&"reset_received".into(), &"ECONNRESET".into())
    );
}

/// As in the seed: the owner closes while its data and FIN go unanswered.
/// The socket lives on as an orphan in FIN_WAIT1, retransmits under
/// `tcp_orphan_retries`, and dies with ETIMEDOUT.
#[test]
#[ignore = "kernel lab: run `cargo xtask test` as root"]
fn orphan_in_fin_wait1_retransmits_under_tcp_orphan_retries() {
    let ns = Netns::new("orphan");
    ns.sysctl("net.ipv4.tcp_orphan_retries", "2");
    let server: SocketAddr = "127.0.0.1:8104".parse().expect("address");
    let tracer = Tracer::start(&["--json", "--state", "--netns", &ns.inode.to_string()]);
    let (client, _accepted) = connected(&ns, server);
    let client_port = client.local_addr().expect("local").port();
    drop_inbound_matching(&ns, &format!("tcp dport {}", server.port()));
    (&client).write_all(&[0x5a; 1000]).expect("write");
    drop(client);
    // RTOs of 0.2, 0.4, 0.8 s (more after a slow handshake on this VM), then
    // the orphan budget runs out, by 3 s at those RTOs: waited for, bounded.
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    let filter = format!("( sport = :{client_port} )");
    while !ns
        .exec(&["ss", "-Htn", "state", "fin-wait-1", &filter])
        .trim()
        .is_empty()
        && std::time::Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(100));
    }
    let events = tracer.stop().events();

    let mine = |e: &&Value| e["lport"] == client_port;
    let states: Vec<&Value> = of_kind(&events, "state").into_iter().filter(mine).collect();
    let into_fin_wait1 = states
        .iter()
        .find(|e| e["new_state"] == "FIN_WAIT1")
        .expect("FIN_WAIT1");
    // tcp_close() moves to FIN_WAIT1 just before sock_orphan(): the
    // orphan shows from the next event on.
    assert_eq!(into_fin_wait1["orphan"], false, "{into_fin_wait1}");
    let rtos: Vec<&Value> = of_kind(&events, "retransmit")
        .into_iter()
        .filter(mine)
        .filter(|e| e["type"] == "RTO")
        .collect();
    assert!(!rtos.is_empty());
    for rto in &rtos {
        assert_eq!(
            (&rto["orphan"], &rto["retry_limit"], &rto["state"]),
            (&true.into(), &2.into(), &"FIN_WAIT1".into()),
            "{rto}"
        );
    }
    let end = states.last().expect("states");
    assert_eq!(
        (&end["old_state"], &end["new_state"]),
        (&"FIN_WAIT1".into(), &"CLOSE".into()),
        "{end}"
    );
    assert_eq!(
        (&end["error"], &end["orphan"]),
        (&"ETIMEDOUT".into(), &true.into()),
        "{end}"
    );
    eprintln!(
        "orphan: {} RTO events (limit 2), then CLOSE with ETIMEDOUT",
        rtos.len()
    );
}

/// Every state a list may name, as the tool names them, and `fin_wait`.
const STATE_LISTS: [&str; 13] = [
    "established",
    "syn_sent",
    "syn_recv",
    "fin_wait1",
    "fin_wait2",
    "time_wait",
    "close",
    "close_wait",
    "last_ack",
    "listen",
    "closing",
    "new_syn_recv",
    "fin_wait",
];

/// The states a list names, in upper case.
fn named_states(list: &str) -> Vec<String> {
    match list {
        "fin_wait" => vec!["FIN_WAIT1".into(), "FIN_WAIT2".into()],
        state => vec![state.to_ascii_uppercase()],
    }
}

/// Whether an event of the unfiltered run belongs to a run listing
/// `states`: lifecycle events entering or leaving one of them (an overflow
/// is a TIME_WAIT entry refused, a reuse leaves TIME_WAIT); every other
/// event.
fn belongs(event: &Value, states: &[String]) -> bool {
    let named = |key: &str| {
        event[key]
            .as_str()
            .is_some_and(|s| states.iter().any(|n| n == s))
    };
    let time_wait = states.iter().any(|s| s == "TIME_WAIT");
    match event["event"].as_str() {
        Some("state" | "time_wait_overflow" | "session_end") => {
            named("old_state")
                || named("new_state")
                || time_wait && event["close"] == "time_wait_overflow"
        }
        Some("time_wait_reuse") => time_wait,
        Some("reset") => named("state"),
        _ => true,
    }
}

/// An event as every tracer prints it: without the wall-clock times (and a
/// reuse's age, taken from two), whose last digit depends on when each
/// tracer read the clocks' offset, and with
/// only whether the time in the previous state is known (each tracer's
/// program reads the clock at its own turn on the tracepoint).
fn comparable(event: &Value) -> String {
    let mut event = event.clone();
    if let Some(fields) = event.as_object_mut() {
        for key in ["time", "opened", "duration_ms", "time_wait_ms"] {
            fields.remove(key);
        }
        if let Some(known) = fields.get_mut("prev_state_ms") {
            *known = Value::Bool(!known.is_null());
        }
    }
    event.to_string()
}

/// One workload seen by one tracer without a state list and one per list
/// (each state, `fin_wait`), side by side: each list shows exactly the
/// unfiltered run's events that belong to it, derived ones included.
#[test]
#[ignore = "kernel lab: run `cargo xtask test` as root"]
fn each_state_list_shows_the_unfiltered_events_of_its_states() {
    let ns = Netns::new("lists");
    // Four local ports, two TIME_WAIT buckets: entries, an overflow, and a
    // reuse once the free ports are taken.
    ns.sysctl("net.ipv4.ip_local_port_range", "40000 40003");
    ns.sysctl("net.ipv4.tcp_max_tw_buckets", "2");
    ns.sysctl("net.ipv4.tcp_tw_reuse", "1");
    let netns = ns.inode.to_string();
    let traced = |list: Option<&str>| {
        let state = list.map_or("--state".to_owned(), |l| format!("--state={l}"));
        Tracer::start(&["--json", &state, "--ring-size", "256K", "--netns", &netns])
    };
    let all = traced(None);
    let filtered: Vec<(&str, Tracer)> = STATE_LISTS.iter().map(|&l| (l, traced(Some(l)))).collect();

    let server: SocketAddr = "127.0.0.1:8110".parse().expect("address");
    let before = ns.counters();
    closed_by_client(&ns, server, 3);
    let refused = ns
        .enter(move || {
            let listener = TcpListener::bind(server).expect("bind");
            // The kernel reuses a TIME_WAIT 4-tuple once its last timestamp
            // is older than a second, at second granularity.
            std::thread::sleep(Duration::from_millis(2100));
            // Two ports are free, two hold a TIME_WAIT 4-tuple: one of
            // three connections at least reuses one.
            let clients: Vec<TcpStream> = (0..3)
                .map(|_| TcpStream::connect(server).expect("a free port or a reused one"))
                .collect();
            let accepted: Vec<TcpStream> = (0..3)
                .map(|_| listener.accept().expect("accept").0)
                .collect();
            drop(clients);
            for mut stream in accepted {
                stream
                    .set_read_timeout(Some(Duration::from_secs(5)))
                    .expect("timeout");
                assert_eq!(stream.read(&mut [0; 1]).expect("EOF"), 0);
            }
            TcpStream::connect("127.0.0.1:8111")
                .expect_err("nobody listens")
                .kind()
        })
        .join()
        .expect("workload");
    let after = ns.counters();
    std::thread::sleep(Duration::from_millis(100));
    let unfiltered = all.stop().events();

    assert_eq!(refused, ErrorKind::ConnectionRefused);
    let count = |kind: &str| of_kind(&unfiltered, kind).len();
    assert!(
        count("time_wait_overflow") >= 1
            && count("time_wait_reuse") >= 1
            && count("reset") >= 1
            && count("session_end") >= 1,
        "the workload makes every derived kind: {unfiltered:#?}"
    );
    assert_eq!(
        count("time_wait_overflow") as i64,
        delta(&before, &after, "TcpExt.TCPTimeWaitOverflow")
    );
    assert_eq!(
        count("time_wait_reuse") as i64,
        delta(&before, &after, "TcpExt.TWRecycled")
    );
    for (list, tracer) in filtered {
        let states = named_states(list);
        let mut expected: Vec<String> = unfiltered
            .iter()
            .filter(|e| belongs(e, &states))
            .map(comparable)
            .collect();
        let mut shown: Vec<String> = tracer.stop().events().iter().map(comparable).collect();
        expected.sort();
        shown.sort();
        let missing: Vec<&String> = expected.iter().filter(|e| !shown.contains(e)).collect();
        let extra: Vec<&String> = shown.iter().filter(|e| !expected.contains(e)).collect();
        assert!(
            shown == expected,
            "--state={list}: missing {missing:#?}\nextra {extra:#?}"
        );
        eprintln!(
            "--state={list}: {} of {} events",
            shown.len(),
            unfiltered.len()
        );
    }
}
