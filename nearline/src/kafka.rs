//! The Kafka clients every part of the tier makes (the worker's consumer, the dead-letter and
//! `produce` producers, the admin client that creates topics), configured once from
//! `kafka.brokers` and `kafka.properties`, with secret properties (`sasl.password`, …) read from
//! files or the environment (`kafka.secret_files` / `kafka.secret_env`) and never
//! printed.
//!
//! librdkafka is built with OpenSSL, so `security.protocol` = `SSL` or `SASL_SSL` (with
//! `sasl.mechanism` PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512) works as in any Kafka client.

use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::producer::FutureProducer;
use rdkafka::types::RDKafkaErrorCode;

use recsys_shared::config::Config;

use crate::error::NearlineError;

/// librdkafka properties shared by every client, from the config (secrets included).
pub fn client_config(config: &Config) -> Result<ClientConfig, NearlineError> {
    with_overrides(ClientConfig::new(), config)
}

/// `client` with the brokers, then `kafka.properties` and the secret properties set over whatever
/// the code set, so an operator's setting always wins.
pub fn with_overrides(
    mut client: ClientConfig,
    config: &Config,
) -> Result<ClientConfig, NearlineError> {
    let properties =
        recsys_shared::kafka::client_properties(config).map_err(NearlineError::Secret)?;
    for (key, value) in &properties {
        client.set(key, value);
    }
    // librdkafka logs its configuration only at debug level; keep it that way.
    client.set_log_level(rdkafka::config::RDKafkaLogLevel::Warning);
    Ok(client)
}

/// The producer that writes dead letters: idempotent, acks=all, a record given up after 30 s.
pub fn producer(config: &Config) -> Result<FutureProducer, NearlineError> {
    producer_with_timeout(config, Duration::from_secs(30))
}

/// An idempotent, acks=all producer that gives a record up after `timeout` unacknowledged
/// (`message.timeout.ms`; `kafka.properties` may set it otherwise).
pub fn producer_with_timeout(
    config: &Config,
    timeout: Duration,
) -> Result<FutureProducer, NearlineError> {
    let mut producer_config = ClientConfig::new();
    producer_config
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "5")
        .set("message.timeout.ms", timeout.as_millis().to_string());
    Ok(with_overrides(producer_config, config)?.create()?)
}

/// Creates `topics` (name, partitions) unless they exist.
pub async fn ensure_topics(config: &Config, topics: &[(&str, i32)]) -> Result<(), NearlineError> {
    let admin: AdminClient<DefaultClientContext> = client_config(config)?.create()?;
    let new: Vec<NewTopic<'_>> = topics
        .iter()
        .map(|(name, partitions)| NewTopic::new(name, *partitions, TopicReplication::Fixed(1)))
        .collect();
    let results = admin
        .create_topics(
            &new,
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
        )
        .await?;
    for result in results {
        match result {
            Ok(topic) => tracing::info!(%topic, "topic created"),
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => {
                return Err(NearlineError::Kafka(rdkafka::error::KafkaError::AdminOp(
                    code,
                )))
                .inspect_err(|_| tracing::error!(%topic, "topic not created"))
            }
        }
    }
    Ok(())
}

/// The partition count of `topic`, or `None` while the broker does not know it.
pub fn partition_count(config: &Config, topic: &str) -> Result<Option<usize>, NearlineError> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let probe: BaseConsumer = client_config(config)?.create()?;
    let metadata = match probe.fetch_metadata(Some(topic), Duration::from_secs(10)) {
        Ok(m) => m,
        Err(e) => {
            tracing::warn!(error = %e, topic, "topic metadata not available yet");
            return Ok(None);
        }
    };
    Ok(metadata
        .topics()
        .iter()
        .find(|t| t.name() == topic && t.error().is_none())
        .map(|t| t.partitions().len())
        .filter(|n| *n > 0))
}

/// Makes sure `second` has as many partitions as `first` (creating it with that many if it does
/// not exist), so that one worker owns a member on both topics; waits up to a minute for `first`
/// to exist. A mismatch is an error naming both topics and counts.
pub async fn ensure_co_partitioned(
    config: &Config,
    first: &str,
    second: &str,
) -> Result<(), NearlineError> {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let partitions = loop {
        if let Some(n) = partition_count(config, first)? {
            break n;
        }
        if std::time::Instant::now() > deadline {
            return Err(NearlineError::CoPartitioning(format!(
                "topic {first} does not exist; create it before starting a worker with feedback enabled"
            )));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    ensure_topics(config, &[(second, partitions as i32)]).await?;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        match partition_count(config, second)? {
            Some(n) if n == partitions => return Ok(()),
            Some(n) => {
                return Err(NearlineError::CoPartitioning(format!(
                    "topic {second} has {n} partitions and {first} has {partitions}: both are keyed by member and must have the same count so one worker owns each member on both"
                )))
            }
            None if std::time::Instant::now() > deadline => {
                return Err(NearlineError::CoPartitioning(format!(
                    "topic {second} could not be created"
                )))
            }
            None => tokio::time::sleep(Duration::from_millis(500)).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::consumer::{BaseConsumer, Consumer};

    /// The fault: `security.protocol=SSL` or `SASL_SSL` failed with "OpenSSL not available at
    /// build time". Creating the clients validates every property locally (no broker needed).
    #[test]
    fn ssl_and_sasl_configurations_are_accepted_and_secrets_read_from_files() {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        // Any readable PEM: librdkafka loads the CA when the client is created.
        let certs = recsys_shared::testkit::TestCertificates::generate();
        std::fs::copy(certs.path("ca.pem"), &ca).unwrap();
        let password = dir.path().join("kafka-password");
        std::fs::write(&password, "from-a-file\n").unwrap();
        for protocol in ["SSL", "SASL_SSL"] {
            let mut config = Config::default();
            config.kafka.brokers = "127.0.0.1:1".into();
            config
                .kafka
                .properties
                .insert("security.protocol".into(), protocol.into());
            config
                .kafka
                .properties
                .insert("ssl.ca.location".into(), ca.display().to_string());
            if protocol == "SASL_SSL" {
                config
                    .kafka
                    .properties
                    .insert("sasl.mechanism".into(), "SCRAM-SHA-512".into());
                config
                    .kafka
                    .properties
                    .insert("sasl.username".into(), "recsys".into());
                config
                    .kafka
                    .secret_files
                    .insert("sasl.password".into(), password.clone());
            }
            let client = client_config(&config).unwrap();
            if protocol == "SASL_SSL" {
                assert_eq!(client.get("sasl.password"), Some("from-a-file"));
            }
            let consumer: Result<BaseConsumer, _> = client.clone().set("group.id", "g").create();
            assert!(consumer.is_ok(), "{protocol}: {:?}", consumer.err());
            consumer.unwrap().unsubscribe();
            assert!(producer(&config).is_ok(), "{protocol}");
        }
        let mut missing = Config::default();
        missing
            .kafka
            .secret_files
            .insert("sasl.password".into(), dir.path().join("nope"));
        let e = client_config(&missing).err().unwrap().to_string();
        assert!(e.contains("kafka.secret_files.sasl.password_file"), "{e}");
    }
}
