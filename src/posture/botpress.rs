//! Botpress's side of the posture, modelled on Botpress v12.31.10's own code so `check` sees the
//! values Botpress runs with:
//!
//! - its environment: the `.env` file given to `check`, parsed as dotenv 7 does ([`super::dotenv`]),
//!   and never mixed with bpgate's own process environment;
//! - `botpress.config.json` as `ConfigProvider.getBotpressConfig` builds it
//!   (`core/config/config-loader.ts`): `%BOTPRESS_DIR%`, `"$isProduction"`, `"$isDevelopment"` and
//!   `%ENV_VAR%` substituted in the text ([`substitute`]), then every `BP_CONFIG_<PATH>` whose path
//!   is a schema leaf applied with lodash `_.merge` ([`apply_overrides`]), then `BP_LICENSE_KEY`;
//! - the NLU module config (`data/global/config/nlu.json`) with its `BP_MODULE_NLU_*` overrides
//!   (`core/modules/config-reader.ts`).

use std::collections::BTreeMap;

use serde_json::{Map, Value};

use super::dotenv::js_trim;

/// Where Botpress's environment was read from.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum EnvFrom {
    /// The `--botpress-env` file, alone: bpgate's process environment is not Botpress's.
    File(String),
    /// No file given: this process's environment is taken as Botpress's.
    #[default]
    Process,
}

/// Which copy of the global config files the checks used.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum ConfigSource {
    /// `BPFS_STORAGE` is not `database`: Botpress reads the files on disk.
    #[default]
    Disk,
    /// Read from the database (`srv_ghost_files`), as Botpress does with `BPFS_STORAGE=database`.
    Database {
        /// The files found there, e.g. `data/global/botpress.config.json`.
        found: Vec<String>,
        /// The files not there (Botpress copies the disk folder only while the table is empty).
        missing: Vec<String>,
    },
    /// `BPFS_STORAGE=database` but the database could not be read; the reason.
    DatabaseUnread(String),
}

/// What Botpress would run with.
#[derive(Debug, Clone, Default)]
pub struct BotpressView {
    /// Botpress's environment (see [`EnvFrom`]).
    pub env: BTreeMap<String, String>,
    pub env_from: EnvFrom,
    /// The effective `botpress.config.json` (or `{}` when not given) after substitution,
    /// `BP_CONFIG_*` and `BP_LICENSE_KEY`.
    pub config: Value,
    /// Whether a `botpress.config.json` was read (from disk or the database); without it Botpress's
    /// generated defaults are assumed.
    pub config_given: bool,
    /// The file on disk as it is, without substitution or overrides: Botpress reads `pro.enabled`
    /// from it at boot, whatever `BPFS_STORAGE` says (`index.ts:95-105`).
    pub disk_config: Option<Value>,
    /// The effective NLU module config, if `nlu.json` was read.
    pub nlu: Option<Value>,
    pub source: ConfigSource,
    /// Remarks about how the inputs were read (substitutions, unknown overrides, ...).
    pub notes: Vec<String>,
}

// ---------------------------------------------------------------------------------------------
// JavaScript helpers

/// `yn@2` (Botpress's boolean reader): `y|yes|true|1` true, `n|no|false|0` false, else `None`.
pub fn yn_opt(s: &str) -> Option<bool> {
    match js_trim(s).to_ascii_lowercase().as_str() {
        "y" | "yes" | "true" | "1" => Some(true),
        "n" | "no" | "false" | "0" => Some(false),
        _ => None,
    }
}

/// `yn(s)` in a boolean position: only a yes-value is true.
pub fn yn(s: &str) -> bool {
    yn_opt(s) == Some(true)
}

/// `yn(String(v))` for a JSON value.
pub fn yn_value(v: Option<&Value>) -> bool {
    match v {
        Some(Value::Bool(b)) => *b,
        Some(Value::String(s)) => yn(s),
        Some(Value::Number(n)) => yn(&n.to_string()),
        _ => false,
    }
}

/// JavaScript truthiness (`if (config.x)`).
pub fn js_truthy(v: Option<&Value>) -> bool {
    match v {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(Value::Number(n)) => n.as_f64().is_some_and(|f| f != 0.0),
        Some(Value::String(s)) => !s.is_empty(),
        Some(Value::Array(_)) | Some(Value::Object(_)) => true,
    }
}

/// `JSON.parse(v)`, or the raw string when it is not JSON (`getValueFromEnvKey`).
pub fn json_or_string(v: &str) -> Value {
    serde_json::from_str(v).unwrap_or_else(|_| Value::String(v.to_string()))
}

