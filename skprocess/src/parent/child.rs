//! One child, as its parent sees it, from spawn to reap.
//!
//! [`Child::start`] spawns the binary, maps the child's status page, starts
//! forwarding its logs, and sends `LOG_SETUP` and `INIT`; if any step after
//! the spawn fails, the child is killed and reaped before the error is
//! returned. [`Child::next_event`] reads its frames with the deadlines of
//! the hook that runs. [`Child::finish`] ends it one way or another and
//! reaps it; a `Child` dropped without `finish` is killed and reaped, so no
//! path leaves a zombie or an orphan.

use super::deadline::{Deadlines, Overrun, Vitals};
use crate::config::Hook;
use crate::error::{Error, Result};
use crate::inbox::{self, Held, Inbox, Reclaimed};
use crate::log;
use crate::proto::{self, kind, Exit, Init, STATUS_BEAT, STATUS_WORDS};
use crate::report::ReportPage;
use crate::spawn::{self, SpawnOptions};
use crate::sys::{self, mem::SharedWords, proc::ExitStatus};
use crate::timers::Timers;
use crate::wire::{self, Encoded, Frame, Reader, Writer};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What a child is started for.
#[derive(Debug)]
pub(crate) enum Role {
    /// One process value, run to its end.
    Process {
        type_id: &'static str,
        plan: proto::Plan,
        value: Encoded,
        /// Where it reports (the same page for every life).
        report: Arc<ReportPage>,
    },
    /// A pool worker.
    Worker,
}

/// How to start a child.
#[derive(Debug)]
pub(crate) struct Launch<'a> {
    /// Where its `tracing` events go.
    pub(crate) origin: &'a log::Origin,
    /// The `process` field of its events.
    pub(crate) label: &'a str,
    /// Where its log file goes, and the name it starts with (before the
    /// pid), if it has one.
    pub(crate) log_dir: Option<(&'a Path, &'a str)>,
    pub(crate) capture_output: bool,
    /// The largest frame either side accepts.
    pub(crate) max_frame: usize,
    /// How long its stop may take once its parent is gone.
    pub(crate) stop_grace: Duration,
}

/// What woke a parent up while it waited on its child.
#[derive(Debug)]
pub(crate) enum Event {
    /// A frame other than a hook mark (those arm and disarm the deadlines).
    Frame(Frame),
    /// A limit passed; the child is still running.
    Overrun(Overrun),
    /// End of file: the child exited, or was killed.
    Closed,
    /// The socket gave nonsense, or failed.
    Broken(Error),
    /// The other descriptor given to `next_event` became readable.
    Woken,
}

/// How to end a child.
#[derive(Debug, Clone, Copy)]
pub(crate) enum End {
    /// Kill it now, with its process group.
    Kill,
    /// It is exiting (or should: its socket is closed): give it `grace`,
    /// then kill it. `take_group` also ends what its hooks started.
    Exiting { grace: Duration, take_group: bool },
}

/// Where a child runs.
#[derive(Debug)]
enum Place {
    /// On this machine: its pidfd.
    Local(Arc<OwnedFd>),
    /// On another machine, a task of a cluster engine: all the parent has
    /// of it is the socket, whose end is the child's.
    Remote(std::net::TcpStream),
}

/// A running child.
#[derive(Debug)]
pub(crate) struct Child {
    /// Its pid (on its own machine, for a remote one).
    pid: u32,
    place: Place,
    /// `None` while lent (or once finished).
    reader: Option<Reader>,
    /// Where its reader is lent to listeners, if it is.
    shared: Option<Arc<Inbox>>,
    /// The reader is out, with `shared`.
    lent: bool,
    writer: Option<Writer>,
    status: Arc<SharedWords>,
    log: Arc<log::Forwarder>,
    capture: Option<log::Capture>,
    reaped: bool,
}

