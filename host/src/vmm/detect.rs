//! Which kind of KVM this host has, and why it matters: hardware virtualization runs a guest
//! at native speed; PVM interprets guest ring 0 and cannot run guest userspace.

use std::fs::OpenOptions;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};

use super::error::VmError;

pub const KVM_DEVICE: &str = "/dev/kvm";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CpuVendor {
    Intel,
    Amd,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KvmFlavour {
    /// kvm_intel / kvm_amd: VMX or SVM in hardware (or nested).
    Hardware(CpuVendor),
    /// kvm_pvm: paravirtualized, no VMX/SVM underneath.
    Pvm,
    /// No usable /dev/kvm; the reason says why and what to do.
    Unavailable(String),
}

impl KvmFlavour {
    /// One line for humans.
    pub fn explain(&self) -> String {
        match self {
            KvmFlavour::Hardware(v) => format!(
                "hardware KVM ({}): guests run at native speed",
                match v {
                    CpuVendor::Intel => "Intel VMX",
                    CpuVendor::Amd => "AMD SVM",
                }
            ),
            KvmFlavour::Pvm => "PVM (kvm_pvm), not hardware virtualization: guest kernel code is \
                                interpreted (~5000x slower) and guest userspace cannot make \
                                system calls; use QEMU TCG for full runs"
                .to_string(),
            KvmFlavour::Unavailable(why) => format!("no usable KVM: {why}"),
        }
    }

    pub fn usable(&self) -> bool {
        !matches!(self, KvmFlavour::Unavailable(_))
    }
}

/// What the host's /sys/module and /proc/cpuinfo say (split out for testing).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HostFacts {
    pub kvm_intel: bool,
    pub kvm_amd: bool,
    pub kvm_pvm: bool,
    pub cpu_vmx: bool,
    pub cpu_svm: bool,
}

impl HostFacts {
    pub fn probe() -> Self {
        let module = |m: &str| Path::new("/sys/module").join(m).exists();
        let flags = cpu_flags();
        Self {
            kvm_intel: module("kvm_intel"),
            kvm_amd: module("kvm_amd"),
            kvm_pvm: module("kvm_pvm"),
            cpu_vmx: flags.iter().any(|f| f == "vmx"),
            cpu_svm: flags.iter().any(|f| f == "svm"),
        }
    }

    /// The flavour behind a /dev/kvm that opened fine.
    pub fn flavour(&self) -> KvmFlavour {
        if self.kvm_pvm && !self.kvm_intel && !self.kvm_amd {
            KvmFlavour::Pvm
        } else if self.kvm_amd || (!self.kvm_intel && self.cpu_svm) {
            KvmFlavour::Hardware(CpuVendor::Amd)
        } else if self.kvm_intel || self.cpu_vmx {
            KvmFlavour::Hardware(CpuVendor::Intel)
        } else if self.kvm_pvm {
            KvmFlavour::Pvm
        } else {
            KvmFlavour::Unavailable(
                "/dev/kvm opens but neither kvm_intel, kvm_amd nor kvm_pvm is loaded and the CPU \
                 shows no vmx/svm flag"
                    .to_string(),
            )
        }
    }

    fn load_hint(&self) -> &'static str {
        if self.cpu_vmx {
            "run `modprobe kvm_intel`"
        } else if self.cpu_svm {
            "run `modprobe kvm_amd`"
        } else {
            "this CPU shows no vmx/svm flag: enable virtualization in the firmware, or nested \
             virtualization on the VM host, then `modprobe kvm_intel` or `modprobe kvm_amd`"
        }
    }
}

fn cpu_flags() -> Vec<String> {
    let text = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    text.lines()
        .find(|l| l.starts_with("flags"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, f)| f.split_whitespace().map(str::to_owned).collect())
        .unwrap_or_default()
}

/// Opens `path` read-write the way KVM needs it, turning failures into errors that say how
/// to fix them.
pub fn check_access(path: &Path, facts: &HostFacts) -> Result<(), VmError> {
    match OpenOptions::new().read(true).write(true).open(path) {
        Ok(_) => Ok(()),
        Err(e) => Err(access_error(path, &e, facts)),
    }
}

fn access_error(path: &Path, e: &std::io::Error, facts: &HostFacts) -> VmError {
    let (problem, fix) = match e.kind() {
        ErrorKind::NotFound => ("does not exist".to_string(), facts.load_hint()),
        ErrorKind::PermissionDenied => (
            "permission denied".to_string(),
            "add yourself to the kvm group (`sudo usermod -aG kvm $USER`, then log in again) \
             or run as root",
        ),
        _ => (e.to_string(), "check that KVM is loaded and the device is a KVM node"),
    };
    VmError::KvmUnavailable { path: PathBuf::from(path), problem, fix }
}

/// The host's KVM flavour, including "unavailable" with the reason and the fix.
pub fn detect() -> KvmFlavour {
    let facts = HostFacts::probe();
    match check_access(Path::new(KVM_DEVICE), &facts) {
        Ok(()) => facts.flavour(),
        Err(e) => KvmFlavour::Unavailable(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pvm_only_host_is_pvm() {
        let f = HostFacts { kvm_pvm: true, ..Default::default() };
        assert_eq!(f.flavour(), KvmFlavour::Pvm);
        assert!(f.flavour().explain().contains("userspace"));
    }

    #[test]
    fn hardware_modules_win() {
        let amd = HostFacts { kvm_amd: true, cpu_svm: true, ..Default::default() };
        assert_eq!(amd.flavour(), KvmFlavour::Hardware(CpuVendor::Amd));
        let intel = HostFacts { kvm_intel: true, kvm_pvm: true, cpu_vmx: true, ..Default::default() };
        assert_eq!(intel.flavour(), KvmFlavour::Hardware(CpuVendor::Intel));
    }

    #[test]
    fn nothing_loaded_is_unavailable() {
        let f = HostFacts::default();
        assert!(!f.flavour().usable());
    }

    #[test]
    fn missing_device_says_how_to_load_kvm() {
        let dir = tempfile::tempdir().unwrap();
        let facts = HostFacts { cpu_vmx: true, ..Default::default() };
        let err = check_access(&dir.path().join("kvm"), &facts).unwrap_err().to_string();
        assert!(err.contains("does not exist"), "{err}");
        assert!(err.contains("modprobe kvm_intel"), "{err}");
        let none = check_access(&dir.path().join("kvm"), &HostFacts::default()).unwrap_err().to_string();
        assert!(none.contains("nested virtualization"), "{none}");
    }

    #[test]
    fn permission_denied_mentions_the_kvm_group() {
        let e = std::io::Error::from(ErrorKind::PermissionDenied);
        let msg = access_error(Path::new("/dev/kvm"), &e, &HostFacts::default()).to_string();
        assert!(msg.contains("/dev/kvm: permission denied"), "{msg}");
        assert!(msg.contains("kvm group"), "{msg}");
    }

    #[test]
    fn this_host_is_classified() {
        // Whatever the host is, detection must produce a sentence, never panic.
        assert!(!detect().explain().is_empty());
    }
}
