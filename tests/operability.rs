//! Operability: metrics after traffic, certificate hot reload, configuration reload.

use crate::support;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::StatusCode;
use rustls::pki_types::{pem::PemObject, CertificateDer, ServerName};
use support::*;
use tokio_tungstenite::tungstenite::Message;

fn metric(text: &str, name_and_labels: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(name_and_labels) && l[name_and_labels.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no sample {name_and_labels} in\n{text}"))
}

#[tokio::test]
async fn metrics_move_by_the_right_amounts() {
    init();
    let node = Node::start("n", echo()).await;
    let gate = Gate::builder()
        .upstream(node.url())
        .toml("[health]\nenabled = false")
        .start()
        .await;
    let (_, before) = gate.admin_get("/metrics").await;
    let mut c = Client::h2(&gate).await;
    for _ in 0..10 {
        assert_eq!(c.get("/api/v1/ping").await.status, StatusCode::OK);
    }
    for _ in 0..3 {
        c.call(post("/api/v1/x").body(full(vec![1u8; 100])).unwrap())
            .await;
    }
    let (s, after) = gate.admin_get("/metrics").await;
    assert_eq!(s, StatusCode::OK);
    assert!(after.trim_end().ends_with("# EOF"));
    let delta = |k: &str| {
        metric(&after, k)
            - if before.contains(k) {
                metric(&before, k)
            } else {
                0.0
            }
    };
    assert_eq!(
        delta("bpgate_responses_total{class=\"2xx\",method=\"GET\"}"),
        10.0
    );
    assert_eq!(
        delta("bpgate_responses_total{class=\"2xx\",method=\"POST\"}"),
        3.0
    );
    assert_eq!(delta("bpgate_received_bytes_total"), 300.0);
    assert_eq!(
        metric(&after, "bpgate_request_duration_seconds_count"),
        13.0
    );
    assert_eq!(metric(&after, "bpgate_connections{protocol=\"h2\"}"), 1.0);
    let node_name = format!("127.0.0.1:{}", node.addr.port());
    assert_eq!(
        metric(
            &after,
            &format!("bpgate_upstream_requests_total{{node=\"{node_name}\"}}")
        ),
        13.0
    );
    // The client keeps no cookies: every request is a new pin by client IP.
    assert_eq!(metric(&after, "bpgate_sticky_total{outcome=\"new\"}"), 13.0);
    assert_eq!(metric(&after, "bpgate_sticky_total{outcome=\"hit\"}"), 0.0);
    gate.stop().await;
}

fn connector_trusting(cas: &[&str]) -> tokio_rustls::TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    for ca in cas {
        for c in CertificateDer::pem_slice_iter(ca.as_bytes()) {
            roots.add(c.unwrap()).unwrap();
        }
    }
    let mut cfg = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    tokio_rustls::TlsConnector::from(Arc::new(cfg))
}

async fn presented(gate: &Gate, conn: &tokio_rustls::TlsConnector) -> Vec<u8> {
    let tcp = tokio::net::TcpStream::connect(gate.https).await.unwrap();
    let tls = conn
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap();
    tls.get_ref().1.peer_certificates().unwrap()[0]
        .as_ref()
        .to_vec()
}

