//! The binary's command line: `bpgate config`, start-up refusals, certificate errors.

use crate::support;

use std::io::Read;
use std::net::SocketAddr;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use bpgate::tls::{load_pair, TlsError};
use support::binary::{bpgate, Proc};
use support::Pki;

/// How long a test waits for the binary to start or to exit before it kills it and fails
/// (generous: the machine may be loaded; a healthy start takes well under a second).
const PATIENCE: Duration = Duration::from_secs(30);

/// SIGTERM, then a bounded wait for a clean exit; returns what it printed.
fn terminate(gate: Proc) -> support::binary::Ended {
    gate.signal("TERM");
    let end = gate.wait_exit(PATIENCE);
    assert!(
        end.status.success(),
        "graceful exit on SIGTERM: {:?}\n{}",
        end.status,
        end.stderr
    );
    end
}

/// A plain HTTP/1.1 GET on an admin listener.
fn admin_get(admin: SocketAddr, path: &str) -> (u16, String) {
    use std::io::Write;
    let mut s = std::net::TcpStream::connect(admin).unwrap();
    s.set_read_timeout(Some(PATIENCE)).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {admin}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let status = out
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = out.split_once("\r\n\r\n").map(|x| x.1).unwrap_or("");
    (status, body.to_string())
}

/// An admin answer that is JSON.
fn admin_json(admin: SocketAddr, path: &str) -> serde_json::Value {
    let (status, body) = admin_get(admin, path);
    assert_eq!(status, 200, "{path}: {body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("{path}: {e}: {body}"))
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
    let (n1, n2) = (support::Port::reserve(), support::Port::reserve());
    let base = |c: &mut Command| {
        c.current_dir(dir.path())
            .env("BP_PRODUCTION", "true")
            .env("BPGATE_TLS_CERT", &pki.cert)
            .env("BPGATE_TLS_KEY", &pki.key)
            .env("BPGATE_LISTEN", "127.0.0.1:0")
            .env("BPGATE_ADMIN_LISTEN", "127.0.0.1:0")
            .env("BPGATE_UPSTREAMS", format!("http://{n1},http://{n2}"))
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
    let mut gate = Proc::spawn(c.arg("--allow-insecure"));
    gate.listening(PATIENCE);
    assert!(gate.running(), "bpgate exited despite --allow-insecure");
    let err = terminate(gate).stderr;
    assert!(err.contains("--allow-insecure"), "{err}");
}

/// `bpgate run` in `dir` on the embedded default configuration (so the default certificate
/// paths), every listener on port 0, the node a held dead port.
fn run_with_defaults(dir: &std::path::Path, node: &support::Port) -> Proc {
    Proc::spawn(
        bpgate()
            .current_dir(dir)
            .env("BPGATE_LISTEN", "127.0.0.1:0")
            .env("BPGATE_ADMIN_LISTEN", "127.0.0.1:0")
            .env("BPGATE_UPSTREAMS", format!("http://{node}"))
            .env("BPGATE_AUDIT_DIR", dir.join("audit")),
    )
}

#[tokio::test]
async fn development_certificate_is_generated_only_at_default_paths() {
    use std::os::unix::fs::PermissionsExt;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    support::init();
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (
        dir.path().join(bpgate::config::DEV_CERT_PATH),
        dir.path().join(bpgate::config::DEV_KEY_PATH),
    );
    // `bpgate config` only reads: nothing is generated.
    let out = bpgate()
        .current_dir(dir.path())
        .arg("config")
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(
        !cert.exists() && !key.exists(),
        "`bpgate config` wrote files"
    );

    // The first start on the default paths generates the pair there.
    let node = support::Port::reserve();
    let mut gate = run_with_defaults(dir.path(), &node);
    let (https, _) = gate.listening(PATIENCE);
    assert!(
        gate.stderr()
            .contains("generated a self-signed DEVELOPMENT certificate"),
        "{}",
        gate.stderr()
    );
    assert!(cert.is_file(), "no certificate at {}", cert.display());
    let mode = std::fs::metadata(&key).unwrap().permissions().mode() & 0o777;
    assert_eq!(
        mode, 0o600,
        "the private key is readable by others: {mode:o}"
    );
    // It is the certificate bpgate serves, for localhost.
    let pem = std::fs::read_to_string(&cert).unwrap();
    let mut roots = rustls::RootCertStore::empty();
    for c in
        <rustls::pki_types::CertificateDer as rustls::pki_types::pem::PemObject>::pem_slice_iter(
            pem.as_bytes(),
        )
    {
        roots.add(c.unwrap()).unwrap();
    }
    let cfg = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(https).await.unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect(
            rustls::pki_types::ServerName::try_from("localhost").unwrap(),
            tcp,
        )
        .await
        .expect("the generated certificate is the one served");
    tls.write_all(b"GET /x HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    let _ = tls.read_to_end(&mut answer).await;
    assert!(
        String::from_utf8_lossy(&answer).starts_with("HTTP/1.1 50"),
        "the dead node: a 50x, got {}",
        String::from_utf8_lossy(&answer)
    );
    terminate(gate);

    // A second start keeps the pair it finds.
    let mut again = run_with_defaults(dir.path(), &node);
    again.listening(PATIENCE);
    assert_eq!(std::fs::read_to_string(&cert).unwrap(), pem, "regenerated");
    assert!(!terminate(again).stderr.contains("generated a self-signed"));

    // The library never generates at other paths (the binary's refusal: the test above).
    let (x, y) = (dir.path().join("x.pem"), dir.path().join("y.pem"));
    assert!(!bpgate::tls::ensure_dev_cert(&x, &y).unwrap());
    assert!(!x.exists() && !y.exists());
}

#[test]
fn sighup_reloads_instead_of_ending_the_process() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new();
    let (a, b) = (support::Port::reserve(), support::Port::reserve());
    let cfg = dir.path().join("bpgate.toml");
    let config = |nodes: &[(&str, &support::Port)]| {
        let nodes: String = nodes
            .iter()
            .map(|(name, p)| {
                format!("[[upstream.nodes]]\nname = \"{name}\"\nurl = \"http://{p}\"\n")
            })
            .collect();
        format!(
            "[listen]\nhttps = \"127.0.0.1:0\"\nadmin = \"127.0.0.1:0\"\n[tls]\ncert = {:?}\nkey = {:?}\n[audit]\ndir = {:?}\n[health]\nenabled = false\n[upstream]\nurls = []\n{nodes}",
            pki.cert,
            pki.key,
            dir.path().join("audit")
        )
    };
    std::fs::write(&cfg, config(&[("a", &a)])).unwrap();
    let mut gate = Proc::spawn(bpgate().current_dir(dir.path()).arg("--config").arg(&cfg));
    let (_, admin) = gate.listening(PATIENCE);
    let handled = |n: usize| move |_: &str, e: &str| e.matches("SIGHUP handled").count() >= n;
    let generation = || admin_json(admin, "/readyz")["generation"].as_u64().unwrap();
    let names = || -> Vec<String> {
        admin_json(admin, "/upstreams")["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n["name"].as_str().unwrap().to_string())
            .collect()
    };
    let first = generation();
    assert_eq!(names(), ["a"]);

    // A node is added to the file; SIGHUP applies it.
    std::fs::write(&cfg, config(&[("a", &a), ("b", &b)])).unwrap();
    gate.signal("HUP");
    let (_, err) = gate.wait_for("a reload", PATIENCE, handled(1));
    assert!(gate.running(), "SIGHUP ended bpgate");
    let report = err.lines().find(|l| l.contains("SIGHUP handled")).unwrap();
    assert!(
        report.contains("upstream"),
        "the report names what changed: {report}"
    );
    assert_eq!(generation(), first + 1, "a new generation is in service");
    assert_eq!(names(), ["a", "b"]);

    // An invalid file is refused and the running configuration kept.
    std::fs::write(&cfg, "[limits]\nmax_bdy = 1\n").unwrap();
    gate.signal("HUP");
    gate.wait_for("a second reload", PATIENCE, handled(2));
    assert!(gate.running(), "an invalid configuration ended bpgate");
    assert_eq!(generation(), first + 1);
    assert_eq!(names(), ["a", "b"]);
    terminate(gate);
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
    let node = support::Port::reserve();
    let mut gate = Proc::spawn(
        bpgate()
            .current_dir(dir.path())
            .arg("--config")
            .arg(&cfg)
            .env("BPGATE_TLS_CERT", &pki.cert)
            .env("BPGATE_TLS_KEY", &pki.key)
            .env("BPGATE_LISTEN", "127.0.0.1:0")
            .env("BPGATE_ADMIN_LISTEN", "127.0.0.1:0")
            .env("BPGATE_UPSTREAMS", format!("http://{node}"))
            .env("BPGATE_AUDIT_DIR", dir.path().join("audit"))
            .env("BPGATE_LOG_FORMAT", "json"),
    );
    // JSON logs: the addresses are fields of the start-up line.
    let (_, err) = gate.wait_for("bpgate listening", PATIENCE, |_, e| {
        e.contains("bpgate listening")
    });
    let line = err
        .lines()
        .find(|l| l.contains("bpgate listening"))
        .unwrap();
    let v: serde_json::Value =
        serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
    let https: SocketAddr = v["fields"]["https"]
        .as_str()
        .and_then(|a| a.strip_prefix("Some(")?.strip_suffix(')')?.parse().ok())
        .unwrap_or_else(|| panic!("https address in {line}"));
    // One request (the node is down: a 502, still audited).
    let tcp = tokio::net::TcpStream::connect(https).await.unwrap();
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
    let mut tls = tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect(
            rustls::pki_types::ServerName::try_from("localhost").unwrap(),
            tcp,
        )
        .await
        .unwrap();
    tls.write_all(b"GET /json-log-check HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut out = Vec::new();
    let _ = tls.read_to_end(&mut out).await;
    assert!(String::from_utf8_lossy(&out).starts_with("HTTP/1.1 502"));
    // SIGTERM writes what is queued before the process ends.
    let end = terminate(gate);
    let (stdout, stderr) = (end.stdout, end.stderr);
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
