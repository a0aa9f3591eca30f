//! One connection's handshake, run in its own task under one deadline.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rustls::server::Acceptor;
use rustls::ServerConfig;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_rustls::LazyConfigAcceptor;

use super::TlsStream;
use crate::certs::{CertState, FixedResolver};
use crate::state::State;

/// The ALPN protocol of TLS-ALPN-01 validation connections (RFC 8737).
const ACME_TLS_ALPN: &[u8] = b"acme-tls/1";

pub(super) struct Handshake {
    pub(super) state: Arc<State>,
    pub(super) app_config: Arc<ServerConfig>,
    pub(super) timeout: Duration,
}

impl Handshake {
    /// Completes the handshake; `None` when it failed, timed out or was a validation
    /// connection (answered here).
    pub(super) async fn run(
        self,
        tcp: TcpStream,
        peer: SocketAddr,
    ) -> Option<(TlsStream, SocketAddr)> {
        // One deadline for reading the ClientHello and finishing the handshake.
        match tokio::time::timeout(self.timeout, self.handshake(tcp, peer)).await {
            Ok(stream) => stream.map(|s| (s, peer)),
            Err(_) => {
                tracing::debug!(%peer, "TLS handshake timed out; connection closed");
                None
            }
        }
    }

    async fn handshake(&self, tcp: TcpStream, peer: SocketAddr) -> Option<TlsStream> {
        let start = match LazyConfigAcceptor::new(Acceptor::default(), tcp).await {
            Ok(start) => start,
            Err(err) => {
                tracing::debug!(%peer, %err, "reading the ClientHello failed");
                return None;
            }
        };
        let hello = start.client_hello();
        let sni = hello.server_name().map(str::to_owned);
        let acme = hello
            .alpn()
            .is_some_and(|mut protocols| protocols.any(|p| p == ACME_TLS_ALPN));
        if acme {
            // Boxed: a rare path whose state would otherwise double the size of every
            // handshake task (6.4 KB → 3.2 KB, measured by benches/compare.rs).
            Box::pin(self.answer_tls_alpn(start, sni.as_deref(), peer)).await;
            return None;
        }
        let Some(slot) = self.state.store.slot_for_sni(sni.as_deref()) else {
            tracing::debug!(%peer, sni = ?sni, "handshake for a name that is not managed; refused");
            return None;
        };
        if slot.key().is_none() {
            if slot.status().state == CertState::Failing {
                // No certificate and the last order failed: refuse now rather than hold the
                // connection until the deadline.
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
        match start.into_stream(self.app_config.clone()).await {
            Ok(stream) => Some(stream),
            Err(err) => {
                tracing::debug!(%peer, sni = ?sni, %err, "TLS handshake failed");
                None
            }
        }
    }

    /// Answers a TLS-ALPN-01 validation connection with the pending challenge certificate.
    async fn answer_tls_alpn(
        &self,
        start: tokio_rustls::StartHandshake<TcpStream>,
        sni: Option<&str>,
        peer: SocketAddr,
    ) {
        let cert = sni.and_then(|name| {
            let name = name.to_ascii_lowercase();
            self.state.challenges.tls_alpn_cert(&name)
        });
        let Some(cert) = cert else {
            tracing::debug!(%peer, sni = ?sni, "acme-tls/1 handshake with no pending challenge; refused");
            return;
        };
        let config = ServerConfig::builder_with_provider(crate::certs::provider())
            .with_safe_default_protocol_versions()
            .map(|b| {
                b.with_no_client_auth()
                    .with_cert_resolver(Arc::new(FixedResolver(cert)))
            });
        let Ok(mut config) = config else {
            return;
        };
        config.alpn_protocols = vec![ACME_TLS_ALPN.to_vec()];
        match start.into_stream(Arc::new(config)).await {
            Ok(mut stream) => {
                tracing::debug!(%peer, sni = ?sni, "answered a TLS-ALPN-01 validation connection");
                let _ = stream.shutdown().await;
            }
            Err(err) => tracing::debug!(%peer, %err, "TLS-ALPN-01 validation handshake failed"),
        }
    }
}
