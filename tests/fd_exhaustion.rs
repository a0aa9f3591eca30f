//! The accept loops survive running out of file descriptors (EMFILE): the failed accept is
//! logged and retried after a pause, so the loop neither dies nor spins, and serves again once
//! descriptors are free. Covered: `AutoTlsListener::accept` under `axum::serve`, and (with the
//! `serve` feature) `autotls::serve` over `AutoTlsListener` (`accept_tcp`) and over a plain
//! `TcpListener`.
//!
//! The descriptor limit is process-wide, so each test re-runs this binary in a child process
//! and lowers `RLIMIT_NOFILE` there. In the child, on loopback:
//! 1. the server runs in local mode with a 30 s handshake deadline;
//! 2. silent clients connect and are accepted (two descriptors each: ours and the server's),
//!    under a limit that leaves a few descriptors spare;
//! 3. the rest are taken with `/dev/null` placeholders until `open` fails with EMFILE, and
//!    one is given back to a last client: it connects (the kernel queues the connection)
//!    but the server has no descriptor to accept it with, so its accept fails with EMFILE.
//!    (Filling the last slots with client connections instead would race the client's
//!    `socket()` against the server's `accept()` for them.)
//! 4. While out of descriptors for 2 s the process uses little CPU and the accept is retried
//!    about once a second (counted in the crate's error log);
//! 5. every descriptor of ours is closed, and a real client is then served within a bound.

mod support;

use std::fs::File;
#[cfg(feature = "serve")]
use std::future::IntoFuture;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use autotls::AutoTls;
use axum::routing::get;
use axum::Router;
use support::client::wait_for;
use support::local::{local, silent_connections, within, Client};
use support::process::{cpu_time, open_fds, run_test_in_child};
use support::AbortOnDrop;
use tokio::net::TcpStream;

/// Set in the child: which server to run (a [`Mode`] name).
const CHILD_ENV: &str = "AUTOTLS_FD_EXHAUSTION_MODE";
/// Bound for a whole child run (it takes about 4 s).
const CHILD_LIMIT: Duration = Duration::from_secs(60);
/// Silent clients that hold descriptors (two each) when the process runs out.
const SILENT: usize = 40;
/// Descriptors left under the limit once the silent clients are in: taken by placeholders,
/// with any unused numbers below the highest descriptor open at the start (the limit caps
/// descriptor numbers, so it cannot go below that one).
const SPARE: usize = 16;
/// How long the process stays out of descriptors while its CPU time is measured.
const EXHAUSTED_FOR: Duration = Duration::from_secs(2);
/// What the process may spend of each second out of descriptors (a spinning loop: all of it).
const CPU_SHARE_BOUND: f64 = 0.5;
/// From freeing the descriptors to a real client's response: the 1 s pause, then one
/// handshake and one request on loopback.
const RECOVERY_BOUND: Duration = Duration::from_secs(5);
/// The crate's log message for a failed accept.
const ACCEPT_FAILED: &str = "accepting a connection failed";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    /// `axum::serve` over `AutoTlsListener` (`accept`).
    Axum,
    /// `autotls::serve` over `AutoTlsListener` (`accept_tcp`).
    #[cfg(feature = "serve")]
    ServeTls,
    /// `autotls::serve` over a plain `TcpListener`.
    #[cfg(feature = "serve")]
    ServeHttp,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Axum => "axum",
            #[cfg(feature = "serve")]
            Mode::ServeTls => "serve-tls",
            #[cfg(feature = "serve")]
            Mode::ServeHttp => "serve-http",
        }
    }
}

#[test]
fn axum_serve_survives_running_out_of_file_descriptors() {
    parent_or_child(
        "axum_serve_survives_running_out_of_file_descriptors",
        Mode::Axum,
    );
}

#[cfg(feature = "serve")]
#[test]
fn autotls_serve_survives_running_out_of_file_descriptors() {
    parent_or_child(
        "autotls_serve_survives_running_out_of_file_descriptors",
        Mode::ServeTls,
    );
}

#[cfg(feature = "serve")]
#[test]
fn autotls_serve_on_a_tcp_listener_survives_running_out_of_file_descriptors() {
    parent_or_child(
        "autotls_serve_on_a_tcp_listener_survives_running_out_of_file_descriptors",
        Mode::ServeHttp,
    );
}

