//! The [`AutoTls`] builder, validated domain names and [`ConfigError`].

use std::fmt;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::state::{State, Tasks};

/// Let's Encrypt's production directory, the default.
pub const LETS_ENCRYPT_PRODUCTION: &str = "https://acme-v02.api.letsencrypt.org/directory";
/// Let's Encrypt's staging directory: untrusted certificates, generous rate limits.
pub const LETS_ENCRYPT_STAGING: &str = "https://acme-staging-v02.api.letsencrypt.org/directory";

/// The longest DNS name, in bytes, without the trailing dot (RFC 1035).
const MAX_NAME_LEN: usize = 253;
/// The longest DNS label, in bytes.
const MAX_LABEL_LEN: usize = 63;

/// Which ACME challenge proves control of a name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Challenge {
    /// TLS-ALPN-01 (RFC 8737): answered by [`AutoTlsListener`](crate::AutoTlsListener) on the
    /// HTTPS port; needs nothing else.
    TlsAlpn01,
    /// HTTP-01 (RFC 8555 §8.3): answered on the HTTP port by
    /// [`AutoTls::http_redirect`] or by the layer on an app served there.
    Http01,
}

impl Challenge {
    /// The challenge's name in ACME, e.g. `"tls-alpn-01"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Challenge::TlsAlpn01 => "tls-alpn-01",
            Challenge::Http01 => "http-01",
        }
    }
}

impl fmt::Display for Challenge {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Challenge {
    type Err = ConfigError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "tls-alpn-01" => Ok(Challenge::TlsAlpn01),
            "http-01" => Ok(Challenge::Http01),
            _ => Err(ConfigError::new(
                ConfigErrorKind::Challenge,
                s,
                "unknown challenge type: use `tls-alpn-01` or `http-01`",
            )),
        }
    }
}

/// Which ACME client obtains the certificates.
///
/// Both engines keep every promise of the crate — one certificate per name, the shared
/// account, the cache, retries, renewal timing, events, both challenges — because the crate's
/// manager does all of that and asks the engine only for one certificate at a time. The
/// README's "Choosing an engine" has measured figures for both.
///
/// ```
/// use autotls::{AutoTls, Engine};
///
/// let engine: Engine = "instant-acme".parse()?;
/// let tls = AutoTls::new(["example.com"]).engine(engine);
/// # Ok::<(), autotls::ConfigError>(())
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Engine {
    /// [instant-acme](https://crates.io/crates/instant-acme), driven by the crate's own order
    /// loop over a pooled HTTP client (the default): the fastest, with `Retry-After`, `badNonce`
    /// retries and external account binding.
    #[default]
    InstantAcme,
    /// [rustls-acme](https://crates.io/crates/rustls-acme)'s `AcmeState`, one per order.
    /// Needs the crate's `rustls-acme` cargo feature: without it, choosing this engine is a
    /// [`ConfigError`] of kind [`ConfigErrorKind::Engine`] (reported like every other
    /// configuration error), so code naming it compiles with any feature set.
    RustlsAcme,
}

impl Engine {
    /// The engine's name, as `AUTOTLS_ENGINE` spells it: `"instant-acme"` or `"rustls-acme"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Engine::InstantAcme => "instant-acme",
            Engine::RustlsAcme => "rustls-acme",
        }
    }
}

impl fmt::Display for Engine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Engine {
    type Err = ConfigError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "instant-acme" => Ok(Engine::InstantAcme),
            "rustls-acme" => Ok(Engine::RustlsAcme),
            _ => Err(ConfigError::new(
                ConfigErrorKind::Engine,
                s,
                "unknown engine: use `instant-acme` or `rustls-acme`",
            )),
        }
    }
}

/// What is wrong with a configuration, see [`ConfigError::kind`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConfigErrorKind {
    /// A domain name is not one the crate can order a certificate for.
    DomainName,
    /// The contact is not a `mailto:` URL.
    Contact,
    /// The directory URL is not an `https://` URL.
    Directory,
    /// The PEM given as the directory's trusted root holds no certificate.
    DirectoryRoot,
    /// An unknown challenge type.
    Challenge,
    /// The external account binding key is malformed.
    ExternalAccount,
    /// The ACME engine is unknown, not built in (its cargo feature is off), or cannot do what
    /// the rest of the configuration asks.
    Engine,
}

