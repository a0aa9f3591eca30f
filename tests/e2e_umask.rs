//! Files the crate writes after a real issuance are private whatever the umask: 0600 files in
//! 0700 directories under `umask 000`. The umask is process-wide, so the test re-runs this
//! binary under `sh -c 'umask 000; exec ...'` and gets a certificate from Pebble there.

mod support;

use std::fs;
use std::future::IntoFuture;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use autotls::{AutoTls, CertState, Challenge};
use support::client::wait_for;
use support::pebble::Pebble;
use support::process::run_test_in_child;

const CHILD_ENV: &str = "AUTOTLS_E2E_UMASK_CACHE_ROOT";
const TEST_NAME: &str = "cache_files_are_0600_and_directories_0700_under_umask_000";
/// Bound for the child: Pebble's start and one issuance (itself bounded at 30 s).
const CHILD_LIMIT: Duration = Duration::from_secs(120);

#[test]
fn cache_files_are_0600_and_directories_0700_under_umask_000() {
    match std::env::var_os(CHILD_ENV) {
        Some(root) => child(Path::new(&root)),
        None => parent(),
    }
}

fn parent() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path().join("cache");
    run_test_in_child(
        TEST_NAME,
        &[(CHILD_ENV, root.as_os_str())],
        Some("umask 000"),
        CHILD_LIMIT,
    );
}

fn child(root: &Path) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime");
    runtime.block_on(async {
        let pebble = Pebble::start().await;
        let tls = AutoTls::new(["a.test"])
            .directory(pebble.directory_url())
            .directory_root(pebble.directory_root_pem())
            .challenge(Challenge::TlsAlpn01)
            .cache_dir(root);
        let listener = tls
            .bind(format!("127.0.0.1:{}", pebble.tls_port()))
            .await
            .expect("bind Pebble's TLS-ALPN-01 port");
        let server = tokio::spawn(axum::serve(listener, axum::Router::new()).into_future());
        wait_for("a certificate for a.test", Duration::from_secs(30), || {
            (tls.status()[0].state == CertState::Valid).then_some(())
        })
        .await;
        server.abort();
    });

    assert_eq!(mode(root), 0o700, "{}", root.display());
    let dirs: Vec<_> = fs::read_dir(root)
        .expect("read the cache root")
        .map(|e| e.expect("entry").path())
        .collect();
    assert_eq!(dirs.len(), 1, "one directory per ACME directory: {dirs:?}");
    let dir = &dirs[0];
    assert_eq!(mode(dir), 0o700, "{}", dir.display());
    let mut files: Vec<String> = fs::read_dir(dir)
        .expect("read the cache directory")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    files.sort();
    assert_eq!(
        files,
        ["a.test.pem", "account-key.pem"],
        "no temporary files left"
    );
    for file in &files {
        assert_eq!(mode(&dir.join(file)), 0o600, "{file}");
    }
}

fn mode(path: &Path) -> u32 {
    fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o777
}
