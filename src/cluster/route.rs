//! Node selection as a tower layer: choose a node, hide the sticky cookie from Botpress, forward,
//! retry once elsewhere when nothing reached the node, and pin the browser in the response.

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::header::{HeaderValue, CONTENT_ENCODING, COOKIE, SET_COOKIE};
use http::{Method, StatusCode};
use tower::{Layer, Service};

use super::sid::{self, EngineIo, Learner};
use super::{Cluster, Node, Snapshot, Sticky};
use crate::counters::status_class;
use crate::exchange::{self, BoxFut, Refusal, Req, Resp, RespBody};
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
            // engine.io: a handshake whose answer names a session, or a session's request.
            let (handshake, session) = if cluster.sids.enabled() {
                match sid::classify(req.uri().path(), req.uri().query()) {
                    EngineIo::Handshake => (req.method() == Method::GET, None),
                    EngineIo::Session(s) => (false, Some(s.to_string())),
                    EngineIo::No => (false, None),
                }
            } else {
                (false, None)
            };
            let Some(choice) = cluster.choose(snap, value.as_deref(), session.as_deref(), client)
            else {
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
            if handshake {
                learn_session(cluster, &node, &mut resp);
            } else if let Some(s) = &session {
                // engine.io answers 400 "Session ID unknown" to a session it does not hold
                // (bpgate's own 400s, a body cut off say, say nothing about the session).
                let from_node = resp
                    .extensions()
                    .get::<exchange::Note>()
                    .is_none_or(|n| n.outcome.is_none());
                if resp.status() == StatusCode::BAD_REQUEST && from_node {
                    cluster.sids.forget(s, &node.name);
                }
            }
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

/// Lets the handshake answer stream past a [`Learner`], which records the session it opens.
fn learn_session(cluster: &Cluster, node: &Node, resp: &mut Resp) {
    if resp.status() != StatusCode::OK {
        return;
    }
    let encoded = resp
        .headers()
        .get(CONTENT_ENCODING)
        .is_some_and(|v| !v.as_bytes().eq_ignore_ascii_case(b"identity"));
    if encoded {
        // A compressed open packet cannot be read without inflating it; engine.io compresses
        // only above 1 KiB, which an open packet never is.
        cluster
            .sids
            .stats
            .unparsed
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        return;
    }
    if let RespBody::Upstream(b) = resp.body_mut() {
        b.observe(Box::new(Learner::new(
            cluster.sids.clone(),
            node.name.clone(),
        )));
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

/// Removes bpgate's cookie from the request's `Cookie` headers and returns its value. Works on
/// bytes: a header with a byte that is not UTF-8 (obs-text, or garbage) must still lose the pair
/// before it reaches Botpress; the other pairs are kept byte for byte.
pub fn take_cookie(req: &mut Req, name: &str) -> Option<String> {
    let headers = req.headers();
    if !headers
        .get_all(COOKIE)
        .iter()
        .any(|v| contains_cookie(v.as_bytes(), name))
    {
        return None;
    }
    let name = name.as_bytes();
    let mut found = None;
    let mut kept: Vec<HeaderValue> = Vec::new();
    for v in headers.get_all(COOKIE) {
        let mut rest: Vec<u8> = Vec::with_capacity(v.len());
        for pair in v.as_bytes().split(|b| *b == b';') {
            let p = pair.trim_ascii();
            match p.iter().position(|b| *b == b'=') {
                Some(eq) if p[..eq].trim_ascii() == name => {
                    if found.is_none() {
                        let val = p[eq + 1..].trim_ascii();
                        let val = val
                            .strip_prefix(b"\"")
                            .and_then(|v| v.strip_suffix(b"\""))
                            .unwrap_or(val);
                        found = Some(String::from_utf8_lossy(val).into_owned());
                    }
                }
                _ if p.is_empty() => {}
                _ => {
                    if !rest.is_empty() {
                        rest.extend_from_slice(b"; ");
                    }
                    rest.extend_from_slice(p);
                }
            }
        }
        if !rest.is_empty() {
            // Every byte came from a valid header value, minus separators: still valid.
            if let Ok(hv) = HeaderValue::from_bytes(&rest) {
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
