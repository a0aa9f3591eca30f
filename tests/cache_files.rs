//! The certificate cache on disk, through the public API only: `start()` makes a private
//! directory per ACME directory, serves a valid cached certificate at once without asking the
//! CA, and moves an unusable file aside (`<file>.corrupt-<unix secs>`) instead of serving it.
//!
//! The CA is `https://127.0.0.1:1/dir`, which nothing answers: whatever is served here came
//! from the cache. Status is read right after `start()`, before the single-threaded test
//! runtime lets the manager's task run, so an unusable file shows as `Pending`.

use std::fs;
use std::net::SocketAddr;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

mod support;

use autotls::rustls::pki_types::{CertificateDer, ServerName};
use autotls::rustls::{ClientConfig, RootCertStore};
use autotls::tokio_rustls::TlsConnector;
use autotls::{AutoTls, CertEvent, CertState, CertStatus};
use axum::routing::get;
use axum::Router;
use rcgen::{CertificateParams, KeyPair};
use support::local::RecordServedCert;
use support::provider;
use tempfile::TempDir;
use tokio::net::TcpStream;

const NOWHERE: &str = "https://127.0.0.1:1/dir";
/// `<cache_dir>/<slug of NOWHERE>`, as the crate's module docs describe the layout.
const SLUG: &str = "127.0.0.1_1_dir";
/// Short, so that a handshake for a name without a certificate fails quickly.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_millis(300);
const BOUND: Duration = Duration::from_secs(5);

/// A cache root that does not exist yet, in a fresh temporary directory.
fn cache_root() -> (TempDir, PathBuf) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path().join("cache");
    (tmp, root)
}

fn autotls(root: &Path) -> AutoTls {
    AutoTls::new(["a.test"])
        .directory(NOWHERE)
        .cache_dir(root)
        .handshake_timeout(HANDSHAKE_TIMEOUT)
}

/// The per-directory cache folder, made the way the crate makes it, to plant files in.
fn plant(root: &Path, file: &str, contents: &[u8]) -> PathBuf {
    let dir = root.join(SLUG);
    fs::create_dir_all(&dir).expect("create the cache directory");
    let path = dir.join(file);
    fs::write(&path, contents).expect("write the cache file");
    path
}

fn mode(path: &Path) -> u32 {
    fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o777
}

