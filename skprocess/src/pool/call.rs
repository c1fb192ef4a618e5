//! One call on a pool with its options: `map`, `unordered_map`, `imap`,
//! `unordered_imap` and `map_fn` all start here; the methods of the same
//! names on `Pool` are these with the default options. A background call
//! ([`BackgroundCall`]) starts the same runs and collects them on a thread
//! of its own.

use super::background::{self, Background, ImapStream};
use super::decode::{self, InOrder};
use super::dispatch::Run;
use super::imap::Imap;
use super::manager::Shared;
use super::source::{Args, Items, Source};
use super::task::{Job, JobKind, Task};
use super::Pool;
use crate::error::{Error, Result};
use crate::sys;
use crate::Process;
use crossbeam_channel::Sender;
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

/// The error `map_fn` gives for a closure that captures state.
const CAPTURING_CLOSURE: &str =
    "map_fn takes a fn or a closure that captures nothing; pass the state in the items instead";

/// The options of one call.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Options {
    /// Draw a progress bar.
    #[cfg(feature = "progress")]
    pub(crate) progress: bool,
    /// The call's time limit.
    pub(crate) timeout: Option<Duration>,
}

/// What a call needs of its pool, owned, so that a background call can
/// outlive the borrow it was made from.
#[derive(Debug, Clone)]
pub(crate) struct Target {
    tasks: Sender<Task>,
    shared: Arc<Shared>,
    workers: usize,
}

impl Target {
    pub(crate) fn of(pool: &Pool) -> Target {
        Target {
            tasks: pool.tasks.clone().expect("a pool in use is not dropped"),
            shared: pool.shared.clone(),
            workers: pool.workers,
        }
    }

    fn start<S: Source>(
        &self,
        options: &Options,
        name: String,
        kind: JobKind,
        source: S,
    ) -> Run<S> {
        let make_job = |replies| Job {
            name,
            kind,
            replies,
            cancelled: AtomicBool::new(false),
            aborted: AtomicBool::new(false),
            remote: self.shared.settings.cluster.is_some(),
        };
        Run::new(
            self.tasks.clone(),
            self.shared.clone(),
            self.workers,
            options,
            make_job,
            source,
        )
    }

    fn start_items<P: Process, I: Iterator<Item = P>>(
        &self,
        options: &Options,
        items: I,
    ) -> Run<Items<I>> {
        let kind = JobKind::Items {
            type_id: P::ID,
            config: <P as Process>::config(),
        };
        self.start(options, P::NAME.to_string(), kind, Items::new(items))
    }

    /// Starts a `map_fn` run, or says why `f` cannot be sent.
    fn start_calls<A, R, F, I>(&self, options: &Options, items: I) -> Result<Run<Args<I>>>
    where
        F: Fn(A) -> R + Copy,
        A: Serialize + DeserializeOwned,
        R: Serialize + DeserializeOwned,
        I: Iterator<Item = A>,
    {
        if sys::zst::conjure::<F>().is_none() {
            return Err(Error::usage(CAPTURING_CLOSURE));
        }
        let entry = sys::code::calls_entry_offset(super::batch::call_batch::<A, R, F>);
        let name = format!("map_fn({})", std::any::type_name::<F>());
        Ok(self.start(options, name, JobKind::Calls, Args::new(items, entry)))
    }
}

/// Collects a run of process items in input order.
fn collect_ordered<P: Process, S: Source>(mut run: Run<S>) -> Result<Vec<P>> {
    let (lo, _) = run.pending();
    let mut out = InOrder::with_capacity(lo);
    while let Some(reply) = run.next_reply()? {
        let (index, result) = decode::item::<P>(reply);
        out.put(index, result);
    }
    out.finish()
}

