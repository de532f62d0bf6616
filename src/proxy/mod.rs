//! Forwarding: the innermost layer. It turns a client request into a request to the node the
//! cluster layer chose (hop-by-hop headers out, forwarding headers in, HTTP/1.1, origin-form
//! target), streams both bodies, and tunnels upgrades.

mod forwarded;
mod hop;
mod pool;
mod routes;
pub mod tunnel;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::header::{HeaderValue, EXPECT, HOST};
use http::{Request, StatusCode, Uri, Version};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use forwarded::{
    acceptable_request_id, canonical, client_ip, ip_header, new_request_id, received_chain,
    set_forwarding_headers, ForwardingContext, Trusted, X_FORWARDED_FOR, X_FORWARDED_HOST,
    X_FORWARDED_PORT, X_FORWARDED_PREFIX, X_FORWARDED_PROTO, X_REAL_IP, X_REQUEST_ID,
};
pub use hop::{strip as strip_hop_by_hop, strip_request, wants_upgrade, SPOOFABLE};
pub use pool::{ConnectError, Pool, PoolSettings, SendError};
pub use routes::{RouteLimits, Routes};
pub use tunnel::{TunnelHook, TunnelReport};

use crate::exchange::{self, BodyEnd, Exchange, Refusal, Req, Resp, RespBody, UpstreamBody};

/// The node a request goes to, put in the request's extensions by the cluster layer.
#[derive(Clone)]
pub struct Target(pub Arc<Pool>);

/// Why forwarding failed; the cluster layer decides between a retry and an error answer.
#[derive(Debug)]
pub enum ForwardError {
    /// Nothing reached the node. The request is handed back.
    Connect {
        req: Box<Req>,
        error: ConnectError,
    },
    Timeout,
    /// The client sent more than its route's `max_body`.
    TooLarge,
    /// The client's body broke off.
    ClientAbort,
    /// The node broke the exchange after it started.
    Failed(String),
    /// No target in the request (a wiring bug, answered as 500).
    NoTarget,
}

impl ForwardError {
    /// The answer bpgate gives for this failure (see [`Refusal::row`] for the table).
    pub fn refusal(&self) -> Refusal {
        match self {
            ForwardError::Connect { .. } => Refusal::NodeUnreachable,
            ForwardError::Timeout => Refusal::NodeTimeout,
            ForwardError::TooLarge => Refusal::BodyTooLarge,
            ForwardError::ClientAbort => Refusal::BodyCutOff,
            ForwardError::Failed(_) => Refusal::NodeBroke,
            ForwardError::NoTarget => Refusal::NoTarget,
        }
    }

    /// bpgate's answer for this failure.
    pub fn into_response(self, id: Option<&HeaderValue>) -> Resp {
        self.refusal().response(id)
    }
}

/// Settings of the forwarding step, computed once from the config.
#[derive(Debug)]
pub struct ForwardSettings {
    /// `X-Forwarded-Port` value: the public port from `external_url`; `None` means the port the
    /// client connected to.
    pub public_port: Option<HeaderValue>,
    /// `X-Forwarded-Prefix` value (the base path), if any.
    pub prefix: Option<HeaderValue>,
    /// The global limits, for a request that reaches this step without the [`RouteLimits`] the
    /// edge resolves (its route's limits, in the request's extensions).
    pub default_limits: RouteLimits,
    pub tunnel_idle_timeout: Duration,
    /// How the node's pool connects and keeps connections.
    pub pool: PoolSettings,
}

/// Handles for work that outlives a request: tunnels, and the signal that ends them at the drain
/// deadline.
#[derive(Clone, Debug, Default)]
pub struct Background {
    pub tasks: TaskTracker,
    pub hard_stop: CancellationToken,
    /// Open tunnels (metrics).
    pub tunnels: Arc<std::sync::atomic::AtomicUsize>,
}

/// The forwarding service. One `Arc`: the node-selection layer clones it for every request.
#[derive(Clone)]
pub struct Forward(Arc<(ForwardSettings, Background)>);

impl Forward {
    pub fn new(settings: ForwardSettings, background: Background) -> Self {
        Forward(Arc::new((settings, background)))
    }
}

impl tower::Service<Req> for Forward {
    type Response = Resp;
    type Error = ForwardError;
    type Future = Pin<Box<dyn Future<Output = Result<Resp, ForwardError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), ForwardError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Req) -> Self::Future {
        Box::pin(forward(self.0.clone(), req))
    }
}

