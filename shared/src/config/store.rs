//! `[store]`: where member features live, and the Redis and Cassandra clients (also used by
//! `[cache]`).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::{first_problem, within};

/// Which key-value backend holds member features.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum StoreBackend {
    /// redb in a local directory; one process at a time. The default.
    #[default]
    Embedded,
    /// A Redis server, shared by the processes of one machine.
    Redis,
    /// A Cassandra (or ScyllaDB) cluster.
    Cassandra,
}

impl StoreBackend {
    pub fn name(self) -> &'static str {
        match self {
            StoreBackend::Embedded => "embedded",
            StoreBackend::Redis => "redis",
            StoreBackend::Cassandra => "cassandra",
        }
    }
}

/// The feature store.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// `embedded` (default), `redis` or `cassandra`.
    pub backend: StoreBackend,
    /// The newest history entries kept per member. Default 500.
    pub history_cap: usize,
    /// A read of the store that takes longer fails (the caller degrades). Default 250 ms.
    pub read_timeout_ms: u64,
    /// After this many failed or timed-out reads in a row the store is not read at all (requests
    /// degrade at once)... Default 5.
    pub breaker_failures: u32,
    /// ...for this long; then one read probes it. Default 1000 ms.
    pub breaker_open_ms: u64,
    pub embedded: EmbeddedConfig,
    pub redis: RedisConfig,
    pub cassandra: CassandraConfig,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            backend: StoreBackend::Embedded,
            history_cap: 500,
            read_timeout_ms: 250,
            breaker_failures: 5,
            breaker_open_ms: 1000,
            embedded: EmbeddedConfig::default(),
            redis: RedisConfig {
                timeout_ms: 250,
                ..RedisConfig::default()
            },
            cassandra: CassandraConfig::default(),
        }
    }
}

/// The embedded store's directory.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct EmbeddedConfig {
    /// Default `var/features`.
    pub path: PathBuf,
}

impl Default for EmbeddedConfig {
    fn default() -> Self {
        EmbeddedConfig {
            path: PathBuf::from("var/features"),
        }
    }
}

/// A Redis server.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RedisConfig {
    /// `redis://host:port/db`, or `rediss://` for TLS. A password may be given here
    /// (`redis://user:password@host/`) but is better read from `password_file` or `password_env`;
    /// either way it is never printed.
    pub url: String,
    /// Connect and response timeout of each command.
    pub timeout_ms: u64,
    /// `[….redis.auth]`: the ACL user (Redis 6+; default the `default` user) and its password.
    pub auth: ClientAuth,
    /// `[….redis.tls]`, with `rediss://`: the CA that signed the server's certificate (default
    /// the system's roots) and a client certificate for servers that require one
    /// (`tls-auth-clients yes`).
    pub tls: ClientTls,
    /// Seed nodes of a Redis Cluster (`redis://host:port`, or `rediss://`): when set, the client
    /// is a cluster client that learns the slots from them and follows the cluster as it
    /// changes, and `url` is not used. Default none: one server at `url`.
    pub cluster_nodes: Vec<String>,
}

impl Default for RedisConfig {
    fn default() -> Self {
        RedisConfig {
            url: "redis://127.0.0.1:6379/".into(),
            timeout_ms: 20,
            auth: ClientAuth::default(),
            tls: ClientTls::default(),
            cluster_nodes: Vec::new(),
        }
    }
}

/// A Cassandra cluster.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct CassandraConfig {
    /// `host:port` of one or more nodes. Default `["127.0.0.1:9042"]`.
    pub contact_points: Vec<String>,
    /// Default `recsys`.
    pub keyspace: String,
    /// CQL replication map used when the keyspace is created.
    pub replication: String,
    /// Consistency level of every statement. Default `LOCAL_QUORUM`.
    pub consistency: String,
    pub connect_timeout_ms: u64,
    /// `[store.cassandra.auth]`: password authentication. Default none.
    pub auth: ClientAuth,
    /// `[store.cassandra.tls]`: TLS to the nodes; setting `ca_file` turns it on.
    pub tls: ClientTls,
}

impl Default for CassandraConfig {
    fn default() -> Self {
        CassandraConfig {
            contact_points: vec!["127.0.0.1:9042".into()],
            keyspace: "recsys".into(),
            replication: "{'class': 'SimpleStrategy', 'replication_factor': 1}".into(),
            consistency: "LOCAL_QUORUM".into(),
            connect_timeout_ms: 10_000,
            auth: ClientAuth::default(),
            tls: ClientTls::default(),
        }
    }
}

/// How a client of a store or cache authenticates: a user and the password from a file or an
/// environment variable (never the file itself, and never printed).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ClientAuth {
    pub username: Option<String>,
    /// A file holding the password (one line; a trailing newline is ignored).
    pub password_file: Option<PathBuf>,
    /// An environment variable holding the password.
    pub password_env: Option<String>,
}

impl ClientAuth {
    /// The password, read from its file or variable; `field` names the section in errors.
    pub fn password(&self, field: &str) -> Result<Option<String>, String> {
        crate::secrets::resolve(
            &format!("{field}.password"),
            None,
            self.password_file.as_deref(),
            self.password_env.as_deref(),
        )
    }

    fn validate(&self, field: &str) -> Result<(), String> {
        if self.password_file.is_some() && self.password_env.is_some() {
            return Err(format!(
                "`{field}.password_file` and `{field}.password_env` are exclusive"
            ));
        }
        Ok(())
    }
}

/// TLS from a client to a store or cache: the CA that signed the servers' certificates, and a
/// client certificate and key for servers that require one (PEM files).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ClientTls {
    pub ca_file: Option<PathBuf>,
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
}

impl ClientTls {
    /// The client certificate and key, when both are set.
    pub fn identity(&self) -> Option<(&std::path::Path, &std::path::Path)> {
        self.cert_file.as_deref().zip(self.key_file.as_deref())
    }

    fn validate(&self, field: &str) -> Result<(), String> {
        if self.cert_file.is_some() != self.key_file.is_some() {
            return Err(format!(
                "`{field}.cert_file` and `{field}.key_file` go together"
            ));
        }
        Ok(())
    }
}

impl RedisConfig {
    /// Checks the client's secrets and TLS files; `field` is where it sits (`store.redis`).
    pub(super) fn validate(&self, field: &str) -> Result<(), String> {
        self.auth.validate(&format!("{field}.auth"))?;
        self.tls.validate(&format!("{field}.tls"))
    }
}

impl StoreConfig {
    pub(super) fn validate(&self) -> Result<(), String> {
        within("store.history_cap", self.history_cap, 1..=1_000_000)?;
        within("store.read_timeout_ms", self.read_timeout_ms, 1..=600_000)?;
        within("store.redis.timeout_ms", self.redis.timeout_ms, 1..=600_000)?;
        within(
            "store.cassandra.connect_timeout_ms",
            self.cassandra.connect_timeout_ms,
            1..=600_000,
        )?;
        within("store.breaker_open_ms", self.breaker_open_ms, 1..=3_600_000)?;
        first_problem(vec![(
            self.breaker_failures >= 1,
            "store.breaker_failures",
            "must be at least 1",
        )])?;
        self.redis.validate("store.redis")?;
        self.cassandra.auth.validate("store.cassandra.auth")?;
        self.cassandra.tls.validate("store.cassandra.tls")
    }
}
