//! The event model: what the tool reports (retransmissions, state changes,
//! resets, connect errors, session ends, losses) and a connection's
//! retransmission account. Apart from the decoder because most modules
//! consume events and need nothing of the kernel's record layouts.
use std::{
    hash::{Hash, Hasher},
    mem::size_of,
    net::IpAddr,
    time::Duration,
};

use std::sync::Arc;

use compact_str::CompactString;
use jiff::Timestamp;

use crate::identity::Identity;

/// TCP states as the kernel numbers them (`include/net/tcp_states.h`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum TcpState {
    Established = 1,
    SynSent,
    SynRecv,
    FinWait1,
    FinWait2,
    TimeWait,
    Close,
    CloseWait,
    LastAck,
    Listen,
    Closing,
    NewSynRecv,
}

impl TcpState {
    pub const ALL: [Self; 12] = [
        Self::Established,
        Self::SynSent,
        Self::SynRecv,
        Self::FinWait1,
        Self::FinWait2,
        Self::TimeWait,
        Self::Close,
        Self::CloseWait,
        Self::LastAck,
        Self::Listen,
        Self::Closing,
        Self::NewSynRecv,
    ];

    pub fn from_u8(value: u8) -> Option<Self> {
        Self::ALL.get(usize::from(value).checked_sub(1)?).copied()
    }

    /// The kernel's name without the `TCP_` prefix.
    pub fn name(self) -> &'static str {
        match self {
            Self::Established => "ESTABLISHED",
            Self::SynSent => "SYN_SENT",
            Self::SynRecv => "SYN_RECV",
            Self::FinWait1 => "FIN_WAIT1",
            Self::FinWait2 => "FIN_WAIT2",
            Self::TimeWait => "TIME_WAIT",
            Self::Close => "CLOSE",
            Self::CloseWait => "CLOSE_WAIT",
            Self::LastAck => "LAST_ACK",
            Self::Listen => "LISTEN",
            Self::Closing => "CLOSING",
            Self::NewSynRecv => "NEW_SYN_RECV",
        }
    }

    /// Case-sensitive inverse of `name`.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.name() == name)
    }
}

/// The process owning a socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Process {
    pub pid: u32,
    pub uid: u32,
    /// Inline (a task name is at most 15 bytes): no allocation per event.
    pub comm: CompactString,
}

/// What every socket event carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Socket {
    pub time: Timestamp,
    /// 4 or 6: the socket's family (an IPv6 socket may carry IPv4-mapped addresses).
    pub family: u8,
    pub laddr: IpAddr,
    pub lport: u16,
    pub raddr: IpAddr,
    pub rport: u16,
    pub netns: Option<u32>,
    pub skaddr: u64,
    pub owner: Option<Process>,
    /// The socket's inode, when the kernel side did not know its owner.
    pub inode: Option<u64>,
    /// Its cgroup v2 id, when the kernel could read it.
    pub cgroup: Option<u64>,
    /// What its cgroup tells: path, container, pod (`identity`).
    pub identity: Option<Arc<Identity>>,
}

/// A connection's identity across its sockets (request socket, full
/// socket, timewait socket).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct FourTuple {
    pub netns: Option<u32>,
    pub laddr: IpAddr,
    pub lport: u16,
    pub raddr: IpAddr,
    pub rport: u16,
}

/// Two words for the hasher rather than each field in turn: the tables of
/// sessions and TIME_WAIT entries hash a 4-tuple at most events.
impl Hash for FourTuple {
    fn hash<H: Hasher>(&self, state: &mut H) {
        let bits = |addr: IpAddr| match addr {
            IpAddr::V4(v4) => u128::from(v4.to_bits()),
            IpAddr::V6(v6) => v6.to_bits(),
        };
        state.write_u128(bits(self.laddr) ^ bits(self.raddr).rotate_left(64));
        state.write_u64(
            u64::from(self.netns.unwrap_or(0)) << 32
                | u64::from(self.lport) << 16
                | u64::from(self.rport),
        );
    }
}

impl Socket {
    pub fn four_tuple(&self) -> FourTuple {
        FourTuple {
            netns: self.netns,
            laddr: self.laddr,
            lport: self.lport,
            raddr: self.raddr,
            rport: self.rport,
        }
    }
}

/// What triggered a retransmission.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Cause {
    /// The connecting side's SYN, after its timer expired.
    Syn,
    /// The listening side's SYN-ACK.
    SynAck,
    /// The retransmission timer expired (and the socket is in loss recovery).
    Rto,
    /// Fast retransmit / recovery: ACK feedback (duplicate ACKs, SACK, RACK).
    Fast,
    /// Tail loss probe: the probe timer resent the last segment.
    Tlp,
}

impl Cause {
    /// Every cause, in the order tables show them.
    pub const ALL: [Self; 5] = [Self::Rto, Self::Fast, Self::Tlp, Self::Syn, Self::SynAck];

    pub fn name(self) -> &'static str {
        match self {
            Self::Syn => "SYN",
            Self::SynAck => "SYNACK",
            Self::Rto => "RTO",
            Self::Fast => "FAST",
            Self::Tlp => "TLP",
        }
    }
}

