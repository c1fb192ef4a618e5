//! [`Queue<T>`]: a bounded queue of typed items that any number of
//! processes push to and pop from. The guarantees are documented on
//! [`Queue`]; the storage (a sealed memfd with a robust lock in its header)
//! is `sys::locked`.

use crate::error::{shared_memory_error, Error, Result};
use crate::share::tag;
use crate::sys::futex;
use crate::sys::locked::{LockedGuard, LockedRegion};
use crate::wire;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::io;
use std::marker::PhantomData;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// `b"SKQUEUE1"` as a little-endian word: what a queue's memory holds.
const MAGIC: u64 = u64::from_le_bytes(*b"SKQUEUE1");

/// The default capacity: 1 MiB of items.
const DEFAULT_CAPACITY: usize = 1 << 20;

/// The smallest capacity accepted.
const MIN_CAPACITY: usize = 64;

/// Bytes before each item in the ring: its encoded length.
const PREFIX: usize = 4;

// Control words (under the lock, except `CLOSED`).
/// Bytes of the ring (equal to the region's data length).
const W_CAP: usize = 0;
/// Bytes ever popped: where the oldest item starts (modulo the capacity).
const W_HEAD: usize = 1;
/// Bytes ever pushed: where the next item goes (modulo the capacity).
const W_TAIL: usize = 2;
/// Items between head and tail.
const W_COUNT: usize = 3;
/// Non-zero once closed.
const W_CLOSED: usize = 4;

// Futex words.
/// Bumped after every push and on close: consumers sleep on it.
const F_ITEMS: usize = 0;
/// Bumped after every pop and on close: producers sleep on it.
const F_SPACE: usize = 1;
/// Consumers asleep (or about to be) on `F_ITEMS`.
const F_POP_WAITERS: usize = 2;
/// Producers asleep (or about to be) on `F_SPACE`.
const F_PUSH_WAITERS: usize = 3;

/// The longest a waiter sleeps before it looks at the queue again, whatever
/// woke it or not: a wake-up meant for a process that died before acting on
/// it delays others by at most this.
const SLICE: Duration = Duration::from_millis(100);

/// How long a call waits for the queue's lock beyond its own deadline
/// (see `Queue::locked`).
const LOCK_GRACE: Duration = Duration::from_millis(100);

/// Looks at the word a waiter waits on before it sleeps (bounded: a few
/// microseconds).
const SPINS: u32 = 2_000;

thread_local! {
    /// This thread's buffer for encoding items to push.
    static SCRATCH: std::cell::Cell<Vec<u8>> = const { std::cell::Cell::new(Vec::new()) };
}

