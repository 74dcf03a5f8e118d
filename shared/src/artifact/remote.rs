//! A model root on object storage: the same layout as on a filesystem, published safely without
//! rename or file locks.
//!
//! ```text
//! s3://bucket/models/
//!   CURRENT                  one line: the version readers use; replaced only by compare-and-swap
//!   .lease                   the writer lease: holder, expiry (JSON)
//!   <version>/<table>.parquet, …, manifest.json (uploaded last)
//! ```
//!
//! - **Writer lease.** A writer creates `.lease` with `If-None-Match: *`; if one exists and has
//!   expired it is taken over with `If-Match` on its ETag, so of two writers at most one holds it.
//!   The holder renews it (again with `If-Match`) before each step, and a writer that finds its
//!   lease taken stops without touching `CURRENT`.
//! - **Publish.** Every file of the version is uploaded under `<version>/`, the manifest last: a
//!   version without a manifest does not exist for readers, and the next lease holder deletes it.
//!   `CURRENT` is then replaced with `If-Match` on the ETag it had when the lease was taken
//!   (`If-None-Match: *` for the first publish), so even a writer whose lease silently expired
//!   cannot overwrite a publish it did not see.
//! - **Readers** ([`ModelMirror`]) poll `CURRENT`, download a new version into a local model root
//!   (the cache), check every file's size and sha256 against the manifest, and only then move the
//!   cache's `CURRENT`; the tiers load from the cache exactly as from a local root.
//!
//! The guarantees rest on the store deciding conditional writes atomically (AWS S3, GCS, Azure
//! Blob, MinIO, Cloudflare R2 do). The S3 server the tests use, `s3s-fs`, checks the condition
//! and then writes without a lock between the two, so two writers whose requests arrive within
//! the same millisecond could both pass it there.

use std::path::Path;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::files;
use super::follower::{CurrentFollower, LoadFailure};
use super::manifest::Manifest;
use super::root::{failpoint, hash_file, parse_manifest, ModelRoot};
use crate::object_storage::{Conditional, ObjectVersion, RemoteLocation};
use crate::{Result, SharedError};

const CURRENT: &str = "CURRENT";
const LEASE: &str = ".lease";

/// A directory of model versions in a bucket.
#[derive(Debug, Clone)]
pub struct RemoteModelRoot {
    location: RemoteLocation,
}

/// Proof that this process is the remote root's one writer until `expires_at`.
#[derive(Debug)]
pub struct Lease {
    holder: String,
    ttl: Duration,
    /// The lease object's version, for renewing it with `If-Match`.
    object: ObjectVersion,
    /// `CURRENT`'s version when the lease was taken (or last replaced by this writer); `None`
    /// when there was none.
    current: Option<ObjectVersion>,
}

#[derive(Debug, Serialize, Deserialize)]
struct LeaseRecord {
    holder: String,
    acquired_at: DateTime<Utc>,
    expires_at: DateTime<Utc>,
}

impl Lease {
    fn record(&self) -> Vec<u8> {
        let now = Utc::now();
        let record = LeaseRecord {
            holder: self.holder.clone(),
            acquired_at: now,
            expires_at: now
                + chrono::Duration::from_std(self.ttl).unwrap_or(chrono::Duration::hours(1)),
        };
        serde_json::to_vec(&record).expect("lease serialises")
    }
}

impl RemoteModelRoot {
    pub fn new(location: RemoteLocation) -> Self {
        RemoteModelRoot { location }
    }

    /// The root's URL.
    pub fn url(&self) -> &str {
        self.location.url()
    }

    fn error(&self, problem: impl Into<String>) -> SharedError {
        SharedError::ModelRoot {
            root: self.url().into(),
            problem: problem.into(),
        }
    }

    fn artifact_error(&self, version: &str, problem: impl Into<String>) -> SharedError {
        SharedError::Artifact {
            root: self.url().into(),
            version: version.to_string(),
            problem: problem.into(),
        }
    }

