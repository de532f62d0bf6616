//! Botpress's side of the posture: its environment, its `botpress.config.json` with the
//! `BP_CONFIG_*` overrides applied the way Botpress applies them, and the NLU module config.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

/// What Botpress would run with.
#[derive(Debug, Clone, Default)]
pub struct BotpressView {
    /// Process environment overlaid on the `.env` file (see [`merge_env`]).
    pub env: BTreeMap<String, String>,
    /// `botpress.config.json` (or `{}` when not given) with `BP_CONFIG_*` applied.
    pub config: Value,
    /// Whether a `botpress.config.json` was read; without it schema defaults are assumed.
    pub config_given: bool,
    /// `data/global/config/nlu.json`, if given.
    pub nlu: Option<Value>,
}

/// Botpress loads `.env` with `dotenv`, which never overrides a variable already set in the
/// process. So the process environment wins and `.env` only fills the gaps; we do the same.
pub fn merge_env(
    dotenv: BTreeMap<String, String>,
    names: &[String],
    process: &dyn Fn(&str) -> Option<String>,
) -> BTreeMap<String, String> {
    let mut env = dotenv;
    for n in names {
        if let Some(v) = process(n) {
            env.insert(n.clone(), v);
        }
    }
    env
}

/// Applies every `BP_CONFIG_<PATH>` variable: the path is split on `_`, each segment matched
/// case-insensitively against existing keys (so `PRO_LICENSEKEY` reaches `pro.licenseKey`), and
/// the value is JSON-parsed when possible, else taken as a string (`config-loader.ts`).
pub fn apply_overrides(config: &mut Value, env: &BTreeMap<String, String>) {
    for (k, v) in env {
        let Some(path) = k.strip_prefix("BP_CONFIG_") else {
            continue;
        };
        if path.is_empty() {
            continue;
        }
        let value = serde_json::from_str(v).unwrap_or_else(|_| Value::String(v.clone()));
        let segs: Vec<String> = path.split('_').map(|s| s.to_ascii_lowercase()).collect();
        set_ci(config, &segs, value);
    }
}

fn set_ci(node: &mut Value, segs: &[String], value: Value) {
    let Some((first, rest)) = segs.split_first() else {
        *node = value;
        return;
    };
    if !node.is_object() {
        *node = Value::Object(Map::new());
    }
    let Value::Object(map) = node else { return };
    let key = map
        .keys()
        .find(|k| k.eq_ignore_ascii_case(first))
        .cloned()
        .unwrap_or_else(|| first.clone());
    let child = map.entry(key).or_insert(Value::Null);
    set_ci(child, rest, value);
}

/// Reads `a.b.c`, matching each key case-insensitively.
pub fn get<'a>(v: &'a Value, path: &str) -> Option<&'a Value> {
    let mut cur = v;
    for seg in path.split('.') {
        let map = cur.as_object()?;
        cur = map.get(seg).or_else(|| {
            map.iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(seg))
                .map(|(_, v)| v)
        })?;
    }
    Some(cur)
}

/// Botpress's yn-boolean: `true/yes/y/1` (any case) is true.
pub fn yn(s: &str) -> bool {
    matches!(
        s.trim().to_ascii_lowercase().as_str(),
        "true" | "yes" | "y" | "1"
    )
}

/// A JSON value read as a boolean the way JavaScript truthiness of config flags goes in
/// practice: `true`, or a yn-string.
pub fn truthy(v: Option<&Value>) -> bool {
    match v {
        Some(Value::Bool(b)) => *b,
        Some(Value::String(s)) => yn(s),
        Some(Value::Number(n)) => n.as_f64().is_some_and(|f| f != 0.0),
        _ => false,
    }
}

impl BotpressView {
    pub fn env(&self, k: &str) -> Option<&str> {
        self.env
            .get(k)
            .map(String::as_str)
            .filter(|s| !s.is_empty())
    }
    pub fn env_yn(&self, k: &str) -> bool {
        self.env(k).is_some_and(yn)
    }
    pub fn cfg(&self, path: &str) -> Option<&Value> {
        get(&self.config, path)
    }
    pub fn cfg_bool(&self, path: &str) -> bool {
        truthy(self.cfg(path))
    }
    pub fn cfg_str(&self, path: &str) -> Option<&str> {
        self.cfg(path)
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
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
    /// `httpServer.socketTransports`, default `["websocket","polling"]`.
    pub fn socket_transports(&self) -> Vec<String> {
        match self.cfg("httpServer.socketTransports") {
            Some(Value::Array(a)) => a
                .iter()
                .filter_map(|x| x.as_str().map(str::to_string))
                .collect(),
            _ => vec!["websocket".into(), "polling".into()],
        }
    }
    /// The NLU language sources: `BP_MODULE_NLU_LANGUAGESOURCES` (JSON) beats nlu.json, whose
    /// default is Botpress's public server.
    pub fn language_endpoints(&self) -> (Vec<String>, &'static str) {
        let from_env = self
            .env("BP_MODULE_NLU_LANGUAGESOURCES")
            .and_then(|s| serde_json::from_str::<Value>(s).ok());
        let (v, src) = match (&from_env, &self.nlu) {
            (Some(v), _) => (Some(v), "BP_MODULE_NLU_LANGUAGESOURCES"),
            (None, Some(n)) => (get(n, "languageSources"), "nlu.json languageSources"),
            (None, None) => (None, "default"),
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
}

pub const DEFAULT_LANG_SERVER: &str = "https://lang-01.botpress.io";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overrides_match_case_insensitively_and_parse_json() {
        let mut cfg =
            serde_json::json!({"pro": {"licenseKey": "paste"}, "httpServer": {"cors": {}}});
        let env: BTreeMap<String, String> = [
            ("BP_CONFIG_PRO_ENABLED", "true"),
            ("BP_CONFIG_PRO_LICENSEKEY", "abc"),
            ("BP_CONFIG_HTTPSERVER_CORS_ORIGIN", "https://a.example"),
            ("BP_CONFIG_HTTPSERVER_SOCKETTRANSPORTS", r#"["websocket"]"#),
        ]
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
        apply_overrides(&mut cfg, &env);
        assert_eq!(get(&cfg, "pro.enabled"), Some(&Value::Bool(true)));
        assert_eq!(cfg["pro"]["licenseKey"], "abc");
        assert_eq!(
            get(&cfg, "httpServer.cors.origin").and_then(Value::as_str),
            Some("https://a.example")
        );
        let view = BotpressView {
            config: cfg,
            ..Default::default()
        };
        assert_eq!(view.socket_transports(), vec!["websocket".to_string()]);
    }

    #[test]
    fn process_env_beats_dotenv() {
        let dot: BTreeMap<String, String> = [("A".to_string(), "file".to_string())].into();
        let m = merge_env(dot, &["A".to_string(), "B".to_string()], &|k| {
            (k == "A").then(|| "proc".to_string())
        });
        assert_eq!(m.get("A").map(String::as_str), Some("proc"));
        assert!(!m.contains_key("B"));
    }

    #[test]
    fn yn_values() {
        for t in ["true", "YES", "y", "1"] {
            assert!(yn(t));
        }
        for f in ["false", "no", "0", "", "on"] {
            assert!(!yn(f));
        }
    }
}
