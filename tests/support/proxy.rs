//! A fault-injecting HTTPS proxy in front of Pebble's ACME API, on a free loopback port.
//!
//! It terminates TLS with its own certificate (for `127.0.0.1` and `localhost`, signed by a
//! throwaway CA: give [`FaultProxy::ca_pem`] to `.directory_root(..)`), and forwards each
//! request to Pebble over TLS (trusting [`Pebble::directory_root_pem`]) on a fresh HTTP/1.1
//! connection, keeping the client's `Host` (or HTTP/2 `:authority`) as the `Host` header.
//! Pebble builds every URL in its answers (directory, `Location`, `Link`) from the request's
//! `Host`, and checks each JWS `url` against it, so a client that starts at
//! [`FaultProxy::directory_url`] keeps talking to the proxy without any rewriting.
//!
//! Every connection and request is recorded with its time, and what the proxy did with it.
//! At run time the proxy can be switched between
//! * [`Mode::Pass`]: forward everything (rules permitting),
//! * [`Mode::Drop`]: accept connections and close them at once (they are still counted),
//! * [`Mode::Refuse`]: stop listening, so connecting is refused (nothing to count),
//!
//! and given [`Fault`] rules for the next N requests (optionally only those whose path
//! contains a string): an answer of its own (429, 503, ...) with `Retry-After` in seconds or
//! as an HTTP-date, a connection closed without an answer (before or after forwarding), or a
//! delayed answer. Switching to `Drop` or `Refuse` also closes the open connections, so a
//! pooled client connection does not outlive the outage.

use std::convert::Infallible;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls_pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;
use tokio_rustls::{TlsAcceptor, TlsConnector};

use super::client::{certs_from_pem, client_config, BoxError};
use super::pebble::Pebble;

/// How long the proxy waits for a client's TLS handshake, and for Pebble's answer.
const IO_LIMIT: Duration = Duration::from_secs(10);

/// What the proxy does with new connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Serve connections; requests are forwarded unless a [`Fault`] rule matches.
    Pass,
    /// Accept each connection and close it at once, before TLS (counted in
    /// [`FaultProxy::connections`]). Open connections are closed too.
    Drop,
    /// Close the listening socket: connecting is refused. Open connections are closed too.
    /// Switching back listens again on the same port.
    Refuse,
}

/// A `Retry-After` value the proxy sends.
#[derive(Debug, Clone, Copy)]
pub enum RetryAfter {
    /// `Retry-After: <seconds>`.
    Seconds(u64),
    /// `Retry-After: <HTTP-date>`, this long after the answer (the date has whole seconds:
    /// the effective wait is up to a second shorter).
    Date(Duration),
}

/// What the proxy does with a request a rule matches.
#[derive(Debug, Clone)]
pub enum Fault {
    /// Answer with this status (not forwarded). With `problem`, the body is an ACME problem
    /// document (`rateLimited` for 429, `serverInternal` otherwise), as a CA would send;
    /// without, a plain-text body, as a load balancer in front of a CA would send.
    Status {
        status: u16,
        retry_after: Option<RetryAfter>,
        problem: bool,
    },
    /// Close the connection without an answer; the request is not forwarded.
    Close,
    /// Forward the request, then close the connection without passing the answer on (the
    /// CA acted on it; the client never learns).
    CloseAfterForward,
    /// Forward the request after this delay.
    Delay(Duration),
}

/// One request the proxy saw.
#[derive(Debug, Clone)]
pub struct Seen {
    /// When its head had arrived.
    pub at: SystemTime,
    pub method: Method,
    /// Path and query.
    pub path: String,
    /// The `Host` (or `:authority`) it carried.
    pub host: String,
    /// The status the client got; `None` when the connection was closed instead.
    pub status: Option<u16>,
    /// When the answer was ready to be sent (after any delay), if there was one.
    pub answered_at: Option<SystemTime>,
    /// The `Retry-After` of the answer, as a point in time (from the proxy's fault or from
    /// Pebble).
    pub retry_after: Option<SystemTime>,
    /// Whether it reached Pebble.
    pub forwarded: bool,
    /// A fault rule matched it.
    pub faulted: bool,
}

