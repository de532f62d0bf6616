//! `bpgate demo`: the one-minute tour. bpgate starts on the operator's configuration (the
//! default one on a fresh checkout) in front of two stand-in Botpress nodes that run in the same
//! process ([`node`]), prints what to try, and follows its own audit trail in the terminal, so
//! the first minute shows TLS, the sticky cookie, the node choice and the audit line.
//!
//! The demo changes only what it must, and says so in its banner: the node list (the
//! stand-ins, on free loopback ports), a certificate and an audit directory of its own in a
//! scratch directory removed at the end (so a real deployment's files get nothing), a sticky
//! secret when none is set, development mode, no `external_url`, and a quieter log. The
//! listeners stay the configuration's (`127.0.0.1:8443`, admin `127.0.0.1:9901`; `--listen`
//! and `--admin-listen` move them).

mod node;

use std::fmt::Write as _;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

pub use node::{StandIn, BOTPRESS_VERSION};

use crate::config::{self, Loaded, Mode, NodeConfig, Secret};
use crate::server::{Gateway, Listeners};

/// The stand-in nodes' names.
pub const NODE_NAMES: [&str; 2] = ["demo-a", "demo-b"];

/// Why the demo cannot start.
#[derive(Debug)]
pub struct DemoError(String);

impl std::fmt::Display for DemoError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for DemoError {}

/// One setting the demo changed: the key, its demo value, and what it replaced.
struct Change {
    key: &'static str,
    now: String,
    instead: Option<String>,
}

/// The scratch directory (certificate, audit trail, curl's cookie jar), removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn create() -> Result<Scratch, DemoError> {
        let dir = std::env::temp_dir().join(format!("bpgate-demo-{}", std::process::id()));
        // A directory left by an earlier process with the same pid is stale.
        let _ = std::fs::remove_dir_all(&dir);
        let mut b = std::fs::DirBuilder::new();
        #[cfg(unix)]
        {
            use std::os::unix::fs::DirBuilderExt;
            b.mode(0o700);
        }
        b.recursive(true)
            .create(&dir)
            .map_err(|e| DemoError(format!("cannot create {}: {e}", dir.display())))?;
        Ok(Scratch(dir))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The demo, prepared: its configuration and the stand-ins' sockets, nothing running yet.
