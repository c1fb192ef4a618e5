//! The shared-memory flavor: a byte ring per direction in a memfd, futex
//! wake-ups, and a socket pair alongside for peer death and descriptors.
//!
//! # The ring
//!
//! A single-producer, single-consumer byte ring (Lamport's queue): the
//! producer owns `head`, the consumer owns `tail`; both count bytes since the
//! start and only grow, so `head - tail` bytes are readable and
//! `capacity - (head - tail)` writable. Messages are the same frames as on a
//! socket (`[u32 len][u8 kind][u8 nfds][u16 0]` + payload), written as a byte
//! stream that wraps around the end of the ring. A frame larger than the
//! ring streams through it: the producer publishes every eighth of the ring
//! (at most [`PUBLISH_EVERY`] bytes) and the consumer hands space back as
//! often, so one copies in while the other copies out. A small frame is
//! published once, whole, and its space handed back once.
//!
//! # Waiting
//!
//! A side with nothing to do first spins, with an adaptive budget ([`Spin`]):
//! a peer running on another processor answers within microseconds, at no
//! system-call cost; when spinning stops paying (the peer is not running, as
//! on a loaded machine) the budget drops to nothing. Then it sleeps on a
//! futex word: it raises its `waiting` flag, re-checks, and sleeps on a
//! sequence word that the other side bumps and wakes only when it sees the
//! flag. A `SeqCst` fence on each side makes sure that either the sleeper
//! sees the new data or the other side sees the flag (Dekker's pattern), so
//! no wake-up is lost and a send to a receiver that is not asleep costs no
//! system call.
//!
//! # Peer death and descriptors
//!
//! A futex does not wake anyone when a process dies, so each end also holds
//! one end of a socket pair: the kernel hangs it up when the last copy of the
//! other end is closed, by `drop` or by the death of the process holding
//! it. A sleeper sleeps in slices of [`SLICE`] and checks the socket between
//! them, before it sleeps (at most every [`CHECK_PEER_EVERY`]) and before it
//! reports a timeout. Descriptors inside a message (a `Pipe` or `Share` sent
//! in a message) travel on that socket (`SCM_RIGHTS`), tagged with the
//! position of their frame and sent before the frame is published.
//!
//! # Lives
//!
//! An end that is a field of a process with several lives is attached anew
//! by each life. Each side records in the shared memory where its current
//! frame ends, so a later life finds out if an earlier one died mid-frame:
//! a producer then marks the frame as cut short (the consumer drops it, and
//! the descriptors that came with it), a consumer skips the rest of it.
//!
//! # Hostile peers
//!
//! Everything read from shared memory is untrusted: positions are checked
//! against the capacity cached when the end was made, frame headers are
//! validated, and a violation makes the end return the same `Err` from then
//! on. Bytes are copied out before they are looked at (see `sys::region`).

use super::Role;
use crate::error::{Error, Result};
use crate::proto::kind;
use crate::sys::{self, futex, region::Region};
use crate::wire;
use std::io::IoSlice;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd, RawFd};
use std::sync::atomic::{fence, AtomicU32, AtomicU64, Ordering};
use std::sync::{Mutex, TryLockError};
use std::time::{Duration, Instant};

const MAGIC: u64 = u64::from_le_bytes(*b"skpipe02");
/// Bytes before the first ring: the header and the control blocks.
const HEADER_BYTES: usize = 4096;
/// Header words.
const H_MAGIC: usize = 0;
const H_RINGS: usize = 8;
const H_CAPACITY: usize = 16;
/// Control block of ring `i`: at `CTL_BASE + i * CTL_SIZE`. It has four
/// parts, 128 bytes apart (two cache lines, which processors may fetch in
/// pairs), so that what one side writes for every message never shares a
/// line with what the other side writes, and the rarely written `waiting`
/// flags, which the other side reads for every message, stay in its cache.
const CTL_BASE: usize = 512;
const CTL_SIZE: usize = 512;
/// Written by the producer for every frame: `head`, the end of the frame
/// being written (a producer that finds `head` short of it knows its
/// predecessor died mid-frame), `1 +` the position at which a frame was cut
/// short (0: none), and the futex word the consumer sleeps on.
const C_HEAD: usize = 0;
const C_TX_FRAME_END: usize = 8;
const C_ABORTED: usize = 16;
const C_DATA_SEQ: usize = 24;
/// Written by the consumer for every frame: `tail`, the end of the frame
/// being read (for a consumer taking over mid-frame), and the futex word the
/// producer sleeps on.
const C_TAIL: usize = 128;
const C_RX_FRAME_END: usize = 136;
const C_SPACE_SEQ: usize = 144;
/// Raised by the consumer while it sleeps.
const C_CONSUMER_WAITING: usize = 256;
/// Raised by the producer while it sleeps.
const C_PRODUCER_WAITING: usize = 384;

