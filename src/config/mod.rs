//! bpgate's configuration: one typed struct, read from TOML, overridden by environment variables
//! and command-line flags, validated once before anything binds.
//!
//! Precedence is built-in defaults < file < environment < flags. The file is parsed into a TOML
//! table, the environment and the flags are written into that same table (see [`env`]), and only
//! then is the table deserialised into [`Config`]. So every value, whatever its source, goes
//! through the same parser and the same validation, and an error can say where the bad value came
//! from ("listen.https (from env BPGATE_LISTEN)").

mod env;
mod external_auth;
mod keys;
mod origin;
mod types;

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use http::Uri;
use serde::{Deserialize, Serialize};

pub use env::{EnvVar, ENV_VARS};
pub use external_auth::{ExternalAuth, ExternalKey};
pub use origin::OriginSpec;
pub use types::{ByteSize, Cidr, Secret};

/// Where the default configuration file lives, relative to the working directory.
pub const DEFAULT_CONFIG_PATH: &str = "config/bpgate.toml";
/// Development certificate paths. Only these are ever generated automatically.
pub const DEV_CERT_PATH: &str = "certs/dev-cert.pem";
pub const DEV_KEY_PATH: &str = "certs/dev-key.pem";

/// The whole configuration. Field docs are the reference; the README repeats them as a table.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default)]
pub struct Config {
    /// `development` or `production`. Production refuses to start on posture failures.
    pub mode: Mode,
    /// The public URL, the same value Botpress gets as `EXTERNAL_URL`.
    #[serde(with = "types::opt_string")]
    pub external_url: Option<String>,
    /// Runtime worker threads; 0 means one per core.
    pub workers: usize,
    pub listen: Listen,
    pub tls: Tls,
    pub upstream: Upstream,
    pub forwarding: Forwarding,
    pub limits: Limits,
    pub shutdown: Shutdown,
    pub log: Log,
    pub headers: Headers,
    pub base_path: BasePath,
    pub cors: Cors,
    pub sticky: Sticky,
    pub health: Health,
    pub audit: Audit,
    pub admin: Admin,
    /// Per-route limits (`[[routes]]`), laid over the built-in table ([`builtin_routes`]).
    pub routes: Vec<RouteConfig>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    #[default]
    Development,
    Production,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default)]
pub struct Listen {
    /// HTTPS listener (HTTP/1.1 and HTTP/2 by ALPN).
    pub https: SocketAddr,
    /// Plain-HTTP listener that only redirects to HTTPS; empty turns it off.
    #[serde(with = "types::opt_addr")]
    pub http: Option<SocketAddr>,
    /// Admin listener (health, readiness, metrics, upstream control). Keep it private.
    pub admin: SocketAddr,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default)]
pub struct Tls {
    pub cert: PathBuf,
    pub key: PathBuf,
    #[serde(with = "types::duration")]
    pub handshake_timeout: Duration,
    /// How long a TLS session can be resumed (session cache and tickets, TLS 1.2 and 1.3): NGINX's
    /// `ssl_session_timeout`. 0 turns resumption off.
    #[serde(with = "types::duration")]
    pub session_timeout: Duration,
    /// How often the certificate files are checked for a renewal; 0 turns polling off.
    #[serde(with = "types::duration")]
    pub reload_interval: Duration,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default)]
pub struct Upstream {
    /// Node URLs, the short form (`BPGATE_UPSTREAMS`). Merged with `nodes`.
    pub urls: Vec<String>,
    /// Nodes with a name and a weight.
    pub nodes: Vec<NodeConfig>,
    #[serde(with = "types::duration")]
    pub connect_timeout: Duration,
    /// Time to wait for the node's response headers.
    #[serde(with = "types::duration")]
    pub response_timeout: Duration,
    /// Deprecated: per-prefix response timeouts, now `[[routes]]` (mapped onto them, with a
    /// warning).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub timeouts: Vec<PrefixTimeout>,
    /// Pooled connections idle longer than this are not reused. Keep it below Botpress's
    /// `httpServer.keepAliveTimeout` (5 s) so bpgate never reuses a connection the node closes.
    #[serde(with = "types::duration")]
    pub idle_timeout: Duration,
    /// Idle pooled connections kept per node.
    pub pool_max_idle: usize,
    /// A WebSocket/Upgrade tunnel with no traffic either way for this long is closed.
    #[serde(with = "types::duration")]
    pub tunnel_idle_timeout: Duration,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
pub struct NodeConfig {
    pub url: String,
    #[serde(
        default,
        with = "types::opt_string",
        skip_serializing_if = "Option::is_none"
    )]
    pub name: Option<String>,
    #[serde(default = "default_weight")]
    pub weight: u32,
}

fn default_weight() -> u32 {
    1
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
pub struct PrefixTimeout {
    pub prefix: String,
    #[serde(with = "types::duration")]
    pub response_timeout: Duration,
}

/// One `[[routes]]` entry: limits for the requests whose path, below the base path, starts with
/// `prefix` (whole segments; `*` stands for any one segment; ASCII case ignored, as Express
/// does). The most specific matching route wins; a field it leaves out is the global value
/// (`upstream.response_timeout`, `limits.max_body`).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
pub struct RouteConfig {
    pub prefix: String,
    /// Time the node may stay silent once the request body is sent, until its response head.
    #[serde(
        default,
        with = "types::opt_duration",
        skip_serializing_if = "Option::is_none"
    )]
    pub response_timeout: Option<Duration>,
    /// Largest request body on this route.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_body: Option<ByteSize>,
}

/// The largest body bpgate lets through on Botpress's archive routes. Botpress reads them
/// whole into one `Buffer` with no limit of its own, and Node 12 cannot build a `Buffer` above
/// 2^31 - 1 bytes: a larger body could only fail inside Botpress, after the upload.
pub const ARCHIVE_MAX_BODY: ByteSize = ByteSize(2 << 30);
/// The Botpress CLI's client timeout for `bp push` / `bp pull`, and the server timeout Botpress
/// sets on `versioning/update`.
pub const ARCHIVE_TIMEOUT: Duration = Duration::from_secs(20 * 60);

