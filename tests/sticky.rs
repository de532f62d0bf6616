//! Sticky agreement across replicas and versions: the cookie a gate issued yesterday (or another
//! replica issued, or the previous secret sealed) routes to the same node today.

use crate::support;

use bpgate::cluster::{unix_now, StickyCodec};
use bytes::Bytes;
use http::StatusCode;
use support::*;

const GOLDEN_SECRET: &str = "bpgate-golden-secret-2024-0123456789";
/// `StickyCodec(GOLDEN_SECRET, path "/")` sealing node `node-1` at 1_700_000_000; the unit test
/// `cluster::sticky::tests::golden_vectors_never_change` holds the same literal.
const GOLDEN_COOKIE: &str = "AVp6bjy04Bo2ZVPxAN0gRlucHvem37UjvqA4wQE";

async fn echo_nodes(n: usize) -> Vec<Node> {
    init();
    let mut v = Vec::new();
    for i in 0..n {
        v.push(Node::start(&format!("node-{i}"), echo()).await);
    }
    v
}

/// A gate in front of `nodes`, listed in `order` (names come from the nodes, not positions).
async fn gate(nodes: &[Node], order: &[usize], env_secret: Option<&str>, toml: &str) -> Gate {
    let mut conf = String::from("[health]\nenabled = false\n[upstream]\nurls = []\n");
    for &i in order {
        conf.push_str(&format!(
            "[[upstream.nodes]]\nurl = \"{}\"\nname = \"{}\"\n",
            nodes[i].url(),
            nodes[i].name
        ));
    }
    let mut b = Gate::builder().toml(&conf).toml(toml);
    if let Some(s) = env_secret {
        b = b.env("BPGATE_STICKY_SECRET", s);
    }
    b.start().await
}

/// One request with `cookie`: the node that answered and the value of a new `bpgate_node`.
async fn call(gate: &Gate, cookie: Option<&str>) -> (String, Option<String>) {
    let mut c = Client::h1(gate).await;
    let mut b = get("/api/v1/bots");
    if let Some(v) = cookie {
        b = b.header("cookie", format!("bpgate_node={v}"));
    }
    let a = c.call(b.body(full(Bytes::new())).unwrap()).await;
    assert_eq!(a.status, StatusCode::OK);
    let set = a.headers.get_all("set-cookie").iter().find_map(|v| {
        let s = v.to_str().ok()?;
        let v = s.strip_prefix("bpgate_node=")?;
        Some(v.split(';').next()?.to_string())
    });
    (a.json()["node"].as_str().unwrap().to_string(), set)
}

fn codec(secret: &str, previous: Option<&str>, max_age: u64) -> StickyCodec {
    StickyCodec::new(
        secret.as_bytes(),
        previous.map(str::as_bytes),
        "bpgate_node",
        "/",
        max_age,
    )
}

async fn sticky_metric(gate: &Gate, outcome: &str) -> f64 {
    let (_, m) = gate.admin_get("/metrics").await;
    let series = format!("bpgate_sticky_total{{outcome=\"{outcome}\"}}");
    m.lines()
        .find_map(|l| l.strip_prefix(&series)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("{series} not in\n{m}"))
}

/// `BPGATE_STICKY_SECRET` reaches the configuration, and a cookie sealed by an earlier version
/// (the golden vector) routes to its node without being re-issued.
#[tokio::test]
async fn the_env_secret_opens_a_cookie_an_earlier_version_issued() {
    let nodes = echo_nodes(3).await;
    // A long max_age keeps the 2023 golden cookie valid and before its half-life.
    let g = gate(
        &nodes,
        &[2, 0, 1],
        Some(GOLDEN_SECRET),
        "[sticky]\nmax_age = \"36500d\"",
    )
    .await;
    for _ in 0..10 {
        assert_eq!(call(&g, Some(GOLDEN_COOKIE)).await, ("node-1".into(), None));
    }
    assert_eq!(sticky_metric(&g, "hit").await, 10.0);
    assert_eq!(sticky_metric(&g, "forged").await, 0.0);
    let lines = g.audit_lines();
    assert_eq!(lines.len(), 10);
    assert!(lines.iter().all(|l| l["sticky"] == "hit"), "{lines:?}");
    g.stop().await;
    // Another secret in the environment: the same cookie is forged, a new pin.
    let other = gate(
        &nodes,
        &[0, 1, 2],
        Some("a-different-secret-0123456789"),
        "[sticky]\nmax_age = \"36500d\"",
    )
    .await;
    let (_, set) = call(&other, Some(GOLDEN_COOKIE)).await;
    assert!(set.is_some());
    assert_eq!(sticky_metric(&other, "forged").await, 1.0);
    other.stop().await;
}

