//! A process's lifecycle in its child: the loop over the hooks, what a hook
//! sees ([`Ctx`]), panics turned into failures, and hook timing.
//!
//! The main thread (which took over before `main`) runs the hooks; the
//! control thread (`link`) reads the socket meanwhile, so a stop
//! request or a `tell` arrives while a hook runs.
//!
//! Each hook call is timed into a shared-memory page the parent can read at
//! any moment; it also holds the hook being run and the iteration, so a child
//! that dies is reported with where it was. Only hooks with a timeout cost a
//! message (start and end), which the parent needs to arm its deadline.

use crate::config::Hook;
use crate::error::{chain, Cause, Failure, Fatal, HookResult, Result};
use crate::link::Link;
use crate::proto::{kind, timer_words, Exit, HookMark, Plan, STATUS_BEAT, STATUS_HOOK, STATUS_RUN};
use crate::report::ReportPage;
use crate::stats::Stats;
use crate::sys::{self, mem::SharedWords};
use crate::timers;
use crate::wire;
use crate::Process;
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::cell::{Cell, RefCell};
use std::future::{poll_fn, Future};
use std::os::fd::OwnedFd;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

/// What a child needs to run one process value to its end.
#[derive(Debug)]
pub(crate) struct RunArgs<'a> {
    pub(crate) ctx: &'a mut Ctx,
    pub(crate) plan: &'a Plan,
    pub(crate) status: &'a SharedWords,
    pub(crate) state: &'a [u8],
    pub(crate) fds: Vec<OwnedFd>,
}

