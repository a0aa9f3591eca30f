//! What automatic HTTPS costs over a static-certificate server, measured side by side in one
//! run on loopback (`bash scripts/bench`, or `cargo bench --bench compare`; BENCHMARKS.md
//! explains every figure).
//!
//! The servers run as child processes of this binary, each serving the same hello-world
//! handler with the same hyper-util server (auto: HTTP/1.1 and HTTP/2) on a multi-thread
//! tokio runtime, with the same crypto provider and the same negotiated ALPN (`h2`,
//! `http/1.1`; autotls also lists `acme-tls/1`, which the load generator never offers):
//!
//! * **floor** — a plain tokio-rustls accept loop with one static certificate, the handshake in
//!   the task that then serves the connection;
//! * **autotls, 1 name** and **autotls, 10,000 names** — `AutoTls` with its listener and the
//!   handler behind its layer, certificates made here with rcgen and loaded through the
//!   crate's normal cache path (`<cache_dir>/<directory slug>/<name>.pem`: key, leaf, CA).
//!   They are valid, so the CA — an unreachable `https://127.0.0.1:1/dir` — is never contacted.
//!   Like the floor, each connection's task runs the handshake and serves the connection
//!   (`AutoTlsListener::accept_tcp` + `Handshaking::finish`, what `autotls::serve` does);
//! * the same two autotls servers through `AutoTlsListener::accept` (the handshake in a task of
//!   the listener's, the finished stream handed to the accept loop, which spawns the serving
//!   task: the path of `axum::serve` and of loops written against `accept`), measured for
//!   handshakes only — on a kept-alive connection the two paths are the same;
//! * a static server with the same 10,000 certificates (rustls's `ResolvesServerCertUsingSni`,
//!   otherwise the floor): what serving that many certificates costs any server, apart from
//!   managing them.
//!
//! The load generator is this process (tokio + rustls). Handshakes are full: client
//! resumption is off, and every connection is checked to be `HandshakeKind::Full`. Each server
//! reports its own CPU time (`getrusage`, all threads) and RSS (`/proc/self/status`), so the
//! CPU figures count only the server's work. Rounds interleave the servers (a different order
//! each round) and each round is cut into 10 slices in which the servers take turns; figures are
//! medians over the rounds, ratios are medians of the per-round ratios to the floor, and the
//! goals are judged on the medians of the per-slice ratios (the servers of a slice run within
//! a fraction of a second of each other, so a burst of other work on the machine spoils one
//! pair rather than a round). Wall-clock rates are noisy on a shared machine; instruction counts are
//! not: under `valgrind --tool=callgrind` each server (one thread) serves a fixed, sequential
//! workload — 200 handshakes, 2,048 HTTP/1.1 and 2,048 HTTP/2 keep-alive requests after a
//! warm-up — and only the measured phases are counted.
//!
//! Then: the layer's pass-through cost in-process (thread CPU time), and the time to a first
//! certificate from Pebble (cold: new account, empty cache), direct and through a counting
//! proxy that gives the per-request breakdown and the connections made to the CA.
//!
//! Options (after `--`): `--rounds N` (9), `--handshakes N` (1000 per round and server),
//! `--requests N` (20000 per round, server and protocol), `--names N` (10000),
//! `--pebble-rounds N` (5), `--no-callgrind`, `--no-pebble`, `--quick`, and `--floor-split`:
//! the floor built the way the listener is (handshake in its own task with a 10 s deadline,
//! the stream handed back to the accept loop), to separate the listener's structure from
//! certificate management.
//!
//! For profiling: `BENCH_SERVER_WRAP='perf record -g -o /tmp/perf.{kind}.data'` runs each
//! server under that command; `BENCH_KEEP_CALLGRIND=<dir>` keeps the callgrind profiles
//! (`callgrind_annotate <dir>/callgrind.one.out.2`); `BENCH_DEBUG_RSS=1` prints each server's
//! RSS after every load.

#[path = "../tests/support/mod.rs"]
#[allow(unused_imports)]
mod harness;
#[path = "support/mod.rs"]
mod support;

use support::median;

use std::convert::Infallible;
use std::future::{ready, Ready};
use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use autotls::{AutoTls, CertEvent, CertState};
use bytes::Bytes;
use http::header::HOST;
use http::{Request, Response, StatusCode, Uri};
use http_body_util::{BodyExt, Empty, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, HandshakeKind};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsConnector;
use tower::{Layer, Service};

/// The directory every benchmark server is configured with: nothing listens there, and with
/// valid cached certificates nothing ever tries.
const UNREACHABLE_CA: &str = "https://127.0.0.1:1/dir";
/// The name the floor and the one-name server serve (also the first of the 10,000).
const FIRST_NAME: &str = "n00000.bench.test";
/// src/cache.rs's directory slug of `UNREACHABLE_CA`.
const SLUG: &str = "127.0.0.1_1_dir";
/// Slices per round: the servers take turns this many times per load and round.
const SLICES: usize = 10;
/// How long a server child may take to start (valgrind makes it slow).
const READY_LIMIT: Duration = Duration::from_secs(300);

fn name(i: usize) -> String {
    format!("n{i:05}.bench.test")
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("serve") {
        server::main(&args[1..]);
    }
    let opts = Options::parse(&args);
    parent(opts);
}

// ---------------------------------------------------------------------------------------------
// Options

#[derive(Debug, Clone)]
struct Options {
    rounds: usize,
    handshakes: usize,
    requests: usize,
    names: usize,
    pebble_rounds: usize,
    /// The floor is built like the listener (see `server::floor`).
    floor_split: bool,
    callgrind: bool,
    pebble: bool,
}

impl Options {
    fn parse(args: &[String]) -> Self {
        let mut o = Options {
            rounds: 9,
            handshakes: 1000,
            requests: 20_000,
            names: 10_000,
            pebble_rounds: 5,
            floor_split: false,
            callgrind: true,
            pebble: true,
        };
        let mut it = args.iter();
        while let Some(arg) = it.next() {
            let mut num = |what: &str| -> usize {
                it.next()
                    .and_then(|v| v.parse().ok())
                    .filter(|n| *n > 0)
                    .unwrap_or_else(|| panic!("{what} needs a positive number"))
            };
            match arg.as_str() {
                "--rounds" => o.rounds = num("--rounds"),
                "--handshakes" => o.handshakes = num("--handshakes"),
                "--requests" => o.requests = num("--requests"),
                "--names" => o.names = num("--names").max(2),
                "--pebble-rounds" => o.pebble_rounds = num("--pebble-rounds"),
                "--no-callgrind" => o.callgrind = false,
                "--floor-split" => o.floor_split = true,
                "--no-pebble" => o.pebble = false,
                "--quick" => {
                    o.rounds = 3;
                    o.handshakes = 300;
                    o.requests = 5000;
                    o.pebble_rounds = 3;
                }
                // `cargo bench` passes `--bench`; criterion-style filters are ignored.
                _ => {}
            }
        }
        o
    }
}

// ---------------------------------------------------------------------------------------------
// The servers (child processes)

/// The hello-world handler every server serves, whatever the request body type.
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
        count(&REQUESTS);
        ready(Ok(Response::new(Full::new(Bytes::from_static(
            b"Hello world",
        )))))
    }
}

/// Requests the hello-world handler answered (in this process).
static REQUESTS: AtomicU64 = AtomicU64::new(0);
/// Set while a callgrind phase waits for a count: only then are counts announced.
static WATCHING: AtomicBool = AtomicBool::new(false);
/// Woken when a count moves while `WATCHING` (no polling timer inside a counted phase).
static COUNTED: tokio::sync::Notify = tokio::sync::Notify::const_new();

fn count(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Release);
    if WATCHING.load(Ordering::Relaxed) {
        COUNTED.notify_waiters();
    }
}

mod server {
    //! `compare serve floor <pem>` / `compare serve autotls <cache_dir> <names>`: prints
    //! `ready <port> <startup µs> <rss kB> <valid names>`, then answers `stats` on stdin with
    //! `stats <cpu µs> <rss kB> <peak kB> <connections served>`, and exits when stdin closes.
    //!
    //! With `--callgrind <hs warm> <hs n> <h1 warm> <h1 n> <h2 warm> <h2 n>` (under
    //! `valgrind --tool=callgrind --collect-atstart=no
    //! --toggle-collect=compare::server::measured_phase
    //! --dump-after=compare::server::measured_phase`) it runs three phases instead, each
    //! printing `warm` after the warm-up count and `done` after the measured count: full
    //! handshakes (connections served), then HTTP/1.1 and HTTP/2 keep-alive requests.

    use super::*;

    /// Connections served to the end (handshake, request, close).
    static SERVED: AtomicU64 = AtomicU64::new(0);

