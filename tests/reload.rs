//! Configuration reload through a real `POST /reload`: every key a reload applies changes what
//! clients (or the admin API) see, and every key that needs a restart is named by the report and
//! keeps its running value. The key lists come from the types (`reload::Live`,
//! `reload::RestartOnly`), so a new key without a test here fails.

use crate::support;

use std::path::PathBuf;
use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use serde_json::{json, Value};
use support::*;
use tokio_tungstenite::tungstenite::Message;

// === fixtures ===

/// What a test node's `/status` answers, and how slowly.
#[derive(Default)]
struct Knobs {
    status: AtomicU16,
    status_delay_ms: AtomicU64,
}

/// An echo node with `X-Powered-By: Express` on every answer, a controllable `/status`, `/bad`
/// (always 503), `/slow` (600 ms) and `/hold` (300 ms).
fn handler(k: Arc<Knobs>) -> Handler {
    let inner = echo();
    Arc::new(move |req: Request<Incoming>, cx: NodeCtx| {
        let (k, inner) = (k.clone(), inner.clone());
        Box::pin(async move {
            let answer = |code: u16| {
                Response::builder()
                    .status(code)
                    .body(full(Bytes::new()))
                    .unwrap()
            };
            match req.uri().path() {
                "/status" => {
                    let d = k.status_delay_ms.load(Ordering::Relaxed);
                    if d > 0 {
                        tokio::time::sleep(Duration::from_millis(d)).await;
                    }
                    return answer(match k.status.load(Ordering::Relaxed) {
                        0 => 200,
                        c => c,
                    });
                }
                "/bad" => return answer(503),
                "/slow" => tokio::time::sleep(Duration::from_millis(600)).await,
                "/hold" => tokio::time::sleep(Duration::from_millis(300)).await,
                _ => {}
            }
            let mut r = inner(req, cx).await;
            r.headers_mut()
                .insert("x-powered-by", "Express".parse().unwrap());
            r
        })
    })
}

async fn node(name: &str) -> (Node, Arc<Knobs>) {
    let k = Arc::new(Knobs::default());
    (Node::start(name, handler(k.clone())).await, k)
}

const QUIET: &str = "[health]\nenabled = false\n[shutdown]\ndrain_timeout = \"1s\"\n";

/// Fast checks of the test node's controllable `/status`, one result deciding either way.
const HEALTH: &str = "[health]\npath = \"/status\"\ninterval = \"100ms\"\nfall = 1\nrise = 1";

/// A gate whose configuration file the test rewrites and reloads.
struct Reloadable {
    gate: Gate,
    path: PathBuf,
    original: String,
}

impl Reloadable {
    async fn start(upstream: &str, toml: &str) -> Reloadable {
        Reloadable::start_with(upstream, &[toml]).await
    }

    /// The same with several fragments, later ones replacing earlier keys.
    async fn start_with(upstream: &str, tomls: &[&str]) -> Reloadable {
        let mut b = Gate::builder().upstream(upstream.to_string()).toml(QUIET);
        for t in tomls {
            b = b.toml(t);
        }
        let gate = b.start().await;
        let path = gate.dir.path().join("bpgate.toml");
        let original = std::fs::read_to_string(&path).unwrap();
        Reloadable {
            gate,
            path,
            original,
        }
    }

    /// Writes the original file with `fragment`'s keys replacing its own, reloads, and returns
    /// the report.
    async fn reload(&self, fragment: &str) -> Value {
        std::fs::write(&self.path, replace_keys(&self.original, fragment)).unwrap();
        let (s, body) = self.gate.admin_post("/reload").await;
        assert_eq!(s, StatusCode::OK, "{body}");
        serde_json::from_str(&body).unwrap()
    }

    /// Reloads and checks that the report names `key` among the applied keys and nothing as
    /// needing a restart.
    async fn apply(&self, key: &str, fragment: &str) {
        let r = self.reload(fragment).await;
        let applied = r["config"]["applied"].as_array().unwrap();
        assert!(
            applied.iter().any(|k| k == key),
            "{key} not reported applied: {r}"
        );
        assert_eq!(r["config"]["restart_required"], json!([]), "{r}");
    }

    async fn call(&self, req: http::request::Builder) -> Answer {
        Client::h1(&self.gate)
            .await
            .call(req.body(full(Bytes::new())).unwrap())
            .await
    }

