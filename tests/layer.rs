//! The layer (`.layer(tls.clone())`, `AutoTlsLayer`): it fits axum, tower and plain hyper-style
//! services, passes every ordinary request through untouched, and answers every request under
//! `/.well-known/acme-challenge/` itself — with 404 unless the engine published that token.
//!
//! A pending token exists only while the engine runs a real order, so the positive answer is
//! covered by the Pebble HTTP-01 test; here no token is ever pending.

use std::convert::Infallible;
use std::fmt;
use std::future::{ready, Ready};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use autotls::layer::ResponseBody;
use autotls::{AutoTls, AutoTlsLayer, AutoTlsService};
use axum::routing::{get, post};
use axum::Router;
use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode, Uri, Version};
use http_body_util::{BodyExt, Full};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tower::{Layer, Service, ServiceBuilder, ServiceExt};

const BOUND: Duration = Duration::from_secs(5);

/// The inner service's own error type: not axum's, not `Infallible`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct InnerError(&'static str);

impl fmt::Display for InnerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "inner error: {}", self.0)
    }
}

impl std::error::Error for InnerError {}

/// A request extension, to see that extensions reach the inner service too.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Marker(u32);

/// Everything the inner service saw of one request.
#[derive(Debug, Clone, PartialEq)]
struct Seen {
    method: Method,
    uri: Uri,
    version: Version,
    headers: HeaderMap,
    body: Bytes,
    marker: Option<Marker>,
}

type Log = Arc<Mutex<Vec<Seen>>>;

/// A hyper-style service (`Full<Bytes>` in and out, `InnerError`) that records each request
/// and answers `201` with a header and body of its own; `/fail` returns an error.
fn recording_service(
    log: Log,
) -> impl Service<Request<Full<Bytes>>, Response = Response<Full<Bytes>>, Error = InnerError> + Clone
{
    tower::service_fn(move |req: Request<Full<Bytes>>| {
        let log = log.clone();
        async move {
            let (parts, body) = req.into_parts();
            let body = match body.collect().await {
                Ok(collected) => collected.to_bytes(),
                Err(never) => match never {},
            };
            if parts.uri.path() == "/fail" {
                return Err(InnerError("boom"));
            }
            log.lock().expect("log lock").push(Seen {
                marker: parts.extensions.get::<Marker>().cloned(),
                method: parts.method,
                uri: parts.uri,
                version: parts.version,
                headers: parts.headers,
                body,
            });
            let response = Response::builder()
                .status(StatusCode::CREATED)
                .header("x-from-inner", "yes")
                .body(Full::new(Bytes::from_static(b"inner body")))
                .expect("inner response");
            Ok(response)
        }
    })
}

/// A service that only counts calls; it answers 200 "inner".
fn counting_service(
    calls: Arc<AtomicUsize>,
) -> impl Service<Request<Full<Bytes>>, Response = Response<Full<Bytes>>, Error = Infallible> + Clone
{
    tower::service_fn(move |_req: Request<Full<Bytes>>| {
        calls.fetch_add(1, Ordering::SeqCst);
        ready(Ok::<_, Infallible>(Response::new(Full::new(
            Bytes::from_static(b"inner"),
        ))))
    })
}

async fn body_bytes<B>(body: B) -> Bytes
where
    B: http_body::Body<Data = Bytes>,
    B::Error: fmt::Debug,
{
    body.collect()
        .await
        .expect("reading the response body")
        .to_bytes()
}

fn hello_router() -> Router {
    Router::new()
        .route("/", get(|| async { "Hello world" }))
        .route("/echo", post(|body: Bytes| async move { body }))
}

// ---------------------------------------------------------------------------------------------
// It fits: axum, tower::ServiceBuilder, a plain hyper-style service.

