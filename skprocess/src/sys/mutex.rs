//! A fair, robust lock in shared memory, for processes that map the same
//! memory: [`SharedMutex`].
//!
//! # What it guarantees
//!
//! - **Mutual exclusion** across every process that maps the memory: the
//!   data lock is a `PTHREAD_PROCESS_SHARED` pthread mutex.
//! - **Robustness**: a holder that dies (killed at any moment, or a thread
//!   that ends) leaves the lock to the kernel's robust-futex clean-up; the
//!   next locker gets it, marked [recovered](MutexGuard::recovered). A
//!   waiter that dies while it waits stalls nobody (see below).
//! - **Fairness**: a waiter is served after the waiters that queued before
//!   it, and lets others cut in only for a short [`PATIENCE`], so it waits
//!   a bounded number of other holders' turns, however hard the others
//!   re-lock. A pthread mutex alone lets whoever unlocks take the lock again
//!   before the waiter it woke has run.
//! - **Deadlines** on the monotonic clock, and an error (not a hang) when
//!   the thread that holds the lock asks for it again.
//!
//! # How
//!
//! Beside the data lock sit a ticket counter `next`, a flag `strict`, and a
//! ring of [`SLOTS`] places, each a robust mutex of its own and the ticket
//! of the waiter that holds it.
//!
//! - **Fast path.** Unless `strict` is set, a locker tries the data lock
//!   directly, looking again now and then (with growing pauses) while a
//!   holder is inside: uncontended and briefly contended locks cost what
//!   the bare mutex costs.
//! - **Queue.** Otherwise, or when the holder stays, the locker takes
//!   ticket `t`, locks place `t % SLOTS` (its presence: held for as long as
//!   it waits) and waits until the place of ticket `t - 1` is released, by
//!   locking and at once unlocking it.
//! - **First in line.** It then waits for the data lock, letting holders
//!   that come back at once take it first for [`PATIENCE`] from the moment
//!   it queued (so quick holders on other cores do not hand the lock and the
//!   data back and forth on every turn). It writes when its patience ends
//!   into `strict`; from that instant every locker queues behind it, and
//!   the next release is its, whether or not the waiter itself has been
//!   scheduled to notice (on a loaded machine it may not run for a while). Once it holds
//!   the data lock it clears `strict` and releases its place, which wakes
//!   its successor, who has queued for longer than its patience when
//!   holders keep the lock for long, and so sets `strict` at once: waiters
//!   are served in order, each after a bounded number of turns.
//! - **A waiter that dies** releases its place through the same kernel
//!   clean-up: its successor gets the place with `EOWNERDEAD`, clears it
//!   and moves up. A waiter that dies between taking its ticket and locking
//!   its place never blocks its successor, which finds the place free. A
//!   first in line that dies with `strict` set only makes everyone queue
//!   until the next waiter is served and clears it.
//! - **More waiters than places** share places: ticket `t + SLOTS` waits
//!   for ticket `t` to leave the place, which is in order. If a younger
//!   waiter took the place a waiter is watching, the watcher notices (the
//!   place's ticket is newer than the one it waits for) at the latest after
//!   [`SLICE`] and moves on.
//!
//! The queue only orders the waiters; exclusion rests on the data lock
//! alone, so any misstep in the queue (a stale `strict`, a waiter that
//! arrives late for its place) costs fairness for a moment, never safety.

use std::cell::{Cell, UnsafeCell};
use std::io;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Waiters that hold a place of their own in the queue at once; more share
/// places (see the module docs).
pub(crate) const SLOTS: usize = 32;

/// How long the first waiter in line lets holders that come back at once
/// take the lock before it: short enough to be a few of their turns when
/// holders keep the lock for long, long enough that quick holders hand the
/// lock over between cores rarely.
const PATIENCE: Duration = Duration::from_micros(100);

/// How often a waiter watching a place re-checks that the place still
/// belongs to the waiter it follows.
const SLICE: Duration = Duration::from_millis(100);

/// Looks at the data lock before queueing, while a holder is inside; the
/// pause between two looks doubles up to [`MAX_PAUSE`] spins, so a holder
/// that re-locks at once keeps the lock for a while (fewer hand-overs,
/// each of which moves the lock and the data between cores) until the
/// spinner queues and the queue makes the holder wait its turn.
const SPINS: u32 = 24;

