//! The child's end of its control channel, and the thread that reads it.
//!
//! The control thread reads every frame the parent sends: a `tell` goes to
//! the inbox that [`Ctx::listen`](crate::Ctx::listen) reads, a stop request
//! sets a flag the lifecycle checks between iterations, and pool tasks go to
//! the worker loop. End of file means the parent is gone: nobody is left to
//! report to, so the child ends at once, with everything its hooks started
//! (its process group), whatever the hooks are doing.

use crate::error::{Error, Result};
use crate::proto::{kind, Exit};
use crate::stats::Counters;
use crate::sys;
use crate::wire::{Frame, Reader, Writer};
use crossbeam_channel::{Receiver, Sender};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// The child's end of its control channel.
#[derive(Debug)]
pub(crate) struct Link {
    pub(crate) writer: Writer,
    /// User messages from the parent.
    pub(crate) inbox: Receiver<Frame>,
    /// Pool tasks (for a worker).
    pub(crate) others: Receiver<Frame>,
    /// The parent asked for a stop.
    pub(crate) stop: AtomicBool,
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
            max_message,
            counters: Counters::default(),
        });
        let l = link.clone();
        std::thread::Builder::new()
            .name("skprocess-control".into())
            .stack_size(256 * 1024)
            .spawn(move || control(reader, &inbox_tx, &others_tx, &l))
            .map_err(Error::Io)?;
        Ok(link)
    }
}

fn control(mut reader: Reader, inbox: &Sender<Frame>, others: &Sender<Frame>, link: &Link) {
    loop {
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
            // The parent is gone: end now, with what the hooks started.
            Err(Error::Disconnected) => end_group(Exit::Clean),
            Err(e) => {
                eprintln!("skprocess child {}: {e}", sys::proc::getpid());
                end_group(Exit::ControlBroken)
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
