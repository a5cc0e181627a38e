//! aya joins the two sides by name: userspace finds programs, maps and
//! globals by the names in tcpretrans-common. `named!` beside each item
//! checks at build time that the item exists and has that name.

/// `named!(NAME, item)`: `item` exists and is called `NAME`.
macro_rules! named {
    ($name:expr, $item:ident) => {
        const _: () = assert!(
            tcpretrans_common::hooks::same($name, stringify!($item)),
            concat!(stringify!($item), " is not named as userspace asks for it")
        );
        const _: fn() = || {
            let _ = &$item;
        };
    };
}
pub(crate) use named;
