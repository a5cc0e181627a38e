//! Ring-buffer records → events with addresses, names and wall-clock times.
use std::{
    mem::size_of,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    time::Duration,
};

use jiff::Timestamp;
use nix::time::{ClockId, clock_gettime};
use tcpretrans_common::{
    DURATION_UNKNOWN, EventHeader, Flow, Owner, RetransmitEvent, StateEvent, event_kind,
};
use thiserror::Error;

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

/// Converts kernel `CLOCK_MONOTONIC` nanoseconds to wall-clock time.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    /// Realtime minus monotonic, in nanoseconds, sampled at start-up.
    offset_ns: i128,
}

impl Clock {
    pub fn new() -> Self {
        let ns = |id| {
            let t = clock_gettime(id).expect("CLOCK_REALTIME and CLOCK_MONOTONIC always exist");
            i128::from(t.tv_sec()) * 1_000_000_000 + i128::from(t.tv_nsec())
        };
        Self {
            offset_ns: ns(ClockId::CLOCK_REALTIME) - ns(ClockId::CLOCK_MONOTONIC),
        }
    }

    /// A clock whose wall time equals the monotonic time plus `offset_ns` (tests).
    pub fn with_offset(offset_ns: i128) -> Self {
        Self { offset_ns }
    }

    pub fn wall(&self, monotonic_ns: u64) -> Timestamp {
        Timestamp::from_nanosecond(self.offset_ns + i128::from(monotonic_ns))
            .unwrap_or(Timestamp::UNIX_EPOCH)
    }

    /// Wall-clock now, for events userspace makes itself.
    pub fn now(&self) -> Timestamp {
        Timestamp::now()
    }
}

impl Default for Clock {
    fn default() -> Self {
        Self::new()
    }
}

/// The process owning a socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Process {
    pub pid: u32,
    pub uid: u32,
    pub comm: String,
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
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    Retransmit {
        socket: Socket,
        state: Option<TcpState>,
        /// 0, or the negative errno of a failed retransmit attempt.
        err: i32,
    },
    State {
        socket: Socket,
        old_state: Option<TcpState>,
        new_state: Option<TcpState>,
        /// Time spent in `old_state`; unknown when the socket predates the tracer.
        prev_state: Option<Duration>,
    },
    /// Events the kernel side could not queue because the ring buffer was full.
    Lost { time: Timestamp, count: u64 },
}

impl Event {
    /// The `event` name in JSON.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Retransmit { .. } => "retransmit",
            Self::State { .. } => "state",
            Self::Lost { .. } => "lost",
        }
    }
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("empty ring buffer record")]
    Empty,
    #[error("unknown event kind {0}")]
    UnknownKind(u8),
    #[error("event kind {kind} record has {len} bytes, expected {expected}")]
    Length {
        kind: u8,
        len: usize,
        expected: usize,
    },
}

/// Decodes one ring-buffer record.
pub fn decode(bytes: &[u8], clock: &Clock) -> Result<Event, DecodeError> {
    let kind = *bytes.first().ok_or(DecodeError::Empty)?;
    match kind {
        event_kind::RETRANSMIT => {
            let raw: RetransmitEvent = read_record(kind, bytes)?;
            Ok(Event::Retransmit {
                socket: socket(&raw.header, &raw.flow, &raw.owner, clock),
                state: TcpState::from_u8(raw.state),
                err: raw.err,
            })
        }
        event_kind::STATE => {
            let raw: StateEvent = read_record(kind, bytes)?;
            Ok(Event::State {
                socket: socket(&raw.header, &raw.flow, &raw.owner, clock),
                old_state: TcpState::from_u8(raw.old_state),
                new_state: TcpState::from_u8(raw.new_state),
                prev_state: (raw.prev_state_ns != DURATION_UNKNOWN)
                    .then(|| Duration::from_nanos(raw.prev_state_ns)),
            })
        }
        other => Err(DecodeError::UnknownKind(other)),
    }
}

fn read_record<T: aya::Pod>(kind: u8, bytes: &[u8]) -> Result<T, DecodeError> {
    if bytes.len() < size_of::<T>() {
        return Err(DecodeError::Length {
            kind,
            len: bytes.len(),
            expected: size_of::<T>(),
        });
    }
    // SAFETY: `T` is plain old data and `bytes` holds at least `size_of::<T>()`;
    // the read tolerates any alignment.
    Ok(unsafe { bytes.as_ptr().cast::<T>().read_unaligned() })
}

fn socket(header: &EventHeader, flow: &Flow, owner: &Owner, clock: &Clock) -> Socket {
    Socket {
        time: clock.wall(header.timestamp_ns),
        family: header.family,
        laddr: address(header.family, flow.saddr),
        lport: flow.sport,
        raddr: address(header.family, flow.daddr),
        rport: flow.dport,
        netns: (header.netns != 0).then_some(header.netns),
        skaddr: header.skaddr,
        owner: process(owner),
    }
}

