//! The configuration file: one TOML document, every field optional with a documented default, and
//! every field overridable from the environment.
//!
//! An environment variable `RECSYS__<SECTION>__<KEY>=<value>` overrides `[section] key` (the path is
//! lower-cased; `__` separates levels, so `RECSYS__OFFLINE__ALS__FACTORS=32` sets
//! `[offline.als] factors = 32`). The value is read as a TOML value when it parses as one (`32`,
//! `0.5`, `true`, `["a"]`) and as a string otherwise. Unknown keys are errors, in the file and in the
//! environment alike, so a typo never silently falls back to a default.

mod cache;
mod feedback;
mod kafka;
mod model;
mod nearline;
mod offline;
mod online;
mod store;

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::{Result, SharedError};

pub use cache::{CacheBackend, CacheConfig};
pub use feedback::{FeedbackConfig, NegativeFoldIn};
pub use kafka::KafkaConfig;
pub use model::ModelConfig;
pub use nearline::NearlineConfig;
pub use offline::{
    AlsConfig, AnnIndexConfig, BallistaConfig, BspmConfig, EaseConfig, Engine, EvaluationConfig,
    FamilyChoice, FeatureConfig, ItemKnnConfig, MemberWeighting, OfflineConfig, Protocol,
    PublishConfig, TuningConfig,
};
pub use online::{
    AnnSearchConfig, ApiKeyConfig, AuthConfig, ConsoleConfig, ImpressionsConfig, ItemFactorsIn,
    MaturityConfig, OnlineConfig, Retrieval, RulesConfig, ScanBatchConfig, ServerTlsConfig,
};
pub use store::{
    CassandraConfig, ClientAuth, ClientTls, EmbeddedConfig, RedisConfig, StoreBackend, StoreConfig,
};

/// Prefix of environment overrides.
pub const ENV_PREFIX: &str = "RECSYS__";

/// The whole configuration.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Where model versions are published.
    pub model: ModelConfig,
    /// The offline tier's jobs.
    pub offline: OfflineConfig,
    /// Where member features live (read by the online tier, written by nearline and load-store).
    pub store: StoreConfig,
    /// The cache in front of the store.
    pub cache: CacheConfig,
    /// The ranking API.
    pub online: OnlineConfig,
    /// The streaming workers.
    pub nearline: NearlineConfig,
    /// The Kafka cluster and every topic, read by the nearline workers and the online tier's
    /// impression log.
    pub kafka: KafkaConfig,
    /// Negative feedback (impressions and explicit negative events), read by every tier.
    pub feedback: FeedbackConfig,
}

/// The first failed check of a section: `(holds, field, why)`.
fn first_problem(checks: Vec<(bool, &str, &str)>) -> std::result::Result<(), String> {
    match checks.into_iter().find(|(ok, _, _)| !ok) {
        Some((_, field, why)) => Err(format!("`{field}` {why}")),
        None => Ok(()),
    }
}

/// `field` must lie in `range`; the message gives the range.
fn within<T: PartialOrd + std::fmt::Display>(
    field: &str,
    value: T,
    range: std::ops::RangeInclusive<T>,
) -> std::result::Result<(), String> {
    if range.contains(&value) {
        return Ok(());
    }
    Err(format!(
        "`{field}` must be {}..={}",
        range.start(),
        range.end()
    ))
}

/// A `[low, high]` search range: finite, ordered, and positive (or non-negative).
fn range_ok([lo, hi]: [f64; 2], positive: bool) -> bool {
    lo.is_finite() && hi.is_finite() && lo <= hi && if positive { lo > 0.0 } else { lo >= 0.0 }
}

/// A listen address must parse as `host:port`.
fn check_address(field: &str, addr: &str) -> std::result::Result<(), String> {
    if addr.parse::<std::net::SocketAddr>().is_err() {
        return Err(format!(
            "`{field}` is {addr:?}, not an address like 127.0.0.1:50051"
        ));
    }
    Ok(())
}

impl Config {
    /// Reads the file (when given) and applies the process environment's overrides.
    pub fn load(file: Option<&Path>) -> Result<Config> {
        Self::load_with_env(file, std::env::vars())
    }

