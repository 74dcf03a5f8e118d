//! The event contract as the nearline workers read it from Kafka: the record's `content-type`
//! header here; the event itself, its decoding and its rules are `recsys_shared::event`, which
//! the online tier's REST ingest checks events with too.

pub use recsys_shared::event::{
    check_id, check_key, decode, Event, EventRules, RejectReason, Rejection, CONTENT_TYPE_JSON,
    CONTENT_TYPE_PROTOBUF,
};

/// The `content-type` header of a record, if it has one in UTF-8 (the encoding [`decode`] reads).
pub fn content_type<M: rdkafka::Message>(record: &M) -> Option<&str> {
    use rdkafka::message::Headers;
    record.headers().and_then(|h| {
        h.iter()
            .find(|h| h.key.eq_ignore_ascii_case("content-type"))
            .and_then(|h| h.value)
            .and_then(|v| std::str::from_utf8(v).ok())
    })
}