/// Bytes in each ring.
pub(crate) const CAPACITY: usize = 1 << 20;
/// The smallest and largest capacity a ring may have.
pub(crate) const MIN_CAPACITY: usize = 4096;
pub(crate) const MAX_CAPACITY: usize = 1 << 30;
/// Publish a long frame every this many bytes, so the consumer can start.
const PUBLISH_EVERY: usize = 128 << 10;
/// Longest futex sleep between two checks for a dead peer.
const SLICE: Duration = Duration::from_millis(100);
/// Least time between two checks for a dead peer before sleeping.
const CHECK_PEER_EVERY: Duration = Duration::from_millis(1);
/// How long a receiver waits for the descriptors of a message, which were
/// sent before the message itself.
const FD_WAIT: Duration = Duration::from_secs(2);

/// One direction of the shared memory.
#[derive(Clone, Copy)]
struct Ring<'a> {
    region: &'a Region,
    ctl: usize,
    data: usize,
    cap: usize,
}

impl<'a> Ring<'a> {
    fn new(region: &'a Region, cap: usize, index: usize) -> Ring<'a> {
        Ring {
            region,
            ctl: CTL_BASE + index * CTL_SIZE,
            data: HEADER_BYTES + index * cap,
            cap,
        }
    }
    fn head(&self) -> &'a AtomicU64 {
        self.region.u64_at(self.ctl + C_HEAD)
    }
    fn tail(&self) -> &'a AtomicU64 {
        self.region.u64_at(self.ctl + C_TAIL)
    }
    fn data_seq(&self) -> &'a AtomicU32 {
        self.region.u32_at(self.ctl + C_DATA_SEQ)
    }
    fn space_seq(&self) -> &'a AtomicU32 {
        self.region.u32_at(self.ctl + C_SPACE_SEQ)
    }
    fn producer_waiting(&self) -> &'a AtomicU32 {
        self.region.u32_at(self.ctl + C_PRODUCER_WAITING)
    }
    fn consumer_waiting(&self) -> &'a AtomicU32 {
        self.region.u32_at(self.ctl + C_CONSUMER_WAITING)
    }
    fn tx_frame_end(&self) -> &'a AtomicU64 {
        self.region.u64_at(self.ctl + C_TX_FRAME_END)
    }
    fn aborted(&self) -> &'a AtomicU64 {
        self.region.u64_at(self.ctl + C_ABORTED)
    }
    fn rx_frame_end(&self) -> &'a AtomicU64 {
        self.region.u64_at(self.ctl + C_RX_FRAME_END)
    }

    /// Copies `src` in at stream position `pos`, wrapping.
    fn put(&self, pos: u64, src: &[u8]) {
        let off = (pos % self.cap as u64) as usize;
        let first = src.len().min(self.cap - off);
        self.region.copy_in(self.data + off, &src[..first]);
        if first < src.len() {
            self.region.copy_in(self.data, &src[first..]);
        }
    }

    /// Copies out into `dst` from stream position `pos`, wrapping.
    fn get(&self, pos: u64, dst: &mut [u8]) {
        let off = (pos % self.cap as u64) as usize;
        let first = dst.len().min(self.cap - off);
        self.region.copy_out(self.data + off, &mut dst[..first]);
        if first < dst.len() {
            let rest = &mut dst[first..];
            self.region.copy_out(self.data, rest);
        }
    }

    /// Appends `len` bytes from stream position `pos` to `dst`, wrapping.
    fn append(&self, pos: u64, len: usize, dst: &mut Vec<u8>) {
        let off = (pos % self.cap as u64) as usize;
        let first = len.min(self.cap - off);
        self.region.append_to(self.data + off, first, dst);
        if first < len {
            self.region.append_to(self.data, len - first, dst);
        }
    }
}

