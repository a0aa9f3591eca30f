//! [`AutoTlsLayer`]: answers HTTP-01 challenges in front of any tower service.
//!
//! `GET` and `HEAD` on `/.well-known/acme-challenge/{token}` are answered with the key
//! authorization (`application/octet-stream`) when that token is pending for the request's
//! host. Every other request under that path gets `404` — a token outside the base64url
//! alphabet or longer than 256 bytes, an unknown token, another host, another method —
//! without reaching the inner service. All other requests go to the inner service
//! untouched; its body and error types pass through.
//!
//! ```
//! use axum::{routing::get, Router};
//! use autotls::AutoTls;
//!
//! let tls = AutoTls::new(["example.com"]);
//! let app: Router = Router::new()
//!     .route("/", get(|| async { "Hello world" }))
//!     .layer(tls.clone());
//! ```

mod body;
mod challenge;
mod future;
#[allow(clippy::module_inception)]
mod layer;
mod service;

pub use body::ResponseBody;
pub(crate) use challenge::{answer, challenge_token, request_host};
pub use future::ResponseFuture;
pub use layer::AutoTlsLayer;
pub use service::AutoTlsService;
