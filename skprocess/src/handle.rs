//! `Handle<P>`: the parent's side of one process.
//!
//! Each handle has one supervisor thread, which owns everything about the
//! child that changes over time: it sends the value, reads the child's
//! frames, arms the deadline of a timed hook and of `join_in`, kills a child
//! that overruns (a hook stuck in C code or a `sleep` still ends on time),
//! reaps it, and while lives remain starts a fresh child from the initial
//! bytes. The handle's own methods only read shared state, write frames
//! (`tell`, `stop`) or signal the child (`kill`).
//!
//! A handle never leaves an orphan: dropping one that was not waited on asks
//! the child to stop, waits `stop_grace` (1 s by default), then kills it and
//! reaps it before `drop` returns.

use crate::config::{Config, Hook};
use crate::error::{Cause, Error, Failure, Result};
use crate::log;
use crate::runtime::{self, Init, Plan, STATUS_WORDS};
use crate::spawn::{self, Spawned};
use crate::stats::{Counters, Stats};
use crate::sys::{self, mem::SharedWords};
use crate::timers::Timers;
use crate::watch::{self, Deadlines, Overrun};
use crate::wire::{self, kind, Encoded, Frame, Reader, Writer};
use crate::Process;
use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TryRecvError};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::fmt;
use std::marker::PhantomData;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The running child of a handle, as far as the handle's methods need it.
#[derive(Default)]
struct Current {
    pid: u32,
    alive: bool,
    writer: Option<Writer>,
    pidfd: Option<Arc<OwnedFd>>,
    status: Option<Arc<SharedWords>>,
}

/// State shared by a handle and its supervisor thread.
struct Shared {
    name: &'static str,
    current: Mutex<Current>,
    /// Timers of attempts that have ended.
    past_timers: Mutex<Timers>,
    inbox: Receiver<Frame>,
    stop: AtomicBool,
    killed: AtomicBool,
    /// `tell` and `listen` traffic.
    counters: Counters,
    max_message: usize,
}

impl Shared {
    fn current(&self) -> std::sync::MutexGuard<'_, Current> {
        self.current.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn timers(&self) -> Timers {
        let mut t = self
            .past_timers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        if let Some(status) = self.current().status.clone() {
            t.merge(&runtime::status_timers(&status));
        }
        t
    }
}

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
    shared: Arc<Shared>,
    result: Receiver<Result<Encoded>>,
    thread: Option<JoinHandle<()>>,
    waited: bool,
    grace: Duration,
    _p: PhantomData<fn() -> P>,
}

impl<P> fmt::Debug for Handle<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = self.shared.current();
        f.debug_struct("Handle")
            .field("process", &self.shared.name)
            .field("pid", &c.pid)
            .field("alive", &c.alive)
            .field("waited", &self.waited)
            .finish()
    }
}

