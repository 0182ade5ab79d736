//! Secure by default, over real `wasmraft node` and `wasmraft dev` processes: clients need a token
//! with the method's role; peers need a certificate from the cluster's CA that names a member;
//! nodes that require signatures run only signed components; forged snapshots are refused with
//! nothing written; and the dev cluster is secure while the CLI finds its CA and token.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use common::{BIN, eventually, text};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use wasmraft_node::pb::{self, peer_client::PeerClient};

/// Runs the CLI with `env` (and never the user's context unless `env` names one).
fn cli(env: &[(&str, &str)], args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .env("WASMRAFT_CONTEXT", "/nonexistent/context.toml")
        .env_remove("WASMRAFT_TOKEN")
        .env_remove("WASMRAFT_ENDPOINT")
        .envs(env.iter().copied())
        .output()
        .expect("running wasmraft")
}

/// `wasmraft certs init DIR --nodes N`; answers the admin token it printed.
fn certs_init(dir: &Path, nodes: u64) -> String {
    let out = cli(
        &[],
        &["certs", "init", dir.to_str().unwrap(), "--nodes", &nodes.to_string()],
    );
    assert!(out.status.success(), "{}", text(&out));
    let printed = text(&out);
    let token = printed
        .lines()
        .find_map(|l| l.trim().strip_prefix("token"))
        .expect("a token");
    token.trim().to_string()
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}

/// One `wasmraft node` process with its own config; killed when dropped.
struct NodeProc {
    child: Child,
    client: String,
    peer: String,
    data_dir: PathBuf,
}

impl Drop for NodeProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts node `id` in `dir` with `extra` config lines; `secure`: TLS from `certs`.
fn start_node(dir: &Path, id: u64, certs: Option<&Path>, extra: &str, args: &[&str]) -> NodeProc {
    let client_port = common::free_port();
    let peer_port = common::free_port();
    let scheme = if certs.is_some() { "https" } else { "http" };
    let mut config = format!(
        "id = {id}\nlisten = \"127.0.0.1:{client_port}\"\npeer_listen = \"127.0.0.1:{peer_port}\"\ndata_dir = \"node-{id}\"\n{extra}\n"
    );
    if let Some(certs) = certs {
        let c = certs.display();
        config += &format!("[tls]\nca = \"{c}/ca.pem\"\ncert = \"{c}/node-{id}.pem\"\nkey = \"{c}/node-{id}.key\"\n");
    }
    let path = dir.join(format!("node-{id}.toml"));
    std::fs::write(&path, config).unwrap();
    let log = std::fs::File::create(dir.join(format!("node-{id}.log"))).unwrap();
    let child = Command::new(BIN)
        .arg("node")
        .args(args)
        .arg("--config")
        .arg(&path)
        .env("RUST_LOG", "wasmraft=info,warn")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    NodeProc {
        child,
        client: format!("{scheme}://127.0.0.1:{client_port}"),
        peer: format!("{scheme}://127.0.0.1:{peer_port}"),
        data_dir: dir.join(format!("node-{id}")),
    }
}

