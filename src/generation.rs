//! Configuration generations: the one place where configuration values become runtime values.
//!
//! A [`Generation`] holds everything requests and background tasks read from the configuration:
//! the pipeline, what the connection edge needs per request, the node set, pool and health
//! settings, the audit handle with its redaction list, and the serving certificate's details. It
//! is immutable and published as a whole (one `ArcSwap` in `reload`): a request loads it once at
//! the edge and runs on that snapshot to the end; a health-check round reads one too. What
//! outlives generations (node state, the audit writer, counters, the TLS resolver, the shutdown
//! signal) is [`Shared`].
//!
//! Adding a setting that a reload applies: read it here from `loaded` into the generation (and
//! list its section in `reload::Live`). Everything built here is rebuilt on every reload, so a
//! value read here cannot be reported as applied without being applied.

use std::sync::Arc;
use std::time::Instant;

use http::HeaderValue;
use tokio_util::sync::CancellationToken;

use crate::audit::{AuditContext, AuditSink, UserResolver};
use crate::base_path::BasePathPolicy;
use crate::cluster::{self, Cluster, CookieSpec, Ejection, HealthSettings, RouteLayer, Snapshot};
use crate::config::{BasePathMode, Loaded, SameSite};
use crate::cors::CorsPolicy;
use crate::counters::Counters;
use crate::headers::SecurityHeaders;
use crate::proxy::{
    Background, Forward, ForwardSettings, PoolSettings, RouteLimits, Routes, Trusted,
};
use crate::stack::{self, Layers, Stack};
use crate::tls::{CertInfo, ReloadableCert};

/// What outlives configuration generations, built once at start.
pub struct Shared {
    /// Every node's state, the sticky codec and its counters.
    pub cluster: Arc<Cluster>,
    /// The audit writer (`None` with `audit.enabled = false`). Generations carry their own handle
    /// with their redaction list; this one is for flushing, rotating and its counters.
    pub audit: Option<AuditSink>,
    /// How the audit trail recognises users: `audit.jwt_secret`, `jwt_source`, `external_auth`
    /// and the base path are restart-only, so it is built once.
    pub users: Arc<UserResolver>,
    /// Tunnels and the signal that ends them at the drain deadline.
    pub background: Background,
    pub counters: Arc<Counters>,
    /// The certificate new TLS handshakes get.
    pub cert: Arc<ReloadableCert>,
    /// Cancelled when shutdown begins: stop accepting, close idle connections.
    pub shutdown: CancellationToken,
    pub started: Instant,
}

/// What the connection edge reads per request.
#[derive(Debug, Clone)]
pub struct EdgeSettings {
    /// `forwarding.trusted_proxies`.
    pub trusted: Trusted,
    /// `[[routes]]` over `limits.max_body` and `upstream.response_timeout`: each request's
    /// limits.
    pub routes: Arc<Routes>,
}

/// One configuration generation. See the module docs.
#[derive(Clone)]
pub struct Generation {
    /// 1 at start, one more for every configuration or certificate reload that took effect.
    pub number: u64,
    /// When it was built, Unix milliseconds.
    pub loaded_at_ms: u64,
    /// The effective configuration (restart-only settings keep their values from the start).
    pub config: Arc<Loaded>,
    pub stack: Stack,
    pub edge: EdgeSettings,
    /// The nodes requests are routed to.
    pub nodes: Arc<Snapshot>,
    pub health: HealthSettings,
    /// This generation's audit handle (its redaction list); `None` when the audit is off.
    pub audit: Option<AuditSink>,
    /// The serving certificate.
    pub cert: Arc<CertInfo>,
}

impl Generation {
    /// Builds generation `number` from a validated configuration.
    pub fn build(number: u64, loaded: Loaded, cert: Arc<CertInfo>, shared: &Shared) -> Generation {
        let c = &loaded.config;
        let d = &loaded.derived;
        let audit = shared
            .audit
            .as_ref()
            .map(|s| s.with_redaction(&c.audit.redact_query));
        let nodes = shared.cluster.snapshot(&d.nodes, c.health.enabled);
        let health = health_settings(&loaded);
        let stack = stack::build(Layers {
            audit: AuditContext {
                sink: audit.clone(),
                users: shared.users.clone(),
                counters: shared.counters.clone(),
            },
            headers: SecurityHeaders::new(&c.headers, &d.base_path),
            cors: CorsPolicy::new(&c.cors, d.public_origin.as_deref()),
            base_path: BasePathPolicy {
                base: d.base_path.clone(),
                mode: c.base_path.mode,
                node_authorities: d.nodes.iter().map(|n| n.authority.clone()).collect(),
                public_origin: d.public_origin.clone(),
            },
            route: RouteLayer::new(
                shared.cluster.clone(),
                nodes.clone(),
                cookie_spec(&loaded),
                Ejection {
                    enabled: health.enabled,
                    fall: health.fall,
                },
            ),
            forward: Forward::new(forward_settings(&loaded), shared.background.clone()),
        });
        Generation {
            number,
            loaded_at_ms: cluster::unix_ms(),
            edge: EdgeSettings {
                trusted: Trusted(c.forwarding.trusted_proxies.clone()),
                routes: Arc::new(routes(&loaded)),
            },
            stack,
            nodes,
            health,
            audit,
            cert,
            config: Arc::new(loaded),
        }
    }

    /// The same generation serving another certificate (a certificate reload).
    pub fn with_cert(&self, number: u64, cert: Arc<CertInfo>) -> Generation {
        Generation {
            number,
            loaded_at_ms: cluster::unix_ms(),
            cert,
            ..self.clone()
        }
    }

