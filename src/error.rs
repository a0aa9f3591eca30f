//! The crate's [`Error`] and [`ErrorKind`].

use std::fmt;
use std::io;

use crate::config::ConfigError;

/// What went wrong, coarsely, so a program can act on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The configuration is invalid; see [`ConfigError`].
    Config,
    /// The cache directory cannot be created, read or written.
    Cache,
    /// Binding a listening socket failed.
    Bind,
    /// A certificate or key could not be made or loaded.
    Certificate,
}

/// An error from starting automatic HTTPS: the message says what to do, [`source`] says why.
///
/// [`source`]: std::error::Error::source
pub struct Error {
    kind: ErrorKind,
    message: String,
    source: Option<Box<dyn std::error::Error + Send + Sync + 'static>>,
}

impl Error {
    pub(crate) fn new(
        kind: ErrorKind,
        message: impl Into<String>,
        source: impl Into<Box<dyn std::error::Error + Send + Sync + 'static>>,
    ) -> Self {
        Self {
            kind,
            message: message.into(),
            source: Some(source.into()),
        }
    }

    /// Binding `addr` failed: explain the usual causes.
    pub(crate) fn bind(addr: impl fmt::Display, err: io::Error) -> Self {
        let hint = match err.kind() {
            io::ErrorKind::PermissionDenied => {
                " — run with CAP_NET_BIND_SERVICE or choose a port above 1024"
            }
            io::ErrorKind::AddrInUse => {
                " — another process listens there; stop it or choose another port"
            }
            io::ErrorKind::AddrNotAvailable => " — this machine has no such address",
            _ => "",
        };
        Self::new(
            ErrorKind::Bind,
            format!("binding {addr} failed: {err}{hint}"),
            err,
        )
    }

    /// What kind of error this is.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Error")
            .field("kind", &self.kind)
            .field("message", &self.message)
            .field("source", &self.source)
            .finish()
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_deref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}

impl From<ConfigError> for Error {
    fn from(err: ConfigError) -> Self {
        Self {
            kind: ErrorKind::Config,
            message: err.to_string(),
            source: Some(Box::new(err)),
        }
    }
}
