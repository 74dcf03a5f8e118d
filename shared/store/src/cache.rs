//! The read-through cache of member features in front of the store (the role EVCache plays at
//! Netflix), and the read path the online tier uses.
//!
//! [`FeatureReader::get`] asks the cache with a short timeout; on a miss it reads the store through
//! a **single flight** per member — a burst of concurrent requests for one member makes one store
//! read, and they all get its answer (the cache-stampede fix of Sorabel's in-memory recommender) —
//! then fills the cache with a TTL drawn with jitter. A flight is a task of its own with the store's
//! deadline: it finishes (and leaves the flight table) whether or not anyone still waits for it, so
//! requests that give up early leak nothing and a later request never joins a stale read.
//! Members the store does not know (no vector, no history) are not cached, so a flood of made-up
//! ids cannot evict real members. A **circuit breaker** on each of the cache and the store skips
//! it for a while after consecutive failures, so a dead or slow Redis costs nothing per request and
//! a dead store fails requests at once (they degrade) instead of each waiting out its timeout.
//! Writers (the nearline tier) call [`FeatureReader::write_through_many`] (or `write_through`)
//! after the store write.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use futures::future::{BoxFuture, FutureExt, Shared};
use prometheus::{
    register_histogram_vec, register_int_counter_vec, register_int_gauge_vec, HistogramVec,
    IntCounterVec, IntGaugeVec,
};
use rand::Rng;
use redis::aio::ConnectionManager;

use super::features::{FeatureStore, MemberFeatures};
use super::{StoreError, StoreResult};
use recsys_shared::config::{CacheBackend, CacheConfig, RedisConfig, StoreConfig};
use recsys_shared::logs::LogEvery;
use recsys_shared::secrets::redact_url;

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

