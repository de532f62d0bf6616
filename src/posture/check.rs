//! The posture checks, pure: [`check`] turns [`Inputs`] into one [`Finding`] per item, in the
//! order of Botpress's Production Checklist, then the items bpgate adds.

use serde_json::Value;

use super::botpress::{js_truthy, yn_opt, yn_value, ConfigSource, EnvFrom};
use super::obfuscate::url_secrets;
use super::{Finding, Inputs, Status};
use crate::config::{
    parse_external_url, BasePathMode, ExternalAuth, ExternalKey, JwtSource, StickyFallback,
};

/// Item names, in output order. Tests and the README refer to them.
pub mod item {
    pub const PRO: &str = "Botpress Professional";
    pub const POSTGRES: &str = "Postgres database";
    pub const BPFS: &str = "Database BPFS storage";
    pub const PRODUCTION: &str = "Production mode";
    pub const EXTERNAL_URL: &str = "External URL";
    pub const REDIS: &str = "Redis";
    pub const CORS: &str = "CORS restricted";
    pub const JWT_COOKIE: &str = "JWT cookie storage";
    pub const LANG_SERVER: &str = "Own language server";
    pub const HTTPS: &str = "HTTPS";
    pub const AUDIT: &str = "Audit trail";
    pub const STICKY: &str = "Sticky sessions";
    pub const FILE_LOGS: &str = "File logs";
    pub const BASE_PATH: &str = "Base path";
    pub const ROLES: &str = "Roles and permissions";
    pub const AUTH: &str = "Authentication methods";
    pub const REVERSE_PROXY_LB: &str = "Reverse proxy and load balancing";
    pub const DIAG_REPORT: &str = "Diagnostic report";
    pub const SERVER_CONFIG: &str = "Server config page disabled";
    pub const TRUST_PROXY: &str = "REVERSE_PROXY (client IPs)";
    pub const DIRECT_CORS: &str = "Botpress CORS without bpgate";
    pub const SERVER_DIAG: &str = "Server diag page disabled";
    pub const AUDIT_IDENTITY: &str = "Audit user identity";
    pub const CONFIG_SOURCE: &str = "Botpress config source";
    pub const ADMIN_API: &str = "Admin API";

    /// Every item, in output order.
    pub const ALL: &[&str] = &[
        PRO,
        POSTGRES,
        BPFS,
        PRODUCTION,
        EXTERNAL_URL,
        REDIS,
        CORS,
        JWT_COOKIE,
        LANG_SERVER,
        HTTPS,
        AUDIT,
        STICKY,
        FILE_LOGS,
        BASE_PATH,
        ROLES,
        AUTH,
        REVERSE_PROXY_LB,
        DIAG_REPORT,
        SERVER_CONFIG,
        TRUST_PROXY,
        DIRECT_CORS,
        SERVER_DIAG,
        AUDIT_IDENTITY,
        CONFIG_SOURCE,
        ADMIN_API,
    ];
}

/// Warn this many days before the certificate expires, fail at [`FAIL_DAYS`].
pub const WARN_DAYS: i64 = 30;
pub const FAIL_DAYS: i64 = 7;

/// Collects sub-checks of one item; the item's status is the worst of them.
struct Acc {
    item: &'static str,
    status: Status,
    evidence: Vec<String>,
    fix: Vec<String>,
}

impl Acc {
    fn new(item: &'static str) -> Self {
        Acc {
            item,
            status: Status::Pass,
            evidence: Vec::new(),
            fix: Vec::new(),
        }
    }
    fn note(&mut self, e: impl Into<String>) -> &mut Self {
        self.evidence.push(e.into());
        self
    }
    fn bad(&mut self, s: Status, e: impl Into<String>, fix: impl Into<String>) -> &mut Self {
        if s.rank() > self.status.rank() {
            self.status = s;
        }
        self.evidence.push(e.into());
        let f = fix.into();
        if !f.is_empty() && !self.fix.contains(&f) {
            self.fix.push(f);
        }
        self
    }
    fn done(self) -> Finding {
        Finding {
            item: self.item,
            status: self.status,
            evidence: self.evidence.join("; "),
            fix: self.fix.join("; "),
        }
    }
}

fn one(item: &'static str, status: Status, evidence: String, fix: String) -> Finding {
    Finding {
        item,
        status,
        evidence,
        fix,
    }
}

/// Runs every check.
pub fn check(i: &Inputs<'_>) -> Vec<Finding> {
    vec![
        pro(i),
        postgres(i),
        bpfs(i),
        production(i),
        external_url(i),
        redis(i),
        cors(i),
        jwt_cookie(i),
        lang_server(i),
        https(i),
        audit(i),
        sticky(i),
        file_logs(i),
        base_path(i),
        one(
            item::ROLES,
            Status::Manual,
            "roles are stored in Botpress's workspaces, not in its config files".into(),
            "review Admin > Workspace > Roles (workspaces.json `roles`) and give each collaborator the least role".into(),
        ),
        auth(i),
        one(
            item::REVERSE_PROXY_LB,
            Status::Pass,
            format!(
                "bpgate terminates TLS and balances {} node(s)",
                i.loaded.derived.nodes.len()
            ),
            String::new(),
        ),
        one(
            item::DIAG_REPORT,
            Status::Manual,
            "a report is generated on demand".into(),
            "run `bpgate diag` (same --botpress-* flags) and review diagnostic.txt; secrets are obfuscated".into(),
        ),
        server_config(i),
        trust_proxy(i),
        direct_cors(i),
        server_diag(i),
        audit_identity(i),
        config_source(i),
        admin_api(i.loaded),
    ]
}

/// Below this many characters an admin token is guessable enough to warn about.
pub const ADMIN_TOKEN_MIN: usize = 16;

