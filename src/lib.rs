//! bpgate: a TLS-terminating reverse-proxy sidecar that puts a Botpress cluster into production
//! posture.
//!
//! A request flows through one pipeline you can point at:
//!
//! ```text
//! listener → TLS → connection edge (server) → audit → security headers → CORS → base path
//!          → node selection (cluster) → forward (proxy) → Botpress node
//! ```
//!
//! The connection edge loads the configuration generation in service once per request
//! ([`generation::Generation`]: the pipeline and everything else read from the configuration) and
//! the request runs on that snapshot to the end; a reload publishes a new one
//! ([`reload::Generations`]).
//!
//! Layout, one module per concern (leaves first; no module imports one that imports it back,
//! which `tests/architecture.rs` checks):
//! - [`config`]: the typed configuration (TOML + environment + flags), validated once; plain
//!   data, imports nothing of the crate.
//! - [`exchange`]: the pipeline's vocabulary (the per-request record, body types, the audit
//!   [`exchange::Outcome`], the table of bpgate's own answers [`exchange::Refusal`]); imports
//!   nothing of the crate.
//! - [`counters`]: the hot path's atomics; imports nothing of the crate.
//! - [`tls`]: certificates, the development certificate, the rustls configuration.
//! - [`proxy`]: forwarding headers, the connection pool, tunnels (the innermost layer).
//! - [`cluster`]: nodes, health checks, sticky cookie, engine.io session map, node selection (a
//!   layer).
//! - [`audit`], [`headers`], [`cors`], [`base_path`]: the other layers, outermost first.
//! - [`stack`]: stacks the layers into the pipeline.
//! - [`generation`]: the assembly: configuration values become runtime values, one
//!   [`generation::Generation`] per reload; [`generation::Shared`] is what outlives them.
//! - [`reload`]: what a reload applies ([`reload::Live`]) and what needs a restart
//!   ([`reload::RestartOnly`]), the one `ArcSwap` of the generation in service, typed reports.
//! - [`server`]: roles wired by [`server::Gateway`]: accept loop, connection edge, redirect
//!   listener, certificate watcher; graceful shutdown.
//! - [`admin`], [`metrics`]: the admin listener (its access control and status page) and
//!   `GET /metrics`, reading shared state through
//!   [`reload::Generations`]. [`posture`]: `bpgate check` and `bpgate diag`.
//!   [`audit::query`]: `bpgate audit tail|summary`, the reader of the trail. [`demo`]: `bpgate
//!   demo`, the gateway in front of two stand-in nodes in one process.
#![forbid(unsafe_code)]

pub mod admin;
pub mod audit;
pub mod base_path;
pub mod cluster;
pub mod config;
pub mod cors;
pub mod counters;
pub mod demo;
pub mod exchange;
pub mod generation;
pub mod headers;
pub mod metrics;
pub mod posture;
pub mod proxy;
pub mod reload;
pub mod server;
pub mod stack;
pub mod tls;

pub use server::{Gateway, Listeners};
