//! The `recsys` command line: one file per command group (`import`, `offline`, `nearline`,
//! `online`, `ballista`), and the helpers they share (config loading, the runtime, signals, the
//! object-storage model root mirror).

pub(crate) mod ballista;
pub(crate) mod import;
pub(crate) mod nearline;
pub(crate) mod offline;
pub(crate) mod online;

use std::path::Path;

use anyhow::{Context, Result};

use recsys_shared::artifact::{ModelMirror, RemoteModelRoot};
use recsys_shared::config::Config;
use recsys_shared::object_storage::{is_remote, RemoteLocation};

pub(crate) fn load_config(path: Option<&Path>) -> Result<Config> {
    Ok(Config::load(path)?)
}

pub(crate) fn validated(config: Config) -> Result<Config> {
    config
        .validate()
        .map_err(|problem| anyhow::anyhow!("command-line options: {problem}"))?;
    Ok(config)
}

pub(crate) fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

/// Resolves on Ctrl-C or SIGTERM.
pub(crate) async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

/// The remote model root `root` names, if it is an object-storage URL.
pub(crate) fn remote_root(root: &std::path::Path) -> Result<Option<RemoteModelRoot>> {
    let text = root.to_string_lossy();
    if !is_remote(&text) {
        return Ok(None);
    }
    Ok(Some(RemoteModelRoot::new(RemoteLocation::parse(&text)?)))
}

/// When the model root is on object storage: mirrors it into `model.cache_dir` (the first poll
/// now, then every `every`) and points the config at the cache, which the tiers load from as from
/// any local root. The task stops when the handle is dropped.
pub(crate) async fn mirror_remote_root(
    config: &mut Config,
    every: std::time::Duration,
) -> Result<Option<AbortOnDrop>> {
    let Some(remote) = remote_root(&config.model.root)? else {
        return Ok(None);
    };
    tracing::info!(root = %remote.url(), cache = %config.model.cache_dir.display(),
        "model root on object storage; mirroring into the cache");
    let origin = remote.url().to_string();
    let mut mirror = ModelMirror::new(remote, &config.model.cache_dir, config.model.keep_versions);
    mirror.poll().await;
    config.model.mirrored_from = Some(origin);
    config.model.root = config.model.cache_dir.clone();
    Ok(Some(AbortOnDrop(mirror.spawn(every))))
}

/// A background task stopped when this is dropped.
pub(crate) struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
