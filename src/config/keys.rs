//! Key-level checks: unknown keys (with the closest known one) and type errors with their path.

use serde::de::{self, Deserialize, Deserializer, Visitor};

use super::{
    Audit, Config, ConfigError, ConfigErrors, Cors, ExternalAuth, Forwarding, Headers, Health,
    Limits, Listen, Log, NodeConfig, Origins, PrefixTimeout, RouteConfig, Shutdown, Sticky, Tls,
    Upstream,
};

/// Deserialises the merged table into [`Config`], reporting unknown keys and type errors by path.
pub(super) fn deserialize_checked(
    table: toml::Table,
    origins: &Origins,
) -> Result<Config, ConfigErrors> {
    let mut unknown = Vec::new();
    let value = toml::Value::Table(table);
    let base_path_keys: Vec<String> = match &value {
        toml::Value::Table(t) => match t.get("base_path") {
            Some(toml::Value::Table(bp)) => bp
                .keys()
                .filter(|k| *k != "path" && *k != "mode")
                .map(|k| format!("base_path.{k}"))
                .collect(),
            _ => Vec::new(),
        },
        _ => Vec::new(),
    };
    let mut record = |p: serde_ignored::Path<'_>| unknown.push(p.to_string());
    let de = serde_ignored::Deserializer::new(value, &mut record);
    let result: Result<Config, _> = serde_path_to_error::deserialize(de);
    unknown.extend(base_path_keys);
    let mut errors: Vec<ConfigError> = unknown.iter().map(|k| unknown_key(k, origins)).collect();
    match result {
        Ok(c) if errors.is_empty() => Ok(c),
        Ok(_) => Err(ConfigErrors(errors)),
        Err(e) => {
            let key = e.path().to_string();
            let mut err = ConfigError::new(
                key.clone(),
                e.inner().message().to_string(),
                "see the configuration reference in README.md for this key's form",
            );
            err.origin = origins.of(&key).map(str::to_string);
            errors.push(err);
            Err(ConfigErrors(errors))
        }
    }
}

fn unknown_key(path: &str, origins: &Origins) -> ConfigError {
    let parts: Vec<&str> = path
        .split('.')
        .filter(|p| p.parse::<usize>().is_err())
        .collect();
    let (section, leaf) = match parts.split_last() {
        Some((leaf, rest)) => (rest.join("."), *leaf),
        None => (String::new(), path),
    };
    let known = known_keys(&section);
    let closest = known
        .iter()
        .map(|k| (strsim::jaro_winkler(k, leaf), *k))
        .filter(|(score, _)| *score > 0.7)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, k)| k);
    let fix = match closest {
        Some(k) if section.is_empty() => format!("did you mean `{k}`?"),
        Some(k) => format!("did you mean `{section}.{k}`?"),
        None if known.is_empty() => "remove it".to_string(),
        None => format!("remove it; keys here are: {}", known.join(", ")),
    };
    let mut e = ConfigError::new(path, "unknown key".to_string(), fix);
    e.origin = origins.of(path).map(str::to_string);
    e
}

/// The keys a section accepts, read from the structs themselves so the list never goes stale.
pub(super) fn known_keys(section: &str) -> &'static [&'static str] {
    match section {
        "" => fields::<Config>(),
        "listen" => fields::<Listen>(),
        "tls" => fields::<Tls>(),
        "upstream" => fields::<Upstream>(),
        "upstream.nodes" => fields::<NodeConfig>(),
        "upstream.timeouts" => fields::<PrefixTimeout>(),
        "forwarding" => fields::<Forwarding>(),
        "limits" => fields::<Limits>(),
        "shutdown" => fields::<Shutdown>(),
        "log" => fields::<Log>(),
        "headers" => fields::<Headers>(),
        "base_path" => &["path", "mode"],
        "cors" => fields::<Cors>(),
        "sticky" => fields::<Sticky>(),
        "health" => fields::<Health>(),
        "audit" => fields::<Audit>(),
        "audit.external_auth" => fields::<ExternalAuth>(),
        "routes" => fields::<RouteConfig>(),
        _ => &[],
    }
}

/// Every leaf key path of a table (`a.b.c`), for recording where values came from.
pub(super) fn leaf_paths(t: &toml::Table) -> Vec<String> {
    fn walk(prefix: &str, v: &toml::Value, out: &mut Vec<String>) {
        match v {
            toml::Value::Table(t) => {
                for (k, v) in t {
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
    walk("", &toml::Value::Table(t.clone()), &mut out);
    out
}

/// Field names of a derived struct, captured from the `fields` argument serde passes to
/// `deserialize_struct`.
fn fields<T: for<'de> Deserialize<'de>>() -> &'static [&'static str] {
    struct Capture<'a>(&'a mut &'static [&'static str]);

    impl<'de> Deserializer<'de> for Capture<'_> {
        type Error = de::value::Error;

        fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Self::Error> {
            Err(de::Error::custom("introspection only"))
        }

        fn deserialize_struct<V: Visitor<'de>>(
            self,
            _: &'static str,
            fields: &'static [&'static str],
            _: V,
        ) -> Result<V::Value, Self::Error> {
            *self.0 = fields;
            Err(de::Error::custom("introspection only"))
        }

        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
            option unit unit_struct newtype_struct seq tuple tuple_struct map enum identifier
            ignored_any
        }
    }

    let mut out: &'static [&'static str] = &[];
    let _ = T::deserialize(Capture(&mut out));
    out
}
