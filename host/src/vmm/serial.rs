//! The two 16550 UARTs (vm-superio's model) and where their bytes go: COM1 into a bounded
//! console ring, COM2 into a byte stream the caller reads, with host bytes injected back.

use std::collections::VecDeque;
use std::io::Write;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use vm_superio::{Serial, Trigger};
use vmm_sys_util::eventfd::EventFd;

pub const COM1_BASE: u16 = 0x3f8;
pub const COM2_BASE: u16 = 0x2f8;
pub const COM1_IRQ: u32 = 4;
pub const COM2_IRQ: u32 = 3;
pub const UART_PORTS: u16 = 8;

/// Locks, ignoring poisoning: a panicked vCPU thread must not take the console down with it.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Raises the UART's IRQ through an irqfd registered with KVM (edge, like ISA).
pub struct IrqTrigger(pub EventFd);

impl Trigger for IrqTrigger {
    type E = std::io::Error;

    fn trigger(&self) -> std::io::Result<()> {
        self.0.write(1)
    }
}

/// The last `capacity` bytes the guest wrote to the console, plus how many there were in all.
/// A guest that floods the console costs the host `capacity` bytes, never more.
#[derive(Debug)]
pub struct ConsoleLog {
    ring: VecDeque<u8>,
    capacity: usize,
    total: u64,
    first_byte: Option<Instant>,
    echo: bool,
    /// Live copy for a watcher (`Vm::console_tap`); lossy, so a slow watcher never holds
    /// the guest back or grows host memory.
    tap: Option<Arc<ByteStream>>,
}

/// Bytes a console tap keeps unread before dropping the oldest.
pub const TAP_CAPACITY: usize = 1 << 20;

impl ConsoleLog {
    pub fn new(capacity: usize, echo: bool) -> Self {
        Self {
            ring: VecDeque::with_capacity(capacity.min(1 << 16)),
            capacity,
            total: 0,
            first_byte: None,
            echo,
            tap: None,
        }
    }

    /// The live copy of everything printed from now on (created on first use).
    pub fn tap(&mut self) -> Arc<ByteStream> {
        self.tap.get_or_insert_with(Default::default).clone()
    }

    /// Ends the live copy: its reader sees `Closed` once it has read the rest.
    pub fn close_tap(&self) {
        if let Some(tap) = &self.tap {
            tap.close();
        }
    }

    pub fn push(&mut self, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        self.first_byte.get_or_insert_with(Instant::now);
        self.total += bytes.len() as u64;
        let keep = &bytes[bytes.len().saturating_sub(self.capacity)..];
        let overflow = (self.ring.len() + keep.len()).saturating_sub(self.capacity);
        self.ring.drain(..overflow);
        self.ring.extend(keep);
        if self.echo {
            // Echo is best effort: a closed stderr must not stop the guest.
            let _ = std::io::stderr().write_all(bytes);
        }
        if let Some(tap) = &self.tap {
            tap.push_lossy(bytes, TAP_CAPACITY);
        }
    }

    pub fn snapshot(&self) -> Console {
        Console { tail: self.ring.iter().copied().collect(), total_bytes: self.total }
    }

    pub fn first_byte(&self) -> Option<Instant> {
        self.first_byte
    }
}

/// What the guest printed on COM1: the retained tail and the total byte count.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Console {
    pub tail: Vec<u8>,
    pub total_bytes: u64,
}

impl Console {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.tail).into_owned()
    }

    /// True when bytes were dropped from the front to respect the bound.
    pub fn truncated(&self) -> bool {
        self.total_bytes > self.tail.len() as u64
    }
}

impl Write for SharedConsole {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        lock(&self.0).push(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// COM1's sink, shared with the VM so it can be read after the run.
#[derive(Clone)]
pub struct SharedConsole(pub Arc<Mutex<ConsoleLog>>);

#[derive(Debug, Default)]
struct StreamState {
    bytes: VecDeque<u8>,
    closed: bool,
    total: u64,
    first_byte: Option<Instant>,
}

/// A byte pipe from the guest's COM2 to the host. The writer side never blocks while holding
/// the UART; back-pressure is applied by the vCPU afterwards (`wait_for_room`).
#[derive(Debug, Default)]
pub struct ByteStream {
    state: Mutex<StreamState>,
    changed: Condvar,
}

/// How much guest output may wait unread before the vCPU writing it is held back.
pub const STREAM_HIGH_WATER: usize = 1 << 20;

#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RecvError {
    #[error("no COM2 bytes within the timeout")]
    Timeout,
    #[error("the VM has stopped and every COM2 byte has been read")]
    Closed,
}

impl ByteStream {
    pub fn push(&self, bytes: &[u8]) {
        let mut s = lock(&self.state);
        s.first_byte.get_or_insert_with(Instant::now);
        s.total += bytes.len() as u64;
        s.bytes.extend(bytes);
        self.changed.notify_all();
    }

    /// Appends, then drops the oldest unread bytes beyond `cap` (for watchers that may lag).
    pub fn push_lossy(&self, bytes: &[u8], cap: usize) {
        let mut s = lock(&self.state);
        s.first_byte.get_or_insert_with(Instant::now);
        s.total += bytes.len() as u64;
        s.bytes.extend(bytes);
        let excess = s.bytes.len().saturating_sub(cap);
        s.bytes.drain(..excess);
        self.changed.notify_all();
    }

