//! Errors of the online tier.

use std::path::PathBuf;

/// What can stop the online tier from loading a model or starting.
#[derive(Debug, thiserror::Error)]
pub enum OnlineError {
    #[error(transparent)]
    Shared(#[from] recsys_shared::SharedError),
    #[error(transparent)]
    Store(#[from] recsys_store::StoreError),
    #[error(transparent)]
    Load(#[from] recsys_store::bulk::LoadError),
    #[error("model version {version} is not servable: {problem}")]
    InvalidModel { version: String, problem: String },
    #[error("model root {0}: no model has been published yet (no CURRENT)")]
    NoModel(PathBuf),
    #[error("{what} {addr}: {source}")]
    Listen {
        what: &'static str,
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("gRPC server: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error("{0}")]
    Config(String),
}
