use std::collections::HashMap;

use super::*;

fn load_str(toml: &str, env: &[(&str, &str)]) -> Result<Loaded, ConfigErrors> {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("c.toml");
    std::fs::write(&p, toml).unwrap();
    let env: HashMap<String, String> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    load(&p, &|k| env.get(k).cloned(), &Overrides::default())
}

fn err(toml: &str, env: &[(&str, &str)]) -> String {
    load_str(toml, env)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_else(|| panic!("expected an error for {toml:?} {env:?}"))
}

#[test]
fn shipped_default_config_is_valid() {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/config/bpgate.toml"))
        .unwrap();
    let l = load_str(&text, &[]).unwrap();
    assert_eq!(l.config.listen.https.to_string(), "127.0.0.1:8443");
    assert_eq!(l.config.listen.admin.to_string(), "127.0.0.1:9901");
    assert_eq!(l.derived.nodes[0].authority, "127.0.0.1:3000");
}

#[test]
fn unknown_key_names_the_closest_known_one() {
    let e = err("[cors]\norgins = []\n", &[]);
    assert!(
        e.contains("cors.orgins") && e.contains("did you mean `cors.origins`"),
        "{e}"
    );
    let e = err("listn = 1\n", &[]);
    assert!(
        e.contains("`listn`") && e.contains("did you mean `listen`"),
        "{e}"
    );
    let e = err(
        "[[upstream.nodes]]\nurl = \"http://a:1\"\nwieght = 2\n",
        &[],
    );
    assert!(e.contains("did you mean `upstream.nodes.weight`"), "{e}");
}

#[test]
fn env_overrides_file_and_errors_name_the_variable() {
    let l = load_str(
        "[listen]\nhttps = \"127.0.0.1:1\"\n",
        &[("BPGATE_LISTEN", "127.0.0.1:2")],
    )
    .unwrap();
    assert_eq!(l.config.listen.https.port(), 2);
    let e = err("", &[("BPGATE_LISTEN", "not-an-address")]);
    assert!(
        e.contains("listen.https") && e.contains("env BPGATE_LISTEN"),
        "{e}"
    );
    let e = err("", &[("BPGATE_WORKERS", "many")]);
    assert!(e.contains("BPGATE_WORKERS"), "{e}");
    let e = err("", &[("BPGATE_MAX_BODY", "12q")]);
    assert!(
        e.contains("limits.max_body") && e.contains("BPGATE_MAX_BODY"),
        "{e}"
    );
    let l = load_str(
        "",
        &[
            ("BPGATE_MAX_BODY", "10m"),
            ("BPGATE_DRAIN_TIMEOUT", "7"),
            ("BPGATE_HTTP_LISTEN", ""),
        ],
    )
    .unwrap();
    assert_eq!(l.config.limits.max_body.0, 10 << 20);
    assert_eq!(l.config.shutdown.drain_timeout.as_secs(), 7);
    assert!(
        l.config.listen.http.is_none(),
        "empty BPGATE_HTTP_LISTEN turns it off"
    );
}

#[test]
fn upstreams_and_trusted_proxies_from_env() {
    let l = load_str(
        "",
        &[
            (
                "BPGATE_UPSTREAMS",
                "http://10.0.0.5:3000, http://10.0.0.6:3000",
            ),
            ("BPGATE_TRUSTED_PROXIES", "10.0.0.0/8,192.168.1.7"),
        ],
    )
    .unwrap();
    assert_eq!(l.derived.nodes.len(), 2);
    assert_eq!(l.derived.nodes[1].name, "10.0.0.6:3000");
    assert_eq!(l.config.forwarding.trusted_proxies.len(), 2);
    let e = err("", &[("BPGATE_UPSTREAMS", "https://x:1")]);
    assert!(
        e.contains("upstream.urls.0") && e.contains("BPGATE_UPSTREAMS"),
        "{e}"
    );
    let e = err("", &[("BPGATE_TRUSTED_PROXIES", "10.0.0.0/33")]);
    assert!(e.contains("forwarding.trusted_proxies"), "{e}");
}