fn parent_or_child(test_name: &str, mode: Mode) {
    match std::env::var(CHILD_ENV) {
        Ok(name) => {
            assert_eq!(name, mode.name(), "the child runs the mode it was given");
            child(mode);
        }
        Err(_) => {
            let output = run_test_in_child(
                test_name,
                &[(CHILD_ENV, mode.name().as_ref())],
                None,
                CHILD_LIMIT,
            );
            // The child's own report, for `--nocapture` runs of the parent.
            println!("{}", output.stdout);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The child.

fn child(mode: Mode) {
    init_logging();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime");
    runtime.block_on(exhaust_and_recover(mode));
}

async fn exhaust_and_recover(mode: Mode) {
    let tls = local().handshake_timeout(Duration::from_secs(30));
    let (addr, server) = start_server(mode, &tls).await;

    // 2. A limit with room for the silent clients and a few spare descriptors.
    let (open, highest) = open_fds();
    let base = open.max(highest as usize + 1);
    let limit = base + 2 * SILENT + SPARE;
    set_fd_limit(limit);
    println!("{open} descriptors open (highest {highest}); limit now {limit}");
    let silent = silent_connections(addr, SILENT).await;
    wait_for(
        "the server to accept every silent client",
        Duration::from_secs(5),
        || (open_fds().0 >= open + 2 * SILENT).then_some(()),
    )
    .await;

    // 3. Every descriptor taken, then one given to a client the server cannot accept.
    let mut placeholders = Vec::new();
    loop {
        match File::open("/dev/null") {
            Ok(file) => placeholders.push(file),
            Err(err) if err.raw_os_error() == Some(libc::EMFILE) => break,
            Err(err) => panic!("opening a placeholder: {err}"),
        }
        assert!(
            placeholders.len() <= limit,
            "the limit of {limit} descriptors does not hold"
        );
    }
    println!(
        "out of descriptors after {} placeholders",
        placeholders.len()
    );
    assert!(
        !placeholders.is_empty(),
        "something else took the spare descriptors"
    );
    assert_eq!(
        TcpStream::connect(addr)
            .await
            .map(drop)
            .err()
            .map(|e| e.raw_os_error()),
        Some(Some(libc::EMFILE)),
        "no descriptor is left for a client either"
    );
    drop(placeholders.pop());
    let unaccepted = within(
        Duration::from_secs(2),
        "connecting the last client",
        TcpStream::connect(addr),
    )
    .await
    .expect("the last client connects (the kernel queues it)");
    let failures = wait_for(
        "the server's accept to fail with EMFILE",
        Duration::from_secs(3),
        || {
            let failures = accept_failures();
            (!failures.is_empty()).then_some(failures)
        },
    )
    .await;
    assert!(
        failures.iter().all(|f| f.contains("os error 24")),
        "the accept fails for want of descriptors (EMFILE): {failures:?}"
    );

    // 4. Out of descriptors: no spinning, one retry about every second.
    let cpu_before = cpu_time();
    let failures_before = accept_failures().len();
    let started = Instant::now();
    tokio::time::sleep(EXHAUSTED_FOR).await;
    let cpu = cpu_time().saturating_sub(cpu_before);
    let elapsed = started.elapsed();
    let retries = accept_failures().len() - failures_before;
    println!("out of descriptors for {elapsed:?}: {cpu:?} of CPU, {retries} failed accepts");
    assert!(
        cpu.as_secs_f64() < CPU_SHARE_BOUND * elapsed.as_secs_f64(),
        "the process used {cpu:?} of CPU in {elapsed:?} out of descriptors: the accept loop spins"
    );
    assert!(
        (1..=4).contains(&retries),
        "{retries} failed accepts in {elapsed:?}: the loop should retry about once a second"
    );
    assert!(
        !server.0.is_finished(),
        "the server stopped when it ran out of descriptors"
    );

    // 5. Descriptors free again: a real client is served.
    drop(placeholders);
    drop(silent);
    drop(unaccepted);
    let freed = Instant::now();
    within(
        RECOVERY_BOUND,
        "serving a real client after the descriptors are freed",
        real_client(mode, addr),
    )
    .await;
    println!(
        "a real client was served {:?} after the descriptors were freed",
        freed.elapsed()
    );
    assert!(!server.0.is_finished(), "the server is still running");
    drop(tls);
}

/// The server of `mode` on `127.0.0.1:0` with a hello-world app.
async fn start_server(mode: Mode, tls: &AutoTls) -> (SocketAddr, AbortOnDrop<()>) {
    let app = Router::new().route("/", get(|| async { "Hello world" }));
    match mode {
        Mode::Axum => {
            let listener = tls.bind("127.0.0.1:0").await.expect("bind in local mode");
            let addr = listener.local_addr().expect("local addr");
            let task = tokio::spawn(async move {
                axum::serve(listener, app).await.expect("axum::serve");
            });
            (addr, AbortOnDrop(task))
        }
        #[cfg(feature = "serve")]
        Mode::ServeTls => {
            let listener = tls.bind("127.0.0.1:0").await.expect("bind in local mode");
            let addr = listener.local_addr().expect("local addr");
            let task = tokio::spawn(autotls::serve(listener, app).into_future());
            (addr, AbortOnDrop(task))
        }
        #[cfg(feature = "serve")]
        Mode::ServeHttp => {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind");
            let addr = listener.local_addr().expect("local addr");
            let task = tokio::spawn(autotls::serve(listener, app).into_future());
            (addr, AbortOnDrop(task))
        }
    }
}

/// A real client's `GET /` gets `Hello world`: verified HTTPS, or plain HTTP for `ServeHttp`.
async fn real_client(mode: Mode, addr: SocketAddr) {
    let (status, body) = match mode {
        #[cfg(feature = "serve")]
        Mode::ServeHttp => {
            let res = support::client::http_get(addr, Some("localhost"), "/")
                .await
                .expect("a plain HTTP client is served");
            (res.status(), res.into_body())
        }
        _ => Client::for_server(addr)
            .await
            .get_h1("localhost")
            .await
            .expect("a verified TLS client is served"),
    };
    assert_eq!((status.as_u16(), body.as_str()), (200, "Hello world"));
}

/// Lowers this process's soft `RLIMIT_NOFILE` to `limit` (the hard limit stays).
fn set_fd_limit(limit: usize) {
    let mut rlim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: both calls only read or write the struct they are given.
    unsafe {
        assert_eq!(
            libc::getrlimit(libc::RLIMIT_NOFILE, &mut rlim),
            0,
            "getrlimit: {}",
            std::io::Error::last_os_error()
        );
        assert!(
            limit as libc::rlim_t <= rlim.rlim_max,
            "a limit of {limit} is above the hard limit {}",
            rlim.rlim_max
        );
        rlim.rlim_cur = limit as libc::rlim_t;
        assert_eq!(
            libc::setrlimit(libc::RLIMIT_NOFILE, &rlim),
            0,
            "setrlimit: {}",
            std::io::Error::last_os_error()
        );
    }
}

// ---------------------------------------------------------------------------------------------
// The crate's failed accepts, from its log (no descriptor needed to record them).

static ACCEPT_FAILURES: Mutex<Vec<String>> = Mutex::new(Vec::new());

fn accept_failures() -> Vec<String> {
    ACCEPT_FAILURES
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone()
}

fn init_logging() {
    use tracing_subscriber::prelude::*;
    tracing_subscriber::registry()
        .with(tracing_subscriber::EnvFilter::new("autotls=info"))
        .with(tracing_subscriber::fmt::layer().with_test_writer())
        .with(CaptureAcceptFailures)
        .try_init()
        .expect("the child's only subscriber");
}

struct CaptureAcceptFailures;

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for CaptureAcceptFailures {
    fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        let mut line = String::new();
        event.record(&mut Fields(&mut line));
        if *event.metadata().level() == tracing::Level::ERROR && line.contains(ACCEPT_FAILED) {
            ACCEPT_FAILURES
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(line);
        }
    }
}

/// Every field of an event, as `name=value` (the message as is).
struct Fields<'a>(&'a mut String);

impl tracing::field::Visit for Fields<'_> {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            self.0.push_str(&format!("{value:?} "));
        } else {
            self.0.push_str(&format!("{}={value:?} ", field.name()));
        }
    }
}