/// The longest pause between two looks at the data lock, in spins.
const MAX_PAUSE: u32 = 64;

/// The owner's thread id in a robust futex word (kernel ABI).
const TID_MASK: u32 = 0x3fff_ffff;

/// How a lock attempt on one robust mutex ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Took {
    /// Locked.
    Locked,
    /// Locked, and the previous holder had died holding it.
    Recovered,
    /// Still held by someone else when the deadline passed.
    TimedOut,
}

/// One robust, process-shared, error-checking pthread mutex.
#[repr(C)]
struct Robust(UnsafeCell<libc::pthread_mutex_t>);

fn check(r: libc::c_int) -> io::Result<()> {
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::from_raw_os_error(r))
    }
}

fn relocked() -> io::Error {
    io::Error::new(
        io::ErrorKind::Deadlock,
        "this thread already holds this lock; drop that guard first",
    )
}

#[cfg(all(target_env = "gnu", target_pointer_width = "64"))]
extern "C" {
    // glibc >= 2.30; waits against a chosen clock, so a change of the wall
    // clock does not stretch or cut a timeout.
    fn pthread_mutex_clocklock(
        mutex: *mut libc::pthread_mutex_t,
        clock: libc::clockid_t,
        abstime: *const libc::timespec,
    ) -> libc::c_int;
}

/// `now + d` as a normalised timespec (`0 <= tv_nsec < 1e9`), saturating at
/// the largest representable time instead of overflowing.
// The `i64::from`s are identities on 64-bit targets but not where `time_t`
// or `c_long` is 32 bits.
#[allow(clippy::useless_conversion)]
fn timespec_after(now: libc::timespec, d: Duration) -> libc::timespec {
    const NANOS: i64 = 1_000_000_000;
    let max = libc::timespec {
        tv_sec: libc::time_t::MAX,
        tv_nsec: (NANOS - 1) as _,
    };
    let mut nsec = i64::from(now.tv_nsec) + i64::from(d.subsec_nanos());
    let mut carry = 0i64;
    if nsec >= NANOS {
        nsec -= NANOS;
        carry = 1;
    }
    let secs = i64::try_from(d.as_secs()).unwrap_or(i64::MAX);
    let Some(sec) = i64::from(now.tv_sec)
        .checked_add(secs)
        .and_then(|s| s.checked_add(carry))
    else {
        return max;
    };
    match libc::time_t::try_from(sec) {
        Ok(tv_sec) => libc::timespec {
            tv_sec,
            tv_nsec: nsec as _,
        },
        Err(_) => max,
    }
}

/// The current time of `clock` as a libc timespec.
fn now_on(clock: rustix::time::ClockId) -> libc::timespec {
    let t = rustix::time::clock_gettime(clock);
    libc::timespec {
        tv_sec: t.tv_sec as _,
        tv_nsec: t.tv_nsec as _,
    }
}

/// Nanoseconds on `CLOCK_MONOTONIC`: the same clock in every process.
fn monotonic_ns() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    (t.tv_sec as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(t.tv_nsec as u64)
}

/// This thread's id, asked of the kernel once per thread.
fn this_thread() -> u32 {
    thread_local! {
        static TID: Cell<u32> = const { Cell::new(0) };
    }
    TID.with(|c| {
        if c.get() == 0 {
            c.set(rustix::thread::gettid().as_raw_pid() as u32);
        }
        c.get()
    })
}

impl Robust {
    /// Makes the mutex robust, process-shared and error-checking.
    ///
    /// # Safety
    ///
    /// No thread of any process may use the mutex during or before the
    /// call.
    unsafe fn init(&self) -> io::Result<()> {
        // SAFETY: the attribute object is initialised before use and
        // destroyed after; the mutex is not in use (the caller's promise).
        unsafe {
            let mut attr = std::mem::MaybeUninit::<libc::pthread_mutexattr_t>::uninit();
            check(libc::pthread_mutexattr_init(attr.as_mut_ptr()))?;
            let a = attr.as_mut_ptr();
            let r = (|| {
                check(libc::pthread_mutexattr_setpshared(
                    a,
                    libc::PTHREAD_PROCESS_SHARED,
                ))?;
                check(libc::pthread_mutexattr_setrobust(
                    a,
                    libc::PTHREAD_MUTEX_ROBUST,
                ))?;
                // Relocking from the owning thread is reported (EDEADLK)
                // instead of hanging.
                check(libc::pthread_mutexattr_settype(
                    a,
                    libc::PTHREAD_MUTEX_ERRORCHECK,
                ))?;
                check(libc::pthread_mutex_init(self.0.get(), a))
            })();
            libc::pthread_mutexattr_destroy(a);
            r
        }
    }

