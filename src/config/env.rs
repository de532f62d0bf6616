//! Environment variables. Each one is a line in [`ENV_VARS`]: its name, the config key it sets and
//! how its text becomes a TOML value. The value is written into the parsed file before typed
//! deserialisation, so the same parser and validation apply whatever the source.

use super::{ConfigError, Note, Origins};

/// How an environment variable's text is turned into a TOML value.
#[derive(Debug, Clone, Copy)]
pub enum Kind {
    /// Taken as a string (addresses, durations, sizes, paths: the typed parser checks them).
    Str,
    /// A comma-separated list of strings; empty entries are dropped.
    List,
    /// An unsigned integer.
    Int,
    /// `true/false`, `yes/no`, `1/0`, `on/off`.
    Bool,
}

/// One environment override.
#[derive(Debug, Clone, Copy)]
pub struct EnvVar {
    pub name: &'static str,
    pub key: &'static str,
    pub kind: Kind,
}

const fn var(name: &'static str, key: &'static str, kind: Kind) -> EnvVar {
    EnvVar { name, key, kind }
}

/// Every environment variable bpgate reads for its configuration. Adding one is one line.
pub const ENV_VARS: &[EnvVar] = &[
    var("EXTERNAL_URL", "external_url", Kind::Str),
    var("BPGATE_MODE", "mode", Kind::Str),
    var("BPGATE_LISTEN", "listen.https", Kind::Str),
    var("BPGATE_HTTP_LISTEN", "listen.http", Kind::Str),
    var("BPGATE_ADMIN_LISTEN", "listen.admin", Kind::Str),
    var("BPGATE_ADMIN_TOKEN", "admin.token", Kind::Str),
    var("BPGATE_TLS_CERT", "tls.cert", Kind::Str),
    var("BPGATE_TLS_KEY", "tls.key", Kind::Str),
    var("BPGATE_UPSTREAMS", "upstream.urls", Kind::List),
    var("BPGATE_WORKERS", "workers", Kind::Int),
    var(
        "BPGATE_TRUSTED_PROXIES",
        "forwarding.trusted_proxies",
        Kind::List,
    ),
    var("BPGATE_MAX_BODY", "limits.max_body", Kind::Str),
    var("BPGATE_DRAIN_TIMEOUT", "shutdown.drain_timeout", Kind::Str),
    var("BPGATE_LOG", "log.filter", Kind::Str),
    var("BPGATE_LOG_FORMAT", "log.format", Kind::Str),
    var("BPGATE_CORS_ORIGINS", "cors.origins", Kind::List),
    var("BPGATE_BASE_PATH_MODE", "base_path.mode", Kind::Str),
    var("BPGATE_AUDIT_DIR", "audit.dir", Kind::Str),
    var("BPGATE_AUDIT_STDOUT", "audit.stdout", Kind::Bool),
    var("BPGATE_STICKY_SECRET", "sticky.secret", Kind::Str),
    var("BPGATE_JWT_SECRET", "audit.jwt_secret", Kind::Str),
    var("BPGATE_AUDIT_JWT_SOURCE", "audit.jwt_source", Kind::Str),
    var(
        "BPGATE_AUDIT_EXTERNAL_AUTH_PUBLIC_KEY",
        "audit.external_auth.public_key",
        Kind::Str,
    ),
    var(
        "BPGATE_AUDIT_EXTERNAL_AUTH_PUBLIC_KEY_FILE",
        "audit.external_auth.public_key_file",
        Kind::Str,
    ),
    var(
        "BPGATE_AUDIT_EXTERNAL_AUTH_ALGORITHMS",
        "audit.external_auth.algorithms",
        Kind::List,
    ),
    var(
        "BPGATE_AUDIT_EXTERNAL_AUTH_ISSUER",
        "audit.external_auth.issuer",
        Kind::Str,
    ),
    var(
        "BPGATE_AUDIT_EXTERNAL_AUTH_AUDIENCE",
        "audit.external_auth.audience",
        Kind::Str,
    ),
    var(
        "BPGATE_AUDIT_EXTERNAL_AUTH_USER_CLAIMS",
        "audit.external_auth.user_claims",
        Kind::List,
    ),
];