#[test]
fn external_url_is_validated_and_gives_the_base_path() {
    let l = load_str("", &[("EXTERNAL_URL", "https://Bot.Example.com/botpress/")]).unwrap();
    assert_eq!(l.derived.base_path, "/botpress");
    assert_eq!(
        l.derived.public_origin.as_deref(),
        Some("https://bot.example.com")
    );
    for bad in [
        "bot.example.com",
        "ftp://x/",
        "https://x/?a=1",
        "https://x/#f",
        "https://x/a/../b",
    ] {
        let e = err("", &[("EXTERNAL_URL", bad)]);
        assert!(
            e.contains("external_url") && e.contains("EXTERNAL_URL"),
            "{bad}: {e}"
        );
    }
}

#[test]
fn sizes_and_durations() {
    assert_eq!("25m".parse::<ByteSize>().unwrap().0, 25 << 20);
    assert_eq!("64K".parse::<ByteSize>().unwrap().0, 64 << 10);
    assert_eq!("1g".parse::<ByteSize>().unwrap().0, 1 << 30);
    assert_eq!("100".parse::<ByteSize>().unwrap().0, 100);
    assert!("x".parse::<ByteSize>().is_err());
    assert_eq!(types::duration::parse("30").unwrap().as_secs(), 30);
    assert_eq!(types::duration::parse("500ms").unwrap().as_millis(), 500);
    assert!(types::duration::parse("soon").is_err());
}

#[test]
fn several_errors_are_reported_together_and_secrets_are_redacted() {
    let e = err(
        "[sticky]\ncookie_name = \"jwtToken\"\n[health]\nrise = 0\n",
        &[],
    );
    assert!(
        e.contains("sticky.cookie_name") && e.contains("health.rise"),
        "{e}"
    );
    let l = load_str(
        "[sticky]\nsecret = \"super-secret-value-123\"\n",
        &[("BPGATE_JWT_SECRET", "jwt-secret-value")],
    )
    .unwrap();
    let out = l.config.redacted_toml();
    assert!(
        !out.contains("super-secret-value-123") && !out.contains("jwt-secret-value"),
        "{out}"
    );
    assert!(out.contains("<redacted>"));
}

#[test]
fn audit_jwt_source_from_file_and_env_and_bad_value_named() {
    let l = load_str("", &[]).unwrap();
    assert_eq!(l.config.audit.jwt_source, JwtSource::Header);
    let l = load_str("[audit]\njwt_source = \"cookie\"\n", &[]).unwrap();
    assert_eq!(l.config.audit.jwt_source, JwtSource::Cookie);
    let l = load_str(
        "[audit]\njwt_source = \"cookie\"\n",
        &[("BPGATE_AUDIT_JWT_SOURCE", "header")],
    )
    .unwrap();
    assert_eq!(l.config.audit.jwt_source, JwtSource::Header);
    let e = err("", &[("BPGATE_AUDIT_JWT_SOURCE", "bearer")]);
    assert!(
        e.contains("audit.jwt_source") && e.contains("BPGATE_AUDIT_JWT_SOURCE"),
        "{e}"
    );
}

#[test]
fn response_header_values_are_checked_at_load() {
    let e = err("[headers]\nhsts = \"max-age=1\\u0001\"\n", &[]);
    assert!(e.contains("headers.hsts"), "{e}");
    let e = err(
        "[headers]\nframe_ancestors = [\"'self'\", \"https://a.example.com; script-src *\"]\n",
        &[],
    );
    assert!(e.contains("headers.frame_ancestors.1"), "{e}");
    let l = load_str(
        "[headers]\nframe_ancestors = [\"'self'\", \"https://shop.example.com\"]\nreferrer_policy = \"\"\n",
        &[],
    )
    .unwrap();
    assert_eq!(l.config.headers.frame_ancestors.len(), 2);
}

