//! # recsys-shared
//!
//! What every tier of recsys agrees on: the domain types (member and item ids, interactions), the
//! configuration file, the **model artifact** (a versioned directory of Parquet tables plus a
//! manifest, published atomically behind a `CURRENT` pointer, followed by every reader with one
//! policy) and the **model seam** ([`model`]): the families recsys trains and serves, each in one
//! folder with its trainer, member-state update and whole-catalog scorer. For iALS the member
//! update is the fold-in — the exact ALS solve for one member against fixed item factors, used by
//! the offline evaluator, the nearline workers and the online server alike so that all three
//! compute the same vector from the same history.
//!
//! It also holds the protobuf API (`recsys.v1`, in [`proto`]), the impression record
//! ([`impression`]), the operations endpoint
//! ([`ops`]), object storage locations ([`object_storage`]: `s3://`, `gs://`, `az://` through the
//! `object_store` crate), secrets and TLS material ([`secrets`], [`tls`]), the Kafka client
//! properties every tier's clients share ([`kafka`]: resolved settings only, no Kafka client),
//! rate-limited logging ([`logs`]) and third-party decoder panics caught without the hook's noise
//! ([`panics`]).
//! The feature store every tier reads and writes is its own crate, `recsys-store`
//! (`shared/store/`), built on this one.
//!
//! ## Invariants
//! - No tier-specific logic lives here: no DataFusion, no Kafka, no gRPC server (only the generated
//!   message and service types). Tiers depend on
//!   this crate and never on each other.
//! - A reader of a model root never observes a half-written version: [`artifact::ModelRoot`] is the
//!   only code that writes one, and it publishes by rename.
//! - Errors name the file, column and row they concern.

pub mod artifact;
pub mod config;
pub mod error;
pub mod event;
pub mod http_limits;
pub mod ids;
pub mod impression;
pub mod kafka;
pub mod kernels;
pub mod logs;
pub mod memory;
pub mod model;
pub mod object_storage;
pub mod ops;
pub mod panics;
pub mod progress;
pub mod proto;
pub mod rpcs;
pub mod secrets;
pub mod take_rate;
#[cfg(feature = "testkit")]
pub mod testkit;
pub mod tls;

pub use error::{Result, SharedError};
