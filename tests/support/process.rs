//! The test process itself: re-running one test of this binary in a child process (for
//! process-wide settings such as the umask or a file-descriptor limit, which must not leak
//! into the other tests of the binary), and what the process uses (CPU time, open file
//! descriptors).

use std::ffi::OsStr;
use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// What a child test printed.
pub struct ChildOutput {
    pub stdout: String,
    pub stderr: String,
}

/// Re-runs the test `test_name` of this test binary alone in a child process, with `env` set
/// (the test looks for it to know that it is the child). With `sh_prelude`, the child runs
/// under `sh -c '<sh_prelude> && exec <this binary> ...'`, e.g. `umask 000`.
///
/// Fails the calling test, printing the child's output, when the child does not exit
/// successfully within `limit` (it is then killed) or did not run exactly that one test.
pub fn run_test_in_child(
    test_name: &str,
    env: &[(&str, &OsStr)],
    sh_prelude: Option<&str>,
    limit: Duration,
) -> ChildOutput {
    let exe = std::env::current_exe().expect("the test binary's path");
    let mut command = match sh_prelude {
        Some(prelude) => {
            let mut sh = Command::new("sh");
            sh.arg("-c")
                .arg(format!(r#"{prelude} && exec "$0" "$@""#))
                .arg(&exe);
            sh
        }
        None => Command::new(&exe),
    };
    command
        .args(["--exact", test_name, "--nocapture", "--test-threads=1"])
        .envs(env.iter().map(|(k, v)| (*k, *v)))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = command.spawn().expect("start the child test process");
    // Read both pipes on threads, so a chatty child never blocks on a full pipe.
    let drain = |pipe: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            if let Some(mut pipe) = pipe {
                let _ = pipe.read_to_end(&mut bytes);
            }
            String::from_utf8_lossy(&bytes).into_owned()
        })
    };
    let stdout = drain(
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let stderr = drain(
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );

    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait().expect("poll the child") {
            break Some(status);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let output = ChildOutput {
        stdout: stdout.join().expect("the stdout reader"),
        stderr: stderr.join().expect("the stderr reader"),
    };
    let (out, err) = (&output.stdout, &output.stderr);
    match status {
        None => panic!("the child did not finish within {limit:?} and was killed:\n{out}\n{err}"),
        Some(status) => assert!(
            status.success(),
            "the child failed ({status}):\n{out}\n{err}"
        ),
    }
    assert!(
        out.contains("1 passed"),
        "the child did not run the test:\n{out}\n{err}"
    );
    output
}

/// The CPU time (user + system, every thread) this process has used so far. `getrusage`
/// needs no file descriptor, so it works when the process is out of them.
pub fn cpu_time() -> Duration {
    // SAFETY: `getrusage` only writes the struct it is given, which is valid for writes.
    let usage = unsafe {
        let mut usage = std::mem::zeroed::<libc::rusage>();
        assert_eq!(
            libc::getrusage(libc::RUSAGE_SELF, &mut usage),
            0,
            "getrusage: {}",
            std::io::Error::last_os_error()
        );
        usage
    };
    let time = |t: libc::timeval| {
        Duration::from_secs(t.tv_sec as u64) + Duration::from_micros(t.tv_usec as u64)
    };
    time(usage.ru_utime) + time(usage.ru_stime)
}

/// How many file descriptors this process has open, and an upper bound on the highest one
/// (Linux: `/proc/self/fd`). The descriptor that lists the directory is not counted, but may
/// be the highest number seen.
pub fn open_fds() -> (usize, i32) {
    let listing = std::fs::read_dir("/proc/self/fd").expect("list /proc/self/fd");
    let fds: Vec<i32> = listing
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    let highest = fds.iter().copied().max().unwrap_or(0);
    (fds.len().saturating_sub(1), highest)
}
