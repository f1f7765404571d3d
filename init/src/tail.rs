//! The last bytes of a stream, in bounded memory: what an output limit keeps.

use std::collections::VecDeque;

/// Keeps the last `cap` bytes pushed and counts those that fell off the front.
pub struct Tail {
    buf: VecDeque<u8>,
    cap: usize,
    dropped: u64,
}

impl Tail {
    /// Memory grows with what is pushed, up to `cap` bytes (plus the deque's slack).
    pub fn new(cap: usize) -> Self {
        Tail { buf: VecDeque::new(), cap, dropped: 0 }
    }

    pub fn push(&mut self, bytes: &[u8]) {
        // Only the last `cap` bytes of `bytes` can survive.
        let keep_new = bytes.len().min(self.cap);
        let (gone_new, kept) = bytes.split_at(bytes.len() - keep_new);
        let overflow = (self.buf.len() + kept.len()).saturating_sub(self.cap);
        self.buf.drain(..overflow);
        self.buf.extend(kept);
        self.dropped = self.dropped.saturating_add((gone_new.len() + overflow) as u64);
    }

    /// Bytes pushed that are no longer kept.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// The kept bytes, oldest first, as (at most) two slices.
    pub fn as_slices(&self) -> (&[u8], &[u8]) {
        self.buf.as_slices()
    }

    pub fn len(&self) -> usize {
        self.buf.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kept(t: &Tail) -> Vec<u8> {
        let (a, b) = t.as_slices();
        [a, b].concat()
    }

    #[test]
    fn keeps_the_last_cap_bytes_and_counts_the_rest() {
        let mut t = Tail::new(5);
        t.push(b"abc");
        assert_eq!((kept(&t), t.dropped()), (b"abc".to_vec(), 0));
        t.push(b"def");
        assert_eq!((kept(&t), t.dropped()), (b"bcdef".to_vec(), 1));
        // A push larger than the cap replaces everything.
        t.push(b"0123456789");
        assert_eq!((kept(&t), t.dropped()), (b"56789".to_vec(), 11));
        t.push(b"");
        assert_eq!((kept(&t), t.dropped()), (b"56789".to_vec(), 11));
    }

    #[test]
    fn equals_the_end_of_everything_pushed_for_any_split() {
        // A deterministic spread of push sizes, including 0 and sizes above the cap.
        let all: Vec<u8> = (0..20_000u32).map(|i| (i % 251) as u8).collect();
        for cap in [0, 1, 7, 1000, 4096, 30_000] {
            let mut t = Tail::new(cap);
            let mut at = 0;
            for step in (0..).map(|i: usize| (i * 37) % 1500) {
                if at >= all.len() {
                    break;
                }
                let end = (at + step).min(all.len());
                t.push(&all[at..end]);
                at = end;
                assert!(t.len() <= cap, "bounded by the cap");
            }
            let keep = cap.min(all.len());
            assert_eq!(kept(&t), all[all.len() - keep..], "cap {cap}");
            assert_eq!(t.dropped() + t.len() as u64, all.len() as u64, "cap {cap}");
        }
    }
}
