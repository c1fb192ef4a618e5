//! A process run to its end over its lives, and the commands other threads
//! send it meanwhile.
//!
//! One thread (the runner, [`Lives::run`]) owns the children: it starts
//! each life, reads its frames, enforces its deadlines, kills it when a
//! limit passes, reaps it, and starts the next life from the initial value
//! while lives remain. Other threads hold the [`Control`] and act on the
//! process through it. The state they share has three phases:
//!
//! | phase | `tell` | `stop` | `kill` |
//! |---|---|---|---|
//! | `Starting` (before the first life is up, between lives) | waits for the next life, then sends | remembered: the next life starts stopped | remembered: no further life starts |
//! | `Running` (a life is up and has its `INIT`) | sent to it; if that life has just died, sent to the next | sent as a `STOP` frame | SIGKILL to the child and its group |
//! | `Ended` | `Err(Disconnected)` | nothing | nothing |
//!
//! A life is published as `Running` only after its `INIT` was sent, and
//! unpublished before it is reaped, both under the state's lock, which is
//! also what `kill` takes: so a kill never reaches a reaped (recycled) pid,
//! and a command never falls between two lives.

use super::child::{self, Child, End, Event, Launch, Role};
use super::deadline::{Deadlines, Overrun};
use crate::config::{Config, Hook};
use crate::error::{Cause, Error, Failure, Result};
use crate::inbox::{self, Inbox, Route};
use crate::log;
use crate::proto::{self, kind, Plan};
use crate::report::ReportPage;
use crate::stats::Counters;
use crate::sys::mem::SharedWords;
use crate::timers::Timers;
use crate::wire::{self, Encoded, Frame, Writer};
use std::os::fd::OwnedFd;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// How long a child whose socket closed may take to exit before it is
/// killed.
const EXIT_GRACE: Duration = Duration::from_secs(2);

/// While the inbox is full, how often the runner looks whether the child
/// has exited (then the bound is lifted: all it sent is in the socket).
const FULL_INBOX_CHECK: Duration = Duration::from_millis(20);

/// The life running now, as other threads need it.
#[derive(Debug)]
struct Live {
    pid: u32,
    pidfd: Arc<OwnedFd>,
    writer: Writer,
    status: Arc<SharedWords>,
    /// Where its log events go, for a listener that reads them.
    log: Arc<log::Forwarder>,
}

#[derive(Debug)]
enum Phase {
    Starting,
    Running(Live),
    Ended,
}

#[derive(Debug)]
struct State {
    phase: Phase,
    /// The attempt of the life running now (or the last one).
    attempt: u32,
    /// The pid of the life running now (or the last one).
    pid: u32,
    stop: bool,
    /// A life ended stopped by a signal it received (SIGTERM, SIGINT).
    signalled: bool,
    killed: bool,
    /// Timers of the lives that have ended.
    past: Timers,
}

/// What a process's owner and other threads share with its runner.
#[derive(Debug)]
pub(crate) struct Control {
    pub(crate) name: &'static str,
    state: Mutex<State>,
    /// The phase changed.
    changed: Condvar,
    /// What the child told; listeners read its socket through it.
    pub(crate) inbox: Arc<Inbox>,
    /// `tell` and `listen` traffic.
    pub(crate) counters: Counters,
    pub(crate) max_message: usize,
    /// Its newest report, kept across lives and after the end.
    pub(crate) report: Arc<ReportPage>,
}

impl Control {
    pub(crate) fn new(name: &'static str, config: &Config) -> Result<Control> {
        let report = Arc::new(ReportPage::new().map_err(Error::Spawn)?);
        Ok(Self::with_report(name, config, report))
    }

