use super::*;
use crate::exchange::{BoxFut, ConnInfo, Exchange, ReqBody, RespBody};
use std::sync::atomic::{AtomicU64, AtomicU8};
use std::sync::Mutex;
use std::time::{Duration, Instant};

fn cfg(origins: &[&str], credentials: bool) -> crate::config::Cors {
    crate::config::Cors {
        origins: origins.iter().map(|s| s.to_string()).collect(),
        credentials,
        expose_headers: vec!["X-Request-Id".into()],
        max_age: Duration::from_secs(600),
        ..Default::default()
    }
}

fn xchg() -> Arc<Exchange> {
    let a = "127.0.0.1:1".parse().unwrap();
    Arc::new(Exchange {
        start: Instant::now(),
        id: HeaderValue::from_static("req-1"),
        conn: Arc::new(ConnInfo::new(a, a, Some("TLSv1.3"))),
        client_ip: a.ip(),
        peer_trusted: false,
        bytes_in: AtomicU64::new(0),
        body_end: AtomicU8::new(0),
        refusal: None,
        node: Default::default(),
    })
}

/// Runs one request through the layer over an inner service that counts calls and answers
/// like a permissive Botpress (`Access-Control-Allow-Origin: *`, `Vary: Accept-Encoding`).
async fn run(policy: CorsPolicy, req: Req) -> (Resp, usize) {
    use tower::ServiceExt;
    let calls = Arc::new(Mutex::new(0usize));
    let c = calls.clone();
    let inner = tower::service_fn(move |_r: Req| {
        *c.lock().unwrap() += 1;
        let mut resp = http::Response::new(RespBody::empty());
        resp.headers_mut()
            .insert(ACCESS_CONTROL_ALLOW_ORIGIN, HeaderValue::from_static("*"));
        resp.headers_mut().insert(
            ACCESS_CONTROL_ALLOW_METHODS,
            HeaderValue::from_static("GET,POST"),
        );
        resp.headers_mut()
            .insert(VARY, HeaderValue::from_static("Accept-Encoding"));
        Box::pin(async move { Ok::<_, Infallible>(resp) }) as BoxFut
    });
    let svc = CorsLayer::new(policy).layer(inner);
    let resp = svc.oneshot(req).await.unwrap();
    let n = *calls.lock().unwrap();
    (resp, n)
}

fn req(method: &str, origin: Option<&str>, acrm: Option<&str>, acrh: Option<&str>) -> Req {
    let mut b = http::Request::builder()
        .method(method)
        .uri("/botpress/api/v1/x")
        .header(HOST, "bot.example.com");
    if let Some(o) = origin {
        b = b.header(ORIGIN, o);
    }
    if let Some(m) = acrm {
        b = b.header(ACCESS_CONTROL_REQUEST_METHOD, m);
    }
    if let Some(h) = acrh {
        b = b.header(ACCESS_CONTROL_REQUEST_HEADERS, h);
    }
    let mut r = b.body(ReqBody::empty()).unwrap();
    r.extensions_mut().insert(xchg());
    r
}

fn has_any_acx(r: &Resp) -> bool {
    r.headers()
        .keys()
        .any(|k| k.as_str().starts_with("access-control-"))
}

#[test]
fn pattern_parsing() {
    for good in [
        "https://app.example.com",
        "https://app.example.com:8443",
        "http://localhost:3000",
        "https://*.example.com",
        "https://*.example.com:8443",
        "null",
        "https://[::1]:8443",
        "HTTPS://APP.Example.com",
    ] {
        assert!(OriginPattern::parse(good).is_ok(), "{good}");
    }
    for bad in [
        "*",
        "app.example.com",
        "https://app.example.com/",
        "https://app.example.com/path",
        "https://app.example.com?x=1",
        "https://app.example.com#f",
        "https://user@app.example.com",
        "ftp://app.example.com",
        "https://a.*.example.com",
        "https://*example.com",
        "https://*.com",
        "https://*",
        "https://",
        "https://app.example.com:0",
        "https://app.example.com:99999",
        "https://app.example.com:x",
        "https://ex ample.com",
    ] {
        let e = OriginPattern::parse(bad);
        assert!(e.is_err(), "{bad} should be refused");
        assert!(e.unwrap_err().contains('`'), "message names the value");
    }
    // Default ports are dropped so they match what browsers send.
    assert!(OriginPattern::parse("https://app.example.com:443")
        .unwrap()
        .matches("https://app.example.com"));
}

