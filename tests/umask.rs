//! The cache is private whatever the process umask: the umask is process-wide, so the test
//! re-runs this binary under `sh -c 'umask 000; exec ...'` and does the work there.
//!
//! Without a CA the crate writes no certificate or account key: this checks the directories
//! and that the write probe leaves nothing behind. The Pebble tests check the files written
//! after issuance.

mod support;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use autotls::AutoTls;
use support::process::run_test_in_child;

/// Set in the child: the cache root to use.
const CHILD_ENV: &str = "AUTOTLS_UMASK_TEST_CACHE_ROOT";
/// This test's name, for `--exact` in the child.
const TEST_NAME: &str = "the_cache_directory_is_private_even_under_umask_000";
const NOWHERE: &str = "https://127.0.0.1:1/dir";
const SLUG: &str = "127.0.0.1_1_dir";
/// Bound for the child: it starts the crate once, with no CA to talk to.
const CHILD_LIMIT: Duration = Duration::from_secs(60);

#[test]
fn the_cache_directory_is_private_even_under_umask_000() {
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
    // What the child left behind, seen from outside.
    assert_private_and_empty(&root);
}

fn child(root: &Path) {
    assert_eq!(
        umask_of_this_process(),
        "0000",
        "the child must run under umask 000"
    );
    // The umask is in effect: a file made with the default mode is world-writable here.
    let witness = root.with_extension("witness");
    fs::write(&witness, b"").expect("write a witness file");
    assert_eq!(mode(&witness), 0o666, "umask 000 lets 0666 through");
    fs::remove_file(&witness).expect("remove the witness file");

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    runtime.block_on(async {
        AutoTls::new(["a.test"])
            .directory(NOWHERE)
            .cache_dir(root)
            .start()
            .expect("start with an unreachable CA");
    });
    assert_private_and_empty(root);
}

fn assert_private_and_empty(root: &Path) {
    let dir: PathBuf = root.join(SLUG);
    assert_eq!(
        mode(root),
        0o700,
        "the cache root the crate created: {}",
        root.display()
    );
    assert_eq!(mode(&dir), 0o700, "{}", dir.display());
    let left: Vec<_> = fs::read_dir(&dir)
        .expect("read the cache directory")
        .map(|e| e.expect("dir entry").file_name())
        .collect();
    assert!(left.is_empty(), "start left files behind: {left:?}");
}

fn mode(path: &Path) -> u32 {
    fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o777
}

/// The `Umask:` line of `/proc/self/status` (Linux 4.7 and later).
fn umask_of_this_process() -> String {
    let status = fs::read_to_string("/proc/self/status").expect("read /proc/self/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("Umask:"))
        .map(|v| v.trim().to_owned())
        .expect("a Umask line in /proc/self/status")
}
