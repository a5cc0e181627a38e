//! Ring-buffer records → events: the kernel side's fixed layouts read,
//! checked and turned into the event model (`crate::events`), with
//! addresses, names and wall-clock times, knowing what this kernel offers.
use std::{
    mem::size_of,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    time::Duration,
};

use compact_str::CompactString;
use jiff::Timestamp;
use nix::time::{ClockId, clock_gettime};
use tcpretrans_common::{
    ABSENT, Address, ConnectErrorEvent, DURATION_UNKNOWN, EventHeader, Flow, Offset, Owner,
    ResetEvent, RetransmitEvent, StateEvent, TcpOffsets, event_kind, reset_direction, retry_budget,
};
use thiserror::Error;

use crate::events::{
    Cause, Close, Event, Process, ResetDirection, Retransmit, Socket, StateChange, TcpState,
};

/// `icsk_pending` while the tail-loss-probe timer runs (`ICSK_TIME_LOSS_PROBE`).
const ICSK_TIME_LOSS_PROBE: u8 = 5;
/// `icsk_ca_state` after an RTO (`TCP_CA_Loss`).
const TCP_CA_LOSS: u8 = 4;
const TCPHDR_FIN: u8 = 0x01;
const TCPHDR_SYN: u8 = 0x02;
/// `TCP_RTO_MAX`: no timer is armed for longer.
const TCP_RTO_MAX: Duration = Duration::from_secs(120);
/// `TCP_TIMEOUT_INIT`: the first SYN's timer.
const TCP_TIMEOUT_INIT: Duration = Duration::from_secs(1);

/// Converts kernel `CLOCK_MONOTONIC` nanoseconds to wall-clock time.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    /// Realtime minus monotonic, in nanoseconds, sampled at start-up.
    offset_ns: i128,
}

impl Clock {
    pub fn new() -> Self {
        Self {
            offset_ns: clock_ns(ClockId::CLOCK_REALTIME) - clock_ns(ClockId::CLOCK_MONOTONIC),
        }
    }

