//! The iterator of `imap` and `unordered_imap`.

use super::decode;
use super::dispatch::{Halt, Run};
use super::source::Items;
use super::Pool;
use crate::error::Result;
use crate::Process;
use std::collections::BTreeMap;
use std::fmt;
use std::marker::PhantomData;
use std::time::{Duration, Instant};

/// The iterator of [`Pool::imap`] and [`Pool::unordered_imap`]: one
/// `Result` per item, each final state as soon as it can be yielded.
///
/// [`next`](Iterator::next) blocks until the next item can be yielded;
/// [`next_timeout`](Imap::next_timeout) and
/// [`next_deadline`](Imap::next_deadline) wait a bounded time.
///
/// Dropping it before the end skips the items that have not started; those
/// running finish in their workers and are discarded.
pub struct Imap<'p, P, I> {
    run: Run<Items<I>>,
    ordered: bool,
    /// The next index to yield, when ordered.
    next: usize,
    /// Items that ended before an earlier one, when ordered.
    early: BTreeMap<usize, Result<P>>,
    _pool: PhantomData<&'p Pool>,
}

/// What [`Imap::next_timeout`] and [`Imap::next_deadline`] found.
///
/// `Item` and `Exhausted` are what [`Iterator::next`] would have returned
/// (`Some` and `None`); `Timeout` means it would still be waiting.
#[derive(Debug)]
#[must_use]
pub enum ImapNext<T> {
    /// The next item: its final state, or why it failed.
    Item(Result<T>),
    /// No item could be yielded in time. The items keep running: call
    /// again to wait more.
    Timeout,
    /// Every item has been yielded.
    Exhausted,
}

impl<P, I> fmt::Debug for Imap<'_, P, I> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Imap")
            .field("run", &self.run)
            .field("ordered", &self.ordered)
            .field("next", &self.next)
            .field("buffered", &self.early.len())
            .finish()
    }
}

impl<P, I> Imap<'_, P, I> {
    pub(crate) fn new(run: Run<Items<I>>, ordered: bool) -> Self {
        Imap {
            run,
            ordered,
            next: 0,
            early: BTreeMap::new(),
            _pool: PhantomData,
        }
    }
}

impl<P, I> Imap<'_, P, I>
where
    P: Process,
    I: Iterator<Item = P>,
{
    /// Waits at most `timeout` for the next item.
    ///
    /// # Examples
    ///
    /// ```
    /// # use serde::{Deserialize, Serialize};
    /// # use skprocess::prelude::*;
    /// # use skprocess::ImapNext;
    /// # use std::time::Duration;
    /// #[derive(Process, Serialize, Deserialize)]
    /// #[process(runs = 1)]
    /// struct Nap { ms: u64 }
    /// impl Process for Nap {
    ///     fn run(&mut self, _ctx: &mut Ctx) -> HookResult {
    ///         std::thread::sleep(Duration::from_millis(self.ms));
    ///         Ok(())
    ///     }
    /// }
    ///
    /// # fn main() -> skprocess::Result<()> {
    /// let pool = Pool::new(1)?;
    /// let mut naps = pool.imap([Nap { ms: 300 }]);
    /// assert!(matches!(naps.next_timeout(Duration::ZERO), ImapNext::Timeout));
    /// loop {
    ///     match naps.next_timeout(Duration::from_millis(50)) {
    ///         ImapNext::Item(nap) => assert_eq!(nap?.ms, 300),
    ///         ImapNext::Timeout => println!("still napping"),
    ///         ImapNext::Exhausted => break,
    ///     }
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub fn next_timeout(&mut self, timeout: Duration) -> ImapNext<P> {
        match Instant::now().checked_add(timeout) {
            Some(deadline) => self.next_deadline(deadline),
            None => self.next().map_or(ImapNext::Exhausted, ImapNext::Item),
        }
    }

    /// Waits until `deadline` at most for the next item.
    pub fn next_deadline(&mut self, deadline: Instant) -> ImapNext<P> {
        match self.next_by(Some(deadline)) {
            Ok(Some(r)) => ImapNext::Item(r),
            Ok(None) => ImapNext::Exhausted,
            Err(Halt::Waited) => ImapNext::Timeout,
            Err(Halt::Stopped(e)) => ImapNext::Item(Err(e)),
        }
    }

    /// The next item, waiting until `deadline` (forever if `None`).
    fn next_by(&mut self, deadline: Option<Instant>) -> Result<Option<Result<P>>, Halt> {
        loop {
            if self.ordered {
                if let Some(r) = self.early.remove(&self.next) {
                    self.next += 1;
                    return Ok(Some(r));
                }
            }
            let reply = match self.run.next_reply_by(deadline) {
                Ok(r) => r,
                Err(Halt::Stopped(e)) => {
                    // The error is the last item: what ended before it in
                    // the wrong order is dropped with the rest.
                    self.early.clear();
                    return Ok(Some(Err(e)));
                }
                Err(Halt::Waited) => return Err(Halt::Waited),
            };
            let Some(reply) = reply else {
                // Every item is answered; anything buffered (an index that
                // was skipped, which does not happen) goes out in order.
                return Ok(self.early.pop_first().map(|(_, r)| r));
            };
            let (index, result) = decode::item::<P>(reply);
            if !self.ordered {
                return Ok(Some(result));
            }
            self.early.insert(index, result);
        }
    }
}

impl<P, I> Iterator for Imap<'_, P, I>
where
    P: Process,
    I: Iterator<Item = P>,
{
    type Item = Result<P>;

    fn next(&mut self) -> Option<Result<P>> {
        // Without a deadline of its own, it waits until an item or the end.
        self.next_by(None).unwrap_or(None)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let (pending, more) = self.run.pending();
        let have = pending + self.early.len();
        (have, if more { None } else { Some(have) })
    }
}
