//! The core gateway end to end: real TLS, HTTP/1.1 and HTTP/2 clients, real upstream servers.

use crate::support;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::{Frame, Incoming};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn gate_with(node: &Node, toml: &str) -> Gate {
    init();
    Gate::builder()
        .upstream(node.url())
        .toml(toml)
        .start()
        .await
}

#[tokio::test]
async fn https_get_and_post_over_h1_and_h2_with_alpn() {
    let node = Node::start("n1", echo()).await;
    let gate = gate_with(&node, "").await;
    for h2 in [false, true] {
        let mut c = if h2 {
            Client::h2(&gate).await
        } else {
            Client::h1(&gate).await
        };
        let a = c.get("/api/v1/ping?x=1").await;
        assert_eq!(a.status, StatusCode::OK);
        assert_eq!(
            a.version,
            if h2 {
                http::Version::HTTP_2
            } else {
                http::Version::HTTP_11
            }
        );
        let j = a.json();
        assert_eq!(j["uri"], "/api/v1/ping?x=1", "origin-form target upstream");
        assert_eq!(j["version"], "HTTP/1.1", "upstream always HTTP/1.1");
        assert_eq!(
            a.seen("host").as_deref(),
            Some("localhost"),
            "Host preserved"
        );
        assert_eq!(a.seen("x-forwarded-proto").as_deref(), Some("https"));
        assert!(a.header("strict-transport-security").is_some());
        assert!(a.header("x-request-id").is_some());
        let body = Bytes::from(vec![b'z'; 100_000]);
        let a = c
            .call(post("/api/v1/x").body(full(body.clone())).unwrap())
            .await;
        assert_eq!(a.status, StatusCode::OK);
        assert_eq!(a.json()["body_len"], 100_000);
        assert_eq!(a.json()["body_sha"], sha(&body));
    }
    gate.stop().await;
}

#[tokio::test]
async fn raw_path_bytes_are_preserved() {
    let node = Node::start("n1", echo()).await;
    let gate = gate_with(&node, "").await;
    let mut c = Client::h1(&gate).await;
    let a = c
        .get("/api/v1/bots/b/flow/skills%2Fchoice-1.flow.json?q=%2F")
        .await;
    assert_eq!(
        a.json()["uri"],
        "/api/v1/bots/b/flow/skills%2Fchoice-1.flow.json?q=%2F"
    );
    gate.stop().await;
}

/// The README's promise: bpgate itself holds at most this much of a body whose reader has
/// stopped reading; the rest waits in the kernel's socket buffers and, beyond them, in the sender.
const HOLDS_AT_MOST: u64 = 2 << 20;

/// 20 MiB in 64 KiB chunks, counting what has been produced (pulled by the reader's side).
fn twenty_mib(produced: Arc<AtomicU64>, byte: u8) -> BoxBody {
    let chunk = Bytes::from(vec![byte; 64 * 1024]);
    let stream = futures_util::stream::iter(0..320).map(move |_| {
        produced.fetch_add(chunk.len() as u64, Ordering::SeqCst);
        Ok::<_, Box<dyn std::error::Error + Send + Sync>>(Frame::data(chunk.clone()))
    });
    BodyExt::boxed(http_body_util::StreamBody::new(stream))
}

/// Waits until `counter` has stopped moving (unchanged for 500 ms; up to 60 s) and returns it.
async fn settled(counter: &AtomicU64) -> u64 {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let mut last = counter.load(Ordering::SeqCst);
    let mut since = tokio::time::Instant::now();
    loop {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let now = counter.load(Ordering::SeqCst);
        if now != last {
            (last, since) = (now, tokio::time::Instant::now());
        } else if since.elapsed() >= Duration::from_millis(500) {
            return now;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "still moving after 60 s"
        );
    }
}

/// A node whose `/upload` reads nothing until `release`, then counts the body; other paths
/// answer 20 MiB produced only as fast as it is pulled.
fn stalling_node(
    release: Arc<tokio::sync::Notify>,
    received: Arc<AtomicU64>,
    produced: Arc<AtomicU64>,
) -> Handler {
    Arc::new(move |req: Request<Incoming>, _| {
        let (release, received, produced) = (release.clone(), received.clone(), produced.clone());
        Box::pin(async move {
            if req.uri().path() == "/upload" {
                release.notified().await;
                let mut body = req.into_body();
                while let Some(f) = body.frame().await {
                    if let Ok(d) = f.unwrap().into_data() {
                        received.fetch_add(d.len() as u64, Ordering::SeqCst);
                    }
                }
                Response::new(full(received.load(Ordering::SeqCst).to_string()))
            } else {
                Response::new(twenty_mib(produced, 7))
            }
        })
    })
}

