//! The model root: versions, the `CURRENT` pointer, the writer lock, retention and rollback.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::files;
use super::manifest::{FileEntry, Manifest, FORMAT_VERSION};
use crate::{Result, SharedError};

const CURRENT: &str = "CURRENT";
const LOCK: &str = ".lock";
const STAGING_PREFIX: &str = ".tmp-";
/// How long [`ModelRoot::lock`] asks again for a busy lock before it reports another writer.
const LOCK_PATIENCE: std::time::Duration = std::time::Duration::from_secs(1);

/// Test hook: `RECSYS_FAILPOINT=publish-mid-write` aborts the process after the first table file of
/// a version is synced, `publish-before-current` after the version directory is renamed into place
/// but before `CURRENT` moves. Used by the crash tests; never set in production.
const FAILPOINT_ENV: &str = "RECSYS_FAILPOINT";

pub(crate) fn failpoint(name: &str) {
    if std::env::var(FAILPOINT_ENV).is_ok_and(|v| v == name) {
        eprintln!("failpoint {name}: aborting");
        std::process::abort();
    }
}

/// A directory of model versions.
#[derive(Debug, Clone)]
pub struct ModelRoot {
    root: PathBuf,
}

/// Proof that this process is the model root's only writer; released on drop.
#[derive(Debug)]
pub struct WriterLock {
    _file: File,
}

/// A version being written; invisible to readers until [`StagedVersion::commit`]. Dropped without
/// a commit (a write that failed, a full disk), its directory is removed at once, so a failed job
/// gives back the space it took; only a killed process leaves one, for the next writer to remove.
#[derive(Debug)]
pub struct StagedVersion {
    root: PathBuf,
    version: String,
    staging: PathBuf,
}

