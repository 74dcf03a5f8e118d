//! TLS material: certificates and keys read from PEM files into rustls configurations, for the
//! clients this crate makes (Cassandra) and the operations endpoint. (The Redis client and the
//! gRPC server take PEM bytes themselves.)

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// Makes ring rustls's process-wide provider. Two providers are compiled in (the Cassandra
/// driver's rustls brings aws-lc-rs, the gRPC and Redis TLS use ring), so rustls cannot pick one
/// by itself; clients that take the default (Redis) need this first. Idempotent.
pub fn install_crypto_provider() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // Err means another provider was installed first, which serves as well.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

/// Every certificate in a PEM file; an error names the file.
pub fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("{}: {e}", path.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{}: no PEM certificate in it", path.display()));
    }
    Ok(certs)
}

/// The private key in a PEM file (PKCS#8, PKCS#1 or SEC1).
pub fn private_key(path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| format!("{}: {e}", path.display()))
}

/// A client configuration trusting `ca` (PEM), presenting `cert` and `key` when both are given.
pub fn client_config(
    ca: &Path,
    identity: Option<(&Path, &Path)>,
) -> Result<Arc<rustls::ClientConfig>, String> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in certificates(ca)? {
        roots
            .add(cert)
            .map_err(|e| format!("{}: {e}", ca.display()))?;
    }
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_root_certificates(roots);
    let config = match identity {
        Some((cert, key)) => builder
            .with_client_auth_cert(certificates(cert)?, private_key(key)?)
            .map_err(|e| format!("{}: {e}", cert.display()))?,
        None => builder.with_no_client_auth(),
    };
    Ok(Arc::new(config))
}

/// A server configuration presenting `cert` (chain) and `key`, all from PEM files.
pub fn server_config(cert: &Path, key: &Path) -> Result<Arc<rustls::ServerConfig>, String> {
    server_config_verifying(cert, key, None)
}

/// [`server_config`] that, given `client_ca`, accepts only clients presenting a certificate
/// that CA signed (mutual TLS).
pub fn server_config_verifying(
    cert: &Path,
    key: &Path,
    client_ca: Option<&Path>,
) -> Result<Arc<rustls::ServerConfig>, String> {
    install_crypto_provider();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let builder = match client_ca {
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in certificates(ca)? {
                roots.add(c).map_err(|e| format!("{}: {e}", ca.display()))?;
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            )
            .build()
            .map_err(|e| format!("{}: {e}", ca.display()))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let config = builder
        .with_single_cert(certificates(cert)?, private_key(key)?)
        .map_err(|e| format!("{}: {e}", cert.display()))?;
    Ok(Arc::new(config))
}

/// Checks a server's certificate chain and key the way the TLS stack will use them, so a bad
/// file is refused at start with its name and the cause: no certificate in `cert` (or a key in
/// its place), no key in `key` (empty, or a certificate in its place), or a key that is not the
/// certificate's. Returns the end-entity certificate's validity.
pub fn check_server_identity(cert: &Path, key: &Path) -> Result<Validity, String> {
    let chain = certificates(cert)?;
    let private = private_key(key)?;
    let provider = rustls::crypto::ring::default_provider();
    rustls::sign::CertifiedKey::from_der(chain.clone(), private, &provider).map_err(|e| {
        format!(
            "{} does not go with the certificate in {}: {e}",
            key.display(),
            cert.display()
        )
    })?;
    validity(&chain[0]).ok_or_else(|| {
        format!(
            "{}: the first certificate's validity cannot be read",
            cert.display()
        )
    })
}

/// Checks a PEM file of CA certificates that client certificates are verified against.
pub fn check_client_roots(ca: &Path) -> Result<(), String> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in certificates(ca)? {
        roots
            .add(cert)
            .map_err(|e| format!("{}: {e}", ca.display()))?;
    }
    rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        Arc::new(rustls::crypto::ring::default_provider()),
    )
    .build()
    .map_err(|e| format!("{}: {e}", ca.display()))?;
    Ok(())
}

/// When a certificate is valid: from and until, in seconds since the epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Validity {
    pub not_before: i64,
    pub not_after: i64,
}