#[tokio::test]
async fn the_layer_wraps_an_axum_router_and_its_routes_still_answer() {
    let tls = AutoTls::new(["a.test"]);
    let app: Router = hello_router().layer(tls.clone());

    let res = app
        .clone()
        .oneshot(
            Request::get("/")
                .header("host", "a.test")
                .body(axum::body::Body::empty())
                .expect("request"),
        )
        .await
        .expect("axum services are infallible");
    assert_eq!(res.status(), StatusCode::OK);
    let body = axum::body::to_bytes(res.into_body(), 1 << 20)
        .await
        .expect("body");
    assert_eq!(&body[..], b"Hello world");

    let res = app
        .oneshot(
            Request::post("/echo")
                .body(axum::body::Body::from("echo me"))
                .expect("request"),
        )
        .await
        .expect("axum services are infallible");
    assert_eq!(res.status(), StatusCode::OK);
    let body = axum::body::to_bytes(res.into_body(), 1 << 20)
        .await
        .expect("body");
    assert_eq!(&body[..], b"echo me");
}

#[tokio::test]
async fn the_layer_works_inside_a_tower_service_builder() {
    let tls = AutoTls::new(["a.test"]);
    let calls = Arc::new(AtomicUsize::new(0));

    // Both spellings: the AutoTls itself and the named layer type.
    let via_autotls = ServiceBuilder::new()
        .layer(tls.clone())
        .service(counting_service(calls.clone()));
    let layer: AutoTlsLayer = tls.challenge_layer();
    let via_layer = ServiceBuilder::new()
        .layer(layer)
        .map_request(|req: Request<Full<Bytes>>| req)
        .service(counting_service(calls.clone()));

    for res in [
        via_autotls
            .oneshot(Request::get("/").body(Full::default()).expect("request"))
            .await,
        via_layer
            .oneshot(Request::get("/").body(Full::default()).expect("request"))
            .await,
    ] {
        let res = res.expect("the inner service is infallible");
        assert_eq!(res.status(), StatusCode::OK);
        assert_eq!(&body_bytes(res.into_body()).await[..], b"inner");
    }
    assert_eq!(
        calls.load(Ordering::SeqCst),
        2,
        "both requests reach the inner service"
    );
}

#[tokio::test]
async fn the_inner_body_and_error_types_pass_through_a_plain_hyper_service() {
    let tls = AutoTls::new(["a.test"]);
    let log = Log::default();
    let svc: AutoTlsService<_> = tls.challenge_layer().layer(recording_service(log.clone()));

    // The types are the point: the inner `Full<Bytes>` body inside `ResponseBody`, and the
    // inner error type, not one the layer made up.
    let ok: Result<Response<ResponseBody<Full<Bytes>>>, InnerError> = svc
        .clone()
        .oneshot(Request::get("/").body(Full::default()).expect("request"))
        .await;
    let ok = ok.expect("the inner service answers /");
    assert_eq!(ok.status(), StatusCode::CREATED);

    let failed: Result<Response<ResponseBody<Full<Bytes>>>, InnerError> = svc
        .oneshot(
            Request::get("/fail")
                .body(Full::default())
                .expect("request"),
        )
        .await;
    assert_eq!(
        failed.expect_err("the inner service fails /fail"),
        InnerError("boom"),
        "the inner error comes back unchanged"
    );
}

// ---------------------------------------------------------------------------------------------
// poll_ready is the inner service's.

/// Ready only once opened; remembers the last waker it was polled with.
#[derive(Clone, Default)]
struct Gate {
    open: Arc<AtomicBool>,
    waker: Arc<Mutex<Option<Waker>>>,
}

impl Gate {
    fn open(&self) {
        self.open.store(true, Ordering::SeqCst);
        if let Some(waker) = self.waker.lock().expect("waker lock").take() {
            waker.wake();
        }
    }

    fn has_waiter(&self) -> bool {
        self.waker.lock().expect("waker lock").is_some()
    }
}

#[derive(Clone)]
struct GatedService {
    gate: Gate,
    fail_readiness: bool,
}

impl Service<Request<Full<Bytes>>> for GatedService {
    type Response = Response<Full<Bytes>>;
    type Error = InnerError;
    type Future = Ready<Result<Self::Response, InnerError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), InnerError>> {
        if self.fail_readiness {
            return Poll::Ready(Err(InnerError("overloaded")));
        }
        if self.gate.open.load(Ordering::SeqCst) {
            return Poll::Ready(Ok(()));
        }
        *self.gate.waker.lock().expect("waker lock") = Some(cx.waker().clone());
        // Opened between the check and storing the waker: do not miss it.
        if self.gate.open.load(Ordering::SeqCst) {
            return Poll::Ready(Ok(()));
        }
        Poll::Pending
    }

    fn call(&mut self, _req: Request<Full<Bytes>>) -> Self::Future {
        ready(Ok(Response::new(Full::new(Bytes::from_static(b"gated")))))
    }
}

