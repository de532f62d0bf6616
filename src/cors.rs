//! CORS: bpgate answers preflights itself and replaces whatever `Access-Control-*` headers
//! Botpress sends with its own, for allowed origins only.
//!
//! Botpress v12 answers CORS with `cors()` defaults when `httpServer.cors.enabled` is set, which
//! reflects any origin; that cannot be combined safely with cookie-mode JWTs (`jwtToken` +
//! `CSRF-Token`). So bpgate owns the whole CORS surface: preflights never reach Botpress, and
//! Botpress's own `Access-Control-*` headers are discarded on the way out.
//!
//! Which request headers a preflight may ask for is, by default, whatever the allowed origin asks
//! for (`cors.allow_headers = "reflect"`): the origin is the security boundary, and Botpress's
//! own `cors()` reflects them too, so channel-web and messaging clients that send
//! `ExternalAuth`, `X-BP-ExternalAuth` or `x-bp-messaging-*` work. A list pins them instead.
//!
//! Every answer whose content depends on `Origin` says so in `Vary` (refusals included), so a
//! shared cache never replays one origin's answer to another.
//!
//! Wildcard patterns (`https://*.example.com`) match exactly one extra DNS label:
//! `https://a.example.com` matches, `https://a.b.example.com` does not. A deeper tree must be
//! listed explicitly (`https://*.b.example.com`), so one pattern never grants more than the
//! operator can see in the config.

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::header::{
    HeaderName, HeaderValue, ACCESS_CONTROL_ALLOW_CREDENTIALS, ACCESS_CONTROL_ALLOW_HEADERS,
    ACCESS_CONTROL_ALLOW_METHODS, ACCESS_CONTROL_ALLOW_ORIGIN, ACCESS_CONTROL_EXPOSE_HEADERS,
    ACCESS_CONTROL_MAX_AGE, ACCESS_CONTROL_REQUEST_HEADERS, ACCESS_CONTROL_REQUEST_METHOD, HOST,
    ORIGIN, VARY,
};
use http::{HeaderMap, Method, StatusCode};
use tower::{Layer, Service};

use crate::config::{AllowHeaders, OriginSpec};
use crate::exchange::{self, empty_response, AfterResponse, PolicyFuture, Refusal, Req, Resp};

/// Request headers Botpress's own UIs send cross-origin; always allowed with a pinned
/// `cors.allow_headers` list, because the admin UI and webchat break without them
/// (botpress-facts §4, §10 #9).
const REQUIRED_HEADERS: [&str; 5] = [
    "Authorization",
    "Content-Type",
    "CSRF-Token",
    "X-BP-Workspace",
    "X-Requested-With",
];

/// One entry of `cors.origins` as a matcher. The grammar (what an entry may look like) is the
/// configuration's: [`OriginSpec`] parses and normalises it at load time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OriginPattern(OriginSpec);

impl From<OriginSpec> for OriginPattern {
    fn from(s: OriginSpec) -> Self {
        OriginPattern(s)
    }
}

impl OriginPattern {
    pub fn parse(s: &str) -> Result<Self, String> {
        OriginSpec::parse(s).map(OriginPattern)
    }

    /// Whether a request's `Origin` matches. Browsers serialise origins lower-case without the
    /// default port; comparison ignores ASCII case anyway, so a hand-written client is not
    /// refused for capitals.
    pub fn matches(&self, origin: &str) -> bool {
        match &self.0 {
            OriginSpec::Null => origin == "null",
            OriginSpec::Exact(e) => e.eq_ignore_ascii_case(origin),
            OriginSpec::Wildcard { scheme_sep, suffix } => {
                let o = origin.as_bytes();
                if o.len() <= scheme_sep.len() + suffix.len()
                    || !o[..scheme_sep.len()].eq_ignore_ascii_case(scheme_sep.as_bytes())
                    || !o[o.len() - suffix.len()..].eq_ignore_ascii_case(suffix.as_bytes())
                {
                    return false;
                }
                // Exactly one DNS label in place of the `*`.
                let label = &o[scheme_sep.len()..o.len() - suffix.len()];
                label.len() <= 63
                    && label.first() != Some(&b'-')
                    && label.last() != Some(&b'-')
                    && label
                        .iter()
                        .all(|b| b.is_ascii_alphanumeric() || *b == b'-')
            }
        }
    }
}

