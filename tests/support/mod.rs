//! Test support: a CA and certificates, fake Botpress nodes (real hyper servers on loopback),
//! bpgate itself started in-process on ephemeral ports, and TLS HTTP/1.1, HTTP/2 and WebSocket
//! clients that trust the test CA.
//!
//! Two kinds of node: [`Node::start`] with a handler of the test's choosing ([`echo`] answers
//! every path, for tests about what a node receives), and [`botpress::Botpress`], which behaves
//! like Botpress v12 where bpgate can tell (probes, loading state, 404s, keep-alive close).

pub mod binary;
pub mod botpress;

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::{pem::PemObject, CertificateDer, ServerName};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

mod bin;
pub use bin::BinGate;

pub type BoxBody =
    http_body_util::combinators::BoxBody<Bytes, Box<dyn std::error::Error + Send + Sync>>;

pub fn full(b: impl Into<Bytes>) -> BoxBody {
    Full::new(b.into()).map_err(|e| match e {}).boxed()
}

// === certificates ===

/// A test CA and a leaf for localhost/127.0.0.1 signed by it, as PEM files in a temp dir.
pub struct Pki {
    pub dir: tempfile::TempDir,
    pub ca_pem: String,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl Pki {
    pub fn new() -> Pki {
        Pki::with_validity(-1, 365)
    }

    /// Leaf valid from `from_days` to `to_days` relative to now.
    pub fn with_validity(from_days: i64, to_days: i64) -> Pki {
        let dir = tempfile::tempdir().unwrap();
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(rcgen::DnType::CommonName, "bpgate test CA");
        let ca_cert = ca.self_signed(&ca_key).unwrap();
        let issuer = rcgen::Issuer::new(ca, ca_key);
        let key = rcgen::KeyPair::generate().unwrap();
        let mut leaf =
            rcgen::CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
                .unwrap();
        leaf.distinguished_name
            .push(rcgen::DnType::CommonName, "localhost");
        let now = time::OffsetDateTime::now_utc();
        leaf.not_before = now + time::Duration::days(from_days);
        leaf.not_after = now + time::Duration::days(to_days);
        let cert = leaf.signed_by(&key, &issuer).unwrap();
        let cert_path = dir.path().join("cert.pem");
        let key_path = dir.path().join("key.pem");
        std::fs::write(&cert_path, cert.pem()).unwrap();
        std::fs::write(&key_path, key.serialize_pem()).unwrap();
        Pki {
            ca_pem: ca_cert.pem(),
            cert: cert_path,
            key: key_path,
            dir,
        }
    }
}

// === fake Botpress nodes ===

pub type Handler = Arc<
    dyn Fn(Request<Incoming>, NodeCtx) -> Pin<Box<dyn Future<Output = Response<BoxBody>> + Send>>
        + Send
        + Sync,
>;

/// What a handler knows about its node.
#[derive(Clone)]
pub struct NodeCtx {
    pub name: String,
}

/// A fake node: a hyper HTTP/1.1 server on 127.0.0.1 with upgrades enabled.
pub struct Node {
    pub addr: SocketAddr,
    pub name: String,
    pub accepted: Arc<AtomicU64>,
    pub requests: Arc<AtomicU64>,
    /// Keep-alive connections the node closed because they sat idle (see [`Node::start_with`]).
    pub idle_closed: Arc<AtomicU64>,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

impl Node {
    pub async fn start(name: &str, handler: Handler) -> Node {
        Node::start_on(name, Port::reserve().listen(), handler).await
    }

    pub async fn start_on(name: &str, listener: TcpListener, handler: Handler) -> Node {
        Node::start_with(name, listener, handler, None).await
    }

