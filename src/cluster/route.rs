//! Node selection as a tower layer: choose a node, hide the sticky cookie from Botpress, forward,
//! retry once elsewhere when nothing reached the node, and pin the browser in the response.

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::header::{HeaderValue, COOKIE, SET_COOKIE};
use tower::{Layer, Service};

use super::{Cluster, Node, Snapshot, Sticky};
use crate::counters::status_class;
use crate::exchange::{self, BoxFut, Refusal, Req, Resp};
use crate::proxy::{ForwardError, Target};

/// Cookie name and attributes, rendered once.
#[derive(Debug, Clone)]
pub struct CookieSpec {
    pub name: String,
    /// `; Path=/; Max-Age=86400; HttpOnly; Secure; SameSite=None`
    pub attributes: String,
}

/// Passive ejection: `health.fall` consecutive connection failures take a node out, when
/// `health.enabled`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ejection {
    pub enabled: bool,
    pub fall: u32,
}

/// What the layer routes with: the policy, one generation's node set and its settings.
struct Routing {
    cluster: Arc<Cluster>,
    nodes: Arc<Snapshot>,
    cookie: CookieSpec,
    ejection: Ejection,
}

#[derive(Clone)]
pub struct RouteLayer(Arc<Routing>);

impl RouteLayer {
    pub fn new(
        cluster: Arc<Cluster>,
        nodes: Arc<Snapshot>,
        cookie: CookieSpec,
        ejection: Ejection,
    ) -> Self {
        RouteLayer(Arc::new(Routing {
            cluster,
            nodes,
            cookie,
            ejection,
        }))
    }
}

impl<S> Layer<S> for RouteLayer {
    type Service = Route<S>;
    fn layer(&self, inner: S) -> Route<S> {
        Route {
            inner,
            routing: self.0.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Route<S> {
    inner: S,
    routing: Arc<Routing>,
}

impl<S> Service<Req> for Route<S>
where
    S: Service<Req, Response = Resp, Error = ForwardError> + Clone + Send + 'static,
    S::Future: Send,
{
    type Response = Resp;
    type Error = Infallible;
    type Future = BoxFut;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut req: Req) -> BoxFut {
        let r = self.routing.clone();
        let mut inner = self.inner.clone();
        Box::pin(async move {
            let (cluster, snap, cookie) = (&r.cluster, &*r.nodes, &r.cookie);
            let x = exchange::exchange(&req).cloned();
            let id = x.as_ref().map(|x| x.id.clone());
            let client = x
                .as_ref()
                .map(|x| x.client_ip)
                .unwrap_or(std::net::IpAddr::from([0, 0, 0, 0]));
            let value = if cluster.sticky_enabled {
                take_cookie(&mut req, &cookie.name)
            } else {
                None
            };
            let Some(choice) = cluster.choose(snap, value.as_deref(), client) else {
                return Ok(Refusal::NoHealthyNode.response(id.as_ref()));
            };
            let (mut node, mut sticky, mut set_cookie) =
                (choice.node, choice.sticky, choice.set_cookie);
            req.extensions_mut().insert(Target(node.pool.clone()));
            let mut result = inner.call(req).await;
            if let Err(ForwardError::Connect { req, error }) = result {
                node.passive_failure(r.ejection.fall, r.ejection.enabled);
                snap.announce_panic();
                tracing::debug!(node = %node.name, %error, "node unreachable, retrying on another");
                match cluster.alternative(snap, &node) {
                    Some(alt) => {
                        let mut req = *req;
                        req.extensions_mut().insert(Target(alt.pool.clone()));
                        node = alt;
                        if cluster.sticky_enabled {
                            sticky = Sticky::Failover;
                            set_cookie = true;
                        }
                        result = inner.call(req).await;
                        if let Err(ForwardError::Connect { .. }) = &result {
                            node.passive_failure(r.ejection.fall, r.ejection.enabled);
                            snap.announce_panic();
                        }
                    }
                    None => result = Err(ForwardError::Connect { req, error }),
                }
            }
            if !matches!(result, Err(ForwardError::Connect { .. })) {
                node.passive_success();
            }
            let mut resp = match result {
                Ok(r) => r,
                // No node is known healthy (panic mode, or none checked yet) and the ones tried
                // could not be reached: the cluster is down after all.
                Err(ForwardError::Connect { .. }) if snap.tier() != super::Tier::Healthy => {
                    Refusal::NoHealthyNode.response(id.as_ref())
                }
                Err(e) => e.into_response(id.as_ref()),
            };
            node.status_counts[status_class(resp.status().as_u16())]
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            if cluster.sticky_enabled && set_cookie {
                pin(cluster, snap, &node, cookie, &mut resp);
            }
            cluster.count(&node, sticky);
            let n = exchange::note_mut(&mut resp);
            n.node = Some(node.name.clone());
            n.sticky = cluster.sticky_enabled.then(|| sticky.as_str());
            Ok(resp)
        })
    }
}

fn pin(cluster: &Cluster, snap: &Snapshot, node: &Node, cookie: &CookieSpec, resp: &mut Resp) {
    // A cookie only changes with its issue second: new visitors arriving in the same second
    // share one sealed value instead of paying an HMAC each.
    let now = super::unix_now();
    if let Some(c) = node.set_cookie.load().as_ref() {
        if c.0 == now {
            resp.headers_mut().append(SET_COOKIE, c.1.clone());
            return;
        }
    }
    if let Some(v) = cluster.cookie_value(snap, node) {
        let mut s =
            String::with_capacity(cookie.name.len() + v.len() + cookie.attributes.len() + 1);
        s.push_str(&cookie.name);
        s.push('=');
        s.push_str(&v);
        s.push_str(&cookie.attributes);
        if let Ok(hv) = HeaderValue::from_str(&s) {
            node.set_cookie.store(Some(Arc::new((now, hv.clone()))));
            resp.headers_mut().append(SET_COOKIE, hv);
        }
    }
}

/// Removes bpgate's cookie from the request's `Cookie` headers and returns its value.
pub fn take_cookie(req: &mut Req, name: &str) -> Option<String> {
    let headers = req.headers();
    if !headers
        .get_all(COOKIE)
        .iter()
        .any(|v| contains_cookie(v.as_bytes(), name))
    {
        return None;
    }
    let mut found = None;
    let mut kept: Vec<HeaderValue> = Vec::new();
    for v in headers.get_all(COOKIE) {
        let Ok(s) = v.to_str() else {
            kept.push(v.clone());
            continue;
        };
        let mut rest = String::with_capacity(s.len());
        for pair in s.split(';') {
            let p = pair.trim();
            match p.split_once('=') {
                Some((k, val)) if k.trim() == name => {
                    if found.is_none() {
                        found = Some(val.trim().trim_matches('"').to_string());
                    }
                }
                _ if p.is_empty() => {}
                _ => {
                    if !rest.is_empty() {
                        rest.push_str("; ");
                    }
                    rest.push_str(p);
                }
            }
        }
        if !rest.is_empty() {
            if let Ok(hv) = HeaderValue::from_str(&rest) {
                kept.push(hv);
            }
        }
    }
    let h = req.headers_mut();
    h.remove(COOKIE);
    for v in kept {
        h.append(COOKIE, v);
    }
    found
}

fn contains_cookie(v: &[u8], name: &str) -> bool {
    let n = name.as_bytes();
    v.windows(n.len() + 1)
        .any(|w| &w[..n.len()] == n && w[n.len()] == b'=')
}
