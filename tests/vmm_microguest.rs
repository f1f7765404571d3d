//! Ring-0 micro-guests on this machine's own /dev/kvm (PVM on the project's machines, hardware
//! KVM elsewhere). Each guest is a few instructions assembled here with iced-x86 and entered in
//! long mode through the same setup path the VMM uses for kernels; each test asserts what the
//! host sees. Guest code sticks to mov/out/in/loop/hlt-style instructions: PVM's emulator
//! cannot run some others (see ARCHITECTURE.md, "Test tiers").

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use iced_x86::code_asm::*;
use ktstr_host::vmm::{
    ApStart, KvmFlavour, MILESTONE_PORT, Payload, RecvError, TEARDOWN_GRACE, Vm, VmConfig, VmError, VmExit, VmOutcome,
    detect,
};

const CODE: u64 = 0x10_0000;
/// Scratch data for guests (counters), well away from the code.
const DATA: u64 = 0x20_0000;
const COM1: u32 = 0x3f8;
const COM2: u32 = 0x2f8;

/// The reason to skip, if this host has no usable KVM.
fn no_kvm() -> Option<String> {
    match detect() {
        KvmFlavour::Unavailable(why) => Some(why),
        _ => None,
    }
}

macro_rules! require_kvm {
    () => {
        if let Some(why) = no_kvm() {
            common::skip(why);
            return;
        }
    };
}

type Asm = CodeAssembler;

fn assemble(at: u64, body: impl FnOnce(&mut Asm) -> Result<(), IcedError>) -> Vec<u8> {
    let mut a = Asm::new(64).unwrap();
    body(&mut a).unwrap();
    a.assemble(at).unwrap()
}

/// out `port`, each byte (no LSR polling: the emulated THR is always empty).
fn put(a: &mut Asm, port: u32, bytes: &[u8]) -> Result<(), IcedError> {
    a.mov(dx, port)?;
    for &b in bytes {
        a.mov(al, b as u32)?;
        a.out(dx, al)?;
    }
    Ok(())
}

/// i8042 "pulse reset", then park in case the VMM ignored it.
fn reset(a: &mut Asm) -> Result<(), IcedError> {
    a.mov(al, 0xfe)?;
    a.out(0x64, al)?;
    park(a)
}

/// Interrupts off, halt forever.
fn park(a: &mut Asm) -> Result<(), IcedError> {
    let mut l = a.create_label();
    a.cli()?;
    a.set_label(&mut l)?;
    a.hlt()?;
    a.jmp(l)
}

fn config(code: Vec<u8>) -> VmConfig {
    let mut c = VmConfig::raw_code(CODE, code);
    c.memory_mib = 64;
    c.timeout = Duration::from_secs(30);
    c
}

fn run(config: VmConfig) -> VmOutcome {
    Vm::new(config).expect("VM setup").run().expect("VM run")
}

fn drain(com2: &ktstr_host::vmm::Com2) -> Vec<u8> {
    let mut out = Vec::new();
    while let Ok(bytes) = com2.recv(Duration::ZERO) {
        out.extend(bytes);
    }
    out
}

