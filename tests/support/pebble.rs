//! A real ACME CA for tests: Pebble, with pebble-challtestsrv as its DNS server (every name
//! resolves to 127.0.0.1), both on free loopback ports and both stopped when [`Pebble`] drops.
//!
//! Pebble's own HTTPS certificate (directory and management ports) is generated at start and
//! signed by a throwaway CA: trust [`Pebble::directory_root_pem`] to talk ACME to it. The
//! certificates it issues chain to a different root, [`Pebble::issuing_root_pem`], which Pebble
//! generates anew at every start.

use std::fs::File;
use std::io::ErrorKind;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

use super::client::{http_request, https_get};

const PEBBLE: &str = "pebble";
const CHALLTESTSRV: &str = "pebble-challtestsrv";
/// How long Pebble gets to answer its directory with 200.
const READY_LIMIT: Duration = Duration::from_secs(10);
/// How long one readiness probe of the directory may take.
const PROBE_LIMIT: Duration = Duration::from_secs(1);
/// Attempts with fresh ports when a process dies at start because a port was taken meanwhile.
const START_ATTEMPTS: usize = 3;

/// Options for [`Pebble::start_with`].
#[derive(Debug, Clone, Default)]
pub struct PebbleOptions {
    /// Extra environment for the `pebble` process, applied after (so overriding) the defaults
    /// `PEBBLE_VA_NOSLEEP=1 PEBBLE_WFE_NONCEREJECT=0 PEBBLE_AUTHZREUSE=0`, e.g.
    /// `("PEBBLE_WFE_NONCEREJECT".into(), "50".into())`. `PEBBLE_*` variables of the test's
    /// own environment are not passed on.
    pub env: Vec<(String, String)>,
    /// Validity period of the certificates Pebble issues (its config's
    /// `certificateValidityPeriod`, whole seconds, at least 1). `None`: Pebble's default (5 years).
    pub certificate_validity: Option<Duration>,
}

/// A running Pebble + pebble-challtestsrv pair. Dropping it kills both processes (by the
/// handles of the children it spawned) and removes its temporary directory.
pub struct Pebble {
    pebble: Process,
    challtestsrv: Process,
    ports: Ports,
    root_pem: Vec<u8>,
    // Holds the config, Pebble's certificate and key, and the logs; dropped after the children
    // are killed (fields drop after `Drop::drop`).
    dir: TempDir,
}

#[derive(Debug, Clone, Copy)]
struct Ports {
    listen: u16,
    management: u16,
    http: u16,
    tls: u16,
    dns: u16,
    dns_management: u16,
}

impl Pebble {
    /// Starts pebble-challtestsrv (DNS only, every name -> 127.0.0.1) and Pebble on free
    /// loopback ports, and waits until Pebble's directory answers.
    ///
    /// Panics when Pebble is not installed, or does not come up within 10 s (with its log).
    pub async fn start() -> Pebble {
        Self::start_with(PebbleOptions::default()).await
    }

    /// [`Pebble::start`] with options.
    pub async fn start_with(opts: PebbleOptions) -> Pebble {
        let mut attempt = 1;
        loop {
            let mut pebble = Self::spawn(&opts);
            match pebble.wait_ready().await {
                Ok(()) => return pebble,
                Err(Exited(why)) if attempt < START_ATTEMPTS && pebble.port_clash() => {
                    eprintln!("Pebble start attempt {attempt} failed ({why}); retrying on new ports");
                    attempt += 1;
                }
                Err(Exited(why)) => panic!(
                    "Pebble did not start: {why}\n--- pebble log ---\n{}\n--- pebble-challtestsrv log ---\n{}",
                    pebble.log(),
                    pebble.challtestsrv_log()
                ),
            }
        }
    }

    /// The ACME directory URL, `https://127.0.0.1:PORT/dir`.
    pub fn directory_url(&self) -> String {
        format!("https://127.0.0.1:{}/dir", self.ports.listen)
    }

    /// PEM of the CA that signed Pebble's own HTTPS certificate (valid for `127.0.0.1` and
    /// `localhost`), i.e. what an ACME client must trust to reach [`Pebble::directory_url`].
    pub fn directory_root_pem(&self) -> Vec<u8> {
        self.root_pem.clone()
    }

