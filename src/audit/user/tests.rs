use super::*;
use crate::config::ExternalAuth;
use http::HeaderValue;
use jsonwebtoken::{encode, EncodingKey, Header};
use serde_json::json;

const SECRET: &str = "app-secret-0123456789";

fn unix() -> u64 {
    crate::cluster::unix_now()
}

/// The payload Botpress's `security/utils.ts` signs with jsonwebtoken 8.5.1 (`expiresIn`,
/// `audience`), in its order: `{email, strategy, tokenVersion, [csrfToken,] isSuperAdmin, iat,
/// exp, aud}`.
fn botpress_claims(email: &str, aud: &str, csrf: Option<&str>) -> serde_json::Value {
    let now = unix();
    let mut c = json!({"email": email, "strategy": "default", "tokenVersion": 1});
    if let Some(x) = csrf {
        c["csrfToken"] = json!(x);
    }
    c["isSuperAdmin"] = json!(true);
    c["iat"] = json!(now);
    c["exp"] = json!(now + 7200);
    c["aud"] = json!(aud);
    c
}

fn sign(alg: Algorithm, secret: &str, claims: &serde_json::Value) -> String {
    encode(
        &Header::new(alg),
        claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

fn admin(email: &str) -> String {
    sign(
        Algorithm::HS256,
        SECRET,
        &botpress_claims(email, "collaborators", None),
    )
}

fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in pairs {
        h.append(
            HeaderName::from_bytes(k.as_bytes()).unwrap(),
            HeaderValue::from_str(v).unwrap(),
        );
    }
    h
}

fn bearer_of(t: &str) -> HeaderMap {
    headers(&[("authorization", &format!("Bearer {t}"))])
}

fn header_mode() -> UserResolver {
    UserResolver::new(Some(SECRET))
}

fn cookie_mode() -> UserResolver {
    UserResolver::new(Some(SECRET)).with_jwt_source(JwtSource::Cookie)
}

fn src(u: &UserInfo) -> Option<&'static str> {
    u.source.map(UserSource::as_str)
}

#[test]
fn a_botpress_token_names_the_collaborator_with_strategy_and_super_admin() {
    let u = header_mode().resolve("/api/v1/bots", &bearer_of(&admin("a@x.io")));
    assert_eq!(
        u,
        UserInfo {
            user: Some("a@x.io".into()),
            source: Some(UserSource::Jwt),
            claimed: None,
            kind: Some(UserKind::Collaborator),
            strategy: Some("default".into()),
            super_admin: Some(true),
        }
    );
    assert_eq!(
        header_mode().resolve("/", &HeaderMap::new()),
        UserInfo::default()
    );
}

#[test]
fn hs384_and_hs512_are_accepted_like_jsonwebtoken_8_5_1_other_algorithms_are_not() {
    let c = botpress_claims("b@x.io", "collaborators", None);
    for alg in [Algorithm::HS384, Algorithm::HS512] {
        let u = header_mode().resolve("/", &bearer_of(&sign(alg, SECRET, &c)));
        assert_eq!(src(&u), Some("jwt"), "{alg:?}");
        assert_eq!(u.user.as_deref(), Some("b@x.io"));
    }
    // Another secret, and an unsigned token claiming the same user.
    let forged = header_mode().resolve("/", &bearer_of(&sign(Algorithm::HS256, "other", &c)));
    assert_eq!(src(&forged), Some("jwt_invalid"));
    assert_eq!(forged.claimed.as_deref(), Some("b@x.io"));
    assert_eq!(forged.kind, None, "nothing of a forged token is trusted");
    let good = sign(Algorithm::HS256, SECRET, &c);
    let mut parts = good.split('.');
    let (_, payload) = (parts.next().unwrap(), parts.next().unwrap());
    let none = format!("eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.{payload}.");
    assert_eq!(
        src(&header_mode().resolve("/", &bearer_of(&none))),
        Some("jwt_invalid")
    );
    assert_eq!(
        src(&header_mode().resolve("/", &bearer_of("not-a-jwt"))),
        Some("jwt_malformed")
    );
}

