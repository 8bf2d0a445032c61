//! Inbound TLS: rustls with the `ring` provider, ALPN `h2` and `http/1.1`.

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;

use crate::config::ConfigError;

/// An acceptor for the certificate chain in `cert` and the key in `key` (PEM files).
///
/// # Errors
/// A [`ConfigError`] naming the flag and file when either cannot be read or used.
pub fn acceptor(cert: &Path, key: &Path) -> Result<TlsAcceptor, ConfigError> {
    let bad = |flag: &str, path: &Path, why: String| {
        ConfigError(format!("{flag} {}: {why}", path.display()))
    };
    let chain = CertificateDer::pem_file_iter(cert)
        .map_err(|e| bad("--tls-cert", cert, e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad("--tls-cert", cert, e.to_string()))?;
    if chain.is_empty() {
        return Err(bad(
            "--tls-cert",
            cert,
            "no PEM certificates in it".to_owned(),
        ));
    }
    let key =
        PrivateKeyDer::from_pem_file(key).map_err(|e| bad("--tls-key", key, e.to_string()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ConfigError(format!("--tls-cert: {e}")))?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| bad("--tls-cert", cert, format!("does not fit --tls-key ({e})")))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}
