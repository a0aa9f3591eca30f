//! What the hyper and warp example tests share (`#[path = "example_support/mod.rs"]`): the
//! `AUTOTLS_*` settings for a Pebble, the HTTPS check through the example's real server, and
//! the built example binary, run and stopped by its PID.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::support::client::{http_get, https_get, HttpsReply};
use crate::support::pebble::Pebble;

/// Bound for a first certificate from Pebble and the first verified request.
pub const ISSUE_LIMIT: Duration = Duration::from_secs(30);
/// Bound for the example binary to start, and to stop after SIGTERM.
pub const PROCESS_LIMIT: Duration = Duration::from_secs(20);

/// A loopback port that was free a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
        .port()
}

/// The `AUTOTLS_*` environment that points an example at `pebble` for `a.test`, caching in
/// `cache`, with `challenge` pinned, HTTPS on `https` and HTTP on `http`.
pub fn pebble_env(
    pebble: &Pebble,
    cache: &Path,
    challenge: &str,
    https: SocketAddr,
    http: SocketAddr,
) -> HashMap<String, String> {
    let ca = cache.join("pebble-ca.pem");
    std::fs::write(&ca, pebble.directory_root_pem()).expect("write the directory root");
    [
        ("AUTOTLS_DOMAINS", "a.test".to_owned()),
        ("AUTOTLS_EMAIL", "ops@example.com".to_owned()),
        (
            "AUTOTLS_CACHE_DIR",
            cache.join("certs").to_string_lossy().into_owned(),
        ),
        ("AUTOTLS_DIRECTORY", pebble.directory_url()),
        ("AUTOTLS_DIRECTORY_CA", ca.to_string_lossy().into_owned()),
        ("AUTOTLS_CHALLENGE", challenge.to_owned()),
        ("AUTOTLS_HTTPS_ADDR", https.to_string()),
        ("AUTOTLS_HTTP_ADDR", http.to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect()
}

/// `GET path` for `a.test` at `https`, verified against `root`, retried only while the
/// example is still starting or its first certificate is on its way, within [`ISSUE_LIMIT`].
pub async fn https_get_when_served(https: SocketAddr, root: &[u8], path: &str) -> HttpsReply {
    let deadline = Instant::now() + ISSUE_LIMIT;
    loop {
        match https_get(https, "a.test", root, path).await {
            Ok(reply) => return reply,
            Err(e) if Instant::now() < deadline => {
                eprintln!("not yet: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("verified HTTPS request for a.test{path}: {e}"),
        }
    }
}

/// What every framework's example must do once it runs against Pebble: `Hello world` and the
/// connection facts over verified HTTPS, the redirect on the HTTP port, one order for one name.
pub async fn assert_example_serves(pebble: &Pebble, https: SocketAddr, http: SocketAddr) {
    let root = pebble.issuing_root_pem().await;
    let hello = https_get_when_served(https, &root, "/").await;
    assert_eq!(hello.status, 200);
    assert_eq!(hello.body, "Hello world");

    let info = https_get_when_served(https, &root, "/info").await;
    assert_eq!(info.status, 200, "{}", info.body);
    assert!(
        info.body.starts_with("peer: 127.0.0.1:"),
        "the peer address: {}",
        info.body
    );
    assert!(info.body.contains("\nsni: a.test\n"), "{}", info.body);
    assert!(info.body.contains("\nalpn: h2\n"), "{}", info.body);

    let redirect = http_get(http, Some("a.test"), "/x?y=1")
        .await
        .expect("HTTP request");
    assert_eq!(redirect.status(), 308);
    assert_eq!(
        redirect.headers()["location"],
        format!("https://a.test:{}/x?y=1", https.port()).as_str()
    );
    assert_eq!(
        pebble.orders(),
        1,
        "one order for one name, no fallback:\n{}",
        pebble.log()
    );
}

/// The example binary `cargo test` built next to this test binary.
pub fn example_binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary's path");
    let dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target/<profile>/deps");
    let bin = dir.join("examples").join(name);
    assert!(
        bin.exists(),
        "{} is missing: run the tests with `cargo test --features serve` (it builds the examples)",
        bin.display()
    );
    bin
}

/// The example binary with only `env` in its environment (plus `RUST_LOG=warn`).
pub fn example_command(name: &str, env: &[(&str, &str)]) -> Command {
    let mut command = Command::new(example_binary(name));
    command
        .env_clear()
        .env("RUST_LOG", "warn")
        .envs(env.iter().copied());
    command
}

/// A child process we started; killed by its PID and reaped on drop.
pub struct Running(pub Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `name` in local mode on free loopback ports, waits for its startup line, and returns
/// it with its HTTPS port.
pub fn start_local(name: &str, cache: &Path) -> (Running, u16) {
    let mut child = Running(
        example_command(
            name,
            &[
                ("AUTOTLS_CACHE_DIR", &cache.to_string_lossy()),
                ("AUTOTLS_HTTPS_ADDR", "127.0.0.1:0"),
                ("AUTOTLS_HTTP_ADDR", "127.0.0.1:0"),
            ],
        )
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start the example"),
    );
    let stdout = child.0.stdout.take().expect("piped stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + PROCESS_LIMIT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = rx
            .recv_timeout(left)
            .unwrap_or_else(|e| panic!("no startup line from the {name} example: {e}"));
        if let Some(port) = line
            .split("https://localhost:")
            .nth(1)
            .and_then(|rest| rest.trim_end_matches('/').parse::<u16>().ok())
        {
            return (child, port);
        }
    }
}

/// Sends SIGTERM (what `docker stop` sends) to `child` by its PID and waits, within
/// [`PROCESS_LIMIT`], for it to exit.
pub fn terminate(child: &mut Running) -> ExitStatus {
    let pid = child.0.id().to_string();
    let status = Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -TERM {pid} failed");
    let deadline = Instant::now() + PROCESS_LIMIT;
    loop {
        if let Some(status) = child.0.try_wait().expect("poll the example") {
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "the example did not exit within {PROCESS_LIMIT:?} of SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Starts `name` in local mode, checks that it listens, sends SIGTERM and checks exit code 0.
pub fn assert_sigterm_exits_0(name: &str) {
    let cache = tempfile::tempdir().expect("tempdir");
    let (mut child, port) = start_local(name, cache.path());
    std::net::TcpStream::connect(("127.0.0.1", port)).expect("the example listens");
    let status = terminate(&mut child);
    assert_eq!(status.code(), Some(0), "{status}");
}

/// Runs `name` with a bad setting and checks the one-line error and exit code 2.
pub fn assert_bad_configuration_exits_2(name: &str) {
    for (key, value, expected) in [
        ("AUTOTLS_DOMAINS", "*.example.com", "wildcard"),
        ("AUTOTLS_CHALLENGE", "dns-01", "AUTOTLS_CHALLENGE"),
        ("AUTOTLS_ENGINE", "certbot", "AUTOTLS_ENGINE"),
        ("AUTOTLS_HTTPS_ADDR", "not an address", "not an address"),
    ] {
        let cache = tempfile::tempdir().expect("tempdir");
        let output = example_command(
            name,
            &[
                ("AUTOTLS_CACHE_DIR", &cache.path().to_string_lossy()),
                ("AUTOTLS_HTTP_ADDR", "127.0.0.1:0"),
                (key, value),
            ],
        )
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
