//! What is stored per member, and how it maps onto the key-value abstraction.
//!
//! - namespace `member_vector`, id = member, one item `vector`: the member's vector and the model
//!   version it was computed against. A reader compares that version with the model it serves and
//!   folds in afresh when they differ, so one model's member vector never meets another model's
//!   item factors.
//! - namespace `member_history`, id = member, one item per interaction keyed by
//!   `timestamp ‖ item id`: the sorted map keeps the history in time order, re-writing the same
//!   interaction is idempotent, and trimming to the newest `history_cap` is a range delete.
//! - namespace `member_hidden`, id = member, one item per hidden item: hidden until (see
//!   [`crate::feedback`], which also owns the nearline tier's `member_feedback` state).
//! - namespace `member_profile`, id = member, one item per attribute (`max_maturity`): what the
//!   member's account says, written by the account side (`recsys offline load-profiles`).

use std::sync::Arc;

use super::{get_all, IdempotencyToken, Item, KvStore, Predicate, StoreError, StoreResult};
use crate::feedback::{ItemFeedback, MemberFeedback};

pub const VECTOR_NAMESPACE: &str = "member_vector";
pub const HISTORY_NAMESPACE: &str = "member_history";
pub const HIDDEN_NAMESPACE: &str = "member_hidden";
pub const FEEDBACK_NAMESPACE: &str = "member_feedback";
pub const PROFILE_NAMESPACE: &str = "member_profile";
const MAX_MATURITY_KEY: &[u8] = b"max_maturity";
const VECTOR_KEY: &[u8] = b"vector";

/// A member's vector and the model it belongs to.
#[derive(Debug, Clone, PartialEq)]
pub struct MemberVector {
    pub model_version: String,
    pub values: Vec<f32>,
}

/// One interaction in a member's history.
#[derive(Debug, Clone, PartialEq)]
pub struct HistoryEntry {
    pub item_id: String,
    pub ts_ms: i64,
    /// Interaction strength, as in the training table (the fold-in's `r`).
    pub strength: f32,
}

/// An item the member's feedback hides from their recommendations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HiddenItem {
    pub item_id: String,
    /// Milliseconds since the epoch; [`crate::feedback::BLOCKED`] = until a newer positive event.
    pub until_ms: i64,
}

/// A member's account attributes that filter what they are shown.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MemberProfile {
    /// The most mature rating the member may be shown (`online.maturity.ratings`); `None` =
    /// unrestricted.
    pub max_maturity: Option<String>,
}

/// Everything the online tier reads for one member.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MemberFeatures {
    pub vector: Option<MemberVector>,
    /// Oldest first, at most `history_cap` entries.
    pub history: Vec<HistoryEntry>,
    /// Items hidden by negative feedback, by item id (entries whose time has passed may remain
    /// until the member's next update: readers compare `until_ms` with the clock).
    pub hidden: Vec<HiddenItem>,
    pub profile: MemberProfile,
}

impl MemberFeatures {
    /// Neither a vector nor a history: a cold-start member.
    pub fn is_empty(&self) -> bool {
        self.vector.is_none()
            && self.history.is_empty()
            && self.hidden.is_empty()
            && self.profile == MemberProfile::default()
    }

    /// The items hidden at `now_ms`.
    pub fn hidden_at(&self, now_ms: i64) -> impl Iterator<Item = &str> {
        self.hidden
            .iter()
            .filter(move |h| h.until_ms > now_ms)
            .map(|h| h.item_id.as_str())
    }

