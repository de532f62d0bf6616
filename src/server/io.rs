//! A client connection's bytes as hyper reads and writes them, with the three things hyper does
//! not do the way a production proxy must:
//!
//! - **The request-head timer** (`limits.header_read_timeout`): armed at the end of the TLS
//!   handshake and, on a kept-alive HTTP/1.1 connection, by the first byte of the next request;
//!   disarmed when hyper hands the head to the service. hyper's own timer also runs while the
//!   connection waits idle for the next request (hyper PR #3828), which cut every keep-alive
//!   connection at the header timeout instead of `limits.keepalive_timeout`; it is off.
//! - **The framing check**: HTTP/1.1 heads that start on an idle connection are scanned as they
//!   are read for `Content-Length` and `Transfer-Encoding` lines; with both, the request is
//!   refused (RFC 9112 §6.3). hyper would silently drop `Content-Length` and go on with chunked,
//!   and the pipeline could not tell.
//! - **Lingering close**: when hyper closes a connection whose last request body was not read to
//!   its end (an early answer: 413, 403, 404, 503, 400), the write side is shut down and what the
//!   client still sends is read and discarded for at most `limits.lingering_time`, waiting at
//!   most `limits.lingering_timeout` for more, up to `limits.lingering_size` (NGINX's
//!   `lingering_close`). Closing at once with unread bytes makes the kernel send a reset, and a
//!   client still writing its upload sees `EPIPE`/`ECONNRESET` instead of the answer.
//!
//! None of it applies to HTTP/2 (streams end with `RST_STREAM(NO_ERROR)` after an early answer,
//! the h2 crate's behaviour, RFC 9113 §8.1) or to a connection that switched protocols.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Sleep;

use crate::exchange::ConnInfo;

/// What the connection's requests tell its byte stream and its keep-alive loop. Shared by the
/// IO wrapper, the service and the response bodies (HTTP/2 runs streams on other tasks).
#[derive(Debug)]
pub(super) struct ConnState {
    /// Requests whose response has not ended (its body not yet dropped).
    in_flight: AtomicUsize,
    /// Requests started on the connection (heads hyper handed over).
    started: AtomicU64,
    /// Milliseconds since `epoch` of the last request start or response end.
    last: AtomicU64,
    epoch: Instant,
    /// The head being read has both `Content-Length` and `Transfer-Encoding`.
    ambiguous: AtomicBool,
    /// The connection switched protocols (a WebSocket tunnel): its bytes are not HTTP any more.
    upgraded: AtomicBool,
}

impl ConnState {
    pub(super) fn new() -> Self {
        ConnState {
            in_flight: AtomicUsize::new(0),
            started: AtomicU64::new(0),
            last: AtomicU64::new(0),
            epoch: Instant::now(),
            ambiguous: AtomicBool::new(false),
            upgraded: AtomicBool::new(false),
        }
    }

