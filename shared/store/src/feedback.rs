//! Negative feedback per member: what the nearline tier learns from impressions and explicit
//! negative events, and the items the online tier hides because of it.
//!
//! Two namespaces, both id = member, one item per catalog item:
//!
//! - `member_feedback` — the nearline tier's working state ([`ItemFeedback`]): the newest few
//!   impressions of the item (time and a hash of the answer's request id), the newest positive
//!   event and the newest explicit negative one. Every field merges as a set union or a maximum,
//!   so folding the same impression or event in twice, or in any order, gives the same state —
//!   the nearline tier's redeliveries change nothing.
//! - `member_hidden` — what the online tier reads with the member's vector and history: item →
//!   hidden until (ms since the epoch; `i64::MAX` = until the member's next positive event on it).
//!
//! The rules ([`FeedbackPolicy`]): an item shown `impressions_to_hide` times within `hide_for_ms`
//! with no positive event since is hidden until `hide_for_ms` after the `impressions_to_hide`-th
//! newest of those impressions; an explicit negative event (`thumbs_down`, `not_interested`) hides
//! it until a newer positive event. Impressions older than `hide_for_ms` count for nothing and
//! are forgotten, and a member keeps at most `max_items` items' state (least recently active
//! dropped first, blocked items last), so the state stays bounded whatever is shown.

use std::collections::BTreeMap;

/// How impressions and negative events turn into hidden items.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FeedbackPolicy {
    /// Impressions without a positive event that hide an item (at least 1).
    pub impressions_to_hide: usize,
    /// How long an item stays hidden, and how long an impression counts.
    pub hide_for_ms: i64,
    /// Items whose state one member keeps.
    pub max_items: usize,
}

/// Hidden until a newer positive event: an explicit negative.
pub const BLOCKED: i64 = i64::MAX;

/// One member's feedback on one item.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ItemFeedback {
    /// The newest impressions, newest first, at most `impressions_to_hide`: (time, hash of the
    /// answer's request id). One answer shows an item once, so the pair identifies an impression.
    pub impressions: Vec<(i64, u64)>,
    /// The newest positive event's time; `i64::MIN` when none is known.
    pub last_positive_ms: i64,
    /// The newest explicit negative event's time; `i64::MIN` when none is known.
    pub last_negative_ms: i64,
}

impl Default for ItemFeedback {
    fn default() -> Self {
        ItemFeedback {
            impressions: Vec::new(),
            last_positive_ms: i64::MIN,
            last_negative_ms: i64::MIN,
        }
    }
}

