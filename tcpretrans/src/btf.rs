//! Struct member offsets from the running kernel's BTF.
//!
//! The kernel programs read socket fields with `bpf_probe_read_kernel` at
//! offsets resolved here: aya's Rust programs cannot carry CO-RE relocations,
//! and offsets from generated bindings are wrong on other kernels. This reader
//! does only what that needs — one pass to index the types, then lookups of
//! member paths — so it adds little to start-up on a 5.5 MB vmlinux BTF.
use std::{ffi::c_void, fs, io, num::NonZeroUsize, ops::Deref, path::Path, ptr::NonNull};

use nix::sys::mman::{MapFlags, ProtFlags, mmap, munmap};

use tcpretrans_common::{ABSENT, Bitfield, SockOffsets, TcpOffsets};
use thiserror::Error;

/// The running kernel's BTF.
pub const VMLINUX: &str = "/sys/kernel/btf/vmlinux";

const MAGIC: u16 = 0xeb9f;
const HEADER_LEN: usize = 24;

// BTF kinds (include/uapi/linux/btf.h).
const KIND_INT: u32 = 1;
const KIND_PTR: u32 = 2;
const KIND_ARRAY: u32 = 3;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_ENUM: u32 = 6;
const KIND_TYPEDEF: u32 = 8;
const KIND_VOLATILE: u32 = 9;
const KIND_CONST: u32 = 10;
const KIND_RESTRICT: u32 = 11;
const KIND_FUNC_PROTO: u32 = 13;
const KIND_VAR: u32 = 14;
const KIND_DATASEC: u32 = 15;
const KIND_DECL_TAG: u32 = 17;
const KIND_TYPE_TAG: u32 = 18;
const KIND_ENUM64: u32 = 19;

#[derive(Debug, Error)]
pub enum BtfError {
    #[error("cannot read BTF from {path}: {source}")]
    Read { path: String, source: io::Error },
    #[error("{path} is not BTF data ({reason})")]
    Malformed { path: String, reason: &'static str },
}

/// A member's position inside its outermost struct.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemberOffset {
    pub bits: u32,
    /// Width of a bitfield member; 0 for ordinary members.
    pub bitfield_bits: u32,
}

impl MemberOffset {
    /// The byte offset, for members that start on a byte boundary.
    pub fn bytes(&self) -> Option<u32> {
        self.bits.is_multiple_of(8).then_some(self.bits / 8)
    }
}

/// Parsed BTF: the raw data plus the position of every type record.
pub struct Btf {
    data: Bytes,
    types: std::ops::Range<usize>,
    strings: std::ops::Range<usize>,
    /// `type_at[id - 1]` is the byte position of type `id` in `data`.
    type_at: Vec<u32>,
}

/// A BTF file's bytes. The kernel's own, in sysfs, are mapped (since 6.16
/// the kernel allows it): copying their 5.5 MB out in the 4 KiB reads that
/// sysfs makes took 5-10 ms of start-up. Other files are read: a regular
/// file could be truncated under a mapping.
enum Bytes {
    Read(Vec<u8>),
    Mapped {
        at: NonNull<c_void>,
        len: NonZeroUsize,
    },
}

// SAFETY: a private read-only mapping of memory nothing writes.
unsafe impl Send for Bytes {}
// SAFETY: as for `Send`.
unsafe impl Sync for Bytes {}

impl Bytes {
    fn of_file(path: &Path) -> io::Result<Self> {
        if path.starts_with("/sys/kernel/btf") {
            let file = fs::File::open(path)?;
            if let Some(len) = NonZeroUsize::new(file.metadata()?.len() as usize) {
                // SAFETY: a new private read-only mapping; the kernel's BTF
                // never changes while it runs.
                let mapped = unsafe {
                    mmap(
                        None,
                        len,
                        ProtFlags::PROT_READ,
                        MapFlags::MAP_PRIVATE,
                        &file,
                        0,
                    )
                };
                // Kernels before 6.16 refuse: read it then.
                if let Ok(at) = mapped {
                    return Ok(Self::Mapped { at, len });
                }
            }
        }
        fs::read(path).map(Self::Read)
    }
}

impl Deref for Bytes {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        match self {
            Self::Read(data) => data,
            // SAFETY: the mapping lives as long as `self`, readable
            // throughout its length.
            Self::Mapped { at, len } => unsafe {
                std::slice::from_raw_parts(at.as_ptr().cast::<u8>(), len.get())
            },
        }
    }
}

impl Drop for Bytes {
    fn drop(&mut self) {
        if let Self::Mapped { at, len } = *self {
            // SAFETY: our own mapping, which no slice outlives (they borrow
            // `self`).
            let _ = unsafe { munmap(at, len.get()) };
        }
    }
}

/// One type record's fixed part.
#[derive(Clone, Copy)]
struct TypeHeader {
    name_off: u32,
    kind: u32,
    vlen: usize,
    kind_flag: bool,
    /// `size` for structs, unions, ints; `type` for modifiers and typedefs.
    size_or_type: u32,
    /// Position of the kind-specific data that follows the header.
    body: usize,
}