impl Child {
    /// Spawns a child for `role` and sends it what it needs to start.
    pub(crate) fn start(launch: &Launch<'_>, role: Role) -> Result<Child> {
        let status =
            Arc::new(SharedWords::new(c"skprocess-status", STATUS_WORDS).map_err(Error::Spawn)?);
        let s = spawn::spawn_child(SpawnOptions {
            capture_output: launch.capture_output,
        })?;
        let (pid, pidfd) = (s.pid, Arc::new(s.pidfd));
        let attached = Self::attach(launch, s.socket, s.stdout, s.stderr, pid, &pidfd, status);
        let mut child = match attached {
            Ok(c) => c,
            Err(e) => {
                kill_and_reap(pid, &pidfd);
                return Err(e);
            }
        };
        child.send_init(launch, role)?;
        Ok(child)
    }

    /// Starts forwarding the child's logs (to its log file too, if it has
    /// one) and splits its socket.
    fn attach(
        launch: &Launch<'_>,
        socket: OwnedFd,
        stdout: Option<OwnedFd>,
        stderr: Option<OwnedFd>,
        pid: u32,
        pidfd: &Arc<OwnedFd>,
        status: Arc<SharedWords>,
    ) -> Result<Child> {
        let log = launch.origin.forwarder(launch.label, pid, launch.log_dir)?;
        let (mut reader, writer) = wire::split(socket)?;
        reader.set_max_frame(launch.max_frame);
        let capture = log::Capture::start(log.clone(), stdout, stderr, pidfd.clone());
        Ok(Child {
            pid,
            place: Place::Local(pidfd.clone()),
            reader: Some(reader),
            shared: None,
            lent: false,
            writer: Some(writer),
            status,
            log,
            capture,
            reaped: false,
        })
    }

    /// Takes a worker started by a cluster engine, which connected back on
    /// `socket` (TCP) from pid `pid` of its machine, and sends it what it
    /// needs to start. Its status page stays here (it keeps its own):
    /// descriptors do not cross machines.
    pub(crate) fn connect(launch: &Launch<'_>, socket: OwnedFd, pid: u32) -> Result<Child> {
        let status =
            Arc::new(SharedWords::new(c"skprocess-status", STATUS_WORDS).map_err(Error::Spawn)?);
        let log = launch.origin.forwarder(launch.label, pid, launch.log_dir)?;
        let stream = std::net::TcpStream::from(socket.try_clone().map_err(Error::Io)?);
        let (mut reader, mut writer) = wire::split(socket)?;
        reader.set_max_frame(launch.max_frame);
        writer.set_remote();
        let mut child = Child {
            pid,
            place: Place::Remote(stream),
            reader: Some(reader),
            shared: None,
            lent: false,
            writer: Some(writer),
            status,
            log,
            capture: None,
            reaped: false,
        };
        child.send_init(launch, Role::Worker)?;
        Ok(child)
    }

    /// Whether it runs on another machine.
    pub(crate) fn is_remote(&self) -> bool {
        matches!(self.place, Place::Remote(_))
    }

    fn send_init(&mut self, launch: &Launch<'_>, role: Role) -> Result<()> {
        let remote = self.is_remote();
        let writer = self.writer();
        let setup = log::setup_payload(launch.origin, launch.log_dir.is_some());
        let mut fds = vec![self.status.fd().as_raw_fd()];
        if remote {
            fds.clear();
        }
        let (init, value) = match role {
            Role::Process {
                type_id,
                plan,
                value,
                report,
            } => {
                fds.push(report.fd().as_raw_fd());
                let init = Init::Process {
                    type_id: type_id.to_string(),
                    plan,
                    max_message: launch.max_frame as u64,
                    stop_grace: launch.stop_grace,
                    state: value.bytes,
                };
                (init, value.fds)
            }
            Role::Worker => (
                Init::Worker {
                    stop_grace: launch.stop_grace,
                },
                Vec::new(),
            ),
        };
        let bytes = postcard::to_allocvec(&init).map_err(|e| Error::Wire(e.to_string()))?;
        fds.extend(value.iter().map(AsRawFd::as_raw_fd));
        // A child that died at once makes these fail; reading then sees end
        // of file and reports the crash with its exit status.
        let _ = writer
            .send(kind::LOG_SETUP, &setup, &[])
            .and_then(|()| writer.send(kind::INIT, &bytes, &fds));
        Ok(())
    }

    /// The child's pid.
    pub(crate) fn pid(&self) -> u32 {
        self.pid
    }