    async fn get(&self, path: &str) -> Answer {
        self.call(get(path)).await
    }

    /// The first node as `GET /upstreams` shows it.
    async fn upstream(&self) -> Value {
        let (_, body) = self.gate.admin_get("/upstreams").await;
        serde_json::from_str::<Value>(&body).unwrap()["nodes"][0].clone()
    }

    /// Whether the node is healthy, as `GET /upstreams` says.
    async fn healthy(&self) -> bool {
        self.upstream().await["healthy"] == true
    }

    /// Polls `GET /upstreams` until the node's health is `want`.
    async fn until_healthy(&self, want: bool) -> bool {
        eventually_async(|| async { self.healthy().await == want }).await
    }

    /// Waits for `n` more health rounds to have finished (`last_check` moves on).
    async fn rounds(&self, n: usize) {
        for _ in 0..n {
            let seen = self.upstream().await["last_check"]["at_ms"].as_u64();
            assert!(
                eventually_async(|| async {
                    self.upstream().await["last_check"]["at_ms"].as_u64() > seen
                })
                .await,
                "no new health round: {}",
                self.upstream().await
            );
        }
    }
}

/// `base` with every key of `fragment` set to the fragment's value (tables merged key by key,
/// lists replaced, unlike `support::merge_toml` which appends arrays of tables).
fn replace_keys(base: &str, fragment: &str) -> String {
    fn merge(b: &mut toml::Table, f: toml::Table) {
        for (k, v) in f {
            match (b.get_mut(&k), v) {
                (Some(toml::Value::Table(bt)), toml::Value::Table(ft)) => merge(bt, ft),
                (_, v) => {
                    b.insert(k, v);
                }
            }
        }
    }
    let mut b: toml::Table = toml::from_str(base).unwrap();
    merge(&mut b, toml::from_str(fragment).unwrap());
    toml::to_string(&b).unwrap()
}

const APP: &str = "https://app.example.com";

fn preflight(method: &str, headers: Option<&str>) -> http::request::Builder {
    let r = get("/x")
        .method("OPTIONS")
        .header("origin", APP)
        .header("access-control-request-method", method);
    match headers {
        Some(h) => r.header("access-control-request-headers", h),
        None => r,
    }
}

// === every live key ===

