//! The guest's I/O space: both UARTs, a minimal i8042 (for the reset line), the ACPI PM1a
//! event and control registers the FADT points at, the milestone port, and a defined answer
//! for everything else (reads all-ones, writes ignored, counted).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use super::serial::{
    ByteStream, COM1_BASE, COM2_BASE, ConsoleLog, SharedConsole, StreamWriter, UART_PORTS, Uart, lock,
};

pub const I8042_DATA: u16 = 0x60;
pub const I8042_COMMAND: u16 = 0x64;
/// "Pulse the reset line": how Linux reboots with `reboot=k`, and how a ktstr guest ends.
pub const I8042_RESET: u8 = 0xfe;
/// POST code port, also Linux's I/O delay port: written often, deliberately ignored.
pub const POST_PORT: u16 = 0x80;
/// Milestone port: a 1/2/4-byte write records (value, host time); costs one exit.
pub const MILESTONE_PORT: u16 = 0x610;
/// Milestones kept; later ones are dropped, so a guest spamming the port costs bounded memory.
pub const MAX_MILESTONES: usize = 4096;
/// The PM1a register file (`acpi::PM1A_EVT_BLK` .. + 6): PM1_STS, PM1_EN, PM1_CNT, 2 bytes each.
pub const PM1_BASE: u16 = super::acpi::PM1A_EVT_BLK;
const PM1_PORTS: u16 = 6;
const _: () = assert!(super::acpi::PM1A_CNT_BLK == PM1_BASE + 4 && super::acpi::PM1_EVT_LEN == 4);
/// PM1_CNT.SCI_EN: the system is in ACPI mode (always: there is no SMI to switch).
pub const PM1_CNT_SCI_EN: u16 = 1;
/// PM1_CNT.SLP_EN: write-only, reads as 0.
const PM1_CNT_SLP_EN: u16 = 1 << 13;

/// Distinct unhandled addresses remembered for diagnostics (counts are kept for all).
const UNHANDLED_SAMPLES: usize = 16;

/// What the vCPU must do after an OUT.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PioAction {
    Continue,
    Reset,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AccessKind {
    PioRead,
    PioWrite,
    MmioRead,
    MmioWrite,
}

/// One access nothing in the VMM handles.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UnhandledAccess {
    pub kind: AccessKind,
    pub addr: u64,
    pub size: usize,
}

/// Counts of accesses that got the default answer, and the first few addresses.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UnhandledStats {
    pub pio_reads: u64,
    pub pio_writes: u64,
    pub mmio_reads: u64,
    pub mmio_writes: u64,
    pub samples: Vec<UnhandledAccess>,
}

#[derive(Default)]
struct Unhandled {
    counts: [AtomicU64; 4],
    samples: Mutex<Vec<UnhandledAccess>>,
}

impl Unhandled {
    fn record(&self, kind: AccessKind, addr: u64, size: usize) {
        self.counts[kind as usize].fetch_add(1, Ordering::Relaxed);
        let mut samples = lock(&self.samples);
        let seen = samples.iter().any(|s| s.kind == kind && s.addr == addr);
        if !seen && samples.len() < UNHANDLED_SAMPLES {
            samples.push(UnhandledAccess { kind, addr, size });
        }
    }

    fn stats(&self) -> UnhandledStats {
        let get = |k: AccessKind| self.counts[k as usize].load(Ordering::Relaxed);
        UnhandledStats {
            pio_reads: get(AccessKind::PioRead),
            pio_writes: get(AccessKind::PioWrite),
            mmio_reads: get(AccessKind::MmioRead),
            mmio_writes: get(AccessKind::MmioWrite),
            samples: lock(&self.samples).clone(),
        }
    }
}

/// Every emulated device of a VM, shared by its vCPU threads.
pub struct Devices {
    pub com1: Mutex<Uart<SharedConsole>>,
    pub com2: Mutex<Uart<StreamWriter>>,
    pub console: Arc<Mutex<ConsoleLog>>,
    pub com2_out: Arc<ByteStream>,
    milestones: Mutex<Vec<(u32, Instant)>>,
    /// PM1_EN and PM1_CNT as last written (PM1_STS has no event that could set a bit).
    pm1: Mutex<Pm1>,
    unhandled: Unhandled,
}

/// The PM1a registers: no fixed event ever happens here (no power button, no PM timer, no
/// RTC alarm), so PM1_STS always reads 0 and the SCI is never raised; enable bits and
/// control bits read back as written, with SCI_EN always set.
#[derive(Debug, Default)]
struct Pm1 {
    enable: u16,
    control: u16,
}

impl Pm1 {
    fn registers(&self) -> [u8; PM1_PORTS as usize] {
        let [e0, e1] = self.enable.to_le_bytes();
        let [c0, c1] = ((self.control & !PM1_CNT_SLP_EN) | PM1_CNT_SCI_EN).to_le_bytes();
        [0, 0, e0, e1, c0, c1]
    }

