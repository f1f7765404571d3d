//! Round trips of every message and robustness of the frame decoder against hostile input.

use ktstr_shared::wire::*;
use proptest::prelude::*;

fn hello() -> Hello {
    Hello {
        version: PROTOCOL_VERSION,
        kernel_release: text("6.12.117-ktstr"),
        nr_cpus: 4,
        host_mode: false,
        init_start_ns: 1_700_000_000,
        mounts_done_ns: 1_702_000_000,
        hello_ns: 1_703_000_000,
    }
}

fn every_guest_msg() -> Vec<GuestMsg> {
    let stats = StreamStats { sent: 6, dropped: 0, unread: 0 };
    vec![
        GuestMsg::Hello(hello()),
        GuestMsg::Log { t_ns: 5, level: LogLevel::Warn, text: text("mount debugfs: ENODEV") },
        GuestMsg::Sample(sample(9, 3, 2)),
        GuestMsg::WorkerReport(report(3, 1 << 40, 7)),
        GuestMsg::SchedulerEvent { t_ns: 1, kind: SchedEventKind::Attached, text: text("simple") },
        GuestMsg::ExecOutput { stream: Stream::Stdout, data: chunk(b"hello\n") },
        GuestMsg::ExecOutput { stream: Stream::Stderr, data: chunk(&[0, 255, 0]) },
        GuestMsg::Result(RunResult {
            outcome: Outcome::Exited { code: 42 },
            wall_ns: 10,
            stdout: stats,
            stderr: StreamStats::default(),
        }),
        GuestMsg::Result(RunResult {
            outcome: Outcome::FailedToStart { reason: text("ENOENT") },
            wall_ns: 0,
            stdout: stats,
            stderr: stats,
        }),
        GuestMsg::Panic { text: text("boom at init/src/main.rs:1:1") },
        GuestMsg::Bye { exit_code: -1 },
        GuestMsg::Pong { seq: u32::MAX },
        GuestMsg::Scenario(ScenarioEvent {
            t_ns: 3,
            kind: ScenarioEventKind::Started { workers: 4, cgroups: 2, cgroups_applied: true },
        }),
        GuestMsg::Scenario(ScenarioEvent { t_ns: 4, kind: ScenarioEventKind::Step { index: 1, failed_ops: 0 } }),
        GuestMsg::Scenario(ScenarioEvent { t_ns: 5, kind: ScenarioEventKind::WorkerExited { id: 2 } }),
        GuestMsg::Scenario(ScenarioEvent { t_ns: 6, kind: ScenarioEventKind::Finished }),
    ]
}

fn sample(t_ns: u64, workers: u32, cpus: u32) -> Sample {
    Sample {
        seq: 1,
        t_ns,
        part: 0,
        parts: 1,
        workers: (0..workers)
            .map(|id| WorkerSample { id, units: t_ns.wrapping_mul(3), migrations: Some(2), ..Default::default() })
            .collect(),
        cpus: (0..cpus).map(|cpu| CpuSample { cpu, nr_running: Some(1), run_ns: t_ns, ..Default::default() }).collect(),
        system: Some(SystemSample {
            scx: ScxState::Enabled,
            scx_enable_seq: Some(1),
            procs_running: Some(3),
            cost_ns: 5,
        }),
    }
}

fn report(id: u32, work_units: u64, cpu_time_ns: u64) -> WorkerReport {
    WorkerReport {
        id,
        cgroup: 1,
        work_units,
        cpu_time_ns,
        wall_ns: cpu_time_ns.wrapping_mul(2),
        run_delay_ns: 3,
        timeslices: 4,
        voluntary_switches: 5,
        involuntary_switches: 6,
        migrations: None,
        observed_migrations: 7,
        cpus_used: cpu_mask([0, 3, 70]),
        max_gap_ns: 8,
        max_gap_at_ns: 9,
        max_gap_cpu: 3,
        latency: [0, 5, 1].into_iter().collect(),
        end: WorkerEnd::Signaled { signal: 9 },
    }
}

