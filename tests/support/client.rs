//! Minimal HTTP and HTTPS clients for tests: one fresh connection per request, no pooling, no
//! redirects, no retries, so every call exercises the server's accept/handshake path.

use std::error::Error;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{header, Request, Response, StatusCode, Uri};
use http_body_util::{BodyExt, Empty, Full};
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

pub type BoxError = Box<dyn Error + Send + Sync>;

/// Upper bound for one [`https_get`] or [`http_get`] (connect to end of body), so a silent
/// server fails the request instead of hanging the test.
pub const REQUEST_LIMIT: Duration = Duration::from_secs(10);

/// What [`https_get`] got back.
#[derive(Debug)]
pub struct HttpsReply {
    pub status: StatusCode,
    /// The response body, decoded as UTF-8 (invalid sequences replaced by U+FFFD).
    pub body: String,
    /// The ALPN protocol negotiated in the TLS handshake (`b"h2"`, `b"http/1.1"`), if any.
    pub alpn: Option<Vec<u8>>,
    /// DER of the leaf certificate the server presented.
    pub leaf_der: Vec<u8>,
}

/// Parses every certificate in `pem` (at least one is required).
pub fn certs_from_pem(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, BoxError> {
    let certs = CertificateDer::pem_slice_iter(pem).collect::<Result<Vec<_>, _>>()?;
    if certs.is_empty() {
        return Err("no CERTIFICATE block in the PEM".into());
    }
    Ok(certs)
}

/// A client config trusting exactly the certificates in `root_pem`, offering `alpn`.
pub fn client_config(root_pem: &[u8], alpn: &[&[u8]]) -> Result<rustls::ClientConfig, BoxError> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in certs_from_pem(root_pem)? {
        roots.add(cert)?;
    }
    let mut config = rustls::ClientConfig::builder_with_provider(super::provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(config)
}

/// One HTTPS GET over a fresh TCP+TLS connection to `addr`, with SNI `server_name` (an IP
/// address is allowed: then no SNI is sent and the certificate must name that IP), verifying
/// the served chain against every certificate in `root_pem`. Offers ALPN `h2` and `http/1.1`
/// and speaks whichever was negotiated (HTTP/1.1 when none was). The request carries
/// `Host: server_name[:port]` (`:authority` for h2), the port omitted when it is 443.
/// Fails after [`REQUEST_LIMIT`].
pub async fn https_get(
    addr: SocketAddr,
    server_name: &str,
    root_pem: &[u8],
    path: &str,
) -> Result<HttpsReply, BoxError> {
    within_limit(https_get_inner(addr, server_name, root_pem, path)).await
}

async fn https_get_inner(
    addr: SocketAddr,
    server_name: &str,
    root_pem: &[u8],
    path: &str,
) -> Result<HttpsReply, BoxError> {
    let config = client_config(root_pem, &[b"h2", b"http/1.1"])?;
    let name = ServerName::try_from(server_name.to_owned())?;
    let tcp = TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    let tls = TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await?;

    let (_, session) = tls.get_ref();
    let alpn = session.alpn_protocol().map(<[u8]>::to_vec);
    let leaf_der = session
        .peer_certificates()
        .and_then(|chain| chain.first())
        .ok_or("the server presented no certificate")?
        .to_vec();

    let authority = authority(server_name, addr.port());
    let io = TokioIo::new(tls);
    let response = if alpn.as_deref() == Some(b"h2") {
        let uri: Uri = format!("https://{authority}{path}").parse()?;
        let request = Request::get(uri).body(Empty::<Bytes>::new())?;
        let (mut sender, conn) = http2::handshake(TokioExecutor::new(), io).await?;
        let driver = tokio::spawn(conn);
        let response = sender.send_request(request).await;
        let response = collect(response?).await;
        driver.abort();
        response?
    } else {
        let request = Request::get(path)
            .header(header::HOST, authority)
            .body(Empty::<Bytes>::new())?;
        let (mut sender, conn) = http1::handshake(io).await?;
        let driver = tokio::spawn(conn);
        let response = sender.send_request(request).await;
        let response = collect(response?).await;
        driver.abort();
        response?
    };
    Ok(HttpsReply {
        status: response.status(),
        body: response.into_body(),
        alpn,
        leaf_der,
    })
}

/// One plain HTTP/1.1 GET over a fresh connection to `addr`. `host` is sent verbatim as the
/// `Host` header; with `None` the request has no `Host` header at all. Fails after
/// [`REQUEST_LIMIT`].
pub async fn http_get(
    addr: SocketAddr,
    host: Option<&str>,
    path: &str,
) -> Result<Response<String>, BoxError> {
    let mut request = Request::get(path);
    if let Some(host) = host {
        request = request.header(header::HOST, host);
    }
    http_request(addr, request.body(Bytes::new())?).await
}

/// Sends `request` as is (origin-form URI, headers verbatim: add `Host` yourself) over a fresh
/// plain HTTP/1.1 connection to `addr`. Fails after [`REQUEST_LIMIT`].
pub async fn http_request(
    addr: SocketAddr,
    request: Request<Bytes>,
) -> Result<Response<String>, BoxError> {
    within_limit(async {
        let tcp = TcpStream::connect(addr).await?;
        tcp.set_nodelay(true)?;
        let (mut sender, conn) = http1::handshake(TokioIo::new(tcp)).await?;
        let driver = tokio::spawn(conn);
        let response = sender.send_request(request.map(Full::new)).await;
        let response = collect(response?).await;
        driver.abort();
        response
    })
    .await
}

/// Polls `f` every 20 ms until it returns `Some`, panicking with `what` once `limit` has
/// passed. `f` is always called at least once.
pub async fn wait_for<T, F: FnMut() -> Option<T>>(what: &str, limit: Duration, mut f: F) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(value) = f() {
            return value;
        }
        if Instant::now() >= deadline {
            panic!("timed out after {limit:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Bounds a whole request (connect, handshake, response and body) by [`REQUEST_LIMIT`].
async fn within_limit<T>(
    request: impl std::future::Future<Output = Result<T, BoxError>>,
) -> Result<T, BoxError> {
    match tokio::time::timeout(REQUEST_LIMIT, request).await {
        Ok(result) => result,
        Err(_) => Err(format!("no complete response within {REQUEST_LIMIT:?}").into()),
    }
}

fn authority(server_name: &str, port: u16) -> String {
    let host = match server_name.parse::<std::net::Ipv6Addr>() {
        Ok(_) => format!("[{server_name}]"),
        Err(_) => server_name.to_owned(),
    };
    if port == 443 {
        host
    } else {
        format!("{host}:{port}")
    }
}

async fn collect(response: Response<hyper::body::Incoming>) -> Result<Response<String>, BoxError> {
    let (parts, body) = response.into_parts();
    let bytes = body.collect().await?.to_bytes();
    Ok(Response::from_parts(
        parts,
        String::from_utf8_lossy(&bytes).into_owned(),
    ))
}
