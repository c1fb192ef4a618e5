//! [`PoolBuilder`]: the settings a pool is made with.
//!
//! The settings that every worker life starts with live in [`Settings`],
//! which the managers share; an option of the builder is a field there (or
//! in the builder itself, for what only the pool's making reads) and a
//! setter.

use super::launcher::Launcher;
use super::remote::Cluster;
use super::Pool;
use crate::error::Result;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// What every worker of a pool is started with, each life the same.
#[derive(Debug, Clone, Default)]
pub(crate) struct Settings {
    /// Where each worker life writes its log file.
    pub(crate) log_dir: Option<PathBuf>,
    /// Whether the workers' standard output and error are captured.
    pub(crate) capture_output: bool,
    /// A worker is replaced once it has run this many items.
    pub(crate) max_items_per_worker: Option<u64>,
    /// A worker is replaced once its resident memory passes this many
    /// bytes.
    pub(crate) max_worker_memory: Option<u64>,
    /// The cluster engine's link, when a launcher other than the local one
    /// starts the workers.
    pub(crate) cluster: Option<Arc<Cluster>>,
}

/// Makes a [`Pool`] with settings other than the number of workers:
/// [`Pool::builder`], then options, then [`build`](PoolBuilder::build).
///
/// # Examples
///
/// ```
/// # fn main() -> skprocess::Result<()> {
/// let dir = std::env::temp_dir().join(format!("pool-logs-{}", std::process::id()));
/// let pool = skprocess::Pool::builder()
///     .workers(2)
///     .log_dir(&dir)
///     .capture_output(true)
///     .build()?;
/// assert_eq!(pool.workers(), 2);
/// let doubled: Vec<u32> = pool.map_fn(|x: u32| x * 2, [1, 2, 3])?;
/// assert_eq!(doubled, [2, 4, 6]);
/// // One file per worker: `pool-worker-<index>-<pid>.log`.
/// for (k, pid) in pool.pids().into_iter().enumerate() {
///     assert!(dir.join(format!("pool-worker-{k}-{pid}.log")).exists());
/// }
/// # drop(pool);
/// # std::fs::remove_dir_all(&dir).unwrap();
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone, Default)]
#[must_use = "a builder makes nothing until `build` is called"]
pub struct PoolBuilder {
    /// `None`: one per core.
    workers: Option<usize>,
    settings: Settings,
    launcher: Launcher,
}

impl PoolBuilder {
    /// The number of worker processes (default: one per core).
    pub fn workers(mut self, workers: usize) -> Self {
        self.workers = Some(workers);
        self
    }