#[test]
fn times_follow_jsonwebtoken_8_5_1() {
    let now = unix();
    let at = |exp: serde_json::Value, nbf: Option<u64>| {
        let mut c = botpress_claims("t@x.io", "collaborators", None);
        c["exp"] = exp;
        if let Some(n) = nbf {
            c["nbf"] = json!(n);
        }
        header_mode().resolve("/", &bearer_of(&sign(Algorithm::HS256, SECRET, &c)))
    };
    let old = at(json!(1000), None);
    assert_eq!(src(&old), Some("jwt_expired"));
    assert_eq!(old.claimed.as_deref(), Some("t@x.io"));
    assert_eq!(
        old.kind,
        Some(UserKind::Collaborator),
        "signed: its facts are recorded"
    );
    // Dead at its `exp` second (`now >= exp`), where the Rust crate would still accept it.
    assert_eq!(src(&at(json!(now), None)), Some("jwt_expired"));
    assert_eq!(src(&at(json!(now + 5), None)), Some("jwt"));
    assert_eq!(src(&at(json!((now + 5) as f64 + 0.5), None)), Some("jwt"));
    // No `exp` at all: jsonwebtoken 8.5.1 does not require one.
    let mut c = botpress_claims("t@x.io", "collaborators", None);
    c.as_object_mut().unwrap().remove("exp");
    let u = header_mode().resolve("/", &bearer_of(&sign(Algorithm::HS256, SECRET, &c)));
    assert_eq!(src(&u), Some("jwt"));
    assert_eq!(src(&at(json!("soon"), None)), Some("jwt_invalid"));
    assert_eq!(src(&at(json!(null), None)), Some("jwt_invalid"));
    assert_eq!(
        src(&at(json!(now + 60), Some(now + 30))),
        Some("jwt_not_yet_valid")
    );
    assert_eq!(src(&at(json!(now + 60), Some(now))), Some("jwt"));
    // An `nbf` that is not a number fails the token as an invalid `exp` does.
    let mut c = botpress_claims("t@x.io", "collaborators", None);
    c["nbf"] = json!("later");
    let u = header_mode().resolve("/", &bearer_of(&sign(Algorithm::HS256, SECRET, &c)));
    assert_eq!((src(&u), u.user), (Some("jwt_invalid"), None));
}

#[test]
fn audiences_give_the_kind() {
    let with = |aud: serde_json::Value| {
        let mut c = botpress_claims("k@x.io", "collaborators", None);
        c["aud"] = aud;
        header_mode().resolve("/", &bearer_of(&sign(Algorithm::HS256, SECRET, &c)))
    };
    let chat = with(json!("chat_users"));
    assert_eq!(src(&chat), Some("jwt"));
    assert_eq!(chat.kind, Some(UserKind::ChatUser));
    assert_eq!(chat.user.as_deref(), Some("k@x.io"));
    assert_eq!(
        with(json!(["x", "collaborators"])).kind,
        Some(UserKind::Collaborator)
    );
    let chat = with(json!(["x", "chat_users"]));
    assert_eq!(
        (src(&chat), chat.kind),
        (Some("jwt"), Some(UserKind::ChatUser))
    );
    for aud in [
        json!("studio"),
        json!(null),
        json!(7),
        json!([["collaborators"]]),
    ] {
        let u = with(aud.clone());
        assert_eq!(src(&u), Some("jwt_wrong_audience"), "{aud}");
        assert_eq!((u.user, u.claimed.as_deref()), (None, Some("k@x.io")));
    }
    let mut c = botpress_claims("k@x.io", "collaborators", None);
    c.as_object_mut().unwrap().remove("aud");
    let u = header_mode().resolve("/", &bearer_of(&sign(Algorithm::HS256, SECRET, &c)));
    assert_eq!(src(&u), Some("jwt_wrong_audience"));
}

