//! A failing CA: Pebble behind a fault-injecting proxy (`support::proxy`) that refuses or
//! drops connections, answers 429 and 503 with `Retry-After`, loses answers and answers
//! slowly; Pebble rejecting half the nonces; a corrupt account key; renewal failing while a
//! short-lived certificate runs out. Schedules are measured at the proxy, with a fast retry
//! schedule (200 ms doubling to 800 ms) so the file runs in seconds. Loopback only.
//!
//! The proofs of the account gate (one account attempt per retry step for all names) run on
//! the rustls-acme engine too, as `rustls_acme::<test>` (feature `rustls-acme`).

mod support;

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, Once};
use std::time::{Duration, Instant, SystemTime};

use autotls::{AutoTls, CertEvent, CertState, Challenge, Engine};
use axum::routing::get;
use axum::Router;
use support::cache_subdir;
use support::client::{http_get, https_get, wait_for};
use support::pebble::{Pebble, PebbleOptions};
use support::proxy::{Fault, FaultProxy, Mode, RetryAfter};
use tokio::net::TcpListener;
use tokio::sync::broadcast;
use tokio::task::JoinHandle;

/// The retry schedule under test: 200 ms, 400 ms, 800 ms, 800 ms, ...
const FIRST: Duration = Duration::from_millis(200);
const CAP: Duration = Duration::from_millis(800);
/// What an attempt may add to its wait: scheduling on a busy 2-core machine, and the
/// requests an attempt makes before the one that is counted.
const SLACK: Duration = Duration::from_millis(400);
/// Bound for certificates to arrive once the CA works.
const ISSUE_LIMIT: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------------------------------
// Log capture: every event of the crate, as one line, so tests can count what was logged.

static LOGS: Mutex<Vec<String>> = Mutex::new(Vec::new());

fn init_logging() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        use tracing_subscriber::prelude::*;
        let _ = tracing_subscriber::registry()
            .with(tracing_subscriber::EnvFilter::new("autotls=debug"))
            .with(tracing_subscriber::fmt::layer().with_test_writer())
            .with(Capture)
            .try_init();
    });
}

struct Capture;

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Capture {
    fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        let mut line = format!("{} ", event.metadata().level());
        event.record(&mut Fields(&mut line));
        LOGS.lock().unwrap_or_else(|p| p.into_inner()).push(line);
    }
}

struct Fields<'a>(&'a mut String);

impl tracing::field::Visit for Fields<'_> {
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        if field.name() == "message" {
            self.0.push_str(value);
        } else {
            self.0.push_str(&format!(" {}={value}", field.name()));
        }
    }

    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn fmt::Debug) {
        if field.name() == "message" {
            self.0.push_str(&format!("{value:?}"));
        } else {
            self.0.push_str(&format!(" {}={value:?}", field.name()));
        }
    }
}

/// Captured log lines that contain every one of `parts`.
fn logged(parts: &[&str]) -> Vec<String> {
    LOGS.lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
        .filter(|line| parts.iter().all(|p| line.contains(p)))
        .cloned()
        .collect()
}

// ---------------------------------------------------------------------------------------
// The server under test.

/// An `AutoTls` for `names` that talks to Pebble through `proxy`, on the fast schedule.
fn autotls(proxy: &FaultProxy, names: &[&str], cache: &Path) -> AutoTls {
    init_logging();
    AutoTls::try_new(names)
        .expect("test names are valid")
        .contact("mailto:test@example.com")
        .directory(proxy.directory_url())
        .directory_root(proxy.ca_pem())
        .cache_dir(cache)
        .challenge(Challenge::TlsAlpn01)
        .retry_backoff(FIRST, CAP)
}

/// The hello-world app on the HTTPS listener (and the redirect service on an HTTP port).
struct Server {
    https: SocketAddr,
    http: Option<SocketAddr>,
    tasks: Vec<JoinHandle<()>>,
}

