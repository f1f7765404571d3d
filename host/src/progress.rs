//! Progress for long work: a spinner on a terminal, a plain line every few seconds
//! otherwise (CI logs), so a 3-minute kernel build never looks hung.

use indicatif::{ProgressBar, ProgressStyle};
use std::io::IsTerminal;
use std::time::{Duration, Instant};

pub struct Progress {
    bar: Option<ProgressBar>,
    start: Instant,
    phase: String,
    last_line: Instant,
}

const PLAIN_EVERY: Duration = Duration::from_secs(15);

impl Progress {
    pub fn new(what: &str) -> Self {
        let bar = std::io::stderr().is_terminal().then(|| {
            let b = ProgressBar::new_spinner();
            b.set_style(
                ProgressStyle::with_template("{spinner} [{elapsed_precise}] {prefix}: {wide_msg}")
                    .expect("valid template"),
            );
            b.set_prefix(what.to_string());
            b.enable_steady_tick(Duration::from_millis(200));
            b
        });
        Self { bar, start: Instant::now(), phase: String::new(), last_line: Instant::now() }
    }

    /// Enters a new phase; always printed (also in CI logs).
    pub fn phase(&mut self, phase: &str) {
        self.phase = phase.to_string();
        let line = format!("[{:>5.1}s] {phase}", self.elapsed());
        match &self.bar {
            Some(b) => {
                b.println(line);
                b.set_message(phase.to_string());
            }
            None => eprintln!("{line}"),
        }
        self.last_line = Instant::now();
    }

    /// Updates the detail of the current phase; on a non-terminal printed every 15 s.
    pub fn detail(&mut self, detail: &str) {
        match &self.bar {
            Some(b) => b.set_message(format!("{}: {detail}", self.phase)),
            None if self.last_line.elapsed() >= PLAIN_EVERY => {
                eprintln!("[{:>5.1}s] {}: {detail}", self.elapsed(), self.phase);
                self.last_line = Instant::now();
            }
            None => {}
        }
    }

    pub fn elapsed(&self) -> f64 {
        self.start.elapsed().as_secs_f64()
    }

    /// Ends the display with a final line (always printed).
    pub fn finish(&mut self, msg: &str) {
        if let Some(b) = self.bar.take() {
            b.finish_and_clear();
        }
        eprintln!("[{:>5.1}s] {msg}", self.elapsed());
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}
