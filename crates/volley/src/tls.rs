//! TLS for `wss://` via rustls (feature `tls`): PEM loading, server and client configurations.
//!
//! Every configuration here is built with an explicit crypto provider (ring), so no set-up path
//! depends on a process-wide default provider being installed, and none can panic: failures are
//! [`TlsError`]s that name the file and what was wrong with it.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::{ClientConfig, RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// Why a TLS configuration could not be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// A PEM file could not be read or held nothing usable.
    #[error("{path}: {message}")]
    Pem {
        /// The file.
        path: PathBuf,
        /// What was wrong.
        message: String,
    },
    /// rustls rejected the certificate, key or settings.
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Loads every certificate from a PEM file (leaf first, then intermediates).
pub fn load_certs(path: impl AsRef<Path>) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let path = path.as_ref();
    let pem_err = |message: String| TlsError::Pem {
        path: path.to_owned(),
        message,
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| pem_err(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_err(e.to_string()))?;
    if certs.is_empty() {
        return Err(pem_err("no CERTIFICATE found".into()));
    }
    Ok(certs)
}

/// Loads the first private key (PKCS#8, PKCS#1 or SEC1) from a PEM file.
pub fn load_key(path: impl AsRef<Path>) -> Result<PrivateKeyDer<'static>, TlsError> {
    let path = path.as_ref();
    PrivateKeyDer::from_pem_file(path).map_err(|e| TlsError::Pem {
        path: path.to_owned(),
        message: format!("no usable private key: {e}"),
    })
}

/// A server configuration from PEM certificate chain and key files, offering `http/1.1` by ALPN.
pub fn server_config(
    cert: impl AsRef<Path>,
    key: impl AsRef<Path>,
) -> Result<Arc<ServerConfig>, TlsError> {
    let certs = load_certs(cert)?;
    let key = load_key(key)?;
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Which server certificates a client trusts.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub enum Roots {
    /// The Mozilla root program, as bundled by `webpki-roots` (the default).
    #[default]
    WebPki,
    /// Only the CA certificates in these PEM files.
    Custom(Vec<PathBuf>),
    /// The Mozilla roots plus the CA certificates in these PEM files.
    WebPkiAnd(Vec<PathBuf>),
}

/// A client configuration trusting `roots`.
pub fn client_config(roots: &Roots) -> Result<Arc<ClientConfig>, TlsError> {
    let mut store = RootCertStore::empty();
    let extra: &[PathBuf] = match roots {
        Roots::WebPki => &[],
        Roots::Custom(files) => files,
        Roots::WebPkiAnd(files) => files,
    };
    if !matches!(roots, Roots::Custom(_)) {
        store.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    }
    for file in extra {
        for cert in load_certs(file)? {
            store.add(cert).map_err(|e| TlsError::Pem {
                path: file.clone(),
                message: format!("not a usable CA certificate: {e}"),
            })?;
        }
    }
    let config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(store)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// A client configuration that accepts any server certificate.
///
/// **Dangerous**: it gives up the authentication TLS exists for; for tests and `--insecure` only.
pub fn insecure_client_config() -> Result<Arc<ClientConfig>, TlsError> {
    let config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(NoVerification(provider())))
        .with_no_client_auth();
    Ok(Arc::new(config))
}

#[derive(Debug)]
struct NoVerification(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for NoVerification {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &rustls_pki_types::ServerName<'_>,
        _ocsp: &[u8],
        _now: rustls_pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