/// The admin listener: loopback, or a token for state changes (production refuses a
/// non-loopback listener without one, see `production_failures`).
pub fn admin_api(loaded: &crate::config::Loaded) -> Finding {
    let c = &loaded.config;
    let addr = c.listen.admin;
    let token = c.admin.token.expose();
    let mut a = Acc::new(item::ADMIN_API);
    if addr.ip().is_loopback() {
        a.note(format!(
            "listen.admin = {addr} (loopback): reachable from this host only"
        ));
    } else if token.is_empty() {
        a.bad(
            Status::Fail,
            format!("listen.admin = {addr} is not loopback and admin.token is unset: anyone who reaches the port can drain nodes and reload"),
            "set BPGATE_ADMIN_TOKEN=$(openssl rand -hex 32) (admin.token), or BPGATE_ADMIN_LISTEN=127.0.0.1:9901",
        );
    } else {
        a.note(format!(
            "listen.admin = {addr} is not loopback; state changes need the admin token, reads (/metrics, /upstreams, the status page) are open to whoever reaches the port: fence it (firewall, NetworkPolicy)"
        ));
    }
    if !token.is_empty() && token.len() < ADMIN_TOKEN_MIN {
        a.bad(
            Status::Warn,
            format!(
                "admin.token has {} characters (fewer than {ADMIN_TOKEN_MIN})",
                token.len()
            ),
            "set BPGATE_ADMIN_TOKEN=$(openssl rand -hex 32)",
        );
    } else if !token.is_empty() {
        a.note("a bearer token is required for state changes");
    }
    a.note("state changes refuse a foreign Origin or Host (browsers, DNS rebinding)");
    a.done()
}

fn several_nodes(i: &Inputs<'_>) -> bool {
    i.loaded.derived.nodes.len() > 1
}

fn pro(i: &Inputs<'_>) -> Finding {
    let bp = &i.bp;
    let mut a = Acc::new(item::PRO);
    let (enabled, from) = bp.pro_enabled();
    if !enabled {
        let s = if several_nodes(i) {
            Status::Fail
        } else {
            Status::Warn
        };
        a.bad(
            s,
            if several_nodes(i) {
                format!("Pro is off ({from}), but cluster mode (several nodes) needs Botpress Professional")
            } else {
                format!("Pro is off ({from})")
            },
            "set BP_CONFIG_PRO_ENABLED=true (it and PRO_ENABLED, when defined, decide over the file)",
        );
    } else {
        a.note(format!("Pro is on ({from})"));
    }
    match bp.license_key() {
        Some((_, src)) => {
            a.note(format!("a license key is set ({src})"));
        }
        None => {
            let s = if enabled { Status::Fail } else { Status::Warn };
            a.bad(
                s,
                "no license key (pro.licenseKey is unset or the schema's placeholder, and BP_LICENSE_KEY is unset)",
                "set BP_LICENSE_KEY=<your key> (it wins over pro.licenseKey)",
            );
        }
    }
    a.done()
}

fn postgres(i: &Inputs<'_>) -> Finding {
    match i.bp.env("DATABASE_URL") {
        Some(u) if super::is_postgres_url(u) => one(
            item::POSTGRES,
            Status::Pass,
            format!("DATABASE_URL={}", url_secrets(u)),
            String::new(),
        ),
        Some(u) => one(
            item::POSTGRES,
            Status::Fail,
            format!("DATABASE_URL={} is read as an SQLite path", url_secrets(u)),
            "set DATABASE_URL=postgres://USER:PASSWORD@HOST:5432/DB".into(),
        ),
        None => one(
            item::POSTGRES,
            Status::Fail,
            "DATABASE_URL is unset: Botpress uses SQLite (data/storage/core.sqlite)".into(),
            "set DATABASE_URL=postgres://USER:PASSWORD@HOST:5432/DB".into(),
        ),
    }
}

fn bpfs(i: &Inputs<'_>) -> Finding {
    let bad = if several_nodes(i) {
        // Several nodes on disk storage each see their own files: bots diverge.
        Status::Fail
    } else {
        Status::Warn
    };
    match i.bp.env("BPFS_STORAGE") {
        Some("database") => one(
            item::BPFS,
            Status::Pass,
            "BPFS_STORAGE=database".into(),
            String::new(),
        ),
        Some(v) if v.eq_ignore_ascii_case("database") => one(
            item::BPFS,
            bad,
            format!("BPFS_STORAGE={v}: Botpress compares it exactly with `database`, so it stores on disk"),
            "set BPFS_STORAGE=database (lower case)".into(),
        ),
        other => one(
            item::BPFS,
            bad,
            format!(
                "BPFS_STORAGE={} (bots and config live on one node's disk)",
                other.unwrap_or("unset, default disk")
            ),
            "set BPFS_STORAGE=database".into(),
        ),
    }
}

fn production(i: &Inputs<'_>) -> Finding {
    let mut a = Acc::new(item::PRODUCTION);
    if i.bp.env_yn("BP_PRODUCTION") {
        a.note("BP_PRODUCTION is true");
    } else if i.bp.env_yn("CLUSTER_ENABLED") {
        a.note("CLUSTER_ENABLED=true forces production mode");
    } else {
        a.bad(
            Status::Fail,
            format!(
                "BP_PRODUCTION={}: stack traces are shown to users and debug logging is on (unless Botpress is started with `./bp -p`, which bpgate cannot see)",
                i.bp.env("BP_PRODUCTION").unwrap_or("unset")
            ),
            "set BP_PRODUCTION=true (or keep starting Botpress with -p)",
        );
        return a.done();
    }
    if i.bp.env("BP_ADMIN_PASSWORD").is_some() {
        a.bad(
            Status::Warn,
            "BP_ADMIN_PASSWORD is still set: Botpress only needs it to create the first super-admin, after that it is a password in the environment (process listings, diag reports)",
            "remove BP_ADMIN_PASSWORD (and BP_ADMIN_EMAIL) from Botpress's environment once the first admin exists",
        );
    }
    a.done()
}

