//! The connection edge against clients that misbehave or behave like real ones: uploads that are
//! too large (lingering close), ambiguous framing, HTTP/2 `Host` against `:authority`,
//! keep-alive against the header-read timeout, handshake starvation, TLS session lifetime.

use crate::support;

use std::time::Duration;

use bytes::Bytes;
use http::StatusCode;
use support::*;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

async fn gate_with(node: &Node, toml: &str) -> Gate {
    init();
    Gate::builder()
        .upstream(node.url())
        .toml("[health]\nenabled = false")
        .toml(toml)
        .start()
        .await
}

const MIB: usize = 1 << 20;

/// A client like a simple script's: writes the whole request, then reads the answer. Returns
/// the answer, or the error its writes or reads met.
async fn write_all_then_read<S: AsyncRead + AsyncWrite + Unpin>(
    mut s: S,
    head: &[u8],
    body: impl Iterator<Item = Bytes>,
) -> Result<String, String> {
    s.write_all(head)
        .await
        .map_err(|e| format!("write head: {e}"))?;
    let mut sent = 0usize;
    for chunk in body {
        s.write_all(&chunk)
            .await
            .map_err(|e| format!("write after {sent} body bytes: {e}"))?;
        sent += chunk.len();
    }
    s.flush().await.map_err(|e| format!("flush: {e}"))?;
    let mut out = Vec::new();
    match tokio::time::timeout(Duration::from_secs(20), s.read_to_end(&mut out)).await {
        Err(_) => Err(format!(
            "no end of answer in 20 s; read so far: {:?}",
            String::from_utf8_lossy(&out)
        )),
        // A TLS peer that closes without close_notify is fine once the answer is in.
        Ok(Err(e)) if out.is_empty() => Err(format!("read: {e}")),
        Ok(_) => Ok(String::from_utf8_lossy(&out).into_owned()),
    }
}

fn chunks(total: usize, size: usize) -> impl Iterator<Item = Bytes> {
    let block = Bytes::from(vec![b'x'; size]);
    (0..total / size).map(move |_| block.clone())
}

/// `size` bytes in chunked framing, `chunk` bytes a chunk, then the last chunk.
fn chunked(total: usize, size: usize) -> impl Iterator<Item = Bytes> {
    let mut framed = format!("{size:x}\r\n").into_bytes();
    framed.extend(std::iter::repeat_n(b'x', size));
    framed.extend_from_slice(b"\r\n");
    let framed = Bytes::from(framed);
    (0..total / size)
        .map(move |_| framed.clone())
        .chain(std::iter::once(Bytes::from_static(b"0\r\n\r\n")))
}

#[tokio::test]
async fn oversized_upload_sees_the_413_declared_and_chunked() {
    let node = Node::start("n", echo()).await;
    let gate = gate_with(&node, "[limits]\nmax_body = \"1m\"").await;
    let total = 50 * MIB;
    let head = format!(
        "POST /upload HTTP/1.1\r\nHost: localhost\r\nContent-Length: {total}\r\nContent-Type: application/octet-stream\r\n\r\n"
    );
    let tls = tls_connect(&gate, &[b"http/1.1"]).await;
    let r = write_all_then_read(tls, head.as_bytes(), chunks(total, 64 * 1024)).await;
    let r = r.unwrap_or_else(|e| panic!("declared length: the client never saw an answer: {e}"));
    assert!(r.starts_with("HTTP/1.1 413"), "{r}");

    let head = "POST /upload HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n"
        .to_string();
    let tls = tls_connect(&gate, &[b"http/1.1"]).await;
    let r = write_all_then_read(tls, head.as_bytes(), chunked(total, 64 * 1024)).await;
    let r = r.unwrap_or_else(|e| panic!("chunked: the client never saw an answer: {e}"));
    assert!(r.starts_with("HTTP/1.1 413"), "{r}");
    assert_eq!(node.requests.load(std::sync::atomic::Ordering::Relaxed), 1);
    gate.stop().await;
}

/// What Node.js's `https.request` sees when it pipes a 50 MiB body (declared length or chunked)
/// into bpgate and the answer is a 413: the real-world check for lingering close. Node is what
/// Botpress's own server-side clients and most upload scripts run on.
const NODE_UPLOAD: &str = r#"
const https = require('https');
const { Readable } = require('stream');
const [port, ca, total, chunked] = [+process.argv[1], process.argv[2], +process.argv[3], process.argv[4] === 'chunked'];
const block = Buffer.alloc(64 * 1024, 120);
let left = total;
const body = new Readable({ read() { if (left <= 0) return this.push(null); left -= block.length; this.push(block); } });
const headers = { 'content-type': 'application/octet-stream' };
if (!chunked) headers['content-length'] = total;
const req = https.request({ host: '127.0.0.1', port, servername: 'localhost', method: 'POST', path: '/upload', ca, headers });
let out = { status: null, error: null, body: '' };
req.on('response', (res) => {
  out.status = res.statusCode;
  res.setEncoding('utf8');
  res.on('data', (d) => { out.body += d; });
  res.on('end', () => { console.log(JSON.stringify(out)); process.exit(0); });
});
req.on('error', (e) => { out.error = e.code || String(e); console.log(JSON.stringify(out)); process.exit(0); });
body.pipe(req);
setTimeout(() => { out.error = 'timeout'; console.log(JSON.stringify(out)); process.exit(0); }, 30000);
"#;

