//! The second engine: rustls-acme's `AcmeState`, one per order (feature `rustls-acme`).
//!
//! For one name the engine builds a fresh state whose cache hands it the shared account key
//! and captures the certificate it stores, polls it (on the caller's tokio task) until that
//! certificate is stored or it reports an error, and drops it. The state never retries on its
//! own here: scheduling, retries, renewal timing, the cache files and events stay the
//! manager's, as with the default engine.
//!
//! Challenge answers stay inside the state's resolver; it is published in
//! [`Challenges`](super::Challenges) as an [`AnswerSource`] for the name, so the listener and
//! the layer ask it, without naming this engine, while the order runs.
//!
//! What rustls-acme's API cannot give, and so this engine cannot either: the `Retry-After`
//! header (its HTTP client drops headers of error answers; a `rateLimited` problem's "retry
//! after `<date>` UTC" detail is read instead), a `badNonce` retry of one request (the whole
//! order is restarted, at most [`NONCE_RESTARTS`] times), external account binding (refused
//! by the configuration check), and request timeouts (one bound, [`ORDER_LIMIT`], per order).
//!
//! rustls-acme is runtime-agnostic: its futures are polled by our tokio task; its sockets and
//! timers register with async-io's reactor thread (started by async-io on first use), which
//! is an I/O driver, not a second executor.

use std::fmt;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use futures_core::Stream;
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use rustls::server::{Acceptor, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, ClientConnection, RootCertStore};
use rustls_acme::acme::{Account, AcmeError, Directory};
use rustls_acme::{
    AccountCache, AcmeConfig, AcmeState, CertCache, EventError, EventOk, OrderError,
    ResolvesServerCertAcme, UseChallenge,
};

use super::account_gate::AccountGate;
use super::challenges::AnswerSource;
use super::engine::{BoxFuture, Engine, ObtainError};
use crate::cache::{Cache, ACCOUNT_KEY};
use crate::config::{Challenge, Config};
use crate::error::Error;
use crate::state::State;

/// A whole order (rustls-acme waits 1 s, 2 s, 4 s ... between its polls and sets no request
/// timeouts): past this it is abandoned and the manager's retry schedule takes over.
const ORDER_LIMIT: Duration = Duration::from_secs(5 * 60);

/// rustls-acme fails the whole order when the CA rejects a nonce; the engine starts a new
/// order at once, this many times, before reporting the failure to the manager.
const NONCE_RESTARTS: u32 = 10;

/// The rustls-acme engine; one per [`AutoTls`](crate::AutoTls), shared by every name.
pub(crate) struct RustlsAcme {
    client_config: Arc<ClientConfig>,
    directory: String,
    contact: Vec<String>,
    cache: Cache,
    state: Arc<State>,
    /// The shared account key (PKCS#8 DER): loaded or created and registered once, by
    /// whichever name needs it first; the others wait. A failed attempt is made again once
    /// per retry step, for all names (see [`AccountGate`]).
    account_key: AccountGate<Arc<Vec<u8>>>,
}

impl RustlsAcme {
    pub(crate) fn new(config: &Config, state: Arc<State>, cache: Cache) -> Result<Self, Error> {
        Ok(Self {
            client_config: Arc::new(super::ca_client_config(config)?),
            directory: config.directory.clone(),
            contact: config.contact.clone(),
            cache,
            state,
            account_key: AccountGate::new(config.retry_min, config.retry_max),
        })
    }

    /// The shared account key: from memory, from the cache (`account-key.pem`, the format
    /// the default engine writes too), or newly created, registered and cached; attempted at
    /// most once per retry step.
    async fn account_key(&self) -> Result<Arc<Vec<u8>>, ObtainError> {
        self.account_key.get(|| self.load_or_register()).await
    }

