//! Certificates: the manager that keeps one certificate per name, the ACME engine behind a
//! small seam, the SNI → certificate store, events and local mode.
//!
//! This module is the only one that names an ACME engine's types.

mod challenges;
mod engine;
mod events;
mod instant;
mod local;
mod manager;
mod store;

pub(crate) use challenges::{is_token, Challenges};
pub use events::{CertEvent, CertState, CertStatus};
pub(crate) use manager::start;
pub(crate) use store::{CertStore, FixedResolver, StoreResolver};

use std::sync::Arc;

use rustls::crypto::CryptoProvider;

#[cfg(not(any(feature = "aws-lc-rs", feature = "ring")))]
compile_error!(
    "autotls needs a crypto provider: enable the `aws-lc-rs` (default) or `ring` feature"
);

/// The crypto provider for every TLS config and key the crate makes: aws-lc-rs when its
/// feature is on (the default), else ring.
pub(crate) fn provider() -> Arc<CryptoProvider> {
    #[cfg(feature = "aws-lc-rs")]
    let provider = rustls::crypto::aws_lc_rs::default_provider();
    #[cfg(all(feature = "ring", not(feature = "aws-lc-rs")))]
    let provider = rustls::crypto::ring::default_provider();
    Arc::new(provider)
}
