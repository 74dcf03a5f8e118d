//! Applying events to member state: the one code path every event source (Kafka, a local file,
//! a channel) goes through after decoding.
//!
//! For each member in a batch: read their stored history, merge the batch's events into it, fold
//! the **whole** merged history (the model's training positives, loaded by `load-store`, plus every
//! event since) into a vector with the current model, write the vector with its model version,
//! then the new history entries, and write both through to the cache. Each step runs for the whole
//! batch at once, so the store sees a few batched requests per batch.
//!
//! Applying is idempotent, so at-least-once delivery gives effectively-once state: a history entry
//! is keyed by `(timestamp, item)` and merging keeps the larger strength, so re-applying an event
//! (a redelivery after a crash or a rebalance) writes nothing new, and the vector is a function of
//! the stored history alone. Two distinct events of one member on one item in the same
//! millisecond count once, at the larger strength.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Instant;

use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt, TryStreamExt};

use recsys_store::cache::FeatureReader;
use recsys_store::features::{FeatureStore, HistoryEntry, MemberFeatures, MemberVector};
use recsys_store::{IdempotencyToken, StoreError};

use crate::error::NearlineError;
use crate::event::{decode, Event, EventRules, RejectReason, Rejection};
use crate::metrics;
use crate::model::{FoldInModel, ModelHandle};

/// Counts of one applied batch.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BatchReport {
    pub events: usize,
    pub members: usize,
    /// Members with new history entries: written, and their vector recomputed.
    pub updated: usize,
    /// Members whose every event was already in the history and whose vector is the current
    /// model's: nothing written.
    pub unchanged: usize,
    /// Members with nothing new in the history but a vector of an older model: re-folded.
    pub refolded: usize,
}

/// A batch is split into at most `concurrency` shards, but none smaller than this many members
/// (a smaller one would cost more in round trips than its overlap wins).
const MIN_SHARD_MEMBERS: usize = 64;

/// Folds events into member state in the feature store and the cache.
pub struct Applier {
    features: Arc<FeatureReader>,
    model: Arc<ModelHandle>,
    rules: EventRules,
    concurrency: usize,
}

impl Applier {
    pub fn new(
        features: Arc<FeatureReader>,
        model: Arc<ModelHandle>,
        rules: EventRules,
        concurrency: usize,
    ) -> Self {
        Applier {
            features,
            model,
            rules,
            concurrency: concurrency.max(1),
        }
    }

    pub fn model(&self) -> &Arc<ModelHandle> {
        &self.model
    }

    pub fn features(&self) -> &Arc<FeatureReader> {
        &self.features
    }

    /// Whether the event can be applied under the current model: its fields (see
    /// [`EventRules::validate`]) and its item. `key` is the Kafka record key, if any.
    pub fn check(&self, event: &Event, key: Option<&[u8]>, now_ms: i64) -> Result<(), Rejection> {
        self.rules.validate(event, key, now_ms)?;
        match self.model.get() {
            Some(model) if !model.knows(&event.item_id) => Err(Rejection::new(
                RejectReason::UnknownItem,
                format!(
                    "`item_id` {:?} is not in model {}",
                    event.item_id, model.version
                ),
            )),
            _ => Ok(()),
        }
    }

    /// Decodes a record value (see [`decode`]) and checks the event: what every event source does
    /// before [`Applier::apply`]. `key` is the record key, if the source has one.
    pub fn admit(
        &self,
        payload: Option<&[u8]>,
        content_type: Option<&str>,
        key: Option<&[u8]>,
        now_ms: i64,
    ) -> Result<Event, Rejection> {
        let event = decode(payload, content_type)?;
        self.check(&event, key, now_ms)?;
        Ok(event)
    }

    /// Applies checked events. Either every member's state is written durably, or an error is
    /// returned and the caller applies the same batch again (which is safe: applying is
    /// idempotent). Fails with [`NearlineError::NoModel`] before any model is loaded.
    ///
    /// The store sees the batch, not its members one by one: one read of every member's state,
    /// then the fold-ins (off the async threads), then one write of every vector, one of every
    /// history and one of the cache — a handful of round trips per batch rather than several per
    /// member.
    pub async fn apply(&self, events: &[Event]) -> Result<BatchReport, NearlineError> {
        let model = self.model.get().ok_or(NearlineError::NoModel)?;
        let mut by_member: HashMap<&str, Vec<&Event>> = HashMap::new();
        for event in events {
            by_member.entry(&event.user_id).or_default().push(event);
        }
        let mut report = BatchReport {
            events: events.len(),
            members: by_member.len(),
            ..Default::default()
        };
        // Members are split into shards applied concurrently, so one shard's fold-ins run while
        // another waits on the store. Shards share no member, so each keeps the per-member write
        // order on its own.
        let members: Vec<(&str, Vec<&Event>)> = by_member.into_iter().collect();
        let shard_size = members
            .len()
            .div_ceil(self.concurrency)
            .max(MIN_SHARD_MEMBERS);
        let shards: Vec<BoxFuture<'_, Result<BatchReport, NearlineError>>> = members
            .chunks(shard_size)
            .map(|shard| self.apply_members(&model, shard).boxed())
            .collect();
        for shard in futures::future::try_join_all(shards).await? {
            report.updated += shard.updated;
            report.unchanged += shard.unchanged;
            report.refolded += shard.refolded;
        }
        Ok(report)
    }

