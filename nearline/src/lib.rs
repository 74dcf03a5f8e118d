//! # recsys-nearline — the streaming workers
//!
//! Members' events arrive on a Kafka topic keyed by member. Each worker of a consumer group takes
//! a batch of records, dead-letters those it cannot apply ([`event`]), folds each member's whole
//! history into a new vector with the offline evaluator's fold-in and writes history, vector and
//! cache ([`apply`]), then commits the batch's offsets ([`worker`]). `recsys nearline produce`
//! sends events from a file ([`produce`]); `recsys nearline archive` writes the events or
//! impressions topic to Parquet for the offline job, exactly once ([`archive`]). Every Kafka
//! client is configured in [`kafka`]. With `feedback` enabled the workers also consume
//! the impressions topic and hide items a member keeps ignoring or turns down ([`feedback`]).
//!
//! This crate owns event decoding and validation, the apply step and the Kafka loop. It must not
//! train models (it loads the published item factors, [`model`]) or serve requests, and depends on
//! `recsys-shared` only. Without a broker, [`local`] feeds records from a channel (the quickstart)
//! through the same admit → apply path.

pub mod apply;
pub mod archive;
pub mod error;
pub mod event;
pub mod feedback;
pub mod kafka;
pub mod local;
pub mod metrics;
pub mod model;
pub mod produce;
pub mod worker;

#[cfg(test)]
mod testing;

pub use error::NearlineError;
