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
use crate::parent::outcome::Outcome;
use crate::stats::Stats;
use crate::sys;
use crate::timers::Timers;
use crate::wire::{self, Encoded};
use crate::Process;
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::fmt;
use std::future::{poll_fn, Future};
use std::marker::PhantomData;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::task::Poll;
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
    result: Arc<Outcome<Result<Encoded>>>,
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
        let result = Arc::new(Outcome::new());
        let out = result.clone();
        let thread = std::thread::Builder::new()
            .name(format!("skprocess-handle-{}", first.pid()))
            .stack_size(256 * 1024)
            .spawn(move || {
                let r = std::panic::catch_unwind(AssertUnwindSafe(|| lives.run(first)));
                out.set(r.unwrap_or(Err(Error::Disconnected)));
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
        self.waitable()?;
        let r = self.result.take(None).unwrap_or(Err(Error::Disconnected));
        self.finish(r)
    }

    /// [`wait`](Handle::wait) as a future: resolves to the final state
    /// once the process has ended, without blocking the thread that polls
    /// it. It needs no particular runtime (tokio, async-std, smol or
    /// `futures::executor::block_on` alike): the handle's own thread wakes
    /// the task when the process ends. Dropping the future before then
    /// leaves the handle as it was: it can be waited on again.
    ///
    /// # Errors
    ///
    /// As [`wait`](Handle::wait).
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
    /// let done = futures::executor::block_on(h.wait_async())?;
    /// assert_eq!(done.n, 3);
    /// # Ok(())
    /// # }
    /// ```
    pub fn wait_async(&mut self) -> impl Future<Output = Result<P>> + Send + '_ {
        let mut ready = self.waitable();
        poll_fn(move |cx| {
            if let Err(e) = std::mem::replace(&mut ready, Ok(())) {
                return Poll::Ready(Err(e));
            }
            match self.result.poll_take(cx) {
                Poll::Ready(r) => Poll::Ready(self.finish(r)),
                Poll::Pending => Poll::Pending,
            }
        })
    }

    /// Checks the handle was not waited on, and lifts the bound on the
    /// child's messages: nobody may be listening while the parent waits,
    /// and a child blocked in `tell` could then never end.
    fn waitable(&self) -> Result<()> {
        if self.waited {
            return Err(Error::AlreadyWaited {
                process: self.control.name,
            });
        }
        self.control.inbox.unbound();
        Ok(())
    }

    /// Like [`wait`](Handle::wait), but gives up after `timeout` with
    /// `Ok(None)`; the handle stays usable and can be waited on again.
    ///
    /// # Errors
    ///
    /// As [`wait`](Handle::wait).
    pub fn wait_timeout(&mut self, timeout: Duration) -> Result<Option<P>> {
        self.waitable()?;
        match self.result.take(sys::sock::deadline_after(timeout)) {
            Some(r) => self.finish(r).map(Some),
            None => Ok(None),
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

    /// [`listen`](Handle::listen) as a future: resolves to the next
    /// message from the child, without blocking the thread that polls it
    /// (the thread reading the child's messages wakes the task).
    ///
    /// Cancel-safe: a message leaves the queue only when the future
    /// resolves with it, so a future dropped while pending (the losing
    /// branch of a `select!`, a timeout) loses nothing, and the next listen
    /// gets every message in order.
    ///
    /// # Errors
    ///
    /// As [`listen`](Handle::listen): [`Error::Disconnected`] once the
    /// process has ended and every message it sent has been read.
    ///
    /// # Examples
    ///
    /// ```
    /// use serde::{Deserialize, Serialize};
    /// use skprocess::prelude::*;
    ///
    /// #[derive(Process, Serialize, Deserialize)]
    /// #[process(runs = 2)]
    /// struct Ping;
    ///
    /// impl Process for Ping {
    ///     fn run(&mut self, ctx: &mut Ctx) -> HookResult {
    ///         ctx.tell(&ctx.run_index())?;
    ///         Ok(())
    ///     }
    /// }
    ///
    /// # fn main() -> skprocess::Result<()> {
    /// let mut h = Ping.start()?;
    /// futures::executor::block_on(async {
    ///     assert_eq!(h.listen_async::<u64>().await?, 0);
    ///     assert_eq!(h.listen_async::<u64>().await?, 1);
    ///     assert!(h.listen_async::<u64>().await.unwrap_err().is_disconnected());
    ///     h.wait_async().await
    /// })?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn listen_async<T: DeserializeOwned>(&self) -> impl Future<Output = Result<T>> + Send + '_ {
        poll_fn(move |cx| match self.control.inbox.poll_pop(cx) {
            Poll::Ready(Ok(f)) => Poll::Ready(wire::receive_message(f, &self.control.counters)),
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => Poll::Pending,
        })
    }

    fn receive<T: DeserializeOwned>(&self, deadline: Option<Instant>) -> Result<Option<T>> {
        match self.control.listen(deadline)? {
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
        if !self.result.is_set() {
            // Nobody will listen any more: a child blocked in `tell` must
            // be able to reach its stop.
            self.control.inbox.unbound();
            self.stop();
            let deadline = sys::sock::deadline_after(self.grace);
            // Not ended in time, or its runner failed: kill (which does
            // nothing to a process already gone).
            if !matches!(self.result.take(deadline), Some(Ok(_))) {
                let _ = self.kill();
            }
        }
        let _ = thread.join();
    }
}
