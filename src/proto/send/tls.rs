//! The sender's TLS: the system's roots, or the CA file `tls_ca` names.

use super::*;

/// Files where Linux distributions keep the system's trusted certificates (`SSL_CERT_FILE` first).
pub(super) const SYSTEM_ROOTS: [&str; 4] = [
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/ca-bundle.pem",
    "/etc/ssl/cert.pem",
];

/// A TLS client configuration trusting `ca` (a PEM file) or the system's certificates.
pub(super) fn client_tls(ca: Option<&str>, transport: Transport) -> Result<Arc<rustls::ClientConfig>, String> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;

    let env = std::env::var("SSL_CERT_FILE").ok();
    let (path, chosen) = match ca {
        Some(p) => (p.to_string(), true),
        None => match env.iter().map(String::as_str).chain(SYSTEM_ROOTS).find(|p| std::path::Path::new(p).exists()) {
            Some(p) => (p.to_string(), false),
            None => {
                return Err(
                    "no trusted certificates: the system has no CA bundle; give one with tls_ca := '<file.pem>'".into(),
                );
            }
        },
    };
    let mut roots = rustls::RootCertStore::empty();
    let certs = CertificateDer::pem_file_iter(&path).map_err(|e| format!("could not read tls_ca {path:?}: {e}"))?;
    for cert in certs {
        let cert = cert.map_err(|e| format!("could not read tls_ca {path:?}: {e}"))?;
        // A system bundle may hold a certificate rustls cannot use; a file the user chose must be usable whole.
        if let Err(e) = roots.add(cert)
            && chosen
        {
            return Err(format!("tls_ca {path:?} holds a certificate that cannot be trusted: {e}"));
        }
    }
    if roots.is_empty() {
        return Err(format!("tls_ca {path:?} holds no certificate"));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![match transport {
        Transport::Grpc => b"h2".to_vec(),
        Transport::Http => b"http/1.1".to_vec(),
    }];
    Ok(Arc::new(config))
}
