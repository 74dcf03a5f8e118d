//! The impression record: what one Rank or Homepage answer showed, as the online tier logs it
//! to Kafka (one JSON record per answer, key = the member) and the archive flattens it to Parquet
//! (one row per item shown and experiment). Fields are only ever added.

use serde::{Deserialize, Serialize};

/// One item shown.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImpressedItem {
    /// The row's position on the page (0 for Rank).
    pub row: u32,
    /// `top_picks`, `because_you_watched`, `trending`, or `rank` for a Rank answer.
    pub row_kind: String,
    /// Position within the row.
    pub position: u32,
    pub item_id: String,
}

/// A member's variant in one experiment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImpressedVariant {
    pub experiment: String,
    pub variant: String,
}

/// One answer's impression record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Impression {
    pub request_id: String,
    pub user_id: String,
    /// Milliseconds since the Unix epoch.
    pub ts_ms: i64,
    /// `rank` or `homepage`.
    pub rpc: String,
    pub model_version: String,
    pub experiments: Vec<ImpressedVariant>,
    pub items: Vec<ImpressedItem>,
}
