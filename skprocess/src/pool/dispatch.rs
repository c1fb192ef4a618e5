//! The caller's side of one map: it pulls items from the input as the
//! workers need them, packs them into tasks, and collects the replies.
//!
//! # Batching
//!
//! A task is one frame to one worker. The number of items in a task comes
//! from the measured cost of an item: the workers' time per item (reported
//! with each reply) is averaged, and a task gets about [`TARGET`] of work, at
//! least one item. Before the first measurement every task holds one item,
//! and a task is never more than twice the largest one so far, so a slow
//! input is never dealt out in big lumps on a guess. Tiny items (`x * 2`)
//! end up tens of thousands to a frame, and the frame and wake-up costs
//! vanish; items of a millisecond or more go one at a time.
//!
//! # Flow
//!
//! At most about three tasks per worker are out at once (one running, one
//! queued in the worker, one waiting in the pool's queue for whichever
//! manager is free first), so the input is read lazily: an `imap` over an
//! endless iterator works, and memory stays bounded by the window.
//!
//! # Stopping
//!
//! A call with a time limit, or a background call that is cancelled, is
//! stopped by its `Run`: the job is marked aborted (nothing more of it
//! starts) and every manager is woken, so those running its work kill their
//! worker and start a fresh one. The run waits until no worker runs its
//! work (each manager shows the job of its first task in flight), then
//! answers nothing more: the caller gets the error once the items that
//! were running are dead. A task of the call queued behind another call's
//! item is dropped when it comes up, unrun.
//!
//! # Descriptors
//!
//! An item that holds a `Share` or a pipe end carries a duplicate of its
//! descriptor from the moment it is encoded until it is answered, and its
//! result may carry one back. Descriptors in flight are counted over every
//! map of the process and kept under a quarter of its open-file limit
//! (`RLIMIT_NOFILE`): past that, the next item waits, encoded, until
//! answers come back. One map's task holds at most its window's share of
//! that, so descriptor-heavy items still spread over every worker. A map
//! with nothing in flight always sends its next item, so it never waits for
//! other maps.

use super::manager::Shared;
use super::progress::Progress;
use super::source::{Budget, Source, Step};
use super::task::{Job, Reply, Task};
use super::{batch, Options};
use crate::error::Error;
use crossbeam_channel::{Receiver, Sender};
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Work per task the batch size aims at.
const TARGET: Duration = Duration::from_millis(1);
/// Most items in one task.
const MAX_ITEMS: usize = 1 << 17;
/// Tasks out per worker.
const TASKS_PER_WORKER: usize = 3;
/// Descriptors in flight are kept under the open-file limit divided by this.
const FD_LIMIT_SHARE: u64 = 4;

/// Longest a stopped call waits for its running work to be killed.
const KILL_WAIT: Duration = Duration::from_secs(10);

/// Descriptors held by encoded items not answered yet, over every map of
/// the process.
static FDS_IN_FLIGHT: AtomicUsize = AtomicUsize::new(0);

/// Most descriptors in flight: a quarter of the soft `RLIMIT_NOFILE`.
fn fd_cap() -> usize {
    let soft = rlimit::Resource::NOFILE.get_soft().unwrap_or(1024);
    usize::try_from(soft / FD_LIMIT_SHARE).unwrap_or(usize::MAX)
}

/// Why [`Run::next_reply_by`] returned without a reply.
#[derive(Debug)]
pub(crate) enum Halt {
    /// The caller's own deadline for this wait passed; the call goes on.
    Waited,
    /// The call was stopped (its time limit, or cancelled), with the error
    /// it ends on; its work is being killed.
    Stopped(Error),
}

/// How far a call has got, readable from other threads.
#[derive(Debug, Default)]
pub(crate) struct Counts {
    /// Items answered.
    done: AtomicUsize,
    /// Items read from the input.
    read: AtomicUsize,
    /// The input's exact length, when it told it.
    total: Option<usize>,
    /// The input has been read to its end.
    exhausted: AtomicBool,
}

