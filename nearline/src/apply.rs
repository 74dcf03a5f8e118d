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
//!
//! With `feedback` enabled the same step also folds the batch's impressions and
//! explicit negative events into the member's feedback state ([`crate::feedback`]) and writes
//! the items it hides with the member's features; a negative event enters no history, and with
//! `negative_fold_in = "forget"` it removes the member's earlier events on the item from the
//! history the vector is folded from.

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
use crate::feedback::{FeedbackRules, MergedFeedback, Shown};
use crate::metrics;
use crate::model::{MemberModel, ModelHandle};
use recsys_shared::config::NegativeFoldIn;
use recsys_store::features::FeedbackChange;

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
    /// Members whose feedback (hidden items) changed and nothing else.
    pub feedback: usize,
}

/// A batch is split into at most `concurrency` shards, but none smaller than this many members
/// (a smaller one would cost more in round trips than its overlap wins).
const MIN_SHARD_MEMBERS: usize = 64;

/// Folds events into member state in the feature store and the cache.
pub struct Applier {
    features: Arc<FeatureReader>,
    model: Arc<ModelHandle>,
    rules: EventRules,
    feedback: Option<FeedbackRules>,
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
            feedback: None,
            concurrency: concurrency.max(1),
        }
    }

    /// Applies negative feedback (`feedback`) too; `None` leaves it off.
    pub fn with_feedback(mut self, feedback: Option<FeedbackRules>) -> Self {
        self.feedback = feedback;
        self
    }

    pub fn event_rules(&self) -> &EventRules {
        &self.rules
    }

    pub fn feedback(&self) -> Option<&FeedbackRules> {
        self.feedback.as_ref()
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
            Some(model) if !model.knows(&event.item_id) => Err(Rejection::of_field(
                RejectReason::UnknownItem,
                "item_id",
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
        self.apply_with_impressions(events, &[]).await
    }

    /// [`Applier::apply`] of events and impressions together (impressions only count with
    /// feedback enabled).
    pub async fn apply_with_impressions(
        &self,
        events: &[Event],
        shown: &[Shown],
    ) -> Result<BatchReport, NearlineError> {
        let model = self.model.get().ok_or(NearlineError::NoModel)?;
        let mut by_member: HashMap<&str, MemberBatch<'_>> = HashMap::new();
        for event in events {
            by_member
                .entry(&event.user_id)
                .or_default()
                .events
                .push(event);
        }
        if self.feedback.is_some() {
            for s in shown {
                by_member.entry(&s.user_id).or_default().shown.push(s);
            }
        }
        let mut report = BatchReport {
            events: events.len(),
            members: by_member.len(),
            ..Default::default()
        };
        // Members are split into shards applied concurrently, so one shard's fold-ins run while
        // another waits on the store. Shards share no member, so each keeps the per-member write
        // order on its own.
        let members: Vec<(&str, MemberBatch<'_>)> = by_member.into_iter().collect();
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
            report.feedback += shard.feedback;
        }
        Ok(report)
    }

    /// Applies the events of a set of members (one shard of a batch): one read of all their
    /// states, the fold-ins, then one write of every vector, one of every history and one of the
    /// cache.
    async fn apply_members(
        &self,
        model: &Arc<MemberModel>,
        members: &[(&str, MemberBatch<'_>)],
    ) -> Result<BatchReport, NearlineError> {
        let mut report = BatchReport::default();
        let store = self.features.store();
        let user_ids: Vec<String> = members.iter().map(|(u, _)| u.to_string()).collect();
        let (stored, mut feedback) = match &self.feedback {
            Some(_) => {
                futures::future::try_join(
                    store.get_many(&user_ids),
                    store.get_feedback_many(&user_ids),
                )
                .await?
            }
            None => (store.get_many(&user_ids).await?, Vec::new()),
        };
        feedback.resize_with(user_ids.len(), Default::default);
        let now_ms = chrono::Utc::now().timestamp_millis();
        let mut updates = Vec::with_capacity(user_ids.len());
        for (((user_id, stored), stored_feedback), (_, batch)) in
            user_ids.into_iter().zip(stored).zip(feedback).zip(members)
        {
            let merged_feedback = self.feedback.as_ref().map(|rules| {
                crate::feedback::merge(
                    &user_id,
                    stored_feedback,
                    &stored.hidden,
                    &batch.events,
                    &batch.shown,
                    &self.rules,
                    rules,
                    now_ms,
                )
            });
            let forget = self
                .feedback
                .is_some_and(|f| f.negative_fold_in == NegativeFoldIn::Forget);
            match MemberUpdate::merge(
                user_id,
                stored,
                &batch.events,
                merged_feedback,
                forget,
                &self.rules,
                model,
                store,
            ) {
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
            .filter(|u| u.fold)
            .map(|u| {
                let vector = u.features.vector.clone();
                (u.user_id.clone(), vector, u.new_entries.clone())
            })
            .collect();
        store.put_members(&writes, token).await?;
        // The stored history is at most what was read (capped) plus the new entries, so a member
        // whose merged history is over the cap is trimmed below its oldest kept entry, unread.
        // Entries a negative event made the fold-in forget are deleted.
        let trims: Vec<BoxFuture<'_, Result<(), StoreError>>> = updates
            .iter()
            .filter(|u| u.over_cap)
            .map(|u| {
                let oldest_kept = u.features.history.first().expect("over the cap");
                store.drop_history_before(&u.user_id, oldest_kept).boxed()
            })
            .chain(updates.iter().filter(|u| !u.forgotten.is_empty()).map(|u| {
                store
                    .delete_history_entries(&u.user_id, &u.forgotten)
                    .boxed()
            }))
            .collect();
        futures::stream::iter(trims)
            .buffer_unordered(self.concurrency)
            .try_collect::<Vec<()>>()
            .await?;
        let changes: Vec<FeedbackChange> = updates
            .iter()
            .filter(|u| !u.feedback.is_empty())
            .map(|u| u.feedback.clone())
            .collect();
        if !changes.is_empty() {
            store.put_feedback(&changes, token).await?;
        }
        let cached: Vec<(&str, &MemberFeatures)> = updates
            .iter()
            .map(|u| (u.user_id.as_str(), &u.features))
            .collect();
        self.features.write_through_many(&cached).await;
        for update in &updates {
            if !update.fold {
                report.feedback += 1;
            } else if update.new_entries.is_empty() && update.forgotten.is_empty() {
                report.refolded += 1;
            } else {
                report.updated += 1;
            }
        }
        Ok(report)
    }
}

/// One member's part of a batch.
#[derive(Default)]
struct MemberBatch<'a> {
    events: Vec<&'a Event>,
    shown: Vec<&'a Shown>,
}

/// One member's change in a batch: the merged history and what is new in it, then the vector;
/// the feedback writes.
struct MemberUpdate {
    user_id: String,
    /// The whole merged history, capped to the newest `history_cap`, oldest first; then the
    /// vector folded from it (or the stored one, when `fold` is false); the hidden items.
    features: MemberFeatures,
    /// Entries the store does not hold yet (or holds at a smaller strength).
    new_entries: Vec<HistoryEntry>,
    /// Stored entries a negative event removes from the history (`forget`).
    forgotten: Vec<HistoryEntry>,
    /// Whether the merged history was longer than the cap (the store needs a trim).
    over_cap: bool,
    /// Whether the vector must be folded in again (the history changed, or the vector is of an
    /// older model).
    fold: bool,
    feedback: FeedbackChange,
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
    /// event already known, the vector is the current model's, the feedback unchanged).
    #[allow(clippy::too_many_arguments)]
    fn merge(
        user_id: String,
        stored: MemberFeatures,
        events: &[&Event],
        feedback: Option<MergedFeedback>,
        forget: bool,
        rules: &EventRules,
        model: &MemberModel,
        store: &FeatureStore,
    ) -> Option<MemberUpdate> {
        let mut history: BTreeMap<(i64, String), f32> = stored
            .history
            .into_iter()
            .map(|e| ((e.ts_ms, e.item_id), e.strength))
            .collect();
        let mut new_entries: BTreeMap<(i64, String), f32> = BTreeMap::new();
        for event in events.iter().filter(|e| !rules.is_negative(e)) {
            let key = (event.ts, event.item_id.clone());
            let strength = rules.strength(event);
            let known = history.get(&key).copied();
            if known.is_none_or(|s| strength > s) {
                history.insert(key.clone(), strength);
                new_entries.insert(key, strength);
            }
        }
        let mut forgotten = Vec::new();
        if let (true, Some(feedback)) = (forget, &feedback) {
            let gone: Vec<(i64, String)> = history
                .keys()
                .filter(|(ts, item)| feedback.negative_ms(item).is_some_and(|n| *ts <= n))
                .cloned()
                .collect();
            for key in gone {
                let strength = history.remove(&key).expect("a key of the history");
                if new_entries.remove(&key).is_none() {
                    forgotten.push(entry((key, strength)));
                }
            }
        }
        // The history families keep no vector: nothing is stale but the history.
        let vector_current = !model.keeps_vectors()
            || stored
                .vector
                .as_ref()
                .is_some_and(|v| v.model_version == model.version);
        let fold = !new_entries.is_empty() || !forgotten.is_empty() || !vector_current;
        let (hidden, feedback) = match feedback {
            Some(f) => (f.hidden, f.change),
            None => (stored.hidden, FeedbackChange::default()),
        };
        if !fold && feedback.is_empty() {
            return None;
        }
        let skip = history.len().saturating_sub(store.history_cap());
        Some(MemberUpdate {
            user_id,
            over_cap: fold && skip > 0,
            features: MemberFeatures {
                vector: if fold { None } else { stored.vector },
                history: history.into_iter().skip(skip).map(entry).collect(),
                hidden,
                profile: stored.profile,
            },
            new_entries: new_entries.into_iter().map(entry).collect(),
            forgotten,
            fold,
            feedback,
        })
    }

    /// Folds the merged history into the member's vector with `model` (CPU only), when needed.
    fn fold_in(mut self, model: &MemberModel) -> Result<MemberUpdate, NearlineError> {
        if !self.fold {
            return Ok(self);
        }
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
    shown: &[Shown],
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
    model.set(MemberModel::load(&ModelRoot::new(root), version)?);
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
    )
    .with_feedback(FeedbackRules::from_config(&config));
    applier.apply_with_impressions(events, shown).await?;
    Ok(store)
}

/// Whether two member states agree: the same history and hidden items, and vectors of the same
/// model within `tolerance` per component (the solve runs in a different order of additions).
pub fn same_state(a: &MemberFeatures, b: &MemberFeatures, tolerance: f32) -> Result<(), String> {
    if a.hidden != b.hidden {
        return Err(format!(
            "hidden items differ: {:?} vs {:?}",
            a.hidden, b.hidden
        ));
    }
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
    async fn impressions_hide_and_a_thumbs_down_forgets_the_item_exactly_once() {
        use crate::feedback::Shown;
        use recsys_store::feedback::{request_hash, BLOCKED};

        let dir = tempfile::tempdir().unwrap();
        let (root, version) = tiny_model();
        let applier =
            crate::testing::applier_with_feedback(dir.path(), root.path(), &version).await;
        let now = chrono::Utc::now().timestamp_millis();
        let shown = |request: &str, ts_ms: i64, items: &[&str]| Shown {
            user_id: "u".into(),
            ts_ms,
            request: request_hash(request),
            items: items.iter().map(|i| i.to_string()).collect(),
        };
        let impressions = vec![
            shown("r1", now - 3_000, &["i1", "i2", "i3"]),
            shown("r2", now - 2_000, &["i1", "i2", "i3"]),
        ];
        let mut down = play("d", "u", "i4", now - 500);
        down.event_type = "thumbs_down".into();
        let events = vec![
            play("a", "u", "i2", now - 1_000),
            play("b", "u", "i4", now - 4_000),
            play("c", "u", "i5", now - 4_000),
            down,
        ];
        let report = applier
            .apply_with_impressions(&events, &impressions)
            .await
            .unwrap();
        assert_eq!((report.members, report.updated), (1, 1));
        let state = applier.features.store().get("u").await.unwrap();
        // i1 and i3 were shown twice without a play; i2 was played; i4 was turned down.
        let hidden: Vec<(&str, bool)> = state
            .hidden
            .iter()
            .map(|h| (h.item_id.as_str(), h.until_ms == BLOCKED))
            .collect();
        assert_eq!(hidden, [("i1", false), ("i3", false), ("i4", true)]);
        // `forget`: the play of i4 before the thumbs-down left the history and the fold-in.
        let items: Vec<&str> = state.history.iter().map(|e| e.item_id.as_str()).collect();
        assert_eq!(items, ["i5", "i2"]);
        let model = applier.model.get().unwrap();
        assert_eq!(
            state.vector.clone().unwrap().values,
            model.fold_in(&state.history).unwrap().unwrap()
        );

        // Redelivered in another order, impressions and events change nothing.
        let mut reversed = events.clone();
        reversed.reverse();
        let again = applier
            .apply_with_impressions(&reversed, &[impressions[1].clone(), impressions[0].clone()])
            .await
            .unwrap();
        assert_eq!((again.unchanged, again.updated, again.feedback), (1, 0, 0));
        assert_eq!(applier.features.store().get("u").await.unwrap(), state);

        // Impressions alone change the feedback only; a later play of i4 lifts the block.
        let more = applier
            .apply_with_impressions(
                &[],
                &[
                    shown("r3", now - 100, &["i6"]),
                    shown("r4", now - 50, &["i6"]),
                ],
            )
            .await
            .unwrap();
        assert_eq!(more.feedback, 1);
        let lifted = applier
            .apply(&[play("e", "u", "i4", now - 10)])
            .await
            .unwrap();
        assert_eq!(lifted.updated, 1);
        let state = applier.features.store().get("u").await.unwrap();
        let hidden: Vec<&str> = state.hidden.iter().map(|h| h.item_id.as_str()).collect();
        assert_eq!(hidden, ["i1", "i3", "i6"]);
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
