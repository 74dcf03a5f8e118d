//! Object storage locations: where a path the user gives may name a bucket instead of a directory.
//!
//! A location is a plain path or `file://` URL (the local filesystem, handled by the callers as
//! before) or an `s3://` / `s3a://`, `gs://`, `az://` / `abfs[s]://` URL reached through the
//! `object_store` crate DataFusion uses. Credentials, region and endpoint come from the standard
//! environment variables of each cloud (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`,
//! `AWS_REGION`, `AWS_ENDPOINT_URL`, `AWS_ALLOW_HTTP=true` for a local endpoint;
//! `GOOGLE_SERVICE_ACCOUNT`, `AZURE_STORAGE_ACCOUNT_NAME`, …). They are never logged: errors name
//! the URL (which holds none) and what the store answered.
//!
//! This module moves bytes and reports conditions (an object already exists, an ETag no longer
//! matches); what the objects mean — versions, `CURRENT`, the writer lease — is
//! [`crate::artifact::RemoteModelRoot`]'s business.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use object_store::aws::AmazonS3Builder;
use object_store::azure::MicrosoftAzureBuilder;
use object_store::buffered::BufWriter;
use object_store::gcp::GoogleCloudStorageBuilder;
use object_store::path::Path as ObjectPath;
use object_store::{
    ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload, RetryConfig, UpdateVersion,
};
use tokio::io::AsyncWriteExt;

use crate::{Result, SharedError};

/// A place the user named: a local path or an object-storage prefix.
#[derive(Debug, Clone)]
pub enum Location {
    Local(PathBuf),
    Remote(RemoteLocation),
}

/// A prefix in a bucket, with the client that reaches it.
#[derive(Clone)]
pub struct RemoteLocation {
    /// The URL as the user wrote it, without a trailing slash; it holds no credentials.
    url: String,
    store: Arc<dyn ObjectStore>,
    prefix: ObjectPath,
}

impl std::fmt::Debug for RemoteLocation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteLocation")
            .field("url", &self.url)
            .finish()
    }
}

/// The version of an object a conditional write expects to replace.
pub type ObjectVersion = UpdateVersion;

/// What a conditional write found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Conditional {
    /// Written; the new object's version.
    Written(ObjectVersion),
    /// Not written: the object exists (create) or changed (update) since it was read.
    Lost,
}

/// Whether `text` names object storage rather than the local filesystem.
pub fn is_remote(text: &str) -> bool {
    match text.split_once("://") {
        Some((scheme, _)) => scheme != "file",
        None => false,
    }
}

impl Location {
    /// Parses a path or URL. Unknown schemes are refused here, before any work starts.
    pub fn parse(text: &str) -> Result<Location> {
        if let Some(path) = text.strip_prefix("file://") {
            return Ok(Location::Local(PathBuf::from(path)));
        }
        if !is_remote(text) {
            return Ok(Location::Local(PathBuf::from(text)));
        }
        RemoteLocation::parse(text).map(Location::Remote)
    }

    /// The location as the user would write it.
    pub fn display(&self) -> String {
        match self {
            Location::Local(path) => path.display().to_string(),
            Location::Remote(remote) => remote.url.clone(),
        }
    }
}

/// `text` with anything between `://` and an `@` (user info) replaced, for messages.
fn redacted(text: &str) -> String {
    match (text.split_once("://"), text.find('@')) {
        (Some((scheme, rest)), Some(_)) => match rest.split_once('@') {
            Some((_, host)) => format!("{scheme}://***@{host}"),
            None => text.to_string(),
        },
        _ => text.to_string(),
    }
}

/// Retries of one request: a few, within half a minute, so a dead endpoint fails a command in
/// seconds rather than the library's default three minutes.
fn retry() -> RetryConfig {
    RetryConfig {
        max_retries: 4,
        retry_timeout: Duration::from_secs(30),
        ..RetryConfig::default()
    }
}