    /// Blocks while more than `STREAM_HIGH_WATER` bytes are unread, until the reader catches
    /// up or the stream is closed (VM teardown).
    pub fn wait_for_room(&self) {
        let mut s = lock(&self.state);
        while s.bytes.len() > STREAM_HIGH_WATER && !s.closed {
            s = self.changed.wait(s).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// Everything buffered (at least one byte), waiting up to `timeout` for the first.
    pub fn recv(&self, timeout: Duration) -> Result<Vec<u8>, RecvError> {
        let deadline = Instant::now() + timeout;
        let mut s = lock(&self.state);
        loop {
            if !s.bytes.is_empty() {
                let out: Vec<u8> = s.bytes.drain(..).collect();
                self.changed.notify_all();
                return Ok(out);
            }
            if s.closed {
                return Err(RecvError::Closed);
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(RecvError::Timeout);
            }
            s = self.changed.wait_timeout(s, deadline - now).unwrap_or_else(|e| e.into_inner()).0;
        }
    }

    pub fn close(&self) {
        lock(&self.state).closed = true;
        self.changed.notify_all();
    }

    pub fn total(&self) -> u64 {
        lock(&self.state).total
    }

    pub fn first_byte(&self) -> Option<Instant> {
        lock(&self.state).first_byte
    }
}

/// COM2's sink.
#[derive(Clone)]
pub struct StreamWriter(pub Arc<ByteStream>);

impl Write for StreamWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.push(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A UART plus the host bytes still waiting for room in its 64-byte receive FIFO.
pub struct Uart<W: Write> {
    serial: Serial<IrqTrigger, vm_superio::serial::NoEvents, W>,
    pending_input: VecDeque<u8>,
}

impl<W: Write> Uart<W> {
    pub fn new(irq: EventFd, out: W) -> Self {
        Self { serial: Serial::new(IrqTrigger(irq), out), pending_input: VecDeque::new() }
    }

    pub fn read(&mut self, offset: u8) -> u8 {
        let value = self.serial.read(offset);
        self.refill();
        value
    }

    pub fn write(&mut self, offset: u8, value: u8) {
        // A failed interrupt injection or sink write loses at most this byte's IRQ;
        // the guest's driver polls LSR and recovers, so there is nothing to propagate.
        let _ = self.serial.write(offset, value);
        self.refill();
    }

    /// Queues host bytes for the guest; they enter the FIFO as it drains.
    pub fn inject(&mut self, bytes: &[u8]) {
        self.pending_input.extend(bytes);
        self.refill();
    }

    fn refill(&mut self) {
        let room = self.serial.fifo_capacity().min(self.pending_input.len());
        if room == 0 {
            return;
        }
        let chunk: Vec<u8> = self.pending_input.drain(..room).collect();
        let _ = self.serial.enqueue_raw_bytes(&chunk);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn console_keeps_only_the_tail_and_counts_everything() {
        let mut log = ConsoleLog::new(8, false);
        log.push(b"hello ");
        log.push(b"world!");
        let c = log.snapshot();
        assert_eq!(c.tail, b"o world!");
        assert_eq!(c.total_bytes, 12);
        assert!(c.truncated());
        log.push(&[b'x'; 100]);
        assert_eq!(log.snapshot().tail, vec![b'x'; 8]);
        assert_eq!(log.snapshot().total_bytes, 112);
    }

    #[test]
    fn console_flood_stays_bounded() {
        let mut log = ConsoleLog::new(4096, false);
        let chunk = [b'A'; 1000];
        for _ in 0..10_000 {
            log.push(&chunk);
        }
        assert_eq!(log.snapshot().tail.len(), 4096);
        assert_eq!(log.snapshot().total_bytes, 10_000_000);
        assert!(log.ring.capacity() < 1 << 17);
    }

    #[test]
    fn stream_delivers_in_order_then_reports_closed() {
        let s = ByteStream::default();
        s.push(b"ab");
        s.push(b"c");
        assert_eq!(s.recv(Duration::ZERO).unwrap(), b"abc");
        assert_eq!(s.recv(Duration::from_millis(1)), Err(RecvError::Timeout));
        s.push(b"d");
        s.close();
        assert_eq!(s.recv(Duration::ZERO).unwrap(), b"d");
        assert_eq!(s.recv(Duration::from_secs(10)), Err(RecvError::Closed));
        assert_eq!(s.total(), 4);
    }

    #[test]
    fn console_tap_is_live_and_lossy() {
        let mut log = ConsoleLog::new(4, false);
        log.push(b"before");
        let tap = log.tap();
        log.push(b"after");
        assert_eq!(tap.recv(Duration::ZERO).unwrap(), b"after");
        log.push(&vec![b'x'; TAP_CAPACITY + 10]);
        assert_eq!(tap.recv(Duration::ZERO).unwrap().len(), TAP_CAPACITY);
        log.close_tap();
        assert_eq!(tap.recv(Duration::from_secs(10)), Err(RecvError::Closed));
    }

    #[test]
    fn writer_held_back_until_reader_drains() {
        let s = Arc::new(ByteStream::default());
        s.push(&vec![0u8; STREAM_HIGH_WATER + 1]);
        let writer = {
            let s = s.clone();
            std::thread::spawn(move || s.wait_for_room())
        };
        let got = s.recv(Duration::from_secs(10)).unwrap();
        assert_eq!(got.len(), STREAM_HIGH_WATER + 1);
        writer.join().unwrap();
    }

    #[test]
    fn uart_feeds_injected_bytes_through_the_fifo() {
        let out = Arc::new(ByteStream::default());
        let mut uart = Uart::new(EventFd::new(0).unwrap(), StreamWriter(out.clone()));
        let input: Vec<u8> = (0..200u8).collect();
        uart.inject(&input);
        let mut got = Vec::new();
        while uart.read(5) & 1 == 1 {
            got.push(uart.read(0));
        }
        assert_eq!(got, input);
        uart.write(0, b'z');
        assert_eq!(out.recv(Duration::ZERO).unwrap(), b"z");
    }
}
