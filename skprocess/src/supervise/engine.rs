//! The supervisor's state and its thread.
//!
//! Each running child has a runner thread (`parent::lives`, as a handle
//! has). When its start ends, that thread applies the policy (restart,
//! strategy, intensity) and starts at once what is due without delay, so a
//! restart without backoff costs no hand-off between threads. The
//! supervisor thread keeps the timers (a backoff ending, a grace running
//! out), starts what they make due, and takes the ends of starts that
//! failed to spawn. The state is under one lock, held only briefly:
//! starting a child (a spawn) happens outside it, so `status` never waits
//! for one.

use super::policy::{self, Backoff, Child, Restart, Strategy};
use super::{Event, State, Status};
use crate::config::Config;
use crate::error::{Error, Result};
use crate::parent::lives::{Control, Lives};
use crate::report::ReportPage;
use crate::wire::{self, Encoded};
use crate::Process;
use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// How many events wait for a reader before new ones are dropped.
const EVENT_QUEUE: usize = 4096;

/// A child as added: what to start and how to supervise it.
#[derive(Debug)]
pub(crate) struct Spec {
    name: String,
    group: Option<String>,
    type_id: &'static str,
    type_name: &'static str,
    initial: Encoded,
    config: Config,
    restart: Restart,
    backoff: Backoff,
    grace: Duration,
}

impl Spec {
    pub(crate) fn of<P: Process>(
        name: &str,
        group: Option<&str>,
        process: &P,
        child: Child,
    ) -> Result<Spec> {
        if name.is_empty() {
            return Err(Error::usage("a supervised child needs a name"));
        }
        let config = child.config.unwrap_or_else(<P as Process>::config);
        let initial = wire::encode(process)?;
        wire::check_size(initial.bytes.len(), config.max_message)?;
        Ok(Spec {
            name: name.to_string(),
            group: group.map(str::to_string),
            type_id: P::ID,
            type_name: P::NAME,
            initial,
            config,
            restart: child.restart,
            backoff: child.backoff,
            grace: child.grace.unwrap_or(policy::DEFAULT_GRACE),
        })
    }
}

#[derive(Debug)]
struct Slot {
    spec: Spec,
    state: State,
    pid: Option<u32>,
    restarts: u32,
    last_error: Option<String>,
    /// The next backoff delay.
    delay: Duration,
    /// Tells apart the ends of successive starts.
    generation: u64,
    /// The start running now.
    control: Option<Arc<Control>>,
    started: Instant,
    /// When to start again (after a backoff).
    start_at: Option<Instant>,
    /// When to kill the child if its stop has not ended it.
    kill_at: Option<Instant>,
    /// Stopped on request: never restarts.
    stopped: bool,
    /// Taken down by its supervisor (a strategy, `restart`): start again
    /// as soon as it has ended.
    pending_restart: bool,
    /// Being started (a spawn under way, outside the lock).
    launching: bool,
    report: Arc<ReportPage>,
}

impl Slot {
    fn is_running(&self) -> bool {
        self.control.is_some() || self.launching
    }

    fn is_settled(&self) -> bool {
        !self.is_running() && self.start_at.is_none()
    }

    /// Asks the running child to stop; it is killed after its grace.
    fn take_down(&mut self, now: Instant) {
        if let Some(c) = &self.control {
            c.stop();
            self.state = State::Stopping;
            self.kill_at = Some(now + self.spec.grace);
        }
    }
}

#[derive(Debug)]
struct Sup {
    slots: Vec<Slot>,
    /// When each restart within the intensity period happened.
    recent: VecDeque<Instant>,
    gave_up: Option<Error>,
    events: Option<(Sender<Event>, Receiver<Event>)>,
}

impl Sup {
    fn emit(&self, e: Event) {
        if let Some((tx, _)) = &self.events {
            let _ = tx.try_send(e);
        }
    }
}

enum Msg {
    /// A start ended that could not be watched (its spawn failed).
    Ended {
        slot: usize,
        generation: u64,
        result: Result<()>,
        /// The child was stopped by a signal sent to it: a stop.
        signalled: bool,
    },
    /// Look at the timers again.
    Poke,
    Quit,
}