/// The largest sample frame: every field at its widest encoding.
fn maximal_sample() -> Sample {
    let worker = WorkerSample {
        id: u32::MAX,
        cgroup: u16::MAX,
        units: u64::MAX,
        cpu_time_ns: u64::MAX,
        run_delay_ns: u64::MAX,
        timeslices: u64::MAX,
        voluntary_switches: u64::MAX,
        involuntary_switches: u64::MAX,
        migrations: Some(u64::MAX),
        last_cpu: u32::MAX,
        last_progress_ns: u64::MAX,
        max_gap_ns: u64::MAX,
        max_gap_at_ns: u64::MAX,
        max_gap_cpu: u32::MAX,
    };
    let cpu = CpuSample {
        cpu: u32::MAX,
        nr_running: Some(u32::MAX),
        sched_count: u64::MAX,
        sched_goidle: u64::MAX,
        ttwu_count: u64::MAX,
        ttwu_local: u64::MAX,
        run_ns: u64::MAX,
        run_delay_ns: u64::MAX,
        timeslices: u64::MAX,
    };
    let system = SystemSample {
        scx: ScxState::Other,
        scx_enable_seq: Some(u64::MAX),
        procs_running: Some(u32::MAX),
        cost_ns: u64::MAX,
    };
    Sample {
        seq: u32::MAX,
        t_ns: u64::MAX,
        part: u16::MAX,
        parts: u16::MAX,
        workers: core::iter::repeat_n(worker, SAMPLE_WORKERS).collect(),
        cpus: core::iter::repeat_n(cpu, SAMPLE_CPUS).collect(),
        system: Some(system),
    }
}

fn maximal_report() -> WorkerReport {
    WorkerReport {
        id: u32::MAX,
        cgroup: u16::MAX,
        work_units: u64::MAX,
        cpu_time_ns: u64::MAX,
        wall_ns: u64::MAX,
        run_delay_ns: u64::MAX,
        timeslices: u64::MAX,
        voluntary_switches: u64::MAX,
        involuntary_switches: u64::MAX,
        migrations: Some(u64::MAX),
        observed_migrations: u64::MAX,
        cpus_used: core::iter::repeat_n(u64::MAX, CPU_MASK_WORDS).collect(),
        max_gap_ns: u64::MAX,
        max_gap_at_ns: u64::MAX,
        max_gap_cpu: u32::MAX,
        latency: core::iter::repeat_n(u64::MAX, ktstr_shared::hist::BUCKETS).collect(),
        end: WorkerEnd::Signaled { signal: i32::MIN },
    }
}

/// The largest value of each bounded variant.
fn maximal_guest_msgs() -> Vec<GuestMsg> {
    let big_text: Text = text(&"\u{10FFFF}".repeat(MAX_TEXT));
    vec![
        GuestMsg::Hello(Hello {
            kernel_release: text(&"x".repeat(100)),
            init_start_ns: u64::MAX,
            mounts_done_ns: u64::MAX,
            hello_ns: u64::MAX,
            nr_cpus: u32::MAX,
            ..hello()
        }),
        GuestMsg::Log { t_ns: u64::MAX, level: LogLevel::Debug, text: big_text.clone() },
        GuestMsg::Sample(maximal_sample()),
        GuestMsg::WorkerReport(maximal_report()),
        GuestMsg::SchedulerEvent { t_ns: u64::MAX, kind: SchedEventKind::Other, text: big_text },
        GuestMsg::ExecOutput { stream: Stream::Stderr, data: chunk(&[0xff; 2 * MAX_CHUNK]) },
        GuestMsg::Result(RunResult {
            outcome: Outcome::FailedToStart { reason: text(&"y".repeat(5000)) },
            wall_ns: u64::MAX,
            stdout: StreamStats { sent: u64::MAX, dropped: u64::MAX, unread: u64::MAX },
            stderr: StreamStats { sent: u64::MAX, dropped: u64::MAX, unread: u64::MAX },
        }),
        GuestMsg::Panic { text: text(&"z".repeat(5000)) },
    ]
}

fn decode_all<M: serde::de::DeserializeOwned>(bytes: &[u8]) -> (Vec<M>, DecodeStats) {
    let mut dec = FrameDecoder::<M>::new();
    let mut out = Vec::new();
    dec.push(bytes, |m| out.push(m));
    (out, *dec.stats())
}