    /// A control whose reports go to `report` (a supervisor keeps one page
    /// per child across its restarts).
    pub(crate) fn with_report(
        name: &'static str,
        config: &Config,
        report: Arc<ReportPage>,
    ) -> Control {
        Control {
            name,
            state: Mutex::new(State {
                phase: Phase::Starting,
                attempt: 0,
                pid: 0,
                stop: false,
                signalled: false,
                killed: false,
                past: Timers::default(),
            }),
            changed: Condvar::new(),
            inbox: Arc::new(Inbox::new(inbox::DEFAULT_LIMIT)),
            counters: Counters::default(),
            max_message: config.max_message,
            report,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Sends an encoded message to the life running now, waiting for one
    /// if the process is between lives. A life that dies as the message is
    /// sent cannot have read it: it goes to the next life.
    pub(crate) fn tell(&self, enc: &Encoded) -> Result<()> {
        let mut after = 0;
        loop {
            let (writer, attempt) = {
                let mut s = self.lock();
                loop {
                    match &s.phase {
                        Phase::Running(l) if s.attempt > after => {
                            break (l.writer.clone(), s.attempt)
                        }
                        Phase::Ended => return Err(Error::Disconnected),
                        _ => {
                            s = self.changed.wait(s).unwrap_or_else(|p| p.into_inner());
                        }
                    }
                }
            };
            match wire::send_message(&writer, enc, &self.counters) {
                Err(Error::Disconnected) => after = attempt,
                other => return other,
            }
        }
    }

    /// The next message from the child, waiting until `deadline`: read
    /// from its socket by this thread when nobody else reads it.
    pub(crate) fn listen(&self, deadline: Option<Instant>) -> Result<Option<Frame>> {
        self.inbox.listen(deadline, &mut |f| self.route(f))
    }

    /// Where a listener puts what it reads: a message is its own; log
    /// events are forwarded at once (they keep their order with the
    /// messages); the rest is the runner's.
    fn route(&self, f: Frame) -> Route {
        match f.kind {
            kind::TELL => Route::Message(f),
            kind::LOG => {
                let log = match &self.lock().phase {
                    Phase::Running(l) => l.log.clone(),
                    _ => return Route::Pass(f),
                };
                log.emit(&f.payload);
                Route::Handled
            }
            _ => Route::Pass(f),
        }
    }

    /// Asks for a stop: now if a life runs, else as the next one starts.
    pub(crate) fn stop(&self) {
        let writer = {
            let mut s = self.lock();
            s.stop = true;
            match &s.phase {
                Phase::Running(l) => Some(l.writer.clone()),
                _ => None,
            }
        };
        if let Some(w) = writer {
            // A child that is gone needs no stop.
            let _ = w.send(kind::STOP, &[], &[]);
        }
    }

    /// Kills the life running now, and keeps any further one from starting.
    pub(crate) fn kill(&self) {
        let mut s = self.lock();
        s.killed = true;
        if let Phase::Running(l) = &s.phase {
            // Under the lock: the runner unpublishes a life (taking this
            // lock) before it reaps it, so the pid is not recycled yet.
            child::kill_child(l.pid, &l.pidfd);
        }
    }

    /// Whether a life ended stopped by a signal sent to the child itself:
    /// a stop, as [`stop`](Control::stop) is.
    pub(crate) fn is_signalled(&self) -> bool {
        self.lock().signalled
    }

    /// A life said its stop came from a signal: no further life starts.
    fn signalled(&self) {
        let mut s = self.lock();
        s.signalled = true;
        s.stop = true;
    }

    pub(crate) fn is_killed(&self) -> bool {
        self.lock().killed
    }

    pub(crate) fn is_alive(&self) -> bool {
        matches!(self.lock().phase, Phase::Running(_))
    }

    pub(crate) fn pid(&self) -> u32 {
        self.lock().pid
    }

    pub(crate) fn attempt(&self) -> u32 {
        self.lock().attempt
    }

    /// Timers over every life: those ended, plus the one running.
    pub(crate) fn timers(&self) -> Timers {
        let s = self.lock();
        let mut t = s.past.clone();
        if let Phase::Running(l) = &s.phase {
            t.merge(&proto::status_timers(l.status.words()));
        }
        t
    }

    /// Shows `child` as the life running now; `false` (the caller kills it)
    /// if the process was killed meanwhile.
    fn publish(&self, child: &Child, attempt: u32) -> bool {
        let stop = {
            let mut s = self.lock();
            if s.killed {
                return false;
            }
            s.phase = Phase::Running(Live {
                pid: child.pid(),
                pidfd: child.pidfd().clone(),
                writer: child.writer().clone(),
                status: child.status().clone(),
                log: child.log().clone(),
            });
            s.attempt = attempt;
            s.pid = child.pid();
            s.stop
        };
        self.changed.notify_all();
        if stop {
            // Asked for after this life's plan was made.
            let _ = child.writer().send(kind::STOP, &[], &[]);
        }
        true
    }

    /// The life has ended (it is about to be reaped): keeps its timers, and
    /// those of a hook call it was killed in, which never returned.
    fn unpublish(&self, child: &Child, killed_in: Option<(Hook, Duration)>) {
        let mut s = self.lock();
        s.phase = Phase::Starting;
        s.past.merge(&child.timers());
        if let Some((hook, ran)) = killed_in {
            s.past.get_mut(hook).record(ran);
        }
    }

    /// No life will follow.
    fn end(&self) {
        self.lock().phase = Phase::Ended;
        self.changed.notify_all();
        self.inbox.close();
    }
}

/// How one life ended.
enum Outcome {
    Done(Encoded),
    Failed(Failure),
    /// Past `join_in`, or a fatal error: no further life.
    Final(Failure),
}

/// The runner of one process.
#[derive(Debug)]
pub(crate) struct Lives {
    control: Arc<Control>,
    type_id: &'static str,
    /// The initial value; `None` once handed over for good (last life).
    initial: Option<Encoded>,
    config: Config,
    started: Instant,
    origin: log::Origin,
    /// What its log files are named after, if not its type.
    log_name: Option<String>,
}

impl Lives {
    pub(crate) fn new(
        control: Arc<Control>,
        type_id: &'static str,
        initial: Encoded,
        config: Config,
    ) -> Lives {
        Lives {
            control,
            type_id,
            initial: Some(initial),
            config,
            started: Instant::now(),
            origin: log::Origin::capture(),
            log_name: None,
        }
    }

    /// Names its log files (`Config::log_dir`) after `name` instead of its
    /// type: a supervised child's are named after the child.
    pub(crate) fn log_name(mut self, name: String) -> Lives {
        self.log_name = Some(name);
        self
    }

    /// What other threads share with this runner.
    pub(crate) fn control(&self) -> &Arc<Control> {
        &self.control
    }

    fn failure(&self, attempt: u32, hook: Option<Hook>, run: Option<u64>, cause: Cause) -> Failure {
        Failure::new(
            self.control.name.to_string(),
            hook,
            run,
            attempt,
            self.config.lives,
            cause,
        )
    }

    /// Starts life `attempt` (not yet published).
    fn start(&mut self, attempt: u32) -> Result<Child> {
        let last_life = attempt >= self.config.lives;
        let value = if last_life {
            self.initial.take().unwrap_or_default()
        } else {
            self.initial
                .as_ref()
                .map(Encoded::try_clone)
                .transpose()?
                .unwrap_or_default()
        };
        let plan = Plan {
            runs: self.config.runs,
            timed: Hook::ALL.map(|h| self.config.timeouts[h.index()].is_some()),
            attempt,
            lives: self.config.lives,
            stop: self.control.lock().stop,
        };
        let launch = Launch {
            origin: &self.origin,
            label: self.control.name,
            log_dir: self.config.log_dir.as_deref().map(|dir| {
                let name = self.log_name.as_deref().unwrap_or(self.control.name);
                (dir, name)
            }),
            capture_output: self.config.capture_output,
            max_frame: self.config.max_message,
            stop_grace: self.config.stop_grace,
        };
        let mut child = Child::start(
            &launch,
            Role::Process {
                type_id: self.type_id,
                plan,
                value,
                report: self.control.report.clone(),
            },
        )?;
        child.share_reader(self.control.inbox.clone());
        Ok(child)
    }

    /// Starts the first life and publishes it, so that the caller sees it
    /// (its pid, its writer) as soon as this returns.
    pub(crate) fn start_first(&mut self) -> Result<Child> {
        let child = self.start(1)?;
        if !self.control.publish(&child, 1) {
            let _ = child.finish(End::Kill);
            return Err(Error::Killed {
                process: self.control.name,
            });
        }
        Ok(child)
    }

    /// Runs the process to its end, from its first life (started and
    /// published by [`start_first`](Lives::start_first)), and returns its
    /// final state.
    pub(crate) fn run(mut self, first: Child) -> Result<Encoded> {
        let r = self.run_lives(first);
        self.control.end();
        r
    }

    fn run_lives(&mut self, first: Child) -> Result<Encoded> {
        let killed = |c: &Control| Error::Killed { process: c.name };
        let mut attempt = 1;
        let mut child = first;
        loop {
            let outcome = self.watch(child, attempt);
            let failure = match outcome {
                Outcome::Done(enc) => return Ok(enc),
                _ if self.control.is_killed() => return Err(killed(&self.control)),
                Outcome::Final(f) => return Err(Error::Process(Box::new(f))),
                Outcome::Failed(f) => f,
            };
            let stopping = self.control.lock().stop;
            if attempt >= self.config.lives || stopping {
                return Err(Error::Process(Box::new(failure)));
            }
            if self.control.is_killed() {
                return Err(killed(&self.control));
            }
            attempt += 1;
            child = self.start(attempt)?;
            if !self.control.publish(&child, attempt) {
                let _ = child.finish(End::Kill);
                return Err(killed(&self.control));
            }
        }
    }

    /// Reads one life's frames until it ends; finishes (reaps) it.
    fn watch(&self, mut child: Child, attempt: u32) -> Outcome {
        let mut deadlines = Deadlines::new(&self.config, self.started);
        let mut outcome: Option<Outcome> = None;
        let inbox = &self.control.inbox;
        loop {
            // Backpressure: no reading while the inbox is full, but the
            // deadlines still hold.
            while !inbox.wait_room(Some(Instant::now())) {
                let overrun = deadlines.overrun(Instant::now(), &child.vitals());
                if let Some(o) = overrun {
                    return self.overrun(child, attempt, o);
                }
                if child.has_exited() {
                    inbox.unbound();
                    break;
                }
                let check = Instant::now() + FULL_INBOX_CHECK;
                let until = deadlines.next().map_or(check, |d| d.min(check));
                inbox.wait_room(Some(until));
            }
            match child.next_event(Some(&mut deadlines), None) {
                Event::Frame(f) => match f.kind {
                    kind::TELL => inbox.push(f),
                    kind::LOG => child.log().emit(&f.payload),
                    kind::DONE => {
                        outcome = Some(match f.into_encoded() {
                            Ok(enc) => Outcome::Done(enc),
                            // It ended well, but its value cannot be
                            // rebuilt here: no retry would fare better.
                            Err(e) => Outcome::Final(self.failure(
                                attempt,
                                None,
                                None,
                                Cause::Codec(format!("its final value could not be received: {e}")),
                            )),
                        })
                    }
                    kind::FAILED => {
                        let failure = f.decode::<Failure>().unwrap_or_else(|e| {
                            self.failure(
                                attempt,
                                None,
                                None,
                                Cause::Crashed(format!("unreadable failure report: {e}")),
                            )
                        });
                        outcome = Some(if failure.fatal {
                            Outcome::Final(failure)
                        } else {
                            Outcome::Failed(failure)
                        });
                    }
                    other => {
                        let e = Error::Wire(format!("unknown frame kind {other}"));
                        return self.broken(child, attempt, &e);
                    }
                },
                Event::Overrun(o) => return self.overrun(child, attempt, o),
                Event::Closed => {
                    if proto::was_signalled(child.status().words()) {
                        self.control.signalled();
                    }
                    self.control.unpublish(&child, None);
                    let (hook, run) = child.position();
                    let done = matches!(outcome, Some(Outcome::Done(_)));
                    let status = child.finish(End::Exiting {
                        grace: EXIT_GRACE,
                        take_group: !done,
                    });
                    if let Some(o) = outcome {
                        return o;
                    }
                    let what = child::describe(&status);
                    let cause = Cause::Crashed(format!("the child {what}"));
                    return Outcome::Failed(self.failure(attempt, hook, run, cause));
                }
                Event::Broken(e) => return self.broken(child, attempt, &e),
                Event::Woken => {}
            }
        }
    }

    /// Kills a child that overran a limit and says how the life ended.
    fn overrun(&self, child: Child, attempt: u32, overrun: Overrun) -> Outcome {
        let v = overrun.verdict(child.position());
        self.control.unpublish(&child, v.killed_in);
        let _ = child.finish(End::Kill);
        let f = self.failure(attempt, v.hook, v.run, v.cause);
        if v.last {
            Outcome::Final(f)
        } else {
            Outcome::Failed(f)
        }
    }

    /// Kills a child that broke the protocol.
    fn broken(&self, child: Child, attempt: u32, e: &Error) -> Outcome {
        let (hook, run) = child.position();
        self.control.unpublish(&child, None);
        let _ = child.finish(End::Kill);
        let cause = Cause::Crashed(format!("the child broke the protocol: {e}"));
        Outcome::Failed(self.failure(attempt, hook, run, cause))
    }
}
