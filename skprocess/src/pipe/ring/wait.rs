//! How a side waits for the other: spin with an adaptive budget ([`Spin`]),
//! then sleep on a futex word in slices, checking between slices that the
//! peer is still there.

use crate::error::{Error, Result};
use crate::sys::{self, futex};
use std::os::fd::BorrowedFd;
use std::sync::atomic::{fence, AtomicU32, AtomicU64, Ordering};
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
/// is not running (it may even need this processor). So the budget learns
/// from how recent waits went:
///
/// - a wait caught while spinning keeps the budget, raised to twice the
///   wait if that is more;
/// - a spin that missed halves the budget (to nothing below [`SPIN_MIN`]);
///   a miss followed by an answer soon after the sleep began is counted as
///   a strike: the peer may have needed this processor;
/// - a wait that did not spin (a zero budget) and was answered within
///   [`SPIN_MAX`] shows that spinning would have caught it (the peer was
///   asleep, say, and answered once woken): the budget becomes twice its
///   length, but only every `2^strikes` such waits, so that a peer that
///   shares this processor is not spun against on every wait.
///
/// A wait on a peer that has work queued and is awake (a producer facing a
/// full ring whose consumer is not asleep, see [`busy_peer`](Spin::busy_peer))
/// is different: the room comes as fast as the peer works through its
/// backlog, and a sleep would cost the peer a system call to wake this side
/// for every slice of room. Such a wait spins up to [`BUSY_SPIN`] whatever
/// the budget, and teaches the budget of other waits nothing. Its misses
/// back off: after `k` misses in a row, the next `2^k - 1` such waits (up
/// to `2^MAX_STRIKES - 1`) go by the budget instead, so a peer that shares
/// this processor, or has stopped reading, is rarely spun against.
///
/// A wait that gives up at its deadline teaches nothing. A side whose peer
/// is idle spins at most once per wait, never more than [`SPIN_MAX`] (or
/// [`BUSY_SPIN`]), and soon not at all: it sleeps on the futex.
///
/// It also rate-limits the check for a dead peer (a `poll` system call) made
/// before each sleep and before a wait gives up: a busy ping-pong that
/// sleeps every few microseconds, or a loop of `try_recv`, checks at most
/// once per [`CHECK_PEER_EVERY`]; a peer found gone is remembered.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Spin {
    budget_ns: u32,
    /// When the current wait started, once it has spun and is to sleep, and
    /// how it spun.
    started: Option<(Instant, Spun)>,
    /// The next wait is on a busy peer (see [`busy_peer`](Spin::busy_peer)).
    busy: bool,
    /// Misses in a row of waits on a busy peer, and how many such waits
    /// are still to go by the budget.
    busy_misses: u32,
    busy_skip: u32,
    /// Misses in a row that looked like a peer sharing this processor.
    strikes: u32,
    /// Short waits without spinning since the budget was last raised.
    short_waits: u32,
    peer_checked: Option<Instant>,
    /// The peer was found gone (for good: a hung-up socket stays so).
    peer_gone: bool,
}

/// The largest spin budget, and the longest wait that teaches spinning.
const SPIN_MAX: Duration = Duration::from_micros(50);
/// How long a wait on a busy peer spins (see [`Spin::busy_peer`]): a reader
/// with a backlog hands room back as it copies, and between two messages it
/// decodes the one it read, which takes tens of microseconds for a
/// mebibyte.
const BUSY_SPIN: Duration = Duration::from_micros(200);
/// The smallest non-zero budget: below it, the budget drops to nothing.
const SPIN_MIN: Duration = Duration::from_micros(2);
/// Looks at the condition between two looks at the clock.
const ROUND: u32 = 32;
/// Pauses between two looks at the condition. Each look pulls the cache
/// line the other side writes; looking less often leaves it with the
/// writer, which then stores without waiting for it. On the machine the
/// benches ran on, 8 raised the one-way rate of small messages by a
/// quarter and left the round trip as it was (`benches/messaging.rs`).
const PAUSES: u32 = 8;
/// At most this many strikes count (a raise every 64 short waits).
const MAX_STRIKES: u32 = 6;

/// How a wait that is to sleep spun first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Spun {
    /// Not at all (no budget, or its deadline had passed).
    No,
    /// Within the learnt budget.
    Learnt,
    /// For [`BUSY_SPIN`], on a busy peer.
    Busy,
}

impl Default for Spin {
    fn default() -> Self {
        Spin {
            budget_ns: (SPIN_MAX.as_nanos() / 2) as u32,
            started: None,
            busy: false,
            busy_misses: 0,
            busy_skip: 0,
            strikes: 0,
            short_waits: 0,
            peer_checked: None,
            peer_gone: false,
        }
    }
}

fn ns(d: Duration) -> u32 {
    d.as_nanos().min(u32::MAX as u128) as u32
}