#[test]
fn every_guest_variant_round_trips() {
    for msg in every_guest_msg().into_iter().chain(maximal_guest_msgs()) {
        let frame = encode_to_vec(&msg).unwrap();
        assert!(frame.len() <= MAX_FRAME, "{} bytes for {msg:?}", frame.len());
        assert_eq!(frame.iter().filter(|&&b| b == 0).count(), 1, "one delimiter, at the end");
        assert_eq!(frame.last(), Some(&0));
        let (got, stats) = decode_all::<GuestMsg>(&frame);
        assert_eq!(got, vec![msg]);
        assert_eq!(stats.frames, 1);
        assert_eq!(stats.rejected(), 0);
    }
}

#[test]
fn every_host_variant_round_trips() {
    for msg in [HostMsg::Start, HostMsg::Stop, HostMsg::Ping { seq: 7 }] {
        let mut buf = [0u8; MAX_FRAME];
        let frame = encode(&msg, &mut buf).unwrap().to_vec();
        assert_eq!(decode_all::<HostMsg>(&frame).0, vec![msg]);
    }
}

#[test]
fn text_cuts_at_char_boundary() {
    let t: heapless::String<4> = text("aé€");
    assert_eq!(t.as_str(), "aé");
    let c: heapless::Vec<u8, 2> = chunk(b"abc");
    assert_eq!(&c[..], b"ab");
}

#[test]
fn encode_reports_small_buffer_and_large_payload() {
    let mut small = [0u8; 8];
    let msg = GuestMsg::Panic { text: text("longer than eight bytes") };
    assert_eq!(encode(&msg, &mut small), Err(WireError::BufferTooSmall));
    let mut buf = [0u8; MAX_FRAME];
    let huge = vec![1u8; MAX_PAYLOAD + 1];
    assert_eq!(encode(&huge, &mut buf), Err(WireError::TooLarge));
}

#[test]
fn other_message_type_is_bad_postcard() {
    // A valid frame whose payload has trailing bytes for `HostMsg`.
    let frame = encode_to_vec(&(HostMsg::Stop, 7u8)).unwrap();
    let (got, stats) = decode_all::<HostMsg>(&frame);
    assert!(got.is_empty());
    assert_eq!(stats.bad_postcard, 1);
    assert_eq!(stats.dropped_bytes, frame.len() as u64 - 1);
}

#[test]
fn short_frame_is_bad_crc() {
    let (got, stats) = decode_all::<HostMsg>(&[3, 1, 2, 0]);
    assert!(got.is_empty());
    assert_eq!((stats.bad_crc, stats.dropped_bytes), (1, 3));
}

#[test]
fn oversize_run_is_dropped_once_and_decoding_resumes() {
    let msg = GuestMsg::Pong { seq: 1 };
    let mut stream = vec![0x55u8; 3 * MAX_FRAME];
    stream.push(0);
    stream.extend(encode_to_vec(&msg).unwrap());
    let mut dec = FrameDecoder::<GuestMsg>::new();
    let mut results = Vec::new();
    dec.push_results(&stream, |r| results.push(r));
    assert_eq!(results, vec![Err(FrameError::Oversize), Ok(msg)]);
    assert!(dec.pending() == 0);
    assert_eq!(dec.stats().oversize, 1);
    assert_eq!(dec.stats().dropped_bytes, 3 * MAX_FRAME as u64);
}

#[test]
fn frame_of_exactly_max_size_is_accepted_by_length() {
    // MAX_FRAME - 1 bytes then a delimiter is not oversize (it fails COBS/CRC instead).
    let mut stream = vec![0x01u8; MAX_FRAME - 1];
    stream.push(0);
    let (_, stats) = decode_all::<GuestMsg>(&stream);
    assert_eq!(stats.oversize, 0);
    assert_eq!(stats.rejected(), 1);
    let mut stream = vec![0x01u8; MAX_FRAME];
    stream.push(0);
    assert_eq!(decode_all::<GuestMsg>(&stream).1.oversize, 1);
}

fn arb_text() -> impl Strategy<Value = Text> {
    ".{0,300}".prop_map(|s| text(&s))
}

fn arb_outcome() -> impl Strategy<Value = Outcome> {
    prop_oneof![
        Just(Outcome::Completed),
        any::<i32>().prop_map(|code| Outcome::Exited { code }),
        any::<i32>().prop_map(|signal| Outcome::Signaled { signal }),
        Just(Outcome::TimedOut),
        Just(Outcome::Stopped),
        arb_text().prop_map(|reason| Outcome::FailedToStart { reason }),
    ]
}

