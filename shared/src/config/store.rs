//! `[store]`: where member features live, and the Redis and Cassandra clients (also used by
//! `[cache]`).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::first_problem;

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
    /// ACL user (Redis 6+). Default none (the `default` user).
    pub username: Option<String>,
    /// A file holding the password (one line; a trailing newline is ignored).
    pub password_file: Option<PathBuf>,
    /// An environment variable holding the password.
    pub password_env: Option<String>,
    /// With `rediss://`: the CA that signed the server's certificate (PEM); default the system's
    /// roots.
    pub tls_ca_file: Option<PathBuf>,
    /// With `rediss://`: a client certificate and key (PEM), for servers that require one
    /// (`tls-auth-clients yes`).
    pub tls_cert_file: Option<PathBuf>,
    pub tls_key_file: Option<PathBuf>,
}

impl Default for RedisConfig {
    fn default() -> Self {
        RedisConfig {
            url: "redis://127.0.0.1:6379/".into(),
            timeout_ms: 20,
            username: None,
            password_file: None,
            password_env: None,
            tls_ca_file: None,
            tls_cert_file: None,
            tls_key_file: None,
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
    /// Password authentication: the user, and the password from a file or an environment
    /// variable. Default none.
    pub username: Option<String>,
    pub password_file: Option<PathBuf>,
    pub password_env: Option<String>,
    /// TLS to the nodes: the CA that signed their certificates (PEM). Setting it turns TLS on.
    pub tls_ca_file: Option<PathBuf>,
    /// A client certificate and key (PEM), for clusters that require one.
    pub tls_cert_file: Option<PathBuf>,
    pub tls_key_file: Option<PathBuf>,
}

impl Default for CassandraConfig {
    fn default() -> Self {
        CassandraConfig {
            contact_points: vec!["127.0.0.1:9042".into()],
            keyspace: "recsys".into(),
            replication: "{'class': 'SimpleStrategy', 'replication_factor': 1}".into(),
            consistency: "LOCAL_QUORUM".into(),
            connect_timeout_ms: 10_000,
            username: None,
            password_file: None,
            password_env: None,
            tls_ca_file: None,
            tls_cert_file: None,
            tls_key_file: None,
        }
    }
}

impl RedisConfig {
    /// Checks the client's secrets and TLS files; `field` is where it sits (`store.redis`).
    pub(super) fn validate(&self, field: &str) -> Result<(), String> {
        if self.password_file.is_some() && self.password_env.is_some() {
            return Err(format!(
                "`{field}.password_file` and `{field}.password_env` are exclusive"
            ));
        }
        if self.tls_cert_file.is_some() != self.tls_key_file.is_some() {
            return Err(format!(
                "`{field}.tls_cert_file` and `{field}.tls_key_file` go together"
            ));
        }
        Ok(())
    }
}

impl StoreConfig {
    pub(super) fn validate(&self) -> Result<(), String> {
        first_problem(vec![
            (
                (1..=1_000_000).contains(&self.history_cap),
                "store.history_cap",
                "must be 1..=1000000",
            ),
            (
                (1..=600_000).contains(&self.read_timeout_ms),
                "store.read_timeout_ms",
                "must be 1..=600000",
            ),
            (
                (1..=600_000).contains(&self.redis.timeout_ms),
                "store.redis.timeout_ms",
                "must be 1..=600000",
            ),
            (
                (1..=600_000).contains(&self.cassandra.connect_timeout_ms),
                "store.cassandra.connect_timeout_ms",
                "must be 1..=600000",
            ),
            (
                self.breaker_failures >= 1,
                "store.breaker_failures",
                "must be at least 1",
            ),
            (
                (1..=3_600_000).contains(&self.breaker_open_ms),
                "store.breaker_open_ms",
                "must be 1..=3600000",
            ),
        ])?;
        self.redis.validate("store.redis")
    }
}
