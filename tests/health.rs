//! Active health checks against Botpress-like nodes: the probe path, what counts as healthy,
//! the first check, and the panic guard.

use crate::support;

use std::sync::atomic::Ordering;
use std::time::Duration;

use http::StatusCode;
use serde_json::Value;
use support::botpress::{Botpress, Status};
use support::*;

/// A gate in front of `nodes` (named by their node names), sticky sessions off so every
/// request is balanced afresh.
async fn gate(nodes: &[&Botpress], toml: &str) -> Gate {
    init();
    let mut b = Gate::builder()
        .toml("[sticky]\nenabled = false\n[upstream]\nurls = []")
        .toml(toml);
    for n in nodes {
        b = b.toml(&format!(
            "[[upstream.nodes]]\nurl = \"{}\"\nname = \"{}\"",
            n.url(),
            n.name
        ));
    }
    b.start().await
}

async fn upstreams(gate: &Gate) -> Value {
    let (s, body) = gate.admin_get("/upstreams").await;
    assert_eq!(s, StatusCode::OK);
    serde_json::from_str(&body).unwrap()
}

fn node<'a>(u: &'a Value, name: &str) -> &'a Value {
    u["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["name"] == name)
        .unwrap_or_else(|| panic!("no node {name} in {u}"))
}

/// Polls `GET /upstreams` until `f` holds (20 s at most).
async fn until(gate: &Gate, what: &str, f: impl Fn(&Value) -> bool) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let u = upstreams(gate).await;
        if f(&u) {
            return u;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}: {u}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

async fn metric(gate: &Gate, name: &str) -> f64 {
    let (_, text) = gate.admin_get("/metrics").await;
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in {text}"))
}

/// `n` fresh requests; how many each node answered.
async fn spread(gate: &Gate, nodes: &[&Botpress], n: usize) -> Vec<u64> {
    let before: Vec<u64> = nodes
        .iter()
        .map(|b| b.state.app_requests.load(Ordering::SeqCst))
        .collect();
    for _ in 0..n {
        let mut c = Client::h1(gate).await;
        let a = c.get("/api/v1/bots/b/x").await;
        assert_eq!(a.status, StatusCode::OK, "{}", a.text());
    }
    nodes
        .iter()
        .zip(before)
        .map(|(b, was)| b.state.app_requests.load(Ordering::SeqCst) - was)
        .collect()
}

/// Quick rounds; a timeout generous enough that a live node on a loaded machine never fails
/// one (a hung probe still fails within it).
const FAST: &str = "[health]\ninterval = \"200ms\"\ntimeout = \"2s\"\nrise = 1\nfall = 1";

#[tokio::test]
async fn a_hung_status_on_every_node_leaves_the_cluster_up_with_the_default_probe() {
    // /status waits on NLU and messaging without a timeout; with a shared NLU hung, it hangs on
    // every node at once. The default probe, /version, does not.
    let a = Botpress::builder("a").status(Status::Hang).start().await;
    let b = Botpress::builder("b").status(Status::Hang).start().await;
    let gate = gate(&[&a, &b], FAST).await;
    let u = until(&gate, "both nodes checked healthy", |u| {
        ["a", "b"]
            .iter()
            .all(|n| node(u, n)["state"] == "healthy" && node(u, n)["last_check"]["status"] == 200)
    })
    .await;
    assert_eq!(u["panic"], false);
    let per = spread(&gate, &[&a, &b], 20).await;
    assert!(per.iter().all(|n| *n > 0), "{per:?}");
    gate.stop().await;
}

#[tokio::test]
async fn panic_mode_routes_to_every_node_and_ends_as_soon_as_one_is_healthy() {
    let a = Botpress::start("a").await;
    let b = Botpress::start("b").await;
    // Probing /status (the old default), then the shared NLU hangs: both checks time out.
    let gate = gate(
        &[&a, &b],
        "[health]\npath = \"/status\"\ninterval = \"200ms\"\ntimeout = \"2s\"\nrise = 1\nfall = 1",
    )
    .await;
    until(&gate, "both healthy", |u| {
        ["a", "b"].iter().all(|n| node(u, n)["state"] == "healthy")
    })
    .await;
    assert_eq!(metric(&gate, "bpgate_upstream_panic").await, 0.0);
    a.state.set_status(Status::Hang);
    b.state.set_status(Status::Hang);
    let u = until(&gate, "panic mode", |u| u["panic"] == true).await;
    assert!(["a", "b"]
        .iter()
        .all(|n| node(&u, n)["state"] == "unhealthy"));
    assert_eq!(metric(&gate, "bpgate_upstream_panic").await, 1.0);
    let (s, ready) = gate.admin_get("/readyz").await;
    assert_eq!(s, StatusCode::OK, "still routing, so still ready: {ready}");
    assert!(ready.contains("\"panic\": true"), "{ready}");
    // Every node that is not drained still gets traffic.
    let per = spread(&gate, &[&a, &b], 20).await;
    assert!(
        per.iter().all(|n| *n > 0),
        "panic mode uses all nodes: {per:?}"
    );

    // One node recovers: normal selection at once, and only it gets traffic.
    a.state.set_status(Status::Up);
    let u = until(&gate, "a healthy, panic over", |u| {
        u["panic"] == false && node(u, "a")["state"] == "healthy"
    })
    .await;
    assert_eq!(node(&u, "b")["state"], "unhealthy");
    assert_eq!(metric(&gate, "bpgate_upstream_panic").await, 0.0);
    assert_eq!(spread(&gate, &[&a, &b], 20).await, vec![20, 0]);
    gate.stop().await;
}

