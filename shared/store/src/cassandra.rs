//! Cassandra (or ScyllaDB) through the `scylla` driver: the store for a cluster.
//!
//! One table per namespace, `PRIMARY KEY (id, key) WITH CLUSTERING ORDER BY (key ASC)`: a record is
//! a partition and its items are clustering rows in key order. Writes carry `USING TIMESTAMP` from
//! the idempotency token, so Cassandra's own last-write-wins gives the token semantics (a retry
//! writes the same cell with the same timestamp: no change). Every statement is prepared once per
//! namespace and runs at the configured consistency level.
//!
//! No Cassandra server can run on the machines this was built on: this backend compiles and is
//! covered by the conformance suite only where `RECSYS_TEST_CASSANDRA` names a contact point.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use scylla::client::session::Session;
use scylla::client::session_builder::SessionBuilder;
use scylla::statement::prepared::PreparedStatement;
use scylla::statement::Consistency;
use tokio::sync::Mutex;

use super::{
    fill_page, validate_namespace, IdempotencyToken, Item, KvStore, Page, Predicate, RecordRead,
    RecordRef, RecordWrite, StoreError, StoreResult,
};
use recsys_shared::config::CassandraConfig;

const BACKEND: &str = "cassandra";
const SCAN_BATCH: i32 = 256;

fn err(e: impl std::fmt::Display) -> StoreError {
    StoreError::backend(BACKEND, e)
}

/// The prepared statements of one namespace's table.
struct Statements {
    insert: PreparedStatement,
    select_from: PreparedStatement,
    select_between: PreparedStatement,
    select_keys: PreparedStatement,
    delete_all: PreparedStatement,
    delete_from: PreparedStatement,
    delete_between: PreparedStatement,
    delete_keys: PreparedStatement,
}

/// A Cassandra keyspace holding one table per namespace.
pub struct CassandraStore {
    session: Arc<Session>,
    keyspace: String,
    consistency: Consistency,
    statements: Mutex<HashMap<String, Arc<Statements>>>,
}

impl std::fmt::Debug for CassandraStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CassandraStore")
            .field("keyspace", &self.keyspace)
            .finish_non_exhaustive()
    }
}

/// Parses a consistency level name (`LOCAL_QUORUM`, `ONE`, ...).
pub fn parse_consistency(name: &str) -> StoreResult<Consistency> {
    Ok(match name.to_ascii_uppercase().as_str() {
        "ANY" => Consistency::Any,
        "ONE" => Consistency::One,
        "TWO" => Consistency::Two,
        "THREE" => Consistency::Three,
        "QUORUM" => Consistency::Quorum,
        "ALL" => Consistency::All,
        "LOCAL_QUORUM" => Consistency::LocalQuorum,
        "EACH_QUORUM" => Consistency::EachQuorum,
        "LOCAL_ONE" => Consistency::LocalOne,
        other => {
            return Err(StoreError::Invalid {
                field: "store.cassandra.consistency",
                problem: format!(
                    "unknown level {other:?}; use ONE, QUORUM, LOCAL_QUORUM, LOCAL_ONE, ALL, ..."
                ),
            })
        }
    })
}

/// `USING TIMESTAMP` of a token: microseconds, with the nonce breaking ties within a millisecond.
fn write_timestamp(token: IdempotencyToken) -> i64 {
    (token.generation_ms as i64)
        .saturating_mul(1000)
        .saturating_add((token.nonce % 1000) as i64)
}