/// `String(v)` for what `getValueFromEnvKey` returns (`None` is `undefined`).
fn js_string(v: Option<&Value>) -> String {
    match v {
        None => "undefined".into(),
        Some(Value::Null) => "null".into(),
        Some(Value::Bool(b)) => b.to_string(),
        Some(Value::Number(n)) => match n.as_f64() {
            Some(f) if f.fract() == 0.0 && f.abs() < 1e21 => format!("{}", f as i128),
            _ => n.to_string(),
        },
        Some(Value::String(s)) => s.clone(),
        // Array.prototype.toString: elements joined by commas, null/undefined as "".
        Some(Value::Array(a)) => a
            .iter()
            .map(|x| match x {
                Value::Null => String::new(),
                x => js_string(Some(x)),
            })
            .collect::<Vec<_>>()
            .join(","),
        Some(Value::Object(_)) => "[object Object]".into(),
    }
}

/// `s.replace(pattern, replacement)` with a string pattern: the first occurrence only, and the
/// replacement's `$$`, `$&`, `` $` `` and `$'` patterns expanded as JavaScript does.
fn js_replace_first(s: &str, pattern: &str, replacement: &str) -> String {
    let Some(at) = s.find(pattern) else {
        return s.to_string();
    };
    let (before, after) = (&s[..at], &s[at + pattern.len()..]);
    let mut rep = String::with_capacity(replacement.len());
    let mut chars = replacement.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '$' {
            rep.push(c);
            continue;
        }
        match chars.peek() {
            Some('$') => rep.push('$'),
            Some('&') => rep.push_str(pattern),
            Some('`') => rep.push_str(before),
            Some('\'') => rep.push_str(after),
            _ => {
                rep.push('$');
                continue;
            }
        }
        chars.next();
    }
    format!("{before}{rep}{after}")
}

// ---------------------------------------------------------------------------------------------
// Substitution (`ConfigProvider.getConfig`)

/// What [`substitute`] needs to know about Botpress's process.
pub struct SubstitutionContext<'a> {
    /// `process.PROJECT_LOCATION` (the folder of `.env` and `data/`), if known.
    pub project_dir: Option<&'a str>,
    /// `process.IS_PRODUCTION` as far as the environment shows (`./bp -p` cannot be seen).
    pub is_production: bool,
    /// Botpress's environment.
    pub env: &'a dyn Fn(&str) -> Option<String>,
}

/// Substitutes the text of `botpress.config.json` as `getConfig` does before `JSON.parse`:
/// the first `%BOTPRESS_DIR%`, the first `"$isProduction"` and `"$isDevelopment"`, then every
/// `%NAME%` with `getValueFromEnvKey(NAME)` (an unset variable becomes the text `undefined`).
/// Returns the text and a note per substituted variable.
pub fn substitute(content: &str, cx: &SubstitutionContext<'_>) -> (String, Vec<String>) {
    let mut notes = Vec::new();
    let mut c = match cx.project_dir {
        Some(d) => js_replace_first(content, "%BOTPRESS_DIR%", &d.replace('\\', "/")),
        None if content.contains("%BOTPRESS_DIR%") => {
            notes.push(
                "%BOTPRESS_DIR% left as is: Botpress's folder is unknown (give --botpress-env)"
                    .into(),
            );
            content.replacen("%BOTPRESS_DIR%", "<BOTPRESS_DIR>", 1)
        }
        None => content.to_string(),
    };
    let (p, d) = if cx.is_production {
        ("true", "false")
    } else {
        ("false", "true")
    };
    c = js_replace_first(&c, "\"$isProduction\"", p);
    c = js_replace_first(&c, "\"$isDevelopment\"", d);
    // content.match(/%([a-zA-Z0-9_]+)%/gim): every match, left to right, without overlap.
    let mut vars = Vec::new();
    let b = c.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let name_len = b[i + 1..]
                .iter()
                .take_while(|x| x.is_ascii_alphanumeric() || **x == b'_')
                .count();
            if name_len > 0 && b.get(i + 1 + name_len) == Some(&b'%') {
                vars.push(c[i..i + name_len + 2].to_string());
                i += name_len + 2;
                continue;
            }
        }
        i += 1;
    }
    for var in vars {
        let name = var.replace('%', "");
        let value = (cx.env)(&name).map(|v| json_or_string(&v));
        let text = js_string(value.as_ref());
        if value.is_none() {
            notes.push(format!(
                "{var} is unset in Botpress's environment: Botpress writes `undefined` there"
            ));
        } else {
            notes.push(format!("{var} substituted from Botpress's environment"));
        }
        c = js_replace_first(&c, &var, &text);
    }
    (c, notes)
}

// ---------------------------------------------------------------------------------------------
// BP_CONFIG_* overrides (`_loadBotpressConfigFromEnv`)