async fn forward(
    this: Arc<(ForwardSettings, Background)>,
    mut req: Req,
) -> Result<Resp, ForwardError> {
    let (s, bg) = (&this.0, &this.1);
    let Some(Target(pool)) = req.extensions_mut().remove::<Target>() else {
        return Err(ForwardError::NoTarget);
    };
    let Some(x) = exchange::exchange(&req).cloned() else {
        return Err(ForwardError::NoTarget);
    };
    let limits = req
        .extensions()
        .get::<RouteLimits>()
        .copied()
        .unwrap_or(s.default_limits);
    let declared = req
        .headers()
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limits.max_body) {
        return Err(ForwardError::TooLarge);
    }
    let upgrade = req.version() == Version::HTTP_11 && wants_upgrade(req.headers());
    let trailers = req.version() == Version::HTTP_2 || te_trailers(req.headers());
    let client_upgrade = if upgrade {
        Some(hyper::upgrade::on(&mut req))
    } else {
        None
    };
    let timeout = limits.response_timeout;
    prepare(s, &x, &mut req, upgrade, trailers);

    // Known to the audit layer even if the client goes away before the node answers.
    x.node.set(pool.name.clone());
    let sent = std::time::Instant::now();
    let (resp, mut lease) = match pool.send(req, timeout, &s.pool).await {
        Ok(r) => r,
        Err(SendError::Connect { req, error }) => return Err(ForwardError::Connect { req, error }),
        Err(SendError::Timeout) => return Err(ForwardError::Timeout),
        Err(SendError::Failed(e)) => {
            return Err(match x.body_end() {
                BodyEnd::TooLarge => ForwardError::TooLarge,
                BodyEnd::ClientAbort => ForwardError::ClientAbort,
                BodyEnd::Normal => ForwardError::Failed(e.to_string()),
            })
        }
    };

    let (mut parts, body) = resp.into_parts();
    // Room, at once, for what the layers above add (security headers, CORS, the sticky cookie,
    // the request id): a map sized for the node's few headers would grow two or three times.
    parts.headers.reserve(8);
    let switching = parts.status == StatusCode::SWITCHING_PROTOCOLS;
    strip_hop_by_hop(&mut parts.headers, switching && upgrade);
    let mut out = if switching {
        lease.discard();
        let mut up = http::Response::from_parts(parts, body);
        let upstream_upgrade = hyper::upgrade::on(&mut up);
        let (mut parts, _) = up.into_parts();
        let hook = TunnelHook::default();
        match client_upgrade {
            Some(client) => {
                let (idle, stop, h) = (s.tunnel_idle_timeout, bg.hard_stop.clone(), hook.clone());
                let (open, node) = (bg.tunnels.clone(), pool.clone());
                bg.tasks.spawn(async move {
                    use std::sync::atomic::Ordering::Relaxed;
                    open.fetch_add(1, Relaxed);
                    node.tunnels.fetch_add(1, Relaxed);
                    tunnel::run(client, upstream_upgrade, idle, stop, h).await;
                    node.tunnels.fetch_sub(1, Relaxed);
                    open.fetch_sub(1, Relaxed);
                });
                parts.extensions.insert(hook);
                http::Response::from_parts(parts, RespBody::empty())
            }
            // A 101 the client did not ask for cannot be honoured.
            None => return Err(ForwardError::Failed("unsolicited 101 from node".into())),
        }
    } else {
        http::Response::from_parts(parts, RespBody::Upstream(UpstreamBody::new(body, lease)))
    };
    let n = exchange::note_mut(&mut out);
    n.node = Some(pool.name.clone());
    n.upstream_us = Some(sent.elapsed().as_micros() as u64);
    Ok(out)
}

