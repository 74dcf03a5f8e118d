//! Secrets in configuration: read from a file or the environment, never printed.
//!
//! A password may sit inside a URL (`redis://user:password@host/`); every message that names a
//! URL goes through [`redact_url`] first, so logs and errors show where, never with what.

/// `url` with the password of its user-info replaced by `***` (`redis://app:***@host:6379/0`), and
/// the value of every query parameter that may hold a secret too
/// (`redis+unix:///run/redis.sock?pass=***`). A URL without either comes back unchanged.
pub fn redact_url(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        return url.to_string();
    };
    let authority_start = scheme_end + 3;
    let rest = &url[authority_start..];
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = &rest[..authority_end];
    // The last '@' ends the user-info (a password may itself contain '@').
    let redacted = match authority.rfind('@') {
        None => url.to_string(),
        Some(at) => {
            let user_info = &authority[..at];
            let user = match user_info.find(':') {
                Some(colon) => &user_info[..colon],
                // A lone user-info part is the password in `redis://secret@host` for some clients.
                None => "",
            };
            format!("{}{user}:***@{}", &url[..authority_start], &rest[at + 1..])
        }
    };
    redact_query(&redacted)
}

/// Query parameters whose names say they may hold a secret, compared without regard to case
/// (`pass`, `password`, `token`, `secret_key`, `X-Amz-Signature`, …).
fn secret_parameter(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    [
        "pass",
        "pwd",
        "secret",
        "token",
        "key",
        "auth",
        "sig",
        "credential",
    ]
    .iter()
    .any(|word| name.contains(word))
}

fn redact_query(url: &str) -> String {
    let Some(query_start) = url.find('?') else {
        return url.to_string();
    };
    let (head, tail) = url.split_at(query_start + 1);
    let (query, fragment) = match tail.find('#') {
        Some(hash) => tail.split_at(hash),
        None => (tail, ""),
    };
    let pairs: Vec<String> = query
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some((name, _)) if secret_parameter(name) => format!("{name}=***"),
            _ => pair.to_string(),
        })
        .collect();
    format!("{head}{}{fragment}", pairs.join("&"))
}

/// A secret given inline, in a file, or in an environment variable. `field` names the setting in
/// errors; the secret itself never appears in one.
pub fn resolve(
    field: &str,
    inline: Option<&str>,
    file: Option<&std::path::Path>,
    env: Option<&str>,
) -> Result<Option<String>, String> {
    if let Some(path) = file {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("`{field}_file` {}: {e}", path.display()))?;
        // A trailing newline is how editors and `echo` leave it, never part of the secret.
        return Ok(Some(text.trim_end_matches(['\r', '\n']).to_string()));
    }
    if let Some(var) = env {
        return match std::env::var(var) {
            Ok(v) => Ok(Some(v)),
            Err(_) => Err(format!("`{field}_env` names {var}, which is not set")),
        };
    }
    Ok(inline.map(str::to_string))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_in_urls_are_redacted() {
        for (url, expect) in [
            (
                "redis://app:s3cret@cache:6379/0",
                "redis://app:***@cache:6379/0",
            ),
            ("rediss://:s3cret@cache/1", "rediss://:***@cache/1"),
            ("redis://s3cret@cache", "redis://:***@cache"),
            ("redis://a:p@ss@cache/0?x=1", "redis://a:***@cache/0?x=1"),
            ("redis://127.0.0.1:6379/", "redis://127.0.0.1:6379/"),
            (
                "redis+unix:///run/redis.sock?pass=s3cret",
                "redis+unix:///run/redis.sock?pass=***",
            ),
            (
                "unix:///run/redis.sock?db=2&user=app&password=s3cret#x",
                "unix:///run/redis.sock?db=2&user=app&password=***#x",
            ),
            (
                "s3://bucket/p?X-Amz-Signature=s3cret&region=eu",
                "s3://bucket/p?X-Amz-Signature=***&region=eu",
            ),
            ("not a url", "not a url"),
        ] {
            let redacted = redact_url(url);
            assert_eq!(redacted, expect, "{url}");
            assert!(!redacted.contains("s3cret") && !redacted.contains("p@ss"));
        }
    }

    #[test]
    fn secrets_come_from_files_and_the_environment() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("pw");
        std::fs::write(&file, "from-file\n").unwrap();
        assert_eq!(
            resolve("x.password", Some("inline"), Some(&file), None).unwrap(),
            Some("from-file".into())
        );
        assert_eq!(
            resolve("x.password", Some("inline"), None, None).unwrap(),
            Some("inline".into())
        );
        let missing =
            resolve("x.password", None, Some(&dir.path().join("nope")), None).unwrap_err();
        assert!(missing.contains("x.password_file"), "{missing}");
        let unset = resolve(
            "x.password",
            None,
            None,
            Some("RECSYS_TEST_SURELY_UNSET_VAR"),
        )
        .unwrap_err();
        assert!(unset.contains("x.password_env"), "{unset}");
    }
}
