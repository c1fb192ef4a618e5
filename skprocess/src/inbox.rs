//! Messages waiting to be listened to, and the turns at reading the socket
//! they come from.
//!
//! Both ends of a control channel receive messages the same way. A
//! background thread (the parent's runner, the child's control thread)
//! reads the socket while nobody listens and queues the messages here. A
//! thread that listens while the queue is empty takes the socket's reader
//! and reads the next message itself: the message goes from the socket to
//! the thread that wants it with one wake-up, as between the two ends of a
//! bare socket pair, instead of two (the background thread's, then the
//! listener's).
//!
//! # Turns
//!
//! The reader is in one of three places:
//! - with the background thread, which polls the socket and a [`Kick`];
//! - with a listener, which polls the socket alone, as a bare reader would
//!   (and looks every [`LISTENER_LOOK`] whether it is wanted back);
//! - idle here, between two listens.
//!
//! A listener that finds the reader with the background thread kicks it and
//! waits for it; the background thread hands the reader over
//! ([`Inbox::offer`]) and waits for it to come back ([`Inbox::reclaim`]). A
//! listener done with a message leaves the reader idle here and wakes
//! nobody, so a conversation of `tell`s and `listen`s costs no wake-up
//! beyond the socket's own. The background thread takes the reader back
//! once it has stayed idle for a whole [`IDLE_RECLAIM`], and at once when a
//! listener read a frame only the background thread handles, when the
//! socket failed or closed under a listener, or when nobody reads for those
//! who wait (a task awaits a message, or the owner waits for the end). When
//! a life ends, the background thread takes the reader back wherever it is
//! ([`Inbox::recall_now`]).
//!
//! Whoever holds the reader sorts every frame it reads by the same rules
//! (each side's [`Route`]): a message goes to the listener or the queue, a
//! frame only the background thread handles is passed to it in order.
//!
//! # Bound
//!
//! The inbox is bounded by bytes. While it is full, the background thread
//! stops reading (the parent's runner still enforces the child's
//! deadlines), the socket's buffer fills, and the peer's `tell` blocks: a
//! peer that tells faster than it is listened to is slowed down, not
//! buffered without end. Two cases lift the bound, since waiting for room
//! could then never end: the parent waits for the process to end
//! ([`Inbox::unbound`]), or the child has exited (what it sent is all there
//! is).
//!
//! Listeners block ([`Inbox::listen`]) or poll ([`Inbox::poll_pop`]); a
//! message leaves the queue only when handed to a listener, so a listening
//! future dropped while pending never loses one.

