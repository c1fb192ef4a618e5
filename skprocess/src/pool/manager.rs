//! One manager thread per worker: it feeds the worker tasks from the pool's
//! queue, reads the answers, enforces timeouts, and replaces the worker when
//! it dies.
//!
//! A worker runs what it is sent in order, so the manager keeps the tasks it
//! sent in a queue (`flights`): the first unit of the first task is the one
//! running now (the head). Up to two tasks are in flight while tasks are
//! short, so the worker never waits for the next one; one at a time once
//! they are long, so a slow task does not hold a queued one hostage while
//! other workers are idle.
//!
//! Hook timeouts are armed from the worker's `HOOK_START` / `HOOK_END` marks,
//! as a process handle does ([`Deadlines`]). When the worker overruns, dies,
//! or breaks the protocol, the manager kills and reaps it, starts a fresh
//! one, charges the head a life (a try, for `map_fn` calls) if the worker
//! had begun it (it counts what it begins in its status page), and hands the
//! rest of the queue unchanged to the fresh worker.
//!
//! Each worker life gets `LOG_SETUP` before `INIT` and a [`log::Forwarder`]
//! of its own, as a single process does; its `process` label follows the
//! head (set as each task becomes the head, before the worker can begin
//! it): the `tracing` events of a `LOG` frame belong to the unit or batch
//! running when the worker sent them, which is the head while the frame is
//! read, since a worker sends an item's events before its result. A
//! captured line carries the label of the head when the parent reads it:
//! the item that printed it, unless the line is read after the worker has
//! moved on to an item of another call. The
//! pool's [`Settings`] (log directory, captured output) apply to every
//! life; the log file is named after the slot, not the label.

use super::batch::{self, ItemsHead};
use super::builder::Settings;
use super::remote::Arrival;
use super::task::{Calls, Job, JobKind, Task, Unit, CALL_TRIES};
use crate::config::Hook;
use crate::error::{Cause, Error, Failure, Result};
use crate::log;
use crate::parent::child::{self, Child, End, Event, Launch, Role};
use crate::parent::deadline::{Deadlines, Overrun};
use crate::proto::{self, kind, Plan, STATUS_BEGUN};
use crate::sys::mem::SharedWords;
use crate::timers::Timers;
use crate::wire::{Frame, Writer};
use crossbeam_channel::{Receiver, TryRecvError};
use std::collections::VecDeque;
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// A task that takes longer than this is "long": one in flight at a time.
const LONG_TASK: Duration = Duration::from_millis(5);

/// How long a worker whose socket closed may take to exit before it is
/// killed.
const EXIT_GRACE: Duration = Duration::from_secs(2);

/// What the pool and its managers share.
#[derive(Debug)]
pub(crate) struct Shared {
    /// Where the workers' `tracing` events go (captured by `Pool::new`).
    pub(crate) origin: log::Origin,
    /// What each worker life is started with.
    pub(crate) settings: Settings,
    pub(crate) slots: Mutex<Slots>,
    /// The writing ends of the managers' wake-up sockets: a byte wakes a
    /// manager waiting on its worker (a call was stopped); emptied when the
    /// pool is dropped, which every manager sees as end of file.
    pub(crate) pokes: Mutex<Vec<UnixStream>>,
    /// Signalled when a slot's running job changes (`Slots::running`).
    pub(crate) running_changed: Condvar,
}

impl Shared {
    pub(crate) fn slots(&self) -> std::sync::MutexGuard<'_, Slots> {
        self.slots.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A wake-up socket for a new manager: the end it reads is returned,
    /// the other kept here.
    pub(crate) fn wake_socket(&self) -> Result<UnixStream> {
        let (ours, theirs) = UnixStream::pair().map_err(Error::Io)?;
        ours.set_nonblocking(true).map_err(Error::Io)?;
        theirs.set_nonblocking(true).map_err(Error::Io)?;
        self.pokes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(ours);
        Ok(theirs)
    }

    /// Wakes every manager: each looks for work of a stopped call to kill.
    pub(crate) fn poke(&self) {
        for mut w in self.pokes.lock().unwrap_or_else(|p| p.into_inner()).iter() {
            // A full socket already holds a wake-up.
            let _ = w.write(&[1]);
        }
    }

