//! The Botpress nodes behind bpgate: their health, which one a request goes to, and the sticky
//! cookie that keeps a browser's socket.io session on the node that holds it.
//!
//! Routing, in order:
//! 1. A request of an engine.io session this process learned (`sid` in the query, see [`sid`])
//!    whose node is up → that node (`sid`), whatever a cookie says: the session lives in that
//!    node's memory, so a cookie naming another node could only earn a 400 "Session ID unknown"
//!    and a reconnect. A valid cookie naming the same node counts as a `hit`.
//! 2. A valid sticky cookie naming a live node → that node (`hit`), draining or not.
//! 3. A valid cookie naming a dead or removed node → another node, cookie re-issued (`failover`).
//! 4. Neither → with `sticky.fallback = "load"` (the default) power-of-two-choices
//!    least-outstanding-requests, so new visitors behind one NAT spread; with `"client-ip"` the
//!    client IP's weighted rendezvous hash over healthy, non-draining nodes (replicas agree
//!    without a cookie, but one NAT lands on one node) (`new`). The cookie then pins it.
//!
//! A connection failure before any byte was sent is retried once on another node.
//!
//! Which nodes are "live" is a [`Tier`]: the healthy ones; when none is, the ones not checked
//! yet (a node is `pending` until its first check, which alone decides it); when every node has
//! failed, all that are not drained, as Envoy's panic threshold does: health checks that take
//! the whole cluster out are more likely wrong than the whole cluster is down.

mod health;
mod route;
pub mod sid;
pub mod sticky;

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use dashmap::DashMap;
use serde::Serialize;

pub use health::{spawn_health_checks, HealthSettings};
pub use route::{take_cookie, CookieSpec, Ejection, Route, RouteLayer};
pub use sid::{EngineIo, SidMap};
pub use sticky::{NodeId, Opened, Rejected, StickyCodec};

use crate::config::NodeSpec;
use crate::proxy::Pool;

const HEALTHY: u8 = 0;
const UNHEALTHY: u8 = 1;
/// Not checked yet (health checks on): the first check decides, without `rise` or `fall`.
const PENDING: u8 = 2;

/// One Botpress node and everything bpgate knows about it.
pub struct Node {
    pub spec: NodeSpec,
    pub name: Arc<str>,
    pub pool: Arc<Pool>,
    state: AtomicU8,
    draining: AtomicBool,
    /// Consecutive failures (active or passive) and successes (active) toward `fall`/`rise`.
    fails: AtomicU32,
    oks: AtomicU32,
    pub ejections: AtomicU64,
    /// The last `Set-Cookie` pinning this node and the second it was sealed in.
    pub set_cookie: arc_swap::ArcSwapOption<(u64, http::HeaderValue)>,
    /// Responses for requests routed here, by status class (1xx..5xx).
    pub status_counts: [AtomicU64; 5],
    /// Requests that came with a valid cookie pinned here (the node's share of live sessions).
    pub sticky_hits: AtomicU64,
    /// When the current drain began (Unix ms), 0 when not draining.
    drained_at_ms: AtomicU64,
    /// Whether any active check has succeeded yet (readiness).
    seen_up: AtomicBool,
    last_check: arc_swap::ArcSwapOption<CheckResult>,
}

/// The last active health check of a node.
#[derive(Debug, Clone, Serialize)]
pub struct CheckResult {
    pub ok: bool,
    pub status: Option<u16>,
    pub latency_ms: f64,
    /// Unix milliseconds.
    pub at_ms: u64,
    pub error: Option<String>,
}

/// A node's state as `GET /upstreams` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct NodeView {
    pub name: String,
    pub url: String,
    pub weight: u32,
    pub state: &'static str,
    pub healthy: bool,
    pub draining: bool,
    pub in_flight: usize,
    /// WebSocket/Upgrade tunnels open to the node.
    pub tunnels: usize,
    pub idle_connections: usize,
    pub connections_opened: u64,
    pub requests: u64,
    pub ejections: u64,
    pub last_check: Option<CheckResult>,
}

