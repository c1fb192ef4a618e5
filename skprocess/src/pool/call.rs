//! One call on a pool with its options: `map`, `unordered_map`, `imap`,
//! `unordered_imap` and `map_fn` all start here; the methods of the same
//! names on `Pool` are these with the default options.

use super::decode::{self, InOrder};
use super::dispatch::Run;
use super::imap::Imap;
use super::source::{Args, Items, Source};
use super::task::{Job, JobKind};
use super::Pool;
use crate::error::{Error, Result};
use crate::sys;
use crate::Process;
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::sync::atomic::AtomicBool;

/// The error `map_fn` gives for a closure that captures state.
const CAPTURING_CLOSURE: &str =
    "map_fn takes a fn or a closure that captures nothing; pass the state in the items instead";

/// The options of one call.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Options {
    /// Draw a progress bar.
    #[cfg(feature = "progress")]
    pub(crate) progress: bool,
}

/// A call on a [`Pool`] with options that apply to that call only, made
/// by one of the pool's `with_*` methods; other calls on the pool, from
/// this thread or another, are not affected.
///
/// It has the pool's `map`, `unordered_map`, `imap`, `unordered_imap` and
/// `map_fn`, which behave as theirs do, with the options. Options chain:
/// each `with_*` method is on the call too. The options:
///
/// - `with_progress`: draw a progress bar (with the `progress` feature).
///
#[derive(Debug, Clone, Copy)]
#[must_use = "a call does nothing until one of its methods runs it"]
pub struct PoolCall<'p> {
    pool: &'p Pool,
    options: Options,
}

impl<'p> PoolCall<'p> {
    /// A call with the default options.
    pub(crate) fn new(pool: &'p Pool) -> Self {
        PoolCall {
            pool,
            options: Options::default(),
        }
    }

    /// As [`Pool::with_progress`].
    #[cfg(feature = "progress")]
    pub fn with_progress(mut self) -> Self {
        self.options.progress = true;
        self
    }

    fn start<S: Source>(&self, name: String, kind: JobKind, source: S) -> Run<S> {
        let tasks = self
            .pool
            .tasks
            .clone()
            .expect("a pool in use is not dropped");
        let make_job = |replies| Job {
            name,
            kind,
            replies,
            cancelled: AtomicBool::new(false),
        };
        Run::new(tasks, self.pool.workers, &self.options, make_job, source)
    }

    fn start_items<P: Process, I: Iterator<Item = P>>(&self, items: I) -> Run<Items<I>> {
        let kind = JobKind::Items {
            type_id: P::ID,
            config: <P as Process>::config(),
        };
        self.start(P::NAME.to_string(), kind, Items::new(items))
    }

    /// [`Pool::map`] with this call's options.
    ///
    /// # Errors
    ///
    /// As [`Pool::map`].
    pub fn map<P, I>(self, items: I) -> Result<Vec<P>>
    where
        P: Process,
        I: IntoIterator<Item = P>,
    {
        let items = items.into_iter();
        let mut out = InOrder::with_capacity(items.size_hint().0);
        let mut run = self.start_items::<P, _>(items);
        while let Some(reply) = run.next_reply() {
            let (index, result) = decode::item::<P>(reply);
            out.put(index, result);
        }
        out.finish()
    }

    /// [`Pool::unordered_map`] with this call's options.
    ///
    /// # Errors
    ///
    /// As [`Pool::unordered_map`].
    pub fn unordered_map<P, I>(self, items: I) -> Result<Vec<P>>
    where
        P: Process,
        I: IntoIterator<Item = P>,
    {
        let mut run = self.start_items::<P, _>(items.into_iter());
        let mut out = Vec::new();
        let mut first_err = None;
        while let Some(reply) = run.next_reply() {
            match decode::item::<P>(reply).1 {
                Ok(p) => out.push(p),
                Err(e) => {
                    first_err.get_or_insert(e);
                }
            }
        }
        match first_err {
            Some(e) => Err(e),
            None => Ok(out),
        }
    }

    /// [`Pool::imap`] with this call's options.
    pub fn imap<P, I>(self, items: I) -> Imap<'p, P, I::IntoIter>
    where
        P: Process,
        I: IntoIterator<Item = P>,
    {
        Imap::new(self.start_items::<P, _>(items.into_iter()), true)
    }

    /// [`Pool::unordered_imap`] with this call's options.
    pub fn unordered_imap<P, I>(self, items: I) -> Imap<'p, P, I::IntoIter>
    where
        P: Process,
        I: IntoIterator<Item = P>,
    {
        Imap::new(self.start_items::<P, _>(items.into_iter()), false)
    }

    /// [`Pool::map_fn`] with this call's options.
    ///
    /// # Errors
    ///
    /// As [`Pool::map_fn`].
    pub fn map_fn<A, R, F, I>(self, f: F, items: I) -> Result<Vec<R>>
    where
        F: Fn(A) -> R + Copy,
        A: Serialize + DeserializeOwned,
        R: Serialize + DeserializeOwned,
        I: IntoIterator<Item = A>,
    {
        if sys::zst::conjure::<F>().is_none() {
            return Err(Error::usage(CAPTURING_CLOSURE));
        }
        let _ = f;
        let entry = sys::code::calls_entry_offset(super::batch::call_batch::<A, R, F>);
        let name = format!("map_fn({})", std::any::type_name::<F>());
        let items = items.into_iter();
        let mut out = InOrder::with_capacity(items.size_hint().0);
        let mut run = self.start(name, JobKind::Calls, Args::new(items, entry));
        while let Some(reply) = run.next_reply() {
            decode::calls::<R>(run.job(), reply, |index, r| out.put(index, r));
        }
        out.finish()
    }
}