    /// Reads the file (when given) and applies the overrides among `env`.
    pub fn load_with_env(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config> {
        // The defaults as a table, with the file merged over them key by key: a section the file
        // names only in part keeps `Config::default()`'s values for the rest (not the section
        // type's own defaults, which differ where one type serves two roles, as `RedisConfig`
        // does for the store and the cache).
        let mut table =
            toml::Table::try_from(Config::default()).map_err(|e| SharedError::Config {
                origin: "defaults".into(),
                problem: e.to_string(),
            })?;
        let from_file = match file {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|e| SharedError::io(path, e))?;
                let from_file: toml::Table =
                    toml::from_str(&text).map_err(|e| SharedError::Config {
                        origin: path.display().to_string(),
                        problem: e.to_string(),
                    })?;
                Some((from_file, path.display().to_string()))
            }
            None => None,
        };
        let mut overrides: Vec<(String, String)> = env
            .into_iter()
            .filter(|(k, _)| k.starts_with(ENV_PREFIX))
            .collect();
        overrides.sort();
        // Tables that are set whole: naming them in the file or the environment drops the default
        // entries instead of adding to them.
        for path in REPLACED_WHOLE {
            let in_file = from_file
                .as_ref()
                .is_some_and(|(t, _)| lookup(t, path).is_some());
            let prefix = format!("{ENV_PREFIX}{}__", path.join("__").to_uppercase());
            let in_env = overrides.iter().any(|(k, _)| k.starts_with(&prefix));
            if in_file || in_env {
                let (last, parents) = path.split_last().expect("non-empty path");
                if let Some(parent) = lookup_mut(&mut table, parents) {
                    parent.remove(*last);
                }
            }
        }
        let origin = match from_file {
            Some((from_file, origin)) => {
                merge_into(&mut table, from_file);
                origin
            }
            None => "defaults".to_string(),
        };
        for (name, value) in &overrides {
            apply_override(&mut table, name, value)?;
        }
        let origin = if overrides.is_empty() {
            origin
        } else {
            let names: Vec<&str> = overrides.iter().map(|(k, _)| k.as_str()).collect();
            format!("{origin} with {}", names.join(", "))
        };
        let config: Config =
            toml::Value::Table(table)
                .try_into()
                .map_err(|e: toml::de::Error| SharedError::Config {
                    origin: origin.clone(),
                    problem: e.to_string(),
                })?;
        config
            .validate()
            .map_err(|problem| SharedError::Config { origin, problem })?;
        Ok(config)
    }

    /// Checks ranges the types cannot express; the message names the field.
    pub fn validate(&self) -> std::result::Result<(), String> {
        self.model.validate()?;
        self.offline.validate()?;
        self.store.validate()?;
        self.cache.validate()?;
        self.online.validate()?;
        self.nearline.validate()?;
        self.kafka.validate()?;
        self.feedback.validate()?;
        // What one section requires of another.
        first_problem(vec![
            (
                !self.feedback.enabled || self.kafka.impressions_topic != self.kafka.events_topic,
                "feedback.enabled",
                "needs kafka.impressions_topic to differ from kafka.events_topic",
            ),
            (
                self.feedback
                    .negative_event_types
                    .iter()
                    .all(|t| !self.offline.features.event_weights.contains_key(t)),
                "feedback.negative_event_types",
                "must not name an event type that has a weight in offline.features.event_weights",
            ),
        ])
    }
}

/// Tables of the configuration that a file or the environment sets whole, not merged into the
/// defaults (see [`FeatureConfig::event_weights`]).
const REPLACED_WHOLE: &[&[&str]] = &[&["offline", "features", "event_weights"]];

fn lookup<'a>(table: &'a toml::Table, path: &[&str]) -> Option<&'a toml::Value> {
    let (first, rest) = path.split_first()?;
    let value = table.get(*first)?;
    match rest {
        [] => Some(value),
        _ => lookup(value.as_table()?, rest),
    }
}

