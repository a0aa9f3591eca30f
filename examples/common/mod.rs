//! What the three examples share: the `AUTOTLS_*` environment, the startup lines, the
//! shutdown signal and the exit codes, so `axum`, `hyper` and `warp` differ only in the few
//! lines that are really about the framework.
//!
//! Each example includes this file with `#[path = "common/mod.rs"] mod common;` (cargo builds
//! no example from `examples/common/`: it has no `main.rs`).
//!
//! | variable | meaning (default) |
//! |---|---|
//! | `AUTOTLS_DOMAINS` | comma-separated names; empty → local mode (self-signed, localhost) |
//! | `AUTOTLS_EMAIL` | contact for the ACME account |
//! | `AUTOTLS_CACHE_DIR` | certificate cache (`./autotls-cache`; the image uses `/cert-cache`) |
//! | `AUTOTLS_DIRECTORY` | `production` (default), `staging`, or a directory URL |
//! | `AUTOTLS_DIRECTORY_CA` | PEM file trusted for the directory's HTTPS (e.g. Pebble's) |
//! | `AUTOTLS_HTTP_ADDR` | HTTP port: challenges + redirect (`[::]:80`; local mode `127.0.0.1:8080`) |
//! | `AUTOTLS_HTTPS_ADDR` | HTTPS port (`[::]:443`; local mode `127.0.0.1:8443`) |
//! | `AUTOTLS_CHALLENGE` | `tls-alpn-01`, `http-01`, or unset for automatic |
//! | `AUTOTLS_ENGINE` | `instant-acme` (the default) or `rustls-acme` (built with that feature) |
//! | `RUST_LOG` | log filter: a level or `target=level` list (`info`; e.g. `info,autotls=debug`) |
//!
//! Bad configuration prints one line, `error: …`, and exits with code 2; a failure while
//! serving exits with code 1. Ctrl-C or SIGTERM (what `docker stop` sends) stops the example
//! gracefully with code 0.

use std::future::Future;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Instant;

use autotls::{
    AutoTls, AutoTlsListener, CertEvent, Challenge, ConfigErrorKind, Engine, TlsConnectInfo,
};
use tokio::net::TcpListener;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// The example's settings, read from `AUTOTLS_*`.
#[derive(Debug)]
pub(crate) struct Settings {
    /// The configured and validated builder.
    pub(crate) tls: AutoTls,
    /// No names, or only `localhost`: a self-signed certificate and loopback defaults.
    pub(crate) local: bool,
    /// Where the HTTP port (challenges and redirects) listens.
    pub(crate) http_addr: String,
    /// Where the HTTPS port listens.
    pub(crate) https_addr: String,
}

/// Reads the settings from the process environment.
pub(crate) fn settings_from_env() -> Result<Settings, String> {
    settings_from(|name| std::env::var(name).ok())
}

/// Reads the settings through `var` (the environment, or a map in tests). Unset and blank
/// variables are the same. The error is one line that names the variable to fix.
pub(crate) fn settings_from(var: impl Fn(&str) -> Option<String>) -> Result<Settings, String> {
    let var = |name: &str| var(name).filter(|v| !v.trim().is_empty());
    let domains: Vec<String> = var("AUTOTLS_DOMAINS")
        .map(|d| {
            d.split(',')
                .map(|s| s.trim().to_owned())
                .filter(|s| !s.is_empty())
                .collect()
        })
        .unwrap_or_default();
    let mut tls = AutoTls::try_new(&domains).map_err(|e| format!("AUTOTLS_DOMAINS: {e}"))?;
    let local = tls.names().iter().all(|n| n == "localhost");
    if let Some(email) = var("AUTOTLS_EMAIL") {
        tls = tls.contact(email);
    }
    tls = tls.cache_dir(var("AUTOTLS_CACHE_DIR").unwrap_or_else(|| "./autotls-cache".into()));
    match var("AUTOTLS_DIRECTORY").as_deref() {
        None | Some("production") => {}
        Some("staging") => tls = tls.staging(),
        Some(url) => tls = tls.directory(url),
    }
    if let Some(path) = var("AUTOTLS_DIRECTORY_CA") {
        let pem = std::fs::read(&path).map_err(|e| format!("AUTOTLS_DIRECTORY_CA: {path}: {e}"))?;
        tls = tls.directory_root(pem);
    }
    if let Some(challenge) = var("AUTOTLS_CHALLENGE") {
        let challenge: Challenge = challenge
            .parse()
            .map_err(|e| format!("AUTOTLS_CHALLENGE: {e}"))?;
        tls = tls.challenge(challenge);
    }
    if let Some(engine) = var("AUTOTLS_ENGINE") {
        let engine: Engine = engine.parse().map_err(|e| format!("AUTOTLS_ENGINE: {e}"))?;
        tls = tls.engine(engine);
    }
    tls.validate().map_err(|e| match e.kind() {
        // E.g. `rustls-acme` in a build without that feature.
        ConfigErrorKind::Engine => format!("AUTOTLS_ENGINE: {e}"),
        _ => e.to_string(),
    })?;
    let (http_default, https_default) = if local {
        ("127.0.0.1:8080", "127.0.0.1:8443")
    } else {
        ("[::]:80", "[::]:443")
    };
    Ok(Settings {
        tls,
        local,
        http_addr: var("AUTOTLS_HTTP_ADDR").unwrap_or_else(|| http_default.into()),
        https_addr: var("AUTOTLS_HTTPS_ADDR").unwrap_or_else(|| https_default.into()),
    })
}

