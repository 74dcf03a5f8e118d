//! The event contract every tier shares: decoding a record value (a Kafka record's, or a REST
//! request's body) into an [`Event`] and deciding whether it can be applied. Anything that cannot
//! is a [`Rejection`] with a machine-readable reason (the nearline dead-letter header) and a
//! human-readable detail naming the field. The nearline workers apply events; the online tier's
//! REST ingest checks them with the same rules before producing them. No Kafka here.

use std::collections::BTreeMap;

use prost::Message;
use serde::{Deserialize, Serialize};

use crate::config::Config;
use crate::ids::id_problem;
use crate::proto::v1;

/// The `content-type` header of a protobuf-encoded [`v1::Event`].
pub const CONTENT_TYPE_PROTOBUF: &str = "application/x-protobuf";
/// The `content-type` header of a JSON-encoded event.
pub const CONTENT_TYPE_JSON: &str = "application/json";

/// One member interaction, decoded and validated.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Event {
    pub event_id: String,
    pub user_id: String,
    pub item_id: String,
    pub event_type: String,
    /// The rating of `rating` events; otherwise informational.
    #[serde(default)]
    pub value: f64,
    /// Milliseconds since the Unix epoch.
    pub ts: i64,
    /// Attribution: the answer (`RankResponse.request_id`) that showed the item; empty if none.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub request_id: String,
}

impl Event {
    /// The protobuf encoding (the record value under [`CONTENT_TYPE_PROTOBUF`]).
    pub fn to_protobuf(&self) -> Vec<u8> {
        v1::Event {
            event_id: self.event_id.clone(),
            user_id: self.user_id.clone(),
            item_id: self.item_id.clone(),
            event_type: self.event_type.clone(),
            value: self.value,
            ts: self.ts,
            request_id: self.request_id.clone(),
        }
        .encode_to_vec()
    }

    /// The JSON encoding (the record value under [`CONTENT_TYPE_JSON`]).
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("an event serializes")
    }
}

/// Why an event was not applied; [`RejectReason::name`] is the dead-letter header's value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RejectReason {
    /// The bytes are not an event in the announced encoding.
    Undecodable,
    /// A required field is empty or missing.
    MissingField,
    /// An id breaks the id rules (length, control characters, white space).
    InvalidId,
    /// The record key is not the event's `user_id` (the member's events would lose their order).
    KeyMismatch,
    /// The event type has no weight in `offline.features.event_weights`.
    UnknownEventType,
    /// The current model does not know the item.
    UnknownItem,
    /// The timestamp is too far in the future or the past.
    TimestampSkew,
    /// The member's stored state cannot be decoded (written by another program, or damaged): the
    /// event cannot be folded into it. An operator repairs or deletes the record and replays.
    CorruptState,
}

impl RejectReason {
    pub fn name(self) -> &'static str {
        match self {
            RejectReason::Undecodable => "undecodable",
            RejectReason::MissingField => "missing_field",
            RejectReason::InvalidId => "invalid_id",
            RejectReason::KeyMismatch => "key_mismatch",
            RejectReason::UnknownEventType => "unknown_event_type",
            RejectReason::UnknownItem => "unknown_item",
            RejectReason::TimestampSkew => "timestamp_skew",
            RejectReason::CorruptState => "corrupt_state",
        }
    }

    pub const ALL: [RejectReason; 8] = [
        RejectReason::Undecodable,
        RejectReason::MissingField,
        RejectReason::InvalidId,
        RejectReason::KeyMismatch,
        RejectReason::UnknownEventType,
        RejectReason::UnknownItem,
        RejectReason::TimestampSkew,
        RejectReason::CorruptState,
    ];
}

/// An event that cannot be applied, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub reason: RejectReason,
    /// The field of the record at fault, when one is (`user_id`, `items[2].item_id`, ...).
    pub field: Option<String>,
    pub detail: String,
}

impl Rejection {
    /// A rejection of the record as a whole.
    pub fn new(reason: RejectReason, detail: impl Into<String>) -> Self {
        Rejection {
            reason,
            field: None,
            detail: detail.into(),
        }
    }

    /// A rejection of one field of the record; `detail` says what is wrong with it.
    pub fn of_field(reason: RejectReason, field: &str, detail: impl Into<String>) -> Self {
        Rejection {
            reason,
            field: Some(field.to_string()),
            detail: detail.into(),
        }
    }
}

impl std::fmt::Display for Rejection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.reason.name(), self.detail)
    }
}