/// A TCP connection to the gate with a small socket buffer on the test's side (`send` or
/// receive), so that most of what is in flight has to sit with bpgate or in its sockets.
async fn small_buffer_tcp(gate: &Gate, send: bool) -> tokio::net::TcpStream {
    let s = tokio::net::TcpSocket::new_v4().unwrap();
    if send {
        s.set_send_buffer_size(64 * 1024).unwrap();
    } else {
        s.set_recv_buffer_size(64 * 1024).unwrap();
    }
    s.connect(gate.https).await.unwrap()
}

#[tokio::test]
async fn twenty_mib_upload_and_download_stream_with_back_pressure() {
    init();
    let release = Arc::new(tokio::sync::Notify::new());
    let (received, produced) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    // The node's side of every connection reads into a small buffer as well.
    let node_socket = tokio::net::TcpSocket::new_v4().unwrap();
    node_socket.set_recv_buffer_size(64 * 1024).unwrap();
    node_socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let node = Node::start_on(
        "stall",
        node_socket.listen(64).unwrap(),
        stalling_node(release.clone(), received.clone(), produced.clone()),
    )
    .await;
    let gate = gate_with(&node, "[health]\nenabled = false").await;

    for h2 in [false, true] {
        let alpn: &[u8] = if h2 { b"h2" } else { b"http/1.1" };
        // Upload: the node reads nothing until released; the client must be held back.
        received.store(0, Ordering::SeqCst);
        let sent = Arc::new(AtomicU64::new(0));
        let tcp = small_buffer_tcp(&gate, true).await;
        let client_end = tcp.local_addr().unwrap();
        let mut c = Client::over(tls_over(&gate, &[alpn], tcp).await).await;
        let req = post("/upload").body(twenty_mib(sent.clone(), 1)).unwrap();
        let upload = tokio::spawn(async move { c.call(req).await });
        let was_sent = settled(&sent).await;
        let in_kernel = kernel_queued(&[client_end, node.addr]);
        let held = was_sent.saturating_sub(in_kernel);
        assert!(
            was_sent < 20 << 20,
            "h2={h2}: the whole upload left the client while the node read nothing"
        );
        assert!(
            held <= HOLDS_AT_MOST,
            "h2={h2}: bpgate holds {held} bytes of an unread upload ({was_sent} sent, {in_kernel} in socket buffers)"
        );
        release.notify_one();
        let a = upload.await.unwrap();
        assert_eq!(a.status, StatusCode::OK);
        assert_eq!(a.text(), (20u64 << 20).to_string(), "every byte arrives");

        // Download: the client reads nothing; the node must be held back.
        produced.store(0, Ordering::SeqCst);
        let tcp = small_buffer_tcp(&gate, false).await;
        let client_end = tcp.local_addr().unwrap();
        let tls = tls_over(&gate, &[alpn], tcp).await;
        let io = hyper_util::rt::TokioIo::new(tls);
        let req = get("/download").body(full(Bytes::new())).unwrap();
        let resp = if h2 {
            // A small HTTP/2 window too: the client's own buffer stays small.
            let (mut tx, conn) =
                hyper::client::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                    .initial_stream_window_size(64 * 1024)
                    .initial_connection_window_size(64 * 1024)
                    .handshake(io)
                    .await
                    .unwrap();
            tokio::spawn(conn);
            tx.send_request(req).await.unwrap()
        } else {
            let (mut tx, conn) = hyper::client::conn::http1::handshake(io).await.unwrap();
            tokio::spawn(conn);
            tx.send_request(req).await.unwrap()
        };
        assert_eq!(resp.status(), StatusCode::OK);
        let made = settled(&produced).await;
        let in_kernel = kernel_queued(&[client_end, node.addr]);
        let held = made.saturating_sub(in_kernel);
        assert!(
            held <= HOLDS_AT_MOST,
            "h2={h2}: bpgate holds {held} bytes of a download the client does not read ({made} produced, {in_kernel} in socket buffers)"
        );
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body.len(), 20 << 20);
        assert!(body.iter().all(|b| *b == 7));
    }
    gate.stop().await;
}

#[tokio::test]
async fn websocket_echo_through_the_proxy() {
    let node = Node::start("ws", echo()).await;
    let gate = gate_with(&node, "").await;
    let tls = tls_connect(&gate, &[b"http/1.1"]).await;
    let url = format!(
        "wss://localhost:{}/socket.io/?EIO=4&transport=websocket",
        gate.https.port()
    );
    let (mut ws, resp) = tokio_tungstenite::client_async(url, tls).await.unwrap();
    assert_eq!(resp.status(), StatusCode::SWITCHING_PROTOCOLS);
    use tokio_tungstenite::tungstenite::Message;
    let big = vec![9u8; 1 << 20];
    ws.send(Message::binary(big.clone())).await.unwrap();
    let echoed = ws.next().await.unwrap().unwrap();
    assert_eq!(echoed.into_data().len(), big.len());
    for i in 0..200 {
        ws.send(Message::text(format!("m{i}"))).await.unwrap();
    }
    for i in 0..200 {
        assert_eq!(
            ws.next()
                .await
                .unwrap()
                .unwrap()
                .into_text()
                .unwrap()
                .as_str(),
            format!("m{i}")
        );
    }
    ws.close(None).await.unwrap();
    gate.stop().await;
}

