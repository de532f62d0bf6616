//! The admin listener (`listen.admin`, loopback by default, never the public port):
//!
//! | route | answer |
//! |---|---|
//! | `GET /healthz` | 200 while the process runs |
//! | `GET /readyz` | 200 when serving and at least one node is up, else 503 |
//! | `GET /metrics` | Prometheus (OpenMetrics) text |
//! | `GET /upstreams` | every node's state as JSON |
//! | `POST /upstreams/{name}/drain`, `/undrain` | stop / resume new sessions to a node |
//! | `POST /reload` | re-read the configuration and the certificate (as SIGHUP), outcome as JSON |
//! | `POST /audit/rotate` | rotate the audit file now |
//! | `POST /audit/reopen` | reopen `audit.jsonl` by name (after an external logrotate move) |

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderValue, CONTENT_TYPE};
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use serde_json::json;
use tokio::net::TcpListener;

use crate::reload::Generations;

/// Serves the admin API until the task is aborted. It reads the generation in service and the
/// shared state through `gw`, and reloads through it.
pub async fn serve(gw: Arc<Generations>, listener: TcpListener) {
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                tracing::error!(error = %e, "accept failed on the admin listener");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let gw = gw.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                let gw = gw.clone();
                async move { Ok::<_, Infallible>(handle(&gw, req).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10))
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

async fn handle(gw: &Arc<Generations>, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let path = req.uri().path().trim_end_matches('/');
    let segments: Vec<&str> = path.split('/').skip(1).collect();
    match (req.method(), segments.as_slice()) {
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
            let current = gw.current();
            let nodes: Vec<_> = current.nodes.nodes.iter().map(|n| n.view()).collect();
            json_response(
                StatusCode::OK,
                &json!({ "panic": current.nodes.panic(), "nodes": nodes }),
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
            ["healthz"]
            | ["readyz"]
            | ["metrics"]
            | ["reload"]
            | ["upstreams"]
            | ["audit", "rotate" | "reopen"],
        )
        | (_, ["upstreams", _, _]) => text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n"),
        _ => text(
            StatusCode::NOT_FOUND,
            "not found; see GET /healthz, /readyz, /metrics, /upstreams\n",
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