    fn touch(&self) {
        self.last
            .store(self.epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    /// A request head was handed to the service. Returns whether the head scan found both
    /// framing headers in it.
    pub(super) fn begin(self: &Arc<Self>) -> (InFlight, bool) {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        self.started.fetch_add(1, Ordering::Relaxed);
        self.touch();
        // Nearly always false: a plain load first, no read-modify-write.
        let ambiguous =
            self.ambiguous.load(Ordering::Relaxed) && self.ambiguous.swap(false, Ordering::Relaxed);
        (InFlight(self.clone()), ambiguous)
    }

    /// Whether any request has started on the connection.
    pub(super) fn has_started(&self) -> bool {
        self.started.load(Ordering::Relaxed) > 0
    }

    pub(super) fn upgraded(&self) {
        self.upgraded.store(true, Ordering::Relaxed);
    }

    /// `None` when idle (no request in flight) for at least `limit`; otherwise how long until
    /// it could be.
    pub(super) fn idle_for(&self, limit: Duration) -> Option<Duration> {
        if self.in_flight.load(Ordering::Relaxed) > 0 {
            return Some(limit);
        }
        let since = self
            .epoch
            .elapsed()
            .saturating_sub(Duration::from_millis(self.last.load(Ordering::Relaxed)));
        limit.checked_sub(since).filter(|left| !left.is_zero())
    }
}

/// One request in flight: from its head to the end of its response (the response body drops
/// it), or until its service future is dropped.
#[derive(Debug)]
pub(super) struct InFlight(Arc<ConnState>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.0.touch();
    }
}

/// The timing limits the wrapper enforces (from `[limits]`, fixed at start).
#[derive(Debug, Clone, Copy)]
pub(super) struct Limits {
    pub(super) header_read: Duration,
    pub(super) lingering_time: Duration,
    pub(super) lingering_timeout: Duration,
    pub(super) lingering_size: u64,
}

/// The client connection's stream (TLS) as hyper uses it. See the module docs.
pub(super) struct EdgeIo<S> {
    inner: S,
    state: Arc<ConnState>,
    conn: Arc<ConnInfo>,
    limits: Limits,
    /// HTTP/1.x rules apply (not HTTP/2, not upgraded).
    h1: bool,
    /// No ALPN and the first read has not happened: it tells an HTTP/2 preface (prior
    /// knowledge) apart.
    first: bool,
    /// A request head is being read: the `started` count when it began, and its deadline.
    head: Option<(u64, Instant)>,
    /// The one timer: the head deadline, then the lingering deadlines. Boxed because hyper
    /// wants an `Unpin` stream; made the first time a wait needs it (a client whose heads come
    /// whole in one read never does), then reset, never reallocated.
    timer: Option<Pin<Box<Sleep>>>,
    /// Where `timer` is set to, so it is only reset when that changes.
    timer_at: Instant,
    scan: HeadScan,
    closing: Closing,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Closing {
    Open,
    /// Shutting down the write side (TLS close_notify, then FIN), then lingering.
    ShutdownThenLinger,
    Lingering {
        until: Instant,
        left: u64,
    },
    /// Close without lingering.
    Plain,
    Done,
}

impl<S> EdgeIo<S> {
    /// `h1`: the connection negotiated HTTP/1.x (or nothing) by ALPN; `sniff`: it negotiated
    /// nothing, so its first bytes tell; `ready_at` is the end of the TLS handshake, when the
    /// first request head's timer starts.
    pub(super) fn new(
        inner: S,
        state: Arc<ConnState>,
        conn: Arc<ConnInfo>,
        limits: Limits,
        h1: bool,
        sniff: bool,
        ready_at: Instant,
    ) -> Self {
        let deadline = ready_at + limits.header_read;
        let mut scan = HeadScan::default();
        scan.start();
        EdgeIo {
            inner,
            state,
            conn,
            limits,
            h1,
            first: sniff,
            head: h1.then_some((0, deadline)),
            timer: None,
            timer_at: deadline,
            scan,
            closing: Closing::Open,
        }
    }

    fn set_timer(&mut self, at: Instant) {
        match &mut self.timer {
            Some(t) if self.timer_at != at => t.as_mut().reset(at.into()),
            Some(_) => {}
            None => self.timer = Some(Box::pin(tokio::time::sleep_until(at.into()))),
        }
        self.timer_at = at;
    }

    /// Whether the timer (set by [`EdgeIo::set_timer`]) has fired; registers the wake-up if not.
    fn timer_fired(&mut self, cx: &mut Context<'_>) -> bool {
        self.timer
            .as_mut()
            .is_some_and(|t| t.as_mut().poll(cx).is_ready())
    }

    /// Bytes hyper just read.
    fn on_read(&mut self, new: &[u8]) {
        if std::mem::take(&mut self.first) {
            // An HTTP/2 connection preface without ALPN (prior knowledge): not HTTP/1.
            const PREFACE: &[u8] = b"PRI * HTTP/2.0";
            if PREFACE.starts_with(&new[..new.len().min(PREFACE.len())]) {
                self.h1 = false;
                self.head = None;
                return;
            }
        }
        let started = self.state.started.load(Ordering::Relaxed);
        if self.head.is_some_and(|(at, _)| at != started) {
            self.head = None;
        }
        if self.head.is_none() {
            if self.state.in_flight.load(Ordering::Relaxed) > 0
                || self.conn.bodies_reading.load(Ordering::Relaxed) > 0
            {
                // Body bytes (even after their response ended: an early answer from the node
                // while the upload goes on), or a request pipelined behind one in flight.
                return;
            }
            // The first byte of a new request on an idle connection.
            self.head = Some((started, Instant::now() + self.limits.header_read));
            self.scan.start();
            self.state.ambiguous.store(false, Ordering::Relaxed);
        }
        if self.scan.feed(new) {
            self.state.ambiguous.store(true, Ordering::Relaxed);
        }
    }