    /// The mutex's futex word: the owner's thread id and two flag bits.
    fn word(&self) -> &AtomicU32 {
        // SAFETY: glibc keeps a robust mutex's futex word (`__lock`) as the
        // first `int` of `pthread_mutex_t`, where the kernel's robust-futex
        // clean-up finds it; it is 4-byte aligned inside the mutex, lives as
        // long as `self`, and is only ever changed atomically.
        unsafe { &*self.0.get().cast::<AtomicU32>() }
    }

    /// The thread id of the holder, 0 if free (or its holder died).
    fn owner(&self) -> u32 {
        self.word().load(Ordering::Relaxed) & TID_MASK
    }

    /// Locks if free now.
    fn try_lock(&self) -> io::Result<Took> {
        // SAFETY: the mutex was initialised by `init` (the contract of
        // `SharedMutex::at`), is process-shared, and lives for the call.
        self.took(unsafe { libc::pthread_mutex_trylock(self.0.get()) })
    }

    /// Locks until `deadline` (`None`: no limit; passed: one try).
    fn lock(&self, deadline: Option<Instant>) -> io::Result<Took> {
        let r = match deadline {
            // SAFETY: as in `try_lock`.
            None => unsafe { libc::pthread_mutex_lock(self.0.get()) },
            Some(d) => {
                let left = d.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return self.try_lock();
                }
                timed_lock(self.0.get(), left)
            }
        };
        self.took(r)
    }

    /// The outcome of a lock call that returned `r`.
    fn took(&self, r: libc::c_int) -> io::Result<Took> {
        let m = self.0.get();
        match r {
            0 => Ok(Took::Locked),
            libc::EOWNERDEAD => {
                // The holder died; this thread owns the mutex now.
                // SAFETY: the mutex is initialised and live (see `try_lock`);
                // EOWNERDEAD handed it to this thread.
                check(unsafe { libc::pthread_mutex_consistent(m) })?;
                Ok(Took::Recovered)
            }
            libc::ETIMEDOUT | libc::EBUSY => Ok(Took::TimedOut),
            libc::EDEADLK => Err(relocked()),
            libc::ENOTRECOVERABLE => Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "the lock is unrecoverable",
            )),
            e => Err(io::Error::from_raw_os_error(e)),
        }
    }

    /// Unlocks.
    ///
    /// # Safety
    ///
    /// This thread holds the mutex.
    unsafe fn unlock(&self) {
        // SAFETY: the caller holds the mutex, which is initialised and live.
        unsafe { libc::pthread_mutex_unlock(self.0.get()) };
    }
}

/// Locks `m` until `left` from now on the monotonic clock.
fn timed_lock(m: *mut libc::pthread_mutex_t, left: Duration) -> libc::c_int {
    #[cfg(all(target_env = "gnu", target_pointer_width = "64"))]
    {
        let ts = timespec_after(now_on(rustix::time::ClockId::Monotonic), left);
        // SAFETY: `m` is an initialised, live, process-shared mutex (see
        // `Robust::lock`); `ts` is a normalised timespec.
        let r = unsafe { pthread_mutex_clocklock(m, libc::CLOCK_MONOTONIC, &ts) };
        if r == libc::EBUSY {
            libc::ETIMEDOUT
        } else {
            r
        }
    }
    #[cfg(not(all(target_env = "gnu", target_pointer_width = "64")))]
    {
        let ts = timespec_after(now_on(rustix::time::ClockId::Realtime), left);
        // SAFETY: as above.
        unsafe { libc::pthread_mutex_timedlock(m, &ts) }
    }
}

