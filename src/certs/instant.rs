//! The default engine: instant-acme, driven by our own order loop.
//!
//! Why our own loop and HTTP client: the stock client leaves TCP_NODELAY off (about 43 ms per
//! request against an HTTP/2 CA) and does not tell us about `Retry-After` on error answers.
//! This client keeps one pooled connection to the CA, turns TCP_NODELAY on, bounds every
//! exchange in time and size, and records the latest `Retry-After` the CA gave: until it has
//! passed, no request at all is sent (for any name), and the manager waits at least as long.

use std::error::Error as StdError;
use std::fmt;
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::header::RETRY_AFTER;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper_rustls::HttpsConnectorBuilder;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use instant_acme::{
    Account, AuthorizationStatus, BodyWrapper, BytesResponse, ChallengeType, ExternalAccountKey,
    HttpClient, Identifier, Key, NewAccount, NewOrder, OrderStatus, RetryPolicy,
};
use rcgen::{CertificateParams, CustomExtension, DistinguishedName, KeyPair};
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::sign::CertifiedKey;

use super::account_gate::AccountGate;
use super::engine::{BoxFuture, Engine, ObtainError};
use crate::cache::{Cache, ACCOUNT_KEY};
use crate::config::{Challenge, Config};
use crate::error::Error;
use crate::state::State;

/// Polling the order: start at 50 ms, double, give up after a minute (Pebble and Let's
/// Encrypt usually validate within a second).
const POLL: RetryPolicy = RetryPolicy::new()
    .initial_delay(Duration::from_millis(50))
    .backoff(2.0)
    .timeout(Duration::from_secs(60));

/// The longest one exchange with the CA may take, answer body included: a CA (or anything
/// in front of it) that accepts and never answers must not hold a name's task forever.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// The largest answer read from the CA; a certificate chain is a few kilobytes.
const MAX_ANSWER_LEN: usize = 1024 * 1024;

/// The longest `Retry-After` honoured: a date years ahead must not stop renewals for good.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(86_400);

type HyperClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, BodyWrapper<Bytes>>;

/// The HTTP client instant-acme uses: pooled, TCP_NODELAY, bounded, honours `Retry-After`.
#[derive(Clone)]
struct CaClient {
    inner: HyperClient,
    /// The latest `Retry-After` from a 429 or 5xx answer, as a point in time.
    retry_after: Arc<Mutex<Option<SystemTime>>>,
    timeout: Duration,
}

impl CaClient {
    fn new(tls: rustls::ClientConfig, timeout: Duration) -> Self {
        let mut http = HttpConnector::new();
        http.set_nodelay(true);
        http.enforce_http(false);
        http.set_connect_timeout(Some(Duration::from_secs(10)));
        let https = HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_only()
            .enable_http1()
            .enable_http2()
            .wrap_connector(http);
        Self {
            inner: Client::builder(TokioExecutor::new()).build(https),
            retry_after: Arc::default(),
            timeout,
        }
    }

    /// The CA's `Retry-After`, while it has not passed.
    fn pending_retry_after(&self) -> Option<SystemTime> {
        let slot = self.retry_after.lock().unwrap_or_else(|p| p.into_inner());
        slot.filter(|when| *when > SystemTime::now())
    }

    fn record_retry_after(&self, when: SystemTime) {
        let mut slot = self.retry_after.lock().unwrap_or_else(|p| p.into_inner());
        *slot = Some(slot.map_or(when, |old| old.max(when)));
    }

