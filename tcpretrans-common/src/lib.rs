//! Records shared by the kernel programs and userspace.
//!
//! Everything here crosses the user/kernel boundary as raw bytes: the load-time
//! configuration (the globals written into the programs' read-only data) and the
//! events in the ring buffer. Layouts are `#[repr(C)]` with explicit padding and
//! their sizes are asserted, so both sides agree byte for byte.
#![no_std]

/// Sentinel for "this field/member does not exist on the running kernel".
pub const ABSENT: u16 = u16::MAX;

/// Address families as the kernel numbers them.
pub const AF_INET: u16 = 2;
pub const AF_INET6: u16 = 10;

/// Bytes of a tracepoint record the kernel side copies in one read. Every field
/// offset handed in must satisfy `offset + size <= RECORD_LEN`.
pub const RECORD_LEN: usize = 128;

pub mod hooks;
pub mod snmp;
#[macro_use]
pub mod members;
#[macro_use]
pub mod records;

pub use members::Offset;

/// TCP states, numbered as in the kernel's `include/net/tcp_states.h`.
pub mod tcp_state {
    pub const ESTABLISHED: u8 = 1;
    pub const SYN_SENT: u8 = 2;
    pub const SYN_RECV: u8 = 3;
    pub const FIN_WAIT1: u8 = 4;
    pub const FIN_WAIT2: u8 = 5;
    pub const TIME_WAIT: u8 = 6;
    pub const CLOSE: u8 = 7;
    pub const CLOSE_WAIT: u8 = 8;
    pub const LAST_ACK: u8 = 9;
    pub const LISTEN: u8 = 10;
    pub const CLOSING: u8 = 11;
    pub const NEW_SYN_RECV: u8 = 12;
    /// One past the highest state number.
    pub const COUNT: u8 = 13;
}

records! {
    /// Offsets of the fields every TCP tracepoint record shares, read from the
    /// tracefs `format` file of the running kernel.
    pub struct FlowFields {
        skaddr: u16 = required(8),
        sport: u16 = required(2),
        dport: u16 = required(2),
        /// Since 5.12.
        family: u16 = optional(2),
        saddr_v6: u16 = required(16),
        daddr_v6: u16 = required(16),
    }

    /// Layout of `tcp:tcp_retransmit_skb`.
    pub struct RetransmitFields {
        flow: FlowFields = nested,
        skbaddr: u16 = required(8),
        /// `int state`: since 4.20.
        state: u16 = optional(4),
        /// `int err`: since 6.17, when the tracepoint also fires for failed attempts.
        err: u16 = optional(4),
        _pad: u16 = padding,
    }

    /// Layout of `tcp:tcp_retransmit_synack`. Its `skaddr` is the listener.
    pub struct SynackFields {
        flow: FlowFields = nested,
        /// The request socket: the connection being set up.
        req: u16 = required(8),
    }

    /// Layout of `sock:inet_sock_set_state`.
    pub struct StateFields {
        flow: FlowFields = nested,
        oldstate: u16 = required(4),
        newstate: u16 = required(4),
        protocol: u16 = required(2),
        _pad: u16 = padding,
    }

    /// Layout of `tcp:tcp_send_reset` and `tcp:tcp_receive_reset` as the
    /// programs use it: only the socket is taken from the record (6.10
    /// changed `tcp_send_reset`'s address fields to sockaddrs); the flow is
    /// read from the socket itself.
    pub struct ResetRecordFields {
        skaddr: u16 = required(8),
    }

    /// Layout of `syscalls:sys_enter_connect`.
    pub struct ConnectEnterFields {
        fd: u16 = required(8),
        uservaddr: u16 = required(8),
    }

    /// Layout of a `syscalls:sys_exit_*` record (`connect`, `accept`, `accept4`).
    pub struct SyscallExitFields {
        ret: u16 = required(8),
    }
}

offsets! {
    /// Where the namespace and cgroup filters find what they compare, from
    /// the running kernel's BTF.
    pub struct SockOffsets {
        /// A `struct net *`.
        sk_net: Offset<u64> = sock.__sk_common.skc_net.net,
        net_inum: Offset<u32> = net.ns.inum,
        /// The cgroup (v2) whose process created the socket (an accepted
        /// socket's: its listener's).
        sk_cgroup: Offset<u64> = sock.sk_cgrp_data.cgroup,
        /// 0 at the root.
        cgroup_level: Offset<i32> = cgroup.level,
        /// `ancestors[l]` is its ancestor at level `l`.
        cgroup_ancestors: Offset<u64> = cgroup.ancestors,
        /// With `kernfs_node.id`: the cgroup directory's inode.
        cgroup_kn: Offset<u64> = cgroup.kn,
        kn_id: Offset<u64> = kernfs_node.id,
    }
    derived {
        _pad: u16,
    }
}

/// Where the socket is in each reset tracepoint's record.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ResetFields {
    pub send_skaddr: u16,
    pub receive_skaddr: u16,
}

impl ResetFields {
    pub const ABSENT: Self = Self {
        send_skaddr: ABSENT,
        receive_skaddr: ABSENT,
    };
}

/// Layouts of the socket system calls' records: `syscalls:sys_enter_connect`,
/// `syscalls:sys_exit_connect` and `syscalls:sys_exit_accept{,4}`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnectFields {
    pub enter_fd: u16,
    pub enter_uservaddr: u16,
    pub exit_ret: u16,
    /// `ret` of `sys_exit_accept` and `sys_exit_accept4` (one layout).
    pub accept_exit_ret: u16,
}

