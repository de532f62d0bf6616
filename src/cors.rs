//! CORS: bpgate answers preflights itself and replaces whatever `Access-Control-*` headers
//! Botpress sends with its own, for allowed origins only.
//!
//! Botpress v12 answers CORS with `cors()` defaults when `httpServer.cors.enabled` is set, which
//! reflects any origin; that cannot be combined safely with cookie-mode JWTs (`jwtToken` +
//! `CSRF-Token`). So bpgate owns the whole CORS surface: preflights never reach Botpress, and
//! Botpress's own `Access-Control-*` headers are discarded on the way out.
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

use crate::exchange::{self, empty_response, error_response, ready, BoxFut, Req, Resp};

/// Request headers Botpress's own UIs send cross-origin; always allowed, whatever the config says,
/// because the admin UI and webchat break without them (botpress-facts §4, §10 #9).
const REQUIRED_HEADERS: [&str; 5] = [
    "Authorization",
    "Content-Type",
    "CSRF-Token",
    "X-BP-Workspace",
    "X-Requested-With",
];

/// One entry of `cors.origins`: an exact origin or a `https://*.example.com` pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OriginPattern(Pattern);

#[derive(Debug, Clone, PartialEq, Eq)]
enum Pattern {
    /// A serialised origin, lower-case, default port dropped (as browsers send it).
    Exact(String),
    /// `scheme://*` + `suffix`, where `suffix` is `.example.com[:port]`, lower-case.
    Wildcard { scheme_sep: String, suffix: String },
    /// The opaque origin `null` (sandboxed iframes, `file:`), only when listed literally.
    Null,
}

impl OriginPattern {
    pub fn parse(s: &str) -> Result<Self, String> {
        let s = s.trim();
        if s.eq_ignore_ascii_case("null") {
            return Ok(OriginPattern(Pattern::Null));
        }
        if s == "*" {
            return Err(
                "`*` alone is not allowed: list the origins (with credentials, browsers refuse `*` anyway)"
                    .into(),
            );
        }
        let Some((scheme, rest)) = s.split_once("://") else {
            return Err(format!(
                "`{s}` has no scheme: write it like https://app.example.com"
            ));
        };
        let scheme = scheme.to_ascii_lowercase();
        if scheme != "https" && scheme != "http" {
            return Err(format!("`{s}`: scheme must be https or http"));
        }
        if let Some(c) = rest.chars().find(|c| matches!(c, '/' | '?' | '#' | '@')) {
            return Err(format!(
                "`{s}` is not an origin: it has `{c}` (a path, query, fragment or credentials); an origin is scheme://host[:port] only"
            ));
        }
        let rest = rest.to_ascii_lowercase();
        let (host, port) = split_port(&rest).map_err(|p| format!("`{s}`: {p}"))?;
        let default_port = if scheme == "https" { 443 } else { 80 };
        let port_part = match port {
            Some(p) if p != default_port => format!(":{p}"),
            _ => String::new(),
        };
        let (wild, host) = match host.strip_prefix("*.") {
            Some(h) => (true, h),
            None => (false, host),
        };
        if host.contains('*') {
            return Err(format!(
                "`{s}`: a wildcard is only possible as the whole leftmost label, like https://*.example.com"
            ));
        }
        if !valid_host(host) {
            return Err(format!("`{s}`: `{host}` is not a valid host name"));
        }
        if wild {
            if !host.contains('.') || host.starts_with('[') {
                return Err(format!(
                    "`{s}`: the wildcard must be followed by a domain with at least two labels"
                ));
            }
            return Ok(OriginPattern(Pattern::Wildcard {
                scheme_sep: format!("{scheme}://"),
                suffix: format!(".{host}{port_part}"),
            }));
        }
        Ok(OriginPattern(Pattern::Exact(format!(
            "{scheme}://{host}{port_part}"
        ))))
    }