#[test]
fn wildcard_edges() {
    let p = OriginPattern::parse("https://*.example.com").unwrap();
    let cases = [
        ("https://a.example.com", true),
        ("https://A.Example.com", true),
        ("https://example.com", false),
        ("http://a.example.com", false),
        // One label only: documented choice.
        ("https://a.b.example.com", false),
        ("https://evil-example.com", false),
        ("https://a.example.com.evil.com", false),
        ("https://a.example.com:8443", false),
        ("https://.example.com", false),
        ("https://-a.example.com", false),
        ("https://a_b.example.com", false),
        ("https://x/.example.com", false),
        ("null", false),
    ];
    for (o, want) in cases {
        assert_eq!(p.matches(o), want, "{o}");
    }
    let p = OriginPattern::parse("https://*.example.com:8443").unwrap();
    assert!(p.matches("https://a.example.com:8443"));
    assert!(!p.matches("https://a.example.com"));
    let exact = OriginPattern::parse("https://app.example.com").unwrap();
    assert!(exact.matches("https://app.example.com"));
    assert!(!exact.matches("https://app.example.com:8443"));
    assert!(!exact.matches("http://app.example.com"));
}

/// origins × methods × credentials × preflight/actual.
#[tokio::test]
async fn table() {
    let origins = ["https://app.example.com", "https://*.example.org"];
    // (origin, method, preflight, allowed)
    let cases: &[(&str, &str, bool, bool)] = &[
        ("https://app.example.com", "GET", true, true),
        ("https://app.example.com", "DELETE", true, true),
        ("https://app.example.com", "TRACE", true, false),
        ("https://a.example.org", "POST", true, true),
        ("https://example.org", "POST", true, false),
        ("https://bot.example.com", "PUT", true, true), // public origin
        ("https://evil.com", "GET", true, false),
        ("https://app.example.com:8443", "GET", true, false),
        ("null", "GET", true, false),
        ("https://app.example.com", "GET", false, true),
        ("https://a.example.org", "POST", false, true),
        ("https://bot.example.com", "POST", false, true),
        ("https://evil.com", "GET", false, false),
        ("http://app.example.com", "GET", false, false),
        ("null", "POST", false, false),
    ];
    for credentials in [true, false] {
        for &(origin, method, preflight, allowed) in cases {
            let p = CorsPolicy::new(&cfg(&origins, credentials), Some("https://bot.example.com"));
            let r = if preflight {
                req(
                    "OPTIONS",
                    Some(origin),
                    Some(method),
                    Some("content-type,x-bp-workspace,CSRF-Token"),
                )
            } else {
                req(method, Some(origin), None, None)
            };
            let (resp, calls) = run(p, r).await;
            let what = format!("{origin} {method} preflight={preflight} creds={credentials}");
            let h = resp.headers();
            if preflight {
                assert_eq!(calls, 0, "{what}: preflight reached Botpress");
            }
            if !allowed {
                assert_eq!(resp.status(), StatusCode::FORBIDDEN, "{what}");
                assert!(!has_any_acx(&resp), "{what}");
                // A refusal depends on the origin: caches must key on it too.
                assert_eq!(
                    h[VARY],
                    if preflight {
                        "Origin, Access-Control-Request-Method, Access-Control-Request-Headers"
                    } else {
                        "Origin"
                    },
                    "{what}"
                );
                assert_eq!(
                    resp.extensions()
                        .get::<crate::exchange::Note>()
                        .unwrap()
                        .outcome,
                    Some(crate::exchange::Outcome::Rejected)
                );
                assert_eq!(calls, 0, "{what}");
                continue;
            }
            assert_eq!(h[ACCESS_CONTROL_ALLOW_ORIGIN], origin, "{what}");
            assert_eq!(
                h.get(ACCESS_CONTROL_ALLOW_CREDENTIALS)
                    .map(|v| v.to_str().unwrap()),
                credentials.then_some("true"),
                "{what}"
            );
            if preflight {
                assert_eq!(resp.status(), StatusCode::NO_CONTENT, "{what}");
                assert_eq!(
                    h[ACCESS_CONTROL_ALLOW_METHODS],
                    "GET, HEAD, POST, PUT, PATCH, DELETE"
                );
                // Reflected by default: exactly the names asked for.
                assert_eq!(
                    h[ACCESS_CONTROL_ALLOW_HEADERS],
                    "content-type, x-bp-workspace, CSRF-Token"
                );
                assert_eq!(h[ACCESS_CONTROL_MAX_AGE], "600");
                assert_eq!(
                    h[VARY],
                    "Origin, Access-Control-Request-Method, Access-Control-Request-Headers"
                );
            } else {
                assert_eq!(calls, 1);
                assert_eq!(h[ACCESS_CONTROL_EXPOSE_HEADERS], "X-Request-Id");
                // Botpress's own were removed.
                assert!(h.get(ACCESS_CONTROL_ALLOW_METHODS).is_none());
                assert_eq!(h.get_all(ACCESS_CONTROL_ALLOW_ORIGIN).iter().count(), 1);
                assert_eq!(h[VARY], "Accept-Encoding, Origin");
            }
        }
    }
}

