//! The child's end of its control channel, and the thread that reads it.
//!
//! The control thread reads every frame the parent sends: a `tell` goes to
//! the inbox that [`Ctx::listen`](crate::Ctx::listen) reads, a stop request
//! sets a flag the lifecycle checks between iterations, and pool tasks go to
//! the worker loop.
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

/// What a stop may take beyond `stop_grace` once the parent is gone.
const PARENT_GONE_SLACK: Duration = Duration::from_secs(1);

/// The child's end of its control channel.
#[derive(Debug)]
pub(crate) struct Link {
    pub(crate) writer: Writer,
    /// User messages from the parent.
    pub(crate) inbox: Receiver<Frame>,
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
        let (inbox_tx, inbox) = crossbeam_channel::unbounded();
        let (others_tx, others) = crossbeam_channel::unbounded();
        for f in early.tells {
            let _ = inbox_tx.send(f);
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
                control(reader, &inbox_tx, &others_tx, &l);
                // The parent is gone. Closing the channels tells `listen`
                // and a pool worker's loop; then the stop gets its time.
                drop((inbox_tx, others_tx));
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
        self.parent_gone.load(Ordering::Relaxed)
    }

    /// The parent is gone: stop, and end the process group if the stop has
    /// not ended the process after `stop_grace` plus a second. Blocks the
    /// calling thread until then.
    pub(crate) fn parent_lost(&self) -> ! {
        self.parent_gone.store(true, Ordering::Relaxed);
        self.request_stop();
        std::thread::sleep(self.stop_grace.saturating_add(PARENT_GONE_SLACK));
        end_group(Exit::Clean)
    }
}

/// Reads the parent's frames until end of file (returns) or nonsense (ends
/// the process).
fn control(mut reader: Reader, inbox: &Sender<Frame>, others: &Sender<Frame>, link: &Link) {
    loop {
        match reader.read(None) {
            Ok(Some(f)) => match f.kind {
                kind::TELL => {
                    let _ = inbox.send(f);
                }
                kind::STOP => link.request_stop(),
                _ => {
                    let _ = others.send(f);
                }
            },
            Ok(None) => {}
            Err(Error::Disconnected) => return,
            Err(e) => {
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