    /// The key in the cache, or a new one, registered and then cached.
    async fn load_or_register(&self) -> Result<Arc<Vec<u8>>, ObtainError> {
        let cached = self
            .cache
            .read(ACCOUNT_KEY)
            .map_err(|e| ObtainError::new(format!("reading the account key: {e}")))?;
        let key = match cached.and_then(|pem| self.usable_account_key(&pem)) {
            Some(der) => {
                tracing::debug!("ACME account key loaded from the cache");
                der
            }
            None => {
                let der = Account::generate_key_pair();
                self.register(&der).await?;
                match account_key_pem(&der) {
                    Ok(pem) => {
                        if let Err(e) = self.cache.write(ACCOUNT_KEY, pem.as_bytes()) {
                            tracing::error!(error = %e, dir = %self.cache.dir().display(), "the new ACME account key could not be cached; a restart will register another account");
                        }
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "the new ACME account key could not be encoded; a restart will register another account")
                    }
                }
                der
            }
        };
        Ok(Arc::new(key))
    }

    /// The PKCS#8 DER in a cached `account-key.pem`, if it is an ECDSA P-256 key (the only
    /// kind either engine signs with); anything else is moved aside.
    fn usable_account_key(&self, pem: &[u8]) -> Option<Vec<u8>> {
        match rustls_pemfile::private_key(&mut &pem[..]) {
            Ok(Some(PrivateKeyDer::Pkcs8(der))) => {
                let p256 = rcgen::KeyPair::try_from(&der)
                    .is_ok_and(|k| k.algorithm() == &rcgen::PKCS_ECDSA_P256_SHA256);
                if p256 {
                    return Some(der.secret_pkcs8_der().to_vec());
                }
                self.cache
                    .quarantine(ACCOUNT_KEY, "not an ECDSA P-256 private key");
            }
            _ => self
                .cache
                .quarantine(ACCOUNT_KEY, "not a PKCS#8 private key"),
        }
        None
    }

    /// Registers a new account for `key` once, before any order, so that orders running side
    /// by side find it (each rustls-acme order looks its account up by key).
    async fn register(&self, key: &[u8]) -> Result<(), ObtainError> {
        // The directory is named: rustls-acme's errors do not say which CA failed.
        let doing = format!("registering an ACME account at {}", self.directory);
        let mut restarts = 0;
        let account = loop {
            let registered = async {
                let directory = Directory::discover(&self.client_config, &self.directory).await?;
                Account::create_with_keypair(&self.client_config, directory, &self.contact, key)
                    .await
            };
            let result = tokio::time::timeout(ORDER_LIMIT, registered)
                .await
                .map_err(|_| ObtainError::new(format!("{doing} timed out")))?;
            match result.map_err(|e| describe_acme(&doing, e)) {
                Ok(account) => break account,
                Err(failure) if failure.bad_nonce && restarts < NONCE_RESTARTS => {
                    restarts += 1;
                    tracing::debug!(error = %failure.error, restarts, "the CA rejected a nonce; registering again");
                }
                Err(failure) => return Err(failure.error),
            }
        };
        tracing::info!(id = %account.kid, directory = %self.directory, "ACME account registered");
        Ok(())
    }

    /// One certificate by one challenge type: a new order whenever the CA rejected a nonce.
    async fn obtain_with(&self, name: &str, challenge: Challenge) -> Result<String, ObtainError> {
        let key = self.account_key().await?;
        let mut restarts = 0;
        loop {
            match self.order(name, challenge, &key).await {
                Err(failure) if failure.bad_nonce && restarts < NONCE_RESTARTS => {
                    restarts += 1;
                    tracing::debug!(name, error = %failure.error, restarts, "the CA rejected a nonce; rustls-acme restarts the order");
                }
                result => return result.map_err(|f| f.error),
            }
        }
    }

    /// One order: a fresh state, driven until it stores its certificate or fails.
    async fn order(
        &self,
        name: &str,
        challenge: Challenge,
        key: &Arc<Vec<u8>>,
    ) -> Result<String, Failure> {
        let captured = Arc::new(Mutex::new(None));
        let cache = StateCache {
            account_key: key.clone(),
            captured: captured.clone(),
            cache: self.cache.clone(),
        };
        let challenge_type = match challenge {
            Challenge::TlsAlpn01 => UseChallenge::TlsAlpn01,
            Challenge::Http01 => UseChallenge::Http01,
        };
        let mut acme: AcmeState<std::io::Error> =
            AcmeConfig::new_with_client_config([name], self.client_config.clone())
                .directory(&self.directory)
                .contact(&self.contact)
                .challenge_type(challenge_type)
                .cache(cache)
                .state();
        let _published = Published::new(&self.state, name, acme.resolver());
        let driven = async {
            loop {
                let event = std::future::poll_fn(|cx| Pin::new(&mut acme).poll_next(cx)).await;
                match event {
                    // The state stores what it deployed right after deploying it.
                    Some(Ok(EventOk::CertCacheStore)) => return Ok(()),
                    Some(Ok(event)) => tracing::trace!(name, ?event, "rustls-acme"),
                    Some(Err(EventError::Order(err))) => return Err(describe_order(name, err)),
                    Some(Err(err)) => return Err(Failure::from(ObtainError::new(err.to_string()))),
                    None => return Err(Failure::from(ObtainError::new("rustls-acme stopped"))),
                }
            }
        };
        tokio::time::timeout(ORDER_LIMIT, driven)
            .await
            .map_err(|_| {
                ObtainError::new(format!(
                    "the order did not complete within {} s",
                    ORDER_LIMIT.as_secs()
                ))
            })??;
        let pem = captured
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
            .ok_or_else(|| ObtainError::new("rustls-acme stored no certificate"))?;
        String::from_utf8(pem)
            .map_err(|_| Failure::from(ObtainError::new("the certificate is not PEM text")))
    }
}

