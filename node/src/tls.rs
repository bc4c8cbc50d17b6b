//! TLS for the client port: rustls (TLS 1.2 and 1.3, the ring provider) over the glommio TCP
//! stream. The server config is built once at start from the profile's PEM files, so a bad
//! certificate or key stops the node before it accepts anyone.

use std::path::Path;
use std::sync::Arc;

use futures_rustls::rustls::pki_types::pem::PemObject;
use futures_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use futures_rustls::rustls::{self, ServerConfig};
use futures_rustls::TlsAcceptor;

/// How long a client may take to finish its TLS handshake before the connection is closed.
pub const HANDSHAKE_MAX: std::time::Duration = std::time::Duration::from_secs(10);

/// The acceptor for `net.tls_cert` and `net.tls_key`; errors name the key and the file.
pub fn acceptor(cert: &Path, key: &Path) -> Result<TlsAcceptor, String> {
    let bad =
        |k: &str, p: &Path, why: String| format!("{k} = {:?}: {why}", p.display().to_string());
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .and_then(|it| it.collect::<Result<_, _>>())
        .map_err(|e| {
            bad(
                "net.tls_cert",
                cert,
                format!("cannot read a PEM certificate chain: {e}"),
            )
        })?;
    if certs.is_empty() {
        return Err(bad(
            "net.tls_cert",
            cert,
            "holds no CERTIFICATE block".into(),
        ));
    }
    let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| {
        bad(
            "net.tls_key",
            key,
            format!("cannot read a PEM private key: {e}"),
        )
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS: {e}"))?
        .with_no_client_auth()
        .with_single_cert(certs, key_der)
        .map_err(|e| {
            bad(
                "net.tls_key",
                key,
                format!("does not fit net.tls_cert: {e}"),
            )
        })?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}