#[derive(Debug)]
pub(crate) struct Inner {
    strategy: Strategy,
    intensity: (u32, Duration),
    sup: Mutex<Sup>,
    /// A child ended or changed state.
    changed: Condvar,
    wake: Sender<Msg>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl std::fmt::Debug for Msg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Msg::Ended { .. } => "Ended",
            Msg::Poke => "Poke",
            Msg::Quit => "Quit",
        })
    }
}

impl Inner {
    pub(crate) fn start(strategy: Strategy, intensity: (u32, Duration)) -> Arc<Inner> {
        let (wake, inbox) = crossbeam_channel::unbounded();
        let inner = Arc::new(Inner {
            strategy,
            intensity,
            sup: Mutex::new(Sup {
                slots: Vec::new(),
                recent: VecDeque::new(),
                gave_up: None,
                events: None,
            }),
            changed: Condvar::new(),
            wake,
            thread: Mutex::new(None),
        });
        let weak = Arc::downgrade(&inner);
        // If the thread cannot start, children still start and stop; only
        // restarts and timers need it, and `add` reports its absence.
        let thread = std::thread::Builder::new()
            .name("skprocess-supervisor".into())
            .stack_size(256 * 1024)
            .spawn(move || supervise(&weak, &inbox))
            .ok();
        *inner.thread.lock().unwrap_or_else(|p| p.into_inner()) = thread;
        inner
    }

    fn lock(&self) -> MutexGuard<'_, Sup> {
        self.sup.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn index(&self, name: &str) -> Result<usize> {
        let sup = self.lock();
        find(&sup, name)
    }

    pub(crate) fn add(self: &Arc<Self>, spec: Spec) -> Result<()> {
        self.add_all(vec![spec])
    }

    pub(crate) fn add_all(self: &Arc<Self>, specs: Vec<Spec>) -> Result<()> {
        if self
            .thread
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_none()
        {
            return Err(Error::Spawn(std::io::Error::other(
                "the supervisor's thread could not be started",
            )));
        }
        let first = {
            let mut sup = self.lock();
            if let Some(e) = &sup.gave_up {
                return Err(e.duplicate());
            }
            for (i, s) in specs.iter().enumerate() {
                if find(&sup, &s.name).is_ok() || specs[..i].iter().any(|o| o.name == s.name) {
                    return Err(Error::usage(format!(
                        "a supervised child is already named {:?}",
                        s.name
                    )));
                }
            }
            let first = sup.slots.len();
            for spec in specs {
                let report = Arc::new(ReportPage::new().map_err(Error::Spawn)?);
                sup.slots.push(Slot {
                    delay: spec.backoff.first,
                    spec,
                    state: State::Starting,
                    pid: None,
                    restarts: 0,
                    last_error: None,
                    generation: 0,
                    control: None,
                    started: Instant::now(),
                    start_at: None,
                    kill_at: None,
                    stopped: false,
                    pending_restart: false,
                    // Starting from now: a strategy that restarts its
                    // siblings before `launch` below gets to it treats it
                    // as any child still being started.
                    launching: true,
                    report,
                });
            }
            first
        };
        let count = self.lock().slots.len();
        for i in first..count {
            self.launch(i);
        }
        Ok(())
    }

