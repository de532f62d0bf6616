//! `bpgate demo` as a new user runs it: the real binary on overridden ports, then what its banner
//! says to try, done with real clients (HTTP/1.1 and HTTP/2 over TLS like `curl -k`, the sticky
//! cookie, a drain, the socket.io polling handshake, a WebSocket echo and an upgrade), and the
//! audit lines it prints. Every wait is bounded; the process is ended by its pid.

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;

use crate::support::binary::{bpgate, client, run_to_exit, tls_to, Proc, Trust};
use crate::support::{self, admin_call, full, get, Client};

const START: Duration = Duration::from_secs(30);
const STEP: Duration = Duration::from_secs(10);

/// The address in the banner line that starts with `label`.
fn banner_url(banner: &str, label: &str, scheme: &str) -> SocketAddr {
    let line = banner
        .lines()
        .find(|l| l.trim_start().starts_with(label))
        .unwrap_or_else(|| panic!("no {label} line in the banner:\n{banner}"));
    let rest = &line[line.find(scheme).unwrap() + scheme.len()..];
    rest[..rest.find('/').unwrap()].parse().unwrap()
}

/// `bpgate_node=…` from a `Set-Cookie` header.
fn sticky_cookie(a: &support::Answer) -> String {
    let v = a
        .header("set-cookie")
        .unwrap_or_else(|| panic!("no Set-Cookie: {:?}", a.headers));
    assert!(
        v.starts_with("bpgate_node=") && v.contains("Secure") && v.contains("HttpOnly"),
        "{v}"
    );
    v.split(';').next().unwrap().to_string()
}

async fn get_with(c: &mut Client, path: &str, cookie: Option<&str>) -> support::Answer {
    let mut b = get(path);
    if let Some(k) = cookie {
        b = b.header("cookie", k);
    }
    c.call(b.body(full("")).unwrap()).await
}

async fn ws_connect(
    https: SocketAddr,
    query: &str,
    cookie: Option<&str>,
) -> tokio_tungstenite::WebSocketStream<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let tls = tls_to(https, &Trust::Insecure, &[b"http/1.1"], None).await;
    let mut req = format!("wss://localhost:{}/socket.io/?{query}", https.port())
        .into_client_request()
        .unwrap();
    if let Some(k) = cookie {
        req.headers_mut().insert("cookie", k.parse().unwrap());
    }
    let (ws, resp) = tokio::time::timeout(STEP, tokio_tungstenite::client_async(req, tls))
        .await
        .expect("WebSocket handshake in time")
        .unwrap();
    assert_eq!(resp.status(), 101);
    ws
}

async fn next_text<S>(ws: &mut tokio_tungstenite::WebSocketStream<S>) -> String
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    loop {
        let m = tokio::time::timeout(STEP, ws.next())
            .await
            .expect("a WebSocket message in time")
            .expect("the socket is open")
            .unwrap();
        if let Message::Text(t) = m {
            return t.as_str().to_string();
        }
    }
}

