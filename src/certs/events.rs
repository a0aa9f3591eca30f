//! Certificate events and status: data the program can act on, besides the log.

use std::time::{Duration, SystemTime};

/// Something that happened to a managed certificate; see [`AutoTls::subscribe`].
///
/// [`AutoTls::subscribe`]: crate::AutoTls::subscribe
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum CertEvent {
    /// A valid certificate was loaded from the cache at start.
    Loaded {
        /// The managed name.
        name: String,
        /// When the certificate expires.
        not_after: SystemTime,
    },
    /// A first certificate was issued by the CA and is now served.
    Issued {
        /// The managed name.
        name: String,
        /// When the certificate expires.
        not_after: SystemTime,
    },
    /// A certificate was replaced by a newer one from the CA.
    Renewed {
        /// The managed name.
        name: String,
        /// When the new certificate expires.
        not_after: SystemTime,
    },
    /// Obtaining a certificate failed; the next try is scheduled.
    Failed {
        /// The managed name.
        name: String,
        /// What went wrong, as an operator would want to read it.
        error: String,
        /// When the next try starts.
        retry_in: Duration,
    },
}

impl CertEvent {
    /// The name the event is about.
    pub fn name(&self) -> &str {
        match self {
            CertEvent::Loaded { name, .. }
            | CertEvent::Issued { name, .. }
            | CertEvent::Renewed { name, .. }
            | CertEvent::Failed { name, .. } => name,
        }
    }
}

/// Where a managed name stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum CertState {
    /// No certificate yet; one is being obtained.
    Pending,
    /// A valid certificate is served.
    Valid,
    /// A certificate is served and a newer one is being obtained.
    Renewing,
    /// The last attempt failed; a retry is scheduled (a previous certificate, if any, is
    /// still served).
    Failing,
    /// A locally generated, self-signed certificate is served (local mode).
    Local,
}

/// A snapshot of one managed name; see [`AutoTls::status`].
///
/// [`AutoTls::status`]: crate::AutoTls::status
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct CertStatus {
    /// The managed name.
    pub name: String,
    /// Where it stands.
    pub state: CertState,
    /// Expiry of the served certificate, if one is served.
    pub not_after: Option<SystemTime>,
    /// The last error, until the next success.
    pub last_error: Option<String>,
    /// When the next order or renewal is due, once scheduled.
    pub next_attempt: Option<SystemTime>,
}
