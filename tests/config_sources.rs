//! Where settings come from, as an operator sees it through the binary: which file was read (or
//! that none was, and where bpgate then writes), the environment beating the file, the node
//! list given once, fatal errors printed once, and the file-level settings that are easy to get
//! wrong (`pool_max_idle = 0`, audit file modes, `BPGATE_AUDIT_STDOUT`).

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use crate::support::binary::{bpgate, client, run_to_exit, Proc, Trust};
use crate::support::{self, echo, get, Gate, Node, Pki};

const START: Duration = Duration::from_secs(20);
const STOP: Duration = Duration::from_secs(20);

#[test]
fn without_a_file_bpgate_says_so_and_where_it_writes_in_absolute_paths() {
    let dir = tempfile::tempdir().unwrap();
    let cwd = dir.path();
    let mut p = Proc::spawn(
        bpgate()
            .current_dir(cwd)
            .env("BPGATE_LISTEN", "127.0.0.1:0")
            .env("BPGATE_ADMIN_LISTEN", "127.0.0.1:0"),
    );
    p.listening(START);
    let err = p.stderr();
    let cert = cwd.join("certs/dev-cert.pem");
    let key = cwd.join("certs/dev-key.pem");
    for want in [
        format!(
            "no configuration file at {}",
            cwd.join("config/bpgate.toml").display()
        ),
        "built-in defaults apply".to_string(),
        format!("TLS certificate {}", cert.display()),
        "the development certificate, generated there when missing".to_string(),
        format!(
            "audit trail {}",
            cwd.join("logs/audit/audit.jsonl").display()
        ),
    ] {
        assert!(err.contains(&want), "missing {want:?} in:\n{err}");
    }
    assert!(
        err.lines()
            .any(|l| l.contains(" WARN ") && l.contains("no configuration file at")),
        "a missing file is a warning: {err}"
    );
    // The development certificate really is there, its key private.
    assert!(cert.is_file() && key.is_file());
    let mode = std::fs::metadata(&key).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "dev key mode {mode:o}");
    p.signal("TERM");
    let end = p.wait_exit(STOP);
    assert!(end.status.success(), "{}", end.stderr);

    // `bpgate config` in the same place says the same.
    let out = bpgate().current_dir(cwd).arg("config").output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert!(
        text.contains(&format!(
            "# no configuration file at {}",
            cwd.join("config/bpgate.toml").display()
        )) && text.contains(&format!("# TLS certificate {}", cert.display())),
        "{text}"
    );
}

#[test]
fn config_command_names_the_file_and_shows_the_derived_values() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("bpgate.toml");
    std::fs::write(
        &cfg,
        "external_url = \"https://bot.example.com/botpress\"\n\
         [sticky]\nsecret = \"0123456789abcdef0123456789\"\n\
         [[upstream.nodes]]\nurl = \"http://10.0.0.5:3000\"\nname = \"node-1\"\n\
         [[upstream.nodes]]\nurl = \"http://10.0.0.6:3000\"\nname = \"node-2\"\nweight = 3\n",
    )
    .unwrap();
    let out = bpgate()
        .current_dir(dir.path())
        .arg("config")
        .arg("--config")
        .arg(&cfg)
        .env("BPGATE_LISTEN", "127.0.0.1:9443")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let key = bpgate::cluster::sticky::StickyKey::new(b"0123456789abcdef0123456789");
    let id = |n: &str| -> String { key.node_id(n).iter().map(|b| format!("{b:02x}")).collect() };
    for want in [
        format!("# configuration file {}", cfg.display()),
        "# public origin: https://bot.example.com".to_string(),
        "# base path: /botpress (preserve)".to_string(),
        format!(
            "#   node-1 = 10.0.0.5:3000, weight 1, sticky id {}",
            id("node-1")
        ),
        format!(
            "#   node-2 = 10.0.0.6:3000, weight 3, sticky id {}",
            id("node-2")
        ),
    ] {
        assert!(text.contains(&want), "missing {want:?} in:\n{text}");
    }
    assert!(
        !text.contains("127.0.0.1:3000"),
        "named nodes alone: no default node\n{text}"
    );
    assert!(
        !text.contains("0123456789abcdef0123456789"),
        "the secret is redacted"
    );
    // Still a TOML document: the descriptions are comments.
    let parsed: toml::Table = toml::from_str(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    assert_eq!(parsed["listen"]["https"].as_str(), Some("127.0.0.1:9443"));
}

