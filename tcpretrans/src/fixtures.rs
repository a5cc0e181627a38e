//! Test fixtures shared by the unit tests of several modules: a decoder for
//! a kernel where every member resolved, and ready-made sockets and events.
//! Test-only, so that no module imports another module's `tests`.
use std::{
    net::{IpAddr, Ipv4Addr},
    time::Duration,
};

use jiff::Timestamp;
use tcpretrans_common::{TcpOffsets, members::Found};

use crate::{
    decode::{Clock, Decoder},
    events::{Cause, Close, Event, Retransmit, Socket, StateChange, TcpState},
};

/// Offsets as on a kernel where every member resolved (values are
/// irrelevant to decoding: only known/unknown matters).
pub fn all_known() -> TcpOffsets {
    TcpOffsets::resolve(|_| {
        Some(Found {
            bits: 8,
            bitfield_bits: 0,
            size: 16,
        })
    })
}

pub fn decoder() -> Decoder {
    Decoder {
        clock: Clock::with_offset(1_700_000_000_000_000_000),
        hz: Some(250),
        tcp: all_known(),
        netns_known: true,
    }
}

/// A loopback socket from `lport` to port 80, `at_ms` after a fixed
/// instant, with its own kernel address.
pub fn loopback_socket(lport: u16, at_ms: i64) -> Socket {
    Socket {
        time: Timestamp::from_millisecond(1_800_000_000_000 + at_ms).unwrap(),
        family: 4,
        laddr: IpAddr::V4(Ipv4Addr::LOCALHOST),
        lport,
        raddr: IpAddr::V4(Ipv4Addr::LOCALHOST),
        rport: 80,
        netns: Some(1),
        skaddr: 0xffff_0000 + u64::from(lport),
        owner: None,
        inode: None,
        cgroup: None,
        identity: None,
    }
}

/// Its transition from `old` to `new`; reaching CLOSE is an error close.
pub fn transition(old: TcpState, new: TcpState, lport: u16, at_ms: i64) -> Event {
    Event::State(Box::new(StateChange {
        socket: loopback_socket(lport, at_ms),
        old_state: Some(old),
        new_state: Some(new),
        prev_state: None,
        close: (new == TcpState::Close).then_some(Close::Error),
        error: None,
        orphan: None,
        opened: None,
    }))
}

/// A decoded RTO retransmission on `socket`, for output tests.
pub fn sample_retransmit(socket: Socket) -> Retransmit {
    Retransmit {
        socket,
        cause: Some(Cause::Rto),
        state: Some(TcpState::Established),
        err: 0,
        rto: Some(Duration::from_millis(800)),
        backoff: Some(2),
        retries: Some(2),
        retry_limit: Some(15),
        total_retrans: Some(9),
        srtt: Some(Duration::from_micros(12_345)),
        rttvar: Some(Duration::from_millis(3)),
        cwnd: Some(1),
        ssthresh: Some(7),
        segs: Some(2),
        unseen_segs: None,
        bytes: Some(2896),
        seq: Some(1_000_000),
        orphan: Some(false),
    }
}
