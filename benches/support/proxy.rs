//! A counting HTTPS proxy in front of an ACME CA: it terminates TLS with its own certificate,
//! forwards every request to the CA over one kept-alive upstream connection, and records each
//! TCP connection, TLS handshake and HTTP request (method, path, start and end) it sees.
//!
//! Pebble builds every URL it hands out from the request's `Host`, so a client that starts at
//! the proxy's directory URL stays on the proxy for the whole order: what the proxy counts is
//! everything the client asked of the CA.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::Bytes;
use http::header::{CONNECTION, HOST, TRANSFER_ENCODING};
use http::{Request, Response, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use super::{provider, server_config, BenchCa};

/// One thing the proxy saw.
#[derive(Debug, Clone)]
pub enum Seen {
    /// A TCP connection was accepted.
    Connection { at: Instant },
    /// A TLS handshake finished.
    Handshake { at: Instant, resumed: bool },
    /// One HTTP request, from its head arriving to the CA's whole answer.
    Request {
        start: Instant,
        end: Instant,
        method: String,
        path: String,
        status: u16,
    },
}

type Log = Arc<Mutex<Vec<Seen>>>;
type Upstream = Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>;

pub struct CountingProxy {
    addr: SocketAddr,
    root_pem: String,
    log: Log,
    task: JoinHandle<()>,
}

impl CountingProxy {
    /// Listens on a free loopback port and forwards to `upstream` (`https://127.0.0.1:PORT`),
    /// whose HTTPS certificate chains to `upstream_root_pem`.
    pub async fn start(upstream: SocketAddr, upstream_root_pem: &[u8]) -> Self {
        let ca = BenchCa::new("autotls bench: counting proxy CA");
        let config = Arc::new(server_config(
            &ca.leaf_pem("127.0.0.1"),
            &[b"h2", b"http/1.1"],
        ));
        let mut roots = rustls::RootCertStore::empty();
        for cert in rustls_pemfile::certs(&mut &upstream_root_pem[..]) {
            roots.add(cert.expect("upstream root")).expect("add root");
        }
        let tls = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .expect("TLS versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        let mut http = HttpConnector::new();
        http.set_nodelay(true);
        http.enforce_http(false);
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_only()
            .enable_http1()
            .wrap_connector(http);
        let client: Upstream = Client::builder(TokioExecutor::new()).build(https);

        let tcp = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = tcp.local_addr().expect("local address");
        let log: Log = Arc::default();
        let task = {
            let log = log.clone();
            tokio::spawn(async move {
                let acceptor = tokio_rustls::TlsAcceptor::from(config);
                loop {
                    let Ok((tcp, _)) = tcp.accept().await else {
                        continue;
                    };
                    let _ = tcp.set_nodelay(true);
                    push(&log, Seen::Connection { at: Instant::now() });
                    let acceptor = acceptor.clone();
                    let log = log.clone();
                    let client = client.clone();
                    tokio::spawn(async move {
                        let Ok(stream) = acceptor.accept(tcp).await else {
                            return;
                        };
                        let resumed = stream.get_ref().1.handshake_kind()
                            == Some(rustls::HandshakeKind::Resumed);
                        push(
                            &log,
                            Seen::Handshake {
                                at: Instant::now(),
                                resumed,
                            },
                        );
                        let svc = hyper::service::service_fn(move |req| {
                            forward(req, upstream, client.clone(), log.clone())
                        });
                        let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                            .serve_connection(TokioIo::new(stream), svc)
                            .await;
                    });
                }
            })
        };
        Self {
            addr,
            root_pem: ca.pem().to_owned(),
            log,
            task,
        }
    }

    /// The proxy's base URL, e.g. `https://127.0.0.1:PORT`.
    pub fn base_url(&self) -> String {
        format!("https://{}", self.addr)
    }

    /// The CA that signed the proxy's certificate: what the ACME client must trust.
    pub fn root_pem(&self) -> &str {
        &self.root_pem
    }

    /// Everything seen so far, and forgets it.
    pub fn take(&self) -> Vec<Seen> {
        std::mem::take(&mut *self.log.lock().expect("proxy log"))
    }
}

impl Drop for CountingProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn push(log: &Log, seen: Seen) {
    log.lock().expect("proxy log").push(seen);
}

async fn forward(
    req: Request<Incoming>,
    upstream: SocketAddr,
    client: Upstream,
    log: Log,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let start = Instant::now();
    let (mut parts, body) = req.into_parts();
    let method = parts.method.to_string();
    let path = parts.uri.path().to_owned();
    // HTTP/2 carries the authority in the URI; upstream is HTTP/1.1 and Pebble reads `Host`.
    if let Some(authority) = parts.uri.authority().cloned() {
        if !parts.headers.contains_key(HOST) {
            parts
                .headers
                .insert(HOST, authority.as_str().parse().expect("authority as Host"));
        }
    }
    let path_and_query = parts
        .uri
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_owned();
    parts.uri = format!("https://{upstream}{path_and_query}")
        .parse::<Uri>()
        .expect("upstream URI");
    parts.version = http::Version::HTTP_11;
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let response = match client
        .request(Request::from_parts(parts, Full::new(body)))
        .await
    {
        Ok(rsp) => {
            let (mut parts, body) = rsp.into_parts();
            let body = body
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            // Hop-by-hop headers do not cross a proxy (and are illegal in HTTP/2).
            parts.headers.remove(CONNECTION);
            parts.headers.remove(TRANSFER_ENCODING);
            parts.headers.remove("keep-alive");
            Response::from_parts(parts, Full::new(body))
        }
        Err(err) => {
            let mut rsp = Response::new(Full::new(Bytes::from(format!("proxy: {err}"))));
            *rsp.status_mut() = StatusCode::BAD_GATEWAY;
            rsp
        }
    };
    push(
        &log,
        Seen::Request {
            start,
            end: Instant::now(),
            method,
            path,
            status: response.status().as_u16(),
        },
    );
    Ok(response)
}
