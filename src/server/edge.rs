//! The connection edge: one client connection from TLS handshake to close. It negotiates
//! HTTP/1.1 or HTTP/2, closes idle keep-alive connections, and is where each request gets its
//! [`Exchange`] and runs on the generation in service when it arrived.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use rustls::ServerConfig;
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;
use tokio_util::task::TaskTracker;
use tower::Service;

use crate::audit::{AuditBody, Record};
use crate::config::Loaded;
use crate::counters::HandshakeFailure;
use crate::exchange::{ConnInfo, Exchange, Refusal, ReqBody};
use crate::proxy;
use crate::reload::Generations;
use crate::tls;

/// The connection settings, fixed at start (`[limits]` and `tls.handshake_timeout` need a
/// restart).
pub(super) struct EdgeConfig {
    http: auto::Builder<Tracked>,
    handshake_timeout: Duration,
    keepalive: Duration,
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
        let mut b = auto::Builder::new(Tracked(connections));
        b.http1()
            .timer(TokioTimer::new())
            .header_read_timeout(l.header_read_timeout)
            .max_buf_size((l.max_header_bytes.0 as usize).max(8192))
            // One buffer per write: over TLS each iovec would become its own record (and AEAD
            // seal).
            .writev(false)
            .keep_alive(true);
        b.http2()
            .timer(TokioTimer::new())
            .max_concurrent_streams(l.h2_max_concurrent_streams)
            .max_header_list_size(l.max_header_bytes.0.min(u32::MAX as u64) as u32)
            .keep_alive_interval(Some(Duration::from_secs(30)))
            .keep_alive_timeout(Duration::from_secs(20));
        EdgeConfig {
            http: b,
            handshake_timeout: loaded.config.tls.handshake_timeout,
            keepalive: l.keepalive_timeout,
        }
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

    /// Serves one accepted TCP connection to its end.
    pub(super) async fn serve(self: Arc<Self>, stream: TcpStream, peer: SocketAddr) {
        let _ = stream.set_nodelay(true);
        let local = stream.local_addr().unwrap_or(peer);
        let counters = self.generations.shared().counters.clone();
        let c = &counters.connections;
        c.handshakes.fetch_add(1, Ordering::Relaxed);
        let accept = self.tls.accept(stream);
        let tls = match tokio::time::timeout(self.config.handshake_timeout, accept).await {
            Ok(Ok(t)) => t,
            Ok(Err(e)) => {
                c.handshake_failed(handshake_failure(&e));
                tracing::debug!(%peer, error = %e, "TLS handshake failed");
                return;
            }
            Err(_) => {
                c.handshake_failed(HandshakeFailure::Timeout);
                tracing::debug!(%peer, "TLS handshake timed out");
                return;
            }
        };
        let (_, session) = tls.get_ref();
        let tls_version = tls::version_name(session.protocol_version());
        let h2 = session.alpn_protocol() == Some(b"h2");
        let conn = Arc::new(ConnInfo::new(peer, local, tls_version));
        let gauge = if h2 { &c.h2 } else { &c.h1 };
        gauge.fetch_add(1, Ordering::Relaxed);
        self.clone().serve_http(TokioIo::new(tls), conn).await;
        gauge.fetch_sub(1, Ordering::Relaxed);
    }

    async fn serve_http<I>(self: Arc<Self>, io: I, conn: Arc<ConnInfo>)
    where
        I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    {
        let activity = Arc::new(Activity {
            in_flight: AtomicUsize::new(0),
            last: AtomicU64::new(0),
            start: Instant::now(),
        });
        let edge = self.clone();
        let (c2, a2) = (conn.clone(), activity.clone());
        let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
            let edge = edge.clone();
            let conn = c2.clone();
            let activity = a2.clone();
            async move {
                activity.begin();
                let r = edge.handle(req, conn).await;
                activity.end();
                r
            }
        });
        let keepalive = self.config.keepalive;
        let shutdown = self.generations.shared().shutdown.clone();
        // The drain deadline: what still runs is cut (its audit lines written as the requests
        // drop, before the trail is flushed).
        let deadline = self.generations.shared().background.hard_stop.clone();
        let conn_fut = self.config.http.serve_connection_with_upgrades(io, svc);
        tokio::pin!(conn_fut);
        let idle = tokio::time::sleep(keepalive);
        tokio::pin!(idle);
        let mut closing = false;
        let result = loop {
            tokio::select! {
                r = conn_fut.as_mut() => break r,
                _ = deadline.cancelled() => {
                    conn.mark_cut();
                    break Ok(());
                }
                _ = shutdown.cancelled(), if !closing => {
                    conn_fut.as_mut().graceful_shutdown();
                    closing = true;
                }
                _ = idle.as_mut(), if !closing => {
                    match activity.idle_for(keepalive) {
                        None => {
                            conn_fut.as_mut().graceful_shutdown();
                            closing = true;
                        }
                        Some(left) => idle.as_mut().reset(tokio::time::Instant::now() + left),
                    }
                }
            }
        };
        if let Err(e) = result {
            self.connection_error(&conn, e.as_ref());
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
    /// [`Exchange`] and calls that generation's stack.
    async fn handle(
        &self,
        req: Request<Incoming>,
        conn: Arc<ConnInfo>,
    ) -> Result<Response<AuditBody>, std::convert::Infallible> {
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
            conn,
            client_ip,
            peer_trusted,
            bytes_in: AtomicU64::new(0),
            body_end: Default::default(),
        });
        let max_body = generation.edge.max_body;
        let mut stack = generation.stack.clone();
        // The stack holds what it needs of the generation; the guard is not held across the
        // await.
        drop(generation);
        let (mut parts, body) = req.into_parts();
        parts.extensions.insert(x.clone());
        let req = Request::from_parts(parts, ReqBody::new(body, x, max_body));
        stack.call(req).await
    }
}

/// Per-connection activity, to close idle keep-alive connections.
struct Activity {
    in_flight: AtomicUsize,
    /// Milliseconds since `start` of the last request start or end.
    last: AtomicU64,
    start: Instant,
}

impl Activity {
    fn touch(&self) {
        self.last
            .store(self.start.elapsed().as_millis() as u64, Ordering::Relaxed);
    }
    fn begin(&self) {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        self.touch();
    }
    fn end(&self) {
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.touch();
    }
    /// `None` when idle for at least `limit`; otherwise how long until it could be.
    fn idle_for(&self, limit: Duration) -> Option<Duration> {
        if self.in_flight.load(Ordering::Relaxed) > 0 {
            return Some(limit);
        }
        let since = self
            .start
            .elapsed()
            .saturating_sub(Duration::from_millis(self.last.load(Ordering::Relaxed)));
        if since >= limit {
            None
        } else {
            Some(limit - since)
        }
    }
}