/// A bounded queue of `T` shared by every process that holds a clone:
/// many producers and many consumers, in any processes.
///
/// Items are encoded with postcard (as messages are) into a ring of bytes
/// in shared memory; the queue is bounded by those bytes
/// ([`Queue::new`]: 1 MiB, [`Queue::with_capacity`]: any size), not by a
/// number of items. Each item is delivered to exactly one consumer, in the
/// order items were pushed. The handle is cheap to clone and is
/// `Serialize + Deserialize`: it travels as a field of a process, a message
/// or a pool item (as a descriptor), and every copy is the same queue.
///
/// # Blocking and waking
///
/// [`push`](Queue::push) waits while the queue is too full for the item,
/// [`pop`](Queue::pop) while it is empty; both sleep in the kernel (a futex
/// on a counter in the shared memory) and are woken by the pop or push that
/// lets them go on. Every variant with a timeout returns by its deadline.
/// Waiters are served in turn: the lock over the queue is fair across
/// processes, so no consumer starves while others keep popping.
///
/// [`close`](Queue::close) ends the queue for everyone: pushes fail with
/// [`Error::Disconnected`], pops still get the items left and then fail with
/// [`Error::Disconnected`] too; every waiter wakes at once.
///
/// # Delivery is at most once
///
/// Every change to the queue is made under a robust cross-process lock. A
/// push writes the item's bytes first and makes them visible with one
/// store; a pop copies the item out and then removes it with one store. So
/// a process killed at any moment (even `SIGKILL` inside `push` or `pop`)
/// leaves the queue consistent: its unfinished push is simply not there,
/// its unfinished pop leaves the item for another consumer, and no item is
/// ever torn or delivered twice. The next process to take the lock carries
/// on at once.
///
/// But a consumer that dies *after* [`pop`](Queue::pop) returned has the
/// only copy of that item, which is then lost. When every item must be
/// processed, use a [`Pool`](crate::Pool), which gives the item of a worker
/// that died to another worker.
///
/// # Limits
///
/// - An item whose encoding is larger than the queue's capacity can never
///   fit: pushing it is an [`Error::Encode`] at once.
/// - Items cannot hold a [`Share`](crate::Share), a pipe endpoint or
///   another queue (descriptors cannot live in shared memory).
/// - The queue's memory (an anonymous memfd, never a file in `/dev/shm`)
///   is freed when the last process holding a handle drops it or ends.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// # fn main() -> skprocess::Result<()> {
/// let q: skprocess::Queue<String> = skprocess::Queue::new()?;
/// q.push(&"one".to_string())?;
/// assert!(q.try_push(&"two".to_string())?);
/// assert_eq!(q.len(), 2);
/// assert_eq!(q.pop()?, "one");
/// assert_eq!(q.pop_timeout(Duration::from_millis(10))?.as_deref(), Some("two"));
/// assert_eq!(q.try_pop()?, None);
/// q.close();
/// assert!(q.pop().unwrap_err().is_disconnected());
/// # Ok(())
/// # }
/// ```
pub struct Queue<T> {
    region: Arc<LockedRegion>,
    _items: PhantomData<fn(T) -> T>,
}

/// The queue's counters, read under the lock and checked.
#[derive(Clone, Copy, Debug)]
struct Ring {
    cap: u64,
    head: u64,
    tail: u64,
}

impl Ring {
    fn used(&self) -> u64 {
        self.tail - self.head
    }
}

fn corrupt(what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("the queue's memory is corrupt: {what}"),
    )
}

/// How a push attempt under the lock ended.
enum Pushed {
    Done,
    Full,
}

/// How a pop attempt under the lock ended.
enum Popped {
    /// An item's bytes, and whether items are left.
    Item(Vec<u8>, bool),
    Empty,
}

impl<T: Serialize + DeserializeOwned> Queue<T> {
    /// A new, empty queue with 1 MiB of room for encoded items.
    ///
    /// # Errors
    ///
    /// If the shared memory cannot be allocated.
    pub fn new() -> Result<Self> {
        Self::with_capacity(DEFAULT_CAPACITY)
    }

    /// A new, empty queue with room for `bytes` bytes of encoded items (each
    /// item also takes 4 bytes for its length).
    ///
    /// # Errors
    ///
    /// If `bytes` is below 64, or the shared memory cannot be allocated.
    ///
    /// # Examples
    ///
    /// ```
    /// # fn main() -> skprocess::Result<()> {
    /// let q = skprocess::Queue::<u64>::with_capacity(64 << 10)?;
    /// assert_eq!(q.capacity(), 64 << 10);
    /// # Ok(())
    /// # }
    /// ```
    pub fn with_capacity(bytes: usize) -> Result<Self> {
        if bytes < MIN_CAPACITY {
            return Err(Error::usage(format!(
                "a Queue needs a capacity of at least {MIN_CAPACITY} bytes, not {bytes}"
            )));
        }
        let region = LockedRegion::create(c"skprocess-queue", MAGIC, tag::<T>(), bytes, |r| {
            r.word(W_CAP).store(bytes as u64, Ordering::Relaxed)
        })
        .map_err(sys_error::<T>)?;
        Ok(Queue {
            region: Arc::new(region),
            _items: PhantomData,
        })
    }

    /// Adds `item` at the back, waiting as long as the queue is too full
    /// for it.
    ///
    /// # Errors
    ///
    /// [`Error::Disconnected`] once the queue is closed; [`Error::Encode`]
    /// if the item cannot be encoded or can never fit.
    pub fn push(&self, item: &T) -> Result<()> {
        self.push_until(item, None).map(drop)
    }