/// Collects a run of process items in the order they end.
fn collect_unordered<P: Process, S: Source>(mut run: Run<S>) -> Result<Vec<P>> {
    let mut out = Vec::new();
    let mut first_err = None;
    while let Some(reply) = run.next_reply()? {
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

/// Collects a run of `map_fn` calls in input order.
fn collect_calls<R: DeserializeOwned, S: Source>(mut run: Run<S>) -> Result<Vec<R>> {
    let mut out = InOrder::with_capacity(0);
    while let Some(reply) = run.next_reply()? {
        decode::calls::<R>(run.job(), reply, |index, r| out.put(index, r));
    }
    out.finish()
}

/// A call on a [`Pool`] with options that apply to that call only, made
/// by one of the pool's `with_*` methods; other calls on the pool, from
/// this thread or another, are not affected.
///
/// It has the pool's `map`, `unordered_map`, `imap`, `unordered_imap` and
/// `map_fn`, which behave as theirs do, with the options. Options chain:
/// each `with_*` method is on the call too. The options:
///
/// - `with_timeout`: a time limit for the whole call.
/// - `with_progress`: draw a progress bar (with the `progress` feature).
///
/// [`background`](PoolCall::background) makes it a background call with
/// the same options.
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

    /// As [`Pool::with_timeout`].
    pub fn with_timeout(mut self, limit: Duration) -> Self {
        self.options.timeout = Some(limit);
        self
    }

    /// As [`Pool::background`], with this call's options.
    pub fn background(self) -> BackgroundCall {
        BackgroundCall {
            target: Target::of(self.pool),
            options: self.options,
        }
    }

    fn target(&self) -> Target {
        Target::of(self.pool)
    }

    /// [`Pool::map`] with this call's options.
    ///
    /// # Errors
    ///
    /// As [`Pool::map`]; past the time limit, [`Error::CallTimeout`].
    pub fn map<P, I>(self, items: I) -> Result<Vec<P>>
    where
        P: Process,
        I: IntoIterator<Item = P>,
    {
        collect_ordered(
            self.target()
                .start_items::<P, _>(&self.options, items.into_iter()),
        )
    }

    /// [`Pool::unordered_map`] with this call's options.
    ///
    /// # Errors
    ///
    /// As [`Pool::unordered_map`]; past the time limit,
    /// [`Error::CallTimeout`].
    pub fn unordered_map<P, I>(self, items: I) -> Result<Vec<P>>
    where
        P: Process,
        I: IntoIterator<Item = P>,
    {
        collect_unordered(
            self.target()
                .start_items::<P, _>(&self.options, items.into_iter()),
        )
    }

    /// [`Pool::imap`] with this call's options.
    pub fn imap<P, I>(self, items: I) -> Imap<'p, P, I::IntoIter>
    where
        P: Process,
        I: IntoIterator<Item = P>,
    {
        Imap::new(
            self.target()
                .start_items::<P, _>(&self.options, items.into_iter()),
            true,
        )
    }

    /// [`Pool::unordered_imap`] with this call's options.
    pub fn unordered_imap<P, I>(self, items: I) -> Imap<'p, P, I::IntoIter>
    where
        P: Process,
        I: IntoIterator<Item = P>,
    {
        Imap::new(
            self.target()
                .start_items::<P, _>(&self.options, items.into_iter()),
            false,
        )
    }

    /// [`Pool::map_fn`] with this call's options.
    ///
    /// # Errors
    ///
    /// As [`Pool::map_fn`]; past the time limit, [`Error::CallTimeout`].
    pub fn map_fn<A, R, F, I>(self, f: F, items: I) -> Result<Vec<R>>
    where
        F: Fn(A) -> R + Copy,
        A: Serialize + DeserializeOwned,
        R: Serialize + DeserializeOwned,
        I: IntoIterator<Item = A>,
    {
        let _ = f;
        collect_calls(
            self.target()
                .start_calls::<A, R, F, _>(&self.options, items.into_iter())?,
        )
    }
}

impl PoolCall<'_> {
    /// [`Pool::map_async`] with this call's options.
    pub fn map_async<P, I>(self, items: I) -> Background<Vec<P>>
    where
        P: Process + Send + 'static,
        I: IntoIterator<Item = P>,
        I::IntoIter: Send + 'static,
    {
        self.background().map(items)
    }

    /// [`Pool::map_fn_async`] with this call's options.
    pub fn map_fn_async<A, R, F, I>(self, f: F, items: I) -> Background<Vec<R>>
    where
        F: Fn(A) -> R + Copy,
        A: Serialize + DeserializeOwned + Send + 'static,
        R: Serialize + DeserializeOwned + Send + 'static,
        I: IntoIterator<Item = A>,
        I::IntoIter: Send + 'static,
    {
        self.background().map_fn(f, items)
    }

    /// [`Pool::imap_async`] with this call's options. With a time limit,
    /// the stream's thread enforces it while it has room for results
    /// (about two per worker): the error comes as the last item.
    pub fn imap_async<P, I>(self, items: I) -> ImapStream<P>
    where
        P: Process + Send + 'static,
        I: IntoIterator<Item = P>,
        I::IntoIter: Send + 'static,
    {
        self.background().imap_stream(items, true)
    }

    /// [`Pool::unordered_imap_async`] with this call's options.
    pub fn unordered_imap_async<P, I>(self, items: I) -> ImapStream<P>
    where
        P: Process + Send + 'static,
        I: IntoIterator<Item = P>,
        I::IntoIter: Send + 'static,
    {
        self.background().imap_stream(items, false)
    }
}

