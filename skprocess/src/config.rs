//! How a process runs: iterations, lives, per-hook timeouts, `join_in`.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The largest message (and process value) either side accepts by
/// default: 1 GiB.
pub(crate) const DEFAULT_MAX_MESSAGE: usize = 1 << 30;

/// One of the four lifecycle hooks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Hook {
    /// Before each `run`.
    Prerun,
    /// The work of one iteration.
    Run,
    /// After each `run`.
    Postrun,
    /// Once, after the last iteration.
    Onfinish,
}

impl Hook {
    /// The four hooks in lifecycle order.
    pub const ALL: [Hook; 4] = [Hook::Prerun, Hook::Run, Hook::Postrun, Hook::Onfinish];

    pub(crate) fn index(self) -> usize {
        self as usize
    }

    pub(crate) fn from_index(i: u64) -> Option<Hook> {
        Hook::ALL.get(i as usize).copied()
    }

    /// The hook's name, as written in `#[process(timeout(run = "1s"))]`.
    pub fn name(self) -> &'static str {
        match self {
            Hook::Prerun => "prerun",
            Hook::Run => "run",
            Hook::Postrun => "postrun",
            Hook::Onfinish => "onfinish",
        }
    }
}

impl fmt::Display for Hook {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// How a process runs. Built from `#[process(...)]` by `P::config()`, or
/// from [`Config::default`], and adjusted with the builder methods.
///
/// | field | default | meaning |
/// |---|---|---|
/// | `runs` | unlimited | iterations of prerun/run/postrun |
/// | `lives` | 1 | attempts in all; a lost life restarts from the initial state |
/// | `timeout(hook)` | none | limit per call of that hook |
/// | `join_in` | none | limit on the whole process, all lives included |
///
/// # Examples
///
/// ```
/// use skprocess::{Config, Hook};
/// use std::time::Duration;
///
/// let cfg = Config::default().runs(10).lives(2).timeout(Hook::Run, Duration::from_secs(1));
/// assert_eq!(cfg.get_runs(), Some(10));
/// assert_eq!(cfg.get_lives(), 2);
/// assert_eq!(cfg.get_timeout(Hook::Run), Some(Duration::from_secs(1)));
/// assert_eq!(cfg.get_timeout(Hook::Prerun), None);
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    pub(crate) runs: Option<u64>,
    pub(crate) lives: u32,
    pub(crate) timeouts: [Option<Duration>; 4],
    pub(crate) join_in: Option<Duration>,
    pub(crate) stop_grace: Duration,
    pub(crate) max_message: usize,
    pub(crate) capture_output: bool,
    pub(crate) log_dir: Option<PathBuf>,
    pub(crate) heartbeat: Option<Duration>,
    pub(crate) memory_limit: Option<u64>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            runs: None,
            lives: 1,
            timeouts: [None; 4],
            join_in: None,
            stop_grace: Duration::from_secs(1),
            max_message: DEFAULT_MAX_MESSAGE,
            capture_output: false,
            log_dir: None,
            heartbeat: None,
            memory_limit: None,
        }
    }
}

impl Config {
    /// Runs exactly `n` iterations (unless stopped earlier).
    pub fn runs(mut self, n: u64) -> Self {
        self.runs = Some(n);
        self
    }

    /// Loops until the process or its parent asks to stop.
    pub fn runs_unlimited(mut self) -> Self {
        self.runs = None;
        self
    }

    /// Attempts in all (at least 1; 0 is treated as 1).
    pub fn lives(mut self, n: u32) -> Self {
        self.lives = n.max(1);
        self
    }

    /// Limits every call of `hook` to `limit`: past it the child is killed
    /// and a life is lost.
    pub fn timeout(mut self, hook: Hook, limit: Duration) -> Self {
        self.timeouts[hook.index()] = Some(limit);
        self
    }

    /// Removes the limit on `hook`.
    pub fn no_timeout(mut self, hook: Hook) -> Self {
        self.timeouts[hook.index()] = None;
        self
    }

    /// Limits the whole process, all lives included: past it the child is
    /// killed and there is no retry.
    pub fn join_in(mut self, limit: Duration) -> Self {
        self.join_in = Some(limit);
        self
    }

    /// How long a dropped handle waits for a graceful stop before it kills
    /// the child (default 1 s).
    pub fn stop_grace(mut self, grace: Duration) -> Self {
        self.stop_grace = grace;
        self
    }

