//! Per-request hot path of bpgate, one benchmark per step, so a regression shows up in isolation.
//!
//! ```sh
//! cargo bench --bench hot_path                      # full run
//! cargo bench --bench hot_path -- --quick           # smoke run
//! cargo bench --bench hot_path -- sticky            # one group
//! ```
//!
//! Groups: `sticky` (cookie seal/open, node id), `route` (`Cluster::choose` by cookie, engine.io
//! sid, client IP or load; reading a handshake's sid; the route layer),
//! `cors`, `base_path`, `forwarding` (`set_forwarding_headers`, `client_ip`), `jwt`
//! (`UserResolver::resolve`), `audit` (`encode`), `stack` (every layer in process, in front of
//! an inner service that answers at once instead of forwarding to a node).
//!
//! Layers are driven with `tower::ServiceExt::oneshot` and polled once with a no-op waker
//! (`now_or_never`): every layer answers without waiting, so no runtime is measured. Requests
//! are built in criterion's untimed setup (`iter_batched`), so only the layer is timed.

use std::convert::Infallible;
use std::hint::black_box;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::atomic::{AtomicU64, AtomicU8};
use std::sync::Arc;
use std::time::Instant;

use bpgate::audit::{self, AuditContext, AuditLayer, Record, UserResolver};
use bpgate::base_path::{BasePathLayer, BasePathPolicy};
use bpgate::cluster::{
    Cluster, ClusterSettings, CookieSpec, Ejection, RouteLayer, Snapshot, StickyCodec,
};
use bpgate::config::{self, BasePathMode, Cidr, NodeSpec};
use bpgate::cors::{CorsLayer, CorsPolicy};
use bpgate::exchange::{BoxFut, ConnInfo, Exchange, Outcome, Req, ReqBody, Resp, RespBody};
use bpgate::headers::{SecurityHeaders, SecurityHeadersLayer};
use bpgate::proxy::{self, ForwardError, ForwardingContext, Trusted};
use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use futures_util::FutureExt;
use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Version};
use tower::{Layer, Service, ServiceExt};

const STICKY_SECRET: &[u8] = b"bench-sticky-secret-0123456789ab";
const JWT_SECRET: &str = "botpress-app-secret-for-benchmarks";
const PUBLIC_ORIGIN: &str = "https://bot.example.com";
const PEER: &str = "198.51.100.23:51234";

// === fixtures ===

fn codec() -> StickyCodec {
    StickyCodec::new(STICKY_SECRET, None, "bpgate_node", "/", 86_400)
}

fn node_specs() -> Vec<NodeSpec> {
    ["127.0.0.1:4001", "127.0.0.1:4002"]
        .iter()
        .map(|a| NodeSpec {
            name: a.to_string(),
            authority: a.to_string(),
            weight: 1,
        })
        .collect()
}

/// The cluster and its node set.
fn cluster() -> (Arc<Cluster>, Arc<Snapshot>) {
    cluster_with(true)
}

fn cluster_with(ip_fallback: bool) -> (Arc<Cluster>, Arc<Snapshot>) {
    let c = Cluster::new(ClusterSettings {
        codec: codec(),
        sticky_enabled: true,
        ip_fallback,
        generated_secret: false,
        sid_map_max_entries: 1000,
        sid_map_idle: std::time::Duration::from_secs(300),
    });
    let snap = c.snapshot(&node_specs(), false);
    (c, snap)
}

const EJECTION: Ejection = Ejection {
    enabled: true,
    fall: 3,
};

fn cookie_spec() -> CookieSpec {
    CookieSpec {
        name: "bpgate_node".into(),
        attributes: "; Path=/; Max-Age=86400; HttpOnly; Secure; SameSite=None".into(),
    }
}

fn now_secs() -> u64 {
    bpgate::cluster::unix_now()
}