    /// Applies the events of a set of members (one shard of a batch): one read of all their
    /// states, the fold-ins, then one write of every vector, one of every history and one of the
    /// cache.
    async fn apply_members(
        &self,
        model: &Arc<FoldInModel>,
        members: &[(&str, Vec<&Event>)],
    ) -> Result<BatchReport, NearlineError> {
        let mut report = BatchReport::default();
        let store = self.features.store();
        let user_ids: Vec<String> = members.iter().map(|(u, _)| u.to_string()).collect();
        let stored = store.get_many(&user_ids).await?;
        let mut updates = Vec::with_capacity(user_ids.len());
        for ((user_id, stored), (_, events)) in user_ids.into_iter().zip(stored).zip(members) {
            match MemberUpdate::merge(user_id, stored, events, &self.rules, model, store) {
                Some(update) => updates.push(update),
                None => report.unchanged += 1,
            }
        }
        if updates.is_empty() {
            return Ok(report);
        }
        let fold_model = model.clone();
        let updates = tokio::task::spawn_blocking(move || {
            updates
                .into_iter()
                .map(|update| update.fold_in(&fold_model))
                .collect::<Result<Vec<MemberUpdate>, NearlineError>>()
        })
        .await
        .map_err(|e| NearlineError::FoldIn(format!("fold-in task failed: {e}")))??;

        let token = IdempotencyToken::now();
        let writes: Vec<(String, Option<MemberVector>, Vec<HistoryEntry>)> = updates
            .iter()
            .map(|u| {
                let vector = u.features.vector.clone();
                (u.user_id.clone(), vector, u.new_entries.clone())
            })
            .collect();
        store.put_members(&writes, token).await?;
        // The stored history is at most what was read (capped) plus the new entries, so a member
        // whose merged history is over the cap is trimmed below its oldest kept entry, unread.
        let trims: Vec<BoxFuture<'_, Result<(), StoreError>>> = updates
            .iter()
            .filter(|u| u.over_cap)
            .map(|u| {
                let oldest_kept = u.features.history.first().expect("over the cap");
                store.drop_history_before(&u.user_id, oldest_kept).boxed()
            })
            .collect();
        futures::stream::iter(trims)
            .buffer_unordered(self.concurrency)
            .try_collect::<Vec<()>>()
            .await?;
        let cached: Vec<(&str, &MemberFeatures)> = updates
            .iter()
            .map(|u| (u.user_id.as_str(), &u.features))
            .collect();
        self.features.write_through_many(&cached).await;
        for update in &updates {
            if update.new_entries.is_empty() {
                report.refolded += 1;
            } else {
                report.updated += 1;
            }
        }
        Ok(report)
    }
}

/// One member's change in a batch: the merged history and what is new in it, then the vector.
struct MemberUpdate {
    user_id: String,
    /// The whole merged history, capped to the newest `history_cap`, oldest first; then the
    /// vector folded from it.
    features: MemberFeatures,
    /// Entries the store does not hold yet (or holds at a smaller strength).
    new_entries: Vec<HistoryEntry>,
    /// Whether the merged history was longer than the cap (the store needs a trim).
    over_cap: bool,
}

fn entry(((ts_ms, item_id), strength): ((i64, String), f32)) -> HistoryEntry {
    HistoryEntry {
        item_id,
        ts_ms,
        strength,
    }
}

