//! The connection edge: one client connection from TLS handshake to close. It negotiates
//! HTTP/1.1 or HTTP/2, closes idle keep-alive connections, and is where each request gets its
//! [`Exchange`] and runs on the generation in service when it arrived.

use std::cell::RefCell;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use http::header::HOST;
use http::{Request, StatusCode, Version};
use hyper::body::Incoming;
use hyper::server::conn::{http1, http2};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use rustls::ServerConfig;
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use tokio_util::task::TaskTracker;
use tower::Service;

use crate::audit::{AuditBody, Record};
use crate::config::Loaded;
use crate::counters::HandshakeFailure;
use crate::exchange::{ConnInfo, Exchange, Refusal, Req, ReqBody};
use crate::proxy;
use crate::reload::Generations;
use crate::stack::Stack;
use crate::tls;

use super::io::{self, ConnState, EdgeIo, InFlight};

/// The connection settings, fixed at start (`[limits]` and `tls.handshake_timeout` need a
/// restart).
///
/// A connection is served by the builder of the protocol ALPN chose: hyper-util's `auto`
/// builder reads the first 24 bytes on their own to tell HTTP/2's preface from HTTP/1.1, and
/// giving them back to hyper's HTTP/1.1 reader doubles its buffer to 16 KiB for the connection's
/// life. Only a client that offered no ALPN (HTTP/2 with prior knowledge, or an old HTTP/1.x
/// client) is sniffed.
pub(super) struct EdgeConfig {
    h1: http1::Builder,
    h2: http2::Builder<Tracked>,
    sniff: auto::Builder<Tracked>,
    handshake_timeout: Duration,
    keepalive: Duration,
    limits: io::Limits,
}

/// The HTTP/1.1 settings, for `http1::Builder` and `auto`'s (the same methods, other types).
macro_rules! http1_settings {
    ($b:expr, $l:expr) => {
        $b.timer(TokioTimer::new())
            // The request-head timer is `io::EdgeIo`'s: hyper's also runs while a kept-alive
            // connection waits for its next request, cutting it at 10 s instead of 75.
            .header_read_timeout(None)
            .max_buf_size(($l.max_header_bytes.0 as usize).max(8192))
            // One buffer per write: over TLS each iovec would become its own record (and AEAD
            // seal).
            .writev(false)
            .keep_alive(true)
    };
}

/// The HTTP/2 settings, for `http2::Builder` and `auto`'s.
macro_rules! http2_settings {
    ($b:expr, $l:expr) => {
        $b.timer(TokioTimer::new())
            .max_concurrent_streams($l.h2_max_concurrent_streams)
            .max_header_list_size($l.max_header_bytes.0.min(u32::MAX as u64) as u32)
            .keep_alive_interval(Some(Duration::from_secs(30)))
            .keep_alive_timeout(Duration::from_secs(20))
    };
}

/// What a connection speaks, from ALPN.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Protocol {
    /// `http/1.1` or `http/1.0`.
    Http1,
    /// `h2`.
    Http2,
    /// No ALPN: HTTP/2 if the client starts with its preface, HTTP/1.x otherwise.
    Sniff,
}

/// A connection as hyper serves it, by protocol (each boxed, see [`Edge::serve`]); without
/// ALPN, what the sniffing connection is made of.
enum Serving<H1, H2, I, S> {
    Http1(Pin<Box<H1>>),
    Http2(Pin<Box<H2>>),
    Sniff(Box<(I, S)>),
}

impl Protocol {
    fn from_alpn(alpn: Option<&[u8]>) -> Self {
        match alpn {
            Some(b"h2") => Protocol::Http2,
            // The server only offers `h2`, `http/1.1` and `http/1.0`.
            Some(_) => Protocol::Http1,
            None => Protocol::Sniff,
        }
    }
}

/// Spawns what hyper runs beside a connection (each HTTP/2 stream's request) on the gateway's
/// connection tracker, so the shutdown drain waits for those requests as it waits for
/// connections, and knows when a cut one has dropped (and written its audit line).
#[derive(Clone)]
pub(super) struct Tracked(pub(super) TaskTracker);

impl<F> hyper::rt::Executor<F> for Tracked
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    fn execute(&self, fut: F) {
        self.0.spawn(fut);
    }
}

