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
//! stream that wraps around the end of the ring. A message is encoded
//! straight into the ring's free space (`writer`) and published once whole,
//! header included. A frame larger than the ring (or one whose sender meets
//! a full ring that its consumer does not empty within a spin) is published
//! as far as it was written, and the rest streams through the ring: the
//! producer publishes every eighth of the ring (at most `PUBLISH_EVERY`
//! bytes) and the consumer hands space back as often, so one copies in while
//! the other copies out. The modules: `layout` (where each word lives),
//! `wait` (spinning and futex sleeps), `claim` (one writer and one reader at
//! a time), `writer` (encoding into the ring), `producer` and `consumer`.
//!
//! # Waiting
//!
//! A side with nothing to do first spins, with an adaptive budget ([`Spin`])
//! learnt from how long its recent waits took: a peer running on another
//! processor answers within microseconds, at no system-call cost; when
//! waits are long (the peer is idle, or not running, as on a loaded
//! machine) the budget drops to nothing. A producer that meets a full ring
//! while its consumer is awake spins longer, whatever the budget: that
//! consumer is working through a backlog and makes room as it copies (misses
//! back off). Then a side sleeps on a futex word: it
//! raises its `waiting` flag, re-checks, and sleeps on a sequence word that
//! the other side bumps and wakes (lowering the flag) only when it sees the
//! flag. A `SeqCst` fence on each side makes sure that either the sleeper
//! sees the new data or the other side sees the flag (Dekker's pattern), so
//! no wake-up is lost, a send to a receiver that is not asleep costs no
//! system call, and a burst of sends to a sleeping one costs one.
//!
//! # Peer death and descriptors
//!
//! A futex does not wake anyone when a process dies, so each end also holds
//! one end of a socket pair: the kernel hangs it up when the last copy of the
//! other end is closed, by `drop` or by the death of the process holding
//! it. A sleeper sleeps in slices and checks the socket between them and
//! before it reports a timeout; a sender also checks it every so many
//! messages. Descriptors inside a message (a `Pipe` or `Share` sent in a
//! message) travel on that socket (`SCM_RIGHTS`), tagged with the position
//! of their frame and sent before the frame is published.
//!
//! # Lives, copies and cut frames
//!
//! An end that is a field of a process with several lives is attached anew
//! by each life, and an end can be copied (sent while kept). Each side of a
//! ring is claimed by one end at a time (`claim`); a later life takes the
//! claim over from the dead one, and a live copy is refused with an error.
//! Each side records in the shared memory where its current frame ends, so
//! the end that takes over finds out if the previous one died mid-frame: a
//! producer then marks the frame as cut short at the position it reached
//! (the consumer drops the frame, and the descriptors that came with it),
//! a consumer skips the rest of it. There is one mark at a time: a producer
//! that must set a new one waits until the consumer has reached the
//! previous one, so a frame cut in two lives in a row is never read as
//! whole. A timed send that gives up in the middle of a frame cuts it the
//! same way.
//!
//! # Hostile peers
//!
//! Everything read from shared memory is untrusted: positions are checked
//! against the capacity cached when the end was made, frame headers are
//! validated, and a violation makes the end return the same `Err` from then
//! on. Bytes are copied out before they are looked at (see `sys::region`).

mod claim;
mod consumer;
mod layout;
mod producer;
mod wait;
mod writer;

use super::Role;
use crate::error::{Error, Result};
use crate::sys::{self, region::Region};
use consumer::{Consumer, Reading};
use layout::{corrupt, Ring, HEADER_BYTES, H_CAPACITY, H_MAGIC, H_RINGS, MAGIC};
pub(crate) use layout::{CAPACITY, MAX_CAPACITY, MIN_CAPACITY};
use producer::{Producer, PUBLISH_EVERY};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::Ordering;
use std::sync::{Mutex, TryLockError};
#[cfg(feature = "bench-internals")]
pub(crate) use wait::Spin;
pub(crate) use writer::FrameWriter;

/// One end of a shared-memory pipe.
#[derive(Debug)]
pub(crate) struct End {
    region: Region,
    cap: usize,
    /// How often a long frame is published (and its space handed back).
    chunk: usize,
    sock: OwnedFd,
    /// This end's claim on the sides it uses (see `claim`).
    id: u64,
    tx: Option<Mutex<Producer>>,
    rx: Option<Mutex<Consumer>>,
    /// The ring this end receives from.
    rx_ring: Option<usize>,
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
        if let Some(i) = layout.tx {
            let r = Ring::new(&region, cap, i as usize);
            let head = r.head().load(Ordering::Acquire);
            let tail = r.tail().load(Ordering::Acquire);
            if head.wrapping_sub(tail) > cap as u64 {
                return Err(corrupt("the positions of a ring are inconsistent"));
            }
        }
        // Each side's state is read from the shared memory when the end
        // first uses it (see `claim`).
        let tx = layout.tx.map(|i| Mutex::new(Producer::new(i as usize)));
        let rx = layout.rx.map(|i| Mutex::new(Consumer::new(i as usize)));
        Ok(End {
            region,
            cap,
            chunk: (cap / 8).min(PUBLISH_EVERY),
            sock,
            id: claim::new_id(),
            tx,
            rx,
            rx_ring: layout.rx.map(usize::from),
        })
    }

    /// The socket and the shared memory.
    pub(crate) fn fds(&self) -> [BorrowedFd<'_>; 2] {
        [self.sock.as_fd(), self.region.fd().as_fd()]
    }

    /// The bytes published and not yet read in the ring this end
    /// receives from (or, for a sending end, sends to), and its capacity.
    #[cfg(any(test, feature = "bench-internals"))]
    pub(crate) fn backlog(&self) -> (u64, u64) {
        let ring = match (&self.rx, &self.tx) {
            (Some(c), _) => c.lock().unwrap_or_else(|e| e.into_inner()).ring,
            (None, Some(p)) => p.lock().unwrap_or_else(|e| e.into_inner()).ring,
            (None, None) => 0,
        };
        let r = Ring::new(&self.region, self.cap, ring);
        let head = r.head().load(Ordering::Acquire);
        let tail = r.tail().load(Ordering::Acquire);
        (head.wrapping_sub(tail), self.cap as u64)
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
}

impl Drop for End {
    /// Gives back the claims this end holds, so that a copy of it (in this
    /// process or another) may use its sides.
    fn drop(&mut self) {
        if let Some(p) = &mut self.tx {
            let p = p.get_mut().unwrap_or_else(|e| e.into_inner());
            if p.claimed {
                claim::release(Ring::new(&self.region, self.cap, p.ring).writer(), self.id);
            }
        }
        if let Some(c) = &mut self.rx {
            let c = c.get_mut().unwrap_or_else(|e| e.into_inner());
            if c.claimed {
                claim::release(Ring::new(&self.region, self.cap, c.ring).reader(), self.id);
            }
        }
    }
}

#[cfg(test)]
mod test;
