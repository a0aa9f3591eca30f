//! End to end against Pebble, Let's Encrypt's test CA: real orders, real validation
//! connections to this process, clients that verify the served chain against Pebble's
//! issuing root. Loopback only. Fails (never skips) when Pebble is not installed.
//!
//! Every test runs once per engine (`for_each_engine!` at the end): `instant_acme::<test>`,
//! and `rustls_acme::<test>` when the `rustls-acme` feature is on.

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use autotls::{AutoTls, CertState, Challenge, Engine};
use axum::routing::get;
use axum::Router;
use support::cache_subdir;
use support::client::{https_get, wait_for};
use support::pebble::Pebble;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// Bound for a certificate to arrive from Pebble (it takes well under a second).
const ISSUE_LIMIT: Duration = Duration::from_secs(30);

/// An `AutoTls` on `engine`, pointed at `pebble`, caching in `cache`.
fn autotls(engine: Engine, pebble: &Pebble, names: &[&str], cache: &std::path::Path) -> AutoTls {
    let _ = tracing_subscriber::fmt()
        .with_env_filter("autotls=debug")
        .with_test_writer()
        .try_init();
    AutoTls::try_new(names)
        .expect("test names are valid")
        .contact("mailto:test@example.com")
        .directory(pebble.directory_url())
        .directory_root(pebble.directory_root_pem())
        .cache_dir(cache)
        .engine(engine)
}

/// The hello-world app behind the layer, served on `addr` by axum; aborted on drop.
struct Server {
    https: SocketAddr,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for Server {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

async fn serve(tls: &AutoTls, https_addr: &str, http_addr: Option<&str>) -> Server {
    let mut tasks = Vec::new();
    if let Some(http_addr) = http_addr {
        let http = TcpListener::bind(http_addr)
            .await
            .expect("the HTTP-01 port is free");
        let redirect = tls.http_redirect();
        tasks.push(tokio::spawn(async move {
            let _ = axum::serve(http, redirect).await;
        }));
    }
    let listener = tls.bind(https_addr).await.expect("bind the HTTPS port");
    let https = listener.local_addr().expect("local addr");
    let app = Router::new()
        .route("/", get(|| async { "Hello world" }))
        .layer(tls.clone());
    tasks.push(tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    }));
    Server { https, tasks }
}

/// Waits until every managed name is served.
async fn wait_valid(tls: &AutoTls) {
    wait_for("every name to get a certificate", ISSUE_LIMIT, || {
        let status = tls.status();
        status
            .iter()
            .all(|s| s.state == CertState::Valid)
            .then_some(())
    })
    .await;
}

async fn hello(server: &Server, name: &str, root: &[u8]) {
    let reply = https_get(server.https, name, root, "/")
        .await
        .unwrap_or_else(|e| panic!("verified HTTPS request to {name} failed: {e}"));
    assert_eq!(reply.status, 200);
    assert_eq!(reply.body, "Hello world");
}

async fn tls_alpn_01_gets_certificates_for_two_names_and_serves_them(engine: Engine) {
    let pebble = Pebble::start().await;
    let cache = tempfile::tempdir().expect("tempdir");
    let tls = autotls(engine, &pebble, &["a.test", "b.test"], cache.path())
        .challenge(Challenge::TlsAlpn01);
    let mut events = tls.subscribe();
    let started = Instant::now();
    let server = serve(&tls, &format!("127.0.0.1:{}", pebble.tls_port()), None).await;
    wait_valid(&tls).await;
    eprintln!(
        "{engine}: two certificates by TLS-ALPN-01 in {} ms",
        started.elapsed().as_millis()
    );
    let root = pebble.issuing_root_pem().await;
    hello(&server, "a.test", &root).await;
    hello(&server, "b.test", &root).await;
    let mut issued = Vec::new();
    while let Ok(event) = events.try_recv() {
        if let autotls::CertEvent::Issued { name, .. } = event {
            issued.push(name);
        }
    }
    issued.sort();
    assert_eq!(issued, ["a.test", "b.test"], "an Issued event per name");
    assert_eq!(pebble.orders(), 2, "one order per name:\n{}", pebble.log());
    assert_eq!(
        pebble.accounts(),
        1,
        "one account for all names:\n{}",
        pebble.log()
    );
}

async fn http_01_gets_certificates_through_the_http_port_service(engine: Engine) {
    let pebble = Pebble::start().await;
    let cache = tempfile::tempdir().expect("tempdir");
    let tls =
        autotls(engine, &pebble, &["a.test", "b.test"], cache.path()).challenge(Challenge::Http01);
    // The HTTPS listener is not on Pebble's TLS-ALPN-01 port: only HTTP-01 can work.
    let http = format!("127.0.0.1:{}", pebble.http_port());
    let server = serve(&tls, "127.0.0.1:0", Some(&http)).await;
    wait_valid(&tls).await;
    let root = pebble.issuing_root_pem().await;
    hello(&server, "a.test", &root).await;
    hello(&server, "b.test", &root).await;
}

