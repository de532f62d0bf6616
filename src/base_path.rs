//! The base path: requests outside it never reach Botpress; in `strip` mode the prefix is removed
//! on the way in and put back on redirects and cookies on the way out.
//!
//! Which side of the prefix a request falls on is decided on the path with dot segments resolved.
//! Encodings that would make another parser (Botpress's, a browser's, a WAF's) see a different
//! prefix than we do are refused with `400`; everything else outside the prefix gets `404`,
//! including `/botpress/../admin` (it is simply a path outside). Inside the prefix the original
//! bytes are forwarded, so `%2F` in Botpress routes (`flow/skills%2F…`, botpress#2265) survives.
//!
//! `GET`/`HEAD` of `/` and of the bare prefix redirect with `302` to `<base>/`: a temporary
//! redirect is not cached for good by browsers, so moving Botpress to another base path (or to the
//! root) later does not leave users stuck on a remembered redirect; only safe methods are
//! redirected, so `308`'s method preservation buys nothing. Botpress's own `/` → `/admin` is a
//! `302` too.

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::header::{HeaderName, CONTENT_LOCATION, LOCATION, REFRESH, SET_COOKIE};
use http::uri::PathAndQuery;
use http::{HeaderValue, Method, StatusCode, Uri};
use percent_encoding::percent_decode;
use tower::{Layer, Service};

use crate::config::BasePathMode;
use crate::exchange::{
    self, empty_response, note_mut, AfterResponse, Outcome, PolicyFuture, Refusal, Req, Resp,
};

#[derive(Debug)]
pub struct BasePathPolicy {
    pub base: String,
    pub mode: BasePathMode,
    /// `host:port` of every node, for rewriting `Location` headers that point at a node.
    pub node_authorities: Vec<String>,
    pub public_origin: Option<String>,
}

/// The policy with everything a request needs precomputed.
#[derive(Debug)]
pub struct Compiled {
    base: String,
    strip: bool,
    /// Lower-case node authorities; `host` is added for `host:80` since a node on port 80 may
    /// leave the port out of its redirects.
    nodes: Vec<String>,
    public_origin: Option<String>,
    /// `<base>/`, the target of the root redirects.
    home: HeaderValue,
}

impl Compiled {
    fn new(p: BasePathPolicy) -> Self {
        let mut nodes = Vec::new();
        for a in &p.node_authorities {
            let a = a.to_ascii_lowercase();
            if let Some(h) = a.strip_suffix(":80") {
                nodes.push(h.to_string());
            }
            nodes.push(a);
        }
        let base = p.base.trim_end_matches('/').to_string();
        let home = HeaderValue::from_str(&format!("{base}/"))
            .unwrap_or_else(|_| HeaderValue::from_static("/"));
        Compiled {
            strip: p.mode == BasePathMode::Strip && !base.is_empty(),
            base,
            nodes,
            public_origin: p.public_origin.map(|o| o.trim_end_matches('/').to_string()),
            home,
        }
    }

    /// Whether responses may need rewriting at all.
    fn rewrites(&self) -> bool {
        self.strip || !self.nodes.is_empty()
    }

    /// Puts the prefix in front of an origin-relative path (`/x`, or empty meaning `/`).
    fn under_base(&self, path: &str) -> String {
        if path.starts_with('/') {
            format!("{}{path}", self.base)
        } else {
            format!("{}/{path}", self.base)
        }
    }

    /// Rewrites a `Location`-like URL: a node's own address becomes the public origin (or a
    /// relative path), and in `strip` mode paths Botpress believes are at the root go back under
    /// the prefix, like NGINX's `proxy_redirect`. `None`: leave the value as it is.
    fn rewrite_url(&self, v: &str) -> Option<String> {
        let scheme_len = if starts_with_ci(v, "http://") {
            7
        } else if starts_with_ci(v, "https://") {
            8
        } else {
            0
        };
        if scheme_len > 0 {
            let rest = &v[scheme_len..];
            let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
            let (authority, tail) = rest.split_at(end);
            let is_node = self.nodes.iter().any(|n| n.eq_ignore_ascii_case(authority));
            let is_public = self.public_origin.as_deref().is_some_and(|o| {
                o.len() == scheme_len + end && o.eq_ignore_ascii_case(&v[..o.len()])
            });
            if !(is_node || (self.strip && is_public)) {
                return None;
            }
            let path = if self.strip {
                self.under_base(tail)
            } else if tail.starts_with('/') {
                tail.to_string()
            } else {
                format!("/{tail}")
            };
            return Some(match &self.public_origin {
                Some(o) => format!("{o}{path}"),
                None => path,
            });
        }
        // `//host/x` is scheme-relative: another host, not ours to touch.
        if self.strip && v.starts_with('/') && !v.starts_with("//") {
            return Some(self.under_base(v));
        }
        None
    }