pub struct Demo {
    /// The configuration the demo runs (the operator's, with the changes of the banner).
    pub loaded: Loaded,
    changes: Vec<Change>,
    nodes: Vec<(&'static str, std::net::TcpListener)>,
    scratch: Scratch,
}

impl Demo {
    /// Binds the stand-ins' ports, writes the demo's certificate and derives the demo's
    /// configuration from `loaded`.
    pub fn prepare(loaded: Loaded) -> Result<Demo, DemoError> {
        let scratch = Scratch::create()?;
        let dir = scratch.0.clone();
        let mut c = loaded.config.clone();
        let mut changes = Vec::new();

        let mut nodes = Vec::new();
        for name in NODE_NAMES {
            let l = std::net::TcpListener::bind(("127.0.0.1", 0))
                .and_then(|l| l.set_nonblocking(true).map(|_| l))
                .map_err(|e| DemoError(format!("cannot bind a loopback port for {name}: {e}")))?;
            nodes.push((name, l));
        }
        let mut list = Vec::new();
        c.upstream.urls = Vec::new();
        c.upstream.nodes = Vec::new();
        for (name, l) in &nodes {
            let addr = l
                .local_addr()
                .map_err(|e| DemoError(format!("{name}: {e}")))?;
            list.push(format!("{name} = http://{addr}"));
            c.upstream.nodes.push(NodeConfig {
                url: format!("http://{addr}"),
                name: Some(name.to_string()),
                weight: 1,
            });
        }
        let before: Vec<String> = loaded
            .derived
            .nodes
            .iter()
            .map(|n| n.authority.clone())
            .collect();
        changes.push(Change {
            key: "upstream",
            now: format!("{} (stand-in nodes in this process)", list.join(", ")),
            instead: Some(before.join(", ")),
        });

        let (cert_pem, key_pem) = crate::tls::generate_self_signed(
            &["localhost", "127.0.0.1", "::1"],
            crate::tls::DEV_CERT_CN,
        )
        .map_err(|e| DemoError(format!("cannot make the demo certificate: {e}")))?;
        let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
        write_file(&cert, cert_pem.as_bytes(), 0o644)?;
        write_file(&key, key_pem.as_bytes(), 0o600)?;
        changes.push(Change {
            key: "tls.cert, tls.key",
            now: format!(
                "{} and key.pem: self-signed for localhost, 127.0.0.1 and ::1, made for this run",
                cert.display()
            ),
            instead: Some(format!(
                "{}, {}",
                config::absolute(&c.tls.cert).display(),
                config::absolute(&c.tls.key).display()
            )),
        });
        c.tls.cert = cert;
        c.tls.key = key;

        let audit = dir.join("audit");
        changes.push(Change {
            key: "audit.dir",
            now: format!("{} (a real trail gets no demo lines)", audit.display()),
            instead: Some(if c.audit.enabled {
                config::absolute(&c.audit.dir).display().to_string()
            } else {
                "audit.enabled = false".to_string()
            }),
        });
        c.audit.dir = audit;
        c.audit.enabled = true;
        if c.audit.stdout {
            c.audit.stdout = false;
            changes.push(Change {
                key: "audit.stdout",
                now: "false (the demo prints the trail itself)".into(),
                instead: Some("true".into()),
            });
        }
        if c.sticky.secret.is_empty() {
            c.sticky.secret = Secret::new(crate::cluster::generate_secret());
            changes.push(Change {
                key: "sticky.secret",
                now: "random for this run".into(),
                instead: None,
            });
        }
        if c.mode == Mode::Production {
            c.mode = Mode::Development;
            changes.push(Change {
                key: "mode",
                now: "development (the demo's certificate is self-signed)".into(),
                instead: Some("production".into()),
            });
        }
        if c.external_url.is_some() || !c.base_path.path.is_empty() {
            let was = c
                .external_url
                .take()
                .unwrap_or_else(|| format!("base_path {}", c.base_path.path));
            c.base_path.path = String::new();
            changes.push(Change {
                key: "external_url",
                now: "unset: the stand-ins serve at the root".into(),
                instead: Some(was),
            });
        }
        let log_from_env = loaded
            .origins
            .of("log.filter")
            .is_some_and(|o| o.starts_with("env ") || o.starts_with("flag "));
        if !log_from_env && c.log.filter != "warn" {
            changes.push(Change {
                key: "log.filter",
                now: "warn (BPGATE_LOG sets it)".into(),
                instead: Some(std::mem::replace(&mut c.log.filter, "warn".into())),
            });
        }

        let derived = config::validate(&c, &loaded.origins).map_err(|e| {
            DemoError(format!(
                "the demo's configuration is not valid (a bpgate bug):\n{e}"
            ))
        })?;
        Ok(Demo {
            loaded: Loaded {
                config: c,
                derived,
                allow_insecure: false,
                ..loaded
            },
            changes,
            nodes,
            scratch,
        })
    }