impl Spin {
    /// Whether the peer is gone: looked up at most once per
    /// [`CHECK_PEER_EVERY`] (a `poll` system call), remembered once seen.
    fn peer_gone(&mut self, sock: BorrowedFd<'_>) -> Result<bool> {
        if self.peer_gone {
            return Ok(true);
        }
        let now = Instant::now();
        if self
            .peer_checked
            .is_some_and(|t| now.saturating_duration_since(t) < CHECK_PEER_EVERY)
        {
            return Ok(false);
        }
        self.peer_checked = Some(now);
        self.peer_gone = peer_gone(sock)?;
        Ok(self.peer_gone)
    }

    /// Says whether the next wait is on a peer that has work queued and is
    /// awake: it then spins for [`BUSY_SPIN`], unless recent such waits
    /// missed.
    pub(crate) fn busy_peer(&mut self, busy: bool) -> &mut Spin {
        self.busy = busy;
        self
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
        let mut busy = std::mem::take(&mut self.busy);
        if busy && self.busy_skip > 0 {
            self.busy_skip -= 1;
            busy = false;
        }
        if ready()? {
            return Ok(true);
        }
        let (budget, spun) = if busy {
            (BUSY_SPIN, Spun::Busy)
        } else {
            (Duration::from_nanos(self.budget_ns as u64), Spun::Learnt)
        };
        if budget.is_zero() || deadline.is_some() {
            let now = Instant::now();
            if budget.is_zero() || deadline.is_some_and(|d| d <= now) {
                self.started = Some((now, Spun::No));
                return Ok(false);
            }
        }
        // The clock is first read after a round of spins, so a wait caught
        // at once (a peer on another processor, answering) costs no clock
        // read: it took less than the round, which teaches the budget
        // nothing. The budget counts from that first read.
        let mut clock: Option<(Instant, Instant)> = None;
        let mut i = 0u32;
        loop {
            for _ in 0..PAUSES {
                std::hint::spin_loop();
            }
            if ready()? {
                match (clock, busy) {
                    (_, true) => self.busy_misses = 0,
                    (Some((start, _)), false) => {
                        let took = start.elapsed();
                        self.budget_ns = self.budget_ns.max(ns((took * 2).min(SPIN_MAX)));
                    }
                    (None, false) => {}
                }
                self.strikes = 0;
                self.started = None;
                return Ok(true);
            }
            i = i.wrapping_add(1);
            if i.is_multiple_of(ROUND) {
                let now = Instant::now();
                match clock {
                    None => {
                        let end = now + budget;
                        clock = Some((now, deadline.map_or(end, |d| d.min(end))));
                    }
                    Some((start, end)) if now >= end => {
                        if busy {
                            self.busy_misses = (self.busy_misses + 1).min(MAX_STRIKES);
                            self.busy_skip = (1 << self.busy_misses) - 1;
                        }
                        self.started = Some((start, spun));
                        return Ok(false);
                    }
                    Some(_) => {}
                }
            }
        }
    }

