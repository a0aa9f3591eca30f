//! Hostile clients against a server with a real certificate from Pebble: stalled and garbage
//! connections, names that are not managed, stray TLS-ALPN-01 handshakes. The server keeps
//! serving real clients, orders nothing it should not, and stays small. Loopback only; every
//! loop is bounded in count and time.

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use autotls::{AutoTls, CertState, Challenge};
use axum::routing::get;
use axum::Router;
use rustls::pki_types::ServerName;
use support::client::{client_config, https_get, wait_for};
use support::pebble::Pebble;
use support::process::cpu_time;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

/// What a real client is allowed for a verified handshake and request.
const REAL_CLIENT_BOUND: Duration = Duration::from_secs(1);

struct Server {
    https: SocketAddr,
    tls: AutoTls,
    root: Vec<u8>,
    task: JoinHandle<()>,
    _cache: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// `a.test` with a certificate from `pebble`, served by axum on Pebble's TLS-ALPN-01 port.
async fn server(pebble: &Pebble, configure: impl FnOnce(AutoTls) -> AutoTls) -> Server {
    let cache = tempfile::tempdir().expect("tempdir");
    let tls = configure(
        AutoTls::new(["a.test"])
            .directory(pebble.directory_url())
            .directory_root(pebble.directory_root_pem())
            .challenge(Challenge::TlsAlpn01)
            .cache_dir(cache.path()),
    );
    let listener = tls
        .bind(format!("127.0.0.1:{}", pebble.tls_port()))
        .await
        .expect("bind");
    let https = listener.local_addr().expect("addr");
    let app = Router::new()
        .route("/", get(|| async { "Hello world" }))
        .layer(tls.clone());
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    wait_for("a certificate for a.test", Duration::from_secs(30), || {
        (tls.status()[0].state == CertState::Valid).then_some(())
    })
    .await;
    let root = pebble.issuing_root_pem().await;
    Server {
        https,
        tls,
        root,
        task,
        _cache: cache,
    }
}

/// A verified `GET /` by a real client, within [`REAL_CLIENT_BOUND`].
async fn real_client(server: &Server) {
    let started = Instant::now();
    let reply = tokio::time::timeout(
        REAL_CLIENT_BOUND,
        https_get(server.https, "a.test", &server.root, "/"),
    )
    .await
    .unwrap_or_else(|_| panic!("no answer within {REAL_CLIENT_BOUND:?}"))
    .unwrap_or_else(|e| panic!("verified request failed: {e}"));
    assert_eq!(reply.body, "Hello world");
    assert!(started.elapsed() <= REAL_CLIENT_BOUND);
}

/// The first flight of a TLS client (the ClientHello records) for `sni` offering `alpn`.
fn client_hello(sni: &str, alpn: &[&[u8]]) -> Vec<u8> {
    let mut config = client_config(&fallback_root(), alpn).expect("client config");
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let name = ServerName::try_from(sni.to_owned()).expect("a name rustls accepts");
    let mut conn = rustls::ClientConnection::new(Arc::new(config), name).expect("client");
    let mut out = Vec::new();
    conn.write_tls(&mut out).expect("write the ClientHello");
    out
}

/// Any valid root, for client configs that never get to verify anything.
fn fallback_root() -> Vec<u8> {
    rcgen::generate_simple_self_signed(vec!["unused.test".to_owned()])
        .expect("cert")
        .cert
        .pem()
        .into_bytes()
}

/// Reads until the peer closes (or `bound` passes); returns how long that took.
async fn until_closed(stream: &mut TcpStream, bound: Duration) -> Option<Duration> {
    let started = Instant::now();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout_at((started + bound).into(), stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return Some(started.elapsed()),
            Ok(Ok(_)) => continue,
            Err(_) => return None,
        }
    }
}

/// This process's resident memory, in KiB.
fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("VmRSS")
}