#[tokio::test]
async fn poll_ready_is_pending_while_the_inner_service_is_not_ready() {
    let tls = AutoTls::new(["a.test"]);
    let gate = Gate::default();
    let mut svc = tls.challenge_layer().layer(GatedService {
        gate: gate.clone(),
        fail_readiness: false,
    });

    let mut cx = Context::from_waker(Waker::noop());
    let first = Service::<Request<Full<Bytes>>>::poll_ready(&mut svc, &mut cx);
    assert!(
        first.is_pending(),
        "the layered service must not claim readiness the inner service lacks"
    );
    assert!(
        gate.has_waiter(),
        "the caller's context must reach the inner poll_ready"
    );
    gate.waker.lock().expect("waker lock").take();

    // A real waiter: it must be woken through the inner service's own wake-up.
    let waiter = tokio::spawn(async move {
        let ready = svc.ready().await.expect("the gate never fails");
        ready
            .call(Request::get("/").body(Full::default()).expect("request"))
            .await
    });
    wait_for(
        "the waiter to register its waker with the inner service",
        || gate.has_waiter() && !gate.open.load(Ordering::SeqCst),
    )
    .await;
    assert!(
        !waiter.is_finished(),
        "the waiter must still wait: the gate is closed"
    );

    gate.open();
    let res = tokio::time::timeout(BOUND, waiter)
        .await
        .expect("opening the gate wakes the waiter")
        .expect("the waiter task does not panic")
        .expect("the gated service answers");
    assert_eq!(&body_bytes(res.into_body()).await[..], b"gated");
}

#[tokio::test]
async fn poll_ready_errors_of_the_inner_service_come_back_unchanged() {
    let tls = AutoTls::new(["a.test"]);
    let mut svc = tls.challenge_layer().layer(GatedService {
        gate: Gate::default(),
        fail_readiness: true,
    });
    let mut cx = Context::from_waker(Waker::noop());
    match Service::<Request<Full<Bytes>>>::poll_ready(&mut svc, &mut cx) {
        Poll::Ready(Err(err)) => assert_eq!(err, InnerError("overloaded")),
        other => panic!("expected the inner readiness error, got {other:?}"),
    }
}

/// Waits until `cond` holds, polling every few milliseconds, for at most [`BOUND`].
async fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + BOUND;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

// ---------------------------------------------------------------------------------------------
// Ordinary requests are not touched.