    /// Adds `item` if there is room now: `Ok(false)` if the queue is full.
    /// Does not wait for room (only, briefly, for another process to finish
    /// its own push or pop).
    ///
    /// # Errors
    ///
    /// As [`push`](Queue::push).
    pub fn try_push(&self, item: &T) -> Result<bool> {
        self.push_until(item, Some(Instant::now()))
    }

    /// Adds `item`, waiting up to `timeout` for room: `Ok(false)` if the
    /// queue stayed full.
    ///
    /// # Errors
    ///
    /// As [`push`](Queue::push).
    pub fn push_timeout(&self, item: &T, timeout: Duration) -> Result<bool> {
        self.push_until(item, Instant::now().checked_add(timeout))
    }

    /// Takes the item at the front, waiting as long as the queue is empty.
    ///
    /// # Errors
    ///
    /// [`Error::Disconnected`] once the queue is closed and empty;
    /// [`Error::Decode`] if the item cannot be decoded as `T` (it is
    /// consumed).
    pub fn pop(&self) -> Result<T> {
        match self.pop_until(None)? {
            Some(item) => Ok(item),
            None => Err(Error::usage("a pop without deadline timed out")),
        }
    }

    /// Takes the item at the front, waiting up to `timeout`: `Ok(None)` if
    /// the queue stayed empty.
    ///
    /// # Errors
    ///
    /// As [`pop`](Queue::pop).
    pub fn pop_timeout(&self, timeout: Duration) -> Result<Option<T>> {
        self.pop_until(Instant::now().checked_add(timeout))
    }

    /// Takes the item at the front if there is one now. Does not wait for
    /// an item (only, briefly, for another process to finish its own push
    /// or pop).
    ///
    /// # Errors
    ///
    /// As [`pop`](Queue::pop).
    pub fn try_pop(&self) -> Result<Option<T>> {
        self.pop_until(Some(Instant::now()))
    }

    fn push_until(&self, item: &T, deadline: Option<Instant>) -> Result<bool> {
        let scratch = SCRATCH.with(|s| s.take());
        let bytes = wire::encode_plain(item, scratch, "a Queue")?;
        let r = self.push_bytes(&bytes, deadline);
        // The buffer is kept for this thread's next push, unless a large
        // item left it big.
        if bytes.capacity() <= 64 << 10 {
            SCRATCH.with(|s| s.set(bytes));
        }
        r
    }

    fn push_bytes(&self, bytes: &[u8], deadline: Option<Instant>) -> Result<bool> {
        let cap = self.capacity();
        if bytes.len() > u32::MAX as usize || bytes.len() + PREFIX > cap {
            return Err(Error::Encode {
                type_name: std::any::type_name::<T>(),
                reason: format!(
                    "the item takes {} bytes and can never fit in a queue of {cap} bytes \
                     (make a larger one with Queue::with_capacity)",
                    bytes.len() + PREFIX
                ),
            });
        }
        let r = &self.region;
        let space = r.futex(F_SPACE);
        loop {
            let seen = space.load(Ordering::SeqCst);
            let Some(g) = self.locked(deadline)? else {
                return Ok(false);
            };
            match self.push_locked(&g, bytes).map_err(sys_error::<T>)? {
                Pushed::Done => {
                    drop(g);
                    r.futex(F_ITEMS).fetch_add(1, Ordering::SeqCst);
                    if r.futex(F_POP_WAITERS).load(Ordering::SeqCst) > 0 {
                        wake(r.futex(F_ITEMS), 1);
                    }
                    return Ok(true);
                }
                Pushed::Full => drop(g),
            }
            if !self.sleep(space, seen, F_PUSH_WAITERS, deadline) {
                return Ok(false);
            }
        }
    }

