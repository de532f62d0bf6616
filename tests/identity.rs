//! The audit user is the user Botpress sees: tokens signed the way Botpress v12 signs them
//! (jsonwebtoken 8.5.1, `{email, strategy, tokenVersion, [csrfToken,] isSuperAdmin, iat, exp,
//! aud}`, HS256), read from the one place Botpress reads them, through a real gate; webchat end
//! users from external auth, the Converse API and the messaging API; no token in the trail.

use crate::support;

use bytes::Bytes;
use http::StatusCode;
use serde_json::{json, Value};
use support::*;

const APP_SECRET: &str = "botpress-app-secret-0123456789abcdef";

fn now() -> u64 {
    bpgate::cluster::unix_now()
}

/// What `security/utils.ts` signs: `jsonwebtoken.sign({ email, strategy, tokenVersion,
/// csrfToken, isSuperAdmin }, APP_SECRET, { expiresIn, audience })`.
fn botpress_token(
    alg: jsonwebtoken::Algorithm,
    secret: &str,
    email: &str,
    aud: &str,
    csrf: Option<&str>,
    exp: u64,
) -> String {
    let mut c = json!({"email": email, "strategy": "default", "tokenVersion": 1});
    if let Some(x) = csrf {
        c["csrfToken"] = json!(x);
    }
    c["isSuperAdmin"] = json!(false);
    c["iat"] = json!(now());
    c["exp"] = json!(exp);
    c["aud"] = json!(aud);
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(alg),
        &c,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

fn admin_token(email: &str) -> String {
    botpress_token(
        jsonwebtoken::Algorithm::HS256,
        APP_SECRET,
        email,
        "collaborators",
        None,
        now() + 7200,
    )
}

/// One request per `(path, headers)`, then the audit line of each, by path.
async fn lines_for(gate: &Gate, reqs: &[(&str, Vec<(&str, String)>)]) -> Vec<Value> {
    let mut c = Client::h1(gate).await;
    for (path, hs) in reqs {
        let mut b = get(path);
        for (k, v) in hs {
            b = b.header(*k, v.as_str());
        }
        c.call(b.body(full(Bytes::new())).unwrap()).await;
    }
    let lines = gate.audit_lines();
    reqs.iter()
        .map(|(path, _)| {
            let p = path.split('?').next().unwrap();
            lines
                .iter()
                .find(|l| l["path"] == p)
                .unwrap_or_else(|| panic!("no line for {p}"))
                .clone()
        })
        .collect()
}

fn raw_trail(gate: &Gate) -> String {
    gate.audit_lines();
    std::fs::read_to_string(gate.audit_dir.join("audit.jsonl")).unwrap()
}

fn who(l: &Value) -> (Option<&str>, Option<&str>, Option<&str>) {
    (
        l["user"].as_str(),
        l["user_source"].as_str(),
        l["claimed_user"].as_str(),
    )
}

#[tokio::test]
async fn header_mode_names_the_bearer_user_and_nothing_else_hides_or_replaces_it() {
    init();
    let node = Node::start("n", echo()).await;
    let gate = Gate::builder()
        .upstream(node.url())
        .env("BPGATE_JWT_SECRET", APP_SECRET)
        .start()
        .await;
    let real = admin_token("real@x.io");
    let junk = botpress_token(
        jsonwebtoken::Algorithm::HS256,
        "attacker-secret",
        "victim@x.io",
        "collaborators",
        None,
        1000,
    );
    let hs512 = botpress_token(
        jsonwebtoken::Algorithm::HS512,
        APP_SECRET,
        "hs512@x.io",
        "collaborators",
        None,
        now() + 60,
    );
    let chat = botpress_token(
        jsonwebtoken::Algorithm::HS256,
        APP_SECRET,
        "chatter@x.io",
        "chat_users",
        None,
        now() + 60,
    );
    let studio = botpress_token(
        jsonwebtoken::Algorithm::HS256,
        APP_SECRET,
        "other@x.io",
        "studio",
        None,
        now() + 60,
    );
    let bearer = |t: &str| ("authorization", format!("Bearer {t}"));
    let l = lines_for(
        &gate,
        &[
            ("/a", vec![bearer(&real)]),
            // A junk cookie beside the real bearer: Botpress never reads the cookie here.
            (
                "/b",
                vec![("cookie", format!("jwtToken={junk}")), bearer(&real)],
            ),
            // The real user's token in the cookie only: Botpress sees nobody.
            ("/c", vec![("cookie", format!("jwtToken={real}"))]),
            ("/d", vec![bearer(&hs512)]),
            ("/e", vec![bearer(&chat)]),
            ("/f", vec![bearer(&junk)]),
            ("/g", vec![("authorization", format!("Bearer  {real}"))]),
            ("/h", vec![bearer(&studio)]),
        ],
    )
    .await;
    assert_eq!(who(&l[0]), (Some("real@x.io"), Some("jwt"), None));
    assert_eq!(l[0]["user_kind"], "collaborator");
    assert_eq!(l[0]["user_strategy"], "default");
    assert_eq!(l[0]["user_super_admin"], false);
    assert_eq!(who(&l[1]), (Some("real@x.io"), Some("jwt"), None));
    assert_eq!(who(&l[2]), (None, None, None));
    assert_eq!(who(&l[3]), (Some("hs512@x.io"), Some("jwt"), None));
    assert_eq!(who(&l[4]), (Some("chatter@x.io"), Some("jwt"), None));
    assert_eq!(l[4]["user_kind"], "chat_user");
    assert_eq!(who(&l[5]), (None, Some("jwt_invalid"), Some("victim@x.io")));
    assert!(l[5].get("user_kind").is_none(), "nothing of a forged token");
    assert_eq!(
        who(&l[6]),
        (None, None, None),
        "two spaces: no token to Botpress"
    );
    assert_eq!(
        who(&l[7]),
        (None, Some("jwt_wrong_audience"), Some("other@x.io"))
    );
    let raw = raw_trail(&gate);
    for t in [&real, &junk, &hs512, &chat] {
        assert!(!raw.contains(t.as_str()), "a token reached the trail");
    }
    gate.stop().await;
}

#[tokio::test]
async fn cookie_mode_reads_the_cookie_checks_csrf_and_a_junk_bearer_cannot_hide_the_user() {
    init();
    let node = Node::start("n", echo()).await;
    let gate = Gate::builder()
        .upstream(node.url())
        .env("BPGATE_JWT_SECRET", APP_SECRET)
        .env("BPGATE_AUDIT_JWT_SOURCE", "cookie")
        .start()
        .await;
    let csrf = "Xq3vU7kP2m";
    let real = botpress_token(
        jsonwebtoken::Algorithm::HS256,
        APP_SECRET,
        "real@x.io",
        "collaborators",
        Some(csrf),
        now() + 3600,
    );
    let stolen_expired = botpress_token(
        jsonwebtoken::Algorithm::HS256,
        APP_SECRET,
        "victim@x.io",
        "collaborators",
        None,
        1000,
    );
    let cookie = || ("cookie", format!("lang=en; jwtToken={real}"));
    let l = lines_for(
        &gate,
        &[
            ("/a", vec![cookie(), ("csrf-token", csrf.into())]),
            // Botpress ignores Authorization in cookie mode: neither junk nor a stolen expired
            // token there hides the cookie's user.
            (
                "/b",
                vec![
                    ("authorization", "Bearer x".into()),
                    cookie(),
                    ("csrf-token", csrf.into()),
                ],
            ),
            (
                "/c",
                vec![
                    ("authorization", format!("Bearer {stolen_expired}")),
                    cookie(),
                    ("csrf-token", csrf.into()),
                ],
            ),
            // A page load or a cross-site request: the cookie without the CSRF header.
            ("/d", vec![cookie()]),
            ("/e", vec![cookie(), ("csrf-token", "guessed".into())]),
            // A bearer alone is nothing to Botpress in cookie mode.
            ("/f", vec![("authorization", format!("Bearer {real}"))]),
        ],
    )
    .await;
    for (i, x) in l[..3].iter().enumerate() {
        assert_eq!(who(x), (Some("real@x.io"), Some("jwt"), None), "{i}");
    }
    assert_eq!(who(&l[3]), (None, Some("jwt_no_csrf"), Some("real@x.io")));
    assert_eq!(
        who(&l[4]),
        (None, Some("jwt_csrf_mismatch"), Some("real@x.io"))
    );
    assert_eq!(who(&l[5]), (None, None, None));
    let raw = raw_trail(&gate);
    assert!(!raw.contains(&real) && !raw.contains(csrf) && !raw.contains("guessed"));
    gate.stop().await;
}

#[tokio::test]
async fn channel_webhooks_with_foreign_tokens_are_not_recorded_as_forgeries() {
    init();
    let node = Node::start("n", echo()).await;
    let gate = Gate::builder()
        .upstream(node.url())
        .env("BPGATE_JWT_SECRET", APP_SECRET)
        .toml("base_path = \"/botpress\"\n[health]\nenabled = false")
        .start()
        .await;
    // A token of the channel's platform (Teams sends a Bot Framework RS256 one): not signed
    // with appSecret.
    let kp = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let teams = sign_pkcs8(
        "ES256",
        &kp.serialize_der(),
        &json!({"iss": "https://api.botframework.com", "aud": "app-id", "exp": now() + 600}),
    );
    let h = || vec![("authorization", format!("Bearer {teams}"))];
    let l = lines_for(
        &gate,
        &[
            ("/botpress/api/v1/messaging/webhooks/bot1/teams", h()),
            (
                "/botpress/api/v1/bots/bot1/mod/channel-teams/api/messages",
                h(),
            ),
            (
                "/botpress/api/v1/bots/bot1/mod/channel-messenger/webhook",
                h(),
            ),
            // The same token on Botpress's own API is not a Botpress token.
            ("/botpress/api/v1/bots/bot1", h()),
        ],
    )
    .await;
    for x in &l[..3] {
        assert_eq!(who(x), (None, Some("foreign"), None), "{x}");
    }
    assert_eq!(l[3]["user_source"], "jwt_invalid");
    assert!(!raw_trail(&gate).contains(&teams));
    gate.stop().await;
}

/// RS256/ES256 tokens signed with aws-lc-rs (rcgen keys are PKCS#8).
fn sign_pkcs8(alg: &str, pkcs8: &[u8], claims: &Value) -> String {
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
        signature::EcdsaKeyPair::from_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8)
            .unwrap()
            .sign(&rng, msg.as_bytes())
            .unwrap()
            .as_ref()
            .to_vec()
    };
    format!("{msg}.{}", b64(&sig))
}

