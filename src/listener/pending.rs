//! Handshakes in progress: the cap ([`AutoTls::max_pending_handshakes`]) and the deadline
//! ([`AutoTls::handshake_timeout`]).
//!
//! Every accepted connection holds a [`Ticket`] until its handshake ends (finished or failed).
//! A ticket is ended early — its handshake told to stop ([`Ticket::ended_early`]) and its
//! connection closed — in two cases:
//!
//! - **the cap**: admitting a connection when the cap's worth of tickets is held ends the
//!   oldest held ticket first;
//! - **the deadline**: one task per listener (the sweeper) ends each ticket when its deadline
//!   passes. Tickets are admitted in order with the same timeout, so the oldest always has
//!   the earliest deadline and the sweeper needs a single timer, not one per connection:
//!   under load, a timer per handshake costs about 1–2 % of a handshake's CPU time
//!   (BENCHMARKS.md), one per listener costs nothing measurable.
//!
//! A notification rather than an `AbortHandle`, because the task that handshakes may go on to
//! serve the connection ([`serve`](crate::serve()), `accept_tcp`), and that must not be
//! aborted once it has started.
//!
//! [`AutoTls::max_pending_handshakes`]: crate::AutoTls::max_pending_handshakes
//! [`AutoTls::handshake_timeout`]: crate::AutoTls::handshake_timeout

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

/// The accept loop's side: admits connections, evicts the oldest at the cap. Dropping it (the
/// listener is gone) ends every ticket still held, and stops the sweeper.
pub(crate) struct Pending {
    shared: Arc<Shared>,
    max: usize,
}

struct Shared {
    /// Tickets in admission order (so in deadline order); ended ones are pruned from the
    /// front as they are met, and from anywhere once the queue is twice the cap.
    queue: Mutex<VecDeque<Arc<Slot>>>,
    /// Tickets still held.
    held: Arc<AtomicUsize>,
    timeout: Duration,
    /// Set when the listener is dropped.
    closed: AtomicBool,
    /// Wakes the sweeper: the listener is gone.
    wake: Notify,
}

impl Shared {
    fn queue(&self) -> MutexGuard<'_, VecDeque<Arc<Slot>>> {
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }
}

struct Slot {
    /// Set once, by whichever comes first: the handshake ending, the cap or the deadline.
    ended: AtomicBool,
    end_early: Notify,
    held: Arc<AtomicUsize>,
    /// `None`: a timeout too large to add to the clock, so no deadline.
    deadline: Option<Instant>,
    peer: SocketAddr,
}

impl Slot {
    /// Ends the ticket; `true` for the one caller that did.
    fn end(&self) -> bool {
        let first = !self.ended.swap(true, Ordering::AcqRel);
        if first {
            self.held.fetch_sub(1, Ordering::AcqRel);
        }
        first
    }

    /// Ends the ticket from outside and tells its handshake; `true` if it was still held.
    fn end_early(&self) -> bool {
        let first = self.end();
        if first {
            // A stored permit: the handshake sees it even if it is not waiting yet.
            self.end_early.notify_one();
        }
        first
    }

    fn ended(&self) -> bool {
        self.ended.load(Ordering::Acquire)
    }
}

/// A handshake's place under the cap and its deadline; dropping it ends the handshake's claim.
pub struct Ticket(Arc<Slot>);

impl Ticket {
    /// Resolves when the ticket was ended from outside: the deadline passed, the cap needed
    /// room, or the listener is gone.
    pub(crate) async fn ended_early(&self) {
        self.0.end_early.notified().await;
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.0.end();
    }
}

impl Pending {
    /// Must be called within a tokio runtime: it spawns the sweeper.
    pub(crate) fn new(max: usize, timeout: Duration) -> Self {
        let shared = Arc::new(Shared {
            queue: Mutex::new(VecDeque::new()),
            held: Arc::new(AtomicUsize::new(0)),
            timeout,
            closed: AtomicBool::new(false),
            wake: Notify::new(),
        });
        tokio::spawn(sweep(shared.clone()));
        Self {
            shared,
            max: max.max(1),
        }
    }

    /// The cap.
    pub(crate) fn max(&self) -> usize {
        self.max
    }

    /// Handshakes in progress.
    pub(crate) fn held(&self) -> usize {
        self.shared.held.load(Ordering::Acquire)
    }

    /// A ticket for a new connection; at the cap, the oldest handshake in progress is ended
    /// first (`true` in the second field).
    pub(crate) fn admit(&mut self, peer: SocketAddr) -> (Ticket, bool) {
        let held = &self.shared.held;
        let slot = Arc::new(Slot {
            ended: AtomicBool::new(false),
            end_early: Notify::new(),
            held: held.clone(),
            deadline: Instant::now().checked_add(self.shared.timeout),
            peer,
        });
        let mut queue = self.shared.queue();
        let mut evicted = false;
        if held.load(Ordering::Acquire) >= self.max {
            while let Some(oldest) = queue.pop_front() {
                if oldest.end_early() {
                    evicted = true;
                    break;
                }
            }
        }
        while queue.front().is_some_and(|slot| slot.ended()) {
            queue.pop_front();
        }
        if queue.len() >= 2 * self.max {
            queue.retain(|slot| !slot.ended());
        }
        held.fetch_add(1, Ordering::AcqRel);
        queue.push_back(slot.clone());
        (Ticket(slot), evicted)
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        self.shared.closed.store(true, Ordering::Release);
        self.shared.wake.notify_one();
        for slot in self.shared.queue().drain(..) {
            slot.end_early();
        }
    }
}

