//! The process owning a socket, captured only where the kernel runs on the
//! owner's behalf (a system call on the socket).
use core::mem::{MaybeUninit, size_of};

use aya_ebpf::helpers::{bpf_get_current_pid_tgid, bpf_get_current_uid_gid, generated};
use tcpretrans_common::Owner;

use crate::{
    maps::TCP_OFFSETS,
    sock::{self, Memory, Probed},
};

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

/// A copy of `owner`, read word by word: LLVM copies the struct with an
/// out-of-line byte-by-byte `memmove` otherwise.
#[inline(always)]
pub fn copied(owner: &Owner) -> Owner {
    const WORDS: usize = size_of::<Owner>() / 8;
    let src = core::ptr::from_ref(owner).cast::<u64>();
    // SAFETY: `Owner` is 8-aligned plain data of `WORDS` words.
    unsafe {
        let words: [u64; WORDS] = core::array::from_fn(|i| src.add(i).read_volatile());
        core::mem::transmute::<[u64; WORDS], Owner>(words)
    }
}

/// The current task as the socket's owner. Its name and uid are read from
/// the task where BTF gave their offsets: the helpers' string copy and uid
/// mapping cost several times those reads. Probe reads even in BTF
/// programs: typed loads from `task_struct` and `cred` made the verifier
/// take half as long again over the state program, for no faster run.
#[inline(always)]
pub fn current() -> Owner {
    let pid = (bpf_get_current_pid_tgid() >> 32) as u32;
    let tcp = TCP_OFFSETS.get();
    if !tcp.task_comm.is_known() || !tcp.task_cred.is_known() || !tcp.cred_uid.is_known() {
        return Owner {
            pid,
            uid: bpf_get_current_uid_gid() as u32,
            comm: current_comm(),
        };
    }
    let task = Probed::current_task();
    // Words, not bytes: a byte array is copied byte by byte. The kernel
    // zero-pads `comm` after its NUL, as the helper does.
    let comm: [u64; 2] = sock::read(task, tcp.task_comm);
    // `current_cred()->uid` is the kernel uid, which is the uid as the
    // initial user namespace (and the helper) tells it.
    let cred: u64 = sock::read(task, tcp.task_cred);
    Owner {
        pid,
        uid: sock::read(cred, tcp.cred_uid),
        // SAFETY: any bytes are a valid `[u8; 16]`.
        comm: unsafe { core::mem::transmute::<[u64; 2], [u8; 16]>(comm) },
    }
}

/// The current task's name, by the helper.
#[inline(always)]
fn current_comm() -> [u8; 16] {
    let mut comm = MaybeUninit::<[u64; 2]>::uninit();
    // SAFETY: the helper always writes all 16 bytes: the name zero-padded, or
    // zeros on failure. Any bytes are a valid `[u8; 16]`.
    unsafe {
        generated::bpf_get_current_comm(comm.as_mut_ptr().cast(), 16);
        core::mem::transmute::<[u64; 2], [u8; 16]>(comm.assume_init())
    }
}
