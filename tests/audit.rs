//! The audit trail: complete under load, across rotation, with users, visitors and tunnels.

use crate::support;

use std::collections::HashSet;

use bytes::Bytes;
use futures_util::StreamExt;
use http::StatusCode;
use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_thousand_requests_five_thousand_lines_across_a_rotation() {
    init();
    let node = Node::start("n", echo()).await;
    let gate = Gate::builder()
        .upstream(node.url())
        .toml("[health]\nenabled = false")
        .start()
        .await;
    let mut tasks = Vec::new();
    for i in 0..100 {
        let mut c = if i % 2 == 0 {
            Client::h1(&gate).await
        } else {
            Client::h2(&gate).await
        };
        tasks.push(tokio::spawn(async move {
            let mut ids = Vec::new();
            for j in 0..50 {
                let body = vec![b'x'; (i * 50 + j) % 300];
                let a = c
                    .call(post(&format!("/api/{i}/{j}")).body(full(body)).unwrap())
                    .await;
                assert_eq!(a.status, StatusCode::OK);
                ids.push((
                    a.header("x-request-id").unwrap().to_string(),
                    a.body.len(),
                    (i * 50 + j) % 300,
                ));
            }
            ids
        }));
        if i == 50 {
            // Rotate while requests are in flight.
            let sink = gate.gw.shared().audit.clone().unwrap();
            tokio::task::spawn_blocking(move || sink.rotate());
        }
    }
    let mut expected = Vec::new();
    for t in tasks {
        expected.extend(t.await.unwrap());
    }
    let lines = gate.audit_lines();
    assert_eq!(
        lines.len(),
        5000,
        "one line per request, none lost or split"
    );
    let ids: HashSet<&str> = lines
        .iter()
        .map(|l| l["request_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), 5000, "request ids are unique");
    let by_id: std::collections::HashMap<&str, &serde_json::Value> = lines
        .iter()
        .map(|l| (l["request_id"].as_str().unwrap(), l))
        .collect();
    for (id, out, inb) in &expected {
        let l = by_id[id.as_str()];
        assert_eq!(l["status"], 200);
        assert_eq!(l["bytes_out"], *out as u64);
        assert_eq!(l["bytes_in"], *inb as u64);
        assert_eq!(l["outcome"], "ok");
        assert_eq!(
            l["upstream"],
            "127.0.0.1:".to_string() + &node.addr.port().to_string()
        );
    }
    let files = std::fs::read_dir(&gate.audit_dir).unwrap().count();
    assert!(files >= 2, "the rotation produced a second file");
    gate.stop().await;
}

fn jwt(secret: &str, email: &str, exp: u64) -> String {
    #[derive(serde::Serialize)]
    struct C<'a> {
        email: &'a str,
        strategy: &'a str,
        aud: &'a str,
        #[serde(rename = "isSuperAdmin")]
        super_admin: bool,
        exp: u64,
    }
    jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &C {
            email,
            strategy: "default",
            aud: "collaborators",
            super_admin: true,
            exp,
        },
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

#[tokio::test]
async fn users_from_bearer_and_tokens_never_written() {
    init();
    let node = Node::start("n", echo()).await;
    let gate = Gate::builder()
        .upstream(node.url())
        .env("BPGATE_JWT_SECRET", "app-secret")
        .start()
        .await;
    let soon = bpgate::cluster::unix_now() + 3600;
    let cases = [
        (
            "authorization",
            format!("Bearer {}", jwt("app-secret", "ok@x.io", soon)),
            "/a",
            Some("ok@x.io"),
            "jwt",
            None,
        ),
        (
            "authorization",
            format!("Bearer {}", jwt("forged", "evil@x.io", soon)),
            "/b",
            None,
            "jwt_invalid",
            Some("evil@x.io"),
        ),
        (
            "authorization",
            format!("Bearer {}", jwt("app-secret", "old@x.io", 1000)),
            "/c",
            None,
            "jwt_expired",
            Some("old@x.io"),
        ),
        (
            "authorization",
            format!("bearer {} x", jwt("app-secret", "lower@x.io", soon)),
            "/d",
            Some("lower@x.io"),
            "jwt",
            None,
        ),
    ];
    let mut tokens = Vec::new();
    for (h, v, path, _, _, _) in &cases {
        tokens.push(v.clone());
        let mut c = Client::h1(&gate).await;
        c.call(
            get(path)
                .header(*h, v.as_str())
                .body(full(Bytes::new()))
                .unwrap(),
        )
        .await;
    }
    let mut c = Client::h1(&gate).await;
    c.get("/e?token=sekrit&visitorId=v").await;
    let lines = gate.audit_lines();
    for (_, _, path, user, source, claimed) in &cases {
        let l = lines.iter().find(|l| l["path"] == *path).unwrap();
        assert_eq!(l["user"].as_str(), *user, "{path}");
        assert_eq!(l["user_source"], *source, "{path}");
        assert_eq!(l["claimed_user"].as_str(), *claimed, "{path}");
    }
    let anon = lines.iter().find(|l| l["path"] == "/e").unwrap();
    assert!(anon["user"].is_null() && anon["user_source"].is_null());
    assert_eq!(anon["query"], "token=REDACTED&visitorId=v");
    let raw = std::fs::read_to_string(gate.audit_dir.join("audit.jsonl")).unwrap();
    for t in tokens {
        let token = t
            .trim_start_matches("Bearer ")
            .trim_start_matches("bearer ")
            .split(' ')
            .next()
            .unwrap()
            .to_string();
        assert!(
            !raw.contains(&token),
            "a token was written to the audit trail"
        );
    }
    assert!(!raw.contains("sekrit"));
    gate.stop().await;
}

#[tokio::test]
async fn visitor_id_and_websocket_open_and_close_lines() {
    init();
    let node = Node::start("n", echo()).await;
    let gate = Gate::builder().upstream(node.url()).start().await;
    websocket_session(
        &gate,
        "/socket.io/?EIO=4&transport=websocket&visitorId=V123abc",
    )
    .await;
    let lines = gate.audit_lines();
    let open = lines.iter().find(|l| l["status"] == 101).unwrap();
    assert_eq!(open["visitor_id"], "V123abc");
    let close = lines.iter().find(|l| l["event"] == "tunnel_close").unwrap();
    assert_eq!(close["request_id"], open["request_id"]);
    // RFC 6455: after the close handshake the server drops TCP first.
    assert_eq!(close["closed_by"], "upstream");
    assert!(close["bytes_in"].as_u64().unwrap() > 5 && close["bytes_out"].as_u64().unwrap() > 5);
    gate.stop().await;
}

#[tokio::test]
async fn hostile_header_bytes_cannot_forge_a_line_and_refusals_are_recorded() {
    init();
    let dead = dead_addr().await;
    let gate = Gate::builder()
        .upstream(format!("http://{dead}"))
        .toml("[health]\nenabled = false")
        .start()
        .await;
    let mut c = Client::h1(&gate).await;
    let ua = http::HeaderValue::from_bytes(b"x\",\"user\":\"admin@evil\xff\t\"}").unwrap();
    let a = c
        .call(
            get("/q")
                .header("user-agent", ua)
                .body(full(Bytes::new()))
                .unwrap(),
        )
        .await;
    assert_eq!(a.status, StatusCode::BAD_GATEWAY);
    let lines = gate.audit_lines();
    assert_eq!(lines.len(), 1);
    let l = &lines[0];
    assert!(l["user"].is_null(), "forged a user field: {l}");
    assert!(l["user_agent"]
        .as_str()
        .unwrap()
        .starts_with("x\",\"user\""));
    assert_eq!(l["status"], 502);
    assert_eq!(l["outcome"], "upstream_error");
    gate.stop().await;
}

#[tokio::test]
async fn client_abort_is_marked() {
    init();
    let node = Node::start(
        "slow",
        std::sync::Arc::new(|_req, _| {
            Box::pin(async move {
                let stream = futures_util::stream::iter(0..1000).then(|_| async {
                    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
                    Ok::<_, Box<dyn std::error::Error + Send + Sync>>(hyper::body::Frame::data(
                        Bytes::from(vec![0u8; 1024]),
                    ))
                });
                http::Response::new(http_body_util::BodyExt::boxed(
                    http_body_util::StreamBody::new(stream),
                ))
            })
        }),
    )
    .await;
    let gate = Gate::builder().upstream(node.url()).start().await;
    let mut c = Client::h1(&gate).await;
    let resp = c
        .send(get("/stream").body(full(Bytes::new())).unwrap())
        .await
        .unwrap();
    let mut body = resp.into_body();
    let _ = http_body_util::BodyExt::frame(&mut body).await;
    drop(body);
    drop(c);
    let ok = eventually(std::time::Duration::from_secs(5), || {
        gate.audit_lines().iter().any(|l| l["path"] == "/stream")
    })
    .await;
    assert!(ok);
    let lines = gate.audit_lines();
    assert_eq!(
        lines.iter().find(|l| l["path"] == "/stream").unwrap()["outcome"],
        "client_abort"
    );
    gate.stop().await;
}

#[tokio::test]
async fn tail_follows_the_trail_across_rotations_and_size_cap_keeps_lines_whole() {
    init();
    let node = Node::start("n", echo()).await;
    let gate = Gate::builder()
        .upstream(node.url())
        .toml("[health]\nenabled = false\n[audit]\nmax_size = \"4k\"\nmax_files = 3")
        .start()
        .await;
    // `tail -F` from the start, as an operator would run it; what it prints is collected.
    let file = gate.audit_dir.join("audit.jsonl");
    let mut tail = tokio::process::Command::new("tail")
        .args(["-F", "-n", "+1", "-s", "0.1"])
        .arg(&file)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let followed = std::sync::Arc::new(std::sync::Mutex::new(HashSet::<String>::new()));
    let reader = {
        use tokio::io::AsyncBufReadExt;
        let mut lines = tokio::io::BufReader::new(tail.stdout.take().unwrap()).lines();
        let followed = followed.clone();
        tokio::spawn(async move {
            while let Ok(Some(l)) = lines.next_line().await {
                if let Some(p) = serde_json::from_str::<serde_json::Value>(&l)
                    .ok()
                    .and_then(|v| v["path"].as_str().map(str::to_string))
                {
                    followed.lock().unwrap().insert(p);
                }
            }
        })
    };
    // One request at a time, each line written before the next: every rotation (a 4k file
    // holds about 8 lines) happens while tail follows the file it renames, as in production
    // where a rotation is rare. Two renames faster than tail's poll would hide the middle file
    // from any `tail -F`, which is not what this test is about.
    let mut c = Client::h1(&gate).await;
    for i in 0..60 {
        let path = format!("/r/{i}");
        c.get(&path).await;
        gate.gw.shared().audit.as_ref().unwrap().flush();
        assert!(
            eventually(std::time::Duration::from_secs(10), || followed
                .lock()
                .unwrap()
                .contains(&path))
            .await,
            "tail -F missed {path}"
        );
    }
    let _ = tail.start_kill();
    let _ = tail.wait().await;
    reader.abort();
    // Size cap: several files, each under the cap, every line whole; max_files pruned the rest.
    let rotated: Vec<_> = std::fs::read_dir(&gate.audit_dir)
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_str()
                .unwrap()
                .starts_with("audit-")
        })
        .collect();
    assert!(!rotated.is_empty() && rotated.len() <= 3, "{rotated:?}");
    for p in rotated {
        let text = std::fs::read_to_string(&p).unwrap();
        assert!(
            text.len() <= 4096,
            "{} is {} bytes",
            p.display(),
            text.len()
        );
        for l in text.lines() {
            serde_json::from_str::<serde_json::Value>(l).unwrap();
        }
    }
    gate.stop().await;
}