/// 1 while a dependency's circuit breaker is open (`cache`, `store`).
pub static BREAKER_OPEN: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    register_int_gauge_vec!(
        "recsys_breaker_open",
        "1 while a dependency is skipped after consecutive failures",
        &["dependency"]
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

/// A bounded in-process map with per-entry expiry. When a shard is full, an insert evicts by
/// sampling: of a few entries picked at random, an expired one or else the least recently used
/// (Redis's approximated LRU) — constant time under the shard's lock, whatever the capacity.
pub struct LocalCache {
    shards: Vec<Mutex<Shard>>,
    per_shard: usize,
}

struct Entry {
    expiry: Instant,
    /// The shard's clock at the last read or write.
    used: u64,
    /// Index of the key in `Shard::keys`.
    slot: usize,
    features: Arc<MemberFeatures>,
}

#[derive(Default)]
struct Shard {
    entries: HashMap<Arc<str>, Entry>,
    /// Every key once, for sampling.
    keys: Vec<Arc<str>>,
    clock: u64,
}

impl Shard {
    fn tick(&mut self) -> u64 {
        self.clock += 1;
        self.clock
    }

    fn remove(&mut self, user_id: &str) {
        let Some(entry) = self.entries.remove(user_id) else {
            return;
        };
        self.keys.swap_remove(entry.slot);
        if let Some(moved) = self.keys.get(entry.slot) {
            self.entries
                .get_mut(moved)
                .expect("every key has an entry")
                .slot = entry.slot;
        }
    }

    /// Removes one entry chosen by sampling: an expired one, else the least recently used.
    fn evict_one(&mut self, now: Instant) {
        let mut rng = rand::rng();
        let mut victim: Option<(bool, u64, usize)> = None;
        for _ in 0..EVICTION_SAMPLES.min(self.keys.len()) {
            let slot = rng.random_range(0..self.keys.len());
            let entry = &self.entries[&self.keys[slot]];
            // Expired first, then the oldest use.
            let rank = (entry.expiry > now, entry.used, slot);
            if victim.is_none_or(|v| rank < v) {
                victim = Some(rank);
            }
        }
        if let Some((_, _, slot)) = victim {
            let key = self.keys[slot].clone();
            self.remove(&key);
        }
    }
}

const SHARDS: usize = 16;
/// Entries looked at per eviction (Redis uses 5 by default).
const EVICTION_SAMPLES: usize = 5;

impl LocalCache {
    pub fn new(capacity: usize) -> Self {
        LocalCache {
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
            per_shard: capacity.div_ceil(SHARDS).max(1),
        }
    }

    fn shard(&self, user_id: &str) -> &Mutex<Shard> {
        let hash = user_id.bytes().fold(0xcbf29ce484222325u64, |h, b| {
            (h ^ b as u64).wrapping_mul(0x100000001b3)
        });
        &self.shards[(hash % SHARDS as u64) as usize]
    }

    /// Entries held, over all shards.
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().expect("cache lock").entries.len())
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[async_trait]
impl MemberCache for LocalCache {
    fn name(&self) -> &'static str {
        "in_process"
    }

    async fn get(&self, user_id: &str) -> StoreResult<Option<MemberFeatures>> {
        let mut shard = self.shard(user_id).lock().expect("cache lock");
        let now = Instant::now();
        let tick = shard.tick();
        match shard.entries.get_mut(user_id) {
            Some(entry) if entry.expiry > now => {
                entry.used = tick;
                Ok(Some(entry.features.as_ref().clone()))
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
        let now = Instant::now();
        let used = shard.tick();
        let features = Arc::new(features.clone());
        if let Some(entry) = shard.entries.get_mut(user_id) {
            entry.expiry = now + ttl;
            entry.used = used;
            entry.features = features;
            return Ok(());
        }
        while shard.entries.len() >= self.per_shard {
            shard.evict_one(now);
        }
        let key: Arc<str> = Arc::from(user_id);
        let slot = shard.keys.len();
        shard.keys.push(key.clone());
        shard.entries.insert(
            key,
            Entry {
                expiry: now + ttl,
                used,
                slot,
                features,
            },
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
    connect_log: LogEvery,
}

const BACKEND: &str = "redis-cache";

impl RedisCache {
    pub fn new(config: &RedisConfig) -> Arc<Self> {
        Arc::new(RedisCache {
            config: config.clone(),
            connection: Mutex::new(None),
            connecting: Arc::new(AtomicU64::new(0)),
            epoch: Instant::now(),
            connect_log: LogEvery::new(Duration::from_secs(10)),
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
                    Err(e) => {
                        if let Some(suppressed) = this.connect_log.check() {
                            tracing::warn!(error = %e, suppressed, "cache: cannot connect to Redis");
                        }
                    }
                }
            });
        }
        Err(StoreError::Backend {
            backend: BACKEND,
            message: format!("not connected to {}", redact_url(&self.config.url)),
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
        super::redis_store::within(BACKEND, timeout, fut).await
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

/// Where a member's features came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Cache,
    Store,
}

type FlightResult = Result<Arc<MemberFeatures>, Arc<StoreError>>;
type Flight = Shared<BoxFuture<'static, FlightResult>>;

/// The store reads in flight, one per member, each tagged so a finished flight removes itself and
/// never a later one of the same member.
#[derive(Default)]
struct Flights {
    by_member: Mutex<HashMap<String, (u64, Flight)>>,
    next_id: AtomicU64,
    /// Flights whose task has not finished (what the gauge shows; the map may hold fewer).
    running: AtomicUsize,
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
        self.flights.running.load(Ordering::Acquire)
    }

    /// Members with a flight others can join.
    pub fn flights_joinable(&self) -> usize {
        self.flights.by_member.lock().expect("flights lock").len()
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
        let flight = {
            let mut flights = self.flights.by_member.lock().expect("flights lock");
            if let Some((_, flight)) = flights.get(user_id) {
                SINGLE_FLIGHT_JOINED
                    .with_label_values(&[self.store.backend()])
                    .inc();
                flight.clone()
            } else {
                if !self.store_breaker.allow() {
                    STORE_READS
                        .with_label_values(&[self.store.backend(), "skipped"])
                        .observe(0.0);
                    return Err(Arc::new(StoreError::BreakerOpen {
                        backend: self.store.backend(),
                    }));
                }
                let id = self.flights.next_id.fetch_add(1, Ordering::Relaxed);
                let flight = self.start_flight(id, user_id);
                flights.insert(user_id.to_string(), (id, flight.clone()));
                flight
            }
        };
        flight.await
    }

    /// Starts one store read as a task of its own: it runs to its deadline whether or not anyone
    /// still waits, then leaves the flight table, so a request that gives up early leaks nothing.
    fn start_flight(&self, id: u64, user_id: &str) -> Flight {
        let store = self.store.clone();
        // Filling is skipped while the cache's breaker is open; it never takes the half-open probe.
        let cache = if self.breaker.is_open() {
            None
        } else {
            self.cache.clone()
        };
        let breaker = self.breaker.clone();
        let store_breaker = self.store_breaker.clone();
        let flights = self.flights.clone();
        let user = user_id.to_string();
        let timeout = self.store_timeout;
        let ttl = self.ttl();
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
            if let Some(cache) = cache.filter(|_| !features.is_empty()) {
                match cache.put(&user, &features, ttl).await {
                    Ok(()) => breaker.success(),
                    Err(_) => breaker.failure(),
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
        let held = cache.len();
        assert!(held <= SHARDS, "{held} entries held");
        for shard in &cache.shards {
            let shard = shard.lock().unwrap();
            assert_eq!(shard.keys.len(), shard.entries.len());
            for (slot, key) in shard.keys.iter().enumerate() {
                assert_eq!(shard.entries[key].slot, slot, "slots stay consistent");
            }
        }
    }
}
