//! Cluster routing against fake Botpress nodes that behave like engine.io polling: a node hands
//! out a session id on the first request and answers 400 "Session ID unknown" to any id it did
//! not issue.

use crate::support;

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use support::*;

/// The engine.io protocol flavours a client may speak, and how the node frames its handshake
/// answer for each (engine.io's `lib/transports/polling*.ts` and its v3 parser).
#[derive(Clone, Copy, Debug, PartialEq)]
enum Eio {
    /// `0{"sid":…}` (socket.io 3/4 clients).
    V4,
    /// `<len>:0{…}2:40` (socket.io 2 with `b64=1`).
    V3Text,
    /// 0x00, length digits as bytes, 0xff, packet (socket.io 2 over XHR2), sent in two chunks.
    V3Binary,
    /// `___eio[N]("…");` (socket.io 2 JSONP polling).
    Jsonp,
}

impl Eio {
    const ALL: [Eio; 4] = [Eio::V4, Eio::V3Text, Eio::V3Binary, Eio::Jsonp];

    fn query(self) -> &'static str {
        match self {
            Eio::V4 => "EIO=4&transport=polling",
            Eio::V3Text => "EIO=3&transport=polling&b64=1",
            Eio::V3Binary => "EIO=3&transport=polling",
            Eio::Jsonp => "EIO=3&transport=polling&j=2",
        }
    }

    fn of(query: &str) -> Eio {
        let has = |kv: &str| query.split('&').any(|x| x == kv);
        if has("EIO=4") {
            Eio::V4
        } else if query.split('&').any(|x| x.starts_with("j=")) {
            Eio::Jsonp
        } else if has("b64=1") {
            Eio::V3Text
        } else {
            Eio::V3Binary
        }
    }

    /// The handshake answer's body chunks for session `sid`.
    fn handshake(self, sid: &str) -> Vec<Vec<u8>> {
        let open = format!(
            r#"0{{"sid":"{sid}","upgrades":["websocket"],"pingInterval":25000,"pingTimeout":{}{}}}"#,
            if self == Eio::V4 { 20000 } else { 5000 },
            if self == Eio::V4 {
                r#","maxPayload":1000000"#
            } else {
                ""
            }
        );
        let text3 = format!("{}:{open}2:40", open.len());
        match self {
            Eio::V4 => vec![open.into_bytes()],
            Eio::V3Text => vec![text3.into_bytes()],
            Eio::Jsonp => {
                vec![format!("___eio[2]({});", serde_json::to_string(&text3).unwrap()).into_bytes()]
            }
            Eio::V3Binary => {
                let mut b = Vec::new();
                for p in [open.as_str(), "40"] {
                    b.push(0u8);
                    b.extend(p.len().to_string().bytes().map(|d| d - b'0'));
                    b.push(0xff);
                    b.extend_from_slice(p.as_bytes());
                }
                // Split inside the sid: the gate must put the two frames together.
                let cut = b.windows(6).position(|w| w == b"\"sid\":").unwrap() + 10;
                let tail = b.split_off(cut);
                vec![b, tail]
            }
        }
    }

    /// The session id in a handshake answer, read the way a client does.
    fn sid_of(self, body: &[u8]) -> Option<String> {
        let text = match self {
            Eio::Jsonp => {
                let t = std::str::from_utf8(body).ok()?;
                let inner = t.strip_prefix("___eio[2](")?.strip_suffix(");")?;
                serde_json::from_str::<String>(inner).ok()?
            }
            _ => String::from_utf8_lossy(body).into_owned(),
        };
        let at = text.find(r#""sid":""#)? + 7;
        let len = text[at..].find('"')?;
        Some(text[at..at + len].to_string())
    }
}

/// engine.io's session ids: 15 random bytes, base64 with `/` → `_` and `+` → `-`.
fn new_sid() -> String {
    const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    (0..20).map(|_| A[fastrand::usize(..64)] as char).collect()
}

