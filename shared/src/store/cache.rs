//! The read-through cache of member features in front of the store (the role EVCache plays at
//! Netflix), and the read path the online tier uses.
//!
//! [`FeatureReader::get`] asks the cache with a short timeout; on a miss it reads the store through
//! a **single flight** per member — a burst of concurrent requests for one member makes one store
//! read, and they all get its answer (the cache-stampede fix of Sorabel's in-memory recommender) —
//! then fills the cache with a TTL drawn with jitter. A **circuit breaker** skips the cache for a
//! while after consecutive failures, so a dead or slow Redis costs nothing per request. Writers (the
//! nearline tier) call [`FeatureReader::write_through_many`] (or `write_through`) after the store
//! write.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use futures::future::{BoxFuture, FutureExt, Shared};
use prometheus::{
    register_histogram_vec, register_int_counter_vec, register_int_gauge, HistogramVec,
    IntCounterVec, IntGauge,
};
use rand::Rng;
use redis::aio::ConnectionManager;

use super::features::{FeatureStore, MemberFeatures};
use super::{StoreError, StoreResult};
use crate::config::{CacheBackend, CacheConfig, RedisConfig};

/// Cache outcomes: `hit`, `miss`, `error` (failed or timed out), `bypassed` (breaker open or none).
pub static CACHE_REQUESTS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "recsys_cache_requests_total",
        "Member-feature cache lookups by result",
        &["result"]
    )
    .expect("metric registers once")
});

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

/// 1 while the cache's circuit breaker is open.
pub static CACHE_BREAKER_OPEN: LazyLock<IntGauge> = LazyLock::new(|| {
    register_int_gauge!(
        "recsys_cache_breaker_open",
        "1 while the cache is bypassed after consecutive failures"
    )
    .expect("metric registers once")
});

/// A cache of member features.
#[async_trait]
pub trait MemberCache: Send + Sync + 'static {
    fn name(&self) -> &'static str;
    /// `Ok(None)` on a miss.
    async fn get(&self, user_id: &str) -> StoreResult<Option<MemberFeatures>>;
    async fn put(&self, user_id: &str, features: &MemberFeatures, ttl: Duration)
        -> StoreResult<()>;
    /// Puts many members at once (a nearline batch), each with its own TTL. Backends batch where
    /// they can; the default puts them one by one.
    async fn put_many(&self, entries: &[(&str, &MemberFeatures, Duration)]) -> StoreResult<()> {
        for (user_id, features, ttl) in entries {
            self.put(user_id, features, *ttl).await?;
        }
        Ok(())
    }
    async fn invalidate(&self, user_id: &str) -> StoreResult<()>;
    /// Connects now (at startup) rather than on first use. A failure is logged, not returned:
    /// the cache is optional.
    async fn warm(&self) {}
}

/// A bounded in-process map with per-entry expiry. When full, an insert evicts expired entries of
/// its shard, or an arbitrary one if none has expired.
pub struct LocalCache {
    shards: Vec<Mutex<Shard>>,
    per_shard: usize,
}

/// Member id → (expiry, features).
type Shard = HashMap<String, (Instant, Arc<MemberFeatures>)>;

const SHARDS: usize = 16;

impl LocalCache {
    pub fn new(capacity: usize) -> Self {
        LocalCache {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            per_shard: capacity.div_ceil(SHARDS).max(1),
        }
    }

    fn shard(&self, user_id: &str) -> &Mutex<HashMap<String, (Instant, Arc<MemberFeatures>)>> {
        let hash = user_id.bytes().fold(0xcbf29ce484222325u64, |h, b| {
            (h ^ b as u64).wrapping_mul(0x100000001b3)
        });
        &self.shards[(hash % SHARDS as u64) as usize]
    }
}