/// What a hook sees of its process: messaging with the parent, stop
/// requests, and where in the lifecycle it is.
#[derive(Debug)]
pub struct Ctx {
    link: Arc<Link>,
    /// The status page: where signs of life are counted.
    status: Arc<SharedWords>,
    /// Where reports go (`None` in a pool item: nobody reads them).
    report: Option<Arc<ReportPage>>,
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
        match self.link.listen(sys::sock::deadline_after(timeout))? {
            Some(f) => wire::receive_message(f, &self.link.counters).map(Some),
            None => Ok(None),
        }
    }

    /// Returns a message from the parent if one is waiting, without blocking.
    ///
    /// # Errors
    ///
    /// As [`listen`](Ctx::listen).
    pub fn try_listen<T: DeserializeOwned>(&self) -> Result<Option<T>> {
        match self.link.listen(Some(Instant::now()))? {
            Some(f) => wire::receive_message(f, &self.link.counters).map(Some),
            None => Ok(None),
        }
    }

    /// Messages and bytes this process sent with [`tell`](Ctx::tell) and
    /// received with [`listen`](Ctx::listen), over its whole life.
    pub fn stats(&self) -> Stats {
        self.link.counters.snapshot()
    }

    /// Publishes `status` as this process's newest report, which the parent
    /// reads with [`Handle::report`](crate::Handle::report) (or a
    /// supervisor's `report`). Never blocks and never queues: only the
    /// newest value is kept, so reporting often costs the parent nothing.
    /// It is also a sign of life (see [`heartbeat`](Ctx::heartbeat)). In a
    /// pool item, reports go nowhere.
    ///
    /// # Errors
    ///
    /// If the value cannot be encoded, holds a handle (a `Share`, a
    /// `Pipe`), or is over 64 KiB encoded.
    pub fn report<T: Serialize + ?Sized>(&self, status: &T) -> Result<()> {
        self.heartbeat();
        match &self.report {
            Some(page) => page.publish(status),
            None => Ok(()),
        }
    }

    /// Says "still alive" from inside a long hook, for
    /// [`Config::heartbeat`](crate::Config::heartbeat): a child that shows
    /// no sign of life (no hook starting or ending, no heartbeat, no report)
    /// for the heartbeat period is hung, and killed.
    pub fn heartbeat(&self) {
        self.status.words()[STATUS_BEAT].fetch_add(1, Ordering::Relaxed);
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

    /// Resolves when a stop is asked for: by the parent
    /// ([`Handle::stop`](crate::Handle::stop)), by SIGTERM or SIGINT, by the
    /// parent's death, or (before this call) by [`Ctx::stop`]. At once if
    /// one was asked for already. The future is woken by the stop itself
    /// (no polling), needs no particular runtime, and does not borrow the
    /// context: await it in a `select!` beside work that uses `ctx`.
    ///
    /// # Examples
    ///
    /// ```
    /// use serde::{Deserialize, Serialize};
    /// use skprocess::prelude::*;
    ///
    /// #[derive(Process, Serialize, Deserialize)]
    /// #[process(runs = 1)]
    /// struct Idle;
    ///
    /// impl Process for Idle {
    ///     fn run(&mut self, ctx: &mut Ctx) -> HookResult {
    ///         ctx.tell("ready")?;
    ///         futures::executor::block_on(ctx.stopped());
    ///         Ok(())
    ///     }
    /// }
    ///
    /// # fn main() -> skprocess::Result<()> {
    /// let mut h = Idle.start()?;
    /// let _: Option<String> = h.listen(std::time::Duration::from_secs(30))?;
    /// h.stop();
    /// h.wait()?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn stopped(&self) -> impl Future<Output = ()> + Send + 'static {
        let link = self.link.clone();
        let already = self.stop_requested;
        poll_fn(move |cx| {
            if already {
                return Poll::Ready(());
            }
            link.poll_stop(cx)
        })
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

    pub(crate) fn new(
        link: Arc<Link>,
        plan: &Plan,
        status: Arc<SharedWords>,
        report: Option<Arc<ReportPage>>,
    ) -> Ctx {
        if plan.stop {
            link.request_stop();
        }
        Ctx {
            link,
            status,
            report,
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

pub(crate) fn install_panic_hook() {
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
        Failure::new(
            self.name.to_string(),
            hook,
            run,
            self.plan.attempt,
            self.plan.lives,
            cause,
        )
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
        words[STATUS_BEAT].fetch_add(1, Ordering::Relaxed);
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
        words[STATUS_BEAT].fetch_add(1, Ordering::Relaxed);
        if timed {
            self.mark(ctx, kind::HOOK_END, hook, run)?;
        }
        let (cause, fatal) = match r {
            Ok(Ok(())) => {
                words[STATUS_HOOK].store(0, Ordering::Relaxed);
                return Ok(());
            }
            Ok(Err(e)) => (Cause::Returned(chain(&*e)), is_fatal(&*e)),
            Err(payload) => (Cause::Panicked(panic_message(&*payload)), false),
        };
        let mut f = self.failure(Some(hook), Some(run), cause);
        f.fatal = fatal;
        Err(f)
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

/// Whether `e`, or an error it wraps, is [`Fatal`].
fn is_fatal(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(e);
    while let Some(e) = cur {
        if e.is::<Fatal>() {
            return true;
        }
        cur = e.source();
    }
    false
}

/// Runs `f` as user code: a panic inside it (a `Serialize` or
/// `Deserialize` impl of the process type, say) becomes its message and
/// location, as a panic in a hook does.
fn guarded<T>(f: impl FnOnce() -> T) -> std::result::Result<T, String> {
    IN_HOOK.with(|c| c.set(true));
    let r = catch_unwind(AssertUnwindSafe(f));
    IN_HOOK.with(|c| c.set(false));
    r.map_err(|payload| panic_message(&*payload))
}

/// Decodes a `P`, runs its lifecycle, and encodes its final state.
pub(crate) fn run_value<P: Process>(args: RunArgs<'_>) -> Result<wire::Encoded, Failure> {
    let runner = Runner {
        plan: args.plan,
        status: args.status,
        name: P::NAME,
    };
    let codec = |what: &str, e: String| {
        runner.failure(
            None,
            None,
            Cause::Codec(format!("the child could not {what}: {e}")),
        )
    };
    let panicked = |what: &str, panic: String| {
        runner.failure(
            None,
            None,
            Cause::Panicked(format!("while the child tried to {what}: {panic}")),
        )
    };
    let mut p: P = match guarded(|| wire::decode(args.state, args.fds)) {
        Ok(r) => r.map_err(|e| codec("rebuild the value", e.to_string()))?,
        Err(panic) => return Err(panicked("rebuild the value", panic)),
    };
    runner.lifecycle(&mut p, args.ctx)?;
    match guarded(|| wire::encode(&p)) {
        Ok(r) => r.map_err(|e| codec("send back the final value", e.to_string())),
        Err(panic) => Err(panicked("send back the final value", panic)),
    }
}

/// The failure of a value whose type this binary does not have.
pub(crate) fn unregistered(type_id: &str, plan: &Plan) -> Failure {
    Failure::new(
        type_id.split('@').next().unwrap_or(type_id).to_string(),
        None,
        None,
        plan.attempt,
        plan.lives,
        Cause::Codec(
            "the child binary has no such process type registered (was the binary replaced?)"
                .into(),
        ),
    )
}

/// Sends the final state (`DONE`) or the failure (`FAILED`); returns how
/// to exit.
pub(crate) fn send_outcome(link: &Link, outcome: Result<wire::Encoded, Failure>) -> Exit {
    crate::log::flush();
    match outcome {
        Ok(enc) => match link.writer.send(kind::DONE, &enc.bytes, &enc.raw_fds()) {
            Ok(()) => Exit::Clean,
            Err(_) => Exit::Reported,
        },
        Err(failure) => {
            let bytes = postcard::to_allocvec(&failure).unwrap_or_default();
            let _ = link.writer.send(kind::FAILED, &bytes, &[]);
            Exit::Reported
        }
    }
}