impl Node {
    fn new(spec: NodeSpec) -> Self {
        let name: Arc<str> = Arc::from(spec.name.as_str());
        Node {
            pool: Arc::new(Pool::new(name.clone(), spec.authority.clone())),
            name,
            spec,
            state: AtomicU8::new(PENDING),
            draining: AtomicBool::new(false),
            fails: AtomicU32::new(0),
            oks: AtomicU32::new(0),
            ejections: AtomicU64::new(0),
            status_counts: Default::default(),
            sticky_hits: AtomicU64::new(0),
            drained_at_ms: AtomicU64::new(0),
            set_cookie: arc_swap::ArcSwapOption::empty(),
            seen_up: AtomicBool::new(false),
            last_check: arc_swap::ArcSwapOption::empty(),
        }
    }

    pub fn is_healthy(&self) -> bool {
        self.state.load(Ordering::Relaxed) == HEALTHY
    }

    /// Not health-checked yet.
    pub fn is_pending(&self) -> bool {
        self.state.load(Ordering::Relaxed) == PENDING
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    /// Eligible for new sessions.
    pub fn accepts_new(&self) -> bool {
        self.is_healthy() && !self.is_draining()
    }

    pub fn set_draining(&self, on: bool) {
        if self.draining.swap(on, Ordering::Relaxed) != on {
            self.drained_at_ms
                .store(if on { unix_ms() } else { 0 }, Ordering::Relaxed);
        }
    }

    /// When the current drain began (Unix ms); `None` when the node is not drained.
    pub fn drained_at_ms(&self) -> Option<u64> {
        match self.drained_at_ms.load(Ordering::Relaxed) {
            0 => None,
            t => Some(t),
        }
    }

    /// A connection to the node failed (refused, reset, timed out while connecting).
    pub fn passive_failure(&self, fall: u32, eject: bool) {
        self.oks.store(0, Ordering::Relaxed);
        let n = self.fails.fetch_add(1, Ordering::Relaxed) + 1;
        if eject && n >= fall {
            match self.state.swap(UNHEALTHY, Ordering::Relaxed) {
                HEALTHY => {
                    self.ejections.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(node = %self.name, failures = n, "node ejected after consecutive connection failures");
                }
                PENDING => {
                    tracing::warn!(node = %self.name, failures = n, "node unreachable before its first health check; it takes no traffic until a check passes");
                }
                _ => {}
            }
        }
    }

    /// Health checks are off: every node is taken as healthy.
    fn assume_healthy(&self) {
        self.state.store(HEALTHY, Ordering::Relaxed);
    }

    /// A request reached the node.
    pub fn passive_success(&self) {
        if self.fails.load(Ordering::Relaxed) != 0 && self.is_healthy() {
            self.fails.store(0, Ordering::Relaxed);
        }
    }

    /// An active check's result. The first one decides a pending node at once (one success
    /// brings it in, one failure keeps it out: Envoy's rule for new hosts); after that `rise`
    /// successes or `fall` failures in a row change its state.
    fn record_check(&self, r: CheckResult, rise: u32, fall: u32) {
        let first = |to: u8| {
            self.state
                .compare_exchange(PENDING, to, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        };
        if r.ok {
            self.seen_up.store(true, Ordering::Relaxed);
            self.fails.store(0, Ordering::Relaxed);
            let n = self.oks.fetch_add(1, Ordering::Relaxed) + 1;
            if first(HEALTHY) {
                tracing::info!(node = %self.name, "node passed its first health check");
            } else if n >= rise && self.state.swap(HEALTHY, Ordering::Relaxed) == UNHEALTHY {
                tracing::info!(node = %self.name, "node healthy again");
            }
        } else {
            self.oks.store(0, Ordering::Relaxed);
            let n = self.fails.fetch_add(1, Ordering::Relaxed) + 1;
            if first(UNHEALTHY) {
                tracing::warn!(node = %self.name, error = r.error.as_deref().unwrap_or(""), status = r.status, "node failed its first health check; it takes no traffic until a check passes");
            } else if n >= fall && self.state.swap(UNHEALTHY, Ordering::Relaxed) == HEALTHY {
                self.ejections.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(node = %self.name, error = r.error.as_deref().unwrap_or(""), status = r.status, "node unhealthy");
            }
        }
        self.last_check.store(Some(Arc::new(r)));
    }

    pub fn view(&self) -> NodeView {
        NodeView {
            name: self.spec.name.clone(),
            url: format!("http://{}", self.spec.authority),
            weight: self.spec.weight,
            state: if self.is_pending() {
                "pending"
            } else if !self.is_healthy() {
                "unhealthy"
            } else if self.is_draining() {
                "draining"
            } else {
                "healthy"
            },
            healthy: self.is_healthy(),
            draining: self.is_draining(),
            in_flight: self.pool.in_flight(),
            tunnels: self.pool.tunnels.load(Ordering::Relaxed),
            idle_connections: self.pool.idle_count(),
            connections_opened: self.pool.connects.load(Ordering::Relaxed),
            requests: self.pool.requests.load(Ordering::Relaxed),
            ejections: self.ejections.load(Ordering::Relaxed),
            last_check: self.last_check.load_full().map(|c| (*c).clone()),
        }
    }
}

/// One generation's node set, with each node's id under the current and previous sticky keys.
/// Nodes are shared between snapshots: a node that stays across a reload keeps its state.
pub struct Snapshot {
    pub nodes: Vec<Arc<Node>>,
    ids: Vec<NodeId>,
    by_id: HashMap<NodeId, usize>,
    by_previous_id: HashMap<NodeId, usize>,
    /// Whether panic mode was last announced (shared by every snapshot of the cluster).
    announced_panic: Arc<AtomicBool>,
}

/// Which nodes take requests, from the best set that has one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tier {
    /// The healthy nodes (new sessions: those not drained, else any healthy one).
    Healthy,
    /// No node is healthy, some are not checked yet: those, not drained.
    Pending,
    /// Every node failed its checks: all of them that are not drained (panic mode).
    Panic,
    /// Every node is drained and none is healthy: nothing to route to.
    None,
}

impl Tier {
    /// Whether `n` takes new sessions in this tier.
    fn admits(self, n: &Node) -> bool {
        match self {
            Tier::Healthy => n.accepts_new(),
            Tier::Pending => n.is_pending() && !n.is_draining(),
            Tier::Panic => !n.is_draining(),
            Tier::None => false,
        }
    }

