//! The plain-HTTP listener (`listen.http`): every request gets a `308` to the same path and
//! query on the HTTPS public origin, and an audit line. Nothing is proxied over plain HTTP.
//!
//! Without `external_url` there is no configured public origin, and the client's `Host` must not
//! pick the redirect target (an open redirect, and cache poisoning through a shared cache): only
//! a host the serving certificate names is used; any other gets `400`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::header::{HeaderValue, CONTENT_TYPE, HOST, LOCATION, USER_AGENT};
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
            Some(o) if o.starts_with("https://") => Some(o.clone()),
            _ => req
                .headers()
                .get(HOST)
                .and_then(|h| h.to_str().ok())
                .or_else(|| req.uri().host())
                .map(strip_port)
                .filter(|host| plain_host(host))
                .filter(|host| generation.cert.matches_host(host.trim_matches(['[', ']'])))
                .map(|host| match public_port(loaded, self.https_port) {
                    443 => format!("https://{host}"),
                    p => format!("https://{host}:{p}"),
                }),
        };
        let pq = req
            .uri()
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or("/");
        let mut r = Response::new(RespBody::empty());
        let location = origin.and_then(|o| HeaderValue::from_str(&format!("{o}{pq}")).ok());
        let reason = match location {
            Some(v) => {
                *r.status_mut() = StatusCode::PERMANENT_REDIRECT;
                r.headers_mut().insert(LOCATION, v);
                "https redirect"
            }
            None => {
                *r.status_mut() = StatusCode::BAD_REQUEST;
                *r.body_mut() = RespBody::full(
                    "400 Bad Request: this host is not served here; use https:// and the site's name\n",
                );
                r.headers_mut().insert(
                    CONTENT_TYPE,
                    HeaderValue::from_static("text/plain; charset=utf-8"),
                );
                "unknown host for the https redirect (set external_url)"
            }
        };
        if let Some(sink) = &generation.audit {
            let mut rec = Record::unparsed(
                proxy::canonical(peer.ip()),
                None,
                r.status().as_u16(),
                if r.status() == StatusCode::BAD_REQUEST {
                    Outcome::Rejected
                } else {
                    Outcome::Redirect
                },
                reason,
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

/// A DNS name or an IP literal, nothing that could end the authority early (`/`, `@`, `\\`, `?`,
/// `#`) or smuggle another host past a wildcard match.
fn plain_host(host: &str) -> bool {
    let inner = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .map(|v6| (v6, true))
        .unwrap_or((host, false));
    match inner {
        (v6, true) => v6.parse::<std::net::Ipv6Addr>().is_ok(),
        (name, false) => {
            !name.is_empty()
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_hosts() {
        for ok in [
            "localhost",
            "bot.example.com",
            "127.0.0.1",
            "[::1]",
            "a-b.example",
        ] {
            assert!(plain_host(ok), "{ok}");
        }
        for bad in [
            "",
            "a/b.example.com",
            "evil.com@bot.example.com",
            "a\\b",
            "x?y",
            "[zz]",
            "a b",
        ] {
            assert!(!plain_host(bad), "{bad}");
        }
    }
}
