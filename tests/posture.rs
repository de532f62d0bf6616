//! `bpgate check`, `bpgate diag` and production mode against fixture Botpress installs.
//!
//! The compliant fixture (`tests/fixtures/posture/compliant`) is mutated one item at a time; each
//! mutation asserts the item it breaks. bpgate's TOML, certificates and audit directory are made
//! in a temp dir at test time.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use bpgate::config::Loaded;
use bpgate::posture::{self, item, BotpressFiles, CheckArgs, DiagArgs, Finding, Status};
use serde_json::Value;
use tempfile::TempDir;

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/posture");

/// A PostgreSQL URL nothing answers (port 1 on loopback).
const DEAD_PG: &str = "postgres://botpress:pg-planted-pw@127.0.0.1:1/botpress";

/// Every secret planted in the fixtures and in bpgate's TOML.
const PLANTED: &[&str] = &[
    "pg-planted-pw",
    "redis-planted-pw",
    "LICENSE-PLANTED-1234",
    "token-planted-xyz",
    "langtoken-planted",
    "sticky-planted-secret-0123456789",
    "jwt-planted-secret-0123456789",
];

#[derive(Clone, Copy)]
enum Cert {
    /// Self-signed for bot.example.com, valid a year.
    Good,
    Dev,
    OtherHost,
    ExpiresInDays(i64),
    Missing,
    /// Leaf for bot.example.com issued by a private CA; the file holds leaf then CA.
    PrivateCa,
    /// Same leaf, followed by a certificate that did not issue it.
    BrokenChain,
}

/// (chain PEM, leaf key PEM) for a leaf issued by a fresh private CA, followed by `extra` (the
/// CA itself, or an unrelated certificate).
fn private_ca_chain(broken: bool) -> (String, String) {
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, "Test Private CA");
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let ca = rcgen::CertifiedIssuer::self_signed(ca, ca_key).unwrap();
    let mut leaf = rcgen::CertificateParams::new(vec!["bot.example.com".to_string()]).unwrap();
    leaf.distinguished_name
        .push(rcgen::DnType::CommonName, "bot.example.com");
    let leaf_key = rcgen::KeyPair::generate().unwrap();
    let leaf_cert = leaf.signed_by(&leaf_key, &ca).unwrap();
    let second = if broken {
        bpgate::tls::generate_self_signed(&["unrelated.example.com"], "Unrelated")
            .unwrap()
            .0
    } else {
        ca.pem()
    };
    (
        format!("{}{}", leaf_cert.pem(), second),
        leaf_key.serialize_pem(),
    )
}

/// One test deployment: Botpress's files and bpgate's config, written out on [`Fx::load`].
struct Fx {
    dir: TempDir,
    dotenv: BTreeMap<String, String>,
    config: Value,
    nlu: Option<Value>,
    gate: toml::Table,
    process_env: BTreeMap<String, String>,
    cert: Cert,
}

fn read_dotenv(p: &Path) -> BTreeMap<String, String> {
    posture::dotenv::parse(&std::fs::read_to_string(p).unwrap())
}