/// Starts a gate for `key`, shows the behaviour before, reloads the key, shows it changed.
async fn observe(key: &str) {
    let (n, knobs) = node("n").await;
    match key {
        "upstream.urls" => {
            let (b, _) = node("b").await;
            let r = Reloadable::start(&n.url(), "").await;
            assert_eq!(r.get("/x").await.json()["node"], "n");
            r.apply(key, &format!("[upstream]\nurls = [\"{}\"]", b.url()))
                .await;
            assert_eq!(r.get("/x").await.json()["node"], "b");
        }
        "upstream.nodes" => {
            let (b, _) = node("b").await;
            let nodes = |wn: u32, wb: u32| {
                format!(
                    "[upstream]\nurls = []\nnodes = [{{ url = \"{}\", name = \"n\", weight = {wn} }}, {{ url = \"{}\", name = \"b\", weight = {wb} }}]\n",
                    n.url(),
                    b.url()
                )
            };
            let r = Reloadable::start(
                &n.url(),
                &format!("[sticky]\nfallback = \"load\"\n{}", nodes(1000, 1)),
            )
            .await;
            for _ in 0..10 {
                assert_eq!(r.get("/x").await.json()["node"], "n");
            }
            r.apply(key, &nodes(1, 1000)).await;
            for _ in 0..10 {
                assert_eq!(r.get("/x").await.json()["node"], "b", "reweighted");
            }
        }
        "upstream.connect_timeout" => {
            // A listener whose accept queue is full: connects to it hang (the SYN is dropped).
            let sock = tokio::net::TcpSocket::new_v4().unwrap();
            sock.bind("127.0.0.1:0".parse().unwrap()).unwrap();
            let full = sock.listen(0).unwrap();
            let addr = full.local_addr().unwrap();
            let mut held = Vec::new();
            for _ in 0..8 {
                match std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)) {
                    Ok(s) => held.push(s),
                    Err(_) => break,
                }
            }
            let r = Reloadable::start(
                &format!("http://{addr}"),
                "[upstream]\nconnect_timeout = \"60s\"",
            )
            .await;
            assert!(
                tokio::time::timeout(Duration::from_secs(1), r.get("/x"))
                    .await
                    .is_err(),
                "with 60 s the request is still connecting after 1 s"
            );
            r.apply(key, "[upstream]\nconnect_timeout = \"200ms\"")
                .await;
            let a = tokio::time::timeout(Duration::from_secs(10), r.get("/x"))
                .await
                .expect("with 200 ms the request is answered");
            assert_eq!(a.status, StatusCode::BAD_GATEWAY);
            drop((held, full));
        }
        "upstream.response_timeout" => {
            let r = Reloadable::start(&n.url(), "").await;
            assert_eq!(r.get("/slow").await.status, StatusCode::OK);
            r.apply(key, "[upstream]\nresponse_timeout = \"200ms\"")
                .await;
            assert_eq!(r.get("/slow").await.status, StatusCode::GATEWAY_TIMEOUT);
        }
        "upstream.timeouts" => {
            let r = Reloadable::start(&n.url(), "").await;
            assert_eq!(r.get("/slow").await.status, StatusCode::OK);
            r.apply(
                key,
                "[upstream]\ntimeouts = [{ prefix = \"/slow\", response_timeout = \"200ms\" }]",
            )
            .await;
            assert_eq!(r.get("/slow").await.status, StatusCode::GATEWAY_TIMEOUT);
            assert_eq!(r.get("/x").await.status, StatusCode::OK);
        }
        "routes" => {
            let r = Reloadable::start(&n.url(), "").await;
            assert_eq!(r.get("/slow").await.status, StatusCode::OK);
            let upload = || async {
                Client::h1(&r.gate)
                    .await
                    .call(post("/upload").body(full(vec![1u8; 4096])).unwrap())
                    .await
                    .status
            };
            assert_eq!(upload().await, StatusCode::OK);
            r.apply(
                key,
                "routes = [{ prefix = \"/slow\", response_timeout = \"200ms\" }, { prefix = \"/upload\", max_body = \"1k\" }]",
            )
            .await;
            assert_eq!(r.get("/slow").await.status, StatusCode::GATEWAY_TIMEOUT);
            assert_eq!(upload().await, StatusCode::PAYLOAD_TOO_LARGE);
        }
        "upstream.idle_timeout" => {
            let r = Reloadable::start(&n.url(), "[upstream]\nidle_timeout = \"60s\"").await;
            let opened = || n.accepted.load(Ordering::Relaxed);
            r.get("/x").await;
            let first = opened();
            tokio::time::sleep(Duration::from_millis(1300)).await;
            r.get("/x").await;
            assert_eq!(opened(), first, "idle 1.3 s < 60 s: reused");
            r.apply(key, "[upstream]\nidle_timeout = \"1s\"").await;
            tokio::time::sleep(Duration::from_millis(1300)).await;
            r.get("/x").await;
            assert_eq!(opened(), first + 1, "idle 1.3 s > 1 s: not reused");
        }
        "upstream.pool_max_idle" => {
            let r = Reloadable::start(&n.url(), "").await;
            let idle_after_four = || async {
                let four = (0..4).map(|_| r.get("/hold"));
                for a in futures_util::future::join_all(four).await {
                    assert_eq!(a.status, StatusCode::OK);
                }
                let mut idle = 0;
                // The last body's end returns its connection just after the client has it.
                for _ in 0..50 {
                    idle = r.upstream().await["idle_connections"].as_u64().unwrap();
                    if r.upstream().await["in_flight"] == 0 {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                idle
            };
            assert_eq!(idle_after_four().await, 4);
            r.apply(key, "[upstream]\npool_max_idle = 1").await;
            assert_eq!(idle_after_four().await, 1);
        }
        "upstream.tunnel_idle_timeout" => {
            let r = Reloadable::start(&n.url(), "").await;
            let ws = || async {
                let tls = tls_connect(&r.gate, &[b"http/1.1"]).await;
                let url = format!("wss://localhost:{}/socket.io/", r.gate.https.port());
                tokio_tungstenite::client_async(url, tls).await.unwrap().0
            };
            let mut before = ws().await;
            tokio::time::sleep(Duration::from_millis(800)).await;
            before.send(Message::text("still open")).await.unwrap();
            assert_eq!(
                before.next().await.unwrap().unwrap().into_text().unwrap(),
                "still open"
            );
            r.apply(key, "[upstream]\ntunnel_idle_timeout = \"300ms\"")
                .await;
            let mut after = ws().await;
            let end = tokio::time::timeout(Duration::from_secs(5), after.next())
                .await
                .expect("an idle tunnel is closed");
            assert!(
                !matches!(end, Some(Ok(Message::Text(_)))),
                "no message was sent, so none may arrive: {end:?}"
            );
        }
        "forwarding.trusted_proxies" => {
            let r = Reloadable::start(&n.url(), "").await;
            let real_ip = || async {
                r.call(get("/x").header("x-forwarded-for", "203.0.113.9"))
                    .await
                    .seen("x-real-ip")
            };
            assert_eq!(real_ip().await.as_deref(), Some("127.0.0.1"));
            r.apply(key, "[forwarding]\ntrusted_proxies = [\"127.0.0.1/32\"]")
                .await;
            assert_eq!(real_ip().await.as_deref(), Some("203.0.113.9"));
        }
        "cors.enabled" => {
            let r = Reloadable::start(&n.url(), "").await;
            let evil = || r.call(get("/x").header("origin", "https://evil.example.com"));
            assert_eq!(evil().await.status, StatusCode::FORBIDDEN);
            r.apply(key, "[cors]\nenabled = false").await;
            assert_eq!(evil().await.status, StatusCode::OK);
        }
        "cors.origins" => {
            let r = Reloadable::start(&n.url(), "").await;
            let app = || r.call(get("/x").header("origin", APP));
            assert_eq!(app().await.status, StatusCode::FORBIDDEN);
            r.apply(key, &format!("[cors]\norigins = [\"{APP}\"]"))
                .await;
            let a = app().await;
            assert_eq!(a.status, StatusCode::OK);
            assert_eq!(a.header("access-control-allow-origin"), Some(APP));
        }
        "cors.credentials" => {
            let r = Reloadable::start(&n.url(), &format!("[cors]\norigins = [\"{APP}\"]")).await;
            let app = || r.call(get("/x").header("origin", APP));
            assert_eq!(
                app().await.header("access-control-allow-credentials"),
                Some("true")
            );
            r.apply(key, "[cors]\ncredentials = false").await;
            assert_eq!(app().await.header("access-control-allow-credentials"), None);
        }
        "cors.methods" => {
            let r = Reloadable::start(&n.url(), &format!("[cors]\norigins = [\"{APP}\"]")).await;
            assert_eq!(
                r.call(preflight("PUT", None)).await.status,
                StatusCode::NO_CONTENT
            );
            r.apply(key, "[cors]\nmethods = [\"GET\", \"POST\"]").await;
            assert_eq!(
                r.call(preflight("PUT", None)).await.status,
                StatusCode::FORBIDDEN
            );
        }
        "cors.allow_headers" => {
            // The default reflects what an allowed origin asks for; a list pins them.
            let r = Reloadable::start(&n.url(), &format!("[cors]\norigins = [\"{APP}\"]")).await;
            let custom = || r.call(preflight("GET", Some("x-custom")));
            assert_eq!(custom().await.status, StatusCode::NO_CONTENT);
            r.apply(key, "[cors]\nallow_headers = [\"X-Other\"]").await;
            assert_eq!(custom().await.status, StatusCode::FORBIDDEN);
        }
        "cors.expose_headers" => {
            let r = Reloadable::start(&n.url(), &format!("[cors]\norigins = [\"{APP}\"]")).await;
            let app = || r.call(get("/x").header("origin", APP));
            assert_eq!(app().await.header("access-control-expose-headers"), None);
            r.apply(key, "[cors]\nexpose_headers = [\"X-Node\"]").await;
            assert_eq!(
                app().await.header("access-control-expose-headers"),
                Some("X-Node")
            );
        }
        "cors.max_age" => {
            let r = Reloadable::start(&n.url(), &format!("[cors]\norigins = [\"{APP}\"]")).await;
            let age = || async {
                r.call(preflight("GET", None))
                    .await
                    .header("access-control-max-age")
                    .map(str::to_string)
            };
            assert_eq!(age().await.as_deref(), Some("600"));
            r.apply(key, "[cors]\nmax_age = \"60s\"").await;
            assert_eq!(age().await.as_deref(), Some("60"));
        }
        "cors.reject_disallowed" => {
            let r = Reloadable::start(&n.url(), "").await;
            let evil = || r.call(get("/x").header("origin", "https://evil.example.com"));
            assert_eq!(evil().await.status, StatusCode::FORBIDDEN);
            r.apply(key, "[cors]\nreject_disallowed = false").await;
            let a = evil().await;
            assert_eq!(a.status, StatusCode::OK);
            assert_eq!(a.header("access-control-allow-origin"), None);
        }
        "headers.hsts" => {
            let r = Reloadable::start(&n.url(), "").await;
            let h = "strict-transport-security";
            assert_eq!(r.get("/x").await.header(h), Some("max-age=31536000"));
            r.apply(key, "[headers]\nhsts = \"max-age=60\"").await;
            assert_eq!(r.get("/x").await.header(h), Some("max-age=60"));
        }
        "headers.nosniff" => {
            let r = Reloadable::start(&n.url(), "").await;
            let h = "x-content-type-options";
            assert_eq!(r.get("/x").await.header(h), Some("nosniff"));
            r.apply(key, "[headers]\nnosniff = false").await;
            assert_eq!(r.get("/x").await.header(h), None);
        }
        "headers.referrer_policy" => {
            let r = Reloadable::start(&n.url(), "").await;
            let h = "referrer-policy";
            assert_eq!(
                r.get("/x").await.header(h),
                Some("strict-origin-when-cross-origin")
            );
            r.apply(key, "[headers]\nreferrer_policy = \"no-referrer\"")
                .await;
            assert_eq!(r.get("/x").await.header(h), Some("no-referrer"));
        }
        "headers.frame_ancestors" => {
            let r = Reloadable::start(&n.url(), "").await;
            let h = "content-security-policy";
            assert_eq!(r.get("/x").await.header(h), None);
            r.apply(key, "[headers]\nframe_ancestors = [\"'self'\"]")
                .await;
            assert_eq!(r.get("/x").await.header(h), Some("frame-ancestors 'self'"));
        }
        "headers.remove_powered_by" => {
            let r = Reloadable::start(&n.url(), "").await;
            assert_eq!(r.get("/x").await.header("x-powered-by"), None);
            r.apply(key, "[headers]\nremove_powered_by = false").await;
            assert_eq!(r.get("/x").await.header("x-powered-by"), Some("Express"));
        }
        "health.enabled" => {
            knobs.status.store(503, Ordering::Relaxed);
            let r = Reloadable::start(&n.url(), HEALTH).await;
            // A window of three intervals in which no check may run (only a regression could
            // be missed on a slow machine; the outcome never depends on it).
            tokio::time::sleep(Duration::from_millis(300)).await;
            assert!(r.healthy().await, "checks are off");
            r.apply(key, "[health]\nenabled = true").await;
            assert!(r.until_healthy(false).await);
        }
        "health.path" => {
            let r = Reloadable::start_with(&n.url(), &[HEALTH, "[health]\nenabled = true"]).await;
            assert!(r.until_healthy(true).await);
            r.rounds(2).await;
            assert!(r.healthy().await, "/status answers 200");
            r.apply(key, "[health]\npath = \"/bad\"").await;
            assert!(r.until_healthy(false).await);
        }
        "health.interval" => {
            // fall = 3: the round a reload triggers is one failure; two more need the new
            // interval (the old one sleeps a minute). Watched on the admin API: a request that
            // reaches the node would reset the failure count.
            let r = Reloadable::start_with(
                &n.url(),
                &[
                    HEALTH,
                    "[health]\nenabled = true\ninterval = \"60s\"\nfall = 3",
                ],
            )
            .await;
            assert!(r.until_healthy(true).await);
            knobs.status.store(503, Ordering::Relaxed);
            // A window in which the 60 s interval runs no round (only a regression could be
            // missed on a slow machine; the outcome never depends on it).
            tokio::time::sleep(Duration::from_millis(500)).await;
            assert!(r.healthy().await, "no round yet");
            r.apply(key, "[health]\ninterval = \"100ms\"").await;
            assert!(r.until_healthy(false).await, "{}", r.upstream().await);
        }
        "health.timeout" => {
            knobs.status_delay_ms.store(400, Ordering::Relaxed);
            let r = Reloadable::start_with(
                &n.url(),
                &[HEALTH, "[health]\nenabled = true\ntimeout = \"2s\""],
            )
            .await;
            assert!(r.until_healthy(true).await);
            r.rounds(2).await;
            assert!(r.healthy().await, "400 ms < 2 s");
            r.apply(key, "[health]\ntimeout = \"100ms\"").await;
            assert!(r.until_healthy(false).await);
        }
        "health.rise" => {
            knobs.status.store(503, Ordering::Relaxed);
            let r = Reloadable::start_with(
                &n.url(),
                &[HEALTH, "[health]\nenabled = true\nrise = 1000"],
            )
            .await;
            // A failed check first (before any, the node is pending, and a first check that
            // passes would bring it in by itself).
            assert!(
                eventually_async(|| async { r.upstream().await["last_check"]["ok"] == false })
                    .await
            );
            assert!(!r.healthy().await);
            knobs.status.store(200, Ordering::Relaxed);
            assert!(
                eventually_async(|| async { r.upstream().await["last_check"]["ok"] == true }).await
            );
            assert!(!r.healthy().await, "one good check is not 1000");
            r.apply(key, "[health]\nrise = 1").await;
            assert!(r.until_healthy(true).await);
        }
        "health.fall" => {
            // Passive ejection: connection failures from requests count toward `fall`. Active
            // rounds (a minute apart, and the one a reload triggers) find the node up.
            let r = Reloadable::start_with(
                &n.url(),
                &[
                    HEALTH,
                    "[health]\nenabled = true\ninterval = \"60s\"\nfall = 100",
                ],
            )
            .await;
            assert!(r.until_healthy(true).await);
            let port = n.kill().await;
            for _ in 0..3 {
                assert_eq!(r.get("/x").await.status, StatusCode::BAD_GATEWAY);
            }
            assert!(r.healthy().await, "3 failures < fall 100");
            let n = Node::start_on("n", port.listen(), handler(knobs.clone())).await;
            assert_eq!(r.get("/x").await.status, StatusCode::OK);
            let reloaded_at = bpgate::cluster::unix_ms();
            r.apply(key, "[health]\nfall = 1").await;
            // The round the reload triggers has run (and found the node up).
            assert!(
                eventually_async(|| async {
                    r.upstream().await["last_check"]["at_ms"]
                        .as_u64()
                        .is_some_and(|t| t >= reloaded_at)
                })
                .await
            );
            assert!(r.healthy().await);
            n.kill().await;
            // 502, or 503 when the ejection leaves no node to retry on.
            assert!(r.get("/x").await.status.is_server_error());
            let up = r.upstream().await;
            assert_eq!(up["healthy"], false, "the next failure ejects: {up}");
            assert_eq!(up["ejections"], 1, "{up}");
            return;
        }
        "audit.redact_query" => {
            let r = Reloadable::start(&n.url(), "").await;
            r.get("/before?secret2=abc").await;
            r.apply(key, "[audit]\nredact_query = [\"secret2\"]").await;
            r.get("/after?secret2=abc").await;
            let lines = r.gate.audit_lines();
            let query = |p: &str| {
                lines
                    .iter()
                    .find(|l| l["path"] == p)
                    .map(|l| l["query"].clone())
            };
            assert_eq!(query("/before"), Some(json!("secret2=abc")));
            assert_eq!(query("/after"), Some(json!("secret2=REDACTED")));
        }
        other => panic!("no reload test for the live key `{other}`: add one to tests/reload.rs"),
    }
    drop(n);
}

