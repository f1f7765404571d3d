//! Supervises a running machine: reads the console and the protocol channel, decodes frames
//! (everything the guest sends is untrusted: bounded, checked), enforces the hard timeout and
//! Ctrl-C, and returns what happened as a [`Collected`].

use self::output::Received;
use self::telemetry::Telemetry;
use crate::backend::{Machine, MachineExit};
use crate::interrupt;
pub mod output;
pub mod telemetry;
use ktstr_shared::wire::{DecodeStats, FrameDecoder, GuestMsg, Hello, LogLevel, RunResult};
use std::io::{Read, Write};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Console bytes kept (the tail); the rest is only counted.
pub const CONSOLE_KEEP: usize = 256 * 1024;
/// Events (console reads, decoded frames) queued between the readers and the supervisor.
/// Bounded: when we are slower than the guest (a slow stdout), the readers wait, the channel
/// fills and the guest waits in turn; nothing is dropped and memory stays bounded.
const EVENTS_QUEUED: usize = 64;
/// After Bye, how long the guest gets to power off before it is killed.
const POWEROFF_GRACE: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Copy, Default)]
pub struct Options {
    /// Copy console bytes to our stderr as they arrive (`--console`).
    pub echo_console: bool,
    /// Copy the command's stdout/stderr to ours as they arrive (`exec`).
    pub stream_output: bool,
}

/// How supervision ended.
#[derive(Debug, Clone)]
pub enum End {
    /// The machine stopped by itself.
    Exited(MachineExit),
    /// The hard timeout fired; the machine was killed.
    Timeout(Duration),
    /// Ctrl-C; the machine was killed.
    Interrupted,
}

/// Times since the machine was started.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Phases {
    pub first_console_byte: Option<Duration>,
    pub hello: Option<Duration>,
    pub result: Option<Duration>,
    pub bye: Option<Duration>,
    pub stopped: Option<Duration>,
}

#[derive(Debug, Clone, Default)]
pub struct Console {
    pub tail: Vec<u8>,
    pub total_bytes: u64,
}

impl Console {
    fn push(&mut self, bytes: &[u8]) {
        self.total_bytes += bytes.len() as u64;
        self.tail.extend_from_slice(bytes);
        if self.tail.len() > CONSOLE_KEEP {
            let cut = self.tail.len() - CONSOLE_KEEP;
            self.tail.drain(..cut);
        }
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.tail).into_owned()
    }

    /// The kernel's panic message and what follows it, if the console shows one; after an
    /// oops (`oops=panic`) the oops report that caused it comes first: its headline, the
    /// faulting RIP and the call trace.
    pub fn kernel_panic(&self) -> Option<String> {
        let text = self.text();
        let at = text.find("Kernel panic - not syncing")?;
        let line_start = text[..at].rfind('\n').map_or(0, |i| i + 1);
        let panic: Vec<&str> = text[line_start..].lines().take(20).collect();
        let oops_at = OOPS_HEADLINES.iter().filter_map(|h| text[..line_start].find(h)).min();
        let Some(oops_at) = oops_at else { return Some(panic.join("\n")) };
        let oops_start = text[..oops_at].rfind('\n').map_or(0, |i| i + 1);
        let oops = text[oops_start..line_start].lines();
        let keep = |l: &&str| OOPS_HEADLINES.iter().any(|h| l.contains(h)) || l.contains("RIP:") || l.contains("+0x");
        let mut out: Vec<&str> = oops.filter(keep).take(OOPS_LINES).collect();
        out.extend(panic.iter().take(2));
        Some(out.join("\n"))
    }

    /// The last `n` lines.
    pub fn last_lines(&self, n: usize) -> String {
        let text = self.text();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }
}

/// Lines that start a kernel oops report.
const OOPS_HEADLINES: [&str; 4] = ["BUG: ", "Oops: ", "general protection fault", "kernel BUG at"];
/// Lines of an oops report kept with a panic (headline, RIP, call trace).
const OOPS_LINES: usize = 16;

