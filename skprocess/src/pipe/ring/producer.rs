//! The producer: writes frames into its ring, publishes them, and marks
//! where a frame was cut short.

use super::claim::{self, Side};
use super::layout::{corrupt, Ring};
use super::wait::{advance, notify, peer_gone, wait_until, Spin};
use super::writer::{FrameWriter, Stopped};
use super::End;
use crate::error::{Error, Result};
use crate::proto::kind;
use crate::sys;
use crate::wire;
use std::cell::Cell;
use std::io::IoSlice;
use std::os::fd::{AsFd, RawFd};
use std::sync::atomic::Ordering;
use std::time::Instant;

thread_local! {
    /// The sending side whose message this thread is encoding (its lock's
    /// address), or 0.
    static ENCODING: Cell<usize> = const { Cell::new(0) };
}

/// Marks this thread as encoding for one sending side until dropped (also
/// when the encoding panics).
struct Encoding(usize);

impl Encoding {
    fn enter(id: usize) -> Encoding {
        Encoding(ENCODING.with(|e| e.replace(id)))
    }
}

impl Drop for Encoding {
    fn drop(&mut self) {
        ENCODING.with(|e| e.set(self.0));
    }
}

/// Publish a long frame every this many bytes, so the consumer can start.
pub(super) const PUBLISH_EVERY: usize = 128 << 10;
/// A sender checks that its receiver is still there once every this many
/// messages (and whenever the ring is full), so that sending to a receiver
/// that has died fails soon even while the ring has room.
const CHECK_PEER_SENDS: u32 = 1024;

/// The producer's private state.
#[derive(Debug)]
pub(super) struct Producer {
    pub(super) ring: usize,
    pub(super) head: u64,
    /// The consumer's position when last read.
    pub(super) tail: u64,
    /// A frame of this ring was cut short (its writer died, or a timed send
    /// gave up in the middle of it): the consumer must be told where before
    /// the next frame.
    torn: bool,
    /// Whether this end holds the ring's writer claim (and `head`, `tail`
    /// and `torn` were read from the shared memory when it took it).
    pub(super) claimed: bool,
    /// Sends since the receiver was last checked for.
    sends: u32,
    pub(super) spin: Spin,
    /// Where a frame's small writes gather (see `writer`).
    pub(super) stage: Vec<u8>,
}

impl Producer {
    pub(super) fn new(ring: usize) -> Producer {
        Producer {
            ring,
            head: 0,
            tail: 0,
            torn: false,
            claimed: false,
            sends: 0,
            spin: Spin::default(),
            stage: Vec::new(),
        }
    }
}

/// Whether the consumer is not asleep: facing a full ring, that is a reader
/// with a backlog at work, whose room comes soon (see `Spin::busy_peer`).
pub(super) fn consumer_awake(r: Ring<'_>) -> bool {
    r.consumer_waiting().load(Ordering::Relaxed) == 0
}

/// The header of a frame of the pipe: its payload's length and its number
/// of descriptors.
fn frame_header(len: u32, nfds: usize) -> [u8; wire::HEADER] {
    let mut header = [0u8; wire::HEADER];
    header[..4].copy_from_slice(&len.to_le_bytes());
    header[4] = kind::PIPE;
    header[5] = nfds as u8;
    header
}