    /// A file holding [`Pebble::directory_root_pem`] (for APIs and env vars that take a path).
    pub fn directory_root_path(&self) -> PathBuf {
        self.dir.path().join("directory-root.pem")
    }

    /// Pebble's `httpPort`: where its VA connects (to 127.0.0.1) to validate HTTP-01.
    pub fn http_port(&self) -> u16 {
        self.ports.http
    }

    /// Pebble's `tlsPort`: where its VA connects (to 127.0.0.1) to validate TLS-ALPN-01.
    pub fn tls_port(&self) -> u16 {
        self.ports.tls
    }

    /// PEM of the root that signs the certificates this Pebble issues, fetched from its
    /// management port (`/roots/0`). Issued chains (leaf + intermediate) verify against it.
    pub async fn issuing_root_pem(&self) -> Vec<u8> {
        let addr = loopback(self.ports.management);
        let reply = https_get(addr, "127.0.0.1", &self.root_pem, "/roots/0")
            .await
            .unwrap_or_else(|e| panic!("GET https://{addr}/roots/0 from Pebble failed: {e}"));
        assert_eq!(
            reply.status,
            http::StatusCode::OK,
            "GET https://{addr}/roots/0 from Pebble: {}",
            reply.body
        );
        assert!(
            reply.body.contains("-----BEGIN CERTIFICATE-----"),
            "GET https://{addr}/roots/0 from Pebble returned no PEM: {}",
            reply.body
        );
        reply.body.into_bytes()
    }

    /// Makes Pebble's DNS (pebble-challtestsrv) answer A queries for `host` with `ipv4`
    /// instead of the default 127.0.0.1, e.g. to make validation of one name fail.
    pub async fn set_dns_a(&self, host: &str, ipv4: &str) {
        let addr = loopback(self.ports.dns_management);
        let body = format!(
            r#"{{"host":{},"addresses":[{}]}}"#,
            json_string(host),
            json_string(ipv4)
        );
        let request = http::Request::post("/add-a")
            .header(http::header::HOST, addr.to_string())
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(bytes::Bytes::from(body))
            .expect("build the /add-a request");
        let reply = http_request(addr, request)
            .await
            .unwrap_or_else(|e| panic!("POST http://{addr}/add-a to pebble-challtestsrv: {e}"));
        assert!(
            reply.status().is_success(),
            "pebble-challtestsrv refused A {host} -> {ipv4}: {} {}",
            reply.status(),
            reply.body()
        );
    }

    /// How many orders Pebble has created so far: the lines `Added order "<id>" to the db`
    /// in its log.
    pub fn orders(&self) -> usize {
        self.log()
            .lines()
            .filter(|line| line.contains("Added order "))
            .count()
    }

    /// How many accounts Pebble has created so far: the number of lines
    /// `There are now N accounts in memory` in its log (Pebble prints one per new account only;
    /// looking up an existing account prints nothing).
    pub fn accounts(&self) -> usize {
        self.log()
            .lines()
            .filter(|line| line.contains("There are now ") && line.contains(" accounts in memory"))
            .count()
    }

    /// Pebble's whole log so far (its stdout and stderr), for assertion messages.
    pub fn log(&self) -> String {
        read_log(&self.dir.path().join("pebble.log"))
    }

    /// pebble-challtestsrv's whole log so far (its stdout and stderr).
    pub fn challtestsrv_log(&self) -> String {
        read_log(&self.dir.path().join("challtestsrv.log"))
    }

    /// Process ids of the `pebble` and `pebble-challtestsrv` children.
    pub fn pids(&self) -> [u32; 2] {
        [self.pebble.child.id(), self.challtestsrv.child.id()]
    }

