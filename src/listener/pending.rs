//! The cap on handshakes in progress ([`AutoTls::max_pending_handshakes`]).
//!
//! Every accepted connection holds a [`Ticket`] until its handshake ends (finished, failed,
//! timed out). At the cap, admitting a new connection evicts the oldest ticket still held: its
//! handshake is told to stop ([`Ticket::evicted`]) and its connection is closed. A notification
//! rather than an `AbortHandle`, because with [`serve`](crate::serve()) the task that
//! handshakes goes on to serve the connection, which must not be aborted once it has started.
//!
//! [`AutoTls::max_pending_handshakes`]: crate::AutoTls::max_pending_handshakes

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::sync::Notify;

/// The accept loop's side: admits connections, evicts the oldest at the cap.
pub(crate) struct Pending {
    /// Tickets in admission order; ended ones are pruned from the front as they are met, and
    /// from anywhere once the queue is twice the cap.
    queue: VecDeque<Arc<Slot>>,
    /// Tickets still held.
    held: Arc<AtomicUsize>,
    max: usize,
}

struct Slot {
    /// Set once, by whichever comes first: the handshake ending or the eviction.
    ended: AtomicBool,
    evict: Notify,
    held: Arc<AtomicUsize>,
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

    fn ended(&self) -> bool {
        self.ended.load(Ordering::Acquire)
    }
}

/// A handshake's place under the cap; dropping it ends the handshake's claim.
pub struct Ticket(Arc<Slot>);

impl Ticket {
    /// Resolves when the accept loop evicted this handshake to make room at the cap.
    pub(crate) async fn evicted(&self) {
        self.0.evict.notified().await;
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.0.end();
    }
}

impl Pending {
    pub(crate) fn new(max: usize) -> Self {
        Self {
            queue: VecDeque::new(),
            held: Arc::new(AtomicUsize::new(0)),
            max: max.max(1),
        }
    }

    /// The cap.
    pub(crate) fn max(&self) -> usize {
        self.max
    }

    /// Handshakes in progress.
    pub(crate) fn held(&self) -> usize {
        self.held.load(Ordering::Acquire)
    }

    /// A ticket for a new connection; at the cap, the oldest handshake in progress is evicted
    /// first (`true` in the second field).
    pub(crate) fn admit(&mut self) -> (Ticket, bool) {
        let evicted = self.held() >= self.max && self.evict_oldest();
        while self.queue.front().is_some_and(|slot| slot.ended()) {
            self.queue.pop_front();
        }
        if self.queue.len() >= 2 * self.max {
            self.queue.retain(|slot| !slot.ended());
        }
        let slot = Arc::new(Slot {
            ended: AtomicBool::new(false),
            evict: Notify::new(),
            held: self.held.clone(),
        });
        self.held.fetch_add(1, Ordering::AcqRel);
        self.queue.push_back(slot.clone());
        (Ticket(slot), evicted)
    }

    fn evict_oldest(&mut self) -> bool {
        while let Some(oldest) = self.queue.pop_front() {
            if oldest.end() {
                // A stored permit: the handshake sees it even if it is not waiting yet.
                oldest.evict.notify_one();
                return true;
            }
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn at_the_cap_the_oldest_held_ticket_is_evicted_and_ended_ones_are_skipped() {
        let mut pending = Pending::new(3);
        let (a, _) = pending.admit();
        let (b, _) = pending.admit();
        let (c, _) = pending.admit();
        assert_eq!(pending.held(), 3);
        drop(a); // finished: not a candidate any more
        assert_eq!(pending.held(), 2);
        let (d, evicted) = pending.admit();
        assert!(!evicted, "below the cap after `a` ended");
        let (_e, evicted) = pending.admit();
        assert!(evicted, "at the cap");
        tokio::time::timeout(Duration::from_secs(1), b.evicted())
            .await
            .expect("the oldest held ticket (b) is told");
        assert_eq!(pending.held(), 3);
        // `c` is next in line, not `d`.
        let (_f, evicted) = pending.admit();
        assert!(evicted);
        tokio::time::timeout(Duration::from_secs(1), c.evicted())
            .await
            .expect("c is told");
        let not_told = tokio::time::timeout(Duration::from_millis(20), d.evicted()).await;
        assert!(not_told.is_err(), "d was not evicted");
    }

    #[test]
    fn the_queue_stays_bounded_when_tickets_end_out_of_order() {
        let mut pending = Pending::new(4);
        let (first, _) = pending.admit(); // held all along: the front never ends
        for _ in 0..10_000 {
            let (t, _) = pending.admit();
            drop(t);
        }
        assert!(pending.queue.len() <= 8, "queue of {}", pending.queue.len());
        assert_eq!(pending.held(), 1);
        drop(first);
        assert_eq!(pending.held(), 0);
    }
}
