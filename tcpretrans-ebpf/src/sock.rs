//! Reads from kernel objects (`struct sock`, `sk_buff`, `net`, ...) at member
//! offsets userspace resolved from BTF. Unknown offsets read as 0.
use aya_ebpf::helpers::bpf_probe_read_kernel;
use tcpretrans_common::{ABSENT, Bitfield, Filter, SockOffsets};

/// `base + offset` as a `T`; 0 when the offset is unknown or the read fails.
#[inline(always)]
pub fn read<T: Copy + Default>(base: u64, offset: u16) -> T {
    if base == 0 || offset == ABSENT {
        return T::default();
    }
    // SAFETY: probe reads of kernel memory fail safely on a bad address.
    unsafe { bpf_probe_read_kernel((base + u64::from(offset)) as *const T) }.unwrap_or_default()
}

#[inline(always)]
pub fn read_bitfield(base: u64, field: Bitfield) -> u8 {
    let byte: u8 = read(base, field.byte);
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

/// The socket's namespace, if it passes the namespace filter.
#[inline(always)]
pub fn netns_passing(skaddr: u64, offsets: &SockOffsets, filter: &Filter) -> Option<Netns> {
    let net: u64 = read(skaddr, offsets.sk_net);
    let inum: u32 = read(net, offsets.net_inum);
    (filter.netns == 0 || filter.netns == inum).then_some(Netns { net, inum })
}