/// Rewrites a client request into the request a node receives.
fn prepare(s: &ForwardSettings, x: &Exchange, req: &mut Req, upgrade: bool, trailers: bool) {
    // HTTP/2 carries the host in :authority, and an HTTP/1.1 node needs a Host. Botpress
    // itself never reads Host (its URLs come from EXTERNAL_URL), but Express's `req.hostname`
    // and whatever sits between bpgate and the node may.
    if !req.headers().contains_key(HOST) {
        if let Some(a) = req
            .uri()
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
        {
            req.headers_mut().insert(HOST, a);
        }
    }
    // Origin-form target, raw bytes kept (no decoding, `%2F` stays `%2F`).
    if req.uri().scheme().is_some() || req.uri().authority().is_some() {
        let pq = req.uri().path_and_query().cloned();
        let mut p = http::uri::Parts::default();
        p.path_and_query = pq.or_else(|| Some(http::uri::PathAndQuery::from_static("/")));
        if let Ok(u) = Uri::from_parts(p) {
            *req.uri_mut() = u;
        }
    }
    *req.version_mut() = Version::HTTP_11;
    let h = req.headers_mut();
    // Room, at once, for the forwarding headers and the request id.
    h.reserve(10);
    strip_request(h, upgrade);
    // bpgate answers `Expect: 100-continue` itself, when it starts reading the body.
    h.remove(EXPECT);
    // A node only sends trailers to a peer that accepts them; bpgate can pass them on to an
    // HTTP/2 client or an HTTP/1.1 client that asked for them.
    if trailers {
        h.insert(http::header::TE, HeaderValue::from_static("trailers"));
    }
    let local_port;
    let port = match &s.public_port {
        Some(p) => p,
        None => {
            local_port = HeaderValue::from(x.conn.local.port());
            &local_port
        }
    };
    set_forwarding_headers(
        h,
        &ForwardingContext {
            peer_trusted: x.peer_trusted,
            client: x.client_ip,
            port,
            prefix: s.prefix.as_ref(),
            cache: Some(&x.conn.forwarding),
        },
    );
    h.insert(X_REQUEST_ID.clone(), x.id.clone());
}

fn te_trailers(h: &http::HeaderMap) -> bool {
    h.get_all(http::header::TE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|s| s.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("trailers"))
}

/// Why a probe (health check, `bpgate diag`) got no answer.
#[derive(Debug)]
pub enum ProbeError {
    Connect(std::io::Error),
    /// The path cannot be a request target.
    BadPath(String),
    /// The HTTP exchange failed (handshake, request or response head).
    Http(hyper::Error),
    /// The response body broke off or was larger than asked for.
    Body(String),
}

impl std::fmt::Display for ProbeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ProbeError::Connect(e) => write!(f, "connect: {e}"),
            ProbeError::BadPath(p) => write!(f, "bad probe path {p}"),
            ProbeError::Http(e) => write!(f, "request: {e}"),
            ProbeError::Body(e) => write!(f, "body: {e}"),
        }
    }
}

impl std::error::Error for ProbeError {}

impl From<ProbeError> for String {
    fn from(e: ProbeError) -> String {
        e.to_string()
    }
}

/// `GET path` on a fresh connection to `authority` (health checks, `bpgate diag`): the status and
/// up to `max_body` bytes of the body (none read when 0).
pub async fn probe_get(
    authority: &str,
    path: &str,
    max_body: usize,
) -> Result<(u16, bytes::Bytes), ProbeError> {
    use http_body_util::BodyExt;
    let stream = tokio::net::TcpStream::connect(authority)
        .await
        .map_err(ProbeError::Connect)?;
    let _ = stream.set_nodelay(true);
    let (mut tx, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(ProbeError::Http)?;
    let conn = tokio::spawn(conn);
    let req = probe_request(authority, path).ok_or_else(|| ProbeError::BadPath(path.into()))?;
    let resp = tx.send_request(req).await.map_err(ProbeError::Http)?;
    let status = resp.status().as_u16();
    let body = if max_body == 0 {
        bytes::Bytes::new()
    } else {
        http_body_util::Limited::new(resp.into_body(), max_body)
            .collect()
            .await
            .map(|b| b.to_bytes())
            .map_err(|e| ProbeError::Body(e.to_string()))?
    };
    conn.abort();
    Ok((status, body))
}

/// A request for a health check or a probe: `GET path` with `Host: authority`.
pub fn probe_request(authority: &str, path: &str) -> Option<Request<crate::exchange::ReqBody>> {
    Request::get(path)
        .header(HOST, authority)
        .header(
            http::header::USER_AGENT,
            concat!("bpgate/", env!("CARGO_PKG_VERSION"), " health-check"),
        )
        .body(crate::exchange::ReqBody::empty())
        .ok()
}
