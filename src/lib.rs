//! Automatic, renewing HTTPS from an ACME CA (Let's Encrypt by default) for any tower-based
//! app — axum, hyper, warp, tonic — with one layer call and one listener.
//!
//! # Quick start
//!
//! ```no_run
//! use std::future::IntoFuture;
//!
//! use autotls::AutoTls;
//! use axum::{routing::get, Router};
//! use tokio::net::TcpListener;
//!
//! #[tokio::main]
//! async fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     let tls = AutoTls::new(["example.com", "www.example.com"]) // nothing else is ever ordered
//!         .contact("mailto:ops@example.com")
//!         .cache_dir("/cert-cache"); // keep it on a volume: it survives redeploys
//!     let app = Router::new()
//!         .route("/", get(|| async { "Hello world" }))
//!         .layer(tls.clone());
//!     // Port 80: HTTP-01 challenges, and a 308 to https for everything else.
//!     tokio::spawn(axum::serve(TcpListener::bind("[::]:80").await?, tls.http_redirect()).into_future());
//!     // Port 443: TLS with certificates from the CA, TLS-ALPN-01 answered on the way.
//!     axum::serve(tls.bind("[::]:443").await?, app).await?;
//!     Ok(())
//! }
//! ```
//!
//! # What happens
//! - [`AutoTls`] is the builder and a cheap handle. [`AutoTls::bind`] starts the certificate
//!   manager: valid certificates in the cache are served at once; every other name gets its
//!   own background task that orders a certificate, renews it when a third of its lifetime is
//!   left, and retries failures on a capped, jittered schedule that honours `Retry-After`.
//!   All names share one ACME account.
//! - [`AutoTlsListener`] accepts TCP, runs each TLS handshake in its own task with a
//!   deadline and a cap on pending handshakes, answers TLS-ALPN-01 validation connections
//!   itself and yields only finished TLS streams.
//! - The layer ([`AutoTlsLayer`], or `.layer(tls.clone())`) answers HTTP-01 challenges and
//!   passes every other request through untouched; [`HttpRedirect`] does the same on the
//!   HTTP port and redirects the rest to HTTPS.
//! - With no names, or only `localhost`, the crate runs in local mode: a self-signed
//!   certificate for `localhost`, `127.0.0.1` and `::1`, made at start; no CA is contacted.
//!
//! # Retry schedule
//! After the n-th failure in a row the next try waits `first × 2^(n-1)`, capped, ±10 %
//! jitter (defaults: 1 min, 2 min, 4 min, … 1 h; see [`AutoTls::retry_backoff`]). A later
//! `Retry-After` from the CA always wins.
//!
//! # Features
//! | feature    | default | what it does |
//! |------------|---------|--------------|
//! | `aws-lc-rs`| yes     | aws-lc-rs as the crypto provider |
//! | `ring`     | no      | ring as the crypto provider (used when `aws-lc-rs` is off) |
//! | `axum`     | yes     | `axum::serve::Listener` for [`AutoTlsListener`], connect info, `axum::serve(.., tls.http_redirect())` |
//! | `serve`    | no      | `autotls::serve(listener, service)`: any tower service (hyper, warp, …) over [`AutoTlsListener`] or the HTTP port's `TcpListener`, HTTP/1 + HTTP/2, graceful shutdown |
//! | `rustls-acme` | no   | rustls-acme's `AcmeState` as a second ACME engine: [`AutoTls::engine`]`(`[`Engine::RustlsAcme`]`)` |

#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod cache;
mod certs;
mod config;
mod error;
mod handle;
pub mod layer;
mod listener;
mod redirect;
#[cfg(feature = "serve")]
pub mod serve;
mod state;

pub use certs::{CertEvent, CertState, CertStatus};
pub use config::{
    AutoTls, Challenge, ConfigError, ConfigErrorKind, Engine, LETS_ENCRYPT_PRODUCTION,
    LETS_ENCRYPT_STAGING,
};
pub use error::{Error, ErrorKind};
pub use layer::{AutoTlsLayer, AutoTlsService};
pub use listener::{AutoTlsListener, Handshaking, TlsConnectInfo, TlsStream};
#[cfg(feature = "axum")]
pub use redirect::AxumHttpRedirect;
pub use redirect::HttpRedirect;
/// The rustls this crate uses, so your code can match its version.
pub use rustls;
#[cfg(feature = "serve")]
pub use serve::serve;
/// The tokio-rustls this crate uses ([`TlsStream`] is its server stream).
pub use tokio_rustls;

/// The README's code blocks, compiled as doctests so the README stays true.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;

/// Not part of the API: hooks for the crate's own crash tests. May change at any time.
#[doc(hidden)]
pub mod __private {
    use std::path::Path;

    /// Writes `file` through the cache for `directory_url` under `root`, exactly as the
    /// certificate manager does (temp file, fsync, rename, 0600).
    pub fn cache_write(
        root: &Path,
        directory_url: &str,
        file: &str,
        bytes: &[u8],
    ) -> Result<(), String> {
        let cache = crate::cache::Cache::open(root, directory_url).map_err(|e| e.to_string())?;
        cache.write(file, bytes).map_err(|e| e.to_string())
    }
}