impl ModelRoot {
    /// A model root at `root`, which need not exist yet.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        ModelRoot { root: root.into() }
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.root
    }

    fn error(&self, problem: impl Into<String>) -> SharedError {
        SharedError::ModelRoot {
            root: self.root.clone(),
            problem: problem.into(),
        }
    }

    fn artifact_error(&self, version: &str, problem: impl Into<String>) -> SharedError {
        SharedError::Artifact {
            root: self.root.clone(),
            version: version.to_string(),
            problem: problem.into(),
        }
    }

    /// Directory of `version`.
    pub fn version_dir(&self, version: &str) -> PathBuf {
        self.root.join(version)
    }

    /// Takes the writer lock, creating the root if needed. Fails when another writer still holds
    /// it after [`LOCK_PATIENCE`] (it does not queue behind a running job).
    pub fn lock(&self) -> Result<WriterLock> {
        fs::create_dir_all(&self.root).map_err(|e| SharedError::io(&self.root, e))?;
        let path = self.root.join(LOCK);
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| SharedError::io(&path, e))?;
        let started = std::time::Instant::now();
        loop {
            match file.try_lock() {
                Ok(()) => return Ok(WriterLock { _file: file }),
                // A lock just released can still be held for a moment by a child process forked
                // (by any thread of the releasing process) between its fork and its exec, which
                // shares the open file; so a busy lock is asked again for a short while.
                Err(std::fs::TryLockError::WouldBlock) if started.elapsed() < LOCK_PATIENCE => {
                    std::thread::sleep(std::time::Duration::from_millis(10));
                }
                Err(std::fs::TryLockError::WouldBlock) => {
                    return Err(self.error(format!(
                        "another writer (a train or rollback) holds {}; wait for it to finish",
                        path.display()
                    )))
                }
                Err(std::fs::TryLockError::Error(e)) => return Err(SharedError::io(&path, e)),
            }
        }
    }

    /// The version `CURRENT` names, if any.
    pub fn current_version(&self) -> Result<Option<String>> {
        let path = self.root.join(CURRENT);
        match fs::read_to_string(&path) {
            Ok(text) => {
                let version = text.trim().to_string();
                if version.is_empty() {
                    return Err(self.error("CURRENT is empty"));
                }
                Ok(Some(version))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(SharedError::io(path, e)),
        }
    }

    /// The manifest of the current version, checked against its files.
    pub fn current(&self) -> Result<Option<Manifest>> {
        match self.current_version()? {
            Some(version) => self.verify(&version).map(Some),
            None => Ok(None),
        }
    }

    /// Published versions (complete directories, staging excluded), oldest first.
    pub fn versions(&self) -> Result<Vec<String>> {
        let entries = match fs::read_dir(&self.root) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(SharedError::io(&self.root, e)),
        };
        let mut versions = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| SharedError::io(&self.root, e))?;
            let name = entry.file_name().to_string_lossy().to_string();
            if !name.starts_with('.') && entry.path().join(files::MANIFEST).is_file() {
                versions.push(name);
            }
        }
        versions.sort();
        Ok(versions)
    }

    /// Reads a version's manifest without checking its files.
    pub fn manifest(&self, version: &str) -> Result<Manifest> {
        let path = self.version_dir(version).join(files::MANIFEST);
        let text = fs::read_to_string(&path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => self.artifact_error(version, "no such version"),
            _ => SharedError::io(&path, e),
        })?;
        parse_manifest(&text, version).map_err(|problem| self.artifact_error(version, problem))
    }

    /// Reads a version's manifest and checks the size and sha256 of every file it lists.
    pub fn verify(&self, version: &str) -> Result<Manifest> {
        let manifest = self.manifest(version)?;
        let dir = self.version_dir(version);
        for (name, expected) in &manifest.files {
            let actual = hash_file(&dir.join(name))
                .map_err(|e| self.artifact_error(version, format!("{name}: {e}")))?;
            if actual != *expected {
                return Err(self.artifact_error(
                    version,
                    format!(
                        "{name}: sha256 {} ({} bytes) does not match the manifest's {} ({} bytes)",
                        actual.sha256, actual.bytes, expected.sha256, expected.bytes
                    ),
                ));
            }
        }
        Ok(manifest)
    }

    /// A fresh, sortable version id: UTC time to the millisecond plus a random suffix.
    pub fn new_version_id() -> String {
        let now = chrono::Utc::now();
        format!(
            "{}-{:04x}",
            now.format("%Y%m%dT%H%M%S%.3fZ"),
            rand::random::<u16>()
        )
    }

    /// Starts writing a new version; leftovers of crashed writers are removed first.
    pub fn stage(&self, _lock: &WriterLock, version: &str) -> Result<StagedVersion> {
        self.remove_stale_staging()?;
        if self.version_dir(version).exists() {
            return Err(self.artifact_error(version, "already exists"));
        }
        let staging = self.root.join(format!("{STAGING_PREFIX}{version}"));
        fs::create_dir_all(&staging).map_err(|e| SharedError::io(&staging, e))?;
        Ok(StagedVersion {
            root: self.root.clone(),
            version: version.to_string(),
            staging,
        })
    }

    fn remove_stale_staging(&self) -> Result<()> {
        let entries = fs::read_dir(&self.root).map_err(|e| SharedError::io(&self.root, e))?;
        for entry in entries.flatten() {
            if entry
                .file_name()
                .to_string_lossy()
                .starts_with(STAGING_PREFIX)
            {
                tracing::warn!(dir = %entry.path().display(), "removing a crashed writer's staging directory");
                fs::remove_dir_all(entry.path()).map_err(|e| SharedError::io(entry.path(), e))?;
            }
        }
        Ok(())
    }

    /// Points `CURRENT` at `version` after verifying it; atomic by rename.
    pub fn set_current(&self, _lock: &WriterLock, version: &str) -> Result<()> {
        self.verify(version)?;
        let tmp = self.root.join(format!("{CURRENT}.tmp"));
        write_synced(&tmp, format!("{version}\n").as_bytes())?;
        let current = self.root.join(CURRENT);
        fs::rename(&tmp, &current).map_err(|e| SharedError::io(&current, e))?;
        sync_dir(&self.root)
    }

    /// Moves `CURRENT` back (or forward) to an existing, intact version.
    pub fn rollback(&self, lock: &WriterLock, to: &str) -> Result<Option<String>> {
        let previous = self.current_version()?;
        self.set_current(lock, to)?;
        Ok(previous)
    }

    /// Deletes the oldest versions beyond `keep`, never the current one. Returns what it deleted.
    pub fn prune(&self, _lock: &WriterLock, keep: usize) -> Result<Vec<String>> {
        let current = self.current_version()?;
        let versions = self.versions()?;
        let excess = versions.len().saturating_sub(keep.max(1));
        let mut removed = Vec::new();
        for version in versions.into_iter().take(excess) {
            if Some(&version) == current.as_ref() {
                continue;
            }
            let dir = self.version_dir(&version);
            // Rename first so a reader never sees a partly deleted version under its real name.
            let doomed = self.root.join(format!("{STAGING_PREFIX}deleted-{version}"));
            fs::rename(&dir, &doomed).map_err(|e| SharedError::io(&dir, e))?;
            fs::remove_dir_all(&doomed).map_err(|e| SharedError::io(&doomed, e))?;
            removed.push(version);
        }
        Ok(removed)
    }
}

