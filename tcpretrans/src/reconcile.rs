//! The tool checked against the kernel. A network namespace's `Tcp:
//! RetransSegs` counts every segment its TCP retransmitted, and `TcpExt:
//! TCPRetransFail` those of them whose sending then failed: over a session
//! the difference must equal the segments of the sent retransmissions
//! reported there. What the kernel sent and the tool did not report, it did
//! not see: the event was lost, or the kernel ran no program for that
//! retransmission.
//!
//! Compared only where the tool was to report every retransmission of the
//! namespace: the one `--netns` names, or the tool's own without it (the
//! others' counters were not read at the start), and no filter but the
//! namespace and the state list, which leaves retransmissions alone.
//!
//! The counters are read four times: before the programs attach, once they
//! are attached, before they detach, and after. What the kernel counted
//! between the middle two every program was there to see: reported
//! segments short of that were not seen. What it counted between the outer
//! two bounds what may have been reported: retransmissions made while the
//! programs attached or detached may or may not be.
use std::fmt;

use crate::{
    cli::Args,
    decode::Decoder,
    netns::{Namespace, NetnsError, RetransCounts},
    summary::Summary,
};

/// A namespace's counts as the session goes.
#[derive(Debug)]
pub struct Baseline {
    namespace: Namespace,
    /// The counters before the programs attached, once they were
    /// attached, and before they detach.
    before_attach: RetransCounts,
    attached: RetransCounts,
    before_detach: RetransCounts,
}

/// Why the counts were not compared.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NotCompared {
    /// A filter leaves retransmissions out.
    Filtered,
    /// Without kernel BTF events carry no namespace or segment count.
    Unknown,
    /// The namespace or its counter could not be read.
    Unreadable(String),
}

impl NotCompared {
    /// The JSON `not_compared` value.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Filtered => "filtered",
            Self::Unknown => "unknown",
            Self::Unreadable(_) => "unreadable",
        }
    }
}

impl From<NetnsError> for NotCompared {
    fn from(err: NetnsError) -> Self {
        Self::Unreadable(err.to_string())
    }
}

impl fmt::Display for NotCompared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("retransmitted segments not compared with the kernel's count: ")?;
        match self {
            Self::Filtered => f.write_str("a filter leaves retransmissions out"),
            Self::Unknown => f.write_str(
                "without kernel BTF the events' namespaces or segment counts are unknown",
            ),
            Self::Unreadable(why) => f.write_str(why),
        }
    }
}

/// One namespace's retransmitted segments over the session: the kernel's
/// count and the tool's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Comparison {
    pub netns: u32,
    /// The increase of its `Tcp: RetransSegs` while the programs were
    /// attached.
    pub kernel: u64,
    /// Of those, the segments whose sending failed (`TcpExt:
    /// TCPRetransFail`): not sent, so never reported as sent.
    pub kernel_failed: u64,
    /// The segments sent from before they attached to after they detached.
    pub kernel_sent_around: u64,
    /// The segments of the sent retransmissions reported in it.
    pub reported: u64,
}

impl Comparison {
    /// Segments the kernel retransmitted while every program was attached
    /// that the tool did not report (at least: a report made while they
    /// attached or detached may stand in for one).
    pub fn unseen(&self) -> u64 {
        self.kernel_sent().saturating_sub(self.reported)
    }

    /// The segments the kernel retransmitted and sent while every program
    /// was attached.
    pub fn kernel_sent(&self) -> u64 {
        self.kernel.saturating_sub(self.kernel_failed)
    }

    /// `lost`: events the kernel side is known to have lost, of any kind
    /// and namespace (some of the unseen ones may be among them).
    pub fn describe(&self, lost: u64) -> String {
        let failed = match self.kernel_failed {
            0 => String::new(),
            n => format!(" ({n} failed to send)"),
        };
        let counts = format!(
            "netns {}: kernel counted {} retransmitted segments{failed}, {} reported",
            self.netns, self.kernel, self.reported
        );
        let kernel_sent = self.kernel_sent();
        if self.unseen() > 0 {
            format!("{counts}: {} not seen ({lost} events lost)", self.unseen())
        } else if self.reported > self.kernel_sent_around {
            format!(
                "{counts}: {} more than the kernel counted",
                self.reported - self.kernel_sent_around
            )
        } else if self.reported > kernel_sent {
            format!(
                "{counts} ({} of them while the programs attached or detached)",
                self.reported - kernel_sent
            )
        } else {
            counts
        }
    }
}