#[tokio::test]
async fn forwarding_headers_untrusted_peer_is_replaced() {
    let node = Node::start("n", echo()).await;
    let gate = gate_with(&node, "").await;
    let mut c = Client::h1(&gate).await;
    let req = get("/x")
        .header("x-forwarded-for", "6.6.6.6")
        .header("x-real-ip", "6.6.6.6")
        .header("x-forwarded-proto", "http")
        .header("forwarded", "for=6.6.6.6")
        .header("x-request-id", "spoofed-id")
        .body(full(Bytes::new()))
        .unwrap();
    let a = c.call(req).await;
    assert_eq!(a.seen("x-forwarded-for").as_deref(), Some("127.0.0.1"));
    assert_eq!(a.seen("x-real-ip").as_deref(), Some("127.0.0.1"));
    assert_eq!(a.seen("x-forwarded-proto").as_deref(), Some("https"));
    assert_eq!(a.seen("x-forwarded-host").as_deref(), Some("localhost"));
    assert_eq!(
        a.seen("x-forwarded-port").as_deref(),
        Some(gate.https.port().to_string().as_str())
    );
    assert_eq!(
        a.seen("forwarded").as_deref(),
        Some("for=127.0.0.1;host=\"localhost\";proto=https")
    );
    assert_ne!(a.seen("x-request-id").as_deref(), Some("spoofed-id"));
    assert_eq!(a.seen("x-request-id").as_deref(), a.header("x-request-id"));
    gate.stop().await;
}

#[tokio::test]
async fn behind_a_trusted_proxy_the_node_gets_one_client_and_the_audit_keeps_the_chain() {
    // bpgate behind a load balancer (the test client plays it from 127.0.0.1, and 10.0.0.0/8
    // is an inner proxy tier). The client forged the left part of the chain.
    let node = Node::start("n", echo()).await;
    let gate = gate_with(
        &node,
        "[forwarding]\ntrusted_proxies = [\"127.0.0.0/8\", \"10.0.0.0/8\"]",
    )
    .await;
    let mut c = Client::h1(&gate).await;
    let req = get("/x")
        .header("x-forwarded-for", "6.6.6.6, 198.51.100.9")
        .header("x-forwarded-for", "10.0.0.9")
        .header("forwarded", "for=6.6.6.6;proto=http")
        .header("x-forwarded-proto", "https")
        .header("x-forwarded-host", "bot.example.com")
        .header("x-request-id", "lb-id-42")
        .body(full(Bytes::new()))
        .unwrap();
    let a = c.call(req).await;
    // One hop: what Express with REVERSE_PROXY=loopback (or =true) then takes as req.ip.
    assert_eq!(
        a.json()["headers"]["x-forwarded-for"],
        serde_json::json!(["198.51.100.9"]),
        "the rightmost untrusted hop, alone"
    );
    assert_eq!(a.seen("x-real-ip").as_deref(), Some("198.51.100.9"));
    assert_eq!(
        a.json()["headers"]["forwarded"],
        serde_json::json!(["for=198.51.100.9;host=\"bot.example.com\";proto=https"]),
        "Forwarded says the same as the X-Forwarded-* headers"
    );
    assert_eq!(
        a.seen("x-forwarded-host").as_deref(),
        Some("bot.example.com")
    );
    assert_eq!(a.seen("x-request-id").as_deref(), Some("lb-id-42"));
    let lines = gate.audit_lines();
    let line = lines.last().unwrap();
    assert_eq!(
        line["client_ip"], "198.51.100.9",
        "audit uses the same client IP"
    );
    assert_eq!(line["peer_ip"], "127.0.0.1");
    assert_eq!(
        line["forwarded_for"], "6.6.6.6, 198.51.100.9, 10.0.0.9",
        "the chain as received"
    );
    gate.stop().await;
}