    /// Serving, not draining, at least one node up, and the audit trail taking new work (not
    /// refusing requests with `on_failure = "block"`, not full).
    pub fn ready(&self, shared: &Shared) -> bool {
        !shared.shutdown.is_cancelled()
            && self.nodes.ready(self.health.enabled)
            && !shared.audit.as_ref().is_some_and(|a| a.blocked())
    }
}

/// The global limits: `limits.max_body` and `upstream.response_timeout`.
pub fn default_limits(loaded: &Loaded) -> RouteLimits {
    RouteLimits {
        max_body: loaded.config.limits.max_body.0,
        response_timeout: loaded.config.upstream.response_timeout,
    }
}

/// The route table in effect (built-in routes, `upstream.timeouts`, `[[routes]]`).
pub fn routes(loaded: &Loaded) -> Routes {
    Routes::new(
        &loaded.derived.base_path,
        default_limits(loaded),
        &loaded.derived.routes,
    )
}

/// The forwarding step's settings.
pub fn forward_settings(loaded: &Loaded) -> ForwardSettings {
    let c = &loaded.config;
    let d = &loaded.derived;
    ForwardSettings {
        public_port: d
            .public_origin
            .as_ref()
            .map(|_| HeaderValue::from(public_port(loaded, 0))),
        prefix: (!d.base_path.is_empty())
            .then(|| HeaderValue::from_str(&d.base_path).ok())
            .flatten(),
        default_limits: default_limits(loaded),
        tunnel_idle_timeout: c.upstream.tunnel_idle_timeout,
        pool: pool_settings(loaded),
    }
}

/// How the nodes' pools connect and keep connections.
pub fn pool_settings(loaded: &Loaded) -> PoolSettings {
    let u = &loaded.config.upstream;
    PoolSettings {
        connect_timeout: u.connect_timeout,
        idle_timeout: u.idle_timeout,
        max_idle: u.pool_max_idle,
    }
}

/// Active checks and passive ejection.
pub fn health_settings(loaded: &Loaded) -> HealthSettings {
    let h = &loaded.config.health;
    HealthSettings {
        enabled: h.enabled,
        // Under `strip` the upstream itself runs at the root: probe it there.
        path: match loaded.config.base_path.mode {
            BasePathMode::Strip => h.path.clone(),
            BasePathMode::Preserve => format!("{}{}", loaded.derived.base_path, h.path),
        },
        interval: h.interval,
        timeout: h.timeout,
        rise: h.rise,
        fall: h.fall,
    }
}

/// The port clients reach bpgate on: from `external_url`, else the HTTPS listener's (`bound`
/// when known, since tests and containers may bind port 0 or remap).
pub fn public_port(loaded: &Loaded, bound: u16) -> u16 {
    if let Some(o) = &loaded.derived.public_origin {
        if let Ok(u) = o.parse::<http::Uri>() {
            return u.port_u16().unwrap_or(if u.scheme_str() == Some("http") {
                80
            } else {
                443
            });
        }
    }
    if bound != 0 {
        bound
    } else {
        loaded.config.listen.https.port()
    }
}

/// The sticky cookie's `Path` (and the path its HMAC is bound to): the base path, or `/`.
pub fn cookie_path(loaded: &Loaded) -> &str {
    if loaded.derived.base_path.is_empty() {
        "/"
    } else {
        &loaded.derived.base_path
    }
}

/// The sticky cookie's attributes, rendered once.
pub fn cookie_spec(loaded: &Loaded) -> CookieSpec {
    let s = &loaded.config.sticky;
    let path = cookie_path(loaded);
    let mut a = format!("; Path={path}; Max-Age={}", s.max_age.as_secs());
    if let Some(d) = &s.domain {
        a.push_str("; Domain=");
        a.push_str(d);
    }
    if s.http_only {
        a.push_str("; HttpOnly");
    }
    if s.secure {
        a.push_str("; Secure");
    }
    a.push_str(match s.same_site {
        // Partitioned (CHIPS): browsers that block third-party cookies still keep this one
        // for the webchat iframe, in a jar of its own per embedding site.
        SameSite::None => "; SameSite=None; Partitioned",
        SameSite::Lax => "; SameSite=Lax",
        SameSite::Strict => "; SameSite=Strict",
    });
    CookieSpec {
        name: s.cookie_name.clone(),
        attributes: a,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn loaded(toml: &str) -> Loaded {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.toml");
        std::fs::write(&p, toml).unwrap();
        crate::config::load(&p, &|_| None, &Default::default()).unwrap()
    }

    /// The `Set-Cookie` attributes browsers get, exactly: a change here changes how every
    /// browser stores the pin.
    #[test]
    fn cookie_attributes() {
        let spec = cookie_spec(&loaded(""));
        assert_eq!(spec.name, "bpgate_node");
        assert_eq!(
            spec.attributes,
            "; Path=/; Max-Age=86400; HttpOnly; Secure; SameSite=None; Partitioned"
        );
        // Partitioned (CHIPS) only goes with SameSite=None; the path is the base path.
        let spec = cookie_spec(&loaded(
            "external_url = \"https://bot.example.com/botpress\"\n[sticky]\nsame_site = \"Lax\"\ndomain = \"example.com\"\nhttp_only = false\n",
        ));
        assert_eq!(
            spec.attributes,
            "; Path=/botpress; Max-Age=86400; Domain=example.com; Secure; SameSite=Lax"
        );
    }
}
