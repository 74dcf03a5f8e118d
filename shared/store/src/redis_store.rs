//! Redis as a store (as Feast uses it for its online store): state that the nearline workers and the
//! online servers on one machine share without Cassandra.
//!
//! A record is two Redis keys with one hash tag, so a cluster keeps them on one slot: a sorted set
//! of the item keys (all scores 0, ordered by bytes with `ZRANGEBYLEX`) and a hash of item key →
//! token-framed value. Puts and deletes are Lua scripts, atomic per record.
//!
//! With `redis.cluster_nodes` the same store runs on a Redis Cluster ([`Connection::Cluster`]):
//! every command of a record names keys of its one slot, and the batch operations, which pipeline
//! many records on one server, send each record's command on its own instead (the cluster client
//! multiplexes them per node), since a pipeline must not cross slots there.

use std::collections::BTreeMap;
use std::time::Duration;

use async_trait::async_trait;
use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt, TryStreamExt};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClientBuilder;
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Pipeline, RedisFuture, Script, Value};

use super::{
    fill_page, frame, unframe, Item, KvStore, Page, Predicate, RecordRead, RecordRef, RecordWrite,
    RecordsWrite, StoreError, StoreResult,
};
use recsys_shared::config::RedisConfig;
use recsys_shared::secrets::redact_url;

const BACKEND: &str = "redis";
/// Item keys fetched per round trip while filling a page.
const SCAN_BATCH: usize = 256;
/// Records written or read per pipeline by the batch operations.
const RECORDS_PER_PIPELINE: usize = 256;
/// Records of one batch operation in flight at once on a cluster (each its own command).
const RECORDS_IN_FLIGHT: usize = 64;
/// Pipelines of one batch operation in flight at once on the multiplexed connection.
const PIPELINES_IN_FLIGHT: usize = 4;

const PUT_SCRIPT: &str = r#"
local token = ARGV[1]
local function older(stored)
  for i = 1, 16 do
    local a = string.byte(stored, i) or -1
    local b = string.byte(token, i)
    if a ~= b then return a < b end
  end
  return false
end
for i = 2, #ARGV, 2 do
  local current = redis.call('HGET', KEYS[2], ARGV[i])
  if (not current) or older(current) then
    redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 1])
    redis.call('ZADD', KEYS[1], 0, ARGV[i])
  end
end
return 1
"#;

const DELETE_SCRIPT: &str = r#"
local mode = ARGV[1]
if mode == 'all' then
  redis.call('DEL', KEYS[1], KEYS[2])
  return 1
end
local keys
if mode == 'keys' then
  keys = {}
  for i = 2, #ARGV do keys[#keys + 1] = ARGV[i] end
else
  keys = redis.call('ZRANGEBYLEX', KEYS[1], ARGV[2], ARGV[3])
end
for _, key in ipairs(keys) do
  redis.call('HDEL', KEYS[2], key)
  redis.call('ZREM', KEYS[1], key)
end
return #keys
"#;

/// A multiplexed, reconnecting connection to one Redis server or to a Redis Cluster.
#[derive(Clone)]
pub(crate) enum Connection {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl Connection {
    /// Whether commands may only be pipelined within one slot.
    pub(crate) fn is_cluster(&self) -> bool {
        matches!(self, Connection::Cluster(_))
    }
}

impl redis::aio::ConnectionLike for Connection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Connection::Single(c) => c.req_packed_command(cmd),
            Connection::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Connection::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Connection::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Connection::Single(c) => c.get_db(),
            Connection::Cluster(c) => c.get_db(),
        }
    }
}

/// A Redis server or cluster used as the feature store.
#[derive(Clone)]
pub struct RedisStore {
    connection: Connection,
    timeout: Duration,
    put: Script,
    delete: Script,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore").finish_non_exhaustive()
    }
}

