//! The HTTPS listener's limits, in local mode (a self-signed certificate made at start, no CA):
//! silent clients never hold up real ones, every handshake has a deadline, the number of
//! pending handshakes is capped, connection facts reach the handler, a client offering
//! `acme-tls/1` with no challenge pending is refused, and the listener works in plain
//! hyper-util accept loops (`accept()`, or `accept_tcp()` with the handshake in the connection
//! task) as well as under `axum::serve`.
//!
//! Clients verify the served certificate: the first connection reads it, later ones trust
//! exactly that certificate for `localhost`.

mod support;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use autotls::{AutoTls, TlsConnectInfo};
use axum::extract::ConnectInfo;
use axum::routing::get;
use axum::Router;
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{Empty, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use support::client::BoxError;
use support::local::{
    assert_all_still_open, client_hello, fill_the_cap_of_four, local, read_response,
    silent_connections, time_until_closed, tls_connect, within, Client, RecordServedCert,
    REAL_CLIENT_BOUND,
};
use support::AbortOnDrop;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// `tls.bind("127.0.0.1:0")` served by `axum::serve` with `app`.
async fn serve_app(tls: &AutoTls, app: Router) -> (SocketAddr, AbortOnDrop<()>) {
    let listener = tls.bind("127.0.0.1:0").await.expect("bind in local mode");
    let addr = listener.local_addr().expect("local addr");
    let task = tokio::spawn(async move {
        axum::serve(listener, app).await.expect("axum::serve");
    });
    (addr, AbortOnDrop(task))
}

/// `tls.bind("127.0.0.1:0")` served by `axum::serve` with a hello-world app.
async fn serve_hello(tls: &AutoTls) -> (SocketAddr, AbortOnDrop<()>) {
    serve_app(
        tls,
        Router::new().route("/", get(|| async { "Hello world" })),
    )
    .await
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

    // Held (not dropped) while the real client is served.
    let _held = fill_the_cap_of_four(addr).await;

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

/// Serves one connection as a plain hyper-util accept loop would: HTTP/1.1 or HTTP/2, as the
/// client speaks, answering `hello {peer}`.
async fn serve_hello_peer(stream: autotls::TlsStream, peer: SocketAddr) {
    let service =
        hyper::service::service_fn(move |_req: Request<hyper::body::Incoming>| async move {
            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(format!(
                "hello {peer}"
            )))))
        });
    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
        .serve_connection(TokioIo::new(stream), service)
        .await;
}

/// Silent clients in this many: under the cap of 8 the plain loops are bound with, so none
/// is evicted and each must still be open at the end.
const PLAIN_LOOP_SILENT: usize = 6;

