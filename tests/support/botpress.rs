//! A fake node that behaves like Botpress v12 (12.31.10) where a proxy can tell:
//!
//! - everything is mounted under `ROOT_PATH` (the path of `EXTERNAL_URL`); outside it, and on a
//!   path no Botpress router serves, the answer is 404 (`core/app/server.ts:240-242`);
//! - `GET /status` and `GET /version` are the probes (`server.ts:372-378`); `/status` can be
//!   made to hang, as it does when the NLU or messaging server it calls without a timeout hangs
//!   (`monitoring-service.ts:100-129`);
//! - while loading, every request gets `503 Botpress is loading` (`server.ts:306-322`);
//! - `GET {root}/` redirects to `{root}/admin` (`admin-router.ts:189`);
//! - Node closes a keep-alive connection idle for `httpServer.keepAliveTimeout`, 5 s by default
//!   (`server.ts:244-252`).
//!
//! The application routes (`/api/`, `/admin`, `/lite/`, `/assets/`, `/s/`, `/socket.io/`,
//! `/studio/`) are answered by a handler of the test's choosing, [`super::echo`] by default.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use tokio::net::TcpListener;

use super::{echo, full, BoxBody, Handler, Node, NodeCtx};

/// Node.js's (and Botpress's) default `keepAliveTimeout`.
pub const KEEP_ALIVE: Duration = Duration::from_secs(5);

/// How `GET /status` behaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Status {
    /// 200 with Botpress's JSON.
    Up = 0,
    /// Never answers (a hung NLU or messaging server behind it).
    Hang = 1,
}

/// What a test can change on a running fake Botpress.
pub struct State {
    pub root: String,
    loading: AtomicBool,
    status: AtomicU8,
    /// Probe requests answered (`/status` and `/version`).
    pub probes: AtomicU64,
    /// Application requests answered by the app handler.
    pub app_requests: AtomicU64,
}

impl State {
    pub fn set_loading(&self, on: bool) {
        self.loading.store(on, Ordering::SeqCst);
    }
    pub fn set_status(&self, s: Status) {
        self.status.store(s as u8, Ordering::SeqCst);
    }
    fn status(&self) -> Status {
        match self.status.load(Ordering::SeqCst) {
            1 => Status::Hang,
            _ => Status::Up,
        }
    }
}

/// A running fake Botpress: the node and its switches.
pub struct Botpress {
    pub node: Node,
    pub state: Arc<State>,
}

impl std::ops::Deref for Botpress {
    type Target = Node;
    fn deref(&self) -> &Node {
        &self.node
    }
}

impl Botpress {
    pub fn builder(name: &str) -> Builder {
        Builder {
            name: name.to_string(),
            root: String::new(),
            app: echo(),
            keep_alive: Some(KEEP_ALIVE),
            loading: false,
            status: Status::Up,
        }
    }

    /// A ready Botpress at the root path with the echo app.
    pub async fn start(name: &str) -> Botpress {
        Botpress::builder(name).start().await
    }
}

pub struct Builder {
    name: String,
    root: String,
    app: Handler,
    keep_alive: Option<Duration>,
    loading: bool,
    status: Status,
}

impl Builder {
    /// `ROOT_PATH`, e.g. `/botpress` (no trailing slash).
    pub fn root(mut self, root: &str) -> Self {
        self.root = root.to_string();
        self
    }
    /// The handler for application routes.
    pub fn app(mut self, h: Handler) -> Self {
        self.app = h;
        self
    }
    /// `httpServer.keepAliveTimeout`; `None` never closes an idle connection.
    pub fn keep_alive(mut self, d: Option<Duration>) -> Self {
        self.keep_alive = d;
        self
    }
    /// Start in the loading state (every request 503).
    pub fn loading(mut self) -> Self {
        self.loading = true;
        self
    }
    pub fn status(mut self, s: Status) -> Self {
        self.status = s;
        self
    }

    pub async fn start(self) -> Botpress {
        self.start_on(super::Port::reserve().listen()).await
    }

    pub async fn start_on(self, listener: TcpListener) -> Botpress {
        let state = Arc::new(State {
            root: self.root,
            loading: AtomicBool::new(self.loading),
            status: AtomicU8::new(self.status as u8),
            probes: AtomicU64::new(0),
            app_requests: AtomicU64::new(0),
        });
        let node = Node::start_with(
            &self.name,
            listener,
            handler(state.clone(), self.app),
            self.keep_alive,
        )
        .await;
        Botpress { node, state }
    }
}

const APP_ROUTES: &[&str] = &[
    "/api/",
    "/admin",
    "/lite/",
    "/assets/",
    "/s/",
    "/socket.io/",
    "/studio/",
];

fn text(status: StatusCode, body: &'static str) -> Response<BoxBody> {
    Response::builder()
        .status(status)
        .header("content-type", "text/html; charset=utf-8")
        .header("x-powered-by", "Express")
        .body(full(Bytes::from_static(body.as_bytes())))
        .unwrap()
}

fn handler(state: Arc<State>, app: Handler) -> Handler {
    Arc::new(move |req: Request<Incoming>, cx: NodeCtx| {
        let (state, app) = (state.clone(), app.clone());
        Box::pin(async move {
            let path = req.uri().path().to_string();
            let rel = if state.root.is_empty() {
                Some(path.as_str())
            } else {
                path.strip_prefix(state.root.as_str())
                    .filter(|r| r.is_empty() || r.starts_with('/'))
            };
            // The outer Express app serves nothing but the mount.
            let Some(rel) = rel else {
                return text(StatusCode::NOT_FOUND, "Cannot GET");
            };
            if state.loading.load(Ordering::SeqCst) {
                return text(StatusCode::SERVICE_UNAVAILABLE, "Botpress is loading");
            }
            match rel {
                "/status" => {
                    state.probes.fetch_add(1, Ordering::SeqCst);
                    if state.status() == Status::Hang {
                        std::future::pending::<()>().await;
                    }
                    Response::builder()
                        .header("content-type", "application/json")
                        .body(full(
                            r#"{"botpress":"up","database":"up","messaging":"up","nlu":"up"}"#,
                        ))
                        .unwrap()
                }
                "/version" => {
                    state.probes.fetch_add(1, Ordering::SeqCst);
                    text(StatusCode::OK, "12.31.10")
                }
                "" | "/" => Response::builder()
                    .status(StatusCode::FOUND)
                    .header("location", format!("{}/admin", state.root))
                    .body(full(Bytes::new()))
                    .unwrap(),
                r if APP_ROUTES.iter().any(|p| r.starts_with(p)) => {
                    state.app_requests.fetch_add(1, Ordering::SeqCst);
                    app(req, cx).await
                }
                _ => text(StatusCode::NOT_FOUND, "Cannot GET"),
            }
        })
    })
}
