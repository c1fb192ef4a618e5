//! `Pipe`: a dedicated, typed message channel between two processes.
//!
//! [`Pipe::pair`] gives two duplex ends; [`Pipe::one_way`] gives a
//! [`PipeSender`] and a [`PipeReceiver`]. Ends are `Serialize +
//! Deserialize`: put one in a field of a process (or in a message) and it
//! moves into that process. Messages are typed like `tell`: the sender's type
//! travels with each message, so receiving it as another type is
//! [`Error::WrongType`] and the next message is read normally.
//!
//! # Transport
//!
//! Each public end wraps a private enum of transports ("flavors", as
//! crossbeam-channel's `Sender` does). Pipes use shared-memory rings with
//! futex wake-ups (`ring`): a message is encoded straight into the ring,
//! copied out and decoded, and costs no system call while the receiver is
//! awake. A socket pair (`socket`) is the other
//! flavor, kept as the baseline the ring is measured against in
//! `benches/messaging.rs` (built only with the `bench-internals` feature):
//! the ring's round trip is a fraction of a socket's, and its throughput
//! with 1 MiB messages at least a bare socket's.
//!
//! # Peer death
//!
//! A receiver whose peer has ended gets every message the peer sent, then
//! [`Error::Disconnected`]: it never blocks forever on a dead process. An
//! end is gone when every copy of it is closed: dropped, or its process
//! ended. A process that received an end as a field holds the only copy
//! once its handle has given it to the last life (earlier lives are started
//! from copies the handle keeps).
//!
//! # Async
//!
//! `recv_async` receives without blocking the polling thread: a watcher
//! thread per awaited end wakes the tasks (see `watch`).

mod ring;
#[cfg(feature = "bench-internals")]
mod socket;
#[cfg(test)]
mod test;
mod watch;

use crate::error::{Error, Result};
use crate::stats::{Counters, Stats};
use crate::sys;
use crate::wire;
#[cfg(feature = "bench-internals")]
pub(crate) use ring::Spin;
use serde::de::{DeserializeOwned, Error as _};
use serde::ser::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::future::{poll_fn, Future};
use std::os::fd::AsRawFd;
#[cfg(feature = "bench-internals")]
use std::os::fd::OwnedFd;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use watch::Watch;

/// What an end may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Role {
    Both,
    Send,
    Recv,
}

impl Role {
    pub(crate) fn sends(self) -> bool {
        self != Role::Recv
    }

    pub(crate) fn receives(self) -> bool {
        self != Role::Send
    }
}

/// One received message, before decoding.
#[cfg(feature = "bench-internals")]
#[derive(Debug)]
pub(crate) struct Message {
    pub(crate) bytes: Vec<u8>,
    pub(crate) fds: Vec<OwnedFd>,
}

/// The transports.
#[derive(Debug)]
enum Flavor {
    Ring(Arc<ring::End>),
    #[cfg(feature = "bench-internals")]
    Socket(socket::End),
}

/// Which transport a new pipe uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Transport {
    /// Shared-memory rings of the given capacity (the default).
    Ring(usize),
    /// A socket pair (kept as the baseline the ring is measured against).
    #[cfg(feature = "bench-internals")]
    Socket,
}

/// How an end is written when it moves to another process: descriptor
/// indices (see `wire::push_fd`) and, for future flavors, their layout.
#[derive(Serialize, Deserialize)]
enum Moved {
    Ring {
        sock: u32,
        mem: u32,
        layout: ring::Layout,
    },
    #[cfg(feature = "bench-internals")]
    Socket { sock: u32 },
}

impl Flavor {
    /// The shared-memory end, for this flavor.
    fn ring(&self) -> Option<&Arc<ring::End>> {
        match self {
            Flavor::Ring(r) => Some(r),
            #[cfg(feature = "bench-internals")]
            Flavor::Socket(_) => None,
        }
    }
}

/// The part every public end shares: a flavor and its counters.
struct End {
    /// The watcher that wakes receiving futures, once one waited (dropped,
    /// and its thread ended, before the transport).
    watch: OnceLock<Watch>,
    flavor: Flavor,
    counters: Counters,
}

