//! Kernel lab tests: real eBPF programs, real TCP in namespaces made here.
//! They need root; `cargo xtask test` runs them (plain `cargo test` lists
//! them as ignored).
mod container;
mod count;
mod degraded;
mod harness;
mod identity;
mod lifecycle;
mod metrics;
mod owners;
mod ports;
mod programs;
mod retransmit;
mod session;
