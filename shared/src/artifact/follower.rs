//! Following `CURRENT`: the one policy every reader of a model root uses (the online server, the
//! nearline workers, the object-storage mirror).
//!
//! - A version that `CURRENT` names and that cannot be loaded (a checksum, a shape, a non-finite
//!   factor) is **refused** and remembered with a fingerprint of its files (names, sizes, times or
//!   ETags); it is tried again as soon as they change (a re-copied file), not at every poll.
//! - While `CURRENT` cannot be loaded, the reader keeps, or **falls back** to, the newest intact
//!   version published before it — never one after it (those may have been rolled back from).
//! - A source that cannot be read (CURRENT unreadable, a network error) changes nothing; the next
//!   poll tries again.
//!
//! What "load" means is the reader's: [`CurrentFollower::poll`] takes it as a closure.

use std::collections::HashMap;
use std::future::Future;

use async_trait::async_trait;

use super::{ModelRoot, RemoteModelRoot};
use crate::error::Result;
use crate::SharedError;

/// Where versions come from: a local model root or an object-storage one.
#[async_trait]
pub trait VersionSource: Send + Sync {
    /// The version `CURRENT` names, if any.
    async fn current_version(&self) -> Result<Option<String>>;
    /// Published versions, oldest first.
    async fn versions(&self) -> Result<Vec<String>>;
    /// What changes when a version's files are replaced.
    async fn fingerprint(&self, version: &str) -> Vec<String>;
    /// The source in logs.
    fn describe(&self) -> String;
}

#[async_trait]
impl VersionSource for ModelRoot {
    async fn current_version(&self) -> Result<Option<String>> {
        ModelRoot::current_version(self)
    }

    async fn versions(&self) -> Result<Vec<String>> {
        ModelRoot::versions(self)
    }

    async fn fingerprint(&self, version: &str) -> Vec<String> {
        let mut print: Vec<String> = std::fs::read_dir(self.version_dir(version))
            .map(|entries| {
                entries
                    .filter_map(|e| e.ok())
                    .filter_map(|e| {
                        let meta = e.metadata().ok()?;
                        Some(format!(
                            "{} {} {:?}",
                            e.file_name().to_string_lossy(),
                            meta.len(),
                            meta.modified().ok()
                        ))
                    })
                    .collect()
            })
            .unwrap_or_default();
        print.sort();
        print
    }

    fn describe(&self) -> String {
        self.path().display().to_string()
    }
}

#[async_trait]
impl VersionSource for RemoteModelRoot {
    async fn current_version(&self) -> Result<Option<String>> {
        RemoteModelRoot::current_version(self).await
    }

    async fn versions(&self) -> Result<Vec<String>> {
        RemoteModelRoot::versions(self).await
    }

    async fn fingerprint(&self, version: &str) -> Vec<String> {
        self.version_objects(version).await.unwrap_or_default()
    }

    fn describe(&self) -> String {
        self.url().to_string()
    }
}

/// Why a version was not loaded, with the loader's own error.
#[derive(Debug)]
pub enum LoadFailure<E> {
    /// The version itself is bad: refused until its files change.
    Refused(E),
    /// Something else failed (a network error): nothing is remembered, the next poll retries.
    Unavailable(E),
}

/// A version newly loaded by a poll.
#[derive(Debug)]
pub struct Followed<T> {
    pub version: String,
    pub model: T,
    /// Loaded in place of a `CURRENT` that cannot be.
    pub fallback: bool,
}

/// What one poll did.
#[derive(Debug)]
pub struct Poll<T, E> {
    /// The version to hold from now on, when it changed.
    pub followed: Option<Followed<T>>,
    /// Versions refused by this poll.
    pub refused: usize,
    /// The last load that failed in this poll (refused or unavailable).
    pub load_error: Option<E>,
    /// `CURRENT` or the version list could not be read; nothing changed.
    pub source_error: Option<SharedError>,
    /// A load or the source was unavailable: the poll stopped there, nothing changed.
    pub unavailable: bool,
}

impl<T, E> Poll<T, E> {
    fn nothing() -> Self {
        Poll {
            followed: None,
            refused: 0,
            load_error: None,
            source_error: None,
            unavailable: false,
        }
    }
}

/// Follows a source's `CURRENT` by [the policy of this module](self).
pub struct CurrentFollower<S> {
    source: S,
    /// Versions that failed to load, with the fingerprint of their files at the time.
    refused: HashMap<String, Vec<String>>,
}

impl<S: VersionSource> CurrentFollower<S> {
    pub fn new(source: S) -> Self {
        CurrentFollower {
            source,
            refused: HashMap::new(),
        }
    }

    pub fn source(&self) -> &S {
        &self.source
    }