impl ConnectFields {
    pub const ABSENT: Self = Self {
        enter_fd: ABSENT,
        enter_uservaddr: ABSENT,
        exit_ret: ABSENT,
        accept_exit_ret: ABSENT,
    };
}

/// A listening socket, for accepted sockets to inherit its owner.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ListenerKey {
    pub netns: u32,
    pub port: u16,
    pub _pad: u16,
}

/// A bitfield member: the byte holding it and its place in that byte.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bitfield {
    /// `ABSENT` when unknown.
    pub byte: u16,
    pub shift: u8,
    pub width: u8,
}

impl Bitfield {
    pub const ABSENT: Self = Self {
        byte: ABSENT,
        shift: 0,
        width: 0,
    };
}

offsets! {
    /// What the programs read beyond the tracepoint records, from the
    /// running kernel's BTF.
    pub struct TcpOffsets {
        // struct sock / inet_connection_sock / tcp_sock: one object.
        /// `sk_flags`, for `SOCK_DEAD`.
        sk_flags: Offset<u64> = sock.__sk_common.skc_flags,
        icsk_rto: Offset<u32> = inet_connection_sock.icsk_rto,
        icsk_ca_state: Bitfield = inet_connection_sock.icsk_ca_state,
        icsk_retransmits: Offset<u8> = inet_connection_sock.icsk_retransmits,
        icsk_pending: Offset<u8> = inet_connection_sock.icsk_pending,
        /// Expiry (jiffies) of the retransmit/probe timer (its own member
        /// before 6.14).
        icsk_timer_expires: Offset<u64> = inet_connection_sock.icsk_retransmit_timer.expires
            | inet_connection_sock.icsk_timeout,
        icsk_backoff: Offset<u8> = inet_connection_sock.icsk_backoff,
        icsk_syn_retries: Offset<u8> = inet_connection_sock.icsk_syn_retries,
        srtt_us: Offset<u32> = tcp_sock.srtt_us,
        mdev_us: Offset<u32> = tcp_sock.mdev_us,
        snd_cwnd: Offset<u32> = tcp_sock.snd_cwnd,
        snd_ssthresh: Offset<u32> = tcp_sock.snd_ssthresh,
        total_retrans: Offset<u32> = tcp_sock.total_retrans,
        // struct sk_buff: its control block, a `struct tcp_skb_cb`.
        skb_seq: Offset<u32> = tcp_skb_cb.seq @ sk_buff.cb,
        skb_end_seq: Offset<u32> = tcp_skb_cb.end_seq @ sk_buff.cb,
        skb_gso_segs: Offset<u16> = tcp_skb_cb.tcp_gso_segs @ sk_buff.cb,
        skb_tcp_flags: Offset<u8> = tcp_skb_cb.tcp_flags @ sk_buff.cb,
        // struct net: the sysctls (ints before 5.16: their low byte).
        net_syn_retries: Offset<u8> = net.ipv4.sysctl_tcp_syn_retries,
        net_synack_retries: Offset<u8> = net.ipv4.sysctl_tcp_synack_retries,
        net_retries2: Offset<u8> = net.ipv4.sysctl_tcp_retries2,
        net_orphan_retries: Offset<u8> = net.ipv4.sysctl_tcp_orphan_retries,
        /// Since 6.5.
        net_syn_linear_timeouts: Offset<u8> = net.ipv4.sysctl_tcp_syn_linear_timeouts,
        req_num_retrans: Offset<u8> = request_sock.num_retrans,
        req_num_timeout: Bitfield = request_sock.num_timeout,
        req_timeout: Offset<u32> = request_sock.timeout,
        /// The error a failed connection reports.
        sk_err: Offset<i32> = sock.sk_err,
        // struct sock_common, shared by full, request and timewait sockets.
        skc_family: Offset<u16> = sock_common.skc_family,
        skc_state: Offset<u8> = sock_common.skc_state,
        /// `skc_daddr` then `skc_rcv_saddr` (IPv4).
        skc_addrpair: Offset<u64> = sock_common.skc_addrpair,
        /// `skc_dport` (network order) then `skc_num` (host order).
        skc_portpair: Offset<u32> = sock_common.skc_portpair,
        skc_hash: Offset<u32> = sock_common.skc_hash,
        /// Only its position: a timewait socket from its hash chain's node.
        skc_nulls_node: Offset<()> = sock_common.skc_nulls_node,
        skc_v6_daddr: Offset<[u64; 2]> = sock_common.skc_v6_daddr,
        skc_v6_rcv_saddr: Offset<[u64; 2]> = sock_common.skc_v6_rcv_saddr,
        /// Network order: survives `inet_put_port()`, which zeroes
        /// `skc_num` on the way to CLOSE.
        inet_sport: Offset<u16> = inet_sock.inet_sport,
        // From a connect()ing task to its socket: task_struct → files →
        // fdt → fd[fd] (struct file) → private_data (struct socket) → sk.
        task_files: Offset<u64> = task_struct.files,
        /// Its kernel stack, `1 << stack_shift` bytes (tells a task's
        /// tracepoint calls from a softirq's).
        task_stack: Offset<u64> = task_struct.stack,
        /// With `cred` → `uid`: the owner read from the current task
        /// (cheaper than the helpers).
        task_comm: Offset<[u64; 2]> = task_struct.comm,
        task_cred: Offset<u64> = task_struct.cred,
        cred_uid: Offset<u32> = cred.uid,
        files_fdt: Offset<u64> = files_struct.fdt,
        fdtable_fd: Offset<u64> = fdtable.fd,
        file_private_data: Offset<u64> = file.private_data,
        socket_sk: Offset<u64> = socket.sk,
        /// Proves `private_data` was a socket.
        socket_file: Offset<u64> = socket.file,
        /// `O_NONBLOCK`: whether the owner's `connect()` waits.
        file_flags: Offset<u32> = file.f_flags,
        /// Read whole: MPTCP's 262 would pass for TCP's 6 in a byte.
        sk_protocol: Offset<u16> = sock.sk_protocol,
        // From a socket to its inode number: sock → sk_socket (struct
        // socket, the first member of struct socket_alloc) → vfs_inode →
        // i_ino.
        sk_socket: Offset<u64> = sock.sk_socket,
        /// Only its position.
        socket_alloc_inode: Offset<()> = socket_alloc.vfs_inode,
        inode_ino: Offset<u64> = inode.i_ino,
        tw_substate: Offset<u8> = inet_timewait_sock.tw_substate,
        /// A `struct inet_hashinfo *`.
        net_tw_hashinfo: Offset<u64> = net.ipv4.tcp_death_row.hashinfo,
        /// `tcp_max_tw_buckets`.
        net_max_tw_buckets: Offset<u32> = net.ipv4.tcp_death_row.sysctl_max_tw_buckets,
        /// `ip_local_port_range`: two ints, or (since 6.8) one word with
        /// the first port in its low half (`NamespaceLimits::port_range`).
        net_local_ports: Offset<u32> = net.ipv4.ip_local_ports.range,
        hashinfo_ehash: Offset<u64> = inet_hashinfo.ehash,
        hashinfo_ehash_mask: Offset<u32> = inet_hashinfo.ehash_mask,
    }
    derived {
        /// Bit number of `SOCK_DEAD` in `sk_flags`.
        sock_dead_bit: u8,
        /// log2 of a task's kernel stack size.
        stack_shift: u8,
        _pad: u16,
    }
}