    /// Starts slot `i` (outside the lock); a start that fails is an end
    /// like any other, for the policy to decide about.
    fn launch(self: &Arc<Self>, i: usize) {
        let prepared = {
            let mut sup = self.lock();
            let slot = &mut sup.slots[i];
            if slot.stopped {
                slot.launching = false;
                slot.state = State::Stopped;
                None
            } else {
                slot.generation += 1;
                slot.launching = true;
                slot.state = State::Starting;
                slot.start_at = None;
                let control = Arc::new(Control::with_report(
                    slot.spec.type_name,
                    &slot.spec.config,
                    slot.report.clone(),
                ));
                let initial = slot.spec.initial.try_clone();
                Some((
                    slot.generation,
                    control,
                    initial,
                    slot.spec.type_id,
                    slot.spec.config.clone(),
                    // Log files are named after the child: `shard/0`
                    // writes `shard-0-<pid>.log`.
                    slot.spec.name.replace('/', "-"),
                ))
            }
        };
        let Some((generation, control, initial, type_id, config, log_name)) = prepared else {
            self.changed.notify_all();
            return;
        };
        let started = initial.and_then(|initial| {
            let mut lives =
                Lives::new(control.clone(), type_id, initial, config).log_name(log_name);
            let first = lives.start_first()?;
            let inner = Arc::downgrade(self);
            std::thread::Builder::new()
                .name("skprocess-supervised".into())
                .stack_size(256 * 1024)
                .spawn(move || {
                    let control = lives.control().clone();
                    let result = lives.run(first).map(drop);
                    if let Some(inner) = inner.upgrade() {
                        inner.on_end(i, generation, result, control.is_signalled());
                    }
                })
                .map_err(Error::Spawn)
        });
        let mut sup = self.lock();
        match started {
            Ok(_) => {
                let slot = &mut sup.slots[i];
                slot.launching = false;
                let pid = control.pid();
                slot.pid = Some(pid);
                slot.started = Instant::now();
                slot.control = Some(control);
                slot.state = State::Running;
                let name = slot.spec.name.clone();
                if slot.stopped || slot.pending_restart {
                    // Stopped, or taken down by its strategy, while it was
                    // being started.
                    slot.take_down(Instant::now());
                    let _ = self.wake.send(Msg::Poke);
                }
                sup.emit(Event::Started { name, pid });
            }
            Err(e) => {
                // Still "launching" until the end is handled, so that no
                // one sees the child settled in between.
                drop(sup);
                let _ = self.wake.send(Msg::Ended {
                    slot: i,
                    generation,
                    result: Err(e),
                    signalled: false,
                });
                return;
            }
        }
        drop(sup);
        self.changed.notify_all();
    }

    /// A start has ended, as seen by the thread that ran it: the policy
    /// decides there, and what that makes due at once (a restart without
    /// backoff) starts from there too, without a hand-off to the
    /// supervisor's thread, which is only woken to rearm its timers when
    /// any are left (a backoff, a grace).
    fn on_end(self: &Arc<Self>, i: usize, generation: u64, result: Result<()>, signalled: bool) {
        self.ended(i, generation, result, signalled);
        if self.tick().is_some() {
            let _ = self.wake.send(Msg::Poke);
        }
    }

    /// What happens when a start has ended.
    fn ended(self: &Arc<Self>, i: usize, generation: u64, result: Result<()>, signalled: bool) {
        let now = Instant::now();
        let mut sup = self.lock();
        let gave_up = sup.gave_up.is_some();
        let Some(slot) = sup.slots.get_mut(i) else {
            return;
        };
        if slot.generation != generation {
            return;
        }
        slot.control = None;
        slot.launching = false;
        slot.kill_at = None;
        if signalled {
            // SIGTERM or SIGINT sent to the child itself: a stop, which
            // is never followed by a restart.
            slot.stopped = true;
        }
        let name = slot.spec.name.clone();
        let hung = result.as_ref().err().is_some_and(Error::is_hung);
        let error = result.err().map(|e| e.to_string());
        let failed = error.is_some();
        if let Some(e) = &error {
            slot.last_error = Some(e.clone());
        }
        let ran = now.saturating_duration_since(slot.started);
        let restart = if slot.stopped || gave_up {
            None
        } else if slot.pending_restart {
            Some(false)
        } else {
            match slot.spec.restart {
                Restart::Permanent => Some(true),
                Restart::Transient if failed => Some(true),
                _ => None,
            }
        };
        let slot = &mut sup.slots[i];
        slot.pending_restart = false;
        slot.state = match (restart, slot.stopped, failed) {
            (Some(_), ..) => State::Starting,
            (None, true, _) => State::Stopped,
            (None, false, true) => State::Failed,
            (None, false, false) => State::Exited,
        };
        if hung {
            sup.emit(Event::Hung { name: name.clone() });
        }
        sup.emit(Event::Exited {
            name: name.clone(),
            error: error.clone(),
        });
        match restart {
            None => {}
            // Taken down by its supervisor: start again at once.
            Some(false) => {
                sup.slots[i].restarts += 1;
                schedule(&mut sup, i, now, Duration::ZERO);
            }
            Some(true) => {
                let (max, period) = self.intensity;
                sup.recent.push_back(now);
                while sup
                    .recent
                    .front()
                    .is_some_and(|&t| now.saturating_duration_since(t) > period)
                {
                    sup.recent.pop_front();
                }
                if sup.recent.len() > max as usize {
                    let e = super::gave_up(&name, max, period, error.as_deref());
                    give_up(&mut sup, &name, e, now);
                } else {
                    let slot = &mut sup.slots[i];
                    let (delay, then) = slot.spec.backoff.delay_after(slot.delay, ran);
                    slot.delay = then;
                    slot.restarts += 1;
                    schedule(&mut sup, i, now, delay);
                    sup.emit(Event::Restarting {
                        name: name.clone(),
                        delay,
                    });
                    let others: Vec<usize> = match self.strategy {
                        Strategy::OneForOne => Vec::new(),
                        Strategy::OneForAll => (0..sup.slots.len()).filter(|&j| j != i).collect(),
                        Strategy::RestForOne => (i + 1..sup.slots.len()).collect(),
                    };
                    for j in others {
                        let other = &mut sup.slots[j];
                        if other.stopped || other.spec.restart == Restart::Temporary {
                            continue;
                        }
                        if other.control.is_some() {
                            other.pending_restart = true;
                            other.take_down(now);
                        } else if other.launching {
                            // Still being started: taken down as soon as
                            // it runs (see `launch`), then started again.
                            other.pending_restart = true;
                        } else if other.start_at.is_none() && !other.is_running() {
                            other.restarts += 1;
                            schedule(&mut sup, j, now, delay);
                        }
                    }
                }
            }
        }
        drop(sup);
        self.changed.notify_all();
    }

