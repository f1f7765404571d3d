//! VM backends. Both give the same contract: console bytes (COM1) and a duplex byte channel
//! (COM2) carrying the wire protocol; the collector does not know which backend ran.

pub mod qemu;

use ktstr_shared::topology::Topology;
use std::io::{self, Read, Write};
use std::path::PathBuf;
use std::time::Duration;

/// What to boot.
#[derive(Debug, Clone)]
pub struct VmSpec {
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    pub cmdline: String,
    pub topology: Topology,
    pub memory_mib: u32,
    /// Hard limit for the whole VM; it is torn down after this.
    pub timeout: Duration,
}

/// How QEMU executes guest code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Accel {
    Kvm,
    Tcg,
}

/// How a machine process ended.
#[derive(Debug, Clone)]
pub struct MachineExit {
    pub success: bool,
    pub detail: String,
    pub stderr: String,
}

/// A booted VM, whatever runs it.
pub trait Machine {
    /// The console byte stream (once).
    fn take_console(&mut self) -> Option<Box<dyn Read + Send>>;
    /// The protocol channel's read and write halves (once).
    fn take_channel(&mut self) -> Option<(Box<dyn Read + Send>, Box<dyn Write + Send>)>;
    /// `Some` once the machine has stopped.
    fn try_wait(&mut self) -> io::Result<Option<MachineExit>>;
    /// Tears the machine down now; idempotent.
    fn kill(&mut self);
}

/// `--backend`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendChoice {
    /// Hardware KVM usable: our micro-VMM; otherwise QEMU (TCG) with a notice saying why
    #[default]
    Auto,
    /// Our KVM micro-VMM (needs hardware KVM)
    Kvm,
    /// QEMU: KVM acceleration when hardware KVM is usable, else TCG emulation
    Qemu,
}

/// What actually runs a VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    Kvm,
    Qemu(Accel),
}

impl std::fmt::Display for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Backend::Kvm => f.write_str("kvm (ktstr micro-VMM)"),
            Backend::Qemu(Accel::Kvm) => f.write_str("qemu (kvm)"),
            Backend::Qemu(Accel::Tcg) => f.write_str("qemu (tcg)"),
        }
    }
}

/// The host's KVM, as far as running a full guest is concerned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostKvm {
    /// Intel VMX or AMD SVM through kvm_intel / kvm_amd.
    Hardware,
    /// Something that is not hardware KVM (e.g. PVM), or no usable /dev/kvm: the reason.
    Unusable(String),
}

/// Detects whether /dev/kvm can run a full Linux guest here.
pub fn host_kvm() -> HostKvm {
    let module = |m: &str| std::path::Path::new("/sys/module").join(m).exists();
    if module("kvm_pvm") && !module("kvm_intel") && !module("kvm_amd") {
        return HostKvm::Unusable(
            "/dev/kvm is PVM (kvm_pvm), which cannot run a guest's userspace; use QEMU or a host with VT-x/AMD-V"
                .into(),
        );
    }
    if !module("kvm_intel") && !module("kvm_amd") {
        return HostKvm::Unusable("no hardware KVM (kvm_intel / kvm_amd not loaded)".into());
    }
    match std::fs::OpenOptions::new().read(true).write(true).open("/dev/kvm") {
        Ok(_) => HostKvm::Hardware,
        Err(e) => {
            HostKvm::Unusable(format!("/dev/kvm: {e} (add yourself to group kvm, or modprobe kvm_intel / kvm_amd)"))
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SelectError {
    #[error("--backend kvm: {0}. Use --backend qemu (or auto).")]
    KvmUnusable(String),
}

/// Picks the backend for `choice`; the second value is a one-line notice for the user.
pub fn select(choice: BackendChoice) -> Result<(Backend, Option<String>), SelectError> {
    let kvm = host_kvm();
    match (choice, kvm) {
        (BackendChoice::Qemu, HostKvm::Hardware) => Ok((Backend::Qemu(Accel::Kvm), None)),
        (BackendChoice::Qemu, HostKvm::Unusable(_)) => Ok((Backend::Qemu(Accel::Tcg), None)),
        (BackendChoice::Auto | BackendChoice::Kvm, HostKvm::Hardware) => {
            // The micro-VMM is not wired into runs yet: QEMU with KVM acceleration.
            Ok((
                Backend::Qemu(Accel::Kvm),
                Some("using QEMU with KVM (the micro-VMM backend is not enabled yet)".into()),
            ))
        }
        (BackendChoice::Auto, HostKvm::Unusable(why)) => {
            Ok((Backend::Qemu(Accel::Tcg), Some(format!("using QEMU TCG emulation: {why}"))))
        }
        (BackendChoice::Kvm, HostKvm::Unusable(why)) => Err(SelectError::KvmUnusable(why)),
    }
}
