//! The two ACME engines side by side against Pebble on loopback
//! (`cargo bench --bench engines --features rustls-acme`).
//!
//! For each engine ([`Engine::InstantAcme`], [`Engine::RustlsAcme`]), the same `AutoTls`
//! setup, the same TLS-ALPN-01 answers on Pebble's `tlsPort`, the same Pebble process:
//!
//! * **first certificate, cold**: empty cache, new account; `start()` → `CertEvent::Issued`;
//! * **next certificate, warm**: the account exists (same cache), another name;
//! * **requests, connections, TLS handshakes per certificate** (cold), counted by the
//!   counting proxy of `benches/support/proxy.rs` placed between the engine and Pebble;
//! * **issuance with `PEBBLE_WFE_NONCEREJECT=10`** (Pebble rejects 10 % of nonces), on a Pebble
//!   of its own: time to the certificate, orders Pebble created per certificate, failures the
//!   manager saw (each is retried after `retry_backoff(100 ms, 1 s)`).
//!
//! Figures are medians over rounds (`--rounds N`, default 5; `--nonce-rounds N`, default 10).
//! Every round uses a fresh name, so Pebble never reuses an authorization
//! (`PEBBLE_AUTHZREUSE=0` too).

#[path = "../tests/support/mod.rs"]
#[allow(unused_imports)]
mod harness;
#[path = "support/mod.rs"]
mod support;

use support::median;

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use autotls::{AutoTls, CertEvent, Challenge, Engine};
use harness::{Pebble, PebbleOptions};
use support::proxy::{CountingProxy, Seen};

/// Bound for one certificate, retries included.
const ISSUE_LIMIT: Duration = Duration::from_secs(120);

const ENGINES: [Engine; 2] = [Engine::InstantAcme, Engine::RustlsAcme];

fn main() {
    let mut rounds = 5;
    let mut nonce_rounds = 10;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut num = |what: &str| -> usize {
            args.next()
                .and_then(|v| v.parse().ok())
                .filter(|n| *n > 0)
                .unwrap_or_else(|| panic!("{what} needs a positive number"))
        };
        match arg.as_str() {
            "--rounds" => rounds = num("--rounds"),
            "--nonce-rounds" => nonce_rounds = num("--nonce-rounds"),
            // `cargo bench` passes `--bench`; other harness flags mean nothing here.
            _ => {}
        }
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime");
    rt.block_on(async {
        let clean = measure_clean(rounds).await;
        let noisy = measure_nonce_reject(nonce_rounds).await;
        print_table(rounds, nonce_rounds, &clean, &noisy);
    });
}

#[derive(Debug, Default)]
struct Clean {
    cold_ms: Vec<f64>,
    warm_ms: Vec<f64>,
    requests: Vec<f64>,
    connections: Vec<f64>,
    handshakes: Vec<f64>,
    paths: Vec<String>,
}

#[derive(Debug, Default)]
struct Noisy {
    ms: Vec<f64>,
    orders_per_cert: f64,
    failures: usize,
    certificates: usize,
}

/// One Pebble; per round and engine: a cold and a warm issuance direct, then a cold one
/// through the counting proxy.
async fn measure_clean(rounds: usize) -> Vec<(Engine, Clean)> {
    let pebble = Pebble::start().await;
    let dir_url = pebble.directory_url();
    let root = pebble.directory_root_pem();
    let upstream: SocketAddr = dir_url
        .trim_start_matches("https://")
        .trim_end_matches("/dir")
        .parse()
        .expect("Pebble's address");
    let proxy = CountingProxy::start(upstream, &root).await;
    let proxy_dir = format!("{}/dir", proxy.base_url());
    let mut out: Vec<(Engine, Clean)> = ENGINES.iter().map(|e| (*e, Clean::default())).collect();
    for round in 0..rounds {
        // Interleaved, so a slow moment of the machine hits both engines alike.
        for (engine, figures) in &mut out {
            let cache = tempfile::tempdir().expect("a temporary cache");
            let cold = format!("cold{round}.{engine}.test");
            let run = issue(
                *engine,
                &dir_url,
                &root,
                pebble.tls_port(),
                &cold,
                cache.path(),
                false,
            )
            .await;
            figures.cold_ms.push(ms(run.elapsed));
            let warm = format!("warm{round}.{engine}.test");
            let run = issue(
                *engine,
                &dir_url,
                &root,
                pebble.tls_port(),
                &warm,
                cache.path(),
                false,
            )
            .await;
            figures.warm_ms.push(ms(run.elapsed));

            let cache = tempfile::tempdir().expect("a temporary cache");
            let proxied = format!("proxied{round}.{engine}.test");
            proxy.take();
            issue(
                *engine,
                &proxy_dir,
                proxy.root_pem().as_bytes(),
                pebble.tls_port(),
                &proxied,
                cache.path(),
                false,
            )
            .await;
            let seen = proxy.take();
            let count = |f: fn(&Seen) -> bool| seen.iter().filter(|s| f(s)).count() as f64;
            figures
                .requests
                .push(count(|s| matches!(s, Seen::Request { .. })));
            figures
                .connections
                .push(count(|s| matches!(s, Seen::Connection { .. })));
            figures
                .handshakes
                .push(count(|s| matches!(s, Seen::Handshake { .. })));
            if round == 0 {
                figures.paths = seen
                    .iter()
                    .filter_map(|s| match s {
                        Seen::Request { method, path, .. } => Some(format!(
                            "{method} /{}",
                            path.trim_start_matches('/').split('/').next().unwrap_or("")
                        )),
                        _ => None,
                    })
                    .collect();
            }
        }
    }
    out
}

