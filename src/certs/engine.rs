//! The seam between the manager and an ACME engine.
//!
//! An engine obtains one certificate for one name and publishes the challenge answers the
//! CA asks for in [`State::challenges`](crate::state::State) while it does. Scheduling,
//! retries, caching and events stay with the manager, whichever engine runs.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::time::SystemTime;

use crate::config::Challenge;

/// A boxed future, as engines return them.
pub(crate) type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// An ACME engine.
pub(crate) trait Engine: Send + Sync + 'static {
    /// Obtains a certificate for `name`, trying `challenges` in order (a later one only when
    /// the CA could not validate the earlier). Returns the new private key then the chain,
    /// as PEM.
    fn obtain<'a>(
        &'a self,
        name: &'a str,
        challenges: &'a [Challenge],
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