#[test]
fn writes_reach_com1_console_and_com2_stream() {
    require_kvm!();
    let code = assemble(CODE, |a| {
        a.mov(dx, MILESTONE_PORT as u32)?;
        a.mov(eax, 1)?;
        a.out(dx, eax)?;
        put(a, COM1, b"hello\n")?;
        put(a, COM2, &[0x00, 0x01, 0x7f, 0xfe, 0xff, b'K'])?;
        a.mov(dx, MILESTONE_PORT as u32)?;
        a.mov(eax, 2)?;
        a.out(dx, eax)?;
        reset(a)
    });
    let vm = Vm::new(config(code)).unwrap();
    let com2 = vm.com2();
    let out = vm.run().unwrap();
    assert_eq!(out.exit, VmExit::Reset, "{out:?}");
    assert_eq!(out.console.text(), "hello\n");
    assert_eq!(out.console.total_bytes, 6);
    assert_eq!(drain(&com2), [0x00, 0x01, 0x7f, 0xfe, 0xff, b'K']);
    assert_eq!(out.com2_bytes, 6);
    let codes: Vec<u32> = out.milestones.iter().map(|m| m.0).collect();
    assert_eq!(codes, [1, 2]);
    assert!(out.milestones[0].1 <= out.milestones[1].1);
    // Every phase present, in the order a boot goes through them.
    let order = [
        "vmm_start",
        "kvm_opened",
        "memory_mapped",
        "kernel_loaded",
        "tables_written",
        "vm_joined",
        "vcpus_ready",
        "first_kvm_run",
        "first_console_byte",
        "first_com2_byte",
        "exit",
        "teardown",
    ];
    let times: Vec<Duration> =
        order.iter().map(|p| out.phase(p).unwrap_or_else(|| panic!("phase {p} missing: {:?}", out.phases))).collect();
    assert!(times.windows(2).all(|w| w[0] <= w[1]), "{:?}", out.phases);
    assert!(out.milestones[0].1 >= out.phase("first_kvm_run").unwrap());
    // The VM itself is made on another thread, overlapping the loading, and the host
    // kernel's share is timed separately (PVM can spend ~120 ms in KVM_CREATE_IRQCHIP).
    let vm_order = ["memory_mapped", "vm_created", "memory_ready", "vm_joined"];
    let vm_times: Vec<Duration> = vm_order.iter().map(|p| out.phase(p).unwrap()).collect();
    assert!(vm_times.windows(2).all(|w| w[0] <= w[1]), "{:?}", out.phases);
    let calls: Vec<&str> = out.host_calls.iter().map(|c| c.0).collect();
    assert_eq!(calls, ["KVM_CREATE_VM", "KVM_CREATE_IRQCHIP", "KVM_SET_USER_MEMORY_REGION"]);
    let host: Duration = out.host_calls.iter().map(|c| c.1).sum();
    assert!(host <= vm_times[3] - vm_times[0], "{:?}", out.host_calls);
    let (filled, joined) = (out.phase("tables_written").unwrap(), vm_times[3]);
    assert!(out.host_wait <= joined - filled, "waited {:?}: {:?}", out.host_wait, out.phases);
    // The guest touched nothing but its devices.
    assert_eq!(out.unhandled, Default::default());
}

#[test]
fn com2_echoes_bytes_the_host_injects() {
    require_kvm!();
    let code = assemble(CODE, |a| {
        put(a, COM2, b"R")?;
        let mut wait = a.create_label();
        let mut done = a.create_label();
        a.set_label(&mut wait)?;
        a.mov(dx, COM2 + 5)?; // LSR
        a.in_(al, dx)?;
        a.test(al, 1)?; // data ready
        a.jz(wait)?;
        a.mov(dx, COM2)?;
        a.in_(al, dx)?;
        a.out(dx, al)?;
        a.cmp(al, b'\n' as i32)?;
        a.je(done)?;
        a.jmp(wait)?;
        a.set_label(&mut done)?;
        reset(a)
    });
    let vm = Vm::new(config(code)).unwrap();
    let com2 = vm.com2();
    let host = std::thread::spawn(move || {
        let mut got = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        while !got.ends_with(b"\n") && Instant::now() < deadline {
            match com2.recv(Duration::from_secs(1)) {
                Ok(bytes) => {
                    if got.is_empty() && bytes.first() == Some(&b'R') {
                        // More than one FIFO's worth (64 bytes) to exercise the refill path.
                        let mut msg = b"ping:".repeat(20);
                        msg.push(b'\n');
                        com2.send(&msg);
                    }
                    got.extend(bytes);
                }
                Err(RecvError::Timeout) => {}
                Err(RecvError::Closed) => break,
            }
        }
        got
    });
    let out = vm.run().unwrap();
    let got = host.join().unwrap();
    assert_eq!(out.exit, VmExit::Reset, "{out:?}");
    let mut want = b"R".to_vec();
    want.extend(b"ping:".repeat(20));
    want.push(b'\n');
    assert_eq!(String::from_utf8_lossy(&got), String::from_utf8_lossy(&want));
}

