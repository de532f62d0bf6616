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
pub use writer::{
    system_clock, AuditError, AuditGuard, AuditSink, AuditStats, Clock, WriterSettings,
    CURRENT_FILE, STALL,
};

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

/// How much of an answer is taken ahead of hyper so that its line can be written before the
/// response head goes out (with `durability` other than `batched`). Only what the body has ready
/// at once is taken: a small answer is usually complete by then (a node's response read together
/// with its head, bpgate's own answers), a longer one streams as before and only its last frame
/// waits for the line.
const PREFETCH: usize = 64 << 10;

/// How a request starts.
enum Start<S: Service<Req>> {
    /// At once: the inner service's future.
    Inner(S::Future),
    /// bpgate's own answer.
    Answer(Resp),
    /// The audit queue is full: wait (without holding a thread) for room first.
    AfterRoom(S, Req),
}

impl<S> Service<Req> for Audit<S>
where
    S: Service<Req, Response = Resp, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = Response<AuditBody>;
    type Error = Infallible;
    type Future = AuditFut;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Req) -> AuditFut {
        let cx = &self.cx;
        let x = exchange::exchange(&req).cloned();
        let id = x.as_ref().map(|x| x.id.clone());
        // From here on the exchange has a line, however it ends.
        let mut guard = Unanswered(x.map(|x| Box::new(Pending::capture(&req, x, cx))));
        let edge_refusal = guard.0.as_ref().and_then(|p| p.exchange.refusal);
        let start = match (&cx.sink, edge_refusal) {
            // The connection edge refused it (ambiguous framing, Host against :authority).
            (_, Some(r)) => Start::Answer(r.response(id.as_ref())),
            // Fail closed: while the trail cannot be written, nothing goes unaudited.
            (Some(s), None) if s.has_room() && s.refusing() => {
                Start::Answer(Refusal::AuditUnavailable.response(id.as_ref()))
            }
            (Some(s), None) if !s.has_room() => Start::AfterRoom(self.inner.clone(), req),
            _ => Start::Inner(self.inner.call(req)),
        };
        let cx = cx.clone();
        Box::pin(async move {
            let mut resp = match start {
                Start::Inner(f) => f.await?,
                Start::Answer(r) => r,
                Start::AfterRoom(mut inner, req) => {
                    let sink = cx.sink.as_ref();
                    if let Some(s) = sink {
                        std::future::poll_fn(|c| s.poll_room(c)).await;
                    }
                    if sink.is_some_and(AuditSink::refusing) {
                        Refusal::AuditUnavailable.response(id.as_ref())
                    } else {
                        inner.call(req).await?
                    }
                }
            };
            set_request_id(&mut resp, id);
            let Some(mut p) = guard.0.take() else {
                return Ok(resp.map(AuditBody::unrecorded));
            };
            let status = resp.status();
            if let Some(note) = resp.extensions_mut().remove::<Note>() {
                p.record.upstream = note.node;
                p.record.sticky = note.sticky;
                p.record.outcome = note.outcome.unwrap_or(Outcome::Ok);
                p.record.reason = note.reason;
                p.upstream_us = note.upstream_us;
            }
            p.record.status = status.as_u16();
            p.bodiless = p.bodiless
                || status.is_informational()
                || status == StatusCode::NO_CONTENT
                || status == StatusCode::NOT_MODIFIED;
            if status == StatusCode::SWITCHING_PROTOCOLS {
                if let (Some(hook), Some(sink)) =
                    (resp.extensions().get::<TunnelHook>(), cx.sink.as_ref())
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
            let write_ahead = cx.sink.as_ref().is_some_and(AuditSink::answers_wait);
            let (parts, body) = resp.into_parts();
            let mut body = AuditBody::new(body, p);
            if write_ahead && !body.bodiless() {
                std::future::poll_fn(|c| {
                    body.prefetch(c);
                    Poll::Ready(())
                })
                .await;
            }
            if body.complete() {
                // The whole answer is known: its line goes in before any of it goes out.
                if let Some((cx, seq)) = body.finish(None) {
                    if let Some(sink) = &cx.sink {
                        sink.committed(seq).await;
                    }
                }
            }
            Ok(Response::from_parts(parts, body))
        })
    }
}

fn set_request_id<B>(resp: &mut Response<B>, id: Option<HeaderValue>) {
    if let Some(id) = id {
        resp.headers_mut().insert(X_REQUEST_ID.clone(), id);
    }
}