    /// Runs the gateway and the stand-ins until `shutdown` resolves, printing the banner once
    /// bpgate is ready and the audit trail as it grows.
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), DemoError> {
        let Demo {
            loaded,
            changes,
            nodes,
            scratch,
        } = self;
        let source = loaded.source_lines().into_iter().next().unwrap_or_default();
        let audit_dir = loaded.config.audit.dir.clone();
        let gw = Gateway::start(loaded).map_err(|e| DemoError(e.to_string()))?;
        // A reload (SIGHUP is not handled here; `POST /reload` is) keeps the demo's settings.
        let frozen = gw.current().config.clone();
        gw.set_reloader(move |_| Ok((*frozen).clone()));
        let listeners = match Listeners::bind(&gw.current().config).await {
            Ok(l) => l,
            Err(e) => {
                gw.flush_audit();
                return Err(DemoError(format!("{e}\n  bpgate demo listens where the configuration says; move it with --listen 127.0.0.1:8444 --admin-listen 127.0.0.1:9902")));
            }
        };
        let (https, admin) = match (listeners.https.local_addr(), listeners.admin.local_addr()) {
            (Ok(h), Ok(a)) => (h, a),
            (Err(e), _) | (_, Err(e)) => {
                gw.flush_audit();
                return Err(DemoError(format!("cannot read the bound addresses: {e}")));
            }
        };
        let stop = gw.shared().shutdown.clone();
        for (name, l) in nodes {
            match tokio::net::TcpListener::from_std(l) {
                Ok(l) => {
                    tokio::spawn(StandIn::new(name, stop.clone()).serve(l));
                }
                Err(e) => {
                    gw.flush_audit();
                    return Err(DemoError(format!("{name}: {e}")));
                }
            }
        }

        // The follower opens audit.jsonl (created by the writer) before any request can arrive.
        let done = Arc::new(AtomicBool::new(false));
        let follower = {
            let (dir, done) = (audit_dir.clone(), done.clone());
            std::thread::Builder::new()
                .name("bpgate-demo-tail".into())
                .spawn(move || crate::audit::query::follow_pretty(&dir, &done))
        };
        let g = gw.clone();
        let serving = tokio::spawn(async move { g.run(listeners, shutdown).await });
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while !gw.ready() && tokio::time::Instant::now() < deadline && !serving.is_finished() {
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        if !serving.is_finished() {
            let c = &gw.current().config.config;
            let b = Banner {
                source: &source,
                changes: &changes,
                https,
                admin,
                scratch: &scratch.0,
                cookie_name: &c.sticky.cookie_name,
                admin_token: !c.admin.token.is_empty(),
                ready: gw.ready(),
            };
            print!("{}", b.render());
        }
        let _ = serving.await;
        // The gateway flushed its trail: let the follower print the last lines, then clean up.
        done.store(true, Ordering::Release);
        if let Ok(h) = follower {
            let _ = tokio::task::spawn_blocking(move || h.join()).await;
        }
        drop(scratch);
        Ok(())
    }
}

fn write_file(path: &Path, data: &[u8], mode: u32) -> Result<(), DemoError> {
    use std::io::Write;
    let mut o = std::fs::OpenOptions::new();
    o.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        o.mode(mode);
    }
    #[cfg(not(unix))]
    let _ = mode;
    o.open(path)
        .and_then(|mut f| f.write_all(data))
        .map_err(|e| DemoError(format!("cannot write {}: {e}", path.display())))
}

/// What the banner says.
struct Banner<'a> {
    source: &'a str,
    changes: &'a [Change],
    https: SocketAddr,
    admin: SocketAddr,
    scratch: &'a Path,
    cookie_name: &'a str,
    admin_token: bool,
    ready: bool,
}

/// `ip:port` as a URL authority a client on this machine can reach.
fn reachable(a: SocketAddr) -> String {
    match a.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => format!("127.0.0.1:{}", a.port()),
        IpAddr::V6(ip) if ip.is_unspecified() => format!("[::1]:{}", a.port()),
        _ => a.to_string(),
    }
}