#[test]
fn header_mode_reads_only_authorization_and_cookie_mode_only_the_cookie() {
    let real = admin("real@x.io");
    let junk = sign(
        Algorithm::HS256,
        "attacker",
        &botpress_claims("victim@x.io", "collaborators", None),
    );
    // Header mode: a junk cookie beside the real bearer changes nothing; a cookie alone is
    // nothing to Botpress.
    let h = headers(&[
        ("cookie", &format!("jwtToken={junk}")),
        ("authorization", &format!("Bearer {real}")),
    ]);
    assert_eq!(
        header_mode().resolve("/", &h).user.as_deref(),
        Some("real@x.io")
    );
    let h = headers(&[("cookie", &format!("jwtToken={real}"))]);
    assert_eq!(header_mode().resolve("/", &h), UserInfo::default());
    // Cookie mode: a junk bearer beside the real cookie changes nothing; a bearer alone is
    // nothing to Botpress.
    let csrf = "csrf-1";
    let real = sign(
        Algorithm::HS256,
        SECRET,
        &botpress_claims("real@x.io", "collaborators", Some(csrf)),
    );
    let h = headers(&[
        ("authorization", &format!("Bearer {junk}")),
        ("cookie", &format!("a=1; jwtToken={real}")),
        ("csrf-token", csrf),
    ]);
    let u = cookie_mode().resolve("/", &h);
    assert_eq!(
        (src(&u), u.user.as_deref()),
        (Some("jwt"), Some("real@x.io"))
    );
    let h = headers(&[
        ("authorization", &format!("Bearer {real}")),
        ("csrf-token", csrf),
    ]);
    assert_eq!(cookie_mode().resolve("/", &h), UserInfo::default());
}

#[test]
fn authorization_is_split_as_botpress_splits_it() {
    let t = admin("s@x.io");
    for (v, named) in [
        (format!("Bearer {t}"), true),
        (format!("bearer {t}"), true),
        (format!("BEARER {t}"), true),
        (format!("Bearer {t} trailing"), true),
        // Node strips the header value's surrounding whitespace.
        (format!("  Bearer {t} "), true),
        (format!("\tBearer {t}\t"), true),
        (format!("Bearer  {t}"), false),
        (format!("Basic {t}"), false),
        (format!("Bearer\t{t}"), false),
        (t.clone(), false),
    ] {
        let u = header_mode().resolve("/", &headers(&[("authorization", &v)]));
        assert_eq!(u.user.is_some(), named, "{v}");
    }
}

#[test]
fn the_cookie_is_parsed_as_cookie_parser_does() {
    let csrf = "c";
    let t = sign(
        Algorithm::HS256,
        SECRET,
        &botpress_claims("c@x.io", "collaborators", Some(csrf)),
    );
    let user = |cookies: &[&str]| {
        let mut pairs: Vec<(&str, &str)> = cookies.iter().map(|c| ("cookie", *c)).collect();
        pairs.push(("csrf-token", csrf));
        cookie_mode().resolve("/", &headers(&pairs)).user
    };
    let named = Some("c@x.io".to_string());
    assert_eq!(user(&[&format!("jwtToken={t}")]), named);
    assert_eq!(user(&[&format!("x=1;jwtToken = {t} ;y=2")]), named);
    assert_eq!(user(&[&format!("jwtToken=\"{t}\"")]), named);
    assert_eq!(
        user(&["a=1", &format!("jwtToken={t}")]),
        named,
        "headers joined"
    );
    // The first occurrence decides, an empty one included.
    assert_eq!(user(&[&format!("jwtToken=junk; jwtToken={t}")]), None);
    assert_eq!(user(&[&format!("jwtToken=; jwtToken={t}")]), None);
    assert_eq!(user(&["jwtTokenX=1"]), None);
    // Percent-decoded (`decodeURIComponent`); a value that does not decode is kept as sent.
    assert_eq!(
        user(&[&format!("jwtToken={}", t.replace('.', "%2E"))]),
        named
    );
    let h = headers(&[
        ("cookie", &format!("jwtToken={t}%FF")),
        ("csrf-token", csrf),
    ]);
    let u = cookie_mode().resolve("/", &h);
    assert_eq!((src(&u), u.user), (Some("jwt_invalid"), None));
}

