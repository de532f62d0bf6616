//! Reloads: the configuration (SIGHUP, `POST /reload`) and the certificate (the same, and the
//! file watcher). Each builds the next [`Generation`] and publishes it with one store.
//!
//! What a reload can change is decided by two types, not by lists of names. [`Live`] is the part
//! of the configuration the next generation is built from; [`RestartOnly`] is the rest: it keeps
//! its running value, and a reload compares it with the file and names the keys that differ.
//! [`split`] destructures a `Config` field by field and [`join`] builds one back, so a new
//! configuration field does not compile until it is put on one side. The report's key names come
//! from the same two types.

use std::sync::{Arc, Mutex, RwLock};

use arc_swap::{ArcSwap, Guard};
use serde::Serialize;
use tokio::sync::Notify;

use crate::cluster;
use crate::config::{
    self, Admin, BasePath, ByteSize, ConfigErrors, Cors, Durability, ExternalAuth, Forwarding,
    Headers, Health, JwtSource, Limits, Listen, Loaded, Log, Mode, OnFailure, Rotation,
    RouteConfig, Secret, Shutdown, Sticky, Tls, Upstream,
};
use crate::generation::{Generation, Shared};
use crate::tls::{self, TlsError};

/// The settings a reload applies: the next generation is built with them.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Live {
    pub upstream: Upstream,
    pub routes: Vec<RouteConfig>,
    pub forwarding: Forwarding,
    pub cors: Cors,
    pub headers: Headers,
    pub health: Health,
    pub audit: LiveAudit,
}

/// The part of `[audit]` a reload applies.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LiveAudit {
    pub redact_query: Vec<String>,
}

/// The settings that keep their running values until a restart: listeners and the connection
/// edge, the TLS setup, the audit writer, the sticky key and cookie, logging, and the public URL
/// and base path (cookies and the sticky key are bound to them).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RestartOnly {
    pub mode: Mode,
    pub external_url: Option<String>,
    pub workers: usize,
    pub listen: Listen,
    pub tls: Tls,
    pub limits: Limits,
    pub shutdown: Shutdown,
    pub log: Log,
    pub base_path: BasePath,
    pub sticky: Sticky,
    pub audit: RestartAudit,
    pub admin: Admin,
}

/// The part of `[audit]` that needs a restart (the writer and the user resolver, which Botpress
/// also builds once: its external-auth settings are memoized until it restarts).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RestartAudit {
    pub enabled: bool,
    pub dir: std::path::PathBuf,
    pub rotation: Rotation,
    pub max_size: ByteSize,
    pub max_files: usize,
    pub stdout: bool,
    pub on_failure: OnFailure,
    pub jwt_secret: Secret,
    pub jwt_source: JwtSource,
    pub external_auth: ExternalAuth,
    pub queue: usize,
    #[serde(with = "humantime_serde")]
    pub flush_interval: std::time::Duration,
    pub durability: Durability,
}

mod humantime_serde {
    pub fn serialize<S: serde::Serializer>(
        d: &std::time::Duration,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(*d).to_string())
    }
}

/// Splits a configuration into what a reload applies and what it does not.
pub fn split(c: config::Config) -> (Live, RestartOnly) {
    let config::Config {
        mode,
        external_url,
        workers,
        listen,
        tls,
        upstream,
        forwarding,
        limits,
        shutdown,
        log,
        headers,
        base_path,
        cors,
        sticky,
        health,
        audit,
        admin,
        routes,
    } = c;
    let config::Audit {
        enabled,
        dir,
        rotation,
        max_size,
        max_files,
        stdout,
        on_failure,
        redact_query,
        jwt_secret,
        jwt_source,
        external_auth,
        queue,
        flush_interval,
        durability,
    } = audit;
    (
        Live {
            upstream,
            routes,
            forwarding,
            cors,
            headers,
            health,
            audit: LiveAudit { redact_query },
        },
        RestartOnly {
            mode,
            external_url,
            workers,
            listen,
            tls,
            limits,
            shutdown,
            log,
            base_path,
            sticky,
            audit: RestartAudit {
                enabled,
                dir,
                rotation,
                max_size,
                max_files,
                stdout,
                on_failure,
                jwt_secret,
                jwt_source,
                external_auth,
                queue,
                flush_interval,
                durability,
            },
            admin,
        },
    )
}

/// The configuration made of `live` and `restart`.
pub fn join(live: Live, restart: RestartOnly) -> config::Config {
    let Live {
        upstream,
        routes,
        forwarding,
        cors,
        headers,
        health,
        audit: LiveAudit { redact_query },
    } = live;
    let RestartOnly {
        mode,
        external_url,
        workers,
        listen,
        tls,
        limits,
        shutdown,
        log,
        base_path,
        sticky,
        audit:
            RestartAudit {
                enabled,
                dir,
                rotation,
                max_size,
                max_files,
                stdout,
                on_failure,
                jwt_secret,
                jwt_source,
                external_auth,
                queue,
                flush_interval,
                durability,
            },
        admin,
    } = restart;
    config::Config {
        mode,
        external_url,
        workers,
        listen,
        tls,
        upstream,
        forwarding,
        limits,
        shutdown,
        log,
        headers,
        base_path,
        cors,
        sticky,
        health,
        audit: config::Audit {
            enabled,
            dir,
            rotation,
            max_size,
            max_files,
            stdout,
            on_failure,
            redact_query,
            jwt_secret,
            jwt_source,
            external_auth,
            queue,
            flush_interval,
            durability,
        },
        admin,
        routes,
    }
}

