//! `[cache]`: the cache of member features in front of the store.

use serde::{Deserialize, Serialize};

use super::first_problem;
use super::store::RedisConfig;

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
        first_problem(vec![
            (
                self.ttl_jitter >= 0.0 && self.ttl_jitter < 1.0,
                "cache.ttl_jitter",
                "must be in [0, 1)",
            ),
            (
                (1..=31_536_000).contains(&self.ttl_seconds),
                "cache.ttl_seconds",
                "must be 1..=31536000",
            ),
            (
                (1..=100_000_000).contains(&self.capacity),
                "cache.capacity",
                "must be 1..=100000000",
            ),
            (
                self.breaker_failures >= 1,
                "cache.breaker_failures",
                "must be at least 1",
            ),
            (
                (1..=3_600_000).contains(&self.breaker_open_ms),
                "cache.breaker_open_ms",
                "must be 1..=3600000",
            ),
            (
                (1..=600_000).contains(&self.redis.timeout_ms),
                "cache.redis.timeout_ms",
                "must be 1..=600000",
            ),
        ])?;
        self.redis.validate("cache.redis")
    }
}
