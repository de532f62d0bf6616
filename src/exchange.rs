//! What every layer of the request pipeline shares: the per-request [`Exchange`] record, the
//! request and response body types, the [`Note`] layers leave on a response for the audit trail,
//! and the small responses bpgate answers by itself.

use std::convert::Infallible;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http::{header, HeaderValue, Request, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

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
    pub forwarding: crate::proxy::ForwardedCache,
}

impl ConnInfo {
    pub fn new(peer: SocketAddr, local: SocketAddr, tls_version: Option<&'static str>) -> Self {
        ConnInfo {
            peer,
            local,
            tls_version,
            forwarding: Default::default(),
        }
    }
}

/// One request/response exchange. Created at the edge, shared (by `Arc`) with the body wrappers
/// and the audit record, so counters need no locks.
#[derive(Debug)]
pub struct Exchange {
    pub start: Instant,
    pub id: HeaderValue,
    pub conn: Arc<ConnInfo>,
    /// The client's address after trusted-proxy processing ([`crate::proxy::client_ip`]).
    pub client_ip: IpAddr,
    /// Whether the TCP peer is a trusted proxy (its forwarding headers are believed).
    pub peer_trusted: bool,
    /// Request body bytes received from the client.
    pub bytes_in: AtomicU64,
    /// Set by the request body when it stopped early; see [`BodyEnd`].
    pub body_end: AtomicU8,
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
    /// `rejected`, `upstream_error`, ... when not a plain `ok`.
    pub outcome: Option<&'static str>,
    /// A short reason for operators, for bpgate-generated answers.
    pub reason: Option<&'static str>,
    /// Microseconds from sending to the node until its response head.
    pub upstream_us: Option<u64>,
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
}

/// The error a request body yields when it passes `limits.max_body`.
#[derive(Debug)]
pub struct BodyTooLarge;

impl std::fmt::Display for BodyTooLarge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("request body exceeds limits.max_body")
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
        ReqBody {
            inner: Some(inner),
            exchange: Some(exchange),
            limit,
            seen: 0,
        }
    }

    pub fn empty() -> Self {
        ReqBody {
            inner: None,
            exchange: None,
            limit: u64::MAX,
            seen: 0,
        }
    }

    fn mark(&self, end: BodyEnd) {
        if let Some(x) = &self.exchange {
            x.body_end.store(end as u8, Ordering::Relaxed);
        }
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
                        self.inner = None;
                        return Poll::Ready(Some(Err(Box::new(BodyTooLarge))));
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                self.mark(BodyEnd::ClientAbort);
                Poll::Ready(Some(Err(Box::new(e))))
            }
            other => other.map_err(|e| Box::new(e) as Self::Error),
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
    Upstream(crate::proxy::UpstreamBody),
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

// === bpgate's own answers ===

/// A small text answer from bpgate itself, naming the request id so a user's report can be
/// matched to the audit line.
pub fn error_response(
    status: StatusCode,
    reason: &'static str,
    outcome: &'static str,
    id: Option<&HeaderValue>,
) -> Resp {
    let id_text = id.and_then(|v| v.to_str().ok()).unwrap_or("-");
    let body = format!(
        "{} {}: {reason} (request id {id_text})\n",
        status.as_u16(),
        status.canonical_reason().unwrap_or("")
    );
    let mut r = Response::new(RespBody::full(body));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    let n = note_mut(&mut r);
    n.outcome = Some(outcome);
    n.reason = Some(reason);
    r
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
