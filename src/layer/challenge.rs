//! Answering an HTTP-01 challenge request, shared by the layer and the HTTP-port service.

use bytes::Bytes;
use http::header::{CONTENT_LENGTH, CONTENT_TYPE};
use http::{HeaderValue, Method, Request, Response, StatusCode};

use crate::certs::is_token;
use crate::state::State;

const PREFIX: &str = "/.well-known/acme-challenge/";

/// The token part of a challenge path, or `None` when the path is not under the prefix.
/// The token is not checked here: anything under the prefix is ours to answer.
pub(crate) fn challenge_token(path: &str) -> Option<&str> {
    path.strip_prefix(PREFIX)
}

/// The request's host, normalized (lowercase, no port, no trailing dot); `None` when
/// missing or malformed. The request target's authority (absolute form, HTTP/2) wins over
/// the `Host` header, as RFC 9112 §3.2.2 says.
pub(crate) fn request_host<B>(req: &Request<B>) -> Option<String> {
    let host = match req.uri().authority() {
        Some(authority) => authority.host().to_owned(),
        None => {
            let value = req.headers().get(http::header::HOST)?.to_str().ok()?;
            let authority: http::uri::Authority = value.parse().ok()?;
            if authority.as_str().contains('@') {
                return None;
            }
            authority.host().to_owned()
        }
    };
    let host = host.strip_suffix('.').unwrap_or(&host);
    if host.is_empty() || host.len() > 255 {
        return None;
    }
    let valid = host
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'[' | b']' | b':'));
    valid.then(|| host.to_ascii_lowercase())
}

/// The response to a request under the challenge prefix: the key authorization, or 404.
pub(crate) fn answer<B>(state: &State, req: &Request<B>, token: &str) -> Response<Option<Bytes>> {
    let method_ok = req.method() == Method::GET || req.method() == Method::HEAD;
    let found = if method_ok && is_token(token) {
        request_host(req).and_then(|host| state.challenges.http_answer(&host, token))
    } else {
        None
    };
    let Some(key_authorization) = found else {
        tracing::debug!(path = %req.uri().path(), method = %req.method(), "no pending HTTP-01 challenge for this request");
        return simple(StatusCode::NOT_FOUND, "no such challenge\n");
    };
    tracing::debug!(token, "answering an HTTP-01 challenge");
    let body = Bytes::from(key_authorization);
    let mut response = Response::new(None);
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    response
        .headers_mut()
        .insert(CONTENT_LENGTH, HeaderValue::from(body.len()));
    if req.method() != Method::HEAD {
        *response.body_mut() = Some(body);
    }
    response
}

/// A short plain-text response.
pub(crate) fn simple(status: StatusCode, text: &'static str) -> Response<Option<Bytes>> {
    let mut response = Response::new(Some(Bytes::from_static(text.as_bytes())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(host: Option<&str>, uri: &str) -> Request<()> {
        let mut b = Request::builder().uri(uri);
        if let Some(h) = host {
            b = b.header("host", h);
        }
        b.body(()).unwrap()
    }

    #[test]
    fn host_is_normalized_and_the_authority_wins() {
        assert_eq!(
            request_host(&req(Some("A.Test:8080"), "/")).as_deref(),
            Some("a.test")
        );
        assert_eq!(
            request_host(&req(Some("a.test."), "/")).as_deref(),
            Some("a.test")
        );
        assert_eq!(
            request_host(&req(Some("a.test"), "http://b.test/x")).as_deref(),
            Some("b.test")
        );
        assert_eq!(request_host(&req(None, "/")), None);
        assert_eq!(request_host(&req(Some("user@a.test"), "/")), None);
        assert_eq!(request_host(&req(Some(""), "/")), None);
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(512))]

        /// Any Host header: no panic, and what comes out is a lowercase host made of
        /// harmless characters, never with a port, a user or whitespace.
        #[test]
        fn any_host_header_parses_to_a_safe_host_or_none(host in "\\PC{0,80}") {
            let Ok(request) = Request::builder().uri("/").header("host", host.as_str()).body(()) else {
                return Ok(());
            };
            if let Some(h) = request_host(&request) {
                proptest::prop_assert!(!h.is_empty());
                proptest::prop_assert!(h.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'-' | b'.' | b'[' | b']' | b':')));
                proptest::prop_assert!(!h.contains('@') && !h.ends_with('.'));
            }
        }

        /// Any request path: a token is only ever taken from under the challenge prefix, and
        /// only a base64url token of at most 256 bytes is ever looked up.
        #[test]
        fn any_path_yields_a_lookup_only_for_a_plausible_token(path in "/[\\PC/%.]{0,300}") {
            if let Some(token) = challenge_token(&path) {
                proptest::prop_assert!(path.starts_with(PREFIX));
                if crate::certs::is_token(token) {
                    proptest::prop_assert!(!token.contains('/') && !token.contains('.') && !token.contains('%'));
                    proptest::prop_assert!(token.len() <= 256);
                }
            }
        }
    }
}