#[tokio::test]
async fn external_auth_names_the_webchat_end_user_with_botpress_settings() {
    init();
    let node = Node::start("n", echo()).await;
    // pro.externalAuth = { algorithms: ["RS256"], issuer, audience, publicKey } with the key in
    // data/global/end_users_auth.pub.
    let kp = rcgen::KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let pub_file = dir.path().join("end_users_auth.pub");
    std::fs::write(&pub_file, kp.public_key_pem()).unwrap();
    let gate = Gate::builder()
        .upstream(node.url())
        .env("BPGATE_JWT_SECRET", APP_SECRET)
        .env(
            "BPGATE_AUDIT_EXTERNAL_AUTH_PUBLIC_KEY_FILE",
            pub_file.to_str().unwrap(),
        )
        .env("BPGATE_AUDIT_EXTERNAL_AUTH_ALGORITHMS", "RS256")
        .env("BPGATE_AUDIT_EXTERNAL_AUTH_ISSUER", "shop.example.com")
        .env("BPGATE_AUDIT_EXTERNAL_AUTH_AUDIENCE", "webchat")
        .start()
        .await;
    let claims = |sub: &str, iss: &str, exp: u64| json!({"sub": sub, "name": "Ada", "iss": iss, "aud": "webchat", "exp": exp});
    let good = sign_pkcs8(
        "RS256",
        &kp.serialize_der(),
        &claims("customer-17", "shop.example.com", now() + 600),
    );
    let wrong_iss = sign_pkcs8(
        "RS256",
        &kp.serialize_der(),
        &claims("customer-18", "evil.example", now() + 600),
    );
    let expired = sign_pkcs8(
        "RS256",
        &kp.serialize_der(),
        &claims("customer-19", "shop.example.com", 1000),
    );
    // An HS256 token keyed with the public key's text: refused (RS256 only).
    let confused = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims("customer-20", "shop.example.com", now() + 600),
        &jsonwebtoken::EncodingKey::from_secret(kp.public_key_pem().as_bytes()),
    )
    .unwrap();
    let web = "/api/v1/bots/b1/mod/channel-web/messages";
    let ext = |t: &str| ("x-bp-externalauth", format!("Bearer {t}"));
    let legacy = |t: &str| ("externalauth", format!("Bearer {t}"));
    let l = lines_for(
        &gate,
        &[
            (&format!("{web}/1"), vec![ext(&good), legacy(&good)]),
            (&format!("{web}/2"), vec![legacy(&good)]),
            (&format!("{web}/3"), vec![ext(&wrong_iss)]),
            (&format!("{web}/4"), vec![ext(&expired)]),
            (&format!("{web}/5"), vec![ext(&confused)]),
            // The admin's own bearer beside it keeps its own fields.
            (
                &format!("{web}/6"),
                vec![
                    ext(&good),
                    (
                        "authorization",
                        format!("Bearer {}", admin_token("dev@x.io")),
                    ),
                ],
            ),
        ],
    )
    .await;
    let end = |x: &Value| {
        (
            x["end_user"].as_str().map(str::to_string),
            x["end_user_source"].as_str().map(str::to_string),
            x["claimed_end_user"].as_str().map(str::to_string),
        )
    };
    let s = |v: &str| Some(v.to_string());
    assert_eq!(end(&l[0]), (s("customer-17"), s("external_auth"), None));
    assert_eq!(end(&l[1]), (s("customer-17"), s("external_auth"), None));
    assert_eq!(
        end(&l[2]),
        (None, s("external_auth_invalid"), s("customer-18"))
    );
    assert_eq!(
        end(&l[3]),
        (None, s("external_auth_expired"), s("customer-19"))
    );
    assert_eq!(end(&l[4]).1, s("external_auth_invalid"));
    assert_eq!(end(&l[5]).0, s("customer-17"));
    assert_eq!(who(&l[5]), (Some("dev@x.io"), Some("jwt"), None));
    assert!(l[0]["user"].is_null(), "an end user is not a Botpress user");
    let raw = raw_trail(&gate);
    for t in [&good, &wrong_iss, &expired, &confused] {
        assert!(!raw.contains(t.as_str()), "a token reached the trail");
    }
    gate.stop().await;
}

