//! What every layer of the request pipeline shares: the per-request [`Exchange`] record, the
//! request and response body types, the [`Note`] layers leave on a response for the audit trail,
//! the [`Outcome`] vocabulary of the audit log, and the table of answers bpgate gives by itself
//! ([`Refusal`]).
//!
//! This module is the pipeline's vocabulary and imports nothing else of the crate: every layer
//! depends on it, it depends on no layer. Where a body must hand something back to another module
//! (a pooled connection to its pool), it does so through a small trait ([`ConnectionHome`]).

use std::convert::Infallible;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use arc_swap::ArcSwapOption;
use bytes::Bytes;
use http::{header, HeaderValue, Request, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;

/// A request as it travels down the stack.
pub type Req = Request<ReqBody>;
/// A response as it travels up the stack (before the audit layer wraps its body).
pub type Resp = Response<RespBody>;
/// The future every layer returns. Errors are answered as responses, never propagated.
pub type BoxFut = Pin<Box<dyn Future<Output = Result<Resp, Infallible>> + Send>>;

/// Facts about the client connection, fixed for its lifetime.
#[derive(Debug)]
pub struct ConnInfo {
    pub peer: SocketAddr,
    pub local: SocketAddr,
    /// `"TLSv1.3"`, `"TLSv1.2"`, or `None` on a plain listener.
    pub tls_version: Option<&'static str>,
    /// Forwarding header values memoised across the connection's requests.
    pub forwarding: ForwardedCache,
    /// Cut by bpgate at the shutdown drain deadline, with requests still running.
    cut: AtomicBool,
    /// A request body on this connection was dropped before its end (an early answer: 413,
    /// 403, 404, 503...), so the client may still be sending it: the connection edge lingers
    /// before closing instead of resetting the client. Cleared when the next request starts.
    pub unread_body: AtomicBool,
    /// Request bodies on this connection still being read (the connection edge does not take
    /// their bytes for the next request's head, even after their response ended).
    pub bodies_reading: AtomicUsize,
}

/// Per-connection memo of the forwarding header values that only depend on the peer and the
/// `Host`: a keep-alive connection from an untrusted peer sends the same ones on every request,
/// so they are formatted once. Written and read by the forwarding step.
#[derive(Debug, Default)]
pub struct ForwardedCache(pub ArcSwapOption<ForwardedValues>);

/// The values [`ForwardedCache`] keeps, and what they were computed for.
#[derive(Debug)]
pub struct ForwardedValues {
    pub client: IpAddr,
    pub host: Option<HeaderValue>,
    pub client_text: HeaderValue,
    pub forwarded: Option<HeaderValue>,
}

impl ConnInfo {
    pub fn new(peer: SocketAddr, local: SocketAddr, tls_version: Option<&'static str>) -> Self {
        ConnInfo {
            peer,
            local,
            tls_version,
            forwarding: Default::default(),
            cut: Default::default(),
            unread_body: AtomicBool::new(false),
            bodies_reading: AtomicUsize::new(0),
        }
    }

    /// Marks the connection as cut at the drain deadline, before its requests are dropped.
    pub fn mark_cut(&self) {
        self.cut.store(true, Ordering::Relaxed);
    }

    /// Whether bpgate cut the connection at the drain deadline (rather than the client leaving).
    pub fn was_cut(&self) -> bool {
        self.cut.load(Ordering::Relaxed)
    }
}

/// One request/response exchange. Created at the edge, shared (by `Arc`) with the body wrappers
/// and the audit record, so counters need no locks.
#[derive(Debug)]
pub struct Exchange {
    pub start: Instant,
    pub id: HeaderValue,
    pub conn: Arc<ConnInfo>,
    /// The client's address after trusted-proxy processing (the forwarding step's `client_ip`).
    pub client_ip: IpAddr,
    /// Whether the TCP peer is a trusted proxy (its forwarding headers are believed).
    pub peer_trusted: bool,
    /// Request body bytes received from the client.
    pub bytes_in: AtomicU64,
    /// Set by the request body when it stopped early; see [`BodyEnd`].
    pub body_end: AtomicU8,
    /// Set by the connection edge for a request it refuses before the pipeline sees it
    /// (ambiguous framing, an HTTP/2 `Host` that contradicts `:authority`); the audit layer
    /// answers it, so the refusal gets a whole audit line.
    pub refusal: Option<Refusal>,
    /// The node the request was last sent to, for the audit line of an exchange that ends
    /// without a response (the client went away first).
    pub node: NodeSlot,
}

/// The node an exchange was sent to (set by the forwarding step, read by the audit layer).
#[derive(Debug, Default)]
pub struct NodeSlot(std::sync::Mutex<Option<Arc<str>>>);

impl NodeSlot {
    pub fn set(&self, node: Arc<str>) {
        if let Ok(mut n) = self.0.lock() {
            *n = Some(node);
        }
    }
    pub fn get(&self) -> Option<Arc<str>> {
        self.0.lock().ok().and_then(|n| n.clone())
    }
}

/// How a request body ended, when it did not simply finish.
#[repr(u8)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyEnd {
    Normal = 0,
    TooLarge = 1,
    ClientAbort = 2,
}