/// The leaf paths of `botpress.config.schema.json` in v12.31.10, as `getPropertiesRecursive`
/// lists them from `core/config/botpress.config.ts`; `*` stands for an `additionalProperties` key
/// (`ADDPROP`), expanded with the keys present in the config ([`override_paths`]).
pub const SCHEMA_PATHS: &[&str] = &[
    "version",
    "appSecret",
    "httpServer.host",
    "httpServer.port",
    "httpServer.proxy",
    "httpServer.backlog",
    "httpServer.bodyLimit",
    "httpServer.cors.enabled",
    "httpServer.cors.origin",
    "httpServer.cors.credentials",
    "httpServer.externalUrl",
    "httpServer.keepAliveTimeout",
    "httpServer.session.enabled",
    "httpServer.session.maxAge",
    "httpServer.socketTransports",
    "httpServer.rateLimit.enabled",
    "httpServer.rateLimit.limitWindow",
    "httpServer.rateLimit.limit",
    "httpServer.headers.*",
    "converse",
    "dialog.janitorInterval",
    "dialog.timeoutInterval",
    "dialog.sessionTimeoutInterval",
    "logs.dbOutput.expiration",
    "logs.dbOutput.janitorInterval",
    "logs.fileOutput.enabled",
    "logs.fileOutput.folder",
    "logs.fileOutput.maxFileSize",
    "modules",
    "pro.collaboratorsAuthStrategies",
    "pro.enabled",
    "pro.licenseKey",
    "pro.monitoring.enabled",
    "pro.monitoring.collectionInterval",
    "pro.monitoring.retentionPeriod",
    "pro.monitoring.janitorInterval",
    "pro.alerting.enabled",
    "pro.alerting.watcherInterval",
    "pro.alerting.retentionPeriod",
    "pro.alerting.janitorInterval",
    "pro.alerting.rules",
    "pro.externalAuth.enabled",
    "pro.externalAuth.audience",
    "pro.externalAuth.issuer",
    "pro.externalAuth.algorithms",
    "pro.externalAuth.publicKey",
    "pro.externalAuth.jwksClient.jwksUri",
    "pro.externalAuth.jwksClient.keyId",
    "pro.externalAuth.jwksClient.*",
    "pro.branding.admin.title",
    "pro.branding.admin.favicon",
    "pro.branding.admin.customCss",
    "pro.branding.studio.title",
    "pro.branding.studio.favicon",
    "pro.branding.studio.customCss",
    "pro.branding.webchat.title",
    "pro.branding.webchat.favicon",
    "pro.branding.webchat.customCss",
    "superAdmins",
    "sendUsageStats",
    "dataRetention.janitorInterval",
    "dataRetention.policies.*",
    "botCategories",
    "allowServerReboot",
    "fileUpload.maxFileSize",
    "fileUpload.allowedMimeTypes",
    "jwtToken.duration",
    "jwtToken.allowRefresh",
    "jwtToken.useCookieStorage",
    "jwtToken.cookieOptions.maxAge",
    "jwtToken.cookieOptions.signed",
    "jwtToken.cookieOptions.expires",
    "jwtToken.cookieOptions.httpOnly",
    "jwtToken.cookieOptions.path",
    "jwtToken.cookieOptions.domain",
    "jwtToken.cookieOptions.secure",
    "jwtToken.cookieOptions.encode",
    "jwtToken.cookieOptions.sameSite",
    "autoRevision",
    "eventCollector.enabled",
    "eventCollector.collectionInterval",
    "eventCollector.retentionPeriod",
    "eventCollector.ignoredEventTypes",
    "eventCollector.ignoredEventProperties",
    "eventCollector.debuggerProperties",
    "botMonitoring.enabled",
    "botMonitoring.interval",
    "authStrategies.*.id",
    "authStrategies.*.type",
    "authStrategies.*.label",
    "authStrategies.*.options.maxLoginAttempt",
    "authStrategies.*.options.lockoutDuration",
    "authStrategies.*.options.passwordExpiryDelay",
    "authStrategies.*.options.passwordMinLength",
    "authStrategies.*.options.requireComplexPassword",
    "authStrategies.*.options.entryPoint",
    "authStrategies.*.options.callbackUrl",
    "authStrategies.*.options.path",
    "authStrategies.*.options.issuer",
    "authStrategies.*.options.cert",
    "authStrategies.*.options.acceptedClockSkewMs",
    "authStrategies.*.options.logoutUrl",
    "authStrategies.*.options.logoutCallbackUrl",
    "authStrategies.*.options.authorizationURL",
    "authStrategies.*.options.tokenURL",
    "authStrategies.*.options.clientID",
    "authStrategies.*.options.clientSecret",
    "authStrategies.*.options.scope",
    "authStrategies.*.options.callbackURL",
    "authStrategies.*.options.userInfoURL",
    "authStrategies.*.options.jwtToken.audience",
    "authStrategies.*.options.jwtToken.issuer",
    "authStrategies.*.options.jwtToken.algorithms",
    "authStrategies.*.options.jwtToken.publicKey",
    "authStrategies.*.options.serverUrl",
    "authStrategies.*.options.bindDn",
    "authStrategies.*.options.bindCredentials",
    "authStrategies.*.options.searchBase",
    "authStrategies.*.options.searchFilter",
    "authStrategies.*.options.timeout",
    "authStrategies.*.options.tlsEnabled",
    "authStrategies.*.options.certificates",
    "authStrategies.*.fieldMapping.*",
    "authStrategies.*.allowSelfSignup",
    "authStrategies.*.hidden",
    "showPoweredBy",
    "noRepeatPolicy",
    "additionalLanguages",
    "actionServers.local.port",
    "actionServers.local.enabled",
    "actionServers.remotes",
    "experimental",
    "telemetry.entriesLimit",
];