impl RemoteLocation {
    /// Parses an object-storage URL and builds its client from the environment.
    pub fn parse(text: &str) -> Result<RemoteLocation> {
        Self::parse_with(text, &[])
    }

    /// As [`RemoteLocation::parse`], with `overrides` (environment-variable names such as
    /// `AWS_ENDPOINT_URL`, and values) taking precedence over the process environment.
    pub fn parse_with(text: &str, overrides: &[(&str, String)]) -> Result<RemoteLocation> {
        let url = url::Url::parse(text).map_err(|e| SharedError::ObjectStore {
            url: redacted(text),
            problem: format!("not a valid URL: {e}"),
        })?;
        if !url.username().is_empty() || url.password().is_some() {
            return Err(SharedError::ObjectStore {
                url: redacted(text),
                problem: "credentials do not belong in the URL; set them in the environment (AWS_ACCESS_KEY_ID, …)".into(),
            });
        }
        let url_text = text.trim_end_matches('/').to_string();
        let bad = |problem: String| SharedError::ObjectStore {
            url: url_text.clone(),
            problem,
        };
        let built = match url.scheme() {
            "s3" | "s3a" => {
                let mut builder = AmazonS3Builder::from_env();
                for (key, value) in overrides {
                    let key = key
                        .to_ascii_lowercase()
                        .parse()
                        .map_err(|e| bad(format!("unknown setting {key}: {e}")))?;
                    builder = builder.with_config(key, value);
                }
                builder
                    .with_url(text)
                    .with_retry(retry())
                    .build()
                    .map(|s| Arc::new(s) as Arc<dyn ObjectStore>)
            }
            "gs" => GoogleCloudStorageBuilder::from_env()
                .with_url(text)
                .with_retry(retry())
                .build()
                .map(|s| Arc::new(s) as Arc<dyn ObjectStore>),
            "az" | "abfs" | "abfss" | "adl" | "azure" => MicrosoftAzureBuilder::from_env()
                .with_url(text)
                .with_retry(retry())
                .build()
                .map(|s| Arc::new(s) as Arc<dyn ObjectStore>),
            other => {
                return Err(bad(format!(
                    "unsupported scheme {other:?} (use a path, file://, s3://, gs:// or az://)"
                )))
            }
        };
        let store = built.map_err(|e| bad(format!("cannot configure the client: {e}")))?;
        let prefix = ObjectPath::parse(url.path().trim_matches('/'))
            .map_err(|e| bad(format!("not a valid object path: {e}")))?;
        if url.host_str().unwrap_or("").is_empty() {
            return Err(bad("no bucket named (expected scheme://bucket/path)".into()));
        }
        Ok(RemoteLocation {
            url: url_text,
            store,
            prefix,
        })
    }

    /// The URL, for messages.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The location `name` below this one (`name` may hold `/`).
    pub fn join(&self, name: &str) -> RemoteLocation {
        RemoteLocation {
            url: format!("{}/{}", self.url, name.trim_matches('/')),
            store: self.store.clone(),
            prefix: self.key(name),
        }
    }

    fn key(&self, name: &str) -> ObjectPath {
        let mut key = self.prefix.clone();
        for part in name.split('/').filter(|p| !p.is_empty()) {
            key = key.clone().join(part);
        }
        key
    }

    fn error(&self, name: &str, e: impl std::fmt::Display) -> SharedError {
        SharedError::ObjectStore {
            url: if name.is_empty() {
                self.url.clone()
            } else {
                format!("{}/{name}", self.url)
            },
            problem: e.to_string(),
        }
    }

