//! The admin listener (`listen.admin`, loopback by default, never the public port):
//!
//! | route | answer |
//! |---|---|
//! | `GET /` | the status page (HTML, no script; see [`page`]) |
//! | `GET /healthz` | 200 while the process runs |
//! | `GET /readyz` | 200 when serving, a node is up (or in panic mode once one was) and the audit trail takes new work, else 503 |
//! | `GET /metrics` | Prometheus (OpenMetrics) text |
//! | `GET /upstreams` | panic mode, every node's state, rates and drain idleness as JSON |
//! | `POST /upstreams/{name}/drain`, `/undrain` | stop / resume new sessions to a node |
//! | `POST /reload` | re-read the configuration and the certificate (as SIGHUP), outcome as JSON |
//! | `POST /audit/rotate` | rotate the audit file now |
//! | `POST /audit/reopen` | reopen `audit.jsonl` by name (after an external logrotate move) |
//!
//! Reads are open; state changes pass [`access::check`] (own Host, no foreign Origin, the
//! `admin.token` when set).

pub mod access;
pub mod page;
pub mod status;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue, CACHE_CONTROL, CONTENT_TYPE, WWW_AUTHENTICATE};
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use serde_json::json;
use tokio::net::TcpListener;

use crate::reload::Generations;

/// Serves the admin API until the task is aborted. It reads the generation in service and the
/// shared state through `gw`, and reloads through it. The same task samples the counters for the
/// status page's rates once a second.
pub async fn serve(gw: Arc<Generations>, listener: TcpListener) {
    let sampler = Arc::new(Mutex::new(status::Sampler::default()));
    let mut tick = tokio::time::interval(status::SAMPLE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let (stream, _) = tokio::select! {
            _ = tick.tick() => {
                if let Ok(mut s) = sampler.lock() {
                    s.sample(&gw);
                }
                continue;
            }
            accepted = listener.accept() => match accepted {
                Ok(x) => x,
                Err(e) => {
                    tracing::error!(error = %e, "accept failed on the admin listener");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let Ok(local) = stream.local_addr() else {
            continue;
        };
        let (gw, sampler) = (gw.clone(), sampler.clone());
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                let (gw, sampler) = (gw.clone(), sampler.clone());
                async move { Ok::<_, Infallible>(guarded(&gw, &sampler, local, req).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10))
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

/// Access control, then the route; every answer is marked uncacheable and not sniffable.
async fn guarded(
    gw: &Arc<Generations>,
    sampler: &Mutex<status::Sampler>,
    local: SocketAddr,
    req: Request<Incoming>,
) -> Response<Full<Bytes>> {
    let token = gw.current().config.config.admin.token.clone();
    let mut resp = match access::check(req.method(), req.headers(), local, token.expose()) {
        Ok(()) => handle(gw, sampler, req).await,
        Err(refused) => {
            tracing::warn!(
                method = %req.method(),
                path = %req.uri().path(),
                reason = %refused.reason,
                "admin request refused"
            );
            let mut r = json_response(refused.status, &json!({ "error": refused.reason }));
            if refused.token {
                r.headers_mut().insert(
                    WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer realm=\"bpgate admin\""),
                );
            }
            r
        }
    };
    let h = resp.headers_mut();
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        HeaderName::from_static("x-content-type-options"),
        HeaderValue::from_static("nosniff"),
    );
    resp
}

async fn handle(
    gw: &Arc<Generations>,
    sampler: &Mutex<status::Sampler>,
    req: Request<Incoming>,
) -> Response<Full<Bytes>> {
    let path = req.uri().path().trim_end_matches('/');
    let segments: Vec<&str> = path.split('/').skip(1).collect();
    let read_status = || match sampler.lock() {
        Ok(s) => status::read(gw, &s),
        Err(p) => status::read(gw, &p.into_inner()),
    };
    match (req.method(), segments.as_slice()) {
        (&Method::GET, []) => {
            let refresh = page::refresh_from_query(req.uri().query());
            let mut r = Response::new(Full::new(Bytes::from(page::render(
                &read_status(),
                refresh,
            ))));
            let h = r.headers_mut();
            h.insert(
                CONTENT_TYPE,
                HeaderValue::from_static("text/html; charset=utf-8"),
            );
            if let Ok(v) = HeaderValue::from_str(page::csp()) {
                h.insert(http::header::CONTENT_SECURITY_POLICY, v);
            }
            h.insert(
                http::header::REFERRER_POLICY,
                HeaderValue::from_static("no-referrer"),
            );
            r
        }
        (&Method::GET, ["healthz"]) => text(StatusCode::OK, "ok\n"),
        (&Method::GET, ["metrics"]) => {
            let mut r = Response::new(Full::new(Bytes::from(crate::metrics::render(gw))));
            r.headers_mut().insert(
                CONTENT_TYPE,
                HeaderValue::from_static(crate::metrics::CONTENT_TYPE),
            );
            r
        }
        (&Method::GET, ["readyz"]) => {
            let current = gw.current_full();
            let shared = gw.shared();
            let ready = current.ready(shared);
            let body = json!({
                "ready": ready,
                "draining": shared.shutdown.is_cancelled(),
                "healthy_nodes": current.nodes.nodes.iter().filter(|n| n.is_healthy()).count(),
                "panic": current.nodes.panic(),
                "audit_writable": shared.audit.as_ref().map(|a| a.healthy()),
                "audit_blocked": shared.audit.as_ref().map(|a| a.blocked()),
                "generation": current.number,
                "generation_loaded_at": crate::tls::rfc3339_secs((current.loaded_at_ms / 1000) as i64),
            });
            json_response(
                if ready {
                    StatusCode::OK
                } else {
                    StatusCode::SERVICE_UNAVAILABLE
                },
                &body,
            )
        }
        (&Method::GET, ["upstreams"]) => {
            let st = read_status();
            json_response(
                StatusCode::OK,
                &json!({
                    "panic": st.panic,
                    "nodes": st.nodes,
                    "drain_idle_after_seconds": st.drain_idle_after_seconds,
                }),
            )
        }
        (&Method::POST, ["upstreams", name, action @ ("drain" | "undrain")]) => {
            let current = gw.current();
            match current.nodes.node(name) {
                Some(n) => {
                    n.set_draining(*action == "drain");
                    current.nodes.announce_panic();
                    tracing::info!(node = %name, action = *action, "node drain state changed");
                    json_response(StatusCode::OK, &n.view())
                }
                None => json_response(
                    StatusCode::NOT_FOUND,
                    &json!({ "error": format!("no node named {name}") }),
                ),
            }
        }
        (&Method::POST, ["reload"]) => {
            let gw = gw.clone();
            match tokio::task::spawn_blocking(move || gw.reload_all()).await {
                Ok(report) => json_response(
                    if report.ok() {
                        StatusCode::OK
                    } else {
                        StatusCode::UNPROCESSABLE_ENTITY
                    },
                    &report,
                ),
                Err(e) => json_response(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    &json!({ "error": format!("the reload did not finish: {e}") }),
                ),
            }
        }
        (&Method::POST, ["audit", "reopen"]) => match &gw.shared().audit {
            Some(a) => {
                let a = a.clone();
                let _ = tokio::task::spawn_blocking(move || a.reopen()).await;
                json_response(StatusCode::OK, &json!({ "reopened": true }))
            }
            None => json_response(
                StatusCode::CONFLICT,
                &json!({ "error": "the audit trail is disabled" }),
            ),
        },
        (&Method::POST, ["audit", "rotate"]) => match &gw.shared().audit {
            Some(a) => {
                let a = a.clone();
                let _ = tokio::task::spawn_blocking(move || a.rotate()).await;
                json_response(StatusCode::OK, &json!({ "rotated": true }))
            }
            None => json_response(
                StatusCode::CONFLICT,
                &json!({ "error": "the audit trail is disabled" }),
            ),
        },
        (
            _,
            []
            | ["healthz"]
            | ["readyz"]
            | ["metrics"]
            | ["reload"]
            | ["upstreams"]
            | ["audit", "rotate" | "reopen"],
        )
        | (_, ["upstreams", _, _]) => text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n"),
        _ => text(
            StatusCode::NOT_FOUND,
            "not found; see GET /, /healthz, /readyz, /metrics, /upstreams\n",
        ),
    }
}

fn text(status: StatusCode, s: &'static str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from_static(s.as_bytes())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

fn json_response(status: StatusCode, v: &impl serde::Serialize) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(
        serde_json::to_vec_pretty(v).unwrap_or_default(),
    )));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}