/// Every vCPU reports (its index << 4 | CPUID leaf 1 EBX[31:24]) on COM2; the BSP waits until
/// all have checked in, then resets.
fn cpuid_report(vcpus: u32) -> Vec<u8> {
    assemble(CODE, |a| {
        a.mov(eax, 1)?;
        a.cpuid()?;
        a.shr(ebx, 24)?;
        a.mov(eax, edi)?; // RDI = vCPU index (ApStart::Runnable)
        a.shl(eax, 4)?;
        a.or(eax, ebx)?;
        a.mov(dx, COM2)?;
        a.out(dx, al)?;
        a.mov(rbx, DATA)?;
        a.lock().inc(dword_ptr(rbx))?;
        let mut ap = a.create_label();
        let mut wait = a.create_label();
        a.test(edi, edi)?;
        a.jnz(ap)?;
        a.set_label(&mut wait)?;
        a.cmp(dword_ptr(rbx), vcpus as i32)?;
        a.jne(wait)?;
        reset(a)?;
        a.set_label(&mut ap)?;
        park(a)
    })
}

#[test]
fn each_vcpu_sees_its_own_apic_id_in_cpuid() {
    require_kvm!();
    let vcpus = 4;
    let mut c = config(cpuid_report(vcpus));
    c.vcpus = vcpus;
    c.ap_start = ApStart::Runnable;
    let vm = Vm::new(c).unwrap();
    let com2 = vm.com2();
    let out = vm.run().unwrap();
    assert_eq!(out.exit, VmExit::Reset, "{out:?}");
    let mut got = drain(&com2);
    got.sort();
    assert_eq!(got, [0x00, 0x11, 0x22, 0x33]);
}

/// Real-mode SIPI trampoline at `TRAMPOLINE`: straight from real mode into long mode with the
/// VMM's GDT (0x500) and identity page tables (0x9000), then far jump to `ap64`.
const TRAMPOLINE: u64 = 0x1000;
const GDT_DESCRIPTOR: u64 = TRAMPOLINE + 0x80;
const AP64: u64 = TRAMPOLINE + 0x100;

fn trampoline(ap64: Vec<u8>) -> Vec<u8> {
    let mut blob = {
        let mut a = Asm::new(16).unwrap();
        a.cli().unwrap();
        a.xor(ax, ax).unwrap();
        a.mov(ds, ax).unwrap();
        a.lgdt(ptr(GDT_DESCRIPTOR)).unwrap();
        a.mov(eax, cr4).unwrap();
        a.or(eax, 1 << 5).unwrap(); // PAE
        a.mov(cr4, eax).unwrap();
        a.mov(eax, 0x9000u32).unwrap();
        a.mov(cr3, eax).unwrap();
        a.mov(ecx, 0xc000_0080u32).unwrap(); // EFER
        a.rdmsr().unwrap();
        a.or(eax, 1 << 8).unwrap(); // LME
        a.wrmsr().unwrap();
        a.mov(eax, cr0).unwrap();
        a.or(eax, 0x8000_0001u32 as i32).unwrap(); // PG | PE
        a.mov(cr0, eax).unwrap();
        // jmp far 0x10:AP64 (ptr16:16)
        let [lo, hi] = (AP64 as u16).to_le_bytes();
        a.db(&[0xea, lo, hi, 0x10, 0x00]).unwrap();
        a.assemble(TRAMPOLINE).unwrap()
    };
    blob.resize((GDT_DESCRIPTOR - TRAMPOLINE) as usize, 0xf4);
    blob.extend(47u16.to_le_bytes()); // limit of the VMM's 6-entry GDT
    blob.extend(0x500u32.to_le_bytes());
    blob.resize((AP64 - TRAMPOLINE) as usize, 0xf4);
    blob.extend(ap64);
    blob
}