/// The configuration keys (`section.key`) whose values differ between `old` and `new`. Tables
/// are compared key by key, anything else (lists included) as a whole.
pub fn changed_keys<T: Serialize>(old: &T, new: &T) -> Vec<String> {
    fn walk(prefix: &str, a: &serde_json::Value, b: &serde_json::Value, out: &mut Vec<String>) {
        use serde_json::Value::Object;
        match (a, b) {
            (Object(x), Object(y)) => {
                let mut keys: Vec<&String> = x.keys().chain(y.keys()).collect();
                keys.sort();
                keys.dedup();
                for k in keys {
                    let null = serde_json::Value::Null;
                    let p = if prefix.is_empty() {
                        k.clone()
                    } else {
                        format!("{prefix}.{k}")
                    };
                    walk(
                        &p,
                        x.get(k).unwrap_or(&null),
                        y.get(k).unwrap_or(&null),
                        out,
                    );
                }
            }
            (a, b) if a != b => out.push(prefix.to_string()),
            _ => {}
        }
    }
    let mut out = Vec::new();
    let (a, b) = (serde_json::to_value(old), serde_json::to_value(new));
    if let (Ok(a), Ok(b)) = (a, b) {
        walk("", &a, &b, &mut out);
    }
    out
}

/// Every key of `v` (`section.key`), tables walked, lists as one key.
pub fn keys<T: Serialize>(v: &T) -> Vec<String> {
    fn walk(prefix: &str, v: &serde_json::Value, out: &mut Vec<String>) {
        match v {
            serde_json::Value::Object(m) => {
                for (k, v) in m {
                    let p = if prefix.is_empty() {
                        k.clone()
                    } else {
                        format!("{prefix}.{k}")
                    };
                    walk(&p, v, out);
                }
            }
            _ => out.push(prefix.to_string()),
        }
    }
    let mut out = Vec::new();
    if let Ok(v) = serde_json::to_value(v) {
        walk("", &v, &mut out);
    }
    out
}

/// What `POST /reload` and SIGHUP did.
#[derive(Debug, Clone, Serialize)]
pub struct ReloadReport {
    pub config: ConfigReport,
    pub certificate: CertReport,
}

impl ReloadReport {
    pub fn ok(&self) -> bool {
        self.config.ok && self.certificate.ok
    }
}

/// What a configuration reload did.
#[derive(Debug, Clone, Serialize)]
pub struct ConfigReport {
    pub ok: bool,
    pub error: Option<String>,
    /// The generation in service afterwards.
    pub generation: u64,
    /// Keys whose new values are in effect for new requests.
    pub applied: Vec<String>,
    /// Keys that changed but keep their running values until a restart.
    pub restart_required: Vec<String>,
}

/// What a certificate reload did.
#[derive(Debug, Clone, Serialize)]
pub struct CertReport {
    pub ok: bool,
    /// Whether new handshakes get a new certificate (false: the files hold the one in service).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replaced: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// How a reload reads the configuration again (the binary re-applies its flags; tests pass
/// their own environment).
pub type ConfigSource = dyn Fn(&Loaded) -> Result<Loaded, ConfigErrors> + Send + Sync;

/// Reads the same file again with the process environment.
fn default_source(old: &Loaded) -> Result<Loaded, ConfigErrors> {
    let env = |k: &str| std::env::var(k).ok();
    config::load(&old.path, &env, &config::Overrides::default())
}

/// The generation in service, and the reloads that replace it.
pub struct Generations {
    current: ArcSwap<Generation>,
    shared: Arc<Shared>,
    source: RwLock<Arc<ConfigSource>>,
    /// One reload at a time (SIGHUP, the admin API and the certificate watcher may race).
    reloading: Mutex<()>,
    /// Woken after each publication, so background tasks pick up new settings at once.
    pub published: Arc<Notify>,
}

impl Generations {
    pub fn new(first: Generation, shared: Arc<Shared>) -> Self {
        Generations {
            current: ArcSwap::from_pointee(first),
            shared,
            source: RwLock::new(Arc::new(default_source)),
            reloading: Mutex::new(()),
            published: Arc::new(Notify::new()),
        }
    }

    /// The generation in service: one atomic load, for the request path.
    pub fn current(&self) -> Guard<Arc<Generation>> {
        self.current.load()
    }

    /// The generation in service, to keep.
    pub fn current_full(&self) -> Arc<Generation> {
        self.current.load_full()
    }

    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// Serving, not draining, and at least one node up.
    pub fn ready(&self) -> bool {
        self.current().ready(&self.shared)
    }

