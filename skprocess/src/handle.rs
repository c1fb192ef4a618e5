//! `Handle<P>`: the parent's side of one process.
//!
//! A thin user of [`parent::lives`](crate::parent::lives): one runner thread
//! per handle owns the children (every life, its deadlines, its reaping),
//! and the handle's methods act on the process through the shared
//! [`Control`], whose commands have one defined outcome in every state.
//!
//! A handle never leaves an orphan: dropping one that was not waited on asks
//! the child to stop, waits `stop_grace` (1 s by default), then kills it and
//! reaps it before `drop` returns.

use crate::config::Config;
use crate::error::{Error, Result};
use crate::parent::lives::{Control, Lives};
use crate::stats::Stats;
use crate::sys;
use crate::timers::Timers;
use crate::wire::{self, Encoded};
use crate::Process;
use crossbeam_channel::{Receiver, RecvTimeoutError};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The parent's handle on a running process.
///
/// Returned by [`Process::start`]. Talk to the child with
/// [`tell`](Handle::tell) and [`listen`](Handle::listen), end it with
/// [`stop`](Handle::stop) or [`kill`](Handle::kill), and get its final
/// state with [`wait`](Handle::wait).
///
/// # Examples
///
/// ```
/// use serde::{Deserialize, Serialize};
/// use skprocess::prelude::*;
///
/// #[derive(Process, Serialize, Deserialize)]
/// #[process(runs = 3)]
/// struct Count { n: u32 }
///
/// impl Process for Count {
///     fn run(&mut self, _ctx: &mut Ctx) -> HookResult {
///         self.n += 1;
///         Ok(())
///     }
/// }
///
/// # fn main() -> skprocess::Result<()> {
/// let mut h = Count { n: 0 }.start()?;
/// assert_eq!(h.wait()?.n, 3);
/// assert_eq!(h.timers().run.count(), 3);
/// assert!(h.wait().is_err()); // the result was handed out already
/// # Ok(())
/// # }
/// ```
pub struct Handle<P> {
    control: Arc<Control>,
    result: Receiver<Result<Encoded>>,
    thread: Option<JoinHandle<()>>,
    waited: bool,
    grace: Duration,
    _p: PhantomData<fn() -> P>,
}

impl<P> fmt::Debug for Handle<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Handle")
            .field("process", &self.control.name)
            .field("pid", &self.control.pid())
            .field("alive", &self.control.is_alive())
            .field("waited", &self.waited)
            .finish()
    }
}

impl<P: Process> Handle<P> {
    pub(crate) fn start(value: P, config: Config) -> Result<Self> {
        let encoded = wire::encode(&value)?;
        wire::check_size(encoded.bytes.len(), config.max_message)?;
        drop(value);
        let control = Arc::new(Control::new(P::NAME, &config)?);
        let grace = config.stop_grace;
        let mut lives = Lives::new(control.clone(), P::ID, encoded, config);
        let first = lives.start_first()?;
        let (result_tx, result) = crossbeam_channel::bounded(1);
        let thread = std::thread::Builder::new()
            .name(format!("skprocess-handle-{}", first.pid()))
            .stack_size(256 * 1024)
            .spawn(move || {
                let _ = result_tx.send(lives.run(first));
            })
            .map_err(Error::Spawn)?;
        Ok(Handle {
            control,
            result,
            thread: Some(thread),
            waited: false,
            grace,
            _p: PhantomData,
        })
    }

    /// Blocks until the process has ended, and returns its final state.
    ///
    /// # Errors
    ///
    /// The process's failure once every life is used ([`Error::Process`],
    /// naming the hook, run and attempt), [`Error::Killed`] after
    /// [`kill`](Handle::kill), or [`Error::AlreadyWaited`] on a second call.
    pub fn wait(&mut self) -> Result<P> {
        if self.waited {
            return Err(Error::AlreadyWaited {
                process: self.control.name,
            });
        }
        // Nobody may be listening: let the child's messages in unbounded,
        // or a child blocked in `tell` could never end.
        self.control.inbox.unbound();
        let r = self
            .result
            .recv()
            .unwrap_or_else(|_| Err(Error::Disconnected));
        self.finish(r)
    }

    /// Like [`wait`](Handle::wait), but gives up after `timeout` with
    /// `Ok(None)`; the handle stays usable and can be waited on again.
    ///
    /// # Errors
    ///
    /// As [`wait`](Handle::wait).
    pub fn wait_timeout(&mut self, timeout: Duration) -> Result<Option<P>> {
        if self.waited {
            return Err(Error::AlreadyWaited {
                process: self.control.name,
            });
        }
        self.control.inbox.unbound();
        let r = match sys::sock::deadline_after(timeout) {
            Some(d) => self.result.recv_deadline(d),
            None => self
                .result
                .recv()
                .map_err(|_| RecvTimeoutError::Disconnected),
        };
        match r {
            Ok(r) => self.finish(r).map(Some),
            Err(RecvTimeoutError::Timeout) => Ok(None),
            Err(RecvTimeoutError::Disconnected) => self.finish(Err(Error::Disconnected)).map(Some),
        }
    }

    fn finish(&mut self, r: Result<Encoded>) -> Result<P> {
        self.waited = true;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let enc: Encoded = r?;
        wire::decode(&enc.bytes, enc.fds)
    }
}

impl<P> Handle<P> {
    /// Sends `msg` to the child, which reads it with [`Ctx::listen`](crate::Ctx::listen).
    ///
    /// # Errors
    ///
    /// If the value cannot be encoded, or the process has ended.
    pub fn tell<T: Serialize + ?Sized>(&self, msg: &T) -> Result<()> {
        let enc = wire::encode_message(msg)?;
        wire::check_size(enc.bytes.len(), self.control.max_message)?;
        self.control.tell(&enc)
    }