/// The record of an exchange that has no response yet. Dropped with it (the client went away
/// before the response head: HTTP/1.1 connection closed, HTTP/2 stream reset), it still writes
/// the line, as `client_abort`, with the node the request was sent to.
struct Unanswered(Option<Box<Pending>>);

impl Drop for Unanswered {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            p.finish(Some(Outcome::ClientAbort));
        }
    }
}

/// A record waiting for its exchange to end.
struct Pending {
    record: Record,
    exchange: Arc<Exchange>,
    /// Where the line goes and what counts it.
    cx: Arc<AuditContext>,
    upstream_us: Option<u64>,
    /// HEAD and 1xx/204/304 answers have no body for hyper to read.
    bodiless: bool,
}

impl Pending {
    fn capture(req: &Req, x: Arc<Exchange>, cx: &Arc<AuditContext>) -> Pending {
        let h = req.headers();
        let users = &cx.users;
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
            cx: cx.clone(),
            upstream_us: None,
        }
    }

    /// Writes the line. `error`: the outcome when the exchange failed, `None` when it ended
    /// normally. Returns the line's sequence number when the answer should wait for it.
    fn finish(self: Box<Self>, error: Option<Outcome>) -> Option<(Arc<AuditContext>, u64)> {
        let Pending {
            mut record,
            exchange,
            cx,
            upstream_us,
            ..
        } = *self;
        record.ts_ms = now_ms();
        record.duration_us = exchange.start.elapsed().as_micros() as u64;
        record.bytes_in = exchange.bytes_in.load(Ordering::Relaxed);
        if record.upstream.is_none() {
            record.upstream = exchange.node.get();
        }
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
        // Response counters count responses: an exchange the client left before its response
        // head has none.
        if let (true, Some(method)) = (record.status != 0, &record.method) {
            cx.counters.requests.record(
                record.status,
                method.as_str(),
                record.duration_us,
                upstream_us,
                record.bytes_in,
                record.bytes_out,
            );
        }
        let sink = cx.sink.as_ref()?;
        let wait = error.is_none() && sink.answers_wait();
        let seq = sink.write(record);
        wait.then_some((cx, seq))
    }
}

/// The response body, counted; writes the record when it ends. With `durability` other than
/// `batched`, the end of the answer (its last frame, or the end of the stream) is held until the
/// line is written, so a client never has a whole answer whose line is not in the file.
pub struct AuditBody {
    inner: RespBody,
    /// `inner` returned its end during the prefetch.
    inner_ended: bool,
    /// Data taken ahead of hyper, given out first.
    early: Option<Bytes>,
    /// A frame that is not data (trailers) or an error that stopped the prefetch; after `early`.
    early_tail: Option<Result<Frame<Bytes>, hyper::Error>>,
    pending: Option<Box<Pending>>,
    /// The answer's last frame (`None`: the end of the stream), until its line is written.
    hold: Option<Hold>,
}

struct Hold {
    cx: Arc<AuditContext>,
    seq: u64,
    frame: Option<Frame<Bytes>>,
}

impl AuditBody {
    fn new(inner: RespBody, p: Box<Pending>) -> AuditBody {
        let mut b = AuditBody::unrecorded(inner);
        b.pending = Some(p);
        b
    }

    /// A body whose exchange has no line (no `Exchange`: not a request from the edge).
    fn unrecorded(inner: RespBody) -> AuditBody {
        AuditBody {
            inner,
            inner_ended: false,
            early: None,
            early_tail: None,
            pending: None,
            hold: None,
        }
    }

    fn bodiless(&self) -> bool {
        self.pending.as_ref().is_some_and(|p| p.bodiless)
    }

    /// Nothing more will come from the node (or bpgate's own answer).
    fn source_done(&self) -> bool {
        self.inner_ended || self.inner.is_end_stream()
    }

    /// The whole answer is known: bodiless, or every frame has been taken.
    fn complete(&self) -> bool {
        self.bodiless() || (self.source_done() && !matches!(self.early_tail, Some(Err(_))))
    }

    /// Takes the frames the body has ready now, up to [`PREFETCH`] bytes.
    fn prefetch(&mut self, cx: &mut Context<'_>) {
        let mut first: Option<Bytes> = None;
        let mut more: Option<bytes::BytesMut> = None;
        let mut len = 0;
        while !self.source_done() && len < PREFETCH {
            match Pin::new(&mut self.inner).poll_frame(cx) {
                Poll::Ready(Some(Ok(f))) => match f.into_data() {
                    Ok(d) => {
                        self.count(d.len());
                        len += d.len();
                        match (&mut more, first.take()) {
                            (Some(m), _) => m.extend_from_slice(&d),
                            (None, None) => first = Some(d),
                            (None, Some(f)) => {
                                let mut m = bytes::BytesMut::with_capacity(f.len() + d.len());
                                m.extend_from_slice(&f);
                                m.extend_from_slice(&d);
                                more = Some(m);
                            }
                        }
                    }
                    Err(f) => {
                        self.early_tail = Some(Ok(f));
                        break;
                    }
                },
                Poll::Ready(Some(Err(e))) => {
                    self.early_tail = Some(Err(e));
                    self.inner_ended = true;
                    break;
                }
                Poll::Ready(None) => self.inner_ended = true,
                Poll::Pending => break,
            }
        }
        self.early = more.map(bytes::BytesMut::freeze).or(first);
    }