#[tokio::test]
async fn converse_user_and_messaging_client_below_the_base_path() {
    init();
    let node = Node::start("n", echo()).await;
    let gate = Gate::builder()
        .upstream(node.url())
        .toml("base_path = \"/botpress\"\n[health]\nenabled = false")
        .start()
        .await;
    let client = || {
        vec![
            ("x-bp-messaging-client-id", "9d3c-client".to_string()),
            (
                "x-bp-messaging-client-token",
                "messaging-secret-token".into(),
            ),
        ]
    };
    let l = lines_for(
        &gate,
        &[
            ("/botpress/api/v1/bots/welcome/converse/user%2042", vec![]),
            (
                "/botpress/api/v1/bots/welcome/converse/u-7/secured?include=nlu",
                vec![],
            ),
            ("/botpress/api/v1/messaging/chat/messages", client()),
            // The client id is the messaging API's; elsewhere it names nobody.
            ("/botpress/api/v1/bots/welcome", client()),
            ("/botpress/api/v1/bots/welcome/converse/u-8/other", vec![]),
        ],
    )
    .await;
    let end = |x: &Value| (x["end_user"].clone(), x["end_user_source"].clone());
    assert_eq!(end(&l[0]), (json!("user 42"), json!("converse")));
    assert_eq!(end(&l[1]), (json!("u-7"), json!("converse")));
    assert_eq!(
        end(&l[2]),
        (json!("9d3c-client"), json!("messaging_client"))
    );
    for x in &l[3..] {
        assert!(
            x.get("end_user").is_none() && x.get("end_user_source").is_none(),
            "{x}"
        );
    }
    assert!(!raw_trail(&gate).contains("messaging-secret-token"));
    gate.stop().await;
}

