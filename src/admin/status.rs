//! What the status page and `GET /upstreams` show beyond the raw counters: per-node rates
//! (requests and 5xx per second, sticky share) from a [`Sampler`] that reads the counters once a
//! second on the admin listener's task (never on the request path), the last request seen, and
//! whether a drained node is idle, i.e. safe to stop.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::cluster::{unix_ms, NodeView};
use crate::reload::Generations;

/// How often the counters are sampled.
pub const SAMPLE_EVERY: Duration = Duration::from_secs(1);
/// Rates are averaged over this window.
pub const WINDOW: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Copy)]
struct Sample {
    at: Instant,
    requests: u64,
    errors: u64,
    hits: u64,
}

#[derive(Debug, Default)]
struct NodeSamples {
    ring: VecDeque<Sample>,
    /// Unix ms of the sample that first saw the request count move (resolution: one sample).
    last_request_ms: Option<u64>,
}

/// Per-node counter samples, keyed by node name (nodes a reload removes drop out).
#[derive(Debug, Default)]
pub struct Sampler {
    nodes: HashMap<String, NodeSamples>,
}

/// A node's rates over the last [`WINDOW`].
#[derive(Debug, Clone, Copy, Default)]
struct Rates {
    requests: f64,
    errors: f64,
    hits: u64,
}

impl Sampler {
    /// Reads every node's counters once.
    pub fn sample(&mut self, gw: &Generations) {
        let now = Instant::now();
        let current = gw.current();
        let mut seen = Vec::with_capacity(current.nodes.nodes.len());
        for n in current.nodes.nodes.iter() {
            let s = Sample {
                at: now,
                requests: n.pool.requests.load(Ordering::Relaxed),
                errors: n.status_counts[4].load(Ordering::Relaxed),
                hits: n.sticky_hits.load(Ordering::Relaxed),
            };
            let e = self.nodes.entry(n.spec.name.clone()).or_default();
            let moved = match e.ring.back() {
                Some(prev) => s.requests > prev.requests,
                None => s.requests > 0,
            };
            if moved {
                e.last_request_ms = Some(unix_ms());
            }
            e.ring.push_back(s);
            while e
                .ring
                .front()
                .is_some_and(|f| now.duration_since(f.at) > WINDOW)
            {
                e.ring.pop_front();
            }
            seen.push(n.spec.name.as_str());
        }
        self.nodes.retain(|k, _| seen.contains(&k.as_str()));
    }

    fn rates(&self, node: &str) -> Rates {
        let Some(e) = self.nodes.get(node) else {
            return Rates::default();
        };
        match (e.ring.front(), e.ring.back()) {
            (Some(a), Some(b)) if b.at > a.at => {
                let dt = b.at.duration_since(a.at).as_secs_f64();
                Rates {
                    requests: b.requests.saturating_sub(a.requests) as f64 / dt,
                    errors: b.errors.saturating_sub(a.errors) as f64 / dt,
                    hits: b.hits.saturating_sub(a.hits),
                }
            }
            _ => Rates::default(),
        }
    }

    fn last_request_ms(&self, node: &str) -> Option<u64> {
        self.nodes.get(node).and_then(|e| e.last_request_ms)
    }
}

/// One node as the status page and `GET /upstreams` show it.
#[derive(Debug, Clone, Serialize)]
pub struct NodeStatus {
    #[serde(flatten)]
    pub view: NodeView,
    /// Requests forwarded per second over the last 10 s.
    pub requests_per_second: f64,
    /// 5xx answers (the node's and bpgate's own for it) per second over the last 10 s.
    pub errors_per_second: f64,
    /// This node's share of the requests that came back with a valid sticky cookie over the
    /// last 10 s (where live sessions are); `null` when there were none.
    pub sticky_share: Option<f64>,
    /// The last time a request was forwarded to the node (to within a second); `null` when
    /// none since bpgate started.
    pub last_request_at: Option<String>,
    /// When the current drain began; `null` when not drained.
    pub drained_since: Option<String>,
    /// Drained, and for `admin.drain_idle_after` no request in flight, no open tunnel and no
    /// new request: nothing pinned to it is still in use, the node can be stopped.
    pub idle: bool,
    #[serde(skip)]
    pub last_request_ms: Option<u64>,
}