impl Banner<'_> {
    fn render(&self) -> String {
        let mut o = String::new();
        let h = format!("https://{}", reachable(self.https));
        let a = format!("http://{}", reachable(self.admin));
        let jar = self.scratch.join("cookies");
        let jar = jar.display();
        let bearer = if self.admin_token {
            "-H \"Authorization: Bearer $BPGATE_ADMIN_TOKEN\" "
        } else {
            ""
        };
        let _ = writeln!(
            o,
            "bpgate demo: bpgate in front of two stand-in Botpress nodes ({} and {}), all in this process.",
            NODE_NAMES[0], NODE_NAMES[1]
        );
        let _ = writeln!(
            o,
            "A tour, not a deployment: a real one is `bpgate` (`cargo run --release`) with Botpress on :3000 or BPGATE_UPSTREAMS."
        );
        let _ = writeln!(o);
        let _ = writeln!(o, "  {}, with these demo changes:", self.source);
        for c in self.changes {
            match &c.instead {
                Some(was) => {
                    let _ = writeln!(o, "    {:<18} {}, instead of {was}", c.key, c.now);
                }
                None => {
                    let _ = writeln!(o, "    {:<18} {}", c.key, c.now);
                }
            }
        }
        let _ = writeln!(
            o,
            "  The demo's files in {} are removed when it stops (Ctrl-C).",
            self.scratch.display()
        );
        if !self.ready {
            let _ = writeln!(
                o,
                "  (no stand-in node passed its health check yet; answers may be 503 for a few seconds)"
            );
        }
        let _ = writeln!(o);
        let _ = writeln!(
            o,
            "  HTTPS   {h}/   HTTP/1.1 and HTTP/2; open it in a browser (accept the self-signed certificate): the demo page"
        );
        let _ = writeln!(
            o,
            "  admin   {a}/   the status page; {a}/metrics, {a}/upstreams"
        );
        let _ = writeln!(o);
        let _ = writeln!(o, "Try:");
        let _ = writeln!(o, "  # TLS, HTTP/2 and bpgate's security headers");
        let _ = writeln!(o, "  curl -vk {h}/version");
        let _ = writeln!(
            o,
            "  # the sticky cookie (Set-Cookie: {}=...) and the node it pins (\"node\" in the answer); run it twice: same node",
            self.cookie_name
        );
        let _ = writeln!(o, "  curl -k -i -c {jar} -b {jar} {h}/api/echo");
        let _ = writeln!(
            o,
            "  # drain {0}: clients without a cookie go to {1}; a cookie pinned to {0} stays there",
            NODE_NAMES[0], NODE_NAMES[1]
        );
        let _ = writeln!(
            o,
            "  curl -X POST {bearer}{a}/upstreams/{}/drain",
            NODE_NAMES[0]
        );
        let _ = writeln!(o, "  curl -k {h}/api/echo");
        let _ = writeln!(
            o,
            "  curl -X POST {bearer}{a}/upstreams/{}/undrain",
            NODE_NAMES[0]
        );
        let _ = writeln!(
            o,
            "  # socket.io through bpgate: the engine.io polling handshake, then a WebSocket (HTTP/1.1 Upgrade, 101)"
        );
        let _ = writeln!(o, "  curl -k '{h}/socket.io/?EIO=4&transport=polling'");
        let _ = writeln!(
            o,
            "  curl -k -i --http1.1 -N --max-time 3 -H 'Connection: Upgrade' -H 'Upgrade: websocket' -H 'Sec-WebSocket-Version: 13' -H 'Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==' '{h}/socket.io/?EIO=4&transport=websocket'"
        );
        let _ = writeln!(o);
        let _ = writeln!(
            o,
            "Audit trail (as `bpgate audit tail -f {}` prints it), one line per request and per closed WebSocket:",
            self.scratch.join("audit").display()
        );
        let _ = writeln!(
            o,
            "{:<24} {:>3} {:<7} {:<36} {:<22} {:<15} {:<16} {:>8} {:>6} outcome",
            "time", "st", "method", "path", "user", "client", "node", "duration", "bytes"
        );
        o
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn banner_names_the_changes_and_concrete_commands() {
        let changes = [
            Change {
                key: "upstream",
                now: "demo-a = http://127.0.0.1:5001, demo-b = http://127.0.0.1:5002".into(),
                instead: Some("127.0.0.1:3000".into()),
            },
            Change {
                key: "sticky.secret",
                now: "random for this run".into(),
                instead: None,
            },
        ];
        let b = Banner {
            source: "configuration file /x/config/bpgate.toml",
            changes: &changes,
            https: "0.0.0.0:8443".parse().unwrap(),
            admin: "127.0.0.1:9901".parse().unwrap(),
            scratch: Path::new("/tmp/bpgate-demo-1"),
            cookie_name: "bpgate_node",
            admin_token: false,
            ready: true,
        }
        .render();
        for want in [
            "configuration file /x/config/bpgate.toml, with these demo changes:",
            "upstream           demo-a = http://127.0.0.1:5001, demo-b = http://127.0.0.1:5002, instead of 127.0.0.1:3000",
            "sticky.secret      random for this run\n",
            "https://127.0.0.1:8443/",
            "curl -vk https://127.0.0.1:8443/version",
            "curl -k -i -c /tmp/bpgate-demo-1/cookies -b /tmp/bpgate-demo-1/cookies https://127.0.0.1:8443/api/echo",
            "curl -X POST http://127.0.0.1:9901/upstreams/demo-a/drain",
            "-H 'Upgrade: websocket'",
            "'https://127.0.0.1:8443/socket.io/?EIO=4&transport=websocket'",
        ] {
            assert!(b.contains(want), "missing {want:?} in:\n{b}");
        }
        assert!(!b.contains("Bearer"));
    }
}