    /// Whether a request's `Origin` matches. Browsers serialise origins lower-case without the
    /// default port; comparison ignores ASCII case anyway, so a hand-written client is not
    /// refused for capitals.
    pub fn matches(&self, origin: &str) -> bool {
        match &self.0 {
            Pattern::Null => origin == "null",
            Pattern::Exact(e) => e.eq_ignore_ascii_case(origin),
            Pattern::Wildcard { scheme_sep, suffix } => {
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

/// Splits `host[:port]` (IPv6 in brackets) and checks the port.
fn split_port(a: &str) -> Result<(&str, Option<u16>), String> {
    let (host, port) = if a.starts_with('[') {
        match a.find(']') {
            Some(i) if i + 1 == a.len() => (a, None),
            Some(i) if a.as_bytes().get(i + 1) == Some(&b':') => (&a[..=i], Some(&a[i + 2..])),
            _ => return Err("malformed IPv6 address".into()),
        }
    } else {
        match a.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (a, None),
        }
    };
    let port = match port {
        None => None,
        Some(p) => match p.parse::<u16>() {
            Ok(n) if n > 0 && p.bytes().all(|b| b.is_ascii_digit()) => Some(n),
            _ => return Err(format!("port `{p}` is not a number between 1 and 65535")),
        },
    };
    if host.is_empty() {
        return Err("no host".into());
    }
    Ok((host, port))
}

fn valid_host(h: &str) -> bool {
    if let Some(v6) = h.strip_prefix('[').and_then(|r| r.strip_suffix(']')) {
        return v6.parse::<std::net::Ipv6Addr>().is_ok();
    }
    !h.is_empty()
        && h.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
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
    /// Lower-case header names.
    allow_headers: Vec<String>,
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
        let mut names: Vec<String> = Vec::new();
        for h in c
            .allow_headers
            .iter()
            .map(|h| h.trim())
            .chain(REQUIRED_HEADERS.iter().copied())
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
            allow_headers: names.iter().map(|n| n.to_ascii_lowercase()).collect(),
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

    /// Every name in `Access-Control-Request-Headers` must be allowed (ASCII case ignored).
    fn headers_allowed(&self, h: &HeaderMap) -> bool {
        h.get_all(ACCESS_CONTROL_REQUEST_HEADERS).iter().all(|v| {
            v.to_str().is_ok_and(|s| {
                s.split(',')
                    .map(str::trim)
                    .filter(|n| !n.is_empty())
                    .all(|n| self.allow_headers.iter().any(|a| a.eq_ignore_ascii_case(n)))
            })
        })
    }

    fn preflight(&self, req: &Req, origin: &HeaderValue, id: Option<&HeaderValue>) -> Resp {
        let ok = origin.to_str().is_ok_and(|o| self.origin_allowed(o))
            && req
                .headers()
                .get(ACCESS_CONTROL_REQUEST_METHOD)
                .is_some_and(|m| self.method_allowed(m.as_bytes()))
            && self.headers_allowed(req.headers());
        if !ok {
            return error_response(
                StatusCode::FORBIDDEN,
                "CORS preflight refused",
                "rejected",
                id,
            );
        }
        let mut r = empty_response(StatusCode::NO_CONTENT);
        let h = r.headers_mut();
        h.insert(ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
        if let Some(v) = &self.allow_methods_value {
            h.insert(ACCESS_CONTROL_ALLOW_METHODS, v.clone());
        }
        if let Some(v) = &self.allow_headers_value {
            h.insert(ACCESS_CONTROL_ALLOW_HEADERS, v.clone());
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
    S: Service<Req, Response = Resp, Error = Infallible, Future = BoxFut>,
{
    type Response = Resp;
    type Error = Infallible;
    type Future = BoxFut;
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }
    fn call(&mut self, req: Req) -> BoxFut {
        let p = &self.policy;
        if !p.enabled {
            return self.inner.call(req);
        }
        let origin = req.headers().get(ORIGIN).cloned();
        let id = exchange::exchange(&req).map(|x| x.id.clone());
        if let Some(o) = &origin {
            if req.method() == Method::OPTIONS
                && req.headers().contains_key(ACCESS_CONTROL_REQUEST_METHOD)
            {
                return ready(p.preflight(&req, o, id.as_ref()));
            }
        }
        let allowed = match &origin {
            None => None,
            Some(o) => {
                let text = o.to_str().ok();
                if text.is_some_and(|t| p.origin_allowed(t)) {
                    Some(o.clone())
                } else if p.reject_disallowed && !text.is_some_and(|t| same_origin(&req, t)) {
                    return ready(error_response(
                        StatusCode::FORBIDDEN,
                        "origin not allowed",
                        "rejected",
                        id.as_ref(),
                    ));
                } else {
                    None
                }
            }
        };
        let policy = p.clone();
        let fut = self.inner.call(req);
        Box::pin(async move {
            let mut resp = fut.await?;
            policy.apply(allowed.as_ref(), &mut resp);
            Ok(resp)
        })
    }
}

#[cfg(test)]
mod tests;
