//! The embedded backend: a redb database in a local directory. No server; one process at a time
//! (redb locks the file), which is why the nearline workers and online servers of a deployment share
//! Redis or Cassandra instead.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use super::{
    fill_page, frame, unframe, IdempotencyToken, Item, KvStore, Page, Predicate, RecordRead,
    RecordRef, RecordWrite, RecordsWrite, StoreError, StoreResult,
};

const BACKEND: &str = "embedded";
/// All namespaces in one table; the key is `namespace ‖ id ‖ item key`, length-prefixed so that one
/// record's items are contiguous and in item-key order.
const ITEMS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("items");
const FILE_NAME: &str = "features.redb";

/// A redb database file under a directory.
#[derive(Clone)]
pub struct EmbeddedStore {
    db: Arc<Database>,
    path: PathBuf,
}

impl std::fmt::Debug for EmbeddedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedStore")
            .field("path", &self.path)
            .finish()
    }
}

fn err(e: impl std::fmt::Display) -> StoreError {
    StoreError::backend(BACKEND, e)
}

fn record_prefix(namespace: &str, id: &str) -> Vec<u8> {
    let mut prefix = Vec::with_capacity(3 + namespace.len() + id.len());
    prefix.push(namespace.len() as u8);
    prefix.extend_from_slice(namespace.as_bytes());
    prefix.extend_from_slice(&(id.len() as u16).to_be_bytes());
    prefix.extend_from_slice(id.as_bytes());
    prefix
}