fn entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| {
            e.expect("dir entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    names.sort();
    names
}

fn status_of(tls: &AutoTls, name: &str) -> CertStatus {
    tls.status()
        .into_iter()
        .find(|s| s.name == name)
        .unwrap_or_else(|| panic!("{name} is not in status(): {:?}", tls.status()))
}

/// A self-signed certificate for `name`: the cache file (key PEM, then certificate PEM), the
/// certificate's DER and its not-after.
struct SelfSigned {
    file: String,
    der: CertificateDer<'static>,
    not_after: SystemTime,
}

fn self_signed(name: &str) -> SelfSigned {
    let mut params = CertificateParams::new(vec![name.to_owned()]).expect("params");
    params.not_before = rcgen::date_time_ymd(2020, 1, 1);
    params.not_after = rcgen::date_time_ymd(2090, 1, 1);
    let not_after = UNIX_EPOCH
        + Duration::from_secs(
            u64::try_from(params.not_after.unix_timestamp()).expect("after 1970"),
        );
    let key = KeyPair::generate().expect("key");
    let cert = params.self_signed(&key).expect("self-signed certificate");
    SelfSigned {
        file: format!("{}{}", key.serialize_pem(), cert.pem()),
        der: cert.der().clone(),
        not_after,
    }
}

/// Serves hello world on `tls.bind("127.0.0.1:0")`; the server stops when the guard drops.
async fn serve(tls: &AutoTls) -> (SocketAddr, AbortOnDrop) {
    let listener = tls
        .bind("127.0.0.1:0")
        .await
        .expect("bind the HTTPS listener");
    let addr = listener.local_addr().expect("local addr");
    let app = Router::new().route("/", get(|| async { "Hello world" }));
    let task = tokio::spawn(async move {
        axum::serve(listener, app).await.expect("axum::serve");
    });
    (addr, AbortOnDrop(task))
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

enum Trust<'a> {
    /// Verify the chain against this certificate as the only root.
    Only(&'a CertificateDer<'static>),
    Anything,
}

/// A TLS handshake to `addr`; the server's chain on success.
async fn handshake(
    addr: SocketAddr,
    server_name: &str,
    send_sni: bool,
    trust: Trust<'_>,
) -> Result<Vec<CertificateDer<'static>>, std::io::Error> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("protocol versions");
    let mut config = match trust {
        Trust::Only(root) => {
            let mut roots = RootCertStore::empty();
            roots.add(root.clone()).expect("a usable root");
            builder.with_root_certificates(roots).with_no_client_auth()
        }
        // Any certificate: for handshakes that must fail on the server's side, so that a
        // client-side verification error cannot pass for a refusal.
        Trust::Anything => RecordServedCert::new().client_config(&[]),
    };
    config.enable_sni = send_sni;
    let name = ServerName::try_from(server_name.to_owned()).expect("server name");
    let attempt = async {
        let tcp = TcpStream::connect(addr).await?;
        let tls = TlsConnector::from(Arc::new(config))
            .connect(name, tcp)
            .await?;
        let (_, conn) = tls.get_ref();
        Ok(conn.peer_certificates().unwrap_or_default().to_vec())
    };
    tokio::time::timeout(BOUND, attempt)
        .await
        .unwrap_or_else(|_| {
            panic!("the handshake for {server_name} neither finished nor failed within {BOUND:?}")
        })
}

// ---------------------------------------------------------------------------------------------
// The directory.

#[tokio::test]
async fn start_creates_a_private_cache_directory_for_the_acme_directory() {
    let (_tmp, root) = cache_root();
    let tls = autotls(&root);
    tls.start().expect("start with an unreachable CA");

    let dir = root.join(SLUG);
    assert!(dir.is_dir(), "{} was not created", dir.display());
    assert_eq!(mode(&dir), 0o700, "{}", dir.display());
    assert_eq!(
        mode(&root),
        0o700,
        "the cache root the crate created: {}",
        root.display()
    );
    assert_eq!(
        entries(&dir),
        Vec::<String>::new(),
        "start leaves no file behind (the write probe)"
    );
}

#[tokio::test]
async fn start_restricts_an_existing_open_cache_directory_to_0700() {
    let (_tmp, root) = cache_root();
    let dir = root.join(SLUG);
    fs::create_dir_all(&dir).expect("mkdir");
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o777)).expect("chmod 777");

    autotls(&root).start().expect("start");
    assert_eq!(mode(&dir), 0o700, "{}", dir.display());
}

// ---------------------------------------------------------------------------------------------
// Unusable files are moved aside and not served.

