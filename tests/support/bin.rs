//! bpgate as the real binary (its own runtime, signals, `kill -9`), on ephemeral loopback
//! ports it reports in its JSON start-up log.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::BodyExt;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use super::{full, tls_connector, Client, Pki};

/// The binary with a config file in a temp dir (audit trail in `<dir>/audit`).
pub struct BinGate {
    pub child: Child,
    pub https: SocketAddr,
    pub admin: SocketAddr,
    pub pki: Arc<Pki>,
    pub audit_dir: PathBuf,
    pub dir: tempfile::TempDir,
    /// Everything the process logged to stderr so far.
    logs: Arc<Mutex<String>>,
}

impl BinGate {
    /// Starts `bpgate run` on a base config (TLS from a test PKI, the listeners on port 0,
    /// JSON logs at `info`, health checks off) plus `top` (top-level keys, e.g. `workers = 1`)
    /// and `audit` (keys of `[audit]`), and waits until it listens.
    pub fn start(upstream: &str, top: &str, audit: &str) -> BinGate {
        Self::start_in(tempfile::tempdir().unwrap(), upstream, top, audit)
    }

    /// The same in a given directory (to restart on the same audit trail).
    pub fn start_in(dir: tempfile::TempDir, upstream: &str, top: &str, audit: &str) -> BinGate {
        let pki = Arc::new(Pki::new());
        let audit_dir = dir.path().join("audit");
        let cfg = dir.path().join("bpgate.toml");
        std::fs::write(
            &cfg,
            format!(
                "{top}\n[listen]\nhttps = \"127.0.0.1:0\"\nadmin = \"127.0.0.1:0\"\n[tls]\ncert = {:?}\nkey = {:?}\n[upstream]\nurls = [\"{upstream}\"]\n[health]\nenabled = false\n[log]\nfilter = \"info\"\nformat = \"json\"\n[audit]\ndir = {:?}\n{audit}\n",
                pki.cert, pki.key, audit_dir
            ),
        )
        .unwrap();
        let mut c = Command::new(env!("CARGO_BIN_EXE_bpgate"));
        for (k, _) in std::env::vars() {
            if k.starts_with("BPGATE_") || k == "EXTERNAL_URL" || k == "BP_PRODUCTION" {
                c.env_remove(k);
            }
        }
        let mut child = c
            .current_dir(dir.path())
            .arg("--config")
            .arg(&cfg)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let logs = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let stderr = child.stderr.take().unwrap();
        let l = logs.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if line.contains("bpgate listening") {
                    let _ = tx.send(line.clone());
                }
                let mut l = l.lock().unwrap();
                l.push_str(&line);
                l.push('\n');
            }
        });
        let line = match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(l) => l,
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("bpgate did not start:\n{}", logs.lock().unwrap());
            }
        };
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        let addr = |k: &str| -> SocketAddr {
            // Logged as `Some(127.0.0.1:PORT)`.
            let s = v["fields"][k].as_str().unwrap();
            s.trim_start_matches("Some(")
                .trim_end_matches(')')
                .parse()
                .unwrap()
        };
        BinGate {
            https: addr("https"),
            admin: addr("admin"),
            child,
            pki,
            audit_dir,
            dir,
            logs,
        }
    }

    /// What the process logged so far.
    pub fn logs(&self) -> String {
        self.logs.lock().map(|l| l.clone()).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends `signal` (`KILL`, `TERM`, …) to the process.
    pub fn signal(&self, signal: &str) {
        let ok = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.pid().to_string())
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -{signal} failed");
    }

    /// Waits (bounded) for the process to end.
    pub fn wait(&mut self, limit: Duration) -> ExitStatus {
        let end = Instant::now() + limit;
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s;
            }
            assert!(
                Instant::now() < end,
                "bpgate did not exit within {limit:?}; its log:\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM and a bounded wait; returns the temp dir (audit files stay readable).
    pub fn stop(mut self) -> tempfile::TempDir {
        self.signal("TERM");
        let s = self.wait(Duration::from_secs(30));
        assert!(s.success(), "graceful exit: {s:?}");
        self.take_dir()
    }

    /// The temp dir, to keep it past this process (e.g. to restart on the same trail).
    pub fn take_dir(&mut self) -> tempfile::TempDir {
        std::mem::replace(&mut self.dir, tempfile::tempdir().unwrap())
    }

    pub async fn tls(&self, alpn: &[&[u8]]) -> TlsStream<TcpStream> {
        let tcp = TcpStream::connect(self.https).await.unwrap();
        tls_connector(&self.pki.ca_pem, alpn)
            .connect(
                rustls::pki_types::ServerName::try_from("localhost").unwrap(),
                tcp,
            )
            .await
            .unwrap()
    }

    pub async fn h1(&self) -> Client {
        Client::over(self.tls(&[b"http/1.1"]).await).await
    }

    pub async fn h2(&self) -> Client {
        Client::over(self.tls(&[b"h2"]).await).await
    }

    /// GET on the admin listener.
    pub async fn admin_get(&self, path: &str) -> (StatusCode, String) {
        let stream = TcpStream::connect(self.admin).await.unwrap();
        let (mut tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(conn);
        let req = Request::get(path)
            .header("host", "admin")
            .body(full(Bytes::new()))
            .unwrap();
        let resp = tx.send_request(req).await.unwrap();
        let status = resp.status();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8_lossy(&body).into_owned())
    }
}

impl Drop for BinGate {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