    /// Waits until no worker runs work of `job` (its managers have killed
    /// them), at most `bound`.
    pub(crate) fn wait_not_running(&self, job: &Arc<Job>, bound: Duration) {
        let id = job_id(job);
        let end = Instant::now() + bound;
        let mut slots = self.slots();
        while slots.running.contains(&id) {
            let left = end.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return;
            }
            slots = self
                .running_changed
                .wait_timeout(slots, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    /// Wakes every manager for good: the pool is being dropped.
    pub(crate) fn close(&self) {
        self.pokes.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }
}

/// Each slot's current worker, and the timers of the workers gone.
#[derive(Debug)]
pub(crate) struct Slots {
    /// The pid of each slot's current worker (0 while it has none).
    pub(crate) pids: Vec<u32>,
    /// The status page of each slot's current worker.
    statuses: Vec<Option<Arc<SharedWords>>>,
    /// Hook timers of the workers that have ended.
    past: Timers,
    /// The job whose work each slot's worker runs now or next (its first
    /// task in flight), by [`job_id`]; 0 for none.
    pub(crate) running: Vec<usize>,
}

/// A job's identity while it lives.
fn job_id(job: &Arc<Job>) -> usize {
    Arc::as_ptr(job) as usize
}

impl Slots {
    pub(crate) fn new(workers: &[Worker]) -> Slots {
        Slots {
            pids: workers.iter().map(|w| w.child.pid()).collect(),
            statuses: workers
                .iter()
                .map(|w| Some(w.child.status().clone()))
                .collect(),
            past: Timers::default(),
            running: vec![0; workers.len()],
        }
    }

    /// Hook timers over every item run so far.
    pub(crate) fn timers(&self) -> Timers {
        let mut t = self.past.clone();
        for status in self.statuses.iter().flatten() {
            t.merge(&proto::status_timers(status.words()));
        }
        t
    }
}

/// The `process` label of a worker's events: `app::Job[worker 2]`.
fn label(job: &str, slot: usize) -> String {
    format!("{job}[worker {slot}]")
}

/// The label of a worker's events before its first task.
const IDLE_LABEL: &str = "skprocess::Pool";

/// The name of a worker's log file, before `-<pid>.log`: its label changes
/// with the items it runs, its file's name does not.
fn log_name(slot: usize) -> String {
    format!("pool-worker-{slot}")
}

/// A running worker process.
#[derive(Debug)]
pub(crate) struct Worker {
    child: Child,
    /// Items and batches it has answered.
    answered: u64,
    /// Items it has run (each call of a batch counts).
    items_run: u64,
    /// The job whose name its events are labelled with now.
    labelled: String,
}

impl Worker {
    /// Starts the worker of `slot` with `settings` and tells it to serve;
    /// its events go to `origin`.
    pub(crate) fn spawn(origin: &log::Origin, settings: &Settings, slot: usize) -> Result<Worker> {
        match &settings.cluster {
            None => Worker::start(origin, settings, slot, None),
            Some(cluster) => {
                let arrival = cluster.start(1)?.pop().expect("one worker started");
                Worker::start(origin, settings, slot, Some(arrival))
            }
        }
    }

    /// Starts the worker of `slot` on this machine, or takes `remote`, a
    /// worker started by the pool's cluster engine.
    pub(crate) fn start(
        origin: &log::Origin,
        settings: &Settings,
        slot: usize,
        remote: Option<Arrival>,
    ) -> Result<Worker> {
        let log_name = log_name(slot);
        let launch = Launch {
            origin,
            label: &label(IDLE_LABEL, slot),
            log_dir: settings
                .log_dir
                .as_deref()
                .map(|dir| (dir, log_name.as_str())),
            capture_output: settings.capture_output,
            max_frame: crate::config::DEFAULT_MAX_MESSAGE,
            stop_grace: crate::Config::default().get_stop_grace(),
        };
        let child = match remote {
            None => Child::start(&launch, Role::Worker)?,
            Some(a) => Child::connect(&launch, a.socket, a.pid)?,
        };
        Ok(Worker {
            child,
            answered: 0,
            items_run: 0,
            labelled: IDLE_LABEL.to_string(),
        })
    }

    /// Ends the worker: closing its socket makes it exit; one that does not
    /// within [`EXIT_GRACE`] is killed. Reaps it.
    pub(crate) fn end(self) {
        let _ = self.child.finish(End::Exiting {
            grace: EXIT_GRACE,
            take_group: false,
        });
    }

    fn writer(&self) -> &Writer {
        self.child.writer()
    }

    /// Its resident memory, from `/proc/<pid>/statm` (`None` if unreadable).
    fn resident_bytes(&self) -> Option<u64> {
        if self.child.is_remote() {
            return None;
        }
        let statm = std::fs::read_to_string(format!("/proc/{}/statm", self.child.pid())).ok()?;
        let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
        Some(pages * rustix::param::page_size() as u64)
    }

    /// Whether it is due to be replaced under the pool's recycling
    /// settings.
    fn due(&self, settings: &Settings) -> bool {
        // A fresh worker is as small as a worker gets.
        self.items_run > 0
            && (settings
                .max_items_per_worker
                .is_some_and(|n| self.items_run >= n)
                || settings
                    .max_worker_memory
                    .is_some_and(|max| self.resident_bytes().is_some_and(|b| b > max)))
    }

    /// Whether it had begun the item or batch it was to answer next.
    fn began_next(&self) -> bool {
        // A remote worker's status page is its own: assume it had.
        self.child.is_remote()
            || self.child.status().words()[STATUS_BEGUN].load(std::sync::atomic::Ordering::Relaxed)
                > self.answered
    }
}

/// A task sent to the worker and not fully answered.
enum Flight {
    /// Units still to answer, the first one running (or next to run).
    Items {
        job: Arc<Job>,
        units: VecDeque<Unit>,
    },
    Calls(Calls),
}

/// The unit or batch running now.
struct Head {
    since: Instant,
    deadlines: Option<Deadlines>,
}

/// What woke the manager up while it waited on its worker.
enum Wake {
    Frame(Frame),
    Overrun(Overrun),
    /// End of file: the worker died (or exited).
    Closed,
    /// The socket gave nonsense.
    Broken(Error),
    /// The pool is being dropped.
    Closing,
    /// A call was stopped: its work may be here.
    Poked,
}

pub(crate) struct Manager {
    slot: usize,
    tasks: Receiver<Task>,
    /// Disconnected once the pool is dropped (while tasks may still have
    /// senders: background calls).
    closed: Receiver<()>,
    /// Readable when a call is stopped; end of file once the pool is
    /// dropped.
    wake: UnixStream,
    shared: Arc<Shared>,
    worker: Option<Worker>,
    flights: VecDeque<Flight>,
    /// Items taken from the queue and not sent yet: the rest of a task
    /// split so that the worker can be recycled between items.
    held_back: Option<Flight>,
    head: Option<Head>,
    /// The last task took longer than [`LONG_TASK`] (or none was timed).
    long: bool,
    /// What `Slots::running` shows for this slot.
    shown: usize,
}

impl Manager {
    pub(crate) fn new(
        slot: usize,
        tasks: Receiver<Task>,
        closed: Receiver<()>,
        wake: UnixStream,
        shared: Arc<Shared>,
        worker: Worker,
    ) -> Self {
        Manager {
            slot,
            tasks,
            closed,
            wake,
            shared,
            worker: Some(worker),
            flights: VecDeque::new(),
            held_back: None,
            head: None,
            long: true,
            shown: 0,
        }
    }

    /// Serves tasks until the pool is dropped; dropping the manager then
    /// ends the worker.
    pub(crate) fn run(mut self) {
        let recycling = self.recycling();
        loop {
            self.drop_aborted();
            self.show_running();
            if self.flights.is_empty() {
                self.recycle_if_due();
            }
            // A worker that may be recycled runs one item at a time, so it is
            // never sent one past its turn.
            let depth = if self.long || recycling { 1 } else { 2 };
            while self.flights.len() < depth {
                let flight = match self.held_back.take() {
                    Some(f) => f,
                    None => {
                        let task = if self.flights.is_empty() {
                            crossbeam_channel::select! {
                                recv(self.tasks) -> t => match t {
                                    Ok(t) => t,
                                    Err(_) => return,
                                },
                                recv(self.closed) -> _ => return,
                            }
                        } else {
                            match self.tasks.try_recv() {
                                Ok(t) => t,
                                Err(TryRecvError::Empty) => break,
                                Err(TryRecvError::Disconnected) => return,
                            }
                        };
                        match task {
                            Task::Items { job, units } => Flight::Items {
                                job,
                                units: units.into(),
                            },
                            Task::Calls(c) => Flight::Calls(c),
                        }
                    }
                };
                if flight_job(&flight).is_cancelled() {
                    continue;
                }
                let flight = if recycling {
                    self.split(flight)
                } else {
                    flight
                };
                self.send(flight);
            }
            if self.flights.is_empty() {
                continue;
            }
            match self.wait() {
                Wake::Frame(f) => self.on_frame(f),
                Wake::Overrun(o) => self.lose_worker(Some(o), "overran".into()),
                Wake::Closed => self.lose_worker(None, String::new()),
                Wake::Broken(e) => self.lose_worker(None, format!("broke the protocol: {e}")),
                Wake::Poked => {}
                Wake::Closing => return,
            }
        }
    }

    /// Shows (in `Slots::running`) the job of the first task in flight,
    /// which the worker runs now or next.
    fn show_running(&mut self) {
        let id = self.flights.front().map_or(0, |f| job_id(flight_job(f)));
        if id == self.shown {
            return;
        }
        self.shown = id;
        let mut slots = self.shared.slots();
        if let Some(r) = slots.running.get_mut(self.slot) {
            *r = id;
        }
        drop(slots);
        self.shared.running_changed.notify_all();
    }

    /// Whether workers are replaced after some items or past some memory.
    fn recycling(&self) -> bool {
        let s = &self.shared.settings;
        s.max_items_per_worker.is_some() || s.max_worker_memory.is_some()
    }

    /// Sends process items one at a time while recycling, keeping the rest
    /// of the task back, so the worker is checked between items.
    fn split(&mut self, flight: Flight) -> Flight {
        match flight {
            Flight::Items { job, mut units } if units.len() > 1 => {
                let rest = units.split_off(1);
                self.held_back = Some(Flight::Items {
                    job: job.clone(),
                    units: rest,
                });
                Flight::Items { job, units }
            }
            other => other,
        }
    }

    /// Replaces an idle worker that has run its share of items or grown
    /// past the memory allowed: it is ended (as on the pool's drop) and a
    /// fresh one started.
    fn recycle_if_due(&mut self) {
        if !self
            .worker
            .as_ref()
            .is_some_and(|w| w.due(&self.shared.settings))
        {
            return;
        }
        if let Some(w) = self.worker.take() {
            self.retire(&w, None);
            w.end();
        }
        // If it cannot start, the next task tries again.
        let _ = self.worker();
    }

    /// Kills the worker if what it runs belongs to a stopped call, and
    /// drops every piece of work of stopped calls; the rest goes to a fresh
    /// worker, as after a crash but without charging anyone a life.
    fn drop_aborted(&mut self) {
        if self
            .held_back
            .as_ref()
            .is_some_and(|f| flight_job(f).is_aborted())
        {
            self.held_back = None;
        }
        if !self
            .flights
            .front()
            .is_some_and(|f| flight_job(f).is_aborted())
        {
            return;
        }
        if let Some(w) = self.worker.take() {
            self.retire(&w, None);
            let _ = w.child.finish(End::Kill);
        }
        self.head = None;
        self.long = true;
        let flights = std::mem::take(&mut self.flights);
        // The stopped call may return now: its work here is dead.
        self.show_running();
        let _ = self.worker();
        for flight in flights {
            if !flight_job(&flight).is_cancelled() {
                self.send(flight);
            }
        }
    }

    /// Reads what woke the manager: `true` at end of file (the pool is
    /// being dropped).
    fn drained_wake(&mut self) -> bool {
        let mut buf = [0u8; 64];
        loop {
            match self.wake.read(&mut buf) {
                Ok(0) => return true,
                Ok(_) => continue,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(_) => return false,
            }
        }
    }

    /// Shows the worker as the slot's current one (in `Pool::pids` and
    /// `Pool::timers`).
    fn publish(&self, w: &Worker) {
        let mut slots = self.shared.slots();
        if let Some(p) = slots.pids.get_mut(self.slot) {
            *p = w.child.pid();
        }
        if let Some(s) = slots.statuses.get_mut(self.slot) {
            *s = Some(w.child.status().clone());
        }
    }

    /// Clears the slot of an ended worker, keeping its timers (and those of
    /// a hook call it was killed in, which never returned to be timed).
    fn retire(&self, w: &Worker, killed_in: Option<(Hook, Duration)>) {
        let mut slots = self.shared.slots();
        if let Some(p) = slots.pids.get_mut(self.slot) {
            *p = 0;
        }
        if let Some(s) = slots.statuses.get_mut(self.slot) {
            *s = None;
        }
        slots.past.merge(&w.child.timers());
        if let Some((hook, ran)) = killed_in {
            slots.past.get_mut(hook).record(ran);
        }
    }

    /// The worker, started afresh if there is none or it has died.
    fn worker(&mut self) -> Result<&mut Worker> {
        // With work in flight, a dead worker is found by reading (and that
        // work is retried); checked here only when idle.
        if self.flights.is_empty() && self.worker.as_ref().is_some_and(|w| w.child.has_exited()) {
            // Died while idle (killed from outside): no item was running.
            if let Some(w) = self.worker.take() {
                self.retire(&w, None);
                let _ = w.child.finish(End::Kill);
            }
        }
        if self.worker.is_none() {
            let w = Worker::spawn(&self.shared.origin, &self.shared.settings, self.slot)?;
            self.publish(&w);
            self.worker = Some(w);
        }
        Ok(self.worker.as_mut().expect("just set"))
    }

    /// Sends a task to the worker and queues it; on failure to start a
    /// worker, answers it with the error.
    fn send(&mut self, flight: Flight) {
        if let Err(e) = self.worker() {
            return fail_flight(flight, &e);
        }
        if self.flights.is_empty() {
            // The head to be: labelled before the worker can print for it.
            self.label(flight_job(&flight));
        }
        let worker = self.worker.as_ref().expect("just started");
        // Read before the frame goes: the worker may begin at once, and
        // this thread lose its core to it for as long as a whole item, so
        // a clock started after the send could see an item of a
        // millisecond end microseconds later; the dispatcher would take
        // the items for tiny ones and deal the rest out in big lumps.
        let sent_at = Instant::now();
        let sent = match &flight {
            Flight::Items { job, units } => send_items(worker.writer(), job, units),
            Flight::Calls(c) => {
                worker
                    .writer()
                    .send(kind::POOL_CALLS, &c.payload.bytes, &c.payload.raw_fds())
            }
        };
        if let Err(e) = sent {
            if !matches!(e, Error::Io(_) | Error::Disconnected) {
                // Could not even be framed (too large, too many descriptors):
                // no worker can take it.
                return fail_flight(flight, &e);
            }
            // Otherwise the worker is gone: reading finds out and retries.
        }
        self.flights.push_back(flight);
        if self.head.is_none() {
            self.arm_head(sent_at);
        }
    }

    /// Labels the worker's events and captured lines with `job`'s name.
    fn label(&mut self, job: &Job) {
        if let Some(w) = self.worker.as_mut() {
            if w.labelled != job.name {
                w.child.log().set_label(&label(&job.name, self.slot));
                w.labelled.clone_from(&job.name);
            }
        }
    }

    /// Starts the clock and the deadlines of the new head, and labels the
    /// worker's logs after it (until the next head: with nothing in flight,
    /// the label stays).
    fn arm_head(&mut self, now: Instant) {
        if let Some(job) = self.flights.front().map(|f| flight_job(f).clone()) {
            self.label(&job);
        }
        self.head = self.flights.front_mut().map(|f| match f {
            Flight::Items { job, units } => {
                let unit = units.front_mut().expect("an items flight is never empty");
                let started = *unit.started.get_or_insert(now);
                let deadlines = match &job.kind {
                    JobKind::Items { config, .. } => Some(Deadlines::new(config, started)),
                    JobKind::Calls => None,
                };
                Head {
                    since: now,
                    deadlines,
                }
            }
            Flight::Calls(_) => Head {
                since: now,
                deadlines: None,
            },
        });
        self.show_running();
    }

    /// Ends the head's clock: how long it ran. A long one makes the
    /// pipeline one task deep.
    fn head_ended(&mut self, now: Instant) -> Duration {
        let busy = self
            .head
            .take()
            .map_or(Duration::ZERO, |h| now.saturating_duration_since(h.since));
        self.long = busy > LONG_TASK;
        busy
    }

    fn wait(&mut self) -> Wake {
        let worker = self
            .worker
            .as_mut()
            .expect("a worker while work is in flight");
        let deadlines = self.head.as_mut().and_then(|h| h.deadlines.as_mut());
        match worker.child.next_event(deadlines, Some(self.wake.as_fd())) {
            Event::Frame(f) => Wake::Frame(f),
            Event::Overrun(o) => Wake::Overrun(o),
            Event::Closed => Wake::Closed,
            Event::Broken(e) => Wake::Broken(e),
            Event::Woken if self.drained_wake() => Wake::Closing,
            Event::Woken => Wake::Poked,
        }
    }

    fn on_frame(&mut self, frame: Frame) {
        let now = Instant::now();
        if matches!(frame.kind, kind::DONE | kind::FAILED | kind::POOL_RESULTS) {
            let items = match (frame.kind, self.flights.front()) {
                (kind::POOL_RESULTS, Some(Flight::Calls(c))) => c.count as u64,
                _ => 1,
            };
            if let Some(w) = &mut self.worker {
                w.answered += 1;
                w.items_run += items;
            }
        }
        match (frame.kind, self.flights.front()) {
            (kind::LOG, _) => self.forward_log(&frame.payload),
            // A pool item has no listener for its messages.
            (kind::TELL, _) => {}
            (kind::DONE | kind::FAILED, Some(Flight::Items { .. })) => self.item_ended(frame, now),
            (kind::POOL_RESULTS, Some(Flight::Calls(_))) => {
                self.head_ended(now);
                if let Some(Flight::Calls(c)) = self.flights.pop_front() {
                    c.answer(frame.into_encoded());
                }
                self.arm_head(now);
            }
            (other, _) => {
                let e = Error::Wire(format!("unexpected frame kind {other}"));
                self.lose_worker(None, format!("broke the protocol: {e}"));
            }
        }
    }

    /// Re-emits the events of a `LOG` frame, labelled with the head's job
    /// (the previous label while nothing is in flight).
    fn forward_log(&mut self, payload: &[u8]) {
        if let Some(w) = self.worker.as_ref() {
            w.child.log().emit(payload);
        }
    }

    fn item_ended(&mut self, frame: Frame, now: Instant) {
        let busy = self.head_ended(now);
        let Some(Flight::Items { job, units }) = self.flights.front_mut() else {
            return;
        };
        let job = job.clone();
        let mut unit = units.pop_front().expect("an items flight is never empty");
        if units.is_empty() {
            self.flights.pop_front();
        }
        if frame.kind == kind::DONE {
            unit.answer(frame.into_encoded(), busy);
        } else {
            let mut f = frame.decode::<Failure>().unwrap_or_else(|e| {
                job.failure(
                    unit.index,
                    unit.attempt,
                    None,
                    None,
                    Cause::Crashed(format!("unreadable failure report: {e}")),
                )
            });
            f.process = format!("{} item #{}", job.name, unit.index);
            f.item = Some(unit.index);
            if unit.attempt < f.lives && !f.fatal {
                // The worker is healthy: the next attempt runs there, after
                // what is already queued.
                unit.attempt += 1;
                self.send(Flight::Items {
                    job,
                    units: VecDeque::from([unit]),
                });
            } else {
                unit.answer(Err(Error::Process(Box::new(f))), busy);
            }
        }
        self.arm_head(now);
    }

    /// The worker died, overran or broke the protocol: kill and reap it,
    /// charge the head, and hand everything else to a fresh worker.
    fn lose_worker(&mut self, overrun: Option<Overrun>, what: String) {
        let Some(w) = self.worker.take() else { return };
        let (hook, run) = w.child.position();
        // A worker that died before it began the head (killed from outside
        // while idle) costs nobody a life.
        let charge = overrun.is_some() || w.began_next();
        let killed_in = overrun.and_then(|o| o.verdict((hook, run)).killed_in);
        self.retire(&w, killed_in);
        let what = if overrun.is_none() && what.is_empty() {
            let status = w.child.finish(End::Exiting {
                grace: EXIT_GRACE,
                take_group: true,
            });
            format!("the pool worker {}", child::describe(&status))
        } else {
            let _ = w.child.finish(End::Kill);
            format!("the pool worker {what}")
        };
        self.head = None;
        self.long = true;
        let mut flights = std::mem::take(&mut self.flights);
        // The replacement starts before anyone hears of the loss, so the
        // pool keeps its size even when nothing is left to run; if it cannot
        // start, the next task tries again (and fails with the reason if it
        // still cannot).
        let _ = self.worker();
        if charge {
            let rest = flights
                .pop_front()
                .and_then(|head| charge_head(head, overrun, hook, run, what));
            if let Some(rest) = rest {
                flights.push_front(rest);
            }
        }
        for flight in flights {
            if !flight_job(&flight).is_cancelled() {
                self.send(flight);
            }
        }
    }
}

/// Charges the head of a lost worker's queue a life (a try, for calls):
/// answers it if that was its last, and returns what of its task is left to
/// run again.
fn charge_head(
    head: Flight,
    overrun: Option<Overrun>,
    hook: Option<Hook>,
    run: Option<u64>,
    what: String,
) -> Option<Flight> {
    match head {
        Flight::Items { job, mut units } => {
            let mut unit = units.pop_front().expect("an items flight is never empty");
            let (hook, run, cause, last) = match overrun {
                Some(o) => {
                    let v = o.verdict((hook, run));
                    (v.hook, v.run, v.cause, v.last)
                }
                None => (hook, run, Cause::Crashed(what), false),
            };
            let f = job.failure(unit.index, unit.attempt, hook, run, cause);
            if last || unit.attempt >= f.lives {
                unit.answer(Err(Error::Process(Box::new(f))), Duration::ZERO);
            } else {
                unit.attempt += 1;
                units.push_front(unit);
            }
            (!units.is_empty()).then_some(Flight::Items { job, units })
        }
        Flight::Calls(mut c) => {
            c.tries += 1;
            if c.tries < CALL_TRIES {
                return Some(Flight::Calls(c));
            }
            let cause = Cause::Crashed(what);
            let mut f = c
                .job
                .failure(c.start, c.tries, Some(Hook::Run), None, cause);
            f.process = format!("{} items #{}..{}", c.job.name, c.start, c.start + c.count);
            // Which item of the batch failed is not known.
            f.item = None;
            c.answer(Err(Error::Process(Box::new(f))));
            None
        }
    }
}

impl Drop for Manager {
    /// Ends the worker (the pool is closing). Work still queued here
    /// answers itself as dropped.
    fn drop(&mut self) {
        self.flights.clear();
        if let Some(w) = self.worker.take() {
            self.retire(&w, None);
            w.end();
        }
        self.show_running();
    }
}

fn flight_job(f: &Flight) -> &Arc<Job> {
    match f {
        Flight::Items { job, .. } => job,
        Flight::Calls(c) => &c.job,
    }
}

/// Answers every item of a task that cannot run with `e`.
fn fail_flight(flight: Flight, e: &Error) {
    match flight {
        Flight::Items { units, .. } => {
            for u in units {
                u.answer(Err(e.duplicate()), Duration::ZERO);
            }
        }
        Flight::Calls(c) => c.answer(Err(e.duplicate())),
    }
}

/// Sends process items as one `POOL_ITEMS` frame.
fn send_items(writer: &Writer, job: &Job, units: &VecDeque<Unit>) -> Result<()> {
    let JobKind::Items { type_id, config } = &job.kind else {
        return Err(Error::Wire("a calls job sent as items".into()));
    };
    let head = ItemsHead {
        type_id: type_id.to_string(),
        plan: Plan {
            runs: config.get_runs(),
            timed: Hook::ALL.map(|h| config.get_timeout(h).is_some()),
            attempt: 1,
            lives: config.get_lives(),
            stop: false,
        },
        attempts: units.iter().map(|u| u.attempt).collect(),
    };
    let mut payload = batch::items_prefix(&head)?;
    let mut fds: Vec<RawFd> = Vec::new();
    for u in units {
        batch::push_part(&mut payload, 0, &u.value.bytes, u.value.fds.len());
        fds.extend(u.value.fds.iter().map(|f| f.as_raw_fd()));
    }
    writer.send(kind::POOL_ITEMS, &payload, &fds)
}
