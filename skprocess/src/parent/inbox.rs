//! The messages a child told its parent, waiting to be listened to.
//!
//! The inbox is bounded by bytes. While it is full, the thread that reads
//! the child's socket stops reading (still enforcing the child's deadlines),
//! the socket's buffer fills, and the child's `tell` blocks: a child that
//! tells faster than its parent listens is slowed down, not buffered without
//! end. Two cases lift the bound, since waiting for room could then never
//! end: the parent waits for the process to end ([`Inbox::unbound`]), or
//! the child has exited (what it sent is all there is).
//!
//! Listeners block ([`Inbox::pop`]) or poll ([`Inbox::poll_pop`]); a
//! message leaves the queue only when handed to a listener, so a listening
//! future dropped while pending never loses one.

use crate::error::{Error, Result};
use crate::wakers::{self, Wakers};
use crate::wire::Frame;
use std::collections::VecDeque;
use std::sync::{Condvar, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

/// What one queued message costs beyond its payload (the frame, the
/// queue's slot), counted so that a million empty messages are bounded too.
const OVERHEAD: usize = 96;

/// The default bound: 8 MiB of messages.
pub(crate) const DEFAULT_LIMIT: usize = 8 << 20;

/// A queue of `TELL` frames with a byte bound.
#[derive(Debug)]
pub(crate) struct Inbox {
    state: Mutex<State>,
    /// A message arrived, or the inbox closed.
    arrived: Condvar,
    /// Room was made, or the bound was lifted.
    room: Condvar,
    limit: usize,
}

#[derive(Debug, Default)]
struct State {
    frames: VecDeque<Frame>,
    bytes: usize,
    /// No more messages will come.
    closed: bool,
    /// The bound no longer applies.
    unbounded: bool,
    /// Tasks waiting for a message or the close.
    wakers: Wakers,
}

fn cost(f: &Frame) -> usize {
    f.payload.len() + OVERHEAD
}

impl Inbox {
    /// An empty inbox holding up to `limit` bytes of messages.
    pub(crate) fn new(limit: usize) -> Inbox {
        Inbox {
            state: Mutex::new(State::default()),
            arrived: Condvar::new(),
            room: Condvar::new(),
            limit,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues a message. Never blocks: the reader calls
    /// [`wait_room`](Inbox::wait_room) before reading the next frame.
    pub(crate) fn push(&self, f: Frame) {
        let mut s = self.lock();
        s.bytes += cost(&f);
        s.frames.push_back(f);
        let w = s.wakers.take();
        drop(s);
        self.arrived.notify_one();
        wakers::wake(w);
    }

    /// Waits until there is room (or the bound is lifted), at most until
    /// `until`; whether there is.
    pub(crate) fn wait_room(&self, until: Option<Instant>) -> bool {
        let mut s = self.lock();
        loop {
            if s.unbounded || s.bytes < self.limit {
                return true;
            }
            let left = match until {
                Some(u) => match u.checked_duration_since(Instant::now()) {
                    Some(d) if !d.is_zero() => d,
                    _ => return false,
                },
                None => Duration::from_secs(3600),
            };
            s = self
                .room
                .wait_timeout(s, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    /// Lifts the bound for good.
    pub(crate) fn unbound(&self) {
        self.lock().unbounded = true;
        self.room.notify_all();
    }

    /// No more messages will come: listeners get `Disconnected` once the
    /// queue is empty.
    pub(crate) fn close(&self) {
        let mut s = self.lock();
        s.closed = true;
        let w = s.wakers.take();
        drop(s);
        self.arrived.notify_all();
        wakers::wake(w);
    }

    /// The next message if one is queued, `Err(Disconnected)` once closed
    /// and empty; otherwise registers the task to be woken when a message
    /// arrives or the inbox closes.
    pub(crate) fn poll_pop(&self, cx: &mut Context<'_>) -> Poll<Result<Frame>> {
        let mut s = self.lock();
        if let Some(f) = self.take(&mut s) {
            return Poll::Ready(Ok(f));
        }
        if s.closed {
            return Poll::Ready(Err(Error::Disconnected));
        }
        s.wakers.register(cx.waker());
        Poll::Pending
    }

    fn take(&self, s: &mut State) -> Option<Frame> {
        let f = s.frames.pop_front()?;
        s.bytes -= cost(&f);
        if s.frames.is_empty() && s.frames.capacity() > 1024 {
            // A burst is over: give its memory back.
            s.frames = VecDeque::new();
        }
        self.room.notify_one();
        Some(f)
    }

    /// The next message, waiting until `deadline` (for ever if `None`).
    /// `Ok(None)` on timeout; `Err(Disconnected)` once closed and empty.
    pub(crate) fn pop(&self, deadline: Option<Instant>) -> Result<Option<Frame>> {
        let mut s = self.lock();
        loop {
            if let Some(f) = self.take(&mut s) {
                return Ok(Some(f));
            }
            if s.closed {
                return Err(Error::Disconnected);
            }
            s = match deadline {
                None => self.arrived.wait(s).unwrap_or_else(|p| p.into_inner()),
                Some(d) => match d.checked_duration_since(Instant::now()) {
                    Some(left) if !left.is_zero() => {
                        self.arrived
                            .wait_timeout(s, left)
                            .unwrap_or_else(|p| p.into_inner())
                            .0
                    }
                    _ => return Ok(None),
                },
            };
        }
    }
}

#[cfg(test)]
mod test {
    use super::*;

    fn frame(n: usize) -> Frame {
        Frame {
            kind: crate::proto::kind::TELL,
            payload: vec![7; n],
            fds: Vec::new(),
            fds_lost: false,
        }
    }

    #[test]
    fn bound_holds_until_room_is_made() {
        let inbox = Inbox::new(1000);
        inbox.push(frame(500));
        assert!(inbox.wait_room(Some(Instant::now())));
        inbox.push(frame(500));
        // 1000 + 2 * OVERHEAD bytes queued: full.
        assert!(!inbox.wait_room(Some(Instant::now())));
        assert_eq!(inbox.pop(None).unwrap().unwrap().payload.len(), 500);
        assert!(inbox.wait_room(Some(Instant::now())));
    }

    #[test]
    fn unbound_lifts_the_bound_and_close_ends_after_the_queue() {
        let inbox = Inbox::new(10);
        inbox.push(frame(100));
        assert!(!inbox.wait_room(Some(Instant::now())));
        inbox.unbound();
        assert!(inbox.wait_room(Some(Instant::now())));
        inbox.push(frame(1));
        inbox.close();
        assert!(inbox.pop(None).unwrap().is_some());
        assert!(inbox.pop(None).unwrap().is_some());
        assert!(matches!(inbox.pop(None), Err(Error::Disconnected)));
        assert!(matches!(
            inbox.pop(Some(Instant::now())),
            Err(Error::Disconnected)
        ));
    }

    #[test]
    fn pop_times_out_empty() {
        let inbox = Inbox::new(10);
        assert!(inbox.pop(Some(Instant::now())).unwrap().is_none());
    }

    #[test]
    fn a_waiting_reader_is_woken_by_a_pop() {
        let inbox = std::sync::Arc::new(Inbox::new(10));
        inbox.push(frame(100));
        let i = inbox.clone();
        let t = std::thread::spawn(move || i.wait_room(None));
        assert!(inbox.pop(None).unwrap().is_some());
        assert!(t.join().unwrap());
    }
}