async fn http_01_is_the_fallback_when_tls_alpn_01_cannot_be_validated(engine: Engine) {
    let pebble = Pebble::start().await;
    let cache = tempfile::tempdir().expect("tempdir");
    // No challenge pinned; the HTTPS port is not where Pebble validates TLS-ALPN-01.
    let tls = autotls(engine, &pebble, &["a.test"], cache.path());
    let http = format!("127.0.0.1:{}", pebble.http_port());
    let server = serve(&tls, "127.0.0.1:0", Some(&http)).await;
    wait_valid(&tls).await;
    hello(&server, "a.test", &pebble.issuing_root_pem().await).await;
    assert_eq!(
        pebble.orders(),
        2,
        "a failed TLS-ALPN-01 order, then an HTTP-01 one:\n{}",
        pebble.log()
    );
}

async fn a_restart_on_the_same_cache_serves_at_once_and_places_no_order(engine: Engine) {
    let pebble = Pebble::start().await;
    let cache = tempfile::tempdir().expect("tempdir");
    let https = format!("127.0.0.1:{}", pebble.tls_port());
    {
        let tls = autotls(engine, &pebble, &["a.test", "b.test"], cache.path());
        let _server = serve(&tls, &https, None).await;
        wait_valid(&tls).await;
    }
    let orders = pebble.orders();
    let accounts = pebble.accounts();
    let root = pebble.issuing_root_pem().await;

    let tls = autotls(engine, &pebble, &["a.test", "b.test"], cache.path());
    tls.start().expect("start on the warm cache");
    // Served from the cache before any network round trip could have happened.
    assert!(
        tls.status().iter().all(|s| s.state == CertState::Valid),
        "{:?}",
        tls.status()
    );
    let server = serve(&tls, "127.0.0.1:0", None).await;
    hello(&server, "a.test", &root).await;
    hello(&server, "b.test", &root).await;
    assert_eq!(pebble.orders(), orders, "no new order:\n{}", pebble.log());
    assert_eq!(
        pebble.accounts(),
        accounts,
        "no new account:\n{}",
        pebble.log()
    );
}

async fn a_name_that_cannot_validate_does_not_keep_the_other_from_being_served(engine: Engine) {
    let pebble = Pebble::start().await;
    // Pebble's DNS sends bad.test to an address where nothing listens.
    pebble.set_dns_a("bad.test", "127.0.0.2").await;
    let cache = tempfile::tempdir().expect("tempdir");
    let tls = autotls(engine, &pebble, &["bad.test", "good.test"], cache.path())
        .challenge(Challenge::TlsAlpn01);
    let mut events = tls.subscribe();
    let server = serve(&tls, &format!("127.0.0.1:{}", pebble.tls_port()), None).await;
    wait_for("good.test to be served", ISSUE_LIMIT, || {
        tls.status()
            .iter()
            .any(|s| s.name == "good.test" && s.state == CertState::Valid)
            .then_some(())
    })
    .await;
    hello(&server, "good.test", &pebble.issuing_root_pem().await).await;
    // bad.test fails with an error that names it, and a retry is scheduled.
    let deadline = Instant::now() + ISSUE_LIMIT;
    loop {
        let event = tokio::time::timeout_at(deadline.into(), events.recv())
            .await
            .expect("a Failed event for bad.test within the bound")
            .expect("events channel open");
        if let autotls::CertEvent::Failed {
            name,
            error,
            retry_in,
        } = event
        {
            assert_eq!(name, "bad.test");
            assert!(!error.is_empty());
            assert!(retry_in >= Duration::from_secs(50), "retry in {retry_in:?}");
            break;
        }
    }
    let bad = tls
        .status()
        .into_iter()
        .find(|s| s.name == "bad.test")
        .expect("bad.test is managed");
    assert_eq!(bad.state, CertState::Failing);
    assert!(bad.last_error.is_some());
    assert!(bad.next_attempt.is_some());
}

async fn unknown_sni_fails_the_handshake_and_places_no_order(engine: Engine) {
    let pebble = Pebble::start().await;
    let cache = tempfile::tempdir().expect("tempdir");
    let tls = autotls(engine, &pebble, &["a.test"], cache.path());
    let server = serve(&tls, &format!("127.0.0.1:{}", pebble.tls_port()), None).await;
    wait_valid(&tls).await;
    let root = pebble.issuing_root_pem().await;
    let orders = pebble.orders();
    for name in ["unknown.test", "a.test.evil.test", "localhost"] {
        let result = https_get(server.https, name, &root, "/").await;
        assert!(result.is_err(), "handshake for {name} must fail");
    }
    // The server is still fine, and the CA saw no order for the unknown names.
    hello(&server, "a.test", &root).await;
    assert_eq!(pebble.orders(), orders, "{}", pebble.log());
    assert_eq!(tls.status().len(), 1);
}