    /// A compact binary form (the cache's value).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64 + (self.history.len() + self.hidden.len()) * 32);
        out.push(2u8); // format: 1 had no hidden items
        match &self.vector {
            Some(v) => {
                out.push(1);
                out.extend_from_slice(&encode_vector(v));
            }
            None => out.push(0),
        }
        out.extend_from_slice(&(self.history.len() as u32).to_le_bytes());
        for entry in &self.history {
            let key = history_key(entry.ts_ms, &entry.item_id);
            out.extend_from_slice(&(key.len() as u16).to_le_bytes());
            out.extend_from_slice(&key);
            out.extend_from_slice(&entry.strength.to_le_bytes());
        }
        out.extend_from_slice(&(self.hidden.len() as u32).to_le_bytes());
        for hidden in &self.hidden {
            out.extend_from_slice(&(hidden.item_id.len() as u16).to_le_bytes());
            out.extend_from_slice(hidden.item_id.as_bytes());
            out.extend_from_slice(&hidden.until_ms.to_le_bytes());
        }
        match &self.profile.max_maturity {
            Some(rating) => {
                out.push(1);
                out.extend_from_slice(&(rating.len() as u16).to_le_bytes());
                out.extend_from_slice(rating.as_bytes());
            }
            None => out.push(0),
        }
        out
    }

    /// Inverse of [`MemberFeatures::encode`]; `None` when the bytes are not one.
    pub fn decode(bytes: &[u8]) -> Option<MemberFeatures> {
        let mut r = Reader(bytes);
        let format = r.take(1)?[0];
        if !matches!(format, 1 | 2) {
            return None;
        }
        let vector = match r.take(1)?[0] {
            0 => None,
            1 => {
                let len = vector_len(r.0)?;
                Some(decode_vector(r.take(len)?)?)
            }
            _ => return None,
        };
        let n = u32::from_le_bytes(r.take(4)?.try_into().ok()?) as usize;
        let mut history = Vec::with_capacity(n.min(1 << 16));
        for _ in 0..n {
            let key_len = u16::from_le_bytes(r.take(2)?.try_into().ok()?) as usize;
            let (ts_ms, item_id) = parse_history_key(r.take(key_len)?)?;
            let strength = f32::from_le_bytes(r.take(4)?.try_into().ok()?);
            history.push(HistoryEntry {
                item_id,
                ts_ms,
                strength,
            });
        }
        let mut hidden = Vec::new();
        if format == 2 {
            let n = u32::from_le_bytes(r.take(4)?.try_into().ok()?) as usize;
            hidden.reserve(n.min(1 << 16));
            for _ in 0..n {
                let len = u16::from_le_bytes(r.take(2)?.try_into().ok()?) as usize;
                let item_id = String::from_utf8(r.take(len)?.to_vec()).ok()?;
                let until_ms = i64::from_le_bytes(r.take(8)?.try_into().ok()?);
                hidden.push(HiddenItem { item_id, until_ms });
            }
        }
        let mut profile = MemberProfile::default();
        if format == 2 && r.take(1)? == [1] {
            let len = u16::from_le_bytes(r.take(2)?.try_into().ok()?) as usize;
            profile.max_maturity = Some(String::from_utf8(r.take(len)?.to_vec()).ok()?);
        }
        r.0.is_empty().then_some(MemberFeatures {
            vector,
            history,
            hidden,
            profile,
        })
    }
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Some(head)
    }
}

fn encode_vector(v: &MemberVector) -> Vec<u8> {
    let mut out = Vec::with_capacity(6 + v.model_version.len() + 4 * v.values.len());
    out.extend_from_slice(&(v.model_version.len() as u16).to_le_bytes());
    out.extend_from_slice(v.model_version.as_bytes());
    out.extend_from_slice(&(v.values.len() as u32).to_le_bytes());
    for x in &v.values {
        out.extend_from_slice(&x.to_le_bytes());
    }
    out
}

/// Length of the encoded vector at the start of `bytes`.
fn vector_len(bytes: &[u8]) -> Option<usize> {
    let version_len = u16::from_le_bytes(bytes.get(..2)?.try_into().ok()?) as usize;
    let k_at = 2 + version_len;
    let k = u32::from_le_bytes(bytes.get(k_at..k_at + 4)?.try_into().ok()?) as usize;
    Some(k_at + 4 + 4 * k)
}

fn decode_vector(bytes: &[u8]) -> Option<MemberVector> {
    let mut r = Reader(bytes);
    let version_len = u16::from_le_bytes(r.take(2)?.try_into().ok()?) as usize;
    let model_version = String::from_utf8(r.take(version_len)?.to_vec()).ok()?;
    let k = u32::from_le_bytes(r.take(4)?.try_into().ok()?) as usize;
    let values = r
        .take(4 * k)?
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes")))
        .collect();
    r.0.is_empty().then_some(MemberVector {
        model_version,
        values,
    })
}

