//! The real `bpgate` binary as a child process, with bounded waits: every wait has a deadline,
//! and a deadline missed kills the child (by its pid) and fails the test with what it printed.
//! A child still running when its [`Proc`] is dropped (a failed assertion) is killed too.

use std::io::Read;
use std::net::SocketAddr;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// `bpgate` with none of the caller's configuration variables, so a developer's environment
/// cannot change what a test sees.
pub fn bpgate() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_bpgate"));
    for (k, _) in std::env::vars() {
        if k.starts_with("BPGATE_") || k == "EXTERNAL_URL" || k == "BP_PRODUCTION" {
            c.env_remove(k);
        }
    }
    c
}

/// A running child whose stdout and stderr are collected as they come.
pub struct Proc {
    child: Child,
    out: Arc<Mutex<String>>,
    err: Arc<Mutex<String>>,
    readers: Vec<JoinHandle<()>>,
}

/// How a child ended.
#[derive(Debug)]
pub struct Ended {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

fn collect(mut r: impl Read + Send + 'static, into: Arc<Mutex<String>>) -> JoinHandle<()> {
    std::thread::spawn(move || {
        let mut buf = [0u8; 8192];
        loop {
            match r.read(&mut buf) {
                Ok(0) | Err(_) => return,
                Ok(n) => into
                    .lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n])),
            }
        }
    })
}