impl StagedVersion {
    /// The version id.
    pub fn version(&self) -> &str {
        &self.version
    }

    /// Where to write the file `name` of this version.
    pub fn path(&self, name: &str) -> PathBuf {
        self.staging.join(name)
    }

    /// Hashes and syncs every file written so far, writes `manifest` (with the file list filled
    /// in) and renames the directory into place. `CURRENT` is not touched.
    pub fn commit(self, mut manifest: Manifest) -> Result<Manifest> {
        manifest.version = self.version.clone();
        manifest.format_version = FORMAT_VERSION;
        let mut entries = BTreeMap::new();
        let mut names: Vec<String> = fs::read_dir(&self.staging)
            .map_err(|e| SharedError::io(&self.staging, e))?
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().to_string())
            .filter(|n| n != files::MANIFEST)
            .collect();
        names.sort();
        for (i, name) in names.iter().enumerate() {
            let path = self.staging.join(name);
            File::open(&path)
                .and_then(|f| f.sync_all())
                .map_err(|e| SharedError::io(&path, e))?;
            entries.insert(name.clone(), hash_file(&path)?);
            if i == 0 {
                failpoint("publish-mid-write");
            }
        }
        manifest.files = entries;
        let json = serde_json::to_vec_pretty(&manifest).expect("manifest serialises");
        write_synced(&self.staging.join(files::MANIFEST), &json)?;
        sync_dir(&self.staging)?;
        let target = self.root.join(&self.version);
        fs::rename(&self.staging, &target).map_err(|e| SharedError::io(&target, e))?;
        sync_dir(&self.root)?;
        failpoint("publish-before-current");
        Ok(manifest)
    }
}

impl Drop for StagedVersion {
    fn drop(&mut self) {
        // After a commit the directory has been renamed into place and is not there.
        if self.staging.exists() {
            if let Err(e) = fs::remove_dir_all(&self.staging) {
                tracing::warn!(dir = %self.staging.display(), error = %e,
                    "cannot remove the staging directory of a version that was not published");
            }
        }
    }
}

/// Parses a version's `manifest.json` and checks its format and that it names `version`; the
/// problem is returned for the caller to attach to its root.
pub(crate) fn parse_manifest(text: &str, version: &str) -> std::result::Result<Manifest, String> {
    let manifest: Manifest =
        serde_json::from_str(text).map_err(|e| format!("manifest.json: {e}"))?;
    if manifest.format_version != FORMAT_VERSION {
        return Err(format!(
            "format_version {} is not the supported {FORMAT_VERSION}",
            manifest.format_version
        ));
    }
    if manifest.version != version {
        return Err(format!("manifest names version {}", manifest.version));
    }
    let scorer = crate::artifact::published::scorer_file(manifest.algorithm.family());
    for required in [scorer, files::ITEM_POPULARITY, files::ITEMS] {
        if !manifest.files.contains_key(required) {
            return Err(format!("manifest lists no {required}"));
        }
    }
    Ok(manifest)
}