/// BSP: INIT + SIPI to all other vCPUs through the LAPIC ICR, wait for them to check in,
/// report itself, reset. AP: report (0x80 | APIC ID from CPUID) on COM2, check in, park.
fn sipi_guest(vcpus: u32) -> (Vec<u8>, Vec<u8>) {
    let report = |a: &mut Asm| -> Result<(), IcedError> {
        a.mov(eax, 1)?;
        a.cpuid()?;
        a.shr(ebx, 24)?;
        a.mov(eax, ebx)?;
        a.or(eax, 0x80)?;
        a.mov(dx, COM2)?;
        a.out(dx, al)
    };
    let ap = assemble(AP64, |a| {
        report(a)?;
        a.mov(rbx, DATA)?;
        a.lock().inc(dword_ptr(rbx))?;
        park(a)
    });
    let bsp = assemble(CODE, |a| {
        a.mov(rbx, 0xfee0_0000u64)?;
        a.mov(dword_ptr(rbx + 0x310), 0)?;
        a.mov(dword_ptr(rbx + 0x300), 0x000c_4500)?; // INIT, all excluding self
        a.mov(dword_ptr(rbx + 0x300), 0x000c_4600 | (TRAMPOLINE >> 12) as i32)?; // SIPI
        a.mov(rbx, DATA)?;
        let mut wait = a.create_label();
        a.set_label(&mut wait)?;
        a.cmp(dword_ptr(rbx), (vcpus - 1) as i32)?;
        a.jne(wait)?;
        report(a)?;
        reset(a)
    });
    (bsp, trampoline(ap))
}

#[test]
fn aps_started_with_init_sipi_report_their_apic_ids() {
    require_kvm!();
    let vcpus = 3;
    let (bsp, tramp) = sipi_guest(vcpus);
    let mut c = config(bsp);
    c.vcpus = vcpus;
    c.timeout = Duration::from_secs(60);
    if let Payload::Raw { segments, .. } = &mut c.payload {
        segments.push((TRAMPOLINE, tramp));
    }
    let vm = Vm::new(c).unwrap();
    let com2 = vm.com2();
    let out = vm.run().unwrap();
    let got = drain(&com2);
    assert_eq!(out.exit, VmExit::Reset, "{out:?} com2={got:x?}");
    // APs first (the BSP waits for them), in any order; the BSP's report last.
    assert_eq!(got.len(), 3, "{got:x?}");
    let mut aps = got[..2].to_vec();
    aps.sort();
    assert_eq!(aps, [0x81, 0x82]);
    assert_eq!(got[2], 0x80);
}

#[test]
fn panic_text_on_the_console_turns_a_reset_into_a_panic() {
    require_kvm!();
    let code = assemble(CODE, |a| {
        put(a, COM1, b"booting\nKernel panic - not syncing: test\n")?;
        reset(a)
    });
    let out = run(config(code));
    match out.exit {
        VmExit::Panic(text) => assert_eq!(text, "booting\nKernel panic - not syncing: test\n"),
        other => panic!("expected a panic, got {other:?}"),
    }
}

#[test]
fn a_guest_above_3_gib_sees_ram_above_the_mmio_hole() {
    require_kvm!();
    // The guest reports from its zero page (RSI): the e820 entry count and the start and
    // size (in GiB) of the last entry.
    let code = assemble(CODE, |a| {
        a.mov(dx, COM2)?;
        a.mov(al, byte_ptr(rsi + 0x1e8))?;
        a.out(dx, al)?;
        a.movzx(ecx, al)?;
        a.dec(ecx)?;
        a.imul_3(ecx, ecx, 20)?;
        a.add(rcx, rsi)?;
        a.mov(rax, qword_ptr(rcx + 0x2d0))?;
        a.shr(rax, 30)?;
        a.out(dx, al)?;
        a.mov(rax, qword_ptr(rcx + 0x2d8))?;
        a.shr(rax, 30)?;
        a.out(dx, al)?;
        reset(a)
    });
    let mut c = config(code);
    c.memory_mib = 5 * 1024; // lazily mapped: costs nothing until touched
    let vm = Vm::new(c).unwrap();
    let com2 = vm.com2();
    let out = vm.run().unwrap();
    assert_eq!(out.exit, VmExit::Reset, "{out:?}");
    // Four entries; the last is 2 GiB of RAM at 4 GiB.
    assert_eq!(drain(&com2), [4, 4, 2]);
}

#[test]
fn i8042_reset_is_a_clean_exit() {
    require_kvm!();
    let out = run(config(assemble(CODE, reset)));
    assert_eq!(out.exit, VmExit::Reset);
    assert!(out.exit.is_clean());
    assert_eq!(out.console.total_bytes, 0);
}

