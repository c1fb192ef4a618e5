//! `Supervisor`: long-running named processes, restarted by policy, with
//! status, reports, events and graceful shutdown.
//!
//! A supervisor starts each child the moment it is added, watches it, and
//! when it ends decides by the child's [`Restart`] policy and its own
//! [`Strategy`] what starts again, after the child's [`Backoff`] delay. A
//! stop (one child, a group, every child, or a signal) is graceful: the
//! child's current iteration finishes and `onfinish` runs; a child that
//! has not ended after its grace is killed. A stopped child never
//! restarts. More restarts than the intensity allows within its period,
//! and the supervisor gives up: it stops everything and [`wait`](Supervisor::wait)
//! returns the error.
//!
//! Restarts and lives are two levels: a child's `lives` apply inside each
//! start (a lost life restarts the child's value at once, invisibly to the
//! supervisor); when the last life is lost, the start has failed, and the
//! supervisor's policy decides about the next start.
//!
//! Each child is run by the same machinery as a [`Handle`](crate::Handle)
//! (`parent::lives`), so everything a process has (timeouts, heartbeats,
//! memory limits, reports, signals as stops) holds for a supervised child.
//!
//! # Examples
//!
//! ```
//! use serde::{Deserialize, Serialize};
//! use skprocess::prelude::*;
//! use skprocess::supervise::{Restart, State, Supervisor, Child};
//! use std::time::Duration;
//!
//! #[derive(Process, Serialize, Deserialize)]
//! struct Ticker { ticks: u64 }
//!
//! impl Process for Ticker {
//!     fn run(&mut self, ctx: &mut Ctx) -> HookResult {
//!         self.ticks += 1;
//!         ctx.report(&self.ticks)?;
//!         std::thread::sleep(Duration::from_millis(1));
//!         Ok(())
//!     }
//! }
//!
//! # fn main() -> skprocess::Result<()> {
//! let sup = Supervisor::new();
//! sup.add("ticker", Ticker { ticks: 0 })?;
//! while sup.report::<u64>("ticker")?.unwrap_or(0) < 3 {
//!     std::thread::yield_now();
//! }
//! assert_eq!(sup.status("ticker")?.state, State::Running);
//! sup.stop_all()?;
//! assert_eq!(sup.status("ticker")?.state, State::Stopped);
//! sup.wait()?;
//! # Ok(())
//! # }
//! ```

mod engine;
mod policy;

pub use policy::{Backoff, Child, Restart, Strategy};

use crate::error::{Error, Result};
use crate::Process;
use crossbeam_channel::Receiver;
use engine::Inner;
use serde::de::DeserializeOwned;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// Where a supervised child is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum State {
    /// Being started.
    Starting,
    /// Running.
    Running,
    /// Asked to stop; killed if it has not ended after its grace.
    Stopping,
    /// Waiting out its backoff delay before a restart.
    Backoff,
    /// Ended well, and not restarted.
    Exited,
    /// Failed, and not restarted.
    Failed,
    /// Stopped on request; never restarted.
    Stopped,
}

/// A supervised child's status, from [`Supervisor::status`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Status {
    /// Where it is.
    pub state: State,
    /// The pid of its running child, if one runs.
    pub pid: Option<u32>,
    /// How many times it was restarted.
    pub restarts: u32,
    /// The error that ended its last failed start.
    pub last_error: Option<String>,
}

/// What happened to a supervised child, from [`Supervisor::events`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Event {
    /// It started, as `pid`.
    Started {
        /// The child's name.
        name: String,
        /// Its process id.
        pid: u32,
    },
    /// It ended: `error` is `None` if it ended well.
    Exited {
        /// The child's name.
        name: String,
        /// Why it failed, if it did.
        error: Option<String>,
    },
    /// It will start again after `delay`.
    Restarting {
        /// The child's name.
        name: String,
        /// The backoff delay.
        delay: Duration,
    },
    /// It showed no sign of life for its heartbeat period and was killed.
    Hung {
        /// The child's name.
        name: String,
    },
    /// Its failure went past the supervisor's intensity: everything stops.
    GaveUp {
        /// The child whose restart was one too many.
        name: String,
    },
}