/// `timestamp ‖ item id`; the timestamp is big-endian with the sign bit flipped, so byte order is
/// time order for negative times too.
pub fn history_key(ts_ms: i64, item_id: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(8 + item_id.len());
    key.extend_from_slice(&((ts_ms as u64) ^ (1 << 63)).to_be_bytes());
    key.extend_from_slice(item_id.as_bytes());
    key
}

fn parse_history_key(key: &[u8]) -> Option<(i64, String)> {
    let ts = u64::from_be_bytes(key.get(..8)?.try_into().ok()?) ^ (1 << 63);
    let item_id = String::from_utf8(key[8..].to_vec()).ok()?;
    Some((ts as i64, item_id))
}

/// Member features over any [`KvStore`].
#[derive(Clone)]
pub struct FeatureStore {
    kv: Arc<dyn KvStore>,
    history_cap: usize,
}

impl std::fmt::Debug for FeatureStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FeatureStore")
            .field("backend", &self.kv.backend())
            .field("history_cap", &self.history_cap)
            .finish()
    }
}

impl FeatureStore {
    pub fn new(kv: Arc<dyn KvStore>, history_cap: usize) -> Self {
        assert!(history_cap >= 1, "history_cap must be at least 1");
        FeatureStore { kv, history_cap }
    }

    pub fn kv(&self) -> &Arc<dyn KvStore> {
        &self.kv
    }

