//! The binary's command line: `bpgate config`, start-up refusals, certificate errors.

use crate::support;

use std::process::Command;

use bpgate::tls::{load_pair, TlsError};
use support::Pki;

fn bpgate() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_bpgate"));
    for (k, _) in std::env::vars() {
        if k.starts_with("BPGATE_") || k == "EXTERNAL_URL" || k == "BP_PRODUCTION" {
            c.env_remove(k);
        }
    }
    c
}

#[test]
fn config_command_prints_effective_settings_with_secrets_redacted() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("c.toml");
    std::fs::write(&cfg, "[sticky]\nsecret = \"file-secret-0123456789\"\n").unwrap();
    let out = bpgate()
        .args(["config", "--config"])
        .arg(&cfg)
        .env("BPGATE_LISTEN", "127.0.0.1:9443")
        .env("BPGATE_JWT_SECRET", "jwt-secret-abcdef")
        .env(
            "BPGATE_AUDIT_EXTERNAL_AUTH_PUBLIC_KEY",
            "external-auth-secret-xyz",
        )
        .env("BPGATE_ADMIN_TOKEN", "admin-token-0123456789abcdef")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("https = \"127.0.0.1:9443\""),
        "env applied: {text}"
    );
    assert!(
        !text.contains("file-secret-0123456789")
            && !text.contains("jwt-secret-abcdef")
            && !text.contains("external-auth-secret-xyz")
            && !text.contains("admin-token-0123456789abcdef"),
        "{text}"
    );
    assert!(
        text.contains("[admin]\ntoken = \"<redacted>\""),
        "the admin token is set but not shown: {text}"
    );
    assert!(text.contains("<redacted>"));
    assert!(text.contains("[audit.external_auth]"), "{text}");
}

#[test]
fn invalid_configuration_exits_2_naming_key_and_fix() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("c.toml");
    std::fs::write(&cfg, "[limits]\nmax_bdy = \"1m\"\n").unwrap();
    for sub in [&["config"][..], &[][..]] {
        let out = bpgate()
            .args(sub)
            .arg("--config")
            .arg(&cfg)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("limits.max_bdy") && err.contains("did you mean `limits.max_body`"),
            "{err}"
        );
    }
    let out = bpgate()
        .arg("config")
        .env("EXTERNAL_URL", "bot.example.com")
        .arg("--config")
        .arg(dir.path().join("none.toml"))
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(2),
        "a missing explicit config file is an error"
    );
    let out = bpgate()
        .arg("config")
        .env("EXTERNAL_URL", "nope")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("EXTERNAL_URL"));
}

#[test]
fn version_and_help() {
    let out = bpgate().arg("--version").output().unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains(env!("CARGO_PKG_VERSION")));
    let out = bpgate().arg("--help").output().unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(
        help.contains("config") && help.contains("--config"),
        "{help}"
    );
}

#[test]
fn certificate_errors_are_clear() {
    let pki = Pki::new();
    let d = pki.dir.path();
    let missing = d.join("nope.pem");
    let e = load_pair(&missing, &pki.key).err().unwrap();
    assert!(
        matches!(e, TlsError::Missing { .. }) && e.to_string().contains("BPGATE_TLS_CERT"),
        "{e}"
    );
    let e = load_pair(d, &pki.key).err().unwrap();
    assert!(matches!(e, TlsError::Unreadable { .. }), "{e}");
    let empty = d.join("empty.pem");
    std::fs::write(&empty, "hello\n").unwrap();
    let e = load_pair(&empty, &pki.key).err().unwrap();
    assert!(
        matches!(e, TlsError::NoCertificate { .. }) && e.to_string().contains("BEGIN CERTIFICATE"),
        "{e}"
    );
    let e = load_pair(&pki.cert, &empty).err().unwrap();
    assert!(
        matches!(e, TlsError::NoKey { .. }) && e.to_string().contains("PKCS#8"),
        "{e}"
    );
    let other = Pki::new();
    let e = load_pair(&pki.cert, &other.key).err().unwrap();
    assert!(
        matches!(e, TlsError::KeyMismatch { .. }) && e.to_string().contains("does not match"),
        "{e}"
    );
    let ok = load_pair(&pki.cert, &pki.key).unwrap();
    assert!(!ok.info.expired(bpgate::cluster::unix_now() as i64));
    let old = Pki::with_validity(-30, -1);
    let expired = load_pair(&old.cert, &old.key).unwrap();
    assert!(
        expired.info.expired(bpgate::cluster::unix_now() as i64),
        "expired certificates load (with a warning) and are flagged"
    );
}

