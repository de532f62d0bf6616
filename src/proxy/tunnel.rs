//! WebSocket / `Upgrade` tunnels: after a `101`, bytes flow both ways until one side closes, the
//! tunnel idles out, or a shutdown's drain deadline passes. Request timeouts do not apply.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_util::sync::CancellationToken;

/// How a tunnel ended, for the audit trail and metrics.
#[derive(Debug, Clone)]
pub struct TunnelReport {
    pub duration: Duration,
    /// Bytes from the client to the node.
    pub bytes_up: u64,
    /// Bytes from the node to the client.
    pub bytes_down: u64,
    /// `client`, `upstream`, `idle_timeout`, `shutdown` or `error`.
    pub closed_by: &'static str,
}

type Hook = Box<dyn FnOnce(&TunnelReport) + Send>;

/// Put on a `101` response by the proxy; the audit layer sets the callback that writes the
/// tunnel's closing line. The tunnel calls it once, when it ends.
#[derive(Clone, Default)]
pub struct TunnelHook(Arc<Mutex<Option<Hook>>>);

impl TunnelHook {
    pub fn set(&self, f: impl FnOnce(&TunnelReport) + Send + 'static) {
        if let Ok(mut g) = self.0.lock() {
            *g = Some(Box::new(f));
        }
    }

    fn fire(&self, r: &TunnelReport) {
        let f = self.0.lock().ok().and_then(|mut g| g.take());
        if let Some(f) = f {
            f(r);
        }
    }
}

/// Runs a tunnel between the client's and the node's upgraded connections.
pub async fn run(
    client: OnUpgrade,
    upstream: OnUpgrade,
    idle: Duration,
    stop: CancellationToken,
    hook: TunnelHook,
) {
    let start = Instant::now();
    let (c, u) = match tokio::join!(client, upstream) {
        (Ok(c), Ok(u)) => (c, u),
        (c, u) => {
            tracing::debug!(
                client = c.is_ok(),
                upstream = u.is_ok(),
                "upgrade did not complete"
            );
            hook.fire(&TunnelReport {
                duration: start.elapsed(),
                bytes_up: 0,
                bytes_down: 0,
                closed_by: "error",
            });
            return;
        }
    };
    let state = Arc::new(State {
        start,
        last: AtomicU64::new(0),
        first_eof: AtomicU8::new(0),
        eof_at: AtomicU64::new(0),
    });
    let mut a = Tracked {
        io: TokioIo::new(c),
        side: 1,
        state: state.clone(),
        bytes: 0,
    };
    let mut b = Tracked {
        io: TokioIo::new(u),
        side: 2,
        state: state.clone(),
        bytes: 0,
    };
    let watchdog = async {
        let tick = (idle / 4).clamp(Duration::from_millis(100), Duration::from_secs(1));
        loop {
            tokio::time::sleep(tick).await;
            let last = Duration::from_millis(state.last.load(Ordering::Relaxed));
            if start.elapsed().saturating_sub(last) >= idle {
                return "idle_timeout";
            }
            // One side closed; the other keeps a half-open connection only briefly.
            let eof = state.eof_at.load(Ordering::Relaxed);
            if eof != 0 && start.elapsed().saturating_sub(Duration::from_millis(eof)) >= LINGER {
                return if state.first_eof.load(Ordering::Relaxed) == 2 {
                    "upstream"
                } else {
                    "client"
                };
            }
        }
    };
    let closed_by = tokio::select! {
        r = tokio::io::copy_bidirectional(&mut a, &mut b) => match r {
            Ok(_) => match state.first_eof.load(Ordering::Relaxed) { 2 => "upstream", _ => "client" },
            Err(_) => "error",
        },
        why = watchdog => why,
        _ = stop.cancelled() => "shutdown",
    };
    // Each wrapper counted what it read, which stays right however the copy ended.
    hook.fire(&TunnelReport {
        duration: start.elapsed(),
        bytes_up: a.bytes,
        bytes_down: b.bytes,
        closed_by,
    });
}

struct State {
    start: Instant,
    /// Milliseconds since `start` of the last byte either way.
    last: AtomicU64,
    /// 1 = client, 2 = node: the side whose read hit end-of-stream first.
    first_eof: AtomicU8,
    /// Milliseconds since `start` when that happened (0: not yet).
    eof_at: AtomicU64,
}

/// How long a tunnel stays half-open after one side closed.
const LINGER: Duration = Duration::from_secs(5);

/// Counts bytes read from one side and notes activity and who closed first.
struct Tracked<T> {
    io: T,
    side: u8,
    state: Arc<State>,
    bytes: u64,
}

impl<T: AsyncRead + Unpin> AsyncRead for Tracked<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = match Pin::new(&mut self.io).poll_read(cx, buf) {
            // Browsers often drop TLS without close_notify; that is a close, not a failure.
            Poll::Ready(Err(e)) if e.kind() == io::ErrorKind::UnexpectedEof => Poll::Ready(Ok(())),
            other => other,
        };
        if let Poll::Ready(Ok(())) = r {
            let n = buf.filled().len() - before;
            if n == 0 {
                let _ = self.state.first_eof.compare_exchange(
                    0,
                    self.side,
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                );
            } else {
                self.bytes += n as u64;
                let ms = self.state.start.elapsed().as_millis() as u64;
                self.state.last.store(ms, Ordering::Relaxed);
            }
        }
        r
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Tracked<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, data)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}