impl Baseline {
    /// Reads the count before the programs attach.
    pub fn take(args: &Args, decoder: &Decoder) -> Result<Self, NotCompared> {
        if filters_retransmits(args) {
            return Err(NotCompared::Filtered);
        }
        if !decoder.netns_known || !decoder.tcp.skb_gso_segs.is_known() {
            return Err(NotCompared::Unknown);
        }
        // Held open: a namespace every process leaves during the session can
        // still be read at its end.
        let namespace = match args.netns {
            Some(inode) => Namespace::open(inode)?,
            None => Namespace::own()?,
        };
        let count = namespace.retrans_counts()?;
        Ok(Self {
            namespace,
            before_attach: count,
            attached: count,
            before_detach: count,
        })
    }

    /// Reads the count once the programs are attached.
    pub fn attached(self) -> Result<Self, NotCompared> {
        let count = self.read()?;
        Ok(Self {
            attached: count,
            before_detach: count,
            ..self
        })
    }

    /// Reads the count before the programs detach.
    pub fn detaching(self) -> Result<Self, NotCompared> {
        let count = self.read()?;
        Ok(Self {
            before_detach: count,
            ..self
        })
    }

    /// Compares after the programs detached and the ring buffer was
    /// drained: retransmissions from anywhere in the namespace during the
    /// session are in both counts, or should be.
    pub fn compare(&self, summary: &Summary) -> Result<Comparison, NotCompared> {
        let after_detach = self.read()?;
        let netns = self.namespace.inode;
        let attached = self.before_detach.since(self.attached);
        Ok(Comparison {
            netns,
            kernel: attached.segs,
            kernel_failed: attached.failed,
            kernel_sent_around: after_detach.since(self.before_attach).sent(),
            reported: summary.reported_segments(netns),
        })
    }

    fn read(&self) -> Result<RetransCounts, NotCompared> {
        Ok(self.namespace.retrans_counts()?)
    }
}

