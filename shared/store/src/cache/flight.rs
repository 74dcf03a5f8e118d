//! Single flight: one store read per member at a time, shared by every request that wants it.
//!
//! A flight is a task of its own with the store's deadline: it finishes (and leaves the flight
//! table) whether or not anyone still waits for it, so requests that give up early leak nothing
//! and a later request never joins a stale read.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant};

use futures::future::{BoxFuture, FutureExt, Shared};
use prometheus::{
    register_histogram_vec, register_int_counter_vec, register_int_gauge_vec, HistogramVec,
    IntCounterVec, IntGaugeVec,
};

use super::{CircuitBreaker, MemberCache};
use crate::features::{FeatureStore, MemberFeatures};
use crate::StoreError;

/// Store reads by backend and result (`ok`, `error`).
pub static STORE_READS: LazyLock<HistogramVec> = LazyLock::new(|| {
    register_histogram_vec!(
        "recsys_store_read_seconds",
        "Latency of member-feature reads from the store",
        &["backend", "result"],
        vec![0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0]
    )
    .expect("metric registers once")
});

/// Requests that waited on another request's store read instead of making their own.
pub static SINGLE_FLIGHT_JOINED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "recsys_store_single_flight_joined_total",
        "Store reads shared with a concurrent request for the same member",
        &["backend"]
    )
    .expect("metric registers once")
});

/// Store reads in flight as single flights (each its own task, bounded by the store timeout).
pub static STORE_FLIGHTS: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    register_int_gauge_vec!(
        "recsys_store_flights",
        "Store reads in flight (single flights) by backend",
        &["backend"]
    )
    .expect("metric registers once")
});

pub(super) type FlightResult = Result<Arc<MemberFeatures>, Arc<StoreError>>;
type Flight = Shared<BoxFuture<'static, FlightResult>>;

/// The store reads in flight, one per member, each tagged so a finished flight removes itself and
/// never a later one of the same member.
#[derive(Default)]
pub(super) struct Flights {
    by_member: Mutex<HashMap<String, (u64, Flight)>>,
    next_id: AtomicU64,
    /// Flights whose task has not finished (what the gauge shows; the map may hold fewer).
    running: AtomicUsize,
}

/// Where a finished flight puts what it read: the cache, its breaker and the entry's TTL.
pub(super) struct Fill {
    pub cache: Arc<dyn MemberCache>,
    pub breaker: Arc<CircuitBreaker>,
    pub ttl: Duration,
}

impl Flights {
    /// Store reads whose task has not finished yet.
    pub fn running(&self) -> usize {
        self.running.load(Ordering::Acquire)
    }

    /// Members with a flight others can join.
    pub fn joinable(&self) -> usize {
        self.by_member.lock().expect("flights lock").len()
    }

    /// The member's features from the store: joins the member's flight, or starts one if the
    /// store's breaker lets it (`fill` is asked only then).
    pub async fn read(
        self: &Arc<Self>,
        store: &FeatureStore,
        store_breaker: &Arc<CircuitBreaker>,
        timeout: Duration,
        user_id: &str,
        fill: impl FnOnce() -> Option<Fill>,
    ) -> FlightResult {
        let flight = {
            let mut flights = self.by_member.lock().expect("flights lock");
            if let Some((_, flight)) = flights.get(user_id) {
                SINGLE_FLIGHT_JOINED
                    .with_label_values(&[store.backend()])
                    .inc();
                flight.clone()
            } else {
                if !store_breaker.allow() {
                    STORE_READS
                        .with_label_values(&[store.backend(), "skipped"])
                        .observe(0.0);
                    return Err(Arc::new(StoreError::BreakerOpen {
                        backend: store.backend(),
                    }));
                }
                let id = self.next_id.fetch_add(1, Ordering::Relaxed);
                let flight = self.start(id, store, store_breaker, timeout, user_id, fill());
                flights.insert(user_id.to_string(), (id, flight.clone()));
                flight
            }
        };
        flight.await
    }

    /// Starts one store read as a task of its own: it runs to its deadline whether or not anyone
    /// still waits, then leaves the flight table, so a request that gives up early leaks nothing.
    fn start(
        self: &Arc<Self>,
        id: u64,
        store: &FeatureStore,
        store_breaker: &Arc<CircuitBreaker>,
        timeout: Duration,
        user_id: &str,
        fill: Option<Fill>,
    ) -> Flight {
        let store = store.clone();
        let store_breaker = store_breaker.clone();
        let flights = self.clone();
        let user = user_id.to_string();
        let backend = store.backend();
        flights.running.fetch_add(1, Ordering::AcqRel);
        STORE_FLIGHTS.with_label_values(&[backend]).inc();
        let task = tokio::spawn(async move {
            let started = Instant::now();
            let result = match tokio::time::timeout(timeout, store.get(&user)).await {
                Ok(r) => r,
                Err(_) => Err(StoreError::Timeout {
                    backend,
                    millis: timeout.as_millis() as u64,
                }),
            };
            STORE_READS
                .with_label_values(&[backend, if result.is_ok() { "ok" } else { "error" }])
                .observe(started.elapsed().as_secs_f64());
            match &result {
                // The store answered, even if a record is corrupt: it is up.
                Ok(_) | Err(StoreError::Corrupt { .. }) | Err(StoreError::Invalid { .. }) => {
                    store_breaker.success()
                }
                Err(_) => store_breaker.failure(),
            }
            {
                let mut by_member = flights.by_member.lock().expect("flights lock");
                if by_member
                    .get(&user)
                    .is_some_and(|(flight_id, _)| *flight_id == id)
                {
                    by_member.remove(&user);
                }
            }
            flights.running.fetch_sub(1, Ordering::AcqRel);
            STORE_FLIGHTS.with_label_values(&[backend]).dec();
            let features = Arc::new(result.map_err(Arc::new)?);
            // A member the store does not know is not cached: made-up ids would evict real ones.
            if let Some(fill) = fill.filter(|_| !features.is_empty()) {
                match fill.cache.put(&user, &features, fill.ttl).await {
                    Ok(()) => fill.breaker.success(),
                    Err(_) => fill.breaker.failure(),
                }
            }
            Ok(features)
        });
        async move {
            match task.await {
                Ok(result) => result,
                Err(e) => Err(Arc::new(StoreError::Backend {
                    backend,
                    message: format!("store read task failed: {e}"),
                })),
            }
        }
        .boxed()
        .shared()
    }
}
