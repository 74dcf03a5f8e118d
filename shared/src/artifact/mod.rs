//! The model artifact: what the offline tier publishes and the nearline and online tiers load.
//!
//! ```text
//! <model-root>/
//!   CURRENT                    one line: the version readers should use
//!   .lock                      held by the one writer (train, rollback) at a time
//!   20261122T223015Z-3fa2/     one directory per version, never modified once renamed into place
//!     manifest.json            version, created-at, hyper-parameters, data window, row counts,
//!                              evaluation metrics, sha256 and size of every file below
//!     item_factors.parquet     item_id: Utf8, vector: FixedSizeList<Float32, k>
//!     user_factors.parquet     user_id: Utf8, vector: FixedSizeList<Float32, k>
//!     item_popularity.parquet  item_id: Utf8, members: UInt64, score: Float32
//!     items.parquet            the catalog: item_id, title, genres, available_countries, maturity
//!     user_history.parquet     user_id, item_id, strength: Float32, ts: Timestamp(ms) — each
//!                              member's newest training positives, for the feature store
//! ```
//!
//! A version is written under `.tmp-<version>/`, every file fsynced, the manifest written last, the
//! directory renamed into place and the root fsynced; only then is `CURRENT` replaced, by writing
//! `CURRENT.tmp` and renaming it. A crash at any point leaves `CURRENT` naming a complete version.
//!
//! On object storage ([`RemoteModelRoot`]) the layout is the same; rename and file locks give way
//! to conditional writes (a writer lease, `CURRENT` replaced by compare-and-swap), and readers
//! mirror versions into a local root ([`ModelMirror`]) before loading them.

mod follower;
pub mod item_ids;
mod manifest;
pub mod published;
mod remote;
mod root;
pub mod synthetic;
mod tables;

pub use follower::{CurrentFollower, Followed, LoadFailure, Poll, VersionSource};
pub use item_ids::{ItemIds, Texts};
pub use manifest::{
    ActivityBucket, AlgorithmParams, Curves, DataWindow, Evaluation, FileEntry, IalsRecord,
    Manifest, ModelParams, RowCounts, FORMAT_VERSION,
};
pub use remote::{Lease, ModelMirror, RemoteModelRoot};
pub use root::{ModelRoot, StagedVersion, WriterLock};
pub use tables::{
    read_catalog, read_factor_ids, read_factors, read_history, read_popularity, read_weights,
    write_batches, write_catalog, write_factors, write_history, write_history_rows,
    write_popularity, write_raw_factors, write_weights, writer_properties, CatalogRow, FactorTable,
    HistoryRow, PopularityRow,
};

/// File names inside a version directory.
pub mod files {
    pub const MANIFEST: &str = "manifest.json";
    pub const ITEM_FACTORS: &str = "item_factors.parquet";
    /// iALS: the item factors again as raw little-endian `f32` rows (n × k, in the order of
    /// `item_factors.parquet`), so a server can map them instead of holding them
    /// (`online.item_factors = "mapped"`).
    pub const ITEM_FACTORS_RAW: &str = "item_factors.f32";
    /// iALS, when `[offline.ann_index]` asks for it: the nearest-neighbour index over the item
    /// factors (HNSW graphs per norm range, `model::ials::ann`), for servers with
    /// `online.retrieval = "ann"`.
    pub const ITEM_INDEX: &str = "item_index.ann";
    /// iALS, beside the item index unless `offline.ann_index.similar_items` is off: the same
    /// graphs over the item factors scaled to length 1, whose inner product is the cosine that
    /// `SimilarItems` ranks by.
    pub const SIMILAR_INDEX: &str = "similar_index.ann";
    pub const USER_FACTORS: &str = "user_factors.parquet";
    /// The item × item weights of a history family (EASE, item-kNN).
    pub const ITEM_WEIGHTS: &str = "item_weights.parquet";
    pub const ITEM_POPULARITY: &str = "item_popularity.parquet";
    pub const ITEMS: &str = "items.parquet";
    pub const USER_HISTORY: &str = "user_history.parquet";
}