/// The CORS policy, built once from the config; every header value is rendered here.
#[derive(Debug)]
pub struct CorsPolicy {
    pub enabled: bool,
    patterns: Vec<OriginPattern>,
    public_origin: Option<String>,
    credentials: bool,
    /// Upper-case method names, compared exactly (methods are case-sensitive in HTTP).
    methods: Vec<Method>,
    /// Lower-case header names; `None`: reflect what the preflight asks for.
    allow_headers: Option<Vec<String>>,
    reject_disallowed: bool,
    allow_methods_value: Option<HeaderValue>,
    allow_headers_value: Option<HeaderValue>,
    expose_headers_value: Option<HeaderValue>,
    max_age_value: HeaderValue,
}

static VARY_PREFLIGHT: HeaderValue = HeaderValue::from_static(
    "Origin, Access-Control-Request-Method, Access-Control-Request-Headers",
);
static TRUE: HeaderValue = HeaderValue::from_static("true");

impl CorsPolicy {
    /// Entries of `c.origins` that do not parse are skipped: config validation has already
    /// refused them, so this only matters for hand-built configs in tests.
    pub fn new(c: &crate::config::Cors, public_origin: Option<&str>) -> Self {
        let patterns = c
            .origins
            .iter()
            .filter_map(|o| OriginPattern::parse(o).ok())
            .collect();
        let mut methods: Vec<Method> = Vec::new();
        for m in &c.methods {
            if let Ok(m) = Method::from_bytes(m.trim().to_ascii_uppercase().as_bytes()) {
                if !methods.contains(&m) {
                    methods.push(m);
                }
            }
        }
        // Configured names keep their spelling in the answer; required ones are added if absent.
        let pinned = match &c.allow_headers {
            AllowHeaders::Reflect => None,
            AllowHeaders::List(l) => Some(l),
        };
        let mut names: Vec<String> = Vec::new();
        for h in pinned
            .iter()
            .flat_map(|l| l.iter())
            .map(|h| h.trim())
            .chain(
                REQUIRED_HEADERS
                    .iter()
                    .copied()
                    .filter(|_| pinned.is_some()),
            )
        {
            if HeaderName::from_bytes(h.as_bytes()).is_ok()
                && !names.iter().any(|n| n.eq_ignore_ascii_case(h))
            {
                names.push(h.to_string());
            }
        }
        let expose: Vec<&str> = c
            .expose_headers
            .iter()
            .map(|h| h.trim())
            .filter(|h| HeaderName::from_bytes(h.as_bytes()).is_ok())
            .collect();
        let join = |v: &[&str]| {
            (!v.is_empty())
                .then(|| HeaderValue::from_str(&v.join(", ")).ok())
                .flatten()
        };
        let method_names: Vec<&str> = methods.iter().map(Method::as_str).collect();
        let header_names: Vec<&str> = names.iter().map(String::as_str).collect();
        CorsPolicy {
            enabled: c.enabled,
            patterns,
            public_origin: public_origin.map(str::to_ascii_lowercase),
            credentials: c.credentials,
            allow_methods_value: join(&method_names),
            allow_headers_value: join(&header_names),
            expose_headers_value: join(&expose),
            max_age_value: HeaderValue::from(c.max_age.as_secs()),
            methods,
            allow_headers: pinned.map(|_| names.iter().map(|n| n.to_ascii_lowercase()).collect()),
            reject_disallowed: c.reject_disallowed,
        }
    }

