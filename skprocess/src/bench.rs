//! Helpers for skprocess's own benches and tests (re-exported, hidden, as
//! `skprocess::__bench`): raw baselines built from the same primitives the
//! library uses, and access to a pipe's descriptors so a test can play a
//! hostile peer. Not a public API.

use crate::error::{Error, Result};
use crate::pipe::{RawEnd, Spin, Transport};
use crate::sys::{futex, region::Region};
use crate::wire;
use crate::{Pipe, PipeReceiver, PipeSender};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{fence, AtomicU32, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

/// A pipe end whose descriptors can be reached (see [`pipe_fds`]).
#[allow(private_bounds)]
pub trait PipeEnd: RawEnd {}
impl<T: RawEnd> PipeEnd for T {}

/// The descriptors behind a pipe end (a socket, and shared memory if the
/// end uses it), so a test can play a hostile peer by writing garbage into
/// them.
pub fn pipe_fds<E: PipeEnd>(end: &E) -> Vec<BorrowedFd<'_>> {
    end.raw_fds()
}

/// For a pipe end over shared memory: the bytes its peer has published
/// and it has not read yet (for a sending end: that it has published and
/// its peer has not read), and the buffer's capacity. `None` for a socket
/// pipe. Lets a test see that a buffer is full, i.e. that its sender is
/// blocked in the middle of a message larger than the buffer.
pub fn pipe_backlog<E: PipeEnd>(end: &E) -> Option<(u64, u64)> {
    end.backlog()
}

/// A duplex pipe over a socket pair instead of shared memory: the baseline
/// the default transport is measured against.
pub fn socket_pipe_pair() -> Result<(Pipe, Pipe)> {
    Pipe::pair_over(Transport::Socket)
}

/// A one-way pipe over a socket pair.
pub fn socket_one_way() -> Result<(PipeSender, PipeReceiver)> {
    Pipe::one_way_over(Transport::Socket)
}

/// A descriptor that can be a field of a process (it moves like a pipe
/// end), for baselines that do raw I/O in a child.
#[derive(Debug)]
pub struct Fd(pub OwnedFd);

impl Serialize for Fd {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        wire::push_fd(self.0.as_fd(), "Fd")
            .map_err(serde::ser::Error::custom)?
            .serialize(s)
    }
}

impl<'de> Deserialize<'de> for Fd {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let i = u32::deserialize(d)?;
        wire::take_fd(i).map(Fd).map_err(serde::de::Error::custom)
    }
}

const IDLE: u32 = 0;
const PING: u32 = 1;
const PONG: u32 = 2;
const STOP: u32 = 3;

/// A bare futex ping-pong over shared memory: one 32-bit word that the two
/// sides flip between `PING` and `PONG`, waking each other with
/// `FUTEX_WAKE`. With `spin`, a side spins (with the pipe's adaptive budget)
/// before it sleeps, and wakes the other only if it is asleep, exactly as the
/// pipe's ring does; without, every turn is a futex wait and a wake.
#[derive(Debug)]
pub struct FutexPingPong {
    region: Region,
    spin: Option<Mutex<Spin>>,
}

impl FutexPingPong {
    /// A new shared word; `spin` as above.
    pub fn new(spin: bool) -> Result<Self> {
        let region = Region::new(c"skprocess-bench", 4096).map_err(Error::Io)?;
        Ok(FutexPingPong {
            region,
            spin: spin.then(Mutex::default),
        })
    }

    fn word(&self) -> &AtomicU32 {
        self.region.u32_at(0)
    }

    fn waiting(&self) -> &AtomicU32 {
        self.region.u32_at(64)
    }

    fn set(&self, v: u32) {
        self.word().store(v, Ordering::SeqCst);
        if self.spin.is_none() {
            let _ = futex::wake(self.word(), 1);
            return;
        }
        fence(Ordering::SeqCst);
        if self.waiting().load(Ordering::SeqCst) != 0 {
            let _ = futex::wake(self.word(), 1);
        }
    }

