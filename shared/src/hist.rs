//! Log-scale latency histograms: the guest counts, the host computes percentiles.
//!
//! Bucket `i` covers `[lower(i), lower(i + 1))` nanoseconds. Values below [`SUB`] have a bucket
//! each; above, every power of two is split into [`SUB`] equal buckets, so a bucket is at most
//! 1/[`SUB`] (12.5 %) of its lower bound wide. Values of 2^[`MAX_EXP`] ns (~69 s) and more land
//! in the last bucket. The layout is part of the wire format: changing it bumps
//! [`crate::wire::PROTOCOL_VERSION`].

/// Sub-buckets per power of two (a power of two itself).
pub const SUB: u64 = 8;
const SUB_BITS: u32 = SUB.trailing_zeros();
/// Values up to `2^MAX_EXP - 1` ns have exact-width buckets.
pub const MAX_EXP: u32 = 36;
/// Number of buckets.
pub const BUCKETS: usize = (SUB as usize) * (MAX_EXP - SUB_BITS + 1) as usize;

/// The bucket of a value in ns.
pub fn bucket(ns: u64) -> usize {
    if ns < SUB {
        return ns as usize;
    }
    let exp = 63 - ns.leading_zeros();
    if exp >= MAX_EXP {
        return BUCKETS - 1;
    }
    let shift = exp - SUB_BITS;
    let sub = (ns >> shift) & (SUB - 1);
    (SUB as usize) * (shift as usize + 1) + sub as usize
}

/// Smallest value (ns) of bucket `i`; `i >= BUCKETS` gives the end of the last exact bucket.
pub fn lower(i: usize) -> u64 {
    let sub = SUB as usize;
    if i < sub {
        return i as u64;
    }
    if i >= BUCKETS {
        return 1 << MAX_EXP; // also keeps the shift below 64 for a slice longer than BUCKETS
    }
    let shift = (i / sub - 1) as u32;
    ((SUB + (i % sub) as u64) << shift).min(1 << MAX_EXP)
}

/// Sum of all counts.
pub fn total(counts: &[u64]) -> u64 {
    counts.iter().fold(0u64, |a, &c| a.saturating_add(c))
}

/// The value at quantile `q` (0.0..=1.0) as the upper end of its bucket: a bound the true value
/// does not exceed (except in the open-ended last bucket). `None` for an empty histogram.
pub fn quantile(counts: &[u64], q: f64) -> Option<u64> {
    let n = total(counts);
    if n == 0 {
        return None;
    }
    // Rank of the wanted sample, 1-based: the smallest rank r with r >= q * n.
    let q = if q.is_nan() { 1.0 } else { q.clamp(0.0, 1.0) };
    let exact = q * n as f64;
    let floor = exact as u64;
    let rank = if (floor as f64) < exact { floor + 1 } else { floor }.clamp(1, n);
    let mut seen = 0u64;
    for (i, &c) in counts.iter().enumerate() {
        seen = seen.saturating_add(c);
        if seen >= rank {
            return Some(lower(i + 1).saturating_sub(1).max(lower(i)));
        }
    }
    Some(lower(counts.len()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_contiguous_and_ordered() {
        assert_eq!(BUCKETS, 272);
        for i in 0..BUCKETS - 1 {
            assert!(lower(i) < lower(i + 1), "bucket {i}");
            assert_eq!(bucket(lower(i)), i, "lower bound of {i}");
            assert_eq!(bucket(lower(i + 1) - 1), i, "upper bound of {i}");
        }
        assert_eq!(bucket(u64::MAX), BUCKETS - 1);
        assert_eq!(bucket(1 << MAX_EXP), BUCKETS - 1);
    }

    #[test]
    fn bucket_width_is_bounded() {
        for i in SUB as usize..BUCKETS - 1 {
            let (lo, hi) = (lower(i), lower(i + 1));
            assert!((hi - lo) * SUB <= lo, "bucket {i}: {lo}..{hi}");
        }
    }

    #[test]
    fn slices_longer_than_the_layout_do_not_overflow() {
        assert_eq!(lower(BUCKETS), 1 << MAX_EXP);
        assert_eq!(lower(usize::MAX), 1 << MAX_EXP);
        // The wire type holds at most BUCKETS counts; a longer slice ends in the last bucket.
        let long = [1u64; 1000];
        assert_eq!(quantile(&long, 1.0), Some(1 << MAX_EXP));
        assert!(quantile(&[u64::MAX; BUCKETS], 0.99).is_some(), "saturating counts");
    }

    #[test]
    fn quantiles_bound_the_true_value() {
        let mut counts = [0u64; BUCKETS];
        // 1000 samples: 1 us .. 1000 us.
        for us in 1..=1000u64 {
            counts[bucket(us * 1000)] += 1;
        }
        let p50 = quantile(&counts, 0.5).unwrap();
        let p99 = quantile(&counts, 0.99).unwrap();
        assert!((500_000..=500_000 * 9 / 8).contains(&p50), "{p50}");
        assert!((990_000..=990_000 * 9 / 8).contains(&p99), "{p99}");
        assert_eq!(quantile(&[0; BUCKETS], 0.5), None);
        assert!(quantile(&counts, 1.0).unwrap() >= 1_000_000);
    }
}