/// Prints a line when a certificate is issued, with the time since this call. Call it before
/// binding, so no event is missed; events are data a program can act on, not only log lines.
pub(crate) fn print_issued_certificates(tls: &AutoTls) {
    let started = Instant::now();
    let mut events = tls.subscribe();
    tokio::spawn(async move {
        while let Ok(event) = events.recv().await {
            if let CertEvent::Issued { name, .. } = event {
                println!(
                    "certificate for {name} issued {} ms after start",
                    started.elapsed().as_millis()
                );
            }
        }
    });
}

/// The startup line: where the example serves, or in local mode the URL to open.
pub(crate) fn announce(tls: &AutoTls, local: bool, https_addr: SocketAddr, http_addr: &str) {
    if local {
        println!(
            "local mode: no AUTOTLS_DOMAINS, so this serves a self-signed certificate made at start \
             (your browser will warn). Open https://localhost:{}/",
            https_addr.port()
        );
    } else {
        println!(
            "serving {} on {https_addr} (HTTPS) and {http_addr} (HTTP)",
            tls.names().join(", ")
        );
    }
}

/// Resolves on Ctrl-C or SIGTERM (what `docker stop` sends).
///
/// The signal handlers are installed by this call, not when the future is first polled: call
/// it before the startup line, and a signal that arrives right after that line is never lost.
pub(crate) fn shutdown_signal() -> impl Future<Output = ()> + Send + 'static {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let handlers = signal(SignalKind::interrupt()).and_then(|interrupt| {
            signal(SignalKind::terminate()).map(|terminate| (interrupt, terminate))
        });
        async move {
            match handlers {
                Ok((mut interrupt, mut terminate)) => {
                    tokio::select! {
                        _ = interrupt.recv() => {}
                        _ = terminate.recv() => {}
                    }
                }
                Err(err) => {
                    eprintln!("warning: no SIGTERM handler ({err}); only Ctrl-C stops gracefully");
                    let _ = tokio::signal::ctrl_c().await;
                }
            }
        }
    }
    #[cfg(not(unix))]
    async {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// Why an example stopped: a startup problem (exit code 2) or a serving one (1).
pub(crate) enum Failure {
    /// Configuration, binding, the cache: something the operator fixes before starting again.
    Startup(String),
    /// The server failed after it started (only `axum::serve` reports such errors; the
    /// `autotls::serve` loop logs connection errors and goes on).
    #[allow(dead_code)]
    Serve(String),
}

impl From<String> for Failure {
    fn from(message: String) -> Self {
        Failure::Startup(message)
    }
}

/// An example's `main`: logging, the settings, `run`, and the exit code.
pub(crate) async fn run_main<F, Fut>(run: F) -> ExitCode
where
    F: FnOnce(Settings) -> Fut,
    Fut: Future<Output = Result<(), Failure>>,
{
    // `Targets` rather than `EnvFilter`: the same `RUST_LOG=info,autotls=debug` lists without
    // the regex engine, which would be a sixth of the image.
    let filter: Targets = match std::env::var("RUST_LOG") {
        Ok(spec) if !spec.trim().is_empty() => match spec.parse() {
            Ok(filter) => filter,
            Err(err) => {
                eprintln!("error: RUST_LOG: {err} (use `level` or `target=level,...`)");
                return ExitCode::from(2);
            }
        },
        _ => Targets::new().with_default(tracing::Level::INFO),
    };
    tracing_subscriber::registry()
        .with(tracing_subscriber::fmt::layer())
        .with(filter)
        .init();
    let settings = match settings_from_env() {
        Ok(settings) => settings,
        Err(err) => {
            eprintln!("error: {err}");
            return ExitCode::from(2);
        }
    };
    match run(settings).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Startup(err)) => {
            eprintln!("error: {err}");
            ExitCode::from(2)
        }
        Err(Failure::Serve(err)) => {
            eprintln!("error: {err}");
            ExitCode::from(1)
        }
    }
}

/// Binds the HTTP port and the HTTPS listener; errors name the variable to fix.
pub(crate) async fn bind_ports(
    tls: &AutoTls,
    http_addr: &str,
    https_addr: &str,
) -> Result<(TcpListener, AutoTlsListener, SocketAddr), Failure> {
    let http = TcpListener::bind(http_addr)
        .await
        .map_err(|e| format!("binding {http_addr} (AUTOTLS_HTTP_ADDR) failed: {e}"))?;
    let https = tls
        .bind(https_addr)
        .await
        .map_err(|e| format!("{e} (AUTOTLS_HTTPS_ADDR, AUTOTLS_CACHE_DIR or AUTOTLS_DOMAINS)"))?;
    let bound = https
        .local_addr()
        .map_err(|e| format!("reading the HTTPS address: {e}"))?;
    Ok((http, https, bound))
}

/// The body of `GET /info`: what the connection looks like from the server.
pub(crate) fn describe_connection(conn: &TlsConnectInfo) -> String {
    format!(
        "peer: {}\nsni: {}\nalpn: {}\n",
        conn.remote_addr,
        conn.server_name.as_deref().unwrap_or("(none)"),
        conn.alpn
            .as_deref()
            .map(String::from_utf8_lossy)
            .unwrap_or_default()
    )
}