    /// Takes the writer lease for `ttl`. Fails at once when another writer holds an unexpired one.
    pub async fn lease(&self, ttl: Duration) -> Result<Lease> {
        let holder = format!(
            "{}:{}:{:08x}",
            std::env::var("HOSTNAME").unwrap_or_else(|_| "host".into()),
            std::process::id(),
            rand::random::<u32>()
        );
        let mut lease = Lease {
            holder,
            ttl,
            object: ObjectVersion {
                e_tag: None,
                version: None,
            },
            current: None,
        };
        // Two rounds: the second covers a lease deleted between our create and our read.
        for _ in 0..2 {
            match self.location.put_if(LEASE, lease.record(), None).await? {
                Conditional::Written(object) => {
                    lease.object = object;
                    lease.current = self.location.head(CURRENT).await?.map(|(_, v)| v);
                    return Ok(lease);
                }
                Conditional::Lost => {}
            }
            let Some((bytes, object)) = self.location.get(LEASE).await? else {
                continue;
            };
            let held: Option<LeaseRecord> = serde_json::from_slice(&bytes).ok();
            if let Some(held) = &held {
                if held.expires_at > Utc::now() {
                    return Err(self.error(format!(
                        "another writer ({}) holds the lease until {}; wait for it to finish",
                        held.holder,
                        held.expires_at.to_rfc3339()
                    )));
                }
            }
            tracing::warn!(root = %self.url(), previous = ?held.map(|h| h.holder),
                "taking over an expired (or unreadable) writer lease");
            match self
                .location
                .put_if(LEASE, lease.record(), Some(object))
                .await?
            {
                Conditional::Written(object) => {
                    lease.object = object;
                    lease.current = self.location.head(CURRENT).await?.map(|(_, v)| v);
                    return Ok(lease);
                }
                Conditional::Lost => {
                    return Err(self.error("another writer took the expired lease first"));
                }
            }
        }
        Err(self.error("the writer lease keeps changing; another writer is active"))
    }

    /// Extends the lease; fails when it was lost (expired and taken over).
    pub async fn renew(&self, lease: &mut Lease) -> Result<()> {
        match self
            .location
            .put_if(LEASE, lease.record(), Some(lease.object.clone()))
            .await?
        {
            Conditional::Written(object) => {
                lease.object = object;
                Ok(())
            }
            Conditional::Lost => Err(self.error(
                "this writer's lease expired and another writer took it; nothing was published",
            )),
        }
    }

    /// Gives the lease up (when it is still ours).
    pub async fn release(&self, lease: Lease) -> Result<()> {
        if let Some((_, object)) = self.location.get(LEASE).await? {
            if object.e_tag == lease.object.e_tag {
                self.location.delete(LEASE).await?;
            }
        }
        Ok(())
    }

    /// The version `CURRENT` names, if any.
    pub async fn current_version(&self) -> Result<Option<String>> {
        let Some((bytes, _)) = self.location.get(CURRENT).await? else {
            return Ok(None);
        };
        let version = String::from_utf8_lossy(&bytes).trim().to_string();
        if version.is_empty() {
            return Err(self.error("CURRENT is empty"));
        }
        Ok(Some(version))
    }

    /// Reads a version's manifest (its files are not checked).
    pub async fn manifest(&self, version: &str) -> Result<Manifest> {
        let name = format!("{version}/{}", files::MANIFEST);
        let Some((bytes, _)) = self.location.get(&name).await? else {
            return Err(self.artifact_error(version, "no such version"));
        };
        parse_manifest(&String::from_utf8_lossy(&bytes), version)
            .map_err(|problem| self.artifact_error(version, problem))
    }

    /// The manifest of the current version, if any (its files are not checked).
    pub async fn current(&self) -> Result<Option<Manifest>> {
        match self.current_version().await? {
            Some(version) => self.manifest(&version).await.map(Some),
            None => Ok(None),
        }
    }

    /// Checks that every file the manifest lists is there with its size (a HEAD per file; the
    /// sha256 is checked by every reader after download).
    pub async fn check_sizes(&self, version: &str) -> Result<Manifest> {
        let manifest = self.manifest(version).await?;
        for (name, entry) in &manifest.files {
            match self.location.head(&format!("{version}/{name}")).await? {
                Some((bytes, _)) if bytes == entry.bytes => {}
                Some((bytes, _)) => {
                    return Err(self.artifact_error(
                        version,
                        format!(
                            "{name}: {bytes} bytes where the manifest says {}",
                            entry.bytes
                        ),
                    ))
                }
                None => return Err(self.artifact_error(version, format!("{name} is missing"))),
            }
        }
        Ok(manifest)
    }

    /// Every version directory (hidden names like `.lease` excluded), oldest first, with whether
    /// its manifest is there (a version without one is an upload in progress or crashed).
    async fn version_dirs(&self) -> Result<Vec<(String, bool)>> {
        let mut dirs = Vec::new();
        for dir in self.location.list_dirs().await? {
            if dir.starts_with('.') {
                continue;
            }
            let complete = self
                .location
                .head(&format!("{dir}/{}", files::MANIFEST))
                .await?
                .is_some();
            dirs.push((dir, complete));
        }
        Ok(dirs)
    }

