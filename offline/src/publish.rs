//! Where a train run publishes: a model root on a filesystem (file lock, rename) or on object
//! storage (lease, upload, compare-and-swap of `CURRENT`).
//!
//! On object storage the version is first written and committed in a local staging root, exactly
//! as on a filesystem, then uploaded; the lease is renewed in the background while the job
//! trains, and released when the destination is dropped (a crashed job's lease expires after
//! `model.lease_seconds`).

use std::sync::Arc;
use std::time::Duration;

use recsys_shared::artifact::{Lease, Manifest, ModelRoot, RemoteModelRoot, WriterLock};
use recsys_shared::config::ModelConfig;
use recsys_shared::object_storage::{is_remote, RemoteLocation};
use recsys_shared::SharedError;

use crate::{OfflineError, Result};

/// A model root opened for writing.
pub enum Destination {
    Local { root: ModelRoot, lock: WriterLock },
    Remote(Box<RemoteDestination>),
}

/// An object-storage root with this process's lease, and the local root versions are staged in.
pub struct RemoteDestination {
    remote: RemoteModelRoot,
    lease: Arc<tokio::sync::Mutex<Option<Lease>>>,
    staging: ModelRoot,
    staging_lock: WriterLock,
    _staging_dir: tempfile::TempDir,
    renewal: tokio::task::JoinHandle<()>,
    runtime: tokio::runtime::Runtime,
}

impl Destination {
    /// Opens `config.root` for writing: takes the file lock or the lease. Fails at once when
    /// another writer holds it.
    pub fn open(config: &ModelConfig) -> Result<Destination> {
        let text = config.root.to_string_lossy();
        if !is_remote(&text) {
            let root = ModelRoot::new(&config.root);
            let lock = root.lock()?;
            return Ok(Destination::Local { root, lock });
        }
        let remote = RemoteModelRoot::new(RemoteLocation::parse(&text)?);
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .map_err(|e| OfflineError::Usage(format!("cannot start the storage runtime: {e}")))?;
        let ttl = Duration::from_secs(config.lease_seconds);
        let lease = runtime.block_on(remote.lease(ttl))?;
        let lease = Arc::new(tokio::sync::Mutex::new(Some(lease)));
        let renewal = runtime.spawn(renew_every(remote.clone(), lease.clone(), ttl / 3));
        let staging_dir = tempfile::Builder::new()
            .prefix("recsys-publish-")
            .tempdir()
            .map_err(|e| SharedError::io(std::env::temp_dir(), e))?;
        let staging = ModelRoot::new(staging_dir.path());
        let staging_lock = staging.lock()?;
        Ok(Destination::Remote(Box::new(RemoteDestination {
            remote,
            lease,
            staging,
            staging_lock,
            _staging_dir: staging_dir,
            renewal,
            runtime,
        })))
    }

    /// The local root a version is written and committed in, and its lock.
    pub fn staging(&self) -> (&ModelRoot, &WriterLock) {
        match self {
            Destination::Local { root, lock } => (root, lock),
            Destination::Remote(r) => (&r.staging, &r.staging_lock),
        }
    }

    /// The current version's manifest; its files are checked on a filesystem, not on object
    /// storage (that would mean downloading them; readers check them).
    pub fn current(&self) -> std::result::Result<Option<Manifest>, SharedError> {
        match self {
            Destination::Local { root, .. } => root.current(),
            Destination::Remote(r) => r.runtime.block_on(r.remote.current()),
        }
    }

    /// Makes the committed `version` current and prunes to `keep` versions. Returns the pruned
    /// versions.
    pub fn publish(&mut self, version: &str, keep: usize) -> Result<Vec<String>> {
        match self {
            Destination::Local { root, lock } => {
                root.set_current(lock, version)?;
                Ok(root.prune(lock, keep)?)
            }
            Destination::Remote(r) => {
                let RemoteDestination {
                    remote,
                    lease,
                    staging,
                    runtime,
                    ..
                } = r.as_mut();
                runtime
                    .block_on(async {
                        let mut lease = held(remote, lease).await?;
                        remote.upload(&mut lease, staging, version).await?;
                        remote.set_current(&mut lease, version).await?;
                        remote.prune(&lease, keep).await
                    })
                    .map_err(Into::into)
            }
        }
    }

    /// Moves `CURRENT` to an existing version. Returns the previous one.
    pub fn rollback(&mut self, to: &str) -> Result<Option<String>> {
        match self {
            Destination::Local { root, lock } => Ok(root.rollback(lock, to)?),
            Destination::Remote(r) => {
                let RemoteDestination {
                    remote,
                    lease,
                    runtime,
                    ..
                } = r.as_mut();
                runtime
                    .block_on(async {
                        let mut lease = held(remote, lease).await?;
                        remote.rollback(&mut lease, to).await
                    })
                    .map_err(Into::into)
            }
        }
    }

    /// Where the root is, for messages.
    pub fn display(&self) -> String {
        match self {
            Destination::Local { root, .. } => root.path().display().to_string(),
            Destination::Remote(r) => r.remote.url().to_string(),
        }
    }
}

/// The lease, locked; an error naming the root when it was lost while the job ran.
async fn held<'a>(
    remote: &RemoteModelRoot,
    lease: &'a tokio::sync::Mutex<Option<Lease>>,
) -> std::result::Result<tokio::sync::MappedMutexGuard<'a, Lease>, SharedError> {
    tokio::sync::MutexGuard::try_map(lease.lock().await, |held| held.as_mut()).map_err(|_| {
        SharedError::ModelRoot {
            root: remote.url().into(),
            problem: "the writer lease was lost while the job ran (it expired and another writer may hold it); nothing was changed".into(),
        }
    })
}

/// Renews the lease every `every`; on failure drops it, so the publish refuses.
async fn renew_every(
    remote: RemoteModelRoot,
    lease: Arc<tokio::sync::Mutex<Option<Lease>>>,
    every: Duration,
) {
    let mut tick = tokio::time::interval(every.max(Duration::from_secs(1)));
    tick.tick().await;
    loop {
        tick.tick().await;
        let mut guard = lease.lock().await;
        let Some(held) = guard.as_mut() else { return };
        if let Err(e) = remote.renew(held).await {
            tracing::error!(root = %remote.url(), error = %e, "cannot renew the writer lease");
            if matches!(e, SharedError::ModelRoot { .. }) {
                *guard = None;
                return;
            }
        }
    }
}

impl Drop for RemoteDestination {
    fn drop(&mut self) {
        self.renewal.abort();
        let lease = self.lease.clone();
        let remote = self.remote.clone();
        let released = self.runtime.block_on(async move {
            match lease.lock().await.take() {
                Some(lease) => remote.release(lease).await,
                None => Ok(()),
            }
        });
        if let Err(e) = released {
            tracing::warn!(root = %self.remote.url(), error = %e,
                "cannot release the writer lease; it expires by itself");
        }
    }
}
