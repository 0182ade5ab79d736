//! The node's plain HTTP/1.1 server on its metrics address (`metrics_listen`):
//! - `GET /metrics`: the Prometheus text format of [`crate::metrics::Metrics`];
//! - `GET /`: the live status page (one static file, `page/index.html`, built into the binary);
//! - `GET /api/status`: the JSON the page polls: every member's status, the plugins, this node's
//!   last five minutes of samples and its recent errors.
//!
//! One request per connection; anything else gets a 404. Input is never trusted: a request head
//! longer than 8 KiB, or one that takes more than 5 s to arrive, ends the connection. The server
//! also samples the node's counters once a second for the page's history.

use std::sync::Arc;
use std::time::Duration;

use openraft::async_runtime::WatchReceiver;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tracing::debug;

use crate::cluster::{NodeInner, diverged};
use crate::metrics::Scraped;

const MAX_REQUEST_BYTES: usize = 8 << 10;

/// The status page.
const PAGE: &str = include_str!("page/index.html");

/// Serves HTTP on `listener` until `stop` resolves.
pub(crate) fn serve_http(
    node: Arc<NodeInner>,
    listener: TcpListener,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        tokio::pin!(stop);
        let mut ticker = tokio::time::interval(Duration::from_secs(1));
        loop {
            let conn = tokio::select! {
                _ = &mut stop => return,
                _ = ticker.tick() => {
                    // From openraft's metrics: the full status would list the snapshot directory.
                    let applied = node.raft.metrics().borrow_watched().last_applied.map_or(0, |l| l.index);
                    node.shared.metrics.activity.sample(applied);
                    continue;
                }
                conn = listener.accept() => conn,
            };
            match conn {
                Ok((stream, _)) => {
                    let node = node.clone();
                    tokio::spawn(async move {
                        if let Err(e) = answer(&node, stream).await {
                            debug!("http request: {e}");
                        }
                    });
                }
                Err(e) => debug!("http accept: {e}"),
            }
        }
    })
}

async fn answer(node: &NodeInner, mut stream: TcpStream) -> std::io::Result<()> {
    let mut request = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    let read_head = async {
        while !request.windows(4).any(|w| w == b"\r\n\r\n") && request.len() < MAX_REQUEST_BYTES {
            let n = stream.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            request.extend_from_slice(&buf[..n]);
        }
        Ok::<_, std::io::Error>(())
    };
    tokio::time::timeout(Duration::from_secs(5), read_head)
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "request too slow"))??;
    let line = request.split(|b| *b == b'\n').next().unwrap_or_default();
    let target = line.split(|b| *b == b' ').nth(1).unwrap_or_default();
    // The path without its query string.
    let path = target.split(|b| *b == b'?').next().unwrap_or_default();
    let (status, content_type, body) = match (line.starts_with(b"GET "), path) {
        (true, b"/metrics") => (
            "200 OK",
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            node.metrics_text(),
        ),
        (true, b"/") => ("200 OK", "text/html; charset=utf-8", PAGE.to_string()),
        (true, b"/api/status") => ("200 OK", "application/json", node.status_json().await.to_string()),
        _ => (
            "404 Not Found",
            "text/plain; charset=utf-8",
            "served here: GET /, /metrics, /api/status\n".to_string(),
        ),
    };
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body.as_bytes()).await?;
    stream.shutdown().await
}

impl NodeInner {
    /// The metrics text as of now.
    pub fn metrics_text(&self) -> String {
        let s = self.status();
        let last = s.last_log_index.unwrap_or(0);
        let plugins = self.list_plugins();
        let now = Scraped {
            term: s.term,
            role: role_name(&s.state),
            last_log_index: last,
            committed_index: s.committed_index.unwrap_or(0),
            applied_index: s.applied_index.unwrap_or(0),
            follower_lag: s
                .nodes
                .iter()
                .filter(|n| n.id != s.id)
                .filter_map(|n| Some((n.id, last.saturating_sub(n.matched_index?))))
                .collect(),
            snapshot: s.snapshot.unwrap_or_default(),
            plugins: plugins.plugins,
            compiles: plugins.compiles,
            store: self.shared.store.sizes().unwrap_or_else(|e| {
                debug!("metrics: store sizes: {e}");
                Vec::new()
            }),
            block_cache_bytes: self.shared.store.block_cache_bytes(),
        };
        self.shared.metrics.encode(now)
    }

    /// What the status page shows: every member, the plugins, this node's history and errors.
    pub async fn status_json(&self) -> Value {
        let members = self.members(None).await;
        let flagged = diverged(members.iter().filter_map(|m| {
            let s = m.status.as_ref().ok()?;
            Some((m.id, s.digest_index, s.state_digest.as_str()))
        }));
        let top = members
            .iter()
            .filter_map(|m| m.status.as_ref().ok()?.applied_index)
            .max()
            .unwrap_or(0);
        let members: Vec<Value> = members
            .iter()
            .map(|m| match &m.status {
                Ok(s) => json!({
                    "id": m.id,
                    "addr": m.addr,
                    "reachable": true,
                    "role": s.state,
                    "term": s.term,
                    "leader_id": s.leader_id,
                    "last_log_index": s.last_log_index,
                    "committed_index": s.committed_index,
                    "applied_index": s.applied_index,
                    "lag": top.saturating_sub(s.applied_index.unwrap_or(0)),
                    "digest": s.state_digest,
                    "digest_index": s.digest_index,
                    "diverged": flagged.get(&m.id),
                    "snapshot_index": s.snapshot.as_ref().and_then(|snap| snap.last_log_id.as_ref()).map(|id| id.index),
                    "plugins": m.plugins.plugins.iter().map(|p| json!({"name": p.name, "sha256": p.sha256})).collect::<Vec<_>>(),
                }),
                Err(e) => json!({"id": m.id, "addr": m.addr, "reachable": false, "error": e}),
            })
            .collect();
        let list = self.list_plugins();
        let plugins: Vec<Value> = list
            .plugins
            .iter()
            .map(|p| {
                json!({
                    "name": p.name,
                    "sha256": p.sha256,
                    "label": p.label,
                    "activated_index": p.activated_index,
                    "size": p.size,
                    "versions": p.history.len(),
                })
            })
            .collect();
        let compiles: Vec<Value> = list
            .compiles
            .iter()
            .map(|c| json!({"sha256": c.sha256, "state": c.state}))
            .collect();
        let activity = &self.shared.metrics.activity;
        json!({
            "node": self.id,
            "members": members,
            "plugins": plugins,
            "compiles": compiles,
            "samples": activity.samples(),
            "errors": activity.errors(),
        })
    }
}

/// `status().state` as the `'static` role label.
fn role_name(state: &str) -> &'static str {
    ["leader", "follower", "candidate", "learner"]
        .into_iter()
        .find(|r| *r == state)
        .unwrap_or("shutdown")
}
