//! Errors of the offline tier. Each says which input, file, column or row is at fault.

use std::path::PathBuf;

use recsys_shared::SharedError;

/// Result alias of this crate.
pub type Result<T, E = OfflineError> = std::result::Result<T, E>;

/// What can go wrong in an offline job.
#[derive(Debug, thiserror::Error)]
pub enum OfflineError {
    /// Artifact, config or input-format problems reported by the shared crate.
    #[error(transparent)]
    Shared(#[from] SharedError),
    /// A query failed; `context` says which job and input.
    #[error("{context}: {source}")]
    DataFusion {
        context: String,
        #[source]
        source: datafusion::error::DataFusionError,
    },
    /// The input cannot be used as it is (empty table, unknown event type, …).
    #[error("{path}: {problem}")]
    Input { path: PathBuf, problem: String },
    /// A line of a text input (MovieLens) is malformed.
    #[error("{path}: line {line}: {problem}")]
    Line {
        path: PathBuf,
        line: u64,
        problem: String,
    },
    /// The new model is worse than the current one by more than the gate allows.
    #[error("publish gate: {0}")]
    GateRefused(String),
    /// Arguments that do not fit together.
    #[error("{0}")]
    Usage(String),
    /// A benchmark peer or helper process failed.
    #[error("{0}")]
    Peer(String),
}

impl OfflineError {
    pub(crate) fn datafusion(
        context: impl Into<String>,
    ) -> impl FnOnce(datafusion::error::DataFusionError) -> OfflineError {
        let context = context.into();
        move |source| OfflineError::DataFusion { context, source }
    }

    pub fn input(path: impl Into<PathBuf>, problem: impl Into<String>) -> OfflineError {
        OfflineError::Input {
            path: path.into(),
            problem: problem.into(),
        }
    }
}