fn external_url(i: &Inputs<'_>) -> Finding {
    let mut a = Acc::new(item::EXTERNAL_URL);
    let gate = i.loaded.config.external_url.as_deref();
    let fix_value = gate.unwrap_or("https://bot.example.com");
    let Some((bp_url, src)) = i.bp.external_url() else {
        a.bad(
            Status::Fail,
            "Botpress has no EXTERNAL_URL: it assumes http://localhost:3000",
            format!("set EXTERNAL_URL={fix_value} in Botpress's environment"),
        );
        if gate.is_none() {
            a.bad(
                Status::Fail,
                "bpgate has no external_url",
                "set EXTERNAL_URL (bpgate's external_url) to the public https URL",
            );
        }
        return a.done();
    };
    a.note(format!("Botpress {src}={}", url_secrets(bp_url)));
    if src == "EXTERNAL_URL" && i.bp.env_from == EnvFrom::Process {
        a.bad(
            Status::Warn,
            "read from this process's environment (no --botpress-env), the same variable bpgate reads: a difference from Botpress's own cannot be seen",
            "pass Botpress's .env with --botpress-env",
        );
    }
    let parsed = parse_external_url(bp_url);
    match &parsed {
        Err(p) => {
            a.bad(
                Status::Fail,
                p.clone(),
                format!("set EXTERNAL_URL={fix_value} in Botpress's environment"),
            );
        }
        Ok((origin, _, _)) if !origin.starts_with("https://") => {
            a.bad(
                Status::Fail,
                "it is not https: cookies, license validation and links would use http",
                format!("set EXTERNAL_URL={fix_value} in Botpress's environment"),
            );
        }
        Ok(_) => {}
    }
    match gate {
        None => {
            a.bad(
                Status::Fail,
                "bpgate has no external_url",
                format!("set bpgate's external_url (EXTERNAL_URL) to {bp_url}"),
            );
        }
        Some(g) => {
            let same = match (&parsed, parse_external_url(g)) {
                (Ok((o1, _, p1)), Ok((o2, _, p2))) => *o1 == o2 && *p1 == p2,
                _ => false,
            };
            if !same {
                a.bad(
                    Status::Fail,
                    format!(
                        "bpgate's external_url is {g}: a mismatch breaks shortlinks and socket.io"
                    ),
                    format!("set EXTERNAL_URL={g} for Botpress too (both must be the same URL)"),
                );
            } else {
                a.note("equal to bpgate's external_url");
            }
        }
    }
    a.done()
}

fn redis(i: &Inputs<'_>) -> Finding {
    let bp = &i.bp;
    let mut a = Acc::new(item::REDIS);
    let url = bp.env("REDIS_URL");
    let cluster = bp.env_yn("CLUSTER_ENABLED");
    let fix_url = "set REDIS_URL=redis://HOST:6379 (same value on every node)";
    if several_nodes(i) {
        a.note(format!("bpgate has {} nodes", i.loaded.derived.nodes.len()));
        match url {
            Some(u) => a.note(format!("REDIS_URL={}", url_secrets(u))),
            None => a.bad(
                Status::Fail,
                "REDIS_URL is unset: nodes cannot share state",
                fix_url,
            ),
        };
        if cluster {
            a.note("CLUSTER_ENABLED=true");
        } else {
            a.bad(
                Status::Fail,
                "CLUSTER_ENABLED is not true",
                "set CLUSTER_ENABLED=true on every node",
            );
        }
    } else if cluster && url.is_none() {
        a.bad(
            Status::Fail,
            "CLUSTER_ENABLED=true without REDIS_URL: Botpress kills the server",
            fix_url,
        );
    } else {
        a.note("one node: Redis is not needed");
        if let Some(u) = url {
            a.note(format!("REDIS_URL={}", url_secrets(u)));
        }
    }
    match bp.env("BP_REDIS_SCOPE") {
        Some(s) => a.note(format!("BP_REDIS_SCOPE={s}")),
        None if url.is_some() => a.note(
            "BP_REDIS_SCOPE unset (set it to prod/staging only if environments share one Redis)",
        ),
        None => &mut a,
    };
    a.done()
}

/// How Botpress's own `httpServer.cors` stands.
struct BpCors {
    /// HTTP CORS is on: `if (config.cors?.enabled) app.use(cors(config.cors))`.
    enabled: bool,
    /// `enabled` is absent from a config file that was given (so HTTP CORS is off).
    enabled_missing: bool,
    origin: Option<String>,
    /// HTTP cross-origin requests are restricted (CORS off, or an origin other than `*`).
    restricted: bool,
    /// `cors({credentials})` sends the header only for `true`.
    credentials: bool,
    /// socket.io applies `httpServer.cors || {origin:'*'}` ignoring `enabled`: without an origin
    /// it answers any.
    socket_any: bool,
}

fn bp_cors(i: &Inputs<'_>) -> BpCors {
    let raw = i.bp.cfg("httpServer.cors.enabled");
    let enabled_missing = i.bp.config_given && matches!(raw, None | Some(Value::Null));
    let enabled = match raw {
        // Botpress parses the file without schema defaults: only a generated file has `true`.
        None | Some(Value::Null) => !i.bp.config_given,
        v => js_truthy(v),
    };
    let origin = match i.bp.cfg("httpServer.cors.origin") {
        Some(Value::String(s)) if !s.is_empty() => Some(s.clone()),
        Some(Value::Array(a)) if !a.is_empty() => Some(
            a.iter()
                .map(|x| x.as_str().unwrap_or("?").to_string())
                .collect::<Vec<_>>()
                .join(","),
        ),
        _ => None,
    };
    let wildcard = origin
        .as_deref()
        .is_none_or(|o| o.split(',').any(|x| x.trim() == "*"));
    BpCors {
        enabled,
        enabled_missing,
        restricted: !enabled || !wildcard,
        origin,
        credentials: i.bp.cfg("httpServer.cors.credentials") == Some(&Value::Bool(true)),
        socket_any: wildcard,
    }
}

fn gate_wildcard(c: &crate::config::Cors) -> bool {
    c.origins.iter().any(|o| o.trim() == "*")
}

/// Whether cross-origin requests are restricted by bpgate or by Botpress.
fn cors_restricted(i: &Inputs<'_>) -> bool {
    let g = &i.loaded.config.cors;
    (g.enabled && !gate_wildcard(g)) || (!g.enabled && bp_cors(i).restricted)
}

