//! # recsys-online — not built yet
//!
//! The online tier will serve the `recsys.v1.Ranking` gRPC API: the current model's item factors in
//! memory (hot-swapped when `CURRENT` moves, read through
//! [`recsys_shared::artifact::ModelRoot`]), member features from the cache and store, whole-catalog
//! scoring. Tracked in issue 3; `recsys online serve` says so when run.
//!
//! It must never write model artifacts, and depends on `recsys-shared` only.
