//! `Pool`: a fixed set of worker processes, reused across items and calls.
//!
//! Each worker is a child started once, when the pool is made; a manager
//! thread per worker feeds it tasks from the pool's queue, so several maps
//! (from several threads, or `imap`s consumed side by side) share the
//! workers. A process item runs its whole lifecycle in a worker, with its
//! `lives`, hook timeouts and `join_in`, and comes back as its final state.
//! `map_fn` sends a plain function instead of a process type.
//!
//! Items travel in batches sized from their measured cost (see `dispatch`),
//! so a million tiny items cost about as much as a million function calls,
//! while long items are dealt out one at a time.
//!
//! A worker that crashes, or is killed because an item ran past its timeout,
//! is replaced at once; only the item it was running loses a life (and is
//! retried in the fresh worker while it has lives left), and the items queued
//! behind it run unharmed. Dropping the pool closes every worker's socket
//! (the workers exit), reaps them, and kills any that do not exit in time.

mod background;
pub(crate) mod batch;
mod builder;
mod call;
mod decode;
mod dispatch;
mod fixed;
mod imap;
mod launcher;
mod manager;
mod progress;
pub(crate) mod remote;
mod source;
mod task;

use crate::error::{Error, Result};
use crate::log;
use crate::timers::Timers;
use crate::Process;
pub use background::{Background, ImapStream};
pub use builder::PoolBuilder;
use builder::Settings;
use call::Options;
pub use call::{BackgroundCall, PoolCall};
use crossbeam_channel::Sender;
pub use imap::{Imap, ImapNext};
pub use launcher::Launcher;
use manager::{Manager, Shared, Slots, Worker};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;
use task::Task;

/// A fixed set of worker processes that run process items and plain
/// functions, reused across items and calls.
///
/// Every method takes `&self`: a pool can be shared between threads, and
/// several maps may run on it at once.
///
/// # Items in a pool
///
/// Each item runs its whole lifecycle in a worker with a fresh [`Ctx`](crate::Ctx),
/// as in a child of its own: `runs`, `lives`, hook timeouts and `join_in`
/// come from its type's `#[process(...)]`. A lost life restarts the item
/// from its initial state: in the same worker after a hook returned `Err`
/// or panicked, in a fresh worker after a crash or a timeout. Nobody
/// listens to a pool item: what it `tell`s is dropped and `listen` never
/// receives anything.
///
/// # Logging
///
/// `tracing` events emitted by items (and by `map_fn` functions) reach the
/// subscriber that was current where the pool was made, under the span
/// current there, as a single process's do: none lost, in the order the
/// worker emitted them, and each item's events before its result. They
/// carry `pid`, the worker's pid (see [`pids`](Pool::pids)), and `process`,
/// the item's type name and the worker's index: `app::Job[worker 2]`. For
/// `map_fn`, the name is the one its errors give, with the function's type
/// name: `map_fn(app::double)[worker 2]` (a closure shows as
/// `app::main::{{closure}}`). The level sent is decided when each worker
/// starts, as for a process.
///
/// An item's [`Config::capture_output`](crate::Config::capture_output) and
/// [`Config::log_dir`](crate::Config::log_dir) do not apply in a pool: the
/// pool's own settings do, the same for every worker, set through
/// [`Pool::builder`]. By default a worker writes to the parent's standard
/// streams and its events go to the subscriber only. With
/// [`PoolBuilder::capture_output`], its output lines become events too,
/// labelled like the item's. With [`PoolBuilder::log_dir`], each worker
/// writes its own file, `<dir>/pool-worker-<index>-<pid>.log` (a replaced
/// worker writes a new one): every event with the time the worker emitted
/// it, in its order, item after item, and its captured lines among them.
///
/// # Items that hold descriptors
///
/// An item holding a [`Share`](crate::Share) or a pipe end sends a
/// duplicate of its descriptor with it. Items are encoded only as workers
/// need them, and the descriptors in flight, over every call in the
/// process, are kept under a quarter of its open-file limit
/// (`RLIMIT_NOFILE`), so any number of such items runs under the usual
/// limit of 1024. An item whose descriptor cannot be duplicated (the
/// process has run out) fails with an error that says so.
///
/// # Options of one call
///
/// A `with_*` method returns a [`PoolCall`] with the same methods and an
/// option that applies to that call only: [`with_timeout`](Pool::with_timeout)
/// gives the call a time limit (its items still running past it are
/// killed); with the `progress` feature, `with_progress` draws a progress
/// bar. [`background`](Pool::background) runs a call while the caller goes
/// on, returning a [`Background`] to wait for, cancel or `.await`;
/// [`map_async`](Pool::map_async) and the other `_async` methods are the
/// same calls as futures and streams.
///
/// # Recycling workers
///
/// [`PoolBuilder::max_items_per_worker`] and
/// [`PoolBuilder::max_worker_memory`] replace a worker after some items,
/// or once its resident memory has grown past a ceiling (a leak in the
/// items' code, a cache that only grows): always between two items.
///
/// While items are short, a worker holds the next task while it runs one,
/// so it never waits for work; an item that then turns out to run long
/// keeps that one task waiting (at most one, and only until it ends or
/// times out).
///
/// # Examples
///
/// ```
/// use serde::{Deserialize, Serialize};
/// use skprocess::prelude::*;
///
/// #[derive(Process, Serialize, Deserialize)]
/// #[process(runs = 3)]
/// struct Square { x: u64, total: u64 }
///
/// impl Process for Square {
///     fn run(&mut self, _ctx: &mut Ctx) -> HookResult {
///         self.total += self.x * self.x;
///         Ok(())
///     }
/// }
///
/// # fn main() -> skprocess::Result<()> {
/// let pool = Pool::new(2)?;
/// let done = pool.map((0..10).map(|x| Square { x, total: 0 }))?;
/// assert_eq!(done[4].total, 48); // input order, 3 runs of 4 * 4
///
/// let doubled: Vec<u64> = pool.map_fn(|x: u64| x * 2, 0..1000u64)?;
/// assert_eq!(doubled[999], 1998);
/// # Ok(())
/// # }
/// ```
pub struct Pool {
    /// `Some` until the pool is dropped.
    tasks: Option<Sender<Task>>,
    /// Dropping it wakes every idle manager (the queue itself may stay
    /// open: background calls hold senders).
    closed: Option<Sender<()>>,
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
    workers: usize,
}