impl Counts {
    /// (items done, items in all): the total is the input's length if it
    /// told it, else the items read from it so far.
    pub(crate) fn get(&self) -> (usize, usize) {
        let done = self.done.load(Ordering::Relaxed);
        let total = self
            .total
            .unwrap_or_else(|| self.read.load(Ordering::Relaxed));
        (done, total.max(done))
    }

    /// Whether the input has been read to its end (the total is final).
    pub(crate) fn input_read(&self) -> bool {
        self.total.is_some() || self.exhausted.load(Ordering::Relaxed)
    }
}

/// Stops a run from another thread (a background call's `cancel`).
#[derive(Debug, Clone)]
pub(crate) struct Stopper {
    tx: Sender<Error>,
    call: String,
}

impl Stopper {
    /// Stops the call with [`Error::Cancelled`]; nothing if it has ended.
    pub(crate) fn cancel(&self) {
        let _ = self.tx.send(Error::Cancelled {
            call: self.call.clone(),
        });
    }
}

/// One map in progress.
pub(crate) struct Run<S> {
    job: Arc<Job>,
    shared: Arc<Shared>,
    /// The call's time limit and when it passes.
    limit: Option<(Duration, Instant)>,
    /// The error a [`Stopper`] stops the call with (the run keeps a
    /// sender, so it never disconnects).
    stop_tx: Sender<Error>,
    stop_rx: Receiver<Error>,
    /// A [`Stopper`] was made: a wait must watch `stop_rx` too.
    stoppable: bool,
    /// Stopped: nothing more is answered.
    halted: bool,
    counts: Arc<Counts>,
    tasks: Sender<Task>,
    replies: Receiver<Reply>,
    source: S,
    window: usize,
    exhausted: bool,
    /// Items handed to the managers and not answered.
    outstanding: usize,
    early: VecDeque<Reply>,
    /// Nanoseconds of work per item, averaged.
    per_item_ns: Option<f64>,
    largest: usize,
    /// Most descriptors in flight, over every map.
    fd_cap: usize,
    /// Descriptors held by the unit or batch starting at each index, for
    /// those that hold any.
    fds_held: HashMap<usize, usize>,
    progress: Progress,
}

impl<S: Source> Run<S> {
    pub(crate) fn new(
        tasks: Sender<Task>,
        shared: Arc<Shared>,
        workers: usize,
        options: &Options,
        make_job: impl FnOnce(Sender<Reply>) -> Job,
        source: S,
    ) -> Self {
        let (tx, replies) = crossbeam_channel::unbounded();
        let total = match source.size_hint() {
            (lo, Some(hi)) if lo == hi => Some(hi),
            _ => None,
        };
        let (stop_tx, stop_rx) = crossbeam_channel::unbounded();
        let now = Instant::now();
        Run {
            job: Arc::new(make_job(tx)),
            shared,
            // A limit too far to be represented is none.
            limit: options
                .timeout
                .and_then(|d| now.checked_add(d).map(|at| (d, at))),
            stop_tx,
            stop_rx,
            stoppable: false,
            halted: false,
            counts: Arc::new(Counts {
                total,
                ..Counts::default()
            }),
            tasks,
            replies,
            source,
            window: TASKS_PER_WORKER * workers,
            exhausted: false,
            outstanding: 0,
            early: VecDeque::new(),
            per_item_ns: None,
            largest: 0,
            fd_cap: fd_cap(),
            fds_held: HashMap::new(),
            progress: Progress::new(options, total.map(|t| t as u64)),
        }
    }

    /// What stops this run from another thread.
    pub(crate) fn stopper(&mut self) -> Stopper {
        self.stoppable = true;
        Stopper {
            tx: self.stop_tx.clone(),
            call: self.job.name.clone(),
        }
    }