    /// Waits up to `timeout` for a message from the child: `Ok(None)` if
    /// none came.
    ///
    /// # Errors
    ///
    /// [`Error::Disconnected`] once the process has ended and every message
    /// it sent has been read (at once, not after the timeout);
    /// [`Error::WrongType`] for a message sent as another type (it is
    /// consumed, and the next one can be read).
    pub fn listen<T: DeserializeOwned>(&self, timeout: Duration) -> Result<Option<T>> {
        self.receive(sys::sock::deadline_after(timeout))
    }

    /// Returns a message from the child if one is waiting, without blocking.
    ///
    /// # Errors
    ///
    /// As [`listen`](Handle::listen).
    pub fn try_listen<T: DeserializeOwned>(&self) -> Result<Option<T>> {
        self.receive(Some(Instant::now()))
    }

    fn receive<T: DeserializeOwned>(&self, deadline: Option<Instant>) -> Result<Option<T>> {
        match self.control.inbox.pop(deadline)? {
            Some(f) => wire::receive_message(f, &self.control.counters).map(Some),
            None => Ok(None),
        }
    }

    /// Asks the process to stop: the current iteration finishes (its
    /// `postrun` runs), then `onfinish`, then the final state is sent back.
    /// Between two lives, the next life starts stopped.
    pub fn stop(&self) {
        self.control.stop();
    }

    /// Kills the child now (SIGKILL), with what its hooks started (its
    /// process group); [`wait`](Handle::wait) then returns
    /// [`Error::Killed`]. No further life is started, also when the kill
    /// comes between two lives. Killing a process that has already ended
    /// does nothing.
    ///
    /// # Errors
    ///
    /// None today; the `Result` leaves room for platforms where a signal
    /// can fail.
    pub fn kill(&self) -> Result<()> {
        self.control.kill();
        Ok(())
    }

    /// Whether a child of this handle is running now (false between lives
    /// and after the end).
    pub fn is_alive(&self) -> bool {
        self.control.is_alive()
    }

    /// The pid of the current child (or the last one, once ended).
    pub fn pid(&self) -> u32 {
        self.control.pid()
    }

    /// The newest value the process reported with
    /// [`Ctx::report`](crate::Ctx::report), without blocking: `None` before
    /// the first report. The last report stays readable after a restart and
    /// after the end.
    ///
    /// # Errors
    ///
    /// [`Error::WrongType`] if the report was of another type.
    ///
    /// # Examples
    ///
    /// ```
    /// use serde::{Deserialize, Serialize};
    /// use skprocess::prelude::*;
    ///
    /// #[derive(Serialize, Deserialize)]
    /// struct Progress { done: u64 }
    ///
    /// #[derive(Process, Serialize, Deserialize)]
    /// #[process(runs = 100)]
    /// struct Job;
    ///
    /// impl Process for Job {
    ///     fn run(&mut self, ctx: &mut Ctx) -> HookResult {
    ///         ctx.report(&Progress { done: ctx.run_index() + 1 })?;
    ///         Ok(())
    ///     }
    /// }
    ///
    /// # fn main() -> skprocess::Result<()> {
    /// let mut h = Job.start()?;
    /// h.wait()?;
    /// let p: Option<Progress> = h.report()?;
    /// assert_eq!(p.map(|p| p.done), Some(100));
    /// # Ok(())
    /// # }
    /// ```
    pub fn report<T: DeserializeOwned>(&self) -> Result<Option<T>> {
        self.control.report.read()
    }

    /// The attempt running now (1-based; the last one, once ended).
    pub fn attempt(&self) -> u32 {
        self.control.attempt()
    }

    /// Per-hook timing over every attempt: live while the process runs,
    /// final after [`wait`](Handle::wait).
    pub fn timers(&self) -> Timers {
        self.control.timers()
    }

    /// Messages and bytes sent with [`tell`](Handle::tell) and received
    /// with [`listen`](Handle::listen) through this handle.
    ///
    /// # Examples
    ///
    /// ```
    /// use serde::{Deserialize, Serialize};
    /// use skprocess::prelude::*;
    ///
    /// #[derive(Process, Serialize, Deserialize)]
    /// #[process(runs = 1)]
    /// struct Hello;
    ///
    /// impl Process for Hello {
    ///     fn run(&mut self, ctx: &mut Ctx) -> HookResult {
    ///         ctx.tell("hello")?;
    ///         Ok(())
    ///     }
    /// }
    ///
    /// # fn main() -> skprocess::Result<()> {
    /// let mut h = Hello.start()?;
    /// h.wait()?;
    /// let hello: Option<String> = h.listen(std::time::Duration::from_secs(5))?;
    /// assert_eq!(hello.as_deref(), Some("hello"));
    /// assert_eq!(h.stats().messages_received, 1);
    /// assert_eq!(h.stats().messages_sent, 0);
    /// # Ok(())
    /// # }
    /// ```
    pub fn stats(&self) -> Stats {
        self.control.counters.snapshot()
    }

    /// The process type's name.
    pub fn name(&self) -> &'static str {
        self.control.name
    }
}

impl<P> Drop for Handle<P> {
    fn drop(&mut self) {
        let Some(thread) = self.thread.take() else {
            return;
        };
        if self.result.is_empty() {
            // Nobody will listen any more: a child blocked in `tell` must
            // be able to reach its stop.
            self.control.inbox.unbound();
            self.stop();
            if self.result.recv_timeout(self.grace).is_err() {
                let _ = self.kill();
            }
        }
        let _ = thread.join();
    }
}
