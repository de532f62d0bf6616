//! The running gateway, as roles the way mini-redis separates its listener from its handler:
//!
//! - [`listener::Listener`]: the HTTPS accept loop and the connection limit;
//! - [`edge::Edge`]: one client connection: TLS handshake, HTTP/1.1 or HTTP/2, keep-alive, and
//!   the place each request gets its `Exchange` and the current generation's pipeline;
//! - [`redirect::Redirect`]: the plain-HTTP listener that only redirects to HTTPS;
//! - [`certs::CertWatcher`]: reloads the certificate when its files change;
//! - reloads and generations are `reload::Generations`, shared with the admin API.
//!
//! [`Gateway::start`] builds everything from a validated configuration; [`Gateway::run`] only
//! wires the roles to already-bound listeners and a shutdown future, so tests bind
//! `127.0.0.1:0` and run the real thing in-process.

mod certs;
mod edge;
mod io;
mod listener;
mod redirect;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::audit::{self, AuditError, AuditGuard};
use crate::cluster::{self, Cluster, ClusterSettings, StickyCodec};
use crate::config::{ConfigErrors, Loaded, Mode, StickyFallback};
use crate::counters::Counters;
use crate::generation::{self, Generation, Shared};
use crate::proxy::Background;
use crate::reload::{Generations, ReloadReport};
use crate::tls::{self, ReloadableCert, TlsError};

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

/// Why the gateway could not start.
#[derive(Debug)]
pub enum StartError {
    /// The development certificate could not be created.
    DevCertificate(TlsError),
    /// The configured certificate pair cannot be served.
    Certificate(TlsError),
    /// Production mode, and these posture items fail (each with its evidence and fix).
    Posture(Vec<String>),
    /// The audit trail cannot be written.
    Audit(AuditError),
    /// The TLS server configuration cannot be built.
    Tls(TlsError),
}