/// A configuration value the crate cannot work with, naming the value and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    kind: ConfigErrorKind,
    input: String,
    reason: &'static str,
}

impl ConfigError {
    pub(crate) fn new(kind: ConfigErrorKind, input: &str, reason: &'static str) -> Self {
        Self {
            kind,
            input: input.to_owned(),
            reason,
        }
    }

    /// What kind of value is wrong.
    pub fn kind(&self) -> ConfigErrorKind {
        self.kind
    }

    /// The offending value, as it was given.
    pub fn input(&self) -> &str {
        &self.input
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = match self.kind {
            ConfigErrorKind::DomainName => "domain name",
            ConfigErrorKind::Contact => "contact",
            ConfigErrorKind::Directory => "ACME directory URL",
            ConfigErrorKind::DirectoryRoot => "directory root certificate",
            ConfigErrorKind::Challenge => "challenge type",
            ConfigErrorKind::ExternalAccount => "external account binding",
            ConfigErrorKind::Engine => "ACME engine",
        };
        write!(f, "invalid {what} {:?}: {}", self.input, self.reason)
    }
}

impl std::error::Error for ConfigError {}

/// Checks and normalizes one domain name: lowercase, no trailing dot, LDH labels.
///
/// IP literals and wildcards are refused: Let's Encrypt issues neither through the
/// challenges this crate answers (wildcards need DNS-01).
pub(crate) fn normalize_name(input: &str) -> Result<String, ConfigError> {
    let err = |reason| Err(ConfigError::new(ConfigErrorKind::DomainName, input, reason));
    let name = input.strip_suffix('.').unwrap_or(input);
    if name.is_empty() {
        return err("the name is empty");
    }
    if name.len() > MAX_NAME_LEN {
        return err("longer than 253 bytes");
    }
    if name.parse::<IpAddr>().is_ok()
        || (name.starts_with('[') && name.ends_with(']'))
        || is_dotted_numeric(name)
    {
        return err("IP addresses are not supported; give a DNS name");
    }
    if name.contains('*') {
        return err("wildcard names are not supported (they need the DNS-01 challenge)");
    }
    let name = name.to_ascii_lowercase();
    for label in name.split('.') {
        if label.is_empty() {
            return err("it has an empty label (two dots in a row, or a leading dot)");
        }
        if label.len() > MAX_LABEL_LEN {
            return err("a label is longer than 63 bytes");
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        {
            return err(
                "only letters, digits, '-' and '.' are allowed (use the punycode form of international names)",
            );
        }
        if label.starts_with('-') || label.ends_with('-') {
            return err("a label starts or ends with '-'");
        }
    }
    Ok(name)
}

/// `1.2.3` or `10.1` are IP-like strings that also must not be ordered.
fn is_dotted_numeric(name: &str) -> bool {
    name.split('.')
        .all(|label| !label.is_empty() && label.bytes().all(|b| b.is_ascii_digit()))
}

/// Credentials for a CA that requires external account binding (RFC 8555 §7.3.4).
#[derive(Clone)]
pub struct ExternalAccount {
    pub(crate) key_id: String,
    pub(crate) hmac_key: Vec<u8>,
}

impl fmt::Debug for ExternalAccount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ExternalAccount")
            .field("key_id", &self.key_id)
            .finish_non_exhaustive()
    }
}

/// Everything the builder sets; immutable once the listener starts.
#[derive(Clone, Debug)]
pub(crate) struct Config {
    /// Validated names, or the first invalid one.
    pub(crate) names: Result<Vec<String>, ConfigError>,
    pub(crate) contact: Vec<String>,
    pub(crate) cache_dir: PathBuf,
    pub(crate) directory: String,
    pub(crate) directory_roots: Vec<Vec<u8>>,
    pub(crate) challenge: Option<Challenge>,
    pub(crate) external_account: Option<ExternalAccount>,
    pub(crate) handshake_timeout: Duration,
    pub(crate) max_pending_handshakes: usize,
    pub(crate) retry_min: Duration,
    pub(crate) retry_max: Duration,
    pub(crate) engine: Engine,
    /// A rustls-acme `DirCache` directory to import at start.
    pub(crate) rustls_acme_import: Option<PathBuf>,
    /// The first error a builder call found, reported by `bind`/`start`.
    pub(crate) deferred: Option<ConfigError>,
}

