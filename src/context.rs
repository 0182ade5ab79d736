//! Where client commands connect, and how: the endpoint, the CA that signs the cluster's
//! certificates, and the bearer token. Flags and environment variables win; otherwise the
//! per-user context file that `wasmraft dev` writes (as kubectl's kubeconfig) fills them in, so
//! `wasmraft call kv ...` works against a secure dev cluster unchanged.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use serde::{Deserialize, Serialize};
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};
use wasmraft_node::pb::api_client::ApiClient;

/// The endpoint when neither a flag, the environment nor a context names one.
pub const DEFAULT_ENDPOINT: &str = "http://127.0.0.1:7001";

/// How a client command reaches the cluster (flattened into each client command).
#[derive(clap::Args, Clone, Debug, Default)]
pub struct EndpointArg {
    /// Any node of the cluster (`https://host:port`; default: the context's first endpoint, else
    /// http://127.0.0.1:7001). An endpoint the context lists is upgraded to TLS.
    #[arg(long, env = "WASMRAFT_ENDPOINT", global = true)]
    pub endpoint: Option<String>,
    /// The bearer token (default: the context's, for its endpoints).
    #[arg(long, env = "WASMRAFT_TOKEN", global = true, hide_env_values = true)]
    pub token: Option<String>,
    /// The CA certificate (PEM) that signed the nodes' certificates, for https endpoints
    /// (default: the context's, for its endpoints).
    #[arg(long, env = "WASMRAFT_CA", global = true, value_name = "FILE")]
    pub ca: Option<PathBuf>,
}

/// The per-user context: a dev cluster's endpoints, CA and admin token.
#[derive(Debug, Serialize, Deserialize)]
pub struct Context {
    pub endpoints: Vec<String>,
    pub ca: PathBuf,
    pub token: String,
}

/// `$WASMRAFT_CONTEXT`, else `~/.config/wasmraft/context.toml` (`$XDG_CONFIG_HOME` if set).
pub fn context_path() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("WASMRAFT_CONTEXT") {
        return Some(PathBuf::from(path));
    }
    let config = std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| Path::new(&home).join(".config")))?;
    Some(config.join("wasmraft").join("context.toml"))
}

impl Context {
    /// The context file, if there is one (a file that does not parse is an error, not ignored).
    pub fn load() -> anyhow::Result<Option<Context>> {
        let Some(path) = context_path() else {
            return Ok(None);
        };
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        let context = toml::from_str(&text).with_context(|| format!("{} is not a wasmraft context", path.display()))?;
        Ok(Some(context))
    }

    /// Writes it where [`context_path`] says, readable by this user only (it holds a token).
    pub fn save(&self) -> anyhow::Result<PathBuf> {
        use std::io::Write as _;
        use std::os::unix::fs::OpenOptionsExt as _;
        let path = context_path().context("no home directory for the context file: set WASMRAFT_CONTEXT")?;
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let text = format!(
            "# Written by `wasmraft dev`: its endpoints, CA and admin token, used by the client\n# commands when no flag or environment variable says otherwise.\n{}",
            toml::to_string(self)?
        );
        let tmp = path.with_extension("toml.tmp");
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .with_context(|| format!("writing {}", tmp.display()))?;
        file.write_all(text.as_bytes())?;
        std::fs::rename(&tmp, &path).with_context(|| format!("writing {}", path.display()))?;
        Ok(path)
    }

    /// The context's endpoint at the same host and port as `endpoint`, if it lists one.
    fn lists(&self, endpoint: &str) -> bool {
        self.endpoints.iter().any(|e| host_port(e) == host_port(endpoint))
    }
}

fn host_port(endpoint: &str) -> &str {
    let rest = endpoint.split_once("://").map_or(endpoint, |(_, rest)| rest);
    rest.trim_end_matches('/')
}

/// A resolved endpoint: where, the CA for TLS, the token.
#[derive(Clone, Debug)]
pub struct Target {
    pub endpoint: String,
    ca: Option<Vec<u8>>,
    token: Option<String>,
}

