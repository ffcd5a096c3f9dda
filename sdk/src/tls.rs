//! Client TLS: trust a pinned CA (the broker's dev certificate or an operator CA), or — only
//! when explicitly asked for — accept any certificate.

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::error::Error;

/// How the client checks the broker's certificate.
#[derive(Clone, Debug)]
pub(crate) enum Trust {
    /// Trust these PEM CA certificates.
    Pem(Vec<u8>),
    /// Accept any certificate: development only.
    Insecure,
}

/// Client certificate for mTLS.
#[derive(Clone, Debug)]
pub(crate) struct ClientIdentity {
    pub cert_pem: Vec<u8>,
    pub key_pem: Vec<u8>,
}

pub(crate) fn read_file(path: &Path, what: &str) -> Result<Vec<u8>, Error> {
    std::fs::read(path)
        .map_err(|e| Error::Invalid(format!("cannot read {what} {}: {e}", path.display())))
}

pub(crate) fn client_config(
    trust: &Trust,
    identity: Option<&ClientIdentity>,
) -> Result<rustls::ClientConfig, Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| Error::Invalid(e.to_string()))?;
    let builder = match trust {
        Trust::Pem(pem) => {
            let mut roots = rustls::RootCertStore::empty();
            let certs = CertificateDer::pem_slice_iter(pem)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| Error::Invalid(format!("bad CA certificate: {e}")))?;
            if certs.is_empty() {
                return Err(Error::Invalid("CA file holds no certificate".into()));
            }
            for c in certs {
                roots
                    .add(c)
                    .map_err(|e| Error::Invalid(format!("bad CA certificate: {e}")))?;
            }
            builder.with_root_certificates(roots)
        }
        Trust::Insecure => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAny(provider))),
    };
    let mut cfg = match identity {
        None => builder.with_no_client_auth(),
        Some(id) => {
            let chain = CertificateDer::pem_slice_iter(&id.cert_pem)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| Error::Invalid(format!("bad client certificate: {e}")))?;
            let key = PrivateKeyDer::from_pem_slice(&id.key_pem)
                .map_err(|e| Error::Invalid(format!("bad client key: {e}")))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| Error::Invalid(format!("bad client certificate: {e}")))?
        }
    };
    cfg.alpn_protocols = vec![lockbroker_proto::ALPN.to_vec()];
    Ok(cfg)
}

/// Accepts every server certificate (signatures are still checked). Only reachable through
/// `ClientBuilder::insecure_dev_mode`.
#[derive(Debug)]
struct AcceptAny(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AcceptAny {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
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
