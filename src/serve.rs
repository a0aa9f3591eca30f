//! [`serve`](crate::serve()): any tower service over [`AutoTlsListener`] (or the HTTP port's
//! `TcpListener`) with hyper-util's HTTP/1 + HTTP/2 server and graceful shutdown. Needs the
//! `serve` feature.
//!
//! axum has `axum::serve`; hyper, warp and other tower apps would otherwise each copy the same
//! accept loop — spawn a task per connection, pick HTTP/1 or HTTP/2, adapt tower to hyper,
//! stop accepting on a signal, let open connections finish within a bound. This is that loop,
//! once:
//!
//! ```no_run
//! use std::convert::Infallible;
//! use std::future::IntoFuture;
//!
//! use autotls::AutoTls;
//! use bytes::Bytes;
//! use http::{Request, Response};
//! use http_body_util::Full;
//! use hyper::body::Incoming;
//! use tokio::net::TcpListener;
//! use tower::ServiceBuilder;
//!
//! async fn hello(_req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
//!     Ok(Response::new(Full::from("Hello world")))
//! }
//!
//! #[tokio::main]
//! async fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     let tls = AutoTls::new(["example.com"]).cache_dir("/cert-cache");
//!     // The one layer call: HTTP-01 answers in front of the app.
//!     let app = ServiceBuilder::new().layer(tls.clone()).service_fn(hello);
//!     // Port 80: challenges and redirects. Port 443: the listener.
//!     let http = TcpListener::bind("[::]:80").await?;
//!     tokio::spawn(autotls::serve(http, tls.http_redirect()).into_future());
//!     autotls::serve(tls.bind("[::]:443").await?, app)
//!         .with_graceful_shutdown(async { tokio::signal::ctrl_c().await.ok(); })
//!         .await;
//!     Ok(())
//! }
//! ```
//!
//! An axum `Router` is a tower service too, so axum apps can use this loop as well: the
//! connection facts then come as a request extension rather than through `ConnectInfo`.
//!
//! ```no_run
//! use autotls::{AutoTls, TlsConnectInfo};
//! use axum::routing::get;
//! use axum::{Extension, Router};
//!
//! async fn hello(Extension(info): Extension<TlsConnectInfo>) -> String {
//!     format!("Hello {}", info.remote_addr)
//! }
//!
//! # async fn run() -> Result<(), autotls::Error> {
//! let tls = AutoTls::new(["example.com"]).cache_dir("/cert-cache");
//! let app = Router::new().route("/", get(hello)).layer(tls.clone());
//! autotls::serve(tls.bind("[::]:443").await?, app).await;
//! # Ok(())
//! # }
//! ```
//!
//! # What the loop does
//! - Over [`AutoTlsListener`], each connection's task runs its TLS handshake
//!   ([`AutoTlsListener::accept_tcp`], [`Handshaking::finish`]) and then serves it: one task per
//!   connection, as a hand-written tokio-rustls server has, where `axum::serve` (through
//!   [`AutoTlsListener::accept`]) has a handshake task and then a serving task. The listener's
//!   handshake deadline and pending-handshake cap apply the same way.
//! - Each connection runs in its own task on hyper-util's auto builder: HTTP/2 when the
//!   client speaks it (ALPN `h2` on TLS, or the HTTP/2 preface), HTTP/1.1 otherwise, with
//!   upgrades (WebSocket) allowed. A timer is set, so hyper's HTTP/1 header read timeout
//!   (30 s) applies to clients that never finish their request head.
//! - The service is cloned for each connection and driven as tower expects (`poll_ready`,
//!   then `call`). Requests over [`AutoTlsListener`] carry a [`TlsConnectInfo`] extension
//!   (peer address, SNI, ALPN): `req.extensions().get::<TlsConnectInfo>()`, or
//!   `warp::ext::get::<TlsConnectInfo>()`.
//! - Accepting never fails: a TCP accept error is logged and retried (after a pause when out
//!   of file descriptors). A failed handshake (or a TLS-ALPN-01 validation connection, which
//!   the listener answers) ends its task quietly. Connection errors are logged at `debug` and
//!   end that connection only.
//! - Graceful shutdown ([`Serve::with_graceful_shutdown`]): when the signal resolves, the
//!   listener is closed (new connections are refused), connections still in their handshake
//!   are closed, every open connection is asked to
//!   finish (HTTP/1 closes after the response in flight, HTTP/2 sends `GOAWAY`), and the
//!   future resolves once they have — or after the drain timeout (10 s by default, see
//!   [`WithGracefulShutdown::drain_timeout`]), when the rest are closed. A connection that was
//!   upgraded (a WebSocket) belongs to its handler from then on and is not waited for.
//! - Dropping the future closes the listener and every connection at once.