fn corrupt(what: &str) -> Error {
    Error::Wire(format!(
        "the shared memory of a pipe is corrupt ({what}); the peer is misbehaving"
    ))
}

/// Whether the peer's socket is gone (the kernel hung ours up).
fn peer_gone(sock: BorrowedFd<'_>) -> Result<bool> {
    let r = sys::sock::poll(&[sock], Some(Instant::now())).map_err(Error::Io)?;
    Ok(r[0].hangup)
}

/// An adaptive spin budget: how long a side spins before it sleeps.
///
/// Spinning pays when the peer runs on another processor and answers within
/// microseconds (no system call, no wake-up latency); it costs when the peer
/// is not running (it may even need this processor). So the budget doubles
/// (up to [`SPIN_MAX`]) each time a spin sees the peer's answer, and halves
/// each time it does not; at zero, one wait in [`PROBE_EVERY`] spins
/// briefly to find out whether spinning pays again.
///
/// It also rate-limits the check for a dead peer (a `poll` system call) that
/// precedes each sleep: a busy ping-pong that sleeps every few microseconds
/// checks at most once per [`CHECK_PEER_EVERY`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct Spin {
    budget_ns: u32,
    waits: u32,
    peer_checked: Option<Instant>,
}

/// The largest spin budget.
const SPIN_MAX: Duration = Duration::from_micros(20);
/// The budget of a probe, and the smallest non-zero budget: longer than a
/// futex wake-up takes, so that a probe sees a peer that was asleep answer
/// (after which the peer, probing in turn, sees this side answer at once).
const SPIN_PROBE: Duration = Duration::from_micros(10);
/// At a zero budget, how often a wait probes.
const PROBE_EVERY: u32 = 64;

impl Default for Spin {
    fn default() -> Self {
        Spin {
            budget_ns: SPIN_MAX.as_nanos() as u32,
            waits: 0,
            peer_checked: None,
        }
    }
}

impl Spin {
    /// Whether it is time to check for a dead peer again (and, if so,
    /// records that the check is made now).
    fn should_check_peer(&mut self) -> bool {
        let now = Instant::now();
        match self.peer_checked {
            Some(t) if now.saturating_duration_since(t) < CHECK_PEER_EVERY => false,
            _ => {
                self.peer_checked = Some(now);
                true
            }
        }
    }

    /// Spins while `ready()` is false, within the budget and `deadline`;
    /// `Ok(false)` if it still is.
    pub(crate) fn wait(
        &mut self,
        ready: &mut dyn FnMut() -> Result<bool>,
        deadline: Option<Instant>,
    ) -> Result<bool> {
        if ready()? {
            return Ok(true);
        }
        self.waits = self.waits.wrapping_add(1);
        let budget = match self.budget_ns {
            0 if self.waits.is_multiple_of(PROBE_EVERY) => SPIN_PROBE,
            0 => return Ok(false),
            ns => Duration::from_nanos(ns as u64),
        };
        let start = Instant::now();
        let end = match deadline {
            Some(d) => d.min(start + budget),
            None => start + budget,
        };
        let mut i = 0u32;
        loop {
            std::hint::spin_loop();
            if ready()? {
                let grown = (budget * 2).clamp(SPIN_PROBE, SPIN_MAX);
                self.budget_ns = grown.as_nanos() as u32;
                return Ok(true);
            }
            i = i.wrapping_add(1);
            if i.is_multiple_of(32) && Instant::now() >= end {
                let halved = self.budget_ns / 2;
                self.budget_ns = if halved < SPIN_PROBE.as_nanos() as u32 / 2 {
                    0
                } else {
                    halved
                };
                return Ok(false);
            }
        }
    }
}

