//! The builder: every bad input is refused with an error that names it, nothing panics,
//! `AutoTls::new` defers the error to `validate`/`start`/`bind`, and start-up failures (a port
//! in use, an unusable cache directory) are typed errors that say where.

use std::error::Error as _;
use std::fs;
use std::net::TcpListener as StdTcpListener;
use std::path::Path;

use autotls::{
    AutoTls, AutoTlsLayer, AutoTlsListener, AutoTlsService, Challenge, ConfigError,
    ConfigErrorKind, Error, ErrorKind, HttpRedirect,
};

const NOWHERE: &str = "https://127.0.0.1:1/dir";

/// Compile-time: the handles can be cloned into tasks and layers and shared across threads.
#[test]
fn public_handles_are_clone_send_sync_and_static() {
    fn shared<T: Clone + Send + Sync + 'static>() {}
    fn sendable<T: Send + Sync + 'static>() {}
    fn error<T: std::error::Error + Send + Sync + 'static>() {}
    shared::<AutoTls>();
    shared::<AutoTlsLayer>();
    shared::<AutoTlsService<()>>();
    shared::<HttpRedirect>();
    sendable::<AutoTlsListener>();
    error::<Error>();
    error::<ConfigError>();
}

fn assert_names_input(err: &ConfigError, kind: ConfigErrorKind, input: &str) {
    assert_eq!(err.kind(), kind, "{err}");
    assert_eq!(err.input(), input, "{err}");
    assert!(
        err.to_string().contains(&format!("{input:?}")),
        "the message must quote the bad input {input:?}: {err}"
    );
}

#[test]
fn try_new_refuses_each_bad_name_and_names_it() {
    let too_long = format!("{}.com", "a.".repeat(126));
    assert!(too_long.len() > 253);
    let label_too_long = format!("{}.com", "a".repeat(64));
    let cases: Vec<(&str, &str)> = vec![
        ("", "empty"),
        (".", "empty"),
        ("192.0.2.1", "IP"),
        ("10.1", "IP"),
        ("::1", "IP"),
        ("[::1]", "IP"),
        ("2001:db8::1", "IP"),
        ("*.example.com", "wildcard"),
        ("*", "wildcard"),
        ("exa_mple.com", "letters, digits"),
        ("exa mple.com", "letters, digits"),
        ("ex/ample.com", "letters, digits"),
        ("example.com:443", "letters, digits"),
        ("bücher.example", "punycode"),
        ("a..b", "empty label"),
        (".a.b", "empty label"),
        ("-a.com", "'-'"),
        ("a-.com", "'-'"),
        (&too_long, "253"),
        (&label_too_long, "63"),
    ];
    for (bad, reason) in cases {
        let err = AutoTls::try_new([bad]).expect_err(bad);
        assert_names_input(&err, ConfigErrorKind::DomainName, bad);
        assert!(err.to_string().contains(reason), "{bad:?}: {err}");
    }
}

#[test]
fn the_first_bad_name_among_good_ones_is_the_one_reported() {
    let err = AutoTls::try_new(["good.example", "bad_name.example", "also bad"])
        .expect_err("a bad name is refused");
    assert_names_input(&err, ConfigErrorKind::DomainName, "bad_name.example");
}

#[test]
fn names_are_lowercased_lose_the_trailing_dot_and_are_deduplicated() {
    let tls = AutoTls::try_new(["Example.COM."]).expect("a valid name");
    assert_eq!(tls.names(), ["example.com"]);

    let tls = AutoTls::try_new(["a.test", "A.TEST.", "b.test", "a.test"]).expect("valid names");
    assert_eq!(tls.names(), ["a.test", "b.test"]);
}

#[test]
fn localhost_alone_is_local_mode_but_mixed_with_other_names_is_refused() {
    AutoTls::try_new(["localhost"]).expect("localhost alone is local mode");
    AutoTls::try_new(["localhost", "LOCALHOST."]).expect("the same name twice is one name");
    AutoTls::try_new(Vec::<String>::new()).expect("no names is local mode");

    for names in [vec!["localhost", "a.test"], vec!["a.test", "localhost"]] {
        let err = AutoTls::try_new(&names).expect_err("localhost with real names");
        assert_names_input(&err, ConfigErrorKind::DomainName, "localhost");
        assert!(err.to_string().contains("local mode"), "{err}");
    }
}

#[tokio::test]
async fn new_with_a_bad_name_defers_the_error_to_validate_start_and_bind() {
    let tls = AutoTls::new(["good.example", "bad_name.example"]);
    assert!(
        tls.names().is_empty(),
        "no names are managed when one is invalid"
    );

    let err = tls.validate().expect_err("validate reports the bad name");
    assert_names_input(&err, ConfigErrorKind::DomainName, "bad_name.example");

    let err = tls.start().expect_err("start reports the bad name");
    assert_config_error_names(&err, "bad_name.example");

    let err = tls
        .bind("127.0.0.1:0")
        .await
        .expect_err("bind reports the bad name");
    assert_config_error_names(&err, "bad_name.example");
}

fn assert_config_error_names(err: &Error, input: &str) {
    assert_eq!(err.kind(), ErrorKind::Config, "{err}");
    assert!(err.to_string().contains(input), "{err}");
    let source = err
        .source()
        .and_then(|s| s.downcast_ref::<ConfigError>())
        .unwrap_or_else(|| panic!("the source of {err} is the ConfigError"));
    assert_eq!(source.input(), input);
}