impl TcpOffsets {
    /// Whether `namespace_limits` finds both limits in a `struct net`.
    pub const fn reads_namespace_limits(&self) -> bool {
        self.net_max_tw_buckets.is_known() && self.net_local_ports.is_known()
    }

    /// Whether a socket's flow, protocol and state can be read from it:
    /// what the raw and BTF tracepoint programs need instead of a record.
    pub const fn reads_flows(&self) -> bool {
        self.skc_family.is_known()
            && self.skc_state.is_known()
            && self.skc_addrpair.is_known()
            && self.skc_portpair.is_known()
            && self.skc_v6_daddr.is_known()
            && self.skc_v6_rcv_saddr.is_known()
            && self.inet_sport.is_known()
            && self.sk_protocol.is_known()
    }
}

impl SockOffsets {
    pub const fn has_netns(&self) -> bool {
        self.sk_net.is_known() && self.net_inum.is_known()
    }

    pub const fn has_cgroup(&self) -> bool {
        self.sk_cgroup.is_known()
            && self.cgroup_level.is_known()
            && self.cgroup_ancestors.is_known()
            && self.cgroup_kn.is_known()
            && self.kn_id.is_known()
    }
}

/// `Filter::flags` bits.
pub mod filter_flags {
    /// Emit state transition events (otherwise they only update socket tracking).
    pub const STATE_EVENTS: u32 = 1;
    /// Give each event its socket's cgroup id (three pointer reads): for
    /// output and metrics that name containers and pods.
    pub const CGROUP_IDS: u32 = 2;
    /// Count the kept transitions in the kernel (`transition_counts`), all
    /// but those that tell more than their two states (`tells_more`), which
    /// are sent: for metrics that need no transition's connection.
    pub const COUNT_TRANSITIONS: u32 = 4;
}

/// The per-CPU `TRANSITIONS` value: transitions counted in the kernel, by
/// old and new state, one table per program that counts (the nested state
/// program may interrupt the state program on its CPU, never itself). One
/// value, so that userspace reads all of a CPU's counts in one call.
pub mod transition_counts {
    /// States a table indexes (the kernel's are below 16).
    pub const STATES: u32 = 16;
    /// The state program's table, then the nested program's.
    pub const TABLES: u32 = 2;
    /// A power of two: a slot is masked into range.
    pub const SLOTS: u32 = STATES * STATES * TABLES;

    /// The counts, by slot.
    pub type Counts = [u64; SLOTS as usize];

    /// The slot of a transition in `table`.
    #[inline(always)]
    pub const fn slot(table: u32, old_state: u8, new_state: u8) -> u32 {
        (table * STATES + (old_state as u32 & 15)) * STATES + (new_state as u32 & 15)
    }
}

/// Whether a transition tells more than its two states, when the kernel
/// counts them: what TIME_WAIT entries, overflows and reuses are derived
/// from, a close with an error, and a new listener (its namespace's
/// occupancy is exported).
#[inline(always)]
pub const fn tells_more(old_state: u8, new_state: u8, error: i32) -> bool {
    may_involve_time_wait(old_state, new_state) || error != 0 || new_state == tcp_state::LISTEN
}

