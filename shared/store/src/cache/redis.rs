//! Redis as the member-feature cache: one key per member, connected lazily and in the background.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt, TryStreamExt};

use super::MemberCache;
use crate::features::MemberFeatures;
use crate::redis_store::{self, Connection};
use crate::{StoreError, StoreResult};
use recsys_shared::config::RedisConfig;
use recsys_shared::logs::LogEvery;
use recsys_shared::secrets::redact_url;

/// Redis as a cache: one string key per member holding [`MemberFeatures::encode`], `SET … PX`.
/// The connection is made lazily and re-made in the background, so a cache that is down at start
/// or goes down later only ever costs a miss.
pub struct RedisCache {
    config: RedisConfig,
    connection: Mutex<Option<Connection>>,
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

    /// `SET mf:<member> <features> PX <ttl>`: one member's entry.
    fn set(user_id: &str, features: &MemberFeatures, ttl: Duration) -> redis::Cmd {
        let mut set = redis::cmd("SET");
        set.arg(Self::key(user_id))
            .arg(features.encode())
            .arg("PX")
            .arg(ttl.as_millis().max(1) as u64);
        set
    }

    /// The connection, or an error that starts (at most once a second) a background connect.
    fn connection(self: &Arc<Self>) -> StoreResult<Connection> {
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
                match redis_store::connect(&this.config).await {
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
        redis_store::within(BACKEND, timeout, fut).await
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
            .run(RedisCache::set(user_id, features, ttl).query_async::<()>(&mut c))
            .await
    }

    async fn put_many(&self, entries: &[(&str, &MemberFeatures, Duration)]) -> StoreResult<()> {
        if entries.is_empty() {
            return Ok(());
        }
        let mut c = self.0.connection()?;
        if c.is_cluster() {
            // Members' keys lie on many slots: each SET on its own, many in flight.
            let sets: Vec<BoxFuture<'_, StoreResult<()>>> = entries
                .iter()
                .map(|(user_id, features, ttl)| {
                    let mut c = c.clone();
                    let set = RedisCache::set(user_id, features, *ttl);
                    async move { self.0.run(set.query_async::<()>(&mut c)).await }.boxed()
                })
                .collect();
            return futures::stream::iter(sets)
                .buffer_unordered(64)
                .try_collect::<Vec<()>>()
                .await
                .map(|_| ());
        }
        // One pipeline: one write and one read on the socket for the whole batch.
        let mut pipe = redis::pipe();
        for (user_id, features, ttl) in entries {
            pipe.add_command(RedisCache::set(user_id, features, *ttl))
                .ignore();
        }
        let timeout = redis_store::pipeline_timeout(
            Duration::from_millis(self.0.config.timeout_ms),
            entries.len(),
        );
        self.0
            .run_within(timeout, pipe.query_async::<()>(&mut c))
            .await
    }

    async fn warm(&self) {
        match redis_store::connect(&self.0.config).await {
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
