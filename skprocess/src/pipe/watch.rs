//! What wakes a pipe's receiving futures ([`Pipe::recv_async`](crate::Pipe::recv_async),
//! [`PipeReceiver::recv_async`](crate::PipeReceiver::recv_async)).
//!
//! The peer may be another process, so no thread of this one is there to
//! wake a task when it sends. Each end that is awaited gets one watcher
//! thread, started at its first pending receive and ended with the end.
//! The watcher sleeps the way a blocking receive does (on the ring's futex
//! word, checking the peer's socket for its end), but reads nothing: it
//! only wakes the tasks registered with it, whose next poll receives
//! without blocking. So the thread that polls never blocks, one thread
//! serves every future of the end, and the sender's side is unchanged (it
//! already wakes sleepers on the ring after each publish).
//!
//! No wake-up is lost: a poll notes the published position *before* it
//! tries to receive, and the watcher wakes as soon as the position moves
//! past the one noted, so bytes published between the attempt and the
//! registration wake the task at once.

use super::ring;
use crate::error::{Error, Result};
use crate::wakers::{self, Wakers};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::task::Context;
use std::thread::JoinHandle;

/// The watcher of one ring end.
#[derive(Debug)]
pub(super) struct Watch {
    shared: Arc<Shared>,
    end: Arc<ring::End>,
    thread: Option<JoinHandle<()>>,
}

#[derive(Debug, Default)]
struct Shared {
    state: Mutex<State>,
    armed: Condvar,
    quit: AtomicBool,
}

#[derive(Debug, Default)]
struct State {
    wakers: Wakers,
    /// The published position the registered tasks last saw.
    seen: u64,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Watch {
    /// Starts the watcher thread of `end`.
    pub(super) fn start(end: Arc<ring::End>) -> Result<Watch> {
        let shared = Arc::new(Shared::default());
        let (s, e) = (shared.clone(), end.clone());
        let thread = std::thread::Builder::new()
            .name("skprocess-pipe-watch".into())
            .stack_size(64 * 1024)
            .spawn(move || watch(&s, &e))
            .map_err(Error::Io)?;
        Ok(Watch {
            shared,
            end,
            thread: Some(thread),
        })
    }

    /// Registers the polling task, to be woken once bytes are published
    /// past `seen` (or the peer is gone).
    pub(super) fn register(&self, cx: &Context<'_>, seen: u64) {
        let mut s = self.shared.lock();
        if s.wakers.is_empty() {
            s.seen = seen;
        } else {
            // Several tasks wait: wake them all at the first change any of
            // them has not seen.
            s.seen = s.seen.min(seen);
        }
        s.wakers.register(cx.waker());
        drop(s);
        self.shared.armed.notify_one();
    }
}

fn watch(shared: &Shared, end: &ring::End) {
    let quit = || shared.quit.load(Ordering::SeqCst);
    loop {
        let mut s = shared.lock();
        while s.wakers.is_empty() && !quit() {
            s = shared.armed.wait(s).unwrap_or_else(|p| p.into_inner());
        }
        if quit() {
            return;
        }
        let seen = s.seen;
        drop(s);
        end.wait_published_past(seen, &quit);
        let w = shared.lock().wakers.take();
        wakers::wake(w);
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.shared.quit.store(true, Ordering::SeqCst);
        // Take the lock so that the watcher is either waiting for a task
        // (and gets the notification) or past its check of `quit`.
        drop(self.shared.lock());
        self.shared.armed.notify_one();
        self.end.interrupt_receivers();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
