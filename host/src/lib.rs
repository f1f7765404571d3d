//! ktstr-host: everything that runs on the host side of a ktstr run.
//!
//! One module per stage of a run (see ARCHITECTURE.md): `kernel` resolves and builds guest
//! kernels, `image` makes initramfs archives, `backend` boots them.

pub mod app;
pub mod backend;
pub mod collect;
pub mod image;
pub mod init_binary;
pub mod interrupt;
pub mod junit;
pub mod kernel;
pub mod progress;
pub mod record;
pub mod report;
pub mod runner;
pub mod scenario;
pub mod sched;
pub mod spec;
pub mod topo;
pub mod verdict;
pub mod vmm;
