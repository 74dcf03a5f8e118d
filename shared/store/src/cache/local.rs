//! The in-process cache: a bounded sharded map with per-entry expiry and sampled-LRU eviction.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use rand::Rng;

use super::MemberCache;
use crate::features::MemberFeatures;
use crate::StoreResult;

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

#[cfg(test)]
mod tests {
    use super::*;

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
