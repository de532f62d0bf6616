//! Retry safety: only a request that never reached a node is sent again; a pooled connection
//! the node closed is not used; `upstream.connect_timeout` bounds a node that never answers the
//! handshake.

use crate::support;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use support::botpress::Botpress;
use support::*;

/// Records every request body it receives, then never answers.
fn swallow(seen: Arc<Mutex<Vec<Bytes>>>) -> Handler {
    Arc::new(move |req: Request<Incoming>, _cx: NodeCtx| {
        let seen = seen.clone();
        Box::pin(async move {
            let body = req.into_body().collect().await.unwrap().to_bytes();
            seen.lock().unwrap().push(body);
            std::future::pending::<Response<BoxBody>>().await
        })
    })
}

#[tokio::test]
async fn a_post_that_reached_a_node_that_then_died_is_502_and_never_sent_twice() {
    init();
    let seen_a = Arc::new(Mutex::new(Vec::new()));
    let seen_b = Arc::new(Mutex::new(Vec::new()));
    let a = Node::start("a", swallow(seen_a.clone())).await;
    let b = Node::start("b", swallow(seen_b.clone())).await;
    let gate = Gate::builder()
        .toml(&format!(
            "[health]\nenabled = false\n[sticky]\nenabled = false\n[upstream]\nurls = [\"{}\", \"{}\"]",
            a.url(),
            b.url()
        ))
        .start()
        .await;
    let marker = Bytes::from_static(b"transfer 100 EUR to account 42");
    let mut c = Client::h1(&gate).await;
    let call = tokio::spawn({
        let marker = marker.clone();
        async move {
            c.call(
                post("/api/v1/bots/b/converse/u")
                    .body(full(marker))
                    .unwrap(),
            )
            .await
        }
    });
    // Wait until one node has the whole body, then kill that node.
    let has = |s: &Arc<Mutex<Vec<Bytes>>>| s.lock().unwrap().contains(&marker);
    assert!(
        eventually(Duration::from_secs(10), || has(&seen_a) || has(&seen_b)).await,
        "the POST reached no node"
    );
    let (victim_seen, survivor_seen, victim, survivor) = if has(&seen_a) {
        (seen_a, seen_b, a, b)
    } else {
        (seen_b, seen_a, b, a)
    };
    victim.kill().await;
    let answer = call.await.unwrap();
    assert_eq!(answer.status, StatusCode::BAD_GATEWAY, "{}", answer.text());
    assert_eq!(victim_seen.lock().unwrap().len(), 1);
    assert!(
        survivor_seen.lock().unwrap().is_empty(),
        "the surviving node must never see a request that already reached a node"
    );
    assert_eq!(survivor.requests.load(Ordering::SeqCst), 0);
    let lines = gate.audit_lines();
    let line = lines.last().unwrap();
    assert_eq!(line["status"], 502);
    assert_eq!(line["outcome"], "upstream_error");
    gate.stop().await;
}

#[tokio::test]
async fn a_pooled_connection_the_node_closed_is_not_used() {
    init();
    // The node closes idle keep-alive connections after 300 ms, and bpgate is told to keep them
    // for 10 s: the race Node's keepAliveTimeout creates, made certain.
    let node = Botpress::builder("n")
        .keep_alive(Some(Duration::from_millis(300)))
        .start()
        .await;
    let gate = Gate::builder()
        .upstream(node.url())
        .toml("[health]\nenabled = false\n[upstream]\nidle_timeout = \"10s\"")
        .start()
        .await;
    let mut c = Client::h1(&gate).await;
    assert_eq!(c.get("/api/v1/x").await.status, StatusCode::OK);
    assert_eq!(node.accepted.load(Ordering::SeqCst), 1);
    assert!(
        eventually(Duration::from_secs(5), || node
            .idle_closed
            .load(Ordering::SeqCst)
            == 1)
        .await,
        "the node closes the idle connection"
    );
    for i in 0..5u8 {
        let a = c
            .call(post("/api/v1/x").body(full(vec![i; 100])).unwrap())
            .await;
        assert_eq!(a.status, StatusCode::OK, "{}", a.text());
        assert_eq!(a.json()["body_len"], 100);
        assert!(
            eventually(Duration::from_secs(5), || node
                .idle_closed
                .load(Ordering::SeqCst)
                == u64::from(i) + 2)
            .await
        );
    }
    // Each POST went on a new connection, and exactly once.
    assert_eq!(node.accepted.load(Ordering::SeqCst), 6);
    assert_eq!(node.state.app_requests.load(Ordering::SeqCst), 6);
    gate.stop().await;
}