impl EdgeConfig {
    pub(super) fn new(loaded: &Loaded, connections: TaskTracker) -> Self {
        let l = &loaded.config.limits;
        let mut h1 = http1::Builder::new();
        http1_settings!(h1, l);
        let mut h2 = http2::Builder::new(Tracked(connections.clone()));
        http2_settings!(h2, l);
        let mut sniff = auto::Builder::new(Tracked(connections));
        http1_settings!(sniff.http1(), l);
        http2_settings!(sniff.http2(), l);
        EdgeConfig {
            h1,
            h2,
            sniff,
            handshake_timeout: loaded.config.tls.handshake_timeout,
            keepalive: l.keepalive_timeout,
            limits: io::Limits {
                header_read: l.header_read_timeout,
                lingering_time: l.lingering_time,
                lingering_timeout: l.lingering_timeout,
                lingering_size: l.lingering_size.0,
            },
        }
    }
}

/// The open-connections gauge of a connection's protocol.
fn open_gauge(c: &crate::counters::ConnCounters, h2: bool) -> &AtomicUsize {
    if h2 {
        &c.h2
    } else {
        &c.h1
    }
}

/// Why a handshake failed, for `bpgate_tls_handshake_failures_total{reason}`. tokio-rustls hands
/// rustls's own error over inside an `InvalidData` I/O error.
fn handshake_failure(e: &std::io::Error) -> HandshakeFailure {
    use rustls::AlertDescription as A;
    match e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
        Some(rustls::Error::PeerIncompatible(_) | rustls::Error::NoApplicationProtocol) => {
            HandshakeFailure::Incompatible
        }
        Some(rustls::Error::AlertReceived(a)) => match a {
            A::BadCertificate
            | A::UnsupportedCertificate
            | A::CertificateRevoked
            | A::CertificateExpired
            | A::CertificateUnknown
            | A::UnknownCA
            | A::AccessDenied
            | A::BadCertificateStatusResponse => HandshakeFailure::CertificateRejected,
            A::ProtocolVersion
            | A::HandshakeFailure
            | A::InsufficientSecurity
            | A::NoApplicationProtocol => HandshakeFailure::Incompatible,
            _ => HandshakeFailure::Protocol,
        },
        Some(_) => HandshakeFailure::Protocol,
        None if e.kind() == std::io::ErrorKind::InvalidData => HandshakeFailure::Protocol,
        None => HandshakeFailure::Eof,
    }
}

pub(super) struct Edge {
    tls: TlsAcceptor,
    config: EdgeConfig,
    generations: Arc<Generations>,
}

impl Edge {
    pub(super) fn new(
        tls: Arc<ServerConfig>,
        config: EdgeConfig,
        generations: Arc<Generations>,
    ) -> Self {
        Edge {
            tls: TlsAcceptor::from(tls),
            config,
            generations,
        }
    }

    /// The counters of the public listener.
    pub(super) fn counters(&self) -> &crate::counters::ConnCounters {
        &self.generations.shared().counters.connections
    }

    /// The TLS handshake of an accepted connection, bounded by `tls.handshake_timeout` and
    /// counted. `None` when it failed.
    pub(super) async fn handshake(
        &self,
        stream: TcpStream,
        peer: SocketAddr,
    ) -> Option<TlsStream<TcpStream>> {
        let _ = stream.set_nodelay(true);
        let c = self.counters();
        c.handshakes.fetch_add(1, Ordering::Relaxed);
        let accept = self.tls.accept(stream);
        match tokio::time::timeout(self.config.handshake_timeout, accept).await {
            Ok(Ok(t)) => Some(t),
            Ok(Err(e)) => {
                c.handshake_failed(handshake_failure(&e));
                tracing::debug!(%peer, error = %e, "TLS handshake failed");
                None
            }
            Err(_) => {
                c.handshake_failed(HandshakeFailure::Timeout);
                tracing::debug!(%peer, "TLS handshake timed out");
                None
            }
        }
    }

