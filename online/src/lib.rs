//! # recsys-online
//!
//! The online tier: the `recsys.v1.Ranking` service the homepage calls on every page load, over
//! gRPC and REST/JSON.
//!
//! - [`catalog`]: the current model held in memory as one immutable value (item factors in one
//!   contiguous matrix, ids, titles, availability, popularity), loaded and validated in the
//!   background when `CURRENT` moves and swapped in atomically; a corrupt version is refused and
//!   the served one kept.
//! - [`scan`]: member vectors scored against the whole catalog in batched passes — requests
//!   queued while a pass runs share the next one (the scoring itself is the model family's, in
//!   `recsys_shared::model`); [`retrieval`]: the approximate alternative, the version's item
//!   index searched inside each request's filter and re-scored exactly, its recall sampled.
//! - [`rpc`]: one file per RPC (`Rank`, `Homepage`, `SimilarItems`), the checks every request
//!   goes through, and the adapter from the ranking's domain error to a gRPC status;
//!   [`member`]: the member's vector (cache → store → fold-in → cold start, degraded when the
//!   store is down), history and hidden items.
//! - [`experiments`]: the experiments file — sticky, stateless allocation of members to variants
//!   that choose a model version, a row recipe and/or the retrieval; the server loads the versions they name.
//! - [`impressions`]: every answer's items logged to Kafka through a bounded queue that drops
//!   (and counts) rather than slow a request.
//! - [`rules`]: business rules after scoring — pin, boost, bury from `online.rules`.
//! - [`admission`]: the tower layer in front of every RPC: deadlines stamped on arrival, a cap on
//!   requests in progress with a bounded queue, load shedding with `RESOURCE_EXHAUSTED` before any
//!   work, and the request metrics; [`auth`]: API keys with per-key RPCs, checked in that layer;
//!   [`connections`]: the cap on open connections.
//! - [`rest`]: the same three RPCs as JSON over HTTP (`online.rest_listen`), through the same
//!   keys, admission and deadlines, and the OpenAPI document; [`ingest`]: a member's events
//!   over REST, checked with the nearline rules and written to the events topic.
//! - [`console`]: the console under `/console` on the REST port — models (promote, roll back),
//!   experiments, member preview and health from an in-process ring buffer — behind the same
//!   keys, with a read-only and an operator role.
//! - [`server`]: wiring with gRPC health and reflection, HTTP/2 limits and keepalive, and
//!   [`metrics`] on HTTP.
//!
//! It must never write model artifacts; the one write to a model root is the console moving
//! `CURRENT` (an operator's promote or roll back, as `recsys offline rollback` does it: under the
//! root's writer lock, or its lease on object storage). It writes to the feature store only when it owns an
//! embedded one (the bulk load of a new model's members). Its writes to Kafka are
//! impressions, which never wait, and the events taken over REST, each acknowledged before it
//! is answered. It depends on `recsys-shared` and the feature store
//! `recsys-store` only, never on another tier.

pub mod admission;
pub mod auth;
pub mod catalog;
pub mod connections;
pub mod console;
pub mod error;
pub mod experiments;
pub mod impressions;
pub mod ingest;
pub mod member;
pub mod metrics;
pub mod rest;
pub mod retrieval;
pub mod rpc;
pub mod rules;
pub mod scan;
pub mod server;

pub use error::OnlineError;