/// The watchdog's timeout plus the time teardown may take: the grace period for kicked
/// vCPUs (only ever used under PVM) and slack for a loaded machine.
fn watchdog_bound(timeout: Duration) -> Duration {
    timeout + TEARDOWN_GRACE + Duration::from_secs(5)
}

/// On hardware KVM a kick always gets a vCPU out of KVM_RUN; under PVM a vCPU in emulated
/// ring-0 code may stay in for a while and is then left to finish on its own.
fn assert_vcpus_joined(out: &VmOutcome) {
    if matches!(detect(), KvmFlavour::Hardware(_)) {
        assert_eq!(out.detached_vcpus, 0, "{out:?}");
    }
}

#[test]
fn watchdog_stops_a_guest_halted_with_interrupts_off() {
    require_kvm!();
    let mut c = config(assemble(CODE, park));
    c.timeout = Duration::from_millis(300);
    let start = Instant::now();
    let out = run(c);
    assert_eq!(out.exit, VmExit::Timeout);
    assert!(out.phase("exit").unwrap() >= out.phase("vcpus_ready").unwrap() + Duration::from_millis(300));
    assert!(start.elapsed() < watchdog_bound(Duration::from_millis(300)), "{:?}", out.phases);
    assert_vcpus_joined(&out);
}

#[test]
fn watchdog_stops_a_busy_guest() {
    require_kvm!();
    // Spins without halting, writing the UART scratch register now and then like a hung
    // kernel still touching a device; the I/O exits keep PVM's emulator from holding the vCPU.
    let code = assemble(CODE, |a| {
        let mut outer = a.create_label();
        let mut inner = a.create_label();
        a.mov(dx, COM1 + 7)?;
        a.set_label(&mut outer)?;
        a.mov(ecx, 1000)?;
        a.set_label(&mut inner)?;
        a.dec(ecx)?;
        a.jnz(inner)?;
        a.out(dx, al)?;
        a.jmp(outer)
    });
    let mut c = config(code);
    c.timeout = Duration::from_millis(300);
    let start = Instant::now();
    let out = run(c);
    assert_eq!(out.exit, VmExit::Timeout);
    assert!(start.elapsed() < watchdog_bound(Duration::from_millis(300)), "{:?}", out.phases);
    // On hardware KVM a vCPU that exits to the VMM is always joined. Under PVM even a guest
    // that exits every ~1 ms was once seen to miss every kick for the 2 s grace (CI, loaded
    // host), so there the teardown is only required to end the run, which it did above.
    assert_vcpus_joined(&out);
    assert_eq!(out.console.total_bytes, 0);
}

#[test]
fn ud2_with_an_empty_idt_is_a_triple_fault_with_registers() {
    require_kvm!();
    let code = assemble(CODE, |a| {
        a.mov(eax, 0x1234_5678)?;
        a.ud2()
    });
    let out = run(config(code));
    match &out.exit {
        VmExit::TripleFault { regs: Some(regs) } => {
            assert_eq!(regs.rax, 0x1234_5678, "{regs}");
            assert_eq!(regs.rip, CODE + 5, "rip at the ud2: {regs}");
            assert_eq!(regs.cs, 0x10);
        }
        other => panic!("expected a triple fault, got {other:?}"),
    }
}

#[test]
fn an_instruction_kvm_cannot_emulate_is_an_internal_error_with_registers() {
    require_kvm!();
    // POPCNT runs natively on hardware KVM; PVM's emulator cannot run it (environment notes).
    let popcnt_at = CODE + 5;
    let code = assemble(CODE, |a| {
        a.mov(eax, 0xf0f0)?; // 5 bytes
        a.popcnt(ebx, eax)?;
        a.mov(dx, COM2)?;
        a.mov(al, bl)?;
        a.out(dx, al)?;
        reset(a)
    });
    let vm = Vm::new(config(code)).unwrap();
    let com2 = vm.com2();
    let out = vm.run().unwrap();
    match (detect(), &out.exit) {
        (KvmFlavour::Pvm, VmExit::InternalError { suberror, regs: Some(regs), .. }) => {
            assert_eq!(*suberror, 1, "KVM_INTERNAL_ERROR_EMULATION");
            assert_eq!(regs.rip, popcnt_at, "{regs}");
            assert_eq!(regs.rax, 0xf0f0);
            assert!(drain(&com2).is_empty());
        }
        (KvmFlavour::Hardware(_), VmExit::Reset) => assert_eq!(drain(&com2), [8]),
        (flavour, exit) => panic!("{flavour:?}: unexpected {exit:?}"),
    }
}