    /// Waits while the word is `v`; returns the new value.
    fn wait_while(&self, v: u32) -> u32 {
        if let Some(spin) = &self.spin {
            let word = self.word();
            let mut ready = || Ok(word.load(Ordering::Acquire) != v);
            if spin.lock().unwrap().wait(&mut ready, None).unwrap_or(false) {
                return word.load(Ordering::Acquire);
            }
        }
        let w = loop {
            self.waiting().fetch_add(1, Ordering::SeqCst);
            let w = self.word().load(Ordering::SeqCst);
            if w != v {
                self.waiting().fetch_sub(1, Ordering::SeqCst);
                break w;
            }
            let _ = futex::wait(self.word(), v, Some(Duration::from_secs(1)));
            self.waiting().fetch_sub(1, Ordering::SeqCst);
        };
        if let Some(spin) = &self.spin {
            spin.lock().unwrap().slept();
        }
        w
    }

    /// One round trip: sets `PING`, waits for the server's `PONG`.
    pub fn ping(&self) {
        self.set(PING);
        while self.wait_while(PING) == PING {}
    }

    /// Answers pings until [`stop`](FutexPingPong::stop); call in the peer.
    pub fn serve(&self) {
        let mut seen = IDLE;
        loop {
            match self.wait_while(seen) {
                PING => {
                    self.set(PONG);
                    seen = PONG;
                }
                STOP => return,
                other => seen = other,
            }
        }
    }

    /// Ends [`serve`](FutexPingPong::serve).
    pub fn stop(&self) {
        self.set(STOP);
    }
}

impl Serialize for FutexPingPong {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        let fd = wire::push_fd(self.region.fd().as_fd(), "FutexPingPong")
            .map_err(serde::ser::Error::custom)?;
        (fd, self.spin.is_some()).serialize(s)
    }
}

impl<'de> Deserialize<'de> for FutexPingPong {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let (i, spin) = <(u32, bool)>::deserialize(d)?;
        let fd = wire::take_fd(i).map_err(serde::de::Error::custom)?;
        let region = Region::from_fd(fd).map_err(serde::de::Error::custom)?;
        if region.len() < 4096 {
            return Err(serde::de::Error::custom("shared word too small"));
        }
        Ok(FutexPingPong {
            region,
            spin: spin.then(Mutex::default),
        })
    }
}

/// A bare byte stream over shared memory, one way: a ring the writer
/// copies into and the reader copies out of, in slices of an eighth of the
/// ring, each side spinning on the other's position. No framing, no
/// encoding, no claims; a reader with nothing to read for a while sleeps on
/// a futex, and the writer wakes it. The cost of moving bytes from one
/// process to another on this machine: the ceiling of a `Pipe`'s
/// throughput.
#[derive(Debug)]
pub struct ShmStream {
    region: Region,
    cap: usize,
}

/// Where the words of a [`ShmStream`] live, each on a cache line of its own.
const S_HEAD: usize = 0;
const S_TAIL: usize = 64;
const S_ACKS: usize = 128;
const S_SEQ: usize = 192;
const S_WAITING: usize = 196;
const S_DATA: usize = 256;
/// How long an idle [`ShmStream`] reader spins before it sleeps.
const S_SPIN: Duration = Duration::from_micros(200);

impl ShmStream {
    /// A stream through a ring of `cap` bytes (a power of two, at least
    /// 4096).
    ///
    /// # Errors
    ///
    /// A bad capacity, or no shared memory.
    pub fn new(cap: usize) -> Result<Self> {
        if !cap.is_power_of_two() || cap < 4096 {
            return Err(Error::usage(
                "a stream's capacity is a power of two >= 4096",
            ));
        }
        let region = Region::new(c"skprocess-bench", S_DATA + cap).map_err(Error::Io)?;
        Ok(ShmStream { region, cap })
    }

