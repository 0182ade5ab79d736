//! The live status page, in a real headless browser (Debian's `chromium`, which `./dev.sh setup`
//! installs) against a running `wasmraft dev` cluster: the page shows the three members with one
//! leader, the kv plugin, the throughput history and a plugin's error. It leaves a screenshot at
//! `target/tmp/status-page.png`.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

/// Runs headless chromium on `url` with `args`, returning its stdout.
fn chromium(url: &str, args: &[&str], profile: &Path) -> String {
    let out = Command::new("chromium")
        .args(["--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars"])
        .arg(format!("--user-data-dir={}", profile.display()))
        // Lets the page's fetch and rendering finish before the DOM or screenshot is taken.
        .arg("--virtual-time-budget=5000")
        .args(args)
        .arg(url)
        .output()
        .unwrap_or_else(|e| panic!("running chromium ({e}): `./dev.sh setup` installs it (apt-get install chromium)"));
    assert!(
        out.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_status_page_shows_every_member_the_plugins_the_history_and_a_plugin_error_in_a_real_browser() {
    let dir = tempfile::tempdir().unwrap();
    // Plaintext, so a bare client reaches it (the secure dev cluster: tests/security.rs).
    let dev = common::DevCluster::start(dir.path(), &["--insecure"]).await;
    let base = dev.base_port;
    let page = format!("http://127.0.0.1:{}/", base + 100);
    assert!(dev.printed.contains(&format!("status {page}")), "{}", dev.printed);

    let endpoint = format!("http://127.0.0.1:{base}");
    let mut api = wasmraft_node::pb::api_client::ApiClient::connect(endpoint)
        .await
        .unwrap();
    for i in 0..50 {
        common::call(&mut api, "kv", &format!(r#"{{"op":"put","key":"k{i}","value":"v"}}"#))
            .await
            .unwrap();
    }
    assert!(common::call(&mut api, "kv", r#"{"op":"nope"}"#).await.is_err());
    // The page draws rates between samples (one a second): wait for two after the writes.
    let status = format!("http://127.0.0.1:{}/api/status", base + 100);
    common::eventually("two samples after the writes", Duration::from_secs(10), || async {
        let json = http_get(&status).await;
        let samples = json["samples"].as_array().cloned().unwrap_or_default();
        let after = samples
            .iter()
            .filter(|s| s["applied_index"].as_u64() >= Some(52))
            .count();
        (after >= 2).then_some(())
    })
    .await;

    let profile = dir.path().join("chromium");
    let dom = chromium(&page, &["--dump-dom"], &profile);
    assert!(dom.contains(r#"data-loaded="true""#), "the page never rendered: {dom}");
    for id in 1..=3 {
        assert_eq!(dom.matches(&format!(r#"data-node="{id}""#)).count(), 1, "{dom}");
    }
    assert_eq!(dom.matches(r#"data-role="leader""#).count(), 1, "{dom}");
    assert_eq!(dom.matches(r#"data-role="follower""#).count(), 2, "{dom}");
    assert!(!dom.contains(r#"<tr class="diverged""#), "{dom}");
    assert!(dom.contains(r#"data-plugin="kv""#), "{dom}");
    assert!(dom.contains("plugin kv: returned"), "the error is not shown: {dom}");
    // The throughput chart has a line, and a maximum above zero.
    let tput = &dom[dom.find(r#"id="tput""#).expect("throughput chart")..];
    let tput = &tput[..tput.find("</svg>").unwrap()];
    assert!(tput.contains("<polyline"), "{tput}");
    assert!(!tput.contains("max -"), "{tput}");

    let screenshot = Path::new(env!("CARGO_TARGET_TMPDIR")).join("status-page.png");
    chromium(
        &page,
        &[
            &format!("--screenshot={}", screenshot.display()),
            "--window-size=1300,900",
        ],
        &profile,
    );
    let png = std::fs::read(&screenshot).unwrap();
    assert!(png.starts_with(b"\x89PNG"), "no screenshot at {}", screenshot.display());
    println!("status page screenshot: {}", screenshot.display());
}

/// GET `url` (plain HTTP) as JSON.
async fn http_get(url: &str) -> serde_json::Value {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let rest = url.strip_prefix("http://").unwrap();
    let (host, path) = rest.split_at(rest.find('/').unwrap());
    let mut stream = tokio::net::TcpStream::connect(host).await.unwrap();
    stream
        .write_all(format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    let (_, body) = response.split_once("\r\n\r\n").unwrap();
    serde_json::from_str(body).unwrap()
}
