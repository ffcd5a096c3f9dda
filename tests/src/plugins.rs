//! Plugin fixtures for end-to-end tests: paths of the compiled example and fault plugins
//! (built once by `plugins/build.sh` when missing) and test certificates for mTLS.

use std::path::PathBuf;
use std::sync::OnceLock;

/// The repository root.
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// The compiled plugin `plugins/dist/<name>.wasm`, building every plugin once if missing.
pub fn plugin(name: &str) -> PathBuf {
    static BUILT: OnceLock<()> = OnceLock::new();
    let path = repo_root()
        .join("plugins/dist")
        .join(format!("{name}.wasm"));
    if !path.exists() {
        BUILT.get_or_init(|| {
            let status = std::process::Command::new(repo_root().join("plugins/build.sh"))
                .status()
                .expect("run plugins/build.sh");
            assert!(status.success(), "plugins/build.sh failed");
        });
    }
    assert!(
        path.exists(),
        "{} missing after plugins/build.sh",
        path.display()
    );
    path
}

/// A CA and a client certificate signed by it, for mTLS tests (PEM strings).
pub struct ClientPki {
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
}

/// Makes a throwaway CA and a client certificate whose subject common name is `cn`.
pub fn client_pki(cn: &str) -> ClientPki {
    use rcgen::{
        BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose,
        IsCa, KeyPair, KeyUsagePurpose,
    };
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("ca params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "lockbroker test client CA");
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().expect("ca key"))
        .expect("self-sign CA");
    let key = KeyPair::generate().expect("client key");
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("client params");
    params.distinguished_name.push(DnType::CommonName, cn);
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let cert = params.signed_by(&key, &ca).expect("sign client cert");
    ClientPki {
        ca_pem: ca.pem(),
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    }
}