#[tokio::test]
async fn an_untrusted_peer_chain_is_recorded_but_never_forwarded() {
    let node = Node::start("n", echo()).await;
    let gate = gate_with(&node, "").await;
    let mut c = Client::h1(&gate).await;
    let a = c
        .call(
            get("/x")
                .header("x-forwarded-for", "6.6.6.6")
                .body(full(Bytes::new()))
                .unwrap(),
        )
        .await;
    assert_eq!(a.seen("x-forwarded-for").as_deref(), Some("127.0.0.1"));
    let lines = gate.audit_lines();
    let line = lines.last().unwrap();
    assert_eq!(line["client_ip"], "127.0.0.1");
    assert_eq!(line["forwarded_for"], "6.6.6.6", "what the client claimed");
    let mut c = Client::h1(&gate).await;
    c.get("/y").await;
    assert!(gate.audit_lines().last().unwrap()["forwarded_for"].is_null());
    gate.stop().await;
}

#[tokio::test]
async fn hop_by_hop_headers_are_removed_both_ways() {
    init();
    let node = Node::start(
        "n",
        Arc::new(|req: Request<Incoming>, _| {
            Box::pin(async move {
                let seen: Vec<String> = req.headers().keys().map(|k| k.to_string()).collect();
                Response::builder()
                    .header("connection", "x-node-hop")
                    .header("x-node-hop", "1")
                    .header("keep-alive", "timeout=5")
                    .header("proxy-authenticate", "Basic")
                    .body(full(seen.join(",")))
                    .unwrap()
            })
        }),
    )
    .await;
    let gate = Gate::builder().upstream(node.url()).start().await;
    let mut c = Client::h1(&gate).await;
    let req = get("/x")
        .header("connection", "x-client-hop")
        .header("x-client-hop", "1")
        .header("keep-alive", "300")
        .header("proxy-authorization", "Basic abc")
        .header("te", "gzip")
        .header("x-end-to-end", "1")
        .body(full(Bytes::new()))
        .unwrap();
    let a = c.call(req).await;
    let seen = a.text();
    for h in [
        "x-client-hop",
        "keep-alive",
        "proxy-authorization",
        "te",
        "connection",
    ] {
        assert!(
            !seen.split(',').any(|s| s == h),
            "{h} reached the node: {seen}"
        );
    }
    assert!(seen.contains("x-end-to-end"));
    for h in ["x-node-hop", "keep-alive", "proxy-authenticate"] {
        assert!(a.headers.get(h).is_none(), "{h} reached the client");
    }
    gate.stop().await;
}