    /// The pidfd: readable once the child has ended. Only a local child
    /// has one (processes always are; only pool workers may be remote).
    pub(crate) fn pidfd(&self) -> &Arc<OwnedFd> {
        match &self.place {
            Place::Local(pidfd) => pidfd,
            Place::Remote(_) => unreachable!("a process handle's child runs on this machine"),
        }
    }

    /// The sending half of the control socket.
    pub(crate) fn writer(&self) -> &Writer {
        self.writer.as_ref().expect("the writer lives until finish")
    }

    /// The status page.
    pub(crate) fn status(&self) -> &Arc<SharedWords> {
        &self.status
    }

    /// The forwarder of its events.
    pub(crate) fn log(&self) -> &Arc<log::Forwarder> {
        &self.log
    }

    /// Where it is: the hook running and the iteration.
    pub(crate) fn position(&self) -> (Option<Hook>, Option<u64>) {
        proto::position(self.status.words())
    }

    /// Its hook timers so far.
    pub(crate) fn timers(&self) -> Timers {
        proto::status_timers(self.status.words())
    }

    /// Whether it has ended (without reading anything).
    pub(crate) fn has_exited(&self) -> bool {
        match &self.place {
            Place::Local(pidfd) => {
                sys::sock::wait_readable(pidfd.as_fd(), Some(Instant::now())).unwrap_or(true)
            }
            // Found out by reading: end of file.
            Place::Remote(_) => false,
        }
    }

    /// Has its reader taken in turns through `inbox`: a thread that
    /// listens there reads the child's socket itself (see
    /// [`inbox`](crate::inbox)). Only for a child read with no `wake` in
    /// [`next_event`](Child::next_event).
    pub(crate) fn share_reader(&mut self, inbox: Arc<Inbox>) {
        self.shared = Some(inbox);
    }

    /// Waits for its next frame, a passed limit of `deadlines` (whose hook
    /// marks it consumes), or `wake` becoming readable.
    pub(crate) fn next_event(
        &mut self,
        mut deadlines: Option<&mut Deadlines>,
        wake: Option<BorrowedFd<'_>>,
    ) -> Event {
        let vitals = ChildVitals {
            pid: matches!(self.place, Place::Local(_)).then_some(self.pid),
            status: &self.status,
        };
        let kick = self.shared.as_deref().and_then(Inbox::kick);
        loop {
            // Checked before every read, so a child that sends without
            // pause cannot hold its deadline off.
            let now = Instant::now();
            if let Some(o) = deadlines.as_mut().and_then(|d| d.overrun(now, &vitals)) {
                return Event::Overrun(o);
            }
            let until = deadlines.as_ref().and_then(|d| d.next());
            let held = match (self.reader.as_mut(), self.shared.as_deref()) {
                (Some(reader), _) => inbox::next(reader, kick, until, wake),
                (None, Some(shared)) if self.lent => match shared.reclaim(until) {
                    Reclaimed::Reader(r) => {
                        self.reader = Some(r);
                        self.lent = false;
                        continue;
                    }
                    Reclaimed::Passed(f) => Held::Frame(f),
                    Reclaimed::Timeout => continue,
                },
                (None, _) => return Event::Closed,
            };
            match held {
                Held::Frame(f) => {
                    if deadlines.as_mut().is_some_and(|d| d.on_frame(&f)) {
                        continue;
                    }
                    return Event::Frame(f);
                }
                Held::Kicked => {
                    let (Some(shared), Some(reader)) = (self.shared.as_deref(), self.reader.take())
                    else {
                        continue;
                    };
                    match shared.offer(reader) {
                        Ok(()) => self.lent = true,
                        Err(r) => self.reader = Some(r),
                    }
                }
                Held::Woken => return Event::Woken,
                Held::Timeout => {}
                Held::Failed(Error::Disconnected) => return Event::Closed,
                Held::Failed(e) => return Event::Broken(e),
            }
        }
    }

    /// Takes its reader back from a listener, if lent.
    fn take_back_reader(&mut self) {
        if std::mem::take(&mut self.lent) {
            self.reader = self.shared.as_deref().and_then(Inbox::recall_now);
        }
    }