/// A client for `config`: the URL, then the ACL user and the password from a file or the
/// environment, and for `rediss://` the CA (and client certificate) from PEM files. Errors name
/// the URL with its password redacted.
pub(crate) fn client(config: &RedisConfig) -> StoreResult<redis::Client> {
    use redis::IntoConnectionInfo;
    recsys_shared::tls::install_crypto_provider();
    let invalid = |field: &'static str, problem: String| StoreError::Invalid { field, problem };
    let mut info = config
        .url
        .as_str()
        .into_connection_info()
        .map_err(|e| invalid("redis.url", format!("{:?}: {e}", redact_url(&config.url))))?;
    let password = config
        .auth
        .password("redis.auth")
        .map_err(|problem| invalid("redis.auth.password", problem))?;
    let mut settings = info.redis_settings().clone();
    if let Some(username) = &config.auth.username {
        settings = settings.set_username(username);
    }
    if let Some(password) = password {
        settings = settings.set_password(password);
    }
    info = info.set_redis_settings(settings);
    match certificates(config)? {
        None => redis::Client::open(info)
            .map_err(|e| invalid("redis.url", format!("{:?}: {e}", redact_url(&config.url)))),
        Some(certificates) => redis::Client::build_with_tls(info, certificates)
            .map_err(|e| invalid("redis.tls", format!("{:?}: {e}", redact_url(&config.url)))),
    }
}

/// The CA and client certificate of `[….redis.tls]` read from their PEM files; `None` when
/// neither is set (a `rediss://` URL then trusts the system's roots). Errors name the field.
fn certificates(config: &RedisConfig) -> StoreResult<Option<redis::TlsCertificates>> {
    if config.tls.ca_file.is_none() && config.tls.cert_file.is_none() {
        return Ok(None);
    }
    let read = |field: &'static str, path: &std::path::Path| {
        std::fs::read(path).map_err(|e| StoreError::Invalid {
            field,
            problem: format!("{}: {e}", path.display()),
        })
    };
    let client_tls = match config.tls.identity() {
        Some((cert, key)) => Some(redis::ClientTlsConfig {
            client_cert: read("redis.tls.cert_file", cert)?,
            client_key: read("redis.tls.key_file", key)?,
        }),
        None => None,
    };
    let root_cert = match &config.tls.ca_file {
        Some(ca) => Some(read("redis.tls.ca_file", ca)?),
        None => None,
    };
    Ok(Some(redis::TlsCertificates {
        client_tls,
        root_cert,
    }))
}

/// Opens a reconnecting, multiplexed connection with the configured timeouts: to the cluster of
/// `cluster_nodes` when they are set, else to the server at `url`.
pub(crate) async fn connect(config: &RedisConfig) -> StoreResult<Connection> {
    if !config.cluster_nodes.is_empty() {
        return connect_cluster(config).await.map(Connection::Cluster);
    }
    let client = client(config)?;
    let timeout = Duration::from_millis(config.timeout_ms);
    let manager_config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(timeout))
        // Every call has its own deadline (`timeout` for one request, longer for a pipeline of
        // many), so the connection itself sets none.
        .set_response_timeout(None)
        .set_number_of_retries(2);
    tokio::time::timeout(
        timeout * 4,
        client.get_connection_manager_with_config(manager_config),
    )
    .await
    .map_err(|_| StoreError::Timeout {
        backend: BACKEND,
        millis: config.timeout_ms * 4,
    })?
    .map(Connection::Single)
    .map_err(|e| StoreError::backend(BACKEND, format!("{}: {e}", redact_url(&config.url))))
}