/// What the kernel side keeps; everything else is dropped before it costs a
/// ring-buffer reservation.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Filter {
    /// Network namespace inode; 0 keeps all.
    pub netns: u32,
    /// `AF_INET` or `AF_INET6`, compared with the traffic's
    /// (`traffic_family`); 0 keeps both.
    pub family: u16,
    /// Bit `1 << state` set for each state of interest: a transition is kept
    /// when it enters or leaves one of them. Only applies to state events.
    pub state_mask: u16,
    pub flags: u32,
    /// Local and remote port (host order); 0 keeps all.
    pub lport: u16,
    pub rport: u16,
    /// A port on either side; 0 keeps all.
    pub port: u16,
    pub _pad: u16,
    /// Owner pid; 0 keeps all. Applied where the kernel side knows the
    /// owner, by userspace elsewhere.
    pub pid: u32,
    pub laddr: AddrPrefix,
    pub raddr: AddrPrefix,
    /// Level of `cgroup_id` in the cgroup v2 hierarchy (0 is the root).
    pub cgroup_level: u32,
    pub _pad1: u32,
    /// Keep sockets of this cgroup v2 and its descendants; 0 keeps all.
    pub cgroup_id: u64,
}

/// An address prefix over the 16-byte form (IPv4 as IPv4-mapped IPv6, so
/// an IPv4 `/n` is `/96+n`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AddrPrefix {
    pub addr: [u8; 16],
    /// Leading bits that must match; 0 matches everything.
    pub bits: u16,
    pub _pad: u16,
}

impl AddrPrefix {
    pub const ANY: Self = Self {
        addr: [0; 16],
        bits: 0,
        _pad: 0,
    };

    /// Whether `addr` lies in the prefix.
    #[inline(always)]
    pub fn contains(&self, addr: &Address) -> bool {
        // The address's 16-bit words in memory (network) order.
        let words: [u16; 8] = core::array::from_fn(|i| {
            let [a, b, c, d] = addr[i / 2].to_ne_bytes();
            u16::from_ne_bytes(if i % 2 == 0 { [a, b] } else { [c, d] })
        });
        let mut remaining = self.bits;
        let mut i = 0;
        while i < 8 && remaining > 0 {
            let prefix = u16::from_ne_bytes([self.addr[2 * i], self.addr[2 * i + 1]]);
            // Compare in network order: the first bits are the word's high bits.
            let (want, have) = (u16::from_be(prefix), u16::from_be(words[i]));
            let take = if remaining >= 16 { 16 } else { remaining };
            let mask = if take == 16 {
                0xffff
            } else {
                !(0xffffu16 >> take)
            };
            if want & mask != have & mask {
                return false;
            }
            remaining -= take;
            i += 1;
        }
        true
    }
}

/// Names of the kernel programs' load-time globals, and their types.
pub mod globals {
    /// `RetransmitFields`.
    pub const RETRANSMIT_FIELDS: &str = "RETRANSMIT_FIELDS";
    /// `StateFields`.
    pub const STATE_FIELDS: &str = "STATE_FIELDS";
    /// `SynackFields`.
    pub const SYNACK_FIELDS: &str = "SYNACK_FIELDS";
    /// `SockOffsets`.
    pub const SOCK_OFFSETS: &str = "SOCK_OFFSETS";
    /// `TcpOffsets`.
    pub const TCP_OFFSETS: &str = "TCP_OFFSETS";
    /// `ResetFields`.
    pub const RESET_FIELDS: &str = "RESET_FIELDS";
    /// `ConnectFields`.
    pub const CONNECT_FIELDS: &str = "CONNECT_FIELDS";
    /// `Filter`.
    pub const FILTER: &str = "FILTER";
    /// `u32`: force a consumer wakeup once this many bytes wait in the ring
    /// buffer; below it events are submitted without a wakeup and userspace
    /// drains on a short timer.
    pub const WAKEUP_BYTES: &str = "WAKEUP_BYTES";
}

impl Filter {
    pub const KEEP_ALL: Self = Self {
        netns: 0,
        family: 0,
        state_mask: 0,
        flags: 0,
        lport: 0,
        rport: 0,
        port: 0,
        _pad: 0,
        pid: 0,
        laddr: AddrPrefix::ANY,
        raddr: AddrPrefix::ANY,
        cgroup_level: 0,
        _pad1: 0,
        cgroup_id: 0,
    };

    /// Whether a flow's ports pass the port filters.
    #[inline(always)]
    pub const fn keeps_ports(&self, lport: u16, rport: u16) -> bool {
        (self.lport == 0 || self.lport == lport)
            && (self.rport == 0 || self.rport == rport)
            && (self.port == 0 || self.port == lport || self.port == rport)
    }

    /// Whether address filters are set (reading addresses costs).
    #[inline(always)]
    pub const fn filters_addresses(&self) -> bool {
        self.laddr.bits != 0 || self.raddr.bits != 0
    }

    /// Whether a flow passes the port and address filters. The prefixes are
    /// only looked at when one is set: the kernel side's verifier then
    /// prunes their loops (they cost the reset programs 9,000 verified
    /// instructions each).
    #[inline(always)]
    pub fn keeps_flow(&self, lport: u16, rport: u16, laddr: &Address, raddr: &Address) -> bool {
        self.keeps_ports(lport, rport)
            && (!self.filters_addresses()
                || (self.laddr.contains(laddr) && self.raddr.contains(raddr)))
    }

    /// Whether an owner passes the pid filter (an unknown owner, pid 0, is
    /// left to userspace).
    #[inline(always)]
    pub const fn keeps_owner(&self, pid: u32) -> bool {
        self.pid == 0 || pid == 0 || self.pid == pid
    }

    #[inline(always)]
    pub const fn keeps_family(&self, family: u16) -> bool {
        self.family == 0 || self.family == family
    }