    fn is_h1(&mut self) -> bool {
        if self.h1 && self.state.upgraded.load(Ordering::Relaxed) {
            self.h1 = false;
            self.head = None;
        }
        self.h1
    }
}

impl<S: AsyncRead + Unpin> EdgeIo<S> {
    /// Whether the client has sent more than hyper read (e.g. the rest of a request head hyper
    /// refused as too large). Reads and drops what is there: the connection is closing.
    fn input_pending(&mut self, cx: &mut Context<'_>) -> bool {
        let mut scratch = [0u8; 4096];
        let mut buf = ReadBuf::new(&mut scratch);
        matches!(
            Pin::new(&mut self.inner).poll_read(cx, &mut buf),
            Poll::Ready(Ok(())) if !buf.filled().is_empty()
        )
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for EdgeIo<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let before = buf.filled().len();
        let r = Pin::new(&mut this.inner).poll_read(cx, buf);
        if !this.is_h1() {
            return r;
        }
        match r {
            Poll::Ready(Ok(())) => {
                let n = buf.filled().len() - before;
                if n > 0 {
                    // Borrow the new bytes without holding `buf` across `on_read`.
                    let filled = buf.filled();
                    let new = &filled[before..];
                    this.on_read(new);
                }
                Poll::Ready(Ok(()))
            }
            Poll::Pending => {
                let Some((at, deadline)) = this.head else {
                    return Poll::Pending;
                };
                if this.state.started.load(Ordering::Relaxed) != at {
                    this.head = None;
                    return Poll::Pending;
                }
                this.set_timer(deadline);
                if this.timer_fired(cx) {
                    this.head = None;
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "request head not complete within limits.header_read_timeout",
                    )));
                }
                Poll::Pending
            }
            err => err,
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for EdgeIo<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    /// hyper closes the connection: linger first when the client may still be sending.
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        loop {
            match this.closing {
                Closing::Open => {
                    let linger = this.is_h1()
                        && !this.limits.lingering_time.is_zero()
                        && (this.conn.unread_body.load(Ordering::Relaxed)
                            || this.input_pending(cx));
                    this.closing = if linger {
                        Closing::ShutdownThenLinger
                    } else {
                        Closing::Plain
                    };
                }
                Closing::Plain => return Pin::new(&mut this.inner).poll_shutdown(cx),
                Closing::ShutdownThenLinger => {
                    // The answer is out; the FIN tells the client so.
                    if ready!(Pin::new(&mut this.inner).poll_shutdown(cx)).is_err() {
                        this.closing = Closing::Done;
                        continue;
                    }
                    let now = Instant::now();
                    let until = now + this.limits.lingering_time;
                    this.set_timer(until.min(now + this.limits.lingering_timeout));
                    this.closing = Closing::Lingering {
                        until,
                        left: this.limits.lingering_size,
                    };
                    tracing::debug!(peer = %this.conn.peer, "lingering close");
                }
                Closing::Lingering { until, left } => {
                    let mut scratch = [0u8; 16 * 1024];
                    let mut buf = ReadBuf::new(&mut scratch);
                    match Pin::new(&mut this.inner).poll_read(cx, &mut buf) {
                        Poll::Ready(Ok(())) if !buf.filled().is_empty() => {
                            let left = left.saturating_sub(buf.filled().len() as u64);
                            if left == 0 {
                                this.closing = Closing::Done;
                                continue;
                            }
                            let now = Instant::now();
                            this.set_timer(until.min(now + this.limits.lingering_timeout));
                            this.closing = Closing::Lingering { until, left };
                        }
                        // The client closed (or broke) its side: done.
                        Poll::Ready(_) => this.closing = Closing::Done,
                        Poll::Pending => {
                            if this.timer_fired(cx) {
                                this.closing = Closing::Done;
                                continue;
                            }
                            return Poll::Pending;
                        }
                    }
                }
                Closing::Done => return Poll::Ready(Ok(())),
            }
        }
    }
}

/// Finds `Content-Length` and `Transfer-Encoding` field lines in an HTTP/1.1 request head fed
/// to it in pieces as they are read, without allocating: one `memchr` per line, and a look at
/// the line's start (copied only when a line is split across reads).
#[derive(Debug, Default)]
struct HeadScan {
    active: bool,
    /// The start of a line split across reads.
    carry: [u8; LINE_PREFIX],
    carried: usize,
    /// The current line is decided: skip to its end.
    skipping: bool,
    /// Non-empty lines seen (empty lines before the request line are allowed).
    lines: usize,
    content_length: bool,
    transfer_encoding: bool,
}