/// A stable 64-bit hash of a request id (FNV-1a): the impression's identity in the state.
pub fn request_hash(request_id: &str) -> u64 {
    request_id.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

impl ItemFeedback {
    /// Adds an impression, keeping the newest `keep`; whether the state changed.
    pub fn add_impression(&mut self, ts_ms: i64, request: u64, keep: usize) -> bool {
        let impression = (ts_ms, request);
        // Newest first: descending by (time, hash).
        match self
            .impressions
            .binary_search_by(|probe| impression.cmp(probe))
        {
            Ok(_) => false,
            Err(at) if at >= keep => false,
            Err(at) => {
                self.impressions.insert(at, impression);
                self.impressions.truncate(keep);
                true
            }
        }
    }

    /// Records a positive event; whether the state changed.
    pub fn add_positive(&mut self, ts_ms: i64) -> bool {
        let changed = ts_ms > self.last_positive_ms;
        self.last_positive_ms = self.last_positive_ms.max(ts_ms);
        changed
    }

    /// Records an explicit negative event; whether the state changed.
    pub fn add_negative(&mut self, ts_ms: i64) -> bool {
        let changed = ts_ms > self.last_negative_ms;
        self.last_negative_ms = self.last_negative_ms.max(ts_ms);
        changed
    }

    /// Whether an explicit negative is newer than every positive.
    pub fn blocked(&self) -> bool {
        self.last_negative_ms > self.last_positive_ms
    }

    /// Until when the item is hidden at `now_ms` (`BLOCKED` for an explicit negative), or `None`.
    pub fn hidden_until(&self, policy: &FeedbackPolicy, now_ms: i64) -> Option<i64> {
        if self.blocked() {
            return Some(BLOCKED);
        }
        let counted = now_ms.saturating_sub(policy.hide_for_ms);
        let unanswered: Vec<i64> = self
            .impressions
            .iter()
            .map(|(ts, _)| *ts)
            .filter(|ts| *ts > self.last_positive_ms && *ts > counted)
            .collect();
        let nth = *unanswered.get(policy.impressions_to_hide.max(1) - 1)?;
        Some(nth.saturating_add(policy.hide_for_ms))
    }

    /// The newest time the state knows of.
    pub fn last_activity(&self) -> i64 {
        let newest_impression = self.impressions.first().map_or(i64::MIN, |(ts, _)| *ts);
        newest_impression
            .max(self.last_positive_ms)
            .max(self.last_negative_ms)
    }

    /// Whether the state still matters at `now_ms`: a block, or activity within `hide_for_ms`
    /// (an older impression counts for nothing, and a late impression older than a forgotten
    /// positive is too old to count).
    pub fn matters(&self, policy: &FeedbackPolicy, now_ms: i64) -> bool {
        self.blocked() || self.last_activity() > now_ms.saturating_sub(policy.hide_for_ms)
    }

    /// A compact binary form: format byte, the two times, the impression count, the impressions.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(21 + 16 * self.impressions.len());
        out.push(1);
        out.extend_from_slice(&self.last_positive_ms.to_le_bytes());
        out.extend_from_slice(&self.last_negative_ms.to_le_bytes());
        out.extend_from_slice(&(self.impressions.len() as u32).to_le_bytes());
        for (ts, request) in &self.impressions {
            out.extend_from_slice(&ts.to_le_bytes());
            out.extend_from_slice(&request.to_le_bytes());
        }
        out
    }

    /// Inverse of [`ItemFeedback::encode`]; `None` when the bytes are not one.
    pub fn decode(bytes: &[u8]) -> Option<ItemFeedback> {
        let (&format, rest) = bytes.split_first()?;
        if format != 1 || rest.len() < 20 {
            return None;
        }
        let i64_at = |b: &[u8], at: usize| -> Option<i64> {
            Some(i64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?))
        };
        let last_positive_ms = i64_at(rest, 0)?;
        let last_negative_ms = i64_at(rest, 8)?;
        let n = u32::from_le_bytes(rest[16..20].try_into().ok()?) as usize;
        let body = &rest[20..];
        if body.len() != n.checked_mul(16)? {
            return None;
        }
        let impressions = body
            .chunks_exact(16)
            .map(|c| {
                (
                    i64::from_le_bytes(c[..8].try_into().expect("8 bytes")),
                    u64::from_le_bytes(c[8..].try_into().expect("8 bytes")),
                )
            })
            .collect();
        Some(ItemFeedback {
            impressions,
            last_positive_ms,
            last_negative_ms,
        })
    }
}

/// One member's feedback state: item → state.
pub type MemberFeedback = BTreeMap<String, ItemFeedback>;

/// Drops what no longer matters at `now_ms` and, over `max_items`, the least recently active
/// items (blocked ones last). Returns the dropped items.
pub fn prune(feedback: &mut MemberFeedback, policy: &FeedbackPolicy, now_ms: i64) -> Vec<String> {
    let mut dropped: Vec<String> = feedback
        .iter()
        .filter(|(_, f)| !f.matters(policy, now_ms))
        .map(|(item, _)| item.clone())
        .collect();
    for item in &dropped {
        feedback.remove(item);
    }
    if feedback.len() > policy.max_items {
        let mut by_value: Vec<(bool, i64, String)> = feedback
            .iter()
            .map(|(item, f)| (f.blocked(), f.last_activity(), item.clone()))
            .collect();
        by_value.sort();
        let over = feedback.len() - policy.max_items;
        for (_, _, item) in by_value.into_iter().take(over) {
            feedback.remove(&item);
            dropped.push(item);
        }
    }
    dropped
}

