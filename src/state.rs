//! What every clone of [`AutoTls`](crate::AutoTls) and everything made from it shares.

use std::sync::atomic::{AtomicBool, AtomicU16, Ordering};
use std::sync::Mutex;

use tokio::sync::broadcast;
use tokio::task::AbortHandle;

use crate::certs::{CertEvent, CertStore, Challenges};
use crate::config::Config;

/// Shared runtime state: served certificates, pending challenges, events.
#[derive(Debug)]
pub(crate) struct State {
    pub(crate) store: CertStore,
    pub(crate) challenges: Challenges,
    pub(crate) events: broadcast::Sender<CertEvent>,
    /// Set once the manager runs.
    pub(crate) started: Mutex<bool>,
    /// The HTTP port is served (by [`AutoTls::http_redirect`](crate::AutoTls::http_redirect)),
    /// so HTTP-01 can be the fallback.
    http_served: AtomicBool,
    /// The HTTPS listener's port, for redirects (0: not bound yet).
    https_port: AtomicU16,
}

impl State {
    pub(crate) fn new(config: &Config) -> Self {
        let names = config.names.as_deref().unwrap_or(&[]);
        let (events, _) = broadcast::channel(256);
        Self {
            store: CertStore::new(names, config.is_local()),
            challenges: Challenges::default(),
            events,
            started: Mutex::new(false),
            http_served: AtomicBool::new(false),
            https_port: AtomicU16::new(0),
        }
    }

    pub(crate) fn http_served(&self) -> bool {
        self.http_served.load(Ordering::Relaxed)
    }

    pub(crate) fn set_http_served(&self) {
        self.http_served.store(true, Ordering::Relaxed);
    }

    pub(crate) fn https_port(&self) -> u16 {
        self.https_port.load(Ordering::Relaxed)
    }

    pub(crate) fn set_https_port(&self, port: u16) {
        self.https_port.store(port, Ordering::Relaxed);
    }
}

/// The background tasks; aborted when the last handle (`AutoTls`, listener, service) is gone.
#[derive(Debug, Default)]
pub(crate) struct Tasks {
    pub(crate) handles: Mutex<Vec<AbortHandle>>,
}

impl Drop for Tasks {
    fn drop(&mut self) {
        for handle in self
            .handles
            .get_mut()
            .unwrap_or_else(|p| p.into_inner())
            .drain(..)
        {
            handle.abort();
        }
    }
}