    /// `error`: the outcome when the body failed, `None` when it ended normally.
    fn finish(&mut self, error: Option<Outcome>) -> Option<(Arc<AuditContext>, u64)> {
        self.pending.take()?.finish(error)
    }

    /// The answer ends with `last` (`None`: the end of the stream): write the line, and give
    /// `last` out once it is committed.
    fn end(
        &mut self,
        last: Option<Frame<Bytes>>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.finish(None) {
            Some((audit, seq)) => {
                self.hold = Some(Hold {
                    cx: audit,
                    seq,
                    frame: last,
                });
                self.poll_hold(cx)
            }
            None => Poll::Ready(last.map(Ok)),
        }
    }

    fn poll_hold(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let Some(h) = &self.hold else {
            return Poll::Ready(None);
        };
        if h.cx
            .sink
            .as_ref()
            .is_some_and(|s| s.poll_committed(h.seq, cx).is_pending())
        {
            return Poll::Pending;
        }
        Poll::Ready(self.hold.take().and_then(|h| h.frame).map(Ok))
    }

    fn count(&mut self, n: usize) {
        if let Some(p) = self.pending.as_mut() {
            p.record.bytes_out += n as u64;
        }
    }

    /// Nothing after the next frame.
    fn last_after_early(&self) -> bool {
        self.early_tail.is_none() && self.source_done()
    }
}

impl Body for AuditBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = &mut *self;
        if this.hold.is_some() {
            return this.poll_hold(cx);
        }
        if let Some(d) = this.early.take() {
            let f = Frame::data(d);
            return if this.last_after_early() {
                this.end(Some(f), cx)
            } else {
                Poll::Ready(Some(Ok(f)))
            };
        }
        if let Some(t) = this.early_tail.take() {
            return match t {
                Ok(f) if this.source_done() => this.end(Some(f), cx),
                Ok(f) => Poll::Ready(Some(Ok(f))),
                Err(e) => {
                    this.finish(Some(Outcome::UpstreamError));
                    Poll::Ready(Some(Err(e)))
                }
            };
        }
        if this.inner_ended {
            return this.end(None, cx);
        }
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(f))) => {
                if let Some(d) = f.data_ref() {
                    let n = d.len();
                    this.count(n);
                }
                if this.inner.is_end_stream() {
                    this.inner_ended = true;
                    this.end(Some(f), cx)
                } else {
                    Poll::Ready(Some(Ok(f)))
                }
            }
            Poll::Ready(Some(Err(e))) => {
                this.finish(Some(Outcome::UpstreamError));
                Poll::Ready(Some(Err(e)))
            }
            Poll::Ready(None) => {
                this.inner_ended = true;
                this.end(None, cx)
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.hold.is_none()
            && self.early.is_none()
            && self.early_tail.is_none()
            && self.pending.is_none()
            && self.source_done()
    }

    fn size_hint(&self) -> SizeHint {
        let extra = self.early.as_ref().map_or(0, |b| b.len() as u64)
            + self
                .hold
                .as_ref()
                .and_then(|h| h.frame.as_ref())
                .and_then(|f| f.data_ref())
                .map_or(0, |b| b.len() as u64);
        let inner = if self.source_done() {
            SizeHint::with_exact(0)
        } else {
            self.inner.size_hint()
        };
        let mut h = SizeHint::new();
        if let Some(u) = inner.upper() {
            h.set_upper(u + extra);
        }
        h.set_lower(inner.lower() + extra);
        h
    }
}

impl Drop for AuditBody {
    fn drop(&mut self) {
        if self.pending.is_some() {
            // hyper drops the body of a bodiless answer without reading it; any other body
            // dropped before its end is a client that went away.
            let whole = self.bodiless()
                || (self.early.is_none() && self.early_tail.is_none() && self.source_done());
            self.finish(if whole {
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
        durability: c.durability,
        clock: writer::system_clock(),
    }
}
