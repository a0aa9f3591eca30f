//! Test support shared by the integration tests (`mod support;`).
//!
//! * [`pebble`]: a real ACME CA (Pebble + pebble-challtestsrv as its DNS) on loopback ports.
//! * [`client`]: small HTTP/HTTPS clients for checking what a server under test serves.
//! * [`local`]: local mode (a self-signed certificate, no CA), verifying clients for it, and
//!   silent or stalled clients with bounds on how long the server takes to close them.
//! * [`process`]: re-running one test in a child process (for process-wide settings: umask,
//!   file-descriptor limit), and the process's CPU time and open file descriptors.
//!
//! Every test binary compiles this module but uses only part of it, hence the `allow`s.
#![allow(dead_code)]

pub mod client;
pub mod local;
pub mod pebble;
pub mod process;
pub mod proxy;

#[allow(unused_imports)]
pub use client::{http_get, https_get, wait_for, HttpsReply};
#[allow(unused_imports)]
pub use pebble::{Pebble, PebbleOptions};

use std::sync::Arc;

use tokio::task::JoinHandle;

#[cfg(not(any(feature = "aws-lc-rs", feature = "ring")))]
compile_error!("the integration tests need the `aws-lc-rs` or the `ring` feature");

/// The rustls crypto provider the crate under test is built with (aws-lc-rs by default, ring
/// with `--no-default-features --features ring`). Every client config here uses it.
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    #[cfg(feature = "aws-lc-rs")]
    let provider = rustls::crypto::aws_lc_rs::default_provider();
    #[cfg(all(feature = "ring", not(feature = "aws-lc-rs")))]
    let provider = rustls::crypto::ring::default_provider();
    Arc::new(provider)
}

/// Aborts the task on drop, so a failing test leaves no server running.
pub struct AbortOnDrop<T>(pub JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}
