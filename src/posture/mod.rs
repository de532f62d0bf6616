//! Production posture: `bpgate check` (one result per Production Checklist item), `bpgate diag`
//! (a `diagnostic.txt` with probes and obfuscated configuration) and the production-mode gate
//! ([`production_failures`]).
//!
//! The checks are pure ([`check::check`] over [`Inputs`]); everything that touches the disk or the
//! network happens in [`gather`] or in [`diag`], so tests can feed any combination.

pub mod botpress;
pub mod check;
pub mod diag;
pub mod dotenv;
pub mod obfuscate;

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use serde::Serialize;

pub use botpress::{BotpressView, ConfigSource, EnvFrom};
pub use check::item;

use crate::config::Loaded;
use crate::tls::CertInfo;

/// Output format of `bpgate check`.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Format {
    #[default]
    Text,
    Json,
}

/// Files describing the Botpress side. Without `--botpress-env`, this process's environment is
/// taken as Botpress's; without the JSON files, Botpress's generated defaults are assumed.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct BotpressFiles {
    /// Botpress's `.env` file (in Botpress's folder). When given, it alone is Botpress's
    /// environment: bpgate's own process environment is never mixed in.
    #[arg(long, value_name = "PATH")]
    pub botpress_env: Option<PathBuf>,
    /// Botpress's `data/global/botpress.config.json` on disk. With `BPFS_STORAGE=database`
    /// the copy in the database is read instead when `DATABASE_URL` is reachable.
    #[arg(long, value_name = "PATH")]
    pub botpress_config: Option<PathBuf>,
    /// The NLU module config, `data/global/config/nlu.json` (read from the database likewise).
    #[arg(long, value_name = "PATH")]
    pub nlu_config: Option<PathBuf>,
}

#[derive(clap::Args, Debug, Clone)]
pub struct CheckArgs {
    #[command(flatten)]
    pub files: BotpressFiles,
    /// `text` (a table) or `json`.
    #[arg(long, value_enum, default_value = "text")]
    pub format: Format,
    /// Timeout of the database read (`BPFS_STORAGE=database`).
    #[arg(long, value_name = "DURATION", default_value = "3s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
}

impl Default for CheckArgs {
    fn default() -> Self {
        CheckArgs {
            files: BotpressFiles::default(),
            format: Format::Text,
            timeout: Duration::from_secs(3),
        }
    }
}

#[derive(clap::Args, Debug, Clone)]
pub struct DiagArgs {
    /// Where to write the report.
    #[arg(long, value_name = "PATH", default_value = "diagnostic.txt")]
    pub out: PathBuf,
    #[command(flatten)]
    pub files: BotpressFiles,
    /// Timeout of each probe (connect, request, Redis, Postgres).
    #[arg(long, value_name = "DURATION", default_value = "3s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
}

impl Default for DiagArgs {
    fn default() -> Self {
        DiagArgs {
            out: PathBuf::from("diagnostic.txt"),
            files: BotpressFiles::default(),
            timeout: Duration::from_secs(3),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Pass,
    Warn,
    Fail,
    /// Cannot be verified from here; the evidence says what to look at.
    Manual,
}

impl Status {
    fn rank(self) -> u8 {
        match self {
            Status::Pass => 0,
            Status::Manual => 1,
            Status::Warn => 2,
            Status::Fail => 3,
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pass => "pass",
            Status::Warn => "warn",
            Status::Fail => "fail",
            Status::Manual => "manual",
        }
    }
}

/// One checklist item's result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    pub item: &'static str,
    pub status: Status,
    pub evidence: String,
    /// The exact change to make (env var or config key and value); empty when nothing to do.
    pub fix: String,
}

/// The certificate as `check` sees it.
#[derive(Debug, Clone)]
pub struct CertCheck {
    /// From [`crate::tls::load_pair`]: the leaf's details, or why the pair cannot be used.
    pub info: Result<CertInfo, String>,
    /// Set when the chain is not leaf-then-issuers in order.
    pub chain_problem: Option<String>,
    /// Whether the chain verifies against the system trust store.
    pub trust: Result<(), String>,
}

/// Everything the checks look at.
#[derive(Debug, Clone)]
pub struct Inputs<'a> {
    pub loaded: &'a Loaded,
    pub bp: BotpressView,
    pub cert: CertCheck,
    /// Result of a write test in `audit.dir`.
    pub audit_dir: Result<(), String>,
    /// Unix seconds.
    pub now: i64,
}

