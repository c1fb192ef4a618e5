//! Turning input items into tasks: each item is encoded only when a task
//! is made for it, so no more items are encoded (and no more of their
//! descriptors duplicated) than the dispatcher lets out.
//!
//! An item that cannot be encoded is answered at once with its error; the
//! items around it go on.

use super::batch;
use super::fixed;
use super::task::{Calls, Job, Reply, Task, Unit};
use crate::error::Error;
use crate::sys;
use crate::wire::{self, Encoded};
use serde::Serialize;
use std::collections::VecDeque;
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::time::Duration;

/// A task is closed once its encoded items pass this size.
pub(crate) const MAX_BYTES: usize = 4 << 20;

/// What [`Source::next_task`] made.
#[derive(Debug)]
pub(crate) enum Step {
    /// A task with this many items.
    Task(Task, usize),
    /// No task this time: the items taken could not be encoded and were
    /// answered early. The input has more.
    Again,
    /// The next item holds more descriptors than the budget lets out now;
    /// it is kept, encoded, for a later call.
    Wait,
    /// The input is exhausted.
    End,
}

/// How much one task may take.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Budget {
    /// Most items.
    pub(crate) items: usize,
    /// Most descriptors in a task of more than one item.
    pub(crate) fds_per_task: usize,
    /// Descriptors that may be let out now, over every task.
    pub(crate) fds_room: usize,
    /// Take the first item whatever descriptors it holds (nothing of this
    /// map is in flight, so waiting would wait forever).
    pub(crate) force: bool,
}

impl Budget {
    /// Whether an item holding `nfds` descriptors joins a task that holds
    /// `task_items` items and `task_fds` descriptors.
    fn admits(&self, task_items: usize, task_fds: usize, nfds: usize) -> bool {
        if nfds == 0 {
            return true;
        }
        if task_items == 0 {
            return self.force || nfds <= self.fds_room;
        }
        task_fds + nfds <= self.fds_per_task.min(self.fds_room).min(sys::sock::MAX_FDS)
    }
}

/// Turns input items into tasks.
pub(crate) trait Source {
    /// Takes items from the input within `budget`. An item that cannot be
    /// encoded is answered at once through `early`.
    fn next_task(&mut self, job: &Arc<Job>, budget: Budget, early: &mut VecDeque<Reply>) -> Step;

    /// The input's size hint.
    fn size_hint(&self) -> (usize, Option<usize>);
}

/// The early answer of an item that could not be encoded.
fn unencodable(index: usize, e: Error) -> Reply {
    Reply::Item {
        index,
        result: Err(e),
        busy: Duration::ZERO,
    }
}

/// The input of a call, read item by item, each with its index.
struct Input<I> {
    iter: I,
    /// The iterator has ended (it is not asked again).
    done: bool,
    next: usize,
}

impl<I: Iterator> Input<I> {
    fn new(iter: I) -> Self {
        Input {
            iter,
            done: false,
            next: 0,
        }
    }

    /// The next item and its index.
    fn pull(&mut self) -> Option<(usize, I::Item)> {
        if self.done {
            return None;
        }
        let Some(item) = self.iter.next() else {
            self.done = true;
            return None;
        };
        self.next += 1;
        Some((self.next - 1, item))
    }

    /// Items left, counting one `carried` (taken but not sent yet).
    fn size_hint(&self, carried: bool) -> (usize, Option<usize>) {
        let (lo, hi) = if self.done {
            (0, Some(0))
        } else {
            self.iter.size_hint()
        };
        let carried = usize::from(carried);
        (lo + carried, hi.map(|h| h + carried))
    }
}

/// Process items.
pub(crate) struct Items<I> {
    input: Input<I>,
    /// An encoded item that did not fit its task.
    carry: Option<(usize, Encoded)>,
}

impl<I: Iterator> Items<I> {
    pub(crate) fn new(iter: I) -> Self {
        Items {
            input: Input::new(iter),
            carry: None,
        }
    }
}