impl Exchange {
    pub fn body_end(&self) -> BodyEnd {
        match self.body_end.load(Ordering::Relaxed) {
            1 => BodyEnd::TooLarge,
            2 => BodyEnd::ClientAbort,
            _ => BodyEnd::Normal,
        }
    }
}

/// What inner layers tell the audit layer about a response, in its extensions.
#[derive(Debug, Clone, Default)]
pub struct Note {
    /// The node that answered (or was tried last).
    pub node: Option<Arc<str>>,
    pub sticky: Option<&'static str>,
    /// How the exchange ended, when not a plain [`Outcome::Ok`].
    pub outcome: Option<Outcome>,
    /// A short reason for operators, for bpgate-generated answers.
    pub reason: Option<&'static str>,
    /// Microseconds from sending to the node until its response head.
    pub upstream_us: Option<u64>,
}

/// How an exchange ended: the audit log's `outcome` field. The log schema is this enum; its
/// spelling is [`Outcome::as_str`], the one place it is serialised.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    /// The client went away, or its request body broke off.
    ClientAbort,
    /// The node could not be reached or broke the exchange.
    UpstreamError,
    /// The node sent no response head within the response timeout.
    UpstreamTimeout,
    /// bpgate refused the request (CORS, base path, limits, malformed).
    Rejected,
    /// No node could take the request.
    NoUpstream,
    /// The audit trail cannot be written and `audit.on_failure = "block"`.
    AuditUnavailable,
    /// bpgate answered with a redirect (to HTTPS, to the base path).
    Redirect,
    /// A tunnel ended with an error.
    TunnelError,
    /// A bpgate bug (an answer it should never give).
    Error,
}

impl Outcome {
    /// Every outcome, in the order the README lists them.
    pub const ALL: [Outcome; 10] = [
        Outcome::Ok,
        Outcome::ClientAbort,
        Outcome::UpstreamError,
        Outcome::UpstreamTimeout,
        Outcome::Rejected,
        Outcome::NoUpstream,
        Outcome::AuditUnavailable,
        Outcome::Redirect,
        Outcome::TunnelError,
        Outcome::Error,
    ];

    /// The value written in the audit log.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::ClientAbort => "client_abort",
            Outcome::UpstreamError => "upstream_error",
            Outcome::UpstreamTimeout => "upstream_timeout",
            Outcome::Rejected => "rejected",
            Outcome::NoUpstream => "no_upstream",
            Outcome::AuditUnavailable => "audit_unavailable",
            Outcome::Redirect => "redirect",
            Outcome::TunnelError => "tunnel_error",
            Outcome::Error => "error",
        }
    }
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Returns the note of a response, adding an empty one if it has none.
pub fn note_mut<B>(resp: &mut Response<B>) -> &mut Note {
    resp.extensions_mut().get_or_insert_with(Note::default)
}

