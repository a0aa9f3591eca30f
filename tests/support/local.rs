//! Local mode (no names configured: a self-signed certificate for `localhost` made at start, no
//! CA) and the clients that test a listener in it: verifying clients that trust exactly the
//! certificate the server serves, silent and stalled TCP clients, and bounds on how long
//! things take. Shared by `listener_limits.rs` (`axum::serve`, plain hyper-util loops) and
//! `serve.rs` (`autotls::serve`).

use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use autotls::AutoTls;
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio::task::JoinSet;
use tokio_rustls::client::TlsStream as ClientTlsStream;
use tokio_rustls::TlsConnector;

use super::client::BoxError;
use super::provider;

/// Generous for one handshake and one request on loopback, well under the 10 s deadline.
pub const REAL_CLIENT_BOUND: Duration = Duration::from_secs(3);

/// An `AutoTls` in local mode.
pub fn local() -> AutoTls {
    AutoTls::new(Vec::<String>::new())
}

/// Runs `f` under `bound`, failing the test with `what` when it takes longer.
pub async fn within<T>(bound: Duration, what: &str, f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(bound, f)
        .await
        .unwrap_or_else(|_| panic!("{what} did not finish within {bound:?}"))
}

// ---------------------------------------------------------------------------------------------
// A client that trusts exactly the certificate the server serves.

/// Records the server's certificate and accepts it (checking only the handshake signature):
/// used once to learn what to trust, and to see whether a failed handshake got as far as a
/// certificate.
#[derive(Debug)]
pub struct RecordServedCert {
    provider: Arc<CryptoProvider>,
    seen: Mutex<Option<CertificateDer<'static>>>,
}

impl RecordServedCert {
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            provider: provider(),
            seen: Mutex::new(None),
        })
    }

    /// The certificate the server presented, if it presented one.
    pub fn seen(&self) -> Option<CertificateDer<'static>> {
        self.seen.lock().expect("lock").clone()
    }

    /// A client config that accepts any server certificate (recording it), offering `alpn`.
    pub fn client_config(self: &Arc<Self>, alpn: &[&[u8]]) -> ClientConfig {
        let mut config = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .expect("protocol versions")
            .dangerous()
            .with_custom_certificate_verifier(self.clone())
            .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        config
    }
}

impl ServerCertVerifier for RecordServedCert {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        *self.seen.lock().expect("lock") = Some(end_entity.clone().into_owned());
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// One TLS handshake to `addr` with `config`, sending SNI `server_name` (none for an IP).
pub async fn tls_connect(
    addr: SocketAddr,
    server_name: &str,
    config: ClientConfig,
) -> io::Result<ClientTlsStream<TcpStream>> {
    let name = ServerName::try_from(server_name.to_owned())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let tcp = TcpStream::connect(addr).await?;
    TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
}

/// A verifying client for the server at `addr`.
pub struct Client {
    addr: SocketAddr,
    trusted: ClientConfig,
}

impl Client {
    /// Connects once to read the served certificate, then trusts only that.
    pub async fn for_server(addr: SocketAddr) -> Self {
        let recorder = RecordServedCert::new();
        within(
            REAL_CLIENT_BOUND,
            "the first handshake",
            tls_connect(addr, "localhost", recorder.client_config(&[])),
        )
        .await
        .expect("the first handshake succeeds");
        let served = recorder.seen().expect("the server presented a certificate");

        let mut roots = RootCertStore::empty();
        roots
            .add(served)
            .expect("the served certificate is a usable root");
        let trusted = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .expect("protocol versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        Self { addr, trusted }
    }

    /// A verified TLS connection offering `alpn`, to `server_name` (an IP sends no SNI).
    pub async fn connect(
        &self,
        server_name: &str,
        alpn: &[&[u8]],
    ) -> io::Result<ClientTlsStream<TcpStream>> {
        let mut config = self.trusted.clone();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        tls_connect(self.addr, server_name, config).await
    }

    /// Handshake, then `GET /` over HTTP/1.1; the status and body.
    pub async fn get_h1(&self, server_name: &str) -> Result<(StatusCode, String), BoxError> {
        self.get_h1_at(server_name, "/").await
    }

    /// Handshake, then `GET path` over HTTP/1.1; the status and body.
    pub async fn get_h1_at(
        &self,
        server_name: &str,
        path: &str,
    ) -> Result<(StatusCode, String), BoxError> {
        let tls = self.connect(server_name, &[b"http/1.1"]).await?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await?;
        tokio::spawn(conn);
        let req = Request::get(path)
            .header("host", "localhost")
            .body(Empty::<Bytes>::new())?;
        read_response(sender.send_request(req).await?).await
    }

    /// Handshake, then `GET /` over HTTP/2; the status and body.
    pub async fn get_h2(&self, server_name: &str) -> Result<(StatusCode, String), BoxError> {
        let tls = self.connect(server_name, &[b"h2"]).await?;
        let (mut sender, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls)).await?;
        tokio::spawn(conn);
        let req = Request::get("https://localhost/").body(Empty::<Bytes>::new())?;
        read_response(sender.send_request(req).await?).await
    }
}

/// The status and the body (as UTF-8) of `res`.
pub async fn read_response(
    res: Response<hyper::body::Incoming>,
) -> Result<(StatusCode, String), BoxError> {
    let status = res.status();
    let body = res.into_body().collect().await?.to_bytes();
    Ok((status, String::from_utf8(body.to_vec())?))
}

// ---------------------------------------------------------------------------------------------
// Silent and stalled clients.

/// Opens `n` TCP connections that send nothing.
pub async fn silent_connections(addr: SocketAddr, n: usize) -> Vec<TcpStream> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        out.push(
            TcpStream::connect(addr)
                .await
                .expect("connect a silent client"),
        );
    }
    out
}