    /// Byte-wise writes, so any access width and alignment inside the block works.
    fn write(&mut self, offset: u16, data: &[u8]) {
        for (i, byte) in data.iter().enumerate() {
            let set = |reg: &mut u16, hi: bool| {
                let shift = if hi { 8 } else { 0 };
                *reg = (*reg & !(0xff << shift)) | (u16::from(*byte) << shift);
            };
            match offset + i as u16 {
                2 => set(&mut self.enable, false),
                3 => set(&mut self.enable, true),
                4 => set(&mut self.control, false),
                5 => set(&mut self.control, true),
                _ => {} // PM1_STS: write 1 to clear, and nothing is ever set
            }
        }
    }
}

fn uart_offset(port: u16, base: u16) -> Option<u8> {
    (base..base + UART_PORTS).contains(&port).then(|| (port - base) as u8)
}

fn le_value(data: &[u8]) -> u32 {
    let mut bytes = [0u8; 4];
    let n = data.len().min(4);
    bytes[..n].copy_from_slice(&data[..n]);
    u32::from_le_bytes(bytes)
}

impl Devices {
    pub fn new(
        com1: Uart<SharedConsole>,
        com2: Uart<StreamWriter>,
        console: Arc<Mutex<ConsoleLog>>,
        com2_out: Arc<ByteStream>,
    ) -> Self {
        Self {
            com1: Mutex::new(com1),
            com2: Mutex::new(com2),
            console,
            com2_out,
            milestones: Mutex::new(Vec::new()),
            pm1: Mutex::new(Pm1::default()),
            unhandled: Unhandled::default(),
        }
    }

    pub fn pio_in(&self, port: u16, data: &mut [u8]) {
        if (PM1_BASE..PM1_BASE + PM1_PORTS).contains(&port) {
            let regs = lock(&self.pm1).registers();
            let offset = usize::from(port - PM1_BASE);
            for (i, b) in data.iter_mut().enumerate() {
                *b = regs.get(offset + i).copied().unwrap_or(0xff);
            }
            return;
        }
        let value = if let Some(off) = uart_offset(port, COM1_BASE) {
            lock(&self.com1).read(off)
        } else if let Some(off) = uart_offset(port, COM2_BASE) {
            lock(&self.com2).read(off)
        } else if port == I8042_DATA || port == I8042_COMMAND {
            // Nothing to read, input buffer empty: reset commands are accepted at once.
            0
        } else {
            self.unhandled.record(AccessKind::PioRead, u64::from(port), data.len());
            data.fill(0xff);
            return;
        };
        data.fill(0);
        data[0] = value;
    }

    pub fn pio_out(&self, port: u16, data: &[u8]) -> PioAction {
        let Some(&byte) = data.first() else {
            return PioAction::Continue;
        };
        if let Some(off) = uart_offset(port, COM1_BASE) {
            lock(&self.com1).write(off, byte);
        } else if let Some(off) = uart_offset(port, COM2_BASE) {
            lock(&self.com2).write(off, byte);
            // Back-pressure outside the UART lock, so host injection never waits on it.
            self.com2_out.wait_for_room();
        } else if port == I8042_COMMAND && byte == I8042_RESET {
            return PioAction::Reset;
        } else if (PM1_BASE..PM1_BASE + PM1_PORTS).contains(&port) {
            lock(&self.pm1).write(port - PM1_BASE, data);
        } else if port == MILESTONE_PORT {
            let mut milestones = lock(&self.milestones);
            if milestones.len() < MAX_MILESTONES {
                milestones.push((le_value(data), Instant::now()));
            }
        } else if port != I8042_DATA && port != I8042_COMMAND && port != POST_PORT {
            self.unhandled.record(AccessKind::PioWrite, u64::from(port), data.len());
        }
        PioAction::Continue
    }

    /// No MMIO device exists yet: reads float high like an empty bus, writes vanish.
    pub fn mmio_read(&self, addr: u64, data: &mut [u8]) {
        self.unhandled.record(AccessKind::MmioRead, addr, data.len());
        data.fill(0xff);
    }

    pub fn mmio_write(&self, addr: u64, data: &[u8]) {
        self.unhandled.record(AccessKind::MmioWrite, addr, data.len());
    }

    /// Host bytes for the guest's COM2 receive FIFO.
    pub fn inject_com2(&self, bytes: &[u8]) {
        lock(&self.com2).inject(bytes);
    }

    pub fn milestones(&self) -> Vec<(u32, Instant)> {
        lock(&self.milestones).clone()
    }

