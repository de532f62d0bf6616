//! The `bpgate` binary: parses the command line, loads the configuration, sets up logging and
//! the runtime, and hands over to the library.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use bpgate::config::{self, LogFormat, Overrides};

#[derive(Parser, Debug)]
#[command(
    name = "bpgate",
    version,
    about = "TLS reverse proxy that puts a Botpress cluster into production posture"
)]
struct Cli {
    /// Configuration file.
    #[arg(long, global = true, env = "BPGATE_CONFIG", default_value = config::DEFAULT_CONFIG_PATH)]
    config: PathBuf,
    /// HTTPS listen address (overrides BPGATE_LISTEN and the file).
    #[arg(long, global = true, value_name = "ADDR")]
    listen: Option<String>,
    /// Admin listen address (overrides BPGATE_ADMIN_LISTEN and the file).
    #[arg(long, global = true, value_name = "ADDR")]
    admin_listen: Option<String>,
    /// Comma-separated node URLs (overrides BPGATE_UPSTREAMS and the file).
    #[arg(long, global = true, value_name = "URLS")]
    upstreams: Option<String>,
    /// Start in production mode even when posture items fail (they are logged loudly).
    #[arg(long, global = true)]
    allow_insecure: bool,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the gateway (the default).
    Run,
    /// The one-minute tour: the gateway in front of two stand-in Botpress nodes in this process,
    /// with URLs to try and the audit trail followed in the terminal.
    Demo,
    /// Validate the configuration and print the effective settings, secrets redacted.
    Config,
    /// Check a Botpress deployment against the production checklist (exit 1 when an item fails).
    Check(bpgate::posture::CheckArgs),
    /// Write a diagnostic report (connectivity probes, certificates, obfuscated configuration).
    Diag(bpgate::posture::DiagArgs),
    /// Read the audit trail (audit.dir, or the files given): tail [-f], summary.
    Audit(bpgate::audit::query::AuditArgs),
}

#[cfg(feature = "mimalloc")]
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[cfg(all(feature = "tikv-jemallocator", not(feature = "mimalloc")))]
#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(Command::Audit(a)) = &cli.command {
        // Named files need no configuration.
        if !a.files().is_empty() {
            return bpgate::audit::query::run(a, None);
        }
    }
    let mut overrides = Overrides::default();
    let s = |v: &str| toml::Value::String(v.to_string());
    if let Some(v) = &cli.listen {
        overrides
            .values
            .push(("listen.https".into(), s(v), "--listen".into()));
    }
    if let Some(v) = &cli.admin_listen {
        overrides
            .values
            .push(("listen.admin".into(), s(v), "--admin-listen".into()));
    }
    if let Some(u) = &cli.upstreams {
        let urls = u
            .split(',')
            .map(str::trim)
            .filter(|x| !x.is_empty())
            .map(s)
            .collect();
        overrides.values.push((
            "upstream.urls".into(),
            toml::Value::Array(urls),
            "--upstreams".into(),
        ));
    }
    let env = |k: &str| std::env::var(k).ok();
    let loaded = match config::load(&cli.config, &env, &overrides) {
        Ok(mut l) => {
            l.allow_insecure = cli.allow_insecure;
            l
        }
        Err(e) => {
            eprintln!(
                "bpgate: invalid configuration ({}):\n{e}",
                cli.config.display()
            );
            return ExitCode::from(2);
        }
    };

    match cli.command.unwrap_or(Command::Run) {
        Command::Config => {
            for w in &loaded.derived.warnings {
                eprintln!("bpgate: warning: {w}");
            }
            print!("{}", describe(&loaded));
            ExitCode::SUCCESS
        }
        Command::Run => run(loaded, overrides),
        Command::Demo => demo(loaded),
        Command::Audit(a) => {
            let origin = loaded
                .origins
                .of("audit.dir")
                .unwrap_or("the built-in default");
            let trail = bpgate::audit::query::Trail {
                dir: &loaded.config.audit.dir,
                origin,
            };
            bpgate::audit::query::run(&a, Some(trail))
        }
        Command::Check(args) => bpgate::posture::run_check(&loaded, &args, &env),
        Command::Diag(args) => match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(rt) => rt.block_on(bpgate::posture::run_diag(&loaded, &args, &env)),
            Err(e) => {
                eprintln!("bpgate: cannot start the runtime: {e}");
                ExitCode::FAILURE
            }
        },
    }
}

