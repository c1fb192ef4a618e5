//! One writer and one reader per ring, across processes.
//!
//! A ring has one producer and one consumer, each keeping its position in
//! private state. An end that was copied (sent to a process while kept, or
//! serialized twice) would give two processes the same side, and their
//! positions would clash. So each side of a ring has a claim word in the
//! shared memory: the process id of the end that uses that side, and a
//! number that tells that end apart from the others of its process. An end
//! claims its side the first time it uses it, and may take it over when the
//! word is free (its holder was dropped) or its holder's process has ended
//! (an earlier life of a process); otherwise the use is refused with an
//! error that names the holder. A dropped end gives its claim back.

use crate::error::{Error, Result};
use crate::sys;
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Instant;

/// Which side of a ring a claim is for.
#[derive(Debug, Clone, Copy)]
pub(super) enum Side {
    Send,
    Receive,
}

/// A claim unique to one end in the whole machine while its process lives:
/// the process id, then a count of the ends this process has made.
pub(super) fn new_id() -> u64 {
    static NEXT: AtomicU32 = AtomicU32::new(1);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    (u64::from(sys::proc::getpid()) << 32) | u64::from(n)
}

fn pid_of(id: u64) -> u32 {
    (id >> 32) as u32
}

/// Makes `word` hold `me`: takes it if free or if its holder has ended.
pub(super) fn acquire(word: &AtomicU64, me: u64, side: Side) -> Result<()> {
    loop {
        let held = word.load(Ordering::Acquire);
        if held == me {
            return Ok(());
        }
        if held != 0 && alive(pid_of(held)) {
            return Err(in_use(held, side));
        }
        if word
            .compare_exchange(held, me, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            return Ok(());
        }
    }
}

/// Checks that `me` still holds `word` (cheap: one load).
pub(super) fn check(word: &AtomicU64, me: u64, side: Side) -> Result<()> {
    match word.load(Ordering::Relaxed) {
        held if held == me => Ok(()),
        held => Err(in_use(held, side)),
    }
}

/// Gives `word` back if `me` holds it.
pub(super) fn release(word: &AtomicU64, me: u64) {
    let _ = word.compare_exchange(me, 0, Ordering::Release, Ordering::Relaxed);
}

fn in_use(held: u64, side: Side) -> Error {
    let (verb, what) = match side {
        Side::Send => ("sending", "send"),
        Side::Receive => ("receiving", "receive"),
    };
    let who = match pid_of(held) {
        pid if pid == sys::proc::getpid() => "another end in this process".to_string(),
        pid => format!("process {pid}"),
    };
    Error::usage(format!(
        "this pipe end cannot {what}: {who} is {verb} through a copy of it. A pipe end \
         is used by one process at a time; was it sent to a process while still in use \
         here (with `tell`, or as a field of more than one process)?"
    ))
}

/// Whether process `pid` is running. An end of this very process is alive
/// (it gives its claim back when dropped); a process that cannot be looked
/// at is taken to be alive, which refuses the use rather than risk two
/// writers.
fn alive(pid: u32) -> bool {
    if pid == sys::proc::getpid() {
        return true;
    }
    match sys::proc::pidfd_open(pid) {
        Err(e) => e.raw_os_error() != Some(libc::ESRCH),
        // A pidfd is readable once its process has ended (a zombie too).
        Ok(fd) => !sys::sock::poll(&[fd.as_fd()], Some(Instant::now()))
            .map(|r| r[0].readable)
            .unwrap_or(false),
    }
}