fn pinned(list: &[&str]) -> crate::config::Cors {
    let mut c = cfg(&["https://app.example.com"], true);
    c.allow_headers = AllowHeaders::List(list.iter().map(|s| s.to_string()).collect());
    c
}

#[tokio::test]
async fn preflight_headers_checked_case_insensitively() {
    let p = || CorsPolicy::new(&pinned(&[]), None);
    let (r, _) = run(
        p(),
        req(
            "OPTIONS",
            Some("https://app.example.com"),
            Some("POST"),
            Some("AUTHORIZATION, csrf-token"),
        ),
    )
    .await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let (r, n) = run(
        p(),
        req(
            "OPTIONS",
            Some("https://app.example.com"),
            Some("POST"),
            Some("x-evil"),
        ),
    )
    .await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    assert!(!has_any_acx(&r));
    assert_eq!(n, 0);
    assert_eq!(
        r.headers()[VARY],
        "Origin, Access-Control-Request-Method, Access-Control-Request-Headers"
    );
    // Methods are case-sensitive.
    let (r, _) = run(
        p(),
        req(
            "OPTIONS",
            Some("https://app.example.com"),
            Some("post"),
            None,
        ),
    )
    .await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn required_headers_added_even_if_config_omits_them() {
    let c = pinned(&["x-custom"]);
    let (r, _) = run(
        CorsPolicy::new(&c, None),
        req(
            "OPTIONS",
            Some("https://app.example.com"),
            Some("GET"),
            Some("x-custom, x-bp-workspace"),
        ),
    )
    .await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    assert_eq!(
        r.headers()[ACCESS_CONTROL_ALLOW_HEADERS],
        "x-custom, Authorization, Content-Type, CSRF-Token, X-BP-Workspace, X-Requested-With"
    );
}

#[tokio::test]
async fn no_origin_same_origin_and_reject_off() {
    let p = || CorsPolicy::new(&cfg(&[], true), Some("https://bot.example.com"));
    // No Origin: passes, upstream CORS stripped, Vary added.
    let (r, n) = run(p(), req("GET", None, None, None)).await;
    assert_eq!((r.status(), n), (StatusCode::OK, 1));
    assert!(!has_any_acx(&r));
    assert_eq!(r.headers()[VARY], "Accept-Encoding, Origin");
    // Same origin by Host, even when it is not the public origin.
    let mut q = req(
        "POST",
        Some("https://internal.example.net:8443"),
        None,
        None,
    );
    q.headers_mut()
        .insert(HOST, HeaderValue::from_static("internal.example.net:8443"));
    let (r, n) = run(p(), q).await;
    assert_eq!((r.status(), n), (StatusCode::OK, 1));
    assert!(!has_any_acx(&r));
    // reject_disallowed = false: forwarded, but without CORS headers.
    let mut c = cfg(&[], true);
    c.reject_disallowed = false;
    let (r, n) = run(
        CorsPolicy::new(&c, None),
        req("GET", Some("https://evil.com"), None, None),
    )
    .await;
    assert_eq!((r.status(), n), (StatusCode::OK, 1));
    assert!(!has_any_acx(&r));
    // A preflight from a disallowed origin is still refused.
    let (r, n) = run(
        CorsPolicy::new(&c, None),
        req("OPTIONS", Some("https://evil.com"), Some("GET"), None),
    )
    .await;
    assert_eq!((r.status(), n), (StatusCode::FORBIDDEN, 0));
}

#[tokio::test]
async fn null_only_when_listed() {
    let (r, _) = run(
        CorsPolicy::new(&cfg(&["null"], false), None),
        req("POST", Some("null"), None, None),
    )
    .await;
    assert_eq!(r.headers()[ACCESS_CONTROL_ALLOW_ORIGIN], "null");
    assert!(r.headers().get(ACCESS_CONTROL_ALLOW_CREDENTIALS).is_none());
}

#[tokio::test]
async fn disabled_is_transparent() {
    let mut c = cfg(&[], true);
    c.enabled = false;
    let (r, n) = run(
        CorsPolicy::new(&c, None),
        req("OPTIONS", Some("https://evil.com"), Some("GET"), None),
    )
    .await;
    assert_eq!(n, 1);
    assert_eq!(r.headers()[ACCESS_CONTROL_ALLOW_ORIGIN], "*");
    assert_eq!(r.headers()[VARY], "Accept-Encoding");
}

#[test]
fn vary_merging() {
    let mut h = HeaderMap::new();
    add_vary_origin(&mut h);
    assert_eq!(h[VARY], "Origin");
    let mut h = HeaderMap::new();
    h.append(VARY, HeaderValue::from_static("Accept-Encoding"));
    h.append(VARY, HeaderValue::from_static("Cookie"));
    add_vary_origin(&mut h);
    assert_eq!(h[VARY], "Accept-Encoding, Cookie, Origin");
    assert_eq!(h.get_all(VARY).iter().count(), 1);
    let mut h = HeaderMap::new();
    h.insert(VARY, HeaderValue::from_static("origin, accept"));
    add_vary_origin(&mut h);
    assert_eq!(h[VARY], "origin, accept");
    let mut h = HeaderMap::new();
    h.insert(VARY, HeaderValue::from_static("*"));
    add_vary_origin(&mut h);
    assert_eq!(h[VARY], "*");
}

/// What channel-web, the messaging clients and external auth send: with the default
/// (`reflect`) an allowed origin may ask for any header, and the answer names exactly those.
#[tokio::test]
async fn allowed_origins_get_the_headers_they_ask_for_reflected() {
    let p = || CorsPolicy::new(&cfg(&["https://app.example.com"], true), None);
    let asked = "externalauth, x-bp-externalauth, x-bp-messaging-client-id, x-bp-messaging-client-token, content-type";
    let (r, n) = run(
        p(),
        req(
            "OPTIONS",
            Some("https://app.example.com"),
            Some("POST"),
            Some(asked),
        ),
    )
    .await;
    assert_eq!((r.status(), n), (StatusCode::NO_CONTENT, 0));
    assert_eq!(r.headers()[ACCESS_CONTROL_ALLOW_HEADERS], asked);
    assert_eq!(
        r.headers()[VARY],
        "Origin, Access-Control-Request-Method, Access-Control-Request-Headers"
    );
    // Several header lines are one list; no header asked, none answered.
    let mut q = req(
        "OPTIONS",
        Some("https://app.example.com"),
        Some("GET"),
        Some("X-One"),
    );
    q.headers_mut().append(
        ACCESS_CONTROL_REQUEST_HEADERS,
        HeaderValue::from_static("x-two ,"),
    );
    let (r, _) = run(p(), q).await;
    assert_eq!(r.headers()[ACCESS_CONTROL_ALLOW_HEADERS], "X-One, x-two");
    let (r, _) = run(
        p(),
        req(
            "OPTIONS",
            Some("https://app.example.com"),
            Some("GET"),
            None,
        ),
    )
    .await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    assert!(r.headers().get(ACCESS_CONTROL_ALLOW_HEADERS).is_none());
    // Something that is not a header name is refused, not reflected.
    for bad in ["x-ok, bad header", "x-ok, (x)", "x:y"] {
        let (r, n) = run(
            p(),
            req(
                "OPTIONS",
                Some("https://app.example.com"),
                Some("GET"),
                Some(bad),
            ),
        )
        .await;
        assert_eq!((r.status(), n), (StatusCode::FORBIDDEN, 0), "{bad}");
        assert!(!has_any_acx(&r), "{bad}");
    }
    // The origin is still the boundary: a foreign one gets nothing reflected.
    let (r, _) = run(
        p(),
        req(
            "OPTIONS",
            Some("https://evil.com"),
            Some("POST"),
            Some("x-bp-externalauth"),
        ),
    )
    .await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    assert!(!has_any_acx(&r));
    assert_eq!(
        r.headers()[VARY],
        "Origin, Access-Control-Request-Method, Access-Control-Request-Headers"
    );
}

#[tokio::test]
async fn a_pinned_list_refuses_other_headers() {
    let (r, n) = run(
        CorsPolicy::new(&pinned(&["X-BP-ExternalAuth"]), None),
        req(
            "OPTIONS",
            Some("https://app.example.com"),
            Some("POST"),
            Some("x-bp-externalauth, x-bp-messaging-client-id"),
        ),
    )
    .await;
    assert_eq!((r.status(), n), (StatusCode::FORBIDDEN, 0));
    assert!(!has_any_acx(&r));
    let (r, _) = run(
        CorsPolicy::new(&pinned(&["X-BP-ExternalAuth"]), None),
        req(
            "OPTIONS",
            Some("https://app.example.com"),
            Some("POST"),
            Some("x-bp-externalauth"),
        ),
    )
    .await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    assert_eq!(
        r.headers()[ACCESS_CONTROL_ALLOW_HEADERS],
        "X-BP-ExternalAuth, Authorization, Content-Type, CSRF-Token, X-BP-Workspace, X-Requested-With"
    );
}

/// Same-origin means the same scheme too: only `https://<Host>` is the page's own origin. A
/// plain-`http` page, and a look-alike domain whose name ends in ours after the scheme
/// (`http://a` + `example.com`), are foreign origins and refused.
#[tokio::test]
async fn same_origin_needs_https_and_the_exact_host() {
    let p = || CorsPolicy::new(&cfg(&[], true), None);
    for (host, origin) in [
        ("example.com", "http://aexample.com"),
        ("example.com", "http://example.com"),
        ("example.com", "wss://example.com"),
        ("bot.example.com", "http://xbot.example.com"),
    ] {
        let mut q = req("POST", Some(origin), None, None);
        q.headers_mut()
            .insert(HOST, HeaderValue::from_str(host).unwrap());
        let (r, n) = run(p(), q).await;
        assert_eq!(
            (r.status(), n),
            (StatusCode::FORBIDDEN, 0),
            "{origin} on {host}"
        );
        assert!(!has_any_acx(&r), "{origin} on {host}");
    }
    let mut q = req("POST", Some("https://example.com"), None, None);
    q.headers_mut()
        .insert(HOST, HeaderValue::from_static("example.com"));
    let (r, n) = run(p(), q).await;
    assert_eq!((r.status(), n), (StatusCode::OK, 1));
}

/// Only `OPTIONS` with `Access-Control-Request-Method` is a preflight that bpgate answers. A
/// plain `OPTIONS` and an ordinary request that happens to carry the header are requests for
/// Botpress: they reach it and get the actual-request CORS headers.
#[tokio::test]
async fn only_options_with_a_request_method_is_a_preflight() {
    let p = || CorsPolicy::new(&cfg(&["https://app.example.com"], true), None);
    for (method, acrm) in [
        ("OPTIONS", None),
        ("GET", Some("GET")),
        ("POST", Some("PUT")),
    ] {
        let (r, n) = run(
            p(),
            req(method, Some("https://app.example.com"), acrm, None),
        )
        .await;
        let what = format!("{method} {acrm:?}");
        assert_eq!((r.status(), n), (StatusCode::OK, 1), "{what}");
        let h = r.headers();
        assert_eq!(
            h[ACCESS_CONTROL_ALLOW_ORIGIN], "https://app.example.com",
            "{what}"
        );
        assert_eq!(h[ACCESS_CONTROL_EXPOSE_HEADERS], "X-Request-Id", "{what}");
        assert!(h.get(ACCESS_CONTROL_ALLOW_METHODS).is_none(), "{what}");
        assert!(h.get(ACCESS_CONTROL_MAX_AGE).is_none(), "{what}");
    }
}

/// The layer waits for the service below it: a node-selection or forwarding step that is not
/// ready (a concurrency limit, a load shedder) holds the request back instead of being called
/// regardless.
#[test]
fn readiness_comes_from_the_inner_service() {
    let ready = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut svc =
        CorsLayer::new(CorsPolicy::new(&cfg(&[], true), None)).layer(NotReady(ready.clone()));
    let mut cx = Context::from_waker(std::task::Waker::noop());
    assert!(svc.poll_ready(&mut cx).is_pending());
    ready.store(true, std::sync::atomic::Ordering::SeqCst);
    assert!(matches!(svc.poll_ready(&mut cx), Poll::Ready(Ok(()))));
}

/// An inner service that is ready only once its flag is set.
struct NotReady(Arc<std::sync::atomic::AtomicBool>);

impl Service<Req> for NotReady {
    type Response = Resp;
    type Error = Infallible;
    type Future = BoxFut;
    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        if self.0.load(std::sync::atomic::Ordering::SeqCst) {
            Poll::Ready(Ok(()))
        } else {
            Poll::Pending
        }
    }
    fn call(&mut self, _: Req) -> BoxFut {
        Box::pin(async { Ok(http::Response::new(RespBody::empty())) })
    }
}
