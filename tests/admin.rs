//! The admin listener: state changes locked against browsers and DNS rebinding, the bearer
//! token, the status page (also in a real headless Chromium), drain idleness.

use crate::support;

mod cdp;

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{HeaderMap, Request, StatusCode};
use http_body_util::BodyExt;
use hyper_util::rt::TokioIo;
use support::*;
use tokio_tungstenite::tungstenite::Message;

/// One request to the admin listener with exactly these headers (no others but what hyper adds).
async fn admin(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (StatusCode, HeaderMap, String) {
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let mut b = Request::builder().method(method).uri(path);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    let resp = tx
        .send_request(b.body(full(Bytes::from(body.to_string()))).unwrap())
        .await
        .unwrap();
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    (
        parts.status,
        parts.headers,
        String::from_utf8_lossy(&body).into_owned(),
    )
}

async fn two_nodes(extra: &str) -> (Node, Node, Gate) {
    init();
    let a = Node::start("a", echo()).await;
    let b = Node::start("b", echo()).await;
    let gate = Gate::builder()
        .toml(&format!(
            "[[upstream.nodes]]\nurl = \"{}\"\nname = \"a\"\n[[upstream.nodes]]\nurl = \"{}\"\nname = \"b\"",
            a.url(),
            b.url()
        ))
        .toml("[upstream]\nurls = []")
        .toml(extra)
        .start()
        .await;
    (a, b, gate)
}

fn draining(gate: &Gate, node: &str) -> bool {
    gate.gw.current().nodes.node(node).unwrap().is_draining()
}

/// A page on another site posting to the admin API (a `text/plain` simple request needs no
/// preflight), a DNS-rebinding page (its own host name in `Host`), and the same request from
/// the command line.
#[tokio::test]
async fn state_changes_refuse_foreign_origin_and_rebinding_host() {
    let (_a, _b, gate) = two_nodes("[health]\nenabled = false").await;
    let own = gate.admin.to_string();
    let generation = gate.gw.current().number;

    // Cross-site form/fetch: foreign Origin, text/plain, no credentials.
    for origin in ["https://evil.example", "null", "http://localhost:8000"] {
        let (s, _, body) = admin(
            gate.admin,
            "POST",
            "/upstreams/a/drain",
            &[
                ("host", &own),
                ("origin", origin),
                ("content-type", "text/plain"),
            ],
            "x=1",
        )
        .await;
        assert_eq!(s, StatusCode::FORBIDDEN, "Origin {origin}: {body}");
        assert!(body.contains("Origin"), "{body}");
        assert!(!draining(&gate, "a"), "Origin {origin} drained the node");
    }
    let (s, _, _) = admin(
        gate.admin,
        "POST",
        "/reload",
        &[
            ("host", &own),
            ("origin", "https://evil.example"),
            ("content-type", "text/plain"),
        ],
        "",
    )
    .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    // DNS rebinding: the attacker's name resolves to 127.0.0.1, the browser sends its Host
    // (and a same-origin Origin, which is no help).
    let rebound = format!("rebind.evil.example:{}", gate.admin.port());
    for headers in [
        vec![("host", rebound.as_str())],
        vec![
            ("host", rebound.as_str()),
            ("origin", &format!("http://{rebound}")),
        ],
    ] {
        let (s, _, body) = admin(gate.admin, "POST", "/upstreams/a/drain", &headers, "").await;
        assert_eq!(s, StatusCode::FORBIDDEN, "{headers:?}: {body}");
        assert!(body.contains("Host"), "{body}");
    }
    let (s, _, _) = admin(
        gate.admin,
        "POST",
        "/audit/rotate",
        &[("host", &own), ("sec-fetch-site", "cross-site")],
        "",
    )
    .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    assert!(!draining(&gate, "a"));
    assert_eq!(gate.gw.current().number, generation, "nothing reloaded");

    // Reads stay open whatever the Host (probes and scrapers use names and addresses).
    for p in ["/healthz", "/metrics", "/upstreams", "/"] {
        let (s, h, _) = admin(gate.admin, "GET", p, &[("host", &rebound)], "").await;
        assert_eq!(s, StatusCode::OK, "{p}");
        assert_eq!(h["cache-control"], "no-store", "{p}");
    }
    // The command line (no Origin, the listener's address or localhost) may.
    let (s, _, body) = admin(
        gate.admin,
        "POST",
        "/upstreams/a/drain",
        &[("host", &own)],
        "",
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{body}");
    assert!(draining(&gate, "a"));
    let lh = format!("localhost:{}", gate.admin.port());
    let (s, _, _) = admin(
        gate.admin,
        "POST",
        "/upstreams/a/undrain",
        &[("host", &lh), ("origin", &format!("http://{lh}"))],
        "",
    )
    .await;
    assert_eq!(
        s,
        StatusCode::OK,
        "same-origin Origin is the listener's own"
    );
    assert!(!draining(&gate, "a"));
    gate.stop().await;
}

#[tokio::test]
async fn token_required_for_state_changes_when_set() {
    const TOKEN: &str = "0123456789abcdef-admin-token";
    let (_a, _b, gate) = {
        init();
        let a = Node::start("a", echo()).await;
        let b = Node::start("b", echo()).await;
        let gate = Gate::builder()
            .upstream(a.url())
            .upstream(b.url())
            .env("BPGATE_ADMIN_TOKEN", TOKEN)
            .toml("[health]\nenabled = false")
            .start()
            .await;
        (a, b, gate)
    };
    let own = gate.admin.to_string();
    let node = gate.gw.current().nodes.nodes[0].spec.name.clone();
    let drain = format!("/upstreams/{node}/drain");
    let (s, h, body) = admin(gate.admin, "POST", &drain, &[("host", &own)], "").await;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "no token: {body}");
    assert_eq!(h["www-authenticate"], "Bearer realm=\"bpgate admin\"");
    for wrong in [
        "Bearer wrong",
        "Bearer 0123456789abcdef-admin-toke",
        "Bearer 0123456789abcdef-admin-tokenX",
        &format!("Basic {TOKEN}"),
        TOKEN,
    ] {
        let (s, _, body) = admin(
            gate.admin,
            "POST",
            &drain,
            &[("host", &own), ("authorization", wrong)],
            "",
        )
        .await;
        assert_eq!(s, StatusCode::UNAUTHORIZED, "{wrong}: {body}");
        assert!(!draining(&gate, &node));
    }
    let bearer = format!("Bearer {TOKEN}");
    let (s, _, body) = admin(
        gate.admin,
        "POST",
        &drain,
        &[("host", &own), ("authorization", &bearer)],
        "",
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{body}");
    assert!(draining(&gate, &node));
    // The token does not lift the browser checks.
    let (s, _, _) = admin(
        gate.admin,
        "POST",
        "/reload",
        &[
            ("host", &own),
            ("authorization", &bearer),
            ("origin", "https://evil.example"),
        ],
        "",
    )
    .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let (s, _, body) = admin(
        gate.admin,
        "POST",
        "/reload",
        &[("host", &own), ("authorization", &bearer)],
        "",
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{body}");
    // Reads need no token.
    for p in ["/healthz", "/readyz", "/metrics", "/upstreams", "/"] {
        let (s, _, _) = admin(gate.admin, "GET", p, &[("host", &own)], "").await;
        assert!(
            s.is_success() || s == StatusCode::SERVICE_UNAVAILABLE,
            "{p}: {s}"
        );
    }
    gate.stop().await;
}

#[tokio::test]
async fn status_page_is_self_contained_and_locked_down() {
    let (_a, _b, gate) = two_nodes("[health]\nenabled = false").await;
    let mut c = Client::h1(&gate).await;
    for _ in 0..5 {
        assert_eq!(c.get("/x").await.status, StatusCode::OK);
    }
    let (s, h, page) = admin(gate.admin, "GET", "/", &[("host", "127.0.0.1")], "").await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(h["content-type"], "text/html; charset=utf-8");
    let csp = h["content-security-policy"].to_str().unwrap();
    assert!(
        csp.starts_with("default-src 'none'; style-src 'sha256-"),
        "{csp}"
    );
    assert!(
        !csp.contains("unsafe-inline") && !csp.contains("script-src"),
        "{csp}"
    );
    assert!(csp.contains("frame-ancestors 'none'"), "{csp}");
    // No script, no external reference of any kind.
    let lower = page.to_ascii_lowercase();
    for banned in ["<script", "src=", "href=", "@import", "url("] {
        assert!(!lower.contains(banned), "{banned} in the page");
    }
    assert!(page.contains("<meta http-equiv=\"refresh\" content=\"5\">"));
    // The style element's hash is the one the policy allows.
    let css = page
        .split("<style>")
        .nth(1)
        .and_then(|r| r.split("</style>").next())
        .unwrap();
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, css.as_bytes());
    use base64::Engine as _;
    let hash = base64::engine::general_purpose::STANDARD.encode(digest.as_ref());
    assert!(csp.contains(&format!("'sha256-{hash}'")), "{csp}");
    for want in [
        "data-node=\"a\" data-health=\"up\" data-drain=\"serving\"",
        "data-node=\"b\"",
        "localhost",
        "id=\"days-left\"",
        "id=\"audit-queue\"",
        "id=\"audit-errors\"",
        "id=\"generation\">1<",
    ] {
        assert!(page.contains(want), "{want} missing:\n{page}");
    }
    let (_, _, page) = admin(gate.admin, "GET", "/?refresh=1", &[], "").await;
    assert!(page.contains("content=\"1\""));
    gate.stop().await;
}

/// A drained node is idle once nothing is in flight, no tunnel is open and no request came
/// for `admin.drain_idle_after`; a pinned WebSocket keeps it busy.
#[tokio::test]
async fn drained_node_says_when_it_is_idle() {
    let (_a, _b, gate) = two_nodes(
        "[health]\nenabled = false\n[admin]\ndrain_idle_after = \"1s\"\n[sticky]\nfallback = \"none\"",
    )
    .await;
    let node_of = |v: &serde_json::Value, n: &str| -> serde_json::Value {
        v["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["name"] == n)
            .unwrap()
            .clone()
    };
    // A WebSocket pinned to some node.
    let mut tls = tls_connect(&gate, &[b"http/1.1"]).await;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    tls.write_all(b"GET /socket.io/?EIO=4&transport=websocket HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n").await.unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut b = [0u8; 1];
        tls.read_exact(&mut b).await.unwrap();
        head.push(b[0]);
    }
    let head = String::from_utf8_lossy(&head).to_string();
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    let mut ws = tokio_tungstenite::WebSocketStream::from_raw_socket(
        tls,
        tokio_tungstenite::tungstenite::protocol::Role::Client,
        None,
    )
    .await;
    ws.send(Message::text("ping")).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("ping"));
    let (_, v) = gate.admin_get("/upstreams").await;
    let v: serde_json::Value = serde_json::from_str(&v).unwrap();
    let pinned = v["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["tunnels"] == 1)
        .unwrap_or_else(|| panic!("no node shows the tunnel: {v}"))["name"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(v["drain_idle_after_seconds"], 1);
    assert_eq!(
        gate.admin_post(&format!("/upstreams/{pinned}/drain"))
            .await
            .0,
        StatusCode::OK
    );
    let (_, v) = gate.admin_get("/upstreams").await;
    let n = node_of(&serde_json::from_str(&v).unwrap(), &pinned);
    assert_eq!(n["draining"], true);
    assert!(n["drained_since"].is_string(), "{n}");
    assert_eq!(n["idle"], false);
    // Well past drain_idle_after, the open tunnel still keeps it busy.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (_, v) = gate.admin_get("/upstreams").await;
    let n = node_of(&serde_json::from_str(&v).unwrap(), &pinned);
    assert_eq!(
        (n["idle"].clone(), n["tunnels"].clone()),
        (false.into(), 1.into()),
        "{n}"
    );
    let (_, page) = gate.admin_get("/").await;
    assert!(
        page.contains(&format!(
            "data-node=\"{pinned}\" data-health=\"up\" data-drain=\"draining\""
        )),
        "{page}"
    );
    assert!(page.contains("1 tunnel(s) open"), "{page}");
    // The browser goes away: idle once the tunnel has closed and a quiet second has passed.
    ws.close(None).await.unwrap();
    drop(ws);
    let mut idle = false;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !idle && tokio::time::Instant::now() < deadline {
        let (_, v) = gate.admin_get("/upstreams").await;
        let n = node_of(&serde_json::from_str(&v).unwrap(), &pinned);
        idle = n["idle"] == true;
        if !idle {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    assert!(idle, "the drained node never became idle");
    let (_, page) = gate.admin_get("/").await;
    assert!(
        page.contains(&format!(
            "data-node=\"{pinned}\" data-health=\"up\" data-drain=\"idle\""
        )),
        "{page}"
    );
    assert!(page.contains("idle: safe to stop"), "{page}");
    // The other node is not drained, so never idle.
    let other = if pinned == "a" { "b" } else { "a" };
    let (_, v) = gate.admin_get("/upstreams").await;
    assert_eq!(
        node_of(&serde_json::from_str(&v).unwrap(), other)["idle"],
        false
    );
    gate.stop().await;
}

/// The status page in a real headless Chromium: it renders under its own CSP (the hashed
/// stylesheet applies, no script runs), shows both nodes up with their traffic and the drained
/// one idle, then reloads itself and shows a killed node down.
#[tokio::test]
async fn status_page_in_chromium_shows_a_node_going_down() {
    let Some(bin) = cdp::chromium_or_skip() else {
        return;
    };
    let (a, _b, gate) = two_nodes(
        "[health]\ninterval = \"300ms\"\ntimeout = \"2s\"\nrise = 1\nfall = 1\n[admin]\ndrain_idle_after = \"1s\"",
    )
    .await;
    assert!(
        eventually(Duration::from_secs(10), || gate.gw.generations.ready()).await,
        "nodes never came up"
    );
    let mut c = Client::h1(&gate).await;
    for _ in 0..30 {
        assert_eq!(c.get("/api/ping").await.status, StatusCode::OK);
    }
    assert_eq!(
        gate.admin_post("/upstreams/b/drain").await.0,
        StatusCode::OK
    );

    let mut browser = cdp::Browser::launch(&bin).await;
    let tab = browser
        .open(&format!("http://{}/?refresh=1", gate.admin))
        .await;
    const ROWS: &str = "JSON.stringify({origin: performance.timeOrigin, scripts: document.scripts.length, \
        up: document.querySelector('.badge.up') && getComputedStyle(document.querySelector('.badge.up')).backgroundColor, \
        days: document.getElementById('days-left') && document.getElementById('days-left').textContent, \
        rows: [...document.querySelectorAll('#nodes tbody tr')].map(r => ({node: r.dataset.node, health: r.dataset.health, \
        drain: r.dataset.drain, rps: parseFloat(r.querySelector('.rps').textContent)}))})";
    let read = |v: serde_json::Value| -> serde_json::Value {
        serde_json::from_str(v.as_str().unwrap_or("null")).unwrap_or(serde_json::Value::Null)
    };
    let row = |v: &serde_json::Value, n: &str| -> serde_json::Value {
        v["rows"]
            .as_array()
            .and_then(|r| r.iter().find(|x| x["node"] == n).cloned())
            .unwrap_or_default()
    };
    // Both nodes up, a's traffic in requests/s, b drained and (after a quiet second) idle.
    let mut seen;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        seen = read(browser.eval(&tab, ROWS).await);
        let (ra, rb) = (row(&seen, "a"), row(&seen, "b"));
        if ra["health"] == "up"
            && rb["health"] == "up"
            && ra["rps"].as_f64().unwrap_or(0.0) > 0.0
            && rb["drain"] == "idle"
        {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the page never showed both nodes up, a's traffic and b idle: {seen}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(seen["scripts"], 0, "the page runs no script");
    assert_eq!(
        seen["up"], "rgb(215, 245, 221)",
        "the hashed stylesheet applies under the page's CSP"
    );
    assert!(
        seen["days"]
            .as_str()
            .unwrap()
            .trim()
            .parse::<i64>()
            .unwrap()
            > 300
    );
    let first_load = seen["origin"].as_f64().unwrap();

    // Kill a: the page, reloading itself, shows it down.
    a.kill().await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        seen = read(browser.eval(&tab, ROWS).await);
        if row(&seen, "a")["health"] == "down" {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the page never showed the killed node down: {seen}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        seen["origin"].as_f64().unwrap() > first_load,
        "the page was reloaded by itself (meta refresh), not by the test"
    );
    assert_eq!(row(&seen, "b")["health"], "up");
    browser.close().await;
    gate.stop().await;
}

#[test]
fn missing_chromium_fails_under_ci_and_skips_visibly_otherwise() {
    let run = |ci: Option<&str>| {
        support::run_test_child(
            "admin::chromium_probe_child",
            &[
                ("BPGATE_TEST_CHROMIUM", Some("/nonexistent/chromium")),
                ("BPGATE_CHROMIUM_PROBE_CHILD", Some("1")),
            ],
            ci,
        )
    };
    let out = run(Some("true"));
    assert!(
        !out.status.success(),
        "a missing browser must fail under CI=true"
    );
    let all = String::from_utf8_lossy(&out.stdout) + String::from_utf8_lossy(&out.stderr);
    assert!(all.contains("not installed under CI=true"), "{all}");
    let out = run(None);
    assert!(out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("SKIPPED: Chromium not found"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Only meaningful when started by the test above.
#[test]
#[ignore = "run by missing_chromium_fails_under_ci_and_skips_visibly_otherwise"]
fn chromium_probe_child() {
    if std::env::var("BPGATE_CHROMIUM_PROBE_CHILD").is_ok() {
        assert!(cdp::chromium_or_skip().is_none());
    }
}

/// Production mode refuses an admin listener off loopback without a token, like its other
/// posture refusals; `--allow-insecure` starts anyway, and a token makes it acceptable.
#[tokio::test]
async fn production_refuses_a_network_admin_listener_without_token() {
    init();
    let pki = Pki::new();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bpgate.toml");
    std::fs::write(
        &path,
        format!(
            "mode = \"production\"\n[listen]\nadmin = \"0.0.0.0:9901\"\n[tls]\ncert = {:?}\nkey = {:?}\n[audit]\ndir = {:?}\n[upstream]\nurls = [\"http://127.0.0.1:9\"]\n",
            pki.cert,
            pki.key,
            dir.path().join("audit")
        ),
    )
    .unwrap();
    let load = |token: Option<&str>| {
        let token = token.map(str::to_string);
        bpgate::config::load(
            &path,
            &move |k| (k == "BPGATE_ADMIN_TOKEN").then(|| token.clone()).flatten(),
            &Default::default(),
        )
        .unwrap()
    };
    let err = match bpgate::Gateway::start(load(None)) {
        Err(e) => e.to_string(),
        Ok(_) => panic!("production started with an open admin listener"),
    };
    assert!(
        err.contains("Admin API")
            && err.contains("BPGATE_ADMIN_TOKEN")
            && err.contains("--allow-insecure"),
        "{err}"
    );
    let mut insecure = load(None);
    insecure.allow_insecure = true;
    let gw = bpgate::Gateway::start(insecure).expect("--allow-insecure starts");
    gw.flush_audit();
    drop(gw);
    let gw = bpgate::Gateway::start(load(Some("0123456789abcdef0123456789abcdef")))
        .expect("a token makes a network admin listener acceptable");
    gw.flush_audit();
}