/// Runs every check on the inputs.
pub fn check(inputs: &Inputs<'_>) -> Vec<Finding> {
    check::check(inputs)
}

/// Variables Botpress reads (its diag's list plus the checklist's); without `--botpress-env`
/// these, and every `BP_*` and `EXPOSED_*` of the process, are taken from the process.
pub const BOTPRESS_ENV_NAMES: &[&str] = &[
    "PORT",
    "BP_HOST",
    "DATABASE_URL",
    "DATABASE_POOL",
    "EXTERNAL_URL",
    "NODE_PATH",
    "NODE_ENV",
    "NODE_EXTRA_CA_CERTS",
    "BPFS_STORAGE",
    "NATIVE_EXTENSIONS_DIR",
    "REDIS_URL",
    "REDIS_OPTIONS",
    "PRO_ENABLED",
    "CLUSTER_ENABLED",
    "AUTO_MIGRATE",
    "REVERSE_PROXY",
    "APP_DATA_PATH",
    "USE_REDIS_STATE",
    "VERBOSITY_LEVEL",
    "DEBUG",
    "PG_HOST",
    "PG_PORT",
    "PGSSLMODE",
    "SERVER_ID",
    "TZ",
    "LANG",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "NO_PROXY",
    "MESSAGING_ENDPOINT",
    "BP_PRODUCTION",
    "BP_REDIS_SCOPE",
    "BP_LICENSE_KEY",
    "BP_ADMIN_EMAIL",
    "BP_ADMIN_PASSWORD",
    "BP_DISABLE_SERVER_CONFIG",
    "BP_DISABLE_SERVER_DIAG",
    "BP_MODULE_NLU_LANGUAGESOURCES",
];

/// The global files as Botpress names them in `srv_ghost_files.file_path`.
pub const GHOST_CONFIG: &str = "data/global/botpress.config.json";
pub const GHOST_NLU: &str = "data/global/config/nlu.json";