    /// Whether a transition is reported (socket tracking sees all of them).
    /// A superset of what the state list shows, which userspace narrows: the
    /// tracepoint never reports TIME_WAIT, so the transitions the tool
    /// derives TIME_WAIT from (entry, overflow, reuse of its 4-tuple) are
    /// kept for it too.
    #[inline(always)]
    pub const fn keeps_transition(&self, old_state: u8, new_state: u8) -> bool {
        if self.flags & filter_flags::STATE_EVENTS == 0 {
            return false;
        }
        let mut touched = 1 << (old_state & 15) | 1 << (new_state & 15);
        if may_involve_time_wait(old_state, new_state) {
            touched |= 1 << tcp_state::TIME_WAIT;
        }
        self.state_mask == 0 || self.state_mask & touched != 0
    }
}

/// Whether a transition may hand the connection to a timewait socket
/// (`FIN_WAIT2`/`CLOSING` → `CLOSE`) or establish a connection on a 4-tuple
/// still in TIME_WAIT (`SYN_SENT` → `ESTABLISHED`, with `tcp_tw_reuse`).
#[inline(always)]
pub const fn may_involve_time_wait(old_state: u8, new_state: u8) -> bool {
    use tcp_state::{CLOSE, CLOSING, ESTABLISHED, FIN_WAIT2, SYN_SENT};
    matches!(
        (old_state, new_state),
        (FIN_WAIT2 | CLOSING, CLOSE) | (SYN_SENT, ESTABLISHED)
    )
}

/// Slots of the per-CPU `LOST` counter, one per program that reports: a
/// raw or BTF tracepoint program may interrupt another on its CPU, but never
/// itself, so no two writers ever share a slot.
pub mod lost_slot {
    pub const RETRANSMIT: u32 = 0;
    pub const SYNACK: u32 = 1;
    pub const STATE: u32 = 2;
    pub const RESET_SENT: u32 = 3;
    pub const RESET_RECEIVED: u32 = 4;
    pub const CONNECT: u32 = 5;
    pub const STATE_NESTED: u32 = 6;
    pub const COUNT: u32 = 7;
}

/// Slots of the per-CPU `STATE_NESTING` array. The kernel never runs a raw
/// or BTF tracepoint program inside itself on one CPU: a transition made by a
/// softirq that interrupts the state program (or arrives while the kernel
/// is entering or leaving it) is skipped for it, and counted in its
/// `recursion_misses`. A second program, attached after it, runs after it
/// for every transition and handles those the state program did not take.
///
/// The state program notes each transition it takes, first thing, in the
/// slot of its level: the task's, or a softirq's that interrupted the task
/// (the only nesting TCP state changes see). The second program clears the
/// note of its transition, or handles the transition when there is none.
/// A note whose second run the kernel skipped is overwritten by the next
/// transition at its level; a run between the two programs' runs for one
/// transition is at the other level and leaves its note alone.
pub mod state_nesting {
    /// Transitions the second program handled (which `recursion_misses`
    /// counted as skipped).
    pub const RECOVERED: u32 = 0;
    pub const COUNT: u32 = 1;
    /// The levels notes are kept for (the kernel side's `STATE_TAKEN`): the
    /// task's, then a softirq's.
    pub const LEVELS: u32 = 2;
}

/// Event kinds, the first byte of every ring-buffer record.
pub mod event_kind {
    /// `RetransmitEvent` from `tcp:tcp_retransmit_skb`.
    pub const RETRANSMIT: u8 = 1;
    pub const STATE: u8 = 2;
    /// `RetransmitEvent` from `tcp:tcp_retransmit_synack`.
    pub const SYNACK: u8 = 3;
    /// `ResetEvent`.
    pub const RESET: u8 = 4;
    /// `ConnectErrorEvent`.
    pub const CONNECT_ERROR: u8 = 5;
}

/// Which way a reset went (`ResetEvent::direction`, `SockInfo::reset`).
pub mod reset_direction {
    pub const NONE: u8 = 0;
    pub const SENT: u8 = 1;
    pub const RECEIVED: u8 = 2;
}

/// Which retry limit the kernel applies to a retransmitting socket.
pub mod retry_budget {
    pub const UNKNOWN: u8 = 0;
    /// `icsk_syn_retries` or `tcp_syn_retries`, plus `tcp_syn_linear_timeouts`.
    pub const SYN: u8 = 1;
    /// `icsk_syn_retries` of the listener or `tcp_synack_retries`.
    pub const SYNACK: u8 = 2;
    /// `tcp_orphan_retries` (0 means 8) for sockets their owner closed.
    pub const ORPHAN: u8 = 3;
    /// `tcp_retries2`.
    pub const RETRIES2: u8 = 4;
}

/// Common head of every ring-buffer record.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EventHeader {
    pub kind: u8,
    /// 4 or 6: the family of the traffic (`traffic_family`).
    pub family: u8,
    pub _pad: u16,
    /// Network namespace inode of the socket; 0 when unknown.
    pub netns: u32,
    /// `bpf_ktime_get_ns()`: CLOCK_MONOTONIC.
    pub timestamp_ns: u64,
    pub skaddr: u64,
    /// The socket's inode when its owner is unknown to the kernel side (a
    /// socket older than the tracer): userspace finds the process holding
    /// it in /proc. 0 otherwise.
    pub sock_ino: u64,
    /// The socket's cgroup v2 id (its directory's inode), which userspace
    /// turns into a container and pod; 0 when unknown.
    pub cgroup: u64,
}

impl EventHeader {
    /// The one way an event's header is made.
    pub const fn new(
        kind: u8,
        family: u8,
        netns: u32,
        timestamp_ns: u64,
        skaddr: u64,
        sock_ino: u64,
        cgroup: u64,
    ) -> Self {
        Self {
            kind,
            family,
            _pad: 0,
            netns,
            timestamp_ns,
            skaddr,
            sock_ino,
            cgroup,
        }
    }
}

