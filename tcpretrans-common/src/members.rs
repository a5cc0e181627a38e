//! The kernel struct members the programs read, as data. One table (the
//! `offsets!` invocations in this crate's root) declares each member once:
//! its field in the offset struct handed to the kernel side, its kernel
//! path (and where older kernels keep it), and the type the programs read it
//! as. From the table come the offset structs, their `UNKNOWN` values, the
//! member list userspace resolves against BTF and `--check` shows, and the
//! width check: the kernel side reads an `Offset<T>` only as a `T`, and
//! userspace refuses a member narrower than that.
use core::{fmt, marker::PhantomData, mem::size_of};

use crate::{ABSENT, Bitfield};

/// The byte offset of a member the kernel side reads as a `T`, or `ABSENT`.
#[repr(transparent)]
pub struct Offset<T> {
    byte: u16,
    read_as: PhantomData<T>,
}

impl<T> Offset<T> {
    pub const ABSENT: Self = Self::at(ABSENT);

    pub const fn at(byte: u16) -> Self {
        Self {
            byte,
            read_as: PhantomData,
        }
    }

    pub const fn byte(self) -> u16 {
        self.byte
    }

    pub const fn is_known(self) -> bool {
        self.byte != ABSENT
    }

    /// The `U` at byte `at` of the member: a deliberate read of part of it
    /// (one port of a port pair), checked at build time to stay inside.
    pub const fn part<U>(self, at: u16) -> Offset<U> {
        const { assert!(size_of::<U>() <= size_of::<T>()) };
        assert!(at as usize + size_of::<U>() <= size_of::<T>());
        if self.byte == ABSENT {
            Offset::ABSENT
        } else {
            Offset::at(self.byte + at)
        }
    }
}

// Derives would ask `T` for the same traits; an offset is a `u16` whatever
// it points at.
impl<T> Clone for Offset<T> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<T> Copy for Offset<T> {}

impl<T> PartialEq for Offset<T> {
    fn eq(&self, other: &Self) -> bool {
        self.byte == other.byte
    }
}

impl<T> Eq for Offset<T> {}

impl<T> fmt::Debug for Offset<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.byte {
            ABSENT => f.write_str("ABSENT"),
            byte => write!(f, "{byte}"),
        }
    }
}

/// How the kernel side reads a member.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Read {
    /// `n` bytes from its start (0: only its position is used).
    Bytes(u8),
    /// A bitfield within one byte, or a whole byte.
    Bits,
}

/// Where a member was found in the running kernel: from the start of the
/// outermost struct, and the size of its type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Found {
    pub bits: u32,
    /// A bitfield's width; 0 for ordinary members.
    pub bitfield_bits: u32,
    /// Bytes; an array's elements together (a flexible array counts as one).
    pub size: u32,
}

/// Why a member that exists cannot be read the way the programs read it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Misfit {
    /// The programs read `read` bytes; the kernel's member has `size`.
    Narrower { size: u32, read: u8 },
    /// A bitfield where the programs read whole bytes.
    Bitfield,
    /// A bitfield that spans bytes.
    SpansBytes,
    /// Beyond what an offset can hold.
    TooFar,
}

impl fmt::Display for Misfit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Narrower { size, read } => {
                write!(f, "{size} bytes here, the programs read {read}")
            }
            Self::Bitfield => f.write_str("a bitfield here, the programs read whole bytes"),
            Self::SpansBytes => f.write_str("a bitfield across bytes here"),
            Self::TooFar => f.write_str("too far into its struct"),
        }
    }
}

/// A kernel member path: `sock` → `__sk_common.skc_flags`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Path {
    pub outer: &'static str,
    pub members: &'static [&'static str],
}

impl fmt::Display for Path {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.outer)?;
        for member in self.members {
            write!(f, ".{member}")?;
        }
        Ok(())
    }
}

/// One row of the table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Member {
    /// The offset struct's field.
    pub field: &'static str,
    pub path: Path,
    /// Where kernels without `path` keep it.
    pub fallback: Option<Path>,
    /// For a member of a struct kept inside another's member (`tcp_skb_cb`
    /// in `sk_buff.cb`): that member; the offset is from the outer start.
    pub within: Option<Path>,
    pub read: Read,
}

impl Member {
    /// Whether the member found can be read as the programs read it.
    pub fn fits(&self, found: &Found) -> Result<(), Misfit> {
        if found.bits / 8 >= u32::from(ABSENT) {
            return Err(Misfit::TooFar);
        }
        match self.read {
            Read::Bytes(_) if found.bitfield_bits > 0 || !found.bits.is_multiple_of(8) => {
                Err(Misfit::Bitfield)
            }
            // Little-endian: a wider integer's low bytes come first.
            Read::Bytes(read) if found.size < u32::from(read) => Err(Misfit::Narrower {
                size: found.size,
                read,
            }),
            Read::Bits if found.bits % 8 + found.bitfield_bits > 8 => Err(Misfit::SpansBytes),
            _ => Ok(()),
        }
    }
}

/// A field of an offset struct that the table fills.
pub trait Slot: Copy {
    const ABSENT: Self;
    const READ: Read;
    /// The slot for a member found where it fits.
    fn found(found: &Found) -> Self;
}

impl<T> Slot for Offset<T> {
    const ABSENT: Self = Self::ABSENT;
    const READ: Read = Read::Bytes(size_of::<T>() as u8);

    fn found(found: &Found) -> Self {
        Self::at((found.bits / 8) as u16)
    }
}

impl Slot for Bitfield {
    const ABSENT: Self = Self::ABSENT;
    const READ: Read = Read::Bits;

