//! A headless Chromium driven over the Chrome DevTools Protocol (a WebSocket; tokio-tungstenite
//! is already a dev-dependency), enough to open a page and evaluate expressions in it.

use std::io::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Chromium's binary: `BPGATE_TEST_CHROMIUM`, else Debian's `/usr/bin/chromium`. `None` after
/// saying `SKIPPED` on the terminal (past the harness's capture); under `CI=true` a missing
/// browser fails the test instead: CI must not go green without it (`.ci/run` installs it).
pub fn chromium_or_skip() -> Option<PathBuf> {
    let candidates: Vec<PathBuf> = match std::env::var_os("BPGATE_TEST_CHROMIUM") {
        Some(p) => vec![PathBuf::from(p)],
        None => vec![
            "/usr/bin/chromium".into(),
            "/usr/bin/chromium-browser".into(),
        ],
    };
    if let Some(p) = candidates.into_iter().find(|p| p.is_file()) {
        return Some(p);
    }
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "Chromium is not installed under CI=true (apt-get install chromium; .ci/run does), so the status page test did not run"
    );
    let _ = writeln!(
        std::io::stderr(),
        "SKIPPED: Chromium not found (apt-get install chromium, or set BPGATE_TEST_CHROMIUM); the status page browser test did not run"
    );
    None
}

/// A headless Chromium with its own empty profile; killed (by its pid) when dropped.
pub struct Browser {
    child: tokio::process::Child,
    ws: Ws,
    next: u64,
    _profile: tempfile::TempDir,
}

impl Browser {
    pub async fn launch(bin: &PathBuf) -> Browser {
        let profile = tempfile::tempdir().unwrap();
        let child = tokio::process::Command::new(bin)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--remote-debugging-port=0",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("about:blank")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
        // Chromium writes its DevTools port and browser path here once it listens.
        let port_file = profile.path().join("DevToolsActivePort");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        let endpoint = loop {
            if let Ok(t) = std::fs::read_to_string(&port_file) {
                let mut l = t.lines();
                if let (Some(port), Some(path)) = (l.next(), l.next()) {
                    break format!("ws://127.0.0.1:{port}{path}");
                }
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "Chromium did not open its DevTools port within 30 s"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let (ws, _) = tokio_tungstenite::connect_async(endpoint.as_str())
            .await
            .unwrap_or_else(|e| panic!("DevTools WebSocket {endpoint}: {e}"));
        Browser {
            child,
            ws,
            next: 0,
            _profile: profile,
        }
    }

    /// One DevTools command; events in between are skipped.
    pub async fn call(&mut self, session: Option<&str>, method: &str, params: Value) -> Value {
        self.next += 1;
        let id = self.next;
        let mut msg = json!({ "id": id, "method": method, "params": params });
        if let Some(s) = session {
            msg["sessionId"] = s.into();
        }
        self.ws.send(Message::text(msg.to_string())).await.unwrap();
        let reply = tokio::time::timeout(Duration::from_secs(30), async {
            while let Some(m) = self.ws.next().await {
                let Ok(Message::Text(t)) = m else { continue };
                let v: Value = serde_json::from_str(t.as_str()).unwrap();
                if v["id"].as_u64() == Some(id) {
                    return v;
                }
            }
            panic!("DevTools connection closed")
        })
        .await
        .unwrap_or_else(|_| panic!("no answer to {method} within 30 s"));
        assert!(reply.get("error").is_none(), "{method}: {reply}");
        reply["result"].clone()
    }

    /// Opens `url` in a new tab; returns the session to evaluate in.
    pub async fn open(&mut self, url: &str) -> String {
        let t = self
            .call(None, "Target.createTarget", json!({ "url": url }))
            .await;
        let target = t["targetId"].as_str().unwrap().to_string();
        let a = self
            .call(
                None,
                "Target.attachToTarget",
                json!({ "targetId": target, "flatten": true }),
            )
            .await;
        a["sessionId"].as_str().unwrap().to_string()
    }

    /// Evaluates `expr` in the page and returns its value (JSON-serialisable values only).
    pub async fn eval(&mut self, session: &str, expr: &str) -> Value {
        let r = self
            .call(
                Some(session),
                "Runtime.evaluate",
                json!({ "expression": expr, "returnByValue": true }),
            )
            .await;
        assert!(r.get("exceptionDetails").is_none(), "{expr}: {r}");
        r["result"]["value"].clone()
    }

    /// Asks Chromium to quit, and kills it (by its pid) if it has not within 10 s.
    pub async fn close(mut self) {
        self.next += 1;
        let msg = json!({ "id": self.next, "method": "Browser.close", "params": {} });
        let _ = self.ws.send(Message::text(msg.to_string())).await;
        if tokio::time::timeout(Duration::from_secs(10), self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.start_kill();
            let _ = self.child.wait().await;
        }
    }
}
