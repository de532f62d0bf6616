//! Active health checks: `GET {base_path}{health.path}` on every node each interval, on a fresh
//! connection (a pooled one would hide a node that stopped accepting). Botpress answers 503
//! "Botpress is loading" until it is ready, so any 2xx/3xx is healthy and anything else (a 404
//! from a wrong path included) is not.
//!
//! The default path is `/version`: Botpress's `/status` calls the NLU and messaging servers with
//! no timeout (one hung shared service would fail every node's check at once) and answers 200
//! with the database down; `/version` does no work and sits behind the same readiness gate.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::{unix_ms, CheckResult, Node, Snapshot};
use crate::proxy::ProbeError;

/// `health.*`, as one generation has it.
#[derive(Debug, Clone, PartialEq)]
pub struct HealthSettings {
    pub enabled: bool,
    /// Full path, base path included.
    pub path: String,
    pub interval: Duration,
    pub timeout: Duration,
    pub rise: u32,
    pub fall: u32,
}

/// Starts the checker. Each round reads the current node set and settings through `current`
/// (the current generation's), so a reload applies from the next round on; `reloaded` wakes it
/// early, so a shorter interval or a new node does not wait out the old interval.
pub fn spawn_health_checks(
    current: impl Fn() -> (Arc<Snapshot>, HealthSettings) + Send + 'static,
    reloaded: Arc<Notify>,
    stop: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let (snap, s) = current();
            if s.enabled {
                let s = Arc::new(s);
                let mut set = tokio::task::JoinSet::new();
                for node in snap.nodes.iter() {
                    let node = node.clone();
                    let s = s.clone();
                    set.spawn(async move {
                        let r = check(&node, &s).await;
                        node.record_check(r, s.rise, s.fall);
                    });
                }
                while set.join_next().await.is_some() {}
                snap.announce_panic();
            }
            // Read after the round: a reload during it counts.
            let interval = current().1.interval;
            tokio::select! {
                _ = tokio::time::sleep(interval) => {}
                _ = reloaded.notified() => {}
                _ = stop.cancelled() => return,
            }
        }
    })
}

/// One check of one node.
pub async fn check(node: &Node, s: &HealthSettings) -> CheckResult {
    let start = Instant::now();
    let r = tokio::time::timeout(s.timeout, probe(&node.spec.authority, &s.path)).await;
    let latency_ms = super::ms(start.elapsed());
    let at_ms = unix_ms();
    match r {
        Ok(Ok(status)) => CheckResult {
            ok: (200..400).contains(&status),
            status: Some(status),
            latency_ms,
            at_ms,
            error: (!(200..400).contains(&status)).then(|| format!("status {status}")),
        },
        Ok(Err(e)) => CheckResult {
            ok: false,
            status: None,
            latency_ms,
            at_ms,
            error: Some(e.to_string()),
        },
        Err(_) => CheckResult {
            ok: false,
            status: None,
            latency_ms,
            at_ms,
            error: Some(format!("timed out after {:?}", s.timeout)),
        },
    }
}

/// `GET path` on a new connection; returns the status.
pub async fn probe(authority: &str, path: &str) -> Result<u16, ProbeError> {
    crate::proxy::probe_get(authority, path, 0)
        .await
        .map(|(status, _)| status)
}
