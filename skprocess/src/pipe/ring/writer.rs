//! Writing a frame straight into the ring: a postcard flavor that puts the
//! encoded bytes in the free space after the head, so a message is copied
//! once on its way in, not encoded into a buffer and copied again.
//!
//! Nothing is published while the message is encoded: its length, which the
//! frame header states, is only known at the end. So a frame that fits in
//! the ring is written whole (waiting for the consumer to make room as
//! needed, following its reads), then its header, then it is published at
//! once. The part of a frame longer than the ring that the ring cannot hold
//! goes to a private buffer ("spill"), streamed through the ring once the
//! header and the part in the ring are published. Small writes (postcard
//! writes a `Vec<u8>` byte by byte) are gathered in a stage and copied in
//! together.

use super::layout::Ring;
use super::producer::{consumer_awake, Producer};
use super::End;
use crate::error::Error;
use crate::wire;
use std::time::Instant;

/// Bytes gathered before they are copied into the ring.
const STAGE: usize = 256;
/// Writes of at most this many bytes are staged byte by byte.
const SMALL: usize = 8;

/// Where the bytes of the frame go now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Into {
    /// The ring, after the head.
    Ring,
    /// The spill: the frame is longer than the ring.
    Spill,
    /// Nowhere, only counted: the send gave up (no room without waiting)
    /// and goes on only to learn the frame's length.
    Count,
}

/// Why a writer stopped early.
#[derive(Debug)]
pub(super) enum Stopped {
    /// The deadline passed while it waited for room.
    GaveUp,
    /// Waiting failed (the peer is gone, the shared memory is corrupt).
    Failed(Error),
}

/// One frame being written: the header's place, then the payload.
#[derive(Debug)]
pub(crate) struct FrameWriter<'a> {
    end: &'a End,
    p: &'a mut Producer,
    r: Ring<'a>,
    deadline: Option<Instant>,
    /// Whether a send that cannot wait goes on counting (to tell a frame
    /// too long for the ring from a ring that is full now).
    count_if_full: bool,
    into: Into,
    /// Where the frame starts (the head, unpublished while it is written).
    start: u64,
    /// Where the next byte goes in the ring.
    pos: u64,
    /// Bytes before this position are known to be free.
    limit: u64,
    /// Bytes not yet copied in (a buffer the producer keeps from frame to
    /// frame; the first frame's first bytes are the header's place).
    stage: Vec<u8>,
    spill: Vec<u8>,
    counted: usize,
    pub(super) stopped: Option<Stopped>,
}

