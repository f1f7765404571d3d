//! One thread per vCPU: initial state, the KVM_RUN loop, and the kick that gets a thread out
//! of KVM_RUN when the VM is torn down.

use std::cell::Cell;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::Sender;
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use kvm_bindings::{
    CpuId, KVM_INTERNAL_ERROR_EMULATION, KVM_MP_STATE_RUNNABLE, KVM_MP_STATE_UNINITIALIZED, KVM_SYSTEM_EVENT_CRASH,
    KVM_SYSTEM_EVENT_RESET, KVM_SYSTEM_EVENT_SHUTDOWN, Msrs, kvm_mp_state, kvm_run,
};
use kvm_ioctls::{VcpuExit, VcpuFd};
use libc::{c_int, c_void, siginfo_t};
use vm_memory::GuestMemoryMmap;

use super::cpuid;
use super::error::VmError;
use super::ports::{Devices, PioAction};
use super::pvm;
use super::regs;

/// Where a vCPU starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StartMode {
    /// Runnable at the 64-bit entry (the BSP; every vCPU of a micro-guest in `ApStart::Runnable`).
    Entry(u64),
    /// Waiting for INIT/SIPI from the BSP, as on real hardware.
    WaitForSipi,
}

/// Registers of a vCPU at the moment it stopped, for triple faults and internal errors.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VcpuRegs {
    pub vcpu: u32,
    pub rip: u64,
    pub rsp: u64,
    pub rbp: u64,
    pub rflags: u64,
    pub rax: u64,
    pub rbx: u64,
    pub rcx: u64,
    pub rdx: u64,
    pub rsi: u64,
    pub rdi: u64,
    pub cr0: u64,
    pub cr2: u64,
    pub cr3: u64,
    pub cr4: u64,
    pub efer: u64,
    pub cs: u16,
}

impl VcpuRegs {
    /// The architectural INIT/reset state (CS:IP F000:FFF0, real mode). KVM on AMD SVM puts a
    /// vCPU there before it reports a triple fault, so these are not the faulting registers.
    pub fn is_reset_state(&self) -> bool {
        self.cs == 0xf000 && self.rip == 0xfff0 && self.cr0 & 1 == 0
    }
}

impl fmt::Display for VcpuRegs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "vCPU {}: rip={:#x} cs={:#x} rsp={:#x} rbp={:#x} rflags={:#x} rax={:#x} rbx={:#x} \
             rcx={:#x} rdx={:#x} rsi={:#x} rdi={:#x} cr0={:#x} cr2={:#x} cr3={:#x} cr4={:#x} \
             efer={:#x}",
            self.vcpu,
            self.rip,
            self.cs,
            self.rsp,
            self.rbp,
            self.rflags,
            self.rax,
            self.rbx,
            self.rcx,
            self.rdx,
            self.rsi,
            self.rdi,
            self.cr0,
            self.cr2,
            self.cr3,
            self.cr4,
            self.efer
        )
    }
}

/// Why a vCPU thread stopped on its own (every one of these ends the VM).
#[derive(Clone, Debug)]
pub enum VcpuStop {
    Reset,
    PowerOff,
    Crash,
    TripleFault(Option<VcpuRegs>),
    InternalError { suberror: u32, data: Vec<u64>, regs: Option<VcpuRegs> },
    FailEntry { reason: u64, regs: Option<VcpuRegs> },
    Error(String),
}

/// Messages from vCPU threads to the VM's control loop.
#[derive(Debug)]
pub enum Event {
    Stopped {
        vcpu: u32,
        why: VcpuStop,
    },
    /// The thread is about to return (sent last, after the vCPU fd is no longer used).
    Exited {
        vcpu: u32,
    },
    /// A `Stopper` asked for the VM to stop.
    StopRequested,
}

thread_local! {
    /// This thread's kvm_run page, so the kick handler can set `immediate_exit`.
    static KVM_RUN: Cell<*mut kvm_run> = const { Cell::new(std::ptr::null_mut()) };
}

extern "C" fn on_kick(_: c_int, _: *mut siginfo_t, _: *mut c_void) {
    // A kick that lands between the stop-flag check and KVM_RUN would be lost; setting
    // immediate_exit makes that KVM_RUN return EINTR at once instead.
    let run = KVM_RUN.with(Cell::get);
    if !run.is_null() {
        // SAFETY: the pointer is this thread's live kvm_run mapping (cleared before the vCPU
        // fd is dropped), and the handler runs on this thread, so nothing else writes it now.
        unsafe { std::ptr::write_volatile(&raw mut (*run).immediate_exit, 1) };
    }
}

