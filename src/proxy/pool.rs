//! Pooled HTTP/1.1 connections to one Botpress node.
//!
//! Built on hyper's `client::conn::http1` rather than hyper-util's legacy `Client` for one reason
//! that matters to a cluster proxy: `try_send_request` hands the request back when the connection
//! failed before any byte was sent, so bpgate can retry it on another node (or a fresh
//! connection) whatever its method, and knows that nothing reached Botpress. The idle list is a
//! lock-free queue; a connection goes back into it only once its response body has been read to
//! the end.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use crossbeam_queue::ArrayQueue;
use http::Response;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::exchange::{Req, ReqBody};

/// Why a request could not be exchanged with a node.
#[derive(Debug)]
pub enum SendError {
    /// Nothing reached the node; the request comes back for a retry.
    Connect { req: Box<Req>, error: String },
    /// The node took longer than the response timeout to send its response head.
    Timeout,
    /// The exchange broke after the request was (partly) sent.
    Failed(hyper::Error),
}

/// Connections to one node.
pub struct Pool {
    /// `host:port`.
    pub authority: String,
    /// Node name, for notes and logs.
    pub name: Arc<str>,
    idle: ArrayQueue<Idle>,
    settings: PoolSettings,
    /// Requests sent to this node whose responses have not finished.
    in_flight: AtomicUsize,
    /// Connections opened (for metrics and the reuse ratio).
    pub connects: AtomicU64,
    /// Requests sent.
    pub requests: AtomicU64,
}

#[derive(Debug, Clone, Copy)]
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
            .field("idle", &self.idle.len())
            .finish()
    }
}

impl Pool {
    pub fn new(name: Arc<str>, authority: String, settings: PoolSettings) -> Self {
        Pool {
            authority,
            name,
            idle: ArrayQueue::new(settings.max_idle.max(1)),
            settings,
            in_flight: AtomicUsize::new(0),
            connects: AtomicU64::new(0),
            requests: AtomicU64::new(0),
        }
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    pub fn idle_count(&self) -> usize {
        self.idle.len()
    }

    /// Sends `req` and waits for the response head. On success the returned [`Lease`] keeps the
    /// connection until the body ends.
    pub async fn send(
        self: &Arc<Self>,
        mut req: Req,
        response_timeout: Duration,
    ) -> Result<(Response<Incoming>, Lease), SendError> {
        let in_flight = InFlight::new(self.clone());
        // Reuse an idle connection when one is alive; a dead one hands the request back.
        while let Some(idle) = self.idle.pop() {
            let Idle { mut tx, since } = idle;
            if since.elapsed() >= self.settings.idle_timeout || tx.is_closed() {
                continue;
            }
            // Checked in when its last body ended; the dispatcher may still be wrapping up.
            if !tx.is_ready() && tx.ready().await.is_err() {
                continue;
            }
            match self.exchange(&mut tx, req, response_timeout).await {
                Ok(resp) => {
                    return Ok((
                        resp,
                        Lease {
                            pool: self.clone(),
                            tx: Some(tx),
                            _in_flight: in_flight,
                        },
                    ))
                }
                Err(SendError::Connect { req: r, .. }) => req = *r,
                Err(e) => return Err(e),
            }
        }
        let mut tx = match tokio::time::timeout(self.settings.connect_timeout, self.connect()).await
        {
            Ok(Ok(tx)) => tx,
            Ok(Err(e)) => {
                return Err(SendError::Connect {
                    req: Box::new(req),
                    error: e,
                })
            }
            Err(_) => {
                return Err(SendError::Connect {
                    req: Box::new(req),
                    error: format!(
                        "connect timed out after {:?}",
                        self.settings.connect_timeout
                    ),
                })
            }
        };
        let resp = self.exchange(&mut tx, req, response_timeout).await?;
        Ok((
            resp,
            Lease {
                pool: self.clone(),
                tx: Some(tx),
                _in_flight: in_flight,
            },
        ))
    }

    async fn exchange(
        &self,
        tx: &mut SendRequest<ReqBody>,
        req: Req,
        response_timeout: Duration,
    ) -> Result<Response<Incoming>, SendError> {
        self.requests.fetch_add(1, Ordering::Relaxed);
        match tokio::time::timeout(response_timeout, tx.try_send_request(req)).await {
            Ok(Ok(resp)) => Ok(resp),
            Ok(Err(mut e)) => match e.take_message() {
                Some(req) => Err(SendError::Connect {
                    req: Box::new(req),
                    error: e.into_error().to_string(),
                }),
                None => Err(SendError::Failed(e.into_error())),
            },
            Err(_) => Err(SendError::Timeout),
        }
    }

    async fn connect(&self) -> Result<SendRequest<ReqBody>, String> {
        let stream = TcpStream::connect(&self.authority)
            .await
            .map_err(|e| e.to_string())?;
        let _ = stream.set_nodelay(true);
        self.connects.fetch_add(1, Ordering::Relaxed);
        let (tx, conn) = http1::Builder::new()
            .preserve_header_case(false)
            .handshake(TokioIo::new(stream))
            .await
            .map_err(|e| e.to_string())?;
        let name = self.name.clone();
        tokio::spawn(async move {
            if let Err(e) = conn.with_upgrades().await {
                tracing::debug!(node = %name, error = %e, "upstream connection ended with an error");
            }
        });
        Ok(tx)
    }

    fn checkin(&self, tx: SendRequest<ReqBody>) {
        if !tx.is_closed() {
            // A full queue drops the connection, which closes it.
            let _ = self.idle.push(Idle {
                tx,
                since: Instant::now(),
            });
        }
    }
}

/// Counts a request as outstanding on its node while it lives.
pub struct InFlight(Arc<Pool>);

impl InFlight {
    fn new(pool: Arc<Pool>) -> Self {
        pool.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(pool)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A connection lent to one exchange. Released to the pool when the body ended cleanly.
pub struct Lease {
    pool: Arc<Pool>,
    tx: Option<SendRequest<ReqBody>>,
    _in_flight: InFlight,
}

impl Lease {
    /// The connection is not reusable (it became a tunnel, or the response was cut).
    pub fn discard(&mut self) {
        self.tx = None;
    }

    fn release(&mut self) {
        if let Some(tx) = self.tx.take() {
            self.pool.checkin(tx);
        }
    }
}

/// A node's response body: streamed to the client, its connection returned to the pool at the
/// end, and the node's in-flight count lowered when it finishes or is dropped.
pub struct UpstreamBody {
    inner: Incoming,
    lease: Option<Lease>,
}

impl UpstreamBody {
    pub fn new(inner: Incoming, lease: Lease) -> Self {
        let mut b = UpstreamBody {
            inner,
            lease: Some(lease),
        };
        if b.inner.is_end_stream() {
            b.finish();
        }
        b
    }

    fn finish(&mut self) {
        if let Some(mut l) = self.lease.take() {
            l.release();
        }
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
        match &r {
            Poll::Ready(None) => self.finish(),
            Poll::Ready(Some(Ok(_))) if self.inner.is_end_stream() => self.finish(),
            Poll::Ready(Some(Err(_))) => {
                if let Some(l) = self.lease.as_mut() {
                    l.discard();
                }
                self.lease = None;
            }
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

impl Drop for UpstreamBody {
    fn drop(&mut self) {
        // Dropped before the end (client went away): the connection may hold unread bytes.
        if let Some(l) = self.lease.as_mut() {
            l.discard();
        }
    }
}
