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
    /// Written verbatim instead of `dotenv` / `config` (Botpress's real file text).
    raw_env: Option<String>,
    raw_config: Option<String>,
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
            raw_env: None,
            raw_config: None,
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

    /// The compliant deployment with Botpress's `.env` and `botpress.config.json` taken verbatim
    /// from `tests/fixtures/posture/<name>`.
    fn raw_fixture(name: &str) -> Fx {
        let base = Path::new(FIXTURES).join(name);
        let mut fx = Fx::compliant();
        fx.raw_env = Some(std::fs::read_to_string(base.join(".env")).unwrap());
        fx.raw_config = Some(std::fs::read_to_string(base.join("botpress.config.json")).unwrap());
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
        std::fs::write(self.p(".env"), self.raw_env.clone().unwrap_or(env_text)).unwrap();
        std::fs::write(
            self.p("botpress.config.json"),
            self.raw_config
                .clone()
                .unwrap_or_else(|| self.config.to_string()),
        )
        .unwrap();
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
    finding(findings, item).status
}

fn finding<'a>(findings: &'a [Finding], item: &str) -> &'a Finding {
    findings
        .iter()
        .find(|f| f.item == item)
        .unwrap_or_else(|| panic!("no item {item}"))
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
    assert!(
        f[0].evidence
            .contains("Pro is on (BP_CONFIG_PRO_ENABLED=true)"),
        "{:?}",
        f[0]
    );
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
            "cookieless polling clients unrouted",
            |fx| {
                fx.gate("sticky.sid_map_max_entries", 0.into());
            },
            item::STICKY,
            Status::Warn,
        ),
        (
            "sid map off, client-ip fallback",
            |fx| {
                fx.gate("sticky.sid_map_max_entries", 0.into())
                    .gate("sticky.fallback", "client-ip".into());
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
        (
            "PRO_ENABLED=false beats pro.enabled=true in the file",
            |fx| {
                fx.env("BP_CONFIG_PRO_ENABLED", None)
                    .env("PRO_ENABLED", Some("false"))
                    .cfg("pro.enabled", Some(true.into()));
            },
            item::PRO,
            Status::Fail,
        ),
        (
            "pro.enabled=true in the file when neither env var is defined",
            |fx| {
                fx.env("BP_CONFIG_PRO_ENABLED", None)
                    .cfg("pro.enabled", Some(true.into()));
            },
            item::PRO,
            Status::Pass,
        ),
        (
            "BP_LICENSE_KEY wins over the placeholder",
            |fx| {
                fx.env("BP_CONFIG_PRO_LICENSEKEY", None)
                    .env("BP_LICENSE_KEY", Some("LICENSE-PLANTED-1234"));
            },
            item::PRO,
            Status::Pass,
        ),
        (
            "BPFS_STORAGE=Database is disk to Botpress",
            |fx| {
                fx.env("BPFS_STORAGE", Some("Database"));
            },
            item::BPFS,
            Status::Fail,
        ),
        (
            "BP_ADMIN_PASSWORD still set in production",
            |fx| {
                fx.env("BP_ADMIN_PASSWORD", Some("first-admin-pw"));
            },
            item::PRODUCTION,
            Status::Warn,
        ),
        (
            "REVERSE_PROXY=2 is not a hop count",
            |fx| {
                fx.env("REVERSE_PROXY", Some("2"));
            },
            item::TRUST_PROXY,
            Status::Fail,
        ),
        (
            "REVERSE_PROXY=1 trusts every hop",
            |fx| {
                fx.env("REVERSE_PROXY", Some("1"));
            },
            item::TRUST_PROXY,
            Status::Warn,
        ),
        (
            "REVERSE_PROXY that Express refuses",
            |fx| {
                fx.env("REVERSE_PROXY", Some("loopback, bpgate-host"));
            },
            item::TRUST_PROXY,
            Status::Fail,
        ),
        (
            "REVERSE_PROXY without loopback while bpgate is on loopback",
            |fx| {
                fx.env("REVERSE_PROXY", Some("10.0.0.0/8"));
            },
            item::TRUST_PROXY,
            Status::Fail,
        ),
        (
            "REVERSE_PROXY without loopback for remote nodes (Studio)",
            |fx| {
                fx.env("REVERSE_PROXY", Some("10.0.0.2")).gate(
                    "upstream.urls",
                    toml::Value::Array(vec![
                        "http://10.0.0.5:3000".into(),
                        "http://10.0.0.6:3000".into(),
                    ]),
                );
            },
            item::TRUST_PROXY,
            Status::Warn,
        ),
        (
            "REVERSE_PROXY=loopback,<bpgate address> for remote nodes",
            |fx| {
                fx.env("REVERSE_PROXY", Some("loopback, 10.0.0.2/255.255.255.255"))
                    .gate(
                        "upstream.urls",
                        toml::Value::Array(vec![
                            "http://10.0.0.5:3000".into(),
                            "http://10.0.0.6:3000".into(),
                        ]),
                    );
            },
            item::TRUST_PROXY,
            Status::Pass,
        ),
        (
            "missing httpServer.cors.enabled in a given file is HTTP CORS off",
            |fx| {
                fx.gate("cors.enabled", false.into())
                    .cfg("httpServer.cors", Some(serde_json::json!({})));
            },
            item::CORS,
            Status::Warn,
        ),
        (
            "socketTransports override merges by index: polling stays",
            |fx| {
                fx.gate("sticky.enabled", false.into()).env(
                    "BP_CONFIG_HTTPSERVER_SOCKETTRANSPORTS",
                    Some(r#"["websocket"]"#),
                );
            },
            item::STICKY,
            Status::Fail,
        ),
        (
            "socketTransports [\"ws\"] falls back to both",
            |fx| {
                fx.gate("sticky.enabled", false.into()).cfg(
                    "httpServer.socketTransports",
                    Some(serde_json::json!(["ws"])),
                );
            },
            item::STICKY,
            Status::Fail,
        ),
        (
            "non-leaf BP_CONFIG_HTTPSERVER_CORS is ignored",
            |fx| {
                fx.gate("cors.enabled", false.into())
                    .cfg("httpServer.cors.origin", None)
                    .env(
                        "BP_CONFIG_HTTPSERVER_CORS",
                        Some(r#"{"origin":"https://bot.example.com"}"#),
                    );
            },
            item::CORS,
            Status::Fail,
        ),
        (
            "external NLU server",
            |fx| {
                fx.nlu = Some(
                    serde_json::json!({"nluServer": {"autoStart": false, "endpoint": "http://nlu.internal:3200"}}),
                );
            },
            item::LANG_SERVER,
            Status::Manual,
        ),
        (
            "external NLU server without endpoint",
            |fx| {
                fx.env("BP_MODULE_NLU_NLUSERVER_AUTOSTART", Some("false"));
            },
            item::LANG_SERVER,
            Status::Warn,
        ),
        (
            "audit.jwt_secret differs from appSecret",
            |fx| {
                fx.cfg("appSecret", Some("another-secret-0123456789".into()));
            },
            item::AUDIT_IDENTITY,
            Status::Fail,
        ),
        (
            "deprecated jwtSecret is Botpress's secret when appSecret is unset",
            |fx| {
                fx.cfg("appSecret", None)
                    .cfg("jwtSecret", Some("jwt-planted-secret-0123456789".into()));
            },
            item::AUDIT_IDENTITY,
            Status::Pass,
        ),
        (
            "BP_CONFIG_APPSECRET is Botpress's secret",
            |fx| {
                fx.env("BP_CONFIG_APPSECRET", Some("another-secret-0123456789"));
            },
            item::AUDIT_IDENTITY,
            Status::Fail,
        ),
        (
            "audit.jwt_source=header while Botpress uses the cookie",
            |fx| {
                fx.gate("audit.jwt_source", "header".into());
            },
            item::AUDIT_IDENTITY,
            Status::Fail,
        ),
        (
            "audit.jwt_source=cookie while Botpress uses the header",
            |fx| {
                fx.cfg("jwtToken.useCookieStorage", Some(false.into()));
            },
            item::AUDIT_IDENTITY,
            Status::Fail,
        ),
        (
            "no audit.jwt_secret",
            |fx| {
                fx.gate("audit.jwt_secret", "".into());
            },
            item::AUDIT_IDENTITY,
            Status::Warn,
        ),
        (
            "strip cannot serve Botpress",
            |fx| {
                fx.gate("base_path.mode", "strip".into())
                    .env("EXTERNAL_URL", Some("https://bot.example.com"));
            },
            item::BASE_PATH,
            Status::Fail,
        ),
        (
            "bpgate's EXTERNAL_URL never overrides Botpress's .env",
            |fx| {
                fx.process_env.insert(
                    "EXTERNAL_URL".into(),
                    "https://bot.example.com/botpress".into(),
                );
                fx.env("EXTERNAL_URL", Some("http://localhost:3000"));
            },
            item::EXTERNAL_URL,
            Status::Fail,
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

    // An admin listener off loopback needs a token.
    let mut f = Fx::compliant();
    f.gate("listen.admin", "0.0.0.0:9901".into());
    assert_eq!(items(&f, &good), vec![item::ADMIN_API]);
    f.gate("admin.token", "0123456789abcdef0123456789abcdef".into());
    assert!(items(&f, &good).is_empty());
    let mut f = Fx::compliant();
    f.gate("listen.admin", "[::1]:9901".into());
    assert!(items(&f, &good).is_empty(), "::1 is loopback");
}

#[test]
fn admin_api_item_loopback_token_and_short_token() {
    let find = |fx: &Fx| {
        fx.check()
            .into_iter()
            .find(|f| f.item == item::ADMIN_API)
            .unwrap()
    };
    let fx = Fx::compliant();
    let f = find(&fx);
    assert_eq!(f.status, Status::Pass, "{f:?}");
    assert!(f.evidence.contains("loopback"), "{f:?}");

    let mut fx = Fx::compliant();
    fx.gate("listen.admin", "0.0.0.0:9901".into());
    let f = find(&fx);
    assert_eq!(f.status, Status::Fail, "{f:?}");
    assert!(f.fix.contains("BPGATE_ADMIN_TOKEN"), "{f:?}");

    fx.gate("admin.token", "short".into());
    let f = find(&fx);
    assert_eq!(f.status, Status::Warn, "{f:?}");
    assert!(f.evidence.contains("5 characters"), "{f:?}");

    fx.gate("admin.token", "0123456789abcdef0123456789abcdef".into());
    let f = find(&fx);
    assert_eq!(f.status, Status::Pass, "{f:?}");
    assert!(f.evidence.contains("not loopback"), "{f:?}");
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
    let Some(url) = service_url("BPGATE_TEST_REDIS_URL", "redis-server") else {
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
    let Some(url) = service_url("BPGATE_TEST_DATABASE_URL", "PostgreSQL") else {
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

// === Botpress's inputs, as Botpress reads them ===

#[test]
fn env_file_is_read_as_dotenv_7_and_overrides_as_botpress_merges_them() {
    let mut fx = Fx::raw_fixture("env-traps");
    fx.gate("sticky.enabled", false.into())
        .gate("cors.enabled", false.into());
    let f = fx.check();
    // `export BP_PRODUCTION=true` is not read by dotenv 7.
    let p = finding(&f, item::PRODUCTION);
    assert_eq!(p.status, Status::Fail, "{p:?}");
    assert!(p.evidence.contains("BP_PRODUCTION=unset"), "{p:?}");
    assert!(p.evidence.contains("./bp -p"), "{p:?}");
    // The inline comment is part of the URL Botpress gets.
    let e = finding(&f, item::EXTERNAL_URL);
    assert_eq!(e.status, Status::Fail, "{e:?}");
    assert!(e.evidence.contains("# public URL"), "{e:?}");
    let t = finding(&f, item::TRUST_PROXY);
    assert_eq!(t.status, Status::Fail, "{t:?}");
    assert!(t.evidence.contains("not a hop count"), "{t:?}");
    assert!(finding(&f, item::BPFS).evidence.contains("exactly"));
    // PRO_ENABLED is defined: the file's pro.enabled=true is not read; the quoted key counts.
    let pro = finding(&f, item::PRO);
    assert!(
        pro.evidence.contains("Pro is off (PRO_ENABLED=false)"),
        "{pro:?}"
    );
    assert!(
        pro.evidence
            .contains("a license key is set (BP_LICENSE_KEY)"),
        "{pro:?}"
    );
    // ["websocket"] merged by index into ["websocket","polling"]: polling stays, sticky needed.
    let st = finding(&f, item::STICKY);
    assert_eq!(st.status, Status::Fail, "{st:?}");
    assert!(st.evidence.contains("websocket,polling"), "{st:?}");
    // The non-leaf BP_CONFIG_HTTPSERVER_CORS restricts nothing.
    assert_eq!(status_of(&f, item::CORS), Status::Fail);
    let src = finding(&f, item::CONFIG_SOURCE);
    assert!(
        src.evidence
            .contains("BP_CONFIG_HTTPSERVER_CORS is ignored by Botpress"),
        "{src:?}"
    );
    assert!(
        !src.evidence.contains("SOCKETTRANSPORTS is ignored"),
        "{src:?}"
    );
    let text = posture::render_text(&f, false);
    for secret in PLANTED {
        assert!(!text.contains(secret), "{secret} leaked");
    }
}

#[test]
fn config_substitution_as_botpress_does_it() {
    let mut fx = Fx::raw_fixture("substitution");
    fx.nlu = None;
    let f = fx.check();
    // "externalUrl": "%PUBLIC_URL%" (the .env value was double-quoted).
    let e = finding(&f, item::EXTERNAL_URL);
    assert_eq!(e.status, Status::Pass, "{e:?}");
    assert!(
        e.evidence
            .contains("httpServer.externalUrl=https://bot.example.com/botpress"),
        "{e:?}"
    );
    // "useCookieStorage": "$isProduction" with BP_PRODUCTION=true.
    assert_eq!(status_of(&f, item::JWT_COOKIE), Status::Pass);
    assert_eq!(status_of(&f, item::AUDIT_IDENTITY), Status::Pass);
    // "enabled": %LOG_FILES% (a bare JSON value) and "%BOTPRESS_DIR%/logs".
    let logs = finding(&f, item::FILE_LOGS);
    assert_eq!(logs.status, Status::Pass, "{logs:?}");
    let dir = std::fs::canonicalize(fx.dir.path()).unwrap();
    assert!(
        logs.evidence.contains(&format!("{}/logs", dir.display())),
        "{logs:?}"
    );
    let c = finding(&f, item::CORS);
    assert_eq!(c.status, Status::Pass, "{c:?}");
    assert!(finding(&f, item::DIRECT_CORS)
        .evidence
        .contains("origin=https://bot.example.com"));

    // Outside production "$isProduction" is false, and an unset %VAR% becomes `undefined`.
    let mut fx = Fx::raw_fixture("substitution");
    fx.raw_env = fx.raw_env.map(|t| {
        t.replace("BP_PRODUCTION=true\nCLUSTER_ENABLED=true\n", "")
            .replace("PUBLIC_URL=", "OTHER_URL=")
    });
    let f = fx.check();
    assert_eq!(status_of(&f, item::JWT_COOKIE), Status::Warn);
    let e = finding(&f, item::EXTERNAL_URL);
    assert_eq!(e.status, Status::Fail, "{e:?}");
    assert!(e.evidence.contains("undefined"), "{e:?}");
    assert!(finding(&f, item::CONFIG_SOURCE)
        .evidence
        .contains("%PUBLIC_URL% is unset"));
}

#[test]
fn substitution_that_breaks_the_json_is_a_usage_error() {
    let mut fx = Fx::raw_fixture("substitution");
    fx.raw_env = fx
        .raw_env
        .map(|t| t.replace("LOG_FILES=true", "LOG_FILES=\"yes please\""));
    let loaded = fx.load();
    let args = CheckArgs {
        files: fx.files(),
        ..Default::default()
    };
    assert_eq!(
        code(posture::run_check(&loaded, &args, &fx.envfn())),
        code(ExitCode::from(2))
    );
}

#[test]
fn check_evidence_for_cors_audit_identity_and_strip() {
    let mut fx = Fx::compliant();
    fx.gate("cors.enabled", false.into())
        .cfg("httpServer.cors", Some(serde_json::json!({})));
    let f = fx.check();
    let c = finding(&f, item::CORS);
    assert!(
        c.evidence.contains("httpServer.cors.enabled is missing"),
        "{c:?}"
    );
    assert!(
        c.evidence.contains("socket.io still answers any origin"),
        "{c:?}"
    );

    let mut fx = Fx::compliant();
    fx.cfg("appSecret", Some("another-secret-0123456789".into()));
    let f = fx.check();
    let a = finding(&f, item::AUDIT_IDENTITY);
    assert!(
        a.evidence.contains("differs from Botpress's appSecret"),
        "{a:?}"
    );
    let all = posture::render_json(&f);
    assert!(!all.contains("another-secret-0123456789") && !all.contains("jwt-planted-secret"));

    let mut fx = Fx::compliant();
    fx.gate("audit.jwt_source", "header".into());
    let a = finding(&fx.check(), item::AUDIT_IDENTITY).clone();
    assert!(a.fix.contains("BPGATE_AUDIT_JWT_SOURCE=cookie"), "{a:?}");

    let mut fx = Fx::compliant();
    fx.gate("base_path.mode", "strip".into());
    let b = finding(&fx.check(), item::BASE_PATH).clone();
    assert!(
        b.evidence.contains("strip cannot serve Botpress v12"),
        "{b:?}"
    );
    assert!(b.fix.contains("preserve"), "{b:?}");
}

#[test]
fn check_compares_external_auth_with_botpress() {
    let secret = "e".repeat(40) + &"x".repeat(100);
    let botpress = serde_json::json!({
        "enabled": true, "algorithms": ["HS256"], "issuer": "shop", "audience": "webchat",
        "publicKey": secret
    });
    let with = |gate: &[(&str, toml::Value)], bp: Option<Value>| {
        let mut fx = Fx::compliant();
        fx.cfg("pro.externalAuth", bp);
        for (k, v) in gate {
            fx.gate(k, v.clone());
        }
        let f = fx.check();
        let a = finding(&f, item::AUDIT_IDENTITY).clone();
        (a, posture::render_json(&f))
    };
    let same = [
        (
            "audit.external_auth.public_key",
            toml::Value::from(secret.as_str()),
        ),
        ("audit.external_auth.issuer", "shop".into()),
        ("audit.external_auth.audience", "webchat".into()),
    ];
    let (a, all) = with(&same, Some(botpress.clone()));
    assert_eq!(a.status, Status::Pass, "{a:?}");
    assert!(
        a.evidence.contains("matches Botpress's pro.externalAuth"),
        "{a:?}"
    );
    assert!(!all.contains(&secret), "the key was printed");

    let mut other = same.clone();
    other[2].1 = "everyone".into();
    other[0].1 = ("o".repeat(140)).into();
    let (a, all) = with(&other, Some(botpress.clone()));
    assert_eq!(a.status, Status::Fail, "{a:?}");
    assert!(
        a.evidence.contains("audience") && a.evidence.contains("key differs"),
        "{a:?}"
    );
    assert!(!all.contains(&secret) && !all.contains(&"o".repeat(140)));

    // Botpress verifies end users, bpgate does not: a warning.
    let (a, _) = with(&[], Some(botpress.clone()));
    assert_eq!(a.status, Status::Warn, "{a:?}");
    assert!(a.fix.contains("[audit.external_auth]"), "{a:?}");
    // bpgate verifies, Botpress does not.
    let (a, _) = with(&same, None);
    assert_eq!(a.status, Status::Warn, "{a:?}");
    // An inline publicKey under 128 characters turns Botpress's external auth off.
    let mut short = botpress.clone();
    short["publicKey"] = "short-secret".into();
    let (a, _) = with(&same, Some(short));
    assert!(a.evidence.contains("shorter than 128"), "{a:?}");
}

#[test]
fn production_mode_refuses_strip() {
    let mut fx = Fx::compliant();
    fx.gate("base_path.mode", "strip".into());
    let info = cert_info(&fx);
    let f = posture::production_failures(&fx.load(), &info);
    assert_eq!(
        f.iter().map(|x| x.item).collect::<Vec<_>>(),
        vec![item::BASE_PATH]
    );
}

/// The items of the README's "What each item checks" list, in order.
fn readme_items() -> Vec<String> {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let start = readme
        .find("What each item checks:")
        .expect("README lists the posture items");
    readme[start..]
        .lines()
        .skip(1)
        .take_while(|l| !l.starts_with('#'))
        .filter_map(|l| l.strip_prefix("- **"))
        .filter_map(|l| l.split_once("**").map(|(name, _)| name.to_string()))
        .collect()
}

#[test]
fn readme_item_list_matches_the_code() {
    assert_eq!(readme_items(), item::ALL);
    let f = Fx::compliant().check();
    assert_eq!(f.iter().map(|x| x.item).collect::<Vec<_>>(), item::ALL);
}

// === the database copy (BPFS_STORAGE=database) ===

/// The URL of a test service, or `None` after saying so on the terminal (past the test
/// harness's capture) when it is not running. Under `CI=true` a missing service fails the test:
/// CI must not go green without it.
fn service_url(var: &str, what: &str) -> Option<String> {
    use std::io::Write;
    match std::env::var(var) {
        Ok(u) if !u.is_empty() => Some(u),
        _ => {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "{var} is unset under CI=true: {what} was not started (.ci/services), so this test did not run"
            );
            let _ = writeln!(
                std::io::stderr(),
                "SKIPPED: {var} is unset; start {what} on loopback and export it (README, Development)"
            );
            None
        }
    }
}

#[test]
fn missing_service_fails_under_ci_and_skips_visibly_otherwise() {
    // Run the decision in a child process so this process's environment is left alone.
    let run = |ci: Option<&str>| {
        crate::support::run_test_child(
            "posture::service_probe_child",
            &[
                ("BPGATE_TEST_NONEXISTENT_URL", None),
                ("BPGATE_SERVICE_PROBE_CHILD", Some("1")),
            ],
            ci,
        )
    };
    let out = run(Some("true"));
    assert!(
        !out.status.success(),
        "a missing service must fail under CI=true"
    );
    let err = String::from_utf8_lossy(&out.stdout) + String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("unset under CI=true"), "{err}");
    let out = run(None);
    assert!(out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("SKIPPED: BPGATE_TEST_NONEXISTENT_URL"),
        "{err}"
    );
}

/// Only meaningful when started by the test above.
#[test]
#[ignore = "run by missing_service_fails_under_ci_and_skips_visibly_otherwise"]
fn service_probe_child() {
    if std::env::var("BPGATE_SERVICE_PROBE_CHILD").is_ok() {
        assert!(service_url("BPGATE_TEST_NONEXISTENT_URL", "a test service").is_none());
    }
}

/// A plain connection to the test database (tokio-postgres is built without its `runtime`).
async fn pg_admin(url: &str) -> (tokio_postgres::Client, tokio::task::JoinHandle<()>) {
    use std::str::FromStr;
    let cfg = tokio_postgres::Config::from_str(url).unwrap();
    let host = match &cfg.get_hosts()[0] {
        tokio_postgres::config::Host::Tcp(h) => h.clone(),
        h => panic!("test database on {h:?}"),
    };
    let port = cfg.get_ports().first().copied().unwrap_or(5432);
    let tcp = tokio::net::TcpStream::connect((host.as_str(), port))
        .await
        .unwrap();
    let (client, conn) = cfg.connect_raw(tcp, tokio_postgres::NoTls).await.unwrap();
    (
        client,
        tokio::spawn(async move {
            let _ = conn.await;
        }),
    )
}

/// A schema of its own in the test database holding Botpress's `srv_ghost_files` table.
struct GhostSchema {
    admin_url: String,
    schema: String,
    /// `DATABASE_URL` for Botpress's side, with `search_path` set to the schema.
    url: String,
}

impl GhostSchema {
    async fn new(admin_url: &str, rows: &[(&str, &str)]) -> GhostSchema {
        use std::sync::atomic::{AtomicU32, Ordering};
        static N: AtomicU32 = AtomicU32::new(0);
        let schema = format!(
            "bpgate_ghost_{}_{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        let (client, task) = pg_admin(admin_url).await;
        client
            .batch_execute(&format!(
                // The table as Botpress's GhostFilesTable creates it.
                "create schema {schema};
                 create table {schema}.srv_ghost_files (
                   file_path varchar(255) primary key, content bytea, deleted boolean,
                   modified_on timestamptz)"
            ))
            .await
            .unwrap();
        for (path, content) in rows {
            client
                .execute(
                    &format!("insert into {schema}.srv_ghost_files values ($1, $2, false, now())"),
                    &[path, &content.as_bytes().to_vec()],
                )
                .await
                .unwrap();
        }
        task.abort();
        let sep = if admin_url.contains('?') { '&' } else { '?' };
        GhostSchema {
            url: format!("{admin_url}{sep}options=-c%20search_path%3D{schema}"),
            admin_url: admin_url.to_string(),
            schema,
        }
    }

    async fn drop(self) {
        let (client, task) = pg_admin(&self.admin_url).await;
        client
            .batch_execute(&format!("drop schema {} cascade", self.schema))
            .await
            .unwrap();
        task.abort();
    }
}

#[tokio::test]
async fn bpfs_database_config_is_read_from_srv_ghost_files() {
    let Some(admin) = service_url("BPGATE_TEST_DATABASE_URL", "PostgreSQL") else {
        return;
    };
    // The database copy differs from the file on disk: another appSecret, an external NLU
    // server, no cookie storage.
    let db_config = serde_json::json!({
        "appSecret": "db-secret-0123456789",
        "httpServer": {"cors": {"enabled": true, "origin": "https://bot.example.com"}},
        "jwtToken": {"useCookieStorage": true},
        "pro": {"enabled": true}
    })
    .to_string();
    let db_nlu = r#"{"nluServer": {"autoStart": false, "endpoint": "http://nlu.internal:3200"}}"#;
    let g = GhostSchema::new(
        &admin,
        &[
            ("data/global/botpress.config.json", db_config.as_str()),
            ("data/global/config/nlu.json", db_nlu),
        ],
    )
    .await;
    let mut fx = Fx::compliant();
    fx.env("DATABASE_URL", Some(&g.url));
    let f = fx.check_async().await;
    let src = finding(&f, item::CONFIG_SOURCE);
    assert_eq!(src.status, Status::Pass, "{src:?}");
    assert!(
        src.evidence.contains(
            "read data/global/botpress.config.json, data/global/config/nlu.json from the database"
        ),
        "{src:?}"
    );
    // Decided by the database copy, not by the file on disk.
    assert_eq!(status_of(&f, item::AUDIT_IDENTITY), Status::Fail);
    assert_eq!(status_of(&f, item::LANG_SERVER), Status::Manual);

    // A database whose table lacks the NLU file: said, and the file given is used.
    let g2 = GhostSchema::new(&admin, &[("data/global/botpress.config.json", "{}")]).await;
    fx.env("DATABASE_URL", Some(&g2.url));
    let f = fx.check_async().await;
    let src = finding(&f, item::CONFIG_SOURCE);
    assert_eq!(src.status, Status::Warn, "{src:?}");
    assert!(
        src.evidence
            .contains("data/global/config/nlu.json is not in the database"),
        "{src:?}"
    );
    g.drop().await;
    g2.drop().await;
}

#[test]
fn bpfs_database_over_tls_is_said_plainly() {
    let mut fx = Fx::compliant();
    fx.env(
        "DATABASE_URL",
        Some("postgres://botpress:pg-planted-pw@127.0.0.1:1/botpress?sslmode=require"),
    );
    let f = fx.check();
    let src = finding(&f, item::CONFIG_SOURCE);
    assert_eq!(src.status, Status::Warn);
    assert!(
        src.evidence.contains("requires TLS (sslmode=require)"),
        "{src:?}"
    );
    let mut fx = Fx::compliant();
    fx.env("DATABASE_URL", None);
    let src = finding(&fx.check(), item::CONFIG_SOURCE).clone();
    assert!(src.evidence.contains("SQLite"), "{src:?}");
}

// === diag: TLS-only services, hairpin ===

#[tokio::test]
async fn diag_says_plainly_what_it_does_not_probe_over_tls() {
    let mut fx = Fx::compliant();
    fx.gate(
        "upstream.urls",
        toml::Value::Array(vec!["http://127.0.0.1:1".into()]),
    );
    fx.env(
        "DATABASE_URL",
        Some("postgres://botpress:pg-planted-pw@127.0.0.1:1/botpress?ssl=true"),
    )
    .env("REDIS_URL", Some("rediss://:redis-planted-pw@127.0.0.1:1"));
    let (report, _) = run_diag(&fx, Duration::from_millis(500)).await;
    assert!(
        report.contains("not probed: TLS required (ssl=true)"),
        "{report}"
    );
    assert!(report.contains("127.0.0.1:1 NOT reachable"), "{report}");
    assert!(
        report.contains("not probed: rediss:// is Redis over TLS"),
        "{report}"
    );
    for secret in PLANTED {
        assert!(!report.contains(secret), "{secret} leaked");
    }
    // sslmode=disable is plain: probed (and refused here).
    fx.env(
        "DATABASE_URL",
        Some("postgres://botpress:pg-planted-pw@127.0.0.1:1/botpress?sslmode=disable"),
    );
    let (report, _) = run_diag(&fx, Duration::from_millis(500)).await;
    assert!(!report.contains("TLS required"), "{report}");
    assert!(report.contains("connect 127.0.0.1:1"), "{report}");
}

#[tokio::test]
async fn diag_probes_external_url_as_a_node_would() {
    use crate::support::{self, Gate, Node};
    support::init();
    let node = Node::start("n1", support::echo()).await;
    let gate = Gate::builder().upstream(node.url()).start().await;
    let public = format!("https://127.0.0.1:{}", gate.https.port());
    let mut fx = Fx::compliant();
    fx.gate("upstream.urls", toml::Value::Array(vec![node.url().into()]));
    fx.env("EXTERNAL_URL", Some(&public))
        .env("REDIS_URL", None)
        .env("BPFS_STORAGE", None)
        .env("DATABASE_URL", None);
    // bpgate's certificate comes from a private CA the node does not trust.
    let (report, _) = run_diag(&fx, Duration::from_secs(3)).await;
    let line = format!("GET {public}/version: FAILED");
    assert!(report.contains(&line), "{report}");
    assert!(report.contains("CERTIFICATE NOT TRUSTED"), "{report}");
    assert!(
        report.contains("NODE_EXTRA_CA_CERTS=/path/to/private-ca.pem"),
        "{report}"
    );
    // With NODE_EXTRA_CA_CERTS in Botpress's environment the node trusts it: the request goes
    // through bpgate to the node.
    std::fs::write(fx.p("private-ca.pem"), &gate.pki.ca_pem).unwrap();
    fx.env(
        "NODE_EXTRA_CA_CERTS",
        Some(&fx.p("private-ca.pem").display().to_string()),
    );
    let (report, _) = run_diag(&fx, Duration::from_secs(3)).await;
    let line = format!("GET {public}/version: 200 in");
    assert!(report.contains(&line), "{report}");
    // The node's echo: the request came through bpgate's TLS listener.
    assert!(report.contains("proto=https"), "{report}");
    assert!(report.contains("bpgate/0.1.0 diag"), "{report}");
    gate.stop().await;
}

// === the binary ===

fn bpgate_bin() -> std::process::Command {
    let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_bpgate"));
    for (k, _) in std::env::vars() {
        if k.starts_with("BPGATE_") || k.starts_with("BP_") || k == "EXTERNAL_URL" {
            c.env_remove(k);
        }
    }
    c
}

fn files_args(f: &BotpressFiles) -> Vec<String> {
    let mut a = Vec::new();
    for (flag, p) in [
        ("--botpress-env", &f.botpress_env),
        ("--botpress-config", &f.botpress_config),
        ("--nlu-config", &f.nlu_config),
    ] {
        if let Some(p) = p {
            a.push(flag.to_string());
            a.push(p.display().to_string());
        }
    }
    a
}

#[test]
fn check_and_diag_exit_codes_from_the_binary() {
    let run = |fx: &Fx, args: &[&str]| {
        fx.load();
        let files = fx.files();
        let out = bpgate_bin()
            .current_dir(fx.dir.path())
            .arg("--config")
            .arg(fx.p("bpgate.toml"))
            .args(args)
            .args(files_args(&files))
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    // check: 0 when nothing fails (JSON on stdout), 1 when something fails, 2 on bad input.
    let fx = Fx::compliant();
    let (code, out, err) = run(&fx, &["check", "--format", "json"]);
    assert_eq!(code, Some(0), "{out}{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["summary"]["fail"], 0);
    assert_eq!(v["items"].as_array().unwrap().len(), item::ALL.len());
    let (code, out, _) = run(&Fx::default_install(), &["check"]);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("FAIL    Production mode"), "{out}");
    let mut bad = Fx::compliant();
    bad.raw_config = Some("{ not json".into());
    let (code, _, err) = run(&bad, &["check"]);
    assert_eq!(code, Some(2));
    assert!(
        err.contains("--botpress-config") && err.contains("not valid JSON"),
        "{err}"
    );

    // diag: 0 once written, 1 when it cannot be written, 2 on bad input.
    let mut fx = Fx::compliant();
    fx.gate(
        "upstream.urls",
        toml::Value::Array(vec!["http://127.0.0.1:1".into()]),
    );
    fx.env("REDIS_URL", None);
    let out_file = fx.p("diag.txt").display().to_string();
    let (code, out, err) = run(&fx, &["diag", "--timeout", "500ms", "--out", &out_file]);
    assert_eq!(code, Some(0), "{out}{err}");
    let report = std::fs::read_to_string(&out_file).unwrap();
    assert!(report.contains("bpgate diagnostic report"));
    let unwritable = fx.p("no/such/dir/diag.txt").display().to_string();
    let (code, _, err) = run(&fx, &["diag", "--timeout", "500ms", "--out", &unwritable]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("cannot write"), "{err}");
    let (code, _, _) = run(&bad, &["diag", "--out", &out_file]);
    assert_eq!(code, Some(2));
}

#[test]
fn health_and_diag_probe_where_the_upstream_serves() {
    let mut fx = Fx::compliant();
    assert_eq!(
        bpgate::generation::health_settings(&fx.load()).path,
        format!("/botpress{}", fx.load().config.health.path)
    );
    fx.gate("base_path.mode", "strip".into());
    assert_eq!(
        bpgate::generation::health_settings(&fx.load()).path,
        fx.load().config.health.path
    );
}