/// Plants `contents` as `a.test.pem`, starts, and checks that the file was moved aside
/// unchanged, that a.test has no certificate, and that no handshake for it succeeds.
async fn assert_moved_aside_and_not_served(what: &str, contents: &[u8]) {
    let (_tmp, root) = cache_root();
    let planted = plant(&root, "a.test.pem", contents);
    let tls = autotls(&root);
    let before = SystemTime::now();
    tls.start().unwrap_or_else(|e| panic!("{what}: start: {e}"));
    let after = SystemTime::now();

    let status = status_of(&tls, "a.test");
    assert_eq!(status.state, CertState::Pending, "{what}: {status:?}");
    assert_eq!(status.not_after, None, "{what}: {status:?}");

    assert!(
        !planted.exists(),
        "{what}: {} is still there",
        planted.display()
    );
    let dir = root.join(SLUG);
    let aside: Vec<String> = entries(&dir)
        .into_iter()
        .filter(|n| n.starts_with("a.test.pem.corrupt-"))
        .collect();
    assert_eq!(
        aside.len(),
        1,
        "{what}: expected one moved-aside file in {:?}",
        entries(&dir)
    );
    let secs: u64 = aside[0]["a.test.pem.corrupt-".len()..]
        .parse()
        .unwrap_or_else(|e| panic!("{what}: {:?} does not end in unix seconds: {e}", aside[0]));
    let secs_of = |t: SystemTime| t.duration_since(UNIX_EPOCH).expect("after 1970").as_secs();
    assert!(
        (secs_of(before)..=secs_of(after)).contains(&secs),
        "{what}: {secs} is not the time of the move"
    );
    let kept = fs::read(dir.join(&aside[0])).expect("read the moved-aside file");
    assert_eq!(
        kept, contents,
        "{what}: the moved-aside file must be kept for inspection"
    );

    let (addr, _server) = serve(&tls).await;
    let result = handshake(addr, "a.test", true, Trust::Anything).await;
    assert!(
        result.is_err(),
        "{what}: a certificate was served for a.test: {result:?}"
    );
}

#[tokio::test]
async fn a_garbage_cache_file_is_moved_aside_and_not_served() {
    assert_moved_aside_and_not_served("garbage", b"\x00\x01this is not PEM at all\xff\n").await;
}

#[tokio::test]
async fn an_empty_cache_file_is_moved_aside_and_not_served() {
    assert_moved_aside_and_not_served("empty", b"").await;
}

#[tokio::test]
async fn a_truncated_pem_cache_file_is_moved_aside_and_not_served() {
    let valid = self_signed("a.test").file;
    // Cut in the middle of the certificate's base64.
    let cut = valid.len() - 200;
    assert_moved_aside_and_not_served("truncated PEM", &valid.as_bytes()[..cut]).await;
}

#[tokio::test]
async fn a_cache_file_whose_chain_is_cut_short_is_moved_aside_and_not_served() {
    let leaf = self_signed("a.test").file;
    let issuer = self_signed("issuer.test").file;
    let issuer_cert = &issuer[issuer
        .find("-----BEGIN CERTIFICATE-----")
        .expect("cert PEM")..];
    // Key and leaf complete, the next certificate of the chain cut in half.
    let cut = format!("{leaf}{}", &issuer_cert[..issuer_cert.len() / 2]);
    assert_moved_aside_and_not_served("chain cut short", cut.as_bytes()).await;
}

#[tokio::test]
async fn a_key_without_its_certificate_is_moved_aside_and_not_served() {
    let valid = self_signed("a.test").file;
    let key_only = &valid[..valid.find("-----BEGIN CERTIFICATE-----").expect("cert PEM")];
    assert_moved_aside_and_not_served("key only", key_only.as_bytes()).await;
}

#[tokio::test]
async fn a_cached_certificate_for_another_name_is_moved_aside_and_not_served() {
    let other = self_signed("b.test");
    assert_moved_aside_and_not_served("a b.test certificate as a.test.pem", other.file.as_bytes())
        .await;
}

#[tokio::test]
async fn a_cached_key_that_does_not_fit_the_certificate_is_moved_aside_and_not_served() {
    let cert = self_signed("a.test").file;
    let other_key = KeyPair::generate().expect("key").serialize_pem();
    let cert_pem = &cert[cert.find("-----BEGIN CERTIFICATE-----").expect("cert PEM")..];
    let mismatched = format!("{other_key}{cert_pem}");
    assert_moved_aside_and_not_served("mismatched key", mismatched.as_bytes()).await;
}