impl Validity {
    /// What is wrong with serving the certificate at `now` (seconds since the epoch), if anything.
    pub fn problem(&self, now: i64) -> Option<String> {
        let at = |t: i64| {
            chrono::DateTime::from_timestamp(t, 0).map_or_else(|| t.to_string(), |d| d.to_rfc3339())
        };
        if now > self.not_after {
            Some(format!(
                "the certificate expired at {}: clients will refuse it",
                at(self.not_after)
            ))
        } else if now < self.not_before {
            Some(format!(
                "the certificate is not valid before {}: clients will refuse it",
                at(self.not_before)
            ))
        } else {
            None
        }
    }
}

/// The validity of a DER certificate (X.509 `tbsCertificate.validity`); `None` when it cannot be
/// read.
pub fn validity(cert: &[u8]) -> Option<Validity> {
    let (0x30, certificate, _) = der_element(cert)? else {
        return None;
    };
    let (0x30, tbs, _) = der_element(certificate)? else {
        return None;
    };
    // [0] version (optional), serialNumber, signature, issuer, then validity.
    let (tag, _, mut rest) = der_element(tbs)?;
    let skip = if tag == 0xa0 { 3 } else { 2 };
    for _ in 0..skip {
        rest = der_element(rest)?.2;
    }
    let (0x30, validity, _) = der_element(rest)? else {
        return None;
    };
    let (before_tag, before, rest) = der_element(validity)?;
    let (after_tag, after, _) = der_element(rest)?;
    Some(Validity {
        not_before: der_time(before_tag, before)?,
        not_after: der_time(after_tag, after)?,
    })
}

/// One DER element of `input`: its tag, its contents and what follows it.
fn der_element(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (first as usize, rest)
    } else {
        let n = (first & 0x7f) as usize;
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n].iter().fold(0usize, |a, &b| (a << 8) | b as usize);
        (len, &rest[n..])
    };
    (rest.len() >= len).then(|| (tag, &rest[..len], &rest[len..]))
}

/// A UTCTime (`YYMMDDHHMMSSZ`, years 1950–2049) or GeneralizedTime (`YYYYMMDDHHMMSSZ`) in seconds
/// since the epoch.
fn der_time(tag: u8, contents: &[u8]) -> Option<i64> {
    let text = std::str::from_utf8(contents).ok()?;
    let full = match tag {
        0x17 => {
            let yy: u32 = text.get(..2)?.parse().ok()?;
            format!("{}{text}", if yy >= 50 { "19" } else { "20" })
        }
        0x18 => text.to_string(),
        _ => return None,
    };
    chrono::NaiveDateTime::parse_from_str(&full, "%Y%m%d%H%M%SZ")
        .ok()
        .map(|t| t.and_utc().timestamp())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validity_is_read_from_utc_and_generalized_times() {
        // SEQUENCE { SEQUENCE { [0] { INTEGER 2 }, INTEGER 1, SEQUENCE {}, SEQUENCE {},
        //   SEQUENCE { UTCTime 261201000000Z, GeneralizedTime 20501231235959Z } } }
        let utc = b"261201000000Z";
        let generalized = b"20501231235959Z";
        let mut times = vec![0x17, utc.len() as u8];
        times.extend_from_slice(utc);
        times.extend_from_slice(&[0x18, generalized.len() as u8]);
        times.extend_from_slice(generalized);
        let mut tbs = vec![0xa0, 3, 0x02, 1, 2, 0x02, 1, 1, 0x30, 0, 0x30, 0];
        tbs.extend_from_slice(&[0x30, times.len() as u8]);
        tbs.extend_from_slice(&times);
        let mut cert = vec![0x30, tbs.len() as u8 + 2, 0x30, tbs.len() as u8];
        cert.extend_from_slice(&tbs);
        let v = validity_of(&cert);
        assert_eq!(v.not_before, 1_796_083_200); // 2026-12-01T00:00:00Z
        assert_eq!(v.not_after, 2_556_143_999); // 2050-12-31T23:59:59Z
        assert_eq!(v.problem(v.not_before + 1), None);
        assert!(v
            .problem(v.not_after + 1)
            .unwrap()
            .contains("expired at 2050-12-31"));
        assert!(v
            .problem(v.not_before - 1)
            .unwrap()
            .contains("not valid before"));
        assert_eq!(validity(&cert[..cert.len() - 3]), None, "a cut certificate");
    }

    fn validity_of(cert: &[u8]) -> Validity {
        validity(cert).expect("the validity is read")
    }
}