impl<P: Process> Handle<P> {
    pub(crate) fn start(value: P, config: Config) -> Result<Self> {
        let encoded = wire::encode(&value)?;
        wire::check_size(encoded.bytes.len(), config.max_message)?;
        drop(value);
        let origin = log::Origin::capture();
        let child = spawn::spawn_child_with(spawn_options(&config))?;
        let (inbox_tx, inbox) = crossbeam_channel::unbounded();
        let shared = Arc::new(Shared {
            name: P::NAME,
            current: Mutex::new(Current::default()),
            past_timers: Mutex::new(Timers::default()),
            inbox,
            stop: AtomicBool::new(false),
            killed: AtomicBool::new(false),
            counters: Counters::default(),
            max_message: config.max_message,
        });
        let (result_tx, result) = crossbeam_channel::bounded(1);
        let grace = config.stop_grace;
        let mut sup = Supervisor {
            shared: shared.clone(),
            type_id: P::ID,
            encoded: Some(encoded),
            config,
            inbox: inbox_tx,
            started: Instant::now(),
            origin,
        };
        let first = sup.attach(child, 1)?;
        let thread = std::thread::Builder::new()
            .name(format!("skprocess-handle-{}", first.pid))
            .stack_size(256 * 1024)
            .spawn(move || {
                let r = sup.supervise(first);
                let _ = result_tx.send(r);
            })
            .map_err(Error::Spawn)?;
        Ok(Handle {
            shared,
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
                process: self.shared.name,
            });
        }
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
                process: self.shared.name,
            });
        }
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
        let enc = r?;
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
        wire::check_size(enc.bytes.len(), self.shared.max_message)?;
        let writer = self
            .shared
            .current()
            .writer
            .clone()
            .ok_or(Error::Disconnected)?;
        wire::send_message(&writer, &enc, &self.shared.counters)
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
        let r = match sys::sock::deadline_after(timeout) {
            Some(d) => self.shared.inbox.recv_deadline(d),
            None => self
                .shared
                .inbox
                .recv()
                .map_err(|_| RecvTimeoutError::Disconnected),
        };
        match r {
            Ok(f) => wire::receive_message(f, &self.shared.counters).map(Some),
            Err(RecvTimeoutError::Timeout) => Ok(None),
            Err(RecvTimeoutError::Disconnected) => Err(Error::Disconnected),
        }
    }

    /// Returns a message from the child if one is waiting, without blocking.
    ///
    /// # Errors
    ///
    /// As [`listen`](Handle::listen).
    pub fn try_listen<T: DeserializeOwned>(&self) -> Result<Option<T>> {
        match self.shared.inbox.try_recv() {
            Ok(f) => wire::receive_message(f, &self.shared.counters).map(Some),
            Err(TryRecvError::Empty) => Ok(None),
            Err(TryRecvError::Disconnected) => Err(Error::Disconnected),
        }
    }

    /// Asks the process to stop: the current iteration finishes (its
    /// `postrun` runs), then `onfinish`, then the final state is sent back.
    pub fn stop(&self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        if let Some(w) = self.shared.current().writer.clone() {
            let _ = w.send(kind::STOP, &[], &[]);
        }
    }

    /// Kills the child now (SIGKILL); [`wait`](Handle::wait) then returns
    /// [`Error::Killed`]. No further life is started. Killing a process that
    /// has already ended does nothing.
    ///
    /// # Errors
    ///
    /// If the signal cannot be sent.
    pub fn kill(&self) -> Result<()> {
        self.shared.killed.store(true, Ordering::SeqCst);
        let pidfd = self.shared.current().pidfd.clone();
        if let Some(fd) = pidfd {
            sys::proc::pidfd_signal(&fd, libc::SIGKILL)?;
        }
        Ok(())
    }

    /// Whether a child of this handle is running now (false between lives
    /// and after the end).
    pub fn is_alive(&self) -> bool {
        self.shared.current().alive
    }

    /// The pid of the current child (or the last one, once ended).
    pub fn pid(&self) -> u32 {
        self.shared.current().pid
    }

    /// Per-hook timing over every attempt: live while the process runs,
    /// final after [`wait`](Handle::wait).
    pub fn timers(&self) -> Timers {
        self.shared.timers()
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
        self.shared.counters.snapshot()
    }

    /// The process type's name.
    pub fn name(&self) -> &'static str {
        self.shared.name
    }
}

impl<P> Drop for Handle<P> {
    fn drop(&mut self) {
        let Some(thread) = self.thread.take() else {
            return;
        };
        if self.result.is_empty() {
            self.stop();
            if self.result.recv_timeout(self.grace).is_err() {
                let _ = self.kill();
            }
        }
        let _ = thread.join();
    }
}

// ---------------------------------------------------------------------------
// The supervisor.

struct Supervisor {
    shared: Arc<Shared>,
    type_id: &'static str,
    /// The initial value; `None` once handed over for good (last life).
    encoded: Option<Encoded>,
    config: Config,
    inbox: Sender<Frame>,
    started: Instant,
    /// Where the children's `tracing` events go.
    origin: log::Origin,
}

fn spawn_options(config: &Config) -> spawn::SpawnOptions {
    spawn::SpawnOptions {
        capture_output: config.capture_output,
    }
}