#[test]
fn cors_allow_headers_reflect_by_default_or_a_pinned_list() {
    assert_eq!(
        load_str("", &[]).unwrap().config.cors.allow_headers,
        AllowHeaders::Reflect
    );
    let l = load_str("[cors]\nallow_headers = \"reflect\"\n", &[]).unwrap();
    assert_eq!(l.config.cors.allow_headers, AllowHeaders::Reflect);
    let l = load_str("[cors]\nallow_headers = [\"X-BP-ExternalAuth\"]\n", &[]).unwrap();
    assert_eq!(
        l.config.cors.allow_headers,
        AllowHeaders::List(vec!["X-BP-ExternalAuth".into()])
    );
    // Round-trips through the rendered configuration (`bpgate config`, reload comparisons).
    let t = l.config.redacted_toml();
    assert!(t.contains("allow_headers = [\"X-BP-ExternalAuth\"]"), "{t}");
    let e = err("[cors]\nallow_headers = \"*\"\n", &[]);
    assert!(
        e.contains("cors.allow_headers") && e.contains("reflect"),
        "{e}"
    );
    let e = err("[cors]\nallow_headers = [\"ok\", \"not a header\"]\n", &[]);
    assert!(e.contains("cors.allow_headers.1"), "{e}");
}

#[test]
fn sticky_fallback_and_session_map_settings() {
    let s = load_str("", &[]).unwrap().config.sticky;
    assert_eq!(s.fallback, StickyFallback::Load);
    assert_eq!(s.sid_map_max_entries, 100_000);
    assert_eq!(s.sid_map_idle_timeout, Duration::from_secs(300));
    for (v, want) in [
        ("load", StickyFallback::Load),
        ("none", StickyFallback::Load),
        ("client-ip", StickyFallback::ClientIp),
    ] {
        let l = load_str(&format!("[sticky]\nfallback = \"{v}\"\n"), &[]).unwrap();
        assert_eq!(l.config.sticky.fallback, want, "{v}");
    }
    let e = err("[sticky]\nfallback = \"random\"\n", &[]);
    assert!(e.contains("sticky.fallback"), "{e}");
    let e = err("[sticky]\nsid_map_idle_timeout = \"10s\"\n", &[]);
    assert!(e.contains("sticky.sid_map_idle_timeout"), "{e}");
    // Off: the timeout does not matter.
    load_str(
        "[sticky]\nsid_map_max_entries = 0\nsid_map_idle_timeout = \"10s\"\n",
        &[],
    )
    .unwrap();
}

#[test]
fn edge_limits_parse_and_are_checked() {
    let l = load_str(
        "[tls]\nsession_timeout = \"0s\"\n[limits]\nlingering_time = \"0s\"\nlingering_timeout = \"2s\"\nlingering_size = \"1m\"\n",
        &[],
    )
    .unwrap();
    assert!(l.config.tls.session_timeout.is_zero());
    assert!(l.config.limits.lingering_time.is_zero());
    assert_eq!(l.config.limits.lingering_size.0, 1 << 20);
    let d = load_str("", &[]).unwrap().config;
    assert_eq!(d.tls.session_timeout, Duration::from_secs(300));
    assert_eq!(d.limits.lingering_time, Duration::from_secs(30));
    assert_eq!(d.limits.lingering_timeout, Duration::from_secs(5));
    let e = err("[tls]\nsession_timeout = \"8d\"\n", &[]);
    assert!(
        e.contains("tls.session_timeout") && e.contains("7 days"),
        "{e}"
    );
    let e = err("[limits]\nlingering_timeout = \"0s\"\n", &[]);
    assert!(e.contains("limits.lingering_timeout"), "{e}");
}

#[test]
fn defaults_fit_botpress_media_uploads_node_timeouts_and_the_cheap_probe() {
    let c = Config::default();
    // A 25 MiB file (Botpress's "25mb") plus its multipart framing.
    assert!(c.limits.max_body.0 > 25 * 1024 * 1024 + 64 * 1024);
    // Node 12's server.timeout is 120 s of inactivity.
    assert!(c.upstream.response_timeout > Duration::from_secs(120));
    assert_eq!(c.health.path, "/version");
    assert!(c.upstream.timeouts.is_empty() && c.routes.is_empty());
}

