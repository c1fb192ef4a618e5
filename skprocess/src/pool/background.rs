//! Calls that run while their caller goes on: [`Background`] (one result,
//! also a future) and [`ImapStream`] (the items of an `imap`, a stream).
//!
//! Both are one mechanism: a thread of the call's own drives the run (reads
//! the input as workers need items, collects the replies) and puts what it
//! gets in a [`Mailbox`]; the caller takes it out by blocking (with or
//! without a deadline) or by polling. A poll that finds nothing leaves its
//! waker in the mailbox, and the call's thread wakes it as it puts the next
//! value: no runtime is needed, and the polling thread never blocks.

use super::dispatch::{Counts, Run, Stopper};
use super::imap::Imap;
use super::source::Source;
use crate::error::{Error, Result};
use crate::Process;
use std::collections::VecDeque;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

/// Values handed from a call's thread to its caller.
#[derive(Debug)]
struct Mailbox<T> {
    state: Mutex<State<T>>,
    changed: Condvar,
    /// Most values held before the call's thread waits for the caller.
    capacity: usize,
}

#[derive(Debug)]
struct State<T> {
    queue: VecDeque<T>,
    /// The call's thread has put its last value.
    finished: bool,
    /// The caller is gone: nothing more is wanted.
    left: bool,
    /// Values put so far.
    put: usize,
    waker: Option<Waker>,
}

/// What [`Mailbox::take_by`] found.
enum Took<T> {
    Value(T),
    /// Every value has been taken.
    Finished,
    /// Nothing came before the deadline.
    Waiting,
}

impl<T> Mailbox<T> {
    fn new(capacity: usize) -> Self {
        Mailbox {
            state: Mutex::new(State {
                queue: VecDeque::new(),
                finished: false,
                left: false,
                put: 0,
                waker: None,
            }),
            changed: Condvar::new(),
            capacity: capacity.max(1),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State<T>> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Wakes a blocked caller and a polling one.
    fn notify(&self, mut state: MutexGuard<'_, State<T>>) {
        let waker = state.waker.take();
        drop(state);
        self.changed.notify_all();
        if let Some(w) = waker {
            w.wake();
        }
    }

    /// Puts a value, waiting while the mailbox is full; `false` if the
    /// caller has left.
    fn put(&self, value: T) -> bool {
        let mut state = self.lock();
        while state.queue.len() >= self.capacity && !state.left {
            state = self.changed.wait(state).unwrap_or_else(|p| p.into_inner());
        }
        if state.left {
            return false;
        }
        state.queue.push_back(value);
        state.put += 1;
        self.notify(state);
        true
    }

    /// No more values will come.
    fn finish(&self) {
        let mut state = self.lock();
        state.finished = true;
        self.notify(state);
    }

    /// The caller is gone.
    fn leave(&self) {
        let mut state = self.lock();
        state.left = true;
        state.queue.clear();
        drop(state);
        self.changed.notify_all();
    }

    /// Whether the last value has been put.
    fn is_finished(&self) -> bool {
        self.lock().finished
    }

    /// Whether a value has been put (for a mailbox of one value: whether
    /// it came, even if its thread has not finished yet).
    fn has_value_come(&self) -> bool {
        let state = self.lock();
        state.finished || state.put > 0
    }

    /// Takes the next value, waiting until `deadline` (forever if `None`).
    fn take_by(&self, deadline: Option<Instant>) -> Took<T> {
        let mut state = self.lock();
        loop {
            if let Some(v) = state.queue.pop_front() {
                drop(state);
                // Room for the call's thread.
                self.changed.notify_all();
                return Took::Value(v);
            }
            if state.finished {
                return Took::Finished;
            }
            state = match deadline {
                None => self.changed.wait(state).unwrap_or_else(|p| p.into_inner()),
                Some(d) => {
                    let left = d.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return Took::Waiting;
                    }
                    self.changed
                        .wait_timeout(state, left)
                        .unwrap_or_else(|p| p.into_inner())
                        .0
                }
            };
        }
    }

    /// Takes the next value if there is one (`Ready(None)` once every
    /// value has been taken); else leaves `cx`'s waker to be woken when
    /// one comes.
    fn poll_take(&self, cx: &mut Context<'_>) -> Poll<Option<T>> {
        let mut state = self.lock();
        if let Some(v) = state.queue.pop_front() {
            drop(state);
            self.changed.notify_all();
            return Poll::Ready(Some(v));
        }
        if state.finished {
            return Poll::Ready(None);
        }
        match &mut state.waker {
            Some(w) => w.clone_from(cx.waker()),
            None => state.waker = Some(cx.waker().clone()),
        }
        Poll::Pending
    }
}

/// Runs `work` on a thread of its own, putting what it returns (or an
/// error, if it panicked) and then finishing the mailbox.
fn drive<T: Send + 'static>(
    mailbox: Arc<Mailbox<T>>,
    on_panic: impl FnOnce(Error) -> T + Send + 'static,
    work: impl FnOnce(&Mailbox<T>) + Send + 'static,
) -> Result<()> {
    let box2 = mailbox.clone();
    std::thread::Builder::new()
        .name("skprocess-pool-call".into())
        .spawn(move || {
            let done = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| work(&box2)));
            if let Err(p) = done {
                let what = p
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| p.downcast_ref::<String>().cloned())
                    .unwrap_or_default();
                box2.put(on_panic(Error::Usage(format!(
                    "a background pool call panicked: {what}"
                ))));
            }
            box2.finish();
        })
        .map(drop)
        .map_err(|e| {
            mailbox.finish();
            Error::Spawn(e)
        })
}