impl fmt::Debug for Pool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pool")
            .field("workers", &self.workers)
            .field("pids", &self.pids())
            .finish()
    }
}

impl Default for Pool {
    /// A pool of one worker per core.
    ///
    /// # Panics
    ///
    /// If the workers cannot be started; [`Pool::builder`] and
    /// [`PoolBuilder::build`] return that error instead.
    fn default() -> Self {
        Pool::builder()
            .build()
            .unwrap_or_else(|e| panic!("cannot start the workers of a pool: {e}"))
    }
}

impl Pool {
    /// Starts a pool of `workers` worker processes, with the default
    /// settings: the same as `Pool::builder().workers(workers).build()`.
    ///
    /// # Errors
    ///
    /// [`Error::Usage`] for zero workers; [`Error::Spawn`] if a worker
    /// cannot be started (those already started are ended).
    pub fn new(workers: usize) -> Result<Pool> {
        Pool::builder().workers(workers).build()
    }

    /// A builder for a pool with settings of its own: the number of
    /// workers, a log directory, captured output.
    ///
    /// # Examples
    ///
    /// ```
    /// # fn main() -> skprocess::Result<()> {
    /// let pool = skprocess::Pool::builder().workers(2).capture_output(true).build()?;
    /// assert_eq!(pool.pids().len(), 2);
    /// # Ok(())
    /// # }
    /// ```
    pub fn builder() -> PoolBuilder {
        PoolBuilder::default()
    }

    /// Starts `workers` workers with `settings`, sending their events where
    /// the caller's are going.
    fn start(workers: usize, settings: Settings) -> Result<Pool> {
        if workers == 0 {
            return Err(Error::usage("a pool needs at least one worker"));
        }
        let origin = log::Origin::capture();
        let mut started = Vec::with_capacity(workers);
        let mut remote = match &settings.cluster {
            Some(c) => c.start(workers)?.into_iter().map(Some).collect(),
            None => Vec::new(),
        };
        remote.resize_with(workers, || None);
        for (slot, arrival) in remote.into_iter().enumerate() {
            match Worker::start(&origin, &settings, slot, arrival) {
                Ok(w) => started.push(w),
                Err(e) => {
                    started.into_iter().for_each(Worker::end);
                    return Err(e);
                }
            }
        }
        let shared = Arc::new(Shared {
            origin,
            settings,
            slots: Mutex::new(Slots::new(&started)),
            pokes: Mutex::new(Vec::with_capacity(workers)),
            running_changed: std::sync::Condvar::new(),
        });
        let (tx, rx) = crossbeam_channel::unbounded();
        let (closed_tx, closed) = crossbeam_channel::bounded(0);
        let mut pool = Pool {
            tasks: Some(tx),
            closed: Some(closed_tx),
            shared: shared.clone(),
            threads: Vec::with_capacity(workers),
            workers,
        };
        for (slot, worker) in started.into_iter().enumerate() {
            let wake = match shared.wake_socket() {
                Ok(w) => w,
                Err(e) => {
                    worker.end();
                    return Err(e);
                }
            };
            let manager = Manager::new(
                slot,
                rx.clone(),
                closed.clone(),
                wake,
                shared.clone(),
                worker,
            );
            let thread = std::thread::Builder::new()
                .name(format!("skprocess-pool-{slot}"))
                .stack_size(256 * 1024)
                .spawn(move || manager.run())
                .map_err(Error::Spawn)?;
            pool.threads.push(thread);
        }
        Ok(pool)
    }

