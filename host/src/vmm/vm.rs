//! The VM's lifecycle: build everything from a `VmConfig`, run the vCPU threads under a
//! watchdog, tear down, and describe what happened in a `VmOutcome`.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use kvm_bindings::{KVM_MAX_CPUID_ENTRIES, KVM_PIT_SPEAKER_DUMMY, kvm_pit_config};
use kvm_ioctls::{Cap, Kvm, VcpuFd, VmFd};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::signal::Killable;

use super::boot::{self, InitrdPlacement, LoadedKernel};
use super::detect::{self, HostFacts, KVM_DEVICE, KvmFlavour};
use super::error::VmError;
use super::layout::{GDT_ADDR, IDT_ADDR, KVM_IDENTITY_MAP_ADDR, KVM_TSS_ADDR};
use super::memory::{self, MemoryLayout};
use super::phases::{Marks, Timeline};
use super::ports::{Devices, UnhandledStats};
use super::serial::{
    ByteStream, COM1_IRQ, COM2_IRQ, Console, ConsoleLog, RecvError, SharedConsole, StreamWriter, Uart, lock,
};
use super::vcpu::{self, Event, StartMode, VcpuRegs, VcpuStop, VcpuThread};
use super::{gdt, mptable, paging, topology_setup};
use ktstr_shared::topology::Topology;

/// What the VM boots.
#[derive(Clone, Debug)]
pub enum Payload {
    /// A Linux kernel: bzImage (64-bit entry) or ELF vmlinux. `initrd` holds the parts of the
    /// initrd (cpio archives, e.g. a cached base and a small per-run suffix), placed back to back
    /// in guest memory, each at a 4-byte aligned offset, so they never need concatenating on
    /// disk; empty for none.
    Linux { kernel: PathBuf, initrd: Vec<PathBuf>, cmdline: String },
    /// Raw 64-bit code (micro-guests): segments copied to guest-physical addresses, entered in
    /// long mode at `entry` exactly like a kernel (same GDT, page tables, zero page in RSI).
    Raw { segments: Vec<(u64, Vec<u8>)>, entry: u64 },
}

/// How application processors start.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ApStart {
    /// Halted until the BSP sends INIT/SIPI (what Linux expects).
    WaitForSipi,
    /// Runnable at the payload's entry like the BSP, RDI = vCPU index (micro-guests only).
    Runnable,
}

#[derive(Clone, Debug)]
pub struct VmConfig {
    pub payload: Payload,
    pub memory_mib: u64,
    pub vcpus: u32,
    /// Hard watchdog: the VM is torn down after this long.
    pub timeout: Duration,
    /// Copy COM1 to stderr as it arrives.
    pub echo_console: bool,
    /// Bytes of console output kept (the tail); older bytes are counted, not kept.
    pub console_capacity: usize,
    pub ap_start: ApStart,
    /// The CPU topology: per-vCPU CPUID and ACPI tables (MADT/SRAT/SLIT) instead of the MP
    /// table; its CPU count must equal `vcpus`. None: identity APIC IDs and an MP table.
    pub topology: Option<Topology>,
    /// Instants marked before the VM was asked for; its timeline starts with them.
    pub marks: Marks,
}

impl VmConfig {
    pub const DEFAULT_MEMORY_MIB: u64 = 256;
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);
    pub const DEFAULT_CONSOLE_CAPACITY: usize = 256 << 10;

    pub fn new(payload: Payload) -> Self {
        Self {
            payload,
            memory_mib: Self::DEFAULT_MEMORY_MIB,
            vcpus: 1,
            timeout: Self::DEFAULT_TIMEOUT,
            echo_console: false,
            console_capacity: Self::DEFAULT_CONSOLE_CAPACITY,
            ap_start: ApStart::WaitForSipi,
            topology: None,
            marks: Marks::default(),
        }
    }

    pub fn linux(kernel: impl Into<PathBuf>, cmdline: impl Into<String>) -> Self {
        Self::new(Payload::Linux { kernel: kernel.into(), initrd: Vec::new(), cmdline: cmdline.into() })
    }

    /// One blob of 64-bit code at `addr`, entered at its first byte.
    pub fn raw_code(addr: u64, code: Vec<u8>) -> Self {
        Self::new(Payload::Raw { segments: vec![(addr, code)], entry: addr })
    }
}

