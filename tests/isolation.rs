//! Faults in one part never stop the listener: a panicking handler, a cache that fails every
//! write, an event subscriber that never reads.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use autotls::{AutoTls, CertEvent, CertState, Challenge};
use axum::routing::get;
use axum::Router;
use support::client::{https_get, wait_for};
use support::pebble::Pebble;
use tokio::task::JoinHandle;

struct Served {
    addr: SocketAddr,
    task: JoinHandle<()>,
}

impl Drop for Served {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve(tls: &AutoTls, addr: &str) -> Served {
    let listener = tls.bind(addr).await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let app = Router::new()
        .route("/", get(|| async { "Hello world" }))
        .route(
            "/panic",
            get(|| async {
                if std::hint::black_box(true) {
                    panic!("a handler bug");
                }
                "unreachable"
            }),
        )
        .layer(tls.clone());
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Served { addr, task }
}

/// A self-signed certificate for `name`, as a cache file and as the client's root.
fn self_signed(name: &str) -> (String, Vec<u8>) {
    let cert = rcgen::generate_simple_self_signed(vec![name.to_owned()]).expect("cert");
    (
        format!("{}{}", cert.signing_key.serialize_pem(), cert.cert.pem()),
        cert.cert.pem().into_bytes(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_handler_does_not_stop_the_listener() {
    let cache = tempfile::tempdir().expect("tempdir");
    let (pem, root) = self_signed("a.test");
    let dir = cache.path().join("127.0.0.1_1_dir");
    std::fs::create_dir_all(&dir).expect("mkdir");
    std::fs::write(dir.join("a.test.pem"), pem).expect("plant");
    let tls = AutoTls::new(["a.test"])
        .directory("https://127.0.0.1:1/dir")
        .cache_dir(cache.path());
    let served = serve(&tls, "127.0.0.1:0").await;
    for _ in 0..10 {
        let result = https_get(served.addr, "a.test", &root, "/panic").await;
        assert!(
            result.is_err(),
            "a panicking handler gives no response: {result:?}"
        );
        let ok = https_get(served.addr, "a.test", &root, "/")
            .await
            .expect("the next request is served");
        assert_eq!(ok.body, "Hello world");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_that_never_reads_does_not_slow_anything_down() {
    let cache = tempfile::tempdir().expect("tempdir");
    let (pem, root) = self_signed("a.test");
    let dir = cache.path().join("127.0.0.1_1_dir");
    std::fs::create_dir_all(&dir).expect("mkdir");
    std::fs::write(dir.join("a.test.pem"), pem).expect("plant");
    // Five names fail at once (the CA is unreachable) and retry every 10-20 ms: hundreds of
    // events, far more than the channel holds.
    let names = ["a.test", "b.test", "c.test", "d.test", "e.test", "f.test"];
    let tls = AutoTls::new(names)
        .directory("https://127.0.0.1:1/dir")
        .cache_dir(cache.path())
        .retry_backoff(Duration::from_millis(10), Duration::from_millis(20));
    let _never_read = tls.subscribe();
    let mut reader = tls.subscribe();
    let served = serve(&tls, "127.0.0.1:0").await;
    let mut failed = 0usize;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while failed < 600 {
        match tokio::time::timeout_at(deadline, reader.recv()).await {
            Ok(Ok(CertEvent::Failed { .. })) => failed += 1,
            Ok(Ok(_)) => {}
            Ok(Err(tokio::sync::broadcast::error::RecvError::Lagged(_))) => {}
            Ok(Err(e)) => panic!("events closed: {e}"),
            Err(_) => panic!("only {failed} failure events within the bound"),
        }
    }
    // The unread receiver holds at most the channel's capacity; serving goes on.
    let ok = https_get(served.addr, "a.test", &root, "/")
        .await
        .expect("served while a subscriber lags");
    assert_eq!(ok.body, "Hello world");
    assert_eq!(
        tls.status()
            .iter()
            .find(|s| s.name == "a.test")
            .map(|s| s.state),
        Some(CertState::Valid),
        "{:?}",
        tls.status()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cache_that_fails_every_write_still_serves_the_new_certificate() {
    let pebble = Pebble::start().await;
    let cache = tempfile::tempdir().expect("tempdir");
    // HTTP-01 only, and the HTTP port is served only after the cache is broken: no
    // certificate can be issued (and written) before that.
    let tls = AutoTls::new(["a.test"])
        .directory(pebble.directory_url())
        .directory_root(pebble.directory_root_pem())
        .challenge(Challenge::Http01)
        .retry_backoff(Duration::from_millis(200), Duration::from_secs(1))
        .cache_dir(cache.path());
    tls.start().expect("start");
    let dirs: Vec<_> = std::fs::read_dir(cache.path())
        .expect("read the cache root")
        .map(|e| e.expect("entry").path())
        .collect();
    assert_eq!(dirs.len(), 1);
    // The first attempt registers the account (and caches its key), then fails validation.
    // An unreadable account key stops registration on purpose (a new account would orphan
    // the old one), so the cache breaks only once the account exists.
    let key = dirs[0].join("account-key.pem");
    wait_for(
        "the account key to be cached",
        Duration::from_secs(30),
        || key.exists().then_some(()),
    )
    .await;
    // Now the cache directory is replaced by a regular file: every write fails.
    std::fs::rename(&dirs[0], cache.path().join("moved")).expect("move the directory away");
    std::fs::write(&dirs[0], b"not a directory").expect("put a file in its place");

    let http = tokio::net::TcpListener::bind(format!("127.0.0.1:{}", pebble.http_port()))
        .await
        .expect("bind the HTTP-01 port");
    let redirect = tls.http_redirect();
    let http_task = tokio::spawn(async move {
        let _ = axum::serve(http, redirect).await;
    });
    let served = serve(&tls, "127.0.0.1:0").await;
    wait_for(
        "a certificate despite the cache",
        Duration::from_secs(30),
        || (tls.status()[0].state == CertState::Valid).then_some(()),
    )
    .await;
    let root = pebble.issuing_root_pem().await;
    let ok = https_get(served.addr, "a.test", &root, "/")
        .await
        .expect("the new certificate is served although it could not be cached");
    assert_eq!(ok.body, "Hello world");
    assert!(
        std::fs::metadata(&dirs[0]).expect("still there").is_file(),
        "the cache stayed broken throughout"
    );
    http_task.abort();
}
