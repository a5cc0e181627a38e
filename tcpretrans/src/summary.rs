//! What a session saw, for the exit summary: counts, retransmissions (sent
//! and failed apart) checked against the kernel's count, and with `--state`
//! the transitions and each namespace's TIME_WAIT and port occupancy.
use std::fmt;

use foldhash::HashMap;

use crate::{
    events::{Account, Event, TcpState},
    loader::MapEntries,
    netns::Occupancy,
    reconcile::{Comparison, NotCompared},
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
    /// Kernel reads at a non-NULL address that failed, leaving a field 0
    /// (never expected: a wrong `--btf` would).
    pub failed_reads: u64,
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
    /// Every retransmission reported: sent ones by cause with their
    /// segments, failed attempts apart.
    pub retransmits: Account,
    /// Segments of the sent retransmissions, by network namespace.
    reported_segments: HashMap<u32, u64>,
    /// The reported segments against the kernel's count; `None` when the
    /// output closed first.
    pub reconciliation: Option<Result<Comparison, NotCompared>>,
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
        match event {
            Event::State(change) => {
                self.transitions[slot(change.old_state)][slot(change.new_state)] += 1;
            }
            Event::Retransmit(r) => {
                let before = self.retransmits.segments;
                self.retransmits.record(r);
                let sent = self.retransmits.segments - before;
                if let Some(netns) = r.socket.netns.filter(|_| sent > 0) {
                    *self.reported_segments.entry(netns).or_default() += sent;
                }
            }
            _ => {}
        }
        if let Some(netns) = event.socket().and_then(|s| s.netns)
            && !self.namespaces.contains(&netns)
        {
            self.namespaces.push(netns);
        }
    }

    /// Segments of the sent retransmissions reported in a namespace.
    pub fn reported_segments(&self, netns: u32) -> u64 {
        self.reported_segments.get(&netns).copied().unwrap_or(0)
    }

    /// Segments the kernel retransmitted that were not reported: in the
    /// namespace compared, else those found in the gaps of the sockets'
    /// counts (`gaps`). Events missing like lost ones.
    pub fn unseen(&self) -> u64 {
        match &self.reconciliation {
            Some(Ok(comparison)) => comparison.unseen(),
            _ => self.retransmits.unseen,
        }
    }

    /// The comparison with the kernel's count, or why there is none (and
    /// then what the sockets' counts told).
    pub fn reconciliation_line(&self) -> Option<String> {
        self.reconciliation.as_ref().map(|compared| match compared {
            Ok(comparison) => comparison.describe(self.lost),
            Err(why) if self.retransmits.unseen > 0 => format!(
                "{why}; the sockets' own counts grew by {} retransmitted segments no event reported",
                self.retransmits.unseen
            ),
            Err(why) => why.to_string(),
        })
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
        let r = &self.retransmits;
        if r.retransmits() > 0 || r.failed > 0 {
            let causes: Vec<String> = r.causes().map(|(c, n)| format!("{c} {n}")).collect();
            let mut line = format!("retransmits: {}", r.retransmits());
            if !causes.is_empty() {
                line.push_str(&format!(" ({})", causes.join(", ")));
            }
            line.push_str(&format!(", {} segments", r.segments));
            if r.failed > 0 {
                let attempts = if r.failed == 1 { "attempt" } else { "attempts" };
                line.push_str(&format!("; {} failed {attempts} (not sent)", r.failed));
            }
            lines.push(line);
        }
        lines.extend(self.reconciliation_line());
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
        if self.failed_reads > 0 {
            write!(f, ", {} kernel reads failed", self.failed_reads)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        events::{Cause, Retransmit},
        fixtures::{loopback_socket, sample_retransmit, transition},
    };

    /// A retransmission of `segs` segments in namespace `netns`; `err` 0
    /// when the kernel sent it.
    fn retransmit(cause: Cause, segs: u16, err: i32, netns: u32) -> Event {
        let mut socket = loopback_socket(40000, 0);
        socket.netns = Some(netns);
        Event::Retransmit(Box::new(Retransmit {
            cause: Some(cause),
            segs: Some(segs),
            err,
            ..sample_retransmit(socket)
        }))
    }

    #[test]
    fn failed_attempts_are_counted_apart_from_retransmissions() {
        let mut summary = Summary::default();
        for event in [
            retransmit(Cause::Fast, 3, 0, 7),
            retransmit(Cause::Fast, 5, -16, 7),
            retransmit(Cause::Rto, 1, 0, 7),
            retransmit(Cause::Fast, 2, -11, 7),
            retransmit(Cause::Tlp, 4, 0, 8),
        ] {
            summary.count(&event);
        }
        let r = &summary.retransmits;
        assert_eq!((r.retransmits(), r.segments, r.failed), (3, 8, 2));
        assert_eq!(
            r.causes().collect::<Vec<_>>(),
            [("RTO", 1), ("FAST", 1), ("TLP", 1)],
            "failed attempts are in no cause"
        );
        // What `TcpRetransSegs` of each namespace added: sent segments only.
        assert_eq!(
            (summary.reported_segments(7), summary.reported_segments(8)),
            (4, 4)
        );
        assert_eq!(summary.reported_segments(9), 0);
        assert_eq!(summary.events, 5, "every attempt is an event shown");
        assert_eq!(
            summary.details(),
            ["retransmits: 3 (RTO 1, FAST 1, TLP 1), 8 segments; 2 failed attempts (not sent)"]
        );
    }

    #[test]
    fn the_kernels_count_ends_the_details_and_unseen_segments_are_missing_events() {
        let mut summary = Summary::default();
        summary.count(&retransmit(Cause::Fast, 2, 0, 7));
        assert_eq!(summary.unseen(), 0, "not compared yet");
        summary.reconciliation = Some(Ok(Comparison {
            netns: 7,
            kernel: 5,
            kernel_failed: 0,
            kernel_sent_around: 5,
            reported: summary.reported_segments(7),
        }));
        assert_eq!(summary.unseen(), 3);
        assert_eq!(
            summary.details().last().map(String::as_str),
            Some(
                "netns 7: kernel counted 5 retransmitted segments, 2 reported: 3 not seen (0 events lost)"
            )
        );
        summary.reconciliation = Some(Err(NotCompared::Filtered));
        assert_eq!(summary.unseen(), 0);
        assert!(
            summary
                .details()
                .last()
                .is_some_and(|l| l.ends_with("a filter leaves retransmissions out"))
        );
        summary.reconciliation = None;
        assert_eq!(summary.details().len(), 1, "only the retransmits");
    }

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