    fn pop_until(&self, deadline: Option<Instant>) -> Result<Option<T>> {
        let r = &self.region;
        let items = r.futex(F_ITEMS);
        loop {
            let seen = items.load(Ordering::SeqCst);
            let Some(g) = self.locked(deadline)? else {
                self.pass_on_wake();
                return Ok(None);
            };
            match self.pop_locked(&g).map_err(sys_error::<T>)? {
                Popped::Item(bytes, more) => {
                    drop(g);
                    r.futex(F_SPACE).fetch_add(1, Ordering::SeqCst);
                    if r.futex(F_PUSH_WAITERS).load(Ordering::SeqCst) > 0 {
                        wake(r.futex(F_SPACE), u32::MAX);
                    }
                    // Items left and consumers asleep: wake the next one
                    // (a wake-up is one item's worth; this chains them).
                    if more && r.futex(F_POP_WAITERS).load(Ordering::SeqCst) > 0 {
                        wake(items, 1);
                    }
                    return wire::decode(&bytes, Vec::new()).map(Some);
                }
                Popped::Empty => drop(g),
            }
            if !self.sleep(items, seen, F_POP_WAITERS, deadline) {
                self.pass_on_wake();
                return Ok(None);
            }
        }
    }

    /// A consumer that gives up may have been woken for an item it will not
    /// take: hand the wake-up to another sleeping consumer.
    fn pass_on_wake(&self) {
        let r = &self.region;
        if r.word(W_COUNT).load(Ordering::SeqCst) > 0
            && r.futex(F_POP_WAITERS).load(Ordering::SeqCst) > 0
        {
            wake(r.futex(F_ITEMS), 1);
        }
    }
}

impl<T> Queue<T> {
    /// Ends the queue for every process: pushes fail with
    /// [`Error::Disconnected`] from now on, pops take what is left and
    /// then fail the same way. Wakes every waiter. Closing twice is
    /// harmless.
    pub fn close(&self) {
        let r = &self.region;
        r.word(W_CLOSED).store(1, Ordering::SeqCst);
        for f in [F_ITEMS, F_SPACE] {
            r.futex(f).fetch_add(1, Ordering::SeqCst);
            wake(r.futex(f), u32::MAX);
        }
    }

    /// Whether [`close`](Queue::close) was called, in any process.
    pub fn is_closed(&self) -> bool {
        self.region.word(W_CLOSED).load(Ordering::SeqCst) != 0
    }

    /// The number of items in the queue now (others may change it at once).
    pub fn len(&self) -> usize {
        self.region.word(W_COUNT).load(Ordering::SeqCst) as usize
    }

    /// Whether the queue holds no item now.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The room for items, in bytes (each item takes its encoded length
    /// plus 4).
    pub fn capacity(&self) -> usize {
        self.region.data_len()
    }