#[tokio::test]
async fn upstream_down_is_502_and_slow_upstream_is_504() {
    init();
    let dead = dead_addr().await;
    // Health checks off: the node is taken as up, so its refusal is a 502 (with checks on and
    // no node healthy it would be the cluster's 503).
    let gate = Gate::builder()
        .upstream(format!("http://{dead}"))
        .toml("[health]\nenabled = false")
        .start()
        .await;
    let mut c = Client::h1(&gate).await;
    let a = c.get("/x").await;
    assert_eq!(a.status, StatusCode::BAD_GATEWAY);
    assert!(
        a.text().contains(a.header("x-request-id").unwrap()),
        "error names the request id"
    );
    gate.stop().await;

    // Silent for good on /x; on /long, past the 300 ms default but well within its 5 s.
    let slow = Node::start(
        "slow",
        Arc::new(|req: Request<Incoming>, _| {
            Box::pin(async move {
                if !req.uri().path().starts_with("/long") {
                    std::future::pending::<()>().await;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
                Response::new(full("late"))
            })
        }),
    )
    .await;
    let gate = Gate::builder()
        .upstream(slow.url())
        .toml("[upstream]\nresponse_timeout = \"300ms\"\n[[upstream.timeouts]]\nprefix = \"/long\"\nresponse_timeout = \"5s\"")
        .start()
        .await;
    let mut c = Client::h2(&gate).await;
    assert_eq!(c.get("/x").await.status, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(
        c.get("/long/push").await.status,
        StatusCode::OK,
        "per-prefix timeout override"
    );
    gate.stop().await;
}

#[tokio::test]
async fn body_limit_is_413_declared_and_streamed() {
    let node = Node::start("n", echo()).await;
    let gate = gate_with(&node, "[limits]\nmax_body = \"1k\"").await;
    let mut c = Client::h1(&gate).await;
    let a = c
        .call(post("/x").body(full(vec![0u8; 2000])).unwrap())
        .await;
    assert_eq!(a.status, StatusCode::PAYLOAD_TOO_LARGE);
    // Chunked, no Content-Length: caught while streaming.
    let mut c = Client::h1(&gate).await;
    let stream = futures_util::stream::iter(0..4).map(|_| {
        Ok::<_, Box<dyn std::error::Error + Send + Sync>>(Frame::data(Bytes::from(vec![1u8; 600])))
    });
    let a = c
        .call(
            post("/x")
                .body(BodyExt::boxed(http_body_util::StreamBody::new(stream)))
                .unwrap(),
        )
        .await;
    assert_eq!(a.status, StatusCode::PAYLOAD_TOO_LARGE);
    let mut c = Client::h1(&gate).await;
    assert_eq!(
        c.call(post("/x").body(full(vec![0u8; 1000])).unwrap())
            .await
            .status,
        StatusCode::OK
    );
    let lines = gate.audit_lines();
    assert_eq!(lines.iter().filter(|l| l["status"] == 413).count(), 2);
    gate.stop().await;
}

async fn raw_exchange(gate: &Gate, bytes: &[u8]) -> String {
    let mut tls = tls_connect(gate, &[b"http/1.1"]).await;
    tls.write_all(bytes).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), tls.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test]
async fn headers_too_large_is_431_and_malformed_is_400_and_both_are_audited() {
    let node = Node::start("n", echo()).await;
    let gate = gate_with(
        &node,
        "[limits]\nmax_header_bytes = \"16k\"\n[health]\nenabled = false",
    )
    .await;
    let big = format!(
        "GET / HTTP/1.1\r\nHost: localhost\r\nX-Big: {}\r\n\r\n",
        "a".repeat(40_000)
    );
    let r = raw_exchange(&gate, big.as_bytes()).await;
    assert!(r.starts_with("HTTP/1.1 431"), "{r}");
    let r = raw_exchange(
        &gate,
        b"GET / HTTP/1.1\r\nHost: localhost\r\nBad Header\r\n\r\n",
    )
    .await;
    assert!(r.starts_with("HTTP/1.1 400"), "{r}");
    assert_eq!(
        node.requests.load(Ordering::Relaxed),
        0,
        "nothing reached the node"
    );
    let lines = gate.audit_lines();
    assert!(lines
        .iter()
        .any(|l| l["status"] == 431 && l["outcome"] == "rejected"));
    assert!(lines
        .iter()
        .any(|l| l["status"] == 400 && l["outcome"] == "rejected"));
    gate.stop().await;
}

// The slowloris guard (header_read_timeout, both bounds): tests/edge.rs.

#[tokio::test]
async fn connection_limit_holds_extra_connections_back_and_serves_them_in_turn() {
    let node = Node::start("n", echo()).await;
    let gate = gate_with(
        &node,
        "[limits]\nmax_connections = 1\n[health]\nenabled = false",
    )
    .await;
    let mut first = Client::h1(&gate).await;
    assert_eq!(first.get("/a").await.status, StatusCode::OK);
    // Three more clients: the kernel completes their TCP handshakes (queued, not refused), and
    // bpgate serves none of them while the first is open. It may take one off the backlog to
    // hold while it waits for a slot; the others wait in its listener's accept queue.
    let mut waiting = Vec::new();
    for _ in 0..3 {
        waiting.push(tokio::net::TcpStream::connect(gate.https).await.unwrap());
    }
    assert!(
        eventually(Duration::from_secs(10), || accept_queue(gate.https) >= 2).await,
        "the clients beyond the limit wait in the backlog (queue: {})",
        accept_queue(gate.https)
    );
    // bpgate has run since (it answered), and it still has not taken them.
    assert_eq!(first.get("/b").await.status, StatusCode::OK);
    let (_, m) = gate.admin_get("/metrics").await;
    assert!(
        m.contains("bpgate_connections{protocol=\"h1\"} 1\n"),
        "one open connection:\n{m}"
    );
    assert!(
        accept_queue(gate.https) >= 2,
        "taken beyond max_connections"
    );
    // Each closes in turn: the next waiting client is served, on the connection that waited.
    let mut open = first;
    for (i, tcp) in waiting.into_iter().enumerate() {
        drop(open);
        open = tokio::time::timeout(Duration::from_secs(10), async {
            Client::over(tls_over(&gate, &[b"http/1.1"], tcp).await).await
        })
        .await
        .unwrap_or_else(|_| panic!("waiting client {i} not served once a slot was free"));
        assert_eq!(open.get("/c").await.status, StatusCode::OK, "client {i}");
    }
    assert_eq!(accept_queue(gate.https), 0);
    gate.stop().await;
}

#[tokio::test]
async fn redirect_listener_sends_308_to_https() {
    init();
    let node = Node::start("n", echo()).await;
    let gate = Gate::builder()
        .upstream(node.url())
        .redirect_listener()
        .env("EXTERNAL_URL", "https://bot.example.com")
        .toml("[health]\nenabled = false")
        .start()
        .await;
    let stream = tokio::net::TcpStream::connect(gate.http.unwrap())
        .await
        .unwrap();
    let (mut tx, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    let req = Request::get("/admin/x?y=1")
        .header("host", "bot.example.com")
        .body(full(Bytes::new()))
        .unwrap();
    let resp = tx.send_request(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::PERMANENT_REDIRECT);
    assert_eq!(
        resp.headers()["location"],
        "https://bot.example.com/admin/x?y=1"
    );
    assert_eq!(node.requests.load(Ordering::Relaxed), 0);
    gate.stop().await;
}

#[tokio::test]
async fn graceful_shutdown_finishes_in_flight_and_refuses_new() {
    init();
    // The node answers only when the test says so: the request stays in flight, and the gate
    // in its drain, for as long as the test needs.
    let release = Arc::new(tokio::sync::Notify::new());
    let r = release.clone();
    let node = Node::start(
        "slow",
        Arc::new(move |_req, _| {
            let r = r.clone();
            Box::pin(async move {
                r.notified().await;
                Response::new(full("done"))
            })
        }),
    )
    .await;
    let mut gate = Gate::builder()
        .upstream(node.url())
        .toml("[health]\nenabled = false")
        .start()
        .await;
    let mut c = Client::h1(&gate).await;
    let inflight = tokio::spawn(async move { c.get("/slow").await });
    assert!(
        eventually(Duration::from_secs(10), || node
            .requests
            .load(Ordering::SeqCst)
            == 1)
        .await,
        "the request reached the node"
    );
    gate.trigger_stop();
    // While the request runs, the gate drains: new connections are refused.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let attempt = tokio::time::timeout(
            Duration::from_secs(1),
            tokio::net::TcpStream::connect(gate.https),
        )
        .await;
        // (A connect that races the listener's close may be reset instead.)
        if matches!(&attempt, Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "new connections are still taken 10 s into the drain"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (status, readyz) = gate.admin_get("/readyz").await;
    let readyz: serde_json::Value = serde_json::from_str(&readyz).unwrap();
    assert_eq!(readyz["draining"], true, "refused during the drain");
    assert_eq!(
        status,
        StatusCode::SERVICE_UNAVAILABLE,
        "not ready while draining"
    );
    assert!(!inflight.is_finished(), "the request is still in flight");
    release.notify_one();
    let a = inflight.await.unwrap();
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.text(), "done");
    gate.wait_stopped().await;
    assert!(tokio::net::TcpStream::connect(gate.https).await.is_err());
    let lines = read_audit_dir(&gate.audit_dir);
    assert!(
        lines
            .iter()
            .any(|l| l["path"] == "/slow" && l["status"] == 200),
        "the last line was flushed"
    );
}

#[tokio::test]
async fn expect_100_continue_and_trailers() {
    let node = Node::start("n", echo()).await;
    let gate = gate_with(&node, "").await;
    let mut tls = tls_connect(&gate, &[b"http/1.1"]).await;
    tls.write_all(
        b"POST /x HTTP/1.1\r\nHost: localhost\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n",
    )
    .await
    .unwrap();
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(5), tls.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 100"),
        "{}",
        String::from_utf8_lossy(&buf[..n])
    );
    tls.write_all(b"hello").await.unwrap();
    let mut rest = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(5), tls.read(&mut rest))
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8_lossy(&rest[..n]);
    assert!(text.contains("200 OK"), "{text}");
    gate.stop().await;

    // Trailers from the node reach an HTTP/2 client.
    init();
    let node = Node::start(
        "t",
        Arc::new(|_req, _| {
            Box::pin(async move {
                let mut trailers = http::HeaderMap::new();
                trailers.insert("x-checksum", "abc".parse().unwrap());
                let frames = vec![
                    Ok::<_, Box<dyn std::error::Error + Send + Sync>>(Frame::data(Bytes::from(
                        "body",
                    ))),
                    Ok(Frame::trailers(trailers)),
                ];
                Response::builder()
                    .header("trailer", "x-checksum")
                    .body(BodyExt::boxed(http_body_util::StreamBody::new(
                        futures_util::stream::iter(frames),
                    )))
                    .unwrap()
            })
        }),
    )
    .await;
    let gate = Gate::builder().upstream(node.url()).start().await;
    let mut c = Client::h2(&gate).await;
    let resp = c
        .send(get("/t").body(full(Bytes::new())).unwrap())
        .await
        .unwrap();
    let collected = resp.into_body().collect().await.unwrap();
    assert_eq!(
        collected
            .trailers()
            .and_then(|t| t.get("x-checksum"))
            .map(|v| v.as_bytes()),
        Some(&b"abc"[..])
    );
    gate.stop().await;
}