/// Decodes a record value. `content_type` is the record's `content-type` header; without one, a
/// value starting with `{` is read as JSON and anything else as protobuf.
pub fn decode(payload: Option<&[u8]>, content_type: Option<&str>) -> Result<Event, Rejection> {
    let payload = payload
        .ok_or_else(|| Rejection::new(RejectReason::Undecodable, "the record has no value"))?;
    let json = match content_type.map(|c| c.split(';').next().unwrap_or("").trim()) {
        Some(CONTENT_TYPE_JSON) => true,
        Some(CONTENT_TYPE_PROTOBUF) | Some("application/protobuf") => false,
        Some(other) => {
            return Err(Rejection::new(
                RejectReason::Undecodable,
                format!(
                "content-type {other:?} is neither {CONTENT_TYPE_PROTOBUF} nor {CONTENT_TYPE_JSON}"
            ),
            ))
        }
        None => payload.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{'),
    };
    if json {
        serde_json::from_slice::<Event>(payload)
            .map_err(|e| Rejection::new(RejectReason::Undecodable, format!("JSON: {e}")))
    } else {
        let e = v1::Event::decode(payload)
            .map_err(|e| Rejection::new(RejectReason::Undecodable, format!("protobuf: {e}")))?;
        Ok(Event {
            event_id: e.event_id,
            user_id: e.user_id,
            item_id: e.item_id,
            event_type: e.event_type,
            value: e.value,
            ts: e.ts,
            request_id: e.request_id,
        })
    }
}

/// Checks a required id field: present and within the id rules; the rejection names `field`.
pub fn check_id(field: &str, value: &str) -> Result<(), Rejection> {
    if value.is_empty() {
        return Err(Rejection::of_field(
            RejectReason::MissingField,
            field,
            format!("`{field}` is missing or empty"),
        ));
    }
    match id_problem(value) {
        Some(problem) => Err(Rejection::of_field(
            RejectReason::InvalidId,
            field,
            format!("`{field}`: {problem}"),
        )),
        None => Ok(()),
    }
}

/// Checks that a record's key, if it has one, is its member (`what` names the record kind): a
/// member's records keep their order only in the member's partition.
pub fn check_key(key: Option<&[u8]>, user_id: &str, what: &str) -> Result<(), Rejection> {
    match key {
        Some(key) if key != user_id.as_bytes() => Err(Rejection::new(
            RejectReason::KeyMismatch,
            format!(
                "the record key {:?} is not the {what}'s user_id {user_id:?}",
                String::from_utf8_lossy(key),
            ),
        )),
        _ => Ok(()),
    }
}

/// What makes an event applicable, from the configuration: event weights, the rating threshold
/// and the allowed clock skew.
#[derive(Debug, Clone)]
pub struct EventRules {
    weights: BTreeMap<String, f64>,
    /// Explicit negative event types (`feedback`, when enabled).
    negative_types: std::collections::BTreeSet<String>,
    rating_event_type: String,
    rating_threshold: f64,
    max_future_skew_ms: i64,
    max_past_skew_ms: i64,
}

impl EventRules {
    pub fn from_config(config: &Config) -> Self {
        let f = &config.offline.features;
        let feedback = &config.feedback;
        EventRules {
            weights: f.event_weights.clone(),
            negative_types: if feedback.enabled {
                feedback.negative_event_types.iter().cloned().collect()
            } else {
                Default::default()
            },
            rating_event_type: f.rating_event_type.clone(),
            rating_threshold: f.rating_threshold,
            max_future_skew_ms: config.nearline.max_future_skew_ms,
            max_past_skew_ms: config.nearline.max_past_skew_ms,
        }
    }

    /// Checks the fields that do not depend on the model; `key` is the record key, if any.
    pub fn validate(
        &self,
        event: &Event,
        key: Option<&[u8]>,
        now_ms: i64,
    ) -> Result<(), Rejection> {
        for (field, value) in [
            ("event_id", &event.event_id),
            ("user_id", &event.user_id),
            ("item_id", &event.item_id),
            ("event_type", &event.event_type),
        ] {
            check_id(field, value)?;
        }
        if !event.request_id.is_empty() {
            check_id("request_id", &event.request_id)?;
        }
        check_key(key, &event.user_id, "event")?;
        if !self.weights.contains_key(&event.event_type) && !self.is_negative(event) {
            return Err(Rejection::of_field(
                RejectReason::UnknownEventType,
                "event_type",
                format!(
                    "`event_type` {:?} has no weight in offline.features.event_weights (nor is it one of feedback.negative_event_types with feedback enabled)",
                    event.event_type
                ),
            ));
        }
        if !event.value.is_finite() {
            return Err(Rejection::of_field(
                RejectReason::MissingField,
                "value",
                "`value` is not a finite number",
            ));
        }
        self.check_time("ts", event.ts, now_ms)
    }

    /// Checks a record's time (`field` names it): present, and within the allowed skew.
    pub fn check_time(&self, field: &str, ts: i64, now_ms: i64) -> Result<(), Rejection> {
        if ts == 0 {
            return Err(Rejection::of_field(
                RejectReason::MissingField,
                field,
                format!("`{field}` is missing (0)"),
            ));
        }
        if ts > now_ms.saturating_add(self.max_future_skew_ms) {
            return Err(Rejection::of_field(
                RejectReason::TimestampSkew,
                field,
                format!(
                    "`{field}` {} is {} ms in the future, more than nearline.max_future_skew_ms = {}",
                    ts,
                    ts - now_ms,
                    self.max_future_skew_ms
                ),
            ));
        }
        if ts < now_ms.saturating_sub(self.max_past_skew_ms) {
            return Err(Rejection::of_field(
                RejectReason::TimestampSkew,
                field,
                format!(
                    "`{field}` {} is {} ms in the past, more than nearline.max_past_skew_ms = {}",
                    ts,
                    now_ms - ts,
                    self.max_past_skew_ms
                ),
            ));
        }
        Ok(())
    }

    /// Whether the event is an explicit negative (`thumbs_down`, `not_interested`): it hides the
    /// item instead of entering the history.
    pub fn is_negative(&self, event: &Event) -> bool {
        self.negative_types.contains(&event.event_type)
    }

    /// Whether the event is a positive one: it enters the history with a strength above 0 (and
    /// answers the impressions of its item).
    pub fn is_positive(&self, event: &Event) -> bool {
        !self.is_negative(event) && self.strength(event) > 0.0
    }

    /// The interaction strength the event adds, as the offline training table computes it (the
    /// event type's weight; a rating below the threshold adds 0). Time decay is the offline job's
    /// business: it is applied when a model is trained, not per event.
    pub fn strength(&self, event: &Event) -> f32 {
        let weight = self.weights.get(&event.event_type).copied().unwrap_or(0.0);
        if event.event_type == self.rating_event_type && event.value < self.rating_threshold {
            0.0
        } else {
            weight as f32
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event() -> Event {
        Event {
            event_id: "e1".into(),
            user_id: "u1".into(),
            item_id: "i1".into(),
            event_type: "play".into(),
            value: 0.0,
            ts: 1_700_000_000_000,
            request_id: String::new(),
        }
    }

    fn rules() -> EventRules {
        EventRules::from_config(&Config::default())
    }

    #[test]
    fn both_encodings_decode_to_the_same_event() {
        let e = event();
        assert_eq!(
            decode(Some(&e.to_protobuf()), Some(CONTENT_TYPE_PROTOBUF)),
            Ok(e.clone())
        );
        assert_eq!(
            decode(Some(&e.to_json()), Some(CONTENT_TYPE_JSON)),
            Ok(e.clone())
        );
        // Without the header the encoding is recognised.
        assert_eq!(decode(Some(&e.to_json()), None), Ok(e.clone()));
        assert_eq!(decode(Some(&e.to_protobuf()), None), Ok(e));
    }

    #[test]
    fn garbage_is_undecodable_with_the_reason() {
        let r = decode(Some(b"{not json"), Some(CONTENT_TYPE_JSON)).unwrap_err();
        assert_eq!(r.reason, RejectReason::Undecodable);
        assert!(r.detail.starts_with("JSON"), "{r}");
        let r = decode(Some(&[0xff, 0xff, 0xff]), Some(CONTENT_TYPE_PROTOBUF)).unwrap_err();
        assert_eq!(r.reason, RejectReason::Undecodable);
        let r = decode(Some(b"x"), Some("text/csv")).unwrap_err();
        assert!(r.detail.contains("text/csv"), "{r}");
        assert_eq!(
            decode(None, None).unwrap_err().reason,
            RejectReason::Undecodable
        );
        // An unknown JSON field is refused rather than ignored.
        let r = decode(
            Some(br#"{"event_id":"e","user_id":"u","item_id":"i","event_type":"play","ts":1,"usr":"x"}"#),
            None,
        )
        .unwrap_err();
        assert!(r.detail.contains("usr"), "{r}");
        // Attribution is optional and kept when given.
        let attributed = decode(
            Some(br#"{"event_id":"e","user_id":"u","item_id":"i","event_type":"play","ts":1,"request_id":"abc"}"#),
            None,
        )
        .unwrap();
        assert_eq!(attributed.request_id, "abc");
        assert!(!String::from_utf8(event().to_json())
            .unwrap()
            .contains("request_id"));
    }

    #[test]
    fn validation_names_the_field() {
        let now = 1_700_000_000_000;
        let rules = rules();
        assert_eq!(rules.validate(&event(), Some(b"u1"), now), Ok(()));
        let cases: Vec<(Event, Option<&[u8]>, RejectReason, &str)> = vec![
            (
                Event {
                    event_id: "".into(),
                    ..event()
                },
                None,
                RejectReason::MissingField,
                "event_id",
            ),
            (
                Event {
                    item_id: "".into(),
                    ..event()
                },
                None,
                RejectReason::MissingField,
                "item_id",
            ),
            (
                Event {
                    user_id: " u".into(),
                    ..event()
                },
                None,
                RejectReason::InvalidId,
                "user_id",
            ),
            (event(), Some(b"u2"), RejectReason::KeyMismatch, "u2"),
            (
                Event {
                    event_type: "buy".into(),
                    ..event()
                },
                None,
                RejectReason::UnknownEventType,
                "buy",
            ),
            (
                Event {
                    ts: now + 3_600_000,
                    ..event()
                },
                None,
                RejectReason::TimestampSkew,
                "future",
            ),
            (
                Event {
                    ts: now - 400 * 86_400_000,
                    ..event()
                },
                None,
                RejectReason::TimestampSkew,
                "past",
            ),
            (
                Event { ts: 0, ..event() },
                None,
                RejectReason::MissingField,
                "ts",
            ),
            (
                Event {
                    request_id: "a\nb".into(),
                    ..event()
                },
                None,
                RejectReason::InvalidId,
                "request_id",
            ),
        ];
        for (e, key, reason, needle) in cases {
            let r = rules.validate(&e, key, now).unwrap_err();
            assert_eq!(r.reason, reason, "{e:?}");
            assert!(r.detail.contains(needle), "{r} should mention {needle}");
            // A field's rejection names it (and its text starts with it); a key's, none.
            match (&r.field, reason) {
                (None, RejectReason::KeyMismatch) => {}
                (Some(field), _) => assert!(r.detail.starts_with(&format!("`{field}`")), "{r}"),
                (None, _) => panic!("{r} names no field"),
            }
        }
    }

    #[test]
    fn strengths_follow_the_training_table() {
        let rules = rules();
        assert_eq!(rules.strength(&event()), 1.0);
        let click = Event {
            event_type: "click".into(),
            ..event()
        };
        assert_eq!(rules.strength(&click), 0.25);
        let good = Event {
            event_type: "rating".into(),
            value: 4.5,
            ..event()
        };
        let bad = Event {
            event_type: "rating".into(),
            value: 2.0,
            ..event()
        };
        assert_eq!(rules.strength(&good), 1.0);
        assert_eq!(rules.strength(&bad), 0.0);
    }

    proptest::proptest! {
        /// Fuzzing the decoder: any bytes under any content type are an event or a rejection
        /// with a reason — never a panic. `PROPTEST_CASES=1000000` runs it longer.
        #[test]
        fn fuzz_decode_never_panics(
            payload in proptest::collection::vec(proptest::num::u8::ANY, 0..512),
            content_type in proptest::option::of(proptest::sample::select(vec![
                "application/json", "application/x-protobuf", "text/plain", "",
                "application/json; charset=utf-8",
            ])),
        ) {
            if let Err(r) = decode(Some(&payload), content_type) {
                proptest::prop_assert!(!r.reason.name().is_empty());
            }
        }

        /// Valid events survive both encodings, and the rules accept or reject them without
        /// panicking whatever the field values.
        #[test]
        fn fuzz_events_round_trip_and_validate(
            user in "[ -~]{0,300}",
            item in "\\PC{0,40}",
            event_type in "[a-z_]{0,12}",
            value in proptest::num::f64::ANY,
            ts in proptest::num::i64::ANY,
            request_id in "[0-9a-f]{0,32}",
        ) {
            let e = Event { event_id: "e".into(), user_id: user, item_id: item, event_type, value, ts, request_id };
            for (bytes, content_type) in [
                (e.to_protobuf(), CONTENT_TYPE_PROTOBUF),
                (e.to_json(), CONTENT_TYPE_JSON),
            ] {
                match decode(Some(&bytes), Some(content_type)) {
                    Ok(back) => {
                        let _ = rules().validate(&back, Some(back.user_id.as_bytes()), 1_700_000_000_000);
                        proptest::prop_assert_eq!(&back.user_id, &e.user_id);
                    }
                    Err(r) => proptest::prop_assert!(!r.detail.is_empty()),
                }
            }
        }
    }
}