impl<'a> FrameWriter<'a> {
    pub(super) fn new(
        end: &'a End,
        p: &'a mut Producer,
        r: Ring<'a>,
        deadline: Option<Instant>,
        count_if_full: bool,
    ) -> FrameWriter<'a> {
        let start = p.head;
        let limit = p.tail.wrapping_add(end.cap as u64);
        let mut stage = std::mem::take(&mut p.stage);
        stage.clear();
        stage.reserve(STAGE);
        // The header's place is staged first, and filled in at the end.
        stage.extend_from_slice(&[0; wire::HEADER]);
        FrameWriter {
            end,
            r,
            deadline,
            count_if_full,
            into: Into::Ring,
            start,
            pos: start,
            limit,
            stage,
            spill: Vec::new(),
            counted: 0,
            stopped: None,
            p,
        }
    }

    /// Appends `bytes` to the frame; `false` once the writer has stopped.
    pub(crate) fn write(&mut self, bytes: &[u8]) -> bool {
        if bytes.len() <= SMALL && self.stage.len() + SMALL <= STAGE {
            // Byte by byte: for the few bytes of a number or a length, a
            // call to the general copy costs more than the copying.
            for &b in bytes {
                self.stage.push(b);
            }
            return true;
        }
        if self.stage.len() + bytes.len() <= STAGE {
            self.stage.extend_from_slice(bytes);
            return true;
        }
        self.flush() && self.put(bytes)
    }

    fn flush(&mut self) -> bool {
        let mut stage = std::mem::take(&mut self.stage);
        let ok = self.put(&stage);
        stage.clear();
        self.stage = stage;
        ok
    }

    /// Writes `bytes` where they go now.
    fn put(&mut self, mut bytes: &[u8]) -> bool {
        while !bytes.is_empty() {
            match self.into {
                Into::Spill => {
                    self.spill.extend_from_slice(bytes);
                    return true;
                }
                Into::Count => {
                    self.counted += bytes.len();
                    return true;
                }
                Into::Ring => {}
            }
            let room = self.room();
            if room == 0 {
                if !self.make_room(bytes.len()) {
                    return false;
                }
                continue;
            }
            let n = room.min(bytes.len());
            self.r.put(self.pos, &bytes[..n]);
            self.pos = self.pos.wrapping_add(n as u64);
            bytes = &bytes[n..];
        }
        true
    }

    /// Bytes known to be free after `pos` (none if a misbehaving consumer
    /// moved its position back).
    fn room(&self) -> usize {
        let room = self.limit.wrapping_sub(self.pos);
        if room > self.end.cap as u64 {
            0
        } else {
            room as usize
        }
    }

    /// Finds room after `pos` for more of the frame: reads the consumer's
    /// position again, else waits for it to read on; once the frame fills
    /// the whole ring, spills the rest. `false` if the writer stopped.
    fn make_room(&mut self, want: usize) -> bool {
        let cap = self.end.cap as u64;
        let written = self.pos.wrapping_sub(self.start);
        if written >= cap {
            self.into = Into::Spill;
            return true;
        }
        let used = match self.end.used(self.start, self.r) {
            Ok(u) => u,
            Err(e) => return self.stop(Stopped::Failed(e)),
        };
        self.p.tail = self.start.wrapping_sub(used);
        self.limit = self.p.tail.wrapping_add(cap);
        if self.room() > 0 {
            return true;
        }
        // Wait for a slice of room at a time, so that this side writes
        // right behind the consumer's reads.
        let need = (written + (want.min(self.end.chunk) as u64)).min(cap);
        if self.deadline.is_none() {
            // A send that waits as long as it takes follows a consumer that
            // reads on (within a spin); one that does not read gets the
            // frame's start now, and the rest streams as it makes room.
            let (end, r, start) = (self.end, self.r, self.start);
            let mut has_room = || Ok(cap - end.used(start, r)? >= need);
            match self
                .p
                .spin
                .busy_peer(consumer_awake(r))
                .wait(&mut has_room, None)
            {
                Ok(true) => {}
                Ok(false) => {
                    self.into = Into::Spill;
                    return true;
                }
                Err(e) => return self.stop(Stopped::Failed(e)),
            }
            let used = match self.end.used(start, r) {
                Ok(u) => u,
                Err(e) => return self.stop(Stopped::Failed(e)),
            };
            self.p.tail = start.wrapping_sub(used);
            self.limit = self.p.tail.wrapping_add(cap);
            return true;
        }
        match self.end.wait_space(self.p, self.r, need, self.deadline) {
            Ok(true) => {
                self.limit = self.p.tail.wrapping_add(cap);
                true
            }
            Ok(false) if self.count_if_full => {
                self.into = Into::Count;
                self.stopped = Some(Stopped::GaveUp);
                true
            }
            Ok(false) => self.stop(Stopped::GaveUp),
            Err(e) => self.stop(Stopped::Failed(e)),
        }
    }

    fn stop(&mut self, why: Stopped) -> bool {
        self.stopped = Some(why);
        false
    }

    /// Whether no byte of the frame has left the stage yet.
    pub(super) fn all_staged(&self) -> bool {
        self.into == Into::Ring && self.pos == self.start
    }

    /// Fills in the header's place at the start of the stage (see
    /// [`all_staged`](FrameWriter::all_staged)).
    pub(super) fn stage_header(&mut self, header: [u8; wire::HEADER]) {
        debug_assert!(self.all_staged());
        self.stage[..wire::HEADER].copy_from_slice(&header);
    }

    /// Copies what is staged into the ring (see `stopped`).
    pub(super) fn finish(&mut self) {
        self.flush();
    }

    /// The payload's length: every byte after the header's place.
    pub(super) fn payload_len(&self) -> usize {
        let in_ring = self.pos.wrapping_sub(self.start) as usize;
        in_ring + self.stage.len() + self.spill.len() + self.counted - wire::HEADER
    }

    /// Where the part of the frame in the ring ends, after [`finish`].
    pub(super) fn ring_end(&self) -> u64 {
        self.pos
    }

    /// The part of the frame that did not fit in the ring.
    pub(super) fn take_spill(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.spill)
    }
}

impl postcard::ser_flavors::Flavor for &mut FrameWriter<'_> {
    type Output = ();

    fn try_push(&mut self, byte: u8) -> postcard::Result<()> {
        if self.stage.len() < STAGE {
            self.stage.push(byte);
            return Ok(());
        }
        self.try_extend(&[byte])
    }

    fn try_extend(&mut self, bytes: &[u8]) -> postcard::Result<()> {
        if self.write(bytes) {
            Ok(())
        } else {
            Err(postcard::Error::SerializeBufferFull)
        }
    }

    fn finalize(self) -> postcard::Result<()> {
        Ok(())
    }
}

impl Drop for FrameWriter<'_> {
    /// Gives the stage back to the producer, for the next frame.
    fn drop(&mut self) {
        self.p.stage = std::mem::take(&mut self.stage);
    }
}
