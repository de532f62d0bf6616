//! `bpgate diag`: a `diagnostic.txt` in the spirit of Botpress's `./bp diag`, from bpgate's seat:
//! host facts, reachability of every node, Redis, Postgres and the language server, write tests,
//! the certificate, and the configurations with every secret obfuscated.
//!
//! Every probe has its own timeout and its failure is written into the report; nothing stops it.
//! Traffic goes only to the addresses found in bpgate's config and Botpress's env/config.

use std::collections::BTreeMap;
use std::future::Future;
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use super::obfuscate::{self, url_secrets};
use super::{BotpressView, ConfigSource, EnvFrom, Inputs};
use crate::config::{parse_external_url, BasePathMode, Loaded};

/// Largest response body read from a probe; `/version` and `env.js` are a few hundred bytes.
const MAX_BODY: usize = 64 * 1024;

/// The text of the report.
pub async fn report(loaded: &Loaded, bp: BotpressView, timeout: Duration) -> String {
    let mut r = Report::default();
    r.title("bpgate diagnostic report");
    r.kv("generated", &crate::tls::rfc3339_secs(super::now_secs()));
    r.kv("bpgate version", env!("CARGO_PKG_VERSION"));
    r.kv(
        "probe timeout",
        &humantime::format_duration(timeout).to_string(),
    );
    r.line("Passwords and secrets are replaced by ***obfuscated***.");

    general(&mut r);

    let inputs = Inputs {
        loaded,
        bp,
        cert: super::cert_check(loaded),
        audit_dir: super::write_test(&loaded.config.audit.dir),
        now: super::now_secs(),
    };
    r.section("Posture (bpgate check)");
    r.raw(&super::render_text(&super::check(&inputs), false));

    nodes(&mut r, loaded, timeout).await;
    hairpin(&mut r, &inputs.bp, timeout).await;
    redis(&mut r, &inputs.bp, timeout).await;
    postgres(&mut r, &inputs.bp, timeout).await;
    lang(&mut r, &inputs.bp, timeout).await;
    files(&mut r, &inputs);
    certificate(&mut r, loaded);

    r.section("bpgate configuration (effective, secrets redacted)");
    r.kv("file", &loaded.path.display().to_string());
    // redacted_toml hides bpgate's own secrets; URLs may still carry credentials.
    r.raw(&url_secrets(&loaded.redacted_toml()));

    match &inputs.bp.env_from {
        EnvFrom::File(p) => r.section(&format!("Botpress environment ({p})")),
        EnvFrom::Process => {
            r.section("Botpress environment (this process's; no --botpress-env given)")
        }
    }
    for (k, v) in &inputs.bp.env {
        r.kv(k, &obfuscate::env_value(k, v));
    }
    r.section("Botpress botpress.config.json (substituted, BP_CONFIG_* applied)");
    match &inputs.bp.source {
        ConfigSource::Disk => {}
        ConfigSource::Database { found, missing } => r.line(&format!(
            "(BPFS_STORAGE=database: read from the database: {}; not there: {})",
            if found.is_empty() { "none".to_string() } else { found.join(", ") },
            if missing.is_empty() { "none".to_string() } else { missing.join(", ") }
        )),
        ConfigSource::DatabaseUnread(why) => r.line(&format!(
            "(BPFS_STORAGE=database, but the database could not be read ({why}): this is the file given, not necessarily what Botpress uses)"
        )),
    }
    if !inputs.bp.config_given {
        r.line("(no --botpress-config given; only BP_CONFIG_* overrides shown)");
    }
    r.raw(&obfuscated_json(&inputs.bp.config));
    r.section("NLU module config (nlu.json)");
    match &inputs.bp.nlu {
        Some(n) => r.raw(&obfuscated_json(n)),
        None => r.line("(no --nlu-config given)"),
    }
    r.0
}

fn obfuscated_json(v: &Value) -> String {
    let mut v = v.clone();
    obfuscate::json(&mut v);
    serde_json::to_string_pretty(&v).unwrap_or_default() + "\n"
}

#[derive(Default)]
struct Report(String);

impl Report {
    fn title(&mut self, t: &str) {
        self.0.push_str(&format!("{t}\n{}\n", "=".repeat(t.len())));
    }
    fn section(&mut self, t: &str) {
        self.0
            .push_str(&format!("\n{t}\n{}\n", "-".repeat(t.len())));
    }
    fn kv(&mut self, k: &str, v: &str) {
        self.0.push_str(&format!("{k}: {v}\n"));
    }
    fn line(&mut self, l: &str) {
        self.0.push_str(l);
        self.0.push('\n');
    }
    fn raw(&mut self, s: &str) {
        self.0.push_str(s);
        if !s.ends_with('\n') {
            self.0.push('\n');
        }
    }
}