    /// Another handle on the same stream (for the process at the other
    /// end).
    ///
    /// # Errors
    ///
    /// If the descriptor cannot be duplicated or mapped.
    pub fn try_clone(&self) -> Result<Self> {
        let fd = self.region.fd().try_clone().map_err(Error::Io)?;
        let region = Region::from_fd(fd).map_err(Error::Io)?;
        Ok(ShmStream {
            region,
            cap: self.cap,
        })
    }

    fn head(&self) -> &AtomicU64 {
        self.region.u64_at(S_HEAD)
    }

    fn tail(&self) -> &AtomicU64 {
        self.region.u64_at(S_TAIL)
    }

    /// Copies `data` into the stream, waiting (spinning) for room.
    pub fn write(&self, mut data: &[u8]) {
        let slice = self.cap / 8;
        let mut head = self.head().load(Ordering::Relaxed);
        while !data.is_empty() {
            let free = loop {
                let used = head.wrapping_sub(self.tail().load(Ordering::Acquire)) as usize;
                if used < self.cap {
                    break self.cap - used;
                }
                std::hint::spin_loop();
            };
            let at = (head as usize) & (self.cap - 1);
            let n = free.min(data.len()).min(slice).min(self.cap - at);
            self.region.copy_in(S_DATA + at, &data[..n]);
            head = head.wrapping_add(n as u64);
            data = &data[n..];
            self.head().store(head, Ordering::SeqCst);
            let waiting = self.region.u32_at(S_WAITING);
            if waiting.load(Ordering::SeqCst) != 0 && waiting.swap(0, Ordering::SeqCst) != 0 {
                let seq = self.region.u32_at(S_SEQ);
                seq.fetch_add(1, Ordering::SeqCst);
                let _ = futex::wake(seq, 1);
            }
        }
    }

    /// Copies the next `len` bytes of the stream into `out` (cleared
    /// first), waiting for them.
    pub fn read(&self, out: &mut Vec<u8>, len: usize) {
        out.clear();
        let slice = self.cap / 8;
        let mut tail = self.tail().load(Ordering::Relaxed);
        while out.len() < len {
            let avail = self.wait_data(tail);
            let at = (tail as usize) & (self.cap - 1);
            let n = avail.min(len - out.len()).min(slice).min(self.cap - at);
            self.region.append_to(S_DATA + at, n, out);
            tail = tail.wrapping_add(n as u64);
            self.tail().store(tail, Ordering::Release);
        }
    }

    /// Waits until bytes past `tail` are published: spins, then sleeps.
    fn wait_data(&self, tail: u64) -> usize {
        let avail = || self.head().load(Ordering::Acquire).wrapping_sub(tail) as usize;
        let start = std::time::Instant::now();
        let mut i = 0u32;
        loop {
            if avail() > 0 {
                return avail();
            }
            std::hint::spin_loop();
            i = i.wrapping_add(1);
            if i.is_multiple_of(64) && start.elapsed() >= S_SPIN {
                break;
            }
        }
        let (seq, waiting) = (self.region.u32_at(S_SEQ), self.region.u32_at(S_WAITING));
        loop {
            let s = seq.load(Ordering::SeqCst);
            waiting.store(1, Ordering::SeqCst);
            fence(Ordering::SeqCst);
            if avail() > 0 {
                return avail();
            }
            let _ = futex::wait(seq, s, Some(Duration::from_millis(100)));
        }
    }

    /// Counts one acknowledgement (the reader, after a burst).
    pub fn ack(&self) {
        self.region.u64_at(S_ACKS).fetch_add(1, Ordering::SeqCst);
    }

    /// Spins until `n` acknowledgements were counted in all (the writer).
    pub fn wait_acks(&self, n: u64) {
        while self.region.u64_at(S_ACKS).load(Ordering::Acquire) < n {
            std::hint::spin_loop();
        }
    }
}