#[cfg(unix)]
#[tokio::test]
async fn disk_full_blocks_requests_then_recovers_without_losing_a_line() {
    init();
    let node = Node::start("n", echo()).await;
    let gate = Gate::builder()
        .upstream(node.url())
        .toml("[health]\nenabled = false")
        .start()
        .await;
    let file = gate.audit_dir.join("audit.jsonl");
    let mut c = Client::h1(&gate).await;
    assert_eq!(c.get("/before").await.status, StatusCode::OK);
    gate.gw.shared().audit.as_ref().unwrap().flush();
    let before = std::fs::read_to_string(&file).unwrap();
    // Every write now fails with ENOSPC, as on a full disk.
    std::fs::rename(&file, gate.audit_dir.join("saved.jsonl.bak")).unwrap();
    std::os::unix::fs::symlink("/dev/full", &file).unwrap();
    // The writer still holds the old file open, as after an external logrotate move: reopen.
    assert_eq!(gate.admin_post("/audit/reopen").await.0, StatusCode::OK);
    assert_eq!(
        c.get("/during-1").await.status,
        StatusCode::OK,
        "the request that hits the full disk"
    );
    let blocked = eventually(std::time::Duration::from_secs(5), || {
        !gate.gw.shared().audit.as_ref().unwrap().healthy()
    })
    .await;
    assert!(blocked, "the writer must notice the failed write");
    let refused = c.get("/during-2").await;
    assert_eq!(
        refused.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "on_failure = block refuses unaudited work"
    );
    // A load balancer sees it too: not ready while requests are refused.
    let (s, body) = gate.admin_get("/readyz").await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["audit_blocked"], true, "{body}");
    let (_, m) = gate.admin_get("/metrics").await;
    let errors: f64 = m
        .lines()
        .find_map(|l| l.strip_prefix("bpgate_audit_write_errors_total "))
        .unwrap_or_else(|| panic!("no bpgate_audit_write_errors_total in\n{m}"))
        .parse()
        .unwrap();
    assert!(errors >= 1.0, "write errors are counted: {errors}");
    // Space comes back: the retried lines land, requests flow again.
    std::fs::remove_file(&file).unwrap();
    assert!(
        eventually(std::time::Duration::from_secs(10), || gate
            .gw
            .shared()
            .audit
            .as_ref()
            .unwrap()
            .healthy())
        .await
    );
    assert_eq!(gate.admin_get("/readyz").await.0, StatusCode::OK);
    assert_eq!(c.get("/after").await.status, StatusCode::OK);
    let lines = gate.audit_lines();
    let paths: Vec<&str> = lines.iter().filter_map(|l| l["path"].as_str()).collect();
    for p in ["/during-1", "/during-2", "/after"] {
        assert!(paths.contains(&p), "{p} missing from {paths:?}");
    }
    assert!(before.contains("/before"));
    gate.stop().await;
}
