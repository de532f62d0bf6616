//! Who made a request, as Botpress v12 sees it.
//!
//! - The admin/studio (or chat-user) JWT, read from the one place Botpress reads it
//!   (`audit.jwt_source`: `Authorization: Bearer` or the `jwtToken` cookie, never both, as in
//!   `router-security.ts`) and verified as `auth-service.ts` does with jsonwebtoken 8.5.1: HS256,
//!   HS384 or HS512 with the `appSecret`, `nbf` and `exp` when present (expired at `exp` itself),
//!   the audience (`collaborators`, `chat_users`), and in cookie mode the `CSRF-Token` header
//!   against the token's `csrfToken` claim.
//! - The webchat end user: the `X-BP-ExternalAuth` token verified with `pro.externalAuth`'s
//!   settings, the `:userId` of the Converse API, the messaging API client id.
//! - The webchat `visitorId` of socket.io requests.
//!
//! Tokens themselves are never kept. A request without any of these costs a few header lookups
//! and prefix comparisons; nothing is allocated.

use std::borrow::Cow;

use http::header::{HeaderName, AUTHORIZATION, COOKIE};
use http::{HeaderMap, HeaderValue};
use jsonwebtoken::{Algorithm, DecodingKey};
use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;

use crate::config::{ExternalKey, JwtSource, Loaded};

/// Where an audit line's `user` comes from (`user_source`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UserSource {
    /// Signed with `appSecret`, not before `nbf`, not expired, audience `collaborators` or
    /// `chat_users` (and in cookie mode the CSRF header matches). The only source that names
    /// `user`.
    Jwt,
    /// Signed, but `exp` has passed.
    JwtExpired,
    /// Signed, but `nbf` is still ahead.
    JwtNotYetValid,
    /// Signed, but for an audience Botpress does not accept.
    JwtWrongAudience,
    /// Cookie mode: a valid cookie without a `CSRF-Token` header (page loads, assets, socket.io,
    /// cross-site requests); Botpress's API does not act as that user.
    JwtNoCsrf,
    /// Cookie mode: a `CSRF-Token` header that is not the token's `csrfToken`.
    JwtCsrfMismatch,
    /// Not signed with `appSecret` (forged, another secret, another algorithm).
    JwtInvalid,
    /// Not a JWT at all.
    JwtMalformed,
    /// `audit.jwt_secret` is unset: read, not verified.
    JwtUnverified,
    /// A channel webhook (`/api/v1/messaging/webhooks/`, `/api/v1/bots/:botId/mod/channel-*/`
    /// except `channel-web`): its token belongs to the channel's platform, not to Botpress.
    Foreign,
}

impl UserSource {
    pub const ALL: &'static [UserSource] = &[
        UserSource::Jwt,
        UserSource::JwtExpired,
        UserSource::JwtNotYetValid,
        UserSource::JwtWrongAudience,
        UserSource::JwtNoCsrf,
        UserSource::JwtCsrfMismatch,
        UserSource::JwtInvalid,
        UserSource::JwtMalformed,
        UserSource::JwtUnverified,
        UserSource::Foreign,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            UserSource::Jwt => "jwt",
            UserSource::JwtExpired => "jwt_expired",
            UserSource::JwtNotYetValid => "jwt_not_yet_valid",
            UserSource::JwtWrongAudience => "jwt_wrong_audience",
            UserSource::JwtNoCsrf => "jwt_no_csrf",
            UserSource::JwtCsrfMismatch => "jwt_csrf_mismatch",
            UserSource::JwtInvalid => "jwt_invalid",
            UserSource::JwtMalformed => "jwt_malformed",
            UserSource::JwtUnverified => "jwt_unverified",
            UserSource::Foreign => "foreign",
        }
    }
}

/// The token's audience, as Botpress issues it (`user_kind`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UserKind {
    /// `aud = collaborators`: an admin/studio user; every Botpress REST route wants this one.
    Collaborator,
    /// `aud = chat_users`: a chat user (a basic login with `channel` and `target`).
    ChatUser,
}