impl Engine for RustlsAcme {
    fn obtain<'a>(
        &'a self,
        name: &'a str,
        challenge: Challenge,
    ) -> BoxFuture<'a, Result<String, ObtainError>> {
        Box::pin(self.obtain_with(name, challenge))
    }
}

/// The state's cache: it hands out the shared account key, never a certificate (the manager
/// decided to order), and captures the certificate the state stores.
struct StateCache {
    account_key: Arc<Vec<u8>>,
    captured: Arc<Mutex<Option<Vec<u8>>>>,
    cache: Cache,
}

#[async_trait]
impl CertCache for StateCache {
    type EC = std::io::Error;

    async fn load_cert(&self, _: &[String], _: &str) -> Result<Option<Vec<u8>>, Self::EC> {
        Ok(None)
    }

    async fn store_cert(&self, _: &[String], _: &str, cert: &[u8]) -> Result<(), Self::EC> {
        *self.captured.lock().unwrap_or_else(|p| p.into_inner()) = Some(cert.to_vec());
        Ok(())
    }
}

#[async_trait]
impl AccountCache for StateCache {
    type EA = std::io::Error;

    async fn load_account(&self, _: &[String], _: &str) -> Result<Option<Vec<u8>>, Self::EA> {
        Ok(Some(self.account_key.to_vec()))
    }

    /// Not reached (the key is always there); kept correct: the shared file, as PEM.
    async fn store_account(&self, _: &[String], _: &str, key: &[u8]) -> Result<(), Self::EA> {
        let pem = account_key_pem(key)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
        self.cache.write(ACCOUNT_KEY, pem.as_bytes())
    }
}

/// The state's resolver, answering for one name while its order runs.
struct ResolverSource {
    name: String,
    resolver: Arc<ResolvesServerCertAcme>,
    /// Offers `acme-tls/1` for `name`: the ClientHello the resolver is asked with.
    hello: Arc<ClientConfig>,
}

impl fmt::Debug for ResolverSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResolverSource")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl AnswerSource for ResolverSource {
    fn http_answer(&self, token: &str) -> Option<String> {
        self.resolver.get_http_01_key_auth(token)
    }

    /// The resolver keeps its validation certificate to itself and hands it out only for a
    /// ClientHello; rustls builds one only from bytes, so make them: a client's first flight
    /// for `name` offering `acme-tls/1`, read back by a server-side acceptor.
    fn tls_alpn_cert(&self) -> Option<Arc<CertifiedKey>> {
        let server_name = ServerName::try_from(self.name.clone()).ok()?;
        let mut client = ClientConnection::new(self.hello.clone(), server_name).ok()?;
        let mut flight = Vec::new();
        client.write_tls(&mut flight).ok()?;
        let mut acceptor = Acceptor::default();
        acceptor.read_tls(&mut &flight[..]).ok()?;
        let accepted = acceptor.accept().ok()??;
        self.resolver.resolve(accepted.client_hello())
    }
}