/// A child being watched.
struct Child {
    pid: u32,
    pidfd: Arc<OwnedFd>,
    reader: Reader,
    status: Arc<SharedWords>,
    log: Arc<log::Forwarder>,
    capture: Option<log::Capture>,
}

/// How one attempt ended.
enum End {
    Done(Encoded),
    Failed(Failure),
    /// Past `join_in`: no retry.
    Final(Failure),
}

impl Supervisor {
    fn failure(&self, attempt: u32, hook: Option<Hook>, run: Option<u64>, cause: Cause) -> Failure {
        Failure {
            process: self.shared.name.to_string(),
            hook,
            run,
            attempt,
            lives: self.config.lives,
            cause,
        }
    }

    /// Sends the value to a freshly spawned child and publishes it as the
    /// handle's current child.
    fn attach(&mut self, s: Spawned, attempt: u32) -> Result<Child> {
        let log_dir = self.config.log_dir.as_deref();
        let forwarder = match self.origin.forwarder(self.shared.name, s.pid, log_dir) {
            Ok(f) => f,
            Err(e) => {
                let _ = sys::proc::pidfd_signal(&s.pidfd, libc::SIGKILL);
                let _ = sys::proc::wait(s.pid);
                return Err(e);
            }
        };
        let status =
            Arc::new(SharedWords::new(c"skprocess-status", STATUS_WORDS).map_err(Error::Spawn)?);
        let (mut reader, writer) = wire::split(s.socket)?;
        reader.set_max_frame(self.config.max_message);
        let pidfd = Arc::new(s.pidfd);
        let capture = log::Capture::start(forwarder.clone(), s.stdout, s.stderr, pidfd.clone());
        let _ = writer.send(
            kind::LOG_SETUP,
            &log::setup_payload(&self.origin, log_dir.is_some()),
            &[],
        );
        {
            let mut c = self.shared.current();
            *c = Current {
                pid: s.pid,
                alive: true,
                writer: Some(writer.clone()),
                pidfd: Some(pidfd.clone()),
                status: Some(status.clone()),
            };
        }
        let last_life = attempt >= self.config.lives;
        let value = if last_life {
            self.encoded.take().unwrap_or_default()
        } else {
            self.encoded
                .as_ref()
                .map(Encoded::try_clone)
                .transpose()?
                .unwrap_or_default()
        };
        let init = Init::Process {
            type_id: self.type_id.to_string(),
            max_message: self.config.max_message as u64,
            plan: Plan {
                runs: self.config.runs,
                timed: Hook::ALL.map(|h| self.config.timeouts[h.index()].is_some()),
                attempt,
                lives: self.config.lives,
                stop: self.shared.stop.load(Ordering::SeqCst),
            },
            state: value.bytes,
        };
        let bytes = postcard::to_allocvec(&init).map_err(|e| Error::Wire(e.to_string()))?;
        let mut fds = vec![std::os::fd::AsRawFd::as_raw_fd(status.fd())];
        fds.extend(value.fds.iter().map(std::os::fd::AsRawFd::as_raw_fd));
        // A child that died at once makes this fail; the read loop then
        // sees end of file and reports the crash with its exit status.
        let _ = writer.send(kind::INIT, &bytes, &fds);
        drop(value.fds);
        Ok(Child {
            pid: s.pid,
            pidfd,
            reader,
            status,
            log: forwarder,
            capture,
        })
    }

    fn supervise(mut self, first: Child) -> Result<Encoded> {
        let mut attempt = 1;
        let mut child = first;
        loop {
            let end = self.watch(&mut child, attempt);
            self.retire(&mut child);
            let killed = self.shared.killed.load(Ordering::SeqCst);
            let failure = match end {
                End::Done(enc) => return Ok(enc),
                _ if killed => {
                    return Err(Error::Killed {
                        process: self.shared.name,
                    })
                }
                End::Final(f) => return Err(Error::Process(Box::new(f))),
                End::Failed(f) => f,
            };
            let stopping = self.shared.stop.load(Ordering::SeqCst);
            if attempt >= self.config.lives || stopping {
                return Err(Error::Process(Box::new(failure)));
            }
            attempt += 1;
            child = spawn::spawn_child_with(spawn_options(&self.config))
                .and_then(|s| self.attach(s, attempt))?;
        }
    }