#[async_trait]
impl MemberCache for LocalCache {
    fn name(&self) -> &'static str {
        "in_process"
    }

    async fn get(&self, user_id: &str) -> StoreResult<Option<MemberFeatures>> {
        let mut shard = self.shard(user_id).lock().expect("cache lock");
        match shard.get(user_id) {
            Some((expiry, features)) if *expiry > Instant::now() => {
                Ok(Some(features.as_ref().clone()))
            }
            Some(_) => {
                shard.remove(user_id);
                Ok(None)
            }
            None => Ok(None),
        }
    }

    async fn put(
        &self,
        user_id: &str,
        features: &MemberFeatures,
        ttl: Duration,
    ) -> StoreResult<()> {
        let mut shard = self.shard(user_id).lock().expect("cache lock");
        if shard.len() >= self.per_shard && !shard.contains_key(user_id) {
            let now = Instant::now();
            shard.retain(|_, (expiry, _)| *expiry > now);
            if shard.len() >= self.per_shard {
                if let Some(victim) = shard.keys().next().cloned() {
                    shard.remove(&victim);
                }
            }
        }
        shard.insert(
            user_id.to_string(),
            (Instant::now() + ttl, Arc::new(features.clone())),
        );
        Ok(())
    }

    async fn invalidate(&self, user_id: &str) -> StoreResult<()> {
        self.shard(user_id)
            .lock()
            .expect("cache lock")
            .remove(user_id);
        Ok(())
    }
}

/// Redis as a cache: one string key per member holding [`MemberFeatures::encode`], `SET … PX`.
/// The connection is made lazily and re-made in the background, so a cache that is down at start
/// or goes down later only ever costs a miss.
pub struct RedisCache {
    config: RedisConfig,
    connection: Mutex<Option<ConnectionManager>>,
    connecting: Arc<AtomicU64>,
    epoch: Instant,
}

const BACKEND: &str = "redis-cache";

impl RedisCache {
    pub fn new(config: &RedisConfig) -> Arc<Self> {
        Arc::new(RedisCache {
            config: config.clone(),
            connection: Mutex::new(None),
            connecting: Arc::new(AtomicU64::new(0)),
            epoch: Instant::now(),
        })
    }

    fn key(user_id: &str) -> String {
        format!("mf:{user_id}")
    }

    /// The connection, or an error that starts (at most once a second) a background connect.
    fn connection(self: &Arc<Self>) -> StoreResult<ConnectionManager> {
        if let Some(c) = self.connection.lock().expect("lock").as_ref() {
            return Ok(c.clone());
        }
        let now_ms = self.epoch.elapsed().as_millis() as u64 + 1;
        let last = self.connecting.load(Ordering::Relaxed);
        if (last == 0 || now_ms.saturating_sub(last) >= 1000)
            && self
                .connecting
                .compare_exchange(last, now_ms, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
        {
            let this = self.clone();
            tokio::spawn(async move {
                match super::redis_store::connect(&this.config).await {
                    Ok(c) => *this.connection.lock().expect("lock") = Some(c),
                    Err(e) => tracing::warn!(error = %e, "cache: cannot connect to Redis"),
                }
            });
        }
        Err(StoreError::Backend {
            backend: BACKEND,
            message: format!("not connected to {}", self.config.url),
        })
    }

    async fn run<T>(
        &self,
        fut: impl std::future::Future<Output = redis::RedisResult<T>>,
    ) -> StoreResult<T> {
        self.run_within(Duration::from_millis(self.config.timeout_ms), fut)
            .await
    }

    async fn run_within<T>(
        &self,
        timeout: Duration,
        fut: impl std::future::Future<Output = redis::RedisResult<T>>,
    ) -> StoreResult<T> {
        match tokio::time::timeout(timeout, fut).await {
            Ok(r) => r.map_err(|e| StoreError::backend(BACKEND, e)),
            Err(_) => Err(StoreError::Timeout {
                backend: BACKEND,
                millis: timeout.as_millis() as u64,
            }),
        }
    }
}

/// [`MemberCache`] for an `Arc<RedisCache>` (it needs the `Arc` to reconnect in the background).
pub struct SharedRedisCache(pub Arc<RedisCache>);

#[async_trait]
impl MemberCache for SharedRedisCache {
    fn name(&self) -> &'static str {
        "redis"
    }