#[test]
fn routes_lay_over_the_builtin_table_field_by_field() {
    let l = load_str(
        r#"
[[routes]]
prefix = "/api/v2/admin/management/versioning/"
max_body = "500m"
[[routes]]
prefix = "/api/v1/bots/*/mod/qna/import"
response_timeout = "10m"
"#,
        &[],
    )
    .unwrap();
    let find = |p: &str| {
        l.derived
            .routes
            .iter()
            .find(|r| same_route(&r.prefix, p))
            .unwrap_or_else(|| panic!("no route {p}"))
            .clone()
    };
    let v2 = find("/api/v2/admin/management/versioning");
    assert_eq!(v2.max_body, Some(ByteSize(500 << 20)));
    assert_eq!(
        v2.response_timeout,
        Some(ARCHIVE_TIMEOUT),
        "a field left out keeps the built-in value"
    );
    assert_eq!(
        find("/api/v1/admin/management/versioning").max_body,
        Some(ARCHIVE_MAX_BODY)
    );
    assert_eq!(
        find("/api/v1/bots/*/mod/qna/import").response_timeout,
        Some(Duration::from_secs(600))
    );
    assert_eq!(l.derived.routes.len(), builtin_routes().len() + 1);
    assert!(l.derived.warnings.is_empty());
}

#[test]
fn the_deprecated_timeouts_map_onto_routes_with_a_warning() {
    let l = load_str(
        "[[upstream.timeouts]]\nprefix = \"/long\"\nresponse_timeout = \"5s\"\n[[routes]]\nprefix = \"/long\"\nmax_body = \"1k\"\n",
        &[],
    )
    .unwrap();
    let r = l
        .derived
        .routes
        .iter()
        .find(|r| r.prefix == "/long")
        .unwrap();
    assert_eq!(r.response_timeout, Some(Duration::from_secs(5)));
    assert_eq!(r.max_body, Some(ByteSize(1024)));
    assert_eq!(l.derived.warnings.len(), 1);
    let w = l.derived.warnings[0].to_string();
    assert!(
        w.contains("upstream.timeouts.0") && w.contains("deprecated") && w.contains("[[routes]]"),
        "{w}"
    );
    // `bpgate config` shows the table in effect, without the old key.
    let out = l.redacted_toml();
    assert!(
        out.contains("[[routes]]") && !out.contains("[[upstream.timeouts]]"),
        "{out}"
    );
    let again = load_str(&out, &[]).unwrap();
    assert_eq!(
        again.derived.routes, l.derived.routes,
        "the printed table reads back the same"
    );
}

#[test]
fn bad_routes_are_refused_with_their_key() {
    for (toml, key) in [
        ("[[routes]]\nprefix = \"api\"\nmax_body = \"1m\"", "routes.0.prefix"),
        ("[[routes]]\nprefix = \"/api/bots*/x\"\nmax_body = \"1m\"", "routes.0.prefix"),
        ("[[routes]]\nprefix = \"/api//x\"\nmax_body = \"1m\"", "routes.0.prefix"),
        ("[[routes]]\nprefix = \"/api?x=1\"\nmax_body = \"1m\"", "routes.0.prefix"),
        (
            "[[routes]]\nprefix = \"/a/b/c/d/e/f/g/h/i/j/k/l/m/n/o/p/q\"\nmax_body = \"1m\"",
            "routes.0.prefix",
        ),
        ("[[routes]]\nprefix = \"/api\"", "routes.0"),
        ("[[routes]]\nprefix = \"/api\"\nresponse_timeout = \"0s\"", "routes.0.response_timeout"),
        ("[[routes]]\nprefix = \"/api\"\nmax_body = 0", "routes.0.max_body"),
        (
            "[[routes]]\nprefix = \"/api\"\nmax_body = \"1m\"\n[[routes]]\nprefix = \"/API/\"\nmax_body = \"2m\"",
            "routes.1.prefix",
        ),
        ("[[routes]]\nprefix = \"/api\"\nmax_bdy = \"1m\"", "routes.0.max_bdy"),
        (
            "[[upstream.timeouts]]\nprefix = \"long\"\nresponse_timeout = \"5s\"",
            "upstream.timeouts.0.prefix",
        ),
    ] {
        let e = err(toml, &[]);
        assert!(e.contains(&format!("`{key}`")), "{toml}: {e}");
    }
}

