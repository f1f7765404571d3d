//! The KVM micro-VMM: boots a Linux kernel (or raw 64-bit micro-guest code) straight into
//! long mode on /dev/kvm, firmware-style: no BIOS, no PCI, no disks.
//!
//! One file per concern: `memory` (RAM, MMIO hole, e820), `boot` (kernel, initrd, cmdline,
//! zero page), `gdt`, `paging`, `mptable`, `cpuid`, `regs` (vCPU boot state), `serial`
//! (UARTs, console ring, COM2 stream), `ports` (I/O dispatch, i8042, milestones), `vcpu`
//! (threads and the run loop), `pvm` (emulator-gap workarounds), `detect` (KVM flavour) and
//! `vm` (the lifecycle and the public `Vm`/`VmConfig`/`VmOutcome` API).
//!
//! ```no_run
//! use ktstr_host::vmm::{Vm, VmConfig, VmExit};
//! let mut config = VmConfig::linux("bzImage", "console=ttyS0 reboot=k panic=-1");
//! config.vcpus = 2;
//! let vm = Vm::new(config)?;
//! let com2 = vm.com2(); // read/write the protocol channel from another thread
//! let outcome = vm.run()?;
//! assert_eq!(outcome.exit, VmExit::Reset);
//! # Ok::<(), ktstr_host::vmm::VmError>(())
//! ```

pub mod acpi;
pub mod boot;
pub mod cpuid;
pub mod detect;
pub mod error;
pub mod gdt;
pub mod layout;
pub mod memory;
pub mod mptable;
pub mod paging;
pub mod phases;
pub mod ports;
pub mod pvm;
pub mod regs;
pub mod serial;
pub mod topology_cpuid;
pub mod topology_setup;
pub mod vcpu;
pub mod vm;

pub use detect::{KvmFlavour, detect};
pub use error::VmError;
pub use ports::{MILESTONE_PORT, UnhandledAccess, UnhandledStats};
pub use serial::{COM1_BASE, COM2_BASE, Console, RecvError};
pub use vcpu::VcpuRegs;
pub use vm::{ApStart, Com2, ConsoleTap, Payload, Stopper, TEARDOWN_GRACE, Vm, VmConfig, VmExit, VmOutcome};
