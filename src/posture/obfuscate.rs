//! Secret obfuscation for `bpgate diag` and for the evidence `bpgate check` prints. The rules are
//! Botpress's own diag rules (fact sheet §9) plus the gap it leaves: `?password=` in Redis URLs.

use serde_json::Value;

pub const MASK: &str = "***obfuscated***";

/// Key names whose whole value is hidden (case-insensitive substring match): Botpress's diag
/// list plus `license` and `passwd`. A matching key hides its whole value, objects included
/// (so `jwtToken` disappears whole, as in Botpress's report), because a nested secret need not
/// have a telling name.
const SECRET_WORDS: &[&str] = &[
    "secret", "password", "passwd", "pw", "token", "key", "cert", "license",
];

/// Whether a variable or JSON key names a secret.
pub fn is_secret_key(key: &str) -> bool {
    let k = key.to_ascii_lowercase();
    SECRET_WORDS.iter().any(|w| k.contains(w))
}

/// An environment value as it may be shown: the whole value hidden for a secret key, otherwise
/// passwords inside URLs hidden, and JSON values walked recursively (`REDIS_OPTIONS`).
pub fn env_value(key: &str, value: &str) -> String {
    if is_secret_key(key) {
        return MASK.to_string();
    }
    if let Ok(mut v @ (Value::Object(_) | Value::Array(_))) = serde_json::from_str::<Value>(value) {
        json(&mut v);
        return v.to_string();
    }
    url_secrets(value)
}

/// Walks a JSON document and hides every secret-named key's value and every URL password.
pub fn json(v: &mut Value) {
    match v {
        Value::Object(map) => {
            map.remove("$schema");
            for (k, val) in map.iter_mut() {
                if is_secret_key(k) || k == "appSecret" {
                    *val = Value::String(MASK.into());
                } else {
                    json(val);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(json),
        Value::String(s) => *s = url_secrets(s),
        _ => {}
    }
}

/// Hides the password of `scheme://user:pass@host` (and of a bare `user:pass@host`) and the value
/// of every `password=` / `pass=` / `pwd=` query parameter.
pub fn url_secrets(s: &str) -> String {
    let mut out = userinfo(s);
    for name in ["password=", "pass=", "pwd=", "secret=", "token="] {
        out = query_param(&out, name);
    }
    out
}

fn userinfo(s: &str) -> String {
    let start = s.find("://").map(|i| i + 3).unwrap_or(0);
    let rest = &s[start..];
    let auth_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = &rest[..auth_end];
    let Some(at) = authority.rfind('@') else {
        return s.to_string();
    };
    let Some(colon) = authority[..at].find(':') else {
        return s.to_string();
    };
    format!(
        "{}{}:{MASK}{}",
        &s[..start],
        &authority[..colon],
        &s[start + at..]
    )
}

fn query_param(s: &str, name: &str) -> String {
    let lower = s.to_ascii_lowercase();
    let mut out = String::with_capacity(s.len());
    let mut last = 0;
    let mut search = 0;
    while let Some(rel) = lower[search..].find(name) {
        let i = search + rel;
        let boundary = i > 0 && matches!(lower.as_bytes()[i - 1], b'?' | b'&' | b';');
        let vstart = i + name.len();
        if boundary {
            let vend = s[vstart..]
                .find(['&', '#', ';', ' ', '"', '\''])
                .map(|e| vstart + e)
                .unwrap_or(s.len());
            out.push_str(&s[last..vstart]);
            out.push_str(MASK);
            last = vend;
        }
        search = vstart;
    }
    out.push_str(&s[last..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hides_url_passwords() {
        assert_eq!(
            url_secrets("postgres://bp:hunter2@db:5432/bp"),
            format!("postgres://bp:{MASK}@db:5432/bp")
        );
        assert_eq!(
            url_secrets("redis://redis:6379?password=s3cr3t&db=1"),
            format!("redis://redis:6379?password={MASK}&db=1")
        );
        assert_eq!(
            url_secrets("redis://:pw@r:6379/0&password=x"),
            format!("redis://:{MASK}@r:6379/0&password={MASK}")
        );
        assert_eq!(url_secrets("http://host:3000/a@b"), "http://host:3000/a@b");
        assert_eq!(url_secrets("user:pw@host"), format!("user:{MASK}@host"));
    }

    #[test]
    fn hides_secret_keys_recursively() {
        let mut v = serde_json::json!({"$schema": "x", "appSecret": "a", "pro": {"licenseKey": "L"},
            "x": [{"authToken": "t"}, "postgres://u:p@h/d"], "plain": 1});
        json(&mut v);
        let s = v.to_string();
        for bad in ["\"a\"", "\"L\"", "\"t\"", "u:p@", "$schema"] {
            assert!(!s.contains(bad), "{bad} in {s}");
        }
        assert!(s.contains("\"plain\":1"));
        assert_eq!(env_value("BP_CONFIG_NLU_AUTHTOKEN", "abc"), MASK);
        assert_eq!(
            env_value("REDIS_OPTIONS", r#"{"password":"zz"}"#),
            format!(r#"{{"password":"{MASK}"}}"#)
        );
    }
}
