//! # recsys-store — the feature store
//!
//! The key-value data abstraction every tier reads and writes member features through, after
//! Netflix's Key-Value Data Abstraction Layer.
//!
//! Data is organised as **namespace → id → sorted map of key bytes → value bytes**. A namespace is
//! one kind of record (`member_vector`, `member_history`); an id is one member; the sorted map lets a
//! record hold many items (a history keyed by timestamp) read back in key order, a range at a time,
//! and paginated by bytes rather than by count, so a page never grows past what a caller budgets.
//!
//! Every write carries an [`IdempotencyToken`] — a generation time plus a random nonce. Items are
//! last-writer-wins by token: a put applies to an item only when its token is newer than the one the
//! item was last written with, so a retried put (same token) changes nothing and a late retry never
//! overwrites a newer write.
//!
//! Backends: [`EmbeddedStore`] (redb, one process, the default), [`RedisStore`] (state shared between
//! processes on one machine) and [`CassandraStore`] (the `scylla` driver; a cluster). What a tier
//! stores per member is defined once in [`features`] (negative feedback in [`feedback`]); the read-through cache in front of a store is
//! [`cache`].
//!
//! This crate owns the store, its backends (with their TLS and authentication), the cache with its
//! breakers and single flights, and the bulk load of a published model's members ([`bulk`], the
//! one place it reads a model artifact, through `recsys-shared`). It must not know about gRPC or
//! Kafka, and depends on `recsys-shared` only; every tier depends on it.

mod cassandra;
mod embedded;
mod redis_store;

pub mod bulk;
pub mod cache;
pub mod features;
pub mod feedback;
pub mod profiles;

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt, TryStreamExt};

pub use cassandra::CassandraStore;
pub use embedded::EmbeddedStore;
pub use redis_store::RedisStore;

use recsys_shared::config::{StoreBackend, StoreConfig};

/// Result alias of the store.
pub type StoreResult<T> = std::result::Result<T, StoreError>;

/// What can go wrong talking to a store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The request itself is malformed (bad namespace, empty id, ...); retrying will not help.
    #[error("invalid {field}: {problem}")]
    Invalid {
        field: &'static str,
        problem: String,
    },
    /// The backend failed or could not be reached; retrying may help.
    #[error("{backend} store: {message}")]
    Backend {
        backend: &'static str,
        message: String,
    },
    /// The backend did not answer in time.
    #[error("{backend} store: no answer within {millis} ms")]
    Timeout { backend: &'static str, millis: u64 },
    /// Not tried: the store failed repeatedly just before, and its circuit breaker is open.
    #[error(
        "{backend} store: skipped while its circuit breaker is open after consecutive failures"
    )]
    BreakerOpen { backend: &'static str },
    /// An input file (a bulk load's) is unreadable or has a bad line; nothing was written.
    #[error("{path}: {problem}")]
    Input { path: String, problem: String },
    /// Bytes read back do not decode (written by another program, or corrupted).
    #[error("{namespace}/{id}: {problem}")]
    Corrupt {
        namespace: String,
        id: String,
        problem: String,
    },
}

impl StoreError {
    pub(crate) fn backend(backend: &'static str, error: impl fmt::Display) -> Self {
        StoreError::Backend {
            backend,
            message: error.to_string(),
        }
    }
}

/// One entry of a record's sorted map.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Item {
    pub key: Vec<u8>,
    pub value: Vec<u8>,
}

impl Item {
    pub fn new(key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) -> Self {
        Item {
            key: key.into(),
            value: value.into(),
        }
    }

    fn bytes(&self) -> usize {
        self.key.len() + self.value.len()
    }
}

/// Orders writes: generation time, then a nonce that tells apart writers of the same millisecond.
/// A put applies to an item only when its token is greater than the item's current one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct IdempotencyToken {
    /// Milliseconds since the Unix epoch at which the writer generated the data.
    pub generation_ms: u64,
    pub nonce: u64,
}

impl IdempotencyToken {
    /// A fresh token: now, and a random nonce.
    pub fn now() -> Self {
        IdempotencyToken {
            generation_ms: chrono::Utc::now().timestamp_millis().max(0) as u64,
            nonce: rand::random(),
        }
    }