#[tokio::test]
async fn a_symlinked_cache_file_is_moved_aside_and_its_target_left_alone() {
    let (tmp, root) = cache_root();
    let valid = self_signed("a.test");
    let target = tmp.path().join("elsewhere.pem");
    fs::write(&target, &valid.file).expect("write the symlink target");
    let dir = root.join(SLUG);
    fs::create_dir_all(&dir).expect("mkdir");
    symlink(&target, dir.join("a.test.pem")).expect("symlink");

    let tls = autotls(&root);
    tls.start().expect("start");
    let status = status_of(&tls, "a.test");
    assert_eq!(
        status.not_after, None,
        "a certificate was loaded through a symlink: {status:?}"
    );
    assert!(
        fs::symlink_metadata(dir.join("a.test.pem")).is_err(),
        "the symlink is still in place"
    );
    assert_eq!(
        fs::read_to_string(&target).expect("target"),
        valid.file,
        "the target changed"
    );
}

#[tokio::test]
async fn a_second_unusable_file_does_not_overwrite_the_first_one_moved_aside() {
    let (_tmp, root) = cache_root();
    let dir = root.join(SLUG);
    plant(&root, "a.test.pem", b"first garbage");
    autotls(&root).start().expect("first start");
    plant(&root, "a.test.pem", b"second garbage");
    autotls(&root).start().expect("second start");

    let mut kept: Vec<Vec<u8>> = entries(&dir)
        .into_iter()
        .filter(|n| n.starts_with("a.test.pem.corrupt-"))
        .map(|n| fs::read(dir.join(n)).expect("read a moved-aside file"))
        .collect();
    kept.sort();
    assert_eq!(
        kept,
        [b"first garbage".to_vec(), b"second garbage".to_vec()],
        "both unusable files must be kept for inspection"
    );
}

#[tokio::test]
async fn a_symlink_in_place_of_the_cache_directory_is_refused() {
    let (tmp, root) = cache_root();
    let elsewhere = tmp.path().join("elsewhere");
    fs::create_dir_all(&elsewhere).expect("mkdir");
    fs::create_dir_all(&root).expect("mkdir");
    symlink(&elsewhere, root.join(SLUG)).expect("symlink");

    let err = autotls(&root)
        .start()
        .expect_err("a symlink where the directory's cache belongs");
    assert_eq!(err.kind(), autotls::ErrorKind::Cache, "{err}");
    assert!(
        err.to_string().contains(SLUG),
        "the message names the directory: {err}"
    );
    assert_eq!(
        entries(&elsewhere),
        Vec::<String>::new(),
        "nothing was written through the symlink"
    );
}

// ---------------------------------------------------------------------------------------------
// A valid file is served at once.

#[tokio::test]
async fn a_valid_cached_certificate_is_served_at_start_without_the_ca() {
    let (_tmp, root) = cache_root();
    let cert = self_signed("a.test");
    plant(&root, "a.test.pem", cert.file.as_bytes());
    let tls = autotls(&root);
    let mut events = tls.subscribe();

    tls.start().expect("start");

    let status = status_of(&tls, "a.test");
    assert_eq!(status.state, CertState::Valid, "{status:?}");
    assert_eq!(status.not_after, Some(cert.not_after), "{status:?}");
    assert_eq!(status.last_error, None, "{status:?}");
    match events.try_recv() {
        Ok(CertEvent::Loaded { name, not_after }) => {
            assert_eq!(name, "a.test");
            assert_eq!(not_after, cert.not_after);
        }
        other => panic!("expected a Loaded event, got {other:?}"),
    }
    assert!(
        root.join(SLUG).join("a.test.pem").exists(),
        "a valid file stays in place"
    );

    let (addr, _server) = serve(&tls).await;
    let chain = handshake(addr, "a.test", true, Trust::Only(&cert.der))
        .await
        .expect("a handshake for a.test that trusts only the cached certificate");
    assert_eq!(
        chain,
        vec![cert.der.clone()],
        "the served chain is exactly the cached certificate"
    );

    // The same certificate for every handshake, upper-case SNI included.
    let chain = handshake(addr, "A.TEST", true, Trust::Anything)
        .await
        .expect("SNI is case-insensitive");
    assert_eq!(chain, vec![cert.der]);
}

