//! [`AutoTlsLayer`].

use std::sync::Arc;

use tower_layer::Layer;

use super::AutoTlsService;
use crate::config::AutoTls;
use crate::state::{State, Tasks};

/// Answers HTTP-01 challenges in front of a service; see the [module docs](crate::layer).
///
/// [`AutoTls`] itself is a `Layer` that makes the same service, so `.layer(tls.clone())`
/// works; this type is what [`AutoTls::challenge_layer`] returns.
#[derive(Debug, Clone)]
pub struct AutoTlsLayer {
    pub(crate) shared: Arc<Shared>,
}

/// What a layer and its services share, behind one `Arc`: servers clone the service for every
/// request (hyper-util's `TowerToHyperService`, axum), so that is one reference-count update
/// per request instead of one per field.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) state: Arc<State>,
    /// Keeps the certificate tasks alive while the app is served.
    pub(crate) _tasks: Arc<Tasks>,
}

impl<S> Layer<S> for AutoTlsLayer {
    type Service = AutoTlsService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AutoTlsService {
            inner,
            shared: self.shared.clone(),
        }
    }
}

impl<S> Layer<S> for AutoTls {
    type Service = AutoTlsService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        self.challenge_layer().layer(inner)
    }
}

impl AutoTls {
    /// The layer that answers HTTP-01 challenges; `.layer(tls.clone())` does the same.
    pub fn challenge_layer(&self) -> AutoTlsLayer {
        AutoTlsLayer {
            shared: Arc::new(Shared {
                state: self.state.clone(),
                _tasks: self.tasks.clone(),
            }),
        }
    }
}
