//! Errors of the shared crate. Every variant carries the file, column or row it concerns so a
//! message can be acted on without a debugger.

use std::path::PathBuf;

/// Result alias of this crate.
pub type Result<T, E = SharedError> = std::result::Result<T, E>;

/// What can go wrong reading config, validating input or reading and writing model artifacts.
#[derive(Debug, thiserror::Error)]
pub enum SharedError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: parquet: {source}")]
    Parquet {
        path: PathBuf,
        #[source]
        source: parquet::errors::ParquetError,
    },
    #[error("{path}: arrow: {source}")]
    Arrow {
        path: PathBuf,
        #[source]
        source: arrow::error::ArrowError,
    },
    /// A column is missing or has the wrong type.
    #[error("{path}: column `{column}`: {problem}")]
    Schema {
        path: PathBuf,
        column: String,
        problem: String,
    },
    /// One row holds a value the platform cannot accept.
    #[error("{path}: row {row} (counting from 0), column `{column}`: {problem}")]
    Row {
        path: PathBuf,
        row: u64,
        column: String,
        problem: String,
    },
    /// The configuration file or an environment override is invalid.
    #[error("config {origin}: {problem}")]
    Config { origin: String, problem: String },
    /// A model version on disk is not usable (bad manifest, checksum mismatch, missing table).
    #[error("model version {version} in {root}: {problem}")]
    Artifact {
        root: PathBuf,
        version: String,
        problem: String,
    },
    /// The model root cannot be used (no current version, locked by another writer, ...).
    #[error("model root {root}: {problem}")]
    ModelRoot { root: PathBuf, problem: String },
    /// Object storage refused or failed an operation on `url` (an `s3://`, `gs://` or `az://`
    /// location; never with credentials in it).
    #[error("{url}: {problem}")]
    ObjectStore { url: String, problem: String },
    /// A training run cannot start with these parameters or resources.
    #[error("{0}")]
    Training(String),
    /// A linear-algebra input was not usable (e.g. not positive definite).
    #[error("numerics: {0}")]
    Numerics(String),
}

impl SharedError {
    /// Wraps an `std::io::Error` with the path it concerns.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        SharedError::Io {
            path: path.into(),
            source,
        }
    }

    /// Wraps a Parquet error with the file it concerns.
    pub fn parquet(path: impl Into<PathBuf>, source: parquet::errors::ParquetError) -> Self {
        SharedError::Parquet {
            path: path.into(),
            source,
        }
    }

    /// Wraps an Arrow error with the file it concerns.
    pub fn arrow(path: impl Into<PathBuf>, source: arrow::error::ArrowError) -> Self {
        SharedError::Arrow {
            path: path.into(),
            source,
        }
    }
}