/// One retransmission with the socket's state at that moment. `None`
/// where this kernel (or BTF) could not tell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Retransmit {
    pub socket: Socket,
    pub cause: Option<Cause>,
    pub state: Option<TcpState>,
    /// 0, or why the kernel could not send the attempt: a negative errno,
    /// or `NET_XMIT_DROP` (a local queue dropped it).
    pub err: i32,
    /// The retransmission timeout: for RTO, SYN and SYN-ACK events the one
    /// that just expired.
    pub rto: Option<Duration>,
    pub backoff: Option<u8>,
    /// Timeout-driven retransmissions of this episode before this one.
    pub retries: Option<u32>,
    /// Where the kernel gives up (`tcp_retries2` is applied as a time
    /// budget modelled on this count).
    pub retry_limit: Option<u32>,
    pub total_retrans: Option<u32>,
    pub srtt: Option<Duration>,
    pub rttvar: Option<Duration>,
    pub cwnd: Option<u32>,
    pub ssthresh: Option<u32>,
    /// Segments in this skb (`tcp_skb_pcount`): what `TcpRetransSegs` adds.
    pub segs: Option<u16>,
    /// Segments the socket retransmitted since its previous event that no
    /// event reported (see `gaps`); `None` for its first event.
    pub unseen_segs: Option<u32>,
    /// Payload bytes.
    pub bytes: Option<u32>,
    pub seq: Option<u32>,
    /// The owner closed the socket; the kernel finishes it alone.
    pub orphan: Option<bool>,
}

/// A retransmission's `err` when a local queue (qdisc) dropped it:
/// `tcp_transmit_skb` passes the device layer's positive code through.
pub const NET_XMIT_DROP: i32 = 1;

impl Retransmit {
    /// Whether the kernel actually sent it.
    pub fn sent(&self) -> bool {
        self.err == 0
    }
}

/// How a connection reached CLOSE: left for good, or handed to a timewait
/// socket (which the state tracepoint never reports).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Close {
    /// Handed to a timewait socket in TIME_WAIT.
    TimeWait,
    /// Handed to a timewait socket still in FIN_WAIT2: the owner closed
    /// before the peer's FIN arrived (`tcp_fin_timeout` applies).
    FinWait2Timewait,
    /// Should have entered TIME_WAIT, but `tcp_max_tw_buckets` was reached.
    TimeWaitOverflow,
    ResetReceived,
    ResetSent,
    /// Ended with a socket error (`error`), e.g. retries exhausted.
    Error,
    /// An orderly close that needs no TIME_WAIT (the passive side).
    Closed,
}

impl Close {
    pub fn name(self) -> &'static str {
        match self {
            Self::TimeWait => "time_wait",
            Self::FinWait2Timewait => "fin_wait2_timewait",
            Self::TimeWaitOverflow => "time_wait_overflow",
            Self::ResetReceived => "reset_received",
            Self::ResetSent => "reset_sent",
            Self::Error => "error",
            Self::Closed => "closed",
        }
    }
}

/// One TCP state transition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateChange {
    pub socket: Socket,
    pub old_state: Option<TcpState>,
    /// For a connection handed to a timewait socket, that socket's state
    /// (TIME_WAIT, or FIN_WAIT2) rather than the CLOSE of the full socket.
    pub new_state: Option<TcpState>,
    /// Time spent in `old_state`; unknown when the socket predates the tracer.
    pub prev_state: Option<Duration>,
    /// On reaching CLOSE: why. `None` elsewhere, or when this kernel's BTF
    /// does not let the tool tell.
    pub close: Option<Close>,
    /// On reaching CLOSE: the socket's error (positive errno), if any.
    pub error: Option<i32>,
    pub orphan: Option<bool>,
    /// When the kernel side saw the socket's first transition (its
    /// `connect()`, `listen()` or creation from a listener): a connection's
    /// start, known even when a state filter kept that transition from
    /// userspace.
    pub opened: Option<Timestamp>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResetDirection {
    Sent,
    Received,
}

impl ResetDirection {
    pub fn name(self) -> &'static str {
        match self {
            Self::Sent => "sent",
            Self::Received => "received",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    Retransmit(Box<Retransmit>),
    State(Box<StateChange>),
    Reset {
        socket: Box<Socket>,
        direction: ResetDirection,
        state: Option<TcpState>,
    },
    /// A new connection on a 4-tuple still in TIME_WAIT (`tcp_tw_reuse`);
    /// derived in userspace from the state events.
    TimeWaitReuse {
        socket: Box<Socket>,
        /// How long the 4-tuple had been in TIME_WAIT.
        time_wait: Duration,
    },
    /// A TCP connect() that failed; `socket` holds the caller and the
    /// destination it asked for.
    ConnectError {
        socket: Box<Socket>,
        /// Positive errno.
        errno: i32,
    },
    /// A connection ended (with `--state`): what it went through.
    SessionEnd(Box<SessionEnd>),
    /// Events the kernel side could not queue because the ring buffer was full.
    Lost {
        time: Timestamp,
        count: u64,
    },
}

// An event is moved at every step from decode to output: variants that
// carry a socket are boxed, keeping it a few words.
const _: () = assert!(size_of::<Event>() <= 32);

/// The end of a connection and its account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionEnd {
    /// The transition that ended it.
    pub change: StateChange,
    /// When it began, if the tool saw it begin.
    pub opened: Option<Timestamp>,
    pub account: Account,
}