    /// A node that closes a keep-alive connection once it has been idle (no request in flight)
    /// for `idle_close`, as Node.js does after its `keepAliveTimeout` (5 s in Botpress).
    pub async fn start_with(
        name: &str,
        listener: TcpListener,
        handler: Handler,
        idle_close: Option<Duration>,
    ) -> Node {
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicU64::new(0));
        let requests = Arc::new(AtomicU64::new(0));
        let idle_closed = Arc::new(AtomicU64::new(0));
        let (stop, mut stopped) = oneshot::channel::<()>();
        let (a, r, n, ic) = (
            accepted.clone(),
            requests.clone(),
            name.to_string(),
            idle_closed.clone(),
        );
        let task = tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            loop {
                let (stream, _) = tokio::select! {
                    x = listener.accept() => match x { Ok(x) => x, Err(_) => continue },
                    _ = &mut stopped => break,
                };
                a.fetch_add(1, Ordering::Relaxed);
                let (h, r, n, ic) = (handler.clone(), r.clone(), n.clone(), ic.clone());
                conns.spawn(async move {
                    let activity = Arc::new(ConnActivity::default());
                    let act = activity.clone();
                    let svc = hyper::service::service_fn(move |req| {
                        r.fetch_add(1, Ordering::Relaxed);
                        act.begin();
                        let f = h(req, NodeCtx { name: n.clone() });
                        let act = act.clone();
                        async move {
                            let resp = f.await;
                            act.end();
                            Ok::<_, Infallible>(resp)
                        }
                    });
                    let conn = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .with_upgrades();
                    tokio::pin!(conn);
                    let Some(limit) = idle_close else {
                        let _ = conn.await;
                        return;
                    };
                    loop {
                        let wait = activity.idle_left(limit);
                        tokio::select! {
                            _ = conn.as_mut() => return,
                            _ = tokio::time::sleep(wait.unwrap_or(Duration::ZERO)) => {
                                if activity.idle_left(limit).is_none() {
                                    // Idle: hyper closes an idle connection at once.
                                    conn.as_mut().graceful_shutdown();
                                    ic.fetch_add(1, Ordering::Relaxed);
                                    let _ = conn.await;
                                    return;
                                }
                            }
                        }
                    }
                });
            }
            // Dropping the set aborts every connection: the node is really gone.
            conns.abort_all();
        });
        Node {
            addr,
            name: name.to_string(),
            accepted,
            requests,
            idle_closed,
            stop: Some(stop),
            task,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stops accepting and drops every open connection. The address stays held for the test
    /// (connections to it are refused): [`Port::listen`] brings a node back on it.
    pub async fn kill(mut self) -> Port {
        // Held before the listener closes, so no other socket can take the port in between
        // (needs the listener's SO_REUSEPORT, which [`Port::listen`] listeners have).
        let held = Port::reserve_at(self.addr).ok();
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        let _ = (&mut self.task).await;
        match held {
            Some(p) => p,
            None => Port::reserve_at_retrying(self.addr).await,
        }
    }
}

/// Requests in flight on one node connection and when the last one started or ended.
struct ConnActivity {
    in_flight: std::sync::atomic::AtomicUsize,
    last: std::sync::Mutex<tokio::time::Instant>,
}

impl Default for ConnActivity {
    fn default() -> Self {
        ConnActivity {
            in_flight: Default::default(),
            last: std::sync::Mutex::new(tokio::time::Instant::now()),
        }
    }
}

impl ConnActivity {
    fn begin(&self) {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        *self.last.lock().unwrap() = tokio::time::Instant::now();
    }
    fn end(&self) {
        *self.last.lock().unwrap() = tokio::time::Instant::now();
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
    /// `None` once idle for `limit`; else how long until it could be.
    fn idle_left(&self, limit: Duration) -> Option<Duration> {
        if self.in_flight.load(Ordering::SeqCst) > 0 {
            return Some(limit);
        }
        let since = self.last.lock().unwrap().elapsed();
        limit.checked_sub(since).filter(|d| !d.is_zero())
    }
}

/// A handler that answers JSON describing the request it received: method, raw path and query,
/// headers (all values), body length, node name.
pub fn echo() -> Handler {
    Arc::new(|req: Request<Incoming>, cx: NodeCtx| {
        Box::pin(async move {
            if is_ws(&req) {
                return ws_echo(req);
            }
            let (parts, body) = req.into_parts();
            let body = body
                .collect()
                .await
                .map(|c| c.to_bytes())
                .unwrap_or_default();
            let mut headers: HashMap<String, Vec<String>> = HashMap::new();
            for (k, v) in &parts.headers {
                headers
                    .entry(k.as_str().to_string())
                    .or_default()
                    .push(String::from_utf8_lossy(v.as_bytes()).into_owned());
            }
            let v = serde_json::json!({
                "node": cx.name,
                "method": parts.method.as_str(),
                "uri": parts.uri.to_string(),
                "version": format!("{:?}", parts.version),
                "headers": headers,
                "body_len": body.len(),
                "body_sha": sha(&body),
            });
            let mut r = Response::new(full(serde_json::to_vec(&v).unwrap()));
            r.headers_mut()
                .insert("content-type", "application/json".parse().unwrap());
            r.headers_mut().insert("x-node", cx.name.parse().unwrap());
            r
        })
    })
}

/// A short digest of bytes for comparing large bodies (FNV-1a, hex).
pub fn sha(b: &[u8]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for x in b {
        h ^= *x as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016x}")
}

fn is_ws(req: &Request<Incoming>) -> bool {
    req.headers()
        .get("upgrade")
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"websocket"))
}