impl End {
    fn new(flavor: Flavor) -> End {
        End {
            watch: OnceLock::new(),
            flavor,
            counters: Counters::default(),
        }
    }

    fn pair(a: Role, b: Role, t: Transport) -> Result<(End, End)> {
        Ok(match t {
            Transport::Ring(capacity) => {
                let (x, y) = ring::End::pair(a, b, capacity)?;
                (
                    End::new(Flavor::Ring(Arc::new(x))),
                    End::new(Flavor::Ring(Arc::new(y))),
                )
            }
            #[cfg(feature = "bench-internals")]
            Transport::Socket => {
                let (x, y) = socket::End::pair(a, b)?;
                (End::new(Flavor::Socket(x)), End::new(Flavor::Socket(y)))
            }
        })
    }

    /// Sends `msg`: blocks while the channel is full (`Wait::Forever`), or
    /// gives up (`Ok(false)`) when full at once or at a deadline, without
    /// delivering any of it.
    fn send<T: Serialize + ?Sized>(&self, msg: &T, wait: Wait) -> Result<bool> {
        let sent = match &self.flavor {
            Flavor::Ring(r) => {
                let (deadline, whole) = match wait {
                    Wait::Forever => (None, false),
                    Wait::Until(d) => (d, false),
                    Wait::Never => (Some(Instant::now()), true),
                };
                // Encoded straight into the ring; the descriptors of the
                // handles inside are kept open until they are sent.
                let mut owned = Vec::new();
                let encode = |w: &mut ring::FrameWriter<'_>| {
                    let ((), fds) = wire::encode_message_with(msg, w)?;
                    let raw = fds.iter().map(|f| f.as_raw_fd()).collect();
                    owned = fds;
                    Ok(raw)
                };
                // Counted under the ring's lock, by one thread at a time.
                r.send_with(deadline, whole, encode, |n| self.counters.sent_alone(n))?
            }
            #[cfg(feature = "bench-internals")]
            Flavor::Socket(s) => match wait {
                Wait::Forever | Wait::Until(None) => {
                    let enc = wire::encode_message(msg)?;
                    s.send(&enc.bytes, &enc.raw_fds())?;
                    self.counters.sent(enc.bytes.len());
                    true
                }
                _ => {
                    return Err(Error::usage(
                        "the socket transport sends only with `send`, which waits",
                    ))
                }
            },
        };
        Ok(sent)
    }

    fn recv<T: DeserializeOwned>(&self, deadline: Option<Instant>) -> Result<Option<T>> {
        let got = match &self.flavor {
            // Decoded, and counted, under the ring's lock.
            Flavor::Ring(r) => r.recv(deadline, |bytes, fds| {
                self.counters.received_alone(bytes.len());
                wire::decode_message(bytes, fds)
            })?,
            #[cfg(feature = "bench-internals")]
            Flavor::Socket(s) => s.recv(deadline)?.map(|m| {
                self.counters.received(m.bytes.len());
                wire::decode_message(&m.bytes, m.fds)
            }),
        };
        got.transpose()
    }

    /// A message if one is there; otherwise registers the task with the
    /// end's watcher, which wakes it when the peer publishes or goes.
    fn poll_recv<T: DeserializeOwned>(&self, cx: &mut Context<'_>) -> Poll<Result<T>> {
        let Some(r) = self.flavor.ring() else {
            return Poll::Ready(Err(Error::usage(
                "recv_async needs a pipe over shared memory",
            )));
        };
        let Some(seen) = r.published() else {
            return Poll::Ready(Err(Error::usage("this pipe end cannot receive")));
        };
        match self.recv(Some(Instant::now())) {
            Ok(Some(v)) => return Poll::Ready(Ok(v)),
            Ok(None) => {}
            Err(e) => return Poll::Ready(Err(e)),
        }
        let watch = match self.watch.get() {
            Some(w) => w,
            None => match Watch::start(r.clone()) {
                // Two tasks may start one at once: the loser's ends here.
                Ok(w) => self.watch.get_or_init(|| w),
                Err(e) => return Poll::Ready(Err(e)),
            },
        };
        watch.register(cx, seen);
        Poll::Pending
    }

    fn recv_async<T: DeserializeOwned>(&self) -> impl Future<Output = Result<T>> + Send + '_ {
        poll_fn(move |cx| self.poll_recv(cx))
    }

    fn recv_forever<T: DeserializeOwned>(&self) -> Result<T> {
        loop {
            if let Some(v) = self.recv(None)? {
                return Ok(v);
            }
        }
    }

    fn stats(&self) -> Stats {
        self.counters.snapshot()
    }

    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        let moved = match &self.flavor {
            Flavor::Ring(e) => {
                let ([sock, mem], layout) =
                    e.to_move().map_err(|e| S::Error::custom(wire::refuse(e)))?;
                Moved::Ring {
                    sock: wire::push_fd(sock, "Pipe").map_err(S::Error::custom)?,
                    mem: wire::push_fd(mem, "Pipe").map_err(S::Error::custom)?,
                    layout,
                }
            }
            #[cfg(feature = "bench-internals")]
            Flavor::Socket(e) => {
                let fd = e
                    .fd_to_move()
                    .map_err(|e| S::Error::custom(wire::refuse(e)))?;
                Moved::Socket {
                    sock: wire::push_fd(fd, "Pipe").map_err(S::Error::custom)?,
                }
            }
        };
        moved.serialize(s)
    }

    fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
        role: Role,
    ) -> std::result::Result<End, D::Error> {
        let refuse = |e: Error| D::Error::custom(wire::refuse(e.to_string()));
        let flavor = match Moved::deserialize(d)? {
            Moved::Ring { sock, mem, layout } => {
                let sock = wire::take_fd(sock).map_err(D::Error::custom)?;
                let mem = wire::take_fd(mem).map_err(D::Error::custom)?;
                let region = sys::region::Region::from_fd(mem).map_err(|e| refuse(Error::Io(e)))?;
                Flavor::Ring(Arc::new(
                    ring::End::attach(region, sock, &layout, role).map_err(refuse)?,
                ))
            }
            #[cfg(feature = "bench-internals")]
            Moved::Socket { sock } => {
                let fd = wire::take_fd(sock).map_err(D::Error::custom)?;
                Flavor::Socket(socket::End::from_fd(fd, role).map_err(refuse)?)
            }
        };
        Ok(End::new(flavor))
    }

    fn debug(&self, name: &str, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let flavor = match self.flavor {
            Flavor::Ring(_) => "shared-memory ring",
            #[cfg(feature = "bench-internals")]
            Flavor::Socket(_) => "socket",
        };
        f.debug_struct(name)
            .field("transport", &flavor)
            .field("stats", &self.stats())
            .finish()
    }
}