    /// Serves a connection whose TLS handshake just ended, to its end.
    ///
    /// Not an `async fn`, and the connection boxed: an `async fn` keeps its arguments for its
    /// whole life beside the futures made from them, so every layer the TLS stream (1.2 KiB with
    /// its session) and then hyper's connection (2 KiB) were moved through kept another copy in
    /// the connection's task. Built here, the connection is one allocation of its own size, and
    /// the task only holds a pointer to it.
    pub(super) fn serve(
        self: Arc<Self>,
        tls: TlsStream<TcpStream>,
        peer: SocketAddr,
    ) -> impl std::future::Future<Output = ()> + Send + 'static {
        let ready_at = Instant::now();
        let (tcp, session) = tls.get_ref();
        let local = tcp.local_addr().unwrap_or(peer);
        let tls_version = tls::version_name(session.protocol_version());
        let protocol = Protocol::from_alpn(session.alpn_protocol());
        let h2 = protocol == Protocol::Http2;
        let conn = Arc::new(ConnInfo::new(peer, local, tls_version));
        let state = Arc::new(ConnState::new());
        let io = TokioIo::new(EdgeIo::new(
            tls,
            state.clone(),
            conn.clone(),
            self.config.limits,
            !h2,
            protocol == Protocol::Sniff,
            ready_at,
        ));
        let edge = self.clone();
        let (c2, s2) = (conn.clone(), state.clone());
        // The pipeline of the generation in service, kept (with that generation's number) for
        // the connection's next requests instead of cloned for each: one clone per connection,
        // and one more after each reload. (hyper calls the service by `&self`; the borrow lasts
        // only while `start` runs.)
        let stack: RefCell<Option<(u64, Stack)>> = RefCell::new(None);
        let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
            // Synchronously, as hyper hands the head over: the head timer stops here.
            let (in_flight, ambiguous) = s2.begin();
            c2.unread_body.store(false, Ordering::Relaxed);
            let fut = edge.start(req, &c2, ambiguous, &mut stack.borrow_mut());
            let state = s2.clone();
            async move {
                let resp = fut.await?;
                if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
                    state.upgraded();
                }
                Ok::<_, std::convert::Infallible>(resp.map(|inner| EdgeBody { inner, in_flight }))
            }
        });
        let serving = match protocol {
            Protocol::Http1 => Serving::Http1(Box::pin(
                self.config.h1.serve_connection(io, svc).with_upgrades(),
            )),
            Protocol::Http2 => Serving::Http2(Box::pin(self.config.h2.serve_connection(io, svc))),
            // `auto`'s connection borrows its builder: made in the task.
            Protocol::Sniff => Serving::Sniff(Box::new((io, svc))),
        };
        let counters = self.generations.shared().counters.clone();
        open_gauge(&counters.connections, h2).fetch_add(1, Ordering::Relaxed);
        async move {
            match serving {
                Serving::Http1(c) => {
                    self.drive(c, |c| c.graceful_shutdown(), &conn, &state)
                        .await
                }
                Serving::Http2(c) => {
                    self.drive(c, |c| c.graceful_shutdown(), &conn, &state)
                        .await
                }
                Serving::Sniff(parts) => {
                    let (io, svc) = *parts;
                    let c = Box::pin(self.config.sniff.serve_connection_with_upgrades(io, svc));
                    self.drive(c, |c| c.graceful_shutdown(), &conn, &state)
                        .await
                }
            }
            open_gauge(&counters.connections, h2).fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Runs a connection to its end: closes it once idle for `limits.keepalive_timeout`, drains
    /// it at shutdown, cuts it at the drain deadline.
    async fn drive<C, E>(
        &self,
        mut conn_fut: Pin<Box<C>>,
        graceful_shutdown: fn(Pin<&mut C>),
        conn: &ConnInfo,
        state: &ConnState,
    ) where
        C: std::future::Future<Output = Result<(), E>>,
        E: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let keepalive = self.config.keepalive;
        let shutdown = self.generations.shared().shutdown.clone();
        // The drain deadline: what still runs is cut (its audit lines written as the requests
        // drop, before the trail is flushed).
        let deadline = self.generations.shared().background.hard_stop.clone();
        let idle = tokio::time::sleep(keepalive);
        tokio::pin!(idle);
        let mut closing = false;
        let result = loop {
            tokio::select! {
                r = conn_fut.as_mut() => break r,
                // Every wake-up of the connection polls each branch here, and a token's poll
                // takes its lock: the deadline only ever comes after shutdown began (the drain
                // cancels it after `shutdown`), which has set `closing`, so it is left unpolled
                // until then.
                _ = deadline.cancelled(), if closing => {
                    conn.mark_cut();
                    break Ok(());
                }
                _ = shutdown.cancelled(), if !closing => {
                    // Nothing to finish on a connection that never started a request; an HTTP/2
                    // one still in its handshake (no preface yet) would only close once the
                    // client sent it (hyper's `close_pending`).
                    if !state.has_started() {
                        break Ok(());
                    }
                    graceful_shutdown(conn_fut.as_mut());
                    closing = true;
                }
                _ = idle.as_mut(), if !closing => {
                    // A body still uploading after its response ended is not idleness.
                    let left = if conn.bodies_reading.load(Ordering::Relaxed) > 0 {
                        Some(keepalive)
                    } else {
                        state.idle_for(keepalive)
                    };
                    match left {
                        None if !state.has_started() => break Ok(()),
                        None => {
                            graceful_shutdown(conn_fut.as_mut());
                            closing = true;
                        }
                        Some(left) => idle.as_mut().reset(tokio::time::Instant::now() + left),
                    }
                }
            }
        };
        if let Err(e) = result {
            self.connection_error(conn, &*e.into());
        }
    }

    /// hyper answers malformed and oversized request heads itself (400, 431); they still get an
    /// audit line.
    fn connection_error(&self, conn: &ConnInfo, e: &(dyn std::error::Error + 'static)) {
        let Some(he) = e.downcast_ref::<hyper::Error>() else {
            tracing::debug!(peer = %conn.peer, error = %e, "connection ended with an error");
            return;
        };
        let why = if he.is_parse_too_large() {
            Refusal::HeadTooLarge
        } else if he.is_parse() {
            Refusal::MalformedRequest
        } else {
            tracing::debug!(peer = %conn.peer, error = %he, "connection ended with an error");
            return;
        };
        tracing::debug!(peer = %conn.peer, error = %he, ?why, "request refused by the HTTP parser");
        if let Some(sink) = &self.generations.current().audit {
            let peer = proxy::canonical(conn.peer.ip());
            sink.write(Record::refused(peer, conn.tls_version, why));
        }
    }

    /// The edge of the pipeline: loads the generation in service once, creates the request's
    /// [`Exchange`] and calls that generation's stack (`stack`: the connection's copy of it,
    /// replaced when a reload has published another generation since).
    fn start(
        &self,
        req: Request<Incoming>,
        conn: &Arc<ConnInfo>,
        ambiguous_framing: bool,
        stack: &mut Option<(u64, Stack)>,
    ) -> <Stack as Service<Req>>::Future {
        let generation = self.generations.current();
        let counters = &self.generations.shared().counters;
        counters
            .connections
            .requests
            .fetch_add(1, Ordering::Relaxed);
        let trusted = &generation.edge.trusted;
        let peer_ip = proxy::canonical(conn.peer.ip());
        let peer_trusted = trusted.contains(&peer_ip);
        let client_ip = proxy::client_ip(peer_ip, req.headers(), trusted);
        let id = match req.headers().get(&proxy::X_REQUEST_ID) {
            Some(v) if peer_trusted && proxy::acceptable_request_id(v) => v.clone(),
            _ => proxy::new_request_id(),
        };
        let x = Arc::new(Exchange {
            start: Instant::now(),
            id,
            conn: conn.clone(),
            client_ip,
            peer_trusted,
            bytes_in: AtomicU64::new(0),
            body_end: Default::default(),
            refusal: if ambiguous_framing {
                Some(Refusal::AmbiguousFraming)
            } else if req.version() == Version::HTTP_2 && host_contradicts_authority(&req) {
                Some(Refusal::HostMismatch)
            } else {
                None
            },
            node: Default::default(),
        });
        let limits = generation.edge.routes.resolve(req.uri().path());
        let (mut parts, body) = req.into_parts();
        parts.extensions.insert(x.clone());
        parts.extensions.insert(limits);
        let req = Request::from_parts(parts, ReqBody::new(body, x, limits.max_body));
        match stack {
            Some((n, s)) if *n == generation.number => s.call(req),
            stack => {
                let (_, s) = stack.insert((generation.number, generation.stack.clone()));
                s.call(req)
            }
        }
    }
}

/// RFC 9113 §8.3.1: an HTTP/2 request whose `Host` names another authority than `:authority`
/// is malformed (browsers send `:authority` only; both may come from other clients).
fn host_contradicts_authority<B>(req: &Request<B>) -> bool {
    let (Some(host), Some(authority)) = (req.headers().get(HOST), req.uri().authority()) else {
        return false;
    };
    /// `:443` is the default port of `https`: `host` and `host:443` are the same authority.
    fn without_default_port(a: &[u8]) -> &[u8] {
        a.strip_suffix(b":443").unwrap_or(a)
    }
    !without_default_port(host.as_bytes())
        .eq_ignore_ascii_case(without_default_port(authority.as_str().as_bytes()))
}

/// The response body as hyper sends it: the request stays in flight (for the keep-alive and
/// head timers) until it ends.
struct EdgeBody {
    inner: AuditBody,
    in_flight: InFlight,
}

impl http_body::Body for EdgeBody {
    type Data = bytes::Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<bytes::Bytes>, hyper::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

impl std::fmt::Debug for EdgeBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EdgeBody")
            .field("in_flight", &self.in_flight)
            .finish()
    }
}
