//! Warnings that can repeat per connection or datagram (accept failures when descriptors run
//! out, flows refused) are written at most once a second each, with the number of lines left
//! out since the last one: a flood costs a line a second, not a line per event.

use std::sync::atomic::{AtomicU64, Ordering};

/// One rate-limited warning (usually a `static`).
#[derive(Debug, Default)]
pub struct LogLimit {
    /// The second (since the Unix epoch) of the last line written.
    last: AtomicU64,
    suppressed: AtomicU64,
}

impl LogLimit {
    pub const fn new() -> Self {
        Self {
            last: AtomicU64::new(0),
            suppressed: AtomicU64::new(0),
        }
    }

    /// `Some(lines left out since the last one)` when a line may be written now, else
    /// `None` (and this one is counted as left out).
    pub fn allow(&self) -> Option<u64> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        self.allow_at(now)
    }

    fn allow_at(&self, now_secs: u64) -> Option<u64> {
        let last = self.last.load(Ordering::Relaxed);
        if last != now_secs
            && self
                .last
                .compare_exchange(last, now_secs, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            Some(self.suppressed.swap(0, Ordering::Relaxed))
        } else {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::LogLimit;

    #[test]
    fn one_line_a_second_with_the_count_left_out() {
        let l = LogLimit::new();
        assert_eq!(l.allow_at(10), Some(0));
        for _ in 0..5 {
            assert_eq!(l.allow_at(10), None);
        }
        assert_eq!(l.allow_at(11), Some(5));
        assert_eq!(l.allow_at(11), None);
        assert_eq!(l.allow_at(12), Some(1));
    }
}
