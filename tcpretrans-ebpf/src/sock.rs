//! Reads from `struct sock` at member offsets userspace resolved from BTF.
use aya_ebpf::helpers::bpf_probe_read_kernel;
use tcpretrans_common::{Filter, SockOffsets};

/// The socket's network namespace inode, or 0 when BTF did not give the offsets.
#[inline(always)]
pub fn netns(skaddr: u64, offsets: &SockOffsets) -> u32 {
    if !offsets.has_netns() {
        return 0;
    }
    let read = || -> Result<u32, i64> {
        // SAFETY: probe reads of kernel memory fail safely on a bad address.
        unsafe {
            let net: u64 =
                bpf_probe_read_kernel((skaddr + u64::from(offsets.sk_net)) as *const u64)
                    .map_err(i64::from)?;
            bpf_probe_read_kernel((net + u64::from(offsets.net_inum)) as *const u32)
                .map_err(i64::from)
        }
    };
    read().unwrap_or(0)
}

/// The socket's namespace, if it passes the namespace filter.
#[inline(always)]
pub fn netns_passing(skaddr: u64, offsets: &SockOffsets, filter: &Filter) -> Option<u32> {
    let netns = netns(skaddr, offsets);
    (filter.netns == 0 || filter.netns == netns).then_some(netns)
}
