//! One connection's handshake under one deadline, in the task that accepted it
//! ([`AutoTlsListener::accept`](super::AutoTlsListener::accept)'s handshake tasks, or the
//! connection task of [`serve`](crate::serve())).

use std::net::SocketAddr;
use std::sync::Arc;

use rustls::server::Acceptor;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_rustls::{LazyConfigAcceptor, TlsAcceptor};

use super::pending::Ticket;
use super::TlsStream;
use crate::certs::{is_validation, CertState, ACME_TLS_ALPN};
use crate::state::State;

/// What every handshake of one listener shares (one `Arc` per connection).
pub(super) struct Handshaker {
    pub(super) state: Arc<State>,
    /// The application config: ALPN `acme-tls/1`, `h2`, `http/1.1`, certificates from
    /// [`StoreResolver`](crate::certs::StoreResolver).
    pub(super) acceptor: TlsAcceptor,
}

/// A TCP connection [`AutoTlsListener::accept_tcp`] accepted, its TLS handshake still to
/// do: call [`finish`](Handshaking::finish) in the task that will serve the connection.
///
/// It counts towards [`AutoTls::max_pending_handshakes`] until `finish` returns or it is
/// dropped, and `finish` ends early (with `None`) if the listener closes it to make room at
/// the cap. Call `finish` at once (in the spawned task): an evicted connection's socket is
/// closed only when `finish` runs or the value is dropped, so a loop that queues these values
/// holds more sockets open than the cap suggests.
///
/// [`AutoTlsListener::accept_tcp`]: super::AutoTlsListener::accept_tcp
/// [`AutoTls::max_pending_handshakes`]: crate::AutoTls::max_pending_handshakes
pub struct Handshaking {
    pub(super) tcp: TcpStream,
    pub(super) peer: SocketAddr,
    pub(super) ticket: Ticket,
    pub(super) handshaker: Arc<Handshaker>,
}

impl std::fmt::Debug for Handshaking {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Handshaking")
            .field("peer", &self.peer)
            .finish_non_exhaustive()
    }
}

impl Handshaking {
    /// The peer's address.
    pub fn peer_addr(&self) -> SocketAddr {
        self.peer
    }

    /// Completes the TLS handshake, under the listener's
    /// [handshake deadline](crate::AutoTls::handshake_timeout).
    ///
    /// `None` when the connection is not one to serve: the handshake failed or timed out,
    /// the name is not managed (or its first certificate could not be had), the listener
    /// closed it at the cap, or it was a TLS-ALPN-01 validation connection (answered here).
    /// Each reason is logged at `debug`; the connection is closed.
    pub async fn finish(self) -> Option<TlsStream> {
        let Handshaking {
            tcp,
            peer,
            ticket,
            handshaker,
        } = self;
        // One deadline, kept by the listener's sweeper, for reading the ClientHello and
        // finishing the handshake; the cap may end it sooner (both are logged there).
        let stream = tokio::select! {
            biased;
            stream = handshaker.handshake(tcp, peer) => stream,
            () = ticket.ended_early() => None,
        };
        drop(ticket);
        stream
    }
}

impl Handshaker {
    async fn handshake(&self, tcp: TcpStream, peer: SocketAddr) -> Option<TlsStream> {
        let stream = if self.state.store.all_deployed() {
            // Every name has its certificate: one plain rustls handshake, the resolver picks
            // the certificate (or the validation certificate for `acme-tls/1`).
            match self.acceptor.accept(tcp).await {
                Ok(stream) => stream,
                Err(err) => {
                    tracing::debug!(%peer, %err, "TLS handshake failed");
                    return None;
                }
            }
        } else {
            // Boxed: a path taken only until every name has a certificate, whose state would
            // otherwise size every handshake's future.
            Box::pin(self.before_first_certificates(tcp, peer)).await?
        };
        let (_, conn) = stream.get_ref();
        if conn.alpn_protocol() == Some(ACME_TLS_ALPN) {
            // A TLS-ALPN-01 validation connection: the handshake was the answer.
            tracing::debug!(%peer, sni = ?conn.server_name(), "answered a TLS-ALPN-01 validation connection");
            let mut stream = stream;
            let _ = stream.shutdown().await;
            return None;
        }
        Some(stream)
    }

    /// A handshake while some name has no certificate yet: the ClientHello is read first, so
    /// that a handshake for such a name can wait for its certificate (within the deadline) —
    /// or be refused at once when that name's last order failed.
    async fn before_first_certificates(
        &self,
        tcp: TcpStream,
        peer: SocketAddr,
    ) -> Option<TlsStream> {
        let start = match LazyConfigAcceptor::new(Acceptor::default(), tcp).await {
            Ok(start) => start,
            Err(err) => {
                tracing::debug!(%peer, %err, "reading the ClientHello failed");
                return None;
            }
        };
        let hello = start.client_hello();
        let sni = hello.server_name().map(str::to_owned);
        let validation = is_validation(&hello);
        // Validation connections are answered by the resolver without waiting.
        if !validation {
            let Some(slot) = self.state.store.slot_for_sni(sni.as_deref()) else {
                tracing::debug!(%peer, sni = ?sni, "handshake for a name that is not managed; refused");
                return None;
            };
            if slot.key().is_none() {
                if slot.status().state == CertState::Failing {
                    // No certificate and the last order failed: refuse now rather than hold
                    // the connection until the deadline.
                    tracing::debug!(%peer, sni = ?sni, "no certificate yet for this name (the last order failed)");
                    return None;
                }
                // The first certificate for this name is on its way: wait for it (the whole
                // handshake is under the deadline).
                let deployed = slot.deployed.notified();
                tokio::pin!(deployed);
                deployed.as_mut().enable();
                if slot.key().is_none() {
                    deployed.await;
                }
            }
        }
        match start.into_stream(self.acceptor.config().clone()).await {
            Ok(stream) => Some(stream),
            Err(err) => {
                tracing::debug!(%peer, sni = ?sni, %err, "TLS handshake failed");
                None
            }
        }
    }
}