/// Closes a WebSocket as a browser tab does: the close handshake, then the connection.
async fn close<S>(mut ws: tokio_tungstenite::WebSocketStream<S>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    ws.close(None).await.unwrap();
    let _ = tokio::time::timeout(STEP, async { while ws.next().await.is_some() {} }).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_does_what_its_banner_says() {
    support::init();
    let cwd = tempfile::tempdir().unwrap();
    let mut p = Proc::spawn(bpgate().current_dir(cwd.path()).args([
        "demo",
        "--listen",
        "127.0.0.1:0",
        "--admin-listen",
        "127.0.0.1:0",
    ]));
    let (banner, _) = tokio::task::block_in_place(|| {
        p.wait_for("the banner", START, |o, _| o.contains("Audit trail"))
    });
    let https = banner_url(&banner, "HTTPS", "https://");
    let admin = banner_url(&banner, "admin", "http://");
    assert_ne!(https.port(), 0);
    for want in [
        "demo-a = http://127.0.0.1:",
        "instead of 127.0.0.1:3000",
        "audit.dir",
        &format!("curl -vk https://{https}/version"),
        "-H 'Upgrade: websocket'",
        &format!("curl -X POST http://{admin}/upstreams/demo-a/drain"),
        "cargo run --release",
    ] {
        assert!(
            banner.contains(want),
            "missing {want:?} in the banner:\n{banner}"
        );
    }
    let scratch = banner
        .lines()
        .find_map(|l| {
            l.trim()
                .strip_prefix("The demo's files in ")
                .and_then(|r| r.split(' ').next())
        })
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| panic!("no scratch directory in:\n{banner}"));
    assert!(scratch.join("audit/audit.jsonl").is_file());

    // TLS and HTTP/1.1: Botpress's /version, bpgate's headers.
    let trust = Trust::Insecure;
    let mut h1 = client(https, &trust, false).await;
    let a = h1.get("/version").await;
    assert_eq!((a.status.as_u16(), a.text().as_str()), (200, "12.31.10"));
    assert_eq!(a.version, http::Version::HTTP_11);
    assert!(a.header("strict-transport-security").is_some());

    // HTTP/2: the echo API, and the sticky cookie that pins the node.
    let mut h2 = client(https, &trust, true).await;
    let a = h2.get("/api/echo").await;
    assert_eq!(a.status, 200);
    assert_eq!(a.version, http::Version::HTTP_2);
    let cookie = sticky_cookie(&a);
    let pinned = a.json()["node"].as_str().unwrap().to_string();
    assert_eq!(a.header("x-demo-node"), Some(pinned.as_str()));
    assert_eq!(a.json()["headers"]["x-forwarded-proto"][0], "https");
    for c in [&mut h1, &mut h2] {
        for _ in 0..3 {
            let a = get_with(c, "/api/echo", Some(&cookie)).await;
            assert_eq!(
                a.json()["node"],
                pinned.as_str(),
                "the cookie pins the node"
            );
        }
    }
    // Both nodes answer: drained, the pinned node keeps its cookie, new clients go to the other.
    let other = if pinned == "demo-a" {
        "demo-b"
    } else {
        "demo-a"
    };
    let (s, body) = admin_call(admin, "POST", &format!("/upstreams/{pinned}/drain")).await;
    assert_eq!(s, 200, "{body}");
    let a = h1.get("/api/echo").await;
    assert_eq!(a.json()["node"], other, "a client without a cookie");
    let a = get_with(&mut h1, "/api/echo", Some(&cookie)).await;
    assert_eq!(a.json()["node"], pinned.as_str(), "a pinned client stays");
    let (s, _) = admin_call(admin, "POST", &format!("/upstreams/{pinned}/undrain")).await;
    assert_eq!(s, 200);

    // socket.io long polling through bpgate, pinned by the cookie (HTTP/2, as browsers poll).
    let q = "EIO=4&transport=polling";
    let a = get_with(&mut h2, &format!("/socket.io/?{q}"), Some(&cookie)).await;
    let open = a.text();
    assert!(open.starts_with("0{\"sid\":\""), "{open}");
    let sid = serde_json::from_str::<serde_json::Value>(&open[1..]).unwrap()["sid"]
        .as_str()
        .unwrap()
        .to_string();
    let poll = format!("/socket.io/?{q}&sid={sid}");
    // As a browser sends it: the page's own origin.
    let authority = format!("localhost:{}", https.port());
    let a = h2
        .call(
            http::Request::post(format!("https://{authority}{poll}"))
                .header("host", &authority)
                .header("origin", format!("https://{authority}"))
                .header("cookie", &cookie)
                .body(full("40"))
                .unwrap(),
        )
        .await;
    assert_eq!((a.status.as_u16(), a.text().as_str()), (200, "ok"));
    let a = get_with(&mut h2, &poll, Some(&cookie)).await;
    let packets = a.text();
    assert!(
        packets.starts_with(&format!("40{{\"sid\":\"{sid}\"}}\u{1e}42[\"welcome\""))
            && packets.contains(&format!("\"node\":\"{pinned}\"")),
        "{packets}"
    );
    // A poll waits; the WebSocket upgrade's probe ends it with a noop, then the switch.
    let waiting = tokio::spawn({
        let (poll, cookie) = (poll.clone(), cookie.clone());
        async move {
            let mut c = client(https, &Trust::Insecure, true).await;
            get_with(&mut c, &poll, Some(&cookie)).await.text()
        }
    });
    let mut up = ws_connect(
        https,
        &format!("EIO=4&transport=websocket&sid={sid}"),
        Some(&cookie),
    )
    .await;
    up.send(Message::text("2probe")).await.unwrap();
    assert_eq!(next_text(&mut up).await, "3probe");
    let ended = tokio::time::timeout(STEP, waiting)
        .await
        .expect("the pending poll ends at the probe")
        .unwrap();
    assert_eq!(ended, "6");
    up.send(Message::text("5")).await.unwrap();
    up.send(Message::text("42[\"echo\",\"over the upgrade\"]"))
        .await
        .unwrap();
    let echo = next_text(&mut up).await;
    assert!(
        echo.contains("\"data\":\"over the upgrade\"")
            && echo.contains("\"transport\":\"websocket\""),
        "{echo}"
    );
    close(up).await;

    // A WebSocket-only session: open packet, connect, echo.
    let mut ws = ws_connect(https, "EIO=4&transport=websocket", None).await;
    let open = next_text(&mut ws).await;
    assert!(open.starts_with("0{\"sid\":\""), "{open}");
    ws.send(Message::text("40")).await.unwrap();
    assert!(next_text(&mut ws).await.starts_with("40{\"sid\":"));
    assert!(next_text(&mut ws).await.starts_with("42[\"welcome\""));
    ws.send(Message::text("42[\"echo\",\"hello\"]"))
        .await
        .unwrap();
    let echo = next_text(&mut ws).await;
    assert!(
        echo.starts_with("42[\"echo\",{") && echo.contains("\"data\":\"hello\""),
        "{echo}"
    );
    close(ws).await;

    // The demo page: self-contained.
    let a = h1.get("/").await;
    assert_eq!(a.status, 200);
    assert!(a.header("content-type").unwrap().starts_with("text/html"));
    let page = a.text();
    assert!(page.contains("<script") && page.contains("socket.io/?EIO=4"));
    assert!(
        !page.contains("src=") && !page.contains("href=") && !page.contains("@import"),
        "no external assets"
    );

    // The audit trail in the terminal, pretty: these requests, with their node.
    let (out, _) = tokio::task::block_in_place(|| {
        p.wait_for("the audit lines on stdout", STEP, |o, _| {
            o.lines().any(|l| l.contains(" 200 GET     /version "))
                && o.lines()
                    .filter(|l| {
                        l.contains(" 101 GET     /socket.io/") && l.contains("tunnel closed by")
                    })
                    .count()
                    == 2
        })
    });
    let echo_line = out
        .lines()
        .find(|l| l.contains(" 200 GET     /api/echo "))
        .unwrap();
    assert!(
        echo_line.contains("127.0.0.1")
            && (echo_line.contains("demo-a") || echo_line.contains("demo-b")),
        "{echo_line}"
    );
    assert!(
        !out.contains("\u{1b}["),
        "no colour when stdout is not a terminal"
    );

    // SIGTERM: a clean exit that removes the demo's files and wrote nothing where it ran.
    p.signal("TERM");
    let end = tokio::task::block_in_place(|| p.wait_exit(START));
    assert!(end.status.success(), "{}", end.stderr);
    assert!(!scratch.exists(), "{} left behind", scratch.display());
    let left: Vec<_> = std::fs::read_dir(cwd.path()).unwrap().collect();
    assert!(
        left.is_empty(),
        "the demo wrote into its working directory: {left:?}"
    );
}

#[test]
fn the_demo_on_a_busy_port_says_how_to_move_it() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let cwd = tempfile::tempdir().unwrap();
    let end = run_to_exit(
        bpgate().current_dir(cwd.path()).args([
            "demo",
            "--listen",
            &addr,
            "--admin-listen",
            "127.0.0.1:0",
        ]),
        START,
    );
    assert_eq!(end.status.code(), Some(1), "{}", end.stderr);
    assert_eq!(
        end.stderr
            .matches(&format!("cannot listen on {addr}"))
            .count(),
        1,
        "{}",
        end.stderr
    );
    assert!(
        end.stderr.contains("--listen 127.0.0.1:8444"),
        "{}",
        end.stderr
    );
    drop(taken);
}