    /// After [`wait`](Spin::wait) returned `Ok(false)`: the caller slept
    /// and the condition is now met; learns from how long the wait took.
    pub(crate) fn slept(&mut self) {
        let Some((start, spun)) = self.started.take() else {
            return;
        };
        let took = start.elapsed();
        match spun {
            // Its miss was counted when it happened (see `busy_skip`).
            Spun::Busy => {}
            Spun::Learnt => {
                let half = self.budget_ns / 2;
                self.budget_ns = if half < ns(SPIN_MIN) { 0 } else { half };
                if took <= SPIN_MAX {
                    self.strikes = (self.strikes + 1).min(MAX_STRIKES);
                }
                self.short_waits = 0;
            }
            Spun::No if took <= SPIN_MAX => {
                self.short_waits += 1;
                if self.short_waits >= 1 << self.strikes {
                    self.short_waits = 0;
                    self.budget_ns = ns((took * 2).clamp(SPIN_MIN, SPIN_MAX));
                }
            }
            Spun::No => {}
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
        let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
        let timed_out = left.is_some_and(|l| l.is_zero());
        // A wait that will not sleep (a poll, or one at its deadline)
        // raises no flag: the other side would make a system call to wake
        // a sleeper that is not there.
        if !timed_out {
            waiting.swap(1, Ordering::SeqCst);
            fence(Ordering::SeqCst);
        }
        let r = (|| {
            if ready()? {
                spin.slept();
                return Ok(Some(true));
            }
            // A dead peer is reported rather than a timeout, so check
            // before giving up too (see `Spin::peer_gone`).
            if spin.peer_gone(sock)? {
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

/// Stores `value` in the position `word` and wakes the other side if it
/// sleeps, as [`notify`] does after a store. The store is a swap: a
/// sequentially consistent read-modify-write, followed by a sequentially
/// consistent read of the flag, orders the two as the fence does (the
/// sleeper raises its flag, then fences, then reads the position), at the
/// cost of one locked instruction instead of a store and a full fence.
pub(super) fn advance(word: &AtomicU64, value: u64, seq: &AtomicU32, waiting: &AtomicU32) {
    word.swap(value, Ordering::SeqCst);
    if waiting.load(Ordering::SeqCst) != 0 && waiting.swap(0, Ordering::SeqCst) != 0 {
        interrupt(seq);
    }
}

/// Bumps `seq` and wakes every sleeper on it, whatever it waits for: each
/// checks its condition again.
pub(super) fn interrupt(seq: &AtomicU32) {
    seq.fetch_add(1, Ordering::SeqCst);
    let _ = futex::wake(seq, u32::MAX);
}

#[cfg(test)]
mod test {
    use super::*;

    #[test]
    fn a_side_whose_peer_never_answers_soon_stops_spinning() {
        let mut spin = Spin::default();
        let mut never = || Ok(false);
        // Every spin misses and halves the budget, down to nothing.
        for _ in 0..8 {
            if spin.budget_ns == 0 {
                break;
            }
            assert!(!spin.wait(&mut never, None).unwrap());
            // The caller slept; the condition is now met.
            spin.slept();
        }
        assert_eq!(spin.budget_ns, 0);
        // With no budget, a wait goes to sleep at once.
        assert!(!spin.wait(&mut never, None).unwrap());
        assert_eq!(spin.started.map(|(_, spun)| spun), Some(Spun::No));
    }

    /// A spin with no budget left: every wait misses until it is nothing.
    fn spent() -> Spin {
        let mut spin = Spin::default();
        let mut never = || Ok(false);
        while spin.budget_ns != 0 {
            assert!(!spin.wait(&mut never, None).unwrap());
            spin.slept();
        }
        spin
    }

    /// A condition met at its `n`th look, before the spin's first look at
    /// the clock: what it catches does not depend on how fast it runs.
    fn at_look(n: u32) -> impl FnMut() -> Result<bool> {
        assert!(n < ROUND);
        let mut looks = 0;
        move || {
            looks += 1;
            Ok(looks >= n)
        }
    }

    #[test]
    fn a_wait_on_a_busy_peer_spins_though_the_budget_is_spent() {
        let mut spin = spent();
        // An ordinary wait does not spin: one look, then it would sleep.
        assert!(!spin.wait(&mut at_look(20), None).unwrap());
        assert_eq!(spin.started.map(|(_, spun)| spun), Some(Spun::No));
        // On a busy peer it spins, and catches the answer.
        assert!(spin.busy_peer(true).wait(&mut at_look(20), None).unwrap());
        // That taught the budget of ordinary waits nothing.
        assert_eq!(spin.budget_ns, 0);
        // The mark is for one wait only.
        assert!(!spin.wait(&mut at_look(20), None).unwrap());
    }

    #[test]
    fn waits_on_a_busy_peer_that_miss_back_off() {
        let mut spin = spent();
        let mut never = || Ok(false);
        let mut busy_wait = |spin: &mut Spin| {
            assert!(!spin.busy_peer(true).wait(&mut never, None).unwrap());
            let spun = spin.started.map(|(_, spun)| spun);
            spin.slept();
            spun
        };
        // Miss, skip 1, miss, skip 3, miss, skip 7.
        let mut seen = Vec::new();
        for _ in 0..15 {
            seen.push(busy_wait(&mut spin) == Some(Spun::Busy));
        }
        let busy: Vec<usize> = (0..15).filter(|&i| seen[i]).collect();
        assert_eq!(busy, [0, 2, 6, 14]);
        // A caught one ends the back-off.
        while spin.busy_skip > 0 {
            busy_wait(&mut spin);
        }
        assert!(spin.busy_peer(true).wait(&mut at_look(20), None).unwrap());
        assert_eq!(busy_wait(&mut spin), Some(Spun::Busy));
        // (A skipped wait goes by the budget: no spin, or a learnt one.)
        assert_ne!(busy_wait(&mut spin), Some(Spun::Busy));
        assert_eq!(busy_wait(&mut spin), Some(Spun::Busy));
    }

    #[test]
    fn a_wait_caught_while_spinning_keeps_the_budget() {
        let mut spin = Spin::default();
        let before = spin.budget_ns;
        let mut n = 0;
        let mut soon = || {
            n += 1;
            Ok(n > 3)
        };
        assert!(spin.wait(&mut soon, None).unwrap());
        assert!(spin.budget_ns >= before);
    }

    #[test]
    fn a_deadline_that_has_passed_does_not_spin() {
        let mut spin = Spin::default();
        let mut never = || Ok(false);
        assert!(!spin.wait(&mut never, Some(Instant::now())).unwrap());
        assert_eq!(spin.started.map(|(_, spun)| spun), Some(Spun::No));
    }
}
