//! `--metrics`: the events as Prometheus metrics, for a scraper (a node's
//! Prometheus, a DaemonSet's). Counted from the events the output would
//! show, labelled by the connection properties `--metrics-by` chooses, with
//! a cap on their series past which events count under `other`.
//!
//! The metrics are updated on the event loop's thread and encoded there
//! for each scrape: the HTTP server runs on the same loop, so a scrape
//! that answers proves the loop turns (the liveness probe).
mod labels;
mod namespaces;
mod server;

use std::sync::Arc;

use tcpretrans_common::NamespaceLimits;

use prometheus_client::{
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram, info::Info},
    registry::{Registry, Unit},
};

pub use labels::{Dimensions, parse_dimensions};
pub use namespaces::Refresh;
pub use server::{Endpoint, Exporter, ServeError, bind, parse_endpoint, serve};

use crate::{
    events::{Close, Event, ResetDirection, Retransmit, StateChange, TcpState},
    loader::TransitionTable,
    output::errno_name,
    summary::state_name,
};
use labels::{Connection, Series};

/// The RTO histogram's bounds: from the kernel's floor (`TCP_RTO_MIN`,
/// 200 ms) doubling to its ceiling (`TCP_RTO_MAX`, 120 s).
const RTO_BUCKETS: [f64; 11] = [0.2, 0.4, 0.8, 1.6, 3.2, 6.4, 12.8, 25.6, 51.2, 102.4, 120.0];