#[test]
fn cookie_mode_names_the_user_only_with_the_matching_csrf_header() {
    let t = sign(
        Algorithm::HS256,
        SECRET,
        &botpress_claims("v@x.io", "collaborators", Some("right")),
    );
    let cookie = format!("jwtToken={t}");
    let run = |extra: &[(&str, &str)]| {
        let mut pairs = vec![("cookie", cookie.as_str())];
        pairs.extend_from_slice(extra);
        cookie_mode().resolve("/", &headers(&pairs))
    };
    let ok = run(&[("csrf-token", "right")]);
    assert_eq!(
        (src(&ok), ok.user.as_deref()),
        (Some("jwt"), Some("v@x.io"))
    );
    // A page load, an asset, socket.io, a cross-site form: no header.
    let none = run(&[]);
    assert_eq!(src(&none), Some("jwt_no_csrf"));
    assert_eq!((none.user, none.claimed.as_deref()), (None, Some("v@x.io")));
    assert_eq!(src(&run(&[("csrf-token", "")])), Some("jwt_no_csrf"));
    let bad = run(&[("csrf-token", "wrong")]);
    assert_eq!(src(&bad), Some("jwt_csrf_mismatch"));
    assert_eq!(bad.claimed.as_deref(), Some("v@x.io"));
    assert_eq!(
        src(&run(&[("csrf-token", "right"), ("csrf-token", "right")])),
        Some("jwt_csrf_mismatch")
    );
    // A token without a csrfToken claim never passes in cookie mode.
    let no_claim = format!("jwtToken={}", admin("w@x.io"));
    let u = cookie_mode().resolve(
        "/",
        &headers(&[("cookie", &no_claim), ("csrf-token", "undefined")]),
    );
    assert_eq!(src(&u), Some("jwt_csrf_mismatch"));
    // An expired token stays expired: the CSRF check comes after jsonwebtoken's.
    let mut c = botpress_claims("v@x.io", "collaborators", Some("right"));
    c["exp"] = json!(1000);
    let old = format!("jwtToken={}", sign(Algorithm::HS256, SECRET, &c));
    let u = cookie_mode().resolve("/", &headers(&[("cookie", &old)]));
    assert_eq!(src(&u), Some("jwt_expired"));
}

#[test]
fn without_the_secret_tokens_are_read_not_verified() {
    let u = UserResolver::new(None).resolve("/", &bearer_of(&admin("d@x.io")));
    assert_eq!(src(&u), Some("jwt_unverified"));
    assert_eq!((u.user, u.claimed.as_deref()), (None, Some("d@x.io")));
    let u = UserResolver::new(Some("")).resolve("/", &bearer_of("x.y"));
    assert_eq!(src(&u), Some("jwt_malformed"));
}

