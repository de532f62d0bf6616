//! Who made a request: the Botpress admin/studio JWT (HS256, signed with Botpress's `appSecret`)
//! from `Authorization: Bearer` or the `jwtToken` cookie, and the webchat's `visitorId`.
//! The token itself is never kept.

use http::header::{AUTHORIZATION, COOKIE};
use http::HeaderMap;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;

/// The user fields of an audit line.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UserInfo {
    /// The verified email (`user_source = jwt`), else `None`.
    pub user: Option<String>,
    /// `jwt`, `jwt_invalid`, `jwt_expired`, `jwt_unverified`, `jwt_malformed`, or `None`.
    pub source: Option<&'static str>,
    /// The email a token claims when it could not be (or was not) verified.
    pub claimed: Option<String>,
}

#[derive(Deserialize)]
struct Claims {
    #[serde(default)]
    email: Option<String>,
}

/// Verifies tokens when Botpress's secret is configured.
pub struct UserResolver {
    key: Option<DecodingKey>,
    validation: Validation,
}

impl UserResolver {
    pub fn new(secret: Option<&str>) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        // Botpress issues `collaborators` and `chat_users` tokens; both identify a user.
        validation.validate_aud = false;
        validation.leeway = 0;
        validation.required_spec_claims = ["exp".to_string()].into_iter().collect();
        UserResolver {
            key: secret
                .filter(|s| !s.is_empty())
                .map(|s| DecodingKey::from_secret(s.as_bytes())),
            validation,
        }
    }

    pub fn resolve(&self, headers: &HeaderMap) -> UserInfo {
        let Some(token) = token(headers) else {
            return UserInfo::default();
        };
        let claimed = claimed_email(token);
        let Some(key) = &self.key else {
            return match claimed {
                Some(c) => UserInfo {
                    user: None,
                    source: Some("jwt_unverified"),
                    claimed: c,
                },
                None => UserInfo {
                    user: None,
                    source: Some("jwt_malformed"),
                    claimed: None,
                },
            };
        };
        match jsonwebtoken::decode::<Claims>(token, key, &self.validation) {
            Ok(data) => UserInfo {
                user: data.claims.email,
                source: Some("jwt"),
                claimed: None,
            },
            Err(e) => {
                let source = match e.kind() {
                    jsonwebtoken::errors::ErrorKind::ExpiredSignature => "jwt_expired",
                    jsonwebtoken::errors::ErrorKind::InvalidSignature => "jwt_invalid",
                    _ if claimed.is_none() => "jwt_malformed",
                    _ => "jwt_invalid",
                };
                UserInfo {
                    user: None,
                    source: Some(source),
                    claimed: claimed.flatten(),
                }
            }
        }
    }
}

/// The token: `Authorization: Bearer …` first, else the `jwtToken` cookie.
fn token(headers: &HeaderMap) -> Option<&str> {
    if let Some(v) = headers.get(AUTHORIZATION).and_then(|v| v.to_str().ok()) {
        let v = v.trim();
        if v.len() > 7 && v[..7].eq_ignore_ascii_case("bearer ") {
            return Some(v[7..].trim());
        }
    }
    for v in headers.get_all(COOKIE) {
        let Ok(s) = v.to_str() else { continue };
        for pair in s.split(';') {
            if let Some(("jwtToken", val)) = pair.trim().split_once('=') {
                return Some(val.trim());
            }
        }
    }
    None
}

/// The payload's `email`, read without verification. `None`: not a JWT at all;
/// `Some(None)`: a JWT without an email.
fn claimed_email(token: &str) -> Option<Option<String>> {
    let mut parts = token.split('.');
    let (_, payload, _) = (parts.next()?, parts.next()?, parts.next()?);
    let bytes = base64::Engine::decode(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD,
        payload.trim_end_matches('='),
    )
    .ok()?;
    let c: Claims = serde_json::from_slice(&bytes).ok()?;
    Some(c.email)
}

/// The webchat's `visitorId` from a socket.io handshake query.
pub fn visitor_id(path: &str, query: Option<&str>) -> Option<String> {
    if !path.contains("/socket.io") {
        return None;
    }
    query?.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k == "visitorId").then(|| {
            percent_encoding::percent_decode_str(v)
                .decode_utf8_lossy()
                .into_owned()
        })
    })
}

#[cfg(test)]
mod tests;
