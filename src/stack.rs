//! The request pipeline:
//!
//! ```text
//! audit → security headers → CORS → base path → node selection → forward → node
//! ```
//!
//! Each layer's policy is built once per configuration generation (by the `generation` module,
//! which turns configuration into these runtime values); this module only stacks them. A reload
//! builds a new stack and publishes it with its generation; requests in flight finish on the one
//! they started with.

use tower::ServiceBuilder;

use crate::audit::{Audit, AuditContext, AuditLayer};
use crate::base_path::{BasePath, BasePathLayer, BasePathPolicy};
use crate::cluster::{Route, RouteLayer};
use crate::cors::{Cors, CorsLayer, CorsPolicy};
use crate::headers::{SecurityHeaders, SecurityHeadersLayer, SecurityHeadersService};
use crate::proxy::Forward;

/// The assembled pipeline, outermost first.
pub type Stack = Audit<SecurityHeadersService<Cors<BasePath<Route<Forward>>>>>;

/// One policy per layer, outermost first.
pub struct Layers {
    pub audit: AuditContext,
    pub headers: SecurityHeaders,
    pub cors: CorsPolicy,
    pub base_path: BasePathPolicy,
    pub route: RouteLayer,
    pub forward: Forward,
}

/// Stacks the layers.
pub fn build(l: Layers) -> Stack {
    ServiceBuilder::new()
        .layer(AuditLayer::new(l.audit))
        .layer(SecurityHeadersLayer::new(l.headers))
        .layer(CorsLayer::new(l.cors))
        .layer(BasePathLayer::new(l.base_path))
        .layer(l.route)
        .service(l.forward)
}
