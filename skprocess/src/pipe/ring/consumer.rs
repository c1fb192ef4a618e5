//! The consumer: reads frames out of its ring, hands space back, skips
//! what was cut short, and collects the descriptors of a frame.

use super::claim::{self, Side};
use super::layout::{corrupt, Ring};
use super::wait::{advance, interrupt, notify, wait_until, Spin};
use super::End;
use crate::error::{Error, Result};
use crate::proto::kind;
use crate::sys;
use crate::wire;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// The longest a frame can be, header included.
const MAX_FRAME_BYTES: u64 = (crate::config::DEFAULT_MAX_MESSAGE + wire::HEADER) as u64;
/// A receive buffer larger than this is freed after its message, not kept.
const KEEP_BUFFER: usize = 4 << 20;
/// How long a receiver waits for the descriptors of a message, which were
/// sent before the message itself.
const FD_WAIT: Duration = Duration::from_secs(2);

/// Where the consumer is in the byte stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Reading {
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
pub(super) struct Consumer {
    pub(super) ring: usize,
    /// Read position (bytes before it have been copied out).
    tail: u64,
    /// The position last published to the producer.
    released: u64,
    /// The producer's position and cut mark as last looked at: bytes up to
    /// `head` are published, so they are read without looking again at the
    /// producer's cache line, which it writes for every message.
    head: u64,
    cut: u64,
    pub(super) reading: Reading,
    /// The payload being received; reused from message to message.
    buf: Vec<u8>,
    /// Set once the peer broke the protocol: every later call returns it.
    broken: Option<String>,
    /// Whether this end holds the ring's reader claim (and `tail` and
    /// `reading` were read from the shared memory when it took it).
    pub(super) claimed: bool,
    /// The last cut mark reached, as stored (`1 +` its position).
    cut_seen: u64,
    spin: Spin,
}

impl Consumer {
    pub(super) fn new(ring: usize) -> Consumer {
        Consumer {
            ring,
            tail: 0,
            released: 0,
            head: 0,
            cut: 0,
            reading: Reading::Header,
            buf: Vec::new(),
            broken: None,
            claimed: false,
            cut_seen: 0,
            spin: Spin::default(),
        }
    }
}

impl End {
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
        self.claim_reader(&mut c, r)?;
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

    /// The position up to which bytes are published in the ring this end
    /// receives from; `None` for an end that does not receive.
    pub(crate) fn published(&self) -> Option<u64> {
        let c = self.rx_ring?;
        Some(
            Ring::new(&self.region, self.cap, c)
                .head()
                .load(Ordering::Acquire),
        )
    }

    /// Waits, without reading anything, until bytes are published past
    /// `seen` (see [`published`](End::published)), the peer is gone, or
    /// `quit()`: the moment a receive may find something new. Wakes on the
    /// producer's futex notification like a blocking receive, and checks
    /// for a dead peer as it does.
    pub(crate) fn wait_published_past(&self, seen: u64, quit: &dyn Fn() -> bool) {
        let Some(c) = self.rx_ring else {
            return;
        };
        let r = Ring::new(&self.region, self.cap, c);
        let mut ready = || Ok(quit() || r.head().load(Ordering::Acquire) != seen);
        // A dead peer, like any error, is for the receive to report.
        let _ = wait_until(
            &mut Spin::default(),
            &mut ready,
            r.data_seq(),
            r.consumer_waiting(),
            self.sock.as_fd(),
            None,
        );
    }

    /// Wakes whatever sleeps in [`wait_published_past`](End::wait_published_past)
    /// (or a receive) on this end's ring, to check its condition again.
    pub(crate) fn interrupt_receivers(&self) {
        if let Some(c) = self.rx_ring {
            interrupt(Ring::new(&self.region, self.cap, c).data_seq());
        }
    }

    /// Makes sure this end holds the ring's reader claim; on taking it,
    /// reads where the previous reader left the ring.
    fn claim_reader(&self, c: &mut Consumer, r: Ring<'_>) -> Result<()> {
        if c.claimed {
            return claim::check(r.reader(), self.id, Side::Receive);
        }
        claim::acquire(r.reader(), self.id, Side::Receive)?;
        let tail = r.tail().load(Ordering::Acquire);
        // The previous reader died in the middle of a frame: skip the rest
        // of it.
        let end = r.rx_frame_end().load(Ordering::Relaxed);
        let ahead = end.wrapping_sub(tail);
        c.reading = if end != 0 && ahead != 0 && ahead <= MAX_FRAME_BYTES {
            Reading::Skip { end }
        } else {
            Reading::Header
        };
        c.tail = tail;
        c.released = tail;
        c.head = tail;
        c.cut = 0;
        c.cut_seen = r.cut_seen().load(Ordering::Acquire);
        c.buf.clear();
        c.claimed = true;
        Ok(())
    }