/// The built-in `[[routes]]`: Botpress's long archive routes (see the README's table of
/// defaults). `/api/v1/admin/...` is rewritten to `/api/v2/admin/...` inside Botpress, and the
/// CLI calls the v1 form, so both are listed.
pub fn builtin_routes() -> Vec<RouteConfig> {
    let mut out = Vec::new();
    for v in ["v1", "v2"] {
        // `bp push` / `bp pull`: archives of the whole data folder, no body limit in Botpress.
        out.push(RouteConfig {
            prefix: format!("/api/{v}/admin/management/versioning"),
            response_timeout: Some(ARCHIVE_TIMEOUT),
            max_body: Some(ARCHIVE_MAX_BODY),
        });
        // Bot import: a raw .tgz read with no size limit.
        out.push(RouteConfig {
            prefix: format!("/api/{v}/admin/workspace/bots/*/import"),
            response_timeout: Some(ARCHIVE_TIMEOUT),
            max_body: Some(ARCHIVE_MAX_BODY),
        });
        // Bot export: the response head comes only once the whole archive is built.
        out.push(RouteConfig {
            prefix: format!("/api/{v}/admin/workspace/bots/*/export"),
            response_timeout: Some(ARCHIVE_TIMEOUT),
            max_body: None,
        });
    }
    out
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, Default)]
#[serde(default)]
pub struct Forwarding {
    /// Peers whose `X-Forwarded-For`, `X-Forwarded-Proto` and `X-Request-Id` are believed.
    pub trusted_proxies: Vec<Cidr>,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default)]
pub struct Limits {
    /// Largest request body; larger ones get 413.
    pub max_body: ByteSize,
    /// Largest request head (request line and headers); larger ones get 431.
    pub max_header_bytes: ByteSize,
    /// Time a client has to send a complete request head (slowloris guard).
    #[serde(with = "types::duration")]
    pub header_read_timeout: Duration,
    /// An idle client connection (no request in flight) is closed after this long.
    #[serde(with = "types::duration")]
    pub keepalive_timeout: Duration,
    /// After answering a request whose body is still arriving (413 and other early answers),
    /// bpgate reads and discards what the client still sends for at most this long before it
    /// closes (NGINX's `lingering_time`), so the client reads the answer instead of a reset.
    /// 0 turns lingering close off.
    #[serde(with = "types::duration")]
    pub lingering_time: Duration,
    /// While lingering, the longest wait for more data from the client (NGINX's
    /// `lingering_timeout`).
    #[serde(with = "types::duration")]
    pub lingering_timeout: Duration,
    /// While lingering, the most bytes read and discarded.
    pub lingering_size: ByteSize,
    /// Client connections open at once on the HTTPS listener; more wait in the backlog.
    pub max_connections: usize,
    /// Concurrent HTTP/2 streams per client connection.
    pub h2_max_concurrent_streams: u32,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default)]
pub struct Shutdown {
    /// How long a graceful shutdown waits for in-flight requests and tunnels.
    #[serde(with = "types::duration")]
    pub drain_timeout: Duration,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default)]
pub struct Log {
    /// tracing `EnvFilter` directives for the operational log.
    pub filter: String,
    pub format: LogFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default)]
pub struct Headers {
    /// `Strict-Transport-Security` value; empty turns it off.
    pub hsts: String,
    /// `X-Content-Type-Options: nosniff`.
    pub nosniff: bool,
    /// `Referrer-Policy` value; empty turns it off.
    pub referrer_policy: String,
    /// Origins allowed to frame Botpress (`Content-Security-Policy: frame-ancestors`). Empty
    /// sends no CSP; `'self'` and origins are written as given.
    pub frame_ancestors: Vec<String>,
    /// Remove `X-Powered-By` from responses.
    pub remove_powered_by: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BasePath {
    /// The prefix Botpress is served under. Empty: the path of `external_url`.
    pub path: String,
    pub mode: BasePathMode,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum BasePathMode {
    /// Forward `/prefix/...` unchanged (Botpress mounts itself under the prefix).
    #[default]
    Preserve,
    /// Remove the prefix before forwarding and put it back on redirects and cookies.
    Strip,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default)]
pub struct Cors {
    pub enabled: bool,
    /// Allowed origins: exact (`https://app.example.com`) or `https://*.example.com`.
    pub origins: Vec<String>,
    pub credentials: bool,
    pub methods: Vec<String>,
    /// Request headers a preflight may ask for: `"reflect"` (the default) allows whatever an
    /// allowed origin asks for, as Botpress's own CORS middleware does; a list pins them.
    pub allow_headers: AllowHeaders,
    pub expose_headers: Vec<String>,
    #[serde(with = "types::duration")]
    pub max_age: Duration,
    /// Refuse with 403 any request whose `Origin` is not allowed.
    pub reject_disallowed: bool,
}

/// `cors.allow_headers`: reflect what an allowed origin's preflight asks for, or a fixed list.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum AllowHeaders {
    /// Allow every header an allowed origin's preflight names. The origin is the security
    /// boundary; which headers a page may send is the application's business (Botpress's
    /// channel-web and messaging clients send `ExternalAuth`, `X-BP-ExternalAuth`,
    /// `x-bp-messaging-*`).
    #[default]
    Reflect,
    /// Only these (compared case-insensitively), plus the ones the Botpress UIs cannot work
    /// without.
    List(Vec<String>),
}

impl<'de> Deserialize<'de> for AllowHeaders {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = AllowHeaders;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("\"reflect\" or a list of header names")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<AllowHeaders, E> {
                if v.trim().eq_ignore_ascii_case("reflect") {
                    Ok(AllowHeaders::Reflect)
                } else {
                    Err(E::custom(format!(
                        "`{v}` is neither \"reflect\" nor a list of header names"
                    )))
                }
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<AllowHeaders, A::Error> {
                let mut v = Vec::new();
                while let Some(x) = seq.next_element::<String>()? {
                    v.push(x);
                }
                Ok(AllowHeaders::List(v))
            }
        }
        d.deserialize_any(V)
    }
}

impl Serialize for AllowHeaders {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            AllowHeaders::Reflect => s.serialize_str("reflect"),
            AllowHeaders::List(v) => v.serialize(s),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default)]
pub struct Sticky {
    pub enabled: bool,
    pub cookie_name: String,
    /// Key for the cookie's HMAC. Replicas must share it.
    pub secret: Secret,
    /// The previous key, still accepted during a rotation.
    pub previous_secret: Secret,
    #[serde(with = "types::duration")]
    pub max_age: Duration,
    pub http_only: bool,
    pub secure: bool,
    pub same_site: SameSite,
    #[serde(with = "types::opt_string", skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    /// How a visitor without a valid cookie (and without a known engine.io session) is placed.
    pub fallback: StickyFallback,
    /// engine.io session ids learned from handshake answers (`sid` → node), at most this many;
    /// 0 turns the map off.
    pub sid_map_max_entries: usize,
    /// A learned session id not seen for this long is forgotten.
    #[serde(with = "types::duration")]
    pub sid_map_idle_timeout: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
pub enum SameSite {
    #[default]
    None,
    Lax,
    Strict,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum StickyFallback {
    /// By load (power of two choices, least outstanding requests per unit of weight), then
    /// pinned by the cookie: new visitors behind one NAT spread over the nodes. `"none"` is the
    /// older spelling.
    #[default]
    #[serde(alias = "none")]
    Load,
    /// By a rendezvous hash of the client IP: replicas agree without a cookie, but one NAT's
    /// visitors all land on one node.
    ClientIp,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default)]
pub struct Health {
    pub enabled: bool,
    /// Checked path, below the base path.
    pub path: String,
    #[serde(with = "types::duration")]
    pub interval: Duration,
    #[serde(with = "types::duration")]
    pub timeout: Duration,
    /// Consecutive successes that bring a node back.
    pub rise: u32,
    /// Consecutive failures (active or passive) that take a node out.
    pub fall: u32,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default)]
