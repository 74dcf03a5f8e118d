//! Rate-limited logging: a failure that repeats on every request (a store that is down) is
//! written once per period with the count of the lines held back, not once per request.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Lets one log line through per period; [`LogEvery::check`] says whether this one may be
/// written and how many were held back since the last.
pub struct LogEvery {
    period_ms: u64,
    epoch: Instant,
    /// Milliseconds after `epoch` (plus one, so 0 means never) of the last line let through.
    last_ms: AtomicU64,
    suppressed: AtomicU64,
}

impl LogEvery {
    pub fn new(period: Duration) -> Self {
        LogEvery {
            period_ms: period.as_millis().max(1) as u64,
            epoch: Instant::now(),
            last_ms: AtomicU64::new(0),
            suppressed: AtomicU64::new(0),
        }
    }

    /// `Some(held back since the last line)` when this line may be written, `None` otherwise.
    pub fn check(&self) -> Option<u64> {
        let now = self.epoch.elapsed().as_millis() as u64 + 1;
        let last = self.last_ms.load(Ordering::Acquire);
        if (last == 0 || now.saturating_sub(last) >= self.period_ms)
            && self
                .last_ms
                .compare_exchange(last, now, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
        {
            return Some(self.suppressed.swap(0, Ordering::AcqRel));
        }
        self.suppressed.fetch_add(1, Ordering::AcqRel);
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_period_with_the_count_held_back() {
        let log = LogEvery::new(Duration::from_millis(50));
        assert_eq!(log.check(), Some(0));
        for _ in 0..1000 {
            assert_eq!(log.check(), None);
        }
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(log.check(), Some(1000));
        assert_eq!(log.check(), None);
    }
}
