//! A stand-in Botpress node for `bpgate demo`: a small HTTP/1.1 server on loopback that answers
//! what a first look at bpgate needs, and says which node it is on every answer
//! (`X-Demo-Node`):
//!
//! - `GET /`: the demo page (one self-contained HTML file, no external assets);
//! - `GET /version`, `GET /status`: Botpress's probes (`/status` is what bpgate's health check
//!   asks by default);
//! - `/api/echo`, any method: the request as the node received it, as JSON;
//! - `/socket.io/`: enough of engine.io v4 and socket.io v4 for `curl` and a browser: the
//!   polling handshake (`0{"sid":…}`), `40` connect, long polls with pings, the WebSocket
//!   transport (directly, or as an upgrade with the `2probe`/`3probe`/`5` exchange), and an
//!   `echo` event answered with the node's name;
//! - anything else: `404`, as Botpress answers unknown paths.
//!
//! When bpgate starts shutting down (`stop`), open sessions are closed (engine.io `1`), so
//! browsers' long polls and WebSockets end and the drain does not wait for them.

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio_tungstenite::tungstenite::protocol::{Message, Role, WebSocketConfig};
use tokio_util::sync::CancellationToken;

/// What a stand-in says it runs (Botpress's `/version` answers the bare version).
pub const BOTPRESS_VERSION: &str = "12.31.10";
const PING_INTERVAL: Duration = Duration::from_secs(25);
const PING_TIMEOUT: Duration = Duration::from_secs(20);
/// engine.io's default `maxPayload`; also the largest body `/api/echo` reads.
const MAX_PAYLOAD: usize = 1_000_000;
/// Sessions kept at once; a session no transport used for this long is forgotten.
const MAX_SESSIONS: usize = 10_000;
const SESSION_IDLE: Duration = Duration::from_secs(60);
/// engine.io v4 separates the packets of one polling payload with a record separator.
const SEPARATOR: char = '\u{1e}';

const PAGE: &str = include_str!("page.html");

/// One stand-in node.
pub struct StandIn {
    pub name: String,
    sessions: Mutex<HashMap<String, Arc<Session>>>,
    stop: CancellationToken,
}

/// One engine.io session.
struct Session {
    sid: String,
    /// Packets waiting for the next long poll.
    queue: Mutex<VecDeque<String>>,
    ready: Notify,
    /// Moved to WebSocket: polls end and packets go over the socket.
    upgraded: AtomicBool,
    last_seen: Mutex<Instant>,
}

impl Session {
    fn push(&self, packets: Vec<String>) {
        if packets.is_empty() {
            return;
        }
        self.queue
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend(packets);
        self.ready.notify_one();
    }

    fn take(&self) -> Vec<String> {
        self.queue
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain(..)
            .collect()
    }

    fn touch(&self) {
        *self.last_seen.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
    }
}

type Resp = Response<Full<Bytes>>;

impl StandIn {
    pub fn new(name: &str, stop: CancellationToken) -> Arc<StandIn> {
        Arc::new(StandIn {
            name: name.to_string(),
            sessions: Mutex::new(HashMap::new()),
            stop,
        })
    }