    /// `Set-Cookie`'s `Path` put under the prefix (`proxy_cookie_path`). `Path=/` becomes the bare
    /// prefix, like the sticky cookie, so the cookie is also sent for `<base>` itself. A path
    /// already at or under the prefix is left alone: the sticky cookie is added by node selection,
    /// below this layer, with `Path=<base>` already.
    fn rewrite_cookie(&self, v: &str) -> Option<String> {
        let mut out = String::with_capacity(v.len() + self.base.len());
        let mut changed = false;
        for (i, part) in v.split(';').enumerate() {
            if i > 0 {
                out.push(';');
                if let Some((k, val)) = part.split_once('=') {
                    let val = val.trim();
                    if k.trim().eq_ignore_ascii_case("path")
                        && val.starts_with('/')
                        && region(val.as_bytes(), self.base.as_bytes()) == Region::Outside
                    {
                        out.push_str(" Path=");
                        out.push_str(&self.base);
                        if val != "/" {
                            out.push_str(val);
                        }
                        changed = true;
                        continue;
                    }
                }
            }
            out.push_str(part);
        }
        changed.then_some(out)
    }

    /// `Refresh: 5; url=/x` (quotes optional), the URL rewritten like a `Location`.
    fn rewrite_refresh(&self, v: &str) -> Option<String> {
        let lower = v.to_ascii_lowercase();
        let at = lower.find("url=")? + 4;
        let raw = v[at..].trim();
        let (q, url) = match raw.as_bytes().first() {
            Some(b'\'') | Some(b'"') => (&raw[..1], raw[1..].trim_end_matches(['\'', '"'])),
            _ => ("", raw),
        };
        let new = self.rewrite_url(url)?;
        Some(format!("{}{q}{new}{q}", &v[..at]))
    }

    fn rewrite_response(&self, resp: &mut Resp) {
        let h = resp.headers_mut();
        for name in [LOCATION, CONTENT_LOCATION] {
            rewrite_one(h, name, |v| self.rewrite_url(v));
        }
        rewrite_one(h, REFRESH, |v| self.rewrite_refresh(v));
        if self.strip && h.contains_key(SET_COOKIE) {
            let cookies: Vec<HeaderValue> = h.get_all(SET_COOKIE).iter().cloned().collect();
            h.remove(SET_COOKIE);
            for c in cookies {
                let new = c
                    .to_str()
                    .ok()
                    .and_then(|s| self.rewrite_cookie(s))
                    .and_then(|s| HeaderValue::from_str(&s).ok());
                h.append(SET_COOKIE, new.unwrap_or(c));
            }
        }
    }
}

fn rewrite_one(h: &mut http::HeaderMap, name: HeaderName, f: impl Fn(&str) -> Option<String>) {
    let Some(new) = h
        .get(&name)
        .and_then(|v| v.to_str().ok())
        .and_then(f)
        .and_then(|s| HeaderValue::from_str(&s).ok())
    else {
        return;
    };
    h.insert(name, new);
}

fn starts_with_ci(s: &str, p: &str) -> bool {
    s.len() >= p.len() && s.as_bytes()[..p.len()].eq_ignore_ascii_case(p.as_bytes())
}

/// Where a path falls relative to the base.
#[derive(Debug, PartialEq, Eq)]
enum Region {
    /// `<base>/...`
    Inside,
    /// Exactly `<base>`.
    Exact,
    Outside,
}

#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    /// In the prefix (or the bare prefix). `resolved` is set when the raw path had dot segments:
    /// then the resolved path is what goes upstream, so Botpress sees the path we checked.
    In {
        exact: bool,
        resolved: Option<String>,
    },
    Outside,
    /// An encoding trick; see [`classify`].
    Ambiguous,
}

/// Decides a request path's side of the prefix.
///
/// Refused as ambiguous: any `\` or `%5C` (browsers turn `\` into `/`, some servers do too; no
/// Botpress URL has one), any percent-encoded dot segment (`%2e%2e`, `.%2E`), and any encoded
/// slash whose decoding would move the path across the prefix boundary (`/botpress/..%2f..%2fadmin`,
/// `/botpress%2Fapi`). An encoded slash that stays on the same side is fine and kept.
fn classify(raw: &str, base: &str) -> Verdict {
    let bytes = raw.as_bytes();
    if bytes.contains(&b'\\') || bytes.windows(3).any(|w| w.eq_ignore_ascii_case(b"%5c")) {
        return Verdict::Ambiguous;
    }
    let Some(rest) = raw.strip_prefix('/') else {
        // `*` (server-wide OPTIONS) and anything else not origin-form.
        return Verdict::Outside;
    };
    let mut dots = false;
    for seg in rest.split('/') {
        if seg == "." || seg == ".." {
            dots = true;
        } else if seg.contains('%') {
            let d: Vec<u8> = percent_decode(seg.as_bytes()).collect();
            if d == b"." || d == b".." {
                return Verdict::Ambiguous;
            }
        }
    }
    let as_sent = resolve(rest.split('/').map(str::as_bytes));
    let region = region(&as_sent, base.as_bytes());
    // Without escapes both views are the same path; most requests stop here.
    if rest.contains('%') {
        let decoded: Vec<u8> = percent_decode(rest.as_bytes()).collect();
        let as_decoded = resolve(decoded.split(|b| *b == b'/'));
        if region != self::region(&as_decoded, base.as_bytes()) {
            return Verdict::Ambiguous;
        }
    }
    let resolved = if dots {
        match String::from_utf8(as_sent) {
            Ok(s) => Some(s),
            Err(_) => return Verdict::Ambiguous,
        }
    } else {
        None
    };
    match region {
        Region::Outside => Verdict::Outside,
        Region::Exact => Verdict::In {
            exact: true,
            resolved,
        },
        Region::Inside => Verdict::In {
            exact: false,
            resolved,
        },
    }
}