/// Node's path, or `None` after saying so (past the harness's capture). Under `CI=true` a missing
/// Node fails the test: `.ci/run` installs it.
fn node_binary() -> Option<&'static str> {
    use std::io::Write;
    let ok = std::process::Command::new("node")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if ok {
        return Some("node");
    }
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "node is not installed under CI=true (.ci/run installs nodejs), so the Node.js upload check did not run"
    );
    let _ = writeln!(
        std::io::stderr(),
        "SKIPPED: node is not installed; the Node.js upload check did not run"
    );
    None
}

#[tokio::test]
async fn node_client_piping_an_oversized_upload_gets_the_413() {
    let Some(node_bin) = node_binary() else {
        return;
    };
    let node = Node::start("n", echo()).await;
    let gate = gate_with(&node, "[limits]\nmax_body = \"1m\"").await;
    for framing in ["length", "chunked"] {
        let out = tokio::process::Command::new(node_bin)
            .arg("-e")
            .arg(NODE_UPLOAD)
            .arg(gate.https.port().to_string())
            .arg(&gate.pki.ca_pem)
            .arg((50 * MIB).to_string())
            .arg(framing)
            .kill_on_drop(true)
            .output()
            .await
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let v: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap_or_else(|e| {
            panic!(
                "node printed no result ({e}): {stdout} {}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
        assert_eq!(v["status"], 413, "{framing}: Node saw {v}");
        assert!(
            v["body"].as_str().unwrap_or("").contains("413"),
            "{framing}: {v}"
        );
    }
    gate.stop().await;
}

#[tokio::test]
async fn h2_oversized_upload_gets_the_413_and_the_connection_lives_on() {
    use http_body_util::BodyExt;
    let node = Node::start("n", echo()).await;
    let gate = gate_with(&node, "[limits]\nmax_body = \"1m\"").await;
    let mut c = Client::h2(&gate).await;
    for declared in [true, false] {
        // A body that keeps coming as fast as the connection takes it.
        let block = Bytes::from(vec![b'x'; 64 * 1024]);
        let stream = futures_util::stream::iter((0..800).map(move |_| {
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>(hyper::body::Frame::data(
                block.clone(),
            ))
        }));
        let mut req = post("/upload");
        if declared {
            req = req.header("content-length", (800 * 64 * 1024).to_string());
        }
        let req = req
            .body(BodyExt::boxed(http_body_util::StreamBody::new(stream)))
            .unwrap();
        let resp = tokio::time::timeout(Duration::from_secs(20), c.send(req))
            .await
            .expect("an answer in 20 s")
            .expect("the response, not a stream error");
        let a = Answer::collect(resp).await;
        assert_eq!(a.status, StatusCode::PAYLOAD_TOO_LARGE, "{}", a.text());
        assert!(a.text().contains("413"), "{}", a.text());
    }
    // The connection is still good.
    assert_eq!(c.get("/after").await.status, StatusCode::OK);
    gate.stop().await;
}

/// Every answer bpgate gives before reading the body lingers the same way: a client that writes
/// its whole 16 MiB upload first still reads the answer.
#[tokio::test]
async fn every_early_answer_lingers() {
    init();
    let total = 16 * MIB;
    let upload = |path: &str, extra: &str| {
        format!("POST {path} HTTP/1.1\r\nHost: localhost\r\n{extra}Content-Length: {total}\r\n\r\n")
    };
    let node = Node::start("n", echo()).await;
    let gate = Gate::builder()
        .upstream(node.url())
        .env("EXTERNAL_URL", "https://localhost/bp")
        .toml("[health]\nenabled = false")
        .start()
        .await;
    for (head, status) in [
        (upload("/outside", ""), "404"),
        (upload("/bp/api", "Origin: https://evil.example\r\n"), "403"),
    ] {
        let tls = tls_connect(&gate, &[b"http/1.1"]).await;
        let r = write_all_then_read(tls, head.as_bytes(), chunks(total, 64 * 1024))
            .await
            .unwrap_or_else(|e| panic!("{status}: the client never saw the answer: {e}"));
        assert!(r.starts_with(&format!("HTTP/1.1 {status}")), "{r}");
    }
    assert_eq!(node.requests.load(std::sync::atomic::Ordering::Relaxed), 0);
    gate.stop().await;

    // No healthy node: 503.
    let dead = dead_addr().await;
    let gate = Gate::builder()
        .upstream(format!("http://{dead}"))
        .toml("[health]\ninterval = \"100ms\"\nfall = 1")
        .start()
        .await;
    assert!(
        eventually(Duration::from_secs(10), || !gate.gw.ready()).await,
        "the dead node was never marked down"
    );
    let tls = tls_connect(&gate, &[b"http/1.1"]).await;
    let r = write_all_then_read(tls, upload("/api", "").as_bytes(), chunks(total, 64 * 1024))
        .await
        .unwrap_or_else(|e| panic!("503: the client never saw the answer: {e}"));
    assert!(r.starts_with("HTTP/1.1 503"), "{r}");
    gate.stop().await;
}

/// RFC 9113 §8.1: after an early answer the server ends the stream with RST_STREAM(NO_ERROR)
/// once the response is complete, and the client keeps the response (a CANCEL or a reset
/// before the response would make it an error).
#[tokio::test]
async fn h2_early_answer_is_followed_by_rst_stream_no_error() {
    let node = Node::start("n", echo()).await;
    let gate = gate_with(&node, "[limits]\nmax_body = \"1m\"").await;
    let tls = tls_connect(&gate, &[b"h2"]).await;
    let (mut client, conn) = h2::client::handshake(tls).await.unwrap();
    tokio::spawn(conn);
    let req = http::Request::post("https://localhost/upload")
        .header("content-length", (50 * MIB).to_string())
        .body(())
        .unwrap();
    let (resp, mut stream) = client.send_request(req, false).unwrap();
    // Send what flow control allows; the answer comes before the body could.
    let sender = tokio::spawn(async move {
        let block = Bytes::from(vec![b'x'; 16 * 1024]);
        loop {
            stream.reserve_capacity(block.len());
            match futures_util::future::poll_fn(|cx| stream.poll_capacity(cx)).await {
                Some(Ok(_)) => {
                    if stream.send_data(block.clone(), false).is_err() {
                        break;
                    }
                }
                _ => break,
            }
        }
        futures_util::future::poll_fn(|cx| stream.poll_reset(cx)).await
    });
    let resp = tokio::time::timeout(Duration::from_secs(20), resp)
        .await
        .expect("an answer in 20 s")
        .expect("the response, not a reset");
    assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE);
    let mut body = resp.into_body();
    let mut text = Vec::new();
    while let Some(chunk) = body.data().await {
        text.extend_from_slice(&chunk.expect("the whole answer"));
    }
    assert!(String::from_utf8_lossy(&text).contains("413"));
    let reason = tokio::time::timeout(Duration::from_secs(10), sender)
        .await
        .expect("the stream is reset")
        .unwrap()
        .expect("a reset reason");
    assert_eq!(reason, h2::Reason::NO_ERROR);
    gate.stop().await;
}

// === item 2: ambiguous framing, Host against :authority ===

async fn raw_h1(gate: &Gate, bytes: &[u8]) -> String {
    let mut tls = tls_connect(gate, &[b"http/1.1"]).await;
    tls.write_all(bytes).await.unwrap();
    let mut out = Vec::new();
    // The connection must close by itself (the client never closes its side).
    let r = tokio::time::timeout(Duration::from_secs(5), tls.read_to_end(&mut out)).await;
    let text = String::from_utf8_lossy(&out).into_owned();
    assert!(
        r.is_ok(),
        "the connection is still open after 5 s; read: {text}"
    );
    text
}

#[tokio::test]
async fn content_length_with_transfer_encoding_is_400_and_closed() {
    let node = Node::start("n", echo()).await;
    // Long timeouts: an answer cannot come from a timer.
    let gate = gate_with(
        &node,
        "[limits]\nheader_read_timeout = \"30s\"\nkeepalive_timeout = \"60s\"",
    )
    .await;
    for req in [
        // Both, Content-Length first; a smuggled request behind.
        &b"POST /a HTTP/1.1\r\nHost: localhost\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: localhost\r\n\r\n"[..],
        // Transfer-Encoding first, and a Content-Length shorter than the chunked body.
        b"POST /b HTTP/1.1\r\nHost: localhost\r\ntransfer-encoding: chunked\r\ncontent-length: 3\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        // A Content-Length the chunked body never reaches: no waiting for more.
        b"POST /c HTTP/1.1\r\nHost: localhost\r\nContent-Length: 100000\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    ] {
        let r = raw_h1(&gate, req).await;
        assert!(r.starts_with("HTTP/1.1 400"), "{r}");
        assert!(r.to_ascii_lowercase().contains("connection: close"), "{r}");
        assert!(r.contains("Content-Length and Transfer-Encoding"), "{r}");
        assert_eq!(r.matches("HTTP/1.1 ").count(), 1, "one answer only: {r}");
    }
    assert_eq!(
        node.requests.load(std::sync::atomic::Ordering::Relaxed),
        0,
        "nothing reached the node"
    );
    // Either alone is fine, on the same kind of connection.
    let r = raw_h1(
        &gate,
        b"POST /ok HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    )
    .await;
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    assert!(r.contains("\"body_len\":5"), "{r}");
    let lines = gate.audit_lines();
    let refused: Vec<_> = lines
        .iter()
        .filter(|l| l["reason"] == "both Content-Length and Transfer-Encoding")
        .collect();
    assert_eq!(refused.len(), 3, "{lines:?}");
    assert!(refused
        .iter()
        .all(|l| l["status"] == 400 && l["outcome"] == "rejected" && l["method"] == "POST"));
    gate.stop().await;
}

#[tokio::test]
async fn ambiguous_framing_on_a_kept_alive_connection_is_caught_too() {
    let node = Node::start("n", echo()).await;
    let gate = gate_with(&node, "").await;
    let mut tls = tls_connect(&gate, &[b"http/1.1"]).await;
    tls.write_all(b"GET /first HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 65536];
    let n = tls.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    // The second request's head arrives in pieces.
    for piece in [
        &b"POST /second HTTP/1.1\r\nHost: localhost\r\nTransfer-"[..],
        b"Encoding: chunked\r\nContent-Len",
        b"gth: 5\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    ] {
        tls.write_all(piece).await.unwrap();
        tls.flush().await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut out = Vec::new();
    let r = tokio::time::timeout(Duration::from_secs(5), tls.read_to_end(&mut out)).await;
    let text = String::from_utf8_lossy(&out);
    assert!(r.is_ok(), "still open: {text}");
    assert!(text.starts_with("HTTP/1.1 400"), "{text}");
    assert_eq!(node.requests.load(std::sync::atomic::Ordering::Relaxed), 1);
    gate.stop().await;
}

#[tokio::test]
async fn h2_host_that_differs_from_authority_is_400() {
    let node = Node::start("n", echo()).await;
    let gate = gate_with(&node, "").await;
    let mut c = Client::h2(&gate).await;
    let a = c
        .call(
            http::Request::get("https://localhost/x")
                .header("host", "evil.example")
                .body(full(Bytes::new()))
                .unwrap(),
        )
        .await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST, "{}", a.text());
    assert!(
        a.text().contains("Host differs from :authority"),
        "{}",
        a.text()
    );
    assert_eq!(node.requests.load(std::sync::atomic::Ordering::Relaxed), 0);
    // The same authority (case, default port) and no Host at all pass, on the same connection.
    for host in [Some("LOCALHOST"), Some("localhost:443"), None] {
        let mut b = http::Request::get("https://localhost/y");
        if let Some(h) = host {
            b = b.header("host", h);
        }
        let a = c.call(b.body(full(Bytes::new())).unwrap()).await;
        assert_eq!(a.status, StatusCode::OK, "{host:?}: {}", a.text());
    }
    let lines = gate.audit_lines();
    assert!(lines
        .iter()
        .any(|l| l["status"] == 400 && l["reason"] == "Host differs from :authority"));
    gate.stop().await;
}

// === issue 14: keep-alive lasts keepalive_timeout; heads still have header_read_timeout ===

/// Reads one whole response (headers and a `Content-Length` body) from a kept-alive connection.
async fn read_response<S: AsyncRead + Unpin>(s: &mut S) -> String {
    let mut out = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    loop {
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
            .await
            .expect("a response within 5 s")
            .expect("read");
        assert!(
            n > 0,
            "closed before a whole response: {:?}",
            String::from_utf8_lossy(&out)
        );
        out.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&out);
        if let Some(end) = text.find("\r\n\r\n") {
            let len = text[..end]
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().parse::<usize>().unwrap())
                })
                .unwrap_or(0);
            if out.len() >= end + 4 + len {
                return text.into_owned();
            }
        }
    }
}

