//! Per-route limits (`[[routes]]`): `bp push` / `bp pull`, bot import and export and media
//! uploads the size and duration Botpress allows, through the real gateway.

use crate::support;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use http::{Request, StatusCode};
use http_body_util::BodyExt;
use hyper::body::{Frame, Incoming};
use support::botpress::Botpress;
use support::*;

/// `inner`, answered after `delay`.
fn slow(delay: Duration, inner: Handler) -> Handler {
    Arc::new(move |req: Request<Incoming>, cx: NodeCtx| {
        let inner = inner.clone();
        Box::pin(async move {
            tokio::time::sleep(delay).await;
            inner(req, cx).await
        })
    })
}

async fn gate(node: &Node, toml: &str) -> Gate {
    init();
    Gate::builder()
        .upstream(node.url())
        .toml("[health]\nenabled = false")
        .toml(toml)
        .start()
        .await
}

/// A body of `n` bytes sent in 64 KiB chunks with no `Content-Length` (chunked).
fn chunked(n: usize) -> BoxBody {
    let chunks = (0..n.div_ceil(65536)).map(move |i| {
        let len = 65536.min(n - i * 65536);
        Ok::<_, Box<dyn std::error::Error + Send + Sync>>(Frame::data(Bytes::from(vec![b'x'; len])))
    });
    BodyExt::boxed(http_body_util::StreamBody::new(futures_util::stream::iter(
        chunks,
    )))
}

#[tokio::test]
async fn bp_push_on_the_v1_versioning_path_outlives_the_global_timeout() {
    // The CLI calls /api/v1/admin/management/versioning with a 20-minute timeout; Botpress
    // rewrites it to v2 itself.
    let node = Botpress::builder("n")
        .app(slow(Duration::from_millis(1500), echo()))
        .start()
        .await;
    let gate = gate(&node, "[upstream]\nresponse_timeout = \"500ms\"").await;
    let mut c = Client::h1(&gate).await;
    let push = c
        .call(
            post("/api/v1/admin/management/versioning/update")
                .header("content-type", "application/tar+gzip")
                .body(full(vec![7u8; 4096]))
                .unwrap(),
        )
        .await;
    assert_eq!(push.status, StatusCode::OK, "{}", push.text());
    assert_eq!(push.json()["body_len"], 4096);
    let pull = c.get("/api/v2/admin/management/versioning/export").await;
    assert_eq!(pull.status, StatusCode::OK);
    let export = c.get("/api/v2/admin/workspace/bots/my-bot/export").await;
    assert_eq!(export.status, StatusCode::OK, "bot export waits too");
    assert_eq!(
        c.get("/api/v1/bots/my-bot/content").await.status,
        StatusCode::GATEWAY_TIMEOUT,
        "everything else keeps the global timeout"
    );
    gate.stop().await;
}

#[tokio::test]
async fn a_bot_import_above_the_global_limit_passes_and_the_same_size_elsewhere_is_413() {
    let node = Node::start("n", echo()).await;
    let gate = gate(&node, "").await;
    // Above the global default (32 MiB), far above Botpress's 25 MiB media limit.
    let size = 40 * 1024 * 1024;
    let body = Bytes::from(vec![0x1fu8; size]);
    let mut c = Client::h2(&gate).await;
    let a = c
        .call(
            post("/api/v2/admin/workspace/bots/my-bot/import?overwrite=true")
                .header("content-type", "application/tar+gzip")
                .header("content-length", size.to_string())
                .body(full(body.clone()))
                .unwrap(),
        )
        .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text());
    assert_eq!(a.json()["body_len"], size);
    assert_eq!(a.json()["body_sha"], sha(&body));

    let before = node.requests.load(std::sync::atomic::Ordering::SeqCst);
    let refused = c
        .call(
            post("/api/v1/bots/my-bot/media")
                .header("content-length", size.to_string())
                .body(full(body.clone()))
                .unwrap(),
        )
        .await;
    assert_eq!(refused.status, StatusCode::PAYLOAD_TOO_LARGE);
    // Chunked, the same size: cut at the global limit while streaming.
    let mut c = Client::h1(&gate).await;
    let cut = c
        .call(
            post("/api/v1/bots/my-bot/media")
                .body(chunked(size))
                .unwrap(),
        )
        .await;
    assert_eq!(cut.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(
        node.requests.load(std::sync::atomic::Ordering::SeqCst),
        before + 1,
        "the declared one never reached the node; the chunked one was cut on its way"
    );
    let lines = gate.audit_lines();
    let import = lines
        .iter()
        .find(|l| l["path"] == "/api/v2/admin/workspace/bots/my-bot/import")
        .unwrap();
    assert_eq!(import["bytes_in"], size);
    gate.stop().await;
}

