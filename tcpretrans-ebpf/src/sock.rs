//! Reads from kernel objects (`struct sock`, `sk_buff`, `net`, ...) at member
//! offsets userspace resolved from BTF. Unknown offsets read as 0.
use core::{ffi::c_void, mem::MaybeUninit};

use aya_ebpf::helpers::{bpf_get_current_task, generated};
use tcpretrans_common::{
    AF_INET6, Address, Bitfield, Filter, Flow, Offset, Owner, SockOffsets, TcpOffsets,
    filter_flags,
    tcp_state::{self, TIME_WAIT},
    traffic_family,
};

use crate::maps::FILTER;

/// The pointer at an address: a hash bucket's head, a chain's next node, a
/// descriptor table's entry.
pub const POINTER: Offset<u64> = Offset::at(0);

/// How a program reads kernel objects at the offsets userspace resolved.
pub trait Memory {
    /// The `T` at `at` in `base`; 0 when the offset is unknown or the read
    /// fails.
    fn read<T: Copy + Default>(base: u64, at: Offset<T>) -> T;

    /// The current task, as this reader takes pointers.
    fn current_task() -> u64;

    /// The pointer member of socket `sk` at `at` (0 when unknown); `None`
    /// when `sk` is not a full TCP socket and this reader needs one.
    fn socket_pointer(sk: u64, at: Offset<u64>) -> Option<u64>;
}

/// Any kernel address, through `bpf_probe_read_kernel`: the pointers of raw
/// and classic tracepoints, and addresses computed at run time.
pub enum Probed {}

/// A BTF-typed pointer — a `tp_btf` program's argument, or a pointer member
/// loaded through one — read with a plain load. The verifier checks each
/// load against the member it falls in, so only members of the pointer's own
/// type, read whole or within one integer or array; the JIT makes a faulting
/// load (a NULL pointer's) read 0. `T` is an integer: volatile loads keep
/// LLVM from merging neighbouring members into one wider load.
pub enum Typed {}

impl Memory for Probed {
    #[inline(always)]
    fn read<T: Copy + Default>(base: u64, at: Offset<T>) -> T {
        // A NULL base is no failure: pointers the kernel leaves NULL (a
        // timewait socket's `sk_socket`) are followed on purpose.
        if !at.is_known() || base == 0 {
            return T::default();
        }
        let mut value = MaybeUninit::<T>::uninit();
        // SAFETY: probe reads fail safely on a bad address and then zero
        // the destination: `value` is written either way, and `T` is plain
        // data.
        let failed = unsafe {
            generated::bpf_probe_read_kernel(
                value.as_mut_ptr().cast(),
                size_of::<T>() as u32,
                (base + u64::from(at.byte())) as *const c_void,
            )
        } != 0;
        if failed {
            crate::maps::count_failed_read();
        }
        // SAFETY: written above, read or zeroed.
        unsafe { value.assume_init() }
    }

    #[inline(always)]
    fn current_task() -> u64 {
        // SAFETY: helper without preconditions.
        unsafe { bpf_get_current_task() }
    }

    #[inline(always)]
    fn socket_pointer(sk: u64, at: Offset<u64>) -> Option<u64> {
        Some(Self::read(sk, at))
    }
}

impl Memory for Typed {
    #[inline(always)]
    fn read<T: Copy + Default>(base: u64, at: Offset<T>) -> T {
        if !at.is_known() {
            return T::default();
        }
        // SAFETY: see `Typed`: the verifier admits only loads inside the
        // pointed-to object's members, and faults read as 0.
        unsafe { ((base + u64::from(at.byte())) as *const T).read_volatile() }
    }

    #[inline(always)]
    fn current_task() -> u64 {
        // SAFETY: helper without preconditions.
        unsafe { generated::bpf_get_current_task_btf() as u64 }
    }

    /// Loaded through the socket as `bpf_skc_to_tcp_sock` gives it back,
    /// which the verifier does not count as trusted: loading a pointer
    /// through a trusted one (a `tp_btf` argument) makes it search the
    /// kernel's BTF for the member's trust annotations, four linear searches
    /// (~2 ms of the state program's verification) for one load.
    #[inline(always)]
    fn socket_pointer(sk: u64, at: Offset<u64>) -> Option<u64> {
        // SAFETY: the helper checks its argument and returns NULL for what
        // is not a full TCP socket.
        let tcp_sock = unsafe { generated::bpf_skc_to_tcp_sock(sk as *mut c_void) } as u64;
        (tcp_sock != 0).then(|| Self::read(tcp_sock, at))
    }
}