#[test]
fn a_file_with_both_node_spellings_is_refused_by_the_binary() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("bpgate.toml");
    std::fs::write(
        &cfg,
        "[upstream]\nurls = [\"http://10.0.0.4:3000\"]\n[[upstream.nodes]]\nurl = \"http://10.0.0.5:3000\"\n",
    )
    .unwrap();
    for args in [&["config"][..], &[][..]] {
        let out = run_to_exit(
            bpgate()
                .args(args)
                .arg("--config")
                .arg(&cfg)
                .env("BPGATE_LISTEN", "127.0.0.1:0")
                .env("BPGATE_ADMIN_LISTEN", "127.0.0.1:0")
                .env("BPGATE_AUDIT_DIR", dir.path().join("audit")),
            STOP,
        );
        assert_eq!(out.status.code(), Some(2));
        let err = &out.stderr;
        assert!(
            err.contains("upstream.urls") && err.contains("[[upstream.nodes]]"),
            "{err}"
        );
    }
    // BPGATE_UPSTREAMS replaces both: no error, only its nodes.
    let out = bpgate()
        .arg("config")
        .arg("--config")
        .arg(&cfg)
        .env("BPGATE_UPSTREAMS", "http://10.0.0.9:3000")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("#   10.0.0.9:3000 = 10.0.0.9:3000") && !text.contains("10.0.0.5"),
        "{text}"
    );
}

#[test]
fn bp_production_beats_the_files_mode_through_the_binary() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("bpgate.toml");
    std::fs::write(&cfg, "mode = \"development\"\n").unwrap();
    let out = run_to_exit(
        bpgate()
            .current_dir(dir.path())
            .arg("--config")
            .arg(&cfg)
            .env("BP_PRODUCTION", "true")
            .env("BPGATE_LISTEN", "127.0.0.1:0")
            .env("BPGATE_ADMIN_LISTEN", "127.0.0.1:0"),
        STOP,
    );
    let err = &out.stderr;
    assert!(!out.status.success(), "production must refuse: {err}");
    assert!(
        err.lines().any(|l| l.contains(" WARN ")
            && l.contains(
                "mode: env BP_PRODUCTION=true (\"production\") overrides \"development\""
            )),
        "the conflict is logged: {err}"
    );
    assert!(err.contains("does not exist"), "{err}");
    assert!(
        !dir.path().join("certs/dev-cert.pem").exists(),
        "production never generates a certificate"
    );
}

/// Counts `needle` in `hay`.
fn count(hay: &str, needle: &str) -> usize {
    hay.matches(needle).count()
}

#[test]
fn fatal_errors_are_printed_once() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new();
    let blocker = dir.path().join("file");
    std::fs::write(&blocker, "x").unwrap();
    let base = || {
        let mut c = bpgate();
        c.current_dir(dir.path())
            .env("BPGATE_TLS_CERT", &pki.cert)
            .env("BPGATE_TLS_KEY", &pki.key)
            .env("BPGATE_LISTEN", "127.0.0.1:0")
            .env("BPGATE_ADMIN_LISTEN", "127.0.0.1:0")
            .env("BPGATE_AUDIT_DIR", dir.path().join("audit"));
        c
    };
    // Start-up refusal (the audit directory), in each log setting.
    for (log, format) in [("info", "text"), ("info", "json"), ("off", "text")] {
        let out = run_to_exit(
            base()
                .env("BPGATE_AUDIT_DIR", blocker.join("audit"))
                .env("BPGATE_LOG", log)
                .env("BPGATE_LOG_FORMAT", format),
            STOP,
        );
        assert_eq!(out.status.code(), Some(1));
        let err = &out.stderr;
        assert_eq!(
            count(err, "is not writable"),
            1,
            "log {log}, {format}: printed once:\n{err}"
        );
        if format == "json" {
            for l in err.lines().filter(|l| !l.trim().is_empty()) {
                serde_json::from_str::<serde_json::Value>(l)
                    .unwrap_or_else(|e| panic!("not JSON ({e}): {l}"));
            }
        }
    }
    // A port in use.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let out = run_to_exit(base().env("BPGATE_LISTEN", &addr), STOP);
    assert_eq!(out.status.code(), Some(1));
    let err = &out.stderr;
    assert_eq!(
        count(err, &format!("cannot listen on {addr}")),
        1,
        "printed once:\n{err}"
    );
    // Production refusals.
    let out = run_to_exit(
        base()
            .env("BPGATE_MODE", "production")
            .env("BPGATE_UPSTREAMS", "http://127.0.0.1:9,http://127.0.0.1:10"),
        STOP,
    );
    let err = &out.stderr;
    assert_eq!(
        count(err, "production mode refuses to start"),
        1,
        "printed once:\n{err}"
    );
    drop(taken);
}

