//! `/metrics` over plain HTTP/1.1 on the node's metrics address: the Prometheus text format of
//! [`crate::metrics::Metrics`], with gauges read from the node at each scrape. One request per
//! connection; anything but `GET /metrics` gets a 404. Input is never trusted: a request line
//! longer than 8 KiB, or one that takes more than 5 s to arrive, ends the connection.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tracing::debug;

use crate::cluster::NodeInner;
use crate::metrics::Scraped;

const MAX_REQUEST_BYTES: usize = 8 << 10;

/// Serves `/metrics` on `listener` until `stop` resolves.
pub(crate) fn serve_metrics(
    node: Arc<NodeInner>,
    listener: TcpListener,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        tokio::pin!(stop);
        loop {
            let conn = tokio::select! {
                _ = &mut stop => return,
                conn = listener.accept() => conn,
            };
            match conn {
                Ok((stream, _)) => {
                    let node = node.clone();
                    tokio::spawn(async move {
                        if let Err(e) = answer(&node, stream).await {
                            debug!("metrics request: {e}");
                        }
                    });
                }
                Err(e) => debug!("metrics accept: {e}"),
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
    let path = line.split(|b| *b == b' ').nth(1).unwrap_or_default();
    let (status, body) = if line.starts_with(b"GET ") && (path == b"/metrics" || path.starts_with(b"/metrics?")) {
        ("200 OK", node.metrics_text())
    } else {
        ("404 Not Found", "only GET /metrics is served here\n".to_string())
    };
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: application/openmetrics-text; version=1.0.0; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
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
        };
        self.shared.metrics.encode(now)
    }
}

/// `status().state` as the `'static` role label.
fn role_name(state: &str) -> &'static str {
    ["leader", "follower", "candidate", "learner"]
        .into_iter()
        .find(|r| *r == state)
        .unwrap_or("shutdown")
}