    /// The number of workers.
    pub fn workers(&self) -> usize {
        self.workers
    }

    /// The pids of the workers running now (a replaced worker has a new
    /// pid).
    pub fn pids(&self) -> Vec<u32> {
        self.shared
            .slots()
            .pids
            .iter()
            .copied()
            .filter(|&p| p != 0)
            .collect()
    }

    /// The address the pool listens on for workers started by a cluster
    /// [`Launcher`] (they dial the one `SKPROCESS_ADVERTISE` names, or this
    /// machine's host name, on its port); `None` for local workers.
    pub fn cluster_address(&self) -> Option<std::net::SocketAddr> {
        self.shared
            .settings
            .cluster
            .as_ref()
            .map(|c| c.local_addr())
    }

    /// Per-hook timing summed over every process item the pool has run,
    /// in every worker (those replaced included), every call and every
    /// attempt: live while items run. A hook call killed for its timeout
    /// counts with the time it had run. `map_fn` calls run no hooks and
    /// are not counted.
    ///
    /// # Examples
    ///
    /// ```
    /// # use serde::{Deserialize, Serialize};
    /// # use skprocess::prelude::*;
    /// #[derive(Process, Serialize, Deserialize)]
    /// #[process(runs = 3)]
    /// struct Tick;
    /// impl Process for Tick {
    ///     fn run(&mut self, _ctx: &mut Ctx) -> HookResult { Ok(()) }
    /// }
    ///
    /// # fn main() -> skprocess::Result<()> {
    /// let pool = Pool::new(2)?;
    /// pool.map((0..5).map(|_| Tick))?;
    /// pool.map((0..5).map(|_| Tick))?;
    /// let t = pool.timers();
    /// assert_eq!(t.run.count(), 30); // 10 items, 3 runs each
    /// assert_eq!(t.onfinish.count(), 10);
    /// println!("{t}");
    /// # Ok(())
    /// # }
    /// ```
    pub fn timers(&self) -> Timers {
        self.shared.slots().timers()
    }