    /// Takes the lock (until `deadline`), first repairing the item count if
    /// the previous holder died holding it.
    ///
    /// The lock is held only while one item is copied in or out, so even a
    /// call whose deadline has passed (`try_pop`) waits up to
    /// [`LOCK_GRACE`] for it: "the queue is busy" is not "the queue is
    /// empty". A holder stopped with the lock is what this gives up on.
    fn locked(&self, deadline: Option<Instant>) -> Result<Option<LockedGuard<'_>>> {
        let deadline = deadline.map(|d| d.max(Instant::now() + LOCK_GRACE));
        let Some(g) = self.region.lock(deadline).map_err(sys_error::<T>)? else {
            return Ok(None);
        };
        if g.recovered() {
            self.repair(&g).map_err(sys_error::<T>)?;
        }
        Ok(Some(g))
    }

    /// The counters, checked against the ring's size.
    fn ring(&self) -> io::Result<Ring> {
        let r = &self.region;
        let ring = Ring {
            cap: self.capacity() as u64,
            head: r.word(W_HEAD).load(Ordering::Acquire),
            tail: r.word(W_TAIL).load(Ordering::Acquire),
        };
        if ring.tail < ring.head || ring.used() > ring.cap {
            return Err(corrupt("its positions are out of range"));
        }
        Ok(ring)
    }

    /// The length of the item at `pos`, checked to lie inside the used part.
    fn item_len(&self, g: &LockedGuard<'_>, ring: Ring, pos: u64) -> io::Result<u64> {
        let mut le = [0u8; PREFIX];
        let at = (pos % ring.cap) as usize;
        let first = PREFIX.min(ring.cap as usize - at);
        g.copy_out(at, &mut le[..first]);
        g.copy_out(0, &mut le[first..]);
        let len = u64::from(u32::from_le_bytes(le));
        if (pos - ring.head) + PREFIX as u64 + len > ring.used() {
            return Err(corrupt("an item runs past the end"));
        }
        Ok(len)
    }

    /// After a holder died with the lock: counts the items again (it may
    /// have died between moving a position and the count). A push or pop
    /// it had not committed is not there; nothing else needs undoing.
    fn repair(&self, g: &LockedGuard<'_>) -> io::Result<()> {
        let ring = self.ring()?;
        let mut pos = ring.head;
        let mut count = 0u64;
        while pos < ring.tail {
            if ring.tail - pos < PREFIX as u64 {
                return Err(corrupt("a partial item"));
            }
            pos += PREFIX as u64 + self.item_len(g, ring, pos)?;
            count += 1;
        }
        self.region.word(W_COUNT).store(count, Ordering::SeqCst);
        Ok(())
    }

    fn push_locked(&self, g: &LockedGuard<'_>, bytes: &[u8]) -> io::Result<Pushed> {
        if self.is_closed() {
            return Err(io::Error::new(io::ErrorKind::BrokenPipe, "closed"));
        }
        let ring = self.ring()?;
        let need = (PREFIX + bytes.len()) as u64;
        if ring.cap - ring.used() < need {
            return Ok(Pushed::Full);
        }
        ring_copy_in(g, ring.cap, ring.tail, &(bytes.len() as u32).to_le_bytes());
        ring_copy_in(g, ring.cap, ring.tail + PREFIX as u64, bytes);
        // The commit: the item exists once the tail moves past it.
        let r = &self.region;
        r.word(W_TAIL).store(ring.tail + need, Ordering::Release);
        r.word(W_COUNT).fetch_add(1, Ordering::SeqCst);
        Ok(Pushed::Done)
    }

    fn pop_locked(&self, g: &LockedGuard<'_>) -> io::Result<Popped> {
        let ring = self.ring()?;
        if ring.used() == 0 {
            if self.is_closed() {
                return Err(io::Error::new(io::ErrorKind::BrokenPipe, "closed"));
            }
            return Ok(Popped::Empty);
        }
        if ring.used() < PREFIX as u64 {
            return Err(corrupt("a partial item"));
        }
        let len = self.item_len(g, ring, ring.head)?;
        let mut bytes = Vec::with_capacity(len as usize);
        ring_copy_out(
            g,
            ring.cap,
            ring.head + PREFIX as u64,
            len as usize,
            &mut bytes,
        );
        // The commit: the item is gone once the head moves past it.
        let r = &self.region;
        let head = ring.head + PREFIX as u64 + len;
        r.word(W_HEAD).store(head, Ordering::Release);
        let count = r.word(W_COUNT);
        let left = count.load(Ordering::SeqCst).saturating_sub(1);
        count.store(left, Ordering::SeqCst);
        Ok(Popped::Item(bytes, head < ring.tail))
    }

    /// Sleeps on `word` while it still reads `seen`, counted among the
    /// `waiters`, for at most one [`SLICE`] and never past `deadline`.
    /// `false` if the deadline has passed.
    fn sleep(
        &self,
        word: &AtomicU32,
        seen: u32,
        waiters: usize,
        deadline: Option<Instant>,
    ) -> bool {
        let mut slice = SLICE;
        if let Some(d) = deadline {
            let left = d.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            slice = slice.min(left);
        }
        // A short look before sleeping: a peer on another core often
        // changes the word within microseconds, and then neither side pays
        // for a sleep and a wake-up.
        for _ in 0..SPINS {
            if word.load(Ordering::Acquire) != seen {
                return true;
            }
            std::hint::spin_loop();
        }
        let waiters = self.region.futex(waiters);
        waiters.fetch_add(1, Ordering::SeqCst);
        // An error here (none is expected) is one more look at the queue.
        let _ = futex::wait(word, seen, Some(slice));
        waiters.fetch_sub(1, Ordering::SeqCst);
        true
    }
}

