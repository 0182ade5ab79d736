//! Plugin signing: `wasmraft plugin keygen` makes an ed25519 key pair, `wasmraft plugin sign`
//! writes a detached signature next to a component (`FILE.sig`), and `deploy` sends it along.
//! Nodes that list the public key (`[plugins] trusted_keys`) run only what it signed.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use ring::signature::{Ed25519KeyPair, KeyPair as _};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use wasmraft_node::security::{key_id, signed_message};

/// A private key file: PKCS#8, hex.
#[derive(Serialize, Deserialize)]
struct KeyFile {
    key_id: String,
    public_key: String,
    private_pkcs8: String,
}

/// A detached signature over one component.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Signature {
    pub sha256: String,
    pub key_id: String,
    /// ed25519, hex.
    pub signature: String,
}

impl Signature {
    pub fn bytes(&self) -> anyhow::Result<Vec<u8>> {
        hex::decode(&self.signature).context("the signature is not hex")
    }
}

/// Where `sign` writes the signature of `component`, and `deploy` looks for it.
pub fn signature_path(component: &Path) -> PathBuf {
    with_suffix(component, ".sig")
}

/// `path` with `suffix` appended to its file name.
fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

/// `plugin keygen --out KEY`: KEY (private, mode 0600) and KEY.pub (the public key in hex, for a
/// node's `trusted_keys`).
pub fn keygen(out: &Path) -> anyhow::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let rng = ring::rand::SystemRandom::new();
    let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng).map_err(|_| anyhow::anyhow!("generating a key failed"))?;
    let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).map_err(|e| anyhow::anyhow!("{e}"))?;
    let public = hex::encode(pair.public_key().as_ref());
    let file = KeyFile {
        key_id: key_id(pair.public_key().as_ref()),
        public_key: public.clone(),
        private_pkcs8: hex::encode(pkcs8.as_ref()),
    };
    let mut private = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(out)
        .with_context(|| format!("creating {} (it must not exist yet)", out.display()))?;
    private.write_all(toml::to_string(&file)?.as_bytes())?;
    let public_path = with_suffix(out, ".pub");
    std::fs::write(&public_path, format!("{public}\n"))
        .with_context(|| format!("writing {}", public_path.display()))?;
    println!("private key  {} (keep it secret)", out.display());
    println!("public key   {} (key id {})", public_path.display(), file.key_id);
    println!();
    println!("Nodes trust it with, in their config file:");
    println!("  [plugins]");
    println!("  trusted_keys = [\"{public}\"]");
    Ok(())
}

/// `plugin sign FILE --key KEY`: writes FILE.sig.
pub fn sign(component: &Path, key: &Path) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(key).with_context(|| format!("reading the key {}", key.display()))?;
    let file: KeyFile = toml::from_str(&text)
        .with_context(|| format!("{} is not a key made by `wasmraft plugin keygen`", key.display()))?;
    let pkcs8 = hex::decode(&file.private_pkcs8).context("the key's private part is not hex")?;
    let pair = Ed25519KeyPair::from_pkcs8(&pkcs8).map_err(|e| anyhow::anyhow!("{}: {e}", key.display()))?;
    let bytes = std::fs::read(component).with_context(|| format!("reading {}", component.display()))?;
    let sha256 = hex::encode(Sha256::digest(&bytes));
    let signature = Signature {
        key_id: key_id(pair.public_key().as_ref()),
        signature: hex::encode(pair.sign(&signed_message(&sha256)).as_ref()),
        sha256,
    };
    let out = signature_path(component);
    std::fs::write(&out, toml::to_string(&signature)?).with_context(|| format!("writing {}", out.display()))?;
    println!("signed {} (sha256 {})", component.display(), signature.sha256);
    println!("  signature  {} (key id {})", out.display(), signature.key_id);
    println!("  `wasmraft deploy NAME {}` sends it along", component.display());
    Ok(())
}

/// The signature `deploy` sends for `component`: `explicit`, else `FILE.sig` if there is one.
/// A signature made for other bytes is refused here, before anything is uploaded.
pub fn for_component(component: &Path, bytes: &[u8], explicit: Option<&Path>) -> anyhow::Result<Option<Signature>> {
    let path = match explicit {
        Some(path) => path.to_path_buf(),
        None => {
            let path = signature_path(component);
            if !path.exists() {
                return Ok(None);
            }
            path
        }
    };
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let signature: Signature = toml::from_str(&text)
        .with_context(|| format!("{} is not a signature made by `wasmraft plugin sign`", path.display()))?;
    let sha256 = hex::encode(Sha256::digest(bytes));
    anyhow::ensure!(
        signature.sha256 == sha256,
        "{} signs the component {}, not {} ({sha256}): sign it again",
        path.display(),
        signature.sha256,
        component.display()
    );
    Ok(Some(signature))
}
