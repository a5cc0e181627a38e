//! `-c`: the flow table adds up to what the per-event lines show.
use std::{collections::BTreeMap, net::SocketAddr, time::Duration};

use crate::harness::{
    Netns, Tracer, bulk_upload, delta, drop_inbound, of_kind, sent_segments, unseen_segments,
};

/// `(retransmits, segments, retransmits by type)` of one flow.
type Totals = (u64, i64, BTreeMap<String, u64>);

#[test]
#[ignore = "kernel lab: run `cargo xtask test` as root"]
fn count_table_totals_equal_the_per_event_counts() {
    const UPLOADS: usize = 3;
    let ns = Netns::new("count");
    ns.ip(&["link", "set", "lo", "mtu", "1500"]);
    let server: SocketAddr = "127.0.0.1:8400".parse().expect("address");
    drop_inbound(&ns, server.port(), 10);
    let netns = ns.inode.to_string();
    // The same traffic, seen three ways at once.
    let per_event = Tracer::start(&["--json", "--netns", &netns]);
    let counted = Tracer::start(&["--json", "-c", "--netns", &netns]);
    let top = Tracer::start(&["--json", "-c", "--top", "1", "--netns", &netns]);
    let before = ns.counters();
    let clients: Vec<SocketAddr> = (0..UPLOADS)
        .map(|_| bulk_upload(&ns, server, 2 << 20))
        .collect();
    let after = ns.counters();
    let events = per_event.stop().events();
    let flows = counted.stop().flows();
    let top = top.stop().flows();

    let mut expected: BTreeMap<u64, Totals> = BTreeMap::new();
    for event in of_kind(&events, "retransmit") {
        let port = event["lport"].as_u64().expect("lport");
        let totals = expected.entry(port).or_default();
        totals.0 += 1;
        totals.1 += sent_segments(&[event]);
        *totals
            .2
            .entry(event["type"].as_str().expect("type").to_owned())
            .or_default() += 1;
    }
    let counted: BTreeMap<u64, Totals> = flows
        .iter()
        .map(|f| {
            let by_type = f["by_type"]
                .as_object()
                .expect("by_type")
                .iter()
                .map(|(k, v)| (k.clone(), v.as_u64().expect("count")))
                .collect();
            (
                f["lport"].as_u64().expect("lport"),
                (
                    f["retransmits"].as_u64().expect("retransmits"),
                    f["segments"].as_i64().expect("segments"),
                    by_type,
                ),
            )
        })
        .collect();

    assert_eq!(counted, expected, "-c vs per-event lines");
    // Sent and unseen (the kernel ran no program for them; the sockets'
    // own counts show them), as the other uploads count them.
    let kernel_segs = delta(&before, &after, "Tcp.RetransSegs");
    let unseen = unseen_segments(&of_kind(&events, "retransmit"));
    assert_eq!(
        counted.values().map(|t| t.1).sum::<i64>() + unseen,
        kernel_segs
    );
    // 10% loss hits every upload (and the server side may retransmit too:
    // a SYN-ACK whose ACK was dropped, a FIN).
    for client in &clients {
        assert!(counted.contains_key(&u64::from(client.port())), "{client}");
    }
    // One table, most retransmits first; --top keeps its head.
    let ranks: Vec<(u64, u64)> = flows
        .iter()
        .map(|f| {
            (
                f["rank"].as_u64().expect("rank"),
                f["retransmits"].as_u64().expect("n"),
            )
        })
        .collect();
    assert!(
        ranks
            .windows(2)
            .all(|w| w[0].0 + 1 == w[1].0 && w[0].1 >= w[1].1),
        "{ranks:?}"
    );
    assert_eq!(top.len(), 1, "{top:?}");
    assert_eq!(
        (&top[0]["rank"], &top[0]["flows"], &top[0]["retransmits"]),
        (&1.into(), &flows.len().into(), &flows[0]["retransmits"]),
    );
    eprintln!("flows: {counted:?}, {unseen} unseen, Tcp.RetransSegs +{kernel_segs}");
}

/// `-i`: a table per interval, each counting afresh.
#[test]
#[ignore = "kernel lab: run `cargo xtask test` as root"]
fn count_interval_prints_a_table_per_interval() {
    let ns = Netns::new("countint");
    ns.ip(&["link", "set", "lo", "mtu", "1500"]);
    let server: SocketAddr = "127.0.0.1:8401".parse().expect("address");
    drop_inbound(&ns, server.port(), 10);
    let tracer = Tracer::start(&["-c", "-i", "0.3", "--netns", &ns.inode.to_string()]);
    let client = bulk_upload(&ns, server, 2 << 20);
    std::thread::sleep(Duration::from_secs(1));
    let output = tracer.stop();

    let headings: Vec<&str> = output
        .stdout
        .lines()
        .filter(|l| l.ends_with(" retransmitted") || l.contains(" retransmitted, the top "))
        .collect();
    // At least three intervals passed, and the table at exit.
    assert!(headings.len() >= 4, "{}", output.stdout);
    let rows = output
        .stdout
        .lines()
        .filter(|l| l.contains(&format!("127.0.0.1:{} ", client.port())))
        .count();
    assert!(rows >= 1, "{}", output.stdout);
    // Long after the upload, the table is empty: counts are not carried over.
    assert!(
        headings
            .last()
            .is_some_and(|h| h.ends_with(": 0 flows retransmitted")),
        "{}",
        output.stdout
    );
}