/// A probe read: `Probed::read`.
#[inline(always)]
pub fn read<T: Copy + Default>(base: u64, at: Offset<T>) -> T {
    Probed::read(base, at)
}

#[inline(always)]
pub fn read_bitfield(base: u64, field: Bitfield) -> u8 {
    let byte: u8 = read(base, Offset::at(field.byte));
    let mask = ((1u16 << (field.width & 7)) - 1) as u8 | if field.width >= 8 { 0xff } else { 0 };
    (byte >> (field.shift & 7)) & mask
}

/// A socket's network namespace.
pub struct Netns {
    /// `struct net *`; 0 when unknown.
    pub net: u64,
    /// Its inode number; 0 when unknown.
    pub inum: u32,
}

/// The socket's namespace, if the socket passes the namespace and cgroup
/// filters.
#[inline(always)]
pub fn kept<M: Memory>(skaddr: u64, offsets: &SockOffsets, filter: &Filter) -> Option<Netns> {
    let net = M::socket_pointer(skaddr, offsets.sk_net)?;
    let inum: u32 = M::read(net, offsets.net_inum);
    let kept = (filter.netns == 0 || filter.netns == inum)
        && (filter.cgroup_id == 0 || in_cgroup(skaddr, offsets, filter));
    kept.then_some(Netns { net, inum })
}

/// The socket's cgroup v2 id: its cgroup's kernfs node id, the inode of the
/// cgroup's directory. 0 when userspace did not ask for it, when this
/// kernel's BTF lacks the members, and for a timewait or request socket
/// (which has no cgroup data).
#[inline(always)]
pub fn cgroup_id(sk: u64, offsets: &SockOffsets, tcp: &TcpOffsets) -> u64 {
    if FILTER.get().flags & filter_flags::CGROUP_IDS == 0
        || sk == 0
        || !(offsets.sk_cgroup.is_known()
            && offsets.cgroup_kn.is_known()
            && offsets.kn_id.is_known())
    {
        return 0;
    }
    let state: u8 = read(sk, tcp.skc_state);
    if state == TIME_WAIT || state == tcp_state::NEW_SYN_RECV {
        return 0;
    }
    let cgroup: u64 = read(sk, offsets.sk_cgroup);
    if cgroup == 0 {
        return 0;
    }
    let kn: u64 = read(cgroup, offsets.cgroup_kn);
    if kn == 0 {
        return 0;
    }
    read(kn, offsets.kn_id)
}

/// Whether the socket's cgroup is the filter's or below it: its ancestor at
/// the filter's level has the filter's id. Probe reads: `ancestors` is a
/// flexible array, beyond what the verifier lets a typed pointer reach.
#[inline(always)]
fn in_cgroup(skaddr: u64, offsets: &SockOffsets, filter: &Filter) -> bool {
    let cgroup: u64 = read(skaddr, offsets.sk_cgroup);
    let level: i32 = read(cgroup, offsets.cgroup_level);
    if cgroup == 0 || level < 0 || (level as u32) < filter.cgroup_level {
        return false;
    }
    // The level is bounded by the hierarchy's depth; userspace checked the
    // offset is known.
    let ancestor_slot = cgroup + u64::from(filter.cgroup_level) * 8;
    let ancestor: u64 = read(ancestor_slot, offsets.cgroup_ancestors);
    let kn: u64 = read(ancestor, offsets.cgroup_kn);
    read::<u64>(kn, offsets.kn_id) == filter.cgroup_id
}