/// An IPv6 address's 16 bytes in network order, held as 4 words in memory
/// order: the kernel side moves words, where it would move a byte array byte
/// by byte (the BPF target has no unaligned loads or stores).
pub type Address = [u32; 4];

/// `Address` to and from its bytes.
pub mod address {
    use super::Address;

    pub fn octets(address: &Address) -> [u8; 16] {
        let mut octets = [0; 16];
        for (chunk, word) in octets.chunks_exact_mut(4).zip(address) {
            chunk.copy_from_slice(&word.to_ne_bytes());
        }
        octets
    }

    /// Whether it is `::ffff:a.b.c.d`, how IPv6 holds an IPv4 address.
    #[inline(always)]
    pub fn is_ipv4_mapped(address: &Address) -> bool {
        address[0] == 0 && address[1] == 0 && address[2] == u32::from_ne_bytes([0, 0, 0xff, 0xff])
    }

    pub fn from_octets(octets: [u8; 16]) -> Address {
        core::array::from_fn(|i| {
            u32::from_ne_bytes([
                octets[4 * i],
                octets[4 * i + 1],
                octets[4 * i + 2],
                octets[4 * i + 3],
            ])
        })
    }
}

/// The family of a flow's traffic, which `-4`/`-6`, the `IP` column and
/// JSON `family` show: an IPv6 socket whose addresses are IPv4-mapped (a
/// dual-stack listener's IPv4 connections) carries IPv4. The remote address
/// decides; the local one while there is no remote (a listener bound to
/// `::ffff:a.b.c.d`).
#[inline(always)]
pub fn traffic_family(family: u16, local: &Address, remote: &Address) -> u16 {
    let decides = if *remote == [0; 4] { local } else { remote };
    if family == AF_INET6 && address::is_ipv4_mapped(decides) {
        AF_INET
    } else {
        family
    }
}

/// A connection's addresses. For IPv4 sockets the addresses are IPv4-mapped
/// IPv6 (`::ffff:a.b.c.d`), as the kernel stores them in the tracepoint record.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Flow {
    pub saddr: Address,
    pub daddr: Address,
    /// Host byte order.
    pub sport: u16,
    pub dport: u16,
}

/// The process owning a socket, as last seen touching it in process context.
/// 8-aligned so that the kernel side copies and clears it with word stores.
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Owner {
    /// Thread-group id; 0 when unknown.
    pub pid: u32,
    pub uid: u32,
    pub comm: [u8; 16],
}

impl Owner {
    pub const UNKNOWN: Self = Self {
        pid: 0,
        uid: 0,
        comm: [0; 16],
    };
}

/// One retransmission: `tcp:tcp_retransmit_skb` (kind `RETRANSMIT`) or
/// `tcp:tcp_retransmit_synack` (kind `SYNACK`, where the socket fields come
/// from the request socket and the congestion fields are 0). Fields whose
/// offsets are `ABSENT` are 0; userspace knows which and shows them unknown.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetransmitEvent {
    pub header: EventHeader,
    pub owner: Owner,
    pub flow: Flow,
    /// TCP state; 0 when the kernel's record has no state.
    pub state: u8,
    /// `icsk_ca_state`: congestion-avoidance state (`TCP_CA_*`).
    pub ca_state: u8,
    /// `icsk_pending`: the timer being handled (`ICSK_TIME_*`).
    pub pending: u8,
    /// `icsk_backoff` (SYN-ACK: the request's `num_timeout`).
    pub backoff: u8,
    /// 0, or the negative errno of a failed attempt (6.17+).
    pub err: i32,
    /// `icsk_retransmits` (SYN-ACK: the request's `num_retrans`).
    pub retransmits: u8,
    /// `tcp_skb_cb.tcp_flags` of the skb.
    pub tcp_flags: u8,
    /// `tcp_skb_pcount(skb)`: segments in this skb.
    pub segs: u16,
    /// `icsk_rto` in jiffies (SYN-ACK: the request's current timeout).
    pub rto_jiffies: u32,
    /// `srtt_us`: smoothed RTT in µs, shifted left by 3.
    pub srtt_us8: u32,
    /// `mdev_us`: RTT deviation in µs, shifted left by 2.
    pub mdev_us4: u32,
    pub cwnd: u32,
    pub ssthresh: u32,
    pub total_retrans: u32,
    pub seq: u32,
    pub end_seq: u32,
    /// A `retry_budget` kind.
    pub budget: u8,
    /// The limit's sysctl (or socket option) value, before kind-specific rules.
    pub budget_limit: u8,
    /// `tcp_syn_linear_timeouts` of the socket's namespace (SYN budget only).
    pub syn_linear_timeouts: u8,
    /// 1 when the timer `pending` names has expired: its handler is what is
    /// retransmitting (the timer stays "pending" while it runs).
    pub timer_due: u8,
    pub _pad1: u32,
}

/// `prev_state_ns` when the socket was first seen in this state.
pub const DURATION_UNKNOWN: u64 = u64::MAX;