    /// Replaces how [`Generations::reload_config`] reads the configuration.
    pub fn set_source(
        &self,
        f: impl Fn(&Loaded) -> Result<Loaded, ConfigErrors> + Send + Sync + 'static,
    ) {
        if let Ok(mut s) = self.source.write() {
            *s = Arc::new(f);
        }
    }

    fn publish(&self, g: Generation) {
        self.current.store(Arc::new(g));
        self.published.notify_waiters();
    }

    /// The configuration and the certificate (SIGHUP, `POST /reload`).
    pub fn reload_all(&self) -> ReloadReport {
        ReloadReport {
            config: self.reload_config(),
            certificate: self.reload_certificate(),
        }
    }

    /// Re-reads the configuration; the [`Live`] part takes effect for new requests (open
    /// connections and tunnels are untouched), the [`RestartOnly`] part keeps its running values
    /// and its changed keys are reported. An invalid configuration changes nothing.
    pub fn reload_config(&self) -> ConfigReport {
        let _one = self.reloading.lock().unwrap_or_else(|p| p.into_inner());
        let counters = &self.shared.counters.reloads;
        let running = self.current_full();
        match self.next_config(&running.config) {
            Err(e) => {
                counters
                    .config_failed
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                tracing::error!(
                    "configuration reload refused; keeping the running configuration:\n{e}"
                );
                ConfigReport {
                    ok: false,
                    error: Some(e.to_string()),
                    generation: running.number,
                    applied: vec![],
                    restart_required: vec![],
                }
            }
            Ok((loaded, applied, restart_required)) => {
                for w in &loaded.derived.warnings {
                    tracing::warn!("{w}");
                }
                counters
                    .config_ok
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if !restart_required.is_empty() {
                    tracing::warn!(
                        ?restart_required,
                        "these settings changed but need a restart; they keep their running values"
                    );
                }
                let mut generation = running.number;
                if !applied.is_empty() {
                    generation += 1;
                    let next =
                        Generation::build(generation, loaded, running.cert.clone(), &self.shared);
                    self.publish(next);
                }
                tracing::info!(?applied, generation, "configuration reloaded");
                ConfigReport {
                    ok: true,
                    error: None,
                    generation,
                    applied,
                    restart_required,
                }
            }
        }
    }

    /// The next configuration: the file's [`Live`] part with the running [`RestartOnly`] part,
    /// validated again as a whole; and the keys applied and needing a restart.
    fn next_config(
        &self,
        running: &Loaded,
    ) -> Result<(Loaded, Vec<String>, Vec<String>), ConfigErrors> {
        let source = self
            .source
            .read()
            .map(|s| s.clone())
            .unwrap_or_else(|p| p.into_inner().clone());
        let new = source(running)?;
        let (live_old, restart_old) = split(running.config.clone());
        let (live_new, restart_new) = split(new.config);
        let applied = changed_keys(&live_old, &live_new);
        let restart_required = changed_keys(&restart_old, &restart_new);
        let config = join(live_new, restart_old);
        let derived = config::validate(&config, &new.origins)?;
        Ok((
            Loaded {
                config,
                derived,
                path: new.path,
                origins: new.origins,
                allow_insecure: new.allow_insecure,
                file: new.file,
                notes: new.notes,
            },
            applied,
            restart_required,
        ))
    }

    /// Loads the certificate files again and serves the new pair to new handshakes; open
    /// connections keep theirs. A bad pair (unparsable, mismatched, expired) is refused and the
    /// current one stays.
    pub fn reload_certificate(&self) -> CertReport {
        let r = {
            let _one = self.reloading.lock().unwrap_or_else(|p| p.into_inner());
            self.replace_certificate()
        };
        let counters = &self.shared.counters.reloads;
        match r {
            Ok(replaced) => {
                if replaced {
                    counters
                        .cert_ok
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    tracing::info!(not_after = %self.current().cert.not_after_rfc3339(), "certificate reloaded; new handshakes use it");
                }
                CertReport {
                    ok: true,
                    replaced: Some(replaced),
                    error: None,
                }
            }
            Err(e) => {
                counters
                    .cert_failed
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                tracing::error!(
                    "certificate reload refused; the current certificate stays in service: {e}"
                );
                CertReport {
                    ok: false,
                    replaced: None,
                    error: Some(e.to_string()),
                }
            }
        }
    }

    /// `Ok(false)`: the files hold the certificate already in service.
    fn replace_certificate(&self) -> Result<bool, TlsError> {
        let running = self.current_full();
        let t = &running.config.config.tls;
        let pair = tls::load_pair(&t.cert, &t.key)?;
        if pair.info.expired(cluster::unix_now() as i64) {
            return Err(TlsError::Expired {
                path: t.cert.clone(),
                not_after: pair.info.not_after_rfc3339(),
            });
        }
        if pair.key.cert == self.shared.cert.current().cert {
            return Ok(false);
        }
        self.shared.cert.replace(pair.key);
        self.publish(running.with_cert(running.number + 1, Arc::new(pair.info)));
        Ok(true)
    }
}
