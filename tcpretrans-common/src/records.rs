//! The tracepoint record fields the programs read, as data. One table (the
//! `records!` invocation in this crate's root) declares each field once: its
//! offset field, named as the tracepoint's `format` file names it, the size
//! the programs read, and whether older kernels may lack it. From the table
//! come the offset structs handed to the kernel side, their `ABSENT` values,
//! and the one parser userspace runs on every `format` file
//! ([`RecordLayout::from_offsets`]), which checks each field's size.
use crate::hooks::Layout;

/// A field the programs read from a tracepoint record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecordField {
    /// As the tracepoint's `format` file names it.
    pub name: &'static str,
    /// Its size in bytes, as the programs read it.
    pub size: u32,
    /// Whether the programs do without it (`ABSENT`) where the kernel lacks it.
    pub optional: bool,
}

/// The offsets of a record's fields, as the programs are handed them.
pub trait RecordLayout: Sized {
    /// The layout from the offset `offset` finds for each field in turn:
    /// `ABSENT` for an optional field the kernel lacks.
    fn from_offsets<E>(offset: &mut impl FnMut(RecordField) -> Result<u16, E>) -> Result<Self, E>;
}

impl Layout {
    /// Whether a record has this layout, each field found by `offset`.
    pub fn check<E>(self, offset: &mut impl FnMut(RecordField) -> Result<u16, E>) -> Result<(), E> {
        match self {
            Self::Retransmit => crate::RetransmitFields::from_offsets(offset).map(drop),
            Self::Synack => crate::SynackFields::from_offsets(offset).map(drop),
            Self::State => crate::StateFields::from_offsets(offset).map(drop),
            Self::Reset => crate::ResetRecordFields::from_offsets(offset).map(drop),
            Self::ConnectEnter => crate::ConnectEnterFields::from_offsets(offset).map(drop),
            Self::SyscallExit => crate::SyscallExitFields::from_offsets(offset).map(drop),
        }
    }
}

/// Record layouts: a struct per record, a line per field. A field is
/// `required(SIZE)` or `optional(SIZE)` (named as in the record), `nested`
/// (another layout of the table, inlined) or `padding`.
#[macro_export]
macro_rules! records {
    ($(
        $(#[$struct_meta:meta])*
        pub struct $name:ident {
            $(
                $(#[$field_meta:meta])*
                $field:ident : $ty:ty = $kind:ident $(($size:literal))?
            ),* $(,)?
        }
    )*) => {$(
        $(#[$struct_meta])*
        #[repr(C)]
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub struct $name {
            $($(#[$field_meta])* pub $field: $ty,)*
        }

        impl $name {
            /// Every field absent: until userspace configures the programs,
            /// every event is dropped at its first field read.
            pub const ABSENT: Self = Self {
                $($field: $crate::record_absent!($kind, $ty),)*
            };
        }

        impl $crate::records::RecordLayout for $name {
            fn from_offsets<E>(
                offset: &mut impl FnMut($crate::records::RecordField) -> Result<u16, E>,
            ) -> Result<Self, E> {
                Ok(Self {
                    $($field: $crate::record_offset!(
                        $kind $(($size))?, $field, $ty, offset
                    ),)*
                })
            }
        }
    )*};
}

/// A table field's `ABSENT` value.
#[doc(hidden)]
#[macro_export]
macro_rules! record_absent {
    (nested, $ty:ty) => {
        <$ty>::ABSENT
    };
    (padding, $ty:ty) => {
        0
    };
    ($kind:ident, $ty:ty) => {
        $crate::ABSENT
    };
}

/// A table field's offset, from the parser's `offset`.
#[doc(hidden)]
#[macro_export]
macro_rules! record_offset {
    (required($size:literal), $field:ident, $ty:ty, $offset:ident) => {
        $offset($crate::records::RecordField {
            name: stringify!($field),
            size: $size,
            optional: false,
        })?
    };
    (optional($size:literal), $field:ident, $ty:ty, $offset:ident) => {
        $offset($crate::records::RecordField {
            name: stringify!($field),
            size: $size,
            optional: true,
        })?
    };
    (nested, $field:ident, $ty:ty, $offset:ident) => {
        <$ty as $crate::records::RecordLayout>::from_offsets($offset)?
    };
    (padding, $field:ident, $ty:ty, $offset:ident) => {
        0
    };
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ABSENT, RetransmitFields};

    #[test]
    fn fields_are_asked_for_in_table_order_nested_inlined() {
        let mut asked = [None; 16];
        let mut count = 0;
        let layout = RetransmitFields::from_offsets(&mut |field: RecordField| {
            asked[count] = Some((field.name, field.size, field.optional));
            count += 1;
            Ok::<_, ()>(if field.optional { ABSENT } else { count as u16 })
        })
        .expect("every field given");
        assert_eq!(
            asked[..count],
            [
                Some(("skaddr", 8, false)),
                Some(("sport", 2, false)),
                Some(("dport", 2, false)),
                Some(("family", 2, true)),
                Some(("saddr_v6", 16, false)),
                Some(("daddr_v6", 16, false)),
                Some(("skbaddr", 8, false)),
                Some(("state", 4, true)),
                Some(("err", 4, true)),
            ]
        );
        assert_eq!((layout.flow.skaddr, layout.flow.family), (1, ABSENT));
        assert_eq!((layout.skbaddr, layout.err, layout._pad), (7, ABSENT, 0));
    }

    #[test]
    fn the_first_error_stops_the_layout() {
        let mut asked = 0;
        let refused = Layout::State.check(&mut |field: RecordField| {
            asked += 1;
            if field.name == "dport" {
                Err(field.name)
            } else {
                Ok(0)
            }
        });
        assert_eq!((refused, asked), (Err("dport"), 3));
    }
}
