//! Certificates: the manager that keeps one certificate per name, the ACME engine behind a
//! small seam, the SNI → certificate store, events and local mode.
//!
//! This module is the only one that names an ACME engine's types.

mod account_gate;
mod challenges;
mod engine;
mod events;
mod instant;
mod local;
mod manager;
mod migrate;
#[cfg(feature = "rustls-acme")]
mod rustls_acme;
mod store;

pub(crate) use challenges::{is_token, Challenges};
pub use events::{CertEvent, CertState, CertStatus};
pub(crate) use store::{is_validation, CertStore, StoreResolver, ACME_TLS_ALPN};

use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::{ClientConfig, RootCertStore};

use crate::cache::Cache;
use crate::config::{AutoTls, Config};
use crate::error::{Error, ErrorKind};

/// Starts certificate management once (see [`AutoTls::start`]): first imports a rustls-acme
/// cache when one was given, so that its certificates load like the crate's own.
pub(crate) fn start(tls: &AutoTls) -> Result<(), Error> {
    if let Some(dir) = &tls.config.rustls_acme_import {
        let started = *tls.state.started.lock().unwrap_or_else(|p| p.into_inner());
        if !started && !tls.config.is_local() {
            // An invalid configuration is reported by the manager, as without an import.
            if let Ok(names) = tls.config.check() {
                let cache = Cache::open(&tls.config.cache_dir, &tls.config.directory)?;
                migrate::import_rustls_acme(dir, &tls.config, &cache, names);
            }
        }
    }
    manager::start(tls)
}

#[cfg(not(any(feature = "aws-lc-rs", feature = "ring")))]
compile_error!(
    "autotls needs a crypto provider: enable the `aws-lc-rs` (default) or `ring` feature"
);

/// The crypto provider for every TLS config and key the crate makes: aws-lc-rs when its
/// feature is on (the default), else ring.
/// Made once: loading 10,000 cached certificates must not build 10,000 providers.
pub(crate) fn provider() -> Arc<CryptoProvider> {
    static PROVIDER: std::sync::OnceLock<Arc<CryptoProvider>> = std::sync::OnceLock::new();
    PROVIDER
        .get_or_init(|| {
            #[cfg(feature = "aws-lc-rs")]
            let provider = rustls::crypto::aws_lc_rs::default_provider();
            #[cfg(all(feature = "ring", not(feature = "aws-lc-rs")))]
            let provider = rustls::crypto::ring::default_provider();
            Arc::new(provider)
        })
        .clone()
}

/// The TLS client config for the CA's HTTPS, both engines': the system's roots and the
/// configured extra roots; a clear error when there are none at all.
pub(crate) fn ca_client_config(config: &Config) -> Result<ClientConfig, Error> {
    let mut roots = RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    let (system, _) = roots.add_parsable_certificates(native.certs);
    for pem in &config.directory_roots {
        let mut reader = &pem[..];
        let certs = rustls_pemfile::certs(&mut reader).filter_map(Result::ok);
        roots.add_parsable_certificates(certs);
    }
    if roots.is_empty() {
        let detail = native
            .errors
            .first()
            .map(|e| e.to_string())
            .unwrap_or_else(|| "no certificates found".to_owned());
        return Err(Error::new(
            ErrorKind::Certificate,
            format!(
                "no trusted root certificates for the CA's HTTPS ({detail}) — install the ca-certificates package, set SSL_CERT_FILE, or copy a CA bundle into the image"
            ),
            detail,
        ));
    }
    tracing::debug!(
        system_roots = system,
        extra = config.directory_roots.len(),
        "trusted roots for the ACME directory"
    );
    Ok(ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::new(ErrorKind::Certificate, "TLS setup for the CA failed", e))?
        .with_root_certificates(roots)
        .with_no_client_auth())
}
