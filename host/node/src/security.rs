//! Who may do what. Both listeners speak TLS (mutual between peers: a node's certificate names
//! it, `node-ID`, and comes from the cluster's CA); clients present bearer tokens, each with a
//! role; and a node may accept only plugin components signed by keys it trusts (or listed by
//! sha256). Nothing here is on by default in [`crate::NodeConfig`]: `wasmraft node` refuses to
//! start without TLS and tokens unless told `--insecure`.

use std::collections::BTreeSet;

use anyhow::Context as _;
use ring::signature::{ED25519, UnparsedPublicKey};
use rustls_pki_types::{CertificateDer, ServerName};
use sha2::{Digest, Sha256};
use tonic::transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};

use crate::types::NodeId;

/// The name a node's certificate carries (a DNS name), which peers check.
pub fn node_name(id: NodeId) -> String {
    format!("node-{id}")
}

/// The cluster's CA and this node's certificate and key, PEM.
#[derive(Clone)]
pub struct TlsConfig {
    pub ca_pem: Vec<u8>,
    pub cert_pem: Vec<u8>,
    pub key_pem: Vec<u8>,
}

impl std::fmt::Debug for TlsConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TlsConfig { .. }")
    }
}

impl TlsConfig {
    pub fn from_files(
        ca: &std::path::Path,
        cert: &std::path::Path,
        key: &std::path::Path,
    ) -> anyhow::Result<TlsConfig> {
        let read = |path: &std::path::Path| std::fs::read(path).with_context(|| format!("reading {}", path.display()));
        Ok(TlsConfig {
            ca_pem: read(ca)?,
            cert_pem: read(cert)?,
            key_pem: read(key)?,
        })
    }

    fn identity(&self) -> Identity {
        Identity::from_pem(&self.cert_pem, &self.key_pem)
    }

    /// The client listener: server authentication only (clients prove themselves by token).
    pub(crate) fn client_listener(&self) -> ServerTlsConfig {
        ServerTlsConfig::new().identity(self.identity())
    }

    /// The peer listener: the caller must present a certificate from the cluster's CA.
    pub(crate) fn peer_listener(&self) -> ServerTlsConfig {
        ServerTlsConfig::new()
            .identity(self.identity())
            .client_ca_root(Certificate::from_pem(&self.ca_pem))
    }

    /// Dialing `peer`: its certificate must name it, and this node presents its own.
    pub(crate) fn peer_client(&self, peer: NodeId) -> ClientTlsConfig {
        ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&self.ca_pem))
            .identity(self.identity())
            .domain_name(node_name(peer))
    }
}

/// Whether `cert` is valid for `name` (its subject alternative names).
pub(crate) fn certificate_names(cert: &CertificateDer<'_>, name: &str) -> bool {
    let Ok(cert) = webpki::EndEntityCert::try_from(cert) else {
        return false;
    };
    let Ok(name) = ServerName::try_from(name) else {
        return false;
    };
    cert.verify_is_valid_for_subject_name(&name).is_ok()
}

/// What a client token allows; each role includes the ones before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Queries, and reading the cluster's and plugins' status.
    Read,
    /// Calls (commands through the log), and all of `read`.
    Write,
    /// Deploy, rollback and remove plugins, shadow runs, membership, snapshots, init.
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Read => "read",
            Role::Write => "write",
            Role::Admin => "admin",
        }
    }
}

/// The role a client API method needs (`/wasmraft.v1.Api/Call`). Methods not listed need
/// `admin`: a new method is closed until it is classified.
pub fn required_role(path: &str) -> Role {
    let method = path.rsplit('/').next().unwrap_or_default();
    match method {
        // A pipeline's calls each need `write` (`api::client` checks them one by one).
        "Query" | "Pipeline" | "ListPlugins" | "ClusterStatus" | "Checkpoints" | "CheckDigests" | "ShadowStatus"
        | "Members" => Role::Read,
        "Call" => Role::Write,
        _ => Role::Admin,
    }
}

/// The tokens a node accepts, by their sha256 (a node's config never holds a token itself).
#[derive(Debug, Clone, Default)]
pub struct Tokens {
    rules: Vec<([u8; 32], Role)>,
}

impl Tokens {
    /// From `(sha256 in hex, role)` pairs.
    pub fn new<'a>(rules: impl IntoIterator<Item = (&'a str, Role)>) -> anyhow::Result<Tokens> {
        let rules = rules
            .into_iter()
            .map(|(sha256, role)| {
                let hash = hex::decode(sha256)
                    .ok()
                    .and_then(|bytes| <[u8; 32]>::try_from(bytes).ok())
                    .with_context(|| format!("token sha256 {sha256:?} is not 64 hex digits"))?;
                Ok((hash, role))
            })
            .collect::<anyhow::Result<_>>()?;
        Ok(Tokens { rules })
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// The role of `token`, if it is one of ours. Every rule is compared, each in constant time,
    /// so the time taken tells nothing about which (if any) matched.
    pub fn role_of(&self, token: &str) -> Option<Role> {
        let hash: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let mut found = None;
        for (rule, role) in &self.rules {
            let differs = rule.iter().zip(&hash).fold(0u8, |acc, (a, b)| acc | (a ^ b));
            if differs == 0 {
                found = found.max(Some(*role));
            }
        }
        found
    }
}