impl Proc {
    pub fn spawn(cmd: &mut Command) -> Proc {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn bpgate");
        let out = Arc::new(Mutex::new(String::new()));
        let err = Arc::new(Mutex::new(String::new()));
        let readers = vec![
            collect(child.stdout.take().unwrap(), out.clone()),
            collect(child.stderr.take().unwrap(), err.clone()),
        ];
        Proc {
            child,
            out,
            err,
            readers,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn stdout(&self) -> String {
        self.out.lock().unwrap().clone()
    }

    pub fn stderr(&self) -> String {
        self.err.lock().unwrap().clone()
    }

    /// Whether the child is still running.
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Waits until `cond(stdout, stderr)` holds; kills the child and fails the test when it does
    /// not within `timeout`, or when the child exits first.
    pub fn wait_for(
        &mut self,
        what: &str,
        timeout: Duration,
        cond: impl Fn(&str, &str) -> bool,
    ) -> (String, String) {
        let deadline = Instant::now() + timeout;
        loop {
            let (o, e) = (self.stdout(), self.stderr());
            if cond(&o, &e) {
                return (o, e);
            }
            if !self.running() {
                // Whatever it printed before it exited is in the pipes: read it all, look again.
                let end = self.finish();
                if cond(&end.stdout, &end.stderr) {
                    return (end.stdout, end.stderr);
                }
                panic!(
                    "bpgate exited ({}) before {what}\n--- stdout\n{}\n--- stderr\n{}",
                    end.status, end.stdout, end.stderr
                );
            }
            if Instant::now() > deadline {
                self.kill_and_fail(&format!("timed out after {timeout:?} waiting for {what}"));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The addresses bpgate logged as bound (`bpgate listening https=Some(…) … admin=Some(…)`),
    /// waiting for that line.
    pub fn listening(&mut self, timeout: Duration) -> (SocketAddr, SocketAddr) {
        let (_, err) = self.wait_for("the `bpgate listening` log line", timeout, |_, e| {
            e.contains("bpgate listening")
        });
        let line = err
            .lines()
            .find(|l| l.contains("bpgate listening"))
            .unwrap()
            .to_string();
        (logged_addr(&line, "https"), logged_addr(&line, "admin"))
    }

    /// A missed deadline: kills the child by its pid and fails the test with its output.
    fn kill_and_fail(&mut self, why: &str) -> ! {
        self.kill();
        let end = self.finish();
        panic!(
            "{why}; bpgate killed\n--- stdout\n{}\n--- stderr\n{}",
            end.stdout, end.stderr
        );
    }

    /// Sends `signal` (`TERM`, `HUP`, …) to the child's pid.
    pub fn signal(&self, signal: &str) {
        let ok = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.pid().to_string())
            .status()
            .expect("run kill")
            .success();
        assert!(ok, "kill -{signal} {} failed", self.pid());
    }

    /// Waits for the child to exit; kills it and fails the test when it does not within
    /// `timeout`.
    pub fn wait_exit(mut self, timeout: Duration) -> Ended {
        let deadline = Instant::now() + timeout;
        while self.running() {
            if Instant::now() > deadline {
                self.kill_and_fail(&format!("bpgate did not exit within {timeout:?}"));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.finish()
    }

    fn kill(&mut self) {
        // SIGKILL to this child's pid only.
        let _ = self.child.kill();
    }

    /// Reaps the child (it has exited or was killed) and collects the rest of its output.
    fn finish(&mut self) -> Ended {
        let status = self
            .child
            .wait()
            .expect("wait for an exited or killed child");
        for r in self.readers.drain(..) {
            let _ = r.join();
        }
        Ended {
            status,
            stdout: self.stdout(),
            stderr: self.stderr(),
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.running() {
            self.kill();
            let _ = self.child.wait();
        }
    }
}

/// `key=Some(127.0.0.1:1234)` in a text log line.
fn logged_addr(line: &str, key: &str) -> SocketAddr {
    let pat = format!("{key}=Some(");
    let start = line
        .find(&pat)
        .unwrap_or_else(|| panic!("no {key} in {line:?}"))
        + pat.len();
    let end = start + line[start..].find(')').unwrap();
    line[start..end]
        .parse()
        .unwrap_or_else(|e| panic!("{key} address in {line:?}: {e}"))
}

// === clients for a gate run as a process ===

/// Whom a TLS client trusts: a CA (PEM), or nobody and everything, like `curl -k`.
#[derive(Clone)]
pub enum Trust {
    Ca(String),
    Insecure,
}

/// Accepts any certificate (what `curl -k` does); for the demo's self-signed certificate.
#[derive(Debug)]
struct AcceptAny(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AcceptAny {
    fn verify_server_cert(
        &self,
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &[rustls::pki_types::CertificateDer<'_>],
        _: &rustls::pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &rustls::pki_types::CertificateDer<'_>,
        d: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &rustls::pki_types::CertificateDer<'_>,
        d: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// A TLS connection to `addr` (SNI `localhost`) offering `alpn`, from `local` when given.
pub async fn tls_to(
    addr: SocketAddr,
    trust: &Trust,
    alpn: &[&[u8]],
    local: Option<std::net::IpAddr>,
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    super::init();
    let connector = match trust {
        Trust::Ca(pem) => super::tls_connector(pem, alpn),
        Trust::Insecure => {
            let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
            let mut cfg = rustls::ClientConfig::builder()
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AcceptAny(provider)))
                .with_no_client_auth();
            cfg.alpn_protocols = alpn.iter().map(|a| a.to_vec()).collect();
            tokio_rustls::TlsConnector::from(Arc::new(cfg))
        }
    };
    let tcp = match local {
        Some(ip) => {
            let s = tokio::net::TcpSocket::new_v4().unwrap();
            s.bind(SocketAddr::new(ip, 0)).unwrap();
            s.connect(addr).await.unwrap()
        }
        None => tokio::net::TcpStream::connect(addr).await.unwrap(),
    };
    connector
        .connect(
            rustls::pki_types::ServerName::try_from("localhost").unwrap(),
            tcp,
        )
        .await
        .unwrap()
}

/// An HTTP/1.1 (`h2 = false`) or HTTP/2 client over a new TLS connection to `addr`.
pub async fn client(addr: SocketAddr, trust: &Trust, h2: bool) -> super::Client {
    let alpn: &[&[u8]] = if h2 { &[b"h2"] } else { &[b"http/1.1"] };
    let tls = tls_to(addr, trust, alpn, None).await;
    if h2 {
        assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    }
    super::Client::over(tls).await
}

/// Runs `cmd` to its end, bounded: a command that should exit on its own (a refusal, a
/// subcommand) and does not is killed and fails the test instead of hanging it.
pub fn run_to_exit(cmd: &mut Command, timeout: Duration) -> Ended {
    Proc::spawn(cmd).wait_exit(timeout)
}