/// A valid sticky cookie value pinning the first node.
fn pinned_cookie(c: &Cluster, snap: &Snapshot) -> String {
    c.cookie_value(snap, &snap.nodes[0])
        .expect("first node is in the snapshot")
}

fn exchange() -> Arc<Exchange> {
    let peer: SocketAddr = PEER.parse().expect("peer address");
    let local: SocketAddr = "127.0.0.1:8443".parse().expect("local address");
    Arc::new(Exchange {
        start: Instant::now(),
        id: HeaderValue::from_static("0193a5c2-7f1e-7cc0-9a4e-5f3b2d1c0a99"),
        conn: Arc::new(ConnInfo::new(peer, local, Some("TLSv1.3"))),
        client_ip: peer.ip(),
        peer_trusted: false,
        bytes_in: AtomicU64::new(0),
        body_end: AtomicU8::new(0),
        refusal: None,
        node: Default::default(),
    })
}

fn hv(s: &str) -> HeaderValue {
    HeaderValue::from_str(s).expect("valid header value")
}

/// The headers a browser sends to the Botpress studio API (~15), plus `extra`.
fn browser_headers(extra: &[(&str, &str)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in [
        ("host", "bot.example.com"),
        ("user-agent", "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36"),
        ("accept", "application/json, text/plain, */*"),
        ("accept-language", "en-US,en;q=0.9,fr;q=0.8"),
        ("accept-encoding", "gzip, deflate, br, zstd"),
        ("referer", "https://bot.example.com/studio/welcome-bot/flows/main"),
        ("origin", PUBLIC_ORIGIN),
        ("content-type", "application/json"),
        ("x-bp-workspace-id", "default"),
        ("x-botpress-bot-id", "welcome-bot"),
        ("sec-ch-ua", "\"Google Chrome\";v=\"131\", \"Chromium\";v=\"131\", \"Not_A Brand\";v=\"24\""),
        ("sec-ch-ua-mobile", "?0"),
        ("sec-ch-ua-platform", "\"Linux\""),
        ("sec-fetch-site", "same-origin"),
        ("sec-fetch-mode", "cors"),
        ("sec-fetch-dest", "empty"),
    ]
    .iter()
    .chain(extra)
    {
        h.append(HeaderName::from_bytes(k.as_bytes()).expect("header name"), hv(v));
    }
    h
}

fn request(method: Method, uri: &str, headers: &HeaderMap) -> Req {
    let mut r = Request::new(ReqBody::empty());
    *r.method_mut() = method;
    *r.uri_mut() = uri.parse().expect("uri");
    *r.version_mut() = Version::HTTP_11;
    *r.headers_mut() = headers.clone();
    r.extensions_mut().insert(exchange());
    r
}

/// An inner service that answers at once, like a node's `200` with an empty body.
fn answer(_: Req) -> BoxFut {
    let mut resp = http::Response::new(RespBody::empty());
    resp.headers_mut()
        .insert(http::header::CONTENT_TYPE, hv("application/json"));
    Box::pin(std::future::ready(Ok::<Resp, Infallible>(resp)))
}

/// The route layer's inner service (it expects the forwarder's error type).
fn forward_ok(_: Req) -> std::future::Ready<Result<Resp, ForwardError>> {
    std::future::ready(Ok(http::Response::new(RespBody::empty())))
}

/// Runs a ready-at-once service future to completion without a runtime.
fn drive<S, B>(svc: S, req: Req) -> http::Response<B>
where
    S: Service<Req, Response = http::Response<B>, Error = Infallible>,
{
    match svc.oneshot(req).now_or_never() {
        Some(Ok(r)) => r,
        Some(Err(e)) => match e {},
        None => panic!("a layer did not answer at once"),
    }
}

/// A cookie-mode token: Botpress adds `csrfToken` when `jwtToken.useCookieStorage` is on.
fn jwt_csrf(email: &str, csrf: &str) -> String {
    let now = now_secs();
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &serde_json::json!({
            "email": email, "strategy": "default", "tokenVersion": 1, "csrfToken": csrf,
            "isSuperAdmin": true, "iat": now, "exp": now + 3600, "aud": "collaborators"
        }),
        &jsonwebtoken::EncodingKey::from_secret(JWT_SECRET.as_bytes()),
    )
    .expect("sign")
}

