//! The plain-HTTP listener (`listen.http`): every request gets a `308` to the same path and
//! query on the HTTPS public origin, and an audit line. Nothing is proxied over plain HTTP.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::header::{HeaderValue, HOST, LOCATION, USER_AGENT};
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio_util::task::TaskTracker;

use crate::audit::Record;
use crate::exchange::{Outcome, RespBody};
use crate::generation::public_port;
use crate::proxy;
use crate::reload::Generations;

pub(super) struct Redirect {
    pub(super) generations: Arc<Generations>,
    /// The HTTPS listener's bound port, for redirects when `external_url` gives none.
    pub(super) https_port: u16,
    pub(super) connections: TaskTracker,
}

impl Redirect {
    pub(super) async fn run(self, listener: TcpListener) {
        let this = Arc::new(self);
        let shutdown = this.generations.shared().shutdown.clone();
        loop {
            let (stream, peer) = tokio::select! {
                r = listener.accept() => match r {
                    Ok(x) => x,
                    Err(e) => {
                        tracing::error!(error = %e, "accept failed on the redirect listener");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
                _ = shutdown.cancelled() => return,
            };
            let r = this.clone();
            this.connections.spawn(async move {
                let _ = stream.set_nodelay(true);
                let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let r = r.clone();
                    async move { Ok::<_, std::convert::Infallible>(r.answer(&req, peer)) }
                });
                let conn = hyper::server::conn::http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(Duration::from_secs(10))
                    .serve_connection(TokioIo::new(stream), svc);
                let _ = conn.await;
            });
        }
    }

    /// `308` to the same path and query on the HTTPS public origin.
    fn answer(&self, req: &Request<Incoming>, peer: SocketAddr) -> Response<RespBody> {
        let generation = self.generations.current();
        let loaded = &generation.config;
        let origin = match &loaded.derived.public_origin {
            Some(o) if o.starts_with("https://") => o.clone(),
            _ => {
                let host = req
                    .headers()
                    .get(HOST)
                    .and_then(|h| h.to_str().ok())
                    .or_else(|| req.uri().host())
                    .unwrap_or("localhost");
                let host = strip_port(host);
                match public_port(loaded, self.https_port) {
                    443 => format!("https://{host}"),
                    p => format!("https://{host}:{p}"),
                }
            }
        };
        let pq = req
            .uri()
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or("/");
        let target = format!("{origin}{pq}");
        let mut r = Response::new(RespBody::empty());
        match HeaderValue::from_str(&target) {
            Ok(v) => {
                *r.status_mut() = StatusCode::PERMANENT_REDIRECT;
                r.headers_mut().insert(LOCATION, v);
            }
            Err(_) => *r.status_mut() = StatusCode::BAD_REQUEST,
        }
        if let Some(sink) = &generation.audit {
            let mut rec = Record::unparsed(
                proxy::canonical(peer.ip()),
                None,
                r.status().as_u16(),
                Outcome::Redirect,
                "https redirect",
            );
            rec.method = Some(req.method().clone());
            rec.uri = Some(req.uri().clone());
            rec.host = req.headers().get(HOST).cloned();
            rec.http_version = Some(req.version());
            rec.user_agent = req.headers().get(USER_AGENT).cloned();
            sink.write(rec);
        }
        r
    }
}

fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        return host
            .split(']')
            .next()
            .map(|h| &host[..h.len() + 1])
            .unwrap_or(host);
    }
    host.rsplit_once(':').map(|(h, _)| h).unwrap_or(host)
}