/// A pool call running in the background, made by [`Pool::background`]
/// (and [`PoolCall::background`]), or the future of
/// [`Pool::map_async`] and [`Pool::map_fn_async`].
///
/// Its items run in the pool's workers, alongside any other calls, while
/// the caller goes on; a thread of the call's own reads the input as the
/// workers need items and gathers the results. Take the result with
/// [`wait`](Background::wait), [`wait_timeout`](Background::wait_timeout),
/// or `.await` (it is a [`Future`], so `IntoFuture` too; it needs no
/// runtime: the call's thread wakes the task that awaits it).
///
/// [`cancel`](Background::cancel) stops it at once: its items running are
/// killed (their workers replaced; the pool stays usable) and those not
/// started never run; the call's result is then [`Error::Cancelled`].
/// **Dropping a `Background` whose result has not come cancels it the same
/// way**: keep it for as long as the call is to run.
///
/// A background call on a pool that is dropped ends with an error: the
/// pool's workers are gone.
///
/// [`Pool::background`]: super::Pool::background
/// [`PoolCall::background`]: super::PoolCall::background
/// [`Pool::map_async`]: super::Pool::map_async
/// [`Pool::map_fn_async`]: super::Pool::map_fn_async
///
/// # Examples
///
/// ```
/// # fn main() -> skprocess::Result<()> {
/// let pool = skprocess::Pool::new(2)?;
/// let bg = pool.background().map_fn(|x: u64| x * 2, 0..100u64);
/// // ... the caller goes on ...
/// let (done, total) = bg.progress();
/// assert!(done <= total);
/// let v = bg.wait()?;
/// assert_eq!(v[99], 198);
/// # Ok(())
/// # }
/// ```
#[must_use = "dropping a Background cancels its call"]
pub struct Background<T> {
    mailbox: Arc<Mailbox<Result<T>>>,
    stopper: Option<Stopper>,
    counts: Arc<Counts>,
}

impl<T> fmt::Debug for Background<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Background")
            .field("progress", &self.progress())
            .field("finished", &self.is_finished())
            .finish()
    }
}

/// The error of a result asked for again.
fn already_taken() -> Error {
    Error::usage("the result of this background call was already returned")
}

/// Starts collecting `run` with `collect` on a thread of its own.
pub(crate) fn spawn<S, T>(
    mut run: Run<S>,
    collect: impl FnOnce(Run<S>) -> Result<T> + Send + 'static,
) -> Background<T>
where
    S: Source + Send + 'static,
    T: Send + 'static,
{
    let mailbox = Arc::new(Mailbox::new(1));
    let stopper = run.stopper();
    let counts = run.counts();
    let started = drive(mailbox.clone(), Err, move |mailbox| {
        mailbox.put(collect(run));
    });
    match started {
        Ok(()) => Background {
            mailbox,
            stopper: Some(stopper),
            counts,
        },
        Err(e) => Background::ready(Err(e)),
    }
}

