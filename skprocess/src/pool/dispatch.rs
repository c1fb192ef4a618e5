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

use super::batch;
use super::task::{Calls, Job, Reply, Task, Unit};
use crate::error::{Error, Result};
use crate::sys;
use crate::wire::{self, Encoded};
use crossbeam_channel::{Receiver, Sender};
use serde::Serialize;
use std::collections::VecDeque;
use std::os::fd::OwnedFd;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Work per task the batch size aims at.
const TARGET: Duration = Duration::from_millis(1);
/// Most items in one task.
const MAX_ITEMS: usize = 1 << 17;
/// A task is closed once its encoded items pass this size.
const MAX_BYTES: usize = 4 << 20;
/// Tasks out per worker.
const TASKS_PER_WORKER: usize = 3;
/// A map that runs longer than this shows its progress bar (when enabled).
const SHOW_PROGRESS_AFTER: Duration = Duration::from_millis(500);

/// What [`Source::next_task`] made.
pub(crate) enum Step {
    /// A task with this many items.
    Task(Task, usize),
    /// No task this time (items that could not be encoded were answered
    /// early); call again.
    Again,
    /// The input is exhausted.
    End,
}

/// Turns input items into tasks.
pub(crate) trait Source {
    /// Takes up to `size` items from the input. An item that cannot be
    /// encoded is answered at once through `early`.
    fn next_task(&mut self, job: &Arc<Job>, size: usize, early: &mut VecDeque<Reply>) -> Step;

    /// The input's size hint.
    fn size_hint(&self) -> (usize, Option<usize>);
}

/// One map in progress.
pub(crate) struct Run<S> {
    job: Arc<Job>,
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
    progress: Progress,
}

impl<S: Source> Run<S> {
    pub(crate) fn new(
        tasks: Sender<Task>,
        workers: usize,
        progress: bool,
        make_job: impl FnOnce(Sender<Reply>) -> Job,
        source: S,
    ) -> Self {
        let (tx, replies) = crossbeam_channel::unbounded();
        let total = match source.size_hint() {
            (lo, Some(hi)) if lo == hi => Some(hi as u64),
            _ => None,
        };
        Run {
            job: Arc::new(make_job(tx)),
            tasks,
            replies,
            source,
            window: TASKS_PER_WORKER * workers,
            exhausted: false,
            outstanding: 0,
            early: VecDeque::new(),
            per_item_ns: None,
            largest: 0,
            progress: Progress::new(progress, total),
        }
    }

    /// Items per task now.
    fn batch_size(&self) -> usize {
        let Some(ns) = self.per_item_ns else { return 1 };
        let by_cost = (TARGET.as_nanos() as f64 / ns.max(1.0)) as usize;
        by_cost.clamp(1, MAX_ITEMS).min(self.largest.max(1) * 2)
    }

    /// Hands out tasks until the window is full or the input ends.
    fn feed(&mut self) {
        while !self.exhausted {
            let size = self.batch_size();
            if self.outstanding >= self.window * size {
                break;
            }
            match self.source.next_task(&self.job, size, &mut self.early) {
                Step::Task(task, n) => {
                    self.outstanding += n;
                    self.largest = self.largest.max(n);
                    // Fails only if every manager is gone; the task then
                    // answers its items as dropped.
                    let _ = self.tasks.send(task);
                }
                Step::Again => {}
                Step::End => self.exhausted = true,
            }
        }
    }

    fn measured(&mut self, ns: f64) {
        self.per_item_ns = Some(match self.per_item_ns {
            Some(old) => 0.7 * old + 0.3 * ns,
            None => ns,
        });
    }