impl Target {
    /// `endpoint`, trusting `ca` (PEM) for https, with `token`.
    pub fn new(endpoint: &str, ca: Option<Vec<u8>>, token: Option<String>) -> Target {
        Target {
            endpoint: with_scheme(endpoint),
            ca,
            token,
        }
    }

    /// The tonic endpoint: TLS against the CA for https.
    pub fn tonic_endpoint(&self) -> anyhow::Result<Endpoint> {
        let endpoint = Endpoint::from_shared(self.endpoint.clone())
            .with_context(|| format!("bad endpoint {:?}", self.endpoint))?
            .connect_timeout(Duration::from_secs(3))
            .tcp_nodelay(true);
        if !self.endpoint.starts_with("https://") {
            return Ok(endpoint);
        }
        let ca = self.ca.as_ref().with_context(|| {
            format!(
                "{} is https: give the cluster's CA certificate with --ca FILE (or $WASMRAFT_CA)",
                self.endpoint
            )
        })?;
        Ok(endpoint.tls_config(ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca)))?)
    }

    /// What adds the token to every request.
    pub fn bearer(&self) -> anyhow::Result<Bearer> {
        let value = match &self.token {
            Some(token) => Some(
                format!("Bearer {token}")
                    .parse::<MetadataValue<Ascii>>()
                    .context("the token has characters a header cannot carry")?,
            ),
            None => None,
        };
        Ok(Bearer(value))
    }
}

fn with_scheme(endpoint: &str) -> String {
    if endpoint.contains("://") {
        endpoint.to_string()
    } else {
        format!("http://{endpoint}")
    }
}

impl EndpointArg {
    /// Flags and environment first, then the context (for an endpoint it lists, or none given).
    pub fn target(&self) -> anyhow::Result<Target> {
        let context = Context::load()?;
        let read_ca = |path: &Path| std::fs::read(path).with_context(|| format!("reading the CA {}", path.display()));
        let given_ca = match &self.ca {
            Some(path) => Some(read_ca(path)?),
            None => None,
        };
        let endpoint = self
            .endpoint
            .clone()
            .or_else(|| context.as_ref().and_then(|c| c.endpoints.first().cloned()))
            .unwrap_or_else(|| DEFAULT_ENDPOINT.to_string());
        let endpoint = with_scheme(&endpoint);
        match context.filter(|c| c.lists(&endpoint)) {
            Some(context) => Ok(Target {
                endpoint: format!("https://{}", host_port(&endpoint)),
                ca: match given_ca {
                    Some(ca) => Some(ca),
                    None => Some(read_ca(&context.ca).context("the context's CA (is the dev cluster still there?)")?),
                },
                token: self.token.clone().or(Some(context.token)),
            }),
            None => Ok(Target {
                endpoint,
                ca: given_ca,
                token: self.token.clone(),
            }),
        }
    }
}

/// Adds `authorization: Bearer TOKEN` to every request, when there is a token.
#[derive(Clone, Debug)]
pub struct Bearer(Option<MetadataValue<Ascii>>);

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(value) = &self.0 {
            request.metadata_mut().insert("authorization", value.clone());
        }
        Ok(request)
    }
}

/// A client of the cluster's API, with the target's token on every request.
pub type Api = ApiClient<InterceptedService<Channel, Bearer>>;

/// A client of `target` that connects on first use.
pub fn connect_lazy(target: &Target) -> anyhow::Result<Api> {
    let channel = target.tonic_endpoint()?.connect_lazy();
    Ok(ApiClient::with_interceptor(channel, target.bearer()?)
        .max_decoding_message_size(64 << 20)
        .max_encoding_message_size(64 << 20))
}

/// Connects to `target` (TLS and token as it says).
pub async fn connect(target: &Target) -> anyhow::Result<Api> {
    let channel = target.tonic_endpoint()?.connect().await.with_context(|| {
        format!(
            "cannot reach a wasmraft node at {} (is `wasmraft dev` running?)",
            target.endpoint
        )
    })?;
    Ok(ApiClient::with_interceptor(channel, target.bearer()?)
        .max_decoding_message_size(64 << 20)
        .max_encoding_message_size(64 << 20))
}