impl<T> Background<T> {
    /// A call that ended before it started.
    pub(crate) fn ready(result: Result<T>) -> Self {
        let mailbox = Arc::new(Mailbox::new(1));
        mailbox.put(result);
        mailbox.finish();
        Background {
            mailbox,
            stopper: None,
            counts: Arc::default(),
        }
    }

    /// Waits for the call to end and returns its result.
    ///
    /// # Errors
    ///
    /// The call's error: as the same call made in the foreground, or
    /// [`Error::CallTimeout`] past its time limit, or [`Error::Cancelled`];
    /// [`Error::Usage`] if [`wait_timeout`](Background::wait_timeout) has
    /// returned the result already.
    pub fn wait(self) -> Result<T> {
        match self.mailbox.take_by(None) {
            Took::Value(r) => r,
            Took::Finished | Took::Waiting => Err(already_taken()),
        }
    }

    /// Waits at most `timeout` for the call to end: `Ok(None)` if it has
    /// not (it goes on), else its result, which is then taken: ask only
    /// once it is `Some`.
    ///
    /// # Errors
    ///
    /// As [`wait`](Background::wait).
    pub fn wait_timeout(&self, timeout: Duration) -> Result<Option<T>> {
        let deadline = Instant::now().checked_add(timeout);
        match self.mailbox.take_by(deadline) {
            Took::Value(r) => r.map(Some),
            Took::Waiting => Ok(None),
            Took::Finished => Err(already_taken()),
        }
    }

    /// Whether the call has ended (its result is ready, or was taken).
    pub fn is_finished(&self) -> bool {
        self.mailbox.has_value_come()
    }

    /// `(done, total)`: the items that have ended, and the items of the
    /// call. When the input does not tell its exact length
    /// (`size_hint`), the total counts the items read from it so far,
    /// which grows as workers take items until the input is read to its
    /// end; then it is final. A `map_fn` item counts once its batch has
    /// ended.
    pub fn progress(&self) -> (usize, usize) {
        self.counts.get()
    }

    /// Whether `total` in [`progress`](Background::progress) is final:
    /// the input has been read to its end.
    pub fn total_known(&self) -> bool {
        self.counts.input_read()
    }

    /// Stops the call at once: its items running are killed (the pool
    /// replaces those workers), those not started never run, and the
    /// result is [`Error::Cancelled`]. Nothing if the call has ended.
    ///
    /// # Examples
    ///
    /// ```
    /// # use serde::{Deserialize, Serialize};
    /// # use skprocess::prelude::*;
    /// #[derive(Process, Serialize, Deserialize, Debug)]
    /// #[process(runs = 1)]
    /// struct Nap;
    /// impl Process for Nap {
    ///     fn run(&mut self, _ctx: &mut Ctx) -> HookResult {
    ///         std::thread::sleep(std::time::Duration::from_secs(30));
    ///         Ok(())
    ///     }
    /// }
    ///
    /// # fn main() -> skprocess::Result<()> {
    /// let pool = Pool::new(1)?;
    /// let bg = pool.background().map([Nap, Nap]);
    /// bg.cancel();
    /// assert!(bg.wait().unwrap_err().is_cancelled());
    /// // The pool goes on, with a fresh worker.
    /// assert_eq!(pool.map_fn(|x: u8| x + 1, [1])?, [2]);
    /// # Ok(())
    /// # }
    /// ```
    pub fn cancel(&self) {
        if let Some(s) = &self.stopper {
            s.cancel();
        }
    }
}

impl<T> Drop for Background<T> {
    fn drop(&mut self) {
        if !self.mailbox.has_value_come() {
            self.cancel();
        }
        self.mailbox.leave();
    }
}