impl UserKind {
    pub fn as_str(self) -> &'static str {
        match self {
            UserKind::Collaborator => "collaborator",
            UserKind::ChatUser => "chat_user",
        }
    }
}

/// The user fields of an audit line.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UserInfo {
    /// The verified email (`source = Jwt`), else `None`.
    pub user: Option<String>,
    pub source: Option<UserSource>,
    /// The email a token claims when it is not named as `user`.
    pub claimed: Option<String>,
    /// From a token signed with `appSecret` (whatever its `source`): its audience, `strategy`
    /// and `isSuperAdmin`. Botpress's user key is `(email, strategy)`.
    pub kind: Option<UserKind>,
    pub strategy: Option<String>,
    pub super_admin: Option<bool>,
}

/// Where an audit line's `end_user` comes from (`end_user_source`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndUserSource {
    /// `X-BP-ExternalAuth` (or the legacy `ExternalAuth`) verified with `audit.external_auth`.
    ExternalAuth,
    /// Signed, but `exp` has passed.
    ExternalAuthExpired,
    /// Signed, but `nbf` is still ahead.
    ExternalAuthNotYetValid,
    /// Not a bearer token, bad signature or algorithm, wrong issuer or audience.
    ExternalAuthInvalid,
    /// The `:userId` of `/api/v1/bots/:botId/converse/:userId` (whatever the caller put there).
    Converse,
    /// `x-bp-messaging-client-id` on `/api/v1/messaging/*` (its token is checked by Botpress's
    /// messaging server, not by bpgate).
    MessagingClient,
}

impl EndUserSource {
    pub const ALL: &'static [EndUserSource] = &[
        EndUserSource::ExternalAuth,
        EndUserSource::ExternalAuthExpired,
        EndUserSource::ExternalAuthNotYetValid,
        EndUserSource::ExternalAuthInvalid,
        EndUserSource::Converse,
        EndUserSource::MessagingClient,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EndUserSource::ExternalAuth => "external_auth",
            EndUserSource::ExternalAuthExpired => "external_auth_expired",
            EndUserSource::ExternalAuthNotYetValid => "external_auth_not_yet_valid",
            EndUserSource::ExternalAuthInvalid => "external_auth_invalid",
            EndUserSource::Converse => "converse",
            EndUserSource::MessagingClient => "messaging_client",
        }
    }
}

/// The end-user fields of an audit line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndUser {
    /// Named only by `ExternalAuth`, `Converse` and `MessagingClient`.
    pub id: Option<String>,
    pub source: EndUserSource,
    /// The user an external token claims when it failed verification.
    pub claimed: Option<String>,
}

/// Botpress's header for end-user tokens (`EXTERNAL_AUTH_HEADER`), and the legacy one older
/// webchats send alone.
static X_BP_EXTERNAL_AUTH: HeaderName = HeaderName::from_static("x-bp-externalauth");
static EXTERNAL_AUTH: HeaderName = HeaderName::from_static("externalauth");
static CSRF_TOKEN: HeaderName = HeaderName::from_static("csrf-token");
static MESSAGING_CLIENT_ID: HeaderName = HeaderName::from_static("x-bp-messaging-client-id");

/// Recognises users. Built once at start: everything it reads is restart-only, as in Botpress.
pub struct UserResolver {
    /// `None` without `audit.jwt_secret`.
    key: Option<DecodingKey>,
    /// jsonwebtoken 8.5.1 with a secret and no `algorithms` option: the HS family.
    algorithms: [Algorithm; 3],
    source: JwtSource,
    /// The base path ("" or "/prefix"); Botpress's routes are below it.
    base: Box<str>,
    external: Option<External>,
}

impl UserResolver {
    /// Header mode, Botpress at the root, no external auth.
    pub fn new(secret: Option<&str>) -> Self {
        UserResolver {
            key: secret
                .filter(|s| !s.is_empty())
                .map(|s| DecodingKey::from_secret(s.as_bytes())),
            algorithms: [Algorithm::HS256, Algorithm::HS384, Algorithm::HS512],
            source: JwtSource::Header,
            base: "".into(),
            external: None,
        }
    }

