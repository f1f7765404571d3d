//! Host -> guest messages: a reader thread decodes them and flags the main path.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use ktstr_shared::wire::{FrameDecoder, GuestMsg, HostMsg};

use crate::sink::Sink;
use crate::sys;

/// What the host asked for, plus an eventfd that wakes the main path's `poll`.
pub struct Control {
    start: AtomicBool,
    stop: AtomicBool,
    wake: OwnedFd,
}

impl Control {
    pub fn new() -> io::Result<Self> {
        Ok(Control { start: AtomicBool::new(false), stop: AtomicBool::new(false), wake: sys::eventfd()? })
    }

    /// Readable after any request; call [`Self::clear_wake`] BEFORE checking the flags so a
    /// request arriving in between still wakes the next poll.
    pub fn wake_fd(&self) -> RawFd {
        self.wake.as_raw_fd()
    }

    pub fn clear_wake(&self) {
        sys::drain(self.wake.as_raw_fd());
    }

    pub fn started(&self) -> bool {
        self.start.load(Ordering::SeqCst)
    }

    pub fn stop_requested(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }

    fn handle(&self, msg: HostMsg, sink: &Sink) {
        match msg {
            HostMsg::Start => self.start.store(true, Ordering::SeqCst),
            HostMsg::Stop => self.stop.store(true, Ordering::SeqCst),
            HostMsg::Ping { seq } => return sink.send(&GuestMsg::Pong { seq }),
        }
        sys::eventfd_signal(self.wake.as_raw_fd());
    }
}

/// Reads host messages from `fd` until EOF (host mode: stdin closed) or an error.
pub fn spawn_reader(fd: RawFd, control: Arc<Control>, sink: Arc<Sink>) -> io::Result<()> {
    std::thread::Builder::new()
        .name("host-reader".into())
        .spawn(move || {
            let mut decoder = Box::new(FrameDecoder::<HostMsg>::new());
            let mut buf = [0u8; 512];
            while let Ok(n @ 1..) = sys::read(fd, &mut buf) {
                decoder.push(&buf[..n], |msg| control.handle(msg, &sink));
            }
        })
        .map(drop)
}