impl<T> Future for Background<T> {
    type Output = Result<T>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<T>> {
        self.mailbox
            .poll_take(cx)
            .map(|r| r.unwrap_or_else(|| Err(already_taken())))
    }
}

/// The stream of [`Pool::imap_async`] and [`Pool::unordered_imap_async`]:
/// one `Result` per item, as [`Imap`] yields them, as a
/// [`futures_core::Stream`].
///
/// A thread of the call's own drives the `imap` and keeps a few results
/// ready (about two per worker); it waits while they are not taken, so the
/// input is still read as the stream is consumed. Polling never blocks.
/// Dropping the stream skips the items not started (as dropping an
/// [`Imap`] does).
///
/// [`Pool::imap_async`]: super::Pool::imap_async
/// [`Pool::unordered_imap_async`]: super::Pool::unordered_imap_async
pub struct ImapStream<P> {
    mailbox: Arc<Mailbox<Result<P>>>,
}

impl<P> fmt::Debug for ImapStream<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ImapStream")
            .field("finished", &self.mailbox.is_finished())
            .finish()
    }
}

/// Drives `imap` on a thread of its own, as a stream.
pub(crate) fn stream<P, I>(imap: Imap<'static, P, I>, workers: usize) -> ImapStream<P>
where
    P: Process + Send + 'static,
    I: Iterator<Item = P> + Send + 'static,
{
    let mailbox = Arc::new(Mailbox::new(2 * workers));
    let started = drive(mailbox.clone(), Err, move |mailbox| {
        for r in imap {
            if !mailbox.put(r) {
                break;
            }
        }
    });
    if let Err(e) = started {
        mailbox.put(Err(e));
    }
    ImapStream { mailbox }
}

impl<P> futures_core::Stream for ImapStream<P> {
    type Item = Result<P>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<P>>> {
        self.mailbox.poll_take(cx)
    }
}

impl<P> Drop for ImapStream<P> {
    fn drop(&mut self) {
        self.mailbox.leave();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::task::Wake;

    struct Count(AtomicUsize);
    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn a_poll_that_finds_nothing_is_woken_by_the_next_value() {
        let count = Arc::new(Count(AtomicUsize::new(0)));
        let waker = Waker::from(count.clone());
        let mut cx = Context::from_waker(&waker);
        let mailbox = Arc::new(Mailbox::new(1));
        assert!(mailbox.poll_take(&mut cx).is_pending());
        assert_eq!(count.0.load(Ordering::SeqCst), 0);
        let sender = mailbox.clone();
        std::thread::spawn(move || {
            assert!(sender.put(7));
            sender.finish();
        })
        .join()
        .unwrap();
        assert_eq!(count.0.load(Ordering::SeqCst), 1);
        assert_eq!(mailbox.poll_take(&mut cx), Poll::Ready(Some(7)));
        assert_eq!(mailbox.poll_take(&mut cx), Poll::Ready(None));
    }

    #[test]
    fn a_background_is_finished_once_its_result_came_before_its_thread_ends() {
        // The thread has put the result and not yet marked the end.
        let mailbox = Arc::new(Mailbox::new(1));
        mailbox.put(Ok(5));
        let bg = Background {
            mailbox,
            stopper: None,
            counts: Arc::default(),
        };
        assert!(bg.is_finished());
        assert_eq!(bg.wait_timeout(Duration::ZERO).unwrap(), Some(5));
        assert!(bg.is_finished());
    }

    #[test]
    fn a_full_mailbox_holds_its_sender_until_a_value_is_taken_or_the_caller_leaves() {
        let mailbox = Arc::new(Mailbox::new(1));
        assert!(mailbox.put(1));
        let sender = mailbox.clone();
        let t = std::thread::spawn(move || (sender.put(2), sender.put(3)));
        assert!(matches!(mailbox.take_by(None), Took::Value(1)));
        // The sender put 2 and waits to put 3; leaving frees it.
        let end = Instant::now() + Duration::from_secs(60);
        while mailbox.lock().queue.is_empty() {
            assert!(Instant::now() < end);
            std::thread::yield_now();
        }
        mailbox.leave();
        assert_eq!(t.join().unwrap(), (true, false));
    }
}
