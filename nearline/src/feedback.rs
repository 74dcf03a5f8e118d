//! Negative feedback in the nearline tier: the online tier's impressions (what each answer
//! showed) and explicit negative events (`thumbs_down`, `not_interested`) turned into the items
//! hidden from each member. The rules and the stored state are `recsys_store::feedback`'s; this
//! module decodes impression records and merges a batch into one member's state.
//!
//! Merging is a union of facts (impressions identified by answer and item, the newest positive
//! and negative times), so a redelivered impression or event changes nothing, whatever the order
//! the two topics arrive in.

use std::collections::{BTreeMap, BTreeSet};

use recsys_shared::config::{Config, NegativeFoldIn};
use recsys_shared::impression::Impression;
use recsys_store::features::{FeedbackChange, HiddenItem};
use recsys_store::feedback::{hidden, prune, request_hash, FeedbackPolicy, MemberFeedback};

use crate::event::{check_id, check_key, Event, EventRules, RejectReason, Rejection};

/// At most this many items in one impression record (a homepage is a few dozen rows of a few
/// dozen items).
pub const MAX_ITEMS_PER_IMPRESSION: usize = 10_000;

/// One answer's items as the feedback needs them.
#[derive(Debug, Clone, PartialEq)]
pub struct Shown {
    pub user_id: String,
    pub ts_ms: i64,
    /// Hash of the answer's request id (see [`request_hash`]).
    pub request: u64,
    /// Distinct item ids.
    pub items: Vec<String>,
}

impl Shown {
    pub fn from_impression(impression: &Impression) -> Shown {
        let items: BTreeSet<&str> = impression
            .items
            .iter()
            .map(|i| i.item_id.as_str())
            .collect();
        Shown {
            user_id: impression.user_id.clone(),
            ts_ms: impression.ts_ms,
            request: request_hash(&impression.request_id),
            items: items.into_iter().map(str::to_string).collect(),
        }
    }
}

/// Decodes and checks an impression record (JSON, see `recsys_shared::impression`); `key` is the
/// record key, which must be the member. Items the model does not know are kept (the answer may
/// come from another model version); they simply never match a candidate.
pub fn decode_impression(
    payload: Option<&[u8]>,
    key: Option<&[u8]>,
    rules: &EventRules,
    now_ms: i64,
) -> Result<Shown, Rejection> {
    let payload = payload.ok_or_else(|| {
        Rejection::new(
            RejectReason::Undecodable,
            "an impression record with no value",
        )
    })?;
    let impression: Impression = serde_json::from_slice(payload).map_err(|e| {
        Rejection::new(
            RejectReason::Undecodable,
            format!("not an impression record: {e}"),
        )
    })?;
    check_id("user_id", &impression.user_id)?;
    check_id("request_id", &impression.request_id)?;
    if impression.items.len() > MAX_ITEMS_PER_IMPRESSION {
        return Err(Rejection::new(
            RejectReason::Undecodable,
            format!(
                "`items`: {} items, at most {MAX_ITEMS_PER_IMPRESSION}",
                impression.items.len()
            ),
        ));
    }
    for (n, item) in impression.items.iter().enumerate() {
        check_id(&format!("items[{n}].item_id"), &item.item_id)?;
    }
    check_key(key, &impression.user_id, "impression")?;
    rules.check_time("ts_ms", impression.ts_ms, now_ms)?;
    Ok(Shown::from_impression(&impression))
}

/// The feedback settings a worker applies.
#[derive(Debug, Clone, Copy)]
pub struct FeedbackRules {
    pub policy: FeedbackPolicy,
    pub negative_fold_in: NegativeFoldIn,
}

impl FeedbackRules {
    /// `None` when `feedback.enabled` is false.
    pub fn from_config(config: &Config) -> Option<FeedbackRules> {
        let f = &config.feedback;
        f.enabled.then(|| FeedbackRules {
            policy: FeedbackPolicy {
                impressions_to_hide: f.impressions_to_hide as usize,
                hide_for_ms: f.hide_for_ms(),
                max_items: f.max_items_per_member,
            },
            negative_fold_in: f.negative_fold_in,
        })
    }
}