const TRANSFER_ENCODING: &[u8] = b"transfer-encoding:";
const CONTENT_LENGTH: &[u8] = b"content-length:";
/// Enough of a line's start to decide on it.
const LINE_PREFIX: usize = TRANSFER_ENCODING.len();

fn starts_with_ignore_case(line: &[u8], prefix: &[u8]) -> bool {
    line.len() >= prefix.len() && line[..prefix.len()].eq_ignore_ascii_case(prefix)
}

impl HeadScan {
    fn start(&mut self) {
        *self = HeadScan {
            active: true,
            ..HeadScan::default()
        };
    }

    /// Feeds bytes read from the client; returns true once, when the head turns out to carry
    /// both framing headers.
    fn feed(&mut self, mut bytes: &[u8]) -> bool {
        while self.active && !bytes.is_empty() {
            let nl = memchr::memchr(b'\n', bytes);
            if self.skipping {
                let Some(i) = nl else { return false };
                bytes = &bytes[i + 1..];
                self.skipping = false;
                continue;
            }
            let Some(i) = nl else {
                // The line goes on in the next read: keep its start, or decide on it now.
                let take = (LINE_PREFIX - self.carried).min(bytes.len());
                self.carry[self.carried..self.carried + take].copy_from_slice(&bytes[..take]);
                self.carried += take;
                if self.carried < LINE_PREFIX {
                    return false;
                }
                let carry = self.carry;
                self.carried = 0;
                self.skipping = true;
                return self.decide(&carry, false);
            };
            let found = if self.carried > 0 {
                let take = (LINE_PREFIX - self.carried).min(i);
                self.carry[self.carried..self.carried + take].copy_from_slice(&bytes[..take]);
                let (carry, len) = (self.carry, self.carried + take);
                self.carried = 0;
                self.decide(&carry[..len], len < LINE_PREFIX)
            } else {
                self.decide(&bytes[..i], true)
            };
            if found {
                return true;
            }
            bytes = &bytes[i + 1..];
        }
        false
    }

    /// One line's start (`whole`: the line itself, without its `\n`).
    fn decide(&mut self, line: &[u8], whole: bool) -> bool {
        if whole && (line.is_empty() || line == b"\r") {
            // The end of the head, unless the request line has not come yet.
            self.active = self.lines == 0;
            return false;
        }
        self.lines += 1;
        if self.lines > 1 {
            self.content_length |= starts_with_ignore_case(line, CONTENT_LENGTH);
            self.transfer_encoding |= starts_with_ignore_case(line, TRANSFER_ENCODING);
            if self.content_length && self.transfer_encoding {
                self.active = false;
                return true;
            }
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan_in_pieces(head: &[u8], piece: usize) -> bool {
        let mut s = HeadScan::default();
        s.start();
        head.chunks(piece).any(|c| s.feed(c))
    }

    #[test]
    fn finds_both_framing_headers_whatever_the_read_sizes() {
        let heads: [&[u8]; 4] = [
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"POST / HTTP/1.1\r\ntransfer-encoding: chunked\r\nX: y\r\ncontent-length: 5\r\n\r\n",
            b"\r\nPOST / HTTP/1.1\nTRANSFER-ENCODING:chunked\nCONTENT-LENGTH:5\n\n",
            b"POST / HTTP/1.1\r\nHost: a\r\nX-Long: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\nbody",
        ];
        for h in heads {
            for piece in [1, 2, 3, 7, 17, 18, 19, 64, 4096] {
                assert!(
                    scan_in_pieces(h, piece),
                    "{piece}: {:?}",
                    String::from_utf8_lossy(h)
                );
            }
        }
    }

    #[test]
    fn one_framing_header_or_lookalikes_are_fine() {
        let heads: [&[u8]; 5] = [
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"POST / HTTP/1.1\r\nX-Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
            // In the body, after the end of the head: not a header.
            b"POST / HTTP/1.1\r\nContent-Length: 40\r\n\r\nTransfer-Encoding: chunked\r\n\r\n",
            // The request line is not a header line.
            b"content-length: / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
        ];
        for h in heads {
            for piece in [1, 5, 18, 4096] {
                assert!(
                    !scan_in_pieces(h, piece),
                    "{piece}: {:?}",
                    String::from_utf8_lossy(h)
                );
            }
        }
    }
}