/// Answers a WebSocket handshake and echoes every message.
pub fn ws_echo(mut req: Request<Incoming>) -> Response<BoxBody> {
    let key = req.headers().get("sec-websocket-key").cloned();
    let on_upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        use futures_util::{SinkExt, StreamExt};
        if let Ok(up) = on_upgrade.await {
            let mut ws = tokio_tungstenite::WebSocketStream::from_raw_socket(
                TokioIo::new(up),
                tokio_tungstenite::tungstenite::protocol::Role::Server,
                None,
            )
            .await;
            while let Some(Ok(m)) = ws.next().await {
                if m.is_close() {
                    let _ = ws.close(None).await;
                    break;
                }
                if (m.is_text() || m.is_binary()) && ws.send(m).await.is_err() {
                    break;
                }
            }
        }
    });
    let accept = key
        .map(|k| tokio_tungstenite::tungstenite::handshake::derive_accept_key(k.as_bytes()))
        .unwrap_or_default();
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header("upgrade", "websocket")
        .header("connection", "Upgrade")
        .header("sec-websocket-accept", accept)
        .body(full(Bytes::new()))
        .unwrap()
}

// === bpgate ===

/// bpgate running in-process on ephemeral loopback ports.
pub struct Gate {
    pub https: SocketAddr,
    pub http: Option<SocketAddr>,
    pub admin: SocketAddr,
    pub pki: Arc<Pki>,
    pub gw: Arc<bpgate::Gateway>,
    pub audit_dir: PathBuf,
    pub dir: tempfile::TempDir,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

pub struct GateBuilder {
    toml: Vec<String>,
    env: HashMap<String, String>,
    upstreams: Vec<String>,
    redirect: bool,
    pki: Option<Arc<Pki>>,
}

impl Gate {
    pub fn builder() -> GateBuilder {
        GateBuilder {
            toml: Vec::new(),
            env: HashMap::new(),
            upstreams: vec![],
            redirect: false,
            pki: None,
        }
    }
}

impl GateBuilder {
    /// TOML appended to the generated config (sections allowed).
    pub fn toml(mut self, t: &str) -> Self {
        self.toml.push(t.to_string());
        self
    }
    pub fn env(mut self, k: &str, v: &str) -> Self {
        self.env.insert(k.into(), v.into());
        self
    }
    pub fn upstream(mut self, url: String) -> Self {
        self.upstreams.push(url);
        self
    }
    pub fn redirect_listener(mut self) -> Self {
        self.redirect = true;
        self
    }
    pub fn pki(mut self, p: Arc<Pki>) -> Self {
        self.pki = Some(p);
        self
    }