fn cors(i: &Inputs<'_>) -> Finding {
    let g = &i.loaded.config.cors;
    let b = bp_cors(i);
    let mut a = Acc::new(item::CORS);
    if g.enabled && gate_wildcard(g) {
        a.bad(
            Status::Fail,
            format!(
                "bpgate cors.origins contains `*`{}",
                if g.credentials {
                    " with credentials: any site can make authenticated requests"
                } else {
                    ""
                }
            ),
            "set BPGATE_CORS_ORIGINS to your own origins, e.g. https://app.example.com",
        );
    } else if g.enabled {
        a.note(if g.origins.is_empty() {
            "bpgate restricts CORS to the public origin (socket.io included)".to_string()
        } else {
            format!(
                "bpgate restricts CORS to {} (socket.io included)",
                g.origins.join(", ")
            )
        });
    } else if b.restricted {
        a.note(match &b.origin {
            _ if b.enabled_missing => "bpgate CORS is off; Botpress's httpServer.cors.enabled is missing from its config, so its HTTP CORS is off (only a config Botpress generated has it on)".into(),
            _ if !b.enabled => "bpgate CORS is off; Botpress httpServer.cors.enabled=false".into(),
            Some(o) => format!("bpgate CORS is off; Botpress httpServer.cors.origin={o}"),
            None => "bpgate CORS is off; Botpress restricts CORS".to_string(),
        });
        if b.socket_any {
            a.bad(
                Status::Warn,
                "socket.io still answers any origin: it applies httpServer.cors without looking at `enabled`, and without an origin that is `*`",
                "set httpServer.cors.origin to your origin, or turn bpgate's CORS on (cors.enabled = true)",
            );
        }
    } else {
        a.bad(
            Status::Fail,
            format!(
                "bpgate CORS is off and Botpress allows any origin{}",
                if b.credentials {
                    " with credentials"
                } else {
                    ""
                }
            ),
            "set bpgate cors.enabled=true with BPGATE_CORS_ORIGINS=https://app.example.com (or httpServer.cors.origin in botpress.config.json)",
        );
    }
    a.done()
}

fn jwt_cookie(i: &Inputs<'_>) -> Finding {
    let mut a = Acc::new(item::JWT_COOKIE);
    let on = yn_value(i.bp.cfg("jwtToken.useCookieStorage"));
    if !on {
        a.bad(
            Status::Warn,
            "jwtToken.useCookieStorage is false: the admin token sits in localStorage, readable by any script",
            "set BP_CONFIG_JWTTOKEN_USECOOKIESTORAGE=true (jwtToken.useCookieStorage) once CORS is restricted",
        );
        return a.done();
    }
    a.note("jwtToken.useCookieStorage is true");
    if !cors_restricted(i) {
        a.bad(
            Status::Fail,
            "cookie storage with an unrestricted CORS policy lets other sites send the cookie",
            "restrict CORS first (see the CORS item)",
        );
        return a.done();
    }
    let g = &i.loaded.config.cors;
    if g.enabled && !g.origins.is_empty() && !g.credentials {
        a.bad(
            Status::Warn,
            "bpgate allows other origins but cors.credentials=false: they will not send the cookie",
            "set bpgate cors.credentials = true if those origins call Botpress's API",
        );
    }
    let b = bp_cors(i);
    if !g.enabled && b.enabled && b.origin.is_some() && !b.credentials {
        a.bad(
            Status::Warn,
            "Botpress allows another origin but httpServer.cors.credentials is false",
            "set httpServer.cors.credentials=true (BP_CONFIG_HTTPSERVER_CORS_CREDENTIALS=true)",
        );
    }
    a.done()
}

fn lang_server(i: &Inputs<'_>) -> Finding {
    match i.bp.external_nlu_server() {
        Some(Some(ep)) => {
            return one(
                item::LANG_SERVER,
                Status::Manual,
                format!(
                    "nluServer.autoStart is false: Botpress uses the NLU server at {} and passes it no languageSources",
                    url_secrets(&ep)
                ),
                "check the language server configured on that NLU server (its --languageURL / languageSources), not nlu.json".into(),
            )
        }
        Some(None) => {
            return one(
                item::LANG_SERVER,
                Status::Warn,
                "nluServer.autoStart is false without nluServer.endpoint: Botpress starts no NLU server and has none to call".into(),
                "set nluServer.endpoint in nlu.json (BP_MODULE_NLU_NLUSERVER_ENDPOINT), or nluServer.autoStart = true".into(),
            )
        }
        None => {}
    }
    let (eps, src) = i.bp.language_endpoints();
    let public: Vec<&String> = eps.iter().filter(|e| e.contains("botpress.io")).collect();
    let shown = eps
        .iter()
        .map(|e| url_secrets(e))
        .collect::<Vec<_>>()
        .join(", ");
    if public.is_empty() {
        one(
            item::LANG_SERVER,
            Status::Pass,
            format!("{src}: {shown}"),
            String::new(),
        )
    } else {
        one(
            item::LANG_SERVER,
            Status::Warn,
            format!("{src}: {shown} is Botpress's public, rate-limited server"),
            "run `./bp lang` (port 3100) and set languageSources to [{\"endpoint\":\"http://LANG_HOST:3100\"}] in data/global/config/nlu.json".into(),
        )
    }
}