    /// Whether `origin` is the public origin or matches `cors.origins`.
    pub fn origin_allowed(&self, origin: &str) -> bool {
        self.public_origin
            .as_deref()
            .is_some_and(|p| p.eq_ignore_ascii_case(origin))
            || self.patterns.iter().any(|p| p.matches(origin))
    }

    fn method_allowed(&self, m: &[u8]) -> bool {
        self.methods.iter().any(|x| x.as_str().as_bytes() == m)
    }

    /// Whether the headers a preflight asks for are allowed, and what to answer in
    /// `Access-Control-Allow-Headers`. `Err`: refuse. Every name must be a header name; with a
    /// pinned list each must be on it (ASCII case ignored), and the answer is the list; when
    /// reflecting, the answer is the names asked for.
    fn allow_headers_for(&self, h: &HeaderMap) -> Result<Option<HeaderValue>, ()> {
        let mut asked: Vec<&str> = Vec::new();
        for v in h.get_all(ACCESS_CONTROL_REQUEST_HEADERS) {
            let s = v.to_str().map_err(|_| ())?;
            for n in s.split(',').map(str::trim).filter(|n| !n.is_empty()) {
                if HeaderName::from_bytes(n.as_bytes()).is_err() {
                    return Err(());
                }
                asked.push(n);
            }
        }
        match &self.allow_headers {
            Some(list) => {
                if asked
                    .iter()
                    .all(|n| list.iter().any(|a| a.eq_ignore_ascii_case(n)))
                {
                    Ok(self.allow_headers_value.clone())
                } else {
                    Err(())
                }
            }
            None if asked.is_empty() => Ok(None),
            // Names are tokens (checked above), so the joined value is a valid header value.
            None => HeaderValue::from_str(&asked.join(", "))
                .map(Some)
                .map_err(|_| ()),
        }
    }