/// Returns the exchange of a request. The edge inserts it before the stack sees the request.
pub fn exchange<B>(req: &Request<B>) -> Option<&Arc<Exchange>> {
    req.extensions().get::<Arc<Exchange>>()
}

// === request body ===

/// The client's request body, counted (for the audit trail) and capped (413).
pub struct ReqBody {
    inner: Option<Incoming>,
    exchange: Option<Arc<Exchange>>,
    limit: u64,
    seen: u64,
    /// Fired (or dropped) once the last byte has been handed on: see [`ReqBody::on_end`].
    ended: Option<tokio::sync::oneshot::Sender<()>>,
    /// Counted in the connection's `bodies_reading`.
    reading: bool,
}

/// The error a request body yields when it passes its route's `max_body`.
#[derive(Debug)]
pub struct BodyTooLarge;

impl std::fmt::Display for BodyTooLarge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("request body exceeds max_body")
    }
}

impl std::error::Error for BodyTooLarge {}

impl std::fmt::Debug for ReqBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReqBody")
            .field("seen", &self.seen)
            .field("limit", &self.limit)
            .finish()
    }
}

impl ReqBody {
    pub fn new(inner: Incoming, exchange: Arc<Exchange>, limit: u64) -> Self {
        let reading = !inner.is_end_stream();
        if reading {
            exchange.conn.bodies_reading.fetch_add(1, Ordering::Relaxed);
        }
        ReqBody {
            inner: Some(inner),
            exchange: Some(exchange),
            limit,
            seen: 0,
            ended: None,
            reading,
        }
    }

    pub fn empty() -> Self {
        ReqBody {
            inner: None,
            exchange: None,
            limit: u64::MAX,
            seen: 0,
            ended: None,
            reading: false,
        }
    }

    /// A signal that resolves once the body has handed on its last byte (or stopped: cut,
    /// broken, dropped); `None` when it has nothing left to send. The forwarding step starts
    /// the response timeout there, so a long upload is not counted as the node's silence.
    pub fn on_end(&mut self) -> Option<tokio::sync::oneshot::Receiver<()>> {
        if self.is_end_stream() {
            return None;
        }
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.ended = Some(tx);
        Some(rx)
    }

    fn fire_if_ended(&mut self) {
        if self.ended.is_some() && self.is_end_stream() {
            if let Some(tx) = self.ended.take() {
                let _ = tx.send(());
            }
        }
    }

    fn mark(&self, end: BodyEnd) {
        if let Some(x) = &self.exchange {
            x.body_end.store(end as u8, Ordering::Relaxed);
        }
    }

    /// Stops reading before the end: the client may still be sending.
    fn abandon(&mut self) {
        if let Some(inner) = self.inner.take() {
            if !inner.is_end_stream() {
                if let Some(x) = &self.exchange {
                    x.conn.unread_body.store(true, Ordering::Relaxed);
                }
            }
        }
        self.done_reading();
    }

    /// The body is over (read to its end, broken off, cut or dropped).
    fn done_reading(&mut self) {
        self.inner = None;
        self.ended = None;
        if std::mem::take(&mut self.reading) {
            if let Some(x) = &self.exchange {
                x.conn.bodies_reading.fetch_sub(1, Ordering::Relaxed);
            }
        }
    }
}

impl Drop for ReqBody {
    fn drop(&mut self) {
        self.abandon();
    }
}