/// A Pebble that rejects 10 % of nonces, one per engine so its order count is the engine's.
async fn measure_nonce_reject(rounds: usize) -> Vec<(Engine, Noisy)> {
    let mut out = Vec::new();
    for engine in ENGINES {
        let pebble = Pebble::start_with(PebbleOptions {
            env: vec![("PEBBLE_WFE_NONCEREJECT".into(), "10".into())],
            ..PebbleOptions::default()
        })
        .await;
        let mut figures = Noisy::default();
        for round in 0..rounds {
            let cache = tempfile::tempdir().expect("a temporary cache");
            let name = format!("nonce{round}.{engine}.test");
            let run = issue(
                engine,
                &pebble.directory_url(),
                &pebble.directory_root_pem(),
                pebble.tls_port(),
                &name,
                cache.path(),
                true,
            )
            .await;
            figures.ms.push(ms(run.elapsed));
            figures.failures += run.failures;
            figures.certificates += 1;
        }
        figures.orders_per_cert = pebble.orders() as f64 / figures.certificates as f64;
        out.push((engine, figures));
    }
    out
}

struct Run {
    elapsed: Duration,
    failures: usize,
}

/// Starts autotls on `engine` for `name`, answering TLS-ALPN-01 on `tls_port`, and returns
/// the time from `start()` to `Issued`. A failure panics unless `retry` (then it is counted
/// and the manager retries after 100 ms).
async fn issue(
    engine: Engine,
    directory: &str,
    root: &[u8],
    tls_port: u16,
    name: &str,
    cache: &Path,
    retry: bool,
) -> Run {
    let tls = AutoTls::new([name])
        .directory(directory)
        .directory_root(root)
        .cache_dir(cache)
        .challenge(Challenge::TlsAlpn01)
        .retry_backoff(Duration::from_millis(100), Duration::from_secs(1))
        .engine(engine);
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
    let mut failures = 0;
    let issued = tokio::time::timeout(ISSUE_LIMIT, async {
        loop {
            match events.recv().await {
                Ok(CertEvent::Issued { .. }) => return t0.elapsed(),
                Ok(CertEvent::Failed { error, .. }) if retry => {
                    failures += 1;
                    eprintln!("{engine}: {name}: failed, retried: {error}");
                }
                Ok(CertEvent::Failed { error, .. }) => panic!("{engine}: {name}: {error}"),
                Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                Err(e) => panic!("events: {e}"),
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{engine}: a certificate for {name} within {ISSUE_LIMIT:?}"));
    accept.abort();
    let _ = accept.await;
    Run {
        elapsed: issued,
        failures,
    }
}

fn print_table(
    rounds: usize,
    nonce_rounds: usize,
    clean: &[(Engine, Clean)],
    noisy: &[(Engine, Noisy)],
) {
    println!();
    println!("## ACME engines side by side (Pebble on loopback, TLS-ALPN-01, PEBBLE_VA_NOSLEEP=1)");
    println!();
    let head: Vec<String> = clean.iter().map(|(e, _)| format!("`{e}`")).collect();
    println!("| figure | {} |", head.join(" | "));
    println!("|---|{}", "---:|".repeat(head.len()));
    let row = |label: &str, f: &dyn Fn(&Clean) -> String| {
        let cells: Vec<String> = clean.iter().map(|(_, c)| f(c)).collect();
        println!("| {label} | {} |", cells.join(" | "));
    };
    row(
        &format!("first certificate, cold (median of {rounds})"),
        &|c| format!("{:.0} ms", median(&c.cold_ms)),
    );
    row("… all rounds", &|c| list(&c.cold_ms));
    row(
        &format!("next certificate, warm account (median of {rounds})"),
        &|c| format!("{:.0} ms", median(&c.warm_ms)),
    );
    row("HTTP requests to the CA per certificate (cold)", &|c| {
        format!("{:.0}", median(&c.requests))
    });
    row("TCP connections to the CA per certificate (cold)", &|c| {
        format!("{:.0}", median(&c.connections))
    });
    row("TLS handshakes with the CA per certificate (cold)", &|c| {
        format!("{:.0}", median(&c.handshakes))
    });
    let cells: Vec<String> = noisy
        .iter()
        .map(|(_, n)| format!("{:.0} ms", median(&n.ms)))
        .collect();
    println!(
        "| PEBBLE_WFE_NONCEREJECT=10: time to a certificate (median of {nonce_rounds}) | {} |",
        cells.join(" | ")
    );
    let cells: Vec<String> = noisy.iter().map(|(_, n)| list(&n.ms)).collect();
    println!("| … all rounds | {} |", cells.join(" | "));
    let cells: Vec<String> = noisy
        .iter()
        .map(|(_, n)| format!("{:.2}", n.orders_per_cert))
        .collect();
    println!("| … orders per certificate | {} |", cells.join(" | "));
    let cells: Vec<String> = noisy
        .iter()
        .map(|(_, n)| format!("{} in {} certificates", n.failures, n.certificates))
        .collect();
    println!("| … failures the manager retried | {} |", cells.join(" | "));
    println!();
    for (engine, c) in clean {
        println!(
            "Requests of one cold issuance, `{engine}`: {}",
            c.paths.join(" → ")
        );
        println!();
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn list(v: &[f64]) -> String {
    v.iter()
        .map(|x| format!("{x:.0}"))
        .collect::<Vec<_>>()
        .join(", ")
}
