//! Listeners and connections: accept, TLS handshake, HTTP/1.1 or HTTP/2 (ALPN), hand each request
//! to the current [`Stack`], and drain gracefully on shutdown.
//!
//! [`Gateway::start`] builds everything from a validated configuration; [`Gateway::run`] takes
//! already-bound listeners and a shutdown future, so tests bind `127.0.0.1:0` and run the real
//! thing in-process.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use http::header::{HeaderValue, HOST, LOCATION};
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::Service;

use crate::audit::{self, AuditGuard, AuditSink, Record};
use crate::cluster::{self, Cluster, ClusterSettings, HealthSettings, StickyCodec};
use crate::config::{ConfigErrors, Loaded, StickyFallback};
use crate::exchange::{ConnInfo, Exchange, ReqBody, RespBody};
use crate::proxy::{self, Background, PoolSettings};
use crate::stack::{self, Stack};
use crate::tls::{self, CertInfo, ReloadableCert};

/// The bound sockets the gateway serves.
pub struct Listeners {
    pub https: TcpListener,
    /// Plain HTTP that only redirects to HTTPS.
    pub http: Option<TcpListener>,
    pub admin: TcpListener,
}

impl Listeners {
    /// Binds the configured addresses.
    pub async fn bind(loaded: &Loaded) -> std::io::Result<Listeners> {
        let l = &loaded.config.listen;
        let bind = |a: SocketAddr, key: &'static str| async move {
            TcpListener::bind(a).await.map_err(|e| {
                std::io::Error::new(
                    e.kind(),
                    format!(
                        "cannot listen on {a} (listen.{key}): {e}; is another process using it?"
                    ),
                )
            })
        };
        Ok(Listeners {
            https: bind(l.https, "https").await?,
            http: match l.http {
                Some(a) => Some(bind(a, "http").await?),
                None => None,
            },
            admin: bind(l.admin, "admin").await?,
        })
    }
}

/// Connection-level counters for metrics.
#[derive(Debug, Default)]
pub struct ServerStats {
    pub connections_h1: AtomicUsize,
    pub connections_h2: AtomicUsize,
    pub handshakes: AtomicU64,
    pub handshake_timeout: AtomicU64,
    pub handshake_eof: AtomicU64,
    pub handshake_protocol: AtomicU64,
    pub handshake_other: AtomicU64,
    pub requests: AtomicU64,
}

/// Why the gateway could not start.
#[derive(Debug)]
pub struct StartError(pub String);

impl std::fmt::Display for StartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for StartError {}

/// Everything the running gateway shares between listeners, connections and the admin API.
pub struct Gateway {
    pub loaded: ArcSwap<Loaded>,
    pub stack: ArcSwap<Stack>,
    pub cluster: Arc<Cluster>,
    pub cert: Arc<ReloadableCert>,
    pub cert_info: ArcSwap<CertInfo>,
    tls: TlsAcceptor,
    pub audit: Option<AuditSink>,
    audit_guard: std::sync::Mutex<Option<AuditGuard>>,
    pub health: Arc<ArcSwap<HealthSettings>>,
    pub background: Background,
    connections: TaskTracker,
    /// Cancelled when shutdown begins: stop accepting, close idle connections.
    pub shutdown: CancellationToken,
    pub stats: ServerStats,
    http: auto::Builder<TokioExecutor>,
    started: Instant,
    pub request_metrics: Arc<crate::metrics::RequestMetrics>,
    redaction: Arc<ArcSwap<Vec<String>>>,
    /// How a reload reads the configuration again (the binary re-applies its flags).
    reloader: std::sync::RwLock<Arc<Reloader>>,
    /// The HTTPS listener's bound port, for redirects.
    https_port: std::sync::atomic::AtomicU16,
}