#[test]
fn int3_with_an_empty_idt_is_a_triple_fault_on_every_flavour() {
    require_kvm!();
    // PVM's emulator cannot run int3; the VMM delivers the #BP itself, so the guest sees the
    // same architectural outcome as on hardware: #BP -> #GP (vector beyond the IDT) -> #DF ->
    // shutdown.
    let code = assemble(CODE, |a| {
        a.mov(eax, 0xb9)?;
        a.int3()
    });
    let out = run(config(code));
    match &out.exit {
        VmExit::TripleFault { regs: Some(regs) } => assert_eq!(regs.rax, 0xb9, "{regs}"),
        other => panic!("expected a triple fault, got {other:?}"),
    }
    let expected_fixups = u64::from(detect() == KvmFlavour::Pvm);
    assert_eq!(out.emulation_fixups, expected_fixups);
}

#[test]
fn fwait_runs_on_every_flavour() {
    require_kvm!();
    let code = assemble(CODE, |a| {
        a.wait()?; // fwait
        put(a, COM2, b"w")?;
        reset(a)
    });
    let vm = Vm::new(config(code)).unwrap();
    let com2 = vm.com2();
    let out = vm.run().unwrap();
    assert_eq!(out.exit, VmExit::Reset, "{out:?}");
    assert_eq!(drain(&com2), b"w");
    assert_eq!(out.emulation_fixups, u64::from(detect() == KvmFlavour::Pvm));
}

#[test]
fn unmapped_mmio_and_ports_read_all_ones_and_are_counted() {
    require_kvm!();
    let hole: u64 = 0xd000_0000;
    let code = assemble(CODE, |a| {
        a.mov(rbx, hole)?;
        a.mov(eax, dword_ptr(rbx))?;
        a.mov(dx, COM2)?;
        for _ in 0..4 {
            a.out(dx, al)?;
            a.shr(eax, 8)?;
        }
        a.mov(dword_ptr(rbx + 0x10), eax)?;
        a.in_(al, 0x70)?; // CMOS: no device
        a.mov(dx, COM2)?;
        a.out(dx, al)?;
        reset(a)
    });
    let vm = Vm::new(config(code)).unwrap();
    let com2 = vm.com2();
    let out = vm.run().unwrap();
    assert_eq!(out.exit, VmExit::Reset, "{out:?}");
    assert_eq!(drain(&com2), [0xff; 5]);
    let u = &out.unhandled;
    assert_eq!((u.mmio_reads, u.mmio_writes, u.pio_reads), (1, 1, 1), "{u:?}");
    let addrs: Vec<u64> = u.samples.iter().map(|s| s.addr).collect();
    assert_eq!(addrs, [hole, hole + 0x10, 0x70]);
}

#[test]
fn a_console_flood_keeps_only_the_tail() {
    require_kvm!();
    let n: u32 = 64 * 1024;
    let code = assemble(CODE, |a| {
        let mut l = a.create_label();
        a.mov(dx, COM1)?;
        a.mov(ecx, n)?;
        a.set_label(&mut l)?;
        a.mov(al, cl)?;
        a.out(dx, al)?;
        a.dec(ecx)?;
        a.jnz(l)?;
        reset(a)
    });
    let mut c = config(code);
    c.console_capacity = 1024;
    let out = run(c);
    assert_eq!(out.exit, VmExit::Reset);
    assert_eq!(out.console.total_bytes, u64::from(n));
    assert_eq!(out.console.tail.len(), 1024);
    assert!(out.console.truncated());
    // The last byte written was (ecx = 1) as u8.
    assert_eq!(out.console.tail.last(), Some(&1));
}

