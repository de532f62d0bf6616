//! Pooled HTTP/1.1 connections to one Botpress node.
//!
//! Built on hyper's `client::conn::http1` rather than hyper-util's legacy `Client` for one reason
//! that matters to a cluster proxy: `try_send_request` hands the request back when the connection
//! failed before any byte was sent, so bpgate can retry it on another node (or a fresh
//! connection) whatever its method, and knows that nothing reached Botpress. The idle list is a
//! lock-free queue; a connection goes back into it only once its response body has been read to
//! the end.
//!
//! A pool outlives configuration generations; its settings ([`PoolSettings`]) come with each
//! request from the generation the request runs under, so a reload applies to the next request
//! and a connection in use finishes under the settings it started with.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_queue::SegQueue;
use http::Response;
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::exchange::{ConnectionHome, Lease, Req, ReqBody};

/// The largest read from a node (hyper's `max_buf_size`; also the largest response head a node
/// may send, four times NGINX's default `proxy_buffer_size`).
const UPSTREAM_READ_MAX: usize = 32 << 10;

/// Why a request could not be exchanged with a node.
#[derive(Debug)]
pub enum SendError {
    /// Nothing reached the node; the request comes back for a retry.
    Connect { req: Box<Req>, error: ConnectError },
    /// The node took longer than the response timeout to send its response head.
    Timeout,
    /// The exchange broke after the request was (partly) sent.
    Failed(hyper::Error),
}

/// Why no connection to a node could be used.
#[derive(Debug)]
pub enum ConnectError {
    /// The TCP connection failed (refused, unreachable, reset).
    Io(std::io::Error),
    /// No connection within `upstream.connect_timeout`.
    Timeout(Duration),
    /// The HTTP/1.1 handshake or the first send on a connection failed before any byte left.
    Http(hyper::Error),
}

impl std::fmt::Display for ConnectError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConnectError::Io(e) => write!(f, "connect: {e}"),
            ConnectError::Timeout(d) => write!(f, "connect timed out after {d:?}"),
            ConnectError::Http(e) => write!(f, "connection closed before the request: {e}"),
        }
    }
}

impl std::error::Error for ConnectError {}

/// Connections to one node.
pub struct Pool {
    /// `host:port`.
    pub authority: String,
    /// Node name, for notes and logs.
    pub name: Arc<str>,
    idle: SegQueue<Idle>,
    /// Length of `idle`, kept beside it to bound it by `pool_max_idle`.
    idle_len: AtomicUsize,
    /// Requests sent to this node whose responses have not finished.
    in_flight: AtomicUsize,
    /// Connections opened (for metrics and the reuse ratio).
    pub connects: AtomicU64,
    /// Requests sent.
    pub requests: AtomicU64,
    /// WebSocket/Upgrade tunnels open to this node (a drained node is not idle while one is).
    pub tunnels: AtomicUsize,
}

/// `upstream.connect_timeout`, `idle_timeout` and `pool_max_idle`, as one generation has them.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PoolSettings {
    pub connect_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_idle: usize,
}

struct Idle {
    tx: SendRequest<ReqBody>,
    since: Instant,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("authority", &self.authority)
            .field("idle", &self.idle_count())
            .finish()
    }
}

