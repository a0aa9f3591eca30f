//! Starting certificate management and watching it.

use tokio::sync::broadcast;

use crate::certs::{CertEvent, CertStatus};
use crate::config::AutoTls;
use crate::error::Error;

impl AutoTls {
    /// Starts certificate management, once (later calls do nothing). [`bind`](AutoTls::bind)
    /// and [`listener`](AutoTls::listener) call it; call it yourself to get certificates
    /// before the HTTPS listener exists.
    ///
    /// Checks the configuration, opens the cache directory (an unwritable one is an error
    /// here, not at the first renewal), deploys valid cached certificates and spawns one
    /// background task per name on the current tokio runtime. The tasks stop when the last
    /// `AutoTls` clone, listener and service made from it is dropped.
    pub fn start(&self) -> Result<(), Error> {
        crate::certs::start(self)
    }

    /// Certificate events from now on: loaded, issued, renewed, failed.
    ///
    /// A receiver that falls more than 256 events behind loses the oldest
    /// (`RecvError::Lagged`); it never slows the manager down.
    pub fn subscribe(&self) -> broadcast::Receiver<CertEvent> {
        self.state.events.subscribe()
    }

    /// A snapshot of every managed name, sorted by name.
    pub fn status(&self) -> Vec<CertStatus> {
        let mut all: Vec<CertStatus> = self.state.store.slots().map(|s| s.status()).collect();
        all.sort_by(|a, b| a.name.cmp(&b.name));
        all
    }
}