/// `bpgate config`: where the settings come from, the effective settings (valid TOML, secrets
/// redacted), and what bpgate derives from them, as comments.
fn describe(loaded: &config::Loaded) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let _ = writeln!(out, "# bpgate effective configuration (secrets redacted)");
    for l in loaded.source_lines() {
        let _ = writeln!(out, "# {l}");
    }
    for n in &loaded.notes {
        let _ = writeln!(out, "# note: {}", n.text());
    }
    out.push('\n');
    out.push_str(&loaded.redacted_toml());
    let d = &loaded.derived;
    let c = &loaded.config;
    let _ = writeln!(out, "\n# derived values");
    let _ = writeln!(
        out,
        "# public origin: {}",
        d.public_origin
            .as_deref()
            .unwrap_or("none (external_url is unset)")
    );
    let _ = writeln!(
        out,
        "# base path: {} ({})",
        if d.base_path.is_empty() {
            "/"
        } else {
            &d.base_path
        },
        match c.base_path.mode {
            config::BasePathMode::Preserve => "preserve",
            config::BasePathMode::Strip => "strip",
        }
    );
    let key = (!c.sticky.secret.is_empty())
        .then(|| bpgate::cluster::sticky::StickyKey::new(c.sticky.secret.expose().as_bytes()));
    let _ = writeln!(out, "# nodes: name = address, weight, sticky id");
    for n in &d.nodes {
        let id = match &key {
            Some(k) => k
                .node_id(&n.name)
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect(),
            None => "random at each start".to_string(),
        };
        let _ = writeln!(
            out,
            "#   {} = {}, weight {}, sticky id {id}",
            n.name, n.authority, n.weight
        );
    }
    if key.is_none() && c.sticky.enabled {
        let _ = writeln!(
            out,
            "# sticky.secret is not set: a random one is generated at each start, so replicas and restarts do not agree on sticky cookies"
        );
    }
    let _ = writeln!(out, "# workers: {}", d.workers);
    out
}

/// Logs how the configuration was put together, once logging is set up.
fn log_sources(loaded: &config::Loaded) {
    // Without a file, where bpgate writes (certificate, audit trail) is a surprise worth a warning.
    let missing = matches!(loaded.file, config::ConfigFile::Missing(_));
    for l in loaded.source_lines() {
        if missing {
            tracing::warn!("{l}");
        } else {
            tracing::info!("{l}");
        }
    }
    for n in &loaded.notes {
        match n {
            config::Note::Info(t) => tracing::info!("{t}"),
            config::Note::Warn(t) => tracing::warn!("{t}"),
        }
    }
}

/// A fatal error, printed once: through the log (in its format) when it records errors,
/// otherwise straight to stderr.
fn fatal(message: &dyn std::fmt::Display) {
    if tracing::enabled!(tracing::Level::ERROR) {
        tracing::error!("{message}");
    } else {
        eprintln!("bpgate: {message}");
    }
}

/// The runtime `workers` asks for: one thread means the current-thread runtime.
fn runtime(workers: usize) -> std::io::Result<tokio::runtime::Runtime> {
    if workers == 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(workers)
            .enable_all()
            .build()
    }
}

fn demo(loaded: config::Loaded) -> ExitCode {
    let demo = match bpgate::demo::Demo::prepare(loaded) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("bpgate demo: {e}");
            return ExitCode::FAILURE;
        }
    };
    let c = &demo.loaded.config;
    let _log_guard = init_logging(&c.log.filter, c.log.format);
    let rt = match runtime(demo.loaded.derived.workers) {
        Ok(rt) => rt,
        Err(e) => {
            fatal(&format_args!("cannot start the runtime: {e}"));
            return ExitCode::FAILURE;
        }
    };
    // The signal handlers are installed inside the runtime, before the demo starts.
    match rt.block_on(async { demo.run(shutdown_signal()).await }) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            fatal(&e);
            ExitCode::FAILURE
        }
    }
}