#[test]
fn stopper_interrupts_a_running_guest() {
    require_kvm!();
    let mut c = config(assemble(CODE, park));
    c.timeout = Duration::from_secs(60);
    let vm = Vm::new(c).unwrap();
    let stopper = vm.stopper();
    stopper.stop();
    let start = Instant::now();
    let out = vm.run().unwrap();
    assert_eq!(out.exit, VmExit::Interrupted);
    assert!(start.elapsed() < Duration::from_secs(10));
}

#[test]
fn bad_inputs_are_refused_with_clear_errors() {
    require_kvm!();
    let code = assemble(CODE, reset);
    let mut c = config(code.clone());
    c.memory_mib = 0;
    let err = Vm::new(c).err().unwrap();
    assert!(matches!(err, VmError::MemorySize { mib: 0, .. }), "{err}");

    let mut c = config(code.clone());
    c.vcpus = 100_000;
    let err = Vm::new(c).err().unwrap().to_string();
    assert!(err.contains("KVM_CAP_MAX_VCPUS"), "{err}");

    let mut c = config(code.clone());
    c.vcpus = 0;
    assert!(Vm::new(c).is_err());

    // Code over the VMM's boot tables.
    let mut c = config(code);
    c.payload = Payload::Raw { segments: vec![(0x7000, vec![0xf4])], entry: 0x7000 };
    let err = Vm::new(c).err().unwrap().to_string();
    assert!(err.contains("0x7000"), "{err}");
}

/// A minimal x86-64 ELF whose single PT_LOAD wants `memsz` bytes at 16 MiB.
fn fake_elf(memsz: u64) -> Vec<u8> {
    let mut f = vec![0u8; 0x1000];
    f[..4].copy_from_slice(b"\x7fELF");
    f[4] = 2; // 64-bit
    f[5] = 1; // little endian
    f[6] = 1;
    f[16] = 2; // ET_EXEC
    f[18] = 62; // x86-64
    f[20] = 1;
    f[24..32].copy_from_slice(&0x100_0000u64.to_le_bytes()); // entry
    f[32..40].copy_from_slice(&64u64.to_le_bytes()); // phoff
    f[52] = 64; // ehsize
    f[54] = 56; // phentsize
    f[56] = 1; // phnum
    let ph = &mut f[64..120];
    ph[0] = 1; // PT_LOAD
    ph[4] = 5; // R+X
    ph[8..16].copy_from_slice(&0x800u64.to_le_bytes()); // offset
    ph[16..24].copy_from_slice(&0xffff_ffff_8100_0000u64.to_le_bytes());
    ph[24..32].copy_from_slice(&0x100_0000u64.to_le_bytes()); // paddr
    ph[32..40].copy_from_slice(&0x10u64.to_le_bytes()); // filesz
    ph[40..48].copy_from_slice(&memsz.to_le_bytes());
    ph[48..56].copy_from_slice(&0x20_0000u64.to_le_bytes());
    f
}

#[test]
fn a_kernel_larger_than_memory_is_refused() {
    require_kvm!();
    let dir = tempfile::tempdir().unwrap();
    let kernel = dir.path().join("vmlinux");
    std::fs::write(&kernel, fake_elf(64 << 20)).unwrap();
    let mut c = VmConfig::linux(&kernel, "console=ttyS0");
    c.memory_mib = 32;
    let err = Vm::new(c).err().unwrap();
    assert!(matches!(err, VmError::ImageTooLarge { .. }), "{err}");
    let msg = err.to_string();
    assert!(msg.contains("vmlinux") && msg.contains("raise memory_mib"), "{msg}");

    // The same image fits a bigger guest and loads.
    let mut c = VmConfig::linux(&kernel, "console=ttyS0");
    c.memory_mib = 128;
    let vm = Vm::new(c).unwrap();
    assert_eq!(vm.kernel().unwrap().entry, 0x100_0000);

    let text = dir.path().join("README");
    std::fs::write(&text, "not a kernel").unwrap();
    let err = Vm::new(VmConfig::linux(&text, "")).err().unwrap().to_string();
    assert!(err.contains("README") && err.contains("bzImage"), "{err}");
    assert!(Path::new(&kernel).exists());
}