fn jwt(email: &str) -> String {
    #[derive(serde::Serialize)]
    struct Claims<'a> {
        email: &'a str,
        strategy: &'a str,
        #[serde(rename = "tokenVersion")]
        token_version: u32,
        #[serde(rename = "isSuperAdmin")]
        is_super_admin: bool,
        iat: u64,
        exp: u64,
        aud: &'a str,
    }
    let now = now_secs();
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &Claims {
            email,
            strategy: "default",
            token_version: 1,
            is_super_admin: true,
            iat: now,
            exp: now + 3600,
            aud: "collaborators",
        },
        &jsonwebtoken::EncodingKey::from_secret(JWT_SECRET.as_bytes()),
    )
    .expect("HS256 encoding")
}

// === benchmarks ===

/// What the layer benchmarks cost without any layer: building the inner answer, boxing its
/// future, dropping the request. Subtract it from a `layer_*` figure for the layer's own cost.
fn baseline(c: &mut Criterion) {
    let mut g = c.benchmark_group("baseline");
    let headers = browser_headers(&[]);
    let svc = tower::service_fn(answer);
    g.bench_function("inner_service_only", |b| {
        b.iter_batched(
            || request(Method::GET, "/api/v1/studio/welcome-bot/flows", &headers),
            |r| drive(svc, r),
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

fn sticky(c: &mut Criterion) {
    let mut g = c.benchmark_group("sticky");
    let codec = codec();
    let id = codec.current().node_id("127.0.0.1:4001");
    let now = now_secs();
    let value = codec.seal(id, now);
    g.bench_function("node_id", |b| {
        b.iter(|| codec.current().node_id(black_box("127.0.0.1:4001")))
    });
    g.bench_function("seal", |b| b.iter(|| codec.seal(black_box(id), now)));
    g.bench_function("open_valid", |b| {
        b.iter(|| codec.open(black_box(&value), now))
    });
    let mut forged = value.clone().into_bytes();
    forged[20] = if forged[20] == b'A' { b'B' } else { b'A' };
    let forged = String::from_utf8(forged).expect("ascii");
    g.bench_function("open_forged", |b| {
        b.iter(|| codec.open(black_box(&forged), now))
    });
    g.finish();
}

fn route(c: &mut Criterion) {
    let mut g = c.benchmark_group("route");
    let (cluster, snap) = cluster();
    let cookie = pinned_cookie(&cluster, &snap);
    let client: IpAddr = "198.51.100.23".parse().expect("ip");
    g.bench_function("choose_cookie_hit", |b| {
        b.iter(|| cluster.choose(&snap, Some(black_box(&cookie)), None, client))
    });
    g.bench_function("choose_ip_fallback", |b| {
        b.iter(|| cluster.choose(&snap, None, None, black_box(client)))
    });
    // A cookieless socket.io client whose session the gate learned: the sid lookup decides.
    cluster.sids.learn(
        "lv_VI97HAXpY6yYWAAAC",
        Arc::from("127.0.0.1:4002"),
        bpgate::cluster::unix_now(),
    );
    g.bench_function("choose_by_sid", |b| {
        b.iter(|| cluster.choose(&snap, None, Some(black_box("lv_VI97HAXpY6yYWAAAC")), client))
    });
    g.bench_function("choose_load_fallback", |b| {
        let (load, snap) = cluster_with(false);
        b.iter(|| load.choose(&snap, None, None, black_box(client)))
    });
    // Reading the session id from an EIO 4 handshake answer (once per polling handshake).
    let open = br#"0{"sid":"lv_VI97HAXpY6yYWAAAC","upgrades":["websocket"],"pingInterval":25000,"pingTimeout":20000,"maxPayload":1000000}"#;
    g.bench_function("parse_handshake_eio4", |b| {
        b.iter(|| bpgate::cluster::sid::parse_handshake(black_box(open)))
    });
    g.bench_function("cookie_value_issue", |b| {
        b.iter(|| cluster.cookie_value(&snap, &snap.nodes[1]))
    });

    // The layer: cookie taken out of the request, choice, Set-Cookie on the answer.
    let layer = RouteLayer::new(cluster.clone(), snap.clone(), cookie_spec(), EJECTION);
    let svc = layer.layer(tower::service_fn(forward_ok));
    let with_cookie = browser_headers(&[(
        "cookie",
        &format!("_ga=GA1.1.1234567890.1700000000; bpgate_node={cookie}; lang=en"),
    )]);
    let without = browser_headers(&[("cookie", "_ga=GA1.1.1234567890.1700000000; lang=en")]);
    g.bench_function("layer_cookie_hit", |b| {
        b.iter_batched(
            || {
                request(
                    Method::GET,
                    "/api/v1/studio/welcome-bot/flows",
                    &with_cookie,
                )
            },
            |r| drive(svc.clone(), r),
            BatchSize::SmallInput,
        )
    });
    g.bench_function("layer_new_pin", |b| {
        b.iter_batched(
            || request(Method::GET, "/api/v1/studio/welcome-bot/flows", &without),
            |r| drive(svc.clone(), r),
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

fn cors_config() -> config::Cors {
    config::Cors {
        origins: vec![
            "https://app.example.com".into(),
            "https://*.shop.example.com".into(),
        ],
        ..Default::default()
    }
}

fn cors(c: &mut Criterion) {
    let mut g = c.benchmark_group("cors");
    let policy = CorsPolicy::new(&cors_config(), Some(PUBLIC_ORIGIN));
    g.bench_function("origin_allowed_public", |b| {
        b.iter(|| policy.origin_allowed(black_box(PUBLIC_ORIGIN)))
    });
    g.bench_function("origin_allowed_wildcard", |b| {
        b.iter(|| policy.origin_allowed(black_box("https://eu.shop.example.com")))
    });
    g.bench_function("origin_refused", |b| {
        b.iter(|| policy.origin_allowed(black_box("https://evil.example.net")))
    });

    let svc = CorsLayer::new(CorsPolicy::new(&cors_config(), Some(PUBLIC_ORIGIN)))
        .layer(tower::service_fn(answer));
    let preflight = browser_headers(&[
        ("access-control-request-method", "POST"),
        (
            "access-control-request-headers",
            "content-type, x-bp-workspace-id",
        ),
    ]);
    g.bench_function("layer_preflight", |b| {
        b.iter_batched(
            || {
                request(
                    Method::OPTIONS,
                    "/api/v1/studio/welcome-bot/flows",
                    &preflight,
                )
            },
            |r| drive(svc.clone(), r),
            BatchSize::SmallInput,
        )
    });
    let actual = browser_headers(&[]);
    g.bench_function("layer_actual", |b| {
        b.iter_batched(
            || request(Method::POST, "/api/v1/studio/welcome-bot/flows", &actual),
            |r| drive(svc.clone(), r),
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

fn base_path(c: &mut Criterion) {
    let mut g = c.benchmark_group("base_path");
    let headers = browser_headers(&[]);
    for (name, mode) in [
        ("preserve", BasePathMode::Preserve),
        ("strip", BasePathMode::Strip),
    ] {
        let svc = BasePathLayer::new(BasePathPolicy {
            base: "/botpress".into(),
            mode,
            node_authorities: vec!["127.0.0.1:4001".into(), "127.0.0.1:4002".into()],
            public_origin: Some(format!("{PUBLIC_ORIGIN}/botpress")),
        })
        .layer(tower::service_fn(answer));
        g.bench_function(format!("{name}_inside"), |b| {
            b.iter_batched(
                || {
                    request(
                        Method::GET,
                        "/botpress/api/v1/studio/welcome-bot/flows?include=nodes",
                        &headers,
                    )
                },
                |r| drive(svc.clone(), r),
                BatchSize::SmallInput,
            )
        });
        g.bench_function(format!("{name}_outside_404"), |b| {
            b.iter_batched(
                || request(Method::GET, "/admin/secret", &headers),
                |r| drive(svc.clone(), r),
                BatchSize::SmallInput,
            )
        });
    }
    g.finish();
}

fn forwarding(c: &mut Criterion) {
    let mut g = c.benchmark_group("forwarding");
    let headers = browser_headers(&[("cookie", "_ga=GA1.1.1234567890.1700000000; lang=en")]);
    let port = HeaderValue::from_static("443");
    let prefix = HeaderValue::from_static("/botpress");
    let peer: IpAddr = "198.51.100.23".parse().expect("ip");
    let cx = ForwardingContext {
        peer_trusted: false,
        client: peer,
        port: &port,
        prefix: Some(&prefix),
        cache: None,
    };
    g.bench_function("set_headers_untrusted", |b| {
        b.iter_batched_ref(
            || headers.clone(),
            |h| proxy::set_forwarding_headers(h, &cx),
            BatchSize::SmallInput,
        )
    });
    let chained = browser_headers(&[
        ("x-forwarded-for", "203.0.113.7, 192.168.1.4"),
        ("forwarded", "for=203.0.113.7;proto=https, for=192.168.1.4"),
        ("x-forwarded-proto", "https"),
    ]);
    let lb: IpAddr = "10.0.0.5".parse().expect("ip");
    let trusted_cx = ForwardingContext {
        peer_trusted: true,
        client: "203.0.113.7".parse().expect("ip"),
        port: &port,
        prefix: Some(&prefix),
        cache: None,
    };
    g.bench_function("set_headers_trusted_chain", |b| {
        b.iter_batched_ref(
            || chained.clone(),
            |h| proxy::set_forwarding_headers(h, &trusted_cx),
            BatchSize::SmallInput,
        )
    });

    let trusted = Trusted(
        ["10.0.0.0/8", "192.168.0.0/16"]
            .iter()
            .map(|s| s.parse::<Cidr>().expect("cidr"))
            .collect(),
    );
    g.bench_function("client_ip_untrusted_peer", |b| {
        b.iter(|| proxy::client_ip(black_box(peer), &chained, &trusted))
    });
    let three_hops = browser_headers(&[("x-forwarded-for", "203.0.113.7, 192.168.1.4, 10.1.2.3")]);
    g.bench_function("client_ip_trusted_3_hops", |b| {
        b.iter(|| proxy::client_ip(black_box(lb), &three_hops, &trusted))
    });
    g.finish();
}

fn jwt_resolve(c: &mut Criterion) {
    let mut g = c.benchmark_group("jwt");
    let users = UserResolver::new(Some(JWT_SECRET));
    let cookie_users =
        UserResolver::new(Some(JWT_SECRET)).with_jwt_source(config::JwtSource::Cookie);
    let token = jwt("admin@example.com");
    let path = "/api/v1/bots/welcome-bot/mod/qna/questions";
    let bearer = browser_headers(&[("authorization", &format!("Bearer {token}"))]);
    // Cookie mode: Botpress's cookie token carries csrfToken; the UI sends it back in CSRF-Token.
    let csrf_token = jwt_csrf("admin@example.com", "n1Qd0cRfTx");
    let cookie = browser_headers(&[
        (
            "cookie",
            &format!("_ga=GA1.1.1234567890.1700000000; jwtToken={csrf_token}; lang=en"),
        ),
        ("csrf-token", "n1Qd0cRfTx"),
    ]);
    let none = browser_headers(&[("cookie", "_ga=GA1.1.1234567890.1700000000; lang=en")]);
    assert_eq!(
        users.resolve(path, &bearer).source,
        Some(audit::UserSource::Jwt)
    );
    assert_eq!(
        cookie_users.resolve(path, &cookie).source,
        Some(audit::UserSource::Jwt)
    );
    g.bench_function("bearer_valid", |b| {
        b.iter(|| users.resolve(black_box(path), black_box(&bearer)))
    });
    g.bench_function("cookie_valid", |b| {
        b.iter(|| cookie_users.resolve(black_box(path), black_box(&cookie)))
    });
    g.bench_function("no_token", |b| {
        b.iter(|| users.resolve(black_box(path), black_box(&none)))
    });
    g.bench_function("cookie_mode_no_token", |b| {
        b.iter(|| cookie_users.resolve(black_box(path), black_box(&none)))
    });
    let unverified = UserResolver::new(None);
    g.bench_function("bearer_no_secret", |b| {
        b.iter(|| unverified.resolve(black_box(path), black_box(&bearer)))
    });
    // The end-user lookups every request pays: external auth configured, nothing to find.
    let ext = config::ExternalAuth::default();
    let with_ext = UserResolver::new(Some(JWT_SECRET))
        .with_base_path("/botpress")
        .with_external_auth(
            &ext,
            &config::ExternalKey::Hmac(b"end-user-secret".to_vec()),
        );
    let plain = "/botpress/api/v1/bots/welcome-bot/mod/channel-web/messages";
    assert!(with_ext.end_user(plain, &none).is_none());
    g.bench_function("end_user_none", |b| {
        b.iter(|| with_ext.end_user(black_box(plain), black_box(&none)))
    });
    let converse = "/botpress/api/v1/bots/welcome-bot/converse/user-42";
    g.bench_function("end_user_converse", |b| {
        b.iter(|| with_ext.end_user(black_box(converse), black_box(&none)))
    });
    g.finish();
}

fn audit_encode(c: &mut Criterion) {
    let mut g = c.benchmark_group("audit");
    let peer: IpAddr = "198.51.100.23".parse().expect("ip");
    let headers = browser_headers(&[]);
    let mut r = Record::unparsed(peer, Some("TLSv1.3"), 200, Outcome::Ok, "unused");
    r.request_id = Some(HeaderValue::from_static(
        "0193a5c2-7f1e-7cc0-9a4e-5f3b2d1c0a99",
    ));
    let users = UserResolver::new(Some(JWT_SECRET));
    let path = "/api/v1/bots/welcome-bot/converse/user-42";
    r.user = users.resolve(
        path,
        &browser_headers(&[(
            "authorization",
            &format!("Bearer {}", jwt("admin@example.com")),
        )]),
    );
    r.end_user = users.end_user(path, &HeaderMap::new());
    r.method = Some(Method::POST);
    r.host = headers.get("host").cloned();
    r.uri = Some(
        "/api/v1/bots/welcome-bot/converse/user-42?include=nlu,state&token=secret123"
            .parse()
            .expect("uri"),
    );
    r.bytes_in = 412;
    r.bytes_out = 18_734;
    r.duration_us = 23_417;
    r.upstream = Some(Arc::from("127.0.0.1:4001"));
    r.sticky = Some("hit");
    r.http_version = Some(Version::HTTP_2);
    r.user_agent = headers.get("user-agent").cloned();
    r.origin = headers.get("origin").cloned();
    r.referer = headers.get("referer").cloned();
    r.outcome = Outcome::Ok;
    r.reason = None;
    let redact = vec!["token".to_string(), "access_token".to_string()];
    let mut out = Vec::with_capacity(1024);
    audit::encode(&r, &redact, &mut out);
    let line_len = out.len();
    g.bench_function(format!("encode_{line_len}B_line"), |b| {
        b.iter(|| {
            out.clear();
            audit::encode(black_box(&r), &redact, &mut out);
        })
    });
    g.finish();
}

/// Writes the config the stack is built from and loads it like `bpgate` does.
fn load_config(dir: &Path) -> config::Loaded {
    let path = dir.join("bench.toml");
    let audit_dir = dir.join("audit");
    std::fs::create_dir_all(&audit_dir).expect("audit dir");
    let toml = format!(
        "external_url = \"{PUBLIC_ORIGIN}\"\n\
         [upstream]\nurls = [\"http://127.0.0.1:4001\", \"http://127.0.0.1:4002\"]\n\
         [cors]\norigins = [\"https://app.example.com\"]\n\
         [audit]\ndir = \"{}\"\njwt_secret = \"{JWT_SECRET}\"\n",
        audit_dir.display()
    );
    std::fs::write(&path, toml).expect("write config");
    match config::load(&path, &|_: &str| None, &Default::default()) {
        Ok(l) => l,
        Err(e) => panic!("bench config does not load: {e:?}"),
    }
}

/// The whole pipeline in process: audit (with its writer thread) → security headers → CORS →
/// base path → route, with an inner service in place of the forwarder. What is left out is the
/// TLS connection, hyper's parsing and the upstream exchange.
fn stack(c: &mut Criterion) {
    let mut g = c.benchmark_group("stack");
    let dir = tempfile::tempdir().expect("tempdir");
    let loaded = load_config(dir.path());
    let cfg = &loaded.config;
    let (cluster, snap) = cluster();
    let cookie = pinned_cookie(&cluster, &snap);
    let (sink, guard) =
        audit::AuditSink::start(audit::writer_settings(&cfg.audit), &cfg.audit.redact_query)
            .expect("audit writer");
    let svc = tower::ServiceBuilder::new()
        .layer(AuditLayer::new(AuditContext {
            sink: Some(sink),
            users: Arc::new(UserResolver::from_config(&loaded)),
            counters: Default::default(),
        }))
        .layer(SecurityHeadersLayer::new(SecurityHeaders::new(
            &cfg.headers,
            &loaded.derived.base_path,
        )))
        .layer(CorsLayer::new(CorsPolicy::new(
            &cfg.cors,
            loaded.derived.public_origin.as_deref(),
        )))
        .layer(BasePathLayer::new(BasePathPolicy {
            base: loaded.derived.base_path.clone(),
            mode: cfg.base_path.mode,
            node_authorities: loaded
                .derived
                .nodes
                .iter()
                .map(|n| n.authority.clone())
                .collect(),
            public_origin: loaded.derived.public_origin.clone(),
        }))
        .layer(RouteLayer::new(
            cluster,
            snap,
            bpgate::generation::cookie_spec(&loaded),
            EJECTION,
        ))
        .service(tower::service_fn(forward_ok));
    let token = jwt("admin@example.com");
    let pinned = browser_headers(&[("cookie", &format!("bpgate_node={cookie}; jwtToken={token}"))]);
    let anonymous = browser_headers(&[]);
    for (name, headers) in [("pinned_jwt", &pinned), ("new_visitor", &anonymous)] {
        g.bench_function(name, |b| {
            b.iter_batched(
                || request(Method::GET, "/api/v1/studio/welcome-bot/flows", headers),
                // Dropping the response ends the exchange and queues its audit line.
                |r| drop(drive(svc.clone(), r)),
                BatchSize::SmallInput,
            )
        });
    }
    g.finish();
    drop(svc);
    drop(guard);
}

criterion_group!(
    benches,
    baseline,
    sticky,
    route,
    cors,
    base_path,
    forwarding,
    jwt_resolve,
    audit_encode,
    stack
);
criterion_main!(benches);