    /// A call that draws a progress bar on stderr, once it has run for half
    /// a second: items done, the total when the input knows its length,
    /// the rate and the time left. Nothing is drawn when stderr is not a
    /// terminal; the bar is cleared when the call ends. Other calls on the
    /// pool are not affected.
    ///
    /// Available with the `progress` feature (off by default).
    ///
    /// # Examples
    ///
    /// ```
    /// # fn main() -> skprocess::Result<()> {
    /// let pool = skprocess::Pool::new(1)?;
    /// let v: Vec<u32> = pool.with_progress().map_fn(|x: u32| x + 1, 0..3u32)?;
    /// assert_eq!(v, [1, 2, 3]);
    /// # Ok(())
    /// # }
    /// ```
    #[cfg(feature = "progress")]
    pub fn with_progress(&self) -> PoolCall<'_> {
        self.call().with_progress()
    }

    /// A call with the default options.
    fn call(&self) -> PoolCall<'_> {
        PoolCall::new(self)
    }

    /// A call with a time limit: past `limit` (counted from the call's
    /// start), every item still running is killed, the items not started
    /// never run, and the call returns [`Error::CallTimeout`] (its
    /// [`is_timeout`](Error::is_timeout) is true). The killed workers are
    /// replaced: the pool stays usable. An `imap` yields that error as its
    /// last item. Items that ended in time are not returned.
    ///
    /// For every map method: `map`, `unordered_map`, `imap`,
    /// `unordered_imap`, `map_fn`, and in the background
    /// (`with_timeout(d).background()`).
    ///
    /// # Examples
    ///
    /// ```
    /// # use serde::{Deserialize, Serialize};
    /// # use skprocess::prelude::*;
    /// # use std::time::Duration;
    /// #[derive(Process, Serialize, Deserialize, Debug)]
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
    /// let pool = Pool::new(2)?;
    /// let err = pool
    ///     .with_timeout(Duration::from_millis(100))
    ///     .map([Nap { ms: 0 }, Nap { ms: 30_000 }])
    ///     .unwrap_err();
    /// assert!(err.is_timeout());
    /// // The napping worker was killed and replaced.
    /// assert_eq!(pool.map([Nap { ms: 0 }])?.len(), 1);
    /// # Ok(())
    /// # }
    /// ```
    pub fn with_timeout(&self, limit: Duration) -> PoolCall<'_> {
        self.call().with_timeout(limit)
    }

    /// A call that runs in the background: its `map`, `unordered_map` and
    /// `map_fn` return a [`Background`] at once, to wait for, poll for
    /// progress, cancel or `.await` later. It combines with a time limit
    /// either way round: `pool.with_timeout(d).background()` or
    /// `pool.background().with_timeout(d)`.
    ///
    /// The call goes on while the pool is in use by other calls; dropping
    /// its `Background` cancels it.
    pub fn background(&self) -> BackgroundCall {
        self.call().background()
    }

    /// [`map`](Pool::map) as a future: it resolves to the final states in
    /// input order. It is a [`Background`] call: it starts at once, even
    /// before it is polled, and dropping it cancels the call. It needs no
    /// runtime and never blocks the thread that polls it.
    ///
    /// # Examples
    ///
    /// ```
    /// # use serde::{Deserialize, Serialize};
    /// # use skprocess::prelude::*;
    /// # #[derive(Process, Serialize, Deserialize)]
    /// # #[process(runs = 1)]
    /// # struct Square { x: u64, y: u64 }
    /// # impl Process for Square {
    /// #     fn run(&mut self, _ctx: &mut Ctx) -> HookResult { self.y = self.x * self.x; Ok(()) }
    /// # }
    /// # fn main() -> skprocess::Result<()> {
    /// let pool = Pool::new(2)?;
    /// let call = async {
    ///     let done = pool.map_async((0..4).map(|x| Square { x, y: 0 })).await?;
    ///     let doubled: Vec<u64> = pool.map_fn_async(|x: u64| x * 2, 0..4u64).await?;
    ///     Ok::<_, skprocess::Error>((done[3].y, doubled[3]))
    /// };
    /// // Any executor, or none but this one:
    /// let out = futures::executor::block_on(call)?;
    /// assert_eq!(out, (9, 6));
    /// # Ok(())
    /// # }
    /// ```
    pub fn map_async<P, I>(&self, items: I) -> Background<Vec<P>>
    where
        P: Process + Send + 'static,
        I: IntoIterator<Item = P>,
        I::IntoIter: Send + 'static,
    {
        self.call().map_async(items)
    }

    /// [`map_fn`](Pool::map_fn) as a future, as
    /// [`map_async`](Pool::map_async) is for `map`.
    pub fn map_fn_async<A, R, F, I>(&self, f: F, items: I) -> Background<Vec<R>>
    where
        F: Fn(A) -> R + Copy,
        A: Serialize + DeserializeOwned + Send + 'static,
        R: Serialize + DeserializeOwned + Send + 'static,
        I: IntoIterator<Item = A>,
        I::IntoIter: Send + 'static,
    {
        self.call().map_fn_async(f, items)
    }

    /// [`imap`](Pool::imap) as a [`futures_core::Stream`]: one `Result`
    /// per item, in input order. See [`ImapStream`].
    pub fn imap_async<P, I>(&self, items: I) -> ImapStream<P>
    where
        P: Process + Send + 'static,
        I: IntoIterator<Item = P>,
        I::IntoIter: Send + 'static,
    {
        self.call().imap_async(items)
    }

    /// [`unordered_imap`](Pool::unordered_imap) as a
    /// [`futures_core::Stream`]: one `Result` per item, as each ends.
    pub fn unordered_imap_async<P, I>(&self, items: I) -> ImapStream<P>
    where
        P: Process + Send + 'static,
        I: IntoIterator<Item = P>,
        I::IntoIter: Send + 'static,
    {
        self.call().unordered_imap_async(items)
    }

    /// Runs every item in the pool and returns their final states in input
    /// order, once all have ended.
    ///
    /// # Errors
    ///
    /// The error of the first item (in input order) that failed once its
    /// lives were used; every other item still ran to its end. The error
    /// names the item (`app::Job item #7`), its hook, run and attempt.
    pub fn map<P, I>(&self, items: I) -> Result<Vec<P>>
    where
        P: Process,
        I: IntoIterator<Item = P>,
    {
        self.call().map(items)
    }

    /// Like [`map`](Pool::map), but returns the final states in the order
    /// the items ended.
    ///
    /// # Errors
    ///
    /// The error of the first item to fail, once every item has ended.
    pub fn unordered_map<P, I>(&self, items: I) -> Result<Vec<P>>
    where
        P: Process,
        I: IntoIterator<Item = P>,
    {
        self.call().unordered_map(items)
    }

    /// Runs the items in the pool and yields one `Result` per item, in
    /// input order, each as soon as it and every item before it have
    /// ended. The input is read lazily, as workers need items.
    ///
    /// Dropping the iterator early skips the items not started yet.
    ///
    /// # Examples
    ///
    /// ```
    /// # use serde::{Deserialize, Serialize};
    /// # use skprocess::prelude::*;
    /// # #[derive(Process, Serialize, Deserialize)]
    /// # #[process(runs = 1)]
    /// # struct Square { x: u64, y: u64 }
    /// # impl Process for Square {
    /// #     fn run(&mut self, _ctx: &mut Ctx) -> HookResult { self.y = self.x * self.x; Ok(()) }
    /// # }
    /// # fn main() -> skprocess::Result<()> {
    /// let pool = Pool::new(2)?;
    /// let mut seen = vec![];
    /// for r in pool.imap((0..5).map(|x| Square { x, y: 0 })) {
    ///     seen.push(r?.y);
    /// }
    /// assert_eq!(seen, [0, 1, 4, 9, 16]);
    /// # Ok(())
    /// # }
    /// ```
    pub fn imap<P, I>(&self, items: I) -> Imap<'_, P, I::IntoIter>
    where
        P: Process,
        I: IntoIterator<Item = P>,
    {
        self.call().imap(items)
    }

    /// Like [`imap`](Pool::imap), but yields each item as soon as it ends,
    /// in the order they end.
    pub fn unordered_imap<P, I>(&self, items: I) -> Imap<'_, P, I::IntoIter>
    where
        P: Process,
        I: IntoIterator<Item = P>,
    {
        self.call().unordered_imap(items)
    }

    /// Calls `f` on every item in the workers and returns the results in
    /// input order.
    ///
    /// `f` must be a `fn` item or a closure that captures nothing: only its
    /// type crosses to the workers (which run this same binary), never its
    /// state. State belongs in the items. Items go to the workers in batches
    /// sized so that each holds about a millisecond of work.
    ///
    /// A panic in `f` fails that item only. A worker that crashes during a
    /// batch is replaced and the batch is run once more in the fresh worker;
    /// if it crashes again, its items fail.
    ///
    /// # Errors
    ///
    /// [`Error::Usage`] if `f` captures state (a function pointer counts as
    /// state too); otherwise the first item that failed, in input order,
    /// once every item has ended.
    ///
    /// # Examples
    ///
    /// ```
    /// # fn main() -> skprocess::Result<()> {
    /// let pool = skprocess::Pool::new(2)?;
    /// fn square(x: i64) -> i64 { x * x }
    /// assert_eq!(pool.map_fn(square, [1, -2, 3])?, [1, 4, 9]);
    ///
    /// let k = 3;
    /// let err = pool.map_fn(move |x: i64| x * k, [1, 2]).unwrap_err();
    /// assert!(err.to_string().contains("pass the state in the items"));
    /// # Ok(())
    /// # }
    /// ```
    pub fn map_fn<A, R, F, I>(&self, f: F, items: I) -> Result<Vec<R>>
    where
        F: Fn(A) -> R + Copy,
        A: Serialize + DeserializeOwned,
        R: Serialize + DeserializeOwned,
        I: IntoIterator<Item = A>,
    {
        self.call().map_fn(f, items)
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        // Idle managers see `closed` close; busy ones their wake-up socket.
        drop(self.tasks.take());
        drop(self.closed.take());
        self.shared.close();
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        // Background calls may keep `shared` alive: the jobs end now.
        if let Some(c) = &self.shared.settings.cluster {
            c.end_all();
        }
    }
}

#[cfg(test)]
mod test;
