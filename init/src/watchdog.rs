//! The last line of defence against waiting forever: fires once at a deadline that the main
//! path can move (a provisional one until the plan is read), whatever state the main path is in.

use std::io;
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// Time past the plan deadline for killing the command and reporting before the watchdog fires.
pub const WATCHDOG_GRACE: Duration = Duration::from_secs(2);

pub struct Watchdog {
    deadline: Mutex<Instant>,
    moved: Condvar,
}

impl Watchdog {
    pub fn start(deadline: Instant, fire: impl FnOnce() + Send + 'static) -> io::Result<Arc<Self>> {
        let dog = Arc::new(Watchdog { deadline: Mutex::new(deadline), moved: Condvar::new() });
        let waiter = dog.clone();
        std::thread::Builder::new().name("watchdog".into()).spawn(move || {
            waiter.wait();
            fire();
        })?;
        Ok(dog)
    }

    pub fn set_deadline(&self, deadline: Instant) {
        *self.deadline.lock().unwrap_or_else(PoisonError::into_inner) = deadline;
        self.moved.notify_one();
    }

    fn wait(&self) {
        let mut deadline = self.deadline.lock().unwrap_or_else(PoisonError::into_inner);
        loop {
            let now = Instant::now();
            if now >= *deadline {
                return;
            }
            let left = *deadline - now;
            deadline = self.moved.wait_timeout(deadline, left).unwrap_or_else(PoisonError::into_inner).0;
        }
    }
}
