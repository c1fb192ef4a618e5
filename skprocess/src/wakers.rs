//! The tasks waiting for something, to be woken when it happens.
//!
//! Every future of this crate waits the same way: it checks its condition,
//! and if it does not hold, registers its task's waker here (under the same
//! lock as the state the condition reads, or checking again after
//! registering), then returns `Pending`. Whoever changes the state wakes
//! every registered task. A task registers once however often it polls (a
//! waker that would wake the same task replaces the old one), and a future
//! dropped while pending costs only a spurious wake-up later.

use std::task::Waker;

/// Registered wakers.
#[derive(Debug, Default)]
pub(crate) struct Wakers {
    list: Vec<Waker>,
}

impl Wakers {
    /// Registers `w`, unless a waker of the same task is registered.
    pub(crate) fn register(&mut self, w: &Waker) {
        match self.list.iter_mut().find(|x| x.will_wake(w)) {
            Some(x) => x.clone_from(w),
            None => self.list.push(w.clone()),
        }
    }

    /// Takes every registered waker, to be woken once the lock is released
    /// (see [`wake`]).
    pub(crate) fn take(&mut self) -> Vec<Waker> {
        std::mem::take(&mut self.list)
    }

    /// Whether no task waits.
    pub(crate) fn is_empty(&self) -> bool {
        self.list.is_empty()
    }
}

/// Wakes every waker of `list`.
pub(crate) fn wake(list: Vec<Waker>) {
    for w in list {
        w.wake();
    }
}

#[cfg(test)]
mod test {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::task::Wake;

    struct Count(AtomicUsize);
    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn one_task_registers_once_and_is_woken_once() {
        let c = Arc::new(Count(AtomicUsize::new(0)));
        let w = Waker::from(c.clone());
        let mut ws = Wakers::default();
        ws.register(&w);
        ws.register(&w);
        assert!(!ws.is_empty());
        wake(ws.take());
        assert!(ws.is_empty());
        assert_eq!(c.0.load(Ordering::SeqCst), 1);
    }
}