    pub fn backend(&self) -> &'static str {
        self.kv.backend()
    }

    pub fn history_cap(&self) -> usize {
        self.history_cap
    }

    fn corrupt(namespace: &str, id: &str, problem: &str) -> StoreError {
        StoreError::Corrupt {
            namespace: namespace.into(),
            id: id.into(),
            problem: problem.into(),
        }
    }

    /// The member's vector and newest `history_cap` history entries. A member the store has never
    /// seen reads as empty.
    pub async fn get(&self, user_id: &str) -> StoreResult<MemberFeatures> {
        let mut one = self.get_many(&[user_id.to_string()]).await?;
        Ok(one.pop().expect("one member read, one answer"))
    }

    /// [`FeatureStore::get`] for a batch of members at once, in the order of `user_ids`: the
    /// backend reads all their vectors in one batch and all their histories in another (one round
    /// trip each on Redis) instead of a round trip or more per member.
    pub async fn get_many(&self, user_ids: &[String]) -> StoreResult<Vec<MemberFeatures>> {
        let (vectors, histories, hidden, profiles) = futures::future::try_join4(
            self.kv.get_records(VECTOR_NAMESPACE, user_ids),
            self.kv.get_records(HISTORY_NAMESPACE, user_ids),
            self.kv.get_records(HIDDEN_NAMESPACE, user_ids),
            self.kv.get_records(PROFILE_NAMESPACE, user_ids),
        )
        .await?;
        user_ids
            .iter()
            .zip(vectors.into_iter().zip(histories).zip(hidden).zip(profiles))
            .map(|(user_id, (((vector, history), hidden), profile))| {
                self.decode(user_id, [&vector, &history, &hidden, &profile])
            })
            .collect()
    }

    /// A member's features from the items of their two records.
    /// A member's features from the items of their records: vector, history, hidden, profile.
    fn decode(&self, user_id: &str, records: [&[Item]; 4]) -> StoreResult<MemberFeatures> {
        let [vector, history, hidden, profile] = records;
        let vector =
            match vector.iter().find(|item| item.key == VECTOR_KEY) {
                Some(item) => Some(decode_vector(&item.value).ok_or_else(|| {
                    Self::corrupt(VECTOR_NAMESPACE, user_id, "undecodable vector")
                })?),
                None => None,
            };
        let skip = history.len().saturating_sub(self.history_cap);
        let history = history[skip..]
            .iter()
            .map(|item| {
                let (ts_ms, item_id) = parse_history_key(&item.key).ok_or_else(|| {
                    Self::corrupt(HISTORY_NAMESPACE, user_id, "undecodable history key")
                })?;
                let strength = item
                    .value
                    .get(..4)
                    .map(|b| f32::from_le_bytes(b.try_into().expect("4 bytes")))
                    .ok_or_else(|| {
                        Self::corrupt(HISTORY_NAMESPACE, user_id, "history value is not an f32")
                    })?;
                Ok(HistoryEntry {
                    item_id,
                    ts_ms,
                    strength,
                })
            })
            .collect::<StoreResult<Vec<_>>>()?;
        let hidden = hidden
            .iter()
            .map(|item| {
                let until_ms = item
                    .value
                    .get(..8)
                    .map(|b| i64::from_le_bytes(b.try_into().expect("8 bytes")));
                match (std::str::from_utf8(&item.key), until_ms) {
                    (Ok(item_id), Some(until_ms)) => Ok(HiddenItem {
                        item_id: item_id.to_string(),
                        until_ms,
                    }),
                    _ => Err(Self::corrupt(
                        HIDDEN_NAMESPACE,
                        user_id,
                        "undecodable hidden item",
                    )),
                }
            })
            .collect::<StoreResult<Vec<_>>>()?;
        let max_maturity = match profile.iter().find(|item| item.key == MAX_MATURITY_KEY) {
            Some(item) => Some(String::from_utf8(item.value.clone()).map_err(|_| {
                Self::corrupt(PROFILE_NAMESPACE, user_id, "max_maturity is not UTF-8")
            })?),
            None => None,
        };
        Ok(MemberFeatures {
            vector,
            history,
            hidden,
            profile: MemberProfile { max_maturity },
        })
    }

    /// Writes members' profiles (a `None` attribute is deleted).
    pub async fn put_profiles(
        &self,
        profiles: &[(String, MemberProfile)],
        token: IdempotencyToken,
    ) -> StoreResult<()> {
        let puts: Vec<(String, Vec<Item>)> = profiles
            .iter()
            .filter_map(|(id, p)| {
                let rating = p.max_maturity.as_ref()?;
                Some((
                    id.clone(),
                    vec![Item::new(MAX_MATURITY_KEY, rating.as_bytes())],
                ))
            })
            .collect();
        self.kv.put_records(PROFILE_NAMESPACE, &puts, token).await?;
        let deletes = profiles
            .iter()
            .filter(|(_, p)| p.max_maturity.is_none())
            .map(|(id, _)| async move {
                let keys = Predicate::MatchKeys(vec![MAX_MATURITY_KEY.to_vec()]);
                self.kv.delete_items(PROFILE_NAMESPACE, id, &keys).await
            });
        futures::future::try_join_all(deletes).await?;
        Ok(())
    }

    /// The nearline tier's feedback state of a batch of members, in the order of `user_ids`.
    pub async fn get_feedback_many(&self, user_ids: &[String]) -> StoreResult<Vec<MemberFeedback>> {
        let records = self.kv.get_records(FEEDBACK_NAMESPACE, user_ids).await?;
        user_ids
            .iter()
            .zip(records)
            .map(|(user_id, items)| {
                items
                    .iter()
                    .map(|item| {
                        match (
                            std::str::from_utf8(&item.key),
                            ItemFeedback::decode(&item.value),
                        ) {
                            (Ok(id), Some(state)) => Ok((id.to_string(), state)),
                            _ => Err(Self::corrupt(
                                FEEDBACK_NAMESPACE,
                                user_id,
                                "undecodable feedback state",
                            )),
                        }
                    })
                    .collect()
            })
            .collect()
    }

    /// Writes feedback changes of many members: their changed item states and hidden items
    /// first, then the deletions (dropped states, items no longer hidden). Every write is a
    /// function of the merged state, so a replay after a crash in between writes the rest.
    pub async fn put_feedback(
        &self,
        changes: &[FeedbackChange],
        token: IdempotencyToken,
    ) -> StoreResult<()> {
        // Per member with any: its items of one kind.
        let records =
            |items_of: &dyn Fn(&FeedbackChange) -> Vec<Item>| -> Vec<(String, Vec<Item>)> {
                changes
                    .iter()
                    .map(|c| (c.user_id.clone(), items_of(c)))
                    .filter(|(_, items)| !items.is_empty())
                    .collect()
            };
        let states = records(&|c| {
            c.states
                .iter()
                .map(|(item, state)| Item::new(item.as_bytes(), state.encode()))
                .collect()
        });
        let hidden = records(&|c| {
            c.hidden
                .iter()
                .map(|h| Item::new(h.item_id.as_bytes(), h.until_ms.to_le_bytes()))
                .collect()
        });
        self.kv
            .put_records(FEEDBACK_NAMESPACE, &states, token)
            .await?;
        self.kv
            .put_records(HIDDEN_NAMESPACE, &hidden, token)
            .await?;
        let deletes = changes.iter().flat_map(|change| {
            [
                (FEEDBACK_NAMESPACE, &change.dropped_states),
                (HIDDEN_NAMESPACE, &change.unhidden),
            ]
            .into_iter()
            .filter(|(_, keys)| !keys.is_empty())
            .map(move |(namespace, keys)| async move {
                let keys =
                    Predicate::MatchKeys(keys.iter().map(|k| k.as_bytes().to_vec()).collect());
                self.kv
                    .delete_items(namespace, &change.user_id, &keys)
                    .await
            })
        });
        futures::future::try_join_all(deletes).await?;
        Ok(())
    }

    /// Deletes these history entries of the member (the ones an explicit negative event made the
    /// fold-in forget).
    pub async fn delete_history_entries(
        &self,
        user_id: &str,
        entries: &[HistoryEntry],
    ) -> StoreResult<()> {
        let keys = entries
            .iter()
            .map(|e| history_key(e.ts_ms, &e.item_id))
            .collect();
        self.kv
            .delete_items(HISTORY_NAMESPACE, user_id, &Predicate::MatchKeys(keys))
            .await
    }

    fn vector_item(vector: &MemberVector) -> Item {
        Item::new(VECTOR_KEY, encode_vector(vector))
    }

    fn history_items(history: &[HistoryEntry]) -> Vec<Item> {
        history
            .iter()
            .map(|e| Item::new(history_key(e.ts_ms, &e.item_id), e.strength.to_le_bytes()))
            .collect()
    }

    /// Stores the member's vector.
    pub async fn put_vector(
        &self,
        user_id: &str,
        vector: &MemberVector,
        token: IdempotencyToken,
    ) -> StoreResult<()> {
        self.kv
            .put_items(
                VECTOR_NAMESPACE,
                user_id,
                &[Self::vector_item(vector)],
                token,
            )
            .await
    }

    /// Adds entries to the member's history and drops all but the newest `history_cap`.
    pub async fn append_history(
        &self,
        user_id: &str,
        entries: &[HistoryEntry],
        token: IdempotencyToken,
    ) -> StoreResult<()> {
        self.kv
            .put_items(
                HISTORY_NAMESPACE,
                user_id,
                &Self::history_items(entries),
                token,
            )
            .await?;
        self.trim_history(user_id).await
    }

    /// Deletes the member's history entries older than `oldest_kept`, for a writer that knows the
    /// newest `history_cap` entries (it just merged them) and so needs no read to trim.
    pub async fn drop_history_before(
        &self,
        user_id: &str,
        oldest_kept: &HistoryEntry,
    ) -> StoreResult<()> {
        self.drop_history_below(
            user_id,
            history_key(oldest_kept.ts_ms, &oldest_kept.item_id),
        )
        .await
    }

    /// Deletes the member's history entries whose keys sort before `first_kept`.
    async fn drop_history_below(&self, user_id: &str, first_kept: Vec<u8>) -> StoreResult<()> {
        self.kv
            .delete_items(
                HISTORY_NAMESPACE,
                user_id,
                &Predicate::MatchRange {
                    start: None,
                    end: Some(first_kept),
                },
            )
            .await
    }

    /// Deletes history entries older than the newest `history_cap`.
    pub async fn trim_history(&self, user_id: &str) -> StoreResult<()> {
        let all = get_all(
            self.kv.as_ref(),
            HISTORY_NAMESPACE,
            user_id,
            &Predicate::MatchAll,
        )
        .await?;
        if all.len() > self.history_cap {
            let first_kept = all[all.len() - self.history_cap].key.clone();
            self.drop_history_below(user_id, first_kept).await?;
        }
        Ok(())
    }

    /// Writes many members' vectors and histories in bulk: the model's training output, or a
    /// nearline batch. Every vector is written before any history entry, so a crash in between
    /// leaves histories without their new entries, which a replay then finds new. Histories are
    /// merged into what the store holds, not trimmed here; readers see the newest `history_cap`
    /// and the next append trims.
    pub async fn put_members(
        &self,
        members: &[(String, Option<MemberVector>, Vec<HistoryEntry>)],
        token: IdempotencyToken,
    ) -> StoreResult<()> {
        let vectors: Vec<(String, Vec<Item>)> = members
            .iter()
            .filter_map(|(id, v, _)| v.as_ref().map(|v| (id.clone(), vec![Self::vector_item(v)])))
            .collect();
        let histories: Vec<(String, Vec<Item>)> = members
            .iter()
            .filter(|(_, _, h)| !h.is_empty())
            .map(|(id, _, h)| (id.clone(), Self::history_items(h)))
            .collect();
        self.kv
            .put_records(VECTOR_NAMESPACE, &vectors, token)
            .await?;
        self.kv
            .put_records(HISTORY_NAMESPACE, &histories, token)
            .await
    }

    /// Removes everything stored for the member.
    pub async fn delete_member(&self, user_id: &str) -> StoreResult<()> {
        for namespace in [
            VECTOR_NAMESPACE,
            HISTORY_NAMESPACE,
            HIDDEN_NAMESPACE,
            FEEDBACK_NAMESPACE,
            PROFILE_NAMESPACE,
        ] {
            self.kv
                .delete_items(namespace, user_id, &Predicate::MatchAll)
                .await?;
        }
        Ok(())
    }
}

