//! The certificate manager: loads the cache, then keeps one task per name that orders,
//! renews and retries.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::engine::{Engine, ObtainError};
use super::events::{CertEvent, CertState};
use super::local;
use super::store::Deployed;
use crate::cache::Cache;
use crate::config::{AutoTls, Challenge, Config};
use crate::error::{Error, ErrorKind};
use crate::state::State;

/// Long sleeps are cut into pieces so a suspended machine or a clock step is noticed.
const MAX_SLEEP: Duration = Duration::from_secs(60 * 60);

/// Starts certificate management once; later calls return `Ok(())` at once.
///
/// Valid cached certificates are deployed before this returns, so the first handshake is
/// served without contacting the CA.
pub(crate) fn start(tls: &AutoTls) -> Result<(), Error> {
    let state = &tls.state;
    let mut started = state.started.lock().unwrap_or_else(|p| p.into_inner());
    if *started {
        return Ok(());
    }
    let names = tls.config.check()?;
    let runtime = tokio::runtime::Handle::try_current().map_err(|e| {
        Error::new(
            ErrorKind::Config,
            "autotls must be started inside a tokio runtime",
            e,
        )
    })?;
    if let Some(slot) = state.store.local() {
        let deployed = local::self_signed().map_err(|e| {
            Error::new(
                ErrorKind::Certificate,
                format!("generating the local certificate failed: {e}"),
                e,
            )
        })?;
        let not_after = deployed.not_after;
        slot.deploy(deployed);
        slot.update(|s| s.state = CertState::Local);
        tracing::info!(
            "local mode: serving a self-signed certificate for localhost, 127.0.0.1 and ::1, generated at start (no domain names configured; browsers will warn)"
        );
        let _ = state.events.send(CertEvent::Loaded {
            name: "localhost".to_owned(),
            not_after,
        });
        *started = true;
        return Ok(());
    }
    let cache = Cache::open(&tls.config.cache_dir, &tls.config.directory)?;
    for name in names {
        load_cached(state, &cache, name);
    }
    let engine = super::engine::build(&tls.config, state.clone(), cache.clone())?;
    let manager = Arc::new(Manager {
        state: state.clone(),
        config: tls.config.clone(),
        cache,
        engine,
    });
    let mut tasks = tls.tasks.handles.lock().unwrap_or_else(|p| p.into_inner());
    for name in names {
        let task = runtime.spawn(manager.clone().run(name.clone()));
        tasks.push(task.abort_handle());
    }
    *started = true;
    Ok(())
}

/// Deploys the cached certificate for `name`, if there is a usable one.
fn load_cached(state: &State, cache: &Cache, name: &str) {
    let Some(slot) = state.store.slot(name) else {
        return;
    };
    let file = Cache::cert_file(name);
    let bytes = match cache.read(&file) {
        Ok(Some(bytes)) => bytes,
        Ok(None) => return,
        Err(err) => {
            tracing::error!(name, %err, dir = %cache.dir().display(), "reading the cached certificate failed; ordering a new one");
            return;
        }
    };
    match Deployed::from_pem(&bytes, Some(name)) {
        Ok(deployed) if !deployed.is_current() => {
            // Kept on disk (it is not corrupt) and replaced by the first issuance.
            tracing::warn!(name, not_after = %httpdate::fmt_http_date(deployed.not_after), "the cached certificate is expired or not yet valid; ordering a new one");
        }
        Ok(deployed) => {
            let not_after = deployed.not_after;
            slot.deploy(deployed);
            tracing::info!(name, not_after = %httpdate::fmt_http_date(not_after), "certificate loaded from the cache");
            let _ = state.events.send(CertEvent::Loaded {
                name: name.to_owned(),
                not_after,
            });
        }
        Err(reason) => cache.quarantine(&file, &reason),
    }
}

struct Manager {
    state: Arc<State>,
    config: Arc<Config>,
    cache: Cache,
    engine: Box<dyn Engine>,
}