    /// The 16 bytes stored in front of every value (big-endian, so byte order is token order).
    pub fn to_bytes(self) -> [u8; 16] {
        let mut out = [0u8; 16];
        out[..8].copy_from_slice(&self.generation_ms.to_be_bytes());
        out[8..].copy_from_slice(&self.nonce.to_be_bytes());
        out
    }

    pub fn from_bytes(bytes: &[u8]) -> Option<Self> {
        let bytes: &[u8; 16] = bytes.get(..16)?.try_into().ok()?;
        Some(IdempotencyToken {
            generation_ms: u64::from_be_bytes(bytes[..8].try_into().ok()?),
            nonce: u64::from_be_bytes(bytes[8..].try_into().ok()?),
        })
    }
}

/// Which items of a record an operation concerns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Predicate {
    /// Every item.
    MatchAll,
    /// These keys (absent ones are skipped).
    MatchKeys(Vec<Vec<u8>>),
    /// Keys in `[start, end)`; `None` is unbounded on that side.
    MatchRange {
        start: Option<Vec<u8>>,
        end: Option<Vec<u8>>,
    },
}

impl Predicate {
    /// Whether `key` is selected.
    pub fn matches(&self, key: &[u8]) -> bool {
        match self {
            Predicate::MatchAll => true,
            Predicate::MatchKeys(keys) => keys.iter().any(|k| k == key),
            Predicate::MatchRange { start, end } => {
                start.as_deref().is_none_or(|s| key >= s) && end.as_deref().is_none_or(|e| key < e)
            }
        }
    }

    /// The same predicate restricted to keys strictly after `after` (how a next-page token resumes).
    pub fn after(&self, after: Option<&[u8]>) -> Predicate {
        let Some(after) = after else {
            return self.clone();
        };
        // The smallest key greater than `after` is `after` followed by a zero byte.
        let mut successor = after.to_vec();
        successor.push(0);
        match self {
            Predicate::MatchAll => Predicate::MatchRange {
                start: Some(successor),
                end: None,
            },
            Predicate::MatchKeys(keys) => Predicate::MatchKeys(
                keys.iter()
                    .filter(|k| k.as_slice() > after)
                    .cloned()
                    .collect(),
            ),
            Predicate::MatchRange { start, end } => Predicate::MatchRange {
                start: Some(match start {
                    Some(s) if *s > successor => s.clone(),
                    _ => successor,
                }),
                end: end.clone(),
            },
        }
    }

    /// Sorted, de-duplicated keys of a `MatchKeys`.
    pub(crate) fn sorted_keys(keys: &[Vec<u8>]) -> Vec<Vec<u8>> {
        let mut keys = keys.to_vec();
        keys.sort();
        keys.dedup();
        keys
    }
}

/// How much of a record one `get_items` returns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PageRequest {
    /// Budget of key + value bytes per page. A page always holds at least one item when any match,
    /// even one larger than the budget.
    pub page_size_bytes: usize,
    /// `next_page_token` of the previous page, or `None` for the first page.
    pub page_token: Option<Vec<u8>>,
}

impl Default for PageRequest {
    fn default() -> Self {
        PageRequest {
            page_size_bytes: DEFAULT_PAGE_BYTES,
            page_token: None,
        }
    }
}

impl PageRequest {
    pub fn first(page_size_bytes: usize) -> Self {
        PageRequest {
            page_size_bytes,
            page_token: None,
        }
    }
}

/// Default page budget: 1 MiB.
pub const DEFAULT_PAGE_BYTES: usize = 1 << 20;

/// One page of a record, in key order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Page {
    pub items: Vec<Item>,
    /// Pass back in [`PageRequest::page_token`] for the next page; `None` on the last page.
    pub next_page_token: Option<Vec<u8>>,
}

