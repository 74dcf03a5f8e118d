//! API keys: every call carries `authorization: Bearer <key>` (or `x-api-key: <key>`), and each
//! configured key may call a set of RPCs (`online.auth`).
//!
//! The check runs in the admission layer, before a request takes a slot or is decoded: it is the
//! only place that sees the method's path, which tonic's per-service interceptors do not. Keys are
//! read from files or the environment at start, kept only as SHA-256 digests and compared in
//! constant time; logs and metrics name the caller by the key's configured name, never the key.

use std::collections::HashSet;
use std::sync::LazyLock;

use prometheus::{register_int_counter_vec, IntCounterVec};
use recsys_shared::config::AuthConfig;
use sha2::{Digest, Sha256};
use tonic::codegen::http::HeaderMap;
use tonic::Status;

/// Refused calls by reason (`missing`, `unknown_key`, `rpc_not_allowed`).
pub static AUTH_FAILURES: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "recsys_auth_failures_total",
        "Calls refused by the API-key check, by reason",
        &["reason"]
    )
    .expect("registers once")
});

/// Authenticated calls by the caller's configured name.
pub static CALLERS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "recsys_rpc_callers_total",
        "Authenticated calls by API-key name",
        &["caller"]
    )
    .expect("registers once")
});

struct Key {
    name: String,
    digest: [u8; 32],
    /// `None`: every RPC.
    rpcs: Option<HashSet<String>>,
}

/// The configured keys.
pub struct ApiKeys {
    keys: Vec<Key>,
    health_requires_key: bool,
}

fn digest(key: &[u8]) -> [u8; 32] {
    Sha256::digest(key).into()
}

/// Equality that takes the same time whichever byte differs.
fn same(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl ApiKeys {
    /// The keys of `config`, read from their files or variables; `None` when auth is off. An
    /// error names the key and the setting, never the secret.
    pub fn from_config(config: &AuthConfig) -> Result<Option<ApiKeys>, String> {
        if !config.enabled {
            return Ok(None);
        }
        let mut keys = Vec::with_capacity(config.keys.len());
        for (i, key) in config.keys.iter().enumerate() {
            let field = format!("online.auth.keys[{i}].key");
            let secret = recsys_shared::secrets::resolve(
                &field,
                None,
                key.key_file.as_deref(),
                key.key_env.as_deref(),
            )?
            .ok_or_else(|| format!("`{field}_file` or `{field}_env` is required"))?;
            if secret.len() < 16 {
                return Err(format!(
                    "{field} ({}) is shorter than 16 characters; use a random key",
                    key.name
                ));
            }
            keys.push(Key {
                name: key.name.clone(),
                digest: digest(secret.as_bytes()),
                rpcs: (!key.rpcs.is_empty()).then(|| key.rpcs.iter().cloned().collect()),
            });
        }
        Ok(Some(ApiKeys {
            keys,
            health_requires_key: config.health_requires_key,
        }))
    }

    /// The caller's name when the call may go ahead; `UNAUTHENTICATED` without a known key,
    /// `PERMISSION_DENIED` when the key may not call `rpc`.
    pub fn check(&self, rpc: &str, headers: &HeaderMap) -> Result<Option<&str>, Status> {
        if rpc == "Health" && !self.health_requires_key {
            return Ok(None);
        }
        let Some(presented) = presented_key(headers) else {
            AUTH_FAILURES.with_label_values(&["missing"]).inc();
            return Err(Status::unauthenticated(
                "an API key is required: `authorization: Bearer <key>` or `x-api-key: <key>`",
            ));
        };
        let Some(key) = self.find(presented) else {
            AUTH_FAILURES.with_label_values(&["unknown_key"]).inc();
            return Err(Status::unauthenticated("the API key is not valid"));
        };
        if key.rpcs.as_ref().is_some_and(|rpcs| !rpcs.contains(rpc)) {
            AUTH_FAILURES.with_label_values(&["rpc_not_allowed"]).inc();
            return Err(Status::permission_denied(format!(
                "API key {:?} may not call {rpc}",
                key.name
            )));
        }
        CALLERS.with_label_values(&[&key.name]).inc();
        Ok(Some(&key.name))
    }
}

impl ApiKeys {
    /// The key `presented` is, compared with every configured key so that the time does not
    /// tell which one (if any) matched.
    fn find(&self, presented: &str) -> Option<&Key> {
        let presented = digest(presented.trim().as_bytes());
        let mut found = None;
        for key in &self.keys {
            if same(&key.digest, &presented) {
                found = Some(key);
            }
        }
        found
    }

    /// Who holds `presented` and which of `rpcs` it may call, or `None` for an unknown key
    /// (counted as `unknown_key`). For callers that keep a session rather than checking a
    /// header on every request (the console's login).
    pub fn identify(&self, presented: &str, rpcs: &[&str]) -> Option<(String, Vec<bool>)> {
        let Some(key) = self.find(presented) else {
            AUTH_FAILURES.with_label_values(&["unknown_key"]).inc();
            return None;
        };
        let may = rpcs
            .iter()
            .map(|rpc| {
                key.rpcs
                    .as_ref()
                    .is_none_or(|allowed| allowed.contains(*rpc))
            })
            .collect();
        Some((key.name.clone(), may))
    }
}

/// The key a call carries: `authorization: Bearer <key>`, else `x-api-key: <key>`.
pub fn presented_key(headers: &HeaderMap) -> Option<&str> {
    headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(bearer_token)
        .or_else(|| headers.get("x-api-key").and_then(|v| v.to_str().ok()))
}

/// The token of an `authorization` value in the Bearer scheme, whose name HTTP compares without
/// regard to case (RFC 9110 §11.1): `Bearer`, `bearer` and `BEARER` alike.
fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim_start().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim_start())
}