/// IPv4 sockets' addresses arrive IPv4-mapped; IPv6 sockets talking to IPv4
/// peers carry mapped addresses too. Both are shown as IPv4.
fn address(family: u8, bytes: [u8; 16]) -> IpAddr {
    let v6 = Ipv6Addr::from(bytes);
    match v6.to_ipv4_mapped() {
        Some(v4) => IpAddr::V4(v4),
        None if family == 4 => {
            IpAddr::V4(Ipv4Addr::new(bytes[12], bytes[13], bytes[14], bytes[15]))
        }
        None => IpAddr::V6(v6),
    }
}

fn process(owner: &Owner) -> Option<Process> {
    if owner.pid == 0 {
        return None;
    }
    let len = owner
        .comm
        .iter()
        .position(|&b| b == 0)
        .unwrap_or(owner.comm.len());
    Some(Process {
        pid: owner.pid,
        uid: owner.uid,
        comm: String::from_utf8_lossy(&owner.comm[..len]).into_owned(),
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub fn bytes_of<T: aya::Pod>(value: &T) -> Vec<u8> {
        // SAFETY: plain old data, every byte initialized (padding is explicit).
        unsafe {
            std::slice::from_raw_parts(std::ptr::from_ref(value).cast::<u8>(), size_of::<T>())
        }
        .to_vec()
    }

    fn mapped(v4: [u8; 4]) -> [u8; 16] {
        let mut a = [0; 16];
        a[10] = 0xff;
        a[11] = 0xff;
        a[12..].copy_from_slice(&v4);
        a
    }

    pub fn header(kind: u8, family: u8) -> EventHeader {
        EventHeader {
            kind,
            family,
            _pad: 0,
            netns: 4026532289,
            timestamp_ns: 2_000_000_123,
            skaddr: 0xffff_8880_1234_5678,
        }
    }

    pub fn owner(pid: u32, comm: &str) -> Owner {
        let mut o = Owner {
            pid,
            uid: 1000,
            comm: [0; 16],
        };
        o.comm[..comm.len()].copy_from_slice(comm.as_bytes());
        o
    }

    pub fn v4_flow() -> Flow {
        Flow {
            saddr: mapped([10, 0, 0, 1]),
            daddr: mapped([10, 0, 0, 2]),
            sport: 40000,
            dport: 80,
        }
    }

    #[test]
    fn decodes_a_retransmit() {
        let raw = RetransmitEvent {
            header: header(event_kind::RETRANSMIT, 4),
            owner: owner(42, "curl"),
            flow: v4_flow(),
            state: 1,
            _pad0: 0,
            _pad1: 0,
            err: -16,
            _pad2: 0,
        };
        let clock = Clock::with_offset(1_700_000_000_000_000_000);
        let event = decode(&bytes_of(&raw), &clock).unwrap();
        let Event::Retransmit { socket, state, err } = event else {
            panic!("{event:?}")
        };
        assert_eq!(state, Some(TcpState::Established));
        assert_eq!(err, -16);
        assert_eq!(socket.laddr.to_string(), "10.0.0.1");
        assert_eq!((socket.lport, socket.rport), (40000, 80));
        assert_eq!(socket.raddr.to_string(), "10.0.0.2");
        assert_eq!(socket.netns, Some(4026532289));
        assert_eq!(
            socket.owner,
            Some(Process {
                pid: 42,
                uid: 1000,
                comm: "curl".into()
            })
        );
        assert_eq!(socket.time.as_nanosecond(), 1_700_000_002_000_000_123);
    }

    #[test]
    fn decodes_a_state_change_with_unknown_duration_and_owner() {
        let mut raw = StateEvent {
            header: header(event_kind::STATE, 6),
            owner: Owner::UNKNOWN,
            flow: Flow {
                saddr: Ipv6Addr::LOCALHOST.octets(),
                daddr: mapped([192, 0, 2, 1]),
                sport: 1,
                dport: 2,
            },
            old_state: 4,
            new_state: 5,
            _pad: 0,
            prev_state_ns: DURATION_UNKNOWN,
        };
        let event = decode(&bytes_of(&raw), &Clock::with_offset(0)).unwrap();
        let Event::State {
            socket,
            old_state,
            new_state,
            prev_state,
        } = event
        else {
            panic!()
        };
        assert_eq!(
            (old_state, new_state),
            (Some(TcpState::FinWait1), Some(TcpState::FinWait2))
        );
        assert_eq!(prev_state, None);
        assert_eq!(socket.owner, None);
        assert_eq!(socket.family, 6);
        assert_eq!(socket.laddr.to_string(), "::1");
        assert_eq!(
            socket.raddr.to_string(),
            "192.0.2.1",
            "IPv4-mapped shown as IPv4"
        );

        raw.prev_state_ns = 1_500_000;
        let Event::State { prev_state, .. } =
            decode(&bytes_of(&raw), &Clock::with_offset(0)).unwrap()
        else {
            panic!()
        };
        assert_eq!(prev_state, Some(Duration::from_micros(1500)));
    }

    #[test]
    fn rejects_short_and_unknown_records() {
        assert_eq!(decode(&[], &Clock::with_offset(0)), Err(DecodeError::Empty));
        assert_eq!(
            decode(&[99, 0, 0], &Clock::with_offset(0)),
            Err(DecodeError::UnknownKind(99))
        );
        assert!(matches!(
            decode(&[event_kind::STATE; 10], &Clock::with_offset(0)),
            Err(DecodeError::Length { .. })
        ));
    }

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