/// `inject.js`: `'/lite/' + botId + '/?m=channel-web&v=' + viewMode + '&options=' +
/// encodeURIComponent(JSON.stringify({ config }))`.
fn iframe_path(token: &str) -> String {
    const URI_COMPONENT: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
        .remove(b'-')
        .remove(b'_')
        .remove(b'.')
        .remove(b'!')
        .remove(b'~')
        .remove(b'*')
        .remove(b'\'')
        .remove(b'(')
        .remove(b')');
    let config = json!({"config": {
        "host": "https://bot.example.com", "botId": "welcome-bot",
        "externalAuthToken": token, "enableReset": true
    }});
    format!(
        "/lite/welcome-bot/?m=channel-web&v=Embedded&options={}",
        percent_encoding::utf8_percent_encode(&config.to_string(), URI_COMPONENT)
    )
}

#[tokio::test]
async fn the_webchat_iframe_url_and_its_referer_keep_the_external_token_out() {
    init();
    let node = Node::start("n", echo()).await;
    let token = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJjdXN0b21lci0xNyJ9.c2lnbmF0dXJlLWJ5dGVz";
    // The default redaction list, and one an operator trimmed to `token`.
    for extra in ["", "[audit]\nredact_query = [\"token\"]"] {
        let gate = Gate::builder()
            .upstream(node.url())
            .toml(&format!("{extra}\n[health]\nenabled = false"))
            .start()
            .await;
        let page = iframe_path(token);
        let mut c = Client::h1(&gate).await;
        let a = c.get(&page).await;
        assert_eq!(a.status, StatusCode::OK);
        // Every request the iframe makes sends its URL back as Referer.
        c.call(
            get("/assets/modules/channel-web/default.css")
                .header("referer", format!("https://bot.example.com{page}"))
                .body(full(Bytes::new()))
                .unwrap(),
        )
        .await;
        let raw = raw_trail(&gate);
        assert!(
            !raw.contains(token) && !raw.contains("eyJ"),
            "the external token reached the trail: {raw}"
        );
        let lines = gate.audit_lines();
        let lite = lines
            .iter()
            .find(|l| l["path"] == "/lite/welcome-bot/")
            .unwrap();
        assert_eq!(lite["query"], "m=channel-web&v=Embedded&options=REDACTED");
        let css = lines
            .iter()
            .find(|l| l["path"] == "/assets/modules/channel-web/default.css")
            .unwrap();
        assert_eq!(
            css["referer"],
            "https://bot.example.com/lite/welcome-bot/?m=channel-web&v=Embedded&options=REDACTED"
        );
        gate.stop().await;
    }
}