/// One place in the queue: held by the waiter whose ticket it records.
#[repr(C)]
struct Slot {
    lock: Robust,
    /// `ticket + 1` of the waiter holding the place, 0 if none; changed
    /// only by whoever holds `lock`.
    ticket: AtomicU64,
}

/// A fair, robust lock living in shared memory (see the module docs).
///
/// Obtained with [`SharedMutex::at`] from memory mapped by every process
/// that uses it, and made ready once by its creator with
/// [`SharedMutex::init`].
#[repr(C)]
pub(crate) struct SharedMutex {
    data: Robust,
    /// Tickets handed out.
    next: AtomicU64,
    /// 0 when nobody waits first in line; else the `CLOCK_MONOTONIC`
    /// instant (in ns, at least 1) its patience ends: from then on nobody
    /// may take the data lock without queueing.
    strict: AtomicU64,
    slots: [Slot; SLOTS],
}

impl std::fmt::Debug for SharedMutex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedMutex")
            .field("owner", &self.data.owner())
            .field("strict", &self.is_strict())
            .finish()
    }
}

/// The lock, held by this thread; released on drop. Not `Send`: a robust
/// mutex must be unlocked by the thread that locked it.
pub(crate) struct MutexGuard<'a> {
    lock: &'a SharedMutex,
    recovered: bool,
    _not_send: PhantomData<*mut ()>,
}

impl std::fmt::Debug for MutexGuard<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MutexGuard")
            .field("recovered", &self.recovered)
            .finish()
    }
}

impl MutexGuard<'_> {
    /// Whether the previous holder died holding the lock.
    pub(crate) fn recovered(&self) -> bool {
        self.recovered
    }
}

impl Drop for MutexGuard<'_> {
    fn drop(&mut self) {
        // SAFETY: a guard exists only while this thread holds the data lock,
        // and cannot leave the thread.
        unsafe { self.lock.data.unlock() };
    }
}

/// A place in the queue held by this thread: released on drop.
struct Place<'a> {
    slot: &'a Slot,
}

impl Drop for Place<'_> {
    fn drop(&mut self) {
        self.slot.ticket.store(0, Ordering::Release);
        // SAFETY: a Place exists only while this thread holds the slot.
        unsafe { self.slot.lock.unlock() };
    }
}

impl SharedMutex {
    /// Bytes the lock takes in the mapping.
    pub(crate) const SIZE: usize = std::mem::size_of::<SharedMutex>();

    /// The lock stored at `at`.
    ///
    /// # Safety
    ///
    /// `at` is aligned for `SharedMutex` and points at [`SIZE`](Self::SIZE)
    /// bytes of shared memory that stay mapped for `'a`, which were made
    /// ready with [`init`](Self::init) before any process used them as a
    /// lock (or are being made ready by this caller, who calls `init` before
    /// anything else).
    pub(crate) unsafe fn at<'a>(at: *const u8) -> &'a SharedMutex {
        // SAFETY: alignment, size and lifetime are the caller's promise;
        // every field is an atomic or an `UnsafeCell`, so other processes
        // changing the memory does not break a shared reference.
        unsafe { &*at.cast::<SharedMutex>() }
    }

    /// Makes the lock ready: unlocked, nobody queued.
    ///
    /// # Safety
    ///
    /// No thread of any process uses the lock during or before the call.
    pub(crate) unsafe fn init(&self) -> io::Result<()> {
        // SAFETY: the caller's promise covers every mutex inside.
        unsafe { self.data.init()? };
        for slot in &self.slots {
            // SAFETY: as above.
            unsafe { slot.lock.init()? };
            slot.ticket.store(0, Ordering::Relaxed);
        }
        self.next.store(0, Ordering::Relaxed);
        self.strict.store(0, Ordering::Release);
        Ok(())
    }

    /// Whether a thread of this process holds the lock now.
    pub(crate) fn held_in_this_process(&self) -> bool {
        let tid = self.data.owner();
        // Thread ids are unique across the system while the thread lives.
        tid != 0 && std::path::Path::new(&format!("/proc/self/task/{tid}")).exists()
    }

    /// Whether lockers must queue (the first in line ran out of patience).
    fn is_strict(&self) -> bool {
        match self.strict.load(Ordering::Acquire) {
            0 => false,
            from => monotonic_ns() >= from,
        }
    }

