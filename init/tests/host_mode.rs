//! The init in host mode over pipes: the same plan logic as in a guest, without a VM.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use ktstr_shared::plan::{ExecPlan, RunPlan};
use ktstr_shared::wire::*;

const INIT: &str = env!("CARGO_BIN_EXE_ktstr-init");

/// A plan file of its own for each call (tests run in parallel).
fn write_plan_bytes(bytes: &[u8]) -> PathBuf {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let path = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("plan-{}-{n}", std::process::id()));
    std::fs::write(&path, bytes).unwrap();
    path
}

fn exec_plan(argv: &[&str], deadline_ms: u32) -> RunPlan {
    RunPlan { exec: Some(ExecPlan::new(argv.iter().copied())), ..RunPlan::new(deadline_ms) }
}

fn spawn(plan: &std::path::Path, stdin: Stdio) -> Child {
    Command::new(INIT)
        .args(["--host-mode", "--plan"])
        .arg(plan)
        .stdin(stdin)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

struct Run {
    msgs: Vec<GuestMsg>,
    status: ExitStatus,
    stats: DecodeStats,
}

impl Run {
    fn output(&self, stream: Stream) -> Vec<u8> {
        let chunks = self.msgs.iter().filter_map(|m| match m {
            GuestMsg::ExecOutput { stream: s, data } if *s == stream => Some(&data[..]),
            _ => None,
        });
        chunks.flatten().copied().collect()
    }

    fn result(&self) -> &RunResult {
        let mut results = self.msgs.iter().filter_map(|m| match m {
            GuestMsg::Result(r) => Some(r),
            _ => None,
        });
        let r = results.next().expect("a Result message");
        assert!(results.next().is_none(), "exactly one Result");
        r
    }

    /// Hello first, Result then Bye last, Bye and exit status agreeing; no broken frames.
    fn assert_well_formed(&self) {
        assert_eq!(self.stats.rejected(), 0, "{:?}", self.stats);
        let GuestMsg::Hello(hello) = &self.msgs[0] else { panic!("first is not Hello: {:?}", self.msgs[0]) };
        assert_eq!(hello.version, PROTOCOL_VERSION);
        assert!(hello.host_mode);
        assert!(hello.nr_cpus >= 1);
        assert!(hello.init_start_ns <= hello.hello_ns);
        let n = self.msgs.len();
        assert!(matches!(self.msgs[n - 2], GuestMsg::Result(_)), "{:?}", self.msgs);
        let GuestMsg::Bye { exit_code } = self.msgs[n - 1] else { panic!("last is not Bye: {:?}", self.msgs) };
        assert_eq!(exit_code, self.result().outcome.exit_code());
        assert_eq!(self.status.code(), Some(exit_code));
    }
}

fn run(plan: &RunPlan) -> Run {
    run_file(&write_plan_bytes(&plan.to_bytes().unwrap()))
}

fn run_file(path: &std::path::Path) -> Run {
    let mut child = spawn(path, Stdio::null());
    let mut out = Vec::new();
    child.stdout.take().unwrap().read_to_end(&mut out).unwrap();
    let status = child.wait().unwrap();
    let mut decoder = FrameDecoder::<GuestMsg>::new();
    let mut msgs = Vec::new();
    decoder.push(&out, |m| msgs.push(m));
    Run { msgs, status, stats: *decoder.stats() }
}

#[test]
fn echo_output_is_streamed() {
    let run = run(&exec_plan(&["/bin/echo", "hello"], 10_000));
    run.assert_well_formed();
    assert_eq!(run.output(Stream::Stdout), b"hello\n");
    assert_eq!(run.output(Stream::Stderr), b"");
    let result = run.result();
    assert_eq!(result.outcome, Outcome::Exited { code: 0 });
    assert_eq!(result.stdout, StreamStats { sent: 6, dropped: 0, unread: 0 });
}

#[test]
fn exit_codes_are_propagated() {
    for code in [1, 42] {
        let script = format!("echo oops >&2; exit {code}");
        let run = run(&exec_plan(&["/bin/sh", "-c", &script], 10_000));
        run.assert_well_formed();
        assert_eq!(run.result().outcome, Outcome::Exited { code });
        assert_eq!(run.output(Stream::Stderr), b"oops\n");
    }
}

#[test]
fn signal_death_is_reported() {
    let run = run(&exec_plan(&["/bin/sh", "-c", "kill -TERM $$"], 10_000));
    run.assert_well_formed();
    assert_eq!(run.result().outcome, Outcome::Signaled { signal: libc::SIGTERM });
    assert_eq!(run.status.code(), Some(128 + libc::SIGTERM));
}

#[test]
fn command_past_the_deadline_times_out() {
    let started = Instant::now();
    let run = run(&exec_plan(&["/bin/sleep", "30"], 300));
    run.assert_well_formed();
    assert_eq!(run.result().outcome, Outcome::TimedOut);
    assert_eq!(run.status.code(), Some(EXIT_TIMED_OUT));
    assert!(started.elapsed() < Duration::from_secs(20), "the sleep was not killed");
}

#[test]
fn missing_binary_fails_to_start() {
    let run = run(&exec_plan(&["/nonexistent/ktstr-binary"], 10_000));
    run.assert_well_formed();
    let Outcome::FailedToStart { reason } = &run.result().outcome else { panic!("{:?}", run.result()) };
    assert!(reason.contains("/nonexistent/ktstr-binary"), "{reason}");
    assert_eq!(run.status.code(), Some(EXIT_FAILED_TO_START));
}

#[test]
fn plan_without_command_completes() {
    let run = run(&RunPlan::new(10_000));
    run.assert_well_formed();
    assert_eq!(run.result().outcome, Outcome::Completed);
    assert_eq!(run.status.code(), Some(0));
}

#[test]
fn env_and_cwd_are_applied() {
    let mut plan = exec_plan(&["sh", "-c", "echo \"$FOO\"; pwd; echo \"$HOME\""], 10_000);
    let exec = plan.exec.as_mut().unwrap();
    exec.env.push(("FOO".into(), "bar".into()));
    exec.cwd = Some("/".into());
    let run = run(&plan);
    run.assert_well_formed();
    // PATH defaults (sh was found), HOME is not inherited from this test.
    assert_eq!(run.output(Stream::Stdout), b"bar\n/\n\n");
}

/// What `seq 1 n` prints.
fn seq(n: u32) -> Vec<u8> {
    (1..=n).flat_map(|i| format!("{i}\n").into_bytes()).collect()
}

#[test]
fn output_limit_keeps_the_tail_and_counts_the_head() {
    let mut plan = exec_plan(&["/bin/sh", "-c", "seq 1 2000; head -c 10 /dev/zero >&2"], 10_000);
    plan.exec.as_mut().unwrap().output_limit = Some(1000);
    let run = run(&plan);
    run.assert_well_formed();
    let all = seq(2000);
    assert_eq!(run.output(Stream::Stdout), all[all.len() - 1000..]);
    let dropped = all.len() as u64 - 1000;
    assert_eq!(run.result().stdout, StreamStats { sent: 1000, dropped, unread: 0 });
    assert_eq!(run.result().stderr, StreamStats { sent: 10, dropped: 0, unread: 0 });
}

#[test]
fn all_output_is_sent_in_order() {
    let run = run(&exec_plan(&["/bin/sh", "-c", "seq 1 200000; echo END >&2"], 60_000));
    run.assert_well_formed();
    let all = seq(200_000);
    assert!(run.output(Stream::Stdout) == all, "all {} bytes of stdout", all.len());
    assert_eq!(run.output(Stream::Stderr), b"END\n");
    assert_eq!(run.result().stdout, StreamStats { sent: all.len() as u64, dropped: 0, unread: 0 });
}

/// Reads the init's whole output `per_read` bytes at a time, pausing `pause` before each
/// read (a slow channel), and decodes it.
fn run_slowly(plan: &RunPlan, per_read: usize, pause: Duration) -> Run {
    let mut child = spawn(&write_plan_bytes(&plan.to_bytes().unwrap()), Stdio::null());
    let mut stdout = child.stdout.take().unwrap();
    let (mut out, mut buf) = (Vec::new(), vec![0u8; per_read]);
    loop {
        std::thread::sleep(pause);
        match stdout.read(&mut buf).unwrap() {
            0 => break,
            n => out.extend_from_slice(&buf[..n]),
        }
    }
    let status = child.wait().unwrap();
    let mut decoder = FrameDecoder::<GuestMsg>::new();
    let mut msgs = Vec::new();
    decoder.push(&out, |m| msgs.push(m));
    Run { msgs, status, stats: *decoder.stats() }
}

/// The kept tail is sent after the command ends; on a slow channel that may take longer than
/// the watchdog's grace past the deadline, and it still arrives whole.
#[test]
fn a_tail_slower_to_send_than_the_grace_still_arrives() {
    let mut plan = exec_plan(&["/bin/sh", "-c", "seq 1 100000"], 1000);
    plan.exec.as_mut().unwrap().output_limit = Some(300_000);
    let started = Instant::now();
    // About 50 KiB/s: 300 KB take some 6 s, past the deadline (1 s) plus the grace (2 s).
    let run = run_slowly(&plan, 1024, Duration::from_millis(20));
    assert!(started.elapsed() > Duration::from_secs(4), "the flush was meant to outlast the grace");
    run.assert_well_formed();
    let all = seq(100_000);
    assert!(run.output(Stream::Stdout) == all[all.len() - 300_000..], "{} bytes", run.output(Stream::Stdout).len());
    assert_eq!(run.result().stdout, StreamStats { sent: 300_000, dropped: all.len() as u64 - 300_000, unread: 0 });
}

/// A host slower than the command: the command waits, and what its pipe still holds when it
/// exits is sent too, however long that takes (within the deadline).
#[test]
fn a_slow_host_loses_nothing() {
    // About 50 KiB/s: a pipe's worth left at the command's exit takes over a second.
    let run = run_slowly(&exec_plan(&["/bin/sh", "-c", "seq 1 40000"], 60_000), 1024, Duration::from_millis(20));
    run.assert_well_formed();
    let (got, want) = (run.output(Stream::Stdout), seq(40_000));
    assert!(got == want, "{} of {} bytes", got.len(), want.len());
}

#[test]
fn background_leftovers_do_not_hold_the_run() {
    let started = Instant::now();
    let run = run(&exec_plan(&["/bin/sh", "-c", "sleep 30 & echo started"], 20_000));
    run.assert_well_formed();
    assert_eq!(run.result().outcome, Outcome::Exited { code: 0 });
    assert_eq!(run.output(Stream::Stdout), b"started\n");
    assert!(started.elapsed() < Duration::from_secs(15), "waited for the background sleep");
}

#[test]
fn missing_or_bad_plan_is_a_panic_frame() {
    let missing = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("no-such-plan");
    let garbage = write_plan_bytes(b"\x01\x02garbage");
    let zero_deadline = write_plan_bytes(&RunPlan::new(0).to_bytes().unwrap());
    for (path, needle) in [(missing, "cannot read"), (garbage, "bad run plan"), (zero_deadline, "deadline")] {
        let run = run_file(&path);
        assert!(matches!(run.msgs[0], GuestMsg::Hello(_)), "{:?}", run.msgs);
        let Some(GuestMsg::Panic { text }) = run.msgs.last() else { panic!("{:?}", run.msgs) };
        assert!(text.contains(needle), "{text}");
        assert_eq!(run.status.code(), Some(EXIT_INIT_FAILED));
        assert_eq!(run.stats.rejected(), 0);
    }
}

/// Host messages on stdin: Ping is answered, Stop kills the command. Synchronised on the
/// init's own replies, not on time.
#[test]
fn ping_and_stop_over_stdin() {
    let path = write_plan_bytes(&exec_plan(&["/bin/sleep", "30"], 60_000).to_bytes().unwrap());
    let mut child = spawn(&path, Stdio::piped());
    let mut stdin = child.stdin.take().unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let mut decoder = FrameDecoder::<GuestMsg>::new();
    let mut msgs = Vec::new();
    let mut next = |want: &dyn Fn(&GuestMsg) -> bool, msgs: &mut Vec<GuestMsg>| {
        while !msgs.iter().any(want) {
            let mut buf = [0u8; 4096];
            let n = stdout.read(&mut buf).unwrap();
            assert!(n > 0, "EOF before the expected message: {msgs:?}");
            decoder.push(&buf[..n], |m| msgs.push(m));
        }
    };
    stdin.write_all(&encode_to_vec(&HostMsg::Ping { seq: 7 }).unwrap()).unwrap();
    next(&|m| *m == GuestMsg::Pong { seq: 7 }, &mut msgs);
    let started = Instant::now();
    stdin.write_all(&encode_to_vec(&HostMsg::Stop).unwrap()).unwrap();
    next(&|m| matches!(m, GuestMsg::Bye { .. }), &mut msgs);
    let status = child.wait().unwrap();
    assert!(started.elapsed() < Duration::from_secs(20), "Stop did not end the run");
    let result = msgs.iter().find_map(|m| match m {
        GuestMsg::Result(r) => Some(r.outcome.clone()),
        _ => None,
    });
    assert_eq!(result, Some(Outcome::Stopped));
    assert_eq!(msgs.last(), Some(&GuestMsg::Bye { exit_code: EXIT_STOPPED }));
    assert_eq!(status.code(), Some(EXIT_STOPPED));
}

#[test]
fn wait_for_start_waits_for_the_host() {
    let mut plan = exec_plan(&["/bin/echo", "go"], 60_000);
    plan.wait_for_start = true;
    let path = write_plan_bytes(&plan.to_bytes().unwrap());
    let mut child = spawn(&path, Stdio::piped());
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(&encode_to_vec(&HostMsg::Start).unwrap()).unwrap();
    let mut out = Vec::new();
    child.stdout.take().unwrap().read_to_end(&mut out).unwrap();
    assert_eq!(child.wait().unwrap().code(), Some(0));
    let mut msgs = Vec::new();
    FrameDecoder::<GuestMsg>::new().push(&out, |m| msgs.push(m));
    assert!(msgs.contains(&GuestMsg::ExecOutput { stream: Stream::Stdout, data: chunk(b"go\n") }));
}

#[test]
fn usage_errors_exit_2() {
    let out = Command::new(INIT).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--host-mode"));
    let out = Command::new(INIT).arg("--host-mode").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
}

/// A host that stops reading blocks the init inside a write; the watchdog still ends it.
#[test]
fn watchdog_ends_a_stuck_init() {
    let mut plan = exec_plan(&["/bin/sh", "-c", "exec head -c 100000000 /dev/zero"], 300);
    plan.exec.as_mut().unwrap().output_limit = None;
    let path = write_plan_bytes(&plan.to_bytes().unwrap());
    let started = Instant::now();
    let mut child = spawn(&path, Stdio::null());
    // Not reading stdout: the pipe fills and the init blocks writing ExecOutput frames.
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(EXIT_TIMED_OUT));
    assert!(started.elapsed() < Duration::from_secs(20), "the watchdog did not fire");
    let mut out = Vec::new();
    child.stdout.take().unwrap().read_to_end(&mut out).unwrap();
    let mut msgs = Vec::new();
    FrameDecoder::<GuestMsg>::new().push(&out, |m| msgs.push(m));
    assert!(matches!(msgs[0], GuestMsg::Hello(_)));
    assert!(!msgs.iter().any(|m| matches!(m, GuestMsg::Bye { .. })), "the main path was not stuck");
}
