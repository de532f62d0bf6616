//! The base path: requests outside it never reach Botpress; in `strip` mode the prefix is removed
//! on the way in and put back on redirects and cookies on the way out. (Stub.)

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};

use tower::{Layer, Service};

use crate::config::BasePathMode;
use crate::exchange::{BoxFut, Req, Resp};

#[derive(Debug)]
pub struct BasePathPolicy {
    pub base: String,
    pub mode: BasePathMode,
    /// `host:port` of every node, for rewriting `Location` headers that point at a node.
    pub node_authorities: Vec<String>,
    pub public_origin: Option<String>,
}

#[derive(Clone)]
pub struct BasePathLayer(Arc<BasePathPolicy>);

impl BasePathLayer {
    pub fn new(p: BasePathPolicy) -> Self {
        BasePathLayer(Arc::new(p))
    }
}

impl<S> Layer<S> for BasePathLayer {
    type Service = BasePath<S>;
    fn layer(&self, inner: S) -> BasePath<S> {
        BasePath {
            inner,
            policy: self.0.clone(),
        }
    }
}

#[derive(Clone)]
pub struct BasePath<S> {
    inner: S,
    #[allow(dead_code)]
    policy: Arc<BasePathPolicy>,
}

impl<S> Service<Req> for BasePath<S>
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
