//! End to end: CORS preflights and requests outside the base path are answered by bpgate and
//! never reach Botpress; strip mode removes the prefix and puts it back on redirects and cookies.

use crate::support;

use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use support::*;

/// A node that answers like Botpress's `GET /` (a root-relative redirect and a cookie at `/`),
/// and echoes the URI it received in a header.
fn redirecting() -> Handler {
    Arc::new(|req, _cx| {
        Box::pin(async move {
            Response::builder()
                .status(StatusCode::FOUND)
                .header("location", "/admin")
                .header("set-cookie", "jwtToken=abc; Path=/; HttpOnly")
                .header("access-control-allow-origin", "*")
                .header("x-seen-uri", req.uri().to_string())
                .body(full(Bytes::new()))
                .unwrap()
        })
    })
}

fn req(method: &str, path: &str) -> http::request::Builder {
    Request::builder()
        .method(method)
        .uri(format!("https://localhost{path}"))
        .header("host", "localhost")
}

#[tokio::test]
async fn preflight_is_answered_by_bpgate() {
    init();
    let node = Node::start("n1", echo()).await;
    let gate = Gate::builder()
        .upstream(node.url())
        .toml("[cors]\norigins = [\"https://app.example.com\", \"https://*.example.org\"]\n[health]\nenabled = false")
        .start()
        .await;
    let mut c = Client::h1(&gate).await;
    let a = c
        .call(
            req("OPTIONS", "/api/v1/bots")
                .header("origin", "https://a.example.org")
                .header("access-control-request-method", "POST")
                .header("access-control-request-headers", "content-type, csrf-token")
                .body(full(Bytes::new()))
                .unwrap(),
        )
        .await;
    assert_eq!(a.status, StatusCode::NO_CONTENT);
    assert_eq!(
        a.header("access-control-allow-origin"),
        Some("https://a.example.org")
    );
    assert_eq!(a.header("access-control-allow-credentials"), Some("true"));
    let a = c
        .call(
            req("OPTIONS", "/api/v1/bots")
                .header("origin", "https://evil.example.com")
                .header("access-control-request-method", "POST")
                .body(full(Bytes::new()))
                .unwrap(),
        )
        .await;
    assert_eq!(a.status, StatusCode::FORBIDDEN);
    assert!(!a
        .headers
        .keys()
        .any(|k| k.as_str().starts_with("access-control-")));
    // A disallowed origin on an actual request is refused too.
    let a = c
        .call(
            req("POST", "/api/v1/bots")
                .header("origin", "https://evil.example.com")
                .body(full(Bytes::new()))
                .unwrap(),
        )
        .await;
    assert_eq!(a.status, StatusCode::FORBIDDEN);
    assert_eq!(node.requests.load(Ordering::Relaxed), 0, "reached Botpress");
    // An allowed one is forwarded and gets bpgate's headers.
    let a = c
        .call(
            req("GET", "/api/v1/bots")
                .header("origin", "https://app.example.com")
                .body(full(Bytes::new()))
                .unwrap(),
        )
        .await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(
        a.header("access-control-allow-origin"),
        Some("https://app.example.com")
    );
    assert!(a.header("vary").unwrap().contains("Origin"));
    assert_eq!(node.requests.load(Ordering::Relaxed), 1);
    let lines = gate.audit_lines();
    assert!(
        lines
            .iter()
            .filter(|l| l["outcome"] == "rejected" && l["status"] == 403)
            .count()
            >= 2,
        "{lines:?}"
    );
}

