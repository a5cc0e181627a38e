//! Kernel side of tcpretrans: one program per tracepoint, one file per hook.
//!
//! Programs read their tracepoint record once, filter before reserving ring
//! space, and submit without waking the consumer unless it is falling behind.
#![no_std]
#![no_main]

mod accept;
mod connect;
mod event;
mod limits;
mod maps;
mod names;
mod owner;
mod record;
mod reset;
mod retransmit;
mod sock;
mod state;
mod synack;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // Unreachable: the verifier rejects programs that could panic.
    loop {}
}