    pub async fn start(self) -> Gate {
        let pki = self.pki.unwrap_or_else(|| Arc::new(Pki::new()));
        let dir = tempfile::tempdir().unwrap();
        let audit_dir = dir.path().join("audit");
        let ups: Vec<String> = self.upstreams.iter().map(|u| format!("\"{u}\"")).collect();
        let toml = format!(
            "[tls]\ncert = {:?}\nkey = {:?}\n[audit]\ndir = {:?}\nflush_interval = \"5ms\"\n[upstream]\nurls = [{}]\n[log]\nfilter = \"warn\"\n",
            pki.cert, pki.key, audit_dir, ups.join(",")
        );
        let path = dir.path().join("bpgate.toml");
        let merged = self
            .toml
            .iter()
            .fold(toml, |acc, extra| merge_toml(&acc, extra));
        std::fs::write(&path, merged).unwrap();
        let env = self.env.clone();
        let loaded = bpgate::config::load(&path, &|k| env.get(k).cloned(), &Default::default())
            .unwrap_or_else(|e| panic!("config: {e}"));
        let gw = bpgate::Gateway::start(loaded).unwrap_or_else(|e| panic!("start: {e}"));
        // A reload reads the file again with the test's environment, not the process's.
        gw.set_reloader(move |old| {
            bpgate::config::load(&old.path, &|k| env.get(k).cloned(), &Default::default())
        });
        let https = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let admin = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let http = if self.redirect {
            Some(TcpListener::bind("127.0.0.1:0").await.unwrap())
        } else {
            None
        };
        let (ha, aa, pa) = (
            https.local_addr().unwrap(),
            admin.local_addr().unwrap(),
            http.as_ref().map(|l| l.local_addr().unwrap()),
        );
        let (stop, stopped) = oneshot::channel::<()>();
        let g = gw.clone();
        let task = tokio::spawn(async move {
            g.run(bpgate::Listeners { https, http, admin }, async move {
                let _ = stopped.await;
            })
            .await;
        });
        Gate {
            https: ha,
            http: pa,
            admin: aa,
            pki,
            gw,
            audit_dir,
            dir,
            stop: Some(stop),
            task: Some(task),
        }
    }
}

/// Later sections of `extra` replace the same keys of `base` (tables merged key by key).
pub fn merge_toml(base: &str, extra: &str) -> String {
    let mut b: toml::Table = toml::from_str(base).unwrap();
    let e: toml::Table = toml::from_str(extra).unwrap_or_else(|err| panic!("test TOML: {err}"));
    fn merge(b: &mut toml::Table, e: toml::Table) {
        for (k, v) in e {
            match (b.get_mut(&k), v) {
                (Some(toml::Value::Table(bt)), toml::Value::Table(et)) => merge(bt, et),
                // Arrays of tables (`[[upstream.nodes]]`) accumulate across fragments.
                (Some(toml::Value::Array(ba)), toml::Value::Array(ea))
                    if ea.iter().all(|x| x.is_table()) && !ea.is_empty() =>
                {
                    ba.extend(ea)
                }
                (_, v) => {
                    b.insert(k, v);
                }
            }
        }
    }
    merge(&mut b, e);
    toml::to_string(&b).unwrap()
}

impl Gate {
    /// Graceful shutdown; returns when bpgate has drained and flushed.
    pub async fn stop(mut self) {
        self.stop_inner().await;
    }

    pub fn trigger_stop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }

    pub async fn wait_stopped(&mut self) {
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
    }

    async fn stop_inner(&mut self) {
        self.trigger_stop();
        self.wait_stopped().await;
    }

    /// All audit lines written so far (flushes first).
    pub fn audit_lines(&self) -> Vec<serde_json::Value> {
        if let Some(a) = &self.gw.shared().audit {
            a.flush();
        }
        read_audit_dir(&self.audit_dir)
    }

    pub async fn admin_get(&self, path: &str) -> (StatusCode, String) {
        admin_call(self.admin, "GET", path).await
    }

    pub async fn admin_post(&self, path: &str) -> (StatusCode, String) {
        admin_call(self.admin, "POST", path).await
    }
}

pub fn read_audit_dir(dir: &std::path::Path) -> Vec<serde_json::Value> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "jsonl"))
                .collect()
        })
        .unwrap_or_default();
    // Rotated files first (by name = time), the current one last.
    files.sort_by_key(|p| (p.file_name().is_some_and(|n| n == "audit.jsonl"), p.clone()));
    let mut out = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap();
        for line in text.lines() {
            out.push(
                serde_json::from_str(line)
                    .unwrap_or_else(|e| panic!("unparseable audit line {line:?}: {e}")),
            );
        }
    }
    out
}

