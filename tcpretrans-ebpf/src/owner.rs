//! The process owning a socket, captured only where the kernel runs on the
//! owner's behalf (a system call on the socket).
use core::mem::{MaybeUninit, size_of};

use aya_ebpf::helpers::{bpf_get_current_pid_tgid, bpf_get_current_uid_gid, generated};
use tcpretrans_common::Owner;

/// Writes `owner`, or the unknown owner, into an event.
///
/// # Safety
///
/// `dst` points at an `Owner` inside a reserved ring-buffer slot.
#[inline(always)]
pub unsafe fn write_owner(dst: *mut Owner, owner: Option<&Owner>) {
    const WORDS: usize = size_of::<Owner>() / 8;
    let src = owner.map(|owner| core::ptr::from_ref(owner).cast::<u64>());
    let dst = dst.cast::<u64>();
    // SAFETY: per the contract; `Owner` is 8-aligned and all-zero is UNKNOWN.
    // Volatile word stores: LLVM would merge plain ones into an out-of-line
    // byte-by-byte memset/memmove call.
    unsafe {
        for i in 0..WORDS {
            let word = src.map_or(0, |src| src.add(i).read());
            dst.add(i).write_volatile(word);
        }
    }
}

/// The current task as the socket's owner.
#[inline(always)]
pub fn current() -> Owner {
    // Words, not bytes: a byte array is copied byte by byte.
    let mut comm = MaybeUninit::<[u64; 2]>::uninit();
    // SAFETY: the helper always writes all 16 bytes: the name zero-padded, or
    // zeros on failure. Any bytes are a valid `[u8; 16]`.
    let comm = unsafe {
        generated::bpf_get_current_comm(comm.as_mut_ptr().cast(), 16);
        core::mem::transmute::<[u64; 2], [u8; 16]>(comm.assume_init())
    };
    Owner {
        pid: (bpf_get_current_pid_tgid() >> 32) as u32,
        uid: bpf_get_current_uid_gid() as u32,
        comm,
    }
}