/// Waits until `ready()` or `deadline`: spins, then sleeps on `seq` with
/// `waiting` raised. `Ok(false)` on timeout; `Err(Disconnected)` if the peer
/// is gone and `ready()` is still false.
fn wait_until(
    spin: &mut Spin,
    ready: &mut dyn FnMut() -> Result<bool>,
    seq: &AtomicU32,
    waiting: &AtomicU32,
    sock: BorrowedFd<'_>,
    deadline: Option<Instant>,
) -> Result<bool> {
    if spin.wait(ready, deadline)? {
        return Ok(true);
    }
    loop {
        let s = seq.load(Ordering::SeqCst);
        waiting.store(1, Ordering::SeqCst);
        fence(Ordering::SeqCst);
        let r = (|| {
            if ready()? {
                return Ok(Some(true));
            }
            let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
            // A dead peer is reported rather than a timeout, so check before
            // giving up too.
            let timed_out = left.is_some_and(|l| l.is_zero());
            if (timed_out || spin.should_check_peer()) && peer_gone(sock)? {
                // Whatever the peer published before it went is readable.
                return if ready()? {
                    Ok(Some(true))
                } else {
                    Err(Error::Disconnected)
                };
            }
            if timed_out {
                return Ok(Some(false));
            }
            let slice = left.map_or(SLICE, |l| l.min(SLICE));
            futex::wait(seq, s, Some(slice)).map_err(Error::Io)?;
            Ok(None)
        })();
        waiting.store(0, Ordering::Relaxed);
        match r {
            Ok(Some(v)) => return Ok(v),
            Ok(None) => {}
            Err(e) => return Err(e),
        }
    }
}

/// Bumps `seq` and wakes its sleeper if `waiting` is raised. Call after
/// publishing a position.
fn notify(seq: &AtomicU32, waiting: &AtomicU32) {
    fence(Ordering::SeqCst);
    if waiting.load(Ordering::Relaxed) != 0 {
        seq.fetch_add(1, Ordering::SeqCst);
        let _ = futex::wake(seq, 1);
    }
}

/// The producer's private state.
#[derive(Debug)]
struct Producer {
    ring: usize,
    head: u64,
    /// The consumer's position when last read.
    tail: u64,
    /// The previous producer of this ring died in the middle of a frame:
    /// mark it cut short before writing the next one.
    torn: bool,
    spin: Spin,
}

/// Where the consumer is in the byte stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reading {
    /// At a frame boundary.
    Header,
    /// In the payload of the frame at `start`, which ends at `end`; the
    /// payload so far is in `buf`.
    Payload { nfds: usize, start: u64, end: u64 },
    /// Discarding up to `end`: the rest of a frame whose beginning a
    /// previous consumer of this ring read before it died.
    Skip { end: u64 },
}

/// The consumer's private state.
#[derive(Debug)]
struct Consumer {
    ring: usize,
    /// Read position (bytes before it have been copied out).
    tail: u64,
    /// The position last published to the producer.
    released: u64,
    reading: Reading,
    /// The payload being received; reused from message to message.
    buf: Vec<u8>,
    /// Set once the peer broke the protocol: every later call returns it.
    broken: Option<String>,
    spin: Spin,
}

/// The longest a frame can be, header included.
const MAX_FRAME_BYTES: u64 = (crate::config::DEFAULT_MAX_MESSAGE + wire::HEADER) as u64;

/// A receive buffer larger than this is freed after its message, not kept.
const KEEP_BUFFER: usize = 4 << 20;

/// One end of a shared-memory pipe.
#[derive(Debug)]
pub(crate) struct End {
    region: Region,
    cap: usize,
    /// How often a long frame is published (and its space handed back).
    chunk: usize,
    sock: OwnedFd,
    tx: Option<Mutex<Producer>>,
    rx: Option<Mutex<Consumer>>,
}

/// How a ring end is described when it moves.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub(crate) struct Layout {
    /// The ring this end writes, if it sends.
    pub(crate) tx: Option<u8>,
    /// The ring this end reads, if it receives.
    pub(crate) rx: Option<u8>,
}

