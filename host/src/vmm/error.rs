//! Typed errors of the micro-VMM. Each message names the input, what was expected and what to do.

use std::path::PathBuf;

/// Everything that can stop a VM from being built or run.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    #[error("{path}: {problem}; {fix}")]
    KvmUnavailable { path: PathBuf, problem: String, fix: &'static str },

    #[error("KVM {op} failed: {source}")]
    Kvm {
        op: &'static str,
        #[source]
        source: kvm_ioctls::Error,
    },

    #[error(
        "memory_mib = {mib}: {problem}; give between {min} and {max} MiB",
        min = crate::vmm::memory::MIN_MEMORY_MIB,
        max = crate::vmm::memory::MAX_MEMORY_MIB
    )]
    MemorySize { mib: u64, problem: String },

    #[error("memory_mib = {mib} is more than this host has ({host_mib} MiB of RAM); ask for less memory")]
    MemoryExceedsHost { mib: u64, host_mib: u64 },

    #[error("cannot allocate {mib} MiB of guest memory: {reason}")]
    MemoryAlloc { mib: u64, reason: String },

    #[error("vcpus = {requested}: {problem}")]
    Vcpus { requested: u32, problem: String },

    #[error("topology {spec}: {problem}")]
    Topology { spec: String, problem: String },

    #[error("{path}: cannot read: {source}")]
    ReadFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error(
        "{path}: not a kernel image this VMM can boot ({problem}); give an x86-64 bzImage \
         (arch/x86/boot/bzImage) or an uncompressed ELF vmlinux"
    )]
    KernelFormat { path: PathBuf, problem: String },

    #[error("{path}: loading the kernel failed: {source}")]
    KernelLoad {
        path: PathBuf,
        #[source]
        source: linux_loader::loader::Error,
    },

    #[error(
        "{what} {path} does not fit in guest memory: it needs guest-physical bytes up to \
         {needed:#x} but usable low RAM ends at {available:#x}; raise memory_mib (to at least \
         {suggest_mib} MiB) or use a smaller image"
    )]
    ImageTooLarge { what: &'static str, path: PathBuf, needed: u64, available: u64, suggest_mib: u64 },

    #[error(
        "raw code segment at {addr:#x} (+{len:#x} bytes) is outside guest RAM or overlaps the \
         VMM's boot tables; load it in [0x1000, 0x7000) or at or above {reserved_end:#x} and \
         inside memory_mib"
    )]
    RawSegment { addr: u64, len: u64, reserved_end: u64 },

    #[error(
        "kernel command line is {len} bytes but the kernel accepts at most {max} (including \
         the terminating NUL); shorten it"
    )]
    CmdlineTooLong { len: usize, max: usize },

    #[error("writing {what} into guest memory at {addr:#x} failed: {source}")]
    GuestWrite {
        what: &'static str,
        addr: u64,
        #[source]
        source: vm_memory::GuestMemoryError,
    },

    #[error("MP table for {vcpus} vCPUs: {problem}")]
    MpTable { vcpus: u32, problem: String },

    #[error("vCPU {vcpu}: {what} failed: {source}")]
    VcpuSetup {
        vcpu: u32,
        what: &'static str,
        #[source]
        source: kvm_ioctls::Error,
    },

    #[error("{what}: {source}")]
    Os {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },

    #[error("the thread loading the guest panicked; this is a bug in the VMM, please report it")]
    LoaderPanicked,
}

impl VmError {
    pub(crate) fn kvm(op: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> VmError {
        move |source| VmError::Kvm { op, source }
    }

    pub(crate) fn vcpu(vcpu: u32, what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> VmError {
        move |source| VmError::VcpuSetup { vcpu, what, source }
    }

    pub(crate) fn guest_write(what: &'static str, addr: u64) -> impl FnOnce(vm_memory::GuestMemoryError) -> VmError {
        move |source| VmError::GuestWrite { what, addr, source }
    }
}