/// Two replicas with one secret and the nodes in another order: a cookie past half its life is
/// renewed by either, and the renewed value is honoured by the other; a younger one is left
/// alone, an expired one is a new pin.
#[tokio::test]
async fn renewal_at_half_life_and_two_replicas_agree() {
    let nodes = echo_nodes(3).await;
    let secret = "replica-shared-secret-0123456789";
    let toml = format!("[sticky]\nsecret = \"{secret}\"\nmax_age = \"1h\"");
    let a = gate(&nodes, &[0, 1, 2], None, &toml).await;
    let b = gate(&nodes, &[2, 1, 0], None, &toml).await;
    let c = codec(secret, None, 3600);
    let now = unix_now();
    for (i, name) in ["node-0", "node-1", "node-2"].into_iter().enumerate() {
        let id = c.current().node_id(name);
        // Younger than half of max_age: honoured, not re-issued, on both replicas.
        let young = c.seal(id, now - 1500);
        assert_eq!(call(&a, Some(&young)).await, (name.into(), None));
        assert_eq!(call(&b, Some(&young)).await, (name.into(), None));
        // Older than half: honoured and renewed; the renewed value is fresh and names the same
        // node, and the other replica honours it without renewing it again.
        let old = c.seal(id, now - 1900);
        let renewer = if i % 2 == 0 { &a } else { &b };
        let other = if i % 2 == 0 { &b } else { &a };
        let (node, renewed) = call(renewer, Some(&old)).await;
        assert_eq!(node, name);
        let renewed = renewed.expect("a cookie past half its life is renewed");
        let o = c.open(&renewed, unix_now()).unwrap();
        assert_eq!(o.node, id);
        assert!(o.age_secs < 60, "{o:?}");
        assert_eq!(call(other, Some(&renewed)).await, (name.into(), None));
        // Older than max_age: expired, a new pin.
        let expired = c.seal(id, now - 3700);
        assert!(call(&a, Some(&expired)).await.1.is_some());
    }
    assert_eq!(sticky_metric(&a, "expired").await, 3.0);
    a.stop().await;
    b.stop().await;
}

/// A rotation: cookies sealed with `previous_secret` still reach their node and are re-issued
/// under the new secret; without `previous_secret` they would be forged.
#[tokio::test]
async fn previous_secret_is_honoured_and_reissued_under_the_new_one() {
    let nodes = echo_nodes(3).await;
    let old = "the-old-secret-0123456789";
    let new = "the-new-secret-0123456789";
    let rotated = gate(
        &nodes,
        &[0, 1, 2],
        Some(new),
        &format!("[sticky]\nprevious_secret = \"{old}\""),
    )
    .await;
    let sealed_old = codec(old, None, 86_400);
    for name in ["node-0", "node-1", "node-2"] {
        let v = sealed_old.seal(sealed_old.current().node_id(name), unix_now() - 60);
        let (node, reissued) = call(&rotated, Some(&v)).await;
        assert_eq!(node, name);
        let reissued = reissued.expect("re-issued under the new secret");
        let new_only = codec(new, None, 86_400);
        let o = new_only.open(&reissued, unix_now()).unwrap();
        assert_eq!(o.node, new_only.current().node_id(name));
        assert!(!o.previous_key);
        // The re-issued cookie is an ordinary hit from now on.
        assert_eq!(call(&rotated, Some(&reissued)).await, (name.into(), None));
    }
    assert_eq!(sticky_metric(&rotated, "forged").await, 0.0);
    rotated.stop().await;
    let unrotated = gate(&nodes, &[0, 1, 2], Some(new), "").await;
    let v = sealed_old.seal(sealed_old.current().node_id("node-1"), unix_now());
    assert!(call(&unrotated, Some(&v)).await.1.is_some());
    assert_eq!(sticky_metric(&unrotated, "forged").await, 1.0);
    unrotated.stop().await;
}
