//! TLS of the connections to RabbitMQ and Redis: an [`Endpoint`] is a server's URL with the PEM
//! files that verify it and identify Chorus to it, and [`refusal`] tells a failed TLS handshake
//! apart from other connection failures (a refused server is never retried in plain text, and
//! ends a service at start-up with [`crate::config::EXIT_UNAVAILABLE`]).
//!
//! Which roots verify a server: the `--amqp-tls-ca` / `--redis-tls-ca` file when given, else the
//! system's roots (rustls-native-certs), never both: a CA file names the only authorities a
//! deployment trusts. redis-rs builds its TLS settings that way itself; for `amqps://`, whose
//! library (lapin) would add a CA file to the system's roots, [`Endpoint::amqp_tls`] builds
//! them here.

use std::{
    fmt,
    path::{Path, PathBuf},
    sync::Arc,
};

use lapin::tcp::RustlsConnector;
use rustls::{
    pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer},
    ClientConfig, RootCertStore,
};

use crate::config::redact_url;

/// The PEM files of one connection's TLS, as the flags give them.
#[derive(Clone, Debug, Default)]
pub struct TlsFiles {
    /// CA certificates that verify the server (`--amqp-tls-ca`, `--redis-tls-ca`).
    pub ca: Option<PathBuf>,
    /// Client certificate chain for mutual TLS (`--amqp-tls-cert`, `--redis-tls-cert`).
    pub cert: Option<PathBuf>,
    /// Private key of the client certificate (`--amqp-tls-key`, `--redis-tls-key`).
    pub key: Option<PathBuf>,
}

/// A client certificate chain and its key, PEM.
#[derive(Clone)]
struct Identity {
    cert: Vec<u8>,
    key: Vec<u8>,
}

/// A server to connect to: its URL (credentials included) and the TLS files, read. Its `Debug`
/// hides the password and the key.
#[derive(Clone)]
pub struct Endpoint {
    url: String,
    ca: Option<Vec<u8>>,
    identity: Option<Identity>,
    heartbeat_s: Option<u16>,
}

impl fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Endpoint")
            .field("url", &self.redacted())
            .field("ca", &self.ca.is_some())
            .field("client_certificate", &self.identity.is_some())
            .finish()
    }
}

/// Reads a PEM file; `flag` names it in the error.
fn read_pem(flag: &str, path: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("{flag} {}: {e}", path.display()))
}