/// Ends each ticket whose deadline passed, oldest first, with one timer; stops when the
/// listener is dropped.
async fn sweep(shared: Arc<Shared>) {
    loop {
        if shared.closed.load(Ordering::Acquire) {
            return;
        }
        let next = {
            let mut queue = shared.queue();
            let now = Instant::now();
            loop {
                match queue.front() {
                    Some(slot) if slot.ended() => {
                        queue.pop_front();
                    }
                    Some(slot) if slot.deadline.is_some_and(|d| d <= now) => {
                        if slot.end_early() {
                            tracing::debug!(peer = %slot.peer, "TLS handshake timed out; connection closed");
                        }
                        queue.pop_front();
                    }
                    Some(slot) => break slot.deadline,
                    // Anything admitted from now on is due no sooner than a timeout from now.
                    None => break now.checked_add(shared.timeout),
                }
            }
        };
        let wake = shared.wake.notified();
        match next {
            Some(at) => {
                tokio::select! {
                    () = tokio::time::sleep_until(at) => {}
                    () = wake => {}
                }
            }
            None => wake.await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer() -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], 9))
    }

    #[tokio::test]
    async fn at_the_cap_the_oldest_held_ticket_is_ended_and_ended_ones_are_skipped() {
        let mut pending = Pending::new(3, Duration::from_secs(60));
        let (a, _) = pending.admit(peer());
        let (b, _) = pending.admit(peer());
        let (c, _) = pending.admit(peer());
        assert_eq!(pending.held(), 3);
        drop(a); // finished: not a candidate any more
        assert_eq!(pending.held(), 2);
        let (d, evicted) = pending.admit(peer());
        assert!(!evicted, "below the cap after `a` ended");
        let (_e, evicted) = pending.admit(peer());
        assert!(evicted, "at the cap");
        tokio::time::timeout(Duration::from_secs(1), b.ended_early())
            .await
            .expect("the oldest held ticket (b) is told");
        assert_eq!(pending.held(), 3);
        // `c` is next in line, not `d`.
        let (_f, evicted) = pending.admit(peer());
        assert!(evicted);
        tokio::time::timeout(Duration::from_secs(1), c.ended_early())
            .await
            .expect("c is told");
        let not_told = tokio::time::timeout(Duration::from_millis(20), d.ended_early()).await;
        assert!(not_told.is_err(), "d was not ended");
    }

    #[tokio::test]
    async fn the_queue_stays_bounded_when_tickets_end_out_of_order() {
        let mut pending = Pending::new(4, Duration::from_secs(60));
        let (first, _) = pending.admit(peer()); // held all along: the front never ends
        for _ in 0..10_000 {
            let (t, _) = pending.admit(peer());
            drop(t);
        }
        assert!(
            pending.shared.queue().len() <= 8,
            "queue of {}",
            pending.shared.queue().len()
        );
        assert_eq!(pending.held(), 1);
        drop(first);
        assert_eq!(pending.held(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn each_ticket_is_ended_at_its_deadline_in_order() {
        let timeout = Duration::from_secs(10);
        let mut pending = Pending::new(100, timeout);
        let start = Instant::now();
        let (a, _) = pending.admit(peer());
        tokio::time::advance(Duration::from_secs(3)).await;
        let (b, _) = pending.admit(peer());
        let (c, _) = pending.admit(peer());
        drop(c); // finished in time: never ended early
        a.ended_early().await;
        assert_eq!(start.elapsed(), timeout, "a at its deadline");
        b.ended_early().await;
        assert_eq!(
            start.elapsed(),
            timeout + Duration::from_secs(3),
            "b at its own deadline"
        );
        assert_eq!(pending.held(), 0);
        // A ticket admitted after the queue ran empty has its full timeout too.
        tokio::time::advance(Duration::from_secs(25)).await;
        let admitted = Instant::now();
        let (d, _) = pending.admit(peer());
        d.ended_early().await;
        assert_eq!(admitted.elapsed(), timeout, "d at its deadline");
    }

    #[tokio::test]
    async fn dropping_the_listener_ends_every_held_ticket() {
        let mut pending = Pending::new(8, Duration::from_secs(60));
        let (a, _) = pending.admit(peer());
        let (b, _) = pending.admit(peer());
        drop(pending);
        for t in [a, b] {
            tokio::time::timeout(Duration::from_secs(1), t.ended_early())
                .await
                .expect("told the listener is gone");
        }
    }
}