    /// Serves `listener` until the runtime ends (connections in progress included: bpgate may
    /// still forward to the node while it drains).
    pub async fn serve(self: Arc<Self>, listener: TcpListener) {
        loop {
            let stream = match listener.accept().await {
                Ok((s, _)) => s,
                Err(e) => {
                    tracing::debug!(node = %self.name, error = %e, "demo node accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let node = self.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req| {
                    let node = node.clone();
                    async move { Ok::<_, Infallible>(node.handle(req).await) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .with_upgrades()
                    .await;
            });
        }
    }

    async fn handle(self: Arc<Self>, req: Request<Incoming>) -> Resp {
        let path = req.uri().path().to_string();
        let mut resp = match (req.method(), path.as_str()) {
            (&Method::GET | &Method::HEAD, "/" | "/index.html") => {
                let page = PAGE.replace("{{NODE}}", &self.name);
                reply(StatusCode::OK, "text/html; charset=utf-8", page)
            }
            (&Method::GET | &Method::HEAD, "/version") => reply(
                StatusCode::OK,
                "text/plain; charset=utf-8",
                BOTPRESS_VERSION,
            ),
            (&Method::GET | &Method::HEAD, "/status") => json(
                StatusCode::OK,
                &serde_json::json!({ "status": "up", "node": self.name }),
            ),
            (_, "/api/echo") => self.echo(req).await,
            (_, p) if p == "/socket.io" || p.starts_with("/socket.io/") => {
                self.clone().engine_io(req).await
            }
            _ => json(
                StatusCode::NOT_FOUND,
                &serde_json::json!({ "statusCode": 404, "message": "Not Found", "node": self.name }),
            ),
        };
        if let Ok(v) = self.name.parse() {
            resp.headers_mut().insert("x-demo-node", v);
        }
        resp
    }

    /// The request as this node received it: what bpgate forwarded.
    async fn echo(&self, req: Request<Incoming>) -> Resp {
        let (parts, body) = req.into_parts();
        let body = match Limited::new(body, MAX_PAYLOAD).collect().await {
            Ok(b) => b.to_bytes(),
            Err(_) => {
                return json(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    &serde_json::json!({ "error": "body over 1 MB", "node": self.name }),
                )
            }
        };
        let mut headers = serde_json::Map::new();
        for (k, v) in &parts.headers {
            let v = serde_json::Value::String(String::from_utf8_lossy(v.as_bytes()).into_owned());
            match headers.get_mut(k.as_str()) {
                Some(serde_json::Value::Array(a)) => a.push(v),
                _ => {
                    headers.insert(k.as_str().to_string(), serde_json::Value::Array(vec![v]));
                }
            }
        }
        let shown = &body[..body.len().min(1024)];
        json(
            StatusCode::OK,
            &serde_json::json!({
                "node": self.name,
                "method": parts.method.as_str(),
                "path": parts.uri.path(),
                "query": parts.uri.query().unwrap_or(""),
                "headers": headers,
                "body_bytes": body.len(),
                "body": String::from_utf8_lossy(shown),
            }),
        )
    }

    // === engine.io ===

    async fn engine_io(self: Arc<Self>, req: Request<Incoming>) -> Resp {
        let q = Query::parse(req.uri().query().unwrap_or(""));
        if q.eio.as_deref() != Some("4") {
            return eio_error(5, "Unsupported protocol version");
        }
        match (q.transport.as_deref(), q.sid) {
            (Some("polling"), None) if req.method() == Method::GET => self.handshake(),
            (Some("polling"), Some(sid)) => {
                let Some(s) = self.session(&sid) else {
                    return eio_error(1, "Session ID unknown");
                };
                match *req.method() {
                    Method::GET => self.long_poll(&s).await,
                    Method::POST => self.receive(&s, req).await,
                    _ => eio_error(2, "Bad handshake method"),
                }
            }
            (Some("websocket"), sid) => {
                let session = match sid {
                    Some(sid) => match self.session(&sid) {
                        Some(s) => Some(s),
                        None => return eio_error(1, "Session ID unknown"),
                    },
                    None => None,
                };
                self.websocket(req, session)
            }
            _ => eio_error(0, "Transport unknown"),
        }
    }

    /// engine.io's open packet, `sid` first as people expect to read it, plus (not engine.io's)
    /// the node's name for whoever reads `curl` output.
    fn open_packet(&self, sid: &str, upgrades: &[&str]) -> String {
        format!(
            r#"0{{"sid":{},"upgrades":{},"pingInterval":{},"pingTimeout":{},"maxPayload":{},"node":{}}}"#,
            serde_json::Value::from(sid),
            serde_json::Value::from(upgrades.to_vec()),
            PING_INTERVAL.as_millis(),
            PING_TIMEOUT.as_millis(),
            MAX_PAYLOAD,
            serde_json::Value::from(self.name.as_str()),
        )
    }

    fn new_session(&self) -> Option<Arc<Session>> {
        let mut all = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        all.retain(|_, s| {
            s.upgraded.load(Ordering::Relaxed)
                || s.last_seen
                    .lock()
                    .map(|t| t.elapsed() < SESSION_IDLE)
                    .unwrap_or(false)
        });
        if all.len() >= MAX_SESSIONS {
            return None;
        }
        let s = Arc::new(Session {
            sid: random_id(),
            queue: Mutex::new(VecDeque::new()),
            ready: Notify::new(),
            upgraded: AtomicBool::new(false),
            last_seen: Mutex::new(Instant::now()),
        });
        all.insert(s.sid.clone(), s.clone());
        Some(s)
    }

    fn session(&self, sid: &str) -> Option<Arc<Session>> {
        let s = self
            .sessions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(sid)
            .cloned()?;
        s.touch();
        Some(s)
    }

    fn forget(&self, sid: &str) {
        self.sessions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(sid);
    }

    fn handshake(&self) -> Resp {
        match self.new_session() {
            Some(s) => text(self.open_packet(&s.sid, &["websocket"])),
            None => eio_error(3, "Too many sessions"),
        }
    }

    /// A long poll: the packets waiting, or a ping after the interval, or `1` at shutdown.
    async fn long_poll(&self, s: &Session) -> Resp {
        let deadline = tokio::time::Instant::now() + PING_INTERVAL;
        loop {
            let packets = s.take();
            if !packets.is_empty() {
                return text(join(&packets));
            }
            if s.upgraded.load(Ordering::Relaxed) {
                return text("6".to_string());
            }
            tokio::select! {
                _ = s.ready.notified() => {}
                _ = tokio::time::sleep_until(deadline) => return text("2".to_string()),
                _ = self.stop.cancelled() => {
                    self.forget(&s.sid);
                    return text("1".to_string());
                }
            }
        }
    }

    /// Packets a client posts (polling transport).
    async fn receive(&self, s: &Session, req: Request<Incoming>) -> Resp {
        let body = match Limited::new(req.into_body(), MAX_PAYLOAD).collect().await {
            Ok(b) => b.to_bytes(),
            Err(_) => return eio_error(3, "Payload too large"),
        };
        let body = String::from_utf8_lossy(&body);
        for packet in body.split(SEPARATOR) {
            match packet.as_bytes().first() {
                Some(b'4') => {
                    let out = self.socket_io(&s.sid, &packet[1..], "polling");
                    s.push(out);
                }
                Some(b'1') => self.forget(&s.sid),
                _ => {} // `3` pong, `6` noop
            }
        }
        text("ok".to_string())
    }

    /// A socket.io packet (the engine.io `4` message's payload): what to send back.
    fn socket_io(&self, sid: &str, p: &str, transport: &str) -> Vec<String> {
        let kind = p.chars().next();
        let rest = p.get(1..).unwrap_or("");
        // `/guest,` before the data names a namespace other than `/`.
        let (nsp, rest) = match rest.strip_prefix('/') {
            Some(r) => match r.split_once(',') {
                Some((n, tail)) => (format!("/{n},"), tail),
                None => (format!("/{r},"), ""),
            },
            None => (String::new(), rest),
        };
        let welcome = serde_json::json!({ "node": self.name, "sid": sid, "transport": transport });
        match kind {
            Some('0') => vec![
                format!("40{nsp}{}", serde_json::json!({ "sid": sid })),
                format!("42{nsp}{}", serde_json::json!(["welcome", welcome])),
            ],
            Some('2') => {
                let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
                let (ack, data) = rest.split_at(digits);
                let Ok(serde_json::Value::Array(args)) =
                    serde_json::from_str::<serde_json::Value>(data)
                else {
                    return Vec::new();
                };
                if args.first().and_then(|e| e.as_str()) != Some("echo") {
                    return Vec::new();
                }
                let answer = serde_json::json!({
                    "node": self.name,
                    "transport": transport,
                    "data": args.get(1).cloned().unwrap_or(serde_json::Value::Null),
                });
                if ack.is_empty() {
                    vec![format!("42{nsp}{}", serde_json::json!(["echo", answer]))]
                } else {
                    vec![format!("43{nsp}{ack}{}", serde_json::json!([answer]))]
                }
            }
            _ => Vec::new(),
        }
    }

    /// The WebSocket transport: a new session (`session` = None) or an upgrade of a polling one.
    fn websocket(
        self: Arc<Self>,
        mut req: Request<Incoming>,
        session: Option<Arc<Session>>,
    ) -> Resp {
        let upgrade = req
            .headers()
            .get(header::UPGRADE)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"websocket"));
        let key = req.headers().get("sec-websocket-key").cloned();
        let (true, Some(key)) = (upgrade, key) else {
            return eio_error(3, "Bad request: a WebSocket upgrade is expected");
        };
        let (session, fresh) = match session {
            Some(s) => (s, false),
            None => match self.new_session() {
                Some(s) => (s, true),
                None => return eio_error(3, "Too many sessions"),
            },
        };
        let on_upgrade = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            let Ok(io) = on_upgrade.await else {
                return;
            };
            let cfg = WebSocketConfig::default()
                .max_message_size(Some(MAX_PAYLOAD))
                .max_frame_size(Some(MAX_PAYLOAD));
            let ws = tokio_tungstenite::WebSocketStream::from_raw_socket(
                TokioIo::new(io),
                Role::Server,
                Some(cfg),
            )
            .await;
            self.run_socket(ws, session, fresh).await;
        });
        let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
        let mut r = Response::new(Full::new(Bytes::new()));
        *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        let h = r.headers_mut();
        h.insert(
            header::UPGRADE,
            header::HeaderValue::from_static("websocket"),
        );
        h.insert(
            header::CONNECTION,
            header::HeaderValue::from_static("Upgrade"),
        );
        if let Ok(v) = accept.parse() {
            h.insert("sec-websocket-accept", v);
        }
        r
    }

    async fn run_socket<S>(
        &self,
        mut ws: tokio_tungstenite::WebSocketStream<S>,
        s: Arc<Session>,
        fresh: bool,
    ) where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    {
        if fresh {
            s.upgraded.store(true, Ordering::Relaxed);
            if ws
                .send(Message::text(self.open_packet(&s.sid, &[])))
                .await
                .is_err()
            {
                self.forget(&s.sid);
                return;
            }
        }
        let mut ping =
            tokio::time::interval_at(tokio::time::Instant::now() + PING_INTERVAL, PING_INTERVAL);
        loop {
            let msg = tokio::select! {
                m = ws.next() => m,
                _ = ping.tick() => {
                    if ws.send(Message::text("2")).await.is_err() { break; }
                    continue;
                }
                _ = self.stop.cancelled() => {
                    let _ = ws.send(Message::text("1")).await;
                    let _ = ws.close(None).await;
                    break;
                }
            };
            let text = match msg {
                Some(Ok(Message::Text(t))) => t.as_str().to_string(),
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
                Some(Ok(_)) => continue,
            };
            s.touch();
            let replies: Vec<String> = match text.as_str() {
                // The upgrade of a polling session: probe, then switch. A client pauses polling
                // (lets its pending poll finish) before it switches, so that poll ends now, as
                // engine.io's server ends it, with a noop.
                "2probe" => {
                    s.push(vec!["6".into()]);
                    vec!["3probe".into()]
                }
                "5" => {
                    s.upgraded.store(true, Ordering::Relaxed);
                    // The pending long poll ends with a noop; what it held moves here.
                    s.ready.notify_one();
                    s.take()
                }
                t if t.starts_with('4') => self.socket_io(&s.sid, &t[1..], "websocket"),
                t if t.starts_with('1') => break,
                _ => Vec::new(), // `3` pong
            };
            for r in replies {
                if ws.send(Message::text(r)).await.is_err() {
                    self.forget(&s.sid);
                    return;
                }
            }
        }
        self.forget(&s.sid);
    }
}

