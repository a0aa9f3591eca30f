//! The warp example, end to end: configured only by `AUTOTLS_*`, it gets a certificate from
//! Pebble by TLS-ALPN-01 — answered by `AutoTlsListener` under `autotls::serve` — and serves
//! `Hello world` and the connection facts (`warp::ext::get::<TlsConnectInfo>()`) over verified
//! HTTPS through `warp::service` and hyper-util; SIGTERM stops the built binary with exit
//! code 0, and bad configuration exits with code 2, as the axum example does.

mod support;

#[allow(dead_code)]
#[path = "example_support/mod.rs"]
mod example_support;

#[allow(dead_code)]
#[path = "../examples/warp.rs"]
mod example;

use std::net::SocketAddr;

use example_support::{free_port, pebble_env};
use support::pebble::Pebble;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_warp_example_gets_a_certificate_by_tls_alpn_01_and_serves_verified_https() {
    let pebble = Pebble::start().await;
    let cache = tempfile::tempdir().expect("tempdir");
    let https = SocketAddr::from(([127, 0, 0, 1], pebble.tls_port()));
    let http = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let env = pebble_env(&pebble, cache.path(), "tls-alpn-01", https, http);
    let settings = example::common::settings_from(|name| env.get(name).cloned())
        .unwrap_or_else(|e| panic!("settings: {e}"));
    let server = tokio::spawn(example::run(settings));
    example_support::assert_example_serves(&pebble, https, http).await;
    server.abort();
}

#[test]
fn sigterm_stops_the_warp_example_gracefully_with_exit_code_0() {
    example_support::assert_sigterm_exits_0("warp");
}

#[test]
fn bad_configuration_makes_the_warp_example_exit_with_code_2() {
    example_support::assert_bad_configuration_exits_2("warp");
}
