//! The layer alone: what `AutoTlsLayer` adds to a request, in nanoseconds.
//!
//! * `layer/bare` — a hello-world tower service called directly (the baseline);
//! * `layer/pass_through` — the same service behind `AutoTlsLayer`: the difference is the
//!   layer's whole cost on an ordinary request (one prefix check on the path);
//! * `layer/challenge_unknown` — a request under `/.well-known/acme-challenge/` for a token
//!   that is not pending: answered 404 by the layer (token check, host parse, map lookup);
//! * `layer/challenge_answer` — a pending HTTP-01 token answered with its key authorization.
//!   A token is pending only while an order is, so the bench runs the real engine against a
//!   tiny in-process CA that hands out one HTTP-01 challenge and never validates it
//!   (`support::StalledCa`);
//! * `request/bare` and `request/layered` — a whole keep-alive HTTP/1.1 request through
//!   hyper's server over an in-memory pipe, without and with the layer: the denominator of
//!   "the layer costs ≤ 1 % of a bare hello-world request".
//!
//! Run: `cargo bench --bench layer` (add `-- --warm-up-time 1 --measurement-time 2` for a
//! quick run, as `scripts/bench` does).

#[path = "support/mod.rs"]
mod support;

use std::convert::Infallible;
use std::future::{ready, Future, Ready};
use std::hint::black_box;
use std::pin::pin;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use autotls::{AutoTls, CertEvent};
use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion};
use http::header::HOST;
use http::{HeaderValue, Request, Response, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use tower::{Layer, Service};

const NAME: &str = "www.bench.test";

/// The hello-world handler every benchmark serves: answers at once, whatever the body type.
#[derive(Clone, Copy)]
struct Hello;

impl<B> Service<Request<B>> for Hello {
    type Response = Response<Full<Bytes>>;
    type Error = Infallible;
    type Future = Ready<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _req: Request<B>) -> Self::Future {
        ready(Ok(Response::new(Full::new(Bytes::from_static(
            b"Hello world",
        )))))
    }
}

fn hello() -> Hello {
    Hello
}

fn request(path: &'static str) -> Request<Full<Bytes>> {
    let mut req = Request::new(Full::new(Bytes::new()));
    *req.uri_mut() = Uri::from_static(path);
    req.headers_mut()
        .insert(HOST, HeaderValue::from_static(NAME));
    req
}

/// Polls a future that is ready at once (every service here answers without waiting).
fn now<F: Future>(fut: F) -> F::Output {
    let mut fut = pin!(fut);
    match fut.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(out) => out,
        Poll::Pending => panic!("the service was expected to answer at once"),
    }
}

fn call<S, B>(svc: &mut S, req: Request<Full<Bytes>>) -> Response<B>
where
    S: Service<Request<Full<Bytes>>, Response = Response<B>>,
    S::Error: std::fmt::Debug,
{
    now(svc.call(req)).expect("the service answers")
}

fn layer(c: &mut Criterion) {
    let tls = AutoTls::new([NAME]);
    let mut bare = hello();
    let mut layered = tls.challenge_layer().layer(hello());

    let mut group = c.benchmark_group("layer");
    group.bench_function("bare", |b| {
        b.iter(|| black_box(call(&mut bare, request("/"))))
    });
    group.bench_function("pass_through", |b| {
        b.iter(|| black_box(call(&mut layered, request("/"))))
    });
    group.bench_function("challenge_unknown", |b| {
        b.iter(|| {
            let res = call(
                &mut layered,
                request("/.well-known/acme-challenge/not-a-pending-token"),
            );
            debug_assert_eq!(res.status(), StatusCode::NOT_FOUND);
            black_box(res)
        })
    });

    // A pending token, from a real order against a CA that never validates it.
    let rt = tokio::runtime::Runtime::new().expect("a tokio runtime");
    let _ca_guard = rt.enter();
    let ca = rt.block_on(support::StalledCa::start());
    let cache = tempfile::tempdir().expect("a temporary cache directory");
    let tls = AutoTls::new([NAME])
        .directory(ca.directory_url())
        .directory_root(ca.root_pem())
        .cache_dir(cache.path())
        .challenge(autotls::Challenge::Http01);
    let mut events = tls.subscribe();
    tls.start().expect("start the certificate manager");
    let mut answering = tls.challenge_layer().layer(hello());
    let path: &'static str = format!("/.well-known/acme-challenge/{}", support::TOKEN).leak();
    rt.block_on(async {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            if call(&mut answering, request(path)).status() == StatusCode::OK {
                break;
            }
            if let Ok(CertEvent::Failed { error, .. }) = events.try_recv() {
                panic!("the order against the stalled CA failed: {error}");
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the token was never published"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    });
    group.bench_function("challenge_answer", |b| {
        b.iter(|| {
            let res = call(&mut answering, request(path));
            debug_assert_eq!(res.status(), StatusCode::OK);
            black_box(res)
        })
    });
    // Still pending at the end: the benchmark measured the answer, not a 404.
    assert_eq!(
        call(&mut answering, request(path)).status(),
        StatusCode::OK,
        "the challenge expired during the benchmark"
    );
    group.finish();
    drop(tls);
    drop(answering);
    drop(ca);
}

/// Whole requests through hyper's HTTP/1.1 server over an in-memory pipe, one connection
/// kept alive, client and server on one current-thread runtime.
fn request_through_hyper(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let tls = AutoTls::new([NAME]);
    let mut group = c.benchmark_group("request");
    for (label, layered) in [("bare", false), ("layered", true)] {
        let mut sender = rt.block_on(async {
            let (client, server) = tokio::io::duplex(64 * 1024);
            let builder = hyper::server::conn::http1::Builder::new();
            let server = hyper_util::rt::TokioIo::new(server);
            if layered {
                let svc = hyper_util::service::TowerToHyperService::new(
                    tls.challenge_layer().layer(hello()),
                );
                tokio::spawn(builder.serve_connection(server, svc));
            } else {
                let svc = hyper_util::service::TowerToHyperService::new(hello());
                tokio::spawn(builder.serve_connection(server, svc));
            }
            let (sender, conn) =
                hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(client))
                    .await
                    .expect("client handshake");
            tokio::spawn(conn);
            sender
        });
        group.bench_function(label, |b| {
            b.iter(|| {
                rt.block_on(async {
                    let req = Request::get("/")
                        .header(HOST, NAME)
                        .body(Full::new(Bytes::new()))
                        .expect("request");
                    let res = sender.send_request(req).await.expect("response");
                    let body = res.into_body().collect().await.expect("body").to_bytes();
                    debug_assert_eq!(&body[..], b"Hello world");
                    black_box(body)
                })
            })
        });
    }
    group.finish();
}

criterion_group!(benches, layer, request_through_hyper);
criterion_main!(benches);
