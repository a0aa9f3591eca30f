//! The hyper example, end to end: configured only by `AUTOTLS_*`, it gets a certificate from
//! Pebble by HTTP-01 — answered on the HTTP port that `autotls::serve` runs over a plain
//! `TcpListener` — and serves `Hello world` and the connection facts over verified HTTPS
//! through hyper's own server stack; SIGTERM stops the built binary with exit code 0, and bad
//! configuration exits with code 2, as the axum example does.

mod support;

#[allow(dead_code)]
#[path = "example_support/mod.rs"]
mod example_support;

#[allow(dead_code)]
#[path = "../examples/hyper.rs"]
mod example;

use std::net::SocketAddr;

use example_support::{free_port, pebble_env};
use support::pebble::Pebble;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hyper_example_gets_a_certificate_by_http_01_and_serves_verified_https() {
    let pebble = Pebble::start().await;
    let cache = tempfile::tempdir().expect("tempdir");
    // HTTPS is not on Pebble's TLS-ALPN-01 port: only the HTTP port can validate.
    let https = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let http = SocketAddr::from(([127, 0, 0, 1], pebble.http_port()));
    let env = pebble_env(&pebble, cache.path(), "http-01", https, http);
    let settings = example::common::settings_from(|name| env.get(name).cloned())
        .unwrap_or_else(|e| panic!("settings: {e}"));
    let server = tokio::spawn(example::run(settings));
    example_support::assert_example_serves(&pebble, https, http).await;
    server.abort();
}

#[test]
fn sigterm_stops_the_hyper_example_gracefully_with_exit_code_0() {
    example_support::assert_sigterm_exits_0("hyper");
}

#[test]
fn bad_configuration_makes_the_hyper_example_exit_with_code_2() {
    example_support::assert_bad_configuration_exits_2("hyper");
}