/// One TCP `sock:inet_sock_set_state` transition.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StateEvent {
    pub header: EventHeader,
    pub owner: Owner,
    pub flow: Flow,
    pub old_state: u8,
    pub new_state: u8,
    /// On `FIN_WAIT2`/`CLOSING` → `CLOSE`: the `tw_substate` of the timewait
    /// socket that took the connection over, 0 when none did.
    pub timewait: u8,
    /// A `reset_direction` the socket saw before this transition.
    pub reset: u8,
    /// Time spent in `old_state`, or `DURATION_UNKNOWN`.
    pub prev_state_ns: u64,
    /// When the socket's first transition was seen (its `connect()`,
    /// `listen()` or creation from a listener); 0 when it predates tracing.
    pub opened_ns: u64,
    /// On `CLOSE`: `sk_err` (positive errno), 0 for none.
    pub error: i32,
    /// 1 when the owner had closed the socket (`SOCK_DEAD`).
    pub orphan: u8,
    pub _pad0: u8,
    pub _pad1: u16,
}

/// A TCP `connect()` that failed: returned an error, or (non-blocking)
/// returned EINPROGRESS and the socket then closed with an error.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnectErrorEvent {
    pub header: EventHeader,
    /// The calling process (for non-blocking connects: the socket's owner).
    pub owner: Owner,
    /// Local end as far as bound, remote end as connect() was asked.
    pub flow: Flow,
    /// Positive errno.
    pub errno: i32,
}

/// A `connect()` between its syscall entry and exit, keyed by thread.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PendingConnect {
    pub sk: u64,
    /// The destination, IPv4-mapped for IPv4.
    pub daddr: Address,
    /// Host order.
    pub dport: u16,
    /// `AF_INET` or `AF_INET6`, of the traffic (`traffic_family`).
    pub family: u16,
    pub _pad: u32,
}

/// A reset sent or received on a socket.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ResetEvent {
    pub header: EventHeader,
    pub owner: Owner,
    pub flow: Flow,
    /// A `reset_direction`.
    pub direction: u8,
    /// The socket's TCP state.
    pub state: u8,
    pub _pad: u16,
}

/// The `namespace_limits` program and its map.
pub mod namespace_limits {
    /// Namespaces whose limits the map holds (the least recently read go).
    pub const ENTRIES: u32 = 1024;
    /// The program's answers (`BPF_PROG_TEST_RUN`'s return value).
    pub const READ: u32 = 0;
    /// The socket is no longer in the namespace (it was freed and reused).
    pub const NOT_IN_NAMESPACE: u32 = 1;
    pub const NO_ROOM: u32 = 2;
}

/// A network namespace's limits, which `/proc/sys` shows only to its own
/// members: the `namespace_limits` program reads them from the `struct net`
/// of one of its sockets, for userspace to export without entering it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NamespaceLimits {
    pub max_tw_buckets: u32,
    /// The two words at `ip_local_ports.range`.
    pub local_ports: [u32; 2],
    pub _pad: u32,
}

impl NamespaceLimits {
    /// `ip_local_port_range`. Two ints (the first below 65536), or one word
    /// of two ports, the last (never 0) in its high half.
    pub const fn port_range(&self) -> (u16, u16) {
        let [first, second] = self.local_ports;
        if first >> 16 != 0 {
            (first as u16, (first >> 16) as u16)
        } else {
            (first as u16, second as u16)
        }
    }
}

/// Per-socket state the kernel side keeps between events, keyed by socket address.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SockInfo {
    /// When the socket entered its current state; 0 when not seen.
    pub state_since_ns: u64,
    /// When its first transition was seen; 0 when it predates tracing.
    pub opened_ns: u64,
    pub owner: Owner,
    /// The last `reset_direction` seen on the socket.
    pub reset: u8,
    pub _pad0: u8,
    pub _pad1: u16,
    pub _pad2: u32,
}

impl SockInfo {
    /// The entry of a socket first seen: no reset, no pending connect.
    pub const fn new(state_since_ns: u64, opened_ns: u64, owner: Owner) -> Self {
        Self {
            state_since_ns,
            opened_ns,
            owner,
            reset: reset_direction::NONE,
            _pad0: 0,
            _pad1: 0,
            _pad2: 0,
        }
    }
}

const _: () = {
    use core::mem::{align_of, size_of};
    assert!(size_of::<FlowFields>() == 12);
    assert!(size_of::<RetransmitFields>() == 20);
    assert!(size_of::<SynackFields>() == 14);
    assert!(size_of::<Bitfield>() == 4);
    assert!(size_of::<TcpOffsets>() == 120);
    assert!(size_of::<ConnectFields>() == 8);
    assert!(size_of::<ListenerKey>() == 8);
    assert!(size_of::<ConnectErrorEvent>() == 104);
    assert!(size_of::<PendingConnect>() == 32);
    assert!(size_of::<StateFields>() == 20);
    assert!(size_of::<SockOffsets>() == 16);
    assert!(size_of::<Filter>() == 80);
    assert!(size_of::<AddrPrefix>() == 20);
    assert!(size_of::<EventHeader>() == 40);
    assert!(size_of::<Flow>() == 36);
    assert!(size_of::<Owner>() == 24);
    assert!(size_of::<RetransmitEvent>() == 152);
    assert!(size_of::<StateEvent>() == 128);
    assert!(size_of::<ResetEvent>() == 104);
    assert!(size_of::<ResetFields>() == 4);
    assert!(align_of::<StateEvent>() == 8);
    assert!(size_of::<SockInfo>() == 48);
    assert!(size_of::<NamespaceLimits>() == 16);
};

#[cfg(feature = "user")]
mod pod {
    use super::*;

    macro_rules! pod {
        ($($record:ty),* $(,)?) => {$(
            // SAFETY: every record here is `#[repr(C)]`, made only of
            // integers and byte arrays, with every padding byte spelled out
            // as a field.
            unsafe impl aya::Pod for $record {}
        )*};
    }

