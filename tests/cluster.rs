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

/// An engine.io-like node.
fn engine_io() -> Handler {
    let sessions: Arc<Mutex<HashSet<String>>> = Arc::default();
    Arc::new(move |req: Request<Incoming>, cx: NodeCtx| {
        let sessions = sessions.clone();
        Box::pin(async move {
            if req.headers().get("upgrade").is_some() {
                let mut r = ws_echo(req);
                r.headers_mut().insert("x-node", cx.name.parse().unwrap());
                return r;
            }
            let q = req.uri().query().unwrap_or("");
            let sid = q
                .split('&')
                .find_map(|kv| kv.strip_prefix("sid="))
                .map(str::to_string);
            let cookie_leaked = req
                .headers()
                .get_all("cookie")
                .iter()
                .any(|v| v.to_str().unwrap_or("").contains("bpgate_node"));
            let (status, body) = match sid {
                _ if cookie_leaked => (
                    StatusCode::IM_A_TEAPOT,
                    "sticky cookie reached the node".to_string(),
                ),
                None => {
                    let id = format!("{}-{}", cx.name, fastrand::u64(..));
                    sessions.lock().unwrap().insert(id.clone());
                    (StatusCode::OK, format!("0{{\"sid\":\"{id}\"}}"))
                }
                Some(s) if sessions.lock().unwrap().contains(&s) => {
                    (StatusCode::OK, "ok".to_string())
                }
                Some(_) => (
                    StatusCode::BAD_REQUEST,
                    r#"{"code":1,"message":"Session ID unknown"}"#.to_string(),
                ),
            };
            Response::builder()
                .status(status)
                .header("x-node", cx.name.as_str())
                .body(full(body))
                .unwrap()
        })
    })
}

/// A browser: one connection, a cookie jar for bpgate's cookie, and an engine.io session.
struct Browser {
    client: Client,
    cookie: Option<String>,
    sid: Option<String>,
    keep_cookies: bool,
}

struct Poll {
    status: StatusCode,
    node: String,
    set_cookie: bool,
}

impl Browser {
    async fn new(gate: &Gate, ip: Option<IpAddr>, keep_cookies: bool) -> Browser {
        let tls = tls_connect_from(gate, &[b"http/1.1"], ip).await;
        Browser {
            client: Client::over(tls).await,
            cookie: None,
            sid: None,
            keep_cookies,
        }
    }

    async fn poll(&mut self) -> Poll {
        let mut path = "/socket.io/?EIO=4&transport=polling".to_string();
        if let Some(s) = &self.sid {
            path.push_str("&sid=");
            path.push_str(s);
        }
        let mut b = get(&path);
        if let Some(c) = &self.cookie {
            b = b.header("cookie", format!("other=1; {c}"));
        }
        let a = self.client.call(b.body(full(Bytes::new())).unwrap()).await;
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
        if a.status == StatusCode::OK && a.text().starts_with("0{") {
            let t = a.text();
            self.sid = Some(t[9..t.len() - 2].to_string());
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
    let (_nodes, gate) = cluster(3, "").await;
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
    let (_nodes, gate) = cluster(2, "[sticky]\nfallback = \"none\"").await;
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
        "[sticky]\nsecret = \"a-shared-secret-of-some-length\"\nfallback = \"none\"\n[upstream]\nurls = []\n[[upstream.nodes]]\nurl = \"{}\"\nname = \"node-0\"\n[[upstream.nodes]]\nurl = \"{}\"\nname = \"node-1\"",
        n0.url(),
        n1.url()
    );
    // The replica lists the nodes in the other order: ids come from names, not positions.
    let conf_b = format!(
        "[sticky]\nsecret = \"a-shared-secret-of-some-length\"\nfallback = \"none\"\n[upstream]\nurls = []\n[[upstream.nodes]]\nurl = \"{}\"\nname = \"node-1\"\n[[upstream.nodes]]\nurl = \"{}\"\nname = \"node-0\"",
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
            "[health]\nenabled = false\n[sticky]\nfallback = \"none\"\n[upstream]\nurls = [\"http://{dead}\", \"{}\"]",
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
            && cookie.contains("SameSite=None")
            && cookie.contains("Secure"),
        "{cookie}"
    );
    drop(_ws);
    gate.stop().await;
}
