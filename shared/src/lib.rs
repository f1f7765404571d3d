//! Types both sides of a ktstr run agree on. `no_std` so the guest init stays small.
//!
//! - [`wire`]: the guest <-> host protocol (postcard + CRC32 + COBS frames, bounded sizes).
//! - [`plan`]: the run plan the host writes into the initramfs for the init to execute.
//! - [`scenario`]: cgroups, workers and steps of a scenario run (part of the plan).
//! - [`hist`]: the log-scale latency histogram of worker reports.
//! - [`topology`]: `NnLlCcTt` CPU topology specs.
#![no_std]

extern crate alloc;

pub mod hist;
pub mod plan;
pub mod scenario;
pub mod topology;
pub mod wire;