impl<I> Source for Items<I>
where
    I: Iterator,
    I::Item: Serialize,
{
    fn next_task(&mut self, job: &Arc<Job>, budget: Budget, early: &mut VecDeque<Reply>) -> Step {
        let _target = wire::remote_target(job.remote);
        let mut units = Vec::new();
        let (mut bytes, mut fds) = (0, 0);
        while units.len() < budget.items && bytes < MAX_BYTES {
            let (index, value) = match self.carry.take() {
                Some(c) => c,
                None => {
                    let Some((index, item)) = self.input.pull() else {
                        break;
                    };
                    match wire::encode(&item) {
                        Ok(v) => (index, v),
                        Err(e) => {
                            early.push_back(unencodable(index, e));
                            continue;
                        }
                    }
                }
            };
            if !budget.admits(units.len(), fds, value.fds.len()) {
                self.carry = Some((index, value));
                break;
            }
            bytes += value.bytes.len();
            fds += value.fds.len();
            units.push(Unit::new(job, index, value));
        }
        match units.len() {
            0 if self.carry.is_some() => Step::Wait,
            0 if self.input.done => Step::End,
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
        self.input.size_hint(self.carry.is_some())
    }
}

/// `map_fn` arguments.
pub(crate) struct Args<I> {
    input: Input<I>,
    entry: u64,
    scratch: Vec<u8>,
    /// An encoded argument that did not fit its task.
    carry: Option<(usize, Vec<u8>, Vec<OwnedFd>)>,
    /// Encoded bytes per item so far, to size a task's buffer up front
    /// (growing a large buffer remaps it, which is costly with threads).
    bytes_per_item: usize,
    /// Whether the arguments go in the fixed layout (`fixed`): `None`
    /// until the first is tried; `false` for good once one does not fit.
    fixed: Option<bool>,
}

impl<I: Iterator> Args<I> {
    pub(crate) fn new(iter: I, entry: u64) -> Self {
        Args {
            input: Input::new(iter),
            entry,
            scratch: Vec::new(),
            carry: None,
            bytes_per_item: 16,
            fixed: None,
        }
    }

    /// An empty task payload led by the function's entry, with room for
    /// `budget`'s items at the size measured so far.
    fn new_payload(&self, budget: Budget) -> Vec<u8> {
        let room = budget
            .items
            .saturating_mul(self.bytes_per_item)
            .min(MAX_BYTES + 1024);
        let mut payload = Vec::with_capacity(32 + room);
        payload.extend_from_slice(&self.entry.to_le_bytes());
        payload
    }

    /// A task of arguments in the fixed layout, while they have one; `None`
    /// when the general way takes over (an argument without it is carried
    /// there, encoded) or the input is exhausted.
    fn next_fixed(
        &mut self,
        job: &Arc<Job>,
        budget: Budget,
        early: &mut VecDeque<Reply>,
    ) -> Option<Step>
    where
        I::Item: Serialize,
    {
        let mut payload = self.new_payload(budget);
        let part = batch::begin_fixed(&mut payload);
        let mut start = None;
        let mut size = None;
        let mut count = 0;
        while count < budget.items && payload.len() < MAX_BYTES {
            let Some((index, item)) = self.input.pull() else {
                break;
            };
            let before = payload.len();
            let fits = fixed::encode(&item, &mut payload).is_ok()
                && *size.get_or_insert(payload.len() - before) == payload.len() - before;
            if !fits {
                payload.truncate(before);
                self.fixed = Some(false);
                match batch::encode_reusing(&mut self.scratch, &item) {
                    Ok(fds) => self.carry = Some((index, std::mem::take(&mut self.scratch), fds)),
                    Err(e) => early.push_back(unencodable(index, e)),
                }
                break;
            }
            self.fixed = Some(true);
            start.get_or_insert(index);
            count += 1;
        }
        let start = start?;
        batch::end_fixed(&mut payload, part, count, size.unwrap_or(0));
        self.bytes_per_item = (payload.len() - part).div_ceil(count).max(1);
        let calls = Calls::new(
            job.clone(),
            start,
            count,
            Encoded {
                bytes: payload,
                fds: Vec::new(),
            },
        );
        Some(Step::Task(Task::Calls(calls), count))
    }
}

impl<I> Source for Args<I>
where
    I: Iterator,
    I::Item: Serialize,
{
    fn next_task(&mut self, job: &Arc<Job>, budget: Budget, early: &mut VecDeque<Reply>) -> Step {
        let _target = wire::remote_target(job.remote);
        if self.fixed != Some(false) && self.carry.is_none() {
            if let Some(step) = self.next_fixed(job, budget, early) {
                return step;
            }
        }
        let mut payload = self.new_payload(budget);
        let mut fds: Vec<OwnedFd> = Vec::new();
        let mut start = None;
        let mut count = 0;
        while count < budget.items && payload.len() < MAX_BYTES {
            let (index, item_fds) = match self.carry.take() {
                Some((index, bytes, item_fds)) => {
                    self.scratch = bytes;
                    (index, item_fds)
                }
                None => {
                    let Some((index, item)) = self.input.pull() else {
                        break;
                    };
                    match batch::encode_reusing(&mut self.scratch, &item) {
                        Ok(item_fds) => (index, item_fds),
                        Err(e) => {
                            early.push_back(unencodable(index, e));
                            // A task covers consecutive items: end this one
                            // here.
                            if count > 0 {
                                break;
                            }
                            continue;
                        }
                    }
                }
            };
            if !budget.admits(count, fds.len(), item_fds.len()) {
                self.carry = Some((index, std::mem::take(&mut self.scratch), item_fds));
                break;
            }
            start.get_or_insert(index);
            batch::push_part(&mut payload, 0, &self.scratch, item_fds.len());
            fds.extend(item_fds);
            count += 1;
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
            None if self.carry.is_some() => Step::Wait,
            None if self.input.done => Step::End,
            None => Step::Again,
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.input.size_hint(self.carry.is_some())
    }
}