#[test]
fn channel_webhooks_carry_foreign_tokens() {
    let r = header_mode().with_base_path("/botpress");
    // A Microsoft Bot Framework token (RS256, not signed with appSecret).
    let teams = bearer_of("eyJhbGciOiJSUzI1NiIsInR5cCI6IkpXVCJ9.eyJpc3MiOiJodHRwczovL2FwaS5ib3RmcmFtZXdvcmsuY29tIn0.c2ln");
    for p in [
        "/botpress/api/v1/messaging/webhooks/bot1/teams",
        "/botpress/API/V1/messaging/webhooks/x",
        "/botpress/api/v1/bots/bot1/mod/channel-teams/api/messages",
        "/botpress/api/v1/bots/bot1/mod/channel-telegram/webhook",
    ] {
        let u = r.resolve(p, &teams);
        assert_eq!(
            u,
            UserInfo {
                source: Some(UserSource::Foreign),
                ..Default::default()
            },
            "{p}"
        );
    }
    for p in [
        "/botpress/api/v1/bots/bot1/mod/channel-web/messages",
        // Other modules, and a `channel-` prefix naming no channel, verify as usual.
        "/botpress/api/v1/bots/bot1/mod/analytics/api/messages",
        "/botpress/api/v1/bots/bot1/mod/hitl/webhook",
        "/botpress/api/v1/bots/bot1/mod/channel-/webhook",
        "/botpress/api/v2/messaging/webhooks/bot1/teams",
        "/botpress/api/v1/bots/bot1",
        // Outside the base path, or with dot segments: not a webhook.
        "/api/v1/messaging/webhooks/bot1/teams",
        "/botpress/api/v1/messaging/webhooks/../../bots/bot1",
        "/botpress/api/v1/bots/bot1/mod/channel-teams/../../../admin",
    ] {
        assert_eq!(src(&r.resolve(p, &teams)), Some("jwt_invalid"), "{p}");
    }
    // No token, nothing to say.
    assert_eq!(
        r.resolve(
            "/botpress/api/v1/messaging/webhooks/b/teams",
            &HeaderMap::new()
        ),
        UserInfo::default()
    );
}

#[test]
fn converse_user_id_and_messaging_client_id() {
    let r = header_mode().with_base_path("/bp");
    let end = |p: &str, h: &HeaderMap| r.end_user(p, h).map(|e| (e.id, e.source.as_str()));
    let none = HeaderMap::new();
    let conv = |id: &str| Some((Some(id.to_string()), "converse"));
    assert_eq!(end("/bp/api/v1/bots/b1/converse/u-1", &none), conv("u-1"));
    assert_eq!(end("/bp/api/v1/bots/b1/converse/u-1/", &none), conv("u-1"));
    assert_eq!(
        end("/bp/api/v1/bots/b1/converse/u-1/secured", &none),
        conv("u-1")
    );
    assert_eq!(
        end("/bp/Api/V1/Bots/b1/Converse/a%20b%2Fc", &none),
        conv("a b/c")
    );
    for p in [
        "/api/v1/bots/b1/converse/u-1",
        "/bp/api/v2/bots/b1/converse/u-1",
        "/bp/apis/v1/bots/b1/converse/u-1",
        "/bp/api/v1/bots/b1/converse/",
        "/bp/api/v1/bots/b1/converse/u-1/other",
        "/bp/api/v1/bots/b1/converse/%FF",
        "/bp/api/v1/bots/b1/converse/./x",
        "/bp/api/v1/bots/b1/mod/channel-web/messages",
    ] {
        assert_eq!(end(p, &none), None, "{p}");
    }
    let client = headers(&[
        ("x-bp-messaging-client-id", "client-42"),
        ("x-bp-messaging-client-token", "never-logged"),
    ]);
    assert_eq!(
        end("/bp/api/v1/messaging/chat/messages", &client),
        Some((Some("client-42".to_string()), "messaging_client"))
    );
    assert_eq!(
        end("/bp/api/v1/bots/b1", &client),
        None,
        "only on the messaging API"
    );
    assert_eq!(end("/bp/api/v1/messaging/chat/messages", &none), None);
}

/// `pro.externalAuth`: `{algorithms, issuer, audience, publicKey}`.
fn external(algs: &[&str], key: ExternalKey) -> UserResolver {
    let cfg = ExternalAuth {
        algorithms: algs.iter().map(|a| a.to_string()).collect(),
        issuer: Some("my-site".into()),
        audience: Some("webchat".into()),
        ..ExternalAuth::default()
    };
    header_mode().with_external_auth(&cfg, &key)
}