/// Everything one run produced.
#[derive(Debug, Clone)]
pub struct Collected {
    pub hello: Option<Hello>,
    pub result: Option<RunResult>,
    pub bye: Option<i32>,
    /// A Panic frame from the init.
    pub init_panic: Option<String>,
    pub logs: Vec<(LogLevel, String)>,
    /// Command output bytes received (they were copied out as they came, not kept).
    pub output: Received,
    pub console: Console,
    pub decode: DecodeStats,
    pub phases: Phases,
    pub end: End,
    /// What the backend said when it had to be torn down (timeout, Ctrl-C): e.g. the
    /// micro-VMM's boot phases so far.
    pub teardown: Option<String>,
    /// Scenario telemetry (samples, reports, events, logs), bounded.
    pub telemetry: Telemetry,
    /// The guest's view of its CPU topology (one entry per CPU, bounded by MAX_CPUS).
    pub topology: Vec<ktstr_shared::wire::CpuTopo>,
}

enum Event {
    Console(Vec<u8>),
    Msg(Box<GuestMsg>),
    ChannelClosed(DecodeStats),
    ConsoleClosed,
}

/// Runs until the machine stops, the timeout fires, or Ctrl-C; always leaves it stopped.
pub fn supervise(machine: &mut dyn Machine, timeout: Duration, opts: Options) -> Collected {
    let start = Instant::now();
    let (tx, rx) = mpsc::sync_channel(EVENTS_QUEUED);
    let mut output = output::terminal(opts.stream_output);
    let mut readers = Vec::new();
    if let Some(console) = machine.take_console() {
        readers.push(spawn_console_reader(console, tx.clone()));
    }
    // The write half stays alive for the whole run (host->guest messages come later).
    let _channel_writer = machine.take_channel().map(|(r, w)| {
        readers.push(spawn_channel_reader(r, tx.clone()));
        w
    });
    drop(tx);
    let mut c = Collected {
        hello: None,
        result: None,
        bye: None,
        init_panic: None,
        logs: Vec::new(),
        output: Received::default(),
        console: Console::default(),
        decode: DecodeStats::default(),
        phases: Phases::default(),
        end: End::Interrupted,
        teardown: None,
        telemetry: Telemetry::default(),
        topology: Vec::new(),
    };
    let mut bye_at: Option<Instant> = None;
    c.end = loop {
        if interrupt::interrupted() {
            c.teardown = machine.kill();
            break End::Interrupted;
        }
        if start.elapsed() >= timeout || bye_at.is_some_and(|t| t.elapsed() > POWEROFF_GRACE) {
            c.teardown = machine.kill();
            if bye_at.is_some() {
                // Finished its work but did not power off: still a complete run.
                break End::Exited(MachineExit {
                    success: true,
                    detail: "killed after Bye".into(),
                    stderr: String::new(),
                });
            }
            break End::Timeout(timeout);
        }
        match rx.recv_timeout(Duration::from_millis(50)) {
            Ok(ev) => handle(&mut c, ev, start, opts, &mut bye_at, &mut output),
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => {}
        }
        match machine.try_wait() {
            Ok(Some(exit)) => break End::Exited(exit),
            Ok(None) => {}
            Err(e) => {
                machine.kill();
                break End::Exited(MachineExit {
                    success: false,
                    detail: format!("waiting for the VM: {e}"),
                    stderr: String::new(),
                });
            }
        }
    };
    c.phases.stopped = Some(start.elapsed());
    // The machine is gone: its pipes close, so the readers finish with what was buffered.
    for ev in rx.iter() {
        handle(&mut c, ev, start, opts, &mut bye_at, &mut output);
    }
    c.output = output.received();
    for r in readers {
        let _ = r.join();
    }
    c
}

type Out = output::Output<Box<dyn Write>, Box<dyn Write>>;

fn handle(c: &mut Collected, ev: Event, start: Instant, opts: Options, bye_at: &mut Option<Instant>, out: &mut Out) {
    match ev {
        Event::Console(bytes) => {
            c.phases.first_console_byte.get_or_insert(start.elapsed());
            if opts.echo_console {
                let mut e = std::io::stderr().lock();
                let _ = e.write_all(&bytes);
                let _ = e.flush();
            }
            c.console.push(&bytes);
        }
        Event::Msg(m) => handle_msg(c, *m, start, bye_at, out),
        Event::ChannelClosed(stats) => c.decode = stats,
        Event::ConsoleClosed => {}
    }
}

