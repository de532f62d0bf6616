//! The HTTPS accept loop: at most `limits.max_connections` client connections at once, each
//! handed to the [`Edge`].
//!
//! Connections that never finish their TLS handshake (idle sockets, a slow-handshake attack) must
//! not keep new clients out: each has `tls.handshake_timeout`, and when the limit is reached and a
//! new client is waiting, the oldest connection still in its handshake is closed to make room
//! (counted as `evicted`). Only a handshake that has lasted [`EVICTABLE_AFTER`] can be closed so:
//! a client that was itself waiting in the backlog and has just been given a slot is not closed
//! for the next one in the queue (which would serve only the last of a queue, and under steady
//! overload nobody). With every slot held by an established connection, new clients wait in the
//! kernel backlog until one closes.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::net::TcpListener;
use tokio::sync::{oneshot, Notify, OwnedSemaphorePermit, Semaphore, TryAcquireError};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::edge::Edge;

/// How long a connection must have been in its TLS handshake before a new client may close it to
/// take its slot: several round trips of a slow mobile network, and far less than an idle socket
/// holds a slot until `tls.handshake_timeout` (10 s by default).
const EVICTABLE_AFTER: Duration = Duration::from_secs(1);

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
                // The client is held here until a slot is free: one freed by a connection that
                // ends, or by closing a handshake that has lasted long enough.
                permit = loop {
                    if let Ok(p) = permits.clone().try_acquire_owned() {
                        break Some(p);
                    }
                    let recheck = match handshaking.evict_oldest(EVICTABLE_AFTER) {
                        Eviction::NotYet(left) => Some(left),
                        Eviction::Done | Eviction::Nobody => None,
                    };
                    tokio::select! {
                        p = permits.clone().acquire_owned() => match p {
                            Ok(p) => break Some(p),
                            Err(_) => return,
                        },
                        _ = tokio::time::sleep(recheck.unwrap_or_default()), if recheck.is_some() => {}
                        _ = self.shutdown.cancelled() => return,
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
    // Boxed: the handshake's state (the TLS session being built, its timer) would otherwise
    // size the connection's task for the connection's whole life.
    let handshake = Box::pin(edge.handshake(stream, peer));
    let tls = tokio::select! {
        t = handshake => t,
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
    /// When each entered its handshake, and how to close it.
    waiting: BTreeMap<u64, (Instant, oneshot::Sender<()>)>,
}

/// What [`Handshaking::evict_oldest`] did.
enum Eviction {
    /// The oldest was closed; its slot frees as it ends.
    Done,
    /// The oldest is too young to close: ask again after this long.
    NotYet(Duration),
    /// No connection is in its handshake.
    Nobody,
}

impl Handshaking {
    fn register(self: &Arc<Self>) -> HandshakeSlot {
        let (tx, rx) = oneshot::channel();
        let id = match self.inner.lock() {
            Ok(mut g) => {
                let id = g.next;
                g.next += 1;
                g.waiting.insert(id, (Instant::now(), tx));
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

    /// Closes the oldest connection still in its handshake, if it has been there `min_age`.
    fn evict_oldest(&self, min_age: Duration) -> Eviction {
        let Ok(mut g) = self.inner.lock() else {
            return Eviction::Nobody;
        };
        let Some(entry) = g.waiting.first_entry() else {
            return Eviction::Nobody;
        };
        let age = entry.get().0.elapsed();
        if age < min_age {
            return Eviction::NotYet(min_age - age);
        }
        let (_, tx) = entry.remove();
        let _ = tx.send(());
        Eviction::Done
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