    /// Writes each worker's events, and its captured output with
    /// [`capture_output`](PoolBuilder::capture_output), to a file of its
    /// own in `dir` (created if needed), as
    /// [`Config::log_dir`](crate::Config::log_dir) does for a process:
    /// `<dir>/pool-worker-<index>-<pid>.log`, one file per worker life (a
    /// replaced worker has a new pid, so a file of its own). Each line
    /// carries the time the worker emitted it, in the worker's order,
    /// every item it ran in turn. With a log directory, workers send
    /// events of every level, whatever the parent's subscriber takes.
    pub fn log_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.settings.log_dir = Some(dir.into());
        self
    }

    /// Captures what the workers write to their standard output and error,
    /// line by line, as [`Config::capture_output`](crate::Config::capture_output)
    /// does for a process: each line becomes an event (target
    /// `skprocess::output`, field `stream`) labelled like the events of the
    /// item running when the parent reads it (which is the item that
    /// printed it, unless the worker has already moved on to another
    /// call's), and goes to the worker's log file too. Off by default:
    /// workers write to the parent's streams.
    pub fn capture_output(mut self, capture: bool) -> Self {
        self.settings.capture_output = capture;
        self
    }

    /// Replaces a worker once it has run `n` items (`n` of at least 1):
    /// the worker is ended between two items, never during one, and a
    /// fresh one takes its place before the next item. A retried attempt
    /// counts as an item. `map_fn` calls travel in batches that are never
    /// split: a worker ends after the batch that reaches `n`.
    ///
    /// While recycling (this or
    /// [`max_worker_memory`](PoolBuilder::max_worker_memory)), a worker is
    /// sent one task at a time.
    ///
    /// # Examples
    ///
    /// ```
    /// # fn main() -> skprocess::Result<()> {
    /// let pool = skprocess::Pool::builder().workers(1).max_items_per_worker(2).build()?;
    /// let first = pool.pids();
    /// let v: Vec<u32> = pool.map_fn(|x: u32| x + 1, [1])?;
    /// assert_eq!(v, [2]);
    /// pool.map_fn(|x: u32| x + 1, [2])?;
    /// pool.map_fn(|x: u32| x + 1, [3])?; // runs in a fresh worker
    /// assert_ne!(pool.pids(), first);
    /// # Ok(())
    /// # }
    /// ```
    pub fn max_items_per_worker(mut self, n: u64) -> Self {
        self.settings.max_items_per_worker = Some(n.max(1));
        self
    }

    /// Replaces a worker once its resident memory (`/proc/<pid>/statm`)
    /// passes `bytes`: checked after each item, so the worker is ended
    /// between two items, never during one, and a fresh one takes its
    /// place before the next. An item that itself needs more than this
    /// still runs (see [`Config::memory_limit`](crate::Config::memory_limit)
    /// for a hard limit).
    pub fn max_worker_memory(mut self, bytes: u64) -> Self {
        self.settings.max_worker_memory = Some(bytes);
        self
    }

    /// What starts the workers: [`Launcher::local`] (the default) or a
    /// cluster engine ([`Launcher::mpirun`], [`Launcher::slurm`]), whose
    /// workers connect back over TCP.
    ///
    /// # Examples
    ///
    /// ```
    /// use skprocess::{Launcher, Pool};
    /// # fn main() -> skprocess::Result<()> {
    /// let pool = Pool::builder().workers(2).launcher(Launcher::local()).build()?;
    /// assert_eq!(pool.map_fn(|x: u8| x + 1, [1])?, [2]);
    /// # Ok(())
    /// # }
    /// ```
    pub fn launcher(mut self, launcher: Launcher) -> Self {
        self.launcher = launcher;
        self
    }

    /// The launcher set (the local one by default).
    pub fn get_launcher(&self) -> &Launcher {
        &self.launcher
    }

    /// The number of items after which a worker is replaced, if set.
    pub fn get_max_items_per_worker(&self) -> Option<u64> {
        self.settings.max_items_per_worker
    }

    /// The resident memory past which a worker is replaced, if set.
    pub fn get_max_worker_memory(&self) -> Option<u64> {
        self.settings.max_worker_memory
    }

    /// The number of workers set, if any.
    pub fn get_workers(&self) -> Option<usize> {
        self.workers
    }

    /// The log directory set, if any.
    pub fn get_log_dir(&self) -> Option<&Path> {
        self.settings.log_dir.as_deref()
    }

    /// Whether output is captured.
    pub fn get_capture_output(&self) -> bool {
        self.settings.capture_output
    }

    /// Starts the pool: its workers send their events to the subscriber
    /// current here, under the span current here.
    ///
    /// # Errors
    ///
    /// [`Error::Usage`](crate::Error::Usage) for zero workers;
    /// [`Error::Spawn`](crate::Error::Spawn) if a worker cannot be started,
    /// [`Error::Io`](crate::Error::Io) if its log file cannot be opened
    /// (those started already are ended). With a cluster launcher,
    /// [`Error::Spawn`](crate::Error::Spawn) if the engine cannot be run or
    /// its workers do not all connect back in time (the error quotes the
    /// engine's output and exit status), or run another build of the
    /// program; [`Error::Usage`](crate::Error::Usage) for an option the
    /// engine does not have.
    pub fn build(mut self) -> Result<Pool> {
        let workers = self
            .workers
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
        self.launcher.check_local()?;
        if let Some((engine, options)) = self.launcher.remote() {
            if workers == 0 {
                return Err(crate::Error::usage("a pool needs at least one worker"));
            }
            self.settings.cluster = Some(Arc::new(Cluster::new(engine, options)?));
        }
        Pool::start(workers, self.settings)
    }
}