    /// One exchange: nothing is sent while a `Retry-After` holds; the answer is read whole
    /// (bounded in time and size); `Retry-After` on 429 and 5xx answers is recorded; an error
    /// answer that is not an ACME problem document (a load balancer's 503 page) becomes a
    /// readable error instead of a JSON parse error.
    async fn exchange(self, req: Request<BodyWrapper<Bytes>>) -> Result<BytesResponse, CaError> {
        let method = req.method().clone();
        let request = format!("{method} {}", req.uri());
        let fail = |detail: String| CaError {
            request: request.clone(),
            detail,
        };
        if let Some(until) = self.pending_retry_after() {
            return Err(fail(format!(
                "not sent: the CA asked us (Retry-After) to wait until {}",
                httpdate::fmt_http_date(until)
            )));
        }
        let exchange = async {
            let rsp = self.inner.request(req).await.map_err(|e| chain(&e))?;
            let (parts, body) = rsp.into_parts();
            let body = Limited::new(body, MAX_ANSWER_LEN)
                .collect()
                .await
                .map_err(|e| format!("reading the answer failed: {}", chain(&*e)))?
                .to_bytes();
            Ok::<_, String>((parts, body))
        };
        let (parts, body) = match tokio::time::timeout(self.timeout, exchange).await {
            Ok(Ok(answer)) => answer,
            Ok(Err(detail)) => return Err(fail(detail)),
            Err(_) => return Err(fail(format!("no answer within {:?}", self.timeout))),
        };
        let status = parts.status;
        if status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error() {
            if let Some(when) = parts.headers.get(RETRY_AFTER).and_then(parse_retry_after) {
                self.record_retry_after(when);
            }
        }
        let error = !(status.is_success() || status.is_redirection() || status.is_informational());
        // instant-acme reads problem documents only from POST answers; the directory (GET)
        // and nonce (HEAD) answers it would take as they come (a 429's problem document
        // parsed as a directory: "missing field `newNonce`").
        let problem = serde_json::from_slice::<instant_acme::Problem>(&body).ok();
        if error && (problem.is_none() || method != http::Method::POST) {
            let detail = match &problem {
                Some(problem) => describe_problem(problem),
                None => {
                    let text = String::from_utf8_lossy(&body[..body.len().min(200)]);
                    match text.trim() {
                        "" => format!("the CA answered {status}"),
                        text => format!("the CA answered {status}: {text:?}"),
                    }
                }
            };
            return Err(fail(detail));
        }
        Ok(BytesResponse::from(Response::from_parts(
            parts,
            Full::new(body),
        )))
    }
}

impl HttpClient for CaClient {
    fn request(
        &self,
        req: Request<BodyWrapper<Bytes>>,
    ) -> std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<BytesResponse, instant_acme::Error>> + Send>,
    > {
        let client = self.clone();
        Box::pin(async move {
            client
                .exchange(req)
                .await
                .map_err(|e| instant_acme::Error::Other(Box::new(e)))
        })
    }
}

/// A request to the CA that brought no usable answer.
#[derive(Debug)]
struct CaError {
    /// Method and URL.
    request: String,
    detail: String,
}

impl fmt::Display for CaError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.request, self.detail)
    }
}

impl StdError for CaError {}

/// An error and its sources, on one line.
fn chain(err: &(dyn StdError + 'static)) -> String {
    let mut msg = err.to_string();
    let mut source = err.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !msg.contains(&text) {
            msg.push_str(": ");
            msg.push_str(&text);
        }
        source = s.source();
    }
    msg
}

/// `Retry-After`: delay-seconds or an HTTP-date (RFC 9110 §10.2.3), at most a day ahead.
fn parse_retry_after(value: &http::HeaderValue) -> Option<SystemTime> {
    let value = value.to_str().ok()?.trim();
    let now = SystemTime::now();
    let when = match u64::from_str(value) {
        Ok(secs) => now + Duration::from_secs(secs.min(MAX_RETRY_AFTER.as_secs())),
        Err(_) => httpdate::parse_http_date(value).ok()?,
    };
    Some(when.min(now + MAX_RETRY_AFTER))
}

