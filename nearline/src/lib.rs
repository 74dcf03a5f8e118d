//! # recsys-nearline — the streaming workers
//!
//! Members' events arrive on a Kafka topic keyed by member. Each worker of a consumer group takes
//! a batch of records, dead-letters those it cannot apply ([`event`]), folds each member's whole
//! history into a new vector with the offline evaluator's fold-in and writes history, vector and
//! cache ([`apply`]), then commits the batch's offsets ([`worker`]). `recsys nearline produce`
//! sends events from a file ([`produce`]).
//!
//! This crate owns event decoding and validation, the apply step and the Kafka loop. It must not
//! train models (it loads the published item factors, [`model`]) or serve requests, and depends on
//! `recsys-shared` only. Other event sources (a local file or channel, as the quickstart uses)
//! call [`apply::Applier`] directly: the same code path after decoding.

pub mod apply;
pub mod bench;
pub mod error;
pub mod event;
pub mod metrics;
pub mod model;
pub mod produce;
pub mod worker;

#[cfg(test)]
mod testing;

pub use error::NearlineError;
