//! The hello-world server with automatic HTTPS on axum, configured by the environment — the
//! reference example (the Docker image, `Dockerfile.example`, ships this one).
//!
//! ```text
//! cargo run --example axum                       # local mode: https://localhost:8443/
//! AUTOTLS_DOMAINS=example.com AUTOTLS_EMAIL=ops@example.com cargo run --example axum
//! ```
//!
//! It reads the `AUTOTLS_*` variables listed in `examples/common/mod.rs` (and the README),
//! as the hyper and warp examples do. `GET /` answers `Hello world`; `GET /info` shows the
//! peer address, SNI and ALPN of the connection. Bad configuration prints one error line and
//! exits with code 2. Ctrl-C or SIGTERM stops it gracefully.
//!
//! With axum, the crate needs nothing but its default features: `.layer(tls.clone())` on the
//! router, `axum::serve` on `tls.bind(..)` for HTTPS and on a `TcpListener` with
//! `tls.http_redirect()` for HTTP.

#[path = "common/mod.rs"]
pub(crate) mod common;

use std::process::ExitCode;

use autotls::TlsConnectInfo;
use axum::extract::ConnectInfo;
use axum::routing::get;
use axum::Router;
// tests/example_axum.rs calls `example::settings_from_env()`.
#[allow(unused_imports)]
pub(crate) use common::settings_from_env;
use common::{Failure, Settings};

/// `GET /info`: what the connection looks like from the server.
async fn info(ConnectInfo(conn): ConnectInfo<TlsConnectInfo>) -> String {
    common::describe_connection(&conn)
}

/// Serves until Ctrl-C or SIGTERM.
pub(crate) async fn run(settings: Settings) -> Result<(), Failure> {
    let Settings {
        tls,
        local,
        http_addr,
        https_addr,
    } = settings;
    common::print_issued_certificates(&tls);

    let (http, https, https_addr) = common::bind_ports(&tls, &http_addr, &https_addr).await?;

    let app = Router::new()
        .route("/", get(|| async { "Hello world" }))
        .route("/info", get(info))
        .layer(tls.clone());

    let redirect =
        axum::serve(http, tls.http_redirect()).with_graceful_shutdown(common::shutdown_signal());
    let server = axum::serve(
        https,
        app.into_make_service_with_connect_info::<TlsConnectInfo>(),
    )
    .with_graceful_shutdown(common::shutdown_signal());
    common::announce(&tls, local, https_addr, &http_addr);
    let (a, b) = tokio::join!(redirect, server);
    a.and(b)
        .map_err(|e| Failure::Serve(format!("serving failed: {e}")))
}

#[tokio::main]
async fn main() -> ExitCode {
    common::run_main(run).await
}