/// Botpress's environment: the `.env` file alone when given, else this process's variables.
fn botpress_env(
    files: &BotpressFiles,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<(BTreeMap<String, String>, EnvFrom), String> {
    if let Some(p) = &files.botpress_env {
        let map = dotenv::parse(&read_text(p, "--botpress-env")?);
        return Ok((map, EnvFrom::File(p.display().to_string())));
    }
    let mut names: Vec<String> = BOTPRESS_ENV_NAMES.iter().map(|s| s.to_string()).collect();
    names.extend(
        std::env::vars_os()
            .filter_map(|(k, _)| k.into_string().ok())
            .filter(|k| k.starts_with("BP_") || k.starts_with("EXPOSED_")),
    );
    names.sort();
    names.dedup();
    let map = names
        .into_iter()
        .filter_map(|n| env(&n).map(|v| (n, v)))
        .collect();
    Ok((map, EnvFrom::Process))
}

/// `process.PROJECT_LOCATION`: the folder of `.env`, or three levels above
/// `data/global/botpress.config.json`.
fn project_dir(files: &BotpressFiles) -> Option<String> {
    if let Some(p) = &files.botpress_env {
        return std::fs::canonicalize(p)
            .ok()
            .and_then(|p| p.parent().map(|d| d.display().to_string()));
    }
    let c = std::fs::canonicalize(files.botpress_config.as_ref()?).ok()?;
    c.ends_with("data/global/botpress.config.json")
        .then(|| c.ancestors().nth(3).map(|d| d.display().to_string()))
        .flatten()
}

/// Reads Botpress's inputs: its environment, then (with `BPFS_STORAGE=database`) the global files
/// from the database when it can be read, else the files given. `Err` is a usage error (a file
/// given but unreadable or invalid).
pub async fn botpress_view(
    files: &BotpressFiles,
    env: &dyn Fn(&str) -> Option<String>,
    timeout: Duration,
) -> Result<BotpressView, String> {
    let (env_map, env_from) = botpress_env(files, env)?;
    let disk_text = match &files.botpress_config {
        Some(p) => Some(read_text(p, "--botpress-config")?),
        None => None,
    };
    let disk_nlu = match &files.nlu_config {
        Some(p) => Some(read_text(p, "--nlu-config")?),
        None => None,
    };
    let mut notes = Vec::new();
    // Botpress compares exactly: `Database` is disk storage to it.
    let bpfs_db = env_map.get("BPFS_STORAGE").map(String::as_str) == Some("database");
    let mut source = ConfigSource::Disk;
    let (mut config_text, mut config_from) = (disk_text.clone(), "--botpress-config");
    let (mut nlu_text, mut nlu_from) = (disk_nlu, "--nlu-config");
    if bpfs_db {
        source = match env_map.get("DATABASE_URL").filter(|u| !u.is_empty()) {
            None => ConfigSource::DatabaseUnread(
                "DATABASE_URL is unset: the files are in Botpress's SQLite database, which bpgate does not read".into(),
            ),
            Some(u) if !is_postgres_url(u) => ConfigSource::DatabaseUnread(
                "DATABASE_URL is an SQLite path, which bpgate does not read".into(),
            ),
            Some(u) => match diag::read_ghost_files(u, &env_map, timeout).await {
                Err(e) => ConfigSource::DatabaseUnread(obfuscate::url_secrets(&e)),
                Ok(rows) => {
                    let (mut found, mut missing) = (Vec::new(), Vec::new());
                    for (name, slot, from) in [
                        (GHOST_CONFIG, &mut config_text, &mut config_from),
                        (GHOST_NLU, &mut nlu_text, &mut nlu_from),
                    ] {
                        match rows.get(name) {
                            Some(t) => {
                                *slot = Some(t.clone());
                                *from = name;
                                found.push(name.to_string());
                            }
                            None => missing.push(name.to_string()),
                        }
                    }
                    ConfigSource::Database { found, missing }
                }
            },
        };
    }
    let lookup = |k: &str| env_map.get(k).cloned();
    let dir = project_dir(files);
    let mut view = BotpressView {
        env_from,
        source,
        ..Default::default()
    };
    view.env = env_map.clone();
    let cx = botpress::SubstitutionContext {
        project_dir: dir.as_deref(),
        is_production: view.is_production(),
        env: &lookup,
    };
    let (mut config, config_given) = match &config_text {
        Some(t) => {
            let (text, subs) = botpress::substitute(t, &cx);
            notes.extend(subs);
            let v = serde_json::from_str::<serde_json::Value>(&text).map_err(|e| {
                if text == *t {
                    format!("{config_from}: not valid JSON: {e}")
                } else {
                    format!("{config_from}: not valid JSON after Botpress's %VAR% substitution (Botpress would not start): {e}")
                }
            })?;
            (v, true)
        }
        None => (serde_json::Value::Object(Default::default()), false),
    };
    let (_, ignored) = botpress::apply_overrides(&mut config, &view.env);
    for k in ignored {
        notes.push(format!(
            "{k} is ignored by Botpress: its path is not a leaf of botpress.config.json's schema"
        ));
    }
    if let (Some(key), Some(serde_json::Value::Object(pro))) =
        (view.env("BP_LICENSE_KEY"), config.get_mut("pro"))
    {
        pro.insert("licenseKey".into(), serde_json::Value::String(key.into()));
    }
    view.config = config;
    view.config_given = config_given;
    view.disk_config = disk_text
        .as_deref()
        .and_then(|t| serde_json::from_str(t).ok());
    if disk_text.is_some()
        && view.disk_config.is_none()
        && !view.env_defined("PRO_ENABLED")
        && !view.env_defined("BP_CONFIG_PRO_ENABLED")
    {
        notes.push("botpress.config.json on disk is not plain JSON: Botpress's boot-time read of pro.enabled (require) would throw".into());
    }
    view.nlu = match &nlu_text {
        Some(t) => {
            let mut v: serde_json::Value =
                serde_json::from_str(t).map_err(|e| format!("{nlu_from}: not valid JSON: {e}"))?;
            botpress::apply_nlu_env(&mut v, &view.env);
            Some(v)
        }
        // nlu.json not given: Botpress still applies the environment to its defaults.
        None if view
            .env
            .keys()
            .any(|k| k.starts_with("BP_MODULE_NLU_") || k.starts_with("BP_NLU_")) =>
        {
            let mut v = serde_json::Value::Object(Default::default());
            botpress::apply_nlu_env(&mut v, &view.env);
            Some(v)
        }
        None => None,
    };
    view.notes = notes;
    Ok(view)
}

pub fn is_postgres_url(u: &str) -> bool {
    u.to_ascii_lowercase().starts_with("postgres")
}

fn read_text(p: &Path, flag: &str) -> Result<String, String> {
    std::fs::read_to_string(p).map_err(|e| format!("{flag} {}: {e}", p.display()))
}

/// Reads everything the checks need from disk (and the database, see [`botpress_view`]).
pub async fn gather<'a>(
    loaded: &'a Loaded,
    files: &BotpressFiles,
    env: &dyn Fn(&str) -> Option<String>,
    timeout: Duration,
) -> Result<Inputs<'a>, String> {
    let bp = botpress_view(files, env, timeout).await?;
    Ok(Inputs {
        loaded,
        bp,
        cert: cert_check(loaded),
        audit_dir: write_test(&loaded.config.audit.dir),
        now: now_secs(),
    })
}

