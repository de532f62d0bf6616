//! The hot path's counters: plain atomics with fixed label sets, bumped by the connection edge,
//! the audit layer and the reload manager, read by `metrics` at scrape time.
//!
//! This module imports nothing of the crate, so anything can count without depending on the
//! module that renders the counts.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

/// Upper bounds (seconds) of the duration histogram buckets; `+Inf` follows.
pub const DURATION_BUCKETS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
];

/// Status classes, indexed by [`status_class`].
pub const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// Methods with their own counter; anything else counts as `other`.
pub const METHODS: [&str; 8] = [
    "GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "other",
];

/// Why a TLS handshake failed (`bpgate_tls_handshake_failures_total{reason}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandshakeFailure {
    /// Not finished within `tls.handshake_timeout`.
    Timeout = 0,
    /// The connection closed or failed before the handshake finished.
    Eof = 1,
    /// Not TLS, or malformed TLS (plain HTTP to the HTTPS port, scanners).
    Protocol = 2,
    /// No protocol version, cipher suite or ALPN protocol in common (old clients).
    Incompatible = 3,
    /// The client refused bpgate's certificate (a certificate alert: unknown CA, expired, bad).
    CertificateRejected = 4,
    /// Closed unfinished to make room for a new client at `limits.max_connections`.
    Evicted = 5,
}

/// The `reason` label values, indexed by [`HandshakeFailure`].
pub const HANDSHAKE_FAILURES: [&str; 6] = [
    "timeout",
    "eof",
    "protocol",
    "incompatible",
    "certificate_rejected",
    "evicted",
];

impl ConnCounters {
    pub fn handshake_failed(&self, why: HandshakeFailure) {
        self.handshake_failures[why as usize].fetch_add(1, Ordering::Relaxed);
    }
}

/// Everything counted, shared by `Arc`.
#[derive(Debug, Default)]
pub struct Counters {
    pub connections: ConnCounters,
    pub requests: RequestCounters,
    pub reloads: ReloadCounters,
}

/// Client connections and TLS handshakes on the public listener.
#[derive(Debug, Default)]
pub struct ConnCounters {
    pub h1: AtomicUsize,
    pub h2: AtomicUsize,
    pub handshakes: AtomicU64,
    /// Failed handshakes, indexed by [`HandshakeFailure`].
    pub handshake_failures: [AtomicU64; HANDSHAKE_FAILURES.len()],
    /// Requests received (all protocols), counted at the edge.
    pub requests: AtomicU64,
}

/// Finished exchanges, bumped once when an exchange ends.
#[derive(Debug, Default)]
pub struct RequestCounters {
    /// `[status class][method]`, see [`CLASSES`] and [`METHODS`].
    pub by_class_method: [[AtomicU64; 8]; 5],
    /// Per bucket of [`DURATION_BUCKETS`] (last: `+Inf`), not cumulative.
    pub duration: [AtomicU64; 13],
    pub duration_sum_us: AtomicU64,
    /// Time to the node's response head, same buckets.
    pub upstream: [AtomicU64; 13],
    pub upstream_sum_us: AtomicU64,
    pub bytes_in: AtomicU64,
    pub bytes_out: AtomicU64,
}

/// Configuration and certificate reloads by result.
#[derive(Debug, Default)]
pub struct ReloadCounters {
    pub config_ok: AtomicU64,
    pub config_failed: AtomicU64,
    pub cert_ok: AtomicU64,
    pub cert_failed: AtomicU64,
}

/// Index of a status in [`CLASSES`].
pub fn status_class(status: u16) -> usize {
    (status / 100).clamp(1, 5) as usize - 1
}

fn bucket(us: u64) -> usize {
    let s = us as f64 / 1e6;
    DURATION_BUCKETS
        .iter()
        .position(|b| s <= *b)
        .unwrap_or(DURATION_BUCKETS.len())
}

impl RequestCounters {
    /// One finished exchange. `upstream_us`: time from sending to the node's response head.
    pub fn record(
        &self,
        status: u16,
        method: &str,
        duration_us: u64,
        upstream_us: Option<u64>,
        bytes_in: u64,
        bytes_out: u64,
    ) {
        let m = METHODS.iter().position(|x| *x == method).unwrap_or(7);
        self.by_class_method[status_class(status)][m].fetch_add(1, Ordering::Relaxed);
        self.duration[bucket(duration_us)].fetch_add(1, Ordering::Relaxed);
        self.duration_sum_us
            .fetch_add(duration_us, Ordering::Relaxed);
        if let Some(u) = upstream_us {
            self.upstream[bucket(u)].fetch_add(1, Ordering::Relaxed);
            self.upstream_sum_us.fetch_add(u, Ordering::Relaxed);
        }
        self.bytes_in.fetch_add(bytes_in, Ordering::Relaxed);
        self.bytes_out.fetch_add(bytes_out, Ordering::Relaxed);
    }
}