/// `getValidJsonSchemaProperties`: the schema paths with every `*` expanded to the keys the
/// config has there (`resolveAdditionalProperties`, `config-utils.ts`); the object holding the
/// `*` is a path too.
pub fn override_paths(config: &Value) -> Vec<String> {
    let paths: Vec<String> = SCHEMA_PATHS.iter().map(|s| s.to_string()).collect();
    resolve_additional(&paths, config)
}

fn resolve_additional(paths: &[String], data: &Value) -> Vec<String> {
    let (need, ok): (Vec<&String>, Vec<&String>) = paths.iter().partition(|p| p.contains('*'));
    let ok: Vec<String> = ok.into_iter().cloned().collect();
    let mut out: Vec<String> = Vec::new();
    for p in need {
        for x in expand_path(p, data, &ok) {
            if !out.contains(&x) {
                out.push(x);
            }
        }
    }
    out.extend(ok);
    out.sort();
    out
}

fn expand_path(path: &str, data: &Value, known: &[String]) -> Vec<String> {
    let idx = path.find('*').unwrap_or(path.len());
    let truncated = &path[..idx.saturating_sub(1)];
    let known_keys: Vec<&str> = known
        .iter()
        .filter(|p| p.starts_with(truncated))
        .map(|p| p.get(truncated.len() + 1..).unwrap_or(""))
        .collect();
    let keys: Vec<String> = match lodash_get(data, truncated) {
        Some(Value::Object(m)) => m.keys().cloned().collect(),
        Some(Value::Array(a)) => (0..a.len()).map(|i| i.to_string()).collect(),
        _ => Vec::new(),
    };
    let expanded: Vec<String> = keys
        .into_iter()
        .filter(|k| !known_keys.iter().any(|p| p.starts_with(k.as_str())))
        .map(|k| path.replacen('*', &k, 1))
        .collect();
    let expanded = if expanded.is_empty() {
        expanded
    } else {
        resolve_additional(&expanded, data)
    };
    let mut out = vec![truncated.to_string()];
    out.extend(expanded);
    out
}

fn lodash_get<'a>(v: &'a Value, path: &str) -> Option<&'a Value> {
    let mut cur = v;
    for seg in path.split('.') {
        cur = match cur {
            Value::Object(m) => m.get(seg)?,
            Value::Array(a) => a.get(seg.parse::<usize>().ok()?)?,
            _ => return None,
        };
    }
    Some(cur)
}

/// `BP_CONFIG_${option.split('.').join('_')}`.toUpperCase()
pub fn override_env_key(option: &str) -> String {
    format!("BP_CONFIG_{}", option.replace('.', "_")).to_uppercase()
}

fn is_index(s: &str) -> bool {
    s == "0" || (!s.is_empty() && !s.starts_with('0') && s.bytes().all(|b| b.is_ascii_digit()))
}

/// lodash `_.set(obj, path, value)`: missing or non-object steps become `{}` (or `[]` before an
/// index).
fn lodash_set(root: &mut Value, segs: &[&str], value: Value) {
    let Some((first, rest)) = segs.split_first() else {
        *root = value;
        return;
    };
    if !matches!(root, Value::Object(_) | Value::Array(_)) {
        *root = Value::Object(Map::new());
    }
    let next_container = |next: Option<&&str>| match next {
        Some(n) if is_index(n) => Value::Array(Vec::new()),
        _ => Value::Object(Map::new()),
    };
    let child: &mut Value = match root {
        Value::Array(a) if is_index(first) => {
            let i: usize = first.parse().unwrap_or(0);
            if a.len() <= i {
                a.resize(i + 1, Value::Null);
            }
            &mut a[i]
        }
        Value::Array(_) => return, // a named property on an array is never serialised
        Value::Object(m) => m.entry(first.to_string()).or_insert(Value::Null),
        _ => return,
    };
    if rest.is_empty() {
        *child = value;
        return;
    }
    if !matches!(child, Value::Object(_) | Value::Array(_)) {
        *child = next_container(rest.first());
    }
    lodash_set(child, rest, value);
}