impl Seen {
    /// Whether the answer asked the client to wait: a 429 or 5xx status with `Retry-After`.
    pub fn asked_to_wait(&self) -> Option<(SystemTime, SystemTime)> {
        let status = self.status?;
        if status == 429 || status >= 500 {
            Some((self.answered_at?, self.retry_after?))
        } else {
            None
        }
    }
}

struct Rule {
    fault: Fault,
    remaining: usize,
    path: Option<String>,
}

#[derive(Default)]
struct Record {
    rules: Vec<Rule>,
    requests: Vec<Seen>,
    connections: Vec<SystemTime>,
}

struct Shared {
    upstream: SocketAddr,
    upstream_tls: TlsConnector,
    acceptor: TlsAcceptor,
    record: Mutex<Record>,
    mode: watch::Sender<Mode>,
}

impl Shared {
    fn record(&self) -> MutexGuard<'_, Record> {
        self.record.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The proxy; dropping it stops it and closes its connections.
pub struct FaultProxy {
    addr: SocketAddr,
    ca_pem: Vec<u8>,
    shared: Arc<Shared>,
    task: JoinHandle<()>,
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.task.abort();
        // Open connections watch the mode; `Refuse` makes them close.
        self.shared.mode.send_replace(Mode::Refuse);
    }
}

impl FaultProxy {
    /// Starts a proxy in front of `pebble`'s ACME API, in [`Mode::Pass`] with no rules.
    pub async fn start(pebble: &Pebble) -> FaultProxy {
        let upstream: SocketAddr = pebble
            .directory_url()
            .trim_start_matches("https://")
            .trim_end_matches("/dir")
            .parse()
            .expect("Pebble's directory URL is https://127.0.0.1:PORT/dir");
        let mut upstream_config = client_config(&pebble.directory_root_pem(), &[b"http/1.1"])
            .expect("a client config trusting Pebble's HTTPS root");
        upstream_config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let (ca_pem, server_config) = server_config();
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .expect("bind the proxy on a free loopback port");
        let addr = listener.local_addr().expect("the proxy's address");
        let (mode, _) = watch::channel(Mode::Pass);
        let shared = Arc::new(Shared {
            upstream,
            upstream_tls: TlsConnector::from(Arc::new(upstream_config)),
            acceptor: TlsAcceptor::from(Arc::new(server_config)),
            record: Mutex::new(Record::default()),
            mode,
        });
        let task = tokio::spawn(accept_loop(shared.clone(), listener, addr));
        FaultProxy {
            addr,
            ca_pem,
            shared,
            task,
        }
    }

    /// The ACME directory through the proxy: `https://127.0.0.1:PORT/dir`.
    pub fn directory_url(&self) -> String {
        format!("https://{}/dir", self.addr)
    }

    /// The proxy's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// PEM of the CA of the proxy's own HTTPS certificate: what a client of the proxy trusts.
    pub fn ca_pem(&self) -> Vec<u8> {
        self.ca_pem.clone()
    }

    /// Switches the connection mode (see [`Mode`]).
    pub fn set_mode(&self, mode: Mode) {
        self.shared.mode.send_replace(mode);
    }

    /// Applies `fault` to the next `count` requests whose path contains `path` (every path
    /// with `None`). Rules apply in the order they were added: a request takes the first rule
    /// that matches it and still has requests left.
    pub fn inject(&self, fault: Fault, count: usize, path: Option<&str>) {
        self.shared.record().rules.push(Rule {
            fault,
            remaining: count,
            path: path.map(str::to_owned),
        });
    }

    /// Removes every rule, used up or not.
    pub fn clear_faults(&self) {
        self.shared.record().rules.clear();
    }

    /// Every request seen so far, in order of arrival.
    pub fn requests(&self) -> Vec<Seen> {
        self.shared.record().requests.clone()
    }