    pub(super) fn main(args: &[String]) -> ! {
        let started = Instant::now();
        let callgrind: Option<Vec<u64>> = args
            .iter()
            .position(|a| a == "--callgrind")
            .map(|i| args[i + 1..i + 7].iter().map(|a| num(a)).collect());
        let rt = match callgrind {
            // One thread: everything the server does runs inside `block_on`, where
            // callgrind's collection is switched on.
            Some(_) => tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build(),
            None => tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build(),
        }
        .expect("a tokio runtime");
        let (port, valid) = rt.block_on(async {
            match args[0].as_str() {
                "floor" => (floor(Path::new(&args[1]), false).await, 1),
                "floor-split" => (floor(Path::new(&args[1]), true).await, 1),
                "floor-many" => floor_many(Path::new(&args[1])).await,
                "autotls" => {
                    let via_accept = args.get(3).is_some_and(|a| a == "accept");
                    autotls(Path::new(&args[1]), num(&args[2]), via_accept).await
                }
                other => panic!("unknown server kind {other}"),
            }
        });
        println!(
            "ready {port} {} {} {valid}",
            started.elapsed().as_micros(),
            status_kb("VmRSS")
        );
        match callgrind {
            Some(counts) => {
                WATCHING.store(true, Ordering::Relaxed);
                let counters: [&'static AtomicU64; 3] = [&SERVED, &REQUESTS, &REQUESTS];
                let mut base = counters[0].load(Ordering::Acquire);
                for (i, counter) in counters.into_iter().enumerate() {
                    let (warm, measured) = (counts[2 * i], counts[2 * i + 1]);
                    rt.block_on(reach(counter, base + warm));
                    println!("warm");
                    measured_phase(&rt, counter, base + warm + measured);
                    // The next phase's base, before the parent hears `done` and goes on.
                    base = counters
                        .get(i + 1)
                        .map_or(0, |next| next.load(Ordering::Acquire));
                    println!("done");
                }
                std::process::exit(0);
            }
            None => {
                // Served by the runtime's worker threads; this thread answers `stats`.
                let _rt = rt;
                control()
            }
        }
    }

    /// The only code callgrind counts (`--toggle-collect=compare::server::measured_phase`).
    #[inline(never)]
    pub(super) fn measured_phase(rt: &tokio::runtime::Runtime, counter: &AtomicU64, target: u64) {
        rt.block_on(reach(counter, target));
    }

    async fn reach(counter: &AtomicU64, target: u64) {
        loop {
            let changed = COUNTED.notified();
            if counter.load(Ordering::Acquire) >= target {
                return;
            }
            changed.await;
        }
    }

    fn num(s: &str) -> u64 {
        s.parse().expect("a number")
    }

    fn control() -> ! {
        let stdin = std::io::stdin();
        let mut line = String::new();
        loop {
            line.clear();
            match stdin.read_line(&mut line) {
                Ok(0) | Err(_) => std::process::exit(0),
                Ok(_) if line.trim() == "stats" => {
                    let (cpu, peak) = rusage();
                    println!(
                        "stats {} {} {peak} {}",
                        cpu.as_micros(),
                        status_kb("VmRSS"),
                        SERVED.load(Ordering::Acquire),
                    );
                }
                Ok(_) => {}
            }
        }
    }

    /// Serves one connection with the shared hyper-util server; counts it when it ends.
    async fn serve<I, S, B>(io: I, svc: S)
    where
        I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
        S: Service<Request<hyper::body::Incoming>, Response = Response<B>> + Clone + Send + 'static,
        S::Future: Send + 'static,
        S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
        B: http_body::Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
            .serve_connection(
                TokioIo::new(io),
                hyper_util::service::TowerToHyperService::new(svc),
            )
            .await;
        count(&SERVED);
    }

    /// The floor: tokio-rustls with one static certificate, handshake in the connection's task.
    ///
    /// With `split` (`--floor-split`), the floor is built the way `AutoTlsListener` is: each
    /// handshake in a task of its own under a 10 s deadline, the finished stream handed back
    /// to the accept loop, which spawns the task that serves it. That isolates what the
    /// listener's structure costs from what certificate management costs.
    async fn floor(pem: &Path, split: bool) -> u16 {
        let pem = std::fs::read(pem).expect("read the floor's certificate");
        let (chain, key) = support::parse_pem(&pem);
        let mut config = rustls::ServerConfig::builder_with_provider(support::provider())
            .with_safe_default_protocol_versions()
            .expect("TLS versions")
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .expect("a usable certificate");
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let tcp = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = tcp.local_addr().expect("address").port();
        if split {
            tokio::spawn(async move {
                let mut handshakes = tokio::task::JoinSet::new();
                loop {
                    tokio::select! {
                        biased;
                        Some(done) = handshakes.join_next(), if !handshakes.is_empty() => {
                            if let Ok(Some(tls)) = done {
                                tokio::spawn(serve(tls, Hello));
                            }
                        }
                        accepted = tcp.accept() => {
                            let Ok((tcp, _)) = accepted else { continue };
                            let _ = tcp.set_nodelay(true);
                            let handshake = acceptor.accept(tcp);
                            handshakes.spawn(async move {
                                let deadline = Duration::from_secs(10);
                                tokio::time::timeout(deadline, handshake)
                                    .await
                                    .ok()
                                    .and_then(Result::ok)
                            });
                        }
                    }
                }
            });
            return port;
        }
        plain_loop(tcp, acceptor);
        port
    }

    /// The floor's accept loop: each connection's task runs the handshake, then serves.
    fn plain_loop(tcp: TcpListener, acceptor: tokio_rustls::TlsAcceptor) {
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = tcp.accept().await else {
                    continue;
                };
                let _ = tcp.set_nodelay(true);
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    if let Ok(tls) = acceptor.accept(tcp).await {
                        serve(tls, Hello).await;
                    }
                });
            }
        });
    }

    /// A static server with every certificate of a cache directory, picked by SNI with
    /// rustls's own `ResolvesServerCertUsingSni`; otherwise the floor.
    async fn floor_many(dir: &Path) -> (u16, usize) {
        let provider = support::provider();
        let mut resolver = rustls::server::ResolvesServerCertUsingSni::new();
        let mut loaded = 0;
        for entry in std::fs::read_dir(dir).expect("the cache directory") {
            let path = entry.expect("a directory entry").path();
            let Some(name) = path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_suffix(".pem"))
            else {
                continue;
            };
            let (chain, key) = support::parse_pem(&std::fs::read(&path).expect("a cache file"));
            let key = provider
                .key_provider
                .load_private_key(key)
                .expect("a usable key");
            resolver
                .add(name, rustls::sign::CertifiedKey::new(chain, key))
                .expect("a certificate for its name");
            loaded += 1;
        }
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("TLS versions")
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(resolver));
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let tcp = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = tcp.local_addr().expect("address").port();
        plain_loop(tcp, acceptor);
        (port, loaded)
    }

    /// autotls as a user runs it: the listener, and the handler behind the layer.
    ///
    /// The connection's task runs the handshake and then serves it (`accept_tcp`, what
    /// `autotls::serve` does), as the floor does; with `via_accept`, the handshake runs in a
    /// task of the listener's and the accept loop spawns the serving task for the finished
    /// stream (`accept`, what `axum::serve` and most custom loops do).
    async fn autotls(cache: &Path, names: u64, via_accept: bool) -> (u16, usize) {
        let names: Vec<String> = (0..names as usize).map(name).collect();
        let tls = AutoTls::new(&names)
            .directory(UNREACHABLE_CA)
            .cache_dir(cache);
        let mut listener = tls.bind("127.0.0.1:0").await.expect("bind autotls");
        let port = listener.local_addr().expect("address").port();
        let valid = tls
            .status()
            .iter()
            .filter(|s| s.state == CertState::Valid)
            .count();
        let app = tls.challenge_layer().layer(Hello);
        if via_accept {
            tokio::spawn(async move {
                loop {
                    let (stream, _) = listener.accept().await;
                    tokio::spawn(serve(stream, app.clone()));
                }
            });
        } else {
            tokio::spawn(async move {
                loop {
                    let (handshaking, _) = listener.accept_tcp().await;
                    let app = app.clone();
                    tokio::spawn(async move {
                        if let Some(stream) = handshaking.finish().await {
                            serve(stream, app).await;
                        }
                    });
                }
            });
        }
        (port, valid)
    }
}

/// This process's CPU time (user + system, all threads) and peak RSS in kB.
fn rusage() -> (Duration, u64) {
    // SAFETY: getrusage writes a `rusage` we own; all-zero is a valid `rusage`.
    let ru = unsafe {
        let mut ru: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut ru);
        ru
    };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    (tv(ru.ru_utime) + tv(ru.ru_stime), ru.ru_maxrss as u64)
}