    /// Bytes readable as of the last look at the producer's position.
    fn known(c: &Consumer) -> usize {
        c.head.wrapping_sub(c.tail) as usize
    }

    /// Looks at the producer's position and cut mark again; the bytes
    /// readable now.
    fn look(&self, c: &mut Consumer, r: Ring<'_>) -> Result<usize> {
        let (head, cut) = self.producer_state(c, r)?;
        c.head = head;
        c.cut = cut;
        Ok(Self::known(c))
    }

    /// The producer's position, checked against the read position, and
    /// then its cut mark: the mark is set before the bytes that follow it
    /// are published, so it is read second.
    fn producer_state(&self, c: &Consumer, r: Ring<'_>) -> Result<(u64, u64)> {
        let head = r.head().load(Ordering::Acquire);
        if head.wrapping_sub(c.tail) > self.cap as u64 {
            return Err(corrupt("the writer's position is out of range"));
        }
        Ok((head, r.cut().load(Ordering::Acquire)))
    }

    /// Where a frame was cut short, if the mark `cut` (as stored) is one
    /// this consumer has not reached yet, at most `n` bytes from the read
    /// position.
    fn cut_within(c: &Consumer, cut: u64, n: usize) -> Option<u64> {
        if cut == 0 || cut == c.cut_seen {
            return None;
        }
        let at = cut - 1;
        (at.wrapping_sub(c.tail) <= n as u64).then_some(at)
    }

    /// Records that the read position is at the pending cut mark, which
    /// lets a producer set the next one.
    fn reach_cut(&self, c: &mut Consumer, r: Ring<'_>) {
        c.cut_seen = c.tail.wrapping_add(1);
        r.cut_seen().store(c.cut_seen, Ordering::Release);
        notify(r.space_seq(), r.producer_waiting());
    }

    /// Waits until `need` bytes are readable, or a cut mark is among the
    /// readable bytes; `Ok(false)` on timeout.
    fn wait_for(
        &self,
        c: &mut Consumer,
        r: Ring<'_>,
        need: usize,
        deadline: Option<Instant>,
    ) -> Result<bool> {
        // Hand back what was read before sleeping: the producer may be
        // waiting for that space.
        self.release(c, r);
        let mut spin = c.spin;
        let got = {
            let c = &*c;
            let mut ready = || {
                let (head, cut) = self.producer_state(c, r)?;
                let avail = head.wrapping_sub(c.tail) as usize;
                Ok(avail >= need || Self::cut_within(c, cut, avail).is_some())
            };
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
        if got.is_ok() {
            self.look(c, r)?;
        }
        // A sender that ended for good in the middle of a message is gone
        // like any other: the cut message is never received, in part or
        // whole, and the receiver learns that its peer is gone.
        got
    }

    /// Publishes the read position, waking the producer if it waits for
    /// space.
    fn release(&self, c: &mut Consumer, r: Ring<'_>) {
        if c.released != c.tail {
            c.released = c.tail;
            advance(r.tail(), c.tail, r.space_seq(), r.producer_waiting());
        }
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
                    let mut avail = Self::known(c);
                    if avail < wire::HEADER {
                        avail = self.look(c, r)?;
                    }
                    if avail < wire::HEADER && Self::cut_within(c, c.cut, avail).is_none() {
                        if !self.wait_for(c, r, wire::HEADER, deadline)? {
                            return Ok(None);
                        }
                        avail = Self::known(c);
                    }
                    if let Some(at) = Self::cut_within(c, c.cut, avail.min(wire::HEADER - 1)) {
                        // A header cut short by a writer that died (or a
                        // cut at this frame boundary): read on from it.
                        c.tail = at;
                        self.reach_cut(c, r);
                        continue;
                    }
                    if avail < wire::HEADER {
                        continue;
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
                        let mut avail = Self::known(c);
                        if avail == 0 {
                            avail = self.look(c, r)?;
                        }
                        let mut n = avail.min(end.wrapping_sub(c.tail) as usize);
                        if let Some(at) = Self::cut_within(c, c.cut, n) {
                            if at == c.tail {
                                self.reach_cut(c, r);
                                cut_short = true;
                                break;
                            }
                            n = at.wrapping_sub(c.tail) as usize;
                        }
                        if n == 0 {
                            if !self.wait_for(c, r, 1, deadline)? {
                                return Ok(None);
                            }
                            since_release = 0;
                            continue;
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
                        // Its sender died (or gave up) before finishing it:
                        // it was never sent. Read on from where the next
                        // frame starts.
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
                let r = sys::sock::recv(self.sock.as_fd(), &mut tag[got..], &mut fds)
                    .map_err(Error::Io)?;
                if r.fds_lost {
                    return Err(Error::Io(sys::sock::fds_lost_error()));
                }
                let k = r.bytes;
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
