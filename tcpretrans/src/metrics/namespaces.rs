//! Gauges of each network namespace events came from, read at each scrape:
//! TIME_WAIT sockets against `tcp_max_tw_buckets`, local ports in use
//! against `ip_local_port_range` — the two limits that, once reached, make
//! connections fail (the alertable side of the lifecycle events).
use std::{
    collections::BTreeSet,
    sync::{
        Mutex,
        atomic::{AtomicU64, Ordering},
    },
};

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric as _},
    metrics::{counter::ConstCounter, gauge::ConstGauge},
};

use crate::netns::{self, NetnsError};

/// The namespaces events came from, until one is gone, and how many reads
/// of one failed (entering another namespace takes CAP_SYS_ADMIN).
#[derive(Debug, Default)]
pub struct Seen(Mutex<BTreeSet<u32>>, AtomicU64);

impl Seen {
    pub fn insert(&self, netns: u32) {
        // A panic elsewhere while holding it left the set as it was.
        let mut seen = self.0.lock().unwrap_or_else(|p| p.into_inner());
        seen.insert(netns);
    }

    fn occupancies(&self) -> Vec<netns::Occupancy> {
        let mut seen = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let mut read = Vec::with_capacity(seen.len());
        seen.retain(|&inode| match netns::occupancy(inode) {
            Ok(occupancy) => {
                read.push(occupancy);
                true
            }
            // Its last process left: no series for it any more.
            Err(NetnsError::Gone(_)) => false,
            // Kept: the next scrape may read it.
            Err(_) => {
                self.1.fetch_add(1, Ordering::Relaxed);
                true
            }
        });
        read
    }
}

#[derive(Debug)]
pub struct Occupancies(pub std::sync::Arc<Seen>);

impl Collector for Occupancies {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let occupancies = self.0.occupancies();
        let gauges: [Gauge; 4] = [
            (
                "time_wait_sockets",
                "TIME_WAIT sockets in the network namespace",
                |o| saturating(o.time_wait),
            ),
            (
                "time_wait_sockets_limit",
                "The namespace's tcp_max_tw_buckets: past it, connections close without TIME_WAIT",
                |o| saturating(o.tcp_max_tw_buckets),
            ),
            (
                "local_ports_in_use",
                "Local ports of TCP sockets in the namespace inside its ip_local_port_range",
                |o| saturating(o.local_ports_in_use as u64),
            ),
            (
                "local_ports_limit",
                "Ports in the namespace's ip_local_port_range: connect() fails with EADDRNOTAVAIL when none is left",
                |o| i64::from(o.local_port_range.1) - i64::from(o.local_port_range.0) + 1,
            ),
        ];
        let failed = ConstCounter::new(self.0.1.load(Ordering::Relaxed));
        failed.encode(encoder.encode_descriptor(
            "namespace_read_failures",
            "Reads of a network namespace's gauges that failed (entering another namespace takes CAP_SYS_ADMIN)",
            None,
            failed.metric_type(),
        )?)?;
        for (name, help, value) in gauges {
            let gauge = ConstGauge::new(0i64);
            let mut family = encoder.encode_descriptor(name, help, None, gauge.metric_type())?;
            for occupancy in &occupancies {
                let labels = [("netns", occupancy.netns.to_string())];
                ConstGauge::new(value(occupancy)).encode(family.encode_family(&labels)?)?;
            }
        }
        Ok(())
    }
}

/// A gauge's name, help, and value in a namespace.
type Gauge = (&'static str, &'static str, fn(&netns::Occupancy) -> i64);

fn saturating(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}
