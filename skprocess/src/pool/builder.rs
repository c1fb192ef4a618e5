//! [`PoolBuilder`]: the settings a pool is made with.
//!
//! The settings that every worker life starts with live in [`Settings`],
//! which the managers share; an option of the builder is a field there (or
//! in the builder itself, for what only the pool's making reads) and a
//! setter.

use super::Pool;
use crate::error::Result;
use std::path::{Path, PathBuf};

/// What every worker of a pool is started with, each life the same.
#[derive(Debug, Clone, Default)]
pub(crate) struct Settings {
    /// Where each worker life writes its log file.
    pub(crate) log_dir: Option<PathBuf>,
    /// Whether the workers' standard output and error are captured.
    pub(crate) capture_output: bool,
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
    /// (those started already are ended).
    pub fn build(self) -> Result<Pool> {
        let workers = self
            .workers
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
        Pool::start(workers, self.settings)
    }
}
