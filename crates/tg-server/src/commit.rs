//! Group commit: batches that arrive while a commit is in progress share the next one.
//!
//! A batch is acknowledged only once it is committed with `synchronous=FULL` (the WAL is
//! fsynced), and an fsync costs the same for one batch as for twenty. So requests do not each
//! commit: they [`submit`](Committer::submit) their rows to a queue (in the order the detectors
//! saw them, which is also the order replay feeds them back at start-up) and then
//! [`wait`](Committer::wait). A waiter that finds no commit in progress becomes the leader: it
//! takes the whole queue, writes it in one transaction, commits, hands every waiter in that
//! group its outcome and wakes them all at once. Waiters whose rows were in that group return;
//! one of the others leads the next group. No thread of its own, no timer: under light load a
//! group is one batch and commits as soon as it arrives; under heavy load groups grow while
//! the previous fsync runs.
//!
//! Lock order (never taken the other way round): the collector's state, then the store, then
//! the queue. The leader holds the store and never the state.

use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};

use tg_watch::Incident;

use crate::error::Error;
use crate::store::Store;

/// Rows to store together: one batch's events and the incidents it revealed, or the incidents
/// of a tick.
#[derive(Debug, Default)]
pub(crate) struct Rows {
    /// The run the events belong to.
    pub(crate) run: String,
    /// Collector time the batch was received.
    pub(crate) now: f64,
    /// The events' JSON as received (each validated), concatenated; `events` index into it.
    pub(crate) text: String,
    /// `(rank, span of text)` per event, in batch order.
    pub(crate) events: Vec<(u32, Range<usize>)>,
    /// Incidents to store in the same transaction.
    pub(crate) incidents: Vec<Incident>,
}

/// A submission's place in the queue; [`Committer::wait`] turns it into the commit's outcome.
#[derive(Debug)]
#[must_use = "rows are acknowledged only once wait() returns Ok"]
pub(crate) struct Ticket(Arc<Slot>);

/// The outcome of the commit a submission went into, once known. Followers get the leader's
/// error as text (a `rusqlite::Error` is not `Clone`).
type Outcome = Result<(), String>;

#[derive(Debug, Default)]
struct Slot(Mutex<Option<Outcome>>);

impl Slot {
    fn take(&self) -> Option<Outcome> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).take()
    }

    fn set(&self, outcome: Outcome) {
        *self.0.lock().unwrap_or_else(PoisonError::into_inner) = Some(outcome);
    }
}

/// The store and the queue of rows waiting for a commit.
pub(crate) struct Committer {
    store: Mutex<Store>,
    queue: Mutex<Queue>,
    /// Signalled when a leader has answered its group.
    answered: Condvar,
    /// The database, for errors.
    path: String,
    /// Groups written, successful or not.
    commits: AtomicU64,
}

#[derive(Default)]
struct Queue {
    pending: Vec<(Rows, Arc<Slot>)>,
    /// Whether a leader is writing a group now.
    leading: bool,
}

/// Ends a leader's turn, also when it panics: nobody leads, and every waiter looks again.
struct Turn<'a>(&'a Committer);

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        self.0.lock_queue().leading = false;
        self.0.answered.notify_all();
    }
}

impl Committer {
    pub(crate) fn new(store: Store) -> Self {
        Committer {
            path: store.path().display().to_string(),
            store: Mutex::new(store),
            queue: Mutex::new(Queue::default()),
            answered: Condvar::new(),
            commits: AtomicU64::new(0),
        }
    }

    /// Commits attempted so far (for `/metrics`: with the batch count it shows the grouping).
    pub(crate) fn commits(&self) -> u64 {
        self.commits.load(Ordering::Relaxed)
    }

    /// The store, for reads and for writes outside the queue (run registration). Waits for a
    /// commit in progress.
    pub(crate) fn store(&self) -> MutexGuard<'_, Store> {
        // A panic while holding it leaves nothing half-written: the transaction rolls back.
        self.store.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn lock_queue(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Queue rows for the next commit. Call in the order the rows must be stored (under the
    /// collector's state lock, so that it is the order the detectors saw them).
    pub(crate) fn submit(&self, rows: Rows) -> Ticket {
        let slot = Arc::new(Slot::default());
        self.lock_queue().pending.push((rows, Arc::clone(&slot)));
        Ticket(slot)
    }

    /// Block until the ticket's rows are committed (`Ok`) or their commit failed (then nothing
    /// in it is stored). Blocking: SQLite writes and fsyncs here.
    pub(crate) fn wait(&self, ticket: Ticket) -> Result<(), Error> {
        let mut queue = self.lock_queue();
        loop {
            if let Some(outcome) = ticket.0.take() {
                return outcome.map_err(|message| Error::SharedCommit {
                    path: self.path.clone(),
                    message,
                });
            }
            if !queue.leading {
                break;
            }
            queue = self
                .answered
                .wait(queue)
                .unwrap_or_else(PoisonError::into_inner);
        }
        // Not answered and nobody writing: our rows are still pending (a leader answers its
        // whole group before its turn ends). Lead.
        queue.leading = true;
        let group = std::mem::take(&mut queue.pending);
        drop(queue);
        let turn = Turn(self);
        let rows: Vec<&Rows> = group.iter().map(|(rows, _)| rows).collect();
        let result = self.store().append(&rows);
        self.commits.fetch_add(1, Ordering::Relaxed);
        let shared = result.as_ref().map(|_| ()).map_err(ToString::to_string);
        let mut led_own = false;
        for (_, slot) in &group {
            if Arc::ptr_eq(slot, &ticket.0) {
                led_own = true;
            } else {
                slot.set(shared.clone());
            }
        }
        drop(turn);
        if led_own {
            result
        } else {
            // Only when a leader panicked after taking the queue and before answering.
            Err(Error::Internal(
                "a commit was abandoned; the batch was not acknowledged".into(),
            ))
        }
    }
}