fn https(i: &Inputs<'_>) -> Finding {
    let mut a = Acc::new(item::HTTPS);
    let c = &i.cert;
    let fix_cert = "set BPGATE_TLS_CERT and BPGATE_TLS_KEY (tls.cert, tls.key) to your certificate chain and key";
    let info = match &c.info {
        Ok(info) => info,
        Err(e) => {
            a.bad(
                Status::Fail,
                format!("no usable certificate: {e}"),
                fix_cert,
            );
            return a.done();
        }
    };
    a.note(format!("{} ({} in chain)", info.subject, info.chain_len));
    if info.development {
        a.bad(
            Status::Fail,
            "this is bpgate's development certificate",
            fix_cert,
        );
    }
    let days = (info.not_after - i.now).div_euclid(86_400);
    if info.expired(i.now) {
        a.bad(
            Status::Fail,
            format!("expired on {}", info.not_after_rfc3339()),
            "renew the certificate",
        );
    } else if days < FAIL_DAYS {
        a.bad(
            Status::Fail,
            format!("expires in {days} day(s), {}", info.not_after_rfc3339()),
            "renew the certificate now",
        );
    } else if days < WARN_DAYS {
        a.bad(
            Status::Warn,
            format!("expires in {days} days, {}", info.not_after_rfc3339()),
            "renew the certificate before it expires",
        );
    } else {
        a.note(format!("valid until {}", info.not_after_rfc3339()));
    }
    match &i.loaded.derived.public_host {
        Some(h) if info.matches_host(h) => {
            a.note(format!("names {h}"));
        }
        Some(h) => {
            a.bad(
                Status::Fail,
                format!(
                    "does not name {h} (it names {})",
                    info.dns_names
                        .iter()
                        .chain(&info.ip_names)
                        .cloned()
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
                "install a certificate whose subjectAltName includes the EXTERNAL_URL host",
            );
        }
        None => {
            a.bad(
                Status::Warn,
                "cannot match a host: bpgate's external_url is unset",
                "set EXTERNAL_URL for bpgate",
            );
        }
    }
    if let Some(p) = &c.chain_problem {
        a.bad(
            Status::Fail,
            format!("chain not well-formed: {p}"),
            "put the leaf first, then each intermediate in order, in the tls.cert file",
        );
    }
    if info.self_signed && !info.development {
        a.bad(
            Status::Warn,
            "self-signed: browsers will not trust it unless it is installed",
            "use a certificate from a public CA (e.g. Let's Encrypt) unless every client trusts this one",
        );
    } else if !info.development {
        if let Err(e) = &c.trust {
            a.bad(
                Status::Warn,
                format!("does not chain to a system-trusted CA ({e}); fine for a private CA your clients trust"),
                "include the intermediates, or make sure clients trust your private CA",
            );
        }
    }
    a.done()
}

fn audit(i: &Inputs<'_>) -> Finding {
    let mut a = Acc::new(item::AUDIT);
    let au = &i.loaded.config.audit;
    if !au.enabled {
        a.bad(
            Status::Fail,
            "bpgate audit.enabled=false: no record of who did what",
            "set audit.enabled = true in bpgate's config",
        );
    } else {
        match &i.audit_dir {
            Ok(()) => a.note(format!("bpgate writes the trail to {}", au.dir.display())),
            Err(e) => a.bad(
                Status::Fail,
                format!("audit.dir {} is not writable: {e}", au.dir.display()),
                "create the directory and give bpgate's user write access, or set BPGATE_AUDIT_DIR",
            ),
        };
    }
    // The two trails complement each other: bpgate sees every request (refused ones included)
    // with its IP and status; Botpress's bp:audit lines carry the operation, resource and role.
    match i.bp.env("DEBUG") {
        Some(d) if d.contains("bp:audit") => a.note(
            "Botpress DEBUG includes bp:audit too: its lines (operation, resource, role) complement bpgate's",
        ),
        _ => a.note(
            "Botpress's bp:audit:* scope (DEBUG or data/global/debug.json) adds operation, resource and role, which bpgate cannot see",
        ),
    };
    a.done()
}

fn sticky(i: &Inputs<'_>) -> Finding {
    let transports = i.bp.socket_transports();
    let polling = transports.iter().any(|t| t == "polling");
    let n = i.loaded.derived.nodes.len();
    let s = &i.loaded.config.sticky;
    let t = transports.join(",");
    if n <= 1 {
        return one(
            item::STICKY,
            Status::Pass,
            format!("one node: not needed (socketTransports {t})"),
            String::new(),
        );
    }
    if !polling {
        return one(
            item::STICKY,
            Status::Pass,
            format!("{n} nodes, socketTransports {t}: websocket only needs no stickiness (Botpress >= 12.26.8 finds a webchat session on any node)"),
            String::new(),
        );
    }
    if !s.enabled {
        return one(
            item::STICKY,
            Status::Fail,
            format!(
                "{n} nodes with polling in socketTransports ({t}) but bpgate sticky.enabled=false"
            ),
            "set sticky.enabled = true and BPGATE_STICKY_SECRET=$(openssl rand -base64 32)".into(),
        );
    }
    if s.secret.is_empty() {
        return one(
            item::STICKY,
            Status::Fail,
            format!("{n} nodes with polling ({t}) but no sticky.secret: cookies cannot be signed"),
            "set BPGATE_STICKY_SECRET=$(openssl rand -base64 32), the same on every bpgate replica"
                .into(),
        );
    }
    if s.sid_map_max_entries == 0 && s.fallback == StickyFallback::Load {
        return one(
            item::STICKY,
            Status::Warn,
            format!(
                "{n} nodes with polling ({t}), sticky.sid_map_max_entries = 0 and fallback = \"load\": clients that keep no cookie (a webchat iframe where third-party cookies are blocked, server-side socket.io clients) land on another node at every poll"
            ),
            "keep the engine.io session map on (sticky.sid_map_max_entries, default 100000) or set sticky.fallback = \"client-ip\"".into(),
        );
    }
    let cookieless = match (s.sid_map_max_entries > 0, s.fallback) {
        (true, StickyFallback::Load) => "by their engine.io session id, new visitors by load",
        (true, StickyFallback::ClientIp) => {
            "by their engine.io session id, new visitors by client IP"
        }
        (false, _) => "by client IP",
    };
    one(
        item::STICKY,
        Status::Pass,
        format!(
            "{n} nodes, polling allowed, bpgate sticky cookie `{}` signed; cookieless clients {cookieless}",
            s.cookie_name
        ),
        String::new(),
    )
}

fn file_logs(i: &Inputs<'_>) -> Finding {
    if js_truthy(i.bp.cfg("logs.fileOutput.enabled")) {
        one(
            item::FILE_LOGS,
            Status::Pass,
            format!(
                "logs.fileOutput.enabled=true (folder {})",
                i.bp.cfg_str("logs.fileOutput.folder").unwrap_or("./")
            ),
            String::new(),
        )
    } else {
        one(
            item::FILE_LOGS,
            Status::Warn,
            "logs.fileOutput.enabled is false: logs only go to the database and stdout".into(),
            "set BP_CONFIG_LOGS_FILEOUTPUT_ENABLED=true (logs.fileOutput.enabled)".into(),
        )
    }
}

fn base_path(i: &Inputs<'_>) -> Finding {
    let gate = &i.loaded.derived.base_path;
    if i.loaded.config.base_path.mode == BasePathMode::Strip {
        return one(
            item::BASE_PATH,
            Status::Fail,
            STRIP_EVIDENCE.into(),
            STRIP_FIX.into(),
        );
    }
    let bp_path =
        i.bp.external_url()
            .and_then(|(u, _)| parse_external_url(u).ok())
            .map(|(_, _, p)| p)
            .unwrap_or_default();
    let show = |p: &str| {
        if p.is_empty() {
            "/".to_string()
        } else {
            p.to_string()
        }
    };
    if *gate == bp_path {
        one(
            item::BASE_PATH,
            Status::Pass,
            format!("bpgate and Botpress both serve under {}", show(gate)),
            String::new(),
        )
    } else {
        one(
            item::BASE_PATH,
            Status::Fail,
            format!(
                "bpgate serves under {} but Botpress's EXTERNAL_URL path is {}",
                show(gate),
                show(&bp_path)
            ),
            "give Botpress and bpgate the same EXTERNAL_URL (its path is the base path); remove bpgate's base_path".into(),
        )
    }
}

fn auth(i: &Inputs<'_>) -> Finding {
    let strategies =
        i.bp.cfg("pro.collaboratorsAuthStrategies")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(Value::as_str)
                    .collect::<Vec<_>>()
                    .join(", ")
            })
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "default (basic)".into());
    one(
        item::AUTH,
        Status::Manual,
        format!("pro.collaboratorsAuthStrategies: {strategies}"),
        "consider LDAP, SAML or OAuth2 in authStrategies and pro.collaboratorsAuthStrategies"
            .into(),
    )
}

