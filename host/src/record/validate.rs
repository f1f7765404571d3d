//! A `record.json` read back is untrusted: it may be edited, truncated or come from elsewhere.
//! Before `judge` or `explain` use it, everything their arithmetic and indexing relies on is
//! checked against the limits the run itself had to meet: the topology within the topology
//! module's limits, the plan a valid scenario whose CPUs exist in that topology, the expectations
//! within their bounds, every worker, cgroup, CPU and step id in range, every list no longer
//! than the collector keeps.

use std::path::Path;

use ktstr_shared::scenario::{CpuList, Op, Scenario};
use ktstr_shared::wire::{ScenarioEventKind, mask_cpus};

use super::{MAX_EVENTS, MAX_LOGS, MAX_PARTS, MAX_SAMPLE_ENTRIES, MAX_TICKS, RecordError, RunRecord};

/// `rec` if it can be judged, else an error naming `path` and the field.
pub(super) fn checked(rec: RunRecord, path: &Path) -> Result<RunRecord, RecordError> {
    match check(&rec) {
        Ok(()) => Ok(rec),
        Err(why) => {
            let err =
                std::io::Error::new(std::io::ErrorKind::InvalidData, format!("{why}; this record cannot be judged"));
            Err(RecordError::Io { path: path.into(), err })
        }
    }
}

/// Why `rec` cannot be judged: the field and the problem.
pub(super) fn check(rec: &RunRecord) -> Result<(), String> {
    let m = &rec.meta;
    m.topology.validate().map_err(|e| format!("topology {:?}: {e}", m.topology))?;
    m.plan.validate().map_err(|e| format!("plan ({}): {}", e.at, e.problem))?;
    let cpus = m.topology.cpus();
    plan_cpus(&m.plan, cpus)?;
    m.expect.check(&m.plan)?;
    if m.deadline_ms == 0 {
        return Err("deadline_ms is 0".into());
    }
    let entries = rec.ticks.iter().map(|t| t.workers.len() + t.cpus.len()).fold(0, usize::saturating_add);
    for (what, n, max) in [
        ("ticks", rec.ticks.len(), MAX_TICKS),
        ("tick entries (ticks[].workers and ticks[].cpus)", entries, MAX_SAMPLE_ENTRIES),
        ("reports", rec.reports.len(), ktstr_shared::scenario::MAX_WORKERS),
        ("events", rec.events.len(), MAX_EVENTS),
        ("sched_events", rec.sched_events.len(), MAX_EVENTS),
        ("logs", rec.logs.len(), MAX_LOGS),
    ] {
        if n > max {
            return Err(format!("{what}: {n} entries, more than {max}"));
        }
    }
    let ids = Ids {
        workers: m.plan.cgroup_defs().flat_map(|d| &d.workers).map(|w| w.count).sum(),
        cgroups: m.plan.cgroup_defs().count(),
        cpus,
        steps: m.plan.steps.len(),
    };
    telemetry(rec, &ids)
}

/// The CPU lists of the plan name CPUs of the topology.
fn plan_cpus(plan: &Scenario, cpus: u32) -> Result<(), String> {
    let check = |what: String, list: Option<&CpuList>| match list.and_then(|l| l.0.iter().find(|&&c| c >= cpus)) {
        Some(c) => Err(format!("{what} names CPU {c}, but the topology has {cpus} CPUs")),
        None => Ok(()),
    };
    for (i, cg) in plan.cgroups.iter().enumerate() {
        check(format!("plan.cgroups[{i}].cpuset"), cg.cpuset.as_ref())?;
        for (j, w) in cg.workers.iter().enumerate() {
            check(format!("plan.cgroups[{i}].workers[{j}].affinity"), w.affinity.as_ref())?;
        }
    }
    for (s, step) in plan.steps.iter().enumerate() {
        for (o, op) in step.ops.iter().enumerate() {
            let at = format!("plan.steps[{s}].ops[{o}]");
            match op {
                Op::AddCgroup(cg) => {
                    check(format!("{at}.cpuset"), cg.cpuset.as_ref())?;
                    for (j, w) in cg.workers.iter().enumerate() {
                        check(format!("{at}.workers[{j}].affinity"), w.affinity.as_ref())?;
                    }
                }
                Op::SetCpuset { cpus: c, .. } | Op::SetAffinity { cpus: c, .. } => check(at, c.as_ref())?,
                _ => {}
            }
        }
    }
    Ok(())
}

