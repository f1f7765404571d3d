//! The top layer: every clap type, and the orchestration of commands (a single run, scenario
//! matrices, scheduler builds, judge/explain). Nothing in the crate imports this module.

pub mod cli;
pub mod matrix;
pub mod scenario;
pub mod sched;
pub mod thresholds;