fn server_config(i: &Inputs<'_>) -> Finding {
    if i.bp.env_yn("BP_DISABLE_SERVER_CONFIG") {
        one(
            item::SERVER_CONFIG,
            Status::Pass,
            "BP_DISABLE_SERVER_CONFIG=true".into(),
            String::new(),
        )
    } else {
        one(
            item::SERVER_CONFIG,
            Status::Warn,
            "the checklist's server-config page returns botpress.config.json, appSecret included"
                .into(),
            "set BP_DISABLE_SERVER_CONFIG=true once the server is set up".into(),
        )
    }
}

/// One entry of an Express `trust proxy` list, as `proxy-addr` compiles it: a name, an address,
/// or `address/prefix` (or `address/netmask`). `Err` for what Express refuses at start.
fn trust_entry(e: &str) -> Result<Vec<ipnet::IpNet>, ()> {
    let net = |s: &str| s.parse::<ipnet::IpNet>().map_err(|_| ());
    match e {
        "loopback" => Ok(vec![net("127.0.0.0/8")?, net("::1/128")?]),
        "linklocal" => Ok(vec![net("169.254.0.0/16")?, net("fe80::/10")?]),
        "uniquelocal" => Ok(vec![
            net("10.0.0.0/8")?,
            net("172.16.0.0/12")?,
            net("192.168.0.0/16")?,
            net("fc00::/7")?,
        ]),
        _ => {
            if let Ok(ip) = e.parse::<std::net::IpAddr>() {
                return Ok(vec![ipnet::IpNet::from(ip)]);
            }
            if let Ok(n) = e.parse::<ipnet::IpNet>() {
                return Ok(vec![n]);
            }
            let (ip, mask) = e.split_once('/').ok_or(())?;
            let ip: std::net::IpAddr = ip.parse().map_err(|_| ())?;
            let mask: std::net::IpAddr = mask.parse().map_err(|_| ())?;
            let prefix = ipnet::ip_mask_to_prefix(mask).map_err(|_| ())?;
            Ok(vec![ipnet::IpNet::new(ip, prefix).map_err(|_| ())?])
        }
    }
}

const TRUST_FIX_REMOTE: &str = "set REVERSE_PROXY=loopback,<bpgate's address as the nodes see it> (loopback for the Studio behind core, bpgate's address for core)";

fn trust_proxy(i: &Inputs<'_>) -> Finding {
    let mut a = Acc::new(item::TRUST_PROXY);
    let nodes_local = i
        .loaded
        .derived
        .nodes
        .iter()
        .all(|n| is_loopback_authority(&n.authority));
    let fix = if nodes_local {
        "set REVERSE_PROXY=loopback on Botpress (bpgate reaches it over loopback)"
    } else {
        TRUST_FIX_REMOTE
    };
    let v = match i.bp.env("REVERSE_PROXY") {
        None => {
            a.bad(
                Status::Fail,
                "REVERSE_PROXY=unset: Botpress records bpgate's IP for every user (audit, last_ip, rate limit) and ignores X-Forwarded-Proto, so it sees http (secure session cookies are not set)",
                fix,
            );
            return a.done();
        }
        Some(v) => v,
    };
    match yn_opt(v) {
        Some(true) => {
            a.bad(
                Status::Warn,
                format!("REVERSE_PROXY={v} trusts every hop: the left-most X-Forwarded-For, which the client controls, becomes the user's IP"),
                fix,
            );
            return a.done();
        }
        Some(false) => {
            a.bad(
                Status::Fail,
                format!("REVERSE_PROXY={v}: Botpress records bpgate's IP for every user (audit, last_ip, rate limit) and ignores X-Forwarded-Proto"),
                fix,
            );
            return a.done();
        }
        None => {}
    }
    let entries: Vec<&str> = v.split(',').map(str::trim).collect();
    if let Some(n) = entries
        .iter()
        .find(|e| !e.is_empty() && e.bytes().all(|b| b.is_ascii_digit()))
    {
        a.bad(
            Status::Fail,
            format!("REVERSE_PROXY={v}: `{n}` is not a hop count to Botpress (it reads `trust proxy` from a string, so Express takes it as the address 0.0.0.{n}); nothing is trusted and bpgate's IP is recorded for every user"),
            fix,
        );
        return a.done();
    }
    let mut nets = Vec::new();
    for e in &entries {
        match trust_entry(e) {
            Ok(n) => nets.extend(n),
            Err(()) => {
                a.bad(
                    Status::Fail,
                    format!("REVERSE_PROXY={v}: `{e}` is not an address, a CIDR or loopback/linklocal/uniquelocal; Express refuses it and Botpress does not start"),
                    fix,
                );
                return a.done();
            }
        }
    }
    a.note(format!("REVERSE_PROXY={v}"));
    let lo: std::net::IpAddr = std::net::Ipv4Addr::LOCALHOST.into();
    if !nets.iter().any(|n| n.contains(&lo)) {
        if nodes_local {
            a.bad(
                Status::Fail,
                "bpgate reaches the nodes over loopback, which the list does not trust: Botpress records 127.0.0.1 for every user",
                fix,
            );
        } else {
            a.bad(
                Status::Warn,
                "loopback is not trusted: the Studio runs behind core on 127.0.0.1 and records that address instead of the user's",
                TRUST_FIX_REMOTE,
            );
        }
    }
    a.done()
}

