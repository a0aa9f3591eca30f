//! `autotls::serve` (the `serve` feature): any tower service over `AutoTlsListener` or a plain
//! `TcpListener`, HTTP/1.1 and HTTP/2, the connection's `TlsConnectInfo` on every TLS request,
//! and a graceful shutdown that lets the request in flight finish, refuses new connections,
//! is not held up by silent clients, and is bounded by the drain timeout.
//!
//! Over `AutoTlsListener` each connection's handshake runs in its own task (`accept_tcp` +
//! `Handshaking::finish`): local mode (no CA) checks that the handshake deadline and the cap on
//! pending handshakes hold there too, and that clients still in their handshake are closed at
//! once on graceful shutdown.

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
use support::local::{
    assert_all_still_open, client_hello, fill_the_cap_of_four, local, silent_connections,
    time_until_closed, within, Client, REAL_CLIENT_BOUND,
};
use support::pebble::Pebble;
use support::AbortOnDrop;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{oneshot, Notify};

/// Bound for a certificate to arrive from Pebble (it takes well under a second).
const ISSUE_LIMIT: Duration = Duration::from_secs(30);
/// Bound for anything that should happen at once on loopback.
const PROMPTLY: Duration = Duration::from_secs(5);

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

/// Serves `slow` on a plain TCP loopback port with graceful shutdown on `stop`.
async fn serve_slow(
    slow: &Slow,
    drain: Duration,
) -> (SocketAddr, oneshot::Sender<()>, AbortOnDrop<()>) {
    let tcp = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = tcp.local_addr().expect("local addr");
    let (stop, server) = serve_slow_on(tcp, slow, drain);
    (addr, stop, server)
}