/// Fills a page from items already in key order, stopping at the byte budget. `more` says whether
/// the source holds matching items past `items`.
pub(crate) fn fill_page(
    items: impl IntoIterator<Item = Item>,
    budget: usize,
    page: &mut Page,
    used: &mut usize,
) -> bool {
    for item in items {
        if !page.items.is_empty() && *used + item.bytes() > budget {
            page.next_page_token = page.items.last().map(|i| i.key.clone());
            return true;
        }
        *used += item.bytes();
        page.items.push(item);
    }
    false
}

/// One record of a namespace, as a backend receives it: both names checked.
#[derive(Debug, Clone, Copy)]
pub struct RecordRef<'a> {
    pub namespace: &'a str,
    pub id: &'a str,
}

/// One page of one record to read, as a backend receives it: both names checked.
#[derive(Debug, Clone, Copy)]
pub struct RecordRead<'a> {
    pub namespace: &'a str,
    pub id: &'a str,
    pub predicate: &'a Predicate,
    pub page: &'a PageRequest,
}

impl RecordRead<'_> {
    /// What the page asks for: the predicate, past the page token's key.
    pub fn remaining(&self) -> Predicate {
        self.predicate.after(self.page.page_token.as_deref())
    }
}

/// One record's write as a backend receives it: the arguments checked, `items` not empty.
#[derive(Debug, Clone, Copy)]
pub struct RecordWrite<'a> {
    pub namespace: &'a str,
    pub id: &'a str,
    pub items: &'a [Item],
    pub token: IdempotencyToken,
}

/// Many records written with one token, as a backend receives them: every record checked.
#[derive(Debug, Clone, Copy)]
pub struct RecordsWrite<'a> {
    pub namespace: &'a str,
    pub records: &'a [(String, Vec<Item>)],
    pub token: IdempotencyToken,
}

