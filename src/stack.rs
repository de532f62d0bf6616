//! The request pipeline, assembled from the configuration:
//!
//! ```text
//! audit → security headers → CORS → base path → node selection → forward → node
//! ```
//!
//! Everything a request needs is computed here once; a reload builds a new stack and swaps it in
//! for new requests while requests in flight finish on the old one.

use std::sync::Arc;

use http::HeaderValue;
use tower::ServiceBuilder;

use crate::audit::{Audit, AuditContext, AuditLayer, AuditSink, UserResolver};
use crate::base_path::{BasePath, BasePathLayer, BasePathPolicy};
use crate::cluster::{Cluster, CookieSpec, Route, RouteLayer};
use crate::config::{Loaded, SameSite};
use crate::cors::{Cors, CorsLayer, CorsPolicy};
use crate::headers::{SecurityHeaders, SecurityHeadersLayer, SecurityHeadersService};
use crate::proxy::{Background, Forward, ForwardSettings};

/// The assembled pipeline, outermost first.
pub type Stack = Audit<SecurityHeadersService<Cors<BasePath<Route<Forward>>>>>;

/// Builds the pipeline for `loaded` around an existing cluster and audit sink.
pub fn build(
    loaded: &Loaded,
    cluster: Arc<Cluster>,
    audit: Option<AuditSink>,
    background: Background,
    metrics: Arc<crate::metrics::RequestMetrics>,
) -> Result<Stack, String> {
    let c = &loaded.config;
    let d = &loaded.derived;
    let headers = SecurityHeaders::new(&c.headers, &d.base_path)?;
    let forward = Forward::new(forward_settings(loaded), background);
    let cors = CorsPolicy::new(&c.cors, d.public_origin.as_deref());
    let base = BasePathPolicy {
        base: d.base_path.clone(),
        mode: c.base_path.mode,
        node_authorities: d.nodes.iter().map(|n| n.authority.clone()).collect(),
        public_origin: d.public_origin.clone(),
    };
    let audit = AuditContext {
        sink: audit,
        users: UserResolver::new(Some(c.audit.jwt_secret.expose())),
        metrics,
    };
    Ok(ServiceBuilder::new()
        .layer(AuditLayer::new(audit))
        .layer(SecurityHeadersLayer::new(headers))
        .layer(CorsLayer::new(cors))
        .layer(BasePathLayer::new(base))
        .layer(RouteLayer::new(cluster, cookie_spec(loaded)))
        .service(forward))
}

pub fn forward_settings(loaded: &Loaded) -> ForwardSettings {
    let c = &loaded.config;
    let d = &loaded.derived;
    let mut prefix_timeouts: Vec<(String, std::time::Duration)> = c
        .upstream
        .timeouts
        .iter()
        .map(|t| (t.prefix.clone(), t.response_timeout))
        .collect();
    prefix_timeouts.sort_by_key(|t| std::cmp::Reverse(t.0.len()));
    ForwardSettings {
        public_port: loaded
            .derived
            .public_origin
            .as_ref()
            .map(|_| HeaderValue::from(public_port(loaded, 0))),
        prefix: (!d.base_path.is_empty())
            .then(|| HeaderValue::from_str(&d.base_path).ok())
            .flatten(),
        base_path: d.base_path.clone(),
        response_timeout: c.upstream.response_timeout,
        prefix_timeouts,
        tunnel_idle_timeout: c.upstream.tunnel_idle_timeout,
        max_body: c.limits.max_body.0,
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
        SameSite::None => "; SameSite=None",
        SameSite::Lax => "; SameSite=Lax",
        SameSite::Strict => "; SameSite=Strict",
    });
    CookieSpec {
        name: s.cookie_name.clone(),
        attributes: a,
    }
}
