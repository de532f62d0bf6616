//! The process's life as an operator drives it, through the real binary: SIGTERM drains and
//! flushes the audit trail (every answered request's line is in the file after exit), the drain
//! deadline cuts what still runs (and writes its line), and production mode refuses each insecure
//! setup it claims to unless `--allow-insecure` says otherwise, loudly. Waits are conditions with
//! deadlines; a deadline missed kills the process by its pid and fails the test.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::BodyExt;

use crate::support::binary::{bpgate, client, run_to_exit, Proc, Trust};
use crate::support::{self, echo, read_audit_dir, BoxBody, Handler, Node, NodeCtx, Pki};

const START: Duration = Duration::from_secs(20);
const STOP: Duration = Duration::from_secs(20);

/// The binary on ephemeral loopback ports with a test certificate, its trail in `dir/audit`.
fn gate_cmd(dir: &std::path::Path, pki: &Pki, upstreams: &str) -> std::process::Command {
    let mut c = bpgate();
    c.current_dir(dir)
        .env("BPGATE_TLS_CERT", &pki.cert)
        .env("BPGATE_TLS_KEY", &pki.key)
        .env("BPGATE_LISTEN", "127.0.0.1:0")
        .env("BPGATE_ADMIN_LISTEN", "127.0.0.1:0")
        .env("BPGATE_UPSTREAMS", upstreams)
        .env("BPGATE_AUDIT_DIR", dir.join("audit"));
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_flushes_every_answered_requests_line() {
    support::init();
    let node = Node::start("n1", echo()).await;
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new();
    // Lines wait up to 2 s in memory before the writer takes them: only the shutdown flush can
    // put the last ones in the file before the process exits.
    let cfg = dir.path().join("bpgate.toml");
    std::fs::write(&cfg, "[audit]\nflush_interval = \"2s\"\n").unwrap();
    let mut p = Proc::spawn(
        gate_cmd(dir.path(), &pki, &node.url())
            .arg("--config")
            .arg(&cfg),
    );
    let (https, _) = tokio::task::block_in_place(|| p.listening(START));
    let trust = Trust::Ca(pki.ca_pem.clone());
    let mut ids = HashSet::new();
    for conn in 0..10 {
        let mut c = client(https, &trust, conn % 2 == 1).await;
        for i in 0..10 {
            let a = c.get(&format!("/flush/{conn}/{i}")).await;
            assert_eq!(a.status, 200);
            ids.insert(a.header("x-request-id").unwrap().to_string());
        }
    }
    assert_eq!(ids.len(), 100);
    p.signal("TERM");
    let end = tokio::task::block_in_place(|| p.wait_exit(STOP));
    assert!(end.status.success(), "{}", end.stderr);
    let lines = read_audit_dir(&dir.path().join("audit"));
    let written: HashSet<String> = lines
        .iter()
        .filter(|l| l["path"].as_str().is_some_and(|p| p.starts_with("/flush/")))
        .map(|l| l["request_id"].as_str().unwrap().to_string())
        .collect();
    let missing: Vec<_> = ids.difference(&written).collect();
    assert!(
        missing.is_empty(),
        "{} of 100 answered requests have no line after SIGTERM, e.g. {:?}",
        missing.len(),
        &missing[..missing.len().min(3)]
    );
    assert_eq!(lines.len(), 100, "one line per request, no more");
}

/// A node that answers `/slow` with a first chunk and then holds the body open, never answers
/// `/hang` (a long poll waiting for its event), and counts the requests of either it has started.
fn slow_node(started: std::sync::Arc<std::sync::atomic::AtomicUsize>) -> Handler {
    std::sync::Arc::new(
        move |req: http::Request<hyper::body::Incoming>, cx: NodeCtx| {
            let started = started.clone();
            Box::pin(async move {
                let path = req.uri().path().to_string();
                if path != "/slow" && path != "/hang" {
                    return echo()(req, cx).await;
                }
                started.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                if path == "/hang" {
                    // A long poll: the head never comes.
                    std::future::pending::<()>().await;
                }
                let frames = futures_util::stream::once(async {
                    Ok::<_, std::convert::Infallible>(hyper::body::Frame::data(Bytes::from_static(
                        b"first chunk\n",
                    )))
                })
                .chain(futures_util::stream::pending());
                let body: BoxBody = http_body_util::StreamBody::new(frames)
                    .map_err(|e| match e {})
                    .boxed();
                http::Response::new(body)
            })
        },
    )
}

use futures_util::StreamExt;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_drain_deadline_cuts_running_requests_and_writes_their_lines() {
    support::init();
    let started = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let node = Node::start("n1", slow_node(started.clone())).await;
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new();
    let mut p = Proc::spawn(
        gate_cmd(dir.path(), &pki, &node.url())
            .env("BPGATE_DRAIN_TIMEOUT", "1s")
            .env("BPGATE_LOG", "info"),
    );
    let (https, _) = tokio::task::block_in_place(|| p.listening(START));
    let trust = Trust::Ca(pki.ca_pem.clone());
    // One download in progress on HTTP/1.1 and one on HTTP/2, each past its first chunk.
    let mut bodies = Vec::new();
    for h2 in [false, true] {
        let mut c = client(https, &trust, h2).await;
        let resp = c
            .send(support::get("/slow").body(support::full("")).unwrap())
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        let mut body = resp.into_body();
        let first = tokio::time::timeout(START, body.frame())
            .await
            .expect("the first chunk in time")
            .unwrap()
            .unwrap();
        assert_eq!(first.into_data().unwrap(), "first chunk\n");
        bodies.push((c, body));
    }
    // And one long poll whose node has not answered its head yet.
    let mut c = client(https, &trust, false).await;
    let hang = tokio::spawn(async move {
        c.send(support::get("/hang").body(support::full("")).unwrap())
            .await
            .map(|r| r.status())
    });
    let waiting = Instant::now();
    while started.load(std::sync::atomic::Ordering::SeqCst) < 3 {
        assert!(waiting.elapsed() < START, "the long poll reached the node");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    let signalled = Instant::now();
    p.signal("TERM");
    // Each download is cut: its body ends in an error, not in a clean end. The long poll's
    // connection closes without an answer.
    for (_c, mut body) in bodies {
        let end = tokio::time::timeout(STOP, async {
            loop {
                match body.frame().await {
                    Some(Ok(_)) => continue,
                    Some(Err(_)) => return true,
                    None => return false,
                }
            }
        })
        .await
        .expect("the download is cut within the drain deadline");
        assert!(end, "a cut download must not look complete");
    }
    let polled = tokio::time::timeout(STOP, hang)
        .await
        .expect("the long poll ends within the drain deadline")
        .unwrap();
    assert!(
        polled.is_err(),
        "a request cut before its head has no answer to give: {polled:?}"
    );
    let end = tokio::task::block_in_place(|| p.wait_exit(STOP));
    let took = signalled.elapsed();
    assert!(end.status.success(), "{}", end.stderr);
    assert!(
        took >= Duration::from_secs(1),
        "bpgate waited for the drain deadline ({took:?})"
    );
    assert!(
        end.stderr.contains("drain timeout reached"),
        "{}",
        end.stderr
    );
    assert!(
        !end.stderr.contains("after the writer stopped"),
        "a line came too late for the trail: {}",
        end.stderr
    );
    let lines = read_audit_dir(&dir.path().join("audit"));
    let slow: Vec<_> = lines.iter().filter(|l| l["path"] == "/slow").collect();
    assert_eq!(slow.len(), 2, "one line per cut request: {lines:?}");
    for l in slow {
        assert_eq!(l["status"], 200, "{l}");
        assert_eq!(l["outcome"], "client_abort", "{l}");
        assert!(
            l["reason"]
                .as_str()
                .is_some_and(|r| r.contains("drain deadline")),
            "the line says bpgate cut it: {l}"
        );
        assert_eq!(l["bytes_out"], 12, "{l}");
    }
    let hung: Vec<_> = lines.iter().filter(|l| l["path"] == "/hang").collect();
    assert_eq!(hung.len(), 1, "the cut long poll has its line: {lines:?}");
    let l = hung[0];
    assert_eq!(l["outcome"], "client_abort", "{l}");
    assert!(l["status"].is_null(), "no status was sent: {l}");
    assert!(
        l["reason"]
            .as_str()
            .is_some_and(|r| r.contains("drain deadline")),
        "the line says bpgate cut it: {l}"
    );
}

/// A configuration file with `extra`, for the settings that have no environment variable.
fn config_file(dir: &std::path::Path, extra: &str) -> std::path::PathBuf {
    let p = dir.join("bpgate.toml");
    std::fs::write(&p, extra).unwrap();
    p
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn production_mode_refuses_each_insecure_setup_and_allow_insecure_overrides_loudly() {
    support::init();
    let node = Node::start("n1", echo()).await;
    let pki = Pki::new();
    let expired = Pki::with_validity(-30, -1);
    let one = node.url();
    let two = format!("{},http://127.0.0.1:9", node.url());

    // Each case: (what, extra env, config file contents, expected text).
    type Case<'a> = (&'a str, Vec<(&'a str, String)>, &'a str, &'a str);
    let cases: Vec<Case> = vec![
        (
            "the development certificate",
            vec![],
            "",
            "bpgate is serving its development certificate",
        ),
        (
            "an expired certificate",
            vec![
                ("BPGATE_TLS_CERT", expired.cert.display().to_string()),
                ("BPGATE_TLS_KEY", expired.key.display().to_string()),
            ],
            "",
            "the certificate expired on",
        ),
        (
            "several nodes without a sticky secret",
            vec![("BPGATE_UPSTREAMS", two.clone())],
            "",
            "2 nodes and sticky.enabled, but no sticky.secret",
        ),
        (
            "no audit trail",
            vec![],
            "[audit]\nenabled = false\n",
            "audit.enabled=false",
        ),
        (
            "CORS off",
            vec![],
            "[cors]\nenabled = false\n",
            "cors.enabled=false",
        ),
        (
            "base path strip",
            vec![
                ("EXTERNAL_URL", "https://bot.example.com/botpress".into()),
                ("BPGATE_BASE_PATH_MODE", "strip".into()),
            ],
            "",
            "base_path.mode = strip cannot serve Botpress v12",
        ),
        (
            "an open admin listener without a token",
            vec![("BPGATE_ADMIN_LISTEN", "0.0.0.0:0".into())],
            "",
            "is not loopback and admin.token is unset",
        ),
    ];
    for (what, env, file, want) in &cases {
        let dir = tempfile::tempdir().unwrap();
        let mut c = gate_cmd(dir.path(), &pki, &one);
        c.env("BPGATE_MODE", "production");
        if *what == "the development certificate" {
            // A development certificate at the default paths, as a development run leaves it.
            let (cert, key) = bpgate::tls::generate_self_signed(
                &["localhost", "127.0.0.1"],
                bpgate::tls::DEV_CERT_CN,
            )
            .unwrap();
            std::fs::create_dir_all(dir.path().join("certs")).unwrap();
            std::fs::write(dir.path().join(bpgate::config::DEV_CERT_PATH), cert).unwrap();
            std::fs::write(dir.path().join(bpgate::config::DEV_KEY_PATH), key).unwrap();
            c.env_remove("BPGATE_TLS_CERT").env_remove("BPGATE_TLS_KEY");
        }
        for (k, v) in env {
            c.env(k, v);
        }
        if !file.is_empty() {
            c.arg("--config").arg(config_file(dir.path(), file));
        }
        let end = tokio::task::block_in_place(|| run_to_exit(&mut c, START));
        assert_eq!(end.status.code(), Some(1), "{what}: {}", end.stderr);
        assert_eq!(
            end.stderr
                .matches("production mode refuses to start")
                .count(),
            1,
            "{what}: {}",
            end.stderr
        );
        assert!(
            end.stderr.contains(want),
            "{what}: missing {want:?} in {}",
            end.stderr
        );
        assert!(end.stderr.contains("fix:"), "{what}: {}", end.stderr);
    }

    // Production never generates a certificate, --allow-insecure or not.
    for allow in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let mut c = gate_cmd(dir.path(), &pki, &one);
        c.env("BPGATE_MODE", "production")
            .env_remove("BPGATE_TLS_CERT")
            .env_remove("BPGATE_TLS_KEY");
        if allow {
            c.arg("--allow-insecure");
        }
        let end = tokio::task::block_in_place(|| run_to_exit(&mut c, START));
        assert_eq!(end.status.code(), Some(1), "{}", end.stderr);
        assert!(end.stderr.contains("does not exist"), "{}", end.stderr);
        assert!(
            !dir.path().join("certs").exists(),
            "no certificate generated"
        );
    }

    // A production setup without failures starts: the refusals above are each one's own.
    let dir = tempfile::tempdir().unwrap();
    let mut p = Proc::spawn(gate_cmd(dir.path(), &pki, &one).env("BPGATE_MODE", "production"));
    tokio::task::block_in_place(|| p.listening(START));
    assert!(!p.stderr().contains("POSTURE FAILURES"), "{}", p.stderr());
    p.signal("TERM");
    let end = tokio::task::block_in_place(|| p.wait_exit(STOP));
    assert!(end.status.success(), "{}", end.stderr);

    // --allow-insecure starts despite several failures, and names each one loudly.
    let dir = tempfile::tempdir().unwrap();
    let cfg = config_file(dir.path(), "[cors]\nenabled = false\n");
    let mut p = Proc::spawn(
        gate_cmd(dir.path(), &pki, &two)
            .env("BPGATE_MODE", "production")
            .env("BPGATE_TLS_CERT", &expired.cert)
            .env("BPGATE_TLS_KEY", &expired.key)
            .arg("--config")
            .arg(&cfg)
            .arg("--allow-insecure"),
    );
    let (https, _) = tokio::task::block_in_place(|| p.listening(START));
    let err = p.stderr();
    let warning = err
        .lines()
        .position(|l| {
            l.contains(" WARN ")
                && l.contains("PRODUCTION MODE WITH POSTURE FAILURES (--allow-insecure)")
        })
        .unwrap_or_else(|| panic!("no loud warning: {err}"));
    let listed = err
        .lines()
        .skip(warning)
        .take(12)
        .collect::<Vec<_>>()
        .join("\n");
    for want in [
        "the certificate expired on",
        "but no sticky.secret",
        "cors.enabled=false",
    ] {
        assert!(
            listed.contains(want),
            "missing {want:?} in the warning:\n{listed}"
        );
    }
    // And it serves (the expired certificate is still the one served: the client accepts it).
    let tls = crate::support::binary::tls_to(https, &Trust::Insecure, &[b"http/1.1"], None).await;
    let mut c = support::Client::over(tls).await;
    let a = c.get("/version").await;
    assert_eq!(a.status, 200);
    p.signal("TERM");
    let end = tokio::task::block_in_place(|| p.wait_exit(STOP));
    assert!(end.status.success(), "{}", end.stderr);
}