#[test]
fn admin_token_from_env_checked_and_redacted() {
    let l = load_str("", &[]).unwrap();
    assert!(l.config.admin.token.is_empty());
    assert_eq!(l.config.admin.drain_idle_after.as_secs(), 60);
    let l = load_str(
        "[admin]\ntoken = \"from-the-file\"\ndrain_idle_after = \"5s\"\n",
        &[("BPGATE_ADMIN_TOKEN", "admin-token-from-env-0123456789")],
    )
    .unwrap();
    assert_eq!(
        l.config.admin.token.expose(),
        "admin-token-from-env-0123456789"
    );
    assert_eq!(l.config.admin.drain_idle_after.as_secs(), 5);
    let out = l.config.redacted_toml();
    assert!(!out.contains("admin-token-from-env"), "{out}");
    assert!(out.contains("token = \"<redacted>\""), "{out}");
    let e = err("", &[("BPGATE_ADMIN_TOKEN", "has a space")]);
    assert!(
        e.contains("admin.token") && e.contains("BPGATE_ADMIN_TOKEN"),
        "{e}"
    );
    let e = err("[admin]\ndrain_idle_after = \"0s\"\n", &[]);
    assert!(e.contains("admin.drain_idle_after"), "{e}");
}

#[test]
fn external_auth_is_off_by_default_and_options_is_redacted() {
    let l = load_str("", &[]).unwrap();
    assert!(!l.config.audit.external_auth.enabled());
    assert!(l.derived.external_auth.is_none());
    assert!(l.config.audit.redact_query.iter().any(|q| q == "options"));
}

#[test]
fn external_auth_from_env_hmac_and_redacted_in_config_output() {
    let l = load_str(
        "",
        &[
            (
                "BPGATE_AUDIT_EXTERNAL_AUTH_PUBLIC_KEY",
                "end-user-hmac-secret",
            ),
            ("BPGATE_AUDIT_EXTERNAL_AUTH_ALGORITHMS", "HS256,HS512"),
            ("BPGATE_AUDIT_EXTERNAL_AUTH_ISSUER", "my-site"),
            ("BPGATE_AUDIT_EXTERNAL_AUTH_AUDIENCE", "webchat"),
            ("BPGATE_AUDIT_EXTERNAL_AUTH_USER_CLAIMS", "userId,sub"),
        ],
    )
    .unwrap();
    let ea = &l.config.audit.external_auth;
    assert_eq!(ea.algorithms, ["HS256", "HS512"]);
    assert_eq!(ea.issuer.as_deref(), Some("my-site"));
    assert_eq!(ea.audience.as_deref(), Some("webchat"));
    assert_eq!(ea.user_claims, ["userId", "sub"]);
    assert_eq!(
        l.derived.external_auth,
        Some(ExternalKey::Hmac(b"end-user-hmac-secret".to_vec()))
    );
    let out = l.config.redacted_toml();
    assert!(!out.contains("end-user-hmac-secret"), "{out}");
    assert!(out.contains("[audit.external_auth]"), "{out}");
    assert!(!format!("{:?}", l.derived).contains("end-user-hmac-secret"));
}