/// The state's resolver published for its name; withdrawn however the order ends.
struct Published<'a> {
    state: &'a State,
    name: &'a str,
}

impl<'a> Published<'a> {
    fn new(state: &'a State, name: &'a str, resolver: Arc<ResolvesServerCertAcme>) -> Self {
        let hello = ClientConfig::builder_with_provider(super::provider())
            .with_safe_default_protocol_versions()
            .map(|b| {
                let mut config = b
                    .with_root_certificates(RootCertStore::empty())
                    .with_no_client_auth();
                config.alpn_protocols = vec![super::ACME_TLS_ALPN.to_vec()];
                Arc::new(config)
            });
        match hello {
            Ok(hello) => state.challenges.publish_source(
                name,
                Arc::new(ResolverSource {
                    name: name.to_owned(),
                    resolver,
                    hello,
                }),
            ),
            Err(e) => {
                tracing::error!(name, error = %e, "no TLS client config for TLS-ALPN-01 answers")
            }
        }
        Self { state, name }
    }
}

impl Drop for Published<'_> {
    fn drop(&mut self) {
        self.state.challenges.clear_source(self.name);
    }
}

/// An order's failure, with what the engine itself acts on.
struct Failure {
    error: ObtainError,
    /// The CA rejected a nonce: worth a new order at once.
    bad_nonce: bool,
}

impl From<ObtainError> for Failure {
    fn from(error: ObtainError) -> Self {
        Self {
            error,
            bad_nonce: false,
        }
    }
}

/// PKCS#8 DER as the `account-key.pem` both engines read.
fn account_key_pem(der: &[u8]) -> Result<String, String> {
    let der = PrivatePkcs8KeyDer::from(der);
    rcgen::KeyPair::try_from(&der)
        .map(|k| k.serialize_pem())
        .map_err(|e| e.to_string())
}

/// An order's error, readable, with what the CA said and whether validation failed.
fn describe_order(name: &str, err: OrderError) -> Failure {
    let validation = |message: String| Failure {
        error: ObtainError {
            message,
            retry_after: None,
            validation: true,
        },
        bad_nonce: false,
    };
    match err {
        OrderError::Acme(err) => describe_acme("ordering", err),
        OrderError::BadAuth(auth) => {
            let problems: Vec<String> = auth
                .challenges
                .iter()
                .filter_map(|c| c.error.as_ref())
                .map(|p| describe_problem(p.typ.as_deref(), p.detail.as_deref()))
                .collect();
            validation(format!(
                "the CA could not validate {name} (authorization {:?}): {}",
                auth.status,
                if problems.is_empty() {
                    "no detail".to_owned()
                } else {
                    problems.join("; ")
                }
            ))
        }
        OrderError::BadOrder(order) => validation(format!(
            "the order for {name} is invalid: {}",
            order.error.as_ref().map_or_else(
                || "no detail".to_owned(),
                |p| describe_problem(p.typ.as_deref(), p.detail.as_deref())
            )
        )),
        OrderError::TooManyAttemptsAuth(domain) => validation(format!(
            "the CA did not validate {domain} within rustls-acme's five checks"
        )),
        other => Failure::from(ObtainError::new(other.to_string())),
    }
}

