//! `autotls::serve` (the `serve` feature): any tower service over `AutoTlsListener` or a plain
//! `TcpListener`, HTTP/1.1 and HTTP/2, the connection's `TlsConnectInfo` on every TLS request,
//! and a graceful shutdown that lets the request in flight finish, refuses new connections,
//! is not held up by silent clients, and is bounded by the drain timeout.

mod support;

use std::convert::Infallible;
use std::future::IntoFuture;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use autotls::{AutoTls, CertState, Challenge, TlsConnectInfo};
use bytes::Bytes;
use http::{header, Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use support::client::{client_config, http_get, https_get, wait_for};
use support::pebble::Pebble;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{oneshot, Notify};
use tokio::task::JoinHandle;

/// Bound for a certificate to arrive from Pebble (it takes well under a second).
const ISSUE_LIMIT: Duration = Duration::from_secs(30);
/// Bound for anything that should happen at once on loopback.
const PROMPTLY: Duration = Duration::from_secs(5);

/// Aborts the task on drop, so a failing test leaves no server running.
struct AbortOnDrop<T>(JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Answers with the connection facts the request carries: `peer|sni|alpn`, or `none`.
async fn echo_connect_info(req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let body = match req.extensions().get::<TlsConnectInfo>() {
        Some(conn) => format!(
            "{}|{}|{}",
            conn.remote_addr,
            conn.server_name.as_deref().unwrap_or("-"),
            String::from_utf8_lossy(conn.alpn.as_deref().unwrap_or(b"-"))
        ),
        None => "none".to_owned(),
    };
    Ok(Response::new(Full::from(body)))
}

/// One HTTPS GET that offers only ALPN `http/1.1`, verifying the chain against `root`.
async fn https_get_http1(
    addr: SocketAddr,
    name: &str,
    root: &[u8],
) -> Result<(Option<Vec<u8>>, String), support::client::BoxError> {
    let config = client_config(root, &[b"http/1.1"])?;
    let tcp = TcpStream::connect(addr).await?;
    let tls = autotls::tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(
            rustls_pki_types::ServerName::try_from(name.to_owned())?,
            tcp,
        )
        .await?;
    let alpn = tls.get_ref().1.alpn_protocol().map(<[u8]>::to_vec);
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await?;
    let driver = tokio::spawn(conn);
    let request = Request::get("/")
        .header(header::HOST, name)
        .body(Empty::<Bytes>::new())?;
    let response = sender.send_request(request).await?;
    let body = response.into_body().collect().await?.to_bytes();
    driver.abort();
    Ok((alpn, String::from_utf8_lossy(&body).into_owned()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_speaks_http1_and_h2_over_the_listener_and_hands_requests_the_connect_info() {
    let pebble = Pebble::start().await;
    let cache = tempfile::tempdir().expect("tempdir");
    let tls = AutoTls::try_new(["a.test"])
        .expect("valid name")
        .directory(pebble.directory_url())
        .directory_root(pebble.directory_root_pem())
        .cache_dir(cache.path())
        .challenge(Challenge::TlsAlpn01);
    let listener = tls
        .bind(format!("127.0.0.1:{}", pebble.tls_port()))
        .await
        .expect("bind Pebble's TLS-ALPN-01 port");
    let addr = listener.local_addr().expect("local addr");
    let app = tower::ServiceBuilder::new()
        .layer(tls.clone())
        .service_fn(echo_connect_info);
    let _server = AbortOnDrop(tokio::spawn(autotls::serve(listener, app).into_future()));
    wait_for("a.test to get its certificate", ISSUE_LIMIT, || {
        (tls.status()[0].state == CertState::Valid).then_some(())
    })
    .await;
    let root = pebble.issuing_root_pem().await;

    let h2 = https_get(addr, "a.test", &root, "/")
        .await
        .expect("verified HTTPS request over h2");
    assert_eq!(h2.status, StatusCode::OK);
    assert_eq!(h2.alpn.as_deref(), Some(&b"h2"[..]));
    let (peer, rest) = h2.body.split_once('|').expect("peer|sni|alpn");
    assert!(peer.starts_with("127.0.0.1:"), "{}", h2.body);
    assert_eq!(rest, "a.test|h2");

    let (alpn, body) = https_get_http1(addr, "a.test", &root)
        .await
        .expect("verified HTTPS request over HTTP/1.1");
    assert_eq!(alpn.as_deref(), Some(&b"http/1.1"[..]));
    assert!(body.ends_with("|a.test|http/1.1"), "{body}");

    // The HTTP port: plain TCP, no TLS facts to hand on.
    let tcp = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let http_addr = tcp.local_addr().expect("local addr");
    let _http = AbortOnDrop(tokio::spawn(
        autotls::serve(tcp, tower::service_fn(echo_connect_info)).into_future(),
    ));
    let reply = http_get(http_addr, Some("a.test"), "/")
        .await
        .expect("plain HTTP request");
    assert_eq!(reply.body(), "none");
}

/// A service whose `/slow` waits for the test: it says when it has started, and answers
/// `done` once released (never, if the release is dropped).
#[derive(Clone)]
struct Slow {
    started: Arc<Notify>,
    release: Arc<tokio::sync::Mutex<Option<oneshot::Receiver<()>>>>,
}

impl Slow {
    fn new() -> (Self, oneshot::Sender<()>) {
        let (tx, rx) = oneshot::channel();
        let slow = Slow {
            started: Arc::new(Notify::new()),
            release: Arc::new(tokio::sync::Mutex::new(Some(rx))),
        };
        (slow, tx)
    }

    async fn handle(self, req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
        if req.uri().path() != "/slow" {
            return Ok(Response::new(Full::from("fast")));
        }
        self.started.notify_one();
        let release = self.release.lock().await.take();
        if let Some(rx) = release {
            if rx.await.is_ok() {
                return Ok(Response::new(Full::from("done")));
            }
        }
        std::future::pending().await
    }
}

/// Serves `slow` on a loopback port with graceful shutdown on `stop`.
async fn serve_slow(
    slow: &Slow,
    drain: Duration,
) -> (SocketAddr, oneshot::Sender<()>, AbortOnDrop<()>) {
    let tcp = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = tcp.local_addr().expect("local addr");
    let (stop, stopped) = oneshot::channel::<()>();
    let slow = slow.clone();
    let service = tower::service_fn(move |req| slow.clone().handle(req));
    let server = autotls::serve(tcp, service)
        .with_graceful_shutdown(async move {
            let _ = stopped.await;
        })
        .drain_timeout(drain);
    (addr, stop, AbortOnDrop(tokio::spawn(server.into_future())))
}

/// Waits until connecting to `addr` is refused.
async fn wait_refused(addr: SocketAddr) {
    let deadline = Instant::now() + PROMPTLY;
    loop {
        // Bounded too: a listener that no longer accepts may leave a connect hanging.
        let attempt = tokio::time::timeout(Duration::from_millis(500), TcpStream::connect(addr));
        match attempt.await {
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => return,
            other => {
                assert!(
                    Instant::now() < deadline,
                    "connections to {addr} still accepted after the shutdown signal: {other:?}"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}

#[tokio::test]
async fn graceful_shutdown_finishes_the_request_in_flight_refuses_new_ones_and_ignores_silent_clients(
) {
    let (slow, release) = Slow::new();
    // A drain timeout far beyond the bounds below: finishing early proves the drain ended
    // because the connections did, not because time ran out.
    let (addr, stop, server) = serve_slow(&slow, Duration::from_secs(60)).await;
    assert_eq!(
        http_get(addr, Some("a.test"), "/")
            .await
            .expect("the server answers")
            .body(),
        "fast"
    );
    // A client that connects and never sends a byte.
    let _silent = TcpStream::connect(addr).await.expect("connect");
    let started = slow.started.notified();
    let in_flight = tokio::spawn(async move { http_get(addr, Some("a.test"), "/slow").await });
    tokio::time::timeout(PROMPTLY, started)
        .await
        .expect("the slow request reached the handler");

    stop.send(()).expect("the server is running");
    wait_refused(addr).await;
    assert!(
        !server.0.is_finished(),
        "the server must wait for the request in flight"
    );

    release.send(()).expect("the handler waits for the release");
    let reply = tokio::time::timeout(PROMPTLY, in_flight)
        .await
        .expect("the request in flight completes")
        .expect("client task")
        .expect("the request in flight gets its response");
    assert_eq!(reply.status(), StatusCode::OK);
    assert_eq!(reply.body(), "done");
    let server = &server.0;
    wait_for("the server to finish draining", PROMPTLY, || {
        server.is_finished().then_some(())
    })
    .await;
}

#[tokio::test]
async fn the_drain_timeout_closes_connections_that_do_not_finish() {
    let (slow, release) = Slow::new();
    drop(release); // `/slow` never answers
    let drain = Duration::from_millis(300);
    let (addr, stop, server) = serve_slow(&slow, drain).await;
    let started = slow.started.notified();
    let stuck = tokio::spawn(async move { http_get(addr, Some("a.test"), "/slow").await });
    tokio::time::timeout(PROMPTLY, started)
        .await
        .expect("the slow request reached the handler");

    let signalled = Instant::now();
    stop.send(()).expect("the server is running");
    let server = &server.0;
    wait_for("the server to give up draining", PROMPTLY, || {
        server.is_finished().then_some(())
    })
    .await;
    let took = signalled.elapsed();
    assert!(
        took >= drain,
        "finished after {took:?}, before the drain timeout"
    );
    let result = tokio::time::timeout(PROMPTLY, stuck)
        .await
        .expect("the stuck request ends when its connection is closed")
        .expect("client task");
    assert!(result.is_err(), "no response can come: {result:?}");
}
