use super::*;
use http::HeaderValue;
use jsonwebtoken::{encode, EncodingKey, Header};

fn jwt(secret: &str, email: &str, exp: u64) -> String {
    #[derive(serde::Serialize)]
    struct C<'a> {
        email: &'a str,
        strategy: &'a str,
        aud: &'a str,
        exp: u64,
    }
    encode(
        &Header::default(),
        &C {
            email,
            strategy: "default",
            aud: "collaborators",
            exp,
        },
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

fn bearer(t: &str) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(
        AUTHORIZATION,
        HeaderValue::from_str(&format!("Bearer {t}")).unwrap(),
    );
    h
}

fn future() -> u64 {
    crate::cluster::unix_now() + 3600
}

#[test]
fn verified_forged_expired_unverified() {
    let r = UserResolver::new(Some("app-secret"));
    let ok = r.resolve(&bearer(&jwt("app-secret", "a@x.io", future())));
    assert_eq!(
        ok,
        UserInfo {
            user: Some("a@x.io".into()),
            source: Some("jwt"),
            claimed: None
        }
    );
    let forged = r.resolve(&bearer(&jwt("other", "b@x.io", future())));
    assert_eq!(
        forged,
        UserInfo {
            user: None,
            source: Some("jwt_invalid"),
            claimed: Some("b@x.io".into())
        }
    );
    let old = r.resolve(&bearer(&jwt("app-secret", "c@x.io", 1000)));
    assert_eq!(
        old,
        UserInfo {
            user: None,
            source: Some("jwt_expired"),
            claimed: Some("c@x.io".into())
        }
    );
    let u = UserResolver::new(None).resolve(&bearer(&jwt("x", "d@x.io", future())));
    assert_eq!(
        u,
        UserInfo {
            user: None,
            source: Some("jwt_unverified"),
            claimed: Some("d@x.io".into())
        }
    );
    assert_eq!(r.resolve(&HeaderMap::new()), UserInfo::default());
}

#[test]
fn cookie_token_and_visitor() {
    let mut h = HeaderMap::new();
    h.insert(
        COOKIE,
        HeaderValue::from_str(&format!("a=1; jwtToken={}", jwt("s", "e@x.io", future()))).unwrap(),
    );
    assert_eq!(
        UserResolver::new(Some("s")).resolve(&h).user.as_deref(),
        Some("e@x.io")
    );
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