/// A label with a value from a small, fixed set.
pub(crate) type Fixed<const N: usize> = [(&'static str, &'static str); N];
/// A label with a value made at run time (an errno's name).
type Named = [(&'static str, String); 1];

/// What `--metrics` exports, and how events become it.
pub struct Metrics {
    series: Series,
    retransmits: Family<(Fixed<1>, Connection), Counter>,
    segments: Family<(Fixed<1>, Connection), Counter>,
    failed: Family<(Fixed<0>, Connection), Counter>,
    unseen: Family<(Fixed<0>, Connection), Counter>,
    rto: Histogram,
    transitions: Family<(Fixed<2>, Connection), Counter>,
    time_wait_entries: Family<(Fixed<0>, Connection), Counter>,
    time_wait_overflows: Family<(Fixed<0>, Connection), Counter>,
    time_wait_reuses: Family<(Fixed<0>, Connection), Counter>,
    connect_errors: Family<(Named, Connection), Counter>,
    connection_errors: Family<(Named, Connection), Counter>,
    resets: Family<(Fixed<1>, Connection), Counter>,
    events: Counter,
    lost: Family<Fixed<1>, Counter>,
    /// The lost counts last exported, which `lost` grows from.
    lost_so_far: (u64, u64),
    failed_reads: Counter,
    /// The kernel's transition counts last added to `transitions`.
    counted_so_far: TransitionTable,
    namespaces: Arc<namespaces::Seen>,
}

impl Metrics {
    /// The metrics, and the registry a server encodes them from.
    pub fn new(by: Dimensions, max_series: u32) -> (Self, Registry) {
        let mut registry = Registry::with_prefix("tcpretrans");
        let made = Gauge::default();
        let folded = Counter::default();
        let metrics = Self {
            series: Series::new(by, max_series, made.clone(), folded.clone()),
            retransmits: Family::default(),
            segments: Family::default(),
            failed: Family::default(),
            unseen: Family::default(),
            rto: Histogram::new(RTO_BUCKETS),
            transitions: Family::default(),
            time_wait_entries: Family::default(),
            time_wait_overflows: Family::default(),
            time_wait_reuses: Family::default(),
            connect_errors: Family::default(),
            connection_errors: Family::default(),
            resets: Family::default(),
            events: Counter::default(),
            lost: Family::default(),
            lost_so_far: (0, 0),
            failed_reads: Counter::default(),
            counted_so_far: TransitionTable::default(),
            namespaces: Arc::default(),
        };
        registry.register(
            "retransmits",
            "TCP retransmissions sent, by cause (type: RTO, FAST, TLP, SYN, SYNACK, or UNKNOWN)",
            metrics.retransmits.clone(),
        );
        registry.register(
            "retransmitted_segments",
            "Segments of the retransmissions sent, by cause: they sum to the kernel's Tcp RetransSegs",
            metrics.segments.clone(),
        );
        registry.register(
            "retransmit_failures",
            "Retransmissions the kernel attempted but could not send (TcpExt TCPRetransFail)",
            metrics.failed.clone(),
        );
        registry.register(
            "unseen_retransmitted_segments",
            "Segments the kernel retransmitted without running the tracer's program, found in the gaps of the sockets' own counts: with retransmitted_segments they sum to RetransSegs",
            metrics.unseen.clone(),
        );
        registry.register_with_unit(
            "rto",
            "The connection's retransmission timeout at each retransmission sent",
            Unit::Seconds,
            metrics.rto.clone(),
        );
        registry.register(
            "state_transitions",
            "TCP state transitions, by old and new state",
            metrics.transitions.clone(),
        );
        registry.register(
            "time_wait_entries",
            "Connections that entered TIME_WAIT (a timewait socket took over)",
            metrics.time_wait_entries.clone(),
        );
        registry.register(
            "time_wait_overflows",
            "Connections closed without TIME_WAIT because tcp_max_tw_buckets was reached",
            metrics.time_wait_overflows.clone(),
        );
        registry.register(
            "time_wait_reuses",
            "New connections that took over a 4-tuple in TIME_WAIT (tcp_tw_reuse)",
            metrics.time_wait_reuses.clone(),
        );
        registry.register(
            "connect_errors",
            "connect() calls that failed, by errno (EADDRNOTAVAIL: no local port left)",
            metrics.connect_errors.clone(),
        );
        registry.register(
            "connection_errors",
            "Connections that ended with a socket error, by errno (ETIMEDOUT: retries exhausted)",
            metrics.connection_errors.clone(),
        );
        registry.register(
            "resets",
            "TCP resets, by direction (sent or received)",
            metrics.resets.clone(),
        );
        registry.register(
            "events",
            "Events this tracer received from the kernel",
            metrics.events.clone(),
        );
        registry.register(
            "lost_events",
            "Events lost: ring_full (the ring buffer had no room) or skipped (the kernel did not run the program)",
            metrics.lost.clone(),
        );
        registry.register(
            "failed_kernel_reads",
            "Kernel reads that failed, each leaving a field of an event 0 (never expected)",
            metrics.failed_reads.clone(),
        );
        registry.register(
            "metric_series",
            "Series made with connection labels (--metrics-by), against --max-series",
            made,
        );
        registry.register(
            "folded_events",
            "Events counted under the label value other, because --max-series was reached",
            folded,
        );
        registry.register(
            "build",
            "This tracer's version",
            Info::new([("version", env!("CARGO_PKG_VERSION"))]),
        );
        registry.register_collector(Box::new(namespaces::Occupancies(Arc::clone(
            &metrics.namespaces,
        ))));
        (metrics, registry)
    }

    /// Counts an event.
    pub fn observe(&mut self, event: &Event) {
        self.events.inc();
        if let Some(socket) = event.socket()
            && let Some(netns) = socket.netns
        {
            self.namespaces.insert(netns, socket.skaddr);
        }
        match event {
            Event::Retransmit(r) => self.retransmit(r),
            Event::State(change) => self.transition(change),
            // The transition that ended it was counted.
            Event::SessionEnd(_) | Event::Lost { .. } => {}
            Event::Reset {
                socket, direction, ..
            } => {
                let direction = match direction {
                    ResetDirection::Sent => "sent",
                    ResetDirection::Received => "received",
                };
                let connection = self.series.labels(Some(socket));
                self.series
                    .counter(&self.resets, [("direction", direction)], &connection)
                    .inc();
            }
            Event::TimeWaitReuse { socket, .. } => {
                let connection = self.series.labels(Some(socket));
                self.series
                    .counter(&self.time_wait_reuses, [], &connection)
                    .inc();
            }
            Event::ConnectError { socket, errno } => {
                let connection = self.series.labels(Some(socket));
                self.series
                    .counter(
                        &self.connect_errors,
                        [("error", errno_name(*errno))],
                        &connection,
                    )
                    .inc();
            }
        }
    }

    fn retransmit(&mut self, r: &Retransmit) {
        let connection = self.series.labels(Some(&r.socket));
        if !r.sent() {
            self.series.counter(&self.failed, [], &connection).inc();
            return;
        }
        let cause = [("type", r.cause.map_or("UNKNOWN", |c| c.name()))];
        self.series
            .counter(&self.retransmits, cause, &connection)
            .inc();
        self.series
            .counter(&self.segments, cause, &connection)
            .inc_by(u64::from(r.segs.unwrap_or(1)));
        if let Some(rto) = r.rto {
            self.rto.observe(rto.as_secs_f64());
        }
        if let Some(unseen) = r.unseen_segs.filter(|&n| n > 0) {
            self.series
                .counter(&self.unseen, [], &connection)
                .inc_by(u64::from(unseen));
        }
    }

    fn transition(&mut self, change: &StateChange) {
        let connection = self.series.labels(Some(&change.socket));
        let states = [
            ("old_state", state_name(change.old_state)),
            ("new_state", state_name(change.new_state)),
        ];
        self.series
            .counter(&self.transitions, states, &connection)
            .inc();
        let ended = match change.close {
            Some(Close::TimeWait | Close::FinWait2Timewait) => Some(&self.time_wait_entries),
            Some(Close::TimeWaitOverflow) => Some(&self.time_wait_overflows),
            _ => None,
        };
        if let Some(family) = ended {
            self.series.counter(family, [], &connection).inc();
        }
        if let Some(errno) = change.error.filter(|&e| e != 0) {
            self.series
                .counter(
                    &self.connection_errors,
                    [("error", errno_name(errno))],
                    &connection,
                )
                .inc();
        }
    }

    /// The tracer's loss counts since it started: `(ring full, skipped)`.
    pub fn lost(&mut self, ring_full: u64, skipped: u64) {
        let (was_full, was_skipped) = self.lost_so_far;
        self.lost
            .get_or_create(&[("reason", "ring_full")])
            .inc_by(ring_full.saturating_sub(was_full));
        self.lost
            .get_or_create(&[("reason", "skipped")])
            .inc_by(skipped.saturating_sub(was_skipped));
        self.lost_so_far = (ring_full, skipped);
    }

    /// Adds the transitions the kernel counted (instead of sending them)
    /// since the last call; `table` holds them since load.
    pub fn counted_transitions(&mut self, table: &TransitionTable) {
        let connection = self.series.labels(None);
        for (old, (row, so_far)) in (0u8..).zip(table.iter().zip(&mut self.counted_so_far)) {
            for (new, (&count, seen)) in (0u8..).zip(row.iter().zip(so_far)) {
                if count > *seen {
                    let states = [
                        ("old_state", state_name(TcpState::from_u8(old))),
                        ("new_state", state_name(TcpState::from_u8(new))),
                    ];
                    self.series
                        .counter(&self.transitions, states, &connection)
                        .inc_by(count - *seen);
                    *seen = count;
                }
            }
        }
    }

    /// Reads the limits of the namespaces seen with `read(socket, inode)`
    /// (see `namespaces`).
    pub fn read_namespace_limits(
        &self,
        which: Refresh,
        read: impl FnMut(u64, u32) -> Option<NamespaceLimits>,
    ) {
        self.namespaces.read_limits(which, read);
    }

    /// Kernel reads failed since load.
    pub fn failed_reads(&mut self, total: u64) {
        self.failed_reads
            .inc_by(total.saturating_sub(self.failed_reads.get()));
    }
}

#[cfg(test)]
mod tests {
    use prometheus_client::encoding::text::encode;

    use super::*;
    use crate::fixtures::transition;

    #[test]
    fn transitions_counted_in_the_kernel_add_to_those_sent() {
        let (mut metrics, registry) = Metrics::new(Dimensions::default(), 10);
        let (established, fin_wait1) = (TcpState::Established, TcpState::FinWait1);
        let mut table = TransitionTable::default();
        table[established as usize][fin_wait1 as usize] = 3;
        metrics.counted_transitions(&table);
        metrics.observe(&transition(established, fin_wait1, 1, 0));
        table[established as usize][fin_wait1 as usize] = 5;
        metrics.counted_transitions(&table);
        // Read again, unchanged: nothing more.
        metrics.counted_transitions(&table);
        let mut text = String::new();
        encode(&mut text, &registry).expect("encoding");
        let series: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("tcpretrans_state_transitions_total{"))
            .collect();
        assert_eq!(series.len(), 1, "{text}");
        assert!(
            series[0].contains(r#"old_state="ESTABLISHED""#),
            "{}",
            series[0]
        );
        assert!(
            series[0].contains(r#"new_state="FIN_WAIT1""#),
            "{}",
            series[0]
        );
        assert!(series[0].ends_with(" 6"), "{}", series[0]);
    }
}