    /// Where Botpress reads the admin JWT (`jwtToken.useCookieStorage`).
    pub fn with_jwt_source(mut self, source: JwtSource) -> Self {
        self.source = source;
        self
    }

    /// Botpress's root path (the path of `EXTERNAL_URL`).
    pub fn with_base_path(mut self, base: &str) -> Self {
        self.base = base.into();
        self
    }

    /// Verifies `X-BP-ExternalAuth` with `pro.externalAuth`'s settings.
    pub fn with_external_auth(
        mut self,
        cfg: &crate::config::ExternalAuth,
        key: &ExternalKey,
    ) -> Self {
        let algorithms: Vec<Algorithm> = cfg
            .algorithms
            .iter()
            .filter_map(|a| a.parse().ok())
            .collect();
        let key = match key {
            ExternalKey::Hmac(s) => DecodingKey::from_secret(s),
            ExternalKey::Rsa(der) => DecodingKey::from_rsa_der(der),
            ExternalKey::Ec(der) => DecodingKey::from_ec_der(der),
        };
        self.external = Some(External {
            key,
            algorithms,
            issuer: cfg.issuer.clone(),
            audience: cfg.audience.clone(),
            user_claims: cfg.user_claims.clone(),
        });
        self
    }

    /// The resolver for a loaded configuration.
    pub fn from_config(loaded: &Loaded) -> Self {
        let a = &loaded.config.audit;
        let r = UserResolver::new(Some(a.jwt_secret.expose()))
            .with_jwt_source(a.jwt_source)
            .with_base_path(&loaded.derived.base_path);
        match &loaded.derived.external_auth {
            Some(key) => r.with_external_auth(&a.external_auth, key),
            None => r,
        }
    }

    /// The Botpress user of a request to `path`.
    pub fn resolve(&self, path: &str, headers: &HeaderMap) -> UserInfo {
        let token = match self.source {
            JwtSource::Header => headers
                .get(AUTHORIZATION)
                .and_then(bearer)
                .map(Cow::Borrowed),
            JwtSource::Cookie => jwt_cookie(headers),
        };
        let Some(token) = token else {
            return UserInfo::default();
        };
        if self.route(path) == Route::Webhook {
            return UserInfo {
                source: Some(UserSource::Foreign),
                ..UserInfo::default()
            };
        }
        let Some(key) = &self.key else {
            return unverified(&token, UserSource::JwtUnverified);
        };
        let verified = verified_payload(&token, key, &self.algorithms)
            .and_then(|p| serde_json::from_slice::<BotpressClaims>(&p).ok());
        let Some(c) = verified else {
            // Signature, algorithm or format: Botpress rejects it before reading a claim.
            return unverified(&token, UserSource::JwtInvalid);
        };
        let kind = if c.aud.collaborators {
            Some(UserKind::Collaborator)
        } else if c.aud.chat_users {
            Some(UserKind::ChatUser)
        } else {
            None
        };
        // Botpress's order: jsonwebtoken (nbf, exp, audience), then the CSRF header.
        let source = match times(&c.nbf, &c.exp, now()) {
            Err(s) => s.user(),
            Ok(()) if kind.is_none() => UserSource::JwtWrongAudience,
            Ok(()) if self.source == JwtSource::Cookie => csrf(headers, c.csrf.as_deref()),
            Ok(()) => UserSource::Jwt,
        };
        let (user, claimed) = if source == UserSource::Jwt {
            (c.email, None)
        } else {
            (None, c.email)
        };
        UserInfo {
            user,
            source: Some(source),
            claimed,
            kind,
            strategy: c.strategy,
            super_admin: c.super_admin,
        }
    }

