//! The child's side: the lifecycle loop, the stop flag, the control thread,
//! and hook timing.
//!
//! A child runs two threads. The main thread (which took over before `main`)
//! runs the hooks. The control thread reads the socket: a `tell` goes to the
//! inbox that [`Ctx::listen`] reads, a stop request sets a flag the loop
//! checks between iterations, and end of file (the parent is gone) ends the
//! child at once, whatever the hooks are doing.
//!
//! Each hook call is timed into a shared-memory page the parent can read at
//! any moment; it also holds the hook being run and the iteration, so a child
//! that dies is reported with where it was. Only hooks with a timeout cost a
//! message (start and end), which the parent needs to arm its deadline.

use crate::config::Hook;
use crate::error::{chain, Cause, Error, Failure, HookResult, Result};
use crate::spawn::{self, RunArgs};
use crate::stats::{Counters, Stats};
use crate::sys::{self, mem::SharedWords};
use crate::timers::{self, Timer, Timers, TIMER_WORDS};
use crate::wire::{self, kind, Frame, Reader, Writer};
use crate::Process;
use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TryRecvError};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::cell::{Cell, RefCell};
use std::io::Write;
use std::os::fd::OwnedFd;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Words of the status page: header, then one timer per hook.
pub(crate) const STATUS_WORDS: usize = STATUS_HEADER + 4 * TIMER_WORDS;
const STATUS_HEADER: usize = 8;
/// `hook index + 1` while a hook runs, 0 between hooks.
pub(crate) const STATUS_HOOK: usize = 1;
/// The current iteration.
pub(crate) const STATUS_RUN: usize = 2;
/// In a pool worker: the items and batches begun so far.
pub(crate) const STATUS_BEGUN: usize = 3;

/// The timer words of `hook` in a status page.
pub(crate) fn timer_words(
    words: &[std::sync::atomic::AtomicU64],
    hook: Hook,
) -> &[std::sync::atomic::AtomicU64] {
    let at = STATUS_HEADER + hook.index() * TIMER_WORDS;
    &words[at..at + TIMER_WORDS]
}

/// The timers of every hook, read from a status page.
pub(crate) fn status_timers(status: &SharedWords) -> Timers {
    let w = status.words();
    let mut t = Timers::default();
    for h in Hook::ALL {
        *t.get_mut(h) = Timer::load(timer_words(w, h));
    }
    t
}

/// How one attempt runs, sent with the value.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Plan {
    pub(crate) runs: Option<u64>,
    pub(crate) timed: [bool; 4],
    pub(crate) attempt: u32,
    pub(crate) lives: u32,
    pub(crate) stop: bool,
}

/// The first frame a child reads. Descriptors: the status page, then those
/// of the value.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum Init {
    /// Run one process value to its end, then exit.
    Process {
        type_id: String,
        plan: Plan,
        /// The largest frame either side accepts (`Config::max_message`).
        max_message: u64,
        state: Vec<u8>,
    },
    /// Serve a pool: run the items and calls that arrive, until end of file.
    Worker {},
}

/// A timed hook starting or ending: `(hook index, run index)`.
pub(crate) type HookMark = (u8, u64);

/// The child's end of its control channel.
#[derive(Debug)]
pub(crate) struct Link {
    pub(crate) writer: Writer,
    inbox: Receiver<Frame>,
    pub(crate) others: Receiver<Frame>,
    stop: AtomicBool,
    max_message: usize,
    counters: Counters,
}

/// What a hook sees of its process: messaging with the parent, stop
/// requests, and where in the lifecycle it is.
#[derive(Debug)]
pub struct Ctx {
    link: Arc<Link>,
    run_index: u64,
    attempt: u32,
    lives: u32,
    stop_requested: bool,
    pid: u32,
}

impl Ctx {
    /// Sends `msg` to the parent, which reads it with [`Handle::listen`](crate::Handle::listen).
    ///
    /// # Errors
    ///
    /// If the value cannot be encoded, or the parent is gone.
    pub fn tell<T: Serialize + ?Sized>(&self, msg: &T) -> Result<()> {
        let enc = wire::encode_message(msg)?;
        wire::check_size(enc.bytes.len(), self.link.max_message)?;
        // Events logged before a message reach the parent before it.
        crate::log::flush();
        wire::send_message(&self.link.writer, &enc, &self.link.counters)
    }

