//! Writing an event into its reserved ring-buffer slot. A slot is not
//! zeroed: a field left unwritten would ship an earlier event's bytes. So
//! `fill!` names every field of the record once, and a field added to a
//! record fails the build until it is written.

/// Writes every field of the record `$event` points at (a reserved slot),
/// in the order given: `field = value` stores a value, `field => writer`
/// hands the field's address to `writer` (word-wise copies, volatile
/// zeroes). Used inside an `unsafe` block.
macro_rules! fill {
    ($event:ident: $record:ident { $($field:ident $how:tt $value:expr),+ $(,)? }) => {{
        // Never called: a struct pattern without `..` must name every field.
        let _every_field_is_written = |record: $record| {
            let $record { $($field: _),+ } = record;
        };
        $( $crate::event::fill!(@field $event, $field $how $value); )+
    }};
    (@field $event:ident, $field:ident = $value:expr) => {
        (&raw mut (*$event).$field).write($value)
    };
    (@field $event:ident, $field:ident => $writer:expr) => {
        $writer(&raw mut (*$event).$field)
    };
}
pub(crate) use fill;

/// An event's timestamp: `CLOCK_MONOTONIC` in nanoseconds.
#[inline(always)]
pub fn now() -> u64 {
    // SAFETY: helper without preconditions.
    unsafe { aya_ebpf::helpers::bpf_ktime_get_ns() }
}

/// For `fill!`: a zero stored volatile. Neighbouring plain zero stores are
/// merged by LLVM into an out-of-line byte-wise `memset`.
///
/// # Safety
///
/// `at` points at a field of a reserved slot.
#[inline(always)]
pub unsafe fn zero<T: Default>(at: *mut T) {
    // SAFETY: per the contract.
    unsafe { at.write_volatile(T::default()) }
}