/// Serves `slow` on `listener` with graceful shutdown on `stop`.
fn serve_slow_on(
    listener: impl autotls::serve::Listener,
    slow: &Slow,
    drain: Duration,
) -> (oneshot::Sender<()>, AbortOnDrop<()>) {
    let (stop, stopped) = oneshot::channel::<()>();
    let slow = slow.clone();
    let service = tower::service_fn(move |req| slow.clone().handle(req));
    let server = autotls::serve(listener, service)
        .with_graceful_shutdown(async move {
            let _ = stopped.await;
        })
        .drain_timeout(drain);
    (stop, AbortOnDrop(tokio::spawn(server.into_future())))
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

#[tokio::test]
async fn graceful_shutdown_over_the_listener_closes_clients_still_in_their_handshake_at_once() {
    let (slow, release) = Slow::new();
    // A handshake deadline and a drain timeout far beyond the bounds below: neither is what
    // closes the stalled clients or ends the drain.
    let tls = local().handshake_timeout(Duration::from_secs(60));
    let listener = tls.bind("127.0.0.1:0").await.expect("bind in local mode");
    let addr = listener.local_addr().expect("local addr");
    let (stop, server) = serve_slow_on(listener, &slow, Duration::from_secs(60));
    let client = Arc::new(Client::for_server(addr).await);

    // Clients in their handshake: silent ones, and one that stopped halfway through its
    // ClientHello.
    let mut stalled = silent_connections(addr, 3).await;
    let hello = client_hello();
    let mut half = TcpStream::connect(addr).await.expect("connect");
    half.write_all(&hello[..hello.len() / 2])
        .await
        .expect("write half a ClientHello");
    stalled.push(half);

    // A request in flight, accepted after all of them (accepts are in order): once it has
    // reached the handler, every stalled client has been accepted and is in its handshake.
    let started = slow.started.notified();
    let in_flight = tokio::spawn({
        let client = client.clone();
        async move { client.get_h1_at("localhost", "/slow").await }
    });
    within(PROMPTLY, "the slow request reaching the handler", started).await;
    let mut stalled = assert_all_still_open(stalled, Duration::from_millis(200)).await;

    let signalled = Instant::now();
    stop.send(()).expect("the server is running");
    // Closed at once, while the server still waits for the request in flight. The streams
    // stay open on this side until the end of the test.
    for (i, stream) in stalled.iter_mut().enumerate() {
        time_until_closed(
            stream,
            Duration::from_secs(2),
            &format!("closing stalled client {i} after the shutdown signal"),
        )
        .await;
    }
    assert!(
        !server.0.is_finished(),
        "the server must wait for the request in flight"
    );

    release.send(()).expect("the handler waits for the release");
    let (status, body) = within(PROMPTLY, "the request in flight", in_flight)
        .await
        .expect("client task")
        .expect("the request in flight gets its response");
    assert_eq!((status, body.as_str()), (StatusCode::OK, "done"));
    let server = &server.0;
    wait_for("the server to finish draining", PROMPTLY, || {
        server.is_finished().then_some(())
    })
    .await;
    let took = signalled.elapsed();
    assert!(
        took < Duration::from_secs(10),
        "the drain took {took:?} with stalled clients held"
    );
    drop(stalled);
}

/// Answers `Hello world`.
async fn hello(_req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    Ok(Response::new(Full::from("Hello world")))
}

/// `tls.bind("127.0.0.1:0")` served by `autotls::serve` with [`hello`].
async fn serve_hello(tls: &AutoTls) -> (SocketAddr, AbortOnDrop<()>) {
    let listener = tls.bind("127.0.0.1:0").await.expect("bind in local mode");
    let addr = listener.local_addr().expect("local addr");
    let server = autotls::serve(listener, tower::service_fn(hello));
    (addr, AbortOnDrop(tokio::spawn(server.into_future())))
}

/// `GET /` over HTTP/1.1 and over HTTP/2, each answered `Hello world` within the bound.
async fn assert_served_h1_and_h2(client: &Client, when: &str) {
    for (what, res) in [
        (
            "HTTP/1.1",
            within(REAL_CLIENT_BOUND, when, client.get_h1("localhost")).await,
        ),
        (
            "HTTP/2",
            within(REAL_CLIENT_BOUND, when, client.get_h2("localhost")).await,
        ),
    ] {
        let (status, body) = res.unwrap_or_else(|e| panic!("{what} {when}: {e}"));
        assert_eq!(
            (status, body.as_str()),
            (StatusCode::OK, "Hello world"),
            "{what} {when}"
        );
    }
}

#[tokio::test]
async fn serve_at_max_pending_handshakes_closes_the_oldest_and_serves_real_clients() {
    let tls = local().max_pending_handshakes(4);
    let (addr, _server) = serve_hello(&tls).await;
    let client = Client::for_server(addr).await;

    let mut pending = fill_the_cap_of_four(addr).await;

    // Real clients while the cap's worth of silent connections is held.
    assert_served_h1_and_h2(&client, "at the cap").await;

    // The first of them found the cap full and evicted the oldest silent connection; the
    // second found the place the first one's finished handshake had freed, and closed nothing.
    let mut next_oldest = pending.remove(0);
    time_until_closed(
        &mut next_oldest,
        Duration::from_secs(2),
        "closing the oldest silent connection for the first real client",
    )
    .await;
    let pending = assert_all_still_open(pending, Duration::from_millis(200)).await;
    assert_eq!(pending.len(), 3);
}

#[tokio::test]
async fn serve_closes_clients_that_stall_in_their_handshake_at_the_deadline() {
    let deadline = Duration::from_millis(300);
    let tls = local().handshake_timeout(deadline);
    let (addr, _server) = serve_hello(&tls).await;
    let hello = client_hello();

    // A client that sends nothing, and one that sends a whole ClientHello and then nothing
    // (the deadline covers the rest of the handshake too), side by side.
    let mut silent = TcpStream::connect(addr).await.expect("connect");
    let mut whole = TcpStream::connect(addr).await.expect("connect");
    whole.write_all(&hello).await.expect("write a ClientHello");
    let (silent_took, whole_took) = tokio::join!(
        time_until_closed(
            &mut silent,
            Duration::from_secs(5),
            "closing a silent connection at a 300 ms deadline",
        ),
        time_until_closed(
            &mut whole,
            Duration::from_secs(5),
            "closing a handshake that never finishes at a 300 ms deadline",
        ),
    );
    for (what, took) in [("silent", silent_took), ("whole ClientHello", whole_took)] {
        assert!(
            took >= Duration::from_millis(250),
            "{what}: closed after {took:?}, before the deadline"
        );
    }

    let client = Client::for_server(addr).await;
    assert_served_h1_and_h2(&client, "after the stalled clients").await;
}