impl MemberUpdate {
    /// Merges a member's events into their stored state; `None` when that changes nothing (every
    /// event already known, and the vector is the current model's).
    fn merge(
        user_id: String,
        stored: MemberFeatures,
        events: &[&Event],
        rules: &EventRules,
        model: &FoldInModel,
        store: &FeatureStore,
    ) -> Option<MemberUpdate> {
        let mut history: BTreeMap<(i64, String), f32> = stored
            .history
            .into_iter()
            .map(|e| ((e.ts_ms, e.item_id), e.strength))
            .collect();
        let mut new_entries: BTreeMap<(i64, String), f32> = BTreeMap::new();
        for event in events {
            let key = (event.ts, event.item_id.clone());
            let strength = rules.strength(event);
            let known = history.get(&key).copied();
            if known.is_none_or(|s| strength > s) {
                history.insert(key.clone(), strength);
                new_entries.insert(key, strength);
            }
        }
        let vector_current = stored
            .vector
            .as_ref()
            .is_some_and(|v| v.model_version == model.version);
        if new_entries.is_empty() && vector_current {
            return None;
        }
        let skip = history.len().saturating_sub(store.history_cap());
        Some(MemberUpdate {
            user_id,
            over_cap: skip > 0,
            features: MemberFeatures {
                vector: None,
                history: history.into_iter().skip(skip).map(entry).collect(),
            },
            new_entries: new_entries.into_iter().map(entry).collect(),
        })
    }

    /// Folds the merged history into the member's vector with `model` (CPU only).
    fn fold_in(mut self, model: &FoldInModel) -> Result<MemberUpdate, NearlineError> {
        let started = Instant::now();
        let values = model.fold_in(&self.features.history)?;
        metrics::FOLD_IN_SECONDS.observe(started.elapsed().as_secs_f64());
        self.features.vector = values.map(|values| MemberVector {
            model_version: model.version.clone(),
            values,
        });
        Ok(self)
    }
}

/// Rebuilds member state from scratch in a fresh embedded store at `dir`: the model's published
/// training histories (what `load-store` writes), then `events` in one batch. The reference the
/// failure tests compare a worker's state with, and a way to audit a store.
pub async fn from_scratch(
    config: &recsys_shared::config::Config,
    root: &std::path::Path,
    version: &str,
    dir: &std::path::Path,
    events: &[Event],
) -> Result<recsys_store::features::FeatureStore, NearlineError> {
    use recsys_shared::artifact::ModelRoot;
    use recsys_shared::config::{CacheBackend, StoreBackend};
    use recsys_store::features::FeatureStore;

    let mut config = config.clone();
    config.store.backend = StoreBackend::Embedded;
    config.store.embedded.path = dir.to_path_buf();
    config.cache.backend = CacheBackend::None;
    let store = FeatureStore::new(
        recsys_store::open(&config.store).await?,
        config.store.history_cap,
    );
    recsys_store::bulk::load_model_features(
        &ModelRoot::new(root),
        Some(version),
        &store,
        |_, _| {},
    )
    .await
    .map_err(|e| NearlineError::InvalidModel {
        version: version.to_string(),
        problem: e.to_string(),
    })?;
    let model = ModelHandle::new();
    model.set(FoldInModel::load(&ModelRoot::new(root), version)?);
    let applier = Applier::new(
        Arc::new(FeatureReader::from_config(
            store.clone(),
            &config.cache,
            &recsys_shared::config::StoreConfig {
                read_timeout_ms: 10_000,
                ..config.store.clone()
            },
        )),
        model,
        EventRules::from_config(&config),
        config.nearline.concurrency,
    );
    applier.apply(events).await?;
    Ok(store)
}