fn deadline_of(timeout: Duration) -> Option<Instant> {
    sys::sock::deadline_after(timeout)
}

/// How long a send may wait for room in the channel.
#[derive(Debug, Clone, Copy)]
enum Wait {
    /// As long as it takes.
    Forever,
    /// Not at all.
    Never,
    /// Until the deadline (`None`: a timeout too long to represent).
    Until(Option<Instant>),
}

/// A duplex channel end: it sends to and receives from the other end of its
/// [`pair`](Pipe::pair).
///
/// Messages are any `Serialize + DeserializeOwned` type, arrive in order and
/// none is lost. Move an end into a process by making it a field of the
/// process (or sending it in a message): the process that holds it then
/// talks to whoever holds the other end. An end is `Send + Sync`; threads
/// that share one take turns (one sender and one receiver at a time).
///
/// An end is used by one process at a time. If it was copied (sent to a
/// process with [`Handle::tell`](crate::Handle::tell) while kept, say),
/// the copy that sends (or receives) second gets an [`Error::Usage`] while
/// the first is in use by a live process; a copy may take over once the
/// other was dropped or its process has ended, as the next life of a
/// process does.
///
/// # Peer death
///
/// A receiver whose peer has ended gets every message the peer sent, then
/// [`Error::Disconnected`], within a second or two of the death: it never
/// blocks forever. A sender whose peer has ended gets
/// [`Error::Disconnected`] too, at the latest when the buffer is full. A
/// message its sender died in the middle of (a lost life) is never
/// received, whole or in part: the receiver reads on from the next one.
/// [`try_send`](Pipe::try_send) and [`send_timeout`](Pipe::send_timeout)
/// bound how long a live receiver that does not read can hold a sender up. An end is gone when every copy of it is closed. A process
/// that received an end as a field holds the only copy once its handle has
/// given it to the last life; a process with `lives > 1` is restarted from
/// copies its handle keeps, so the other end sees the peer gone when the
/// last life has ended.
///
/// # Performance
///
/// Each direction is a ring buffer in shared memory (1 MiB by default, see
/// [`pair_with_capacity`](Pipe::pair_with_capacity)). While the receiver
/// is awake, a message costs no system call; a round trip between processes
/// on two idle processors takes about a microsecond, several times less
/// than over a socket. A message is encoded straight into the ring, copied
/// out, and decoded. Encoding is the cost to watch for bulk data:
/// `Vec<u8>` goes through serde one byte at a time, while a type that
/// serializes as a byte string (`serde_bytes::ByteBuf`, or a newtype whose
/// `Serialize` calls `serialize_bytes`) is copied whole, about ten times
/// faster.
///
/// # Examples
///
/// ```
/// use serde::{Deserialize, Serialize};
/// use skprocess::prelude::*;
///
/// #[derive(Process, Serialize, Deserialize)]
/// #[process(runs = 1)]
/// struct Doubler { pipe: Pipe }
///
/// impl Process for Doubler {
///     fn run(&mut self, _ctx: &mut Ctx) -> HookResult {
///         while let Some(x) = self.pipe.recv::<Option<u64>>()? {
///             self.pipe.send(&(x * 2))?;
///         }
///         Ok(())
///     }
/// }
///
/// # fn main() -> skprocess::Result<()> {
/// let (mine, theirs) = Pipe::pair()?;
/// let mut h = Doubler { pipe: theirs }.start()?;
/// for x in 0..10u64 {
///     mine.send(&Some(x))?;
///     assert_eq!(mine.recv::<u64>()?, x * 2);
/// }
/// mine.send(&None::<u64>)?;
/// h.wait()?;
/// # Ok(())
/// # }
/// ```
pub struct Pipe {
    end: End,
}