    /// Waits up to `timeout` for a message from the parent: `Ok(None)` if
    /// none came.
    ///
    /// # Errors
    ///
    /// If the message was sent as another type than `T` (it is consumed and
    /// the channel stays usable), or it cannot be decoded.
    pub fn listen<T: DeserializeOwned>(&self, timeout: Duration) -> Result<Option<T>> {
        let frame = match sys::sock::deadline_after(timeout) {
            Some(d) => self.link.inbox.recv_deadline(d),
            None => self
                .link
                .inbox
                .recv()
                .map_err(|_| RecvTimeoutError::Disconnected),
        };
        match frame {
            Ok(f) => wire::receive_message(f, &self.link.counters).map(Some),
            Err(RecvTimeoutError::Timeout) => Ok(None),
            Err(RecvTimeoutError::Disconnected) => Err(Error::Disconnected),
        }
    }

    /// Returns a message from the parent if one is waiting, without blocking.
    ///
    /// # Errors
    ///
    /// As [`listen`](Ctx::listen).
    pub fn try_listen<T: DeserializeOwned>(&self) -> Result<Option<T>> {
        match self.link.inbox.try_recv() {
            Ok(f) => wire::receive_message(f, &self.link.counters).map(Some),
            Err(TryRecvError::Empty) => Ok(None),
            Err(TryRecvError::Disconnected) => Err(Error::Disconnected),
        }
    }

    /// Messages and bytes this process sent with [`tell`](Ctx::tell) and
    /// received with [`listen`](Ctx::listen), over its whole life.
    pub fn stats(&self) -> Stats {
        self.link.counters.snapshot()
    }

    /// Ends the loop after this iteration (its `postrun` still runs), then
    /// `onfinish` runs.
    pub fn stop(&mut self) {
        self.stop_requested = true;
    }

    /// Whether a stop has been asked for, by the parent ([`Handle::stop`](crate::Handle::stop))
    /// or by this process ([`Ctx::stop`]).
    pub fn should_stop(&self) -> bool {
        self.stop_requested || self.link.stop.load(Ordering::Relaxed)
    }

    /// The 0-based iteration; in `onfinish`, the number of iterations run.
    pub fn run_index(&self) -> u64 {
        self.run_index
    }

    /// The 1-based attempt: 2 after the first lost life.
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// Attempts allowed in all.
    pub fn lives(&self) -> u32 {
        self.lives
    }

    /// This child's process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    pub(crate) fn new(link: Arc<Link>, plan: &Plan) -> Ctx {
        if plan.stop {
            link.stop.store(true, Ordering::Relaxed);
        }
        Ctx {
            link,
            run_index: 0,
            attempt: plan.attempt,
            lives: plan.lives,
            stop_requested: false,
            pid: sys::proc::getpid(),
        }
    }
}

// ---------------------------------------------------------------------------
// Panics inside hooks become errors with their message and location.

thread_local! {
    pub(crate) static IN_HOOK: Cell<bool> = const { Cell::new(false) };
    static PANIC: RefCell<Option<String>> = const { RefCell::new(None) };
}

fn install_panic_hook() {
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if IN_HOOK.with(Cell::get) {
            let msg = info.payload_as_str().unwrap_or("Box<dyn Any>");
            let text = match info.location() {
                Some(l) => format!(
                    "panicked at {}:{}:{}: {msg}",
                    l.file(),
                    l.line(),
                    l.column()
                ),
                None => format!("panicked: {msg}"),
            };
            PANIC.with(|p| *p.borrow_mut() = Some(text));
        } else {
            previous(info);
        }
    }));
}

/// The message of a panic caught while `IN_HOOK` was set: the one the hook
/// recorded (with its location), else the payload's text.
pub(crate) fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    PANIC.with(|p| p.borrow_mut().take()).unwrap_or_else(|| {
        payload
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "panicked".into())
    })
}

// ---------------------------------------------------------------------------
// The lifecycle.

struct Runner<'a> {
    plan: &'a Plan,
    status: &'a SharedWords,
    name: &'static str,
}

