//! `namespace_limits`: never attached. Userspace runs it
//! (`BPF_PROG_TEST_RUN`) with the address of a socket it saw in a network
//! namespace, to read that namespace's `tcp_max_tw_buckets` and
//! `ip_local_port_range` from its `struct net`: `/proc/sys` shows them
//! only from inside, and entering takes `CAP_SYS_ADMIN`.
use aya_ebpf::{EbpfContext, macros::raw_tracepoint, programs::RawTracePointContext};
use tcpretrans_common::{NamespaceLimits, Offset, hooks, namespace_limits};

use crate::{
    maps::{NAMESPACE_LIMITS, SOCK_OFFSETS, TCP_OFFSETS},
    names::named,
    sock::read,
};

/// Arguments: the socket's address, and the inode of the namespace it was
/// seen in. TCP sockets' memory stays a socket after it is freed
/// (`SLAB_TYPESAFE_BY_RCU`), possibly another namespace's: the inode
/// proves which namespace was read. Returns a `namespace_limits` answer.
#[raw_tracepoint]
pub fn namespace_limits(ctx: RawTracePointContext) -> u32 {
    let words = ctx.as_ptr() as *const u64;
    // SAFETY: the two arguments userspace passes.
    let (sk, inode) = unsafe { (words.read(), words.add(1).read() as u32) };
    let (sock, tcp) = (SOCK_OFFSETS.get(), TCP_OFFSETS.get());
    let net: u64 = read(sk, sock.sk_net);
    if net == 0 || read::<u32>(net, sock.net_inum) != inode {
        return namespace_limits::NOT_IN_NAMESPACE;
    }
    let ports = tcp.net_local_ports;
    let limits = NamespaceLimits {
        max_tw_buckets: read(net, tcp.net_max_tw_buckets),
        local_ports: [
            read(net, ports),
            // The second int, or the end of the struct's word (unused).
            if ports.is_known() {
                read(net, Offset::<u32>::at(ports.byte() + 4))
            } else {
                0
            },
        ],
        _pad: 0,
    };
    match NAMESPACE_LIMITS.insert(inode, limits, 0) {
        Ok(()) => namespace_limits::READ,
        Err(_) => namespace_limits::NO_ROOM,
    }
}

named!(hooks::NAMESPACE_LIMITS, namespace_limits);