/// A cluster connection from the seed nodes, with the same credentials and certificates as a
/// single server's.
async fn connect_cluster(config: &RedisConfig) -> StoreResult<ClusterConnection> {
    recsys_shared::tls::install_crypto_provider();
    let invalid = |field: &'static str, problem: String| StoreError::Invalid { field, problem };
    let seeds = || {
        config
            .cluster_nodes
            .iter()
            .map(|n| redact_url(n))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let timeout = Duration::from_millis(config.timeout_ms);
    let mut builder = ClusterClientBuilder::new(config.cluster_nodes.iter().map(String::as_str))
        .connection_timeout(timeout)
        .retries(2);
    if let Some(username) = &config.auth.username {
        builder = builder.username(username);
    }
    let password = config
        .auth
        .password("redis.auth")
        .map_err(|problem| invalid("redis.auth.password", problem))?;
    if let Some(password) = password {
        builder = builder.password(password);
    }
    if let Some(certificates) = certificates(config)? {
        builder = builder.certs(certificates);
    }
    let client = builder
        .build()
        .map_err(|e| invalid("redis.cluster_nodes", format!("{}: {e}", seeds())))?;
    tokio::time::timeout(timeout * 4, client.get_async_connection())
        .await
        .map_err(|_| StoreError::Timeout {
            backend: BACKEND,
            millis: config.timeout_ms * 4,
        })?
        .map_err(|e| StoreError::backend(BACKEND, format!("cluster {}: {e}", seeds())))
}

/// `fut` (a Redis call) under `timeout`; errors name `backend` (the store's or the cache's).
pub(crate) async fn within<T>(
    backend: &'static str,
    timeout: Duration,
    fut: impl std::future::Future<Output = redis::RedisResult<T>>,
) -> StoreResult<T> {
    match tokio::time::timeout(timeout, fut).await {
        Ok(result) => result.map_err(|e| StoreError::backend(backend, e)),
        Err(_) => Err(StoreError::Timeout {
            backend,
            millis: timeout.as_millis() as u64,
        }),
    }
}

/// The time a pipeline of `commands` requests may take: the configured per-request timeout, plus
/// that again for every 64 requests in it (the timeout is set for one request, not a batch).
pub(crate) fn pipeline_timeout(timeout: Duration, commands: usize) -> Duration {
    timeout * (1 + commands / 64) as u32
}

fn record_keys(namespace: &str, id: &str) -> (String, String) {
    // One hash tag for both keys: `{namespace:id}`.
    (
        format!("kv:{{{namespace}:{id}}}:keys"),
        format!("kv:{{{namespace}:{id}}}:values"),
    )
}

/// A record's values hash (`HGETALL`) as its items, each value unframed.
fn decode_record(
    namespace: &str,
    id: &str,
    record: BTreeMap<Vec<u8>, Vec<u8>>,
) -> StoreResult<Vec<Item>> {
    record
        .into_iter()
        .map(|(key, stored)| {
            let value = unframe(namespace, id, &stored)?.1.to_vec();
            Ok(Item { key, value })
        })
        .collect()
}

/// `ZRANGEBYLEX` bounds of a range predicate.
fn lex_bounds(start: Option<&[u8]>, end: Option<&[u8]>) -> (Vec<u8>, Vec<u8>) {
    let low = match start {
        Some(s) => [b"[".as_slice(), s].concat(),
        None => b"-".to_vec(),
    };
    let high = match end {
        Some(e) => [b"(".as_slice(), e].concat(),
        None => b"+".to_vec(),
    };
    (low, high)
}

impl RedisStore {
    /// Connects to `config.url`.
    pub async fn connect(config: &RedisConfig) -> StoreResult<Self> {
        Ok(RedisStore {
            connection: connect(config).await?,
            timeout: Duration::from_millis(config.timeout_ms),
            put: Script::new(PUT_SCRIPT),
            delete: Script::new(DELETE_SCRIPT),
        })
    }

    /// The put script for one record: its two keys, the token, then key/framed-value pairs.
    fn put_invocation(&self, write: RecordWrite<'_>) -> redis::ScriptInvocation<'_> {
        let (namespace, id, items, token) = (write.namespace, write.id, write.items, write.token);
        let (keys, values) = record_keys(namespace, id);
        let mut invocation = self.put.prepare_invoke();
        invocation
            .key(keys)
            .key(values)
            .arg(token.to_bytes().as_slice());
        for item in items {
            invocation
                .arg(item.key.as_slice())
                .arg(frame(token, &item.value));
        }
        invocation
    }

    async fn run<T>(
        &self,
        fut: impl std::future::Future<Output = redis::RedisResult<T>>,
    ) -> StoreResult<T> {
        self.run_within(self.timeout, fut).await
    }

    async fn run_within<T>(
        &self,
        timeout: Duration,
        fut: impl std::future::Future<Output = redis::RedisResult<T>>,
    ) -> StoreResult<T> {
        within(BACKEND, timeout, fut).await
    }
}

#[async_trait]
impl KvStore for RedisStore {
    fn backend(&self) -> &'static str {
        BACKEND
    }

    async fn write_items(&self, write: RecordWrite<'_>) -> StoreResult<()> {
        let invocation = self.put_invocation(write);
        let mut connection = self.connection.clone();
        self.run(invocation.invoke_async::<i64>(&mut connection))
            .await
            .map(|_| ())
    }

    async fn write_records(&self, write: RecordsWrite<'_>) -> StoreResult<()> {
        let RecordsWrite {
            namespace,
            records,
            token,
        } = write;
        if self.connection.is_cluster() {
            // Each record its own script call (its keys share one slot), many in flight.
            let puts: Vec<BoxFuture<'_, StoreResult<()>>> = records
                .iter()
                .filter(|(_, items)| !items.is_empty())
                .map(|(id, items)| {
                    self.write_items(RecordWrite {
                        namespace,
                        id,
                        items,
                        token,
                    })
                })
                .collect();
            return futures::stream::iter(puts)
                .buffer_unordered(RECORDS_IN_FLIGHT)
                .try_collect::<Vec<()>>()
                .await
                .map(|_| ());
        }
        // One pipeline per chunk of records: one write and one read on the socket for the chunk,
        // instead of one round trip per record. Each record is still its own atomic script. The
        // script is (re)loaded at the head of every pipeline, so a restarted Redis that lost its
        // script cache costs nothing.
        let pipelines = records
            .chunks(RECORDS_PER_PIPELINE)
            .map(|chunk| {
                let mut pipe = redis::pipe();
                pipe.load_script(&self.put).ignore();
                for (id, items) in chunk.iter().filter(|(_, items)| !items.is_empty()) {
                    pipe.invoke_script(&self.put_invocation(RecordWrite {
                        namespace,
                        id,
                        items,
                        token,
                    }))
                    .ignore();
                }
                pipe
            })
            .collect::<Vec<_>>();
        let runs: Vec<BoxFuture<'_, StoreResult<()>>> = pipelines
            .iter()
            .zip(records.chunks(RECORDS_PER_PIPELINE))
            .map(|(pipe, chunk)| {
                let mut connection = self.connection.clone();
                let timeout = pipeline_timeout(self.timeout, chunk.len());
                async move {
                    self.run_within(timeout, pipe.query_async::<()>(&mut connection))
                        .await
                }
                .boxed()
            })
            .collect();
        futures::stream::iter(runs)
            .buffer_unordered(PIPELINES_IN_FLIGHT)
            .try_collect::<Vec<()>>()
            .await
            .map(|_| ())
    }

    async fn read_records(&self, namespace: &str, ids: &[String]) -> StoreResult<Vec<Vec<Item>>> {
        // The values hash holds every item of a record, so one HGETALL per record answers it; a
        // pipeline per chunk of records makes that one round trip per chunk.
        type Records = StoreResult<Vec<Vec<Item>>>;
        if self.connection.is_cluster() {
            // Each record its own HGETALL, many in flight, answers in order.
            let reads: Vec<BoxFuture<'_, StoreResult<Vec<Item>>>> = ids
                .iter()
                .map(|id| {
                    let mut connection = self.connection.clone();
                    async move {
                        let record: BTreeMap<Vec<u8>, Vec<u8>> = self
                            .run(
                                redis::cmd("HGETALL")
                                    .arg(record_keys(namespace, id).1)
                                    .query_async(&mut connection),
                            )
                            .await?;
                        decode_record(namespace, id, record)
                    }
                    .boxed()
                })
                .collect();
            return futures::stream::iter(reads)
                .buffered(RECORDS_IN_FLIGHT)
                .try_collect()
                .await;
        }
        let runs: Vec<BoxFuture<'_, Records>> = ids
            .chunks(RECORDS_PER_PIPELINE)
            .map(|chunk| {
                let mut pipe = redis::pipe();
                for id in chunk {
                    pipe.cmd("HGETALL").arg(record_keys(namespace, id).1);
                }
                let mut connection = self.connection.clone();
                async move {
                    let records: Vec<BTreeMap<Vec<u8>, Vec<u8>>> = self
                        .run_within(
                            pipeline_timeout(self.timeout, chunk.len()),
                            pipe.query_async(&mut connection),
                        )
                        .await?;
                    chunk
                        .iter()
                        .zip(records)
                        .map(|(id, record)| decode_record(namespace, id, record))
                        .collect::<StoreResult<Vec<Vec<Item>>>>()
                }
                .boxed()
            })
            .collect();
        let chunks: Vec<Vec<Vec<Item>>> = futures::stream::iter(runs)
            .buffered(PIPELINES_IN_FLIGHT)
            .try_collect()
            .await?;
        Ok(chunks.into_iter().flatten().collect())
    }

    async fn read_items(&self, read: RecordRead<'_>) -> StoreResult<Page> {
        let (namespace, id, page) = (read.namespace, read.id, read.page);
        let predicate = read.remaining();
        let (keys_key, values_key) = record_keys(namespace, id);
        let mut connection = self.connection.clone();
        let mut out = Page::default();
        let mut used = 0;

        let decode = |keys: Vec<Vec<u8>>, stored: Vec<Option<Vec<u8>>>| -> StoreResult<Vec<Item>> {
            keys.into_iter()
                .zip(stored)
                .filter_map(|(key, value)| value.map(|v| (key, v)))
                .map(|(key, stored)| {
                    let value = unframe(namespace, id, &stored)?.1.to_vec();
                    Ok(Item { key, value })
                })
                .collect()
        };

        match &predicate {
            Predicate::MatchKeys(keys) => {
                for chunk in Predicate::sorted_keys(keys).chunks(SCAN_BATCH) {
                    let stored: Vec<Option<Vec<u8>>> = self
                        .run(
                            redis::cmd("HMGET")
                                .arg(&values_key)
                                .arg(chunk)
                                .query_async(&mut connection),
                        )
                        .await?;
                    let items = decode(chunk.to_vec(), stored)?;
                    if fill_page(items, page.page_size_bytes, &mut out, &mut used) {
                        break;
                    }
                }
            }
            Predicate::MatchAll | Predicate::MatchRange { .. } => {
                let (mut start, end) = match &predicate {
                    Predicate::MatchRange { start, end } => (start.clone(), end.clone()),
                    _ => (None, None),
                };
                loop {
                    let (low, high) = lex_bounds(start.as_deref(), end.as_deref());
                    let keys: Vec<Vec<u8>> = self
                        .run(
                            redis::cmd("ZRANGEBYLEX")
                                .arg(&keys_key)
                                .arg(low)
                                .arg(high)
                                .arg("LIMIT")
                                .arg(0)
                                .arg(SCAN_BATCH)
                                .query_async(&mut connection),
                        )
                        .await?;
                    if keys.is_empty() {
                        break;
                    }
                    let full_batch = keys.len() == SCAN_BATCH;
                    let mut next = keys.last().cloned().expect("non-empty");
                    next.push(0);
                    let stored: Vec<Option<Vec<u8>>> = self
                        .run(
                            redis::cmd("HMGET")
                                .arg(&values_key)
                                .arg(&keys)
                                .query_async(&mut connection),
                        )
                        .await?;
                    let items = decode(keys, stored)?;
                    if fill_page(items, page.page_size_bytes, &mut out, &mut used) || !full_batch {
                        break;
                    }
                    start = Some(next);
                }
            }
        }
        Ok(out)
    }

    async fn remove_items(&self, record: RecordRef<'_>, predicate: &Predicate) -> StoreResult<()> {
        let RecordRef { namespace, id } = record;
        let (keys_key, values_key) = record_keys(namespace, id);
        let mut invocation = self.delete.prepare_invoke();
        invocation.key(keys_key).key(values_key);
        match predicate {
            Predicate::MatchAll => {
                invocation.arg("all");
            }
            Predicate::MatchKeys(keys) => {
                invocation.arg("keys");
                for key in keys {
                    invocation.arg(key.as_slice());
                }
            }
            Predicate::MatchRange { start, end } => {
                let (low, high) = lex_bounds(start.as_deref(), end.as_deref());
                invocation.arg("range").arg(low).arg(high);
            }
        }
        let mut connection = self.connection.clone();
        self.run(invocation.invoke_async::<i64>(&mut connection))
            .await
            .map(|_| ())
    }
}