/// The calling thread's CPU time.
fn thread_cpu() -> Duration {
    // SAFETY: clock_gettime writes a `timespec` we own.
    let ts = unsafe {
        let mut ts: libc::timespec = std::mem::zeroed();
        libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts);
        ts
    };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// A `/proc/self/status` figure in kB (`VmRSS`, `VmHWM`).
fn status_kb(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

// ---------------------------------------------------------------------------------------------
// The parent: fixtures, load generation, figures

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Floor,
    /// autotls, handshake and serving in the connection's task (`accept_tcp`).
    One,
    Many,
    /// The same servers through `AutoTlsListener::accept` (handshake tasks, then the serving
    /// task): measured for handshakes only, where the two paths differ.
    OneAccept,
    ManyAccept,
    /// A static server with the same 10,000 certificates (rustls's
    /// `ResolvesServerCertUsingSni`): what serving that many certificates costs whoever
    /// manages them.
    FloorMany,
}

impl Kind {
    const ALL: [Kind; 6] = [
        Kind::Floor,
        Kind::One,
        Kind::Many,
        Kind::OneAccept,
        Kind::ManyAccept,
        Kind::FloorMany,
    ];
    /// The servers of the main table and of the instruction counts (the first of `ALL`).
    const MAIN: [Kind; 3] = [Kind::Floor, Kind::One, Kind::Many];

    fn measures(self, load: Load) -> bool {
        load == Load::Handshake || !matches!(self, Kind::OneAccept | Kind::ManyAccept)
    }

    fn names(self, names: usize) -> usize {
        match self {
            Kind::Many | Kind::ManyAccept | Kind::FloorMany => names,
            _ => 1,
        }
    }
}

/// The certificates and cache directories, made once per run.
struct Fixtures {
    _dir: tempfile::TempDir,
    ca_pem: String,
    floor_pem: PathBuf,
    one_cache: PathBuf,
    many_cache: PathBuf,
    names: usize,
    made_in: Duration,
    /// The floor has the listener's structure (`--floor-split`).
    floor_split: bool,
}

