//! `GET /metrics` from a real gate under real traffic: the series the README suggests alerting
//! on move, each TLS handshake failure reason moves with a handshake that fails that way, a
//! connect-failure re-pin counts as `failover`, and the README's metrics list is exactly what
//! is exported.

use crate::support;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Response, StatusCode};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// `(name, labels, value)` of one sample line.
type Sample = (String, Vec<(String, String)>, f64);

/// Parses the exposition's sample lines (label values here never contain `,` or `"`).
fn parse(text: &str) -> Vec<Sample> {
    assert_eq!(text.lines().last(), Some("# EOF"), "{text}");
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| {
            let (nl, v) = l.rsplit_once(' ').unwrap();
            let (name, labels) = match nl.split_once('{') {
                None => (nl.to_string(), vec![]),
                Some((n, rest)) => (
                    n.to_string(),
                    rest.trim_end_matches('}')
                        .split(',')
                        .map(|kv| {
                            let (k, v) = kv.split_once('=').unwrap();
                            (k.to_string(), v.trim_matches('"').to_string())
                        })
                        .collect(),
                ),
            };
            (name, labels, v.parse().unwrap())
        })
        .collect()
}

/// The value of `name{labels}` (labels in any order); panics when absent.
fn value(s: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
    s.iter()
        .find(|(n, l, _)| {
            n == name
                && l.len() == labels.len()
                && labels
                    .iter()
                    .all(|(k, v)| l.iter().any(|(a, b)| a == k && b == v))
        })
        .unwrap_or_else(|| panic!("no sample {name}{labels:?}"))
        .2
}

async fn scrape(gate: &Gate) -> Vec<Sample> {
    let (s, text) = gate.admin_get("/metrics").await;
    assert_eq!(s, StatusCode::OK);
    parse(&text)
}