impl Body for ReqBody {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let Some(inner) = self.inner.as_mut() else {
            self.ended = None;
            return Poll::Ready(None);
        };
        match Pin::new(inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(d) = frame.data_ref() {
                    let n = d.len() as u64;
                    self.seen += n;
                    if let Some(x) = &self.exchange {
                        x.bytes_in.fetch_add(n, Ordering::Relaxed);
                    }
                    if self.seen > self.limit {
                        self.mark(BodyEnd::TooLarge);
                        self.abandon();
                        return Poll::Ready(Some(Err(Box::new(BodyTooLarge))));
                    }
                }
                // The sender may stop polling once the body says it has ended.
                self.fire_if_ended();
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                self.mark(BodyEnd::ClientAbort);
                // Broken off: nothing more will come to linger for.
                self.done_reading();
                Poll::Ready(Some(Err(Box::new(e))))
            }
            Poll::Ready(None) => {
                // Read to its end (a chunked `Incoming` never says so by `is_end_stream`).
                self.done_reading();
                Poll::Ready(None)
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(|b| b.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        self.inner
            .as_ref()
            .map(|b| b.size_hint())
            .unwrap_or_else(|| SizeHint::with_exact(0))
    }
}

// === response body ===

/// A response body: a node's streamed answer, or bpgate's own small answer.
pub enum RespBody {
    Upstream(UpstreamBody),
    Full(Option<Bytes>),
}

impl RespBody {
    pub fn empty() -> Self {
        RespBody::Full(None)
    }
    pub fn full(b: impl Into<Bytes>) -> Self {
        let b = b.into();
        RespBody::Full(if b.is_empty() { None } else { Some(b) })
    }
}

impl Body for RespBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            RespBody::Upstream(b) => Pin::new(b).poll_frame(cx),
            RespBody::Full(b) => Poll::Ready(b.take().map(|d| Ok(Frame::data(d)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            RespBody::Upstream(b) => b.is_end_stream(),
            RespBody::Full(b) => b.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            RespBody::Upstream(b) => b.size_hint(),
            RespBody::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |d| d.len() as u64)),
        }
    }
}

// === a node's response body ===

/// Where a pooled upstream connection goes when its exchange ends: the node's pool.
pub trait ConnectionHome: Send + Sync {
    /// The exchange ended. `reusable` is the connection when its response was read to the end
    /// (it can serve another request), `None` when it must close. `max_idle` is how many idle
    /// connections the pool may keep, as the request's generation says.
    fn exchange_ended(&self, reusable: Option<SendRequest<ReqBody>>, max_idle: usize);
}

/// A connection lent to one exchange; given back to its home when the lease drops.
pub struct Lease {
    home: Arc<dyn ConnectionHome>,
    conn: Option<SendRequest<ReqBody>>,
    max_idle: usize,
    /// The response ended cleanly: the connection may be reused.
    clean: bool,
}

impl Lease {
    pub fn new(home: Arc<dyn ConnectionHome>, conn: SendRequest<ReqBody>, max_idle: usize) -> Self {
        Lease {
            home,
            conn: Some(conn),
            max_idle,
            clean: false,
        }
    }

    /// The connection is not reusable (it became a tunnel, or the response was cut).
    pub fn discard(&mut self) {
        self.conn = None;
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        let conn = if self.clean { self.conn.take() } else { None };
        self.home.exchange_ended(conn, self.max_idle);
    }
}

/// Sees the first bytes of a node's response body as they stream past (nothing is held back or
/// changed), until it has seen enough. Node selection learns engine.io session ids this way.
pub trait BodyObserver: Send + Sync {
    /// One data frame passed. `true`: done, no more frames are shown.
    fn data(&mut self, chunk: &[u8]) -> bool;
}

/// A node's response body: streamed to the client, its connection given back at the end (or
/// closed when the body broke off or was dropped early).
pub struct UpstreamBody {
    inner: Incoming,
    lease: Option<Lease>,
    observer: Option<Box<dyn BodyObserver>>,
}

impl UpstreamBody {
    pub fn new(inner: Incoming, lease: Lease) -> Self {
        let mut b = UpstreamBody {
            inner,
            lease: Some(lease),
            observer: None,
        };
        if b.inner.is_end_stream() {
            b.finish();
        }
        b
    }

    fn finish(&mut self) {
        if let Some(mut l) = self.lease.take() {
            l.clean = true;
        }
    }