/// The real-time signal used to kick vCPU threads out of KVM_RUN.
pub fn kick_signal() -> c_int {
    vmm_sys_util::signal::SIGRTMIN()
}

/// Installs the kick handler once per process.
pub fn install_kick_handler() -> Result<(), VmError> {
    static INSTALLED: OnceLock<Result<(), i32>> = OnceLock::new();
    INSTALLED
        .get_or_init(|| vmm_sys_util::signal::register_signal_handler(kick_signal(), on_kick).map_err(|e| e.errno()))
        .map_err(|errno| VmError::Os {
            what: "installing the vCPU kick signal handler",
            source: std::io::Error::from_raw_os_error(errno),
        })
}

/// Creates vCPU `index` and gives it its boot state.
pub fn configure(fd: &VcpuFd, index: u32, base_cpuid: &CpuId, start: StartMode) -> Result<(), VmError> {
    let apic_id = cpuid::apic_id(index);
    fd.set_cpuid2(&cpuid::for_vcpu(base_cpuid, apic_id)).map_err(VmError::vcpu(index, "KVM_SET_CPUID2"))?;
    set_boot_msrs(fd, index)?;
    if let StartMode::Entry(entry) = start {
        fd.set_regs(&regs::boot_regs(entry, index)).map_err(VmError::vcpu(index, "KVM_SET_REGS"))?;
        let sregs = fd.get_sregs().map_err(VmError::vcpu(index, "KVM_GET_SREGS"))?;
        fd.set_sregs(&regs::boot_sregs(sregs)).map_err(VmError::vcpu(index, "KVM_SET_SREGS"))?;
        fd.set_fpu(&regs::boot_fpu()).map_err(VmError::vcpu(index, "KVM_SET_FPU"))?;
    }
    let mut lapic = fd.get_lapic().map_err(VmError::vcpu(index, "KVM_GET_LAPIC"))?;
    regs::set_lint(&mut lapic);
    fd.set_lapic(&lapic).map_err(VmError::vcpu(index, "KVM_SET_LAPIC"))?;
    let mp_state = match start {
        StartMode::Entry(_) => KVM_MP_STATE_RUNNABLE,
        StartMode::WaitForSipi => KVM_MP_STATE_UNINITIALIZED,
    };
    fd.set_mp_state(kvm_mp_state { mp_state }).map_err(VmError::vcpu(index, "KVM_SET_MP_STATE"))
}

fn set_boot_msrs(fd: &VcpuFd, index: u32) -> Result<(), VmError> {
    let entries = regs::boot_msrs();
    let msrs = Msrs::from_entries(&entries).expect("the boot MSRs fit KVM_MAX_MSR_ENTRIES");
    let set = fd.set_msrs(&msrs).map_err(VmError::vcpu(index, "KVM_SET_MSRS"))?;
    if set < entries.len() {
        // KVM stops at the first MSR it refuses; the rest are optional for a boot.
        tracing::debug!(
            vcpu = index,
            msr = format_args!("{:#x}", entries[set].index),
            "KVM refused a boot MSR; continuing without it"
        );
    }
    Ok(())
}

fn snapshot(fd: &VcpuFd, vcpu: u32) -> Option<VcpuRegs> {
    let r = fd.get_regs().ok()?;
    let s = fd.get_sregs().ok()?;
    Some(VcpuRegs {
        vcpu,
        rip: r.rip,
        rsp: r.rsp,
        rbp: r.rbp,
        rflags: r.rflags,
        rax: r.rax,
        rbx: r.rbx,
        rcx: r.rcx,
        rdx: r.rdx,
        rsi: r.rsi,
        rdi: r.rdi,
        cr0: s.cr0,
        cr2: s.cr2,
        cr3: s.cr3,
        cr4: s.cr4,
        efer: s.efer,
        cs: s.cs.selector,
    })
}

/// What the loop does after one exit; computed while the exit borrows the vCPU fd.
enum Next {
    Continue,
    Stop(VcpuStop),
    TripleFault,
    Internal,
    FailEntry(u64),
}

/// Everything a vCPU thread needs.
pub struct VcpuThread {
    pub index: u32,
    pub fd: VcpuFd,
    pub devices: Arc<Devices>,
    pub memory: Arc<GuestMemoryMmap>,
    pub stop: Arc<AtomicBool>,
    pub events: Sender<Event>,
    pub first_run: Arc<OnceLock<Instant>>,
    /// Work around instructions PVM's emulator cannot run (see `pvm`).
    pub pvm_fixups: bool,
    /// How many instructions were performed that way (all vCPUs).
    pub fixups_done: Arc<AtomicU64>,
}