fn is_loopback_authority(a: &str) -> bool {
    let host = a
        .rsplit_once(':')
        .map(|(h, _)| h)
        .unwrap_or(a)
        .trim_start_matches('[')
        .trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

fn direct_cors(i: &Inputs<'_>) -> Finding {
    let b = bp_cors(i);
    if b.restricted && !b.socket_any {
        return one(
            item::DIRECT_CORS,
            Status::Pass,
            if b.enabled {
                format!("httpServer.cors.origin={}", b.origin.unwrap_or_default())
            } else {
                "httpServer.cors.enabled=false".into()
            },
            String::new(),
        );
    }
    if i.loaded
        .derived
        .nodes
        .iter()
        .all(|n| is_loopback_authority(&n.authority))
    {
        return one(
            item::DIRECT_CORS,
            Status::Pass,
            "Botpress allows any origin, but every node is on loopback: only bpgate reaches it"
                .into(),
            String::new(),
        );
    }
    one(
        item::DIRECT_CORS,
        Status::Warn,
        "Botpress's httpServer.cors (or socket.io, which ignores cors.enabled) allows any origin; anyone reaching a node without bpgate gets that policy".into(),
        "firewall the nodes so only bpgate reaches them, or set httpServer.cors.origin to your origin".into(),
    )
}

fn server_diag(i: &Inputs<'_>) -> Finding {
    if i.bp.env_yn("BP_DISABLE_SERVER_DIAG") {
        one(
            item::SERVER_DIAG,
            Status::Pass,
            "BP_DISABLE_SERVER_DIAG=true".into(),
            String::new(),
        )
    } else {
        one(
            item::SERVER_DIAG,
            Status::Warn,
            "the admin UI can generate Botpress's diag report (config files included)".into(),
            "set BP_DISABLE_SERVER_DIAG=true; use `bpgate diag` from the host instead".into(),
        )
    }
}

/// Why `strip` is refused for Botpress (check and production mode say the same).
pub const STRIP_EVIDENCE: &str = "base_path.mode = strip cannot serve Botpress v12: its pages, API calls, socket.io and /s/ redirects use root-relative URLs under its own EXTERNAL_URL path, which bpgate does not rewrite in bodies";
pub const STRIP_FIX: &str = "set base_path.mode = \"preserve\" (BPGATE_BASE_PATH_MODE=preserve) and give Botpress the same EXTERNAL_URL as bpgate, path included";

fn audit_identity(i: &Inputs<'_>) -> Finding {
    let mut a = Acc::new(item::AUDIT_IDENTITY);
    let au = &i.loaded.config.audit;
    match (au.jwt_secret.is_empty(), i.bp.app_secret()) {
        (true, _) => {
            a.bad(
                Status::Warn,
                "audit.jwt_secret is unset: tokens are read but not verified, users are recorded as jwt_unverified",
                "set BPGATE_JWT_SECRET to Botpress's appSecret (botpress.config.json)",
            );
        }
        // Neither secret is ever printed.
        (false, Some((secret, src))) if secret == au.jwt_secret.expose() => {
            a.note(format!("audit.jwt_secret equals Botpress's {src}"));
        }
        (false, Some((_, src))) => {
            a.bad(
                Status::Fail,
                format!("audit.jwt_secret differs from Botpress's {src}: every signed token would be logged jwt_invalid"),
                format!("set BPGATE_JWT_SECRET to Botpress's {src}"),
            );
        }
        (false, None) if i.bp.config_given => {
            a.note("Botpress's config has no appSecret yet (Botpress generates one at its first start): not compared");
        }
        (false, None) => {
            a.note("audit.jwt_secret is set; not compared (no --botpress-config)");
        }
    }
    let cookie = yn_value(i.bp.cfg("jwtToken.useCookieStorage"));
    let want = if cookie {
        JwtSource::Cookie
    } else {
        JwtSource::Header
    };
    if au.jwt_source == want {
        a.note(format!(
            "audit.jwt_source = {} as Botpress reads it (jwtToken.useCookieStorage={cookie})",
            want.as_str()
        ));
    } else {
        a.bad(
            Status::Fail,
            format!(
                "audit.jwt_source = {} but Botpress reads the token only from {} (jwtToken.useCookieStorage={cookie}): the trail would name the wrong user, or none",
                au.jwt_source.as_str(),
                if cookie { "the jwtToken cookie" } else { "Authorization: Bearer" }
            ),
            format!("set BPGATE_AUDIT_JWT_SOURCE={} (audit.jwt_source)", want.as_str()),
        );
    }
    external_auth(i, &mut a);
    a.done()
}

/// `audit.external_auth` against Botpress's `pro.externalAuth` (`core/app/server.ts`,
/// `_getExternalAuthConfig`, `decodeExternalToken`). Keys are compared, never printed.
fn external_auth(i: &Inputs<'_>, a: &mut Acc) {
    let ea = &i.loaded.config.audit.external_auth;
    let bp = &i.bp;
    let on = js_truthy(bp.cfg("pro.externalAuth.enabled"));
    const COPY: &str = "copy pro.externalAuth's publicKey (or data/global/end_users_auth.pub), algorithms, issuer and audience to [audit.external_auth]";
    match (on, ea.enabled()) {
        (false, false) => return,
        (true, false) => {
            a.bad(
                Status::Warn,
                "Botpress verifies webchat end-user tokens (pro.externalAuth.enabled) but audit.external_auth has no key: end users are not named",
                COPY,
            );
            return;
        }
        (false, true) if bp.config_given => {
            a.bad(
                Status::Warn,
                "audit.external_auth is set but Botpress's pro.externalAuth is not enabled: Botpress ignores X-BP-ExternalAuth, so the trail would name end users Botpress does not",
                "enable pro.externalAuth in Botpress, or remove [audit.external_auth]",
            );
            return;
        }
        (false, true) => {
            a.note("audit.external_auth is set; not compared (no --botpress-config)");
            return;
        }
        (true, true) => {}
    }
    if js_truthy(bp.cfg("pro.externalAuth.jwksClient")) {
        a.bad(
            Status::Warn,
            "Botpress takes the end-user key from pro.externalAuth.jwksClient, which bpgate does not fetch",
            "give [audit.external_auth] the PEM of the JWKS key Botpress uses (keyId)",
        );
    }
    let mut differs = Vec::new();
    match bp.cfg("pro.externalAuth.algorithms") {
        Some(Value::Array(list)) => {
            let mut theirs: Vec<&str> = list.iter().filter_map(Value::as_str).collect();
            let mut ours: Vec<&str> = ea.algorithms.iter().map(String::as_str).collect();
            theirs.sort_unstable();
            ours.sort_unstable();
            if theirs != ours {
                differs.push(format!("algorithms {ours:?} vs Botpress's {theirs:?}"));
            }
        }
        _ => {
            a.note("Botpress sets no pro.externalAuth.algorithms (jsonwebtoken then picks them from the key): algorithms not compared");
        }
    }
    for (key, ours) in [("issuer", &ea.issuer), ("audience", &ea.audience)] {
        let theirs = bp.cfg(&format!("pro.externalAuth.{key}"));
        let same = match theirs {
            None | Some(Value::Null) => ours.is_none(),
            Some(Value::String(t)) if t.is_empty() => ours.is_none(),
            Some(Value::String(t)) => ours.as_deref() == Some(t.as_str()),
            Some(_) => false,
        };
        if !same {
            differs.push(format!(
                "{key} {ours:?} vs Botpress's {}",
                theirs.map_or("unset".into(), Value::to_string)
            ));
        }
    }
    match bp.cfg_str("pro.externalAuth.publicKey") {
        // Botpress refuses it and turns external auth off (`_getExternalAuthConfig`).
        Some(k) if !k.is_empty() && k.len() < 128 => {
            a.bad(
                Status::Warn,
                "Botpress's pro.externalAuth.publicKey is shorter than 128 characters, which Botpress refuses: its external auth is off",
                "put the key in data/global/end_users_auth.pub and remove publicKey, or use a longer key",
            );
        }
        Some(k) if !k.is_empty() => {
            let valid = ea
                .algorithms
                .iter()
                .all(|x| ExternalAuth::ALGORITHMS.contains(&x.as_str()));
            let theirs = valid
                .then(|| ExternalKey::parse(k.as_bytes(), &ea.algorithms).ok())
                .flatten();
            if theirs.is_none() || theirs != i.loaded.derived.external_auth {
                differs.push(
                    "the key differs from pro.externalAuth.publicKey (neither printed)".into(),
                );
            } else {
                a.note("audit.external_auth's key equals Botpress's pro.externalAuth.publicKey");
            }
        }
        _ => {
            a.note("Botpress reads its end-user key from data/global/end_users_auth.pub: key not compared");
        }
    }
    if differs.is_empty() {
        a.note("audit.external_auth matches Botpress's pro.externalAuth");
    } else {
        a.bad(
            Status::Fail,
            format!(
                "audit.external_auth differs from Botpress's pro.externalAuth: {}; end users would be named where Botpress refuses them, or not where it accepts them",
                differs.join(", ")
            ),
            COPY,
        );
    }
}

fn config_source(i: &Inputs<'_>) -> Finding {
    let bp = &i.bp;
    let mut a = Acc::new(item::CONFIG_SOURCE);
    match &bp.env_from {
        EnvFrom::File(p) => a.note(format!(
            "environment: {p} (bpgate's own environment not used)"
        )),
        EnvFrom::Process => a.note("environment: this process's (no --botpress-env)"),
    };
    match &bp.source {
        ConfigSource::Disk => {
            a.note(if bp.config_given {
                "BPFS on disk: the files given are what Botpress reads"
            } else {
                "no --botpress-config: the defaults of a config Botpress generates are assumed"
            });
        }
        ConfigSource::Database { found, missing } => {
            if !found.is_empty() {
                a.note(format!(
                    "BPFS_STORAGE=database: read {} from the database (srv_ghost_files), as Botpress does",
                    found.join(", ")
                ));
            }
            if !missing.is_empty() {
                a.bad(
                    Status::Warn,
                    format!("{} is not in the database: Botpress writes its defaults there at start (it copies data/global from disk only while the database holds no global file); the file given was checked", missing.join(", ")),
                    "start Botpress once, or push the file with `./bp pushfile`, then check again",
                );
            }
        }
        ConfigSource::DatabaseUnread(why) => {
            a.bad(
                Status::Warn,
                format!("BPFS_STORAGE=database: Botpress reads botpress.config.json and nlu.json from the database, which could not be read ({why}); the files given are NOT necessarily the ones Botpress uses"),
                "make DATABASE_URL reachable from here, or fetch the files with `./bp pullfile --file global/botpress.config.json` (and global/config/nlu.json) and pass those",
            );
        }
    }
    for n in &bp.notes {
        a.note(n.clone());
    }
    a.done()
}