fn read_trim(path: &str) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()
        .map(|s| s.trim().to_string())
}

fn general(r: &mut Report) {
    r.section("General");
    r.kv(
        "hostname",
        &read_trim("/proc/sys/kernel/hostname")
            .or_else(|| read_trim("/etc/hostname"))
            .unwrap_or_else(|| "unknown".into()),
    );
    let pretty = read_trim("/etc/os-release").and_then(|t| {
        t.lines()
            .find_map(|l| l.strip_prefix("PRETTY_NAME="))
            .map(|v| v.trim_matches('"').to_string())
    });
    r.kv(
        "os",
        &format!(
            "{} {} ({}, kernel {})",
            std::env::consts::OS,
            std::env::consts::ARCH,
            pretty.unwrap_or_else(|| "unknown distribution".into()),
            read_trim("/proc/sys/kernel/osrelease").unwrap_or_else(|| "unknown".into())
        ),
    );
    r.kv(
        "cpus",
        &std::thread::available_parallelism()
            .map(|n| n.to_string())
            .unwrap_or_else(|e| format!("unknown ({e})")),
    );
    match read_trim("/proc/meminfo") {
        Some(m) => {
            for key in ["MemTotal:", "MemAvailable:"] {
                if let Some(l) = m.lines().find(|l| l.starts_with(key)) {
                    r.kv(
                        &key.trim_end_matches(':').to_ascii_lowercase(),
                        l[key.len()..].trim(),
                    );
                }
            }
        }
        None => r.kv("memory", "unknown (/proc/meminfo unreadable)"),
    }
    let nofile = read_trim("/proc/self/limits").and_then(|t| {
        t.lines()
            .find(|l| l.starts_with("Max open files"))
            .map(|l| {
                let f: Vec<&str> = l["Max open files".len()..].split_whitespace().collect();
                format!(
                    "soft {}, hard {}",
                    f.first().unwrap_or(&"?"),
                    f.get(1).unwrap_or(&"?")
                )
            })
    });
    r.kv(
        "open files limit",
        &nofile.unwrap_or_else(|| "unknown".into()),
    );
}