impl Btf {
    /// Reads and indexes the BTF file at `path`.
    pub fn from_file(path: &Path) -> Result<Self, BtfError> {
        let data = Bytes::of_file(path).map_err(|source| BtfError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::index_of(data).map_err(|reason| BtfError::Malformed {
            path: path.display().to_string(),
            reason,
        })
    }

    /// Indexes raw BTF (native endian, as the kernel exports it).
    #[cfg(test)]
    pub fn parse(data: Vec<u8>) -> Result<Self, &'static str> {
        Self::index_of(Bytes::Read(data))
    }

    fn index_of(data: Bytes) -> Result<Self, &'static str> {
        let u32_at = |pos: usize| -> Result<u32, &'static str> {
            data.get(pos..pos + 4)
                .map(|b| u32::from_ne_bytes(b.try_into().expect("4 bytes")))
                .ok_or("truncated header")
        };
        if data.len() < HEADER_LEN || u16::from_ne_bytes([data[0], data[1]]) != MAGIC {
            return Err("bad magic");
        }
        let header_len = u32_at(4)? as usize;
        let (type_off, type_len) = (u32_at(8)? as usize, u32_at(12)? as usize);
        let (str_off, str_len) = (u32_at(16)? as usize, u32_at(20)? as usize);
        let types = header_len + type_off..header_len + type_off + type_len;
        let strings = header_len + str_off..header_len + str_off + str_len;
        if types.end > data.len() || strings.end > data.len() {
            return Err("sections extend past the end of the file");
        }
        let mut btf = Self {
            data,
            types,
            strings,
            type_at: Vec::new(),
        };
        btf.index()?;
        Ok(btf)
    }

    fn index(&mut self) -> Result<(), &'static str> {
        let mut pos = self.types.start;
        let mut type_at = Vec::with_capacity(self.types.len() / 24);
        while pos < self.types.end {
            let header = self.header_at(pos).ok_or("truncated type")?;
            type_at.push(pos as u32);
            pos = header.body + body_len(&header).ok_or("unknown type kind")?;
        }
        if pos != self.types.end {
            return Err("type section overruns");
        }
        self.type_at = type_at;
        Ok(())
    }

    fn u32_at(&self, pos: usize) -> Option<u32> {
        self.data
            .get(pos..pos + 4)
            .map(|b| u32::from_ne_bytes(b.try_into().expect("4 bytes")))
    }

    fn header_at(&self, pos: usize) -> Option<TypeHeader> {
        if pos + 12 > self.types.end {
            return None;
        }
        let info = self.u32_at(pos + 4)?;
        Some(TypeHeader {
            name_off: self.u32_at(pos)?,
            kind: (info >> 24) & 0x1f,
            vlen: (info & 0xffff) as usize,
            kind_flag: info >> 31 == 1,
            size_or_type: self.u32_at(pos + 8)?,
            body: pos + 12,
        })
    }

    fn header(&self, id: u32) -> Option<TypeHeader> {
        let pos = *self.type_at.get((id as usize).checked_sub(1)?)?;
        self.header_at(pos as usize)
    }

    fn name(&self, name_off: u32) -> &[u8] {
        let start = self.strings.start + name_off as usize;
        let bytes = self.data.get(start..self.strings.end).unwrap_or_default();
        let len = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
        &bytes[..len]
    }

    /// Ids of the named types of `kind`, found in one pass over all types
    /// (a scan per name would cost tens of milliseconds on vmlinux). Forward
    /// declarations have their own kind; the first full definition wins.
    fn find_types(&self, kind: u32, names: &[&str]) -> Vec<Option<u32>> {
        let mut ids = vec![None; names.len()];
        let mut left = names.len();
        for id in 1..=self.type_at.len() as u32 {
            let Some(h) = self.header(id) else { break };
            if h.kind != kind || h.name_off == 0 {
                continue;
            }
            let name = self.name(h.name_off);
            for (slot, wanted) in ids.iter_mut().zip(names) {
                if slot.is_none() && name == wanted.as_bytes() {
                    *slot = Some(id);
                    left -= 1;
                }
            }
            if left == 0 {
                break;
            }
        }
        ids
    }

    /// The id of `typedef name`.
    pub fn typedef_id(&self, name: &str) -> Option<u32> {
        self.find_types(KIND_TYPEDEF, &[name])[0]
    }

    /// The value of enumerator `name` of `enum enum_name`.
    pub fn enum_value(&self, enum_name: &str, name: &str) -> Option<i64> {
        let id = self.find_types(KIND_ENUM, &[enum_name])[0]?;
        let h = self.header(id)?;
        (0..h.vlen).find_map(|i| {
            let pos = h.body + i * 8;
            let value = self.u32_at(pos + 4)? as i32;
            (self.name(self.u32_at(pos)?) == name.as_bytes()).then_some(i64::from(value))
        })
    }

    /// Follows typedefs and qualifiers to the underlying type.
    fn resolve(&self, mut id: u32) -> Option<TypeHeader> {
        for _ in 0..32 {
            let h = self.header(id)?;
            match h.kind {
                KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | KIND_TYPE_TAG => {
                    id = h.size_or_type
                }
                _ => return Some(h),
            }
        }
        None
    }

    /// Finds `name` among the members of the struct/union `outer`, looking
    /// inside anonymous struct/union members. Returns the member's type id
    /// and offset relative to `outer`.
    fn find_member(
        &self,
        outer: &TypeHeader,
        name: &str,
        depth: u32,
    ) -> Option<(u32, MemberOffset)> {
        if depth > 8 || !matches!(outer.kind, KIND_STRUCT | KIND_UNION) {
            return None;
        }
        for i in 0..outer.vlen {
            let pos = outer.body + i * 12;
            let (name_off, type_id, raw) = (
                self.u32_at(pos)?,
                self.u32_at(pos + 4)?,
                self.u32_at(pos + 8)?,
            );
            let offset = if outer.kind_flag {
                MemberOffset {
                    bits: raw & 0xff_ffff,
                    bitfield_bits: raw >> 24,
                }
            } else {
                MemberOffset {
                    bits: raw,
                    bitfield_bits: 0,
                }
            };
            let member_name = self.name(name_off);
            if member_name == name.as_bytes() {
                return Some((type_id, offset));
            }
            if member_name.is_empty()
                && let Some(inner) = self.resolve(type_id)
                && let Some((id, inner_offset)) = self.find_member(&inner, name, depth + 1)
            {
                let bits = offset.bits + inner_offset.bits;
                return Some((
                    id,
                    MemberOffset {
                        bits,
                        ..inner_offset
                    },
                ));
            }
        }
        None
    }

    /// Offset of `path` (member names, each inside the previous one's type)
    /// from the start of `struct outer`.
    pub fn member_offset(&self, outer: &str, path: &[&str]) -> Option<MemberOffset> {
        self.member_offset_in(self.find_types(KIND_STRUCT, &[outer])[0]?, path)
    }

    fn member_offset_in(&self, outer_id: u32, path: &[&str]) -> Option<MemberOffset> {
        let mut current = self.header(outer_id)?;
        let mut total = MemberOffset {
            bits: 0,
            bitfield_bits: 0,
        };
        for (i, name) in path.iter().enumerate() {
            let (type_id, offset) = self.find_member(&current, name, 0)?;
            total = MemberOffset {
                bits: total.bits + offset.bits,
                bitfield_bits: offset.bitfield_bits,
            };
            if i + 1 < path.len() {
                current = self.resolve(type_id)?;
            }
        }
        Some(total)
    }

    /// Offsets of many members, finding their outer structs in one pass.
    pub fn member_offsets(&self, members: &[Member]) -> Vec<Option<MemberOffset>> {
        let mut outers: Vec<&str> = members.iter().map(|m| m.outer).collect();
        outers.sort_unstable();
        outers.dedup();
        let ids = self.find_types(KIND_STRUCT, &outers);
        members
            .iter()
            .map(|m| {
                let id = ids[outers.binary_search(&m.outer).ok()?]?;
                self.member_offset_in(id, m.path)
            })
            .collect()
    }
}