#[cfg(test)]
mod tests {
    use super::*;
    use recsys_shared::config::ApiKeyConfig;
    use tonic::Code;

    fn keys(dir: &std::path::Path) -> ApiKeys {
        let write = |name: &str, key: &str| {
            let path = dir.join(name);
            std::fs::write(&path, format!("{key}\n")).unwrap();
            Some(path)
        };
        ApiKeys::from_config(&AuthConfig {
            enabled: true,
            health_requires_key: false,
            keys: vec![
                ApiKeyConfig {
                    name: "homepage".into(),
                    key_file: write("homepage", "homepage-key-0123456789"),
                    key_env: None,
                    rpcs: vec!["Rank".into(), "Homepage".into()],
                },
                ApiKeyConfig {
                    name: "ops".into(),
                    key_file: write("ops", "ops-key-0123456789abcdef"),
                    key_env: None,
                    rpcs: vec![],
                },
            ],
        })
        .unwrap()
        .unwrap()
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn keys_are_checked_per_rpc() {
        let dir = tempfile::tempdir().unwrap();
        let keys = keys(dir.path());
        let bearer = headers(&[("authorization", "Bearer homepage-key-0123456789")]);
        assert_eq!(keys.check("Rank", &bearer).unwrap(), Some("homepage"));
        let denied = keys.check("SimilarItems", &bearer).unwrap_err();
        assert_eq!(denied.code(), Code::PermissionDenied);
        assert!(
            !denied.message().contains("0123456789"),
            "{}",
            denied.message()
        );
        // The scheme's name is case-insensitive in HTTP.
        for scheme in ["bearer", "BEARER", "bEaReR"] {
            let value = format!("{scheme} homepage-key-0123456789");
            let h = headers(&[("authorization", &value)]);
            assert_eq!(
                keys.check("Rank", &h).unwrap(),
                Some("homepage"),
                "{scheme}"
            );
        }
        let api_key = headers(&[("x-api-key", "ops-key-0123456789abcdef")]);
        assert_eq!(keys.check("Reflection", &api_key).unwrap(), Some("ops"));
        for bad in [
            headers(&[]),
            headers(&[("authorization", "Bearer nope-nope-nope-nope")]),
            headers(&[("authorization", "Basic homepage-key-0123456789")]),
        ] {
            assert_eq!(
                keys.check("Rank", &bad).unwrap_err().code(),
                Code::Unauthenticated
            );
        }
        assert_eq!(keys.check("Health", &headers(&[])).unwrap(), None);
    }

    #[test]
    fn short_or_missing_keys_are_refused_at_start() {
        let dir = tempfile::tempdir().unwrap();
        let short = dir.path().join("short");
        std::fs::write(&short, "abc").unwrap();
        let config = |key_file| AuthConfig {
            enabled: true,
            health_requires_key: false,
            keys: vec![ApiKeyConfig {
                name: "x".into(),
                key_file: Some(key_file),
                key_env: None,
                rpcs: vec![],
            }],
        };
        let e = ApiKeys::from_config(&config(short)).err().unwrap();
        assert!(e.contains("shorter than 16") && !e.contains("abc"), "{e}");
        let e = ApiKeys::from_config(&config(dir.path().join("missing")))
            .err()
            .unwrap();
        assert!(e.contains("online.auth.keys[0].key_file"), "{e}");
    }
}