pub struct Audit {
    pub enabled: bool,
    pub dir: PathBuf,
    pub rotation: Rotation,
    /// Rotate when the current file reaches this size; 0 means no size cap.
    pub max_size: ByteSize,
    /// Rotated files kept; 0 keeps all.
    pub max_files: usize,
    /// Copy every line to stdout as well (container log collection).
    pub stdout: bool,
    pub on_failure: OnFailure,
    /// Query parameters whose values are written as `REDACTED`.
    pub redact_query: Vec<String>,
    /// Botpress's `appSecret`, to verify admin JWTs. Without it users are `jwt_unverified`.
    pub jwt_secret: Secret,
    /// Where Botpress reads the admin JWT: `header` (`Authorization: Bearer`, Botpress's default)
    /// or `cookie` (the `jwtToken` cookie, when `jwtToken.useCookieStorage` is on).
    pub jwt_source: JwtSource,
    /// Botpress's `pro.externalAuth`, to name webchat end users from `X-BP-ExternalAuth`.
    pub external_auth: ExternalAuth,
    /// Lines held in memory (queued or being written) before new requests wait for room.
    pub queue: usize,
    /// With `durability = "batched"`: longest time a line waits in memory before it is written.
    #[serde(with = "types::duration")]
    pub flush_interval: Duration,
    /// Where a request's line is when its answer completes; see [`Durability`].
    pub durability: Durability,
}

/// How far a request's audit line has got when the client receives the end of its answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Durability {
    /// Queued: written within `flush_interval` after the answer (a process crash loses the
    /// lines of up to `flush_interval` of answered requests).
    Batched,
    /// Written to the file (the kernel has it) before the answer completes: a process crash
    /// loses no answered request's line; a power loss can lose what the kernel had not yet
    /// written to disk.
    #[default]
    Written,
    /// Written and synced to disk (`fdatasync`) before the answer completes: a power loss loses
    /// no answered request's line either, on a disk that honours cache flushes.
    Synced,
}

impl Durability {
    pub fn as_str(self) -> &'static str {
        match self {
            Durability::Batched => "batched",
            Durability::Written => "written",
            Durability::Synced => "synced",
        }
    }
}

/// The one place Botpress reads the admin JWT from (`router-security.ts`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum JwtSource {
    /// `Authorization: Bearer <token>` (`jwtToken.useCookieStorage = false`, the default).
    #[default]
    Header,
    /// The `jwtToken` cookie (`jwtToken.useCookieStorage = true`).
    Cookie,
}