fn read_json(p: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

impl Fx {
    fn compliant() -> Fx {
        let base = Path::new(FIXTURES).join("compliant");
        let dir = tempfile::tempdir().unwrap();
        let gate: toml::Table = toml::from_str(&format!(
            r#"
external_url = "https://bot.example.com/botpress"
[upstream]
urls = ["http://127.0.0.1:3001", "http://127.0.0.1:3002"]
[sticky]
secret = "sticky-planted-secret-0123456789"
[audit]
dir = "{}"
jwt_secret = "jwt-planted-secret-0123456789"
jwt_source = "cookie"
[tls]
cert = "{}"
key = "{}"
"#,
            dir.path().join("audit").display(),
            dir.path().join("cert.pem").display(),
            dir.path().join("key.pem").display(),
        ))
        .unwrap();
        let mut fx = Fx {
            dotenv: read_dotenv(&base.join(".env")),
            config: read_json(&base.join("botpress.config.json")),
            nlu: Some(read_json(&base.join("nlu.json"))),
            gate,
            process_env: BTreeMap::new(),
            cert: Cert::Good,
            dir,
        };
        // Nothing listens on port 1: the BPFS database read is refused at once, and no test
        // ever reaches a database it did not start.
        fx.env("DATABASE_URL", Some(DEAD_PG));
        fx
    }

    /// Botpress as installed, bpgate with a single default node and its development certificate.
    fn default_install() -> Fx {
        let base = Path::new(FIXTURES).join("default-install");
        let mut fx = Fx::compliant();
        fx.dotenv = read_dotenv(&base.join(".env"));
        fx.config = read_json(&base.join("botpress.config.json"));
        fx.nlu = None;
        fx.gate.remove("external_url");
        fx.gate.remove("upstream");
        fx.gate.remove("sticky");
        fx.gate.remove("audit");
        fx.gate("audit.dir", fx.p("audit").display().to_string().into());
        fx.cert = Cert::Dev;
        fx
    }

    fn env(&mut self, k: &str, v: Option<&str>) -> &mut Self {
        match v {
            Some(v) => self.dotenv.insert(k.into(), v.into()),
            None => self.dotenv.remove(k),
        };
        self
    }

    /// Sets a bpgate TOML key (`a.b`).
    fn gate(&mut self, path: &str, v: toml::Value) -> &mut Self {
        let mut t = &mut self.gate;
        let segs: Vec<&str> = path.split('.').collect();
        for s in &segs[..segs.len() - 1] {
            t = t
                .entry(s.to_string())
                .or_insert_with(|| toml::Value::Table(Default::default()))
                .as_table_mut()
                .unwrap();
        }
        t.insert(segs[segs.len() - 1].into(), v);
        self
    }

    /// Sets a botpress.config.json key (`a.b`); `None` removes it.
    fn cfg(&mut self, path: &str, v: Option<Value>) -> &mut Self {
        let segs: Vec<&str> = path.split('.').collect();
        let mut cur = &mut self.config;
        for s in &segs[..segs.len() - 1] {
            cur = cur
                .as_object_mut()
                .unwrap()
                .entry(s.to_string())
                .or_insert_with(|| serde_json::json!({}));
        }
        let map = cur.as_object_mut().unwrap();
        match v {
            Some(v) => map.insert(segs[segs.len() - 1].into(), v),
            None => map.remove(segs[segs.len() - 1]),
        };
        self
    }

    fn p(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn write_cert(&self) {
        let (cert, key) = match self.cert {
            Cert::Missing => {
                let _ = std::fs::remove_file(self.p("cert.pem"));
                return;
            }
            Cert::Good => {
                bpgate::tls::generate_self_signed(&["bot.example.com"], "bot.example.com").unwrap()
            }
            Cert::Dev => bpgate::tls::generate_self_signed(
                &["localhost", "127.0.0.1"],
                bpgate::tls::DEV_CERT_CN,
            )
            .unwrap(),
            Cert::OtherHost => {
                bpgate::tls::generate_self_signed(&["other.example.com"], "other.example.com")
                    .unwrap()
            }
            Cert::PrivateCa => private_ca_chain(false),
            Cert::BrokenChain => private_ca_chain(true),
            Cert::ExpiresInDays(d) => {
                let mut params =
                    rcgen::CertificateParams::new(vec!["bot.example.com".to_string()]).unwrap();
                let now = time::OffsetDateTime::now_utc();
                params.not_before = now - time::Duration::days(300);
                params.not_after = now + time::Duration::days(d) + time::Duration::hours(1);
                let key = rcgen::KeyPair::generate().unwrap();
                let cert = params.self_signed(&key).unwrap();
                (cert.pem(), key.serialize_pem())
            }
        };
        std::fs::write(self.p("cert.pem"), cert).unwrap();
        std::fs::write(self.p("key.pem"), key).unwrap();
    }

    fn files(&self) -> BotpressFiles {
        let env_text: String = self
            .dotenv
            .iter()
            .map(|(k, v)| format!("{k}={v}\n"))
            .collect();
        std::fs::write(self.p(".env"), env_text).unwrap();
        std::fs::write(self.p("botpress.config.json"), self.config.to_string()).unwrap();
        if let Some(n) = &self.nlu {
            std::fs::write(self.p("nlu.json"), n.to_string()).unwrap();
        }
        BotpressFiles {
            botpress_env: Some(self.p(".env")),
            botpress_config: Some(self.p("botpress.config.json")),
            nlu_config: self.nlu.as_ref().map(|_| self.p("nlu.json")),
        }
    }

    fn load(&self) -> Loaded {
        self.write_cert();
        std::fs::write(self.p("bpgate.toml"), toml::to_string(&self.gate).unwrap()).unwrap();
        let env = self.process_env.clone();
        bpgate::config::load(
            &self.p("bpgate.toml"),
            &move |k| env.get(k).cloned(),
            &Default::default(),
        )
        .unwrap_or_else(|e| panic!("config: {e}"))
    }

    fn envfn(&self) -> impl Fn(&str) -> Option<String> + '_ {
        move |k: &str| self.process_env.get(k).cloned()
    }

    fn check(&self) -> Vec<Finding> {
        let loaded = self.load();
        let files = self.files();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let inputs = rt
            .block_on(posture::gather(
                &loaded,
                &files,
                &self.envfn(),
                Duration::from_secs(3),
            ))
            .unwrap();
        posture::check(&inputs)
    }

    async fn check_async(&self) -> Vec<Finding> {
        let loaded = self.load();
        let files = self.files();
        let inputs = posture::gather(&loaded, &files, &self.envfn(), Duration::from_secs(3))
            .await
            .unwrap();
        posture::check(&inputs)
    }
}

fn status_of(findings: &[Finding], item: &str) -> Status {
    findings
        .iter()
        .find(|f| f.item == item)
        .unwrap_or_else(|| panic!("no item {item}"))
        .status
}

fn fails(findings: &[Finding]) -> Vec<&'static str> {
    findings
        .iter()
        .filter(|f| f.status == Status::Fail)
        .map(|f| f.item)
        .collect()
}