#[tokio::test]
async fn pooled_upstream_connections_are_reused() {
    let node = Node::start("n", echo()).await;
    let gate = gate_with(&node, "").await;
    let mut c = Client::h1(&gate).await;
    for _ in 0..50 {
        assert_eq!(c.get("/x").await.status, StatusCode::OK);
    }
    assert!(
        node.accepted.load(Ordering::Relaxed) <= 2,
        "opened {} upstream connections for 50 sequential requests",
        node.accepted.load(Ordering::Relaxed)
    );
    gate.stop().await;
}

#[tokio::test]
async fn admin_health_and_readiness() {
    let node = Node::start("n", echo()).await;
    let gate = gate_with(&node, "[health]\ninterval = \"100ms\"").await;
    assert_eq!(gate.admin_get("/healthz").await.0, StatusCode::OK);
    assert!(eventually(Duration::from_secs(5), || gate.gw.ready()).await);
    assert_eq!(gate.admin_get("/readyz").await.0, StatusCode::OK);
    node.kill().await;
    // Every node down after one was up: panic mode. bpgate still routes (and answers 503 when
    // nothing can be reached), so it stays ready: a readiness probe failing on every replica at
    // once would take the service out with the nodes.
    assert!(
        eventually(Duration::from_secs(5), || gate.gw.current().nodes.panic()).await,
        "panic mode with every node down"
    );
    let (s, body) = gate.admin_get("/readyz").await;
    assert_eq!(s, StatusCode::OK, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["panic"], true);
    assert_eq!(v["healthy_nodes"], 0);
    let mut c = Client::h1(&gate).await;
    let a = c.get("/x").await;
    assert_eq!(a.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(a.header("retry-after").is_some());
    gate.stop().await;

    // A gate whose nodes never passed a check is not ready.
    let dead = dead_addr().await;
    let gate = Gate::builder()
        .upstream(format!("http://{dead}"))
        .toml("[health]\ninterval = \"100ms\"")
        .start()
        .await;
    assert!(
        eventually(Duration::from_secs(5), || gate.gw.current().nodes.nodes[0]
            .view()
            .last_check
            .is_some())
        .await
    );
    assert_eq!(
        gate.admin_get("/readyz").await.0,
        StatusCode::SERVICE_UNAVAILABLE
    );
    gate.stop().await;
}

#[tokio::test]
async fn idle_keepalive_connections_are_closed() {
    let node = Node::start("n", echo()).await;
    let gate = gate_with(&node, "[limits]\nkeepalive_timeout = \"400ms\"").await;
    let mut tls = tls_connect(&gate, &[b"http/1.1"]).await;
    tls.write_all(b"GET /x HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 65536];
    let n = tls.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    // Now idle: bpgate closes the connection after the keep-alive timeout.
    let start = std::time::Instant::now();
    let mut rest = Vec::new();
    let r = tokio::time::timeout(Duration::from_secs(5), tls.read_to_end(&mut rest)).await;
    assert!(r.is_ok(), "idle connection still open after 5 s");
    assert!(
        start.elapsed() >= Duration::from_millis(300),
        "closed too early"
    );
    gate.stop().await;
}

#[tokio::test]
async fn h2_concurrent_streams_are_capped() {
    init();
    let now = Arc::new(AtomicU64::new(0));
    let max = Arc::new(AtomicU64::new(0));
    let go = Arc::new(tokio::sync::Semaphore::new(0));
    let (n2, m2, g2) = (now.clone(), max.clone(), go.clone());
    let node = Node::start(
        "n",
        Arc::new(move |req: Request<Incoming>, _| {
            let (now, max, go) = (n2.clone(), m2.clone(), g2.clone());
            Box::pin(async move {
                if req.uri().path() == "/warm" {
                    return Response::new(full("ok"));
                }
                let c = now.fetch_add(1, Ordering::SeqCst) + 1;
                max.fetch_max(c, Ordering::SeqCst);
                // Held until the test lets one go.
                go.acquire().await.unwrap().forget();
                now.fetch_sub(1, Ordering::SeqCst);
                Response::new(full("ok"))
            })
        }),
    )
    .await;
    let gate = Gate::builder()
        .upstream(node.url())
        .toml("[limits]\nh2_max_concurrent_streams = 2\n[health]\nenabled = false")
        .start()
        .await;
    let mut c = Client::h2(&gate).await;
    // One exchange first, so the client has bpgate's SETTINGS (streams sent before them may be
    // refused with REFUSED_STREAM, which is also the cap at work).
    assert_eq!(c.get("/warm").await.status, StatusCode::OK);
    max.store(0, Ordering::SeqCst);
    let Client::H2(tx) = c else { panic!("h2") };
    let mut tasks = Vec::new();
    for _ in 0..6 {
        let mut tx = tx.clone();
        tasks.push(tokio::spawn(async move {
            tx.ready().await.unwrap();
            let r = tx
                .send_request(get("/x").body(full(Bytes::new())).unwrap())
                .await
                .unwrap();
            r.status()
        }));
    }
    // Let the six go one at a time, each time once the cap is full again.
    for left in (1..=6u64).rev() {
        assert!(
            eventually(Duration::from_secs(10), || now.load(Ordering::SeqCst)
                >= left.min(2))
            .await,
            "{} streams running with {left} requests left",
            now.load(Ordering::SeqCst)
        );
        go.add_permits(1);
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), StatusCode::OK);
    }
    assert_eq!(
        max.load(Ordering::SeqCst),
        2,
        "more than 2 streams ran at once on one connection"
    );
    gate.stop().await;
}

