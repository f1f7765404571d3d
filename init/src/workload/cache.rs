//! cache_pressure: chases pointers through a random cycle of 64-byte lines in a buffer larger
//! than L2, touching each line. Every hop misses the cache, so the unit rate measures memory
//! throughput as the scheduler's placement (shared caches, migrations) affects it.

use super::Ctx;

const LINE: usize = 64;
const HOPS_PER_UNIT: u32 = 1024;
/// When sysfs does not tell the L2 size.
const FALLBACK_KB: u32 = 4096;

#[repr(C, align(64))]
struct Line {
    next: u32,
    touched: u32,
    _pad: [u8; LINE - 8],
}

pub fn run(ctx: &mut Ctx, size_kb: u32) {
    let kb = if size_kb == 0 { 2 * l2_kb().unwrap_or(FALLBACK_KB / 2) } else { size_kb };
    let mut lines = random_cycle((kb as usize * 1024 / LINE).max(2));
    let mut at = 0usize;
    loop {
        for _ in 0..HOPS_PER_UNIT {
            let line = &mut lines[at];
            line.touched = line.touched.wrapping_add(1);
            at = line.next as usize;
        }
        std::hint::black_box(at);
        if !ctx.unit() {
            return;
        }
    }
}

/// `n` lines linked into one cycle in random order (Sattolo's algorithm), so the hardware
/// prefetcher cannot guess the next line.
fn random_cycle(n: usize) -> Box<[Line]> {
    let mut order: Vec<u32> = (0..n as u32).collect();
    let mut rng = 0x2545_F491_4F6C_DD1Du64;
    for i in (1..n).rev() {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        order.swap(i, (rng % i as u64) as usize);
    }
    let mut lines: Box<[Line]> = (0..n).map(|_| Line { next: 0, touched: 0, _pad: [0; LINE - 8] }).collect();
    for i in 0..n {
        lines[order[i] as usize].next = order[(i + 1) % n];
    }
    lines
}

/// L2 size of CPU 0 in KiB, from sysfs.
fn l2_kb() -> Option<u32> {
    let dir = std::fs::read_dir("/sys/devices/system/cpu/cpu0/cache").ok()?;
    dir.flatten().find_map(|e| {
        let level = std::fs::read_to_string(e.path().join("level")).ok()?;
        if level.trim() != "2" {
            return None;
        }
        let size = std::fs::read_to_string(e.path().join("size")).ok()?;
        size.trim().strip_suffix('K')?.parse().ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cycle_visits_every_line_once() {
        let n = 1000;
        let lines = random_cycle(n);
        let mut seen = vec![false; n];
        let mut at = 0;
        for _ in 0..n {
            assert!(!seen[at], "line {at} visited twice");
            seen[at] = true;
            at = lines[at].next as usize;
        }
        assert_eq!(at, 0);
        assert_eq!(std::mem::size_of::<Line>(), LINE);
    }
}
