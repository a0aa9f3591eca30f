//! The hello-world server with automatic HTTPS on plain hyper 1, configured by the same
//! environment as the axum example.
//!
//! ```text
//! cargo run --example hyper --features serve     # local mode: https://localhost:8443/
//! AUTOTLS_DOMAINS=example.com AUTOTLS_EMAIL=ops@example.com cargo run --example hyper --features serve
//! ```
//!
//! The app is an ordinary hyper handler, `async fn(Request<Incoming>) -> Result<Response<_>, _>`.
//! hyper 1's own `Service` trait is not tower's, so it is made a tower service with
//! `tower::ServiceBuilder::service_fn` (the same signature `hyper::service::service_fn`
//! takes), which is also where the one layer call goes: `.layer(tls.clone())`. The crate's
//! `serve` feature then serves it over `AutoTlsListener` with hyper-util's HTTP/1 + HTTP/2
//! builder and graceful shutdown, and hands each request the connection's `TlsConnectInfo`
//! as an extension. See `examples/common/mod.rs` for the `AUTOTLS_*` variables.

#[path = "common/mod.rs"]
pub(crate) mod common;

use std::convert::Infallible;
use std::future::IntoFuture;
use std::process::ExitCode;

use autotls::TlsConnectInfo;
use bytes::Bytes;
use common::{Failure, Settings};
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use tower::ServiceBuilder;

/// The whole app: `GET /` says hello, `GET /info` shows the connection (peer, SNI, ALPN).
async fn app(req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let (status, body) = match req.uri().path() {
        "/" => (StatusCode::OK, "Hello world".to_owned()),
        "/info" => match req.extensions().get::<TlsConnectInfo>() {
            Some(conn) => (StatusCode::OK, common::describe_connection(conn)),
            None => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "no TLS connection info\n".to_owned(),
            ),
        },
        _ => (StatusCode::NOT_FOUND, "not found\n".to_owned()),
    };
    let mut response = Response::new(Full::from(body));
    *response.status_mut() = status;
    Ok(response)
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

    // The one layer call: HTTP-01 answers in front of the app, everything else untouched.
    let app = ServiceBuilder::new().layer(tls.clone()).service_fn(app);

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