/// The sha256 of a token, as a node's config lists it.
pub fn token_sha256(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// The bytes a plugin signature covers: a fixed context and the component's sha256 (hex).
pub fn signed_message(sha256: &str) -> Vec<u8> {
    format!("wasmraft plugin component v1 sha256:{sha256}").into_bytes()
}

/// A public key's id: the first 16 hex digits of its sha256.
pub fn key_id(public_key: &[u8]) -> String {
    hex::encode(&Sha256::digest(public_key)[..8])
}

/// Which components a node runs. Empty: any valid component. Otherwise a component must be
/// signed (ed25519) by one of `keys`, or have its sha256 in `allowed_sha256`.
#[derive(Debug, Clone, Default)]
pub struct PluginTrust {
    /// ed25519 public keys (32 bytes each), with their ids.
    keys: Vec<(String, Vec<u8>)>,
    allowed_sha256: BTreeSet<String>,
}

impl PluginTrust {
    /// From hex ed25519 public keys and hex sha256s.
    pub fn new<'a>(
        keys: impl IntoIterator<Item = &'a str>,
        allowed_sha256: impl IntoIterator<Item = &'a str>,
    ) -> anyhow::Result<PluginTrust> {
        let keys = keys
            .into_iter()
            .map(|key| {
                let public = hex::decode(key)
                    .ok()
                    .filter(|k| k.len() == 32)
                    .with_context(|| format!("trusted key {key:?} is not an ed25519 public key (64 hex digits)"))?;
                Ok((key_id(&public), public))
            })
            .collect::<anyhow::Result<_>>()?;
        let allowed_sha256 = allowed_sha256
            .into_iter()
            .map(|sha| {
                anyhow::ensure!(
                    sha.len() == 64 && sha.bytes().all(|b| b.is_ascii_hexdigit()),
                    "allowed sha256 {sha:?} is not 64 hex digits"
                );
                Ok(sha.to_ascii_lowercase())
            })
            .collect::<anyhow::Result<_>>()?;
        Ok(PluginTrust { keys, allowed_sha256 })
    }

    /// Whether any component is accepted.
    pub fn is_open(&self) -> bool {
        self.keys.is_empty() && self.allowed_sha256.is_empty()
    }

    /// Whether the component `sha256`, with `signature` by the key `key_id` (both may be empty),
    /// may run here; else why not.
    pub fn check(&self, sha256: &str, signature: &[u8], key_id: &str) -> Result<(), String> {
        if self.is_open() || self.allowed_sha256.contains(sha256) {
            return Ok(());
        }
        if signature.is_empty() {
            return Err(if self.keys.is_empty() {
                format!("component {sha256} is not in this node's allowed_sha256 list")
            } else {
                format!(
                    "component {sha256} is not signed, and this node runs only signed components (sign it: wasmraft plugin sign)"
                )
            });
        }
        let Some((_, public)) = self.keys.iter().find(|(id, _)| id == key_id) else {
            return Err(format!(
                "component {sha256} is signed by key {key_id:?}, which this node does not trust"
            ));
        };
        UnparsedPublicKey::new(&ED25519, public)
            .verify(&signed_message(sha256), signature)
            .map_err(|_| format!("component {sha256}: its signature by key {key_id} does not verify"))
    }
}

#[cfg(test)]
mod tests {
    use ring::signature::{Ed25519KeyPair, KeyPair};

    use super::*;

    #[test]
    fn each_method_needs_the_role_of_what_it_does_and_unknown_ones_need_admin() {
        assert_eq!(required_role("/wasmraft.v1.Api/Query"), Role::Read);
        assert_eq!(required_role("/wasmraft.v1.Api/Call"), Role::Write);
        assert_eq!(required_role("/wasmraft.v1.Api/Pipeline"), Role::Read);
        assert_eq!(required_role("/wasmraft.v1.Api/Deploy"), Role::Admin);
        assert_eq!(required_role("/wasmraft.v1.Api/ChangeMembership"), Role::Admin);
        assert_eq!(required_role("/wasmraft.v1.Api/SomethingNew"), Role::Admin);
    }

    #[test]
    fn a_token_has_the_role_its_sha256_is_listed_with_and_others_have_none() {
        let tokens = Tokens::new([
            (token_sha256("r").as_str(), Role::Read),
            (token_sha256("a").as_str(), Role::Admin),
        ])
        .unwrap();
        assert_eq!(tokens.role_of("r"), Some(Role::Read));
        assert_eq!(tokens.role_of("a"), Some(Role::Admin));
        assert_eq!(tokens.role_of("x"), None);
        assert_eq!(tokens.role_of(""), None);
        assert!(Tokens::new([("abc", Role::Read)]).is_err());
    }

    #[test]
    fn only_a_signature_by_a_trusted_key_over_the_same_component_passes() {
        let seed = [7u8; 32];
        let pair = Ed25519KeyPair::from_seed_unchecked(&seed).unwrap();
        let public = hex::encode(pair.public_key().as_ref());
        let id = key_id(pair.public_key().as_ref());
        let sha = "ab".repeat(32);
        let signature = pair.sign(&signed_message(&sha));
        let trust = PluginTrust::new([public.as_str()], []).unwrap();
        assert_eq!(trust.check(&sha, signature.as_ref(), &id), Ok(()));
        let other = "cd".repeat(32);
        assert!(
            trust
                .check(&other, signature.as_ref(), &id)
                .unwrap_err()
                .contains("does not verify")
        );
        assert!(trust.check(&sha, b"", "").unwrap_err().contains("not signed"));
        assert!(
            trust
                .check(&sha, signature.as_ref(), "0000")
                .unwrap_err()
                .contains("does not trust")
        );
        let allowed = PluginTrust::new([], [sha.as_str()]).unwrap();
        assert_eq!(allowed.check(&sha, b"", ""), Ok(()));
        assert!(allowed.check(&other, b"", "").unwrap_err().contains("allowed_sha256"));
        assert!(PluginTrust::default().check(&other, b"", "").is_ok());
    }
}