impl Config {
    /// Local mode: no names, or only `localhost`.
    pub(crate) fn is_local(&self) -> bool {
        matches!(&self.names, Ok(names) if names.iter().all(|n| n == "localhost"))
    }

    pub(crate) fn check(&self) -> Result<&[String], ConfigError> {
        let names = self.names.as_ref().map_err(Clone::clone)?;
        if let Some(err) = &self.deferred {
            return Err(err.clone());
        }
        self.check_engine()?;
        Ok(names)
    }

    /// The engine is built in and can do what the rest of the configuration asks.
    pub(crate) fn check_engine(&self) -> Result<(), ConfigError> {
        if self.engine != Engine::RustlsAcme {
            return Ok(());
        }
        if !cfg!(feature = "rustls-acme") {
            return Err(ConfigError::new(
                ConfigErrorKind::Engine,
                Engine::RustlsAcme.as_str(),
                "this build has no rustls-acme engine: enable autotls's `rustls-acme` cargo feature",
            ));
        }
        if self.external_account.is_some() {
            return Err(ConfigError::new(
                ConfigErrorKind::Engine,
                Engine::RustlsAcme.as_str(),
                "rustls-acme cannot register with external account binding: use Engine::InstantAcme",
            ));
        }
        Ok(())
    }
}

/// Automatic HTTPS for a tower app: the builder, the layer and the source of listeners.
///
/// `AutoTls` is a cheap [`Clone`] (two `Arc`s): the clone given to `.layer(..)`, the one that
/// serves the HTTP port and the one that binds the HTTPS listener share one certificate
/// manager and one set of pending challenges.
///
/// ```no_run
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// use autotls::AutoTls;
///
/// let tls = AutoTls::try_new(["example.com", "www.example.com"])?
///     .contact("mailto:ops@example.com")
///     .cache_dir("/cert-cache");
/// # Ok(()) }
/// ```
///
/// Builder calls take effect until the first [`bind`](AutoTls::bind) or
/// [`start`](AutoTls::start); after that the configuration is fixed.
#[derive(Clone)]
pub struct AutoTls {
    pub(crate) config: Arc<Config>,
    pub(crate) state: Arc<State>,
    pub(crate) tasks: Arc<Tasks>,
}

impl fmt::Debug for AutoTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AutoTls")
            .field("names", &self.config.names)
            .field("directory", &self.config.directory)
            .field("cache_dir", &self.config.cache_dir)
            .finish_non_exhaustive()
    }
}

impl AutoTls {
    /// Manages certificates for exactly these names; nothing else is ever ordered.
    ///
    /// Names are lowercased and a trailing dot is dropped. An invalid name does not panic:
    /// it is reported by [`bind`](AutoTls::bind), [`start`](AutoTls::start) and
    /// [`validate`](AutoTls::validate). Use [`try_new`](AutoTls::try_new) to get the error here.
    ///
    /// No names, or only `localhost`, selects local mode: a self-signed certificate for
    /// `localhost`, `127.0.0.1` and `::1`, generated at start, and no CA is contacted.
    pub fn new<I, S>(names: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let names = collect_names(names);
        let config = Config {
            names,
            contact: Vec::new(),
            cache_dir: PathBuf::from("autotls-cache"),
            directory: LETS_ENCRYPT_PRODUCTION.to_owned(),
            directory_roots: Vec::new(),
            challenge: None,
            external_account: None,
            handshake_timeout: Duration::from_secs(10),
            max_pending_handshakes: 1024,
            retry_min: Duration::from_secs(60),
            retry_max: Duration::from_secs(60 * 60),
            engine: Engine::InstantAcme,
            rustls_acme_import: None,
            deferred: None,
        };
        let state = State::new(&config);
        Self {
            config: Arc::new(config),
            state: Arc::new(state),
            tasks: Arc::default(),
        }
    }