/// A socket's flow from its `sock_common` (full, request or timewait
/// socket), as `(flow, AF_*)` with the family of its traffic
/// (`traffic_family`); `None` when the offsets are unknown.
#[inline(always)]
pub fn flow<M: Memory>(sk: u64, tcp: &TcpOffsets) -> Option<(Flow, u16)> {
    if sk == 0 || !tcp.skc_portpair.is_known() || !tcp.skc_family.is_known() {
        return None;
    }
    let family: u16 = M::read(sk, tcp.skc_family);
    let ports = M::read(sk, tcp.skc_portpair).to_ne_bytes();
    let (saddr, daddr) = if family == AF_INET6 {
        (
            address::<M>(sk, tcp.skc_v6_rcv_saddr),
            address::<M>(sk, tcp.skc_v6_daddr),
        )
    } else {
        // `skc_daddr`, then `skc_rcv_saddr`.
        let [daddr, saddr] = halves(M::read(sk, tcp.skc_addrpair));
        (ipv4_mapped(saddr), ipv4_mapped(daddr))
    };
    // `skc_num` is in host order, `skc_dport` in network order.
    let mut sport = u16::from_ne_bytes([ports[2], ports[3]]);
    if sport == 0 {
        // A member of `struct inet_sock`, past `struct sock`: probed.
        sport = u16::from_be(read(sk, tcp.inet_sport));
    }
    let flow = Flow {
        saddr,
        daddr,
        sport,
        dport: u16::from_be_bytes([ports[0], ports[1]]),
    };
    Some((flow, traffic_family(family, &flow.saddr, &flow.daddr)))
}

/// An IPv6 address member (8-aligned in `sock_common`), read as two words.
#[inline(always)]
fn address<M: Memory>(sk: u64, at: Offset<[u64; 2]>) -> Address {
    let [low, high] = M::read(sk, at);
    let ([a, b], [c, d]) = (halves(low), halves(high));
    [a, b, c, d]
}

/// A word's two halves in memory order.
#[inline(always)]
fn halves(word: u64) -> [u32; 2] {
    let [a, b, c, d, e, f, g, h] = word.to_ne_bytes();
    [
        u32::from_ne_bytes([a, b, c, d]),
        u32::from_ne_bytes([e, f, g, h]),
    ]
}

/// `::ffff:a.b.c.d`, how IPv6 holds an IPv4 address (in network order).
#[inline(always)]
pub fn ipv4_mapped(ipv4: u32) -> Address {
    [0, 0, u32::from_ne_bytes([0, 0, 0xff, 0xff]), ipv4]
}

/// Chain entries looked at for a connection's timewait socket.
const TIMEWAIT_SEARCH_DEPTH: usize = 4;

/// What took over a connection leaving `FIN_WAIT2`/`CLOSING` for `CLOSE`:
/// the `tw_substate` of its timewait socket, or 0 when none did (TIME_WAIT
/// bucket overflow). `tcp_time_wait()` puts the timewait socket at the head
/// of the connection's ehash bucket just before the transition. `lport` is
/// the record's: by now `inet_put_port()` has zeroed the socket's `skc_num`.
/// Its own BPF function: it runs only on the way to CLOSE, and inlined, its
/// loop made LLVM spill a pointer in a way the verifier rejects. The socket
/// and the hash table are read with `M`; the bucket's address is computed
/// and the chain's sockets are found through it: probed.
#[inline(never)]
pub fn timewait_substate<M: Memory>(
    sk: u64,
    net: u64,
    lport: u16,
    tcp: &TcpOffsets,
    sk_net: Offset<u64>,
) -> u8 {
    if !tcp.hashinfo_ehash.is_known()
        || !tcp.skc_nulls_node.is_known()
        || !tcp.tw_substate.is_known()
    {
        return 0;
    }
    let hashinfo: u64 = M::read(net, tcp.net_tw_hashinfo);
    let ehash: u64 = M::read(hashinfo, tcp.hashinfo_ehash);
    let mask: u32 = M::read(hashinfo, tcp.hashinfo_ehash_mask);
    let hash: u32 = M::read(sk, tcp.skc_hash);
    let dport: u16 = M::read(sk, tcp.skc_portpair.part(0));
    let addresses: u64 = M::read(sk, tcp.skc_addrpair);
    // `struct inet_ehash_bucket` is one `hlist_nulls_head`: a pointer.
    let mut node = read(ehash + u64::from(hash & mask) * 8, POINTER);
    // The timewait socket went in at the head; other sockets hashing to
    // this bucket (any namespace) may have been added since: look a few
    // entries down.
    for _ in 0..TIMEWAIT_SEARCH_DEPTH {
        // A chain ends in a "nulls" marker with bit 0 set.
        if node == 0 || node & 1 == 1 {
            break;
        }
        let tw = node - u64::from(tcp.skc_nulls_node.byte());
        // Differences OR'ed, one test: each `==` would be a branch, and
        // the verifier would walk every way out of the loop. (`net` may be
        // a typed pointer, which allows no arithmetic: compared.)
        let differences = u64::from(read(tw, tcp.skc_state) ^ TIME_WAIT)
            | u64::from(read(tw, tcp.skc_portpair.part::<u16>(0)) ^ dport)
            | u64::from(read(tw, tcp.skc_portpair.part::<u16>(2)) ^ lport)
            | (read(tw, tcp.skc_addrpair) ^ addresses);
        if differences == 0 && read(tw, sk_net) == net {
            return read(tw, tcp.tw_substate);
        }
        // `hlist_nulls_node.next` is its first member.
        node = read(node, POINTER);
    }
    0
}