    fn found(found: &Found) -> Self {
        Self {
            byte: (found.bits / 8) as u16,
            shift: (found.bits % 8) as u8,
            width: match found.bitfield_bits {
                0 => 8,
                bits => bits as u8,
            },
        }
    }
}

/// The slot of `member` (the table's next row) where `find` found it and
/// it fits; absent otherwise.
pub fn resolve_slot<S: Slot>(
    member: Option<&Member>,
    find: &mut impl FnMut(&Member) -> Option<Found>,
) -> S {
    member
        .and_then(|m| find(m).filter(|found| m.fits(found).is_ok()))
        .map_or(S::ABSENT, |found| S::found(&found))
}

/// `sock.__sk_common.skc_net` as a `Path`.
#[doc(hidden)]
#[macro_export]
macro_rules! member_path {
    ($outer:ident $(. $member:ident)+) => {
        $crate::members::Path {
            outer: stringify!($outer),
            members: &[$(stringify!($member)),+],
        }
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! optional_member_path {
    () => {
        None
    };
    ($($path:tt)+) => {
        Some($crate::member_path!($($path)+))
    };
}

/// An offset struct from its table: each line `field: Slot = kernel.path`,
/// optionally `| older.path` (where older kernels keep it) and
/// `@ within.path` (the member that holds the member's struct); then the
/// fields userspace derives otherwise.
#[macro_export]
macro_rules! offsets {
    (
        $(#[$meta:meta])*
        pub struct $name:ident {
            $(
                $(#[$field_meta:meta])*
                $field:ident: $slot:ty = $outer:ident $(. $member:ident)+
                    $(| $fouter:ident $(. $fmember:ident)+)?
                    $(@ $wouter:ident $(. $wmember:ident)+)?
            ),* $(,)?
        }
        derived {
            $( $(#[$dmeta:meta])* $dfield:ident: $dty:ty ),* $(,)?
        }
    ) => {
        $(#[$meta])*
        #[repr(C)]
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub struct $name {
            $( $(#[$field_meta])* pub $field: $slot, )*
            $( $(#[$dmeta])* pub $dfield: $dty, )*
        }

        impl $name {
            pub const UNKNOWN: Self = Self {
                $( $field: <$slot as $crate::members::Slot>::ABSENT, )*
                $( $dfield: 0, )*
            };

            /// The table: every member, in field order.
            pub const MEMBERS: [$crate::members::Member; 0 $(+ { let _ = stringify!($field); 1 })*] = [
                $(
                    $crate::members::Member {
                        field: stringify!($field),
                        path: $crate::member_path!($outer $(. $member)+),
                        fallback: $crate::optional_member_path!($($fouter $(. $fmember)+)?),
                        within: $crate::optional_member_path!($($wouter $(. $wmember)+)?),
                        read: <$slot as $crate::members::Slot>::READ,
                    },
                )*
            ];

            /// Every member where `find` found it and it fits; absent
            /// otherwise. The derived fields are 0.
            pub fn resolve(
                mut find: impl FnMut(&$crate::members::Member) -> Option<$crate::members::Found>,
            ) -> Self {
                let mut members = Self::MEMBERS.iter();
                Self {
                    $( $field: $crate::members::resolve_slot(members.next(), &mut find), )*
                    $( $dfield: 0, )*
                }
            }
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    const BYTES4: Member = Member {
        field: "x",
        path: member_path!(a.b),
        fallback: None,
        within: None,
        read: Read::Bytes(4),
    };

    fn found(bits: u32, bitfield_bits: u32, size: u32) -> Found {
        Found {
            bits,
            bitfield_bits,
            size,
        }
    }

    #[test]
    fn a_member_fits_when_at_least_as_wide_as_its_read() {
        assert_eq!(BYTES4.fits(&found(64, 0, 4)), Ok(()));
        assert_eq!(BYTES4.fits(&found(64, 0, 8)), Ok(()));
        assert_eq!(
            BYTES4.fits(&found(64, 0, 2)),
            Err(Misfit::Narrower { size: 2, read: 4 })
        );
        assert_eq!(BYTES4.fits(&found(65, 3, 1)), Err(Misfit::Bitfield));
        assert_eq!(BYTES4.fits(&found(8 << 16, 0, 4)), Err(Misfit::TooFar));
    }

    #[test]
    fn bitfields_fit_within_one_byte() {
        let bits = Member {
            read: Read::Bits,
            ..BYTES4
        };
        assert_eq!(bits.fits(&found(8 * 9 + 2, 5, 1)), Ok(()));
        assert_eq!(bits.fits(&found(8 * 9, 0, 1)), Ok(()));
        assert_eq!(bits.fits(&found(8 * 9 + 6, 5, 1)), Err(Misfit::SpansBytes));
        let slot = Bitfield::found(&found(8 * 9 + 2, 5, 1));
        assert_eq!((slot.byte, slot.shift, slot.width), (9, 2, 5));
    }

    #[test]
    fn parts_stay_inside_their_member() {
        let pair = Offset::<u32>::at(12);
        assert_eq!(pair.part::<u16>(2).byte(), 14);
        assert_eq!(Offset::<u32>::ABSENT.part::<u16>(2), Offset::ABSENT);
    }

    #[test]
    fn paths_print_as_the_kernel_spells_them() {
        extern crate std;
        use std::string::ToString as _;
        assert_eq!(
            member_path!(sock.__sk_common.skc_flags).to_string(),
            "sock.__sk_common.skc_flags"
        );
    }
}