    /// The webchat or API end user of a request to `path`, where Botpress's own requests carry
    /// one.
    pub fn end_user(&self, path: &str, headers: &HeaderMap) -> Option<EndUser> {
        if let Some(ext) = &self.external {
            // Botpress reads only `X-BP-ExternalAuth`; older webchats sent `ExternalAuth` alone.
            if let Some(v) = headers
                .get(&X_BP_EXTERNAL_AUTH)
                .or_else(|| headers.get(&EXTERNAL_AUTH))
            {
                return Some(ext.resolve(v));
            }
        }
        match self.route(path) {
            Route::Converse(id) => Some(EndUser {
                id: Some(id),
                source: EndUserSource::Converse,
                claimed: None,
            }),
            Route::Messaging => headers.get(&MESSAGING_CLIENT_ID).map(|v| EndUser {
                id: Some(String::from_utf8_lossy(v.as_bytes()).into_owned()),
                source: EndUserSource::MessagingClient,
                claimed: None,
            }),
            Route::Webhook | Route::Other => None,
        }
    }

    /// Which of Botpress's identity-bearing routes `path` is.
    fn route(&self, path: &str) -> Route {
        let Some(rest) = path.strip_prefix(&*self.base) else {
            return Route::Other;
        };
        let Some(rest) = rest.strip_prefix('/') else {
            return Route::Other;
        };
        let mut segs = rest.split('/');
        let (Some(api), Some(v1), Some(area)) = (segs.next(), segs.next(), segs.next()) else {
            return Route::Other;
        };
        if !api.eq_ignore_ascii_case("api") || !v1.eq_ignore_ascii_case("v1") {
            return Route::Other;
        }
        let messaging = area.eq_ignore_ascii_case("messaging");
        if !messaging && !area.eq_ignore_ascii_case("bots") {
            return Route::Other;
        }
        // A dot segment makes the path mean something else after normalisation (bpgate resolves
        // them under a base path, Express does not): such a path is no special route, so it can
        // neither hide a user nor name one.
        if rest.split('/').any(|s| s == "." || s == "..") {
            return Route::Other;
        }
        if messaging {
            return match segs.next() {
                Some(w) if w.eq_ignore_ascii_case("webhooks") => Route::Webhook,
                _ => Route::Messaging,
            };
        }
        let (Some(bot), Some(what), Some(arg)) = (segs.next(), segs.next(), segs.next()) else {
            return Route::Other;
        };
        if bot.is_empty() || arg.is_empty() {
            return Route::Other;
        }
        if what.eq_ignore_ascii_case("mod") {
            let channel = arg.len() > 8 && arg[..8].eq_ignore_ascii_case("channel-");
            return if channel && !arg.eq_ignore_ascii_case("channel-web") {
                Route::Webhook
            } else {
                Route::Other
            };
        }
        if !what.eq_ignore_ascii_case("converse") {
            return Route::Other;
        }
        // `/:botId/converse/:userId` and `/:botId/converse/:userId/secured`, a trailing slash
        // allowed (Express's non-strict routing).
        let tail_ok = match (segs.next(), segs.next(), segs.next()) {
            (None, _, _) | (Some(""), None, _) => true,
            (Some(s), None, _) | (Some(s), Some(""), None) => s.eq_ignore_ascii_case("secured"),
            _ => false,
        };
        if !tail_ok {
            return Route::Other;
        }
        // Express decodes params with decodeURIComponent (and answers 400 when it cannot).
        match percent_encoding::percent_decode_str(arg).decode_utf8() {
            Ok(id) => Route::Converse(id.into_owned()),
            Err(_) => Route::Other,
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Route {
    /// A channel webhook: tokens there are the platform's.
    Webhook,
    /// `/api/v1/messaging/*` (not webhooks): the messaging API.
    Messaging,
    /// The Converse API, with its `:userId`.
    Converse(String),
    Other,
}

/// The external-auth verifier: `pro.externalAuth`'s key, algorithms, issuer and audience.
struct External {
    key: DecodingKey,
    algorithms: Vec<Algorithm>,
    issuer: Option<String>,
    audience: Option<String>,
    user_claims: Vec<String>,
}

impl External {
    fn resolve(&self, v: &HeaderValue) -> EndUser {
        let claims: Vec<&str> = self.user_claims.iter().map(String::as_str).collect();
        let fail = |source, token: Option<&str>| EndUser {
            id: None,
            source,
            claimed: token.and_then(|t| claimed(t, &claims)).flatten(),
        };
        // `decodeExternalToken`: `split(' ')`, scheme `bearer` in any case.
        let Some(token) = bearer(v) else {
            return fail(EndUserSource::ExternalAuthInvalid, None);
        };
        let verified = verified_payload(token, &self.key, &self.algorithms)
            .and_then(|p| payload(&p, &claims, true));
        let Some(payload) = verified else {
            return fail(EndUserSource::ExternalAuthInvalid, Some(token));
        };
        let id = payload.user.clone();
        let failed = |source| EndUser {
            id: None,
            source,
            claimed: id.clone(),
        };
        // jsonwebtoken 8.5.1's order: nbf, exp, audience, issuer.
        if let Err(s) = times(&payload.nbf, &payload.exp, now()) {
            return failed(s.end_user());
        }
        if let Some(want) = &self.audience {
            let ok = match &payload.aud {
                Some(serde_json::Value::String(a)) => a == want,
                Some(serde_json::Value::Array(a)) => a.iter().any(|x| x.as_str() == Some(want)),
                _ => false,
            };
            if !ok {
                return failed(EndUserSource::ExternalAuthInvalid);
            }
        }
        if let Some(want) = &self.issuer {
            if payload.iss.as_ref().and_then(|v| v.as_str()) != Some(want.as_str()) {
                return failed(EndUserSource::ExternalAuthInvalid);
            }
        }
        EndUser {
            id,
            source: EndUserSource::ExternalAuth,
            claimed: None,
        }
    }
}

/// The payload of `token` when its signature verifies with `key` under an algorithm of
/// `algorithms` (the header's `alg`, as jws does); the claims are then checked here, with
/// jsonwebtoken 8.5.1's rules, which differ at the edges from the Rust crate's. One header parse
/// and one payload parse, where `jsonwebtoken::decode` does each twice.
fn verified_payload(token: &str, key: &DecodingKey, algorithms: &[Algorithm]) -> Option<Vec<u8>> {
    #[derive(Deserialize)]
    struct Header<'a> {
        #[serde(borrow)]
        alg: Cow<'a, str>,
    }
    let (message, signature) = token.rsplit_once('.')?;
    let (header, payload) = message.split_once('.')?;
    let header = b64(header)?;
    let alg: Algorithm = serde_json::from_slice::<Header>(&header)
        .ok()?
        .alg
        .parse()
        .ok()?;
    if !algorithms.contains(&alg) {
        return None;
    }
    match jsonwebtoken::crypto::verify(signature, message.as_bytes(), key, alg) {
        Ok(true) => b64(payload),
        _ => None,
    }
}

fn b64(part: &str) -> Option<Vec<u8>> {
    base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, part).ok()
}

/// The claims of a token Botpress signs (`security/utils.ts`).
#[derive(Deserialize)]
struct BotpressClaims {
    #[serde(default)]
    email: Option<String>,
    #[serde(default)]
    strategy: Option<String>,
    #[serde(default, rename = "isSuperAdmin", deserialize_with = "lenient_bool")]
    super_admin: Option<bool>,
    #[serde(default, rename = "csrfToken")]
    csrf: Option<String>,
    #[serde(default)]
    aud: Audience,
    #[serde(default)]
    exp: NumericDate,
    #[serde(default)]
    nbf: NumericDate,
}

/// What is read of any other payload (an external token's, or an unverified one): the times,
/// `aud`, `iss`, and the first of the user claims present as a string or a number. Other claims
/// are skipped without being kept.
#[derive(Default)]
struct Payload {
    exp: NumericDate,
    nbf: NumericDate,
    aud: Option<serde_json::Value>,
    iss: Option<serde_json::Value>,
    user: Option<String>,
}

/// `times`: read `exp`, `nbf`, `aud` and `iss` too (a verified token's checks).
fn payload(bytes: &[u8], claims: &[&str], times: bool) -> Option<Payload> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let p = PayloadSeed { claims, times }.deserialize(&mut de).ok()?;
    de.end().ok()?;
    Some(p)
}