/// Wakes up to `n` sleepers on `word` (best effort: a failed wake-up is
/// made up for by the sleepers' bounded [`SLICE`]).
fn wake(word: &AtomicU32, n: u32) {
    let _ = futex::wake(word, n);
}

/// Copies `src` into the ring of `cap` bytes at position `pos`, wrapping.
fn ring_copy_in(g: &LockedGuard<'_>, cap: u64, pos: u64, src: &[u8]) {
    let at = (pos % cap) as usize;
    let first = src.len().min(cap as usize - at);
    g.copy_in(at, &src[..first]);
    g.copy_in(0, &src[first..]);
}

/// Appends `len` bytes of the ring of `cap` bytes at position `pos` to
/// `dst`, wrapping.
fn ring_copy_out(g: &LockedGuard<'_>, cap: u64, pos: u64, len: usize, dst: &mut Vec<u8>) {
    let at = (pos % cap) as usize;
    let first = len.min(cap as usize - at);
    g.append_to(at, first, dst);
    g.append_to(0, len - first, dst);
}

/// The crate's error for a failure of the queue's memory about `T`.
fn sys_error<T>(e: io::Error) -> Error {
    if e.kind() == io::ErrorKind::BrokenPipe {
        return Error::Disconnected;
    }
    shared_memory_error(e, std::any::type_name::<T>(), "Queue")
}

/// Maps a queue received from another process.
fn attach<T>(fd: OwnedFd) -> io::Result<Queue<T>> {
    let region = LockedRegion::open(fd, MAGIC, tag::<T>())?;
    if region.word(W_CAP).load(Ordering::Relaxed) != region.data_len() as u64 {
        return Err(corrupt("its size does not match its capacity"));
    }
    if region.data_len() < MIN_CAPACITY {
        return Err(corrupt("it is too small"));
    }
    Ok(Queue {
        region: Arc::new(region),
        _items: PhantomData,
    })
}

impl<T> Clone for Queue<T> {
    /// Another handle to the same queue (the mapping is shared too).
    fn clone(&self) -> Self {
        Queue {
            region: Arc::clone(&self.region),
            _items: PhantomData,
        }
    }
}

impl<T> fmt::Debug for Queue<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct(&format!("Queue<{}>", std::any::type_name::<T>()))
            .field("len", &self.len())
            .field("capacity", &self.capacity())
            .field("closed", &self.is_closed())
            .finish()
    }
}

impl<T> Serialize for Queue<T> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        wire::serialize_fd(self.region.fd().as_fd(), std::any::type_name::<Self>(), s)
    }
}

impl<'de, T> Deserialize<'de> for Queue<T> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let fd = wire::deserialize_fd(d)?;
        attach(fd).map_err(|e| {
            serde::de::Error::custom(format_args!(
                "cannot attach to Queue<{}>: {e}",
                std::any::type_name::<T>()
            ))
        })
    }
}

/// Maps the queue memory `fd` as a `Queue<T>`, with the checks a queue
/// arriving from another process gets.
#[cfg(feature = "bench-internals")]
pub(crate) fn attach_fd<T>(fd: OwnedFd) -> Result<Queue<T>> {
    attach(fd).map_err(sys_error::<T>)
}

#[cfg(test)]
mod test {
    use super::*;

    #[test]
    fn items_wrap_around_the_ring_in_order() {
        let q = Queue::<Vec<u8>>::with_capacity(100).unwrap();
        let mut next_in = 0u8;
        let mut next_out = 0u8;
        for _ in 0..200 {
            while q
                .try_push(&vec![next_in; 1 + next_in as usize % 30])
                .unwrap()
            {
                next_in = next_in.wrapping_add(1);
            }
            let v = q.try_pop().unwrap().unwrap();
            assert_eq!(v, vec![next_out; 1 + next_out as usize % 30]);
            next_out = next_out.wrapping_add(1);
        }
        assert_eq!(q.len(), next_in.wrapping_sub(next_out) as usize);
    }