impl JwtSource {
    pub fn as_str(self) -> &'static str {
        match self {
            JwtSource::Header => "header",
            JwtSource::Cookie => "cookie",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Rotation {
    #[default]
    Daily,
    Hourly,
    Never,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum OnFailure {
    /// Refuse requests with 503 while the trail cannot be written.
    #[default]
    Block,
    /// Keep serving; lines wait in memory (bounded) and are retried.
    Continue,
}

/// The admin listener's access control and the status page (`listen.admin` is the address).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default)]
pub struct Admin {
    /// Bearer token required by state-changing admin requests (drain, reload, audit rotate).
    /// Empty: none (the listener's reachability and the Origin/Host checks are the fence).
    /// Production mode refuses a non-loopback `listen.admin` without one.
    pub token: Secret,
    /// A drained node counts as idle (safe to stop) once it has had no request in flight, no
    /// open tunnel and no new request for this long (socket.io polls at least every 25 s).
    #[serde(with = "types::duration")]
    pub drain_idle_after: Duration,
}

impl Default for Admin {
    fn default() -> Self {
        Admin {
            token: Secret::default(),
            drain_idle_after: Duration::from_secs(60),
        }
    }
}

// === defaults ===

impl Default for Config {
    fn default() -> Self {
        Config {
            mode: Mode::Development,
            external_url: None,
            workers: 0,
            listen: Listen::default(),
            tls: Tls::default(),
            upstream: Upstream::default(),
            forwarding: Forwarding::default(),
            limits: Limits::default(),
            shutdown: Shutdown::default(),
            log: Log::default(),
            headers: Headers::default(),
            base_path: BasePath::default(),
            cors: Cors::default(),
            sticky: Sticky::default(),
            health: Health::default(),
            audit: Audit::default(),
            admin: Admin::default(),
            routes: Vec::new(),
        }
    }
}

impl Default for Listen {
    fn default() -> Self {
        Listen {
            https: SocketAddr::from(([127, 0, 0, 1], 8443)),
            http: None,
            admin: SocketAddr::from(([127, 0, 0, 1], 9901)),
        }
    }
}

impl Default for Tls {
    fn default() -> Self {
        Tls {
            cert: PathBuf::from(DEV_CERT_PATH),
            key: PathBuf::from(DEV_KEY_PATH),
            handshake_timeout: Duration::from_secs(10),
            session_timeout: Duration::from_secs(5 * 60),
            reload_interval: Duration::from_secs(30),
        }
    }
}

impl Default for Upstream {
    fn default() -> Self {
        Upstream {
            urls: vec!["http://127.0.0.1:3000".into()],
            nodes: Vec::new(),
            connect_timeout: Duration::from_secs(3),
            // Node 12's `server.timeout` (120 s of socket inactivity) is what Botpress itself
            // allows; bpgate's timer starts once the body is sent, so a little more never cuts
            // an answer Botpress would still give.
            response_timeout: Duration::from_secs(130),
            timeouts: Vec::new(),
            idle_timeout: Duration::from_secs(4),
            pool_max_idle: 256,
            tunnel_idle_timeout: Duration::from_secs(3600),
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            // Botpress's media limit, `fileUpload.maxFileSize = "25mb"`, is 25 MiB (its
            // `asBytes` counts in 1024s), and the multipart framing and form fields come on top.
            max_body: ByteSize(32 * 1024 * 1024),
            max_header_bytes: ByteSize(64 * 1024),
            header_read_timeout: Duration::from_secs(10),
            keepalive_timeout: Duration::from_secs(75),
            lingering_time: Duration::from_secs(30),
            lingering_timeout: Duration::from_secs(5),
            lingering_size: ByteSize(64 * 1024 * 1024),
            max_connections: 10_000,
            h2_max_concurrent_streams: 128,
        }
    }
}

impl Default for Shutdown {
    fn default() -> Self {
        Shutdown {
            drain_timeout: Duration::from_secs(30),
        }
    }
}

impl Default for Log {
    fn default() -> Self {
        Log {
            filter: "info".into(),
            format: LogFormat::Text,
        }
    }
}

impl Default for Headers {
    fn default() -> Self {
        Headers {
            hsts: "max-age=31536000".into(),
            nosniff: true,
            referrer_policy: "strict-origin-when-cross-origin".into(),
            frame_ancestors: Vec::new(),
            remove_powered_by: true,
        }
    }
}

impl Default for BasePath {
    fn default() -> Self {
        BasePath {
            path: String::new(),
            mode: BasePathMode::Preserve,
        }
    }
}

impl Default for Cors {
    fn default() -> Self {
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect();
        Cors {
            enabled: true,
            origins: Vec::new(),
            credentials: true,
            methods: s(&["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"]),
            allow_headers: AllowHeaders::Reflect,
            expose_headers: Vec::new(),
            max_age: Duration::from_secs(600),
            reject_disallowed: true,
        }
    }
}

impl Default for Sticky {
    fn default() -> Self {
        Sticky {
            enabled: true,
            cookie_name: "bpgate_node".into(),
            secret: Secret::default(),
            previous_secret: Secret::default(),
            max_age: Duration::from_secs(24 * 3600),
            http_only: true,
            secure: true,
            same_site: SameSite::None,
            domain: None,
            fallback: StickyFallback::Load,
            sid_map_max_entries: 100_000,
            sid_map_idle_timeout: Duration::from_secs(300),
        }
    }
}

impl Default for Health {
    fn default() -> Self {
        Health {
            enabled: true,
            // `/status` waits on NLU and messaging with no timeout (one hung shared service
            // would take every node out); `/version` is cheap and still 503 while loading.
            path: "/version".into(),
            interval: Duration::from_secs(5),
            timeout: Duration::from_secs(2),
            rise: 2,
            fall: 3,
        }
    }
}

impl Default for Audit {
    fn default() -> Self {
        Audit {
            enabled: true,
            dir: PathBuf::from("logs/audit"),
            rotation: Rotation::Daily,
            max_size: ByteSize(0),
            max_files: 30,
            stdout: false,
            on_failure: OnFailure::Block,
            // `options`: the webchat iframe URL carries `externalAuthToken` inside it.
            redact_query: [
                "token",
                "access_token",
                "password",
                "secret",
                "code",
                "options",
            ]
            .iter()
            .map(|s| s.to_string())
            .collect(),
            jwt_secret: Secret::default(),
            jwt_source: JwtSource::Header,
            external_auth: ExternalAuth::default(),
            queue: 4_096,
            flush_interval: Duration::from_millis(5),
            durability: Durability::default(),
        }
    }
}

// `base_path` is either a string (`base_path = "/botpress"`) or a table with `path` and `mode`.
impl<'de> Deserialize<'de> for BasePath {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(default)]
        struct Table {
            path: String,
            mode: BasePathMode,
        }
        impl Default for Table {
            fn default() -> Self {
                let b = BasePath::default();
                Table {
                    path: b.path,
                    mode: b.mode,
                }
            }
        }
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Either {
            Path(String),
            Table(Table),
        }
        Ok(match Either::deserialize(d)? {
            Either::Path(path) => BasePath {
                path,
                mode: BasePathMode::Preserve,
            },
            Either::Table(t) => BasePath {
                path: t.path,
                mode: t.mode,
            },
        })
    }
}

// === errors ===

/// A configuration error: which key (and from where), what is wrong, how to fix it.
#[derive(Debug, Clone)]
pub struct ConfigError {
    pub key: String,
    pub origin: Option<String>,
    pub problem: String,
    pub fix: String,
}

impl ConfigError {
    pub fn new(key: impl Into<String>, problem: impl Into<String>, fix: impl Into<String>) -> Self {
        ConfigError {
            key: key.into(),
            origin: None,
            problem: problem.into(),
            fix: fix.into(),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "config key `{}`", self.key)?;
        if let Some(o) = &self.origin {
            write!(f, " (from {o})")?;
        }
        write!(f, ": {}", self.problem)?;
        if !self.fix.is_empty() {
            write!(f, "\n  fix: {}", self.fix)?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

/// Several errors found in one pass, so an operator fixes them all at once.
#[derive(Debug, Clone)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

// === loading ===

/// Values given on the command line; they beat the environment.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    /// (key path, value, flag name), e.g. ("listen.https", "0.0.0.0:443", "--listen").
    pub values: Vec<(String, toml::Value, String)>,
}

/// Where each explicitly set key came from, for error messages.
#[derive(Debug, Clone, Default)]
pub struct Origins(BTreeMap<String, String>);

impl Origins {
    pub fn of(&self, key: &str) -> Option<&str> {
        // A key inside a table set by one source (e.g. `upstream.nodes.0.url`) inherits it.
        let mut k = key;
        loop {
            if let Some(o) = self.0.get(k) {
                return Some(o);
            }
            match k.rfind('.') {
                Some(i) => k = &k[..i],
                None => return None,
            }
        }
    }
}

/// A loaded, validated configuration with the derived values every module needs.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub config: Config,
    /// `--allow-insecure`: start in production mode despite posture failures (loudly).
    pub allow_insecure: bool,
    pub derived: Derived,
    pub path: PathBuf,
    pub origins: Origins,
    /// Whether `path` was read, or missing so that the built-in defaults apply.
    pub file: ConfigFile,
    /// What the sources said that an operator should know: a value of the file replaced by the
    /// environment or a flag, a switch that lost to a more specific one.
    pub notes: Vec<Note>,
}

/// The configuration file bpgate read, or the default path it looked at and did not find.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigFile {
    /// Read from this path (absolute).
    Read(PathBuf),
    /// Nothing at the default path (absolute): the built-in defaults apply.
    Missing(PathBuf),
}

/// A remark about how the sources combined, logged at start and printed by `bpgate config`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Note {
    Info(String),
    /// Something that changes bpgate's safety posture (e.g. `mode`).
    Warn(String),
}

impl Note {
    pub fn text(&self) -> &str {
        match self {
            Note::Info(t) | Note::Warn(t) => t,
        }
    }
}

/// `p` as an absolute path (relative paths resolve against the working directory), for
/// messages that must say where a file really is.
pub fn absolute(p: &Path) -> PathBuf {
    std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf())
}

