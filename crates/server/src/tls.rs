//! TLS set-up: the operator's certificate, or a self-signed one generated
//! with rcgen on first start and kept under `data_dir/tls` so clients that
//! pinned it keep trusting it across restarts.

use rustls::pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer};
use std::path::{Path, PathBuf};
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: no PEM {what} found")]
    Pem { path: PathBuf, what: &'static str },
    #[error("cannot generate a certificate: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("TLS configuration rejected: {0}")]
    Rustls(#[from] rustls::Error),
}

/// Paths of the generated certificate and key for a data directory.
pub fn self_signed_paths(data_dir: &Path) -> (PathBuf, PathBuf) {
    let dir = data_dir.join("tls");
    (dir.join("cert.pem"), dir.join("key.pem"))
}

/// Returns (cert, key) paths, generating a self-signed pair for `domain`
/// when none exists yet.
pub fn ensure_self_signed(data_dir: &Path, domain: &str) -> Result<(PathBuf, PathBuf), TlsError> {
    let (cert_path, key_path) = self_signed_paths(data_dir);
    if cert_path.exists() && key_path.exists() {
        return Ok((cert_path, key_path));
    }
    let dir = data_dir.join("tls");
    std::fs::create_dir_all(&dir).map_err(|source| TlsError::Write {
        path: dir.clone(),
        source,
    })?;
    let names = vec![domain.to_owned(), format!("*.{domain}")];
    let certified = rcgen::generate_simple_self_signed(names)?;
    write_private(&key_path, certified.signing_key.serialize_pem().as_bytes())?;
    std::fs::write(&cert_path, certified.cert.pem()).map_err(|source| TlsError::Write {
        path: cert_path.clone(),
        source,
    })?;
    tracing::info!(cert = %cert_path.display(), "generated a self-signed certificate for {domain}");
    Ok((cert_path, key_path))
}

fn write_private(path: &Path, data: &[u8]) -> Result<(), TlsError> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let err = |source| TlsError::Write {
        path: path.to_owned(),
        source,
    };
    let mut f = options.open(path).map_err(err)?;
    f.write_all(data).map_err(err)
}

/// Builds the server configuration shared by every TLS connection.
pub fn server_config(cert: &Path, key: &Path) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let read = |path: &Path| {
        std::fs::read(path).map_err(|source| TlsError::Read {
            path: path.to_owned(),
            source,
        })
    };
    let cert_pem = read(cert)?;
    let key_pem = read(key)?;
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cert_pem)
        .filter_map(Result::ok)
        .collect();
    if chain.is_empty() {
        return Err(TlsError::Pem {
            path: cert.to_owned(),
            what: "certificate",
        });
    }
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|_| TlsError::Pem {
        path: key.to_owned(),
        what: "private key",
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
    // XEP-0368 clients negotiate "xmpp-client"; others send none.
    config.alpn_protocols = vec![b"xmpp-client".to_vec()];
    Ok(Arc::new(config))
}