/// A self-signed certificate for `name` with 61 of its 90 days used: renewal is due.
fn nearly_due_certificate(name: &str) -> (String, Vec<u8>) {
    let now = time::OffsetDateTime::now_utc();
    let mut params = rcgen::CertificateParams::new(vec![name.to_owned()]).expect("params");
    params.not_before = now - time::Duration::days(61);
    params.not_after = now + time::Duration::days(29);
    let key = rcgen::KeyPair::generate().expect("key");
    let cert = params.self_signed(&key).expect("certificate");
    (
        format!("{}{}", key.serialize_pem(), cert.pem()),
        cert.pem().into_bytes(),
    )
}

async fn renewal_keeps_serving_the_old_certificate_until_the_new_one_is_deployed(engine: Engine) {
    let pebble = Pebble::start().await;
    let cache = tempfile::tempdir().expect("tempdir");
    let (old_pem, old_root) = nearly_due_certificate("a.test");
    let subdir = cache_subdir(&pebble.directory_url(), cache.path());
    std::fs::create_dir_all(&subdir).expect("mkdir");
    std::fs::write(subdir.join("a.test.pem"), old_pem).expect("plant the old certificate");

    let tls = autotls(engine, &pebble, &["a.test"], cache.path())
        .challenge(Challenge::TlsAlpn01)
        .retry_backoff(Duration::from_millis(200), Duration::from_millis(400));
    let mut events = tls.subscribe();
    // Nothing answers on Pebble's TLS-ALPN-01 port yet, so the first renewals fail.
    let server = serve(&tls, "127.0.0.1:0", None).await;
    // Renewal is due, so the task may already have moved it to Renewing: served either way.
    let state = tls.status()[0].state;
    assert!(
        matches!(state, CertState::Valid | CertState::Renewing),
        "the cached certificate is served at once: {state:?}"
    );
    let deadline = Instant::now() + ISSUE_LIMIT;
    loop {
        let event = tokio::time::timeout_at(deadline.into(), events.recv())
            .await
            .expect("a failed renewal within the bound")
            .expect("events");
        if matches!(event, autotls::CertEvent::Failed { .. }) {
            break;
        }
    }
    // While renewal fails, the old certificate is what clients get.
    hello(&server, "a.test", &old_root).await;

    // Now let Pebble validate: a second listener of the same AutoTls on its TLS-ALPN-01 port.
    let second = serve(&tls, &format!("127.0.0.1:{}", pebble.tls_port()), None).await;
    loop {
        let event = tokio::time::timeout_at(deadline.into(), events.recv())
            .await
            .expect("a renewal within the bound")
            .expect("events");
        if let autotls::CertEvent::Renewed { name, .. } = event {
            assert_eq!(name, "a.test");
            break;
        }
    }
    let root = pebble.issuing_root_pem().await;
    hello(&server, "a.test", &root).await;
    hello(&second, "a.test", &root).await;
    assert!(
        https_get(server.https, "a.test", &old_root, "/")
            .await
            .is_err(),
        "the old certificate is no longer served"
    );
    let status = &tls.status()[0];
    assert_eq!(status.state, CertState::Valid);
    assert!(status.not_after.is_some());
    let cached = std::fs::read_to_string(subdir.join("a.test.pem")).expect("read the cache");
    assert!(cached.contains("PRIVATE KEY") && cached.matches("BEGIN CERTIFICATE").count() >= 1);
    // The renewed file replaced one the test wrote with the default mode: it is private now.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(subdir.join("a.test.pem"))
        .expect("stat the cache file")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "the renewed certificate file is 0600");
}

/// Each test above, once per engine, named `<engine>::<test>`.
macro_rules! for_each_engine {
    ($($test:ident),* $(,)?) => {
        mod instant_acme {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    super::$test(autotls::Engine::InstantAcme).await;
                }
            )*
        }

        #[cfg(feature = "rustls-acme")]
        mod rustls_acme {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    super::$test(autotls::Engine::RustlsAcme).await;
                }
            )*
        }
    };
}

for_each_engine!(
    tls_alpn_01_gets_certificates_for_two_names_and_serves_them,
    http_01_gets_certificates_through_the_http_port_service,
    http_01_is_the_fallback_when_tls_alpn_01_cannot_be_validated,
    a_restart_on_the_same_cache_serves_at_once_and_places_no_order,
    a_name_that_cannot_validate_does_not_keep_the_other_from_being_served,
    unknown_sni_fails_the_handshake_and_places_no_order,
    renewal_keeps_serving_the_old_certificate_until_the_new_one_is_deployed,
);