fn code(c: ExitCode) -> String {
    format!("{c:?}")
}

const ORDER: &[&str] = item::ALL;

#[test]
fn compliant_install_passes_in_checklist_order() {
    let fx = Fx::compliant();
    let f = fx.check();
    let items: Vec<&str> = f.iter().map(|x| x.item).collect();
    assert_eq!(items, ORDER);
    assert!(fails(&f).is_empty(), "{f:#?}");
    // The test certificate is self-signed: a warning, never a failure.
    assert_eq!(status_of(&f, item::HTTPS), Status::Warn);
    // BPFS_STORAGE=database and no database here: said plainly.
    let src = f.iter().find(|x| x.item == item::CONFIG_SOURCE).unwrap();
    assert_eq!(src.status, Status::Warn, "{src:?}");
    assert!(
        src.evidence.contains("could not be read") && src.evidence.contains("NOT necessarily"),
        "{src:?}"
    );
    for x in &f {
        match x.item {
            item::HTTPS | item::CONFIG_SOURCE => {}
            item::ROLES | item::AUTH | item::DIAG_REPORT => assert_eq!(x.status, Status::Manual),
            _ => assert_eq!(x.status, Status::Pass, "{x:?}"),
        }
        if x.status == Status::Pass {
            assert!(x.fix.is_empty(), "{x:?}");
        } else {
            assert!(!x.fix.is_empty(), "{x:?}");
        }
    }
    // BP_CONFIG_PRO_ENABLED in .env overrides pro.enabled=false in the file.
    assert!(f[0].evidence.contains("Pro is on (BP_CONFIG_PRO_ENABLED=true)"), "{:?}", f[0]);
    let loaded = fx.load();
    let args = CheckArgs {
        files: fx.files(),
        format: posture::Format::Json,
        ..Default::default()
    };
    assert_eq!(
        code(posture::run_check(&loaded, &args, &fx.envfn())),
        code(ExitCode::SUCCESS)
    );
}

#[test]
fn default_install_fails_what_it_should() {
    let fx = Fx::default_install();
    let f = fx.check();
    assert_eq!(
        fails(&f),
        vec![
            item::POSTGRES,
            item::PRODUCTION,
            item::EXTERNAL_URL,
            item::HTTPS,
            item::TRUST_PROXY
        ],
        "{f:#?}"
    );
    for w in [
        item::PRO,
        item::BPFS,
        item::JWT_COOKIE,
        item::LANG_SERVER,
        item::FILE_LOGS,
        item::SERVER_CONFIG,
        item::SERVER_DIAG,
        item::AUDIT_IDENTITY,
    ] {
        assert_eq!(status_of(&f, w), Status::Warn, "{w}");
    }
    assert_eq!(status_of(&f, item::STICKY), Status::Pass);
    assert_eq!(status_of(&f, item::BASE_PATH), Status::Pass);
    let lang = f.iter().find(|x| x.item == item::LANG_SERVER).unwrap();
    assert!(lang.evidence.contains("lang-01.botpress.io"));
    let loaded = fx.load();
    let args = CheckArgs {
        files: fx.files(),
        format: posture::Format::Text,
        ..Default::default()
    };
    assert_eq!(
        code(posture::run_check(&loaded, &args, &fx.envfn())),
        code(ExitCode::from(1))
    );
}

type Mutation = (&'static str, fn(&mut Fx), &'static str, Status);