/// One member's feedback writes (see [`FeatureStore::put_feedback`]).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FeedbackChange {
    pub user_id: String,
    /// Item states new or changed.
    pub states: Vec<(String, ItemFeedback)>,
    /// Item states no longer kept.
    pub dropped_states: Vec<String>,
    /// Hidden items new or with a new time.
    pub hidden: Vec<HiddenItem>,
    /// Items no longer hidden.
    pub unhidden: Vec<String>,
}

impl FeedbackChange {
    pub fn is_empty(&self) -> bool {
        self.states.is_empty()
            && self.dropped_states.is_empty()
            && self.hidden.is_empty()
            && self.unhidden.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn features_round_trip_through_their_encoding() {
        let features = MemberFeatures {
            vector: Some(MemberVector {
                model_version: "20261123T000000Z-abc".into(),
                values: vec![0.5, -1.25, 3.0],
            }),
            history: vec![
                HistoryEntry {
                    item_id: "i1".into(),
                    ts_ms: -5,
                    strength: 1.0,
                },
                HistoryEntry {
                    item_id: "ï2".into(),
                    ts_ms: 1_700_000_000_000,
                    strength: 2.5,
                },
            ],
            hidden: vec![HiddenItem {
                item_id: "i9".into(),
                until_ms: crate::feedback::BLOCKED,
            }],
            profile: MemberProfile {
                max_maturity: Some("PG-13".into()),
            },
        };
        let bytes = features.encode();
        assert_eq!(MemberFeatures::decode(&bytes), Some(features.clone()));
        assert_eq!(
            MemberFeatures::decode(&MemberFeatures::default().encode()),
            Some(MemberFeatures::default())
        );
        assert_eq!(MemberFeatures::decode(&bytes[..bytes.len() - 1]), None);
        assert_eq!(MemberFeatures::decode(b"junk"), None);
        // A cache entry written before hidden items existed (format 1) still reads.
        let mut format_1 = MemberFeatures {
            hidden: Vec::new(),
            profile: MemberProfile::default(),
            ..features
        }
        .encode();
        format_1[0] = 1;
        format_1.truncate(format_1.len() - 5);
        let old = MemberFeatures::decode(&format_1).expect("format 1 decodes");
        assert!(old.hidden.is_empty() && old.history.len() == 2);
    }

    #[test]
    fn history_keys_sort_by_time_including_before_1970() {
        assert!(history_key(-1, "z") < history_key(0, "a"));
        assert!(history_key(5, "a") < history_key(6, "a"));
        assert_eq!(
            parse_history_key(&history_key(-7, "x")),
            Some((-7, "x".into()))
        );
    }
}