use crate::error::{Error, Result};
use crate::sys::kick::Kick;
use crate::wakers::{self, Wakers};
use crate::wire::{Frame, Reader};
use std::collections::VecDeque;
use std::os::fd::BorrowedFd;
use std::sync::{Condvar, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

/// What one queued message costs beyond its payload (the frame, the
/// queue's slot), counted so that a million empty messages are bounded too.
const OVERHEAD: usize = 96;

/// The default bound: 8 MiB of messages.
pub(crate) const DEFAULT_LIMIT: usize = 8 << 20;

/// How often the background thread looks whether its lent reader is idle:
/// it takes it back once a whole period passed with the reader idle and
/// untaken. While a listener keeps the reader, the looks space out up to
/// [`LISTENER_LOOK`]. Frames that come while the reader is idle wait in
/// the socket for at most that long and two periods.
pub(crate) const IDLE_RECLAIM: Duration = Duration::from_millis(2);

/// How often a listener reading the socket looks whether the background
/// thread wants the reader back (its life ends, or nobody listens any
/// more). The socket's own end interrupts it sooner.
const LISTENER_LOOK: Duration = Duration::from_millis(50);

/// Where a frame read from the socket goes.
#[derive(Debug)]
pub(crate) enum Route {
    /// A message, for the listener that read it.
    Message(Frame),
    /// Taken care of where it was read.
    Handled,
    /// For the background thread only.
    Pass(Frame),
}

/// What holding the reader until something happened gave (see
/// [`next`]).
#[derive(Debug)]
pub(crate) enum Held {
    Frame(Frame),
    /// Someone else wants the reader.
    Kicked,
    /// The other descriptor given became readable.
    Woken,
    Timeout,
    /// The socket closed (`Error::Disconnected`), failed or gave nonsense.
    Failed(Error),
}

/// What the background thread got back (see [`Inbox::reclaim`]).
#[derive(Debug)]
pub(crate) enum Reclaimed {
    Reader(Reader),
    /// A frame a listener read for the background thread.
    Passed(Frame),
    Timeout,
}

/// Where the reader is.
#[derive(Debug)]
enum Slot {
    /// With the background thread (or none is shared).
    Background,
    /// Here, idle.
    Idle(Reader),
    /// With a listener.
    Listener,
}

/// A queue of `TELL` frames with a byte bound, and the socket's reader
/// between the threads that take turns at it.
#[derive(Debug)]
pub(crate) struct Inbox {
    state: Mutex<State>,
    /// A message arrived, the inbox closed, or the reader is free.
    arrived: Condvar,
    /// Room was made, or the bound was lifted.
    room: Condvar,
    /// The reader came back, or a frame was passed to the background.
    returned: Condvar,
    /// Interrupts whoever polls the socket; `None`: no turns (the reader
    /// stays with the background thread).
    kick: Option<Kick>,
    limit: usize,
}

#[derive(Debug)]
struct State {
    frames: VecDeque<Frame>,
    bytes: usize,
    /// No more messages will come.
    closed: bool,
    /// The bound no longer applies.
    unbounded: bool,
    /// Tasks waiting for a message or the close.
    wakers: Wakers,
    slot: Slot,
    /// Frames a listener read that only the background thread handles.
    passed: VecDeque<Frame>,
    /// The background thread is to take the reader back now.
    recall: bool,
    /// How many turns listeners took at the reader.
    turns: u64,
    /// Listeners that kicked the background thread for the reader.
    wanting: usize,
    /// Threads blocked on `arrived`.
    listening: usize,
    /// The background thread is blocked on `returned`.
    reclaiming: bool,
    /// The background thread is blocked on `room`.
    full: bool,
}

fn cost(f: &Frame) -> usize {
    f.payload.len() + OVERHEAD
}

/// What a listener's turn at the reader gave.
enum Turn {
    Message(Frame),
    Timeout,
    /// The background thread is to have the reader: it asked for it, a
    /// frame is for it, or the socket failed.
    Back,
}

impl Inbox {
    /// An empty inbox holding up to `limit` bytes of messages.
    pub(crate) fn new(limit: usize) -> Inbox {
        Inbox {
            state: Mutex::new(State {
                frames: VecDeque::new(),
                bytes: 0,
                closed: false,
                unbounded: false,
                wakers: Wakers::default(),
                slot: Slot::Background,
                passed: VecDeque::new(),
                recall: false,
                turns: 0,
                wanting: 0,
                listening: 0,
                reclaiming: false,
                full: false,
            }),
            arrived: Condvar::new(),
            room: Condvar::new(),
            returned: Condvar::new(),
            // Without a descriptor to spare, listeners wait for the
            // background thread, as they always may.
            kick: Kick::new().ok(),
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
        let notify = s.listening > 0;
        drop(s);
        if notify {
            self.arrived.notify_one();
        }
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
            s.full = true;
            s = self
                .room
                .wait_timeout(s, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
            s.full = false;
        }
    }

    /// Lifts the bound for good. Its owner waits for the end and listens
    /// no more, so the reader goes back to the background thread.
    pub(crate) fn unbound(&self) {
        let mut s = self.lock();
        s.unbounded = true;
        self.recall_locked(&mut s);
        drop(s);
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
    /// arrives or the inbox closes (and has the background thread read).
    pub(crate) fn poll_pop(&self, cx: &mut Context<'_>) -> Poll<Result<Frame>> {
        let mut s = self.lock();
        if let Some(f) = self.take(&mut s) {
            return Poll::Ready(Ok(f));
        }
        if s.closed {
            return Poll::Ready(Err(Error::Disconnected));
        }
        s.wakers.register(cx.waker());
        self.recall_locked(&mut s);
        Poll::Pending
    }

    fn take(&self, s: &mut State) -> Option<Frame> {
        let f = s.frames.pop_front()?;
        s.bytes -= cost(&f);
        if s.frames.is_empty() && s.frames.capacity() > 1024 {
            // A burst is over: give its memory back.
            s.frames = VecDeque::new();
        }
        if s.full {
            self.room.notify_one();
        }
        Some(f)
    }

    /// Waits on `arrived` until `deadline`; `true` with the guard if the
    /// deadline had already passed (nothing was waited for).
    fn wait_arrived<'a>(
        &self,
        mut s: MutexGuard<'a, State>,
        deadline: Option<Instant>,
    ) -> (MutexGuard<'a, State>, bool) {
        let left = match deadline.map(|d| d.saturating_duration_since(Instant::now())) {
            Some(left) if left.is_zero() => return (s, true),
            other => other,
        };
        s.listening += 1;
        let mut s = match left {
            None => self.arrived.wait(s).unwrap_or_else(|p| p.into_inner()),
            Some(left) => {
                self.arrived
                    .wait_timeout(s, left)
                    .unwrap_or_else(|p| p.into_inner())
                    .0
            }
        };
        s.listening -= 1;
        (s, false)
    }

    /// The next message, waiting until `deadline` (for ever if `None`):
    /// from the queue, or read from the socket by this thread when the
    /// reader is free (`route` sorts what it reads). `Ok(None)` on timeout;
    /// `Err(Disconnected)` once closed and empty.
    pub(crate) fn listen(
        &self,
        deadline: Option<Instant>,
        route: &mut dyn FnMut(Frame) -> Route,
    ) -> Result<Option<Frame>> {
        let mut s = self.lock();
        // Whether this thread counts among those that kicked for the reader.
        let mut wants = false;
        let result = loop {
            if let Some(f) = self.take(&mut s) {
                break Ok(Some(f));
            }
            if s.closed {
                break Err(Error::Disconnected);
            }
            match (&self.kick, &s.slot) {
                (Some(_), Slot::Idle(..)) if !s.recall => {
                    let Slot::Idle(mut reader) = std::mem::replace(&mut s.slot, Slot::Listener)
                    else {
                        unreachable!("matched above")
                    };
                    s.turns += 1;
                    if wants {
                        s.wanting -= 1;
                        wants = false;
                    }
                    drop(s);
                    // The queue was empty, and only the reader's holder
                    // adds to it: what this thread reads comes next.
                    let turn = self.turn(&mut reader, deadline, route);
                    s = self.lock();
                    let back = matches!(turn, Turn::Back);
                    self.put_idle(&mut s, reader, back);
                    match turn {
                        Turn::Message(f) => break Ok(Some(f)),
                        Turn::Timeout => break Ok(None),
                        Turn::Back => continue,
                    }
                }
                // A look without waiting is no reason to interrupt it.
                (Some(kick), Slot::Background) if !wants => {
                    if deadline.is_some_and(|d| d <= Instant::now()) {
                        break Ok(None);
                    }
                    s.wanting += 1;
                    wants = true;
                    kick.kick();
                }
                // No turns, another listener reads, the background thread
                // is to take the reader back, or it was asked for: wait
                // for what is queued, or for the reader.
                _ => {}
            }
            let (g, passed) = self.wait_arrived(s, deadline);
            s = g;
            if passed {
                break Ok(None);
            }
        };
        if wants {
            s.wanting -= 1;
        }
        result
    }

    /// A listener's turn at the reader: reads until a message, the
    /// deadline, or a reason to hand the reader to the background thread.
    fn turn(
        &self,
        reader: &mut Reader,
        deadline: Option<Instant>,
        route: &mut dyn FnMut(Frame) -> Route,
    ) -> Turn {
        loop {
            // The socket alone, as a bare reader would, blocking in the
            // receive itself while the deadline is far; a look at whether
            // the reader is wanted back every `LISTENER_LOOK`.
            let far = deadline
                .is_none_or(|d| d.saturating_duration_since(Instant::now()) > LISTENER_LOOK);
            let held = if far && reader.is_stepped() {
                match reader.read_step() {
                    Ok(Some(f)) => Held::Frame(f),
                    Ok(None) => Held::Timeout,
                    Err(e) => Held::Failed(e),
                }
            } else {
                let step = Instant::now().checked_add(LISTENER_LOOK);
                let until = match (deadline, step) {
                    (Some(d), Some(s)) => Some(d.min(s)),
                    (d, s) => d.or(s),
                };
                next(reader, None, until, None)
            };
            match held {
                Held::Frame(f) => match route(f) {
                    Route::Message(f) => return Turn::Message(f),
                    Route::Handled => {}
                    Route::Pass(f) => {
                        let mut s = self.lock();
                        s.passed.push_back(f);
                        s.recall = true;
                        return Turn::Back;
                    }
                },
                Held::Kicked | Held::Woken | Held::Timeout => {
                    if self.lock().recall {
                        return Turn::Back;
                    }
                    if deadline.is_some_and(|d| Instant::now() >= d) {
                        return Turn::Timeout;
                    }
                }
                // The background thread reads the same end or error again
                // and acts on it.
                Held::Failed(_) => {
                    self.lock().recall = true;
                    return Turn::Back;
                }
            }
        }
    }

    /// Leaves the reader idle here, waking the background thread if it is
    /// to take it (`back`, or asked for) or another listener waiting.
    fn put_idle(&self, s: &mut State, reader: Reader, back: bool) {
        s.slot = Slot::Idle(reader);
        s.recall |= back;
        if s.recall {
            if s.reclaiming {
                self.returned.notify_one();
            }
        } else if s.listening > 0 {
            self.arrived.notify_all();
        }
    }

    /// Has the background thread take the reader back at once if it is
    /// idle or with a listener: a task awaits a message, or the owner
    /// waits for the end, and neither reads the socket.
    fn recall_locked(&self, s: &mut State) {
        match s.slot {
            Slot::Background => {}
            Slot::Idle(..) => {
                s.recall = true;
                if s.reclaiming {
                    self.returned.notify_one();
                }
            }
            // It comes back once its listener has a message.
            Slot::Listener => s.recall = true,
        }
    }

    /// For the background thread, whose reader is out: waits until it
    /// comes back (idle for [`IDLE_RECLAIM`], or handed back) or a frame is
    /// passed, at most until `until`.
    pub(crate) fn reclaim(&self, until: Option<Instant>) -> Reclaimed {
        let mut s = self.lock();
        // The turns counted when the reader was last seen idle.
        let mut seen = None;
        // How long until the next look: a listener that keeps the reader
        // for long is looked at less and less often.
        let mut period = IDLE_RECLAIM;
        loop {
            if let Some(f) = s.passed.pop_front() {
                return Reclaimed::Passed(f);
            }
            match &s.slot {
                Slot::Idle(_) if s.recall || seen == Some(s.turns) => {
                    let Slot::Idle(reader) = std::mem::replace(&mut s.slot, Slot::Background)
                    else {
                        unreachable!("matched above")
                    };
                    s.recall = false;
                    return Reclaimed::Reader(reader);
                }
                Slot::Idle(_) => {
                    seen = Some(s.turns);
                    period = IDLE_RECLAIM;
                }
                Slot::Listener => {
                    seen = None;
                    period = (period * 2).min(LISTENER_LOOK);
                }
                // Not lent: nothing to wait for.
                Slot::Background => return Reclaimed::Timeout,
            }
            let now = Instant::now();
            if until.is_some_and(|u| now >= u) {
                return Reclaimed::Timeout;
            }
            let left = until.map_or(period, |u| (u - now).min(period));
            s.reclaiming = true;
            s = self
                .returned
                .wait_timeout(s, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
            s.reclaiming = false;
        }
    }

    /// For the background thread: takes the reader back wherever it is,
    /// interrupting a listener that reads it; `None` if it is not lent.
    /// Frames passed and not yet taken are dropped (the life they came
    /// from is over).
    pub(crate) fn recall_now(&self) -> Option<Reader> {
        let mut s = self.lock();
        s.passed.clear();
        if matches!(s.slot, Slot::Background) {
            return None;
        }
        s.recall = true;
        drop(s);
        loop {
            match self.reclaim(None) {
                Reclaimed::Reader(r) => {
                    self.lock().passed.clear();
                    return Some(r);
                }
                Reclaimed::Passed(_) => {}
                Reclaimed::Timeout => return None,
            }
        }
    }

    /// For the background thread, kicked while it held the reader: lends it
    /// to the listeners if one asked for it, or gives it back.
    pub(crate) fn offer(&self, mut reader: Reader) -> std::result::Result<(), Reader> {
        let mut s = self.lock();
        if s.wanting == 0 || s.closed || self.kick.is_none() {
            return Err(reader);
        }
        // A listener blocks in the receive itself; without the timeout
        // that brings it back, it polls.
        let _ = reader.set_step(LISTENER_LOOK);
        s.slot = Slot::Idle(reader);
        s.recall = false;
        drop(s);
        self.arrived.notify_all();
        Ok(())
    }

    /// What interrupts the holder of the reader, for the background
    /// thread to give to [`next`].
    pub(crate) fn kick(&self) -> Option<&Kick> {
        self.kick.as_ref()
    }
}

/// Waits, holding `reader`, for its next frame, a kick (drained: the
/// caller checks why it came), `wake` readable, or `until`.
pub(crate) fn next(
    reader: &mut Reader,
    kick: Option<&Kick>,
    until: Option<Instant>,
    wake: Option<BorrowedFd<'_>>,
) -> Held {
    loop {
        if !reader.has_frame() {
            let mut fds = vec![reader.fd()];
            fds.extend(kick.map(Kick::fd));
            let wake_at = wake.map(|w| {
                fds.push(w);
                fds.len() - 1
            });
            let ready = match crate::sys::sock::poll(&fds, until) {
                Ok(r) => r,
                Err(e) => return Held::Failed(Error::Io(e)),
            };
            if let Some(k) = kick.filter(|_| ready[1].readable) {
                k.drain();
                return Held::Kicked;
            }
            if wake_at.is_some_and(|i| ready[i].readable) {
                return Held::Woken;
            }
            if !ready[0].readable {
                if until.is_some_and(|u| Instant::now() >= u) {
                    return Held::Timeout;
                }
                continue;
            }
        }
        match reader.read_ready() {
            Ok(Some(f)) => return Held::Frame(f),
            Ok(None) => {}
            Err(e) => return Held::Failed(e),
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

    fn pop(inbox: &Inbox, deadline: Option<Instant>) -> Result<Option<Frame>> {
        inbox.listen(deadline, &mut Route::Message)
    }

    #[test]
    fn bound_holds_until_room_is_made() {
        let inbox = Inbox::new(1000);
        inbox.push(frame(500));
        assert!(inbox.wait_room(Some(Instant::now())));
        inbox.push(frame(500));
        // 1000 + 2 * OVERHEAD bytes queued: full.
        assert!(!inbox.wait_room(Some(Instant::now())));
        assert_eq!(pop(&inbox, None).unwrap().unwrap().payload.len(), 500);
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
        assert!(pop(&inbox, None).unwrap().is_some());
        assert!(pop(&inbox, None).unwrap().is_some());
        assert!(matches!(pop(&inbox, None), Err(Error::Disconnected)));
        assert!(matches!(
            pop(&inbox, Some(Instant::now())),
            Err(Error::Disconnected)
        ));
    }

    #[test]
    fn pop_times_out_empty() {
        let inbox = Inbox::new(10);
        assert!(pop(&inbox, Some(Instant::now())).unwrap().is_none());
    }

    #[test]
    fn a_waiting_reader_is_woken_by_a_pop() {
        let inbox = std::sync::Arc::new(Inbox::new(10));
        inbox.push(frame(100));
        let i = inbox.clone();
        let t = std::thread::spawn(move || i.wait_room(None));
        assert!(pop(&inbox, None).unwrap().is_some());
        assert!(t.join().unwrap());
    }
}