/// Size of the kind-specific data after a type record's header.
fn body_len(h: &TypeHeader) -> Option<usize> {
    Some(match h.kind {
        KIND_INT | KIND_VAR | KIND_DECL_TAG => 4,
        KIND_ARRAY => 12,
        KIND_STRUCT | KIND_UNION | KIND_DATASEC | KIND_ENUM64 => 12 * h.vlen,
        KIND_ENUM | KIND_FUNC_PROTO => 8 * h.vlen,
        KIND_PTR | 7 /* FWD */ | KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | 12 /* FUNC */
        | 16 /* FLOAT */ | KIND_TYPE_TAG => 0,
        _ => return None,
    })
}

/// A kernel struct member the kernel programs read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Member {
    pub outer: &'static str,
    pub path: &'static [&'static str],
}

impl Member {
    pub fn describe(&self) -> String {
        format!("{}.{}", self.outer, self.path.join("."))
    }
}

const fn member(outer: &'static str, path: &'static [&'static str]) -> Member {
    Member { outer, path }
}

pub const SK_NET: Member = member("sock", &["__sk_common", "skc_net", "net"]);
pub const NET_INUM: Member = member("net", &["ns", "inum"]);
pub const SK_CGROUP: Member = member("sock", &["sk_cgrp_data", "cgroup"]);
pub const CGROUP_LEVEL: Member = member("cgroup", &["level"]);
pub const CGROUP_ANCESTORS: Member = member("cgroup", &["ancestors"]);
pub const CGROUP_KN: Member = member("cgroup", &["kn"]);
pub const KERNFS_NODE_ID: Member = member("kernfs_node", &["id"]);
/// `sk_flags` is a macro for this.
pub const SK_FLAGS: Member = member("sock", &["__sk_common", "skc_flags"]);
pub const ICSK_RTO: Member = member("inet_connection_sock", &["icsk_rto"]);
pub const ICSK_CA_STATE: Member = member("inet_connection_sock", &["icsk_ca_state"]);
pub const ICSK_RETRANSMITS: Member = member("inet_connection_sock", &["icsk_retransmits"]);
pub const ICSK_PENDING: Member = member("inet_connection_sock", &["icsk_pending"]);
pub const ICSK_BACKOFF: Member = member("inet_connection_sock", &["icsk_backoff"]);
pub const ICSK_TIMER_EXPIRES: Member = member(
    "inet_connection_sock",
    &["icsk_retransmit_timer", "expires"],
);
/// Before 6.14 the timer's expiry had its own member.
pub const ICSK_TIMEOUT: Member = member("inet_connection_sock", &["icsk_timeout"]);
pub const ICSK_SYN_RETRIES: Member = member("inet_connection_sock", &["icsk_syn_retries"]);
pub const SRTT_US: Member = member("tcp_sock", &["srtt_us"]);
pub const MDEV_US: Member = member("tcp_sock", &["mdev_us"]);
pub const SND_CWND: Member = member("tcp_sock", &["snd_cwnd"]);
pub const SND_SSTHRESH: Member = member("tcp_sock", &["snd_ssthresh"]);
pub const TOTAL_RETRANS: Member = member("tcp_sock", &["total_retrans"]);
pub const SKB_CB: Member = member("sk_buff", &["cb"]);
pub const CB_SEQ: Member = member("tcp_skb_cb", &["seq"]);
pub const CB_END_SEQ: Member = member("tcp_skb_cb", &["end_seq"]);
pub const CB_GSO_SEGS: Member = member("tcp_skb_cb", &["tcp_gso_segs"]);
pub const CB_TCP_FLAGS: Member = member("tcp_skb_cb", &["tcp_flags"]);
pub const NET_SYN_RETRIES: Member = member("net", &["ipv4", "sysctl_tcp_syn_retries"]);
pub const NET_SYNACK_RETRIES: Member = member("net", &["ipv4", "sysctl_tcp_synack_retries"]);
pub const NET_RETRIES2: Member = member("net", &["ipv4", "sysctl_tcp_retries2"]);
pub const NET_ORPHAN_RETRIES: Member = member("net", &["ipv4", "sysctl_tcp_orphan_retries"]);
/// Since 6.5; older kernels simply lack it.
pub const NET_SYN_LINEAR_TIMEOUTS: Member =
    member("net", &["ipv4", "sysctl_tcp_syn_linear_timeouts"]);
pub const REQ_NUM_RETRANS: Member = member("request_sock", &["num_retrans"]);
pub const REQ_NUM_TIMEOUT: Member = member("request_sock", &["num_timeout"]);
pub const REQ_TIMEOUT: Member = member("request_sock", &["timeout"]);

pub const SK_ERR: Member = member("sock", &["sk_err"]);
pub const SKC_FAMILY: Member = member("sock_common", &["skc_family"]);
pub const SKC_STATE: Member = member("sock_common", &["skc_state"]);
pub const SKC_ADDRPAIR: Member = member("sock_common", &["skc_addrpair"]);
pub const SKC_PORTPAIR: Member = member("sock_common", &["skc_portpair"]);
pub const SKC_HASH: Member = member("sock_common", &["skc_hash"]);
pub const SKC_NULLS_NODE: Member = member("sock_common", &["skc_nulls_node"]);
pub const SKC_V6_DADDR: Member = member("sock_common", &["skc_v6_daddr"]);
pub const SKC_V6_RCV_SADDR: Member = member("sock_common", &["skc_v6_rcv_saddr"]);
pub const INET_SPORT: Member = member("inet_sock", &["inet_sport"]);
pub const TASK_FILES: Member = member("task_struct", &["files"]);
pub const TASK_STACK: Member = member("task_struct", &["stack"]);
pub const TASK_COMM: Member = member("task_struct", &["comm"]);
pub const TASK_CRED: Member = member("task_struct", &["cred"]);
pub const CRED_UID: Member = member("cred", &["uid"]);
pub const FILES_FDT: Member = member("files_struct", &["fdt"]);
pub const FDTABLE_FD: Member = member("fdtable", &["fd"]);
pub const FILE_PRIVATE_DATA: Member = member("file", &["private_data"]);
pub const SOCKET_SK: Member = member("socket", &["sk"]);
pub const SOCKET_FILE: Member = member("socket", &["file"]);
pub const SK_PROTOCOL: Member = member("sock", &["sk_protocol"]);
pub const SK_SOCKET: Member = member("sock", &["sk_socket"]);
pub const SOCKET_ALLOC_INODE: Member = member("socket_alloc", &["vfs_inode"]);
pub const INODE_INO: Member = member("inode", &["i_ino"]);
pub const TW_SUBSTATE: Member = member("inet_timewait_sock", &["tw_substate"]);
pub const NET_TW_HASHINFO: Member = member("net", &["ipv4", "tcp_death_row", "hashinfo"]);
pub const HASHINFO_EHASH: Member = member("inet_hashinfo", &["ehash"]);
pub const HASHINFO_EHASH_MASK: Member = member("inet_hashinfo", &["ehash_mask"]);

/// Every member the kernel programs use.
pub const MEMBERS: [Member; 61] = [
    SK_NET,
    NET_INUM,
    SK_CGROUP,
    CGROUP_LEVEL,
    CGROUP_ANCESTORS,
    CGROUP_KN,
    KERNFS_NODE_ID,
    SK_FLAGS,
    ICSK_RTO,
    ICSK_CA_STATE,
    ICSK_RETRANSMITS,
    ICSK_PENDING,
    ICSK_TIMER_EXPIRES,
    ICSK_BACKOFF,
    ICSK_SYN_RETRIES,
    SRTT_US,
    MDEV_US,
    SND_CWND,
    SND_SSTHRESH,
    TOTAL_RETRANS,
    SKB_CB,
    CB_SEQ,
    CB_END_SEQ,
    CB_GSO_SEGS,
    CB_TCP_FLAGS,
    NET_SYN_RETRIES,
    NET_SYNACK_RETRIES,
    NET_RETRIES2,
    NET_ORPHAN_RETRIES,
    NET_SYN_LINEAR_TIMEOUTS,
    REQ_NUM_RETRANS,
    REQ_NUM_TIMEOUT,
    REQ_TIMEOUT,
    SK_ERR,
    SKC_FAMILY,
    SKC_STATE,
    SKC_ADDRPAIR,
    SKC_PORTPAIR,
    SKC_HASH,
    SKC_NULLS_NODE,
    SKC_V6_DADDR,
    SKC_V6_RCV_SADDR,
    INET_SPORT,
    TASK_FILES,
    TASK_STACK,
    TASK_COMM,
    TASK_CRED,
    CRED_UID,
    FILES_FDT,
    FDTABLE_FD,
    FILE_PRIVATE_DATA,
    SOCKET_SK,
    SOCKET_FILE,
    SK_PROTOCOL,
    SK_SOCKET,
    SOCKET_ALLOC_INODE,
    INODE_INO,
    TW_SUBSTATE,
    NET_TW_HASHINFO,
    HASHINFO_EHASH,
    HASHINFO_EHASH_MASK,
];

/// `SOCK_DEAD` has been the first `enum sock_flags` value forever; BTF says
/// for sure.
const SOCK_DEAD_DEFAULT: u8 = 0;

/// log2 of a task's kernel stack size (`THREAD_SIZE`): 16 KiB on x86-64 and
/// arm64, doubled by KASAN (whose generic mode adds `task_struct.kasan_depth`).
fn kernel_stack_shift(btf: &Btf) -> u8 {
    const SHIFT: u8 = 14;
    match btf.member_offset("task_struct", &["kasan_depth"]) {
        Some(_) => SHIFT + 1,
        None => SHIFT,
    }
}

/// An aya `Btf` in which `typedef name` has the type id `id`, as in the
/// kernel's BTF, and nothing else has a name: what aya 0.14's
/// `BtfTracePoint::load` looks its target up in. Handing it the kernel's BTF
/// would mean aya parsing all of it (35 ms and 14 MB of heap here) for the
/// one id that `Btf::typedef_id` has found; the ids before it are nameless
/// forward declarations.
pub fn attach_target(name: &str, id: u32) -> Result<aya::Btf, aya::BtfError> {
    const KIND_FWD: u32 = 7;
    let mut writer = Writer::default();
    for _ in 1..id {
        writer.push(&[0, KIND_FWD << 24, 0]);
    }
    let name = writer.string(name);
    writer.push(&[name, KIND_TYPEDEF << 24, 0]);
    aya::Btf::parse(&writer.finish(), aya::Endianness::default())
}

/// Writes a BTF blob: type records (in id order), then their strings.
struct Writer {
    types: Vec<u8>,
    strings: Vec<u8>,
}

impl Default for Writer {
    fn default() -> Self {
        Self {
            types: Vec::new(),
            // Offset 0 is the empty name.
            strings: vec![0],
        }
    }
}

impl Writer {
    /// The offset of `s` in the string section.
    fn string(&mut self, s: &str) -> u32 {
        if s.is_empty() {
            return 0;
        }
        let offset = self.strings.len() as u32;
        self.strings.extend_from_slice(s.as_bytes());
        self.strings.push(0);
        offset
    }

    /// Appends a record's words.
    fn push(&mut self, words: &[u32]) {
        for word in words {
            self.types.extend_from_slice(&word.to_ne_bytes());
        }
    }

    fn finish(self) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER_LEN + self.types.len() + self.strings.len());
        out.extend_from_slice(&MAGIC.to_ne_bytes());
        out.extend_from_slice(&[1, 0]); // version, flags
        let (types, strings) = (self.types.len() as u32, self.strings.len() as u32);
        // Header length, then type and string sections' offsets and lengths.
        for word in [HEADER_LEN as u32, 0, types, types, strings] {
            out.extend_from_slice(&word.to_ne_bytes());
        }
        out.extend_from_slice(&self.types);
        out.extend_from_slice(&self.strings);
        out
    }
}