/// The instant-acme engine; one per [`AutoTls`](crate::AutoTls), shared by every name.
pub(crate) struct InstantAcme {
    client: CaClient,
    directory: String,
    contact: Vec<String>,
    external_account: Option<(String, Vec<u8>)>,
    cache: Cache,
    state: Arc<State>,
    /// Created or loaded once, by whichever name needs it first; the others wait. A failed
    /// attempt is made again once per retry step, for all names (see [`AccountGate`]).
    account: AccountGate<Account>,
}

impl InstantAcme {
    pub(crate) fn new(config: &Config, state: Arc<State>, cache: Cache) -> Result<Self, Error> {
        let tls = super::ca_client_config(config)?;
        Ok(Self {
            client: CaClient::new(tls, REQUEST_TIMEOUT),
            directory: config.directory.clone(),
            contact: config.contact.clone(),
            external_account: config
                .external_account
                .as_ref()
                .map(|e| (e.key_id.clone(), e.hmac_key.clone())),
            cache,
            state,
            account: AccountGate::new(config.retry_min, config.retry_max),
        })
    }

    fn builder(&self) -> instant_acme::AccountBuilder {
        Account::builder_with_http(Box::new(self.client.clone()))
    }

    /// The shared account: from memory, from the cached key, or newly registered (once),
    /// attempted at most once per retry step.
    async fn account(&self) -> Result<Account, ObtainError> {
        self.account.get(|| self.load_or_register()).await
    }

    /// Loads the account of the cached key, or registers a new one (and caches its key).
    async fn load_or_register(&self) -> Result<Account, ObtainError> {
        let cached = match self.cache.read(ACCOUNT_KEY) {
            Ok(bytes) => bytes,
            Err(e) => {
                return Err(ObtainError::new(format!(
                    "reading the account key {} failed: {e}",
                    self.cache.dir().join(ACCOUNT_KEY).display()
                )))
            }
        };
        let cached_key = cached.and_then(|pem| match account_key(&pem) {
            Ok(key) => Some(key),
            Err(reason) => {
                tracing::error!(
                    file = %self.cache.dir().join(ACCOUNT_KEY).display(),
                    reason,
                    "the cached ACME account key is unusable: it is moved aside and a new ACME account is registered (served certificates are not affected; restore a backup of the key to keep the old account)"
                );
                self.cache.quarantine(ACCOUNT_KEY, &reason);
                None
            }
        });
        let account = match cached_key {
            Some((key, der)) => {
                let (account, _) = self
                    .builder()
                    .create_from_key((key, PrivateKeyDer::Pkcs8(der)), self.directory.clone())
                    .await
                    .map_err(|e| self.error("loading the ACME account", e))?;
                tracing::debug!(id = account.id(), "ACME account loaded from the cached key");
                account
            }
            None => {
                let contact: Vec<&str> = self.contact.iter().map(String::as_str).collect();
                let eab = self
                    .external_account
                    .as_ref()
                    .map(|(id, hmac)| ExternalAccountKey::new(id.clone(), hmac));
                let (account, credentials) = self
                    .builder()
                    .create(
                        &NewAccount {
                            contact: &contact,
                            terms_of_service_agreed: true,
                            only_return_existing: false,
                        },
                        self.directory.clone(),
                        eab.as_ref(),
                    )
                    .await
                    .map_err(|e| self.error("registering an ACME account", e))?;
                let pem = pem_encode("PRIVATE KEY", credentials.private_key().secret_pkcs8_der());
                if let Err(e) = self.cache.write(ACCOUNT_KEY, pem.as_bytes()) {
                    tracing::error!(error = %e, dir = %self.cache.dir().display(), "the new ACME account key could not be cached; a restart will register another account");
                }
                tracing::info!(id = account.id(), directory = %self.directory, "ACME account registered");
                account
            }
        };
        Ok(account)
    }