struct PayloadSeed<'c> {
    claims: &'c [&'c str],
    times: bool,
}

impl<'de> DeserializeSeed<'de> for PayloadSeed<'_> {
    type Value = Payload;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Payload, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for PayloadSeed<'_> {
    type Value = Payload;
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JWT payload")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<Payload, A::Error> {
        let mut p = Payload::default();
        // Each user claim's value as text, by its rank in `user_claims`. A repeated name keeps
        // its last value, null included, as Node's `JSON.parse` (and so Botpress) does.
        let mut found: Vec<Option<String>> = vec![None; self.claims.len()];
        while let Some(Key(k)) = m.next_key::<Key>()? {
            let claim = self.claims.iter().position(|c| *c == k);
            let reserved = self.times && matches!(&*k, "exp" | "nbf" | "aud" | "iss");
            if claim.is_none() && !reserved {
                m.next_value::<IgnoredAny>()?;
                continue;
            }
            if !reserved {
                // A user claim only: its text, without building a JSON value.
                let UserClaim(user) = m.next_value()?;
                if let Some(slot) = claim.and_then(|i| found.get_mut(i)) {
                    *slot = user;
                }
                continue;
            }
            let v: serde_json::Value = m.next_value()?;
            if let Some(slot) = claim.and_then(|i| found.get_mut(i)) {
                *slot = match &v {
                    serde_json::Value::String(s) => Some(s.clone()),
                    serde_json::Value::Number(n) => Some(n.to_string()),
                    _ => None,
                };
            }
            // Only a verified token's reading (`times`) gets here; a repeated name keeps its
            // last value here too.
            match &*k {
                "exp" => p.exp = NumericDate::of(&v),
                "nbf" => p.nbf = NumericDate::of(&v),
                "aud" => p.aud = Some(v),
                "iss" => p.iss = Some(v),
                _ => {}
            }
        }
        // The first of `user_claims` that has text.
        p.user = found.into_iter().flatten().next();
        Ok(p)
    }
}