/// The socket's inode number (what `/proc/PID/fd` links name), or 0.
/// Probed: the inode is in `struct socket_alloc`, around the `struct
/// socket`, and a typed `sk_socket` costs the BTF programs' verification
/// more (9 ms each here) than its probe read costs when the owner is unknown.
#[inline(always)]
pub fn inode(sk: u64, tcp: &TcpOffsets) -> u64 {
    let socket: u64 = read(sk, tcp.sk_socket);
    if socket == 0 || !tcp.socket_alloc_inode.is_known() {
        return 0;
    }
    read(
        socket + u64::from(tcp.socket_alloc_inode.byte()),
        tcp.inode_ino,
    )
}

/// Whether the socket's owner connects without waiting: its file is
/// `O_NONBLOCK`, so `connect()` returned EINPROGRESS and its failure is
/// reported when the socket closes. Not a socket without a file: an MPTCP
/// subflow, whose MPTCP socket's `connect()` the connect program reports.
#[inline(always)]
pub fn connects_without_waiting(sk: u64, tcp: &TcpOffsets) -> bool {
    let socket: u64 = read(sk, tcp.sk_socket);
    let file: u64 = read(socket, tcp.socket_file);
    let flags: u32 = read(file, tcp.file_flags);
    flags & O_NONBLOCK != 0
}

/// `O_NONBLOCK` on x86-64 and arm64 (the generic value).
const O_NONBLOCK: u32 = 0o4000;

/// What an event says about a socket's owner: the owner if known, else the
/// socket's inode for userspace to look up.
#[inline(always)]
pub fn owner_or_inode<'a>(
    sk: u64,
    owner: Option<&'a Owner>,
    tcp: &TcpOffsets,
) -> (Option<&'a Owner>, u64) {
    match owner.filter(|o| o.pid != 0) {
        Some(owner) => (Some(owner), 0),
        None => (None, inode(sk, tcp)),
    }
}

pub const IPPROTO_TCP: u16 = 6;
pub const IPPROTO_MPTCP: u16 = 262;

/// The socket's `sk_protocol`.
#[inline(always)]
pub fn protocol<M: Memory>(sk: u64, tcp: &TcpOffsets) -> u16 {
    M::read(sk, tcp.sk_protocol)
}

/// Whether the owner has closed the socket (`SOCK_DEAD`).
#[inline(always)]
pub fn orphan<M: Memory>(sk: u64, tcp: &TcpOffsets) -> u8 {
    if !tcp.sk_flags.is_known() {
        return 0;
    }
    let flags: u64 = M::read(sk, tcp.sk_flags);
    (flags >> (tcp.sock_dead_bit & 63) & 1) as u8
}

/// The TCP or MPTCP socket behind the calling task's `fd`, or 0. (An MPTCP
/// socket's TCP subflows have no descriptor: its `connect()` is the one the
/// program sees fail.)
#[inline(always)]
pub fn stream_socket_of_fd(fd: u64, tcp: &TcpOffsets) -> u64 {
    // SAFETY: helper without preconditions.
    let task = unsafe { bpf_get_current_task() };
    let files: u64 = read(task, tcp.task_files);
    let fdt: u64 = read(files, tcp.files_fdt);
    let fds: u64 = read(fdt, tcp.fdtable_fd);
    let file: u64 = if fds == 0 || fd > 1 << 20 {
        0
    } else {
        read(fds + (fd & 0xfffff) * 8, POINTER)
    };
    let socket: u64 = read(file, tcp.file_private_data);
    if socket == 0 || read(socket, tcp.socket_file) != file {
        return 0;
    }
    let sk: u64 = read(socket, tcp.socket_sk);
    if matches!(protocol::<Probed>(sk, tcp), IPPROTO_TCP | IPPROTO_MPTCP) {
        sk
    } else {
        0
    }
}
