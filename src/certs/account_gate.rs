//! The account gate: one attempt at the shared ACME account per retry step, for all names.
//!
//! Both engines keep their account (instant-acme's `Account`, rustls-acme's key) behind an
//! [`AccountGate`], so a CA that is unreachable or refuses the registration sees one attempt
//! per step of the manager's retry schedule, however many names wait for the account.

use std::future::Future;
use std::time::{Duration, SystemTime};

use super::engine::ObtainError;
use super::manager::backoff;

/// The shared account, or why it could not be had lately.
///
/// The first name that needs the account makes the attempt; the others wait for it. A failed
/// attempt (CA unreachable, registration refused) is remembered with the time of the next
/// one, on the manager's schedule (`backoff(retry_min, retry_max, failures)`, later if the
/// CA's `Retry-After` says so): names that need the account before then get the same error
/// at once. So N names make one attempt per retry step, never N, and a corrupt key leads to
/// at most one new account per retry step. The account, once had, is kept.
pub(crate) struct AccountGate<T> {
    /// Held across an attempt: the names that need the account meanwhile wait for it.
    slot: tokio::sync::Mutex<Slot<T>>,
    /// The wait after the first failure (the manager's schedule).
    retry_min: Duration,
    /// The longest wait between two attempts.
    retry_max: Duration,
}

/// What the gate holds: the account, or the latest failure and when to try again.
struct Slot<T> {
    /// The account, once had.
    value: Option<T>,
    /// Failed attempts in a row.
    failures: u32,
    /// No new attempt before this.
    next_attempt: Option<SystemTime>,
    /// The latest failure's message, repeated to the names that ask before `next_attempt`.
    last_error: String,
}

/// Not derived: that would ask for `T: Default`.
impl<T> Default for Slot<T> {
    fn default() -> Self {
        Self {
            value: None,
            failures: 0,
            next_attempt: None,
            last_error: String::new(),
        }
    }
}

impl<T: Clone> AccountGate<T> {
    /// An empty gate on the retry schedule `retry_min` doubling up to `retry_max`.
    pub(crate) fn new(retry_min: Duration, retry_max: Duration) -> Self {
        Self {
            slot: tokio::sync::Mutex::new(Slot::default()),
            retry_min,
            retry_max,
        }
    }

