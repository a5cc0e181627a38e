//! Retransmissions under induced loss, compared with the namespace's own
//! `Tcp.RetransSegs`.
use std::net::SocketAddr;

use serde_json::Value;

use crate::harness::{Netns, Tracer, bulk_upload, drop_inbound, of_kind};

/// A bulk upload through 10% inbound loss at the server port.
fn lossy_upload(server: SocketAddr) {
    let ns = Netns::new("loss");
    // Ethernet-sized segments: loss then looks like a real network's.
    ns.ip(&["link", "set", "lo", "mtu", "1500"]);
    drop_inbound(&ns, server.port(), 10);
    let inode = ns.inode.to_string();
    let tracer = Tracer::start(&["--json", "--netns", &inode]);
    let attach_time = tracer.attach_time;
    let before = ns.counters();
    let client = bulk_upload(&ns, server, 4 << 20);
    let after = ns.counters();
    let output = tracer.stop();
    let events = output.events();
    let retransmits = of_kind(&events, "retransmit");
    let kernel_segs = after["Tcp.RetransSegs"] - before["Tcp.RetransSegs"];

    assert!(kernel_segs > 0, "10% loss must cause retransmissions");
    assert!(
        !retransmits.is_empty(),
        "no retransmit events; kernel retransmitted {kernel_segs} segments"
    );
    // One event per skb; an skb carries one or more segments.
    let sent: Vec<&&Value> = retransmits.iter().filter(|e| e["err"] == 0).collect();
    assert!(
        sent.len() as i64 <= kernel_segs,
        "{} events for {kernel_segs} retransmitted segments",
        sent.len()
    );
    let family = if server.is_ipv4() { 4 } else { 6 };
    for event in &retransmits {
        assert_eq!(event["netns"], ns.inode, "{event}");
        assert_eq!(event["family"], family, "{event}");
        assert_eq!(event["laddr"], client.ip().to_string(), "{event}");
        assert_eq!(event["lport"], client.port(), "{event}");
        assert_eq!(event["raddr"], server.ip().to_string(), "{event}");
        assert_eq!(event["rport"], server.port(), "{event}");
        let state = event["state"].as_str().unwrap_or_default();
        // The drop rule can hit the SYN too.
        assert!(
            matches!(state, "SYN_SENT" | "ESTABLISHED" | "FIN_WAIT1"),
            "{event}"
        );
        assert!(
            event["skaddr"]
                .as_str()
                .is_some_and(|s| s.starts_with("0x")),
            "{event}"
        );
        assert!(
            event["time"]
                .as_str()
                .is_some_and(|t| t.ends_with('Z') && t.len() == 27),
            "{event}"
        );
    }
    assert!(
        of_kind(&events, "state").is_empty(),
        "no state events without --state"
    );
    eprintln!(
        "lossy upload {server}: {} retransmit events ({} sent), kernel Tcp.RetransSegs +{kernel_segs}, \
         exec to attached {attach_time:?}",
        retransmits.len(),
        sent.len(),
    );
}

#[test]
#[ignore = "kernel lab: run `cargo xtask test` as root"]
fn lossy_upload_ipv4_retransmits_carry_their_flow() {
    lossy_upload("127.0.0.1:5201".parse().expect("address"));
}

#[test]
#[ignore = "kernel lab: run `cargo xtask test` as root"]
fn lossy_upload_ipv6_retransmits_carry_their_flow() {
    lossy_upload("[::1]:5202".parse().expect("address"));
}