impl CassandraStore {
    /// Connects to the contact points and creates the keyspace if it does not exist.
    pub async fn connect(config: &CassandraConfig) -> StoreResult<Self> {
        let consistency = parse_consistency(&config.consistency)?;
        if !config
            .keyspace
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_')
            || config.keyspace.is_empty()
        {
            return Err(StoreError::Invalid {
                field: "store.cassandra.keyspace",
                problem: format!("{:?} must be [A-Za-z0-9_]+", config.keyspace),
            });
        }
        let mut builder = SessionBuilder::new().known_nodes(&config.contact_points);
        let password = config
            .auth
            .password("store.cassandra.auth")
            .map_err(|problem| StoreError::Invalid {
                field: "store.cassandra.auth.password",
                problem,
            })?;
        match (&config.auth.username, password) {
            (Some(user), Some(password)) => builder = builder.user(user, password),
            (None, None) => {}
            _ => {
                return Err(StoreError::Invalid {
                    field: "store.cassandra.auth.username",
                    problem: "a username needs a password (password_file or password_env), and the other way round"
                        .into(),
                })
            }
        }
        if let Some(ca) = &config.tls.ca_file {
            let tls = recsys_shared::tls::client_config(ca, config.tls.identity()).map_err(
                |problem| StoreError::Invalid {
                    field: "store.cassandra.tls.ca_file",
                    problem,
                },
            )?;
            builder = builder.tls_context(Some(tls));
        }
        let session = tokio::time::timeout(
            Duration::from_millis(config.connect_timeout_ms),
            builder.build(),
        )
        .await
        .map_err(|_| StoreError::Timeout {
            backend: BACKEND,
            millis: config.connect_timeout_ms,
        })?
        .map_err(|e| err(format!("connecting to {:?}: {e}", config.contact_points)))?;
        session
            .query_unpaged(
                format!(
                    "CREATE KEYSPACE IF NOT EXISTS {} WITH replication = {}",
                    config.keyspace, config.replication
                ),
                &[],
            )
            .await
            .map_err(err)?;
        Ok(CassandraStore {
            session: Arc::new(session),
            keyspace: config.keyspace.clone(),
            consistency,
            statements: Mutex::new(HashMap::new()),
        })
    }

    async fn statements(&self, namespace: &str) -> StoreResult<Arc<Statements>> {
        validate_namespace(namespace)?;
        let mut cache = self.statements.lock().await;
        if let Some(s) = cache.get(namespace) {
            return Ok(s.clone());
        }
        let table = format!("{}.{}", self.keyspace, namespace);
        self.session
            .query_unpaged(
                format!(
                    "CREATE TABLE IF NOT EXISTS {table} (id text, key blob, value blob, \
                     PRIMARY KEY (id, key)) WITH CLUSTERING ORDER BY (key ASC)"
                ),
                &[],
            )
            .await
            .map_err(err)?;
        self.session.await_schema_agreement().await.map_err(err)?;
        let prepare = |cql: String| async move {
            let mut statement = self.session.prepare(cql).await.map_err(err)?;
            statement.set_consistency(self.consistency);
            Ok::<_, StoreError>(statement)
        };
        let statements = Arc::new(Statements {
            insert: prepare(format!(
                "INSERT INTO {table} (id, key, value) VALUES (?, ?, ?) USING TIMESTAMP ?"
            ))
            .await?,
            select_from: prepare(format!(
                "SELECT key, value FROM {table} WHERE id = ? AND key >= ? LIMIT ?"
            ))
            .await?,
            select_between: prepare(format!(
                "SELECT key, value FROM {table} WHERE id = ? AND key >= ? AND key < ? LIMIT ?"
            ))
            .await?,
            select_keys: prepare(format!(
                "SELECT key, value FROM {table} WHERE id = ? AND key IN ?"
            ))
            .await?,
            delete_all: prepare(format!("DELETE FROM {table} WHERE id = ?")).await?,
            delete_from: prepare(format!("DELETE FROM {table} WHERE id = ? AND key >= ?")).await?,
            delete_between: prepare(format!(
                "DELETE FROM {table} WHERE id = ? AND key >= ? AND key < ?"
            ))
            .await?,
            delete_keys: prepare(format!("DELETE FROM {table} WHERE id = ? AND key IN ?")).await?,
        });
        cache.insert(namespace.to_string(), statements.clone());
        Ok(statements)
    }

    async fn rows(
        &self,
        statement: &PreparedStatement,
        values: impl scylla::serialize::row::SerializeRow,
    ) -> StoreResult<Vec<Item>> {
        let result = self
            .session
            .execute_unpaged(statement, values)
            .await
            .map_err(err)?;
        let rows = result.into_rows_result().map_err(err)?;
        rows.rows::<(Vec<u8>, Vec<u8>)>()
            .map_err(err)?
            .map(|row| row.map(|(key, value)| Item { key, value }).map_err(err))
            .collect()
    }
}

