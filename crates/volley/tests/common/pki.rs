//! A test PKI, shared by the volley tests (through `common`) and the CLI tests (by path).

/// A test CA and a `localhost` certificate it signed, as PEM files (`ca.pem`, `cert.pem`,
/// `key.pem`) in a temp dir removed on drop.
pub struct Pki {
    dir: std::path::PathBuf,
}

impl Pki {
    /// A CA and a `localhost` leaf certificate it signed, written as PEM files to a temp dir.
    pub fn new(name: &str) -> Self {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
        let dir = std::env::temp_dir().join(format!("volley-tls-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let ca_key = KeyPair::generate().expect("ca key");
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("ca params");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        // Distinct subject names: OpenSSL takes a leaf whose issuer equals its subject for
        // self-signed.
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "Volley test CA");
        let ca = ca_params.self_signed(&ca_key).expect("ca cert");
        let issuer = Issuer::new(ca_params, ca_key);
        let leaf_key = KeyPair::generate().expect("leaf key");
        let mut leaf_params =
            CertificateParams::new(vec!["localhost".to_owned()]).expect("leaf params");
        leaf_params
            .distinguished_name
            .push(DnType::CommonName, "localhost");
        let leaf = leaf_params
            .signed_by(&leaf_key, &issuer)
            .expect("leaf cert");
        std::fs::write(dir.join("ca.pem"), ca.pem()).expect("write");
        std::fs::write(dir.join("cert.pem"), leaf.pem()).expect("write");
        std::fs::write(dir.join("key.pem"), leaf_key.serialize_pem()).expect("write");
        Self { dir }
    }

    /// The path of `file` in the PKI's directory.
    pub fn path(&self, file: &str) -> std::path::PathBuf {
        self.dir.join(file)
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