#[tokio::test]
async fn outside_the_base_path_never_reaches_botpress() {
    init();
    let node = Node::start("n1", echo()).await;
    let gate = Gate::builder()
        .upstream(node.url())
        .toml("base_path = \"/botpress\"\n[health]\nenabled = false")
        .start()
        .await;
    for h2 in [false, true] {
        let mut c = if h2 {
            Client::h2(&gate).await
        } else {
            Client::h1(&gate).await
        };
        for (path, status) in [
            ("/admin", StatusCode::NOT_FOUND),
            ("/botpressX", StatusCode::NOT_FOUND),
            ("/botpress/..%2f..%2fadmin", StatusCode::BAD_REQUEST),
            ("/botpress/%2e%2e/x", StatusCode::BAD_REQUEST),
            ("/botpress\\..", StatusCode::BAD_REQUEST),
            ("/botpress/../admin", StatusCode::NOT_FOUND),
            ("/", StatusCode::FOUND),
        ] {
            let a = c.get(path).await;
            assert_eq!(a.status, status, "{path}");
        }
        let a = c.get("/botpress").await;
        assert_eq!(a.header("location"), Some("/botpress/"));
        assert_eq!(node.requests.load(Ordering::Relaxed), 0, "reached Botpress");
    }
    // Inside: forwarded byte for byte, `%2F` included.
    let mut c = Client::h1(&gate).await;
    let a = c.get("/botpress/api/a%2Fb?x=%2F").await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.json()["uri"], "/botpress/api/a%2Fb?x=%2F");
    let a = c.get("/botpress/socket.io/?EIO=4&transport=polling").await;
    assert_eq!(
        a.json()["uri"],
        "/botpress/socket.io/?EIO=4&transport=polling"
    );
}

#[tokio::test]
async fn strip_mode_rewrites_location_and_cookies() {
    init();
    let node = Node::start("n1", redirecting()).await;
    let gate = Gate::builder()
        .upstream(node.url())
        .toml("[base_path]\npath = \"/botpress\"\nmode = \"strip\"\n[health]\nenabled = false")
        .start()
        .await;
    for h2 in [false, true] {
        let mut c = if h2 {
            Client::h2(&gate).await
        } else {
            Client::h1(&gate).await
        };
        let a = c.get("/botpress/?x=1").await;
        assert_eq!(a.status, StatusCode::FOUND);
        assert_eq!(a.header("x-seen-uri"), Some("/?x=1"));
        assert_eq!(a.header("location"), Some("/botpress/admin"));
        assert_eq!(
            a.header("set-cookie"),
            Some("jwtToken=abc; Path=/botpress; HttpOnly")
        );
        // The sticky cookie (added below the base path layer) is not prefixed twice.
        for c in a.headers.get_all("set-cookie") {
            assert!(!c.to_str().unwrap().contains("/botpress/botpress"), "{c:?}");
        }
        // Botpress's blanket CORS header is gone (no Origin: none of ours either).
        assert_eq!(a.header("access-control-allow-origin"), None);
    }
}

/// The worked example of `notes/cors_base_path.md`, as written there.
#[tokio::test]
async fn worked_example_config() {
    init();
    let node = Node::start("n1", echo()).await;
    let gate = Gate::builder()
        .upstream(node.url())
        .toml(
            r#"
external_url = "https://bot.example.com/botpress"
base_path = { mode = "preserve" }
[cors]
origins = ["https://app.example.com", "https://*.shop.example.com"]
credentials = true
expose_headers = ["X-Request-Id"]
max_age = "10m"
[health]
enabled = false
"#,
        )
        .start()
        .await;
    let mut c = Client::h1(&gate).await;
    let preflight = |origin: &str| {
        req("OPTIONS", "/botpress/api/v1/bots/x")
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header("access-control-request-headers", "content-type, csrf-token")
            .body(full(Bytes::new()))
            .unwrap()
    };
    for (origin, status) in [
        ("https://app.example.com", StatusCode::NO_CONTENT),
        ("https://a.shop.example.com", StatusCode::NO_CONTENT),
        ("https://shop.example.com", StatusCode::FORBIDDEN),
        ("https://x.y.shop.example.com", StatusCode::FORBIDDEN),
    ] {
        let a = c.call(preflight(origin)).await;
        assert_eq!(a.status, status, "{origin}");
        if status == StatusCode::NO_CONTENT {
            assert_eq!(a.header("access-control-allow-origin"), Some(origin));
            assert_eq!(a.header("access-control-max-age"), Some("600"));
        }
    }
    let post = |origin: &str| {
        req("POST", "/botpress/api/v1/bots/x")
            .header("origin", origin)
            .body(full(Bytes::new()))
            .unwrap()
    };
    assert_eq!(
        c.call(post("https://evil.example")).await.status,
        StatusCode::FORBIDDEN
    );
    assert_eq!(node.requests.load(Ordering::Relaxed), 0);
    let a = c.call(post("https://bot.example.com")).await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.json()["uri"], "/botpress/api/v1/bots/x");
    assert_eq!(a.seen("x-forwarded-prefix").as_deref(), Some("/botpress"));
    assert_eq!(
        a.header("access-control-expose-headers"),
        Some("X-Request-Id")
    );
    assert_eq!(c.get("/").await.header("location"), Some("/botpress/"));
    assert_eq!(c.get("/admin").await.status, StatusCode::NOT_FOUND);
}