    /// The requests seen so far whose path contains `path`.
    pub fn requests_to(&self, path: &str) -> Vec<Seen> {
        self.requests()
            .into_iter()
            .filter(|r| r.path.contains(path))
            .collect()
    }

    /// When each TCP connection was accepted (including those closed at once).
    pub fn connections(&self) -> Vec<SystemTime> {
        self.shared.record().connections.clone()
    }

    /// Requests that arrived while an earlier answer's `Retry-After` had not yet passed:
    /// `(the answer, the early request)`. Strict: a request counts even if the client sent it
    /// before it could have read the answer, so use it where requests are not concurrent
    /// with the answer (one name, or a point where the other names wait for the first).
    pub fn retry_after_violations(&self) -> Vec<(Seen, Seen)> {
        let requests = self.requests();
        let mut out = Vec::new();
        for answer in &requests {
            let Some((answered, until)) = answer.asked_to_wait() else {
                continue;
            };
            for request in &requests {
                if request.at > answered && request.at < until {
                    out.push((answer.clone(), request.clone()));
                }
            }
        }
        out
    }

    /// The most requests that arrived within any window of `window`.
    pub fn max_requests_within(&self, window: Duration) -> usize {
        let times: Vec<SystemTime> = self.requests().iter().map(|r| r.at).collect();
        let mut best = 0;
        let mut start = 0;
        for end in 0..times.len() {
            while times[end].duration_since(times[start]).unwrap_or_default() >= window {
                start += 1;
            }
            best = best.max(end + 1 - start);
        }
        best
    }

    /// A one-line-per-request account of what the proxy saw, for assertion messages.
    pub fn report(&self) -> String {
        let requests = self.requests();
        let Some(first) = requests.first().map(|r| r.at) else {
            return "no requests".to_owned();
        };
        let mut out = String::new();
        for r in &requests {
            let ms = |t: SystemTime| t.duration_since(first).unwrap_or_default().as_millis();
            out.push_str(&format!(
                "{:>6} ms {} {} -> {}{}{}\n",
                ms(r.at),
                r.method,
                r.path,
                r.status.map_or("closed".to_owned(), |s| s.to_string()),
                if r.faulted { " (fault)" } else { "" },
                r.retry_after
                    .map(|t| format!(" retry-after until {} ms", ms(t)))
                    .unwrap_or_default(),
            ));
        }
        out
    }
}

async fn accept_loop(shared: Arc<Shared>, listener: TcpListener, addr: SocketAddr) {
    let mut mode_rx = shared.mode.subscribe();
    let mut listener = Some(listener);
    loop {
        let mode = *mode_rx.borrow_and_update();
        if mode == Mode::Refuse {
            listener = None;
            if mode_rx.changed().await.is_err() {
                return;
            }
            continue;
        }
        let current = match &listener {
            Some(l) => l,
            None => {
                listener = Some(rebind(addr).await);
                continue;
            }
        };
        tokio::select! {
            changed = mode_rx.changed() => {
                if changed.is_err() {
                    return;
                }
            }
            accepted = current.accept() => {
                let Ok((tcp, _)) = accepted else {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                };
                shared.record().connections.push(SystemTime::now());
                if mode == Mode::Drop {
                    // Closed before TLS: the client's handshake fails.
                    drop(tcp);
                    continue;
                }
                tokio::spawn(serve_connection(shared.clone(), tcp));
            }
        }
    }
}