    /// Starts what is due, kills what overstayed its grace; returns when
    /// the next timer is due.
    fn tick(self: &Arc<Self>) -> Option<Instant> {
        let now = Instant::now();
        let mut due = Vec::new();
        let next = {
            let mut sup = self.lock();
            let mut next: Option<Instant> = None;
            for (i, slot) in sup.slots.iter_mut().enumerate() {
                if let Some(at) = slot.start_at {
                    if at <= now {
                        slot.start_at = None;
                        due.push(i);
                    } else {
                        next = Some(next.map_or(at, |n| n.min(at)));
                    }
                }
                if let Some(at) = slot.kill_at {
                    if at <= now {
                        slot.kill_at = None;
                        if let Some(c) = &slot.control {
                            c.kill();
                        }
                    } else {
                        next = Some(next.map_or(at, |n| n.min(at)));
                    }
                }
            }
            next
        };
        for i in due {
            self.launch(i);
        }
        next
    }

    pub(crate) fn status(&self, name: &str) -> Result<Status> {
        let sup = self.lock();
        let slot = &sup.slots[find(&sup, name)?];
        Ok(Status {
            state: slot.state,
            pid: slot.control.as_ref().map(|c| c.pid()),
            restarts: slot.restarts,
            last_error: slot.last_error.clone(),
        })
    }

    pub(crate) fn report_page(&self, name: &str) -> Result<Arc<ReportPage>> {
        let sup = self.lock();
        Ok(sup.slots[find(&sup, name)?].report.clone())
    }

    pub(crate) fn names(&self) -> Vec<String> {
        self.lock()
            .slots
            .iter()
            .map(|s| s.spec.name.clone())
            .collect()
    }

    pub(crate) fn group(&self, group: &str) -> Result<Vec<usize>> {
        let sup = self.lock();
        let members: Vec<usize> = (0..sup.slots.len())
            .filter(|&i| sup.slots[i].spec.group.as_deref() == Some(group))
            .collect();
        if members.is_empty() {
            return Err(Error::usage(format!(
                "no supervised group is named {group:?}"
            )));
        }
        Ok(members)
    }

    pub(crate) fn restart(self: &Arc<Self>, name: &str) -> Result<()> {
        let now = Instant::now();
        let mut sup = self.lock();
        if let Some(e) = &sup.gave_up {
            return Err(e.duplicate());
        }
        let i = find(&sup, name)?;
        let slot = &mut sup.slots[i];
        slot.stopped = false;
        if slot.control.is_some() {
            // Counted as a restart when it has ended.
            slot.pending_restart = true;
            slot.take_down(now);
        } else if slot.launching {
            // Taken down as soon as it runs, then started again.
            slot.pending_restart = true;
        } else if !slot.is_running() {
            slot.restarts += 1;
            slot.start_at = None;
            schedule(&mut sup, i, now, Duration::ZERO);
        }
        drop(sup);
        let _ = self.wake.send(Msg::Poke);
        Ok(())
    }