    /// Like [`new`](AutoTls::new), but returns the first invalid name as an error.
    pub fn try_new<I, S>(names: I) -> Result<Self, ConfigError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let tls = Self::new(names);
        tls.validate()?;
        Ok(tls)
    }

    /// The first configuration error any builder call found, if any.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.config.check().map(|_| ())
    }

    /// The managed names, normalized (empty in local mode or when a name was invalid).
    pub fn names(&self) -> &[String] {
        self.config.names.as_deref().unwrap_or(&[])
    }

    fn config_mut(&mut self) -> &mut Config {
        Arc::make_mut(&mut self.config)
    }

    fn defer(&mut self, err: ConfigError) {
        let config = self.config_mut();
        if config.deferred.is_none() {
            config.deferred = Some(err);
        }
    }

    /// Adds a contact for the ACME account, e.g. `"mailto:ops@example.com"`.
    ///
    /// A bare address (`ops@example.com`) gets the `mailto:` prefix.
    #[must_use]
    pub fn contact(mut self, contact: impl AsRef<str>) -> Self {
        let contact = contact.as_ref().trim();
        let url = if contact.starts_with("mailto:") {
            contact.to_owned()
        } else {
            format!("mailto:{contact}")
        };
        let address = &url["mailto:".len()..];
        let valid = address.split_once('@').is_some_and(|(user, host)| {
            !user.is_empty() && !host.is_empty() && !address.contains(char::is_whitespace)
        });
        if valid {
            self.config_mut().contact.push(url);
        } else {
            self.defer(ConfigError::new(
                ConfigErrorKind::Contact,
                contact,
                "expected an email address such as `mailto:ops@example.com`",
            ));
        }
        self
    }

    /// Where certificates and the account key are kept (default `./autotls-cache`).
    ///
    /// Make it persistent (a Docker volume): without it every restart orders new certificates
    /// and soon hits the CA's rate limits. The directory is created with mode 0700.
    #[must_use]
    pub fn cache_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.config_mut().cache_dir = dir.into();
        self
    }

    /// The ACME directory URL (default: Let's Encrypt production).
    #[must_use]
    pub fn directory(mut self, url: impl AsRef<str>) -> Self {
        let url = url.as_ref().trim();
        if url.starts_with("https://") && url.len() > "https://".len() {
            self.config_mut().directory = url.to_owned();
        } else {
            self.defer(ConfigError::new(
                ConfigErrorKind::Directory,
                url,
                "expected an https:// URL",
            ));
        }
        self
    }

    /// Uses Let's Encrypt's staging directory: for trying things out without rate limits.
    #[must_use]
    pub fn staging(self) -> Self {
        self.directory(LETS_ENCRYPT_STAGING)
    }

    /// Trusts the certificates in this PEM, besides the system's roots, for the directory's
    /// HTTPS (e.g. a test CA such as Pebble).
    #[must_use]
    pub fn directory_root(mut self, pem: impl AsRef<[u8]>) -> Self {
        let pem = pem.as_ref();
        let found = rustls_pemfile::certs(&mut &pem[..]).any(|c| c.is_ok());
        if found {
            self.config_mut().directory_roots.push(pem.to_vec());
        } else {
            let shown = String::from_utf8_lossy(&pem[..pem.len().min(40)]).into_owned();
            self.defer(ConfigError::new(
                ConfigErrorKind::DirectoryRoot,
                &shown,
                "no PEM certificate found",
            ));
        }
        self
    }

    /// Uses only this challenge type. By default TLS-ALPN-01 is tried first and HTTP-01 is
    /// the fallback once the HTTP port is served (see [`AutoTls::http_redirect`]).
    #[must_use]
    pub fn challenge(mut self, challenge: Challenge) -> Self {
        self.config_mut().challenge = Some(challenge);
        self
    }

    /// External account binding for CAs that require it (ZeroSSL, Google Trust Services, ...):
    /// the key identifier and the base64url-encoded HMAC key the CA gave you.
    #[must_use]
    pub fn external_account(mut self, key_id: impl Into<String>, hmac_key_b64: &str) -> Self {
        match decode_base64url(hmac_key_b64.trim()) {
            Some(hmac_key) if !hmac_key.is_empty() => {
                self.config_mut().external_account = Some(ExternalAccount {
                    key_id: key_id.into(),
                    hmac_key,
                });
            }
            _ => self.defer(ConfigError::new(
                ConfigErrorKind::ExternalAccount,
                "<hmac key>",
                "the HMAC key must be base64url, as the CA hands it out",
            )),
        }
        self
    }

    /// How long a client may take to finish its TLS handshake (default 10 s).
    #[must_use]
    pub fn handshake_timeout(mut self, timeout: Duration) -> Self {
        self.config_mut().handshake_timeout = timeout;
        self
    }

    /// How many handshakes may be in progress at once (default 1024). At the cap the oldest
    /// unfinished handshake is closed to admit the new connection, so a flood of silent
    /// connections cannot lock real clients out (see [`AutoTlsListener`](crate::AutoTlsListener)).
    #[must_use]
    pub fn max_pending_handshakes(mut self, max: usize) -> Self {
        self.config_mut().max_pending_handshakes = max.max(1);
        self
    }

    /// The retry schedule after a failed order: the first wait, doubled on each failure up
    /// to the cap, with ±10 % jitter (defaults: 1 min, capped at 1 h). A `Retry-After` from
    /// the CA that is later wins.
    #[must_use]
    pub fn retry_backoff(mut self, first: Duration, cap: Duration) -> Self {
        let config = self.config_mut();
        config.retry_min = first.max(Duration::from_millis(10));
        config.retry_max = cap.max(config.retry_min);
        self
    }

    /// The ACME client that obtains certificates (default [`Engine::InstantAcme`]).
    ///
    /// [`Engine::RustlsAcme`] needs the `rustls-acme` cargo feature and cannot be combined
    /// with [`external_account`](AutoTls::external_account); either mistake is a
    /// [`ConfigError`] of kind [`ConfigErrorKind::Engine`], reported by
    /// [`validate`](AutoTls::validate), [`bind`](AutoTls::bind) and [`start`](AutoTls::start).
    /// Both engines share the cache layout and the account key, so switching keeps the
    /// account and every cached certificate.
    ///
    /// ```
    /// use autotls::{AutoTls, Engine};
    ///
    /// let tls = AutoTls::new(["example.com"]).engine(Engine::RustlsAcme);
    /// assert_eq!(tls.validate().is_ok(), cfg!(feature = "rustls-acme"));
    /// ```
    #[must_use]
    pub fn engine(mut self, engine: Engine) -> Self {
        self.config_mut().engine = engine;
        self
    }

    /// Adopts the account and certificates of a rustls-acme `DirCache` directory, so moving
    /// from rustls-acme places no new order and registers no new account.
    ///
    /// At [`start`](AutoTls::start), before cached certificates are loaded, the crate reads
    /// `dir` and copies into its own cache (`<cache_dir>/<directory>/`) what was written there
    /// for the configured ACME directory:
    /// - the account key (`cached_account_<hash>`, hashed from the contacts and the directory
    ///   URL): found when [`contact`](AutoTls::contact) is given the same contacts, in the same
    ///   order, as rustls-acme's `AcmeConfig::contact` was (or none, if it had none);
    /// - every certificate (`cached_cert_<hash>`, hashed from its domain list and the
    ///   directory URL) that is still valid, as `<name>.pem` for each managed name it covers
    ///   (a rustls-acme certificate usually covers all its domains).
    ///
    /// Nothing is imported over a file the crate already has, so the call can stay in the
    /// program: later starts import nothing. Each imported item is logged at `info`, each
    /// skipped one at `warn` or `debug` with the reason. `dir` is only read; it may be the same
    /// directory as [`cache_dir`](AutoTls::cache_dir) (the crate's files live in a
    /// subdirectory of it). A missing `dir` is logged and skipped, not an error. Works with
    /// either [`Engine`], without the `rustls-acme` feature.
    ///
    /// ```no_run
    /// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
    /// use autotls::AutoTls;
    ///
    /// let tls = AutoTls::new(["example.com"])
    ///     .contact("mailto:ops@example.com") // as given to rustls-acme's AcmeConfig
    ///     .cache_dir("/cert-cache")
    ///     .import_rustls_acme_cache("/rustls_acme_cache");
    /// let listener = tls.bind("[::]:443").await?; // imports, then serves the imported certificates
    /// # Ok(()) }
    /// ```
    #[must_use]
    pub fn import_rustls_acme_cache(mut self, dir: impl Into<PathBuf>) -> Self {
        self.config_mut().rustls_acme_import = Some(dir.into());
        self
    }
}

