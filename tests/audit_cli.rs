//! `bpgate audit tail|summary`, run as the binary: against trails a real gate wrote (with a
//! rotation, users, refusals and a WebSocket tunnel) and against hand-made files with rotation
//! name collisions, torn and malformed lines, filters, and `-f` across rotations.

use crate::support;

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::StatusCode;
use serde_json::Value;
use support::*;

fn bpgate() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_bpgate"));
    for (k, _) in std::env::vars() {
        if k.starts_with("BPGATE_")
            || k == "EXTERNAL_URL"
            || k == "BP_PRODUCTION"
            || k == "NO_COLOR"
        {
            c.env_remove(k);
        }
    }
    c
}

struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

fn run(args: &[&str], extra: &[&Path]) -> Run {
    run_cmd(bpgate().arg("audit").args(args).args(extra))
}

fn run_cmd(c: &mut Command) -> Run {
    let out = c.output().unwrap();
    Run {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn summary(args: &[&str], extra: &[&Path]) -> Value {
    let mut a = vec!["summary", "--format", "json"];
    a.extend_from_slice(args);
    let r = run(&a, extra);
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    serde_json::from_str(&r.stdout).unwrap_or_else(|e| panic!("{e}: {}", r.stdout))
}

/// `tail -n all --format json` with `args`: the lines' JSON values.
fn tail_json(args: &[&str], extra: &[&Path]) -> Vec<Value> {
    let mut a = vec!["tail", "-n", "all", "--format", "json"];
    a.extend_from_slice(args);
    let r = run(&a, extra);
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    r.stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

fn jwt(secret: &str, email: &str) -> String {
    #[derive(serde::Serialize)]
    struct C<'a> {
        email: &'a str,
        strategy: &'a str,
        aud: &'a str,
        exp: u64,
    }
    jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &C {
            email,
            strategy: "default",
            aud: "collaborators",
            exp: bpgate::cluster::unix_now() + 3600,
        },
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

/// A gate behind base path `/bp` with users, a second client IP, a refusal, a tunnel and a
/// rotation in the middle; returns it stopped (trail flushed) with its node's name.
async fn real_trail() -> (Gate, String) {
    init();
    let node = Node::start("n", echo()).await;
    let gate = Gate::builder()
        .upstream(node.url())
        .env("BPGATE_JWT_SECRET", "app-secret")
        .toml("external_url = \"https://localhost/bp\"\n[health]\nenabled = false")
        .start()
        .await;
    let bearer = |who: &str, secret: &str| format!("Bearer {}", jwt(secret, who));
    let mut c = Client::h1(&gate).await;
    for i in 0..3 {
        let a = c
            .call(
                get(&format!("/bp/api/v1/a/{i}"))
                    .header("authorization", bearer("alice@x.io", "app-secret"))
                    .body(full(Bytes::new()))
                    .unwrap(),
            )
            .await;
        assert_eq!(a.status, StatusCode::OK);
    }
    let sink = gate.gw.shared().audit.clone().unwrap();
    tokio::task::spawn_blocking(move || sink.rotate())
        .await
        .unwrap();
    let other = tls_connect_from(&gate, &[b"http/1.1"], Some("127.0.0.7".parse().unwrap())).await;
    let mut c7 = Client::over(other).await;
    for i in 0..2 {
        let a = c7
            .call(
                get(&format!("/bp/api/v1/b/{i}"))
                    .header("authorization", bearer("bob@x.io", "app-secret"))
                    .body(full(Bytes::new()))
                    .unwrap(),
            )
            .await;
        assert_eq!(a.status, StatusCode::OK);
    }
    let forged = c
        .call(
            get("/bp/api/v1/forged")
                .header("authorization", bearer("mallory@x.io", "guess"))
                .body(full(Bytes::new()))
                .unwrap(),
        )
        .await;
    assert_eq!(forged.status, StatusCode::OK);
    assert_eq!(c.get("/outside").await.status, StatusCode::NOT_FOUND);
    websocket_session(&gate, "/bp/socket.io/?EIO=4&transport=websocket").await;
    let mut gate = gate;
    gate.trigger_stop();
    gate.wait_stopped().await;
    (gate, format!("127.0.0.1:{}", node.addr.port()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn summary_of_a_real_gate_trail_is_exact_from_dir_config_and_env() {
    let (gate, node) = real_trail().await;
    let dir = gate.audit_dir.clone();
    let check = |s: &Value| {
        assert_eq!(s["files"], 2, "the rotated file and audit.jsonl: {s:#}");
        assert_eq!(s["lines"], 9);
        assert_eq!(s["malformed"], 0);
        assert_eq!(s["requests"], 8);
        assert_eq!(s["status"]["1xx"], 1);
        assert_eq!(s["status"]["2xx"], 6);
        assert_eq!(s["status"]["4xx"], 1);
        assert_eq!(s["status"]["5xx"], 0);
        assert_eq!(s["outcomes"]["ok"], 7);
        assert_eq!(s["outcomes"]["rejected"], 1);
        let users = &s["users"]["counts"];
        assert_eq!(users["exact"], true);
        assert_eq!(users["distinct"], 2);
        assert_eq!(
            users["top"],
            serde_json::json!([{"user": "alice@x.io", "requests": 3}, {"user": "bob@x.io", "requests": 2}])
        );
        assert_eq!(s["users"]["anonymous"], 3);
        assert_eq!(s["users"]["sources"]["jwt"], 5);
        assert_eq!(s["users"]["sources"]["jwt_invalid"], 1);
        assert_eq!(
            s["client_ips"]["top"],
            serde_json::json!([{"ip": "127.0.0.1", "requests": 6}, {"ip": "127.0.0.7", "requests": 2}])
        );
        assert_eq!(
            s["reasons"],
            serde_json::json!([{"status": 404, "outcome": "rejected", "reason": "outside the base path", "count": 1}])
        );
        let nodes = s["nodes"].as_array().unwrap();
        assert_eq!(nodes.len(), 2, "{nodes:?}");
        assert_eq!(nodes[0]["node"], node.as_str());
        assert_eq!(nodes[0]["requests"], 7);
        assert_eq!(nodes[0]["5xx"], 0);
        assert!(nodes[0]["p50_ms"].as_f64().unwrap() > 0.0);
        assert!(nodes[1]["node"].is_null(), "bpgate's own 404");
        assert_eq!(nodes[1]["requests"], 1);
        assert_eq!(nodes[1]["4xx"], 1);
        let t = &s["tunnels"];
        assert_eq!(
            (t["opened"].as_u64(), t["closed"].as_u64()),
            (Some(1), Some(1))
        );
        let closers: u64 = t["closed_by"]
            .as_object()
            .unwrap()
            .values()
            .map(|v| v.as_u64().unwrap())
            .sum();
        assert_eq!(closers, 1);
        assert!(t["bytes_up"].as_u64().unwrap() > 5 && t["bytes_down"].as_u64().unwrap() > 5);
    };
    check(&summary(&[], &[&dir]));
    // The configured trail: --config, then BPGATE_AUDIT_DIR with the built-in defaults.
    let cfg = gate.dir.path().join("bpgate.toml");
    let r = run_cmd(
        bpgate()
            .args(["audit", "summary", "--format", "json", "--config"])
            .arg(&cfg),
    );
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    check(&serde_json::from_str(&r.stdout).unwrap());
    let elsewhere = tempfile::tempdir().unwrap();
    let r = run_cmd(
        bpgate()
            .args(["audit", "summary", "--format", "json"])
            .current_dir(elsewhere.path())
            .env("BPGATE_AUDIT_DIR", &dir),
    );
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    check(&serde_json::from_str(&r.stdout).unwrap());
    // The same numbers in the report for people.
    let r = run(&["summary"], &[&dir]);
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    for want in [
        "requests   8",
        "alice@x.io",
        "127.0.0.7",
        "404 rejected",
        "outside the base path",
        "tunnels    1 opened, 1 closed",
        "tokens not verified: jwt_invalid 1",
    ] {
        assert!(
            r.stdout.contains(want),
            "{want:?} missing from\n{}",
            r.stdout
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tail_filters_a_real_gate_trail() {
    let (gate, _) = real_trail().await;
    let dir = gate.audit_dir.as_path();
    let all = tail_json(&[], &[dir]);
    assert_eq!(all.len(), 9);
    let ts: Vec<&str> = all.iter().map(|l| l["ts"].as_str().unwrap()).collect();
    let mut sorted = ts.clone();
    sorted.sort();
    assert_eq!(ts, sorted, "rotated file first, then audit.jsonl");
    let paths = |v: Vec<Value>| -> Vec<String> {
        v.iter()
            .map(|l| l["path"].as_str().unwrap_or("").to_string())
            .collect()
    };
    assert_eq!(
        paths(tail_json(&["--user", "ALICE@x.io"], &[dir])),
        ["/bp/api/v1/a/0", "/bp/api/v1/a/1", "/bp/api/v1/a/2"]
    );
    assert_eq!(
        paths(tail_json(&["--ip", "127.0.0.7/32"], &[dir])),
        ["/bp/api/v1/b/0", "/bp/api/v1/b/1"]
    );
    assert_eq!(paths(tail_json(&["--status", "4xx"], &[dir])), ["/outside"]);
    assert_eq!(
        paths(tail_json(&["--outcome", "rejected"], &[dir])),
        ["/outside"]
    );
    let ws = tail_json(&["--path", "/bp/socket.io"], &[dir]);
    assert_eq!(ws.len(), 2);
    assert_eq!(
        (ws[0]["status"].as_u64(), ws[1]["event"].as_str()),
        (Some(101), Some("tunnel_close"))
    );
    assert_eq!(
        tail_json(&["--user", "-", "--status", "2xx"], &[dir]).len(),
        1,
        "the forged token's request"
    );
    // Default: the last 10 lines, pretty, aligned, no colour into a pipe.
    let r = run(&["tail"], &[dir]);
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    let lines: Vec<&str> = r.stdout.lines().collect();
    assert_eq!(lines.len(), 9, "{}", r.stdout);
    assert!(!r.stdout.contains('\x1b'));
    let bob = lines.iter().find(|l| l.contains("/bp/api/v1/b/0")).unwrap();
    assert!(
        bob.contains(" 200 GET ")
            && bob.contains("bob@x.io")
            && bob.contains("127.0.0.7")
            && bob.ends_with(" ok"),
        "{bob}"
    );
    assert!(lines.iter().any(|l| l.contains("(jwt_invalid)")));
    assert!(lines
        .iter()
        .any(|l| l.contains("rejected: outside the base path")));
    let col = |l: &str, pat: &str| l.find(pat).unwrap();
    let (a, b) = (lines[0], lines[4]);
    assert_eq!(
        col(a, "127.0.0."),
        col(b, "127.0.0."),
        "columns align:\n{a}\n{b}"
    );
    let two = run(&["tail", "-n", "2", "--format", "json"], &[dir]);
    assert_eq!(two.stdout.lines().count(), 2);
    assert!(two.stdout.lines().last().unwrap().contains("tunnel_close"));
    let coloured = run(&["tail", "--color", "always", "--status", "4xx"], &[dir]);
    assert!(
        coloured.stdout.contains("\x1b[33m404\x1b[0m"),
        "{:?}",
        coloured.stdout
    );
}

// === hand-made trails ===

fn line(ts: &str, extra: &str) -> String {
    format!("{{\"ts\":\"{ts}\",\"event\":\"request\",{extra}}}\n")
}

/// A request line; positional so the fixtures below read as a table.
#[allow(clippy::too_many_arguments)]
fn req(
    ts: &str,
    ip: &str,
    user: Option<&str>,
    path: &str,
    status: u16,
    dur: &str,
    node: Option<&str>,
    outcome: &str,
) -> String {
    let q = |v: Option<&str>| v.map_or("null".to_string(), |v| format!("\"{v}\""));
    line(
        ts,
        &format!(
            "\"client_ip\":\"{ip}\",\"user\":{},\"method\":\"GET\",\"path\":\"{path}\",\"status\":{status},\"bytes_in\":0,\"bytes_out\":100,\"duration_ms\":{dur},\"upstream\":{},\"outcome\":\"{outcome}\"",
            q(user),
            q(node)
        ),
    )
}

/// Four files as the writer names them, one pair rotated within the same second (`-1` is the
/// later one), a torn line glued to the next record, garbage, unknown fields and values, and
/// an unterminated last line.
fn hand_made() -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    let w = |name: &str, text: &str| std::fs::write(d.path().join(name), text).unwrap();
    w(
        "audit-20261124T090000Z.jsonl",
        &(req(
            "2026-11-24T08:10:00.000Z",
            "10.9.0.1",
            None,
            "/old",
            200,
            "1.000",
            Some("n1"),
            "ok",
        ) + &req(
            "2026-11-24T08:20:00.000Z",
            "10.9.0.1",
            None,
            "/old",
            500,
            "2.000",
            Some("n1"),
            "upstream_error",
        )),
    );
    w(
        "audit-20261124T100000Z.jsonl",
        &(req("2026-11-24T09:10:00.000Z", "10.1.0.5", Some("alice@x.io"), "/api/a", 200, "0.050", Some("n1"), "ok")
            + "{\"ts\":\"2026-11-24T09:20:00.000Z\",\"event\":\"requ"
            + &req("2026-11-24T09:21:00.000Z", "10.1.0.6", Some("alice@x.io"), "/api/b", 200, "0.070", Some("n2"), "ok")
            + "this is not json\n\n"
            + &line(
                "2026-11-24T09:30:00.000Z",
                "\"client_ip\":\"10.2.0.1\",\"user\":null,\"method\":\"OPTIONS\",\"path\":\"/api/c\",\"status\":403,\"duration_ms\":0.010,\"upstream\":null,\"outcome\":\"rejected\",\"reason\":\"CORS preflight refused\"",
            )
            + &line(
                "2026-11-24T09:40:00.000Z",
                "\"client_ip\":\"10.2.0.1\",\"user\":null,\"path\":\"/api/d\",\"status\":503,\"duration_ms\":0.020,\"upstream\":\"n2\",\"outcome\":\"shed\",\"reason\":\"load shed\",\"priority\":{\"class\":\"low\"},\"sticky\":\"failover\"",
            )),
    );
    w(
        "audit-20261124T100000Z-1.jsonl",
        &req(
            "2026-11-24T10:00:00.500Z",
            "10.1.0.5",
            Some("bob@x.io"),
            "/api/e",
            200,
            "0.090",
            Some("n1"),
            "ok",
        ),
    );
    w(
        "audit.jsonl",
        &(req("2026-11-24T10:30:00.000Z", "10.1.0.5", Some("bob@x.io"), "/api/f", 200, "0.030", Some("n1"), "ok")
            + &line(
                "2026-11-24T10:31:00.000Z",
                "\"client_ip\":\"10.1.0.5\",\"user\":\"bob@x.io\",\"method\":\"GET\",\"path\":\"/socket.io/\",\"status\":101,\"duration_ms\":0.040,\"upstream\":\"n1\",\"outcome\":\"ok\"",
            )
            + &line(
                "2026-11-24T10:40:00.000Z",
                "\"client_ip\":\"10.1.0.5\",\"user\":\"bob@x.io\",\"method\":\"GET\",\"path\":\"/socket.io/\",\"status\":101,\"bytes_in\":70,\"bytes_out\":900,\"duration_ms\":540000.000,\"upstream\":\"n1\",\"outcome\":\"ok\",\"closed_by\":\"client\"",
            )
            .replace("\"event\":\"request\"", "\"event\":\"tunnel_close\"")
            + "{\"ts\":\"2026-11-24T10:41:00.000Z\",\"event\":\"request\",\"sta"),
    );
    d
}

#[test]
fn hand_made_trail_in_time_order_with_torn_and_malformed_lines_counted() {
    let d = hand_made();
    let all = tail_json(&[], &[d.path()]);
    let ts: Vec<&str> = all.iter().map(|l| l["ts"].as_str().unwrap()).collect();
    assert_eq!(
        ts,
        [
            "2026-11-24T08:10:00.000Z",
            "2026-11-24T08:20:00.000Z",
            "2026-11-24T09:10:00.000Z",
            "2026-11-24T09:21:00.000Z",
            "2026-11-24T09:30:00.000Z",
            "2026-11-24T09:40:00.000Z",
            "2026-11-24T10:00:00.500Z",
            "2026-11-24T10:30:00.000Z",
            "2026-11-24T10:31:00.000Z",
            "2026-11-24T10:40:00.000Z",
        ],
        "time order across the same-second rotation (-1 after the plain name)"
    );
    assert!(
        all[5]["priority"]["class"] == "low",
        "json output is the line as written"
    );
    let r = run(&["tail", "-n", "all"], &[d.path()]);
    assert!(
        r.stderr
            .contains("audit-20261124T100000Z.jsonl: line 2: torn line")
            && r.stderr.contains("line 3: not an audit record")
            && r.stderr
                .contains("audit.jsonl: line 4: not an audit record")
            && r.stderr
                .contains("3 malformed line(s) of 12 read (1 of them torn and glued to a record"),
        "{}",
        r.stderr
    );
    assert_eq!(r.code, Some(0), "malformed lines are reported, not fatal");

    let s = summary(&[], &[d.path()]);
    assert_eq!(s["files"], 4);
    assert_eq!(s["lines"], 12);
    assert_eq!(s["malformed"], 3);
    assert_eq!(s["recovered"], 1);
    assert_eq!(s["requests"], 9);
    assert_eq!(
        s["status"],
        serde_json::json!({"1xx": 1, "2xx": 5, "3xx": 0, "4xx": 1, "5xx": 2, "other": 0})
    );
    assert_eq!(
        s["outcomes"],
        serde_json::json!({"ok": 6, "rejected": 1, "shed": 1, "upstream_error": 1})
    );
    assert_eq!(
        s["users"]["counts"]["top"],
        serde_json::json!([{"user": "bob@x.io", "requests": 3}, {"user": "alice@x.io", "requests": 2}])
    );
    assert_eq!(s["users"]["anonymous"], 4);
    assert_eq!(
        s["client_ips"]["top"][0],
        serde_json::json!({"ip": "10.1.0.5", "requests": 4})
    );
    assert_eq!(s["client_ips"]["distinct"], 4);
    assert_eq!(
        s["reasons"],
        serde_json::json!([
            {"status": 403, "outcome": "rejected", "reason": "CORS preflight refused", "count": 1},
            {"status": 503, "outcome": "shed", "reason": "load shed", "count": 1},
        ])
    );
    let n1 = &s["nodes"][0];
    assert_eq!(n1["node"], "n1");
    assert_eq!(
        (
            n1["requests"].as_u64(),
            n1["5xx"].as_u64(),
            n1["upstream_errors"].as_u64()
        ),
        (Some(6), Some(1), Some(1))
    );
    // n1 durations (the 101 excluded): 1000, 2000, 50, 90, 30 µs.
    assert_eq!(n1["p50_ms"], 0.09);
    assert_eq!(n1["max_ms"], 2.0);
    let n2 = &s["nodes"][1];
    assert_eq!(
        (
            n2["node"].as_str(),
            n2["requests"].as_u64(),
            n2["failover"].as_u64()
        ),
        (Some("n2"), Some(2), Some(1))
    );
    assert_eq!(
        (n2["p50_ms"].as_f64(), n2["p95_ms"].as_f64()),
        (Some(0.02), Some(0.07))
    );
    assert!(s["nodes"][2]["node"].is_null());
    let t = &s["tunnels"];
    assert_eq!(
        (
            t["opened"].as_u64(),
            t["closed"].as_u64(),
            t["bytes_up"].as_u64(),
            t["bytes_down"].as_u64()
        ),
        (Some(1), Some(1), Some(70), Some(900))
    );
    assert_eq!(t["closed_by"], serde_json::json!({"client": 1}));
    assert_eq!(t["max_ms"], 540000.0);
    assert_eq!(t["p50_ms"], 540000.0, "one value is reported exactly");
}

#[test]
fn hand_made_trail_filters_and_time_window() {
    let d = hand_made();
    let p = [d.path()];
    let count = |args: &[&str]| tail_json(args, &p).len();
    assert_eq!(
        count(&["--user", "ALICE@X.IO,bob@x.io"]),
        6,
        "tunnel_close lines carry the user too"
    );
    assert_eq!(count(&["--ip", "10.1.0.0/16"]), 6);
    assert_eq!(count(&["--ip", "10.2.0.1"]), 2);
    assert_eq!(count(&["--status", "4xx,5xx"]), 3);
    assert_eq!(count(&["--status", "503"]), 1);
    assert_eq!(count(&["--path", "/api"]), 6);
    assert_eq!(count(&["--path", "/old", "--path", "/socket.io/"]), 4);
    assert_eq!(count(&["--outcome", "shed"]), 1);
    assert_eq!(count(&["--user", "bob@x.io", "--path", "/socket.io"]), 2);
    // The window, in RFC 3339 with an offset; the 09:00 rotation ends before it and is not read.
    let win = [
        "--since",
        "2026-11-24T10:15:00+01:00",
        "--until",
        "2026-11-24T10:35:00Z",
    ];
    assert_eq!(count(&win), 6);
    let s = summary(&win, &p);
    assert_eq!(s["requests"], 6);
    assert_eq!(s["files_skipped_by_time"], 1);
    assert_eq!(s["window"]["since"], "2026-11-24T09:15:00.000Z");
    assert_eq!(s["window"]["first"], "2026-11-24T09:21:00.000Z");
    assert_eq!(s["window"]["last"], "2026-11-24T10:31:00.000Z");
    // With --since, tail prints every matching line unless -n says otherwise.
    let r = run(
        &[
            "tail",
            "--format",
            "json",
            "--since",
            "2026-11-24T09:00:00Z",
        ],
        &p,
    );
    assert_eq!(r.stdout.lines().count(), 8);
    let r = run(
        &[
            "tail",
            "-n",
            "3",
            "--format",
            "json",
            "--since",
            "2026-11-24T09:00:00Z",
        ],
        &p,
    );
    assert_eq!(r.stdout.lines().count(), 3);
    // -n across files: the last 4 lines reach back into the rotated files.
    let r = run(&["tail", "-n", "4", "--format", "json"], &p);
    let last4: Vec<Value> = r
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let last4: Vec<&str> = last4.iter().map(|l| l["ts"].as_str().unwrap()).collect();
    assert_eq!(
        last4,
        [
            "2026-11-24T10:00:00.500Z",
            "2026-11-24T10:30:00.000Z",
            "2026-11-24T10:31:00.000Z",
            "2026-11-24T10:40:00.000Z"
        ]
    );

    // Ages: a line written 30 minutes ago is within `1h`, not within `10m`.
    let recent = tempfile::tempdir().unwrap();
    let ts = time::OffsetDateTime::now_utc() - time::Duration::minutes(30);
    let ts = ts
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    let f = recent.path().join("recent.jsonl");
    std::fs::write(
        &f,
        req(&ts, "10.0.0.1", None, "/now", 200, "1.0", None, "ok"),
    )
    .unwrap();
    assert_eq!(tail_json(&["--since", "1h"], &[&f]).len(), 1);
    assert_eq!(tail_json(&["--since", "10m"], &[&f]).len(), 0);
    assert_eq!(tail_json(&["--until", "10m"], &[&f]).len(), 1);

    // Named files, in any order, are read in time order; stdin too.
    let rot = d.path().join("audit-20261124T100000Z-1.jsonl");
    let first = d.path().join("audit-20261124T090000Z.jsonl");
    let both = tail_json(&[], &[&rot, &first]);
    assert_eq!(both[0]["path"], "/old");
    assert_eq!(both[2]["path"], "/api/e");
    let mut child = bpgate()
        .args(["audit", "summary", "--format", "json", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(&std::fs::read(&first).unwrap())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let s: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (s["requests"].as_u64(), s["status"]["5xx"].as_u64()),
        (Some(2), Some(1))
    );
}

#[test]
fn exit_codes_usage_2_unreadable_1() {
    let d = hand_made();
    let p = d.path();
    for bad in [
        &["tail", "--status", "6xx"][..],
        &["tail", "--ip", "10.0.0.0/40"],
        &["tail", "--since", "last tuesday"],
        &["tail", "--format", "yaml"],
        &[
            "summary",
            "--since",
            "2026-11-24T10:00:00Z",
            "--until",
            "2026-11-24T09:00:00Z",
        ],
        &["tail", "-f", "--until", "1h"],
        &["tail", "-n", "many"],
        &["frobnicate"],
    ] {
        let r = run(bad, &[p]);
        assert_eq!(r.code, Some(2), "{bad:?}: {}", r.stderr);
        assert!(!r.stderr.is_empty());
    }
    let r = run(&["summary"], &[&p.join("nope.jsonl")]);
    assert_eq!(r.code, Some(1));
    assert!(r.stderr.contains("nope.jsonl"), "{}", r.stderr);
    // One unreadable file among readable ones: the rest is still summarised, exit 1.
    let r = run(
        &["summary", "--format", "json"],
        &[p, &p.join("nope.jsonl")],
    );
    assert_eq!(r.code, Some(1));
    let s: Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(
        (s["requests"].as_u64(), s["unreadable_files"].as_u64()),
        (Some(9), Some(1))
    );
    // The configured directory does not exist: say which key and where it came from.
    let elsewhere = tempfile::tempdir().unwrap();
    let r = run_cmd(
        bpgate()
            .args(["audit", "summary"])
            .current_dir(elsewhere.path())
            .env("BPGATE_AUDIT_DIR", elsewhere.path().join("missing")),
    );
    assert_eq!(r.code, Some(1));
    assert!(
        r.stderr.contains("audit.dir") && r.stderr.contains("BPGATE_AUDIT_DIR"),
        "{}",
        r.stderr
    );
    // An invalid configuration is a configuration error.
    let cfg = elsewhere.path().join("c.toml");
    std::fs::write(&cfg, "[audit]\ndri = \"x\"\n").unwrap();
    let r = run_cmd(bpgate().args(["audit", "tail", "--config"]).arg(&cfg));
    assert_eq!(r.code, Some(2), "{}", r.stderr);
    // A file that is not a trail at all is read, reported, and does not crash the tool.
    let junk = elsewhere.path().join("junk.jsonl");
    let mut bytes = vec![0xffu8, 0xfe, b'\n', b'{', b'"'];
    bytes.extend(std::iter::repeat_n(b'a', 5 << 20));
    bytes.extend(b"\n[1,2]\n");
    std::fs::write(&junk, bytes).unwrap();
    let r = run(&["summary", "--format", "json"], &[&junk]);
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    let s: Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(
        (s["lines"].as_u64(), s["malformed"].as_u64()),
        (Some(3), Some(3))
    );
    assert!(r.stderr.contains("longer than 4 MiB"), "{}", r.stderr);
}

#[test]
fn colour_only_when_asked_or_on_a_terminal_and_never_with_no_color() {
    let d = hand_made();
    let p = [d.path()];
    let plain = run(&["tail", "--status", "5xx"], &p);
    assert!(!plain.stdout.contains('\x1b'), "a pipe gets no colour");
    let always = run(&["tail", "--status", "5xx", "--color", "always"], &p);
    assert!(
        always.stdout.contains("\x1b[31m500\x1b[0m"),
        "{:?}",
        always.stdout
    );
    let never = run_cmd(
        bpgate()
            .args(["audit", "tail", "--status", "5xx", "--color", "auto"])
            .args(p)
            .env("NO_COLOR", "1"),
    );
    assert!(!never.stdout.contains('\x1b'));
    // Terminal escapes inside values are neutralised in the pretty output.
    let evil = d.path().join("evil.jsonl");
    std::fs::write(
        &evil,
        req(
            "2026-11-24T11:00:00.000Z",
            "10.0.0.1",
            Some("x\\u001b]0;pwned\\u0007"),
            "/p",
            200,
            "1.0",
            None,
            "ok",
        ),
    )
    .unwrap();
    let r = run(&["tail", "--color", "always"], &[&evil]);
    assert!(
        r.stdout.contains("x?]0;pwned?") && !r.stdout.contains("\x1b]"),
        "{:?}",
        r.stdout
    );
}

#[test]
fn output_closed_early_ends_quietly() {
    let d = tempfile::tempdir().unwrap();
    let f = d.path().join("big.jsonl");
    let one = req(
        "2026-11-24T11:00:00.000Z",
        "10.0.0.1",
        None,
        "/p",
        200,
        "1.0",
        None,
        "ok",
    );
    std::fs::write(&f, one.repeat(50_000)).unwrap();
    let mut child = bpgate()
        .args(["audit", "tail", "-n", "all"])
        .arg(&f)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut first = String::new();
    out.read_line(&mut first).unwrap();
    assert!(first.contains("/p"));
    drop(out);
    let done = child.wait_with_output().unwrap();
    assert!(done.status.success(), "{:?}", done.status);
    assert!(
        done.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&done.stderr)
    );
}

// === following ===

/// A running `bpgate audit tail -f` whose stdout lines arrive on a channel.
struct Follow {
    child: std::process::Child,
    lines: mpsc::Receiver<String>,
    /// What it tells the operator on stderr (`… was truncated; …`).
    notes: mpsc::Receiver<String>,
}

impl Follow {
    fn start(args: &[&str], path: &Path) -> Follow {
        let mut child = bpgate()
            .args(["audit", "tail", "-f", "--format", "json"])
            .args(args)
            .arg(path)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let lines_of = |pipe: Box<dyn std::io::Read + Send>| {
            let (tx, rx) = mpsc::channel();
            std::thread::spawn(move || {
                for l in std::io::BufReader::new(pipe).lines() {
                    let Ok(l) = l else { break };
                    if tx.send(l).is_err() {
                        break;
                    }
                }
            });
            rx
        };
        let lines = lines_of(Box::new(child.stdout.take().unwrap()));
        let notes = lines_of(Box::new(child.stderr.take().unwrap()));
        Follow {
            child,
            lines,
            notes,
        }
    }

    /// Waits (15 s at most) for a note on stderr containing `needle`.
    fn note(&self, needle: &str) {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.notes.recv_timeout(left) {
                Ok(n) if n.contains(needle) => return,
                Ok(_) => {}
                Err(_) => panic!("the follower never said {needle:?}"),
            }
        }
    }

    /// Waits (15 s at most) until the follower has `path` open (Linux: `/proc/PID/fd`).
    fn holds(&self, path: &Path) {
        let fds = PathBuf::from(format!("/proc/{}/fd", self.child.id()));
        let path = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let open = std::fs::read_dir(&fds)
                .map(|rd| {
                    rd.filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
                        .any(|l| l == path)
                })
                .unwrap_or(false);
            if open {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the follower never opened {}",
                path.display()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The `path` of each line received until `n` have arrived (or 15 s passed).
    fn paths(&self, n: usize) -> Vec<String> {
        let deadline = Instant::now() + Duration::from_secs(15);
        let mut got = Vec::new();
        while got.len() < n {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) => {
                    let v: Value = serde_json::from_str(&l).unwrap_or_else(|e| panic!("{e}: {l}"));
                    got.push(v["path"].as_str().unwrap_or("").to_string());
                }
                Err(_) => break,
            }
        }
        got
    }

    /// Nothing more arrives within `d`.
    fn quiet(&self, d: Duration) -> Vec<String> {
        let mut extra = Vec::new();
        while let Ok(l) = self.lines.recv_timeout(d) {
            extra.push(l);
        }
        extra
    }
}

impl Drop for Follow {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn append(path: &Path, text: &str) {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap();
    f.write_all(text.as_bytes()).unwrap();
}

fn at(path: &str) -> String {
    req(
        "2026-11-24T12:00:00.000Z",
        "10.0.0.1",
        None,
        path,
        200,
        "1.0",
        None,
        "ok",
    )
}

#[test]
fn follow_across_rename_rotation_replacement_truncation_and_a_late_writer() {
    let d = tempfile::tempdir().unwrap();
    let cur = d.path().join("audit.jsonl");
    // History ends with a line still being written: it is printed once it is whole.
    let h4 = at("/h4");
    append(&cur, &(at("/h1") + &at("/h2") + &at("/h3") + &h4[..30]));
    let tail = Follow::start(&["-n", "2"], d.path());
    assert_eq!(
        tail.paths(2),
        ["/h2", "/h3"],
        "history: the last 2 whole lines"
    );
    append(&cur, &h4[30..]);
    assert_eq!(tail.paths(1), ["/h4"]);

    // A line written in two pieces is printed once, whole. (The pause gives the follower a
    // chance to poll between the pieces; it is not needed for the outcome.)
    let l = at("/split");
    append(&cur, &l[..20]);
    std::thread::sleep(Duration::from_millis(300));
    append(&cur, &l[20..]);
    assert_eq!(tail.paths(1), ["/split"]);

    // bpgate's rotation: rename, then a new audit.jsonl; a line lands in each just around it.
    append(&cur, &at("/before-rename"));
    let rotated = d.path().join("audit-20261124T120000Z.jsonl");
    std::fs::rename(&cur, &rotated).unwrap();
    append(&cur, &at("/after-rename"));
    assert_eq!(tail.paths(2), ["/before-rename", "/after-rename"]);

    // Two of bpgate's rotations in quick succession (a size cap under load): the file in the
    // middle lived shorter than a poll and is found by its rotated name.
    append(&cur, &at("/x"));
    std::fs::rename(&cur, d.path().join("audit-20261124T120001Z.jsonl")).unwrap();
    append(&cur, &at("/y"));
    std::fs::rename(&cur, d.path().join("audit-20261124T120001Z-1.jsonl")).unwrap();
    append(&cur, &at("/z"));
    assert_eq!(tail.paths(3), ["/x", "/y", "/z"]);

    // logrotate without copytruncate: the file is moved, bpgate writes on into the moved file
    // until POST /audit/reopen; those lines are not lost.
    let moved = d.path().join("audit.jsonl.1");
    std::fs::rename(&cur, &moved).unwrap();
    append(&cur, &at("/new-file"));
    assert_eq!(tail.paths(1), ["/new-file"]);
    append(&moved, &at("/late-in-moved-file"));
    assert_eq!(tail.paths(1), ["/late-in-moved-file"]);

    // Replaced by another file (written aside, renamed over).
    let tmp = d.path().join("tmp");
    std::fs::write(&tmp, at("/replaced")).unwrap();
    std::fs::rename(&tmp, &cur).unwrap();
    assert_eq!(tail.paths(1), ["/replaced"]);

    // copytruncate: emptied in place, then written again.
    std::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(&cur)
        .unwrap();
    tail.note("was truncated");
    append(&cur, &at("/after-truncate"));
    assert_eq!(tail.paths(1), ["/after-truncate"]);

    // Deleted, then created again later. (The pause lets the follower poll while the name is
    // missing; it is not needed for the outcome: a new file is a new inode, or shorter.)
    std::fs::remove_file(&cur).unwrap();
    std::thread::sleep(Duration::from_millis(500));
    append(&cur, &at("/recreated"));
    assert_eq!(tail.paths(1), ["/recreated"]);
    assert!(
        tail.quiet(Duration::from_millis(700)).is_empty(),
        "no line twice"
    );
}

#[test]
fn follow_applies_filters_and_waits_for_a_missing_file() {
    let d = tempfile::tempdir().unwrap();
    let tail = Follow::start(&["--status", "5xx"], d.path());
    tail.note("does not exist yet; waiting for it");
    let cur = d.path().join("audit.jsonl");
    append(&cur, &at("/ok"));
    append(
        &cur,
        &req(
            "2026-11-24T12:00:01.000Z",
            "10.0.0.1",
            None,
            "/bad",
            502,
            "1.0",
            None,
            "upstream_error",
        ),
    );
    assert_eq!(tail.paths(1), ["/bad"]);
    assert!(tail.quiet(Duration::from_millis(500)).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follow_a_real_gate_through_admin_rotate_and_reopen() {
    init();
    let node = Node::start("n", echo()).await;
    let gate = Gate::builder()
        .upstream(node.url())
        .toml("[health]\nenabled = false")
        .start()
        .await;
    let dir: PathBuf = gate.audit_dir.clone();
    let mut tail = Some(Follow::start(&[], &dir));
    // The follower has opened audit.jsonl (empty history) before traffic starts.
    let (t, file) = (tail.take().unwrap(), dir.join("audit.jsonl"));
    tail = Some(
        tokio::task::spawn_blocking(move || {
            t.holds(&file);
            t
        })
        .await
        .unwrap(),
    );
    let mut c = Client::h1(&gate).await;
    let mut sent = Vec::new();
    let mut got = Vec::new();
    for round in 0..4 {
        for i in 0..10 {
            let p = format!("/r{round}/{i}");
            assert_eq!(c.get(&p).await.status, StatusCode::OK);
            sent.push(p);
        }
        gate.gw.shared().audit.as_ref().unwrap().flush();
        match round {
            // Two rotations in a row, usually within one second (the file between them is then
            // named `…Z-1.jsonl`) and quicker than the follower polls.
            0 => assert_eq!(gate.admin_post("/audit/rotate").await.0, StatusCode::OK),
            1 => assert_eq!(gate.admin_post("/audit/rotate").await.0, StatusCode::OK),
            2 => {
                // logrotate's move, then bpgate's reopen; logrotate runs daily, so the
                // follower has long seen the file it moves.
                let t = tail.take().unwrap();
                let (t, lines) = tokio::task::spawn_blocking(move || {
                    let l = t.paths(30);
                    (t, l)
                })
                .await
                .unwrap();
                got.extend(lines);
                tail = Some(t);
                std::fs::rename(dir.join("audit.jsonl"), dir.join("audit.jsonl.1")).unwrap();
                assert_eq!(gate.admin_post("/audit/reopen").await.0, StatusCode::OK);
            }
            _ => {}
        }
    }
    let t = tail.take().unwrap();
    let (rest, extra) = tokio::task::spawn_blocking(move || {
        let rest = t.paths(10);
        let extra = t.quiet(Duration::from_millis(700));
        (rest, extra)
    })
    .await
    .unwrap();
    got.extend(rest);
    assert_eq!(
        got, sent,
        "every request once, in order, across rotations and a reopen"
    );
    assert!(extra.is_empty(), "{extra:?}");
    gate.stop().await;
}
