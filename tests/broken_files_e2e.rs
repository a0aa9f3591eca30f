//! Broken cache files against a real CA: a corrupt certificate file is re-issued exactly
//! once, and a corrupt account key costs exactly one new account, whatever the number of
//! names.

mod support;

use std::future::IntoFuture;
use std::time::Duration;

use autotls::{AutoTls, CertState, Challenge};
use support::cache_subdir;
use support::client::{https_get, wait_for};
use support::pebble::Pebble;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_files_are_reissued_once_with_one_new_account() {
    let pebble = Pebble::start().await;
    let cache = tempfile::tempdir().expect("tempdir");
    let dir = cache_subdir(&pebble.directory_url(), cache.path());
    std::fs::create_dir_all(&dir).expect("mkdir");
    let names = ["a.test", "b.test", "c.test"];
    for name in names {
        std::fs::write(
            dir.join(format!("{name}.pem")),
            b"-----BEGIN CERTIFICATE-----\ngarbage",
        )
        .expect("plant a corrupt certificate");
    }
    std::fs::write(dir.join("account-key.pem"), b"not a key").expect("plant a corrupt key");

    let tls = AutoTls::new(names)
        .directory(pebble.directory_url())
        .directory_root(pebble.directory_root_pem())
        .challenge(Challenge::TlsAlpn01)
        .cache_dir(cache.path());
    let listener = tls
        .bind(format!("127.0.0.1:{}", pebble.tls_port()))
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let task = tokio::spawn(axum::serve(listener, axum::Router::new()).into_future());
    wait_for("three certificates", Duration::from_secs(30), || {
        tls.status()
            .iter()
            .all(|s| s.state == CertState::Valid)
            .then_some(())
    })
    .await;
    assert_eq!(
        pebble.orders(),
        3,
        "one order per corrupt file:\n{}",
        pebble.log()
    );
    assert_eq!(
        pebble.accounts(),
        1,
        "one new account for all names:\n{}",
        pebble.log()
    );
    let root = pebble.issuing_root_pem().await;
    for name in names {
        https_get(addr, name, &root, "/")
            .await
            .unwrap_or_else(|e| panic!("{name}: {e}"));
    }
    let kept = std::fs::read_dir(&dir)
        .expect("read the cache")
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().contains(".corrupt-"))
        .count();
    assert_eq!(kept, 4, "every corrupt file is kept aside for inspection");
    task.abort();
}
