//! The Kafka client settings every tier's clients share: `nearline.brokers`, the librdkafka
//! properties of `nearline.kafka`, and the secret properties read from files or the environment
//! (`nearline.kafka_secret_files` / `kafka_secret_env`), never printed.
//!
//! It resolves the properties only, as `(name, value)` pairs each tier applies to its own
//! librdkafka client (the nearline workers' consumer and producers, the online tier's impression
//! producer); it must not depend on a Kafka client library.

use crate::config::Config;

/// The properties in the order they are to be applied (later ones win): brokers, then
/// `nearline.kafka`, then the secrets. An error names the setting whose secret cannot be read.
pub fn client_properties(config: &Config) -> Result<Vec<(String, String)>, String> {
    let n = &config.nearline;
    let mut properties = vec![("bootstrap.servers".to_string(), n.brokers.clone())];
    properties.extend(n.kafka.iter().map(|(k, v)| (k.clone(), v.clone())));
    for (key, path) in &n.kafka_secret_files {
        let field = format!("nearline.kafka_secret_files.{key}");
        let secret = crate::secrets::resolve(&field, None, Some(path), None)?;
        properties.push((key.clone(), secret.unwrap_or_default()));
    }
    for (key, var) in &n.kafka_secret_env {
        let field = format!("nearline.kafka_secret_env.{key}");
        let secret = crate::secrets::resolve(&field, None, None, Some(var))?;
        properties.push((key.clone(), secret.unwrap_or_default()));
    }
    Ok(properties)
}
