//! Types both sides of a ktstr run agree on. `no_std` so the guest init stays small.
//!
//! - [`wire`]: the guest <-> host protocol (postcard + CRC32 + COBS frames, bounded sizes).
//! - [`plan`]: the run plan the host writes into the initramfs for the init to execute.
//! - [`topology`]: `NnLlCcTt` CPU topology specs.
#![no_std]

extern crate alloc;

pub mod plan;
pub mod topology;
pub mod wire;