impl Pool {
    pub fn new(name: Arc<str>, authority: String) -> Self {
        Pool {
            authority,
            name,
            idle: SegQueue::new(),
            idle_len: AtomicUsize::new(0),
            in_flight: AtomicUsize::new(0),
            connects: AtomicU64::new(0),
            requests: AtomicU64::new(0),
            tunnels: AtomicUsize::new(0),
        }
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    pub fn idle_count(&self) -> usize {
        self.idle_len.load(Ordering::Relaxed)
    }

    fn pop_idle(&self) -> Option<Idle> {
        let i = self.idle.pop()?;
        self.idle_len.fetch_sub(1, Ordering::Relaxed);
        Some(i)
    }

    /// Sends `req` and waits for the response head. On success the returned [`Lease`] keeps the
    /// connection until the body ends.
    pub async fn send(
        self: &Arc<Self>,
        mut req: Req,
        response_timeout: Duration,
        settings: &PoolSettings,
    ) -> Result<(Response<Incoming>, Lease), SendError> {
        let in_flight = InFlight::new(self);
        // Reuse an idle connection when one is alive; a dead one hands the request back.
        while let Some(idle) = self.pop_idle() {
            let Idle { mut tx, since } = idle;
            if since.elapsed() >= settings.idle_timeout || tx.is_closed() {
                continue;
            }
            // Checked in when its last body ended; the dispatcher may still be wrapping up.
            if !tx.is_ready() && tx.ready().await.is_err() {
                continue;
            }
            match self.exchange(&mut tx, req, response_timeout).await {
                Ok(resp) => return Ok((resp, in_flight.into_lease(tx, settings.max_idle))),
                Err(SendError::Connect { req: r, .. }) => req = *r,
                Err(e) => return Err(e),
            }
        }
        let connect = tokio::time::timeout(settings.connect_timeout, self.connect()).await;
        let mut tx = match connect {
            Ok(Ok(tx)) => tx,
            Ok(Err(error)) => {
                return Err(SendError::Connect {
                    req: Box::new(req),
                    error,
                })
            }
            Err(_) => {
                return Err(SendError::Connect {
                    req: Box::new(req),
                    error: ConnectError::Timeout(settings.connect_timeout),
                })
            }
        };
        let resp = self.exchange(&mut tx, req, response_timeout).await?;
        Ok((resp, in_flight.into_lease(tx, settings.max_idle)))
    }

    /// Sends `req` on `tx` and waits for the response head. The response timeout counts the
    /// node's silence the way Node's own `server.timeout` does: from the end of the request
    /// body, so a long upload is not held against the node; while the body is still being sent,
    /// a pause of the whole timeout with no byte from the client ends the exchange too.
    async fn exchange(
        &self,
        tx: &mut SendRequest<ReqBody>,
        mut req: Req,
        response_timeout: Duration,
    ) -> Result<Response<Incoming>, SendError> {
        self.requests.fetch_add(1, Ordering::Relaxed);
        let body_sent = req.body_mut().on_end();
        let progress = crate::exchange::exchange(&req).cloned();
        let send = tx.try_send_request(req);
        tokio::pin!(send);
        let outcome = 'wait: {
            if let Some(mut body_sent) = body_sent {
                let received = || {
                    progress
                        .as_ref()
                        .map_or(0, |x| x.bytes_in.load(Ordering::Relaxed))
                };
                let mut last = received();
                loop {
                    tokio::select! {
                        r = &mut send => break 'wait Some(r),
                        _ = &mut body_sent => break,
                        _ = tokio::time::sleep(response_timeout) => {
                            let now = received();
                            if now == last {
                                break 'wait None;
                            }
                            last = now;
                        }
                    }
                }
            }
            tokio::time::timeout(response_timeout, send).await.ok()
        };
        match outcome {
            Some(Ok(resp)) => Ok(resp),
            Some(Err(mut e)) => match e.take_message() {
                Some(req) => Err(SendError::Connect {
                    req: Box::new(req),
                    error: ConnectError::Http(e.into_error()),
                }),
                None => Err(SendError::Failed(e.into_error())),
            },
            None => Err(SendError::Timeout),
        }
    }

    async fn connect(&self) -> Result<SendRequest<ReqBody>, ConnectError> {
        let stream = TcpStream::connect(&self.authority)
            .await
            .map_err(ConnectError::Io)?;
        let _ = stream.set_nodelay(true);
        self.connects.fetch_add(1, Ordering::Relaxed);
        let (tx, conn) = http1::Builder::new()
            .preserve_header_case(false)
            // hyper's read buffer grows while reads fill it, up to 408 KiB: with 64 KiB answers
            // every busy upstream connection kept a 128 KiB buffer, and every client connection
            // a write buffer as large as the biggest chunk it was handed. Capped, a large answer
            // flows in 32 KiB chunks (two TLS records each).
            .max_buf_size(UPSTREAM_READ_MAX)
            .handshake(TokioIo::new(stream))
            .await
            .map_err(ConnectError::Http)?;
        let name = self.name.clone();
        tokio::spawn(async move {
            if let Err(e) = conn.with_upgrades().await {
                tracing::debug!(node = %name, error = %e, "upstream connection ended with an error");
            }
        });
        Ok(tx)
    }

    /// Keeps a connection for reuse unless `max_idle` are already kept (dropping it closes it).
    fn checkin(&self, tx: SendRequest<ReqBody>, max_idle: usize) {
        if tx.is_closed() {
            return;
        }
        if self.idle_len.fetch_add(1, Ordering::Relaxed) >= max_idle {
            self.idle_len.fetch_sub(1, Ordering::Relaxed);
            // A lowered `pool_max_idle` also sheds the surplus kept under the old value.
            if self.idle_len.load(Ordering::Relaxed) > max_idle {
                drop(self.pop_idle());
            }
            return;
        }
        self.idle.push(Idle {
            tx,
            since: Instant::now(),
        });
    }
}

impl ConnectionHome for Pool {
    fn exchange_ended(&self, reusable: Option<SendRequest<ReqBody>>, max_idle: usize) {
        if let Some(tx) = reusable {
            self.checkin(tx, max_idle);
        }
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Counts a request as outstanding on its node until its response ends (then its [`Lease`]
/// does).
struct InFlight {
    pool: Arc<Pool>,
    armed: bool,
}

impl InFlight {
    fn new(pool: &Arc<Pool>) -> Self {
        pool.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight {
            pool: pool.clone(),
            armed: true,
        }
    }

    /// Hands the count over to the lease of the connection that got the response.
    fn into_lease(mut self, tx: SendRequest<ReqBody>, max_idle: usize) -> Lease {
        self.armed = false;
        Lease::new(self.pool.clone(), tx, max_idle)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if self.armed {
            self.pool.in_flight.fetch_sub(1, Ordering::Relaxed);
        }
    }
}