#[tokio::test]
async fn bpgate_stops_reusing_a_connection_before_the_node_closes_it() {
    init();
    // Botpress's default: Node closes after 5 s idle. bpgate's idle_timeout (4 s by default) is
    // below it; here 1 s against the node's 5 s (long enough that two requests in a row on a
    // loaded machine stay well within it).
    let node = Botpress::start("n").await;
    let gate = Gate::builder()
        .upstream(node.url())
        .toml("[health]\nenabled = false\n[upstream]\nidle_timeout = \"1s\"")
        .start()
        .await;
    let mut c = Client::h1(&gate).await;
    assert_eq!(c.get("/api/v1/x").await.status, StatusCode::OK);
    assert_eq!(c.get("/api/v1/x").await.status, StatusCode::OK);
    assert_eq!(
        node.accepted.load(Ordering::SeqCst),
        1,
        "a fresh idle connection is reused"
    );
    // Idle past idle_timeout (the pause is the idleness under test; longer only helps), well
    // before the node's own 5 s.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(c.get("/api/v1/x").await.status, StatusCode::OK);
    assert_eq!(
        node.accepted.load(Ordering::SeqCst),
        2,
        "one idle past idle_timeout is not"
    );
    assert_eq!(node.idle_closed.load(Ordering::SeqCst), 0);
    gate.stop().await;
}

/// A loopback listener that never accepts, its backlog full: a connect to it gets no
/// handshake at all (the kernel drops the SYN), like a firewalled or frozen host.
struct Blackhole {
    addr: std::net::SocketAddr,
    _listener: tokio::net::TcpListener,
    _queued: Vec<tokio::net::TcpStream>,
}

impl Blackhole {
    async fn new() -> Blackhole {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let listener = socket.listen(0).unwrap();
        let addr = listener.local_addr().unwrap();
        let mut queued = Vec::new();
        loop {
            match tokio::time::timeout(
                Duration::from_millis(300),
                tokio::net::TcpStream::connect(addr),
            )
            .await
            {
                Ok(Ok(s)) => queued.push(s),
                Ok(Err(e)) => panic!("connect to the blackhole: {e}"),
                Err(_) => break,
            }
            assert!(queued.len() < 64, "the backlog never filled");
        }
        Blackhole {
            addr,
            _listener: listener,
            _queued: queued,
        }
    }
}

#[tokio::test]
async fn connect_timeout_bounds_a_blackholed_node_and_the_request_fails_over() {
    init();
    let hole = Blackhole::new().await;
    let live = Node::start("live", echo()).await;
    let attempts = Arc::new(AtomicU64::new(0));
    let gate = Gate::builder()
        .toml(&format!(
            "[health]\nenabled = false\n[sticky]\nenabled = false\n[upstream]\nconnect_timeout = \"400ms\"\n[[upstream.nodes]]\nurl = \"http://{}\"\nname = \"hole\"\n[[upstream.nodes]]\nurl = \"{}\"\nname = \"live\"",
            hole.addr,
            live.url()
        ))
        .toml("[upstream]\nurls = []")
        .start()
        .await;
    // Until one request lands on the blackhole first (the balancer picks at random).
    let mut failed_over = false;
    for _ in 0..40 {
        let mut c = Client::h1(&gate).await;
        let started = tokio::time::Instant::now();
        let a = tokio::time::timeout(
            Duration::from_secs(20),
            c.call(post("/api/v1/x").body(full("payload")).unwrap()),
        )
        .await
        .expect("a blackholed connect must not hang past connect_timeout");
        attempts.fetch_add(1, Ordering::Relaxed);
        assert_eq!(a.status, StatusCode::OK, "{}", a.text());
        assert_eq!(a.json()["node"], "live");
        assert_eq!(a.json()["body_len"], 7);
        let took = started.elapsed();
        if took >= Duration::from_millis(400) {
            assert!(
                took < Duration::from_millis(2900),
                "the 400 ms connect_timeout, not the 3 s default, bounded it: {took:?}"
            );
            failed_over = true;
            break;
        }
    }
    assert!(failed_over, "no request was routed to the blackhole first");
    assert_eq!(
        live.requests.load(Ordering::SeqCst),
        attempts.load(Ordering::Relaxed)
    );
    gate.stop().await;
}

#[tokio::test]
async fn a_blackholed_only_node_is_answered_at_connect_timeout() {
    init();
    let hole = Blackhole::new().await;
    let gate = Gate::builder()
        .upstream(format!("http://{}", hole.addr))
        .toml("[health]\nenabled = false\n[upstream]\nconnect_timeout = \"300ms\"")
        .start()
        .await;
    let mut c = Client::h1(&gate).await;
    let started = tokio::time::Instant::now();
    let a = tokio::time::timeout(Duration::from_secs(20), c.get("/api/v1/x"))
        .await
        .expect("must not hang");
    let took = started.elapsed();
    assert_eq!(a.status, StatusCode::BAD_GATEWAY, "{}", a.text());
    assert!(
        took >= Duration::from_millis(300) && took < Duration::from_millis(2900),
        "{took:?}"
    );
    let lines = gate.audit_lines();
    assert_eq!(lines.last().unwrap()["outcome"], "upstream_error");
    gate.stop().await;
}
