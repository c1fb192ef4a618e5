//! The end result of a process, handed from the thread that runs it to
//! whoever waits: a blocking waiter ([`Handle::wait`](crate::Handle::wait))
//! or a future ([`Handle::wait_async`](crate::Handle::wait_async)), one
//! mechanism for both.

use crate::wakers::{self, Wakers};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

/// A value set once by one thread and taken once by another.
#[derive(Debug)]
pub(crate) struct Outcome<T> {
    state: Mutex<State<T>>,
    set: Condvar,
}

#[derive(Debug)]
struct State<T> {
    value: Option<T>,
    wakers: Wakers,
}

impl<T> Outcome<T> {
    pub(crate) fn new() -> Outcome<T> {
        Outcome {
            state: Mutex::new(State {
                value: None,
                wakers: Wakers::default(),
            }),
            set: Condvar::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State<T>> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Sets the value and wakes every waiter, blocking or async.
    pub(crate) fn set(&self, v: T) {
        let mut s = self.lock();
        s.value = Some(v);
        let w = s.wakers.take();
        drop(s);
        self.set.notify_all();
        wakers::wake(w);
    }

    /// Whether the value is there (and not taken yet).
    pub(crate) fn is_set(&self) -> bool {
        self.lock().value.is_some()
    }

    /// Takes the value, waiting for it until `deadline` (for ever if
    /// `None`); `None` on timeout.
    pub(crate) fn take(&self, deadline: Option<Instant>) -> Option<T> {
        let mut s = self.lock();
        loop {
            if let Some(v) = s.value.take() {
                return Some(v);
            }
            let left = match deadline {
                Some(d) => match d.checked_duration_since(Instant::now()) {
                    Some(l) if !l.is_zero() => l,
                    _ => return None,
                },
                None => Duration::from_secs(3600),
            };
            s = self
                .set
                .wait_timeout(s, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    /// Takes the value if it is there; otherwise registers the task to be
    /// woken when it is set.
    pub(crate) fn poll_take(&self, cx: &mut Context<'_>) -> Poll<T> {
        let mut s = self.lock();
        match s.value.take() {
            Some(v) => Poll::Ready(v),
            None => {
                s.wakers.register(cx.waker());
                Poll::Pending
            }
        }
    }
}

#[cfg(test)]
mod test {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn a_blocked_taker_gets_the_value_set_by_another_thread() {
        let o = Arc::new(Outcome::new());
        assert_eq!(o.take(Some(Instant::now())), None);
        let o2 = o.clone();
        let t = std::thread::spawn(move || o2.set(7));
        assert_eq!(o.take(None), Some(7));
        t.join().unwrap();
        assert!(!o.is_set());
    }
}