    fn guard(&self, took: Took) -> MutexGuard<'_> {
        MutexGuard {
            lock: self,
            recovered: took == Took::Recovered,
            _not_send: PhantomData,
        }
    }

    /// Takes the lock, waiting until `deadline` (`None`: no limit; a passed
    /// deadline: only if no one holds it or waits for it now). `Ok(None)`
    /// when the deadline passes first.
    ///
    /// # Errors
    ///
    /// If this thread holds the lock already (`ErrorKind::Deadlock`), or
    /// the lock's memory is corrupt.
    pub(crate) fn lock(&self, deadline: Option<Instant>) -> io::Result<Option<MutexGuard<'_>>> {
        if let Some(took) = self.spin(|| !self.is_strict())? {
            return Ok(Some(self.guard(took)));
        }
        if self.data.owner() == this_thread() {
            return Err(relocked());
        }
        self.queue(deadline)
    }

    /// Tries the data lock a few times while `go()` holds and the lock
    /// looks free; `None` if it was not taken.
    fn spin(&self, go: impl Fn() -> bool) -> io::Result<Option<Took>> {
        let mut pause = 1;
        for _ in 0..SPINS {
            if !go() {
                return Ok(None);
            }
            if self.data.owner() == 0 {
                match self.data.try_lock()? {
                    Took::TimedOut => {}
                    took => return Ok(Some(took)),
                }
            }
            for _ in 0..pause {
                std::hint::spin_loop();
            }
            pause = (2 * pause).min(MAX_PAUSE);
        }
        Ok(None)
    }

    /// The fair path: queue behind the waiters that asked before.
    fn queue(&self, deadline: Option<Instant>) -> io::Result<Option<MutexGuard<'_>>> {
        let patience_ends = Instant::now().checked_add(PATIENCE);
        let ticket = self.next.fetch_add(1, Ordering::AcqRel);
        let slot = &self.slots[(ticket % SLOTS as u64) as usize];
        // Normally free; held only by a waiter `SLOTS` tickets older, or by
        // one glancing at it.
        let took = match slot.lock.try_lock()? {
            Took::TimedOut => slot.lock.lock(deadline)?,
            took => took,
        };
        if took == Took::TimedOut {
            return Ok(None);
        }
        let place = Place { slot };
        slot.ticket.store(ticket + 1, Ordering::Release);
        if ticket > 0 && !self.wait_for(ticket - 1, deadline)? {
            return Ok(None);
        }
        // First in line: only the holder is ahead now, and whoever takes
        // the lock without queueing until patience runs out.
        let took = self.first_in_line(deadline, patience_ends);
        // Served, given up or failed: others may take the lock directly
        // until the next first in line runs out of patience.
        self.strict.store(0, Ordering::Release);
        let took = took?;
        if took == Took::TimedOut {
            return Ok(None);
        }
        // Lets the successor move up to the data lock.
        drop(place);
        Ok(Some(self.guard(took)))
    }

    /// Takes the data lock for the first waiter in line: lets others take
    /// it first until `patience_ends`, then makes everyone queue.
    fn first_in_line(
        &self,
        deadline: Option<Instant>,
        patience_ends: Option<Instant>,
    ) -> io::Result<Took> {
        // Bargers see when patience ends even if this thread is not
        // scheduled then.
        let left = patience_ends.map_or(Duration::ZERO, |p| {
            p.saturating_duration_since(Instant::now())
        });
        let from = monotonic_ns().saturating_add(left.as_nanos() as u64).max(1);
        self.strict.store(from, Ordering::Release);
        loop {
            if let Some(took) = self.spin(|| true)? {
                return Ok(took);
            }
            let now = Instant::now();
            if patience_ends.is_none_or(|p| now >= p) {
                self.strict.store(1, Ordering::Release);
                return self.data.lock(deadline);
            }
            let until = match (deadline, patience_ends) {
                (Some(d), Some(p)) => Some(d.min(p)),
                (d, p) => d.or(p),
            };
            match self.data.lock(until)? {
                Took::TimedOut if deadline.is_some_and(|d| Instant::now() >= d) => {
                    return Ok(Took::TimedOut)
                }
                Took::TimedOut => {}
                took => return Ok(took),
            }
        }
    }

    /// Waits until the waiter with ticket `before` has left the queue.
    /// `false` if `deadline` passed first.
    fn wait_for(&self, before: u64, deadline: Option<Instant>) -> io::Result<bool> {
        let slot = &self.slots[(before % SLOTS as u64) as usize];
        // It leaves its place as soon as it holds the data lock, which is
        // soon when holders are quick: watch for that before sleeping.
        for _ in 0..SPINS * MAX_PAUSE {
            if slot.ticket.load(Ordering::Acquire) != before + 1 {
                break;
            }
            std::hint::spin_loop();
        }
        loop {
            if slot.ticket.load(Ordering::Acquire) > before + 1 {
                // A younger waiter has the place: `before` is done.
                return Ok(true);
            }
            let slice = Instant::now().checked_add(SLICE);
            let until = match (deadline, slice) {
                (Some(d), Some(s)) => Some(d.min(s)),
                (d, s) => d.or(s),
            };
            match slot.lock.lock(until)? {
                Took::Locked => {
                    // SAFETY: this thread just locked the slot.
                    unsafe { slot.lock.unlock() };
                    return Ok(true);
                }
                Took::Recovered => {
                    // Its holder died waiting: the place is ours to clear.
                    drop(Place { slot });
                    return Ok(true);
                }
                Took::TimedOut => {
                    if deadline.is_some_and(|d| Instant::now() >= d) {
                        return Ok(false);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod test {
    use super::*;
    use std::sync::atomic::AtomicBool;
    use std::sync::Arc;

    fn ts(sec: i64, nsec: i64) -> libc::timespec {
        libc::timespec {
            tv_sec: sec as _,
            tv_nsec: nsec as _,
        }
    }

    #[test]
    fn timespec_is_normalised() {
        let t = timespec_after(ts(10, 999_999_999), Duration::from_nanos(1));
        assert_eq!((t.tv_sec, t.tv_nsec), (11, 0));
        let t = timespec_after(ts(10, 600_000_000), Duration::from_millis(500));
        assert_eq!((t.tv_sec, t.tv_nsec), (11, 100_000_000));
        let t = timespec_after(ts(10, 0), Duration::from_millis(250));
        assert_eq!((t.tv_sec, t.tv_nsec), (10, 250_000_000));
        let t = timespec_after(ts(10, 500_000_000), Duration::new(3, 700_000_000));
        assert_eq!((t.tv_sec, t.tv_nsec), (14, 200_000_000));
        let t = timespec_after(ts(10, 1), Duration::MAX);
        assert_eq!(t.tv_sec, libc::time_t::MAX);
        assert!(t.tv_nsec < 1_000_000_000);
    }

    /// A lock in an anonymous shared mapping.
    struct Mapped {
        map: memmap2::MmapRaw,
    }

    impl Mapped {
        fn new() -> Arc<Mapped> {
            let map = memmap2::MmapOptions::new()
                .len(SharedMutex::SIZE)
                .map_anon()
                .unwrap()
                .into();
            let m = Mapped { map };
            // SAFETY: fresh, zeroed, page-aligned memory of the right size,
            // not yet used by anyone.
            unsafe { m.lock().init().unwrap() };
            Arc::new(m)
        }

        fn lock(&self) -> &SharedMutex {
            // SAFETY: the mapping is page-aligned, SIZE bytes long, lives as
            // long as `self`, and was initialised in `new`.
            unsafe { SharedMutex::at(self.map.as_ptr()) }
        }
    }

    #[test]
    fn relocking_from_the_holding_thread_is_an_error() {
        let m = Mapped::new();
        let g = m.lock().lock(None).unwrap().unwrap();
        for deadline in [None, Some(Instant::now()), Some(Instant::now() + SLICE)] {
            let e = m.lock().lock(deadline).unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::Deadlock);
        }
        drop(g);
        assert!(m.lock().lock(Some(Instant::now())).unwrap().is_some());
    }

    #[test]
    fn a_deadline_gives_up_while_another_thread_holds_it() {
        let m = Mapped::new();
        let g = m.lock().lock(None).unwrap().unwrap();
        let m2 = m.clone();
        let (gave_up, strict_after) = std::thread::spawn(move || {
            let r = m2.lock().lock(Some(Instant::now() + PATIENCE * 300));
            (r.unwrap().is_none(), m2.lock().is_strict())
        })
        .join()
        .unwrap();
        assert!(gave_up);
        // A waiter that gives up lets others take the lock directly again.
        assert!(!strict_after);
        drop(g);
        assert!(m.lock().lock(Some(Instant::now())).unwrap().is_some());
    }

    #[test]
    fn a_holder_thread_that_ends_leaves_the_lock_recovered() {
        let m = Mapped::new();
        let m2 = m.clone();
        std::thread::spawn(move || std::mem::forget(m2.lock().lock(None).unwrap().unwrap()))
            .join()
            .unwrap();
        let g = m.lock().lock(None).unwrap().unwrap();
        assert!(g.recovered());
        drop(g);
        assert!(!m.lock().lock(None).unwrap().unwrap().recovered());
    }

    #[test]
    fn a_waiter_that_ends_in_its_place_stalls_nobody() {
        let m = Mapped::new();
        let held = m.lock().lock(None).unwrap().unwrap();
        // A waiter takes ticket 0 and its place, then its thread ends
        // without leaving the place (as if killed while waiting).
        let m2 = m.clone();
        std::thread::spawn(move || {
            let l = m2.lock();
            let ticket = l.next.fetch_add(1, Ordering::AcqRel);
            let slot = &l.slots[ticket as usize % SLOTS];
            assert_eq!(slot.lock.lock(None).unwrap(), Took::Locked);
            slot.ticket.store(ticket + 1, Ordering::Release);
        })
        .join()
        .unwrap();
        // Ticket 1 waits for ticket 0's place and finds its holder dead.
        let m3 = m.clone();
        let got = Arc::new(AtomicBool::new(false));
        let got2 = got.clone();
        let waiter = std::thread::spawn(move || {
            let g = m3.lock().lock(None).unwrap().unwrap();
            got2.store(true, Ordering::SeqCst);
            g.recovered()
        });
        // Not a synchronisation: gives the waiter time to queue, so the
        // release below hands the lock over rather than races it.
        while m.lock().next.load(Ordering::SeqCst) < 2 {
            std::thread::yield_now();
        }
        assert!(!got.load(Ordering::SeqCst), "the lock is still held");
        drop(held);
        assert!(!waiter.join().unwrap());
        assert!(!m.lock().is_strict());
    }

    #[test]
    fn waiters_are_served_in_the_order_they_queued() {
        // Threads queue one after another while the lock is held; each
        // records its ticket when served.
        const N: u64 = 6;
        let m = Mapped::new();
        let held = m.lock().lock(None).unwrap().unwrap();
        let order = Arc::new(std::sync::Mutex::new(Vec::new()));
        let mut threads = Vec::new();
        for i in 0..N {
            let (m2, order2) = (m.clone(), order.clone());
            threads.push(std::thread::spawn(move || {
                let g = m2.lock().lock(None).unwrap().unwrap();
                order2.lock().unwrap().push(i);
                drop(g);
            }));
            // Wait until thread `i` holds its place before starting the next.
            let slot = &m.lock().slots[i as usize % SLOTS];
            while slot.ticket.load(Ordering::SeqCst) != i + 1 {
                std::thread::yield_now();
            }
        }
        drop(held);
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(*order.lock().unwrap(), (0..N).collect::<Vec<_>>());
    }

    #[test]
    fn more_waiters_than_places_all_get_the_lock() {
        let m = Mapped::new();
        let count = Arc::new(AtomicU64::new(0));
        let threads: Vec<_> = (0..2 * SLOTS + 3)
            .map(|_| {
                let (m2, count2) = (m.clone(), count.clone());
                std::thread::spawn(move || {
                    for _ in 0..20 {
                        let g = m2.lock().lock(None).unwrap().unwrap();
                        // Not atomic as a whole: only exclusion keeps it exact.
                        let v = count2.load(Ordering::Relaxed);
                        std::hint::spin_loop();
                        count2.store(v + 1, Ordering::Relaxed);
                        drop(g);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(count.load(Ordering::Relaxed), 20 * (2 * SLOTS as u64 + 3));
    }
}