impl Loaded {
    /// Where the settings and the files bpgate writes come from, one line each, with absolute
    /// paths: the configuration file (or that none was found), the certificate, the audit trail.
    pub fn source_lines(&self) -> Vec<String> {
        let c = &self.config;
        let mut out = Vec::new();
        match &self.file {
            ConfigFile::Read(p) => out.push(format!(
                "configuration file {} (then environment and flags)",
                p.display()
            )),
            ConfigFile::Missing(p) => out.push(format!(
                "no configuration file at {} (the default path, relative to the working directory): built-in defaults apply (then environment and flags)",
                p.display()
            )),
        }
        let dev = c.tls.cert == Path::new(DEV_CERT_PATH) && c.tls.key == Path::new(DEV_KEY_PATH);
        let (cert, key) = (absolute(&c.tls.cert), absolute(&c.tls.key));
        out.push(if dev && c.mode == Mode::Development {
            format!(
                "TLS certificate {} and key {} (the development certificate, generated there when missing)",
                cert.display(),
                key.display()
            )
        } else {
            format!("TLS certificate {} and key {}", cert.display(), key.display())
        });
        out.push(if c.audit.enabled {
            format!(
                "audit trail {}",
                absolute(&c.audit.dir).join("audit.jsonl").display()
            )
        } else {
            "audit trail off (audit.enabled = false)".to_string()
        });
        out
    }
}

/// Values computed once from the config, so no request recomputes them.
#[derive(Debug, Clone)]
pub struct Derived {
    /// `https://host[:port]` of `external_url`, if set.
    pub public_origin: Option<String>,
    /// Host of `external_url` (no port), if set.
    pub public_host: Option<String>,
    /// The base path: "" (root) or "/prefix" with no trailing slash.
    pub base_path: String,
    /// All nodes, from `upstream.urls` and `upstream.nodes`, with names filled in.
    pub nodes: Vec<NodeSpec>,
    pub workers: usize,
    /// `audit.external_auth`'s key, read and parsed; `None` when external auth is off.
    pub external_auth: Option<ExternalKey>,
    /// The route table in effect: the built-in routes, the deprecated `upstream.timeouts` and
    /// `[[routes]]` laid over them in that order (an entry with an existing prefix changes only
    /// the fields it sets).
    pub routes: Vec<RouteConfig>,
    /// Deprecated keys in use: the configuration works, the operator should update it.
    pub warnings: Vec<ConfigError>,
}

/// One upstream node, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeSpec {
    pub name: String,
    /// `host:port` to connect to.
    pub authority: String,
    pub weight: u32,
}

/// Reads `path` (missing is an error unless it is the default path), applies the environment
/// and the flags, and validates.
pub fn load(
    path: &Path,
    env: &dyn Fn(&str) -> Option<String>,
    overrides: &Overrides,
) -> Result<Loaded, ConfigErrors> {
    let mut origins = Origins::default();
    let mut file = ConfigFile::Read(absolute(path));
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e)
            if e.kind() == std::io::ErrorKind::NotFound
                && path == Path::new(DEFAULT_CONFIG_PATH) =>
        {
            file = ConfigFile::Missing(absolute(path));
            String::new()
        }
        Err(e) => {
            return Err(ConfigErrors(vec![ConfigError::new(
                "--config",
                format!("cannot read {}: {e}", path.display()),
                "point --config (or BPGATE_CONFIG) at a readable TOML file",
            )]))
        }
    };
    let mut table: toml::Table = toml::from_str(&text).map_err(|e| {
        ConfigErrors(vec![ConfigError {
            key: "(file)".into(),
            origin: Some(path.display().to_string()),
            problem: format!("not valid TOML: {}", e.to_string().trim_end()),
            fix: "correct the syntax at the line shown".into(),
        }])
    })?;
    let file_origin = format!("file {}", path.display());
    for k in keys::leaf_paths(&table) {
        origins.0.insert(k, file_origin.clone());
    }
    let mut errors = Vec::new();
    let mut notes = Vec::new();
    env::apply_env(&mut table, env, &mut origins, &mut notes, &mut errors);
    for (key, value, flag) in &overrides.values {
        let by = format!("flag {flag}");
        env::note_override(&table, key, value, &by, &origins, &mut notes);
        if let Err(e) = env::set_path(&mut table, key, value.clone()) {
            errors.push(ConfigError::new(key.clone(), e, format!("check {flag}")));
        }
        origins.0.insert(key.clone(), by);
    }
    one_node_list(&mut table, &origins, &mut notes, &mut errors);
    if !errors.is_empty() {
        return Err(ConfigErrors(errors));
    }
    let config = keys::deserialize_checked(table, &origins)?;
    let derived = validate(&config, &origins)?;
    Ok(Loaded {
        config,
        derived,
        path: path.to_path_buf(),
        origins,
        allow_insecure: false,
        file,
        notes,
    })
}

/// The node list is one setting with two spellings, `upstream.urls` and `[[upstream.nodes]]`:
/// - the built-in default node (`http://127.0.0.1:3000`) applies only when neither is given;
/// - a file that gives both is refused (they would silently add up);
/// - `BPGATE_UPSTREAMS` or `--upstreams` replace the file's whole list, nodes included, as the
///   environment beats the file.
fn one_node_list(
    table: &mut toml::Table,
    origins: &Origins,
    notes: &mut Vec<Note>,
    errors: &mut Vec<ConfigError>,
) {
    let Some(toml::Value::Table(up)) = table.get_mut("upstream") else {
        return;
    };
    let urls_by = origins
        .0
        .get("upstream.urls")
        .filter(|o| o.starts_with("env ") || o.starts_with("flag "));
    if let Some(by) = urls_by {
        if up.remove("nodes").is_some() {
            notes.push(Note::Info(format!(
                "upstream: {by} replaces the nodes of the file's [[upstream.nodes]]"
            )));
        }
        return;
    }
    let given = |k: &str| {
        up.get(k)
            .and_then(toml::Value::as_array)
            .is_some_and(|a| !a.is_empty())
    };
    match (given("urls"), given("nodes")) {
        (true, true) => {
            let mut e = ConfigError::new(
                "upstream.urls",
                "the file sets both upstream.urls and [[upstream.nodes]]; they are two spellings of one node list and would add up",
                "keep one: name every node in [[upstream.nodes]] and remove upstream.urls (or the reverse); BPGATE_UPSTREAMS replaces both",
            );
            e.origin = origins.of("upstream.urls").map(str::to_string);
            errors.push(e);
        }
        (false, true) => {
            // Nodes alone: no built-in default node beside them.
            up.insert("urls".into(), toml::Value::Array(Vec::new()));
        }
        _ => {}
    }
}