    #[test]
    fn a_forged_or_foreign_descriptor_is_refused() {
        let q = Queue::<u64>::new().unwrap();
        let fd = || q.region.fd().try_clone().unwrap();
        assert!(attach::<u64>(fd()).is_ok());
        assert!(attach::<String>(fd()).is_err());
        let unsealed = crate::sys::mem::memfd(c"q", 1 << 16).unwrap();
        assert!(attach::<u64>(unsealed).is_err());
        let other = crate::share::Share::new(1u64).unwrap();
        let share_fd = other_fd(&other);
        assert!(attach::<u64>(share_fd).is_err());
    }

    fn other_fd(s: &crate::share::Share<u64>) -> OwnedFd {
        // A share's descriptor, through its serialization.
        let enc = wire::encode(s).unwrap();
        enc.fds.into_iter().next().unwrap()
    }

    #[test]
    fn corrupt_positions_are_errors() {
        let q = Queue::<u64>::with_capacity(128).unwrap();
        q.push(&7).unwrap();
        let tail = q.region.word(W_TAIL).load(Ordering::Relaxed);
        q.region.word(W_TAIL).store(tail + 1000, Ordering::Relaxed);
        assert!(matches!(q.try_pop(), Err(Error::Decode { .. })));
        q.region.word(W_TAIL).store(tail, Ordering::Relaxed);
        assert_eq!(q.try_pop().unwrap(), Some(7));
    }

    /// Runs `f` under the queue's lock on a thread that then ends holding
    /// it, as a process killed inside `push` or `pop` would.
    fn die_holding(q: &Queue<u64>, f: impl FnOnce(&Queue<u64>, &LockedGuard<'_>) + Send) {
        std::thread::scope(|s| {
            s.spawn(|| {
                let g = q.region.lock(None).unwrap().unwrap();
                f(q, &g);
                std::mem::forget(g);
            });
        });
    }

    #[test]
    fn a_holder_that_dies_mid_push_or_mid_pop_leaves_the_queue_consistent() {
        let q = Queue::<u64>::with_capacity(256).unwrap();
        for i in 0..3 {
            q.push(&i).unwrap();
        }
        // Died after moving the head past item 0, before the count.
        die_holding(&q, |q, g| {
            let ring = q.ring().unwrap();
            let len = q.item_len(g, ring, ring.head).unwrap();
            q.region
                .word(W_HEAD)
                .store(ring.head + PREFIX as u64 + len, Ordering::Release);
        });
        assert_eq!(q.len(), 3, "the count is stale until the next lock");
        assert_eq!(q.try_pop().unwrap(), Some(1), "item 0 is gone, once");
        assert_eq!(q.len(), 1);
        // Died after writing an item's bytes, before moving the tail.
        die_holding(&q, |q, g| {
            let ring = q.ring().unwrap();
            ring_copy_in(g, ring.cap, ring.tail, &1u32.to_le_bytes());
            ring_copy_in(g, ring.cap, ring.tail + PREFIX as u64, &[99]);
        });
        assert_eq!(q.try_pop().unwrap(), Some(2));
        assert_eq!(
            q.try_pop().unwrap(),
            None,
            "the unfinished push is not there"
        );
        // Died after moving the tail, before the count: the item is there.
        die_holding(&q, |q, g| {
            let ring = q.ring().unwrap();
            ring_copy_in(g, ring.cap, ring.tail, &1u32.to_le_bytes());
            ring_copy_in(g, ring.cap, ring.tail + PREFIX as u64, &[42]);
            q.region
                .word(W_TAIL)
                .store(ring.tail + PREFIX as u64 + 1, Ordering::Release);
        });
        assert_eq!(q.len(), 0, "the count is stale until the next lock");
        assert_eq!(q.pop_timeout(Duration::ZERO).unwrap(), Some(42));
        q.push(&5).unwrap();
        assert_eq!(q.len(), 1);
        assert_eq!(q.pop().unwrap(), 5);
    }

    #[test]
    fn an_item_larger_than_the_queue_is_an_error() {
        let q = Queue::<Vec<u8>>::with_capacity(64).unwrap();
        assert!(matches!(
            q.try_push(&vec![0; 100]),
            Err(Error::Encode { .. })
        ));
        assert!(q.try_push(&vec![0; 50]).unwrap());
    }
}