    /// Folds the ended child's timers into the totals and clears it.
    /// Kills a child that overran a limit and says how the attempt ended.
    fn overrun(&self, child: &Child, attempt: u32, overrun: Overrun) -> End {
        let (hook, run) = watch::position(&child.status);
        watch::kill_and_reap(child.pid, &child.pidfd);
        match overrun {
            Overrun::Join(limit) => {
                End::Final(self.failure(attempt, hook, run, Cause::JoinTimeout(limit)))
            }
            Overrun::Hook {
                hook,
                run,
                limit,
                ran,
            } => {
                // The killed call never returned to be timed: count it with
                // the time it had run.
                self.shared
                    .past_timers
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .get_mut(hook)
                    .record(ran);
                End::Failed(self.failure(attempt, Some(hook), Some(run), Cause::HookTimeout(limit)))
            }
        }
    }

    fn retire(&self, child: &mut Child) {
        if let Some(c) = child.capture.take() {
            c.finish();
        }
        let t = runtime::status_timers(&child.status);
        let mut c = self.shared.current();
        self.shared
            .past_timers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .merge(&t);
        c.alive = false;
        c.writer = None;
        c.status = None;
        c.pidfd = None;
    }

    fn watch(&self, child: &mut Child, attempt: u32) -> End {
        let mut deadlines = Deadlines::new(&self.config, self.started);
        let mut outcome: Option<End> = None;
        loop {
            // Checked before every read, so a child that sends without
            // pause (a hook that logs in a loop) cannot hold its deadline off.
            if let Some(overrun) = deadlines.overrun(Instant::now()) {
                return self.overrun(child, attempt, overrun);
            }
            match child.reader.read(deadlines.next()) {
                Ok(Some(frame)) if deadlines.on_frame(&frame) => {}
                Ok(Some(frame)) => match frame.kind {
                    kind::TELL => {
                        let _ = self.inbox.send(frame);
                    }
                    kind::LOG => child.log.emit(&frame.payload),
                    kind::DONE => {
                        outcome = Some(End::Done(Encoded {
                            bytes: frame.payload,
                            fds: frame.fds,
                        }))
                    }
                    kind::FAILED => {
                        let f = frame.decode::<Failure>().unwrap_or_else(|e| {
                            self.failure(
                                attempt,
                                None,
                                None,
                                Cause::Crashed(format!("unreadable failure report: {e}")),
                            )
                        });
                        outcome = Some(End::Failed(f));
                    }
                    other => {
                        let cause =
                            Cause::Crashed(format!("the child sent an unknown frame kind {other}"));
                        watch::kill_and_reap(child.pid, &child.pidfd);
                        return End::Failed(self.failure(attempt, None, None, cause));
                    }
                },
                Ok(None) => {}
                Err(Error::Disconnected) => {
                    let status =
                        watch::reap_exiting(child.pid, &child.pidfd, Duration::from_secs(2));
                    if let Some(end) = outcome {
                        return end;
                    }
                    let (hook, run) = watch::position(&child.status);
                    let what = match status {
                        Ok(s) => s.to_string(),
                        Err(e) => format!("could not be reaped: {e}"),
                    };
                    return End::Failed(self.failure(
                        attempt,
                        hook,
                        run,
                        Cause::Crashed(format!("the child {what}")),
                    ));
                }
                Err(e) => {
                    let (hook, run) = watch::position(&child.status);
                    watch::kill_and_reap(child.pid, &child.pidfd);
                    let cause = Cause::Crashed(format!("the child broke the protocol: {e}"));
                    return End::Failed(self.failure(attempt, hook, run, cause));
                }
            }
        }
    }
}
