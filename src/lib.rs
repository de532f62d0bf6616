//! bpgate: a TLS-terminating reverse-proxy sidecar that puts a Botpress cluster into production
//! posture.
//!
//! A request flows through one pipeline you can point at:
//!
//! ```text
//! listener → TLS → connection (server) → audit → security headers → CORS → base path
//!          → node selection (cluster) → forward (proxy) → Botpress node
//! ```
//!
//! Layout, one module per concern:
//! - [`config`]: the typed configuration (TOML + environment + flags), validated once.
//! - [`tls`]: certificates, the development certificate, the rustls configuration.
//! - [`server`]: listeners, connections, graceful shutdown; [`server::Gateway`] is the entry.
//! - [`stack`]: assembles the tower layers below into the pipeline.
//! - [`audit`], [`headers`], [`cors`], [`base_path`]: the layers, outermost first.
//! - [`cluster`]: nodes, health checks, sticky cookie, node selection.
//! - [`proxy`]: forwarding headers, the connection pool, tunnels.
//! - [`exchange`]: the per-request record and body types the layers share.
//! - [`admin`]: the admin listener. [`posture`]: `bpgate check` and `bpgate diag`.
#![forbid(unsafe_code)]

pub mod admin;
pub mod audit;
pub mod base_path;
pub mod cluster;
pub mod config;
pub mod cors;
pub mod counters;
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