    fn spawn(opts: &PebbleOptions) -> Pebble {
        let dir = tempfile::Builder::new()
            .prefix("autotls-pebble-")
            .tempdir()
            .expect("create a temporary directory for Pebble");
        let root_pem = write_https_cert(dir.path());
        let ports = Ports::free();
        let config = dir.path().join("pebble-config.json");
        std::fs::write(&config, config_json(dir.path(), &ports, opts))
            .expect("write Pebble's config file");

        // DNS first: Pebble only resolves when it validates, but it should find it running.
        let mut challtestsrv = Command::new(CHALLTESTSRV);
        challtestsrv
            .args(["-dns01", &format!("127.0.0.1:{}", ports.dns)])
            .args([
                "-management",
                &format!("127.0.0.1:{}", ports.dns_management),
            ])
            .args(["-http01", "", "-https01", "", "-tlsalpn01", ""])
            .args(["-defaultIPv4", "127.0.0.1", "-defaultIPv6", ""]);
        let challtestsrv = spawn_logged(challtestsrv, &dir.path().join("challtestsrv.log"));

        let mut pebble = Command::new(PEBBLE);
        pebble
            .args(["-config", path_str(&config)])
            .args(["-dnsserver", &format!("127.0.0.1:{}", ports.dns)])
            .current_dir(dir.path());
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("PEBBLE_") {
                pebble.env_remove(key);
            }
        }
        pebble
            .env("PEBBLE_VA_NOSLEEP", "1")
            .env("PEBBLE_WFE_NONCEREJECT", "0")
            .env("PEBBLE_AUTHZREUSE", "0")
            .envs(opts.env.iter().map(|(k, v)| (k, v)));
        let pebble = spawn_logged(pebble, &dir.path().join("pebble.log"));
        Pebble {
            pebble,
            challtestsrv,
            ports,
            root_pem,
            dir,
        }
    }

    /// Whether a process that died at start did so because one of its ports was taken.
    fn port_clash(&self) -> bool {
        [self.log(), self.challtestsrv_log()]
            .iter()
            .any(|log| log.contains("address already in use"))
    }

    /// Waits until Pebble's directory answers 200 and challtestsrv's management port accepts.
    async fn wait_ready(&mut self) -> Result<(), Exited> {
        let deadline = Instant::now() + READY_LIMIT;
        let listen = loopback(self.ports.listen);
        loop {
            for process in [&mut self.pebble, &mut self.challtestsrv] {
                if let Some(status) = process.child.try_wait().expect("poll a child process") {
                    return Err(Exited(format!(
                        "{} exited at start ({status})",
                        process.name
                    )));
                }
            }
            let last_error = if tokio::net::TcpStream::connect(loopback(self.ports.dns_management))
                .await
                .is_err()
            {
                "pebble-challtestsrv's management port is not accepting yet".to_owned()
            } else {
                // Bounded: whatever took the port if Pebble lost it may accept and stay silent.
                let probe = https_get(listen, "127.0.0.1", &self.root_pem, "/dir");
                match tokio::time::timeout(PROBE_LIMIT, probe).await {
                    Ok(Ok(reply)) if reply.status == http::StatusCode::OK => return Ok(()),
                    Ok(Ok(reply)) => format!("status {}: {}", reply.status, reply.body),
                    Ok(Err(e)) => e.to_string(),
                    Err(_) => format!("no answer within {PROBE_LIMIT:?}"),
                }
            };
            if Instant::now() >= deadline {
                panic!(
                    "Pebble's directory https://{listen}/dir did not answer 200 within {READY_LIMIT:?} \
                     (last: {last_error})\n--- pebble log ---\n{}\n--- pebble-challtestsrv log ---\n{}",
                    self.log(),
                    self.challtestsrv_log()
                );
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
}

impl Drop for Pebble {
    fn drop(&mut self) {
        // Pebble first, so it never sees its DNS server vanish while still serving. The
        // temporary directory is removed afterwards (fields drop after this).
        self.pebble.stop();
        self.challtestsrv.stop();
    }
}

/// A child process we spawned; killed (by its handle, never by name) and reaped on drop, so a
/// panic half-way through [`Pebble::start`] leaves nothing behind either.
struct Process {
    name: String,
    child: Child,
}

impl Process {
    fn stop(&mut self) {
        // After the first `wait` the exit status is cached: a second `kill` sends nothing.
        // Errors mean the process has already exited.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.stop();
    }
}

impl std::fmt::Debug for Pebble {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pebble")
            .field("directory_url", &self.directory_url())
            .field("http_port", &self.ports.http)
            .field("tls_port", &self.ports.tls)
            .field("pids", &self.pids())
            .finish_non_exhaustive()
    }
}

/// A child process died before Pebble was ready (retried on fresh ports when it was a port clash).
struct Exited(String);

impl Ports {
    /// Six distinct free loopback ports: all are bound at once (so they differ) and released
    /// together just before the processes start. The DNS port is free for both UDP and TCP.
    fn free() -> Ports {
        let mut held = Vec::new();
        let mut take = || loop {
            let listener =
                TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind a free loopback TCP port");
            let port = listener
                .local_addr()
                .expect("local address of a bound socket")
                .port();
            // challtestsrv's DNS listens on UDP and TCP; the others are TCP only, but asking
            // for UDP too costs nothing.
            if let Ok(udp) = UdpSocket::bind((Ipv4Addr::LOCALHOST, port)) {
                held.push((listener, udp));
                return port;
            }
        };
        Ports {
            listen: take(),
            management: take(),
            http: take(),
            tls: take(),
            dns: take(),
            dns_management: take(),
        }
    }
}

fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, port))
}

