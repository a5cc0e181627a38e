//! Gauges of each network namespace events came from, read at each scrape:
//! TIME_WAIT sockets against `tcp_max_tw_buckets`, local ports in use
//! against `ip_local_port_range` — the two limits that, once reached, make
//! connections fail (the alertable side of the lifecycle events).
//!
//! Read without entering the namespace where possible (entering takes
//! `CAP_SYS_ADMIN`): the kernel side reads its limits through a socket
//! seen in it, and its counts are in the `/proc/PID/net` of a process in it.
use std::{
    collections::BTreeMap,
    path::PathBuf,
    sync::{
        Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
};

use tcpretrans_common::NamespaceLimits;

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric as _},
    metrics::{counter::ConstCounter, gauge::ConstGauge},
};

use crate::netns::{self, Limits, NetnsError};

/// The namespaces events came from, until one is gone.
#[derive(Debug, Default)]
pub struct Seen {
    namespaces: Mutex<BTreeMap<u32, Namespace>>,
    /// Whether a namespace came since limits were last read.
    new: AtomicBool,
    /// Reads of a namespace that failed (entering another namespace takes
    /// CAP_SYS_ADMIN).
    failures: AtomicU64,
}

/// Which namespaces' limits to read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refresh {
    All,
    New,
}

/// What is known of a namespace for reading it from outside.
#[derive(Debug, Default)]
struct Namespace {
    /// The address of the last socket an event came from.
    socket: u64,
    limits: Option<Limits>,
    /// A process or thread in it, under /proc, when one was looked for.
    member: Option<PathBuf>,
}

impl Seen {
    pub fn insert(&self, netns: u32, socket: u64) {
        self.lock()
            .entry(netns)
            .or_insert_with(|| {
                self.new.store(true, Ordering::Relaxed);
                Namespace::default()
            })
            .socket = socket;
    }

    /// Reads limits with `read(socket, inode)`: of every namespace, or
    /// (`Refresh::New`) of those never read, before a scrape finds them.
    /// `None` keeps what was read before.
    pub fn read_limits(
        &self,
        which: Refresh,
        mut read: impl FnMut(u64, u32) -> Option<NamespaceLimits>,
    ) {
        if !self.new.swap(false, Ordering::Relaxed) && which == Refresh::New {
            return;
        }
        for (&inode, namespace) in self.lock().iter_mut() {
            if which == Refresh::New && namespace.limits.is_some() {
                continue;
            }
            if let Some(limits) = read(namespace.socket, inode) {
                namespace.limits = Some(Limits {
                    tcp_max_tw_buckets: u64::from(limits.max_tw_buckets),
                    local_port_range: limits.port_range(),
                });
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<u32, Namespace>> {
        // A panic elsewhere while holding it left the map as it was.
        self.namespaces.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn occupancies(&self) -> Vec<netns::Occupancy> {
        let mut seen = self.lock();
        let mut read = Vec::with_capacity(seen.len());
        seen.retain(|&inode, namespace| match namespace.occupancy(inode) {
            Ok(occupancy) => {
                read.push(occupancy);
                true
            }
            // Its last process left: no series for it any more.
            Err(NetnsError::Gone(_)) => false,
            // Kept: the next scrape may read it.
            Err(_) => {
                self.failures.fetch_add(1, Ordering::Relaxed);
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
        let failed = ConstCounter::new(self.0.failures.load(Ordering::Relaxed));
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

impl Namespace {
    /// From outside when its limits are known and a process lives in it,
    /// else from inside.
    fn occupancy(&mut self, inode: u32) -> Result<netns::Occupancy, NetnsError> {
        if let Some(limits) = self.limits {
            if !self
                .member
                .as_deref()
                .is_some_and(|m| netns::is_member(m, inode))
            {
                self.member = netns::member(inode);
            }
            if let Some(member) = &self.member {
                return netns::occupancy_outside(inode, member, limits)
                    .map_err(|source| NetnsError::Read { inode, source });
            }
        }
        netns::occupancy(inode)
    }
}

/// A gauge's name, help, and value in a namespace.
type Gauge = (&'static str, &'static str, fn(&netns::Occupancy) -> i64);

fn saturating(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}