impl Serialize for ShmStream {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        wire::push_fd(self.region.fd().as_fd(), "ShmStream")
            .map_err(serde::ser::Error::custom)?
            .serialize(s)
    }
}

impl<'de> Deserialize<'de> for ShmStream {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let i = u32::deserialize(d)?;
        let fd = wire::take_fd(i).map_err(serde::de::Error::custom)?;
        let region = Region::from_fd(fd).map_err(serde::de::Error::custom)?;
        let cap = region.len().saturating_sub(S_DATA);
        if !cap.is_power_of_two() || cap < 4096 {
            return Err(serde::de::Error::custom("not a stream's shared memory"));
        }
        Ok(ShmStream { region, cap })
    }
}

/// Peak resident memory of a bare re-exec of this binary (one that exits as
/// soon as it would take over, before `main`): the baseline a child's memory
/// is measured against.
pub fn bare_child_peak_rss() -> Result<u64> {
    let (k, v) = crate::__private::BARE_CHILD_ENV;
    let child = std::process::Command::new("/proc/self/exe")
        .env(k, v)
        .spawn()
        .map_err(Error::Spawn)?;
    let (status, rss) = crate::sys::proc::wait_with_peak_rss(child.id()).map_err(Error::Io)?;
    if status != crate::sys::proc::ExitStatus::Code(0) {
        return Err(Error::Usage(format!("the bare child {status}")));
    }
    Ok(rss)
}

/// Makes descriptor number `target` of this process refer to what `src`
/// refers to (`dup2`), so a test can replace a socket under its reader with
/// one that speaks garbage.
///
/// # Errors
///
/// If `dup2` fails (`target` out of range, say).
pub fn replace_descriptor(src: BorrowedFd<'_>, target: std::os::fd::RawFd) -> Result<()> {
    crate::sys::sock::replace_descriptor(src, target).map_err(Error::Io)
}

/// Attaches the memory `fd` as a `Queue<T>`, with the checks a queue that
/// arrives from another process gets: for tests that forge descriptors.
///
/// # Errors
///
/// If `fd` is not a queue of `T` (see `Queue`'s `Deserialize`).
pub fn queue_from_fd<T>(fd: OwnedFd) -> Result<crate::Queue<T>> {
    crate::queue::attach_fd(fd)
}

/// Attaches the memory `fd` as a `SharedSlice<T>`, with the checks of a
/// slice that arrives from another process.
///
/// # Errors
///
/// If `fd` is not a read-only shared slice of `T`.
pub fn shared_slice_from_fd<T: bytemuck::Pod>(fd: OwnedFd) -> Result<crate::SharedSlice<T>> {
    crate::slice::attach_slice_fd(fd)
}

/// Attaches the memory `fd` as a `SharedSliceMut<T>`, with the checks of
/// a slice that arrives from another process.
///
/// # Errors
///
/// If `fd` is not a mutable shared slice of `T`.
pub fn shared_slice_mut_from_fd<T: bytemuck::Pod>(fd: OwnedFd) -> Result<crate::SharedSliceMut<T>> {
    crate::slice::attach_slice_mut_fd(fd)
}

/// The descriptor behind a queue or shared slice (a duplicate), as it
/// would travel to another process.
///
/// # Errors
///
/// If the descriptor cannot be duplicated.
pub fn handle_fd<H: Serialize>(handle: &H) -> Result<OwnedFd> {
    let enc = wire::encode(handle)?;
    enc.fds
        .into_iter()
        .next()
        .ok_or_else(|| Error::usage("the value holds no descriptor"))
}

/// The signal a child gets when its parent ends (the kernel sends it as
/// soon as the parent's spawning thread ends, before the rest of the
/// parent is gone), so a test can deliver it while the parent is still
/// there, as happens in the middle of the parent's death.
pub const PARENT_DEATH_SIGNAL: i32 = crate::sys::proc::PARENT_DEATH_SIGNAL;
