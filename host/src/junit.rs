//! JUnit XML of a scenario matrix, for CI systems that show test results (GitLab, Jenkins,
//! GitHub actions that read JUnit): one test suite per scheduler, one test case per scenario
//! run, a failure per failed verdict carrying each failed check's explanation.

use std::path::Path;

use anyhow::{Context, Result};
use quick_junit::{NonSuccessKind, Report, TestCase, TestCaseStatus, TestSuite};

use crate::report::ScenarioRow;
use crate::verdict::Status;

/// The report of `rows`, suites in the order their schedulers first appear.
pub fn report(rows: &[ScenarioRow]) -> Report {
    let mut report = Report::new("ktstr");
    let mut suites: Vec<TestSuite> = Vec::new();
    for row in rows {
        let i = match suites.iter().position(|s| s.name.as_str() == row.scheduler) {
            Some(i) => i,
            None => {
                suites.push(TestSuite::new(row.scheduler.as_str()));
                suites.len() - 1
            }
        };
        suites[i].add_test_case(test_case(row));
    }
    report.add_test_suites(suites);
    report
}

fn test_case(row: &ScenarioRow) -> TestCase {
    let status = match row.status {
        Status::Pass => TestCaseStatus::success(),
        Status::NotJudged => {
            let mut s = TestCaseStatus::skipped();
            s.set_message("not judged: no check had anything to inspect");
            s.set_description(not_judged_lines(row));
            s
        }
        Status::Fail => {
            let mut s = TestCaseStatus::non_success(NonSuccessKind::Failure);
            s.set_message(format!("failed checks: {}", row.failed_names().join(", ")));
            s.set_type(if row.verdict.is_some() && row.error.is_none() { "verdict" } else { "run" });
            let failed = row.verdict.iter().flat_map(|v| v.failures()).map(|c| format!("{}: {}", c.name, c.detail));
            s.set_description(row.error.iter().cloned().chain(failed).collect::<Vec<_>>().join("\n"));
            s
        }
    };
    let mut case = TestCase::new(row.scenario.as_str(), status);
    case.set_classname(format!("ktstr.{}", row.scheduler));
    case.set_time(std::time::Duration::from_secs_f64(row.wall_s.max(0.0)));
    let record = row.record.as_ref().map_or("none".into(), |p| p.display().to_string());
    let not_judged = not_judged_lines(row);
    let sep = if not_judged.is_empty() { "" } else { "\nnot judged:\n" };
    case.set_system_out(format!("record: {record}{sep}{not_judged}"));
    case
}

/// One line per check that was not judged, with its reason.
fn not_judged_lines(row: &ScenarioRow) -> String {
    row.not_judged().map(|c| format!("{}: {}", c.name, c.detail)).collect::<Vec<_>>().join("\n")
}