impl Gateway {
    /// Loads the certificate, starts the audit writer and builds the pipeline. Nothing is bound.
    pub fn start(loaded: Loaded) -> Result<Arc<Gateway>, StartError> {
        let c = &loaded.config;
        let production = c.mode == crate::config::Mode::Production;
        // Production never gets a generated certificate: a missing one is an error.
        if !production
            && tls::ensure_dev_cert(&c.tls.cert, &c.tls.key)
                .map_err(|e| StartError(e.to_string()))?
        {
            tracing::warn!(
                cert = %c.tls.cert.display(),
                "generated a self-signed DEVELOPMENT certificate for localhost; browsers will warn and production mode refuses it. Install a real certificate (certs/README.md)"
            );
        }
        let pair =
            tls::load_pair(&c.tls.cert, &c.tls.key).map_err(|e| StartError(e.to_string()))?;
        if pair.info.expired(cluster::unix_now() as i64) {
            tracing::warn!(not_after = %pair.info.not_after_rfc3339(), cert = %c.tls.cert.display(), "the TLS certificate has EXPIRED; clients will refuse it");
        }
        if production {
            let failures = crate::posture::production_failures(&loaded, &pair.info);
            if !failures.is_empty() {
                let list: Vec<String> = failures
                    .iter()
                    .map(|f| format!("  - {}: {}\n    fix: {}", f.item, f.evidence, f.fix))
                    .collect();
                if loaded.allow_insecure {
                    tracing::warn!(
                        "PRODUCTION MODE WITH POSTURE FAILURES (--allow-insecure):\n{}",
                        list.join("\n")
                    );
                } else {
                    return Err(StartError(format!(
                        "production mode refuses to start; these posture items fail:\n{}\n(`--allow-insecure` overrides, loudly)",
                        list.join("\n")
                    )));
                }
            }
        }
        let cert = ReloadableCert::new(pair.key);
        let server_config = tls::server_config(cert.clone()).map_err(StartError)?;

        let (secret, generated) = if c.sticky.secret.is_empty() {
            (cluster::generate_secret(), true)
        } else {
            (c.sticky.secret.expose().to_string(), false)
        };
        if generated && c.sticky.enabled && loaded.derived.nodes.len() > 1 {
            tracing::warn!("sticky.secret (BPGATE_STICKY_SECRET) is not set: a random one was generated, so bpgate replicas (and restarts) will not agree on sticky cookies");
        }
        let cookie = stack::cookie_spec(&loaded);
        let path = stack::cookie_path(&loaded).to_string();
        let codec = StickyCodec::new(
            secret.as_bytes(),
            (!c.sticky.previous_secret.is_empty())
                .then(|| c.sticky.previous_secret.expose().as_bytes()),
            &cookie.name,
            &path,
            c.sticky.max_age.as_secs(),
        );
        let cluster = Cluster::new(ClusterSettings {
            nodes: loaded.derived.nodes.clone(),
            pool: PoolSettings {
                connect_timeout: c.upstream.connect_timeout,
                idle_timeout: c.upstream.idle_timeout,
                max_idle: c.upstream.pool_max_idle,
            },
            codec,
            sticky_enabled: c.sticky.enabled,
            ip_fallback: c.sticky.fallback == StickyFallback::ClientIp,
            fall: c.health.fall,
            passive_ejection: c.health.enabled,
            generated_secret: generated,
        });
        let redaction = audit::redaction(&c.audit);
        let (audit_sink, audit_guard) = if c.audit.enabled {
            let (s, g) =
                audit::AuditSink::start(audit::writer_settings(&c.audit), redaction.clone())
                    .map_err(|e| StartError(e.to_string()))?;
            (Some(s), Some(g))
        } else {
            tracing::warn!("the audit trail is disabled (audit.enabled = false)");
            (None, None)
        };
        let background = Background::default();
        let request_metrics = Arc::new(crate::metrics::RequestMetrics::default());
        let stack = stack::build(
            &loaded,
            cluster.clone(),
            audit_sink.clone(),
            background.clone(),
            request_metrics.clone(),
        )
        .map_err(StartError)?;
        let health = Arc::new(ArcSwap::from_pointee(health_settings(&loaded)));
        let http = http_builder(&loaded);
        Ok(Arc::new(Gateway {
            cert_info: ArcSwap::from_pointee(pair.info),
            loaded: ArcSwap::from_pointee(loaded),
            stack: ArcSwap::from_pointee(stack),
            cluster,
            cert,
            tls: TlsAcceptor::from(server_config),
            audit: audit_sink,
            audit_guard: std::sync::Mutex::new(audit_guard),
            health,
            background,
            connections: TaskTracker::new(),
            shutdown: CancellationToken::new(),
            stats: ServerStats::default(),
            http,
            started: Instant::now(),
            https_port: Default::default(),
            request_metrics,
            redaction,
            reloader: std::sync::RwLock::new(Arc::new(default_reloader)),
        }))
    }