    pub fn unhandled(&self) -> UnhandledStats {
        self.unhandled.stats()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use vmm_sys_util::eventfd::EventFd;

    fn devices() -> Devices {
        let console = Arc::new(Mutex::new(ConsoleLog::new(1024, false)));
        let out = Arc::new(ByteStream::default());
        Devices::new(
            Uart::new(EventFd::new(0).unwrap(), SharedConsole(console.clone())),
            Uart::new(EventFd::new(0).unwrap(), StreamWriter(out.clone())),
            console,
            out,
        )
    }

    #[test]
    fn uart_bytes_reach_console_and_stream() {
        let d = devices();
        for b in b"hi" {
            assert_eq!(d.pio_out(0x3f8, &[*b]), PioAction::Continue);
        }
        d.pio_out(0x2f8, b"x");
        assert_eq!(lock(&d.console).snapshot().tail, b"hi");
        assert_eq!(d.com2_out.recv(Duration::ZERO).unwrap(), b"x");
        // LSR: transmitter empty, so a polling driver can always send.
        let mut lsr = [0u8];
        d.pio_in(0x3fd, &mut lsr);
        assert_eq!(lsr[0] & 0x60, 0x60);
    }

    #[test]
    fn injected_bytes_are_readable_from_com2() {
        let d = devices();
        d.inject_com2(b"ok");
        let mut b = [0u8];
        d.pio_in(0x2fd, &mut b);
        assert_eq!(b[0] & 1, 1, "data ready");
        d.pio_in(0x2f8, &mut b);
        assert_eq!(b[0], b'o');
        d.pio_in(0x2f8, &mut b);
        assert_eq!(b[0], b'k');
        d.pio_in(0x2fd, &mut b);
        assert_eq!(b[0] & 1, 0);
    }

    #[test]
    fn i8042_reset_and_harmless_reads() {
        let d = devices();
        assert_eq!(d.pio_out(0x64, &[0xfe]), PioAction::Reset);
        assert_eq!(d.pio_out(0x64, &[0xad]), PioAction::Continue);
        let mut b = [0xaa];
        d.pio_in(0x64, &mut b);
        assert_eq!(b[0], 0);
        assert_eq!(d.unhandled(), UnhandledStats::default());
    }

    #[test]
    fn pm1a_registers_answer_like_an_acpi_mode_chipset() {
        let d = devices();
        let read16 = |port: u16| {
            let mut b = [0xaa; 2];
            d.pio_in(port, &mut b);
            u16::from_le_bytes(b)
        };
        // ACPICA at boot: clear PM1_STS (write ones), mask every fixed event, read the mode.
        assert_eq!(d.pio_out(PM1_BASE, &0xffffu16.to_le_bytes()), PioAction::Continue);
        assert_eq!(read16(PM1_BASE), 0, "no status bit is ever set");
        d.pio_out(PM1_BASE + 2, &0x0121u16.to_le_bytes());
        assert_eq!(read16(PM1_BASE + 2), 0x0121, "enable bits read back");
        d.pio_out(PM1_BASE + 2, &[0]); // a byte write changes the low byte only
        assert_eq!(read16(PM1_BASE + 2), 0x0100);
        assert_eq!(read16(super::super::acpi::PM1A_CNT_BLK) & PM1_CNT_SCI_EN, 1, "in ACPI mode");
        d.pio_out(PM1_BASE + 4, &(PM1_CNT_SLP_EN | (5 << 10)).to_le_bytes());
        assert_eq!(read16(PM1_BASE + 4), (5 << 10) | PM1_CNT_SCI_EN, "SLP_EN reads as 0");
        // A 32-bit read of the event block: PM1_STS low, PM1_EN high.
        let mut w = [0u8; 4];
        d.pio_in(PM1_BASE, &mut w);
        assert_eq!(u32::from_le_bytes(w), 0x0100 << 16);
        assert_eq!(d.unhandled(), UnhandledStats::default());
    }

    #[test]
    fn milestones_are_recorded_in_order() {
        let d = devices();
        d.pio_out(MILESTONE_PORT, &1u32.to_le_bytes());
        d.pio_out(MILESTONE_PORT, &[7]);
        let m: Vec<u32> = d.milestones().iter().map(|(v, _)| *v).collect();
        assert_eq!(m, vec![1, 7]);
        for _ in 0..2 * MAX_MILESTONES {
            d.pio_out(MILESTONE_PORT, &[9]);
        }
        assert_eq!(d.milestones().len(), MAX_MILESTONES);
    }

    #[test]
    fn unknown_accesses_read_all_ones_and_are_counted() {
        let d = devices();
        let mut w = [0u8; 4];
        d.pio_in(0x70, &mut w[..1]);
        d.pio_in(0x1234, &mut w[..2]);
        assert_eq!(w[..2], [0xff, 0xff]);
        d.pio_out(0x70, &[0]);
        d.pio_out(0x80, &[0]);
        d.mmio_read(0xd000_0000, &mut w);
        assert_eq!(w, [0xff; 4]);
        d.mmio_write(0xd000_0000, &w);
        d.mmio_read(0xd000_0000, &mut w);
        let s = d.unhandled();
        assert_eq!((s.pio_reads, s.pio_writes, s.mmio_reads, s.mmio_writes), (2, 1, 2, 1));
        // Distinct (kind, address) pairs only.
        assert_eq!(s.samples.len(), 5);
    }
}