impl std::fmt::Display for StartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StartError::DevCertificate(e) | StartError::Certificate(e) | StartError::Tls(e) => {
                write!(f, "{e}")
            }
            StartError::Posture(items) => write!(
                f,
                "production mode refuses to start; these posture items fail:\n{}\n(`--allow-insecure` overrides, loudly)",
                items.join("\n")
            ),
            StartError::Audit(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for StartError {}

/// The wiring: what [`Gateway::start`] built, and [`Gateway::run`] connects to the listeners.
pub struct Gateway {
    pub generations: Arc<Generations>,
    edge: Arc<edge::Edge>,
    /// Client connections and the HTTP/2 streams they run: what a drain waits for.
    connections: TaskTracker,
    audit_guard: Mutex<Option<AuditGuard>>,
}

impl Gateway {
    /// Loads the certificate, starts the audit writer and builds the first generation. Nothing
    /// is bound.
    pub fn start(loaded: Loaded) -> Result<Arc<Gateway>, StartError> {
        let c = &loaded.config;
        for w in &loaded.derived.warnings {
            tracing::warn!("{w}");
        }
        let production = c.mode == Mode::Production;
        // Production never gets a generated certificate: a missing one is an error.
        if !production
            && tls::ensure_dev_cert(&c.tls.cert, &c.tls.key).map_err(StartError::DevCertificate)?
        {
            tracing::warn!(
                cert = %crate::config::absolute(&c.tls.cert).display(),
                "generated a self-signed DEVELOPMENT certificate for localhost; browsers will warn and production mode refuses it. Install a real certificate (certs/README.md)"
            );
        }
        let pair = tls::load_pair(&c.tls.cert, &c.tls.key).map_err(StartError::Certificate)?;
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
                    return Err(StartError::Posture(list));
                }
            }
        }
        let cert = ReloadableCert::new(pair.key);
        let server_config =
            tls::server_config(cert.clone(), c.tls.session_timeout).map_err(StartError::Tls)?;

        let (secret, generated) = if c.sticky.secret.is_empty() {
            (cluster::generate_secret(), true)
        } else {
            (c.sticky.secret.expose().to_string(), false)
        };
        if generated && c.sticky.enabled && loaded.derived.nodes.len() > 1 {
            tracing::warn!("sticky.secret (BPGATE_STICKY_SECRET) is not set: a random one was generated, so bpgate replicas (and restarts) will not agree on sticky cookies");
        }
        let codec = StickyCodec::new(
            secret.as_bytes(),
            (!c.sticky.previous_secret.is_empty())
                .then(|| c.sticky.previous_secret.expose().as_bytes()),
            &c.sticky.cookie_name,
            generation::cookie_path(&loaded),
            c.sticky.max_age.as_secs(),
        );
        let cluster = Cluster::new(ClusterSettings {
            codec,
            sticky_enabled: c.sticky.enabled,
            ip_fallback: c.sticky.fallback == StickyFallback::ClientIp,
            generated_secret: generated,
            sid_map_max_entries: c.sticky.sid_map_max_entries,
            sid_map_idle: c.sticky.sid_map_idle_timeout,
        });
        let (audit_sink, audit_guard) = if c.audit.enabled {
            let (s, g) =
                audit::AuditSink::start(audit::writer_settings(&c.audit), &c.audit.redact_query)
                    .map_err(StartError::Audit)?;
            (Some(s), Some(g))
        } else {
            tracing::warn!("the audit trail is disabled (audit.enabled = false)");
            (None, None)
        };
        let shared = Arc::new(Shared {
            cluster,
            audit: audit_sink,
            users: Arc::new(audit::UserResolver::from_config(&loaded)),
            background: Background::default(),
            counters: Arc::new(Counters::default()),
            cert,
            shutdown: CancellationToken::new(),
            started: Instant::now(),
        });
        let connections = TaskTracker::new();
        let edge_settings = edge::EdgeConfig::new(&loaded, connections.clone());
        let first = Generation::build(1, loaded, Arc::new(pair.info), &shared);
        let generations = Arc::new(Generations::new(first, shared));
        let edge = Arc::new(edge::Edge::new(
            server_config,
            edge_settings,
            generations.clone(),
        ));
        Ok(Arc::new(Gateway {
            generations,
            edge,
            connections,
            audit_guard: Mutex::new(audit_guard),
        }))
    }

    /// What outlives generations: counters, the audit writer, node state.
    pub fn shared(&self) -> &Shared {
        self.generations.shared()
    }

    /// The generation in service.
    pub fn current(&self) -> Arc<Generation> {
        self.generations.current_full()
    }

    /// Serving, not draining, and at least one node up.
    pub fn ready(&self) -> bool {
        self.generations.ready()
    }

    /// SIGHUP and `POST /reload`: the configuration and the certificate.
    pub fn reload_all(&self) -> ReloadReport {
        self.generations.reload_all()
    }

    /// Replaces how a reload reads the configuration (the binary passes its flags; tests pass
    /// their own environment).
    pub fn set_reloader(
        &self,
        f: impl Fn(&Loaded) -> Result<Loaded, ConfigErrors> + Send + Sync + 'static,
    ) {
        self.generations.set_source(f);
    }

    /// Serves until `shutdown` resolves, then drains: stop accepting, let requests and tunnels
    /// finish up to `shutdown.drain_timeout`, flush the audit trail.
    pub async fn run(self: Arc<Self>, listeners: Listeners, shutdown: impl Future<Output = ()>) {
        let g = self.generations.clone();
        let shared = g.shared().clone();
        let first = g.current_full();
        let checks = cluster::spawn_health_checks(
            {
                let g = g.clone();
                move || {
                    let c = g.current();
                    (c.nodes.clone(), c.health.clone())
                }
            },
            g.published.clone(),
            shared.shutdown.clone(),
        );
        let https_addr = listeners.https.local_addr().ok();
        tracing::info!(
            https = ?https_addr,
            http = ?listeners.http.as_ref().and_then(|l| l.local_addr().ok()),
            admin = ?listeners.admin.local_addr().ok(),
            nodes = first.nodes.nodes.len(),
            base_path = %first.config.derived.base_path,
            generation = first.number,
            "bpgate listening"
        );
        let connections = self.connections.clone();
        let watcher = tokio::spawn(certs::CertWatcher::new(g.clone()).run());
        let https = tokio::spawn(
            listener::Listener {
                listener: listeners.https,
                max_connections: first.config.config.limits.max_connections,
                edge: self.edge.clone(),
                connections: connections.clone(),
                shutdown: shared.shutdown.clone(),
            }
            .run(),
        );
        let http = listeners.http.map(|l| {
            tokio::spawn(
                redirect::Redirect {
                    generations: g.clone(),
                    https_port: https_addr.map(|a| a.port()).unwrap_or(0),
                    connections: connections.clone(),
                }
                .run(l),
            )
        });
        let admin = tokio::spawn(crate::admin::serve(g.clone(), listeners.admin));

        shutdown.await;
        tracing::info!("shutting down: no new connections; draining");
        shared.shutdown.cancel();
        let _ = https.await;
        if let Some(h) = http {
            let _ = h.await;
        }
        let drain = first.config.config.shutdown.drain_timeout;
        let background = &shared.background;
        connections.close();
        background.tasks.close();
        let drained = tokio::time::timeout(drain, async {
            connections.wait().await;
            background.tasks.wait().await;
        })
        .await;
        if drained.is_err() {
            tracing::warn!(
                ?drain,
                "drain timeout reached; cutting the remaining connections and tunnels"
            );
            // Connections and tunnels end on this signal; their requests' audit lines are
            // written as they drop, so wait for them before the trail is flushed.
            background.hard_stop.cancel();
            let _ = tokio::time::timeout(Duration::from_secs(2), async {
                connections.wait().await;
                background.tasks.wait().await;
            })
            .await;
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
}