use std::error::Error as StdError;
use std::fmt;
use std::future::{Future, IntoFuture};
use std::net::SocketAddr;
use std::pin::{pin, Pin};
use std::task::{Context, Poll};
use std::time::Duration;

use http::{Request, Response};
use http_body::Body;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tower_service::Service;

use crate::listener::{accept_error, AutoTlsListener, Handshaking, TlsConnectInfo};

type BoxError = Box<dyn StdError + Send + Sync>;

/// How long open connections get to finish after the shutdown signal, by default.
const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves `service` on every connection `listener` accepts, with HTTP/1.1 and HTTP/2.
///
/// `listener` is an [`AutoTlsListener`] (the HTTPS port, from [`AutoTls::bind`]) or a
/// `tokio::net::TcpListener` (the HTTP port, usually with [`AutoTls::http_redirect`]).
/// `service` is any tower service for `Request<hyper::body::Incoming>` — a `Router`, a
/// `warp::service(..)`, a `tower::service_fn` — cloned once per connection.
///
/// Await the result to serve until the future is dropped, or call
/// [`Serve::with_graceful_shutdown`] first. See the [module docs](mod@crate::serve) for what the
/// loop does.
///
/// [`AutoTls::bind`]: crate::AutoTls::bind
/// [`AutoTls::http_redirect`]: crate::AutoTls::http_redirect
pub fn serve<L, S, B>(listener: L, service: S) -> Serve<L, S>
where
    L: Listener,
    S: Service<Request<Incoming>, Response = Response<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    Serve { listener, service }
}

/// A listener [`serve`](crate::serve()) can take: [`AutoTlsListener`] or
/// `tokio::net::TcpListener`.
///
/// Sealed: the connection facts a listener adds to requests are part of this crate's promise,
/// so other listeners cannot be plugged in here (use hyper-util directly for those).
pub trait Listener: sealed::Accept {}

impl Listener for AutoTlsListener {}

impl Listener for TcpListener {}

mod sealed {
    use super::*;

    /// What [`serve`](crate::serve()) needs of a listener.
    pub trait Accept: Send + 'static {
        /// The connection, once ready to serve.
        type Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static;
        /// The connection as accepted, before its handshake (if it has one).
        type Accepted: Send + 'static;

        /// The next connection; never fails (errors are logged and retried).
        fn accept(&mut self) -> impl Future<Output = (Self::Accepted, SocketAddr)> + Send;

        /// Readies an accepted connection, in its own task; `None` to close it.
        fn ready(accepted: Self::Accepted) -> impl Future<Output = Option<Self::Io>> + Send;

