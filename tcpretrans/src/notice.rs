//! What a session tells the person running it beside its output: what this
//! kernel leaves unknown, and what was lost or skipped. The library hands
//! each notice to its caller; `main` prints them on stderr.
use std::fmt;

use crate::{decode::DecodeError, kernel::UnknownHz};

#[derive(Debug)]
pub enum Notice {
    /// BTF members this kernel lacks or has in another shape.
    UnavailableMembers(Vec<String>),
    /// No usable BTF at all: why.
    NoBtf(String),
    UnknownHz(UnknownHz),
    /// The first record that could not be decoded (the summary counts all).
    Malformed(DecodeError),
    /// `-c` in text: the tables come at the end.
    CountingFlows,
    /// The first kernel read that failed (the summary counts all).
    FailedReads,
    /// Events the ring buffer had no room for, said as they happen (the
    /// text output marks them in its stream too; JSON has a `lost` event).
    Lost(u64),
}

impl fmt::Display for Notice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::UnavailableMembers(members) => write!(
                f,
                "kernel BTF lacks {}: what they give is shown as unknown",
                members.join(", ")
            ),
            Self::NoBtf(why) => write!(
                f,
                "{why}; namespaces, timers, RTT, congestion and retry budgets are shown as \
                 unknown"
            ),
            Self::UnknownHz(err) => err.fmt(f),
            Self::Malformed(err) => write!(f, "skipping malformed event: {err}"),
            Self::FailedReads => f.write_str(
                "a kernel read failed: the field it fills shows 0 (the summary counts them)",
            ),
            Self::CountingFlows => f.write_str("counting retransmissions per flow"),
            Self::Lost(count) => write!(f, "lost {count} events (ring buffer full)"),
        }
    }
}