impl VcpuThread {
    /// The thread body: run until something stops this vCPU or the VM.
    pub fn run(mut self) {
        KVM_RUN.with(|c| c.set(self.fd.get_kvm_run()));
        let why = self.run_loop();
        KVM_RUN.with(|c| c.set(std::ptr::null_mut()));
        let vcpu = self.index;
        if let Some(why) = why {
            let _ = self.events.send(Event::Stopped { vcpu, why });
        }
        let events = self.events.clone();
        drop(self);
        let _ = events.send(Event::Exited { vcpu });
    }

    fn run_loop(&mut self) -> Option<VcpuStop> {
        loop {
            if self.stop.load(Ordering::SeqCst) {
                return None;
            }
            self.first_run.get_or_init(Instant::now);
            let next = match self.fd.run() {
                Ok(exit) => handle_exit(&self.devices, exit),
                Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                    self.fd.set_kvm_immediate_exit(0);
                    Next::Continue
                }
                Err(e) => Next::Stop(VcpuStop::Error(format!("KVM_RUN failed: {e}"))),
            };
            match next {
                Next::Continue => {}
                Next::Stop(why) => return Some(why),
                Next::TripleFault => return Some(VcpuStop::TripleFault(self.regs())),
                Next::FailEntry(reason) => {
                    return Some(VcpuStop::FailEntry { reason, regs: self.regs() });
                }
                Next::Internal => {
                    if let Some(why) = self.internal_error() {
                        return Some(why);
                    }
                }
            }
        }
    }

    fn regs(&self) -> Option<VcpuRegs> {
        snapshot(&self.fd, self.index)
    }

    /// An emulation failure: fixed up (PVM gaps) and resumed, or reported with registers.
    fn internal_error(&mut self) -> Option<VcpuStop> {
        // SAFETY: KVM_EXIT_INTERNAL_ERROR selects the `internal` member of the exit union.
        let internal = unsafe { self.fd.get_kvm_run().__bindgen_anon_1.internal };
        let (suberror, ndata) = (internal.suberror, internal.ndata as usize);
        if self.pvm_fixups && suberror == KVM_INTERNAL_ERROR_EMULATION && pvm::fix_up(&self.fd, &self.memory) {
            self.fixups_done.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        Some(VcpuStop::InternalError {
            suberror,
            data: internal.data[..ndata.min(internal.data.len())].to_vec(),
            regs: self.regs(),
        })
    }
}

fn handle_exit(devices: &Devices, exit: VcpuExit<'_>) -> Next {
    match exit {
        VcpuExit::IoIn(port, data) => {
            devices.pio_in(port, data);
            Next::Continue
        }
        VcpuExit::IoOut(port, data) => match devices.pio_out(port, data) {
            PioAction::Continue => Next::Continue,
            PioAction::Reset => Next::Stop(VcpuStop::Reset),
        },
        VcpuExit::MmioRead(addr, data) => {
            devices.mmio_read(addr, data);
            Next::Continue
        }
        VcpuExit::MmioWrite(addr, data) => {
            devices.mmio_write(addr, data);
            Next::Continue
        }
        VcpuExit::Intr | VcpuExit::IrqWindowOpen => Next::Continue,
        VcpuExit::Shutdown => Next::TripleFault,
        VcpuExit::InternalError => Next::Internal,
        VcpuExit::FailEntry(reason, _) => Next::FailEntry(reason),
        VcpuExit::SystemEvent(kind, _) => Next::Stop(match kind {
            KVM_SYSTEM_EVENT_SHUTDOWN => VcpuStop::PowerOff,
            KVM_SYSTEM_EVENT_RESET => VcpuStop::Reset,
            KVM_SYSTEM_EVENT_CRASH => VcpuStop::Crash,
            other => VcpuStop::Error(format!("unexpected KVM system event {other}")),
        }),
        other => Next::Stop(VcpuStop::Error(format!("unexpected KVM exit {other:?}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reset_state_is_recognised() {
        // What KVM on AMD SVM reports after a shutdown: RDX holds the CPUID signature.
        let reset = VcpuRegs { vcpu: 1, rip: 0xfff0, cs: 0xf000, cr0: 0x10, rdx: 0x60fb1, ..Default::default() };
        assert!(reset.is_reset_state());
        let long_mode = VcpuRegs { rip: 0xffff_ffff_8100_0000, cs: 0x10, cr0: 0x8005_0033, ..Default::default() };
        assert!(!long_mode.is_reset_state());
        assert!(!VcpuRegs { cr0: 0x11, ..reset }.is_reset_state(), "protected mode at the same CS:IP");
    }
}