    /// Whether a client pinned to `n` stays there.
    fn keeps(self, n: &Node) -> bool {
        n.is_healthy() || (self != Tier::Healthy && self.admits(n))
    }
}

impl Snapshot {
    pub fn node(&self, name: &str) -> Option<Arc<Node>> {
        self.nodes.iter().find(|n| &*n.name == name).cloned()
    }

    /// The set requests are routed to now.
    pub fn tier(&self) -> Tier {
        let (mut pending, mut unhealthy) = (false, false);
        for n in &self.nodes {
            if n.is_healthy() {
                return Tier::Healthy;
            }
            if !n.is_draining() {
                if n.is_pending() {
                    pending = true;
                } else {
                    unhealthy = true;
                }
            }
        }
        match (pending, unhealthy) {
            (true, _) => Tier::Pending,
            (false, true) => Tier::Panic,
            (false, false) => Tier::None,
        }
    }

    /// Panic mode: every node failed its health checks, and bpgate routes to all of those that
    /// are not drained anyway.
    pub fn panic(&self) -> bool {
        self.tier() == Tier::Panic
    }

    /// Logs entering and leaving panic mode, once each; call it where node states change.
    /// Returns the change it announced, if any (`Some(true)`: entered).
    pub fn announce_panic(&self) -> Option<bool> {
        let now = self.panic();
        if self.announced_panic.swap(now, Ordering::Relaxed) == now {
            return None;
        }
        if now {
            let n = self.nodes.iter().filter(|n| !n.is_draining()).count();
            tracing::error!(
                nodes = n,
                "PANIC MODE: every node fails its health checks; routing to all {n} nodes that are not drained anyway until one passes again"
            );
        } else {
            tracing::warn!("panic mode over: a node is healthy again (or none is left to route to); normal selection resumes");
        }
        Some(now)
    }