    pod!(
        NamespaceLimits,
        RetransmitFields,
        StateFields,
        SynackFields,
        SockOffsets,
        TcpOffsets,
        Filter,
        RetransmitEvent,
        StateEvent,
        ResetEvent,
        ResetFields,
        ConnectFields,
        ConnectErrorEvent,
        SockInfo,
        Owner,
        ListenerKey,
        PendingConnect,
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(addr: [u8; 16]) -> Address {
        address::from_octets(addr)
    }

    fn mapped(v4: [u8; 4]) -> [u8; 16] {
        let mut a = [0; 16];
        a[10] = 0xff;
        a[11] = 0xff;
        a[12..].copy_from_slice(&v4);
        a
    }

    #[test]
    fn port_ranges_of_both_layouts() {
        let range = |local_ports| {
            NamespaceLimits {
                local_ports,
                ..NamespaceLimits::default()
            }
            .port_range()
        };
        // `int range[2]`.
        assert_eq!(range([32768, 60999]), (32768, 60999));
        assert_eq!(range([1, 65535]), (1, 65535));
        // One word, then `bool warned` and padding.
        assert_eq!(range([60999 << 16 | 32768, 1]), (32768, 60999));
        assert_eq!(range([1 << 16 | 1, 0]), (1, 1));
    }

    #[test]
    fn prefixes_match_leading_bits() {
        let net = AddrPrefix {
            addr: mapped([10, 1, 0, 0]),
            bits: 96 + 16,
            _pad: 0,
        };
        assert!(net.contains(&words(mapped([10, 1, 200, 3]))));
        assert!(!net.contains(&words(mapped([10, 2, 0, 1]))));
        let odd = AddrPrefix {
            addr: mapped([10, 0, 0, 128]),
            bits: 96 + 25,
            _pad: 0,
        };
        assert!(odd.contains(&words(mapped([10, 0, 0, 255]))));
        assert!(!odd.contains(&words(mapped([10, 0, 0, 127]))));
        assert!(AddrPrefix::ANY.contains(&words([7; 16])));
        let host = AddrPrefix {
            addr: [1; 16],
            bits: 128,
            _pad: 0,
        };
        assert!(host.contains(&words([1; 16])));
        assert!(!host.contains(&words({
            let mut a = [1; 16];
            a[15] = 2;
            a
        })));
    }

    #[test]
    fn ipv4_mapped_traffic_of_ipv6_sockets_is_ipv4() {
        let v4 = words(mapped([192, 0, 2, 1]));
        let v6 = words([0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
        let none = [0; 4];
        assert_eq!(traffic_family(AF_INET6, &v4, &v4), AF_INET);
        assert_eq!(traffic_family(AF_INET6, &none, &v4), AF_INET);
        assert_eq!(traffic_family(AF_INET6, &v6, &v6), AF_INET6);
        assert_eq!(
            traffic_family(AF_INET6, &v4, &none),
            AF_INET,
            "bound to a mapped address"
        );
        assert_eq!(
            traffic_family(AF_INET6, &none, &none),
            AF_INET6,
            "listening on ::"
        );
        assert_eq!(traffic_family(AF_INET, &v4, &v4), AF_INET);
    }

    #[test]
    fn time_wait_keeps_the_transitions_it_is_derived_from() {
        use tcp_state::*;
        let filter = Filter {
            flags: filter_flags::STATE_EVENTS,
            state_mask: 1 << TIME_WAIT,
            ..Filter::KEEP_ALL
        };
        assert!(filter.keeps_transition(FIN_WAIT2, CLOSE));
        assert!(filter.keeps_transition(CLOSING, CLOSE));
        assert!(filter.keeps_transition(SYN_SENT, ESTABLISHED));
        assert!(!filter.keeps_transition(ESTABLISHED, FIN_WAIT1));
        assert!(!filter.keeps_transition(LAST_ACK, CLOSE));
    }

    #[test]
    fn counted_transitions_that_tell_more_are_still_sent() {
        use tcp_state::*;
        assert!(
            tells_more(FIN_WAIT2, CLOSE, 0),
            "TIME_WAIT entry or overflow"
        );
        assert!(tells_more(SYN_SENT, ESTABLISHED, 0), "TIME_WAIT reuse");
        assert!(tells_more(ESTABLISHED, CLOSE, 104), "an error");
        assert!(tells_more(CLOSE, LISTEN, 0), "a listener's namespace");
        assert!(!tells_more(ESTABLISHED, FIN_WAIT1, 0));
        assert!(!tells_more(LAST_ACK, CLOSE, 0));
        let slots = [
            transition_counts::slot(0, 0, 0),
            transition_counts::slot(0, CLOSING, LISTEN),
            transition_counts::slot(1, 0, 0),
            transition_counts::slot(1, 15, 15),
        ];
        assert_eq!(slots, [0, 11 * 16 + 10, 256, transition_counts::SLOTS - 1]);
    }

    #[test]
    fn ports_either_side() {
        let filter = Filter {
            port: 443,
            ..Filter::KEEP_ALL
        };
        let any = [0; 4];
        assert!(filter.keeps_flow(443, 5000, &any, &any));
        assert!(filter.keeps_flow(5000, 443, &any, &any));
        assert!(!filter.keeps_flow(5000, 80, &any, &any));
        assert!(
            Filter {
                lport: 80,
                ..Filter::KEEP_ALL
            }
            .keeps_flow(80, 1, &any, &any)
        );
        assert!(
            !Filter {
                rport: 80,
                ..Filter::KEEP_ALL
            }
            .keeps_flow(80, 1, &any, &any)
        );
    }
}