impl Pipe {
    /// Creates a connected pair of duplex ends.
    ///
    /// # Errors
    ///
    /// If the operating system cannot create the channel (out of
    /// descriptors or memory).
    pub fn pair() -> Result<(Pipe, Pipe)> {
        Pipe::pair_over(Transport::Ring(ring::CAPACITY))
    }

    /// Like [`pair`](Pipe::pair), with `bytes` of buffer in each direction
    /// instead of the default 1 MiB (rounded up to a power of two, at least
    /// 4 KiB, at most 1 GiB).
    ///
    /// The buffer is shared memory; a sender blocks while it is full.
    /// Messages larger than the buffer still pass (they stream through it).
    /// A larger buffer lets a sender run further ahead of its receiver;
    /// a smaller one costs less memory (each pipe touches all of its buffer
    /// pages over time).
    ///
    /// # Examples
    ///
    /// ```
    /// use skprocess::Pipe;
    ///
    /// # fn main() -> skprocess::Result<()> {
    /// let (a, b) = Pipe::pair_with_capacity(4096)?;
    /// let reader = std::thread::spawn(move || b.recv::<Vec<u8>>());
    /// a.send(&vec![7u8; 100_000])?; // larger than the buffer: streams through
    /// assert_eq!(reader.join().unwrap()?.len(), 100_000);
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// As [`pair`](Pipe::pair).
    pub fn pair_with_capacity(bytes: usize) -> Result<(Pipe, Pipe)> {
        Pipe::pair_over(Transport::Ring(bytes))
    }

    /// A duplex pair over the given transport.
    pub(crate) fn pair_over(t: Transport) -> Result<(Pipe, Pipe)> {
        let (a, b) = End::pair(Role::Both, Role::Both, t)?;
        Ok((Pipe { end: a }, Pipe { end: b }))
    }

