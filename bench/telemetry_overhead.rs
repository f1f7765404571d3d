//! Telemetry overhead in host mode: work units per second of cpu_spin workers with sampling
//! at a period versus sampling off, several alternating repetitions, medians. Also the
//! sampler's own CPU time per tick (`SystemSample::cost_ns`), a noise-free view of the same
//! cost. Run through bench/telemetry_overhead.sh.
//!
//!   telemetry_overhead INIT [REPS] [DURATION_MS] [WORKERS] [PERIOD_MS]

use std::io::Read;
use std::process::{Command, Stdio};

use ktstr_shared::plan::RunPlan;
use ktstr_shared::scenario::{CgroupSpec, Scenario, WorkType};
use ktstr_shared::wire::{FrameDecoder, GuestMsg, Outcome};

struct Measure {
    /// Work units per second, all workers together.
    rate: f64,
    /// Sampler CPU time per tick, ns (0 when sampling is off).
    cost_per_tick: f64,
    ticks: usize,
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |i: usize, default: u32| args.get(i).map_or(default, |a| a.parse().expect("a number"));
    let init = args.first().expect("usage: telemetry_overhead INIT [REPS] [DURATION_MS] [WORKERS] [PERIOD_MS]");
    let (reps, duration_ms, workers, period_ms) = (arg(1, 7), arg(2, 3000), arg(3, 2), arg(4, 100));
    let plan_path = std::env::temp_dir().join(format!("ktstr-overhead-{}", std::process::id()));
    let (mut on, mut off) = (Vec::new(), Vec::new());
    for rep in 0..reps {
        // Alternate the order so drift in machine load hits both sides alike.
        let order = if rep % 2 == 0 { [period_ms, 0] } else { [0, period_ms] };
        for period in order {
            let m = run(init, &plan_path, duration_ms, workers, period);
            eprintln!("rep {rep} period {period:>3} ms: {:.0} units/s ({} ticks)", m.rate, m.ticks);
            if period == 0 { off.push(m) } else { on.push(m) }
        }
    }
    let _ = std::fs::remove_file(&plan_path);
    let median_rate = |v: &[Measure]| median(v.iter().map(|m| m.rate).collect());
    let (r_on, r_off) = (median_rate(&on), median_rate(&off));
    let cost = median(on.iter().map(|m| m.cost_per_tick).collect());
    let cpus = f64::from(workers.min(nr_cpus()));
    println!(
        "{workers} cpu_spin workers, {duration_ms} ms runs, {reps} repetitions each, sampling every {period_ms} ms"
    );
    println!("median units/s  sampling off: {r_off:.0}   sampling on: {r_on:.0}");
    println!("throughput loss (median): {:.2} %", (r_off - r_on) / r_off * 100.0);
    println!(
        "sampler CPU time per tick (median): {:.1} us = {:.3} % of {cpus} busy CPU(s)",
        cost / 1e3,
        cost / (f64::from(period_ms) * 1e6 * cpus) * 100.0
    );
}

fn run(init: &str, plan_path: &std::path::Path, duration_ms: u32, workers: u32, period_ms: u32) -> Measure {
    let mut scn = Scenario::new(vec![CgroupSpec::new("cg_0").with_workers(workers, WorkType::CpuSpin)], duration_ms);
    scn.sample_period_ms = period_ms;
    let plan = RunPlan { scenario: Some(scn), ..RunPlan::new(duration_ms + 30_000) };
    std::fs::write(plan_path, plan.to_bytes().unwrap()).unwrap();
    let mut child = Command::new(init)
        .args(["--host-mode", "--plan"])
        .arg(plan_path)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("running the init");
    let mut out = Vec::new();
    child.stdout.take().unwrap().read_to_end(&mut out).unwrap();
    child.wait().unwrap();
    let mut msgs = Vec::new();
    FrameDecoder::<GuestMsg>::new().push(&out, |m| msgs.push(m));
    let result = msgs.iter().find_map(|m| if let GuestMsg::Result(r) = m { Some(r) } else { None });
    assert_eq!(result.map(|r| &r.outcome), Some(&Outcome::Completed), "{msgs:?}");
    let rate = msgs
        .iter()
        .filter_map(|m| if let GuestMsg::WorkerReport(r) = m { Some(r) } else { None })
        .map(|r| r.work_units as f64 / (r.wall_ns as f64 / 1e9))
        .sum();
    let costs: Vec<f64> = msgs
        .iter()
        .filter_map(|m| if let GuestMsg::Sample(s) = m { s.system.map(|sys| sys.cost_ns as f64) } else { None })
        .collect();
    let cost_per_tick = if costs.is_empty() { 0.0 } else { costs.iter().sum::<f64>() / costs.len() as f64 };
    Measure { rate, cost_per_tick, ticks: costs.len() }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n == 0 {
        0.0
    } else if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn nr_cpus() -> u32 {
    std::thread::available_parallelism().map_or(1, |n| n.get() as u32)
}