    /// The account: the one once had; else, while a failure's next-attempt time has not
    /// passed, that failure again (without calling `attempt`); else what `attempt` brings,
    /// remembered. A failure's `retry_after` is set to the time of the next attempt.
    pub(crate) async fn get<F, Fut>(&self, attempt: F) -> Result<T, ObtainError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, ObtainError>>,
    {
        let mut slot = self.slot.lock().await;
        if let Some(value) = &slot.value {
            return Ok(value.clone());
        }
        if let Some(at) = slot.next_attempt.filter(|at| *at > SystemTime::now()) {
            return Err(ObtainError {
                message: format!(
                    "{} (the ACME account is tried again at {}, once for all names)",
                    slot.last_error,
                    httpdate::fmt_http_date(at)
                ),
                retry_after: Some(at),
                validation: false,
            });
        }
        match attempt().await {
            Ok(value) => {
                *slot = Slot {
                    value: Some(value.clone()),
                    ..Slot::default()
                };
                Ok(value)
            }
            Err(mut err) => {
                slot.failures = slot.failures.saturating_add(1);
                let mut at =
                    SystemTime::now() + backoff(self.retry_min, self.retry_max, slot.failures);
                if let Some(ca) = err.retry_after {
                    at = at.max(ca);
                }
                slot.next_attempt = Some(at);
                slot.last_error = err.message.clone();
                err.retry_after = Some(at);
                Err(err)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    const FIRST: Duration = Duration::from_secs(60);
    const CAP: Duration = Duration::from_secs(200);

    /// An attempt that counts its calls and fails with `message`.
    async fn failing(calls: &AtomicU32, message: &str) -> Result<u32, ObtainError> {
        calls.fetch_add(1, Ordering::SeqCst);
        Err(ObtainError::new(message))
    }

    /// How far ahead of now `at` is.
    fn ahead(at: Option<SystemTime>) -> Duration {
        at.expect("a next-attempt time")
            .duration_since(SystemTime::now())
            .expect("in the future")
    }

    /// As if the wait for the next attempt had passed.
    async fn let_the_wait_pass(gate: &AccountGate<u32>) {
        gate.slot.lock().await.next_attempt = Some(SystemTime::now() - Duration::from_secs(1));
    }

    #[tokio::test]
    async fn names_asking_before_the_next_attempt_get_the_remembered_error_without_an_attempt() {
        let gate = AccountGate::new(FIRST, CAP);
        let calls = AtomicU32::new(0);
        let first = gate
            .get(|| failing(&calls, "the CA is unreachable"))
            .await
            .unwrap_err();
        assert_eq!(first.message, "the CA is unreachable");
        let at = first.retry_after.expect("the next attempt's time");
        for _ in 0..5 {
            let again = gate
                .get(|| failing(&calls, "a second attempt"))
                .await
                .unwrap_err();
            assert_eq!(again.retry_after, Some(at), "the same next-attempt time");
            assert!(!again.validation);
            assert!(
                again.message.starts_with("the CA is unreachable (")
                    && again.message.contains(&httpdate::fmt_http_date(at))
                    && again.message.contains("once for all names"),
                "{}",
                again.message
            );
        }
        assert_eq!(calls.load(Ordering::SeqCst), 1, "one attempt for six asks");
    }

    #[tokio::test]
    async fn failures_in_a_row_double_the_wait_up_to_the_cap() {
        let gate = AccountGate::new(FIRST, CAP);
        let calls = AtomicU32::new(0);
        // The schedule's base for failures 1, 2, 3, 4: 60 s, 120 s, 200 s (capped), 200 s.
        for (failures, base) in [(1, 60.0), (2, 120.0), (3, 200.0), (4, 200.0)] {
            let err = gate.get(|| failing(&calls, "refused")).await.unwrap_err();
            let wait = ahead(err.retry_after).as_secs_f64();
            assert!(
                wait >= base * 0.9 - 1.0 && wait <= base * 1.1,
                "after failure {failures}: the next attempt in {wait} s, the schedule says {base} s ± 10 %"
            );
            let_the_wait_pass(&gate).await;
        }
        assert_eq!(calls.load(Ordering::SeqCst), 4);
    }

    #[tokio::test]
    async fn a_later_retry_after_from_the_ca_pushes_the_next_attempt() {
        let gate = AccountGate::new(FIRST, CAP);
        let ca = SystemTime::now() + Duration::from_secs(3600);
        let err = gate
            .get(|| async move {
                let mut err = ObtainError::new("rate limited");
                err.retry_after = Some(ca);
                Err::<u32, _>(err)
            })
            .await
            .unwrap_err();
        assert_eq!(err.retry_after, Some(ca));
        let again = gate.get(|| async { Ok(7) }).await.unwrap_err();
        assert_eq!(
            again.retry_after,
            Some(ca),
            "no attempt before the CA's time"
        );
    }

    #[tokio::test]
    async fn the_account_once_had_is_kept_and_asked_for_no_more() {
        let gate = AccountGate::new(FIRST, CAP);
        let calls = AtomicU32::new(0);
        for _ in 0..3 {
            gate.get(|| failing(&calls, "refused")).await.unwrap_err();
            let_the_wait_pass(&gate).await;
        }
        let account = gate.get(|| async { Ok(7) }).await.expect("the account");
        assert_eq!(account, 7);
        for _ in 0..3 {
            let kept = gate.get(|| failing(&calls, "not asked")).await;
            assert_eq!(kept.expect("the kept account"), 7);
        }
        assert_eq!(calls.load(Ordering::SeqCst), 3, "no attempt once it is had");
    }
}
