//! The integration tests, one test crate (one link, one `support` build) with a module per area.
//! Every test starts bpgate in-process or as the binary on loopback, against real TLS, HTTP/1.1,
//! HTTP/2 and WebSocket clients and fake Botpress nodes from `support`.

mod support;

mod admin;
mod architecture;
mod audit;
mod audit_cli;
mod audit_durability;
mod cli;
mod cluster;
mod config_sources;
mod cors_base_path;
mod demo;
mod deploy;
mod edge;
mod gateway;
mod health;
mod identity;
mod lifecycle;
mod metrics;
mod operability;
mod posture;
mod reload;
mod retry;
mod routes;
mod sticky;