/// An engine.io-like node: a polling handshake opens a session (framed as the client's protocol
/// version asks), a request naming a session it did not open is answered 400 "Session ID
/// unknown", a close packet (`POST` body `1`) ends a session, and a WebSocket upgrade naming an
/// unknown session is refused too.
fn engine_io() -> Handler {
    let sessions: Arc<Mutex<HashSet<String>>> = Arc::default();
    Arc::new(move |req: Request<Incoming>, cx: NodeCtx| {
        let sessions = sessions.clone();
        Box::pin(async move {
            let q = req.uri().query().unwrap_or("").to_string();
            let sid = q
                .split('&')
                .find_map(|kv| kv.strip_prefix("sid="))
                .map(str::to_string);
            let known = sid
                .as_ref()
                .is_some_and(|s| sessions.lock().unwrap().contains(s));
            let cookie_leaked = req
                .headers()
                .get_all("cookie")
                .iter()
                .any(|v| String::from_utf8_lossy(v.as_bytes()).contains("bpgate_node"));
            let unknown = || {
                Response::builder()
                    .status(StatusCode::BAD_REQUEST)
                    .header("x-node", cx.name.as_str())
                    .body(full(r#"{"code":1,"message":"Session ID unknown"}"#))
                    .unwrap()
            };
            if req.headers().get("upgrade").is_some() {
                if sid.is_some() && !known {
                    return unknown();
                }
                let mut r = ws_echo(req);
                r.headers_mut().insert("x-node", cx.name.parse().unwrap());
                return r;
            }
            if cookie_leaked {
                return Response::builder()
                    .status(StatusCode::IM_A_TEAPOT)
                    .body(full("sticky cookie reached the node"))
                    .unwrap();
            }
            match sid {
                None => {
                    let id = new_sid();
                    sessions.lock().unwrap().insert(id.clone());
                    let eio = Eio::of(&q);
                    let chunks = eio.handshake(&id);
                    let ct = if eio == Eio::V3Binary {
                        "application/octet-stream"
                    } else {
                        "text/plain; charset=UTF-8"
                    };
                    let stream = futures_util::stream::unfold(chunks.into_iter(), |mut it| async {
                        let c = it.next()?;
                        tokio::task::yield_now().await;
                        Some((
                            Ok::<_, Box<dyn std::error::Error + Send + Sync>>(
                                hyper::body::Frame::data(Bytes::from(c)),
                            ),
                            it,
                        ))
                    });
                    Response::builder()
                        .header("content-type", ct)
                        .header("x-node", cx.name.as_str())
                        .body(http_body_util::BodyExt::boxed(
                            http_body_util::StreamBody::new(stream),
                        ))
                        .unwrap()
                }
                Some(_) if !known => unknown(),
                Some(s) => {
                    let post = req.method() == http::Method::POST;
                    let body = http_body_util::BodyExt::collect(req.into_body())
                        .await
                        .map(|b| b.to_bytes())
                        .unwrap_or_default();
                    if post && body.ends_with(b"1") {
                        sessions.lock().unwrap().remove(&s);
                    }
                    Response::builder()
                        .header("x-node", cx.name.as_str())
                        .body(full(if post { "ok" } else { "6" }))
                        .unwrap()
                }
            }
        })
    })
}

/// A browser or socket.io client: one connection, a cookie jar for bpgate's cookie (or none),
/// and an engine.io session.
struct Browser {
    client: Client,
    cookie: Option<String>,
    sid: Option<String>,
    keep_cookies: bool,
    eio: Eio,
}

struct Poll {
    status: StatusCode,
    node: String,
    set_cookie: bool,
}

impl Browser {
    async fn new(gate: &Gate, ip: Option<IpAddr>, keep_cookies: bool) -> Browser {
        Browser::speaking(gate, ip, keep_cookies, Eio::V4).await
    }

    async fn speaking(gate: &Gate, ip: Option<IpAddr>, keep_cookies: bool, eio: Eio) -> Browser {
        let tls = tls_connect_from(gate, &[b"http/1.1"], ip).await;
        Browser {
            client: Client::over(tls).await,
            cookie: None,
            sid: None,
            keep_cookies,
            eio,
        }
    }

    async fn poll(&mut self) -> Poll {
        self.request("GET", "").await
    }

    async fn request(&mut self, method: &str, body: &'static str) -> Poll {
        let mut path = format!("/socket.io/?{}&t=P{}", self.eio.query(), fastrand::u32(..));
        if let Some(s) = &self.sid {
            path.push_str("&sid=");
            path.push_str(s);
        }
        let mut b = get(&path).method(method);
        if let Some(c) = &self.cookie {
            b = b.header("cookie", format!("other=1; {c}"));
        }
        let a = self.client.call(b.body(full(body)).unwrap()).await;
        let set = a.headers.get_all("set-cookie").iter().find_map(|v| {
            let s = v.to_str().ok()?;
            s.starts_with("bpgate_node=")
                .then(|| s.split(';').next().unwrap().to_string())
        });
        let set_cookie = set.is_some();
        if self.keep_cookies {
            if let Some(c) = set {
                self.cookie = Some(c);
            }
        }
        if a.status == StatusCode::OK && self.sid.is_none() {
            self.sid = self.eio.sid_of(&a.body);
            assert!(self.sid.is_some(), "no sid in {:?}", a.body);
        }
        if a.status != StatusCode::OK {
            // engine.io reconnects with a new handshake.
            self.sid = None;
        }
        Poll {
            status: a.status,
            node: a.header("x-node").unwrap_or("").to_string(),
            set_cookie,
        }
    }
}

async fn cluster(n: usize, toml: &str) -> (Vec<Node>, Gate) {
    init();
    let mut nodes = Vec::new();
    for i in 0..n {
        nodes.push(Node::start(&format!("node-{i}"), engine_io()).await);
    }
    let mut b = Gate::builder().toml("[sticky]\nsecret = \"a-shared-secret-of-some-length\"\n[health]\ninterval = \"200ms\"\ntimeout = \"5s\"\nrise = 1\nfall = 1").toml(toml);
    for (i, node) in nodes.iter().enumerate() {
        b = b.toml(&format!(
            "[[upstream.nodes]]\nurl = \"{}\"\nname = \"node-{i}\"",
            node.url()
        ));
    }
    let gate = b.toml("[upstream]\nurls = []").start().await;
    (nodes, gate)
}

fn ip(i: usize) -> Option<IpAddr> {
    Some(IpAddr::from([
        127,
        0,
        1 + (i / 200) as u8,
        10 + (i % 200) as u8,
    ]))
}

#[tokio::test]
async fn fifty_browsers_fifty_polls_all_succeed_and_spread() {
    let (_nodes, gate) = cluster(3, "").await;
    let mut tasks = Vec::new();
    for i in 0..50 {
        let mut b = Browser::new(&gate, ip(i), true).await;
        tasks.push(tokio::spawn(async move {
            let mut seen = HashSet::new();
            for _ in 0..50 {
                let p = b.poll().await;
                assert_eq!(p.status, StatusCode::OK, "a poll failed on {}", p.node);
                seen.insert(p.node);
            }
            assert_eq!(seen.len(), 1, "a browser moved between nodes: {seen:?}");
            seen.into_iter().next().unwrap()
        }));
    }
    let mut per_node: HashMap<String, usize> = HashMap::new();
    for t in tasks {
        *per_node.entry(t.await.unwrap()).or_default() += 1;
    }
    assert_eq!(
        per_node.len(),
        3,
        "new sessions must reach every node: {per_node:?}"
    );
    assert!(per_node.values().all(|n| *n >= 5), "{per_node:?}");
    gate.stop().await;
}

#[tokio::test]
async fn cookie_refusing_browser_stays_put_by_client_ip() {
    // The option: client-IP rendezvous alone (the session-id map off).
    let (_nodes, gate) = cluster(
        3,
        "[sticky]\nfallback = \"client-ip\"\nsid_map_max_entries = 0",
    )
    .await;
    let mut b = Browser::new(&gate, ip(7), false).await;
    let first = b.poll().await;
    for _ in 0..30 {
        let p = b.poll().await;
        assert_eq!(p.status, StatusCode::OK);
        assert_eq!(p.node, first.node);
    }
    gate.stop().await;
}

/// Whether the gate currently takes the node `name` as healthy.
fn healthy(gate: &Gate, name: &str) -> bool {
    gate.gw
        .current()
        .nodes
        .nodes
        .iter()
        .any(|n| &*n.name == name && n.is_healthy())
}

#[tokio::test]
async fn dead_node_clients_are_repinned_and_a_restarted_node_gets_new_sessions() {
    let (mut nodes, gate) = cluster(3, "").await;
    let mut browsers = Vec::new();
    for i in 0..30 {
        let mut b = Browser::new(&gate, ip(i), true).await;
        let p = b.poll().await;
        assert_eq!(p.status, StatusCode::OK);
        browsers.push((p.node, b));
    }
    let victim = nodes.remove(0);
    let victim_name = victim.name.clone();
    let on_victim = browsers.iter().filter(|(n, _)| *n == victim_name).count();
    assert!(
        on_victim > 0 && on_victim < browsers.len(),
        "new sessions spread over the nodes: {on_victim} of 30 on {victim_name}"
    );
    let port = victim.kill().await;
    assert!(
        eventually(Duration::from_secs(20), || !healthy(&gate, &victim_name)).await,
        "a health check took the dead node out"
    );
    let failover_before = gate
        .gw
        .shared()
        .cluster
        .stats
        .failover
        .load(std::sync::atomic::Ordering::Relaxed);
    // Clients of the surviving nodes: nothing changes, not one failed poll.
    for (node, b) in browsers.iter_mut().filter(|(n, _)| *n != victim_name) {
        for _ in 0..4 {
            let p = b.poll().await;
            assert_eq!(
                (p.status, p.node.as_str()),
                (StatusCode::OK, node.as_str()),
                "a client of a surviving node moved or failed"
            );
        }
    }
    // Clients pinned to the dead node: re-pinned to a survivor, where the old engine.io session
    // is unknown (one 400, as behind NGINX), then a new session that stays there.
    for (_, b) in browsers.iter_mut().filter(|(n, _)| *n == victim_name) {
        let p = b.poll().await;
        assert_eq!(
            p.status,
            StatusCode::BAD_REQUEST,
            "the old session is unknown on {}",
            p.node
        );
        assert!(p.set_cookie, "a failover re-issues the cookie");
        let new_node = p.node;
        assert_ne!(new_node, victim_name);
        for _ in 0..3 {
            let p = b.poll().await;
            assert_eq!(
                (p.status, p.node.as_str()),
                (StatusCode::OK, new_node.as_str()),
                "a re-pinned browser stays on its new node"
            );
        }
    }
    let failover = gate
        .gw
        .shared()
        .cluster
        .stats
        .failover
        .load(std::sync::atomic::Ordering::Relaxed)
        - failover_before;
    assert_eq!(
        failover, on_victim as u64,
        "one failover per client of the dead node, none for the others"
    );

    // The node comes back on the same address: after `rise` checks it takes new sessions.
    let _back = Node::start_on(&victim_name, port.listen(), engine_io()).await;
    assert!(
        eventually(Duration::from_secs(20), || healthy(&gate, &victim_name)).await,
        "the restarted node passed a health check"
    );
    let mut landed = HashSet::new();
    for i in 100..160 {
        let mut b = Browser::new(&gate, ip(i), true).await;
        landed.insert(b.poll().await.node);
    }
    assert!(
        landed.contains(&victim_name),
        "the restarted node got no new session: {landed:?}"
    );
    gate.stop().await;
}

#[tokio::test]
async fn drain_keeps_pinned_clients_and_stops_new_sessions() {
    let (_nodes, gate) = cluster(2, "[sticky]\nfallback = \"load\"").await;
    let mut pinned = Browser::new(&gate, None, true).await;
    let node = pinned.poll().await.node;
    let (s, _) = gate.admin_post(&format!("/upstreams/{node}/drain")).await;
    assert_eq!(s, StatusCode::OK);
    let (_, view) = gate.admin_get("/upstreams").await;
    assert!(view.contains("\"draining\""), "{view}");
    for _ in 0..10 {
        let p = pinned.poll().await;
        assert_eq!((p.status, p.node.as_str()), (StatusCode::OK, node.as_str()));
    }
    for _ in 0..20 {
        let mut b = Browser::new(&gate, None, true).await;
        assert_ne!(
            b.poll().await.node,
            node,
            "a drained node got a new session"
        );
    }
    gate.admin_post(&format!("/upstreams/{node}/undrain")).await;
    let mut got = false;
    for _ in 0..40 {
        let mut b = Browser::new(&gate, None, true).await;
        got |= b.poll().await.node == node;
    }
    assert!(got, "an undrained node must get new sessions again");
    assert_eq!(
        gate.admin_post("/upstreams/nope/drain").await.0,
        StatusCode::NOT_FOUND
    );
    gate.stop().await;
}

#[tokio::test]
async fn forged_expired_and_garbled_cookies_are_a_new_pin() {
    let (_nodes, gate) = cluster(2, "").await;
    let mut b = Browser::new(&gate, None, true).await;
    b.poll().await;
    let good = b.cookie.clone().unwrap();
    let value = good.trim_start_matches("bpgate_node=").to_string();
    let mut tampered = value.clone().into_bytes();
    tampered[20] = if tampered[20] == b'A' { b'B' } else { b'A' };
    let other = bpgate::cluster::StickyCodec::new(
        b"some-other-secret-entirely",
        None,
        "bpgate_node",
        "/",
        86_400,
    );
    let foreign = other.seal(
        other.current().node_id("node-0"),
        bpgate::cluster::unix_now(),
    );
    let ours = bpgate::cluster::StickyCodec::new(
        b"a-shared-secret-of-some-length",
        None,
        "bpgate_node",
        "/",
        86_400,
    );
    let expired = ours.seal(
        ours.current().node_id("node-0"),
        bpgate::cluster::unix_now() - 2 * 86_400,
    );
    for bad in [
        String::from_utf8(tampered).unwrap(),
        "garbage".to_string(),
        foreign,
        expired,
    ] {
        let mut c = Browser::new(&gate, None, true).await;
        c.cookie = Some(format!("bpgate_node={bad}"));
        let p = c.poll().await;
        assert_eq!(p.status, StatusCode::OK, "a bad cookie is no error");
        assert!(p.set_cookie, "a bad cookie gets a new pin");
    }
    let mut c = Browser::new(&gate, None, true).await;
    c.cookie = Some(good);
    assert!(!c.poll().await.set_cookie, "a good cookie is not re-issued");
    gate.stop().await;
}

#[tokio::test]
async fn two_replicas_with_one_secret_agree_and_websocket_follows_the_pin() {
    init();
    let n0 = Node::start("node-0", engine_io()).await;
    let n1 = Node::start("node-1", engine_io()).await;
    let conf = format!(
        "[sticky]\nsecret = \"a-shared-secret-of-some-length\"\nfallback = \"load\"\n[upstream]\nurls = []\n[[upstream.nodes]]\nurl = \"{}\"\nname = \"node-0\"\n[[upstream.nodes]]\nurl = \"{}\"\nname = \"node-1\"",
        n0.url(),
        n1.url()
    );
    // The replica lists the nodes in the other order: ids come from names, not positions.
    let conf_b = format!(
        "[sticky]\nsecret = \"a-shared-secret-of-some-length\"\nfallback = \"load\"\n[upstream]\nurls = []\n[[upstream.nodes]]\nurl = \"{}\"\nname = \"node-1\"\n[[upstream.nodes]]\nurl = \"{}\"\nname = \"node-0\"",
        n1.url(),
        n0.url()
    );
    let a = Gate::builder().toml(&conf).start().await;
    let b = Gate::builder().toml(&conf_b).start().await;
    for _ in 0..10 {
        let mut on_a = Browser::new(&a, None, true).await;
        let node = on_a.poll().await.node;
        let mut on_b = Browser::new(&b, None, true).await;
        on_b.cookie = on_a.cookie.clone();
        on_b.sid = on_a.sid.clone();
        let p = on_b.poll().await;
        assert_eq!((p.status, p.node.as_str()), (StatusCode::OK, node.as_str()));

        // The WebSocket upgrade with that cookie lands on the same node.
        let tls = tls_connect(&b, &[b"http/1.1"]).await;
        let mut req =
            tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(
                format!(
                    "wss://localhost:{}/socket.io/?EIO=4&transport=websocket",
                    b.https.port()
                ),
            )
            .unwrap();
        req.headers_mut()
            .insert("cookie", on_a.cookie.clone().unwrap().parse().unwrap());
        let (_ws, resp) = tokio_tungstenite::client_async(req, tls).await.unwrap();
        assert_eq!(resp.headers()["x-node"], node.as_str());
    }
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn all_nodes_down_is_503_with_retry_after() {
    let (nodes, gate) = cluster(2, "").await;
    assert!(eventually(Duration::from_secs(5), || gate.gw.ready()).await);
    for n in nodes {
        n.kill().await;
    }
    assert!(
        eventually(Duration::from_secs(5), || gate.gw.current().nodes.panic()).await,
        "every node failed its checks"
    );
    // Panic mode routes to every node anyway; none answers, so the cluster is down: 503.
    let mut c = Client::h1(&gate).await;
    let a = c.get("/x").await;
    assert_eq!(a.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(a.header("retry-after").is_some());
    let lines = gate.audit_lines();
    assert_eq!(lines.last().unwrap()["outcome"], "no_upstream");
    gate.stop().await;
}

#[tokio::test]
async fn connect_failure_is_retried_on_another_node() {
    init();
    let live = Node::start("live", echo()).await;
    let dead = dead_addr().await;
    let gate = Gate::builder()
        .toml(&format!(
            "[health]\nenabled = false\n[sticky]\nfallback = \"load\"\n[upstream]\nurls = [\"http://{dead}\", \"{}\"]",
            live.url()
        ))
        .start()
        .await;
    for _ in 0..20 {
        let mut c = Client::h1(&gate).await;
        let a = c.call(post("/x").body(full("payload")).unwrap()).await;
        assert_eq!(
            a.status,
            StatusCode::OK,
            "a POST that never reached a node is retried"
        );
        assert_eq!(a.json()["body_len"], 7);
    }
    gate.stop().await;
}

#[tokio::test]
async fn the_101_of_a_new_visitor_carries_the_sticky_cookie() {
    let (_nodes, gate) = cluster(2, "").await;
    let tls = tls_connect(&gate, &[b"http/1.1"]).await;
    let (_ws, resp) = tokio_tungstenite::client_async(
        format!(
            "wss://localhost:{}/socket.io/?EIO=4&transport=websocket",
            gate.https.port()
        ),
        tls,
    )
    .await
    .unwrap();
    assert_eq!(resp.status(), StatusCode::SWITCHING_PROTOCOLS);
    let cookie = resp
        .headers()
        .get("set-cookie")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    assert!(
        cookie.starts_with("bpgate_node=")
            && cookie.contains("; SameSite=None")
            && cookie.contains("; Secure")
            && cookie.ends_with("; Partitioned"),
        "{cookie}"
    );
    drop(_ws);
    gate.stop().await;
}

/// Health checks off (every node taken as healthy), for tests about placement, not failover.
const NO_CHECKS: &str = "[health]\nenabled = false";

/// A metric's value in `/metrics` (the first series whose name and labels start as given).
async fn metric(gate: &Gate, series: &str) -> f64 {
    let (_, m) = gate.admin_get("/metrics").await;
    m.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("{series} not in\n{m}"))
}

/// An office behind one NAT: new visitors are balanced by load (not all on one node), and
/// socket.io clients that keep no cookie, in every engine.io framing, keep their session on its
/// node for its whole life, learned from the handshake answer.
#[tokio::test]
async fn one_ip_many_cookieless_clients_spread_and_each_session_stays_on_its_node() {
    // Health checks off: a check timing out on a loaded machine would move sessions, which is
    // failover, not what this test is about.
    let (_nodes, gate) = cluster(3, NO_CHECKS).await;
    let office = ip(0);
    let mut tasks = Vec::new();
    for i in 0..24 {
        let eio = Eio::ALL[i % 4];
        let mut b = Browser::speaking(&gate, office, false, eio).await;
        tasks.push(tokio::spawn(async move {
            let first = b.poll().await;
            assert_eq!(first.status, StatusCode::OK, "{eio:?} handshake");
            for n in 0..15 {
                let p = if n % 3 == 0 {
                    b.request("POST", "4hello").await
                } else {
                    b.poll().await
                };
                assert_eq!(
                    (p.status, p.node.as_str()),
                    (StatusCode::OK, first.node.as_str()),
                    "{eio:?}: a cookieless session left its node"
                );
            }
            first.node
        }));
    }
    let mut per_node: HashMap<String, usize> = HashMap::new();
    for t in tasks {
        *per_node.entry(t.await.unwrap()).or_default() += 1;
    }
    assert_eq!(
        per_node.len(),
        3,
        "one NAT must not mean one node: {per_node:?}"
    );
    // The same office with cookie-keeping browsers: spread too, then pinned by the cookie.
    let mut cookied: HashMap<String, usize> = HashMap::new();
    for _ in 0..24 {
        let mut b = Browser::new(&gate, office, true).await;
        let first = b.poll().await;
        assert!(first.set_cookie);
        b.sid = None; // a new engine.io session, same browser: the cookie keeps it there
        assert_eq!(b.poll().await.node, first.node);
        *cookied.entry(first.node).or_default() += 1;
    }
    assert_eq!(cookied.len(), 3, "{cookied:?}");
    assert_eq!(
        metric(
            &gate,
            "bpgate_sticky_sid_handshakes_total{result=\"learned\"}"
        )
        .await,
        72.0
    );
    assert_eq!(
        metric(
            &gate,
            "bpgate_sticky_sid_handshakes_total{result=\"unparsed\"}"
        )
        .await,
        0.0
    );
    assert_eq!(
        metric(&gate, "bpgate_sticky_sid_lookups_total{result=\"hit\"}").await,
        24.0 * 15.0
    );
    assert_eq!(metric(&gate, "bpgate_sticky_sid_entries").await, 72.0);
    gate.stop().await;
}

/// socket.io's upgrade from polling to WebSocket carries the sid: the tunnel opens on the node
/// holding the session, without a cookie.
#[tokio::test]
async fn a_cookieless_upgrade_to_websocket_follows_the_session() {
    let (_nodes, gate) = cluster(3, NO_CHECKS).await;
    for _ in 0..6 {
        let mut b = Browser::new(&gate, ip(1), false).await;
        let node = b.poll().await.node;
        let tls = tls_connect_from(&gate, &[b"http/1.1"], ip(1)).await;
        let url = format!(
            "wss://localhost:{}/socket.io/?EIO=4&transport=websocket&sid={}",
            gate.https.port(),
            b.sid.clone().unwrap()
        );
        let (_ws, resp) = tokio_tungstenite::client_async(url, tls)
            .await
            .expect("the upgrade reached the session's node");
        assert_eq!(resp.headers()["x-node"], node.as_str());
    }
    gate.stop().await;
}

/// The map holds at most `sid_map_max_entries`, the newest sessions keep working, and a session
/// the node closed is forgotten when the node says so.
#[tokio::test]
async fn the_session_map_is_bounded_and_forgets_closed_sessions() {
    let (_nodes, gate) = cluster(
        3,
        &format!("{NO_CHECKS}\n[sticky]\nsid_map_max_entries = 8"),
    )
    .await;
    let mut clients = Vec::new();
    for _ in 0..20 {
        let mut b = Browser::new(&gate, ip(2), false).await;
        assert_eq!(b.poll().await.status, StatusCode::OK);
        clients.push(b);
    }
    assert!(metric(&gate, "bpgate_sticky_sid_entries").await <= 8.0);
    assert!(
        metric(
            &gate,
            "bpgate_sticky_sid_evictions_total{reason=\"capacity\"}"
        )
        .await
            >= 12.0
    );
    // The latest session is still known: it stays on its node.
    let last = clients.last_mut().unwrap();
    let node = last.poll().await.node;
    for _ in 0..10 {
        let p = last.poll().await;
        assert_eq!((p.status, p.node.as_str()), (StatusCode::OK, node.as_str()));
    }
    // The client closes its session (engine.io's close packet); the node then answers 400 to
    // the sid, and the gate forgets it.
    assert_eq!(last.request("POST", "1").await.status, StatusCode::OK);
    let before = metric(&gate, "bpgate_sticky_sid_entries").await;
    let p = last.request("GET", "").await;
    assert_eq!(p.status, StatusCode::BAD_REQUEST);
    assert_eq!(
        metric(
            &gate,
            "bpgate_sticky_sid_evictions_total{reason=\"unknown\"}"
        )
        .await,
        1.0
    );
    assert_eq!(
        metric(&gate, "bpgate_sticky_sid_entries").await,
        before - 1.0
    );
    gate.stop().await;
}

/// A `Cookie` header carrying a byte that is not UTF-8 (obs-text, or garbage) must still lose
/// the sticky pair before Botpress sees it, over HTTP/1.1 and HTTP/2; the other pairs pass
/// byte for byte.
#[tokio::test]
async fn a_cookie_header_with_a_raw_byte_still_loses_the_sticky_pair() {
    init();
    let node = Node::start("n1", echo()).await;
    let gate = Gate::builder()
        .upstream(node.url())
        .toml("[health]\nenabled = false")
        .start()
        .await;
    for mut c in [Client::h1(&gate).await, Client::h2(&gate).await] {
        for raw in [
            &b"lang=fr\xff\xfe; bpgate_node=abc; other=1"[..],
            b"bpgate_node=ab\xffc;other=1; lang=fr\xff\xfe",
            b"lang=fr\xff\xfe;bpgate_node=\"abc\"",
        ] {
            let a = c
                .call(
                    get("/x")
                        .header("cookie", http::HeaderValue::from_bytes(raw).unwrap())
                        .body(full(Bytes::new()))
                        .unwrap(),
                )
                .await;
            assert_eq!(a.status, StatusCode::OK);
            let seen: Vec<String> = a.json()["headers"]["cookie"]
                .as_array()
                .map(|v| v.iter().map(|x| x.as_str().unwrap().to_string()).collect())
                .unwrap_or_default();
            let all = seen.join("; ");
            assert!(!all.contains("bpgate_node"), "leaked to Botpress: {all:?}");
            assert!(all.contains("lang=fr\u{fffd}\u{fffd}"), "{all:?}");
            if raw.ends_with(b"other=1") || raw.starts_with(b"bpgate") {
                assert!(all.contains("other=1"), "{all:?}");
            }
            assert!(
                a.header("set-cookie")
                    .is_some_and(|c| c.starts_with("bpgate_node=")),
                "an unreadable value is a new pin"
            );
        }
    }
    gate.stop().await;
}
