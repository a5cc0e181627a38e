//! Test fixtures shared by the unit tests of several modules: a decoder for
//! a kernel where every member resolved, and ready-made sockets and events.
//! Test-only, so that no module imports another module's `tests`.
use std::{
    net::{IpAddr, Ipv4Addr},
    time::Duration,
};

use jiff::Timestamp;
use tcpretrans_common::{Bitfield, TcpOffsets};

use crate::{
    decode::{Clock, Decoder},
    events::{Cause, Close, Event, Retransmit, Socket, StateChange, TcpState},
};

/// Offsets as on a kernel where every member resolved (values are
/// irrelevant to decoding: only known/unknown matters).
pub fn all_known() -> TcpOffsets {
    let b = Bitfield {
        byte: 1,
        shift: 0,
        width: 5,
    };
    TcpOffsets {
        sk_flags: 1,
        icsk_rto: 1,
        icsk_ca_state: b,
        icsk_retransmits: 1,
        icsk_pending: 1,
        icsk_timer_expires: 1,
        icsk_backoff: 1,
        icsk_syn_retries: 1,
        srtt_us: 1,
        mdev_us: 1,
        snd_cwnd: 1,
        snd_ssthresh: 1,
        total_retrans: 1,
        skb_seq: 1,
        skb_end_seq: 1,
        skb_gso_segs: 1,
        skb_tcp_flags: 1,
        net_syn_retries: 1,
        net_synack_retries: 1,
        net_retries2: 1,
        net_orphan_retries: 1,
        net_syn_linear_timeouts: 1,
        req_num_retrans: 1,
        req_num_timeout: b,
        req_timeout: 1,
        sk_err: 1,
        skc_family: 1,
        skc_state: 1,
        skc_addrpair: 1,
        skc_portpair: 1,
        skc_hash: 1,
        skc_nulls_node: 1,
        skc_v6_daddr: 1,
        skc_v6_rcv_saddr: 1,
        inet_sport: 1,
        task_files: 1,
        task_stack: 1,
        task_comm: 1,
        task_cred: 1,
        cred_uid: 1,
        files_fdt: 1,
        fdtable_fd: 1,
        file_private_data: 1,
        socket_sk: 1,
        socket_file: 1,
        sk_protocol: 1,
        sk_socket: 1,
        socket_alloc_inode: 1,
        inode_ino: 1,
        tw_substate: 1,
        net_tw_hashinfo: 1,
        hashinfo_ehash: 1,
        hashinfo_ehash_mask: 1,
        sock_dead_bit: 0,
        stack_shift: 0,
        sk_protocol_bits: 16,
        _pad: 0,
    }
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
        bytes: Some(2896),
        seq: Some(1_000_000),
        orphan: Some(false),
    }
}
