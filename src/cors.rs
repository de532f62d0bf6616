//! CORS: bpgate answers preflights itself and replaces whatever `Access-Control-*` headers
//! Botpress sends with its own, for allowed origins only. (Stub: filled in by the CORS work.)

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};

use tower::{Layer, Service};

use crate::exchange::{BoxFut, Req, Resp};

/// One entry of `cors.origins`: an exact origin or a `https://*.example.com` pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OriginPattern(String);

impl OriginPattern {
    pub fn parse(s: &str) -> Result<Self, String> {
        Ok(OriginPattern(s.to_string()))
    }
}

/// The CORS policy, built once from the config.
#[derive(Debug)]
pub struct CorsPolicy {
    pub enabled: bool,
}

impl CorsPolicy {
    pub fn new(c: &crate::config::Cors, _public_origin: Option<&str>) -> Self {
        CorsPolicy { enabled: c.enabled }
    }
}

#[derive(Clone)]
pub struct CorsLayer(Arc<CorsPolicy>);

impl CorsLayer {
    pub fn new(p: CorsPolicy) -> Self {
        CorsLayer(Arc::new(p))
    }
}

impl<S> Layer<S> for CorsLayer {
    type Service = Cors<S>;
    fn layer(&self, inner: S) -> Cors<S> {
        Cors {
            inner,
            policy: self.0.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Cors<S> {
    inner: S,
    #[allow(dead_code)]
    policy: Arc<CorsPolicy>,
}

impl<S> Service<Req> for Cors<S>
where
    S: Service<Req, Response = Resp, Error = Infallible, Future = BoxFut>,
{
    type Response = Resp;
    type Error = Infallible;
    type Future = BoxFut;
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }
    fn call(&mut self, req: Req) -> BoxFut {
        self.inner.call(req)
    }
}