impl EmbeddedStore {
    /// Opens (creating if needed) `DIR/features.redb`. Fails if another process holds it.
    pub fn open(dir: &Path) -> StoreResult<Self> {
        std::fs::create_dir_all(dir).map_err(|e| {
            StoreError::backend(BACKEND, format!("creating {}: {e}", dir.display()))
        })?;
        let path = dir.join(FILE_NAME);
        let db = Database::create(&path).map_err(|e| {
            let shown = std::path::absolute(&path).unwrap_or_else(|_| path.clone());
            let message = match e {
                redb::DatabaseError::DatabaseAlreadyOpen => format!(
                    "{} is open in another process: only one process may open an embedded store (another server, worker or quickstart?); give this one a store of its own with store.embedded.path (RECSYS__STORE__EMBEDDED__PATH), or share a Redis store",
                    shown.display()
                ),
                e => format!("{}: {e}", shown.display()),
            };
            StoreError::backend(BACKEND, message)
        })?;
        let txn = db.begin_write().map_err(err)?;
        txn.open_table(ITEMS).map_err(err)?;
        txn.commit().map_err(err)?;
        Ok(EmbeddedStore {
            db: Arc::new(db),
            path,
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn commit_records(
        db: &Database,
        namespace: &str,
        records: &[(String, Vec<Item>)],
        token: IdempotencyToken,
    ) -> StoreResult<()> {
        let txn = db.begin_write().map_err(err)?;
        {
            let mut table = txn.open_table(ITEMS).map_err(err)?;
            for (id, items) in records {
                let prefix = record_prefix(namespace, id);
                for item in items {
                    let mut key = prefix.clone();
                    key.extend_from_slice(&item.key);
                    let newer = match table.get(key.as_slice()).map_err(err)? {
                        Some(stored) => unframe(namespace, id, stored.value())?.0 < token,
                        None => true,
                    };
                    if newer {
                        table
                            .insert(key.as_slice(), frame(token, &item.value).as_slice())
                            .map_err(err)?;
                    }
                }
            }
        }
        txn.commit().map_err(err)
    }

    /// Matching items in key order, with their full table keys.
    fn scan(
        table: &impl ReadableTable<&'static [u8], &'static [u8]>,
        prefix: &[u8],
        predicate: &Predicate,
        mut visit: impl FnMut(Vec<u8>, Vec<u8>) -> StoreResult<bool>,
    ) -> StoreResult<()> {
        match predicate {
            Predicate::MatchKeys(keys) => {
                for key in Predicate::sorted_keys(keys) {
                    let mut full = prefix.to_vec();
                    full.extend_from_slice(&key);
                    if let Some(v) = table.get(full.as_slice()).map_err(err)? {
                        if !visit(key, v.value().to_vec())? {
                            return Ok(());
                        }
                    }
                }
            }
            Predicate::MatchAll | Predicate::MatchRange { .. } => {
                let mut start = prefix.to_vec();
                if let Predicate::MatchRange { start: Some(s), .. } = predicate {
                    start.extend_from_slice(s);
                }
                for entry in table.range(start.as_slice()..).map_err(err)? {
                    let (k, v) = entry.map_err(err)?;
                    let Some(key) = k.value().strip_prefix(prefix) else {
                        break;
                    };
                    if !predicate.matches(key) {
                        break;
                    }
                    if !visit(key.to_vec(), v.value().to_vec())? {
                        return Ok(());
                    }
                }
            }
        }
        Ok(())
    }
}

#[async_trait]
impl KvStore for EmbeddedStore {
    fn backend(&self) -> &'static str {
        BACKEND
    }

    async fn write_items(&self, write: RecordWrite<'_>) -> StoreResult<()> {
        self.write_records(RecordsWrite {
            namespace: write.namespace,
            records: &[(write.id.to_string(), write.items.to_vec())],
            token: write.token,
        })
        .await
    }

    async fn write_records(&self, write: RecordsWrite<'_>) -> StoreResult<()> {
        let db = self.db.clone();
        let namespace = write.namespace.to_string();
        let records = write.records.to_vec();
        let token = write.token;
        tokio::task::spawn_blocking(move || Self::commit_records(&db, &namespace, &records, token))
            .await
            .map_err(err)?
    }

    async fn read_records(&self, namespace: &str, ids: &[String]) -> StoreResult<Vec<Vec<Item>>> {
        // One read transaction for the whole batch.
        let txn = self.db.begin_read().map_err(err)?;
        let table = txn.open_table(ITEMS).map_err(err)?;
        ids.iter()
            .map(|id| {
                let mut items = Vec::new();
                Self::scan(
                    &table,
                    &record_prefix(namespace, id),
                    &Predicate::MatchAll,
                    |key, stored| {
                        let value = unframe(namespace, id, &stored)?.1.to_vec();
                        items.push(Item { key, value });
                        Ok(true)
                    },
                )?;
                Ok(items)
            })
            .collect()
    }

    async fn read_items(&self, read: RecordRead<'_>) -> StoreResult<Page> {
        let (namespace, id, page) = (read.namespace, read.id, read.page);
        let predicate = read.remaining();
        let prefix = record_prefix(namespace, id);
        let txn = self.db.begin_read().map_err(err)?;
        let table = txn.open_table(ITEMS).map_err(err)?;
        let mut out = Page::default();
        let mut used = 0;
        Self::scan(&table, &prefix, &predicate, |key, stored| {
            let value = unframe(namespace, id, &stored)?.1.to_vec();
            Ok(!fill_page(
                [Item { key, value }],
                page.page_size_bytes,
                &mut out,
                &mut used,
            ))
        })?;
        Ok(out)
    }

    async fn remove_items(&self, record: RecordRef<'_>, predicate: &Predicate) -> StoreResult<()> {
        let RecordRef { namespace, id } = record;
        let db = self.db.clone();
        let prefix = record_prefix(namespace, id);
        let predicate = predicate.clone();
        tokio::task::spawn_blocking(move || {
            let txn = db.begin_write().map_err(err)?;
            {
                let mut table = txn.open_table(ITEMS).map_err(err)?;
                let mut doomed = Vec::new();
                Self::scan(&table, &prefix, &predicate, |key, _| {
                    doomed.push(key);
                    Ok(true)
                })?;
                for key in doomed {
                    let mut full = prefix.clone();
                    full.extend_from_slice(&key);
                    table.remove(full.as_slice()).map_err(err)?;
                }
            }
            txn.commit().map_err(err)
        })
        .await
        .map_err(err)?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The fault: a second server on the same working directory said only "Database already
    /// open. Cannot acquire lock.", naming neither the path nor the setting.
    #[test]
    fn a_store_open_elsewhere_is_named_with_its_path_and_setting() {
        let dir = tempfile::tempdir().unwrap();
        let _first = EmbeddedStore::open(dir.path()).unwrap();
        let e = EmbeddedStore::open(dir.path()).err().unwrap().to_string();
        let path = dir.path().join(FILE_NAME);
        assert!(
            e.contains(&path.display().to_string())
                && e.contains("another process")
                && e.contains("store.embedded.path"),
            "{e}"
        );
    }
}