    /// Every object of a version with its size, and the manifest's ETag: what changes when the
    /// version's files are replaced (the follower's fingerprint).
    pub(crate) async fn version_objects(&self, version: &str) -> Result<Vec<String>> {
        let dir = self.location.join(version);
        let mut print: Vec<String> = dir
            .list()
            .await?
            .into_iter()
            .map(|(name, size)| format!("{name} {size}"))
            .collect();
        if let Some((_, etag)) = dir.head(files::MANIFEST).await? {
            print.push(format!("manifest {:?}", etag.e_tag));
        }
        print.sort();
        Ok(print)
    }

    /// Published versions (those with a manifest), oldest first.
    pub async fn versions(&self) -> Result<Vec<String>> {
        Ok(self
            .version_dirs()
            .await?
            .into_iter()
            .filter_map(|(dir, complete)| complete.then_some(dir))
            .collect())
    }

    /// Deletes versions a crashed writer left without a manifest. Only a lease holder may.
    async fn remove_incomplete(&self, _lease: &Lease, keep: &str) -> Result<()> {
        for (dir, complete) in self.version_dirs().await? {
            if !complete && dir != keep {
                tracing::warn!(root = %self.url(), version = %dir,
                    "removing a crashed writer's incomplete upload");
                self.location.delete_all(&dir).await?;
            }
        }
        Ok(())
    }

    /// Uploads the committed local version `version` of `local`: every file, then the manifest.
    /// `CURRENT` is not touched.
    pub async fn upload(&self, lease: &mut Lease, local: &ModelRoot, version: &str) -> Result<()> {
        let manifest = local.verify(version)?;
        self.renew(lease).await?;
        self.remove_incomplete(lease, version).await?;
        let dir = local.version_dir(version);
        for (i, name) in manifest.files.keys().enumerate() {
            self.location
                .upload(&dir.join(name), &format!("{version}/{name}"))
                .await?;
            if i == 0 {
                failpoint("remote-publish-mid-upload");
            }
        }
        self.renew(lease).await?;
        self.location
            .upload(
                &dir.join(files::MANIFEST),
                &format!("{version}/{}", files::MANIFEST),
            )
            .await?;
        Ok(())
    }

    /// Points `CURRENT` at `version` (after checking its files are all there), by
    /// compare-and-swap against the `CURRENT` this lease last saw.
    pub async fn set_current(&self, lease: &mut Lease, version: &str) -> Result<()> {
        self.check_sizes(version).await?;
        self.renew(lease).await?;
        let line = format!("{version}\n").into_bytes();
        match self
            .location
            .put_if(CURRENT, line, lease.current.clone())
            .await?
        {
            Conditional::Written(object) => {
                lease.current = Some(object);
                Ok(())
            }
            Conditional::Lost => {
                let now = self.current_version().await.ok().flatten();
                Err(self.error(format!(
                    "CURRENT changed since this writer took its lease (it now names {}); another writer published, so {version} was not made current",
                    now.as_deref().unwrap_or("nothing")
                )))
            }
        }
    }

    /// Moves `CURRENT` to an existing version. Returns the previous one.
    pub async fn rollback(&self, lease: &mut Lease, to: &str) -> Result<Option<String>> {
        let previous = self.current_version().await?;
        self.set_current(lease, to).await?;
        Ok(previous)
    }

    /// Deletes the oldest versions beyond `keep`, never the current one; each loses its manifest
    /// first, so a reader never finds a partly deleted version.
    pub async fn prune(&self, _lease: &Lease, keep: usize) -> Result<Vec<String>> {
        let current = self.current_version().await?;
        let versions = self.versions().await?;
        let excess = versions.len().saturating_sub(keep.max(1));
        let mut removed = Vec::new();
        for version in versions.into_iter().take(excess) {
            if Some(&version) == current.as_ref() {
                continue;
            }
            self.location
                .delete(&format!("{version}/{}", files::MANIFEST))
                .await?;
            self.location.delete_all(&version).await?;
            removed.push(version);
        }
        Ok(removed)
    }

