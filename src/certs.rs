//! `wasmraft certs`: a cluster CA and node certificates (rcgen, ECDSA P-256), for a real
//! deployment (`certs init DIR`, `certs node DIR --id N`) and for `wasmraft dev`, which makes
//! its own on start. A node's certificate names it (`node-ID`, which peers check under mutual
//! TLS) and the hosts clients dial.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use wasmraft_node::security::node_name;

/// The CA's subject; with the CA key it is all a later `certs node` needs to sign again.
const CA_NAME: &str = "wasmraft cluster CA";

fn ca_params() -> anyhow::Result<CertificateParams> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name = DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, CA_NAME);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    Ok(params)
}

/// A directory of certificates: `ca.pem`, `ca.key`, `node-N.pem`, `node-N.key`.
pub struct CertDir(pub PathBuf);

impl CertDir {
    pub fn ca(&self) -> PathBuf {
        self.0.join("ca.pem")
    }

    pub fn node_cert(&self, id: u64) -> PathBuf {
        self.0.join(format!("{}.pem", node_name(id)))
    }

    pub fn node_key(&self, id: u64) -> PathBuf {
        self.0.join(format!("{}.key", node_name(id)))
    }

    /// Creates the CA (the directory must not hold one yet).
    pub fn init_ca(&self) -> anyhow::Result<()> {
        std::fs::create_dir_all(&self.0).with_context(|| format!("creating {}", self.0.display()))?;
        let key = KeyPair::generate()?;
        let cert = ca_params()?.self_signed(&key)?;
        write_new(&self.ca(), cert.pem().as_bytes(), 0o644)?;
        write_new(&self.0.join("ca.key"), key.serialize_pem().as_bytes(), 0o600)
    }

    /// Signs a certificate for node `id`, valid for `hosts` (names or IP addresses) too.
    pub fn add_node(&self, id: u64, hosts: &[String]) -> anyhow::Result<()> {
        let ca_key_path = self.0.join("ca.key");
        let ca_key = std::fs::read_to_string(&ca_key_path)
            .with_context(|| format!("reading {} (run `wasmraft certs init` first)", ca_key_path.display()))?;
        let issuer = Issuer::new(ca_params()?, KeyPair::from_pem(&ca_key)?);
        let mut names = vec![node_name(id)];
        names.extend(hosts.iter().cloned());
        let mut params = CertificateParams::new(names)?;
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, node_name(id));
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        // Server for its listeners, client when it dials its peers.
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &issuer)?;
        write_new(&self.node_cert(id), cert.pem().as_bytes(), 0o644)?;
        write_new(&self.node_key(id), key.serialize_pem().as_bytes(), 0o600)
    }
}

fn write_new(path: &Path, bytes: &[u8], mode: u32) -> anyhow::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .with_context(|| format!("creating {} (it must not exist yet)", path.display()))?;
    file.write_all(bytes)?;
    Ok(())
}

/// A new random token (256 bits, hex).
pub fn new_token() -> anyhow::Result<String> {
    let mut bytes = [0u8; 32];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes)
        .map_err(|_| anyhow::anyhow!("no randomness for a token"))?;
    Ok(hex::encode(bytes))
}

/// `certs init DIR --nodes N --host H...`.
pub fn init(dir: &Path, nodes: u64, hosts: &[String]) -> anyhow::Result<()> {
    let certs = CertDir(dir.to_path_buf());
    certs.init_ca()?;
    for id in 1..=nodes {
        certs.add_node(id, hosts)?;
    }
    let token = new_token()?;
    println!("wrote a CA and {nodes} node certificates to {}", dir.display());
    println!("  ca.pem         the CA certificate: every node's [tls] ca, and clients' --ca");
    println!("  ca.key         the CA key: keep it offline (`wasmraft certs node` signs with it)");
    println!(
        "  node-N.pem/key node N's certificate (names node-N and {})",
        hosts.join(", ")
    );
    println!();
    println!("An admin token (give it to clients: --token or $WASMRAFT_TOKEN; nodes keep only its sha256):");
    println!("  token   {token}");
    println!("In each node's config file:");
    println!("  [[tokens]]");
    println!("  sha256 = \"{}\"", wasmraft_node::security::token_sha256(&token));
    println!("  role = \"admin\"");
    Ok(())
}

/// `certs node DIR --id N --host H...`.
pub fn node(dir: &Path, id: u64, hosts: &[String]) -> anyhow::Result<()> {
    CertDir(dir.to_path_buf()).add_node(id, hosts)?;
    println!(
        "wrote {} and its key",
        CertDir(dir.to_path_buf()).node_cert(id).display()
    );
    Ok(())
}
