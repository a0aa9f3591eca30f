//! The HTTPS listener's limits, in local mode (a self-signed certificate made at start, no CA):
//! silent clients never hold up real ones, every handshake has a deadline, the number of
//! pending handshakes is capped, connection facts reach the handler, and the listener works
//! in a plain hyper-util accept loop as well as under `axum::serve`.
//!
//! Clients verify the served certificate: the first connection reads it, later ones trust
//! exactly that certificate for `localhost`.

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use autotls::rustls::client::danger::{
    HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier,
};
use autotls::rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use autotls::rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use autotls::rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use autotls::tokio_rustls::client::TlsStream as ClientTlsStream;
use autotls::tokio_rustls::TlsConnector;
use autotls::{AutoTls, TlsConnectInfo};
use axum::extract::ConnectInfo;
use axum::routing::get;
use axum::Router;
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinSet;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Generous for one handshake and one request on loopback, well under the 10 s deadline.
const REAL_CLIENT_BOUND: Duration = Duration::from_secs(3);

fn local() -> AutoTls {
    AutoTls::new(Vec::<String>::new())
}

fn provider() -> Arc<CryptoProvider> {
    #[cfg(feature = "aws-lc-rs")]
    let provider = autotls::rustls::crypto::aws_lc_rs::default_provider();
    #[cfg(all(feature = "ring", not(feature = "aws-lc-rs")))]
    let provider = autotls::rustls::crypto::ring::default_provider();
    Arc::new(provider)
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// `tls.bind("127.0.0.1:0")` served by `axum::serve` with a hello-world app.
async fn serve_hello(tls: &AutoTls) -> (SocketAddr, AbortOnDrop) {
    let listener = tls.bind("127.0.0.1:0").await.expect("bind in local mode");
    let addr = listener.local_addr().expect("local addr");
    let app = Router::new().route("/", get(|| async { "Hello world" }));
    let task = tokio::spawn(async move {
        axum::serve(listener, app).await.expect("axum::serve");
    });
    (addr, AbortOnDrop(task))
}

// ---------------------------------------------------------------------------------------------
// A client that trusts exactly the certificate the server serves.

/// Records the server's certificate and accepts it; used once, to learn what to trust.
#[derive(Debug)]
struct RecordServedCert {
    provider: Arc<CryptoProvider>,
    seen: Mutex<Option<CertificateDer<'static>>>,
}

impl ServerCertVerifier for RecordServedCert {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, autotls::rustls::Error> {
        *self.seen.lock().expect("lock") = Some(end_entity.clone().into_owned());
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, autotls::rustls::Error> {
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
    ) -> Result<HandshakeSignatureValid, autotls::rustls::Error> {
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

/// A verifying client for the server at `addr`.
struct Client {
    addr: SocketAddr,
    trusted: ClientConfig,
}

impl Client {
    /// Connects once to read the served certificate, then trusts only that.
    async fn for_server(addr: SocketAddr) -> Self {
        let recorder = Arc::new(RecordServedCert {
            provider: provider(),
            seen: Mutex::new(None),
        });
        let config = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .expect("protocol versions")
            .dangerous()
            .with_custom_certificate_verifier(recorder.clone())
            .with_no_client_auth();
        let name = ServerName::try_from("localhost").expect("server name");
        let first = async {
            let tcp = TcpStream::connect(addr).await?;
            TlsConnector::from(Arc::new(config))
                .connect(name, tcp)
                .await
        };
        tokio::time::timeout(REAL_CLIENT_BOUND, first)
            .await
            .expect("the first handshake finishes in time")
            .expect("the first handshake succeeds");
        let served = recorder
            .seen
            .lock()
            .expect("lock")
            .take()
            .expect("the server presented a certificate");

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
    async fn connect(
        &self,
        server_name: &str,
        alpn: &[&[u8]],
    ) -> io::Result<ClientTlsStream<TcpStream>> {
        let mut config = self.trusted.clone();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        let name = ServerName::try_from(server_name.to_owned())
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        let tcp = TcpStream::connect(self.addr).await?;
        TlsConnector::from(Arc::new(config))
            .connect(name, tcp)
            .await
    }

    /// Handshake, then `GET /` over HTTP/1.1; the status and body.
    async fn get_h1(&self, server_name: &str) -> Result<(StatusCode, String), BoxError> {
        let tls = self.connect(server_name, &[b"http/1.1"]).await?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await?;
        tokio::spawn(conn);
        let req = Request::get("/")
            .header("host", "localhost")
            .body(Empty::<Bytes>::new())?;
        read_response(sender.send_request(req).await?).await
    }

    /// Handshake, then `GET /` over HTTP/2; the status and body.
    async fn get_h2(&self, server_name: &str) -> Result<(StatusCode, String), BoxError> {
        let tls = self.connect(server_name, &[b"h2"]).await?;
        let (mut sender, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls)).await?;
        tokio::spawn(conn);
        let req = Request::get("https://localhost/").body(Empty::<Bytes>::new())?;
        read_response(sender.send_request(req).await?).await
    }
}

async fn read_response(
    res: Response<hyper::body::Incoming>,
) -> Result<(StatusCode, String), BoxError> {
    let status = res.status();
    let body = res.into_body().collect().await?.to_bytes();
    Ok((status, String::from_utf8(body.to_vec())?))
}

/// Runs `f` under `bound`, failing the test with `what` when it takes longer.
async fn within<T>(bound: Duration, what: &str, f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(bound, f)
        .await
        .unwrap_or_else(|_| panic!("{what} did not finish within {bound:?}"))
}

// ---------------------------------------------------------------------------------------------
// Silent and stalled clients.

/// Opens `n` TCP connections that send nothing.
async fn silent_connections(addr: SocketAddr, n: usize) -> Vec<TcpStream> {
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
async fn time_until_closed(stream: &mut TcpStream, bound: Duration, what: &str) -> Duration {
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
async fn assert_all_still_open(streams: Vec<TcpStream>, wait: Duration) -> Vec<TcpStream> {
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
        back.push(stream);
    }
    back
}

#[tokio::test]
async fn two_hundred_silent_connections_do_not_delay_a_real_client() {
    let tls = local();
    let (addr, _server) = serve_hello(&tls).await;
    let client = Client::for_server(addr).await;

    let silent = silent_connections(addr, 200).await;
    for round in 1..=3 {
        let (status, body) = within(
            REAL_CLIENT_BOUND,
            &format!("round {round}: handshake and GET / behind 200 silent connections"),
            client.get_h1("localhost"),
        )
        .await
        .unwrap_or_else(|e| panic!("round {round}: {e}"));
        assert_eq!(status, StatusCode::OK, "round {round}");
        assert_eq!(body, "Hello world", "round {round}");
    }
    // They were held, not dropped to make room: still open, inside their 10 s deadline.
    let silent = assert_all_still_open(silent, Duration::from_millis(200)).await;
    assert_eq!(silent.len(), 200);
}

#[tokio::test]
async fn a_silent_connection_is_closed_at_the_handshake_deadline() {
    let deadline = Duration::from_millis(300);
    let tls = local().handshake_timeout(deadline);
    let (addr, _server) = serve_hello(&tls).await;

    let mut silent = TcpStream::connect(addr).await.expect("connect");
    let took = time_until_closed(
        &mut silent,
        Duration::from_secs(5),
        "closing a silent connection at a 300 ms deadline",
    )
    .await;
    assert!(
        took >= Duration::from_millis(250),
        "closed after {took:?}, before the deadline"
    );

    let client = Client::for_server(addr).await;
    let (status, body) = within(
        REAL_CLIENT_BOUND,
        "a real client afterwards",
        client.get_h1("localhost"),
    )
    .await
    .expect("a real client is served");
    assert_eq!((status, body.as_str()), (StatusCode::OK, "Hello world"));
}

/// The first TLS record a real client sends: its ClientHello.
fn client_hello() -> Vec<u8> {
    let config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_root_certificates(RootCertStore::empty())
        .with_no_client_auth();
    let name = ServerName::try_from("localhost").expect("server name");
    let mut conn =
        autotls::rustls::ClientConnection::new(Arc::new(config), name).expect("client connection");
    let mut hello = Vec::new();
    conn.write_tls(&mut hello).expect("write the ClientHello");
    assert!(hello.len() > 10, "a ClientHello record");
    hello
}

#[tokio::test]
async fn a_client_that_stalls_inside_the_handshake_is_closed_at_the_deadline() {
    let deadline = Duration::from_millis(300);
    let tls = local().handshake_timeout(deadline);
    let (addr, _server) = serve_hello(&tls).await;
    let hello = client_hello();

    // Half a ClientHello, then nothing: the deadline covers reading the ClientHello ...
    let mut half = TcpStream::connect(addr).await.expect("connect");
    half.write_all(&hello[..hello.len() / 2])
        .await
        .expect("write half a ClientHello");
    let took = time_until_closed(
        &mut half,
        Duration::from_secs(5),
        "closing after half a ClientHello",
    )
    .await;
    assert!(
        took >= Duration::from_millis(250),
        "closed after {took:?}, before the deadline"
    );

    // ... and a whole ClientHello with no Finished after it: the same deadline covers the
    // rest of the handshake.
    let mut whole = TcpStream::connect(addr).await.expect("connect");
    whole.write_all(&hello).await.expect("write a ClientHello");
    let took = time_until_closed(
        &mut whole,
        Duration::from_secs(5),
        "closing a handshake that never finishes",
    )
    .await;
    assert!(
        took >= Duration::from_millis(250),
        "closed after {took:?}, before the deadline"
    );
}

#[tokio::test]
async fn at_max_pending_handshakes_the_oldest_is_closed_and_a_real_client_is_served() {
    let tls = local().max_pending_handshakes(4);
    let (addr, _server) = serve_hello(&tls).await;
    let client = Client::for_server(addr).await;

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

    // A real client is served while the cap's worth of silent connections is held: it
    // evicts the oldest of them and completes its handshake.
    for _ in 0..3 {
        let (status, body) = within(
            REAL_CLIENT_BOUND,
            "a real client at the cap",
            client.get_h1("localhost"),
        )
        .await
        .expect("a real client is served at the cap");
        assert_eq!((status, body.as_str()), (StatusCode::OK, "Hello world"));
    }
}

async fn describe_connection(ConnectInfo(info): ConnectInfo<TlsConnectInfo>) -> String {
    format!(
        "{}|{}|{}",
        info.remote_addr,
        info.server_name.as_deref().unwrap_or("-"),
        info.alpn
            .as_deref()
            .map(String::from_utf8_lossy)
            .unwrap_or_else(|| "-".into())
    )
}

#[tokio::test]
async fn tls_connect_info_reports_the_peer_the_server_name_and_the_alpn() {
    let tls = local();
    let listener = tls.bind("127.0.0.1:0").await.expect("bind in local mode");
    let addr = listener.local_addr().expect("local addr");
    let app = Router::new().route("/", get(describe_connection));
    let server = AbortOnDrop(tokio::spawn(async move {
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<TlsConnectInfo>(),
        )
        .await
        .expect("axum::serve");
    }));
    let client = Client::for_server(addr).await;

    for (alpn, server_name, sni) in [
        ("http/1.1", "localhost", "localhost"),
        ("h2", "localhost", "localhost"),
        // An IP address as the name: no SNI is sent, and local mode still serves.
        ("http/1.1", "127.0.0.1", "-"),
    ] {
        let tls_stream = within(
            REAL_CLIENT_BOUND,
            "handshake",
            client.connect(server_name, &[alpn.as_bytes()]),
        )
        .await
        .unwrap_or_else(|e| panic!("{alpn} to {server_name}: {e}"));
        let local_addr = tls_stream.get_ref().0.local_addr().expect("client address");
        let negotiated = tls_stream.get_ref().1.alpn_protocol().map(<[u8]>::to_vec);
        assert_eq!(
            negotiated.as_deref(),
            Some(alpn.as_bytes()),
            "the server agrees to {alpn}"
        );

        let io = TokioIo::new(tls_stream);
        let body = within(REAL_CLIENT_BOUND, "GET /", async {
            let res = if alpn == "h2" {
                let (mut sender, conn) =
                    hyper::client::conn::http2::handshake(TokioExecutor::new(), io).await?;
                tokio::spawn(conn);
                sender
                    .send_request(Request::get("https://localhost/").body(Empty::<Bytes>::new())?)
                    .await?
            } else {
                let (mut sender, conn) = hyper::client::conn::http1::handshake(io).await?;
                tokio::spawn(conn);
                sender
                    .send_request(
                        Request::get("/")
                            .header("host", "localhost")
                            .body(Empty::<Bytes>::new())?,
                    )
                    .await?
            };
            read_response(res).await
        })
        .await
        .unwrap_or_else(|e: BoxError| panic!("{alpn} to {server_name}: {e}"));

        assert_eq!(body.0, StatusCode::OK);
        assert_eq!(
            body.1,
            format!("{local_addr}|{sni}|{alpn}"),
            "{alpn} to {server_name}"
        );
    }
    drop(server);
}

#[tokio::test]
async fn the_listener_works_in_a_plain_hyper_util_accept_loop() {
    let tls = local().max_pending_handshakes(8);
    let mut listener = tls.bind("127.0.0.1:0").await.expect("bind in local mode");
    let addr = listener.local_addr().expect("local addr");
    let _server = AbortOnDrop(tokio::spawn(async move {
        loop {
            let (stream, peer) = listener.accept().await;
            tokio::spawn(async move {
                let service = hyper::service::service_fn(
                    move |_req: Request<hyper::body::Incoming>| async move {
                        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(format!(
                            "hello {peer}"
                        )))))
                    },
                );
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    }));
    let client = Client::for_server(addr).await;

    // Silent clients do not hold up this loop either.
    let silent = silent_connections(addr, 6).await;
    for (what, res) in [
        (
            "HTTP/1.1",
            within(REAL_CLIENT_BOUND, "HTTP/1.1", client.get_h1("localhost")).await,
        ),
        (
            "HTTP/2",
            within(REAL_CLIENT_BOUND, "HTTP/2", client.get_h2("localhost")).await,
        ),
    ] {
        let (status, body) = res.unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_eq!(status, StatusCode::OK, "{what}");
        assert!(body.starts_with("hello 127.0.0.1:"), "{what}: {body}");
    }
    assert_all_still_open(silent, Duration::from_millis(100)).await;
}