impl Endpoint {
    /// A server reached with the system's roots and no client certificate.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            ca: None,
            identity: None,
            heartbeat_s: None,
        }
    }

    /// The server at `url` with the TLS `files` read and checked; `flags` is the flags' prefix
    /// (`--amqp` or `--redis`), `secure_scheme` the URL scheme that means TLS (`amqps`,
    /// `rediss`). TLS files with a plain URL are refused rather than ignored, so a typo in the
    /// scheme never sends credentials in plain text.
    ///
    /// # Errors
    /// A file cannot be read or holds no certificate (or no key), a certificate comes without
    /// its key or the other way round, or TLS files come with a plain URL.
    pub fn load(
        url: String,
        files: &TlsFiles,
        flags: &str,
        secure_scheme: &str,
    ) -> Result<Self, String> {
        // `rediss+cluster` (a Redis Cluster, `store::cluster`) is as secure as `rediss`.
        let secure = url.split_once("://").is_some_and(|(scheme, _)| {
            let scheme = scheme.to_ascii_lowercase();
            let scheme = scheme.strip_suffix("+cluster").unwrap_or(&scheme);
            scheme.eq_ignore_ascii_case(secure_scheme)
        });
        let any_file = files.ca.is_some() || files.cert.is_some() || files.key.is_some();
        if any_file && !secure {
            return Err(format!(
                "{flags}-tls-* files need a {secure_scheme}:// URL, got {}",
                redact_url(&url)
            ));
        }
        let ca = match &files.ca {
            Some(path) => {
                let flag = format!("{flags}-tls-ca");
                let pem = read_pem(&flag, path)?;
                let certificates = CertificateDer::pem_slice_iter(&pem).filter(Result::is_ok);
                if certificates.count() == 0 {
                    return Err(format!("{flag} {}: no PEM certificate", path.display()));
                }
                Some(pem)
            }
            None => None,
        };
        let identity = match (&files.cert, &files.key) {
            (Some(cert_path), Some(key_path)) => {
                let (cert_flag, key_flag) =
                    (format!("{flags}-tls-cert"), format!("{flags}-tls-key"));
                let cert = read_pem(&cert_flag, cert_path)?;
                if CertificateDer::pem_slice_iter(&cert)
                    .filter(Result::is_ok)
                    .count()
                    == 0
                {
                    return Err(format!(
                        "{cert_flag} {}: no PEM certificate",
                        cert_path.display()
                    ));
                }
                let key = read_pem(&key_flag, key_path)?;
                // The key's content never goes into the message.
                if PrivateKeyDer::from_pem_slice(&key).is_err() {
                    return Err(format!(
                        "{key_flag} {}: no PEM private key",
                        key_path.display()
                    ));
                }
                Some(Identity { cert, key })
            }
            (None, None) => None,
            _ => {
                return Err(format!(
                    "{flags}-tls-cert and {flags}-tls-key go together (mutual TLS needs both)"
                ))
            }
        };
        Ok(Self {
            url,
            ca,
            identity,
            heartbeat_s: None,
        })
    }

    /// The same server with the AMQP heartbeat to ask for, in seconds (`--amqp-heartbeat-s`);
    /// a `heartbeat=` in the URL's query wins over it.
    #[must_use]
    pub fn with_heartbeat(mut self, seconds: u16) -> Self {
        self.heartbeat_s = Some(seconds);
        self
    }

    /// The AMQP heartbeat to ask for, in seconds, unless the URL names one; `None` takes the
    /// broker's proposal.
    pub fn heartbeat_s(&self) -> Option<u16> {
        self.heartbeat_s
    }

    /// The URL, credentials included: for the client library only, never for a message.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The URL with its password hidden, fit for a log line.
    pub fn redacted(&self) -> String {
        redact_url(&self.url)
    }

    /// `host:port` of the URL (no credentials, no path), to name the server in a message.
    pub fn host(&self) -> &str {
        let rest = self
            .url
            .split_once("://")
            .map_or(self.url.as_str(), |(_, rest)| rest);
        let authority = rest.split(['/', '?']).next().unwrap_or(rest);
        authority
            .rsplit_once('@')
            .map_or(authority, |(_, host)| host)
    }

    /// The TLS settings of an `amqps://` connection to this server: its roots
    /// ([`Endpoint::roots`]) and the client certificate, if any, with rustls's safe defaults
    /// (TLS 1.2 and 1.3, ring).
    ///
    /// # Errors
    /// The client certificate or key cannot be used, or no root can be loaded; one line, no
    /// key material in it.
    pub fn amqp_tls(&self) -> Result<RustlsConnector, String> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS settings: {e}"))?
            .with_root_certificates(self.roots()?);
        let config = match &self.identity {
            Some(identity) => {
                let chain = CertificateDer::pem_slice_iter(&identity.cert)
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| format!("client certificate: {e}"))?;
                let key = PrivateKeyDer::from_pem_slice(&identity.key)
                    .map_err(|_| "client key: no PEM private key".to_owned())?;
                builder
                    .with_client_auth_cert(chain, key)
                    .map_err(|e| format!("client certificate: {e}"))?
            }
            None => builder.with_no_client_auth(),
        };
        Ok(RustlsConnector::from(config))
    }

    /// The authorities that verify this server: the CA file's certificates when one was given
    /// (and only them), else the system's roots as rustls-native-certs finds them
    /// (`SSL_CERT_FILE` and `SSL_CERT_DIR` override the system's store).
    ///
    /// # Errors
    /// A certificate of the CA file is not a usable CA certificate, or the system has no root
    /// that loads.
    pub fn roots(&self) -> Result<RootCertStore, String> {
        let mut roots = RootCertStore::empty();
        match &self.ca {
            Some(pem) => {
                for certificate in CertificateDer::pem_slice_iter(pem) {
                    let certificate = certificate.map_err(|e| format!("CA file: {e}"))?;
                    roots
                        .add(certificate)
                        .map_err(|e| format!("CA file: {e}"))?;
                }
            }
            None => {
                let found = rustls_native_certs::load_native_certs();
                let (added, _) = roots.add_parsable_certificates(found.certs);
                if added == 0 {
                    let why = found
                        .errors
                        .first()
                        .map_or_else(|| "none found".to_owned(), ToString::to_string);
                    return Err(format!(
                        "no system root certificate to verify the server ({why}); give a CA file"
                    ));
                }
            }
        }
        Ok(roots)
    }

    /// A redis-rs client for this server, with its TLS files when it has any.
    ///
    /// # Errors
    /// The URL does not parse, or redis-rs refuses the certificates.
    pub fn redis_client(&self) -> redis::RedisResult<redis::Client> {
        self.redis_client_at(&self.url)
    }

    /// [`Endpoint::redis_client`] of one server at `url` (a node of a cluster) with these TLS
    /// files.
    ///
    /// # Errors
    /// As [`Endpoint::redis_client`].
    pub(crate) fn redis_client_at(&self, url: &str) -> redis::RedisResult<redis::Client> {
        match self.redis_certificates() {
            None => redis::Client::open(url),
            Some(certificates) => redis::Client::build_with_tls(url, certificates),
        }
    }

    /// The TLS files as redis-rs takes them, `None` when there are none (the system's roots).
    pub(crate) fn redis_certificates(&self) -> Option<redis::TlsCertificates> {
        if self.ca.is_none() && self.identity.is_none() {
            return None;
        }
        Some(redis::TlsCertificates {
            client_tls: self
                .identity
                .as_ref()
                .map(|identity| redis::ClientTlsConfig {
                    client_cert: identity.cert.clone(),
                    client_key: identity.key.clone(),
                }),
            root_cert: self.ca.clone(),
        })
    }
}

/// Why a TLS handshake failed, when `error` (or an error under it) is one: rustls's own words,
/// e.g. `invalid peer certificate: UnknownIssuer`. `None` for every other failure (refused
/// TCP connection, wrong password, timeout), which may pass by waiting.
pub fn refusal(error: &(dyn std::error::Error + 'static)) -> Option<String> {
    let mut next = Some(error);
    while let Some(error) = next {
        if let Some(found) = rustls_error(error) {
            return Some(found.to_string());
        }
        next = error.source();
    }
    None
}

/// The rustls error `error` is, or wraps directly: the client libraries keep it inside an
/// `io::Error`, which `source()` skips, sometimes behind an `Arc` (redis-rs).
fn rustls_error<'a>(error: &'a (dyn std::error::Error + 'static)) -> Option<&'a rustls::Error> {
    if let Some(found) = error.downcast_ref::<rustls::Error>() {
        return Some(found);
    }
    if let Some(shared) = error.downcast_ref::<Arc<dyn std::error::Error + Send + Sync>>() {
        return rustls_error(&**shared);
    }
    let io = error.downcast_ref::<std::io::Error>()?;
    rustls_error(io.get_ref()?)
}

#[cfg(test)]
mod tests;