fn ext_claims(sub: &str) -> serde_json::Value {
    json!({"sub": sub, "iss": "my-site", "aud": "webchat", "exp": unix() + 600, "plan": "gold"})
}

fn x_bp(t: &str) -> HeaderMap {
    headers(&[("x-bp-externalauth", &format!("Bearer {t}"))])
}

#[test]
fn external_auth_hs256_with_issuer_and_audience() {
    let key = "end-user-shared-secret";
    let r = external(&["HS256"], ExternalKey::Hmac(key.as_bytes().to_vec()));
    let end = |h: &HeaderMap| {
        r.end_user("/api/v1/bots/b/mod/channel-web/messages", h)
            .unwrap()
    };
    let ok = end(&x_bp(&sign(Algorithm::HS256, key, &ext_claims("user-7"))));
    assert_eq!(
        ok,
        EndUser {
            id: Some("user-7".into()),
            source: EndUserSource::ExternalAuth,
            claimed: None
        }
    );
    // The legacy header alone is read; beside X-BP-ExternalAuth it is not.
    let legacy = headers(&[(
        "externalauth",
        &format!(
            "Bearer {}",
            sign(Algorithm::HS256, key, &ext_claims("user-8"))
        ),
    )]);
    assert_eq!(end(&legacy).id.as_deref(), Some("user-8"));
    let mut both = x_bp(&sign(Algorithm::HS256, key, &ext_claims("user-7")));
    both.append(
        HeaderName::from_static("externalauth"),
        HeaderValue::from_static("Bearer junk"),
    );
    assert_eq!(end(&both).id.as_deref(), Some("user-7"));
    // The user claim falls back to `email`, in the order of user_claims.
    let c = json!({"email": "e@x.io", "iss": "my-site", "aud": ["other", "webchat"]});
    assert_eq!(
        end(&x_bp(&sign(Algorithm::HS256, key, &c))).id.as_deref(),
        Some("e@x.io")
    );

    let failed = |c: serde_json::Value, secret: &str, alg: Algorithm| {
        let e = end(&x_bp(&sign(alg, secret, &c)));
        (e.source.as_str(), e.id, e.claimed)
    };
    let claimed = Some("user-9".to_string());
    assert_eq!(
        failed(ext_claims("user-9"), "wrong", Algorithm::HS256),
        ("external_auth_invalid", None, claimed.clone())
    );
    // HS384 is not in pro.externalAuth.algorithms here.
    assert_eq!(
        failed(ext_claims("user-9"), key, Algorithm::HS384).0,
        "external_auth_invalid"
    );
    let mut c = ext_claims("user-9");
    c["iss"] = json!("elsewhere");
    assert_eq!(
        failed(c, key, Algorithm::HS256),
        ("external_auth_invalid", None, claimed.clone())
    );
    let mut c = ext_claims("user-9");
    c["aud"] = json!(["other", "webchat-2"]);
    assert_eq!(failed(c, key, Algorithm::HS256).0, "external_auth_invalid");
    let mut c = ext_claims("user-9");
    c.as_object_mut().unwrap().remove("aud");
    assert_eq!(failed(c, key, Algorithm::HS256).0, "external_auth_invalid");
    let mut c = ext_claims("user-9");
    c["exp"] = json!(1000);
    assert_eq!(
        failed(c, key, Algorithm::HS256),
        ("external_auth_expired", None, claimed.clone())
    );
    let mut c = ext_claims("user-9");
    c["nbf"] = json!(unix() + 100);
    assert_eq!(
        failed(c, key, Algorithm::HS256).0,
        "external_auth_not_yet_valid"
    );
    let e = end(&headers(&[("x-bp-externalauth", "Basic abc")]));
    assert_eq!(
        (e.source.as_str(), e.claimed),
        ("external_auth_invalid", None)
    );
    // Without the setting the header is not looked at.
    assert_eq!(
        header_mode().end_user("/", &x_bp(&sign(Algorithm::HS256, key, &ext_claims("u")))),
        None
    );
}