/// lodash `_.merge(dest, src)` for JSON values: plain objects merge key by key, arrays merge
/// **by index** (`["websocket","polling"]` merged with `["websocket"]` stays
/// `["websocket","polling"]`), anything else is replaced.
pub fn lodash_merge(dest: &mut Value, src: &Value) {
    match src {
        Value::Array(s) => {
            let mut base = match dest {
                Value::Array(d) => std::mem::take(d),
                _ => Vec::new(),
            };
            for (i, sv) in s.iter().enumerate() {
                if base.len() <= i {
                    base.resize(i + 1, Value::Null);
                }
                merge_slot(&mut base[i], sv);
            }
            *dest = Value::Array(base);
        }
        Value::Object(s) => {
            match dest {
                Value::Object(d) => {
                    for (k, sv) in s {
                        merge_slot(d.entry(k.clone()).or_insert(Value::Null), sv);
                    }
                }
                // An object merged into an array sets index keys only.
                Value::Array(d) => {
                    for (k, sv) in s {
                        if let Some(i) = k.parse::<usize>().ok().filter(|_| is_index(k)) {
                            if d.len() <= i {
                                d.resize(i + 1, Value::Null);
                            }
                            merge_slot(&mut d[i], sv);
                        }
                    }
                }
                _ => {
                    let mut fresh = Value::Object(Map::new());
                    lodash_merge(&mut fresh, src);
                    *dest = fresh;
                }
            }
        }
        other => *dest = other.clone(),
    }
}

fn merge_slot(slot: &mut Value, src: &Value) {
    match src {
        Value::Array(_) | Value::Object(_) => lodash_merge(slot, src),
        v => *slot = v.clone(),
    }
}

/// Applies the `BP_CONFIG_*` variables Botpress would apply: for every schema path (see
/// [`override_paths`], computed on the config before the merge) whose upper-cased variable is
/// set, `JSON.parse(value)` or the raw string is `_.set` into an overrides object, which is then
/// `_.merge`d into the config. Returns the variables applied, and those set but ignored because
/// their path is not a schema leaf.
pub fn apply_overrides(
    config: &mut Value,
    env: &BTreeMap<String, String>,
) -> (Vec<String>, Vec<String>) {
    let mut overrides = Value::Object(Map::new());
    let mut applied = Vec::new();
    for option in override_paths(config) {
        let key = override_env_key(&option);
        if let Some(raw) = env.get(&key) {
            let segs: Vec<&str> = option.split('.').collect();
            lodash_set(&mut overrides, &segs, json_or_string(raw));
            if !applied.contains(&key) {
                applied.push(key);
            }
        }
    }
    lodash_merge(config, &overrides);
    let ignored = env
        .keys()
        .filter(|k| k.starts_with("BP_CONFIG_") && !applied.contains(k))
        .cloned()
        .collect();
    (applied, ignored)
}

/// The NLU module options `check` reads, with their `BP_MODULE_NLU_*` variables.
pub const NLU_ENV_PATHS: &[&str] = &[
    "languageSources",
    "ducklingURL",
    "ducklingEnabled",
    "nluServer.autoStart",
    "nluServer.endpoint",
];

/// The NLU config as `ConfigReader.getMerged` builds it: the global file, then the environment
/// (`BP_NLU_<OPTION>` raw, deprecated, then `BP_MODULE_NLU_<PATH>` parsed), merged **shallowly**:
/// `BP_MODULE_NLU_NLUSERVER_AUTOSTART` alone replaces the whole `nluServer` object.
pub fn apply_nlu_env(nlu: &mut Value, env: &BTreeMap<String, String>) {
    let mut from_env = Value::Object(Map::new());
    for top in [
        "languageSources",
        "ducklingURL",
        "ducklingEnabled",
        "nluServer",
    ] {
        if let Some(v) = env.get(&format!("BP_NLU_{}", top.to_uppercase())) {
            lodash_set(&mut from_env, &[top], Value::String(v.clone()));
        }
    }
    for option in NLU_ENV_PATHS {
        let key = format!("BP_MODULE_NLU_{}", option.replace('.', "_")).to_uppercase();
        if let Some(v) = env.get(&key) {
            let segs: Vec<&str> = option.split('.').collect();
            lodash_set(&mut from_env, &segs, json_or_string(v));
        }
    }
    if !nlu.is_object() {
        *nlu = Value::Object(Map::new());
    }
    if let (Value::Object(dst), Value::Object(src)) = (nlu, from_env) {
        for (k, v) in src {
            dst.insert(k, v);
        }
    }
}

/// Reads `a.b.c` exactly (JavaScript property access is case-sensitive).
pub fn get<'a>(v: &'a Value, path: &str) -> Option<&'a Value> {
    lodash_get(v, path)
}

/// The schema's placeholder licence key, which means "no key".
pub const LICENSE_PLACEHOLDER: &str = "paste your license key here";

/// Socket transports Botpress accepts (`realtime-service.ts`).
const ALLOWED_TRANSPORTS: &[&str] = &["websocket", "polling"];