/// A call that runs in the background, made by [`Pool::background`] (or
/// [`PoolCall::background`]): its `map`, `unordered_map` and `map_fn`
/// return a [`Background`] at once, while the pool's workers run the
/// items. Its options are those of [`PoolCall`], chained the same way.
///
/// The items (and the input iterator, which is read as the workers need
/// items) move to a thread of the call's own, so they are `Send +
/// 'static`.
#[derive(Debug, Clone)]
#[must_use = "a call does nothing until one of its methods runs it"]
pub struct BackgroundCall {
    target: Target,
    options: Options,
}

impl BackgroundCall {
    /// As [`Pool::with_progress`].
    #[cfg(feature = "progress")]
    pub fn with_progress(mut self) -> Self {
        self.options.progress = true;
        self
    }

    /// As [`Pool::with_timeout`]: the limit counts from when the call
    /// starts.
    pub fn with_timeout(mut self, limit: Duration) -> Self {
        self.options.timeout = Some(limit);
        self
    }

    /// [`Pool::map`] in the background: the final states in input order.
    pub fn map<P, I>(self, items: I) -> Background<Vec<P>>
    where
        P: Process + Send + 'static,
        I: IntoIterator<Item = P>,
        I::IntoIter: Send + 'static,
    {
        let run = self
            .target
            .start_items::<P, _>(&self.options, items.into_iter());
        background::spawn(run, collect_ordered::<P, _>)
    }

    /// [`Pool::unordered_map`] in the background: the final states in the
    /// order the items ended.
    pub fn unordered_map<P, I>(self, items: I) -> Background<Vec<P>>
    where
        P: Process + Send + 'static,
        I: IntoIterator<Item = P>,
        I::IntoIter: Send + 'static,
    {
        let run = self
            .target
            .start_items::<P, _>(&self.options, items.into_iter());
        background::spawn(run, collect_unordered::<P, _>)
    }

    /// [`Pool::map_fn`] in the background: the results in input order.
    pub fn map_fn<A, R, F, I>(self, f: F, items: I) -> Background<Vec<R>>
    where
        F: Fn(A) -> R + Copy,
        A: Serialize + DeserializeOwned + Send + 'static,
        R: Serialize + DeserializeOwned + Send + 'static,
        I: IntoIterator<Item = A>,
        I::IntoIter: Send + 'static,
    {
        let _ = f;
        match self
            .target
            .start_calls::<A, R, F, _>(&self.options, items.into_iter())
        {
            Ok(run) => background::spawn(run, collect_calls::<R, _>),
            Err(e) => Background::ready(Err(e)),
        }
    }

    /// [`Pool::imap`] as a stream (see [`Pool::imap_async`]).
    pub(crate) fn imap_stream<P, I>(self, items: I, ordered: bool) -> ImapStream<P>
    where
        P: Process + Send + 'static,
        I: IntoIterator<Item = P>,
        I::IntoIter: Send + 'static,
    {
        let run = self
            .target
            .start_items::<P, _>(&self.options, items.into_iter());
        background::stream(
            Imap::<'static, P, I::IntoIter>::new(run, ordered),
            self.target.workers,
        )
    }
}