    /// Ready: at least one node is healthy and has passed an active check (or checks are off);
    /// or bpgate is in panic mode, still routing, and some node has passed a check before (a
    /// readiness probe that took every replica out with the nodes would undo the guard).
    pub fn ready(&self, checks_enabled: bool) -> bool {
        let seen = |n: &Arc<Node>| !checks_enabled || n.seen_up.load(Ordering::Relaxed);
        self.nodes.iter().any(|n| n.is_healthy() && seen(n))
            || (self.panic() && self.nodes.iter().any(seen))
    }
}

/// Sticky outcome counters (`bpgate_sticky_total{outcome}`).
#[derive(Debug, Default)]
pub struct StickyStats {
    pub hit: AtomicU64,
    /// Routed by a learned engine.io session id, not by a cookie.
    pub sid: AtomicU64,
    pub new: AtomicU64,
    pub failover: AtomicU64,
    pub forged: AtomicU64,
    pub expired: AtomicU64,
}

/// Every node bpgate knows (their state outlives reloads) and the sticky routing policy, which
/// needs a restart to change. Which nodes serve is a [`Snapshot`], one per generation.
pub struct Cluster {
    /// Nodes by name, so a reload keeps the state of nodes it keeps.
    registry: DashMap<String, Arc<Node>>,
    announced_panic: Arc<AtomicBool>,
    pub codec: StickyCodec,
    pub sticky_enabled: bool,
    pub ip_fallback: bool,
    pub stats: StickyStats,
    /// True when the secret was generated at start (replicas will disagree).
    pub generated_secret: bool,
    /// engine.io session ids learned from handshakes.
    pub sids: Arc<SidMap>,
}

/// How a request's node was chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sticky {
    Hit,
    Sid,
    New,
    Failover,
}

impl Sticky {
    pub fn as_str(self) -> &'static str {
        match self {
            Sticky::Hit => "hit",
            Sticky::Sid => "sid",
            Sticky::New => "new",
            Sticky::Failover => "failover",
        }
    }
}

/// The routing decision for one request.
pub struct Choice {
    pub node: Arc<Node>,
    pub sticky: Sticky,
    /// Whether the response must carry a (new or refreshed) cookie.
    pub set_cookie: bool,
}

pub struct ClusterSettings {
    pub codec: StickyCodec,
    pub sticky_enabled: bool,
    pub ip_fallback: bool,
    pub generated_secret: bool,
    /// `sticky.sid_map_max_entries` (0: off) and `sticky.sid_map_idle_timeout`.
    pub sid_map_max_entries: usize,
    pub sid_map_idle: Duration,
}

impl Cluster {
    pub fn new(s: ClusterSettings) -> Arc<Self> {
        Arc::new(Cluster {
            registry: DashMap::new(),
            announced_panic: Arc::new(AtomicBool::new(false)),
            codec: s.codec,
            sticky_enabled: s.sticky_enabled,
            ip_fallback: s.ip_fallback,
            stats: StickyStats::default(),
            generated_secret: s.generated_secret,
            sids: Arc::new(SidMap::new(
                if s.sticky_enabled {
                    s.sid_map_max_entries
                } else {
                    0
                },
                s.sid_map_idle.as_secs(),
            )),
        })
    }

    /// The node set for `specs`. Nodes that stay (same name and address) keep their state, pool
    /// and draining flag; nodes left out are forgotten, and their pinned clients fail over. New
    /// nodes are pending until their first health check; with `checks_enabled` false every node
    /// is taken as healthy.
    pub fn snapshot(&self, specs: &[NodeSpec], checks_enabled: bool) -> Arc<Snapshot> {
        let mut nodes = Vec::with_capacity(specs.len());
        for spec in specs {
            // The map guard must be gone before `insert` below, which locks the same shard.
            let known = self.registry.get(&spec.name).map(|n| n.clone());
            let node = match known {
                Some(n) if n.spec == *spec => n,
                _ => {
                    let n = Arc::new(Node::new(spec.clone()));
                    self.registry.insert(spec.name.clone(), n.clone());
                    n
                }
            };
            if !checks_enabled {
                node.assume_healthy();
            }
            nodes.push(node);
        }
        self.registry
            .retain(|name, _| specs.iter().any(|s| &s.name == name));
        let ids: Vec<NodeId> = nodes
            .iter()
            .map(|n| self.codec.current().node_id(&n.spec.name))
            .collect();
        let by_id = ids.iter().enumerate().map(|(i, id)| (*id, i)).collect();
        let by_previous_id = match self.codec.previous() {
            Some(k) => nodes
                .iter()
                .enumerate()
                .map(|(i, n)| (k.node_id(&n.spec.name), i))
                .collect(),
            None => HashMap::new(),
        };
        Arc::new(Snapshot {
            nodes,
            ids,
            by_id,
            by_previous_id,
            announced_panic: self.announced_panic.clone(),
        })
    }