    async fn get(&self, user_id: &str) -> StoreResult<Option<MemberFeatures>> {
        let mut c = self.0.connection()?;
        let bytes: Option<Vec<u8>> = self
            .0
            .run(
                redis::cmd("GET")
                    .arg(RedisCache::key(user_id))
                    .query_async(&mut c),
            )
            .await?;
        Ok(bytes.and_then(|b| {
            let decoded = MemberFeatures::decode(&b);
            if decoded.is_none() {
                tracing::warn!("cache: undecodable entry, treated as a miss");
            }
            decoded
        }))
    }

    async fn put(
        &self,
        user_id: &str,
        features: &MemberFeatures,
        ttl: Duration,
    ) -> StoreResult<()> {
        let mut c = self.0.connection()?;
        self.0
            .run(
                redis::cmd("SET")
                    .arg(RedisCache::key(user_id))
                    .arg(features.encode())
                    .arg("PX")
                    .arg(ttl.as_millis().max(1) as u64)
                    .query_async::<()>(&mut c),
            )
            .await
    }

    async fn put_many(&self, entries: &[(&str, &MemberFeatures, Duration)]) -> StoreResult<()> {
        if entries.is_empty() {
            return Ok(());
        }
        // One pipeline: one write and one read on the socket for the whole batch.
        let mut pipe = redis::pipe();
        for (user_id, features, ttl) in entries {
            pipe.cmd("SET")
                .arg(RedisCache::key(user_id))
                .arg(features.encode())
                .arg("PX")
                .arg(ttl.as_millis().max(1) as u64)
                .ignore();
        }
        let mut c = self.0.connection()?;
        let timeout = super::redis_store::pipeline_timeout(
            Duration::from_millis(self.0.config.timeout_ms),
            entries.len(),
        );
        self.0
            .run_within(timeout, pipe.query_async::<()>(&mut c))
            .await
    }

    async fn warm(&self) {
        match super::redis_store::connect(&self.0.config).await {
            Ok(c) => *self.0.connection.lock().expect("lock") = Some(c),
            Err(e) => tracing::warn!(error = %e, "cache: Redis unreachable at start; will retry"),
        }
    }

    async fn invalidate(&self, user_id: &str) -> StoreResult<()> {
        let mut c = self.0.connection()?;
        self.0
            .run(
                redis::cmd("DEL")
                    .arg(RedisCache::key(user_id))
                    .query_async::<()>(&mut c),
            )
            .await
    }
}

/// Opens or skips failing calls: after `threshold` consecutive failures, calls are refused for
/// `open_for`; then one is let through, and its outcome closes or re-opens the breaker.
pub struct CircuitBreaker {
    failures: AtomicU32,
    open_until_ms: AtomicU64,
    threshold: u32,
    open_for: Duration,
    epoch: Instant,
}

impl CircuitBreaker {
    pub fn new(threshold: u32, open_for: Duration) -> Self {
        CircuitBreaker {
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
            CACHE_BREAKER_OPEN.set(0);
            tracing::info!("cache: circuit breaker closed");
        }
    }

    pub fn failure(&self) {
        let failures = self.failures.fetch_add(1, Ordering::AcqRel) + 1;
        if failures >= self.threshold {
            let until = self.now_ms() + self.open_for.as_millis() as u64;
            if self.open_until_ms.swap(until.max(1), Ordering::AcqRel) == 0 {
                CACHE_BREAKER_OPEN.set(1);
                tracing::warn!(
                    failures,
                    "cache: circuit breaker open, reading the store directly"
                );
            }
        }
    }

    pub fn is_open(&self) -> bool {
        self.open_until_ms.load(Ordering::Acquire) != 0
    }
}

/// Where a member's features came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Cache,
    Store,
}

type Flight = Shared<BoxFuture<'static, Result<Arc<MemberFeatures>, Arc<StoreError>>>>;

/// The online tier's read path: cache, then the store through a single flight. Clones share the
/// cache, the breaker and the flights (one process can hand one reader to several components).
#[derive(Clone)]
pub struct FeatureReader {
    store: FeatureStore,
    cache: Option<Arc<dyn MemberCache>>,
    breaker: Arc<CircuitBreaker>,
    flights: Arc<Mutex<HashMap<String, Flight>>>,
    store_timeout: Duration,
    ttl: Duration,
    jitter: f64,
}