#[tokio::test]
async fn a_drained_node_stays_out_of_panic_mode() {
    let a = Botpress::builder("a").status(Status::Hang).start().await;
    let b = Botpress::builder("b").status(Status::Hang).start().await;
    let gate = gate(
        &[&a, &b],
        "[health]\npath = \"/status\"\ninterval = \"200ms\"\ntimeout = \"2s\"\nrise = 1\nfall = 1",
    )
    .await;
    until(&gate, "panic mode", |u| u["panic"] == true).await;
    assert_eq!(
        gate.admin_post("/upstreams/b/drain").await.0,
        StatusCode::OK
    );
    assert_eq!(spread(&gate, &[&a, &b], 10).await, vec![10, 0]);
    gate.stop().await;
}

#[tokio::test]
async fn the_first_check_alone_decides_a_new_node() {
    // rise = 2 and fall = 3, one round only: a node is pending until its first check, which
    // brings it in or keeps it out by itself. A node still loading never gets traffic.
    let ready = Botpress::start("ready").await;
    let loading = Botpress::builder("loading").loading().start().await;
    let gate = gate(&[&ready, &loading], "[health]\ninterval = \"1h\"").await;
    let u = until(&gate, "both nodes checked once", |u| {
        ["ready", "loading"]
            .iter()
            .all(|n| !node(u, n)["last_check"].is_null())
    })
    .await;
    assert_eq!(node(&u, "ready")["state"], "healthy");
    assert_eq!(node(&u, "loading")["state"], "unhealthy");
    assert_eq!(node(&u, "loading")["last_check"]["status"], 503);
    assert_eq!(u["panic"], false);
    assert_eq!(spread(&gate, &[&ready, &loading], 10).await, vec![10, 0]);
    gate.stop().await;
}

#[tokio::test]
async fn only_2xx_and_3xx_count_503_while_loading_and_404_are_out() {
    let up = Botpress::start("up").await;
    let loading = Botpress::builder("loading").loading().start().await;
    // Mounted under another ROOT_PATH: the probed path is a 404.
    let elsewhere = Botpress::builder("elsewhere").root("/other").start().await;
    let gate = gate(&[&up, &loading, &elsewhere], FAST).await;
    let u = until(&gate, "three nodes checked", |u| {
        ["up", "loading", "elsewhere"]
            .iter()
            .all(|n| !node(u, n)["last_check"].is_null())
    })
    .await;
    for (n, state, status) in [
        ("up", "healthy", 200),
        ("loading", "unhealthy", 503),
        ("elsewhere", "unhealthy", 404),
    ] {
        assert_eq!(node(&u, n)["state"], state, "{u}");
        assert_eq!(node(&u, n)["last_check"]["status"], status, "{u}");
    }
    assert_eq!(
        metric(&gate, "bpgate_upstream_healthy{node=\"loading\"}").await,
        0.0
    );
    // Loading done: the node comes back.
    loading.state.set_loading(false);
    until(&gate, "the loaded node healthy", |u| {
        node(u, "loading")["state"] == "healthy"
    })
    .await;
    gate.stop().await;

    // A 3xx counts: Botpress redirects `/` to `/admin`.
    let gate2 = gate_with_path(&up, "/").await;
    let u = until(&gate2, "checked", |u| {
        !node(u, "up")["last_check"].is_null()
    })
    .await;
    assert_eq!(node(&u, "up")["last_check"]["status"], 302);
    assert_eq!(node(&u, "up")["state"], "healthy");
    gate2.stop().await;
}

async fn gate_with_path(n: &Botpress, path: &str) -> Gate {
    gate(&[n], &format!("{FAST}\npath = \"{path}\"")).await
}

#[tokio::test]
async fn the_probe_goes_under_the_base_path() {
    let bp = Botpress::builder("bp").root("/botpress").start().await;
    let gate = gate(
        &[&bp],
        &format!("external_url = \"https://localhost/botpress\"\n{FAST}"),
    )
    .await;
    let u = until(&gate, "checked", |u| !node(u, "bp")["last_check"].is_null()).await;
    assert_eq!(node(&u, "bp")["last_check"]["status"], 200, "{u}");
    gate.stop().await;
}
