//! Host-side cost of a scenario run's telemetry: decode the protocol stream of a 60 s run,
//! build its record and judge it; also writing record.json and re-judging from it. The stream
//! is synthesized (16 cpu_spin workers on 4 CPUs, a sample every 100 ms, worker reports with
//! latency histograms) with the real wire encoder, so the decoder sees real frames.
//! Run through bench/judge.sh.
//!
//!   judge_bench [REPS] [SECONDS]

use std::time::{Duration, Instant};

use ktstr_host::record::{KernelInfo, RunMeta, RunRecord, SchedulerInfo, Telemetry, write_json};
use ktstr_host::scenario;
use ktstr_host::verdict::{self, Overrides, Thresholds};
use ktstr_shared::hist;
use ktstr_shared::topology::Topology;
use ktstr_shared::wire::{
    CpuSample, FrameDecoder, GuestMsg, LogLevel, Outcome, RunResult, SAMPLE_CPUS, SAMPLE_WORKERS, Sample,
    ScenarioEvent, ScenarioEventKind, ScxState, SystemSample, WorkerEnd, WorkerReport, WorkerSample, cpu_mask,
    encode_to_vec, text,
};

const MS: u64 = 1_000_000;
const T0: u64 = 2_000 * MS;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |i: usize, d: u32| args.get(i).map_or(d, |a| a.parse().expect("a number"));
    let (reps, seconds) = (arg(0, 21), arg(1, 60));
    let topo: Topology = "1n2l2c1t".parse().expect("topology");
    let scale = f64::from(seconds) / 4.0;
    let mut resolved = scenario::load("stress_oversubscribe_4x", &topo, scale).expect("catalog scenario");
    let r = resolved.remove(0);
    let stream = synthesize(&r.scenario, seconds);
    println!(
        "{} s run, {} workers x {} CPUs, a tick every 100 ms: {} frames, {} KiB on the wire",
        seconds,
        r.scenario.workers().count(),
        topo.cpus(),
        count_frames(&stream),
        stream.len() / 1024
    );
    let (mut judged, mut from_json) = (Vec::new(), Vec::new());
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("record.json");
    let mut verdict_ok = true;
    for _ in 0..reps {
        let t = Instant::now();
        let rec = decode(&stream, &r);
        let v = verdict::judge(&rec, &Thresholds::for_record(&rec, &Overrides::default()));
        judged.push(t.elapsed());
        verdict_ok &= v.passed;
        let t = Instant::now();
        write_json(&path, &rec, false).expect("write record");
        let back = RunRecord::read(&path).expect("read record");
        let v2 = verdict::judge(&back, &Thresholds::for_record(&back, &Overrides::default()));
        from_json.push(t.elapsed());
        assert_eq!(v, v2, "a re-read record judges the same");
    }
    let size = std::fs::metadata(&path).map_or(0, |m| m.len());
    print_times("decode + record + judge", &mut judged);
    print_times(&format!("write record.json ({} KiB) + read + judge", size / 1024), &mut from_json);
    println!("verdict of the synthetic run: {}", if verdict_ok { "PASS" } else { "FAIL" });
}

fn print_times(what: &str, v: &mut [Duration]) {
    v.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!(
        "{what}: min {:.1} ms, median {:.1} ms, max {:.1} ms ({} reps)",
        ms(v[0]),
        ms(v[v.len() / 2]),
        ms(v[v.len() - 1]),
        v.len()
    );
}

/// The host side of a run: frames -> telemetry -> record.
fn decode(stream: &[u8], r: &scenario::Resolved) -> RunRecord {
    let mut dec: FrameDecoder<GuestMsg> = FrameDecoder::new();
    let mut tel = Telemetry::default();
    let mut result = None;
    dec.push(stream, |m| {
        if let Some(GuestMsg::Result(res)) = tel.push(m) {
            result = Some(res);
        }
    });
    let meta = RunMeta {
        run_id: "bench".into(),
        scenario: r.info.clone(),
        plan: r.scenario.clone(),
        expect: r.expect.clone(),
        topology: "1n2l2c1t".parse().expect("topology"),
        scheduler: SchedulerInfo::eevdf(),
        kernel: KernelInfo::default(),
        backend: "synthetic".into(),
        emulated: true,
        memory_mib: 512,
        deadline_ms: scenario::deadline_ms(&r.scenario),
        kernel_append: None,
    };
    let mut rec = RunRecord::new(meta, tel);
    rec.decode = dec.stats().into();
    rec.end.result = result;
    rec
}