    fn preflight(&self, req: &Req, origin: &HeaderValue, id: Option<&HeaderValue>) -> Resp {
        let ok = origin.to_str().is_ok_and(|o| self.origin_allowed(o))
            && req
                .headers()
                .get(ACCESS_CONTROL_REQUEST_METHOD)
                .is_some_and(|m| self.method_allowed(m.as_bytes()));
        let headers = if ok {
            self.allow_headers_for(req.headers())
        } else {
            Err(())
        };
        let Ok(allow_headers) = headers else {
            // The refusal depends on the origin, the method and the headers asked for, too.
            let mut r = Refusal::PreflightRefused.response(id);
            r.headers_mut().insert(VARY, VARY_PREFLIGHT.clone());
            return r;
        };
        let mut r = empty_response(StatusCode::NO_CONTENT);
        let h = r.headers_mut();
        h.insert(ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
        if let Some(v) = &self.allow_methods_value {
            h.insert(ACCESS_CONTROL_ALLOW_METHODS, v.clone());
        }
        if let Some(v) = allow_headers {
            h.insert(ACCESS_CONTROL_ALLOW_HEADERS, v);
        }
        if self.credentials {
            h.insert(ACCESS_CONTROL_ALLOW_CREDENTIALS, TRUE.clone());
        }
        h.insert(ACCESS_CONTROL_MAX_AGE, self.max_age_value.clone());
        h.insert(VARY, VARY_PREFLIGHT.clone());
        r
    }

    /// Replaces Botpress's `Access-Control-*` headers with bpgate's. `allowed` is the origin to
    /// echo, if the request had an allowed one.
    fn apply(&self, allowed: Option<&HeaderValue>, resp: &mut Resp) {
        let h = resp.headers_mut();
        let upstream: Vec<HeaderName> = h
            .keys()
            .filter(|k| k.as_str().starts_with("access-control-"))
            .cloned()
            .collect();
        for k in upstream {
            h.remove(k);
        }
        if let Some(origin) = allowed {
            h.insert(ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
            if self.credentials {
                h.insert(ACCESS_CONTROL_ALLOW_CREDENTIALS, TRUE.clone());
            }
            if let Some(v) = &self.expose_headers_value {
                h.insert(ACCESS_CONTROL_EXPOSE_HEADERS, v.clone());
            }
        }
        add_vary_origin(h);
    }
}

/// Adds `Origin` to `Vary` without dropping what is there: caches must key on it whether or not
/// this answer carried CORS headers, or they replay one origin's answer to another.
fn add_vary_origin(h: &mut HeaderMap) {
    let mut existing = Vec::new();
    for v in h.get_all(VARY) {
        let Ok(s) = v.to_str() else {
            // An unreadable Vary is kept and ours added next to it.
            h.append(VARY, HeaderValue::from_static("Origin"));
            return;
        };
        if s.split(',')
            .map(str::trim)
            .any(|t| t == "*" || t.eq_ignore_ascii_case("origin"))
        {
            return;
        }
        existing.push(s.trim().to_string());
    }
    existing.retain(|s| !s.is_empty());
    if existing.is_empty() {
        h.insert(VARY, HeaderValue::from_static("Origin"));
        return;
    }
    existing.push("Origin".into());
    match HeaderValue::from_str(&existing.join(", ")) {
        Ok(v) => {
            h.insert(VARY, v);
        }
        Err(_) => {
            h.append(VARY, HeaderValue::from_static("Origin"));
        }
    }
}

/// Same-origin by the request's own host: the browser sets both, a page cannot forge either.
fn same_origin(req: &Req, origin: &str) -> bool {
    let host = req
        .headers()
        .get(HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| req.uri().authority().map(|a| a.as_str()));
    match (host, origin.get(..8)) {
        (Some(host), Some(scheme)) if scheme.eq_ignore_ascii_case("https://") => {
            origin[8..].eq_ignore_ascii_case(host)
        }
        _ => false,
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
    policy: Arc<CorsPolicy>,
}

impl<S> Service<Req> for Cors<S>
where
    S: Service<Req, Response = Resp, Error = Infallible>,
    S::Future: Unpin,
{
    type Response = Resp;
    type Error = Infallible;
    type Future = PolicyFuture<S::Future, ApplyCors>;
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }
    fn call(&mut self, req: Req) -> Self::Future {
        let p = &self.policy;
        if !p.enabled {
            return PolicyFuture::inner(self.inner.call(req), None);
        }
        let id = || exchange::exchange(&req).map(|x| x.id.clone());
        let origin = req.headers().get(ORIGIN);
        if let Some(o) = origin {
            if req.method() == Method::OPTIONS
                && req.headers().contains_key(ACCESS_CONTROL_REQUEST_METHOD)
            {
                return PolicyFuture::answer(p.preflight(&req, o, id().as_ref()));
            }
        }
        let allowed = match origin {
            None => None,
            Some(o) => {
                let text = o.to_str().ok();
                if text.is_some_and(|t| p.origin_allowed(t)) {
                    Some(o.clone())
                } else if p.reject_disallowed && !text.is_some_and(|t| same_origin(&req, t)) {
                    let mut r = Refusal::OriginNotAllowed.response(id().as_ref());
                    add_vary_origin(r.headers_mut());
                    return PolicyFuture::answer(r);
                } else {
                    None
                }
            }
        };
        PolicyFuture::inner(self.inner.call(req), Some(ApplyCors(p.clone(), allowed)))
    }
}

/// What the CORS layer does to the inner answer: bpgate's CORS headers, for the origin to echo
/// (`None`: the request's origin is not allowed, or there was none).
pub struct ApplyCors(Arc<CorsPolicy>, Option<HeaderValue>);

impl AfterResponse for ApplyCors {
    fn after_response(self, resp: &mut Resp) {
        self.0.apply(self.1.as_ref(), resp);
    }
}

#[cfg(test)]
mod tests;
