//! The audit trail: one JSON line per request bpgate parsed, written when the exchange ends, and
//! one more when a WebSocket/Upgrade tunnel closes (its `101` line is the opening one).
//!
//! The layer is the outermost of the stack, so it sees every answer, bpgate's own included. It
//! captures the request's fields up front, wraps the response body to count bytes out, and
//! hands the finished [`Record`] to the [`AuditSink`] when the body ends, fails, or is dropped
//! (the client went away: `client_abort`).

pub mod query;
mod record;
mod user;
mod writer;

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::header::{HeaderValue, HOST, ORIGIN, REFERER, USER_AGENT};
use http::{Method, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use tower::{Layer, Service};

pub use record::{encode, now_ms, redact_query, Event, Record};
pub use user::{visitor_id, EndUser, EndUserSource, UserInfo, UserKind, UserResolver, UserSource};
pub use writer::{AuditError, AuditGuard, AuditSink, AuditStats, WriterSettings, CURRENT_FILE};

use crate::counters::Counters;
use crate::exchange::{self, BodyEnd, Exchange, Note, Outcome, Refusal, Req, Resp, RespBody};
use crate::proxy::{TunnelHook, TunnelReport, X_REQUEST_ID};

/// What the layer needs: where lines go and how users are recognised.
pub struct AuditContext {
    /// `None` when `audit.enabled = false`.
    pub sink: Option<AuditSink>,
    /// Built once at start (its settings are restart-only).
    pub users: Arc<UserResolver>,
    /// Per-request counters, recorded at the same moment as the line.
    pub counters: Arc<Counters>,
}

#[derive(Clone)]
pub struct AuditLayer(Arc<AuditContext>);

impl AuditLayer {
    pub fn new(cx: AuditContext) -> Self {
        AuditLayer(Arc::new(cx))
    }
}

impl<S> Layer<S> for AuditLayer {
    type Service = Audit<S>;
    fn layer(&self, inner: S) -> Audit<S> {
        Audit {
            inner,
            cx: self.0.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Audit<S> {
    inner: S,
    cx: Arc<AuditContext>,
}

type AuditFut =
    Pin<Box<dyn std::future::Future<Output = Result<Response<AuditBody>, Infallible>> + Send>>;

impl<S> Service<Req> for Audit<S>
where
    S: Service<Req, Response = Resp, Error = Infallible, Future = exchange::BoxFut>,
{
    type Response = Response<AuditBody>;
    type Error = Infallible;
    type Future = AuditFut;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Req) -> AuditFut {
        let x = exchange::exchange(&req).cloned();
        let id = x.as_ref().map(|x| x.id.clone());
        let sink = self.cx.sink.clone();
        let counters = self.cx.counters.clone();
        let pending = x.map(|x| Pending::capture(&req, x, &self.cx.users));
        let edge_refusal = pending.as_ref().and_then(|p| p.exchange.refusal);
        // Fail closed: while the trail cannot be written, nothing goes unaudited.
        let fut = if let Some(r) = edge_refusal {
            exchange::ready(r.response(id.as_ref()))
        } else if sink.as_ref().is_some_and(|s| s.refusing()) {
            exchange::ready(Refusal::AuditUnavailable.response(id.as_ref()))
        } else {
            self.inner.call(req)
        };
        Box::pin(async move {
            let mut resp = fut.await?;
            set_request_id(&mut resp, id);
            let Some(mut p) = pending else {
                return Ok(resp.map(|b| AuditBody {
                    inner: b,
                    pending: None,
                }));
            };
            let status = resp.status();
            let note = resp.extensions().get::<Note>().cloned().unwrap_or_default();
            p.record.status = status.as_u16();
            p.record.upstream = note.node;
            p.record.sticky = note.sticky;
            p.record.outcome = note.outcome.unwrap_or(Outcome::Ok);
            p.record.reason = note.reason;
            p.upstream_us = note.upstream_us;
            p.counters = Some(counters);
            p.bodiless = p.bodiless
                || status.is_informational()
                || status == StatusCode::NO_CONTENT
                || status == StatusCode::NOT_MODIFIED;
            if status == StatusCode::SWITCHING_PROTOCOLS {
                if let (Some(hook), Some(sink)) =
                    (resp.extensions().get::<TunnelHook>(), sink.as_ref())
                {
                    let mut close = p.record.clone();
                    let sink = sink.clone();
                    hook.set(move |r: &TunnelReport| {
                        close.event = Event::TunnelClose;
                        close.ts_ms = now_ms();
                        close.duration_us = r.duration.as_micros() as u64;
                        close.bytes_in = r.bytes_up;
                        close.bytes_out = r.bytes_down;
                        close.closed_by = Some(r.closed_by);
                        close.outcome = if r.closed_by == "error" {
                            Outcome::TunnelError
                        } else {
                            Outcome::Ok
                        };
                        sink.write(close);
                    });
                }
            }
            p.sink = sink;
            Ok(resp.map(|b| {
                let mut body = AuditBody {
                    inner: b,
                    pending: Some(Box::new(p)),
                };
                if body.inner.is_end_stream() {
                    body.finish(None);
                }
                body
            }))
        })
    }
}

fn set_request_id<B>(resp: &mut Response<B>, id: Option<HeaderValue>) {
    if let Some(id) = id {
        resp.headers_mut().insert(X_REQUEST_ID.clone(), id);
    }
}

/// A record waiting for its response body to end.
struct Pending {
    record: Record,
    exchange: Arc<Exchange>,
    sink: Option<AuditSink>,
    counters: Option<Arc<Counters>>,
    upstream_us: Option<u64>,
    /// HEAD and 1xx/204/304 answers have no body for hyper to read.
    bodiless: bool,
}

impl Pending {
    fn capture(req: &Req, x: Arc<Exchange>, users: &UserResolver) -> Pending {
        let h = req.headers();
        let host = h.get(HOST).cloned().or_else(|| {
            req.uri()
                .authority()
                .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
        });
        let record = Record {
            event: Event::Request,
            ts_ms: 0,
            request_id: Some(x.id.clone()),
            client_ip: x.client_ip,
            peer_ip: crate::proxy::canonical(x.conn.peer.ip()),
            forwarded_for: crate::proxy::received_chain(h),
            user: users.resolve(req.uri().path(), h),
            end_user: users.end_user(req.uri().path(), h),
            visitor_id: visitor_id(req.uri().path(), req.uri().query()),
            method: Some(req.method().clone()),
            host,
            uri: Some(req.uri().clone()),
            status: 0,
            bytes_in: 0,
            bytes_out: 0,
            duration_us: 0,
            upstream: None,
            sticky: None,
            http_version: Some(req.version()),
            tls_version: x.conn.tls_version,
            user_agent: h.get(USER_AGENT).cloned(),
            origin: h.get(ORIGIN).cloned(),
            referer: h.get(REFERER).cloned(),
            outcome: Outcome::Ok,
            reason: None,
            closed_by: None,
        };
        Pending {
            record,
            bodiless: req.method() == Method::HEAD,
            exchange: x,
            sink: None,
            counters: None,
            upstream_us: None,
        }
    }
}

/// The response body, counted; writes the record when it ends.
pub struct AuditBody {
    inner: RespBody,
    pending: Option<Box<Pending>>,
}

impl AuditBody {
    /// `error`: the outcome when the body failed, `None` when it ended normally.
    fn finish(&mut self, error: Option<Outcome>) {
        let Some(p) = self.pending.take() else { return };
        let Pending {
            mut record,
            exchange,
            sink,
            counters,
            upstream_us,
            ..
        } = *p;
        record.ts_ms = now_ms();
        record.duration_us = exchange.start.elapsed().as_micros() as u64;
        record.bytes_in = exchange.bytes_in.load(Ordering::Relaxed);
        if let Some(o) = error {
            record.outcome = o;
            if o == Outcome::ClientAbort && exchange.conn.was_cut() {
                record.reason =
                    Some("cut by bpgate at the drain deadline (shutdown.drain_timeout)");
            }
        } else if record.outcome == Outcome::Ok {
            match exchange.body_end() {
                BodyEnd::ClientAbort => record.outcome = Outcome::ClientAbort,
                BodyEnd::TooLarge => record.outcome = Outcome::Rejected,
                BodyEnd::Normal => {}
            }
        }
        if let (Some(c), Some(method)) = (&counters, &record.method) {
            c.requests.record(
                record.status,
                method.as_str(),
                record.duration_us,
                upstream_us,
                record.bytes_in,
                record.bytes_out,
            );
        }
        if let Some(s) = sink {
            s.write(record);
        }
    }

    fn count(&mut self, n: usize) {
        if let Some(p) = self.pending.as_mut() {
            p.record.bytes_out += n as u64;
        }
    }
}

impl Body for AuditBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let r = Pin::new(&mut self.inner).poll_frame(cx);
        match &r {
            Poll::Ready(Some(Ok(f))) => {
                if let Some(d) = f.data_ref() {
                    let n = d.len();
                    self.count(n);
                }
                if self.inner.is_end_stream() {
                    self.finish(None);
                }
            }
            Poll::Ready(Some(Err(_))) => self.finish(Some(Outcome::UpstreamError)),
            Poll::Ready(None) => self.finish(None),
            Poll::Pending => {}
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

impl Drop for AuditBody {
    fn drop(&mut self) {
        if self.pending.is_some() {
            let bodiless = self.pending.as_ref().is_some_and(|p| p.bodiless);
            self.finish(if bodiless || self.inner.is_end_stream() {
                None
            } else {
                Some(Outcome::ClientAbort)
            });
        }
    }
}

/// Settings for the writer thread from the config.
pub fn writer_settings(c: &crate::config::Audit) -> WriterSettings {
    WriterSettings {
        dir: c.dir.clone(),
        rotation: c.rotation,
        max_size: c.max_size.0,
        max_files: c.max_files,
        stdout: c.stdout,
        queue: c.queue,
        flush_interval: c.flush_interval,
        on_failure: c.on_failure,
    }
}