fn arb_stream() -> impl Strategy<Value = Stream> {
    prop_oneof![Just(Stream::Stdout), Just(Stream::Stderr)]
}

fn arb_guest_msg() -> impl Strategy<Value = GuestMsg> {
    let stats = (any::<u64>(), any::<u64>(), any::<u64>()).prop_map(|(sent, dropped, unread)| StreamStats {
        sent,
        dropped,
        unread,
    });
    prop_oneof![
        (any::<u16>(), any::<u32>(), any::<u64>())
            .prop_map(|(version, nr_cpus, t)| { GuestMsg::Hello(Hello { version, nr_cpus, hello_ns: t, ..hello() }) }),
        (any::<u64>(), arb_text()).prop_map(|(t_ns, text)| GuestMsg::Log { t_ns, level: LogLevel::Info, text }),
        (any::<u64>(), 0..=SAMPLE_WORKERS as u32, 0..=SAMPLE_CPUS as u32)
            .prop_map(|(t_ns, w, c)| GuestMsg::Sample(sample(t_ns, w, c))),
        (any::<u32>(), any::<u64>(), any::<u64>()).prop_map(|(id, w, c)| GuestMsg::WorkerReport(report(id, w, c))),
        (any::<u64>(), arb_text()).prop_map(|(t_ns, text)| GuestMsg::SchedulerEvent {
            t_ns,
            kind: SchedEventKind::Error,
            text
        }),
        (arb_stream(), proptest::collection::vec(any::<u8>(), 0..=MAX_CHUNK))
            .prop_map(|(stream, d)| GuestMsg::ExecOutput { stream, data: chunk(&d) }),
        (arb_outcome(), any::<u64>(), stats.clone(), stats).prop_map(|(outcome, wall_ns, stdout, stderr)| {
            GuestMsg::Result(RunResult { outcome, wall_ns, stdout, stderr })
        }),
        arb_text().prop_map(|text| GuestMsg::Panic { text }),
        any::<i32>().prop_map(|exit_code| GuestMsg::Bye { exit_code }),
        any::<u32>().prop_map(|seq| GuestMsg::Pong { seq }),
    ]
}

fn frames(msgs: &[GuestMsg]) -> Vec<u8> {
    msgs.iter().flat_map(|m| encode_to_vec(m).unwrap()).collect()
}

