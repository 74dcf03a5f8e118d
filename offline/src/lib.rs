//! # recsys-offline
//!
//! The offline tier: scheduled batch jobs that turn the interaction log into a published model.
//!
//! ```text
//! interactions.parquet ─┐   input (validate)   features (DataFusion SQL)   als (iALS + CG)
//! items.parquet ────────┴──────────────────────▶ training table ─────────▶ factors
//!                                                      │                      │
//!                                               evaluate (fold-in)      publish (artifact,
//!                                                      └──── metrics ───▶ gate, CURRENT)
//! ```
//!
//! It owns: reading and validating the input tables, the SQL feature jobs, training, evaluation,
//! hyper-parameter tuning, the evaluation report, the publish gate, the importers and the
//! synthetic generator, and the take-rate report of a live experiment
//! over archived impressions and events ([`experiment_report`]). On the local engine the built-in
//! feature queries run as Rust ([`coded_jobs`]) over integer-coded ids ([`id_codes`]), with the
//! SQL's semantics; replaced queries and the Ballista cluster run the SQL.
//!
//! Inputs and the model root may be on object storage (`s3://`, `gs://`, `az://`): inputs are
//! copied to a scratch directory ([`input`]), versions are published through a lease and a
//! compare-and-swap of `CURRENT` ([`publish`]).
//!
//! It must not: serve requests, consume streams, or write a model root except through
//! [`recsys_shared::artifact::ModelRoot`] / [`recsys_shared::artifact::RemoteModelRoot`] (so every
//! publish is atomic and locked).

pub mod benchmark_split;
pub mod coded_jobs;
pub mod engine;
mod error;
pub mod evaluate;
pub mod experiment_report;
pub mod family;
pub mod family_search;
pub mod feature_tables;
pub mod features;
pub mod id_codes;
pub mod input;
pub mod metrics;
pub mod movielens;
pub mod publish;
pub mod report;
pub use recsys_shared::progress;
pub mod synth;
pub mod tables;
pub mod train;
pub mod tuning;

pub use error::{OfflineError, Result};
