//! Certificate watching: certbot and cert-manager replace the certificate and key files on
//! renewal; every `tls.reload_interval` their size and modification time are compared, and a
//! change reloads the pair (a bad one is refused and the current one stays).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::reload::Generations;

type Stamp = Option<(Option<SystemTime>, u64)>;

pub(super) struct CertWatcher {
    generations: Arc<Generations>,
    interval: Duration,
    cert: PathBuf,
    key: PathBuf,
}

impl CertWatcher {
    /// Watches the files the running configuration names (`[tls]` needs a restart to change).
    pub(super) fn new(generations: Arc<Generations>) -> Self {
        let t = generations.current().config.config.tls.clone();
        CertWatcher {
            generations,
            interval: t.reload_interval,
            cert: t.cert,
            key: t.key,
        }
    }

    pub(super) async fn run(self) {
        if self.interval.is_zero() {
            return;
        }
        let shutdown = self.generations.shared().shutdown.clone();
        let mut last = self.stamps();
        loop {
            tokio::select! {
                _ = tokio::time::sleep(self.interval) => {}
                _ = shutdown.cancelled() => return,
            }
            if self.stamps() != last {
                // A renewal writes two files; give the second one a moment to land.
                tokio::time::sleep(Duration::from_millis(200)).await;
                last = self.stamps();
                self.generations.reload_certificate();
            }
        }
    }

    fn stamps(&self) -> (Stamp, Stamp) {
        (stamp(&self.cert), stamp(&self.key))
    }
}

fn stamp(p: &Path) -> Stamp {
    std::fs::metadata(p)
        .ok()
        .map(|m| (m.modified().ok(), m.len()))
}