    /// Replaces how `reload` reads the configuration (the binary passes its flags; tests pass
    /// their own environment).
    pub fn set_reloader(
        &self,
        f: impl Fn(&Loaded) -> Result<Loaded, ConfigErrors> + Send + Sync + 'static,
    ) {
        if let Ok(mut r) = self.reloader.write() {
            *r = Arc::new(f);
        }
    }

    /// Re-reads the configuration and applies what can change live — nodes (added, removed,
    /// reweighted), CORS, response headers, base-path rewriting settings, trusted proxies, upstream
    /// timeouts, health checks, the audit redaction list — to new requests. Open connections and
    /// tunnels are untouched. Settings that need a restart are reported and keep their running
    /// values. An invalid configuration changes nothing.
    pub fn reload(&self) -> ReloadOutcome {
        let old = self.loaded.load_full();
        let reloader = self
            .reloader
            .read()
            .map(|r| r.clone())
            .unwrap_or_else(|p| p.into_inner().clone());
        let new = match reloader(&old) {
            Ok(n) => n,
            Err(e) => {
                self.request_metrics
                    .config_reloads_failed
                    .fetch_add(1, Ordering::Relaxed);
                tracing::error!(
                    "configuration reload refused; keeping the running configuration:\n{e}"
                );
                return ReloadOutcome {
                    ok: false,
                    error: Some(e.to_string()),
                    applied: vec![],
                    restart_required: vec![],
                };
            }
        };
        let (merged, applied, restart_required) = merge_reload(&old, new);
        if let Err(e) = self.apply(&merged) {
            self.request_metrics
                .config_reloads_failed
                .fetch_add(1, Ordering::Relaxed);
            tracing::error!("configuration reload refused: {e}");
            return ReloadOutcome {
                ok: false,
                error: Some(e),
                applied: vec![],
                restart_required: vec![],
            };
        }
        self.request_metrics
            .config_reloads_ok
            .fetch_add(1, Ordering::Relaxed);
        if !restart_required.is_empty() {
            tracing::warn!(
                ?restart_required,
                "these settings changed but need a restart; they keep their running values"
            );
        }
        tracing::info!(?applied, "configuration reloaded");
        ReloadOutcome {
            ok: true,
            error: None,
            applied,
            restart_required,
        }
    }

    fn apply(&self, merged: &Loaded) -> Result<(), String> {
        // Build the new stack first: if it fails nothing has changed yet.
        let stack = stack::build(
            merged,
            self.cluster.clone(),
            self.audit.clone(),
            self.background.clone(),
            self.request_metrics.clone(),
        )?;
        self.cluster.set_nodes(&merged.derived.nodes);
        self.health.store(Arc::new(health_settings(merged)));
        self.redaction
            .store(Arc::new(merged.config.audit.redact_query.clone()));
        self.stack.store(Arc::new(stack));
        self.loaded.store(Arc::new(merged.clone()));
        Ok(())
    }

    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    /// Serves until `shutdown` resolves, then drains: stop accepting, let requests and tunnels
    /// finish up to `shutdown.drain_timeout`, flush the audit trail.
    pub async fn run(self: Arc<Self>, listeners: Listeners, shutdown: impl Future<Output = ()>) {
        let loaded = self.loaded.load_full();
        let checks = cluster::spawn_health_checks(
            self.cluster.clone(),
            self.health.clone(),
            self.shutdown.clone(),
        );
        let addr = listeners.https.local_addr().ok();
        self.https_port
            .store(addr.map(|a| a.port()).unwrap_or(0), Ordering::Relaxed);
        tracing::info!(
            https = ?addr,
            http = ?listeners.http.as_ref().and_then(|l| l.local_addr().ok()),
            admin = ?listeners.admin.local_addr().ok(),
            nodes = loaded.derived.nodes.len(),
            base_path = %loaded.derived.base_path,
            "bpgate listening"
        );
        let watcher = tokio::spawn(self.clone().watch_certificate());
        let https = tokio::spawn(self.clone().accept_https(listeners.https));
        let http = listeners
            .http
            .map(|l| tokio::spawn(self.clone().accept_redirect(l)));
        let admin = tokio::spawn(crate::admin::serve(self.clone(), listeners.admin));

        shutdown.await;
        tracing::info!("shutting down: no new connections; draining");
        self.shutdown.cancel();
        let _ = https.await;
        if let Some(h) = http {
            let _ = h.await;
        }
        let drain = loaded.config.shutdown.drain_timeout;
        self.connections.close();
        self.background.tasks.close();
        let drained = tokio::time::timeout(drain, async {
            self.connections.wait().await;
            self.background.tasks.wait().await;
        })
        .await;
        if drained.is_err() {
            tracing::warn!(
                ?drain,
                "drain timeout reached; closing the remaining connections and tunnels"
            );
            self.background.hard_stop.cancel();
            let _ =
                tokio::time::timeout(Duration::from_secs(2), self.background.tasks.wait()).await;
        }
        admin.abort();
        checks.abort();
        watcher.abort();
        self.flush_audit();
        tracing::info!("bpgate stopped");
    }

