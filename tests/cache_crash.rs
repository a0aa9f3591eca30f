//! A crash in the middle of a cache write never leaves a mixed or truncated file: a child
//! process rewrites one file through the crate's cache as fast as it can, alternating two
//! contents, and is killed with SIGKILL at random moments, 200 times. After each kill the
//! file holds exactly one of the two contents, whole.

use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const CHILD_ENV: &str = "AUTOTLS_CRASH_TEST_CACHE_ROOT";
const TEST_NAME: &str = "a_write_killed_at_any_moment_leaves_the_old_or_the_new_file_whole";
const DIRECTORY: &str = "https://127.0.0.1:1/dir";
const SLUG: &str = "127.0.0.1_1_dir";
const FILE: &str = "a.test.pem";
const KILLS: usize = 200;
/// How long a child may write before it stops by itself, if it is never killed.
const CHILD_LIMIT: Duration = Duration::from_secs(10);

fn contents() -> [Vec<u8>; 2] {
    // Big enough that a write takes several syscalls; distinct in every byte.
    [vec![b'a'; 256 * 1024], vec![b'b'; 192 * 1024]]
}

#[test]
fn a_write_killed_at_any_moment_leaves_the_old_or_the_new_file_whole() {
    match std::env::var_os(CHILD_ENV) {
        Some(root) => child(Path::new(&root)),
        None => parent(),
    }
}

fn child(root: &Path) {
    let [a, b] = contents();
    let started = Instant::now();
    let mut i = 0usize;
    while started.elapsed() < CHILD_LIMIT {
        let bytes = if i.is_multiple_of(2) { &a } else { &b };
        autotls::__private::cache_write(root, DIRECTORY, FILE, bytes).expect("cache write");
        i += 1;
    }
}

fn parent() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path().join("cache");
    let exe = std::env::current_exe().expect("the test binary");
    let [a, b] = contents();
    let mut seen = [0usize; 2];
    for kill in 0..KILLS {
        let mut child = Command::new(&exe)
            .args(["--exact", TEST_NAME, "--test-threads=1"])
            .env(CHILD_ENV, &root)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the writer");
        // A random moment: the first kills may land before any write finished.
        let delay = Duration::from_micros(rand_below(30_000));
        std::thread::sleep(delay);
        child.kill().expect("SIGKILL the writer");
        child.wait().expect("reap the writer");
        let path = root.join(SLUG).join(FILE);
        match fs::read(&path) {
            Ok(bytes) if bytes == a => seen[0] += 1,
            Ok(bytes) if bytes == b => seen[1] += 1,
            Ok(bytes) => panic!(
                "kill {kill}: a mixed or truncated file of {} bytes (first {:?}, last {:?})",
                bytes.len(),
                bytes.first(),
                bytes.last()
            ),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => panic!("kill {kill}: {e}"),
        }
    }
    assert!(
        seen[0] > 0 && seen[1] > 0,
        "the kills should land after both kinds of write: {seen:?}"
    );
}

/// A small pseudo-random number from the clock (no dependency needed for this).
fn rand_below(n: u64) -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    u64::from(nanos.wrapping_mul(2_654_435_761)) % n
}
