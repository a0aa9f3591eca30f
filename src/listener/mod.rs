//! [`AutoTlsListener`]: TCP in, finished TLS streams out.
//!
//! `accept()` takes TCP connections and hands each to a handshake task with a deadline
//! ([`AutoTls::handshake_timeout`], 10 s by default), up to
//! [`AutoTls::max_pending_handshakes`] at once. It returns only streams whose handshake
//! finished, so a slow or silent client never holds up the next one. `accept_tcp()` returns
//! the connection before its handshake instead ([`Handshaking`]), for loops that run the
//! handshake in the task that then serves the connection (as [`serve`](crate::serve())
//! does): one task per connection instead of two, under the same deadline and cap.
//!
//! At the cap, the *oldest* unfinished handshake is closed to make room for the new
//! connection. Refusing new connections instead would let anyone who keeps the cap's worth
//! of silent connections open (about a hundred per second at the defaults) lock every real
//! client out; evicting the oldest means an attacker must open connections faster than a
//! real client finishes its handshake — a few milliseconds — to shut it out. Memory and file
//! descriptors stay bounded either way.
//!
//! The ALPN list is `acme-tls/1`, `h2`, `http/1.1`, in that order of preference: a client that
//! offers `acme-tls/1` is a TLS-ALPN-01 validation connection (RFC 8737), gets the pending
//! validation certificate for its SNI (or a failed handshake when none is pending) and is
//! closed after the handshake — never returned, whatever else it offered. Application
//! connections get `h2` or `http/1.1`.
//!
//! A handshake whose SNI is not a managed name (or that has no SNI) fails and orders nothing.
//! Once every name has a certificate, a handshake is a plain rustls accept whose certificate
//! resolver looks the name up. Until then, the ClientHello is read first: a managed name whose
//! first certificate is still being ordered waits for it, within the handshake deadline, and
//! one whose last order failed is refused at once.

mod handshake;
mod pending;

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rustls::ServerConfig;
use tokio::net::{TcpListener, TcpStream, ToSocketAddrs};
use tokio::sync::mpsc;

use handshake::Handshaker;
pub use handshake::Handshaking;
use pending::Pending;

use crate::certs::StoreResolver;
use crate::config::AutoTls;
use crate::error::{Error, ErrorKind};

/// A TLS stream the listener yields: the handshake is complete.
pub type TlsStream = tokio_rustls::server::TlsStream<TcpStream>;

/// Accepts TCP connections and yields TLS streams with certificates managed by ACME.
///
/// Use it with `axum::serve` (it implements `axum::serve::Listener` with the `axum`
/// feature) or in any accept loop:
///
/// ```no_run
/// # async fn run(tls: autotls::AutoTls) -> Result<(), autotls::Error> {
/// let mut listener = tls.bind("[::]:443").await?;
/// loop {
///     let (stream, peer) = listener.accept().await;
///     // hand `stream` to hyper-util's server builder
/// #   drop((stream, peer));
/// }
/// # }
/// ```
pub struct AutoTlsListener {
    tcp: TcpListener,
    handshaker: Arc<Handshaker>,
    /// The cap on handshakes in progress.
    pending: Pending,
    /// `accept()`'s finished handshakes, sent by their tasks. The tasks are not joined: a
    /// task ends with its handshake, and dropping the listener ends the handshakes still in
    /// progress (see [`Pending`]).
    finished: mpsc::UnboundedReceiver<(TlsStream, SocketAddr)>,
    finished_tx: mpsc::UnboundedSender<(TlsStream, SocketAddr)>,
}

impl fmt::Debug for AutoTlsListener {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AutoTlsListener")
            .field("local_addr", &self.tcp.local_addr().ok())
            .field("pending_handshakes", &self.pending_handshakes())
            .finish_non_exhaustive()
    }
}

impl AutoTls {
    /// Binds the HTTPS port and starts certificate management (see [`AutoTls::start`]).
    ///
    /// Fails with a clear [`Error`] for an invalid configuration, an unusable cache
    /// directory or an address that cannot be bound (in use, or a privileged port).
    pub async fn bind<A>(&self, addr: A) -> Result<AutoTlsListener, Error>
    where
        A: ToSocketAddrs + fmt::Display,
    {
        self.validate()?;
        let tcp = TcpListener::bind(&addr)
            .await
            .map_err(|e| Error::bind(&addr, e))?;
        self.listener(tcp)
    }

    /// Serves TLS on an already bound `TcpListener` and starts certificate management.
    pub fn listener(&self, tcp: TcpListener) -> Result<AutoTlsListener, Error> {
        self.start()?;
        let port = tcp
            .local_addr()
            .map_err(|e| {
                Error::new(
                    ErrorKind::Bind,
                    format!("reading the listener's address: {e}"),
                    e,
                )
            })?
            .port();
        self.state.set_https_port(port);
        let mut app_config = ServerConfig::builder_with_provider(crate::certs::provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| Error::new(ErrorKind::Certificate, "TLS setup failed", e))?
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(StoreResolver(self.state.clone())));
        // `acme-tls/1` first: a client that offers it gets it (and the validation certificate
        // from the resolver), so a validation certificate never reaches an application
        // connection; such connections are closed after the handshake.
        app_config.alpn_protocols = vec![
            crate::certs::ACME_TLS_ALPN.to_vec(),
            b"h2".to_vec(),
            b"http/1.1".to_vec(),
        ];
        let (finished_tx, finished) = mpsc::unbounded_channel();
        Ok(AutoTlsListener {
            tcp,
            handshaker: Arc::new(Handshaker {
                state: self.state.clone(),
                acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(app_config)),
            }),
            pending: Pending::new(
                self.config.max_pending_handshakes,
                self.config.handshake_timeout,
            ),
            finished,
            finished_tx,
        })
    }
}