    /// Writes every queued audit line and stops the writer (idempotent).
    pub fn flush_audit(&self) {
        let guard = self.audit_guard.lock().ok().and_then(|mut g| g.take());
        if let Some(g) = guard {
            g.shutdown();
        }
    }

    async fn accept_https(self: Arc<Self>, listener: TcpListener) {
        let max = self.loaded.load().config.limits.max_connections;
        let permits = Arc::new(Semaphore::new(max));
        loop {
            let permit = tokio::select! {
                p = permits.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => return },
                _ = self.shutdown.cancelled() => return,
            };
            let (stream, peer) = tokio::select! {
                r = listener.accept() => match r {
                    Ok(x) => x,
                    Err(e) => {
                        // EMFILE and friends: back off instead of spinning.
                        tracing::error!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
                _ = self.shutdown.cancelled() => return,
            };
            let gw = self.clone();
            self.connections.spawn(async move {
                gw.serve_tls(stream, peer).await;
                drop(permit);
            });
        }
    }

    async fn serve_tls(self: Arc<Self>, stream: TcpStream, peer: SocketAddr) {
        let _ = stream.set_nodelay(true);
        let local = stream.local_addr().unwrap_or(peer);
        let timeout = self.loaded.load().config.tls.handshake_timeout;
        self.stats.handshakes.fetch_add(1, Ordering::Relaxed);
        let tls = match tokio::time::timeout(timeout, self.tls.accept(stream)).await {
            Ok(Ok(t)) => t,
            Ok(Err(e)) => {
                let counter = match e.kind() {
                    std::io::ErrorKind::UnexpectedEof | std::io::ErrorKind::ConnectionReset => {
                        &self.stats.handshake_eof
                    }
                    std::io::ErrorKind::InvalidData => &self.stats.handshake_protocol,
                    _ => &self.stats.handshake_other,
                };
                counter.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(%peer, error = %e, "TLS handshake failed");
                return;
            }
            Err(_) => {
                self.stats.handshake_timeout.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(%peer, "TLS handshake timed out");
                return;
            }
        };
        let (_, session) = tls.get_ref();
        let tls_version = tls::version_name(session.protocol_version());
        let h2 = session.alpn_protocol() == Some(b"h2");
        let conn = Arc::new(ConnInfo::new(peer, local, tls_version));
        let gauge = if h2 {
            &self.stats.connections_h2
        } else {
            &self.stats.connections_h1
        };
        gauge.fetch_add(1, Ordering::Relaxed);
        self.clone().serve_http(TokioIo::new(tls), conn).await;
        gauge.fetch_sub(1, Ordering::Relaxed);
    }

    async fn serve_http<I>(self: Arc<Self>, io: I, conn: Arc<ConnInfo>)
    where
        I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    {
        let activity = Arc::new(Activity {
            in_flight: AtomicUsize::new(0),
            last: AtomicU64::new(0),
            start: Instant::now(),
        });
        let gw = self.clone();
        let (c2, a2) = (conn.clone(), activity.clone());
        let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
            let gw = gw.clone();
            let conn = c2.clone();
            let activity = a2.clone();
            async move {
                activity.begin();
                let r = gw.handle(req, conn).await;
                activity.end();
                r
            }
        });
        let keepalive = self.loaded.load().config.limits.keepalive_timeout;
        let conn_fut = self.http.serve_connection_with_upgrades(io, svc);
        tokio::pin!(conn_fut);
        let idle = tokio::time::sleep(keepalive);
        tokio::pin!(idle);
        let mut closing = false;
        let result = loop {
            tokio::select! {
                r = conn_fut.as_mut() => break r,
                _ = self.shutdown.cancelled(), if !closing => {
                    conn_fut.as_mut().graceful_shutdown();
                    closing = true;
                }
                _ = idle.as_mut(), if !closing => {
                    match activity.idle_for(keepalive) {
                        None => {
                            conn_fut.as_mut().graceful_shutdown();
                            closing = true;
                        }
                        Some(left) => idle.as_mut().reset(tokio::time::Instant::now() + left),
                    }
                }
            }
        };
        if let Err(e) = result {
            self.connection_error(&conn, e.as_ref());
        }
    }

    /// hyper answers malformed and oversized request heads itself (400, 431); they still get an
    /// audit line.
    fn connection_error(&self, conn: &ConnInfo, e: &(dyn std::error::Error + 'static)) {
        let Some(he) = e.downcast_ref::<hyper::Error>() else {
            tracing::debug!(peer = %conn.peer, error = %e, "connection ended with an error");
            return;
        };
        let (status, reason) = if he.is_parse_too_large() {
            (431, "request head too large")
        } else if he.is_parse() {
            (400, "malformed request")
        } else {
            tracing::debug!(peer = %conn.peer, error = %he, "connection ended with an error");
            return;
        };
        tracing::debug!(peer = %conn.peer, error = %he, status, "request refused by the HTTP parser");
        if let Some(sink) = &self.audit {
            sink.write(Record::unparsed(
                proxy::canonical(conn.peer.ip()),
                conn.tls_version,
                status,
                reason,
            ));
        }
    }

    /// The edge: creates the request's [`Exchange`] and calls the current stack.
    async fn handle(
        &self,
        req: Request<Incoming>,
        conn: Arc<ConnInfo>,
    ) -> Result<Response<audit::AuditBody>, std::convert::Infallible> {
        self.stats.requests.fetch_add(1, Ordering::Relaxed);
        let loaded = self.loaded.load();
        let trusted = &loaded.derived.trusted;
        let peer_ip = proxy::canonical(conn.peer.ip());
        let peer_trusted = trusted.contains(&peer_ip);
        let client_ip = proxy::client_ip(peer_ip, req.headers(), trusted);
        let id = match req.headers().get(&proxy::X_REQUEST_ID) {
            Some(v) if peer_trusted && proxy::acceptable_request_id(v) => v.clone(),
            _ => proxy::new_request_id(),
        };
        let x = Arc::new(Exchange {
            start: Instant::now(),
            id,
            conn,
            client_ip,
            peer_trusted,
            bytes_in: AtomicU64::new(0),
            body_end: Default::default(),
        });
        let max_body = loaded.config.limits.max_body.0;
        // An arc-swap guard is not held across the await below.
        drop(loaded);
        let (mut parts, body) = req.into_parts();
        parts.extensions.insert(x.clone());
        let req = Request::from_parts(parts, ReqBody::new(body, x, max_body));
        let mut stack = Stack::clone(&self.stack.load());
        stack.call(req).await
    }

    async fn accept_redirect(self: Arc<Self>, listener: TcpListener) {
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
                _ = self.shutdown.cancelled() => return,
            };
            let gw = self.clone();
            self.connections.spawn(async move {
                let _ = stream.set_nodelay(true);
                let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let gw = gw.clone();
                    async move { Ok::<_, std::convert::Infallible>(gw.redirect(&req, peer)) }
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
    fn redirect(&self, req: &Request<Incoming>, peer: SocketAddr) -> Response<RespBody> {
        let loaded = self.loaded.load();
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
                match stack::public_port(&loaded, self.https_port.load(Ordering::Relaxed)) {
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
        if let Some(sink) = &self.audit {
            let mut rec = Record::unparsed(
                proxy::canonical(peer.ip()),
                None,
                r.status().as_u16(),
                "https redirect",
            );
            rec.method = Some(req.method().clone());
            rec.uri = Some(req.uri().clone());
            rec.host = req.headers().get(HOST).cloned();
            rec.http_version = Some(req.version());
            rec.outcome = "redirect";
            rec.user_agent = req.headers().get(http::header::USER_AGENT).cloned();
            sink.write(rec);
        }
        r
    }

    /// Loads the certificate files again and serves the new pair to new handshakes; open
    /// connections keep theirs. A bad pair (unparsable, mismatched, expired) is refused and the
    /// current one stays. Called on SIGHUP.
    pub fn reload_certificate(&self) -> Result<bool, String> {
        let r = self.try_reload_certificate();
        match &r {
            Ok(true) => {
                self.request_metrics
                    .cert_reloads_ok
                    .fetch_add(1, Ordering::Relaxed);
                tracing::info!(not_after = %self.cert_info.load().not_after_rfc3339(), "certificate reloaded; new handshakes use it");
            }
            Ok(false) => {}
            Err(e) => {
                self.request_metrics
                    .cert_reloads_failed
                    .fetch_add(1, Ordering::Relaxed);
                tracing::error!(
                    "certificate reload refused; the current certificate stays in service: {e}"
                );
            }
        }
        r
    }

    /// `Ok(false)`: the files hold the certificate already in service.
    fn try_reload_certificate(&self) -> Result<bool, String> {
        let loaded = self.loaded.load();
        let (cert, key) = (&loaded.config.tls.cert, &loaded.config.tls.key);
        let pair = tls::load_pair(cert, key).map_err(|e| e.to_string())?;
        if pair.info.expired(cluster::unix_now() as i64) {
            return Err(format!(
                "the new certificate expired on {}",
                pair.info.not_after_rfc3339()
            ));
        }
        if pair.key.cert == self.cert.current().cert {
            return Ok(false);
        }
        self.cert.replace(pair.key);
        self.cert_info.store(Arc::new(pair.info));
        Ok(true)
    }

    /// Watches the certificate and key files (certbot replaces them on renewal) and reloads when
    /// either changes.
    async fn watch_certificate(self: Arc<Self>) {
        let stamp = |p: &std::path::Path| {
            std::fs::metadata(p)
                .ok()
                .map(|m| (m.modified().ok(), m.len()))
        };
        let (interval, cert, key) = {
            let l = self.loaded.load();
            (
                l.config.tls.reload_interval,
                l.config.tls.cert.clone(),
                l.config.tls.key.clone(),
            )
        };
        if interval.is_zero() {
            return;
        }
        let mut last = (stamp(&cert), stamp(&key));
        loop {
            tokio::select! {
                _ = tokio::time::sleep(interval) => {}
                _ = self.shutdown.cancelled() => return,
            }
            let now = (stamp(&cert), stamp(&key));
            if now != last {
                // A renewal writes two files; give the second one a moment to land.
                tokio::time::sleep(Duration::from_millis(200)).await;
                last = (stamp(&cert), stamp(&key));
                let _ = self.reload_certificate();
            }
        }
    }

    /// SIGHUP and `POST /reload`: the configuration and the certificate.
    pub fn reload_all(&self) -> serde_json::Value {
        let config = self.reload();
        let cert = self.reload_certificate();
        serde_json::json!({
            "config": config,
            "certificate": match cert {
                Ok(true) => serde_json::json!({"ok": true, "replaced": true}),
                Ok(false) => serde_json::json!({"ok": true, "replaced": false}),
                Err(e) => serde_json::json!({"ok": false, "error": e}),
            },
        })
    }

    /// Readiness: serving, not draining, and at least one node up.
    pub fn ready(&self) -> bool {
        !self.shutdown.is_cancelled() && self.cluster.ready(self.health.load().enabled)
    }
}

type Reloader = dyn Fn(&Loaded) -> Result<Loaded, ConfigErrors> + Send + Sync;

/// Reads the same file again with the process environment.
fn default_reloader(old: &Loaded) -> Result<Loaded, ConfigErrors> {
    let env = |k: &str| std::env::var(k).ok();
    crate::config::load(&old.path, &env, &crate::config::Overrides::default())
}

/// What a reload did, as `POST /reload` reports it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ReloadOutcome {
    pub ok: bool,
    pub error: Option<String>,
    /// Sections whose new values are in effect for new requests.
    pub applied: Vec<String>,
    /// Sections that changed but keep their running values until a restart.
    pub restart_required: Vec<String>,
}

/// Sections a reload applies live, and those that need a restart (listeners, TLS setup,
/// connection limits, the audit writer, the sticky key, logging, the public URL and base path
/// that cookies and the sticky key are bound to).
const LIVE: &[&str] = &[
    "upstream",
    "cors",
    "headers",
    "forwarding",
    "health",
    "audit.redact_query",
];

fn merge_reload(old: &Loaded, new: Loaded) -> (Loaded, Vec<String>, Vec<String>) {
    let section = |c: &crate::config::Config| -> toml::Table {
        toml::Value::try_from(c)
            .ok()
            .and_then(|v| v.as_table().cloned())
            .unwrap_or_default()
    };
    let (a, b) = (section(&old.config), section(&new.config));
    let mut applied = Vec::new();
    let mut restart = Vec::new();
    let keys: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
    for k in keys {
        if k == "audit" {
            let (oa, na) = (
                a.get(k).and_then(|v| v.as_table()),
                b.get(k).and_then(|v| v.as_table()),
            );
            let redact = |t: Option<&toml::Table>| t.and_then(|t| t.get("redact_query")).cloned();
            if redact(oa) != redact(na) {
                applied.push("audit.redact_query".to_string());
            }
            let rest = |t: Option<&toml::Table>| {
                t.map(|t| {
                    t.iter()
                        .filter(|(k, _)| *k != "redact_query")
                        .map(|(k, v)| (k.clone(), v.clone()))
                        .collect::<toml::Table>()
                })
            };
            if rest(oa) != rest(na) {
                restart.push("audit".to_string());
            }
        } else if a.get(k) != b.get(k) {
            if LIVE.contains(&k.as_str()) {
                applied.push(k.clone());
            } else {
                restart.push(k.clone());
            }
        }
    }
    // Keep the running values of everything that needs a restart.
    let mut merged = old.clone();
    merged.config.upstream = new.config.upstream.clone();
    merged.config.cors = new.config.cors.clone();
    merged.config.headers = new.config.headers.clone();
    merged.config.forwarding = new.config.forwarding.clone();
    merged.config.health = new.config.health.clone();
    merged.config.audit.redact_query = new.config.audit.redact_query.clone();
    merged.derived.nodes = new.derived.nodes;
    merged.derived.trusted = new.derived.trusted;
    (merged, applied, restart)
}

/// Per-connection activity, to close idle keep-alive connections.
struct Activity {
    in_flight: AtomicUsize,
    /// Milliseconds since `start` of the last request start or end.
    last: AtomicU64,
    start: Instant,
}

impl Activity {
    fn touch(&self) {
        self.last
            .store(self.start.elapsed().as_millis() as u64, Ordering::Relaxed);
    }
    fn begin(&self) {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        self.touch();
    }
    fn end(&self) {
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.touch();
    }
    /// `None` when idle for at least `limit`; otherwise how long until it could be.
    fn idle_for(&self, limit: Duration) -> Option<Duration> {
        if self.in_flight.load(Ordering::Relaxed) > 0 {
            return Some(limit);
        }
        let since = self
            .start
            .elapsed()
            .saturating_sub(Duration::from_millis(self.last.load(Ordering::Relaxed)));
        if since >= limit {
            None
        } else {
            Some(limit - since)
        }
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

pub fn health_settings(loaded: &Loaded) -> HealthSettings {
    let h = &loaded.config.health;
    HealthSettings {
        enabled: h.enabled,
        // Under `strip` the upstream itself runs at the root: probe it there.
        path: match loaded.config.base_path.mode {
            crate::config::BasePathMode::Strip => h.path.clone(),
            crate::config::BasePathMode::Preserve => {
                format!("{}{}", loaded.derived.base_path, h.path)
            }
        },
        interval: h.interval,
        timeout: h.timeout,
        rise: h.rise,
        fall: h.fall,
    }
}

/// The HTTP server settings for client connections.
fn http_builder(loaded: &Loaded) -> auto::Builder<TokioExecutor> {
    let l = &loaded.config.limits;
    let mut b = auto::Builder::new(TokioExecutor::new());
    b.http1()
        .timer(TokioTimer::new())
        .header_read_timeout(l.header_read_timeout)
        .max_buf_size((l.max_header_bytes.0 as usize).max(8192))
        // One buffer per write: over TLS each iovec would become its own record (and AEAD seal).
        .writev(false)
        .keep_alive(true);
    b.http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(l.h2_max_concurrent_streams)
        .max_header_list_size(l.max_header_bytes.0.min(u32::MAX as u64) as u32)
        .keep_alive_interval(Some(Duration::from_secs(30)))
        .keep_alive_timeout(Duration::from_secs(20));
    b
}
