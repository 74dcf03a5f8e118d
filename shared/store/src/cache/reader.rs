//! The online tier's read path: the cache, then the store through a single flight.

use std::sync::{Arc, LazyLock};
use std::time::Duration;

use prometheus::{register_int_counter_vec, IntCounterVec};
use rand::Rng;

use super::flight::{Fill, FlightResult, Flights};
use super::{CircuitBreaker, LocalCache, MemberCache, RedisCache, SharedRedisCache};
use crate::features::{FeatureStore, MemberFeatures};
use crate::StoreError;
use recsys_shared::config::{CacheBackend, CacheConfig, StoreConfig};

/// Cache outcomes: `hit`, `miss`, `error` (failed or timed out), `bypassed` (breaker open or none).
pub static CACHE_REQUESTS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "recsys_cache_requests_total",
        "Member-feature cache lookups by result",
        &["result"]
    )
    .expect("metric registers once")
});

/// Where a member's features came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Cache,
    Store,
}

/// The online tier's read path: cache, then the store through a single flight. Clones share the
/// cache, the breakers and the flights (one process can hand one reader to several components).
#[derive(Clone)]
pub struct FeatureReader {
    store: FeatureStore,
    cache: Option<Arc<dyn MemberCache>>,
    breaker: Arc<CircuitBreaker>,
    store_breaker: Arc<CircuitBreaker>,
    flights: Arc<Flights>,
    store_timeout: Duration,
    ttl: Duration,
    jitter: f64,
}

impl FeatureReader {
    pub fn new(
        store: FeatureStore,
        cache: Option<Arc<dyn MemberCache>>,
        config: &CacheConfig,
        store_config: &StoreConfig,
    ) -> Self {
        FeatureReader {
            store,
            cache,
            breaker: Arc::new(CircuitBreaker::new(
                "cache",
                config.breaker_failures,
                Duration::from_millis(config.breaker_open_ms),
            )),
            store_breaker: Arc::new(CircuitBreaker::new(
                "store",
                store_config.breaker_failures,
                Duration::from_millis(store_config.breaker_open_ms),
            )),
            flights: Arc::new(Flights::default()),
            store_timeout: Duration::from_millis(store_config.read_timeout_ms),
            ttl: Duration::from_secs(config.ttl_seconds),
            jitter: config.ttl_jitter,
        }
    }

    /// Builds the configured cache (or none) in front of `store`.
    pub fn from_config(
        store: FeatureStore,
        config: &CacheConfig,
        store_config: &StoreConfig,
    ) -> Self {
        let cache: Option<Arc<dyn MemberCache>> = match config.backend {
            CacheBackend::None => None,
            CacheBackend::InProcess => Some(Arc::new(LocalCache::new(config.capacity))),
            CacheBackend::Redis => Some(Arc::new(SharedRedisCache(RedisCache::new(&config.redis)))),
        };
        Self::new(store, cache, config, store_config)
    }

    pub fn store(&self) -> &FeatureStore {
        &self.store
    }

    pub fn cache_name(&self) -> &'static str {
        self.cache.as_ref().map_or("none", |c| c.name())
    }

    pub fn breaker_open(&self) -> bool {
        self.breaker.is_open()
    }

    pub fn store_breaker_open(&self) -> bool {
        self.store_breaker.is_open()
    }

    /// Store reads whose task has not finished yet.
    pub fn flights_running(&self) -> usize {
        self.flights.running()
    }

    /// Members with a flight others can join.
    pub fn flights_joinable(&self) -> usize {
        self.flights.joinable()
    }

    /// Connects the cache now instead of on the first request.
    pub async fn warm_cache(&self) {
        if let Some(cache) = &self.cache {
            cache.warm().await;
        }
    }

    fn ttl(&self) -> Duration {
        let spread = if self.jitter > 0.0 {
            rand::rng().random_range(-self.jitter..self.jitter)
        } else {
            0.0
        };
        self.ttl.mul_f64(1.0 + spread)
    }

    /// The member's features from the cache or the store. An `Err` means the store could not be
    /// read (the caller degrades).
    pub async fn get(
        &self,
        user_id: &str,
    ) -> Result<(Arc<MemberFeatures>, Source), Arc<StoreError>> {
        if let Some(cache) = &self.cache {
            if self.breaker.allow() {
                match cache.get(user_id).await {
                    Ok(Some(features)) => {
                        self.breaker.success();
                        CACHE_REQUESTS.with_label_values(&["hit"]).inc();
                        return Ok((Arc::new(features), Source::Cache));
                    }
                    Ok(None) => {
                        self.breaker.success();
                        CACHE_REQUESTS.with_label_values(&["miss"]).inc();
                    }
                    Err(e) => {
                        self.breaker.failure();
                        CACHE_REQUESTS.with_label_values(&["error"]).inc();
                        tracing::debug!(error = %e, "cache read failed");
                    }
                }
            } else {
                CACHE_REQUESTS.with_label_values(&["bypassed"]).inc();
            }
        }
        self.read_store(user_id).await.map(|f| (f, Source::Store))
    }

    async fn read_store(&self, user_id: &str) -> FlightResult {
        self.flights
            .read(
                &self.store,
                &self.store_breaker,
                self.store_timeout,
                user_id,
                || {
                    // Filling is skipped while the cache's breaker is open; it never takes the
                    // half-open probe.
                    let cache = self.cache.clone().filter(|_| !self.breaker.is_open())?;
                    Some(Fill {
                        cache,
                        breaker: self.breaker.clone(),
                        ttl: self.ttl(),
                    })
                },
            )
            .await
    }

    /// Puts fresh features into the cache after the store has them (best effort: a failure leaves
    /// the old entry to expire, and is counted by the breaker).
    pub async fn write_through(&self, user_id: &str, features: &MemberFeatures) {
        self.write_through_many(&[(user_id, features)]).await
    }

    /// [`FeatureReader::write_through`] for a batch of members, in one request where the cache
    /// can batch.
    pub async fn write_through_many(&self, entries: &[(&str, &MemberFeatures)]) {
        let Some(cache) = &self.cache else { return };
        if entries.is_empty() || !self.breaker.allow() {
            return;
        }
        let entries: Vec<(&str, &MemberFeatures, Duration)> = entries
            .iter()
            .map(|(user_id, features)| (*user_id, *features, self.ttl()))
            .collect();
        match cache.put_many(&entries).await {
            Ok(()) => self.breaker.success(),
            Err(e) => {
                self.breaker.failure();
                tracing::debug!(error = %e, "cache write-through failed");
            }
        }
    }

    /// Drops the member from the cache.
    pub async fn invalidate(&self, user_id: &str) {
        if let Some(cache) = &self.cache {
            let _ = cache.invalidate(user_id).await;
        }
    }
}