impl BotpressView {
    /// A variable of Botpress's environment; empty counts as unset (`if (process.env.X)`).
    pub fn env(&self, k: &str) -> Option<&str> {
        self.env
            .get(k)
            .map(String::as_str)
            .filter(|s| !s.is_empty())
    }
    /// Whether the variable is defined at all, even empty (`process.env.X !== undefined`).
    pub fn env_defined(&self, k: &str) -> bool {
        self.env.contains_key(k)
    }
    pub fn env_yn(&self, k: &str) -> bool {
        self.env(k).is_some_and(yn)
    }
    pub fn cfg(&self, path: &str) -> Option<&Value> {
        get(&self.config, path)
    }
    pub fn cfg_str(&self, path: &str) -> Option<&str> {
        self.cfg(path)
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
    }
    /// `IS_PRODUCTION = argv.production || yn(BP_PRODUCTION) || yn(CLUSTER_ENABLED)`, without
    /// `argv` (`./bp -p` cannot be seen from here).
    pub fn is_production(&self) -> bool {
        self.env_yn("BP_PRODUCTION") || self.env_yn("CLUSTER_ENABLED")
    }
    /// `IS_PRO_ENABLED` (`index.ts:95-105`): when `PRO_ENABLED` or `BP_CONFIG_PRO_ENABLED` is
    /// defined (even empty) it is `yn(PRO_ENABLED) || yn(BP_CONFIG_PRO_ENABLED)` and the file is
    /// not read; otherwise the on-disk file's `pro.enabled`, as `require` reads it. Returns the
    /// value and where it came from.
    pub fn pro_enabled(&self) -> (bool, String) {
        let (p, c) = ("PRO_ENABLED", "BP_CONFIG_PRO_ENABLED");
        if self.env_defined(p) || self.env_defined(c) {
            let on =
                self.env.get(p).is_some_and(|v| yn(v)) || self.env.get(c).is_some_and(|v| yn(v));
            let shown: Vec<String> = [p, c]
                .iter()
                .filter_map(|k| self.env.get(*k).map(|v| format!("{k}={v}")))
                .collect();
            return (on, shown.join(", "));
        }
        match &self.disk_config {
            Some(d) => (
                js_truthy(get(d, "pro.enabled")),
                "pro.enabled in botpress.config.json on disk".into(),
            ),
            None if self.config_given => (
                js_truthy(self.cfg("pro.enabled")),
                "pro.enabled in botpress.config.json".into(),
            ),
            None => (false, "default (no botpress.config.json given)".into()),
        }
    }
    /// The licence key: `BP_LICENSE_KEY` wins over `pro.licenseKey` (`config-loader.ts:64-66`);
    /// the schema's placeholder is no key.
    pub fn license_key(&self) -> Option<(&str, &'static str)> {
        self.env("BP_LICENSE_KEY")
            .map(|k| (k, "BP_LICENSE_KEY"))
            .or_else(|| {
                self.cfg_str("pro.licenseKey")
                    .map(|k| (k, "pro.licenseKey"))
            })
            .filter(|(k, _)| js_trim(k) != LICENSE_PLACEHOLDER)
    }
    /// Botpress's external URL: `EXTERNAL_URL` beats `httpServer.externalUrl`.
    pub fn external_url(&self) -> Option<(&str, &'static str)> {
        self.env("EXTERNAL_URL")
            .map(|u| (u, "EXTERNAL_URL"))
            .or_else(|| {
                self.cfg_str("httpServer.externalUrl")
                    .map(|u| (u, "httpServer.externalUrl"))
            })
    }
    /// `getSocketTransports`: the configured transports that are exactly `websocket` or
    /// `polling`, or both when none is (an empty list, `["ws"]`, a string...).
    pub fn socket_transports(&self) -> Vec<String> {
        let configured: Vec<&Value> = match self.cfg("httpServer.socketTransports") {
            Some(Value::Array(a)) => a.iter().collect(),
            Some(Value::Object(m)) => m.values().collect(),
            _ => Vec::new(),
        };
        let kept: Vec<String> = configured
            .into_iter()
            .filter_map(Value::as_str)
            .filter(|t| ALLOWED_TRANSPORTS.contains(t))
            .map(str::to_string)
            .collect();
        if kept.is_empty() {
            ALLOWED_TRANSPORTS.iter().map(|s| s.to_string()).collect()
        } else {
            kept
        }
    }
    /// The NLU server core starts (`maybeStartLocalSTAN`): `None` when it starts its own (the
    /// default), `Some(endpoint)` when `nluServer.autoStart` is false (the endpoint may be missing).
    pub fn external_nlu_server(&self) -> Option<Option<String>> {
        let nlu = self.nlu.as_ref()?;
        let auto = match get(nlu, "nluServer.autoStart") {
            None | Some(Value::Null) => true,
            v => js_truthy(v),
        };
        if auto {
            return None;
        }
        Some(
            get(nlu, "nluServer.endpoint")
                .and_then(Value::as_str)
                .filter(|s| !s.is_empty())
                .map(str::to_string),
        )
    }
    /// The language sources of the NLU server core starts: `nlu.json` `languageSources` (with
    /// `BP_MODULE_NLU_LANGUAGESOURCES` applied), default Botpress's public server.
    pub fn language_endpoints(&self) -> (Vec<String>, &'static str) {
        let v = self.nlu.as_ref().and_then(|n| get(n, "languageSources"));
        let src = if self.env.contains_key("BP_MODULE_NLU_LANGUAGESOURCES") {
            "BP_MODULE_NLU_LANGUAGESOURCES"
        } else {
            "nlu.json languageSources"
        };
        let eps: Vec<String> = v
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|s| get(s, "endpoint").and_then(Value::as_str))
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default();
        if eps.is_empty() {
            (vec![DEFAULT_LANG_SERVER.to_string()], "default")
        } else {
            (eps, src)
        }
    }
    /// Botpress's JWT secret: `appSecret || jwtSecret` (`botpress.ts` `checkJwtSecret`).
    pub fn app_secret(&self) -> Option<(&str, &'static str)> {
        self.cfg_str("appSecret")
            .map(|s| (s, "appSecret"))
            .or_else(|| self.cfg_str("jwtSecret").map(|s| (s, "jwtSecret")))
    }
}