    /// Shows the data frames to `o` as they pass, until it is done.
    pub fn observe(&mut self, o: Box<dyn BodyObserver>) {
        self.observer = Some(o);
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let r = Pin::new(&mut self.inner).poll_frame(cx);
        if let (Poll::Ready(Some(Ok(f))), Some(o)) = (&r, self.observer.as_mut()) {
            if let Some(d) = f.data_ref() {
                if o.data(d) {
                    self.observer = None;
                }
            }
        }
        match &r {
            Poll::Ready(None) => self.finish(),
            Poll::Ready(Some(Ok(_))) if self.inner.is_end_stream() => self.finish(),
            // The lease drops unclean: the connection closes.
            Poll::Ready(Some(Err(_))) => self.lease = None,
            _ => {}
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

// === bpgate's own answers ===

/// Why bpgate answered a request itself. [`Refusal::row`] is the one table from a refusal to its
/// status, the reason the client and the audit line get, and the audit outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// CORS: an `Origin` outside `cors.origins` with `reject_disallowed`.
    OriginNotAllowed,
    /// CORS: a preflight for an origin, method or header that is not allowed.
    PreflightRefused,
    /// Base path: an encoding other parsers could read as another prefix.
    AmbiguousPath,
    /// Base path: a path outside the prefix.
    OutsideBasePath,
    /// Base path: the rewritten path is not a valid URI.
    UnusablePath,
    /// The audit trail cannot be written and `audit.on_failure = "block"`.
    AuditUnavailable,
    /// Every node is down (or drained and none healthy).
    NoHealthyNode,
    /// The node refused or did not accept the connection.
    NodeUnreachable,
    /// The node sent no response head within the response timeout.
    NodeTimeout,
    /// The request body is larger than `limits.max_body`.
    BodyTooLarge,
    /// The client's request body broke off.
    BodyCutOff,
    /// The node broke the exchange after it started.
    NodeBroke,
    /// No node was put on the request (a wiring bug).
    NoTarget,
    /// hyper refused the request head as malformed.
    MalformedRequest,
    /// hyper refused the request head as larger than `limits.max_header_bytes`.
    HeadTooLarge,
    /// HTTP/1.1: both `Content-Length` and `Transfer-Encoding` (RFC 9112 §6.3: a smuggling
    /// attempt until proven otherwise); the connection is closed after the answer.
    AmbiguousFraming,
    /// HTTP/2: a `Host` header naming another authority than `:authority` (RFC 9113 §8.3.1).
    HostMismatch,
}

impl Refusal {
    /// (status, reason, outcome).
    pub fn row(self) -> (StatusCode, &'static str, Outcome) {
        use Outcome::*;
        match self {
            Refusal::OriginNotAllowed => (StatusCode::FORBIDDEN, "origin not allowed", Rejected),
            Refusal::PreflightRefused => {
                (StatusCode::FORBIDDEN, "CORS preflight refused", Rejected)
            }
            Refusal::AmbiguousPath => {
                (StatusCode::BAD_REQUEST, "ambiguous path encoding", Rejected)
            }
            Refusal::OutsideBasePath => (StatusCode::NOT_FOUND, "outside the base path", Rejected),
            Refusal::UnusablePath => (StatusCode::BAD_REQUEST, "unusable path", Rejected),
            Refusal::AuditUnavailable => (
                StatusCode::SERVICE_UNAVAILABLE,
                "the audit trail cannot be written",
                AuditUnavailable,
            ),
            Refusal::NoHealthyNode => (
                StatusCode::SERVICE_UNAVAILABLE,
                "no healthy Botpress node",
                NoUpstream,
            ),
            Refusal::NodeUnreachable => (
                StatusCode::BAD_GATEWAY,
                "the Botpress node could not be reached",
                UpstreamError,
            ),
            Refusal::NodeTimeout => (
                StatusCode::GATEWAY_TIMEOUT,
                "the Botpress node did not answer in time",
                UpstreamTimeout,
            ),
            Refusal::BodyTooLarge => (
                StatusCode::PAYLOAD_TOO_LARGE,
                "the request body is larger than bpgate allows",
                Rejected,
            ),
            Refusal::BodyCutOff => (
                StatusCode::BAD_REQUEST,
                "the request body was cut off",
                ClientAbort,
            ),
            Refusal::NodeBroke => (
                StatusCode::BAD_GATEWAY,
                "the Botpress node broke the connection",
                UpstreamError,
            ),
            Refusal::NoTarget => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "no node was selected",
                Error,
            ),
            Refusal::MalformedRequest => (StatusCode::BAD_REQUEST, "malformed request", Rejected),
            Refusal::HeadTooLarge => (
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "request head too large",
                Rejected,
            ),
            Refusal::AmbiguousFraming => (
                StatusCode::BAD_REQUEST,
                "both Content-Length and Transfer-Encoding",
                Rejected,
            ),
            Refusal::HostMismatch => (
                StatusCode::BAD_REQUEST,
                "Host differs from :authority",
                Rejected,
            ),
        }
    }

    /// bpgate's answer: a small text body naming the request id, so a user's report can be
    /// matched to the audit line.
    pub fn response(self, id: Option<&HeaderValue>) -> Resp {
        let (status, reason, outcome) = self.row();
        let id_text = id.and_then(|v| v.to_str().ok()).unwrap_or("-");
        let body = format!(
            "{} {}: {reason} (request id {id_text})\n",
            status.as_u16(),
            status.canonical_reason().unwrap_or("")
        );
        let mut r = Response::new(RespBody::full(body));
        *r.status_mut() = status;
        let h = r.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        match self {
            Refusal::NoHealthyNode => {
                h.insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
            }
            // RFC 9112 §6.3: the server MUST close the connection after responding.
            Refusal::AmbiguousFraming => {
                h.insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            _ => {}
        }
        let n = note_mut(&mut r);
        n.outcome = Some(outcome);
        n.reason = Some(reason);
        r
    }
}

/// A bodiless answer with a status (e.g. a redirect or a preflight).
pub fn empty_response(status: StatusCode) -> Resp {
    let mut r = Response::new(RespBody::empty());
    *r.status_mut() = status;
    r
}

/// Ready-made `Ready` future for layers that answer without awaiting.
pub fn ready(r: Resp) -> BoxFut {
    Box::pin(std::future::ready(Ok(r)))
}

/// What a policy layer does to the inner answer when it arrives (put in headers, rewrite URLs).
pub trait AfterResponse {
    fn after_response(self, resp: &mut Resp);
}

/// A policy layer's future, without a box of its own: its own answer (a redirect, a preflight, a
/// refusal) or the inner service's, with the layer's step applied when it arrives.
pub enum PolicyFuture<F, P> {
    /// Boxed: the rare path should not make every request's future as big as a response.
    Answer(Option<Box<Resp>>),
    Inner {
        fut: F,
        /// `None` when the layer has nothing to do to this answer.
        then: Option<P>,
    },
}

impl<F, P> PolicyFuture<F, P> {
    /// The layer answers itself; the inner service is not called.
    pub fn answer(r: Resp) -> Self {
        PolicyFuture::Answer(Some(Box::new(r)))
    }

    /// The inner service answers, then `then` (if any) is applied to its answer.
    pub fn inner(fut: F, then: Option<P>) -> Self {
        PolicyFuture::Inner { fut, then }
    }
}

impl<F, P> Future for PolicyFuture<F, P>
where
    F: Future<Output = Result<Resp, Infallible>> + Unpin,
    P: AfterResponse + Unpin,
{
    type Output = Result<Resp, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.get_mut() {
            PolicyFuture::Answer(r) => match r.take() {
                Some(r) => Poll::Ready(Ok(*r)),
                None => Poll::Pending,
            },
            PolicyFuture::Inner { fut, then } => {
                let Ok(mut resp) = std::task::ready!(Pin::new(fut).poll(cx));
                if let Some(p) = then.take() {
                    p.after_response(&mut resp);
                }
                Poll::Ready(Ok(resp))
            }
        }
    }
}