/// What a plain accept loop serving [`serve_hello_peer`] on `addr` must do: serve HTTP/1.1 and
/// HTTP/2 while [`PLAIN_LOOP_SILENT`] silent clients wait in their handshakes, and keep those
/// open. Makes `1 + PLAIN_LOOP_SILENT + 2` connections.
async fn check_a_plain_accept_loop(addr: SocketAddr) {
    let client = Client::for_server(addr).await;

    // Silent clients do not hold up the loop.
    let silent = silent_connections(addr, PLAIN_LOOP_SILENT).await;
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

#[tokio::test]
async fn the_listener_works_in_a_plain_hyper_util_accept_loop() {
    let tls = local().max_pending_handshakes(8);
    let mut listener = tls.bind("127.0.0.1:0").await.expect("bind in local mode");
    let addr = listener.local_addr().expect("local addr");
    let _server = AbortOnDrop(tokio::spawn(async move {
        loop {
            let (stream, peer) = listener.accept().await;
            tokio::spawn(serve_hello_peer(stream, peer));
        }
    }));
    check_a_plain_accept_loop(addr).await;
}

#[tokio::test]
async fn accept_tcp_works_in_a_plain_hyper_util_loop_with_the_handshake_in_the_connection_task() {
    let tls = local().max_pending_handshakes(8);
    let mut listener = tls.bind("127.0.0.1:0").await.expect("bind in local mode");
    let addr = listener.local_addr().expect("local addr");
    // (the peer `accept_tcp` returned, what `Handshaking::peer_addr` says) for every connection.
    let peers = Arc::new(Mutex::new(Vec::<(SocketAddr, SocketAddr)>::new()));
    let recorded = peers.clone();
    let _server = AbortOnDrop(tokio::spawn(async move {
        loop {
            let (handshaking, peer) = listener.accept_tcp().await;
            recorded
                .lock()
                .expect("lock")
                .push((peer, handshaking.peer_addr()));
            // One task per connection: the handshake, then serving it.
            tokio::spawn(async move {
                if let Some(stream) = handshaking.finish().await {
                    serve_hello_peer(stream, peer).await;
                }
            });
        }
    }));
    check_a_plain_accept_loop(addr).await;

    let peers = peers.lock().expect("lock").clone();
    // Every connection was accepted before the last request was answered (accepts are FIFO).
    assert_eq!(
        peers.len(),
        1 + PLAIN_LOOP_SILENT + 2,
        "one accept per connection: {peers:?}"
    );
    for (peer, handshaking_peer) in &peers {
        assert_eq!(handshaking_peer, peer, "Handshaking::peer_addr");
        assert!(peer.ip().is_loopback(), "{peer}");
    }
    let mut ports: Vec<u16> = peers.iter().map(|(peer, _)| peer.port()).collect();
    ports.sort_unstable();
    ports.dedup();
    assert_eq!(ports.len(), peers.len(), "distinct peers: {peers:?}");
}

#[tokio::test]
async fn a_client_offering_acme_tls_1_fails_the_handshake_when_no_challenge_is_pending() {
    let tls = local();
    let requests = Arc::new(AtomicUsize::new(0));
    let counted = requests.clone();
    let app = Router::new().route(
        "/",
        get(move || async move {
            counted.fetch_add(1, Ordering::SeqCst);
            "Hello world"
        }),
    );
    let (addr, _server) = serve_app(&tls, app).await;
    // Local mode's one name has its certificate from the start (and this handshake proves it
    // is served): handshakes take the plain rustls accept, the resolver picks the certificate.
    let client = Client::for_server(addr).await;

    for (alpn, server_name) in [
        (&["acme-tls/1"][..], "localhost"),
        (&["h2", "acme-tls/1"], "localhost"),
        (&["acme-tls/1", "http/1.1"], "localhost"),
        // No SNI: no validation certificate could be for it either.
        (&["acme-tls/1"], "127.0.0.1"),
    ] {
        let what = format!("a handshake to {server_name} offering {alpn:?}");
        let offered: Vec<&[u8]> = alpn.iter().map(|p| p.as_bytes()).collect();
        // Accepts any certificate, so only the server can make this handshake fail.
        let recorder = RecordServedCert::new();
        let result = within(
            REAL_CLIENT_BOUND,
            &what,
            tls_connect(addr, server_name, recorder.client_config(&offered)),
        )
        .await;
        match result {
            Ok(stream) => panic!(
                "{what} succeeded, negotiating {:?}",
                stream
                    .get_ref()
                    .1
                    .alpn_protocol()
                    .map(String::from_utf8_lossy)
            ),
            Err(err) => {
                let tls_error = err
                    .get_ref()
                    .and_then(|e| e.downcast_ref::<rustls::Error>());
                assert!(
                    matches!(tls_error, Some(rustls::Error::AlertReceived(_))),
                    "{what}: the server refuses with a TLS alert, got {err:?}"
                );
            }
        }
        assert!(
            recorder.seen().is_none(),
            "{what}: the server presented a certificate"
        );
    }
    assert_eq!(
        requests.load(Ordering::SeqCst),
        0,
        "no request reached the app"
    );

    // Real clients right after are served as before.
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
        assert_eq!(
            (status, body.as_str()),
            (StatusCode::OK, "Hello world"),
            "{what}"
        );
    }
    assert_eq!(requests.load(Ordering::SeqCst), 2, "both real requests");
}