#[test]
fn external_auth_public_keys_from_pem_files() {
    let dir = tempfile::tempdir().unwrap();
    let rsa = rcgen::KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256).unwrap();
    let ec = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let rsa_pem = dir.path().join("rsa.pub");
    std::fs::write(&rsa_pem, rsa.public_key_pem()).unwrap();
    let ec_pem = dir.path().join("ec.pub");
    std::fs::write(&ec_pem, ec.public_key_pem()).unwrap();
    // A certificate works too (jsonwebtoken 8.5.1 takes one), its public key is used.
    let cert = rcgen::CertificateParams::new(vec!["issuer.example".into()])
        .unwrap()
        .self_signed(&rsa)
        .unwrap();
    let cert_pem = dir.path().join("cert.pem");
    std::fs::write(&cert_pem, cert.pem()).unwrap();
    let file = |p: &std::path::Path, algs: &str| {
        format!(
            "[audit.external_auth]\npublic_key_file = {:?}\nalgorithms = [{algs}]\n",
            p.display().to_string()
        )
    };
    let l = load_str(&file(&rsa_pem, "\"RS256\", \"PS256\""), &[]).unwrap();
    assert!(matches!(l.derived.external_auth, Some(ExternalKey::Rsa(_))));
    let l = load_str(&file(&cert_pem, "\"RS256\""), &[]).unwrap();
    assert!(matches!(l.derived.external_auth, Some(ExternalKey::Rsa(_))));
    let l = load_str(&file(&ec_pem, "\"ES256\""), &[]).unwrap();
    assert!(matches!(l.derived.external_auth, Some(ExternalKey::Ec(_))));
    // The key inline, as in pro.externalAuth.publicKey.
    let inline = format!(
        "[audit.external_auth]\npublic_key = '''{}'''\nalgorithms = [\"ES256\"]\n",
        ec.public_key_pem()
    );
    assert!(load_str(&inline, &[])
        .unwrap()
        .derived
        .external_auth
        .is_some());
    // A file read as it is: a trailing newline is part of an HMAC secret, as in Botpress.
    let hs = dir.path().join("hs.key");
    std::fs::write(&hs, "s3cret\n").unwrap();
    let l = load_str(&file(&hs, "\"HS256\""), &[]).unwrap();
    assert_eq!(
        l.derived.external_auth,
        Some(ExternalKey::Hmac(b"s3cret\n".to_vec()))
    );

    // Wrong key types, curves and formats are named with their key.
    let e = err(&file(&ec_pem, "\"RS256\""), &[]);
    assert!(
        e.contains("audit.external_auth.public_key_file") && e.contains("not an RSA key"),
        "{e}"
    );
    let e = err(&file(&rsa_pem, "\"ES256\""), &[]);
    assert!(e.contains("not an EC key"), "{e}");
    let e = err(&file(&ec_pem, "\"ES384\""), &[]);
    assert!(e.contains("curve"), "{e}");
    let e = err(&file(&hs, "\"RS256\""), &[]);
    assert!(
        e.contains("audit.external_auth.public_key_file") && e.contains("PUBLIC KEY"),
        "{e}"
    );
    let e = err(&file(&dir.path().join("missing.pub"), "\"RS256\""), &[]);
    assert!(
        e.contains("cannot read") && e.contains("missing.pub"),
        "{e}"
    );
}

#[test]
fn external_auth_bad_settings_are_named() {
    let key = "[audit.external_auth]\npublic_key = \"k\"\n";
    let e = err(&format!("{key}algorithms = [\"HS256\", \"RS256\"]\n"), &[]);
    assert!(
        e.contains("audit.external_auth.algorithms") && e.contains("mixes"),
        "{e}"
    );
    let e = err(&format!("{key}algorithms = [\"hs256\"]\n"), &[]);
    assert!(e.contains("audit.external_auth.algorithms.0"), "{e}");
    let e = err(&format!("{key}algorithms = [\"ES512\"]\n"), &[]);
    assert!(e.contains("ES512"), "{e}");
    let e = err(&format!("{key}algorithms = []\n"), &[]);
    assert!(e.contains("audit.external_auth.algorithms"), "{e}");
    let e = err(&format!("{key}user_claims = []\n"), &[]);
    assert!(e.contains("audit.external_auth.user_claims"), "{e}");
    let e = err(&format!("{key}public_key_file = \"/x\"\n"), &[]);
    assert!(e.contains("both"), "{e}");
    let e = err("[audit.external_auth]\npublic_kye = \"k\"\n", &[]);
    assert!(
        e.contains("did you mean `audit.external_auth.public_key`"),
        "{e}"
    );
    // Settings without a key would silently verify nothing.
    let e = err("", &[("BPGATE_AUDIT_EXTERNAL_AUTH_ISSUER", "my-site")]);
    assert!(
        e.contains("audit.external_auth.public_key")
            && e.contains("BPGATE_AUDIT_EXTERNAL_AUTH_ISSUER"),
        "{e}"
    );
}

