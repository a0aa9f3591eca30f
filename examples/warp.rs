//! The hello-world server with automatic HTTPS on warp 0.4, configured by the same
//! environment as the axum example.
//!
//! ```text
//! cargo run --example warp --features serve      # local mode: https://localhost:8443/
//! AUTOTLS_DOMAINS=example.com AUTOTLS_EMAIL=ops@example.com cargo run --example warp --features serve
//! ```
//!
//! Why not `warp::serve`: warp 0.4's server accepts only its own listeners (its `Accept`
//! trait is private: a `TcpListener`, a `UnixListener`, or its TLS from fixed certificate
//! files), so it cannot take `AutoTlsListener`. warp turns any filter into a tower service
//! with `warp::service(filter)` (no cargo feature needed, not even `server`); that service
//! gets the one layer call, `.layer(tls.clone())`, and the crate's `serve` feature serves it
//! over `AutoTlsListener` with hyper-util's HTTP/1 + HTTP/2 builder and graceful shutdown —
//! the same loop `warp::serve` runs. `warp::addr::remote()` is filled only by warp's own
//! server; here each request carries the connection's `TlsConnectInfo` instead
//! (`warp::ext::get::<TlsConnectInfo>()`: peer address, SNI, ALPN). See
//! `examples/common/mod.rs` for the `AUTOTLS_*` variables.

#[path = "common/mod.rs"]
pub(crate) mod common;

use std::future::IntoFuture;
use std::process::ExitCode;

use autotls::TlsConnectInfo;
use common::{Failure, Settings};
use tower::ServiceBuilder;
use warp::Filter;

/// `GET /info`: what the connection looks like from the server.
fn info(conn: TlsConnectInfo) -> String {
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

    let hello = warp::get().and(warp::path::end()).map(|| "Hello world");
    let conn_info = warp::get()
        .and(warp::path("info"))
        .and(warp::path::end())
        .and(warp::ext::get::<TlsConnectInfo>())
        .map(info);
    // The one layer call, on warp's tower service.
    let app = ServiceBuilder::new()
        .layer(tls.clone())
        .service(warp::service(hello.or(conn_info)));

    let redirect =
        autotls::serve(http, tls.http_redirect()).with_graceful_shutdown(common::shutdown_signal());
    let server = autotls::serve(https, app).with_graceful_shutdown(common::shutdown_signal());
    common::announce(&tls, local, https_addr, &http_addr);
    tokio::join!(redirect.into_future(), server.into_future());
    Ok(())
}

#[tokio::main]
async fn main() -> ExitCode {
    common::run_main(run).await
}
