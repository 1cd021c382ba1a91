//! The control plane's keys and credentials, made fresh for every instance: a CA, the API
//! server's serving certificate (loopback and the in-cluster names), its client certificate
//! for the kubelets (`kubectl exec` and `logs` go through it), the service-account signing
//! key, the admin's bearer token, and the kubeconfig that carries them. The CA's key stays in
//! the dir so a kubelet node can get a client certificate of its own later
//! ([`client_certificate`]), as `kubeadm join` would give it.
//!
//! ECDSA P-256 throughout (rcgen's default): kube-apiserver accepts it for serving and for
//! service-account tokens, and generating it takes microseconds where RSA takes a second.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use serde_json::json;

/// The admin's user name in the token file; a member of `system:masters`.
pub(crate) const ADMIN_USER: &str = "podagent-test-admin";

/// Files written under `<dir>/pki`.
pub(crate) struct Pki {
    pub ca_cert: PathBuf,
    pub serving_cert: PathBuf,
    pub kubelet_client_cert: PathBuf,
    pub kubelet_client_key: PathBuf,
    pub serving_key: PathBuf,
    pub sa_public: PathBuf,
    pub sa_private: PathBuf,
    pub token_file: PathBuf,
    pub ca_pem: String,
    pub admin_token: String,
}

impl Pki {
    /// Generates everything into `dir` (created, 0700: it holds private keys).
    pub(crate) fn create(dir: &Path) -> Result<Pki> {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        set_mode(dir, 0o700)?;
        let ca_key = KeyPair::generate()?;
        let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "podagent-test-ca");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca_cert = ca_params.self_signed(&ca_key)?;
        let issuer = Issuer::new(ca_params, ca_key);

        let serving_key = KeyPair::generate()?;
        let names = [
            "127.0.0.1",
            "localhost",
            "kubernetes",
            "kubernetes.default",
            "kubernetes.default.svc",
            "kubernetes.default.svc.cluster.local",
            // The first address of --service-cluster-ip-range: the `kubernetes` Service.
            "10.0.0.1",
        ];
        let mut serving = CertificateParams::new(names.map(String::from).to_vec())?;
        serving
            .distinguished_name
            .push(DnType::CommonName, "kube-apiserver");
        serving.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        serving.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let serving_cert = serving.signed_by(&serving_key, &issuer)?;
        // The API server's identity towards the kubelets: a member of system:masters, which the
        // kubelets' webhook authorization allows everything (kubeadm's
        // apiserver-kubelet-client).
        let (kubelet_client_cert, kubelet_client_key) =
            sign_client(&issuer, "kube-apiserver-kubelet-client", "system:masters")?;
        let sa_key = KeyPair::generate()?;
        let admin_token = random_token()?;

        let pki = Pki {
            ca_cert: dir.join("ca.crt"),
            serving_cert: dir.join("apiserver.crt"),
            kubelet_client_cert: dir.join("apiserver-kubelet-client.crt"),
            kubelet_client_key: dir.join("apiserver-kubelet-client.key"),
            serving_key: dir.join("apiserver.key"),
            sa_public: dir.join("sa.pub"),
            sa_private: dir.join("sa.key"),
            token_file: dir.join("tokens.csv"),
            ca_pem: ca_cert.pem(),
            admin_token,
        };
        write(&pki.ca_cert, &pki.ca_pem)?;
        write(&dir.join(CA_KEY), &issuer.key().serialize_pem())?;
        write(&pki.kubelet_client_cert, &kubelet_client_cert)?;
        write(&pki.kubelet_client_key, &kubelet_client_key)?;
        write(&pki.serving_cert, &serving_cert.pem())?;
        write(&pki.serving_key, &serving_key.serialize_pem())?;
        write(&pki.sa_public, &sa_key.public_key_pem())?;
        write(&pki.sa_private, &sa_key.serialize_pem())?;
        write(
            &pki.token_file,
            &format!(
                "{},{ADMIN_USER},{ADMIN_USER},\"system:masters\"\n",
                pki.admin_token
            ),
        )?;
        Ok(pki)
    }

    /// Writes an admin kubeconfig for `server` to `path` (0600).
    pub(crate) fn write_admin_kubeconfig(&self, path: &Path, server: &str) -> Result<()> {
        let ca = serde_json::to_value(k8s_openapi::ByteString(self.ca_pem.as_bytes().to_vec()))?;
        let config = json!({
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "podagent-test", "cluster": {
                "server": server, "certificate-authority-data": ca}}],
            "users": [{"name": ADMIN_USER, "user": {"token": self.admin_token}}],
            "contexts": [{"name": "admin@podagent-test", "context": {
                "cluster": "podagent-test", "user": ADMIN_USER, "namespace": "default"}}],
            "current-context": "admin@podagent-test",
            "preferences": {},
        });
        write(path, &serde_yaml::to_string(&config)?)
    }
}

/// The CA's private key, beside `ca.crt`.
const CA_KEY: &str = "ca.key";

/// A client certificate for user `common_name` in `group`, signed by the CA of the control
/// plane whose keys are in `pki_dir`: the PEMs of the certificate and its key. How a kubelet
/// node gets `CN=system:node:<node>, O=system:nodes`, the identity the Node authorizer and
/// NodeRestriction know.
pub fn client_certificate(
    pki_dir: &Path,
    common_name: &str,
    group: &str,
) -> Result<(String, String)> {
    let read = |name: &str| {
        let path = pki_dir.join(name);
        fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))
    };
    let key = KeyPair::from_pem(&read(CA_KEY)?).context("parsing the CA's key")?;
    let issuer =
        Issuer::from_ca_cert_pem(&read("ca.crt")?, key).context("parsing the CA's certificate")?;
    sign_client(&issuer, common_name, group)
}

/// A client certificate and key (PEM) for `common_name` in `group` (rcgen's distinguished name
/// holds one value per attribute), signed by `issuer`.
fn sign_client(
    issuer: &Issuer<'_, KeyPair>,
    common_name: &str,
    group: &str,
) -> Result<(String, String)> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    params
        .distinguished_name
        .push(DnType::OrganizationName, group);
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let cert = params.signed_by(&key, issuer)?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// 32 bytes from the kernel's random source, hex-encoded.
fn random_token() -> Result<String> {
    let mut bytes = [0u8; 32];
    use std::io::Read;
    fs::File::open("/dev/urandom")
        .and_then(|mut random| random.read_exact(&mut bytes))
        .context("reading /dev/urandom for the admin token")?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// Writes `text` to `path`, readable by its owner only.
fn write(path: &Path, text: &str) -> Result<()> {
    fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
    set_mode(path, 0o600)
}

fn set_mode(path: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .with_context(|| format!("setting the mode of {}", path.display()))
}