/// Listens on `addr` again after [`Mode::Refuse`] (SO_REUSEADDR is on: tokio sets it).
async fn rebind(addr: SocketAddr) -> TcpListener {
    let mut last = None;
    for _ in 0..200 {
        match TcpListener::bind(addr).await {
            Ok(listener) => return listener,
            Err(e) => last = Some(e),
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the proxy could not listen on {addr} again: {last:?}");
}

async fn serve_connection(shared: Arc<Shared>, tcp: TcpStream) {
    let _ = tcp.set_nodelay(true);
    let mut mode_rx = shared.mode.subscribe();
    let tls = match tokio::time::timeout(IO_LIMIT, shared.acceptor.accept(tcp)).await {
        Ok(Ok(tls)) => tls,
        _ => return,
    };
    let kill = Arc::new(Notify::new());
    let service = {
        let shared = shared.clone();
        let kill = kill.clone();
        hyper::service::service_fn(move |req| handle(shared.clone(), kill.clone(), req))
    };
    let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    let conn = builder.serve_connection(TokioIo::new(tls), service);
    let down = async {
        loop {
            if *mode_rx.borrow_and_update() != Mode::Pass {
                return;
            }
            if mode_rx.changed().await.is_err() {
                return;
            }
        }
    };
    // Dropping the connection future closes the socket (every stream on it).
    tokio::select! {
        _ = conn => {}
        _ = down => {}
        _ = kill.notified() => {}
    }
}

async fn handle(
    shared: Arc<Shared>,
    kill: Arc<Notify>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let at = SystemTime::now();
    let (parts, body) = req.into_parts();
    let host = parts
        .headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_owned)
        .or_else(|| parts.uri.authority().map(|a| a.to_string()))
        .unwrap_or_default();
    let path = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "/".to_owned());
    let fault = {
        let mut record = shared.record();
        let fault = record
            .rules
            .iter_mut()
            .find(|r| r.remaining > 0 && r.path.as_deref().is_none_or(|p| path.contains(p)))
            .map(|rule| {
                rule.remaining -= 1;
                rule.fault.clone()
            });
        record.requests.push(Seen {
            at,
            method: parts.method.clone(),
            path: path.clone(),
            host: host.clone(),
            status: None,
            answered_at: None,
            retry_after: None,
            forwarded: false,
            faulted: fault.is_some(),
        });
        fault
    };
    let index = shared.record().requests.len() - 1;
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();

    let finish = |response: Option<&Response<Full<Bytes>>>, forwarded: bool| {
        let mut record = shared.record();
        let seen = &mut record.requests[index];
        seen.forwarded = forwarded;
        if let Some(response) = response {
            let now = SystemTime::now();
            seen.status = Some(response.status().as_u16());
            seen.answered_at = Some(now);
            seen.retry_after = response
                .headers()
                .get(header::RETRY_AFTER)
                .and_then(|v| parse_retry_after(v, now));
        }
    };

    let response = match fault {
        Some(Fault::Status {
            status,
            retry_after,
            problem,
        }) => {
            let response = fault_response(status, retry_after, problem);
            finish(Some(&response), false);
            return Ok(response);
        }
        Some(Fault::Close) => {
            finish(None, false);
            kill.notify_one();
            return Ok(std::future::pending().await);
        }
        Some(Fault::CloseAfterForward) => {
            let _ = forward(&shared, &parts.method, &parts.headers, &path, &host, body).await;
            finish(None, true);
            kill.notify_one();
            return Ok(std::future::pending().await);
        }
        Some(Fault::Delay(delay)) => {
            tokio::time::sleep(delay).await;
            forward(&shared, &parts.method, &parts.headers, &path, &host, body).await
        }
        None => forward(&shared, &parts.method, &parts.headers, &path, &host, body).await,
    };
    let response = response.unwrap_or_else(|e| {
        let mut r = Response::new(Full::new(Bytes::from(format!(
            "the test proxy could not reach Pebble: {e}\n"
        ))));
        *r.status_mut() = StatusCode::BAD_GATEWAY;
        r
    });
    finish(Some(&response), true);
    Ok(response)
}

