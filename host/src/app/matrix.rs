//! `run --scenario ...`: the matrix of schedulers x scenarios, one VM per cell, a table row as
//! each finishes. The matrix always completes: a cell whose VM could not run or whose record
//! could not be written is a failed row with the reason, and the table and `--junit` file are
//! written on every path (Ctrl-C included).

use anyhow::Result;

use super::cli::{RunArgs, prepare, request};
use crate::interrupt::{self, Interrupted};
use crate::report::{self, ScenarioRow};
use crate::runner;
use crate::vmm::phases::Marks;

pub fn run_scenarios(args: RunArgs, marks: &mut Marks) -> Result<i32> {
    let resolved = super::scenario::resolve_all(&args.scenario, &args.vm.topology)?;
    let (cache, k, backend) = prepare(&args.vm, marks)?;
    let schedulers = args.scenario.resolve_schedulers(&cache, &k)?;
    let attach = args.scenario.attach_timeout();
    let mut rows = Vec::new();
    'runs: for sched in &schedulers {
        if !args.json {
            println!("\nscheduler {}", sched.label());
            println!("{}", report::scenario_header());
        }
        for r in &resolved {
            let mut plan = crate::scenario::plan(r, !args.vm.console);
            plan.deadline_ms = plan.deadline_ms.saturating_add(sched.extra_deadline_ms(attach));
            plan.scheduler = sched.plan(attach);
            let files = sched.guest_file().into_iter().collect();
            let req = request(&args.vm, k.clone(), backend, plan, files, marks);
            let row = match runner::run(&cache, &req) {
                Ok(out) => super::scenario::finish(r, sched, &k, &req, out, &args.scenario),
                Err(_) if interrupt::interrupted() => break 'runs,
                Err(e) => ScenarioRow::failed(&r.info.name, sched.label(), format!("the VM could not run: {e:#}")),
            };
            if !args.json {
                println!("{}", report::scenario_line(&row));
            }
            rows.push(row);
            if interrupt::interrupted() {
                break 'runs;
            }
        }
    }
    // Also after Ctrl-C: CI still gets the runs that finished.
    let junit = args.scenario.junit.as_ref().map(|path| crate::junit::write(&rows, path));
    if interrupt::interrupted() {
        return Err(Interrupted.into());
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
    } else {
        summary(&rows, schedulers.len(), &args);
    }
    junit.transpose()?;
    Ok(if rows.iter().all(|r| r.passed) { 0 } else { 1 })
}

fn summary(rows: &[ScenarioRow], schedulers: usize, args: &RunArgs) {
    report::print_scenario_failures(rows);
    let passed = rows.iter().filter(|r| r.passed).count();
    let not_judged = rows.iter().filter(|r| r.status == crate::verdict::Status::NotJudged).count();
    let nj = if not_judged > 0 { format!(", {not_judged} not judged") } else { String::new() };
    let matrix = if schedulers > 1 { format!(" ({schedulers} schedulers)") } else { String::new() };
    println!(
        "\n{passed} of {} scenario runs passed{nj}{matrix}; records in {}",
        rows.len(),
        args.scenario.out_dir.display()
    );
}