/// A browser's multipart upload of one file of `file_len` bytes: the framing adds a few
/// hundred bytes to the file.
fn multipart(file_len: usize) -> (String, Bytes) {
    let boundary = "----WebKitFormBoundary7MA4YWxkTrZu0gW";
    let mut b = Vec::with_capacity(file_len + 512);
    b.extend_from_slice(
        format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"voice.mp4\"\r\nContent-Type: video/mp4\r\n\r\n"
        )
        .as_bytes(),
    );
    b.resize(b.len() + file_len, 0xa5);
    b.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    (
        format!("multipart/form-data; boundary={boundary}"),
        Bytes::from(b),
    )
}

#[tokio::test]
async fn a_full_size_media_upload_with_its_multipart_framing_passes_the_default_limit() {
    let node = Node::start("n", echo()).await;
    let gate = gate(&node, "").await;
    // 25 MB as the brief counts it, and 25 MiB: Botpress's `fileUpload.maxFileSize = "25mb"`
    // through its `asBytes`, which counts in 1024s.
    for file in [25 * 1000 * 1000, 25 * 1024 * 1024] {
        let (ct, body) = multipart(file);
        assert!(body.len() > file);
        let mut c = Client::h1(&gate).await;
        let a = c
            .call(
                post("/api/v1/bots/my-bot/media")
                    .header("content-type", ct)
                    .header("content-length", body.len().to_string())
                    .body(full(body.clone()))
                    .unwrap(),
            )
            .await;
        assert_eq!(
            a.status,
            StatusCode::OK,
            "file of {file} bytes: {}",
            a.text()
        );
        assert_eq!(a.json()["body_len"], body.len());
    }
    gate.stop().await;
}

#[tokio::test]
async fn the_most_specific_route_wins_and_sets_both_limits() {
    let node = Node::start("n", slow(Duration::from_millis(600), echo())).await;
    let gate = gate(
        &node,
        r#"
[upstream]
response_timeout = "200ms"
[[routes]]
prefix = "/api/v1/bots/*/mod/fast"
response_timeout = "200ms"
[[routes]]
prefix = "/api/v1/bots"
response_timeout = "5s"
[[routes]]
prefix = "/api/v1/bots/*/small"
max_body = "1k"
"#,
    )
    .await;
    let mut c = Client::h1(&gate).await;
    assert_eq!(c.get("/api/v1/bots/b/mod/x").await.status, StatusCode::OK);
    assert_eq!(
        c.get("/api/v1/bots/b/mod/fast/x").await.status,
        StatusCode::GATEWAY_TIMEOUT,
        "the longer prefix wins over the shorter one listed after it"
    );
    assert_eq!(
        c.get("/API/V1/BOTS/b/MOD/FAST").await.status,
        StatusCode::GATEWAY_TIMEOUT,
        "case does not dodge a route (Express matches case-insensitively)"
    );
    assert_eq!(c.get("/api/v2/x").await.status, StatusCode::GATEWAY_TIMEOUT);
    // A route's own body limit, below the global one: declared and chunked.
    let declared = c
        .call(
            post("/api/v1/bots/b/small")
                .body(full(vec![1u8; 2000]))
                .unwrap(),
        )
        .await;
    assert_eq!(declared.status, StatusCode::PAYLOAD_TOO_LARGE);
    let mut c = Client::h1(&gate).await;
    let cut = c
        .call(post("/api/v1/bots/b/small/x").body(chunked(2400)).unwrap())
        .await;
    assert_eq!(cut.status, StatusCode::PAYLOAD_TOO_LARGE);
    let mut c = Client::h1(&gate).await;
    let elsewhere = c
        .call(post("/api/v1/bots/b/other").body(chunked(2400)).unwrap())
        .await;
    assert_eq!(elsewhere.status, StatusCode::OK);
    assert_eq!(elsewhere.json()["body_len"], 2400);
    gate.stop().await;
}

#[tokio::test]
async fn a_reload_changes_a_route() {
    let node = Node::start("n", slow(Duration::from_millis(500), echo())).await;
    let gate = gate(
        &node,
        "[[routes]]\nprefix = \"/api/v1/long\"\nresponse_timeout = \"200ms\"\nmax_body = \"1k\"",
    )
    .await;
    let mut c = Client::h1(&gate).await;
    assert_eq!(
        c.get("/api/v1/long/op").await.status,
        StatusCode::GATEWAY_TIMEOUT
    );
    let big = || post("/api/v1/long/op").body(full(vec![1u8; 4096])).unwrap();
    assert_eq!(c.call(big()).await.status, StatusCode::PAYLOAD_TOO_LARGE);

    let path = gate.dir.path().join("bpgate.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    let changed = text
        .replace("response_timeout = \"200ms\"", "response_timeout = \"5s\"")
        .replace("max_body = \"1k\"", "max_body = \"1m\"");
    assert_ne!(text, changed);
    std::fs::write(&path, changed).unwrap();
    let (status, report) = gate.admin_post("/reload").await;
    assert_eq!(status, StatusCode::OK, "{report}");
    let report: serde_json::Value = serde_json::from_str(&report).unwrap();
    assert!(
        report["config"]["applied"]
            .as_array()
            .unwrap()
            .iter()
            .any(|k| k == "routes"),
        "{report}"
    );

    let mut c = Client::h1(&gate).await;
    assert_eq!(c.get("/api/v1/long/op").await.status, StatusCode::OK);
    let a = c.call(big()).await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.json()["body_len"], 4096);
    gate.stop().await;
}

