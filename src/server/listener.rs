//! The HTTPS accept loop: at most `limits.max_connections` client connections at once (more wait
//! in the kernel backlog), each handed to the [`Edge`].

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::Semaphore;
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
        loop {
            let permit = tokio::select! {
                p = permits.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => return },
                _ = self.shutdown.cancelled() => return,
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
            let edge = self.edge.clone();
            self.connections.spawn(async move {
                edge.serve(stream, peer).await;
                drop(permit);
            });
        }
    }
}