pub(super) fn apply_env(
    table: &mut toml::Table,
    env: &dyn Fn(&str) -> Option<String>,
    origins: &mut Origins,
    notes: &mut Vec<Note>,
    errors: &mut Vec<ConfigError>,
) {
    for v in ENV_VARS {
        let Some(raw) = env(v.name) else { continue };
        let value = match convert(v, &raw) {
            Ok(x) => x,
            Err(problem) => {
                let mut e =
                    ConfigError::new(v.key, problem, format!("correct or unset {}", v.name));
                e.origin = Some(format!("env {}", v.name));
                errors.push(e);
                continue;
            }
        };
        let by = format!("env {}", v.name);
        note_override(table, v.key, &value, &by, origins, notes);
        if let Err(p) = set_path(table, v.key, value) {
            errors.push(ConfigError::new(
                v.key,
                p,
                format!("correct or unset {}", v.name),
            ));
        }
        origins.0.insert(v.key.to_string(), by);
    }
    // BP_PRODUCTION is Botpress's own switch; bpgate honours it too, over the file (environment
    // beats the file) but not over bpgate's own BPGATE_MODE.
    if let Some(p) = env("BP_PRODUCTION") {
        if matches!(parse_bool(&p), Ok(true)) {
            match env("BPGATE_MODE") {
                Some(m) if m.trim() != "production" => notes.push(Note::Warn(format!(
                    "mode: BPGATE_MODE={} wins over BP_PRODUCTION=true; bpgate runs in {} mode",
                    m.trim(),
                    m.trim()
                ))),
                Some(_) => {}
                None => {
                    let value = toml::Value::String("production".into());
                    let by = "env BP_PRODUCTION=true";
                    note_override(table, "mode", &value, by, origins, notes);
                    let _ = set_path(table, "mode", value);
                    origins.0.insert("mode".into(), by.into());
                }
            }
        }
    }
}

/// Keys whose values never appear in notes.
const SECRET_KEYS: [&str; 4] = [
    "sticky.secret",
    "sticky.previous_secret",
    "audit.jwt_secret",
    "admin.token",
];

/// Records that `by` replaces a different value already in `table` at `key` (from the file, or
/// from the environment when `by` is a flag). A changed `mode` is a warning: it decides whether
/// posture failures stop bpgate.
pub(super) fn note_override(
    table: &toml::Table,
    key: &str,
    value: &toml::Value,
    by: &str,
    origins: &Origins,
    notes: &mut Vec<Note>,
) {
    let Some(old) = get_path(table, key) else {
        return;
    };
    if old == value {
        return;
    }
    let from = origins.of(key).unwrap_or("the file");
    let text = if SECRET_KEYS.contains(&key) {
        format!("{key}: {by} overrides the value from {from}")
    } else {
        format!("{key}: {by} ({value}) overrides {old} from {from}")
    };
    notes.push(if key == "mode" {
        Note::Warn(text)
    } else {
        Note::Info(text)
    });
}

/// The value at `a.b.c`, if the table has one.
pub(super) fn get_path<'t>(table: &'t toml::Table, key: &str) -> Option<&'t toml::Value> {
    let mut parts = key.split('.');
    let mut cur = table.get(parts.next()?)?;
    for p in parts {
        cur = cur.as_table()?.get(p)?;
    }
    Some(cur)
}

fn convert(v: &EnvVar, raw: &str) -> Result<toml::Value, String> {
    Ok(match v.kind {
        Kind::Str => toml::Value::String(raw.trim().to_string()),
        Kind::List => toml::Value::Array(
            raw.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(|s| toml::Value::String(s.to_string()))
                .collect(),
        ),
        Kind::Int => {
            let n: i64 = raw
                .trim()
                .parse()
                .ok()
                .filter(|n| *n >= 0)
                .ok_or_else(|| format!("{}=`{raw}` is not a whole number", v.name))?;
            toml::Value::Integer(n)
        }
        Kind::Bool => toml::Value::Boolean(
            parse_bool(raw).map_err(|_| format!("{}=`{raw}` is not true or false", v.name))?,
        ),
    })
}

pub fn parse_bool(s: &str) -> Result<bool, ()> {
    match s.trim().to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "y" | "on" => Ok(true),
        "0" | "false" | "no" | "n" | "off" | "" => Ok(false),
        _ => Err(()),
    }
}

/// Sets `a.b.c` in a table, creating intermediate tables. A string given for a table-valued key
/// (`base_path = "/x"` style) replaces it only at a leaf.
pub(super) fn set_path(
    table: &mut toml::Table,
    key: &str,
    value: toml::Value,
) -> Result<(), String> {
    let mut parts = key.split('.').peekable();
    let mut cur = table;
    while let Some(p) = parts.next() {
        if parts.peek().is_none() {
            cur.insert(p.to_string(), value);
            return Ok(());
        }
        let entry = cur
            .entry(p.to_string())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        if let toml::Value::String(s) = entry {
            // `base_path = "/x"` in the file and BPGATE_BASE_PATH_MODE in the env: widen it.
            let mut t = toml::Table::new();
            t.insert("path".into(), toml::Value::String(s.clone()));
            *entry = toml::Value::Table(t);
        }
        cur = match entry {
            toml::Value::Table(t) => t,
            _ => {
                return Err(format!(
                    "`{p}` is not a table in the file, so `{key}` cannot be set"
                ))
            }
        };
    }
    Ok(())
}