impl Runner<'_> {
    fn failure(&self, hook: Option<Hook>, run: Option<u64>, cause: Cause) -> Failure {
        Failure {
            process: self.name.to_string(),
            hook,
            run,
            attempt: self.plan.attempt,
            lives: self.plan.lives,
            cause,
        }
    }

    fn call<P>(
        &self,
        p: &mut P,
        ctx: &mut Ctx,
        hook: Hook,
        f: fn(&mut P, &mut Ctx) -> HookResult,
    ) -> Result<(), Failure> {
        let words = self.status.words();
        let run = ctx.run_index;
        words[STATUS_RUN].store(run, Ordering::Relaxed);
        words[STATUS_HOOK].store(hook.index() as u64 + 1, Ordering::Relaxed);
        let timed = self.plan.timed[hook.index()];
        if timed {
            self.mark(ctx, kind::HOOK_START, hook, run)?;
        }
        IN_HOOK.with(|c| c.set(true));
        let t0 = Instant::now();
        let r = catch_unwind(AssertUnwindSafe(|| f(p, ctx)));
        let elapsed = t0.elapsed();
        IN_HOOK.with(|c| c.set(false));
        timers::record(timer_words(words, hook), elapsed);
        if timed {
            self.mark(ctx, kind::HOOK_END, hook, run)?;
        }
        let cause = match r {
            Ok(Ok(())) => {
                words[STATUS_HOOK].store(0, Ordering::Relaxed);
                return Ok(());
            }
            Ok(Err(e)) => Cause::Returned(chain(&*e)),
            Err(payload) => Cause::Panicked(panic_message(&*payload)),
        };
        Err(self.failure(Some(hook), Some(run), cause))
    }

    fn mark(&self, ctx: &Ctx, k: u8, hook: Hook, run: u64) -> Result<(), Failure> {
        let mark: HookMark = (hook.index() as u8, run);
        let bytes = postcard::to_allocvec(&mark).expect("a tuple of integers always encodes");
        ctx.link.writer.send(k, &bytes, &[]).map_err(|e| {
            self.failure(
                Some(hook),
                Some(run),
                Cause::Crashed(format!("lost the parent: {e}")),
            )
        })
    }

    fn lifecycle<P: Process>(&self, p: &mut P, ctx: &mut Ctx) -> Result<(), Failure> {
        let mut i = 0u64;
        loop {
            if self.plan.runs.is_some_and(|n| i >= n) || ctx.should_stop() {
                break;
            }
            ctx.run_index = i;
            self.call(p, ctx, Hook::Prerun, P::prerun)?;
            self.call(p, ctx, Hook::Run, P::run)?;
            self.call(p, ctx, Hook::Postrun, P::postrun)?;
            i += 1;
        }
        ctx.run_index = i;
        self.call(p, ctx, Hook::Onfinish, P::onfinish)
    }
}

/// Decodes a `P`, runs its lifecycle, and encodes its final state.
pub(crate) fn run_value<P: Process>(args: RunArgs<'_>) -> Result<wire::Encoded, Failure> {
    let runner = Runner {
        plan: args.plan,
        status: args.status,
        name: P::NAME,
    };
    let mut p: P = wire::decode(args.state, args.fds).map_err(|e| {
        runner.failure(
            None,
            None,
            Cause::Codec(format!("the child could not rebuild the value: {e}")),
        )
    })?;
    runner.lifecycle(&mut p, args.ctx)?;
    wire::encode(&p).map_err(|e| {
        runner.failure(
            None,
            None,
            Cause::Codec(format!(
                "the child could not send back the final value: {e}"
            )),
        )
    })
}

// ---------------------------------------------------------------------------
// The child's entry point.