#[tokio::test]
async fn failed_and_stalled_handshakes_do_not_block_others() {
    let node = Node::start("n", echo()).await;
    let gate = gate_with(&node, "[tls]\nhandshake_timeout = \"500ms\"").await;
    // A client that never speaks, and one that speaks garbage.
    let _silent = tokio::net::TcpStream::connect(gate.https).await.unwrap();
    let mut garbage = tokio::net::TcpStream::connect(gate.https).await.unwrap();
    garbage
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut c = Client::h1(&gate).await;
    assert_eq!(c.get("/x").await.status, StatusCode::OK);
    let mut sink = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(3), garbage.read_to_end(&mut sink)).await;
    // The silent one is cut at the 500 ms handshake timeout; both are then counted.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (_, m) = gate.admin_get("/metrics").await;
        let failures: f64 = m
            .lines()
            .filter(|l| l.starts_with("bpgate_tls_handshake_failures_total{"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum();
        if failures >= 2.0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "both bad handshakes are counted:\n{m}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    gate.stop().await;
}

#[tokio::test]
async fn security_headers_on_every_answer_and_framing_left_to_csp() {
    init();
    let node = Node::start(
        "n",
        Arc::new(|_req, _| {
            Box::pin(async move {
                Response::builder()
                    .header("x-frame-options", "SAMEORIGIN")
                    .header("x-powered-by", "Botpress")
                    .body(full("page"))
                    .unwrap()
            })
        }),
    )
    .await;
    let gate = Gate::builder()
        .upstream(node.url())
        .toml("[headers]\nframe_ancestors = [\"'self'\", \"https://shop.example.com\"]\n[limits]\nmax_body = \"1k\"")
        .start()
        .await;
    let mut c = Client::h1(&gate).await;
    let chat = c.get("/lite/bot1/").await;
    assert!(
        chat.headers.get("x-frame-options").is_none(),
        "XFO breaks webchat embedding"
    );
    assert!(chat.headers.get("x-powered-by").is_none());
    assert_eq!(
        chat.header("content-security-policy"),
        Some("frame-ancestors 'self' https://shop.example.com")
    );
    assert_eq!(chat.header("x-content-type-options"), Some("nosniff"));
    assert_eq!(
        chat.header("referrer-policy"),
        Some("strict-origin-when-cross-origin")
    );
    let admin = c.get("/admin/").await;
    assert_eq!(
        admin.header("x-frame-options"),
        Some("SAMEORIGIN"),
        "other paths keep what Botpress sends"
    );
    let refused = c
        .call(post("/x").body(full(vec![0u8; 4000])).unwrap())
        .await;
    assert_eq!(refused.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(
        refused.header("strict-transport-security"),
        Some("max-age=31536000"),
        "bpgate's own answers too"
    );
    gate.stop().await;
}

/// A node's response head is read into a buffer capped at 32 KiB (bpgate reads large answers in
/// chunks of that size, instead of growing a buffer per connection to the answer's size): a head
/// within it passes whole, a larger one is the node's error (502), audited as such.
#[tokio::test]
async fn a_node_response_head_up_to_32_kib_passes_and_a_larger_one_is_a_502() {
    let big: Handler = Arc::new(|req: Request<Incoming>, _cx: NodeCtx| {
        Box::pin(async move {
            let n: usize = req
                .uri()
                .query()
                .and_then(|q| q.strip_prefix("n="))
                .and_then(|n| n.parse().ok())
                .unwrap_or(0);
            let mut r = Response::new(full(Bytes::from_static(b"ok")));
            if n > 0 {
                r.headers_mut()
                    .insert("x-big", "a".repeat(n).parse().unwrap());
            }
            r
        })
    });
    let node = Node::start("n", big).await;
    let gate = gate_with(&node, "[health]\nenabled = false").await;
    let mut c = Client::h1(&gate).await;
    let a = c.get("/api/v1/big?n=30000").await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.headers["x-big"].len(), 30000);
    assert_eq!(&a.body[..], b"ok");
    let a = c.get("/api/v1/big?n=40000").await;
    assert_eq!(a.status, StatusCode::BAD_GATEWAY);
    let lines = gate.audit_lines();
    assert!(
        lines.iter().any(|l| l["path"] == "/api/v1/big"
            && l["status"] == 502
            && l["outcome"] == "upstream_error"),
        "{lines:?}"
    );
    gate.stop().await;
}