/// Writes the report of `rows` to `path` through a temp file in the same directory, so a
/// reader never sees half a file; creates missing parent directories.
pub fn write(rows: &[ScenarioRow], path: &Path) -> Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    std::fs::create_dir_all(dir).with_context(|| format!("--junit {}: creating {}", path.display(), dir.display()))?;
    let xml = report(rows).to_string().context("serializing the JUnit report")?;
    let mut tmp = tempfile::NamedTempFile::new_in(dir)
        .with_context(|| format!("--junit {}: creating a temp file in {}", path.display(), dir.display()))?;
    std::io::Write::write_all(&mut tmp, xml.as_bytes()).with_context(|| format!("writing {}", path.display()))?;
    // Readable like any report (temp files start private), e.g. by a CI artifact uploader.
    use std::os::unix::fs::PermissionsExt;
    tmp.as_file()
        .set_permissions(std::fs::Permissions::from_mode(0o644))
        .with_context(|| format!("writing {}", path.display()))?;
    tmp.persist(path).with_context(|| format!("--junit {}: replacing the file", path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::verdict::Status;
    use crate::verdict::{Check, KeyNumbers, Thresholds, Verdict};

    /// A row with made-up checks (no VM): `failed` names the failed checks, `unjudged` those
    /// not judged.
    fn fake_row_with(scenario: &str, scheduler: &str, failed: &[&str], unjudged: &[&str]) -> ScenarioRow {
        let check = |name: &str| {
            let status = if failed.contains(&name) {
                Status::Fail
            } else if unjudged.contains(&name) {
                Status::NotJudged
            } else {
                Status::Pass
            };
            Check {
                name: name.into(),
                status,
                passed: status != Status::Fail,
                skipped: status == Status::NotJudged,
                detail: format!("{name} <detail> & more"),
            }
        };
        let checks = vec![check("run_completed"), check("fairness"), check("max_gap")];
        let status = if !failed.is_empty() {
            Status::Fail
        } else if unjudged.contains(&"max_gap") {
            Status::NotJudged
        } else {
            Status::Pass
        };
        let verdict = Verdict {
            scenario: scenario.into(),
            run_id: "r".into(),
            status,
            passed: status == Status::Pass,
            checks,
            thresholds: Thresholds::default(),
            numbers: KeyNumbers::default(),
        };
        let record = Some(format!("/out/{scenario}/record.json").into());
        ScenarioRow::judged(scenario, scheduler.into(), verdict, record, 6.25, None)
    }

    fn fake_row(scenario: &str, scheduler: &str, failed: &[&str]) -> ScenarioRow {
        fake_row_with(scenario, scheduler, failed, &[])
    }

    #[test]
    fn fake_rows_not_judged_is_skipped_and_a_vm_that_did_not_run_is_a_failure() {
        let rows = [
            fake_row_with("basic_spin", "eevdf", &[], &["fairness"]),
            fake_row_with("idle", "eevdf", &[], &["fairness", "max_gap"]),
            ScenarioRow::failed("cgroup_move", "eevdf".into(), "the VM could not run: no QEMU".into()),
        ];
        assert_eq!(rows.map(|r| r.status), [Status::Pass, Status::NotJudged, Status::Fail]);
        let rows = [
            fake_row_with("basic_spin", "eevdf", &[], &["fairness"]),
            fake_row_with("idle", "eevdf", &[], &["fairness", "max_gap"]),
            ScenarioRow::failed("cgroup_move", "eevdf".into(), "the VM could not run: no QEMU".into()),
        ];
        let xml = report(&rows).to_string().unwrap();
        assert!(xml.contains(r#"tests="3" failures="1""#), "{xml}");
        assert!(xml.contains(r#"<skipped message="not judged: no check had anything to inspect">"#), "{xml}");
        // A passing run still names its unjudged checks.
        assert!(
            xml.contains("<system-out>record: /out/basic_spin/record.json\nnot judged:\nfairness: fairness"),
            "{xml}"
        );
        assert!(
            xml.contains(r#"<failure message="failed checks: vm" type="run">the VM could not run: no QEMU"#),
            "{xml}"
        );
        assert!(xml.contains("<system-out>record: none</system-out>"), "{xml}");
    }

    #[test]
    fn fake_rows_one_suite_per_scheduler_and_a_failure_per_failed_verdict() {
        let rows = [
            fake_row("basic_spin", "eevdf", &[]),
            fake_row("cgroup_move", "eevdf", &["fairness", "max_gap"]),
            fake_row("basic_spin", "scx_qmap -e 50", &[]),
        ];
        let xml = report(&rows).to_string().unwrap();
        assert!(xml.contains(r#"<testsuites name="ktstr" tests="3" failures="1""#), "{xml}");
        assert!(xml.contains(r#"<testsuite name="eevdf" tests="2" disabled="0" errors="0" failures="1""#), "{xml}");
        assert!(xml.contains(r#"<testsuite name="scx_qmap -e 50" tests="1""#), "{xml}");
        assert!(xml.contains(r#"<testcase name="cgroup_move" classname="ktstr.eevdf" time="6.250">"#), "{xml}");
        assert!(xml.contains(r#"<failure message="failed checks: fairness, max_gap" type="verdict">"#), "{xml}");
        // Details are escaped, not raw markup.
        assert!(xml.contains("fairness: fairness &lt;detail&gt; &amp; more\nmax_gap: max_gap"), "{xml}");
        assert!(xml.contains("<system-out>record: /out/cgroup_move/record.json</system-out>"), "{xml}");
    }

    #[test]
    fn written_whole_into_new_directories() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a/b/junit.xml");
        write(&[fake_row("basic_spin", "eevdf", &[])], &path).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.starts_with("<?xml") && text.trim_end().ends_with("</testsuites>"), "{text}");
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o644);
        // Nothing else is left beside it.
        assert_eq!(std::fs::read_dir(path.parent().unwrap()).unwrap().count(), 1);
        // A path that cannot be a file is refused with the option in the message.
        let err = write(&[], dir.path()).unwrap_err();
        assert!(format!("{err:#}").contains("--junit"), "{err:#}");
    }
}