pub(crate) fn hash_file(path: &Path) -> Result<FileEntry> {
    let mut file = File::open(path).map_err(|e| SharedError::io(path, e))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut bytes = 0u64;
    loop {
        let n = file.read(&mut buf).map_err(|e| SharedError::io(path, e))?;
        if n == 0 {
            break;
        }
        bytes += n as u64;
        hasher.update(&buf[..n]);
    }
    Ok(FileEntry {
        sha256: hex::encode(hasher.finalize()),
        bytes,
    })
}

fn write_synced(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut file = File::create(path).map_err(|e| SharedError::io(path, e))?;
    file.write_all(bytes)
        .and_then(|_| file.sync_all())
        .map_err(|e| SharedError::io(path, e))
}

fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| SharedError::io(dir, e))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::super::manifest::{AlgorithmParams, DataWindow, IalsRecord, ModelParams, RowCounts};
    use super::*;

    /// Publishes a version whose files hold `payload` (without moving `CURRENT`).
    pub(crate) fn stage_version(root: &ModelRoot, payload: &str) -> String {
        let lock = root.lock().unwrap();
        let version = ModelRoot::new_version_id();
        let staged = root.stage(&lock, &version).unwrap();
        for name in [files::ITEM_FACTORS, files::ITEM_POPULARITY, files::ITEMS] {
            std::fs::write(staged.path(name), payload).unwrap();
        }
        staged.commit(manifest()).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(2));
        version
    }

    pub(crate) fn manifest() -> Manifest {
        Manifest {
            format_version: FORMAT_VERSION,
            version: String::new(),
            created_at: chrono::Utc::now(),
            algorithm: AlgorithmParams {
                name: "ials-cg".into(),
                model: ModelParams::Ials(IalsRecord {
                    factors: 2,
                    objective: crate::model::ials::Objective {
                        regularization: 0.1,
                        alpha: 1.0,
                        unobserved_weight: 1.0,
                        regularization_exp: 0.0,
                    },
                    iterations: 1,
                    cg_steps: 1,
                    seed: 0,
                }),
                tuning: None,
            },
            features: serde_json::json!({}),
            data_window: DataWindow::default(),
            rows: RowCounts::default(),
            evaluation: None,
            gate: None,
            files: BTreeMap::new(),
        }
    }

    fn publish(root: &ModelRoot, lock: &WriterLock, payload: &str) -> String {
        let version = ModelRoot::new_version_id();
        let staged = root.stage(lock, &version).unwrap();
        for name in [files::ITEM_FACTORS, files::ITEM_POPULARITY, files::ITEMS] {
            fs::write(staged.path(name), payload).unwrap();
        }
        staged.commit(manifest()).unwrap();
        root.set_current(lock, &version).unwrap();
        version
    }

    #[test]
    fn a_lock_released_while_a_child_still_shares_the_file_is_taken_once_the_child_exits() {
        // A process forked while the lock was held keeps the open file (and so the lock) until it
        // execs or exits; a child given the lock file as its stdin does the same for 300 ms.
        let dir = tempfile::tempdir().unwrap();
        let root = ModelRoot::new(dir.path().join("models"));
        let lock = root.lock().unwrap();
        let shared = lock._file.try_clone().unwrap();
        let mut child = std::process::Command::new("sleep")
            .arg("0.3")
            .stdin(std::process::Stdio::from(shared))
            .spawn()
            .unwrap();
        drop(lock);
        let again = root.lock();
        child.wait().unwrap();
        assert!(again.is_ok(), "{:?}", again.err());
    }

    #[test]
    fn publish_rollback_prune_and_lock() {
        let dir = tempfile::tempdir().unwrap();
        let root = ModelRoot::new(dir.path().join("models"));
        assert_eq!(root.current_version().unwrap(), None);
        let lock = root.lock().unwrap();
        let err = root.lock().unwrap_err().to_string();
        assert!(err.contains("another writer"), "{err}");

        let v1 = publish(&root, &lock, "one");
        std::thread::sleep(std::time::Duration::from_millis(2));
        let v2 = publish(&root, &lock, "two");
        assert_eq!(root.current_version().unwrap(), Some(v2.clone()));
        assert_eq!(root.versions().unwrap(), vec![v1.clone(), v2.clone()]);

        assert_eq!(root.rollback(&lock, &v1).unwrap(), Some(v2.clone()));
        assert_eq!(root.current().unwrap().unwrap().version, v1);
        assert!(root.rollback(&lock, "nope").is_err());
        assert_eq!(root.current_version().unwrap(), Some(v1.clone()));

        // Keeping one version never deletes the current one, even when it is the oldest.
        assert_eq!(root.prune(&lock, 1).unwrap(), Vec::<String>::new());
        root.set_current(&lock, &v2).unwrap();
        assert_eq!(root.prune(&lock, 1).unwrap(), vec![v1]);
        assert_eq!(root.versions().unwrap(), vec![v2]);
    }

    #[test]
    fn a_tampered_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let root = ModelRoot::new(dir.path());
        let lock = root.lock().unwrap();
        let v1 = publish(&root, &lock, "good");
        fs::write(root.version_dir(&v1).join(files::ITEMS), "evil").unwrap();
        let err = root.verify(&v1).unwrap_err().to_string();
        assert!(
            err.contains("items.parquet") && err.contains("sha256"),
            "{err}"
        );
        assert!(root.set_current(&lock, &v1).is_err());
    }

    #[test]
    fn staging_is_invisible_and_cleaned_up() {
        let dir = tempfile::tempdir().unwrap();
        let root = ModelRoot::new(dir.path());
        let lock = root.lock().unwrap();
        let staged = root.stage(&lock, "v-crashed").unwrap();
        fs::write(staged.path(files::ITEMS), "partial").unwrap();
        std::mem::forget(staged); // a writer killed before commit
        assert!(dir.path().join(".tmp-v-crashed").exists());
        assert!(root.versions().unwrap().is_empty());
        let v = publish(&root, &lock, "x");
        assert_eq!(root.versions().unwrap(), vec![v]);
        assert!(!dir.path().join(".tmp-v-crashed").exists());
    }

    /// The fault: a publish that failed (a full disk) exited cleanly with `CURRENT` intact, but
    /// left `.tmp-<version>/` behind, and the disk stayed full until the next publish.
    #[test]
    fn a_failed_write_or_commit_removes_its_staging_directory() {
        let dir = tempfile::tempdir().unwrap();
        let root = ModelRoot::new(dir.path());
        let lock = root.lock().unwrap();
        // A job whose write failed: the staged version is dropped on the error path.
        let failed_write = || -> Result<()> {
            let staged = root.stage(&lock, "v-write")?;
            fs::write(staged.path(files::ITEMS), vec![0u8; 1 << 20]).unwrap();
            Err(SharedError::io(
                staged.path(files::USER_FACTORS),
                std::io::ErrorKind::StorageFull.into(),
            ))
        };
        assert!(failed_write().is_err());
        assert!(!dir.path().join(".tmp-v-write").exists());
        // A commit that fails part way (a file it cannot hash).
        let staged = root.stage(&lock, "v-commit").unwrap();
        fs::write(staged.path(files::ITEMS), "x").unwrap();
        fs::create_dir(staged.path("not-a-file")).unwrap();
        assert!(staged.commit(manifest()).is_err());
        assert!(!dir.path().join(".tmp-v-commit").exists());
        assert!(root.versions().unwrap().is_empty());
        // A commit that succeeds is untouched by the drop.
        let v = publish(&root, &lock, "ok");
        assert!(root.verify(&v).is_ok());
    }
}
