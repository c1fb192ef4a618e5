//! `futex(2)` wait and wake on a 32-bit word, across processes.
//!
//! The words live in shared memory mapped by several processes (see
//! [`super::region`]), so these are the *shared* futex operations (no
//! `FUTEX_PRIVATE_FLAG`): the kernel keys them on the page behind the
//! address, not on this process's address space.

use std::io;
use std::sync::atomic::AtomicU32;
use std::time::Duration;

/// Sleeps while `*word == expected`, for at most `timeout` (`None`: no
/// limit). Returns when woken, when the word did not hold `expected` to begin
/// with, on timeout or on a signal: callers re-check their condition in a
/// loop, as futex waits may end spuriously.
pub(crate) fn wait(word: &AtomicU32, expected: u32, timeout: Option<Duration>) -> io::Result<()> {
    let ts = timeout.map(|d| libc::timespec {
        tv_sec: d.as_secs().min(libc::time_t::MAX as u64) as libc::time_t,
        tv_nsec: d.subsec_nanos() as libc::c_long,
    });
    let ts_ptr = ts
        .as_ref()
        .map_or(std::ptr::null(), |t| t as *const libc::timespec);
    // SAFETY: `word` is a live, aligned 32-bit atomic for the duration of the
    // call (the kernel only reads it and queues us on its address), and
    // `ts_ptr` is null or points at a timespec that outlives the call.
    let r = unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAIT,
            expected,
            ts_ptr,
            std::ptr::null::<u32>(),
            0u32,
        )
    };
    if r == -1 {
        let e = io::Error::last_os_error();
        return match e.raw_os_error() {
            Some(libc::EAGAIN | libc::ETIMEDOUT | libc::EINTR) => Ok(()),
            _ => Err(e),
        };
    }
    Ok(())
}

/// Wakes up to `n` waiters sleeping on `word`; returns how many woke.
pub(crate) fn wake(word: &AtomicU32, n: u32) -> io::Result<usize> {
    let n = n.min(i32::MAX as u32);
    // SAFETY: `word` is a live, aligned 32-bit atomic; FUTEX_WAKE only uses
    // its address as a key and reads nothing else.
    let r = unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAKE,
            n,
            std::ptr::null::<libc::timespec>(),
            std::ptr::null::<u32>(),
            0u32,
        )
    };
    if r == -1 {
        return Err(io::Error::last_os_error());
    }
    Ok(r as usize)
}

#[cfg(test)]
mod test {
    use super::*;
    use std::sync::atomic::Ordering;
    use std::sync::Arc;
    use std::time::Instant;

    #[test]
    fn a_wait_on_a_changed_word_returns_at_once() {
        let w = AtomicU32::new(1);
        let t0 = Instant::now();
        wait(&w, 0, Some(Duration::from_secs(5))).unwrap();
        assert!(t0.elapsed() < Duration::from_secs(1));
    }

    #[test]
    fn a_wait_times_out() {
        let w = AtomicU32::new(0);
        let t0 = Instant::now();
        wait(&w, 0, Some(Duration::from_millis(20))).unwrap();
        assert!(t0.elapsed() >= Duration::from_millis(20));
    }

    #[test]
    fn wake_ends_a_wait() {
        let w = Arc::new(AtomicU32::new(0));
        let w2 = w.clone();
        let t = std::thread::spawn(move || {
            let t0 = Instant::now();
            while w2.load(Ordering::SeqCst) == 0 && t0.elapsed() < Duration::from_secs(5) {
                wait(&w2, 0, Some(Duration::from_secs(5))).unwrap();
            }
            w2.load(Ordering::SeqCst)
        });
        w.store(1, Ordering::SeqCst);
        wake(&w, 1).unwrap();
        assert_eq!(t.join().unwrap(), 1);
    }
}
