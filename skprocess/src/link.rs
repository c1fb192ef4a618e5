//! The child's end of its control channel, and the thread that reads it.
//!
//! The control thread reads every frame the parent sends while no hook
//! listens: a `tell` goes to the inbox that
//! [`Ctx::listen`](crate::Ctx::listen) reads, a stop request sets a flag the
//! lifecycle checks between iterations, and pool tasks go to the worker
//! loop. A hook that listens while the inbox is empty reads the socket
//! itself, by the same rules (see [`inbox`](crate::inbox)).
//!
//! End of file means the parent is gone. That is a stop, as `Handle::stop`
//! is: the current iteration finishes and `onfinish` runs. Then the child
//! ends with what its hooks started (its process group). Nobody is left to
//! wait for it, so the stop is bounded: after `stop_grace` plus one second
//! the control thread ends the group itself, even if a hook is stuck in C
//! code.
//!
//! The role dispatch (`child`) starts it; the lifecycle (`runtime`) and the
//! pool worker use it. It names neither, so neither reaches the other
//! through it.

use crate::error::{Error, Result};
use crate::inbox::{self, Held, Inbox, Reclaimed, Route};
use crate::proto::{kind, Exit};
use crate::stats::Counters;
use crate::sys;
use crate::wakers::{self, Wakers};
use crate::wire::{Frame, Reader, Writer};
use crossbeam_channel::{Receiver, Sender};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;
use std::time::Instant;

/// What a stop may take beyond `stop_grace` once the parent is gone.
const PARENT_GONE_SLACK: Duration = Duration::from_secs(1);

/// The child's end of its control channel.
#[derive(Debug)]
pub(crate) struct Link {
    pub(crate) writer: Writer,
    /// User messages from the parent, and the turns at reading them.
    pub(crate) inbox: Inbox,
    /// Pool tasks (for a worker).
    pub(crate) others: Receiver<Frame>,
    /// A stop was asked for: by the parent, a signal, or the parent's end.
    /// Set with [`Link::request_stop`].
    pub(crate) stop: AtomicBool,
    /// Tasks awaiting [`Ctx::stopped`](crate::Ctx::stopped).
    stop_wakers: Mutex<Wakers>,
    /// SIGTERM or SIGINT arrived.
    pub(crate) signalled: AtomicBool,
    /// The parent is gone.
    parent_gone: AtomicBool,
    /// How long a stop may take once the parent is gone.
    pub(crate) stop_grace: Duration,
    pub(crate) max_message: usize,
    pub(crate) counters: Counters,
}

/// What arrived before `INIT`: kept, never fatal.
#[derive(Debug, Default)]
pub(crate) struct Early {
    pub(crate) tells: Vec<Frame>,
    pub(crate) stop: bool,
    pub(crate) log_setup: Option<Vec<u8>>,
}

/// Reads frames until `INIT`, keeping the messages and the stop request
/// that came first. Ends the process if the parent is gone or speaks
/// nonsense.
pub(crate) fn read_init(reader: &mut Reader) -> (Frame, Early) {
    let mut early = Early::default();
    loop {
        match reader.read(None) {
            Ok(Some(f)) => match f.kind {
                kind::INIT => return (f, early),
                kind::LOG_SETUP => early.log_setup = Some(f.payload),
                kind::TELL => early.tells.push(f),
                kind::STOP => early.stop = true,
                _ => sys::proc::exit_now(Exit::ControlBroken.code()),
            },
            Ok(None) => {}
            // The parent went away before sending anything.
            Err(Error::Disconnected) => sys::proc::exit_now(Exit::Clean.code()),
            Err(_) => sys::proc::exit_now(Exit::ControlBroken.code()),
        }
    }
}

impl Link {
    /// Makes the link and starts its control thread, which from now on
    /// owns `reader`. Frames that came before `INIT` are delivered first.
    pub(crate) fn start(
        reader: Reader,
        writer: Writer,
        max_message: usize,
        stop_grace: Duration,
        early: Early,
    ) -> Result<Arc<Link>> {
        // Unbounded: the parent's `tell` is bounded by the socket alone.
        let inbox = Inbox::new(usize::MAX);
        let (others_tx, others) = crossbeam_channel::unbounded();
        for f in early.tells {
            inbox.push(f);
        }
        let link = Arc::new(Link {
            writer,
            inbox,
            others,
            stop: AtomicBool::new(early.stop),
            stop_wakers: Mutex::default(),
            signalled: AtomicBool::new(false),
            parent_gone: AtomicBool::new(false),
            stop_grace,
            max_message,
            counters: Counters::default(),
        });
        let l = link.clone();
        std::thread::Builder::new()
            .name("skprocess-control".into())
            .stack_size(256 * 1024)
            .spawn(move || {
                control(reader, &others_tx, &l);
                // The parent is gone. Closing the inbox and the channel
                // tells `listen` and a pool worker's loop; then the stop
                // gets its time.
                l.inbox.close();
                drop(others_tx);
                l.parent_lost();
            })
            .map_err(Error::Io)?;
        Ok(link)
    }