/// The engine.io query parameters this node reads.
struct Query {
    eio: Option<String>,
    transport: Option<String>,
    sid: Option<String>,
}

impl Query {
    fn parse(q: &str) -> Query {
        let mut out = Query {
            eio: None,
            transport: None,
            sid: None,
        };
        for pair in q.split('&') {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let v = Some(v.to_string());
            match k {
                "EIO" => out.eio = v,
                "transport" => out.transport = v,
                "sid" => out.sid = v.filter(|s| !s.is_empty()),
                _ => {}
            }
        }
        out
    }
}

fn join(packets: &[String]) -> String {
    let mut s = String::new();
    for (i, p) in packets.iter().enumerate() {
        if i > 0 {
            s.push(SEPARATOR);
        }
        s.push_str(p);
    }
    s
}

/// 20 URL-safe random characters, like engine.io's ids.
fn random_id() -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    (0..20)
        .map(|_| ALPHABET[fastrand::usize(..ALPHABET.len())] as char)
        .collect()
}

fn reply(status: StatusCode, content_type: &'static str, body: impl Into<Bytes>) -> Resp {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(content_type),
    );
    r.headers_mut().insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-store"),
    );
    r
}

fn text(body: String) -> Resp {
    reply(StatusCode::OK, "text/plain; charset=UTF-8", body)
}

