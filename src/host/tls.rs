//! TLS for a listener: PEM files read at listen time into a rustls server configuration (ring provider),
//! offering HTTP/2 and HTTP/1.1 by ALPN so Flight (grpc+tls) and HTTPS share the port as they do in clear.

use std::sync::Arc;

use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// Why the TLS files cannot serve.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("tls_cert and tls_key must be given together")]
    Incomplete,
    #[error("could not read tls_cert {0:?}: {1}")]
    Cert(String, String),
    #[error("tls_cert {0:?} holds no certificate")]
    NoCert(String),
    #[error("could not read tls_key {0:?}: {1}")]
    Key(String, String),
    #[error("tls_cert and tls_key do not fit together: {0}")]
    Mismatch(String),
}

/// The server configuration for `tls_cert` / `tls_key`; `None` when neither is given.
pub fn config(cert: Option<&str>, key: Option<&str>) -> Result<Option<Arc<ServerConfig>>, TlsError> {
    let (cert_path, key_path) = match (cert, key) {
        (None, None) => return Ok(None),
        (Some(c), Some(k)) => (c, k),
        _ => return Err(TlsError::Incomplete),
    };
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert_path)
        .map_err(|e| TlsError::Cert(cert_path.into(), describe(e)))?
        .collect::<Result<_, _>>()
        .map_err(|e| TlsError::Cert(cert_path.into(), describe(e)))?;
    if certs.is_empty() {
        return Err(TlsError::NoCert(cert_path.into()));
    }
    let key = PrivateKeyDer::from_pem_file(key_path).map_err(|e| TlsError::Key(key_path.into(), describe(e)))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Mismatch(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| TlsError::Mismatch(e.to_string()))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Some(Arc::new(config)))
}

fn describe(e: rustls_pki_types::pem::Error) -> String {
    use rustls_pki_types::pem::Error;
    match e {
        Error::Io(io) => io.to_string(),
        Error::NoItemsFound => "no PEM section of the expected kind was found".into(),
        other => format!("not valid PEM ({other:?})"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_must_come_in_pairs_and_exist() {
        assert!(config(None, None).unwrap().is_none());
        assert!(matches!(config(Some("/x.pem"), None), Err(TlsError::Incomplete)));
        let e = config(Some("/nonexistent/cert.pem"), Some("/nonexistent/key.pem")).unwrap_err();
        assert!(e.to_string().contains("could not read tls_cert \"/nonexistent/cert.pem\""), "{e}");
    }
}
