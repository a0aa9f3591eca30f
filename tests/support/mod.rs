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

/// A throwaway CA and a leaf for `127.0.0.1` and `localhost` signed by it: the HTTPS identity
/// of the test servers that stand in for a CA (Pebble, the fault proxy).
pub struct LocalhostCert {
    /// The CA, to trust.
    pub ca_pem: String,
    /// The leaf.
    pub cert_pem: String,
    /// The leaf's key (PKCS#8).
    pub key: rcgen::KeyPair,
}

impl LocalhostCert {
    /// A new CA named `ca_name` and a leaf it signed.
    pub fn new(ca_name: &str) -> Self {
        use rcgen::{
            BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
            KeyPair, KeyUsagePurpose,
        };
        let ca_key = KeyPair::generate().expect("generate a test CA key");
        let mut ca = CertificateParams::new(Vec::<String>::new()).expect("test CA parameters");
        ca.distinguished_name.push(DnType::CommonName, ca_name);
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca_pem = ca.self_signed(&ca_key).expect("self-sign a test CA").pem();
        let issuer = Issuer::new(ca, ca_key);

        let key = KeyPair::generate().expect("generate a test server key");
        let mut leaf = CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
            .expect("test server certificate parameters");
        leaf.distinguished_name
            .push(DnType::CommonName, "localhost");
        leaf.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let cert_pem = leaf
            .signed_by(&key, &issuer)
            .expect("sign a test server certificate")
            .pem();
        Self {
            ca_pem,
            cert_pem,
            key,
        }
    }
}

/// The cache subdirectory the crate uses for a directory URL (see `slug` in src/cache.rs): the URL
/// without `https://`, every character but ASCII letters, digits, `.` and `-` made `_`.
/// Written from the documented layout rather than taken from the crate, so the tests check it.
pub fn cache_subdir(directory_url: &str, root: &std::path::Path) -> std::path::PathBuf {
    let slug: String = directory_url
        .trim_start_matches("https://")
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    root.join(slug)
}