    /// The object `name` with its version, or `None` when there is none.
    pub async fn get(&self, name: &str) -> Result<Option<(Bytes, ObjectVersion)>> {
        match self.store.get(&self.key(name)).await {
            Ok(got) => {
                let version = ObjectVersion {
                    e_tag: got.meta.e_tag.clone(),
                    version: got.meta.version.clone(),
                };
                let bytes = got.bytes().await.map_err(|e| self.error(name, e))?;
                Ok(Some((bytes, version)))
            }
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.error(name, e)),
        }
    }

    /// The size and version of `name`, or `None` when there is none.
    pub async fn head(&self, name: &str) -> Result<Option<(u64, ObjectVersion)>> {
        match self.store.head(&self.key(name)).await {
            Ok(meta) => Ok(Some((
                meta.size,
                ObjectVersion {
                    e_tag: meta.e_tag,
                    version: meta.version,
                },
            ))),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.error(name, e)),
        }
    }

    /// Writes `bytes` to `name` only if it does not exist (`expected` = `None`) or still has the
    /// version `expected` — a compare-and-swap the store decides (`If-None-Match: *` /
    /// `If-Match: <etag>` on S3).
    pub async fn put_if(
        &self,
        name: &str,
        bytes: Vec<u8>,
        expected: Option<ObjectVersion>,
    ) -> Result<Conditional> {
        let mode = match expected {
            None => PutMode::Create,
            Some(version) => PutMode::Update(version),
        };
        match self
            .store
            .put_opts(
                &self.key(name),
                PutPayload::from(bytes),
                PutOptions::from(mode),
            )
            .await
        {
            Ok(put) => Ok(Conditional::Written(ObjectVersion {
                e_tag: put.e_tag,
                version: put.version,
            })),
            Err(object_store::Error::AlreadyExists { .. })
            | Err(object_store::Error::Precondition { .. }) => Ok(Conditional::Lost),
            Err(e) => Err(self.error(name, e)),
        }
    }

    /// Writes `bytes` to `name`, replacing what is there.
    pub async fn put(&self, name: &str, bytes: Vec<u8>) -> Result<()> {
        self.store
            .put(&self.key(name), PutPayload::from(bytes))
            .await
            .map(|_| ())
            .map_err(|e| self.error(name, e))
    }

    /// Uploads the local file `from` to `name`, streaming (multipart above a few MiB), so memory
    /// stays bounded whatever the file's size.
    pub async fn upload(&self, from: &Path, name: &str) -> Result<u64> {
        let mut file = tokio::fs::File::open(from)
            .await
            .map_err(|e| SharedError::io(from, e))?;
        let mut writer = BufWriter::with_capacity(self.store.clone(), self.key(name), 8 << 20);
        let copied = tokio::io::copy(&mut file, &mut writer).await;
        match copied {
            Ok(bytes) => {
                writer.shutdown().await.map_err(|e| self.error(name, e))?;
                Ok(bytes)
            }
            Err(e) => {
                let _ = writer.abort().await;
                Err(self.error(name, e))
            }
        }
    }

    /// Downloads `name` into the local file `to` (written as `to` + `.part`, then renamed), streaming.
    pub async fn download(&self, name: &str, to: &Path) -> Result<u64> {
        let got = self
            .store
            .get(&self.key(name))
            .await
            .map_err(|e| self.error(name, e))?;
        if let Some(dir) = to.parent() {
            tokio::fs::create_dir_all(dir)
                .await
                .map_err(|e| SharedError::io(dir, e))?;
        }
        let part = PathBuf::from(format!("{}.part", to.display()));
        let mut file = tokio::fs::File::create(&part)
            .await
            .map_err(|e| SharedError::io(&part, e))?;
        let mut stream = got.into_stream();
        let mut bytes = 0u64;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| self.error(name, e))?;
            bytes += chunk.len() as u64;
            file.write_all(&chunk)
                .await
                .map_err(|e| SharedError::io(&part, e))?;
        }
        file.sync_all()
            .await
            .map_err(|e| SharedError::io(&part, e))?;
        drop(file);
        tokio::fs::rename(&part, to)
            .await
            .map_err(|e| SharedError::io(to, e))?;
        Ok(bytes)
    }

    /// Every object below this location: its name relative to it and its size, sorted by name.
    pub async fn list(&self) -> Result<Vec<(String, u64)>> {
        let prefix = (!self.prefix.as_ref().is_empty()).then_some(&self.prefix);
        let mut stream = self.store.list(prefix);
        let mut found = Vec::new();
        while let Some(meta) = stream.next().await {
            let meta = meta.map_err(|e| self.error("", e))?;
            let name = match meta.location.prefix_match(&self.prefix) {
                Some(parts) => parts.map(|p| p.as_ref().to_string()).collect::<Vec<_>>(),
                None => continue,
            };
            found.push((name.join("/"), meta.size));
        }
        found.sort();
        Ok(found)
    }

    /// The names of the "directories" (common prefixes) directly below this location.
    pub async fn list_dirs(&self) -> Result<Vec<String>> {
        let prefix = (!self.prefix.as_ref().is_empty()).then_some(&self.prefix);
        let listed = self
            .store
            .list_with_delimiter(prefix)
            .await
            .map_err(|e| self.error("", e))?;
        let mut dirs: Vec<String> = listed
            .common_prefixes
            .iter()
            .filter_map(|p| p.filename().map(str::to_string))
            .collect();
        dirs.sort();
        Ok(dirs)
    }

    /// Deletes `name`; a missing object is not an error.
    pub async fn delete(&self, name: &str) -> Result<()> {
        match self.store.delete(&self.key(name)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.error(name, e)),
        }
    }

    /// Deletes every object below `name`.
    pub async fn delete_all(&self, name: &str) -> Result<()> {
        let below = self.join(name);
        for (object, _) in below.list().await? {
            below.delete(&object).await?;
        }
        Ok(())
    }

    /// Copies every object below this location into the directory `to`, keeping relative names
    /// (so Hive partitions `date=…/` survive). Returns the local files.
    pub async fn download_all(&self, to: &Path) -> Result<Vec<PathBuf>> {
        let mut files = Vec::new();
        for (name, _) in self.list().await? {
            let local = name
                .split('/')
                .fold(to.to_path_buf(), |path, part| path.join(part));
            self.download(&name, &local).await?;
            files.push(local);
        }
        if files.is_empty() {
            // A single object named by the URL itself.
            if let Some((size, _)) = self.head("").await? {
                let name = self.prefix.filename().unwrap_or("object").to_string();
                let local = to.join(&name);
                self.download("", &local).await?;
                tracing::debug!(bytes = size, url = %self.url, "downloaded");
                files.push(local);
            }
        }
        Ok(files)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_and_file_urls_are_local_and_unknown_schemes_are_refused() {
        assert!(
            matches!(Location::parse("var/models").unwrap(), Location::Local(p) if p == Path::new("var/models"))
        );
        assert!(
            matches!(Location::parse("file:///tmp/m").unwrap(), Location::Local(p) if p == Path::new("/tmp/m"))
        );
        let err = Location::parse("ftp://host/x").unwrap_err().to_string();
        assert!(
            err.contains("ftp://host/x") && err.contains("unsupported scheme"),
            "{err}"
        );
        let err = Location::parse("s3://key:secret@bucket/x")
            .unwrap_err()
            .to_string();
        assert!(err.contains("credentials do not belong"), "{err}");
        assert!(
            !err.contains("secret@"),
            "the message must not repeat a secret: {err}"
        );
    }

    #[test]
    fn s3_urls_keep_their_prefix() {
        let Location::Remote(remote) = Location::parse("s3://bucket/lake/models/").unwrap() else {
            panic!("remote expected");
        };
        assert_eq!(remote.url(), "s3://bucket/lake/models");
        assert_eq!(
            remote.key("v1/manifest.json").as_ref(),
            "lake/models/v1/manifest.json"
        );
        assert_eq!(remote.join("v1").url(), "s3://bucket/lake/models/v1");
    }
}
