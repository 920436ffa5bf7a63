//! Unit tests of TLS settings: loading files, naming the host, recognising a refusal.

use std::{io, sync::Arc};

use super::*;

#[test]
fn host_has_no_credentials_or_path() {
    let endpoint = Endpoint::new("amqps://user:s3cret@broker.example:5671/vhost?heartbeat=5");
    assert_eq!(endpoint.host(), "broker.example:5671");
    assert_eq!(
        Endpoint::new("rediss://127.0.0.1:6380/2").host(),
        "127.0.0.1:6380"
    );
}

#[test]
fn debug_hides_the_password() {
    let endpoint = Endpoint::new("rediss://chorus:s3cret@127.0.0.1:6380");
    let shown = format!("{endpoint:?}");
    assert!(!shown.contains("s3cret"), "{shown}");
    assert!(shown.contains("127.0.0.1:6380"), "{shown}");
}

#[test]
fn tls_files_with_a_plain_url_are_refused() {
    let files = TlsFiles {
        ca: Some("/nonexistent/ca.pem".into()),
        ..TlsFiles::default()
    };
    let error = Endpoint::load("redis://:pw@h:6379".into(), &files, "--redis", "rediss")
        .expect_err("plain URL with a CA");
    assert!(error.contains("rediss://"), "{error}");
    assert!(!error.contains("pw@"), "{error}");
}

#[test]
fn a_certificate_needs_its_key() {
    let files = TlsFiles {
        cert: Some("/nonexistent/client.pem".into()),
        ..TlsFiles::default()
    };
    let error = Endpoint::load("amqps://h:5671".into(), &files, "--amqp", "amqps")
        .expect_err("certificate without key");
    assert!(error.contains("--amqp-tls-key"), "{error}");
}

#[test]
fn a_missing_file_is_named_with_its_flag() {
    let files = TlsFiles {
        ca: Some("/nonexistent/ca.pem".into()),
        ..TlsFiles::default()
    };
    let error = Endpoint::load("amqps://h:5671".into(), &files, "--amqp", "amqps")
        .expect_err("missing CA file");
    assert!(
        error.starts_with("--amqp-tls-ca /nonexistent/ca.pem"),
        "{error}"
    );
}

#[test]
fn a_file_without_pem_is_refused() {
    let path = std::env::temp_dir().join(format!("chorus-tls-{}.pem", std::process::id()));
    std::fs::write(&path, "not a certificate").expect("works");
    let files = TlsFiles {
        ca: Some(path.clone()),
        ..TlsFiles::default()
    };
    let error =
        Endpoint::load("rediss://h:6380".into(), &files, "--redis", "rediss").expect_err("not PEM");
    std::fs::remove_file(&path).expect("works");
    assert!(error.contains("no PEM certificate"), "{error}");
}

#[test]
fn a_refusal_is_found_inside_io_errors() {
    let certificate = rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer);
    let io = io::Error::new(io::ErrorKind::InvalidData, certificate);
    assert_eq!(
        refusal(&io).as_deref(),
        Some("invalid peer certificate: UnknownIssuer")
    );
    // As redis-rs keeps it: behind an Arc, below its own error.
    let shared: Arc<dyn std::error::Error + Send + Sync> = Arc::new(io);
    let redis = redis::RedisError::from(io::Error::other(Wrapper(shared)));
    assert!(refusal(&redis).is_some());
}

#[test]
fn other_failures_are_not_refusals() {
    let refused = io::Error::new(io::ErrorKind::ConnectionRefused, "connection refused");
    assert_eq!(refusal(&refused), None);
}

/// An error whose source is a shared error, as libraries chain them.
#[derive(Debug)]
struct Wrapper(Arc<dyn std::error::Error + Send + Sync>);

impl std::fmt::Display for Wrapper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "wrapped: {}", self.0)
    }
}

impl std::error::Error for Wrapper {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.0)
    }
}

/// A CA certificate made for these tests only (ECDSA P-256, `CN=Chorus unit-test CA`).
const TEST_CA: &str = "-----BEGIN CERTIFICATE-----
MIIBoDCCAUegAwIBAgIUWnEjOAKjr4nMZVq5x5J2MEzGGN4wCgYIKoZIzj0EAwIw
HjEcMBoGA1UEAwwTQ2hvcnVzIHVuaXQtdGVzdCBDQTAeFw0yNjExMzAwNzI5MTBa
Fw0zNjExMjcwNzI5MTBaMB4xHDAaBgNVBAMME0Nob3J1cyB1bml0LXRlc3QgQ0Ew
WTATBgcqhkjOPQIBBggqhkjOPQMBBwNCAAQMITRWlmF0xxwKBeUNtMmwwEN0F1ME
OHGqoHhuQazfpEONiEe0Rx42xOFlS4i5nW2J/J2sXPu+/fGBCYmz2KQGo2MwYTAd
BgNVHQ4EFgQUfcn80mxc1IRJ8EDf7Mt0ab8PR9MwHwYDVR0jBBgwFoAUfcn80mxc
1IRJ8EDf7Mt0ab8PR9MwDwYDVR0TAQH/BAUwAwEB/zAOBgNVHQ8BAf8EBAMCAQYw
CgYIKoZIzj0EAwIDRwAwRAIgEWcOwkD/A/9+Xm43ErQ25orJ1JfGMkmaW4IoSoqU
kMICIGMdtBylvSqts4DutCGx1QirdDQ5ulZkV7qpggXC7j1x
-----END CERTIFICATE-----
";

#[test]
fn a_ca_file_replaces_the_system_roots_for_amqp() {
    let path = std::env::temp_dir().join(format!("chorus-ca-{}.pem", std::process::id()));
    std::fs::write(&path, TEST_CA).expect("works");
    let files = TlsFiles {
        ca: Some(path.clone()),
        ..TlsFiles::default()
    };
    let endpoint =
        Endpoint::load("amqps://h:5671".into(), &files, "--amqp", "amqps").expect("loads");
    std::fs::remove_file(&path).expect("works");
    let roots = endpoint.roots().expect("roots");
    // The CA file's one certificate, and not one of the system's roots beside it.
    assert_eq!(roots.len(), 1);
    let subject = roots.roots[0].subject.as_ref();
    let name = b"Chorus unit-test CA";
    assert!(subject.windows(name.len()).any(|w| w == name));
    assert!(endpoint.amqp_tls().is_ok());
}