    /// An engine error with the `Retry-After` the CA gave, if any is still in the future.
    fn error(&self, doing: &str, err: instant_acme::Error) -> ObtainError {
        let mut out = ObtainError::new(format!("{doing}: {}", describe(&err)));
        out.retry_after = self.retry_after();
        if let instant_acme::Error::Timeout(Some(when)) = err {
            let when =
                SystemTime::now() + when.saturating_duration_since(std::time::Instant::now());
            out.retry_after = Some(out.retry_after.map_or(when, |w| w.max(when)));
        }
        out
    }

    /// The latest `Retry-After` the CA gave, while it is in the future. It is kept, not
    /// taken: the CA's wish holds for every name until it passes.
    fn retry_after(&self) -> Option<SystemTime> {
        self.client.pending_retry_after()
    }

    async fn obtain_with(&self, name: &str, challenge: Challenge) -> Result<String, ObtainError> {
        let account = self.account().await?;
        let identifiers = [Identifier::Dns(name.to_owned())];
        let mut order = account
            .new_order(&NewOrder::new(&identifiers))
            .await
            .map_err(|e| self.error("creating the order", e))?;
        let mut published = Published {
            state: &self.state,
            host: name,
            tokens: Vec::new(),
            tls_alpn: false,
        };
        let wanted = match challenge {
            Challenge::TlsAlpn01 => ChallengeType::TlsAlpn01,
            Challenge::Http01 => ChallengeType::Http01,
        };
        {
            let mut authorizations = order.authorizations();
            while let Some(authz) = authorizations.next().await {
                let mut authz = authz.map_err(|e| self.error("fetching the authorization", e))?;
                match authz.status {
                    AuthorizationStatus::Valid => continue,
                    AuthorizationStatus::Pending => {}
                    other => {
                        return Err(ObtainError::new(format!(
                            "the authorization is {other:?}, not pending"
                        )))
                    }
                }
                let mut handle = authz.challenge(wanted.clone()).ok_or_else(|| {
                    ObtainError::new(format!("the CA does not offer {challenge} for {name}"))
                })?;
                let key_auth = handle.key_authorization();
                match challenge {
                    Challenge::TlsAlpn01 => {
                        let cert = tls_alpn_cert(name, key_auth.digest().as_ref())
                            .map_err(ObtainError::new)?;
                        self.state.challenges.publish_tls_alpn(name, Arc::new(cert));
                        published.tls_alpn = true;
                    }
                    Challenge::Http01 => {
                        self.state
                            .challenges
                            .publish_http(name, &handle.token, key_auth.as_str());
                        published.tokens.push(handle.token.clone());
                    }
                }
                handle
                    .set_ready()
                    .await
                    .map_err(|e| self.error("telling the CA the challenge is ready", e))?;
            }
        }
        // An order the CA could not validate ends `invalid`; instant-acme reports that as the
        // order's problem (or, without one, as a non-ready status). A problem document from a
        // failed poll (a 429 or 503) leaves the order as it was: that is the CA failing, not
        // validation, and must not make us try the next challenge type at once.
        let problem = match order.poll_ready(&POLL).await {
            Ok(OrderStatus::Ready) => None,
            Ok(status) => Some(format!("the order is {status:?}")),
            Err(instant_acme::Error::Api(problem))
                if order.state().error.is_some()
                    || order.state().status == OrderStatus::Invalid =>
            {
                Some(describe_problem(&problem))
            }
            Err(e) => return Err(self.error("waiting for validation", e)),
        };
        if let Some(problem) = problem {
            return Err(ObtainError {
                message: format!("the CA could not validate {challenge} for {name}: {problem}"),
                retry_after: self.retry_after(),
                validation: true,
            });
        }
        let key = KeyPair::generate().map_err(|e| ObtainError::new(e.to_string()))?;
        let mut params = CertificateParams::new(vec![name.to_owned()])
            .map_err(|e| ObtainError::new(e.to_string()))?;
        params.distinguished_name = DistinguishedName::new();
        let csr = params
            .serialize_request(&key)
            .map_err(|e| ObtainError::new(e.to_string()))?;
        order
            .finalize_csr(csr.der())
            .await
            .map_err(|e| self.error("finalizing the order", e))?;
        let chain = order
            .poll_certificate(&POLL)
            .await
            .map_err(|e| self.error("downloading the certificate", e))?;
        Ok(format!("{}{chain}", key.serialize_pem()))
    }
}

