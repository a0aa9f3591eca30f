//! The HTTP port's service (`tls.http_redirect()`): a managed host gets `308` to the same path
//! on HTTPS, and nothing — a foreign, missing or malformed Host, an absolute-form target, a
//! header injection — ever produces a `Location` outside `https://a.test`.
//!
//! Every `AutoTls` that binds points at `https://127.0.0.1:1/dir`: nothing real is contacted,
//! the manager's first order fails at once and its retry is a minute away.

use std::net::SocketAddr;
use std::time::Duration;

use autotls::{AutoTls, AutoTlsListener};
use bytes::Bytes;
use http::header::LOCATION;
use http::{Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use tempfile::TempDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tower::ServiceExt;

const BOUND: Duration = Duration::from_secs(5);
const NOWHERE: &str = "https://127.0.0.1:1/dir";

/// A managed `AutoTls` for `a.test` whose CA is unreachable, with its own cache directory.
fn managed() -> (AutoTls, TempDir) {
    let cache = tempfile::tempdir().expect("tempdir");
    let tls = AutoTls::new(["a.test"])
        .directory(NOWHERE)
        .cache_dir(cache.path());
    (tls, cache)
}

/// Binds the HTTPS listener on an ephemeral port and returns it with that port.
async fn bind_https(tls: &AutoTls) -> (AutoTlsListener, u16) {
    let listener = tls
        .bind("127.0.0.1:0")
        .await
        .expect("binding the HTTPS listener on 127.0.0.1:0");
    let port = listener.local_addr().expect("local addr").port();
    assert_ne!(port, 443, "an ephemeral port is never 443");
    (listener, port)
}

struct Answer {
    status: StatusCode,
    location: Option<String>,
    body: Bytes,
}

/// Calls the redirect service directly, without a server.
async fn call(tls: &AutoTls, method: Method, uri: &str, host: Option<&str>) -> Answer {
    let mut builder = Request::builder().method(method).uri(uri);
    if let Some(host) = host {
        builder = builder.header("host", host);
    }
    let req = builder.body(Full::<Bytes>::default()).expect("request");
    let res = tls
        .http_redirect()
        .oneshot(req)
        .await
        .expect("the redirect service is infallible");
    let location = res
        .headers()
        .get(LOCATION)
        .map(|v| v.to_str().expect("a Location is ASCII").to_owned());
    let status = res.status();
    let body = res
        .into_body()
        .collect()
        .await
        .expect("a Full body cannot fail")
        .to_bytes();
    Answer {
        status,
        location,
        body,
    }
}

/// Serves `tls.http_redirect()` with `axum::serve` on 127.0.0.1:0, as the docs say to.
async fn serve_redirect(tls: &AutoTls) -> (SocketAddr, AbortOnDrop) {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind 127.0.0.1:0");
    let addr = listener.local_addr().expect("local addr");
    let service = tls.http_redirect();
    let task = tokio::spawn(async move {
        axum::serve(listener, service).await.expect("axum::serve");
    });
    (addr, AbortOnDrop(task))
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A raw exchange: write `raw` as is, read until the server closes.
struct RawAnswer {
    /// `None` when the server closed without answering.
    status: Option<u16>,
    location: Option<String>,
    text: String,
}

async fn raw_request(addr: SocketAddr, raw: &[u8]) -> RawAnswer {
    let exchange = async {
        let mut tcp = TcpStream::connect(addr).await.expect("connect");
        tcp.write_all(raw).await.expect("write request");
        let mut response = Vec::new();
        // A reset after a malformed request is an answer too: keep what arrived.
        let _ = tcp.read_to_end(&mut response).await;
        response
    };
    let response = tokio::time::timeout(BOUND, exchange)
        .await
        .unwrap_or_else(|_| {
            panic!(
                "the server neither answered nor closed within {BOUND:?}: {:?}",
                String::from_utf8_lossy(raw)
            )
        });
    let text = String::from_utf8_lossy(&response).into_owned();
    let head = text.split("\r\n\r\n").next().unwrap_or("");
    let status = head
        .lines()
        .next()
        .and_then(|line| line.split(' ').nth(1))
        .and_then(|code| code.parse().ok());
    let location = head.lines().skip(1).find_map(|line| {
        let (name, value) = line.split_once(':')?;
        name.trim()
            .eq_ignore_ascii_case("location")
            .then(|| value.trim().to_owned())
    });
    RawAnswer {
        status,
        location,
        text,
    }
}

/// No `Location`, or one whose scheme is https, whose host is exactly `a.test` and whose
/// port is the HTTPS port (none before the listener is bound).
fn assert_stays_on_a_test(what: &str, location: Option<&str>, https_port: Option<u16>) {
    let Some(location) = location else {
        return;
    };
    let prefix = match https_port {
        Some(port) => format!("https://a.test:{port}/"),
        None => "https://a.test/".to_owned(),
    };
    assert!(
        location.starts_with(&prefix),
        "{what}: Location {location:?} leaves {prefix}"
    );
    let uri: Uri = location
        .parse()
        .unwrap_or_else(|e| panic!("{what}: Location {location:?} is not a URI: {e}"));
    assert_eq!(uri.scheme_str(), Some("https"), "{what}: {location}");
    assert_eq!(uri.host(), Some("a.test"), "{what}: {location}");
    assert_eq!(uri.port_u16(), https_port, "{what}: {location}");
}

// ---------------------------------------------------------------------------------------------
// Managed hosts are redirected.

#[tokio::test]
async fn a_managed_host_gets_a_308_to_https_with_path_and_query_kept() {
    let (tls, _cache) = managed();
    for method in [
        Method::GET,
        Method::HEAD,
        Method::POST,
        Method::PUT,
        Method::DELETE,
    ] {
        let answer = call(&tls, method.clone(), "/path?q=1", Some("a.test")).await;
        assert_eq!(answer.status, StatusCode::PERMANENT_REDIRECT, "{method}");
        assert_eq!(
            answer.location.as_deref(),
            Some("https://a.test/path?q=1"),
            "{method}"
        );
    }

    for (uri, expected) in [
        ("/", "https://a.test/"),
        ("/a/b/c.html", "https://a.test/a/b/c.html"),
        (
            "/search?q=a%20b&x=%2F",
            "https://a.test/search?q=a%20b&x=%2F",
        ),
        ("/?", "https://a.test/?"),
    ] {
        let answer = call(&tls, Method::GET, uri, Some("a.test")).await;
        assert_eq!(answer.status, StatusCode::PERMANENT_REDIRECT, "{uri}");
        assert_eq!(answer.location.as_deref(), Some(expected), "{uri}");
    }

    // The same through a real server.
    let (addr, _server) = serve_redirect(&tls).await;
    let answer = raw_request(
        addr,
        b"GET /path?q=1 HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(answer.status, Some(308), "{}", answer.text);
    assert_eq!(
        answer.location.as_deref(),
        Some("https://a.test/path?q=1"),
        "{}",
        answer.text
    );
}

#[tokio::test]
async fn a_host_with_a_port_or_in_other_case_is_redirected_to_the_managed_name() {
    let (tls, _cache) = managed();
    for host in [
        "a.test:8080",
        "a.test:80",
        "A.Test",
        "a.test.",
        "A.TEST.:8080",
    ] {
        let answer = call(&tls, Method::GET, "/path?q=1", Some(host)).await;
        assert_eq!(
            answer.status,
            StatusCode::PERMANENT_REDIRECT,
            "Host: {host}"
        );
        assert_eq!(
            answer.location.as_deref(),
            Some("https://a.test/path?q=1"),
            "Host: {host}: the port of the HTTP request must not leak into the HTTPS URL"
        );
    }
}

#[tokio::test]
async fn after_bind_the_location_carries_the_https_port_when_it_is_not_443() {
    let (tls, _cache) = managed();
    let before = call(&tls, Method::GET, "/path?q=1", Some("a.test")).await;
    assert_eq!(before.location.as_deref(), Some("https://a.test/path?q=1"));

    let (_https, port) = bind_https(&tls).await;
    let expected = format!("https://a.test:{port}/path?q=1");

    for host in ["a.test", "a.test:8080", "a.test:443"] {
        let answer = call(&tls, Method::GET, "/path?q=1", Some(host)).await;
        assert_eq!(
            answer.status,
            StatusCode::PERMANENT_REDIRECT,
            "Host: {host}"
        );
        assert_eq!(
            answer.location.as_deref(),
            Some(expected.as_str()),
            "Host: {host}"
        );
    }

    // A redirect service made before the bind sees the port too: it shares the state.
    let (addr, _server) = serve_redirect(&tls).await;
    let answer = raw_request(
        addr,
        b"GET /path?q=1 HTTP/1.1\r\nHost: a.test:8080\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(answer.status, Some(308), "{}", answer.text);
    assert_eq!(
        answer.location.as_deref(),
        Some(expected.as_str()),
        "{}",
        answer.text
    );
}

#[tokio::test]
async fn challenge_paths_are_answered_with_404_and_never_redirected() {
    let (tls, _cache) = managed();
    for host in [Some("a.test"), Some("evil.example"), None] {
        for path in [
            "/.well-known/acme-challenge/dGhpcy1pcy1ub3QtcGVuZGluZw",
            "/.well-known/acme-challenge/../x",
            "/.well-known/acme-challenge/",
        ] {
            let answer = call(&tls, Method::GET, path, host).await;
            assert_eq!(answer.status, StatusCode::NOT_FOUND, "{path} Host {host:?}");
            assert_eq!(answer.location, None, "{path} Host {host:?}");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Nothing else is redirected, and never anywhere else.

#[tokio::test]
async fn foreign_missing_or_malformed_hosts_get_a_4xx_without_location() {
    let (tls, _cache) = managed();
    let cases: [(&str, Option<&str>, StatusCode); 14] = [
        ("/", Some("evil.example"), StatusCode::MISDIRECTED_REQUEST),
        (
            "/",
            Some("evil.example:443"),
            StatusCode::MISDIRECTED_REQUEST,
        ),
        (
            "/",
            Some("a.test.evil.example"),
            StatusCode::MISDIRECTED_REQUEST,
        ),
        ("/", Some("evil-a.test"), StatusCode::MISDIRECTED_REQUEST),
        ("/", Some("[::1]"), StatusCode::MISDIRECTED_REQUEST),
        ("/", Some("[::1]:80"), StatusCode::MISDIRECTED_REQUEST),
        ("/", Some("127.0.0.1"), StatusCode::MISDIRECTED_REQUEST),
        ("/", Some("localhost"), StatusCode::MISDIRECTED_REQUEST),
        ("/", None, StatusCode::BAD_REQUEST),
        ("/", Some(""), StatusCode::BAD_REQUEST),
        ("/", Some("user@a.test"), StatusCode::BAD_REQUEST),
        ("/", Some("a.test@evil.example"), StatusCode::BAD_REQUEST),
        ("/", Some("evil.example/a.test"), StatusCode::BAD_REQUEST),
        // Absolute form: the target's authority wins over the Host header (RFC 9112 §3.2.2).
        (
            "http://evil.example/",
            Some("a.test"),
            StatusCode::MISDIRECTED_REQUEST,
        ),
    ];
    for (uri, host, status) in cases {
        let answer = call(&tls, Method::GET, uri, host).await;
        assert_eq!(answer.status, status, "GET {uri} Host {host:?}");
        assert_eq!(answer.location, None, "GET {uri} Host {host:?}");
        assert!(
            !String::from_utf8_lossy(&answer.body).contains("evil"),
            "GET {uri} Host {host:?}: the body echoes the foreign host"
        );
    }
}

#[tokio::test]
async fn hostile_raw_requests_never_get_a_location_outside_the_managed_name() {
    let (tls, _cache) = managed();
    let (_https, port) = bind_https(&tls).await;
    let (addr, _server) = serve_redirect(&tls).await;

    // (request, the status it must get; None: any answer without a foreign Location)
    let cases: Vec<(&[u8], Option<u16>)> = vec![
        (b"GET / HTTP/1.1\r\nHost: evil.example\r\nConnection: close\r\n\r\n", Some(421)),
        (b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n", Some(400)),
        (b"GET / HTTP/1.0\r\n\r\n", Some(400)),
        (b"GET / HTTP/1.1\r\nHost: [::1]:8080\r\nConnection: close\r\n\r\n", Some(421)),
        (b"GET / HTTP/1.1\r\nHost: [2001:db8::1]\r\nConnection: close\r\n\r\n", Some(421)),
        (
            b"GET http://evil.example/ HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n",
            Some(421),
        ),
        (
            b"GET http://a.test@evil.example/x HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n",
            Some(421),
        ),
        (
            b"GET http://evil.example@a.test/x HTTP/1.1\r\nHost: evil.example\r\nConnection: close\r\n\r\n",
            Some(308),
        ),
        (b"GET https://evil.example/ HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n", None),
        (b"CONNECT evil.example:443 HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n", None),
        (b"OPTIONS * HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n", None),
        // Header injection: bare CR, bare LF, obs-fold, encoded CR/LF.
        (
            b"GET / HTTP/1.1\r\nHost: a.test\rLocation: https://evil.example/\r\nConnection: close\r\n\r\n",
            None,
        ),
        (
            b"GET / HTTP/1.1\r\nHost: a.test\nLocation: https://evil.example/\r\nConnection: close\r\n\r\n",
            None,
        ),
        (b"GET / HTTP/1.1\r\nHost: a.test\r\n evil.example\r\nConnection: close\r\n\r\n", None),
        (b"GET / HTTP/1.1\r\nHost: evil.example\r\n a.test\r\nConnection: close\r\n\r\n", None),
        (
            b"GET / HTTP/1.1\r\nHost: a.test%0d%0aLocation:%20https://evil.example/\r\nConnection: close\r\n\r\n",
            Some(400),
        ),
        (
            b"GET /%0d%0aLocation:%20https://evil.example/ HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n",
            Some(308),
        ),
        (b"GET / HTTP/1.1\r\nHost: a.test\0evil.example\r\nConnection: close\r\n\r\n", None),
        (b"GET / HTTP/1.1\r\nHost: a.test evil.example\r\nConnection: close\r\n\r\n", Some(400)),
        // Paths that look like another host.
        (b"GET //evil.example/x HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n", Some(308)),
        (b"GET /\\evil.example HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n", None),
        (b"GET @evil.example HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n", None),
        // Proxy headers are not the host.
        (
            b"GET / HTTP/1.1\r\nHost: a.test\r\nX-Forwarded-Host: evil.example\r\nForwarded: host=evil.example\r\nConnection: close\r\n\r\n",
            Some(308),
        ),
        // Two Host headers, either order.
        (b"GET / HTTP/1.1\r\nHost: a.test\r\nHost: evil.example\r\nConnection: close\r\n\r\n", None),
        (b"GET / HTTP/1.1\r\nHost: evil.example\r\nHost: a.test\r\nConnection: close\r\n\r\n", None),
    ];

    for (raw, expected) in cases {
        let what = String::from_utf8_lossy(raw).into_owned();
        let answer = raw_request(addr, raw).await;
        if let Some(expected) = expected {
            assert_eq!(answer.status, Some(expected), "{what:?} -> {}", answer.text);
        }
        assert_stays_on_a_test(&what, answer.location.as_deref(), Some(port));
        if answer.status != Some(308) {
            assert_eq!(
                answer.location, None,
                "{what:?}: a Location on a non-redirect"
            );
        }
        for line in answer.text.split("\r\n\r\n").next().unwrap_or("").lines() {
            assert!(
                !line.to_ascii_lowercase().contains("evil.example")
                    || line
                        .to_ascii_lowercase()
                        .starts_with("location: https://a.test:"),
                "{what:?}: a response header names the foreign host: {line:?}"
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Local mode.

#[tokio::test]
async fn local_mode_redirects_localhost_and_the_loopback_literals_only() {
    let tls = AutoTls::new(Vec::<String>::new());
    for (host, expected) in [
        ("localhost", "https://localhost/x?y=1"),
        ("LOCALHOST:8080", "https://localhost/x?y=1"),
        ("127.0.0.1:8080", "https://127.0.0.1/x?y=1"),
        ("[::1]:8080", "https://[::1]/x?y=1"),
    ] {
        let answer = call(&tls, Method::GET, "/x?y=1", Some(host)).await;
        assert_eq!(
            answer.status,
            StatusCode::PERMANENT_REDIRECT,
            "Host: {host}"
        );
        assert_eq!(answer.location.as_deref(), Some(expected), "Host: {host}");
    }
    for host in ["evil.example", "a.test", "127.0.0.2", "[::2]"] {
        let answer = call(&tls, Method::GET, "/x", Some(host)).await;
        assert_eq!(
            answer.status,
            StatusCode::MISDIRECTED_REQUEST,
            "Host: {host}"
        );
        assert_eq!(answer.location, None, "Host: {host}");
    }

    let https = tls
        .bind("127.0.0.1:0")
        .await
        .expect("local mode binds without a CA");
    let port = https.local_addr().expect("local addr").port();
    let (addr, _server) = serve_redirect(&tls).await;
    let answer = raw_request(
        addr,
        b"GET /x?y=1 HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(answer.status, Some(308), "{}", answer.text);
    assert_eq!(
        answer.location,
        Some(format!("https://localhost:{port}/x?y=1")),
        "{}",
        answer.text
    );
}
