//! The audit trail's guarantees under failure: clients that go away, a disk that fills part-way,
//! a writer that stalls, a process killed with SIGKILL. README "Audit trail", "What can be lost".

use crate::support;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use http::StatusCode;
use http_body_util::BodyExt;
use hyper_util::rt::{TokioExecutor, TokioIo};
use support::*;
use tokio::io::AsyncWriteExt;

/// A node that takes a while to answer (the client gives up first).
fn slow_node() -> Handler {
    Arc::new(|req, _| {
        Box::pin(async move {
            let _ = req.into_body().collect().await;
            tokio::time::sleep(Duration::from_secs(3)).await;
            http::Response::new(full("late"))
        })
    })
}

/// A node that streams 1,000 chunks of 1 KiB, 5 ms apart.
fn streaming_node() -> Handler {
    Arc::new(|_req, _| {
        Box::pin(async move {
            let stream = futures_util::stream::iter(0..1000).then(|_| async {
                tokio::time::sleep(Duration::from_millis(5)).await;
                Ok::<_, Box<dyn std::error::Error + Send + Sync>>(hyper::body::Frame::data(
                    Bytes::from(vec![b'x'; 1024]),
                ))
            });
            http::Response::new(BodyExt::boxed(http_body_util::StreamBody::new(stream)))
        })
    })
}

/// An HTTP/2 connection whose driving task the test can abort (closing the TCP connection).
async fn h2_conn(
    gate: &Gate,
) -> (
    hyper::client::conn::http2::SendRequest<BoxBody>,
    tokio::task::JoinHandle<()>,
) {
    let tls = tls_connect(gate, &[b"h2"]).await;
    let (tx, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
        .await
        .unwrap();
    let task = tokio::spawn(async move {
        let _ = conn.await;
    });
    (tx, task)
}

fn lines_for<'a>(lines: &'a [serde_json::Value], path: &str) -> Vec<&'a serde_json::Value> {
    lines.iter().filter(|l| l["path"] == path).collect()
}