/// Polls an async condition for up to 20 s (every case runs at once on two threads).
async fn eventually_async<F, Fut>(f: F) -> bool
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        if f().await {
            return true;
        }
        if tokio::time::Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// One case per key of `reload::Live`, concurrently (`RELOAD_KEY=health.fall` runs one).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_live_key_changes_behaviour_through_a_reload() {
    init();
    let (live, _) = bpgate::reload::split(bpgate::config::Config::default());
    let keys = bpgate::reload::keys(&live);
    assert!(keys.len() > 20, "{keys:?}");
    // A few at a time: the cases wait on timers, not on the CPU.
    let limit = Arc::new(tokio::sync::Semaphore::new(6));
    let mut tasks = Vec::new();
    for k in keys {
        if std::env::var("RELOAD_KEY").is_ok_and(|only| only != k) {
            continue;
        }
        let limit = limit.clone();
        let key = k.clone();
        tasks.push((
            k,
            tokio::spawn(async move {
                let _p = limit.acquire().await;
                if tokio::time::timeout(Duration::from_secs(60), observe(&key))
                    .await
                    .is_err()
                {
                    panic!("did not finish in 60 s");
                }
            }),
        ));
    }
    let mut failed = Vec::new();
    for (k, t) in tasks {
        if let Err(e) = t.await {
            let msg = e
                .try_into_panic()
                .ok()
                .and_then(|p| {
                    p.downcast_ref::<String>()
                        .cloned()
                        .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                })
                .unwrap_or_default();
            failed.push(format!("{k}: {msg}"));
        }
    }
    assert!(failed.is_empty(), "\n{}", failed.join("\n"));
}