/// Waits for the server to close; returns how long it took, or `None` after `limit`.
async fn closed_within<S: AsyncRead + Unpin>(s: &mut S, limit: Duration) -> Option<Duration> {
    let start = std::time::Instant::now();
    let mut sink = Vec::new();
    tokio::time::timeout(limit, s.read_to_end(&mut sink))
        .await
        .ok()
        .map(|_| start.elapsed())
}

#[tokio::test]
async fn idle_keepalive_outlives_the_header_read_timeout() {
    let node = Node::start("n", echo()).await;
    let gate = gate_with(
        &node,
        "[limits]\nheader_read_timeout = \"1s\"\nkeepalive_timeout = \"4s\"",
    )
    .await;
    let mut tls = tls_connect(&gate, &[b"http/1.1"]).await;
    tls.write_all(b"GET /one HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    assert!(read_response(&mut tls).await.starts_with("HTTP/1.1 200"));
    // Idle for twice the header-read timeout, well within the keep-alive timeout (2 s of margin
    // for a loaded machine).
    tokio::time::sleep(Duration::from_secs(2)).await;
    tls.write_all(b"GET /two HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let r = read_response(&mut tls).await;
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    // And then it is closed by the keep-alive timeout, not before.
    let took = closed_within(&mut tls, Duration::from_secs(10))
        .await
        .expect("idle connection still open 10 s after a 4 s keep-alive timeout");
    assert!(took >= Duration::from_millis(3500), "closed after {took:?}");
    assert_eq!(node.requests.load(std::sync::atomic::Ordering::Relaxed), 2);
    gate.stop().await;
}

#[tokio::test]
async fn slow_head_on_a_kept_alive_connection_is_cut_by_the_header_read_timeout() {
    let node = Node::start("n", echo()).await;
    let gate = gate_with(
        &node,
        "[limits]\nheader_read_timeout = \"1s\"\nkeepalive_timeout = \"60s\"",
    )
    .await;
    let mut tls = tls_connect(&gate, &[b"http/1.1"]).await;
    tls.write_all(b"GET /one HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    assert!(read_response(&mut tls).await.starts_with("HTTP/1.1 200"));
    // Idle past the header timeout (keep-alive allows it), then a head that never ends.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    tls.write_all(b"GET /two HTTP/1.1\r\nHost: localhost\r\n")
        .await
        .unwrap();
    let took = closed_within(&mut tls, Duration::from_secs(10))
        .await
        .expect("an unfinished head kept the connection open 10 s (keep-alive is 60 s)");
    assert!(took >= Duration::from_millis(900), "cut after {took:?}");
    assert_eq!(node.requests.load(std::sync::atomic::Ordering::Relaxed), 1);
    gate.stop().await;
}

#[tokio::test]
async fn new_connection_gets_the_header_read_timeout_from_the_handshake() {
    let node = Node::start("n", echo()).await;
    let gate = gate_with(
        &node,
        "[limits]\nheader_read_timeout = \"1s\"\nkeepalive_timeout = \"60s\"",
    )
    .await;
    // Silent after the handshake.
    let mut silent = tls_connect(&gate, &[b"http/1.1"]).await;
    // A head that never ends.
    let mut slow = tls_connect(&gate, &[b"http/1.1"]).await;
    slow.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n")
        .await
        .unwrap();
    let start = std::time::Instant::now();
    for (what, s) in [("silent", &mut silent), ("slow head", &mut slow)] {
        closed_within(s, Duration::from_secs(10))
            .await
            .unwrap_or_else(|| {
                panic!("{what}: open 10 s after its handshake (keep-alive is 60 s)")
            });
        let took = start.elapsed();
        assert!(
            took >= Duration::from_millis(800),
            "{what}: cut after {took:?}"
        );
    }
    // A head that completes in time is served.
    let mut ok = tls_connect(&gate, &[b"http/1.1"]).await;
    ok.write_all(b"GET / HTTP/1.1\r\nHost: ").await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    ok.write_all(b"localhost\r\n\r\n").await.unwrap();
    assert!(read_response(&mut ok).await.starts_with("HTTP/1.1 200"));
    gate.stop().await;
}

// === item 7: spoofable headers, the redirect's host, TLS session lifetime, handshake starvation ===

#[tokio::test]
async fn spoofable_client_ip_and_url_headers_never_reach_botpress() {
    let node = Node::start("n", echo()).await;
    for trusted in [false, true] {
        let toml = if trusted {
            "[forwarding]\ntrusted_proxies = [\"127.0.0.0/8\"]"
        } else {
            ""
        };
        let gate = gate_with(&node, toml).await;
        for h2 in [false, true] {
            let mut c = if h2 {
                Client::h2(&gate).await
            } else {
                Client::h1(&gate).await
            };
            let mut req = get("/api/v1/x");
            for name in bpgate::proxy::SPOOFABLE {
                req = req.header(name, "6.6.6.6");
            }
            let a = c
                .call(
                    req.header("x-Client-IP", "7.7.7.7")
                        .header("x-forwarded-host", "evil.example")
                        .body(full(Bytes::new()))
                        .unwrap(),
                )
                .await;
            assert_eq!(a.status, StatusCode::OK);
            let seen = a.json()["headers"].clone();
            for name in bpgate::proxy::SPOOFABLE {
                assert!(
                    seen.get(name).is_none(),
                    "trusted={trusted} h2={h2}: {name} reached Botpress: {seen}"
                );
            }
            if !trusted {
                assert_eq!(a.seen("x-forwarded-host").as_deref(), Some("localhost"));
            }
            assert_eq!(a.seen("x-real-ip").as_deref(), Some("127.0.0.1"));
        }
        gate.stop().await;
    }
}

#[tokio::test]
async fn redirect_without_external_url_only_goes_to_a_certificate_name() {
    init();
    let node = Node::start("n", echo()).await;
    let gate = Gate::builder()
        .upstream(node.url())
        .redirect_listener()
        .toml("[health]\nenabled = false")
        .start()
        .await;
    let port = gate.https.port();
    for (host, want) in [
        ("evil.example", None),
        ("evil.example:80", None),
        ("localhost@evil.example", None),
        (
            "localhost",
            Some(format!("https://localhost:{port}/admin/x?y=1")),
        ),
        (
            "LOCALHOST:80",
            Some(format!("https://LOCALHOST:{port}/admin/x?y=1")),
        ),
        (
            "127.0.0.1",
            Some(format!("https://127.0.0.1:{port}/admin/x?y=1")),
        ),
    ] {
        let mut s = tokio::net::TcpStream::connect(gate.http.unwrap())
            .await
            .unwrap();
        s.write_all(
            format!("GET /admin/x?y=1 HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )
        .await
        .unwrap();
        let mut out = String::new();
        tokio::time::timeout(Duration::from_secs(5), s.read_to_string(&mut out))
            .await
            .unwrap()
            .unwrap();
        match want {
            Some(loc) => {
                assert!(out.starts_with("HTTP/1.1 308"), "{host}: {out}");
                assert!(
                    out.contains(&format!("location: {loc}\r\n")),
                    "{host}: {out}"
                );
            }
            None => {
                assert!(out.starts_with("HTTP/1.1 400"), "{host}: {out}");
                assert!(
                    !out.to_ascii_lowercase().contains("location:"),
                    "{host}: {out}"
                );
            }
        }
    }
    let lines = gate.audit_lines();
    assert_eq!(
        lines
            .iter()
            .filter(|l| l["status"] == 400 && l["outcome"] == "rejected")
            .count(),
        3,
        "{lines:?}"
    );
    assert_eq!(node.requests.load(std::sync::atomic::Ordering::Relaxed), 0);
    gate.stop().await;
}

/// A TCP stream that keeps a copy of every byte it reads.
struct Recorder<S> {
    inner: S,
    read: std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
}

impl<S: AsyncRead + Unpin> AsyncRead for Recorder<S> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = std::pin::Pin::new(&mut self.inner).poll_read(cx, buf);
        let new = buf.filled()[before..].to_vec();
        self.read.lock().unwrap().extend_from_slice(&new);
        r
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Recorder<S> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// A rustls client for `versions` trusting the test CA, whose clock stands still at its creation
/// (so it offers tickets the server should find too old), with its own session store.
fn frozen_client(
    gate: &Gate,
    versions: &[&'static rustls::SupportedProtocolVersion],
    tickets: bool,
) -> tokio_rustls::TlsConnector {
    #[derive(Debug)]
    struct Frozen(rustls::pki_types::UnixTime);
    impl rustls::time_provider::TimeProvider for Frozen {
        fn current_time(&self) -> Option<rustls::pki_types::UnixTime> {
            Some(self.0)
        }
    }
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls::pki_types::CertificateDer::pem_slice_iter(gate.pki.ca_pem.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    use rustls::pki_types::pem::PemObject;
    let mut cfg = rustls::ClientConfig::builder_with_details(
        std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider()),
        std::sync::Arc::new(Frozen(rustls::pki_types::UnixTime::now())),
    )
    .with_protocol_versions(versions)
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    cfg.resumption =
        rustls::client::Resumption::in_memory_sessions(16).tls12_resumption(if tickets {
            rustls::client::Tls12Resumption::SessionIdOrTickets
        } else {
            rustls::client::Tls12Resumption::SessionIdOnly
        });
    tokio_rustls::TlsConnector::from(std::sync::Arc::new(cfg))
}

/// One connection and one request (so TLS 1.3 tickets, sent after the handshake, are read);
/// returns whether the session was resumed.
async fn resumed(gate: &Gate, connector: &tokio_rustls::TlsConnector) -> bool {
    let tcp = tokio::net::TcpStream::connect(gate.https).await.unwrap();
    let tls = connector
        .connect(
            rustls::pki_types::ServerName::try_from("localhost").unwrap(),
            tcp,
        )
        .await
        .unwrap();
    let kind = tls.get_ref().1.handshake_kind();
    let mut c = Client::over(tls).await;
    assert_eq!(c.get("/x").await.status, StatusCode::OK);
    kind == Some(rustls::HandshakeKind::Resumed)
}

#[tokio::test]
async fn tls12_ticket_lifetime_hint_is_nginx_scale_by_default() {
    let node = Node::start("n", echo()).await;
    let gate = gate_with(&node, "").await;
    let read = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let tcp = tokio::net::TcpStream::connect(gate.https).await.unwrap();
    let rec = Recorder {
        inner: tcp,
        read: read.clone(),
    };
    let connector = frozen_client(&gate, &[&rustls::version::TLS12], true);
    let tls = connector
        .connect(
            rustls::pki_types::ServerName::try_from("localhost").unwrap(),
            rec,
        )
        .await
        .unwrap();
    drop(tls);
    // TLS 1.2 sends NewSessionTicket in the clear, before the server's ChangeCipherSpec.
    let bytes = read.lock().unwrap().clone();
    let mut handshake = Vec::new();
    let mut i = 0;
    while i + 5 <= bytes.len() {
        let (kind, len) = (
            bytes[i],
            u16::from_be_bytes([bytes[i + 3], bytes[i + 4]]) as usize,
        );
        if kind == 20 {
            break; // ChangeCipherSpec: the rest is encrypted
        }
        if kind == 22 {
            handshake.extend_from_slice(&bytes[i + 5..i + 5 + len]);
        }
        i += 5 + len;
    }
    let mut j = 0;
    let mut hint = None;
    while j + 4 <= handshake.len() {
        let len =
            u32::from_be_bytes([0, handshake[j + 1], handshake[j + 2], handshake[j + 3]]) as usize;
        if handshake[j] == 4 {
            let b = &handshake[j + 4..j + 8];
            hint = Some(u32::from_be_bytes([b[0], b[1], b[2], b[3]]));
        }
        j += 4 + len;
    }
    let hint = hint.expect("a TLS 1.2 NewSessionTicket");
    assert!(
        hint > 0 && hint <= 300,
        "ticket lifetime hint {hint} s (NGINX: 300)"
    );
    gate.stop().await;
}

#[tokio::test]
async fn tls_sessions_are_not_resumed_after_the_session_timeout() {
    let node = Node::start("n", echo()).await;
    let gate = gate_with(&node, "[tls]\nsession_timeout = \"2s\"").await;
    for (what, versions, tickets) in [
        ("TLS 1.2 ticket", &[&rustls::version::TLS12], true),
        ("TLS 1.2 session id", &[&rustls::version::TLS12], false),
        ("TLS 1.3 ticket", &[&rustls::version::TLS13], true),
    ] {
        let connector = frozen_client(&gate, versions, tickets);
        assert!(
            !resumed(&gate, &connector).await,
            "{what}: first connection"
        );
        assert!(
            resumed(&gate, &connector).await,
            "{what}: resumption within the timeout"
        );
        // Wall time passes; the client's clock does not, so it offers its session anyway.
        tokio::time::sleep(Duration::from_millis(3000)).await;
        assert!(
            !resumed(&gate, &connector).await,
            "{what}: resumed after the session timeout"
        );
    }
    gate.stop().await;
}

#[tokio::test]
async fn unfinished_handshakes_make_room_for_new_clients_oldest_first() {
    let node = Node::start("n", echo()).await;
    let gate = gate_with(
        &node,
        "[limits]\nmax_connections = 2\n[tls]\nhandshake_timeout = \"60s\"",
    )
    .await;
    let counters = &gate.gw.shared().counters.connections;
    let mut oldest = tokio::net::TcpStream::connect(gate.https).await.unwrap();
    assert!(
        eventually(Duration::from_secs(5), || counters
            .handshakes
            .load(std::sync::atomic::Ordering::Relaxed)
            == 1)
        .await
    );
    let mut newer = tokio::net::TcpStream::connect(gate.https).await.unwrap();
    assert!(
        eventually(Duration::from_secs(5), || counters
            .handshakes
            .load(std::sync::atomic::Ordering::Relaxed)
            == 2)
        .await
    );
    // Both slots are held by connections that never start TLS; a real client still gets in.
    let mut c = tokio::time::timeout(Duration::from_secs(10), Client::h1(&gate))
        .await
        .expect("a new client waited behind idle unhandshaked connections");
    assert_eq!(c.get("/x").await.status, StatusCode::OK);
    // The oldest was closed for it; the newer one is still there.
    let mut b = [0u8; 1];
    let r = tokio::time::timeout(Duration::from_secs(5), oldest.read(&mut b)).await;
    assert!(matches!(r, Ok(Ok(0)) | Ok(Err(_))), "oldest: {r:?}");
    assert!(
        tokio::time::timeout(Duration::from_millis(300), newer.read(&mut b))
            .await
            .is_err(),
        "the newer unhandshaked connection was closed instead of the oldest"
    );
    let (_, m) = gate.admin_get("/metrics").await;
    assert!(
        m.contains("bpgate_tls_handshake_failures_total{reason=\"evicted\"} 1"),
        "{m}"
    );
    gate.stop().await;
}

// === issue 16 item 3: HTTP/2 as browsers send it, `:authority` and no `Host` ===

#[tokio::test]
async fn h2_without_host_forwarding_headers_come_from_authority() {
    let node = Node::start("n", echo()).await;
    let gate = gate_with(&node, "").await;
    let mut c = Client::h2_browser(&gate).await;
    let a = c.get("/api/v1/x").await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.seen("host").as_deref(), Some("localhost"));
    assert_eq!(a.seen("x-forwarded-host").as_deref(), Some("localhost"));
    assert_eq!(a.seen("x-forwarded-proto").as_deref(), Some("https"));
    assert_eq!(
        a.seen("forwarded").as_deref(),
        Some("for=127.0.0.1;host=\"localhost\";proto=https")
    );
    gate.stop().await;
}

#[tokio::test]
async fn h2_without_host_same_origin_is_judged_by_authority() {
    let node = Node::start("n", echo()).await;
    // No allowed origins at all: only same-origin requests pass.
    let gate = gate_with(&node, "[cors]\norigins = []\nreject_disallowed = true").await;
    let mut c = Client::h2_browser(&gate).await;
    let a = c
        .call(
            post("/api/v1/x")
                .header("origin", "https://localhost")
                .body(full("{}"))
                .unwrap(),
        )
        .await;
    assert_eq!(
        a.status,
        StatusCode::OK,
        "same origin refused: {}",
        a.text()
    );
    let a = c
        .call(
            post("/api/v1/x")
                .header("origin", "https://evil.example")
                .body(full("{}"))
                .unwrap(),
        )
        .await;
    assert_eq!(a.status, StatusCode::FORBIDDEN);
    assert_eq!(node.requests.load(std::sync::atomic::Ordering::Relaxed), 1);
    gate.stop().await;
}

#[tokio::test]
async fn h2_without_host_base_path() {
    let node = Node::start("n", echo()).await;
    let gate = gate_with(&node, "base_path = \"/botpress\"").await;
    let mut c = Client::h2_browser(&gate).await;
    let a = c.get("/botpress/api/v1/x").await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.json()["uri"], "/botpress/api/v1/x");
    assert_eq!(a.seen("host").as_deref(), Some("localhost"));
    assert_eq!(a.seen("x-forwarded-prefix").as_deref(), Some("/botpress"));
    assert_eq!(c.get("/admin").await.status, StatusCode::NOT_FOUND);
    let a = c.get("/").await;
    assert_eq!(a.status, StatusCode::FOUND);
    assert_eq!(a.header("location"), Some("/botpress/"));
    assert_eq!(node.requests.load(std::sync::atomic::Ordering::Relaxed), 1);
    gate.stop().await;
}

#[tokio::test]
async fn h2_without_host_audit_line_has_the_authority_as_host() {
    let node = Node::start("n", echo()).await;
    let gate = gate_with(&node, "").await;
    let mut c = Client::h2_browser(&gate).await;
    assert_eq!(c.get("/api/v1/audited").await.status, StatusCode::OK);
    drop(c);
    let lines = gate.audit_lines();
    let l = lines
        .iter()
        .find(|l| l["path"] == "/api/v1/audited")
        .unwrap_or_else(|| panic!("no line: {lines:?}"));
    assert_eq!(l["host"], "localhost", "{l}");
    assert_eq!(l["http_version"], "HTTP/2", "{l}");
    gate.stop().await;
}

/// A node that answers before reading the body and then reads it to the end (Node.js dumps an
/// unread request body to keep the connection): the upload goes on after the answer, longer than
/// the header-read timeout, and is neither cut nor taken for the next request's head.
#[tokio::test]
async fn upload_that_outlasts_an_early_answer_is_not_a_slow_head() {
    use http_body_util::BodyExt;
    init();
    let node = Node::start(
        "n",
        std::sync::Arc::new(|req: http::Request<hyper::body::Incoming>, _| {
            Box::pin(async move {
                if req.method() == http::Method::POST {
                    let body = req.into_body();
                    tokio::spawn(async move {
                        let _ = body.collect().await;
                    });
                    return http::Response::new(full("early"));
                }
                http::Response::new(full("after"))
            })
        }),
    )
    .await;
    let gate = gate_with(
        &node,
        "[limits]\nheader_read_timeout = \"1s\"\nkeepalive_timeout = \"60s\"",
    )
    .await;
    let mut tls = tls_connect(&gate, &[b"http/1.1"]).await;
    // Body lines that would read as both framing headers if taken for a head.
    let piece = b"Transfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n";
    let pieces = 8;
    tls.write_all(
        format!(
            "POST /early HTTP/1.1\r\nHost: localhost\r\nContent-Length: {}\r\n\r\n",
            piece.len() * pieces
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    tls.write_all(piece).await.unwrap();
    let r = read_response(&mut tls).await;
    assert!(r.starts_with("HTTP/1.1 200") && r.ends_with("early"), "{r}");
    // The rest of the upload, over 1.75 s.
    for _ in 1..pieces {
        tokio::time::sleep(Duration::from_millis(250)).await;
        tls.write_all(piece).await.unwrap();
    }
    tls.write_all(b"GET /after HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let r = read_response(&mut tls).await;
    assert!(r.starts_with("HTTP/1.1 200") && r.ends_with("after"), "{r}");
    gate.stop().await;
}

// === issue 14: the protocol comes from ALPN; only a client without ALPN is sniffed ===

/// Writes `bytes` on a TLS connection negotiated with `alpn` and reads what comes back until
/// the server closes (or 5 s pass).
async fn answer_to(gate: &Gate, alpn: &[&[u8]], bytes: &[u8]) -> Vec<u8> {
    let mut tls = tls_connect(gate, alpn).await;
    assert_eq!(
        tls.get_ref().1.alpn_protocol(),
        alpn.first().copied(),
        "ALPN as offered"
    );
    tls.write_all(bytes).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), tls.read_to_end(&mut out)).await;
    out
}

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

#[tokio::test]
async fn alpn_decides_the_protocol_and_nothing_is_sniffed_behind_it() {
    let node = Node::start("n", echo()).await;
    let gate = gate_with(&node, "").await;
    // `http/1.1` negotiated: an HTTP/2 preface is not HTTP/2 (hyper's HTTP/1 parser refuses it
    // and closes), where sniffing would have answered with a SETTINGS frame.
    let out = answer_to(&gate, &[b"http/1.1"], H2_PREFACE).await;
    assert!(
        out.is_empty() || out.starts_with(b"HTTP/1.1 4"),
        "ALPN http/1.1 then the HTTP/2 preface: {:?}",
        String::from_utf8_lossy(&out)
    );
    // `h2` negotiated: an HTTP/1.1 request is not served as one (the HTTP/2 server sends its
    // SETTINGS and a GOAWAY), where sniffing would have answered `HTTP/1.1 200`.
    let out = answer_to(
        &gate,
        &[b"h2"],
        b"GET /x HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(
        !out.starts_with(b"HTTP/"),
        "ALPN h2 then an HTTP/1.1 request: {:?}",
        String::from_utf8_lossy(&out)
    );
    // A frame header comes first: 3 bytes of length, then the type, SETTINGS (4).
    assert_eq!(out.get(3), Some(&4), "an HTTP/2 SETTINGS frame first");
    // And both serve their own protocol, on the node.
    for (h2, version) in [
        (false, http::Version::HTTP_11),
        (true, http::Version::HTTP_2),
    ] {
        let mut c = if h2 {
            Client::h2(&gate).await
        } else {
            Client::h1(&gate).await
        };
        let a = c.get("/alpn").await;
        assert_eq!(a.status, StatusCode::OK);
        assert_eq!(a.version, version);
        assert_eq!(a.json()["uri"], "/alpn");
    }
    gate.stop().await;
}

#[tokio::test]
async fn client_without_alpn_gets_http1_or_http2_with_prior_knowledge() {
    let node = Node::start("n", echo()).await;
    let gate = gate_with(&node, "").await;
    // HTTP/1.1, keep-alive: two requests on the connection.
    let tls = tls_connect(&gate, &[]).await;
    assert_eq!(tls.get_ref().1.alpn_protocol(), None, "no ALPN");
    let mut c = Client::over(tls).await;
    for path in ["/one", "/two"] {
        let a = c.get(path).await;
        assert_eq!(a.status, StatusCode::OK);
        assert_eq!(a.version, http::Version::HTTP_11);
        assert_eq!(a.json()["uri"], path);
    }
    // HTTP/2 with prior knowledge (RFC 9113 §3.3): the preface is recognised.
    let tls = tls_connect(&gate, &[]).await;
    assert_eq!(tls.get_ref().1.alpn_protocol(), None, "no ALPN");
    let (mut tx, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tls),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    for path in ["/three", "/four"] {
        let resp = tx
            .send_request(get(path).body(full(Bytes::new())).unwrap())
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(resp.version(), http::Version::HTTP_2);
    }
    assert_eq!(node.requests.load(std::sync::atomic::Ordering::Relaxed), 4);
    gate.stop().await;
}

#[tokio::test]
async fn h2_connection_that_never_sends_its_preface_is_closed_when_idle() {
    let node = Node::start("n", echo()).await;
    let gate = gate_with(&node, "[limits]\nkeepalive_timeout = \"1s\"").await;
    for alpn in [&b"h2"[..], b"http/1.1"] {
        let mut tls = tls_connect(&gate, &[alpn]).await;
        // hyper's HTTP/2 server closes on request only once the handshake is done: bpgate does
        // not wait for a preface that never comes.
        let took = closed_within(&mut tls, Duration::from_secs(10))
            .await
            .unwrap_or_else(|| {
                panic!("{alpn:?}: silent connection open 10 s after a 1 s keep-alive timeout")
            });
        assert!(
            took >= Duration::from_millis(500),
            "{alpn:?}: closed after {took:?}"
        );
    }
    gate.stop().await;
}