/// A node that answers like Botpress behind `compression()`: `Vary: Accept-Encoding`, and its own
/// permissive CORS header that bpgate replaces.
fn varying() -> Handler {
    Arc::new(|_req, cx| {
        Box::pin(async move {
            Response::builder()
                .header("vary", "Accept-Encoding")
                .header("access-control-allow-origin", "*")
                .header("x-node", cx.name.as_str())
                .body(full("{}"))
                .unwrap()
        })
    })
}

/// Real preflights as channel-web, the messaging client and external auth send them, over
/// HTTP/1.1 and HTTP/2: by default an allowed origin gets the headers it asks for, and every
/// answer that depends on `Origin` (refusals included) says so in `Vary`.
#[tokio::test]
async fn preflights_real_clients_send_pass_and_every_answer_varies_on_origin() {
    init();
    let node = Node::start("n1", varying()).await;
    let gate = Gate::builder()
        .upstream(node.url())
        .toml("[cors]\norigins = [\"https://shop.example.com\"]\n[health]\nenabled = false")
        .start()
        .await;
    let preflight_vary = "Origin, Access-Control-Request-Method, Access-Control-Request-Headers";
    for mut c in [Client::h1(&gate).await, Client::h2(&gate).await] {
        for (method, asked) in [
            ("POST", "content-type,x-bp-externalauth"),
            ("POST", "externalauth"),
            (
                "GET",
                "x-bp-messaging-client-id,x-bp-messaging-client-token,x-bp-messaging-user-id",
            ),
        ] {
            let a = c
                .call(
                    req("OPTIONS", "/api/v1/messaging/conversations")
                        .header("origin", "https://shop.example.com")
                        .header("access-control-request-method", method)
                        .header("access-control-request-headers", asked)
                        .body(full(Bytes::new()))
                        .unwrap(),
                )
                .await;
            assert_eq!(a.status, StatusCode::NO_CONTENT, "{asked}: {}", a.text());
            assert_eq!(
                a.header("access-control-allow-origin"),
                Some("https://shop.example.com")
            );
            let allowed = a.header("access-control-allow-headers").unwrap_or("");
            for n in asked.split(',') {
                assert!(
                    allowed.split(", ").any(|x| x.eq_ignore_ascii_case(n)),
                    "{n} not in {allowed}"
                );
            }
            assert_eq!(a.header("vary"), Some(preflight_vary));
        }
        // Refused preflight (foreign origin): no CORS header, but the full Vary.
        let a = c
            .call(
                req("OPTIONS", "/api/v1/bots")
                    .header("origin", "https://evil.example.net")
                    .header("access-control-request-method", "POST")
                    .header("access-control-request-headers", "x-bp-externalauth")
                    .body(full(Bytes::new()))
                    .unwrap(),
            )
            .await;
        assert_eq!(a.status, StatusCode::FORBIDDEN);
        assert_eq!(a.header("vary"), Some(preflight_vary));
        // Refused actual request: `Vary: Origin`.
        let a = c
            .call(
                req("POST", "/api/v1/bots")
                    .header("origin", "https://evil.example.net")
                    .body(full(Bytes::new()))
                    .unwrap(),
            )
            .await;
        assert_eq!(a.status, StatusCode::FORBIDDEN);
        assert_eq!(a.header("vary"), Some("Origin"));
        // Forwarded answers: Botpress's Vary kept, Origin merged into one line.
        for origin in [Some("https://shop.example.com"), None] {
            let mut b = req("GET", "/api/v1/bots");
            if let Some(o) = origin {
                b = b.header("origin", o);
            }
            let a = c.call(b.body(full(Bytes::new())).unwrap()).await;
            assert_eq!(a.status, StatusCode::OK);
            assert_eq!(
                a.headers.get_all("vary").iter().collect::<Vec<_>>(),
                ["Accept-Encoding, Origin"]
            );
            assert_eq!(a.header("access-control-allow-origin"), origin);
        }
    }
    assert_eq!(
        node.requests.load(Ordering::Relaxed),
        4,
        "only GETs reach Botpress"
    );
    gate.stop().await;
}

