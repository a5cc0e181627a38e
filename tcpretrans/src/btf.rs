//! Struct member offsets from the running kernel's BTF.
//!
//! The kernel programs read socket fields with `bpf_probe_read_kernel` at
//! offsets resolved here: aya's Rust programs cannot carry CO-RE relocations,
//! and offsets from generated bindings are wrong on other kernels. This reader
//! does only what that needs — one pass to index the types, then lookups of
//! member paths — so it adds little to start-up on a 5.5 MB vmlinux BTF.
use std::{ffi::c_void, fs, io, num::NonZeroUsize, ops::Deref, path::Path, ptr::NonNull};

use nix::sys::mman::{MapFlags, ProtFlags, mmap, munmap};

use tcpretrans_common::{
    SockOffsets, TcpOffsets,
    members::{Found, Member, Misfit, Path as MemberPath},
};
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
pub(crate) const KIND_TYPEDEF: u32 = 8;
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
    fn find_member(&self, outer: &TypeHeader, name: &str, depth: u32) -> Option<(u32, Found)> {
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
                Found {
                    bits: raw & 0xff_ffff,
                    bitfield_bits: raw >> 24,
                    size: 0,
                }
            } else {
                Found {
                    bits: raw,
                    bitfield_bits: 0,
                    size: 0,
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
                    Found {
                        bits,
                        ..inner_offset
                    },
                ));
            }
        }
        None
    }

    /// Where `path` (member names, each inside the previous one's type) is
    /// from the start of `struct outer`, with the size of its type.
    pub fn member_offset(&self, outer: &str, path: &[&str]) -> Option<Found> {
        self.member_offset_in(self.find_types(KIND_STRUCT, &[outer])[0]?, path)
    }

    fn member_offset_in(&self, outer_id: u32, path: &[&str]) -> Option<Found> {
        let mut current = self.header(outer_id)?;
        let mut total = Found {
            bits: 0,
            bitfield_bits: 0,
            size: 0,
        };
        for (i, name) in path.iter().enumerate() {
            let (type_id, offset) = self.find_member(&current, name, 0)?;
            total = Found {
                bits: total.bits + offset.bits,
                bitfield_bits: offset.bitfield_bits,
                size: 0,
            };
            if i + 1 < path.len() {
                current = self.resolve(type_id)?;
            } else {
                total.size = self.size_of(type_id)?;
            }
        }
        Some(total)
    }

    /// Bytes of type `id`; an array's elements together, a flexible
    /// array's one element (what an index reads).
    fn size_of(&self, id: u32) -> Option<u32> {
        let h = self.resolve(id)?;
        match h.kind {
            KIND_INT | KIND_STRUCT | KIND_UNION | KIND_ENUM | KIND_ENUM64 => Some(h.size_or_type),
            KIND_PTR => Some(8),
            KIND_ARRAY => {
                let element = self.size_of(self.u32_at(h.body)?)?;
                Some(element * self.u32_at(h.body + 8)?.max(1))
            }
            _ => None,
        }
    }

    /// Where each of `paths` is, finding their outer structs in one pass.
    pub fn member_offsets(&self, paths: &[MemberPath]) -> Vec<Option<Found>> {
        let mut outers: Vec<&str> = paths.iter().map(|p| p.outer).collect();
        outers.sort_unstable();
        outers.dedup();
        let ids = self.find_types(KIND_STRUCT, &outers);
        paths
            .iter()
            .map(|p| {
                let id = ids[outers.binary_search(&p.outer).ok()?]?;
                self.member_offset_in(id, p.members)
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

/// Writes a BTF blob: type records (in id order), then their strings.
pub(crate) struct Writer {
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
    pub(crate) fn string(&mut self, s: &str) -> u32 {
        if s.is_empty() {
            return 0;
        }
        let offset = self.strings.len() as u32;
        self.strings.extend_from_slice(s.as_bytes());
        self.strings.push(0);
        offset
    }

    /// Appends a record's words.
    pub(crate) fn push(&mut self, words: &[u32]) {
        for word in words {
            self.types.extend_from_slice(&word.to_ne_bytes());
        }
    }

    pub(crate) fn finish(self) -> Vec<u8> {
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

/// Where a member of the table is in this kernel, or why it cannot be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Place {
    /// At `found`, by way of `path` (the member's own, or its fallback).
    Found {
        path: MemberPath,
        found: Found,
    },
    Missing,
    Misfit(Misfit),
}

/// What the kernel programs need from BTF, and what this kernel's BTF lacks.
#[derive(Debug, Clone)]
pub struct Resolved {
    pub sock: SockOffsets,
    pub tcp: TcpOffsets,
    /// Every member of the table with its place.
    pub members: Vec<(Member, Place)>,
}

impl Resolved {
    /// Nothing known: no BTF.
    pub fn unknown() -> Self {
        Self {
            sock: SockOffsets::UNKNOWN,
            tcp: TcpOffsets::UNKNOWN,
            members: table().map(|m| (m, Place::Missing)).collect(),
        }
    }

    /// The members that cannot be read here, and why.
    pub fn unavailable(&self) -> impl Iterator<Item = String> + '_ {
        self.members
            .iter()
            .filter_map(|(member, place)| match place {
                Place::Found { .. } => None,
                Place::Missing => Some(member.path.to_string()),
                Place::Misfit(misfit) => Some(format!("{} ({misfit})", member.path)),
            })
    }
}

/// Every member the kernel programs read.
fn table() -> impl Iterator<Item = Member> {
    TcpOffsets::MEMBERS.into_iter().chain(SockOffsets::MEMBERS)
}

/// Resolves every member the kernel programs read.
pub fn resolve(btf: &Btf) -> Resolved {
    let members: Vec<Member> = table().collect();
    // Every path any member may need, looked up in one pass.
    let paths: Vec<MemberPath> = members
        .iter()
        .flat_map(|m| [Some(m.path), m.fallback, m.within])
        .flatten()
        .collect();
    let offsets = btf.member_offsets(&paths);
    let at = |path: MemberPath| {
        paths
            .iter()
            .position(|p| *p == path)
            .and_then(|i| offsets[i])
    };
    let place = |m: &Member| -> Place {
        let Some((path, found)) = at(m.path)
            .map(|f| (m.path, f))
            .or_else(|| m.fallback.and_then(|p| at(p).map(|f| (p, f))))
        else {
            return Place::Missing;
        };
        let found = match m.within {
            None => found,
            Some(within) => match at(within) {
                Some(base) => Found {
                    bits: base.bits + found.bits,
                    ..found
                },
                None => return Place::Missing,
            },
        };
        match m.fits(&found) {
            Ok(()) => Place::Found { path, found },
            Err(misfit) => Place::Misfit(misfit),
        }
    };
    let members: Vec<(Member, Place)> = members.iter().map(|m| (*m, place(m))).collect();
    let find = |m: &Member| {
        members
            .iter()
            .find(|(x, _)| x == m)
            .and_then(|(_, place)| match place {
                Place::Found { found, .. } => Some(*found),
                _ => None,
            })
    };
    let mut tcp = TcpOffsets::resolve(find);
    tcp.sock_dead_bit = btf
        .enum_value("sock_flags", "SOCK_DEAD")
        .and_then(|v| u8::try_from(v).ok())
        .unwrap_or(SOCK_DEAD_DEFAULT);
    tcp.stack_shift = kernel_stack_shift(btf);
    let sock = SockOffsets::resolve(find);
    Resolved { sock, tcp, members }
}

#[cfg(test)]
mod tests {
    use tcpretrans_common::Offset;

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
        let bytes = |outer, path: &[&str]| btf.member_offset(outer, path).map(|f| f.bits / 8);
        assert_eq!(bytes("sock", &["__sk_common", "skc_net", "net"]), Some(48));
        assert_eq!(bytes("net", &["ns", "inum"]), Some(24));
        assert_eq!(bytes("sock_common", &["skc_daddr"]), Some(0));
        let resolved = resolve(&btf);
        assert_eq!(
            resolved.sock,
            SockOffsets {
                sk_net: Offset::at(48),
                net_inum: Offset::at(24),
                ..SockOffsets::UNKNOWN
            }
        );
        let ca_state = resolved.tcp.icsk_ca_state;
        assert_eq!((ca_state.byte, ca_state.shift, ca_state.width), (128, 2, 5));
        assert!(
            resolved
                .unavailable()
                .any(|m| m == "inet_connection_sock.icsk_rto"),
            "the sample has no icsk_rto"
        );
        assert_eq!(resolved.tcp.icsk_rto, Offset::ABSENT);
    }

    #[test]
    fn reports_bitfields_and_sizes() {
        let btf = sample();
        assert_eq!(
            btf.member_offset("inet_connection_sock", &["icsk_ca_state"]),
            Some(Found {
                bits: 1026,
                bitfield_bits: 5,
                size: 4
            })
        );
        assert_eq!(
            btf.member_offset("sock", &["__sk_common", "skc_net"])
                .map(|f| f.size),
            Some(8)
        );
    }

    /// A kernel whose `icsk_rto` is narrower than the programs read, whose
    /// timer expiry has its pre-6.14 name, and whose skb control block
    /// holds the TCP one.
    fn kernel_of_other_shapes() -> Btf {
        let mut b = Builder::new();
        b.int("unsigned short", 2); // 1
        b.int("unsigned long", 8); // 2
        b.int("unsigned int", 4); // 3
        b.composite(
            KIND_STRUCT,
            "inet_connection_sock",
            512,
            &[("icsk_rto", 1, 64, 0), ("icsk_timeout", 2, 128, 0)],
        ); // 4
        b.int("char", 1); // 5
        let index = b.string("int");
        b.push(&[index, KIND_INT << 24, 4, 32]); // 6
        b.push(&[0, KIND_ARRAY << 24, 0, 5, 6, 48]); // 7: char[48]
        b.composite(KIND_STRUCT, "sk_buff", 232, &[("cb", 7, 320, 0)]); // 8
        b.composite(
            KIND_STRUCT,
            "tcp_skb_cb",
            48,
            &[("seq", 3, 0, 0), ("end_seq", 3, 32, 0)],
        ); // 9
        Btf::parse(b.build()).unwrap()
    }

    #[test]
    fn narrower_members_are_refused_and_fallbacks_and_containers_followed() {
        let resolved = resolve(&kernel_of_other_shapes());
        assert_eq!(resolved.tcp.icsk_rto, Offset::ABSENT);
        assert!(
            resolved
                .unavailable()
                .any(|m| m == "inet_connection_sock.icsk_rto (2 bytes here, the programs read 4)"),
            "{:?}",
            resolved.unavailable().collect::<Vec<_>>()
        );
        assert_eq!(resolved.tcp.icsk_timer_expires, Offset::at(16));
        assert_eq!(
            (resolved.tcp.skb_seq, resolved.tcp.skb_end_seq),
            (Offset::at(40), Offset::at(44))
        );
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
        let unavailable: Vec<_> = resolved.unavailable().collect();
        assert!(unavailable.is_empty(), "unresolved: {unavailable:?}");
        assert!(resolved.sock.has_netns());
        assert_eq!(resolved.tcp.sock_dead_bit, 0);
        assert!(resolved.tcp.icsk_ca_state.width >= 5);
        eprintln!("read + resolve vmlinux BTF: {took:?}");
    }
}