async fn connect_many(addr: SocketAddr, n: usize, first_bytes: &[u8]) -> Vec<TcpStream> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let mut s = TcpStream::connect(addr).await.expect("connect");
        if !first_bytes.is_empty() {
            s.write_all(first_bytes).await.expect("write");
        }
        out.push(s);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_stalled_connections_do_not_keep_a_real_client_out() {
    let pebble = Pebble::start().await;
    let deadline = Duration::from_secs(3);
    let server = server(&pebble, |t| t.handshake_timeout(deadline)).await;
    let rss_before = rss_kib();
    let hello = client_hello("a.test", &[b"h2"]);
    let silent = connect_many(server.https, 1000, b"").await;
    // 100 that send the first bytes of a ClientHello and stall.
    let partial = connect_many(server.https, 100, &hello[..hello.len() / 2]).await;
    let held_since = Instant::now();
    for _ in 0..5 {
        real_client(&server).await;
    }
    let grown = rss_kib().saturating_sub(rss_before);
    assert!(
        grown < 64 * 1024,
        "memory grew by {grown} KiB with 1,100 stalled connections"
    );

    // Every stalled connection is closed by the handshake deadline (the oldest ones earlier,
    // evicted at the pending-handshake cap of 1,024).
    let bound = deadline + Duration::from_secs(5);
    for (i, mut s) in silent.into_iter().chain(partial).enumerate() {
        let left = bound.saturating_sub(held_since.elapsed());
        assert!(
            until_closed(&mut s, left).await.is_some(),
            "stalled connection {i} still open {:?} after it was made",
            held_since.elapsed()
        );
    }
    real_client(&server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_and_malformed_hellos_cause_no_panic_and_no_busy_loop() {
    let pebble = Pebble::start().await;
    let server = server(&pebble, |t| t.handshake_timeout(Duration::from_secs(2))).await;
    let hello = client_hello("a.test", &[b"h2"]);

    // Random bytes of many sizes, a hello cut short, a hello followed by a close, and a
    // ClientHello that claims 16 MB and sends 256 KB of it.
    let mut probes: Vec<Vec<u8>> = Vec::new();
    for len in [1usize, 5, 6, 100, 4096, 70_000] {
        probes.push(
            (0..len)
                .map(|i| (i as u8).wrapping_mul(151).wrapping_add(7))
                .collect(),
        );
    }
    probes.push(hello[..7].to_vec());
    probes.push(hello.clone());
    let mut oversized = vec![0x16, 0x03, 0x01, 0x40, 0x00, 0x01, 0xff, 0xff, 0xff];
    oversized.extend(std::iter::repeat_n(0x41u8, 256 * 1024));
    probes.push(oversized);
    let cpu_before = cpu_time();
    let mut streams = Vec::new();
    for probe in &probes {
        let mut s = TcpStream::connect(server.https).await.expect("connect");
        // The server may close before everything is written: that is a fine answer.
        let _ = s.write_all(probe).await;
        streams.push(s);
    }
    // A hello followed at once by a close.
    {
        let mut s = TcpStream::connect(server.https).await.expect("connect");
        s.write_all(&hello).await.expect("write");
    }
    real_client(&server).await;
    // Hold the garbage connections open for a second: a server spinning on them would burn
    // a core; a sane one waits for bytes or closes them.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let cpu = cpu_time().saturating_sub(cpu_before);
    assert!(
        cpu < Duration::from_millis(600),
        "the process used {cpu:?} of CPU on garbage"
    );
    for (i, mut s) in streams.into_iter().enumerate() {
        assert!(
            until_closed(&mut s, Duration::from_secs(5)).await.is_some(),
            "garbage connection {i} was not closed by the deadline"
        );
    }

    // A ClientHello split into one-byte TLS records is still a valid handshake.
    let fragmented = one_byte_records(&hello);
    let mut s = TcpStream::connect(server.https).await.expect("connect");
    s.write_all(&fragmented).await.expect("write");
    let mut first = [0u8; 5];
    tokio::time::timeout(Duration::from_secs(2), s.read_exact(&mut first))
        .await
        .expect("an answer to a fragmented ClientHello")
        .expect("read the ServerHello record header");
    assert_eq!(
        first[0], 0x16,
        "a handshake record comes back (ServerHello)"
    );
    real_client(&server).await;
}

/// Re-frames the plaintext handshake records of `flight` into one-byte records.
fn one_byte_records(flight: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut rest = flight;
    while rest.len() >= 5 {
        let len = usize::from(u16::from_be_bytes([rest[3], rest[4]]));
        let (header, body) = rest.split_at(5);
        for byte in &body[..len] {
            out.extend_from_slice(&[header[0], header[1], header[2], 0, 1, *byte]);
        }
        rest = &body[len..];
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_handshakes_for_unknown_names_order_nothing_and_stay_small() {
    let pebble = Pebble::start().await;
    let server = server(&pebble, |t| t).await;
    let orders = pebble.orders();
    let cache_dir = server._cache.path().to_owned();
    let cache_before = snapshot(&cache_dir);
    let rss_before = rss_kib();

    // Hellos for random unmanaged names, IP literals (no SNI), no SNI at all, and raw names
    // rustls would never send: `..`, a trailing dot, upper case, a managed name's suffix.
    let mut hellos: Vec<Vec<u8>> = Vec::new();
    let template = client_hello("sni-placeholder.test", &[b"h2"]);
    for weird in [
        "a..-placeholder.test",
        "sni-placeholdr.test.",
        "SNI-PLACEHOLDER.TEST",
        "xxxxxxxxxxxxx.a.test",
    ] {
        hellos.push(replace_sni(&template, "sni-placeholder.test", weird));
    }
    for i in 0..16 {
        hellos.push(client_hello(
            &format!("r{i}x{}.unknown.test", i * 7919),
            &[b"h2"],
        ));
    }
    hellos.push(client_hello("127.0.0.1", &[b"h2"]));
    hellos.push(client_hello("::1", &[b"http/1.1"]));

    let total = 10_000usize;
    let started = Instant::now();
    let per_task = total / 20;
    let tasks: Vec<_> = (0..20)
        .map(|t| {
            let hellos = hellos.clone();
            let addr = server.https;
            tokio::spawn(async move {
                let mut refused = 0usize;
                for i in 0..per_task {
                    let hello = &hellos[(t * per_task + i) % hellos.len()];
                    let mut s = TcpStream::connect(addr).await.expect("connect");
                    let _ = s.write_all(hello).await;
                    let mut buf = [0u8; 512];
                    // A refused handshake ends with an alert or a close, never a certificate.
                    let mut got = Vec::new();
                    while let Ok(Ok(n)) =
                        tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await
                    {
                        if n == 0 {
                            break;
                        }
                        got.extend_from_slice(&buf[..n]);
                    }
                    // 0x16 would be a ServerHello: the server went on with an unknown name.
                    if got.first() != Some(&0x16) {
                        refused += 1;
                    }
                }
                refused
            })
        })
        .collect();
    let mut refused = 0;
    for task in tasks {
        refused += task.await.expect("client task");
    }
    assert_eq!(
        refused, total,
        "every handshake for an unknown name is refused"
    );
    assert!(started.elapsed() < Duration::from_secs(120));
    real_client(&server).await;
    assert_eq!(pebble.orders(), orders, "no order for any unknown name");
    assert_eq!(
        snapshot(&cache_dir),
        cache_before,
        "the cache was not touched"
    );
    assert_eq!(server.tls.status().len(), 1, "no name was added");
    let grown = rss_kib().saturating_sub(rss_before);
    assert!(
        grown < 32 * 1024,
        "memory grew by {grown} KiB over 10,000 refused handshakes"
    );
}

/// Every file under `dir` with its length and modification time.
fn snapshot(dir: &std::path::Path) -> Vec<(String, u64, std::time::SystemTime)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).expect("read_dir").flatten() {
            let meta = entry.metadata().expect("metadata");
            if meta.is_dir() {
                stack.push(entry.path());
            } else {
                out.push((
                    entry.path().display().to_string(),
                    meta.len(),
                    meta.modified().expect("mtime"),
                ));
            }
        }
    }
    out.sort();
    out
}

/// `hello` with the SNI bytes `from` replaced by `to` (same length).
fn replace_sni(hello: &[u8], from: &str, to: &str) -> Vec<u8> {
    assert_eq!(
        from.len(),
        to.len(),
        "same length keeps every length field right"
    );
    let at = hello
        .windows(from.len())
        .position(|w| w == from.as_bytes())
        .expect("the SNI is in the hello");
    let mut out = hello.to_vec();
    out[at..at + to.len()].copy_from_slice(to.as_bytes());
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stray_acme_tls_handshake_fails_and_validation_certificates_never_reach_clients() {
    let pebble = Pebble::start().await;
    let cache = tempfile::tempdir().expect("tempdir");
    let tls = AutoTls::new(["a.test"])
        .directory(pebble.directory_url())
        .directory_root(pebble.directory_root_pem())
        .challenge(Challenge::TlsAlpn01)
        .cache_dir(cache.path());
    let listener = tls
        .bind(format!("127.0.0.1:{}", pebble.tls_port()))
        .await
        .expect("bind");
    let https = listener.local_addr().expect("addr");
    let app = Router::new().route("/", get(|| async { "Hello world" }));
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    let root = pebble.issuing_root_pem().await;
    // Clients hammer the name while its first order (and its validation certificate) is
    // pending: each one waits for the real certificate, none gets the validation one.
    let clients: Vec<_> = (0..20)
        .map(|_| {
            let root = root.clone();
            tokio::spawn(async move { https_get(https, "a.test", &root, "/").await })
        })
        .collect();
    for client in clients {
        let reply = client
            .await
            .expect("client task")
            .unwrap_or_else(|e| panic!("a client during issuance failed verification: {e}"));
        assert_eq!(reply.body, "Hello world");
    }
    // With nothing pending, an acme-tls/1 handshake is refused.
    let mut config = client_config(&root, &[b"acme-tls/1"]).expect("config");
    config.alpn_protocols = vec![b"acme-tls/1".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = TcpStream::connect(https).await.expect("connect");
    let name = ServerName::try_from("a.test").expect("name");
    let result = tokio::time::timeout(Duration::from_secs(5), connector.connect(name, tcp))
        .await
        .expect("an answer");
    assert!(
        result.is_err(),
        "an acme-tls/1 handshake with no pending challenge must fail"
    );
    task.abort();
}