/// Cross-field validation and derivation. Every error names its key and a fix.
pub fn validate(c: &Config, origins: &Origins) -> Result<Derived, ConfigErrors> {
    let mut errs = Vec::new();
    let mut err = |key: &str, problem: String, fix: String| {
        let mut e = ConfigError::new(key, problem, fix);
        e.origin = origins.of(key).map(str::to_string);
        errs.push(e);
    };

    let (mut public_origin, mut public_host, mut url_path) = (None, None, String::new());
    if let Some(u) = &c.external_url {
        match parse_external_url(u) {
            Ok((origin, host, path)) => {
                public_origin = Some(origin);
                public_host = Some(host);
                url_path = path;
            }
            Err(p) => err(
                "external_url",
                p,
                "set EXTERNAL_URL to the public URL, e.g. https://bot.example.com or https://bot.example.com/botpress".into(),
            ),
        }
    }
    let base_path = if c.base_path.path.is_empty() {
        url_path.clone()
    } else {
        match normalise_base_path(&c.base_path.path) {
            Ok(p) => {
                if c.external_url.is_some() && p != url_path {
                    err(
                        "base_path",
                        format!("`{p}` differs from the path of external_url (`{url_path}`); Botpress derives its base path from EXTERNAL_URL, so they must agree"),
                        "remove base_path and let EXTERNAL_URL decide, or make them equal".into(),
                    );
                }
                p
            }
            Err(p) => {
                err("base_path", p, "use a path like /botpress: leading slash, no trailing slash, no . or .. segments".into());
                String::new()
            }
        }
    };
    if let Err(p) = normalise_base_path(&url_path) {
        err(
            "external_url",
            format!("its path {p}"),
            "use a path like /botpress".into(),
        );
    }

    let mut nodes: Vec<NodeSpec> = Vec::new();
    let all = c
        .upstream
        .urls
        .iter()
        .enumerate()
        .map(|(i, u)| {
            (
                format!("upstream.urls.{i}"),
                NodeConfig {
                    url: u.clone(),
                    name: None,
                    weight: 1,
                },
            )
        })
        .chain(
            c.upstream
                .nodes
                .iter()
                .enumerate()
                .map(|(i, n)| (format!("upstream.nodes.{i}"), n.clone())),
        );
    for (key, n) in all {
        match parse_node_url(&n.url) {
            Ok(authority) => {
                let name = n.name.clone().unwrap_or_else(|| authority.clone());
                if n.weight == 0 || n.weight > 1000 {
                    err(
                        &format!("{key}.weight"),
                        format!("weight {} is out of range", n.weight),
                        "use a weight from 1 to 1000".into(),
                    );
                }
                if nodes.iter().any(|x| x.name == name) {
                    err(
                        &key,
                        format!("node name `{name}` is used twice"),
                        "give each node a distinct name (or URL)".into(),
                    );
                }
                if name.is_empty()
                    || !name.chars().all(|ch| ch.is_ascii_graphic())
                    || name.contains('/')
                {
                    err(
                        &format!("{key}.name"),
                        format!("node name `{name}` must be printable ASCII without spaces or `/`"),
                        "use a name like node-1".into(),
                    );
                }
                nodes.push(NodeSpec {
                    name,
                    authority,
                    weight: n.weight,
                });
            }
            Err(p) => err(
                &key,
                p,
                "use a URL like http://10.0.0.5:3000 (Botpress speaks plain HTTP behind bpgate)"
                    .into(),
            ),
        }
    }
    if nodes.is_empty() {
        err(
            "upstream.urls",
            "no upstream node is configured".into(),
            "set BPGATE_UPSTREAMS=http://127.0.0.1:3000 or add [[upstream.nodes]]".into(),
        );
    }

    // Port 0 (an ephemeral port, as tests use) cannot clash.
    let same = |a: SocketAddr, b: SocketAddr| a == b && a.port() != 0;
    if same(c.listen.admin, c.listen.https)
        || c.listen.http.is_some_and(|h| same(c.listen.admin, h))
    {
        err(
            "listen.admin",
            "the admin listener must not share the public port".into(),
            "set BPGATE_ADMIN_LISTEN to another address, e.g. 127.0.0.1:9901".into(),
        );
    }
    if c.listen.http.is_some_and(|h| same(c.listen.https, h)) {
        err(
            "listen.http",
            "the redirect listener must not share the HTTPS port".into(),
            "set BPGATE_HTTP_LISTEN to another port (e.g. 0.0.0.0:80) or to empty".into(),
        );
    }
    if c.limits.max_header_bytes.0 < 8192 {
        err(
            "limits.max_header_bytes",
            "below 8k no browser request fits".into(),
            "use at least 8k (default 64k)".into(),
        );
    }
    // RFC 8446 §4.6.1: a ticket lifetime over seven days is a protocol error.
    if c.tls.session_timeout > Duration::from_secs(7 * 24 * 3600) {
        err(
            "tls.session_timeout",
            format!(
                "{} is longer than TLS allows (7 days)",
                humantime::format_duration(c.tls.session_timeout)
            ),
            "use minutes, like NGINX's default ssl_session_timeout: 5m".into(),
        );
    }
    if c.limits.max_connections == 0 {
        err(
            "limits.max_connections",
            "must be at least 1".into(),
            "use e.g. 10000".into(),
        );
    }
    if c.limits.h2_max_concurrent_streams == 0 {
        err(
            "limits.h2_max_concurrent_streams",
            "must be at least 1".into(),
            "use e.g. 128".into(),
        );
    }
    for (key, d) in [
        ("tls.handshake_timeout", c.tls.handshake_timeout),
        ("upstream.connect_timeout", c.upstream.connect_timeout),
        ("upstream.response_timeout", c.upstream.response_timeout),
        ("upstream.idle_timeout", c.upstream.idle_timeout),
        (
            "upstream.tunnel_idle_timeout",
            c.upstream.tunnel_idle_timeout,
        ),
        ("limits.header_read_timeout", c.limits.header_read_timeout),
        ("limits.keepalive_timeout", c.limits.keepalive_timeout),
        ("limits.lingering_timeout", c.limits.lingering_timeout),
        ("health.interval", c.health.interval),
        ("health.timeout", c.health.timeout),
        ("admin.drain_idle_after", c.admin.drain_idle_after),
    ] {
        if d.is_zero() {
            err(
                key,
                "must be greater than zero".into(),
                "use a duration such as 10s".into(),
            );
        }
    }
    let mut warnings = Vec::new();
    let mut routes = builtin_routes();
    for (i, t) in c.upstream.timeouts.iter().enumerate() {
        let key = format!("upstream.timeouts.{i}");
        if let Err(p) = route_pattern(&t.prefix) {
            err(
                &format!("{key}.prefix"),
                p,
                "use a path prefix such as /api/v1/admin/management/versioning".into(),
            );
            continue;
        }
        let mut w = ConfigError::new(
            key,
            format!(
                "deprecated; read as [[routes]] prefix = \"{}\", response_timeout = \"{}\"",
                t.prefix,
                humantime::format_duration(t.response_timeout)
            ),
            "replace [[upstream.timeouts]] by [[routes]] (same prefix and response_timeout; max_body may be set there too)",
        );
        w.origin = origins.of("upstream.timeouts").map(str::to_string);
        warnings.push(w);
        overlay_route(
            &mut routes,
            RouteConfig {
                prefix: t.prefix.clone(),
                response_timeout: Some(t.response_timeout),
                max_body: None,
            },
        );
    }
    for (i, r) in c.routes.iter().enumerate() {
        let key = format!("routes.{i}");
        if let Err(p) = route_pattern(&r.prefix) {
            err(
                &format!("{key}.prefix"),
                p,
                "use a path below the base path, e.g. /api/v2/admin/workspace/bots/*/import".into(),
            );
            continue;
        }
        if r.response_timeout.is_none() && r.max_body.is_none() {
            err(
                &key,
                format!(
                    "route `{}` sets neither response_timeout nor max_body",
                    r.prefix
                ),
                "set response_timeout, max_body or both, or remove the entry".into(),
            );
        }
        if r.response_timeout.is_some_and(|d| d.is_zero()) {
            err(
                &format!("{key}.response_timeout"),
                "must be greater than zero".into(),
                "use a duration such as 20m".into(),
            );
        }
        if r.max_body.is_some_and(|b| b.0 == 0) {
            err(
                &format!("{key}.max_body"),
                "must be at least one byte".into(),
                "use a size such as 1g".into(),
            );
        }
        if c.routes[..i]
            .iter()
            .any(|o| same_route(&o.prefix, &r.prefix))
        {
            err(
                &format!("{key}.prefix"),
                format!("route `{}` is listed twice", r.prefix),
                "merge the two entries into one".into(),
            );
        }
        overlay_route(&mut routes, r.clone());
    }
    let token = c.admin.token.expose();
    if !token.bytes().all(|b| b.is_ascii_graphic()) {
        err(
            "admin.token",
            "must be printable ASCII without spaces (it is sent as `Authorization: Bearer <token>`)".into(),
            "generate one with `openssl rand -hex 32`".into(),
        );
    }
    if c.health.rise == 0 || c.health.fall == 0 {
        err(
            "health.rise",
            "rise and fall must be at least 1".into(),
            "use rise = 2, fall = 3".into(),
        );
    }
    if !c.health.path.starts_with('/') {
        err(
            "health.path",
            format!("`{}` must start with /", c.health.path),
            "use /status or /version".into(),
        );
    }
    let cookie_ok = !c.sticky.cookie_name.is_empty()
        && c.sticky
            .cookie_name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if !cookie_ok {
        err(
            "sticky.cookie_name",
            format!("`{}` is not a valid cookie name", c.sticky.cookie_name),
            "use letters, digits, `_` or `-`, e.g. bpgate_node".into(),
        );
    }
    let reserved = ["jwtToken", "userToken", "tokenExpiry", "session", "io"];
    if reserved
        .iter()
        .any(|r| r.eq_ignore_ascii_case(&c.sticky.cookie_name))
        || c.sticky.cookie_name.starts_with("bp/")
    {
        err(
            "sticky.cookie_name",
            format!(
                "`{}` collides with a cookie Botpress uses",
                c.sticky.cookie_name
            ),
            "keep the default bpgate_node".into(),
        );
    }
    for (key, s) in [
        ("sticky.secret", &c.sticky.secret),
        ("sticky.previous_secret", &c.sticky.previous_secret),
    ] {
        if !s.is_empty() && s.expose().len() < 16 {
            err(
                key,
                "shorter than 16 bytes".into(),
                "generate one with `openssl rand -base64 32`".into(),
            );
        }
    }
    if c.sticky.same_site == SameSite::None && !c.sticky.secure {
        err(
            "sticky.secure",
            "browsers reject SameSite=None cookies without Secure".into(),
            "set sticky.secure = true or choose another same_site".into(),
        );
    }
    if c.sticky.sid_map_max_entries > 0 && c.sticky.sid_map_idle_timeout.as_secs() < 60 {
        err(
            "sticky.sid_map_idle_timeout",
            "shorter than a minute: a polling session is idle up to engine.io's pingInterval + pingTimeout (45 s)".into(),
            "use e.g. 5m".into(),
        );
    }
    if c.sticky.max_age.as_secs() < 60 {
        err(
            "sticky.max_age",
            "shorter than a minute".into(),
            "use e.g. 24h".into(),
        );
    }
    if let AllowHeaders::List(l) = &c.cors.allow_headers {
        for (i, h) in l.iter().enumerate() {
            if http::HeaderName::from_bytes(h.trim().as_bytes()).is_err() {
                err(
                    &format!("cors.allow_headers.{i}"),
                    format!("`{h}` is not a header name"),
                    "use names like X-BP-ExternalAuth, or \"reflect\" to allow what allowed origins ask for".into(),
                );
            }
        }
    }
    for (i, o) in c.cors.origins.iter().enumerate() {
        if let Err(p) = OriginSpec::parse(o) {
            err(
                &format!("cors.origins.{i}"),
                p,
                "use an origin like https://app.example.com or https://*.example.com".into(),
            );
        }
    }
    // Response header values are checked here, so building the pipeline cannot fail later.
    for (key, v) in [
        ("headers.hsts", &c.headers.hsts),
        ("headers.referrer_policy", &c.headers.referrer_policy),
    ] {
        if http::HeaderValue::from_str(v.trim()).is_err() {
            err(
                key,
                format!("`{v}` is not a valid header value"),
                "use visible ASCII only, or empty to turn the header off".into(),
            );
        }
    }
    for (i, a) in c.headers.frame_ancestors.iter().enumerate() {
        if a.is_empty()
            || a.contains(';')
            || a.contains(',')
            || a.chars().any(char::is_whitespace)
            || http::HeaderValue::from_str(a).is_err()
        {
            err(
                &format!("headers.frame_ancestors.{i}"),
                format!("`{a}` is not one CSP source"),
                "write one source per entry, like https://shop.example.com or 'self'".into(),
            );
        }
    }
    if c.audit.queue < 16 {
        err(
            "audit.queue",
            "too small".into(),
            "use at least 1024 (default 4096)".into(),
        );
    }
    let external_auth = if c.audit.external_auth.enabled() {
        external_auth::load(&c.audit.external_auth, &mut err)
    } else {
        // Settings that differ from the defaults without a key would verify nothing. (The
        // defaults themselves are fine: `bpgate config` prints them and must read back.)
        if let Some(k) = external_auth::set_without_key(&c.audit.external_auth) {
            let from = origins
                .of(k)
                .map(|o| format!(" (from {o})"))
                .unwrap_or_default();
            err(
                "audit.external_auth.public_key",
                format!("{k} is set{from} but no key is: external auth would verify nothing"),
                "set public_key or public_key_file to Botpress's pro.externalAuth key, or remove the [audit.external_auth] settings".into(),
            );
        }
        None
    };

    let workers = if c.workers == 0 {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    } else {
        c.workers
    };
    if c.workers > 1024 {
        err(
            "workers",
            format!(
                "{} worker threads is more than any machine needs",
                c.workers
            ),
            "use 0 (one per core) or the number of cores".into(),
        );
    }

    if errs.is_empty() {
        Ok(Derived {
            public_origin,
            public_host,
            base_path,
            nodes,
            workers,
            external_auth,
            routes,
            warnings,
        })
    } else {
        Err(ConfigErrors(errs))
    }
}

