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
/// is not running (it may even need this processor). The budget learns from
/// how long recent waits took, whether they ended while spinning or asleep:
/// a wait that ended within [`SPIN_MAX`] (the peer answered soon, perhaps
/// only once woken from a sleep this side could have spun through) sets the
/// budget to twice its length, so the next one like it is caught spinning;
/// a longer one (an idle or descheduled peer) halves the budget, down to
/// nothing after a few, so a side whose peer is idle sleeps at once and
/// never spins more than [`SPIN_MAX`] per wait. A wait that gives up at its
/// deadline teaches nothing.
///
/// It also rate-limits the check for a dead peer (a `poll` system call) that
/// precedes each sleep: a busy ping-pong that sleeps every few microseconds
/// checks at most once per [`CHECK_PEER_EVERY`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct Spin {
    budget_ns: u32,
    /// When the current wait started, once it has spun and is to sleep.
    started: Option<Instant>,
    peer_checked: Option<Instant>,
}

/// The largest spin budget, and the longest wait that teaches spinning.
const SPIN_MAX: Duration = Duration::from_micros(50);
/// The smallest non-zero budget: below it, the budget drops to nothing.
const SPIN_MIN: Duration = Duration::from_micros(2);

impl Default for Spin {
    fn default() -> Self {
        Spin {
            budget_ns: (SPIN_MAX.as_nanos() / 2) as u32,
            started: None,
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

    /// Learns from a wait that lasted `took` and ended with the condition
    /// met.
    fn learn(&mut self, took: Duration) {
        self.budget_ns = if took <= SPIN_MAX {
            (took * 2).clamp(SPIN_MIN, SPIN_MAX).as_nanos() as u32
        } else if self.budget_ns / 2 < SPIN_MIN.as_nanos() as u32 {
            0
        } else {
            self.budget_ns / 2
        };
    }

    /// Spins while `ready()` is false, within the budget and `deadline`;
    /// `Ok(false)` if it still is. The caller then sleeps until `ready()`
    /// and calls [`slept`](Spin::slept), or gives up at its deadline.
    pub(crate) fn wait(
        &mut self,
        ready: &mut dyn FnMut() -> Result<bool>,
        deadline: Option<Instant>,
    ) -> Result<bool> {
        self.started = None;
        if ready()? {
            return Ok(true);
        }
        let start = Instant::now();
        self.started = Some(start);
        if deadline.is_some_and(|d| d <= start) {
            return Ok(false);
        }
        let budget = Duration::from_nanos(self.budget_ns as u64);
        let end = match deadline {
            Some(d) => d.min(start + budget),
            None => start + budget,
        };
        let mut i = 0u32;
        loop {
            std::hint::spin_loop();
            if ready()? {
                let took = start.elapsed();
                // Caught while spinning: keep at least the budget that did.
                let keep = self.budget_ns;
                self.learn(took);
                self.budget_ns = self.budget_ns.max(keep);
                self.started = None;
                return Ok(true);
            }
            i = i.wrapping_add(1);
            if i.is_multiple_of(32) && Instant::now() >= end {
                return Ok(false);
            }
        }
    }

    /// After [`wait`](Spin::wait) returned `Ok(false)`: the caller slept
    /// and the condition is now met; learns how long the whole wait took.
    pub(crate) fn slept(&mut self) {
        if let Some(start) = self.started.take() {
            self.learn(start.elapsed());
        }
    }
}

/// Waits until `ready()` or `deadline`: spins, then sleeps on `seq` with
/// the `waiting` flag raised. A waker clears the flag and wakes every
/// sleeper on `seq` (an end may have more than one, such as a blocking
/// receive and the watcher of its futures, see `pipe::watch`), so a burst
/// of publications wakes a sleeper with one system call, not one each; a
/// sleeper raises the flag again each time before it sleeps. `Ok(false)` on
/// timeout; `Err(Disconnected)` if the peer is gone and `ready()` is still
/// false.
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
        waiting.swap(1, Ordering::SeqCst);
        fence(Ordering::SeqCst);
        let r = (|| {
            if ready()? {
                spin.slept();
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
        match r {
            Ok(Some(v)) => return Ok(v),
            Ok(None) => {}
            Err(e) => return Err(e),
        }
    }
}

/// Bumps `seq` and wakes its sleepers if the `waiting` flag is raised,
/// lowering it. Call after publishing a position.
pub(super) fn notify(seq: &AtomicU32, waiting: &AtomicU32) {
    fence(Ordering::SeqCst);
    // The swap, an atomic write, only when there is a flag to lower: the
    // flag's cache line stays shared while nobody sleeps.
    if waiting.load(Ordering::Relaxed) != 0 && waiting.swap(0, Ordering::SeqCst) != 0 {
        interrupt(seq);
    }
}

/// Bumps `seq` and wakes every sleeper on it, whatever it waits for: each
/// checks its condition again.
pub(super) fn interrupt(seq: &AtomicU32) {
    seq.fetch_add(1, Ordering::SeqCst);
    let _ = futex::wake(seq, u32::MAX);
}
