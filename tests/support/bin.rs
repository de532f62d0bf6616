//! bpgate as the real binary (its own runtime, signals, `kill -9`) serving a test config, on the
//! ephemeral loopback ports it logs at start ([`Proc`] runs it; a dropped one is killed).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitStatus;
use std::sync::Arc;
use std::time::Duration;

use http::StatusCode;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use super::binary::{bpgate, Proc};
use super::{tls_connector, Client, Pki};

/// The binary serving a config file in a temp dir (audit trail in `<dir>/audit`), with clients
/// for its listeners.
pub struct BinGate {
    proc: Option<Proc>,
    pub https: SocketAddr,
    pub admin: SocketAddr,
    pub pki: Arc<Pki>,
    pub audit_dir: PathBuf,
    pub dir: tempfile::TempDir,
}

impl BinGate {
    /// Starts `bpgate run` on a base config (TLS from a test PKI, the listeners on port 0,
    /// logs at `info`, health checks off) plus `top` (top-level keys, e.g. `workers = 1`) and
    /// `audit` (keys of `[audit]`), and waits until it listens.
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
                "{top}\n[listen]\nhttps = \"127.0.0.1:0\"\nadmin = \"127.0.0.1:0\"\n[tls]\ncert = {:?}\nkey = {:?}\n[upstream]\nurls = [\"{upstream}\"]\n[health]\nenabled = false\n[log]\nfilter = \"info\"\n[audit]\ndir = {:?}\n{audit}\n",
                pki.cert, pki.key, audit_dir
            ),
        )
        .unwrap();
        let mut proc = Proc::spawn(bpgate().current_dir(dir.path()).arg("--config").arg(&cfg));
        let (https, admin) = proc.listening(Duration::from_secs(30));
        BinGate {
            proc: Some(proc),
            https,
            admin,
            pki,
            audit_dir,
            dir,
        }
    }

    fn proc(&self) -> &Proc {
        self.proc.as_ref().expect("bpgate is running")
    }

    pub fn pid(&self) -> u32 {
        self.proc().pid()
    }

    /// Sends `signal` (`KILL`, `TERM`, …) to the process.
    pub fn signal(&self, signal: &str) {
        self.proc().signal(signal);
    }

    /// Waits (bounded) for the process to end.
    pub fn wait(&mut self, limit: Duration) -> ExitStatus {
        let proc = self.proc.take().expect("bpgate is running");
        proc.wait_exit(limit).status
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
        super::admin_call(self.admin, "GET", path).await
    }
}
