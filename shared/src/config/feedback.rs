//! `[feedback]`: negative feedback — impressions and explicit negative events — which every tier
//! reads: the nearline workers apply it, the offline jobs forget what they forget, the online
//! tier hides what they hide.

use serde::{Deserialize, Serialize};

use super::{first_problem, within};

/// Negative feedback, applied by the nearline workers and read by the offline jobs (which forget
/// what the workers forget). When enabled, the workers also consume the online tier's impressions
/// (`kafka.impressions_topic`, which must have as many partitions as `kafka.events_topic`, both keyed
/// by member, so one worker owns each member on both) and hide from a member an item shown
/// `impressions_to_hide` times within `hide_for_hours` without a positive event; an explicit
/// negative event hides it until a newer positive one.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct FeedbackConfig {
    /// Default false.
    pub enabled: bool,
    /// Default 3.
    pub impressions_to_hide: u32,
    /// How long an item stays hidden, and how long an impression counts. Default 72.
    pub hide_for_hours: f64,
    /// Event types that are explicit negatives. They need no weight in
    /// `offline.features.event_weights` (and give no strength). Default `thumbs_down`,
    /// `not_interested`.
    pub negative_event_types: Vec<String>,
    /// What a negative event does to the member's vector: `ignore` (nothing: the item is only
    /// hidden) or `forget` (the member's earlier positive events on the item leave the history,
    /// so the fold-in no longer pulls towards it). Default `forget`.
    pub negative_fold_in: NegativeFoldIn,
    /// Items whose feedback state one member keeps (least recently active dropped first).
    /// Default 1000.
    pub max_items_per_member: usize,
}

/// See [`FeedbackConfig::negative_fold_in`].
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum NegativeFoldIn {
    Ignore,
    #[default]
    Forget,
}

impl Default for FeedbackConfig {
    fn default() -> Self {
        FeedbackConfig {
            enabled: false,
            impressions_to_hide: 3,
            hide_for_hours: 72.0,
            negative_event_types: vec!["thumbs_down".into(), "not_interested".into()],
            negative_fold_in: NegativeFoldIn::Forget,
            max_items_per_member: 1000,
        }
    }
}

impl FeedbackConfig {
    /// `hide_for_hours` in milliseconds.
    pub fn hide_for_ms(&self) -> i64 {
        (self.hide_for_hours * 3_600_000.0) as i64
    }
}

impl FeedbackConfig {
    pub(super) fn validate(&self) -> Result<(), String> {
        within(
            "feedback.impressions_to_hide",
            self.impressions_to_hide,
            1..=100,
        )?;
        within(
            "feedback.max_items_per_member",
            self.max_items_per_member,
            1..=100_000,
        )?;
        first_problem(vec![(
            self.hide_for_hours > 0.0 && self.hide_for_hours <= 24.0 * 3650.0,
            "feedback.hide_for_hours",
            "must be in (0, 87600]",
        )])
    }
}