    /// How far the run has got, shared.
    pub(crate) fn counts(&self) -> Arc<Counts> {
        self.counts.clone()
    }

    /// Stops the call on `e`: its work is skipped or killed, and nothing
    /// more is answered.
    fn halt(&mut self, e: Error) -> Halt {
        self.job.abort();
        self.shared.poke();
        // What was running is killed (and reaped) before the caller hears
        // of it; a worker that takes longer to die is not waited for.
        self.shared.wait_not_running(&self.job, KILL_WAIT);
        self.halted = true;
        self.exhausted = true;
        self.outstanding = 0;
        self.early.clear();
        self.counts.exhausted.store(true, Ordering::Relaxed);
        self.progress.finish();
        Halt::Stopped(e)
    }

    fn timeout_error(&self, limit: Duration) -> Error {
        Error::CallTimeout {
            call: self.job.name.clone(),
            limit,
        }
    }

    /// Items per task now.
    fn batch_size(&self) -> usize {
        let Some(ns) = self.per_item_ns else { return 1 };
        let by_cost = (TARGET.as_nanos() as f64 / ns.max(1.0)) as usize;
        by_cost.clamp(1, MAX_ITEMS).min(self.largest.max(1) * 2)
    }

    /// Hands out tasks until the window is full, the descriptor budget is
    /// spent, or the input ends.
    fn feed(&mut self) {
        while !self.exhausted {
            let size = self.batch_size();
            if self.outstanding >= self.window * size {
                break;
            }
            let budget = Budget {
                items: size,
                fds_per_task: (self.fd_cap / self.window).max(1),
                fds_room: self
                    .fd_cap
                    .saturating_sub(FDS_IN_FLIGHT.load(Ordering::Relaxed)),
                force: self.outstanding == 0,
            };
            match self.source.next_task(&self.job, budget, &mut self.early) {
                Step::Task(task, n) => {
                    self.outstanding += n;
                    self.counts.read.fetch_add(n, Ordering::Relaxed);
                    self.largest = self.largest.max(n);
                    self.hold_fds(&task);
                    // Fails only if every manager is gone; the task then
                    // answers its items as dropped.
                    let _ = self.tasks.send(task);
                }
                Step::Again => {}
                Step::Wait => break,
                Step::End => {
                    self.exhausted = true;
                    self.counts.exhausted.store(true, Ordering::Relaxed);
                }
            }
        }
    }

    /// Counts the descriptors of a task about to go out.
    fn hold_fds(&mut self, task: &Task) {
        let mut hold = |index: usize, n: usize| {
            if n > 0 {
                self.fds_held.insert(index, n);
                FDS_IN_FLIGHT.fetch_add(n, Ordering::Relaxed);
            }
        };
        match task {
            Task::Items { units, .. } => {
                units.iter().for_each(|u| hold(u.index, u.value.fds.len()))
            }
            Task::Calls(c) => hold(c.start, c.payload.fds.len()),
        }
    }

    /// Releases the descriptors of the unit or batch starting at `index`,
    /// answered now.
    fn release_fds(&mut self, index: usize) {
        if self.fds_held.is_empty() {
            return;
        }
        if let Some(n) = self.fds_held.remove(&index) {
            FDS_IN_FLIGHT.fetch_sub(n, Ordering::Relaxed);
        }
    }

    fn measured(&mut self, ns: f64) {
        self.per_item_ns = Some(match self.per_item_ns {
            Some(old) => 0.7 * old + 0.3 * ns,
            None => ns,
        });
    }

    /// The next reply, blocking; `Ok(None)` once every item has been
    /// answered, `Err` if the call was stopped.
    pub(crate) fn next_reply(&mut self) -> crate::Result<Option<Reply>> {
        match self.next_reply_by(None) {
            Ok(r) => Ok(r),
            Err(Halt::Stopped(e)) => Err(e),
            // Without a deadline of the caller's, it is not reached.
            Err(Halt::Waited) => Ok(None),
        }
    }

