//! The circuit breaker in front of the cache and the store.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::LazyLock;
use std::time::{Duration, Instant};

use prometheus::{register_int_gauge_vec, IntGaugeVec};

/// 1 while a dependency's circuit breaker is open (`cache`, `store`).
pub static BREAKER_OPEN: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    register_int_gauge_vec!(
        "recsys_breaker_open",
        "1 while a dependency is skipped after consecutive failures",
        &["dependency"]
    )
    .expect("metric registers once")
});

/// Opens or skips failing calls: after `threshold` consecutive failures, calls are refused for
/// `open_for`; then one is let through, and its outcome closes or re-opens the breaker.
pub struct CircuitBreaker {
    /// What it guards (`cache`, `store`): the metric label and the log's subject.
    dependency: &'static str,
    failures: AtomicU32,
    open_until_ms: AtomicU64,
    threshold: u32,
    open_for: Duration,
    epoch: Instant,
}

impl CircuitBreaker {
    pub fn new(dependency: &'static str, threshold: u32, open_for: Duration) -> Self {
        CircuitBreaker {
            dependency,
            failures: AtomicU32::new(0),
            open_until_ms: AtomicU64::new(0),
            threshold: threshold.max(1),
            open_for,
            epoch: Instant::now(),
        }
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// Whether a call may go ahead now.
    pub fn allow(&self) -> bool {
        let until = self.open_until_ms.load(Ordering::Acquire);
        if until == 0 {
            return true;
        }
        let now = self.now_ms();
        // Half-open: the first caller after the open period pushes the deadline forward and probes.
        now >= until
            && self
                .open_until_ms
                .compare_exchange(
                    until,
                    now + self.open_for.as_millis() as u64,
                    Ordering::AcqRel,
                    Ordering::Relaxed,
                )
                .is_ok()
    }

    pub fn success(&self) {
        self.failures.store(0, Ordering::Release);
        if self.open_until_ms.swap(0, Ordering::AcqRel) != 0 {
            BREAKER_OPEN.with_label_values(&[self.dependency]).set(0);
            tracing::info!(dependency = self.dependency, "circuit breaker closed");
        }
    }

    pub fn failure(&self) {
        let failures = self.failures.fetch_add(1, Ordering::AcqRel) + 1;
        if failures >= self.threshold {
            let until = self.now_ms() + self.open_for.as_millis() as u64;
            if self.open_until_ms.swap(until.max(1), Ordering::AcqRel) == 0 {
                BREAKER_OPEN.with_label_values(&[self.dependency]).set(1);
                tracing::warn!(
                    dependency = self.dependency,
                    failures,
                    open_ms = self.open_for.as_millis() as u64,
                    "circuit breaker open: calls skipped until a probe succeeds"
                );
            }
        }
    }

    pub fn is_open(&self) -> bool {
        self.open_until_ms.load(Ordering::Acquire) != 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn breaker_opens_after_threshold_and_half_opens_after_the_period() {
        let b = CircuitBreaker::new("test", 3, Duration::from_millis(30));
        b.failure();
        b.failure();
        assert!(b.allow(), "below threshold");
        b.failure();
        assert!(!b.allow(), "open");
        std::thread::sleep(Duration::from_millis(40));
        assert!(b.allow(), "one probe after the open period");
        assert!(!b.allow(), "only one probe");
        b.success();
        assert!(b.allow() && !b.is_open());
    }
}
