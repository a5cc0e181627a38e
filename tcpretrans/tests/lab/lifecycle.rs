//! Connection lifecycles seen through `--state`.
use std::net::SocketAddr;

use serde_json::Value;

use crate::harness::{Netns, Tracer, of_kind, short_connection, transitions};

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
    let ns = Netns::new("life");
    let server: SocketAddr = "127.0.0.1:8080".parse().expect("address");
    let tracer = Tracer::start(&["--json", "--state", "--netns", &ns.inode.to_string()]);
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
            ("FIN_WAIT2", "CLOSE"),
        ])
    );
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