#[tokio::test]
async fn pool_max_idle_zero_keeps_no_idle_connection() {
    support::init();
    let node = Node::start("n1", echo()).await;
    // Control: by default the second request reuses the first one's connection.
    for (max_idle, want_connections) in [(None, 1), (Some(0), 2)] {
        let before = node.accepted.load(std::sync::atomic::Ordering::Relaxed);
        let mut b = Gate::builder()
            .upstream(node.url())
            .toml("[health]\nenabled = false\n");
        if let Some(n) = max_idle {
            b = b.toml(&format!("[upstream]\npool_max_idle = {n}\n"));
        }
        let gate = b.start().await;
        let mut c = support::Client::h1(&gate).await;
        let pool = gate.gw.current().nodes.nodes[0].pool.clone();
        for _ in 0..2 {
            let a = c.get("/api/x").await;
            assert_eq!(a.status, 200);
            // The exchange has ended (the connection was kept or closed) before the next one.
            assert!(support::eventually(Duration::from_secs(5), || pool.in_flight() == 0).await);
            match max_idle {
                Some(0) => assert_eq!(pool.idle_count(), 0, "nothing kept idle"),
                _ => assert!(
                    support::eventually(Duration::from_secs(5), || pool.idle_count() == 1).await
                ),
            }
        }
        let opened = node.accepted.load(std::sync::atomic::Ordering::Relaxed) - before;
        assert_eq!(
            opened, want_connections,
            "pool_max_idle = {max_idle:?}: node connections for two requests"
        );
        gate.stop().await;
    }
}

#[tokio::test]
async fn audit_files_are_created_0640_rotated_ones_too() {
    support::init();
    let node = Node::start("n1", echo()).await;
    let gate = Gate::builder()
        .upstream(node.url())
        .toml("[health]\nenabled = false\n")
        .start()
        .await;
    let mut c = support::Client::h1(&gate).await;
    assert_eq!(c.get("/one").await.status, 200);
    let sink = gate.gw.shared().audit.clone().unwrap();
    tokio::task::spawn_blocking(move || sink.rotate())
        .await
        .unwrap();
    assert_eq!(c.get("/two").await.status, 200);
    let lines = gate.audit_lines();
    assert_eq!(lines.len(), 2);
    let files: Vec<_> = std::fs::read_dir(&gate.audit_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "jsonl"))
        .collect();
    assert_eq!(
        files.len(),
        2,
        "the current file and a rotated one: {files:?}"
    );
    for f in files {
        let mode = std::fs::metadata(&f).unwrap().permissions().mode() & 0o777;
        assert_eq!(
            mode & !0o640,
            0,
            "{}: mode {mode:o} gives more than 0640",
            f.display()
        );
        assert_eq!(mode & 0o600, 0o600, "{}: mode {mode:o}", f.display());
    }
    gate.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bpgate_audit_stdout_copies_the_trail_to_stdout() {
    support::init();
    let node = Node::start("n1", echo()).await;
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new();
    let mut p = Proc::spawn(
        bpgate()
            .current_dir(dir.path())
            .env("BPGATE_TLS_CERT", &pki.cert)
            .env("BPGATE_TLS_KEY", &pki.key)
            .env("BPGATE_LISTEN", "127.0.0.1:0")
            .env("BPGATE_ADMIN_LISTEN", "127.0.0.1:0")
            .env("BPGATE_UPSTREAMS", node.url())
            .env("BPGATE_AUDIT_DIR", dir.path().join("audit"))
            .env("BPGATE_AUDIT_STDOUT", "true"),
    );
    let (https, _) = p.listening(START);
    let mut c = client(https, &Trust::Ca(pki.ca_pem.clone()), false).await;
    let a = c
        .call(get("/stdout-check").body(support::full("")).unwrap())
        .await;
    assert_eq!(a.status, 200);
    let (out, _) = tokio::task::block_in_place(|| {
        p.wait_for("the audit line on stdout", START, |o, _| {
            o.contains("\"path\":\"/stdout-check\"")
        })
    });
    let line = out.lines().find(|l| l.contains("/stdout-check")).unwrap();
    let v: serde_json::Value = serde_json::from_str(line).unwrap();
    assert_eq!(v["status"], 200);
    p.signal("TERM");
    let end = tokio::task::block_in_place(|| p.wait_exit(STOP));
    assert!(end.status.success(), "{}", end.stderr);
}