    /// The next reply, waiting until `deadline` at most (forever if
    /// `None`); `Ok(None)` once every item has been answered (or after the
    /// call was stopped).
    pub(crate) fn next_reply_by(
        &mut self,
        deadline: Option<Instant>,
    ) -> Result<Option<Reply>, Halt> {
        if self.halted {
            return Ok(None);
        }
        if let Ok(e) = self.stop_rx.try_recv() {
            return Err(self.halt(e));
        }
        if let Some((limit, at)) = self.limit {
            if Instant::now() >= at {
                let e = self.timeout_error(limit);
                return Err(self.halt(e));
            }
        }
        self.feed();
        let reply = match self.early.pop_front() {
            Some(r) => r,
            None if self.outstanding == 0 => {
                self.progress.finish();
                return Ok(None);
            }
            None if !self.stoppable && self.limit.is_none() && deadline.is_none() => {
                // Only a reply can end this wait: a plain receive wakes
                // up cheaper than a select, which takes the lock of every
                // channel it watched again once woken, while the manager
                // that woke it may still hold it.
                let r = self.replies.recv().expect("the job keeps a sender");
                self.received(&r);
                r
            }
            None => {
                let timer = |at: Option<Instant>| {
                    at.map_or_else(crossbeam_channel::never, crossbeam_channel::at)
                };
                let limit = timer(self.limit.map(|(_, at)| at));
                let waited = timer(deadline);
                let r = crossbeam_channel::select! {
                    recv(self.replies) -> r => r.expect("the job keeps a sender"),
                    recv(self.stop_rx) -> e => {
                        let e = e.expect("the run keeps a sender");
                        return Err(self.halt(e));
                    }
                    recv(limit) -> _ => {
                        let e = self.timeout_error(self.limit.map_or(Duration::ZERO, |l| l.0));
                        return Err(self.halt(e));
                    }
                    recv(waited) -> _ => return Err(Halt::Waited),
                };
                self.received(&r);
                r
            }
        };
        let n = match &reply {
            Reply::Item { .. } => 1,
            Reply::Calls { count, .. } => *count,
        };
        self.progress.advance(n);
        self.counts.done.fetch_add(n, Ordering::Relaxed);
        Ok(Some(reply))
    }

    /// Accounts for a reply from a manager.
    fn received(&mut self, r: &Reply) {
        match r {
            Reply::Item { index, busy, .. } => {
                self.outstanding -= 1;
                self.release_fds(*index);
                if !busy.is_zero() {
                    self.measured(busy.as_nanos() as f64);
                }
            }
            Reply::Calls {
                start,
                count,
                result,
            } => {
                self.outstanding -= count;
                self.release_fds(*start);
                if let Some((ns, _)) = result
                    .as_ref()
                    .ok()
                    .and_then(|enc| batch::split_u64(&enc.bytes).ok())
                {
                    self.measured(ns as f64 / (*count).max(1) as f64);
                }
            }
        }
    }

    /// Items not answered yet, and whether the input has more.
    pub(crate) fn pending(&self) -> (usize, bool) {
        (self.outstanding + self.early.len(), !self.exhausted)
    }

    pub(crate) fn job(&self) -> &Job {
        &self.job
    }
}

impl<S> Drop for Run<S> {
    fn drop(&mut self) {
        // Work still queued for a caller that has stopped listening is
        // skipped; what is running finishes.
        self.job.cancelled.store(true, Ordering::Relaxed);
        let held: usize = self.fds_held.values().sum();
        FDS_IN_FLIGHT.fetch_sub(held, Ordering::Relaxed);
        self.progress.finish();
    }
}

impl<S> std::fmt::Debug for Run<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Run")
            .field("job", &self.job.name)
            .field("outstanding", &self.outstanding)
            .field("exhausted", &self.exhausted)
            .finish()
    }
}