fn collect_names<I, S>(names: I) -> Result<Vec<String>, ConfigError>
where
    I: IntoIterator<Item = S>,
    S: AsRef<str>,
{
    let mut out: Vec<String> = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for name in names {
        let name = normalize_name(name.as_ref())?;
        if seen.insert(name.clone()) {
            out.push(name);
        }
    }
    if out.len() > 1 && out.iter().any(|n| n == "localhost") {
        return Err(ConfigError::new(
            ConfigErrorKind::DomainName,
            "localhost",
            "no CA issues certificates for localhost; use it alone for local mode",
        ));
    }
    Ok(out)
}

/// Decodes base64url with or without padding (also accepts the standard alphabet).
fn decode_base64url(s: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let mut acc = 0u32;
    let mut bits = 0u32;
    for b in s.trim_end_matches('=').bytes() {
        let v = match b {
            b'A'..=b'Z' => b - b'A',
            b'a'..=b'z' => b - b'a' + 26,
            b'0'..=b'9' => b - b'0' + 52,
            b'-' | b'+' => 62,
            b'_' | b'/' => 63,
            _ => return None,
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_lowercased_and_lose_the_trailing_dot() {
        assert_eq!(
            normalize_name("WWW.Example.COM.").unwrap(),
            "www.example.com"
        );
    }

    #[test]
    fn bad_names_are_refused_with_the_name_in_the_error() {
        for bad in [
            "",
            ".",
            "1.2.3.4",
            "::1",
            "[::1]",
            "*.example.com",
            "exa mple.com",
            "a..b",
            "-a.com",
            "ex_ample.com",
            "ex/ample.com",
        ] {
            let err = normalize_name(bad).unwrap_err();
            assert_eq!(err.kind(), ConfigErrorKind::DomainName);
            assert!(err.to_string().contains(&format!("{bad:?}")), "{err}");
        }
        let long = format!("{}.com", "a.".repeat(126));
        assert!(long.len() > 253);
        assert!(normalize_name(&long)
            .unwrap_err()
            .to_string()
            .contains("253"));
    }

    #[test]
    fn engines_parse_and_rustls_acme_needs_its_feature_and_no_eab() {
        assert_eq!("rustls-acme".parse::<Engine>(), Ok(Engine::RustlsAcme));
        assert_eq!(" Instant-ACME ".parse::<Engine>(), Ok(Engine::InstantAcme));
        let err = "certbot".parse::<Engine>().unwrap_err();
        assert_eq!(err.kind(), ConfigErrorKind::Engine);
        assert!(AutoTls::new(["a.test"]).validate().is_ok());

        let chosen = AutoTls::new(["a.test"]).engine(Engine::RustlsAcme);
        let result = chosen.validate();
        assert_eq!(result.is_ok(), cfg!(feature = "rustls-acme"), "{result:?}");
        if let Err(err) = result {
            assert_eq!(err.kind(), ConfigErrorKind::Engine);
            assert!(
                err.to_string().contains("`rustls-acme` cargo feature"),
                "{err}"
            );
        }
        let err = chosen
            .external_account("kid", "aGk")
            .validate()
            .unwrap_err();
        assert_eq!(err.kind(), ConfigErrorKind::Engine);
    }

    #[test]
    fn base64url_decodes_with_and_without_padding() {
        assert_eq!(decode_base64url("aGk").unwrap(), b"hi");
        assert_eq!(decode_base64url("aGk=").unwrap(), b"hi");
        assert!(decode_base64url("a b").is_none());
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(512))]

        /// Any input: no panic; an accepted name is lowercase LDH labels of 1..=63 bytes,
        /// at most 253 bytes, and normalizing it again changes nothing.
        #[test]
        fn any_name_is_refused_or_normalized_to_a_valid_one(input in "\\PC{0,300}") {
            if let Ok(name) = normalize_name(&input) {
                proptest::prop_assert!(name.len() <= 253);
                proptest::prop_assert!(name.split('.').all(|l| !l.is_empty() && l.len() <= 63));
                proptest::prop_assert!(name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.'));
                proptest::prop_assert_eq!(normalize_name(&name), Ok(name.clone()));
            }
        }
    }
}