    /// Downloads `version` into the local root `cache` (staged, checked file by file against the
    /// manifest's sha256, then committed). Nothing is visible in `cache` unless every file matched.
    pub async fn download(&self, version: &str, cache: &ModelRoot) -> Result<Manifest> {
        let manifest = self.manifest(version).await?;
        if cache.version_dir(version).exists() {
            return cache.verify(version);
        }
        let lock = cache.lock()?;
        let staged = cache.stage(&lock, version)?;
        for (name, entry) in &manifest.files {
            let path = staged.path(name);
            self.location
                .download(&format!("{version}/{name}"), &path)
                .await?;
            let actual = hash_file(&path)?;
            if actual != *entry {
                return Err(self.artifact_error(
                    version,
                    format!(
                        "{name}: downloaded sha256 {} ({} bytes) does not match the manifest's {} ({} bytes)",
                        actual.sha256, actual.bytes, entry.sha256, entry.bytes
                    ),
                ));
            }
        }
        staged.commit(manifest.clone())
    }
}

/// Keeps a local model root (the cache) in step with a remote one, for the servers and workers:
/// each [`ModelMirror::sync`] follows the remote `CURRENT` by the one policy of
/// [`CurrentFollower`] (a version that fails verification is refused until its objects change,
/// and the newest intact version before it is mirrored meanwhile), downloads and verifies the
/// version and moves the cache's `CURRENT`.
pub struct ModelMirror {
    follower: CurrentFollower<RemoteModelRoot>,
    cache: ModelRoot,
    keep: usize,
}

impl ModelMirror {
    pub fn new(remote: RemoteModelRoot, cache: impl AsRef<Path>, keep: usize) -> Self {
        ModelMirror {
            follower: CurrentFollower::new(remote),
            cache: ModelRoot::new(cache.as_ref()),
            keep,
        }
    }

    /// The local root the tiers load from.
    pub fn cache(&self) -> &ModelRoot {
        &self.cache
    }

    fn remote(&self) -> &RemoteModelRoot {
        self.follower.source()
    }

    /// One poll. Returns the version newly made current in the cache, if any; an error when the
    /// remote root could not be read or a version was refused.
    pub async fn sync(&mut self) -> Result<Option<String>> {
        let cached = match self.cache.current_version() {
            Ok(v) => v,
            Err(SharedError::Io { .. }) => None,
            Err(e) => return Err(e),
        };
        let (remote, cache) = (self.remote().clone(), self.cache.clone());
        let poll = self
            .follower
            .poll(cached.as_deref(), |version| {
                let (remote, cache) = (remote.clone(), cache.clone());
                async move {
                    // A version the cache already holds intact (a rollback) is not fetched again.
                    if cache.verify(&version).is_ok() {
                        return Ok(());
                    }
                    match remote.download(&version, &cache).await {
                        Ok(_) => Ok(()),
                        Err(e @ SharedError::Artifact { .. }) => Err(LoadFailure::Refused(e)),
                        Err(e) => Err(LoadFailure::Unavailable(e)),
                    }
                }
            })
            .await;
        let Some(followed) = poll.followed else {
            return match poll.load_error.or(poll.source_error) {
                Some(e) => Err(e),
                None => Ok(None),
            };
        };
        let version = followed.version;
        let lock = self.cache.lock()?;
        self.cache.set_current(&lock, &version)?;
        let removed = self.cache.prune(&lock, self.keep)?;
        tracing::info!(%version, root = %self.remote().url(), cache = %self.cache.path().display(),
            ?removed, fallback = followed.fallback, "model version mirrored from object storage");
        Ok(Some(version))
    }
}

/// Mirror polls by outcome (`changed`, `unchanged`, `failed`).
static MIRROR_SYNCS: std::sync::LazyLock<prometheus::IntCounterVec> =
    std::sync::LazyLock::new(|| {
        prometheus::register_int_counter_vec!(
            "recsys_model_mirror_syncs_total",
            "Polls of an object-storage model root by outcome (changed, unchanged, failed)",
            &["outcome"]
        )
        .expect("registers once")
    });

impl ModelMirror {
    /// One poll, counted and logged; never fails (the cache keeps what it has).
    pub async fn poll(&mut self) {
        match self.sync().await {
            Ok(Some(_)) => MIRROR_SYNCS.with_label_values(&["changed"]).inc(),
            Ok(None) => MIRROR_SYNCS.with_label_values(&["unchanged"]).inc(),
            Err(e) => {
                MIRROR_SYNCS.with_label_values(&["failed"]).inc();
                tracing::warn!(root = %self.remote().url(), error = %e,
                    "cannot mirror the model root; serving what the cache holds");
            }
        }
    }