/// Whether two member states agree: the same history, and vectors of the same model within
/// `tolerance` per component (the solve runs in a different order of additions).
pub fn same_state(a: &MemberFeatures, b: &MemberFeatures, tolerance: f32) -> Result<(), String> {
    if a.history != b.history {
        return Err(format!(
            "histories differ: {} vs {} entries",
            a.history.len(),
            b.history.len()
        ));
    }
    match (&a.vector, &b.vector) {
        (None, None) => Ok(()),
        (Some(x), Some(y)) => {
            if x.model_version != y.model_version {
                return Err(format!(
                    "vectors of models {} and {}",
                    x.model_version, y.model_version
                ));
            }
            match x
                .values
                .iter()
                .zip(&y.values)
                .find(|(p, q)| (*p - *q).abs() > tolerance)
            {
                Some((p, q)) => Err(format!("vectors differ: {p} vs {q}")),
                None => Ok(()),
            }
        }
        _ => Err("one has a vector, the other not".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::testing::{applier_for, play, tiny_model};

    async fn new_applier(dir: &std::path::Path) -> (Applier, tempfile::TempDir) {
        let (root_dir, version) = tiny_model();
        let applier = applier_for(dir, root_dir.path(), &version).await;
        (applier, root_dir)
    }

    #[tokio::test]
    async fn reapplying_a_batch_changes_nothing_and_order_does_not_matter() {
        let dir = tempfile::tempdir().unwrap();
        let (root, version) = tiny_model();
        let applier = applier_for(dir.path(), root.path(), &version).await;
        let events = vec![
            play("a", "u1", "i0", 10),
            play("b", "u1", "i1", 20),
            play("c", "u2", "i2", 30),
        ];
        let first = applier.apply(&events).await.unwrap();
        assert_eq!((first.members, first.updated), (2, 2));
        let state = applier.features.store().get("u1").await.unwrap();
        assert_eq!(state.history.len(), 2);
        let vector = state.vector.clone().expect("a vector");

        let again = applier.apply(&events).await.unwrap();
        assert_eq!((again.updated, again.unchanged), (0, 2));
        assert_eq!(applier.features.store().get("u1").await.unwrap(), state);

        // A second store fed the same events one at a time, in reverse, ends in the same state.
        let dir2 = tempfile::tempdir().unwrap();
        let other = applier_for(dir2.path(), root.path(), &version).await;
        for e in events.iter().rev() {
            other.apply(std::slice::from_ref(e)).await.unwrap();
        }
        let state2 = other.features.store().get("u1").await.unwrap();
        assert_eq!(state2.history, state.history);
        let v2 = state2.vector.unwrap();
        assert_eq!(v2.model_version, vector.model_version);
        for (a, b) in v2.values.iter().zip(&vector.values) {
            assert!((a - b).abs() < 1e-5, "{a} vs {b}");
        }
    }

    #[tokio::test]
    async fn the_vector_uses_the_whole_capped_history() {
        let dir = tempfile::tempdir().unwrap();
        let (applier, _model) = new_applier(dir.path()).await;
        // History cap is 4: six events leave the newest four, and the vector is their fold-in.
        let events: Vec<Event> = (0..6)
            .map(|i| play(&format!("e{i}"), "u", &format!("i{i}"), 100 + i))
            .collect();
        for e in &events {
            applier.apply(std::slice::from_ref(e)).await.unwrap();
        }
        let state = applier.features.store().get("u").await.unwrap();
        let items: Vec<&str> = state.history.iter().map(|e| e.item_id.as_str()).collect();
        assert_eq!(items, ["i2", "i3", "i4", "i5"]);
        let model = applier.model.get().unwrap();
        let expected = model.fold_in(&state.history).unwrap().unwrap();
        assert_eq!(state.vector.unwrap().values, expected);
    }

    #[tokio::test]
    async fn a_batch_in_concurrent_shards_ends_as_one_event_at_a_time() {
        // 300 members in one batch: four shards of 75 (concurrency 4), each member over the
        // history cap of 4, so the trims run too.
        let (root, version) = tiny_model();
        let events: Vec<Event> = (0..300)
            .flat_map(|m| {
                (0..6).map(move |e| {
                    play(
                        &format!("e{m}-{e}"),
                        &format!("u{m}"),
                        &format!("i{}", (m + e) % 10),
                        1_000 + e,
                    )
                })
            })
            .collect();
        let batched_dir = tempfile::tempdir().unwrap();
        let batched = applier_for(batched_dir.path(), root.path(), &version).await;
        let report = batched.apply(&events).await.unwrap();
        assert_eq!((report.members, report.updated), (300, 300));
        let single_dir = tempfile::tempdir().unwrap();
        let single = applier_for(single_dir.path(), root.path(), &version).await;
        for e in &events {
            single.apply(std::slice::from_ref(e)).await.unwrap();
        }
        for m in 0..300 {
            let user = format!("u{m}");
            let a = batched.features.store().get(&user).await.unwrap();
            let b = single.features.store().get(&user).await.unwrap();
            assert_eq!(a.history.len(), 4, "{user}");
            same_state(&a, &b, 1e-5).unwrap_or_else(|e| panic!("{user}: {e}"));
            let stored = recsys_store::get_all(
                batched.features.store().kv().as_ref(),
                "member_history",
                &user,
                &recsys_store::Predicate::MatchAll,
            )
            .await
            .unwrap();
            assert_eq!(stored.len(), 4, "{user}: the store itself is trimmed");
        }
    }

    #[tokio::test]
    async fn unknown_items_are_rejected_by_check() {
        let dir = tempfile::tempdir().unwrap();
        let (applier, _model) = new_applier(dir.path()).await;
        let e = play("x", "u", "no-such-item", 1_700_000_000_000);
        let r = applier.check(&e, None, 1_700_000_000_000).unwrap_err();
        assert_eq!(r.reason, RejectReason::UnknownItem);
        assert!(r.detail.contains("no-such-item"));
    }
}