/// The key-value data abstraction. Implementations are safe to share between tasks.
#[async_trait]
pub trait KvStore: Send + Sync + 'static {
    /// Short backend name for logs and metrics (`embedded`, `redis`, `cassandra`).
    fn backend(&self) -> &'static str;

    /// Writes items into record `id` of `namespace`, last-writer-wins per item by `token`. The
    /// arguments are checked here, once for every backend (namespace, id, no empty key); an empty
    /// list writes nothing.
    async fn put_items(
        &self,
        namespace: &str,
        id: &str,
        items: &[Item],
        token: IdempotencyToken,
    ) -> StoreResult<()> {
        validate_put(namespace, id, items)?;
        if items.is_empty() {
            return Ok(());
        }
        self.write_items(RecordWrite {
            namespace,
            id,
            items,
            token,
        })
        .await
    }

    /// Writes many records with one token (bulk loads, a nearline batch), each checked as
    /// [`KvStore::put_items`] checks one before any is written.
    async fn put_records(
        &self,
        namespace: &str,
        records: &[(String, Vec<Item>)],
        token: IdempotencyToken,
    ) -> StoreResult<()> {
        for (id, items) in records {
            validate_put(namespace, id, items)?;
        }
        self.write_records(RecordsWrite {
            namespace,
            records,
            token,
        })
        .await
    }

    /// The backend's write of one record, called with checked, non-empty arguments.
    async fn write_items(&self, write: RecordWrite<'_>) -> StoreResult<()>;

    /// The backend's write of many checked records. Backends batch where they can; the default
    /// writes a few records at a time concurrently.
    async fn write_records(&self, write: RecordsWrite<'_>) -> StoreResult<()> {
        let puts: Vec<BoxFuture<'_, StoreResult<()>>> = write
            .records
            .iter()
            .filter(|(_, items)| !items.is_empty())
            .map(|(id, items)| {
                self.write_items(RecordWrite {
                    namespace: write.namespace,
                    id,
                    items,
                    token: write.token,
                })
            })
            .collect();
        futures::stream::iter(puts)
            .buffer_unordered(RECORDS_IN_FLIGHT)
            .try_collect::<Vec<()>>()
            .await
            .map(|_| ())
    }

    /// Reads every item of many records of `namespace` at once (a batch of members): one `Vec` per
    /// id, in the order of `ids`, each in key order; a record that does not exist reads as empty.
    /// There is no page budget, so this is for records the caller keeps bounded (a capped
    /// history). Backends answer in one round trip where they can; the default reads the records
    /// page by page, a few at a time.
    async fn get_records(&self, namespace: &str, ids: &[String]) -> StoreResult<Vec<Vec<Item>>> {
        validate_namespace(namespace)?;
        for id in ids {
            validate_id(id)?;
        }
        self.read_records(namespace, ids).await
    }

    /// The backend's read of many checked records; the default reads them page by page, a few
    /// at a time.
    async fn read_records(&self, namespace: &str, ids: &[String]) -> StoreResult<Vec<Vec<Item>>> {
        let reads: Vec<BoxFuture<'_, StoreResult<Vec<Item>>>> = ids
            .iter()
            .map(|id| {
                async move {
                    let mut request = PageRequest::default();
                    let mut items = Vec::new();
                    loop {
                        let read = RecordRead {
                            namespace,
                            id,
                            predicate: &Predicate::MatchAll,
                            page: &request,
                        };
                        let page = self.read_items(read).await?;
                        items.extend(page.items);
                        match page.next_page_token {
                            Some(token) => request.page_token = Some(token),
                            None => return Ok(items),
                        }
                    }
                }
                .boxed()
            })
            .collect();
        futures::stream::iter(reads)
            .buffered(RECORDS_IN_FLIGHT)
            .try_collect()
            .await
    }

    /// Reads the items of record `id` selected by `predicate`, one page at a time in key order. A
    /// record that does not exist reads as empty.
    async fn get_items(
        &self,
        namespace: &str,
        id: &str,
        predicate: &Predicate,
        page: &PageRequest,
    ) -> StoreResult<Page> {
        validate_namespace(namespace)?;
        validate_id(id)?;
        self.read_items(RecordRead {
            namespace,
            id,
            predicate,
            page,
        })
        .await
    }

    /// The backend's read of one page of a checked record.
    async fn read_items(&self, read: RecordRead<'_>) -> StoreResult<Page>;

    /// Deletes the items of record `id` selected by `predicate`.
    async fn delete_items(
        &self,
        namespace: &str,
        id: &str,
        predicate: &Predicate,
    ) -> StoreResult<()> {
        validate_namespace(namespace)?;
        validate_id(id)?;
        self.remove_items(RecordRef { namespace, id }, predicate)
            .await
    }

    /// The backend's delete in one checked record.
    async fn remove_items(&self, record: RecordRef<'_>, predicate: &Predicate) -> StoreResult<()>;
}

/// Records a default [`KvStore::get_records`] or [`KvStore::write_records`] handles concurrently.
const RECORDS_IN_FLIGHT: usize = 32;

/// Reads every page of a record.
pub async fn get_all(
    store: &dyn KvStore,
    namespace: &str,
    id: &str,
    predicate: &Predicate,
) -> StoreResult<Vec<Item>> {
    let mut request = PageRequest::default();
    let mut items = Vec::new();
    loop {
        let page = store.get_items(namespace, id, predicate, &request).await?;
        items.extend(page.items);
        match page.next_page_token {
            Some(token) => request.page_token = Some(token),
            None => return Ok(items),
        }
    }
}

/// Namespaces are table names in Cassandra: 1–48 characters of `[a-z0-9_]`, starting with a letter.
pub fn validate_namespace(namespace: &str) -> StoreResult<()> {
    let ok = !namespace.is_empty()
        && namespace.len() <= 48
        && namespace.starts_with(|c: char| c.is_ascii_lowercase())
        && namespace
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if ok {
        Ok(())
    } else {
        Err(StoreError::Invalid {
            field: "namespace",
            problem: format!(
                "{namespace:?} must be 1-48 characters of [a-z0-9_], starting with a letter"
            ),
        })
    }
}

/// Ids are member or item ids: 1–256 bytes.
pub fn validate_id(id: &str) -> StoreResult<()> {
    if id.is_empty() || id.len() > recsys_shared::ids::MAX_ID_BYTES {
        return Err(StoreError::Invalid {
            field: "id",
            problem: format!(
                "must be 1-{} bytes, got {}",
                recsys_shared::ids::MAX_ID_BYTES,
                id.len()
            ),
        });
    }
    Ok(())
}

/// Checks a put's arguments; shared by every backend.
fn validate_put(namespace: &str, id: &str, items: &[Item]) -> StoreResult<()> {
    validate_namespace(namespace)?;
    validate_id(id)?;
    if items.iter().any(|i| i.key.is_empty()) {
        return Err(StoreError::Invalid {
            field: "key",
            problem: "item keys must not be empty".into(),
        });
    }
    Ok(())
}

/// A stored value: the token it was written with, then the caller's bytes.
pub(crate) fn frame(token: IdempotencyToken, value: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 + value.len());
    out.extend_from_slice(&token.to_bytes());
    out.extend_from_slice(value);
    out
}

/// Splits a stored value into its token and the caller's bytes.
pub(crate) fn unframe<'a>(
    namespace: &str,
    id: &str,
    stored: &'a [u8],
) -> StoreResult<(IdempotencyToken, &'a [u8])> {
    match IdempotencyToken::from_bytes(stored) {
        Some(token) => Ok((token, &stored[16..])),
        None => Err(StoreError::Corrupt {
            namespace: namespace.into(),
            id: id.into(),
            problem: format!(
                "stored value of {} bytes has no idempotency token",
                stored.len()
            ),
        }),
    }
}