#[test]
fn each_broken_item_is_reported() {
    let cases: &[Mutation] = &[
        (
            "pro off with two nodes",
            |fx| {
                fx.env("BP_CONFIG_PRO_ENABLED", None);
            },
            item::PRO,
            Status::Fail,
        ),
        (
            "pro without key",
            |fx| {
                fx.env("BP_CONFIG_PRO_LICENSEKEY", None);
            },
            item::PRO,
            Status::Fail,
        ),
        (
            "sqlite",
            |fx| {
                fx.env("DATABASE_URL", Some("./data/core.sqlite"));
            },
            item::POSTGRES,
            Status::Fail,
        ),
        (
            "no database url",
            |fx| {
                fx.env("DATABASE_URL", None);
            },
            item::POSTGRES,
            Status::Fail,
        ),
        (
            "postgresql scheme",
            |fx| {
                fx.env("DATABASE_URL", Some("postgresql://u@127.0.0.1:1/d"));
            },
            item::POSTGRES,
            Status::Pass,
        ),
        (
            "disk bpfs",
            |fx| {
                fx.env("BPFS_STORAGE", Some("disk"));
            },
            item::BPFS,
            Status::Fail,
        ),
        (
            "not production",
            |fx| {
                fx.env("BP_PRODUCTION", Some("no"))
                    .env("CLUSTER_ENABLED", None);
            },
            item::PRODUCTION,
            Status::Fail,
        ),
        (
            "production via yn y",
            |fx| {
                fx.env("BP_PRODUCTION", Some("y"))
                    .env("CLUSTER_ENABLED", None);
            },
            item::PRODUCTION,
            Status::Pass,
        ),
        (
            "http external url",
            |fx| {
                fx.env("EXTERNAL_URL", Some("http://bot.example.com/botpress"));
            },
            item::EXTERNAL_URL,
            Status::Fail,
        ),
        (
            "external url mismatch",
            |fx| {
                fx.env("EXTERNAL_URL", Some("https://other.example.com/botpress"));
            },
            item::EXTERNAL_URL,
            Status::Fail,
        ),
        (
            "external url from config",
            |fx| {
                fx.env("EXTERNAL_URL", None).cfg(
                    "httpServer.externalUrl",
                    Some("https://bot.example.com/botpress/".into()),
                );
            },
            item::EXTERNAL_URL,
            Status::Pass,
        ),
        (
            "no external url",
            |fx| {
                fx.env("EXTERNAL_URL", None);
            },
            item::EXTERNAL_URL,
            Status::Fail,
        ),
        (
            "no redis",
            |fx| {
                fx.env("REDIS_URL", None);
            },
            item::REDIS,
            Status::Fail,
        ),
        (
            "cluster off",
            |fx| {
                fx.env("CLUSTER_ENABLED", Some("false"));
            },
            item::REDIS,
            Status::Fail,
        ),
        (
            "no cors anywhere",
            |fx| {
                fx.gate("cors.enabled", false.into())
                    .cfg("httpServer.cors.origin", None);
            },
            item::CORS,
            Status::Fail,
        ),
        (
            "botpress cors * with credentials",
            |fx| {
                fx.gate("cors.enabled", false.into())
                    .cfg("httpServer.cors.origin", Some("*".into()));
            },
            item::CORS,
            Status::Fail,
        ),
        (
            "cors by botpress only",
            |fx| {
                fx.gate("cors.enabled", false.into());
            },
            item::CORS,
            Status::Pass,
        ),
        (
            // HTTP CORS off in Botpress, but socket.io ignores `enabled`: any origin there.
            "cors disabled in botpress",
            |fx| {
                fx.gate("cors.enabled", false.into())
                    .cfg("httpServer.cors.origin", None)
                    .cfg("httpServer.cors.enabled", Some(false.into()));
            },
            item::CORS,
            Status::Warn,
        ),
        (
            "no cookie storage",
            |fx| {
                fx.cfg("jwtToken.useCookieStorage", Some(false.into()));
            },
            item::JWT_COOKIE,
            Status::Warn,
        ),
        (
            "cookie storage via BP_CONFIG string",
            |fx| {
                fx.cfg("jwtToken.useCookieStorage", None)
                    .env("BP_CONFIG_JWTTOKEN_USECOOKIESTORAGE", Some("true"));
            },
            item::JWT_COOKIE,
            Status::Pass,
        ),
        (
            "default language server",
            |fx| {
                fx.nlu = None;
            },
            item::LANG_SERVER,
            Status::Warn,
        ),
        (
            "public language server",
            |fx| {
                fx.nlu = Some(
                    serde_json::json!({"languageSources": [{"endpoint": "https://lang-01.botpress.io"}]}),
                );
            },
            item::LANG_SERVER,
            Status::Warn,
        ),
        (
            "language server by env",
            |fx| {
                fx.nlu = None;
                fx.env(
                    "BP_MODULE_NLU_LANGUAGESOURCES",
                    Some(r#"[{"endpoint":"http://lang:3100"}]"#),
                );
            },
            item::LANG_SERVER,
            Status::Pass,
        ),
        (
            "dev cert",
            |fx| {
                fx.cert = Cert::Dev;
            },
            item::HTTPS,
            Status::Fail,
        ),
        (
            "wrong host cert",
            |fx| {
                fx.cert = Cert::OtherHost;
            },
            item::HTTPS,
            Status::Fail,
        ),
        (
            "cert expires in 5 days",
            |fx| {
                fx.cert = Cert::ExpiresInDays(5);
            },
            item::HTTPS,
            Status::Fail,
        ),
        (
            "cert expires in 20 days",
            |fx| {
                fx.cert = Cert::ExpiresInDays(20);
            },
            item::HTTPS,
            Status::Warn,
        ),
        (
            "cert expired",
            |fx| {
                fx.cert = Cert::ExpiresInDays(-3);
            },
            item::HTTPS,
            Status::Fail,
        ),
        (
            "no cert",
            |fx| {
                fx.cert = Cert::Missing;
            },
            item::HTTPS,
            Status::Fail,
        ),
        (
            "audit off",
            |fx| {
                fx.gate("audit.enabled", false.into());
            },
            item::AUDIT,
            Status::Fail,
        ),
        (
            "audit dir not writable",
            |fx| {
                let blocker = fx.p("a-file");
                std::fs::write(&blocker, "x").unwrap();
                fx.gate(
                    "audit.dir",
                    blocker.join("audit").display().to_string().into(),
                );
            },
            item::AUDIT,
            Status::Fail,
        ),
        (
            "no sticky secret",
            |fx| {
                fx.gate("sticky.secret", "".into());
            },
            item::STICKY,
            Status::Fail,
        ),
        (
            "sticky off",
            |fx| {
                fx.gate("sticky.enabled", false.into());
            },
            item::STICKY,
            Status::Fail,
        ),
        (
            "sticky off, websocket only",
            |fx| {
                fx.gate("sticky.enabled", false.into()).cfg(
                    "httpServer.socketTransports",
                    Some(serde_json::json!(["websocket"])),
                );
            },
            item::STICKY,
            Status::Pass,
        ),
        (
            "sticky off, default transports",
            |fx| {
                fx.gate("sticky.enabled", false.into())
                    .cfg("httpServer.socketTransports", None);
            },
            item::STICKY,
            Status::Fail,
        ),
        (
            "no file logs",
            |fx| {
                fx.cfg("logs.fileOutput.enabled", Some(false.into()));
            },
            item::FILE_LOGS,
            Status::Warn,
        ),
        (
            "base path mismatch",
            |fx| {
                fx.env("EXTERNAL_URL", Some("https://bot.example.com"));
            },
            item::BASE_PATH,
            Status::Fail,
        ),
        (
            "server config page",
            |fx| {
                fx.env("BP_DISABLE_SERVER_CONFIG", None);
            },
            item::SERVER_CONFIG,
            Status::Warn,
        ),
        (
            "no REVERSE_PROXY",
            |fx| {
                fx.env("REVERSE_PROXY", None);
            },
            item::TRUST_PROXY,
            Status::Fail,
        ),
        (
            "REVERSE_PROXY=false",
            |fx| {
                fx.env("REVERSE_PROXY", Some("false"));
            },
            item::TRUST_PROXY,
            Status::Fail,
        ),
        (
            "REVERSE_PROXY=true",
            |fx| {
                fx.env("REVERSE_PROXY", Some("true"));
            },
            item::TRUST_PROXY,
            Status::Warn,
        ),
        (
            "open botpress cors on remote nodes",
            |fx| {
                fx.cfg("httpServer.cors.origin", None).gate(
                    "upstream.urls",
                    toml::Value::Array(vec![
                        "http://10.0.0.5:3000".into(),
                        "http://10.0.0.6:3000".into(),
                    ]),
                );
            },
            item::DIRECT_CORS,
            Status::Warn,
        ),
        (
            "open botpress cors on loopback nodes",
            |fx| {
                fx.cfg("httpServer.cors.origin", None);
            },
            item::DIRECT_CORS,
            Status::Pass,
        ),
        (
            "server diag page",
            |fx| {
                fx.env("BP_DISABLE_SERVER_DIAG", Some("false"));
            },
            item::SERVER_DIAG,
            Status::Warn,
        ),
        (
            // bpgate's own process environment is not Botpress's: .env decides.
            "bpgate's process env never overrides Botpress's .env",
            |fx| {
                fx.process_env
                    .insert("BP_PRODUCTION".into(), "false".into());
                fx.env("CLUSTER_ENABLED", None);
            },
            item::PRODUCTION,
            Status::Pass,
        ),
    ];
    for (name, mutate, it, want) in cases {
        let mut fx = Fx::compliant();
        mutate(&mut fx);
        let f = fx.check();
        assert_eq!(status_of(&f, it), *want, "case `{name}`: {f:#?}");
        let code = posture::exit_code(&f);
        let any_fail = f.iter().any(|x| x.status == Status::Fail);
        assert_eq!(
            format!("{code:?}"),
            format!("{:?}", ExitCode::from(u8::from(any_fail))),
            "case `{name}`"
        );
        if *want == Status::Fail {
            assert!(any_fail, "case `{name}`");
        }
    }
}

#[test]
fn https_evidence_names_the_problem() {
    let evidence = |cert: Cert| {
        let mut fx = Fx::compliant();
        fx.cert = cert;
        let f = fx.check();
        f.iter()
            .find(|x| x.item == item::HTTPS)
            .unwrap()
            .evidence
            .clone()
    };
    let e = evidence(Cert::PrivateCa);
    assert!(e.contains("does not chain to a system-trusted CA"), "{e}");
    assert!(e.contains("(2 in chain)"), "{e}");
    let e = evidence(Cert::BrokenChain);
    assert!(e.contains("chain not well-formed"), "{e}");
    let e = evidence(Cert::ExpiresInDays(20));
    assert!(e.contains("expires in 20 days"), "{e}");
    let e = evidence(Cert::OtherHost);
    assert!(e.contains("does not name bot.example.com"), "{e}");
}

#[test]
fn usage_errors_exit_2() {
    let fx = Fx::compliant();
    let loaded = fx.load();
    let mut files = fx.files();
    files.botpress_config = Some(fx.p("does-not-exist.json"));
    let args = CheckArgs {
        files,
        ..Default::default()
    };
    assert_eq!(
        code(posture::run_check(&loaded, &args, &fx.envfn())),
        code(ExitCode::from(2))
    );
    std::fs::write(fx.p("bad.json"), "{ not json").unwrap();
    let mut files = fx.files();
    files.nlu_config = Some(fx.p("bad.json"));
    let args = CheckArgs {
        files,
        ..Default::default()
    };
    assert_eq!(
        code(posture::run_check(&loaded, &args, &fx.envfn())),
        code(ExitCode::from(2))
    );
}

#[test]
fn json_output_has_items_and_summary_and_no_secrets() {
    let fx = Fx::compliant();
    let f = fx.check();
    let v: Value = serde_json::from_str(&posture::render_json(&f)).unwrap();
    let items = v["items"].as_array().unwrap();
    assert_eq!(items.len(), ORDER.len());
    for (x, name) in items.iter().zip(ORDER) {
        assert_eq!(x["item"], *name);
        for k in ["status", "evidence", "fix"] {
            assert!(x[k].is_string(), "{x}");
        }
    }
    assert_eq!(items[9]["status"], "warn");
    let s = &v["summary"];
    assert_eq!(s["fail"], 0);
    assert_eq!(s["warn"], 2);
    assert_eq!(s["manual"], 3);
    assert_eq!(s["pass"], ORDER.len() as u64 - 5);
    let text = posture::render_text(&f, false);
    for out in [v.to_string(), text] {
        for secret in PLANTED {
            assert!(!out.contains(secret), "{secret} leaked into check output");
        }
    }
    let colored = posture::render_text(&f, true);
    assert!(colored.contains("\x1b[33mWARN"));
}

fn cert_info(fx: &Fx) -> bpgate::tls::CertInfo {
    fx.write_cert();
    bpgate::tls::load_pair(&fx.p("cert.pem"), &fx.p("key.pem"))
        .unwrap()
        .info
}

#[test]
fn production_failures_cover_what_bpgate_owns() {
    let fx = Fx::compliant();
    let loaded = fx.load();
    let good = cert_info(&fx);
    assert!(posture::production_failures(&loaded, &good).is_empty());

    let items = |fx: &Fx, cert: &bpgate::tls::CertInfo| -> Vec<&'static str> {
        posture::production_failures(&fx.load(), cert)
            .iter()
            .map(|f| {
                assert_eq!(f.status, Status::Fail);
                assert!(!f.fix.is_empty());
                f.item
            })
            .collect()
    };
    let mut dev = Fx::compliant();
    dev.cert = Cert::Dev;
    let dev_info = cert_info(&dev);
    assert_eq!(items(&fx, &dev_info), vec![item::HTTPS]);

    let mut expired = good.clone();
    expired.not_after = posture::now_secs() - 10;
    assert_eq!(items(&fx, &expired), vec![item::HTTPS]);

    let mut f = Fx::compliant();
    f.gate("audit.enabled", false.into());
    assert_eq!(items(&f, &good), vec![item::AUDIT]);

    let mut f = Fx::compliant();
    f.gate("cors.enabled", false.into());
    assert_eq!(items(&f, &good), vec![item::CORS]);

    // `*` never gets this far: bpgate's config refuses it (see config_refuses_wildcard_origin).

    let mut f = Fx::compliant();
    f.gate("sticky.secret", "".into());
    assert_eq!(items(&f, &good), vec![item::STICKY]);

    // One node needs no sticky secret.
    f.gate(
        "upstream.urls",
        toml::Value::Array(vec!["http://127.0.0.1:3001".into()]),
    );
    assert!(items(&f, &good).is_empty());
}