/// Generates a CA and a leaf for `127.0.0.1` and `localhost`; writes the leaf and its key where
/// the config points and the CA to `directory-root.pem`. Returns the CA's PEM.
fn write_https_cert(dir: &Path) -> Vec<u8> {
    let cert = super::LocalhostCert::new("autotls tests: Pebble HTTPS CA");
    std::fs::write(dir.join("cert.pem"), &cert.cert_pem).expect("write Pebble's certificate");
    std::fs::write(dir.join("key.pem"), cert.key.serialize_pem()).expect("write Pebble's key");
    std::fs::write(dir.join("directory-root.pem"), &cert.ca_pem).expect("write the directory root");
    cert.ca_pem.into_bytes()
}

fn config_json(dir: &Path, ports: &Ports, opts: &PebbleOptions) -> String {
    let validity = match opts.certificate_validity {
        Some(validity) => {
            let secs = validity.as_secs();
            assert!(
                secs >= 1,
                "certificate_validity must be at least one second"
            );
            format!(",\n    \"certificateValidityPeriod\": {secs}")
        }
        None => String::new(),
    };
    format!(
        r#"{{
  "pebble": {{
    "listenAddress": "127.0.0.1:{listen}",
    "managementListenAddress": "127.0.0.1:{management}",
    "certificate": {cert},
    "privateKey": {key},
    "httpPort": {http},
    "tlsPort": {tls},
    "ocspResponderURL": "",
    "externalAccountBindingRequired": false{validity}
  }}
}}
"#,
        listen = ports.listen,
        management = ports.management,
        cert = json_string(path_str(&dir.join("cert.pem"))),
        key = json_string(path_str(&dir.join("key.pem"))),
        http = ports.http,
        tls = ports.tls,
    )
}

fn json_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if u32::from(c) < 0x20 => out.push_str(&format!("\\u{:04x}", u32::from(c))),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn path_str(path: &Path) -> &str {
    path.to_str()
        .unwrap_or_else(|| panic!("temporary path {path:?} is not UTF-8"))
}

/// Spawns `command` with stdin closed and stdout+stderr written to `log`.
fn spawn_logged(mut command: Command, log: &Path) -> Process {
    let program = command.get_program().to_string_lossy().into_owned();
    let out = File::create(log).unwrap_or_else(|e| panic!("create {}: {e}", log.display()));
    let err = out.try_clone().expect("duplicate a log file handle");
    command.stdin(Stdio::null()).stdout(out).stderr(err);
    match command.spawn() {
        Ok(child) => Process {
            name: program,
            child,
        },
        Err(e) if e.kind() == ErrorKind::NotFound => panic!(
            "`{program}` was not found on PATH: Pebble is not installed. The tests need a real \
             ACME CA; install it with `bash scripts/test` (which installs it) or \
             `apt-get update && apt-get install -y pebble` (ships /usr/bin/pebble and \
             /usr/bin/pebble-challtestsrv)."
        ),
        Err(e) => panic!("could not start `{program}`: {e}"),
    }
}

fn read_log(path: &Path) -> String {
    match std::fs::read(path) {
        Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
        Err(e) => format!("<could not read {}: {e}>", path.display()),
    }
}