/// An ACME request's error. rustls-acme keeps the HTTP error type private and drops the
/// headers, so the CA's problem document is read back from the error's text.
fn describe_acme(doing: &str, err: AcmeError) -> Failure {
    let text = match &err {
        AcmeError::HttpRequest(inner) => inner.to_string(),
        _ => return Failure::from(ObtainError::new(format!("{doing}: {err}"))),
    };
    let Some((status, problem)) = parse_error_status(&text) else {
        return Failure::from(ObtainError::new(format!("{doing}: {text}")));
    };
    let (kind, detail) = problem.unwrap_or_default();
    let bad_nonce = kind.ends_with(":badNonce");
    let retry_after = (kind.ends_with(":rateLimited") || status == 429 || status == 503)
        .then(|| retry_after_in_detail(&detail))
        .flatten();
    Failure {
        error: ObtainError {
            message: format!(
                "{doing}: the CA answered {status}, {}",
                describe_problem(
                    Some(&kind).filter(|k| !k.is_empty()).map(|k| k.as_str()),
                    Some(&detail)
                )
            ),
            retry_after,
            validation: false,
        },
        bad_nonce,
    }
}

/// `non 2xx http status: 400 "<body, Debug-escaped>"` → the status and the problem's type
/// and detail (when the body is a problem document).
fn parse_error_status(text: &str) -> Option<(u16, Option<(String, String)>)> {
    let rest = text.strip_prefix("non 2xx http status: ")?;
    let (status, body) = rest.split_once(' ').unwrap_or((rest, ""));
    let status: u16 = status.parse().ok()?;
    // The body is a Rust string literal; for the ASCII JSON CAs send, JSON's escapes match.
    let body: String = serde_json::from_str(body).unwrap_or_else(|_| body.to_owned());
    let problem = serde_json::from_str::<serde_json::Value>(&body)
        .ok()
        .map(|v| {
            let field = |k: &str| v.get(k).and_then(|s| s.as_str()).unwrap_or("").to_owned();
            (field("type"), field("detail"))
        });
    Some((status, problem))
}

/// Let's Encrypt's rate-limit detail says "retry after 2024-07-15 21:04:52 UTC".
fn retry_after_in_detail(detail: &str) -> Option<SystemTime> {
    let (_, rest) = detail.split_once("retry after ")?;
    let stamp = rest.get(..19)?;
    let num = |range: std::ops::Range<usize>| stamp.get(range)?.parse::<i64>().ok();
    let (y, m, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hh, mm, ss) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) || hh > 23 || mm > 59 || ss > 60 {
        return None;
    }
    let secs = days_from_civil(y, m, d) * 86_400 + hh * 3600 + mm * 60 + ss;
    Some(UNIX_EPOCH + Duration::from_secs(u64::try_from(secs).ok()?))
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The CA's problem, readable: its type and detail.
fn describe_problem(kind: Option<&str>, detail: Option<&str>) -> String {
    format!(
        "{}: {}",
        kind.unwrap_or("problem"),
        detail.unwrap_or("no detail")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn problem_documents_are_read_back_from_the_error_text() {
        let body = r#"{"type":"urn:ietf:params:acme:error:badNonce","detail":"JWS has an invalid anti-replay nonce"}"#;
        let text = format!("non 2xx http status: 400 {body:?}");
        let (status, problem) = parse_error_status(&text).unwrap();
        assert_eq!(status, 400);
        let (kind, detail) = problem.unwrap();
        assert_eq!(kind, "urn:ietf:params:acme:error:badNonce");
        assert_eq!(detail, "JWS has an invalid anti-replay nonce");
        assert!(parse_error_status("io error: refused").is_none());
    }

    #[test]
    fn rate_limit_details_give_a_retry_time() {
        let detail = "too many certificates (5) already issued for this exact set of identifiers in the last 168h0m0s, retry after 2100-07-15 21:04:52 UTC: see https://letsencrypt.org/docs/rate-limits/";
        let when = retry_after_in_detail(detail).unwrap();
        assert_eq!(
            httpdate::fmt_http_date(when),
            "Thu, 15 Jul 2100 21:04:52 GMT"
        );
        assert!(retry_after_in_detail("retry after soon").is_none());
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(days_from_civil(2000, 3, 1), 11_017);
    }

    #[test]
    fn account_keys_round_trip_through_the_shared_pem_file() {
        let der = Account::generate_key_pair();
        let pem = account_key_pem(&der).unwrap();
        let parsed = rustls_pemfile::private_key(&mut pem.as_bytes())
            .unwrap()
            .unwrap();
        assert_eq!(parsed.secret_der(), &der[..]);
    }
}