    /// Polls every `every` until the task is dropped or aborted.
    pub fn spawn(mut self, every: Duration) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                self.poll().await;
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkit::S3Server;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn lease_upload_compare_and_swap_prune_and_mirror() {
        let s3 = S3Server::start("models");
        let remote =
            RemoteModelRoot::new(RemoteLocation::parse_with(&s3.url("root"), &s3.env()).unwrap());
        let dir = tempfile::tempdir().unwrap();
        let local = ModelRoot::new(dir.path().join("staging"));
        let (v1, v2) = (
            super::super::root::tests::stage_version(&local, "one"),
            super::super::root::tests::stage_version(&local, "two"),
        );

        let mut lease = remote.lease(Duration::from_secs(60)).await.unwrap();
        let err = remote
            .lease(Duration::from_secs(60))
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("holds the lease until"), "{err}");
        assert!(err.contains("s3://models/root"), "{err}");

        // Nothing is current until CURRENT moves, even with every file uploaded.
        remote.upload(&mut lease, &local, &v1).await.unwrap();
        assert_eq!(remote.current_version().await.unwrap(), None);
        remote.set_current(&mut lease, &v1).await.unwrap();
        assert_eq!(remote.current_version().await.unwrap(), Some(v1.clone()));

        // Another writer moves CURRENT behind this one's back (as one whose lease silently
        // expired would): the compare-and-swap refuses to overwrite it.
        remote.upload(&mut lease, &local, &v2).await.unwrap();
        remote
            .location
            .put(CURRENT, format!("{v2}\n").into_bytes())
            .await
            .unwrap();
        let err = remote
            .set_current(&mut lease, &v1)
            .await
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("CURRENT changed") && err.contains(&v2),
            "{err}"
        );
        assert_eq!(remote.current_version().await.unwrap(), Some(v2.clone()));
        remote.release(lease).await.unwrap();

        // A released lease can be taken; prune keeps the current version.
        let mut lease = remote.lease(Duration::from_secs(60)).await.unwrap();
        assert_eq!(
            remote.versions().await.unwrap(),
            vec![v1.clone(), v2.clone()]
        );
        assert_eq!(remote.prune(&lease, 1).await.unwrap(), vec![v1.clone()]);
        assert_eq!(remote.versions().await.unwrap(), vec![v2.clone()]);
        assert!(
            remote.rollback(&mut lease, &v1).await.is_err(),
            "v1 is gone"
        );

        // A reader mirrors CURRENT into a local cache, verified.
        let cache = dir.path().join("cache");
        let mut mirror = ModelMirror::new(remote.clone(), &cache, 3);
        assert_eq!(mirror.sync().await.unwrap(), Some(v2.clone()));
        assert_eq!(mirror.sync().await.unwrap(), None, "nothing new");
        assert_eq!(
            ModelRoot::new(&cache).current().unwrap().unwrap().version,
            v2
        );
        remote.release(lease).await.unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_expired_lease_is_taken_over_and_a_corrupt_download_is_refused() {
        let s3 = S3Server::start("models");
        let remote =
            RemoteModelRoot::new(RemoteLocation::parse_with(&s3.url("root"), &s3.env()).unwrap());
        let mut stale = remote.lease(Duration::from_secs(1)).await.unwrap();
        tokio::time::sleep(Duration::from_millis(1200)).await;
        let mut lease = remote.lease(Duration::from_secs(60)).await.unwrap();
        let err = remote.renew(&mut stale).await.unwrap_err().to_string();
        assert!(err.contains("another writer took it"), "{err}");

        let dir = tempfile::tempdir().unwrap();
        let local = ModelRoot::new(dir.path().join("staging"));
        let v1 = super::super::root::tests::stage_version(&local, "one");
        remote.upload(&mut lease, &local, &v1).await.unwrap();
        remote.set_current(&mut lease, &v1).await.unwrap();
        // Flip the bytes of one object on the server (same size): readers refuse the version.
        let object = s3.object_file(&format!("root/{v1}/{}", files::ITEMS));
        std::fs::write(&object, "eno").unwrap();
        let cache = dir.path().join("cache");
        let mut mirror = ModelMirror::new(remote.clone(), &cache, 3);
        let err = mirror.sync().await.unwrap_err().to_string();
        assert!(err.contains("does not match the manifest"), "{err}");
        assert_eq!(ModelRoot::new(&cache).current_version().unwrap(), None);
        assert_eq!(mirror.sync().await.unwrap(), None, "not fetched again");
    }
}