/// Runs the CLI until it succeeds (the node is starting), or panics with its last output.
async fn cli_eventually(env: &[(&str, &str)], args: &[&str]) -> String {
    let mut last = String::new();
    for _ in 0..200 {
        let out = cli(env, args);
        if out.status.success() {
            return text(&out);
        }
        last = text(&out);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("wasmraft {args:?} kept failing: {last}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_needs_a_token_with_the_role_of_what_it_asks_and_a_refusal_names_the_role() {
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    let admin = certs_init(&certs, 1);
    let (read, write) = ("a-read-token", "a-write-token");
    let tokens = format!(
        "[[tokens]]\nsha256 = \"{}\"\nrole = \"admin\"\n[[tokens]]\nsha256 = \"{}\"\nrole = \"read\"\n[[tokens]]\nsha256 = \"{}\"\nrole = \"write\"\n",
        sha256_hex(admin.as_bytes()),
        sha256_hex(read.as_bytes()),
        sha256_hex(write.as_bytes()),
    );
    let node = start_node(dir.path(), 1, Some(&certs), &tokens, &[]);
    let ca = certs.join("ca.pem");
    let ca = ca.to_str().unwrap();
    let at = |token: &'static str| -> Vec<(&'static str, String)> {
        let mut env = vec![
            ("WASMRAFT_ENDPOINT", node.client.clone()),
            ("WASMRAFT_CA", ca.to_string()),
        ];
        if !token.is_empty() {
            env.push(("WASMRAFT_TOKEN", token.to_string()));
        }
        env
    };
    let admin: &'static str = Box::leak(admin.into_boxed_str());
    let env = |token| at(token);
    let run = |token: &'static str, args: &[&str]| {
        let env = env(token);
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        cli(&env, args)
    };
    {
        let env = env(admin);
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        cli_eventually(&env, &["cluster", "init"]).await;
        cli_eventually(&env, &["deploy", "kv", wasmraft::plugins::KV]).await;
    }
    let put = r#"{"op":"put","key":"k","value":"v"}"#;
    let get = r#"{"op":"get","key":"k"}"#;

    let none = run("", &["query", "kv", get]);
    assert!(!none.status.success());
    assert!(
        text(&none).contains("no token: this call needs the `read` role"),
        "{}",
        text(&none)
    );
    let wrong = run("not-a-token", &["call", "kv", put]);
    assert!(!wrong.status.success());
    assert!(
        text(&wrong).contains("not valid here: this call needs the `write` role"),
        "{}",
        text(&wrong)
    );
    let read_writes = run(read, &["call", "kv", put]);
    assert!(!read_writes.status.success());
    assert!(
        text(&read_writes).contains("needs the `write` role; the token has `read`"),
        "{}",
        text(&read_writes)
    );
    let read_deploys = run(read, &["deploy", "other", wasmraft::plugins::KV]);
    assert!(!read_deploys.status.success());
    assert!(
        text(&read_deploys).contains("needs the `admin` role; the token has `read`"),
        "{}",
        text(&read_deploys)
    );
    let write_deploys = run(write, &["deploy", "other", wasmraft::plugins::KV]);
    assert!(text(&write_deploys).contains("needs the `admin` role; the token has `write`"));

    let written = run(write, &["call", "kv", put]);
    assert!(written.status.success(), "{}", text(&written));
    let read_back = run(read, &["query", "kv", get]);
    assert!(read_back.status.success(), "{}", text(&read_back));
    assert!(text(&read_back).contains(r#""value":"v""#), "{}", text(&read_back));
    // On a `Pipeline` stream (the bench's), the read token's queries are answered and its calls
    // refused, each on its own.
    let bench = [
        "bench",
        "--clients",
        "1",
        "--pipeline",
        "4",
        "--ops",
        "20",
        "--keys",
        "1",
    ];
    let piped_reads = run(read, &[&bench[..], &["--read-ratio", "1"]].concat());
    assert!(piped_reads.status.success(), "{}", text(&piped_reads));
    assert!(!text(&piped_reads).contains("failed"), "{}", text(&piped_reads));
    let piped_writes = run(read, &bench);
    assert!(
        text(&piped_writes).contains("failed, by status code: PermissionDenied 20"),
        "{}",
        text(&piped_writes)
    );
    let untouched = run(read, &["query", "kv", r#"{"op":"get","key":"k0"}"#]);
    assert!(text(&untouched).contains("null"), "{}", text(&untouched));
    // Nothing the refused calls asked for happened.
    let plugins = run(read, &["plugins"]);
    assert!(!text(&plugins).contains("other"), "{}", text(&plugins));
    // Plaintext to a TLS listener does not get through either.
    let plain = cli(
        &[
            ("WASMRAFT_ENDPOINT", &node.client.replace("https", "http")),
            ("WASMRAFT_TOKEN", admin),
        ],
        &["query", "kv", get],
    );
    assert!(!plain.status.success(), "{}", text(&plain));
}

/// A peer client presenting `identity`, trusting `ca`, that expects the server to be `node-ID`.
async fn peer_client(
    addr: &str,
    ca: &Path,
    identity: Option<(&Path, &Path)>,
    server: u64,
) -> Option<PeerClient<Channel>> {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(std::fs::read(ca).unwrap()))
        .domain_name(format!("node-{server}"));
    if let Some((cert, key)) = identity {
        tls = tls.identity(Identity::from_pem(
            std::fs::read(cert).unwrap(),
            std::fs::read(key).unwrap(),
        ));
    }
    let channel = Endpoint::from_shared(addr.to_string())
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect_timeout(Duration::from_secs(2))
        .connect()
        .await
        .ok()?;
    Some(PeerClient::new(channel))
}

fn vote_request() -> pb::VoteRequest {
    pb::VoteRequest {
        vote: Some(pb::Vote {
            term: 100,
            voted_for: Some(9),
            committed: false,
        }),
        last_log_id: Some(pb::LogId { term: 99, index: 1000 }),
        leadership_transfer: false,
    }
}

fn append_request() -> pb::AppendRequest {
    pb::AppendRequest {
        vote: Some(pb::Vote {
            term: 100,
            voted_for: Some(9),
            committed: true,
        }),
        prev_log_id: None,
        entries: Vec::new(),
        leader_commit: None,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_peer_whose_certificate_is_from_another_ca_or_names_no_member_cannot_join_vote_or_append() {
    let dir = tempfile::tempdir().unwrap();
    let (ours, theirs) = (dir.path().join("ours"), dir.path().join("theirs"));
    let admin = certs_init(&ours, 2);
    certs_init(&theirs, 2);
    // Node 9 has a certificate from our CA, but is no member.
    let out = cli(&[], &["certs", "node", ours.to_str().unwrap(), "--id", "9"]);
    assert!(out.status.success(), "{}", text(&out));
    let tokens = format!(
        "[[tokens]]\nsha256 = \"{}\"\nrole = \"admin\"",
        sha256_hex(admin.as_bytes())
    );
    let leader = start_node(dir.path(), 1, Some(&ours), &tokens, &[]);
    // Node 2 runs with the other CA's certificate.
    let stranger_dir = dir.path().join("stranger");
    std::fs::create_dir_all(&stranger_dir).unwrap();
    let stranger = start_node(&stranger_dir, 2, Some(&theirs), &tokens, &[]);
    let ca = ours.join("ca.pem");
    let env = [
        ("WASMRAFT_ENDPOINT", leader.client.as_str()),
        ("WASMRAFT_CA", ca.to_str().unwrap()),
        ("WASMRAFT_TOKEN", admin.as_str()),
    ];
    cli_eventually(&env, &["cluster", "init"]).await;
    cli_eventually(&env, &["deploy", "kv", wasmraft::plugins::KV]).await;

    // Join: the leader cannot verify the stranger, and nothing changes.
    let join = cli(&env, &["cluster", "add-learner", "2", &stranger.peer, "--no-wait"]);
    assert!(!join.status.success(), "a node from another CA joined: {}", text(&join));
    let status = cli(&env, &["cluster", "status"]);
    assert!(!text(&status).contains("node 2 "), "{}", text(&status));

    // Vote and append straight to the leader's peer port, as the stranger would.
    let stranger_identity = (theirs.join("node-2.pem"), theirs.join("node-2.key"));
    let as_stranger = peer_client(&leader.peer, &ca, Some((&stranger_identity.0, &stranger_identity.1)), 1).await;
    if let Some(mut peer) = as_stranger {
        assert!(
            peer.vote(vote_request()).await.is_err(),
            "a stranger's vote got an answer"
        );
        assert!(
            peer.append(append_request()).await.is_err(),
            "a stranger's append got an answer"
        );
    }
    let anonymous = peer_client(&leader.peer, &ca, None, 1).await;
    if let Some(mut peer) = anonymous {
        assert!(
            peer.vote(vote_request()).await.is_err(),
            "a vote without a certificate got an answer"
        );
    }
    // Our CA, but not a member: the certificate check passes and the member check refuses.
    let outsider = (ours.join("node-9.pem"), ours.join("node-9.key"));
    let mut peer = peer_client(&leader.peer, &ca, Some((&outsider.0, &outsider.1)), 1)
        .await
        .expect("our CA's certificate completes the handshake");
    let refused = peer.vote(vote_request()).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");
    assert!(refused.message().contains("names no member"), "{refused:?}");
    let refused = peer.append(append_request()).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");

    // The leader kept its term and its leadership: nothing reached Raft.
    let status = cli(&env, &["cluster", "status", "--json"]);
    let status: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(status["state"], "leader", "{status}");
    assert!(status["term"].as_u64().unwrap() < 100, "{status}");
    drop(stranger);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_node_that_requires_signatures_refuses_unsigned_and_wrongly_signed_components() {
    let dir = tempfile::tempdir().unwrap();
    let (key, other_key) = (dir.path().join("key"), dir.path().join("other-key"));
    for k in [&key, &other_key] {
        let out = cli(&[], &["plugin", "keygen", "--out", k.to_str().unwrap()]);
        assert!(out.status.success(), "{}", text(&out));
    }
    let public = std::fs::read_to_string(dir.path().join("key.pub")).unwrap();
    let trust = format!("[plugins]\ntrusted_keys = [\"{}\"]", public.trim());
    let node = start_node(dir.path(), 1, None, &trust, &["--insecure"]);
    let env = [("WASMRAFT_ENDPOINT", node.client.as_str())];
    cli_eventually(&env, &["cluster", "init"]).await;
    let component = dir.path().join("kv.wasm");
    std::fs::copy(wasmraft::plugins::KV, &component).unwrap();
    let component = component.to_str().unwrap();

    let unsigned = cli(&env, &["deploy", "kv", component]);
    assert!(!unsigned.status.success());
    assert!(text(&unsigned).contains("is not signed"), "{}", text(&unsigned));

    let out = cli(
        &[],
        &["plugin", "sign", component, "--key", other_key.to_str().unwrap()],
    );
    assert!(out.status.success(), "{}", text(&out));
    let untrusted = cli(&env, &["deploy", "kv", component]);
    assert!(!untrusted.status.success());
    assert!(
        text(&untrusted).contains("which this node does not trust"),
        "{}",
        text(&untrusted)
    );

    // A trusted key's signature, but over other bytes: forged into this component's file.
    let out = cli(&[], &["plugin", "sign", component, "--key", key.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out));
    let sig_path = format!("{component}.sig");
    let good = std::fs::read_to_string(&sig_path).unwrap();
    let forged = good
        .lines()
        .map(|l| match l.strip_prefix("signature = \"") {
            Some(sig) => format!(
                "signature = \"{}{}",
                if sig.starts_with('0') { "1" } else { "0" },
                &sig[1..]
            ),
            None => l.to_string(),
        })
        .collect::<Vec<_>>()
        .join("\n");
    std::fs::write(&sig_path, forged).unwrap();
    let wrong = cli(&env, &["deploy", "kv", component]);
    assert!(!wrong.status.success());
    assert!(text(&wrong).contains("does not verify"), "{}", text(&wrong));
    let plugins = cli(&env, &["plugins"]);
    assert!(
        !text(&plugins).contains("kv "),
        "a refused component runs: {}",
        text(&plugins)
    );

    std::fs::write(&sig_path, good).unwrap();
    let signed = cli(&env, &["deploy", "kv", component]);
    assert!(signed.status.success(), "{}", text(&signed));
    assert!(text(&signed).contains("signed by   key"), "{}", text(&signed));
    let call = cli(&env, &["call", "kv", r#"{"op":"put","key":"a","value":"1"}"#]);
    assert!(call.status.success(), "{}", text(&call));
}

/// A snapshot file as a sender would stream it: magic, header, a body, and a sha256 trailer.
fn forged_snapshot(header: &pb::SnapshotHeader) -> Vec<u8> {
    use prost::Message;
    let mut file = b"WRSNAP\0\x02".to_vec();
    let header = header.encode_to_vec();
    file.extend_from_slice(&(header.len() as u32).to_le_bytes());
    file.extend_from_slice(&header);
    file.extend_from_slice(&[0; 64]);
    let sha = <sha2::Sha256 as sha2::Digest>::digest(&file);
    file.extend_from_slice(&sha);
    file
}

fn header(plugins: &[&str]) -> pb::SnapshotHeader {
    pb::SnapshotHeader {
        format: 2,
        last_log_id: Some(pb::LogId { term: 1, index: 5000 }),
        membership: Some(pb::StoredMembership {
            log_id: Some(pb::LogId { term: 1, index: 1 }),
            membership: Some(pb::Membership {
                configs: vec![pb::NodeIdSet { ids: vec![1] }],
                nodes: [(1, "http://127.0.0.1:1".to_string())].into(),
            }),
        }),
        registry: Some(pb::Registry {
            plugins: plugins
                .iter()
                .map(|name| pb::RegisteredPlugin {
                    name: name.to_string(),
                    sha256: "ab".repeat(32),
                    ..Default::default()
                })
                .collect(),
            shadows: Vec::new(),
        }),
        digest: Vec::new(),
    }
}

/// Streams `file` (announcing `size`) to `peer`; answers the stream's first error, if any.
async fn send_snapshot(peer: &str, file: &[u8], size: u64, send: usize) -> Option<tonic::Status> {
    let mut client = PeerClient::connect(peer.to_string()).await.unwrap();
    let sha256 = file[file.len().saturating_sub(32)..].to_vec();
    let start = pb::SnapshotChunk {
        part: Some(pb::snapshot_chunk::Part::Start(pb::SnapshotStart {
            vote: Some(pb::Vote {
                term: 1,
                voted_for: Some(1),
                committed: true,
            }),
            size,
            sha256,
            last_log_id: Some(pb::LogId { term: 1, index: 5000 }),
        })),
    };
    let data = file[..send.min(file.len())].to_vec();
    let chunk = pb::SnapshotChunk {
        part: Some(pb::snapshot_chunk::Part::Data(pb::SnapshotData {
            offset: 0,
            crc32: crc32fast::hash(&data),
            data: data.into(),
        })),
    };
    let mut acks = match client.install_snapshot(futures::stream::iter([start, chunk])).await {
        Ok(acks) => acks.into_inner(),
        Err(status) => return Some(status),
    };
    loop {
        match acks.message().await {
            Ok(Some(_)) => continue,
            Ok(None) => return None,
            Err(status) => return Some(status),
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_forged_snapshot_is_refused_with_nothing_written_and_the_node_stays_healthy() {
    let dir = tempfile::tempdir().unwrap();
    let node = start_node(dir.path(), 1, None, "", &["--insecure"]);
    let env = [("WASMRAFT_ENDPOINT", node.client.as_str())];
    cli_eventually(&env, &["cluster", "init"]).await;
    cli_eventually(&env, &["deploy", "kv", wasmraft::plugins::KV]).await;
    let put = cli(&env, &["call", "kv", r#"{"op":"put","key":"a","value":"1"}"#]);
    assert!(put.status.success(), "{}", text(&put));
    let before = cli(&env, &["cluster", "status", "--json"]);
    let before: serde_json::Value = serde_json::from_slice(&before.stdout).unwrap();

    let cases: [(&str, Vec<u8>, Option<u64>, &str); 4] = [
        (
            "a name that reaches into another plugin's keys",
            forged_snapshot(&header(&["kv\0evil"])),
            None,
            "not a valid plugin name",
        ),
        (
            "a duplicate name",
            forged_snapshot(&header(&["kv", "kv"])),
            None,
            "twice",
        ),
        (
            "a huge announced size",
            forged_snapshot(&header(&["kv"])),
            Some(1 << 50),
            "does not fit",
        ),
        (
            "a header with no membership",
            forged_snapshot(&pb::SnapshotHeader {
                membership: None,
                ..header(&["kv"])
            }),
            None,
            "no membership",
        ),
    ];
    for (what, file, size, reason) in cases {
        let size = size.unwrap_or(file.len() as u64);
        // One transfer at a time: the last one's receiver may still be letting go (a leader
        // sends again too).
        let refused = eventually("the receiver to take a transfer", Duration::from_secs(10), || async {
            match send_snapshot(&node.peer, &file, size, file.len()).await {
                Some(status) if status.message().contains("already receiving") => None,
                outcome => Some(outcome),
            }
        })
        .await;
        let refused = refused.unwrap_or_else(|| panic!("{what}: accepted"));
        assert!(refused.message().contains(reason), "{what}: {refused:?}");
    }
    // Truncated: the stream ends early. Kept for a resume, never installed.
    let file = forged_snapshot(&header(&["kv"]));
    let _ = send_snapshot(&node.peer, &file, file.len() as u64, file.len() / 2).await;

    let after = cli(&env, &["cluster", "status", "--json"]);
    let after: serde_json::Value = serde_json::from_slice(&after.stdout).unwrap();
    assert_eq!(after["applied_index"], before["applied_index"], "{after}");
    assert_eq!(after["state_digest"], before["state_digest"], "{after}");
    assert_eq!(after["state"], "leader", "{after}");
    assert!(
        after["snapshot"]["rejected"]["corrupted"].as_u64().unwrap() >= 3,
        "{after}"
    );
    let incoming = node.data_dir.join("snapshots").join("incoming");
    let left: Vec<_> = std::fs::read_dir(&incoming)
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(
        left.iter().all(|name| name
            .to_string_lossy()
            .starts_with(&hex::encode(&file[file.len() - 32..]))),
        "only the truncated transfer's part file may stay (for a resume): {left:?}"
    );
    let get = cli(&env, &["query", "kv", r#"{"op":"get","key":"a"}"#]);
    assert!(text(&get).contains(r#""value":"1""#), "{}", text(&get));
    let put = cli(&env, &["call", "kv", r#"{"op":"put","key":"b","value":"2"}"#]);
    assert!(put.status.success(), "the node is not healthy: {}", text(&put));

    // A client's command is bounded too: one command is one log entry, and appends are bounded.
    let huge = dir.path().join("huge.json");
    std::fs::write(
        &huge,
        format!(r#"{{"op":"put","key":"h","value":"{}"}}"#, "x".repeat(3 << 20)),
    )
    .unwrap();
    let refused = cli(&env, &["call", "kv", "--file", huge.to_str().unwrap()]);
    assert!(text(&refused).contains("over the limit"), "{}", text(&refused));
}

#[tokio::test(flavor = "multi_thread")]
async fn the_dev_cluster_is_secure_and_the_cli_finds_its_ca_and_token_through_the_context() {
    let dir = tempfile::tempdir().unwrap();
    let dev = common::DevCluster::start(dir.path(), &[]).await;
    let base = dev.base_port;
    let context = dir.path().join("context.toml");
    let ctx = context.to_str().unwrap();
    let put = r#"{"op":"put","key":"a","value":"1"}"#;
    // No flags: the context's endpoint, CA and token.
    let call = cli(&[("WASMRAFT_CONTEXT", ctx)], &["call", "kv", put]);
    assert!(call.status.success(), "{}", text(&call));
    // An http endpoint the context lists is upgraded to TLS.
    let endpoint = format!("http://127.0.0.1:{}", base + 1);
    let query = cli(
        &[("WASMRAFT_CONTEXT", ctx)],
        &["query", "--endpoint", &endpoint, "kv", r#"{"op":"get","key":"a"}"#],
    );
    assert!(text(&query).contains(r#""value":"1""#), "{}", text(&query));
    // Without the context, plaintext gets nowhere; with a wrong token, the node says so.
    let plain = cli(
        &[],
        &["query", "--endpoint", &endpoint, "kv", r#"{"op":"get","key":"a"}"#],
    );
    assert!(!plain.status.success(), "{}", text(&plain));
    let wrong = cli(
        &[("WASMRAFT_CONTEXT", ctx), ("WASMRAFT_TOKEN", "wrong")],
        &["call", "kv", put],
    );
    assert!(text(&wrong).contains("not valid here"), "{}", text(&wrong));
    // Peers have their own listener (base + 50), which wants a certificate.
    let peer = format!("https://127.0.0.1:{}", base + 50);
    let ca = dir.path().join("data").join("certs").join("ca.pem");
    let peer_as_client = cli(
        &[("WASMRAFT_CA", ca.to_str().unwrap())],
        &["cluster", "status", "--endpoint", &peer],
    );
    assert!(!peer_as_client.status.success(), "{}", text(&peer_as_client));
}
