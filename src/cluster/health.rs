//! Active health checks: `GET {base_path}{health.path}` on every node each interval, on a fresh
//! connection (a pooled one would hide a node that stopped accepting). Botpress answers 503
//! "Botpress is loading" until it is ready, so any 2xx/3xx is healthy and anything else is not.

use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use tokio_util::sync::CancellationToken;

use super::{unix_ms, CheckResult, Cluster, Node};

#[derive(Debug, Clone)]
pub struct HealthSettings {
    pub enabled: bool,
    /// Full path, base path included.
    pub path: String,
    pub interval: Duration,
    pub timeout: Duration,
    pub rise: u32,
    pub fall: u32,
}

/// Starts the checker. It reads the settings and the node set afresh each round, so a reload
/// applies from the next round on.
pub fn spawn_health_checks(
    cluster: Arc<Cluster>,
    settings: Arc<ArcSwap<HealthSettings>>,
    stop: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let s = settings.load_full();
            if s.enabled {
                let mut set = tokio::task::JoinSet::new();
                let snap = cluster.snapshot();
                for node in snap.nodes.iter() {
                    let node = node.clone();
                    let s = s.clone();
                    set.spawn(async move {
                        let r = check(&node, &s).await;
                        node.record_check(r, s.rise, s.fall);
                    });
                }
                while set.join_next().await.is_some() {}
            }
            tokio::select! {
                _ = tokio::time::sleep(s.interval) => {}
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
            error: Some(e),
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
pub async fn probe(authority: &str, path: &str) -> Result<u16, String> {
    crate::proxy::probe_get(authority, path, 0)
        .await
        .map(|(status, _)| status)
}