/// Whether a filter other than the namespace leaves some retransmissions
/// out (`--state=LIST` selects transitions only).
fn filters_retransmits(args: &Args) -> bool {
    args.pid.is_some()
        || args.comm.is_some()
        || args.port.is_some()
        || args.lport.is_some()
        || args.rport.is_some()
        || args.laddr.is_some()
        || args.raddr.is_some()
        || args.ipv4
        || args.ipv6
        || args.cgroup.is_some()
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use super::*;
    use crate::fixtures;

    fn args(list: &[&str]) -> Args {
        Args::try_parse_from(std::iter::once("tcpretrans").chain(list.iter().copied())).unwrap()
    }

    #[test]
    fn only_the_namespace_and_state_list_keep_every_retransmission() {
        for kept in [
            &[][..],
            &["--netns", "/proc/self/ns/net"],
            &["--state=time_wait"],
            &["-c", "--top", "3"],
            &["--json", "-s", "--duration", "1"],
        ] {
            assert!(!filters_retransmits(&args(kept)), "{kept:?}");
        }
        for filtered in [
            &["-p", "1"][..],
            &["--comm", "nginx"],
            &["-P", "443"],
            &["--lport", "80"],
            &["--rport", "80"],
            &["--laddr", "10.0.0.0/8"],
            &["--raddr", "::1"],
            &["-4"],
            &["-6"],
        ] {
            assert!(filters_retransmits(&args(filtered)), "{filtered:?}");
        }
        // Where the cgroup2 hierarchy is mounted varies: set it as parsed.
        let in_cgroup = Args {
            cgroup: Some(crate::cgroup::Cgroup { id: 1, level: 1 }),
            ..args(&[])
        };
        assert!(filters_retransmits(&in_cgroup));
    }

    #[test]
    fn nothing_is_read_where_no_comparison_can_hold() {
        let decoder = fixtures::decoder();
        assert_eq!(
            Baseline::take(&args(&["-P", "443"]), &decoder).unwrap_err(),
            NotCompared::Filtered
        );
        let without_btf = Decoder {
            netns_known: false,
            ..decoder.clone()
        };
        assert_eq!(
            Baseline::take(&args(&[]), &without_btf).unwrap_err(),
            NotCompared::Unknown
        );
        let mut without_segs = decoder.clone();
        without_segs.tcp.skb_gso_segs = tcpretrans_common::Offset::ABSENT;
        assert_eq!(
            Baseline::take(&args(&[]), &without_segs).unwrap_err(),
            NotCompared::Unknown
        );
        let own = Baseline::take(&args(&[]), &decoder)
            .and_then(Baseline::attached)
            .and_then(Baseline::detaching)
            .unwrap();
        let compared = own.compare(&Summary::default()).unwrap();
        assert_eq!(compared.netns, own.namespace.inode);
        assert_eq!(compared.reported, 0, "nothing reported");
    }

    fn comparison(kernel: u64, kernel_sent_around: u64, reported: u64) -> Comparison {
        Comparison {
            netns: 4026532246,
            kernel,
            kernel_failed: 0,
            kernel_sent_around,
            reported,
        }
    }

    #[test]
    fn a_match_says_both_counts() {
        let c = comparison(2593, 2593, 2593);
        assert_eq!(c.unseen(), 0);
        assert_eq!(
            c.describe(0),
            "netns 4026532246: kernel counted 2593 retransmitted segments, 2593 reported"
        );
    }

    #[test]
    fn segments_the_kernel_counted_and_the_tool_did_not_report_are_unseen() {
        let c = comparison(2593, 2600, 2547);
        assert_eq!(c.unseen(), 46);
        assert_eq!(
            c.describe(0),
            "netns 4026532246: kernel counted 2593 retransmitted segments, 2547 reported: \
             46 not seen (0 events lost)"
        );
        assert!(c.describe(12).ends_with("46 not seen (12 events lost)"));
    }

    #[test]
    fn segments_that_failed_to_send_are_counted_but_not_unseen() {
        let c = Comparison {
            kernel_failed: 3,
            ..comparison(2593, 2590, 2590)
        };
        assert_eq!((c.kernel_sent(), c.unseen()), (2590, 0));
        assert_eq!(
            c.describe(0),
            "netns 4026532246: kernel counted 2593 retransmitted segments (3 failed to send), \
             2590 reported"
        );
        let short = Comparison {
            reported: 2580,
            ..c
        };
        assert!(
            short
                .describe(0)
                .ends_with("2580 reported: 10 not seen (0 events lost)")
        );
    }

    #[test]
    fn reports_made_while_attaching_or_detaching_are_no_excess() {
        // 3 retransmitted while the programs attached or detached, and
        // reported: within the outer count.
        let c = comparison(10, 13, 13);
        assert_eq!(c.unseen(), 0);
        assert!(
            c.describe(0)
                .ends_with("10 retransmitted segments, 13 reported (3 of them while the programs attached or detached)"),
            "{}",
            c.describe(0)
        );
    }

    #[test]
    fn more_reported_than_ever_counted_is_said_and_not_unseen() {
        let c = comparison(10, 11, 14);
        assert_eq!(c.unseen(), 0);
        assert!(c.describe(3).ends_with(": 3 more than the kernel counted"));
    }

    #[test]
    fn the_counts_bracket_attaching_and_detaching() {
        let decoder = fixtures::decoder();
        let baseline = Baseline::take(&args(&[]), &decoder).unwrap();
        let (before, netns) = (baseline.before_attach, baseline.namespace.inode);
        let later = |segs, failed| RetransCounts {
            segs: before.segs + segs,
            failed: before.failed + failed,
        };
        let attached = Baseline {
            attached: later(5, 1),
            before_detach: later(5, 1),
            ..baseline
        };
        let stopping = Baseline {
            before_detach: later(25, 3),
            ..attached
        };
        let compared = stopping.compare(&Summary::default()).unwrap();
        assert_eq!(
            (compared.netns, compared.kernel, compared.kernel_failed),
            (netns, 20, 2)
        );
    }

    #[test]
    fn without_a_comparison_it_says_why() {
        assert_eq!(
            NotCompared::Filtered.to_string(),
            "retransmitted segments not compared with the kernel's count: \
             a filter leaves retransmissions out"
        );
        assert_eq!(NotCompared::Unknown.name(), "unknown");
        assert_eq!(
            NotCompared::Unreadable("network namespace 9 has no process".into()).name(),
            "unreadable"
        );
    }
}