/// Opens the backend the configuration names.
pub async fn open(config: &StoreConfig) -> StoreResult<Arc<dyn KvStore>> {
    Ok(match config.backend {
        StoreBackend::Embedded => Arc::new(EmbeddedStore::open(&config.embedded.path)?),
        StoreBackend::Redis => Arc::new(RedisStore::connect(&config.redis).await?),
        StoreBackend::Cassandra => Arc::new(CassandraStore::connect(&config.cassandra).await?),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_order_by_time_then_nonce_and_round_trip() {
        let a = IdempotencyToken {
            generation_ms: 5,
            nonce: u64::MAX,
        };
        let b = IdempotencyToken {
            generation_ms: 6,
            nonce: 0,
        };
        assert!(a < b);
        assert!(a.to_bytes() < b.to_bytes());
        assert_eq!(IdempotencyToken::from_bytes(&b.to_bytes()), Some(b));
        assert_eq!(IdempotencyToken::from_bytes(&[1, 2]), None);
    }

    #[test]
    fn after_resumes_strictly_past_the_last_key() {
        let p = Predicate::MatchAll.after(Some(b"b"));
        assert!(!p.matches(b"b"));
        assert!(p.matches(b"b\0"));
        assert!(p.matches(b"c"));
        let r = Predicate::MatchRange {
            start: Some(b"a".to_vec()),
            end: Some(b"d".to_vec()),
        }
        .after(Some(b"b"));
        assert!(!r.matches(b"b") && r.matches(b"c") && !r.matches(b"d"));
        let k = Predicate::MatchKeys(vec![b"a".to_vec(), b"c".to_vec()]).after(Some(b"a"));
        assert_eq!(k, Predicate::MatchKeys(vec![b"c".to_vec()]));
    }

    #[test]
    fn pages_respect_the_budget_but_never_come_back_empty() {
        let items = vec![Item::new("a", vec![0; 10]), Item::new("b", vec![0; 10])];
        let mut page = Page::default();
        let mut used = 0;
        assert!(fill_page(items.clone(), 5, &mut page, &mut used));
        assert_eq!(page.items.len(), 1, "one oversized item still makes a page");
        assert_eq!(page.next_page_token.as_deref(), Some(&b"a"[..]));
        let mut page = Page::default();
        let mut used = 0;
        assert!(!fill_page(items, 100, &mut page, &mut used));
        assert_eq!(page.items.len(), 2);
        assert_eq!(page.next_page_token, None);
    }

    #[test]
    fn namespaces_are_checked() {
        assert!(validate_namespace("member_vector").is_ok());
        for bad in ["", "Member", "1x", "a-b", &"x".repeat(49)] {
            assert!(validate_namespace(bad).is_err(), "{bad}");
        }
    }
}