fn count_frames(stream: &[u8]) -> usize {
    stream.iter().filter(|&&b| b == 0).count()
}

/// The frames a guest sends for `seconds` of the scenario.
fn synthesize(scn: &ktstr_shared::scenario::Scenario, seconds: u32) -> Vec<u8> {
    let workers = scn.workers().count() as u32;
    let cpus = 4u32;
    let mut out = Vec::new();
    let mut send = |m: &GuestMsg| out.extend(encode_to_vec(m).expect("encodable"));
    send(&GuestMsg::Log { t_ns: T0 - MS, level: LogLevel::Info, text: text("sampling sources: all") });
    let started = ScenarioEventKind::Started { workers, cgroups: 1, cgroups_applied: true };
    send(&GuestMsg::Scenario(ScenarioEvent { t_ns: T0, kind: started }));
    let ticks = u64::from(seconds) * 10;
    for i in 1..=ticks {
        let t = T0 + i * 100 * MS;
        let ws: Vec<WorkerSample> = (0..workers).map(|id| worker_sample(id, i, t, cpus)).collect();
        let cs: Vec<CpuSample> =
            (0..cpus).map(|cpu| CpuSample { cpu, run_ns: 100 * MS, ..Default::default() }).collect();
        let system = SystemSample {
            scx: ScxState::Disabled,
            scx_enable_seq: Some(0),
            procs_running: Some(17),
            cost_ns: 900_000,
        };
        // One frame per tick: 16 workers and 4 CPUs fit the per-frame limits.
        assert!(ws.len() <= SAMPLE_WORKERS && cs.len() <= SAMPLE_CPUS);
        let sample = Sample {
            seq: i as u32 - 1,
            t_ns: t,
            part: 0,
            parts: 1,
            workers: ws.into_iter().collect(),
            cpus: cs.into_iter().collect(),
            system: Some(system),
        };
        send(&GuestMsg::Sample(sample));
    }
    let end = T0 + ticks * 100 * MS;
    send(&GuestMsg::Scenario(ScenarioEvent { t_ns: end, kind: ScenarioEventKind::Finished }));
    for id in 0..workers {
        send(&GuestMsg::WorkerReport(report(id, end - T0, cpus)));
    }
    let result = RunResult {
        outcome: Outcome::Completed,
        wall_ns: end - T0,
        stdout: Default::default(),
        stderr: Default::default(),
    };
    send(&GuestMsg::Result(result));
    send(&GuestMsg::Bye { exit_code: 0 });
    out
}

fn worker_sample(id: u32, i: u64, t: u64, cpus: u32) -> WorkerSample {
    WorkerSample {
        id,
        cgroup: 0,
        units: i * 250 + u64::from(id),
        cpu_time_ns: i * 25 * MS,
        run_delay_ns: i * 75 * MS,
        timeslices: i * 3,
        voluntary_switches: 1,
        involuntary_switches: i * 3,
        migrations: Some(i / 10),
        last_cpu: id % cpus,
        last_progress_ns: t - MS,
        max_gap_ns: 80 * MS,
        max_gap_at_ns: T0 + 500 * MS,
        max_gap_cpu: id % cpus,
    }
}

fn report(id: u32, wall: u64, cpus: u32) -> WorkerReport {
    let mut latency = vec![0u64; hist::BUCKETS];
    for (k, us) in [10u64, 50, 200, 1000, 5000].iter().enumerate() {
        latency[hist::bucket(us * 1000)] = 1000 >> k;
    }
    WorkerReport {
        id,
        cgroup: 0,
        work_units: wall / (100 * MS) * 250,
        cpu_time_ns: wall / 4,
        wall_ns: wall,
        run_delay_ns: wall * 3 / 4,
        timeslices: 1800,
        voluntary_switches: 1,
        involuntary_switches: 1800,
        migrations: Some(60),
        observed_migrations: 60,
        cpus_used: cpu_mask(0..cpus),
        max_gap_ns: 80 * MS,
        max_gap_at_ns: T0 + 500 * MS,
        max_gap_cpu: id % cpus,
        latency: latency.into_iter().collect(),
        end: WorkerEnd::Stopped,
    }
}
