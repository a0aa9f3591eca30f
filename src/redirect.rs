//! [`HttpRedirect`]: the HTTP port's service — challenges, then a redirect to HTTPS.

use std::convert::Infallible;
use std::future::{ready, Ready};
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::header::{CONTENT_TYPE, LOCATION};
use http::{HeaderValue, Request, Response, StatusCode};
use http_body_util::Full;
use tower_service::Service;

use crate::config::AutoTls;
use crate::layer::{answer, challenge_token, request_host};
use crate::state::{State, Tasks};

/// Serves the HTTP port: answers HTTP-01 challenges and redirects every other request for a
/// managed name to HTTPS with `308 Permanent Redirect` (method and body preserved).
///
/// A request whose host is missing or malformed gets `400`, one for a host that is not
/// managed gets `421`; neither carries a `Location`, so this is never an open redirect.
/// The target keeps the path and query, and names the HTTPS port when it is not 443.
///
/// With the `axum` feature it is also a make-service:
/// `axum::serve(tcp_listener, tls.http_redirect())`.
#[derive(Debug, Clone)]
pub struct HttpRedirect {
    state: Arc<State>,
    _tasks: Arc<Tasks>,
}

impl AutoTls {
    /// The service for the HTTP port (usually 80): HTTP-01 challenges and redirects.
    ///
    /// Calling this tells the certificate manager that the HTTP port is served, so HTTP-01
    /// becomes the fallback when TLS-ALPN-01 cannot be validated.
    pub fn http_redirect(&self) -> HttpRedirect {
        self.state.set_http_served();
        HttpRedirect {
            state: self.state.clone(),
            _tasks: self.tasks.clone(),
        }
    }
}

impl HttpRedirect {
    fn respond<B>(&self, req: &Request<B>) -> Response<Full<Bytes>> {
        if let Some(token) = challenge_token(req.uri().path()) {
            return answer(&self.state, req, token).map(full);
        }
        let Some(host) = request_host(req) else {
            return plain(
                StatusCode::BAD_REQUEST,
                "missing or malformed Host header\n",
            );
        };
        if !self.is_managed(&host) {
            return plain(
                StatusCode::MISDIRECTED_REQUEST,
                "this server does not serve that host\n",
            );
        }
        let path = req
            .uri()
            .path_and_query()
            .map(|p| p.as_str())
            .filter(|p| p.starts_with('/'))
            .unwrap_or("/");
        let location = match self.state.https_port() {
            0 | 443 => format!("https://{host}{path}"),
            port => format!("https://{host}:{port}{path}"),
        };
        let Ok(location) = HeaderValue::try_from(location) else {
            return plain(StatusCode::BAD_REQUEST, "malformed request target\n");
        };
        let mut response = plain(StatusCode::PERMANENT_REDIRECT, "");
        response.headers_mut().insert(LOCATION, location);
        response
    }

    fn is_managed(&self, host: &str) -> bool {
        if self.state.store.is_local() {
            return matches!(host, "localhost" | "127.0.0.1" | "[::1]");
        }
        self.state.store.slot(host).is_some()
    }
}

fn full(body: Option<Bytes>) -> Full<Bytes> {
    Full::new(body.unwrap_or_default())
}

fn plain(status: StatusCode, text: &'static str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from_static(text.as_bytes())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

impl<B> Service<Request<B>> for HttpRedirect {
    type Response = Response<Full<Bytes>>;
    type Error = Infallible;
    type Future = Ready<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        ready(Ok(self.respond(&req)))
    }
}

#[cfg(feature = "axum")]
mod axum_impl {
    use super::*;
    use axum::serve::{IncomingStream, Listener};

    /// [`HttpRedirect`] with axum's body type, as `axum::serve` wants it.
    #[derive(Debug, Clone)]
    pub struct AxumHttpRedirect(pub(super) HttpRedirect);

    impl<'a, L: Listener> Service<IncomingStream<'a, L>> for HttpRedirect {
        type Response = AxumHttpRedirect;
        type Error = Infallible;
        type Future = Ready<Result<AxumHttpRedirect, Infallible>>;

        fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, _stream: IncomingStream<'a, L>) -> Self::Future {
            ready(Ok(AxumHttpRedirect(self.clone())))
        }
    }

    impl Service<axum::extract::Request> for AxumHttpRedirect {
        type Response = axum::response::Response;
        type Error = Infallible;
        type Future = Ready<Result<Self::Response, Infallible>>;

        fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, req: axum::extract::Request) -> Self::Future {
            ready(Ok(self.0.respond(&req).map(axum::body::Body::new)))
        }
    }
}

#[cfg(feature = "axum")]
pub use axum_impl::AxumHttpRedirect;
