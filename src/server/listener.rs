//! The HTTPS accept loop: at most `limits.max_connections` client connections at once, each
//! handed to the [`Edge`].
//!
//! Connections that never finish their TLS handshake (idle sockets, a slow-handshake attack) must
//! not keep new clients out: each has `tls.handshake_timeout`, and when the limit is reached and a
//! new client is waiting, the oldest connection still in its handshake is closed to make room
//! (counted as `evicted`). With every slot held by an established connection, new clients wait in
//! the kernel backlog until one closes.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{oneshot, Notify, OwnedSemaphorePermit, Semaphore, TryAcquireError};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::edge::Edge;

pub(super) struct Listener {
    pub(super) listener: TcpListener,
    pub(super) max_connections: usize,
    pub(super) edge: Arc<Edge>,
    /// Every connection task, so shutdown can wait for them.
    pub(super) connections: TaskTracker,
    pub(super) shutdown: CancellationToken,
}

impl Listener {
    /// Accepts until shutdown begins.
    pub(super) async fn run(self) {
        let permits = Arc::new(Semaphore::new(self.max_connections));
        let handshaking = Arc::new(Handshaking::default());
        loop {
            // A slot now, or (when full) the prospect of evicting an unfinished handshake once a
            // client arrives.
            let mut permit = match permits.clone().try_acquire_owned() {
                Ok(p) => Some(p),
                Err(TryAcquireError::Closed) => return,
                Err(TryAcquireError::NoPermits) => tokio::select! {
                    p = permits.clone().acquire_owned() => match p { Ok(p) => Some(p), Err(_) => return },
                    _ = handshaking.wait_nonempty() => None,
                    _ = self.shutdown.cancelled() => return,
                },
            };
            let (stream, peer) = tokio::select! {
                r = self.listener.accept() => match r {
                    Ok(x) => x,
                    Err(e) => {
                        // EMFILE and friends: back off instead of spinning.
                        tracing::error!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
                _ = self.shutdown.cancelled() => return,
            };
            if permit.is_none() {
                permit = match permits.clone().try_acquire_owned() {
                    Ok(p) => Some(p),
                    Err(_) => {
                        handshaking.evict_oldest();
                        tokio::select! {
                            p = permits.clone().acquire_owned() => match p { Ok(p) => Some(p), Err(_) => return },
                            _ = self.shutdown.cancelled() => return,
                        }
                    }
                };
            }
            let edge = self.edge.clone();
            let slot = handshaking.register();
            let shutdown = self.shutdown.clone();
            self.connections
                .spawn(serve(edge, stream, peer, slot, permit, shutdown));
        }
    }
}

async fn serve(
    edge: Arc<Edge>,
    stream: tokio::net::TcpStream,
    peer: std::net::SocketAddr,
    mut slot: HandshakeSlot,
    permit: Option<OwnedSemaphorePermit>,
    shutdown: CancellationToken,
) {
    let tls = tokio::select! {
        t = edge.handshake(stream, peer) => t,
        // Draining waits for requests, not for handshakes.
        _ = shutdown.cancelled() => None,
        _ = slot.evicted() => {
            edge.counters()
                .handshake_failed(crate::counters::HandshakeFailure::Evicted);
            tracing::debug!(%peer, "TLS handshake unfinished at limits.max_connections: closed for a new client");
            None
        }
    };
    drop(slot);
    if let Some(tls) = tls {
        edge.serve(tls, peer).await;
    }
    drop(permit);
}

/// Connections in their TLS handshake, oldest first.
#[derive(Default)]
struct Handshaking {
    inner: Mutex<HandshakingInner>,
    /// Signalled when a connection enters its handshake.
    entered: Notify,
}

#[derive(Default)]
struct HandshakingInner {
    next: u64,
    waiting: BTreeMap<u64, oneshot::Sender<()>>,
}

impl Handshaking {
    fn register(self: &Arc<Self>) -> HandshakeSlot {
        let (tx, rx) = oneshot::channel();
        let id = match self.inner.lock() {
            Ok(mut g) => {
                let id = g.next;
                g.next += 1;
                g.waiting.insert(id, tx);
                id
            }
            // A panic while holding the lock: no eviction for this one, nothing else lost.
            Err(_) => u64::MAX,
        };
        self.entered.notify_waiters();
        HandshakeSlot {
            set: self.clone(),
            id,
            evicted: rx,
        }
    }

    /// Closes the oldest connection still in its handshake, if any.
    fn evict_oldest(&self) {
        let oldest = self
            .inner
            .lock()
            .ok()
            .and_then(|mut g| g.waiting.pop_first());
        if let Some((_, tx)) = oldest {
            let _ = tx.send(());
        }
    }

    fn is_empty(&self) -> bool {
        self.inner
            .lock()
            .map(|g| g.waiting.is_empty())
            .unwrap_or(true)
    }

    /// Returns once some connection is in its handshake.
    async fn wait_nonempty(&self) {
        loop {
            let entered = self.entered.notified();
            tokio::pin!(entered);
            entered.as_mut().enable();
            if !self.is_empty() {
                return;
            }
            entered.await;
        }
    }
}

/// A connection's place among those in their handshake; leaving it (drop) ends eligibility.
struct HandshakeSlot {
    set: Arc<Handshaking>,
    id: u64,
    evicted: oneshot::Receiver<()>,
}

impl HandshakeSlot {
    /// Resolves when the accept loop closes this connection to make room.
    async fn evicted(&mut self) {
        if (&mut self.evicted).await.is_err() {
            // Not evicted (the set let go of the sender without sending): never resolves.
            std::future::pending::<()>().await;
        }
    }
}

impl Drop for HandshakeSlot {
    fn drop(&mut self) {
        if let Ok(mut g) = self.set.inner.lock() {
            g.waiting.remove(&self.id);
        }
    }
}