/// RFC 3986 `remove_dot_segments` over segments (the leading `/` already removed); returns the
/// path with its leading `/`.
fn resolve<'a>(segs: impl Iterator<Item = &'a [u8]>) -> Vec<u8> {
    let mut out: Vec<&[u8]> = Vec::new();
    let mut trailing = false;
    for s in segs {
        trailing = false;
        match s {
            b"." => trailing = true,
            b".." => {
                out.pop();
                trailing = true;
            }
            _ => out.push(s),
        }
    }
    if trailing {
        out.push(b"");
    }
    let mut p = Vec::with_capacity(64);
    for s in out {
        p.push(b'/');
        p.extend_from_slice(s);
    }
    if p.is_empty() {
        p.push(b'/');
    }
    p
}

fn region(p: &[u8], base: &[u8]) -> Region {
    if p == base {
        Region::Exact
    } else if p.starts_with(base) && p.get(base.len()) == Some(&b'/') {
        Region::Inside
    } else {
        Region::Outside
    }
}

/// Replaces the path of `uri`, keeping the query, scheme and authority (h2 requests carry them).
fn with_path(uri: &Uri, path: &str) -> Option<Uri> {
    let pq = match uri.query() {
        Some(q) => format!("{path}?{q}"),
        None => path.to_string(),
    };
    let mut parts = uri.clone().into_parts();
    parts.path_and_query = Some(PathAndQuery::try_from(pq).ok()?);
    Uri::from_parts(parts).ok()
}

#[derive(Clone)]
pub struct BasePathLayer(Arc<Compiled>);

impl BasePathLayer {
    pub fn new(p: BasePathPolicy) -> Self {
        BasePathLayer(Arc::new(Compiled::new(p)))
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
    policy: Arc<Compiled>,
}

impl<S> BasePath<S>
where
    S: Service<Req, Response = Resp, Error = Infallible>,
{
    fn forward(&mut self, req: Req) -> PolicyFuture<S::Future, Arc<Compiled>> {
        // `None` when no answer can need rewriting.
        let rewrite = self.policy.rewrites().then(|| self.policy.clone());
        PolicyFuture::inner(self.inner.call(req), rewrite)
    }

    fn redirect(&self, req: &Req) -> Resp {
        let mut r = empty_response(StatusCode::FOUND);
        let loc = match req.uri().query() {
            Some(q) => HeaderValue::from_str(&format!("{}/?{q}", self.policy.base)).ok(),
            None => None,
        };
        r.headers_mut()
            .insert(LOCATION, loc.unwrap_or_else(|| self.policy.home.clone()));
        let n = note_mut(&mut r);
        n.outcome = Some(Outcome::Redirect);
        n.reason = Some("to the base path");
        r
    }
}

impl<S> Service<Req> for BasePath<S>
where
    S: Service<Req, Response = Resp, Error = Infallible>,
    S::Future: Unpin,
{
    type Response = Resp;
    type Error = Infallible;
    type Future = PolicyFuture<S::Future, Arc<Compiled>>;
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }
    fn call(&mut self, mut req: Req) -> Self::Future {
        if self.policy.base.is_empty() {
            return self.forward(req);
        }
        let answer = PolicyFuture::answer;
        let id = || exchange::exchange(&req).map(|x| x.id.clone());
        let safe = matches!(*req.method(), Method::GET | Method::HEAD);
        let (exact, resolved) = match classify(req.uri().path(), &self.policy.base) {
            Verdict::Ambiguous => return answer(Refusal::AmbiguousPath.response(id().as_ref())),
            Verdict::Outside if safe && req.uri().path() == "/" => {
                return answer(self.redirect(&req))
            }
            Verdict::Outside => return answer(Refusal::OutsideBasePath.response(id().as_ref())),
            Verdict::In { exact: true, .. } if safe => return answer(self.redirect(&req)),
            Verdict::In { exact, resolved } => (exact, resolved),
        };
        if self.policy.strip || resolved.is_some() {
            let path = resolved.as_deref().unwrap_or(req.uri().path());
            let path = if !self.policy.strip {
                path
            } else if exact {
                "/"
            } else {
                // Inside: `path` starts with `<base>/`.
                path.get(self.policy.base.len()..).unwrap_or("/")
            };
            match with_path(req.uri(), path) {
                Some(u) => *req.uri_mut() = u,
                None => return answer(Refusal::UnusablePath.response(id().as_ref())),
            }
        }
        self.forward(req)
    }
}

/// What the base-path layer does to the inner answer: rewrite its URLs under the base path.
impl AfterResponse for Arc<Compiled> {
    fn after_response(self, resp: &mut Resp) {
        self.rewrite_response(resp);
    }
}

#[cfg(test)]
mod tests;
