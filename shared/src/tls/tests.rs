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
