//! tcpretrans: live TCP retransmissions and state changes from eBPF tracepoints.
//!
//! The binary is a thin shell over this library; tests use it directly.
pub mod aya_shims;
pub mod btf;
pub mod cgroup;
pub mod check;
pub mod cli;
pub mod decode;
pub mod events;
#[cfg(test)]
mod fixtures;
pub mod gaps;
pub mod generate;
pub mod identity;
pub mod kernel;
pub mod listeners;
pub mod loader;
pub mod memory;
pub mod metrics;
pub mod netns;
pub mod notice;
pub mod output;
pub mod owners;
pub mod reconcile;
pub mod sessions;
pub mod summary;
pub mod timewait;
pub mod trace;
pub mod tracefs;
