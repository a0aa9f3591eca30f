//! The hello-world server with automatic HTTPS, configured by the environment.
//!
//! ```text
//! cargo run --example axum                       # local mode: https://localhost:8443/
//! AUTOTLS_DOMAINS=example.com AUTOTLS_EMAIL=ops@example.com cargo run --example axum
//! ```
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
//! | `AUTOTLS_ENGINE` | `instant-acme` (the default) |
//!
//! Bad configuration prints one error line and exits with code 2. Ctrl-C or SIGTERM stops
//! it gracefully.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Instant;

use autotls::{AutoTls, CertEvent, Challenge, TlsConnectInfo};
use axum::extract::ConnectInfo;
use axum::routing::get;
use axum::Router;
use tokio::net::TcpListener;

/// The example's settings, read from `AUTOTLS_*`.
#[derive(Debug)]
pub(crate) struct Settings {
    tls: AutoTls,
    local: bool,
    http_addr: String,
    https_addr: String,
}

pub(crate) fn settings_from_env() -> Result<Settings, String> {
    let var = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
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
    match var("AUTOTLS_ENGINE").as_deref() {
        None | Some("instant-acme") => {}
        Some(other) => {
            return Err(format!(
                "AUTOTLS_ENGINE: unknown engine {other:?}: this build has `instant-acme`"
            ))
        }
    }
    tls.validate().map_err(|e| e.to_string())?;
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

/// `GET /info`: what the connection looks like from the server.
async fn info(ConnectInfo(conn): ConnectInfo<TlsConnectInfo>) -> String {
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

pub(crate) async fn run(settings: Settings) -> Result<(), Failure> {
    let Settings {
        tls,
        local,
        http_addr,
        https_addr,
    } = settings;
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

    let http = TcpListener::bind(&http_addr)
        .await
        .map_err(|e| format!("binding {http_addr} (AUTOTLS_HTTP_ADDR) failed: {e}"))?;
    let https = tls
        .bind(&https_addr)
        .await
        .map_err(|e| format!("{e} (AUTOTLS_HTTPS_ADDR, AUTOTLS_CACHE_DIR or AUTOTLS_DOMAINS)"))?;
    let https_addr: SocketAddr = https
        .local_addr()
        .map_err(|e| format!("reading the HTTPS address: {e}"))?;

    let app = Router::new()
        .route("/", get(|| async { "Hello world" }))
        .route("/info", get(info))
        .layer(tls.clone());

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

    let redirect = axum::serve(http, tls.http_redirect()).with_graceful_shutdown(shutdown_signal());
    let server = axum::serve(
        https,
        app.into_make_service_with_connect_info::<TlsConnectInfo>(),
    )
    .with_graceful_shutdown(shutdown_signal());
    let (a, b) = tokio::join!(redirect, server);
    a.and(b)
        .map_err(|e| Failure::Serve(format!("serving failed: {e}")))
}

/// Why the example stopped: a startup problem (exit code 2) or a serving one (1).
pub(crate) enum Failure {
    Startup(String),
    Serve(String),
}

impl From<String> for Failure {
    fn from(message: String) -> Self {
        Failure::Startup(message)
    }
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(term) => term,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
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