/// The most segments a `[[routes]]` prefix may have (Botpress's deepest routes have 8): request
/// paths are split that deep at most, once, to match them.
pub const ROUTE_MAX_SEGMENTS: usize = 16;

/// Checks a route prefix: `/` then segments, `*` only as a whole segment; no query, fragment,
/// empty segment or space. Returns the segments (a trailing `/` is ignored).
pub fn route_pattern(p: &str) -> Result<Vec<&str>, String> {
    if !p.starts_with('/') {
        return Err(format!("`{p}` must start with /"));
    }
    let t = p.trim_end_matches('/');
    if t.is_empty() {
        return Ok(Vec::new());
    }
    let segs: Vec<&str> = t[1..].split('/').collect();
    if segs.len() > ROUTE_MAX_SEGMENTS {
        return Err(format!("`{p}` has more than {ROUTE_MAX_SEGMENTS} segments"));
    }
    for seg in &segs {
        if seg.is_empty() {
            return Err(format!("`{p}` has an empty segment (`//`)"));
        }
        if seg.contains('*') && *seg != "*" {
            return Err(format!(
                "`{p}`: `*` stands for one whole segment (`/bots/*/import`), not part of one"
            ));
        }
        if !seg.bytes().all(|b| b.is_ascii_graphic()) || seg.contains(['?', '#']) {
            return Err(format!(
                "`{p}` must be a path only (no query, fragment or space)"
            ));
        }
    }
    Ok(segs)
}