impl End {
    /// A connected pair of ends; `a` and `b` say what each may do (both
    /// duplex, or `a` sends and `b` receives).
    pub(crate) fn pair(a: Role, b: Role, capacity: usize) -> Result<(End, End)> {
        let duplex = a == Role::Both;
        let rings = if duplex { 2 } else { 1 };
        let cap = capacity
            .clamp(MIN_CAPACITY, MAX_CAPACITY)
            .next_power_of_two();
        let region =
            Region::new(c"skprocess-pipe", HEADER_BYTES + rings * cap).map_err(Error::Io)?;
        region
            .u64_at(H_RINGS)
            .store(rings as u64, Ordering::Relaxed);
        region
            .u64_at(H_CAPACITY)
            .store(cap as u64, Ordering::Relaxed);
        region.u64_at(H_MAGIC).store(MAGIC, Ordering::Release);
        let (la, lb) = if duplex {
            (
                Layout {
                    tx: Some(0),
                    rx: Some(1),
                },
                Layout {
                    tx: Some(1),
                    rx: Some(0),
                },
            )
        } else {
            (
                Layout {
                    tx: Some(0),
                    rx: None,
                },
                Layout {
                    tx: None,
                    rx: Some(0),
                },
            )
        };
        let (sa, sb) = sys::sock::socketpair().map_err(Error::Io)?;
        let region_b =
            Region::from_fd(region.fd().try_clone().map_err(Error::Io)?).map_err(Error::Io)?;
        Ok((
            End::attach(region, sa, &la, a)?,
            End::attach(region_b, sb, &lb, b)?,
        ))
    }

    /// An end over a region and socket, checking everything about them.
    pub(crate) fn attach(
        region: Region,
        sock: OwnedFd,
        layout: &Layout,
        role: Role,
    ) -> Result<End> {
        let bad = |what: &str| Error::Wire(format!("not a valid pipe end: {what}"));
        if region.len() < HEADER_BYTES {
            return Err(bad("its shared memory is too small"));
        }
        if region.u64_at(H_MAGIC).load(Ordering::Acquire) != MAGIC {
            return Err(bad("its shared memory has no pipe header"));
        }
        let rings = region.u64_at(H_RINGS).load(Ordering::Relaxed);
        let cap = region.u64_at(H_CAPACITY).load(Ordering::Relaxed);
        if !(1..=2).contains(&rings)
            || !cap.is_power_of_two()
            || !(MIN_CAPACITY as u64..=MAX_CAPACITY as u64).contains(&cap)
        {
            return Err(bad("its ring count or capacity is out of range"));
        }
        let (rings, cap) = (rings as usize, cap as usize);
        if region.len() != HEADER_BYTES + rings * cap {
            return Err(bad("its shared memory does not match its header"));
        }
        let valid = |i: Option<u8>| i.is_none_or(|i| (i as usize) < rings);
        if !valid(layout.tx) || !valid(layout.rx) {
            return Err(bad("it names a ring that does not exist"));
        }
        if layout.tx.is_some() != role.sends() || layout.rx.is_some() != role.receives() {
            return Err(bad("it is another kind of pipe end than the one expected"));
        }
        let tx = match layout.tx {
            Some(i) => {
                let r = Ring::new(&region, cap, i as usize);
                let head = r.head().load(Ordering::Acquire);
                let tail = r.tail().load(Ordering::Acquire);
                if head.wrapping_sub(tail) > cap as u64 {
                    return Err(corrupt("the positions of a ring are inconsistent"));
                }
                // The previous producer (an earlier life of a process) died
                // in the middle of a frame if `head` is short of its end.
                let torn = r.tx_frame_end().load(Ordering::Relaxed) != head;
                Some(Mutex::new(Producer {
                    ring: i as usize,
                    head,
                    tail,
                    torn,
                    spin: Spin::default(),
                }))
            }
            None => None,
        };
        let rx = match layout.rx {
            Some(i) => {
                let r = Ring::new(&region, cap, i as usize);
                let tail = r.tail().load(Ordering::Acquire);
                // The previous consumer died in the middle of a frame: skip
                // the rest of it.
                let end = r.rx_frame_end().load(Ordering::Relaxed);
                let ahead = end.wrapping_sub(tail);
                let reading = if end != 0 && ahead != 0 && ahead <= MAX_FRAME_BYTES {
                    Reading::Skip { end }
                } else {
                    Reading::Header
                };
                Some(Mutex::new(Consumer {
                    ring: i as usize,
                    tail,
                    released: tail,
                    reading,
                    buf: Vec::new(),
                    broken: None,
                    spin: Spin::default(),
                }))
            }
            None => None,
        };
        Ok(End {
            region,
            cap,
            chunk: (cap / 8).min(PUBLISH_EVERY),
            sock,
            tx,
            rx,
        })
    }