#[test]
fn nodes_alone_replace_the_built_in_default_node() {
    let two = "[[upstream.nodes]]\nurl = \"http://10.0.0.5:3000\"\nname = \"node-1\"\n\
               [[upstream.nodes]]\nurl = \"http://10.0.0.6:3000\"\nname = \"node-2\"\n";
    let l = load_str(two, &[]).unwrap();
    let names: Vec<&str> = l.derived.nodes.iter().map(|n| n.name.as_str()).collect();
    assert_eq!(names, ["node-1", "node-2"], "no phantom 127.0.0.1:3000");
    // Neither given: the built-in default node.
    let l = load_str("", &[]).unwrap();
    assert_eq!(l.derived.nodes.len(), 1);
    assert_eq!(l.derived.nodes[0].authority, "127.0.0.1:3000");
}

#[test]
fn a_file_with_urls_and_nodes_is_refused_naming_both() {
    let e = err(
        "[upstream]\nurls = [\"http://10.0.0.4:3000\"]\n[[upstream.nodes]]\nurl = \"http://10.0.0.5:3000\"\n",
        &[],
    );
    assert!(
        e.contains("upstream.urls")
            && e.contains("[[upstream.nodes]]")
            && e.contains("keep one")
            && e.contains("(from file "),
        "{e}"
    );
    // The shipped file with its node example uncommented is refused the same way, not run with
    // a phantom node.
    let shipped =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/config/bpgate.toml"))
            .unwrap();
    let uncommented = shipped
        .replace("# [[upstream.nodes]]", "[[upstream.nodes]]")
        .replace(
            "# url = \"http://10.0.0.5:3000\"",
            "url = \"http://10.0.0.5:3000\"",
        );
    assert_ne!(uncommented, shipped, "the example is in the shipped file");
    let e = err(&uncommented, &[]);
    assert!(e.contains("upstream.urls") && e.contains("keep one"), "{e}");
}

#[test]
fn env_and_flag_upstreams_replace_the_files_whole_node_list() {
    let file = "[[upstream.nodes]]\nurl = \"http://10.0.0.5:3000\"\nname = \"node-1\"\n";
    let l = load_str(
        file,
        &[(
            "BPGATE_UPSTREAMS",
            "http://10.0.0.7:3000,http://10.0.0.8:3000",
        )],
    )
    .unwrap();
    let auth: Vec<&str> = l
        .derived
        .nodes
        .iter()
        .map(|n| n.authority.as_str())
        .collect();
    assert_eq!(auth, ["10.0.0.7:3000", "10.0.0.8:3000"]);
    assert!(
        l.notes
            .iter()
            .any(|n| n.text().contains("env BPGATE_UPSTREAMS")
                && n.text().contains("[[upstream.nodes]]")),
        "{:?}",
        l.notes
    );
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("c.toml");
    std::fs::write(&p, file).unwrap();
    let flags = Overrides {
        values: vec![(
            "upstream.urls".into(),
            toml::Value::Array(vec![toml::Value::String("http://10.0.0.9:3000".into())]),
            "--upstreams".into(),
        )],
    };
    let l = load(&p, &|_| None, &flags).unwrap();
    assert_eq!(l.derived.nodes.len(), 1);
    assert_eq!(l.derived.nodes[0].authority, "10.0.0.9:3000");
}