        /// The extension each request on `io` carries, if any.
        fn connect_info(io: &Self::Io, peer: SocketAddr) -> Option<TlsConnectInfo>;
    }

    impl Accept for AutoTlsListener {
        type Io = crate::listener::TlsStream;
        type Accepted = Handshaking;

        fn accept(&mut self) -> impl Future<Output = (Self::Accepted, SocketAddr)> + Send {
            // The handshake runs in the connection's task: one task per connection.
            AutoTlsListener::accept_tcp(self)
        }

        fn ready(accepted: Handshaking) -> impl Future<Output = Option<Self::Io>> + Send {
            accepted.finish()
        }

        fn connect_info(io: &Self::Io, peer: SocketAddr) -> Option<TlsConnectInfo> {
            Some(TlsConnectInfo::new(io, peer))
        }
    }

    impl Accept for TcpListener {
        type Io = tokio::net::TcpStream;
        type Accepted = tokio::net::TcpStream;

        async fn accept(&mut self) -> (Self::Accepted, SocketAddr) {
            loop {
                match TcpListener::accept(self).await {
                    Ok((stream, peer)) => {
                        // Small responses (redirects, challenge answers) go out at once.
                        let _ = stream.set_nodelay(true);
                        return (stream, peer);
                    }
                    Err(err) => accept_error(err).await,
                }
            }
        }

        fn ready(accepted: Self::Accepted) -> impl Future<Output = Option<Self::Io>> + Send {
            std::future::ready(Some(accepted))
        }

        fn connect_info(_io: &Self::Io, _peer: SocketAddr) -> Option<TlsConnectInfo> {
            None
        }
    }
}

/// The server [`serve`](crate::serve()) returns: await it to serve until dropped.
#[must_use = "a server does nothing until it is awaited"]
pub struct Serve<L, S> {
    listener: L,
    service: S,
}

impl<L, S> fmt::Debug for Serve<L, S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Serve").finish_non_exhaustive()
    }
}

impl<L, S> Serve<L, S> {
    /// Stops accepting when `signal` resolves, lets open connections finish (within the
    /// [drain timeout](WithGracefulShutdown::drain_timeout)), then resolves.
    pub fn with_graceful_shutdown<F>(self, signal: F) -> WithGracefulShutdown<L, S, F>
    where
        F: Future<Output = ()> + Send + 'static,
    {
        WithGracefulShutdown {
            listener: self.listener,
            service: self.service,
            signal,
            drain_timeout: DEFAULT_DRAIN_TIMEOUT,
        }
    }
}

/// A server that stops gracefully: see [`Serve::with_graceful_shutdown`].
#[must_use = "a server does nothing until it is awaited"]
pub struct WithGracefulShutdown<L, S, F> {
    listener: L,
    service: S,
    signal: F,
    drain_timeout: Duration,
}

impl<L, S, F> fmt::Debug for WithGracefulShutdown<L, S, F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WithGracefulShutdown")
            .field("drain_timeout", &self.drain_timeout)
            .finish_non_exhaustive()
    }
}

impl<L, S, F> WithGracefulShutdown<L, S, F> {
    /// How long open connections get to finish after the signal (default 10 s) before they
    /// are closed. Keep it below your orchestrator's kill delay (`docker stop` waits 10 s).
    pub fn drain_timeout(mut self, timeout: Duration) -> Self {
        self.drain_timeout = timeout;
        self
    }
}

/// The future of [`Serve`] and [`WithGracefulShutdown`]: resolves only after a graceful
/// shutdown has drained (a plain [`Serve`] never resolves).
#[must_use = "futures do nothing unless polled"]
pub struct ServeFuture(Pin<Box<dyn Future<Output = ()> + Send>>);

impl fmt::Debug for ServeFuture {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServeFuture").finish_non_exhaustive()
    }
}

impl Future for ServeFuture {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        self.0.as_mut().poll(cx)
    }
}

impl<L, S, B> IntoFuture for Serve<L, S>
where
    L: Listener,
    S: Service<Request<Incoming>, Response = Response<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    type Output = ();
    type IntoFuture = ServeFuture;

    fn into_future(self) -> ServeFuture {
        ServeFuture(Box::pin(run(
            self.listener,
            self.service,
            std::future::pending(),
            DEFAULT_DRAIN_TIMEOUT,
        )))
    }
}