    /// Stops the slots `which` (in reverse order) and waits until each
    /// has ended.
    pub(crate) fn stop(&self, which: &[usize]) -> Result<()> {
        for &i in which.iter().rev() {
            let now = Instant::now();
            let mut sup = self.lock();
            let slot = &mut sup.slots[i];
            slot.stopped = true;
            slot.pending_restart = false;
            slot.start_at = None;
            if slot.control.is_some() {
                slot.take_down(now);
            } else if !slot.is_running() {
                slot.state = State::Stopped;
            }
            drop(sup);
            let _ = self.wake.send(Msg::Poke);
            let mut sup = self.lock();
            while sup.slots[i].is_running() {
                sup = self.changed.wait(sup).unwrap_or_else(|p| p.into_inner());
            }
        }
        self.changed.notify_all();
        Ok(())
    }

    pub(crate) fn stop_all(&self) -> Result<()> {
        let all: Vec<usize> = (0..self.lock().slots.len()).collect();
        self.stop(&all)
    }

    /// A signal arrived: stop everything.
    pub(crate) fn shut_down(&self) {
        let _ = self.stop_all();
    }

    pub(crate) fn wait(&self) -> Result<()> {
        let mut sup = self.lock();
        while !sup.slots.iter().all(Slot::is_settled) {
            sup = self.changed.wait(sup).unwrap_or_else(|p| p.into_inner());
        }
        match &sup.gave_up {
            Some(e) => Err(e.duplicate()),
            None => Ok(()),
        }
    }

    pub(crate) fn events(&self) -> Receiver<Event> {
        let mut sup = self.lock();
        sup.events
            .get_or_insert_with(|| crossbeam_channel::bounded(EVENT_QUEUE))
            .1
            .clone()
    }

    /// Ends the supervisor's thread (every child has ended).
    pub(crate) fn close(&self) {
        let _ = self.wake.send(Msg::Quit);
        let thread = self.thread.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(t) = thread {
            let _ = t.join();
        }
    }
}

fn find(sup: &Sup, name: &str) -> Result<usize> {
    sup.slots
        .iter()
        .position(|s| s.spec.name == name)
        .ok_or_else(|| Error::usage(format!("no supervised child is named {name:?}")))
}

/// Starts slot `i` after `delay`.
fn schedule(sup: &mut Sup, i: usize, now: Instant, delay: Duration) {
    let slot = &mut sup.slots[i];
    slot.state = if delay.is_zero() {
        State::Starting
    } else {
        State::Backoff
    };
    slot.start_at = Some(now + delay);
}

/// The intensity was exceeded: stop everything, for good.
fn give_up(sup: &mut Sup, name: &str, e: Error, now: Instant) {
    sup.gave_up = Some(e);
    sup.emit(Event::GaveUp {
        name: name.to_string(),
    });
    for slot in &mut sup.slots {
        slot.stopped = true;
        slot.pending_restart = false;
        slot.start_at = None;
        if slot.control.is_some() {
            slot.take_down(now);
        } else if !slot.launching && !matches!(slot.state, State::Exited | State::Failed) {
            slot.state = State::Stopped;
        }
    }
}

/// The supervisor thread: timers, pokes, and the ends of starts that
/// failed to spawn.
fn supervise(inner: &std::sync::Weak<Inner>, inbox: &Receiver<Msg>) {
    let mut next: Option<Instant> = None;
    loop {
        let msg = match next {
            Some(at) => inbox.recv_deadline(at),
            None => inbox.recv().map_err(|_| RecvTimeoutError::Disconnected),
        };
        let Some(inner) = inner.upgrade() else {
            return;
        };
        match msg {
            Ok(Msg::Quit) | Err(RecvTimeoutError::Disconnected) => return,
            Ok(Msg::Ended {
                slot,
                generation,
                result,
                signalled,
            }) => inner.ended(slot, generation, result, signalled),
            Ok(Msg::Poke) | Err(RecvTimeoutError::Timeout) => {}
        }
        next = inner.tick();
    }
}
