//! Certificates for the TLS tests: a CA, a server certificate for `localhost` and 127.0.0.1
//! (and an expired one on the same key), a client certificate the CA signed, and a second,
//! untrusted CA with a client certificate of its own. Written as PEM files into a directory,
//! as an operator's would be.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};

pub struct Pki {
    pub dir: PathBuf,
    server_key: KeyPair,
    ca: CertifiedIssuer<'static, KeyPair>,
}

fn make_ca(name: &str) -> CertifiedIssuer<'static, KeyPair> {
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.distinguished_name.push(DnType::CommonName, name);
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    CertifiedIssuer::self_signed(p, KeyPair::generate().unwrap()).unwrap()
}

fn leaf(
    names: &[&str],
    common_name: &str,
    usage: ExtendedKeyUsagePurpose,
    key: &KeyPair,
    issuer: &CertifiedIssuer<'static, KeyPair>,
    expired: bool,
) -> String {
    let mut p =
        CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
    p.distinguished_name.push(DnType::CommonName, common_name);
    p.extended_key_usages = vec![usage];
    if expired {
        p.not_before = rcgen::date_time_ymd(2020, 1, 1);
        p.not_after = rcgen::date_time_ymd(2021, 1, 1);
    }
    p.signed_by(key, issuer).unwrap().pem()
}

impl Pki {
    /// Writes `ca.crt`, `server.crt`/`server.key`, `client.crt`/`client.key` (CN and SAN
    /// `prometheus`), `rogue-ca.crt`, `rogue-client.crt`/`rogue-client.key` and
    /// `rogue-server.crt`/`rogue-server.key` into `dir`.
    pub fn new(dir: &Path) -> Pki {
        let ca = make_ca("observer test CA");
        let server_key = KeyPair::generate().unwrap();
        let client_key = KeyPair::generate().unwrap();
        let rogue = make_ca("rogue CA");
        let rogue_key = KeyPair::generate().unwrap();
        let write = |name: &str, text: &str| std::fs::write(dir.join(name), text).unwrap();
        write("ca.crt", &ca.pem());
        write("server.key", &server_key.serialize_pem());
        write("client.key", &client_key.serialize_pem());
        write(
            "client.crt",
            &leaf(
                &["prometheus"],
                "prometheus",
                ExtendedKeyUsagePurpose::ClientAuth,
                &client_key,
                &ca,
                false,
            ),
        );
        write("rogue-ca.crt", &rogue.pem());
        // A server the rogue CA vouches for: what an untrusted collector presents.
        let rogue_server_key = KeyPair::generate().unwrap();
        write("rogue-server.key", &rogue_server_key.serialize_pem());
        write(
            "rogue-server.crt",
            &leaf(
                &["localhost", "127.0.0.1"],
                "collector",
                ExtendedKeyUsagePurpose::ServerAuth,
                &rogue_server_key,
                &rogue,
                false,
            ),
        );
        write("rogue-client.key", &rogue_key.serialize_pem());
        write(
            "rogue-client.crt",
            &leaf(
                &["prometheus"],
                "prometheus",
                ExtendedKeyUsagePurpose::ClientAuth,
                &rogue_key,
                &rogue,
                false,
            ),
        );
        let pki = Pki {
            dir: dir.to_path_buf(),
            server_key,
            ca,
        };
        pki.write_server_cert(false);
        pki
    }

    /// (Re)writes `server.crt`, valid now or expired since 2021, on the same key.
    pub fn write_server_cert(&self, expired: bool) {
        let pem = leaf(
            &["localhost", "127.0.0.1"],
            "observer",
            ExtendedKeyUsagePurpose::ServerAuth,
            &self.server_key,
            &self.ca,
            expired,
        );
        // Replaced the way a certificate manager does it: a new file renamed over the old.
        let tmp = self.dir.join("server.crt.new");
        std::fs::write(&tmp, pem).unwrap();
        std::fs::rename(&tmp, self.dir.join("server.crt")).unwrap();
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    pub fn read(&self, name: &str) -> Vec<u8> {
        std::fs::read(self.path(name)).unwrap()
    }

    /// A rustls server configuration from `cert`/`key` that requires client certificates
    /// signed by `client_ca`, offering `alpn`.
    pub fn server_config(
        &self,
        cert: &str,
        key: &str,
        client_ca: &str,
        alpn: &[&[u8]],
    ) -> std::sync::Arc<rustls::ServerConfig> {
        use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject as _};
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_slice_iter(&self.read(client_ca)) {
            roots.add(c.unwrap()).unwrap();
        }
        #[allow(deprecated)]
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            std::sync::Arc::new(roots),
            provider.clone(),
        )
        .build()
        .unwrap();
        let mut c = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_client_cert_verifier(verifier)
            .with_single_cert(
                CertificateDer::pem_slice_iter(&self.read(cert))
                    .collect::<Result<_, _>>()
                    .unwrap(),
                PrivateKeyDer::from_pem_slice(&self.read(key)).unwrap(),
            )
            .unwrap();
        c.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        std::sync::Arc::new(c)
    }
}

/// A bcrypt hash of `password` as `htpasswd -nBC 10` writes it, made by Apache's htpasswd
/// itself (installed by `cargo xtask test`).
pub fn htpasswd_hash(password: &str) -> String {
    let out = std::process::Command::new("htpasswd")
        .args(["-nbBC", "10", "", password])
        .output()
        .expect("htpasswd (apache2-utils; cargo xtask test installs it)");
    assert!(out.status.success(), "htpasswd failed");
    String::from_utf8(out.stdout)
        .unwrap()
        .trim()
        .trim_start_matches(':')
        .to_string()
}