proptest! {
    #[test]
    fn random_messages_round_trip(msgs in proptest::collection::vec(arb_guest_msg(), 0..8)) {
        let (got, stats) = decode_all::<GuestMsg>(&frames(&msgs));
        prop_assert_eq!(stats.frames, msgs.len() as u64);
        prop_assert_eq!(got, msgs);
    }

    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..3 * MAX_FRAME)) {
        let mut dec = FrameDecoder::<GuestMsg>::new();
        dec.push(&bytes, |_| {});
        prop_assert!(dec.pending() < MAX_FRAME);
        let mut host = FrameDecoder::<HostMsg>::new();
        host.push(&bytes, |_| {});
    }

    #[test]
    fn valid_frames_after_garbage_are_decoded(
        garbage in proptest::collection::vec(any::<u8>(), 0..2 * MAX_FRAME),
        msgs in proptest::collection::vec(arb_guest_msg(), 1..4),
    ) {
        let mut stream = garbage.clone();
        stream.push(0);
        stream.extend(frames(&msgs));
        let (got, stats) = decode_all::<GuestMsg>(&stream);
        prop_assert_eq!(got, msgs);
        // Every non-delimiter garbage byte belongs to a rejected frame.
        let nonzero = garbage.iter().filter(|&&b| b != 0).count() as u64;
        prop_assert_eq!(stats.dropped_bytes, nonzero);
    }

    #[test]
    fn truncated_frame_is_rejected_and_next_decoded(
        first in arb_guest_msg(),
        second in arb_guest_msg(),
        cut in any::<prop::sample::Index>(),
    ) {
        let frame = encode_to_vec(&first).unwrap();
        let mut stream = frame[..cut.index(frame.len() - 1)].to_vec();
        stream.push(0);
        stream.extend(encode_to_vec(&second).unwrap());
        let (got, stats) = decode_all::<GuestMsg>(&stream);
        prop_assert_eq!(got, vec![second]);
        prop_assert_eq!(stats.frames, 1);
    }

    #[test]
    fn flipped_bit_is_rejected_and_next_decoded(
        first in arb_guest_msg(),
        second in arb_guest_msg(),
        at in any::<prop::sample::Index>(),
        bit in 0u8..8,
    ) {
        let mut frame = encode_to_vec(&first).unwrap();
        let last = frame.len() - 1; // keep the delimiter
        frame[at.index(last)] ^= 1 << bit;
        let mut stream = frame;
        stream.extend(encode_to_vec(&second).unwrap());
        let (got, stats) = decode_all::<GuestMsg>(&stream);
        prop_assert_eq!(got, vec![second]);
        prop_assert!(stats.rejected() >= 1);
    }

    #[test]
    fn oversize_garbage_then_valid(
        len in MAX_FRAME..3 * MAX_FRAME,
        fill in 1u8..=255,
        msg in arb_guest_msg(),
    ) {
        let mut stream = vec![fill; len];
        stream.push(0);
        stream.extend(encode_to_vec(&msg).unwrap());
        let (got, stats) = decode_all::<GuestMsg>(&stream);
        prop_assert_eq!(got, vec![msg]);
        prop_assert_eq!(stats.oversize, 1);
        prop_assert_eq!(stats.dropped_bytes, len as u64);
    }

    #[test]
    fn any_split_equals_whole(
        msgs in proptest::collection::vec(arb_guest_msg(), 0..6),
        garbage in proptest::collection::vec(any::<u8>(), 0..200),
        cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..10),
    ) {
        let mut stream = frames(&msgs[..msgs.len() / 2]);
        stream.extend(&garbage);
        stream.extend(frames(&msgs[msgs.len() / 2..]));
        let (whole, whole_stats) = decode_all::<GuestMsg>(&stream);

        let mut byte_dec = FrameDecoder::<GuestMsg>::new();
        let bytewise: Vec<_> = stream.iter().filter_map(|&b| byte_dec.feed(b)?.ok()).collect();
        prop_assert_eq!(&bytewise, &whole);
        prop_assert_eq!(byte_dec.stats(), &whole_stats);

        let mut at: Vec<usize> = cuts.iter().map(|c| c.index(stream.len() + 1)).collect();
        at.sort_unstable();
        let mut split_dec = FrameDecoder::<GuestMsg>::new();
        let mut split = Vec::new();
        let mut start = 0;
        for end in at.into_iter().chain([stream.len()]) {
            split_dec.push(&stream[start..end], |m| split.push(m));
            start = end;
        }
        prop_assert_eq!(&split, &whole);
        prop_assert_eq!(split_dec.stats(), &whole_stats);
    }

    /// Output written in pieces of any size to either stream arrives whole and in order per
    /// stream, in frames that never exceed the limits.
    #[test]
    fn output_in_chunks_arrives_whole_per_stream(
        writes in proptest::collection::vec((arb_stream(), proptest::collection::vec(any::<u8>(), 0..3 * MAX_CHUNK)), 0..8),
    ) {
        let msgs: Vec<GuestMsg> = writes.iter().flat_map(|(s, d)| output_chunks(*s, d)).collect();
        for m in &msgs {
            let GuestMsg::ExecOutput { data, .. } = m else { unreachable!() };
            prop_assert!(!data.is_empty() && data.len() <= MAX_CHUNK);
            prop_assert!(encode_to_vec(m).unwrap().len() <= MAX_FRAME);
        }
        let (got, stats) = decode_all::<GuestMsg>(&frames(&msgs));
        prop_assert_eq!(stats.rejected(), 0);
        let mut received = [Vec::new(), Vec::new()];
        for m in got {
            let GuestMsg::ExecOutput { stream, data } = m else { unreachable!() };
            received[stream as usize].extend_from_slice(&data);
        }
        for (i, stream) in [Stream::Stdout, Stream::Stderr].into_iter().enumerate() {
            let written: Vec<u8> = writes.iter().filter(|(s, _)| *s == stream).flat_map(|(_, d)| d.clone()).collect();
            prop_assert_eq!(&received[i], &written);
        }
    }
}