    /// Creates a one-way channel: a [`PipeSender`] and a [`PipeReceiver`].
    ///
    /// # Examples
    ///
    /// ```
    /// use skprocess::Pipe;
    ///
    /// # fn main() -> skprocess::Result<()> {
    /// let (tx, rx) = Pipe::one_way()?;
    /// tx.send("hello")?;
    /// assert_eq!(rx.recv::<String>()?, "hello");
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// As [`pair`](Pipe::pair).
    pub fn one_way() -> Result<(PipeSender, PipeReceiver)> {
        Pipe::one_way_over(Transport::Ring(ring::CAPACITY))
    }

    /// Like [`one_way`](Pipe::one_way), with `bytes` of buffer instead of
    /// the default 1 MiB; see [`pair_with_capacity`](Pipe::pair_with_capacity).
    ///
    /// # Errors
    ///
    /// As [`pair`](Pipe::pair).
    pub fn one_way_with_capacity(bytes: usize) -> Result<(PipeSender, PipeReceiver)> {
        Pipe::one_way_over(Transport::Ring(bytes))
    }

    /// A one-way pair over the given transport.
    pub(crate) fn one_way_over(t: Transport) -> Result<(PipeSender, PipeReceiver)> {
        let (a, b) = End::pair(Role::Send, Role::Recv, t)?;
        Ok((PipeSender { end: a }, PipeReceiver { end: b }))
    }

    /// Sends `msg` to the other end. Blocks only while the channel is full.
    ///
    /// # Errors
    ///
    /// If `msg` cannot be encoded, or the other end is gone
    /// ([`Error::Disconnected`]; a sender notices a receiver that has ended
    /// at the latest when the channel is full, and usually sooner).
    pub fn send<T: Serialize + ?Sized>(&self, msg: &T) -> Result<()> {
        self.end.send(msg, Wait::Forever).map(drop)
    }

    /// Sends `msg` if the channel has room for all of it now: `Ok(true)`
    /// if it was sent, `Ok(false)` (and nothing sent) if the channel is
    /// full. Never blocks.
    ///
    /// # Examples
    ///
    /// ```
    /// use skprocess::Pipe;
    ///
    /// # fn main() -> skprocess::Result<()> {
    /// let (a, b) = Pipe::pair_with_capacity(4096)?;
    /// let mut sent = 0;
    /// while a.try_send(&[0u8; 32])? {
    ///     sent += 1; // nobody reads yet: the buffer fills up
    /// }
    /// assert!(sent > 0);
    /// let _: [u8; 32] = b.recv()?;
    /// assert!(a.try_send(&[0u8; 32])?); // room again
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// As [`send`](Pipe::send); and a message larger than the channel's
    /// buffer (see [`pair_with_capacity`](Pipe::pair_with_capacity)), which
    /// can never be sent without waiting, is an [`Error::Usage`].
    pub fn try_send<T: Serialize + ?Sized>(&self, msg: &T) -> Result<bool> {
        self.end.send(msg, Wait::Never)
    }

    /// Sends `msg`, waiting up to `timeout` for room in the channel:
    /// `Ok(true)` if it was sent, `Ok(false)` if the time ran out first.
    /// A message that was not sent is not received either, not even in
    /// part, so a receiver that is alive but stuck cannot block a sender
    /// for longer than it chooses.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use skprocess::Pipe;
    ///
    /// # fn main() -> skprocess::Result<()> {
    /// let (a, b) = Pipe::pair_with_capacity(4096)?;
    /// // Larger than the buffer, and nobody reads: it cannot get through.
    /// let big = vec![1u8; 100_000];
    /// assert!(!a.send_timeout(&big, Duration::from_millis(10))?);
    /// // A reader comes: what part of the big one was written is dropped.
    /// let reader = std::thread::spawn(move || b.recv::<u32>());
    /// assert!(a.send_timeout(&7u32, Duration::from_secs(5))?);
    /// assert_eq!(reader.join().unwrap()?, 7);
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// As [`send`](Pipe::send).
    pub fn send_timeout<T: Serialize + ?Sized>(&self, msg: &T, timeout: Duration) -> Result<bool> {
        self.end.send(msg, Wait::Until(deadline_of(timeout)))
    }