/// Reads until the server closes (EOF or an error), discarding data; how long it took.
pub async fn time_until_closed(stream: &mut TcpStream, bound: Duration, what: &str) -> Duration {
    let start = Instant::now();
    within(bound, what, async {
        let mut buf = [0u8; 4096];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(_) => continue,
            }
        }
    })
    .await;
    start.elapsed()
}

/// Checks, concurrently, that the server has closed none of `streams`: each read must still
/// be waiting after `wait`.
pub async fn assert_all_still_open(streams: Vec<TcpStream>, wait: Duration) -> Vec<TcpStream> {
    let mut checks = JoinSet::new();
    for (i, mut stream) in streams.into_iter().enumerate() {
        checks.spawn(async move {
            let mut buf = [0u8; 1];
            let read = tokio::time::timeout(wait, stream.read(&mut buf)).await;
            (i, read.map(|r| r.map_err(|e| e.kind())), stream)
        });
    }
    let mut back = Vec::new();
    while let Some(done) = checks.join_next().await {
        let (i, read, stream) = done.expect("the check task does not panic");
        assert!(
            read.is_err(),
            "silent connection {i} was closed or answered by the server: {read:?}"
        );
        back.push((i, stream));
    }
    // In the order given, so callers can go on telling them apart.
    back.sort_by_key(|(i, _)| *i);
    back.into_iter().map(|(_, stream)| stream).collect()
}

/// The first TLS record a real client sends: its ClientHello (SNI `localhost`).
pub fn client_hello() -> Vec<u8> {
    let config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_root_certificates(RootCertStore::empty())
        .with_no_client_auth();
    let name = ServerName::try_from("localhost").expect("server name");
    let mut conn =
        rustls::ClientConnection::new(Arc::new(config), name).expect("client connection");
    let mut hello = Vec::new();
    conn.write_tls(&mut hello).expect("write the ClientHello");
    assert!(hello.len() > 10, "a ClientHello record");
    hello
}

/// Against a server with `.max_pending_handshakes(4)`: holds four silent connections, checks
/// that a fifth one closes the oldest promptly and that the others stay open, and returns
/// the four now held (oldest first).
pub async fn fill_the_cap_of_four(addr: SocketAddr) -> Vec<TcpStream> {
    let mut pending = silent_connections(addr, 4).await;
    // A fifth connection evicts the oldest silent one, promptly.
    let fifth = TcpStream::connect(addr).await.expect("connect a fifth");
    let mut oldest = pending.remove(0);
    time_until_closed(
        &mut oldest,
        Duration::from_secs(2),
        "closing the oldest handshake when a fifth connection arrives",
    )
    .await;
    pending.push(fifth);
    let pending = assert_all_still_open(pending, Duration::from_millis(200)).await;
    assert_eq!(pending.len(), 4, "never more than the cap");
    pending
}
