//! What a session saw, for the exit summary: counts, and with `--state`
//! the transitions and each namespace's TIME_WAIT and port occupancy.
use std::{collections::BTreeMap, fmt};

use crate::{
    decode::{Event, TcpState},
    loader::MapEntries,
    netns::Occupancy,
};

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Summary {
    pub events: u64,
    /// Events the kernel side lost: could not queue, or never saw because
    /// the kernel skipped the program run (`lost_skipped` of them).
    pub lost: u64,
    pub lost_skipped: u64,
    /// Records that did not decode (a kernel/userspace mismatch; never expected).
    pub malformed: u64,
    /// The reader of our output went away (`| head`): end quietly.
    pub output_closed: bool,
    /// State transitions by (old, new) state, in lifecycle order.
    pub transitions: BTreeMap<(Option<TcpState>, Option<TcpState>), u64>,
    /// Network namespaces the events came from.
    pub namespaces: Vec<u32>,
    /// Their occupancy at exit (with `--state`), or why it could not be read.
    pub occupancy: Vec<Result<Occupancy, String>>,
    /// What the kernel side's socket maps still hold at exit (with `--state`).
    pub kernel_maps: Option<MapEntries>,
}

/// A state's name, `?` when unknown.
pub fn state_name(state: Option<TcpState>) -> &'static str {
    state.map_or("?", TcpState::name)
}

impl Summary {
    /// Counts an event printed.
    pub fn count(&mut self, event: &Event) {
        self.events += 1;
        if let Event::State(change) = event {
            *self
                .transitions
                .entry((change.old_state, change.new_state))
                .or_default() += 1;
        }
        if let Some(netns) = event.socket().and_then(|s| s.netns)
            && !self.namespaces.contains(&netns)
        {
            self.namespaces.push(netns);
        }
    }

    /// Lines for stderr after the one-line summary.
    pub fn details(&self) -> Vec<String> {
        let mut lines = Vec::new();
        if !self.transitions.is_empty() {
            let counts: Vec<String> = self
                .transitions
                .iter()
                .map(|(&(old, new), n)| format!("{}->{} {n}", state_name(old), state_name(new)))
                .collect();
            lines.push(format!("transitions: {}", counts.join(", ")));
        }
        if let Some(m) = self.kernel_maps {
            lines.push(format!(
                "kernel maps: {} sockets, {} listeners, {} connects tracked",
                m.sockets, m.listeners, m.connects
            ));
        }
        for occupancy in &self.occupancy {
            lines.push(match occupancy {
                Ok(o) => format!(
                    "netns {}: TIME_WAIT {} of tcp_max_tw_buckets {}; local ports in use {} of ip_local_port_range {}-{}",
                    o.netns,
                    o.time_wait,
                    o.tcp_max_tw_buckets,
                    o.local_ports_in_use,
                    o.local_port_range.0,
                    o.local_port_range.1
                ),
                Err(e) => e.clone(),
            });
        }
        lines
    }
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} events, {} lost", self.events, self.lost)?;
        if self.lost > 0 {
            write!(
                f,
                " ({} ring buffer full, {} program runs skipped by the kernel)",
                self.lost - self.lost_skipped,
                self.lost_skipped
            )?;
        }
        if self.malformed > 0 {
            write!(f, ", {} malformed", self.malformed)?;
        }
        Ok(())
    }
}