/// A small runtime for the synchronous commands.
fn runtime() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))
}

pub fn now_secs() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

/// Loads bpgate's certificate pair and examines the chain.
pub fn cert_check(loaded: &Loaded) -> CertCheck {
    let t = &loaded.config.tls;
    let info = crate::tls::load_pair(&t.cert, &t.key)
        .map(|p| p.info)
        .map_err(|e| e.to_string());
    let chain: Vec<CertificateDer<'static>> = match CertificateDer::pem_file_iter(&t.cert) {
        Ok(it) => it.filter_map(Result::ok).collect(),
        Err(_) => Vec::new(),
    };
    let host = loaded.derived.public_host.clone().or_else(|| {
        info.as_ref()
            .ok()
            .and_then(|i| i.dns_names.first().cloned())
    });
    CertCheck {
        chain_problem: chain_problem(&chain),
        trust: system_trust(&chain, host.as_deref()),
        info,
    }
}

/// Each certificate must be issued by the next one (leaf first).
pub fn chain_problem(chain: &[CertificateDer<'_>]) -> Option<String> {
    let mut parsed = Vec::new();
    for (n, c) in chain.iter().enumerate() {
        match x509_parser::parse_x509_certificate(c.as_ref()) {
            Ok((_, x)) => parsed.push(x),
            Err(e) => return Some(format!("certificate #{} cannot be parsed: {e}", n + 1)),
        }
    }
    for (n, w) in parsed.windows(2).enumerate() {
        if w[0].issuer() != w[1].subject() {
            return Some(format!(
                "certificate #{} is issued by `{}` but #{} is `{}`",
                n + 1,
                w[0].issuer(),
                n + 2,
                w[1].subject()
            ));
        }
    }
    None
}

/// System trust bundle locations (Debian/Ubuntu, RHEL, Alpine/macOS); `SSL_CERT_FILE` first.
const CA_BUNDLES: &[&str] = &[
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/cert.pem",
];

/// The system trust store (the first bundle that has certificates, `SSL_CERT_FILE` first), plus
/// the PEM certificates of `extra` (Node's `NODE_EXTRA_CA_CERTS`). `Err` when nothing was found
/// or `extra` cannot be read.
pub fn trust_roots(extra: Option<&Path>) -> Result<rustls::RootCertStore, String> {
    let mut roots = rustls::RootCertStore::empty();
    let bundles = std::env::var("SSL_CERT_FILE")
        .ok()
        .into_iter()
        .chain(CA_BUNDLES.iter().map(|s| s.to_string()));
    for b in bundles {
        if let Ok(it) = CertificateDer::pem_file_iter(&b) {
            let (added, _) = roots.add_parsable_certificates(it.filter_map(Result::ok));
            if added > 0 {
                break;
            }
        }
    }
    if let Some(p) = extra {
        let it = CertificateDer::pem_file_iter(p).map_err(|e| format!("{}: {e}", p.display()))?;
        let (added, _) = roots.add_parsable_certificates(it.filter_map(Result::ok));
        if added == 0 {
            return Err(format!("{}: no certificate in it", p.display()));
        }
    }
    if roots.is_empty() {
        return Err("no system trust store found".into());
    }
    Ok(roots)
}

/// Verifies the chain against the system trust store with rustls's own verifier, so the answer
/// is the one a TLS client on this host would give.
pub fn system_trust(chain: &[CertificateDer<'_>], host: Option<&str>) -> Result<(), String> {
    let (leaf, rest) = chain.split_first().ok_or("no certificate")?;
    let roots = trust_roots(None)?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let verifier =
        rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
            .build()
            .map_err(|e| e.to_string())?;
    let name =
        ServerName::try_from(host.unwrap_or("localhost").to_string()).map_err(|e| e.to_string())?;
    use rustls::client::danger::ServerCertVerifier;
    verifier
        .verify_server_cert(leaf, rest, &name, &[], UnixTime::now())
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// Creates and removes a file in `dir` to prove it is writable. A missing directory passes when
/// its nearest existing ancestor is writable, since bpgate creates the directory at start.
pub fn write_test(dir: &Path) -> Result<(), String> {
    let mut d = dir.to_path_buf();
    while !d.exists() {
        match d.parent() {
            Some(p) if !p.as_os_str().is_empty() => d = p.to_path_buf(),
            _ => {
                d = PathBuf::from(".");
                break;
            }
        }
    }
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let f = d.join(format!(".bpgate-write-test-{}-{nanos}", std::process::id()));
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&f)
        .and_then(|mut h| h.write_all(b"ok"))
        .map_err(|e| format!("{}: {e}", d.display()))?;
    std::fs::remove_file(&f).map_err(|e| format!("cannot remove {}: {e}", f.display()))
}

/// Counts per status.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Summary {
    pub pass: usize,
    pub warn: usize,
    pub fail: usize,
    pub manual: usize,
}

pub fn summary(findings: &[Finding]) -> Summary {
    let mut s = Summary::default();
    for f in findings {
        match f.status {
            Status::Pass => s.pass += 1,
            Status::Warn => s.warn += 1,
            Status::Fail => s.fail += 1,
            Status::Manual => s.manual += 1,
        }
    }
    s
}

/// `{"items":[{item,status,evidence,fix}...],"summary":{pass,warn,fail,manual}}`.
pub fn render_json(findings: &[Finding]) -> String {
    let v = serde_json::json!({ "items": findings, "summary": summary(findings) });
    serde_json::to_string_pretty(&v).unwrap_or_else(|_| "{}".into())
}

/// A readable table; `color` adds ANSI colours to the status column.
pub fn render_text(findings: &[Finding], color: bool) -> String {
    let width = findings.iter().map(|f| f.item.len()).max().unwrap_or(0);
    let mut out = String::new();
    for f in findings {
        let tag = format!("{:<6}", f.status.as_str().to_ascii_uppercase());
        let tag = if color {
            let c = match f.status {
                Status::Pass => "32",
                Status::Warn => "33",
                Status::Fail => "31;1",
                Status::Manual => "36",
            };
            format!("\x1b[{c}m{tag}\x1b[0m")
        } else {
            tag
        };
        out.push_str(&format!("{tag}  {:<width$}  {}\n", f.item, f.evidence));
        if !f.fix.is_empty() {
            out.push_str(&format!("{:6}  {:<width$}  fix: {}\n", "", "", f.fix));
        }
    }
    let s = summary(findings);
    out.push_str(&format!(
        "\n{} pass, {} warn, {} fail, {} manual\n",
        s.pass, s.warn, s.fail, s.manual
    ));
    out
}

/// Exit code of `bpgate check`: 1 when anything fails, else 0.
pub fn exit_code(findings: &[Finding]) -> ExitCode {
    if findings.iter().any(|f| f.status == Status::Fail) {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}

/// `bpgate check`. Exit 0 when nothing fails, 1 when something fails, 2 on a usage error.
pub fn run_check(
    loaded: &Loaded,
    args: &CheckArgs,
    env: &dyn Fn(&str) -> Option<String>,
) -> ExitCode {
    let inputs = match runtime()
        .and_then(|rt| rt.block_on(gather(loaded, &args.files, env, args.timeout)))
    {
        Ok(i) => i,
        Err(e) => {
            eprintln!("bpgate check: {e}");
            return ExitCode::from(2);
        }
    };
    let findings = check(&inputs);
    let text = match args.format {
        Format::Json => render_json(&findings) + "\n",
        Format::Text => render_text(&findings, std::io::stdout().is_terminal()),
    };
    // A closed stdout (e.g. `| head`) must not turn a verdict into a panic.
    let _ = std::io::stdout().write_all(text.as_bytes());
    exit_code(&findings)
}

/// `bpgate diag`: writes the report; exit 0 once written (whatever the probes found), 1 when it
/// cannot be written, 2 on a usage error.
pub async fn run_diag(
    loaded: &Loaded,
    args: &DiagArgs,
    env: &dyn Fn(&str) -> Option<String>,
) -> ExitCode {
    let bp = match botpress_view(&args.files, env, args.timeout).await {
        Ok(b) => b,
        Err(e) => {
            eprintln!("bpgate diag: {e}");
            return ExitCode::from(2);
        }
    };
    let report = diag::report(loaded, bp, args.timeout).await;
    match std::fs::write(&args.out, report) {
        Ok(()) => {
            println!("bpgate diag: report written to {}", args.out.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("bpgate diag: cannot write {}: {e}", args.out.display());
            ExitCode::from(1)
        }
    }
}

/// Production mode: the posture items bpgate owns that fail. Empty = may start.
pub fn production_failures(loaded: &Loaded, cert: &CertInfo) -> Vec<Finding> {
    production_failures_at(loaded, cert, now_secs())
}

/// [`production_failures`] at a given time (tests).
pub fn production_failures_at(loaded: &Loaded, cert: &CertInfo, now: i64) -> Vec<Finding> {
    let c = &loaded.config;
    let mut out = Vec::new();
    let fix_cert = "set BPGATE_TLS_CERT and BPGATE_TLS_KEY (tls.cert, tls.key) to your certificate chain and key";
    if cert.development {
        out.push(Finding {
            item: item::HTTPS,
            status: Status::Fail,
            evidence: "bpgate is serving its development certificate".into(),
            fix: fix_cert.into(),
        });
    }
    if cert.expired(now) {
        out.push(Finding {
            item: item::HTTPS,
            status: Status::Fail,
            evidence: format!("the certificate expired on {}", cert.not_after_rfc3339()),
            fix: "renew the certificate".into(),
        });
    }
    if !c.audit.enabled {
        out.push(Finding {
            item: item::AUDIT,
            status: Status::Fail,
            evidence: "audit.enabled=false: no audit trail".into(),
            fix: "set audit.enabled = true".into(),
        });
    }
    if !c.cors.enabled {
        out.push(Finding {
            item: item::CORS,
            status: Status::Fail,
            evidence: "cors.enabled=false: Botpress's default policy (any origin) reaches browsers"
                .into(),
            fix: "set cors.enabled = true and BPGATE_CORS_ORIGINS to your origins".into(),
        });
    } else if c.cors.origins.iter().any(|o| o.trim() == "*") {
        out.push(Finding {
            item: item::CORS,
            status: Status::Fail,
            evidence: "cors.origins contains `*`".into(),
            fix: "set BPGATE_CORS_ORIGINS to your own origins, e.g. https://app.example.com".into(),
        });
    }
    if c.base_path.mode == crate::config::BasePathMode::Strip {
        out.push(Finding {
            item: item::BASE_PATH,
            status: Status::Fail,
            evidence: check::STRIP_EVIDENCE.into(),
            fix: check::STRIP_FIX.into(),
        });
    }
    let admin = check::admin_api(loaded);
    if admin.status == Status::Fail {
        out.push(admin);
    }
    if loaded.derived.nodes.len() > 1 && c.sticky.enabled && c.sticky.secret.is_empty() {
        out.push(Finding {
            item: item::STICKY,
            status: Status::Fail,
            evidence: format!(
                "{} nodes and sticky.enabled, but no sticky.secret",
                loaded.derived.nodes.len()
            ),
            fix: "set BPGATE_STICKY_SECRET=$(openssl rand -base64 32), the same on every replica"
                .into(),
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{CommandFactory, Parser, Subcommand};

    #[derive(Parser, Debug)]
    struct Cli {
        #[command(subcommand)]
        command: Cmd,
    }

    #[derive(Subcommand, Debug)]
    enum Cmd {
        Check(CheckArgs),
        Diag(DiagArgs),
    }

    #[test]
    fn args_parse_as_main_will_wire_them() {
        Cli::command().debug_assert();
        let c = Cli::try_parse_from([
            "bpgate",
            "check",
            "--botpress-env",
            "/bp/.env",
            "--botpress-config",
            "/bp/c.json",
            "--format",
            "json",
        ])
        .unwrap();
        let Cmd::Check(a) = c.command else {
            panic!("not check")
        };
        assert_eq!(a.format, Format::Json);
        assert_eq!(a.files.botpress_env, Some(PathBuf::from("/bp/.env")));
        assert_eq!(a.files.nlu_config, None);
        let c = Cli::try_parse_from(["bpgate", "diag", "--timeout", "500ms"]).unwrap();
        let Cmd::Diag(d) = c.command else {
            panic!("not diag")
        };
        assert_eq!(d.timeout, Duration::from_millis(500));
        assert_eq!(d.out, PathBuf::from("diagnostic.txt"));
        let c = Cli::try_parse_from(["bpgate", "check"]).unwrap();
        let Cmd::Check(a) = c.command else {
            panic!("not check")
        };
        assert_eq!(a.format, Format::Text);
    }

    #[test]
    fn chain_problem_accepts_single_and_reports_unparsable() {
        assert_eq!(chain_problem(&[]), None);
        let bad = CertificateDer::from(vec![1u8, 2, 3]);
        assert!(chain_problem(&[bad])
            .unwrap_or_default()
            .contains("cannot be parsed"));
    }

    #[test]
    fn write_test_finds_existing_ancestor() {
        let d = tempfile::tempdir().unwrap();
        assert!(write_test(&d.path().join("a/b/c")).is_ok());
        assert!(
            !d.path().join("a").exists(),
            "the check must not create directories"
        );
        assert_eq!(
            std::fs::read_dir(d.path()).unwrap().count(),
            0,
            "test file left behind"
        );
        let f = d.path().join("file");
        std::fs::write(&f, "x").unwrap();
        assert!(write_test(&f.join("sub")).is_err());
    }
}