/// How the guest ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum VmExit {
    /// The guest powered off (KVM system event).
    PowerOff,
    /// The guest reset itself (i8042 0xFE, KVM reset event): how a ktstr guest ends cleanly.
    Reset,
    /// The kernel panicked: the console from a little before "Kernel panic" on.
    Panic(String),
    TripleFault {
        regs: Option<VcpuRegs>,
    },
    /// KVM could not run the guest (e.g. an instruction its emulator cannot handle).
    InternalError {
        suberror: u32,
        data: Vec<u64>,
        regs: Option<VcpuRegs>,
    },
    /// VM entry failed (invalid guest state).
    FailEntry {
        reason: u64,
        regs: Option<VcpuRegs>,
    },
    /// KVM_RUN failed or exited in a way this VMM does not expect.
    VcpuError {
        vcpu: u32,
        error: String,
    },
    /// The watchdog fired.
    Timeout,
    /// Ctrl-C or `Stopper::stop`.
    Interrupted,
}

impl VmExit {
    /// Power-off and reset are how a guest ends on purpose.
    pub fn is_clean(&self) -> bool {
        matches!(self, VmExit::PowerOff | VmExit::Reset)
    }
}

#[derive(Clone, Debug)]
pub struct VmOutcome {
    pub exit: VmExit,
    pub console: Console,
    /// Named boot phases, as offsets from process start, in time order.
    pub phases: Vec<(&'static str, Duration)>,
    /// Host-kernel calls whose cost is the host's, not the VMM's (KVM_CREATE_VM,
    /// KVM_CREATE_IRQCHIP: ~120 ms on PVM, microseconds on hardware KVM), with their durations;
    /// they overlap the loading of the payload (on another thread), between `memory_mapped`
    /// and `vm_joined`.
    pub host_calls: Vec<(&'static str, Duration)>,
    /// How long those calls went on after guest memory was filled: the host kernel's share of
    /// the time to the first KVM_RUN (zero when they finished first).
    pub host_wait: Duration,
    /// Values the guest wrote to `ports::MILESTONE_PORT`, with their offsets from process start.
    pub milestones: Vec<(u32, Duration)>,
    pub unhandled: UnhandledStats,
    /// Bytes the guest wrote to COM2.
    pub com2_bytes: u64,
    /// vCPU threads still inside KVM_RUN after `TEARDOWN_GRACE` (left to exit on their own;
    /// only seen under PVM).
    pub detached_vcpus: u32,
    /// Instructions the VMM performed itself because PVM's emulator cannot (`pvm`).
    pub emulation_fixups: u64,
}

impl VmOutcome {
    pub fn phase(&self, name: &str) -> Option<Duration> {
        self.phases.iter().find(|(n, _)| *n == name).map(|p| p.1)
    }
}

/// The duplex byte channel on COM2, usable from any thread while the VM runs.
#[derive(Clone)]
pub struct Com2 {
    devices: Arc<Devices>,
}

impl Com2 {
    /// Guest bytes, waiting up to `timeout` for at least one.
    pub fn recv(&self, timeout: Duration) -> Result<Vec<u8>, RecvError> {
        self.devices.com2_out.recv(timeout)
    }

    /// Queues bytes for the guest's COM2 receive FIFO (never blocks on the guest).
    pub fn send(&self, bytes: &[u8]) {
        self.devices.inject_com2(bytes);
    }
}

/// A live, lossy copy of the console (COM1) from the moment it was taken; `recv` reports
/// `Closed` after the VM has stopped and the rest has been read.
#[derive(Clone)]
pub struct ConsoleTap(Arc<ByteStream>);

impl ConsoleTap {
    pub fn recv(&self, timeout: Duration) -> Result<Vec<u8>, RecvError> {
        self.0.recv(timeout)
    }
}

/// Stops a running VM from another thread; `run` then returns `VmExit::Interrupted`.
#[derive(Clone)]
pub struct Stopper(Sender<Event>);

impl Stopper {
    pub fn stop(&self) {
        let _ = self.0.send(Event::StopRequested);
    }
}

/// A built VM, ready to `run`.
pub struct Vm {
    config: VmConfig,
    flavour: KvmFlavour,
    // Field order is drop order: vCPUs before the VM fd before guest memory.
    vcpus: Vec<VcpuFd>,
    vm_fd: VmFd,
    _kvm: Kvm,
    memory: Arc<GuestMemoryMmap>,
    devices: Arc<Devices>,
    kernel: Option<LoadedKernel>,
    timeline: Timeline,
    events: (Sender<Event>, Receiver<Event>),
}

fn open_kvm() -> Result<(Kvm, KvmFlavour), VmError> {
    let facts = HostFacts::probe();
    detect::check_access(std::path::Path::new(KVM_DEVICE), &facts)?;
    let kvm = Kvm::new().map_err(|e| VmError::KvmUnavailable {
        path: PathBuf::from(KVM_DEVICE),
        problem: e.to_string(),
        fix: "check that the kvm module is loaded",
    })?;
    Ok((kvm, facts.flavour()))
}

fn check_vcpus(kvm: &Kvm, vcpus: u32) -> Result<(), VmError> {
    let max = kvm.get_max_vcpus() as u32;
    let problem = if vcpus == 0 {
        Some("a VM needs at least one vCPU".to_string())
    } else if vcpus > max {
        Some(format!("more vCPUs than this host's KVM allows (KVM_CAP_MAX_VCPUS = {max}); ask for fewer"))
    } else if vcpus > mptable::MAX_VCPUS {
        Some(format!("at most {} vCPUs until ACPI tables exist (the MP table has 8-bit APIC IDs)", mptable::MAX_VCPUS))
    } else {
        None
    };
    match problem {
        Some(problem) => Err(VmError::Vcpus { requested: vcpus, problem }),
        None => Ok(()),
    }
}

fn create_vm(kvm: &Kvm) -> Result<VmFd, VmError> {
    // KVM_CREATE_VM can fail with EINTR while the host is busy; retry a few times.
    let mut attempt = 0;
    loop {
        match kvm.create_vm() {
            Err(e) if e.errno() == libc::EINTR && attempt < 5 => attempt += 1,
            other => return other.map_err(VmError::kvm("KVM_CREATE_VM")),
        }
    }
}

fn setup_platform(vm: &VmFd, timeline: &mut Timeline) -> Result<(), VmError> {
    vm.set_identity_map_address(KVM_IDENTITY_MAP_ADDR).map_err(VmError::kvm("KVM_SET_IDENTITY_MAP_ADDR"))?;
    vm.set_tss_address(KVM_TSS_ADDR as usize).map_err(VmError::kvm("KVM_SET_TSS_ADDR"))?;
    timeline.host_call("KVM_CREATE_IRQCHIP", || vm.create_irq_chip()).map_err(VmError::kvm("KVM_CREATE_IRQCHIP"))?;
    let pit = kvm_pit_config { flags: KVM_PIT_SPEAKER_DUMMY, ..Default::default() };
    vm.create_pit2(pit).map_err(VmError::kvm("KVM_CREATE_PIT2"))
}

/// What the VM thread makes: the VM with its irqchip and PIT, guest memory registered.
struct BuiltVm {
    fd: VmFd,
    created: Instant,
    registered: Instant,
}

fn build_vm(kvm: &Kvm, memory: &GuestMemoryMmap, timeline: &mut Timeline) -> Result<BuiltVm, VmError> {
    let fd = timeline.host_call("KVM_CREATE_VM", || create_vm(kvm))?;
    setup_platform(&fd, timeline)?;
    let created = Instant::now();
    timeline.host_call("KVM_SET_USER_MEMORY_REGION", || memory::register(&fd, memory))?;
    Ok(BuiltVm { fd, created, registered: Instant::now() })
}

/// Everything guest memory holds at entry: boot tables, the payload, ACPI.
fn fill_memory(
    memory: &GuestMemoryMmap,
    layout: &MemoryLayout,
    config: &VmConfig,
    timeline: &mut Timeline,
) -> Result<(u64, Option<LoadedKernel>), VmError> {
    write_boot_tables(memory, config.vcpus, config.topology.is_none())?;
    let loaded = load_payload(memory, layout, &config.payload, timeline)?;
    if let Some(t) = &config.topology {
        topology_setup::write_acpi(memory, layout, t)?;
    }
    timeline.mark("tables_written");
    Ok(loaded)
}

/// GDT, IDT (one zero gate) and identity page tables: the state every entry path shares.
fn write_boot_tables(memory: &GuestMemoryMmap, vcpus: u32, mp_table: bool) -> Result<(), VmError> {
    let gdt: Vec<u8> = gdt::boot_gdt().iter().flat_map(|e| e.to_le_bytes()).collect();
    memory.write_slice(&gdt, GuestAddress(GDT_ADDR)).map_err(VmError::guest_write("GDT", GDT_ADDR))?;
    memory.write_obj(0u64, GuestAddress(IDT_ADDR)).map_err(VmError::guest_write("IDT", IDT_ADDR))?;
    paging::write(memory)?;
    // With ACPI (a topology) Linux ignores the MP table, so it is only written without one.
    if mp_table { mptable::write(memory, vcpus) } else { Ok(()) }
}

/// Loads the payload and writes the zero page; returns the entry point.
fn load_payload(
    memory: &GuestMemoryMmap,
    layout: &MemoryLayout,
    payload: &Payload,
    timeline: &mut Timeline,
) -> Result<(u64, Option<LoadedKernel>), VmError> {
    match payload {
        Payload::Linux { kernel, initrd, cmdline } => {
            let loaded = boot::load_kernel(memory, layout, kernel)?;
            timeline.mark("kernel_loaded");
            boot::write_cmdline(memory, cmdline, loaded.cmdline_max())?;
            let initrd: Option<InitrdPlacement> =
                (!initrd.is_empty()).then(|| boot::load_initrd(memory, layout, &loaded, initrd)).transpose()?;
            timeline.mark("initrd_loaded");
            let params = boot::boot_params(Some(&loaded), cmdline.len(), initrd, &layout.e820());
            boot::write_boot_params(memory, &params)?;
            Ok((loaded.entry, Some(loaded)))
        }
        Payload::Raw { segments, entry } => {
            boot::load_raw(memory, layout, segments)?;
            timeline.mark("kernel_loaded");
            let params = boot::boot_params(None, 0, None, &layout.e820());
            boot::write_boot_params(memory, &params)?;
            Ok((*entry, None))
        }
    }
}

fn create_devices(vm: &VmFd, config: &VmConfig) -> Result<Devices, VmError> {
    let irq = |gsi: u32| -> Result<EventFd, VmError> {
        let evt = EventFd::new(libc::EFD_NONBLOCK)
            .map_err(|source| VmError::Os { what: "creating a UART interrupt eventfd", source })?;
        vm.register_irqfd(&evt, gsi).map_err(VmError::kvm("KVM_IRQFD"))?;
        Ok(evt)
    };
    let console = Arc::new(Mutex::new(ConsoleLog::new(config.console_capacity, config.echo_console)));
    let com2_out = Arc::new(ByteStream::default());
    Ok(Devices::new(
        Uart::new(irq(COM1_IRQ)?, SharedConsole(console.clone())),
        Uart::new(irq(COM2_IRQ)?, StreamWriter(com2_out.clone())),
        console,
        com2_out,
    ))
}

fn create_vcpus(kvm: &Kvm, vm: &VmFd, config: &VmConfig, entry: u64) -> Result<Vec<VcpuFd>, VmError> {
    let mut base = kvm.get_supported_cpuid(KVM_MAX_CPUID_ENTRIES).map_err(VmError::kvm("KVM_GET_SUPPORTED_CPUID"))?;
    super::cpuid::add_emulated_features(&mut base, kvm.check_extension(Cap::TscDeadlineTimer));
    let topology_cpuid = config.topology.as_ref().map(|t| topology_setup::cpuid_tables(&base, t));
    (0..config.vcpus)
        .map(|index| {
            let id = topology_setup::vcpu_id(config.topology.as_ref(), index);
            let fd = vm.create_vcpu(id).map_err(VmError::vcpu(index, "KVM_CREATE_VCPU"))?;
            let start = if index == 0 || config.ap_start == ApStart::Runnable {
                StartMode::Entry(entry)
            } else {
                StartMode::WaitForSipi
            };
            vcpu::configure(&fd, index, &base, start)?;
            if let Some(tables) = &topology_cpuid {
                // Replaces the identity-ID table `configure` set (allowed before the first KVM_RUN).
                fd.set_cpuid2(&tables[index as usize]).map_err(VmError::vcpu(index, "KVM_SET_CPUID2"))?;
            }
            Ok(fd)
        })
        .collect()
}

impl Vm {
    /// Builds the VM: KVM objects, memory, payload, devices and vCPUs. Nothing runs yet.
    pub fn new(config: VmConfig) -> Result<Self, VmError> {
        let mut timeline = Timeline::with_marks(&config.marks);
        timeline.mark("vmm_start");
        let layout = MemoryLayout::new(config.memory_mib)?;
        memory::check_fits_host(config.memory_mib, memory::host_memory_mib())?;
        let (kvm, flavour) = open_kvm()?;
        check_vcpus(&kvm, config.vcpus)?;
        if let Some(t) = &config.topology {
            topology_setup::check(t, config.vcpus)?;
        }
        vcpu::install_kick_handler()?;
        timeline.mark("kvm_opened");
        let memory = memory::allocate(&layout)?;
        timeline.mark("memory_mapped");

        // A loader thread fills guest memory (boot tables, kernel, initrd, ACPI) while this one
        // creates the VM and registers the memory: the host kernel's part overlaps the copying.
        // It is this thread that makes the KVM calls because the slowest of them sleeps (a
        // memslot update waits for an SRCU grace period, 4-8 ms on PVM; KVM_CREATE_IRQCHIP
        // took ~120 ms on a loaded PVM host), handing its CPU to the loader on a busy host.
        let (built, loaded, fill_done) = std::thread::scope(|scope| {
            let fill = || {
                let mut t = Timeline::detached();
                let loaded = fill_memory(&memory, &layout, &config, &mut t);
                (loaded, t, Instant::now())
            };
            let loader = std::thread::Builder::new().name("ktstr-vm-load".into()).spawn_scoped(scope, fill);
            let built = build_vm(&kvm, &memory, &mut timeline);
            let (loaded, fill_timeline, done) = match loader {
                Ok(handle) => handle
                    .join()
                    .unwrap_or_else(|_| (Err(VmError::LoaderPanicked), Timeline::detached(), Instant::now())),
                Err(_) => fill(), // no thread to spare: in sequence
            };
            timeline.adopt_phases(fill_timeline);
            (built, loaded, done)
        });
        let (built, (entry, kernel)) = (built?, loaded?);
        // The host kernel's share of the time to the first KVM_RUN: how long the calls went on
        // after guest memory was filled.
        timeline.set_host_wait(built.registered.saturating_duration_since(fill_done));
        timeline.mark_at("vm_created", built.created);
        timeline.mark_at("memory_ready", built.registered);
        timeline.mark("vm_joined");
        let vm_fd = built.fd;

        let devices = Arc::new(create_devices(&vm_fd, &config)?);
        let vcpus = create_vcpus(&kvm, &vm_fd, &config, entry)?;
        timeline.mark("vcpus_ready");
        Ok(Self {
            config,
            flavour,
            vcpus,
            vm_fd,
            _kvm: kvm,
            memory: Arc::new(memory),
            devices,
            kernel,
            timeline,
            events: mpsc::channel(),
        })
    }

    pub fn com2(&self) -> Com2 {
        Com2 { devices: self.devices.clone() }
    }

    pub fn console_tap(&self) -> ConsoleTap {
        ConsoleTap(lock(&self.devices.console).tap())
    }

    pub fn stopper(&self) -> Stopper {
        Stopper(self.events.0.clone())
    }

    pub fn flavour(&self) -> &KvmFlavour {
        &self.flavour
    }

    /// The loaded kernel (None for raw payloads).
    pub fn kernel(&self) -> Option<&LoadedKernel> {
        self.kernel.as_ref()
    }

    /// Runs until the guest stops, the watchdog fires or a stop is requested; then tears the
    /// VM down (every vCPU thread joined) and reports.
    pub fn run(self) -> Result<VmOutcome, VmError> {
        let Vm { config, flavour, vcpus, vm_fd, _kvm, memory, devices, kernel: _, mut timeline, events: (tx, rx) } =
            self;
        let stop = Arc::new(AtomicBool::new(false));
        let first_run = Arc::new(OnceLock::new());
        let pvm_fixups = flavour == KvmFlavour::Pvm;
        let fixups_done = Arc::new(AtomicU64::new(0));
        let mut threads = Vec::new();
        for (index, fd) in vcpus.into_iter().enumerate() {
            let thread = VcpuThread {
                index: index as u32,
                fd,
                devices: devices.clone(),
                memory: memory.clone(),
                stop: stop.clone(),
                events: tx.clone(),
                first_run: first_run.clone(),
                pvm_fixups,
                fixups_done: fixups_done.clone(),
            };
            let handle = std::thread::Builder::new().name(format!("vcpu{index}")).spawn(move || thread.run());
            match handle {
                Ok(h) => threads.push(Some(h)),
                Err(source) => {
                    teardown(&stop, &devices, &mut threads, &rx);
                    return Err(VmError::Os { what: "spawning a vCPU thread", source });
                }
            }
        }
        drop(tx);
        let exit = watch(&rx, config.timeout);
        timeline.mark("exit");
        let detached_vcpus = teardown(&stop, &devices, &mut threads, &rx);
        drop(vm_fd);
        drop(memory);
        timeline.mark("teardown");
        let mut outcome = outcome(exit, &devices, timeline, first_run.get().copied());
        outcome.detached_vcpus = detached_vcpus;
        outcome.emulation_fixups = fixups_done.load(Ordering::Relaxed);
        Ok(outcome)
    }
}

/// Waits for the first terminal event, the watchdog, or Ctrl-C.
fn watch(rx: &Receiver<Event>, timeout: Duration) -> VmExit {
    let deadline = Instant::now() + timeout;
    // Ctrl-C only sets a flag (crate::interrupt), so it is polled at this period.
    let poll = Duration::from_millis(100);
    loop {
        let now = Instant::now();
        if now >= deadline {
            return VmExit::Timeout;
        }
        match rx.recv_timeout((deadline - now).min(poll)) {
            Ok(Event::Stopped { vcpu, why }) => return classify(vcpu, why),
            Ok(Event::StopRequested) => return VmExit::Interrupted,
            Ok(Event::Exited { .. }) => {}
            Err(RecvTimeoutError::Timeout) => {
                if crate::interrupt::interrupted() {
                    return VmExit::Interrupted;
                }
            }
            Err(RecvTimeoutError::Disconnected) => {
                return VmExit::VcpuError { vcpu: 0, error: "every vCPU thread ended without a reason".into() };
            }
        }
    }
}

fn classify(vcpu: u32, why: VcpuStop) -> VmExit {
    match why {
        VcpuStop::Reset => VmExit::Reset,
        VcpuStop::PowerOff => VmExit::PowerOff,
        VcpuStop::Crash => VmExit::Panic("KVM reported a guest crash event".into()),
        VcpuStop::TripleFault(regs) => VmExit::TripleFault { regs },
        VcpuStop::InternalError { suberror, data, regs } => VmExit::InternalError { suberror, data, regs },
        VcpuStop::FailEntry { reason, regs } => VmExit::FailEntry { reason, regs },
        VcpuStop::Error(error) => VmExit::VcpuError { vcpu, error },
    }
}

/// How long teardown waits for kicked vCPU threads. On hardware KVM a kick takes effect at
/// once; under PVM a vCPU in emulated ring-0 code notices signals only now and then (measured:
/// 15 ms to over a minute for a spinning guest), so a thread still in KVM_RUN after this is
/// left to finish on its own (it holds its own references to the VM and guest memory).
pub const TEARDOWN_GRACE: Duration = Duration::from_secs(2);

/// Stops every vCPU thread: stop flag, close the COM2 stream (unblocks a writer held back),
/// then kick the threads still running until each has finished (joined) or the grace period
/// is over. Returns how many threads were left running.
fn teardown(stop: &AtomicBool, devices: &Devices, threads: &mut [Option<JoinHandle<()>>], rx: &Receiver<Event>) -> u32 {
    stop.store(true, Ordering::SeqCst);
    devices.com2_out.close();
    lock(&devices.console).close_tap();
    let deadline = Instant::now() + TEARDOWN_GRACE;
    loop {
        let mut running = 0;
        for slot in threads.iter_mut() {
            match slot.take() {
                Some(h) if h.is_finished() => {
                    let _ = h.join();
                }
                Some(h) => {
                    // The kick sets immediate_exit, so one per thread suffices on hardware KVM;
                    // repeating it covers a thread that had not yet published its kvm_run
                    // pointer, and PVM's emulator, which checks for signals only now and then.
                    let _ = h.kill(vcpu::kick_signal());
                    *slot = Some(h);
                    running += 1;
                }
                None => {}
            }
        }
        if running == 0 || Instant::now() >= deadline {
            // Dropping a JoinHandle detaches its thread.
            threads.iter_mut().for_each(|t| drop(t.take()));
            return running;
        }
        // Every thread sends `Exited` as its last act: wake on that, or re-kick.
        let _ = rx.recv_timeout(Duration::from_millis(20));
    }
}

/// The console text to report for a panic: from a few lines before "Kernel panic" on.
pub fn panic_text(console: &str) -> Option<String> {
    const CONTEXT_LINES: usize = 30;
    let at = console.find("Kernel panic")?;
    let line_start = console[..at].rfind('\n').map_or(0, |i| i + 1);
    let start = console[..line_start]
        .char_indices()
        .rev()
        .filter(|(_, c)| *c == '\n')
        .nth(CONTEXT_LINES)
        .map_or(0, |(i, _)| i + 1);
    Some(console[start..].to_string())
}

fn outcome(exit: VmExit, devices: &Devices, mut timeline: Timeline, first_run: Option<Instant>) -> VmOutcome {
    let console = lock(&devices.console).snapshot();
    let first_console = lock(&devices.console).first_byte();
    let exit = match exit {
        VmExit::InternalError { .. } | VmExit::Interrupted | VmExit::VcpuError { .. } => exit,
        other => panic_text(&console.text()).map_or(other, VmExit::Panic),
    };
    for (name, at) in [
        ("first_kvm_run", first_run),
        ("first_console_byte", first_console),
        ("first_com2_byte", devices.com2_out.first_byte()),
    ] {
        if let Some(at) = at {
            timeline.mark_at(name, at);
        }
    }
    let milestones = devices.milestones().into_iter().map(|(v, at)| (v, timeline.since_origin(at))).collect();
    let host_calls = timeline.host_calls().to_vec();
    let host_wait = timeline.host_wait();
    VmOutcome {
        exit,
        console,
        host_calls,
        host_wait,
        phases: timeline.into_sorted(),
        milestones,
        unhandled: devices.unhandled(),
        com2_bytes: devices.com2_out.total(),
        detached_vcpus: 0,
        emulation_fixups: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn panic_text_starts_before_the_panic_line() {
        let mut console = String::new();
        for i in 0..50 {
            console.push_str(&format!("line {i}\n"));
        }
        console.push_str("Kernel panic - not syncing: VFS: Unable to mount root fs\n");
        console.push_str("---[ end Kernel panic ]---\n");
        let text = panic_text(&console).unwrap();
        assert!(text.starts_with("line 20\n"), "{text}");
        assert!(text.contains("Unable to mount root fs"));
        assert!(panic_text("all fine\n").is_none());
        assert!(panic_text("Kernel panic at start").unwrap().starts_with("Kernel panic"));
    }

    #[test]
    fn clean_exits() {
        assert!(VmExit::Reset.is_clean());
        assert!(VmExit::PowerOff.is_clean());
        assert!(!VmExit::Timeout.is_clean());
        assert!(!VmExit::Panic(String::new()).is_clean());
    }

    #[test]
    fn watchdog_fires_and_stop_requests_win() {
        let (tx, rx) = mpsc::channel();
        let start = Instant::now();
        assert_eq!(watch(&rx, Duration::from_millis(50)), VmExit::Timeout);
        assert!(start.elapsed() >= Duration::from_millis(50));
        Stopper(tx.clone()).stop();
        assert_eq!(watch(&rx, Duration::from_secs(60)), VmExit::Interrupted);
        tx.send(Event::Stopped { vcpu: 1, why: VcpuStop::Reset }).unwrap();
        assert_eq!(watch(&rx, Duration::from_secs(60)), VmExit::Reset);
    }

    #[test]
    fn config_defaults() {
        let c = VmConfig::raw_code(0x10_0000, vec![0xf4]);
        assert_eq!((c.memory_mib, c.vcpus), (256, 1));
        assert_eq!(c.ap_start, ApStart::WaitForSipi);
        assert!(matches!(c.payload, Payload::Raw { entry: 0x10_0000, .. }));
    }
}