#[test]
fn non_default_missing_certificate_refuses_to_start_and_generates_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let cert = dir.path().join("cert.pem");
    let out = bpgate()
        .current_dir(dir.path())
        .env("BPGATE_TLS_CERT", &cert)
        .env("BPGATE_TLS_KEY", dir.path().join("key.pem"))
        .env("BPGATE_LISTEN", "127.0.0.1:0")
        .env("BPGATE_ADMIN_LISTEN", "127.0.0.1:0")
        .env("BPGATE_AUDIT_DIR", dir.path().join("audit"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("does not exist"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !cert.exists(),
        "bpgate must not generate certificates at non-default paths"
    );
}

#[test]
fn unwritable_audit_dir_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new();
    let blocker = dir.path().join("file");
    std::fs::write(&blocker, "x").unwrap();
    let out = bpgate()
        .env("BPGATE_TLS_CERT", &pki.cert)
        .env("BPGATE_TLS_KEY", &pki.key)
        .env("BPGATE_LISTEN", "127.0.0.1:0")
        .env("BPGATE_ADMIN_LISTEN", "127.0.0.1:0")
        .env("BPGATE_AUDIT_DIR", blocker.join("audit"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("audit.dir") && err.contains("BPGATE_AUDIT_DIR"),
        "{err}"
    );
}

#[test]
fn production_mode_refuses_posture_failures_unless_allow_insecure() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new();
    let base = |c: &mut Command| {
        c.current_dir(dir.path())
            .env("BP_PRODUCTION", "true")
            .env("BPGATE_TLS_CERT", &pki.cert)
            .env("BPGATE_TLS_KEY", &pki.key)
            .env("BPGATE_LISTEN", "127.0.0.1:0")
            .env("BPGATE_ADMIN_LISTEN", "127.0.0.1:0")
            .env("BPGATE_UPSTREAMS", "http://127.0.0.1:9,http://127.0.0.1:10")
            .env("BPGATE_AUDIT_DIR", dir.path().join("audit"));
    };
    let mut c = bpgate();
    base(&mut c);
    let out = c.output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("production mode refuses to start") && err.contains("BPGATE_STICKY_SECRET"),
        "{err}"
    );

    // --allow-insecure starts anyway (loudly); stop it by its pid.
    let mut c = bpgate();
    base(&mut c);
    let mut child = c
        .arg("--allow-insecure")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(1500));
    assert!(
        child.try_wait().unwrap().is_none(),
        "bpgate exited despite --allow-insecure"
    );
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "graceful exit on SIGTERM");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--allow-insecure"), "{err}");
}

#[test]
fn development_certificate_is_generated_only_at_default_paths() {
    let dir = tempfile::tempdir().unwrap();
    let out = bpgate()
        .current_dir(dir.path())
        .arg("config")
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(
        bpgate::tls::ensure_dev_cert(&dir.path().join("x.pem"), &dir.path().join("y.pem"))
            .map(|g| !g)
            .unwrap()
    );
}

#[test]
fn sighup_reloads_instead_of_ending_the_process() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new();
    let mut child = bpgate()
        .current_dir(dir.path())
        .env("BPGATE_TLS_CERT", &pki.cert)
        .env("BPGATE_TLS_KEY", &pki.key)
        .env("BPGATE_LISTEN", "127.0.0.1:0")
        .env("BPGATE_ADMIN_LISTEN", "127.0.0.1:0")
        .env("BPGATE_AUDIT_DIR", dir.path().join("audit"))
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(1000));
    let _ = Command::new("kill")
        .arg("-HUP")
        .arg(child.id().to_string())
        .status();
    std::thread::sleep(std::time::Duration::from_millis(800));
    assert!(child.try_wait().unwrap().is_none(), "SIGHUP ended bpgate");
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("SIGHUP handled"), "{err}");
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test]
async fn json_logs_and_audit_copy_on_stdout() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    support::init();
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new();
    let cfg = dir.path().join("c.toml");
    std::fs::write(
        &cfg,
        "[audit]\nstdout = true\nflush_interval = \"5ms\"\n[health]\nenabled = false\n",
    )
    .unwrap();
    let port = free_port();
    let mut child = bpgate()
        .current_dir(dir.path())
        .arg("--config")
        .arg(&cfg)
        .env("BPGATE_TLS_CERT", &pki.cert)
        .env("BPGATE_TLS_KEY", &pki.key)
        .env("BPGATE_LISTEN", format!("127.0.0.1:{port}"))
        .env("BPGATE_ADMIN_LISTEN", "127.0.0.1:0")
        .env("BPGATE_UPSTREAMS", "http://127.0.0.1:9")
        .env("BPGATE_AUDIT_DIR", dir.path().join("audit"))
        .env("BPGATE_LOG_FORMAT", "json")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // One request (the node is down: a 502, still audited).
    let mut sent = false;
    for _ in 0..50 {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        let Ok(tcp) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await else {
            continue;
        };
        let mut roots = rustls::RootCertStore::empty();
        for c in
            <rustls::pki_types::CertificateDer as rustls::pki_types::pem::PemObject>::pem_slice_iter(
                pki.ca_pem.as_bytes(),
            )
        {
            roots.add(c.unwrap()).unwrap();
        }
        let cfg = rustls::ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let mut tls = tokio_rustls::TlsConnector::from(std::sync::Arc::new(cfg))
            .connect(
                rustls::pki_types::ServerName::try_from("localhost").unwrap(),
                tcp,
            )
            .await
            .unwrap();
        tls.write_all(
            b"GET /json-log-check HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
        )
        .await
        .unwrap();
        let mut out = Vec::new();
        let _ = tls.read_to_end(&mut out).await;
        assert!(String::from_utf8_lossy(&out).starts_with("HTTP/1.1 502"));
        sent = true;
        break;
    }
    assert!(sent, "bpgate did not come up");
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status();
    let out = tokio::task::spawn_blocking(move || {
        let _ = child.wait();
        let mut o = String::new();
        let mut e = String::new();
        use std::io::Read;
        child.stdout.take().unwrap().read_to_string(&mut o).unwrap();
        child.stderr.take().unwrap().read_to_string(&mut e).unwrap();
        (o, e)
    })
    .await
    .unwrap();
    let (stdout, stderr) = out;
    let audit: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(
        audit
            .iter()
            .any(|l| l["path"] == "/json-log-check" && l["status"] == 502),
        "{stdout}"
    );
    let logs: Vec<serde_json::Value> = stderr
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    assert!(
        logs.iter().any(|l| l["fields"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("listening"))),
        "{stderr}"
    );
}
