//! Moving from rustls-acme: a `DirCache` directory written by rustls-acme itself (run here
//! against Pebble) is adopted — its account and its certificates — with no new order and no
//! new account, whichever engine the crate then runs.

#![cfg(all(feature = "rustls-acme", feature = "axum"))]

mod support;

use std::path::{Path, PathBuf};
use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

use autotls::{AutoTls, CertState, Engine};
use axum::routing::get;
use axum::Router;
use futures_core::Stream;
use rustls_acme::caches::DirCache;
use rustls_acme::{AcmeConfig, EventOk};
use support::client::{client_config, https_get, wait_for};
use support::pebble::Pebble;
use tokio::io::AsyncWriteExt;
use tokio::task::JoinHandle;

const CONTACT: &str = "mailto:test@example.com";
/// Bound for rustls-acme (1 s sleeps between its polls) or the crate to get a certificate.
const ISSUE_LIMIT: Duration = Duration::from_secs(60);

/// Runs rustls-acme the way its users do — one `AcmeConfig` for all names, a `DirCache` —
/// until it has stored a certificate in `dir`; TLS-ALPN-01 is answered on Pebble's TLS port by
/// rustls-acme's own challenge config.
async fn issue_with_rustls_acme(pebble: &Pebble, dir: &Path, names: &[&str]) {
    let roots = client_config(&pebble.directory_root_pem(), &[]).expect("client config");
    let state = AcmeConfig::new_with_client_config(names, Arc::new(roots))
        .directory(pebble.directory_url())
        .contact_push(CONTACT)
        .cache(DirCache::new(dir.to_owned()))
        .state();
    let acceptor = tokio_rustls::TlsAcceptor::from(state.challenge_rustls_config());
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", pebble.tls_port()))
        .await
        .expect("Pebble's TLS-ALPN-01 port is free");
    let server = tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                if let Ok(mut tls) = acceptor.accept(tcp).await {
                    let _ = tls.shutdown().await;
                }
            });
        }
    });
    let stored = async {
        let mut state = pin!(state);
        loop {
            let event = std::future::poll_fn(|cx| state.as_mut().poll_next(cx)).await;
            match event.expect("rustls-acme's state never ends") {
                Ok(EventOk::CertCacheStore) => return,
                Ok(_) => {}
                Err(err) => panic!("rustls-acme failed: {err}\n{}", pebble.log()),
            }
        }
    };
    tokio::time::timeout(ISSUE_LIMIT, stored)
        .await
        .expect("rustls-acme stores a certificate within the bound");
    server.abort();
    let _ = server.await;
}

fn autotls(pebble: &Pebble, engine: Engine, names: &[&str], cache: &Path, old: &Path) -> AutoTls {
    let _ = tracing_subscriber::fmt()
        .with_env_filter("autotls=debug")
        .with_test_writer()
        .try_init();
    AutoTls::try_new(names)
        .expect("test names are valid")
        .contact(CONTACT)
        .directory(pebble.directory_url())
        .directory_root(pebble.directory_root_pem())
        .cache_dir(cache)
        .engine(engine)
        .import_rustls_acme_cache(old)
}

/// The hello-world app on `addr`; aborted on drop.
struct Server {
    https: std::net::SocketAddr,
    task: JoinHandle<()>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve(tls: &AutoTls, addr: &str) -> Server {
    let listener = tls.bind(addr).await.expect("bind the HTTPS port");
    let https = listener.local_addr().expect("local addr");
    let app = Router::new().route("/", get(|| async { "Hello world" }));
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Server { https, task }
}

async fn hello(server: &Server, name: &str, root: &[u8]) {
    let reply = https_get(server.https, name, root, "/")
        .await
        .unwrap_or_else(|e| panic!("verified HTTPS request to {name} failed: {e}"));
    assert_eq!(reply.body, "Hello world");
}

/// The only file in `dir` whose name starts with `prefix`.
fn only_file(dir: &Path, prefix: &str) -> PathBuf {
    let found: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("read dir")
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .is_some_and(|f| f.to_string_lossy().starts_with(prefix))
        })
        .collect();
    assert_eq!(
        found.len(),
        1,
        "one {prefix}* in {}: {found:?}",
        dir.display()
    );
    found.into_iter().next().expect("one file")
}

async fn a_rustls_acme_dir_cache_is_adopted_with_no_new_order(engine: Engine) {
    let pebble = Pebble::start().await;
    let old = tempfile::tempdir().expect("tempdir");
    issue_with_rustls_acme(&pebble, old.path(), &["a.test", "b.test"]).await;
    assert_eq!(pebble.orders(), 1, "rustls-acme's order:\n{}", pebble.log());
    assert_eq!(pebble.accounts(), 1, "rustls-acme's account");
    let old_account = std::fs::read(only_file(old.path(), "cached_account_")).expect("read");
    let root = pebble.issuing_root_pem().await;

    let cache = tempfile::tempdir().expect("tempdir");
    let tls = autotls(
        &pebble,
        engine,
        &["a.test", "b.test"],
        cache.path(),
        old.path(),
    );
    tls.start().expect("start on the imported cache");
    // Imported before the cache is loaded: both names are served at once.
    assert!(
        tls.status().iter().all(|s| s.state == CertState::Valid),
        "{:?}",
        tls.status()
    );
    let server = serve(&tls, "127.0.0.1:0").await;
    hello(&server, "a.test", &root).await;
    hello(&server, "b.test", &root).await;
    assert_eq!(pebble.orders(), 1, "no new order:\n{}", pebble.log());
    assert_eq!(pebble.accounts(), 1, "no new account:\n{}", pebble.log());

    // The account key is rustls-acme's, now in the crate's own file.
    let subdir = only_file(cache.path(), "127.0.0.1");
    let pem = std::fs::read(subdir.join("account-key.pem")).expect("the imported account key");
    let key = rustls_pemfile::private_key(&mut &pem[..])
        .expect("PEM")
        .expect("a key");
    assert_eq!(key.secret_der(), &old_account[..]);
    drop(server);
    drop(tls);

    // And it is the account the crate goes on with: a new name is ordered on it, and the
    // import, still configured, changes nothing now.
    let tls = autotls(
        &pebble,
        engine,
        &["a.test", "b.test", "c.test"],
        cache.path(),
        old.path(),
    );
    let server = serve(&tls, &format!("127.0.0.1:{}", pebble.tls_port())).await;
    wait_for("c.test to get a certificate", ISSUE_LIMIT, || {
        tls.status()
            .iter()
            .all(|s| s.state == CertState::Valid)
            .then_some(())
    })
    .await;
    hello(&server, "c.test", &root).await;
    assert_eq!(
        pebble.orders(),
        2,
        "one order, for c.test:\n{}",
        pebble.log()
    );
    assert_eq!(
        pebble.accounts(),
        1,
        "still rustls-acme's account:\n{}",
        pebble.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instant_acme_adopts_a_rustls_acme_dir_cache_with_no_new_order() {
    a_rustls_acme_dir_cache_is_adopted_with_no_new_order(Engine::InstantAcme).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rustls_acme_adopts_a_rustls_acme_dir_cache_with_no_new_order() {
    a_rustls_acme_dir_cache_is_adopted_with_no_new_order(Engine::RustlsAcme).await;
}
