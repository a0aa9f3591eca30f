//! The seam between the manager and an ACME engine.
//!
//! An engine obtains one certificate for one name and publishes the challenge answers the
//! CA asks for in [`State::challenges`](crate::state::State) while it does. Scheduling,
//! retries, caching and events stay with the manager, whichever engine runs.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::SystemTime;

use crate::cache::Cache;
use crate::config::{Challenge, Config};
use crate::error::Error;
use crate::state::State;

/// A boxed future, as engines return them.
pub(crate) type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The engine the configuration chose ([`AutoTls::engine`](crate::AutoTls::engine)).
pub(crate) fn build(
    config: &Config,
    state: Arc<State>,
    cache: Cache,
) -> Result<Box<dyn Engine>, Error> {
    match config.engine {
        crate::Engine::InstantAcme => Ok(Box::new(super::instant::InstantAcme::new(
            config, state, cache,
        )?)),
        #[cfg(feature = "rustls-acme")]
        crate::Engine::RustlsAcme => Ok(Box::new(super::rustls_acme::RustlsAcme::new(
            config, state, cache,
        )?)),
        #[cfg(not(feature = "rustls-acme"))]
        crate::Engine::RustlsAcme => Err(config
            .check_engine()
            .err()
            .unwrap_or_else(|| {
                crate::ConfigError::new(
                    crate::ConfigErrorKind::Engine,
                    "rustls-acme",
                    "this build has no rustls-acme engine",
                )
            })
            .into()),
    }
}

/// An ACME engine.
pub(crate) trait Engine: Send + Sync + 'static {
    /// Obtains a certificate for `name` by one order answered with `challenge`. Returns the
    /// new private key then the chain, as PEM. Which challenge to try next, when the CA could
    /// not validate this one, is the manager's decision ([`ObtainError::validation`]).
    fn obtain<'a>(
        &'a self,
        name: &'a str,
        challenge: Challenge,
    ) -> BoxFuture<'a, Result<String, ObtainError>>;
}

/// Why an engine did not bring a certificate.
#[derive(Debug)]
pub(crate) struct ObtainError {
    pub(crate) message: String,
    /// The CA asked us not to come back before this.
    pub(crate) retry_after: Option<SystemTime>,
    /// The CA could not validate the challenge (another challenge type may still work).
    pub(crate) validation: bool,
}

impl ObtainError {
    pub(crate) fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            retry_after: None,
            validation: false,
        }
    }
}

impl fmt::Display for ObtainError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}