#[tokio::test]
async fn certificate_replaced_on_disk_serves_new_handshakes_and_keeps_open_connections() {
    init();
    let node = Node::start("n", echo()).await;
    let pki = Arc::new(Pki::new());
    // Copy the pair somewhere the test can replace it.
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("c.pem"), dir.path().join("k.pem"));
    std::fs::copy(&pki.cert, &cert).unwrap();
    std::fs::copy(&pki.key, &key).unwrap();
    let gate = Gate::builder()
        .pki(pki.clone())
        .upstream(node.url())
        .toml(&format!("[tls]\ncert = {cert:?}\nkey = {key:?}\nreload_interval = \"100ms\"\n[shutdown]\ndrain_timeout = \"1s\""))
        .start()
        .await;
    let fresh = Pki::new();
    let conn = connector_trusting(&[&pki.ca_pem, &fresh.ca_pem]);
    let old_der = presented(&gate, &conn).await;

    // Connections opened before the renewal.
    let mut h2 = Client::h2(&gate).await;
    assert_eq!(h2.get("/a").await.status, StatusCode::OK);
    let tls = tls_connect(&gate, &[b"http/1.1"]).await;
    let (mut ws, _) = tokio_tungstenite::client_async(
        format!("wss://localhost:{}/socket.io/", gate.https.port()),
        tls,
    )
    .await
    .unwrap();

    // certbot-style renewal: both files replaced.
    std::fs::copy(&fresh.cert, &cert).unwrap();
    std::fs::copy(&fresh.key, &key).unwrap();
    let mut new_der = old_der.clone();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while new_der == old_der && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
        new_der = presented(&gate, &conn).await;
    }
    assert_ne!(
        new_der, old_der,
        "a new handshake must present the renewed certificate"
    );
    assert_eq!(
        new_der,
        std::fs::read(&fresh.cert)
            .map(|p| CertificateDer::from_pem_slice(&p)
                .unwrap()
                .as_ref()
                .to_vec())
            .unwrap()
    );
    assert_eq!(
        h2.get("/b").await.status,
        StatusCode::OK,
        "the open HTTP/2 connection keeps working"
    );
    ws.send(Message::text("still here")).await.unwrap();
    assert_eq!(
        ws.next()
            .await
            .unwrap()
            .unwrap()
            .into_text()
            .unwrap()
            .as_str(),
        "still here"
    );

    // A bad replacement is refused (once the watcher has read it); the renewed certificate
    // stays in service.
    let failures = |m: &str| metric(m, "bpgate_certificate_reloads_total{result=\"failure\"}");
    let before = failures(&gate.admin_get("/metrics").await.1);
    std::fs::write(&cert, "not a certificate").unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let m = loop {
        let (_, m) = gate.admin_get("/metrics").await;
        if failures(&m) > before {
            break m;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the bad file was never refused:\n{m}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(presented(&gate, &conn).await, new_der);
    assert!(metric(&m, "bpgate_certificate_reloads_total{result=\"success\"}") >= 1.0);
    gate.stop().await;
}

#[tokio::test]
async fn config_reload_adds_and_removes_nodes_without_dropping_a_websocket() {
    init();
    let a = Node::start("a", echo()).await;
    let b = Node::start("b", echo()).await;
    let nodes = |list: &[&Node]| {
        list.iter()
            .map(|n| {
                format!(
                    "[[upstream.nodes]]\nurl = \"{}\"\nname = \"{}\"\n",
                    n.url(),
                    n.name
                )
            })
            .collect::<String>()
    };
    let base = "[shutdown]\ndrain_timeout = \"1s\"\n[health]\nenabled = false\n[sticky]\nfallback = \"none\"\nsecret = \"reload-test-secret-0123456789\"\n[upstream]\nurls = []\n";
    let gate = Gate::builder().toml(base).toml(&nodes(&[&a])).start().await;
    let path = gate.dir.path().join("bpgate.toml");
    let original = std::fs::read_to_string(&path).unwrap();

    // A browser pinned to a, and a WebSocket through a.
    let mut c = Client::h1(&gate).await;
    let first = c.get("/x").await;
    let cookie = first
        .header("set-cookie")
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_string();
    let tls = tls_connect(&gate, &[b"http/1.1"]).await;
    let (mut ws, _) = tokio_tungstenite::client_async(
        format!("wss://localhost:{}/socket.io/", gate.https.port()),
        tls,
    )
    .await
    .unwrap();

    // Reload: a removed, b added.
    let without_a = original
        .replace(&a.url(), &b.url())
        .replace("name = \"a\"", "name = \"b\"");
    std::fs::write(&path, &without_a).unwrap();
    let (s, body) = gate.admin_post("/reload").await;
    assert_eq!(s, StatusCode::OK, "{body}");
    assert!(body.contains("upstream"), "{body}");
    for _ in 0..10 {
        let mut c = Client::h1(&gate).await;
        assert_eq!(
            c.get("/x").await.json()["node"],
            "b",
            "new sessions go to the added node"
        );
    }
    let mut pinned = Client::h1(&gate).await;
    let moved = pinned
        .call(
            get("/x")
                .header("cookie", &cookie)
                .body(full(Bytes::new()))
                .unwrap(),
        )
        .await;
    assert_eq!(
        moved.json()["node"],
        "b",
        "a client pinned to a removed node fails over"
    );
    assert!(
        moved.header("set-cookie").is_some(),
        "and gets a new cookie"
    );
    ws.send(Message::text("survived")).await.unwrap();
    assert_eq!(
        ws.next()
            .await
            .unwrap()
            .unwrap()
            .into_text()
            .unwrap()
            .as_str(),
        "survived",
        "the tunnel outlives the reload"
    );

    // An invalid file changes nothing.
    std::fs::write(&path, "[cors]\norgins = []\n").unwrap();
    let (s, body) = gate.admin_post("/reload").await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(body.contains("cors.orgins"), "{body}");
    let mut c = Client::h1(&gate).await;
    assert_eq!(c.get("/x").await.json()["node"], "b");

    // Restart-only settings are reported, not applied: with max_connections = 1 applied, a
    // second connection would wait in the backlog.
    let mut table: toml::Table = toml::from_str(&without_a).unwrap();
    table
        .entry("limits")
        .or_insert_with(|| toml::Value::Table(toml::Table::new()))
        .as_table_mut()
        .unwrap()
        .insert("max_connections".into(), toml::Value::Integer(1));
    std::fs::write(&path, toml::to_string(&table).unwrap()).unwrap();
    let (s, body) = gate.admin_post("/reload").await;
    assert_eq!(s, StatusCode::OK, "{body}");
    let report: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        report["config"]["restart_required"],
        serde_json::json!(["limits.max_connections"]),
        "{body}"
    );
    assert_eq!(report["config"]["applied"], serde_json::json!([]), "{body}");
    let mut held = Client::h1(&gate).await;
    assert_eq!(held.get("/x").await.status, StatusCode::OK);
    let second = tokio::time::timeout(Duration::from_secs(5), async {
        Client::h1(&gate).await.get("/x").await.status
    })
    .await;
    assert_eq!(
        second.ok(),
        Some(StatusCode::OK),
        "the running max_connections still applies"
    );
    drop(held);
    gate.stop().await;
}
