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

use crate::server::Gateway;

/// Serves the admin API until the task is aborted.
pub async fn serve(gw: Arc<Gateway>, listener: TcpListener) {
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

async fn handle(gw: &Arc<Gateway>, req: Request<Incoming>) -> Response<Full<Bytes>> {
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
            let ready = gw.ready();
            let body = json!({
                "ready": ready,
                "draining": gw.shutdown.is_cancelled(),
                "healthy_nodes": gw.cluster.snapshot().nodes.iter().filter(|n| n.is_healthy()).count(),
                "audit_writable": gw.audit.as_ref().map(|a| a.healthy()),
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
            let nodes: Vec<_> = gw
                .cluster
                .snapshot()
                .nodes
                .iter()
                .map(|n| n.view())
                .collect();
            json_response(StatusCode::OK, &json!({ "nodes": nodes }))
        }
        (&Method::POST, ["upstreams", name, action @ ("drain" | "undrain")]) => {
            match gw.cluster.node(name) {
                Some(n) => {
                    n.set_draining(*action == "drain");
                    tracing::info!(node = %name, action = *action, "node drain state changed");
                    json_response(
                        StatusCode::OK,
                        &serde_json::to_value(n.view()).unwrap_or_default(),
                    )
                }
                None => json_response(
                    StatusCode::NOT_FOUND,
                    &json!({ "error": format!("no node named {name}") }),
                ),
            }
        }
        (&Method::POST, ["reload"]) => {
            let gw = gw.clone();
            let out = tokio::task::spawn_blocking(move || gw.reload_all())
                .await
                .unwrap_or_default();
            let ok = out["config"]["ok"].as_bool().unwrap_or(false)
                && out["certificate"]["ok"].as_bool().unwrap_or(false);
            json_response(
                if ok {
                    StatusCode::OK
                } else {
                    StatusCode::UNPROCESSABLE_ENTITY
                },
                &out,
            )
        }
        (&Method::POST, ["audit", "reopen"]) => match &gw.audit {
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
        (&Method::POST, ["audit", "rotate"]) => match &gw.audit {
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

fn json_response(status: StatusCode, v: &serde_json::Value) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(
        serde_json::to_vec_pretty(v).unwrap_or_default(),
    )));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}
