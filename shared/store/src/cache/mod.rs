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

mod breaker;
mod flight;
mod local;
mod reader;
mod redis;

use std::time::Duration;

use async_trait::async_trait;

use super::features::MemberFeatures;
use super::StoreResult;

pub use breaker::{CircuitBreaker, BREAKER_OPEN};
pub use flight::{SINGLE_FLIGHT_JOINED, STORE_FLIGHTS, STORE_READS};
pub use local::LocalCache;
pub use reader::{FeatureReader, Source, CACHE_REQUESTS};
pub use redis::{RedisCache, SharedRedisCache};

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
