//! Shared by the benchmarks: locally made certificates, the crypto provider, and a tiny ACME
//! CA that hands out one challenge and never validates it.
//!
//! Each bench binary uses only part of this module, hence the `allow`.
#![allow(dead_code)]

pub mod proxy;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// The rustls crypto provider the crate is built with (aws-lc-rs by default, ring with
/// `--no-default-features --features ring`): every config in the benchmarks uses it, so the
/// floor and autotls do the same cryptography.
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    #[cfg(feature = "aws-lc-rs")]
    let provider = rustls::crypto::aws_lc_rs::default_provider();
    #[cfg(all(feature = "ring", not(feature = "aws-lc-rs")))]
    let provider = rustls::crypto::ring::default_provider();
    Arc::new(provider)
}

/// A local CA (ECDSA P-256, like Let's Encrypt's E-series intermediates) that signs leaves
/// the way a CA would: leaf for one name, chain = leaf + this CA.
pub struct BenchCa {
    issuer: Issuer<'static, KeyPair>,
    pem: String,
}

impl BenchCa {
    pub fn new(common_name: &str) -> Self {
        let key = KeyPair::generate().expect("generate the bench CA key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA parameters");
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let pem = params.self_signed(&key).expect("self-sign the CA").pem();
        Self {
            issuer: Issuer::new(params, key),
            pem,
        }
    }

    /// The CA certificate, PEM: what clients trust.
    pub fn pem(&self) -> &str {
        &self.pem
    }

    /// A cache file for `name` as the crate writes one: the private key, then the chain (leaf,
    /// then this CA). Valid from a day ago for 90 days, so it is served without renewal.
    pub fn leaf_pem(&self, name: &str) -> String {
        let key = KeyPair::generate().expect("generate a leaf key");
        let mut params = CertificateParams::new(vec![name.to_owned()]).expect("leaf parameters");
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::days(1);
        params.not_after = now + time::Duration::days(89);
        let cert = params
            .signed_by(&key, &self.issuer)
            .expect("sign a leaf certificate");
        format!("{}{}{}", key.serialize_pem(), cert.pem(), self.pem)
    }
}

/// The private key and chain of a PEM written by [`BenchCa::leaf_pem`].
pub fn parse_pem(pem: &[u8]) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
    let chain = rustls_pemfile::certs(&mut &pem[..])
        .collect::<Result<Vec<_>, _>>()
        .expect("certificates in the PEM");
    let key = rustls_pemfile::private_key(&mut &pem[..])
        .expect("a readable PEM")
        .expect("a private key in the PEM");
    (chain, key)
}

/// A rustls server config for one certificate (used for the benchmarks' own helper servers).
pub fn server_config(pem: &str, alpn: &[&[u8]]) -> rustls::ServerConfig {
    let (chain, key) = parse_pem(pem.as_bytes());
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .expect("a usable certificate");
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    config
}

/// The token the [`StalledCa`] hands out (43 base64url characters, like a real CA's).
pub const TOKEN: &str = "bench-token-0123456789abcdefghijklmnopqrstu";

/// A minimal ACME CA on loopback that takes an account and an order, offers one HTTP-01
/// challenge with [`TOKEN`], and keeps the order `pending` forever: while the engine polls,
/// the token stays published, so the layer's answer can be measured.
///
/// It checks nothing (no JWS verification): it is a fixture for the client side only.
pub struct StalledCa {
    addr: SocketAddr,
    root_pem: String,
    task: JoinHandle<()>,
}

impl StalledCa {
    pub async fn start() -> Self {
        let ca = BenchCa::new("autotls bench: stalled ACME CA");
        let config = Arc::new(server_config(&ca.leaf_pem("127.0.0.1"), &[b"http/1.1"]));
        let tcp = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = tcp.local_addr().expect("local address");
        let base = format!("https://{addr}");
        let nonces = Arc::new(AtomicU64::new(1));
        let task = tokio::spawn(async move {
            let acceptor = tokio_rustls::TlsAcceptor::from(config);
            loop {
                let Ok((tcp, _)) = tcp.accept().await else {
                    continue;
                };
                let acceptor = acceptor.clone();
                let base = base.clone();
                let nonces = nonces.clone();
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let svc = hyper::service::service_fn(move |req| {
                        let base = base.clone();
                        let nonce = nonces.fetch_add(1, Ordering::Relaxed);
                        async move { Ok::<_, Infallible>(stalled_answer(req, &base, nonce).await) }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(tls), svc)
                        .await;
                });
            }
        });
        // The certificate must be valid for 127.0.0.1: rcgen puts an IP SAN for it.
        Self {
            addr,
            root_pem: ca.pem().to_owned(),
            task,
        }
    }

    pub fn directory_url(&self) -> String {
        format!("https://{}/dir", self.addr)
    }

    pub fn root_pem(&self) -> &str {
        &self.root_pem
    }
}

impl Drop for StalledCa {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn stalled_answer(req: Request<Incoming>, base: &str, nonce: u64) -> Response<Full<Bytes>> {
    let path = req.uri().path().to_owned();
    let method = req.method().clone();
    let _ = req.into_body().collect().await;
    let order = format!(
        r#"{{"status":"pending","identifiers":[],"authorizations":["{base}/authz/1"],"finalize":"{base}/finalize/1"}}"#
    );
    let (status, location, body) = match (method, path.as_str()) {
        (Method::GET, "/dir") => (
            StatusCode::OK,
            None,
            format!(
                r#"{{"newNonce":"{base}/nonce","newAccount":"{base}/account","newOrder":"{base}/order"}}"#
            ),
        ),
        (Method::HEAD | Method::GET, "/nonce") => (StatusCode::OK, None, String::new()),
        (Method::POST, "/account") => (
            StatusCode::CREATED,
            Some(format!("{base}/account/1")),
            r#"{"status":"valid"}"#.to_owned(),
        ),
        (Method::POST, "/order") => (StatusCode::CREATED, Some(format!("{base}/order/1")), order),
        (Method::POST, "/order/1") => (StatusCode::OK, None, order),
        (Method::POST, "/authz/1") => (
            StatusCode::OK,
            None,
            format!(
                r#"{{"identifier":{{"type":"dns","value":"bench"}},"status":"pending","challenges":[{{"type":"http-01","url":"{base}/chall/1","token":"{TOKEN}","status":"pending"}}]}}"#
            ),
        ),
        (Method::POST, "/chall/1") => (
            StatusCode::OK,
            None,
            format!(
                r#"{{"type":"http-01","url":"{base}/chall/1","token":"{TOKEN}","status":"processing"}}"#
            ),
        ),
        _ => (
            StatusCode::NOT_FOUND,
            None,
            r#"{"type":"urn:ietf:params:acme:error:malformed","detail":"not here"}"#.to_owned(),
        ),
    };
    let mut rsp = Response::new(Full::new(Bytes::from(body)));
    *rsp.status_mut() = status;
    let headers = rsp.headers_mut();
    headers.insert("replay-nonce", format!("n{nonce}").parse().expect("nonce"));
    headers.insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    if let Some(location) = location {
        headers.insert(http::header::LOCATION, location.parse().expect("location"));
    }
    rsp
}

/// The median (`NaN` for no values): the middle value, or the mean of the two middle ones.
pub fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}