impl Engine for InstantAcme {
    fn obtain<'a>(
        &'a self,
        name: &'a str,
        challenge: Challenge,
    ) -> BoxFuture<'a, Result<String, ObtainError>> {
        Box::pin(self.obtain_with(name, challenge))
    }
}

/// Clears what an order published, however it ends.
struct Published<'a> {
    state: &'a State,
    host: &'a str,
    tokens: Vec<String>,
    tls_alpn: bool,
}

impl Drop for Published<'_> {
    fn drop(&mut self) {
        for token in &self.tokens {
            self.state.challenges.clear_http(token);
        }
        if self.tls_alpn {
            self.state.challenges.clear_tls_alpn(self.host);
        }
    }
}

/// The account key in a cache file, if instant-acme can use it: PKCS#8 ECDSA P-256.
fn account_key(pem: &[u8]) -> Result<(Key, PrivatePkcs8KeyDer<'static>), String> {
    match rustls_pemfile::private_key(&mut &pem[..]) {
        Ok(Some(PrivateKeyDer::Pkcs8(der))) => match Key::from_pkcs8_der(der.clone_key()) {
            Ok(key) => Ok((key, der)),
            Err(e) => Err(format!(
                "not a usable ECDSA P-256 PKCS#8 key ({})",
                describe(&e)
            )),
        },
        Ok(Some(_)) => Err("not a PKCS#8 key (a PKCS#1 or SEC1 key)".to_owned()),
        Ok(None) => Err("no PEM private key in the file".to_owned()),
        Err(e) => Err(format!("malformed PEM: {e}")),
    }
}

/// The TLS-ALPN-01 validation certificate (RFC 8737 §3): self-signed for `name`, with the
/// critical acmeIdentifier extension holding SHA-256 of the key authorization.
fn tls_alpn_cert(name: &str, digest: &[u8]) -> Result<CertifiedKey, String> {
    let mut params = CertificateParams::new(vec![name.to_owned()]).map_err(|e| e.to_string())?;
    params.distinguished_name = DistinguishedName::new();
    params.custom_extensions = vec![CustomExtension::new_acme_identifier(digest)];
    let key = KeyPair::generate().map_err(|e| e.to_string())?;
    let cert = params.self_signed(&key).map_err(|e| e.to_string())?;
    let der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    // Not `CertifiedKey::from_der`: its key check parses the certificate with webpki, which
    // refuses the critical acmeIdentifier extension this certificate exists for.
    let signing_key = super::provider()
        .key_provider
        .load_private_key(der)
        .map_err(|e| e.to_string())?;
    Ok(CertifiedKey::new(vec![cert.der().clone()], signing_key))
}

/// A readable message for an instant-acme error, with the CA's problem detail.
fn describe(err: &instant_acme::Error) -> String {
    match err {
        instant_acme::Error::Api(problem) => describe_problem(problem),
        other => chain(other),
    }
}

/// The CA's problem document, readable: its type and detail.
fn describe_problem(problem: &instant_acme::Problem) -> String {
    let kind = problem.r#type.as_deref().unwrap_or("problem");
    let detail = problem.detail.as_deref().unwrap_or("");
    match problem.status {
        Some(status) => format!("the CA answered {status} {kind}: {detail}"),
        None => format!("the CA answered {kind}: {detail}"),
    }
}