impl Manager {
    /// The life of one name: wait until due, obtain, deploy; on failure back off and retry.
    async fn run(self: Arc<Self>, name: String) {
        let Some(slot) = self.state.store.slot(&name) else {
            return;
        };
        let mut failures: u32 = 0;
        // When this task last deployed a certificate from the CA.
        let mut issued_at: Option<SystemTime> = None;
        loop {
            if failures == 0 {
                if let Some(current) = slot.current.load_full() {
                    // A CA that issues certificates already due for renewal (very short-lived,
                    // or a skewed clock) must not be asked again at once, in a loop: one
                    // order per first retry step at most.
                    let floor = issued_at.map(|t| t + self.config.retry_min);
                    let due = current.renew_at().max(floor.unwrap_or(UNIX_EPOCH));
                    slot.update(|s| s.next_attempt = Some(due));
                    sleep_until(due).await;
                    slot.update(|s| s.state = CertState::Renewing);
                }
            }
            let renewing = slot.current.load().is_some();
            let result = self.obtain(&name).await.and_then(|pem| {
                Deployed::from_pem(pem.as_bytes(), Some(&name))
                    .map(|d| (pem, d))
                    .map_err(|e| ObtainError::new(format!("the CA's certificate is unusable: {e}")))
            });
            match result {
                Ok((pem, deployed)) => {
                    failures = 0;
                    issued_at = Some(SystemTime::now());
                    if let Err(err) = self.cache.write(&Cache::cert_file(&name), pem.as_bytes()) {
                        tracing::error!(name, %err, dir = %self.cache.dir().display(), "caching the new certificate failed; it is served, but a restart will order again");
                    }
                    let not_after = deployed.not_after;
                    slot.deploy(deployed);
                    let (verb, event) = if renewing {
                        (
                            "renewed",
                            CertEvent::Renewed {
                                name: name.clone(),
                                not_after,
                            },
                        )
                    } else {
                        (
                            "issued",
                            CertEvent::Issued {
                                name: name.clone(),
                                not_after,
                            },
                        )
                    };
                    tracing::info!(name, not_after = %httpdate::fmt_http_date(not_after), "certificate {verb}");
                    let _ = self.state.events.send(event);
                }
                Err(err) => {
                    failures = failures.saturating_add(1);
                    let wait = self.backoff(failures, err.retry_after);
                    let next = SystemTime::now() + wait;
                    let served = slot.current.load_full();
                    match served.as_deref().map(|d| (d.is_current(), d.not_after)) {
                        Some((true, not_after)) => tracing::warn!(
                            name,
                            error = %err,
                            attempt = failures,
                            retry_in = ?wait,
                            expires = %httpdate::fmt_http_date(not_after),
                            "obtaining a certificate failed; the current certificate is still served"
                        ),
                        Some((false, not_after)) => tracing::error!(
                            name,
                            error = %err,
                            attempt = failures,
                            retry_in = ?wait,
                            expired = %httpdate::fmt_http_date(not_after),
                            "obtaining a certificate failed; the served certificate has expired and clients reject it until renewal succeeds"
                        ),
                        None => tracing::warn!(
                            name,
                            error = %err,
                            attempt = failures,
                            retry_in = ?wait,
                            "obtaining a certificate failed; handshakes for this name fail until it succeeds"
                        ),
                    }
                    slot.update(|s| {
                        s.state = CertState::Failing;
                        s.last_error = Some(err.message.clone());
                        s.next_attempt = Some(next);
                    });
                    let _ = self.state.events.send(CertEvent::Failed {
                        name: name.clone(),
                        error: err.message,
                        retry_in: wait,
                    });
                    sleep_until(next).await;
                }
            }
        }
    }

    /// One attempt: an order per challenge type, the next type only when the CA could not
    /// validate the previous one.
    async fn obtain(&self, name: &str) -> Result<String, ObtainError> {
        let challenges = self.challenges();
        let mut last = ObtainError::new("no challenge type to try");
        for (i, challenge) in challenges.iter().enumerate() {
            match self.engine.obtain(name, *challenge).await {
                Ok(pem) => return Ok(pem),
                Err(err) if err.validation && i + 1 < challenges.len() => {
                    tracing::info!(name, %challenge, error = %err, "validation failed; trying the next challenge type");
                    last = err;
                }
                Err(err) => return Err(err),
            }
        }
        Err(last)
    }

    /// TLS-ALPN-01 first; HTTP-01 as the fallback once the HTTP port is served.
    fn challenges(&self) -> Vec<Challenge> {
        match self.config.challenge {
            Some(pinned) => vec![pinned],
            None if self.state.http_served() => vec![Challenge::TlsAlpn01, Challenge::Http01],
            None => vec![Challenge::TlsAlpn01],
        }
    }

    /// The wait after the `failures`th failure in a row.
    fn backoff(&self, failures: u32, retry_after: Option<SystemTime>) -> Duration {
        let wait = backoff(self.config.retry_min, self.config.retry_max, failures);
        let ca_wait = retry_after
            .and_then(|t| t.duration_since(SystemTime::now()).ok())
            .unwrap_or_default();
        wait.max(ca_wait)
    }
}

/// `first × 2^(failures-1)`, capped, with ±10 % jitter.
pub(crate) fn backoff(first: Duration, cap: Duration, failures: u32) -> Duration {
    let exp = failures.saturating_sub(1).min(30);
    let base = first.saturating_mul(1u32 << exp).min(cap);
    base.mul_f64(0.9 + rand::random::<f64>() * 0.2)
}

async fn sleep_until(when: SystemTime) {
    loop {
        let Ok(left) = when.duration_since(SystemTime::now()) else {
            return;
        };
        if left.is_zero() {
            return;
        }
        tokio::time::sleep(left.min(MAX_SLEEP)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap_with_bounded_jitter() {
        let first = Duration::from_secs(60);
        let cap = Duration::from_secs(3600);
        for (failures, base) in [(1, 60.0), (2, 120.0), (3, 240.0), (7, 3600.0), (40, 3600.0)] {
            for _ in 0..50 {
                let got = backoff(first, cap, failures).as_secs_f64();
                assert!(
                    got >= base * 0.9 - 1e-9 && got <= base * 1.1 + 1e-9,
                    "{failures}: {got}"
                );
            }
        }
    }
}