/// An HS256 token over exactly this payload text: claim order and types as written.
fn sign_raw(secret: &str, payload: &str) -> String {
    let b64 =
        |b: &[u8]| base64::Engine::encode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, b);
    let msg = format!(
        "{}.{}",
        b64(br#"{"alg":"HS256","typ":"JWT"}"#),
        b64(payload.as_bytes())
    );
    let key = EncodingKey::from_secret(secret.as_bytes());
    let sig = jsonwebtoken::crypto::sign(msg.as_bytes(), &key, Algorithm::HS256).unwrap();
    format!("{msg}.{sig}")
}

#[test]
fn the_end_user_is_the_first_of_user_claims_present_as_text() {
    let key = "end-user-shared-secret";
    let r = external(&["HS256"], ExternalKey::Hmac(key.as_bytes().to_vec()));
    let checked = format!(r#""iss":"my-site","aud":"webchat","exp":{}"#, unix() + 600);
    let id = |claims: &str| {
        let e = r
            .end_user(
                "/",
                &x_bp(&sign_raw(key, &format!("{{{claims},{checked}}}"))),
            )
            .unwrap();
        assert_eq!(e.source, EndUserSource::ExternalAuth, "{claims}");
        e.id
    };
    let s = |v: &str| Some(v.to_string());
    // `sub` outranks `email` (user_claims' order), wherever the payload puts it.
    assert_eq!(id(r#""sub":"s-1","email":"e@x.io""#), s("s-1"));
    assert_eq!(id(r#""email":"e@x.io","sub":"s-1""#), s("s-1"));
    // A `sub` that is not a string or a number does not hide the `email`.
    assert_eq!(id(r#""email":"e@x.io","sub":null"#), s("e@x.io"));
    assert_eq!(id(r#""email":"e@x.io","sub":{"id":"s-1"}"#), s("e@x.io"));
    assert_eq!(id(r#""email":"e@x.io","sub":["s-1"]"#), s("e@x.io"));
    assert_eq!(id(r#""email":"e@x.io","sub":true"#), s("e@x.io"));
    // A number is its text.
    assert_eq!(id(r#""sub":12345"#), s("12345"));
    assert_eq!(id(r#""sub":-7"#), s("-7"));
    assert_eq!(id(r#""plan":"gold""#), None);
    // A repeated name keeps its last value, as JSON.parse (and so Botpress) reads the payload;
    // a last null removes the claim.
    assert_eq!(id(r#""sub":"first","sub":"last""#), s("last"));
    assert_eq!(
        id(r#""sub":"first","email":"e@x.io","sub":null"#),
        s("e@x.io")
    );
    assert_eq!(id(r#""sub":null,"sub":7"#), s("7"));
}

#[test]
fn a_user_claim_that_jsonwebtoken_also_checks_is_both() {
    // user_claims may name `iss` (a tenant per issuer): it names the user and is still checked.
    let key = "end-user-shared-secret";
    let cfg = ExternalAuth {
        user_claims: vec!["email".into(), "iss".into()],
        ..ExternalAuth::default()
    };
    let r = header_mode().with_external_auth(&cfg, &ExternalKey::Hmac(key.as_bytes().to_vec()));
    let end = |claims: &str| {
        let e = r
            .end_user("/", &x_bp(&sign_raw(key, &format!("{{{claims}}}"))))
            .unwrap();
        (e.source.as_str(), e.id.or(e.claimed))
    };
    let ok = |v: &str| ("external_auth", Some(v.to_string()));
    assert_eq!(end(r#""iss":"tenant-a""#), ok("tenant-a"));
    assert_eq!(end(r#""iss":42"#), ok("42"));
    assert_eq!(end(r#""iss":"tenant-a","email":"e@x.io""#), ok("e@x.io"));
    assert_eq!(end(r#""email":"e@x.io","iss":"tenant-a""#), ok("e@x.io"));
    assert_eq!(
        end(r#""iss":"tenant-a","exp":1000"#),
        ("external_auth_expired", Some("tenant-a".to_string()))
    );
    // Repeated: the last value names the user, and the last `exp` is the one checked.
    assert_eq!(end(r#""iss":"tenant-a","iss":"tenant-b""#), ok("tenant-b"));
    assert_eq!(
        end(r#""iss":"tenant-a","iss":null,"email":"e@x.io""#),
        ok("e@x.io")
    );
    assert_eq!(
        end(&format!(r#""iss":"t","exp":{},"exp":1000"#, unix() + 600)),
        ("external_auth_expired", Some("t".to_string()))
    );
    assert_eq!(
        end(&format!(r#""iss":"t","exp":1000,"exp":{}"#, unix() + 600)),
        ok("t")
    );
}

/// An RS256/ES256 token signed with aws-lc-rs directly (jsonwebtoken's RSA signer wants a PKCS#1
/// key, rcgen makes PKCS#8).
fn sign_pkcs8(alg: &str, pkcs8: &[u8], claims: &serde_json::Value) -> String {
    use aws_lc_rs::signature;
    let b64 =
        |b: &[u8]| base64::Engine::encode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, b);
    let msg = format!(
        "{}.{}",
        b64(json!({"alg": alg, "typ": "JWT"}).to_string().as_bytes()),
        b64(claims.to_string().as_bytes())
    );
    let rng = aws_lc_rs::rand::SystemRandom::new();
    let sig = if alg == "RS256" {
        let k = signature::RsaKeyPair::from_pkcs8(pkcs8).unwrap();
        let mut s = vec![0; k.public_modulus_len()];
        k.sign(&signature::RSA_PKCS1_SHA256, &rng, msg.as_bytes(), &mut s)
            .unwrap();
        s
    } else {
        let k =
            signature::EcdsaKeyPair::from_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8)
                .unwrap();
        k.sign(&rng, msg.as_bytes()).unwrap().as_ref().to_vec()
    };
    format!("{msg}.{}", b64(&sig))
}

#[test]
fn external_auth_public_keys_rs256_and_es256() {
    for (alg, kp) in [
        (
            "RS256",
            rcgen::KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256).unwrap(),
        ),
        (
            "ES256",
            rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap(),
        ),
    ] {
        let spki = rcgen::PublicKeyData::subject_public_key_info(&kp);
        let key = if alg == "RS256" {
            ExternalKey::Rsa(spki)
        } else {
            ExternalKey::Ec(spki)
        };
        let r = external(&[alg], key);
        let t = sign_pkcs8(alg, &kp.serialize_der(), &ext_claims("pk-user"));
        let e = r.end_user("/", &x_bp(&t)).unwrap();
        assert_eq!(
            (e.source, e.id.as_deref()),
            (EndUserSource::ExternalAuth, Some("pk-user")),
            "{alg}"
        );
        // HS256 keyed with the public key's bytes: the algorithm confusion jsonwebtoken 8.5.1
        // allows when both families are listed; here HS256 is simply not accepted.
        let forged = sign(Algorithm::HS256, "anything", &ext_claims("pk-user"));
        let e = r.end_user("/", &x_bp(&forged)).unwrap();
        assert_eq!(e.source, EndUserSource::ExternalAuthInvalid, "{alg}");
    }
}

#[test]
fn visitor_id_from_the_socket_io_query() {
    assert_eq!(
        visitor_id(
            "/socket.io/",
            Some("EIO=4&visitorId=abc%20d&transport=polling")
        )
        .as_deref(),
        Some("abc d")
    );
    assert_eq!(visitor_id("/api", Some("visitorId=abc")), None);
}
