//! The exec'd command's output as it arrives: copied to our stdout and stderr chunk by chunk
//! (never gathered whole), and counted so the report can tell what did not arrive.

use ktstr_shared::wire::{RunResult, Stream, StreamStats};
use std::io::{self, Write};

/// Bytes of command output received from the guest, per stream.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Received {
    pub stdout: u64,
    pub stderr: u64,
}

/// Where output chunks go: two writers (our stdout and stderr, or sinks when not streaming).
pub struct Output<O: Write, E: Write> {
    out: O,
    err: E,
    received: Received,
    /// A writer that failed (e.g. a closed pipe) gets nothing more; counting goes on.
    broken: [bool; 2],
}

/// Our own stdout and stderr when `live`, otherwise nowhere.
pub fn terminal(live: bool) -> Output<Box<dyn Write>, Box<dyn Write>> {
    if live {
        Output::new(Box::new(io::stdout()), Box::new(io::stderr()))
    } else {
        Output::new(Box::new(io::sink()), Box::new(io::sink()))
    }
}

impl<O: Write, E: Write> Output<O, E> {
    pub fn new(out: O, err: E) -> Self {
        Output { out, err, received: Received::default(), broken: [false; 2] }
    }

    /// Writes `data` to the stream's writer at once (flushed: the user sees it as it comes).
    pub fn push(&mut self, stream: Stream, data: &[u8]) {
        let (w, count, broken): (&mut dyn Write, _, _) = match stream {
            Stream::Stdout => (&mut self.out, &mut self.received.stdout, &mut self.broken[0]),
            Stream::Stderr => (&mut self.err, &mut self.received.stderr, &mut self.broken[1]),
        };
        *count = count.saturating_add(data.len() as u64);
        if !*broken && w.write_all(data).and_then(|()| w.flush()).is_err() {
            *broken = true;
        }
    }

    pub fn received(&self) -> Received {
        self.received
    }
}

/// What the user did not see of the output, per stream: the head an output limit dropped,
/// bytes left in the pipe when time was up, and bytes the guest sent that never arrived
/// (frames lost on the channel).
pub fn notes(result: &RunResult, got: Received) -> Vec<String> {
    let streams = [("stdout", result.stdout, got.stdout), ("stderr", result.stderr, got.stderr)];
    streams.into_iter().flat_map(|(name, sent, got)| note(name, sent, got)).collect()
}

fn note(name: &str, s: StreamStats, got: u64) -> Vec<String> {
    let mut out = Vec::new();
    if s.dropped > 0 {
        out.push(format!(
            "{name}: {} bytes dropped by --output-limit (the first ones); the last {} were kept",
            s.dropped, s.sent
        ));
    }
    if s.unread > 0 {
        out.push(format!("{name}: at least {} bytes were left unread when the run's time was up", s.unread));
    }
    if got < s.sent {
        out.push(format!(
            "{name}: {} of the {} bytes the guest sent did not arrive (corrupt frames on the protocol channel)",
            s.sent - got,
            s.sent
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A writer that refuses everything, like a closed pipe.
    struct Closed;
    impl Write for Closed {
        fn write(&mut self, _: &[u8]) -> io::Result<usize> {
            Err(io::ErrorKind::BrokenPipe.into())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn chunks_go_to_their_stream_in_order_and_are_counted() {
        let mut o = Output::new(Vec::new(), Vec::new());
        o.push(Stream::Stdout, b"one\n");
        o.push(Stream::Stderr, b"err\n");
        o.push(Stream::Stdout, b"two\n");
        assert_eq!(o.received(), Received { stdout: 8, stderr: 4 });
        assert_eq!((o.out.as_slice(), o.err.as_slice()), (&b"one\ntwo\n"[..], &b"err\n"[..]));
    }

    #[test]
    fn a_closed_writer_still_counts() {
        let mut o = Output::new(Closed, Vec::new());
        o.push(Stream::Stdout, b"lost");
        o.push(Stream::Stdout, b"lost");
        o.push(Stream::Stderr, b"kept");
        assert_eq!(o.received(), Received { stdout: 8, stderr: 4 });
        assert!(o.broken[0] && !o.broken[1]);
        assert_eq!(o.err, b"kept");
    }

    #[test]
    fn notes_name_the_dropped_and_the_lost_bytes() {
        use ktstr_shared::wire::Outcome;
        let stats = |sent, dropped| StreamStats { sent, dropped, unread: 0 };
        let r =
            RunResult { outcome: Outcome::Exited { code: 0 }, wall_ns: 0, stdout: stats(10, 0), stderr: stats(0, 0) };
        assert!(notes(&r, Received { stdout: 10, stderr: 0 }).is_empty(), "all arrived, nothing dropped");
        let stderr = StreamStats { unread: 4096, ..stats(5, 0) };
        let r = RunResult { stdout: stats(1000, 1_288_895), stderr, ..r };
        let n = notes(&r, Received { stdout: 1000, stderr: 3 });
        assert_eq!(n.len(), 3, "{n:?}");
        assert!(n[0].starts_with("stdout: 1288895 bytes dropped by --output-limit") && n[0].contains("last 1000"));
        assert!(n[1].starts_with("stderr: at least 4096 bytes were left unread"), "{}", n[1]);
        assert!(n[2].starts_with("stderr: 2 of the 5 bytes"), "{}", n[2]);
    }
}