/// An operator can pin the list; then anything else is refused, still with `Vary`.
#[tokio::test]
async fn a_pinned_allow_headers_list_refuses_other_headers() {
    init();
    let node = Node::start("n1", varying()).await;
    let gate = Gate::builder()
        .upstream(node.url())
        .toml("[cors]\norigins = [\"https://shop.example.com\"]\nallow_headers = [\"X-BP-ExternalAuth\"]\n[health]\nenabled = false")
        .start()
        .await;
    let mut c = Client::h1(&gate).await;
    let call = |asked: &'static str| {
        req("OPTIONS", "/api/v1/bots")
            .header("origin", "https://shop.example.com")
            .header("access-control-request-method", "POST")
            .header("access-control-request-headers", asked)
            .body(full(Bytes::new()))
            .unwrap()
    };
    let a = c.call(call("x-bp-externalauth, content-type")).await;
    assert_eq!(a.status, StatusCode::NO_CONTENT);
    assert!(a
        .header("access-control-allow-headers")
        .unwrap()
        .starts_with("X-BP-ExternalAuth, Authorization"));
    let a = c.call(call("x-bp-messaging-client-id")).await;
    assert_eq!(a.status, StatusCode::FORBIDDEN);
    assert!(a.header("access-control-allow-headers").is_none());
    assert_eq!(
        a.header("vary"),
        Some("Origin, Access-Control-Request-Method, Access-Control-Request-Headers")
    );
    gate.stop().await;
}

/// `cors.*` is live: pinning `allow_headers` by a reload refuses, from the next preflight on,
/// a header that was reflected before; going back to `"reflect"` allows it again.
#[tokio::test]
async fn allow_headers_changes_on_reload() {
    init();
    let node = Node::start("n1", varying()).await;
    let gate = Gate::builder()
        .upstream(node.url())
        .toml("[cors]\norigins = [\"https://shop.example.com\"]\n[health]\nenabled = false")
        .start()
        .await;
    let path = gate.dir.path().join("bpgate.toml");
    let original = std::fs::read_to_string(&path).unwrap();
    let preflight = || async {
        let mut c = Client::h1(&gate).await;
        c.call(
            req("OPTIONS", "/api/v1/bots")
                .header("origin", "https://shop.example.com")
                .header("access-control-request-method", "POST")
                .header("access-control-request-headers", "x-bp-messaging-client-id")
                .body(full(Bytes::new()))
                .unwrap(),
        )
        .await
        .status
    };
    assert_eq!(preflight().await, StatusCode::NO_CONTENT);
    let pinned = original.replace(
        "[cors]\n",
        "[cors]\nallow_headers = [\"X-BP-ExternalAuth\"]\n",
    );
    assert_ne!(pinned, original);
    std::fs::write(&path, pinned).unwrap();
    let (s, body) = gate.admin_post("/reload").await;
    assert_eq!(s, StatusCode::OK, "{body}");
    assert!(body.contains("cors.allow_headers"), "{body}");
    assert_eq!(preflight().await, StatusCode::FORBIDDEN);
    std::fs::write(&path, original).unwrap();
    assert_eq!(gate.admin_post("/reload").await.0, StatusCode::OK);
    assert_eq!(preflight().await, StatusCode::NO_CONTENT);
    gate.stop().await;
}