fn lookup_mut<'a>(table: &'a mut toml::Table, path: &[&str]) -> Option<&'a mut toml::Table> {
    match path.split_first() {
        None => Some(table),
        Some((first, rest)) => lookup_mut(table.get_mut(*first)?.as_table_mut()?, rest),
    }
}

/// Merges `over` into `base`: tables key by key, anything else replaced.
fn merge_into(base: &mut toml::Table, over: toml::Table) {
    for (key, value) in over {
        match (base.get_mut(&key), value) {
            (Some(toml::Value::Table(b)), toml::Value::Table(o)) => merge_into(b, o),
            (_, value) => {
                base.insert(key, value);
            }
        }
    }
}

fn apply_override(table: &mut toml::Table, name: &str, value: &str) -> Result<()> {
    let path: Vec<String> = name[ENV_PREFIX.len()..]
        .split("__")
        .map(str::to_lowercase)
        .collect();
    if path.iter().any(String::is_empty) {
        return Err(SharedError::Config {
            origin: format!("environment variable {name}"),
            problem: "empty path segment".into(),
        });
    }
    let parsed = toml::from_str::<toml::Table>(&format!("v = {value}"))
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(value.to_string()));
    let (last, parents) = path.split_last().expect("non-empty path");
    let mut cursor = table;
    for segment in parents {
        let entry = cursor
            .entry(segment.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        cursor = entry.as_table_mut().ok_or_else(|| SharedError::Config {
            origin: format!("environment variable {name}"),
            problem: format!("`{segment}` is a value, not a section"),
        })?;
    }
    cursor.insert(last.clone(), parsed);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Family;

    /// The error loading the defaults with `pairs` in the environment gives.
    fn refused(pairs: &[(&str, &str)]) -> String {
        Config::load_with_env(None, env(pairs))
            .unwrap_err()
            .to_string()
    }
    use std::path::PathBuf;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn file_then_environment_overrides() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("recsys.toml");
        std::fs::write(
            &file,
            "[model]\nroot = \"/data/models\"\n[offline.als]\nfactors = 16\niterations = 3\n",
        )
        .unwrap();
        let config = Config::load_with_env(
            Some(&file),
            env(&[
                ("RECSYS__OFFLINE__ALS__FACTORS", "32"),
                ("RECSYS__OFFLINE__FEATURES__EVENT_WEIGHTS__PURCHASE", "2.5"),
                ("RECSYS__OFFLINE__FEATURES__EVENT_WEIGHTS__RATING", "1.0"),
                ("RECSYS__MODEL__ROOT", "/elsewhere"),
                ("RECSYS_TEST_CASSANDRA", "ignored"),
            ]),
        )
        .unwrap();
        assert_eq!(config.offline.als.factors, 32);
        assert_eq!(config.offline.als.iterations, 3);
        assert_eq!(config.offline.features.event_weights["purchase"], 2.5);
        assert_eq!(config.model.root, PathBuf::from("/elsewhere"));
    }

    #[test]
    fn the_default_family_is_auto_ease_on_a_catalog_it_fits_ials_beyond() {
        let config = Config::load_with_env(None, env(&[])).unwrap();
        let offline = &config.offline;
        assert_eq!(offline.family, FamilyChoice::Auto);
        let limit = offline.auto_ease_max_items;
        assert_eq!(limit, 50_000);
        let fits = |_: usize| true;
        assert_eq!(offline.family.resolve(limit, limit, fits).0, Family::Ease);
        let (family, why) = offline.family.resolve(limit + 1, limit, fits);
        assert_eq!(family, Family::Ials);
        assert!(why.unwrap().contains("offline.auto_ease_max_items"));
        // Within the limit but not within the memory available: iALS, saying why.
        let (family, why) = offline.family.resolve(1_000, limit, |_| false);
        assert_eq!(family, Family::Ials);
        assert!(why.unwrap().contains("memory"));
        // A family named is the family trained, whatever the catalog.
        let named = Config::load_with_env(
            None,
            env(&[
                ("RECSYS__OFFLINE__FAMILY", "item_knn"),
                ("RECSYS__OFFLINE__AUTO_EASE_MAX_ITEMS", "10"),
            ]),
        )
        .unwrap()
        .offline;
        assert_eq!(named.auto_ease_max_items, 10);
        assert_eq!(
            named.family.resolve(1_000_000, 10, |_| false),
            (Family::ItemKnn, None)
        );
        assert_eq!(FamilyChoice::from(Family::Bspm).name(), "bspm");
        // Written as the name, read back as the choice.
        for choice in [FamilyChoice::Auto, FamilyChoice::Named(Family::ItemKnn)] {
            let text = serde_json::to_string(&choice).unwrap();
            assert_eq!(text, format!("\"{}\"", choice.name()));
            assert_eq!(serde_json::from_str::<FamilyChoice>(&text).unwrap(), choice);
        }
        let unknown = refused(&[("RECSYS__OFFLINE__FAMILY", "slim")]);
        assert!(
            unknown.contains("\"slim\"") && unknown.contains("auto or one of ials"),
            "{unknown}"
        );
    }

    #[test]
    fn a_section_set_in_part_keeps_the_other_defaults_of_its_role() {
        // `RedisConfig` serves the store (250 ms by default) and the cache (20 ms): naming only
        // the store's URL must not give the store the cache's timeout.
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("recsys.toml");
        std::fs::write(&file, "[store.redis]\nurl = \"redis://a:1/\"\n").unwrap();
        let defaults = Config::default();
        for config in [
            Config::load_with_env(Some(&file), env(&[])).unwrap(),
            Config::load_with_env(None, env(&[("RECSYS__STORE__REDIS__URL", "redis://a:1/")]))
                .unwrap(),
        ] {
            assert_eq!(config.store.redis.url, "redis://a:1/");
            assert_eq!(
                config.store.redis.timeout_ms,
                defaults.store.redis.timeout_ms
            );
            assert_eq!(
                config.cache.redis.timeout_ms,
                defaults.cache.redis.timeout_ms
            );
            assert_ne!(
                defaults.store.redis.timeout_ms,
                defaults.cache.redis.timeout_ms
            );
        }
        // Event weights are set whole, by the file or by the environment.
        std::fs::write(
            &file,
            "[offline.features]\nrating_event_type = \"stars\"\n[offline.features.event_weights]\nstars = 1.0\n",
        )
        .unwrap();
        let config = Config::load_with_env(Some(&file), env(&[])).unwrap();
        let weights = |config: &Config| {
            let names = config.offline.features.event_weights.keys();
            names.cloned().collect::<Vec<_>>()
        };
        assert_eq!(weights(&config), ["stars"]);
        let config = Config::load_with_env(
            None,
            env(&[
                ("RECSYS__OFFLINE__FEATURES__EVENT_WEIGHTS__RATING", "1.0"),
                ("RECSYS__OFFLINE__FEATURES__EVENT_WEIGHTS__BUY", "3"),
            ]),
        )
        .unwrap();
        assert_eq!(weights(&config), ["buy", "rating"]);
    }

    #[test]
    fn typos_and_out_of_range_values_name_the_field() {
        let typo = refused(&[("RECSYS__OFFLINE__ALS__FACTOSR", "3")]);
        assert!(
            typo.contains("factosr") && typo.contains("RECSYS__OFFLINE__ALS__FACTOSR"),
            "{typo}"
        );
        let range = refused(&[("RECSYS__OFFLINE__ALS__FACTORS", "0")]);
        assert!(range.contains("offline.als.factors"), "{range}");
        let kind = refused(&[("RECSYS__OFFLINE__ALS__ALPHA", "lots")]);
        assert!(kind.contains("alpha"), "{kind}");
        for (var, value, field) in [
            ("RECSYS__OFFLINE__EASE__LAMBDA", "0", "offline.ease.lambda"),
            ("RECSYS__OFFLINE__EASE__TOP_N", "0", "offline.ease.top_n"),
            (
                "RECSYS__OFFLINE__ITEM_KNN__NEIGHBOURS",
                "0",
                "offline.item_knn.neighbours",
            ),
            (
                "RECSYS__OFFLINE__ITEM_KNN__SHRINK",
                "-1",
                "offline.item_knn.shrink",
            ),
            (
                "RECSYS__OFFLINE__ITEM_KNN__ALPHA",
                "2",
                "offline.item_knn.alpha",
            ),
        ] {
            let e = refused(&[(var, value)]);
            assert!(e.contains(field), "{var}={value}: {e}");
        }
        let family = refused(&[("RECSYS__OFFLINE__FAMILY", "slim")]);
        assert!(
            family.contains("slim") || family.contains("family"),
            "{family}"
        );
    }

    #[test]
    fn redis_and_cassandra_clients_share_one_auth_and_tls_section() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("recsys.toml");
        std::fs::write(
            &file,
            "[store.redis.auth]\nusername = \"recsys\"\npassword_env = \"REDIS_PASSWORD\"\n\
             [store.cassandra.tls]\nca_file = \"/ca.pem\"\n",
        )
        .unwrap();
        let config = Config::load_with_env(
            Some(&file),
            env(&[("RECSYS__CACHE__REDIS__TLS__CA_FILE", "/cache-ca.pem")]),
        )
        .unwrap();
        assert_eq!(config.store.redis.auth.username.as_deref(), Some("recsys"));
        assert_eq!(
            config.store.redis.auth.password_env.as_deref(),
            Some("REDIS_PASSWORD")
        );
        assert_eq!(
            config.store.cassandra.tls.ca_file,
            Some(PathBuf::from("/ca.pem"))
        );
        assert_eq!(
            config.cache.redis.tls.ca_file,
            Some(PathBuf::from("/cache-ca.pem"))
        );
        // A certificate without its key, and both password sources, name the field.
        let cert_alone: &[(&str, &str)] = &[("RECSYS__STORE__CASSANDRA__TLS__CERT_FILE", "/c.pem")];
        let both_passwords: &[(&str, &str)] = &[
            ("RECSYS__CACHE__REDIS__AUTH__PASSWORD_FILE", "/p"),
            ("RECSYS__CACHE__REDIS__AUTH__PASSWORD_ENV", "P"),
        ];
        for (pairs, field) in [
            (cert_alone, "store.cassandra.tls.cert_file"),
            (both_passwords, "cache.redis.auth.password_file"),
        ] {
            let e = refused(pairs);
            assert!(e.contains(field), "{e}");
        }
        // The flat keys of before are refused, naming the key.
        let old = refused(&[("RECSYS__STORE__REDIS__TLS_CA_FILE", "/x")]);
        assert!(old.contains("tls_ca_file"), "{old}");
    }

    #[test]
    fn kafka_is_one_section_every_tier_reads() {
        let config = Config::load_with_env(
            None,
            env(&[
                ("RECSYS__KAFKA__BROKERS", "k1:9092,k2:9092"),
                ("RECSYS__KAFKA__IMPRESSIONS_TOPIC", "shown"),
                ("RECSYS__KAFKA__SECRET_ENV__SASL.PASSWORD", "KAFKA_PASSWORD"),
            ]),
        )
        .unwrap();
        assert_eq!(config.kafka.brokers, "k1:9092,k2:9092");
        assert_eq!(config.kafka.impressions_topic, "shown");
        assert_eq!(config.kafka.events_topic, "recsys.events");
        assert_eq!(config.kafka.secret_env["sasl.password"], "KAFKA_PASSWORD");
        let secret_inline: &[(&str, &str)] = &[("RECSYS__KAFKA__PROPERTIES__SASL.PASSWORD", "x")];
        let same_topic: &[(&str, &str)] = &[("RECSYS__KAFKA__DEAD_LETTER_TOPIC", "recsys.events")];
        let no_partitions: &[(&str, &str)] = &[("RECSYS__KAFKA__EVENTS_PARTITIONS", "0")];
        // The settings that used to sit in [nearline] and [online.impressions] are refused by name.
        let old_brokers: &[(&str, &str)] = &[("RECSYS__NEARLINE__BROKERS", "k:9092")];
        let old_topic: &[(&str, &str)] = &[("RECSYS__ONLINE__IMPRESSIONS__TOPIC", "t")];
        for (pairs, field) in [
            (secret_inline, "kafka.properties.\"sasl.password\""),
            (same_topic, "kafka.dead_letter_topic"),
            (no_partitions, "kafka.events_partitions"),
            (old_brokers, "brokers"),
            (old_topic, "topic"),
        ] {
            let e = refused(pairs);
            assert!(e.contains(field), "{pairs:?}: {e}");
        }
    }

    #[test]
    fn absurd_sizes_and_zero_timeouts_are_refused() {
        for (var, value, field) in [
            (
                "RECSYS__NEARLINE__MAX_BATCH",
                "1000000000000",
                "nearline.max_batch",
            ),
            (
                "RECSYS__FEEDBACK__IMPRESSIONS_TO_HIDE",
                "0",
                "feedback.impressions_to_hide",
            ),
            (
                "RECSYS__ONLINE__MAX_REQUEST_MS",
                "0",
                "online.max_request_ms",
            ),
            ("RECSYS__CACHE__CAPACITY", "0", "cache.capacity"),
            (
                "RECSYS__STORE__HISTORY_CAP",
                "1000000000",
                "store.history_cap",
            ),
            (
                "RECSYS__CACHE__REDIS__TIMEOUT_MS",
                "0",
                "cache.redis.timeout_ms",
            ),
            (
                "RECSYS__ONLINE__MAX_IN_FLIGHT",
                "1000000",
                "online.max_in_flight",
            ),
            (
                "RECSYS__OFFLINE__ANN_INDEX__EXPANSION_ADD",
                "8",
                "offline.ann_index.expansion_add",
            ),
            (
                "RECSYS__OFFLINE__ANN_INDEX__SIMILAR_EXPANSION_ADD",
                "8",
                "offline.ann_index.similar_expansion_add",
            ),
        ] {
            let e = refused(&[(var, value)]);
            assert!(e.contains(field), "{var}={value}: {e}");
        }
    }

    #[test]
    fn bad_rules_and_impression_settings_name_the_field() {
        let cases = [
            (
                "[online.rules]\nboost = { i1 = 0.0 }\n",
                "online.rules.boost.\"i1\"",
            ),
            ("[online.rules]\npin = [\"a\\nb\"]\n", "online.rules.pin"),
            (
                "[online.rules]\npin = [\"i1\"]\nbury = [\"i1\"]\n",
                "online.rules.bury",
            ),
            (
                "[online.impressions]\nsample_rate = 1.5\n",
                "online.impressions.sample_rate",
            ),
            (
                "[online.impressions]\nqueue_capacity = 0\n",
                "online.impressions.queue_capacity",
            ),
            (
                "[kafka]\nimpressions_topic = \"recsys.events\"\n[feedback]\nenabled = true\n",
                "feedback.enabled",
            ),
            (
                "[feedback]\nnegative_event_types = [\"play\"]\n",
                "feedback.negative_event_types",
            ),
            (
                "[online.maturity]\nratings = [\"G\", \"G\"]\n",
                "online.maturity.ratings",
            ),
            (
                "[online.maturity]\nwhen_store_unavailable = \"X\"\n",
                "online.maturity.when_store_unavailable",
            ),
        ];
        let dir = tempfile::tempdir().unwrap();
        for (i, (text, field)) in cases.iter().enumerate() {
            let path = dir.path().join(format!("{i}.toml"));
            std::fs::write(&path, text).unwrap();
            let e = Config::load_with_env(Some(&path), env(&[]))
                .unwrap_err()
                .to_string();
            assert!(e.contains(field), "{text}: {e}");
        }
        let path = dir.path().join("good.toml");
        std::fs::write(
            &path,
            "[online.rules]\npin = [\"i1\"]\nboost = { i2 = 2.5 }\nbury = [\"i3\"]\n",
        )
        .unwrap();
        let config = Config::load_with_env(Some(&path), env(&[])).unwrap();
        assert_eq!(config.online.rules.boost["i2"], 2.5);
    }

    #[test]
    fn defaults_are_valid() {
        assert_eq!(
            Config::load_with_env(None, env(&[])).unwrap(),
            Config::default()
        );
    }
}