/// Everything the status page shows.
#[derive(Debug, Clone, Serialize)]
pub struct Status {
    pub generation: u64,
    pub generation_loaded_at: String,
    pub ready: bool,
    /// Panic mode: every node fails its health checks and all that are not drained get traffic.
    pub panic: bool,
    pub shutting_down: bool,
    pub uptime_seconds: u64,
    pub drain_idle_after_seconds: u64,
    pub nodes: Vec<NodeStatus>,
    pub certificate: CertStatus,
    /// `None` when the audit trail is disabled.
    pub audit: Option<AuditStatus>,
    /// Unix ms when this was read.
    #[serde(skip)]
    pub now_ms: u64,
    /// Where to send admin commands from this host (`listen.admin`, loopback for a wildcard).
    #[serde(skip)]
    pub admin_addr: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct CertStatus {
    pub subject: String,
    pub not_after: String,
    pub days_left: i64,
    pub development: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct AuditStatus {
    pub writable: bool,
    pub queue_depth: i64,
    pub lines: u64,
    pub write_errors: u64,
}

/// Reads the generation in service, the shared state and the sampler's rates.
pub fn read(gw: &Arc<Generations>, sampler: &Sampler) -> Status {
    let current = gw.current_full();
    let shared = gw.shared();
    let now_ms = unix_ms();
    let idle_after = current.config.config.admin.drain_idle_after;
    let rates: Vec<Rates> = current
        .nodes
        .nodes
        .iter()
        .map(|n| sampler.rates(&n.spec.name))
        .collect();
    let total_hits: u64 = rates.iter().map(|r| r.hits).sum();
    let nodes = current
        .nodes
        .nodes
        .iter()
        .zip(rates)
        .map(|(n, r)| {
            let view = n.view();
            let last = sampler.last_request_ms(&n.spec.name);
            let drained = n.drained_at_ms();
            let idle = drained.is_some_and(|since| {
                let quiet_since = last.map_or(since, |l| l.max(since));
                view.in_flight == 0
                    && view.tunnels == 0
                    && now_ms.saturating_sub(quiet_since) >= idle_after.as_millis() as u64
            });
            NodeStatus {
                requests_per_second: r.requests,
                errors_per_second: r.errors,
                sticky_share: (total_hits > 0).then(|| r.hits as f64 / total_hits as f64),
                last_request_at: last.map(rfc3339_ms),
                drained_since: drained.map(rfc3339_ms),
                idle,
                last_request_ms: last,
                view,
            }
        })
        .collect();
    let cert = &current.cert;
    Status {
        generation: current.number,
        generation_loaded_at: rfc3339_ms(current.loaded_at_ms),
        ready: current.ready(shared),
        panic: current.nodes.panic(),
        shutting_down: shared.shutdown.is_cancelled(),
        uptime_seconds: shared.started.elapsed().as_secs(),
        drain_idle_after_seconds: idle_after.as_secs(),
        nodes,
        certificate: CertStatus {
            subject: cert.subject.clone(),
            not_after: cert.not_after_rfc3339(),
            days_left: (cert.not_after - (now_ms / 1000) as i64).div_euclid(86_400),
            development: cert.development,
        },
        audit: shared.audit.as_ref().map(|a| AuditStatus {
            writable: a.healthy(),
            queue_depth: a.stats.queue_depth.load(Ordering::Relaxed),
            lines: a.stats.lines.load(Ordering::Relaxed),
            write_errors: a.stats.write_errors.load(Ordering::Relaxed),
        }),
        now_ms,
        admin_addr: {
            let mut a = current.config.config.listen.admin;
            if a.ip().is_unspecified() {
                a.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
            }
            a.to_string()
        },
    }
}

fn rfc3339_ms(ms: u64) -> String {
    crate::tls::rfc3339_secs((ms / 1000) as i64)
}
