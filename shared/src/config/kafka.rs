//! `[kafka]`: the one Kafka cluster every tier talks to — its brokers, client settings and
//! secrets, and every topic: the member events the nearline workers consume, their dead letters,
//! and the impressions the online tier produces (and nearline consumes with negative feedback on).

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::{first_problem, within};

/// The Kafka cluster and its topics.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaConfig {
    /// Bootstrap servers, `host:port[,host:port…]`. Default `127.0.0.1:9092`.
    pub brokers: String,
    /// The member events (key = member). Default `recsys.events`.
    pub events_topic: String,
    /// Partitions of the events topic (and the impressions topic) when a worker or `produce`
    /// creates it because it does not exist yet; an existing topic is left as it is. The most
    /// workers one group can use. Default 4.
    pub events_partitions: i32,
    /// Where events that cannot be applied go, with the reason in a header.
    /// Default `recsys.events.dead-letter`.
    pub dead_letter_topic: String,
    /// What each Rank and Homepage answer showed (key = member), when `online.impressions` is
    /// enabled. Default `recsys.impressions`.
    pub impressions_topic: String,
    /// Extra librdkafka properties for every client (`security.protocol`, …). Secret ones
    /// (`sasl.password`, `ssl.key.password`, …) are refused here: give them in `secret_files` or
    /// `secret_env`.
    pub properties: BTreeMap<String, String>,
    /// librdkafka properties read from files: property → file (e.g. `"sasl.password" =
    /// "/run/secrets/kafka"`).
    pub secret_files: BTreeMap<String, PathBuf>,
    /// librdkafka properties read from environment variables: property → variable.
    pub secret_env: BTreeMap<String, String>,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        KafkaConfig {
            brokers: "127.0.0.1:9092".into(),
            events_topic: "recsys.events".into(),
            events_partitions: 4,
            dead_letter_topic: "recsys.events.dead-letter".into(),
            impressions_topic: "recsys.impressions".into(),
            properties: BTreeMap::new(),
            secret_files: BTreeMap::new(),
            secret_env: BTreeMap::new(),
        }
    }
}

impl KafkaConfig {
    pub(super) fn validate(&self) -> Result<(), String> {
        within(
            "kafka.events_partitions",
            self.events_partitions,
            1..=10_000,
        )?;
        first_problem(vec![
            (
                !self.brokers.trim().is_empty(),
                "kafka.brokers",
                "must name at least one broker",
            ),
            (
                !self.events_topic.trim().is_empty(),
                "kafka.events_topic",
                "must not be empty",
            ),
            (
                self.events_topic != self.dead_letter_topic,
                "kafka.dead_letter_topic",
                "must differ from kafka.events_topic",
            ),
            (
                !self.impressions_topic.trim().is_empty(),
                "kafka.impressions_topic",
                "must not be empty",
            ),
        ])?;
        for key in self.properties.keys() {
            if key.contains("password") || key.contains("secret") {
                return Err(format!(
                    "`kafka.properties.\"{key}\"` is a secret: give it in `kafka.secret_files` or `kafka.secret_env`, not in the file"
                ));
            }
        }
        Ok(())
    }
}
