//! The names aya joins the two sides by: each hook's tracepoint and
//! programs, and the maps userspace opens. The kernel side checks every
//! program and map against its name here at build time (`names_its!` in
//! tcpretrans-ebpf), and userspace loads by these names only: renaming a
//! program or a map on one side alone fails the build.

/// What a hook's tracepoint record gives the programs (userspace parses
/// that layout from tracefs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    Retransmit,
    Synack,
    State,
    Reset,
    ConnectEnter,
    SyscallExit,
}

/// A tracepoint and the programs the object has for it: a classic one
/// always; raw and BTF ones where the socket is read at BTF offsets; the
/// state hook's nested raw one (see `state_nesting`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Hook {
    pub category: &'static str,
    pub tracepoint: &'static str,
    pub classic: &'static str,
    pub raw: Option<&'static str>,
    pub btf: Option<&'static str>,
    pub nested: Option<&'static str>,
    pub layout: Layout,
    /// Only needed for state events (resets explain endings).
    pub state_only: bool,
}

/// Whether `$want` is among the flags that follow `in`.
macro_rules! flag {
    ($want:ident in) => {
        false
    };
    (raw in raw $($rest:ident)*) => {
        true
    };
    (btf in btf $($rest:ident)*) => {
        true
    };
    (nested in nested $($rest:ident)*) => {
        true
    };
    (state_only in state_only $($rest:ident)*) => {
        true
    };
    ($want:ident in $other:ident $($rest:ident)*) => {
        flag!($want in $($rest)*)
    };
}

/// A hook whose programs are named after its tracepoint: `NAME`, then, as
/// flagged, `NAME_raw`, `NAME_btf` and `NAME_raw_nested`.
macro_rules! hook {
    ($category:ident : $tracepoint:ident, $layout:ident $(, $flag:ident)*) => {
        Hook {
            category: stringify!($category),
            tracepoint: stringify!($tracepoint),
            classic: stringify!($tracepoint),
            raw: if flag!(raw in $($flag)*) {
                Some(concat!(stringify!($tracepoint), "_raw"))
            } else {
                None
            },
            btf: if flag!(btf in $($flag)*) {
                Some(concat!(stringify!($tracepoint), "_btf"))
            } else {
                None
            },
            nested: if flag!(nested in $($flag)*) {
                Some(concat!(stringify!($tracepoint), "_raw_nested"))
            } else {
                None
            },
            layout: Layout::$layout,
            state_only: flag!(state_only in $($flag)*),
        }
    };
}

pub const RETRANSMIT: Hook = hook!(tcp: tcp_retransmit_skb, Retransmit, raw);
pub const SYNACK: Hook = hook!(tcp: tcp_retransmit_synack, Synack, raw);
pub const STATE: Hook = hook!(sock: inet_sock_set_state, State, raw, btf, nested);
pub const SEND_RESET: Hook = hook!(tcp: tcp_send_reset, Reset, raw, state_only);
pub const RECEIVE_RESET: Hook = hook!(tcp: tcp_receive_reset, Reset, raw, state_only);
pub const ENTER_CONNECT: Hook = hook!(syscalls: sys_enter_connect, ConnectEnter);
pub const EXIT_CONNECT: Hook = hook!(syscalls: sys_exit_connect, SyscallExit);
pub const EXIT_ACCEPT4: Hook = hook!(syscalls: sys_exit_accept4, SyscallExit);
pub const EXIT_ACCEPT: Hook = hook!(syscalls: sys_exit_accept, SyscallExit);

/// Every hook, in the order `--check` reports them.
pub const ALL: [Hook; 9] = [
    RETRANSMIT,
    SYNACK,
    STATE,
    SEND_RESET,
    RECEIVE_RESET,
    ENTER_CONNECT,
    EXIT_CONNECT,
    EXIT_ACCEPT4,
    EXIT_ACCEPT,
];

/// The BTF type the kernel knows the state tracepoint by, for BTF programs.
pub const STATE_BTF_TRACEPOINT: &str = concat!("btf_trace_", "inet_sock_set_state");

/// The program userspace runs (`BPF_PROG_TEST_RUN`), never attached, to
/// read a network namespace's limits through one of its sockets.
pub const NAMESPACE_LIMITS: &str = "namespace_limits";

/// The maps, by the names userspace opens and sizes them by.
pub mod maps {
    pub const EVENTS: &str = "EVENTS";
    pub const LOST: &str = "LOST";
    pub const FAILED_READS: &str = "FAILED_READS";
    pub const TRANSITIONS: &str = "TRANSITIONS";
    pub const STATE_NESTING: &str = "STATE_NESTING";
    pub const SOCKETS: &str = "SOCKETS";
    pub const LISTENERS: &str = "LISTENERS";
    pub const CONNECTS: &str = "CONNECTS";
    pub const STATE_TAKEN: &str = "STATE_TAKEN";
    pub const RECORDS: &str = "RECORDS";
    pub const NAMESPACE_LIMITS: &str = "NAMESPACE_LIMITS";
}

/// Whether two names are the same, at build time.
pub const fn same(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    let mut i = 0;
    while i < a.len() {
        if a[i] != b[i] {
            return false;
        }
        i += 1;
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn programs_are_named_after_their_tracepoint() {
        assert_eq!(STATE.classic, "inet_sock_set_state");
        assert_eq!(STATE.raw, Some("inet_sock_set_state_raw"));
        assert_eq!(STATE.btf, Some("inet_sock_set_state_btf"));
        assert_eq!(STATE.nested, Some("inet_sock_set_state_raw_nested"));
        assert_eq!((EXIT_ACCEPT.raw, EXIT_ACCEPT.state_only), (None, false));
        let mut state_only = ALL.iter().filter(|h| h.state_only);
        assert_eq!(
            [state_only.next(), state_only.next(), state_only.next()],
            [Some(&SEND_RESET), Some(&RECEIVE_RESET), None]
        );
        assert_eq!(STATE_BTF_TRACEPOINT, "btf_trace_inet_sock_set_state");
        assert_eq!(
            [same("tcp", "tcp"), same("a", "ab"), same("ab", "ac")],
            [true, false, false]
        );
    }
}