fn run(loaded: config::Loaded, overrides: Overrides) -> ExitCode {
    let _log_guard = init_logging(&loaded.config.log.filter, loaded.config.log.format);
    log_sources(&loaded);
    let rt = match runtime(loaded.derived.workers) {
        Ok(rt) => rt,
        Err(e) => {
            fatal(&format_args!("cannot start the runtime: {e}"));
            return ExitCode::FAILURE;
        }
    };
    rt.block_on(async move {
        // Every handler is in place before anything starts: a signal that arrives early (right
        // after "bpgate listening", say) must not find the default action, which ends the
        // process without draining or flushing the audit trail.
        let shutdown = shutdown_signal();
        #[cfg(unix)]
        let hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup());
        // A file size limit (systemd `LimitFSIZE=`, `ulimit -f`) fails the write that reaches it
        // with EFBIG and also raises SIGXFSZ, whose default action kills the process with every
        // audit line it holds. Handled, the write just fails: the writer counts it, keeps the
        // bytes and retries (signal handlers installed by tokio stay for the process's life).
        #[cfg(all(
            target_os = "linux",
            not(any(target_arch = "mips", target_arch = "mips64"))
        ))]
        {
            const SIGXFSZ: i32 = 25;
            use tokio::signal::unix::{signal, SignalKind};
            if let Err(e) = signal(SignalKind::from_raw(SIGXFSZ)) {
                tracing::warn!(error = %e, "cannot handle SIGXFSZ; a file size limit would end the process");
            }
        }
        let gw = match bpgate::Gateway::start(loaded) {
            Ok(g) => g,
            Err(e) => {
                fatal(&e);
                return ExitCode::FAILURE;
            }
        };
        let listeners = match bpgate::Listeners::bind(&gw.current().config).await {
            Ok(l) => l,
            Err(e) => {
                fatal(&e);
                gw.flush_audit();
                return ExitCode::FAILURE;
            }
        };
        gw.set_reloader(move |old| {
            let env = |k: &str| std::env::var(k).ok();
            let mut l = config::load(&old.path, &env, &overrides)?;
            l.allow_insecure = old.allow_insecure;
            Ok(l)
        });
        #[cfg(unix)]
        {
            // SIGHUP: re-read the configuration and the certificate files.
            let gw = gw.clone();
            tokio::spawn(async move {
                let Ok(mut hup) = hup else {
                    return;
                };
                while hup.recv().await.is_some() {
                    let gw = gw.clone();
                    match tokio::task::spawn_blocking(move || gw.reload_all()).await {
                        Ok(report) => tracing::info!(
                            outcome = %serde_json::to_string(&report).unwrap_or_default(),
                            "SIGHUP handled"
                        ),
                        Err(e) => tracing::error!("SIGHUP reload did not finish: {e}"),
                    }
                }
            });
        }
        gw.run(listeners, shutdown).await;
        ExitCode::SUCCESS
    })
}

/// Resolves on SIGTERM or SIGINT. The handlers are installed when this is called (inside the
/// runtime), not when the future is first polled.
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let handlers = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        );
        async move {
            match handlers {
                (Ok(mut term), Ok(mut int)) => {
                    tokio::select! {
                        _ = term.recv() => {}
                        _ = int.recv() => {}
                    }
                }
                _ => {
                    let _ = tokio::signal::ctrl_c().await;
                }
            }
        }
    }
    #[cfg(not(unix))]
    {
        async {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// Operational logs to stderr through tracing-appender's non-blocking writer, so a slow terminal
/// or log collector never stalls a request.
fn init_logging(filter: &str, format: LogFormat) -> tracing_appender::non_blocking::WorkerGuard {
    use tracing_subscriber::EnvFilter;
    let (writer, guard) = tracing_appender::non_blocking(std::io::stderr());
    // rustls warns about every client that sends an IP address as SNI (curl, wrk, some
    // monitors); that is noise for operators unless they ask for rustls logs explicitly.
    let directives = if filter.contains("rustls") {
        filter.to_string()
    } else {
        format!("{filter},rustls=error")
    };
    let filter = EnvFilter::try_new(&directives).unwrap_or_else(|e| {
        eprintln!("bpgate: log filter `{filter}` is invalid ({e}); using `info`");
        EnvFilter::new("info")
    });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.with_ansi(false).init(),
    }
    guard
}