/// The items `feedback` hides at `now_ms`, item → until.
pub fn hidden(
    feedback: &MemberFeedback,
    policy: &FeedbackPolicy,
    now_ms: i64,
) -> BTreeMap<String, i64> {
    feedback
        .iter()
        .filter_map(|(item, f)| {
            f.hidden_until(policy, now_ms)
                .filter(|until| *until > now_ms)
                .map(|until| (item.clone(), until))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: FeedbackPolicy = FeedbackPolicy {
        impressions_to_hide: 3,
        hide_for_ms: 1_000,
        max_items: 4,
    };

    #[test]
    fn three_unanswered_impressions_hide_an_item_until_it_expires() {
        let mut f = ItemFeedback::default();
        assert!(f.add_impression(100, 1, 3));
        assert!(f.add_impression(200, 2, 3));
        assert_eq!(f.hidden_until(&POLICY, 250), None);
        assert!(f.add_impression(300, 3, 3));
        // Hidden from the third impression on, for hide_for_ms after the oldest of the three.
        assert_eq!(f.hidden_until(&POLICY, 350), Some(1_100));
        // The oldest impression stops counting after hide_for_ms: two left, not hidden.
        assert_eq!(f.hidden_until(&POLICY, 1_150), None);
        // A play after the impressions answers them.
        assert!(f.add_positive(310));
        assert_eq!(f.hidden_until(&POLICY, 350), None);
    }

    #[test]
    fn the_same_facts_in_any_order_or_twice_give_the_same_state() {
        let facts: Vec<(u8, i64, u64)> = vec![
            (0, 100, 7),
            (0, 200, 8),
            (1, 150, 0),
            (0, 300, 9),
            (0, 250, 10),
            (2, 120, 0),
            (0, 200, 8),
        ];
        let fold = |order: &[(u8, i64, u64)]| {
            let mut f = ItemFeedback::default();
            for (kind, ts, id) in order {
                match kind {
                    0 => f.add_impression(*ts, *id, 3),
                    1 => f.add_positive(*ts),
                    _ => f.add_negative(*ts),
                };
            }
            f
        };
        let forward = fold(&facts);
        let mut reversed = facts.clone();
        reversed.reverse();
        assert_eq!(forward, fold(&reversed));
        let twice: Vec<_> = facts.iter().chain(&facts).copied().collect();
        assert_eq!(forward, fold(&twice));
        assert_eq!(forward.impressions, vec![(300, 9), (250, 10), (200, 8)]);
        assert_eq!(ItemFeedback::decode(&forward.encode()), Some(forward));
    }

    #[test]
    fn an_explicit_negative_blocks_until_a_newer_positive() {
        let mut f = ItemFeedback::default();
        f.add_positive(100);
        f.add_negative(200);
        assert_eq!(f.hidden_until(&POLICY, 10_000), Some(BLOCKED));
        assert!(f.matters(&POLICY, i64::MAX - 1));
        f.add_positive(300);
        assert_eq!(f.hidden_until(&POLICY, 10_000), None);
    }

    #[test]
    fn pruning_forgets_old_state_and_bounds_the_items() {
        let mut m = MemberFeedback::new();
        for (i, ts) in [10, 2_000, 2_100, 2_200, 2_300, 2_400]
            .into_iter()
            .enumerate()
        {
            let mut f = ItemFeedback::default();
            f.add_impression(ts, i as u64, 3);
            m.insert(format!("i{i}"), f);
        }
        m.get_mut("i1").unwrap().add_negative(2_050);
        let dropped = prune(&mut m, &POLICY, 2_500);
        // i0 is older than hide_for_ms; then the least recently active unblocked item (i2).
        assert_eq!(dropped, vec!["i0".to_string(), "i2".to_string()]);
        assert_eq!(m.len(), 4);
        assert!(m.contains_key("i1"), "blocked items are kept longest");
        assert_eq!(
            hidden(&m, &POLICY, 2_500),
            BTreeMap::from([("i1".to_string(), BLOCKED)])
        );
    }

    #[test]
    fn undecodable_bytes_are_refused() {
        assert_eq!(ItemFeedback::decode(b""), None);
        assert_eq!(ItemFeedback::decode(&[2; 21]), None);
        let mut bytes = ItemFeedback::default().encode();
        bytes.push(0);
        assert_eq!(ItemFeedback::decode(&bytes), None);
    }
}