fn handle_msg(c: &mut Collected, m: GuestMsg, start: Instant, bye_at: &mut Option<Instant>, out: &mut Out) {
    match m {
        GuestMsg::Hello(h) => {
            c.phases.hello.get_or_insert(start.elapsed());
            c.hello = Some(h);
        }
        GuestMsg::ExecOutput { stream, data } => out.push(stream, &data),
        GuestMsg::Result(r) => {
            c.phases.result.get_or_insert(start.elapsed());
            c.result = Some(r);
        }
        GuestMsg::Bye { exit_code } => {
            c.phases.bye.get_or_insert(start.elapsed());
            c.bye = Some(exit_code);
            *bye_at = Some(Instant::now());
        }
        GuestMsg::Panic { text } => c.init_panic = Some(text.as_str().to_owned()),
        GuestMsg::Topology(cpu) if c.topology.len() < ktstr_shared::wire::MAX_CPUS => c.topology.push(cpu),
        GuestMsg::Log { t_ns, level, text } => {
            tracing::info!("guest: {}", text.as_str());
            if c.logs.len() < 10_000 {
                c.logs.push((level, text.as_str().to_owned()));
            }
            c.telemetry.push(GuestMsg::Log { t_ns, level, text });
        }
        // Samples, reports and events: kept (bounded) for the run record.
        other => {
            c.telemetry.push(other);
        }
    }
}

fn spawn_console_reader(mut r: Box<dyn Read + Send>, tx: mpsc::SyncSender<Event>) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 8192];
        loop {
            match r.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if tx.send(Event::Console(buf[..n].to_vec())).is_err() {
                        break;
                    }
                }
            }
        }
        let _ = tx.send(Event::ConsoleClosed);
    })
}

fn spawn_channel_reader(mut r: Box<dyn Read + Send>, tx: mpsc::SyncSender<Event>) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut dec: FrameDecoder<GuestMsg> = FrameDecoder::new();
        let mut buf = vec![0u8; 8192];
        loop {
            match r.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    let mut alive = true;
                    dec.push(&buf[..n], |m| alive &= tx.send(Event::Msg(Box::new(m))).is_ok());
                    if !alive {
                        break;
                    }
                }
            }
        }
        let _ = tx.send(Event::ChannelClosed(*dec.stats()));
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn console_keeps_a_bounded_tail_and_finds_panics() {
        let mut c = Console::default();
        let flood = vec![b'x'; CONSOLE_KEEP * 3];
        c.push(&flood);
        c.push(b"\n[ 1.0] Kernel panic - not syncing: Attempted to kill init!\n[ 1.0] ---[ end ]---\n");
        assert_eq!(c.tail.len(), CONSOLE_KEEP);
        assert!(c.total_bytes > 3 * CONSOLE_KEEP as u64);
        let p = c.kernel_panic().unwrap();
        assert!(p.starts_with("[ 1.0] Kernel panic - not syncing: Attempted to kill init!"), "{p}");
        assert!(Console::default().kernel_panic().is_none());
        // After an oops: the oops headline, RIP and trace first, then the panic line.
        let mut c = Console::default();
        c.push(
            b"[ 4.0] BUG: kernel NULL pointer dereference, address: 0000000000000051\n[ 4.0] #PF: supervisor read\n",
        );
        c.push(
            b"[ 4.0] RIP: 0010:pick_task_fair+0x56/0x110\n[ 4.0] Call Trace:\n[ 4.0]  pick_next_task_fair+0x21/0x210\n",
        );
        c.push(b"[ 4.1] Kernel panic - not syncing: Fatal exception\n[ 4.1] Kernel Offset: disabled\n");
        let p = c.kernel_panic().unwrap();
        let lines: Vec<&str> = p.lines().collect();
        assert!(lines[0].contains("BUG: kernel NULL pointer dereference"), "{p}");
        assert!(lines[1].contains("RIP: 0010:pick_task_fair") && lines[2].contains("pick_next_task_fair"), "{p}");
        assert!(lines[3].contains("Kernel panic - not syncing: Fatal exception"), "{p}");
        assert!(!p.contains("#PF"), "{p}");
    }
}
