//! `futex(2)` wait and wake on a 32-bit word, across processes.
//!
//! The words live in shared memory mapped by several processes (see
//! [`super::region`]), so these are the *shared* futex operations (no
//! `FUTEX_PRIVATE_FLAG`): the kernel keys them on the page behind the
//! address, not on this process's address space.

use rustix::thread::futex::{self, Flags, Timespec};
use std::io;
use std::sync::atomic::AtomicU32;
use std::time::Duration;

/// Why a [`wait`] returned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Woke {
    /// Woken by a [`wake`] (or spuriously).
    Woken,
    /// The word did not hold the expected value.
    Changed,
    /// The timeout passed.
    TimedOut,
    /// A signal interrupted the wait.
    Interrupted,
}

fn wait_once(word: &AtomicU32, expected: u32, timeout: Option<Duration>) -> io::Result<Woke> {
    // A timeout too long for a timespec is no limit.
    let ts = timeout.and_then(|d| Timespec::try_from(d).ok());
    match futex::wait(word, Flags::empty(), expected, ts.as_ref()) {
        Ok(()) => Ok(Woke::Woken),
        Err(rustix::io::Errno::AGAIN) => Ok(Woke::Changed),
        Err(rustix::io::Errno::TIMEDOUT) => Ok(Woke::TimedOut),
        Err(rustix::io::Errno::INTR) => Ok(Woke::Interrupted),
        Err(e) => Err(e.into()),
    }
}

/// Sleeps while `*word == expected`, for at most `timeout` (`None`: no
/// limit). Returns when woken, when the word did not hold `expected` to begin
/// with, on timeout or on a signal: callers re-check their condition in a
/// loop, as futex waits may end spuriously.
pub(crate) fn wait(word: &AtomicU32, expected: u32, timeout: Option<Duration>) -> io::Result<()> {
    wait_once(word, expected, timeout).map(drop)
}

/// Wakes up to `n` waiters sleeping on `word`; returns how many woke.
pub(crate) fn wake(word: &AtomicU32, n: u32) -> io::Result<usize> {
    Ok(futex::wake(word, Flags::empty(), n.min(i32::MAX as u32))?)
}

#[cfg(test)]
mod test {
    use super::*;
    use std::sync::Arc;
    use std::time::Instant;

    #[test]
    fn a_wait_on_a_changed_word_returns_at_once() {
        let w = AtomicU32::new(1);
        let woke = wait_once(&w, 0, Some(Duration::from_secs(60))).unwrap();
        assert_eq!(woke, Woke::Changed);
    }

    #[test]
    fn a_wait_times_out() {
        let w = AtomicU32::new(0);
        let t0 = Instant::now();
        let woke = wait_once(&w, 0, Some(Duration::from_millis(20))).unwrap();
        assert!(
            matches!(woke, Woke::TimedOut | Woke::Interrupted),
            "{woke:?}"
        );
        if woke == Woke::TimedOut {
            assert!(t0.elapsed() >= Duration::from_millis(20));
        }
    }

    #[test]
    fn wake_ends_a_wait() {
        let w = Arc::new(AtomicU32::new(0));
        let w2 = w.clone();
        let t = std::thread::spawn(move || wait_once(&w2, 0, Some(Duration::from_secs(60))));
        // Wake until a sleeper was there to wake (the thread may not sleep
        // yet); the wait's own timeout bounds the loop.
        let mut woken = 0;
        while woken == 0 && !t.is_finished() {
            woken = wake(&w, 1).unwrap();
            std::thread::yield_now();
        }
        assert_eq!(woken, 1);
        assert_eq!(t.join().unwrap().unwrap(), Woke::Woken);
    }
}