impl Event {
    /// The name of the child the event is about.
    pub fn name(&self) -> &str {
        match self {
            Event::Started { name, .. }
            | Event::Exited { name, .. }
            | Event::Restarting { name, .. }
            | Event::Hung { name }
            | Event::GaveUp { name } => name,
        }
    }
}

/// Builds a [`Supervisor`] with a strategy and an intensity.
#[derive(Debug, Clone)]
pub struct Builder {
    strategy: Strategy,
    intensity: (u32, Duration),
}

impl Builder {
    /// Which children restart with one that ended (default
    /// [`Strategy::OneForOne`]).
    pub fn strategy(mut self, strategy: Strategy) -> Builder {
        self.strategy = strategy;
        self
    }

    /// More than `max` restarts within `period` and the supervisor gives
    /// up (default 5 in 10 s).
    pub fn intensity(mut self, max: u32, period: Duration) -> Builder {
        self.intensity = (max, period);
        self
    }

    /// The supervisor, with no children yet.
    pub fn build(self) -> Supervisor {
        Supervisor {
            inner: Inner::start(self.strategy, self.intensity),
            signals: Mutex::new(None),
        }
    }
}

/// Long-running named processes under restart policies.
///
/// Every method takes `&self` and may be called from any thread.
/// Dropping a supervisor stops every child (graceful, then kill) before
/// `drop` returns.
pub struct Supervisor {
    inner: Arc<Inner>,
    /// The signal handlers of [`shutdown_on_signals`](Supervisor::shutdown_on_signals), once installed.
    signals: Mutex<Option<(signal_hook::iterator::Handle, JoinHandle<()>)>>,
}

impl fmt::Debug for Supervisor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Supervisor")
            .field("children", &self.names())
            .finish_non_exhaustive()
    }
}

impl Default for Supervisor {
    fn default() -> Supervisor {
        Supervisor::new()
    }
}

impl Supervisor {
    /// A supervisor with the default strategy (one for one) and intensity
    /// (5 restarts in 10 s).
    pub fn new() -> Supervisor {
        Supervisor::builder().build()
    }

    /// A builder, to choose the strategy and intensity.
    pub fn builder() -> Builder {
        Builder {
            strategy: Strategy::default(),
            intensity: policy::DEFAULT_INTENSITY,
        }
    }

    /// Adds a permanent child named `name` with the default backoff and
    /// grace, and starts it now.
    ///
    /// # Errors
    ///
    /// If the name is taken or empty, the value cannot be encoded, or the
    /// child cannot be started.
    pub fn add<P: Process>(&self, name: &str, process: P) -> Result<()> {
        self.add_with(name, process, Child::new())
    }

    /// Adds a child supervised as `child` says, and starts it now.
    ///
    /// # Errors
    ///
    /// As [`add`](Supervisor::add).
    pub fn add_with<P: Process>(&self, name: &str, process: P, child: Child) -> Result<()> {
        self.inner
            .add(engine::Spec::of(name, None, &process, child)?)
    }

    /// Adds `n` children `name/0` .. `name/{n-1}`, made by `make(i)`, as one
    /// group (see [`stop_group`](Supervisor::stop_group)), and starts them.
    ///
    /// # Errors
    ///
    /// As [`add`](Supervisor::add); no member is added if a name is taken.
    pub fn add_group<P: Process>(
        &self,
        name: &str,
        n: usize,
        make: impl FnMut(usize) -> P,
    ) -> Result<()> {
        self.add_group_with(name, n, make, Child::new())
    }

    /// Like [`add_group`](Supervisor::add_group), each member supervised as
    /// `child` says.
    ///
    /// # Errors
    ///
    /// As [`add`](Supervisor::add).
    pub fn add_group_with<P: Process>(
        &self,
        name: &str,
        n: usize,
        mut make: impl FnMut(usize) -> P,
        child: Child,
    ) -> Result<()> {
        let specs = (0..n)
            .map(|i| engine::Spec::of(&format!("{name}/{i}"), Some(name), &make(i), child.clone()))
            .collect::<Result<Vec<_>>>()?;
        self.inner.add_all(specs)
    }

    /// The child's status; never blocks on the child.
    ///
    /// # Errors
    ///
    /// For an unknown name.
    pub fn status(&self, name: &str) -> Result<Status> {
        self.inner.status(name)
    }