    /// The next reply, blocking; `None` once every item has been answered.
    pub(crate) fn next_reply(&mut self) -> Option<Reply> {
        self.feed();
        let reply = match self.early.pop_front() {
            Some(r) => r,
            None if self.outstanding == 0 => {
                self.progress.finish();
                return None;
            }
            None => {
                let r = self.replies.recv().expect("the job keeps a sender");
                match &r {
                    Reply::Item { busy, .. } => {
                        self.outstanding -= 1;
                        if !busy.is_zero() {
                            self.measured(busy.as_nanos() as f64);
                        }
                    }
                    Reply::Calls { count, result, .. } => {
                        self.outstanding -= count;
                        if let Some((ns, _)) = result
                            .as_ref()
                            .ok()
                            .and_then(|enc| batch::split_u64(&enc.bytes).ok())
                        {
                            self.measured(ns as f64 / (*count).max(1) as f64);
                        }
                    }
                }
                r
            }
        };
        let n = match &reply {
            Reply::Item { .. } => 1,
            Reply::Calls { count, .. } => *count,
        };
        self.progress.advance(n);
        Some(reply)
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

// ---------------------------------------------------------------------------
// Sources.

/// Process items.
pub(crate) struct Items<I> {
    iter: I,
    next: usize,
    /// An item that did not fit its task's descriptor budget.
    carry: Option<(usize, Encoded)>,
}

impl<I> Items<I> {
    pub(crate) fn new(iter: I) -> Self {
        Items {
            iter,
            next: 0,
            carry: None,
        }
    }
}

impl<I> Source for Items<I>
where
    I: Iterator,
    I::Item: Serialize,
{
    fn next_task(&mut self, job: &Arc<Job>, size: usize, early: &mut VecDeque<Reply>) -> Step {
        let mut units = Vec::new();
        let (mut bytes, mut fds) = (0, 0);
        while units.len() < size && bytes < MAX_BYTES {
            let (index, value) = match self.carry.take() {
                Some(c) => c,
                None => {
                    let Some(item) = self.iter.next() else { break };
                    let index = self.next;
                    self.next += 1;
                    match wire::encode(&item) {
                        Ok(v) => (index, v),
                        Err(e) => {
                            early.push_back(Reply::Item {
                                index,
                                result: Err(e),
                                busy: Duration::ZERO,
                            });
                            continue;
                        }
                    }
                }
            };
            if !units.is_empty() && fds + value.fds.len() > sys::sock::MAX_FDS {
                self.carry = Some((index, value));
                break;
            }
            bytes += value.bytes.len();
            fds += value.fds.len();
            units.push(Unit::new(job, index, value));
        }
        match units.len() {
            0 if early.is_empty() => Step::End,
            0 => Step::Again,
            n => Step::Task(
                Task::Items {
                    job: job.clone(),
                    units,
                },
                n,
            ),
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.iter.size_hint()
    }
}

/// `map_fn` arguments.
pub(crate) struct Args<I> {
    iter: I,
    entry: u64,
    next: usize,
    scratch: Vec<u8>,
    carry: Option<(usize, Vec<u8>, Vec<OwnedFd>)>,
    /// Encoded bytes per item so far, to size a task's buffer up front
    /// (growing a large buffer remaps it, which is costly with threads).
    bytes_per_item: usize,
}

impl<I> Args<I> {
    pub(crate) fn new(iter: I, entry: u64) -> Self {
        Args {
            iter,
            entry,
            next: 0,
            scratch: Vec::new(),
            carry: None,
            bytes_per_item: 16,
        }
    }
}

impl<I> Source for Args<I>
where
    I: Iterator,
    I::Item: Serialize,
{
    fn next_task(&mut self, job: &Arc<Job>, size: usize, early: &mut VecDeque<Reply>) -> Step {
        let mut payload = Vec::with_capacity(
            8 + size
                .saturating_mul(self.bytes_per_item)
                .min(MAX_BYTES + 1024),
        );
        payload.extend_from_slice(&self.entry.to_le_bytes());
        let mut fds: Vec<OwnedFd> = Vec::new();
        let mut start = None;
        let mut count = 0;
        while count < size && payload.len() < MAX_BYTES {
            if let Some((index, bytes, item_fds)) = self.carry.take() {
                start.get_or_insert(index);
                batch::push_part(&mut payload, 0, &bytes, item_fds.len());
                fds.extend(item_fds);
                count += 1;
                continue;
            }
            let Some(item) = self.iter.next() else { break };
            let index = self.next;
            self.next += 1;
            match batch::encode_reusing(&mut self.scratch, &item) {
                Ok(item_fds) if count > 0 && fds.len() + item_fds.len() > sys::sock::MAX_FDS => {
                    self.carry = Some((index, self.scratch.clone(), item_fds));
                    break;
                }
                Ok(item_fds) => {
                    start.get_or_insert(index);
                    batch::push_part(&mut payload, 0, &self.scratch, item_fds.len());
                    fds.extend(item_fds);
                    count += 1;
                }
                Err(e) => {
                    early.push_back(Reply::Item {
                        index,
                        result: Err(e),
                        busy: Duration::ZERO,
                    });
                    // A task covers consecutive items: end this one here.
                    if count > 0 {
                        break;
                    }
                }
            }
        }
        match start {
            Some(start) => {
                self.bytes_per_item = (payload.len() - 8).div_ceil(count.max(1)).max(1);
                let calls = Calls::new(
                    job.clone(),
                    start,
                    count,
                    Encoded {
                        bytes: payload,
                        fds,
                    },
                );
                Step::Task(Task::Calls(calls), count)
            }
            None if early.is_empty() => Step::End,
            None => Step::Again,
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.iter.size_hint()
    }
}

// ---------------------------------------------------------------------------

/// The progress bar of one map, drawn on stderr once the map has run for
/// a while (and only if enabled).
struct Progress {
    enabled: bool,
    total: Option<u64>,
    started: Instant,
    done: u64,
    bar: Option<indicatif::ProgressBar>,
}

impl Progress {
    fn new(enabled: bool, total: Option<u64>) -> Self {
        Progress {
            enabled,
            total,
            started: Instant::now(),
            done: 0,
            bar: None,
        }
    }

    fn advance(&mut self, n: usize) {
        self.done += n as u64;
        if !self.enabled {
            return;
        }
        if self.bar.is_none() && self.started.elapsed() >= SHOW_PROGRESS_AFTER {
            let (bar, template) = match self.total {
                Some(total) => (
                    indicatif::ProgressBar::new(total),
                    "{bar:40} {pos}/{len} items, {per_sec}, {elapsed} (eta {eta})",
                ),
                None => (
                    indicatif::ProgressBar::new_spinner(),
                    "{spinner} {pos} items, {per_sec}, {elapsed}",
                ),
            };
            bar.set_draw_target(indicatif::ProgressDrawTarget::stderr());
            if let Ok(style) = indicatif::ProgressStyle::with_template(template) {
                bar.set_style(style);
            }
            self.bar = Some(bar);
        }
        if let Some(bar) = &self.bar {
            bar.set_position(self.done);
        }
    }

    fn finish(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
    }
}

/// Decodes a `POOL_RESULTS` payload: one result per call of the batch.
pub(crate) fn results<R: serde::de::DeserializeOwned>(
    job: &Job,
    start: usize,
    count: usize,
    payload: Encoded,
) -> Result<Vec<Result<R>>> {
    let (_, rest) = batch::split_u64(&payload.bytes)?;
    let mut out = Vec::with_capacity(count);
    let mut parts = batch::Parts::new(rest, payload.fds);
    for part in parts.by_ref() {
        let part = part?;
        let index = start + out.len();
        out.push(match part.tag {
            batch::TAG_OK => wire::decode::<R>(part.bytes, part.fds),
            tag => {
                let msg = String::from_utf8_lossy(part.bytes).into_owned();
                let cause = if tag == batch::TAG_PANICKED {
                    crate::error::Cause::Panicked(msg)
                } else {
                    crate::error::Cause::Codec(msg)
                };
                let mut f = job.failure(index, 1, Some(crate::config::Hook::Run), None, cause);
                f.lives = 1;
                Err(Error::Process(Box::new(f)))
            }
        });
    }
    if out.len() != count || parts.leftover_fds() != 0 {
        return Err(Error::Wire(format!(
            "a pool worker answered {} of a batch of {count} calls",
            out.len()
        )));
    }
    Ok(out)
}