pub async fn admin_call(addr: SocketAddr, method: &str, path: &str) -> (StatusCode, String) {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = Request::builder()
        .method(method)
        .uri(path)
        // The listener's own address: state changes refuse any other Host (DNS rebinding).
        .header("host", addr.to_string())
        .body(full(Bytes::new()))
        .unwrap();
    let resp = tx.send_request(req).await.unwrap();
    let status = resp.status();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

impl Drop for Gate {
    fn drop(&mut self) {
        self.trigger_stop();
    }
}

// === clients ===

pub fn tls_connector(ca_pem: &str, alpn: &[&[u8]]) -> TlsConnector {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let mut cfg = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = alpn.iter().map(|a| a.to_vec()).collect();
    TlsConnector::from(Arc::new(cfg))
}

/// A TLS connection to bpgate, verified against the test CA, offering `alpn`.
pub async fn tls_connect(gate: &Gate, alpn: &[&[u8]]) -> TlsStream<TcpStream> {
    tls_connect_from(gate, alpn, None).await
}

/// The same, from a chosen local address (e.g. 127.0.0.7, to look like another client IP).
pub async fn tls_connect_from(
    gate: &Gate,
    alpn: &[&[u8]],
    local: Option<std::net::IpAddr>,
) -> TlsStream<TcpStream> {
    let tcp = match local {
        Some(ip) => {
            let s = tokio::net::TcpSocket::new_v4().unwrap();
            s.bind(SocketAddr::new(ip, 0)).unwrap();
            s.connect(gate.https).await.unwrap()
        }
        None => TcpStream::connect(gate.https).await.unwrap(),
    };
    tls_connector(&gate.pki.ca_pem, alpn)
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap()
}

/// TLS to bpgate over a TCP connection the test set up itself (socket options, local address).
pub async fn tls_over(gate: &Gate, alpn: &[&[u8]], tcp: TcpStream) -> TlsStream<TcpStream> {
    tls_connector(&gate.pki.ca_pem, alpn)
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap()
}

/// An HTTP client over one TLS connection: HTTP/1.1 or HTTP/2 as negotiated.
pub enum Client {
    H1(hyper::client::conn::http1::SendRequest<BoxBody>),
    H2(hyper::client::conn::http2::SendRequest<BoxBody>),
    /// HTTP/2 as browsers speak it: `:authority` only, every `Host` header removed before
    /// sending.
    H2Browser(hyper::client::conn::http2::SendRequest<BoxBody>),
}

impl Client {
    pub async fn h1(gate: &Gate) -> Client {
        Client::over(tls_connect(gate, &[b"http/1.1"]).await).await
    }

    pub async fn h2(gate: &Gate) -> Client {
        let tls = tls_connect(gate, &[b"h2"]).await;
        assert_eq!(
            tls.get_ref().1.alpn_protocol(),
            Some(&b"h2"[..]),
            "bpgate must negotiate h2"
        );
        Client::over(tls).await
    }

    /// HTTP/2 without `Host` (see [`Client::H2Browser`]).
    pub async fn h2_browser(gate: &Gate) -> Client {
        match Client::h2(gate).await {
            Client::H2(tx) => Client::H2Browser(tx),
            other => other,
        }
    }

    pub async fn over(tls: TlsStream<TcpStream>) -> Client {
        let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
        let io = TokioIo::new(tls);
        if h2 {
            let (tx, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
                .await
                .unwrap();
            tokio::spawn(conn);
            Client::H2(tx)
        } else {
            let (tx, conn) = hyper::client::conn::http1::handshake(io).await.unwrap();
            tokio::spawn(conn.with_upgrades());
            Client::H1(tx)
        }
    }

    pub async fn send(
        &mut self,
        req: Request<BoxBody>,
    ) -> Result<Response<Incoming>, hyper::Error> {
        match self {
            Client::H1(tx) => {
                tx.ready().await?;
                tx.send_request(req).await
            }
            Client::H2(tx) => {
                tx.ready().await?;
                tx.send_request(req).await
            }
            Client::H2Browser(tx) => {
                let mut req = req;
                req.headers_mut().remove(http::header::HOST);
                assert!(
                    req.uri().authority().is_some(),
                    "a browser's request has :authority"
                );
                tx.ready().await?;
                tx.send_request(req).await
            }
        }
    }

    /// Sends and collects the whole answer.
    pub async fn call(&mut self, req: Request<BoxBody>) -> Answer {
        let resp = self.send(req).await.unwrap();
        Answer::collect(resp).await
    }

    pub async fn get(&mut self, path: &str) -> Answer {
        self.call(get(path).body(full(Bytes::new())).unwrap()).await
    }
}

/// A request builder with the right authority for both protocols.
pub fn get(path: &str) -> http::request::Builder {
    Request::builder()
        .uri(format!("https://localhost{path}"))
        .header("host", "localhost")
}

pub fn post(path: &str) -> http::request::Builder {
    get(path).method("POST")
}

/// A collected response.
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
    pub version: http::Version,
}

impl Answer {
    pub async fn collect(resp: Response<Incoming>) -> Answer {
        let (parts, body) = resp.into_parts();
        let body = body
            .collect()
            .await
            .map(|c| c.to_bytes())
            .unwrap_or_default();
        Answer {
            status: parts.status,
            headers: parts.headers,
            body,
            version: parts.version,
        }
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", String::from_utf8_lossy(&self.body)))
    }

    /// A header the upstream echo saw (first value).
    pub fn seen(&self, name: &str) -> Option<String> {
        self.json()["headers"][name]
            .get(0)
            .and_then(|v| v.as_str())
            .map(str::to_string)
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Polls `f` until it returns true or `timeout` passes.
/// One WebSocket session through the gate over HTTP/1.1: open `path_and_query`, send a text
/// message, read the echo, close, and wait until the server has closed too; then waits until
/// the session's `tunnel_close` line is in the trail.
pub async fn websocket_session(gate: &Gate, path_and_query: &str) {
    use futures_util::{SinkExt, StreamExt};
    let tls = tls_connect(gate, &[b"http/1.1"]).await;
    let url = format!("wss://localhost:{}{path_and_query}", gate.https.port());
    let (mut ws, _) = tokio_tungstenite::client_async(url, tls).await.unwrap();
    ws.send(tokio_tungstenite::tungstenite::Message::text("hello"))
        .await
        .unwrap();
    ws.next().await.unwrap().unwrap();
    ws.close(None).await.unwrap();
    while ws.next().await.is_some() {}
    drop(ws);
    let closed = eventually(Duration::from_secs(10), || {
        gate.audit_lines()
            .iter()
            .any(|l| l["event"] == "tunnel_close")
    })
    .await;
    assert!(closed, "no tunnel_close line");
}

/// Runs `test`, an `#[ignore]`d test of this binary, in a child process (so this process's
/// environment is left alone) with `env` set (`None`: removed) and `CI` set to `ci` or removed:
/// how the tests of "a skipped test fails under CI=true" watch both outcomes.
pub fn run_test_child(
    test: &str,
    env: &[(&str, Option<&str>)],
    ci: Option<&str>,
) -> std::process::Output {
    let mut c = std::process::Command::new(std::env::current_exe().unwrap());
    c.args([test, "--exact", "--nocapture", "--include-ignored"]);
    for (k, v) in env.iter().chain([("CI", ci)].iter()) {
        match v {
            Some(v) => c.env(k, v),
            None => c.env_remove(k),
        };
    }
    c.output().unwrap()
}

pub async fn eventually(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if tokio::time::Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A loopback address where nothing listens: connections to it are refused for as long as the
/// returned [`Port`] lives (bound, never released to another socket).
pub async fn dead_addr() -> Port {
    Port::reserve()
}

/// A loopback port held for a test: a socket bound to it (with `SO_REUSEPORT`) but not
/// listening. Connections to it are refused, and no other socket (another test's `bind(0)`, an
/// outgoing connection's ephemeral port, another process) can take the port while it is held,
/// unlike a port that was bound and released. [`Port::listen`] turns it into a listener on the
/// same address without letting go of it.
pub struct Port {
    addr: SocketAddr,
    socket: tokio::net::TcpSocket,
}

impl Port {
    /// A fresh loopback port.
    pub fn reserve() -> Port {
        Port::reserve_at(SocketAddr::from(([127, 0, 0, 1], 0))).expect("bind a loopback port")
    }

    /// Holds `addr`; it fails while a socket without `SO_REUSEPORT` is bound there.
    pub fn reserve_at(addr: SocketAddr) -> std::io::Result<Port> {
        let socket = tokio::net::TcpSocket::new_v4()?;
        socket.set_reuseaddr(true)?;
        socket.set_reuseport(true)?;
        socket.bind(addr)?;
        Ok(Port {
            addr: socket.local_addr()?,
            socket,
        })
    }

    /// [`Port::reserve_at`], retried for up to 10 s while the address is busy (a listener
    /// without `SO_REUSEPORT` that is closing).
    pub async fn reserve_at_retrying(addr: SocketAddr) -> Port {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            match Port::reserve_at(addr) {
                Ok(p) => return p,
                Err(e) if tokio::time::Instant::now() > deadline => {
                    panic!("cannot hold {addr} again: {e}")
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    }

    /// Listens on the held address.
    pub fn listen(self) -> TcpListener {
        self.socket.listen(1024).expect("listen on a held port")
    }
}

impl std::fmt::Display for Port {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.addr.fmt(f)
    }
}

/// One TCP socket on this host as `/proc/net/tcp` shows it (Linux).
#[derive(Debug, Clone, Copy)]
pub struct TcpEntry {
    pub local: SocketAddr,
    pub remote: SocketAddr,
    pub listening: bool,
    /// Bytes written and not yet acknowledged (a listener: its backlog limit).
    pub tx_queue: u64,
    /// Bytes received and not yet read (a listener: connections waiting to be accepted).
    pub rx_queue: u64,
}

/// The IPv4 TCP sockets of this host (network namespace), from `/proc/net/tcp`.
pub fn tcp_sockets() -> Vec<TcpEntry> {
    let text = std::fs::read_to_string("/proc/net/tcp").expect("/proc/net/tcp (Linux)");
    let addr = |s: &str| -> SocketAddr {
        let (ip, port) = s.split_once(':').unwrap();
        // The address as the kernel holds it (network order), printed as a native u32.
        let ip = std::net::Ipv4Addr::from(u32::from_str_radix(ip, 16).unwrap().to_ne_bytes());
        SocketAddr::from((ip, u16::from_str_radix(port, 16).unwrap()))
    };
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let (tx, rx) = f.get(4)?.split_once(':')?;
            Some(TcpEntry {
                local: addr(f.get(1)?),
                remote: addr(f.get(2)?),
                listening: *f.get(3)? == "0A",
                tx_queue: u64::from_str_radix(tx, 16).ok()?,
                rx_queue: u64::from_str_radix(rx, 16).ok()?,
            })
        })
        .collect()
}

/// Connections waiting in the kernel's accept queue of the listener on `addr`.
pub fn accept_queue(addr: SocketAddr) -> u64 {
    tcp_sockets()
        .iter()
        .find(|s| s.listening && s.local == addr)
        .map(|s| s.rx_queue)
        .unwrap_or_else(|| panic!("no listener on {addr}"))
}

/// Bytes the kernel holds in the queues of every connected socket with an end on one of `ends`
/// (both sockets of a loopback connection are seen).
pub fn kernel_queued(ends: &[SocketAddr]) -> u64 {
    tcp_sockets()
        .iter()
        .filter(|s| !s.listening && (ends.contains(&s.local) || ends.contains(&s.remote)))
        .map(|s| s.tx_queue + s.rx_queue)
        .sum()
}

/// One-time process-wide setup (rustls provider).
pub fn init() {
    static ONCE: OnceLock<()> = OnceLock::new();
    ONCE.get_or_init(|| {
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    });
}
