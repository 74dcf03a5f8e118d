//! # recsys-nearline — not built yet
//!
//! The nearline tier will consume member events from Kafka (rdkafka consumer groups), fold each
//! member's whole history into their vector with [`recsys_shared::foldin::FoldIn`] — the function
//! the offline evaluator already uses — and write vector and history to the feature store and
//! cache, at least once and idempotently. Tracked in issue 4; the `recsys nearline` commands say
//! so when run.
//!
//! It must not train models or serve requests, and depends on `recsys-shared` only.