fn spawn_control_thread(
    mut reader: Reader,
    inbox: Sender<Frame>,
    others: Sender<Frame>,
    link: Arc<Link>,
) {
    let spawned = std::thread::Builder::new()
        .name("skprocess-control".into())
        .stack_size(256 * 1024)
        .spawn(move || loop {
            match reader.read(None) {
                Ok(Some(f)) => match f.kind {
                    kind::TELL => {
                        let _ = inbox.send(f);
                    }
                    kind::STOP => link.stop.store(true, Ordering::Relaxed),
                    _ => {
                        let _ = others.send(f);
                    }
                },
                Ok(None) => {}
                // The parent is gone (or spoke nonsense): nobody is left to
                // report to, so end now, whatever the hooks are doing.
                Err(Error::Disconnected) => sys::proc::exit_now(0),
                Err(e) => {
                    eprintln!("skprocess child {}: {e}", sys::proc::getpid());
                    sys::proc::exit_now(72)
                }
            }
        });
    if spawned.is_err() {
        sys::proc::exit_now(73);
    }
}

/// Runs in a spawned child, before `main`; never returns.
pub(crate) fn child_main(control: OwnedFd) -> ! {
    install_panic_hook();
    let Ok((mut reader, writer)) = wire::split(control) else {
        sys::proc::exit_now(74)
    };
    let mut log_setup = None;
    let init = loop {
        match reader.read(None) {
            Ok(Some(f)) if f.kind == kind::INIT => break f,
            Ok(Some(f)) if f.kind == kind::LOG_SETUP => log_setup = Some(f.payload),
            // The parent went away before sending anything.
            _ => sys::proc::exit_now(0),
        }
    };
    let Ok(msg) = init.decode::<Init>() else {
        sys::proc::exit_now(75)
    };
    let mut fds = init.fds;
    let (inbox_tx, inbox) = crossbeam_channel::unbounded();
    let (others_tx, others) = crossbeam_channel::unbounded();
    crate::log::install_child(log_setup.as_deref(), writer.clone());
    let max_message = match &msg {
        Init::Process { max_message, .. } => usize::try_from(*max_message).unwrap_or(usize::MAX),
        _ => wire::DEFAULT_MAX_FRAME,
    };
    reader.set_max_frame(max_message);
    let link = Arc::new(Link {
        writer,
        inbox,
        others,
        stop: AtomicBool::new(false),
        max_message,
        counters: Counters::default(),
    });
    spawn_control_thread(reader, inbox_tx, others_tx, link.clone());

    let code = match msg {
        Init::Process {
            type_id,
            plan,
            state,
            ..
        } => {
            if fds.is_empty() {
                sys::proc::exit_now(76);
            }
            let status = match SharedWords::from_fd(fds.remove(0)) {
                Ok(s) if s.words().len() >= STATUS_WORDS => s,
                _ => sys::proc::exit_now(77),
            };
            let outcome = match spawn::find(&type_id) {
                Some(entry) => {
                    let mut ctx = Ctx::new(link.clone(), &plan);
                    (entry.run)(RunArgs {
                        ctx: &mut ctx,
                        plan: &plan,
                        status: &status,
                        state: &state,
                        fds,
                    })
                }
                None => Err(unregistered(&type_id, &plan)),
            };
            send_outcome(&link, outcome)
        }
        Init::Worker {} => crate::pool::worker::serve(&link, fds),
    };
    crate::log::flush();
    let _ = std::io::stdout().flush();
    let _ = std::io::stderr().flush();
    std::process::exit(code)
}

/// The failure of a value whose type this binary does not have.
pub(crate) fn unregistered(type_id: &str, plan: &Plan) -> Failure {
    Failure {
        process: type_id.split('@').next().unwrap_or(type_id).to_string(),
        hook: None,
        run: None,
        attempt: plan.attempt,
        lives: plan.lives,
        cause: Cause::Codec(
            "the child binary has no such process type registered (was the binary replaced?)"
                .into(),
        ),
    }
}

/// Sends the final state (`DONE`) or the failure (`FAILED`); returns the
/// exit code to use.
pub(crate) fn send_outcome(link: &Link, outcome: Result<wire::Encoded, Failure>) -> i32 {
    crate::log::flush();
    match outcome {
        Ok(enc) => match link.writer.send(kind::DONE, &enc.bytes, &enc.raw_fds()) {
            Ok(()) => 0,
            Err(_) => 1,
        },
        Err(failure) => {
            let bytes = postcard::to_allocvec(&failure).unwrap_or_default();
            let _ = link.writer.send(kind::FAILED, &bytes, &[]);
            1
        }
    }
}
