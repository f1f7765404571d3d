//! VM backends. Both give the same contract: console bytes (COM1) and a duplex byte channel
//! (COM2) carrying the wire protocol; the collector does not know which backend ran.

pub mod kvm;
pub mod qemu;

use crate::vmm::KvmFlavour;
use ktstr_shared::topology::Topology;
use std::io::{self, Read, Write};
use std::path::PathBuf;
use std::time::Duration;

/// What to boot.
#[derive(Debug, Clone)]
pub struct VmSpec {
    pub kernel: PathBuf,
    /// The initrd as parts (cpio archives: the cached base, then the per-run suffix), each
    /// after the first at a 4-byte aligned offset. The micro-VMM loads them straight into
    /// guest memory; QEMU gets them concatenated into one file.
    pub initrd: Vec<PathBuf>,
    pub cmdline: String,
    pub topology: Topology,
    pub memory_mib: u32,
    /// Hard limit for the whole VM; it is torn down after this.
    pub timeout: Duration,
    /// Instants marked before the VM was asked for (the micro-VMM's timeline starts with them).
    pub marks: crate::vmm::phases::Marks,
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
    /// Tears the machine down now; idempotent. Returns what the machine reported on the
    /// way down, if anything.
    fn kill(&mut self) -> Option<String>;
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

/// Set to 1 to run `--backend kvm` on PVM anyway (only early boot works there).
pub const ALLOW_PVM_ENV: &str = "KTSTR_KVM_ALLOW_PVM";

#[derive(Debug, thiserror::Error)]
pub enum SelectError {
    #[error("--backend kvm: {0}. Use --backend qemu (or auto).")]
    KvmUnusable(String),
}

/// Whether the user asked to run the micro-VMM on PVM regardless.
fn pvm_allowed() -> bool {
    std::env::var(ALLOW_PVM_ENV).is_ok_and(|v| v == "1")
}

/// Picks the backend for `choice`; the second value is a one-line notice for the user.
pub fn select(choice: BackendChoice) -> Result<(Backend, Option<String>), SelectError> {
    select_for(choice, &crate::vmm::detect(), pvm_allowed())
}

fn select_for(
    choice: BackendChoice,
    kvm: &KvmFlavour,
    allow_pvm: bool,
) -> Result<(Backend, Option<String>), SelectError> {
    let hardware = matches!(kvm, KvmFlavour::Hardware(_));
    match choice {
        BackendChoice::Qemu if hardware => Ok((Backend::Qemu(Accel::Kvm), None)),
        BackendChoice::Qemu => Ok((Backend::Qemu(Accel::Tcg), None)),
        BackendChoice::Auto | BackendChoice::Kvm if hardware => Ok((Backend::Kvm, None)),
        BackendChoice::Auto => {
            Ok((Backend::Qemu(Accel::Tcg), Some(format!("using QEMU TCG emulation: {}", kvm.explain()))))
        }
        BackendChoice::Kvm if matches!(kvm, KvmFlavour::Pvm) && allow_pvm => Ok((
            Backend::Kvm,
            Some(format!("{ALLOW_PVM_ENV}=1: running the micro-VMM on PVM; only early kernel boot works there")),
        )),
        BackendChoice::Kvm => Err(SelectError::KvmUnusable(kvm.explain())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vmm::detect::CpuVendor;

    #[test]
    fn selection_per_host_flavour() {
        let hw = KvmFlavour::Hardware(CpuVendor::Amd);
        let none = KvmFlavour::Unavailable("no /dev/kvm".into());
        assert_eq!(select_for(BackendChoice::Auto, &hw, false).unwrap(), (Backend::Kvm, None));
        assert_eq!(select_for(BackendChoice::Qemu, &hw, false).unwrap().0, Backend::Qemu(Accel::Kvm));
        let (b, notice) = select_for(BackendChoice::Auto, &KvmFlavour::Pvm, false).unwrap();
        assert_eq!(b, Backend::Qemu(Accel::Tcg));
        assert!(notice.unwrap().contains("PVM"));
        let e = select_for(BackendChoice::Kvm, &KvmFlavour::Pvm, false).unwrap_err().to_string();
        assert!(e.contains("PVM") && e.contains("--backend qemu"), "{e}");
        assert_eq!(select_for(BackendChoice::Kvm, &KvmFlavour::Pvm, true).unwrap().0, Backend::Kvm);
        assert!(select_for(BackendChoice::Kvm, &none, true).is_err());
        assert_eq!(select_for(BackendChoice::Qemu, &none, false).unwrap().0, Backend::Qemu(Accel::Tcg));
    }
}