/// How many workers, cgroups, CPUs and steps the plan has: every id is below these.
struct Ids {
    workers: u32,
    cgroups: usize,
    cpus: u32,
    steps: usize,
}

impl Ids {
    fn check(&self, what: &str, field: &str, value: u64, below: u64) -> Result<(), String> {
        if value < below {
            Ok(())
        } else {
            Err(format!("{what}.{field} {value} is out of range: the plan has {below}"))
        }
    }

    fn worker(&self, what: &str, id: u32, cgroup: u16) -> Result<(), String> {
        self.check(what, "id", id.into(), self.workers.into())?;
        self.check(what, "cgroup", cgroup.into(), self.cgroups as u64)
    }

    fn cpu(&self, what: &str, field: &str, cpu: u32) -> Result<(), String> {
        if cpu < self.cpus {
            Ok(())
        } else {
            Err(format!("{what}.{field} is CPU {cpu}, but the topology has {} CPUs", self.cpus))
        }
    }
}

fn telemetry(rec: &RunRecord, ids: &Ids) -> Result<(), String> {
    for (i, r) in rec.reports.iter().enumerate() {
        let what = format!("reports[{i}]");
        ids.worker(&what, r.id, r.cgroup)?;
        ids.cpu(&what, "max_gap_cpu", r.max_gap_cpu)?;
        mask_cpus(&r.cpus_used).try_for_each(|c| ids.cpu(&what, "cpus_used", c))?;
    }
    for (i, t) in rec.ticks.iter().enumerate() {
        if t.parts > MAX_PARTS || t.received > t.parts {
            return Err(format!("ticks[{i}]: {} of {} parts (at most {MAX_PARTS})", t.received, t.parts));
        }
        for (j, w) in t.workers.iter().enumerate() {
            let what = format!("ticks[{i}].workers[{j}]");
            ids.worker(&what, w.id, w.cgroup)?;
            ids.cpu(&what, "last_cpu", w.last_cpu)?;
            ids.cpu(&what, "max_gap_cpu", w.max_gap_cpu)?;
        }
        for (j, c) in t.cpus.iter().enumerate() {
            ids.cpu(&format!("ticks[{i}].cpus[{j}]"), "cpu", c.cpu)?;
        }
    }
    for (i, e) in rec.events.iter().enumerate() {
        let what = format!("events[{i}]");
        match e.kind {
            ScenarioEventKind::WorkerExited { id } => ids.check(&what, "id", id.into(), ids.workers.into())?,
            ScenarioEventKind::Step { index, .. } => ids.check(&what, "step", index.into(), ids.steps as u64)?,
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::*;
    use crate::collect::telemetry::tests::{report, sample};
    use ktstr_shared::wire::{GuestMsg, ScenarioEvent, ScenarioEventKind};
    use serde_json::{Value, json};

    /// A record the code makes: the catalog's cpuset_swap on 1n2l2c1t, two workers sampled and
    /// reported, and the scenario's events.
    fn record() -> RunRecord {
        let topo: Topology = "1n2l2c1t".parse().unwrap();
        let r = crate::scenario::load("cpuset_swap", &topo, 1.0).unwrap().remove(0);
        let mut t = Telemetry::default();
        let started = ScenarioEventKind::Started { workers: 4, cgroups: 2, cgroups_applied: true };
        t.push(GuestMsg::Scenario(ScenarioEvent { t_ns: 1, kind: started }));
        t.push(GuestMsg::Scenario(ScenarioEvent {
            t_ns: 2,
            kind: ScenarioEventKind::Step { index: 1, failed_ops: 0 },
        }));
        t.push(GuestMsg::Scenario(ScenarioEvent { t_ns: 3, kind: ScenarioEventKind::WorkerExited { id: 3 } }));
        t.push(sample(0, 0, 1, 0..4));
        for id in 0..4 {
            t.push(report(id));
        }
        let meta = RunMeta {
            run_id: run_id("cpuset_swap", &topo),
            scenario: r.info,
            plan: r.scenario,
            expect: r.expect,
            topology: topo,
            scheduler: SchedulerInfo::eevdf(),
            kernel: KernelInfo::default(),
            backend: "qemu (tcg)".into(),
            emulated: true,
            memory_mib: 512,
            deadline_ms: 20_000,
            kernel_append: None,
        };
        RunRecord::new(meta, t)
    }

    /// Writes `rec` as the code does, changed by `edit`, and reads it back.
    fn read_edited(edit: impl FnOnce(&mut Value)) -> Result<RunRecord, String> {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("record.json");
        let mut v = serde_json::to_value(record()).unwrap();
        edit(&mut v);
        std::fs::write(&path, serde_json::to_vec(&v).unwrap()).unwrap();
        RunRecord::read(&path).map_err(|e| e.to_string())
    }

    #[test]
    fn a_record_the_code_made_reads_back() {
        let rec = read_edited(|_| {}).unwrap();
        assert_eq!((rec.meta.plan, rec.reports.len(), rec.ticks.len()), (record().meta.plan, 4, 1));
    }

    /// Each corruption is refused, naming the file and the field, before anything judges it.
    #[test]
    fn out_of_bounds_fields_are_refused_naming_the_file_and_field() {
        type Edit = Box<dyn FnOnce(&mut Value)>;
        let cases: Vec<(&str, Edit)> = vec![
            ("topology", Box::new(|v| v["topology"]["llcs"] = json!(0))),
            ("topology", Box::new(|v| v["topology"]["cores_per_llc"] = json!(4_000_000))),
            ("plan.cgroups[0].cpuset", Box::new(|v| v["plan"]["cgroups"][0]["cpuset"] = json!([9]))),
            ("plan", Box::new(|v| v["plan"]["cgroups"][0]["workers"][0]["count"] = json!(4_000_000_000u32))),
            ("plan", Box::new(|v| v["plan"]["duration_ms"] = json!(u32::MAX))),
            ("plan.steps[1].ops[0]", Box::new(|v| v["plan"]["steps"][1]["ops"][0]["set_cpuset"]["cpus"] = json!([4]))),
            ("reports[0].id", Box::new(|v| v["reports"][0]["id"] = json!(999))),
            ("reports[1].cgroup", Box::new(|v| v["reports"][1]["cgroup"] = json!(77))),
            ("reports[2].max_gap_cpu", Box::new(|v| v["reports"][2]["max_gap_cpu"] = json!(4))),
            ("ticks[0].workers[3].id", Box::new(|v| v["ticks"][0]["workers"][3]["id"] = json!(4))),
            ("ticks[0].workers[1].last_cpu", Box::new(|v| v["ticks"][0]["workers"][1]["last_cpu"] = json!(100))),
            ("events[2]", Box::new(|v| v["events"][2]["kind"]["WorkerExited"]["id"] = json!(4))),
            ("events[1]", Box::new(|v| v["events"][1]["kind"]["Step"]["index"] = json!(2))),
            ("expect.max_gap_ms", Box::new(|v| v["expect"]["max_gap_ms"] = json!(9_000_000_000_000_000_000u64))),
            ("deadline_ms", Box::new(|v| v["deadline_ms"] = json!(0))),
            ("ticks", Box::new(|v| v["ticks"] = json!(vec![v["ticks"][0].clone(); 7000]))),
            ("reports", Box::new(|v| v["reports"] = json!(vec![v["reports"][0].clone(); 2000]))),
        ];
        for (field, edit) in cases {
            let e = read_edited(edit).expect_err(field);
            assert!(e.contains("record.json") && e.contains(field), "{field}: {e}");
        }
    }
}