/// PEM-encodes DER (RFC 7468).
fn pem_encode(label: &str, der: &[u8]) -> String {
    const TABLE: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut b64 = String::with_capacity(der.len().div_ceil(3) * 4);
    for chunk in der.chunks(3) {
        let n = chunk.len();
        let v = (u32::from(chunk[0]) << 16)
            | (u32::from(*chunk.get(1).unwrap_or(&0)) << 8)
            | u32::from(*chunk.get(2).unwrap_or(&0));
        for i in 0..4 {
            if i <= n {
                b64.push(TABLE[((v >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                b64.push('=');
            }
        }
    }
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).unwrap_or_default());
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pem_round_trips_through_the_parser() {
        let der: Vec<u8> = (0u8..=200).collect();
        let pem = pem_encode("PRIVATE KEY", &der);
        let parsed = rustls_pemfile::private_key(&mut pem.as_bytes())
            .unwrap()
            .unwrap();
        assert_eq!(parsed.secret_der(), &der[..]);
    }

    #[test]
    fn retry_after_reads_seconds_and_dates() {
        let secs = parse_retry_after(&http::HeaderValue::from_static("120")).unwrap();
        let left = secs.duration_since(SystemTime::now()).unwrap();
        assert!(left > Duration::from_secs(110) && left <= Duration::from_secs(120));
        let date = parse_retry_after(&http::HeaderValue::from_static(
            "Fri, 31 Dec 2100 23:59:59 GMT",
        ));
        assert!(date.unwrap() > SystemTime::now());
        assert!(parse_retry_after(&http::HeaderValue::from_static("soon")).is_none());
        let far = parse_retry_after(&http::HeaderValue::from_static(
            "Fri, 31 Dec 2100 23:59:59 GMT",
        ));
        assert!(
            far.unwrap() <= SystemTime::now() + MAX_RETRY_AFTER,
            "capped at a day"
        );
    }

    fn test_client(timeout: Duration) -> CaClient {
        let tls = rustls::ClientConfig::builder_with_provider(crate::certs::provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth();
        CaClient::new(tls, timeout)
    }

    fn get(addr: std::net::SocketAddr) -> Request<BodyWrapper<Bytes>> {
        Request::get(format!("https://{addr}/dir"))
            .body(BodyWrapper::default())
            .unwrap()
    }

    #[tokio::test]
    async fn a_ca_that_accepts_and_never_answers_times_out() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let held = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((tcp, _)) = listener.accept().await {
                held.push(tcp);
            }
        });
        let started = std::time::Instant::now();
        let err = test_client(Duration::from_millis(300))
            .exchange(get(addr))
            .await
            .err()
            .expect("no answer is an error");
        assert!(started.elapsed() < Duration::from_secs(5));
        assert!(err.to_string().contains("no answer within"), "{err}");
        held.abort();
    }

    #[tokio::test]
    async fn nothing_is_sent_while_a_retry_after_holds() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let client = test_client(Duration::from_secs(5));
        client.record_retry_after(SystemTime::now() + Duration::from_secs(60));
        let err = client.exchange(get(addr)).await.err().expect("not sent");
        assert!(err.to_string().contains("Retry-After"), "{err}");
        let accepted = tokio::time::timeout(Duration::from_millis(200), listener.accept()).await;
        assert!(accepted.is_err(), "no connection was made");
    }

    #[test]
    fn only_a_p256_pkcs8_key_is_used_as_the_account_key() {
        let p256 = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        assert!(account_key(p256.serialize_pem().as_bytes()).is_ok());
        let p384 = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).unwrap();
        let err = account_key(p384.serialize_pem().as_bytes()).err().unwrap();
        assert!(err.contains("P-256"), "{err}");
        let garbage_der = pem_encode("PRIVATE KEY", b"not a key at all");
        assert!(account_key(garbage_der.as_bytes()).is_err());
        for text in [
            "",
            "garbage",
            "-----BEGIN PRIVATE KEY-----\n!!!\n-----END PRIVATE KEY-----\n",
        ] {
            assert!(account_key(text.as_bytes()).is_err(), "{text:?}");
        }
    }
}