// === diag ===

fn diag_args(fx: &Fx, timeout: Duration) -> DiagArgs {
    DiagArgs {
        out: fx.p("diagnostic.txt"),
        files: fx.files(),
        timeout,
    }
}

async fn run_diag(fx: &Fx, timeout: Duration) -> (String, Duration) {
    let loaded = fx.load();
    let args = diag_args(fx, timeout);
    let start = Instant::now();
    let c = posture::run_diag(&loaded, &args, &fx.envfn()).await;
    let took = start.elapsed();
    assert_eq!(code(c), code(ExitCode::SUCCESS));
    (std::fs::read_to_string(&args.out).unwrap(), took)
}

/// A listener that accepts connections (the kernel does) but never answers.
fn black_hole() -> (std::net::TcpListener, String) {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let a = l.local_addr().unwrap().to_string();
    (l, a)
}

#[tokio::test]
async fn diag_against_dead_and_silent_addresses_respects_timeout() {
    let (_hole, hole) = black_hole();
    let mut fx = Fx::compliant();
    fx.gate(
        "upstream.urls",
        toml::Value::Array(vec![
            "http://127.0.0.1:1".into(),
            format!("http://{hole}").into(),
        ]),
    );
    fx.env(
        "REDIS_URL",
        Some(&format!("redis://{hole}?password=redis-planted-pw")),
    )
    .env(
        "DATABASE_URL",
        Some("postgres://botpress:pg-planted-pw@127.0.0.1:1/botpress"),
    );
    fx.nlu = Some(serde_json::json!({"languageSources": [
        {"endpoint": "http://127.0.0.1:1", "authToken": "langtoken-planted"},
        {"endpoint": "https://lang-01.botpress.io"}]}));
    let timeout = Duration::from_millis(300);
    let (report, took) = run_diag(&fx, timeout).await;
    // Silent node: /version, /status, env.js; Redis: one timeout each.
    assert!(took < Duration::from_secs(5), "took {took:?}");
    assert!(
        report.contains("node 127.0.0.1:1 (127.0.0.1:1)"),
        "{report}"
    );
    assert!(report.contains("tcp connect: FAILED"), "{report}");
    assert!(report.contains("timed out after 300ms"), "{report}");
    assert!(report.contains("AUTH + PING: FAILED"), "{report}");
    assert!(report.contains("\nDatabase\n"), "{report}");
    assert!(report.contains("not probed: https"), "{report}");
    assert!(report.contains("GET /languages: FAILED"), "{report}");
    for section in [
        "General",
        "Posture (bpgate check)",
        "Upstream nodes",
        "Redis",
        "Language server",
        "Write and read tests",
        "Certificate",
        "bpgate configuration",
        "Botpress environment",
        "Botpress botpress.config.json",
        "NLU module config",
    ] {
        assert!(
            report.contains(&format!("\n{section}")),
            "no section {section}"
        );
    }
    assert!(report.contains("audit.dir"));
    assert!(report.contains("cpus: "));
    assert!(report.contains("open files limit: "));
}