/// Whether two route prefixes name the same route (trailing `/` and ASCII case ignored).
pub fn same_route(a: &str, b: &str) -> bool {
    a.trim_end_matches('/')
        .eq_ignore_ascii_case(b.trim_end_matches('/'))
}

/// Lays `r` over `routes`: a route with the same prefix takes the fields `r` sets.
fn overlay_route(routes: &mut Vec<RouteConfig>, r: RouteConfig) {
    match routes.iter_mut().find(|e| same_route(&e.prefix, &r.prefix)) {
        Some(e) => {
            if r.response_timeout.is_some() {
                e.response_timeout = r.response_timeout;
            }
            if r.max_body.is_some() {
                e.max_body = r.max_body;
            }
        }
        None => routes.push(r),
    }
}

/// `https://host[:port][/path]` → (origin, host, path without trailing slash).
pub fn parse_external_url(u: &str) -> Result<(String, String, String), String> {
    let uri: Uri = u.parse().map_err(|e| format!("`{u}` is not a URL ({e})"))?;
    let scheme = uri
        .scheme_str()
        .ok_or_else(|| format!("`{u}` is not absolute: it needs http:// or https://"))?;
    if scheme != "https" && scheme != "http" {
        return Err(format!(
            "`{u}` has scheme {scheme}; only http and https are possible"
        ));
    }
    let auth = uri
        .authority()
        .ok_or_else(|| format!("`{u}` has no host"))?;
    if auth.as_str().contains('@') {
        return Err(format!("`{u}` carries credentials; remove them"));
    }
    if uri.query().is_some() || u.contains('#') {
        return Err(format!(
            "`{u}` has a query or a fragment; Botpress takes only scheme, host and path"
        ));
    }
    let host = auth
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_ascii_lowercase();
    if host.is_empty() {
        return Err(format!("`{u}` has no host"));
    }
    let default_port = if scheme == "https" { 443 } else { 80 };
    let origin = match auth.port_u16() {
        Some(p) if p != default_port => {
            format!("{scheme}://{}:{p}", auth.host().to_ascii_lowercase())
        }
        _ => format!("{scheme}://{}", auth.host().to_ascii_lowercase()),
    };
    // Botpress does `pathname.replace(/\/+$/, '')`; so do we.
    let path = uri.path().trim_end_matches('/').to_string();
    Ok((origin, host, path))
}

/// Validates a base path: "" or "/a/b", no trailing slash, no dot segments, no encoded bytes
/// that could change which prefix matches.
pub fn normalise_base_path(p: &str) -> Result<String, String> {
    let p = p.trim_end_matches('/');
    if p.is_empty() {
        return Ok(String::new());
    }
    if !p.starts_with('/') {
        return Err(format!("`{p}` must start with /"));
    }
    for seg in p[1..].split('/') {
        if seg.is_empty() || seg == "." || seg == ".." {
            return Err(format!("`{p}` has an empty, . or .. segment"));
        }
        if !seg
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@".contains(&b))
        {
            return Err(format!(
                "`{p}` has characters that need encoding; use plain letters, digits, - _ . ~"
            ));
        }
    }
    Ok(p.to_string())
}

fn parse_node_url(u: &str) -> Result<String, String> {
    let uri: Uri = u
        .trim()
        .parse()
        .map_err(|e| format!("`{u}` is not a URL ({e})"))?;
    match uri.scheme_str() {
        Some("http") => {}
        Some(s) => {
            return Err(format!(
                "`{u}` uses {s}; bpgate talks plain HTTP/1.1 to Botpress nodes"
            ))
        }
        None => return Err(format!("`{u}` needs http://")),
    }
    let auth = uri
        .authority()
        .ok_or_else(|| format!("`{u}` has no host"))?;
    if uri.path() != "/" && !uri.path().is_empty() {
        return Err(format!("`{u}` has a path; give the node's address only (the base path comes from EXTERNAL_URL)"));
    }
    let port = auth.port_u16().unwrap_or(80);
    Ok(format!("{}:{port}", auth.host()))
}

impl Loaded {
    /// `bpgate config`: the effective settings with every secret replaced, the route table as
    /// in effect (built-in routes and the deprecated `upstream.timeouts` folded in).
    pub fn redacted_toml(&self) -> String {
        let mut c = self.config.clone();
        c.routes = self.derived.routes.clone();
        c.upstream.timeouts.clear();
        c.redacted_toml()
    }
}

impl Config {
    /// TOML of the settings with every secret replaced.
    pub fn redacted_toml(&self) -> String {
        let mut c = self.clone();
        c.sticky.secret = c.sticky.secret.redacted();
        c.sticky.previous_secret = c.sticky.previous_secret.redacted();
        c.audit.jwt_secret = c.audit.jwt_secret.redacted();
        c.audit.external_auth.public_key = c.audit.external_auth.public_key.redacted();
        c.admin.token = c.admin.token.redacted();
        toml::to_string_pretty(&c).unwrap_or_else(|e| format!("# cannot render config: {e}\n"))
    }
}

#[cfg(test)]
mod tests;
