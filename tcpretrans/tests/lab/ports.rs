//! The seed's experiments: one local port, TIME_WAIT holding it, and
//! `tcp_tw_reuse` deciding whether the next connect() gets it; plus the
//! other ways a connect() fails.
use std::{
    io::Read,
    net::{SocketAddr, TcpListener, TcpStream},
    thread,
    time::Duration,
};

use serde_json::Value;

use crate::harness::{Netns, Tracer, delta, of_kind, refused_without_waiting};

const EADDRNOTAVAIL: i32 = 99;
const ENETUNREACH: i32 = 101;

/// One connection from the namespace's only local port, closed by the
/// client (its port goes into TIME_WAIT); then, after `pause`, a second
/// connect() to the same server. Returns the second connect's result.
fn one_port_twice(ns: &Netns, server: SocketAddr, pause: Duration) -> std::io::Result<u16> {
    ns.enter(move || {
        let listener = TcpListener::bind(server).expect("bind");
        let first = TcpStream::connect(server).expect("first connect");
        let (mut accepted, _) = listener.accept().expect("accept");
        drop(first);
        accepted
            .set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        assert_eq!(accepted.read(&mut [0; 1]).expect("EOF"), 0);
        drop(accepted);
        thread::sleep(pause);
        TcpStream::connect(server).map(|second| second.local_addr().expect("local").port())
    })
    .join()
    .expect("connections")
}

fn single_port_namespace(tag: &str, tw_reuse: &str) -> Netns {
    let ns = Netns::new(tag);
    ns.sysctl("net.ipv4.ip_local_port_range", "40000 40000");
    ns.sysctl("net.ipv4.tcp_tw_reuse", tw_reuse);
    ns
}

#[test]
#[ignore = "kernel lab: run `cargo xtask test` as root"]
fn one_local_port_in_time_wait_makes_connect_fail_with_eaddrnotavail() {
    let ns = single_port_namespace("oneport", "0");
    let server: SocketAddr = "127.0.0.1:8200".parse().expect("address");
    let tracer = Tracer::start(&["--json", "--state", "--netns", &ns.inode.to_string()]);
    let second = one_port_twice(&ns, server, Duration::ZERO);
    let output = tracer.stop();
    let events = output.events();
    let occupancy = &output.summary()["netns"][0];
    assert_eq!(
        (
            &occupancy["local_ports_in_use"],
            &occupancy["local_port_range"]
        ),
        (&1.into(), &serde_json::json!([40000, 40000])),
        "the exit summary: the only local port is taken: {occupancy}"
    );

    let err = second.expect_err("the only port is in TIME_WAIT");
    assert_eq!(err.raw_os_error(), Some(EADDRNOTAVAIL), "{err}");
    // A timewait socket in TIME_WAIT, or still in FIN_WAIT2 when the close
    // came before the server's FIN (a slow machine).
    let time_waits: Vec<&Value> = of_kind(&events, "state")
        .into_iter()
        .filter(|e| {
            matches!(
                e["close"].as_str(),
                Some("time_wait" | "fin_wait2_timewait")
            )
        })
        .collect();
    assert_eq!(time_waits.len(), 1);
    assert_eq!(time_waits[0]["lport"], 40000);
    let errors = of_kind(&events, "connect_error");
    assert_eq!(errors.len(), 1, "{errors:?}");
    let error = errors[0];
    assert_eq!(error["error"], "EADDRNOTAVAIL");
    assert_eq!(
        (&error["raddr"], &error["rport"]),
        (&"127.0.0.1".into(), &server.port().into())
    );
    assert_eq!(error["pid"], std::process::id(), "{error}");
    assert!(
        error["comm"].as_str().is_some_and(|c| !c.is_empty()),
        "{error}"
    );
}

#[test]
#[ignore = "kernel lab: run `cargo xtask test` as root"]
fn tcp_tw_reuse_lets_the_next_connect_take_over_the_time_wait_tuple() {
    let ns = single_port_namespace("twreuse", "1");
    let server: SocketAddr = "127.0.0.1:8201".parse().expect("address");
    let tracer = Tracer::start(&["--json", "--state", "--netns", &ns.inode.to_string()]);
    let before = ns.counters();
    // The kernel reuses a TIME_WAIT 4-tuple once its last timestamp is
    // older than `tcp_tw_reuse_delay` (1 s), at second granularity.
    let second = one_port_twice(&ns, server, Duration::from_millis(2100));
    let after = ns.counters();
    let events = tracer.stop().events();

    assert_eq!(second.expect("reuse lets it connect"), 40000);
    assert_eq!(
        delta(&before, &after, "TcpExt.TWRecycled"),
        1,
        "the kernel reused one TIME_WAIT socket"
    );
    let reuses = of_kind(&events, "time_wait_reuse");
    assert_eq!(reuses.len(), 1, "{reuses:?}");
    assert_eq!(
        (&reuses[0]["lport"], &reuses[0]["rport"]),
        (&40000.into(), &server.port().into())
    );
    let age = reuses[0]["time_wait_ms"].as_f64().expect("time_wait_ms");
    assert!((2000.0..4000.0).contains(&age), "{age}");
    assert!(of_kind(&events, "connect_error").is_empty());
}

#[test]
#[ignore = "kernel lab: run `cargo xtask test` as root"]
fn unroutable_destination_is_enetunreach() {
    // A namespace with only loopback: no route, so nothing is sent.
    let ns = Netns::new("unreach");
    let tracer = Tracer::start(&["--json", "--netns", &ns.inode.to_string()]);
    let err = ns
        .enter(|| TcpStream::connect("10.255.255.1:80").expect_err("no route"))
        .join()
        .expect("connect");
    let events = tracer.stop().events();
    assert_eq!(err.raw_os_error(), Some(ENETUNREACH), "{err}");
    let errors = of_kind(&events, "connect_error");
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(
        (&errors[0]["error"], &errors[0]["raddr"]),
        (&"ENETUNREACH".into(), &"10.255.255.1".into())
    );
}

#[test]
#[ignore = "kernel lab: run `cargo xtask test` as root"]
fn nonblocking_connect_failure_surfaces_at_close() {
    let ns = Netns::new("nonblock");
    // No --state: connect errors are reported in every mode.
    let tracer = Tracer::start(&["--json", "--netns", &ns.inode.to_string()]);
    let so_error = refused_without_waiting(&ns, 8202);
    let events = tracer.stop().events();
    assert_eq!(so_error, nix::errno::Errno::ECONNREFUSED);
    let errors = of_kind(&events, "connect_error");
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(
        (&errors[0]["error"], &errors[0]["rport"]),
        (&"ECONNREFUSED".into(), &8202.into())
    );
    assert_eq!(errors[0]["pid"], std::process::id());
}