#[test]
fn the_environment_beats_the_files_mode_and_the_conflict_is_noted() {
    let warned = |l: &Loaded, what: &str| {
        l.notes
            .iter()
            .any(|n| matches!(n, Note::Warn(t) if t.starts_with("mode:") && t.contains(what)))
    };
    let file = "mode = \"development\"\n";
    let l = load_str(file, &[("BP_PRODUCTION", "true")]).unwrap();
    assert_eq!(
        l.config.mode,
        Mode::Production,
        "BP_PRODUCTION beats the file"
    );
    assert!(warned(&l, "BP_PRODUCTION"), "{:?}", l.notes);
    assert_eq!(l.origins.of("mode"), Some("env BP_PRODUCTION=true"));
    let l = load_str(file, &[("BPGATE_MODE", "production")]).unwrap();
    assert_eq!(l.config.mode, Mode::Production);
    assert!(warned(&l, "BPGATE_MODE"), "{:?}", l.notes);
    // bpgate's own variable beats Botpress's switch, loudly.
    let l = load_str(
        "",
        &[("BP_PRODUCTION", "true"), ("BPGATE_MODE", "development")],
    )
    .unwrap();
    assert_eq!(l.config.mode, Mode::Development);
    assert!(warned(&l, "wins over BP_PRODUCTION"), "{:?}", l.notes);
    // BP_PRODUCTION only switches production on.
    let l = load_str("mode = \"production\"\n", &[("BP_PRODUCTION", "false")]);
    assert_eq!(l.unwrap().config.mode, Mode::Production);
    // The shipped file leaves the mode to the environment.
    let shipped =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/config/bpgate.toml"))
            .unwrap();
    let l = load_str(&shipped, &[("BP_PRODUCTION", "true")]).unwrap();
    assert_eq!(l.config.mode, Mode::Production);
    // No conflict, no note.
    let l = load_str(
        "[listen]\nhttps = \"127.0.0.1:8443\"\n",
        &[("BPGATE_LISTEN", "127.0.0.1:8443")],
    );
    assert!(l.unwrap().notes.is_empty());
}

#[test]
fn override_notes_never_show_secrets() {
    let l = load_str(
        "[sticky]\nsecret = \"file-secret-0123456789\"\n",
        &[("BPGATE_STICKY_SECRET", "env-secret-0123456789")],
    )
    .unwrap();
    let all: Vec<&str> = l.notes.iter().map(Note::text).collect();
    assert!(
        all.iter().any(|t| t.contains("sticky.secret"))
            && !all.iter().any(|t| t.contains("secret-0123456789")),
        "{all:?}"
    );
}

#[test]
fn audit_stdout_from_the_environment() {
    let l = load_str("", &[("BPGATE_AUDIT_STDOUT", "true")]).unwrap();
    assert!(l.config.audit.stdout);
    let l = load_str("[audit]\nstdout = true\n", &[("BPGATE_AUDIT_STDOUT", "0")]).unwrap();
    assert!(!l.config.audit.stdout);
    let e = err("", &[("BPGATE_AUDIT_STDOUT", "maybe")]);
    assert!(
        e.contains("audit.stdout") && e.contains("BPGATE_AUDIT_STDOUT"),
        "{e}"
    );
}

#[test]
fn the_file_read_is_reported_with_an_absolute_path() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("c.toml");
    std::fs::write(&p, "").unwrap();
    let l = load(&p, &|_| None, &Overrides::default()).unwrap();
    assert_eq!(l.file, ConfigFile::Read(p.clone()));
    let lines = l.source_lines();
    assert!(lines[0].contains(&p.display().to_string()), "{lines:?}");
    let cwd = std::env::current_dir().unwrap();
    assert!(
        lines[1].contains(&cwd.join(DEV_CERT_PATH).display().to_string())
            && lines[1].contains("development certificate"),
        "{lines:?}"
    );
    assert!(
        lines[2].contains(&cwd.join("logs/audit/audit.jsonl").display().to_string()),
        "{lines:?}"
    );
}