/// A claim's value as a user name: a string, or a number's text; anything else is none.
struct UserClaim(Option<String>);

impl<'de> Deserialize<'de> for UserClaim {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = UserClaim;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a claim")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<UserClaim, E> {
                Ok(UserClaim(Some(s.to_string())))
            }
            fn visit_u64<E: de::Error>(self, n: u64) -> Result<UserClaim, E> {
                Ok(UserClaim(Some(n.to_string())))
            }
            fn visit_i64<E: de::Error>(self, n: i64) -> Result<UserClaim, E> {
                Ok(UserClaim(Some(n.to_string())))
            }
            fn visit_f64<E: de::Error>(self, n: f64) -> Result<UserClaim, E> {
                Ok(UserClaim(
                    serde_json::Number::from_f64(n).map(|n| n.to_string()),
                ))
            }
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<UserClaim, E> {
                Ok(UserClaim(None))
            }
            fn visit_unit<E: de::Error>(self) -> Result<UserClaim, E> {
                Ok(UserClaim(None))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<UserClaim, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(UserClaim(None))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<UserClaim, A::Error> {
                while m.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(UserClaim(None))
            }
        }
        d.deserialize_any(V)
    }
}

/// A map key, borrowed from the input when it has no escapes.
struct Key<'de>(Cow<'de, str>);

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a claim name")
            }
            fn visit_borrowed_str<E: de::Error>(self, s: &'de str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Borrowed(s)))
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(s.to_string())))
            }
        }
        d.deserialize_str(V)
    }
}

/// `isSuperAdmin` when it is a boolean; anything else is ignored rather than failing the token.
fn lenient_bool<'de, D: Deserializer<'de>>(d: D) -> Result<Option<bool>, D::Error> {
    Ok(serde_json::Value::deserialize(d)?.as_bool())
}

/// `exp`/`nbf` as jsonwebtoken 8.5.1 sees them: absent, a number, or anything else (an error,
/// `null` included).
#[derive(Default)]
enum NumericDate {
    #[default]
    Absent,
    At(f64),
    Invalid,
}

impl NumericDate {
    fn of(v: &serde_json::Value) -> NumericDate {
        match v {
            serde_json::Value::Number(n) => {
                n.as_f64().map_or(NumericDate::Invalid, NumericDate::At)
            }
            _ => NumericDate::Invalid,
        }
    }
}

