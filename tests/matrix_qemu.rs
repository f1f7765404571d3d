//! The scenario matrix always completes: a cell whose record cannot be written is a failed row
//! with the reason, and the table, the summary and the JUnit file are still written. One real
//! VM (QEMU TCG, the default kernel), a short scenario.

mod common;

use common::*;

#[test]
fn a_record_that_cannot_be_written_fails_its_row_and_the_matrix_still_reports() {
    let Some(k) = default_kernel() else { return };
    let tmp = tempfile::tempdir().unwrap();
    // A regular file where the results directory should be: no run directory can be made.
    let blocker = tmp.path().join("not-a-dir");
    std::fs::write(&blocker, "x").unwrap();
    let junit = tmp.path().join("junit.xml");
    let mut c = host();
    c.args(["run", "--backend", "qemu", "--kernel", k["image"].as_str().unwrap(), "--topology", "1n1l2c1t"]);
    c.args(["--scenario", "basic_spin", "--duration-scale", "0.25"]);
    c.arg("--out-dir").arg(blocker.join("results")).arg("--junit").arg(&junit);
    let out = {
        let _guard = vm_lock();
        run(&mut c)
    };
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "a failed row fails the run");
    let row = stdout.lines().find(|l| l.starts_with("basic_spin")).expect("a table row for basic_spin");
    assert!(row.contains("FAIL") && row.contains("record"), "{row}");
    assert!(stdout.contains("the record could not be written"), "{stdout}");
    assert!(stdout.contains("0 of 1 scenario runs passed"), "{stdout}");
    let xml = std::fs::read_to_string(&junit).expect("the JUnit file is written");
    assert!(xml.contains(r#"<failure message="failed checks: record" type="run">"#), "{xml}");
}