/// What a connection (or a flow, with `-c`, or a whole session) retransmitted.
///
/// One rule for every count: a retransmission is an attempt the kernel sent,
/// and so counted in `TcpRetransSegs`. An attempt it could not send (`err`
/// != 0, kernels 6.17+) is counted in `failed` and nowhere else.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Account {
    /// Retransmissions by `Cause::ALL` index.
    pub by_cause: [u64; Cause::ALL.len()],
    /// Retransmissions whose cause this kernel could not tell.
    pub unknown_cause: u64,
    /// Segments sent again (what `TcpRetransSegs` counts).
    pub segments: u64,
    /// Attempts the kernel could not send (e.g. `EBUSY`: the previous copy
    /// was still queued in the host).
    pub failed: u64,
    /// Segments retransmitted with no event, found by the gaps in the
    /// socket's count (see `gaps`).
    pub unseen: u64,
    pub first: Option<Timestamp>,
    pub last: Option<Timestamp>,
    /// The largest retransmission timeout seen.
    pub max_rto: Option<Duration>,
}

impl Account {
    pub fn record(&mut self, r: &Retransmit) {
        if !r.sent() {
            self.failed += 1;
            return;
        }
        match r
            .cause
            .and_then(|c| Cause::ALL.iter().position(|&a| a == c))
        {
            Some(i) => self.by_cause[i] += 1,
            None => self.unknown_cause += 1,
        }
        self.segments += u64::from(r.segs.unwrap_or(1));
        self.unseen += u64::from(r.unseen_segs.unwrap_or(0));
        self.first.get_or_insert(r.socket.time);
        self.last = Some(r.socket.time);
        self.max_rto = self.max_rto.max(r.rto);
    }

    /// Retransmissions sent (failed attempts are not among them).
    pub fn retransmits(&self) -> u64 {
        self.by_cause.iter().sum::<u64>() + self.unknown_cause
    }

    /// `(cause name, count)` for the causes seen.
    pub fn causes(&self) -> impl Iterator<Item = (&'static str, u64)> + '_ {
        Cause::ALL
            .iter()
            .zip(self.by_cause)
            .map(|(c, n)| (c.name(), n))
            .chain([("unknown", self.unknown_cause)])
            .filter(|&(_, n)| n > 0)
    }
}

impl Event {
    /// The socket the event is about.
    pub fn socket(&self) -> Option<&Socket> {
        match self {
            Self::Retransmit(r) => Some(&r.socket),
            Self::State(change) => Some(&change.socket),
            Self::SessionEnd(end) => Some(&end.change.socket),
            Self::Reset { socket, .. }
            | Self::ConnectError { socket, .. }
            | Self::TimeWaitReuse { socket, .. } => Some(socket),
            Self::Lost { .. } => None,
        }
    }

    /// The socket of an event the kernel made (derived events carry a copy
    /// of an earlier event's).
    pub fn kernel_socket_mut(&mut self) -> Option<&mut Socket> {
        match self {
            Self::Retransmit(r) => Some(&mut r.socket),
            Self::State(change) => Some(&mut change.socket),
            Self::Reset { socket, .. } | Self::ConnectError { socket, .. } => Some(socket),
            Self::TimeWaitReuse { .. } | Self::SessionEnd(_) | Self::Lost { .. } => None,
        }
    }

    /// Whether it is of the connection lifecycle (shown with `--state`).
    pub fn is_lifecycle(&self) -> bool {
        match self {
            Self::State(_)
            | Self::SessionEnd(_)
            | Self::Reset { .. }
            | Self::TimeWaitReuse { .. } => true,
            Self::Retransmit(_) | Self::ConnectError { .. } | Self::Lost { .. } => false,
        }
    }

    /// The process the event is attributed to.
    pub fn owner(&self) -> Option<&Process> {
        self.socket().and_then(|s| s.owner.as_ref())
    }

    /// The `event` name in JSON.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Retransmit(_) => "retransmit",
            Self::State(change) if change.close == Some(Close::TimeWaitOverflow) => {
                "time_wait_overflow"
            }
            Self::State(_) => "state",
            Self::Reset { .. } => "reset",
            Self::ConnectError { .. } => "connect_error",
            Self::TimeWaitReuse { .. } => "time_wait_reuse",
            Self::SessionEnd(_) => "session_end",
            Self::Lost { .. } => "lost",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_names_round_trip() {
        for state in TcpState::ALL {
            assert_eq!(TcpState::from_name(state.name()), Some(state));
            assert_eq!(TcpState::from_u8(state as u8), Some(state));
        }
        assert_eq!(TcpState::from_u8(0), None);
        assert_eq!(TcpState::from_u8(13), None);
    }
}