fn json(status: StatusCode, v: &serde_json::Value) -> Resp {
    reply(status, "application/json", v.to_string())
}

/// engine.io's error answer: `400` with a code and a message.
fn eio_error(code: u8, message: &str) -> Resp {
    json(
        StatusCode::BAD_REQUEST,
        &serde_json::json!({ "code": code, "message": message }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn socket_io_connect_and_echo_name_the_node() {
        let n = StandIn::new("demo-a", CancellationToken::new());
        let out = n.socket_io("S1", "0", "polling");
        assert_eq!(out[0], r#"40{"sid":"S1"}"#);
        assert!(out[1].starts_with(r#"42["welcome",{"#) && out[1].contains(r#""node":"demo-a""#));
        let out = n.socket_io("S1", "0/guest,", "websocket");
        assert_eq!(out[0], r#"40/guest,{"sid":"S1"}"#);
        let out = n.socket_io("S1", r#"2["echo","hi"]"#, "websocket");
        assert_eq!(
            out,
            [r#"42["echo",{"data":"hi","node":"demo-a","transport":"websocket"}]"#]
        );
        let out = n.socket_io("S1", r#"2/guest,7["echo",1]"#, "polling");
        assert_eq!(
            out,
            [r#"43/guest,7[{"data":1,"node":"demo-a","transport":"polling"}]"#]
        );
        assert!(n.socket_io("S1", r#"2["other"]"#, "polling").is_empty());
        assert!(n.socket_io("S1", "2not json", "polling").is_empty());
    }

    #[test]
    fn query_and_payload_framing() {
        let q = Query::parse("EIO=4&transport=polling&t=Nx&sid=abc");
        assert_eq!(
            (q.eio.as_deref(), q.transport.as_deref(), q.sid.as_deref()),
            (Some("4"), Some("polling"), Some("abc"))
        );
        assert_eq!(join(&["a".into(), "b".into()]), "a\u{1e}b");
        assert_eq!(random_id().len(), 20);
    }
}