#[tokio::test]
async fn a_client_that_leaves_before_the_response_head_still_gets_its_line() {
    init();
    let node = Node::start("slow", slow_node()).await;
    let gate = Gate::builder()
        .upstream(node.url())
        .toml("[health]\nenabled = false")
        .start()
        .await;
    let reached = |n: u64| {
        let r = node.requests.clone();
        async move {
            assert!(
                eventually(Duration::from_secs(5), || r.load(Ordering::Relaxed) >= n).await,
                "request {n} did not reach the node"
            );
        }
    };

    // HTTP/1.1: a POST with a body, then the connection closes.
    let mut tls = tls_connect(&gate, &[b"http/1.1"]).await;
    tls.write_all(b"POST /abort/h1 HTTP/1.1\r\nHost: localhost\r\nContent-Length: 5\r\n\r\nhello")
        .await
        .unwrap();
    tls.flush().await.unwrap();
    reached(1).await;
    drop(tls);

    // HTTP/2: the whole connection goes away.
    let (mut tx, conn) = h2_conn(&gate).await;
    let req = get("/abort/h2-close").body(full(Bytes::new())).unwrap();
    let resp = tokio::spawn(tx.send_request(req));
    reached(2).await;
    conn.abort();
    resp.abort();
    drop(tx);

    // HTTP/2: the stream is reset (RST_STREAM CANCEL), the connection stays.
    let (mut tx, conn) = h2_conn(&gate).await;
    let req = get("/abort/h2-reset").body(full(Bytes::new())).unwrap();
    let resp = tokio::spawn(tx.send_request(req));
    reached(3).await;
    resp.abort();

    let node_name = format!("127.0.0.1:{}", node.addr.port());
    let want = [
        ("/abort/h1", "HTTP/1.1", 5),
        ("/abort/h2-close", "HTTP/2", 0),
        ("/abort/h2-reset", "HTTP/2", 0),
    ];
    let all_written = eventually(Duration::from_secs(5), || {
        let lines = gate.audit_lines();
        want.iter()
            .all(|(p, _, _)| !lines_for(&lines, p).is_empty())
    })
    .await;
    let lines = gate.audit_lines();
    assert!(
        all_written,
        "a line per request that reached the node: {lines:?}"
    );
    for (path, version, bytes_in) in want {
        let l = lines_for(&lines, path);
        assert_eq!(l.len(), 1, "exactly one line for {path}: {l:?}");
        let l = l[0];
        assert_eq!(l["outcome"], "client_abort", "{l}");
        assert_eq!(l["upstream"], node_name.as_str(), "{l}");
        assert!(l["status"].is_null(), "no status was sent: {l}");
        assert_eq!(l["http_version"], version);
        assert_eq!(l["bytes_in"], bytes_in, "{l}");
        assert_eq!(l["bytes_out"], 0);
        assert!(l["duration_ms"].as_f64().unwrap() > 0.0);
    }
    // The reset stream left its connection usable.
    let a = tokio::time::timeout(
        Duration::from_secs(10),
        tx.send_request(get("/after-reset").body(full(Bytes::new())).unwrap()),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(a.status(), StatusCode::OK);
    conn.abort();
    gate.stop().await;
}

#[tokio::test]
async fn a_client_that_leaves_in_the_middle_of_the_body_gets_one_line_with_what_was_sent() {
    init();
    let node = Node::start("stream", streaming_node()).await;
    let gate = Gate::builder()
        .upstream(node.url())
        .toml("[health]\nenabled = false")
        .start()
        .await;
    // HTTP/1.1: the connection closes after the first chunk.
    {
        let mut c = Client::h1(&gate).await;
        let resp = c
            .send(get("/mid/h1").body(full(Bytes::new())).unwrap())
            .await
            .unwrap();
        let mut body = resp.into_body();
        body.frame().await.unwrap().unwrap();
    }
    // HTTP/2: the stream is reset after the first chunk.
    let (mut tx, conn) = h2_conn(&gate).await;
    let resp = tx
        .send_request(get("/mid/h2").body(full(Bytes::new())).unwrap())
        .await
        .unwrap();
    let mut body = resp.into_body();
    body.frame().await.unwrap().unwrap();
    drop(body);
    let node_name = format!("127.0.0.1:{}", node.addr.port());
    assert!(
        eventually(Duration::from_secs(10), || {
            let lines = gate.audit_lines();
            ["/mid/h1", "/mid/h2"]
                .iter()
                .all(|p| !lines_for(&lines, p).is_empty())
        })
        .await
    );
    let lines = gate.audit_lines();
    for path in ["/mid/h1", "/mid/h2"] {
        let l = lines_for(&lines, path);
        assert_eq!(l.len(), 1, "{l:?}");
        let l = l[0];
        assert_eq!(l["outcome"], "client_abort", "{l}");
        assert_eq!(l["status"], 200);
        assert_eq!(l["upstream"], node_name.as_str());
        let out = l["bytes_out"].as_u64().unwrap();
        assert!((1024..1000 * 1024).contains(&out), "{l}");
    }
    conn.abort();
    gate.stop().await;
}

// === the real binary ===

/// Every line of a file, parsed; panics on a line that is not one whole JSON object.
fn parse_trail(text: &str) -> Vec<serde_json::Value> {
    text.lines()
        .map(|l| {
            serde_json::from_str(l).unwrap_or_else(|e| panic!("not a whole JSON line ({e}): {l:?}"))
        })
        .collect()
}

fn ids(lines: &[serde_json::Value]) -> HashMap<String, usize> {
    let mut m = HashMap::new();
    for l in lines {
        if let Some(id) = l["request_id"].as_str() {
            *m.entry(id.to_string()).or_insert(0) += 1;
        }
    }
    m
}

/// GET on a fresh HTTP/1.1 client; (status, request id).
async fn one(c: &mut Client, path: &str) -> (StatusCode, String) {
    let a = tokio::time::timeout(Duration::from_secs(20), c.get(path))
        .await
        .unwrap_or_else(|_| panic!("{path} got no answer"));
    (a.status, a.header("x-request-id").unwrap().to_string())
}

fn prlimit_fsize(pid: u32, soft: &str) {
    let ok = std::process::Command::new("prlimit")
        .arg(format!("--pid={pid}"))
        .arg(format!("--fsize={soft}:unlimited"))
        .status()
        .expect("prlimit (util-linux) runs")
        .success();
    assert!(ok, "prlimit --fsize={soft}");
}

/// A write that the kernel cuts short (the file size limit, RLIMIT_FSIZE, is reached in the
/// middle of a line: the write returns what fitted, the next one fails with EFBIG) must be
/// resumed at the exact byte: no torn line, no line lost or repeated once the limit is lifted.
async fn partial_write_is_resumed(on_failure: &str) {
    init();
    let node = Node::start("n", echo()).await;
    let gate = BinGate::start(&node.url(), "", &format!("on_failure = \"{on_failure}\""));
    let file = gate.audit_dir.join("audit.jsonl");
    let mut c = gate.h1().await;
    let mut answered = Vec::new();
    for i in 0..3 {
        answered.push(one(&mut c, &format!("/before/{i}")).await);
    }
    let lines_in = |n: usize| {
        let f = file.clone();
        move || std::fs::read_to_string(&f).is_ok_and(|t| t.lines().count() >= n)
    };
    assert!(eventually(Duration::from_secs(5), lines_in(3)).await);
    let size = std::fs::metadata(&file).unwrap().len();
    // Room for 100 more bytes: less than any line, so the next write stops inside a line.
    prlimit_fsize(gate.pid(), &(size + 100).to_string());
    let during: Vec<(StatusCode, String)> = {
        let mut v = Vec::new();
        for i in 0..4 {
            v.push(one(&mut c, &format!("/during/{i}")).await);
        }
        v
    };
    assert_eq!(during[0].0, StatusCode::OK, "the request whose write fails");
    let statuses: Vec<StatusCode> = during[1..].iter().map(|d| d.0).collect();
    if on_failure == "block" {
        assert!(
            statuses
                .iter()
                .all(|s| *s == StatusCode::SERVICE_UNAVAILABLE),
            "block refuses while the trail fails: {statuses:?}"
        );
        let (s, body) = gate.admin_get("/readyz").await;
        assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    } else {
        assert!(
            statuses.iter().all(|s| *s == StatusCode::OK),
            "continue keeps serving: {statuses:?}"
        );
    }
    assert_eq!(
        std::fs::metadata(&file).unwrap().len(),
        size + 100,
        "the kernel took part of a line"
    );
    answered.extend(during);
    // Space returns.
    prlimit_fsize(gate.pid(), "unlimited");
    assert!(
        eventually(Duration::from_secs(15), || {
            std::fs::read_to_string(&file)
                .is_ok_and(|t| t.ends_with('\n') && t.lines().count() >= answered.len())
        })
        .await,
        "the queued lines were not written after the limit was lifted"
    );
    let mut ready = false;
    for _ in 0..50 {
        if gate.admin_get("/readyz").await.0 == StatusCode::OK {
            ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(ready, "ready again once the trail is writable");
    answered.push(one(&mut c, "/after").await);
    assert_eq!(answered.last().unwrap().0, StatusCode::OK);
    drop(c);
    let dir = gate.stop();
    let text = std::fs::read_to_string(dir.path().join("audit/audit.jsonl")).unwrap();
    let lines = parse_trail(&text);
    let seen = ids(&lines);
    for (status, id) in &answered {
        assert_eq!(
            seen.get(id),
            Some(&1),
            "{status} {id}: one line each\n{text}"
        );
    }
    assert_eq!(lines.len(), answered.len(), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_cut_short_by_the_file_size_limit_resumes_at_the_byte_block() {
    partial_write_is_resumed("block").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_cut_short_by_the_file_size_limit_resumes_at_the_byte_continue() {
    partial_write_is_resumed("continue").await;
}

/// `kill -9` under load: every request whose answer the client received completely has its
/// line in the file; after a restart on the same trail every line is whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_under_load_loses_no_answered_requests_line() {
    init();
    let node = Node::start("n", echo()).await;
    let mut gate = BinGate::start(&node.url(), "", "");
    let (https_ok, answered) = (
        Arc::new(AtomicU64::new(0)),
        Arc::new(Mutex::new(Vec::<String>::new())),
    );
    let mut tasks = Vec::new();
    for k in 0..4 {
        let mut c = if k == 3 {
            gate.h2().await
        } else {
            gate.h1().await
        };
        let (done, answered) = (https_ok.clone(), answered.clone());
        tasks.push(tokio::spawn(async move {
            for i in 0..500 {
                let Ok(resp) = c
                    .send(
                        get(&format!("/load/{k}/{i}"))
                            .body(full(Bytes::new()))
                            .unwrap(),
                    )
                    .await
                else {
                    return;
                };
                let id = resp
                    .headers()
                    .get("x-request-id")
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string);
                // Answered = the whole response arrived, end of stream included.
                let Ok(body) = resp.into_body().collect().await else {
                    return;
                };
                let _ = body;
                if let Some(id) = id {
                    answered.lock().unwrap().push(id);
                    done.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    assert!(
        eventually(Duration::from_secs(60), || https_ok.load(Ordering::Relaxed)
            >= 1000)
        .await,
        "load did not reach 1,000 answers"
    );
    gate.signal("KILL");
    for t in tasks {
        tokio::time::timeout(Duration::from_secs(30), t)
            .await
            .unwrap()
            .unwrap();
    }
    gate.wait(Duration::from_secs(10));
    let dir = gate.take_dir();
    let answered = answered.lock().unwrap().clone();
    assert!(
        answered.len() >= 1000 && answered.len() < 2000,
        "killed under load"
    );
    let file = dir.path().join("audit/audit.jsonl");
    let text = std::fs::read_to_string(&file).unwrap();
    // Whole lines (a killed write may have left part of one at the very end).
    let whole = &text[..text.rfind('\n').map_or(0, |i| i + 1)];
    let seen = ids(&parse_trail(whole));
    let lost: Vec<&String> = answered
        .iter()
        .filter(|id| !seen.contains_key(*id))
        .collect();
    assert!(
        lost.is_empty(),
        "{} of {} answered requests have no line after kill -9: {:?}",
        lost.len(),
        answered.len(),
        &lost[..lost.len().min(5)]
    );
    // Restarted on the same trail, bpgate leaves no torn line behind.
    let again = BinGate::start_in(dir, &node.url(), "", "");
    let mut c = again.h1().await;
    let (s, last) = one(&mut c, "/after-restart").await;
    assert_eq!(s, StatusCode::OK);
    drop(c);
    let dir = again.stop();
    let lines =
        parse_trail(&std::fs::read_to_string(dir.path().join("audit/audit.jsonl")).unwrap());
    let seen = ids(&lines);
    assert_eq!(seen.get(&last), Some(&1));
    assert!(answered.iter().all(|id| seen.get(id) == Some(&1)));
}

async fn ws_roundtrip<S>(ws: &mut tokio_tungstenite::WebSocketStream<S>, m: &str)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use futures_util::SinkExt;
    ws.send(tokio_tungstenite::tungstenite::Message::text(m.to_string()))
        .await
        .unwrap();
    let got = tokio::time::timeout(Duration::from_secs(5), ws.next())
        .await
        .expect("the tunnel answers")
        .unwrap()
        .unwrap();
    assert_eq!(got.into_text().unwrap().as_str(), m);
}

/// The audit file is a FIFO nobody reads: the writer thread is stuck in write(2). On a
/// one-thread runtime (`workers = 1`, production's shape), the admin API, TLS handshakes and
/// tunnels keep working; `/readyz` says not ready; with `block` new requests get 503 at once,
/// with `continue` they are served until `audit.queue` lines are held, then wait for room.
/// When the FIFO is read again every answered request's line comes out, once.
async fn stalled_writer(on_failure: &str) {
    use std::io::{Read, Write};
    init();
    let node = Node::start("n", echo()).await;
    let dir = tempfile::tempdir().unwrap();
    let audit = dir.path().join("audit");
    std::fs::create_dir_all(&audit).unwrap();
    let fifo = audit.join("audit.jsonl");
    assert!(std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap()
        .success());
    // Open for reading (and writing, so opening never blocks); nothing is read yet.
    let reader = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&fifo)
        .unwrap();
    let gate = BinGate::start_in(
        dir,
        &node.url(),
        "workers = 1",
        &format!("on_failure = \"{on_failure}\"\nqueue = 16"),
    );
    // A WebSocket session opened before the stall.
    let tls = gate.tls(&[b"http/1.1"]).await;
    let url = format!(
        "wss://localhost:{}/socket.io/?EIO=4&transport=websocket",
        gate.https.port()
    );
    let (mut ws, _) = tokio_tungstenite::client_async(url, tls).await.unwrap();
    ws_roundtrip(&mut ws, "before").await;

    let answered = Arc::new(Mutex::new(Vec::<(StatusCode, String)>::new()));
    // Fill the pipe (64 KiB) until the trail counts as stuck (block: a 503) or a request has
    // to wait for room (continue).
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut c = gate.h1().await;
    let filler = {
        let stop = stop.clone();
        tokio::spawn(async move {
            for i in 0..400 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let a = c.get(&format!("/fill/{i}")).await;
                let id = a.header("x-request-id").unwrap().to_string();
                let _ = tx.send((a.status, id));
                if a.status == StatusCode::SERVICE_UNAVAILABLE {
                    break;
                }
            }
            c
        })
    };
    let mut waiting = false;
    loop {
        match tokio::time::timeout(Duration::from_secs(6), rx.recv()).await {
            Ok(Some((status, id))) => {
                answered.lock().unwrap().push((status, id));
                if status == StatusCode::SERVICE_UNAVAILABLE {
                    break;
                }
            }
            Ok(None) => panic!("400 requests and the trail never stalled"),
            Err(_) => {
                // A request still waits: look at the rest of the process meanwhile.
                waiting = true;
                stop.store(true, Ordering::Relaxed);
                break;
            }
        }
    }
    let statuses: Vec<StatusCode> = answered.lock().unwrap().iter().map(|a| a.0).collect();
    if on_failure == "block" {
        assert_eq!(
            statuses.last(),
            Some(&StatusCode::SERVICE_UNAVAILABLE),
            "block refuses once the write is stuck"
        );
        // A new client is answered at once, too.
        let mut c2 = gate.h1().await;
        let a = tokio::time::timeout(Duration::from_secs(2), c2.get("/new-client"))
            .await
            .expect("a new client is answered during the stall");
        assert_eq!(a.status, StatusCode::SERVICE_UNAVAILABLE);
        answered
            .lock()
            .unwrap()
            .push((a.status, a.header("x-request-id").unwrap().to_string()));
    } else {
        assert!(waiting, "continue: a request waits once the queue is full");
        assert!(
            statuses.iter().all(|s| *s == StatusCode::OK) && statuses.len() > 16,
            "continue serves until the queue is full: {statuses:?}"
        );
    }
    // The runtime is not blocked: admin API, a fresh TLS handshake, the tunnel.
    let (s, _) = tokio::time::timeout(Duration::from_secs(2), gate.admin_get("/healthz"))
        .await
        .expect("/healthz answers during the stall");
    assert_eq!(s, StatusCode::OK);
    let (s, body) = tokio::time::timeout(Duration::from_secs(2), gate.admin_get("/readyz"))
        .await
        .expect("/readyz answers during the stall");
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["audit_blocked"], true, "{body}");
    let _tls = tokio::time::timeout(Duration::from_secs(2), gate.tls(&[b"h2"]))
        .await
        .expect("TLS handshakes go on");
    ws_roundtrip(&mut ws, "during").await;

    // Someone reads the FIFO again.
    let mut write_end = reader.try_clone().unwrap();
    let drained = std::thread::spawn(move || {
        let mut r = reader;
        let mut all = Vec::new();
        let mut buf = vec![0u8; 1 << 16];
        while !all.ends_with(b"END\n") {
            let n = r.read(&mut buf).unwrap();
            all.extend_from_slice(&buf[..n]);
        }
        all.truncate(all.len() - 4);
        all
    });
    stop.store(true, Ordering::Relaxed);
    if waiting {
        let (status, id) = tokio::time::timeout(Duration::from_secs(20), rx.recv())
            .await
            .expect("the waiting request is served once there is room")
            .unwrap();
        assert_eq!(status, StatusCode::OK);
        answered.lock().unwrap().push((status, id));
    }
    let mut c = tokio::time::timeout(Duration::from_secs(20), filler)
        .await
        .unwrap()
        .unwrap();
    while let Ok(x) = rx.try_recv() {
        answered.lock().unwrap().push(x);
    }
    let mut ready = false;
    for _ in 0..100 {
        if gate.admin_get("/readyz").await.0 == StatusCode::OK {
            ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(ready);
    let (s, id) = one(&mut c, "/after").await;
    assert_eq!(s, StatusCode::OK);
    answered.lock().unwrap().push((s, id));
    drop(c);
    drop(ws);
    let _dir = gate.stop();
    write_end.write_all(b"END\n").unwrap();
    let text = String::from_utf8(drained.join().unwrap()).unwrap();
    let seen = ids(&parse_trail(&text));
    let answered = answered.lock().unwrap().clone();
    let unique: HashSet<&String> = answered.iter().map(|a| &a.1).collect();
    assert_eq!(unique.len(), answered.len());
    for (status, id) in &answered {
        assert_eq!(seen.get(id), Some(&1), "{status} {id}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_writer_never_blocks_the_runtime_block() {
    stalled_writer("block").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_writer_never_blocks_the_runtime_continue() {
    stalled_writer("continue").await;
}

#[tokio::test]
async fn every_durability_setting_answers_and_writes_the_line() {
    init();
    // 300 KB answers for /big (streamed in several frames, the last one held for the line),
    // the echo otherwise.
    let e = echo();
    let node = Node::start(
        "n",
        Arc::new(move |req: http::Request<hyper::body::Incoming>, cx| {
            if req.uri().path() == "/big" {
                Box::pin(async move {
                    let _ = req.into_body().collect().await;
                    http::Response::new(full(vec![b'y'; 300_000]))
                })
            } else {
                e(req, cx)
            }
        }),
    )
    .await;
    for durability in ["batched", "written", "synced"] {
        let gate = Gate::builder()
            .upstream(node.url())
            .toml(&format!(
                "[health]\nenabled = false\n[audit]\ndurability = \"{durability}\""
            ))
            .start()
            .await;
        let mut c = Client::h2(&gate).await;
        let small = c.get("/small").await;
        let big = c
            .call(post("/big").body(full(vec![b'x'; 300_000])).unwrap())
            .await;
        let head = c
            .call(
                get("/head")
                    .method("HEAD")
                    .body(full(Bytes::new()))
                    .unwrap(),
            )
            .await;
        for a in [&small, &big, &head] {
            assert_eq!(a.status, StatusCode::OK, "{durability}");
        }
        assert_eq!(big.body.len(), 300_000);
        let lines = gate.audit_lines();
        for (path, a) in [("/small", &small), ("/big", &big)] {
            let l = lines_for(&lines, path);
            assert_eq!(l.len(), 1, "{durability} {path}");
            assert_eq!(
                l[0]["bytes_out"],
                a.body.len() as u64,
                "{durability} {path}"
            );
            assert_eq!(l[0]["outcome"], "ok");
        }
        assert_eq!(lines_for(&lines, "/head").len(), 1);
        gate.stop().await;
    }
}