/// What the kernel programs need from BTF, and what this kernel's BTF lacks.
#[derive(Debug, Clone)]
pub struct Resolved {
    pub sock: SockOffsets,
    pub tcp: TcpOffsets,
    /// Each member with its offset, `None` when missing.
    pub members: Vec<(Member, Option<MemberOffset>)>,
}

impl Resolved {
    /// Nothing known: no BTF.
    pub fn unknown() -> Self {
        Self {
            sock: SockOffsets::UNKNOWN,
            tcp: TcpOffsets::UNKNOWN,
            members: MEMBERS.iter().map(|&m| (m, None)).collect(),
        }
    }

    pub fn missing(&self) -> impl Iterator<Item = &Member> {
        self.members
            .iter()
            .filter(|(_, o)| o.is_none())
            .map(|(m, _)| m)
    }
}

/// Where the kernel side finds a member it reads as a bitfield: a bitfield
/// within one byte, or a whole byte.
fn bitfield(offset: Option<MemberOffset>) -> Bitfield {
    match offset {
        Some(o) if o.bitfield_bits > 0 && o.bits % 8 + o.bitfield_bits <= 8 => Bitfield {
            byte: u16::try_from(o.bits / 8).unwrap_or(ABSENT),
            shift: (o.bits % 8) as u8,
            width: o.bitfield_bits as u8,
        },
        Some(o) if o.bitfield_bits == 0 => Bitfield {
            byte: o
                .bytes()
                .and_then(|b| u16::try_from(b).ok())
                .unwrap_or(ABSENT),
            shift: 0,
            width: 8,
        },
        _ => Bitfield::ABSENT,
    }
}