impl<'de> Deserialize<'de> for NumericDate {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(NumericDate::of(&serde_json::Value::deserialize(d)?))
    }
}

/// Which of Botpress's audiences `aud` holds (a string or an array), read without allocating.
#[derive(Default)]
struct Audience {
    collaborators: bool,
    chat_users: bool,
}

impl Audience {
    fn add(&mut self, a: &str) {
        match a {
            "collaborators" => self.collaborators = true,
            "chat_users" => self.chat_users = true,
            _ => {}
        }
    }
}

impl<'de> Deserialize<'de> for Audience {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Audience;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an audience")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Audience, E> {
                let mut a = Audience::default();
                a.add(s);
                Ok(a)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Audience, A::Error> {
                let mut a = Audience::default();
                while let Some(Item(x)) = seq.next_element::<Item>()? {
                    if let Some(x) = x {
                        a.add(x);
                    }
                }
                Ok(a)
            }
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<Audience, E> {
                Ok(Audience::default())
            }
            fn visit_i64<E: de::Error>(self, _: i64) -> Result<Audience, E> {
                Ok(Audience::default())
            }
            fn visit_u64<E: de::Error>(self, _: u64) -> Result<Audience, E> {
                Ok(Audience::default())
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<Audience, E> {
                Ok(Audience::default())
            }
            fn visit_unit<E: de::Error>(self) -> Result<Audience, E> {
                Ok(Audience::default())
            }
            fn visit_map<A: de::MapAccess<'de>>(self, mut m: A) -> Result<Audience, A::Error> {
                while m.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(Audience::default())
            }
        }
        d.deserialize_any(V)
    }
}

/// One element of an `aud` array: a string matches by value, anything else matches nothing
/// (jsonwebtoken compares with `===`).
struct Item(Option<&'static str>);

impl<'de> Deserialize<'de> for Item {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Item;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an audience")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Item, E> {
                Ok(Item(match s {
                    "collaborators" => Some("collaborators"),
                    "chat_users" => Some("chat_users"),
                    _ => None,
                }))
            }
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<Item, E> {
                Ok(Item(None))
            }
            fn visit_i64<E: de::Error>(self, _: i64) -> Result<Item, E> {
                Ok(Item(None))
            }
            fn visit_u64<E: de::Error>(self, _: u64) -> Result<Item, E> {
                Ok(Item(None))
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<Item, E> {
                Ok(Item(None))
            }
            fn visit_unit<E: de::Error>(self) -> Result<Item, E> {
                Ok(Item(None))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Item, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(Item(None))
            }
            fn visit_map<A: de::MapAccess<'de>>(self, mut m: A) -> Result<Item, A::Error> {
                while m.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(Item(None))
            }
        }
        d.deserialize_any(V)
    }
}

/// Why a signed token's times fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TimeFail {
    NotYet,
    Expired,
    /// `exp` or `nbf` is not a number.
    Invalid,
}

impl TimeFail {
    fn user(self) -> UserSource {
        match self {
            TimeFail::NotYet => UserSource::JwtNotYetValid,
            TimeFail::Expired => UserSource::JwtExpired,
            TimeFail::Invalid => UserSource::JwtInvalid,
        }
    }
    fn end_user(self) -> EndUserSource {
        match self {
            TimeFail::NotYet => EndUserSource::ExternalAuthNotYetValid,
            TimeFail::Expired => EndUserSource::ExternalAuthExpired,
            TimeFail::Invalid => EndUserSource::ExternalAuthInvalid,
        }
    }
}

/// jsonwebtoken 8.5.1 (`verify.js`), no clock tolerance: `nbf` first (`nbf > now` fails), then
/// `exp` (`now >= exp` fails: a token is dead at its `exp` second).
fn times(nbf: &NumericDate, exp: &NumericDate, now: f64) -> Result<(), TimeFail> {
    match nbf {
        NumericDate::Invalid => return Err(TimeFail::Invalid),
        NumericDate::At(t) if *t > now => return Err(TimeFail::NotYet),
        _ => {}
    }
    match exp {
        NumericDate::Invalid => Err(TimeFail::Invalid),
        NumericDate::At(t) if now >= *t => Err(TimeFail::Expired),
        _ => Ok(()),
    }
}