    /// The child's newest [`report`](crate::Ctx::report), kept across its
    /// restarts: `None` before the first.
    ///
    /// # Errors
    ///
    /// For an unknown name, or a report of another type.
    pub fn report<T: DeserializeOwned>(&self, name: &str) -> Result<Option<T>> {
        self.inner.report_page(name)?.read()
    }

    /// Every child's name, in the order they were added.
    pub fn names(&self) -> Vec<String> {
        self.inner.names()
    }

    /// Stops the child (gracefully, then killed after its grace) and starts
    /// it again, from the value it was added with.
    ///
    /// # Errors
    ///
    /// For an unknown name, or once the supervisor has given up.
    pub fn restart(&self, name: &str) -> Result<()> {
        self.inner.restart(name)
    }

    /// Stops the child, gracefully, then killed after its grace; it is not
    /// restarted. Returns once it has ended.
    ///
    /// # Errors
    ///
    /// For an unknown name.
    pub fn stop(&self, name: &str) -> Result<()> {
        self.inner.stop(&[self.inner.index(name)?])
    }

    /// Stops every member of the group `name` (in reverse order), as
    /// [`stop`](Supervisor::stop) does.
    ///
    /// # Errors
    ///
    /// If there is no such group.
    pub fn stop_group(&self, name: &str) -> Result<()> {
        let members = self.inner.group(name)?;
        self.inner.stop(&members)
    }

    /// Stops every child, in reverse start order, each gracefully and then
    /// killed after its grace; returns when all have ended. None restarts.
    ///
    /// # Errors
    ///
    /// None today; the `Result` leaves room for stops that can fail.
    pub fn stop_all(&self) -> Result<()> {
        self.inner.stop_all()
    }

    /// The events of every child, from now on: started, exited,
    /// restarting, hung, gave up. Every call returns a receiver of the same
    /// queue (each event goes to one receiver). The queue holds 4096
    /// events; past that, events nobody reads are dropped.
    pub fn events(&self) -> Receiver<Event> {
        self.inner.events()
    }

    /// Makes SIGINT and SIGTERM to this process stop every child (as
    /// [`stop_all`](Supervisor::stop_all) does), after which
    /// [`wait`](Supervisor::wait) returns `Ok`. The handlers belong to the
    /// supervisor and are removed when it is dropped.
    ///
    /// # Errors
    ///
    /// If the handlers cannot be installed.
    pub fn shutdown_on_signals(&self) -> Result<()> {
        let mut installed = self.signals.lock().unwrap_or_else(|p| p.into_inner());
        if installed.is_some() {
            return Ok(());
        }
        use signal_hook::consts::{SIGINT, SIGTERM};
        let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM])?;
        let handle = signals.handle();
        let inner = Arc::downgrade(&self.inner);
        let thread = std::thread::Builder::new()
            .name("skprocess-supervisor-signals".into())
            .spawn(move || {
                if signals.forever().next().is_some() {
                    if let Some(inner) = inner.upgrade() {
                        inner.shut_down();
                    }
                }
            })?;
        *installed = Some((handle, thread));
        Ok(())
    }

    /// Blocks until every child has ended for good (stopped, or ended and
    /// not to be restarted).
    ///
    /// # Errors
    ///
    /// [`Error::GaveUp`] once the intensity was exceeded.
    pub fn wait(&self) -> Result<()> {
        self.inner.wait()
    }
}

impl Drop for Supervisor {
    fn drop(&mut self) {
        let _ = self.inner.stop_all();
        let signals = self.signals.get_mut().unwrap_or_else(|p| p.into_inner());
        if let Some((handle, thread)) = signals.take() {
            handle.close();
            let _ = thread.join();
        }
        self.inner.close();
    }
}

/// The error of a supervisor that gave up.
pub(crate) fn gave_up(name: &str, max: u32, period: Duration, last: Option<&str>) -> Error {
    Error::GaveUp(format!(
        "more than {max} restarts within {}; the last was of {name}{}",
        humantime::format_duration(period),
        last.map(|e| format!(", which failed: {e}"))
            .unwrap_or_default()
    ))
}