// === every restart-only key ===

/// A changed value for each restart-only key (valid, so the reload itself succeeds).
fn restart_fragment(key: &str) -> &'static str {
    match key {
        "mode" => "mode = \"production\"",
        "external_url" => "external_url = \"https://bot.example.com\"",
        "workers" => "workers = 3",
        "listen.https" => "[listen]\nhttps = \"127.0.0.1:18443\"",
        "listen.http" => "[listen]\nhttp = \"127.0.0.1:18080\"",
        "listen.admin" => "[listen]\nadmin = \"127.0.0.1:19901\"",
        "tls.cert" => "[tls]\ncert = \"/nonexistent/cert.pem\"",
        "tls.key" => "[tls]\nkey = \"/nonexistent/key.pem\"",
        "tls.handshake_timeout" => "[tls]\nhandshake_timeout = \"5s\"",
        "tls.session_timeout" => "[tls]\nsession_timeout = \"1m\"",
        "tls.reload_interval" => "[tls]\nreload_interval = \"10s\"",
        "limits.max_body" => "[limits]\nmax_body = \"1k\"",
        "limits.max_header_bytes" => "[limits]\nmax_header_bytes = \"32k\"",
        "limits.header_read_timeout" => "[limits]\nheader_read_timeout = \"5s\"",
        "limits.keepalive_timeout" => "[limits]\nkeepalive_timeout = \"30s\"",
        "limits.lingering_time" => "[limits]\nlingering_time = \"10s\"",
        "limits.lingering_timeout" => "[limits]\nlingering_timeout = \"2s\"",
        "limits.lingering_size" => "[limits]\nlingering_size = \"1m\"",
        "limits.max_connections" => "[limits]\nmax_connections = 5",
        "limits.h2_max_concurrent_streams" => "[limits]\nh2_max_concurrent_streams = 64",
        "shutdown.drain_timeout" => "[shutdown]\ndrain_timeout = \"5s\"",
        "log.filter" => "[log]\nfilter = \"debug\"",
        "log.format" => "[log]\nformat = \"json\"",
        "base_path.path" => "[base_path]\npath = \"/botpress\"",
        "base_path.mode" => "[base_path]\nmode = \"strip\"",
        "sticky.enabled" => "[sticky]\nenabled = false",
        "sticky.cookie_name" => "[sticky]\ncookie_name = \"other_cookie\"",
        "sticky.secret" => "[sticky]\nsecret = \"0123456789abcdef0123\"",
        "sticky.previous_secret" => "[sticky]\nprevious_secret = \"0123456789abcdef0123\"",
        "sticky.max_age" => "[sticky]\nmax_age = \"2h\"",
        "sticky.http_only" => "[sticky]\nhttp_only = false",
        // Browsers refuse SameSite=None without Secure, so the pair changes together.
        "sticky.secure" => "[sticky]\nsecure = false\nsame_site = \"Lax\"",
        "sticky.same_site" => "[sticky]\nsame_site = \"Lax\"",
        "sticky.domain" => "[sticky]\ndomain = \"example.com\"",
        "sticky.fallback" => "[sticky]\nfallback = \"client-ip\"",
        "sticky.sid_map_max_entries" => "[sticky]\nsid_map_max_entries = 10",
        "sticky.sid_map_idle_timeout" => "[sticky]\nsid_map_idle_timeout = \"10m\"",
        "audit.enabled" => "[audit]\nenabled = false",
        "audit.dir" => "[audit]\ndir = \"/nonexistent/audit\"",
        "audit.rotation" => "[audit]\nrotation = \"hourly\"",
        "audit.max_size" => "[audit]\nmax_size = \"1m\"",
        "audit.max_files" => "[audit]\nmax_files = 5",
        "audit.stdout" => "[audit]\nstdout = true",
        "audit.on_failure" => "[audit]\non_failure = \"continue\"",
        "audit.jwt_secret" => "[audit]\njwt_secret = \"another-app-secret\"",
        "audit.jwt_source" => "[audit]\njwt_source = \"cookie\"",
        // External-auth settings are refused without a key, so each comes with one.
        "audit.external_auth.public_key" => {
            "[audit.external_auth]\npublic_key = \"end-user-secret\""
        }
        "audit.external_auth.public_key_file" => concat!(
            "[audit.external_auth]\npublic_key_file = \"",
            env!("CARGO_MANIFEST_DIR"),
            "/Cargo.toml\""
        ),
        "audit.external_auth.algorithms" => {
            "[audit.external_auth]\npublic_key = \"k\"\nalgorithms = [\"HS512\"]"
        }
        "audit.external_auth.issuer" => {
            "[audit.external_auth]\npublic_key = \"k\"\nissuer = \"shop\""
        }
        "audit.external_auth.audience" => {
            "[audit.external_auth]\npublic_key = \"k\"\naudience = \"webchat\""
        }
        "audit.external_auth.user_claims" => {
            "[audit.external_auth]\npublic_key = \"k\"\nuser_claims = [\"userId\"]"
        }
        "audit.queue" => "[audit]\nqueue = 2048",
        "audit.flush_interval" => "[audit]\nflush_interval = \"10ms\"",
        "audit.durability" => "[audit]\ndurability = \"batched\"",
        "admin.token" => "[admin]\ntoken = \"a-new-admin-token-0123456789\"",
        "admin.drain_idle_after" => "[admin]\ndrain_idle_after = \"30s\"",
        other => panic!(
            "no reload test for the restart-only key `{other}`: add a value to tests/reload.rs"
        ),
    }
}