    /// Sends SIGKILL to it and its process group, without reaping (so the
    /// group's id cannot name anyone else yet). Safe to call from any
    /// thread holding the pidfd: see [`kill_child`].
    pub(crate) fn kill(&self) {
        match &self.place {
            Place::Local(pidfd) => kill_child(self.pid, pidfd),
            // A remote worker exits when its connection ends, whatever it
            // is doing (its control thread sees end of file).
            Place::Remote(s) => {
                let _ = s.shutdown(std::net::Shutdown::Both);
            }
        }
    }

    /// Ends it as `how` says, reaps it, and waits for its captured output.
    /// Returns how it ended.
    pub(crate) fn finish(mut self, how: End) -> std::io::Result<ExitStatus> {
        self.take_back_reader();
        self.reader = None;
        self.writer = None;
        let pidfd = match &self.place {
            Place::Local(pidfd) => pidfd.clone(),
            Place::Remote(_) => {
                self.kill();
                self.reaped = true;
                // Its engine reaps it; its exit status stays there.
                return Err(std::io::Error::new(
                    std::io::ErrorKind::NotConnected,
                    "closed its connection (it ran on another machine: its exit status is the \
                     cluster engine's)",
                ));
            }
        };
        let status = match how {
            End::Kill => {
                self.kill();
                sys::proc::wait(self.pid)
            }
            End::Exiting { grace, take_group } => {
                let deadline = Instant::now().checked_add(grace);
                let exited = sys::sock::wait_readable(pidfd.as_fd(), deadline).unwrap_or(false);
                if !exited {
                    self.kill();
                } else if take_group {
                    let _ = sys::proc::kill_group(self.pid, libc::SIGKILL);
                }
                sys::proc::wait(self.pid)
            }
        };
        self.reaped = true;
        if let Some(c) = self.capture.take() {
            c.finish();
        }
        status
    }
}

/// What the deadlines read of a running child.
struct ChildVitals<'a> {
    /// `None` for a child on another machine.
    pid: Option<u32>,
    status: &'a SharedWords,
}

impl Vitals for ChildVitals<'_> {
    fn beat(&self) -> u64 {
        self.status.words()[STATUS_BEAT].load(std::sync::atomic::Ordering::Relaxed)
    }

    fn resident(&self) -> Option<u64> {
        sys::proc::resident_bytes(self.pid?)
    }
}

impl Child {
    /// What the deadlines read of it.
    pub(crate) fn vitals(&self) -> impl Vitals + '_ {
        ChildVitals {
            pid: (!self.is_remote()).then_some(self.pid),
            status: &self.status,
        }
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        self.take_back_reader();
        if !self.reaped {
            self.kill();
            if self.is_remote() {
                return;
            }
            let _ = sys::proc::wait(self.pid);
            if let Some(c) = self.capture.take() {
                c.finish();
            }
        }
    }
}

/// SIGKILL to a child and then to its process group. The pidfd names the
/// child race-free; the group id is the child's pid, which stays reserved
/// until the child is reaped, and only the thread that owns the `Child`
/// reaps it.
pub(crate) fn kill_child(pid: u32, pidfd: &OwnedFd) {
    let _ = sys::proc::pidfd_signal(pidfd, libc::SIGKILL);
    let _ = sys::proc::kill_group(pid, libc::SIGKILL);
}

/// Kills a child that never became a [`Child`], and reaps it.
fn kill_and_reap(pid: u32, pidfd: &OwnedFd) {
    kill_child(pid, pidfd);
    let _ = sys::proc::wait(pid);
}

/// How a child ended, in words: `exited with code 3`, `was killed by
/// signal 9 (SIGKILL)`, or what one of skprocess's own exit codes means.
pub(crate) fn describe(status: &std::io::Result<ExitStatus>) -> String {
    match status {
        Ok(ExitStatus::Code(c)) => match Exit::from_code(*c) {
            Some(Exit::Clean | Exit::Reported) | None => {
                format!("exited with code {c} before sending its result")
            }
            Some(e) => format!("{} (exit code {c})", e.describe()),
        },
        Ok(s) => s.to_string(),
        Err(e) if e.kind() == std::io::ErrorKind::NotConnected => e.to_string(),
        Err(e) => format!("could not be reaped: {e}"),
    }
}