    /// The socket and the shared memory.
    pub(crate) fn fds(&self) -> [BorrowedFd<'_>; 2] {
        [self.sock.as_fd(), self.region.fd().as_fd()]
    }

    /// What to serialize to move this end: its descriptors and layout.
    /// Fails while a message is half received (it would be lost) or another
    /// thread is using the end.
    pub(crate) fn to_move(&self) -> std::result::Result<([BorrowedFd<'_>; 2], Layout), String> {
        let busy =
            || "this pipe end is in use by another thread and cannot be moved now".to_string();
        let tx = match &self.tx {
            Some(p) => match p.try_lock() {
                Ok(p) => Some(p.ring as u8),
                Err(TryLockError::Poisoned(p)) => Some(p.into_inner().ring as u8),
                Err(TryLockError::WouldBlock) => return Err(busy()),
            },
            None => None,
        };
        let rx = match &self.rx {
            Some(c) => {
                let c = match c.try_lock() {
                    Ok(c) => c,
                    Err(TryLockError::Poisoned(c)) => c.into_inner(),
                    Err(TryLockError::WouldBlock) => return Err(busy()),
                };
                if c.reading != Reading::Header {
                    return Err(
                        "this pipe end is in the middle of receiving a message; receive it before \
                                moving the end into another process"
                            .into(),
                    );
                }
                Some(c.ring as u8)
            }
            None => None,
        };
        Ok((self.fds(), Layout { tx, rx }))
    }

    pub(crate) fn send(&self, bytes: &[u8], fds: &[RawFd]) -> Result<()> {
        let p = self
            .tx
            .as_ref()
            .ok_or_else(|| Error::usage("this pipe end cannot send"))?;
        let mut p = p.lock().unwrap_or_else(|e| e.into_inner());
        let len = wire::frame_limits(bytes.len(), fds.len())?;
        let ring = Ring::new(&self.region, self.cap, p.ring);
        if p.torn {
            // Tell the consumer that the frame it may be in ends here.
            ring.aborted()
                .store(p.head.wrapping_add(1), Ordering::Relaxed);
            p.torn = false;
        }
        if !fds.is_empty() {
            // Tagged with the frame's position, so descriptors of a frame
            // that was cut short are told apart and dropped.
            let tag = p.head.to_le_bytes();
            sys::sock::send(self.sock.as_fd(), &[IoSlice::new(&tag)], fds)
                .map_err(wire::gone_or_io)?;
        }
        let mut header = [0u8; wire::HEADER];
        header[..4].copy_from_slice(&len.to_le_bytes());
        header[4] = kind::PIPE;
        header[5] = fds.len() as u8;
        let end = p.head.wrapping_add((wire::HEADER + bytes.len()) as u64);
        ring.tx_frame_end().store(end, Ordering::Relaxed);
        self.write(&mut p, ring, &[&header, bytes])
    }

    fn write(&self, p: &mut Producer, r: Ring<'_>, parts: &[&[u8]]) -> Result<()> {
        let cap = self.cap as u64;
        let mut unpublished = 0usize;
        for part in parts {
            let mut data = *part;
            while !data.is_empty() {
                let mut free = cap - p.head.wrapping_sub(p.tail);
                if free == 0 {
                    p.tail = r.tail().load(Ordering::Acquire);
                    let used = p.head.wrapping_sub(p.tail);
                    if used > cap {
                        return Err(corrupt("the reader's position is out of range"));
                    }
                    free = cap - used;
                }
                if free == 0 {
                    self.publish(p, r);
                    unpublished = 0;
                    let head = p.head;
                    let mut has_space = || {
                        let used = head.wrapping_sub(r.tail().load(Ordering::Acquire));
                        if used > cap {
                            return Err(corrupt("the reader's position is out of range"));
                        }
                        Ok(used < cap)
                    };
                    wait_until(
                        &mut p.spin,
                        &mut has_space,
                        r.space_seq(),
                        r.producer_waiting(),
                        self.sock.as_fd(),
                        None,
                    )?;
                    continue;
                }
                let n = (free as usize).min(data.len()).min(self.chunk);
                r.put(p.head, &data[..n]);
                p.head = p.head.wrapping_add(n as u64);
                data = &data[n..];
                unpublished += n;
                if unpublished >= self.chunk {
                    self.publish(p, r);
                    unpublished = 0;
                }
            }
        }
        self.publish(p, r);
        Ok(())
    }

    fn publish(&self, p: &Producer, r: Ring<'_>) {
        r.head().store(p.head, Ordering::Release);
        notify(r.data_seq(), r.consumer_waiting());
    }

    /// Receives one message and hands its bytes and descriptors to `f`
    /// (the bytes are only borrowed: the buffer is reused). `Ok(None)` when
    /// `deadline` passes first; a half-received message stays buffered and
    /// the next call resumes it.
    pub(crate) fn recv<R>(
        &self,
        deadline: Option<Instant>,
        f: impl FnOnce(&[u8], Vec<OwnedFd>) -> R,
    ) -> Result<Option<R>> {
        let c = self
            .rx
            .as_ref()
            .ok_or_else(|| Error::usage("this pipe end cannot receive"))?;
        let mut c = c.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(b) = &c.broken {
            return Err(Error::Wire(b.clone()));
        }
        let r = Ring::new(&self.region, self.cap, c.ring);
        let got = self.read(&mut c, r, deadline);
        self.release(&mut c, r);
        match got {
            Ok(Some(fds)) => {
                let out = f(&c.buf, fds);
                if c.buf.capacity() > KEEP_BUFFER {
                    c.buf = Vec::new();
                } else {
                    c.buf.clear();
                }
                Ok(Some(out))
            }
            Ok(None) => Ok(None),
            Err(Error::Wire(m)) => {
                c.broken = Some(m.clone());
                Err(Error::Wire(m))
            }
            Err(e) => Err(e),
        }
    }

    /// Bytes readable now.
    fn available(&self, c: &Consumer, r: Ring<'_>) -> Result<usize> {
        let avail = r.head().load(Ordering::Acquire).wrapping_sub(c.tail);
        if avail > self.cap as u64 {
            return Err(corrupt("the writer's position is out of range"));
        }
        Ok(avail as usize)
    }

    /// Waits until `need` bytes are readable; `Ok(false)` on timeout.
    fn wait_for(
        &self,
        c: &mut Consumer,
        r: Ring<'_>,
        need: usize,
        deadline: Option<Instant>,
    ) -> Result<bool> {
        if self.available(c, r)? >= need {
            return Ok(true);
        }
        // Hand back what was read before sleeping: the producer may be
        // waiting for that space.
        self.release(c, r);
        let mut spin = c.spin;
        let got = {
            let c = &*c;
            let mut ready = || Ok(self.available(c, r)? >= need);
            wait_until(
                &mut spin,
                &mut ready,
                r.data_seq(),
                r.consumer_waiting(),
                self.sock.as_fd(),
                deadline,
            )
        };
        c.spin = spin;
        match got {
            Err(Error::Disconnected)
                if c.reading != Reading::Header || self.available(c, r)? > 0 =>
            {
                Err(Error::Wire(
                    "the other side ended in the middle of a message".into(),
                ))
            }
            other => other,
        }
    }

    /// Publishes the read position, waking the producer if it waits for
    /// space.
    fn release(&self, c: &mut Consumer, r: Ring<'_>) {
        if c.released != c.tail {
            c.released = c.tail;
            r.tail().store(c.tail, Ordering::Release);
            notify(r.space_seq(), r.producer_waiting());
        }
    }

    /// Where a frame was cut short, if that is within the `n` bytes
    /// from the read position. Call after [`available`](End::available):
    /// the mark is set before the bytes that follow it are published.
    fn cut(&self, c: &Consumer, r: Ring<'_>, n: usize) -> Option<u64> {
        let mark = r.aborted().load(Ordering::Acquire);
        let at = mark.checked_sub(1)?;
        (at.wrapping_sub(c.tail) < n as u64).then_some(at)
    }

    /// Reads one frame's payload into `c.buf`; returns its descriptors.
    fn read(
        &self,
        c: &mut Consumer,
        r: Ring<'_>,
        deadline: Option<Instant>,
    ) -> Result<Option<Vec<OwnedFd>>> {
        loop {
            match c.reading {
                Reading::Header => {
                    if !self.wait_for(c, r, wire::HEADER, deadline)? {
                        return Ok(None);
                    }
                    if let Some(at) = self.cut(c, r, wire::HEADER) {
                        if at != c.tail {
                            // A header cut short by a sender that died.
                            c.tail = at;
                            continue;
                        }
                    }
                    let mut h = [0u8; wire::HEADER];
                    r.get(c.tail, &mut h);
                    let len = u32::from_le_bytes([h[0], h[1], h[2], h[3]]) as usize;
                    if h[4] != kind::PIPE || h[6] != 0 || h[7] != 0 {
                        return Err(corrupt(&format!("bad frame header {h:02x?}")));
                    }
                    if len > crate::config::DEFAULT_MAX_MESSAGE {
                        return Err(Error::Wire(format!(
                            "a message of {len} bytes is over the {} byte limit",
                            crate::config::DEFAULT_MAX_MESSAGE
                        )));
                    }
                    let start = c.tail;
                    let end = start.wrapping_add((wire::HEADER + len) as u64);
                    r.rx_frame_end().store(end, Ordering::Relaxed);
                    c.tail = start.wrapping_add(wire::HEADER as u64);
                    c.buf.clear();
                    c.buf.reserve(len.min(1 << 20));
                    c.reading = Reading::Payload {
                        nfds: h[5] as usize,
                        start,
                        end,
                    };
                }
                Reading::Payload { end, .. } | Reading::Skip { end } => {
                    let keep = matches!(c.reading, Reading::Payload { .. });
                    let mut since_release = 0usize;
                    let mut cut_short = false;
                    while c.tail != end {
                        let mut avail = self.available(c, r)?;
                        if avail == 0 {
                            if !self.wait_for(c, r, 1, deadline)? {
                                return Ok(None);
                            }
                            since_release = 0;
                            avail = self.available(c, r)?;
                        }
                        let mut n = avail.min(end.wrapping_sub(c.tail) as usize);
                        if let Some(at) = self.cut(c, r, n) {
                            if at == c.tail {
                                cut_short = true;
                                break;
                            }
                            n = at.wrapping_sub(c.tail) as usize;
                        }
                        if keep {
                            r.append(c.tail, n, &mut c.buf);
                        }
                        c.tail = c.tail.wrapping_add(n as u64);
                        since_release += n;
                        if since_release >= self.chunk {
                            self.release(c, r);
                            since_release = 0;
                        }
                    }
                    let done = c.reading;
                    c.reading = Reading::Header;
                    if cut_short {
                        // Its sender died before finishing it: it was never
                        // sent. Read on from where the next sender started.
                        r.rx_frame_end().store(c.tail, Ordering::Relaxed);
                        c.buf.clear();
                        continue;
                    }
                    if let Reading::Payload { nfds, start, .. } = done {
                        let fds = if nfds > 0 {
                            self.recv_fds(nfds, start)?
                        } else {
                            Vec::new()
                        };
                        return Ok(Some(fds));
                    }
                }
            }
        }
    }

    /// Takes the `n` descriptors of the frame at `start` off the socket,
    /// dropping any left there by frames that were cut short.
    fn recv_fds(&self, n: usize, start: u64) -> Result<Vec<OwnedFd>> {
        let missing = || Error::Wire(format!("the {n} descriptors of a message never arrived"));
        let deadline = Some(Instant::now() + FD_WAIT);
        loop {
            let mut tag = [0u8; 8];
            let mut got = 0;
            let mut fds = Vec::new();
            while got < tag.len() {
                if !sys::sock::wait_readable(self.sock.as_fd(), deadline).map_err(Error::Io)? {
                    return Err(missing());
                }
                let k = sys::sock::recv(self.sock.as_fd(), &mut tag[got..], &mut fds)
                    .map_err(Error::Io)?;
                if k == 0 {
                    return Err(missing());
                }
                got += k;
            }
            let tag = u64::from_le_bytes(tag);
            if tag == start && fds.len() == n {
                return Ok(fds);
            }
            // Descriptors of an earlier frame that was cut short: drop them.
            let earlier = start.wrapping_sub(tag);
            if earlier == 0 || earlier >= 1 << 63 {
                return Err(missing());
            }
        }
    }
}

#[cfg(test)]
mod test;