#[tokio::test]
async fn every_restart_only_key_is_named_and_keeps_its_running_value() {
    init();
    let (n, _) = node("n").await;
    let r = Reloadable::start(&n.url(), "").await;
    let mut config = bpgate::config::Config::default();
    // Left out of the serialised form while unset.
    config.sticky.domain = Some("example.org".into());
    let (_, restart) = bpgate::reload::split(config);
    let keys = bpgate::reload::keys(&restart);
    assert!(keys.len() > 30, "{keys:?}");
    for key in &keys {
        let report = r.reload(restart_fragment(key)).await;
        let named = report["config"]["restart_required"].as_array().unwrap();
        assert!(
            named.iter().any(|k| k == key),
            "{key} not reported as needing a restart: {report}"
        );
        assert_eq!(report["config"]["applied"], json!([]), "{key}: {report}");
        assert_eq!(report["config"]["ok"], true, "{key}: {report}");
    }
    // The running values stay: a body over the reloaded 1k limit passes, the cookie keeps its
    // name.
    r.reload("[limits]\nmax_body = \"1k\"\n[sticky]\ncookie_name = \"other_cookie\"")
        .await;
    let mut c = Client::h1(&r.gate).await;
    let a = c
        .call(post("/x").body(full(vec![7u8; 4096])).unwrap())
        .await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.json()["body_len"], 4096);
    assert!(
        a.header("set-cookie")
            .is_some_and(|c| c.starts_with("bpgate_node=")),
        "{:?}",
        a.header("set-cookie")
    );
    let (_, ready) = r.gate.admin_get("/readyz").await;
    let ready: Value = serde_json::from_str(&ready).unwrap();
    assert_eq!(ready["generation"], 1, "nothing live changed: {ready}");
}

#[tokio::test]
async fn a_reload_that_changes_a_live_key_publishes_the_next_generation() {
    init();
    let (n, _) = node("n").await;
    let r = Reloadable::start(&n.url(), "").await;
    let generation = || async {
        let (_, body) = r.gate.admin_get("/readyz").await;
        serde_json::from_str::<Value>(&body).unwrap()["generation"].clone()
    };
    assert_eq!(generation().await, 1);
    let report = r.reload("[headers]\nhsts = \"max-age=60\"").await;
    assert_eq!(report["config"]["generation"], 2, "{report}");
    assert_eq!(generation().await, 2);
    // The same file again: nothing changed, nothing published.
    let report = r.reload("[headers]\nhsts = \"max-age=60\"").await;
    assert_eq!(report["config"]["applied"], json!([]), "{report}");
    assert_eq!(generation().await, 2);
}
