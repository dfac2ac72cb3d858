//! TLS 1.3 for remote pipes: certificates and keys read from PEM files, and
//! the client's and the gateway's rustls configurations. Both sides verify
//! the other against one CA: the client checks the gateway's certificate
//! names the host it dialled, the gateway requires a client certificate and
//! takes its common name as the remote principal.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ClientConfig, RootCertStore, ServerConfig};

use crate::error::{Error, ErrorCode, Result};

/// Where a side's certificate, key and trusted CA are.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TlsFiles {
    /// This side's certificate chain (PEM).
    pub cert: PathBuf,
    /// Its private key (PEM: PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// The CA that vouches for the other side (PEM).
    pub ca: PathBuf,
}

impl TlsFiles {
    /// The client configuration npipe uses with these files: TLS 1.3 only,
    /// ring, the gateway checked against `ca`, `cert` offered. For a
    /// program that speaks to a gateway's TCP port itself, or measures
    /// against raw TLS with the same settings.
    pub fn client_config(&self) -> Result<Arc<ClientConfig>> {
        client_config(self)
    }

    /// The gateway's configuration with these files: TLS 1.3 only, ring,
    /// a client certificate issued by `ca` required.
    pub fn server_config(&self) -> Result<Arc<ServerConfig>> {
        server_config(self)
    }
}

fn bad_file(path: &Path, what: &str, why: impl std::fmt::Display) -> Error {
    Error::new(
        ErrorCode::InvalidParameter,
        format!(
            "cannot use {} as {what}: {why} (make one with `npipe cert`)",
            path.display()
        ),
    )
}

fn certificates(path: &Path, what: &str) -> Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| bad_file(path, what, e))?
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| bad_file(path, what, e))?;
    if certs.is_empty() {
        return Err(bad_file(path, what, "it holds no PEM certificate"));
    }
    Ok(certs)
}

/// The first certificate of a PEM file.
pub(crate) fn first_certificate(path: &Path) -> Result<CertificateDer<'static>> {
    Ok(certificates(path, "a certificate")?.remove(0))
}

fn private_key(path: &Path) -> Result<PrivateKeyDer<'static>> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| bad_file(path, "a private key", e))
}

fn roots(path: &Path) -> Result<Arc<RootCertStore>> {
    let mut roots = RootCertStore::empty();
    for cert in certificates(path, "a CA certificate")? {
        roots
            .add(cert)
            .map_err(|e| bad_file(path, "a CA certificate", e))?;
    }
    Ok(Arc::new(roots))
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn tls_error(e: rustls::Error) -> Error {
    Error::new(
        ErrorCode::InvalidParameter,
        format!("TLS set-up failed: {e}"),
    )
}

/// A client's configuration: TLS 1.3 only, the gateway checked against
/// `files.ca`, this client's certificate offered.
pub(crate) fn client_config(files: &TlsFiles) -> Result<Arc<ClientConfig>> {
    let config = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(tls_error)?
        .with_root_certificates(roots(&files.ca)?)
        .with_client_auth_cert(
            certificates(&files.cert, "a client certificate")?,
            private_key(&files.key)?,
        )
        .map_err(tls_error)?;
    Ok(Arc::new(config))
}

/// A gateway's configuration: TLS 1.3 only, a client certificate from
/// `files.ca` required.
pub(crate) fn server_config(files: &TlsFiles) -> Result<Arc<ServerConfig>> {
    let verifier =
        rustls::server::WebPkiClientVerifier::builder_with_provider(roots(&files.ca)?, provider())
            .build()
            .map_err(|e| {
                Error::new(
                    ErrorCode::InvalidParameter,
                    format!("cannot verify clients with {}: {e}", files.ca.display()),
                )
            })?;
    let config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(tls_error)?
        .with_client_cert_verifier(verifier)
        .with_single_cert(
            certificates(&files.cert, "the gateway's certificate")?,
            private_key(&files.key)?,
        )
        .map_err(tls_error)?;
    Ok(Arc::new(config))
}

/// A client configuration per set of files, built once per process: a
/// connect does not read and parse PEM files again.
pub(crate) fn cached_client_config(files: &TlsFiles) -> Result<Arc<ClientConfig>> {
    use std::collections::HashMap;
    use std::sync::{Mutex, OnceLock};
    static CACHE: OnceLock<Mutex<HashMap<TlsFiles, Arc<ClientConfig>>>> = OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    if let Some(config) = cache.lock().expect("poisoned").get(files) {
        return Ok(Arc::clone(config));
    }
    let config = client_config(files)?;
    cache
        .lock()
        .expect("poisoned")
        .insert(files.clone(), Arc::clone(&config));
    Ok(config)
}
