//! How a side waits for the other: spin with an adaptive budget ([`Spin`]),
//! then sleep on a futex word in slices, checking between slices that the
//! peer is still there.

use crate::error::{Error, Result};
use crate::sys::{self, futex};
use std::os::fd::BorrowedFd;
use std::sync::atomic::{fence, AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// Longest futex sleep between two checks for a dead peer.
const SLICE: Duration = Duration::from_millis(100);
/// Least time between two checks for a dead peer before sleeping.
const CHECK_PEER_EVERY: Duration = Duration::from_millis(1);

/// Whether the peer's socket is gone (the kernel hung ours up).
pub(super) fn peer_gone(sock: BorrowedFd<'_>) -> Result<bool> {
    let r = sys::sock::poll(&[sock], Some(Instant::now())).map_err(Error::Io)?;
    Ok(r[0].hangup)
}

/// An adaptive spin budget: how long a side spins before it sleeps.
///
/// Spinning pays when the peer runs on another processor and answers within
/// microseconds (no system call, no wake-up latency); it costs when the peer
/// is not running (it may even need this processor). So the budget doubles
/// (up to [`SPIN_MAX`]) each time a spin sees the peer's answer, and halves
/// each time it does not; at zero, one wait in [`PROBE_EVERY`] spins
/// briefly to find out whether spinning pays again.
///
/// It also rate-limits the check for a dead peer (a `poll` system call) that
/// precedes each sleep: a busy ping-pong that sleeps every few microseconds
/// checks at most once per [`CHECK_PEER_EVERY`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct Spin {
    budget_ns: u32,
    waits: u32,
    peer_checked: Option<Instant>,
}

/// The largest spin budget.
const SPIN_MAX: Duration = Duration::from_micros(20);
/// The budget of a probe, and the smallest non-zero budget: longer than a
/// futex wake-up takes, so that a probe sees a peer that was asleep answer
/// (after which the peer, probing in turn, sees this side answer at once).
const SPIN_PROBE: Duration = Duration::from_micros(10);
/// At a zero budget, how often a wait probes.
const PROBE_EVERY: u32 = 64;

impl Default for Spin {
    fn default() -> Self {
        Spin {
            budget_ns: SPIN_MAX.as_nanos() as u32,
            waits: 0,
            peer_checked: None,
        }
    }
}

impl Spin {
    /// Whether it is time to check for a dead peer again (and, if so,
    /// records that the check is made now).
    pub(super) fn should_check_peer(&mut self) -> bool {
        let now = Instant::now();
        match self.peer_checked {
            Some(t) if now.saturating_duration_since(t) < CHECK_PEER_EVERY => false,
            _ => {
                self.peer_checked = Some(now);
                true
            }
        }
    }

    /// Spins while `ready()` is false, within the budget and `deadline`;
    /// `Ok(false)` if it still is.
    pub(crate) fn wait(
        &mut self,
        ready: &mut dyn FnMut() -> Result<bool>,
        deadline: Option<Instant>,
    ) -> Result<bool> {
        if ready()? {
            return Ok(true);
        }
        self.waits = self.waits.wrapping_add(1);
        let budget = match self.budget_ns {
            0 if self.waits.is_multiple_of(PROBE_EVERY) => SPIN_PROBE,
            0 => return Ok(false),
            ns => Duration::from_nanos(ns as u64),
        };
        let start = Instant::now();
        let end = match deadline {
            Some(d) => d.min(start + budget),
            None => start + budget,
        };
        let mut i = 0u32;
        loop {
            std::hint::spin_loop();
            if ready()? {
                let grown = (budget * 2).clamp(SPIN_PROBE, SPIN_MAX);
                self.budget_ns = grown.as_nanos() as u32;
                return Ok(true);
            }
            i = i.wrapping_add(1);
            if i.is_multiple_of(32) && Instant::now() >= end {
                let halved = self.budget_ns / 2;
                self.budget_ns = if halved < SPIN_PROBE.as_nanos() as u32 / 2 {
                    0
                } else {
                    halved
                };
                return Ok(false);
            }
        }
    }
}

/// Waits until `ready()` or `deadline`: spins, then sleeps on `seq`,
/// counted in `waiting` (a count, not a flag: an end may have more than one
/// sleeper, such as a blocking receive and the watcher of its futures, see
/// `pipe::watch`, and one waking must not hide the other). `Ok(false)` on timeout; `Err(Disconnected)` if the peer
/// is gone and `ready()` is still false.
pub(super) fn wait_until(
    spin: &mut Spin,
    ready: &mut dyn FnMut() -> Result<bool>,
    seq: &AtomicU32,
    waiting: &AtomicU32,
    sock: BorrowedFd<'_>,
    deadline: Option<Instant>,
) -> Result<bool> {
    if spin.wait(ready, deadline)? {
        return Ok(true);
    }
    loop {
        let s = seq.load(Ordering::SeqCst);
        waiting.fetch_add(1, Ordering::SeqCst);
        fence(Ordering::SeqCst);
        let r = (|| {
            if ready()? {
                return Ok(Some(true));
            }
            let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
            // A dead peer is reported rather than a timeout, so check before
            // giving up too.
            let timed_out = left.is_some_and(|l| l.is_zero());
            if (timed_out || spin.should_check_peer()) && peer_gone(sock)? {
                // Whatever the peer published before it went is readable.
                return if ready()? {
                    Ok(Some(true))
                } else {
                    Err(Error::Disconnected)
                };
            }
            if timed_out {
                return Ok(Some(false));
            }
            let slice = left.map_or(SLICE, |l| l.min(SLICE));
            futex::wait(seq, s, Some(slice)).map_err(Error::Io)?;
            Ok(None)
        })();
        waiting.fetch_sub(1, Ordering::Relaxed);
        match r {
            Ok(Some(v)) => return Ok(v),
            Ok(None) => {}
            Err(e) => return Err(e),
        }
    }
}

/// Bumps `seq` and wakes its sleepers if `waiting` counts any. Call after
/// publishing a position.
pub(super) fn notify(seq: &AtomicU32, waiting: &AtomicU32) {
    fence(Ordering::SeqCst);
    if waiting.load(Ordering::Relaxed) != 0 {
        interrupt(seq);
    }
}

/// Bumps `seq` and wakes every sleeper on it, whatever it waits for: each
/// checks its condition again.
pub(super) fn interrupt(seq: &AtomicU32) {
    seq.fetch_add(1, Ordering::SeqCst);
    let _ = futex::wake(seq, u32::MAX);
}