#[tokio::test]
async fn diag_obfuscates_every_planted_secret() {
    let mut fx = Fx::compliant();
    fx.gate(
        "upstream.urls",
        toml::Value::Array(vec!["http://127.0.0.1:1".into()]),
    );
    fx.env(
        "REDIS_URL",
        Some("redis://127.0.0.1:1?password=redis-planted-pw"),
    )
    .env("REDIS_OPTIONS", Some(r#"{"password":"redis-planted-pw"}"#))
    .env(
        "BP_CONFIG_HTTPSERVER_PROXY",
        Some("http://proxyuser:pg-planted-pw@10.9.9.9:8080"),
    );
    let (report, _) = run_diag(&fx, Duration::from_millis(300)).await;
    for secret in PLANTED {
        assert!(!report.contains(secret), "{secret} leaked:\n{report}");
    }
    assert!(report.contains("***obfuscated***"));
    assert!(report.contains("postgres://botpress:***obfuscated***@127.0.0.1:1/botpress"));
    assert!(report.contains("redis://127.0.0.1:1?password=***obfuscated***"));
    // Non-secret values are still there to be useful.
    assert!(report.contains("BPFS_STORAGE: database"));
    assert!(report.contains("\"socketTransports\""));
}

/// A minimal Botpress stand-in: answers /botpress/version, /status and /admin/env.js.
async fn fake_botpress() -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let n = s.read(&mut buf).await.unwrap_or(0);
                let req = String::from_utf8_lossy(&buf[..n]).to_string();
                let path = req.split_whitespace().nth(1).unwrap_or("").to_string();
                let (status, body) = match path.as_str() {
                    "/botpress/version" => ("200 OK", "12.31.10".to_string()),
                    "/botpress/status" => {
                        ("200 OK", r#"{"botpress":"up","database":"up"}"#.to_string())
                    }
                    "/botpress/admin/env.js" => (
                        "200 OK",
                        "window.BP_BASE_PATH=\"/botpress\";\nwindow.SERVER_ID=\"node-a-42\";"
                            .to_string(),
                    ),
                    _ => ("404 Not Found", "nope".to_string()),
                };
                let resp = format!(
                    "HTTP/1.1 {status}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = s.write_all(resp.as_bytes()).await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn diag_reports_node_version_status_and_server_id() {
    let node = fake_botpress().await;
    let mut fx = Fx::compliant();
    fx.gate(
        "upstream.urls",
        toml::Value::Array(vec![format!("http://{node}").into()]),
    );
    fx.env("REDIS_URL", None).env("DATABASE_URL", None);
    let (report, _) = run_diag(&fx, Duration::from_secs(3)).await;
    assert!(report.contains("tcp connect: ok"), "{report}");
    assert!(report.contains("GET /botpress/version: 200"), "{report}");
    assert!(report.contains("12.31.10"), "{report}");
    assert!(report.contains("GET /botpress/status: 200"), "{report}");
    assert!(report.contains("SERVER_ID: node-a-42"), "{report}");
}

#[tokio::test]
async fn diag_pings_real_redis() {
    let Ok(url) = std::env::var("BPGATE_TEST_REDIS_URL") else {
        eprintln!("skipped: BPGATE_TEST_REDIS_URL is unset (start redis-server on loopback and export it)");
        return;
    };
    let mut fx = Fx::compliant();
    fx.gate(
        "upstream.urls",
        toml::Value::Array(vec!["http://127.0.0.1:1".into()]),
    );
    fx.env("REDIS_URL", Some(&url)).env("DATABASE_URL", None);
    let (report, _) = run_diag(&fx, Duration::from_secs(3)).await;
    assert!(report.contains(": +PONG in "), "{report}");
    let target = posture::diag::parse_redis_url(&url).unwrap();
    if let Some(pw) = &target.password {
        assert!(!report.contains(pw.as_str()), "redis password leaked");
        // A wrong password is reported as refused, not as a pong.
        let bad = url.replace(pw.as_str(), "wrong-password");
        fx.env("REDIS_URL", Some(&bad));
        let (report, _) = run_diag(&fx, Duration::from_secs(3)).await;
        assert!(report.contains("AUTH refused"), "{report}");
        assert!(!report.contains("+PONG"), "{report}");
    }
}

#[tokio::test]
async fn diag_connects_to_real_postgres() {
    let Ok(url) = std::env::var("BPGATE_TEST_DATABASE_URL") else {
        eprintln!("skipped: BPGATE_TEST_DATABASE_URL is unset (start PostgreSQL on loopback and export it)");
        return;
    };
    let mut fx = Fx::compliant();
    fx.gate(
        "upstream.urls",
        toml::Value::Array(vec!["http://127.0.0.1:1".into()]),
    );
    fx.env("DATABASE_URL", Some(&url)).env("REDIS_URL", None);
    let (report, _) = run_diag(&fx, Duration::from_secs(3)).await;
    assert!(
        report.contains("select 1+1 = 2, server_version"),
        "{report}"
    );
    if let Some(pw) = url
        .split("://")
        .nth(1)
        .and_then(|r| r.split_once('@'))
        .and_then(|(ui, _)| ui.split_once(':'))
        .map(|(_, p)| p)
    {
        assert!(
            !report.contains(&format!(":{pw}@")),
            "postgres password leaked"
        );
    }
}

#[test]
fn config_refuses_wildcard_origin() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("c.toml");
    std::fs::write(&p, "[cors]\norigins = [\"*\"]\n").unwrap();
    let e = bpgate::config::load(&p, &|_| None, &Default::default())
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("cors.origins.0"), "{e}");
}