    /// One poll. `held` is the version the reader holds now; `load` loads a version.
    pub async fn poll<T, E, F, Fut>(&mut self, held: Option<&str>, mut load: F) -> Poll<T, E>
    where
        E: std::fmt::Display,
        F: FnMut(String) -> Fut,
        Fut: Future<Output = std::result::Result<T, LoadFailure<E>>>,
    {
        let mut poll = Poll::nothing();
        let current = match self.source.current_version().await {
            Ok(Some(v)) => v,
            Ok(None) => return poll,
            Err(e) => {
                tracing::warn!(root = %self.source.describe(), error = %e, "cannot read CURRENT");
                poll.unavailable = true;
                poll.source_error = Some(e);
                return poll;
            }
        };
        if held == Some(current.as_str()) {
            return poll;
        }
        match self.try_load(&current, held, &mut load, &mut poll).await {
            Some(model) => {
                poll.followed = Some(Followed {
                    version: current,
                    model,
                    fallback: false,
                });
                return poll;
            }
            None if poll.unavailable => return poll,
            None => {}
        }
        // CURRENT cannot be loaded: keep, or fall back to, the newest intact version before it.
        let versions = match self.source.versions().await {
            Ok(versions) => versions,
            Err(e) => {
                tracing::warn!(root = %self.source.describe(), error = %e,
                    "cannot list model versions");
                poll.unavailable = true;
                poll.source_error = Some(e);
                return poll;
            }
        };
        for candidate in versions.iter().rev().filter(|v| **v < current) {
            if held == Some(candidate.as_str()) {
                return poll;
            }
            if let Some(model) = self.try_load(candidate, held, &mut load, &mut poll).await {
                tracing::warn!(version = %candidate, current = %current,
                    root = %self.source.describe(),
                    "holding the newest intact version before CURRENT, which cannot be loaded");
                poll.followed = Some(Followed {
                    version: candidate.clone(),
                    model,
                    fallback: true,
                });
                return poll;
            }
            if poll.unavailable {
                return poll;
            }
        }
        poll
    }

    async fn try_load<T, E, F, Fut>(
        &mut self,
        version: &str,
        held: Option<&str>,
        load: &mut F,
        poll: &mut Poll<T, E>,
    ) -> Option<T>
    where
        E: std::fmt::Display,
        F: FnMut(String) -> Fut,
        Fut: Future<Output = std::result::Result<T, LoadFailure<E>>>,
    {
        let print = self.source.fingerprint(version).await;
        if self.refused.get(version) == Some(&print) {
            return None;
        }
        match load(version.to_string()).await {
            Ok(model) => {
                self.refused.remove(version);
                Some(model)
            }
            Err(LoadFailure::Refused(problem)) => {
                tracing::error!(%version, error = %problem, held = held.unwrap_or("none"),
                    root = %self.source.describe(),
                    "refusing model version until its files change");
                self.refused.insert(version.to_string(), print);
                poll.refused += 1;
                poll.load_error = Some(problem);
                None
            }
            Err(LoadFailure::Unavailable(problem)) => {
                tracing::warn!(%version, error = %problem, root = %self.source.describe(),
                    "cannot load model version now; will retry");
                poll.unavailable = true;
                poll.load_error = Some(problem);
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::artifact::files;

    fn publish(root: &ModelRoot, payload: &str) -> String {
        let version = super::super::root::tests::stage_version(root, payload);
        root.set_current(&root.lock().unwrap(), &version).unwrap();
        version
    }

    /// Loads a version by verifying it, as every reader does first.
    async fn verified(
        root: &ModelRoot,
        version: String,
    ) -> std::result::Result<String, LoadFailure<String>> {
        root.verify(&version)
            .map(|m| m.version)
            .map_err(|e| LoadFailure::Refused(e.to_string()))
    }

    #[tokio::test]
    async fn refuses_a_corrupt_current_falls_back_and_retries_when_its_files_change() {
        let dir = tempfile::tempdir().unwrap();
        let root = ModelRoot::new(dir.path());
        let v1 = publish(&root, "one");
        let mut follower = CurrentFollower::new(root.clone());
        let poll = follower.poll(None, |v| verified(&root, v)).await;
        let followed = poll.followed.unwrap();
        assert_eq!(
            (followed.version.as_str(), followed.fallback),
            (v1.as_str(), false)
        );
        // Held: nothing to do.
        assert!(follower
            .poll(Some(&v1), |v| verified(&root, v))
            .await
            .followed
            .is_none());

        // A corrupt CURRENT: refused, the held version kept.
        let v2 = publish(&root, "two");
        let damaged = root.version_dir(&v2).join(files::ITEMS);
        std::fs::write(&damaged, "tw0").unwrap();
        let poll = follower.poll(Some(&v1), |v| verified(&root, v)).await;
        assert!(poll.followed.is_none());
        assert_eq!(poll.refused, 1);
        // Not tried again while its files are unchanged.
        let mut tries = 0;
        let poll = follower
            .poll(Some(&v1), |v| {
                tries += 1;
                verified(&root, v)
            })
            .await;
        assert_eq!((tries, poll.refused), (0, 0));

        // A reader that held nothing (a restart) falls back to the newest intact version before.
        let mut fresh = CurrentFollower::new(root.clone());
        let followed = fresh
            .poll(None, |v| verified(&root, v))
            .await
            .followed
            .unwrap();
        assert_eq!(
            (followed.version.as_str(), followed.fallback),
            (v1.as_str(), true)
        );

        // The file is copied again: tried again and loaded.
        std::fs::write(&damaged, "two").unwrap();
        let poll = follower.poll(Some(&v1), |v| verified(&root, v)).await;
        assert_eq!(poll.followed.unwrap().version, v2);
    }

    #[tokio::test]
    async fn an_unavailable_load_is_not_remembered_and_does_not_fall_back() {
        let dir = tempfile::tempdir().unwrap();
        let root = ModelRoot::new(dir.path());
        let _v1 = publish(&root, "one");
        let v2 = publish(&root, "two");
        let mut follower = CurrentFollower::new(root.clone());
        let mut asked = Vec::new();
        let poll = follower
            .poll(None, |v| {
                asked.push(v);
                async { Err::<String, _>(LoadFailure::Unavailable("network".to_string())) }
            })
            .await;
        assert!(poll.followed.is_none() && poll.unavailable);
        assert_eq!(poll.load_error.as_deref(), Some("network"));
        assert_eq!(
            asked,
            vec![v2.clone()],
            "no fallback on a transient failure"
        );
        let poll = follower.poll(None, |v| verified(&root, v)).await;
        assert_eq!(poll.followed.unwrap().version, v2);
    }
}