#[tokio::test]
async fn handshakes_for_an_unknown_name_or_without_sni_fail() {
    let (_tmp, root) = cache_root();
    let cert = self_signed("a.test");
    plant(&root, "a.test.pem", cert.file.as_bytes());
    let tls = autotls(&root);
    let (addr, _server) = serve(&tls).await;

    // The certificate is served for a.test ...
    handshake(addr, "a.test", true, Trust::Anything)
        .await
        .expect("a.test is served");
    // ... and for nothing else, even to a client that would accept any certificate.
    let unknown = handshake(addr, "unknown.test", true, Trust::Anything).await;
    assert!(
        unknown.is_err(),
        "a certificate was served for unknown.test: {unknown:?}"
    );
    let no_sni = handshake(addr, "a.test", false, Trust::Anything).await;
    assert!(
        no_sni.is_err(),
        "a certificate was served without SNI: {no_sni:?}"
    );

    assert_eq!(
        tls.status()
            .iter()
            .map(|s| s.name.as_str())
            .collect::<Vec<_>>(),
        ["a.test"],
        "an unknown SNI adds no managed name"
    );
}

#[tokio::test]
async fn an_expired_cached_certificate_is_not_reported_valid() {
    let (_tmp, root) = cache_root();
    let mut params = CertificateParams::new(vec!["a.test".to_owned()]).expect("params");
    params.not_before = rcgen::date_time_ymd(2020, 1, 1);
    params.not_after = rcgen::date_time_ymd(2021, 1, 1);
    let key = KeyPair::generate().expect("key");
    let cert = params.self_signed(&key).expect("self-signed certificate");
    plant(
        &root,
        "a.test.pem",
        format!("{}{}", key.serialize_pem(), cert.pem()).as_bytes(),
    );
    let tls = autotls(&root);
    tls.start().expect("start");

    let status = status_of(&tls, "a.test");
    assert_ne!(
        status.state,
        CertState::Valid,
        "a certificate that expired in 2021 is reported as valid: {status:?}"
    );
}

#[tokio::test]
async fn a_100_mb_cache_file_is_moved_aside_without_being_read() {
    let (_tmp, root) = cache_root();
    let dir = root.join(SLUG);
    fs::create_dir_all(&dir).expect("mkdir");
    let file = fs::File::create(dir.join("a.test.pem")).expect("create");
    file.set_len(100 * 1024 * 1024)
        .expect("a 100 MB (sparse) file");
    drop(file);
    let tls = autotls(&root);
    let started = std::time::Instant::now();
    tls.start().expect("start");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "start took {:?}: reads must be capped",
        started.elapsed()
    );
    assert_eq!(status_of(&tls, "a.test").state, CertState::Pending);
    let aside: Vec<String> = entries(&dir)
        .into_iter()
        .filter(|n| n.starts_with("a.test.pem.corrupt-"))
        .collect();
    assert_eq!(aside.len(), 1, "{:?}", entries(&dir));
    assert!(!dir.join("a.test.pem").exists());
}

#[tokio::test]
async fn a_directory_where_the_certificate_file_belongs_is_moved_aside() {
    let (_tmp, root) = cache_root();
    let dir = root.join(SLUG);
    fs::create_dir_all(dir.join("a.test.pem")).expect("a directory in the file's place");
    let tls = autotls(&root);
    tls.start().expect("start");
    assert_eq!(status_of(&tls, "a.test").state, CertState::Pending);
    assert!(!dir.join("a.test.pem").exists(), "{:?}", entries(&dir));
    assert_eq!(
        entries(&dir)
            .iter()
            .filter(|n| n.starts_with("a.test.pem.corrupt-"))
            .count(),
        1
    );
}