#[tokio::test]
async fn a_contact_that_is_not_an_email_address_is_refused() {
    for bad in [
        "not an email",
        "@example.com",
        "ops@",
        "mailto:",
        "mailto:ops @example.com",
    ] {
        let tls = AutoTls::new(["a.test"]).contact(bad);
        let err = tls.validate().expect_err(bad);
        assert_names_input(&err, ConfigErrorKind::Contact, bad);
        let err = tls.bind("127.0.0.1:0").await.expect_err(bad);
        assert_eq!(err.kind(), ErrorKind::Config, "{bad:?}: {err}");
    }
    for good in [
        "ops@example.com",
        "mailto:ops@example.com",
        "  ops@example.com  ",
    ] {
        AutoTls::new(["a.test"])
            .contact(good)
            .validate()
            .unwrap_or_else(|e| panic!("{good:?} is a valid contact: {e}"));
    }
}

#[tokio::test]
async fn a_directory_that_is_not_https_is_refused() {
    for bad in [
        "http://x",
        "http://acme.example/directory",
        "https://",
        "ftp://x",
        "x",
        "",
    ] {
        let tls = AutoTls::new(["a.test"]).directory(bad);
        let err = tls.validate().expect_err(bad);
        assert_names_input(&err, ConfigErrorKind::Directory, bad);
        let err = tls.bind("127.0.0.1:0").await.expect_err(bad);
        assert_eq!(err.kind(), ErrorKind::Config, "{bad:?}: {err}");
    }
    AutoTls::new(["a.test"])
        .directory("https://x")
        .validate()
        .expect("an https URL is a directory");
}

#[test]
fn the_first_of_several_builder_errors_is_the_one_reported() {
    let err = AutoTls::new(["a.test"])
        .contact("not an email")
        .directory("http://x")
        .validate()
        .expect_err("two bad values");
    assert_eq!(err.kind(), ConfigErrorKind::Contact, "{err}");
}

#[test]
fn other_bad_values_are_refused_with_their_kind() {
    let err = "dns-01"
        .parse::<Challenge>()
        .expect_err("unknown challenge");
    assert_names_input(&err, ConfigErrorKind::Challenge, "dns-01");

    let err = AutoTls::new(["a.test"])
        .external_account("kid", "not base64url!")
        .validate()
        .expect_err("a malformed HMAC key");
    assert_eq!(err.kind(), ConfigErrorKind::ExternalAccount, "{err}");

    let err = AutoTls::new(["a.test"])
        .directory_root("no certificate here")
        .validate()
        .expect_err("a PEM without a certificate");
    assert_eq!(err.kind(), ConfigErrorKind::DirectoryRoot, "{err}");
}

#[test]
fn start_outside_a_tokio_runtime_is_an_error_not_a_panic() {
    let err = AutoTls::new(Vec::<String>::new())
        .start()
        .expect_err("no runtime");
    assert_eq!(err.kind(), ErrorKind::Config, "{err}");
    assert!(err.to_string().contains("tokio runtime"), "{err}");
}

#[tokio::test]
async fn binding_a_port_in_use_is_a_bind_error_naming_the_address() {
    let taken = StdTcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    let addr = taken.local_addr().expect("local addr");

    // Local mode: nothing but the bind itself can fail.
    let err = AutoTls::new(Vec::<String>::new())
        .bind(addr)
        .await
        .expect_err("the port is in use");
    assert_eq!(err.kind(), ErrorKind::Bind, "{err}");
    assert!(err.to_string().contains(&addr.to_string()), "{err}");
    assert!(err.to_string().contains("another process"), "{err}");
    let io = err
        .source()
        .and_then(|s| s.downcast_ref::<std::io::Error>())
        .unwrap_or_else(|| panic!("the source of {err} is the io::Error"));
    assert_eq!(io.kind(), std::io::ErrorKind::AddrInUse);
}

/// Cache directories no user, root included, can create.
fn unusable_cache_dirs(scratch: &Path) -> Vec<std::path::PathBuf> {
    let file = scratch.join("a-regular-file");
    fs::write(&file, b"not a directory").expect("write a regular file");
    // The per-directory subfolder exists, but as a regular file.
    let occupied = scratch.join("occupied");
    fs::create_dir(&occupied).expect("mkdir");
    fs::write(occupied.join("127.0.0.1_1_dir"), b"in the way").expect("write a regular file");
    vec![
        file.join("cache"),
        file.clone(),
        occupied,
        "/proc/autotls-cache".into(),
        "/proc/self/autotls-cache".into(),
        "/sys/autotls-cache".into(),
    ]
}

#[tokio::test]
async fn an_unusable_cache_directory_is_a_cache_error_from_start_and_bind() {
    let scratch = tempfile::tempdir().expect("tempdir");
    for dir in unusable_cache_dirs(scratch.path()) {
        let tls = AutoTls::new(["a.test"]).directory(NOWHERE).cache_dir(&dir);
        let err = tls
            .start()
            .expect_err(&format!("start with cache dir {}", dir.display()));
        assert_eq!(err.kind(), ErrorKind::Cache, "{}: {err}", dir.display());
        assert!(
            err.to_string().contains(&dir.display().to_string()),
            "the message names the directory {}: {err}",
            dir.display()
        );
        assert!(
            err.source().is_some(),
            "{err} has the io::Error as its source"
        );

        let tls = AutoTls::new(["a.test"]).directory(NOWHERE).cache_dir(&dir);
        let err = tls
            .bind("127.0.0.1:0")
            .await
            .expect_err(&format!("bind with cache dir {}", dir.display()));
        assert_eq!(err.kind(), ErrorKind::Cache, "{}: {err}", dir.display());
    }
}