/// Runs `f` with a deadline; the error says which.
async fn timed<T>(
    t: Duration,
    f: impl Future<Output = Result<T, String>>,
) -> (Result<T, String>, Duration) {
    let start = Instant::now();
    let r = match tokio::time::timeout(t, f).await {
        Ok(r) => r,
        Err(_) => Err(format!("timed out after {}", humantime::format_duration(t))),
    };
    (r, start.elapsed())
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

/// `GET path` on a fresh connection: status and (bounded) body.
pub async fn http_get(authority: &str, path: &str) -> Result<(u16, String), String> {
    let (status, body) = crate::proxy::probe_get(authority, path, MAX_BODY).await?;
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

/// `window.SERVER_ID="..."` from Botpress's env.js.
pub fn server_id(js: &str) -> Option<String> {
    let i = js.find("SERVER_ID")?;
    let rest = js[i + "SERVER_ID".len()..].trim_start();
    let rest = rest.strip_prefix('=')?.trim_start();
    let q = rest.chars().next().filter(|c| *c == '"' || *c == '\'')?;
    let rest = &rest[1..];
    rest.find(q).map(|e| rest[..e].to_string())
}

fn one_line(s: &str, max: usize) -> String {
    let s: String = s.split_whitespace().collect::<Vec<_>>().join(" ");
    if s.chars().count() > max {
        format!("{}…", s.chars().take(max).collect::<String>())
    } else {
        s
    }
}

async fn nodes(r: &mut Report, loaded: &Loaded, t: Duration) {
    r.section("Upstream nodes");
    // In strip mode bpgate removes the prefix, so the node itself serves at the root.
    let base = match loaded.config.base_path.mode {
        BasePathMode::Strip => String::new(),
        BasePathMode::Preserve => loaded.derived.base_path.clone(),
    };
    for n in &loaded.derived.nodes {
        r.line(&format!("node {} ({})", n.name, n.authority));
        let (c, d) = timed(t, async {
            TcpStream::connect(&n.authority)
                .await
                .map_err(|e| e.to_string())
        })
        .await;
        match c {
            Ok(_) => r.line(&format!("  tcp connect: ok in {}", ms(d))),
            Err(e) => {
                r.line(&format!("  tcp connect: FAILED after {}: {e}", ms(d)));
                continue;
            }
        }
        for p in ["/version", "/status"] {
            let path = format!("{base}{p}");
            let (res, d) = timed(t, http_get(&n.authority, &path)).await;
            match res {
                Ok((s, body)) => r.line(&format!(
                    "  GET {path}: {s} in {}: {}",
                    ms(d),
                    one_line(&body, 200)
                )),
                Err(e) => r.line(&format!("  GET {path}: FAILED after {}: {e}", ms(d))),
            }
        }
        let path = format!("{base}/admin/env.js");
        let (res, _) = timed(t, http_get(&n.authority, &path)).await;
        match res {
            Ok((200, body)) => match server_id(&body) {
                Some(id) => r.line(&format!("  SERVER_ID: {id}")),
                None => r.line("  SERVER_ID: not found in env.js"),
            },
            Ok((s, _)) => r.line(&format!("  SERVER_ID: GET {path} answered {s}")),
            Err(e) => r.line(&format!("  SERVER_ID: GET {path} failed: {e}")),
        }
    }
}

/// Why a hairpin probe failed.
enum HairpinError {
    /// The certificate does not verify against the trust roots used.
    Certificate(String),
    Other(String),
}

/// `GET target` on `host:port` over TLS, trusting `roots`, with `Host: authority`.
async fn https_get(
    host: &str,
    port: u16,
    authority: &str,
    target: &str,
    roots: rustls::RootCertStore,
) -> Result<(u16, String), HairpinError> {
    use http_body_util::BodyExt;
    let other = HairpinError::Other;
    let provider = std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| other(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    let name = rustls_pki_types::ServerName::try_from(host.to_string())
        .map_err(|e| other(format!("{host}: {e}")))?;
    let tcp = TcpStream::connect((host, port))
        .await
        .map_err(|e| other(format!("connect {host}:{port}: {e}")))?;
    let stream = tokio_rustls::TlsConnector::from(std::sync::Arc::new(tls))
        .connect(name, tcp)
        .await
        .map_err(
            |e| match e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
                Some(rustls::Error::InvalidCertificate(c)) => {
                    HairpinError::Certificate(format!("{c:?}"))
                }
                _ => other(format!("TLS handshake: {e}")),
            },
        )?;
    let (mut tx, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(|e| other(e.to_string()))?;
    let conn = AbortOnDrop(tokio::spawn(conn));
    let req = http::Request::get(target)
        .header(http::header::HOST, authority)
        .header(
            http::header::USER_AGENT,
            concat!("bpgate/", env!("CARGO_PKG_VERSION"), " diag"),
        )
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .map_err(|e| other(e.to_string()))?;
    let resp = tx
        .send_request(req)
        .await
        .map_err(|e| other(format!("request: {e}")))?;
    let status = resp.status().as_u16();
    let body = http_body_util::Limited::new(resp.into_body(), MAX_BODY)
        .collect()
        .await
        .map(|b| b.to_bytes())
        .map_err(|e| other(format!("body: {e}")))?;
    drop(conn);
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

/// Botpress nodes call their own public URL: voice messages (`POST {EXTERNAL_URL}/api/v1/studio/
/// <bot>/media`), Google Speech, and any custom action using `bp.http.getAxiosConfigForBot`. This
/// probes `EXTERNAL_URL` + `/version` with the trust a node would have: the system store (close to
/// Node's bundled list) plus `NODE_EXTRA_CA_CERTS` from Botpress's environment.
async fn hairpin(r: &mut Report, bp: &BotpressView, t: Duration) {
    r.section("Hairpin: Botpress's EXTERNAL_URL");
    r.line("Botpress nodes call their own EXTERNAL_URL (voice messages, speech, custom actions that use bp.http.getAxiosConfigForBot): each node must resolve its host, reach it and trust its certificate. Probed from this host; run the same GET on a node if they are elsewhere.");
    let Some((url, src)) = bp.external_url() else {
        r.line("Botpress has no EXTERNAL_URL: not probed (nodes then call http://localhost:3000)");
        return;
    };
    let (origin, host, path) = match parse_external_url(url) {
        Ok(x) => x,
        Err(e) => {
            r.line(&format!("{src}: {e}; not probed"));
            return;
        }
    };
    let https = origin.starts_with("https://");
    let authority = origin
        .split_once("://")
        .map(|(_, a)| a.to_string())
        .unwrap_or_default();
    let port = authority
        .rsplit_once(':')
        .filter(|(h, _)| !h.ends_with(']') || authority.starts_with('['))
        .and_then(|(_, p)| p.parse::<u16>().ok())
        .unwrap_or(if https { 443 } else { 80 });
    let target = format!("{path}/version");
    let shown = format!("GET {origin}{target}");
    let extra = bp.env("NODE_EXTRA_CA_CERTS");
    match extra {
        Some(p) if matches!(bp.env_from, EnvFrom::File(_)) => r.kv(
            "NODE_EXTRA_CA_CERTS",
            &format!("{p} (from the file given: it works only if the node process starts with it in its environment; Node reads it before Botpress loads .env)"),
        ),
        Some(p) => r.kv("NODE_EXTRA_CA_CERTS", p),
        None => r.kv(
            "NODE_EXTRA_CA_CERTS",
            "unset: nodes trust only Node's bundled CA list",
        ),
    }
    let res = if https {
        let roots = match super::trust_roots(extra.map(std::path::Path::new)) {
            Ok(roots) => roots,
            Err(e) => {
                r.line(&format!(
                    "NODE_EXTRA_CA_CERTS cannot be used from here ({e}); probing with the system trust store only"
                ));
                match super::trust_roots(None) {
                    Ok(roots) => roots,
                    Err(e) => {
                        r.line(&format!("{shown}: not probed: {e}"));
                        return;
                    }
                }
            }
        };
        timed(t, async {
            https_get(&host, port, &authority, &target, roots)
                .await
                .map_err(|e| match e {
                    HairpinError::Certificate(c) => format!("CERTIFICATE NOT TRUSTED ({c})"),
                    HairpinError::Other(o) => o,
                })
        })
        .await
    } else {
        let a = format!("{host}:{port}");
        timed(t, http_get(&a, &target)).await
    };
    match res {
        (Ok((status, body)), d) => {
            r.line(&format!(
                "{shown}: {status} in {}: {}",
                ms(d),
                one_line(&body, 200)
            ));
            if status != 200 {
                r.line("  a node answers /version with 200 once loaded (503 while Botpress loads)");
            }
        }
        (Err(e), d) => {
            r.line(&format!("{shown}: FAILED after {}: {e}", ms(d)));
            if e.starts_with("CERTIFICATE NOT TRUSTED") {
                r.line("  Botpress runs on Node 12, which trusts its bundled CA list plus the PEM file in NODE_EXTRA_CA_CERTS only. If bpgate's certificate comes from a private CA, give every node NODE_EXTRA_CA_CERTS=/path/to/private-ca.pem in the environment its process starts with (systemd Environment=, docker -e, export before ./bp; Node reads it at start-up, so Botpress's .env is too late) and restart it; otherwise voice messages and these custom actions fail.");
            }
        }
    }
}

/// Where and how to reach Redis, from `REDIS_URL`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisTarget {
    pub authority: String,
    pub user: Option<String>,
    pub password: Option<String>,
}

/// Parses `redis://[user[:pass]@]host[:port][/db][?password=...]`.
pub fn parse_redis_url(u: &str) -> Result<RedisTarget, String> {
    let rest = u
        .strip_prefix("redis://")
        .ok_or_else(|| "not a redis:// URL".to_string())?;
    let (main, query) = match rest.split_once('?') {
        Some((m, q)) => (m, Some(q)),
        None => (rest, None),
    };
    let authority_part = main.split('/').next().unwrap_or("");
    let (userinfo, hostport) = match authority_part.rsplit_once('@') {
        Some((ui, hp)) => (Some(ui), hp),
        None => (None, authority_part),
    };
    let dec = |s: &str| {
        percent_encoding::percent_decode_str(s)
            .decode_utf8_lossy()
            .into_owned()
    };
    let (mut user, mut password) = match userinfo {
        Some(ui) => match ui.split_once(':') {
            Some((u, p)) => (Some(dec(u)), Some(dec(p))),
            None => (Some(dec(ui)), None),
        },
        None => (None, None),
    };
    for pair in query.unwrap_or("").split('&') {
        if let Some((k, v)) = pair.split_once('=') {
            match k {
                "password" => password = Some(dec(v)),
                "username" | "user" => user = Some(dec(v)),
                _ => {}
            }
        }
    }
    let user = user.filter(|u| !u.is_empty());
    let password = password.filter(|p| !p.is_empty());
    if hostport.is_empty() {
        return Err("no host".into());
    }
    let authority = if hostport.starts_with('[') {
        if hostport.contains("]:") {
            hostport.to_string()
        } else {
            format!("{hostport}:6379")
        }
    } else if hostport.contains(':') {
        hostport.to_string()
    } else {
        format!("{hostport}:6379")
    };
    Ok(RedisTarget {
        authority,
        user,
        password,
    })
}

fn resp_command(args: &[&str]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        out.extend_from_slice(a.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// `AUTH` (when the URL has credentials) then `PING`; returns the PING reply line.
pub async fn redis_ping(target: &RedisTarget) -> Result<String, String> {
    let stream = TcpStream::connect(&target.authority)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let mut s = BufReader::new(stream);
    let mut line = String::new();
    if let Some(pw) = &target.password {
        let cmd = match &target.user {
            Some(u) => resp_command(&["AUTH", u, pw]),
            None => resp_command(&["AUTH", pw]),
        };
        s.get_mut()
            .write_all(&cmd)
            .await
            .map_err(|e| format!("write: {e}"))?;
        read_line(&mut s, &mut line).await?;
        if !line.starts_with("+OK") {
            // Redis's error text never echoes the password.
            return Err(format!("AUTH refused: {}", line.trim_end()));
        }
    }
    s.get_mut()
        .write_all(&resp_command(&["PING"]))
        .await
        .map_err(|e| format!("write: {e}"))?;
    read_line(&mut s, &mut line).await?;
    let reply = line.trim_end().to_string();
    if reply == "+PONG" {
        Ok(reply)
    } else {
        Err(format!("unexpected reply to PING: {reply}"))
    }
}

async fn read_line(s: &mut BufReader<TcpStream>, line: &mut String) -> Result<(), String> {
    line.clear();
    // Bounded: a reply line longer than 4 KiB is not Redis.
    let mut limited = (&mut *s).take(4096);
    let n = limited
        .read_line(line)
        .await
        .map_err(|e| format!("read: {e}"))?;
    if n == 0 {
        return Err("connection closed".into());
    }
    Ok(())
}

use tokio::io::AsyncReadExt as _;

async fn redis(r: &mut Report, bp: &BotpressView, t: Duration) {
    r.section("Redis");
    let Some(url) = bp.env("REDIS_URL") else {
        r.line("REDIS_URL unset: not probed");
        return;
    };
    r.kv("REDIS_URL", &url_secrets(url));
    if let Some(rest) = url.strip_prefix("rediss://") {
        // ioredis (Botpress) speaks TLS here; bpgate's probe speaks plain RESP only.
        let reach = match parse_redis_url(&format!("redis://{rest}")) {
            Ok(tg) => tcp_reach(&tg.authority, t).await,
            Err(e) => format!("address unknown: {e}"),
        };
        r.line(&format!(
            "not probed: rediss:// is Redis over TLS, which bpgate's probe does not speak (Botpress's ioredis does). TCP: {reach}"
        ));
        return;
    }
    let targets: Vec<RedisTarget> = if url.trim_start().starts_with('[') {
        // Sentinel/Cluster form: a JSON array of {host, port}; credentials live in REDIS_OPTIONS.
        match serde_json::from_str::<Value>(url) {
            Ok(Value::Array(a)) => a
                .iter()
                .filter_map(|n| {
                    let host = n.get("host")?.as_str()?;
                    let port = n.get("port").and_then(Value::as_u64).unwrap_or(6379);
                    Some(RedisTarget {
                        authority: format!("{host}:{port}"),
                        user: None,
                        password: None,
                    })
                })
                .collect(),
            _ => {
                r.line("not probed: REDIS_URL is neither a redis:// URL nor a JSON array");
                return;
            }
        }
    } else {
        match parse_redis_url(url) {
            Ok(tg) => vec![tg],
            Err(e) => {
                r.line(&format!("not probed: {e}"));
                return;
            }
        }
    };
    for tg in targets {
        let auth = if tg.password.is_some() {
            "AUTH + PING"
        } else {
            "PING"
        };
        let (res, d) = timed(t, redis_ping(&tg)).await;
        match res {
            Ok(reply) => r.line(&format!("{} {auth}: {reply} in {}", tg.authority, ms(d))),
            Err(e) => r.line(&format!(
                "{} {auth}: FAILED after {}: {}",
                tg.authority,
                ms(d),
                url_secrets(&e)
            )),
        }
    }
}

/// The TLS node-postgres would use for `DATABASE_URL` (pg-connection-string's `ssl` and
/// `sslmode`, else `PGSSLMODE`): `Some(how)` when the connection is TLS, which bpgate's probe and
/// reader do not speak.
pub fn pg_tls_required(url: &str, env: &BTreeMap<String, String>) -> Option<String> {
    let query = url.split_once('?').map(|(_, q)| q).unwrap_or("");
    let mut ssl: Option<bool> = None;
    let mut shown = None;
    for pair in query.split('&') {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let v = percent_encoding::percent_decode_str(v).decode_utf8_lossy();
        match k {
            "ssl" => {
                ssl = Some(!matches!(v.as_ref(), "0" | "false" | ""));
                shown = Some(format!("ssl={v}"));
            }
            "sslcert" | "sslkey" | "sslrootcert" if ssl.is_none() => {
                ssl = Some(true);
                shown = Some(format!("{k}=..."));
            }
            "sslmode" => {
                ssl = Some(v != "disable");
                shown = Some(format!("sslmode={v}"));
            }
            _ => {}
        }
    }
    if ssl.is_none() {
        if let Some(m) = env.get("PGSSLMODE").filter(|m| !m.is_empty()) {
            ssl = Some(m != "disable");
            shown = Some(format!("PGSSLMODE={m}"));
        }
    }
    if ssl == Some(true) {
        shown
    } else {
        None
    }
}

/// `DATABASE_URL` without the TLS parameters tokio-postgres does not know (`ssl`, `sslcert`, ...).
fn pg_url_for_probe(url: &str) -> String {
    let Some((base, query)) = url.split_once('?') else {
        return url.to_string();
    };
    let kept: Vec<&str> = query
        .split('&')
        .filter(|p| {
            let k = p.split('=').next().unwrap_or("");
            !matches!(
                k,
                "ssl" | "sslmode" | "sslcert" | "sslkey" | "sslrootcert" | "sslpassword" | ""
            )
        })
        .collect();
    if kept.is_empty() {
        base.to_string()
    } else {
        format!("{base}?{}", kept.join("&"))
    }
}

/// `host:port` of `DATABASE_URL`.
fn pg_authority(cfg: &tokio_postgres::Config) -> Result<String, String> {
    let host = match cfg.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
        #[cfg(unix)]
        Some(tokio_postgres::config::Host::Unix(p)) => {
            return Err(format!("not probed: unix socket {}", p.display()))
        }
        None => "localhost".into(),
    };
    let port = cfg.get_ports().first().copied().unwrap_or(5432);
    Ok(if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    })
}

/// A plain (no TLS) connection; every step has the timeout. The connection task is aborted when
/// the returned guard drops.
async fn pg_connect(
    url: &str,
    t: Duration,
) -> Result<(tokio_postgres::Client, AbortOnDrop), String> {
    use std::str::FromStr;
    let cfg =
        tokio_postgres::Config::from_str(&pg_url_for_probe(url)).map_err(|e| e.to_string())?;
    let authority = pg_authority(&cfg)?;
    let (stream, _) = timed(t, async {
        TcpStream::connect(&authority)
            .await
            .map_err(|e| format!("connect {authority}: {e}"))
    })
    .await;
    let stream = stream?;
    let (res, _) = timed(t, async {
        cfg.connect_raw(stream, tokio_postgres::NoTls)
            .await
            .map_err(|e| e.to_string())
    })
    .await;
    let (client, conn) = res?;
    Ok((client, AbortOnDrop(tokio::spawn(conn))))
}

struct AbortOnDrop<T = Result<(), tokio_postgres::Error>>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Connects with tokio-postgres (no TLS), runs `select 1+1` like Botpress's diag, and returns
/// the server version.
pub async fn postgres_probe(url: &str, t: Duration) -> Result<String, String> {
    let (client, _conn) = pg_connect(url, t).await?;
    let (res, _) = timed(t, async {
        client
            .simple_query("select 1+1 as two, current_setting('server_version') as v")
            .await
            .map_err(|e| e.to_string())
    })
    .await;
    let rows = res?;
    let row = rows.iter().find_map(|m| match m {
        tokio_postgres::SimpleQueryMessage::Row(r) => Some(r),
        _ => None,
    });
    match row {
        Some(row) if row.get(0) == Some("2") => Ok(format!(
            "select 1+1 = 2, server_version {}",
            row.get(1).unwrap_or("?")
        )),
        _ => Err("unexpected answer to select 1+1".to_string()),
    }
}

/// Reads the global config files Botpress keeps in its database with `BPFS_STORAGE=database`
/// (`srv_ghost_files`: `file_path` primary key, `content` bytea, `deleted` boolean), the way its
/// DB storage driver does. Returns `file_path` → content for the rows found.
pub async fn read_ghost_files(
    url: &str,
    env: &BTreeMap<String, String>,
    t: Duration,
) -> Result<BTreeMap<String, String>, String> {
    if let Some(tls) = pg_tls_required(url, env) {
        return Err(format!(
            "DATABASE_URL requires TLS ({tls}), which bpgate's database reader does not speak"
        ));
    }
    let (client, _conn) = pg_connect(url, t).await?;
    let (res, _) = timed(t, async {
        client
            .query(
                "select file_path, content from srv_ghost_files \
                 where file_path in ($1, $2) and deleted = false",
                &[&super::GHOST_CONFIG, &super::GHOST_NLU],
            )
            .await
            .map_err(|e| format!("reading srv_ghost_files: {e}"))
    })
    .await;
    let mut out = BTreeMap::new();
    for row in res? {
        let path: String = row.try_get(0).map_err(|e| e.to_string())?;
        let content: Option<Vec<u8>> = row.try_get(1).map_err(|e| e.to_string())?;
        out.insert(
            path,
            String::from_utf8_lossy(&content.unwrap_or_default()).into_owned(),
        );
    }
    Ok(out)
}

async fn postgres(r: &mut Report, bp: &BotpressView, t: Duration) {
    r.section("Database");
    let Some(url) = bp.env("DATABASE_URL") else {
        r.line("DATABASE_URL unset: Botpress uses SQLite; not probed");
        return;
    };
    r.kv("DATABASE_URL", &url_secrets(url));
    if !super::is_postgres_url(url) {
        r.line("SQLite path: not probed");
        return;
    }
    if let Some(tls) = pg_tls_required(url, &bp.env) {
        let reach =
            match <tokio_postgres::Config as std::str::FromStr>::from_str(&pg_url_for_probe(url))
                .map_err(|e| e.to_string())
                .and_then(|c| pg_authority(&c))
            {
                Ok(a) => tcp_reach(&a, t).await,
                Err(e) => format!("address unknown: {e}"),
            };
        r.line(&format!(
            "not probed: TLS required ({tls}); bpgate's probe speaks no TLS to PostgreSQL. TCP: {reach}"
        ));
        return;
    }
    // Each step inside has the probe timeout; the outer bound keeps the total finite.
    let (res, d) = timed(t * 3, postgres_probe(url, t)).await;
    match res {
        Ok(s) => r.line(&format!("connected in {}: {s}", ms(d))),
        Err(e) => r.line(&format!("FAILED after {}: {}", ms(d), url_secrets(&e))),
    }
}

/// "reachable in 1.2 ms" or why not.
async fn tcp_reach(authority: &str, t: Duration) -> String {
    let (res, d) = timed(t, async {
        TcpStream::connect(authority)
            .await
            .map_err(|e| e.to_string())
    })
    .await;
    match res {
        Ok(_) => format!("{authority} reachable in {}", ms(d)),
        Err(e) => format!("{authority} NOT reachable after {}: {e}", ms(d)),
    }
}

async fn lang(r: &mut Report, bp: &BotpressView, t: Duration) {
    r.section("Language server");
    let (eps, src) = bp.language_endpoints();
    r.kv("source", src);
    for ep in eps {
        let shown = url_secrets(&ep);
        let uri: http::Uri = match ep.parse() {
            Ok(u) => u,
            Err(e) => {
                r.line(&format!("{shown}: not a URL ({e})"));
                continue;
            }
        };
        match uri.scheme_str() {
            Some("http") => {}
            Some("https") => {
                r.line(&format!("{shown}: not probed: https"));
                continue;
            }
            _ => {
                r.line(&format!("{shown}: not probed: unsupported scheme"));
                continue;
            }
        }
        let Some(auth) = uri.authority() else {
            r.line(&format!("{shown}: no host"));
            continue;
        };
        let authority = format!("{}:{}", auth.host(), auth.port_u16().unwrap_or(80));
        let path = format!("{}/languages", uri.path().trim_end_matches('/'));
        let (res, d) = timed(t, http_get(&authority, &path)).await;
        match res {
            Ok((s, body)) => r.line(&format!(
                "{shown} GET {path}: {s} in {}: {}",
                ms(d),
                one_line(&body, 200)
            )),
            Err(e) => r.line(&format!("{shown} GET {path}: FAILED after {}: {e}", ms(d))),
        }
    }
}

fn files(r: &mut Report, i: &Inputs<'_>) {
    r.section("Write and read tests");
    let c = &i.loaded.config;
    match &i.audit_dir {
        Ok(()) => r.line(&format!("audit.dir {}: writable", c.audit.dir.display())),
        Err(e) => r.line(&format!(
            "audit.dir {}: NOT writable: {e}",
            c.audit.dir.display()
        )),
    }
    for (what, p) in [("tls.cert", &c.tls.cert), ("tls.key", &c.tls.key)] {
        match std::fs::read(p) {
            Ok(b) => r.line(&format!(
                "{what} {}: readable, {} bytes",
                p.display(),
                b.len()
            )),
            Err(e) => r.line(&format!("{what} {}: NOT readable: {e}", p.display())),
        }
    }
}

fn certificate(r: &mut Report, loaded: &Loaded) {
    use rustls_pki_types::pem::PemObject;
    r.section("Certificate");
    let t = &loaded.config.tls;
    match crate::tls::load_pair(&t.cert, &t.key) {
        Ok(p) => {
            let days = (p.info.not_after - super::now_secs()).div_euclid(86_400);
            r.line(&format!(
                "pair loads; key matches; leaf expires {} ({days} days){}",
                p.info.not_after_rfc3339(),
                if p.info.development {
                    "; bpgate DEVELOPMENT certificate"
                } else {
                    ""
                }
            ));
            r.kv(
                "names",
                &p.info
                    .dns_names
                    .iter()
                    .chain(&p.info.ip_names)
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", "),
            );
        }
        Err(e) => r.line(&format!("pair does not load: {e}")),
    }
    let chain: Vec<_> = match rustls_pki_types::CertificateDer::pem_file_iter(&t.cert) {
        Ok(it) => it.filter_map(Result::ok).collect(),
        Err(e) => {
            r.line(&format!("chain unreadable: {e}"));
            return;
        }
    };
    for (n, c) in chain.iter().enumerate() {
        match x509_parser::parse_x509_certificate(c.as_ref()) {
            Ok((_, x)) => r.line(&format!(
                "#{} subject `{}` issuer `{}` valid {} .. {}",
                n + 1,
                x.subject(),
                x.issuer(),
                crate::tls::rfc3339_secs(x.validity().not_before.timestamp()),
                crate::tls::rfc3339_secs(x.validity().not_after.timestamp())
            )),
            Err(e) => r.line(&format!("#{} cannot be parsed: {e}", n + 1)),
        }
    }
    match super::chain_problem(&chain) {
        Some(p) => r.kv("chain order", &format!("BROKEN: {p}")),
        None => r.kv("chain order", "ok"),
    }
    match super::system_trust(&chain, loaded.derived.public_host.as_deref()) {
        Ok(()) => r.kv("system trust", "verifies against the system trust store"),
        Err(e) => r.kv("system trust", &format!("does not verify: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_redis_urls() {
        let t = parse_redis_url("redis://redis:6379?password=s%40cret").unwrap();
        assert_eq!(t.authority, "redis:6379");
        assert_eq!(t.password.as_deref(), Some("s@cret"));
        assert_eq!(t.user, None);
        let t = parse_redis_url("redis://default:pw@10.0.0.1/2").unwrap();
        assert_eq!(t.authority, "10.0.0.1:6379");
        assert_eq!(t.user.as_deref(), Some("default"));
        assert_eq!(t.password.as_deref(), Some("pw"));
        let t = parse_redis_url("redis://:pw@[::1]:7000").unwrap();
        assert_eq!(t.authority, "[::1]:7000");
        assert_eq!(t.user, None);
        assert!(parse_redis_url("http://x").is_err());
    }

    #[test]
    fn finds_server_id() {
        assert_eq!(
            server_id("window.BP_BASE_PATH=\"/\";\nwindow.SERVER_ID = \"abc123\";").as_deref(),
            Some("abc123")
        );
        assert_eq!(server_id("window.X=1"), None);
    }

    #[test]
    fn resp_encoding() {
        assert_eq!(resp_command(&["PING"]), b"*1\r\n$4\r\nPING\r\n".to_vec());
    }
}