/// Polls `/metrics` until `f` holds (bounded); returns that scrape.
async fn scrape_until(gate: &Gate, what: &str, f: impl Fn(&[Sample]) -> bool) -> Vec<Sample> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let s = scrape(gate).await;
        if f(&s) {
            return s;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what} never showed in /metrics: {s:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A node that answers `?status=N` with that status, and 200 otherwise.
fn status_node() -> Handler {
    Arc::new(|req, _| {
        Box::pin(async move {
            let code = req
                .uri()
                .query()
                .and_then(|q| q.strip_prefix("status="))
                .and_then(|v| v.parse::<u16>().ok())
                .unwrap_or(200);
            Response::builder().status(code).body(full("ok")).unwrap()
        })
    })
}

/// Replaces `renders_a_real_gateway`'s hand-set counters: everything here is real traffic.
#[tokio::test]
async fn a_real_gateway_under_traffic() {
    init();
    let a = Node::start("a", status_node()).await;
    let b = Node::start("b", status_node()).await;
    let gate = Gate::builder()
        .toml(&format!(
            "[[upstream.nodes]]\nurl = \"{}\"\nname = \"a\"\n[[upstream.nodes]]\nurl = \"{}\"\nname = \"b\"\n[upstream]\nurls = []\n[health]\ninterval = \"300ms\"\ntimeout = \"2s\"\nrise = 1\nfall = 1\n[sticky]\nsecret = \"a-shared-secret-of-some-length\"\n[audit]\non_failure = \"continue\"",
            a.url(),
            b.url()
        ))
        .start()
        .await;
    assert!(eventually(Duration::from_secs(10), || gate.gw.generations.ready()).await);
    let s0 = scrape(&gate).await;
    for n in ["a", "b"] {
        assert_eq!(value(&s0, "bpgate_upstream_healthy", &[("node", n)]), 1.0);
    }
    let cls = |s: &[Sample], class: &str| {
        value(
            s,
            "bpgate_responses_total",
            &[("class", class), ("method", "GET")],
        )
    };

    let mut c = Client::h2(&gate).await;
    let first = c.get("/x").await;
    assert_eq!(first.status, StatusCode::OK);
    let cookie = first
        .header("set-cookie")
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_string();
    for q in ["200", "404", "500", "503"] {
        c.get(&format!("/x?status={q}")).await;
    }
    // A tampered cookie: forged (and a new pin).
    let mut forged = cookie.clone().into_bytes();
    let last = forged.len() - 2;
    forged[last] = if forged[last] == b'A' { b'B' } else { b'A' };
    let forged = String::from_utf8(forged).unwrap();
    let r = c
        .call(
            get("/x")
                .header("cookie", &forged)
                .body(full(Bytes::new()))
                .unwrap(),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    let r = c
        .call(
            get("/x")
                .header("cookie", &cookie)
                .body(full(Bytes::new()))
                .unwrap(),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);

    let s1 = scrape_until(&gate, "6 requests", |s| {
        value(s, "bpgate_requests_total", &[]) >= 7.0
    })
    .await;
    assert_eq!(value(&s1, "bpgate_requests_total", &[]), 7.0);
    assert_eq!(cls(&s1, "2xx") - cls(&s0, "2xx"), 4.0);
    assert_eq!(cls(&s1, "4xx") - cls(&s0, "4xx"), 1.0);
    assert_eq!(cls(&s1, "5xx") - cls(&s0, "5xx"), 2.0);
    let up5xx: f64 = ["a", "b"]
        .iter()
        .map(|n| {
            value(
                &s1,
                "bpgate_upstream_responses_total",
                &[("node", n), ("class", "5xx")],
            )
        })
        .sum();
    assert_eq!(up5xx, 2.0);
    let sticky = |s: &[Sample], o: &str| value(s, "bpgate_sticky_total", &[("outcome", o)]);
    assert_eq!(sticky(&s1, "forged"), 1.0);
    assert_eq!(sticky(&s1, "hit"), 1.0);
    // No cookie kept by this client: every other request was a new pin (the forged one too).
    assert_eq!(sticky(&s1, "new"), 6.0);
    assert_eq!(value(&s1, "bpgate_connections", &[("protocol", "h2")]), 1.0);
    assert_eq!(
        value(&s1, "bpgate_request_duration_seconds_count", &[]),
        7.0
    );
    assert!(value(&s1, "bpgate_audit_lines_total", &[]) >= 1.0);
    assert!(value(&s1, "bpgate_tls_certificate_expiry_timestamp_seconds", &[]) > 1.7e9);

    // A node dies: its health gauge drops, it is ejected once.
    b.kill().await;
    let s2 = scrape_until(&gate, "b unhealthy", |s| {
        value(s, "bpgate_upstream_healthy", &[("node", "b")]) == 0.0
    })
    .await;
    assert_eq!(value(&s2, "bpgate_upstream_healthy", &[("node", "a")]), 1.0);
    assert_eq!(
        value(&s2, "bpgate_upstream_ejections_total", &[("node", "b")]),
        1.0
    );

    // The audit disk fills up: write errors are counted.
    let file = gate.audit_dir.join("audit.jsonl");
    let errors = value(&s2, "bpgate_audit_write_errors_total", &[]);
    assert_eq!(errors, 0.0);
    std::fs::rename(&file, gate.audit_dir.join("saved.jsonl.bak")).unwrap();
    std::os::unix::fs::symlink("/dev/full", &file).unwrap();
    assert_eq!(gate.admin_post("/audit/reopen").await.0, StatusCode::OK);
    c.get("/while-full").await;
    let s3 = scrape_until(&gate, "an audit write error", |s| {
        value(s, "bpgate_audit_write_errors_total", &[]) > errors
    })
    .await;
    assert!(value(&s3, "bpgate_audit_write_errors_total", &[]) >= 1.0);
    std::fs::remove_file(&file).unwrap();
    assert!(
        eventually(Duration::from_secs(10), || gate
            .gw
            .shared()
            .audit
            .as_ref()
            .unwrap()
            .healthy())
        .await
    );
    gate.stop().await;
}

/// A pinned node that refuses the connection while still marked healthy: the request is
/// retried on another node and re-pinned. The audit line says `failover`; so must the metric.
#[tokio::test]
async fn connect_failure_repin_counts_as_failover() {
    init();
    let a = Node::start("a", echo()).await;
    let b = Node::start("b", echo()).await;
    let gate = Gate::builder()
        .toml(&format!(
            "[[upstream.nodes]]\nurl = \"{}\"\nname = \"a\"\n[[upstream.nodes]]\nurl = \"{}\"\nname = \"b\"\n[upstream]\nurls = []\n[health]\nenabled = false\n[sticky]\nfallback = \"none\"",
            a.url(),
            b.url()
        ))
        .start()
        .await;
    let mut c = Client::h1(&gate).await;
    let first = c.get("/x").await;
    let pinned = first
        .seen("x-node")
        .unwrap_or_else(|| first.json()["node"].as_str().unwrap().to_string());
    let cookie = first
        .header("set-cookie")
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_string();
    let s0 = scrape(&gate).await;
    let (victim, _other) = if pinned == "a" { (a, b) } else { (b, a) };
    victim.kill().await;
    let mut c = Client::h1(&gate).await;
    let r = c
        .call(
            get("/y")
                .header("cookie", &cookie)
                .body(full(Bytes::new()))
                .unwrap(),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_ne!(
        r.json()["node"].as_str().unwrap(),
        pinned,
        "retried elsewhere"
    );
    assert!(r.header("set-cookie").is_some(), "re-pinned");
    let lines = gate.audit_lines();
    let line = lines.iter().find(|l| l["path"] == "/y").unwrap();
    assert_eq!(line["sticky"], "failover", "{line}");
    let s1 = scrape(&gate).await;
    let d = |o: &str| {
        value(&s1, "bpgate_sticky_total", &[("outcome", o)])
            - value(&s0, "bpgate_sticky_total", &[("outcome", o)])
    };
    assert_eq!((d("failover"), d("hit"), d("new")), (1.0, 0.0, 0.0));
    gate.stop().await;
}

/// A ClientHello offering only TLS 1.0 and one RSA-kex suite, as an old client sends.
const TLS10_HELLO: [u8; 50] = {
    let mut h = [0u8; 50];
    let head = [
        0x16, 0x03, 0x01, 0x00, 0x2d, 0x01, 0x00, 0x00, 0x29, 0x03, 0x01,
    ];
    let mut i = 0;
    while i < head.len() {
        h[i] = head[i];
        i += 1;
    }
    // 32 bytes of random (zeros), then: session id length 0, suites length 2, AES128-SHA,
    // one compression method (null).
    let tail = [0x00, 0x00, 0x02, 0x00, 0x2f, 0x01, 0x00];
    let mut j = 0;
    while j < tail.len() {
        h[11 + 32 + j] = tail[j];
        j += 1;
    }
    h
};

#[tokio::test]
async fn each_handshake_failure_reason_moves_with_its_kind_of_failure() {
    init();
    let node = Node::start("n", echo()).await;
    let gate = Gate::builder()
        .upstream(node.url())
        .toml("[health]\nenabled = false\n[tls]\nhandshake_timeout = \"300ms\"")
        .start()
        .await;
    let reasons = [
        "timeout",
        "eof",
        "protocol",
        "incompatible",
        "certificate_rejected",
    ];
    let counts = |s: &[Sample]| -> Vec<f64> {
        reasons
            .iter()
            .map(|r| value(s, "bpgate_tls_handshake_failures_total", &[("reason", r)]))
            .collect()
    };
    let mut before = counts(&scrape(&gate).await);
    assert_eq!(before, vec![0.0; 5]);
    for (i, reason) in reasons.iter().enumerate() {
        let _keep = match *reason {
            // Connects and says nothing.
            "timeout" => Some(tokio::net::TcpStream::connect(gate.https).await.unwrap()),
            // Connects and hangs up before a ClientHello.
            "eof" => {
                drop(tokio::net::TcpStream::connect(gate.https).await.unwrap());
                None
            }
            // Plain HTTP to the HTTPS port.
            "protocol" => {
                let mut t = tokio::net::TcpStream::connect(gate.https).await.unwrap();
                t.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
                    .await
                    .unwrap();
                let mut sink = Vec::new();
                let _ =
                    tokio::time::timeout(Duration::from_secs(5), t.read_to_end(&mut sink)).await;
                None
            }
            // An old client: TLS 1.0 only.
            "incompatible" => {
                let mut t = tokio::net::TcpStream::connect(gate.https).await.unwrap();
                t.write_all(&TLS10_HELLO).await.unwrap();
                let mut sink = Vec::new();
                let _ =
                    tokio::time::timeout(Duration::from_secs(5), t.read_to_end(&mut sink)).await;
                // bpgate answered with a fatal protocol_version alert.
                assert_eq!(&sink[..1], &[0x15], "{sink:?}");
                None
            }
            // A client that does not trust the certificate (another CA): it sends unknown_ca.
            "certificate_rejected" => {
                let key = rcgen::KeyPair::generate().unwrap();
                let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
                ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
                ca.distinguished_name
                    .push(rcgen::DnType::CommonName, "some other CA");
                let mut roots = rustls::RootCertStore::empty();
                roots
                    .add(ca.self_signed(&key).unwrap().der().clone())
                    .unwrap();
                let cfg = rustls::ClientConfig::builder()
                    .with_root_certificates(roots)
                    .with_no_client_auth();
                let tcp = tokio::net::TcpStream::connect(gate.https).await.unwrap();
                let r = tokio_rustls::TlsConnector::from(Arc::new(cfg))
                    .connect(
                        rustls::pki_types::ServerName::try_from("localhost").unwrap(),
                        tcp,
                    )
                    .await;
                assert!(r.is_err(), "the client must refuse the certificate");
                None
            }
            _ => unreachable!(),
        };
        let after = counts(&scrape_until(&gate, reason, |s| counts(s)[i] > before[i]).await);
        let moved: Vec<&str> = reasons
            .iter()
            .zip(after.iter().zip(&before))
            .filter(|(_, (a, b))| a != b)
            .map(|(r, _)| *r)
            .collect();
        assert_eq!(moved, vec![*reason], "{before:?} -> {after:?}");
        assert_eq!(after[i] - before[i], 1.0, "{reason}");
        before = after;
    }
    // A good client is not counted as a failure.
    assert_eq!(
        Client::h1(&gate).await.get("/x").await.status,
        StatusCode::OK
    );
    assert_eq!(counts(&scrape(&gate).await), before);
    gate.stop().await;
}

/// The README's metrics table: name → (label names from the labels column, the whole row).
fn readme_metrics() -> BTreeMap<String, (BTreeSet<String>, String)> {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let start = readme
        .find("\n## Metrics")
        .expect("README has a Metrics section");
    let section = &readme[start + 1..];
    let end = section[3..]
        .find("\n## ")
        .map(|i| i + 3)
        .unwrap_or(section.len());
    let mut out = BTreeMap::new();
    for line in section[..end].lines() {
        // `| name | type | labels | meaning |`; the cells before the meaning hold no `|`.
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        let Some(name) = cells
            .get(1)
            .and_then(|c| c.strip_prefix('`'))
            .and_then(|c| c.strip_suffix('`'))
        else {
            continue;
        };
        if !name.starts_with("bpgate_") || cells.len() < 5 {
            continue;
        }
        let labels: BTreeSet<String> = cells[3]
            .split('`')
            .skip(1)
            .step_by(2)
            .map(String::from)
            .collect();
        out.insert(name.to_string(), (labels, line.to_string()));
    }
    out
}

/// Series names as they are queried (`_total` counters, histogram base names) with their label
/// names and values.
fn exported(text: &str) -> BTreeMap<String, BTreeMap<String, BTreeSet<String>>> {
    let histograms: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE ")?.strip_suffix(" histogram"))
        .collect();
    let mut out: BTreeMap<String, BTreeMap<String, BTreeSet<String>>> = BTreeMap::new();
    for (name, labels, _) in parse(text) {
        let base = histograms
            .iter()
            .find(|h| {
                ["_bucket", "_sum", "_count"]
                    .iter()
                    .any(|s| name == format!("{h}{s}"))
            })
            .map(|h| h.to_string())
            .unwrap_or(name);
        let e = out.entry(base).or_default();
        for (k, v) in labels.into_iter().filter(|(k, _)| k != "le") {
            e.entry(k).or_default().insert(v);
        }
    }
    out
}

#[tokio::test]
async fn readme_lists_every_exported_series_and_label_in_a_stable_order() {
    init();
    let node = Node::start("n", echo()).await;
    let gate = Gate::builder().upstream(node.url()).start().await;
    Client::h1(&gate).await.get("/x").await;
    let (_, first) = gate.admin_get("/metrics").await;
    let (_, second) = gate.admin_get("/metrics").await;
    let keys = |t: &str| -> Vec<(String, Vec<(String, String)>)> {
        parse(t).into_iter().map(|(n, l, _)| (n, l)).collect()
    };
    assert_eq!(
        keys(&first),
        keys(&second),
        "samples and labels in the same order every scrape"
    );
    let got = exported(&first);
    let documented = readme_metrics();
    assert_eq!(
        got.keys().collect::<Vec<_>>(),
        documented.keys().collect::<Vec<_>>(),
        "README Metrics table vs /metrics"
    );
    for (name, labels) in &got {
        let (names, row) = &documented[name];
        assert_eq!(
            &labels.keys().cloned().collect::<BTreeSet<_>>(),
            names,
            "labels of {name}"
        );
        // Every fixed label value is named in the row (`node` takes the configured names).
        for (label, values) in labels.iter().filter(|(l, _)| *l != "node") {
            for v in values {
                assert!(
                    row.contains(&format!("`{v}`")),
                    "{name}: {label}=\"{v}\" is not in the README row"
                );
            }
        }
    }
    gate.stop().await;
}