pub const DEFAULT_LANG_SERVER: &str = "https://lang-01.botpress.io";

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    #[test]
    fn overrides_apply_only_to_schema_leaves_with_merge_semantics() {
        let mut cfg = json!({
            "pro": {"licenseKey": "paste"},
            "httpServer": {"cors": {"enabled": true}, "socketTransports": ["websocket", "polling"],
                           "headers": {"X-Powered-By": "Botpress"}},
            "authStrategies": {"default": {"type": "basic", "options": {"maxLoginAttempt": 0}}}
        });
        let (applied, ignored) = apply_overrides(
            &mut cfg,
            &env(&[
                ("BP_CONFIG_PRO_ENABLED", "true"),
                ("BP_CONFIG_PRO_LICENSEKEY", "abc"),
                ("BP_CONFIG_HTTPSERVER_CORS_ORIGIN", "https://a.example"),
                ("BP_CONFIG_HTTPSERVER_CORS", r#"{"origin":"*"}"#),
                ("BP_CONFIG_HTTPSERVER_SOCKETTRANSPORTS", r#"["websocket"]"#),
                ("BP_CONFIG_HTTPSERVER_HEADERS_X-POWERED-BY", "none"),
                (
                    "BP_CONFIG_AUTHSTRATEGIES_DEFAULT_OPTIONS_MAXLOGINATTEMPT",
                    "5",
                ),
                ("BP_CONFIG_httpServer_port", "1"),
                ("BP_CONFIG_JWTSECRET", "x"),
            ]),
        );
        assert_eq!(cfg["pro"]["enabled"], json!(true));
        assert_eq!(cfg["pro"]["licenseKey"], "abc");
        assert_eq!(cfg["httpServer"]["cors"]["origin"], "https://a.example");
        // Arrays merge by index: the second transport survives.
        assert_eq!(
            cfg["httpServer"]["socketTransports"],
            json!(["websocket", "polling"])
        );
        assert_eq!(cfg["httpServer"]["headers"]["X-Powered-By"], "none");
        assert_eq!(
            cfg["authStrategies"]["default"]["options"]["maxLoginAttempt"],
            json!(5)
        );
        assert!(cfg["httpServer"].get("port").is_none());
        for k in [
            "BP_CONFIG_HTTPSERVER_CORS",
            "BP_CONFIG_httpServer_port",
            "BP_CONFIG_JWTSECRET",
        ] {
            assert!(ignored.contains(&k.to_string()), "{k} {ignored:?}");
            assert!(!applied.contains(&k.to_string()));
        }
        assert!(applied.contains(&"BP_CONFIG_HTTPSERVER_SOCKETTRANSPORTS".to_string()));
    }

    #[test]
    fn lodash_merge_cases() {
        let mut d = json!({"a": [1, 2, 3], "b": {"c": 1}, "n": 5});
        lodash_merge(
            &mut d,
            &json!({"a": [9], "b": {"d": 2}, "n": {"x": 1}, "z": [1, [2]]}),
        );
        assert_eq!(
            d,
            json!({"a": [9, 2, 3], "b": {"c": 1, "d": 2}, "n": {"x": 1}, "z": [1, [2]]})
        );
        let mut d = json!({"a": {"k": 1}});
        lodash_merge(&mut d, &json!({"a": ["x"]}));
        assert_eq!(d, json!({"a": ["x"]}));
        let mut d = json!({"a": [1, 2]});
        lodash_merge(&mut d, &json!({"a": "str"}));
        assert_eq!(d, json!({"a": "str"}));
    }

    #[test]
    fn socket_transports_filter_and_fallback() {
        let view = |t: Value| BotpressView {
            config: json!({"httpServer": {"socketTransports": t}}),
            ..Default::default()
        };
        let both = vec!["websocket".to_string(), "polling".to_string()];
        assert_eq!(
            view(json!(["websocket"])).socket_transports(),
            vec!["websocket"]
        );
        assert_eq!(view(json!([])).socket_transports(), both);
        assert_eq!(view(json!(["ws"])).socket_transports(), both);
        assert_eq!(view(json!(["WebSocket"])).socket_transports(), both);
        assert_eq!(view(json!("websocket")).socket_transports(), both);
        assert_eq!(
            view(json!(["polling", "ws"])).socket_transports(),
            vec!["polling"]
        );
        assert_eq!(BotpressView::default().socket_transports(), both);
    }

    #[test]
    fn substitution_as_get_config() {
        let e = env(&[
            ("PUBLIC_URL", "https://bot.example.com"),
            ("NUM", "3000"),
            ("DOLLAR", "a$&b$$c"),
        ]);
        let lookup = move |k: &str| e.get(k).cloned();
        let cx = SubstitutionContext {
            project_dir: Some("C:\\bp"),
            is_production: true,
            env: &lookup,
        };
        let (out, notes) = substitute(
            r#"{"dir":"%BOTPRESS_DIR%/x","dir2":"%BOTPRESS_DIR%","p":"$isProduction","d":"$isDevelopment","p2":"$isProduction","u":"%PUBLIC_URL%","n":%NUM%,"m":"%MISSING%","s":"%DOLLAR%"}"#,
            &cx,
        );
        let v: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["dir"], "C:/bp/x");
        // Only the first %BOTPRESS_DIR% is Botpress's folder; the second is an env lookup.
        assert_eq!(v["dir2"], "undefined");
        assert_eq!(v["p"], json!(true));
        assert_eq!(v["d"], json!(false));
        assert_eq!(v["p2"], "$isProduction");
        assert_eq!(v["u"], "https://bot.example.com");
        assert_eq!(v["n"], json!(3000));
        assert_eq!(v["m"], "undefined");
        assert_eq!(v["s"], "a%DOLLAR%b$c");
        assert!(notes.iter().any(|n| n.contains("%MISSING%")), "{notes:?}");
    }

    #[test]
    fn pro_enabled_follows_index_ts() {
        let mut v = BotpressView {
            disk_config: Some(json!({"pro": {"enabled": true}})),
            config: json!({"pro": {"enabled": true}}),
            config_given: true,
            ..Default::default()
        };
        assert!(v.pro_enabled().0);
        // PRO_ENABLED defined: the file is not read.
        v.env = env(&[("PRO_ENABLED", "false")]);
        assert!(!v.pro_enabled().0);
        v.env = env(&[("PRO_ENABLED", "false"), ("BP_CONFIG_PRO_ENABLED", "yes")]);
        assert!(v.pro_enabled().0);
        v.env = env(&[("BP_CONFIG_PRO_ENABLED", "")]);
        assert!(!v.pro_enabled().0, "defined but empty: yn('') is not true");
        v.env = BTreeMap::new();
        v.disk_config = Some(json!({"pro": {"enabled": "$isProduction"}}));
        assert!(
            v.pro_enabled().0,
            "require() sees a non-empty string: truthy"
        );
    }

    #[test]
    fn license_key_env_wins_and_placeholder_is_none() {
        let mut v = BotpressView {
            config: json!({"pro": {"licenseKey": LICENSE_PLACEHOLDER}}),
            ..Default::default()
        };
        assert_eq!(v.license_key(), None);
        v.env = env(&[("BP_LICENSE_KEY", "K-1")]);
        assert_eq!(v.license_key(), Some(("K-1", "BP_LICENSE_KEY")));
        v.config = json!({"pro": {"licenseKey": "FILE-KEY"}});
        assert_eq!(v.license_key(), Some(("K-1", "BP_LICENSE_KEY")));
        v.env.clear();
        assert_eq!(v.license_key(), Some(("FILE-KEY", "pro.licenseKey")));
    }

    #[test]
    fn nlu_env_is_shallow() {
        let mut nlu = json!({"nluServer": {"autoStart": true, "endpoint": "http://nlu:3200"},
                             "languageSources": [{"endpoint": "http://lang:3100"}]});
        apply_nlu_env(
            &mut nlu,
            &env(&[("BP_MODULE_NLU_NLUSERVER_AUTOSTART", "false")]),
        );
        assert_eq!(nlu["nluServer"], json!({"autoStart": false}));
        let v = BotpressView {
            nlu: Some(nlu),
            ..Default::default()
        };
        assert_eq!(v.external_nlu_server(), Some(None));
    }

    #[test]
    fn yn_values() {
        for t in ["true", "YES", "y", "1", " y "] {
            assert!(yn(t));
        }
        for f in ["false", "no", "0", "", "on", "2"] {
            assert!(!yn(f));
        }
        assert_eq!(yn_opt("loopback"), None);
        assert_eq!(yn_opt("N"), Some(false));
    }
}
