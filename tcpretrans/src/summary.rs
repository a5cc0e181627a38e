//! What a session saw, for the exit summary: counts, and with `--state`
//! the transitions and each namespace's TIME_WAIT and port occupancy.
use std::fmt;

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
    /// State transitions by (old, new) state: index 0 for a state this
    /// tool does not know, else the kernel's number. (A table, not a map:
    /// it is counted at every event.)
    transitions: [[u64; STATE_SLOTS]; STATE_SLOTS],
    /// Network namespaces the events came from.
    pub namespaces: Vec<u32>,
    /// Their occupancy at exit (with `--state`), or why it could not be read.
    pub occupancy: Vec<Result<Occupancy, String>>,
    /// What the kernel side's socket maps still hold at exit (with `--state`).
    pub kernel_maps: Option<MapEntries>,
}

const STATE_SLOTS: usize = TcpState::ALL.len() + 1;

fn slot(state: Option<TcpState>) -> usize {
    state.map_or(0, |s| s as usize)
}

fn state_at(slot: usize) -> Option<TcpState> {
    slot.checked_sub(1)
        .and_then(|i| TcpState::ALL.get(i).copied())
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
            self.transitions[slot(change.old_state)][slot(change.new_state)] += 1;
        }
        if let Some(netns) = event.socket().and_then(|s| s.netns)
            && !self.namespaces.contains(&netns)
        {
            self.namespaces.push(netns);
        }
    }

    /// The transitions seen, as `((old, new), count)`, in lifecycle order
    /// (unknown states first).
    pub fn transitions(
        &self,
    ) -> impl Iterator<Item = ((Option<TcpState>, Option<TcpState>), u64)> + '_ {
        self.transitions.iter().enumerate().flat_map(|(old, row)| {
            row.iter()
                .enumerate()
                .filter(|&(_, &count)| count > 0)
                .map(move |(new, &count)| ((state_at(old), state_at(new)), count))
        })
    }

    /// Lines for stderr after the one-line summary.
    pub fn details(&self) -> Vec<String> {
        let mut lines = Vec::new();
        let counts: Vec<String> = self
            .transitions()
            .map(|((old, new), n)| format!("{}->{} {n}", state_name(old), state_name(new)))
            .collect();
        if !counts.is_empty() {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::tests::transition;

    #[test]
    fn transitions_are_counted_in_lifecycle_order() {
        let mut summary = Summary::default();
        for (old, new) in [
            (TcpState::FinWait1, TcpState::FinWait2),
            (TcpState::Established, TcpState::FinWait1),
            (TcpState::FinWait1, TcpState::FinWait2),
            (TcpState::Close, TcpState::SynSent),
        ] {
            summary.count(&transition(old, new, 80, 0));
        }
        let counted: Vec<_> = summary.transitions().collect();
        assert_eq!(
            counted,
            [
                ((Some(TcpState::Established), Some(TcpState::FinWait1)), 1),
                ((Some(TcpState::FinWait1), Some(TcpState::FinWait2)), 2),
                ((Some(TcpState::Close), Some(TcpState::SynSent)), 1),
            ]
        );
        assert_eq!(summary.events, 4);
        assert_eq!(
            summary.details()[0],
            "transitions: ESTABLISHED->FIN_WAIT1 1, FIN_WAIT1->FIN_WAIT2 2, CLOSE->SYN_SENT 1"
        );
    }
}