    /// Captures the child's standard output and error (default: off, the
    /// child writes to the parent's). Each line becomes a `tracing` event
    /// in the parent's subscriber: `info` for stdout, `warn` for stderr,
    /// target `skprocess::output`, with the fields `stream` (`"stdout"` or
    /// `"stderr"`), `process` and `pid`. Lines are read by the parent, so a
    /// child that crashes still gets its last lines out. If the parent has
    /// no subscriber where the process is started, each line is written to
    /// the parent's own stdout or stderr instead, whole: lines of several
    /// children never mix mid-line. Pool items do not use it: a pool's
    /// workers are set with [`PoolBuilder::capture_output`](crate::PoolBuilder::capture_output).
    ///
    /// # Examples
    ///
    /// ```
    /// use skprocess::Config;
    ///
    /// let cfg = Config::default().capture_output(true);
    /// assert!(cfg.get_capture_output());
    /// ```
    pub fn capture_output(mut self, on: bool) -> Self {
        self.capture_output = on;
        self
    }

    /// Also writes each child's `tracing` events (and captured lines) to
    /// `<dir>/<process>-<pid>.log`, one file per child (a new life is a new
    /// child, with its own pid), created with the directory if needed. In
    /// the file name, `::` in the process name becomes `.` (`app.Squarer-4242.log`).
    /// A supervised child's file is named after the child instead, `/`
    /// becoming `-` (`shard/0` writes `shard-0-4242.log`).
    /// With a log directory the child sends events of every level. Pool
    /// items do not use it: a pool's workers write files of their own with
    /// [`PoolBuilder::log_dir`](crate::PoolBuilder::log_dir).
    ///
    /// # Examples
    ///
    /// ```
    /// use skprocess::Config;
    ///
    /// let cfg = Config::default().log_dir("/tmp/my-app-logs");
    /// assert_eq!(cfg.get_log_dir(), Some(std::path::Path::new("/tmp/my-app-logs")));
    /// ```
    pub fn log_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.log_dir = Some(dir.into());
        self
    }

    /// Whether standard output and error are captured.
    pub fn get_capture_output(&self) -> bool {
        self.capture_output
    }

    /// The directory of per-process log files, if set.
    pub fn get_log_dir(&self) -> Option<&Path> {
        self.log_dir.as_deref()
    }

    /// The largest message (`tell`, or the process value itself) either side
    /// accepts, in bytes, encoded (default 1 GiB). A larger one is an `Err`
    /// for its sender; a peer that sends one anyway has broken the protocol
    /// and is stopped.
    pub fn max_message(mut self, bytes: usize) -> Self {
        self.max_message = bytes;
        self
    }

    /// Iterations to run; `None` means unlimited.
    pub fn get_runs(&self) -> Option<u64> {
        self.runs
    }

    /// Attempts in all.
    pub fn get_lives(&self) -> u32 {
        self.lives
    }

    /// The limit on one call of `hook`.
    pub fn get_timeout(&self, hook: Hook) -> Option<Duration> {
        self.timeouts[hook.index()]
    }

    /// The limit on the whole process.
    pub fn get_join_in(&self) -> Option<Duration> {
        self.join_in
    }

    /// The largest message accepted, in bytes.
    pub fn get_max_message(&self) -> usize {
        self.max_message
    }

    /// The grace period of a dropped handle.
    pub fn get_stop_grace(&self) -> Duration {
        self.stop_grace
    }

    /// Hang detection: a child that shows no sign of life for `every` (no
    /// hook starting or ending, no [`Ctx::heartbeat`](crate::Ctx::heartbeat),
    /// no [`Ctx::report`](crate::Ctx::report)) is hung; the parent kills it,
    /// which costs a life ([`Error::is_hung`](crate::Error::is_hung)).
    ///
    /// # Examples
    ///
    /// ```
    /// use skprocess::Config;
    /// use std::time::Duration;
    ///
    /// let cfg = Config::default().heartbeat(Duration::from_secs(2));
    /// assert_eq!(cfg.get_heartbeat(), Some(Duration::from_secs(2)));
    /// ```
    pub fn heartbeat(mut self, every: Duration) -> Self {
        self.heartbeat = Some(every);
        self
    }

    /// The hang-detection period, if set.
    pub fn get_heartbeat(&self) -> Option<Duration> {
        self.heartbeat
    }

    /// Limits the child's resident memory (what it really uses, not its
    /// address space) to `bytes`: past it the parent kills the child, which
    /// costs a life ([`Error::is_out_of_memory`](crate::Error::is_out_of_memory),
    /// with a message naming the limit). The parent checks every few
    /// milliseconds, so a child that allocates very fast can pass the limit
    /// briefly before it is stopped; it never takes the parent down.
    ///
    /// # Examples
    ///
    /// ```
    /// use skprocess::Config;
    ///
    /// let cfg = Config::default().memory_limit(256 << 20);
    /// assert_eq!(cfg.get_memory_limit(), Some(256 << 20));
    /// ```
    pub fn memory_limit(mut self, bytes: u64) -> Self {
        self.memory_limit = Some(bytes);
        self
    }

    /// The memory limit, if set.
    pub fn get_memory_limit(&self) -> Option<u64> {
        self.memory_limit
    }
}