    /// Chooses the node for a request (see the module docs for the order). `sid`: the engine.io
    /// session id the request carries. `None`: no node can take it.
    pub fn choose(
        &self,
        snap: &Snapshot,
        cookie: Option<&str>,
        sid: Option<&str>,
        client: IpAddr,
    ) -> Option<Choice> {
        if !self.sticky_enabled {
            return self.balance(snap, None).map(|node| Choice {
                node,
                sticky: Sticky::New,
                set_cookie: false,
            });
        }
        let now = unix_now();
        let tier = snap.tier();
        let by_sid = sid
            .filter(|_| self.sids.enabled())
            .and_then(|s| self.session_node(snap, tier, s, now));
        let mut pinned_dead = false;
        if let Some(v) = cookie {
            match self.codec.open(v, now) {
                Ok(o) => {
                    let idx = if o.previous_key {
                        snap.by_previous_id.get(&o.node)
                    } else {
                        snap.by_id.get(&o.node)
                    };
                    match idx.map(|i| &snap.nodes[*i]) {
                        Some(n)
                            if tier.keeps(n)
                                && by_sid.as_ref().is_none_or(|s| Arc::ptr_eq(s, n)) =>
                        {
                            // Refresh a cookie past half its life (or sealed with the old key) so an
                            // active session is never cut by expiry.
                            let refresh =
                                o.previous_key || o.age_secs > self.codec.max_age_secs() / 2;
                            return Some(Choice {
                                node: n.clone(),
                                sticky: Sticky::Hit,
                                set_cookie: refresh,
                            });
                        }
                        Some(n) if tier.keeps(n) => {
                            // A live session elsewhere wins; the cookie is left as it is (it
                            // still pins this browser's other sessions).
                            return by_sid.map(|node| Choice {
                                node,
                                sticky: Sticky::Sid,
                                set_cookie: false,
                            });
                        }
                        _ => pinned_dead = true,
                    }
                }
                Err(Rejected::Expired) => {
                    self.stats.expired.fetch_add(1, Ordering::Relaxed);
                }
                Err(_) => {
                    self.stats.forged.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        if let Some(node) = by_sid {
            // No usable cookie (refused, never kept, expired, or naming a dead node): the
            // session id keeps the session where it is, and the cookie pins the browser there
            // in case it keeps this one.
            return Some(Choice {
                node,
                sticky: Sticky::Sid,
                set_cookie: true,
            });
        }
        let node = if self.ip_fallback {
            self.rendezvous(snap, client)
        } else {
            self.balance(snap, None)
        }?;
        let sticky = if pinned_dead {
            Sticky::Failover
        } else {
            Sticky::New
        };
        Some(Choice {
            node,
            sticky,
            set_cookie: true,
        })
    }

    /// The node holding engine.io session `sid`, as learned from its handshake, if it still
    /// takes its pinned clients.
    fn session_node(&self, snap: &Snapshot, tier: Tier, sid: &str, now: u64) -> Option<Arc<Node>> {
        let stats = &self.sids.stats;
        let node = self
            .sids
            .lookup(sid, now)
            .and_then(|name| snap.node(&name))
            .filter(|n| tier.keeps(n));
        match &node {
            Some(_) => stats.hits.fetch_add(1, Ordering::Relaxed),
            None => stats.misses.fetch_add(1, Ordering::Relaxed),
        };
        node
    }

    /// Counts how the request's node was finally chosen (`bpgate_sticky_total`), once, after a
    /// retry on another node has had its say: the metric then agrees with the audit line's
    /// `sticky`. Cookie rejections (`forged`, `expired`) are counted by [`Cluster::choose`].
    pub fn count(&self, node: &Node, sticky: Sticky) {
        if !self.sticky_enabled {
            return;
        }
        let c = match sticky {
            Sticky::Hit => {
                node.sticky_hits.fetch_add(1, Ordering::Relaxed);
                &self.stats.hit
            }
            Sticky::Sid => &self.stats.sid,
            Sticky::New => &self.stats.new,
            Sticky::Failover => &self.stats.failover,
        };
        c.fetch_add(1, Ordering::Relaxed);
    }

    /// Another node for a retry after `failed` could not be reached.
    pub fn alternative(&self, snap: &Snapshot, failed: &Node) -> Option<Arc<Node>> {
        self.balance(snap, Some(failed))
    }

    /// Power of two random choices, least outstanding requests per unit of weight.
    pub fn balance(&self, snap: &Snapshot, exclude: Option<&Node>) -> Option<Arc<Node>> {
        let tier = snap.tier();
        let eligible =
            |n: &Arc<Node>| tier.admits(n) && exclude.is_none_or(|x| !std::ptr::eq(x, n.as_ref()));
        let total: u64 = snap
            .nodes
            .iter()
            .filter(|n| eligible(n))
            .map(|n| n.spec.weight as u64)
            .sum();
        if total == 0 {
            // No node takes new sessions: a draining but healthy one is better than a 503.
            return snap
                .nodes
                .iter()
                .find(|n| n.is_healthy() && exclude.is_none_or(|x| !std::ptr::eq(x, n.as_ref())))
                .cloned();
        }
        let pick = || {
            let mut r = fastrand::u64(..total);
            for n in snap.nodes.iter().filter(|n| eligible(n)) {
                let w = n.spec.weight as u64;
                if r < w {
                    return n.clone();
                }
                r -= w;
            }
            snap.nodes[0].clone()
        };
        let a = pick();
        let b = pick();
        let load = |n: &Node| (n.pool.in_flight() as f64 + 1.0) / n.spec.weight as f64;
        Some(if load(&b) < load(&a) { b } else { a })
    }

    /// Weighted rendezvous (highest random weight) hashing of the client IP: every replica
    /// computes the same node, and removing a node moves only the clients it had.
    pub fn rendezvous(&self, snap: &Snapshot, client: IpAddr) -> Option<Arc<Node>> {
        let ip = match crate::proxy::canonical(client) {
            IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
            IpAddr::V6(v6) => v6.octets(),
        };
        let tier = snap.tier();
        let mut best: Option<(&Arc<Node>, f64)> = None;
        for n in snap.nodes.iter().filter(|n| tier.admits(n)) {
            let h = mix(fnv1a(
                fnv1a(0xcbf2_9ce4_8422_2325, n.spec.name.as_bytes()),
                &ip,
            ));
            // Uniform in (0, 1); score = -w / ln(u) gives each node a share proportional to w.
            let u = ((h >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
            let score = -(n.spec.weight as f64) / u.ln();
            if best.is_none_or(|(_, s)| score > s) {
                best = Some((n, score));
            }
        }
        best.map(|(n, _)| n.clone())
            .or_else(|| self.balance(snap, None))
    }

    /// The cookie value pinning `node` now.
    pub fn cookie_value(&self, snap: &Snapshot, node: &Node) -> Option<String> {
        let i = snap
            .nodes
            .iter()
            .position(|n| std::ptr::eq(n.as_ref(), node))?;
        Some(self.codec.seal(snap.ids[i], unix_now()))
    }
}

fn fnv1a(mut h: u64, bytes: &[u8]) -> u64 {
    for b in bytes {
        h ^= *b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// splitmix64's finaliser: spreads FNV's weak low bits over the whole word.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A random 32-byte secret, base64url, for when none is configured.
pub fn generate_secret() -> String {
    let mut b = [0u8; 32];
    let _ = aws_lc_rs::rand::fill(&mut b);
    base64::Engine::encode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, b)
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("nodes", &self.registry.len())
            .finish()
    }
}

impl std::fmt::Debug for Snapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.nodes.iter().map(|n| &n.spec))
            .finish()
    }
}

/// Used by health checks and tests: a short duration formatted for logs.
pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

#[cfg(test)]
mod tests;