/// One member's feedback after a batch: the merged state, and what to write.
#[derive(Debug, Clone, Default)]
pub struct MergedFeedback {
    pub state: MemberFeedback,
    /// The items hidden now, as the member's features carry them.
    pub hidden: Vec<HiddenItem>,
    pub change: FeedbackChange,
}

impl MergedFeedback {
    /// The newest explicit negative on `item`, if any (for the `forget` fold-in).
    pub fn negative_ms(&self, item: &str) -> Option<i64> {
        self.state
            .get(item)
            .map(|f| f.last_negative_ms)
            .filter(|ts| *ts > i64::MIN)
    }
}

/// Merges a batch's events and impressions of one member into their stored feedback state.
#[allow(clippy::too_many_arguments)]
pub fn merge(
    user_id: &str,
    stored: MemberFeedback,
    stored_hidden: &[HiddenItem],
    events: &[&Event],
    shown: &[&Shown],
    event_rules: &EventRules,
    rules: &FeedbackRules,
    now_ms: i64,
) -> MergedFeedback {
    let policy = &rules.policy;
    let mut state = stored.clone();
    for s in shown {
        for item in &s.items {
            state.entry(item.clone()).or_default().add_impression(
                s.ts_ms,
                s.request,
                policy.impressions_to_hide,
            );
        }
    }
    for event in events {
        if event_rules.is_negative(event) {
            state
                .entry(event.item_id.clone())
                .or_default()
                .add_negative(event.ts);
        } else if event_rules.is_positive(event) {
            state
                .entry(event.item_id.clone())
                .or_default()
                .add_positive(event.ts);
        }
    }
    let dropped = prune(&mut state, policy, now_ms);
    let now_hidden = hidden(&state, policy, now_ms);
    let was_hidden: BTreeMap<&str, i64> = stored_hidden
        .iter()
        .map(|h| (h.item_id.as_str(), h.until_ms))
        .collect();
    let change = FeedbackChange {
        user_id: user_id.to_string(),
        states: state
            .iter()
            .filter(|(item, f)| stored.get(*item) != Some(*f))
            .map(|(item, f)| (item.clone(), f.clone()))
            .collect(),
        dropped_states: dropped
            .into_iter()
            .filter(|item| stored.contains_key(item))
            .collect(),
        hidden: now_hidden
            .iter()
            .filter(|(item, until)| was_hidden.get(item.as_str()) != Some(*until))
            .map(|(item, until)| HiddenItem {
                item_id: item.clone(),
                until_ms: *until,
            })
            .collect(),
        unhidden: was_hidden
            .keys()
            .filter(|item| !now_hidden.contains_key(**item))
            .map(|item| item.to_string())
            .collect(),
    };
    MergedFeedback {
        hidden: now_hidden
            .into_iter()
            .map(|(item_id, until_ms)| HiddenItem { item_id, until_ms })
            .collect(),
        state,
        change,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use recsys_store::feedback::BLOCKED;

    fn rules() -> (EventRules, FeedbackRules) {
        let mut config = Config::default();
        config.feedback.enabled = true;
        config.feedback.impressions_to_hide = 2;
        config.feedback.hide_for_hours = 1.0;
        (
            EventRules::from_config(&config),
            FeedbackRules::from_config(&config).expect("enabled"),
        )
    }

    fn shown(request: &str, ts_ms: i64, items: &[&str]) -> Shown {
        Shown {
            user_id: "u".into(),
            ts_ms,
            request: request_hash(request),
            items: items.iter().map(|i| i.to_string()).collect(),
        }
    }

    fn event(event_type: &str, item: &str, ts: i64) -> Event {
        Event {
            event_id: format!("{event_type}-{item}-{ts}"),
            user_id: "u".into(),
            item_id: item.into(),
            event_type: event_type.into(),
            value: 0.0,
            ts,
            request_id: String::new(),
        }
    }

    #[test]
    fn impressions_without_a_play_hide_and_a_play_or_redelivery_behaves() {
        let (events, rules) = rules();
        let now = 10_000_000;
        let a = shown("r1", now - 2_000, &["i1", "i2"]);
        let b = shown("r2", now - 1_000, &["i1", "i2", "i3"]);
        let play = event("play", "i2", now - 500);
        let merged = merge(
            "u",
            MemberFeedback::new(),
            &[],
            &[&play],
            &[&a, &b],
            &events,
            &rules,
            now,
        );
        // i1: two impressions, no play → hidden an hour after the older one. i2 was played.
        assert_eq!(
            merged.hidden,
            vec![HiddenItem {
                item_id: "i1".into(),
                until_ms: now - 2_000 + 3_600_000,
            }]
        );
        assert_eq!(merged.change.hidden, merged.hidden);
        assert_eq!(merged.change.states.len(), 3);

        // Redelivering the same batch onto the stored result writes nothing.
        let again = merge(
            "u",
            merged.state.clone(),
            &merged.hidden,
            &[&play],
            &[&b, &a],
            &events,
            &rules,
            now,
        );
        assert!(again.change.is_empty(), "{:?}", again.change);
        assert_eq!(again.hidden, merged.hidden);

        // A play of i1 arriving later (from the other topic) unhides it.
        let late_play = event("play", "i1", now - 100);
        let answered = merge(
            "u",
            merged.state,
            &merged.hidden,
            &[&late_play],
            &[],
            &events,
            &rules,
            now,
        );
        assert!(answered.hidden.is_empty());
        assert_eq!(answered.change.unhidden, vec!["i1".to_string()]);
    }

    #[test]
    fn a_thumbs_down_blocks_until_a_newer_play() {
        let (events, rules) = rules();
        let now = 10_000_000;
        let down = event("thumbs_down", "i7", now - 50);
        let merged = merge(
            "u",
            MemberFeedback::new(),
            &[],
            &[&down],
            &[],
            &events,
            &rules,
            now,
        );
        assert_eq!(merged.hidden[0].until_ms, BLOCKED);
        assert_eq!(merged.negative_ms("i7"), Some(now - 50));
        // An older play (out of order) does not lift it; a newer one does.
        let older = event("play", "i7", now - 60);
        let still = merge(
            "u",
            merged.state.clone(),
            &merged.hidden,
            &[&older],
            &[],
            &events,
            &rules,
            now,
        );
        assert_eq!(still.hidden, merged.hidden);
        let newer = event("play", "i7", now - 10);
        let lifted = merge(
            "u",
            merged.state,
            &merged.hidden,
            &[&newer],
            &[],
            &events,
            &rules,
            now,
        );
        assert!(lifted.hidden.is_empty());
    }

    #[test]
    fn impression_records_are_checked_naming_the_field() {
        let (events, _) = rules();
        let now = 1_800_000_000_000i64;
        let good = format!(
            r#"{{"request_id":"r","user_id":"u","ts_ms":{now},"rpc":"homepage","model_version":"v","experiments":[],"items":[{{"row":0,"row_kind":"top_picks","position":0,"item_id":"i1"}},{{"row":1,"row_kind":"trending","position":0,"item_id":"i1"}}]}}"#
        );
        let s = decode_impression(Some(good.as_bytes()), Some(b"u"), &events, now).unwrap();
        assert_eq!(s.items, vec!["i1".to_string()], "distinct items");
        let cases = [
            (
                good.replace(r#""user_id":"u""#, r#""user_id":"""#),
                "`user_id`",
            ),
            (
                good.replace(r#""item_id":"i1""#, r#""item_id":" i1""#),
                "`items[0].item_id`",
            ),
            (good.replace(&now.to_string(), "5"), "`ts_ms`"),
            ("{".to_string(), "not an impression record"),
        ];
        for (payload, field) in cases {
            let r = decode_impression(Some(payload.as_bytes()), None, &events, now).unwrap_err();
            assert!(r.detail.contains(field), "{field}: {}", r.detail);
        }
        let r = decode_impression(Some(good.as_bytes()), Some(b"other"), &events, now).unwrap_err();
        assert_eq!(r.reason, RejectReason::KeyMismatch);
    }
}
