//! The Kafka client settings every tier's clients share: `kafka.brokers`, the librdkafka
//! properties of `kafka.properties`, and the secret properties read from files or the environment
//! (`kafka.secret_files` / `kafka.secret_env`), never printed.
//!
//! It resolves the properties only, as `(name, value)` pairs each tier applies to its own
//! librdkafka client (the nearline workers' consumer and producers, the online tier's impression
//! producer); it must not depend on a Kafka client library.

use crate::config::Config;

/// The properties in the order they are to be applied (later ones win): brokers, then
/// `kafka.properties`, then the secrets. An error names the setting whose secret cannot be read.
pub fn client_properties(config: &Config) -> Result<Vec<(String, String)>, String> {
    let n = &config.kafka;
    let mut properties = vec![("bootstrap.servers".to_string(), n.brokers.clone())];
    properties.extend(n.properties.iter().map(|(k, v)| (k.clone(), v.clone())));
    for (key, path) in &n.secret_files {
        let field = format!("kafka.secret_files.{key}");
        let secret = crate::secrets::resolve(&field, None, Some(path), None)?;
        properties.push((key.clone(), secret.unwrap_or_default()));
    }
    for (key, var) in &n.secret_env {
        let field = format!("kafka.secret_env.{key}");
        let secret = crate::secrets::resolve(&field, None, None, Some(var))?;
        properties.push((key.clone(), secret.unwrap_or_default()));
    }
    Ok(properties)
}
