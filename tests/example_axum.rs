//! The bundled axum example, end to end: configured only by `AUTOTLS_*`, it gets a
//! certificate from Pebble, serves `Hello world` over verified HTTPS, redirects on the HTTP
//! port, and refuses bad configuration with one line and exit code 2.

mod support;

#[allow(dead_code)]
#[path = "../examples/axum.rs"]
mod example;

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use support::client::{http_get, https_get};
use support::pebble::Pebble;

/// The example binary `cargo test` built next to this test binary.
fn example_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary's path");
    let dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target/<profile>/deps");
    let bin = dir.join("examples").join("axum");
    assert!(
        bin.exists(),
        "{} is missing: run the tests with `cargo test` (it builds the examples)",
        bin.display()
    );
    bin
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_example_gets_a_certificate_from_pebble_and_serves_hello_world() {
    let pebble = Pebble::start().await;
    let cache = tempfile::tempdir().expect("tempdir");
    let ca = cache.path().join("pebble-ca.pem");
    std::fs::write(&ca, pebble.directory_root_pem()).expect("write the directory root");
    let https = format!("127.0.0.1:{}", pebble.tls_port());
    let http = format!("127.0.0.1:{}", pebble.http_port());
    // The only test in this binary that touches the environment.
    for (key, value) in [
        ("AUTOTLS_DOMAINS", "a.test, b.test"),
        ("AUTOTLS_EMAIL", "ops@example.com"),
        (
            "AUTOTLS_CACHE_DIR",
            &cache.path().join("certs").to_string_lossy(),
        ),
        ("AUTOTLS_DIRECTORY", &pebble.directory_url()),
        ("AUTOTLS_DIRECTORY_CA", &ca.to_string_lossy()),
        ("AUTOTLS_HTTP_ADDR", &http),
        ("AUTOTLS_HTTPS_ADDR", &https),
    ] {
        std::env::set_var(key, value);
    }
    let settings = example::settings_from_env().unwrap_or_else(|e| panic!("settings: {e}"));
    let server = tokio::spawn(example::run(settings));
    let root = pebble.issuing_root_pem().await;
    let addr = https.parse().expect("address");
    for name in ["a.test", "b.test"] {
        // A handshake for a name whose first certificate is on its way waits for it; retry
        // only while the server is still binding, within a bound.
        let deadline = Instant::now() + Duration::from_secs(30);
        let reply = loop {
            match https_get(addr, name, &root, "/").await {
                Ok(reply) => break reply,
                Err(e) if Instant::now() < deadline => {
                    eprintln!("not yet: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => panic!("HTTPS for {name}: {e}"),
            }
        };
        assert_eq!(reply.body, "Hello world");
    }
    let redirect = http_get(http.parse().expect("address"), Some("a.test"), "/x?y=1")
        .await
        .expect("HTTP request");
    assert_eq!(redirect.status(), 308);
    assert_eq!(
        redirect.headers()["location"],
        format!("https://a.test:{}/x?y=1", pebble.tls_port()).as_str()
    );
    server.abort();
}

#[test]
fn bad_configuration_prints_one_line_and_exits_with_code_2() {
    let bin = example_binary();
    for (key, value, expected) in [
        ("AUTOTLS_DOMAINS", "*.example.com", "wildcard"),
        ("AUTOTLS_DOMAINS", "1.2.3.4", "IP"),
        ("AUTOTLS_CHALLENGE", "dns-01", "AUTOTLS_CHALLENGE"),
        (
            "AUTOTLS_DIRECTORY",
            "http://insecure.example/dir",
            "https://",
        ),
        (
            "AUTOTLS_DIRECTORY_CA",
            "/nonexistent/ca.pem",
            "AUTOTLS_DIRECTORY_CA",
        ),
        ("AUTOTLS_ENGINE", "certbot", "AUTOTLS_ENGINE"),
        ("AUTOTLS_HTTPS_ADDR", "not an address", "not an address"),
    ] {
        let cache = tempfile::tempdir().expect("tempdir");
        let output = Command::new(&bin)
            .env_clear()
            .env("AUTOTLS_CACHE_DIR", cache.path())
            .env("AUTOTLS_HTTP_ADDR", "127.0.0.1:0")
            .env(key, value)
            .output()
            .expect("run the example");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{key}={value}: {stderr}");
        let lines: Vec<&str> = stderr.lines().collect();
        assert_eq!(lines.len(), 1, "{key}={value}: one line, got {stderr}");
        assert!(lines[0].starts_with("error: "), "{stderr}");
        assert!(lines[0].contains(expected), "{key}={value}: {stderr}");
    }
}