    /// Blocks until a message arrives.
    ///
    /// # Errors
    ///
    /// [`Error::Disconnected`] once the other end is gone and every message
    /// it sent has been received; [`Error::WrongType`] for a message sent as
    /// another type (it is consumed; the next one can be received);
    /// [`Error::Wire`] if the peer sent bytes that are not a message.
    pub fn recv<T: DeserializeOwned>(&self) -> Result<T> {
        self.end.recv_forever()
    }

    /// [`recv`](Pipe::recv) as a future: resolves to the next message
    /// without blocking the thread that polls it, under any executor.
    ///
    /// The first receive that has to wait starts one watcher thread for
    /// this end, which sleeps until the peer publishes (or goes) and wakes
    /// the waiting tasks; it ends with the end. A future dropped while
    /// pending loses no message. A poll waits for the end's lock while a
    /// blocking receive on the same end runs in another thread: do not
    /// mix both on one end at once.
    ///
    /// # Errors
    ///
    /// As [`recv`](Pipe::recv).
    ///
    /// # Examples
    ///
    /// ```
    /// use skprocess::Pipe;
    ///
    /// # fn main() -> skprocess::Result<()> {
    /// let (a, b) = Pipe::pair()?;
    /// let t = std::thread::spawn(move || a.send(&7u64));
    /// let v = futures::executor::block_on(b.recv_async::<u64>())?;
    /// assert_eq!(v, 7);
    /// t.join().unwrap()?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn recv_async<T: DeserializeOwned>(&self) -> impl Future<Output = Result<T>> + Send + '_ {
        self.end.recv_async()
    }

    /// Waits up to `timeout` for a message: `Ok(None)` if none came.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use skprocess::Pipe;
    ///
    /// # fn main() -> skprocess::Result<()> {
    /// let (a, b) = Pipe::pair()?;
    /// assert_eq!(b.recv_timeout::<u32>(Duration::from_millis(10))?, None);
    /// a.send(&5u32)?;
    /// assert_eq!(b.recv_timeout::<u32>(Duration::from_secs(1))?, Some(5));
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// As [`recv`](Pipe::recv).
    pub fn recv_timeout<T: DeserializeOwned>(&self, timeout: Duration) -> Result<Option<T>> {
        self.end.recv(deadline_of(timeout))
    }

    /// Waits until `deadline` for a message: `Ok(None)` if none came.
    ///
    /// # Errors
    ///
    /// As [`recv`](Pipe::recv).
    pub fn recv_deadline<T: DeserializeOwned>(&self, deadline: Instant) -> Result<Option<T>> {
        self.end.recv(Some(deadline))
    }

    /// Returns a message if one is waiting, without blocking.
    ///
    /// # Errors
    ///
    /// As [`recv`](Pipe::recv).
    pub fn try_recv<T: DeserializeOwned>(&self) -> Result<Option<T>> {
        self.end.recv(Some(Instant::now()))
    }

    /// Messages and bytes sent and received through this end, in this
    /// process.
    pub fn stats(&self) -> Stats {
        self.end.stats()
    }
}

/// The sending end of a [`Pipe::one_way`] channel.
///
/// # Examples
///
/// ```
/// use serde::{Deserialize, Serialize};
/// use skprocess::prelude::*;
///
/// #[derive(Process, Serialize, Deserialize)]
/// #[process(runs = 1)]
/// struct Producer { tx: PipeSender, n: u64 }
///
/// impl Process for Producer {
///     fn run(&mut self, _ctx: &mut Ctx) -> HookResult {
///         for i in 0..self.n {
///             self.tx.send(&i)?;
///         }
///         Ok(())
///     }
/// }
///
/// # fn main() -> skprocess::Result<()> {
/// let (tx, rx) = Pipe::one_way()?;
/// let mut h = Producer { tx, n: 100 }.start()?;
/// let got: Vec<u64> = (0..100).map(|_| rx.recv()).collect::<Result<_>>()?;
/// assert_eq!(got, (0..100).collect::<Vec<u64>>());
/// h.wait()?;
/// # Ok(())
/// # }
/// ```
pub struct PipeSender {
    end: End,
}