#[async_trait]
impl KvStore for CassandraStore {
    fn backend(&self) -> &'static str {
        BACKEND
    }

    async fn write_items(&self, write: RecordWrite<'_>) -> StoreResult<()> {
        let (namespace, id, items, token) = (write.namespace, write.id, write.items, write.token);
        let statements = self.statements(namespace).await?;
        let timestamp = write_timestamp(token);
        let writes = items.iter().map(|item| {
            self.session.execute_unpaged(
                &statements.insert,
                (id, item.key.as_slice(), item.value.as_slice(), timestamp),
            )
        });
        for result in futures::future::join_all(writes).await {
            result.map_err(err)?;
        }
        Ok(())
    }

    async fn read_items(&self, read: RecordRead<'_>) -> StoreResult<Page> {
        let (namespace, id, page) = (read.namespace, read.id, read.page);
        let statements = self.statements(namespace).await?;
        let predicate = read.remaining();
        let mut out = Page::default();
        let mut used = 0;
        match &predicate {
            Predicate::MatchKeys(keys) => {
                for chunk in Predicate::sorted_keys(keys).chunks(SCAN_BATCH as usize) {
                    let mut items = self
                        .rows(&statements.select_keys, (id, chunk.to_vec()))
                        .await?;
                    items.sort();
                    if fill_page(items, page.page_size_bytes, &mut out, &mut used) {
                        break;
                    }
                }
            }
            Predicate::MatchAll | Predicate::MatchRange { .. } => {
                let (mut start, end) = match &predicate {
                    Predicate::MatchRange { start, end } => {
                        (start.clone().unwrap_or_default(), end.clone())
                    }
                    _ => (Vec::new(), None),
                };
                loop {
                    let items = match &end {
                        Some(end) => {
                            self.rows(
                                &statements.select_between,
                                (id, start.as_slice(), end.as_slice(), SCAN_BATCH),
                            )
                            .await?
                        }
                        None => {
                            self.rows(&statements.select_from, (id, start.as_slice(), SCAN_BATCH))
                                .await?
                        }
                    };
                    let full_batch = items.len() == SCAN_BATCH as usize;
                    let Some(last) = items.last() else { break };
                    let mut next = last.key.clone();
                    next.push(0);
                    if fill_page(items, page.page_size_bytes, &mut out, &mut used) || !full_batch {
                        break;
                    }
                    start = next;
                }
            }
        }
        Ok(out)
    }

    async fn remove_items(&self, record: RecordRef<'_>, predicate: &Predicate) -> StoreResult<()> {
        let RecordRef { namespace, id } = record;
        let statements = self.statements(namespace).await?;
        let result = match predicate {
            Predicate::MatchAll => {
                self.session
                    .execute_unpaged(&statements.delete_all, (id,))
                    .await
            }
            Predicate::MatchKeys(keys) => {
                self.session
                    .execute_unpaged(&statements.delete_keys, (id, keys.clone()))
                    .await
            }
            Predicate::MatchRange { start, end } => {
                let start = start.clone().unwrap_or_default();
                match end {
                    Some(end) => {
                        self.session
                            .execute_unpaged(
                                &statements.delete_between,
                                (id, start.as_slice(), end.as_slice()),
                            )
                            .await
                    }
                    None => {
                        self.session
                            .execute_unpaged(&statements.delete_from, (id, start.as_slice()))
                            .await
                    }
                }
            }
        };
        result.map(|_| ()).map_err(err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn consistency_names_parse_and_bad_ones_name_the_field() {
        assert_eq!(
            parse_consistency("local_quorum").unwrap(),
            Consistency::LocalQuorum
        );
        let e = parse_consistency("MOST").unwrap_err().to_string();
        assert!(e.contains("store.cassandra.consistency"), "{e}");
    }

    #[test]
    fn write_timestamps_follow_token_order_within_a_millisecond() {
        let t = |ms, nonce| {
            write_timestamp(IdempotencyToken {
                generation_ms: ms,
                nonce,
            })
        };
        assert!(t(1, 999) < t(2, 0));
        assert_eq!(t(7, 1001), 7001);
    }
}