    /// Asks this process to stop, waking the tasks that await it.
    pub(crate) fn request_stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
        let w = self.wakers().take();
        wakers::wake(w);
    }

    fn wakers(&self) -> MutexGuard<'_, Wakers> {
        self.stop_wakers.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether a stop was asked for; if not, registers the task to be
    /// woken when one is.
    pub(crate) fn poll_stop(&self, cx: &mut Context<'_>) -> Poll<()> {
        if self.stop.load(Ordering::SeqCst) {
            return Poll::Ready(());
        }
        self.wakers().register(cx.waker());
        // A stop set between the check and the registration woke nobody.
        if self.stop.load(Ordering::SeqCst) {
            return Poll::Ready(());
        }
        Poll::Pending
    }

    /// Whether the parent is gone.
    pub(crate) fn is_parent_gone(&self) -> bool {
        self.parent_gone.load(Ordering::SeqCst)
    }

    /// The parent is gone: stop, and end the process group if the stop has
    /// not ended the process after `stop_grace` plus a second. Blocks the
    /// calling thread until then. The parent is marked gone before the
    /// stop is asked for: whoever sees the stop sees the mark.
    pub(crate) fn parent_lost(&self) -> ! {
        self.parent_gone.store(true, Ordering::SeqCst);
        self.request_stop();
        std::thread::sleep(self.stop_grace.saturating_add(PARENT_GONE_SLACK));
        end_group(Exit::Clean)
    }
}

/// Reads the parent's frames until end of file (returns) or nonsense (ends
/// the process), lending the reader to a hook that listens.
fn control(reader: Reader, others: &Sender<Frame>, link: &Link) {
    let mut reader = Some(reader);
    loop {
        let Some(r) = reader.as_mut() else {
            match link.inbox.reclaim(None) {
                Reclaimed::Reader(r) => reader = Some(r),
                Reclaimed::Passed(f) => link.route(f, others),
                Reclaimed::Timeout => {}
            }
            continue;
        };
        match inbox::next(r, link.inbox.kick(), None, None) {
            Held::Frame(f) => link.route(f, others),
            Held::Kicked => {
                if let Some(r) = reader.take() {
                    reader = link.inbox.offer(r).err();
                }
            }
            Held::Woken | Held::Timeout => {}
            Held::Failed(Error::Disconnected) => return,
            Held::Failed(e) => {
                eprintln!("skprocess child {}: {e}", sys::proc::getpid());
                // The parent is there (it wrote what broke): it sees this
                // exit and ends what the hooks started, as for any life
                // that ends without its result. Ending the group here
                // would end this process by the signal, not the exit code.
                sys::proc::exit_now(Exit::ControlBroken.code())
            }
        }
    }
}

impl Link {
    /// Where a frame goes: a message to the inbox, a stop to the flag,
    /// the rest (pool tasks) to the worker loop.
    fn route(&self, f: Frame, others: &Sender<Frame>) {
        match self.listener_route(f) {
            Route::Message(f) => self.inbox.push(f),
            Route::Handled => {}
            Route::Pass(f) => {
                let _ = others.send(f);
            }
        }
    }

    /// Where a frame read by a listening hook goes: a message is its own,
    /// a stop sets the flag, the rest is the control thread's.
    fn listener_route(&self, f: Frame) -> Route {
        match f.kind {
            kind::TELL => Route::Message(f),
            kind::STOP => {
                self.request_stop();
                Route::Handled
            }
            _ => Route::Pass(f),
        }
    }

    /// The next message from the parent, waiting until `deadline`: read
    /// from the socket by the calling thread when the control thread does
    /// not need it.
    pub(crate) fn listen(&self, deadline: Option<Instant>) -> Result<Option<Frame>> {
        self.inbox.listen(deadline, &mut |f| self.listener_route(f))
    }
}

/// Ends this process and its process group (what its hooks started and did
/// not detach) at once.
pub(crate) fn end_group(exit: Exit) -> ! {
    let me = sys::proc::getpid();
    // A spawned child leads its own group; if this one somehow does not,
    // there is no group of its own to end and the call does nothing.
    if sys::proc::getpgrp() == me {
        let _ = sys::proc::kill_group(me, libc::SIGKILL);
    }
    sys::proc::exit_now(exit.code())
}