/// Sends the request to Pebble over a fresh TLS connection, `Host` preserved.
async fn forward(
    shared: &Shared,
    method: &Method,
    headers: &HeaderMap,
    path: &str,
    host: &str,
    body: Bytes,
) -> Result<Response<Full<Bytes>>, BoxError> {
    tokio::time::timeout(IO_LIMIT, async {
        let tcp = TcpStream::connect(shared.upstream).await?;
        tcp.set_nodelay(true)?;
        let name = ServerName::try_from("127.0.0.1")?;
        let tls = shared.upstream_tls.connect(name, tcp).await?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await?;
        let driver = tokio::spawn(conn);
        let mut request = Request::builder().method(method.clone()).uri(path);
        for (name, value) in headers {
            if !is_hop_by_hop(name) && name != header::HOST {
                request = request.header(name, value);
            }
        }
        let request = request.header(header::HOST, host).body(Full::new(body))?;
        let response = sender.send_request(request).await;
        let response = match response {
            Ok(r) => r,
            Err(e) => {
                driver.abort();
                return Err(e.into());
            }
        };
        let (parts, body) = response.into_parts();
        let bytes = body.collect().await?.to_bytes();
        driver.abort();
        let mut out = Response::new(Full::new(bytes));
        *out.status_mut() = parts.status;
        for (name, value) in &parts.headers {
            if !is_hop_by_hop(name) && name != header::CONTENT_LENGTH {
                out.headers_mut().append(name, value.clone());
            }
        }
        Ok(out)
    })
    .await
    .map_err(|_| format!("Pebble did not answer within {IO_LIMIT:?}"))?
}

fn is_hop_by_hop(name: &header::HeaderName) -> bool {
    [
        header::CONNECTION,
        header::TRANSFER_ENCODING,
        header::UPGRADE,
        header::TE,
        header::TRAILER,
        header::PROXY_AUTHORIZATION,
        header::PROXY_AUTHENTICATE,
    ]
    .contains(name)
        || name.as_str().eq_ignore_ascii_case("keep-alive")
        || name.as_str().eq_ignore_ascii_case("proxy-connection")
}

fn fault_response(
    status: u16,
    retry_after: Option<RetryAfter>,
    problem: bool,
) -> Response<Full<Bytes>> {
    let status = StatusCode::from_u16(status).expect("a valid status code");
    let (content_type, body) = if problem {
        let kind = if status == StatusCode::TOO_MANY_REQUESTS {
            "rateLimited"
        } else {
            "serverInternal"
        };
        (
            "application/problem+json",
            format!(
                r#"{{"type":"urn:ietf:params:acme:error:{kind}","detail":"injected by the test proxy","status":{}}}"#,
                status.as_u16()
            ),
        )
    } else {
        (
            "text/plain",
            format!(
                "{} {}\n",
                status.as_u16(),
                status.canonical_reason().unwrap_or("")
            ),
        )
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    if let Some(retry_after) = retry_after {
        let value = match retry_after {
            RetryAfter::Seconds(secs) => secs.to_string(),
            RetryAfter::Date(after) => httpdate::fmt_http_date(SystemTime::now() + after),
        };
        response.headers_mut().insert(
            header::RETRY_AFTER,
            HeaderValue::from_str(&value).expect("a valid Retry-After"),
        );
    }
    response
}

/// `Retry-After` as a point in time, as the proxy meant it: seconds count from `now`.
fn parse_retry_after(value: &HeaderValue, now: SystemTime) -> Option<SystemTime> {
    let value = value.to_str().ok()?.trim();
    match value.parse::<u64>() {
        Ok(secs) => Some(now + Duration::from_secs(secs)),
        Err(_) => httpdate::parse_http_date(value).ok(),
    }
}

/// A throwaway CA and a certificate for `127.0.0.1` and `localhost` signed by it.
fn server_config() -> (Vec<u8>, rustls::ServerConfig) {
    let cert = super::LocalhostCert::new("autotls tests: fault proxy CA");
    let (ca_pem, leaf_pem, leaf_key) = (cert.ca_pem, cert.cert_pem, cert.key);
    let chain = certs_from_pem(leaf_pem.as_bytes()).expect("the proxy's certificate parses");
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der()));
    let mut config = rustls::ServerConfig::builder_with_provider(super::provider())
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .expect("the proxy's certificate and key match");
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    (ca_pem.into_bytes(), config)
}
