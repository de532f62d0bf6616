//! Prometheus metrics for `GET /metrics` on the admin listener.
//!
//! The request path never calls into a metrics library: it only bumps the plain atomics it
//! already keeps (the `counters` module's, the cluster's sticky counters, each node's pool
//! counters, the audit writer's). A scrape reads those atomics once into a
//! [`MetricsInput`] and [`render_from`] builds a fresh `prometheus-client` [`Registry`] from the
//! values, encodes it and drops it. A scrape therefore costs a few allocations on the admin
//! listener and nothing on the hot path, and a node removed by a reload simply stops appearing.
//!
//! The output is the OpenMetrics text format (it ends with `# EOF` and counter families are
//! typed without their `_total` suffix); serve it with [`CONTENT_TYPE`] so Prometheus parses it
//! as OpenMetrics.
//!
//! Label cardinality is bounded by the configuration: the only open-ended label is `node`,
//! whose values are the configured node names. No paths, client addresses or users. Every
//! family's samples come in a fixed order (nodes in configuration order, label values in the
//! order the README lists them), with their labels in a fixed order, so two scrapes diff
//! cleanly; every label combination is present from the first scrape, at 0.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::{EncodeMetric, MetricEncoder};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::{MetricType, TypedMetric};
use prometheus_client::registry::{Registry, Unit};

use crate::counters::{CLASSES, DURATION_BUCKETS, HANDSHAKE_FAILURES, METHODS};
use crate::reload::Generations;

/// A histogram whose bucket counts were read from atomics at scrape time.
#[derive(Debug)]
struct ConstHistogram {
    sum: f64,
    count: u64,
    /// (upper bound, count in this bucket), not cumulative; the encoder accumulates.
    buckets: Vec<(f64, u64)>,
}

impl ConstHistogram {
    fn from(counts: &[AtomicU64; 13], sum_us: &AtomicU64) -> Self {
        let buckets: Vec<(f64, u64)> = DURATION_BUCKETS
            .iter()
            .copied()
            .chain(std::iter::once(f64::MAX))
            .zip(counts.iter().map(load))
            .collect();
        ConstHistogram {
            sum: load(sum_us) as f64 / 1e6,
            count: buckets.iter().map(|b| b.1).sum(),
            buckets,
        }
    }
}

impl prometheus_client::encoding::EncodeMetric for ConstHistogram {
    fn encode(
        &self,
        mut encoder: prometheus_client::encoding::MetricEncoder,
    ) -> Result<(), std::fmt::Error> {
        encoder.encode_histogram::<prometheus_client::encoding::NoLabelSet>(
            self.sum,
            self.count,
            &self.buckets,
            None,
        )
    }
    fn metric_type(&self) -> prometheus_client::metrics::MetricType {
        prometheus_client::metrics::MetricType::Histogram
    }
}

/// The `Content-Type` of [`render`]'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// One upstream node's values at scrape time.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeInput {
    pub name: String,
    pub healthy: bool,
    pub draining: bool,
    pub in_flight: u64,
    pub ejections: u64,
    pub connections_opened: u64,
    pub requests: u64,
}

/// The audit writer's values at scrape time.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditInput {
    pub lines: u64,
    pub write_errors: u64,
    pub rotations: u64,
    pub queue_depth: i64,
}

/// The engine.io session-id map's size and counters (`cluster::SidMap`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SidInput {
    pub entries: u64,
    pub hits: u64,
    pub misses: u64,
    pub learned: u64,
    pub unparsed: u64,
    pub evicted_idle: u64,
    pub evicted_capacity: u64,
    pub evicted_unknown: u64,
}

/// Everything one scrape reports, read from the gateway's atomics (plain data, so the
/// rendering is testable without a running gateway).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MetricsInput {
    pub requests: u64,
    pub connections_h1: u64,
    pub connections_h2: u64,
    pub handshakes: u64,
    /// Failed handshakes by reason, in the order of [`HANDSHAKE_FAILURES`].
    pub handshake_failures: [u64; HANDSHAKE_FAILURES.len()],
    pub nodes: Vec<NodeInput>,
    /// Panic mode: every node fails its checks and all are routed to anyway.
    pub upstream_panic: bool,
    pub sticky_hit: u64,
    pub sticky_new: u64,
    pub sticky_failover: u64,
    pub sticky_forged: u64,
    pub sticky_expired: u64,
    pub sticky_sid: u64,
    /// The engine.io session-id map.
    pub sid: SidInput,
    /// `None` when the audit trail is disabled: the audit families are then left out.
    pub audit: Option<AuditInput>,
    /// The serving certificate's `notAfter`, unix seconds.
    pub cert_not_after: i64,
    pub uptime_seconds: f64,
    /// (status class, method, count).
    pub requests_by: Vec<(&'static str, &'static str, u64)>,
    /// (node, status class, count).
    pub node_classes: Vec<(String, &'static str, u64)>,
    /// Per-bucket counts (upper bound, count) and the sum in seconds.
    pub duration: (Vec<(f64, u64)>, f64),
    pub upstream_time: (Vec<(f64, u64)>, f64),
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub tunnels_open: u64,
    pub config_reloads_ok: u64,
    pub config_reloads_failed: u64,
    pub cert_reloads_ok: u64,
    pub cert_reloads_failed: u64,
}