/// Resolves every member the kernel programs read.
pub fn resolve(btf: &Btf) -> Resolved {
    let offsets = btf.member_offsets(&MEMBERS);
    let mut members: Vec<(Member, Option<MemberOffset>)> =
        MEMBERS.iter().copied().zip(offsets).collect();
    for (member, offset) in &mut members {
        if *member == ICSK_TIMER_EXPIRES && offset.is_none() {
            *member = ICSK_TIMEOUT;
            *offset = btf.member_offset(ICSK_TIMEOUT.outer, ICSK_TIMEOUT.path);
        }
    }
    let members = members;
    let get = |m: Member| members.iter().find(|(x, _)| *x == m).and_then(|(_, o)| *o);
    let byte = |m: Member| {
        get(m)
            .and_then(|o| o.bytes())
            .and_then(|b| u16::try_from(b).ok())
            .unwrap_or(ABSENT)
    };
    let bitfield = |m: Member| bitfield(get(m));
    // Members of the skb's control block, from the start of the skb.
    let in_cb = |m: Member| match (byte(SKB_CB), byte(m)) {
        (ABSENT, _) | (_, ABSENT) => ABSENT,
        (cb, off) => cb + off,
    };
    let sock_dead_bit = btf
        .enum_value("sock_flags", "SOCK_DEAD")
        .and_then(|v| u8::try_from(v).ok())
        .unwrap_or(SOCK_DEAD_DEFAULT);
    let tcp = TcpOffsets {
        sk_flags: byte(SK_FLAGS),
        icsk_rto: byte(ICSK_RTO),
        icsk_ca_state: bitfield(ICSK_CA_STATE),
        icsk_retransmits: byte(ICSK_RETRANSMITS),
        icsk_pending: byte(ICSK_PENDING),
        icsk_timer_expires: match byte(ICSK_TIMER_EXPIRES) {
            ABSENT => byte(ICSK_TIMEOUT),
            found => found,
        },
        icsk_backoff: byte(ICSK_BACKOFF),
        icsk_syn_retries: byte(ICSK_SYN_RETRIES),
        srtt_us: byte(SRTT_US),
        mdev_us: byte(MDEV_US),
        snd_cwnd: byte(SND_CWND),
        snd_ssthresh: byte(SND_SSTHRESH),
        total_retrans: byte(TOTAL_RETRANS),
        skb_seq: in_cb(CB_SEQ),
        skb_end_seq: in_cb(CB_END_SEQ),
        skb_gso_segs: in_cb(CB_GSO_SEGS),
        skb_tcp_flags: in_cb(CB_TCP_FLAGS),
        net_syn_retries: byte(NET_SYN_RETRIES),
        net_synack_retries: byte(NET_SYNACK_RETRIES),
        net_retries2: byte(NET_RETRIES2),
        net_orphan_retries: byte(NET_ORPHAN_RETRIES),
        net_syn_linear_timeouts: byte(NET_SYN_LINEAR_TIMEOUTS),
        req_num_retrans: byte(REQ_NUM_RETRANS),
        req_num_timeout: bitfield(REQ_NUM_TIMEOUT),
        req_timeout: byte(REQ_TIMEOUT),
        sk_err: byte(SK_ERR),
        skc_family: byte(SKC_FAMILY),
        skc_state: byte(SKC_STATE),
        skc_addrpair: byte(SKC_ADDRPAIR),
        skc_portpair: byte(SKC_PORTPAIR),
        skc_hash: byte(SKC_HASH),
        skc_nulls_node: byte(SKC_NULLS_NODE),
        skc_v6_daddr: byte(SKC_V6_DADDR),
        skc_v6_rcv_saddr: byte(SKC_V6_RCV_SADDR),
        inet_sport: byte(INET_SPORT),
        task_files: byte(TASK_FILES),
        task_stack: byte(TASK_STACK),
        task_comm: byte(TASK_COMM),
        task_cred: byte(TASK_CRED),
        cred_uid: byte(CRED_UID),
        files_fdt: byte(FILES_FDT),
        fdtable_fd: byte(FDTABLE_FD),
        file_private_data: byte(FILE_PRIVATE_DATA),
        socket_sk: byte(SOCKET_SK),
        socket_file: byte(SOCKET_FILE),
        sk_protocol: byte(SK_PROTOCOL),
        sk_socket: byte(SK_SOCKET),
        socket_alloc_inode: byte(SOCKET_ALLOC_INODE),
        inode_ino: byte(INODE_INO),
        tw_substate: byte(TW_SUBSTATE),
        net_tw_hashinfo: byte(NET_TW_HASHINFO),
        hashinfo_ehash: byte(HASHINFO_EHASH),
        hashinfo_ehash_mask: byte(HASHINFO_EHASH_MASK),
        sock_dead_bit,
        stack_shift: kernel_stack_shift(btf),
        sk_protocol_bits: match get(SK_PROTOCOL) {
            Some(o) if o.bitfield_bits > 0 => o.bitfield_bits as u8,
            Some(_) => 16,
            None => 0,
        },
        _pad: 0,
    };
    let sock = SockOffsets {
        sk_net: byte(SK_NET),
        net_inum: byte(NET_INUM),
        sk_cgroup: byte(SK_CGROUP),
        cgroup_level: byte(CGROUP_LEVEL),
        cgroup_ancestors: byte(CGROUP_ANCESTORS),
        cgroup_kn: byte(CGROUP_KN),
        kn_id: byte(KERNFS_NODE_ID),
        _pad: 0,
    };
    Resolved { sock, tcp, members }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds a BTF blob of the kinds the tests need.
    #[derive(Default)]
    struct Builder(Writer);

    impl Builder {
        fn new() -> Self {
            Self::default()
        }

        fn string(&mut self, s: &str) -> u32 {
            self.0.string(s)
        }

        fn push(&mut self, words: &[u32]) {
            self.0.push(words);
        }

        fn int(&mut self, name: &str, size: u32) {
            let n = self.string(name);
            self.push(&[n, KIND_INT << 24, size, size * 8]);
        }

        /// `members`: (name, type id, bit offset, bitfield bits).
        fn composite(
            &mut self,
            kind: u32,
            name: &str,
            size: u32,
            members: &[(&str, u32, u32, u32)],
        ) {
            let n = self.string(name);
            let bitfields = members.iter().any(|m| m.3 != 0);
            let info = kind << 24 | members.len() as u32 | u32::from(bitfields) << 31;
            self.push(&[n, info, size]);
            for &(name, ty, bits, width) in members {
                let n = self.string(name);
                let offset = if bitfields { width << 24 | bits } else { bits };
                self.push(&[n, ty, offset]);
            }
        }

        fn typedef(&mut self, name: &str, ty: u32) {
            let n = self.string(name);
            self.push(&[n, KIND_TYPEDEF << 24, ty]);
        }

        fn ptr(&mut self, ty: u32) {
            self.push(&[0, KIND_PTR << 24, ty]);
        }

        fn build(self) -> Vec<u8> {
            self.0.finish()
        }
    }

    #[test]
    fn attach_target_names_the_typedef_at_the_kernel_s_id() {
        let target = attach_target("btf_trace_inet_sock_set_state", 38_203).expect("parses");
        assert_eq!(
            target
                .id_by_type_name_kind(
                    "btf_trace_inet_sock_set_state",
                    aya_obj::btf::BtfKind::Typedef
                )
                .expect("found"),
            38_203
        );
        assert!(
            target
                .id_by_type_name_kind("btf_trace_tcp_probe", aya_obj::btf::BtfKind::Typedef)
                .is_err()
        );
    }

    /// A miniature of the kernel's layout: anonymous unions, a typedef'd
    /// struct, a pointer to another struct and a bitfield.
    fn sample() -> Btf {
        let mut b = Builder::new();
        b.int("unsigned int", 4); // 1
        b.composite(
            KIND_STRUCT,
            "ns_common",
            16,
            &[("stashed", 1, 0, 0), ("inum", 1, 64, 0)],
        ); // 2
        b.composite(
            KIND_STRUCT,
            "net",
            64,
            &[("passive", 1, 0, 0), ("ns", 2, 128, 0)],
        ); // 3
        b.ptr(3); // 4
        b.composite(KIND_STRUCT, "", 8, &[("net", 4, 0, 0)]); // 5
        b.typedef("possible_net_t", 5); // 6
        b.composite(
            KIND_UNION,
            "",
            8,
            &[("skc_addrpair", 1, 0, 0), ("skc_daddr", 1, 0, 0)],
        ); // 7
        b.composite(
            KIND_STRUCT,
            "sock_common",
            64,
            &[("", 7, 0, 0), ("skc_net", 6, 384, 0)],
        ); // 8
        b.composite(KIND_STRUCT, "sock", 256, &[("__sk_common", 8, 0, 0)]); // 9
        b.composite(
            KIND_STRUCT,
            "inet_connection_sock",
            512,
            &[
                ("icsk_inet", 9, 0, 0),
                ("icsk_ca_state", 1, 1026, 5),
                ("icsk_straddle", 1, 1037, 5),
            ],
        ); // 10
        Btf::parse(b.build()).unwrap()
    }

    #[test]
    fn resolves_paths_through_typedefs_and_anonymous_members() {
        let btf = sample();
        assert_eq!(
            btf.member_offset("sock", SK_NET.path).unwrap().bytes(),
            Some(48)
        );
        assert_eq!(
            btf.member_offset("net", NET_INUM.path).unwrap().bytes(),
            Some(24)
        );
        assert_eq!(
            btf.member_offset("sock_common", &["skc_daddr"])
                .unwrap()
                .bytes(),
            Some(0)
        );
        let resolved = resolve(&btf);
        assert_eq!(
            resolved.sock,
            SockOffsets {
                sk_net: 48,
                net_inum: 24,
                ..SockOffsets::UNKNOWN
            }
        );
        let ca_state = resolved.tcp.icsk_ca_state;
        assert_eq!((ca_state.byte, ca_state.shift, ca_state.width), (128, 2, 5));
        assert!(
            resolved.missing().any(|m| *m == ICSK_RTO),
            "the sample has no icsk_rto"
        );
        assert_eq!(resolved.tcp.icsk_rto, ABSENT);
    }

    #[test]
    fn reports_bitfields() {
        let offset = sample()
            .member_offset("inet_connection_sock", &["icsk_ca_state"])
            .unwrap();
        assert_eq!(
            offset,
            MemberOffset {
                bits: 1026,
                bitfield_bits: 5
            }
        );
        assert_eq!(offset.bytes(), None);
    }

    #[test]
    fn bitfields_spanning_two_bytes_are_not_read() {
        let straddle = sample().member_offset("inet_connection_sock", &["icsk_straddle"]);
        assert_eq!(
            straddle,
            Some(MemberOffset {
                bits: 1037,
                bitfield_bits: 5
            })
        );
        assert_eq!(bitfield(straddle), Bitfield::ABSENT);
        let byte = bitfield(Some(MemberOffset {
            bits: 16,
            bitfield_bits: 0,
        }));
        assert_eq!((byte.byte, byte.shift, byte.width), (2, 0, 8));
    }

    #[test]
    fn sk_protocol_is_read_as_wide_as_the_kernel_has_it() {
        // A `u16` since 5.6; an 8-bit bitfield beside `sk_type` before.
        for (bit, bitfield_bits, byte, bits) in [(4128, 0, 516, 16), (4136, 8, 517, 8)] {
            let mut b = Builder::new();
            b.int("unsigned short", 2); // 1
            b.composite(
                KIND_STRUCT,
                "sock",
                1024,
                &[("sk_protocol", 1, bit, bitfield_bits)],
            ); // 2
            let tcp = resolve(&Btf::parse(b.build()).unwrap()).tcp;
            assert_eq!((tcp.sk_protocol, tcp.sk_protocol_bits), (byte, bits));
        }
        let tcp = resolve(&sample()).tcp;
        assert_eq!((tcp.sk_protocol, tcp.sk_protocol_bits), (ABSENT, 0));
    }

    #[test]
    fn reads_enum_values() {
        let mut b = Builder::new();
        let name = b.string("sock_flags");
        let dead = b.string("SOCK_DEAD");
        let done = b.string("SOCK_DONE");
        b.push(&[name, KIND_ENUM << 24 | 2, 4, dead, 0, done, 1]);
        let btf = Btf::parse(b.build()).unwrap();
        assert_eq!(btf.enum_value("sock_flags", "SOCK_DONE"), Some(1));
        assert_eq!(btf.enum_value("sock_flags", "SOCK_NOPE"), None);
    }

    #[test]
    fn missing_members_are_reported_not_guessed() {
        let btf = sample();
        assert!(btf.member_offset("sock", &["no_such_member"]).is_none());
        assert!(btf.member_offset("no_such_struct", &["x"]).is_none());
    }

    #[test]
    fn rejects_garbage_and_truncation() {
        assert!(Btf::parse(vec![0; 64]).is_err());
        let mut blob = Builder::new();
        blob.int("int", 4);
        let mut data = blob.build();
        data.truncate(HEADER_LEN + 6);
        assert!(Btf::parse(data).is_err());
    }

    #[test]
    fn running_kernel_btf_resolves_every_member() {
        let started = std::time::Instant::now();
        let btf =
            Btf::from_file(Path::new(VMLINUX)).expect("this test needs the running kernel's BTF");
        let resolved = resolve(&btf);
        let took = started.elapsed();
        let missing: Vec<_> = resolved.missing().collect();
        assert!(missing.is_empty(), "unresolved: {missing:?}");
        assert!(resolved.sock.has_netns());
        assert_eq!(resolved.tcp.sock_dead_bit, 0);
        assert!(resolved.tcp.icsk_ca_state.width >= 5);
        assert_eq!(resolved.tcp.sk_protocol_bits, 16);
        eprintln!("read + resolve vmlinux BTF: {took:?}");
    }
}