impl Fixtures {
    fn make(names: usize, floor_split: bool) -> Self {
        let started = Instant::now();
        let dir = tempfile::Builder::new()
            .prefix("autotls-bench-")
            .tempdir()
            .expect("a temporary directory");
        let ca = support::BenchCa::new("autotls bench CA");
        let slug = SLUG;
        let one_cache = dir.path().join("one");
        let many_cache = dir.path().join("many");
        for d in [&one_cache, &many_cache] {
            std::fs::create_dir_all(d.join(slug)).expect("create a cache directory");
        }
        // The first name's file is shared: the floor, one name and 10,000 names serve the
        // very same certificate for it.
        let first = ca.leaf_pem(FIRST_NAME);
        let floor_pem = dir.path().join("floor.pem");
        std::fs::write(&floor_pem, &first).expect("write");
        std::fs::write(
            one_cache.join(slug).join(format!("{FIRST_NAME}.pem")),
            &first,
        )
        .expect("write");
        std::fs::write(
            many_cache.join(slug).join(format!("{FIRST_NAME}.pem")),
            &first,
        )
        .expect("write");
        // rcgen is the slow part: two threads.
        let ca = Arc::new(ca);
        let many = many_cache.join(slug);
        let threads: Vec<_> = (0..2)
            .map(|t| {
                let ca = ca.clone();
                let many = many.clone();
                std::thread::spawn(move || {
                    for i in (1..names).filter(|i| i % 2 == t) {
                        let n = name(i);
                        std::fs::write(many.join(format!("{n}.pem")), ca.leaf_pem(&n))
                            .expect("write a cache file");
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().expect("certificate thread");
        }
        Self {
            ca_pem: ca.pem().to_owned(),
            _dir: dir,
            floor_pem,
            one_cache,
            many_cache,
            names,
            made_in: started.elapsed(),
            floor_split,
        }
    }

    fn server_args(&self, kind: Kind) -> Vec<String> {
        let p = |p: &Path| p.display().to_string();
        match kind {
            Kind::Floor if self.floor_split => {
                vec!["serve".into(), "floor-split".into(), p(&self.floor_pem)]
            }
            Kind::Floor => vec!["serve".into(), "floor".into(), p(&self.floor_pem)],
            Kind::FloorMany => vec![
                "serve".into(),
                "floor-many".into(),
                p(&self.many_cache.join(SLUG)),
            ],
            Kind::One | Kind::OneAccept | Kind::Many | Kind::ManyAccept => {
                let (cache, names) = match kind {
                    Kind::One | Kind::OneAccept => (&self.one_cache, 1),
                    _ => (&self.many_cache, self.names),
                };
                let path = match kind {
                    Kind::OneAccept | Kind::ManyAccept => "accept",
                    _ => "accept_tcp",
                };
                vec![
                    "serve".into(),
                    "autotls".into(),
                    p(cache),
                    names.to_string(),
                    path.into(),
                ]
            }
        }
    }

    fn sni(&self, kind: Kind) -> Vec<String> {
        match kind {
            Kind::Floor | Kind::One | Kind::OneAccept => vec![FIRST_NAME.to_owned()],
            // Every handshake asks for another name: the map lookup misses the CPU caches as
            // it would with real traffic for many sites.
            Kind::Many | Kind::ManyAccept | Kind::FloorMany => (0..self.names).map(name).collect(),
        }
    }
}

/// A server child process and its control pipe.
struct Server {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
    addr: SocketAddr,
    startup: Duration,
    ready_rss_kb: u64,
}

#[derive(Debug, Clone, Copy)]
struct Stats {
    cpu: Duration,
    rss_kb: u64,
    peak_kb: u64,
    served: u64,
}

impl Server {
    fn spawn(mut cmd: Command, expect_valid: usize) -> Server {
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut child = cmd.spawn().expect("start a server child");
        let stdin = child.stdin.take();
        let mut stdout = BufReader::new(child.stdout.take().expect("child stdout"));
        let line = read_line(&mut stdout, READY_LIMIT);
        let f: Vec<&str> = line.split_whitespace().collect();
        assert!(
            f.len() == 5 && f[0] == "ready",
            "the server did not start: {line:?}"
        );
        let valid: usize = f[4].parse().expect("valid names");
        assert_eq!(
            valid, expect_valid,
            "every cached certificate is served at start"
        );
        Server {
            child,
            stdin,
            stdout,
            addr: SocketAddr::from(([127, 0, 0, 1], f[1].parse().expect("port"))),
            startup: Duration::from_micros(f[2].parse().expect("startup")),
            ready_rss_kb: f[3].parse().expect("rss"),
        }
    }

    fn stats(&mut self) -> Stats {
        let stdin = self.stdin.as_mut().expect("server stdin");
        writeln!(stdin, "stats").expect("ask the server");
        stdin.flush().expect("ask the server");
        let line = read_line(&mut self.stdout, Duration::from_secs(30));
        let f: Vec<u64> = line
            .split_whitespace()
            .skip(1)
            .map(|v| v.parse().expect("a stats figure"))
            .collect();
        Stats {
            cpu: Duration::from_micros(f[0]),
            rss_kb: f[1],
            peak_kb: f[2],
            served: f[3],
        }
    }

    /// Stats once the server has closed every connection of a handshake load (the client has
    /// its answer a moment before the server is done).
    fn settled(&mut self, before: &Stats, load: Load, ops: usize) -> Stats {
        let mut after = self.stats();
        if load == Load::Handshake {
            let deadline = Instant::now() + Duration::from_secs(10);
            while after.served - before.served < ops as u64 {
                assert!(Instant::now() < deadline, "every connection was served");
                std::thread::sleep(Duration::from_millis(2));
                after = self.stats();
            }
        }
        after
    }

    fn wait_line(&mut self, want: &str, limit: Duration) {
        let line = read_line(&mut self.stdout, limit);
        assert_eq!(line.trim(), want, "server said {line:?}");
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // Closing stdin ends the child; kill it (by its handle) if it does not go.
        drop(self.stdin.take());
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Reads one line from a child, failing after `limit` (the read runs on a helper thread).
fn read_line(reader: &mut BufReader<ChildStdout>, limit: Duration) -> String {
    std::thread::scope(|s| {
        let (tx, rx) = std::sync::mpsc::channel();
        s.spawn(move || {
            let mut line = String::new();
            let _ = reader.read_line(&mut line);
            let _ = tx.send(line);
        });
        match rx.recv_timeout(limit) {
            Ok(line) if !line.is_empty() => line,
            Ok(_) => panic!("the server child exited"),
            Err(_) => panic!("the server child said nothing for {limit:?}"),
        }
    })
}

/// The command that starts a server child. `BENCH_SERVER_WRAP` (e.g. `perf record -g -o
/// /tmp/perf.{kind}.data`) is put in front of it, for profiling one run.
fn server_command(fx: &Fixtures, kind: Kind) -> Command {
    let exe = std::env::current_exe().expect("this binary");
    let wrap = std::env::var("BENCH_SERVER_WRAP").unwrap_or_default();
    let mut words = wrap
        .split_whitespace()
        .map(|w| w.replace("{kind}", &format!("{kind:?}").to_lowercase()));
    let mut cmd = match words.next() {
        Some(first) => {
            let mut cmd = Command::new(first);
            cmd.args(words).arg(exe);
            cmd
        }
        None => Command::new(exe),
    };
    cmd.args(fx.server_args(kind));
    cmd
}

// --- load generation -------------------------------------------------------------------------

fn client_config(ca_pem: &str, alpn: &[u8]) -> Arc<ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut ca_pem.as_bytes()) {
        roots.add(cert.expect("CA")).expect("add the CA");
    }
    let mut config = ClientConfig::builder_with_provider(support::provider())
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    // A full handshake every time: no tickets, no session IDs (and checked per connection).
    config.resumption = rustls::client::Resumption::disabled();
    config.alpn_protocols = vec![alpn.to_vec()];
    Arc::new(config)
}

async fn connect(
    addr: SocketAddr,
    host: &str,
    connector: &TlsConnector,
) -> Result<tokio_rustls::client::TlsStream<TcpStream>, String> {
    let tcp = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let _ = tcp.set_nodelay(true);
    let name = ServerName::try_from(host.to_owned()).map_err(|e| e.to_string())?;
    let tls = connector
        .connect(name, tcp)
        .await
        .map_err(|e| format!("TLS handshake with {host}: {e}"))?;
    match tls.get_ref().1.handshake_kind() {
        Some(HandshakeKind::Full) => Ok(tls),
        other => Err(format!(
            "a handshake was {other:?}, not full: resumption is not off"
        )),
    }
}

/// New connections, `concurrency` at a time, each: full handshake, one HTTP/1.1 request
/// with `Connection: close`, read to the end. Returns the time taken and the connections made.
async fn handshakes(
    addr: SocketAddr,
    names: Arc<Vec<String>>,
    total: usize,
    concurrency: usize,
    config: Arc<ClientConfig>,
) -> (Duration, usize) {
    let next = Arc::new(AtomicUsize::new(0));
    let connector = TlsConnector::from(config);
    let started = Instant::now();
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..concurrency {
        let (next, names, connector) = (next.clone(), names.clone(), connector.clone());
        workers.spawn(async move {
            let mut done = 0;
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= total {
                    return Ok::<_, String>(done);
                }
                let host = &names[i % names.len()];
                let mut tls = connect(addr, host, &connector).await?;
                let req = format!("GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
                tls.write_all(req.as_bytes())
                    .await
                    .map_err(|e| e.to_string())?;
                let mut buf = Vec::with_capacity(256);
                match tls.read_to_end(&mut buf).await {
                    Ok(_) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {}
                    Err(e) => return Err(format!("reading the response: {e}")),
                }
                if !buf.starts_with(b"HTTP/1.1 200") || !buf.ends_with(b"Hello world") {
                    return Err(format!(
                        "unexpected response: {:?}",
                        String::from_utf8_lossy(&buf)
                    ));
                }
                done += 1;
            }
        });
    }
    let mut made = 0;
    while let Some(done) = workers.join_next().await {
        made += done.expect("a load worker").expect("a handshake");
    }
    (started.elapsed(), made)
}

/// One load against one server.
async fn run_load(
    load: Load,
    addr: SocketAddr,
    sni: Arc<Vec<String>>,
    count: usize,
    hs_config: Arc<ClientConfig>,
    h2_config: Arc<ClientConfig>,
) -> (Duration, usize) {
    match load {
        Load::Handshake => handshakes(addr, sni, count, 8, hs_config).await,
        Load::H1 => keepalive(addr, count, false, 16, 1, hs_config).await,
        Load::H2 => keepalive(addr, count, true, 2, 32, h2_config).await,
    }
}

/// A kept-alive connection (HTTP/1.1) or one stream's handle on one (HTTP/2).
enum Sender {
    H1(hyper::client::conn::http1::SendRequest<Empty<Bytes>>),
    H2(hyper::client::conn::http2::SendRequest<Empty<Bytes>>),
}

/// Opens `conns` connections; with HTTP/2, `streams` senders share each connection.
async fn open(
    addr: SocketAddr,
    h2: bool,
    conns: usize,
    streams: usize,
    config: Arc<ClientConfig>,
) -> Vec<Sender> {
    let connector = TlsConnector::from(config);
    let mut senders = Vec::new();
    for _ in 0..conns {
        let tls = connect(addr, FIRST_NAME, &connector)
            .await
            .expect("connect");
        if h2 {
            assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
            let (sender, conn) =
                hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
                    .await
                    .expect("HTTP/2 handshake");
            tokio::spawn(conn);
            for _ in 0..streams {
                senders.push(Sender::H2(sender.clone()));
            }
        } else {
            let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
                .await
                .expect("HTTP/1.1 handshake");
            tokio::spawn(conn);
            senders.push(Sender::H1(sender));
        }
    }
    senders
}

/// `total` requests spread over the senders, one at a time on each. Returns the senders (for
/// more), the time taken and the requests answered.
async fn drive(senders: Vec<Sender>, total: usize) -> (Vec<Sender>, Duration, usize) {
    let share = total / senders.len();
    let started = Instant::now();
    let mut workers = tokio::task::JoinSet::new();
    for mut sender in senders {
        workers.spawn(async move {
            for _ in 0..share {
                let rsp = match &mut sender {
                    Sender::H1(s) => {
                        let req = Request::get("/")
                            .header(HOST, FIRST_NAME)
                            .body(Empty::<Bytes>::new())
                            .expect("request");
                        s.send_request(req).await
                    }
                    Sender::H2(s) => {
                        let req = Request::get(Uri::from_static("https://n00000.bench.test/"))
                            .body(Empty::<Bytes>::new())
                            .expect("request");
                        s.send_request(req).await
                    }
                }
                .expect("response");
                assert_eq!(rsp.status(), StatusCode::OK);
                rsp.into_body().collect().await.expect("body");
            }
            sender
        });
    }
    let mut back = Vec::new();
    while let Some(done) = workers.join_next().await {
        back.push(done.expect("a load worker"));
    }
    let answered = share * back.len();
    (back, started.elapsed(), answered)
}

/// Keep-alive requests over connections set up before the clock starts.
async fn keepalive(
    addr: SocketAddr,
    total: usize,
    h2: bool,
    conns: usize,
    streams: usize,
    config: Arc<ClientConfig>,
) -> (Duration, usize) {
    let senders = open(addr, h2, conns, streams, config).await;
    let (_, elapsed, answered) = drive(senders, total).await;
    (elapsed, answered)
}

// --- figures ---------------------------------------------------------------------------------

/// One measurement: a rate (per second, wall clock) and the server's CPU per operation.
#[derive(Debug, Clone, Copy, Default)]
struct Measured {
    per_sec: f64,
    cpu_us: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Load {
    Handshake,
    H1,
    H2,
}

/// Per-round results: one value per round for each (load, server).
#[derive(Default)]
struct Rounds {
    data: std::collections::HashMap<(u8, u8), Vec<Measured>>,
    /// Each slice's figures, in the order the slices ran.
    slices: std::collections::HashMap<(u8, u8), Vec<Measured>>,
}

impl Rounds {
    fn push_slice(&mut self, load: Load, kind: Kind, m: Measured) {
        self.slices
            .entry((load as u8, kind as u8))
            .or_default()
            .push(m);
    }

    /// Median over all slices of (kind / base) in the same slice: the most closely paired
    /// comparison (a slice runs the servers one after the other within a few tenths of a
    /// second), so a burst of other work on the machine spoils one pair, not a round.
    fn slice_ratio(&self, load: Load, kind: Kind, base: Kind, f: fn(&Measured) -> f64) -> f64 {
        let key = |k: Kind| (load as u8, k as u8);
        match (self.slices.get(&key(kind)), self.slices.get(&key(base))) {
            (Some(k), Some(b)) => median(
                &k.iter()
                    .zip(b)
                    .map(|(k, b)| f(k) / f(b))
                    .collect::<Vec<_>>(),
            ),
            _ => f64::NAN,
        }
    }

    fn push(&mut self, load: Load, kind: Kind, m: Measured) {
        self.data
            .entry((load as u8, kind as u8))
            .or_default()
            .push(m);
    }

    fn get(&self, load: Load, kind: Kind) -> &[Measured] {
        self.data
            .get(&(load as u8, kind as u8))
            .map_or(&[], Vec::as_slice)
    }

    fn median(&self, load: Load, kind: Kind, f: fn(&Measured) -> f64) -> f64 {
        median(&self.get(load, kind).iter().map(f).collect::<Vec<_>>())
    }

    /// Median over rounds of (kind / floor) in the same round.
    fn ratio(&self, load: Load, kind: Kind, f: fn(&Measured) -> f64) -> f64 {
        self.ratio_to(load, kind, Kind::Floor, f)
    }

    /// Median over rounds of (kind / base) in the same round.
    fn ratio_to(&self, load: Load, kind: Kind, base: Kind, f: fn(&Measured) -> f64) -> f64 {
        let floor = self.get(load, base);
        let other = self.get(load, kind);
        median(
            &floor
                .iter()
                .zip(other)
                .map(|(a, b)| f(b) / f(a))
                .collect::<Vec<_>>(),
        )
    }
}

struct Row {
    figure: String,
    floor: String,
    one: String,
    one_ratio: String,
    many: String,
    many_ratio: String,
    goal: String,
}

fn print_table(rows: &[Row], names: usize) {
    println!(
        "| figure | floor | autotls, 1 name | ratio | autotls, {} names | ratio | goal |",
        thousands(names as f64)
    );
    println!("|---|---:|---:|---:|---:|---:|---|");
    for r in rows {
        println!(
            "| {} | {} | {} | {} | {} | {} | {} |",
            r.figure, r.floor, r.one, r.one_ratio, r.many, r.many_ratio, r.goal
        );
    }
}

fn thousands(v: f64) -> String {
    let s = format!("{:.0}", v);
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn ratio(r: f64) -> String {
    if r.is_nan() {
        "—".into()
    } else {
        format!("{r:.3}×")
    }
}

fn verdict(ok: bool) -> &'static str {
    if ok {
        "met"
    } else {
        "**missed**"
    }
}

// --- the run ---------------------------------------------------------------------------------

fn parent(opts: Options) {
    let run_started = Instant::now();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    machine_header(&opts);

    let fx = Fixtures::make(opts.names, opts.floor_split);
    if opts.floor_split {
        println!(
            "floor: built like the listener (--floor-split): handshake in its own task with a 10 s \
             deadline, the stream handed back to the accept loop, which spawns the serving task"
        );
    }
    println!(
        "fixtures: {} certificates made with rcgen in {:.1} s",
        thousands(opts.names as f64),
        fx.made_in.as_secs_f64()
    );

    let mut servers: Vec<(Kind, Server)> = Kind::ALL
        .iter()
        .map(|&k| {
            (
                k,
                Server::spawn(server_command(&fx, k), k.names(opts.names)),
            )
        })
        .collect();
    let sni: Vec<Arc<Vec<String>>> = Kind::ALL.iter().map(|&k| Arc::new(fx.sni(k))).collect();
    let hs_config = client_config(&fx.ca_pem, b"http/1.1");
    let h2_config = client_config(&fx.ca_pem, b"h2");

    // Warm-up: every server, every load, not counted.
    let debug_rss = std::env::var("BENCH_DEBUG_RSS").is_ok();
    for (i, (kind, server)) in servers.iter_mut().enumerate() {
        let addr = server.addr;
        for load in [Load::Handshake, Load::H1, Load::H2] {
            if !kind.measures(load) {
                continue;
            }
            let count = if load == Load::Handshake { 200 } else { 2000 };
            rt.block_on(run_load(
                load,
                addr,
                sni[i].clone(),
                count,
                hs_config.clone(),
                h2_config.clone(),
            ));
            if debug_rss {
                let st = server.stats();
                eprintln!(
                    "{kind:?} after warm-up {load:?}: RSS {} kB, peak {} kB",
                    st.rss_kb, st.peak_kb
                );
            }
        }
    }

    let mut rounds = Rounds::default();
    for round in 0..opts.rounds {
        for load in [Load::Handshake, Load::H1, Load::H2] {
            // Each round is cut into slices that alternate the servers (in a different order
            // each time), so that a change in what else the machine does hits all three alike.
            let per_slice = match load {
                Load::Handshake => opts.handshakes,
                Load::H1 | Load::H2 => opts.requests,
            } / SLICES;
            // Keep-alive connections are opened (and used once) before the clock starts.
            let mut senders: Vec<Option<Vec<Sender>>> = (0..servers.len())
                .map(|idx| match load {
                    _ if !servers[idx].0.measures(load) => None,
                    Load::Handshake => None,
                    Load::H1 | Load::H2 => {
                        let h2 = load == Load::H2;
                        let (conns, streams, config) = if h2 {
                            (2, 32, h2_config.clone())
                        } else {
                            (16, 1, hs_config.clone())
                        };
                        rt.block_on(async {
                            let open = open(servers[idx].1.addr, h2, conns, streams, config).await;
                            let n = open.len();
                            Some(drive(open, n).await.0)
                        })
                    }
                })
                .collect();
            let mut totals = vec![(Duration::ZERO, Duration::ZERO, 0usize); servers.len()];
            for slice in 0..SLICES {
                for j in 0..servers.len() {
                    let idx = (j + slice + round) % servers.len();
                    if !servers[idx].0.measures(load) {
                        continue;
                    }
                    let before = servers[idx].1.stats();
                    let (elapsed, ops) = match senders[idx].take() {
                        None => rt.block_on(handshakes(
                            servers[idx].1.addr,
                            sni[idx].clone(),
                            per_slice,
                            8,
                            hs_config.clone(),
                        )),
                        Some(open) => {
                            let (open, elapsed, ops) = rt.block_on(drive(open, per_slice));
                            senders[idx] = Some(open);
                            (elapsed, ops)
                        }
                    };
                    let after = servers[idx].1.settled(&before, load, ops);
                    totals[idx].0 += after.cpu - before.cpu;
                    totals[idx].1 += elapsed;
                    totals[idx].2 += ops;
                    rounds.push_slice(
                        load,
                        servers[idx].0,
                        Measured {
                            per_sec: ops as f64 / elapsed.as_secs_f64(),
                            cpu_us: (after.cpu - before.cpu).as_secs_f64() * 1e6
                                / ops.max(1) as f64,
                        },
                    );
                }
            }
            drop(senders);
            for (idx, (cpu, elapsed, ops)) in totals.into_iter().enumerate() {
                if !Kind::ALL[idx].measures(load) {
                    continue;
                }
                rounds.push(
                    load,
                    Kind::ALL[idx],
                    Measured {
                        per_sec: ops as f64 / elapsed.as_secs_f64(),
                        cpu_us: cpu.as_secs_f64() * 1e6 / ops.max(1) as f64,
                    },
                );
            }
        }
        if debug_rss {
            for (kind, server) in servers.iter_mut() {
                let st = server.stats();
                eprintln!(
                    "{kind:?} after round {round}: RSS {} kB, peak {} kB, served {}",
                    st.rss_kb, st.peak_kb, st.served
                );
            }
        }
        eprintln!("round {}/{} done", round + 1, opts.rounds);
    }
    let final_stats: Vec<Stats> = servers.iter_mut().map(|(_, s)| s.stats()).collect();
    let startups: Vec<Duration> = servers.iter().map(|(_, s)| s.startup).collect();
    let ready_rss: Vec<u64> = servers.iter().map(|(_, s)| s.ready_rss_kb).collect();
    drop(servers);

    let callgrind = if opts.callgrind {
        callgrind_counts(&fx, &rt, &sni, &hs_config, &h2_config)
    } else {
        None
    };

    let layer = layer_pass_through();

    // --- the table ---
    println!();
    println!(
        "## Side by side ({} rounds; medians; ratio = median of per-round ratios to the floor)",
        opts.rounds
    );
    println!();
    let mut rows = Vec::new();
    let figure_of = |rows: &mut Vec<Row>,
                     (one, many): (Kind, Kind),
                     label: &str,
                     load: Load,
                     f: fn(&Measured) -> f64,
                     fmt: fn(f64) -> String,
                     goal: &str| {
        rows.push(Row {
            figure: label.into(),
            floor: fmt(rounds.median(load, Kind::Floor, f)),
            one: fmt(rounds.median(load, one, f)),
            one_ratio: ratio(rounds.ratio(load, one, f)),
            many: fmt(rounds.median(load, many, f)),
            many_ratio: ratio(rounds.ratio(load, many, f)),
            goal: goal.into(),
        });
    };
    let figure = |rows: &mut Vec<Row>,
                  label: &str,
                  load: Load,
                  f: fn(&Measured) -> f64,
                  fmt: fn(f64) -> String,
                  goal: &str| {
        figure_of(rows, (Kind::One, Kind::Many), label, load, f, fmt, goal);
    };
    let instructions =
        |rows: &mut Vec<Row>, label: &str, ir: Option<&[f64; 3]>, goal: &str, want_max: f64| {
            let Some(ir) = ir else { return };
            let f = |v: f64| format!("{} k", thousands(v / 1000.0));
            let (one, many) = (ir[1] / ir[0], ir[2] / ir[0]);
            rows.push(Row {
                figure: label.into(),
                floor: f(ir[0]),
                one: f(ir[1]),
                one_ratio: ratio(one),
                many: f(ir[2]),
                many_ratio: ratio(many),
                goal: if goal.is_empty() {
                    String::new()
                } else {
                    format!("{goal}: {}", verdict(one <= want_max && many <= want_max))
                },
            });
        };
    let rate = |v: f64| thousands(v);
    let us = |v: f64| format!("{v:.1} µs");
    let cpu = |m: &Measured| m.cpu_us;
    let per_sec = |m: &Measured| m.per_sec;
    let paired = |kind: Kind| rounds.slice_ratio(Load::Handshake, kind, Kind::Floor, cpu);
    let slices = opts.rounds * SLICES;
    let paired_row = |rows: &mut Vec<Row>, (one, many): (Kind, Kind)| {
        let (r1, rn) = (paired(one), paired(many));
        rows.push(Row {
            figure: format!(
                "… the same, paired per slice (median of {slices} same-slice ratios to the floor)"
            ),
            floor: String::new(),
            one: String::new(),
            one_ratio: ratio(r1),
            many: String::new(),
            many_ratio: ratio(rn),
            goal: format!("≤ 1.03×: {}", verdict(r1 <= 1.03 && rn <= 1.03)),
        });
    };
    figure(
        &mut rows,
        "full TLS handshakes/s (new connection per request; wall clock)",
        Load::Handshake,
        per_sec,
        rate,
        "",
    );
    figure(
        &mut rows,
        "server CPU per handshake (getrusage; ratio per round)",
        Load::Handshake,
        cpu,
        us,
        "",
    );
    paired_row(&mut rows, (Kind::One, Kind::Many));
    instructions(
        &mut rows,
        "server instructions per handshake (callgrind)",
        callgrind.as_ref().map(|c| &c[0]),
        "≤ 1.03×",
        1.03,
    );
    let via_accept = (Kind::OneAccept, Kind::ManyAccept);
    figure_of(
        &mut rows,
        via_accept,
        "… full TLS handshakes/s through `accept()` (the path `axum::serve` takes)",
        Load::Handshake,
        per_sec,
        rate,
        "",
    );
    figure_of(
        &mut rows,
        via_accept,
        "… server CPU per handshake through `accept()` (ratio per round)",
        Load::Handshake,
        cpu,
        us,
        "",
    );
    paired_row(&mut rows, via_accept);
    for (i, (load, label)) in [(Load::H1, "HTTP/1.1"), (Load::H2, "HTTP/2")]
        .into_iter()
        .enumerate()
    {
        let one = rounds.slice_ratio(load, Kind::One, Kind::Floor, per_sec);
        let many = rounds.slice_ratio(load, Kind::Many, Kind::Floor, per_sec);
        figure(
            &mut rows,
            &format!("keep-alive {label} requests/s (wall clock; ratio per round)"),
            load,
            per_sec,
            rate,
            "",
        );
        rows.push(Row {
            figure: format!(
                "… the same, paired per slice (median of {slices} same-slice ratios to the floor)"
            ),
            floor: String::new(),
            one: String::new(),
            one_ratio: ratio(one),
            many: String::new(),
            many_ratio: ratio(many),
            goal: format!("≥ 0.99×: {}", verdict(one >= 0.99 && many >= 0.99)),
        });
        figure(
            &mut rows,
            &format!("server CPU per {label} request (getrusage)"),
            load,
            cpu,
            us,
            "",
        );
        instructions(
            &mut rows,
            &format!("server instructions per {label} request (callgrind)"),
            callgrind.as_ref().map(|c| &c[i + 1]),
            "≤ 1.01× (req/s ≥ 0.99×)",
            1.0101,
        );
    }
    let mib = |kb: u64| format!("{:.1} MiB", kb as f64 / 1024.0);
    rows.push(Row {
        figure: "RSS when ready (certificates loaded, no traffic yet)".into(),
        floor: mib(ready_rss[0]),
        one: mib(ready_rss[1]),
        one_ratio: ratio(ready_rss[1] as f64 / ready_rss[0] as f64),
        many: mib(ready_rss[2]),
        many_ratio: ratio(ready_rss[2] as f64 / ready_rss[0] as f64),
        goal: String::new(),
    });
    rows.push(Row {
        figure: "peak RSS (VmHWM, whole run)".into(),
        floor: mib(final_stats[0].peak_kb),
        one: mib(final_stats[1].peak_kb),
        one_ratio: ratio(final_stats[1].peak_kb as f64 / final_stats[0].peak_kb as f64),
        many: mib(final_stats[2].peak_kb),
        many_ratio: ratio(final_stats[2].peak_kb as f64 / final_stats[0].peak_kb as f64),
        goal: String::new(),
    });
    let per_name_kb = (ready_rss[2] as f64 - ready_rss[1] as f64) / (opts.names as f64 - 1.0);
    let per_name_peak_kb =
        (final_stats[2].peak_kb as f64 - final_stats[1].peak_kb as f64) / (opts.names as f64 - 1.0);
    rows.push(Row {
        figure: "RSS per extra managed name (when ready / at peak)".into(),
        floor: "—".into(),
        one: "—".into(),
        one_ratio: String::new(),
        many: format!("{per_name_kb:.1} / {per_name_peak_kb:.1} KiB"),
        many_ratio: String::new(),
        goal: format!(
            "≤ 8 KB: {}",
            verdict(per_name_kb * 1024.0 <= 8000.0 && per_name_peak_kb * 1024.0 <= 8000.0)
        ),
    });
    rows.push(Row {
        figure: "start to ready (process start → listening, certificates loaded)".into(),
        floor: format!("{:.0} ms", startups[0].as_secs_f64() * 1e3),
        one: format!("{:.0} ms", startups[1].as_secs_f64() * 1e3),
        one_ratio: String::new(),
        many: format!("{:.0} ms", startups[2].as_secs_f64() * 1e3),
        many_ratio: String::new(),
        goal: String::new(),
    });
    print_table(&rows, opts.names);
    println!();
    println!(
        "Every handshake above was checked to be full (rustls `HandshakeKind::Full`, client \
         resumption disabled): {} per server and round, 0 resumed.",
        opts.handshakes
    );

    println!();
    println!(
        "## {} certificates: what serving them costs any server (handshakes, same run)",
        thousands(opts.names as f64)
    );
    println!();
    println!(
        "A static server with the same {} certificates, picked by SNI with rustls's \
         `ResolvesServerCertUsingSni`, served like the floor: the part of the many-name cost \
         that comes from serving many certificates at all (each handshake touches another \
         certificate and key, cold in the CPU caches) rather than from managing them.",
        thousands(opts.names as f64)
    );
    println!();
    println!("| server | full handshakes/s | server CPU per handshake | ratio to the floor (per round / paired per slice) | ratio to the static {}-certificate server (per round / paired per slice) |", thousands(opts.names as f64));
    println!("|---|---:|---:|---:|---:|");
    for (label, kind) in [
        ("floor (1 static certificate)".to_owned(), Kind::Floor),
        (
            format!(
                "static server, {} certificates",
                thousands(opts.names as f64)
            ),
            Kind::FloorMany,
        ),
        (
            format!(
                "autotls, {} names, `accept_tcp`",
                thousands(opts.names as f64)
            ),
            Kind::Many,
        ),
        (
            format!(
                "autotls, {} names, `accept()`",
                thousands(opts.names as f64)
            ),
            Kind::ManyAccept,
        ),
    ] {
        println!(
            "| {label} | {} | {:.1} µs | {} / {} | {} / {} |",
            thousands(rounds.median(Load::Handshake, kind, per_sec)),
            rounds.median(Load::Handshake, kind, cpu),
            ratio(rounds.ratio(Load::Handshake, kind, cpu)),
            ratio(rounds.slice_ratio(Load::Handshake, kind, Kind::Floor, cpu)),
            ratio(rounds.ratio_to(Load::Handshake, kind, Kind::FloorMany, cpu)),
            ratio(rounds.slice_ratio(Load::Handshake, kind, Kind::FloorMany, cpu)),
        );
    }

    println!();
    println!(
        "Keep-alive requests (the connections are made to the first name): server CPU per \
         request and requests/s, paired per slice."
    );
    println!();
    println!(
        "| load | figure | static {n} ÷ floor | autotls {n} ÷ floor | autotls {n} ÷ static {n} |",
        n = thousands(opts.names as f64)
    );
    println!("|---|---|---:|---:|---:|");
    for (load, label) in [(Load::H1, "HTTP/1.1"), (Load::H2, "HTTP/2")] {
        for (figure, f) in [
            ("server CPU per request", cpu as fn(&Measured) -> f64),
            ("requests/s", per_sec as fn(&Measured) -> f64),
        ] {
            println!(
                "| {label} | {figure} | {} | {} | {} |",
                ratio(rounds.slice_ratio(load, Kind::FloorMany, Kind::Floor, f)),
                ratio(rounds.slice_ratio(load, Kind::Many, Kind::Floor, f)),
                ratio(rounds.slice_ratio(load, Kind::Many, Kind::FloorMany, f)),
            );
        }
    }

    println!();
    println!("## The layer alone (in-process, thread CPU time, medians of 9 rounds)");
    println!();
    println!("| figure | value |");
    println!("|---|---:|");
    println!(
        "| bare hello-world service call | {:.1} ns |",
        layer.bare_ns
    );
    println!(
        "| the same call through `AutoTlsLayer` (pass-through) | {:.1} ns |",
        layer.layered_ns
    );
    println!(
        "| a whole keep-alive HTTP/1.1 hello-world request (hyper, in-memory pipe) | {:.2} µs |",
        layer.request_ns / 1000.0
    );
    println!(
        "| the layer's pass-through cost, share of that request | {:.2} % (goal ≤ 1 %: {}) |",
        layer.share * 100.0,
        verdict(layer.share <= 0.01)
    );

    if opts.pebble {
        pebble_section(&rt, opts.pebble_rounds);
    }
    println!();
    println!(
        "bench command took {:.0} s in all",
        run_started.elapsed().as_secs_f64()
    );
}

fn machine_header(opts: &Options) {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .map_or("unknown CPU".to_owned(), |s| s.trim().to_owned());
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    println!("# autotls benchmark: automatic HTTPS vs a static-certificate server");
    println!();
    println!(
        "machine: {cores} cores ({model}), Linux {}, load average at start {}",
        kernel.trim(),
        load.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    );
    println!(
        "crypto provider: {}; {} rounds of {} full handshakes (8 at a time) and {} keep-alive \
         requests per protocol (HTTP/1.1: 16 connections; HTTP/2: 2 connections x 32 streams) per \
         server, each round in {SLICES} slices taken in turns; load generator: this process \
         (tokio + rustls); servers: child processes on a multi-thread tokio runtime",
        if cfg!(feature = "aws-lc-rs") {
            "aws-lc-rs"
        } else {
            "ring"
        },
        opts.rounds,
        opts.handshakes,
        opts.requests
    );
}

// --- callgrind -------------------------------------------------------------------------------

/// Instructions per operation for each server — `[load][server]`, loads in the order
/// handshake, HTTP/1.1 request, HTTP/2 request — counted by callgrind in the server process
/// (one thread) for fixed, sequential work after a warm-up. `None` without valgrind.
fn callgrind_counts(
    fx: &Fixtures,
    rt: &tokio::runtime::Runtime,
    sni: &[Arc<Vec<String>>],
    hs_config: &Arc<ClientConfig>,
    h2_config: &Arc<ClientConfig>,
) -> Option<[[f64; 3]; 3]> {
    const HS_WARM: usize = 20;
    const HS: usize = 200;
    const H1_CONNS: usize = 16;
    const H2_STREAMS: usize = 32;
    const REQUESTS: usize = 2048;
    let has_valgrind = Command::new("valgrind")
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !has_valgrind {
        eprintln!("valgrind is not installed: instruction counts skipped");
        return None;
    }
    let out_dir = tempfile::tempdir().expect("a temporary directory");
    // `BENCH_KEEP_CALLGRIND=<dir>` keeps the profiles, for `callgrind_annotate`.
    let keep = std::env::var_os("BENCH_KEEP_CALLGRIND").map(PathBuf::from);
    let out_dir_path = keep.clone().unwrap_or_else(|| out_dir.path().to_owned());
    let mut counts = [[0.0; 3]; 3];
    for (k, kind) in Kind::MAIN.iter().enumerate() {
        let started = Instant::now();
        let out = out_dir_path.join(format!("callgrind.{kind:?}.out").to_lowercase());
        let mut cmd = Command::new("valgrind");
        cmd.arg("--tool=callgrind")
            .arg("--quiet")
            .arg("--collect-atstart=no")
            .arg("--toggle-collect=compare::server::measured_phase")
            .arg("--dump-after=compare::server::measured_phase")
            .arg(format!("--callgrind-out-file={}", out.display()))
            .arg(std::env::current_exe().expect("this binary"))
            .args(fx.server_args(*kind))
            .arg("--callgrind")
            .args([HS_WARM, HS, H1_CONNS, REQUESTS, H2_STREAMS, REQUESTS].map(|n| n.to_string()));
        let mut server = Server::spawn(cmd, kind.names(fx.names));
        let addr = server.addr;
        let limit = Duration::from_secs(120);
        // Handshakes, one at a time.
        rt.block_on(handshakes(
            addr,
            sni[k].clone(),
            HS_WARM,
            1,
            hs_config.clone(),
        ));
        server.wait_line("warm", limit);
        rt.block_on(handshakes(addr, sni[k].clone(), HS, 1, hs_config.clone()));
        server.wait_line("done", limit);
        // Keep-alive: connections opened and one request per sender in the warm-up.
        for (h2, senders, config) in [(false, H1_CONNS, hs_config), (true, H2_STREAMS, h2_config)] {
            let (conns, streams) = if h2 { (1, senders) } else { (senders, 1) };
            let open = rt.block_on(open(addr, h2, conns, streams, config.clone()));
            let (open, _, _) = rt.block_on(drive(open, senders));
            server.wait_line("warm", limit);
            let (open, _, _) = rt.block_on(drive(open, REQUESTS));
            server.wait_line("done", limit);
            drop(open);
        }
        let _ = server.child.wait();
        drop(server);
        // One dump per measured phase: `<out>.1`, `<out>.2`, `<out>.3`.
        for (load, per) in [HS, REQUESTS, REQUESTS].into_iter().enumerate() {
            let file = format!("{}.{}", out.display(), load + 1);
            let text = std::fs::read_to_string(&file)
                .unwrap_or_else(|e| panic!("callgrind output {file}: {e}"));
            let total: f64 = text
                .lines()
                .find_map(|l| {
                    l.strip_prefix("summary:")
                        .or_else(|| l.strip_prefix("totals:"))
                })
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse().ok())
                .expect("callgrind totals");
            counts[load][k] = total / per as f64;
        }
        eprintln!(
            "callgrind {kind:?}: {:.0} instructions per handshake, {:.0} per HTTP/1.1 and {:.0} per HTTP/2 request ({:.0} s)",
            counts[0][k],
            counts[1][k],
            counts[2][k],
            started.elapsed().as_secs_f64()
        );
    }
    Some(counts)
}

// --- the layer in-process --------------------------------------------------------------------

struct LayerFigures {
    bare_ns: f64,
    layered_ns: f64,
    request_ns: f64,
    share: f64,
}

fn layer_pass_through() -> LayerFigures {
    use std::future::Future;
    use std::pin::pin;
    use std::task::Waker;

    fn call<S, B>(svc: &mut S) -> Response<B>
    where
        S: Service<Request<Full<Bytes>>, Response = Response<B>>,
        S::Error: std::fmt::Debug,
    {
        let mut req = Request::new(Full::new(Bytes::new()));
        *req.uri_mut() = Uri::from_static("/");
        req.headers_mut()
            .insert(HOST, http::HeaderValue::from_static(FIRST_NAME));
        let mut fut = pin!(svc.call(req));
        match fut.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
            Poll::Ready(out) => out.expect("an answer"),
            Poll::Pending => panic!("the service answers at once"),
        }
    }
    fn per_call<S, B>(svc: &mut S, n: u32) -> f64
    where
        S: Service<Request<Full<Bytes>>, Response = Response<B>>,
        S::Error: std::fmt::Debug,
    {
        let start = thread_cpu();
        for _ in 0..n {
            std::hint::black_box(call(svc));
        }
        (thread_cpu() - start).as_secs_f64() * 1e9 / f64::from(n)
    }

    let tls = AutoTls::new([FIRST_NAME]);
    let mut bare = Hello;
    let mut layered = tls.challenge_layer().layer(Hello);
    let (mut b, mut l, mut r, mut share) = (vec![], vec![], vec![], vec![]);
    // A whole request through hyper on one current-thread runtime, client and server.
    let local = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    let mut sender = local.block_on(async {
        let (client, server) = tokio::io::duplex(64 * 1024);
        let svc = hyper_util::service::TowerToHyperService::new(Hello);
        tokio::spawn(
            hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(server), svc),
        );
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(client))
            .await
            .expect("client handshake");
        tokio::spawn(conn);
        sender
    });
    for _ in 0..9 {
        let n = 1_000_000;
        let bare_ns = per_call(&mut bare, n);
        let layered_ns = per_call(&mut layered, n);
        let requests = 20_000u32;
        let start = thread_cpu();
        local.block_on(async {
            for _ in 0..requests {
                let req = Request::get("/")
                    .header(HOST, FIRST_NAME)
                    .body(Empty::<Bytes>::new())
                    .expect("request");
                let rsp = sender.send_request(req).await.expect("response");
                rsp.into_body().collect().await.expect("body");
            }
        });
        let request_ns = (thread_cpu() - start).as_secs_f64() * 1e9 / f64::from(requests);
        b.push(bare_ns);
        l.push(layered_ns);
        r.push(request_ns);
        share.push((layered_ns - bare_ns).max(0.0) / request_ns);
    }
    LayerFigures {
        bare_ns: median(&b),
        layered_ns: median(&l),
        request_ns: median(&r),
        share: median(&share),
    }
}

// --- time to a first certificate from Pebble -------------------------------------------------

/// Where one issuance's time went, from the proxy's log (ms since `start()`).
#[derive(Debug, Default, Clone)]
struct Issuance {
    total_ms: f64,
    phases: Vec<(&'static str, f64)>,
    requests: usize,
    connections: usize,
    handshakes: usize,
    resumed: usize,
    paths: Vec<String>,
}

/// Phases in order, by the path of the request that ends each: Pebble's paths.
fn phase_of(method: &str, path: &str, finalized: bool) -> &'static str {
    match path {
        "/dir" => "directory",
        p if p.starts_with("/nonce") => "account (nonce + new account)",
        p if p.starts_with("/sign-me-up") || p.starts_with("/my-account") => {
            "account (nonce + new account)"
        }
        p if p.starts_with("/order-plz") => "new order",
        p if p.starts_with("/authZ") => "authorization",
        p if p.starts_with("/chalZ") => "challenge ready",
        p if p.starts_with("/my-order") && !finalized => "validation (order polling)",
        p if p.starts_with("/finalize-order") => "finalize",
        p if p.starts_with("/my-order") => "issuance (order polling)",
        p if p.starts_with("/certZ") => "download",
        _ => {
            let _ = method;
            "other"
        }
    }
}

fn pebble_section(rt: &tokio::runtime::Runtime, rounds: usize) {
    println!();
    println!(
        "## Time to a first certificate from Pebble (cold: empty cache, new account; \
         PEBBLE_VA_NOSLEEP=1; TLS-ALPN-01; medians of {rounds})"
    );
    println!();
    let has_pebble = Command::new("pebble")
        .arg("-version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok();
    if !has_pebble {
        println!("Pebble is not installed (`apt-get install pebble`): skipped.");
        return;
    }
    rt.block_on(async {
        let pebble = harness::Pebble::start().await;
        let dir_url = pebble.directory_url();
        let upstream: SocketAddr = dir_url
            .trim_start_matches("https://")
            .trim_end_matches("/dir")
            .parse()
            .expect("Pebble's address");
        let root = pebble.directory_root_pem();
        // Direct: nothing between the crate and Pebble.
        let mut direct = Vec::new();
        for i in 0..rounds {
            let name = format!("direct{i}.first.test");
            let t = first_certificate(&dir_url, &root, pebble.tls_port(), &name).await;
            direct.push(t.as_secs_f64() * 1e3);
        }
        // Through the counting proxy, for the breakdown and the counts.
        let proxy = support::proxy::CountingProxy::start(upstream, &root).await;
        let proxy_dir = format!("{}/dir", proxy.base_url());
        let mut issuances = Vec::new();
        for i in 0..rounds {
            let name = format!("proxied{i}.first.test");
            proxy.take();
            let t0 = Instant::now();
            let t = first_certificate(
                &proxy_dir,
                proxy.root_pem().as_bytes(),
                pebble.tls_port(),
                &name,
            )
            .await;
            issuances.push(breakdown(t0, t, proxy.take()));
        }
        let med_direct = median(&direct);
        let med_proxied = median(&issuances.iter().map(|i| i.total_ms).collect::<Vec<_>>());
        println!("| figure | median | rounds |");
        println!("|---|---:|---|");
        println!(
            "| time to a first certificate, direct (start() → `CertEvent::Issued`) | {med_direct:.0} ms | {} |",
            direct
                .iter()
                .map(|v| format!("{v:.0}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
        println!(
            "| the same through the counting proxy | {med_proxied:.0} ms | {} |",
            issuances
                .iter()
                .map(|v| format!("{:.0}", v.total_ms))
                .collect::<Vec<_>>()
                .join(", ")
        );
        let names: Vec<&'static str> = issuances
            .first()
            .map(|i| i.phases.iter().map(|(n, _)| *n).collect())
            .unwrap_or_default();
        for phase in names {
            let v: Vec<f64> = issuances
                .iter()
                .filter_map(|i| i.phases.iter().find(|(n, _)| *n == phase).map(|p| p.1))
                .collect();
            println!(
                "| … {phase} | {:.1} ms | {} |",
                median(&v),
                v.iter()
                    .map(|x| format!("{x:.1}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        let med = |f: fn(&Issuance) -> usize| median(&issuances.iter().map(|i| f(i) as f64).collect::<Vec<_>>());
        println!(
            "| HTTP requests to the CA per certificate | {:.0} | |",
            med(|i| i.requests)
        );
        println!(
            "| TCP connections to the CA per certificate | {:.0} | goal ≤ 1: {} |",
            med(|i| i.connections),
            verdict(issuances.iter().all(|i| i.connections <= 1))
        );
        println!(
            "| TLS handshakes with the CA per certificate (resumed) | {:.0} ({:.0}) | |",
            med(|i| i.handshakes),
            med(|i| i.resumed)
        );
        println!(
            "| first certificate ≤ 300 ms (direct) | {} | |",
            verdict(med_direct <= 300.0)
        );
        if let Some(first) = issuances.first() {
            println!();
            println!("Requests of one issuance, in order: {}", first.paths.join(" → "));
        }
        drop(proxy);
        drop(pebble);
    });
}

/// Starts autotls for `name` against `directory`, answering TLS-ALPN-01 on `tls_port`, and
/// returns the time from `start()` to the `Issued` event.
async fn first_certificate(directory: &str, root: &[u8], tls_port: u16, name: &str) -> Duration {
    let cache = tempfile::tempdir().expect("a temporary cache");
    let tls = AutoTls::new([name])
        .directory(directory)
        .directory_root(root)
        .cache_dir(cache.path());
    let mut events = tls.subscribe();
    let t0 = Instant::now();
    let mut listener = tls
        .bind(format!("127.0.0.1:{tls_port}"))
        .await
        .expect("bind Pebble's tlsPort");
    let accept = tokio::spawn(async move {
        loop {
            drop(listener.accept().await);
        }
    });
    let issued = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            match events.recv().await {
                Ok(CertEvent::Issued { .. }) => return t0.elapsed(),
                Ok(CertEvent::Failed { error, .. }) => panic!("issuance failed: {error}"),
                Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                Err(e) => panic!("events: {e}"),
            }
        }
    })
    .await
    .expect("a certificate within 30 s");
    accept.abort();
    let _ = accept.await;
    drop(tls);
    issued
}

fn breakdown(t0: Instant, total: Duration, seen: Vec<support::proxy::Seen>) -> Issuance {
    use support::proxy::Seen;
    let ms = |t: Instant| t.saturating_duration_since(t0).as_secs_f64() * 1e3;
    let mut out = Issuance {
        total_ms: total.as_secs_f64() * 1e3,
        ..Issuance::default()
    };
    let mut requests: Vec<(Instant, Instant, String, String)> = Vec::new();
    for s in seen {
        match s {
            Seen::Connection { .. } => out.connections += 1,
            Seen::Handshake { resumed, .. } => {
                out.handshakes += 1;
                out.resumed += usize::from(resumed);
            }
            Seen::Request {
                start,
                end,
                method,
                path,
                ..
            } => requests.push((start, end, method, path)),
        }
    }
    requests.sort_by_key(|r| r.0);
    out.requests = requests.len();
    // Each phase lasts from the end of the previous one to the end of its last request.
    let mut finalized = false;
    let mut last_end = 0.0;
    let first_start = requests.first().map_or(0.0, |r| ms(r.0));
    out.phases
        .push(("setup (start() → first request)", first_start));
    last_end = f64::max(last_end, first_start);
    for (_, end, method, path) in &requests {
        if path.starts_with("/finalize-order") {
            finalized = true;
        }
        let phase = phase_of(method, path, finalized && !path.starts_with("/finalize"));
        let end = ms(*end);
        match out.phases.last_mut() {
            Some((p, d)) if *p == phase => *d += end - last_end,
            _ => out.phases.push((phase, end - last_end)),
        }
        last_end = end;
        let short = path
            .trim_start_matches('/')
            .split('/')
            .next()
            .unwrap_or("")
            .to_owned();
        out.paths.push(format!("{method} /{short}"));
    }
    out.phases.push((
        "deploy (last answer → Issued: cache write, deploy)",
        out.total_ms - last_end,
    ));
    out
}