/// The cmdline the environment notes say a stock kernel needs on PVM (its emulator lacks
/// XSAVE/XRSTOR, POPCNT, CLAC/STAC, CMPXCHG16B); harmless on hardware KVM.
const PVM_SAFE_CMDLINE: &str =
    "console=ttyS0 reboot=k panic=-1 pci=off nokaslr noxsave clearcpuid=popcnt,smap,smep,cx16 ktstr.test=early-boot";

/// Console lines that prove the kernel read what the VMM wrote: cmdline, e820, MP table.
fn early_boot_markers(cmdline: &str) -> Vec<String> {
    vec![
        format!("Command line: {cmdline}"),
        "BIOS-e820: [mem 0x0000000000000000-0x000000000009fbff] usable".into(),
        "BIOS-e820: [mem 0x00000000000e0000-0x00000000000fffff] reserved".into(),
        "BIOS-e820: [mem 0x0000000000100000-0x000000000fffffff] usable".into(),
        "found SMP MP-table at [mem 0x000f0000-0x000f000f]".into(),
        "MPTABLE: OEM ID: KTSTR".into(),
        "Processors: 2".into(),
        "CPU topo: Allowing 2 present CPUs".into(),
    ]
}

#[test]
fn linux_early_boot_sees_cmdline_e820_and_both_vcpus() {
    require_kvm!();
    let Some(kernel) = common::default_kernel() else { return };
    let Some(vmlinux) = kernel["vmlinux"].as_str() else {
        return common::skip("the default kernel has no vmlinux");
    };
    // The ELF entry: a bzImage's decompressor alone takes minutes under PVM's emulator.
    let mut c = VmConfig::linux(vmlinux, PVM_SAFE_CMDLINE);
    c.vcpus = 2;
    c.memory_mib = 256;
    c.timeout = Duration::from_secs(55);
    let vm = Vm::new(c).unwrap();
    let tap = vm.console_tap();
    let stopper = vm.stopper();
    let markers = early_boot_markers(PVM_SAFE_CMDLINE);
    // Stop the VM as soon as the console shows every marker (about 30 s under PVM, where
    // everything before "console [ttyS0] enabled" arrives in one burst).
    let watcher = std::thread::spawn(move || {
        let mut seen = String::new();
        while let Ok(bytes) = tap.recv(Duration::from_secs(60)) {
            seen.push_str(&String::from_utf8_lossy(&bytes));
            if markers.iter().all(|m| seen.contains(m.as_str())) {
                stopper.stop();
                break;
            }
        }
    });
    let out = vm.run().unwrap();
    watcher.join().unwrap();
    let console = out.console.text();
    for m in early_boot_markers(PVM_SAFE_CMDLINE) {
        assert!(console.contains(&m), "missing {m:?} (exit {:?}) in:\n{console}", out.exit);
    }
    // Stopped by the watcher; on hardware KVM the kernel may get as far as its panic (no
    // root file system) first.
    assert!(matches!(out.exit, VmExit::Interrupted | VmExit::Panic(_)), "{:?}", out.exit);
    assert!(out.phase("first_console_byte").is_some());
}

/// The real minimal kernel to Hello on hardware KVM through `ktstr-host run --backend kvm`,
/// printing the boot phases a KVM host gives. No timing assertion: the speed goals live in
/// bench/. Here (PVM, or no KVM) it prints `skipped: needs hardware KVM`.
#[test]
fn real_kernel_reaches_hello_on_hardware_kvm() {
    let flavour = ktstr_host::vmm::detect();
    if !matches!(flavour, ktstr_host::vmm::KvmFlavour::Hardware(_)) {
        return common::skip(format!("{} ({})", common::NEEDS_HARDWARE_KVM, flavour.explain()));
    }
    let Some(k) = common::default_kernel() else { return };
    let out = common::run(
        common::host()
            .args(["run", "--json", "--backend", "kvm", "--topology", "1n1l2c1t", "--kernel"])
            .arg(k["image"].as_str().unwrap()),
    );
    let s = common::json(&out);
    assert_eq!(s["passed"], true, "{s}");
    assert_eq!(s["backend"], "kvm");
    assert_eq!(s["guest_cpus"], 2);
    println!("boot phases: hello {} s after machine start; {}", s["hello_s"], s["vm_exit"]);
}