impl PipeSender {
    /// Sends `msg` to the receiver. Blocks only while the channel is full.
    ///
    /// # Errors
    ///
    /// As [`Pipe::send`]: if `msg` cannot be encoded, or the receiver is
    /// gone ([`Error::Disconnected`]).
    pub fn send<T: Serialize + ?Sized>(&self, msg: &T) -> Result<()> {
        self.end.send(msg, Wait::Forever).map(drop)
    }

    /// Sends `msg` if the channel has room for all of it now: `Ok(false)`
    /// (and nothing sent) if it is full. Never blocks.
    ///
    /// # Examples
    ///
    /// ```
    /// use skprocess::Pipe;
    ///
    /// # fn main() -> skprocess::Result<()> {
    /// let (tx, rx) = Pipe::one_way_with_capacity(4096)?;
    /// while tx.try_send(&"more")? {}
    /// assert_eq!(rx.recv::<String>()?, "more");
    /// assert!(tx.try_send(&"more")?);
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// As [`Pipe::try_send`].
    pub fn try_send<T: Serialize + ?Sized>(&self, msg: &T) -> Result<bool> {
        self.end.send(msg, Wait::Never)
    }

    /// Sends `msg`, waiting up to `timeout` for room: `Ok(false)` if the
    /// time ran out first, and then none of it is received.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use skprocess::Pipe;
    ///
    /// # fn main() -> skprocess::Result<()> {
    /// let (tx, rx) = Pipe::one_way_with_capacity(4096)?;
    /// while tx.try_send(&[0u8; 32])? {}
    /// // Full, and nobody reads.
    /// assert!(!tx.send_timeout(&[0u8; 32], Duration::from_millis(10))?);
    /// let _: [u8; 32] = rx.recv()?;
    /// assert!(tx.send_timeout(&[0u8; 32], Duration::from_secs(5))?);
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// As [`Pipe::send_timeout`].
    pub fn send_timeout<T: Serialize + ?Sized>(&self, msg: &T, timeout: Duration) -> Result<bool> {
        self.end.send(msg, Wait::Until(deadline_of(timeout)))
    }

    /// Messages and bytes sent through this end, in this process.
    pub fn stats(&self) -> Stats {
        self.end.stats()
    }
}

/// The receiving end of a [`Pipe::one_way`] channel.
pub struct PipeReceiver {
    end: End,
}

impl PipeReceiver {
    /// Blocks until a message arrives.
    ///
    /// # Errors
    ///
    /// As [`Pipe::recv`]: [`Error::Disconnected`] once the sender is gone and
    /// every message it sent has been received.
    pub fn recv<T: DeserializeOwned>(&self) -> Result<T> {
        self.end.recv_forever()
    }