fn load(a: &AtomicU64) -> u64 {
    a.load(Ordering::Relaxed)
}

impl MetricsInput {
    /// Reads the counters (relaxed loads; each value is individually current) and the
    /// generation in service.
    pub fn read(gw: &Generations) -> MetricsInput {
        let shared = gw.shared();
        let current = gw.current_full();
        let s = &shared.counters.connections;
        let sticky = &shared.cluster.stats;
        let nodes = current
            .nodes
            .nodes
            .iter()
            .map(|n| {
                let v = n.view();
                NodeInput {
                    name: v.name,
                    healthy: v.healthy,
                    draining: v.draining,
                    in_flight: v.in_flight as u64,
                    ejections: v.ejections,
                    connections_opened: v.connections_opened,
                    requests: v.requests,
                }
            })
            .collect();
        let rm = &shared.counters.requests;
        let reloads = &shared.counters.reloads;
        let mut requests_by = Vec::new();
        for (c, row) in rm.by_class_method.iter().enumerate() {
            for (m, v) in row.iter().enumerate() {
                requests_by.push((CLASSES[c], METHODS[m], load(v)));
            }
        }
        let mut node_classes = Vec::new();
        for n in current.nodes.nodes.iter() {
            for (c, v) in n.status_counts.iter().enumerate() {
                node_classes.push((n.spec.name.clone(), CLASSES[c], load(v)));
            }
        }
        let hist = |h: ConstHistogram| (h.buckets, h.sum);
        MetricsInput {
            requests: load(&s.requests),
            connections_h1: s.h1.load(Ordering::Relaxed) as u64,
            connections_h2: s.h2.load(Ordering::Relaxed) as u64,
            handshakes: load(&s.handshakes),
            handshake_failures: std::array::from_fn(|i| load(&s.handshake_failures[i])),
            nodes,
            upstream_panic: current.nodes.panic(),
            sticky_hit: load(&sticky.hit),
            sticky_new: load(&sticky.new),
            sticky_failover: load(&sticky.failover),
            sticky_forged: load(&sticky.forged),
            sticky_expired: load(&sticky.expired),
            sticky_sid: load(&sticky.sid),
            sid: {
                let m = &shared.cluster.sids;
                let st = &m.stats;
                SidInput {
                    entries: m.len() as u64,
                    hits: load(&st.hits),
                    misses: load(&st.misses),
                    learned: load(&st.learned),
                    unparsed: load(&st.unparsed),
                    evicted_idle: load(&st.evicted_idle),
                    evicted_capacity: load(&st.evicted_capacity),
                    evicted_unknown: load(&st.evicted_unknown),
                }
            },
            requests_by,
            node_classes,
            duration: hist(ConstHistogram::from(&rm.duration, &rm.duration_sum_us)),
            upstream_time: hist(ConstHistogram::from(&rm.upstream, &rm.upstream_sum_us)),
            bytes_in: load(&rm.bytes_in),
            bytes_out: load(&rm.bytes_out),
            tunnels_open: shared.background.tunnels.load(Ordering::Relaxed) as u64,
            config_reloads_ok: load(&reloads.config_ok),
            config_reloads_failed: load(&reloads.config_failed),
            cert_reloads_ok: load(&reloads.cert_ok),
            cert_reloads_failed: load(&reloads.cert_failed),
            audit: shared.audit.as_ref().map(|a| AuditInput {
                lines: load(&a.stats.lines),
                write_errors: load(&a.stats.write_errors),
                rotations: load(&a.stats.rotations),
                queue_depth: a.stats.queue_depth.load(Ordering::Relaxed),
            }),
            cert_not_after: current.cert.not_after,
            uptime_seconds: shared.started.elapsed().as_secs_f64(),
        }
    }
}

