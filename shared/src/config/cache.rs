//! `[cache]`: the cache of member features in front of the store.

use serde::{Deserialize, Serialize};

use super::store::RedisConfig;
use super::{first_problem, within};

/// Which cache sits in front of the store.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum CacheBackend {
    /// No cache: every read goes to the store.
    None,
    /// A bounded map inside the process. The default.
    #[default]
    InProcess,
    /// A Redis server (the role EVCache plays at Netflix).
    Redis,
}

/// The read-through cache of member features.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct CacheConfig {
    /// `none`, `in_process` (default) or `redis`.
    pub backend: CacheBackend,
    /// Entries live this long. Default 300 s.
    pub ttl_seconds: u64,
    /// Each entry's TTL is drawn from ±this fraction of `ttl_seconds`, so entries written together
    /// do not expire together. Default 0.1.
    pub ttl_jitter: f64,
    /// Members held by the in-process cache. Default 100000.
    pub capacity: usize,
    /// After this many failed cache calls in a row the cache is bypassed... Default 5.
    pub breaker_failures: u32,
    /// ...for this long, then tried again. Default 2000 ms.
    pub breaker_open_ms: u64,
    /// The Redis cache; its `timeout_ms` is the short timeout of every cache call (default 20 ms).
    pub redis: RedisConfig,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            backend: CacheBackend::InProcess,
            ttl_seconds: 300,
            ttl_jitter: 0.1,
            capacity: 100_000,
            breaker_failures: 5,
            breaker_open_ms: 2000,
            redis: RedisConfig::default(),
        }
    }
}

impl CacheConfig {
    pub(super) fn validate(&self) -> Result<(), String> {
        within("cache.ttl_seconds", self.ttl_seconds, 1..=31_536_000)?;
        within("cache.capacity", self.capacity, 1..=100_000_000)?;
        within("cache.breaker_open_ms", self.breaker_open_ms, 1..=3_600_000)?;
        within("cache.redis.timeout_ms", self.redis.timeout_ms, 1..=600_000)?;
        first_problem(vec![
            (
                self.ttl_jitter >= 0.0 && self.ttl_jitter < 1.0,
                "cache.ttl_jitter",
                "must be in [0, 1)",
            ),
            (
                self.breaker_failures >= 1,
                "cache.breaker_failures",
                "must be at least 1",
            ),
        ])?;
        self.redis.validate("cache.redis")
    }
}
