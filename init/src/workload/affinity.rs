//! affinity_churn: pins itself to each allowed CPU in turn (`sched_setaffinity`), spinning a
//! little on each. Exercises the migration path; a CPU that has left the cpuset since the
//! start is skipped.

use super::{Ctx, spin};
use crate::sys;

pub fn run(ctx: &mut Ctx, spin_iters: u32) {
    let allowed = match sys::get_affinity(0) {
        Ok(cpus) if !cpus.is_empty() => cpus,
        Ok(_) => ctx.fail("affinity_churn: no CPU allowed"),
        Err(e) => ctx.fail(&format!("affinity_churn: sched_getaffinity: {e}")),
    };
    for &cpu in allowed.iter().cycle() {
        match sys::set_affinity(0, &[cpu]) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => continue,
            Err(e) => ctx.fail(&format!("affinity_churn: sched_setaffinity to CPU {cpu}: {e}")),
        }
        spin(spin_iters);
        if !ctx.unit() {
            return;
        }
    }
}