#[tokio::test]
async fn every_ordinary_request_reaches_the_inner_service_unchanged() {
    let tls = AutoTls::new(["a.test"]);
    let log = Log::default();
    let svc = tls.challenge_layer().layer(recording_service(log.clone()));

    let cases: Vec<(Method, &str, Version, &[u8])> = vec![
        (Method::GET, "/", Version::HTTP_11, b""),
        (
            Method::POST,
            "/api/items?x=1&y=%2F",
            Version::HTTP_11,
            b"{\"a\":1}",
        ),
        (
            Method::PUT,
            "/upload",
            Version::HTTP_2,
            &[0u8, 159, 146, 150, 255],
        ),
        (Method::DELETE, "/items/7", Version::HTTP_10, b""),
        (Method::PATCH, "/items/7", Version::HTTP_11, b"patch"),
        (Method::OPTIONS, "*", Version::HTTP_11, b""),
        (Method::HEAD, "/head", Version::HTTP_11, b""),
        (
            Method::from_bytes(b"PURGE").expect("method"),
            "/cache",
            Version::HTTP_11,
            b"",
        ),
        // Near misses of the challenge prefix belong to the app.
        (
            Method::GET,
            "/.well-known/acme-challenge",
            Version::HTTP_11,
            b"",
        ),
        (
            Method::GET,
            "/.well-known/acme-challengeX/tok",
            Version::HTTP_11,
            b"",
        ),
        (Method::GET, "/.well-known/other", Version::HTTP_11, b""),
        (
            Method::GET,
            "/app/.well-known/acme-challenge/tok",
            Version::HTTP_11,
            b"",
        ),
        (
            Method::GET,
            "/.WELL-KNOWN/acme-challenge/tok",
            Version::HTTP_11,
            b"",
        ),
        (
            Method::GET,
            "http://a.test/absolute?q=1",
            Version::HTTP_11,
            b"",
        ),
    ];

    for (method, uri, version, body) in cases {
        let body = Bytes::copy_from_slice(body);
        let mut req = Request::builder()
            .method(method.clone())
            .uri(uri)
            .version(version)
            .header("host", "a.test")
            .header("x-one", "1")
            .header("x-many", "first")
            .header("x-many", "second")
            .header("cookie", "session=abc")
            .body(Full::new(body.clone()))
            .expect("request");
        req.extensions_mut().insert(Marker(7));
        let expected = Seen {
            method: req.method().clone(),
            uri: req.uri().clone(),
            version: req.version(),
            headers: req.headers().clone(),
            body,
            marker: Some(Marker(7)),
        };

        let res = svc
            .clone()
            .oneshot(req)
            .await
            .unwrap_or_else(|e| panic!("{method} {uri}: the inner service failed: {e}"));

        assert_eq!(
            res.status(),
            StatusCode::CREATED,
            "{method} {uri}: the inner status"
        );
        assert_eq!(
            res.headers().get("x-from-inner").map(|v| v.as_bytes()),
            Some(&b"yes"[..]),
            "{method} {uri}: the inner headers"
        );
        assert_eq!(
            &body_bytes(res.into_body()).await[..],
            b"inner body",
            "{method} {uri}"
        );
        let seen = log
            .lock()
            .expect("log lock")
            .pop()
            .unwrap_or_else(|| panic!("{method} {uri}: the inner service was not called"));
        assert_eq!(
            seen, expected,
            "{method} {uri}: the request changed on its way in"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Everything under the challenge prefix is the layer's, and without a pending token it is 404.

/// Requests under the challenge prefix that must never be answered with anything but 404.
fn hostile_challenge_requests() -> Vec<(String, Request<Full<Bytes>>)> {
    let prefix = "/.well-known/acme-challenge/";
    let long_token = "A".repeat(8 * 1024);
    let mut out = Vec::new();
    let mut get = |path: String, host: Option<&str>| {
        let mut builder = Request::get(path.as_str());
        if let Some(host) = host {
            builder = builder.header("host", host);
        }
        let req = builder.body(Full::default()).expect("request");
        out.push((format!("GET {path} (host {host:?})"), req));
    };
    for token in [
        "../x",
        "..%2fx",
        "%2e%2e",
        "%2e%2e%2fetc%2fpasswd",
        "..",
        "",
        "a/b",
        "tok.en",
        "tok=",
        "tok+en",
        "tok~en",
        "tok!en",
        "tok$en",
        "tok'en",
        "tok(en)",
        "tok:en",
        "tok@en",
        "tok%20en",
        "%41%42", // percent-encoded base64url is still not a token
        "tok;en",
        "tok,en",
    ] {
        get(format!("{prefix}{token}"), Some("a.test"));
    }
    get(format!("{prefix}{long_token}"), Some("a.test"));
    // Valid-looking tokens that are not pending: with and without a Host header, with a query.
    get(format!("{prefix}dGhpcy1pcy1ub3QtcGVuZGluZw"), None);
    get(
        format!("{prefix}dGhpcy1pcy1ub3QtcGVuZGluZw"),
        Some("a.test"),
    );
    get(
        format!("{prefix}dGhpcy1pcy1ub3QtcGVuZGluZw"),
        Some("evil.example"),
    );
    get(
        format!("{prefix}dGhpcy1pcy1ub3QtcGVuZGluZw?x=1"),
        Some("a.test"),
    );
    get(
        format!("http://a.test{prefix}dGhpcy1pcy1ub3QtcGVuZGluZw"),
        None,
    );
    for method in [
        Method::POST,
        Method::PUT,
        Method::DELETE,
        Method::PATCH,
        Method::HEAD,
        Method::OPTIONS,
    ] {
        let path = format!("{prefix}dGhpcy1pcy1ub3QtcGVuZGluZw");
        let req = Request::builder()
            .method(method.clone())
            .uri(path.as_str())
            .header("host", "a.test")
            .body(Full::new(Bytes::from_static(b"payload")))
            .expect("request");
        out.push((format!("{method} {path}"), req));
    }
    out
}

#[tokio::test]
async fn hostile_or_unknown_challenge_requests_get_404_and_never_reach_the_app() {
    let tls = AutoTls::new(["a.test"]);
    let calls = Arc::new(AtomicUsize::new(0));
    let svc = tls.challenge_layer().layer(counting_service(calls.clone()));

    for (what, req) in hostile_challenge_requests() {
        let res = svc.clone().oneshot(req).await.expect("infallible");
        assert_eq!(res.status(), StatusCode::NOT_FOUND, "{what}");
        let body = body_bytes(res.into_body()).await;
        assert_ne!(&body[..], b"inner", "{what}: answered by the app");
        assert_eq!(
            calls.load(Ordering::SeqCst),
            0,
            "{what}: the inner service was called"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// The same through a real axum server.

/// Serves `app` on 127.0.0.1:0; the server stops when the returned guard is dropped.
async fn serve(app: Router) -> (SocketAddr, AbortOnDrop) {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind 127.0.0.1:0");
    let addr = listener.local_addr().expect("local addr");
    let task = tokio::spawn(async move {
        axum::serve(listener, app).await.expect("axum::serve");
    });
    (addr, AbortOnDrop(task))
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Writes `raw` (one HTTP/1.1 request with `Connection: close`) and returns the status and
/// the whole response text.
async fn raw_request(addr: SocketAddr, raw: &str) -> (u16, String) {
    let exchange = async {
        let mut tcp = TcpStream::connect(addr).await.expect("connect");
        tcp.write_all(raw.as_bytes()).await.expect("write request");
        let mut response = Vec::new();
        tcp.read_to_end(&mut response).await.expect("read response");
        response
    };
    let response = tokio::time::timeout(BOUND, exchange)
        .await
        .unwrap_or_else(|_| panic!("no complete response within {BOUND:?} to {raw:?}"));
    let text = String::from_utf8_lossy(&response).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {text:?}"));
    (status, text)
}

#[tokio::test]
async fn a_layered_router_served_by_axum_answers_the_app_and_refuses_challenge_probes() {
    let tls = AutoTls::new(["a.test"]);
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = calls.clone();
    let app = Router::new()
        .route("/", get(|| async { "Hello world" }))
        .fallback(move || {
            counted.fetch_add(1, Ordering::SeqCst);
            async { (StatusCode::IM_A_TEAPOT, "fallback") }
        })
        .layer(tls.clone());
    let (addr, _server) = serve(app).await;

    let (status, text) = raw_request(
        addr,
        "GET / HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status, 200, "{text}");
    assert!(text.ends_with("Hello world"), "{text}");

    let long = "A".repeat(8 * 1024);
    for target in [
        "/.well-known/acme-challenge/../x".to_owned(),
        "/.well-known/acme-challenge/%2e%2e".to_owned(),
        "/.well-known/acme-challenge/tok.en".to_owned(),
        "/.well-known/acme-challenge/dGhpcy1pcy1ub3QtcGVuZGluZw".to_owned(),
        format!("/.well-known/acme-challenge/{long}"),
    ] {
        let raw = format!("GET {target} HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n");
        let (status, text) = raw_request(addr, &raw).await;
        assert_eq!(status, 404, "GET {target}: {text}");
    }
    let raw = "POST /.well-known/acme-challenge/dGhpcy1pcy1ub3QtcGVuZGluZw HTTP/1.1\r\n\
               Host: a.test\r\nContent-Length: 3\r\nConnection: close\r\n\r\nabc";
    let (status, text) = raw_request(addr, raw).await;
    assert_eq!(status, 404, "POST to a challenge path: {text}");

    assert_eq!(
        calls.load(Ordering::SeqCst),
        0,
        "a challenge probe reached the app"
    );

    // And the app's own fallback still runs for paths that are not challenges.
    let (status, text) = raw_request(
        addr,
        "GET /nope HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status, 418, "{text}");
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}