#[test]
fn the_deprecated_key_still_works_with_a_warning_and_shows_as_a_route() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("bpgate.toml");
    std::fs::write(
        &cfg,
        "[[upstream.timeouts]]\nprefix = \"/api/v1/bots/*/mod/qna/import\"\nresponse_timeout = \"10m\"\n",
    )
    .unwrap();
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_bpgate"));
    for (k, _) in std::env::vars() {
        if k.starts_with("BPGATE_") || k == "EXTERNAL_URL" || k == "BP_PRODUCTION" {
            cmd.env_remove(k);
        }
    }
    let out = cmd.args(["config", "--config"]).arg(&cfg).output().unwrap();
    assert!(out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stderr.contains("upstream.timeouts.0") && stderr.contains("deprecated"),
        "{stderr}"
    );
    assert!(
        stderr.contains("[[routes]]"),
        "the warning says what to write: {stderr}"
    );
    // The effective table: built-in routes and the mapped one.
    let v: toml::Table = toml::from_str(&stdout).unwrap();
    let routes = v["routes"].as_array().unwrap();
    let find = |p: &str| {
        routes
            .iter()
            .find(|r| r["prefix"].as_str() == Some(p))
            .unwrap_or_else(|| panic!("no route {p} in {stdout}"))
    };
    assert_eq!(
        find("/api/v1/bots/*/mod/qna/import")["response_timeout"].as_str(),
        Some("10m")
    );
    assert_eq!(
        find("/api/v1/admin/management/versioning")["max_body"].as_str(),
        Some("2g")
    );
    assert!(!stdout.contains("[[upstream.timeouts]]"));
}

#[tokio::test]
async fn the_deprecated_key_still_sets_the_timeout() {
    let node = Node::start("n", slow(Duration::from_millis(600), echo())).await;
    let gate = gate(
        &node,
        "[upstream]\nresponse_timeout = \"200ms\"\n[[upstream.timeouts]]\nprefix = \"/api/v1/slow\"\nresponse_timeout = \"5s\"",
    )
    .await;
    assert_eq!(
        gate.gw.current().config.derived.warnings.len(),
        1,
        "one deprecation warning"
    );
    let mut c = Client::h1(&gate).await;
    assert_eq!(c.get("/api/v1/slow/x").await.status, StatusCode::OK);
    assert_eq!(
        c.get("/api/v1/other").await.status,
        StatusCode::GATEWAY_TIMEOUT
    );
    gate.stop().await;
}

#[tokio::test]
async fn a_slow_upload_is_not_counted_as_the_nodes_silence() {
    // The response timeout starts when the body has been sent, as Node's own inactivity timer
    // would: an upload that takes longer than the timeout, byte after byte, still goes through.
    let node = Node::start("n", echo()).await;
    let gate = gate(&node, "[upstream]\nresponse_timeout = \"500ms\"").await;
    let chunks = futures_util::stream::iter(0..8).then(|_| async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        Ok::<_, Box<dyn std::error::Error + Send + Sync>>(Frame::data(Bytes::from_static(
            b"0123456789",
        )))
    });
    let mut c = Client::h1(&gate).await;
    let started = tokio::time::Instant::now();
    let a = c
        .call(
            post("/api/v1/bots/b/media")
                .body(BodyExt::boxed(http_body_util::StreamBody::new(chunks)))
                .unwrap(),
        )
        .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text());
    assert!(started.elapsed() >= Duration::from_millis(800));
    assert_eq!(a.json()["body_len"], 80);

    // A client that stops sending for longer than the timeout is cut.
    let stalled = futures_util::stream::iter(0..2).then(|i| async move {
        if i == 1 {
            tokio::time::sleep(Duration::from_millis(2000)).await;
        }
        Ok::<_, Box<dyn std::error::Error + Send + Sync>>(Frame::data(Bytes::from_static(b"x")))
    });
    let mut c = Client::h1(&gate).await;
    let a = c
        .call(
            post("/api/v1/bots/b/media")
                .body(BodyExt::boxed(http_body_util::StreamBody::new(stalled)))
                .unwrap(),
        )
        .await;
    assert_eq!(a.status, StatusCode::GATEWAY_TIMEOUT);
    gate.stop().await;
}