impl FeatureReader {
    pub fn new(
        store: FeatureStore,
        cache: Option<Arc<dyn MemberCache>>,
        config: &CacheConfig,
        store_timeout: Duration,
    ) -> Self {
        FeatureReader {
            store,
            cache,
            breaker: Arc::new(CircuitBreaker::new(
                config.breaker_failures,
                Duration::from_millis(config.breaker_open_ms),
            )),
            flights: Arc::new(Mutex::new(HashMap::new())),
            store_timeout,
            ttl: Duration::from_secs(config.ttl_seconds),
            jitter: config.ttl_jitter,
        }
    }

    /// Builds the configured cache (or none) in front of `store`.
    pub fn from_config(store: FeatureStore, config: &CacheConfig, store_timeout: Duration) -> Self {
        let cache: Option<Arc<dyn MemberCache>> = match config.backend {
            CacheBackend::None => None,
            CacheBackend::InProcess => Some(Arc::new(LocalCache::new(config.capacity))),
            CacheBackend::Redis => Some(Arc::new(SharedRedisCache(RedisCache::new(&config.redis)))),
        };
        Self::new(store, cache, config, store_timeout)
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

    async fn read_store(&self, user_id: &str) -> Result<Arc<MemberFeatures>, Arc<StoreError>> {
        let flight = {
            let mut flights = self.flights.lock().expect("flights lock");
            if let Some(flight) = flights.get(user_id) {
                SINGLE_FLIGHT_JOINED
                    .with_label_values(&[self.store.backend()])
                    .inc();
                flight.clone()
            } else {
                let store = self.store.clone();
                // Filling is skipped while the breaker is open; it never takes the half-open probe.
                let cache = if self.breaker.is_open() {
                    None
                } else {
                    self.cache.clone()
                };
                let breaker = self.breaker.clone();
                let registry = self.flights.clone();
                let user = user_id.to_string();
                let timeout = self.store_timeout;
                let ttl = self.ttl();
                let flight = async move {
                    let started = Instant::now();
                    let result = match tokio::time::timeout(timeout, store.get(&user)).await {
                        Ok(r) => r,
                        Err(_) => Err(StoreError::Timeout {
                            backend: store.backend(),
                            millis: timeout.as_millis() as u64,
                        }),
                    };
                    STORE_READS
                        .with_label_values(&[
                            store.backend(),
                            if result.is_ok() { "ok" } else { "error" },
                        ])
                        .observe(started.elapsed().as_secs_f64());
                    registry.lock().expect("flights lock").remove(&user);
                    let features = Arc::new(result.map_err(Arc::new)?);
                    if let Some(cache) = cache {
                        // Fill the cache off the request's path.
                        let features = features.clone();
                        tokio::spawn(async move {
                            match cache.put(&user, &features, ttl).await {
                                Ok(()) => breaker.success(),
                                Err(_) => breaker.failure(),
                            }
                        });
                    }
                    Ok(features)
                }
                .boxed()
                .shared();
                flights.insert(user_id.to_string(), flight.clone());
                flight
            }
        };
        flight.await
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn breaker_opens_after_threshold_and_half_opens_after_the_period() {
        let b = CircuitBreaker::new(3, Duration::from_millis(30));
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

    #[tokio::test]
    async fn local_cache_expires_and_stays_bounded() {
        let cache = LocalCache::new(SHARDS); // one entry per shard
        let f = MemberFeatures::default();
        cache.put("a", &f, Duration::from_millis(20)).await.unwrap();
        assert!(cache.get("a").await.unwrap().is_some());
        tokio::time::sleep(Duration::from_millis(30)).await;
        assert!(cache.get("a").await.unwrap().is_none());
        for i in 0..1000 {
            cache
                .put(&format!("u{i}"), &f, Duration::from_secs(60))
                .await
                .unwrap();
        }
        let held: usize = cache.shards.iter().map(|s| s.lock().unwrap().len()).sum();
        assert!(held <= SHARDS, "{held} entries held");
    }
}
