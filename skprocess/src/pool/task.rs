//! What travels between the thread that calls `map` and the managers: jobs,
//! tasks (one frame of work each) and replies.
//!
//! Every item handed to a manager is answered exactly once: a unit or a
//! batch of calls that is dropped unanswered (its job was abandoned, or the
//! pool is closing) answers itself with an error on its way out, so a caller
//! never waits for a reply that cannot come.

use crate::config::{Config, Hook};
use crate::error::{Cause, Error, Failure, Result};
use crate::wire::Encoded;
use crossbeam_channel::Sender;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// One call of `map`, `imap`, `map_fn`...: what every task of it shares.
#[derive(Debug)]
pub(crate) struct Job {
    /// The process type, or `map_fn(<function>)`.
    pub(crate) name: String,
    pub(crate) kind: JobKind,
    pub(crate) replies: Sender<Reply>,
    /// Set when the caller stopped listening (an `Imap` dropped early):
    /// queued work of the job is skipped.
    pub(crate) cancelled: AtomicBool,
    /// Set when the call was stopped (its time limit passed, or it was
    /// cancelled): besides being skipped, its work in flight is killed.
    pub(crate) aborted: AtomicBool,
    /// Its work goes to workers on other machines (a cluster launcher):
    /// values holding descriptors are refused.
    pub(crate) remote: bool,
}

#[derive(Debug)]
pub(crate) enum JobKind {
    /// Process items of one type.
    Items {
        type_id: &'static str,
        config: Config,
    },
    /// `map_fn` calls (the entry offset is in each batch).
    Calls,
}

impl Job {
    pub(crate) fn is_cancelled(&self) -> bool {
        self.cancelled.load(Ordering::Relaxed)
    }

    /// Whether the call was stopped: its items running are to be killed.
    pub(crate) fn is_aborted(&self) -> bool {
        self.aborted.load(Ordering::Acquire)
    }

    /// Stops the call: nothing more of it starts, and what runs is killed
    /// (by the managers, once woken).
    pub(crate) fn abort(&self) {
        self.cancelled.store(true, Ordering::Relaxed);
        self.aborted.store(true, Ordering::Release);
    }

    /// The failure of item `index` (items are named by their position in
    /// the input).
    pub(crate) fn failure(
        &self,
        index: usize,
        attempt: u32,
        hook: Option<Hook>,
        run: Option<u64>,
        cause: Cause,
    ) -> Failure {
        let lives = match &self.kind {
            JobKind::Items { config, .. } => config.lives,
            JobKind::Calls => CALL_TRIES,
        };
        let mut f = Failure::new(
            format!("{} item #{index}", self.name),
            hook,
            run,
            attempt,
            lives,
            cause,
        );
        f.item = Some(index);
        f
    }
}

/// Attempts a batch of `map_fn` calls gets when its worker crashes.
pub(crate) const CALL_TRIES: u32 = 2;

/// One frame of work.
#[derive(Debug)]
pub(crate) enum Task {
    /// Process items, in input order.
    Items { job: Arc<Job>, units: Vec<Unit> },
    /// A batch of `map_fn` calls.
    Calls(Calls),
}

/// One process item and what it has been through.
#[derive(Debug)]
pub(crate) struct Unit {
    pub(crate) index: usize,
    /// The initial value, kept for retries.
    pub(crate) value: Encoded,
    /// 1-based.
    pub(crate) attempt: u32,
    /// When its first attempt started (for `join_in`).
    pub(crate) started: Option<Instant>,
    /// `Some` until answered.
    replies: Option<Sender<Reply>>,
}

impl Unit {
    pub(crate) fn new(job: &Job, index: usize, value: Encoded) -> Self {
        Unit {
            index,
            value,
            attempt: 1,
            started: None,
            replies: Some(job.replies.clone()),
        }
    }

    /// Sends the item's outcome to its caller.
    pub(crate) fn answer(mut self, result: Result<Encoded>, busy: Duration) {
        if let Some(tx) = self.replies.take() {
            let _ = tx.send(Reply::Item {
                index: self.index,
                result,
                busy,
            });
        }
    }
}

impl Drop for Unit {
    fn drop(&mut self) {
        if let Some(tx) = self.replies.take() {
            let e = Error::Usage(format!(
                "pool item #{} was dropped before it ran: the pool is closing",
                self.index
            ));
            let _ = tx.send(Reply::Item {
                index: self.index,
                result: Err(e),
                busy: Duration::ZERO,
            });
        }
    }
}

/// A batch of `map_fn` calls on the items `start..start + count`.
#[derive(Debug)]
pub(crate) struct Calls {
    pub(crate) job: Arc<Job>,
    pub(crate) start: usize,
    pub(crate) count: usize,
    /// The `POOL_CALLS` payload and its descriptors, kept for a retry.
    pub(crate) payload: Encoded,
    /// Attempts made so far.
    pub(crate) tries: u32,
    /// `false` once answered.
    pending: bool,
}

impl Calls {
    pub(crate) fn new(job: Arc<Job>, start: usize, count: usize, payload: Encoded) -> Self {
        Calls {
            job,
            start,
            count,
            payload,
            tries: 0,
            pending: true,
        }
    }

    /// Sends the batch's outcome (the `POOL_RESULTS` frame) to its caller.
    pub(crate) fn answer(mut self, result: Result<Encoded>) {
        self.pending = false;
        let _ = self.job.replies.send(Reply::Calls {
            start: self.start,
            count: self.count,
            result,
        });
    }
}

impl Drop for Calls {
    fn drop(&mut self) {
        if self.pending {
            let e = Error::Usage(
                "map_fn items were dropped before they ran: the pool is closing".into(),
            );
            let _ = self.job.replies.send(Reply::Calls {
                start: self.start,
                count: self.count,
                result: Err(e),
            });
        }
    }
}

/// What a caller hears back.
#[derive(Debug)]
pub(crate) enum Reply {
    /// A process item ended: its final state, or why not; `busy` is how
    /// long the worker spent on it.
    Item {
        index: usize,
        result: Result<Encoded>,
        busy: Duration,
    },
    /// A batch of calls ended: the `POOL_RESULTS` payload, or why not.
    Calls {
        start: usize,
        count: usize,
        result: Result<Encoded>,
    },
}