/// `Math.floor(Date.now() / 1000)`.
fn now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as f64)
        .unwrap_or(0.0)
}

/// Cookie mode: Botpress wants `CSRF-Token` equal to the token's `csrfToken` claim (a missing
/// or empty header is refused the same way).
fn csrf(headers: &HeaderMap, claim: Option<&str>) -> UserSource {
    let mut values = headers.get_all(&CSRF_TOKEN).iter();
    let Some(first) = values.next() else {
        return UserSource::JwtNoCsrf;
    };
    // Node joins repeated headers with ", ", which no csrfToken equals.
    if values.next().is_some() {
        return UserSource::JwtCsrfMismatch;
    }
    let sent = first.as_bytes().trim_ascii();
    if sent.is_empty() {
        UserSource::JwtNoCsrf
    } else if claim.map(str::as_bytes) == Some(sent) {
        UserSource::Jwt
    } else {
        UserSource::JwtCsrfMismatch
    }
}

/// `Authorization` as Botpress splits it: `const [scheme, token] = value.split(' ')`, the scheme
/// `bearer` in any case, both non-empty (so `Bearer  x`, with two spaces, has no token).
fn bearer(v: &HeaderValue) -> Option<&str> {
    let s = v.to_str().ok()?.trim_matches(|c| c == ' ' || c == '\t');
    let mut parts = s.split(' ');
    let (scheme, token) = (parts.next()?, parts.next()?);
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// The `jwtToken` cookie as cookie-parser reads it (cookie 0.4): pairs split on `;`, name and
/// value trimmed, surrounding quotes dropped, the first occurrence wins, percent-decoded. Node
/// joins repeated `Cookie` headers with `; `, so they are read in order as one.
fn jwt_cookie(headers: &HeaderMap) -> Option<Cow<'_, str>> {
    for v in headers.get_all(COOKIE) {
        let Ok(s) = v.to_str() else { continue };
        for pair in s.split(';') {
            let Some((k, val)) = pair.split_once('=') else {
                continue;
            };
            if k.trim() != "jwtToken" {
                continue;
            }
            let mut val = val.trim();
            if val.starts_with('"') {
                // `val.slice(1, -1)`, whatever the last character is.
                val = val.get(1..val.len().saturating_sub(1)).unwrap_or("");
            }
            // The first one decides; an empty one is a missing token to Botpress.
            if val.is_empty() {
                return None;
            }
            // Borrowed unless something was decoded; kept as sent when it is not UTF-8
            // (cookie-parser's `decodeURIComponent` throws, and it keeps the raw value).
            return Some(
                percent_encoding::percent_decode_str(val)
                    .decode_utf8()
                    .unwrap_or(Cow::Borrowed(val)),
            );
        }
    }
    None
}

/// A token bpgate does not take as verified: the email it claims, under `source`; or
/// `jwt_malformed` when it is not a JWT at all.
fn unverified(token: &str, source: UserSource) -> UserInfo {
    match claimed(token, &["email"]) {
        Some(claimed) => UserInfo {
            source: Some(source),
            claimed,
            ..UserInfo::default()
        },
        None => UserInfo {
            source: Some(UserSource::JwtMalformed),
            ..UserInfo::default()
        },
    }
}

/// The first of `claims` in the payload, read without verification. `None`: not a JWT at all;
/// `Some(None)`: a JWT without such a claim.
fn claimed(token: &str, claims: &[&str]) -> Option<Option<String>> {
    let mut parts = token.split('.');
    let (_, p, _) = (parts.next()?, parts.next()?, parts.next()?);
    Some(payload(&b64(p.trim_end_matches('='))?, claims, false)?.user)
}

/// The webchat's `visitorId` from a socket.io handshake query. The admin UI's socket sends one
/// too (scope `admin`); the namespace that would tell them apart is inside the socket.io frames.
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
