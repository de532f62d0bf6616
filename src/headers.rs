//! Response headers every HTTPS answer gets, whoever produced it (Botpress or bpgate): HSTS,
//! `nosniff`, a referrer policy and framing control. Set per response rather than inherited, so
//! no location can lose them (the NGINX `add_header` inheritance trap).
//!
//! Framing uses `Content-Security-Policy: frame-ancestors`, never `X-Frame-Options`: the webchat
//! (`/lite/*`, `/s/*`, `/assets/modules/channel-web/*`) is embedded in customers' pages, and
//! `X-Frame-Options: SAMEORIGIN` breaks that (botpress#11663). An `X-Frame-Options` from Botpress
//! on those paths is removed.

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::header::{
    HeaderName, HeaderValue, CONTENT_SECURITY_POLICY, REFERRER_POLICY, STRICT_TRANSPORT_SECURITY,
    X_CONTENT_TYPE_OPTIONS, X_FRAME_OPTIONS,
};
use tower::{Layer, Service};

use crate::exchange::{AfterResponse, PolicyFuture, Req, Resp};

static X_POWERED_BY: HeaderName = HeaderName::from_static("x-powered-by");

/// Header values, validated and built once.
#[derive(Debug, Default)]
pub struct SecurityHeaders {
    hsts: Option<HeaderValue>,
    nosniff: bool,
    referrer: Option<HeaderValue>,
    csp: Option<HeaderValue>,
    remove_powered_by: bool,
    /// Webchat paths (base path included) where framing must stay possible.
    webchat_prefixes: Vec<String>,
}

impl SecurityHeaders {
    /// Values that are not valid header values are left out; configuration validation has
    /// already refused them, so that only matters for hand-built configs.
    pub fn new(c: &crate::config::Headers, base_path: &str) -> Self {
        let value = |v: &str| -> Option<HeaderValue> {
            let v = v.trim();
            (!v.is_empty())
                .then(|| HeaderValue::from_str(v).ok())
                .flatten()
        };
        let csp = if c.frame_ancestors.is_empty() {
            None
        } else {
            value(&format!("frame-ancestors {}", c.frame_ancestors.join(" ")))
        };
        SecurityHeaders {
            hsts: value(&c.hsts),
            nosniff: c.nosniff,
            referrer: value(&c.referrer_policy),
            csp,
            remove_powered_by: c.remove_powered_by,
            webchat_prefixes: ["/lite/", "/s/", "/assets/modules/channel-web/"]
                .iter()
                .map(|p| format!("{base_path}{p}"))
                .collect(),
        }
    }

    fn is_webchat(&self, path: &str) -> bool {
        self.webchat_prefixes
            .iter()
            .any(|p| path.starts_with(p.as_str()))
    }

    fn apply(&self, webchat: bool, resp: &mut Resp) {
        let h = resp.headers_mut();
        if let Some(v) = &self.hsts {
            h.insert(STRICT_TRANSPORT_SECURITY, v.clone());
        }
        if self.nosniff {
            h.insert(X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
        }
        if let Some(v) = &self.referrer {
            h.insert(REFERRER_POLICY, v.clone());
        }
        if let Some(v) = &self.csp {
            if !h.contains_key(CONTENT_SECURITY_POLICY) {
                h.insert(CONTENT_SECURITY_POLICY, v.clone());
            }
        }
        if webchat {
            h.remove(X_FRAME_OPTIONS);
        }
        if self.remove_powered_by {
            h.remove(&X_POWERED_BY);
        }
    }
}

#[derive(Clone)]
pub struct SecurityHeadersLayer(Arc<SecurityHeaders>);

impl SecurityHeadersLayer {
    pub fn new(h: SecurityHeaders) -> Self {
        SecurityHeadersLayer(Arc::new(h))
    }
}

impl<S> Layer<S> for SecurityHeadersLayer {
    type Service = SecurityHeadersService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        SecurityHeadersService {
            inner,
            h: self.0.clone(),
        }
    }
}

#[derive(Clone)]
pub struct SecurityHeadersService<S> {
    inner: S,
    h: Arc<SecurityHeaders>,
}

impl<S> Service<Req> for SecurityHeadersService<S>
where
    S: Service<Req, Response = Resp, Error = Infallible>,
    S::Future: Unpin,
{
    type Response = Resp;
    type Error = Infallible;
    type Future = PolicyFuture<S::Future, ApplySecurityHeaders>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        let webchat = self.h.is_webchat(req.uri().path());
        let then = ApplySecurityHeaders(self.h.clone(), webchat);
        PolicyFuture::inner(self.inner.call(req), Some(then))
    }
}

/// What the security-headers layer does to the inner answer (`bool`: the path is the webchat's).
pub struct ApplySecurityHeaders(Arc<SecurityHeaders>, bool);

impl AfterResponse for ApplySecurityHeaders {
    fn after_response(self, resp: &mut Resp) {
        self.0.apply(self.1, resp);
    }
}