impl AutoTlsListener {
    /// The next connection whose TLS handshake completed, with the peer's address.
    ///
    /// Never fails: accept errors are logged and retried (after a pause when the process is
    /// out of file descriptors), as `axum::serve` expects of a listener.
    pub async fn accept(&mut self) -> (TlsStream, SocketAddr) {
        loop {
            tokio::select! {
                biased;
                // The listener holds a sender: never `None`.
                Some(stream) = self.finished.recv() => return stream,
                accepted = self.tcp.accept() => match accepted {
                    Ok((tcp, peer)) => {
                        let handshaking = self.admit(tcp, peer);
                        let finished = self.finished_tx.clone();
                        tokio::spawn(async move {
                            if let Some(stream) = handshaking.finish().await {
                                // Unsent when the listener is gone: the connection closes.
                                let _ = finished.send((stream, peer));
                            }
                        });
                    }
                    Err(err) => accept_error(err).await,
                },
            }
        }
    }

    /// The next TCP connection, its TLS handshake still to do: the caller runs
    /// [`Handshaking::finish`] in the task that then serves the connection.
    ///
    /// One task per connection instead of [`accept`](Self::accept)'s two (a handshake task,
    /// then the serving task the accept loop spawns): 1–2 % less server CPU per new
    /// connection (BENCHMARKS.md). [`serve`](crate::serve()) accepts this way. The
    /// connection counts towards [`AutoTls::max_pending_handshakes`] until its handshake ends;
    /// at the cap, the oldest handshake in progress is closed to admit this one.
    ///
    /// ```no_run
    /// # async fn run(tls: autotls::AutoTls) -> Result<(), autotls::Error> {
    /// let mut listener = tls.bind("[::]:443").await?;
    /// loop {
    ///     let (handshaking, _peer) = listener.accept_tcp().await;
    ///     tokio::spawn(async move {
    ///         let Some(stream) = handshaking.finish().await else { return };
    ///         // hand `stream` to hyper-util's server builder
    /// #       drop(stream);
    ///     });
    /// }
    /// # }
    /// ```
    ///
    /// Never fails, like `accept`. Dropping the listener closes the connections still in
    /// their handshake (as it does for `accept`'s).
    pub async fn accept_tcp(&mut self) -> (Handshaking, SocketAddr) {
        loop {
            match self.tcp.accept().await {
                Ok((tcp, peer)) => return (self.admit(tcp, peer), peer),
                Err(err) => accept_error(err).await,
            }
        }
    }

    /// A new connection under the cap on handshakes in progress.
    fn admit(&mut self, tcp: TcpStream, peer: SocketAddr) -> Handshaking {
        let _ = tcp.set_nodelay(true);
        let (ticket, evicted) = self.pending.admit(peer);
        if evicted {
            tracing::debug!(%peer, limit = self.pending.max(), "pending handshakes at the cap; the oldest was closed");
        }
        Handshaking {
            tcp,
            peer,
            ticket,
            handshaker: self.handshaker.clone(),
        }
    }

    /// The local address the listener is bound to.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.tcp.local_addr()
    }

    /// How many handshakes are in progress, or finished but not yet returned by `accept()`.
    pub fn pending_handshakes(&self) -> usize {
        self.pending.held() + self.finished.len()
    }
}

/// After a failed TCP accept: connection errors are the peer's business and the next accept
/// follows at once; anything else (out of file descriptors) is logged and waited out for a
/// second, or the loop would spin (`tests/fd_exhaustion.rs`).
pub(crate) async fn accept_error(err: io::Error) {
    if matches!(
        err.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    ) {
        return;
    }
    tracing::error!(%err, "accepting a connection failed; retrying in 1 s");
    tokio::time::sleep(Duration::from_secs(1)).await;
}

#[cfg(feature = "axum")]
mod axum_impl {
    use super::*;
    use axum::extract::connect_info::Connected;
    use axum::serve::{IncomingStream, Listener};

    impl Listener for AutoTlsListener {
        type Io = TlsStream;
        type Addr = SocketAddr;

        async fn accept(&mut self) -> (Self::Io, Self::Addr) {
            AutoTlsListener::accept(self).await
        }

        fn local_addr(&self) -> io::Result<Self::Addr> {
            AutoTlsListener::local_addr(self)
        }
    }

    impl Connected<IncomingStream<'_, AutoTlsListener>> for TlsConnectInfo {
        fn connect_info(stream: IncomingStream<'_, AutoTlsListener>) -> Self {
            TlsConnectInfo::new(stream.io(), *stream.remote_addr())
        }
    }
}

/// What a handler may want to know about its connection: peer address, SNI and ALPN.
///
/// With axum: `app.into_make_service_with_connect_info::<TlsConnectInfo>()`, then the
/// `ConnectInfo<TlsConnectInfo>` extractor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsConnectInfo {
    /// The peer's address.
    pub remote_addr: SocketAddr,
    /// The server name the client asked for (SNI).
    pub server_name: Option<String>,
    /// The negotiated application protocol, e.g. `b"h2"`.
    pub alpn: Option<Vec<u8>>,
}

impl TlsConnectInfo {
    /// Reads the connection facts from a stream the listener yielded.
    pub fn new(stream: &TlsStream, remote_addr: SocketAddr) -> Self {
        let (_, conn) = stream.get_ref();
        Self {
            remote_addr,
            server_name: conn.server_name().map(str::to_owned),
            alpn: conn.alpn_protocol().map(<[u8]>::to_vec),
        }
    }
}