impl<L, S, B, F> IntoFuture for WithGracefulShutdown<L, S, F>
where
    L: Listener,
    S: Service<Request<Incoming>, Response = Response<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
    F: Future<Output = ()> + Send + 'static,
{
    type Output = ();
    type IntoFuture = ServeFuture;

    fn into_future(self) -> ServeFuture {
        ServeFuture(Box::pin(run(
            self.listener,
            self.service,
            self.signal,
            self.drain_timeout,
        )))
    }
}

/// The accept loop, then the drain.
async fn run<L, S, B, F>(mut listener: L, service: S, signal: F, drain_timeout: Duration)
where
    L: Listener,
    S: Service<Request<Incoming>, Response = Response<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
    F: Future<Output = ()> + Send,
{
    let mut builder = Builder::new(TokioExecutor::new());
    builder.http1().timer(TokioTimer::new());
    builder.http2().timer(TokioTimer::new());
    let (stop, stopping) = watch::channel(false);
    let mut connections = JoinSet::new();
    let mut signal = pin!(signal);
    loop {
        tokio::select! {
            biased;
            () = &mut signal => break,
            (accepted, peer) = listener.accept() => {
                // Finished connections are reaped here rather than by waiting on the set,
                // which would wake this loop once more for every connection.
                while let Some(done) = connections.try_join_next() {
                    log_panic(done);
                }
                connections.spawn(connection::<L, S, B>(
                    builder.clone(),
                    accepted,
                    peer,
                    service.clone(),
                    stopping.clone(),
                ));
            }
        }
    }
    // Refuse new connections from now on, then let the open ones finish.
    drop(listener);
    let _ = stop.send(true);
    let open = connections.len();
    tracing::debug!(
        open,
        ?drain_timeout,
        "shutting down: draining open connections"
    );
    let drained = tokio::time::timeout(drain_timeout, async {
        while let Some(done) = connections.join_next().await {
            log_panic(done);
        }
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            still_open = connections.len(),
            ?drain_timeout,
            "connections still open after the drain timeout; closing them"
        );
        connections.shutdown().await;
    }
}

fn log_panic(done: Result<(), tokio::task::JoinError>) {
    if done.is_err_and(|err| err.is_panic()) {
        tracing::error!("a connection task panicked");
    }
}

/// Readies one connection (its TLS handshake) and serves it; on the stop signal, closes it if
/// it is still in its handshake, or asks it to finish and waits until it has.
async fn connection<L, S, B>(
    builder: Builder<TokioExecutor>,
    accepted: L::Accepted,
    peer: SocketAddr,
    service: S,
    mut stopping: watch::Receiver<bool>,
) where
    L: Listener,
    S: Service<Request<Incoming>, Response = Response<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    // The stop signal's guard must not be held across an await (it is not `Send`).
    let stop = async move {
        let _ = stopping.wait_for(|stop| *stop).await;
    };
    let mut stop = pin!(stop);
    let io = tokio::select! {
        io = L::ready(accepted) => io,
        () = stop.as_mut() => None,
    };
    let Some(io) = io else {
        return;
    };
    let service = WithConnectInfo {
        info: L::connect_info(&io, peer),
        inner: service,
    };
    let conn =
        builder.serve_connection_with_upgrades(TokioIo::new(io), TowerToHyperService::new(service));
    let mut conn = pin!(conn);
    let result = tokio::select! {
        result = conn.as_mut() => result,
        () = stop => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(err) = result {
        tracing::debug!(%peer, %err, "connection ended with an error");
    }
}

/// Adds the connection's [`TlsConnectInfo`] to every request.
#[derive(Clone)]
struct WithConnectInfo<S> {
    inner: S,
    info: Option<TlsConnectInfo>,
}

impl<S, ReqBody> Service<Request<ReqBody>> for WithConnectInfo<S>
where
    S: Service<Request<ReqBody>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<ReqBody>) -> Self::Future {
        if let Some(info) = &self.info {
            req.extensions_mut().insert(info.clone());
        }
        self.inner.call(req)
    }
}