/// The exposition for `GET /metrics`.
pub fn render(gw: &Generations) -> String {
    render_from(&MetricsInput::read(gw))
}

type Labels = Vec<(&'static str, String)>;

fn label(key: &'static str, value: &str) -> Labels {
    vec![(key, escape_label_value(value))]
}

/// `prometheus-client` writes label values verbatim; node names are printable ASCII but may
/// contain `"` or `\`, which the text format requires escaped.
fn escape_label_value(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// A family whose samples are encoded in the order given (`prometheus-client`'s `Family` keeps
/// a hash map, so its order changes from scrape to scrape).
#[derive(Debug)]
struct Ordered<M>(Vec<(Labels, M)>);

impl<M: TypedMetric> TypedMetric for Ordered<M> {
    const TYPE: MetricType = M::TYPE;
}

impl<M: EncodeMetric + TypedMetric> EncodeMetric for Ordered<M> {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        for (labels, m) in &self.0 {
            m.encode(encoder.encode_family(labels)?)?;
        }
        Ok(())
    }
    fn metric_type(&self) -> MetricType {
        M::TYPE
    }
}

fn counter_family(pairs: impl IntoIterator<Item = (Labels, u64)>) -> Ordered<ConstCounter<u64>> {
    Ordered(
        pairs
            .into_iter()
            .map(|(l, v)| (l, ConstCounter::new(v)))
            .collect(),
    )
}

fn gauge_family(pairs: impl IntoIterator<Item = (Labels, i64)>) -> Ordered<ConstGauge<i64>> {
    Ordered(
        pairs
            .into_iter()
            .map(|(l, v)| (l, ConstGauge::new(v)))
            .collect(),
    )
}

fn clamp_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// Builds a one-off registry from `m` and encodes it (OpenMetrics text, `# EOF` last).
pub fn render_from(m: &MetricsInput) -> String {
    // Counters are registered without `_total`: the encoder appends it.
    let mut r = Registry::with_prefix("bpgate");
    r.register(
        "requests",
        "HTTP requests received on the public listener (all protocols)",
        ConstCounter::new(m.requests),
    );
    r.register(
        "connections",
        "Open client connections by protocol (tunnel = upgraded WebSocket connections)",
        gauge_family([
            (label("protocol", "h1"), clamp_i64(m.connections_h1)),
            (label("protocol", "h2"), clamp_i64(m.connections_h2)),
            (label("protocol", "tunnel"), clamp_i64(m.tunnels_open)),
        ]),
    );
    r.register(
        "responses",
        "Finished exchanges by status class and method",
        counter_family(m.requests_by.iter().map(|(class, method, v)| {
            (
                vec![("class", class.to_string()), ("method", method.to_string())],
                *v,
            )
        })),
    );
    r.register(
        "upstream_responses",
        "Responses by node and status class (bpgate's own errors included)",
        counter_family(m.node_classes.iter().map(|(node, class, v)| {
            (
                vec![
                    ("node", escape_label_value(node)),
                    ("class", class.to_string()),
                ],
                *v,
            )
        })),
    );
    r.register_with_unit(
        "request_duration",
        "Time from request head to the end of the response body",
        Unit::Seconds,
        ConstHistogram {
            sum: m.duration.1,
            count: m.duration.0.iter().map(|b| b.1).sum(),
            buckets: m.duration.0.clone(),
        },
    );
    r.register_with_unit(
        "upstream_response_time",
        "Time from sending a request to a node until its response head (the node's share of the duration)",
        Unit::Seconds,
        ConstHistogram {
            sum: m.upstream_time.1,
            count: m.upstream_time.0.iter().map(|b| b.1).sum(),
            buckets: m.upstream_time.0.clone(),
        },
    );
    r.register_with_unit(
        "received",
        "Request body bytes received from clients",
        Unit::Bytes,
        ConstCounter::new(m.bytes_in),
    );
    r.register_with_unit(
        "sent",
        "Response body bytes sent to clients",
        Unit::Bytes,
        ConstCounter::new(m.bytes_out),
    );
    r.register(
        "config_reloads",
        "Configuration reloads by result",
        counter_family([
            (label("result", "success"), m.config_reloads_ok),
            (label("result", "failure"), m.config_reloads_failed),
        ]),
    );
    r.register(
        "certificate_reloads",
        "Certificate reloads by result",
        counter_family([
            (label("result", "success"), m.cert_reloads_ok),
            (label("result", "failure"), m.cert_reloads_failed),
        ]),
    );
    r.register(
        "tls_handshakes",
        "TLS handshakes started (failures are also counted in bpgate_tls_handshake_failures_total)",
        ConstCounter::new(m.handshakes),
    );
    r.register(
        "tls_handshake_failures",
        "Failed TLS handshakes by reason",
        counter_family(
            HANDSHAKE_FAILURES
                .iter()
                .zip(m.handshake_failures)
                .map(|(reason, v)| (label("reason", reason), v)),
        ),
    );

    let node = |f: fn(&NodeInput) -> i64| {
        gauge_family(m.nodes.iter().map(|n| (label("node", &n.name), f(n))))
    };
    let node_counter = |f: fn(&NodeInput) -> u64| {
        counter_family(m.nodes.iter().map(|n| (label("node", &n.name), f(n))))
    };
    r.register(
        "upstream_healthy",
        "1 when the node passes health checks, else 0",
        node(|n| i64::from(n.healthy)),
    );
    r.register(
        "upstream_draining",
        "1 when the node is drained (no new sessions), else 0",
        node(|n| i64::from(n.draining)),
    );
    r.register(
        "upstream_panic",
        "1 in panic mode: every node fails its health checks and bpgate routes to all that are not drained anyway",
        ConstGauge::new(i64::from(m.upstream_panic)),
    );
    r.register(
        "upstream_in_flight",
        "Requests currently forwarded to the node",
        node(|n| clamp_i64(n.in_flight)),
    );
    r.register(
        "upstream_ejections",
        "Times the node was taken out of rotation (active or passive failures)",
        node_counter(|n| n.ejections),
    );
    r.register(
        "upstream_connections_opened",
        "Upstream TCP connections opened to the node",
        node_counter(|n| n.connections_opened),
    );
    r.register(
        "upstream_requests",
        "Requests forwarded to the node",
        node_counter(|n| n.requests),
    );
    r.register(
        "sticky",
        "Node selections by sticky-cookie outcome",
        counter_family([
            (label("outcome", "hit"), m.sticky_hit),
            (label("outcome", "sid"), m.sticky_sid),
            (label("outcome", "new"), m.sticky_new),
            (label("outcome", "failover"), m.sticky_failover),
            (label("outcome", "forged"), m.sticky_forged),
            (label("outcome", "expired"), m.sticky_expired),
        ]),
    );
    r.register(
        "sticky_sid_entries",
        "engine.io session ids known (learned from handshake answers)",
        ConstGauge::new(clamp_i64(m.sid.entries)),
    );
    r.register(
        "sticky_sid_lookups",
        "Requests carrying an engine.io sid, by whether the map named a live node",
        counter_family([
            (label("result", "hit"), m.sid.hits),
            (label("result", "miss"), m.sid.misses),
        ]),
    );
    r.register(
        "sticky_sid_handshakes",
        "Polling handshake answers, by whether their session id was learned",
        counter_family([
            (label("result", "learned"), m.sid.learned),
            (label("result", "unparsed"), m.sid.unparsed),
        ]),
    );
    r.register(
        "sticky_sid_evictions",
        "Session ids dropped from the map, by reason",
        counter_family([
            (label("reason", "idle"), m.sid.evicted_idle),
            (label("reason", "capacity"), m.sid.evicted_capacity),
            (label("reason", "unknown"), m.sid.evicted_unknown),
        ]),
    );
    if let Some(a) = &m.audit {
        r.register(
            "audit_lines",
            "Audit lines written",
            ConstCounter::new(a.lines),
        );
        r.register(
            "audit_write_errors",
            "Audit write failures",
            ConstCounter::new(a.write_errors),
        );
        r.register(
            "audit_rotations",
            "Audit file rotations",
            ConstCounter::new(a.rotations),
        );
        r.register(
            "audit_queue_depth",
            "Audit lines queued between the request path and the writer thread",
            ConstGauge::new(a.queue_depth),
        );
    }
    r.register_with_unit(
        "tls_certificate_expiry_timestamp",
        "The serving certificate's notAfter, unix seconds",
        Unit::Seconds,
        ConstGauge::new(m.cert_not_after),
    );
    r.register_with_unit(
        "uptime",
        "Seconds since the gateway started",
        Unit::Seconds,
        ConstGauge::new(m.uptime_seconds),
    );

    let mut out = String::with_capacity(4096);
    if let Err(e) = encode(&mut out, &r) {
        // Writing into a String cannot fail; keep the scrape answerable regardless.
        out.clear();
        let _ = writeln!(out, "# bpgate: metrics encoding failed: {e}\n# EOF");
    }
    out
}

#[cfg(test)]
mod tests;
