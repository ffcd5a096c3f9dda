//! TLS material for the broker: the self-signed dev certificate written into the data dir on
//! first start, operator-supplied certificates, optional client-certificate (mTLS) verification.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// Errors loading or generating TLS material.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}: {reason}")]
    Read { path: PathBuf, reason: String },
    #[error("cannot write the dev certificate into {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot generate the dev certificate: {0}")]
    Generate(String),
    #[error("TLS setup failed: {0}")]
    Rustls(String),
}

/// File name of the dev certificate (also the CA clients pin) inside the data dir.
pub const DEV_CERT: &str = "dev-cert.pem";
/// File name of the dev private key inside the data dir.
pub const DEV_KEY: &str = "dev-key.pem";

/// Where the certificate came from, for the start-up message.
pub struct ServerIdentity {
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
    /// Set when the dev certificate is in use: the PEM file clients pass as `--ca`.
    pub dev_ca: Option<PathBuf>,
    /// True when this start generated the dev certificate.
    pub generated: bool,
}

/// Loads the configured certificate chain and key (`cert_key`: both PEM files), or the dev
/// certificate (generating it on first start).
pub fn server_identity(
    cert_key: Option<(&Path, &Path)>,
    data_dir: &Path,
) -> Result<ServerIdentity, TlsError> {
    if let Some((cert, key)) = cert_key {
        return Ok(ServerIdentity {
            chain: read_certs(cert)?,
            key: read_key(key)?,
            dev_ca: None,
            generated: false,
        });
    }
    let cert_path = data_dir.join(DEV_CERT);
    let key_path = data_dir.join(DEV_KEY);
    let mut generated = false;
    if !cert_path.exists() || !key_path.exists() {
        let ck = rcgen::generate_simple_self_signed(vec![
            "localhost".to_owned(),
            "127.0.0.1".to_owned(),
            "::1".to_owned(),
        ])
        .map_err(|e| TlsError::Generate(e.to_string()))?;
        let write = |p: &Path, s: String, private: bool| {
            std::fs::create_dir_all(data_dir)
                .and_then(|()| {
                    if private {
                        crate::private_files::write_private(p, s.as_bytes())
                    } else {
                        std::fs::write(p, s)
                    }
                })
                .map_err(|source| TlsError::Write {
                    path: p.to_owned(),
                    source,
                })
        };
        write(&key_path, ck.signing_key.serialize_pem(), true)?;
        write(&cert_path, ck.cert.pem(), false)?;
        generated = true;
    }
    Ok(ServerIdentity {
        chain: read_certs(&cert_path)?,
        key: read_key(&key_path)?,
        dev_ca: Some(cert_path),
        generated,
    })
}

/// Reads every certificate of a PEM file.
pub fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let err = |reason: String| TlsError::Read {
        path: path.to_owned(),
        reason,
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| err(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| err(e.to_string()))?;
    if certs.is_empty() {
        return Err(err("no certificate in file".into()));
    }
    Ok(certs)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| TlsError::Read {
        path: path.to_owned(),
        reason: e.to_string(),
    })
}

/// Builds the rustls server config: TLS 1.3 only, our ALPN, optional client certificates
/// (verified against the `client_ca` bundle; a client presenting none is refused if
/// `require_client_cert`).
pub fn server_config(
    id: ServerIdentity,
    client_ca: Option<&Path>,
    require_client_cert: bool,
) -> Result<rustls::ServerConfig, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| TlsError::Rustls(e.to_string()))?;
    let builder = match client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in read_certs(ca)? {
                roots
                    .add(c)
                    .map_err(|e| TlsError::Rustls(format!("client_ca {}: {e}", ca.display())))?;
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            );
            let verifier = if require_client_cert {
                verifier
            } else {
                verifier.allow_unauthenticated()
            };
            builder.with_client_cert_verifier(
                verifier
                    .build()
                    .map_err(|e| TlsError::Rustls(e.to_string()))?,
            )
        }
    };
    let mut tls = builder
        .with_single_cert(id.chain, id.key)
        .map_err(|e| TlsError::Rustls(e.to_string()))?;
    tls.alpn_protocols = vec![
        lockbroker_proto::ALPN.to_vec(),
        lockbroker_proto::PEER_ALPN.to_vec(),
    ];
    tls.max_early_data_size = 0;
    Ok(tls)
}

/// The principal named by a client certificate: its subject common name, else its subject.
pub fn principal_from_cert(cert: &CertificateDer<'_>) -> Option<String> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    let subject = parsed.subject();
    if let Some(cn) = subject.iter_common_name().next()
        && let Ok(s) = cn.as_str()
    {
        return Some(s.to_owned());
    }
    Some(subject.to_string())
}