    /// `CLOCK_MONOTONIC` now, as the programs stamp events.
    pub fn monotonic_ns() -> u64 {
        u64::try_from(clock_ns(ClockId::CLOCK_MONOTONIC)).unwrap_or(0)
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

fn clock_ns(id: ClockId) -> i128 {
    let t = clock_gettime(id).expect("CLOCK_REALTIME and CLOCK_MONOTONIC always exist");
    i128::from(t.tv_sec()) * 1_000_000_000 + i128::from(t.tv_nsec())
}

impl Default for Clock {
    fn default() -> Self {
        Self::new()
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

/// Turns ring-buffer records into events, knowing what this kernel offers.
#[derive(Debug, Clone)]
pub struct Decoder {
    pub clock: Clock,
    /// The kernel's HZ, for `icsk_rto` (in jiffies).
    pub hz: Option<u32>,
    /// Where the kernel programs read socket fields (`ABSENT`: unknown).
    pub tcp: TcpOffsets,
    /// Whether the socket's namespace (and so its sysctls) can be read.
    pub netns_known: bool,
}

impl Decoder {
    /// Decodes one ring-buffer record.
    pub fn decode(&self, bytes: &[u8]) -> Result<Event, DecodeError> {
        let kind = *bytes.first().ok_or(DecodeError::Empty)?;
        match kind {
            event_kind::RETRANSMIT | event_kind::SYNACK => {
                let raw: RetransmitEvent = read_record(kind, bytes)?;
                Ok(Event::Retransmit(Box::new(self.retransmit(&raw))))
            }
            event_kind::STATE => {
                let raw: StateEvent = read_record(kind, bytes)?;
                Ok(Event::State(Box::new(self.state_change(&raw))))
            }
            event_kind::CONNECT_ERROR => {
                let raw: ConnectErrorEvent = read_record(kind, bytes)?;
                Ok(Event::ConnectError {
                    socket: Box::new(socket(&raw.header, &raw.flow, &raw.owner, &self.clock)),
                    errno: raw.errno,
                })
            }
            event_kind::RESET => {
                let raw: ResetEvent = read_record(kind, bytes)?;
                let direction = if raw.direction == reset_direction::SENT {
                    ResetDirection::Sent
                } else {
                    ResetDirection::Received
                };
                Ok(Event::Reset {
                    socket: Box::new(socket(&raw.header, &raw.flow, &raw.owner, &self.clock)),
                    direction,
                    state: TcpState::from_u8(raw.state),
                })
            }
            other => Err(DecodeError::UnknownKind(other)),
        }
    }

    fn state_change(&self, raw: &StateEvent) -> StateChange {
        let t = &self.tcp;
        let old_state = TcpState::from_u8(raw.old_state);
        let mut new_state = TcpState::from_u8(raw.new_state);
        let timewait_known = self.netns_known
            && [
                t.net_tw_hashinfo.byte(),
                t.hashinfo_ehash.byte(),
                t.hashinfo_ehash_mask.byte(),
                t.skc_nulls_node.byte(),
                t.tw_substate.byte(),
            ]
            .iter()
            .all(|&o| o != ABSENT);
        let error = (raw.error != 0).then_some(raw.error);
        let close = (new_state == Some(TcpState::Close)).then(|| {
            let timewait = TcpState::from_u8(raw.timewait);
            match raw.reset {
                reset_direction::RECEIVED => return Some(Close::ResetReceived),
                reset_direction::SENT => return Some(Close::ResetSent),
                _ => {}
            }
            if let Some(substate @ (TcpState::TimeWait | TcpState::FinWait2)) = timewait {
                new_state = Some(substate);
                return Some(if substate == TcpState::TimeWait {
                    Close::TimeWait
                } else {
                    Close::FinWait2Timewait
                });
            }
            if error.is_some() {
                return Some(Close::Error);
            }
            match old_state {
                // tcp_time_wait() found no room for a timewait socket.
                Some(TcpState::FinWait2 | TcpState::Closing) => {
                    timewait_known.then_some(Close::TimeWaitOverflow)
                }
                // Only an abort (tcp_disconnect(): SO_LINGER 0, unread data,
                // connect(AF_UNSPEC)) closes these states without a received
                // reset or an error, and it sends a reset right after the
                // transition.
                Some(
                    TcpState::Established
                    | TcpState::CloseWait
                    | TcpState::FinWait1
                    | TcpState::SynRecv,
                ) => Some(Close::ResetSent),
                _ => Some(Close::Closed),
            }
        });
        StateChange {
            socket: socket(&raw.header, &raw.flow, &raw.owner, &self.clock),
            old_state,
            new_state,
            prev_state: (raw.prev_state_ns != DURATION_UNKNOWN)
                .then(|| Duration::from_nanos(raw.prev_state_ns)),
            close: close.flatten(),
            error,
            orphan: t.sk_flags.is_known().then_some(raw.orphan == 1),
            opened: (raw.opened_ns != 0).then(|| self.clock.wall(raw.opened_ns)),
        }
    }

    fn retransmit(&self, raw: &RetransmitEvent) -> Retransmit {
        let t = &self.tcp;
        let synack = raw.header.kind == event_kind::SYNACK;
        let known = |offset: u16| offset != ABSENT;
        let state = TcpState::from_u8(raw.state);
        let cause = if synack {
            Some(Cause::SynAck)
        } else if state == Some(TcpState::SynSent) {
            Some(Cause::Syn)
        } else if !known(t.icsk_ca_state.byte)
            || !t.icsk_pending.is_known()
            || !t.icsk_timer_expires.is_known()
        {
            None
        } else if raw.ca_state == TCP_CA_LOSS {
            Some(Cause::Rto)
        } else if raw.pending == ICSK_TIME_LOSS_PROBE && raw.timer_due == 1 {
            // The probe timer fired and its handler is sending: a TLP. With
            // the timer merely armed, an ACK triggered the retransmission.
            Some(Cause::Tlp)
        } else {
            Some(Cause::Fast)
        };
        // Timer-driven retransmissions count themselves before the tracepoint
        // fires; a SYN-ACK's counter moves after it.
        let timer_driven = matches!(cause, Some(Cause::Rto | Cause::Syn));
        let retransmits_known = if synack {
            t.req_num_retrans.is_known()
        } else {
            t.icsk_retransmits.is_known()
        };
        let retries = retransmits_known.then(|| {
            let count = u32::from(raw.retransmits);
            if timer_driven {
                count.saturating_sub(1)
            } else {
                count
            }
        });
        let rto_known = if synack {
            t.req_timeout.is_known()
        } else {
            t.icsk_rto.is_known()
        };
        let rto = self.hz.filter(|_| rto_known).map(|hz| {
            let rto = Duration::from_micros(u64::from(raw.rto_jiffies) * 1_000_000 / u64::from(hz));
            if synack { rto.min(TCP_RTO_MAX) } else { rto }
        });
        let tcp_field = |at: Offset<u32>, value: u32| (!synack && at.is_known()).then_some(value);
        let seq_known = !synack
            && t.skb_seq.is_known()
            && t.skb_end_seq.is_known()
            && t.skb_tcp_flags.is_known();
        let syn_fin =
            u32::from(raw.tcp_flags & TCPHDR_SYN != 0) + u32::from(raw.tcp_flags & TCPHDR_FIN != 0);
        Retransmit {
            socket: socket(&raw.header, &raw.flow, &raw.owner, &self.clock),
            cause,
            state,
            err: raw.err,
            rto,
            backoff: (if synack {
                known(t.req_num_timeout.byte)
            } else {
                t.icsk_backoff.is_known()
            })
            .then_some(raw.backoff),
            retries,
            retry_limit: self.retry_limit(raw),
            total_retrans: tcp_field(t.total_retrans, raw.total_retrans),
            srtt: tcp_field(t.srtt_us, raw.srtt_us8 >> 3)
                .filter(|&us| us > 0)
                .map(|us| Duration::from_micros(us.into())),
            rttvar: tcp_field(t.mdev_us, raw.mdev_us4 >> 2)
                .filter(|_| raw.srtt_us8 > 0)
                .map(|us| Duration::from_micros(us.into())),
            cwnd: tcp_field(t.snd_cwnd, raw.cwnd),
            ssthresh: tcp_field(t.snd_ssthresh, raw.ssthresh),
            segs: if synack {
                Some(1)
            } else {
                t.skb_gso_segs.is_known().then_some(raw.segs)
            },
            // Set by the consumer, which sees the socket's previous event.
            unseen_segs: None,
            bytes: seq_known.then(|| raw.end_seq.wrapping_sub(raw.seq).wrapping_sub(syn_fin)),
            seq: seq_known.then_some(raw.seq),
            orphan: match raw.budget {
                retry_budget::ORPHAN => Some(true),
                retry_budget::RETRIES2 => t.sk_flags.is_known().then_some(false),
                _ => None,
            },
        }
    }

    /// The number of retransmissions after which the kernel gives up, as
    /// `tcp_write_timeout()` computes it.
    fn retry_limit(&self, raw: &RetransmitEvent) -> Option<u32> {
        let t = &self.tcp;
        let net = |known: bool| self.netns_known && known;
        let limit = u32::from(raw.budget_limit);
        match raw.budget {
            retry_budget::SYN if net(t.net_syn_retries.is_known()) => {
                Some(syn_retry_limit(limit, u32::from(raw.syn_linear_timeouts)))
            }
            retry_budget::SYNACK if net(t.net_synack_retries.is_known()) => Some(limit),
            // tcp_orphan_retries(): 0 means 8 while the peer may still answer.
            retry_budget::ORPHAN if net(t.net_orphan_retries.is_known()) => {
                Some(if limit == 0 { 8 } else { limit })
            }
            retry_budget::RETRIES2 if net(t.net_retries2.is_known()) => Some(limit),
            _ => None,
        }
    }
}

/// How many SYN retransmissions `tcp_write_timeout()` allows. It stops at
/// `syn_retries + linear_timeouts` retransmissions, or earlier once the time
/// since the first SYN reaches its model of `syn_retries` doubling timeouts
/// from the initial 1 s. The first `linear_timeouts` timers stay at 1 s.
pub fn syn_retry_limit(syn_retries: u32, linear_timeouts: u32) -> u32 {
    let model = model_timeout(syn_retries, TCP_TIMEOUT_INIT);
    let (mut elapsed, mut interval, mut sent) = (Duration::ZERO, TCP_TIMEOUT_INIT, 0);
    loop {
        elapsed += interval;
        if sent >= syn_retries + linear_timeouts || (sent > 0 && elapsed >= model) {
            return sent;
        }
        sent += 1;
        if sent > linear_timeouts {
            interval = (interval * 2).min(TCP_RTO_MAX);
        }
    }
}

/// `tcp_model_timeout()`: how long `boundary` retransmissions take when the
/// timeout doubles from `rto_base` up to `TCP_RTO_MAX`, then stays there.
fn model_timeout(boundary: u32, rto_base: Duration) -> Duration {
    let doublings = (TCP_RTO_MAX.as_millis() / rto_base.as_millis()).ilog2();
    if boundary <= doublings {
        rto_base * ((2 << boundary) - 1)
    } else {
        rto_base * ((2 << doublings) - 1) + TCP_RTO_MAX * (boundary - doublings)
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
        laddr: address(header.family, &flow.saddr),
        lport: flow.sport,
        raddr: address(header.family, &flow.daddr),
        rport: flow.dport,
        netns: (header.netns != 0).then_some(header.netns),
        skaddr: header.skaddr,
        owner: process(owner),
        inode: (header.sock_ino != 0).then_some(header.sock_ino),
        cgroup: (header.cgroup != 0).then_some(header.cgroup),
        // Resolved by the consumer, which keeps the cgroup tree's index.
        identity: None,
    }
}

/// IPv4 sockets' addresses arrive IPv4-mapped; IPv6 sockets talking to IPv4
/// peers carry mapped addresses too. Both are shown as IPv4.
fn address(family: u8, address: &Address) -> IpAddr {
    let bytes = tcpretrans_common::address::octets(address);
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
        comm: CompactString::from_utf8_lossy(&owner.comm[..len]),
    })
}

#[cfg(test)]
mod tests {
    use tcpretrans_common::{address, tcp_state};

    use super::*;
    use crate::fixtures::{all_known, decoder};

    fn bytes_of<T: aya::Pod>(value: &T) -> Vec<u8> {
        // SAFETY: plain old data, every byte initialized (padding is explicit).
        unsafe {
            std::slice::from_raw_parts(std::ptr::from_ref(value).cast::<u8>(), size_of::<T>())
        }
        .to_vec()
    }

    fn mapped(v4: [u8; 4]) -> Address {
        let mut a = [0; 16];
        a[10] = 0xff;
        a[11] = 0xff;
        a[12..].copy_from_slice(&v4);
        address::from_octets(a)
    }

    fn header(kind: u8, family: u8) -> EventHeader {
        EventHeader {
            kind,
            family,
            _pad: 0,
            netns: 4026532289,
            timestamp_ns: 2_000_000_123,
            skaddr: 0xffff_8880_1234_5678,
            sock_ino: 0,
            cgroup: 0,
        }
    }

    fn owner(pid: u32, comm: &str) -> Owner {
        let mut o = Owner {
            pid,
            uid: 1000,
            comm: [0; 16],
        };
        o.comm[..comm.len()].copy_from_slice(comm.as_bytes());
        o
    }

    fn v4_flow() -> Flow {
        Flow {
            saddr: mapped([10, 0, 0, 1]),
            daddr: mapped([10, 0, 0, 2]),
            sport: 40000,
            dport: 80,
        }
    }

    /// An RTO retransmission of an established socket, 3rd of its episode.
    fn raw_retransmit() -> RetransmitEvent {
        RetransmitEvent {
            header: header(event_kind::RETRANSMIT, 4),
            owner: owner(42, "curl"),
            flow: v4_flow(),
            state: tcp_state::ESTABLISHED,
            ca_state: TCP_CA_LOSS,
            pending: 0,
            backoff: 2,
            err: 0,
            retransmits: 3,
            tcp_flags: 0x18,
            segs: 2,
            rto_jiffies: 200,
            srtt_us8: 12_000 << 3,
            mdev_us4: 3_000 << 2,
            cwnd: 1,
            ssthresh: 7,
            total_retrans: 9,
            seq: 1000,
            end_seq: 3896,
            budget: retry_budget::RETRIES2,
            budget_limit: 15,
            syn_linear_timeouts: 0,
            timer_due: 0,
            _pad1: 0,
        }
    }

    fn retransmit(raw: &RetransmitEvent, decoder: &Decoder) -> Retransmit {
        match decoder.decode(&bytes_of(raw)).unwrap() {
            Event::Retransmit(r) => *r,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn decodes_an_rto_retransmit() {
        let r = retransmit(&raw_retransmit(), &decoder());
        assert_eq!(r.cause, Some(Cause::Rto));
        assert_eq!(r.state, Some(TcpState::Established));
        assert_eq!(
            r.rto,
            Some(Duration::from_millis(800)),
            "200 jiffies at HZ=250"
        );
        assert_eq!(
            (r.retries, r.retry_limit, r.backoff),
            (Some(2), Some(15), Some(2))
        );
        assert_eq!(
            (r.srtt, r.rttvar),
            (
                Some(Duration::from_millis(12)),
                Some(Duration::from_millis(3))
            )
        );
        assert_eq!(
            (r.cwnd, r.ssthresh, r.total_retrans),
            (Some(1), Some(7), Some(9))
        );
        assert_eq!((r.segs, r.bytes, r.seq), (Some(2), Some(2896), Some(1000)));
        assert_eq!(r.orphan, Some(false));
        assert!(r.sent());
        let s = &r.socket;
        assert_eq!(
            (s.laddr.to_string(), s.lport, s.raddr.to_string(), s.rport),
            ("10.0.0.1".into(), 40000, "10.0.0.2".into(), 80)
        );
        assert_eq!(s.netns, Some(4026532289));
        assert_eq!(
            s.owner,
            Some(Process {
                pid: 42,
                uid: 1000,
                comm: "curl".into()
            })
        );
        assert_eq!(s.time.as_nanosecond(), 1_700_000_002_000_000_123);
    }

    #[test]
    fn classifies_causes() {
        let d = decoder();
        let cause = |f: &dyn Fn(&mut RetransmitEvent)| {
            let mut raw = raw_retransmit();
            f(&mut raw);
            retransmit(&raw, &d).cause
        };
        assert_eq!(
            cause(&|r| r.ca_state = 3),
            Some(Cause::Fast),
            "TCP_CA_Recovery"
        );
        assert_eq!(
            cause(&|r| r.ca_state = 0),
            Some(Cause::Fast),
            "ACK-driven in Open"
        );
        assert_eq!(
            cause(&|r| (r.ca_state, r.pending, r.timer_due) = (0, ICSK_TIME_LOSS_PROBE, 1)),
            Some(Cause::Tlp)
        );
        assert_eq!(
            cause(&|r| (r.ca_state, r.pending, r.timer_due) = (3, ICSK_TIME_LOSS_PROBE, 0)),
            Some(Cause::Fast),
            "ACK-driven while the probe timer is armed"
        );
        assert_eq!(cause(&|r| r.state = tcp_state::SYN_SENT), Some(Cause::Syn));
        assert_eq!(
            cause(&|r| r.header.kind = event_kind::SYNACK),
            Some(Cause::SynAck)
        );
    }

    #[test]
    fn fast_retransmits_do_not_consume_timeout_retries() {
        let mut raw = raw_retransmit();
        (raw.ca_state, raw.retransmits) = (3, 0);
        assert_eq!(retransmit(&raw, &decoder()).retries, Some(0));
    }

    #[test]
    fn syn_limits_include_linear_timeouts() {
        let mut raw = raw_retransmit();
        (
            raw.state,
            raw.retransmits,
            raw.budget,
            raw.budget_limit,
            raw.syn_linear_timeouts,
        ) = (tcp_state::SYN_SENT, 1, retry_budget::SYN, 6, 4);
        (raw.srtt_us8, raw.rto_jiffies) = (0, 250);
        let r = retransmit(&raw, &decoder());
        assert_eq!(
            (r.cause, r.retries, r.retry_limit),
            (Some(Cause::Syn), Some(0), Some(10))
        );
        assert_eq!(r.rto, Some(Duration::from_secs(1)));
        assert_eq!(
            (r.srtt, r.rttvar),
            (None, None),
            "no RTT sample before the handshake"
        );
    }

    #[test]
    fn syn_limits_follow_the_kernels_count_and_time_rules() {
        // Defaults: 6 + 4 retransmissions, the last at 67 s, giving up at 131 s.
        assert_eq!(syn_retry_limit(6, 4), 10);
        assert_eq!(syn_retry_limit(6, 0), 6);
        // The time model cuts the count short: retransmissions at 1 s and
        // 2 s, and at 3 s the model's 3 s for one retry has run out.
        assert_eq!(syn_retry_limit(1, 2), 2);
        assert_eq!(syn_retry_limit(2, 0), 2);
        assert_eq!(syn_retry_limit(3, 4), 7);
        assert_eq!(syn_retry_limit(0, 0), 0);
        assert_eq!(model_timeout(6, TCP_TIMEOUT_INIT), Duration::from_secs(127));
        assert_eq!(
            model_timeout(15, Duration::from_millis(200)),
            Duration::from_millis(924_600)
        );
    }

    #[test]
    fn orphan_retries_zero_means_eight() {
        let mut raw = raw_retransmit();
        (raw.state, raw.budget, raw.budget_limit) = (tcp_state::FIN_WAIT1, retry_budget::ORPHAN, 0);
        let r = retransmit(&raw, &decoder());
        assert_eq!((r.orphan, r.retry_limit), (Some(true), Some(8)));
        raw.budget_limit = 3;
        assert_eq!(retransmit(&raw, &decoder()).retry_limit, Some(3));
    }

    #[test]
    fn synack_events_come_from_the_request_socket() {
        let mut raw = raw_retransmit();
        raw.header.kind = event_kind::SYNACK;
        (raw.state, raw.retransmits, raw.budget, raw.budget_limit) =
            (tcp_state::SYN_RECV, 1, retry_budget::SYNACK, 5);
        raw.rto_jiffies = 500;
        let r = retransmit(&raw, &decoder());
        assert_eq!(
            (r.cause, r.retries, r.retry_limit),
            (Some(Cause::SynAck), Some(1), Some(5))
        );
        assert_eq!(r.rto, Some(Duration::from_secs(2)));
        assert_eq!((r.cwnd, r.srtt, r.seq, r.segs), (None, None, None, Some(1)));
    }

    #[test]
    fn without_btf_or_hz_fields_are_unknown_not_zero() {
        let d = Decoder {
            hz: None,
            tcp: TcpOffsets::UNKNOWN,
            netns_known: false,
            ..decoder()
        };
        let r = retransmit(&raw_retransmit(), &d);
        assert_eq!(
            (r.cause, r.rto, r.retries, r.retry_limit),
            (None, None, None, None)
        );
        assert_eq!(
            (r.srtt, r.cwnd, r.segs, r.bytes, r.orphan),
            (None, None, None, None, None)
        );
        assert_eq!(
            r.state,
            Some(TcpState::Established),
            "from the tracepoint record"
        );
        let syn = RetransmitEvent {
            state: tcp_state::SYN_SENT,
            ..raw_retransmit()
        };
        assert_eq!(
            retransmit(&syn, &d).cause,
            Some(Cause::Syn),
            "from the record alone"
        );
    }

    fn raw_state(old_state: u8, new_state: u8) -> StateEvent {
        StateEvent {
            header: header(event_kind::STATE, 6),
            owner: Owner::UNKNOWN,
            flow: Flow {
                saddr: address::from_octets(Ipv6Addr::LOCALHOST.octets()),
                daddr: mapped([192, 0, 2, 1]),
                sport: 1,
                dport: 2,
            },
            old_state,
            new_state,
            timewait: 0,
            reset: reset_direction::NONE,
            prev_state_ns: DURATION_UNKNOWN,
            opened_ns: 0,
            error: 0,
            orphan: 0,
            _pad0: 0,
            _pad1: 0,
        }
    }

    fn state_change(raw: &StateEvent, decoder: &Decoder) -> StateChange {
        match decoder.decode(&bytes_of(raw)).unwrap() {
            Event::State(change) => *change,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn decodes_a_state_change_with_unknown_duration_and_owner() {
        let mut raw = raw_state(tcp_state::FIN_WAIT1, tcp_state::FIN_WAIT2);
        let change = state_change(&raw, &decoder());
        assert_eq!(
            (change.old_state, change.new_state),
            (Some(TcpState::FinWait1), Some(TcpState::FinWait2))
        );
        assert_eq!(
            (change.prev_state, change.close, change.error),
            (None, None, None)
        );
        let socket = &change.socket;
        assert_eq!((socket.owner.as_ref(), socket.family), (None, 6));
        assert_eq!(socket.laddr.to_string(), "::1");
        assert_eq!(
            socket.raddr.to_string(),
            "192.0.2.1",
            "IPv4-mapped shown as IPv4"
        );

        raw.prev_state_ns = 1_500_000;
        assert_eq!(
            state_change(&raw, &decoder()).prev_state,
            Some(Duration::from_micros(1500))
        );
    }

    #[test]
    fn tells_how_a_connection_closed() {
        let d = decoder();
        let close = |old: u8, f: &dyn Fn(&mut StateEvent)| {
            let mut raw = raw_state(old, tcp_state::CLOSE);
            f(&mut raw);
            let change = state_change(&raw, &d);
            (change.new_state, change.close, change.error)
        };
        let time_wait = close(tcp_state::FIN_WAIT2, &|r| r.timewait = tcp_state::TIME_WAIT);
        assert_eq!(
            time_wait,
            (Some(TcpState::TimeWait), Some(Close::TimeWait), None)
        );
        let substate = close(tcp_state::FIN_WAIT2, &|r| r.timewait = tcp_state::FIN_WAIT2);
        assert_eq!(
            substate,
            (
                Some(TcpState::FinWait2),
                Some(Close::FinWait2Timewait),
                None
            )
        );
        let simultaneous = close(tcp_state::CLOSING, &|r| r.timewait = tcp_state::TIME_WAIT);
        assert_eq!(simultaneous.1, Some(Close::TimeWait));
        let overflow = close(tcp_state::FIN_WAIT2, &|_| {});
        assert_eq!(
            overflow,
            (Some(TcpState::Close), Some(Close::TimeWaitOverflow), None)
        );
        let refused = close(tcp_state::SYN_SENT, &|r| {
            (r.reset, r.error) = (reset_direction::RECEIVED, 111)
        });
        assert_eq!(
            refused,
            (Some(TcpState::Close), Some(Close::ResetReceived), Some(111))
        );
        let aborted = close(tcp_state::FIN_WAIT2, &|r| r.reset = reset_direction::SENT);
        assert_eq!(aborted.1, Some(Close::ResetSent));
        let timed_out = close(tcp_state::ESTABLISHED, &|r| r.error = 110);
        assert_eq!((timed_out.1, timed_out.2), (Some(Close::Error), Some(110)));
        assert_eq!(close(tcp_state::LAST_ACK, &|_| {}).1, Some(Close::Closed));
        assert_eq!(
            close(tcp_state::ESTABLISHED, &|_| {}).1,
            Some(Close::ResetSent),
            "an abort"
        );
        assert_eq!(
            close(tcp_state::SYN_SENT, &|_| {}).1,
            Some(Close::Closed),
            "connect given up by close()"
        );

        let overflow_event = decoder()
            .decode(&bytes_of(&raw_state(
                tcp_state::FIN_WAIT2,
                tcp_state::CLOSE,
            )))
            .unwrap();
        assert_eq!(overflow_event.name(), "time_wait_overflow");
    }

    #[test]
    fn without_timewait_offsets_an_unexplained_close_stays_unknown() {
        let d = Decoder {
            tcp: TcpOffsets {
                tw_substate: Offset::ABSENT,
                ..all_known()
            },
            ..decoder()
        };
        let change = state_change(&raw_state(tcp_state::FIN_WAIT2, tcp_state::CLOSE), &d);
        assert_eq!(
            (change.new_state, change.close),
            (Some(TcpState::Close), None)
        );
    }

    #[test]
    fn decodes_connect_errors() {
        let raw = ConnectErrorEvent {
            header: header(event_kind::CONNECT_ERROR, 4),
            owner: owner(9, "curl"),
            flow: v4_flow(),
            errno: 99,
        };
        let event = decoder().decode(&bytes_of(&raw)).unwrap();
        assert_eq!(event.name(), "connect_error");
        let Event::ConnectError { socket, errno } = event else {
            panic!()
        };
        assert_eq!(
            (errno, socket.rport, socket.owner.map(|o| o.pid)),
            (99, 80, Some(9))
        );
    }

    #[test]
    fn decodes_resets() {
        let raw = ResetEvent {
            header: header(event_kind::RESET, 4),
            owner: owner(7, "nginx"),
            flow: v4_flow(),
            direction: reset_direction::SENT,
            state: tcp_state::ESTABLISHED,
            _pad: 0,
        };
        let event = decoder().decode(&bytes_of(&raw)).unwrap();
        assert_eq!(event.name(), "reset");
        let Event::Reset {
            direction,
            state,
            socket,
        } = event
        else {
            panic!()
        };
        assert_eq!(
            (direction, state, socket.lport),
            (ResetDirection::Sent, Some(TcpState::Established), 40000)
        );
    }

    #[test]
    fn rejects_short_and_unknown_records() {
        let d = decoder();
        assert_eq!(d.decode(&[]), Err(DecodeError::Empty));
        assert_eq!(d.decode(&[99, 0, 0]), Err(DecodeError::UnknownKind(99)));
        assert!(matches!(
            d.decode(&[event_kind::STATE; 10]),
            Err(DecodeError::Length { .. })
        ));
        assert!(matches!(
            d.decode(&[event_kind::RETRANSMIT; 96]),
            Err(DecodeError::Length { .. })
        ));
    }
}