    /// [`recv`](PipeReceiver::recv) as a future, as [`Pipe::recv_async`].
    ///
    /// # Errors
    ///
    /// As [`Pipe::recv`].
    ///
    /// # Examples
    ///
    /// ```
    /// use skprocess::Pipe;
    ///
    /// # fn main() -> skprocess::Result<()> {
    /// let (tx, rx) = Pipe::one_way()?;
    /// let t = std::thread::spawn(move || tx.send(&"hi"));
    /// let v = futures::executor::block_on(rx.recv_async::<String>())?;
    /// assert_eq!(v, "hi");
    /// t.join().unwrap()?;
    /// // The sender is gone: every message was received.
    /// assert!(futures::executor::block_on(rx.recv_async::<String>())
    ///     .unwrap_err()
    ///     .is_disconnected());
    /// # Ok(())
    /// # }
    /// ```
    pub fn recv_async<T: DeserializeOwned>(&self) -> impl Future<Output = Result<T>> + Send + '_ {
        self.end.recv_async()
    }

    /// Waits up to `timeout` for a message: `Ok(None)` if none came.
    ///
    /// # Errors
    ///
    /// As [`Pipe::recv`].
    pub fn recv_timeout<T: DeserializeOwned>(&self, timeout: Duration) -> Result<Option<T>> {
        self.end.recv(deadline_of(timeout))
    }

    /// Waits until `deadline` for a message: `Ok(None)` if none came.
    ///
    /// # Errors
    ///
    /// As [`Pipe::recv`].
    pub fn recv_deadline<T: DeserializeOwned>(&self, deadline: Instant) -> Result<Option<T>> {
        self.end.recv(Some(deadline))
    }

    /// Returns a message if one is waiting, without blocking.
    ///
    /// # Examples
    ///
    /// ```
    /// use skprocess::Pipe;
    ///
    /// # fn main() -> skprocess::Result<()> {
    /// let (tx, rx) = Pipe::one_way()?;
    /// assert_eq!(rx.try_recv::<u8>()?, None);
    /// tx.send(&1u8)?;
    /// drop(tx);
    /// assert_eq!(rx.recv::<u8>()?, 1);
    /// assert!(rx.recv::<u8>().is_err()); // the sender is gone
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// As [`Pipe::recv`].
    pub fn try_recv<T: DeserializeOwned>(&self) -> Result<Option<T>> {
        self.end.recv(Some(Instant::now()))
    }

    /// Messages and bytes received through this end, in this process.
    pub fn stats(&self) -> Stats {
        self.end.stats()
    }
}

macro_rules! serde_and_debug {
    ($ty:ident, $role:expr) => {
        impl Serialize for $ty {
            fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
                self.end.serialize(s)
            }
        }

        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
                End::deserialize(d, $role).map(|end| $ty { end })
            }
        }

        impl fmt::Debug for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.end.debug(stringify!($ty), f)
            }
        }
    };
}

serde_and_debug!(Pipe, Role::Both);
serde_and_debug!(PipeSender, Role::Send);
serde_and_debug!(PipeReceiver, Role::Recv);

/// The descriptors behind a pipe end, for tests that play a hostile peer.
#[cfg(feature = "bench-internals")]
pub(crate) trait RawEnd {
    /// The descriptors this end uses.
    fn raw_fds(&self) -> Vec<std::os::fd::BorrowedFd<'_>>;
    /// See [`End::backlog`].
    fn backlog(&self) -> Option<(u64, u64)>;
}

#[cfg(feature = "bench-internals")]
impl End {
    fn raw_fds(&self) -> Vec<std::os::fd::BorrowedFd<'_>> {
        match &self.flavor {
            Flavor::Ring(r) => r.fds().to_vec(),
            Flavor::Socket(s) => vec![s.fd()],
        }
    }

    /// For a shared-memory end: the bytes published and not yet read in
    /// the ring it receives from (or, if it only sends, the one it sends
    /// to), and the ring's capacity.
    pub(crate) fn backlog(&self) -> Option<(u64, u64)> {
        match &self.flavor {
            Flavor::Ring(r) => Some(r.backlog()),
            Flavor::Socket(_) => None,
        }
    }
}

#[cfg(feature = "bench-internals")]
impl RawEnd for Pipe {
    fn raw_fds(&self) -> Vec<std::os::fd::BorrowedFd<'_>> {
        self.end.raw_fds()
    }
    fn backlog(&self) -> Option<(u64, u64)> {
        self.end.backlog()
    }
}

#[cfg(feature = "bench-internals")]
impl RawEnd for PipeSender {
    fn raw_fds(&self) -> Vec<std::os::fd::BorrowedFd<'_>> {
        self.end.raw_fds()
    }
    fn backlog(&self) -> Option<(u64, u64)> {
        self.end.backlog()
    }
}

#[cfg(feature = "bench-internals")]
impl RawEnd for PipeReceiver {
    fn raw_fds(&self) -> Vec<std::os::fd::BorrowedFd<'_>> {
        self.end.raw_fds()
    }
    fn backlog(&self) -> Option<(u64, u64)> {
        self.end.backlog()
    }
}
