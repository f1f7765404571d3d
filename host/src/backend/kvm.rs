//! `Backend::Kvm`: our micro-VMM behind the same [`Machine`] contract as QEMU. The VM runs
//! on its own thread; its console tap and COM2 are adapted to `Read`/`Write`.

use super::{Machine, MachineExit, VmSpec};
use crate::vmm::boot::KernelFormat;
use crate::vmm::{Com2, ConsoleTap, Payload, RecvError, Stopper, Vm, VmConfig, VmError, VmExit, VmOutcome};
use std::io::{self, Read, Write};
use std::thread::JoinHandle;
use std::time::Duration;

pub struct KvmMachine {
    run: Option<JoinHandle<Result<VmOutcome, VmError>>>,
    com2: Com2,
    console: Option<ConsoleTap>,
    stopper: Stopper,
    channel_taken: bool,
    /// What was booted ("bzImage", "ELF vmlinux"), for the exit description.
    kernel: &'static str,
}

impl KvmMachine {
    /// Builds the VM and starts it; the collector echoes the console, not the VMM.
    pub fn start(spec: &VmSpec) -> Result<Self, VmError> {
        let mut cfg = VmConfig::new(Payload::Linux {
            kernel: spec.kernel.clone(),
            initrd: spec.initrd.clone(),
            cmdline: spec.cmdline.clone(),
        });
        cfg.memory_mib = u64::from(spec.memory_mib);
        cfg.marks = spec.marks.clone();
        cfg.vcpus = spec.topology.cpus();
        cfg.topology = Some(spec.topology);
        cfg.timeout = spec.timeout;
        let vm = Vm::new(cfg)?;
        let kernel = match vm.kernel().map(|k| k.format) {
            Some(KernelFormat::BzImage) => "bzImage",
            Some(KernelFormat::Elf) => "ELF vmlinux",
            None => "raw",
        };
        let (com2, console, stopper) = (vm.com2(), Some(vm.console_tap()), vm.stopper());
        let run = std::thread::Builder::new()
            .name("ktstr-vm".into())
            .spawn(move || vm.run())
            .map_err(|source| VmError::Os { what: "spawning the VM thread", source })?;
        Ok(KvmMachine { run: Some(run), com2, console, stopper, channel_taken: false, kernel })
    }
}

/// How a micro-VMM exit reads in a run report (registers included for faults).
fn describe(o: &VmOutcome, kernel: &str) -> String {
    let how = match &o.exit {
        VmExit::PowerOff => "guest powered off".into(),
        VmExit::Reset => "guest reset".into(),
        VmExit::Panic(_) => "guest kernel panic".into(),
        VmExit::TripleFault { regs: Some(r) } if r.is_reset_state() => format!(
            "vCPU {} triple fault (its registers are lost: KVM on AMD SVM resets a vCPU before reporting a shutdown)",
            r.vcpu
        ),
        VmExit::TripleFault { regs: Some(r) } => format!("triple fault: {r}"),
        other => format!("{other:?}"),
    };
    let ms = |(n, d): &(&str, Duration)| format!("{n} {:.1}ms", d.as_secs_f64() * 1e3);
    let phases: Vec<String> = o.phases.iter().map(ms).collect();
    let host: Vec<String> = o.host_calls.iter().map(ms).collect();
    let waited = ms(&("waited", o.host_wait));
    format!("micro-VMM: {how} ({kernel}; phases: {}; host kernel: {}; {waited})", phases.join(", "), host.join(", "))
}

impl Machine for KvmMachine {
    fn take_console(&mut self) -> Option<Box<dyn Read + Send>> {
        let tap = self.console.take()?;
        Some(Box::new(StreamReader { recv: Box::new(move |t| tap.recv(t)), pending: Vec::new() }))
    }

    fn take_channel(&mut self) -> Option<(Box<dyn Read + Send>, Box<dyn Write + Send>)> {
        if std::mem::replace(&mut self.channel_taken, true) {
            return None;
        }
        let com2 = self.com2.clone();
        let reader = StreamReader { recv: Box::new(move |t| com2.recv(t)), pending: Vec::new() };
        Some((Box::new(reader), Box::new(Com2Writer(self.com2.clone()))))
    }

    fn try_wait(&mut self) -> io::Result<Option<MachineExit>> {
        if !self.run.as_ref().is_some_and(|r| r.is_finished()) {
            return Ok(None);
        }
        let handle = self.run.take().expect("checked above");
        let exit = match handle.join() {
            Ok(Ok(outcome)) => {
                let detail = describe(&outcome, self.kernel);
                MachineExit { success: outcome.exit.is_clean(), detail, stderr: String::new() }
            }
            Ok(Err(e)) => MachineExit { success: false, detail: format!("micro-VMM: {e}"), stderr: String::new() },
            Err(_) => MachineExit { success: false, detail: "micro-VMM thread panicked".into(), stderr: String::new() },
        };
        Ok(Some(exit))
    }

    fn kill(&mut self) -> Option<String> {
        self.stopper.stop();
        match self.run.take()?.join() {
            Ok(Ok(outcome)) => Some(describe(&outcome, self.kernel)),
            Ok(Err(e)) => Some(format!("micro-VMM: {e}")),
            Err(_) => Some("micro-VMM thread panicked".into()),
        }
    }
}

type Recv = Box<dyn FnMut(Duration) -> Result<Vec<u8>, RecvError> + Send>;

/// A VMM byte stream (console tap, COM2) as `Read`: EOF once the VM stopped and all was read.
struct StreamReader {
    recv: Recv,
    pending: Vec<u8>,
}

impl Read for StreamReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.pending.is_empty() {
            match (self.recv)(Duration::from_millis(100)) {
                Ok(bytes) => self.pending = bytes,
                Err(RecvError::Timeout) => {}
                Err(RecvError::Closed) => return Ok(0),
            }
        }
        let n = buf.len().min(self.pending.len());
        buf[..n].copy_from_slice(&self.pending[..n]);
        self.pending.drain(..n);
        Ok(n)
    }
}

struct Com2Writer(Com2);

impl Write for Com2Writer {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.send(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