impl Server {
    /// Stops serving and waits until the listening sockets are closed (so the port can be
    /// bound again).
    async fn stop(mut self) {
        for task in self.tasks.drain(..) {
            task.abort();
            let _ = task.await;
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

async fn serve(tls: &AutoTls, https_addr: &str, with_http: bool) -> Server {
    let mut tasks = Vec::new();
    let mut http = None;
    if with_http {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("HTTP port");
        http = Some(listener.local_addr().expect("local addr"));
        let redirect = tls.http_redirect();
        tasks.push(tokio::spawn(async move {
            let _ = axum::serve(listener, redirect).await;
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
    Server { https, http, tasks }
}

/// Pebble's TLS-ALPN-01 port, where the server under test must listen to be validated.
fn validation_addr(pebble: &Pebble) -> String {
    format!("127.0.0.1:{}", pebble.tls_port())
}

async fn wait_valid(tls: &AutoTls, limit: Duration) {
    wait_for("every name to be served", limit, || {
        tls.status()
            .iter()
            .all(|s| s.state == CertState::Valid)
            .then_some(())
    })
    .await;
}

/// A verified request for `name`; returns the served leaf certificate.
async fn hello(server: &Server, name: &str, root: &[u8]) -> Vec<u8> {
    let reply = https_get(server.https, name, root, "/")
        .await
        .unwrap_or_else(|e| panic!("verified HTTPS request to {name} failed: {e}"));
    assert_eq!(reply.status, 200);
    assert_eq!(reply.body, "Hello world");
    reply.leaf_der
}

/// The wait after the `failures`th failure in a row, before jitter.
fn step(failures: u32) -> Duration {
    FIRST
        .saturating_mul(1 << failures.saturating_sub(1).min(20))
        .min(CAP)
}

/// Checks that consecutive attempts (one per entry) follow the retry schedule: after the
/// k-th failure the next attempt comes no sooner than 0.9 × step(k) and no later than
/// 1.1 × step(k) plus [`SLACK`].
fn assert_schedule(attempts: &[SystemTime], what: &str, context: &str) {
    for (k, pair) in attempts.windows(2).enumerate() {
        let gap = pair[1].duration_since(pair[0]).unwrap_or_default();
        let base = step(k as u32 + 1);
        let low = base.mul_f64(0.9).saturating_sub(Duration::from_millis(1));
        let high = base.mul_f64(1.1) + SLACK;
        assert!(
            gap >= low && gap <= high,
            "{what}: attempt {} came {gap:?} after attempt {}, the schedule says {base:?} ± 10 %\n{context}",
            k + 2,
            k + 1,
        );
    }
}

fn since(t: SystemTime, start: SystemTime) -> Duration {
    t.duration_since(start).unwrap_or_default()
}

/// Events received so far.
fn drain(events: &mut broadcast::Receiver<CertEvent>) -> Vec<CertEvent> {
    let mut out = Vec::new();
    while let Ok(event) = events.try_recv() {
        out.push(event);
    }
    out
}

// ---------------------------------------------------------------------------------------
// The proxy itself.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fault_proxy_keeps_every_acme_request_on_the_proxy_by_preserving_host() {
    let pebble = Pebble::start().await;
    let proxy = FaultProxy::start(&pebble).await;
    let directory = https_get(proxy.addr(), "127.0.0.1", &proxy.ca_pem(), "/dir")
        .await
        .expect("the directory through the proxy");
    let proxy_base = format!("https://{}/", proxy.addr());
    let pebble_base = pebble.directory_url().replace("/dir", "/");
    assert!(
        directory.body.contains(&proxy_base) && !directory.body.contains(&pebble_base),
        "Pebble's URLs name the proxy: {}",
        directory.body
    );

    let cache = tempfile::tempdir().expect("tempdir");
    let tls = autotls(&proxy, &["proxied.test"], cache.path());
    let server = serve(&tls, &validation_addr(&pebble), false).await;
    wait_valid(&tls, ISSUE_LIMIT).await;
    hello(&server, "proxied.test", &pebble.issuing_root_pem().await).await;
    // Every step of the ACME flow went through the proxy, with the proxy's Host.
    for path in [
        "/dir",
        "/nonce-plz",
        "/sign-me-up",
        "/order-plz",
        "/authZ/",
        "/chalZ/",
        "/my-order/",
        "/finalize-order/",
        "/certZ/",
    ] {
        assert!(
            !proxy.requests_to(path).is_empty(),
            "no {path} request at the proxy:\n{}",
            proxy.report()
        );
    }
    let host = proxy.addr().to_string();
    assert!(
        proxy.requests().iter().all(|r| r.host == host),
        "{}",
        proxy.report()
    );
    assert_eq!(pebble.orders(), 1);
}

// ---------------------------------------------------------------------------------------
// Item 11: a corrupt account key.

/// A real P-256 key whose DER is damaged (the base64 stays valid).
fn damaged_p256_key() -> Vec<u8> {
    let pem = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
        .expect("key")
        .serialize_pem();
    let mut lines: Vec<String> = pem.lines().map(str::to_owned).collect();
    lines[1] = "A".repeat(lines[1].len());
    (lines.join("\n") + "\n").into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_account_key_is_moved_aside_and_replaced_by_at_most_one_account_per_retry_step() {
    let pebble = Pebble::start().await;
    let proxy = FaultProxy::start(&pebble).await;
    let p384 = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384)
        .expect("P-384 key")
        .serialize_pem();
    let p256 = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
        .expect("P-256 key")
        .serialize_pem();
    let variants: Vec<(&str, Vec<u8>)> = vec![
        ("garbage", b"this is not a key\n".to_vec()),
        ("empty", Vec::new()),
        ("truncated", p256.as_bytes()[..p256.len() / 2].to_vec()),
        ("damaged DER", damaged_p256_key()),
        ("a P-384 key", p384.into_bytes()),
    ];
    let started = Instant::now();
    for (i, (what, bytes)) in variants.iter().enumerate() {
        let names = [
            format!("k{i}-a.test"),
            format!("k{i}-b.test"),
            format!("k{i}-c.test"),
        ];
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        let cache = tempfile::tempdir().expect("tempdir");
        let subdir = cache_subdir(&proxy.directory_url(), cache.path());
        std::fs::create_dir_all(&subdir).expect("mkdir");
        let key_file = subdir.join("account-key.pem");
        std::fs::write(&key_file, bytes).expect("plant the corrupt key");
        let accounts = pebble.accounts();
        let orders = pebble.orders();

        let tls = autotls(&proxy, &names, cache.path());
        let server = serve(&tls, &validation_addr(&pebble), false).await;
        wait_valid(&tls, ISSUE_LIMIT).await;
        server.stop().await;
        drop(tls);

        assert_eq!(
            pebble.accounts(),
            accounts + 1,
            "{what}: one new account for three names:\n{}",
            pebble.log()
        );
        assert_eq!(pebble.orders(), orders + 3, "{what}: one order per name");
        let moved: Vec<PathBuf> = std::fs::read_dir(&subdir)
            .expect("read the cache")
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| {
                p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with("account-key.pem.corrupt-"))
            })
            .collect();
        assert_eq!(moved.len(), 1, "{what}: the corrupt key is moved aside");
        assert_eq!(
            &std::fs::read(&moved[0]).expect("read the moved key"),
            bytes,
            "{what}: kept as it was"
        );
        let new_key = std::fs::read_to_string(&key_file).expect("a new key is cached");
        assert!(new_key.contains("BEGIN PRIVATE KEY"), "{what}: {new_key}");
        let errors = logged(&[
            "ERROR",
            "account key is unusable",
            &key_file.display().to_string(),
        ]);
        assert_eq!(
            errors.len(),
            1,
            "{what}: one clear error naming the file: {errors:?}"
        );
    }
    eprintln!(
        "{} corrupt-key variants in {} ms",
        variants.len(),
        started.elapsed().as_millis()
    );

    // Now the CA refuses the registration four times.
    refused_registrations_are_retried_once_per_retry_step(Engine::InstantAcme, &pebble, &proxy)
        .await;
}

/// The CA (behind `proxy`) refuses the registration four times, for three names with a
/// corrupt account key: one attempt per retry step for all three names together, and still
/// exactly one account in the end.
async fn refused_registrations_are_retried_once_per_retry_step(
    engine: Engine,
    pebble: &Pebble,
    proxy: &FaultProxy,
) {
    let cache = tempfile::tempdir().expect("tempdir");
    let subdir = cache_subdir(&proxy.directory_url(), cache.path());
    std::fs::create_dir_all(&subdir).expect("mkdir");
    std::fs::write(subdir.join("account-key.pem"), b"garbage").expect("plant");
    let accounts = pebble.accounts();
    let registrations_before = proxy.requests_to("/sign-me-up").len();
    proxy.inject(
        Fault::Status {
            status: 503,
            retry_after: None,
            problem: true,
        },
        4,
        Some("/sign-me-up"),
    );
    let names = ["reg-a.test", "reg-b.test", "reg-c.test"];
    let tls = autotls(proxy, &names, cache.path()).engine(engine);
    let mut events = tls.subscribe();
    let server = serve(&tls, &validation_addr(pebble), false).await;
    wait_valid(&tls, ISSUE_LIMIT).await;
    // A 200 answers a lookup of the existing account (each rustls-acme order makes one), not
    // a registration.
    let registrations: Vec<SystemTime> = proxy.requests_to("/sign-me-up")[registrations_before..]
        .iter()
        .filter(|r| r.status != Some(200))
        .map(|r| r.at)
        .collect();
    assert_eq!(
        registrations.len(),
        5,
        "{engine:?}: four refused registrations and one that worked, for three names:\n{}",
        proxy.report()
    );
    assert_schedule(&registrations, "account registration", &proxy.report());
    assert_eq!(pebble.accounts(), accounts + 1, "{}", pebble.log());
    let failures = drain(&mut events)
        .into_iter()
        .filter(|e| matches!(e, CertEvent::Failed { .. }))
        .count();
    assert!(
        (4..=12).contains(&failures),
        "{engine:?}: each name records the refused registration: {failures}"
    );
    server.stop().await;
}

// ---------------------------------------------------------------------------------------
// Item 12: the CA unreachable at a cold start.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_ca_at_a_cold_start_is_retried_on_schedule_and_issues_within_a_step_of_its_return(
) {
    unreachable_ca_at_a_cold_start(Engine::InstantAcme).await;
}

/// The CA is unreachable at a cold start for about 3.5 s, then returns: one connection per
/// retry step for both names together, and both certificates within a step of its return.
async fn unreachable_ca_at_a_cold_start(engine: Engine) {
    let pebble = Pebble::start().await;
    let proxy = FaultProxy::start(&pebble).await;
    proxy.set_mode(Mode::Drop);
    let cache = tempfile::tempdir().expect("tempdir");
    let names = ["cold-a.test", "cold-b.test"];
    let tls = autotls(&proxy, &names, cache.path())
        .engine(engine)
        .handshake_timeout(Duration::from_millis(500));
    let server = serve(&tls, &validation_addr(&pebble), true).await;

    // The HTTP port serves.
    let http = server.http.expect("HTTP port");
    let reply = http_get(http, Some("cold-a.test"), "/page")
        .await
        .expect("the HTTP port answers");
    assert_eq!(reply.status(), 308);
    // A handshake for a managed name fails cleanly: no certificate, closed at the deadline.
    let tried = Instant::now();
    let result = https_get(server.https, "cold-a.test", &proxy.ca_pem(), "/").await;
    assert!(result.is_err(), "no certificate yet");
    assert!(
        tried.elapsed() < Duration::from_secs(3),
        "closed at the handshake deadline, took {:?}",
        tried.elapsed()
    );

    // The outage lasts about 3.5 s: attempts at 0, 0.2, 0.6, 1.4, 2.2, 3.0 s.
    tokio::time::sleep(Duration::from_millis(3500)).await;
    let attempts = proxy.connections();
    let report = format!("connections at the proxy: {:?}", {
        let first = attempts.first().copied().unwrap_or(SystemTime::now());
        attempts
            .iter()
            .map(|t| since(*t, first).as_millis())
            .collect::<Vec<_>>()
    });
    assert!(
        (4..=7).contains(&attempts.len()),
        "{engine:?}: one connection per retry step for both names: {report}"
    );
    assert_schedule(&attempts, "connections while the CA is down", &report);
    for status in tls.status() {
        assert_eq!(status.state, CertState::Failing, "{status:?}");
        let error = status.last_error.expect("the error is recorded");
        assert!(
            error.contains(&proxy.directory_url()),
            "the error names the CA: {error}"
        );
        assert!(status.next_attempt.is_some());
    }
    assert!(
        !logged(&["obtaining a certificate failed", "cold-a.test"]).is_empty(),
        "failures are logged"
    );

    proxy.set_mode(Mode::Pass);
    let back = SystemTime::now();
    wait_valid(&tls, ISSUE_LIMIT).await;
    let issued = SystemTime::now();
    let first_request = proxy.requests().first().map(|r| r.at).expect("requests");
    assert!(
        since(first_request, back) <= CAP.mul_f64(1.1) + SLACK,
        "the CA is contacted within one retry step of its return: {:?}",
        since(first_request, back)
    );
    eprintln!(
        "CA back → both certificates in {} ms",
        since(issued, back).as_millis()
    );
    let root = pebble.issuing_root_pem().await;
    for name in names {
        hello(&server, name, &root).await;
    }
    assert_eq!(pebble.accounts(), 1);
    assert_eq!(pebble.orders(), 2);
}

// ---------------------------------------------------------------------------------------
// Item 13: the CA unreachable with a warm cache, over 20 restarts.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_warm_cache_is_served_within_a_second_of_each_of_20_restarts_while_the_ca_is_down() {
    let pebble = Pebble::start().await;
    let proxy = FaultProxy::start(&pebble).await;
    let cache = tempfile::tempdir().expect("tempdir");
    let names = ["warm-a.test", "warm-b.test"];
    {
        let tls = autotls(&proxy, &names, cache.path());
        let server = serve(&tls, &validation_addr(&pebble), false).await;
        wait_valid(&tls, ISSUE_LIMIT).await;
        server.stop().await;
    }
    let root = pebble.issuing_root_pem().await;
    let (orders, accounts) = (pebble.orders(), pebble.accounts());
    proxy.set_mode(Mode::Drop);
    let (connections, requests) = (proxy.connections().len(), proxy.requests().len());

    let mut slowest = Duration::ZERO;
    for restart in 0..20 {
        let started = Instant::now();
        let tls = autotls(&proxy, &names, cache.path());
        let server = serve(&tls, "127.0.0.1:0", false).await;
        for name in names {
            hello(&server, name, &root).await;
        }
        let took = started.elapsed();
        assert!(
            took < Duration::from_secs(1),
            "restart {restart}: served after {took:?}"
        );
        slowest = slowest.max(took);
        server.stop().await;
    }
    // Give a stray attempt time to show.
    tokio::time::sleep(Duration::from_millis(300)).await;
    eprintln!("20 restarts on a warm cache: slowest {slowest:?} to two verified requests");
    assert_eq!(
        proxy.connections().len(),
        connections,
        "the CA was not contacted"
    );
    assert_eq!(proxy.requests().len(), requests);
    assert_eq!(pebble.orders(), orders, "no order");
    assert_eq!(pebble.accounts(), accounts, "no account");
}

// ---------------------------------------------------------------------------------------
// Item 14: 429 and 503 with Retry-After, dropped connections, slow answers, bad nonces.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_in_seconds_holds_for_every_later_request_even_in_the_middle_of_an_order() {
    let pebble = Pebble::start().await;
    let proxy = FaultProxy::start(&pebble).await;
    let rate_limited = Fault::Status {
        status: 429,
        retry_after: Some(RetryAfter::Seconds(1)),
        problem: true,
    };
    let unavailable = Fault::Status {
        status: 503,
        retry_after: Some(RetryAfter::Seconds(1)),
        problem: false,
    };
    let unavailable_problem = Fault::Status {
        status: 503,
        retry_after: Some(RetryAfter::Seconds(1)),
        problem: true,
    };
    proxy.inject(rate_limited.clone(), 1, Some("/dir"));
    // Polling the order: a problem document that is about the request, not the order.
    proxy.inject(unavailable_problem, 1, Some("/my-order/"));
    proxy.inject(rate_limited, 1, Some("/finalize-order/"));
    proxy.inject(unavailable, 1, Some("/certZ/"));
    let cache = tempfile::tempdir().expect("tempdir");
    let tls = autotls(&proxy, &["patient.test"], cache.path());
    let mut events = tls.subscribe();
    let started = Instant::now();
    let server = serve(&tls, &validation_addr(&pebble), false).await;
    wait_valid(&tls, ISSUE_LIMIT).await;
    eprintln!(
        "four Retry-After answers, certificate after {} ms",
        started.elapsed().as_millis()
    );
    hello(&server, "patient.test", &pebble.issuing_root_pem().await).await;

    let faulted = proxy.requests().iter().filter(|r| r.faulted).count();
    assert_eq!(faulted, 4, "{}", proxy.report());
    let violations = proxy.retry_after_violations();
    assert!(
        violations.is_empty(),
        "requests before a Retry-After passed: {violations:#?}\n{}",
        proxy.report()
    );
    let failures: Vec<String> = drain(&mut events)
        .into_iter()
        .filter_map(|e| match e {
            CertEvent::Failed { error, .. } => Some(error),
            _ => None,
        })
        .collect();
    assert_eq!(failures.len(), 4, "{failures:#?}");
    assert!(
        failures.iter().any(|e| e.contains("rateLimited")),
        "the CA's problem is in the error: {failures:#?}"
    );
    assert!(
        failures.iter().any(|e| e.contains("503")),
        "a bare 503 is named as such: {failures:#?}"
    );
    assert!(
        failures.iter().all(|e| !e.contains("could not validate")),
        "a failed poll is the CA failing, not validation: {failures:#?}"
    );
    assert!(proxy.requests().len() < 60, "{}", proxy.report());
    assert_eq!(pebble.accounts(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_as_an_http_date_holds_for_every_name_even_one_in_the_middle_of_an_order() {
    let pebble = Pebble::start().await;
    let proxy = FaultProxy::start(&pebble).await;
    // The first two faults come while the other name waits for the shared account, so no
    // request of either name can be in flight when they are answered: the check is strict.
    proxy.inject(
        Fault::Status {
            status: 503,
            retry_after: Some(RetryAfter::Date(Duration::from_secs(2))),
            problem: false,
        },
        1,
        Some("/dir"),
    );
    proxy.inject(
        Fault::Status {
            status: 429,
            retry_after: Some(RetryAfter::Date(Duration::from_secs(2))),
            problem: true,
        },
        1,
        Some("/sign-me-up"),
    );
    // Then one name's new order is slow (held for a second at the proxy) while the other's is
    // rate-limited: the slow one, whose order the CA did create, must not go on with it
    // before the other's Retry-After has passed.
    proxy.inject(
        Fault::Delay(Duration::from_millis(1000)),
        1,
        Some("/order-plz"),
    );
    proxy.inject(
        Fault::Status {
            status: 429,
            retry_after: Some(RetryAfter::Date(Duration::from_secs(3))),
            problem: true,
        },
        1,
        Some("/order-plz"),
    );
    let cache = tempfile::tempdir().expect("tempdir");
    let names = ["date-a.test", "date-b.test"];
    let tls = autotls(&proxy, &names, cache.path());
    let server = serve(&tls, &validation_addr(&pebble), false).await;
    wait_valid(&tls, ISSUE_LIMIT).await;
    let root = pebble.issuing_root_pem().await;
    for name in names {
        hello(&server, name, &root).await;
    }
    let violations = proxy.retry_after_violations();
    assert!(
        violations.is_empty(),
        "requests before a Retry-After passed: {violations:#?}\n{}",
        proxy.report()
    );
    let waits: Vec<_> = proxy
        .requests()
        .iter()
        .filter_map(|r| r.asked_to_wait())
        .collect();
    assert_eq!(waits.len(), 3, "{}", proxy.report());
    assert_eq!(pebble.accounts(), 1);
    assert_eq!(
        pebble.orders(),
        3,
        "the slow name's first order is abandoned, not continued early"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_connections_lost_answers_and_slow_answers_end_in_certificates_without_a_tight_loop(
) {
    let pebble = Pebble::start().await;
    let proxy = FaultProxy::start(&pebble).await;
    proxy.inject(Fault::Close, 2, None);
    // The CA creates the order, the answer is lost: the next attempt orders again.
    proxy.inject(Fault::CloseAfterForward, 1, Some("/order-plz"));
    proxy.inject(
        Fault::Delay(Duration::from_millis(1500)),
        3,
        Some("/chalZ/"),
    );
    proxy.inject(
        Fault::Delay(Duration::from_millis(1500)),
        2,
        Some("/certZ/"),
    );
    let cache = tempfile::tempdir().expect("tempdir");
    let names = ["rough-a.test", "rough-b.test"];
    let tls = autotls(&proxy, &names, cache.path());
    let started = Instant::now();
    let server = serve(&tls, &validation_addr(&pebble), false).await;
    wait_valid(&tls, ISSUE_LIMIT).await;
    eprintln!(
        "dropped, lost and slow answers: both certificates after {} ms",
        started.elapsed().as_millis()
    );
    let root = pebble.issuing_root_pem().await;
    for name in names {
        hello(&server, name, &root).await;
    }
    let requests = proxy.requests();
    assert!(
        requests.len() <= 80,
        "{} requests:\n{}",
        requests.len(),
        proxy.report()
    );
    let burst = proxy.max_requests_within(Duration::from_secs(1));
    assert!(
        burst <= 40,
        "{burst} requests within a second:\n{}",
        proxy.report()
    );
    assert_eq!(pebble.accounts(), 1);
    assert!(
        (3..=8).contains(&pebble.orders()),
        "the lost order and a few retries, not a loop: {}",
        pebble.orders()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pebble_rejecting_half_the_nonces_still_issues_without_a_tight_loop() {
    let pebble = Pebble::start_with(PebbleOptions {
        env: vec![("PEBBLE_WFE_NONCEREJECT".into(), "50".into())],
        ..PebbleOptions::default()
    })
    .await;
    let proxy = FaultProxy::start(&pebble).await;
    let cache = tempfile::tempdir().expect("tempdir");
    let names = ["nonce-a.test", "nonce-b.test"];
    let tls = autotls(&proxy, &names, cache.path());
    let started = Instant::now();
    let server = serve(&tls, &validation_addr(&pebble), false).await;
    wait_valid(&tls, ISSUE_LIMIT).await;
    eprintln!(
        "half the nonces rejected: both certificates after {} ms, {} requests",
        started.elapsed().as_millis(),
        proxy.requests().len()
    );
    let root = pebble.issuing_root_pem().await;
    for name in names {
        hello(&server, name, &root).await;
    }
    let rejected = proxy
        .requests()
        .iter()
        .filter(|r| r.status == Some(400))
        .count();
    assert!(rejected > 0, "Pebble rejected nonces:\n{}", proxy.report());
    let burst = proxy.max_requests_within(Duration::from_secs(1));
    assert!(
        burst <= 80,
        "{burst} requests within a second:\n{}",
        proxy.report()
    );
    assert!(proxy.requests().len() <= 400, "{}", proxy.report());
    assert_eq!(pebble.accounts(), 1, "{}", pebble.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ca_that_issues_certificates_already_due_for_renewal_is_not_asked_again_in_a_loop() {
    // Pebble with a one-second validity issues certificates whose renewal time has passed
    // by the time they arrive (as a skewed clock would make any certificate look).
    let pebble = Pebble::start_with(PebbleOptions {
        certificate_validity: Some(Duration::from_secs(1)),
        ..PebbleOptions::default()
    })
    .await;
    let proxy = FaultProxy::start(&pebble).await;
    let cache = tempfile::tempdir().expect("tempdir");
    let tls = autotls(&proxy, &["due.test"], cache.path())
        .retry_backoff(Duration::from_secs(1), Duration::from_secs(2));
    let mut events = tls.subscribe();
    let server = serve(&tls, &validation_addr(&pebble), false).await;
    let first = tokio::time::timeout(ISSUE_LIMIT, events.recv())
        .await
        .expect("a first certificate")
        .expect("events");
    assert!(matches!(first, CertEvent::Issued { .. }), "{first:?}");
    let watched = Instant::now();
    tokio::time::sleep(Duration::from_millis(3500)).await;
    let issued = drain(&mut events)
        .into_iter()
        .filter(|e| matches!(e, CertEvent::Renewed { .. }))
        .count();
    // One order per first retry step (1 s) at most: 3 or 4 in 3.5 s, not one per round trip.
    assert!(
        (2..=4).contains(&issued),
        "{issued} renewals in {:?}:\n{}",
        watched.elapsed(),
        proxy.report()
    );
    server.stop().await;
}

// ---------------------------------------------------------------------------------------
// Item 15: renewal failing while a short-lived certificate nears its end.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_renewal_keeps_the_old_certificate_served_to_its_end_and_renews_when_the_ca_returns(
) {
    let pebble = Pebble::start_with(PebbleOptions {
        certificate_validity: Some(Duration::from_secs(5)),
        ..PebbleOptions::default()
    })
    .await;
    let proxy = FaultProxy::start(&pebble).await;
    let cache = tempfile::tempdir().expect("tempdir");
    let name = "short.test";
    let tls = autotls(&proxy, &[name], cache.path());
    let mut events = tls.subscribe();
    let server = serve(&tls, &validation_addr(&pebble), false).await;
    wait_valid(&tls, ISSUE_LIMIT).await;
    let root = pebble.issuing_root_pem().await;
    let old_leaf = hello(&server, name, &root).await;
    let not_after = tls.status()[0].not_after.expect("an expiry");

    // The CA goes away; renewal (due at two thirds of the lifetime) fails from then on.
    proxy.set_mode(Mode::Refuse);
    let mut probes = 0;
    while SystemTime::now() + Duration::from_millis(400) < not_after {
        let leaf = hello(&server, name, &root).await;
        assert_eq!(leaf, old_leaf, "the old certificate is still served");
        probes += 1;
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    assert!(probes >= 5, "probed the old certificate {probes} times");
    // Past its end the CA stays away for more than a retry step (so a renewal fails with the
    // certificate expired), then returns.
    tokio::time::sleep(since(not_after, SystemTime::now()) + CAP.mul_f64(1.1) + SLACK).await;
    let failed_before_return = drain(&mut events)
        .into_iter()
        .filter(|e| matches!(e, CertEvent::Failed { .. }))
        .count();
    assert!(
        failed_before_return >= 3,
        "renewal was tried and failed: {failed_before_return}"
    );
    proxy.set_mode(Mode::Pass);
    let back = Instant::now();
    let deadline = back + ISSUE_LIMIT;
    let mut failed_after_return = 0;
    loop {
        let event = tokio::time::timeout_at(deadline.into(), events.recv())
            .await
            .expect("a renewal once the CA is back")
            .expect("events");
        match event {
            CertEvent::Renewed { name: n, .. } if n == name => break,
            CertEvent::Failed { .. } => failed_after_return += 1,
            _ => {}
        }
    }
    eprintln!(
        "CA back → renewed in {} ms; {failed_before_return} failures while it was away",
        back.elapsed().as_millis()
    );
    let new_leaf = hello(&server, name, &root).await;
    assert_ne!(new_leaf, old_leaf, "the renewed certificate is served");
    assert!(tls.status()[0].not_after.expect("expiry") > not_after);
    let failures = failed_before_return + failed_after_return;
    let logged_failures = logged(&["obtaining a certificate failed", name]).len();
    assert_eq!(
        logged_failures,
        failures,
        "every failure is logged, once: {:#?}",
        logged(&[name])
    );
    assert!(
        !logged(&["ERROR", "has expired", name]).is_empty(),
        "failures after the end say the served certificate has expired"
    );
}

// ---------------------------------------------------------------------------------------
// The account gate on the rustls-acme engine: the same proofs, `rustls_acme::<test>`.

#[cfg(feature = "rustls-acme")]
mod rustls_acme {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_unreachable_ca_at_a_cold_start_is_retried_on_schedule_and_issues_within_a_step_of_its_return(
    ) {
        unreachable_ca_at_a_cold_start(Engine::RustlsAcme).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_refused_registration_is_retried_once_per_retry_step_for_all_names() {
        let pebble = Pebble::start().await;
        let proxy = FaultProxy::start(&pebble).await;
        refused_registrations_are_retried_once_per_retry_step(Engine::RustlsAcme, &pebble, &proxy)
            .await;
    }
}
