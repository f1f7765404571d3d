//! The guest -> host frame writer, shared by every thread of the init.

use std::io;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, PoisonError, TryLockError};
use std::time::{Duration, Instant};

use ktstr_shared::wire::{GuestMsg, MAX_FRAME, encode};

use crate::sys;

/// Writes whole frames to one fd; the lock keeps frames of different threads from interleaving.
pub struct Sink {
    /// The protocol fd; it stays open for the life of the process.
    fd: RawFd,
    frame: Mutex<Box<[u8; MAX_FRAME]>>,
    warned: AtomicBool,
}

impl Sink {
    pub fn new(fd: RawFd) -> Self {
        Sink { fd, frame: Mutex::new(Box::new([0; MAX_FRAME])), warned: AtomicBool::new(false) }
    }

    /// A lone delimiter: ends whatever partial frame the line held before us.
    pub fn delimit(&self) {
        let _guard = self.frame.lock().unwrap_or_else(PoisonError::into_inner);
        self.report(sys::write_all(self.fd, &[0]));
    }

    pub fn send(&self, msg: &GuestMsg) {
        let mut buf = self.frame.lock().unwrap_or_else(PoisonError::into_inner);
        self.write_frame(msg, &mut buf[..]);
    }

    /// For the panic hook and the watchdog: the lock may be held by a stuck or panicking thread,
    /// so wait for it only briefly, then write anyway behind a delimiter that ends any partial
    /// frame (the host decoder resynchronises on it).
    pub fn send_urgent(&self, msg: &GuestMsg) {
        let give_up = Instant::now() + Duration::from_millis(100);
        while Instant::now() < give_up {
            match self.frame.try_lock() {
                Ok(mut buf) => return self.write_frame(msg, &mut buf[..]),
                Err(TryLockError::Poisoned(p)) => return self.write_frame(msg, &mut p.into_inner()[..]),
                Err(TryLockError::WouldBlock) => std::thread::sleep(Duration::from_millis(1)),
            }
        }
        let mut buf = vec![0u8; MAX_FRAME];
        self.report(sys::write_all(self.fd, &[0]));
        self.write_frame(msg, &mut buf);
    }

    fn write_frame(&self, msg: &GuestMsg, buf: &mut [u8]) {
        match encode(msg, buf) {
            Ok(frame) => self.report(sys::write_all(self.fd, frame)),
            // Message sizes are bounded by type, so this is a bug in a wire type.
            Err(e) => eprintln!("ktstr-init: cannot encode {msg:?}: {e}"),
        }
    }

    /// The host may have gone away; say so once on the console and carry on.
    fn report(&self, res: io::Result<()>) {
        if let Err(e) = res
            && !self.warned.swap(true, Ordering::Relaxed)
        {
            eprintln!("ktstr-init: writing to the protocol channel failed: {e}");
        }
    }
}