impl End {
    /// Sends one frame of raw bytes (see [`send_with`](End::send_with)).
    #[cfg(test)]
    pub(crate) fn send(
        &self,
        bytes: &[u8],
        fds: &[RawFd],
        deadline: Option<Instant>,
    ) -> Result<bool> {
        let encode = |w: &mut FrameWriter<'_>| {
            w.write(bytes);
            Ok(fds.to_vec())
        };
        self.send_with(deadline, false, encode, |_| {})
    }

    /// Sends one frame whose payload `encode` writes (straight into the
    /// ring, see `writer`), returning the descriptors that go with it;
    /// `Ok(true)` once sent, after `sent(payload length)` (called while
    /// this end's sending side is locked). With a `deadline`, gives up
    /// (`Ok(false)`) when it passes: the frame is then not delivered,
    /// neither whole nor in part. With `whole`, a frame longer than the
    /// ring (which could never be sent without waiting) is an error.
    pub(crate) fn send_with(
        &self,
        deadline: Option<Instant>,
        whole: bool,
        encode: impl FnOnce(&mut FrameWriter<'_>) -> Result<Vec<RawFd>>,
        sent: impl FnOnce(usize),
    ) -> Result<bool> {
        let p = self
            .tx
            .as_ref()
            .ok_or_else(|| Error::usage("this pipe end cannot send"))?;
        // The message is encoded with the sending side locked: a
        // `Serialize` that sends on this same end from this thread would
        // wait for itself.
        let id = std::ptr::from_ref(p) as usize;
        if ENCODING.with(Cell::get) == id {
            return Err(Error::usage(
                "a message was sent on a pipe end from inside the encoding of another message                  on the same end; send it before or after",
            ));
        }
        let mut p = p.lock().unwrap_or_else(|e| e.into_inner());
        let p = &mut *p;
        let r = Ring::new(&self.region, self.cap, p.ring);
        self.claim_writer(p, r)?;
        p.sends = p.sends.wrapping_add(1);
        if p.sends.is_multiple_of(CHECK_PEER_SENDS) && peer_gone(self.sock.as_fd())? {
            return Err(Error::Disconnected);
        }
        if p.torn && !self.mark_cut(p, r, deadline)? {
            return Ok(false);
        }
        let mut w = FrameWriter::new(self, p, r, deadline, whole);
        let encoding = Encoding::enter(id);
        let encoded = encode(&mut w);
        drop(encoding);
        // A frame whose bytes are all staged still (a small one) gets its
        // header there, and goes into the ring with one copy.
        let header_staged = match &encoded {
            Ok(fds) if w.stopped.is_none() && w.all_staged() => {
                let len = wire::frame_limits(w.payload_len(), fds.len())?;
                w.stage_header(frame_header(len, fds.len()));
                true
            }
            _ => false,
        };
        w.finish();
        let gave_up = match w.stopped.take() {
            Some(Stopped::Failed(e)) => return Err(e),
            Some(Stopped::GaveUp) if !whole => return Ok(false),
            Some(Stopped::GaveUp) => true,
            None => false,
        };
        let fds = encoded?;
        let payload = w.payload_len();
        let len = wire::frame_limits(payload, fds.len())?;
        let frame = (wire::HEADER + payload) as u64;
        if whole && frame > self.cap as u64 {
            return Err(Error::usage(format!(
                "a message of {frame} bytes cannot go through this pipe's {} byte buffer \
                 without waiting; send it with `send` or `send_timeout`",
                self.cap
            )));
        }
        if gave_up {
            // A send that cannot wait found no room: nothing was written.
            return Ok(false);
        }
        let ring_end = w.ring_end();
        let mut spill = w.take_spill();
        drop(w);
        let start = p.head;
        if !fds.is_empty() {
            // Tagged with the frame's position, so descriptors of a frame
            // that was cut short are told apart and dropped.
            let tag = start.to_le_bytes();
            sys::sock::send(self.sock.as_fd(), &[IoSlice::new(&tag)], &fds)
                .map_err(wire::gone_or_io)?;
        }
        if !header_staged {
            // The header's place is the frame's first bytes: in the ring,
            // or (if the ring had no room for all of it) partly in the
            // spill.
            let header = frame_header(len, fds.len());
            let in_ring = (ring_end.wrapping_sub(start) as usize).min(wire::HEADER);
            r.put(start, &header[..in_ring]);
            spill[..wire::HEADER - in_ring].copy_from_slice(&header[in_ring..]);
        }
        r.tx_frame_end()
            .store(start.wrapping_add(frame), Ordering::Relaxed);
        p.head = ring_end;
        self.publish(p, r);
        if spill.is_empty() || self.write(p, r, &[&spill], deadline)? {
            sent(payload);
            return Ok(true);
        }
        // Gave up in the middle of a frame longer than the ring: cut it
        // short where it stands (now, or before the next frame if the
        // consumer has yet to reach an earlier cut).
        p.torn = true;
        self.mark_cut(p, r, Some(Instant::now()))?;
        Ok(false)
    }

    /// Makes sure this end holds the ring's writer claim; on taking it,
    /// reads where the previous writer left the ring.
    fn claim_writer(&self, p: &mut Producer, r: Ring<'_>) -> Result<()> {
        if p.claimed {
            return claim::check(r.writer(), self.id, Side::Send);
        }
        claim::acquire(r.writer(), self.id, Side::Send)?;
        let head = r.head().load(Ordering::Acquire);
        let tail = r.tail().load(Ordering::Acquire);
        if head.wrapping_sub(tail) > self.cap as u64 {
            claim::release(r.writer(), self.id);
            return Err(corrupt("the positions of a ring are inconsistent"));
        }
        p.head = head;
        p.tail = tail;
        // The previous writer (an earlier life of a process) died in the
        // middle of a frame if `head` is short of its end.
        p.torn = r.tx_frame_end().load(Ordering::Relaxed) != head;
        p.claimed = true;
        Ok(())
    }

    /// Tells the consumer that the frame it may be reading ends at `head`.
    /// One mark is kept at a time: if the consumer has not reached the
    /// previous one yet, waits (until `deadline`: `Ok(false)`) until it has,
    /// so that no cut is ever forgotten.
    fn mark_cut(&self, p: &mut Producer, r: Ring<'_>, deadline: Option<Instant>) -> Result<bool> {
        let mark = p.head.wrapping_add(1);
        let previous = r.cut().load(Ordering::Acquire);
        if previous != 0 && previous != mark {
            let mut reached = || Ok(r.cut_seen().load(Ordering::Acquire) == previous);
            let ok = wait_until(
                &mut p.spin,
                &mut reached,
                r.space_seq(),
                r.producer_waiting(),
                self.sock.as_fd(),
                deadline,
            )?;
            if !ok {
                return Ok(false);
            }
        }
        r.cut().store(mark, Ordering::Release);
        // Only now is the ring whole again for a writer that takes over.
        r.tx_frame_end().store(p.head, Ordering::Relaxed);
        p.torn = false;
        notify(r.data_seq(), r.consumer_waiting());
        Ok(true)
    }

    /// The bytes the consumer has not read, checked against the capacity.
    pub(super) fn used(&self, head: u64, r: Ring<'_>) -> Result<u64> {
        let used = head.wrapping_sub(r.tail().load(Ordering::Acquire));
        if used > self.cap as u64 {
            return Err(corrupt("the reader's position is out of range"));
        }
        Ok(used)
    }

    /// Waits until `need` bytes are free (publishing what was written
    /// first); `Ok(false)` if `deadline` passes first.
    pub(super) fn wait_space(
        &self,
        p: &mut Producer,
        r: Ring<'_>,
        need: u64,
        deadline: Option<Instant>,
    ) -> Result<bool> {
        let cap = self.cap as u64;
        if cap - p.head.wrapping_sub(p.tail) >= need {
            return Ok(true);
        }
        let used = self.used(p.head, r)?;
        p.tail = p.head.wrapping_sub(used);
        if cap - used >= need {
            return Ok(true);
        }
        self.publish(p, r);
        let head = p.head;
        let mut has_space = || Ok(cap - self.used(head, r)? >= need);
        let ok = wait_until(
            p.spin.busy_peer(consumer_awake(r)),
            &mut has_space,
            r.space_seq(),
            r.producer_waiting(),
            self.sock.as_fd(),
            deadline,
        )?;
        if ok {
            p.tail = head.wrapping_sub(self.used(head, r)?);
        }
        Ok(ok)
    }

    /// Writes `parts` at the head, publishing as it goes; `Ok(false)` if
    /// `deadline` passed while the ring was full (what was written is
    /// published).
    fn write(
        &self,
        p: &mut Producer,
        r: Ring<'_>,
        parts: &[&[u8]],
        deadline: Option<Instant>,
    ) -> Result<bool> {
        let cap = self.cap as u64;
        let mut unpublished = 0usize;
        for part in parts {
            let mut data = *part;
            while !data.is_empty() {
                let free = cap - p.head.wrapping_sub(p.tail);
                if free == 0 {
                    if !self.wait_space(p, r, 1, deadline)? {
                        return Ok(false);
                    }
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
        Ok(true)
    }

    fn publish(&self, p: &Producer, r: Ring<'_>) {
        advance(r.head(), p.head, r.data_seq(), r.consumer_waiting());
    }
}
